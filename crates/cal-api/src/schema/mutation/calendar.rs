//! Calendar mutations: createCalendar, shareCalendar, unshareCalendar (in this order in the SDL).

use crate::error::{ApiError, ApiResult};
use crate::schema::access::calendar_with_role;
use crate::schema::types::{Calendar, CalendarRole};
use crate::schema::{rc, viewer};
use async_graphql::{Context, ID, InputObject, Object};
use cal_domain as domain;
use std::sync::Arc;

#[derive(Default)]
pub struct CalendarMutation;

#[derive(InputObject)]
pub struct CreateCalendarInput {
    pub name: String,
    pub description: Option<String>,
    /// IANA zone, e.g. `Europe/Berlin`.
    pub time_zone: String,
}

#[Object]
impl CalendarMutation {
    /// Creates a calendar owned by the viewer.
    async fn create_calendar(
        &self,
        ctx: &Context<'_>,
        input: CreateCalendarInput,
    ) -> ApiResult<Calendar> {
        let me = viewer(ctx)?;
        let name = domain::CalendarName::new(&input.name)?;
        let description = input
            .description
            .as_deref()
            .map(domain::CalendarDescription::new)
            .transpose()?;
        domain::parse_time_zone(&input.time_zone)?;
        let cal = rc(ctx)
            .store
            .create_calendar(me, &name, description.as_ref(), &input.time_zone)
            .await?;
        Ok(Calendar {
            cal: Arc::new(cal),
            role: domain::Role::Owner,
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
        let cal_id = domain::CalendarId::parse(&calendar_id)?;
        let user = domain::UserId::parse(&user_id)?;
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
        let cal_id = domain::CalendarId::parse(&calendar_id)?;
        let user = domain::UserId::parse(&user_id)?;
        let (_, my_role) = calendar_with_role(ctx, cal_id).await?;
        if !my_role.can_share() {
            return Err(ApiError::Forbidden);
        }
        let removed = rc(ctx).store.unshare_calendar(cal_id, user).await?;
        rc(ctx).loaders.calendars.clear(cal_id).await;
        Ok(removed)
    }
}
