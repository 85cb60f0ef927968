//! Small closed sets stored as text in the database (with CHECK constraints) and exposed as GraphQL enums.

use crate::DomainError;
use serde::{Deserialize, Serialize};

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, get_size2::GetSize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Result<Self, DomainError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(DomainError(format!(concat!("unknown ", stringify!($name), " {:?}"), other))),
                }
            }
        }
    };
}

text_enum!(/// Whether an event takes place.
    EventStatus { Confirmed => "confirmed", Tentative => "tentative", Cancelled => "cancelled" });
text_enum!(/// Whether an event blocks time in free/busy.
    Transparency { Busy => "busy", Free => "free" });
text_enum!(/// An attendee's answer to an invitation.
    ResponseStatus { NeedsAction => "needs_action", Accepted => "accepted", Declined => "declined", Tentative => "tentative" });
text_enum!(/// Whether a reservation holds its resource.
    ReservationStatus { Confirmed => "confirmed", Cancelled => "cancelled" });
text_enum!(/// What a resource is.
    ResourceKind { Room => "room", Equipment => "equipment" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown() {
        for s in [
            ResponseStatus::NeedsAction,
            ResponseStatus::Accepted,
            ResponseStatus::Declined,
            ResponseStatus::Tentative,
        ] {
            assert_eq!(ResponseStatus::parse(s.as_str()).unwrap(), s);
        }
        assert_eq!(
            EventStatus::parse("cancelled").unwrap(),
            EventStatus::Cancelled
        );
        assert!(Transparency::parse("opaque").is_err());
    }
}
