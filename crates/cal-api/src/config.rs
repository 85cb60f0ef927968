//! API limits and switches. Plain data: the binary decides where the values come from.

use crate::jwks::JwksSource;
use chrono::Duration;
use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// HS256 secret for bearer tokens: what [`crate::auth::mint`] signs with and, while
    /// `accept_hs256` is on, what HS256 tokens are checked against.
    pub jwt_secret: SecretString,
    /// Accept HS256 tokens (dev, tests, `calendar token`); the binary turns it off in prod when
    /// no `JWT_SECRET` is configured, leaving only JWKS-signed tokens.
    pub accept_hs256: bool,
    /// RS256/ES256 signing keys (a fixed set or a URL); `None`: HS256 only.
    pub jwks: Option<JwksSource>,
    /// Required `iss` of JWKS-signed tokens; `None`: not checked.
    pub jwt_issuer: Option<String>,
    /// Required `aud` of JWKS-signed tokens (one of theirs); `None`: not checked.
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    pub jwt_leeway: std::time::Duration,
    /// Development mode: GraphiQL on `GET /graphql` and schema introspection.
    pub dev_mode: bool,
    /// Longest `[from, to)` window a query may ask for.
    pub max_window: Duration,
    /// Largest `first` on a connection.
    pub max_page_size: usize,
    /// `first` when the client gives none.
    pub default_page_size: usize,
    /// Deepest selection set.
    pub max_depth: usize,
    /// Most aliased fields in one document (counted before execution).
    pub max_aliases: usize,
    /// Highest complexity (list fields multiply their children by `first`).
    pub max_complexity: usize,
    /// Most operations in one batched HTTP request.
    pub max_batch: usize,
    /// Most subscriptions one WebSocket connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// Most subscriptions one viewer may hold at once on this instance, over all connections.
    pub max_subscriptions_per_viewer: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most attendees, reservations or ids in one argument list.
    pub max_list_input: usize,
    /// How far ahead a recurring event's resource bookings are made.
    pub booking_horizon: Duration,
    /// Most occurrences one series may book in its horizon.
    pub max_booked_occurrences: usize,
    /// Answer plain queries by direct execution (`schema/direct.rs`) where it applies; `false`
    /// runs every request through async-graphql's executor (tests compare the two).
    pub direct_execution: bool,
    /// Operator secret for the `/admin` endpoints (`x-admin-token`); `None`: they answer 403.
    pub admin_token: Option<SecretString>,
    /// Most SQL statements one HTTP request may send (then `BUDGET_EXCEEDED`).
    pub max_request_statements: u64,
    /// Most rows one HTTP request may read (then `BUDGET_EXCEEDED`).
    pub max_request_rows: u64,
    /// Requests per viewer on `/graphql` (GET and POST) (see `rate_limit.rs`); `None`: no limit. Must pass
    /// [`crate::rate_limit::quota`] (the binary checks it when it reads its settings).
    pub rate_limit: Option<RateLimit>,
    /// Persisted queries: automatic (APQ, the default), a manifest's safelist, or off.
    pub persisted_queries: crate::persisted::PersistedMode,
    /// Origins whose browser scripts may call the API (CORS); none by default.
    pub cors_origins: CorsOrigins,
    /// Bound of the whole-response cache beside L1 (`response_cache.rs`; 0: off). It exists
    /// only while L1 is on.
    pub response_cache_bytes: u64,
    /// Failure injection for tests of crashes (never armed by a default).
    pub failpoints: Failpoints,
}

/// The whole-response cache's default bound.
pub const DEFAULT_RESPONSE_CACHE_BYTES: u64 = 512 * 1024 * 1024;

/// Failure injection for tests of what a crash costs. Off unless armed explicitly
/// (`CAL_FAILPOINTS`, see the README); never armed by any default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Failpoints {
    /// The process kills itself (SIGKILL) right after a write's commit, before any cache
    /// invalidation: its L1, its L2 tombstones and its relay never hear of the write (carried
    /// out by [`cal_sync::SyncConfig::kill_after_commit`]).
    pub kill_after_commit: bool,
    /// A GraphQL request carrying `x-failpoint: panic` panics in its handler.
    pub panic_in_handler: bool,
}

impl Failpoints {
    /// Parses a comma-separated list of failpoint names.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut fp = Self::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "kill-after-commit" => fp.kill_after_commit = true,
                "panic-in-handler" => fp.panic_in_handler = true,
                other => return Err(format!("unknown failpoint {other:?}")),
            }
        }
        Ok(fp)
    }
}

/// Which origins CORS lets in.
#[derive(Debug, Clone)]
pub enum CorsOrigins {
    /// Any origin (`Access-Control-Allow-Origin: *`; bearer tokens, no cookies).
    Any,
    /// Exactly these (`https://app.example.com`); an empty list lets none in.
    List(Vec<axum::http::HeaderValue>),
}

impl CorsOrigins {
    /// Parses a comma-separated list of origins, or `*`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let list = list.trim();
        if list == "*" {
            return Ok(Self::Any);
        }
        let mut origins = Vec::new();
        for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (scheme, rest) = origin
                .split_once("://")
                .ok_or_else(|| format!("{origin:?} is not an origin (scheme://host[:port])"))?;
            if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
                return Err(format!(
                    "{origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
            origins.push(
                axum::http::HeaderValue::from_str(origin)
                    .map_err(|_| format!("{origin:?} is not a valid header value"))?,
            );
        }
        Ok(Self::List(origins))
    }
}

/// A token bucket per viewer: `burst` requests at once, refilled at `per_second` (which may be
/// below 1: `0.1` is one request every ten seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl ApiConfig {
    /// Defaults suited to tests and development, with the given secret.
    pub fn new(jwt_secret: impl Into<String>) -> Self {
        Self {
            jwt_secret: SecretString::from(jwt_secret.into()),
            accept_hs256: true,
            jwks: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: crate::auth::DEFAULT_LEEWAY,
            dev_mode: false,
            max_window: Duration::days(62),
            max_page_size: 200,
            default_page_size: 50,
            max_depth: 12,
            max_aliases: 30,
            max_complexity: 20_000,
            max_batch: 10,
            max_subscriptions_per_connection: 20,
            max_subscriptions_per_viewer: 100,
            max_body_bytes: 256 * 1024,
            max_list_input: 200,
            booking_horizon: Duration::days(365),
            max_booked_occurrences: 1000,
            direct_execution: true,
            admin_token: None,
            max_request_statements: 200,
            max_request_rows: 200_000,
            rate_limit: None,
            persisted_queries: Default::default(),
            cors_origins: CorsOrigins::List(Vec::new()),
            response_cache_bytes: DEFAULT_RESPONSE_CACHE_BYTES,
            failpoints: Failpoints::default(),
        }
    }

    /// The runtime budget of one request.
    pub fn budget(&self) -> cal_storage::Budget {
        cal_storage::Budget {
            statements: self.max_request_statements,
            rows: self.max_request_rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_parse() {
        assert!(matches!(CorsOrigins::parse("*"), Ok(CorsOrigins::Any)));
        assert!(matches!(CorsOrigins::parse(""), Ok(CorsOrigins::List(l)) if l.is_empty()));
        let Ok(CorsOrigins::List(l)) =
            CorsOrigins::parse("https://app.example.com, http://localhost:3000")
        else {
            panic!("a list")
        };
        assert_eq!(l, ["https://app.example.com", "http://localhost:3000"]);
        for bad in ["app.example.com", "ftp://x", "https://x/path", "https://"] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
