//! What a window shows: stored single events and overrides as they are, plus the occurrences of
//! every series that fall in the window, minus removed (EXDATE) and overridden ones, in one total
//! order (see [`EventCursor`]). Pure: the caller loads the rows, this decides what they mean.

use crate::recurrence::{Occurrence, RecurrenceRule};
use crate::{DomainError, Event, EventCursor, InstanceId, parse_time_zone};
use chrono::{DateTime, Utc};

/// Most occurrences one series may contribute to a single window.
pub const MAX_OCCURRENCES_PER_WINDOW: usize = 5_000;

/// One entry of a window: a stored row, or an occurrence generated from a series master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed<'a> {
    pub event: &'a Event,
    pub occurrence: Option<Occurrence>,
}

impl Placed<'_> {
    pub fn start(&self) -> DateTime<Utc> {
        self.occurrence.map_or(self.event.start_time, |o| o.start)
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.occurrence.map_or(self.event.end_time, |o| o.end)
    }

    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            start: self.start(),
            id: self.event.id,
            original_start: self.occurrence.map(|o| o.original_start),
        }
    }

    /// The stable public id: the row id for single events and series masters, `series_originalStart`
    /// for instances, generated or overridden.
    pub fn public_id(&self) -> String {
        instance_id(self.event, self.occurrence)
            .map_or_else(|| self.event.id.to_string(), |i| i.format())
    }
}

/// The instance id of a generated occurrence or of an override row.
pub fn instance_id(event: &Event, occurrence: Option<Occurrence>) -> Option<InstanceId> {
    match (
        occurrence,
        event.recurring_event_id,
        event.original_start_time,
    ) {
        (Some(o), _, _) => Some(InstanceId {
            series: event.id,
            original_start: o.original_start,
        }),
        (None, Some(series), Some(original_start)) => Some(InstanceId {
            series,
            original_start,
        }),
        _ => None,
    }
}

/// The parsed rule of a series master (`None` for rows without a rule).
pub fn rule_of(event: &Event) -> Result<Option<RecurrenceRule>, DomainError> {
    let Some(text) = &event.rrule else {
        return Ok(None);
    };
    let rule = if event.all_day {
        RecurrenceRule::parse_all_day(text, event.start_time)?
    } else {
        RecurrenceRule::parse(text, event.start_time, parse_time_zone(&event.time_zone)?)?
    };
    Ok(Some(rule))
}

/// Occurrences of `master` overlapping `[from, to)`, without its exdates and without the original
/// starts in `overridden`.
pub fn occurrences_of(
    master: &Event,
    overridden: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Occurrence>, DomainError> {
    let Some(rule) = rule_of(master)? else {
        return Ok(Vec::new());
    };
    let duration = master.end_time - master.start_time;
    let mut removed: Vec<DateTime<Utc>> = master.exdates.clone();
    removed.extend_from_slice(overridden);
    rule.occurrences(duration, &removed, from, to, MAX_OCCURRENCES_PER_WINDOW)
}

/// Merges a window's rows into one ordered page.
///
/// - `singles`: stored rows without a rule (single events and overrides) overlapping the window,
///   already after `after` and at most `limit` of them (the database did the keyset cut);
/// - `masters`: live series masters that may touch the window;
/// - `overrides`: override rows of those masters whose *original* start lies in the window (they
///   suppress the generated occurrence even when they were moved out of the window).
///
/// Returns at most `limit` entries after `after`.
pub fn place<'a, E: AsRef<Event>>(
    singles: &'a [E],
    masters: &'a [E],
    overrides: &[E],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<EventCursor>,
    limit: usize,
) -> Result<Vec<Placed<'a>>, DomainError> {
    let mut out: Vec<Placed<'a>> = singles
        .iter()
        .map(|e| Placed {
            event: e.as_ref(),
            occurrence: None,
        })
        .collect();
    for m in masters {
        let m = m.as_ref();
        let overridden: Vec<DateTime<Utc>> = overrides
            .iter()
            .map(AsRef::as_ref)
            .filter(|o| o.recurring_event_id == Some(m.id))
            .filter_map(|o| o.original_start_time)
            .collect();
        for occ in occurrences_of(m, &overridden, from, to)? {
            let p = Placed {
                event: m,
                occurrence: Some(occ),
            };
            if after.is_none_or(|a| p.cursor() > a) {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|p| p.cursor());
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CalendarId, EventId, EventStatus, Transparency, UserId};
    use chrono::{Duration, TimeZone};

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn ev(id: i64, start: DateTime<Utc>, rrule: Option<&str>) -> Event {
        Event {
            id: EventId::new(id),
            calendar_id: CalendarId::new(1),
            organizer_id: UserId::new(1),
            title: format!("e{id}"),
            description: None,
            location: None,
            start_time: start,
            end_time: start + Duration::hours(1),
            time_zone: "UTC".into(),
            all_day: false,
            status: EventStatus::Confirmed,
            transparency: Transparency::Busy,
            rrule: rrule.map(str::to_owned),
            exdates: vec![],
            recurring_event_id: None,
            original_start_time: None,
            version: 1,
            created_at: start,
            updated_at: start,
        }
    }

    #[test]
    fn merges_series_and_singles_minus_exdates_and_overrides() {
        let mut daily = ev(10, at(1, 9), Some("FREQ=DAILY"));
        daily.exdates = vec![at(3, 9)];
        let single = ev(20, at(2, 12), None);
        let mut moved = ev(30, at(4, 15), None); // override of Nov 4th, moved to 15:00
        moved.recurring_event_id = Some(EventId::new(10));
        moved.original_start_time = Some(at(4, 9));
        let singles = vec![single, moved.clone()];
        let masters = vec![daily];
        let page = place(&singles, &masters, &[moved], at(1, 0), at(6, 0), None, 100).unwrap();
        let got: Vec<(String, DateTime<Utc>)> =
            page.iter().map(|p| (p.public_id(), p.start())).collect();
        assert_eq!(
            got,
            vec![
                ("10_20261101T090000Z".into(), at(1, 9)),
                ("10_20261102T090000Z".into(), at(2, 9)),
                ("20".into(), at(2, 12)),
                // Nov 3rd removed by EXDATE; Nov 4th replaced by the override at 15:00.
                ("10_20261104T090000Z".into(), at(4, 15)),
                ("10_20261105T090000Z".into(), at(5, 9)),
            ]
        );
    }

    #[test]
    fn pages_by_cursor_without_gaps_or_repeats() {
        let masters = vec![
            ev(10, at(1, 9), Some("FREQ=DAILY")),
            ev(11, at(1, 9), Some("FREQ=DAILY;INTERVAL=2")),
        ];
        let all = place(&[], &masters, &[], at(1, 0), at(11, 0), None, 1000).unwrap();
        assert_eq!(all.len(), 10 + 5);
        let mut after = None;
        let mut walked = Vec::new();
        loop {
            let page = place(&[], &masters, &[], at(1, 0), at(11, 0), after, 4).unwrap();
            if page.is_empty() {
                break;
            }
            after = Some(page.last().unwrap().cursor());
            walked.extend(page.iter().map(|p| p.public_id()));
        }
        assert_eq!(
            walked,
            all.iter().map(|p| p.public_id()).collect::<Vec<_>>()
        );
    }
}
