//! The month every fixture lives in, and the instants and strings tests build from it.
//!
//! Tests name no date of their own: they take a day of the anchor month ([`at`], [`month_start`],
//! [`first_weekday`]) and write it the way the API reads it ([`iso`], [`window_vars`],
//! [`window_args`]) or answers it ([`rfc`], and [`compact`] in an occurrence's id). The anchor is
//! fixed, so no test depends on the month the suite runs in, and changing [`ANCHOR`] moves every
//! such test to another month. Tests whose date is the point (a zone's DST transition) keep
//! their literals and say why.

use cal_domain::CalendarId;
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc, Weekday};
use serde_json::{Value, json};

/// The first day of the month every fixture lives in. It is fixed, so that no test depends on
/// the month the suite runs in, and it is what tests pass to the seed (`Store::seed`, and
/// `calendar seed --anchor`, which takes `ANCHOR.to_string()`, `YYYY-MM-DD`). Tests derive
/// every instant from it: set it to another month and the suite still passes there.
pub const ANCHOR: NaiveDate = match NaiveDate::from_ymd_opt(2026, 11, 1) {
    Some(d) => d,
    None => panic!("the anchor is a date"),
};

/// Midnight UTC on the first day of the month `n` months after the anchor month (`n = 0` is
/// the anchor month itself).
pub fn month_start_after(n: u32) -> DateTime<Utc> {
    ANCHOR
        .checked_add_months(Months::new(n))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("a month not far from the anchor exists")
        .and_utc()
}

/// Midnight UTC on the first day of the anchor month (`2026-11-01T00:00:00Z`).
pub fn month_start() -> DateTime<Utc> {
    month_start_after(0)
}

/// Midnight UTC on the first day of the month after the anchor month: the end of the anchor
/// month's window (`2026-12-01T00:00:00Z`).
pub fn next_month_start() -> DateTime<Utc> {
    month_start_after(1)
}

/// `day` of the anchor month at `hour:min` UTC. Panics on a day the month does not have: a
/// test that moves with the anchor stays within the first 28 days, or 30 where it must.
pub fn at(day: u32, hour: u32, min: u32) -> DateTime<Utc> {
    ANCHOR
        .with_day(day)
        .and_then(|d| d.and_hms_opt(hour, min, 0))
        .unwrap_or_else(|| panic!("no day {day}, {hour:02}:{min:02} in the anchor month"))
        .and_utc()
}

/// The day of the anchor month that is its first `weekday` (1 to 7), for tests whose rule is
/// tied to a weekday (`BYDAY=MO`).
pub fn first_weekday(weekday: Weekday) -> u32 {
    let first = month_start().weekday().num_days_from_monday();
    1 + (7 + weekday.num_days_from_monday() - first) % 7
}

/// `2026-11-01T00:00:00Z`: an instant as tests send it (variables, inline arguments).
pub fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2026-11-04T09:00:00+00:00`: an instant as the API answers it in UTC.
pub fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

/// `20261102T090000Z`: an occurrence's original start as its id writes it
/// (`{series}_20261102T090000Z`).
pub fn compact(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The month view's variables (`calendarId`, `from`, `to`) over `[from, to)`.
pub fn window_vars(calendar: CalendarId, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    json!({ "calendarId": calendar.to_string(), "from": iso(from), "to": iso(to) })
}

/// The month view's variables over the anchor month.
pub fn month_vars(calendar: CalendarId) -> Value {
    window_vars(calendar, month_start(), next_month_start())
}

/// `from: "…", to: "…"`: a window as inline GraphQL arguments, for queries that write it in
/// the document rather than in variables.
pub fn window_args(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    format!(r#"from: "{}", to: "{}""#, iso(from), iso(to))
}

/// The anchor month as inline GraphQL arguments.
pub fn month_args() -> String {
    window_args(month_start(), next_month_start())
}
