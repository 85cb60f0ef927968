//! Recurring series (RFC 5545 `RRULE`): a rule parsed against its series' first occurrence, its
//! expansion into the occurrences that touch a window, and the rewrites a "this and following" split
//! needs. The calendar arithmetic itself is the `rrule` crate's; this module decides which rules we
//! accept, how stored rows map onto the crate's inputs, and the edge cases below. It is pure: it
//! computes instants and never loads or stores anything.
//!
//! # Storage conventions
//!
//! * A series master is stored with UTC `start_time`/`end_time` of its **first occurrence**, an IANA
//!   `time_zone`, the rule text without the `RRULE:` prefix and `exdates`, the original starts of
//!   removed occurrences. [`RecurrenceRule::parse`] enforces that the start is the rule's first
//!   occurrence (RFC 5545 leaves an unsynchronised `DTSTART` undefined; we refuse it instead).
//! * Timed series expand in the event's own zone: a 09:00 `Europe/Berlin` weekly meeting stays at
//!   09:00 local time, so its UTC instant moves by an hour at each DST change.
//! * **All-day** events are dates, not instants. An all-day event on 2026-03-29 is stored as
//!   `[2026-03-29T00:00Z, 2026-03-30T00:00Z)` and stays on 2026-03-29 in every zone: clients render
//!   the UTC date, never a converted instant. All-day series are therefore expanded in UTC
//!   ([`RecurrenceRule::parse_all_day`]) so that their dates never shift, and last whole days.
//! * Occurrences start on whole seconds (the crate keeps only hours, minutes and seconds of the
//!   start), which is what lets an [`crate::InstanceId`] name one in basic UTC form.
//! * `UNTIL` must be UTC (`20271231T235959Z`), as RFC 5545 requires once `DTSTART` has a zone; a
//!   floating or date-only `UNTIL` would otherwise be read in the *server's* zone by the crate.
//!
//! # Skipped and repeated local times (DST)
//!
//! RFC 5545 §3.3.10 says an occurrence whose local time does not exist is ignored. We do what
//! Google Calendar and most clients show instead, because it is what the `rrule` crate already does
//! (`add_time_to_date`): when `date + time` is not a unique local time, it takes local midnight of
//! that date and adds the time of day as a duration. So:
//!
//! * a **skipped** time is kept and shifted forward by the gap: a daily 02:30 `Europe/Berlin`
//!   series occurs at 03:30 CEST (01:30Z) on 2026-03-29;
//! * a **repeated** time resolves to its first (earlier) instant: 01:30 `America/New_York` on
//!   2026-11-01 is 01:30 EDT (05:30Z), not 01:30 EST.
//!
//! Both rely on local midnight being unambiguous, which holds for zones whose transitions happen
//! after midnight. In the few zones that change clocks *at* midnight, an occurrence on such a
//! transition day at a skipped or repeated time is dropped by the crate. A consequence of the
//! second rule: a series cannot start at the second (later) 01:30 of a fall-back night, because
//! the rule generates the first one; `parse` rejects that start.
//!
//! # Cost
//!
//! The crate iterates from the series start, so expanding costs one step per occurrence between
//! the start and the end of the window (a daily series 50 years back is ~18 000 cheap steps).
//! Infinite series are only ever iterated up to a bound; [`MAX_EXPANDED`] and [`MAX_COUNT`] keep
//! a hostile rule from turning a query into a CPU sink. Parsing walks to the first occurrence; for
//! a rule that never matches its start, that walk ends at the crate's own loop limit (100 000
//! periods, tens of milliseconds) and the rule is refused.

use crate::DomainError;
use chrono::{DateTime, Duration, NaiveTime, SubsecRound, Timelike, Utc};
use chrono_tz::Tz;
use rrule::{
    Frequency, NWeekday, ParseError, RRule, RRuleError, RRuleSet, Unvalidated, ValidationError,
};
use std::fmt;

/// Longest rule text accepted. Real rules are well under 200 characters.
pub const MAX_RULE_LEN: usize = 512;

/// Largest `COUNT` accepted: 27 years of a daily event. It bounds the work of
/// [`RecurrenceRule::count_before`] and [`RecurrenceRule::last_end`] for counted series.
pub const MAX_COUNT: u32 = 10_000;

/// Most occurrences one expansion may step through (from the series start up to the window's end)
/// before giving up. A step costs ~0.4 µs in release builds, so this caps one expansion near 40 ms;
/// a daily series would have to start ~270 years before the window to reach it.
pub const MAX_EXPANDED: usize = 100_000;

/// The rule parts we accept. Others (BYHOUR, BYMINUTE, BYSECOND, BYYEARDAY, BYWEEKNO, the crate's
/// BYWEEKDAY alias, BYEASTER) are refused: the time of day comes from the series start, and a
/// narrow language is easier to widen later than to narrow.
const SUPPORTED_PARTS: [&str; 9] = [
    "FREQ",
    "INTERVAL",
    "COUNT",
    "UNTIL",
    "BYDAY",
    "BYMONTHDAY",
    "BYMONTH",
    "BYSETPOS",
    "WKST",
];

const UNTIL_FORMAT: &str = "%Y%m%dT%H%M%SZ";
const UNTIL_MSG: &str = "UNTIL must be a UTC date-time such as 20271231T235959Z";

/// A validated recurrence rule, bound to the first occurrence and zone of its series.
#[derive(Debug, Clone)]
pub struct RecurrenceRule {
    /// Normalised text (no prefix, upper case, no empty parts). Kept instead of printing the
    /// crate's rule back: rrule 0.14 prints `BYDAY=1MO` as `MO`, which means every Monday.
    text: String,
    /// The crate's validated rule with its start; iteration is `limited` so that a rule that never
    /// matches again stops after the crate's loop limit instead of spinning.
    set: RRuleSet,
    start: DateTime<Utc>,
    tz: Tz,
    all_day: bool,
    count: Option<u32>,
    until: Option<DateTime<Utc>>,
}

/// One occurrence of a series. `original_start` identifies it (exdates and override rows are keyed
/// by it); expansion yields `start == original_start`, and the caller moves `start`/`end` when an
/// override row replaces the occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Occurrence {
    pub original_start: DateTime<Utc>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl RecurrenceRule {
    /// Parses the rule of a timed series whose first occurrence starts at `start` and which
    /// recurs in `tz`. A leading `RRULE:` is tolerated.
    pub fn parse(text: &str, start: DateTime<Utc>, tz: Tz) -> Result<Self, DomainError> {
        Self::build(text, start, tz, false)
    }

    /// Parses the rule of an all-day series whose first day is stored as `first_day` (00:00 UTC of
    /// that date). The series recurs by UTC date, so its dates never shift.
    pub fn parse_all_day(text: &str, first_day: DateTime<Utc>) -> Result<Self, DomainError> {
        if first_day.time() != NaiveTime::MIN {
            return Err(DomainError::new(
                "an all-day series must start at 00:00 UTC",
            ));
        }
        Self::build(text, first_day, chrono_tz::UTC, true)
    }

    fn build(text: &str, start: DateTime<Utc>, tz: Tz, all_day: bool) -> Result<Self, DomainError> {
        let text = normalize(text)?;
        let rule: RRule<Unvalidated> = text.parse().map_err(|e| describe(&e))?;
        if !matches!(
            rule.get_freq(),
            Frequency::Daily | Frequency::Weekly | Frequency::Monthly | Frequency::Yearly
        ) {
            return Err(DomainError::new(
                "FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY",
            ));
        }
        if rule.get_interval() == 0 {
            return Err(DomainError::new("INTERVAL must be at least 1"));
        }
        let count = rule.get_count();
        match count {
            Some(0) => return Err(DomainError::new("COUNT must be at least 1")),
            Some(n) if n > MAX_COUNT => {
                return Err(DomainError(format!("COUNT may be at most {MAX_COUNT}")));
            }
            _ => {}
        }
        if count.is_some() && rule.get_until().is_some() {
            return Err(DomainError::new("COUNT and UNTIL cannot be used together"));
        }
        // RFC 5545: "BYDAY ... MUST NOT be specified with a numeric value when the FREQ rule part
        // is not set to MONTHLY or YEARLY". The crate would accept and quietly reinterpret it.
        if !matches!(rule.get_freq(), Frequency::Monthly | Frequency::Yearly)
            && rule
                .get_by_weekday()
                .iter()
                .any(|d| matches!(d, NWeekday::Nth(..)))
        {
            return Err(DomainError::new(
                "BYDAY ordinals such as 2MO need FREQ=MONTHLY or YEARLY",
            ));
        }
        let until = rule.get_until().map(|u| u.with_timezone(&Utc));
        if start.nanosecond() != 0 {
            return Err(DomainError::new("a series must start on a whole second"));
        }

        let local_start = start.with_timezone(&rrule::Tz::from(tz));
        let set = rule.build(local_start).map_err(|e| describe(&e))?.limit();
        if (&set).into_iter().next() != Some(local_start) {
            return Err(DomainError::new(
                "startTime must be the first occurrence of the recurrence rule",
            ));
        }
        Ok(Self {
            text,
            set,
            start,
            tz,
            all_day,
            count,
            until,
        })
    }

    /// The rule text to store: without the `RRULE:` prefix, upper case.
    pub fn to_rule_text(&self) -> String {
        self.text.clone()
    }

    /// The first occurrence's start.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// The zone the series recurs in (UTC for all-day series).
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    pub fn is_all_day(&self) -> bool {
        self.all_day
    }

    pub fn count(&self) -> Option<u32> {
        self.count
    }

    pub fn until(&self) -> Option<DateTime<Utc>> {
        self.until
    }

    /// True when the rule has neither COUNT nor UNTIL.
    pub fn is_infinite(&self) -> bool {
        self.count.is_none() && self.until.is_none()
    }

    /// The occurrences overlapping the half-open window `[from, to)` (`start < to` and
    /// `start + duration > from`), sorted by start, without those whose original start is in
    /// `exdates` (compared to the second, as the crate does). More than `max` of them is an error
    /// rather than a silently truncated answer.
    pub fn occurrences(
        &self,
        duration: Duration,
        exdates: &[DateTime<Utc>],
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max: usize,
    ) -> Result<Vec<Occurrence>, DomainError> {
        self.check_duration(duration)?;
        let mut found = Vec::new();
        if to <= from {
            return Ok(found);
        }
        let zone = rrule::Tz::from(self.tz);
        let set = self
            .set
            .clone()
            .set_exdates(exdates.iter().map(|d| d.with_timezone(&zone)).collect());
        for (stepped, start) in (&set).into_iter().enumerate() {
            if stepped >= MAX_EXPANDED {
                return Err(DomainError::new(
                    "the series starts too long before the window",
                ));
            }
            let start = start.with_timezone(&Utc);
            if start >= to {
                break;
            }
            if start + duration <= from {
                continue;
            }
            if found.len() == max {
                return Err(DomainError::new("too many occurrences in the window"));
            }
            found.push(Occurrence {
                original_start: start,
                start,
                end: start + duration,
            });
        }
        Ok(found)
    }

    /// The end of the last occurrence of a finite (COUNT or UNTIL) series; `None` for an infinite
    /// one. Exdates are not consulted, so this is an upper bound once the last occurrence has been
    /// removed, which is what bounding queries and cache invalidation need. A finite series too
    /// long to expand (see [`MAX_EXPANDED`]) also yields `None`, which callers treat as unbounded.
    pub fn last_end(&self, duration: Duration) -> Option<DateTime<Utc>> {
        if self.is_infinite() {
            return None;
        }
        let mut last = None;
        for (stepped, start) in (&self.set).into_iter().enumerate() {
            if stepped >= MAX_EXPANDED {
                return None;
            }
            last = Some(start);
        }
        last.map(|start| start.with_timezone(&Utc) + duration)
    }

    /// For a counted series, how many occurrences start strictly before `instant`, exdated ones
    /// included (RFC 5545 counts the rule's occurrences before removing exdates). `None` when the
    /// rule has no COUNT. A series split at `instant` keeps this many; the new series gets
    /// `COUNT = count - count_before` (see [`Self::remainder_from`]).
    pub fn count_before(&self, instant: DateTime<Utc>) -> Option<u32> {
        self.count?;
        // Bounded by COUNT <= MAX_COUNT, so the result fits and the walk is short.
        let n = (&self.set)
            .into_iter()
            .take_while(|start| start.with_timezone(&Utc) < instant)
            .count();
        Some(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The rule text for the part of the series before `instant`, for a "this and following"
    /// split: the same rule with COUNT dropped and `UNTIL` set to the last whole second before
    /// `instant` (or kept, if it was already earlier). Fails when no occurrence precedes `instant`,
    /// in which case the caller should edit the whole series instead of splitting it.
    pub fn truncated_before(&self, instant: DateTime<Utc>) -> Result<String, DomainError> {
        if instant <= self.start {
            return Err(DomainError::new(
                "the series has no occurrence before that time",
            ));
        }
        // Occurrences are whole seconds, so "strictly before instant" is "at or before the last
        // whole second before it".
        let whole = instant.trunc_subsecs(0);
        let mut until = if whole == instant {
            instant - Duration::seconds(1)
        } else {
            whole
        };
        if let Some(old) = self.until {
            until = until.min(old);
        }
        let text = self
            .parts()
            .filter(|part| !is_part(part, "COUNT") && !is_part(part, "UNTIL"))
            .map(str::to_owned)
            .chain([format!("UNTIL={}", until.format(UNTIL_FORMAT))])
            .collect::<Vec<_>>()
            .join(";");
        // Every text we hand out must parse again against the same start.
        self.reparse(&text, self.start)?;
        Ok(text)
    }

    /// The rule text for a new series continuing this one from `instant` (the other half of a
    /// "this and following" split): COUNT reduced by [`Self::count_before`], UNTIL kept. The caller
    /// parses it against the new series' start, which checks that `instant` is an occurrence.
    pub fn remainder_from(&self, instant: DateTime<Utc>) -> Result<String, DomainError> {
        let none_left = || DomainError::new("the series has no occurrence from that time");
        if self.until.is_some_and(|until| instant > until) {
            return Err(none_left());
        }
        let (Some(count), Some(before)) = (self.count, self.count_before(instant)) else {
            return Ok(self.text.clone());
        };
        let left = count
            .checked_sub(before)
            .filter(|n| *n > 0)
            .ok_or_else(none_left)?;
        Ok(self
            .parts()
            .map(|part| {
                if is_part(part, "COUNT") {
                    format!("COUNT={left}")
                } else {
                    part.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(";"))
    }

    fn reparse(&self, text: &str, start: DateTime<Utc>) -> Result<Self, DomainError> {
        if self.all_day {
            Self::parse_all_day(text, start)
        } else {
            Self::parse(text, start, self.tz)
        }
    }

    fn parts(&self) -> impl Iterator<Item = &str> {
        self.text.split(';')
    }

    fn check_duration(&self, duration: Duration) -> Result<(), DomainError> {
        if duration <= Duration::zero() {
            return Err(DomainError::new("an occurrence must last longer than zero"));
        }
        if self.all_day && duration.num_seconds() % 86_400 != 0 {
            return Err(DomainError::new(
                "an all-day occurrence must last whole days",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for RecurrenceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_part(part: &str, key: &str) -> bool {
    part.split_once('=').is_some_and(|(k, _)| k == key)
}

/// Brings client text into the one form we store, and refuses what the crate would accept too
/// loosely: other properties (`EXRULE:`, `DTSTART:`), parts outside [`SUPPORTED_PARTS`], and
/// BYDAY items such as `XMO`, which rrule 0.14 reads as `MO`.
fn normalize(text: &str) -> Result<String, DomainError> {
    let invalid = || DomainError::new("invalid recurrence rule");
    if text.len() > MAX_RULE_LEN {
        return Err(DomainError(format!(
            "a recurrence rule may be at most {MAX_RULE_LEN} characters"
        )));
    }
    if !text.is_ascii() {
        return Err(invalid());
    }
    let upper = text.trim().to_ascii_uppercase();
    let body = upper.strip_prefix("RRULE:").unwrap_or(&upper);
    if body.contains(':') || body.chars().any(|c| c.is_whitespace()) {
        return Err(invalid());
    }
    let mut parts = Vec::new();
    for part in body.split(';').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(invalid)?;
        if !SUPPORTED_PARTS.contains(&key) {
            return Err(DomainError(format!(
                "unsupported recurrence rule part {key:?}"
            )));
        }
        if key == "BYDAY" && !value.split(',').all(is_byday_item) {
            return Err(DomainError::new("invalid BYDAY"));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(DomainError::new("the recurrence rule is empty"));
    }
    Ok(parts.join(";"))
}

/// `[+|-][1-53]` followed by a two-letter weekday, as in RFC 5545 `weekdaynum`.
fn is_byday_item(item: &str) -> bool {
    let Some((number, day)) = item.len().checked_sub(2).map(|i| item.split_at(i)) else {
        return false;
    };
    if !matches!(day, "MO" | "TU" | "WE" | "TH" | "FR" | "SA" | "SU") {
        return false;
    }
    if number.is_empty() {
        return true;
    }
    let digits = number.strip_prefix(['+', '-']).unwrap_or(number);
    digits.len() <= 2
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(digits.parse::<u8>(), Ok(1..=53))
}

/// Short, client-safe messages for the crate's errors; its own messages are long and some mention
/// the server's local zone.
fn describe(error: &RRuleError) -> DomainError {
    let msg = match error {
        RRuleError::ParserError(e) => match e {
            ParseError::InvalidFrequency(_) => {
                "FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY".to_owned()
            }
            ParseError::MissingProperty(p) => format!("the recurrence rule needs {p}"),
            ParseError::DuplicateProperty(p) => format!("{p} appears twice"),
            ParseError::InvalidDateTime { .. }
            | ParseError::InvalidDateTimeInLocalTimezone { .. }
            | ParseError::DateTimeInLocalTimezoneIsAmbiguous { .. } => UNTIL_MSG.to_owned(),
            ParseError::InvalidWeekday(_) => "invalid BYDAY".to_owned(),
            ParseError::InvalidWeekdayStart(_) => "invalid WKST".to_owned(),
            ParseError::InvalidInterval(_) => "invalid INTERVAL".to_owned(),
            ParseError::InvalidCount(_) => "invalid COUNT".to_owned(),
            ParseError::InvalidByMonthDay(_) => "invalid BYMONTHDAY".to_owned(),
            ParseError::InvalidByMonth(_) => "invalid BYMONTH".to_owned(),
            ParseError::InvalidBySetPos(_) => "invalid BYSETPOS".to_owned(),
            _ => "invalid recurrence rule".to_owned(),
        },
        RRuleError::ValidationError(e) => match e {
            ValidationError::DtStartUntilMismatchTimezone { .. } => UNTIL_MSG.to_owned(),
            ValidationError::UntilBeforeStart { .. } => "UNTIL is before startTime".to_owned(),
            ValidationError::BySetPosWithoutByRule => {
                "BYSETPOS needs another BYxxx part".to_owned()
            }
            ValidationError::InvalidByRuleAndFrequency { by_rule, freq } => {
                format!("{by_rule} cannot be used with FREQ={freq}")
            }
            ValidationError::InvalidFieldValue { field, .. }
            | ValidationError::InvalidFieldValueRange { field, .. }
            | ValidationError::InvalidFieldValueRangeWithFreq { field, .. } => {
                format!("{field} is out of range")
            }
            _ => "invalid recurrence rule".to_owned(),
        },
        _ => "invalid recurrence rule".to_owned(),
    };
    DomainError(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::Berlin, UTC};

    /// `t("2026-03-02T09:00")` is that instant in UTC.
    fn t(s: &str) -> DateTime<Utc> {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
            .unwrap()
            .and_utc()
    }

    fn starts(occurrences: &[Occurrence]) -> Vec<DateTime<Utc>> {
        occurrences.iter().map(|o| o.start).collect()
    }

    fn ts(list: &[&str]) -> Vec<DateTime<Utc>> {
        list.iter().map(|s| t(s)).collect()
    }

    /// Every occurrence in a generous window (finite rules in these tests end well within it).
    fn all(rule: &RecurrenceRule) -> Vec<DateTime<Utc>> {
        starts(
            &rule
                .occurrences(
                    Duration::hours(1),
                    &[],
                    t("2000-01-01T00:00"),
                    t("2100-01-01T00:00"),
                    10_000,
                )
                .unwrap(),
        )
    }

    fn window(
        rule: &RecurrenceRule,
        duration: Duration,
        from: &str,
        to: &str,
    ) -> Vec<DateTime<Utc>> {
        starts(
            &rule
                .occurrences(duration, &[], t(from), t(to), 1000)
                .unwrap(),
        )
    }

    #[test]
    fn weekly_by_day_with_count() {
        // 10:00 CET = 09:00Z; 2026-03-02 is a Monday; all six are before the DST change.
        let rule = RecurrenceRule::parse(
            "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6",
            t("2026-03-02T09:00"),
            Berlin,
        )
        .unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-03-02T09:00",
                "2026-03-04T09:00",
                "2026-03-09T09:00",
                "2026-03-11T09:00",
                "2026-03-16T09:00",
                "2026-03-18T09:00",
            ])
        );
    }

    #[test]
    fn daily_interval_until_is_inclusive() {
        let rule = RecurrenceRule::parse(
            "FREQ=DAILY;INTERVAL=3;UNTIL=20260113T090000Z",
            t("2026-01-01T09:00"),
            UTC,
        )
        .unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-01-01T09:00",
                "2026-01-04T09:00",
                "2026-01-07T09:00",
                "2026-01-10T09:00",
                "2026-01-13T09:00",
            ])
        );
    }

    #[test]
    fn monthly_second_monday() {
        let rule =
            RecurrenceRule::parse("FREQ=MONTHLY;BYDAY=2MO;COUNT=4", t("2026-01-12T15:00"), UTC)
                .unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-01-12T15:00",
                "2026-02-09T15:00",
                "2026-03-09T15:00",
                "2026-04-13T15:00"
            ])
        );
    }

    #[test]
    fn monthly_last_friday() {
        let rule = RecurrenceRule::parse(
            "FREQ=MONTHLY;BYDAY=-1FR;COUNT=4",
            t("2026-01-30T15:00"),
            UTC,
        )
        .unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-01-30T15:00",
                "2026-02-27T15:00",
                "2026-03-27T15:00",
                "2026-04-24T15:00"
            ])
        );
    }

    #[test]
    fn monthly_31st_skips_short_months() {
        let rule = RecurrenceRule::parse(
            "FREQ=MONTHLY;BYMONTHDAY=31;COUNT=5",
            t("2026-01-31T12:00"),
            UTC,
        )
        .unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-01-31T12:00",
                "2026-03-31T12:00",
                "2026-05-31T12:00",
                "2026-07-31T12:00",
                "2026-08-31T12:00",
            ])
        );
    }

    #[test]
    fn monthly_last_weekday_via_bysetpos() {
        let rule = RecurrenceRule::parse(
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1;COUNT=4",
            t("2026-01-30T16:00"),
            UTC,
        )
        .unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-01-30T16:00",
                "2026-02-27T16:00",
                "2026-03-31T16:00",
                "2026-04-30T16:00"
            ])
        );
    }

    #[test]
    fn yearly_leap_day_only_in_leap_years() {
        let rule = RecurrenceRule::parse(
            "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
            t("2028-02-29T10:00"),
            UTC,
        )
        .unwrap();
        let day = Duration::days(1);
        assert_eq!(
            window(&rule, day, "2028-01-01T00:00", "2037-01-01T00:00"),
            ts(&["2028-02-29T10:00", "2032-02-29T10:00", "2036-02-29T10:00"])
        );
        // 2100 is not a leap year.
        assert_eq!(
            window(&rule, day, "2096-01-01T00:00", "2105-01-01T00:00"),
            ts(&["2096-02-29T10:00", "2104-02-29T10:00"])
        );
    }

    #[test]
    fn exdates_remove_exact_original_starts() {
        let rule = RecurrenceRule::parse(
            "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6",
            t("2026-03-02T09:00"),
            Berlin,
        )
        .unwrap();
        let exdates = ts(&[
            "2026-03-04T09:00",
            "2026-03-16T09:00",
            "2026-03-05T09:00",
            "2026-03-09T10:00",
        ]);
        let got = rule
            .occurrences(
                Duration::hours(1),
                &exdates,
                t("2026-01-01T00:00"),
                t("2027-01-01T00:00"),
                100,
            )
            .unwrap();
        assert_eq!(
            starts(&got),
            ts(&[
                "2026-03-02T09:00",
                "2026-03-09T09:00",
                "2026-03-11T09:00",
                "2026-03-18T09:00"
            ])
        );
        assert_eq!(
            got[0],
            Occurrence {
                original_start: t("2026-03-02T09:00"),
                start: t("2026-03-02T09:00"),
                end: t("2026-03-02T10:00"),
            }
        );
    }

    #[test]
    fn window_is_half_open_and_uses_overlap() {
        // Daily 09:00-10:00Z.
        let rule = RecurrenceRule::parse("FREQ=DAILY", t("2026-01-01T09:00"), UTC).unwrap();
        let hour = Duration::hours(1);
        // Jan 2 started before `from` but is still running: included. Jan 4 starts at `to`: not.
        assert_eq!(
            window(&rule, hour, "2026-01-02T09:30", "2026-01-04T09:00"),
            ts(&["2026-01-02T09:00", "2026-01-03T09:00"])
        );
        // Jan 2 ends exactly at `from`: not included.
        assert_eq!(
            window(&rule, hour, "2026-01-02T10:00", "2026-01-03T09:01"),
            ts(&["2026-01-03T09:00"])
        );
        assert!(window(&rule, hour, "2026-01-02T10:00", "2026-01-02T10:00").is_empty());
        assert!(window(&rule, hour, "2025-01-01T00:00", "2026-01-01T09:00").is_empty());
    }

    #[test]
    fn infinite_series_ten_years_out() {
        // 10:00 Berlin; DST in 2036 starts on March 30, so early March is CET (09:00Z).
        let rule =
            RecurrenceRule::parse("FREQ=WEEKLY;BYDAY=MO", t("2026-03-02T09:00"), Berlin).unwrap();
        assert!(rule.is_infinite());
        assert_eq!(
            window(
                &rule,
                Duration::hours(1),
                "2036-03-01T00:00",
                "2036-03-15T00:00"
            ),
            ts(&["2036-03-03T09:00", "2036-03-10T09:00"])
        );
    }

    #[test]
    fn berlin_keeps_local_time_across_dst() {
        // 09:00 Berlin, Mondays: CET (UTC+1) until 2026-03-29, CEST (UTC+2) until 2026-10-25.
        let rule = RecurrenceRule::parse("FREQ=WEEKLY", t("2026-03-16T08:00"), Berlin).unwrap();
        let hour = Duration::hours(1);
        assert_eq!(
            window(&rule, hour, "2026-03-16T00:00", "2026-04-07T00:00"),
            ts(&[
                "2026-03-16T08:00",
                "2026-03-23T08:00",
                "2026-03-30T07:00",
                "2026-04-06T07:00"
            ])
        );
        assert_eq!(
            window(&rule, hour, "2026-10-12T00:00", "2026-11-03T00:00"),
            ts(&[
                "2026-10-12T07:00",
                "2026-10-19T07:00",
                "2026-10-26T08:00",
                "2026-11-02T08:00"
            ])
        );
    }

    #[test]
    fn new_york_keeps_local_time_across_dst() {
        // 09:00 New York, Mondays: EST (UTC-5) until 2026-03-08, EDT (UTC-4) until 2026-11-01.
        let rule =
            RecurrenceRule::parse("FREQ=WEEKLY;BYDAY=MO", t("2026-03-02T14:00"), New_York).unwrap();
        let hour = Duration::hours(1);
        assert_eq!(
            window(&rule, hour, "2026-03-01T00:00", "2026-03-17T00:00"),
            ts(&["2026-03-02T14:00", "2026-03-09T13:00", "2026-03-16T13:00"])
        );
        assert_eq!(
            window(&rule, hour, "2026-10-25T00:00", "2026-11-10T00:00"),
            ts(&["2026-10-26T13:00", "2026-11-02T14:00", "2026-11-09T14:00"])
        );
    }

    #[test]
    fn skipped_local_time_is_shifted_forward_by_the_gap() {
        // Daily 02:30 Berlin. 02:30 does not exist on 2026-03-29; the occurrence is kept at
        // 03:30 CEST, which is 01:30Z (not dropped, as RFC 5545 would have it).
        let rule =
            RecurrenceRule::parse("FREQ=DAILY;COUNT=4", t("2026-03-27T01:30"), Berlin).unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-03-27T01:30",
                "2026-03-28T01:30",
                "2026-03-29T01:30",
                "2026-03-30T00:30"
            ])
        );
        assert_eq!(rule.count_before(t("2026-03-30T00:00")), Some(3));
    }

    #[test]
    fn repeated_local_time_uses_the_first_instant() {
        // Daily 01:30 New York. 01:30 happens twice on 2026-11-01 (EDT 05:30Z, then EST 06:30Z).
        let rule =
            RecurrenceRule::parse("FREQ=DAILY;COUNT=4", t("2026-10-30T05:30"), New_York).unwrap();
        assert_eq!(
            all(&rule),
            ts(&[
                "2026-10-30T05:30",
                "2026-10-31T05:30",
                "2026-11-01T05:30",
                "2026-11-02T06:30"
            ])
        );
        // The second 01:30 is never generated, so a series cannot start there.
        assert!(RecurrenceRule::parse("FREQ=DAILY", t("2026-11-01T06:30"), New_York).is_err());
    }

    #[test]
    fn all_day_birthday_stays_on_its_date() {
        let rule = RecurrenceRule::parse_all_day("FREQ=YEARLY", t("2026-03-29T00:00")).unwrap();
        assert!(rule.is_all_day());
        assert_eq!(rule.time_zone(), UTC);
        let got = rule
            .occurrences(
                Duration::days(1),
                &[],
                t("2026-01-01T00:00"),
                t("2030-01-01T00:00"),
                10,
            )
            .unwrap();
        assert_eq!(
            starts(&got),
            ts(&[
                "2026-03-29T00:00",
                "2027-03-29T00:00",
                "2028-03-29T00:00",
                "2029-03-29T00:00"
            ])
        );
        assert_eq!(got[0].end, t("2026-03-30T00:00"));
        // A window that is one local day in UTC+2 (Berlin summer) still sees the stored date.
        assert_eq!(
            window(
                &rule,
                Duration::days(1),
                "2027-03-28T22:00",
                "2027-03-29T22:00"
            ),
            ts(&["2027-03-29T00:00"])
        );
    }

    #[test]
    fn all_day_weekly() {
        // Tuesdays and Thursdays from 2026-03-24 (a Tuesday), across the European DST change.
        let rule =
            RecurrenceRule::parse_all_day("FREQ=WEEKLY;BYDAY=TU,TH;COUNT=4", t("2026-03-24T00:00"))
                .unwrap();
        let got = rule
            .occurrences(
                Duration::days(1),
                &[],
                t("2026-03-01T00:00"),
                t("2026-05-01T00:00"),
                10,
            )
            .unwrap();
        assert_eq!(
            starts(&got),
            ts(&[
                "2026-03-24T00:00",
                "2026-03-26T00:00",
                "2026-03-31T00:00",
                "2026-04-02T00:00"
            ])
        );
        assert!(got.iter().all(|o| o.end - o.start == Duration::days(1)));
    }

    #[test]
    fn all_day_rules_need_midnight_and_whole_days() {
        assert!(RecurrenceRule::parse_all_day("FREQ=YEARLY", t("2026-03-29T09:00")).is_err());
        let rule = RecurrenceRule::parse_all_day("FREQ=YEARLY", t("2026-03-29T00:00")).unwrap();
        assert!(
            rule.occurrences(
                Duration::hours(5),
                &[],
                t("2026-01-01T00:00"),
                t("2027-01-01T00:00"),
                10
            )
            .is_err()
        );
    }

    #[test]
    fn parse_accepts_and_normalizes() {
        let start = t("2026-03-02T09:00");
        for (input, stored) in [
            (
                "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10",
                "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10",
            ),
            ("RRULE:FREQ=WEEKLY;BYDAY=MO", "FREQ=WEEKLY;BYDAY=MO"),
            ("rrule:freq=weekly;byday=mo;", "FREQ=WEEKLY;BYDAY=MO"),
            ("FREQ=MONTHLY;BYDAY=1MO", "FREQ=MONTHLY;BYDAY=1MO"),
            ("FREQ=MONTHLY;BYDAY=+1MO", "FREQ=MONTHLY;BYDAY=+1MO"),
            (
                "FREQ=WEEKLY;INTERVAL=2;WKST=SU;UNTIL=20270101T000000Z",
                "FREQ=WEEKLY;INTERVAL=2;WKST=SU;UNTIL=20270101T000000Z",
            ),
            (
                "FREQ=YEARLY;BYMONTH=3;BYDAY=1MO",
                "FREQ=YEARLY;BYMONTH=3;BYDAY=1MO",
            ),
        ] {
            let rule =
                RecurrenceRule::parse(input, start, UTC).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(rule.to_rule_text(), stored);
            assert_eq!(rule.to_string(), stored);
        }
    }

    #[test]
    fn parse_rejects() {
        let start = t("2026-03-02T09:00");
        for (input, message) in [
            ("FREQ=SECONDLY", "FREQ must be"),
            ("FREQ=MINUTELY", "FREQ must be"),
            ("FREQ=HOURLY", "FREQ must be"),
            ("FREQ=FORTNIGHTLY", "FREQ must be"),
            (
                "FREQ=WEEKLY;COUNT=2;UNTIL=20270101T000000Z",
                "COUNT and UNTIL",
            ),
            ("nonsense", "invalid recurrence rule"),
            ("", "empty"),
            (";", "empty"),
            ("COUNT=3", "needs FREQ"),
            ("FREQ=DAILY;FREQ=DAILY", "twice"),
            (
                "FREQ=DAILY;BYHOUR=9",
                "unsupported recurrence rule part \"BYHOUR\"",
            ),
            ("FREQ=YEARLY;BYWEEKNO=1", "unsupported"),
            ("FREQ=WEEKLY;BYWEEKDAY=MO", "unsupported"),
            ("FREQ=DAILY;X-FOO=1", "unsupported"),
            ("EXRULE:FREQ=DAILY", "invalid recurrence rule"),
            ("DTSTART:20260302T090000Z", "invalid recurrence rule"),
            ("FREQ=DAILY; COUNT=3", "invalid recurrence rule"),
            ("FREQ=DAILY;COUNT=0", "COUNT must be at least 1"),
            ("FREQ=DAILY;COUNT=100000", "at most"),
            ("FREQ=DAILY;COUNT=x", "invalid COUNT"),
            ("FREQ=DAILY;INTERVAL=0", "INTERVAL must be at least 1"),
            ("FREQ=WEEKLY;BYDAY=XMO", "invalid BYDAY"),
            ("FREQ=MONTHLY;BYDAY=0MO", "invalid BYDAY"),
            ("FREQ=MONTHLY;BYDAY=+MO", "invalid BYDAY"),
            ("FREQ=MONTHLY;BYDAY=MONDAY", "invalid BYDAY"),
            ("FREQ=WEEKLY;BYDAY=2MO", "ordinals"),
            (
                "FREQ=WEEKLY;BYMONTHDAY=3",
                "BYMONTHDAY cannot be used with FREQ=WEEKLY",
            ),
            ("FREQ=MONTHLY;BYMONTHDAY=32", "invalid BYMONTHDAY"),
            ("FREQ=YEARLY;BYMONTH=13", "invalid BYMONTH"),
            ("FREQ=WEEKLY;UNTIL=20270101T000000", "UNTIL must be a UTC"),
            ("FREQ=WEEKLY;UNTIL=20270101", "UNTIL must be a UTC"),
            ("FREQ=WEEKLY;UNTIL=tomorrow", "UNTIL must be a UTC"),
            ("FREQ=WEEKLY;UNTIL=20200101T000000Z", "UNTIL is before"),
            // 2026-03-02 is a Monday, so a Tuesday rule does not start there.
            ("FREQ=WEEKLY;BYDAY=TU", "first occurrence"),
            ("FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30", "first occurrence"),
            ("FREQ=DAILY;WKST=XX", "invalid WKST"),
            ("FREQ=DAILY;\u{e9}", "invalid recurrence rule"),
        ] {
            let err = RecurrenceRule::parse(input, start, Berlin).unwrap_err();
            assert!(err.0.contains(message), "{input:?}: {err}");
            assert!(err.0.len() < 80, "{input:?}: message too long: {err}");
        }
        let long = format!("FREQ=DAILY;{}", "COUNT=1;".repeat(100));
        assert!(
            RecurrenceRule::parse(&long, start, UTC)
                .unwrap_err()
                .0
                .contains("at most")
        );
        let fractional = start + Duration::milliseconds(500);
        assert!(RecurrenceRule::parse("FREQ=DAILY", fractional, UTC).is_err());
    }

    #[test]
    fn too_many_occurrences_is_an_error() {
        let rule = RecurrenceRule::parse("FREQ=DAILY", t("2026-01-01T09:00"), UTC).unwrap();
        let err = rule
            .occurrences(
                Duration::hours(1),
                &[],
                t("2026-01-01T00:00"),
                t("2027-01-01T00:00"),
                100,
            )
            .unwrap_err();
        assert_eq!(err.0, "too many occurrences in the window");
        // Exactly `max` is fine.
        let got = rule
            .occurrences(
                Duration::hours(1),
                &[],
                t("2026-01-01T00:00"),
                t("2026-01-11T00:00"),
                10,
            )
            .unwrap();
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn expansion_is_bounded_for_ancient_series() {
        // ~118 000 daily steps from 1700 to 2026: more than MAX_EXPANDED.
        let rule = RecurrenceRule::parse("FREQ=DAILY", t("1700-01-01T09:00"), UTC).unwrap();
        let err = rule
            .occurrences(
                Duration::hours(1),
                &[],
                t("2026-01-01T00:00"),
                t("2026-01-08T00:00"),
                10,
            )
            .unwrap_err();
        assert!(err.0.contains("too long before"), "{err}");
        // ~9 500 steps from 2000: fine.
        let rule = RecurrenceRule::parse("FREQ=DAILY", t("2000-01-01T09:00"), UTC).unwrap();
        assert_eq!(
            window(
                &rule,
                Duration::hours(1),
                "2026-01-01T00:00",
                "2026-01-03T00:00"
            ),
            ts(&["2026-01-01T09:00", "2026-01-02T09:00"])
        );
    }

    #[test]
    fn non_positive_duration_is_an_error() {
        let rule = RecurrenceRule::parse("FREQ=DAILY", t("2026-01-01T09:00"), UTC).unwrap();
        assert!(
            rule.occurrences(
                Duration::zero(),
                &[],
                t("2026-01-01T00:00"),
                t("2026-01-02T00:00"),
                10
            )
            .is_err()
        );
    }

    #[test]
    fn last_end_of_finite_and_infinite_series() {
        let hour = Duration::hours(1);
        let counted = RecurrenceRule::parse(
            "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6",
            t("2026-03-02T09:00"),
            Berlin,
        )
        .unwrap();
        assert_eq!(counted.last_end(hour), Some(t("2026-03-18T10:00")));
        let until = RecurrenceRule::parse(
            "FREQ=DAILY;INTERVAL=3;UNTIL=20260115T000000Z",
            t("2026-01-01T09:00"),
            UTC,
        )
        .unwrap();
        assert_eq!(until.last_end(hour), Some(t("2026-01-13T10:00")));
        let infinite = RecurrenceRule::parse("FREQ=DAILY", t("2026-01-01T09:00"), UTC).unwrap();
        assert_eq!(infinite.last_end(hour), None);
    }

    #[test]
    fn count_before_counts_rule_occurrences() {
        let rule = RecurrenceRule::parse(
            "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6",
            t("2026-03-02T09:00"),
            Berlin,
        )
        .unwrap();
        assert_eq!(rule.count_before(t("2026-03-02T09:00")), Some(0));
        assert_eq!(rule.count_before(t("2026-03-09T09:00")), Some(2));
        assert_eq!(rule.count_before(t("2026-03-09T09:01")), Some(3));
        assert_eq!(rule.count_before(t("2030-01-01T00:00")), Some(6));
        let infinite = RecurrenceRule::parse("FREQ=DAILY", t("2026-01-01T09:00"), UTC).unwrap();
        assert_eq!(infinite.count_before(t("2026-02-01T00:00")), None);
    }

    #[test]
    fn split_a_counted_series() {
        let start = t("2026-03-02T09:00");
        let rule = RecurrenceRule::parse("FREQ=WEEKLY;BYDAY=MO,WE;COUNT=6", start, Berlin).unwrap();
        let split = t("2026-03-09T09:00");

        let head = rule.truncated_before(split).unwrap();
        assert_eq!(head, "FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20260309T085959Z");
        let head = RecurrenceRule::parse(&head, start, Berlin).unwrap();
        assert_eq!(all(&head), ts(&["2026-03-02T09:00", "2026-03-04T09:00"]));

        let tail = rule.remainder_from(split).unwrap();
        assert_eq!(tail, "FREQ=WEEKLY;BYDAY=MO,WE;COUNT=4");
        let tail = RecurrenceRule::parse(&tail, split, Berlin).unwrap();
        assert_eq!(
            all(&tail),
            ts(&[
                "2026-03-09T09:00",
                "2026-03-11T09:00",
                "2026-03-16T09:00",
                "2026-03-18T09:00"
            ])
        );

        assert!(rule.truncated_before(start).is_err());
        assert!(rule.remainder_from(t("2026-03-19T00:00")).is_err());
    }

    #[test]
    fn split_an_infinite_or_until_series() {
        let start = t("2026-01-12T15:00");
        // `1MO` must survive: rrule 0.14 would print it back as `MO` (every Monday).
        let rule =
            RecurrenceRule::parse("FREQ=MONTHLY;BYDAY=1MO", t("2026-01-05T15:00"), UTC).unwrap();
        assert_eq!(
            rule.truncated_before(t("2026-03-02T15:00")).unwrap(),
            "FREQ=MONTHLY;BYDAY=1MO;UNTIL=20260302T145959Z"
        );
        assert_eq!(
            rule.remainder_from(t("2026-03-02T15:00")).unwrap(),
            "FREQ=MONTHLY;BYDAY=1MO"
        );

        // A split instant with a fraction keeps the occurrence at its whole second.
        let daily = RecurrenceRule::parse("FREQ=DAILY;UNTIL=20260201T000000Z", start, UTC).unwrap();
        let text = daily
            .truncated_before(t("2026-01-14T15:00") + Duration::milliseconds(250))
            .unwrap();
        assert_eq!(text, "FREQ=DAILY;UNTIL=20260114T150000Z");
        // An earlier UNTIL is kept.
        let text = daily.truncated_before(t("2026-06-01T00:00")).unwrap();
        assert_eq!(text, "FREQ=DAILY;UNTIL=20260201T000000Z");
    }

    #[test]
    fn split_an_all_day_series() {
        let rule =
            RecurrenceRule::parse_all_day("FREQ=YEARLY;COUNT=5", t("2026-03-29T00:00")).unwrap();
        let text = rule.truncated_before(t("2028-03-29T00:00")).unwrap();
        assert_eq!(text, "FREQ=YEARLY;UNTIL=20280328T235959Z");
        assert_eq!(rule.count_before(t("2028-03-29T00:00")), Some(2));
        assert_eq!(
            rule.remainder_from(t("2028-03-29T00:00")).unwrap(),
            "FREQ=YEARLY;COUNT=3"
        );
    }
}
