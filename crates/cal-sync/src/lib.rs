//! The change log as the one source of invalidation, and everything that carries it between
//! instances. Knows the storage (`cal-storage`: the outbox rows and what they record) and the
//! cache tiers (`cal-cache`), nothing of GraphQL or HTTP.
//!
//! - [`Invalidator`]: this instance's side of it. As the store's change sink it evicts the
//!   writer's L1 and has the relay publish the write's change-log row (or tombstones L2 itself
//!   when no relay confirms); [`Invalidator::start`] runs the relay and the consumer until a
//!   shutdown signal, and [`Running::join`] waits for them.
//! - [`relay`]: claims change-log rows, writes their L2 tombstones, then publishes them on the
//!   bus, in id order; sweeps rows a dead writer left; sends heartbeats; prunes the log.
//! - [`progress`]: what this instance has applied of the stream, and the consistency tokens
//!   (stream positions) that mutations hand out and other instances wait for.
//! - [`trace`]: W3C trace context in and out of bus messages.
//! - [`feed`]: the calendars each delivered change-log row changed, for this instance's
//!   subscriptions.
//! - `invalidator`: where [`Invalidator`] lives, with [`invalidations`] (the cache keys a change
//!   set retires); `consumer`: the thread that applies other instances' invalidations, and the
//!   liveness monitor; `config`: [`SyncConfig`] and [`RelayConfig`], plain data; `metrics`: the
//!   stream's and the change log's Prometheus metrics.
//!
//! Write order, as the consistency argument needs it: the transaction commits (with its
//! change-log row) → local L1 eviction → the relay writes the row's L2 tombstones, then publishes
//! it on the bus (the writer tombstones L2 itself if no relay confirms in time). The mutation
//! answers only after the L1 eviction and (bounded) the publish, whose stream position is its
//! consistency token: the same instance never serves the old value, and another instance
//! presented the token waits until it has applied the stream up to it.
//!
//! Bounded staleness: in Kafka mode every relay sends heartbeats, and [`StreamProgress`] tracks
//! the freshest message this instance applied. When that is older than the liveness bound
//! (broker stalled, consumer disconnected or behind), the instance distrusts its L1 — reads
//! bypass and it is flushed — until the stream catches up. A stalled stream costs speed, never
//! correctness beyond the bound.

mod config;
mod consumer;
pub mod feed;
mod invalidator;
mod metrics;
pub mod progress;
pub mod relay;
pub mod trace;

pub use config::{RelayConfig, SyncConfig};
pub use invalidator::{Invalidator, Running, invalidations};
pub use progress::{StreamProgress, parse_token};
