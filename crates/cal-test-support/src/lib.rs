//! Test fixtures shared by the integration tests of every crate. A tour of the modules:
//! - `db`: [`TestDb`], a fresh database per test, cloned from a template migrated once per
//!   migration set; [`one_hour_event`], the smallest event a test writes through the store;
//! - `app`: [`TestApp`], the real HTTP server on a random port over its own database, with
//!   GraphQL helpers ([`Gql`]);
//! - `pg`: [`PgCluster`], a PostgreSQL cluster of the test's own, to stop, start and restart;
//! - `redis`: [`RedisServer`], a `redis-server` of the test's own, to kill and restart;
//! - `kafka`: [`KafkaBroker`], a `tansu` Kafka-protocol broker of the test's own, to pause,
//!   resume and kill;
//! - `metrics`: [`metric_sum`], a series' value in a `/metrics` scrape;
//! - [`sql`]: the statements tests send themselves (rows edited by hand, old change-log rows,
//!   a held row lock, inspection of what the store wrote): besides `cal-storage` the only SQL,
//!   so no other crate's tests need sqlx.
//!
//! Tests talk to the real PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

mod app;
mod db;
mod kafka;
mod metrics;
mod pg;
mod redis;
pub mod sql;

pub use app::{Gql, TEST_ADMIN_TOKEN, TEST_SECRET, TestApp};
pub use db::{TestDb, admin_url, one_hour_event};
pub use kafka::{KafkaBroker, tansu_bin};
pub use metrics::metric_sum;
pub use pg::PgCluster;
pub use redis::RedisServer;
