//! Test fixtures shared by the integration tests of every crate. A tour of the modules:
//! - `db`: [`TestDb`], a fresh database per test, cloned from a template migrated once per
//!   migration set; [`one_hour_event`], the smallest event a test writes through the store;
//! - `app`: [`TestApp`], the real HTTP server on a random port over its own database, with
//!   GraphQL helpers ([`Gql`]);
//! - [`sql`]: the statements tests send themselves (rows edited by hand, old change-log rows,
//!   a held row lock, inspection of what the store wrote): besides `cal-storage` the only SQL,
//!   so no other crate's tests need sqlx;
//! - [`dates`]: the month every fixture lives in ([`dates::ANCHOR`], fixed, and passed to the
//!   seed) and the instants and strings tests build from it, so that no test depends on the
//!   month the suite runs in;
//! - [`ws`]: a `graphql-transport-ws` client ([`ws::WsClient`]) for what the `graphql-ws`
//!   library cannot do: a socket with a small receive buffer that stops reading, many
//!   subscriptions on one connection.
//!
//! Everything of `cal-test-infra` is re-exported here, so a test that has the app harness needs
//! no second fixture crate: [`admin_url`] and [`PgCluster`] (a PostgreSQL cluster of the test's
//! own), [`RedisServer`], [`KafkaBroker`] (a `tansu` broker) and [`metric_sum`] (a series' value
//! in a `/metrics` scrape). A test that needs none of the service's crates (the Kafka adapter's)
//! depends on `cal-test-infra` alone, which compiles no GraphQL.
//!
//! Tests talk to the real PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

mod app;
pub mod dates;
mod db;
pub mod sql;
pub mod ws;

pub use app::{Gql, TEST_ADMIN_TOKEN, TEST_SECRET, TestApp};
pub use cal_test_infra::*;
pub use db::{TestDb, one_hour_event};
