//! Mutation root. Each mutation authorizes, validates its input into domain values, then calls one
//! transactional storage write; the loaders' memo for what changed is refreshed so the rest of the
//! request sees the new state.

use super::access::{calendar_with_role, readable_event, writable_event};
use super::query::parse_ids;
use super::types::*;
use super::{rc, viewer};
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, ID, InputObject, MaybeUndefined, Object};
use cal_domain as d;
use cal_storage::{EventPatch, NewAttendee, NewEvent, NewReservation};
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct MutationRoot;

#[derive(InputObject)]
pub struct CreateCalendarInput {
    pub name: String,
    pub description: Option<String>,
    /// IANA zone, e.g. `Europe/Berlin`.
    pub time_zone: String,
}

#[derive(InputObject)]
pub struct AttendeeInput {
    pub user_id: ID,
    #[graphql(default)]
    pub is_optional: bool,
}

#[derive(InputObject)]
pub struct ReservationInput {
    pub resource_id: ID,
    /// Defaults to the event's start.
    pub start_time: Option<DateTime<Utc>>,
    /// Defaults to the event's end.
    pub end_time: Option<DateTime<Utc>>,
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
}

fn text(field: &str, v: &str, max: usize) -> ApiResult<()> {
    let n = v.chars().count();
    if v.trim().is_empty() || n > max {
        return Err(ApiError::bad_input(format!(
            "{field} must be 1 to {max} characters"
        )));
    }
    Ok(())
}

fn optional_text(field: &str, v: Option<&str>, max: usize) -> ApiResult<()> {
    match v {
        Some(s) if s.chars().count() > max => Err(ApiError::bad_input(format!(
            "{field} may be at most {max} characters"
        ))),
        _ => Ok(()),
    }
}

fn attendees(ctx: &Context<'_>, list: &[AttendeeInput]) -> ApiResult<Vec<NewAttendee>> {
    let ids: Vec<ID> = list.iter().map(|a| a.user_id.clone()).collect();
    let parsed = parse_ids(ctx, &ids, d::UserId::parse)?;
    if parsed.len() != list.len() {
        return Err(ApiError::bad_input("an attendee is listed twice"));
    }
    list.iter()
        .map(|a| {
            Ok(NewAttendee {
                user_id: d::UserId::parse(&a.user_id)?,
                is_optional: a.is_optional,
            })
        })
        .collect()
}

fn reservations(ctx: &Context<'_>, list: &[ReservationInput]) -> ApiResult<Vec<NewReservation>> {
    if list.len() > rc(ctx).config.max_list_input {
        return Err(ApiError::bad_input("too many reservations"));
    }
    list.iter()
        .map(|r| {
            if let (Some(s), Some(e)) = (r.start_time, r.end_time) {
                d::check_event_times(s, e)?;
            }
            Ok(NewReservation {
                resource_id: d::ResourceId::parse(&r.resource_id)?,
                start_time: r.start_time,
                end_time: r.end_time,
            })
        })
        .collect()
}

/// Refreshes the request's memo after a write to `ev`.
async fn refreshed(ctx: &Context<'_>, ev: d::Event) -> Event {
    let loaders = &rc(ctx).loaders;
    let ev = Arc::new(ev);
    loaders.events.prime(ev.id, Ok(Some(ev.clone()))).await;
    loaders.attendees.clear(ev.id).await;
    loaders.reservations.clear(ev.id).await;
    Event(ev)
}

#[Object]
impl MutationRoot {
    /// Creates a calendar owned by the viewer.
    async fn create_calendar(
        &self,
        ctx: &Context<'_>,
        input: CreateCalendarInput,
    ) -> ApiResult<Calendar> {
        let me = viewer(ctx)?;
        text("name", &input.name, 200)?;
        optional_text("description", input.description.as_deref(), 10_000)?;
        d::parse_time_zone(&input.time_zone)?;
        let cal = rc(ctx)
            .store
            .create_calendar(
                me,
                input.name.trim(),
                input.description.as_deref(),
                &input.time_zone,
            )
            .await?;
        Ok(Calendar {
            cal: Arc::new(cal),
            role: d::Role::Owner,
        })
    }

    /// Gives a user a role on a calendar (owner only). The role cannot be OWNER.
    async fn share_calendar(
        &self,
        ctx: &Context<'_>,
        calendar_id: ID,
        user_id: ID,
        role: CalendarRole,
    ) -> ApiResult<Calendar> {
        let cal_id = d::CalendarId::parse(&calendar_id)?;
        let user = d::UserId::parse(&user_id)?;
        let (_, my_role) = calendar_with_role(ctx, cal_id).await?;
        if !my_role.can_share() {
            return Err(ApiError::Forbidden);
        }
        if role == CalendarRole::Owner {
            return Err(ApiError::bad_input(
                "a calendar has exactly one owner; share with WRITER, READER or FREE_BUSY",
            ));
        }
        let cal = rc(ctx)
            .store
            .share_calendar(cal_id, user, role.into())
            .await?;
        let cal = Arc::new(cal);
        rc(ctx)
            .loaders
            .calendars
            .prime(cal_id, Ok(Some(cal.clone())))
            .await;
        Ok(Calendar { cal, role: my_role })
    }

    /// Removes a user's role on a calendar (owner only). Returns whether a membership was removed.
    async fn unshare_calendar(
        &self,
        ctx: &Context<'_>,
        calendar_id: ID,
        user_id: ID,
    ) -> ApiResult<bool> {
        let cal_id = d::CalendarId::parse(&calendar_id)?;
        let user = d::UserId::parse(&user_id)?;
        let (_, my_role) = calendar_with_role(ctx, cal_id).await?;
        if !my_role.can_share() {
            return Err(ApiError::Forbidden);
        }
        let removed = rc(ctx).store.unshare_calendar(cal_id, user).await?;
        rc(ctx).loaders.calendars.clear(cal_id).await;
        Ok(removed)
    }

    /// Creates an event with its attendees and reservations, atomically (writers and owners).
    /// A reservation that overlaps another fails with RESOURCE_CONFLICT and nothing is written.
    async fn create_event(&self, ctx: &Context<'_>, input: CreateEventInput) -> ApiResult<Event> {
        let me = viewer(ctx)?;
        let cal_id = d::CalendarId::parse(&input.calendar_id)?;
        let (cal, role) = calendar_with_role(ctx, cal_id).await?;
        if !role.can_write_events() {
            return Err(ApiError::Forbidden);
        }
        text("title", &input.title, 500)?;
        optional_text("description", input.description.as_deref(), 20_000)?;
        optional_text("location", input.location.as_deref(), 500)?;
        d::check_event_times(input.start_time, input.end_time)?;
        let time_zone = input
            .time_zone
            .clone()
            .unwrap_or_else(|| cal.time_zone.clone());
        d::parse_time_zone(&time_zone)?;
        let new = NewEvent {
            calendar_id: cal_id,
            organizer_id: me,
            title: input.title.trim().to_owned(),
            description: input.description,
            location: input.location,
            start_time: input.start_time,
            end_time: input.end_time,
            time_zone,
            all_day: input.all_day,
            status: input.status.into(),
            transparency: input.transparency.into(),
            rrule: None,
            attendees: attendees(ctx, &input.attendees)?,
            reservations: reservations(ctx, &input.reservations)?,
        };
        let ev = rc(ctx).store.create_event(&new).await?;
        Ok(refreshed(ctx, ev).await)
    }

    /// Changes an event if it is still at `expectedVersion` (else VERSION_CONFLICT).
    async fn update_event(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: i64,
        input: UpdateEventInput,
    ) -> ApiResult<Event> {
        let id = d::EventId::parse(&id)?;
        let ev = writable_event(ctx, id).await?;
        if let Some(t) = &input.title {
            text("title", t, 500)?;
        }
        optional_text(
            "description",
            input.description.as_opt_ref().flatten().map(String::as_str),
            20_000,
        )?;
        optional_text(
            "location",
            input.location.as_opt_ref().flatten().map(String::as_str),
            500,
        )?;
        if let Some(tz) = &input.time_zone {
            d::parse_time_zone(tz)?;
        }
        let (start, end) = (
            input.start_time.unwrap_or(ev.start_time),
            input.end_time.unwrap_or(ev.end_time),
        );
        d::check_event_times(start, end)?;
        let patch = EventPatch {
            title: input.title.map(|t| t.trim().to_owned()),
            description: maybe(input.description),
            location: maybe(input.location),
            start_time: input.start_time,
            end_time: input.end_time,
            time_zone: input.time_zone,
            all_day: input.all_day,
            status: input.status.map(Into::into),
            transparency: input.transparency.map(Into::into),
            rrule: None,
        };
        let ev = rc(ctx)
            .store
            .update_event(id, expected_version, &patch)
            .await?;
        Ok(refreshed(ctx, ev).await)
    }

    /// Soft-deletes an event and releases its reservations. Returns true.
    async fn delete_event(
        &self,
        ctx: &Context<'_>,
        id: ID,
        expected_version: Option<i64>,
    ) -> ApiResult<bool> {
        let id = d::EventId::parse(&id)?;
        writable_event(ctx, id).await?;
        rc(ctx).store.delete_event(id, expected_version).await?;
        rc(ctx).loaders.events.prime(id, Ok(None)).await;
        Ok(true)
    }

    /// Sets the viewer's response to an event it is invited to.
    async fn respond_to_event(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        response: ResponseStatus,
    ) -> ApiResult<Event> {
        let me = viewer(ctx)?;
        let id = d::EventId::parse(&event_id)?;
        let (_, access) = readable_event(ctx, id).await?;
        let invited = crate::loaders::one(&rc(ctx).loaders.attendees, id)
            .await?
            .iter()
            .any(|a| a.user_id == me);
        if !invited {
            let _ = access;
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
        let id = d::EventId::parse(&event_id)?;
        writable_event(ctx, id).await?;
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
        let id = d::EventId::parse(&event_id)?;
        let user = d::UserId::parse(&user_id)?;
        writable_event(ctx, id).await?;
        let ev = rc(ctx)
            .store
            .remove_attendee(id, expected_version, user)
            .await?;
        Ok(refreshed(ctx, ev).await)
    }

    /// Books a resource for an event (for the event's times unless given). RESOURCE_CONFLICT names
    /// the event already holding the slot.
    async fn reserve_resource(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        resource_id: ID,
        start_time: Option<DateTime<Utc>>,
        end_time: Option<DateTime<Utc>>,
        expected_version: Option<i64>,
    ) -> ApiResult<Reservation> {
        let id = d::EventId::parse(&event_id)?;
        let input = ReservationInput {
            resource_id,
            start_time,
            end_time,
        };
        let wanted = reservations(ctx, std::slice::from_ref(&input))?.remove(0);
        writable_event(ctx, id).await?;
        let r = rc(ctx);
        let res = crate::loaders::one(&r.loaders.resources, wanted.resource_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let reservation = r.store.reserve(id, expected_version, &wanted).await?;
        r.loaders.reservations.clear(id).await;
        r.loaders.events.clear(id).await;
        Ok(Reservation {
            r: reservation,
            resource: res,
        })
    }

    /// Cancels a reservation (writers and owners of the event's calendar).
    async fn cancel_reservation(
        &self,
        ctx: &Context<'_>,
        reservation_id: ID,
    ) -> ApiResult<Reservation> {
        viewer(ctx)?;
        let rid = d::ReservationId::parse(&reservation_id)?;
        let r = rc(ctx);
        let existing = r
            .store
            .reservation_by_id(rid)
            .await?
            .ok_or(ApiError::Forbidden)?;
        writable_event(ctx, existing.event_id).await?;
        let res = crate::loaders::one(&r.loaders.resources, existing.resource_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let cancelled = r.store.cancel_reservation(rid).await?;
        r.loaders.reservations.clear(existing.event_id).await;
        r.loaders.events.clear(existing.event_id).await;
        Ok(Reservation {
            r: cancelled,
            resource: res,
        })
    }
}

fn maybe(v: MaybeUndefined<String>) -> Option<Option<String>> {
    match v {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(s) => Some(Some(s)),
    }
}
