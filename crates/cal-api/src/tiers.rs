//! Glue between the storage and the cache tiers (the two never see each other): key specs with
//! per-kind TTLs, the change sink that turns committed writes into invalidations, the outbox
//! relay, and the bus consumer that applies other instances' invalidations to this process's L1.
//!
//! Write order, as the consistency argument needs it: the transaction commits (with its
//! change-log row) → local L1 eviction → the relay writes the row's L2 tombstones, then publishes
//! it on the bus (the writer tombstones L2 itself if no relay confirms in time). The mutation
//! answers only after the L1 eviction and (bounded) the publish, whose stream position is its
//! consistency token: the same instance never serves the old value, and another instance
//! presented the token waits until it has applied the stream up to it.
//!
//! Bounded staleness: in Kafka mode every relay sends heartbeats, and [`Stream`] tracks the
//! freshest message this instance applied. When that is older than the liveness bound (broker
//! stalled, consumer disconnected or behind), the instance distrusts its L1 — reads bypass and
//! it is flushed — until the stream catches up. A stalled stream costs speed, never correctness
//! beyond the bound.

use crate::relay::{Relay, RelayConfig, RelayMetrics};
use crate::response_cache::{ResponseCache, ResponseMetrics};
use cal_cache::{BusError, Invalidation, InvalidationBus, KeySpec, Position, TieredCache};
use cal_domain::cache_keys::{self, KeyKind};
use cal_storage::{ChangeSet, ChangeSink, Store};
use futures::StreamExt;
use futures::stream::BoxStream;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// The response cache's default bound.
pub const DEFAULT_RESPONSE_CACHE_BYTES: u64 = 512 * 1024 * 1024;

/// How this instance takes part in the invalidation stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Distrust L1 when the freshest applied message is older than this (`None`: never, for the
    /// in-process bus, which cannot fall behind without reporting it).
    pub liveness: Option<Duration>,
    /// How long a mutation waits for its invalidation's stream position.
    pub publish_wait: Duration,
    /// How long a request presenting a consistency token waits for this instance to apply the
    /// stream up to it before it reads past L1 instead.
    pub token_wait: Duration,
    pub relay: RelayConfig,
    /// The nice value of the thread that applies invalidations (see [`cal_cache::priority`];
    /// `None`: the process's priority).
    pub thread_nice: Option<i32>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            liveness: None,
            publish_wait: Duration::from_secs(1),
            token_wait: Duration::from_secs(1),
            relay: RelayConfig::default(),
            thread_nice: None,
        }
    }
}

impl StreamConfig {
    /// Defaults for a bus shared by several instances (Kafka): 2 s liveness bound, heartbeats
    /// every 200 ms.
    pub fn shared() -> Self {
        Self {
            liveness: Some(Duration::from_secs(2)),
            relay: RelayConfig {
                heartbeat: Some(Duration::from_millis(200)),
                ..RelayConfig::default()
            },
            ..Self::default()
        }
    }
}

/// What this instance has applied of the invalidation stream.
pub struct Stream {
    /// Per partition, the next offset to apply (everything below it has been applied, or was
    /// published before this instance started).
    applied: Mutex<HashMap<i32, i64>>,
    changed: watch::Sender<u64>,
    /// Unix ms send time of the freshest message applied (heartbeats included).
    freshest_ms: AtomicU64,
    behind: AtomicBool,
}

impl Stream {
    fn new() -> Self {
        Self {
            applied: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            freshest_ms: AtomicU64::new(0),
            behind: AtomicBool::new(false),
        }
    }

    /// Where this instance joined the stream: earlier messages need not be waited for.
    pub fn start_at(&self, positions: &[Position]) {
        let mut applied = self.applied.lock().unwrap();
        for p in positions {
            let next = applied.entry(p.partition).or_insert(p.offset);
            *next = (*next).max(p.offset);
        }
    }

    /// Whether the message at `p` has been applied (or predates this instance).
    pub fn has_applied(&self, p: &Position) -> bool {
        self.applied
            .lock()
            .unwrap()
            .get(&p.partition)
            .is_some_and(|next| *next > p.offset)
    }

    fn applied_up_to(&self, p: Position) {
        let mut applied = self.applied.lock().unwrap();
        let next = applied.entry(p.partition).or_insert(0);
        *next = (*next).max(p.offset + 1);
        drop(applied);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Waits until every position in `tokens` has been applied, at most `wait`.
    pub async fn wait_applied(&self, tokens: &[Position], wait: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let done = || tokens.iter().all(|p| self.has_applied(p));
        tokio::time::timeout(wait, async {
            while !done() {
                if rx.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    }

    /// Whether the consumer is behind the liveness bound (L1 distrusted).
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Acquire)
    }
}

/// Buckets of the invalidation latency histograms: fine around the 20 ms lag target.
const LATENCY_BUCKETS: [f64; 19] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Invalidation metrics.
#[derive(Clone)]
struct StreamMetrics {
    applied: IntCounter,
    lag: Histogram,
    behind: IntGauge,
    relay: RelayMetrics,
}

impl StreamMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let applied = IntCounter::new(
            "cal_invalidation_applied_total",
            "Invalidations from other instances applied to this instance's L1",
        )?;
        let latency = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        };
        let lag = latency(
            "cal_invalidation_lag_seconds",
            "From a write's acknowledgement on one instance to its L1 eviction on this one",
        )?;
        let publish = latency(
            "cal_invalidation_publish_seconds",
            "From handing an invalidation to the bus to the broker's acknowledgement (this instance's relay)",
        )?;
        let behind = IntGauge::new(
            "cal_invalidation_consumer_behind",
            "1 while the invalidation stream is behind the liveness bound and L1 is bypassed",
        )?;
        let published = IntCounter::new(
            "cal_invalidation_published_total",
            "Outbox rows this instance's relay published on the bus",
        )?;
        let errors = IntCounter::new(
            "cal_invalidation_publish_errors_total",
            "Outbox rows whose publish failed (retried)",
        )?;
        let tombstone_failures = IntCounter::new(
            "cal_invalidation_tombstone_failures_total",
            "Relay passes whose L2 tombstones could not be written (their rows are retried)",
        )?;
        let log_rows = IntGauge::new(
            "cal_outbox_rows",
            "Rows in the change log (outbox), published or not",
        )?;
        let log_oldest_age = prometheus::Gauge::new(
            "cal_outbox_oldest_age_seconds",
            "Age of the oldest row in the change log (outbox)",
        )?;
        let pruned = IntCounter::new(
            "cal_outbox_pruned_total",
            "Published change-log rows deleted after the retention",
        )?;
        let pending = IntGauge::new(
            "cal_invalidation_outbox_pending",
            "Outbox rows not yet published (all instances)",
        )?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(behind.clone()))?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(tombstone_failures.clone()))?;
        registry.register(Box::new(log_rows.clone()))?;
        registry.register(Box::new(log_oldest_age.clone()))?;
        registry.register(Box::new(pruned.clone()))?;
        registry.register(Box::new(pending.clone()))?;
        registry.register(Box::new(publish.clone()))?;
        Ok(Self {
            applied,
            lag,
            behind,
            relay: RelayMetrics {
                published,
                errors,
                tombstone_failures,
                pending,
                log_rows,
                log_oldest_age,
                pruned,
                publish,
            },
        })
    }
}

/// The cache tiers as the API uses them.
pub struct Tiers {
    pub cache: TieredCache,
    pub bus: Arc<dyn InvalidationBus>,
    /// Whole responses built only from L1 entries (present when L1 is on).
    pub responses: Option<ResponseCache>,
    response_metrics: Option<ResponseMetrics>,
    pub stream: Arc<Stream>,
    pub stream_config: StreamConfig,
    stream_metrics: StreamMetrics,
    relay: OnceLock<Arc<Relay>>,
    ttls: HashMap<KeyKind, Duration>,
    origin: String,
    failpoints: Failpoints,
}

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers")
            .field("cache", &self.cache)
            .field("bus", &self.bus.name())
            .field("origin", &self.origin)
            .finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Tiers {
    /// `ttls` overrides the default L2 TTL of some kinds of keys; `origin` names this instance
    /// on the bus and in its outbox rows.
    pub fn new(
        cache: TieredCache,
        bus: Arc<dyn InvalidationBus>,
        ttls: HashMap<KeyKind, Duration>,
        origin: String,
    ) -> Self {
        let ttls = KeyKind::ALL
            .iter()
            .map(|k| (*k, ttls.get(k).copied().unwrap_or_else(|| k.default_ttl())))
            .collect();
        let response_metrics = ResponseMetrics::register(cache.registry())
            .inspect_err(|e| tracing::warn!(error = %e, "response cache metrics not registered"))
            .ok();
        let stream_metrics = StreamMetrics::register(cache.registry())
            .or_else(|_| StreamMetrics::register(&Registry::new()))
            .expect("metrics register in a fresh registry");
        let mut tiers = Self {
            cache,
            bus,
            responses: None,
            response_metrics,
            stream: Arc::new(Stream::new()),
            stream_config: StreamConfig::default(),
            stream_metrics,
            relay: OnceLock::new(),
            ttls,
            origin,
            failpoints: Failpoints::default(),
        };
        tiers.set_response_cache_bytes(DEFAULT_RESPONSE_CACHE_BYTES);
        tiers
    }

    /// Bounds the response cache at `bytes` (0 switches it off). It only exists with L1 on.
    pub fn with_response_cache_bytes(mut self, bytes: u64) -> Self {
        self.set_response_cache_bytes(bytes);
        self
    }

    /// How this instance takes part in the invalidation stream. With a liveness bound, L1 is
    /// distrusted from the start until the first fresh message arrives.
    pub fn with_stream_config(self, cfg: StreamConfig) -> Self {
        if cfg.liveness.is_some() {
            self.cache.distrust_l1(true);
            self.stream.behind.store(true, Ordering::Release);
            self.stream_metrics.behind.set(1);
        }
        Self {
            stream_config: cfg,
            ..self
        }
    }

    /// Applies the newest purge of everything recorded in the change log (at start-up, before
    /// serving: an instance that starts after a purge never reads what it dropped).
    pub async fn load_purge_generation(
        &self,
        store: &Store,
    ) -> Result<(), cal_storage::StorageError> {
        let generation = store.purge_generation().await?;
        if generation > 0 {
            self.cache.purge_all(generation);
        }
        Ok(())
    }

    /// The armed failpoints.
    pub fn failpoints(&self) -> Failpoints {
        self.failpoints
    }

    /// Arms failure injection (tests of crashes only).
    pub fn with_failpoints(self, failpoints: Failpoints) -> Self {
        if failpoints.kill_after_commit {
            tracing::warn!(
                "failpoint kill-after-commit is armed: the first write kills this process"
            );
        }
        Self { failpoints, ..self }
    }

    fn set_response_cache_bytes(&mut self, bytes: u64) {
        self.responses = match (self.cache.l1_ttl(), &self.response_metrics, bytes) {
            (Some(ttl), Some(metrics), 1..) => {
                Some(ResponseCache::new(bytes, ttl, metrics.clone()))
            }
            _ => None,
        };
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn spec(&self, kind: KeyKind, key: String) -> KeySpec {
        KeySpec::new(key, kind.label(), self.ttls[&kind])
    }

    /// Starts the outbox relay over `store` (once).
    pub fn start_relay(self: &Arc<Self>, store: Store) {
        let relay = Relay::new(
            store,
            self.cache.clone(),
            self.bus.clone(),
            self.origin.clone(),
            RelayConfig {
                publish_wait: self.stream_config.publish_wait,
                ..self.stream_config.relay.clone()
            },
            self.stream_metrics.relay.clone(),
        );
        if self.relay.set(relay.clone()).is_ok() {
            relay.spawn();
        }
    }

    /// Applies every invalidation published by *other* instances to this process's L1 until the
    /// bus closes, and keeps [`Stream`] current. Own messages are not applied (the writer already
    /// evicted its L1) but count as applied positions and as proof of liveness.
    ///
    /// The loop runs on a thread of its own (with a single-threaded runtime), not on the
    /// request runtime: a delivered invalidation is applied as soon as the OS wakes that thread,
    /// instead of queueing behind request tasks on busy workers. It stops with the runtime that
    /// called this (the returned task, which does nothing else, is dropped then) or when the bus
    /// closes.
    pub fn spawn_consumer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let stream = self.bus.subscribe();
        if let Some(bound) = self.stream_config.liveness {
            self.spawn_liveness_monitor(bound);
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let nice = self.stream_config.thread_nice;
        std::thread::Builder::new()
            .name("cal-invalidations".into())
            .spawn(move || {
                let _guard = tracing::dispatcher::set_default(&dispatch);
                cal_cache::priority::apply(nice, "invalidation threads");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                rt.block_on(async move {
                    tokio::select! {
                        () = me.consume(stream) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            // At start-up; an instance that cannot hear invalidations must not serve.
            .expect("spawning the invalidation consumer thread");
        // Held until the calling runtime shuts down; dropping it stops the thread.
        tokio::spawn(async move {
            let _stop = stop_tx;
            std::future::pending::<()>().await
        })
    }

    async fn consume(
        self: Arc<Self>,
        mut stream: BoxStream<'static, Result<Invalidation, BusError>>,
    ) {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(inv) => {
                    if !inv.is_heartbeat() && inv.origin != self.origin {
                        let span = tracing::info_span!(
                            "kafka.apply",
                            otel.kind = "consumer",
                            messaging.system = %self.bus.name(),
                            messaging.operation = "process",
                            messaging.message.origin = %inv.origin,
                            messaging.outbox_id = inv.outbox_id.unwrap_or(-1),
                            messaging.position = %inv.position.map(|p| p.to_string()).unwrap_or_default(),
                            cache.keys = inv.keys.len() as i64,
                        );
                        crate::observe::set_remote_parent(&span, &inv.trace_context);
                        span.in_scope(|| self.cache.apply_remote(&inv));
                        self.stream_metrics.applied.inc();
                        let lag_ms = now_ms().saturating_sub(inv.sent_at_ms);
                        self.stream_metrics.lag.observe(lag_ms as f64 / 1000.0);
                    }
                    self.stream
                        .freshest_ms
                        .fetch_max(inv.sent_at_ms, Ordering::AcqRel);
                    if let Some(p) = inv.position {
                        self.stream.applied_up_to(p);
                    }
                }
                Err(e) => {
                    // Lost messages: nothing in L1 can be trusted any more.
                    tracing::warn!(error = %e, "invalidation stream failed; clearing L1");
                    self.cache.clear_l1();
                }
            }
        }
    }

    /// Every tenth of the bound: distrust L1 while the freshest applied message is older than
    /// the bound, trust it again (freshly cleared) once it is not.
    fn spawn_liveness_monitor(self: &Arc<Self>, bound: Duration) {
        let me = Arc::downgrade(self);
        let every = (bound / 10).max(Duration::from_millis(10));
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { break };
                let age = now_ms().saturating_sub(me.stream.freshest_ms.load(Ordering::Acquire));
                let behind = age > bound_ms;
                if me.stream.behind.swap(behind, Ordering::AcqRel) != behind {
                    if behind {
                        tracing::warn!(
                            age_ms = age,
                            "invalidation stream is behind the liveness bound: bypassing and flushing L1"
                        );
                    } else {
                        tracing::info!("invalidation stream caught up: L1 back in use");
                    }
                }
                me.cache.distrust_l1(behind);
                me.stream_metrics.behind.set(i64::from(behind));
            }
        });
    }
}

/// Keys made stale by a committed change, with the versions the new state carries: the one
/// place where change-log facts become cache keys.
pub fn invalidations(changes: &ChangeSet) -> Vec<(String, i64)> {
    cache_keys::invalidations(
        &changes.events,
        &changes.calendars,
        &changes.resources,
        &changes.users,
    )
}

#[async_trait::async_trait]
impl ChangeSink for Tiers {
    /// Local L1 eviction and new generations, then the relay writes the L2 tombstones and
    /// publishes the outbox row; answers its stream position (`partition:offset`) when the bus
    /// has one. When no relay confirms the publish in time (none running, switched off, or the
    /// bus is slow), the writer writes the L2 tombstones itself before it acknowledges, so a
    /// read after the acknowledgement never gets the old value from Redis either.
    async fn committed(&self, changes: &ChangeSet) -> Option<String> {
        let keys = invalidations(changes);
        if self.failpoints.kill_after_commit {
            failpoint_kill("kill-after-commit");
        }
        if changes.purge_all
            && let Some(generation) = changes.outbox_id
        {
            self.cache.purge_all(generation);
        }
        self.cache.invalidate_local(&keys).await;
        let relay = self
            .relay
            .get()
            .filter(|_| self.stream_config.relay.enabled);
        if let (Some(relay), Some(outbox_id)) = (relay, changes.outbox_id)
            && let Ok(position) = relay
                .publish_now(outbox_id, self.stream_config.publish_wait)
                .await
        {
            return position.map(|p| p.to_string());
        }
        if self.relay.get().is_none() {
            tracing::warn!(
                "no relay running: the invalidation reaches other instances only through TTLs and L2 tombstones"
            );
        }
        self.cache.tombstone_l2(&keys).await;
        None
    }
}

/// Failure injection for tests of what a crash costs. Off unless armed explicitly
/// (`CAL_FAILPOINTS`, see the README); never armed by any default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failpoints {
    /// The process kills itself (SIGKILL) right after a write's commit, before any cache
    /// invalidation: its L1, its L2 tombstones and its relay never hear of the write.
    pub kill_after_commit: bool,
    /// A GraphQL request carrying `x-failpoint: panic` panics in its handler.
    pub panic_in_handler: bool,
}

impl Failpoints {
    /// Parses a comma-separated list of failpoint names.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut fp = Self::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "kill-after-commit" => fp.kill_after_commit = true,
                "panic-in-handler" => fp.panic_in_handler = true,
                other => return Err(format!("unknown failpoint {other:?}")),
            }
        }
        Ok(fp)
    }
}

fn failpoint_kill(name: &str) -> ! {
    tracing::error!(failpoint = name, "failpoint: killing this process");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

/// Parses a consistency token header: positions separated by commas.
pub fn parse_token(header: &str) -> Result<Vec<Position>, String> {
    header
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<Position>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_as_position_lists() {
        assert_eq!(
            parse_token("0:17, 2:5").unwrap(),
            vec![
                Position {
                    partition: 0,
                    offset: 17
                },
                Position {
                    partition: 2,
                    offset: 5
                }
            ]
        );
        assert!(parse_token("0:x").is_err());
        assert!(parse_token("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn waiting_for_a_position_ends_when_it_is_applied_or_predates_the_instance() {
        let s = Arc::new(Stream::new());
        let p = |partition, offset| Position { partition, offset };
        s.start_at(&[p(0, 10)]);
        assert!(
            s.has_applied(&p(0, 9)),
            "published before this instance started"
        );
        assert!(!s.has_applied(&p(0, 10)));
        assert!(!s.wait_applied(&[p(0, 10)], Duration::from_millis(20)).await);
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.wait_applied(&[p(0, 11)], Duration::from_secs(5)).await });
        s.applied_up_to(p(0, 10));
        s.applied_up_to(p(0, 11));
        assert!(waiter.await.unwrap());
        assert!(!s.has_applied(&p(1, 0)), "unknown partition");
    }
}
