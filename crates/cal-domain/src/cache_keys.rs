//! Every cache key is built here, and nowhere else, with the key-format version [`KEY_VERSION`]
//! baked in: bump it whenever the shape of a cached value changes, and old entries simply stop
//! being read. Also here: the default TTL of each kind of key, and which keys a change invalidates.
//!
//! Pure: no cache client, no clock. The values behind these keys are viewer-independent facts.

use crate::{CalendarId, EventId, ResourceId, UserId};
use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime, Utc};
use std::time::Duration;

/// Format version of every key and cached value, except those below.
pub const KEY_VERSION: &str = "v1";

/// Format version of the keys whose values hold a resource (the resource itself, an event's
/// reservations): v2 since resources carry their bookings version.
pub const RESOURCE_KEY_VERSION: &str = "v2";

/// The kinds of cached facts (also the `kind` label of cache metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    CalendarSummary,
    MonthBucket,
    EventFull,
    EventAttendees,
    EventReservations,
    UserProfile,
    Resource,
    ResourceAvailability,
}

impl KeyKind {
    pub const ALL: [KeyKind; 8] = [
        KeyKind::CalendarSummary,
        KeyKind::MonthBucket,
        KeyKind::EventFull,
        KeyKind::EventAttendees,
        KeyKind::EventReservations,
        KeyKind::UserProfile,
        KeyKind::Resource,
        KeyKind::ResourceAvailability,
    ];

    pub fn label(self) -> &'static str {
        match self {
            KeyKind::CalendarSummary => "calendar_summary",
            KeyKind::MonthBucket => "month_bucket",
            KeyKind::EventFull => "event_full",
            KeyKind::EventAttendees => "event_attendees",
            KeyKind::EventReservations => "event_reservations",
            KeyKind::UserProfile => "user_profile",
            KeyKind::Resource => "resource",
            KeyKind::ResourceAvailability => "resource_availability",
        }
    }

    /// The kind whose [`Self::label`] is `label`.
    pub fn from_label(label: &str) -> Option<KeyKind> {
        Self::ALL.into_iter().find(|k| k.label() == label)
    }

    /// Default L2 (Redis) time to live.
    pub fn default_ttl(self) -> Duration {
        let min = |m: u64| Duration::from_secs(60 * m);
        match self {
            KeyKind::CalendarSummary => min(10),
            KeyKind::MonthBucket => min(5),
            KeyKind::EventFull => min(5),
            KeyKind::EventAttendees | KeyKind::EventReservations => min(2),
            KeyKind::UserProfile | KeyKind::Resource => min(30),
            KeyKind::ResourceAvailability => min(1),
        }
    }
}

pub fn calendar_summary(id: CalendarId) -> String {
    format!("{KEY_VERSION}:calendar:{id}:summary")
}

/// The events a calendar shows in one month, as of the calendar's `generation` (its version,
/// bumped by every change of its events or members). A write therefore never has to find every
/// bucket a series spans: the new generation names new buckets, the old ones age out.
pub fn month_bucket(id: CalendarId, generation: i64, month: NaiveDate) -> String {
    format!(
        "{KEY_VERSION}:calendar:{id}:g{generation}:events:{:04}-{:02}",
        month.year(),
        month.month()
    )
}

pub fn event_full(id: EventId) -> String {
    format!("{KEY_VERSION}:event:{id}:full")
}

pub fn event_attendees(id: EventId) -> String {
    format!("{KEY_VERSION}:event:{id}:attendees")
}

pub fn event_reservations(id: EventId) -> String {
    format!("{RESOURCE_KEY_VERSION}:event:{id}:reservations")
}

pub fn user_profile(id: UserId) -> String {
    format!("{KEY_VERSION}:user:{id}:profile")
}

/// A resource, as of its bookings version (the entry's version).
pub fn resource(id: ResourceId) -> String {
    format!("{RESOURCE_KEY_VERSION}:resource:{id}")
}

/// A resource's confirmed bookings that overlap the UTC day `date`, as of the resource's
/// bookings version `generation` (bumped by every change of its reservations): like month
/// buckets, a write never has to find the days it touched — readers of the resource's new
/// version read new entries, the old ones age out.
pub fn resource_availability(id: ResourceId, generation: i64, date: NaiveDate) -> String {
    format!("{KEY_VERSION}:resource:{id}:g{generation}:availability:{date}")
}

/// Per-kind TTL overrides written as `kind=seconds` pairs separated by commas (e.g.
/// `month_bucket=120,user_profile=3600`; kinds by their [`KeyKind::label`]). Empty: none.
pub fn parse_ttls(spec: &str) -> Result<std::collections::HashMap<KeyKind, Duration>, String> {
    let mut out = std::collections::HashMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (label, secs) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not kind=seconds"))?;
        let kind = KeyKind::from_label(label.trim()).ok_or_else(|| {
            let known: Vec<_> = KeyKind::ALL.iter().map(|k| k.label()).collect();
            format!(
                "unknown key kind `{}` (one of {})",
                label.trim(),
                known.join(", ")
            )
        })?;
        let secs: u64 = secs.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
            format!(
                "the TTL of `{}` must be a positive number of seconds",
                label.trim()
            )
        })?;
        out.insert(kind, Duration::from_secs(secs));
    }
    Ok(out)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(NaiveTime::MIN).and_utc()
}

fn next_month(month: NaiveDate) -> NaiveDate {
    month + Months::new(1)
}

fn next_day(day: NaiveDate) -> NaiveDate {
    day.succ_opt().expect("a day after")
}

/// `first`, `next(first)`, … while its UTC midnight is before `to`.
fn starts_before(
    first: NaiveDate,
    to: DateTime<Utc>,
    next: fn(NaiveDate) -> NaiveDate,
) -> Vec<NaiveDate> {
    std::iter::successors(Some(first), |d| Some(next(*d)))
        .take_while(|d| midnight(*d) < to)
        .collect()
}

/// First days of the UTC months that `[from, to)` touches, in order.
pub fn months_covering(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<NaiveDate> {
    let first = from.date_naive().with_day(1).expect("day 1 exists");
    starts_before(first, to, next_month)
}

/// `[start, end)` of the UTC month beginning on `month`.
pub fn month_span(month: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    (midnight(month), midnight(next_month(month)))
}

/// The UTC days that `[from, to)` touches, in order.
pub fn days_covering(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<NaiveDate> {
    starts_before(from.date_naive(), to, next_day)
}

/// `[start, end)` of the UTC day `date`.
pub fn day_span(date: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    (midnight(date), midnight(next_day(date)))
}

/// A committed change to an event, as the writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EventChange {
    pub event: EventId,
    pub event_version: i64,
    pub calendar: CalendarId,
    pub calendar_version: i64,
}

/// The keys a committed event change makes stale, each with the version the new state carries
/// (fills older than that are refused). Month buckets are covered by the calendar's new generation.
pub fn invalidations_for_event(c: &EventChange) -> Vec<(String, i64)> {
    vec![
        (event_full(c.event), c.event_version),
        (event_attendees(c.event), c.event_version),
        (event_reservations(c.event), c.event_version),
        (calendar_summary(c.calendar), c.calendar_version),
    ]
}

/// The keys a committed calendar change (sharing) makes stale.
pub fn invalidations_for_calendar(
    calendar: CalendarId,
    calendar_version: i64,
) -> Vec<(String, i64)> {
    vec![(calendar_summary(calendar), calendar_version)]
}

/// Every key a committed transaction makes stale, once each, with the highest new version.
/// `resources` are the resources whose bookings the transaction may have changed, with their
/// bookings version after it (their availability entries are covered by the new generation).
/// `users` are users whose profile changed (or was purged), with their new version.
pub fn invalidations(
    events: &[EventChange],
    calendars: &[(CalendarId, i64)],
    resources: &[(ResourceId, i64)],
    users: &[(UserId, i64)],
) -> Vec<(String, i64)> {
    let mut keys: Vec<(String, i64)> = Vec::new();
    for e in events {
        keys.extend(invalidations_for_event(e));
    }
    for (c, v) in calendars {
        keys.extend(invalidations_for_calendar(*c, *v));
    }
    for (r, v) in resources {
        keys.push((resource(*r), *v));
    }
    for (u, v) in users {
        keys.push((user_profile(*u), *v));
    }
    keys.sort();
    keys.reverse();
    keys.dedup_by(|a, b| a.0 == b.0);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ttl_overrides_parse_by_kind_label_and_reject_nonsense() {
        let t = parse_ttls(" month_bucket=120, user_profile=3600 ").unwrap();
        assert_eq!(t[&KeyKind::MonthBucket], Duration::from_secs(120));
        assert_eq!(t[&KeyKind::UserProfile], Duration::from_secs(3600));
        assert_eq!(t.len(), 2);
        assert!(parse_ttls("").unwrap().is_empty());
        assert!(
            parse_ttls("nope=5")
                .unwrap_err()
                .contains("unknown key kind `nope`")
        );
        assert!(parse_ttls("month_bucket").is_err());
        assert!(parse_ttls("month_bucket=0").is_err());
        assert!(parse_ttls("month_bucket=-1").is_err());
        for k in KeyKind::ALL {
            assert_eq!(KeyKind::from_label(k.label()), Some(k));
        }
    }

    #[test]
    fn a_transaction_maps_to_each_key_once_with_its_newest_version() {
        let c = CalendarId::new(1);
        let events = [
            EventChange {
                event: EventId::new(7),
                event_version: 3,
                calendar: c,
                calendar_version: 10,
            },
            EventChange {
                event: EventId::new(8),
                event_version: 1,
                calendar: c,
                calendar_version: 11,
            },
        ];
        let keys = invalidations(&events, &[(c, 11)], &[], &[(UserId::new(4), 2)]);
        assert!(keys.contains(&("v1:user:4:profile".to_owned(), 2)));
        let summary: Vec<_> = keys
            .iter()
            .filter(|(k, _)| k == "v1:calendar:1:summary")
            .collect();
        assert_eq!(summary, vec![&("v1:calendar:1:summary".to_owned(), 11)]);
        assert!(keys.contains(&("v1:event:7:attendees".to_owned(), 3)));
        assert!(keys.contains(&("v1:event:8:full".to_owned(), 1)));
        assert_eq!(keys.len(), 8);
    }

    fn t(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    #[test]
    fn keys_are_versioned_and_hierarchical() {
        assert_eq!(
            calendar_summary(CalendarId::new(7)),
            "v1:calendar:7:summary"
        );
        let nov = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        assert_eq!(
            month_bucket(CalendarId::new(7), 12, nov),
            "v1:calendar:7:g12:events:2026-11"
        );
        assert_eq!(event_full(EventId::new(9)), "v1:event:9:full");
        assert_eq!(event_attendees(EventId::new(9)), "v1:event:9:attendees");
        assert_eq!(user_profile(UserId::new(3)), "v1:user:3:profile");
    }

    #[test]
    fn day_cover() {
        let d = |y, mo, day| NaiveDate::from_ymd_opt(y, mo, day).unwrap();
        let noon = t(2026, 11, 30) + chrono::Duration::hours(12);
        assert_eq!(
            days_covering(noon, t(2026, 12, 2)),
            vec![d(2026, 11, 30), d(2026, 12, 1)]
        );
        assert_eq!(
            days_covering(t(2026, 11, 1), t(2026, 11, 2)),
            vec![d(2026, 11, 1)]
        );
        assert_eq!(day_span(d(2026, 12, 31)), (t(2026, 12, 31), t(2027, 1, 1)));
        assert_eq!(
            resource_availability(ResourceId::new(4), 9, d(2026, 12, 1)),
            "v1:resource:4:g9:availability:2026-12-01"
        );
        assert_eq!(resource(ResourceId::new(4)), "v2:resource:4");
    }

    #[test]
    fn month_cover() {
        let m = |y, mo| NaiveDate::from_ymd_opt(y, mo, 1).unwrap();
        assert_eq!(
            months_covering(t(2026, 11, 1), t(2026, 12, 1)),
            vec![m(2026, 11)]
        );
        assert_eq!(
            months_covering(t(2026, 11, 20), t(2027, 1, 2)),
            vec![m(2026, 11), m(2026, 12), m(2027, 1)]
        );
        assert_eq!(month_span(m(2026, 12)), (t(2026, 12, 1), t(2027, 1, 1)));
    }

    #[test]
    fn event_change_invalidates_event_keys_and_calendar_generation() {
        let keys = invalidations_for_event(&EventChange {
            event: EventId::new(5),
            event_version: 4,
            calendar: CalendarId::new(2),
            calendar_version: 10,
        });
        assert!(keys.contains(&("v1:event:5:full".into(), 4)));
        assert!(keys.contains(&("v1:calendar:2:summary".into(), 10)));
    }

    #[test]
    fn l1_default_is_shorter_than_every_l2_ttl() {
        for k in KeyKind::ALL {
            assert!(k.default_ttl() >= Duration::from_secs(30), "{k:?}");
        }
    }
}
