//! Transactional writes. Each one runs in a single transaction that
//!
//! 1. locks and bumps the event's (or calendar's) `version` first, checking `expected_version`,
//!    and bumps the calendar's version (its cache generation);
//! 2. changes the rows;
//! 3. appends an outbox row describing the change (consumed by the invalidation relay).
//!
//! So a committed change always has its outbox row and a failed one leaves nothing behind. After
//! the commit, the change set goes to the store's [`crate::ChangeSink`] (cache invalidation).

use crate::rows::{self, *};
use crate::{ChangeSet, EventChange};
use crate::{Conflict, StorageError, Store};
use cal_domain::*;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row, Transaction};

type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, Clone)]
pub struct NewAttendee {
    pub user_id: UserId,
    pub is_optional: bool,
}

/// A resource to book for an event; the times default to the event's.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub resource_id: ResourceId,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub calendar_id: CalendarId,
    pub organizer_id: UserId,
    pub title: String,
    pub description: Option<String>,
    pub location: Option<String>,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub time_zone: String,
    pub all_day: bool,
    pub status: EventStatus,
    pub transparency: Transparency,
    pub rrule: Option<String>,
    /// End of the series' last occurrence (`None` for single events and infinite series).
    pub series_end: Option<DateTime<Utc>>,
    pub attendees: Vec<NewAttendee>,
    pub reservations: Vec<NewReservation>,
}

/// Fields to change; `None` leaves a field as it is. For nullable fields `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct EventPatch {
    pub title: Option<String>,
    pub description: Option<Option<String>>,
    pub location: Option<Option<String>>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub time_zone: Option<String>,
    pub all_day: Option<bool>,
    pub status: Option<EventStatus>,
    pub transparency: Option<Transparency>,
    pub rrule: Option<Option<String>>,
    /// Set whenever `rrule` or the times of a series change (see [`NewEvent::series_end`]).
    pub series_end: Option<Option<DateTime<Utc>>>,
}

/// A write transaction and the changes it has made so far, handed to the [`ChangeSink`] after
/// the commit (and only then).
pub(crate) struct WriteTx {
    tx: Transaction<'static, Postgres>,
    pub(crate) changes: ChangeSet,
    /// What happened, one record per change; written as the transaction's outbox row.
    records: Vec<serde_json::Value>,
}

impl std::ops::Deref for WriteTx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl Store {
    /// Starts a write transaction (`BEGIN`, counted like any statement); once more on a fresh
    /// connection if the first one was dead (nothing was done on it: see [`crate::pool`]).
    pub(crate) async fn begin(&self) -> Result<WriteTx> {
        let st = self.statement("tx.begin")?;
        let tx = crate::pool::once_more_if_lost(|| self.pool().begin()).await?;
        st.done(0);
        Ok(WriteTx {
            tx,
            changes: ChangeSet::default(),
            records: Vec::new(),
        })
    }

    /// Appends the transaction's outbox row (what happened and the cache keys it made stale),
    /// commits, then tells the sink (cache invalidation) what changed, before the caller answers.
    /// Answers the transaction's outbox row id (`None`: it changed nothing).
    pub(crate) async fn commit(&self, mut tx: WriteTx) -> Result<Option<i64>> {
        if !tx.records.is_empty() || !tx.changes.is_empty() {
            self.record_resources(&mut tx).await?;
            let first = tx.records.first().cloned().unwrap_or_default();
            let st = self.statement("outbox.insert")?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, origin, created_at) \
                 VALUES ($1, $2, $3, $4, $5, clock_timestamp()) RETURNING id",
            )
            .bind(first["aggregate"].as_str().unwrap_or("calendar"))
            .bind(first["id"].as_i64().unwrap_or(0))
            .bind(first["type"].as_str().unwrap_or("changed"))
            .bind(json!({
                "changes": tx.records,
                "changed": tx.changes,
                "trace": self.trace_context.as_deref().cloned().unwrap_or_default(),
            }))
            .bind(self.origin.as_deref())
            .fetch_one(&mut *tx.tx)
            .await?;
            st.done(1);
            tx.changes.outbox_id = Some(id);
        }
        let st = self.statement("tx.commit")?;
        tx.tx.commit().await?;
        st.done(0);
        if let Some(sink) = &self.sink
            && !tx.changes.is_empty()
        {
            let token = sink.committed(&tx.changes).await;
            self.record_commit_token(token);
        }
        Ok(tx.changes.outbox_id)
    }

    /// The resources that the changed events book or booked, with their bookings version as this
    /// transaction leaves it. Every reservation change happens to a reservation of a changed
    /// event, and the database bumps the resource's version on it (trigger), so this covers every
    /// resource whose availability the transaction changed (and, harmlessly, a few it did not).
    async fn record_resources(&self, tx: &mut WriteTx) -> Result<()> {
        if tx.changes.events.is_empty() {
            return Ok(());
        }
        let events: Vec<i64> = tx.changes.events.iter().map(|c| c.event.0).collect();
        let st = self.statement("resources.booked_by_events")?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT s.id, s.bookings_version FROM resources s \
             WHERE s.id IN (SELECT resource_id FROM reservations WHERE event_id = ANY($1))",
        )
        .bind(&events)
        .fetch_all(&mut **tx)
        .await?;
        st.done(rows.len());
        tx.changes.resources = rows
            .into_iter()
            .map(|(id, v)| (cal_domain::ResourceId(id), v))
            .collect();
        Ok(())
    }

    /// Bumps the calendar's version (its cache generation) and records the change.
    pub(crate) async fn touch_calendar(
        &self,
        tx: &mut WriteTx,
        calendar: CalendarId,
    ) -> Result<i64> {
        // One bump per transaction is enough: the generation only has to differ from the one
        // readers saw before the commit.
        if let Some((_, v)) = tx.changes.calendars.iter().find(|(c, _)| *c == calendar) {
            return Ok(*v);
        }
        let st = self.statement("calendars.bump_version")?;
        let version: Option<i64> =
            sqlx::query_scalar("UPDATE calendars SET version = version + 1, updated_at = now() WHERE id = $1 RETURNING version")
                .bind(calendar.0)
                .fetch_optional(&mut **tx)
                .await?;
        st.done(version.is_some() as usize);
        let version = version.ok_or(StorageError::NotFound)?;
        tx.changes.calendars.retain(|(c, _)| *c != calendar);
        tx.changes.calendars.push((calendar, version));
        Ok(version)
    }

    /// Records that `ev` (as now stored) changed, bumping its calendar's generation.
    pub(crate) async fn record_event(&self, tx: &mut WriteTx, ev: &Event) -> Result<()> {
        let calendar_version = self.touch_calendar(tx, ev.calendar_id).await?;
        tx.changes.events.retain(|c| c.event != ev.id);
        tx.changes.events.push(EventChange {
            event: ev.id,
            event_version: ev.version,
            calendar: ev.calendar_id,
            calendar_version,
        });
        Ok(())
    }

    /// Records what happened; [`Store::commit`] writes the transaction's records as its one
    /// outbox row.
    pub(crate) async fn outbox(
        &self,
        tx: &mut WriteTx,
        aggregate: &str,
        id: i64,
        kind: &str,
        payload: serde_json::Value,
    ) -> Result<()> {
        tx.records
            .push(json!({ "aggregate": aggregate, "id": id, "type": kind, "data": payload }));
        Ok(())
    }

    pub async fn create_user(
        &self,
        email: &str,
        name: &str,
        avatar_url: Option<&str>,
    ) -> Result<User> {
        let sql = format!(
            "INSERT INTO users (email, name, avatar_url) VALUES ($1, $2, $3) RETURNING {USER_COLS}"
        );
        let st = self.statement("users.insert")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(email)
            .bind(name)
            .bind(avatar_url)
            .fetch_one(self.pool())
            .await
            .map_err(StorageError::from_db)?;
        st.done(1);
        Ok(rows::user(&row)?)
    }

    pub async fn create_resource(
        &self,
        name: &str,
        kind: ResourceKind,
        capacity: Option<i32>,
        location: Option<&str>,
    ) -> Result<Resource> {
        let sql = format!(
            "INSERT INTO resources (name, kind, capacity, location) VALUES ($1, $2, $3, $4) RETURNING {RESOURCE_COLS}"
        );
        let st = self.statement("resources.insert")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(name)
            .bind(kind.as_str())
            .bind(capacity)
            .bind(location)
            .fetch_one(self.pool())
            .await
            .map_err(StorageError::from_db)?;
        st.done(1);
        Ok(rows::resource(&row)?)
    }

    async fn calendar_in(&self, conn: &mut PgConnection, id: CalendarId) -> Result<Calendar> {
        let sql = format!("SELECT {CALENDAR_COLS} FROM {CALENDAR_FROM} WHERE c.id = $1");
        let st = self.statement("calendars.by_id")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_one(conn)
            .await?;
        st.done(1);
        Ok(rows::calendar(&row)?)
    }

    /// Creates a calendar owned by `owner` (who becomes its `owner` member).
    pub async fn create_calendar(
        &self,
        owner: UserId,
        name: &str,
        description: Option<&str>,
        time_zone: &str,
    ) -> Result<Calendar> {
        let mut tx = self.begin().await?;
        let st = self.statement("calendars.insert")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO calendars (owner_id, name, description, time_zone) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(owner.0)
        .bind(name)
        .bind(description)
        .bind(time_zone)
        .fetch_one(&mut *tx)
        .await
        .map_err(StorageError::from_db)?;
        st.done(1);
        let st = self.statement("calendar_members.insert_owner")?;
        sqlx::query(
            "INSERT INTO calendar_members (calendar_id, user_id, role) VALUES ($1, $2, 'owner')",
        )
        .bind(id)
        .bind(owner.0)
        .execute(&mut *tx)
        .await
        .map_err(StorageError::from_db)?;
        st.done(1);
        // A new calendar may have been cached as missing.
        tx.changes.calendars.push((CalendarId(id), 1));
        self.outbox(
            &mut tx,
            "calendar",
            id,
            "calendar.created",
            json!({ "owner_id": owner.0 }),
        )
        .await?;
        let cal = self.calendar_in(&mut tx, CalendarId(id)).await?;
        self.commit(tx).await?;
        Ok(cal)
    }

    /// Gives `user` `role` on a calendar (or changes it). The owner's own row cannot be changed here.
    pub async fn share_calendar(
        &self,
        calendar: CalendarId,
        user: UserId,
        role: Role,
    ) -> Result<Calendar> {
        if role == Role::Owner {
            return Err(StorageError::Invalid(
                "a calendar has exactly one owner".into(),
            ));
        }
        let mut tx = self.begin().await?;
        self.touch_calendar(&mut tx, calendar).await?;
        let st = self.statement("calendar_members.upsert")?;
        let changed = sqlx::query(
            "INSERT INTO calendar_members (calendar_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (calendar_id, user_id) DO UPDATE SET role = EXCLUDED.role \
             WHERE calendar_members.role <> 'owner'",
        )
        .bind(calendar.0)
        .bind(user.0)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await
        .map_err(StorageError::from_db)?
        .rows_affected();
        st.done(0);
        if changed == 0 {
            return Err(StorageError::Invalid(
                "the owner's role cannot be changed".into(),
            ));
        }
        self.outbox(
            &mut tx,
            "calendar",
            calendar.0,
            "calendar.shared",
            json!({ "user_id": user.0, "role": role.as_str() }),
        )
        .await?;
        let cal = self.calendar_in(&mut tx, calendar).await?;
        self.commit(tx).await?;
        Ok(cal)
    }

    /// Removes `user`'s membership (never the owner's). Returns whether a membership was removed.
    pub async fn unshare_calendar(&self, calendar: CalendarId, user: UserId) -> Result<bool> {
        let mut tx = self.begin().await?;
        self.touch_calendar(&mut tx, calendar).await?;
        let st = self.statement("calendar_members.delete")?;
        let removed = sqlx::query("DELETE FROM calendar_members WHERE calendar_id = $1 AND user_id = $2 AND role <> 'owner'")
            .bind(calendar.0)
            .bind(user.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        st.done(0);
        if removed > 0 {
            self.outbox(
                &mut tx,
                "calendar",
                calendar.0,
                "calendar.unshared",
                json!({ "user_id": user.0 }),
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(removed > 0)
    }

    /// Locks a live event, checks `expected` against its version and bumps it. Every event write starts here.
    async fn bump_event(
        &self,
        tx: &mut WriteTx,
        id: EventId,
        expected: Option<i64>,
    ) -> Result<Event> {
        let ev = self.bump_event_row(tx, id, expected).await?;
        self.record_event(tx, &ev).await?;
        Ok(ev)
    }

    async fn bump_event_row(
        &self,
        conn: &mut PgConnection,
        id: EventId,
        expected: Option<i64>,
    ) -> Result<Event> {
        let sql = format!(
            "UPDATE events SET version = version + 1, updated_at = now() \
             WHERE id = $1 AND deleted_at IS NULL AND ($2::bigint IS NULL OR version = $2) RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.bump_version")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.0)
            .bind(expected)
            .fetch_optional(&mut *conn)
            .await?;
        st.done(row.is_some() as usize);
        match row {
            Some(r) => Ok(rows::event(&r)?),
            None => Err(self.why_not_updated(conn, id, expected).await?),
        }
    }

    async fn why_not_updated(
        &self,
        conn: &mut PgConnection,
        id: EventId,
        expected: Option<i64>,
    ) -> Result<StorageError> {
        let st = self.statement("events.current_version")?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT version FROM events WHERE id = $1 AND deleted_at IS NULL")
                .bind(id.0)
                .fetch_optional(conn)
                .await?;
        st.done(current.is_some() as usize);
        Ok(match (current, expected) {
            (Some(current), Some(expected)) => StorageError::VersionConflict { expected, current },
            _ => StorageError::NotFound,
        })
    }

    async fn insert_attendees(
        &self,
        conn: &mut PgConnection,
        event: EventId,
        attendees: &[NewAttendee],
    ) -> Result<()> {
        if attendees.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = attendees.iter().map(|a| a.user_id.0).collect();
        let optional: Vec<bool> = attendees.iter().map(|a| a.is_optional).collect();
        let st = self.statement("attendees.insert")?;
        let n = sqlx::query(
            "INSERT INTO attendees (event_id, user_id, email, name, is_optional) \
             SELECT $1, u.id, u.email, u.name, x.optional \
             FROM unnest($2::bigint[], $3::boolean[]) AS x(user_id, optional) JOIN users u ON u.id = x.user_id \
             ON CONFLICT (event_id, user_id) DO UPDATE SET is_optional = EXCLUDED.is_optional, updated_at = now()",
        )
        .bind(event.0)
        .bind(&ids)
        .bind(&optional)
        .execute(conn)
        .await
        .map_err(StorageError::from_db)?
        .rows_affected();
        st.done(0);
        if n as usize != ids.len() {
            return Err(StorageError::Invalid("unknown user among attendees".into()));
        }
        Ok(())
    }

    /// Inserts confirmed reservations. An overlap surfaces as [`StorageError::ResourceConflict`]
    /// naming the reservations it collides with (looked up after the transaction is gone).
    async fn insert_reservations(
        &self,
        conn: &mut PgConnection,
        event: &Event,
        wanted: &[NewReservation],
    ) -> std::result::Result<Vec<Reservation>, InsertReservationError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let (res, starts, ends) = reservation_arrays(event, wanted);
        let sql = format!(
            "INSERT INTO reservations (event_id, resource_id, start_time, end_time) \
             SELECT $1, x.r, x.s, x.e FROM unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[]) AS x(r, s, e) \
             RETURNING {RESERVATION_COLS}"
        );
        let st = self
            .statement("reservations.insert")
            .map_err(InsertReservationError::Other)?;
        let result = sqlx::query(AssertSqlSafe(sql))
            .bind(event.id.0)
            .bind(&res)
            .bind(&starts)
            .bind(&ends)
            .fetch_all(conn)
            .await;
        match result {
            Ok(rows) => {
                st.done(rows.len());
                rows.iter()
                    .map(|r| {
                        rows::reservation(r).map_err(|e| InsertReservationError::Other(e.into()))
                    })
                    .collect()
            }
            Err(e) if StorageError::is_overlap(&e) => {
                st.done(0);
                Err(InsertReservationError::Overlap(res, starts, ends))
            }
            Err(e) => {
                st.done(0);
                Err(InsertReservationError::Other(StorageError::from_db(e)))
            }
        }
    }

    /// Confirmed reservations (of other events) overlapping the given (resource, start, end) triples.
    async fn conflicts(
        &self,
        event: Option<EventId>,
        res: &[i64],
        starts: &[DateTime<Utc>],
        ends: &[DateTime<Utc>],
    ) -> Result<Vec<Conflict>> {
        let st = self.statement("reservations.conflicts")?;
        let rows = sqlx::query(
            "SELECT DISTINCT r.resource_id, r.event_id, r.start_time, r.end_time FROM reservations r \
             JOIN unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) AS x(r, s, e) \
               ON r.resource_id = x.r AND r.start_time < x.e AND r.end_time > x.s \
             WHERE r.status = 'confirmed' AND ($4::bigint IS NULL OR r.event_id <> $4) \
             ORDER BY r.start_time, r.resource_id",
        )
        .bind(res)
        .bind(starts)
        .bind(ends)
        .bind(event.map(|e| e.0))
        .fetch_all(self.pool())
        .await?;
        st.done(rows.len());
        rows.iter()
            .map(|r| {
                Ok(Conflict {
                    resource_id: ResourceId(r.try_get("resource_id")?),
                    event_id: EventId(r.try_get("event_id")?),
                    start_time: r.try_get("start_time")?,
                    end_time: r.try_get("end_time")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(StorageError::Database)
    }

    /// Turns a failed reservation insert into the error to return, rolling back first.
    async fn fail(
        &self,
        tx: WriteTx,
        event: Option<EventId>,
        e: InsertReservationError,
    ) -> StorageError {
        drop(tx); // rolls back
        match e {
            InsertReservationError::Other(e) => e,
            InsertReservationError::MoveOverlap(m) => {
                // The transaction is gone; the bookings are still where they were.
                let st = match self.statement("reservations.move_conflicts") {
                    Ok(st) => st,
                    Err(e) => return e,
                };
                let wanted = sqlx::query(
                    "SELECT resource_id, start_time + $2 * interval '1 microsecond' AS s, \
                            start_time + ($2 + $3) * interval '1 microsecond' AS e \
                     FROM reservations WHERE event_id = $1 AND status = 'confirmed' \
                       AND ($4::timestamptz IS NULL OR start_time >= $4) AND ($5::timestamptz IS NULL OR start_time < $5)",
                )
                .bind(m.from.0)
                .bind(micros(m.shift))
                .bind(micros(m.duration))
                .bind(m.range_start)
                .bind(m.range_end)
                .fetch_all(self.pool())
                .await;
                let wanted = match wanted {
                    Ok(rows) => rows,
                    Err(e) => return e.into(),
                };
                st.done(wanted.len());
                let mut res = Vec::new();
                let mut starts = Vec::new();
                let mut ends = Vec::new();
                for r in &wanted {
                    res.push(r.get::<i64, _>("resource_id"));
                    starts.push(r.get::<DateTime<Utc>, _>("s"));
                    ends.push(r.get::<DateTime<Utc>, _>("e"));
                }
                match self.conflicts(Some(m.from), &res, &starts, &ends).await {
                    Ok(c) => StorageError::ResourceConflict(
                        c.into_iter().filter(|c| c.event_id != m.to).collect(),
                    ),
                    Err(e) => e,
                }
            }
            InsertReservationError::Overlap(res, starts, ends) => {
                match self.conflicts(event, &res, &starts, &ends).await {
                    Ok(c) => StorageError::ResourceConflict(c),
                    Err(e) => e,
                }
            }
        }
    }

    /// Inserts an event row (no attendees, no bookings) and records the change.
    async fn insert_event(&self, tx: &mut WriteTx, new: &NewEvent) -> Result<Event> {
        let sql = format!(
            "INSERT INTO events (calendar_id, organizer_id, title, description, location, start_time, end_time, \
               time_zone, all_day, status, transparency, rrule, series_end) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.insert")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(new.calendar_id.0)
            .bind(new.organizer_id.0)
            .bind(&new.title)
            .bind(&new.description)
            .bind(&new.location)
            .bind(new.start_time)
            .bind(new.end_time)
            .bind(&new.time_zone)
            .bind(new.all_day)
            .bind(new.status.as_str())
            .bind(new.transparency.as_str())
            .bind(&new.rrule)
            .bind(new.series_end)
            .fetch_one(&mut **tx)
            .await
            .map_err(StorageError::from_db)?;
        st.done(1);
        let event = rows::event(&row)?;
        self.record_event(tx, &event).await?;
        Ok(event)
    }

    /// Soft-deletes the live overrides of `series` (only the one of `original_start` if given),
    /// bumping and recording each; returns their ids.
    async fn delete_overrides(
        &self,
        tx: &mut WriteTx,
        series: EventId,
        original_start: Option<DateTime<Utc>>,
    ) -> Result<Vec<i64>> {
        let sql = format!(
            "UPDATE events SET deleted_at = now(), version = version + 1, updated_at = now() \
             WHERE recurring_event_id = $1 AND ($2::timestamptz IS NULL OR original_start_time = $2) \
               AND deleted_at IS NULL RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.delete_overrides")?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(series.0)
            .bind(original_start)
            .fetch_all(&mut **tx)
            .await?;
        st.done(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            let o = rows::event(r)?;
            ids.push(o.id.0);
            self.record_event(tx, &o).await?;
        }
        Ok(ids)
    }

    /// Copies the attendees (and their answers) of one event to another.
    async fn copy_attendees(
        &self,
        conn: &mut PgConnection,
        from: EventId,
        to: EventId,
    ) -> Result<()> {
        let st = self.statement("attendees.copy")?;
        sqlx::query(
            "INSERT INTO attendees (event_id, user_id, email, name, response_status, is_optional) \
             SELECT $2, user_id, email, name, response_status, is_optional FROM attendees WHERE event_id = $1",
        )
        .bind(from.0)
        .bind(to.0)
        .execute(conn)
        .await?;
        st.done(0);
        Ok(())
    }

    /// Creates an event with its attendees and reservations, atomically.
    pub async fn create_event(&self, new: &NewEvent) -> Result<Event> {
        let mut tx = self.begin().await?;
        let event = self.insert_event(&mut tx, new).await?;
        self.insert_attendees(&mut tx, event.id, &new.attendees)
            .await?;
        if let Err(e) = self
            .insert_reservations(&mut tx, &event, &new.reservations)
            .await
        {
            return Err(self.fail(tx, None, e).await);
        }
        self.outbox(
            &mut tx,
            "event",
            event.id.0,
            "event.created",
            event_payload(None, &event),
        )
        .await?;
        self.commit(tx).await?;
        Ok(event)
    }

    /// Applies `patch` to one row (already locked and bumped by [`Store::bump_event`]).
    async fn apply_patch(
        &self,
        conn: &mut PgConnection,
        id: EventId,
        patch: &EventPatch,
    ) -> Result<Event> {
        let sql = format!(
            "UPDATE events SET \
               title = coalesce($2, title), \
               description = CASE WHEN $3 THEN $4 ELSE description END, \
               location = CASE WHEN $5 THEN $6 ELSE location END, \
               start_time = coalesce($7, start_time), end_time = coalesce($8, end_time), \
               time_zone = coalesce($9, time_zone), all_day = coalesce($10, all_day), \
               status = coalesce($11, status), transparency = coalesce($12, transparency), \
               rrule = CASE WHEN $13 THEN $14 ELSE rrule END, \
               series_end = CASE WHEN $15 THEN $16 ELSE series_end END \
             WHERE id = $1 RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.patch")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.0)
            .bind(&patch.title)
            .bind(patch.description.is_some())
            .bind(patch.description.clone().flatten())
            .bind(patch.location.is_some())
            .bind(patch.location.clone().flatten())
            .bind(patch.start_time)
            .bind(patch.end_time)
            .bind(&patch.time_zone)
            .bind(patch.all_day)
            .bind(patch.status.map(|s| s.as_str()))
            .bind(patch.transparency.map(|s| s.as_str()))
            .bind(patch.rrule.is_some())
            .bind(patch.rrule.clone().flatten())
            .bind(patch.series_end.is_some())
            .bind(patch.series_end.flatten())
            .fetch_one(conn)
            .await
            .map_err(StorageError::from_db)?;
        st.done(1);
        Ok(rows::event(&row)?)
    }

    /// Applies `patch` if the event is at `expected_version`. Moving the event moves its confirmed
    /// reservations with it (and fails with a resource conflict if the new slot is taken).
    pub async fn update_event(
        &self,
        id: EventId,
        expected_version: i64,
        patch: &EventPatch,
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let before = self.bump_event(&mut tx, id, Some(expected_version)).await?;
        let after = self.apply_patch(&mut tx, id, patch).await?;
        if (after.start_time, after.end_time) != (before.start_time, before.end_time) {
            // A single event's bookings follow it; a series' per-occurrence bookings shift by the
            // same amount as its first occurrence.
            let moved = Move::all(
                id,
                id,
                after.start_time - before.start_time,
                after.end_time - after.start_time,
            );
            if let Err(e) = self.move_reservations(&mut tx, &moved).await {
                return Err(self.fail(tx, Some(id), e).await);
            }
        }
        self.outbox(
            &mut tx,
            "event",
            id.0,
            "event.updated",
            event_payload(Some(&before), &after),
        )
        .await?;
        self.commit(tx).await?;
        Ok(after)
    }

    /// Soft-deletes an event and releases its reservations.
    pub async fn delete_event(&self, id: EventId, expected_version: Option<i64>) -> Result<Event> {
        let mut tx = self.begin().await?;
        let before = self.bump_event(&mut tx, id, expected_version).await?;
        let st = self.statement("events.soft_delete")?;
        sqlx::query("UPDATE events SET deleted_at = now() WHERE id = $1")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        st.done(0);
        // A series goes with its overrides (each a changed fact of its own).
        self.delete_overrides(&mut tx, id, None).await?;
        let st = self.statement("reservations.cancel_of_event")?;
        sqlx::query(
            "UPDATE reservations SET status = 'cancelled', updated_at = now() WHERE status = 'confirmed' \
             AND event_id IN (SELECT id FROM events WHERE id = $1 OR recurring_event_id = $1)",
        )
        .bind(id.0)
        .execute(&mut *tx)
        .await?;
        st.done(0);
        self.outbox(
            &mut tx,
            "event",
            id.0,
            "event.deleted",
            event_payload(Some(&before), &before),
        )
        .await?;
        self.commit(tx).await?;
        Ok(before)
    }

    /// Sets `user`'s response on an event they are invited to.
    pub async fn respond(
        &self,
        event: EventId,
        user: UserId,
        status: ResponseStatus,
    ) -> Result<(Event, Attendee)> {
        let mut tx = self.begin().await?;
        let ev = self.bump_event(&mut tx, event, None).await?;
        let sql = format!(
            "UPDATE attendees SET response_status = $3, updated_at = now() WHERE event_id = $1 AND user_id = $2 \
             RETURNING {ATTENDEE_COLS}"
        );
        let st = self.statement("attendees.respond")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(event.0)
            .bind(user.0)
            .bind(status.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        st.done(row.is_some() as usize);
        let Some(row) = row else {
            return Err(StorageError::NotFound);
        };
        let attendee = rows::attendee(&row)?;
        self.outbox(
            &mut tx,
            "event",
            event.0,
            "event.rsvp",
            json!({ "calendar_id": ev.calendar_id.0, "version": ev.version, "user_id": user.0, "response": status.as_str() }),
        )
        .await?;
        self.commit(tx).await?;
        Ok((ev, attendee))
    }

    pub async fn add_attendees(
        &self,
        event: EventId,
        expected: Option<i64>,
        attendees: &[NewAttendee],
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let ev = self.bump_event(&mut tx, event, expected).await?;
        self.insert_attendees(&mut tx, event, attendees).await?;
        self.outbox(
            &mut tx,
            "event",
            event.0,
            "event.attendees_added",
            event_payload(Some(&ev), &ev),
        )
        .await?;
        self.commit(tx).await?;
        Ok(ev)
    }

    /// Removes an attendee. `NotFound` when the user was not invited.
    pub async fn remove_attendee(
        &self,
        event: EventId,
        expected: Option<i64>,
        user: UserId,
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let ev = self.bump_event(&mut tx, event, expected).await?;
        let st = self.statement("attendees.delete")?;
        let n = sqlx::query("DELETE FROM attendees WHERE event_id = $1 AND user_id = $2")
            .bind(event.0)
            .bind(user.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        st.done(0);
        if n == 0 {
            return Err(StorageError::NotFound);
        }
        self.outbox(
            &mut tx,
            "event",
            event.0,
            "event.attendee_removed",
            event_payload(Some(&ev), &ev),
        )
        .await?;
        self.commit(tx).await?;
        Ok(ev)
    }

    /// Books resources for an event, all or nothing (each booking at the event's times unless given;
    /// a series passes one booking per occurrence in its horizon).
    pub async fn reserve(
        &self,
        event: EventId,
        expected: Option<i64>,
        wanted: &[NewReservation],
    ) -> Result<Vec<Reservation>> {
        let mut tx = self.begin().await?;
        let ev = self.bump_event(&mut tx, event, expected).await?;
        let inserted = match self.insert_reservations(&mut tx, &ev, wanted).await {
            Ok(v) => v,
            Err(e) => return Err(self.fail(tx, Some(event), e).await),
        };
        let reservation = inserted.first().cloned().ok_or(StorageError::NotFound)?;
        self.outbox(
            &mut tx,
            "event",
            event.0,
            "event.reserved",
            json!({ "calendar_id": ev.calendar_id.0, "version": ev.version, "reservation_id": reservation.id.0,
                    "resource_id": reservation.resource_id.0 }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(inserted)
    }

    /// Cancels a confirmed reservation. `NotFound` when it does not exist or is already cancelled.
    pub async fn cancel_reservation(&self, id: ReservationId) -> Result<Reservation> {
        let mut tx = self.begin().await?;
        let st = self.statement("reservations.event_of")?;
        let event: Option<i64> = sqlx::query_scalar(
            "SELECT event_id FROM reservations WHERE id = $1 AND status = 'confirmed'",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        st.done(event.is_some() as usize);
        let Some(event) = event else {
            return Err(StorageError::NotFound);
        };
        let ev = self.bump_event(&mut tx, EventId(event), None).await?;
        let sql = format!(
            "UPDATE reservations SET status = 'cancelled', updated_at = now() WHERE id = $1 RETURNING {RESERVATION_COLS}"
        );
        let st = self.statement("reservations.cancel")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await?;
        st.done(1);
        let reservation = rows::reservation(&row)?;
        self.outbox(
            &mut tx,
            "event",
            event,
            "event.reservation_cancelled",
            json!({ "calendar_id": ev.calendar_id.0, "version": ev.version, "reservation_id": id.0,
                    "resource_id": reservation.resource_id.0 }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(reservation)
    }

    /// Moves bookings as `m` says. Overlaps come back as [`InsertReservationError::MoveOverlap`].
    async fn move_reservations(
        &self,
        conn: &mut PgConnection,
        m: &Move,
    ) -> std::result::Result<(), InsertReservationError> {
        let st = self
            .statement("reservations.move")
            .map_err(InsertReservationError::Other)?;
        let r = sqlx::query(
            "UPDATE reservations SET event_id = $2, \
               start_time = start_time + $3 * interval '1 microsecond', \
               end_time = start_time + ($3 + $4) * interval '1 microsecond', updated_at = now() \
             WHERE event_id = $1 AND status = 'confirmed' \
               AND ($5::timestamptz IS NULL OR start_time >= $5) AND ($6::timestamptz IS NULL OR start_time < $6)",
        )
        .bind(m.from.0)
        .bind(m.to.0)
        .bind(micros(m.shift))
        .bind(micros(m.duration))
        .bind(m.range_start)
        .bind(m.range_end)
        .execute(conn)
        .await;
        st.done(0);
        match r {
            Ok(_) => Ok(()),
            Err(e) if StorageError::is_overlap(&e) => Err(InsertReservationError::MoveOverlap(*m)),
            Err(e) => Err(InsertReservationError::Other(StorageError::from_db(e))),
        }
    }

    /// The override row of one occurrence of `series`, if there is one (deleted ones included, so
    /// the caller can tell "removed" from "never touched").
    pub async fn override_of(
        &self,
        series: EventId,
        original_start: DateTime<Utc>,
    ) -> Result<Option<(Event, bool)>> {
        let sql = format!(
            "SELECT {EVENT_COLS}, deleted_at IS NOT NULL AS deleted FROM events \
             WHERE recurring_event_id = $1 AND original_start_time = $2"
        );
        let st = self.statement("events.override_of")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(series.0)
            .bind(original_start)
            .fetch_optional(self.pool())
            .await?;
        st.done(row.is_some() as usize);
        match row {
            Some(r) => Ok(Some((rows::event(&r)?, r.try_get("deleted")?))),
            None => Ok(None),
        }
    }

    /// Removes one occurrence of a series: its original start joins the master's EXDATEs (checked
    /// against `expected` on the master), an override of it is deleted, its bookings are released.
    pub async fn delete_instance(
        &self,
        series: EventId,
        original_start: DateTime<Utc>,
        occurrence_end: DateTime<Utc>,
        expected: Option<i64>,
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let after = self
            .remove_instance(&mut tx, series, original_start, occurrence_end, expected)
            .await?;
        self.commit(tx).await?;
        Ok(after)
    }

    /// The body of [`Store::delete_instance`], inside the caller's transaction.
    async fn remove_instance(
        &self,
        tx: &mut WriteTx,
        series: EventId,
        original_start: DateTime<Utc>,
        occurrence_end: DateTime<Utc>,
        expected: Option<i64>,
    ) -> Result<Event> {
        let before = self.bump_event(tx, series, expected).await?;
        let sql = format!(
            "UPDATE events SET exdates = CASE WHEN $2 = ANY(exdates) THEN exdates ELSE array_append(exdates, $2) END \
             WHERE id = $1 RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.add_exdate")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(series.0)
            .bind(original_start)
            .fetch_one(&mut **tx)
            .await?;
        st.done(1);
        let after = rows::event(&row)?;
        let overrides = self
            .delete_overrides(tx, series, Some(original_start))
            .await?;
        let st = self.statement("reservations.cancel_of_instance")?;
        sqlx::query(
            "UPDATE reservations SET status = 'cancelled', updated_at = now() WHERE status = 'confirmed' \
               AND ((event_id = $1 AND start_time < $3 AND end_time > $2) OR event_id = ANY($4))",
        )
        .bind(series.0)
        .bind(original_start)
        .bind(occurrence_end)
        .bind(&overrides)
        .execute(&mut **tx)
        .await?;
        st.done(0);
        self.outbox(
            tx,
            "event",
            series.0,
            "event.instance_deleted",
            event_payload(Some(&before), &after),
        )
        .await?;
        Ok(after)
    }

    /// Deletes an override row, checking `expected` against the override itself in the same
    /// statement that locks it (compare-and-set: of two writers holding the same version, exactly
    /// one wins, the other gets [`StorageError::VersionConflict`]), then removes its occurrence
    /// from the series like [`Store::delete_instance`].
    pub async fn delete_override(&self, id: EventId, expected: Option<i64>) -> Result<Event> {
        let mut tx = self.begin().await?;
        let row = match self.bump_event_row(&mut tx, id, expected).await {
            Ok(row) => row,
            // Deleted in the meantime by a writer that held the same version: to this writer
            // it is a change it did not see, not a missing row.
            Err(StorageError::NotFound) if expected.is_some() => {
                return Err(self.deleted_under(&mut tx, id, expected).await?);
            }
            Err(e) => return Err(e),
        };
        let (Some(series), Some(original)) = (row.recurring_event_id, row.original_start_time)
        else {
            return Err(StorageError::NotFound);
        };
        let after = self
            .remove_instance(&mut tx, series, original, row.end_time, None)
            .await?;
        self.commit(tx).await?;
        Ok(after)
    }

    /// Why a delete with `expected` found no live row: a conflict if the row exists (deleted at
    /// another version), otherwise not found.
    async fn deleted_under(
        &self,
        conn: &mut PgConnection,
        id: EventId,
        expected: Option<i64>,
    ) -> Result<StorageError> {
        let st = self.statement("events.version_any")?;
        let current: Option<i64> = sqlx::query_scalar("SELECT version FROM events WHERE id = $1")
            .bind(id.0)
            .fetch_optional(conn)
            .await?;
        st.done(current.is_some() as usize);
        Ok(match (current, expected) {
            (Some(current), Some(expected)) if current != expected => {
                StorageError::VersionConflict { expected, current }
            }
            _ => StorageError::NotFound,
        })
    }

    /// Turns one generated occurrence into an override row (copying the master's fields, attendees
    /// and that occurrence's bookings) and applies `patch` to it. `expected` is checked against the
    /// master, whose version the occurrence carries.
    pub async fn override_instance(
        &self,
        series: EventId,
        original_start: DateTime<Utc>,
        occurrence_end: DateTime<Utc>,
        expected: Option<i64>,
        patch: &EventPatch,
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let master = self.bump_event(&mut tx, series, expected).await?;
        let st = self.statement("events.insert_override")?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO events (calendar_id, organizer_id, title, description, location, start_time, end_time, \
               time_zone, all_day, status, transparency, recurring_event_id, original_start_time, version) \
             SELECT calendar_id, organizer_id, title, description, location, $2, $3, time_zone, all_day, status, \
               transparency, id, $2, version FROM events WHERE id = $1 RETURNING id",
        )
        .bind(series.0)
        .bind(original_start)
        .bind(occurrence_end)
        .fetch_one(&mut *tx)
        .await
        .map_err(StorageError::from_db)?;
        st.done(1);
        let id = EventId(id);
        self.copy_attendees(&mut tx, series, id).await?;
        let after = self.apply_patch(&mut tx, id, patch).await?;
        let moved = Move::all(
            series,
            id,
            after.start_time - original_start,
            after.end_time - after.start_time,
        )
        .within(original_start, Some(occurrence_end));
        if let Err(e) = self.move_reservations(&mut tx, &moved).await {
            return Err(self.fail(tx, Some(series), e).await);
        }
        let mut payload = event_payload(None, &after);
        payload["series_id"] = json!(series.0);
        payload["series_version"] = json!(master.version);
        self.outbox(&mut tx, "event", id.0, "event.instance_overridden", payload)
            .await?;
        self.commit(tx).await?;
        Ok(after)
    }

    /// "This and following": the series ends before the occurrence at `split_at` (its rule becomes
    /// `truncated_rule`, ending at `truncated_end`), and a new series starts there with
    /// `new_series` (rule, times, fields). Attendees are copied; later overrides and bookings move
    /// to the new series, bookings shifted like the occurrence was.
    pub async fn split_series(
        &self,
        series: EventId,
        expected: Option<i64>,
        split_at: DateTime<Utc>,
        truncated_rule: &str,
        truncated_end: Option<DateTime<Utc>>,
        new_series: &NewEvent,
    ) -> Result<Event> {
        let mut tx = self.begin().await?;
        let before = self.bump_event(&mut tx, series, expected).await?;
        let st = self.statement("events.truncate_series")?;
        sqlx::query("UPDATE events SET rrule = $2, series_end = $3 WHERE id = $1")
            .bind(series.0)
            .bind(truncated_rule)
            .bind(truncated_end)
            .execute(&mut *tx)
            .await
            .map_err(StorageError::from_db)?;
        st.done(0);
        let created = self.insert_event(&mut tx, new_series).await?;
        self.copy_attendees(&mut tx, series, created.id).await?;
        let st = self.statement("events.reparent_overrides")?;
        sqlx::query(
            "UPDATE events SET recurring_event_id = $2, updated_at = now() \
             WHERE recurring_event_id = $1 AND original_start_time >= $3",
        )
        .bind(series.0)
        .bind(created.id.0)
        .bind(split_at)
        .execute(&mut *tx)
        .await
        .map_err(StorageError::from_db)?;
        st.done(0);
        let moved = Move::all(
            series,
            created.id,
            created.start_time - split_at,
            created.end_time - created.start_time,
        )
        .within(split_at, None);
        if let Err(e) = self.move_reservations(&mut tx, &moved).await {
            return Err(self.fail(tx, Some(series), e).await);
        }
        self.outbox(
            &mut tx,
            "event",
            series.0,
            "event.series_split",
            event_payload(Some(&before), &created),
        )
        .await?;
        self.commit(tx).await?;
        Ok(created)
    }
}

pub(crate) enum InsertReservationError {
    Overlap(Vec<i64>, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>),
    /// Moving the bookings described by the [`Move`] would overlap others.
    MoveOverlap(Move),
    Other(StorageError),
}

/// Bookings of `from` whose start lies in `[range_start, range_end)` move to `to`, shifted by
/// `shift`, each lasting `duration`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Move {
    from: EventId,
    to: EventId,
    shift: chrono::Duration,
    duration: chrono::Duration,
    range_start: Option<DateTime<Utc>>,
    range_end: Option<DateTime<Utc>>,
}

impl Move {
    /// Every booking of `from`.
    pub(crate) fn all(
        from: EventId,
        to: EventId,
        shift: chrono::Duration,
        duration: chrono::Duration,
    ) -> Self {
        Self {
            from,
            to,
            shift,
            duration,
            range_start: None,
            range_end: None,
        }
    }

    fn within(mut self, start: DateTime<Utc>, end: Option<DateTime<Utc>>) -> Self {
        self.range_start = Some(start);
        self.range_end = end;
        self
    }
}

fn micros(d: chrono::Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

fn reservation_arrays(
    event: &Event,
    wanted: &[NewReservation],
) -> (Vec<i64>, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let res = wanted.iter().map(|w| w.resource_id.0).collect();
    let starts = wanted
        .iter()
        .map(|w| w.start_time.unwrap_or(event.start_time))
        .collect();
    let ends = wanted
        .iter()
        .map(|w| w.end_time.unwrap_or(event.end_time))
        .collect();
    (res, starts, ends)
}

/// What an event change touched: enough for a consumer to work out which cached facts to drop
/// (both the old and the new time span, for month buckets).
fn event_payload(before: Option<&Event>, after: &Event) -> serde_json::Value {
    json!({
        "calendar_id": after.calendar_id.0,
        "version": after.version,
        "old_start": before.map(|b| b.start_time),
        "old_end": before.map(|b| b.end_time),
        "start": after.start_time,
        "end": after.end_time,
        "recurring": after.rrule.is_some() || before.is_some_and(|b| b.rrule.is_some()),
    })
}
