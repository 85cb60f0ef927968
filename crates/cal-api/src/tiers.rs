//! The cache tiers as the API uses them: the cache with per-kind key specs (TTLs), the
//! whole-response cache, and this instance's [`Invalidator`] (the change log's side of the
//! tiers, in `cal-sync`: the change sink, the relay, the consumer and the consistency tokens).

use crate::response_cache::{ResponseCache, ResponseMetrics};
use cal_cache::{KeySpec, TieredCache};
use cal_domain::cache_keys::KeyKind;
use cal_sync::Invalidator;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The response cache's default bound.
pub const DEFAULT_RESPONSE_CACHE_BYTES: u64 = 512 * 1024 * 1024;

/// The cache tiers as the API uses them.
pub struct Tiers {
    pub cache: TieredCache,
    /// Whole responses built only from L1 entries (present when L1 is on).
    pub responses: Option<ResponseCache>,
    response_metrics: Option<ResponseMetrics>,
    /// Invalidation in and out: the store's change sink, started by the binary.
    pub sync: Arc<Invalidator>,
    ttls: HashMap<KeyKind, Duration>,
    failpoints: Failpoints,
}

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers")
            .field("cache", &self.cache)
            .field("sync", &self.sync)
            .finish()
    }
}

impl Tiers {
    /// `ttls` overrides the default L2 TTL of some kinds of keys; `sync` is the invalidator
    /// built over the same cache.
    pub fn new(
        cache: TieredCache,
        sync: Arc<Invalidator>,
        ttls: HashMap<KeyKind, Duration>,
    ) -> Self {
        let ttls = KeyKind::ALL
            .iter()
            .map(|k| (*k, ttls.get(k).copied().unwrap_or_else(|| k.default_ttl())))
            .collect();
        let response_metrics = ResponseMetrics::register(cache.registry())
            .inspect_err(|e| tracing::warn!(error = %e, "response cache metrics not registered"))
            .ok();
        let mut tiers = Self {
            cache,
            responses: None,
            response_metrics,
            sync,
            ttls,
            failpoints: Failpoints::default(),
        };
        tiers.set_response_cache_bytes(DEFAULT_RESPONSE_CACHE_BYTES);
        tiers
    }

    /// Tiers over `cache` with an invalidator of default settings on `bus` (tests, and a
    /// single instance).
    pub fn with_bus(
        cache: TieredCache,
        bus: Arc<dyn cal_cache::InvalidationBus>,
        origin: impl Into<String>,
    ) -> Self {
        let sync = Invalidator::new(cache.clone(), bus, origin.into(), Default::default());
        Self::new(cache, sync, HashMap::new())
    }

    /// Bounds the response cache at `bytes` (0 switches it off). It only exists with L1 on.
    pub fn with_response_cache_bytes(mut self, bytes: u64) -> Self {
        self.set_response_cache_bytes(bytes);
        self
    }

    /// The armed failpoints.
    pub fn failpoints(&self) -> Failpoints {
        self.failpoints
    }

    /// Arms failure injection (tests of crashes only).
    pub fn with_failpoints(self, failpoints: Failpoints) -> Self {
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

    pub fn spec(&self, kind: KeyKind, key: String) -> KeySpec {
        KeySpec::new(key, kind.label(), self.ttls[&kind])
    }
}

/// Failure injection for tests of what a crash costs. Off unless armed explicitly
/// (`CAL_FAILPOINTS`, see the README); never armed by any default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failpoints {
    /// The process kills itself (SIGKILL) right after a write's commit, before any cache
    /// invalidation: its L1, its L2 tombstones and its relay never hear of the write (carried
    /// out by [`cal_sync::SyncConfig::kill_after_commit`]).
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
