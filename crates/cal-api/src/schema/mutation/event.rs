//! Event mutations: createEvent, updateEvent, deleteEvent, respondToEvent, addAttendees,
//! removeAttendee (in this order in the SDL), with their input objects. `updateEvent` on a series
//! edits one occurrence (an override), the series from an occurrence on (a split) or the whole
//! series (the master): [`cal_domain::series_edit::plan`] decides which, from what the id denotes
//! and the scope; the resolver builds the patch and does that write.

use super::{ReservationInput, reservations};
use crate::error::{ApiError, ApiResult};
use crate::schema::access::calendar_with_role;
use crate::schema::query::parse_ids;
use crate::schema::series::{EditScope, Target, bookings_for_series, check_schedule, resolve};
use crate::schema::types::{Event, EventStatus, ResponseStatus, Transparency};
use crate::schema::{rc, viewer};
use async_graphql::{Context, ID, InputObject, MaybeUndefined, Object};
use cal_domain as domain;
use cal_domain::series_edit::{self, EditPlan, SeriesEdit};
use cal_storage::{EventPatch, NewAttendee, NewEvent};
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

#[derive(Default)]
pub struct EventMutation;

#[derive(InputObject)]
pub struct AttendeeInput {
    pub user_id: ID,
    #[graphql(default)]
    pub is_optional: bool,
}

#[derive(InputObject)]
pub struct CreateEventInput {
    pub calendar_id: ID,
    pub title: String,
    pub description: Option<String>,
    pub location: Option<String>,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    /// IANA zone; defaults to the calendar's.
    pub time_zone: Option<String>,
    #[graphql(default)]
    pub all_day: bool,
    #[graphql(default_with = "EventStatus::Confirmed")]
    pub status: EventStatus,
    #[graphql(default_with = "Transparency::Busy")]
    pub transparency: Transparency,
    /// RFC 5545 rule (without `RRULE:`), e.g. `FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10`. `startTime` must
    /// be its first occurrence; it expands in `timeZone`.
    pub rrule: Option<String>,
    /// Not accepted at creation (delete occurrences instead); present so clients get a clear error.
    #[graphql(default)]
    pub exdates: Vec<DateTime<Utc>>,
    #[graphql(default)]
    pub attendees: Vec<AttendeeInput>,
    #[graphql(default)]
    pub reservations: Vec<ReservationInput>,
}

/// Fields to change; omitted fields stay as they are, `null` clears a nullable field.
#[derive(InputObject)]
pub struct UpdateEventInput {
    pub title: Option<String>,
    pub description: MaybeUndefined<String>,
    pub location: MaybeUndefined<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub time_zone: Option<String>,
    pub all_day: Option<bool>,
    pub status: Option<EventStatus>,
    pub transparency: Option<Transparency>,
    /// New rule for a series (`null` makes it a single event); only with scope ALL or
    /// THIS_AND_FOLLOWING.
    pub rrule: MaybeUndefined<String>,
}

fn attendees(ctx: &Context<'_>, list: &[AttendeeInput]) -> ApiResult<Vec<NewAttendee>> {
    let ids: Vec<ID> = list.iter().map(|a| a.user_id.clone()).collect();
    let parsed = parse_ids(ctx, &ids, domain::UserId::parse)?;
    if parsed.len() != list.len() {
        return Err(ApiError::bad_input("an attendee is listed twice"));
    }
    list.iter()
        .map(|a| {
            Ok(NewAttendee {
                user_id: domain::UserId::parse(&a.user_id)?,
                is_optional: a.is_optional,
            })
        })
        .collect()
}

/// Refreshes the request's memo after a write to `ev`.
async fn refreshed(ctx: &Context<'_>, ev: domain::Event) -> Event {
    let loaders = &rc(ctx).loaders;
    let ev = Arc::new(ev);
    loaders.events.prime(ev.id, Ok(Some(ev.clone()))).await;
    loaders.attendees.clear(ev.id).await;
    loaders.reservations.clear(ev.id).await;
    Event::row(ev)
}

#[Object]
impl EventMutation {
    /// Creates an event with its attendees and reservations, atomically (writers and owners).
    /// With `rrule` it is a series, and each reservation books every occurrence in the booking
    /// horizon. A booking that overlaps another fails with RESOURCE_CONFLICT listing the conflicts
    /// and nothing is written.
    async fn create_event(&self, ctx: &Context<'_>, input: CreateEventInput) -> ApiResult<Event> {
        let me = viewer(ctx)?;
        let cal_id = domain::CalendarId::parse(&input.calendar_id)?;
        let (cal, role) = calendar_with_role(ctx, cal_id).await?;
        if !role.can_write_events() {
            return Err(ApiError::Forbidden);
        }
        let title = domain::Title::new(&input.title)?;
        let description = input
            .description
            .as_deref()
            .map(domain::Description::new)
            .transpose()?;
        let location = input
            .location
            .as_deref()
            .map(domain::Location::new)
            .transpose()?;
        let time_zone = input
            .time_zone
            .clone()
            .unwrap_or_else(|| cal.time_zone.clone());
        let (rule, series_end) = check_schedule(
            input.start_time,
            input.end_time,
            &time_zone,
            input.all_day,
            input.rrule.as_deref(),
        )?;
        if !input.exdates.is_empty() {
            return Err(ApiError::bad_input(
                "exdates are added by deleting occurrences; create the series without them",
            ));
        }
        let mut wanted = reservations(ctx, &input.reservations)?;
        if let Some(rule) = &rule {
            if wanted
                .iter()
                .any(|w| w.start_time.is_some() || w.end_time.is_some())
            {
                return Err(ApiError::bad_input(
                    "a recurring event books each occurrence at its own times; omit startTime/endTime",
                ));
            }
            let resources: Vec<domain::ResourceId> = wanted.iter().map(|w| w.resource_id).collect();
            wanted = bookings_for_series(
                ctx,
                rule,
                input.end_time - input.start_time,
                &[],
                &resources,
            )?;
        }
        let new = NewEvent {
            calendar_id: cal_id,
            organizer_id: me,
            title,
            description,
            location,
            start_time: input.start_time,
            end_time: input.end_time,
            time_zone,
            all_day: input.all_day,
            status: input.status.into(),
            transparency: input.transparency.into(),
            rrule: rule.as_ref().map(|r| r.to_rule_text()),
            series_end,
            attendees: attendees(ctx, &input.attendees)?,
            reservations: wanted,
        };
        let ev = rc(ctx).store.create_event(&new).await?;
        Ok(refreshed(ctx, ev).await)
    }

    /// Changes an event if it is still at `expectedVersion` (else VERSION_CONFLICT). For a series,
    /// `scope` says what changes: THIS occurrence (default for an occurrence id: it becomes an
    /// override), THIS_AND_FOLLOWING (the series is split at the occurrence) or ALL (default for a
    /// series id: the master changes, times shift every occurrence). An occurrence carries its
    /// series' version until it is overridden.
    async fn update_event(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: i64,
        input: UpdateEventInput,
        scope: Option<EditScope>,
    ) -> ApiResult<Event> {
        let (target, access) = resolve(ctx, &id).await?;
        if !access.can_write() {
            return Err(ApiError::Forbidden);
        }
        let texts = TextEdits::of(&input)?;
        let store = &rc(ctx).store;
        let base = |row: &domain::Event| {
            checked(
                EventPatch {
                    title: texts.title.clone(),
                    description: texts.description.clone(),
                    location: texts.location.clone(),
                    start_time: input.start_time,
                    end_time: input.end_time,
                    time_zone: input.time_zone.clone(),
                    all_day: input.all_day,
                    status: input.status.map(Into::into),
                    transparency: input.transparency.map(Into::into),
                    rrule: None,
                    series_end: None,
                },
                row,
            )
        };
        let edit = SeriesEdit {
            target: target.edit_target(),
            scope: EditScope::requested(scope),
            rule_change: !matches!(input.rrule, MaybeUndefined::Undefined),
        };
        let ev = match (series_edit::plan(edit), target) {
            (EditPlan::Reject(message), _) => return Err(ApiError::bad_input(message)),
            // A single event or an override row: change the row.
            (EditPlan::UpdateRow, Target::Row(row) | Target::Override { row }) => {
                let patch = base(&row)?;
                store.update_event(row.id, expected_version, &patch).await?
            }
            // The whole series, addressed by its id.
            (EditPlan::UpdateSeries, Target::Row(master)) => {
                let patch = series_patch(&master, &input, &texts, Duration::zero())?;
                store
                    .update_event(master.id, expected_version, &patch)
                    .await?
            }
            // One generated occurrence: it becomes an override.
            (EditPlan::OverrideOccurrence, Target::Generated { master, occurrence }) => {
                let occ_row = domain::Event {
                    start_time: occurrence.start,
                    end_time: occurrence.end,
                    rrule: None,
                    ..(*master).clone()
                };
                let patch = base(&occ_row)?;
                store
                    .override_instance(
                        master.id,
                        occurrence.original_start,
                        occurrence.end,
                        Some(expected_version),
                        &patch,
                    )
                    .await?
            }
            // The whole series, addressed through one occurrence: times move by the same amount.
            (EditPlan::UpdateSeriesFromOccurrence, Target::Generated { master, occurrence }) => {
                let shift = input
                    .start_time
                    .map_or(Duration::zero(), |s| s - occurrence.start);
                let patch = series_patch(&master, &input, &texts, shift)?;
                store
                    .update_event(master.id, expected_version, &patch)
                    .await?
            }
            // This and following, from an occurrence after the first.
            (EditPlan::SplitSeries, Target::Generated { master, occurrence }) => {
                split(
                    ctx,
                    &master,
                    occurrence.original_start,
                    (occurrence.start, occurrence.end),
                    expected_version,
                    &input,
                    &texts,
                )
                .await?
            }
            // An override row (by occurrence id, or by its own row id for THIS_AND_FOLLOWING):
            // the edit reaches its series.
            (
                plan @ (EditPlan::UpdateSeriesFromOverride | EditPlan::SplitSeriesAtOverride),
                Target::Row(row) | Target::Override { row },
            ) => {
                let series = row.recurring_event_id.ok_or(ApiError::NotFound)?;
                let master = crate::loaders::one(&rc(ctx).loaders.events, series)
                    .await?
                    .ok_or(ApiError::NotFound)?;
                if plan == EditPlan::UpdateSeriesFromOverride {
                    let shift = input
                        .start_time
                        .map_or(Duration::zero(), |s| s - row.start_time);
                    let patch = series_patch(&master, &input, &texts, shift)?;
                    store
                        .update_event(master.id, expected_version, &patch)
                        .await?
                } else {
                    let original = row.original_start_time.ok_or(ApiError::NotFound)?;
                    split(
                        ctx,
                        &master,
                        original,
                        (row.start_time, row.end_time),
                        expected_version,
                        &input,
                        &texts,
                    )
                    .await?
                }
            }
            // `edit_target` describes the target the plan is for: no other pairing occurs.
            (plan, _) => {
                return Err(ApiError::Internal(format!(
                    "edit plan {plan:?} does not fit its target"
                )));
            }
        };
        Ok(refreshed(ctx, ev).await)
    }

    /// Deletes an event (soft; its bookings are released). An occurrence id removes just that
    /// occurrence (it becomes an EXDATE of its series); a series id removes the whole series.
    async fn delete_event(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> ApiResult<bool> {
        let (target, access) = resolve(ctx, &id).await?;
        if !access.can_write() {
            return Err(ApiError::Forbidden);
        }
        let store = &rc(ctx).store;
        match target {
            Target::Row(row) => {
                store.delete_event(row.id, expected_version).await?;
                rc(ctx).loaders.events.prime(row.id, Ok(None)).await;
            }
            Target::Generated { master, occurrence } => {
                store
                    .delete_instance(
                        master.id,
                        occurrence.original_start,
                        occurrence.end,
                        expected_version,
                    )
                    .await?;
                rc(ctx).loaders.events.clear(master.id).await;
            }
            Target::Override { row } => {
                // `row` may come from a cache: the database checks `expectedVersion`.
                let series = store.delete_override(row.id, expected_version).await?;
                rc(ctx).loaders.events.clear(series.id).await;
            }
        }
        Ok(true)
    }

    /// Sets the viewer's response to an event it is invited to (for an occurrence id: to its series,
    /// or to the override when the occurrence has one).
    async fn respond_to_event(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        response: ResponseStatus,
    ) -> ApiResult<Event> {
        let me = viewer(ctx)?;
        let (target, _) = resolve(ctx, &event_id).await?;
        let id = target.row().id;
        let invited = crate::loaders::one(&rc(ctx).loaders.attendees, id)
            .await?
            .iter()
            .any(|a| a.user_id == me);
        if !invited {
            return Err(ApiError::Forbidden);
        }
        let (ev, _) = rc(ctx).store.respond(id, me, response.into()).await?;
        Ok(refreshed(ctx, ev).await)
    }

    /// Invites users (or changes whether they are optional).
    async fn add_attendees(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        attendees: Vec<AttendeeInput>,
        expected_version: Option<i64>,
    ) -> ApiResult<Event> {
        let id = writable_row(ctx, &event_id).await?;
        let list = self::attendees(ctx, &attendees)?;
        if list.is_empty() {
            return Err(ApiError::bad_input("attendees must not be empty"));
        }
        let ev = rc(ctx)
            .store
            .add_attendees(id, expected_version, &list)
            .await?;
        Ok(refreshed(ctx, ev).await)
    }

    /// Uninvites a user. NOT_FOUND when the user was not invited.
    async fn remove_attendee(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        user_id: ID,
        expected_version: Option<i64>,
    ) -> ApiResult<Event> {
        let user = domain::UserId::parse(&user_id)?;
        let id = writable_row(ctx, &event_id).await?;
        let ev = rc(ctx)
            .store
            .remove_attendee(id, expected_version, user)
            .await?;
        Ok(refreshed(ctx, ev).await)
    }
}

/// The stored row an attendee edit applies to, after checking the viewer may write it.
async fn writable_row(ctx: &Context<'_>, id: &ID) -> ApiResult<domain::EventId> {
    let (target, access) = resolve(ctx, id).await?;
    if !access.can_write() {
        return Err(ApiError::Forbidden);
    }
    Ok(target.row().id)
}

/// The text fields of an `UpdateEventInput`, checked: `None` leaves a field as it is, and for the
/// nullable ones `Some(None)` clears it (as in [`EventPatch`]).
struct TextEdits {
    title: Option<domain::Title>,
    description: Option<Option<domain::Description>>,
    location: Option<Option<domain::Location>>,
}

impl TextEdits {
    fn of(input: &UpdateEventInput) -> ApiResult<Self> {
        Ok(Self {
            title: input.title.as_deref().map(domain::Title::new).transpose()?,
            description: maybe(&input.description, domain::Description::new)?,
            location: maybe(&input.location, domain::Location::new)?,
        })
    }
}

/// Validates the schedule a patch gives a single row (not a series) against its current state.
fn checked(patch: EventPatch, row: &domain::Event) -> ApiResult<EventPatch> {
    let start = patch.start_time.unwrap_or(row.start_time);
    let end = patch.end_time.unwrap_or(row.end_time);
    let tz = patch
        .time_zone
        .clone()
        .unwrap_or_else(|| row.time_zone.clone());
    check_schedule(start, end, &tz, patch.all_day.unwrap_or(row.all_day), None)?;
    Ok(patch)
}

/// A patch for a series master: times shift by `shift` (what the edited occurrence moved by, or
/// the explicit new first start), the rule is re-checked against the new first occurrence and
/// `series_end` recomputed.
fn series_patch(
    master: &domain::Event,
    input: &UpdateEventInput,
    texts: &TextEdits,
    shift: Duration,
) -> ApiResult<EventPatch> {
    let duration = match (input.start_time, input.end_time) {
        (Some(s), Some(e)) => e - s,
        _ => master.end_time - master.start_time,
    };
    let start = if shift.is_zero() {
        input.start_time.unwrap_or(master.start_time)
    } else {
        master.start_time + shift
    };
    let end = match input.end_time {
        Some(e) if shift.is_zero() && input.start_time.is_none() => e,
        _ => start + duration,
    };
    let tz = input
        .time_zone
        .clone()
        .unwrap_or_else(|| master.time_zone.clone());
    let all_day = input.all_day.unwrap_or(master.all_day);
    let rrule = match &input.rrule {
        MaybeUndefined::Undefined => master.rrule.clone(),
        MaybeUndefined::Null => None,
        MaybeUndefined::Value(v) => Some(v.clone()),
    };
    let (rule, series_end) = check_schedule(start, end, &tz, all_day, rrule.as_deref())?;
    Ok(EventPatch {
        title: texts.title.clone(),
        description: texts.description.clone(),
        location: texts.location.clone(),
        start_time: Some(start),
        end_time: Some(end),
        time_zone: input.time_zone.clone(),
        all_day: input.all_day,
        status: input.status.map(Into::into),
        transparency: input.transparency.map(Into::into),
        rrule: Some(rule.map(|r| r.to_rule_text())),
        series_end: Some(series_end),
    })
}

/// "This and following": the series ends before `original`, a new one starts at the (possibly
/// moved) occurrence with the patch applied and the rest of the rule. `occurrence` is where the
/// occurrence at `original` is now (start, end).
async fn split(
    ctx: &Context<'_>,
    master: &domain::Event,
    original: DateTime<Utc>,
    (occ_start, occ_end): (DateTime<Utc>, DateTime<Utc>),
    expected_version: i64,
    input: &UpdateEventInput,
    texts: &TextEdits,
) -> ApiResult<domain::Event> {
    let rule = domain::instances::rule_of(master)?.ok_or(ApiError::NotFound)?;
    let duration = master.end_time - master.start_time;
    let truncated = rule.truncated_before(original)?;
    // The same parse `rule_of` does for any stored series, applied to the shortened rule.
    let truncated_master = domain::Event {
        rrule: Some(truncated.clone()),
        ..master.clone()
    };
    let truncated_end = domain::instances::rule_of(&truncated_master)?
        .ok_or(ApiError::NotFound)?
        .last_end(duration);
    let start = input.start_time.unwrap_or(occ_start);
    let end = input.end_time.unwrap_or(start + (occ_end - occ_start));
    let tz = input
        .time_zone
        .clone()
        .unwrap_or_else(|| master.time_zone.clone());
    let all_day = input.all_day.unwrap_or(master.all_day);
    let rest = match &input.rrule {
        MaybeUndefined::Value(v) => Some(v.clone()),
        MaybeUndefined::Null => None,
        MaybeUndefined::Undefined => Some(rule.remainder_from(original)?),
    };
    let (new_rule, new_end) = check_schedule(start, end, &tz, all_day, rest.as_deref())?;
    let new = NewEvent {
        calendar_id: master.calendar_id,
        organizer_id: master.organizer_id,
        // The master's own text was checked when it was written, so building it again succeeds.
        title: match &texts.title {
            Some(t) => t.clone(),
            None => domain::Title::new(&master.title)?,
        },
        description: match &texts.description {
            Some(d) => d.clone(),
            None => master
                .description
                .as_deref()
                .map(domain::Description::new)
                .transpose()?,
        },
        location: match &texts.location {
            Some(l) => l.clone(),
            None => master
                .location
                .as_deref()
                .map(domain::Location::new)
                .transpose()?,
        },
        start_time: start,
        end_time: end,
        time_zone: tz,
        all_day,
        status: input.status.map_or(master.status, Into::into),
        transparency: input.transparency.map_or(master.transparency, Into::into),
        rrule: new_rule.map(|r| r.to_rule_text()),
        series_end: new_end,
        attendees: vec![],
        reservations: vec![],
    };
    Ok(rc(ctx)
        .store
        .split_series(
            master.id,
            Some(expected_version),
            original,
            &truncated,
            truncated_end,
            &new,
        )
        .await?)
}

/// A nullable field of an update, checked by `new`: `None` when omitted, `Some(None)` for `null`.
fn maybe<T>(
    v: &MaybeUndefined<String>,
    new: impl Fn(&str) -> Result<T, domain::DomainError>,
) -> ApiResult<Option<Option<T>>> {
    Ok(match v {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(s) => Some(Some(new(s)?)),
    })
}
