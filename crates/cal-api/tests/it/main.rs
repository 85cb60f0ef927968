//! Integration tests of `cal-api`, one binary: the GraphQL API served over HTTP by the real app
//! (`cal_test_support::TestApp`, a fresh database each), from access rules and bad input to the
//! cache tiers, metrics, the HTTP protocol, real node clients and PostgreSQL/Redis outages. Each
//! module's `//!` says what it covers; `common` holds the shared seed and the month-view query.
//!
//! Data stays beside this folder: `tests/fixtures/` (test keys) and `tests/js/` (node clients),
//! both reached through `CARGO_MANIFEST_DIR`. `pg_restart` restarts a PostgreSQL cluster of its
//! own, `redis_failure` a `redis-server` and `redis_cluster` a Redis Cluster of their own, so
//! none disturbs the other modules; the connection-loss moment `pg_restart` records
//! (`cal_storage::pool_options`) is process-wide, but only pools built from `pool_options` read
//! it, and only `pg_restart` builds one here.

mod common;

mod access;
mod auth;
mod bad_input;
mod body_limit;
mod budget;
mod cache;
mod direct;
mod emails;
mod free_busy;
mod http_clients;
mod http_protocol;
mod metrics_contract;
mod month_view;
mod mutations;
mod pg_restart;
mod purge;
mod rate_limit;
mod recurrence;
mod redis_cluster;
mod redis_failure;
mod response_cache;
mod schema_contract;
mod subscriptions;
mod sync;
