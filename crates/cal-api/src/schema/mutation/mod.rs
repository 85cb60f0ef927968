//! Mutation root, merged from three parts: calendars and their sharing (`calendar.rs`), events,
//! their series and attendees (`event.rs`), and resource bookings (`booking.rs`). Each mutation
//! authorizes, validates its input into domain values, then calls one transactional storage write;
//! the loaders' memo for what changed is refreshed so the rest of the request sees the new state.
//!
//! This module holds what more than one part uses: the reservation input. Text limits (titles,
//! descriptions, names) are checked by building the `cal_domain::text` types from the input.
//!
//! The order of the parts, and of the fields within each, is the order of `type MutationRoot` in
//! `schema.graphql`: a merged object lists its parts' fields part by part, each part's in
//! definition order, so moving a field or a part changes the contract.

mod booking;
mod calendar;
mod event;

use crate::error::{ApiError, ApiResult};
use crate::schema::rc;
use async_graphql::{Context, ID, InputObject, MergedObject};
use booking::BookingMutation;
use cal_domain as domain;
use cal_storage::NewReservation;
use calendar::CalendarMutation;
use chrono::{DateTime, Utc};
use event::EventMutation;

// No `///` here: a merged object's doc comment becomes the type's description in the SDL, and
// `type MutationRoot` has none.
#[derive(MergedObject, Default)]
pub struct MutationRoot(CalendarMutation, EventMutation, BookingMutation);

#[derive(InputObject)]
pub struct ReservationInput {
    pub resource_id: ID,
    /// Defaults to the event's start.
    pub start_time: Option<DateTime<Utc>>,
    /// Defaults to the event's end.
    pub end_time: Option<DateTime<Utc>>,
}

fn reservations(ctx: &Context<'_>, list: &[ReservationInput]) -> ApiResult<Vec<NewReservation>> {
    if list.len() > rc(ctx).config.max_list_input {
        return Err(ApiError::bad_input("too many reservations"));
    }
    list.iter()
        .map(|r| {
            if let (Some(s), Some(e)) = (r.start_time, r.end_time) {
                domain::check_event_times(s, e)?;
            }
            Ok(NewReservation {
                resource_id: domain::ResourceId::parse(&r.resource_id)?,
                start_time: r.start_time,
                end_time: r.end_time,
            })
        })
        .collect()
}
