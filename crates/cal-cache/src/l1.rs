//! The in-process tier: a moka cache bounded by weight, with a per-entry TTL, plus a small moka
//! cache of tombstones (per key, the minimum version a fill must have). It stores type-erased
//! values and never talks to Redis or to a loader.
//!
//! Values are kept as `Arc<dyn Any + Send + Sync>` holding the `Option<V>` rather than as bytes:
//! an L1 hit is then a clone of `V` instead of a deserialization, which is the point of L1. The
//! weigher stays honest because the fill path serializes the value anyway (for L2 and for the
//! size limit) and records that length in the entry.

use std::{
    any::Any,
    sync::Arc,
    time::{Duration, Instant},
};

use moka::{
    Expiry,
    future::Cache,
    notification::RemovalCause,
    ops::compute::{CompResult, Op},
};

use crate::metrics::{L1 as TIER, Metrics};

/// Per-entry bookkeeping beyond the payload bytes (moka's own node, the Arc, the metadata).
pub(crate) const ENTRY_OVERHEAD: usize = 160;

/// Tombstones are bounded by count; losing one under extreme invalidation churn only reopens the
/// window that L2 tombstones and the short L1 TTL still cover.
const MAX_TOMBSTONES: u64 = 1_000_000;

#[derive(Clone)]
pub(crate) struct L1Entry {
    /// An `Option<V>` behind `dyn Any`.
    pub value: Arc<dyn Any + Send + Sync>,
    pub version: i64,
    /// Serialized length + key length + overhead, saturated to `u32`.
    pub weight: u32,
    /// This entry's L1 time to live.
    pub ttl: Duration,
    /// How long the value took to load (XFetch's delta).
    pub delta_ms: u64,
    /// When the value expires in the lowest tier that holds it (unix ms), for XFetch.
    pub expires_at_ms: u64,
    pub kind: &'static str,
    /// When this entry was written, so a single-flight leader can tell a fresh fill from the
    /// entry its own caller already rejected.
    pub filled_at: Instant,
    /// Unique per stored entry (see [`next_stamp`]): a reader that saw this stamp can later tell
    /// whether the entry it read is still the one L1 holds (nothing invalidated or replaced it).
    pub stamp: u64,
}

static STAMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A stamp no other L1 entry of this process carries.
pub(crate) fn next_stamp() -> u64 {
    STAMPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The outcome of a versioned fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FillOutcome {
    Stored,
    RefusedStale,
}

struct PerEntryTtl;

impl Expiry<String, L1Entry> for PerEntryTtl {
    fn expire_after_create(&self, _k: &String, v: &L1Entry, _at: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &String,
        v: &L1Entry,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

#[derive(Clone)]
pub(crate) struct L1 {
    entries: Cache<String, L1Entry>,
    tombstones: Cache<String, i64>,
}

impl L1 {
    pub fn new(max_bytes: u64, tombstone_ttl: Duration, metrics: &Metrics) -> Self {
        let evictions = metrics.evictions.clone();
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &String, v: &L1Entry| v.weight)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_k, v: L1Entry, cause: RemovalCause| {
                if cause.was_evicted() {
                    Metrics::inc(&evictions, TIER, v.kind);
                }
            })
            .build();
        let tombstones = Cache::builder()
            .max_capacity(MAX_TOMBSTONES)
            .time_to_live(tombstone_ttl)
            .build();
        Self {
            entries,
            tombstones,
        }
    }

    pub async fn get(&self, key: &str) -> Option<L1Entry> {
        self.entries.get(key).await
    }

    /// Stores `entry` unless a tombstone or the current entry carries a newer version. Runs under
    /// moka's per-key compute lock, like [`L1::invalidate`], so a fill can never slip between an
    /// invalidation's tombstone and its eviction.
    pub async fn fill(&self, key: &str, entry: L1Entry) -> FillOutcome {
        let tombstones = &self.tombstones;
        let version = entry.version;
        let result = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|existing| async move {
                if let Some(min) = tombstones.get(key).await
                    && version < min
                {
                    return Op::Nop;
                }
                if let Some(existing) = existing
                    && existing.value().version > version
                {
                    return Op::Nop;
                }
                Op::Put(entry)
            })
            .await;
        match result {
            CompResult::Inserted(_) | CompResult::ReplacedWith(_) => FillOutcome::Stored,
            _ => FillOutcome::RefusedStale,
        }
    }

    /// Whether a value of `version` would be refused by a remembered tombstone.
    pub async fn is_tombstoned(&self, key: &str, version: i64) -> bool {
        matches!(self.tombstones.get(key).await, Some(min) if version < min)
    }

    /// Evicts `key` and remembers that only versions `>= version` may be stored again.
    pub async fn invalidate(&self, key: &str, version: i64) {
        let tombstones = &self.tombstones;
        self.entries
            .entry_by_ref(key)
            .and_compute_with(|_| async move {
                let min = match tombstones.get(key).await {
                    Some(old) => old.max(version),
                    None => version,
                };
                tombstones.insert(key.to_owned(), min).await;
                Op::Remove
            })
            .await;
    }

    /// Drops every entry (tombstones stay: they are about versions, not about Redis's data).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    pub async fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks().await;
        self.tombstones.run_pending_tasks().await;
    }
}
