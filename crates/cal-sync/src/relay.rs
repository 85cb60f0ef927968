//! The outbox relay: writes the L2 tombstones of every committed write's outbox row, publishes
//! the row on the invalidation bus, in id order, and marks it published with its stream position
//! (only once its tombstones are written: a row whose tombstones failed is published, so other
//! instances' L1 hear of it, but stays unpublished in the outbox and is retried). A writer nudges it right after its
//! commit and waits (bounded) for its row's position — the consistency token its client gets.
//! It also sweeps, every poll interval, rows any instance left unpublished longer than a grace
//! period (a writer that died between commit and publish), so no invalidation is lost.
//!
//! In Kafka mode it also sends a heartbeat at a fixed interval: every instance measures how far
//! behind its consumer is by the freshest message it has applied (see [`crate::StreamProgress`]).

use crate::config::RelayConfig;
use crate::metrics::RelayMetrics;
use cal_cache::TieredCache;
use cal_cache::{Invalidation, InvalidationBus, Position};
use cal_storage::{OutboxRow, Store};
use futures::FutureExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A row was not published within the wait (the relay retries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPublished;

/// How many positions of own rows published before their writer asked are kept.
const EARLY_KEPT: usize = 1024;

/// The origin of messages for rows that no instance wrote.
const UNOWNED: &str = "change-log";

/// How many rows published while their L2 tombstones failed are remembered, so that they are not
/// published again on every pass until Redis is back (beyond that they are simply re-sent).
const AWAITING_KEPT: usize = 100_000;

/// Positions between the relay and the writers that wait for them.
#[derive(Default)]
struct Handoff {
    waiters: HashMap<i64, oneshot::Sender<Option<Position>>>,
    /// Own rows published before their writer asked, oldest first (bounded: a writer asks
    /// within milliseconds of its commit, or has given up).
    early: VecDeque<(i64, Option<Position>)>,
}

impl Handoff {
    /// The position of `outbox_id` if it is already published, else a receiver for it.
    fn ask(
        &mut self,
        outbox_id: i64,
    ) -> Result<Option<Position>, oneshot::Receiver<Option<Position>>> {
        if let Some(i) = self.early.iter().position(|(id, _)| *id == outbox_id) {
            let (_, position) = self.early.remove(i).expect("index in range");
            return Ok(position);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.insert(outbox_id, tx);
        Err(rx)
    }

    /// `outbox_id` is published at `position`: hands it to its waiter, or keeps it for the writer
    /// that has not asked yet (`own`: this instance wrote the row). Answers whether a writer was
    /// waiting for it.
    fn published(&mut self, outbox_id: i64, own: bool, position: Option<Position>) -> bool {
        if let Some(tx) = self.waiters.remove(&outbox_id) {
            let _ = tx.send(position);
            return true;
        }
        if own {
            if self.early.len() == EARLY_KEPT {
                self.early.pop_front();
            }
            self.early.push_back((outbox_id, position));
        }
        false
    }
}

pub struct Relay {
    store: Store,
    cache: TieredCache,
    bus: Arc<dyn InvalidationBus>,
    origin: String,
    cfg: RelayConfig,
    /// How long a writer waits for its row's position ([`crate::SyncConfig::publish_wait`]).
    publish_wait: Duration,
    nudge: Notify,
    handoff: Mutex<Handoff>,
    /// Rows published (id → stream position) whose L2 tombstones have not been written yet.
    awaiting: Mutex<HashMap<i64, String>>,
    seq: AtomicU64,
    metrics: RelayMetrics,
}

impl Relay {
    pub(crate) fn new(
        store: Store,
        cache: TieredCache,
        bus: Arc<dyn InvalidationBus>,
        origin: String,
        cfg: RelayConfig,
        publish_wait: Duration,
        metrics: RelayMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            cache,
            bus,
            origin,
            cfg,
            publish_wait,
            nudge: Notify::new(),
            handoff: Mutex::new(Handoff::default()),
            awaiting: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            metrics,
        })
    }

    /// Starts the heartbeat loop (if configured), the change-log pruner and the publishing loop
    /// (if enabled) in `tasks`; each ends when `stop` is cancelled, the publisher after one last
    /// pass.
    pub(crate) fn run(self: &Arc<Self>, tasks: &mut JoinSet<()>, stop: &CancellationToken) {
        if let Some(every) = self.cfg.heartbeat {
            tasks.spawn(self.clone().heartbeat(every, stop.clone()));
        }
        tasks.spawn(self.clone().prune_every(stop.clone()));
        if !self.cfg.enabled {
            tracing::warn!(
                "the outbox relay is switched off: other instances' relays sweep this one's rows"
            );
            return;
        }
        tasks.spawn(self.clone().publish_loop(stop.clone()));
    }

    async fn publish_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut last_pending = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.nudge.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll) => {}
                () = stop.cancelled() => {
                    self.pass().await;
                    return;
                }
            }
            self.pass().await;
            if last_pending.elapsed() >= Duration::from_secs(1) {
                last_pending = std::time::Instant::now();
                if let Ok(n) = self.store.outbox_pending().await {
                    self.metrics.pending.set(n);
                }
            }
        }
    }

    /// Deletes published rows older than the retention, in small batches (each its own short
    /// statement that skips locked rows), and keeps the change log's size metrics current.
    async fn prune_every(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.prune_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            self.prune().await;
        }
    }

    /// One pruning round: batches until fewer than a full batch is left, then the size.
    pub async fn prune(&self) {
        loop {
            match self
                .store
                .prune_outbox(self.cfg.retention, self.cfg.prune_batch)
                .await
            {
                Ok(n) => {
                    self.metrics.pruned.inc_by(n);
                    if n < self.cfg.prune_batch.max(1) as u64 {
                        break;
                    }
                    // Let other statements in between batches.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the change log failed");
                    break;
                }
            }
        }
        if let Ok((rows, age)) = self.store.outbox_size().await {
            self.metrics.log_rows.set(rows);
            self.metrics.log_oldest_age.set(age.as_secs_f64());
        }
    }

    /// Heartbeats prove the stream alive to every consumer, this instance's included.
    async fn heartbeat(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let beat = Invalidation::heartbeat(
                self.origin.clone(),
                self.seq.fetch_add(1, Ordering::Relaxed),
            );
            // A stalled broker makes this wait; the next beat goes out after it.
            if let Err(e) = self.bus.publish(beat).await {
                tracing::debug!(error = %e, "heartbeat not published");
            }
        }
    }

    /// Asks for `outbox_id` (a row this instance wrote) to be published now and waits up to
    /// `wait` for its position (`Ok(None)`: published, but the bus has no positions). The row may
    /// already be out: another writer's nudge can have the relay claim it while its own writer
    /// was still tombstoning L2; its position is then answered at once.
    pub async fn publish_now(
        &self,
        outbox_id: i64,
        wait: Duration,
    ) -> Result<Option<Position>, NotPublished> {
        let rx = match self.handoff.lock().unwrap().ask(outbox_id) {
            Ok(position) => return Ok(position),
            Err(rx) => rx,
        };
        self.nudge.notify_one();
        let got = tokio::time::timeout(wait, rx).await;
        self.handoff.lock().unwrap().waiters.remove(&outbox_id);
        match got {
            Ok(Ok(position)) => Ok(position),
            _ => {
                tracing::warn!(
                    outbox_id,
                    "invalidation not published within the consistency wait; the relay will retry"
                );
                Err(NotPublished)
            }
        }
    }

    /// Publishes what is pending, batch by batch, until nothing of ours (or orphaned) is left or
    /// the bus fails. Every batch's L2 tombstones are written before it is marked published:
    /// whoever publishes a row (its writer's relay, or another instance's after the writer died
    /// between its commit and its own tombstones) repairs Redis first, from the durable row.
    async fn pass(&self) {
        let mut after = 0;
        loop {
            let claimed = match self
                .store
                .claim_outbox(&self.origin, self.cfg.grace, after, self.cfg.batch)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming outbox rows failed");
                    return;
                }
            };
            let Some(last) = claimed.rows.last().map(|r| r.id) else {
                let _ = claimed.finish(&[]).await;
                return;
            };
            after = last;
            let full = claimed.rows.len() as i64 >= self.cfg.batch;
            let keys: Vec<Vec<(String, i64)>> = claimed.rows.iter().map(row_keys).collect();
            let tombstoned = self.cache.tombstone_l2(&batch_keys(&keys)).await;
            if !tombstoned {
                self.metrics.tombstone_failures.inc();
                tracing::warn!(
                    rows = claimed.rows.len(),
                    "writing the L2 tombstones of outbox rows failed; publishing them, but they stay \
                     unpublished in the outbox until the tombstones are written"
                );
            }
            // Rows an earlier pass published while their tombstones failed go out once.
            let (mut published, fresh): (Vec<(i64, String)>, Vec<RowKeys<'_>>) = {
                let awaiting = self.awaiting.lock().unwrap();
                let mut published = Vec::new();
                let mut fresh = Vec::new();
                for (row, keys) in claimed.rows.iter().zip(&keys) {
                    match awaiting.get(&row.id) {
                        Some(position) => published.push((row.id, position.clone())),
                        None => fresh.push((row, keys.as_slice())),
                    }
                }
                (published, fresh)
            };
            let (sent, failed) = self.publish(&fresh).await;
            if tombstoned {
                let mut awaiting = self.awaiting.lock().unwrap();
                for (id, _) in &published {
                    awaiting.remove(id);
                }
                drop(awaiting);
                published.extend(sent);
            } else {
                let mut awaiting = self.awaiting.lock().unwrap();
                if awaiting.len() < AWAITING_KEPT {
                    awaiting.extend(sent);
                }
                published.clear();
            }
            if let Err(e) = claimed.finish(&published).await {
                tracing::warn!(error = %e, "marking outbox rows published failed; they will be sent again");
            }
            if failed {
                tokio::time::sleep(self.cfg.poll).await;
                return;
            }
            if !full {
                return;
            }
        }
    }

    /// Publishes `rows` in id order; answers `(id, position)` for the ones that went out before
    /// the first failure, and whether one failed (nothing after it counts as published).
    async fn publish(&self, rows: &[RowKeys<'_>]) -> (Vec<(i64, String)>, bool) {
        // Sent in id order; the producer keeps that order (idempotent, one in flight per
        // partition as far as ordering is concerned).
        let sends = rows.iter().map(|&(row, keys)| {
            // A row no instance wrote (e.g. `calendar purge`) is nobody's own message: every
            // consumer, this instance's included, applies it.
            let mut inv = Invalidation::new(
                keys.to_vec(),
                row.origin.clone().unwrap_or_else(|| UNOWNED.to_owned()),
                self.seq.fetch_add(1, Ordering::Relaxed),
            );
            inv.outbox_id = Some(row.id);
            inv.purge_all = row.changed.purge_all.then_some(row.id);
            // The lag clock starts when the write is acknowledged: a writer still waiting
            // acknowledges after this publish ("now" is early, so the lag is not understated);
            // one that gave up did so `publish_wait` after writing its row at the latest.
            let gave_up_by = row
                .created_at
                .timestamp_millis()
                .saturating_add(i64::try_from(self.publish_wait.as_millis()).unwrap_or(i64::MAX));
            inv.sent_at_ms = inv.sent_at_ms.min(u64::try_from(gave_up_by).unwrap_or(0));
            inv.trace_context = row.trace_context.clone();
            inv.calendars = row.changed.calendars.iter().map(|(c, _)| c.get()).collect();
            let span = tracing::info_span!(
                "kafka.publish",
                otel.kind = "producer",
                messaging.system = %self.bus.name(),
                messaging.operation = "publish",
                messaging.outbox_id = row.id,
                cache.keys = inv.keys.len() as i64,
            );
            crate::trace::set_remote_parent(&span, &row.trace_context);
            let publish = self.metrics.publish.clone();
            let started = std::time::Instant::now();
            self.bus.publish(inv).instrument(span).map(move |r| {
                publish.observe(started.elapsed().as_secs_f64());
                r
            })
        });
        let results = futures::future::join_all(sends).await;
        let mut sent = Vec::with_capacity(results.len());
        // Own rows no writer was waiting for: the writer may never have heard its commit (the
        // connection dropped after the server committed), so nobody evicted this instance's L1,
        // and the consumer skips this instance's own messages. Evicting again is harmless
        // (version-monotonic) when the writer is still on its way.
        let mut unheard: Vec<(String, i64)> = Vec::new();
        let failed = self.record_sent(rows, results, &mut sent, &mut unheard);
        if !unheard.is_empty() {
            self.cache.invalidate_local(&unheard).await;
        }
        (sent, failed)
    }

    /// Records the results of one publishing round in id order, up to the first failure;
    /// answers whether one failed.
    fn record_sent(
        &self,
        rows: &[RowKeys<'_>],
        results: Vec<Result<Option<Position>, cal_cache::BusError>>,
        sent: &mut Vec<(i64, String)>,
        unheard: &mut Vec<(String, i64)>,
    ) -> bool {
        for ((row, keys), result) in rows.iter().zip(results) {
            match result {
                Ok(position) => {
                    self.metrics.published.inc();
                    sent.push((
                        row.id,
                        position.map_or_else(|| "local".to_owned(), |p| p.to_string()),
                    ));
                    let own = row.origin.as_deref() == Some(self.origin.as_str());
                    let waited = self
                        .handoff
                        .lock()
                        .unwrap()
                        .published(row.id, own, position);
                    if own && !waited {
                        unheard.extend(keys.iter().cloned());
                    }
                }
                Err(e) => {
                    // Keep order: nothing after a failed row counts as published this pass.
                    self.metrics.errors.inc();
                    tracing::warn!(error = %e, outbox_id = row.id, "publishing an invalidation failed; retrying");
                    return true;
                }
            }
        }
        false
    }
}

/// A row with the cache keys it made stale.
type RowKeys<'a> = (&'a OutboxRow, &'a [(String, i64)]);

/// The cache keys a change-log row made stale: derived from the facts it records (rows written
/// before the change log recorded facts only carry their keys).
fn row_keys(row: &OutboxRow) -> Vec<(String, i64)> {
    let mut keys = crate::invalidations(&row.changed);
    keys.extend(row.legacy_keys.iter().cloned());
    keys
}

/// Every key of the rows' key lists, once, with the highest version any of them carries.
fn batch_keys(rows: &[Vec<(String, i64)>]) -> Vec<(String, i64)> {
    let mut keys: HashMap<&str, i64> = HashMap::new();
    for (key, version) in rows.iter().flatten() {
        let v = keys.entry(key.as_str()).or_insert(*version);
        *v = (*v).max(*version);
    }
    keys.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Option<Position> {
        Some(Position {
            partition: 0,
            offset,
        })
    }

    #[test]
    fn a_row_published_before_its_writer_asks_is_answered_at_once() {
        let mut h = Handoff::default();
        h.published(7, true, at(41));
        assert_eq!(h.ask(7).ok(), Some(at(41)));
        assert!(h.early.is_empty(), "answered once");
        assert!(h.ask(7).is_err(), "a second ask waits");
    }

    #[tokio::test]
    async fn a_waiting_writer_receives_its_position() {
        let mut h = Handoff::default();
        let rx = h.ask(8).expect_err("not published yet");
        h.published(8, true, at(42));
        assert_eq!(rx.await.unwrap(), at(42));
        assert!(h.early.is_empty() && h.waiters.is_empty());
    }

    #[test]
    fn other_instances_rows_are_not_kept_and_the_kept_ones_are_bounded() {
        let mut h = Handoff::default();
        h.published(1, false, at(1));
        assert!(h.early.is_empty());
        for id in 0..(EARLY_KEPT as i64 + 10) {
            h.published(id, true, at(id));
        }
        assert_eq!(h.early.len(), EARLY_KEPT);
        assert!(h.ask(5).is_err(), "the oldest were dropped");
        assert_eq!(
            h.ask(EARLY_KEPT as i64 + 9).ok(),
            Some(at(EARLY_KEPT as i64 + 9))
        );
    }
}
