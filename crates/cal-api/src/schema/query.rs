//! Query root.

use super::access::{calendar_with_role, free_busy_visible};
use super::types::*;
use super::{rc, viewer};
use crate::error::{ApiError, ApiResult};
use crate::loaders::one;
use async_graphql::{Context, ID, Object};
use cal_domain as d;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

pub struct QueryRoot;

/// Parses a list of ids, rejecting lists longer than the configured cap.
pub(crate) fn parse_ids<T: Ord>(
    ctx: &Context<'_>,
    ids: &[ID],
    parse: fn(&str) -> Result<T, d::DomainError>,
) -> ApiResult<Vec<T>> {
    let max = rc(ctx).config.max_list_input;
    if ids.len() > max {
        return Err(ApiError::bad_input(format!("at most {max} ids per list")));
    }
    let mut v = ids
        .iter()
        .map(|i| parse(i))
        .collect::<Result<Vec<T>, _>>()?;
    v.sort();
    v.dedup();
    Ok(v)
}

/// Root fields that look one thing up are nullable and return `Option<Result<_>>`: async-graphql
/// then answers a denied or missing lookup with `null` plus an error for that field only, so one
/// bad alias does not wipe the rest of the response.
#[Object]
impl QueryRoot {
    /// The authenticated user.
    async fn me(&self, ctx: &Context<'_>) -> Option<ApiResult<User>> {
        Some(
            async move {
                let me = viewer(ctx)?;
                one(&rc(ctx).loaders.users, me)
                    .await?
                    .map(User)
                    .ok_or(ApiError::Unauthenticated)
            }
            .await,
        )
    }

    /// A user's public profile.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Option<ApiResult<User>> {
        Some(
            async move {
                viewer(ctx)?;
                let id = d::UserId::parse(&id)?;
                one(&rc(ctx).loaders.users, id)
                    .await?
                    .map(User)
                    .ok_or(ApiError::NotFound)
            }
            .await,
        )
    }

    /// A calendar the viewer holds a role on. FORBIDDEN otherwise (also when it does not exist).
    async fn calendar(&self, ctx: &Context<'_>, id: ID) -> Option<ApiResult<Calendar>> {
        Some(
            async move {
                let id = d::CalendarId::parse(&id)?;
                let (cal, role) = calendar_with_role(ctx, id).await?;
                Ok(Calendar { cal, role })
            }
            .await,
        )
    }

    /// Every calendar the viewer holds a role on, by id.
    #[graphql(complexity = "20 * child_complexity + 1")]
    async fn my_calendars(&self, ctx: &Context<'_>) -> ApiResult<Vec<Calendar>> {
        let me = viewer(ctx)?;
        let r = rc(ctx);
        let memberships = r.store.memberships_of(me).await?;
        let ids: Vec<d::CalendarId> = memberships.iter().map(|(c, _)| *c).collect();
        let cals = r
            .loaders
            .calendars
            .try_load_many(ids)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut out = Vec::with_capacity(memberships.len());
        for (id, role) in memberships {
            if let Some(Ok(Some(cal))) = cals.get(&id) {
                out.push(Calendar {
                    cal: cal.clone(),
                    role,
                });
            }
        }
        Ok(out)
    }

    /// An event the viewer may read (member with reader role or above, organizer or invitee): a
    /// row id, or an occurrence id `seriesId_originalStartUTC` as `Calendar.events` lists them.
    async fn event(&self, ctx: &Context<'_>, id: ID) -> Option<ApiResult<Event>> {
        Some(
            async move {
                let (target, _) = super::series::resolve(ctx, &id).await?;
                Ok(target.view())
            }
            .await,
        )
    }

    /// A bookable resource.
    async fn resource(&self, ctx: &Context<'_>, id: ID) -> Option<ApiResult<Resource>> {
        Some(
            async move {
                viewer(ctx)?;
                let id = d::ResourceId::parse(&id)?;
                one(&rc(ctx).loaders.resources, id)
                    .await?
                    .map(Resource)
                    .ok_or(ApiError::NotFound)
            }
            .await,
        )
    }

    /// Merged busy intervals of users and resources in `[from, to)`. A user's free/busy is visible
    /// to the user and to anyone holding a role (free_busy suffices) on a calendar the user owns.
    async fn free_busy(
        &self,
        ctx: &Context<'_>,
        user_ids: Vec<ID>,
        #[graphql(default)] resource_ids: Vec<ID>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<FreeBusy> {
        viewer(ctx)?;
        let w = window(ctx, from, to)?;
        let users = parse_ids(ctx, &user_ids, d::UserId::parse)?;
        let resources = parse_ids(ctx, &resource_ids, d::ResourceId::parse)?;
        free_busy_visible(ctx, &users).await?;
        let r = rc(ctx);
        let user_rows = if users.is_empty() {
            HashMap::new()
        } else {
            r.loaders
                .users
                .try_load_many(users.clone())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
        };
        let resource_rows = if resources.is_empty() {
            HashMap::new()
        } else {
            r.loaders
                .resources
                .try_load_many(resources.clone())
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
        };
        let user_busy = if users.is_empty() {
            vec![]
        } else {
            r.store.busy_of_users(&users, &w).await?
        };
        let resource_busy = if resources.is_empty() {
            vec![]
        } else {
            r.store.busy_of_resources(&resources, &w).await?
        };

        let mut out = FreeBusy {
            users: vec![],
            resources: vec![],
        };
        for id in users {
            let Some(Ok(Some(u))) = user_rows.get(&id) else {
                return Err(ApiError::NotFound);
            };
            let mine = user_busy
                .iter()
                .filter(|(who, _)| *who == id)
                .map(|(_, i)| *i)
                .collect();
            let busy = d::merge_intervals(mine, w.from(), w.to())
                .into_iter()
                .map(Into::into)
                .collect();
            out.users.push(UserBusy {
                user: User(u.clone()),
                busy,
            });
        }
        for id in resources {
            let Some(Ok(Some(res))) = resource_rows.get(&id) else {
                return Err(ApiError::NotFound);
            };
            let mine = resource_busy
                .iter()
                .filter(|(who, _)| *who == id)
                .map(|(_, i)| *i)
                .collect();
            let busy = d::merge_intervals(mine, w.from(), w.to())
                .into_iter()
                .map(Into::into)
                .collect();
            out.resources.push(ResourceBusy {
                resource: Resource(res.clone()),
                busy,
            });
        }
        Ok(out)
    }

    /// A resource's confirmed bookings and the free gaps between them in `[from, to)`.
    async fn resource_availability(
        &self,
        ctx: &Context<'_>,
        resource_id: ID,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> ApiResult<ResourceAvailability> {
        viewer(ctx)?;
        let id = d::ResourceId::parse(&resource_id)?;
        let w = window(ctx, from, to)?;
        let r = rc(ctx);
        let res = one(&r.loaders.resources, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let rows = r.store.busy_of_resources(&[id], &w).await?;
        let busy = d::merge_intervals(rows.into_iter().map(|(_, i)| i).collect(), w.from(), w.to());
        let free = d::free_gaps(&busy, w.from(), w.to());
        Ok(ResourceAvailability {
            resource: Resource(res),
            busy: busy.into_iter().map(Into::into).collect(),
            free: free.into_iter().map(Into::into).collect(),
        })
    }
}
