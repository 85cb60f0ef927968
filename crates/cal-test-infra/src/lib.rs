//! Test infrastructure that needs none of the service's crates, only the standard library: the
//! processes tests start of their own and the text they read back. The Kafka adapter's tests use
//! it directly, so they do not compile the GraphQL crate; `cal-test-support` (the app harness,
//! per-test databases, SQL) builds on it and re-exports all of it; xtask uses its tansu lookup,
//! flags and readiness probe (it has no dependencies, so it adds none to xtask's build). A tour
//! of the modules:
//! - `pg`: [`admin_url`], the shared PostgreSQL server's URL, and [`PgCluster`], a PostgreSQL
//!   cluster of the test's own, to stop, start and restart;
//! - `redis`: [`RedisServer`], a `redis-server` of the test's own, to kill and restart;
//! - `redis_cluster`: [`RedisCluster`], a Redis Cluster of the test's own (three primaries, three
//!   replicas), to kill, pause and resume nodes of and fail over;
//! - `kafka`: [`KafkaBroker`], a `tansu` Kafka-protocol broker of the test's own, to pause,
//!   resume and kill; where the `tansu` binary is ([`tansu_bin`], [`installed_tansu`],
//!   [`TANSU_BIN`]), the flags of its broker ([`configure_tansu_broker`]) and the Metadata
//!   request that tells it is ready ([`kafka_metadata_names`]);
//! - `metrics`: [`metric_sum`], a series' value in a `/metrics` scrape.

mod kafka;
mod metrics;
mod pg;
mod redis;
mod redis_cluster;

pub use kafka::{
    KafkaBroker, TANSU_BIN, configure_tansu_broker, installed_tansu, kafka_metadata_names,
    tansu_bin,
};
pub use metrics::metric_sum;
pub use pg::{PgCluster, admin_url, database_url};
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;
