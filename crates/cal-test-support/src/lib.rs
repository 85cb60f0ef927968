//! Test fixtures shared by the integration tests of every crate:
//! - [`TestDb`]: a fresh database per test, cloned from a template migrated once per migration set;
//! - [`TestApp`]: the real HTTP server on a random port over its own database, with GraphQL helpers.
//!
//! Tests talk to the real PostgreSQL at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

mod app;
mod db;

pub use app::{Gql, TEST_SECRET, TestApp};
pub use db::TestDb;
