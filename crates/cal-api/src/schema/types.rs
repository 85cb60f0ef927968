//! GraphQL object types. Each wraps a viewer-independent fact (`Arc<T>` from a loader); fields that
//! reach further (organizer, attendees, rooms) go through the request's loaders.

use super::access::{calendar_with_role, event_access};
use super::{rc, viewer};
use crate::error::{ApiError, ApiResult};
use crate::loaders::{Batch, Booking, one};
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use cal_domain as domain;
use cal_domain::Occurrence;
use cal_domain::{EventCursor, TimeWindow};
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use chrono_tz::Tz;
use std::collections::BTreeSet;
use std::sync::Arc;

macro_rules! mirror_enum {
    ($(#[$doc:meta])* $name:ident <=> $domain:ty { $($v:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
        pub enum $name { $($v),+ }
        impl From<$domain> for $name {
            fn from(v: $domain) -> Self { match v { $(<$domain>::$v => $name::$v),+ } }
        }
        impl From<$name> for $domain {
            fn from(v: $name) -> Self { match v { $($name::$v => <$domain>::$v),+ } }
        }
    };
}

mirror_enum!(/// A member's role on a calendar.
    CalendarRole <=> domain::Role { Owner, Writer, Reader, FreeBusy });
mirror_enum!(/// Whether an event takes place.
    EventStatus <=> domain::EventStatus { Confirmed, Tentative, Cancelled });
mirror_enum!(/// Whether an event blocks time in free/busy.
    Transparency <=> domain::Transparency { Busy, Free });
mirror_enum!(/// An attendee's answer to an invitation.
    ResponseStatus <=> domain::ResponseStatus { NeedsAction, Accepted, Declined, Tentative });
mirror_enum!(/// Whether a reservation holds its resource.
    ReservationStatus <=> domain::ReservationStatus { Confirmed, Cancelled });
mirror_enum!(/// What a resource is.
    ResourceKind <=> domain::ResourceKind { Room, Equipment });

pub struct User(pub Arc<domain::User>);

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Visible only to the user and to users who share a calendar with them (both members of
    /// at least one common calendar, any role); `null` for everyone else.
    async fn email(&self, ctx: &Context<'_>) -> ApiResult<Option<&str>> {
        rc(ctx).emails.shown(self.0.id, &self.0.email).await
    }
    async fn avatar_url(&self) -> Option<&str> {
        self.0.avatar_url.as_deref()
    }
    async fn time_zone(&self) -> &str {
        &self.0.time_zone
    }
}

pub(crate) async fn load_user(ctx: &Context<'_>, id: domain::UserId) -> ApiResult<User> {
    one(&rc(ctx).loaders.users, id)
        .await?
        .map(User)
        .ok_or_else(|| ApiError::Internal(format!("user {id} referenced but missing")))
}

/// A calendar as seen by the viewer (who holds `role` on it).
pub struct Calendar {
    pub cal: Arc<domain::Calendar>,
    pub role: domain::Role,
}

impl Calendar {
    fn require_details(&self) -> ApiResult<()> {
        if self.role.can_read_details() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

#[derive(SimpleObject)]
pub struct CalendarMember {
    pub user: User,
    pub role: CalendarRole,
}

/// A half-open time interval `[start, end)`, with the offset of the requested zone (UTC if none).
#[derive(SimpleObject, Clone, Copy)]
pub struct TimeInterval {
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
}

impl From<domain::Interval> for TimeInterval {
    fn from(i: domain::Interval) -> Self {
        TimeInterval {
            start: i.start.fixed_offset(),
            end: i.end.fixed_offset(),
        }
    }
}

/// Renders intervals in `tz` (UTC when `None`).
pub(crate) fn rendered(v: Vec<domain::Interval>, tz: Option<Tz>) -> Vec<TimeInterval> {
    v.into_iter()
        .map(|i| match tz {
            Some(tz) => TimeInterval {
                start: i.start.with_timezone(&tz).fixed_offset(),
                end: i.end.with_timezone(&tz).fixed_offset(),
            },
            None => i.into(),
        })
        .collect()
}

/// Busy intervals of everything `calendar` shows in `w` (series expanded), merged.
pub(crate) async fn calendar_busy(
    ctx: &Context<'_>,
    calendar: domain::CalendarId,
    w: &TimeWindow,
) -> ApiResult<Vec<domain::Interval>> {
    const ALL: usize = 100_000;
    let cal = crate::loaders::one(&rc(ctx).loaders.calendars, calendar)
        .await?
        .ok_or(ApiError::Forbidden)?;
    let mut rows = super::buckets::window_rows(ctx, &cal, w).await?;
    rows.singles
        .retain(|e| e.start_time < w.to() && e.end_time > w.from());
    let placed = domain::instances::place(
        &rows.singles,
        &rows.masters,
        &rows.overrides,
        w.from(),
        w.to(),
        None,
        ALL,
    )
    .map_err(|e| ApiError::Internal(e.0))?;
    let busy = placed
        .iter()
        .filter(|p| {
            p.event.status != domain::EventStatus::Cancelled
                && p.event.transparency == domain::Transparency::Busy
        })
        .map(|p| domain::Interval {
            start: p.start(),
            end: p.end(),
        })
        .collect();
    Ok(domain::merge_intervals(busy, w.from(), w.to()))
}

pub(crate) fn window(
    ctx: &Context<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> ApiResult<TimeWindow> {
    Ok(TimeWindow::parse(from, to, rc(ctx).config.max_window)?)
}

#[Object]
impl Calendar {
    async fn id(&self) -> ID {
        ID(self.cal.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.cal.name
    }
    async fn description(&self) -> ApiResult<Option<&str>> {
        self.require_details()?;
        Ok(self.cal.description.as_deref())
    }
    /// IANA time zone of the calendar.
    async fn time_zone(&self) -> &str {
        &self.cal.time_zone
    }
    async fn version(&self) -> i64 {
        self.cal.version
    }
    /// The viewer's role on this calendar.
    async fn my_role(&self) -> CalendarRole {
        self.role.into()
    }
    async fn owner(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, self.cal.owner_id).await
    }
    /// Everyone the calendar is shared with (readers and above may see this).
    #[graphql(complexity = "10 * child_complexity + 1")]
    async fn members(&self, ctx: &Context<'_>) -> ApiResult<Vec<CalendarMember>> {
        self.require_details()?;
        let ids: Vec<domain::UserId> = self.cal.members.iter().map(|m| m.user_id).collect();
        let users = rc(ctx)
            .loaders
            .users
            .try_load_many(ids)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut out = Vec::with_capacity(self.cal.members.len());
        for m in &self.cal.members {
            if let Some(Ok(Some(u))) = users.get(&m.user_id) {
                out.push(CalendarMember {
                    user: User(u.clone()),
                    role: m.role.into(),
                });
            }
        }
        Ok(out)
    }
    /// Busy intervals of this calendar's events in `[from, to)`, merged. Any role may see these.
    async fn free_busy(
        &self,
        ctx: &Context<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        time_zone: Option<String>,
    ) -> ApiResult<Vec<TimeInterval>> {
        let w = window(ctx, from, to)?;
        let tz = time_zone
            .as_deref()
            .map(domain::parse_time_zone)
            .transpose()?;
        Ok(rendered(calendar_busy(ctx, self.cal.id, &w).await?, tz))
    }
    /// Events overlapping `[from, to)`, ordered by start time, with keyset cursors: single events
    /// plus every occurrence of every series that overlaps the window, expanded in the event's own
    /// zone. `timeZone` (IANA) renders the times with that zone's offset.
    #[graphql(
        complexity = "(first.unwrap_or(50).max(0) as usize).saturating_mul(child_complexity).saturating_add(1)"
    )]
    async fn events(
        &self,
        ctx: &Context<'_>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        first: Option<i32>,
        after: Option<String>,
        time_zone: Option<String>,
    ) -> ApiResult<Connection<String, Event>> {
        self.require_details()?;
        let args = PageArgs {
            from,
            to,
            first,
            after,
            time_zone,
        };
        let page = events_page(rc(ctx), &self.cal, args, Wants::of(&ctx.look_ahead())).await?;
        let mut conn = Connection::new(page.has_previous, page.has_next);
        conn.edges.extend(
            page.edges
                .into_iter()
                .map(|(cursor, event)| Edge::new(cursor, event)),
        );
        Ok(conn)
    }
}

/// The arguments of `Calendar.events`.
pub(crate) struct PageArgs {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub first: Option<i32>,
    pub after: Option<String>,
    pub time_zone: Option<String>,
}

/// What the selection under a page of events asks for, so that it can be loaded in as few
/// batches as possible before any field is resolved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wants {
    pub attendees: bool,
    pub attendee_users: bool,
    pub organizer: bool,
    pub reservations: bool,
}

impl Wants {
    /// From a look-ahead at the connection's selection (`edges.node` or `nodes`).
    fn of(la: &async_graphql::Lookahead<'_>) -> Self {
        let edges = la.field("edges");
        Self::of_nodes(&[edges.field("node"), la.field("nodes")])
    }

    /// From a look-ahead at one event's selection.
    pub(crate) fn of_event(la: &async_graphql::Lookahead<'_>) -> Self {
        Self::of_nodes(std::slice::from_ref(la))
    }

    fn of_nodes(nodes: &[async_graphql::Lookahead<'_>]) -> Self {
        let wants = |path: &[&str]| {
            nodes.iter().any(|n| {
                let mut cur = n.field(path[0]);
                for p in &path[1..] {
                    cur = cur.field(p);
                }
                cur.exists()
            })
        };
        Wants {
            attendees: wants(&["attendees"]),
            attendee_users: wants(&["attendees", "user"]),
            organizer: wants(&["organizer"]),
            reservations: wants(&["reservations"]),
        }
    }
}

/// One page of `Calendar.events`: the edges (cursor, event) in order and whether pages exist
/// before and after it. Everything `wants` names has been loaded into the request's loaders.
pub(crate) struct EventPage {
    pub edges: Vec<(String, Event)>,
    pub has_previous: bool,
    pub has_next: bool,
}

/// `Calendar.events` for a viewer allowed to read `cal`'s details.
pub(crate) async fn events_page(
    r: &super::RequestCtx,
    cal: &domain::Calendar,
    args: PageArgs,
    wants: Wants,
) -> ApiResult<EventPage> {
    let w = TimeWindow::parse(args.from, args.to, r.config.max_window)?;
    let tz = args
        .time_zone
        .as_deref()
        .map(domain::parse_time_zone)
        .transpose()?;
    let first = match args.first {
        None => r.config.default_page_size,
        Some(n) if n >= 0 && (n as usize) <= r.config.max_page_size => n as usize,
        Some(n) => {
            return Err(ApiError::bad_input(format!(
                "`first` must be between 0 and {} (got {n})",
                r.config.max_page_size
            )));
        }
    };
    let after = args.after.as_deref().map(EventCursor::decode).transpose()?;
    let mut rows = super::buckets::load_window(&r.tiers, &r.store, &r.cache_stats, cal, &w).await?;
    // Stored rows of the window after the cursor (series occurrences are cut by `place`).
    rows.singles.retain(|e| {
        e.start_time < w.to()
            && e.end_time > w.from()
            && after.is_none_or(|a| EventCursor::row(e.start_time, e.id) > a)
    });
    let mut placed = domain::instances::place(
        &rows.singles,
        &rows.masters,
        &rows.overrides,
        w.from(),
        w.to(),
        after,
        first + 1,
    )
    .map_err(|e| ApiError::Internal(format!("stored series cannot be expanded: {}", e.0)))?;
    let has_next = placed.len() > first;
    placed.truncate(first);
    // One Arc per stored row, shared by all the occurrences it generates.
    let arcs: foldhash::HashMap<domain::EventId, Arc<domain::Event>> = rows
        .singles
        .iter()
        .chain(&rows.masters)
        .map(|e| (e.id, e.clone()))
        .collect();
    let used: Vec<Arc<domain::Event>> = {
        let mut ids: Vec<domain::EventId> = placed.iter().map(|p| p.event.id).collect();
        ids.sort();
        ids.dedup();
        ids.iter().map(|id| arcs[id].clone()).collect()
    };
    r.loaders
        .events
        .prime_many(used.iter().map(|e| (e.id, Ok(Some(e.clone())))))
        .await;
    prefetch(r, &used, wants).await?;
    Ok(EventPage {
        edges: placed
            .iter()
            .map(|p| {
                (
                    p.cursor().encode(),
                    Event {
                        row: arcs[&p.event.id].clone(),
                        occurrence: p.occurrence,
                        tz,
                    },
                )
            })
            .collect(),
        has_previous: after.is_some(),
        has_next,
    })
}

/// Loads, in as few batches as possible, what the selection under a page of events will ask for:
/// attendees and reservations (one statement each, concurrently), then every user the page shows
/// (organizers and attendees together, one statement). Field resolvers then hit the loaders' memo.
pub(crate) async fn prefetch(
    r: &super::RequestCtx,
    events: &[Arc<domain::Event>],
    wants: Wants,
) -> ApiResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let loaders = &r.loaders;
    let ids: Vec<domain::EventId> = events.iter().map(|e| e.id).collect();
    // Every key is known: load at once rather than through the loaders' wait for more keys.
    let attendees = async {
        if wants.attendees {
            loaders.load_now(Batch::Attendees(&ids)).await;
        }
    };
    let reservations = async {
        if wants.reservations {
            loaders.load_now(Batch::Reservations(&ids)).await;
        }
    };
    futures::join!(attendees, reservations);
    let mut users = BTreeSet::new();
    if wants.organizer {
        users.extend(events.iter().map(|e| e.organizer_id));
    }
    if wants.attendee_users {
        let lists = loaders
            .attendees
            .try_load_many(ids)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        for list in lists.values().flatten() {
            users.extend(list.iter().map(|a| a.user_id));
        }
    }
    if !users.is_empty() {
        let users: Vec<domain::UserId> = users.into_iter().collect();
        loaders.load_now(Batch::Users(&users)).await;
    }
    Ok(())
}

/// An event the viewer may read (authorization happened where it was obtained): a stored row
/// (single event, series master or override), or one generated occurrence of a series.
pub struct Event {
    pub row: Arc<domain::Event>,
    pub occurrence: Option<Occurrence>,
    /// Zone to render times in (`Calendar.events(timeZone:)`); UTC otherwise.
    pub tz: Option<Tz>,
}

impl Event {
    pub fn row(row: Arc<domain::Event>) -> Self {
        Event {
            row,
            occurrence: None,
            tz: None,
        }
    }

    fn start(&self) -> DateTime<Utc> {
        self.occurrence.map_or(self.row.start_time, |o| o.start)
    }

    fn end(&self) -> DateTime<Utc> {
        self.occurrence.map_or(self.row.end_time, |o| o.end)
    }

    /// All-day events are dates: always rendered at UTC midnight, never shifted into a zone.
    fn render(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        match self.tz {
            Some(tz) if !self.row.all_day => t.with_timezone(&tz).fixed_offset(),
            _ => t.fixed_offset(),
        }
    }

    // The field values, shared by the resolvers below and by direct execution (`direct.rs`).

    pub(crate) fn id_text(&self) -> String {
        domain::instances::instance_id(&self.row, self.occurrence)
            .map_or_else(|| self.row.id.to_string(), |i| i.format())
    }

    pub(crate) fn start_rendered(&self) -> DateTime<FixedOffset> {
        self.render(self.start())
    }

    pub(crate) fn end_rendered(&self) -> DateTime<FixedOffset> {
        self.render(self.end())
    }

    pub(crate) fn first_date(&self) -> Option<NaiveDate> {
        self.row.all_day.then(|| self.start().date_naive())
    }

    pub(crate) fn end_day(&self) -> Option<NaiveDate> {
        self.row.all_day.then(|| self.end().date_naive())
    }

    pub(crate) fn recurring_id(&self) -> Option<domain::EventId> {
        match self.occurrence {
            Some(_) => Some(self.row.id),
            None => self.row.recurring_event_id,
        }
    }

    pub(crate) fn original_start_rendered(&self) -> Option<DateTime<FixedOffset>> {
        self.occurrence
            .map(|o| o.original_start)
            .or(self.row.original_start_time)
            .map(|t| self.render(t))
    }

    pub(crate) fn recurs(&self) -> bool {
        self.row.rrule.is_some() || self.row.recurring_event_id.is_some()
    }

    /// Of the event's bookings, those of this event (for an occurrence, those overlapping it).
    pub(crate) fn own_bookings<'a>(
        &self,
        list: &'a [Booking],
    ) -> impl Iterator<Item = &'a Booking> {
        let (start, end, occurrence) = (self.start(), self.end(), self.occurrence.is_some());
        list.iter()
            .filter(move |(r, _)| !occurrence || (r.start_time < end && r.end_time > start))
    }
}

#[Object]
impl Event {
    /// Stable id: the row id for single events and series, `seriesId_originalStartUTC` (e.g.
    /// `42_20261122T090000Z`) for an occurrence of a series, overridden or not. Usable with `event(id)`.
    async fn id(&self) -> ID {
        ID(self.id_text())
    }
    /// The calendar holding the event; null when the viewer sees the event only as an invitee.
    async fn calendar(&self, ctx: &Context<'_>) -> ApiResult<Option<Calendar>> {
        match calendar_with_role(ctx, self.row.calendar_id).await {
            Ok((cal, role)) => Ok(Some(Calendar { cal, role })),
            Err(ApiError::Forbidden) => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn organizer(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, self.row.organizer_id).await
    }
    async fn title(&self) -> &str {
        &self.row.title
    }
    async fn description(&self) -> Option<&str> {
        self.row.description.as_deref()
    }
    async fn location(&self) -> Option<&str> {
        self.row.location.as_deref()
    }
    /// Start instant, with the offset of the requested zone (UTC when none was asked for).
    async fn start_time(&self) -> DateTime<FixedOffset> {
        self.start_rendered()
    }
    async fn end_time(&self) -> DateTime<FixedOffset> {
        self.end_rendered()
    }
    /// For all-day events, the first day (`YYYY-MM-DD`), the same in every zone.
    async fn start_date(&self) -> Option<NaiveDate> {
        self.first_date()
    }
    /// For all-day events, the day after the last one (exclusive end, as in iCalendar).
    async fn end_date(&self) -> Option<NaiveDate> {
        self.end_day()
    }
    /// IANA time zone the event was scheduled in.
    async fn time_zone(&self) -> &str {
        &self.row.time_zone
    }
    async fn all_day(&self) -> bool {
        self.row.all_day
    }
    async fn status(&self) -> EventStatus {
        self.row.status.into()
    }
    async fn transparency(&self) -> Transparency {
        self.row.transparency.into()
    }
    /// RFC 5545 recurrence rule of a series master.
    async fn rrule(&self) -> Option<&str> {
        self.row.rrule.as_deref()
    }
    async fn exdates(&self) -> &[DateTime<Utc>] {
        &self.row.exdates
    }
    /// The series this is an occurrence of (generated or overridden).
    async fn recurring_event_id(&self) -> Option<ID> {
        self.recurring_id().map(|i| ID(i.to_string()))
    }
    /// Where the series' rule put this occurrence (it may have been moved since).
    async fn original_start_time(&self) -> Option<DateTime<FixedOffset>> {
        self.original_start_rendered()
    }
    /// Whether this is a series master or one of its occurrences.
    async fn is_recurring(&self) -> bool {
        self.recurs()
    }
    /// Bumped on every change; pass it back as `expectedVersion` when updating.
    async fn version(&self) -> i64 {
        self.row.version
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.row.updated_at
    }
    #[graphql(complexity = "10 * child_complexity + 1")]
    async fn attendees(&self, ctx: &Context<'_>) -> ApiResult<Vec<Attendee>> {
        let list = one(&rc(ctx).loaders.attendees, self.row.id).await?;
        Ok((0..list.len())
            .map(|i| Attendee {
                list: list.clone(),
                index: i,
            })
            .collect())
    }
    /// Bookings of this event; for an occurrence of a series, the bookings of that occurrence.
    #[graphql(complexity = "2 * child_complexity + 1")]
    async fn reservations(&self, ctx: &Context<'_>) -> ApiResult<Vec<Reservation>> {
        let list = one(&rc(ctx).loaders.reservations, self.row.id).await?;
        Ok(self
            .own_bookings(&list)
            .cloned()
            .map(Reservation::from)
            .collect())
    }
    /// The viewer's own response, when invited.
    async fn my_response(&self, ctx: &Context<'_>) -> ApiResult<Option<ResponseStatus>> {
        let me = viewer(ctx)?;
        let list = one(&rc(ctx).loaders.attendees, self.row.id).await?;
        Ok(list
            .iter()
            .find(|a| a.user_id == me)
            .map(|a| a.response_status.into()))
    }
    /// Whether the viewer may change this event.
    async fn can_edit(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        Ok(event_access(ctx, &self.row).await?.can_write())
    }
}

/// One invitee of an event (an index into the event's shared attendee list).
pub struct Attendee {
    list: Arc<Vec<domain::Attendee>>,
    index: usize,
}

impl Attendee {
    fn a(&self) -> &domain::Attendee {
        &self.list[self.index]
    }
}

#[Object]
impl Attendee {
    async fn user(&self, ctx: &Context<'_>) -> ApiResult<User> {
        load_user(ctx, self.a().user_id).await
    }
    /// The invitee's email as recorded on the invitation: the same rule as `User.email`
    /// (the invitee, or someone sharing a calendar with them), `null` for everyone else.
    async fn email(&self, ctx: &Context<'_>) -> ApiResult<Option<&str>> {
        let a = self.a();
        match &a.email {
            Some(email) => rc(ctx).emails.shown(a.user_id, email).await,
            None => Ok(None),
        }
    }
    async fn name(&self) -> Option<&str> {
        self.a().name.as_deref()
    }
    async fn response_status(&self) -> ResponseStatus {
        self.a().response_status.into()
    }
    async fn is_optional(&self) -> bool {
        self.a().is_optional
    }
}

pub struct Reservation {
    pub r: domain::Reservation,
    pub resource: Arc<domain::Resource>,
}

impl From<Booking> for Reservation {
    fn from((r, resource): Booking) -> Self {
        Reservation {
            r,
            resource: Arc::new(resource),
        }
    }
}

#[Object]
impl Reservation {
    async fn id(&self) -> ID {
        ID(self.r.id.to_string())
    }
    async fn event_id(&self) -> ID {
        ID(self.r.event_id.to_string())
    }
    async fn resource(&self) -> Resource {
        Resource(self.resource.clone())
    }
    async fn start_time(&self) -> DateTime<Utc> {
        self.r.start_time
    }
    async fn end_time(&self) -> DateTime<Utc> {
        self.r.end_time
    }
    async fn status(&self) -> ReservationStatus {
        self.r.status.into()
    }
}

pub struct Resource(pub Arc<domain::Resource>);

#[Object]
impl Resource {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn kind(&self) -> ResourceKind {
        self.0.kind.into()
    }
    async fn capacity(&self) -> Option<i32> {
        self.0.capacity
    }
    async fn location(&self) -> Option<&str> {
        self.0.location.as_deref()
    }
}

#[derive(SimpleObject)]
pub struct UserBusy {
    pub user: User,
    pub busy: Vec<TimeInterval>,
}

#[derive(SimpleObject)]
pub struct ResourceBusy {
    pub resource: Resource,
    pub busy: Vec<TimeInterval>,
}

/// Merged busy intervals per requested user and resource.
#[derive(SimpleObject)]
pub struct FreeBusy {
    pub users: Vec<UserBusy>,
    pub resources: Vec<ResourceBusy>,
}

/// A resource's bookings and free gaps in a window.
#[derive(SimpleObject)]
pub struct ResourceAvailability {
    pub resource: Resource,
    pub busy: Vec<TimeInterval>,
    pub free: Vec<TimeInterval>,
}
