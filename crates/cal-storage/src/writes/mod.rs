//! Transactional writes. Each one runs in a single transaction that
//!
//! 1. locks and bumps the event's (or calendar's) `version` first, checking `expected_version`,
//!    and bumps the calendar's version (its cache generation);
//! 2. changes the rows;
//! 3. appends an outbox row describing the change (consumed by the invalidation relay).
//!
//! So a committed change always has its outbox row and a failed one leaves nothing behind. After
//! the commit, the change set goes to the store's [`crate::ChangeSink`] (cache invalidation).
//!
//! The transaction itself, its commit (with the change-log row) and the types the writes share
//! live here; the writes are grouped by what they change:
//!
//! - [`calendars`]: users, resources, calendars and their sharing;
//! - [`events`]: single events and their attendees;
//! - [`reservations`]: resource bookings;
//! - [`series`]: edits of recurring series (overrides, deleted occurrences, splits).

mod calendars;
mod events;
mod reservations;
mod series;

use crate::{ChangeSet, EventChange};
use crate::{StorageError, Store};
use cal_domain::*;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, Postgres, Transaction};

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
    pub title: Title,
    pub description: Option<Description>,
    pub location: Option<Location>,
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
    pub title: Option<Title>,
    pub description: Option<Option<Description>>,
    pub location: Option<Option<Location>>,
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
            // The row and, for incremental sync, one `event_changes` row per changed event: one
            // statement, so a write costs no extra round trip for sync.
            let (events, calendars): (Vec<i64>, Vec<i64>) = tx
                .changes
                .events
                .iter()
                .map(|c| (c.event.get(), c.calendar.get()))
                .unzip();
            let id: i64 = sqlx::query_scalar(
                "WITH row AS (INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, origin, created_at) \
                   VALUES ($1, $2, $3, $4, $5, clock_timestamp()) RETURNING id), \
                 changed AS (INSERT INTO event_changes (outbox_id, event_id, calendar_id) \
                   SELECT row.id, c.event, c.calendar FROM row, unnest($6::bigint[], $7::bigint[]) AS c(event, calendar)) \
                 SELECT id FROM row",
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
            .bind(&events)
            .bind(&calendars)
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
        let events: Vec<i64> = tx.changes.events.iter().map(|c| c.event.get()).collect();
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
            .map(|(id, v)| (cal_domain::ResourceId::new(id), v))
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
                .bind(calendar.get())
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

/// What an event change touched: enough for a consumer to work out which cached facts to drop
/// (both the old and the new time span, for month buckets).
fn event_payload(before: Option<&Event>, after: &Event) -> serde_json::Value {
    json!({
        "calendar_id": after.calendar_id.get(),
        "version": after.version,
        "old_start": before.map(|b| b.start_time),
        "old_end": before.map(|b| b.end_time),
        "start": after.start_time,
        "end": after.end_time,
        "recurring": after.rrule.is_some() || before.is_some_and(|b| b.rrule.is_some()),
    })
}
