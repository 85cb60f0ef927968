//! Who may see and change what. Every resolver that returns or changes a calendar or event goes
//! through here, after loading, so cached or loaded facts never decide access by themselves.
//!
//! A caller without any role on a calendar gets FORBIDDEN whether or not the calendar exists, so
//! the answer reveals nothing about other people's data.

use super::{rc, viewer};
use crate::error::{ApiError, ApiResult};
use crate::loaders::one;
use async_graphql::Context;
use cal_domain::{Calendar, CalendarId, Event, EventId, Role, UserId};
use std::sync::Arc;

/// A calendar together with the viewer's role on it.
pub(crate) async fn calendar_with_role(
    ctx: &Context<'_>,
    id: CalendarId,
) -> ApiResult<(Arc<Calendar>, Role)> {
    rc(ctx).calendar_with_role(id).await
}

/// How the viewer relates to an event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventAccess {
    pub role: Option<Role>,
    pub invited: bool,
}

impl EventAccess {
    pub fn can_read(&self) -> bool {
        self.invited || self.role.is_some_and(Role::can_read_details)
    }
    pub fn can_write(&self) -> bool {
        self.role.is_some_and(Role::can_write_events)
    }
}

pub(crate) async fn event_access(ctx: &Context<'_>, ev: &Event) -> ApiResult<EventAccess> {
    let me = viewer(ctx)?;
    let loaders = &rc(ctx).loaders;
    let cal = one(&loaders.calendars, ev.calendar_id).await?;
    let role = cal.as_ref().and_then(|c| c.role_of(me));
    let invited = if role.is_some_and(Role::can_read_details) {
        false // not needed: the role already decides
    } else {
        ev.organizer_id == me
            || one(&loaders.attendees, ev.id)
                .await?
                .iter()
                .any(|a| a.user_id == me)
    };
    Ok(EventAccess { role, invited })
}

/// An event the viewer may read. Unknown, deleted and invisible events all answer FORBIDDEN.
pub(crate) async fn readable_event(
    ctx: &Context<'_>,
    id: EventId,
) -> ApiResult<(Arc<Event>, EventAccess)> {
    let ev = one(&rc(ctx).loaders.events, id)
        .await?
        .ok_or(ApiError::Forbidden)?;
    let access = event_access(ctx, &ev).await?;
    if !access.can_read() {
        return Err(ApiError::Forbidden);
    }
    Ok((ev, access))
}

/// An event the viewer may change (writer or owner of its calendar).
pub(crate) async fn writable_event(ctx: &Context<'_>, id: EventId) -> ApiResult<Arc<Event>> {
    let (ev, access) = readable_event(ctx, id).await?;
    if !access.can_write() {
        return Err(ApiError::Forbidden);
    }
    Ok(ev)
}

/// Whether the viewer may see `user`'s free/busy: it is the viewer, or the viewer holds any role
/// (free_busy suffices) on a calendar `user` owns.
pub(crate) async fn free_busy_visible(ctx: &Context<'_>, users: &[UserId]) -> ApiResult<()> {
    let me = viewer(ctx)?;
    let others: Vec<UserId> = users.iter().copied().filter(|u| *u != me).collect();
    if others.is_empty() {
        return Ok(());
    }
    let sharing = rc(ctx).store.owners_sharing_with(me, &others).await?;
    if others.iter().all(|u| sharing.contains(u)) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}
