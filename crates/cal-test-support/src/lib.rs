//! Test fixtures shared by the integration tests of every crate:
//! - [`TestDb`]: a fresh database per test, cloned from a template migrated once per migration set;
//! - [`TestApp`]: the real HTTP server on a random port over its own database, with GraphQL helpers;
//! - [`PgCluster`]: a PostgreSQL cluster of the test's own, to stop, start and restart;
//! - [`RedisServer`]: a `redis-server` of the test's own, to kill and restart;
//! - [`KafkaBroker`]: a `tansu` Kafka-protocol broker of the test's own, to pause, resume and kill;
//! - [`metric_sum`]: a series' value in a `/metrics` scrape.
//!
//! Tests talk to the real PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

mod app;
mod db;
mod kafka;
mod metrics;
mod pg;
mod redis;

pub use app::{Gql, TEST_ADMIN_TOKEN, TEST_SECRET, TestApp};
pub use db::{TestDb, admin_url, insert_outbox_row, one_hour_event};
pub use kafka::{KafkaBroker, tansu_bin};
pub use metrics::metric_sum;
pub use pg::PgCluster;
pub use redis::RedisServer;
