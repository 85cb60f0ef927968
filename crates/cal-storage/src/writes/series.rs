//! Edits of recurring series: an occurrence's override row, deleting one occurrence or one
//! override, overriding an occurrence, and splitting a series ("this and following").

use super::{EventPatch, Move, NewEvent, Result, WriteTx, event_payload};
use crate::rows::{self, *};
use crate::{StorageError, Store};
use cal_domain::*;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection, Row};

impl Store {
    /// Soft-deletes the live overrides of `series` (only the one of `original_start` if given),
    /// bumping and recording each; returns their ids.
    pub(super) async fn delete_overrides(
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
            .bind(series.get())
            .bind(original_start)
            .fetch_all(&mut **tx)
            .await?;
        st.done(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        for r in &rows {
            let o = rows::event(r)?;
            ids.push(o.id.get());
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
        .bind(from.get())
        .bind(to.get())
        .execute(conn)
        .await?;
        st.done(0);
        Ok(())
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
            .bind(series.get())
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
            .bind(series.get())
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
        .bind(series.get())
        .bind(original_start)
        .bind(occurrence_end)
        .bind(&overrides)
        .execute(&mut **tx)
        .await?;
        st.done(0);
        self.outbox(
            tx,
            "event",
            series.get(),
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
            .bind(id.get())
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
        .bind(series.get())
        .bind(original_start)
        .bind(occurrence_end)
        .fetch_one(&mut *tx)
        .await?;
        st.done(1);
        let id = EventId::new(id);
        self.copy_attendees(&mut tx, series, id).await?;
        let after = self.apply_patch(&mut tx, id, patch).await?;
        // A new stored row: sync clients hear of it like of any other.
        self.record_event(&mut tx, &after).await?;
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
        payload["series_id"] = json!(series.get());
        payload["series_version"] = json!(master.version);
        self.outbox(
            &mut tx,
            "event",
            id.get(),
            "event.instance_overridden",
            payload,
        )
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
            .bind(series.get())
            .bind(truncated_rule)
            .bind(truncated_end)
            .execute(&mut *tx)
            .await?;
        st.done(0);
        let created = self.insert_event(&mut tx, new_series).await?;
        self.copy_attendees(&mut tx, series, created.id).await?;
        // Each moved override is a changed fact of its own (its series is another now): bumped
        // and recorded, so caches drop it and sync clients hear of it.
        let sql = format!(
            "UPDATE events SET recurring_event_id = $2, version = version + 1, updated_at = now() \
             WHERE recurring_event_id = $1 AND original_start_time >= $3 RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.reparent_overrides")?;
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(series.get())
            .bind(created.id.get())
            .bind(split_at)
            .fetch_all(&mut *tx)
            .await?;
        st.done(rows.len());
        for r in &rows {
            let moved = rows::event(r)?;
            self.record_event(&mut tx, &moved).await?;
        }
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
            series.get(),
            "event.series_split",
            event_payload(Some(&before), &created),
        )
        .await?;
        self.commit(tx).await?;
        Ok(created)
    }
}
