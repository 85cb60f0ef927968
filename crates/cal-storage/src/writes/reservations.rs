//! Resource bookings: booking resources for an event and cancelling a booking, and the helpers
//! the other writes use to insert bookings, move them with their event, and turn an overlap into
//! [`StorageError::ResourceConflict`].

use super::{Move, NewReservation, Result, WriteTx};
use crate::rows::{self, *};
use crate::{Conflict, StorageError, Store};
use cal_domain::*;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgConnection, Row};

impl Store {
    /// Inserts confirmed reservations. An overlap surfaces as [`StorageError::ResourceConflict`]
    /// naming the reservations it collides with (looked up after the transaction is gone).
    pub(super) async fn insert_reservations(
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
            .bind(event.id.get())
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
                Err(InsertReservationError::Other(e.into()))
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
        .bind(event.map(|e| e.get()))
        .fetch_all(self.pool())
        .await?;
        st.done(rows.len());
        rows.iter()
            .map(|r| {
                Ok(Conflict {
                    resource_id: ResourceId::new(r.try_get("resource_id")?),
                    event_id: EventId::new(r.try_get("event_id")?),
                    start_time: r.try_get("start_time")?,
                    end_time: r.try_get("end_time")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(StorageError::Database)
    }

    /// Turns a failed reservation insert into the error to return, rolling back first.
    pub(super) async fn fail(
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
                .bind(m.from.get())
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
            event.get(),
            "event.reserved",
            json!({ "calendar_id": ev.calendar_id.get(), "version": ev.version, "reservation_id": reservation.id.get(),
                    "resource_id": reservation.resource_id.get() }),
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
        .bind(id.get())
        .fetch_optional(&mut *tx)
        .await?;
        st.done(event.is_some() as usize);
        let Some(event) = event else {
            return Err(StorageError::NotFound);
        };
        let ev = self.bump_event(&mut tx, EventId::new(event), None).await?;
        let sql = format!(
            "UPDATE reservations SET status = 'cancelled', updated_at = now() WHERE id = $1 RETURNING {RESERVATION_COLS}"
        );
        let st = self.statement("reservations.cancel")?;
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.get())
            .fetch_one(&mut *tx)
            .await?;
        st.done(1);
        let reservation = rows::reservation(&row)?;
        self.outbox(
            &mut tx,
            "event",
            event,
            "event.reservation_cancelled",
            json!({ "calendar_id": ev.calendar_id.get(), "version": ev.version, "reservation_id": id.get(),
                    "resource_id": reservation.resource_id.get() }),
        )
        .await?;
        self.commit(tx).await?;
        Ok(reservation)
    }

    /// Moves bookings as `m` says. Overlaps come back as [`InsertReservationError::MoveOverlap`].
    pub(super) async fn move_reservations(
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
        .bind(m.from.get())
        .bind(m.to.get())
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
            Err(e) => Err(InsertReservationError::Other(e.into())),
        }
    }
}

pub(crate) enum InsertReservationError {
    Overlap(Vec<i64>, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>),
    /// Moving the bookings described by the [`Move`] would overlap others.
    MoveOverlap(Move),
    Other(StorageError),
}

fn micros(d: chrono::Duration) -> i64 {
    d.num_microseconds().unwrap_or(i64::MAX)
}

fn reservation_arrays(
    event: &Event,
    wanted: &[NewReservation],
) -> (Vec<i64>, Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) {
    let res = wanted.iter().map(|w| w.resource_id.get()).collect();
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
