//! Typed identifiers. Database ids are positive `bigint`s; on the wire they are GraphQL `ID` strings.

use crate::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// Parses a client-supplied id: a positive decimal integer.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                match s.trim().parse::<i64>() {
                    Ok(v) if v > 0 => Ok(Self(v)),
                    _ => Err(DomainError(format!("invalid {} id: {:?}", $what, truncate(s)))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(/// A user.
    UserId, "user");
id_type!(/// A calendar.
    CalendarId, "calendar");
id_type!(/// A stored event row (a single event, a series master or an override).
    EventId, "event");
id_type!(/// A bookable resource (room, equipment).
    ResourceId, "resource");
id_type!(/// A reservation of a resource by an event.
    ReservationId, "reservation");

/// Echoing client input in an error is useful, echoing a megabyte of it is not.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_positive_integers_only() {
        assert_eq!(UserId::parse("42").unwrap(), UserId(42));
        assert_eq!(UserId::parse(" 7 ").unwrap(), UserId(7));
        for bad in ["", "0", "-1", "abc", "1.5", "99999999999999999999"] {
            let err = UserId::parse(bad).unwrap_err();
            assert!(err.0.starts_with("invalid user id"), "{bad}: {err}");
        }
    }

    #[test]
    fn error_truncates_long_input() {
        let long = "x".repeat(10_000);
        assert!(EventId::parse(&long).unwrap_err().0.len() < 120);
    }
}
