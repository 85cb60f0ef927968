//! The GraphQL API: schema, resolvers, per-request DataLoaders, authentication and the axum router.
//!
//! A tour:
//! - [`config`]: limits and switches, as a plain struct (the binary fills it from the environment);
//! - [`auth`]: bearer tokens (HS256 with the shared secret, RS256/ES256 from a JWKS) → the
//!   viewer's user id; [`jwks`]: the key sets, read from a file or fetched and refreshed;
//! - [`error`]: the one error enum and its stable `extensions.code`s;
//! - [`loaders`]: one set of DataLoaders per request, each batch one SQL statement;
//! - [`schema`]: the GraphQL types, queries and mutations (one root merged from calendar, event
//!   and booking parts, `schema/mutation/`); authorization happens in resolvers, after data is
//!   loaded, so loaded facts never depend on the viewer;
//! - [`limits`]: depth and complexity limits with a stable error code;
//! - [`live`]: the thread WebSocket connections are served on, at the invalidation consumer's
//!   priority, with the pool their messages are read with;
//! - [`tiers`]: cache key specs, the change sink that invalidates after commits, the bus consumer;
//! - [`http`]: the router (`/graphql` over GET and POST, `/health`, `/ready`), body and batch
//!   limits, debug stats; `http::wire` is the GraphQL-over-HTTP wire format (media types,
//!   `Accept`, strict request decoding), `http::conditional` the `ETag`/304 and caching headers;
//!   `body` reads a request body under its limit and answers an oversized one with a clean 413;
//! - [`persisted`]: persisted queries (Apollo's APQ in L1 and Redis, or a manifest's safelist);
//! - [`documents`]: parsed documents by query text;
//! - [`response_cache`]: whole answers of queries, in process and in Redis;
//! - [`observe`]: the HTTP and GraphQL operation spans, request metrics, trace-context helpers;
//! - [`rate_limit`]: per-viewer token buckets on `/graphql` (429 `RATE_LIMITED`);
//! - [`admin`]: operator endpoints behind the configured secret (`x-admin-token`):
//!   `POST /admin/purge` of a calendar, event, user, resource or everything, through the change log.
//!
//! This crate reads no environment variables and installs no global subscriber.

// The request handler's future nests async-graphql's deep execution futures.
#![recursion_limit = "256"]

pub mod admin;
pub mod auth;
mod body;
pub mod config;
pub mod documents;
pub mod error;
pub mod http;
pub mod jwks;
pub mod limits;
pub mod live;
pub mod loaders;
pub mod observe;
pub mod persisted;
pub mod rate_limit;
pub mod response_cache;
pub mod schema;
pub mod tiers;

pub use config::{ApiConfig, CorsOrigins, RateLimit};
pub use http::{AppState, router};
pub use persisted::{Manifest, PersistedMode};
pub use schema::{AppSchema, build_schema, warm};
