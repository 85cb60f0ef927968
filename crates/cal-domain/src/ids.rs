//! Typed identifiers. Database ids are positive `bigint`s; on the wire they are GraphQL `ID` strings.
//! One occurrence of a series has no row of its own, so it is named by its series and original start.

use crate::DomainError;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, get_size2::GetSize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// Wraps a database id. The value is not checked: ids come from the database or from
            /// [`Self::parse`], which is what client input goes through.
            pub const fn new(v: i64) -> Self {
                Self(v)
            }

            /// The database id.
            pub const fn get(self) -> i64 {
                self.0
            }

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

/// One occurrence of a recurring series, named by the series and the occurrence's original start
/// (the start the rule generated, before any override moved it). This is also the key of an
/// override row, so an instance keeps its id when it is edited.
///
/// On the wire: `{series}_{original start as YYYYMMDDTHHMMSSZ}`, e.g. `123_20261122T090000Z`. The
/// format carries whole seconds only, which is enough because expanded occurrences start on whole
/// seconds (see [`crate::recurrence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub series: EventId,
    pub original_start: DateTime<Utc>,
}

/// The basic (no separators) UTC form used by RFC 5545 and by instance ids.
const BASIC_UTC: &str = "%Y%m%dT%H%M%SZ";

impl InstanceId {
    pub fn format(&self) -> String {
        format!("{}_{}", self.series, self.original_start.format(BASIC_UTC))
    }

    /// Parses `{series}_{YYYYMMDDTHHMMSSZ}`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let invalid = || DomainError(format!("invalid instance id: {:?}", truncate(s)));
        let (series, start) = s.trim().split_once('_').ok_or_else(invalid)?;
        let series = EventId::parse(series).map_err(|_| invalid())?;
        // chrono's `%Y` also takes signs and fewer digits; insist on exactly the shape we emit so
        // that one instance has one id.
        let shape_ok = start.len() == 16
            && start.bytes().enumerate().all(|(i, b)| match i {
                8 => b == b'T',
                15 => b == b'Z',
                _ => b.is_ascii_digit(),
            });
        if !shape_ok {
            return Err(invalid());
        }
        let original_start = NaiveDateTime::parse_from_str(start, BASIC_UTC)
            .map_err(|_| invalid())?
            .and_utc();
        Ok(Self {
            series,
            original_start,
        })
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format())
    }
}

/// What a client-supplied event id points at: a stored row (a single event, a series master or an
/// override) or one occurrence of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventRef {
    Row(EventId),
    Instance(InstanceId),
}

impl EventRef {
    /// Accepts either `123` or `123_20261122T090000Z`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        if s.contains('_') {
            InstanceId::parse(s).map(Self::Instance)
        } else {
            EventId::parse(s).map(Self::Row)
        }
    }
}

/// Echoing client input in an error is useful, echoing a megabyte of it is not.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_positive_integers_only() {
        assert_eq!(UserId::parse("42").unwrap(), UserId::new(42));
        assert_eq!(UserId::parse(" 7 ").unwrap(), UserId::new(7));
        for bad in ["", "0", "-1", "abc", "1.5", "99999999999999999999"] {
            let err = UserId::parse(bad).unwrap_err();
            assert!(err.0.starts_with("invalid user id"), "{bad}: {err}");
        }
    }

    #[test]
    fn error_truncates_long_input() {
        let long = "x".repeat(10_000);
        assert!(EventId::parse(&long).unwrap_err().0.len() < 120);
        let long = format!("1_{long}");
        assert!(InstanceId::parse(&long).unwrap_err().0.len() < 120);
    }

    fn instance() -> InstanceId {
        use chrono::TimeZone;
        InstanceId {
            series: EventId::new(123),
            original_start: Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap(),
        }
    }

    #[test]
    fn instance_id_round_trips() {
        let id = instance();
        assert_eq!(id.format(), "123_20261122T090000Z");
        assert_eq!(id.to_string(), "123_20261122T090000Z");
        assert_eq!(InstanceId::parse("123_20261122T090000Z").unwrap(), id);
    }

    #[test]
    fn instance_id_rejects_garbage() {
        for bad in [
            "",
            "_",
            "123",
            "123_",
            "_20261122T090000Z",
            "0_20261122T090000Z",
            "-1_20261122T090000Z",
            "abc_20261122T090000Z",
            "123_20261122T090000",
            "123_20261122T0900Z",
            "123_2026-11-22T09:00:00Z",
            "123_20261322T090000Z",
            "123_20261122T250000Z",
            "123_+2026112T090000Z",
            "123_20261122T090000Z_1",
            "123_20261122t090000z",
        ] {
            let err = InstanceId::parse(bad).unwrap_err();
            assert!(err.0.starts_with("invalid instance id"), "{bad}: {err}");
        }
    }

    #[test]
    fn event_ref_accepts_rows_and_instances() {
        assert_eq!(
            EventRef::parse("123").unwrap(),
            EventRef::Row(EventId::new(123))
        );
        assert_eq!(
            EventRef::parse("123_20261122T090000Z").unwrap(),
            EventRef::Instance(instance())
        );
        for bad in ["", "abc", "0", "123_", "123_x", "1.5"] {
            assert!(EventRef::parse(bad).is_err(), "{bad}");
        }
    }
}
