//! Reads. Batch reads take an id list and send exactly one statement (`= ANY($1)`), whatever its length.
//!
//! Every statement's text is a named item below, shared with [`crate::explain`], so that the plans it
//! checks are the plans of the statements this module really sends.

use crate::rows::{self, *};
use crate::{StorageError, Store};
use cal_domain::*;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use std::sync::LazyLock;

type Result<T> = std::result::Result<T, StorageError>;
pub(crate) type Query = sqlx::query::Query<'static, sqlx::Postgres, PgArguments>;

pub(crate) static USERS_BY_IDS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {USER_COLS} FROM users WHERE id = ANY($1)"));

pub(crate) static CALENDARS_BY_IDS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {CALENDAR_COLS} FROM {CALENDAR_FROM} WHERE c.id = ANY($1)"));

pub(crate) static EVENTS_BY_IDS: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {EVENT_COLS} FROM events WHERE id = ANY($1) AND deleted_at IS NULL")
});

/// Attendee lists with the version of their event (read in the same statement, so a cached list
/// carries exactly the version it was read at). An event without attendees yields one row of NULLs.
pub(crate) const ATTENDEES_BY_EVENT_IDS: &str = "SELECT e.id AS list_event, e.version AS list_version, \
     a.event_id, a.user_id, a.email, a.name, a.response_status, a.is_optional \
     FROM events e LEFT JOIN attendees a ON a.event_id = e.id AND a.event_id = ANY($1) \
     WHERE e.id = ANY($1) ORDER BY e.id, a.user_id";

/// Reservation lists (with the resource each books) and the version of their event.
pub(crate) const RESERVATIONS_BY_EVENT_IDS: &str = "SELECT e.id AS list_event, e.version AS list_version, \
     r.id, r.event_id, r.resource_id, r.start_time, r.end_time, r.status, \
     s.name, s.kind, s.capacity, s.location, s.bookings_version \
     FROM events e LEFT JOIN (reservations r JOIN resources s ON s.id = r.resource_id) \
       ON r.event_id = e.id AND r.event_id = ANY($1) \
     WHERE e.id = ANY($1) ORDER BY e.id, r.start_time, r.id";

/// One event's list of something, with the event's version at read time.
#[derive(Debug, Clone)]
pub struct VersionedList<T> {
    pub event: EventId,
    pub version: i64,
    pub items: Vec<T>,
}

/// Groups rows of a `list_event`/`list_version` query; `item` is `None` for the NULL row of an
/// event without items. `C` is what `item` needs to find its columns, built from the first row.
fn group_lists<T, C>(
    rows: &[PgRow],
    cols: impl Fn(&PgRow) -> std::result::Result<C, sqlx::Error>,
    item: impl Fn(&PgRow, &C) -> std::result::Result<Option<T>, sqlx::Error>,
) -> std::result::Result<Vec<VersionedList<T>>, sqlx::Error> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let (list, c) = (
        rows::Cols::of(first, &["list_event", "list_version"])?,
        cols(first)?,
    );
    let mut out: Vec<VersionedList<T>> = Vec::new();
    for r in rows {
        let event = EventId::new(list.get(r, 0)?);
        if out.last().is_none_or(|l| l.event != event) {
            out.push(VersionedList {
                event,
                version: list.get(r, 1)?,
                items: Vec::new(),
            });
        }
        if let Some(t) = item(r, &c)? {
            out.last_mut().expect("pushed above").items.push(t);
        }
    }
    Ok(out)
}

pub(crate) static RESOURCES_BY_IDS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {RESOURCE_COLS} FROM resources WHERE id = ANY($1)"));

pub(crate) static RESERVATION_BY_ID: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {RESERVATION_COLS} FROM reservations WHERE id = $1"));

/// Bound by [`bind_events_in_window`]. One statement, three parts told apart by `part`:
/// 0. stored rows without a rule (single events and overrides) overlapping the window, after the
///    cursor, at most `$7` of them — the keyset cut happens here;
/// 1. live series masters that may touch the window (first start before its end, last end after
///    its start or infinite), from their own partial index;
/// 2. override rows of those masters whose original start lies in the window, deleted or not: they
///    suppress the generated occurrence wherever they were moved.
pub(crate) static EVENTS_IN_WINDOW: LazyLock<String> = LazyLock::new(|| {
    format!(
        "(SELECT {EVENT_COLS}, 0 AS part FROM events \
           WHERE calendar_id = $1 AND deleted_at IS NULL AND rrule IS NULL \
             AND start_time >= $2 AND start_time < $3 AND end_time > $4 \
             AND ($5::timestamptz IS NULL OR (start_time, id) > ($5, $6)) \
           ORDER BY start_time, id LIMIT $7) \
         UNION ALL \
         (SELECT {EVENT_COLS}, 1 AS part FROM events \
           WHERE calendar_id = $1 AND rrule IS NOT NULL AND deleted_at IS NULL \
             AND start_time < $3 AND (series_end IS NULL OR series_end > $4)) \
         UNION ALL \
         (SELECT {EVENT_COLS}, 2 AS part FROM events \
           WHERE recurring_event_id IN (SELECT id FROM events WHERE calendar_id = $1 AND rrule IS NOT NULL \
               AND deleted_at IS NULL AND start_time < $3 AND (series_end IS NULL OR series_end > $4)) \
             AND original_start_time >= $2 AND original_start_time < $3)"
    )
});

/// What [`Store::events_in_window`] returns: the three parts of [`EVENTS_IN_WINDOW`].
#[derive(Debug, Default)]
pub struct WindowRows {
    pub singles: Vec<Event>,
    pub masters: Vec<Event>,
    pub overrides: Vec<Event>,
}

pub(crate) const MEMBERSHIPS_OF: &str =
    "SELECT calendar_id, role FROM calendar_members WHERE user_id = $1 ORDER BY calendar_id";

/// `$1` the viewer, `$2` the users: those of them who are a member (any role) of a calendar the
/// viewer is a member of. Both sides are index-only (`calendar_members_user_idx`, then the primary
/// key `(calendar_id, user_id)`).
pub(crate) const USERS_SHARING_CALENDAR_WITH: &str = "SELECT DISTINCT o.user_id FROM calendar_members m \
     JOIN calendar_members o ON o.calendar_id = m.calendar_id \
     WHERE m.user_id = $1 AND o.user_id = ANY($2)";

pub(crate) const OWNERS_SHARING_WITH: &str = "SELECT DISTINCT c.owner_id FROM calendar_members m JOIN calendars c ON c.id = m.calendar_id \
     WHERE m.user_id = $1 AND c.owner_id = ANY($2)";

/// `$1` the users, then the window as bound by [`bind_window`].
pub(crate) const BUSY_OF_USERS: &str = "SELECT e.organizer_id AS who, e.start_time, e.end_time FROM events e \
       WHERE e.organizer_id = ANY($1) AND e.deleted_at IS NULL AND e.rrule IS NULL \
         AND e.start_time >= $2 AND e.start_time < $3 AND e.end_time > $4 \
         AND e.status <> 'cancelled' AND e.transparency = 'busy' \
     UNION ALL \
     SELECT a.user_id AS who, e.start_time, e.end_time FROM attendees a JOIN events e ON e.id = a.event_id \
       WHERE a.user_id = ANY($1) AND a.response_status <> 'declined' AND e.organizer_id <> a.user_id \
         AND e.deleted_at IS NULL AND e.rrule IS NULL AND e.start_time >= $2 AND e.start_time < $3 AND e.end_time > $4 \
         AND e.status <> 'cancelled' AND e.transparency = 'busy'";

/// `$1` the resources, then the window as bound by [`bind_window`].
/// Live busy series that users organize or attend (not declined) and that may touch the window
/// (`$2` is the window's end, `$3` its start), with the user they make busy.
pub(crate) static BUSY_SERIES_OF_USERS: LazyLock<String> = LazyLock::new(|| {
    let cols = rows::qualified("e", EVENT_COLS);
    format!(
        "SELECT e.organizer_id AS who, {cols} FROM events e \
           WHERE e.organizer_id = ANY($1) AND e.rrule IS NOT NULL AND e.deleted_at IS NULL \
             AND e.start_time < $2 AND (e.series_end IS NULL OR e.series_end > $3) \
             AND e.status <> 'cancelled' AND e.transparency = 'busy' \
         UNION ALL \
         SELECT a.user_id AS who, {cols} FROM attendees a JOIN events e ON e.id = a.event_id \
           WHERE a.user_id = ANY($1) AND a.response_status <> 'declined' AND e.organizer_id <> a.user_id \
             AND e.rrule IS NOT NULL AND e.deleted_at IS NULL \
             AND e.start_time < $2 AND (e.series_end IS NULL OR e.series_end > $3) \
             AND e.status <> 'cancelled' AND e.transparency = 'busy'"
    )
});

/// Original starts of the overrides of some series within a window (they replace occurrences).
pub(crate) const OVERRIDDEN_STARTS: &str = "SELECT recurring_event_id, original_start_time FROM events \
     WHERE recurring_event_id = ANY($1) AND original_start_time >= $2 AND original_start_time < $3";

pub(crate) const BUSY_OF_RESOURCES: &str = "SELECT resource_id AS who, start_time, end_time FROM reservations \
     WHERE resource_id = ANY($1) AND status = 'confirmed' \
       AND start_time >= $2 AND start_time < $3 AND end_time > $4";

/// `$1` the calendar, then the window as bound by [`bind_window`].
/// Binds `$2..$4` of a window query: events (or reservations) overlapping the window start no
/// earlier than the longest allowed duration before it, which keeps the filter a btree range.
pub(crate) fn bind_window(q: Query, window: &TimeWindow) -> Query {
    q.bind(window.earliest_overlapping_start())
        .bind(window.to())
        .bind(window.from())
}

/// Binds every parameter of [`EVENTS_IN_WINDOW`] (also used by `explain` on the same text).
pub(crate) fn bind_events_in_window(
    q: Query,
    calendar: CalendarId,
    window: &TimeWindow,
    after: Option<EventCursor>,
    limit: i64,
) -> Query {
    bind_window(q.bind(calendar.get()), window)
        .bind(after.map(|c| c.start))
        .bind(after.map(|c| c.id.get()).unwrap_or(0))
        .bind(limit)
}

fn raw(ids: impl IntoIterator<Item = i64>) -> Vec<i64> {
    ids.into_iter().collect()
}

fn map<T>(
    rows: Vec<PgRow>,
    f: fn(&PgRow) -> std::result::Result<T, sqlx::Error>,
) -> Result<Vec<T>> {
    rows.iter()
        .map(|r| f(r).map_err(StorageError::Database))
        .collect()
}

/// [`rows::all`] with the store's error.
fn all<T, const N: usize>(
    rows: &[PgRow],
    names: &[&str; N],
    f: fn(&PgRow, &rows::Cols<N>) -> std::result::Result<T, sqlx::Error>,
) -> Result<Vec<T>> {
    rows::all(rows, names, f).map_err(StorageError::Database)
}

impl Store {
    /// Sends one read statement, observed under `name` (see [`crate::statement`]).
    pub(crate) async fn fetch(
        &self,
        name: &'static str,
        q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<PgRow>> {
        let st = self.statement(name)?;
        let rows = match &self.conn {
            None => q.fetch_all(self.pool()).await?,
            Some(rc) => {
                let mut held = rc.conn.lock().await;
                let conn = match held.as_mut() {
                    Some(conn) => conn,
                    None => held.insert(self.pool().acquire().await?),
                };
                let rows = q.fetch_all(&mut **conn).await; // same statement
                // A dead connection is not kept for the request's next read.
                if rows.as_ref().is_err_and(crate::is_connection_lost) {
                    held.take();
                }
                rows?
            }
        };
        st.done(rows.len());
        Ok(rows)
    }

    pub async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let rows = self
            .fetch(
                "users.by_ids",
                sqlx::query(USERS_BY_IDS.as_str()).bind(raw(ids.iter().map(|i| i.get()))),
            )
            .await?;
        all(&rows, &rows::USER, rows::user_at)
    }

    pub async fn calendars_by_ids(&self, ids: &[CalendarId]) -> Result<Vec<Calendar>> {
        let rows = self
            .fetch(
                "calendars.by_ids",
                sqlx::query(CALENDARS_BY_IDS.as_str()).bind(raw(ids.iter().map(|i| i.get()))),
            )
            .await?;
        all(&rows, &rows::CALENDAR, rows::calendar_at)
    }

    /// Live (not deleted) events by id.
    pub async fn events_by_ids(&self, ids: &[EventId]) -> Result<Vec<Event>> {
        let rows = self
            .fetch(
                "events.by_ids",
                sqlx::query(EVENTS_BY_IDS.as_str()).bind(raw(ids.iter().map(|i| i.get()))),
            )
            .await?;
        all(&rows, &rows::EVENT, rows::event_at)
    }

    /// Attendees of the given (existing) events, each list with its event's version.
    pub async fn attendees_by_event_ids(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<VersionedList<Attendee>>> {
        let rows = self
            .fetch(
                "attendees.by_event_ids",
                sqlx::query(ATTENDEES_BY_EVENT_IDS).bind(raw(ids.iter().map(|i| i.get()))),
            )
            .await?;
        group_lists(
            &rows,
            |first| rows::Cols::of(first, &rows::ATTENDEE),
            |r, c| {
                let user: Option<i64> = sqlx::Row::try_get(r, c.at(1))?;
                user.map(|_| rows::attendee_at(r, c)).transpose()
            },
        )
        .map_err(StorageError::Database)
    }

    /// Reservations of the given events with the resource each one books (one statement: the month
    /// view needs both, and resources change rarely), each list with its event's version.
    pub async fn reservations_by_event_ids(
        &self,
        ids: &[EventId],
    ) -> Result<Vec<VersionedList<(Reservation, Resource)>>> {
        let rows = self
            .fetch(
                "reservations.by_event_ids",
                sqlx::query(RESERVATIONS_BY_EVENT_IDS).bind(raw(ids.iter().map(|i| i.get()))),
            )
            .await?;
        group_lists(
            &rows,
            |first| {
                Ok((
                    rows::Cols::of(first, &rows::RESERVATION)?,
                    rows::Cols::of(first, &rows::RESOURCE)?,
                ))
            },
            |r, (booking, resource)| {
                let id: Option<i64> = sqlx::Row::try_get(r, booking.at(0))?;
                match id {
                    None => Ok(None),
                    Some(_) => {
                        let res = rows::reservation_at(r, booking)?;
                        let resource = rows::resource_at(r, resource, res.resource_id)?;
                        Ok(Some((res, resource)))
                    }
                }
            },
        )
        .map_err(StorageError::Database)
    }

    pub async fn resources_by_ids(&self, ids: &[ResourceId]) -> Result<Vec<Resource>> {
        let rows = self
            .fetch(
                "resources.by_ids",
                sqlx::query(RESOURCES_BY_IDS.as_str()).bind(raw(ids.iter().map(|i| i.get()))),
            )
            .await?;
        map(rows, rows::resource)
    }

    pub async fn reservation_by_id(&self, id: ReservationId) -> Result<Option<Reservation>> {
        let rows = self
            .fetch(
                "reservation.by_id",
                sqlx::query(RESERVATION_BY_ID.as_str()).bind(id.get()),
            )
            .await?;
        Ok(map(rows, rows::reservation)?.into_iter().next())
    }

    /// Everything `calendar` shows in `window`, in one statement: at most `limit` stored rows
    /// (single events and overrides) in (start, id) order strictly after `after`, plus the series
    /// masters that may touch the window and their overrides (see [`EVENTS_IN_WINDOW`]). Expanding
    /// the series and merging is `cal_domain::instances::place`.
    pub async fn events_in_window(
        &self,
        calendar: CalendarId,
        window: &TimeWindow,
        after: Option<EventCursor>,
        limit: i64,
    ) -> Result<WindowRows> {
        let q = bind_events_in_window(
            sqlx::query(EVENTS_IN_WINDOW.as_str()),
            calendar,
            window,
            after,
            limit,
        );
        let mut out = WindowRows::default();
        let found = self.fetch("events.in_window", q).await?;
        let Some(first) = found.first() else {
            return Ok(out);
        };
        let (cols, part_at) = (
            rows::Cols::of(first, &rows::EVENT)?,
            rows::Cols::of(first, &["part"])?.at(0),
        );
        for r in &found {
            let part: i32 = sqlx::Row::try_get(r, part_at)?;
            let ev = rows::event_at(r, &cols)?;
            match part {
                0 => out.singles.push(ev),
                1 => out.masters.push(ev),
                _ => out.overrides.push(ev),
            }
        }
        Ok(out)
    }

    /// The `n` calendars with the most live events starting in `[from, to)` (cache warming).
    pub async fn most_active_calendars(
        &self,
        n: i64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<CalendarId>> {
        let q = sqlx::query(
            "SELECT calendar_id FROM events WHERE deleted_at IS NULL AND start_time >= $1 AND start_time < $2 \
             GROUP BY calendar_id ORDER BY count(*) DESC, calendar_id LIMIT $3",
        )
        .bind(from)
        .bind(to)
        .bind(n);
        let rows = self.fetch("calendars.most_active", q).await?;
        rows.iter()
            .map(|r| {
                sqlx::Row::try_get::<i64, _>(r, 0)
                    .map(CalendarId::new)
                    .map_err(StorageError::Database)
            })
            .collect()
    }

    /// Calendars a user is a member of, with the role, ordered by calendar id.
    pub async fn memberships_of(&self, user: UserId) -> Result<Vec<(CalendarId, Role)>> {
        let q = sqlx::query(MEMBERSHIPS_OF).bind(user.get());
        let rows = self.fetch("memberships.of_user", q).await?;
        rows.iter()
            .map(|r| {
                use sqlx::Row;
                let role: String = r.try_get("role")?;
                Ok((
                    CalendarId::new(r.try_get("calendar_id")?),
                    Role::parse(&role).map_err(|e| sqlx::Error::ColumnDecode {
                        index: "role".into(),
                        source: Box::new(e),
                    })?,
                ))
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(StorageError::Database)
    }

    /// Of `owners`, those who own at least one calendar that `viewer` is a member of (any role,
    /// free_busy included): the people whose free/busy `viewer` may see.
    pub async fn owners_sharing_with(
        &self,
        viewer: UserId,
        owners: &[UserId],
    ) -> Result<Vec<UserId>> {
        self.users_related_to("owners.sharing_with", OWNERS_SHARING_WITH, viewer, owners)
            .await
    }

    /// Of `users`, those who are a member (any role) of at least one calendar `viewer` is a member
    /// of: the people whose email `viewer` may see.
    pub async fn users_sharing_calendar_with(
        &self,
        viewer: UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>> {
        self.users_related_to(
            "users.sharing_calendar_with",
            USERS_SHARING_CALENDAR_WITH,
            viewer,
            users,
        )
        .await
    }

    /// Runs `sql` (`$1` the viewer, `$2` the user ids) and reads the user ids it answers.
    async fn users_related_to(
        &self,
        name: &'static str,
        sql: &'static str,
        viewer: UserId,
        users: &[UserId],
    ) -> Result<Vec<UserId>> {
        let q = sqlx::query(sql)
            .bind(viewer.get())
            .bind(raw(users.iter().map(|i| i.get())));
        self.fetch(name, q)
            .await?
            .iter()
            .map(|r| {
                sqlx::Row::try_get::<i64, _>(r, 0)
                    .map(UserId::new)
                    .map_err(StorageError::Database)
            })
            .collect()
    }

    /// Busy intervals of users in a window: events they organize or attend (not declined), confirmed
    /// or tentative, transparency busy, live.
    pub async fn busy_of_users(
        &self,
        users: &[UserId],
        window: &TimeWindow,
    ) -> Result<Vec<(UserId, Interval)>> {
        let q = bind_window(
            sqlx::query(BUSY_OF_USERS).bind(raw(users.iter().map(|i| i.get()))),
            window,
        );
        let rows = self.fetch("busy.of_users", q).await?;
        intervals(rows, UserId::new)
    }

    /// Busy series of users that may touch `window` (see [`BUSY_SERIES_OF_USERS`]), and the
    /// original starts their overrides replace: expanding them is the caller's job.
    pub async fn busy_series_of_users(
        &self,
        users: &[UserId],
        window: &TimeWindow,
    ) -> Result<(Vec<(UserId, Event)>, Vec<(EventId, DateTime<Utc>)>)> {
        let q = sqlx::query(BUSY_SERIES_OF_USERS.as_str())
            .bind(raw(users.iter().map(|i| i.get())))
            .bind(window.to())
            .bind(window.from());
        let mut series = Vec::new();
        for r in self.fetch("busy.series_of_users", q).await? {
            series.push((
                UserId::new(sqlx::Row::try_get(&r, "who")?),
                rows::event(&r)?,
            ));
        }
        if series.is_empty() {
            return Ok((series, Vec::new()));
        }
        let mut ids: Vec<i64> = series.iter().map(|(_, e)| e.id.get()).collect();
        ids.sort_unstable();
        ids.dedup();
        let q = sqlx::query(OVERRIDDEN_STARTS)
            .bind(ids)
            .bind(window.earliest_overlapping_start())
            .bind(window.to());
        let mut overridden = Vec::new();
        for r in self.fetch("events.overridden_starts", q).await? {
            overridden.push((
                EventId::new(sqlx::Row::try_get(&r, 0)?),
                sqlx::Row::try_get(&r, 1)?,
            ));
        }
        Ok((series, overridden))
    }

    /// Confirmed reservations of resources in a window.
    pub async fn busy_of_resources(
        &self,
        resources: &[ResourceId],
        window: &TimeWindow,
    ) -> Result<Vec<(ResourceId, Interval)>> {
        let q = bind_window(
            sqlx::query(BUSY_OF_RESOURCES).bind(raw(resources.iter().map(|i| i.get()))),
            window,
        );
        let rows = self.fetch("busy.of_resources", q).await?;
        intervals(rows, ResourceId::new)
    }
}

fn intervals<K>(rows: Vec<PgRow>, key: fn(i64) -> K) -> Result<Vec<(K, Interval)>> {
    use sqlx::Row;
    rows.iter()
        .map(|r| {
            let start: DateTime<Utc> = r.try_get("start_time")?;
            let end: DateTime<Utc> = r.try_get("end_time")?;
            Ok((key(r.try_get("who")?), Interval { start, end }))
        })
        .collect::<std::result::Result<_, sqlx::Error>>()
        .map_err(StorageError::Database)
}
