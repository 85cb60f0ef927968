//! Recurring events at the API edge: resolving a public event id (a row or `series_originalStart`)
//! to what it denotes (and saying so in the terms of [`cal_domain::series_edit`], which decides
//! what an edit does), checking rule input, and working out bookings per occurrence.

use super::access::{EventAccess, readable_event};
use super::rc;
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, Enum, ID};
use cal_domain as domain;
use cal_domain::Occurrence;
use cal_domain::recurrence::RecurrenceRule;
use cal_domain::series_edit::{EditTarget, Scope};
use chrono::{DateTime, Duration, Timelike, Utc};
use std::sync::Arc;

/// How much of a series an edit applies to.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum EditScope {
    /// Only this occurrence (it becomes an override).
    This,
    /// This occurrence and all later ones (the series is split here).
    ThisAndFollowing,
    /// The whole series.
    All,
}

impl EditScope {
    /// The scope asked for (`None`: the target's default), as [`cal_domain::series_edit`] has it.
    pub(crate) fn requested(scope: Option<EditScope>) -> Scope {
        match scope {
            None => Scope::Unspecified,
            Some(EditScope::This) => Scope::This,
            Some(EditScope::ThisAndFollowing) => Scope::ThisAndFollowing,
            Some(EditScope::All) => Scope::All,
        }
    }
}

/// What a public event id denotes.
pub(crate) enum Target {
    /// A stored row addressed by its own id: a single event, a series master or an override.
    Row(Arc<domain::Event>),
    /// An occurrence the rule generates, not stored.
    Generated {
        master: Arc<domain::Event>,
        occurrence: Occurrence,
    },
    /// An occurrence addressed by instance id that has been overridden: the override row.
    Override { row: Arc<domain::Event> },
}

impl Target {
    /// The stored row edits of "this event" apply to when no occurrence logic is involved.
    pub fn row(&self) -> &Arc<domain::Event> {
        match self {
            Target::Row(r) | Target::Override { row: r } => r,
            Target::Generated { master, .. } => master,
        }
    }

    /// What an edit addressed to this target reaches, as [`cal_domain::series_edit`] has it.
    pub fn edit_target(&self) -> EditTarget {
        match self {
            Target::Row(row) => EditTarget::Row {
                has_rule: row.rrule.is_some(),
                in_series: row.recurring_event_id.is_some(),
            },
            Target::Override { row } => EditTarget::Override {
                has_rule: row.rrule.is_some(),
            },
            Target::Generated { master, occurrence } => EditTarget::Generated {
                first: occurrence.original_start == master.start_time,
            },
        }
    }

    pub fn view(&self) -> super::types::Event {
        match self {
            Target::Row(r) | Target::Override { row: r } => super::types::Event::row(r.clone()),
            Target::Generated { master, occurrence } => super::types::Event {
                row: master.clone(),
                occurrence: Some(*occurrence),
                tz: None,
            },
        }
    }
}

/// Resolves an event id the viewer may read. Unknown and invisible ids answer FORBIDDEN; an
/// occurrence a visible series does not have (or no longer has) answers NOT_FOUND.
pub(crate) async fn resolve(ctx: &Context<'_>, id: &ID) -> ApiResult<(Target, EventAccess)> {
    match domain::EventRef::parse(id)? {
        domain::EventRef::Row(id) => {
            let (ev, access) = readable_event(ctx, id).await?;
            Ok((Target::Row(ev), access))
        }
        domain::EventRef::Instance(inst) => {
            let (master, access) = readable_event(ctx, inst.series).await?;
            if master.rrule.is_none() {
                return Err(ApiError::NotFound);
            }
            if let Some((row, deleted)) = rc(ctx)
                .store
                .override_of(inst.series, inst.original_start)
                .await?
            {
                if deleted {
                    return Err(ApiError::NotFound);
                }
                return Ok((Target::Override { row: Arc::new(row) }, access));
            }
            let probe_end = inst.original_start + Duration::seconds(1);
            let occurrence =
                domain::instances::occurrences_of(&master, &[], inst.original_start, probe_end)
                    .map_err(|e| ApiError::Internal(e.0))?
                    .into_iter()
                    .find(|o| o.original_start == inst.original_start)
                    .ok_or(ApiError::NotFound)?;
            Ok((Target::Generated { master, occurrence }, access))
        }
    }
}

/// Checks the times of an event (all-day ones must be whole UTC days) and its rule, returning the
/// parsed rule and the end of its last occurrence (`None` for infinite series).
pub(crate) fn check_schedule(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    time_zone: &str,
    all_day: bool,
    rrule: Option<&str>,
) -> ApiResult<(Option<RecurrenceRule>, Option<DateTime<Utc>>)> {
    domain::check_event_times(start, end)?;
    let tz = domain::parse_time_zone(time_zone)?;
    if all_day {
        let midnight = |t: DateTime<Utc>| t.num_seconds_from_midnight() == 0 && t.nanosecond() == 0;
        if !midnight(start) || !midnight(end) {
            return Err(ApiError::bad_input(
                "all-day events are dates: startTime and endTime must be midnight UTC of the first day and the day after the last",
            ));
        }
    }
    let Some(text) = rrule else {
        return Ok((None, None));
    };
    let rule = if all_day {
        RecurrenceRule::parse_all_day(text, start)?
    } else {
        RecurrenceRule::parse(text, start, tz)?
    };
    let last = rule.last_end(end - start);
    Ok((Some(rule), last))
}

/// One booking per occurrence of `rule` in its booking horizon, for each resource.
pub(crate) fn bookings_for_series(
    ctx: &Context<'_>,
    rule: &RecurrenceRule,
    duration: Duration,
    exdates: &[DateTime<Utc>],
    resources: &[domain::ResourceId],
) -> ApiResult<Vec<cal_storage::NewReservation>> {
    let config = &rc(ctx).config;
    let from = rule.start();
    let occurrences = rule
        .occurrences(
            duration,
            exdates,
            from,
            from + config.booking_horizon,
            config.max_booked_occurrences,
        )
        .map_err(|_| {
            ApiError::bad_input(format!(
                "a series may book at most {} occurrences ahead; shorten the rule or book fewer",
                config.max_booked_occurrences
            ))
        })?;
    Ok(resources
        .iter()
        .flat_map(|r| {
            occurrences
                .iter()
                .map(move |o| cal_storage::NewReservation {
                    resource_id: *r,
                    start_time: Some(o.start),
                    end_time: Some(o.end),
                })
        })
        .collect())
}
