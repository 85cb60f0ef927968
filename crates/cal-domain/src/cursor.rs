//! Opaque keyset cursors for `Calendar.events`. The position is (start time, row or series id,
//! original start of a generated instance), a total order over everything a window can list, so a
//! page boundary stays put when rows are inserted before it and when series expand around it.

use crate::{DomainError, EventId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub start: DateTime<Utc>,
    /// The row's id, or the series' id for a generated instance.
    pub id: EventId,
    /// `None` for stored rows (sorts first), the original start for a generated instance.
    pub original_start: Option<DateTime<Utc>>,
}

impl EventCursor {
    pub fn row(start: DateTime<Utc>, id: EventId) -> Self {
        Self {
            start,
            id,
            original_start: None,
        }
    }

    pub fn encode(&self) -> String {
        let orig = self
            .original_start
            .map(|o| o.timestamp_micros().to_string())
            .unwrap_or_default();
        URL_SAFE_NO_PAD.encode(format!(
            "e2:{}:{}:{}",
            self.start.timestamp_micros(),
            self.id.get(),
            orig
        ))
    }

    pub fn decode(s: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::new("invalid cursor");
        let bytes = URL_SAFE_NO_PAD.decode(s.as_bytes()).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let parts: Vec<&str> = text.split(':').collect();
        let [tag, start, id, orig] = parts.as_slice() else {
            return Err(bad());
        };
        if *tag != "e2" {
            return Err(bad());
        }
        let micros: i64 = start.parse().map_err(|_| bad())?;
        let id: i64 = id.parse().map_err(|_| bad())?;
        if id <= 0 {
            return Err(bad());
        }
        let start = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
        let original_start = if orig.is_empty() {
            None
        } else {
            Some(
                DateTime::from_timestamp_micros(orig.parse().map_err(|_| bad())?)
                    .ok_or_else(bad)?,
            )
        };
        Ok(Self {
            start,
            id: EventId::new(id),
            original_start,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        for c in [
            EventCursor::row(t, EventId::new(9)),
            EventCursor {
                start: t,
                id: EventId::new(9),
                original_start: Some(t),
            },
        ] {
            assert_eq!(EventCursor::decode(&c.encode()).unwrap(), c);
        }
        for bad in [
            "",
            "!!!",
            "ZTE6eDox",
            &URL_SAFE_NO_PAD.encode("x2:1:2:"),
            &URL_SAFE_NO_PAD.encode("e2:1:2:3:4"),
            &URL_SAFE_NO_PAD.encode("e2:1:0:"),
        ] {
            assert!(EventCursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rows_sort_before_instances_at_the_same_start_and_id() {
        let t = DateTime::from_timestamp_micros(0).unwrap();
        let row = EventCursor::row(t, EventId::new(5));
        let inst = EventCursor {
            start: t,
            id: EventId::new(5),
            original_start: Some(t),
        };
        assert!(row < inst);
        assert!(inst < EventCursor::row(t, EventId::new(6)));
    }
}
