//! Single events and their attendees: creating, patching and deleting an event, answering an
//! invitation, adding and removing attendees. Every event write starts by locking and bumping the
//! event ([`Store::bump_event`]), series edits included.

use super::{EventPatch, Move, NewAttendee, NewEvent, Result, WriteTx, event_payload};
use crate::rows::{self, *};
use crate::{StorageError, Store};
use cal_domain::*;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection};

impl Store {
    /// Locks a live event, checks `expected` against its version and bumps it. Every event write starts here.
    pub(super) async fn bump_event(
        &self,
        tx: &mut WriteTx,
        id: EventId,
        expected: Option<i64>,
    ) -> Result<Event> {
        let ev = self.bump_event_row(tx, id, expected).await?;
        self.record_event(tx, &ev).await?;
        Ok(ev)
    }

    pub(super) async fn bump_event_row(
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
            .bind(id.get())
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
                .bind(id.get())
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
        let ids: Vec<i64> = attendees.iter().map(|a| a.user_id.get()).collect();
        let optional: Vec<bool> = attendees.iter().map(|a| a.is_optional).collect();
        let st = self.statement("attendees.insert")?;
        let n = sqlx::query(
            "INSERT INTO attendees (event_id, user_id, email, name, is_optional) \
             SELECT $1, u.id, u.email, u.name, x.optional \
             FROM unnest($2::bigint[], $3::boolean[]) AS x(user_id, optional) JOIN users u ON u.id = x.user_id \
             ON CONFLICT (event_id, user_id) DO UPDATE SET is_optional = EXCLUDED.is_optional, updated_at = now()",
        )
        .bind(event.get())
        .bind(&ids)
        .bind(&optional)
        .execute(conn)
        .await?
        .rows_affected();
        st.done(0);
        if n as usize != ids.len() {
            return Err(StorageError::Invalid("unknown user among attendees".into()));
        }
        Ok(())
    }

    /// Inserts an event row (no attendees, no bookings) and records the change.
    pub(super) async fn insert_event(&self, tx: &mut WriteTx, new: &NewEvent) -> Result<Event> {
        let sql = format!(
            "INSERT INTO events (calendar_id, organizer_id, title, description, location, start_time, end_time, \
               time_zone, all_day, status, transparency, rrule, series_end) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING {EVENT_COLS}"
        );
        let st = self.statement("events.insert")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(new.calendar_id.get())
            .bind(new.organizer_id.get())
            .bind(new.title.as_str())
            .bind(new.description.as_ref().map(Description::as_str))
            .bind(new.location.as_ref().map(Location::as_str))
            .bind(new.start_time)
            .bind(new.end_time)
            .bind(&new.time_zone)
            .bind(new.all_day)
            .bind(new.status.as_str())
            .bind(new.transparency.as_str())
            .bind(&new.rrule)
            .bind(new.series_end)
            .fetch_one(&mut **tx)
            .await?;
        st.done(1);
        let event = rows::event(&row)?;
        self.record_event(tx, &event).await?;
        Ok(event)
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
            event.id.get(),
            "event.created",
            event_payload(None, &event),
        )
        .await?;
        self.commit(tx).await?;
        Ok(event)
    }

    /// Applies `patch` to one row (already locked and bumped by [`Store::bump_event`]).
    pub(super) async fn apply_patch(
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
            .bind(id.get())
            .bind(patch.title.as_ref().map(Title::as_str))
            .bind(patch.description.is_some())
            .bind(
                patch
                    .description
                    .as_ref()
                    .and_then(Option::as_ref)
                    .map(Description::as_str),
            )
            .bind(patch.location.is_some())
            .bind(
                patch
                    .location
                    .as_ref()
                    .and_then(Option::as_ref)
                    .map(Location::as_str),
            )
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
            .await?;
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
            id.get(),
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
            .bind(id.get())
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
        .bind(id.get())
        .execute(&mut *tx)
        .await?;
        st.done(0);
        self.outbox(
            &mut tx,
            "event",
            id.get(),
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
            .bind(event.get())
            .bind(user.get())
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
            event.get(),
            "event.rsvp",
            json!({ "calendar_id": ev.calendar_id.get(), "version": ev.version, "user_id": user.get(), "response": status.as_str() }),
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
            event.get(),
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
            .bind(event.get())
            .bind(user.get())
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
            event.get(),
            "event.attendee_removed",
            event_payload(Some(&ev), &ev),
        )
        .await?;
        self.commit(tx).await?;
        Ok(ev)
    }
}
