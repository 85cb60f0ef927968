//! Plain configuration structs for the cache. This module reads no environment and parses no
//! files: the binary builds a [`CacheConfig`] and hands it in.

use std::{fmt, sync::Arc, time::Duration};

use crate::hooks::FillHooks;

/// One key of a `get_many` request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec {
    /// The caller-built key, e.g. `v1:event:42:full`; it should carry a shape version.
    pub key: String,
    /// A low-cardinality label for metrics, e.g. `event`.
    pub kind: &'static str,
    /// How long the value lives in Redis; the L1 copy never outlives it.
    pub ttl: Duration,
}

impl KeySpec {
    /// Shorthand constructor.
    pub fn new(key: impl Into<String>, kind: &'static str, ttl: Duration) -> Self {
        Self {
            key: key.into(),
            kind,
            ttl,
        }
    }
}

/// Cache configuration. `Default` gives the production defaults with L2 switched off until a
/// `redis_url` is set.
#[derive(Clone)]
pub struct CacheConfig {
    /// Use the in-process tier.
    pub l1_enabled: bool,
    /// Use the Redis tier (only if `redis_url` is also set).
    pub l2_enabled: bool,
    /// Bound on the L1 weight: serialized value size + key length + a fixed overhead per entry.
    pub l1_max_bytes: u64,
    /// L1 time to live; an entry's L1 TTL is `min(l1_ttl, key's L2 TTL)`.
    pub l1_ttl: Duration,
    /// `None`: L1 only (unless `redis_cluster_nodes` is set).
    pub redis_url: Option<String>,
    /// Some nodes of a Redis Cluster (`host:port` or `redis://host:port`); when set, L2 is that
    /// cluster and `redis_url` is ignored.
    pub redis_cluster_nodes: Vec<String>,
    /// Timeout of every Redis round trip.
    pub redis_timeout: Duration,
    /// Consecutive Redis failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe is let through.
    pub breaker_cooldown: Duration,
    /// Values whose serialized form is larger than this are not cached at all.
    pub max_value_bytes: usize,
    /// How long an invalidation's tombstone (minimum acceptable version) lives, in L1 and L2.
    pub tombstone_ttl: Duration,
    /// XFetch `beta`: larger refreshes earlier; 0 disables early refresh.
    pub xfetch_beta: f64,
    /// Prepended to every Redis key (`cal:` in production, unique per test).
    pub key_prefix: String,
    /// How often Redis's `run_id` is checked in the background (it is also checked after any
    /// Redis error and whenever the breaker closes again).
    pub health_check_interval: Duration,
    /// Test hooks around fills.
    pub hooks: Option<Arc<dyn FillHooks>>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            l1_enabled: true,
            l2_enabled: true,
            l1_max_bytes: 128 * 1024 * 1024,
            l1_ttl: Duration::from_secs(300),
            redis_url: None,
            redis_cluster_nodes: Vec::new(),
            redis_timeout: Duration::from_millis(100),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(2),
            max_value_bytes: 1024 * 1024,
            tombstone_ttl: Duration::from_secs(300),
            xfetch_beta: 1.0,
            key_prefix: "cal:".to_owned(),
            health_check_interval: Duration::from_secs(5),
            hooks: None,
        }
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: only say whether it is set.
        f.debug_struct("CacheConfig")
            .field("l1_enabled", &self.l1_enabled)
            .field("l2_enabled", &self.l2_enabled)
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field("l1_ttl", &self.l1_ttl)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("redis_cluster_nodes", &self.redis_cluster_nodes.len())
            .field("redis_timeout", &self.redis_timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("tombstone_ttl", &self.tombstone_ttl)
            .field("xfetch_beta", &self.xfetch_beta)
            .field("key_prefix", &self.key_prefix)
            .field("health_check_interval", &self.health_check_interval)
            .field("hooks", &self.hooks.as_ref().map(|_| "<set>"))
            .finish()
    }
}
