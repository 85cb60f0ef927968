//! Time windows and zones. All instants are UTC; zones are IANA names checked against the tz database.

use crate::DomainError;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

/// The longest a single event (or one occurrence) may last. The database enforces the same bound
/// (`events_max_duration`), which lets the window query use a plain btree range on `start_time`.
pub const MAX_EVENT_DURATION: Duration = Duration::days(31);

/// A half-open interval `[from, to)` that a client asked about, checked against a maximum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

impl TimeWindow {
    pub fn parse(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_len: Duration,
    ) -> Result<Self, DomainError> {
        if to <= from {
            return Err(DomainError::new("`to` must be after `from`"));
        }
        if to - from > max_len {
            return Err(DomainError(format!(
                "the window may span at most {} days",
                max_len.num_days()
            )));
        }
        Ok(Self { from, to })
    }

    pub fn from(&self) -> DateTime<Utc> {
        self.from
    }

    pub fn to(&self) -> DateTime<Utc> {
        self.to
    }

    /// Earliest start an event overlapping this window can have.
    pub fn earliest_overlapping_start(&self) -> DateTime<Utc> {
        self.from - MAX_EVENT_DURATION
    }
}

/// Parses an IANA time zone name such as `Europe/Berlin`.
pub fn parse_time_zone(name: &str) -> Result<Tz, DomainError> {
    name.parse::<Tz>().map_err(|_| {
        DomainError(format!(
            "unknown time zone {:?}",
            name.chars().take(64).collect::<String>()
        ))
    })
}

/// Checks an event's start and end.
pub fn check_event_times(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<(), DomainError> {
    if end <= start {
        return Err(DomainError::new("endTime must be after startTime"));
    }
    if end - start > MAX_EVENT_DURATION {
        return Err(DomainError(format!(
            "an event may last at most {} days",
            MAX_EVENT_DURATION.num_days()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap()
    }

    #[test]
    fn window_rules() {
        let max = Duration::days(10);
        assert!(TimeWindow::parse(t(1), t(5), max).is_ok());
        assert!(
            TimeWindow::parse(t(5), t(1), max)
                .unwrap_err()
                .0
                .contains("after")
        );
        assert!(TimeWindow::parse(t(1), t(1), max).is_err());
        assert!(
            TimeWindow::parse(t(1), t(20), max)
                .unwrap_err()
                .0
                .contains("10 days")
        );
    }

    #[test]
    fn zones() {
        assert_eq!(
            parse_time_zone("Europe/Berlin").unwrap(),
            chrono_tz::Europe::Berlin
        );
        assert!(parse_time_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn event_times() {
        assert!(check_event_times(t(1), t(2)).is_ok());
        assert!(check_event_times(t(2), t(1)).is_err());
        assert!(check_event_times(t(1), t(1) + Duration::days(40)).is_err());
    }
}
