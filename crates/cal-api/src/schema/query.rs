//! Query root.

use super::access::{calendar_with_role, free_busy_visible};
use super::types::*;
use super::{rc, viewer};
use crate::error::{ApiError, ApiResult};
use crate::loaders::one;
use async_graphql::{Context, ID, Object};
use cal_domain as domain;
use chrono::{DateTime, Utc};

pub struct QueryRoot;

/// Parses a list of ids, rejecting lists longer than the configured cap.
pub(crate) fn parse_ids<T: Ord>(
    ctx: &Context<'_>,
    ids: &[ID],
    parse: fn(&str) -> Result<T, domain::DomainError>,
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
// `findMeetingTimes` takes its GraphQL arguments as function parameters.
#[allow(clippy::too_many_arguments)]
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
                let id = domain::UserId::parse(&id)?;
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
                let id = domain::CalendarId::parse(&id)?;
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
        let ids: Vec<domain::CalendarId> = memberships.iter().map(|(c, _)| *c).collect();
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

    /// Incremental sync of a calendar's stored events (masters of series, overrides and single
    /// events; a client expands series itself). Without `since`: every live event, page by page
    /// (`first` per page), the last page carrying a `nextSyncToken`. With a `nextSyncToken` as
    /// `since`: every event created, changed or deleted after it, each once in its current state
    /// (a deleted one as its id and `deleted: true`), page by page, the last page carrying a new
    /// token. A `nextPageToken` goes in `since` too. Tokens are opaque, signed, and bound to the
    /// calendar and the viewer; one older than the change log's retention answers
    /// `SYNC_TOKEN_EXPIRED` (sync again without `since`). Needs the reader role or above
    /// (FORBIDDEN otherwise, also once access is lost).
    #[graphql(
        complexity = "(first.unwrap_or(50).max(0) as usize).saturating_mul(child_complexity).saturating_add(1)"
    )]
    async fn changes(
        &self,
        ctx: &Context<'_>,
        calendar_id: ID,
        since: Option<String>,
        first: Option<i32>,
    ) -> Option<ApiResult<super::sync::ChangeSet>> {
        Some(super::sync::changes(ctx, calendar_id, since, first).await)
    }

    /// A bookable resource.
    async fn resource(&self, ctx: &Context<'_>, id: ID) -> Option<ApiResult<Resource>> {
        Some(
            async move {
                viewer(ctx)?;
                let id = domain::ResourceId::parse(&id)?;
                one(&rc(ctx).loaders.resources, id)
                    .await?
                    .map(Resource)
                    .ok_or(ApiError::NotFound)
            }
            .await,
        )
    }

    /// Merged busy intervals of users and resources in `[from, to)`: confirmed and tentative
    /// events whose transparency is busy, series occurrences included, declined invitations
    /// excluded. A user's free/busy is visible to the user and to anyone holding a role
    /// (free_busy suffices) on a calendar the user owns.
    async fn free_busy(
        &self,
        ctx: &Context<'_>,
        user_ids: Vec<ID>,
        #[graphql(default)] resource_ids: Vec<ID>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        time_zone: Option<String>,
    ) -> ApiResult<FreeBusy> {
        viewer(ctx)?;
        let w = window(ctx, from, to)?;
        let tz = time_zone
            .as_deref()
            .map(domain::parse_time_zone)
            .transpose()?;
        let users = parse_ids(ctx, &user_ids, domain::UserId::parse)?;
        let resources = parse_ids(ctx, &resource_ids, domain::ResourceId::parse)?;
        free_busy_visible(ctx, &users).await?;
        let (user_rows, user_busy) = busy_of_users(ctx, &users, &w).await?;
        let (resource_rows, resource_busy) = busy_of_resources(ctx, &resources, &w).await?;
        Ok(FreeBusy {
            users: user_rows
                .into_iter()
                .zip(user_busy)
                .map(|(u, busy)| UserBusy {
                    user: User(u),
                    busy: rendered(busy, tz),
                })
                .collect(),
            resources: resource_rows
                .into_iter()
                .zip(resource_busy)
                .map(|(r, busy)| ResourceBusy {
                    resource: Resource(r),
                    busy: rendered(busy, tz),
                })
                .collect(),
        })
    }

    /// Free slots of at least `duration` minutes common to every user and resource in
    /// `[from, to)` (each slot is a whole free gap), rendered in `timeZone`. Visibility as `freeBusy`.
    async fn find_meeting_times(
        &self,
        ctx: &Context<'_>,
        user_ids: Vec<ID>,
        #[graphql(default)] resource_ids: Vec<ID>,
        duration: i32,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        time_zone: Option<String>,
    ) -> ApiResult<Vec<TimeInterval>> {
        viewer(ctx)?;
        let w = window(ctx, from, to)?;
        if duration <= 0 || i64::from(duration) > (w.to() - w.from()).num_minutes() {
            return Err(ApiError::bad_input(
                "duration (minutes) must be positive and fit in the window",
            ));
        }
        let tz = time_zone
            .as_deref()
            .map(domain::parse_time_zone)
            .transpose()?;
        let users = parse_ids(ctx, &user_ids, domain::UserId::parse)?;
        let resources = parse_ids(ctx, &resource_ids, domain::ResourceId::parse)?;
        if users.is_empty() && resources.is_empty() {
            return Err(ApiError::bad_input("give at least one user or resource"));
        }
        free_busy_visible(ctx, &users).await?;
        let (_, user_busy) = busy_of_users(ctx, &users, &w).await?;
        let (_, resource_busy) = busy_of_resources(ctx, &resources, &w).await?;
        let all: Vec<domain::Interval> = user_busy
            .into_iter()
            .chain(resource_busy)
            .flatten()
            .collect();
        let busy = domain::merge_intervals(all, w.from(), w.to());
        let min = chrono::Duration::minutes(i64::from(duration));
        let free = domain::free_gaps(&busy, w.from(), w.to())
            .into_iter()
            .filter(|g| g.end - g.start >= min)
            .collect();
        Ok(rendered(free, tz))
    }

    /// A resource's confirmed bookings and the free gaps between them in `[from, to)`.
    async fn resource_availability(
        &self,
        ctx: &Context<'_>,
        resource_id: ID,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        time_zone: Option<String>,
    ) -> ApiResult<ResourceAvailability> {
        viewer(ctx)?;
        let tz = time_zone
            .as_deref()
            .map(domain::parse_time_zone)
            .transpose()?;
        let id = domain::ResourceId::parse(&resource_id)?;
        let w = window(ctx, from, to)?;
        let r = rc(ctx);
        let res = one(&r.loaders.resources, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let booked =
            super::availability::bookings(&r.tiers, &r.store, &r.cache_stats, &res, &w).await?;
        let busy = domain::merge_intervals(booked, w.from(), w.to());
        let free = domain::free_gaps(&busy, w.from(), w.to());
        Ok(ResourceAvailability {
            resource: Resource(res),
            busy: rendered(busy, tz),
            free: rendered(free, tz),
        })
    }
}

type Loaded<T> = Vec<std::sync::Arc<T>>;

/// The users (in `users` order; NOT_FOUND if one does not exist) and each one's merged busy
/// intervals in `w`, series expanded and overridden occurrences replaced by their overrides.
async fn busy_of_users(
    ctx: &Context<'_>,
    users: &[domain::UserId],
    w: &domain::TimeWindow,
) -> ApiResult<(Loaded<domain::User>, Vec<Vec<domain::Interval>>)> {
    if users.is_empty() {
        return Ok((vec![], vec![]));
    }
    let r = rc(ctx);
    let rows = r
        .loaders
        .users
        .try_load_many(users.to_vec())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut found = Vec::with_capacity(users.len());
    for id in users {
        let Some(Ok(Some(u))) = rows.get(id) else {
            return Err(ApiError::NotFound);
        };
        found.push(u.clone());
    }
    let singles = r.store.busy_of_users(users, w).await?;
    let (series, overridden) = r.store.busy_series_of_users(users, w).await?;
    let mut busy = Vec::with_capacity(users.len());
    for id in users {
        let mut mine: Vec<domain::Interval> = singles
            .iter()
            .filter(|(who, _)| who == id)
            .map(|(_, i)| *i)
            .collect();
        for (_, master) in series.iter().filter(|(who, _)| who == id) {
            let replaced: Vec<DateTime<Utc>> = overridden
                .iter()
                .filter(|(s, _)| *s == master.id)
                .map(|(_, t)| *t)
                .collect();
            let occ = domain::instances::occurrences_of(master, &replaced, w.from(), w.to())
                .map_err(|e| ApiError::Internal(e.0))?;
            mine.extend(occ.into_iter().map(|o| domain::Interval {
                start: o.start,
                end: o.end,
            }));
        }
        busy.push(domain::merge_intervals(mine, w.from(), w.to()));
    }
    Ok((found, busy))
}

/// Like [`busy_of_users`] for resources (their bookings are stored per occurrence already).
async fn busy_of_resources(
    ctx: &Context<'_>,
    resources: &[domain::ResourceId],
    w: &domain::TimeWindow,
) -> ApiResult<(Loaded<domain::Resource>, Vec<Vec<domain::Interval>>)> {
    if resources.is_empty() {
        return Ok((vec![], vec![]));
    }
    let r = rc(ctx);
    let rows = r
        .loaders
        .resources
        .try_load_many(resources.to_vec())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut found = Vec::with_capacity(resources.len());
    for id in resources {
        let Some(Ok(Some(res))) = rows.get(id) else {
            return Err(ApiError::NotFound);
        };
        found.push(res.clone());
    }
    let all = r.store.busy_of_resources(resources, w).await?;
    let busy = resources
        .iter()
        .map(|id| {
            domain::merge_intervals(
                all.iter()
                    .filter(|(who, _)| who == id)
                    .map(|(_, i)| *i)
                    .collect(),
                w.from(),
                w.to(),
            )
        })
        .collect();
    Ok((found, busy))
}
