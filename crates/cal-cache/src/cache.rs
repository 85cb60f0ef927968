//! [`TieredCache`]: batch read-through over L1 and L2 with one loader call per batch, versioned
//! fills, invalidation, single-flight and early refresh. It owns the order of operations; the
//! tiers own their storage. It must not interpret keys or values: keys are opaque strings built
//! by the caller and values are any `Serialize + DeserializeOwned` type.
//!
//! Single-flight keying: concurrent calls share one load when the sorted list of keys they still
//! miss after L1 and L2 is identical (e.g. 500 concurrent identical month views produce one
//! loader call). Overlapping but different batches are not merged: that would require splitting
//! one caller's loader across others' keys, and identical batches are the stampede that matters.
//! The leader loads and fills; followers clone its values. If the leader's loader fails, its
//! error goes to the leader only and each follower runs its own loader (the error type need not
//! be `Clone`). A leader first re-checks L1 for entries filled after its request started, so a
//! caller that arrives just after a flight finished does not load again.
//!
//! Serialization is postcard (compact, not self-describing): cached types must not rely on
//! `#[serde(flatten)]`, untagged enums or `skip_serializing_if`. Bump the key's version when a
//! cached type's shape changes.

use std::{
    any::Any,
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus::{Registry, TextEncoder};
use serde::{Serialize, de::DeserializeOwned};
use singleflight_async::SingleFlight;

use crate::{
    breaker::{Breaker, BreakerState},
    bus::Invalidation,
    config::{CacheConfig, KeySpec},
    error::CacheError,
    hooks::FillHooks,
    l1::{ENTRY_OVERHEAD, FillOutcome, L1, L1Entry, next_stamp},
    l2::{self, FillItem, L2, Stored},
    metrics::{self, Metrics},
    spans, xfetch,
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

/// Per-request counters a caller can pass to `get_many` and report (e.g. in a response
/// extension or a log line).
#[derive(Debug, Default)]
pub struct RequestStats {
    pub l1_hits: AtomicU64,
    pub l2_hits: AtomicU64,
    /// Keys found in neither tier (served by a loader, this caller's or another's).
    pub misses: AtomicU64,
    /// Keys this caller's own loader was asked for.
    pub loaded: AtomicU64,
    /// Keys this caller got from another caller's concurrent load.
    pub coalesced: AtomicU64,
    /// The L1 entries (key, stamp) whose values this caller was given; see [`RequestStats::deps`].
    deps: Mutex<Vec<(String, u64)>>,
    /// The keys and versions of every value this caller was given; see [`RequestStats::versions`].
    versions: Mutex<Vec<(String, i64)>>,
    /// Some value was given that no L1 entry holds (L1 off, fill refused, value too large).
    untracked: std::sync::atomic::AtomicBool,
    /// This caller must neither read nor fill L1 (e.g. it waits for invalidations not yet heard).
    bypass_l1: std::sync::atomic::AtomicBool,
}

/// A plain copy of [`RequestStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStatsSnapshot {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub loaded: u64,
    pub coalesced: u64,
}

impl RequestStats {
    fn record(&self, key: &str, version: i64, stamp: Option<u64>) {
        self.versions
            .lock()
            .unwrap()
            .push((key.to_owned(), version));
        match stamp {
            Some(stamp) => self.deps.lock().unwrap().push((key.to_owned(), stamp)),
            None => self.untracked.store(true, Ordering::Relaxed),
        }
    }

    /// Every key whose value this caller was given, with the value's version. While each key
    /// still holds a value of that version in L2, the values are unchanged (see
    /// [`TieredCache::get_derived`]).
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

    /// Marks the caller's result as depending on something the cache does not track.
    pub fn mark_untracked(&self) {
        self.untracked.store(true, Ordering::Relaxed);
    }

    /// Every L1 entry (key, stamp) whose value this caller was given, or `None` if some value
    /// came from elsewhere. While [`TieredCache::deps_current`] holds for the list, every one of
    /// those values is still what L1 would serve: a result computed only from them is current.
    pub fn deps(&self) -> Option<Vec<(String, u64)>> {
        if self.untracked.load(Ordering::Relaxed) {
            return None;
        }
        let mut deps = self.deps.lock().unwrap().clone();
        deps.sort_unstable();
        deps.dedup();
        Some(deps)
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
    if let Some(stats) = stats {
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

type SharedLoad = Option<Arc<dyn Any + Send + Sync>>;
/// Loaded values by key: value, version and the stamp of the L1 entry holding it (if stored).
type LoadedMap<V> = HashMap<String, (Option<V>, i64, Option<u64>)>;

struct Inner {
    l1: Option<L1>,
    /// Set while this process cannot trust its L1 (its invalidation stream is behind).
    l1_distrusted: std::sync::atomic::AtomicBool,
    l2: Option<L2>,
    l1_ttl: Duration,
    max_value_bytes: usize,
    xfetch_beta: f64,
    hooks: Option<Arc<dyn FillHooks>>,
    metrics: Metrics,
    registry: Registry,
    flights: SingleFlight<Vec<String>, SharedLoad>,
    /// The runtime [`TieredCache::new`] ran on: background work started from other threads.
    runtime: tokio::runtime::Handle,
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
    /// The value and its entry's stamp.
    Hit(Option<V>, i64, u64),
    /// Present but XFetch picked this caller to refresh it.
    Refresh,
    Miss,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn weight(payload_len: usize, key_len: usize) -> u32 {
    u32::try_from(payload_len + key_len + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

impl TieredCache {
    /// Builds the cache and registers its metrics in `registry`. Never connects to Redis here,
    /// so a Redis that is down (or absent) does not fail start-up. Must be called inside a
    /// Tokio runtime (it spawns the periodic Redis health check).
    pub async fn new(cfg: CacheConfig, registry: &Registry) -> Result<Self, CacheError> {
        let metrics = Metrics::register(registry)?;
        let l1 = cfg
            .l1_enabled
            .then(|| L1::new(cfg.l1_max_bytes, cfg.tombstone_ttl, &metrics));
        let l2 = match (&cfg.redis_url, cfg.l2_enabled) {
            (Some(url), true) => {
                let breaker = Breaker::new(
                    cfg.breaker_failures,
                    cfg.breaker_cooldown,
                    metrics.breaker_state.clone(),
                );
                let l1_for_reset = l1.clone();
                let on_reset = Box::new(move || {
                    if let Some(l1) = &l1_for_reset {
                        l1.clear();
                    }
                });
                Some(L2::new(
                    url,
                    cfg.key_prefix.clone(),
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
                l1_distrusted: std::sync::atomic::AtomicBool::new(false),
                l2,
                l1_ttl: cfg.l1_ttl,
                max_value_bytes: cfg.max_value_bytes,
                xfetch_beta: cfg.xfetch_beta,
                hooks: cfg.hooks.clone(),
                metrics,
                registry: registry.clone(),
                flights: SingleFlight::new(),
                runtime: tokio::runtime::Handle::current(),
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
    ) -> Result<Vec<Option<V>>, E>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send,
        F: FnOnce(Vec<usize>) -> Fut + Send,
        Fut: Future<Output = Result<Vec<Loaded<V>>, E>> + Send,
    {
        let inner = &*self.inner;
        let started = Instant::now();
        let n = keys.len();
        let mut out: Vec<Option<Option<V>>> = (0..n).map(|_| None).collect();

        // Duplicate keys in one request are looked up and loaded once.
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(n);
        let canon: Vec<usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| *first_of.entry(k.key.as_str()).or_insert(i))
            .collect();
        let unique: Vec<usize> = (0..n).filter(|&i| canon[i] == i).collect();

        let now = now_ms();
        let mut need_l2 = Vec::new();
        let mut need_db = Vec::new();

        // L1.
        match self.active_l1(stats) {
            Some(l1) => {
                let span = spans::tier(metrics::L1, unique.len());
                for &i in &unique {
                    let spec = &keys[i];
                    match self.l1_lookup::<V>(l1, &spec.key, now).await {
                        Lookup::Hit(v, version, stamp) => {
                            Metrics::inc(&inner.metrics.hits, metrics::L1, spec.kind);
                            bump(stats, |s| &s.l1_hits, 1);
                            if let Some(stats) = stats {
                                stats.record(&spec.key, version, Some(stamp));
                            }
                            out[i] = Some(v);
                        }
                        Lookup::Refresh => {
                            // L2 holds the same near-expiry value: go straight to the loader.
                            Metrics::inc(&inner.metrics.misses, metrics::L1, spec.kind);
                            need_db.push(i);
                        }
                        Lookup::Miss => {
                            Metrics::inc(&inner.metrics.misses, metrics::L1, spec.kind);
                            need_l2.push(i);
                        }
                    }
                }
                let hits = unique.len() - need_l2.len() - need_db.len();
                spans::found(&span, unique.len(), hits);
            }
            None => {
                if let Some(stats) = stats {
                    stats.mark_untracked();
                }
                need_l2 = unique
            }
        }

        // L2: one round trip for all of L1's misses.
        if !need_l2.is_empty() {
            match &inner.l2 {
                Some(l2) => {
                    let (span, before) = (spans::tier(metrics::L2, need_l2.len()), need_db.len());
                    self.l2_lookup(l2, keys, &need_l2, now, stats, &mut out, &mut need_db)
                        .instrument(span.clone())
                        .await;
                    let hits = need_l2.len() - (need_db.len() - before);
                    spans::found(&span, need_l2.len(), hits);
                }
                None => need_db.extend_from_slice(&need_l2),
            }
        }

        // The loader, once, for what is still missing.
        if !need_db.is_empty() {
            need_db.sort_unstable();
            bump(stats, |s| &s.misses, need_db.len());
            let span = spans::tier(metrics::DB, need_db.len());
            let loaded = self
                .load_shared(keys, &need_db, started, stats, load)
                .instrument(span.clone())
                .await?;
            for &i in &need_db {
                let found = loaded.get(&keys[i].key);
                if let Some(stats) = stats {
                    match found {
                        Some((_, version, stamp)) => stats.record(&keys[i].key, *version, *stamp),
                        None => stats.mark_untracked(),
                    }
                }
                out[i] = Some(found.and_then(|(v, _, _)| v.clone()));
            }
            let hits = need_db
                .iter()
                .filter(|&&i| matches!(out[i], Some(Some(_))))
                .count();
            spans::found(&span, need_db.len(), hits);
        }

        let mut result = Vec::with_capacity(n);
        for i in 0..n {
            let c = canon[i];
            let v = if c == i {
                out[i].clone()
            } else {
                out[c].clone()
            };
            result.push(v.flatten());
        }
        Ok(result)
    }

    /// L1, unless it is off, distrusted by the process, or bypassed by this caller.
    fn active_l1(&self, stats: Option<&RequestStats>) -> Option<&L1> {
        if self.inner.l1_distrusted.load(Ordering::Acquire)
            || stats.is_some_and(|s| s.bypass_l1.load(Ordering::Relaxed))
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
        V: Clone + 'static,
    {
        let Some(entry) = l1.get(key).await else {
            return Lookup::Miss;
        };
        let Some(value) = entry.value.downcast_ref::<Option<V>>() else {
            // Another type cached under this key: a caller bug; treat as a miss.
            return Lookup::Miss;
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
        Lookup::Hit(value.clone(), entry.version, entry.stamp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn l2_lookup<V>(
        &self,
        l2: &L2,
        keys: &[KeySpec],
        need_l2: &[usize],
        now: u64,
        stats: Option<&RequestStats>,
        out: &mut [Option<Option<V>>],
        need_db: &mut Vec<usize>,
    ) where
        V: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let inner = &*self.inner;
        let names: Vec<&str> = need_l2.iter().map(|&i| keys[i].key.as_str()).collect();
        let blobs = match l2.mget(&names).await {
            Some(blobs) if blobs.len() == need_l2.len() => blobs,
            _ => {
                need_db.extend_from_slice(need_l2);
                return;
            }
        };
        for (&i, blob) in need_l2.iter().zip(blobs) {
            let spec = &keys[i];
            let found = blob.as_deref().and_then(l2::decode).and_then(|s| match s {
                Stored::Value {
                    version,
                    delta_ms,
                    expires_at_ms,
                    payload,
                } => postcard::from_bytes::<Option<V>>(payload)
                    .ok()
                    .map(|v| (version, delta_ms, expires_at_ms, payload.len(), v)),
                Stored::Tombstone { .. } => None,
            });
            let Some((version, delta_ms, expires_at_ms, len, value)) = found else {
                Metrics::inc(&inner.metrics.misses, metrics::L2, spec.kind);
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
                Metrics::inc(&inner.metrics.misses, metrics::L2, spec.kind);
                need_db.push(i);
                continue;
            }
            let mut stamp = None;
            if let Some(l1) = self.active_l1(stats) {
                let left = Duration::from_millis(expires_at_ms.saturating_sub(now).max(1));
                let entry_stamp = next_stamp();
                let entry = L1Entry {
                    value: Arc::new(value.clone()),
                    version,
                    weight: weight(len, spec.key.len()),
                    ttl: inner.l1_ttl.min(spec.ttl).min(left),
                    delta_ms,
                    expires_at_ms,
                    kind: spec.kind,
                    filled_at: Instant::now(),
                    stamp: entry_stamp,
                };
                match l1.fill(&spec.key, entry).await {
                    FillOutcome::Stored => {
                        stamp = Some(entry_stamp);
                        Metrics::inc(&inner.metrics.fills, metrics::L1, spec.kind)
                    }
                    FillOutcome::RefusedStale => {
                        // This process already saw an invalidation newer than the L2 copy
                        // (e.g. Redis was unreachable for the writer's tombstone): don't serve it.
                        Metrics::inc(&inner.metrics.refused_stale, metrics::L1, spec.kind);
                        Metrics::inc(&inner.metrics.misses, metrics::L2, spec.kind);
                        need_db.push(i);
                        continue;
                    }
                }
            }
            Metrics::inc(&inner.metrics.hits, metrics::L2, spec.kind);
            bump(stats, |s| &s.l2_hits, 1);
            if let Some(stats) = stats {
                stats.record(&spec.key, version, stamp);
            }
            out[i] = Some(value);
        }
    }

    /// Runs the loader through the single-flight group keyed on the sorted missing keys.
    async fn load_shared<V, E, F, Fut>(
        &self,
        keys: &[KeySpec],
        missing: &[usize],
        started: Instant,
        stats: Option<&RequestStats>,
        load: F,
    ) -> Result<Arc<LoadedMap<V>>, E>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        E: Send,
        F: FnOnce(Vec<usize>) -> Fut + Send,
        Fut: Future<Output = Result<Vec<Loaded<V>>, E>> + Send,
    {
        let mut flight_key: Vec<String> = missing.iter().map(|&i| keys[i].key.clone()).collect();
        flight_key.sort_unstable();
        // The loader is FnOnce and the single-flight closure may not run (we are a follower):
        // keep it in a slot so we can still run it ourselves if the leader fails.
        let load_slot = Mutex::new(Some(load));
        let err_slot: Mutex<Option<E>> = Mutex::new(None);
        let shared = self
            .inner
            .flights
            .work(flight_key, || async {
                let load = load_slot.lock().unwrap().take()?;
                match self
                    .load_and_fill(keys, missing, started, stats, load)
                    .await
                {
                    Ok(map) => Some(map as Arc<dyn Any + Send + Sync>),
                    Err(e) => {
                        *err_slot.lock().unwrap() = Some(e);
                        None
                    }
                }
            })
            .await;
        if let Some(e) = err_slot.into_inner().unwrap() {
            return Err(e);
        }
        let load = load_slot.into_inner().unwrap();
        let led = load.is_none();
        if let Some(map) = shared.and_then(|any| any.downcast::<LoadedMap<V>>().ok()) {
            if !led {
                for &i in missing {
                    Metrics::inc(&self.inner.metrics.coalesced, metrics::DB, keys[i].kind);
                }
                bump(stats, |s| &s.coalesced, missing.len());
            }
            return Ok(map);
        }
        // The leader failed (its error went to it) or produced another type: load ourselves.
        let load = load.expect("a leader always returns a result or an error");
        self.load_and_fill(keys, missing, started, stats, load)
            .await
    }

    /// Calls the loader for `missing` (minus entries filled since the request started), then
    /// fills L2 and L1 with version checks.
    async fn load_and_fill<V, E, F, Fut>(
        &self,
        keys: &[KeySpec],
        missing: &[usize],
        started: Instant,
        stats: Option<&RequestStats>,
        load: F,
    ) -> Result<Arc<LoadedMap<V>>, E>
    where
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<Loaded<V>>, E>>,
    {
        let inner = &*self.inner;
        let mut map: LoadedMap<V> = HashMap::with_capacity(missing.len());
        let mut still = Vec::with_capacity(missing.len());
        for &i in missing {
            if let Some(l1) = self.active_l1(stats)
                && let Some(entry) = l1.get(&keys[i].key).await
                && entry.filled_at >= started
                && let Some(v) = entry.value.downcast_ref::<Option<V>>()
            {
                map.insert(
                    keys[i].key.clone(),
                    (v.clone(), entry.version, Some(entry.stamp)),
                );
                continue;
            }
            still.push(i);
        }
        if still.is_empty() {
            return Ok(Arc::new(map));
        }

        let t0 = Instant::now();
        let loaded = load(still.clone()).await?;
        let delta_ms = ms(t0.elapsed());
        bump(stats, |s| &s.loaded, still.len());
        let names: Vec<String> = still.iter().map(|&i| keys[i].key.clone()).collect();
        if let Some(hooks) = &inner.hooks {
            hooks.after_load(&names).await;
        }

        struct Prepared<V> {
            index: usize,
            value: Option<V>,
            version: i64,
            payload: Option<Vec<u8>>,
            stamp: Option<u64>,
        }
        let mut wanted: HashSet<usize> = still.iter().copied().collect();
        let mut prepared = Vec::with_capacity(still.len());
        for item in loaded {
            if !wanted.remove(&item.index) {
                continue; // not asked for, or answered twice
            }
            let kind = keys[item.index].kind;
            let counter = if item.value.is_some() {
                &inner.metrics.hits
            } else {
                &inner.metrics.misses
            };
            Metrics::inc(counter, metrics::DB, kind);
            let payload = match postcard::to_allocvec(&item.value) {
                Ok(p) if p.len() <= inner.max_value_bytes => Some(p),
                Ok(_) => {
                    Metrics::inc(&inner.metrics.oversize, metrics::DB, kind);
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind, "value could not be serialized; not cached");
                    None
                }
            };
            prepared.push(Prepared {
                index: item.index,
                value: item.value,
                version: item.version,
                payload,
                stamp: None,
            });
        }

        let now = now_ms();
        // L2 first: its answer (refused as stale) also stops the L1 fill, which covers a
        // writer in another process whose bus message has not arrived yet.
        let mut in_l2 = vec![false; prepared.len()];
        let mut refused = vec![false; prepared.len()];
        if let Some(l2) = &inner.l2 {
            let mut slots = Vec::new();
            let mut items = Vec::new();
            for (p_idx, p) in prepared.iter().enumerate() {
                if let Some(payload) = &p.payload {
                    let spec = &keys[p.index];
                    slots.push(p_idx);
                    items.push(FillItem {
                        key: &spec.key,
                        version: p.version,
                        ttl: spec.ttl,
                        blob: l2::encode_value(p.version, delta_ms, now + ms(spec.ttl), payload),
                    });
                }
            }
            if let Some(flags) = l2.fill(&items).await {
                for (p_idx, stored) in slots.into_iter().zip(flags) {
                    let kind = keys[prepared[p_idx].index].kind;
                    if stored {
                        in_l2[p_idx] = true;
                        Metrics::inc(&inner.metrics.fills, metrics::L2, kind);
                    } else {
                        refused[p_idx] = true;
                        Metrics::inc(&inner.metrics.refused_stale, metrics::L2, kind);
                    }
                }
            }
        }
        if let Some(l1) = self.active_l1(stats) {
            for (p_idx, p) in prepared.iter_mut().enumerate() {
                let Some(payload) = &p.payload else { continue };
                let spec = &keys[p.index];
                if refused[p_idx] {
                    Metrics::inc(&inner.metrics.refused_stale, metrics::L1, spec.kind);
                    continue;
                }
                let ttl = inner.l1_ttl.min(spec.ttl);
                // XFetch aims at the expiry that sends callers to the loader: L2's if the value
                // is there, otherwise L1's.
                let lowest = if in_l2[p_idx] { spec.ttl } else { ttl };
                let entry = L1Entry {
                    value: Arc::new(p.value.clone()),
                    version: p.version,
                    weight: weight(payload.len(), spec.key.len()),
                    ttl,
                    delta_ms,
                    expires_at_ms: now + ms(lowest),
                    kind: spec.kind,
                    filled_at: Instant::now(),
                    stamp: next_stamp(),
                };
                let stamp = entry.stamp;
                let counter = match l1.fill(&spec.key, entry).await {
                    FillOutcome::Stored => {
                        p.stamp = Some(stamp);
                        &inner.metrics.fills
                    }
                    FillOutcome::RefusedStale => &inner.metrics.refused_stale,
                };
                Metrics::inc(counter, metrics::L1, spec.kind);
            }
        }
        if let Some(hooks) = &inner.hooks {
            hooks.after_fill(&names).await;
        }
        for p in prepared {
            map.insert(keys[p.index].key.clone(), (p.value, p.version, p.stamp));
        }
        Ok(Arc::new(map))
    }

    /// Call after committing: every `(key, new_version)` gets a tombstone in L1 (the minimum
    /// version a later fill must carry) and then in L2 (one script call replacing older values
    /// with `T{version}` for `tombstone_ttl`). A fill with an older version, e.g. from a reader
    /// that loaded before the commit, is then refused in both tiers. Publish the same list on
    /// the [`crate::InvalidationBus`] so other processes evict their L1.
    ///
    /// If Redis is unreachable the L2 tombstones are kept and written before this process's next
    /// L2 read or fill (or by the periodic health check); until then other processes rely on
    /// the bus message (their L1 tombstones refuse the old L2 value).
    pub async fn invalidate(&self, keys: &[(String, i64)]) {
        if let Some(l1) = &self.inner.l1 {
            for (key, version) in keys {
                l1.invalidate(key, *version).await;
            }
        }
        if let Some(l2) = &self.inner.l2 {
            l2.tombstone(keys).await;
        }
    }

    /// Applies an invalidation published by another process: L1 only (the writer already wrote
    /// the L2 tombstones). When this returns, L1 serves no older value of the keys: they are
    /// marked stale at once; the moka eviction and tombstones follow on the runtime that created
    /// this cache, so the (high-priority) consumer thread never waits for moka's maintenance.
    pub fn apply_remote(&self, inv: &Invalidation) {
        if let Some(l1) = &self.inner.l1 {
            l1.mark(&inv.keys);
            let l1 = l1.clone();
            let keys = inv.keys.clone();
            self.inner
                .runtime
                .spawn(async move { l1.apply_marks(&keys).await });
        }
    }

    /// Whether every `(key, stamp)` is still the entry L1 holds for `key`: nothing invalidated,
    /// replaced or expired any of them since they were read (see [`RequestStats::deps`]).
    pub async fn deps_current(&self, deps: &[(String, u64)]) -> bool {
        let Some(l1) = self.active_l1(None) else {
            return false;
        };
        for (key, stamp) in deps {
            match l1.get(key).await {
                Some(entry) if entry.stamp == *stamp => {}
                _ => return false,
            }
        }
        true
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

    /// Drops every L1 entry (e.g. when the bus reports that invalidations were lost).
    pub fn clear_l1(&self) {
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
        }
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
