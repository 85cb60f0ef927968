//! The outbox relay: publishes every committed write's outbox row on the invalidation bus, in id
//! order, and marks it published with its stream position. A writer nudges it right after its
//! commit and waits (bounded) for its row's position — the consistency token its client gets.
//! It also sweeps, every poll interval, rows any instance left unpublished longer than a grace
//! period (a writer that died between commit and publish), so no invalidation is lost.
//!
//! In Kafka mode it also sends a heartbeat at a fixed interval: every instance measures how far
//! behind its consumer is by the freshest message it has applied (see [`crate::tiers::Stream`]).

use cal_cache::{Invalidation, InvalidationBus, Position};
use cal_storage::Store;
use futures::FutureExt;
use prometheus::{Histogram, IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Publish at all (tests switch it off to play a relay that died after the commit).
    pub enabled: bool,
    /// How often to sweep for rows nobody published.
    pub poll: Duration,
    /// How old another instance's unpublished row must be before this relay takes it over.
    pub grace: Duration,
    /// Heartbeat interval (`None`: no heartbeats, e.g. the in-process bus).
    pub heartbeat: Option<Duration>,
    /// Rows per pass.
    pub batch: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll: Duration::from_millis(250),
            grace: Duration::from_secs(1),
            heartbeat: None,
            batch: 256,
        }
    }
}

/// Relay counters (registered by [`crate::tiers::Tiers`]).
#[derive(Clone)]
pub struct RelayMetrics {
    pub published: IntCounter,
    pub errors: IntCounter,
    pub pending: IntGauge,
    /// Publish round trips (hand-over to the bus → broker acknowledgement).
    pub publish: Histogram,
}

pub struct Relay {
    store: Store,
    bus: Arc<dyn InvalidationBus>,
    origin: String,
    cfg: RelayConfig,
    nudge: Notify,
    waiters: Mutex<HashMap<i64, oneshot::Sender<Option<Position>>>>,
    seq: AtomicU64,
    metrics: RelayMetrics,
}

impl Relay {
    pub fn new(
        store: Store,
        bus: Arc<dyn InvalidationBus>,
        origin: String,
        cfg: RelayConfig,
        metrics: RelayMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            bus,
            origin,
            cfg,
            nudge: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            metrics,
        })
    }

    /// Starts the heartbeat loop (if configured) and the publishing loop (if enabled).
    pub fn spawn(self: &Arc<Self>) {
        self.spawn_heartbeat();
        if !self.cfg.enabled {
            tracing::warn!(
                "the outbox relay is switched off: other instances' relays sweep this one's rows"
            );
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_pending = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = me.nudge.notified() => {}
                    _ = tokio::time::sleep(me.cfg.poll) => {}
                }
                me.pass().await;
                if last_pending.elapsed() >= Duration::from_secs(1) {
                    last_pending = std::time::Instant::now();
                    if let Ok(n) = me.store.outbox_pending().await {
                        me.metrics.pending.set(n);
                    }
                }
            }
        });
    }

    /// Heartbeats prove the stream alive to every consumer, this instance's included.
    fn spawn_heartbeat(self: &Arc<Self>) {
        if let Some(every) = self.cfg.heartbeat {
            let me = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let beat = Invalidation::heartbeat(
                        me.origin.clone(),
                        me.seq.fetch_add(1, Ordering::Relaxed),
                    );
                    // A stalled broker makes this wait; the next beat goes out after it.
                    if let Err(e) = me.bus.publish(beat).await {
                        tracing::debug!(error = %e, "heartbeat not published");
                    }
                }
            });
        }
    }

    /// Asks for `outbox_id` to be published now and waits up to `wait` for its position
    /// (`None`: not published in time, or the bus has no positions).
    pub async fn publish_now(&self, outbox_id: i64, wait: Duration) -> Option<Position> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(outbox_id, tx);
        self.nudge.notify_one();
        let got = tokio::time::timeout(wait, rx).await;
        self.waiters.lock().unwrap().remove(&outbox_id);
        match got {
            Ok(Ok(position)) => position,
            _ => {
                tracing::warn!(
                    outbox_id,
                    "invalidation not published within the consistency wait; the relay will retry"
                );
                None
            }
        }
    }

    /// Publishes what is pending, batch by batch, until nothing of ours (or orphaned) is left or
    /// the bus fails.
    async fn pass(&self) {
        loop {
            let claimed = match self
                .store
                .claim_outbox(&self.origin, self.cfg.grace, self.cfg.batch)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming outbox rows failed");
                    return;
                }
            };
            if claimed.rows.is_empty() {
                let _ = claimed.finish(&[]).await;
                return;
            }
            let full = claimed.rows.len() as i64 >= self.cfg.batch;
            // Sent in id order; the producer keeps that order (idempotent, one in flight per
            // partition as far as ordering is concerned).
            let sends = claimed.rows.iter().map(|row| {
                let mut inv = Invalidation::new(
                    row.keys.clone(),
                    row.origin.clone().unwrap_or_else(|| self.origin.clone()),
                    self.seq.fetch_add(1, Ordering::Relaxed),
                );
                inv.outbox_id = Some(row.id);
                // The lag clock starts when the write is acknowledged. A writer still waiting
                // for this row acknowledges right after the publish, so "now" is a (slightly
                // early) ack time; a row nobody waits for any more (an orphan, or a writer that
                // gave up waiting) was acknowledged at the latest when it was written.
                let waited_for = self.waiters.lock().unwrap().contains_key(&row.id);
                if !waited_for {
                    inv.sent_at_ms = u64::try_from(row.created_at.timestamp_millis()).unwrap_or(0);
                }
                inv.trace_context = row.trace_context.clone();
                let span = tracing::info_span!(
                    "kafka.publish",
                    otel.kind = "producer",
                    messaging.system = %self.bus.name(),
                    messaging.operation = "publish",
                    messaging.outbox_id = row.id,
                    cache.keys = row.keys.len() as i64,
                );
                crate::observe::set_remote_parent(&span, &row.trace_context);
                let publish = self.metrics.publish.clone();
                let started = std::time::Instant::now();
                self.bus.publish(inv).instrument(span).map(move |r| {
                    publish.observe(started.elapsed().as_secs_f64());
                    r
                })
            });
            let results = futures::future::join_all(sends).await;
            let mut published = Vec::with_capacity(results.len());
            let mut failed = false;
            for (row, result) in claimed.rows.iter().zip(results) {
                match result {
                    Ok(position) if !failed => {
                        self.metrics.published.inc();
                        published.push((
                            row.id,
                            position.map_or_else(|| "local".to_owned(), |p| p.to_string()),
                        ));
                        if let Some(tx) = self.waiters.lock().unwrap().remove(&row.id) {
                            let _ = tx.send(position);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Keep order: nothing after a failed row counts as published this pass.
                        self.metrics.errors.inc();
                        tracing::warn!(error = %e, outbox_id = row.id, "publishing an invalidation failed; retrying");
                        failed = true;
                    }
                }
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
}
