//! Opaque keyset cursors for `Calendar.events`: the position is (start time, event id), so a page
//! boundary stays put when rows are inserted before it.

use crate::{DomainError, EventId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub start: DateTime<Utc>,
    pub id: EventId,
}

impl EventCursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "e1:{}:{}",
            self.start.timestamp_micros(),
            self.id.0
        ))
    }

    pub fn decode(s: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::new("invalid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(s.as_bytes()).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.split(':');
        if parts.next() != Some("e1") {
            return Err(bad());
        }
        let micros: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let id: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some() || id <= 0 {
            return Err(bad());
        }
        let start = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        Ok(Self {
            start,
            id: EventId(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let c = EventCursor {
            start: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: EventId(9),
        };
        assert_eq!(EventCursor::decode(&c.encode()).unwrap(), c);
        for bad in [
            "",
            "!!!",
            "ZTE6eDox",
            &URL_SAFE_NO_PAD.encode("x1:1:2"),
            &URL_SAFE_NO_PAD.encode("e1:1:2:3"),
        ] {
            assert!(EventCursor::decode(bad).is_err(), "{bad}");
        }
    }
}
