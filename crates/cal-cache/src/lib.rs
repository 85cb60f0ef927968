//! A two-tier read-through cache: an in-process moka tier (L1) over an optional Redis tier (L2),
//! generic over the cached value. It owns batching, versioned fills, single-flight, early refresh,
//! Redis failure handling and cache metrics. It must not know about SQL, GraphQL or the domain:
//! callers build the keys, say how long they live, and hand in one loader per batch.
//!
//! A tour of the modules:
//!
//! - [`config`]: [`CacheConfig`] and [`KeySpec`] (one key of a request: the string, a metrics
//!   label and the L2 TTL).
//! - [`cache`]: [`TieredCache`], the only entry point: `get_many`, `invalidate`, `apply_remote`,
//!   `status`, `render`.
//! - `l1`: the moka tier and its per-key tombstones (minimum acceptable versions).
//! - `l2`: the Redis tier: key namespacing, the compare-version Lua scripts, timeouts, the circuit
//!   breaker and detection of a Redis that restarted (`run_id` change).
//! - `breaker`: the circuit breaker state machine, no I/O.
//! - [`xfetch`]: the probabilistic early-refresh decision, a pure function.
//! - [`bus`]: the [`InvalidationBus`] trait and its in-process implementation.
//! - [`hooks`]: [`FillHooks`], test hooks around a fill.
//! - `generations`: invalidation generations, a fixed table of counters per key-hash slot bumped
//!   by every invalidation, plus the epoch every L1 clear bumps: what the whole-response cache
//!   checks and what single-flight keys carry.
//! - [`priority`]: the nice value of the threads that carry invalidations (librdkafka's inherit
//!   it from the thread that creates them).
//! - `error`: [`CacheError`], why a cache could not be built (never Redis being down).
//! - `metrics`: the Prometheus counters and gauges.
//! - `trace_spans`: the tracing spans of a lookup batch (one per tier step).
//!
//! The cache is never the source of truth: a Redis failure becomes a loader call and a metric,
//! never an error returned to the caller. The only errors `get_many` returns are the loader's.

mod breaker;
pub mod bus;
pub mod cache;
pub mod config;
mod error;
mod generations;
pub mod hooks;
mod l1;
mod l2;
mod metrics;
pub mod priority;
mod trace_spans;
pub mod xfetch;

pub use breaker::BreakerState;
pub use bus::{BusError, InProcessBus, Invalidation, InvalidationBus, Position};
pub use cache::{
    CacheStatus, Deps, Loaded, RequestStats, RequestStatsSnapshot, TieredCache, now_ms,
};
pub use config::{CacheConfig, KeySpec};
pub use error::CacheError;
pub use get_size2::GetSize;
pub use hooks::FillHooks;
