//! Booking mutations: reserveResource, cancelReservation (in this order in the SDL). Reservations
//! made together with an event are `createEvent`'s (`event.rs`).

use super::{ReservationInput, reservations};
use crate::error::{ApiError, ApiResult};
use crate::schema::access::writable_event;
use crate::schema::series::{Target, bookings_for_series, resolve};
use crate::schema::types::Reservation;
use crate::schema::{rc, viewer};
use async_graphql::{Context, ID, Object};
use cal_domain as domain;
use chrono::{DateTime, Utc};

#[derive(Default)]
pub struct BookingMutation;

#[Object]
impl BookingMutation {
    /// Books a resource for an event (for the event's times unless given). For a series id it
    /// books every occurrence in the booking horizon, all or nothing, and returns the first
    /// booking; for an occurrence id, that occurrence. RESOURCE_CONFLICT lists the bookings in the
    /// way (`extensions.conflicts`).
    async fn reserve_resource(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        resource_id: ID,
        start_time: Option<DateTime<Utc>>,
        end_time: Option<DateTime<Utc>>,
        expected_version: Option<i64>,
    ) -> ApiResult<Reservation> {
        let input = ReservationInput {
            resource_id,
            start_time,
            end_time,
        };
        let mut wanted = reservations(ctx, std::slice::from_ref(&input))?;
        let (target, access) = resolve(ctx, &event_id).await?;
        if !access.can_write() {
            return Err(ApiError::Forbidden);
        }
        let r = rc(ctx);
        let res = crate::loaders::one(&r.loaders.resources, wanted[0].resource_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let row = target.row().clone();
        match &target {
            Target::Generated { occurrence, .. } => {
                wanted[0].start_time = wanted[0].start_time.or(Some(occurrence.start));
                wanted[0].end_time = wanted[0].end_time.or(Some(occurrence.end));
            }
            Target::Row(master)
                if master.rrule.is_some() && start_time.is_none() && end_time.is_none() =>
            {
                let rule = domain::instances::rule_of(master)?.ok_or(ApiError::NotFound)?;
                wanted = bookings_for_series(
                    ctx,
                    &rule,
                    master.end_time - master.start_time,
                    &master.exdates,
                    &[res.id],
                )?;
            }
            _ => {}
        }
        let booked = r.store.reserve(row.id, expected_version, &wanted).await?;
        r.loaders.reservations.clear(row.id).await;
        r.loaders.events.clear(row.id).await;
        let first = booked.into_iter().next().ok_or(ApiError::NotFound)?;
        Ok(Reservation {
            r: first,
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
        let rid = domain::ReservationId::parse(&reservation_id)?;
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
