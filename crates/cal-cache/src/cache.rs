//! [`TieredCache`]: batch read-through over L1 and L2 with one loader call per batch, versioned
//! fills, invalidation, single-flight and early refresh. It owns the order of operations; the
//! tiers own their storage. It must not interpret keys or values: keys are opaque strings built
//! by the caller and values are any `Serialize + DeserializeOwned + GetSize` type, handed out as
//! shared `Arc<V>` (an L1 hit copies nothing).
//!
//! Single-flight keying: concurrent calls share one load when the sorted list of keys they still
//! miss after L1 and L2 is identical *and* each key is at the same invalidation generation (see
//! [`crate::generations`]): a caller that starts after an invalidation of one of its keys never
//! joins a load that may have read the database before the write. Overlapping but different
//! batches are not merged: that would require splitting one caller's loader across others' keys,
//! and identical batches are the stampede that matters. The leader loads and fills; followers
//! share its values. If the leader's loader fails, its error goes to the leader only and each
//! follower runs its own loader (the error type need not be `Clone`). A leader first re-checks
//! L1 for entries filled after its request started, so a caller that arrives just after a flight
//! finished does not load again.
//!
//! Serialization (for L2 only) is postcard (compact, not self-describing): cached types must not
//! rely on `#[serde(flatten)]`, untagged enums or `skip_serializing_if`. Bump the key's version
//! when a cached type's shape changes. Nothing is serialized when there is no L2.
//!
//! Cost per batch, as the cold path needs it: per key one hash for its generation slot, one L1
//! lookup and at most one L2 decode; metrics are counted per batch (one increment per tier and
//! kind), and per-request bookkeeping ([`RequestStats`]) stores slot numbers, not key strings.

use std::{
    any::Any,
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use get_size2::GetSize;
use prometheus::{Registry, TextEncoder};
use serde::{Serialize, de::DeserializeOwned};
use singleflight_async::SingleFlight;
use std::hash::BuildHasher as _;

use crate::{
    breaker::{Breaker, BreakerState},
    bus::Invalidation,
    config::{CacheConfig, KeySpec},
    error::CacheError,
    generations::{Generations, Snapshot},
    hooks::FillHooks,
    l1::{ENTRY_OVERHEAD, FillOutcome, L1, L1Entry},
    l2::{self, FillItem, L2, Stored, Target},
    metrics::{self, Metrics, Tally},
    trace_spans, xfetch,
};
use tracing::Instrument;

/// One value returned by a loader: which requested key (`index` into the `keys` slice passed to
/// `get_many`), the value (`None`: the row does not exist) and the row's version (0 for a
/// missing row). Indexes the loader omits are returned as `None` and not cached.
///
/// A deleted row answered as `None` with version 0 is refused by the delete's tombstone (whose
/// version is higher) until the tombstone expires: the caller still gets `None`, it is just not
/// cached for `tombstone_ttl`. Callers that delete often can cache deletions under the
/// tombstone's version instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<V> {
    pub index: usize,
    pub value: Option<V>,
    pub version: i64,
}

/// What a caller's result depended on: the invalidation generation of every key whose value it
/// was given, taken before the value was read, and the L1 epoch. See
/// [`TieredCache::deps_current`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deps {
    epoch: u64,
    snapshots: Vec<Snapshot>,
}

impl Deps {
    /// How many keys (generation slots) the result depended on.
    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// Bytes this list occupies (for a cache's weigher).
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.snapshots.len() * std::mem::size_of::<Snapshot>()
    }
}

/// Per-request counters a caller can pass to `get_many` and report (e.g. in a response
/// extension or a log line), and the request's dependencies for result caches.
#[derive(Debug)]
pub struct RequestStats {
    pub l1_hits: AtomicU64,
    pub l2_hits: AtomicU64,
    /// Keys found in neither tier (served by a loader, this caller's or another's).
    pub misses: AtomicU64,
    /// Keys this caller's own loader was asked for.
    pub loaded: AtomicU64,
    /// Keys this caller got from another caller's concurrent load.
    pub coalesced: AtomicU64,
    /// The oldest L1 epoch any of this caller's lookups started in (`u64::MAX`: none yet).
    epoch: AtomicU64,
    /// Generation snapshots of every key whose value this caller was given.
    deps: Mutex<Vec<Snapshot>>,
    /// Whether to keep `versions` (only a result stored in the shared tier needs them).
    track_versions: AtomicBool,
    /// The keys and versions of every value this caller was given; see [`RequestStats::versions`].
    versions: Mutex<Vec<(String, i64)>>,
    /// Some value was given that the caches may already know to be stale (its fill was refused).
    untracked: AtomicBool,
    /// This caller must neither read nor fill L1 (e.g. it waits for invalidations not yet heard).
    bypass_l1: AtomicBool,
    /// This caller reads every value from its own loader: no tier, no shared load, no fill.
    read_source: AtomicBool,
}

impl Default for RequestStats {
    fn default() -> Self {
        Self {
            l1_hits: AtomicU64::new(0),
            l2_hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            epoch: AtomicU64::new(u64::MAX),
            deps: Mutex::new(Vec::new()),
            track_versions: AtomicBool::new(false),
            versions: Mutex::new(Vec::new()),
            untracked: AtomicBool::new(false),
            bypass_l1: AtomicBool::new(false),
            read_source: AtomicBool::new(false),
        }
    }
}

/// A plain copy of [`RequestStats`]' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStatsSnapshot {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub loaded: u64,
    pub coalesced: u64,
}

impl RequestStats {
    /// From now on, also keep the key and version of every value given (for
    /// [`RequestStats::versions`]); off by default because it copies every key.
    pub fn track_versions(&self) {
        self.track_versions.store(true, Ordering::Relaxed);
    }

    /// Every key whose value this caller was given, with the value's version (only recorded
    /// after [`RequestStats::track_versions`]). While each key still holds a value of that
    /// version in L2, the values are unchanged (see [`TieredCache::get_derived`]).
    pub fn versions(&self) -> Vec<(String, i64)> {
        let mut v = self.versions.lock().unwrap().clone();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// From now on this caller's lookups skip L1 (reads and fills); L2 and the loader still serve.
    pub fn bypass_l1(&self) {
        self.bypass_l1.store(true, Ordering::Relaxed);
    }

    fn bypasses_l1(&self) -> bool {
        self.bypass_l1.load(Ordering::Relaxed)
    }

    /// From now on every value this caller gets comes from its own loader call: no tier is read
    /// or filled and no other caller's load is joined, so each is at least as new as the
    /// database was when the call began (incremental sync must not advance a client past a
    /// change and hand it the value from before). Its result is untracked, so never cached.
    pub fn read_source(&self) {
        self.read_source.store(true, Ordering::Relaxed);
        self.mark_untracked();
    }

    fn reads_source(&self) -> bool {
        self.read_source.load(Ordering::Relaxed)
    }

    /// Marks the caller's result as depending on something the cache does not track.
    pub fn mark_untracked(&self) {
        self.untracked.store(true, Ordering::Relaxed);
    }

    /// What the caller's result depended on, or `None` if some value it was given may already
    /// be stale (a refused fill) or something untracked was used. While
    /// [`TieredCache::deps_current`] holds for it, nothing those values came from has been
    /// invalidated: a result computed only from them is current.
    pub fn deps(&self) -> Option<Deps> {
        if self.untracked.load(Ordering::Relaxed) {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut snapshots = self.deps.lock().unwrap().clone();
        snapshots.sort_unstable();
        snapshots.dedup();
        Some(Deps {
            // No lookup at all: depends on nothing, valid in the current epoch only.
            epoch: if epoch == u64::MAX { 0 } else { epoch },
            snapshots,
        })
    }

    pub fn snapshot(&self) -> RequestStatsSnapshot {
        RequestStatsSnapshot {
            l1_hits: self.l1_hits.load(Ordering::Relaxed),
            l2_hits: self.l2_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
        }
    }
}

fn bump(stats: Option<&RequestStats>, field: fn(&RequestStats) -> &AtomicU64, n: usize) {
    if let Some(stats) = stats
        && n > 0
    {
        field(stats).fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What [`TieredCache::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    pub l1_enabled: bool,
    /// L2 is switched on and a Redis URL is configured.
    pub l2_enabled: bool,
    /// `None` when there is no L2.
    pub breaker: Option<BreakerState>,
    /// Number of Redis data losses (run_id changes) detected so far.
    pub epoch: u64,
    pub l1_weighted_bytes: u64,
    pub l1_entries: u64,
    /// Redis round trips attempted so far (one per MGET, fill, tombstone batch or INFO).
    pub l2_round_trips: u64,
    /// Tombstones whose write failed and that wait for Redis to come back.
    pub pending_tombstones: usize,
}

/// A loaded value on its way into the tiers: (index into the keys, value, version, serialized
/// payload when L2 will store it, too large to cache).
type Prepared<V> = (usize, Option<Arc<V>>, i64, Option<Vec<u8>>, bool);

/// One key's outcome of a shared load, in the flight's (sorted) key order: the value, its
/// version, and whether a tier refused to store it because it knows a newer version.
struct Slot<V> {
    value: Option<Arc<V>>,
    version: i64,
    refused: bool,
}

type SharedLoad = Option<Arc<dyn Any + Send + Sync>>;

/// A flight: the keys still missing, sorted, each with its generation when the caller started.
/// The single-flight map hashes only a fingerprint of the list (one word instead of every key
/// through SipHash) and compares lists in full, so a collision costs a comparison, never a wrong
/// join.
#[derive(Clone)]
struct FlightKey {
    fingerprint: u64,
    keys: Arc<[(String, u64)]>,
}

impl FlightKey {
    fn new(keys: Vec<(String, u64)>) -> Self {
        let fingerprint = foldhash::fast::FixedState::with_seed(7).hash_one(&keys);
        Self {
            fingerprint,
            keys: keys.into(),
        }
    }
}

impl PartialEq for FlightKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.keys == other.keys
    }
}

impl Eq for FlightKey {}

impl std::hash::Hash for FlightKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.fingerprint);
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Inner {
    l1: Option<L1>,
    /// Set while this process cannot trust its L1 (its invalidation stream is behind).
    l1_distrusted: AtomicBool,
    l2: Option<L2>,
    generations: Arc<Generations>,
    l1_ttl: Duration,
    max_value_bytes: usize,
    xfetch_beta: f64,
    hooks: Option<Arc<dyn FillHooks>>,
    metrics: Metrics,
    registry: Registry,
    flights: SingleFlight<FlightKey, SharedLoad>,
    /// The runtime [`TieredCache::new`] ran on: background work started from other threads.
    runtime: tokio::runtime::Handle,
    /// The newest purge of everything applied (0: none).
    purge: std::sync::atomic::AtomicI64,
    _health: Option<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The two-tier cache. Cheap to clone: all clones share one state.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("status", &self.status())
            .finish()
    }
}

enum Lookup<V> {
    /// The value and its version.
    Hit(Option<Arc<V>>, i64),
    /// Present but XFetch picked this caller to refresh it.
    Refresh,
    Miss,
}

/// Unix milliseconds: the clock of [`crate::Invalidation::sent_at_ms`] and of every lag measured
/// against it.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What an L1 entry holding `value` under `key` occupies in memory.
fn weight<V: GetSize>(value: Option<&V>, key_len: usize) -> u32 {
    let value_size = value.map_or(0, |v| std::mem::size_of::<V>() + v.get_heap_size());
    u32::try_from(value_size + key_len + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// How much larger than its serialized form a value may be in L1 before it counts as too large
/// to cache (when there is no L2 and so no serialized form to compare with `max_value_bytes`).
const L1_SIZE_FACTOR: usize = 4;

fn erase<V: Send + Sync + 'static>(value: &Option<Arc<V>>) -> Option<Arc<dyn Any + Send + Sync>> {
    value
        .as_ref()
        .map(|v| v.clone() as Arc<dyn Any + Send + Sync>)
}

impl TieredCache {
    /// Builds the cache and registers its metrics in `registry`. Never connects to Redis here,
    /// so a Redis that is down (or absent) does not fail start-up. Must be called inside a
    /// Tokio runtime (it spawns the periodic Redis health check).
    pub async fn new(cfg: CacheConfig, registry: &Registry) -> Result<Self, CacheError> {
        let metrics = Metrics::register(registry)?;
        let generations = Arc::new(Generations::new());
        let l1 = cfg
            .l1_enabled
            .then(|| L1::new(cfg.l1_max_bytes, cfg.tombstone_ttl, &metrics));
        let target = if cfg.redis_cluster_nodes.is_empty() {
            cfg.redis_url.as_deref().map(Target::Single)
        } else {
            Some(Target::Cluster(&cfg.redis_cluster_nodes))
        };
        let l2 = match (target, cfg.l2_enabled) {
            (Some(target), true) => {
                let breaker =
                    |gauge| Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown, gauge);
                let l1_for_reset = l1.clone();
                let generations = generations.clone();
                let on_reset = Box::new(move || {
                    if let Some(l1) = &l1_for_reset {
                        l1.clear();
                    }
                    generations.bump_epoch();
                });
                Some(L2::new(
                    target,
                    &cfg.key_prefix,
                    cfg.redis_timeout,
                    breaker,
                    cfg.tombstone_ttl,
                    metrics.clone(),
                    on_reset,
                )?)
            }
            _ => None,
        };
        let has_l2 = l2.is_some();
        let interval = cfg.health_check_interval.max(Duration::from_millis(10));
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            let weak = weak.clone();
            // The task only holds a weak reference and is aborted when the cache is dropped.
            let task = tokio::spawn(async move {
                let start = tokio::time::Instant::now() + interval;
                let mut tick = tokio::time::interval_at(start, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    if let Some(l1) = &inner.l1 {
                        inner
                            .metrics
                            .l1_weighted_bytes
                            .set(l1.weighted_size() as i64);
                    }
                    if let Some(l2) = &inner.l2 {
                        l2.health_check().await;
                    }
                }
            });
            Inner {
                l1,
                l1_distrusted: AtomicBool::new(false),
                l2,
                generations,
                l1_ttl: cfg.l1_ttl,
                max_value_bytes: cfg.max_value_bytes,
                xfetch_beta: cfg.xfetch_beta,
                hooks: cfg.hooks.clone(),
                metrics,
                registry: registry.clone(),
                flights: SingleFlight::new(),
                runtime: tokio::runtime::Handle::current(),
                purge: std::sync::atomic::AtomicI64::new(0),
                _health: Some(AbortOnDrop(task.abort_handle())),
            }
        });
        tracing::debug!(l1 = cfg.l1_enabled, l2 = has_l2, "tiered cache ready");
        Ok(Self { inner })
    }

    /// Read-through for a batch: L1, then one `MGET` for L1's misses, then ONE loader call with
    /// the indexes (into `keys`, ascending, one per distinct key) still missing; loaded values
    /// are filled into L2 (one script call) and L1 with their versions. Returns one value per
    /// key, in `keys` order. Redis problems never surface here; only the loader's error does.
    pub async fn get_many<V, E, F, Fut>(
        &self,
        keys: &[KeySpec],
        stats: Option<&RequestStats>,
        load: F,
    ) -> Result<Vec<Option<Arc<V>>>, E>
    where
        V: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
        E: Send,
        F: FnOnce(Vec<usize>) -> Fut + Send,
        Fut: Future<Output = Result<Vec<Loaded<V>>, E>> + Send,
    {
        let inner = &*self.inner;
        let started = Instant::now();
        let n = keys.len();
        let mut out: Vec<Option<Option<Arc<V>>>> = (0..n).map(|_| None).collect();
        let mut tally = Tally::default();

        // Duplicate keys in one request are looked up and loaded once.
        let mut first_of: Map<&str, usize> = Map::with_capacity_and_hasher(n, Default::default());
        let canon: Vec<usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| *first_of.entry(k.key.as_str()).or_insert(i))
            .collect();
        let unique: Vec<usize> = (0..n).filter(|&i| canon[i] == i).collect();

        if let Some(stats) = stats.filter(|s| s.reads_source()) {
            bump(Some(stats), |s| &s.misses, unique.len());
            bump(Some(stats), |s| &s.loaded, unique.len());
            for loaded in load(unique).await? {
                if let Some(slot) = out.get_mut(loaded.index) {
                    *slot = Some(loaded.value.map(Arc::new));
                }
            }
            return Ok((0..n).map(|i| out[canon[i]].clone().flatten()).collect());
        }

        // Generations before any value is read (see `generations`).
        if let Some(stats) = stats {
            stats
                .epoch
                .fetch_min(inner.generations.epoch(), Ordering::AcqRel);
        }
        let snapshots: Vec<Snapshot> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                if canon[i] == i {
                    inner.generations.snapshot(&k.key)
                } else {
                    Snapshot {
                        slot: 0,
                        generation: 0,
                    }
                }
            })
            .collect();
        // Versions of the values handed out, for `RequestStats::versions`.
        let mut versions: Vec<(usize, i64)> = Vec::new();

        let now = now_ms();
        let mut need_l2 = Vec::new();
        let mut need_db = Vec::new();

        // L1.
        match self.active_l1(stats) {
            Some(l1) => {
                let span = trace_spans::tier(metrics::L1, unique.len());
                for &i in &unique {
                    let spec = &keys[i];
                    match self.l1_lookup::<V>(l1, &spec.key, now).await {
                        Lookup::Hit(v, version) => {
                            tally.add(spec.kind, Tally::L1_HIT);
                            versions.push((i, version));
                            out[i] = Some(v);
                        }
                        Lookup::Refresh => {
                            // L2 holds the same near-expiry value: go straight to the loader.
                            tally.add(spec.kind, Tally::L1_MISS);
                            need_db.push(i);
                        }
                        Lookup::Miss => {
                            tally.add(spec.kind, Tally::L1_MISS);
                            need_l2.push(i);
                        }
                    }
                }
                let hits = unique.len() - need_l2.len() - need_db.len();
                bump(stats, |s| &s.l1_hits, hits);
                trace_spans::found(&span, unique.len(), hits);
            }
            None => need_l2 = unique,
        }

        // L2: one round trip for all of L1's misses.
        if !need_l2.is_empty() {
            match &inner.l2 {
                Some(l2) => {
                    let (span, before) =
                        (trace_spans::tier(metrics::L2, need_l2.len()), need_db.len());
                    self.l2_lookup(
                        l2,
                        keys,
                        &need_l2,
                        now,
                        stats,
                        &mut out,
                        &mut need_db,
                        &mut versions,
                        &mut tally,
                    )
                    .instrument(span.clone())
                    .await;
                    let hits = need_l2.len() - (need_db.len() - before);
                    bump(stats, |s| &s.l2_hits, hits);
                    trace_spans::found(&span, need_l2.len(), hits);
                }
                None => need_db.extend_from_slice(&need_l2),
            }
        }

        // The loader, once, for what is still missing.
        if !need_db.is_empty() {
            need_db.sort_unstable();
            bump(stats, |s| &s.misses, need_db.len());
            let span = trace_spans::tier(metrics::DB, need_db.len());
            let result = self
                .load_shared(keys, &need_db, &snapshots, started, stats, load, &mut tally)
                .instrument(span.clone())
                .await;
            let (order, loaded) = match result {
                Ok(r) => r,
                Err(e) => {
                    tally.flush(&inner.metrics);
                    return Err(e);
                }
            };
            let mut hits = 0;
            for (&i, slot) in order.iter().zip(loaded.iter()) {
                if slot.refused
                    && let Some(stats) = stats
                {
                    stats.mark_untracked();
                }
                hits += usize::from(slot.value.is_some());
                versions.push((i, slot.version));
                out[i] = Some(slot.value.clone());
            }
            trace_spans::found(&span, need_db.len(), hits);
        }
        tally.flush(&inner.metrics);

        if let Some(stats) = stats {
            let mut deps = stats.deps.lock().unwrap();
            deps.extend(
                (0..n)
                    .filter(|&i| canon[i] == i && out[i].is_some())
                    .map(|i| snapshots[i]),
            );
            drop(deps);
            if stats.track_versions.load(Ordering::Relaxed) {
                stats
                    .versions
                    .lock()
                    .unwrap()
                    .extend(versions.iter().map(|&(i, v)| (keys[i].key.clone(), v)));
            }
        }

        Ok((0..n).map(|i| out[canon[i]].clone().flatten()).collect())
    }

    /// L1, unless it is off, distrusted by the process, or bypassed by this caller.
    fn active_l1(&self, stats: Option<&RequestStats>) -> Option<&L1> {
        if self.inner.l1_distrusted.load(Ordering::Acquire)
            || stats.is_some_and(RequestStats::bypasses_l1)
        {
            return None;
        }
        self.inner.l1.as_ref()
    }

    /// Stops (`true`) or resumes (`false`) reading and filling L1 in this process, clearing it on
    /// every change: while the invalidation stream is behind, L1 may hold what a writer elsewhere
    /// already changed, and what it held before resuming was filled without those invalidations.
    pub fn distrust_l1(&self, distrust: bool) {
        let was = self.inner.l1_distrusted.swap(distrust, Ordering::AcqRel);
        if was != distrust {
            self.clear_l1();
        }
    }

    /// Whether L1 is currently distrusted (see [`TieredCache::distrust_l1`]).
    pub fn l1_distrusted(&self) -> bool {
        self.inner.l1_distrusted.load(Ordering::Acquire)
    }

    async fn l1_lookup<V>(&self, l1: &L1, key: &str, now: u64) -> Lookup<V>
    where
        V: Send + Sync + 'static,
    {
        let Some(entry) = l1.get(key).await else {
            return Lookup::Miss;
        };
        let value = match entry.value {
            None => None,
            Some(any) => match any.downcast::<V>() {
                Ok(v) => Some(v),
                // Another type cached under this key: a caller bug; treat as a miss.
                Err(_) => return Lookup::Miss,
            },
        };
        if xfetch::should_refresh(
            now,
            entry.delta_ms,
            self.inner.xfetch_beta,
            entry.expires_at_ms,
            xfetch::sample(),
        ) {
            return Lookup::Refresh;
        }
        Lookup::Hit(value, entry.version)
    }

    #[allow(clippy::too_many_arguments)]
    async fn l2_lookup<V>(
        &self,
        l2: &L2,
        keys: &[KeySpec],
        need_l2: &[usize],
        now: u64,
        stats: Option<&RequestStats>,
        out: &mut [Option<Option<Arc<V>>>],
        need_db: &mut Vec<usize>,
        versions: &mut Vec<(usize, i64)>,
        tally: &mut Tally,
    ) where
        V: DeserializeOwned + GetSize + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let names: Vec<&str> = need_l2.iter().map(|&i| keys[i].key.as_str()).collect();
        let blobs = l2.mget(&names).await;
        let l1 = self.active_l1(stats);
        for (&i, blob) in need_l2.iter().zip(blobs) {
            let Some(blob) = blob else {
                // Its slot group is unavailable: the loader answers, uncounted as a miss.
                need_db.push(i);
                continue;
            };
            let spec = &keys[i];
            let found = blob.as_deref().and_then(l2::decode).and_then(|s| match s {
                Stored::Value {
                    version,
                    delta_ms,
                    expires_at_ms,
                    payload,
                } => postcard::from_bytes::<Option<V>>(payload)
                    .ok()
                    .map(|v| (version, delta_ms, expires_at_ms, v.map(Arc::new))),
                Stored::Tombstone { .. } => None,
            });
            let Some((version, delta_ms, expires_at_ms, value)) = found else {
                tally.add(spec.kind, Tally::L2_MISS);
                need_db.push(i);
                continue;
            };
            if xfetch::should_refresh(
                now,
                delta_ms,
                inner.xfetch_beta,
                expires_at_ms,
                xfetch::sample(),
            ) {
                tally.add(spec.kind, Tally::L2_MISS);
                need_db.push(i);
                continue;
            }
            if let Some(l1) = l1 {
                let left = Duration::from_millis(expires_at_ms.saturating_sub(now).max(1));
                let entry = L1Entry {
                    value: erase(&value),
                    version,
                    weight: weight(value.as_deref(), spec.key.len()),
                    ttl: inner.l1_ttl.min(spec.ttl).min(left),
                    delta_ms,
                    expires_at_ms,
                    kind: spec.kind,
                    filled_at: Instant::now(),
                };
                match l1.fill(&spec.key, entry).await {
                    FillOutcome::Stored => tally.add(spec.kind, Tally::L1_FILL),
                    FillOutcome::RefusedStale => {
                        // This process already saw an invalidation newer than the L2 copy
                        // (e.g. Redis was unreachable for the writer's tombstone): don't serve it.
                        tally.add(spec.kind, Tally::L1_REFUSED);
                        tally.add(spec.kind, Tally::L2_MISS);
                        need_db.push(i);
                        continue;
                    }
                }
            }
            tally.add(spec.kind, Tally::L2_HIT);
            versions.push((i, version));
            out[i] = Some(value);
        }
    }

    /// Runs the loader through the single-flight group keyed on the sorted missing keys and
    /// their generations. Returns the missing indexes in flight order and one slot per index.
    #[allow(clippy::too_many_arguments)]
    async fn load_shared<V, E, F, Fut>(
        &self,
        keys: &[KeySpec],
        missing: &[usize],
        snapshots: &[Snapshot],
        started: Instant,
        stats: Option<&RequestStats>,
        load: F,
        tally: &mut Tally,
    ) -> Result<(Vec<usize>, Arc<Vec<Slot<V>>>), E>
    where
        V: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
        E: Send,
        F: FnOnce(Vec<usize>) -> Fut + Send,
        Fut: Future<Output = Result<Vec<Loaded<V>>, E>> + Send,
    {
        let mut order = missing.to_vec();
        order.sort_unstable_by(|&a, &b| keys[a].key.cmp(&keys[b].key));
        let flight_key = FlightKey::new(
            order
                .iter()
                .map(|&i| (keys[i].key.clone(), snapshots[i].generation))
                .collect(),
        );
        // The loader is FnOnce and the single-flight closure may not run (we are a follower):
        // keep it in a slot so we can still run it ourselves if the leader fails.
        let load_slot = Mutex::new(Some(load));
        let err_slot: Mutex<Option<E>> = Mutex::new(None);
        let leader_tally = Mutex::new(Tally::default());
        let shared = self
            .inner
            .flights
            .work(flight_key, || async {
                let load = load_slot.lock().unwrap().take()?;
                let mut t = Tally::default();
                let result = self
                    .load_and_fill(keys, &order, started, stats, load, &mut t)
                    .await;
                *leader_tally.lock().unwrap() = t;
                match result {
                    Ok(slots) => Some(slots as Arc<dyn Any + Send + Sync>),
                    Err(e) => {
                        *err_slot.lock().unwrap() = Some(e);
                        None
                    }
                }
            })
            .await;
        tally.merge(&leader_tally.into_inner().unwrap());
        if let Some(e) = err_slot.into_inner().unwrap() {
            return Err(e);
        }
        let load = load_slot.into_inner().unwrap();
        let led = load.is_none();
        if let Some(slots) = shared.and_then(|any| any.downcast::<Vec<Slot<V>>>().ok()) {
            if !led {
                for &i in missing {
                    tally.add(keys[i].kind, Tally::COALESCED);
                }
                bump(stats, |s| &s.coalesced, missing.len());
            }
            return Ok((order, slots));
        }
        // The leader failed (its error went to it) or produced another type: load ourselves.
        let load = load.expect("a leader always returns a result or an error");
        let slots = self
            .load_and_fill(keys, &order, started, stats, load, tally)
            .await?;
        Ok((order, slots))
    }

    /// Calls the loader for `order` (minus entries filled since the request started), then
    /// fills L2 and L1 with version checks. Returns one slot per index of `order`, in its order.
    async fn load_and_fill<V, E, F, Fut>(
        &self,
        keys: &[KeySpec],
        order: &[usize],
        started: Instant,
        stats: Option<&RequestStats>,
        load: F,
        tally: &mut Tally,
    ) -> Result<Arc<Vec<Slot<V>>>, E>
    where
        V: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
        F: FnOnce(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Loaded<V>>, E>>,
    {
        let inner = &*self.inner;
        let mut slots: Vec<Option<Slot<V>>> = (0..order.len()).map(|_| None).collect();
        // Where each key index sits in `order`.
        let position: Map<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        let mut still = Vec::with_capacity(order.len());
        let l1 = self.active_l1(stats);
        for (p, &i) in order.iter().enumerate() {
            if let Some(l1) = l1
                && let Some(entry) = l1.get(&keys[i].key).await
                && entry.filled_at >= started
            {
                let value = match entry.value {
                    None => Some(None),
                    Some(any) => any.downcast::<V>().ok().map(Some),
                };
                if let Some(value) = value {
                    slots[p] = Some(Slot {
                        value,
                        version: entry.version,
                        refused: false,
                    });
                    continue;
                }
            }
            still.push(i);
        }
        if !still.is_empty() {
            still.sort_unstable();
            let t0 = Instant::now();
            let loaded = load(still.clone()).await?;
            let delta_ms = ms(t0.elapsed());
            bump(stats, |s| &s.loaded, still.len());
            let names: Vec<String> = match &inner.hooks {
                Some(_) => still.iter().map(|&i| keys[i].key.clone()).collect(),
                None => Vec::new(),
            };
            if let Some(hooks) = &inner.hooks {
                hooks.after_load(&names).await;
            }
            self.fill(
                keys, &position, &mut slots, &still, loaded, delta_ms, l1, tally,
            )
            .await;
            if let Some(hooks) = &inner.hooks {
                hooks.after_fill(&names).await;
            }
        }
        Ok(Arc::new(
            slots
                .into_iter()
                .map(|s| {
                    s.unwrap_or(Slot {
                        value: None,
                        version: 0,
                        refused: false,
                    })
                })
                .collect(),
        ))
    }

    /// Fills what the loader returned into L2 (one script call) and then L1, and records each
    /// value in its slot. A value L2 refuses as stale is not put into L1 either: that covers a
    /// writer in another process whose bus message has not arrived yet.
    #[allow(clippy::too_many_arguments)]
    async fn fill<V>(
        &self,
        keys: &[KeySpec],
        position: &Map<usize, usize>,
        slots: &mut [Option<Slot<V>>],
        asked: &[usize],
        loaded: Vec<Loaded<V>>,
        delta_ms: u64,
        l1: Option<&L1>,
        tally: &mut Tally,
    ) where
        V: Serialize + GetSize + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let mut wanted: std::collections::HashSet<usize, foldhash::fast::RandomState> =
            asked.iter().copied().collect();
        let now = now_ms();
        let mut prepared: Vec<Prepared<V>> = Vec::with_capacity(asked.len());
        for item in loaded {
            if !wanted.remove(&item.index) {
                continue; // not asked for, or answered twice
            }
            let kind = keys[item.index].kind;
            tally.add(
                kind,
                if item.value.is_some() {
                    Tally::DB_HIT
                } else {
                    Tally::DB_MISS
                },
            );
            let (payload, oversize) = match &inner.l2 {
                Some(_) => match postcard::to_allocvec(&item.value) {
                    Ok(p) if p.len() <= inner.max_value_bytes => (Some(p), false),
                    Ok(_) => {
                        tally.add(kind, Tally::OVERSIZE);
                        (None, true)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kind, "value could not be serialized; not cached");
                        (None, true)
                    }
                },
                None => (None, false),
            };
            prepared.push((
                item.index,
                item.value.map(Arc::new),
                item.version,
                payload,
                oversize,
            ));
        }

        // L2 first: its answer (refused as stale) also stops the L1 fill.
        let mut in_l2 = vec![false; prepared.len()];
        let mut refused = vec![false; prepared.len()];
        if let Some(l2) = &inner.l2 {
            let mut which = Vec::new();
            let mut items = Vec::new();
            for (p_idx, (index, _, version, payload, _)) in prepared.iter().enumerate() {
                if let Some(payload) = payload {
                    let spec = &keys[*index];
                    which.push(p_idx);
                    items.push(FillItem {
                        key: &spec.key,
                        version: *version,
                        ttl: spec.ttl,
                        blob: l2::encode_value(*version, delta_ms, now + ms(spec.ttl), payload),
                    });
                }
            }
            let flags = l2.fill(&items).await;
            for (p_idx, stored) in which.into_iter().zip(flags) {
                let kind = keys[prepared[p_idx].0].kind;
                match stored {
                    Some(true) => {
                        in_l2[p_idx] = true;
                        tally.add(kind, Tally::L2_FILL);
                    }
                    Some(false) => {
                        refused[p_idx] = true;
                        tally.add(kind, Tally::L2_REFUSED);
                    }
                    None => {} // its slot group is unavailable
                }
            }
        }
        for (p_idx, (index, value, version, _, oversize)) in prepared.into_iter().enumerate() {
            let spec = &keys[index];
            let mut refused_here = refused[p_idx];
            if let Some(l1) = l1 {
                let size = weight(value.as_deref(), spec.key.len());
                // Without L2 nothing was serialized: bound the decoded size instead, at
                // `L1_SIZE_FACTOR` times the serialized bound (decoded values are larger).
                let too_large = inner.l2.is_none()
                    && size as usize > inner.max_value_bytes.saturating_mul(L1_SIZE_FACTOR);
                if too_large {
                    tally.add(spec.kind, Tally::OVERSIZE);
                } else if oversize {
                    // counted when it was serialized
                } else if refused_here {
                    tally.add(spec.kind, Tally::L1_REFUSED);
                } else {
                    let ttl = inner.l1_ttl.min(spec.ttl);
                    // XFetch aims at the expiry that sends callers to the loader: L2's if
                    // the value is there, otherwise L1's.
                    let lowest = if in_l2[p_idx] { spec.ttl } else { ttl };
                    let entry = L1Entry {
                        value: erase(&value),
                        version,
                        weight: size,
                        ttl,
                        delta_ms,
                        expires_at_ms: now + ms(lowest),
                        kind: spec.kind,
                        filled_at: Instant::now(),
                    };
                    match l1.fill(&spec.key, entry).await {
                        FillOutcome::Stored => tally.add(spec.kind, Tally::L1_FILL),
                        FillOutcome::RefusedStale => {
                            refused_here = true;
                            tally.add(spec.kind, Tally::L1_REFUSED);
                        }
                    }
                }
            }
            slots[position[&index]] = Some(Slot {
                value,
                version,
                refused: refused_here,
            });
        }
    }

    /// Call after committing: every `(key, new_version)` gets a tombstone in L1 (the minimum
    /// version a later fill must carry), a new generation, and then a tombstone in L2 (one script
    /// call replacing older values with `T{version}` for `tombstone_ttl`). A fill with an older
    /// version, e.g. from a reader that loaded before the commit, is then refused in both tiers,
    /// results built from the old values stop being current, and no later reader joins a load
    /// that started before. Publish the same list on the [`crate::InvalidationBus`] so other
    /// processes do the same to their L1.
    ///
    /// If Redis is unreachable the L2 tombstones are kept and written before this process's next
    /// L2 read or fill (or by the periodic health check); until then other processes rely on
    /// the bus message (their L1 tombstones refuse the old L2 value).
    pub async fn invalidate(&self, keys: &[(String, i64)]) {
        self.invalidate_local(keys).await;
        self.tombstone_l2(keys).await;
    }

    /// The in-process half of [`TieredCache::invalidate`]: L1 tombstones and new generations.
    pub async fn invalidate_local(&self, keys: &[(String, i64)]) {
        if let Some(l1) = &self.inner.l1 {
            for (key, version) in keys {
                l1.invalidate(key, *version).await;
            }
        }
        for (key, _) in keys {
            self.inner.generations.bump(key);
        }
    }

    /// The shared half of [`TieredCache::invalidate`]: L2 tombstones for every key, in one
    /// script call. `true` when they are written (or there is no L2). On `false` they are also
    /// kept and written before this process's next L2 read or fill, but the caller must not
    /// count on that surviving the process: the outbox relay retries from the durable row.
    pub async fn tombstone_l2(&self, keys: &[(String, i64)]) -> bool {
        match &self.inner.l2 {
            Some(l2) => l2.tombstone(keys).await,
            None => true,
        }
    }

    /// Applies an invalidation published by another process: L1 and the generations only (the
    /// writer already wrote the L2 tombstones). When this returns, L1 serves no older value of
    /// the keys and results built from them are no longer current: the keys are marked stale
    /// and their generations bumped at once; the moka eviction and tombstones follow on the
    /// runtime that created this cache, so the (high-priority) consumer thread never waits for
    /// moka's maintenance.
    pub fn apply_remote(&self, inv: &Invalidation) {
        if let Some(generation) = inv.purge_all {
            self.purge_all(generation);
        }
        if let Some(l1) = &self.inner.l1 {
            l1.mark(&inv.keys);
        }
        for (key, _) in &inv.keys {
            self.inner.generations.bump(key);
        }
        if let Some(l1) = &self.inner.l1 {
            let l1 = l1.clone();
            let keys = inv.keys.clone();
            self.inner
                .runtime
                .spawn(async move { l1.apply_marks(&keys).await });
        }
    }

    /// Whether nothing `deps` was built from has been invalidated since (no generation bump,
    /// no L1 clear) and L1 is in use: a result computed only from those values is still
    /// current. O(deps) atomic loads, no locks (see [`RequestStats::deps`]).
    pub fn deps_current(&self, deps: &Deps) -> bool {
        self.active_l1(None).is_some()
            && self
                .inner
                .generations
                .unchanged(deps.epoch, &deps.snapshots)
    }

    /// A result derived from cached values, stored in L2 by [`TieredCache::put_derived`]: returned
    /// only while every key it was derived from still holds, in L2, a value of the version it was
    /// derived from (writers tombstone L2 before they acknowledge, so a write anywhere makes it
    /// unavailable at once). Two round trips (the result, then one script over its keys).
    pub async fn get_derived(&self, key: &str) -> Option<Vec<u8>> {
        let l2 = self.inner.l2.as_ref()?;
        let blob = l2.get_blob(key).await?;
        let (deps, body): (Vec<(String, i64)>, Vec<u8>) = postcard::from_bytes(&blob).ok()?;
        if deps.is_empty() || l2.versions_current(&deps).await? {
            Some(body)
        } else {
            None
        }
    }

    /// Stores `body`, derived from the values `deps` (key, version), for at most `ttl`.
    pub async fn put_derived(&self, key: &str, deps: &[(String, i64)], body: &[u8], ttl: Duration) {
        let Some(l2) = &self.inner.l2 else { return };
        let Ok(blob) = postcard::to_allocvec(&(deps, body)) else {
            return;
        };
        if blob.len() > self.inner.max_value_bytes {
            return;
        }
        l2.set_blob(key, &blob, ttl).await;
    }

    /// Whether an L2 tier is configured.
    pub fn has_l2(&self) -> bool {
        self.inner.l2.is_some()
    }

    /// L1's time to live, when L1 is on.
    pub fn l1_ttl(&self) -> Option<Duration> {
        self.inner.l1.as_ref().map(|_| self.inner.l1_ttl)
    }

    /// The registry the cache's metrics live in (callers may add their own).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Starts every (tier, kind) counter series of these key kinds at zero.
    pub fn declare_kinds(&self, kinds: &[&str]) {
        kinds
            .iter()
            .for_each(|k| self.inner.metrics.declare_kind(k));
    }

    /// Applies an operator purge of every cached value, `generation` being its change-log row:
    /// L1 is cleared, results built before stop being current, and L2 moves to a key namespace
    /// of that generation (the old values are never read again and age out by their TTL; no
    /// KEYS or SCAN). Idempotent: an older or repeated generation does nothing.
    pub fn purge_all(&self, generation: i64) {
        use std::sync::atomic::Ordering;
        if self.inner.purge.fetch_max(generation, Ordering::AcqRel) >= generation {
            return;
        }
        match &self.inner.l2 {
            // Clears L1 too (the namespace reset).
            Some(l2) => l2.renew_namespace(generation),
            None => self.clear_l1(),
        }
    }

    /// The newest purge of everything applied (0: none).
    pub fn purge_generation(&self) -> i64 {
        self.inner.purge.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Drops every L1 entry (e.g. when the bus reports that invalidations were lost); results
    /// built before are no longer current.
    pub fn clear_l1(&self) {
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
        }
        self.inner.generations.bump_epoch();
    }

    /// Tiers, breaker state, epoch and sizes.
    pub fn status(&self) -> CacheStatus {
        let inner = &*self.inner;
        CacheStatus {
            l1_enabled: inner.l1.is_some(),
            l2_enabled: inner.l2.is_some(),
            breaker: inner.l2.as_ref().map(L2::breaker_state),
            epoch: inner.l2.as_ref().map_or(0, L2::epoch),
            l1_weighted_bytes: inner.l1.as_ref().map_or(0, L1::weighted_size),
            l1_entries: inner.l1.as_ref().map_or(0, L1::entry_count),
            l2_round_trips: inner.l2.as_ref().map_or(0, L2::round_trips),
            pending_tombstones: inner.l2.as_ref().map_or(0, L2::pending_tombstones),
        }
    }

    /// Runs moka's pending maintenance (evictions, size accounting) now, so sizes and eviction
    /// counters are exact. Tests and diagnostics only.
    pub async fn run_pending_tasks(&self) {
        if let Some(l1) = &self.inner.l1 {
            l1.run_pending_tasks().await;
            self.inner
                .metrics
                .l1_weighted_bytes
                .set(l1.weighted_size() as i64);
        }
    }

    /// Whether L1 holds a tombstone that would refuse a fill of `version` for `key`.
    pub async fn l1_refuses(&self, key: &str, version: i64) -> bool {
        match &self.inner.l1 {
            Some(l1) => l1.is_tombstoned(key, version).await,
            None => false,
        }
    }

    /// The Redis key `key` is stored under in the current epoch, once Redis has been reached.
    pub fn redis_key(&self, key: &str) -> Option<String> {
        self.inner.l2.as_ref().and_then(|l2| l2.current_key(key))
    }

    /// The registry's metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let inner = &*self.inner;
        if let Some(l1) = &inner.l1 {
            inner
                .metrics
                .l1_weighted_bytes
                .set(l1.weighted_size() as i64);
        }
        TextEncoder::new()
            .encode_to_string(&inner.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}
