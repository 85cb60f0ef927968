//! The change log (outbox) and the relay's side of it. Every write transaction appends one row
//! whose payload records what happened (`payload.changes`: aggregate, id, kind of change, the
//! time window it touches) and which facts moved to which version (`payload.changed`, a
//! [`ChangeSet`]), plus the instance that wrote it (`origin`). Cache keys are derived from it by
//! whoever reads it; this crate never knows them. A relay claims rows with [`Store::claim_outbox`] — its own
//! instance's rows at once, anybody's once they have waited longer than a grace period (their
//! writer died between commit and publish) — writes their L2 tombstones, publishes them in id
//! order and marks them with [`ClaimedOutbox::finish`]. Claimed rows stay locked (`FOR UPDATE SKIP LOCKED`) until then, so
//! two relays never publish the same row at the same time, and a relay that dies mid-way leaves
//! its rows to be claimed again: delivery is at least once, which invalidations tolerate.

use crate::{ChangeSet, StorageError, Store};
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Row, Transaction};
use std::time::Duration;

/// One unpublished outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    /// What the transaction changed (facts with their new versions, never cache keys), with
    /// `outbox_id` set to this row's id (a purge of everything's generation).
    pub changed: ChangeSet,
    /// `(key, new_version)` pairs, in rows written before the change log recorded facts only.
    pub legacy_keys: Vec<(String, i64)>,
    pub origin: Option<String>,
    /// When the row was written, right before its transaction committed.
    pub created_at: DateTime<Utc>,
    /// W3C trace context of the writing request, when it had one.
    pub trace_context: Vec<(String, String)>,
}

/// Rows claimed by one relay pass; they stay locked until [`ClaimedOutbox::finish`] or drop.
pub struct ClaimedOutbox {
    store: Store,
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<OutboxRow>,
}

impl Store {
    /// Locks up to `limit` unpublished rows with ids above `after`, oldest first: those written
    /// by `origin`, and any older than `grace`. Rows another relay holds are skipped.
    pub async fn claim_outbox(
        &self,
        origin: &str,
        grace: Duration,
        after: i64,
        limit: i64,
    ) -> Result<ClaimedOutbox, StorageError> {
        let st = self.statement("tx.begin")?;
        let mut tx = crate::pool::once_more_if_lost(|| self.pool().begin()).await?;
        st.done(0);
        let st = self.statement("outbox.claim")?;
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT id, payload, origin, created_at FROM outbox \
             WHERE published_at IS NULL AND id > $4 \
               AND (origin = $1 OR created_at < clock_timestamp() - make_interval(secs => $2::float8 / 1000)) \
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(origin)
        .bind(grace_ms as f64)
        .bind(limit)
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        st.done(rows.len());
        let rows = rows
            .iter()
            .map(|r| {
                let payload: serde_json::Value = r.try_get("payload")?;
                let id = r.try_get("id")?;
                let mut changed: ChangeSet =
                    serde_json::from_value(payload["changed"].clone()).unwrap_or_default();
                changed.outbox_id = Some(id);
                Ok(OutboxRow {
                    id,
                    changed,
                    legacy_keys: serde_json::from_value(payload["keys"].clone())
                        .unwrap_or_default(),
                    origin: r.try_get("origin")?,
                    created_at: r.try_get("created_at")?,
                    trace_context: serde_json::from_value(payload["trace"].clone())
                        .unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(ClaimedOutbox {
            store: self.clone(),
            tx,
            rows,
        })
    }

    /// Deletes up to `limit` published rows written more than `retention` ago, oldest first,
    /// and answers how many went. Unpublished rows are never pruned, whatever their age, nor are
    /// purges of everything (an instance starting later reads the newest one's generation). Rows
    /// another transaction holds are skipped, so a prune never waits for (or blocks) a writer
    /// or a relay: writers only insert new rows, relays lock unpublished ones.
    pub async fn prune_outbox(&self, retention: Duration, limit: i64) -> Result<u64, StorageError> {
        let st = self.statement("outbox.prune")?;
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        // The same statement moves the sync horizon past every pruned transaction, so no sync
        // token that could have missed a pruned row is ever honoured (`crate::sync`).
        let done: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
               WHERE published_at IS NOT NULL AND event_type <> 'purge.all' \
                 AND created_at < clock_timestamp() - make_interval(secs => $1::float8 / 1000) \
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING xid), \
             horizon AS (INSERT INTO change_log_horizon (pruned_xid) \
               SELECT max(xid) FROM gone HAVING count(*) > 0 \
               ON CONFLICT (only_row) DO UPDATE \
                 SET pruned_xid = greatest(change_log_horizon.pruned_xid, EXCLUDED.pruned_xid)) \
             SELECT count(*) FROM gone",
        )
        .bind(retention_ms as f64)
        .bind(limit)
        .fetch_one(self.pool())
        .await?;
        st.done(done as usize);
        Ok(done as u64)
    }

    /// The newest purge of everything in the change log (its row id; 0: none).
    pub async fn purge_generation(&self) -> Result<i64, StorageError> {
        let st = self.statement("outbox.purge_generation")?;
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT max(id) FROM outbox WHERE event_type = 'purge.all'")
                .fetch_one(self.pool())
                .await?;
        st.done(1);
        Ok(generation.unwrap_or(0))
    }

    /// The change log's size: `(rows, age of the oldest row)`, for metrics.
    pub async fn outbox_size(&self) -> Result<(i64, Duration), StorageError> {
        let st = self.statement("outbox.size")?;
        let (rows, age_ms): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), (extract(epoch FROM clock_timestamp() - min(created_at)) * 1000)::float8 \
             FROM outbox",
        )
        .fetch_one(self.pool())
        .await?;
        st.done(1);
        let age = Duration::from_millis(age_ms.unwrap_or(0.0).max(0.0) as u64);
        Ok((rows, age))
    }

    /// Unpublished rows (all origins), for metrics.
    pub async fn outbox_pending(&self) -> Result<i64, StorageError> {
        let st = self.statement("outbox.pending")?;
        let n = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(self.pool())
            .await?;
        st.done(1);
        Ok(n)
    }
}

impl ClaimedOutbox {
    /// Marks `published` (id, stream position) as sent and releases every claimed row; rows not
    /// listed stay unpublished for the next pass.
    pub async fn finish(self, published: &[(i64, String)]) -> Result<(), StorageError> {
        let Self { store, mut tx, .. } = self;
        if !published.is_empty() {
            let st = store.statement("outbox.mark_published")?;
            let ids: Vec<i64> = published.iter().map(|(id, _)| *id).collect();
            let positions: Vec<&str> = published.iter().map(|(_, p)| p.as_str()).collect();
            sqlx::query(
                "UPDATE outbox o SET published_at = clock_timestamp(), stream_position = p.pos \
                 FROM unnest($1::bigint[], $2::text[]) AS p(id, pos) WHERE o.id = p.id",
            )
            .bind(&ids)
            .bind(&positions)
            .execute(&mut *tx)
            .await?;
            st.done(published.len());
        }
        let st = store.statement("tx.commit")?;
        tx.commit().await?;
        st.done(0);
        Ok(())
    }
}
