//! The cache tiers as the API uses them: the cache with per-kind key specs (TTLs), and this
//! instance's [`Invalidator`] (the change log's side of the tiers, in `cal-sync`: the change
//! sink, the relay, the consumer and the consistency tokens). The whole-response cache beside L1
//! is not a tier of values: it lives in the application state (`response_cache.rs`, and
//! `http/caching.rs` for its decisions).

use cal_cache::{KeySpec, TieredCache};
use cal_domain::cache_keys::KeyKind;
use cal_sync::Invalidator;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The cache tiers as the API uses them.
pub struct Tiers {
    pub cache: TieredCache,
    /// Invalidation in and out: the store's change sink, started by the binary.
    pub sync: Arc<Invalidator>,
    ttls: HashMap<KeyKind, Duration>,
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
        Self { cache, sync, ttls }
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

    pub fn spec(&self, kind: KeyKind, key: String) -> KeySpec {
        KeySpec::new(key, kind.label(), self.ttls[&kind])
    }
}
