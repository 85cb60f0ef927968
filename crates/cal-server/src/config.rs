//! Configuration: defaults, then an optional TOML file (`--config` or `CALENDAR_CONFIG`), then
//! environment variables. Only this binary reads the environment.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `DATABASE_URL` | PostgreSQL URL; the database is created if missing | `postgres://postgres@127.0.0.1:5432/calendar` |
//! | `LISTEN_ADDR` | address to serve on | `127.0.0.1:8080` |
//! | `JWT_SECRET` | HS256 secret for bearer tokens (≥ 32 bytes); outside dev mode HS256 tokens are accepted only when it is set, and it or a JWKS source is required | a fixed dev secret in dev mode |
//! | `JWT_JWKS_FILE` | JWKS file with the RS256/ES256 keys of an external issuer, read at start-up (exclusive with `JWT_JWKS_URL`) | unset |
//! | `JWT_JWKS_URL` | `https://` (or `http://`) URL of a JWKS, fetched at start-up and refreshed in the background, keeping the last good set when a fetch fails | unset |
//! | `JWT_JWKS_REFRESH_SECS` | how often `JWT_JWKS_URL` is fetched (≥ 1); a token with an unknown `kid` fetches it early, at most once per 30 s | `300` |
//! | `JWT_ISSUER`, `JWT_AUDIENCE` | required `iss` / `aud` of JWKS-signed tokens; unset: not checked | unset |
//! | `JWT_LEEWAY_SECS` | clock skew allowed on `exp` and `nbf` (`0..=300`) | `30` |
//! | `ADMIN_TOKEN` | operator secret for `POST /admin/purge` (header `x-admin-token`, ≥ 16 bytes); unset: the admin endpoints answer 403 | unset |
//! | `CAL_ENV` | `dev` (GraphiQL, introspection, pretty logs) or `prod` | `dev` |
//! | `DB_MAX_CONNECTIONS` | pool size | `20` |
//! | `MAX_WINDOW_DAYS` | longest `from..to` window | `62` |
//! | `MAX_PAGE_SIZE` | largest `first` | `200` |
//! | `MAX_DEPTH`, `MAX_COMPLEXITY`, `MAX_ALIASES`, `MAX_BATCH`, `MAX_BODY_BYTES` | request limits | `12`, `20000`, `30`, `10`, `262144` |
//! | `MAX_REQUEST_STATEMENTS`, `MAX_REQUEST_ROWS` | runtime budget of one request (`BUDGET_EXCEEDED` past it) | `200`, `200000` |
//! | `RATE_LIMIT_PER_SECOND`, `RATE_LIMIT_BURST` | per-viewer limit on `/graphql` (GET and POST): a bucket of `BURST` requests per user (one shared by all requests without a valid token) refilled at `PER_SECOND` (may be fractional); more answer 429 `RATE_LIMITED` with `Retry-After`; set both or neither, `0`: off (so off in dev mode unless set) | `0`, `0` (off) |
//! | `PERSISTED_QUERIES` | `apq` (Apollo's automatic persisted queries, registered in L1 and Redis), `safelist` (only the operations of `PERSISTED_QUERY_MANIFEST` run), or `off` | `apq` |
//! | `PERSISTED_QUERY_MANIFEST` | path of an Apollo persisted-query manifest (`apollo-persisted-query-manifest`, version 1); required by `safelist` | unset |
//! | `CORS_ALLOWED_ORIGINS` | origins whose browser scripts may call the API, comma-separated (`https://app.example.com`), or `*` | unset: none in prod, `*` in dev |
//! | `SHUTDOWN_GRACE_SECS` | how long in-flight requests may drain on SIGTERM | `20` |
//! | `REDIS_URL` | Redis for the L2 cache; unset means L1 only | unset |
//! | `CACHE_L1`, `CACHE_L2` | switch a tier off (`false`) to measure the cold path | `true` |
//! | `CACHE_L1_MAX_BYTES`, `CACHE_L1_TTL_SECS` | L1 size bound and TTL | `134217728`, `300` |
//! | `CACHE_RESPONSE_MAX_BYTES` | bound of the whole-response cache beside L1 (0: off) | `536870912` |
//! | `CACHE_TTLS` | per-kind L2 TTL overrides, `kind=seconds,…` (kinds: `calendar_summary`, `month_bucket`, `event_full`, `event_attendees`, `event_reservations`, `user_profile`, `resource`, `resource_availability`) | unset (10 min, 5, 5, 2, 2, 30, 30, 1 min) |
//! | `CACHE_KEY_PREFIX` | prefix of every Redis key | `cal:` |
//! | `CACHE_WARM_CALENDARS` | most active calendars warmed at start-up (0: none) | `100` |
//! | `KAFKA_BROKERS` | Kafka bootstrap servers for cross-instance invalidation; unset means the in-process bus (one instance) | unset |
//! | `KAFKA_TOPIC`, `KAFKA_PARTITIONS` | invalidation topic, and its partitions when this instance creates it | `cache.invalidate`, `1` |
//! | `KAFKA_FETCH_WAIT_MS` | longest a consumer fetch waits at the broker (`fetch.wait.max.ms`); bounds the delivery delay on brokers that hold fetches | `5` |
//! | `INVALIDATION_THREAD_NICE` | nice value (`-20..=19`) of the threads that carry invalidations (librdkafka's, and the one applying them), ahead of request handling; needs `CAP_SYS_NICE` (else a warning, and normal priority); `0`: the process's priority | `-10` |
//! | `INVALIDATION_LIVENESS_MS` | with Kafka: distrust L1 when the stream's freshest message is older than this | `2000` |
//! | `CONSISTENCY_WAIT_MS` | how long a mutation waits for its invalidation's position, and a read for a presented token | `1000` |
//! | `RELAY_ENABLED`, `RELAY_GRACE_MS` | run this instance's outbox relay; age at which it takes over others' unpublished rows | `true`, `1000` |
//! | `OUTBOX_RETENTION_SECS`, `OUTBOX_PRUNE_INTERVAL_SECS` | how long published change-log (outbox) rows are kept (unpublished rows are never pruned); how often the pruner deletes older ones, in batches of 1,000 | `604800` (7 days), `60` |
//! | `CAL_FAILPOINTS` | failure injection for crash tests only: `kill-after-commit` (the process SIGKILLs itself right after a write's commit), `panic-in-handler` (a request with `x-failpoint: panic` panics); never set it in production | unset |
//! | `DB_SLOW_STATEMENT_MS` | SQL statements at least this slow are logged (warn, name only) and counted | `200` |
//! | `RUST_LOG` | log filter | `info,sqlx=warn` |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | OTLP/gRPC collector for traces (e.g. `http://jaeger:4317`); unset: no trace export | unset |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | trace resource (see `telemetry`) | `calendar`, unset |
//! | `OTEL_TRACES_SAMPLER_ARG` | share of root traces sampled (parent-based) | `1` |

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Used only in dev mode when no secret is configured. Tokens minted with it are worthless elsewhere.
pub const DEV_JWT_SECRET: &str = "dev-only-secret-change-me-dev-only-secret";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub database_url: String,
    pub listen_addr: String,
    #[serde(serialize_with = "no_secret")]
    pub jwt_secret: Option<SecretString>,
    pub jwt_jwks_file: Option<String>,
    pub jwt_jwks_url: Option<String>,
    pub jwt_jwks_refresh_secs: u64,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_secs: u64,
    #[serde(serialize_with = "no_secret")]
    pub admin_token: Option<SecretString>,
    pub cal_env: String,
    pub db_max_connections: u32,
    pub max_window_days: i64,
    pub max_page_size: usize,
    pub max_depth: usize,
    pub max_aliases: usize,
    pub max_request_statements: u64,
    pub max_request_rows: u64,
    pub max_complexity: usize,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    pub persisted_queries: String,
    pub persisted_query_manifest: Option<String>,
    pub cors_allowed_origins: Option<String>,
    pub shutdown_grace_secs: u64,
    pub redis_url: Option<String>,
    pub cache_l1: bool,
    pub cache_l2: bool,
    pub cache_l1_max_bytes: u64,
    pub cache_l1_ttl_secs: u64,
    pub cache_response_max_bytes: u64,
    pub cache_key_prefix: String,
    pub cache_ttls: Option<String>,
    pub cache_warm_calendars: i64,
    pub kafka_brokers: Option<String>,
    pub kafka_topic: String,
    pub kafka_partitions: i32,
    pub kafka_fetch_wait_ms: u64,
    pub invalidation_thread_nice: i32,
    pub invalidation_liveness_ms: u64,
    pub consistency_wait_ms: u64,
    pub relay_enabled: bool,
    pub relay_grace_ms: u64,
    pub outbox_retention_secs: u64,
    pub outbox_prune_interval_secs: u64,
    pub cal_failpoints: Option<String>,
    pub db_slow_statement_ms: u64,
}

fn no_secret<S: serde::Serializer>(_: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_none()
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/calendar".into(),
            listen_addr: "127.0.0.1:8080".into(),
            jwt_secret: None,
            jwt_jwks_file: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: cal_api::jwks::DEFAULT_REFRESH.as_secs(),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: cal_api::auth::DEFAULT_LEEWAY.as_secs(),
            admin_token: None,
            cal_env: "dev".into(),
            db_max_connections: 20,
            max_window_days: 62,
            max_page_size: 200,
            max_depth: 12,
            max_aliases: 30,
            max_request_statements: 200,
            max_request_rows: 200_000,
            max_complexity: 20_000,
            max_batch: 10,
            max_body_bytes: 256 * 1024,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 0,
            persisted_queries: "apq".to_owned(),
            persisted_query_manifest: None,
            cors_allowed_origins: None,
            shutdown_grace_secs: 20,
            redis_url: None,
            cache_l1: true,
            cache_l2: true,
            cache_l1_max_bytes: 128 * 1024 * 1024,
            cache_l1_ttl_secs: 300,
            cache_response_max_bytes: cal_api::tiers::DEFAULT_RESPONSE_CACHE_BYTES,
            cache_key_prefix: "cal:".into(),
            cache_ttls: None,
            cache_warm_calendars: 100,
            kafka_brokers: None,
            kafka_topic: "cache.invalidate".into(),
            kafka_partitions: 1,
            kafka_fetch_wait_ms: cal_bus_kafka::DEFAULT_FETCH_WAIT.as_millis() as u64,
            invalidation_thread_nice: -10,
            invalidation_liveness_ms: 2000,
            consistency_wait_ms: 1000,
            relay_enabled: true,
            relay_grace_ms: 1000,
            outbox_retention_secs: 7 * 24 * 3600,
            outbox_prune_interval_secs: 60,
            cal_failpoints: None,
            db_slow_statement_ms: 200,
        }
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(f) = file {
            if !f.exists() {
                bail!("configuration file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        let keys = [
            "DATABASE_URL",
            "LISTEN_ADDR",
            "JWT_SECRET",
            "JWT_JWKS_FILE",
            "JWT_JWKS_URL",
            "JWT_JWKS_REFRESH_SECS",
            "JWT_ISSUER",
            "JWT_AUDIENCE",
            "JWT_LEEWAY_SECS",
            "ADMIN_TOKEN",
            "CAL_ENV",
            "DB_MAX_CONNECTIONS",
            "MAX_WINDOW_DAYS",
            "MAX_PAGE_SIZE",
            "MAX_DEPTH",
            "MAX_ALIASES",
            "MAX_REQUEST_STATEMENTS",
            "MAX_REQUEST_ROWS",
            "MAX_COMPLEXITY",
            "MAX_BATCH",
            "MAX_BODY_BYTES",
            "RATE_LIMIT_PER_SECOND",
            "RATE_LIMIT_BURST",
            "PERSISTED_QUERIES",
            "PERSISTED_QUERY_MANIFEST",
            "CORS_ALLOWED_ORIGINS",
            "SHUTDOWN_GRACE_SECS",
            "REDIS_URL",
            "CACHE_L1",
            "CACHE_L2",
            "CACHE_L1_MAX_BYTES",
            "CACHE_L1_TTL_SECS",
            "CACHE_RESPONSE_MAX_BYTES",
            "CACHE_KEY_PREFIX",
            "CACHE_TTLS",
            "CACHE_WARM_CALENDARS",
            "KAFKA_BROKERS",
            "KAFKA_TOPIC",
            "KAFKA_PARTITIONS",
            "KAFKA_FETCH_WAIT_MS",
            "INVALIDATION_THREAD_NICE",
            "INVALIDATION_LIVENESS_MS",
            "CONSISTENCY_WAIT_MS",
            "RELAY_ENABLED",
            "RELAY_GRACE_MS",
            "OUTBOX_RETENTION_SECS",
            "OUTBOX_PRUNE_INTERVAL_SECS",
            "CAL_FAILPOINTS",
            "DB_SLOW_STATEMENT_MS",
        ];
        fig = fig.merge(
            Env::raw()
                .only(&keys)
                .map(|k| k.as_str().to_lowercase().into()),
        );
        let s: Settings = fig.extract().context("invalid configuration")?;
        s.ttls().context("invalid CACHE_TTLS")?;
        s.rate_limit()?;
        s.failpoints()
            .map_err(anyhow::Error::msg)
            .context("invalid CAL_FAILPOINTS")?;
        if !matches!(s.cal_env.as_str(), "dev" | "prod") {
            bail!("CAL_ENV must be `dev` or `prod`, not {:?}", s.cal_env);
        }
        s.check_auth()?;
        s.cors_origins()?;
        if !matches!(s.persisted_queries.as_str(), "apq" | "safelist" | "off") {
            bail!(
                "PERSISTED_QUERIES must be `apq`, `safelist` or `off`, not {:?}",
                s.persisted_queries
            );
        }
        if !(-20..=19).contains(&s.invalidation_thread_nice) {
            bail!(
                "INVALIDATION_THREAD_NICE must be a nice value between -20 and 19, not {}",
                s.invalidation_thread_nice
            );
        }
        Ok(s)
    }

    pub fn dev_mode(&self) -> bool {
        self.cal_env == "dev"
    }

    /// The token secret; outside dev mode it must be configured and long enough.
    pub fn secret(&self) -> Result<SecretString> {
        match &self.jwt_secret {
            Some(s) if s.expose_secret().len() >= 32 => Ok(s.clone()),
            Some(_) => bail!("JWT_SECRET must be at least 32 bytes"),
            None if self.dev_mode() => Ok(SecretString::from(DEV_JWT_SECRET)),
            None => bail!("JWT_SECRET is required when CAL_ENV=prod"),
        }
    }

    /// The HS256 secret the server accepts tokens with: `JWT_SECRET`, or the dev secret in dev
    /// mode; `None` in prod without `JWT_SECRET` (then only JWKS-signed tokens are accepted).
    fn hs256_secret(&self) -> Result<Option<SecretString>> {
        match &self.jwt_secret {
            Some(_) => self.secret().map(Some),
            None if self.dev_mode() => Ok(Some(SecretString::from(DEV_JWT_SECRET))),
            None => Ok(None),
        }
    }

    fn jwks_file(&self) -> Option<&str> {
        self.jwt_jwks_file.as_deref().filter(|f| !f.is_empty())
    }

    fn jwks_url(&self) -> Option<&str> {
        self.jwt_jwks_url.as_deref().filter(|u| !u.is_empty())
    }

    /// The token settings, checked without reading the JWKS file (that happens in
    /// [`Settings::api_config`]).
    fn check_auth(&self) -> Result<()> {
        if self.jwks_file().is_some() && self.jwks_url().is_some() {
            bail!("set JWT_JWKS_FILE or JWT_JWKS_URL, not both");
        }
        if let Some(url) = self.jwks_url()
            && !url.starts_with("https://")
            && !url.starts_with("http://")
        {
            bail!("JWT_JWKS_URL must be an https:// or http:// URL");
        }
        if self.jwt_jwks_refresh_secs == 0 {
            bail!("JWT_JWKS_REFRESH_SECS must be at least 1");
        }
        if self.jwt_leeway_secs > 300 {
            bail!(
                "JWT_LEEWAY_SECS must be at most 300 (clock skew, not a validity extension), not {}",
                self.jwt_leeway_secs
            );
        }
        if !self.dev_mode()
            && self.jwt_secret.is_none()
            && self.jwks_file().is_none()
            && self.jwks_url().is_none()
        {
            bail!("CAL_ENV=prod needs JWT_SECRET or a JWKS source (JWT_JWKS_FILE or JWT_JWKS_URL)");
        }
        Ok(())
    }

    /// Where RS256/ES256 keys come from; reads and checks the JWKS file.
    fn jwks_source(&self) -> Result<Option<cal_api::jwks::JwksSource>> {
        use cal_api::jwks::{JwksSource, KeySet};
        if let Some(file) = self.jwks_file() {
            let set = KeySet::from_file(file).with_context(|| format!("JWT_JWKS_FILE {file}"))?;
            return Ok(Some(JwksSource::Static(set)));
        }
        Ok(self.jwks_url().map(|url| JwksSource::Url {
            url: url.to_owned(),
            refresh: std::time::Duration::from_secs(self.jwt_jwks_refresh_secs),
        }))
    }

    pub fn cache_config(&self) -> cal_cache::CacheConfig {
        cal_cache::CacheConfig {
            l1_enabled: self.cache_l1,
            l2_enabled: self.cache_l2,
            l1_max_bytes: self.cache_l1_max_bytes,
            l1_ttl: std::time::Duration::from_secs(self.cache_l1_ttl_secs),
            redis_url: self.redis_url.clone().filter(|u| !u.is_empty()),
            key_prefix: self.cache_key_prefix.clone(),
            ..cal_cache::CacheConfig::default()
        }
    }

    /// The invalidation stream's settings; `shared` when a Kafka bus connects the instances.
    pub fn sync_config(&self, shared: bool) -> Result<cal_sync::SyncConfig, String> {
        use std::time::Duration;
        let mut c = if shared {
            let mut c = cal_sync::SyncConfig::shared();
            c.liveness = Some(Duration::from_millis(self.invalidation_liveness_ms));
            c
        } else {
            cal_sync::SyncConfig::default()
        };
        c.publish_wait = Duration::from_millis(self.consistency_wait_ms);
        c.token_wait = Duration::from_millis(self.consistency_wait_ms);
        c.relay.enabled = self.relay_enabled;
        c.relay.grace = Duration::from_millis(self.relay_grace_ms);
        c.relay.retention = Duration::from_secs(self.outbox_retention_secs);
        c.relay.prune_every = Duration::from_secs(self.outbox_prune_interval_secs.max(1));
        c.thread_nice = self.thread_nice();
        c.kill_after_commit = self.failpoints()?.kill_after_commit;
        Ok(c)
    }

    /// `CAL_FAILPOINTS`: failure injection, off unless set.
    pub fn failpoints(&self) -> Result<cal_api::tiers::Failpoints, String> {
        cal_api::tiers::Failpoints::parse(self.cal_failpoints.as_deref().unwrap_or(""))
    }

    /// `INVALIDATION_THREAD_NICE`, `None` for 0 (the process's priority).
    pub fn thread_nice(&self) -> Option<i32> {
        Some(self.invalidation_thread_nice).filter(|&n| n != 0)
    }

    /// Per-kind L2 TTL overrides (`CACHE_TTLS`).
    pub fn ttls(
        &self,
    ) -> Result<std::collections::HashMap<cal_domain::cache_keys::KeyKind, std::time::Duration>>
    {
        cal_domain::cache_keys::parse_ttls(self.cache_ttls.as_deref().unwrap_or(""))
            .map_err(anyhow::Error::msg)
    }

    /// `RATE_LIMIT_PER_SECOND` and `RATE_LIMIT_BURST`: `None` when both are 0 (off).
    pub fn rate_limit(&self) -> Result<Option<cal_api::RateLimit>> {
        let (per_second, burst) = (self.rate_limit_per_second, self.rate_limit_burst);
        if per_second == 0.0 && burst == 0 {
            return Ok(None);
        }
        if per_second == 0.0 || burst == 0 {
            bail!(
                "set both RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST to limit requests, or neither (got {per_second} and {burst})"
            );
        }
        let limit = cal_api::RateLimit { per_second, burst };
        cal_api::rate_limit::quota(&limit)
            .map_err(anyhow::Error::msg)
            .context("invalid RATE_LIMIT_PER_SECOND")?;
        Ok(Some(limit))
    }

    /// `CORS_ALLOWED_ORIGINS`: unset lets any origin in dev mode and none in prod.
    pub fn cors_origins(&self) -> Result<cal_api::CorsOrigins> {
        match self.cors_allowed_origins.as_deref() {
            None if self.dev_mode() => Ok(cal_api::CorsOrigins::Any),
            None => Ok(cal_api::CorsOrigins::List(Vec::new())),
            Some(list) => cal_api::CorsOrigins::parse(list)
                .map_err(anyhow::Error::msg)
                .context("invalid CORS_ALLOWED_ORIGINS"),
        }
    }

    /// `PERSISTED_QUERIES` and, for `safelist`, the manifest it reads.
    pub fn persisted_queries(&self) -> Result<cal_api::PersistedMode> {
        let manifest = self
            .persisted_query_manifest
            .as_deref()
            .filter(|p| !p.is_empty());
        match (self.persisted_queries.as_str(), manifest) {
            ("apq", None) => Ok(cal_api::PersistedMode::Automatic),
            ("off", None) => Ok(cal_api::PersistedMode::Off),
            ("safelist", Some(path)) => {
                let manifest = cal_api::Manifest::load(Path::new(path))
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("invalid PERSISTED_QUERY_MANIFEST {path}"))?;
                tracing::info!(operations = manifest.len(), "persisted-query safelist");
                Ok(cal_api::PersistedMode::Safelist(std::sync::Arc::new(
                    manifest,
                )))
            }
            ("safelist", None) => {
                bail!("PERSISTED_QUERIES=safelist needs PERSISTED_QUERY_MANIFEST (a manifest file)")
            }
            (mode, _) => bail!(
                "PERSISTED_QUERY_MANIFEST is read only with PERSISTED_QUERIES=safelist (not {mode:?})"
            ),
        }
    }

    pub fn kafka_brokers(&self) -> Option<&str> {
        self.kafka_brokers.as_deref().filter(|b| !b.is_empty())
    }

    pub fn api_config(&self) -> Result<cal_api::ApiConfig> {
        self.check_auth()?;
        let mut c = cal_api::ApiConfig::new("hs256-is-off-without-a-secret");
        match self.hs256_secret()? {
            Some(secret) => c.jwt_secret = secret,
            None => c.accept_hs256 = false,
        }
        c.jwks = self.jwks_source()?;
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        c.jwt_issuer = nonempty(&self.jwt_issuer);
        c.jwt_audience = nonempty(&self.jwt_audience);
        c.jwt_leeway = std::time::Duration::from_secs(self.jwt_leeway_secs);
        c.dev_mode = self.dev_mode();
        c.max_window = chrono::Duration::days(self.max_window_days);
        c.max_page_size = self.max_page_size;
        c.max_depth = self.max_depth;
        c.max_aliases = self.max_aliases;
        if self.max_request_statements == 0 || self.max_request_rows == 0 {
            bail!("MAX_REQUEST_STATEMENTS and MAX_REQUEST_ROWS must be at least 1");
        }
        c.max_request_statements = self.max_request_statements;
        c.max_request_rows = self.max_request_rows;
        c.max_complexity = self.max_complexity;
        c.max_batch = self.max_batch;
        c.max_body_bytes = self.max_body_bytes;
        c.rate_limit = self.rate_limit()?;
        c.persisted_queries = self.persisted_queries()?;
        c.cors_origins = self.cors_origins()?;
        c.admin_token = match &self.admin_token {
            Some(t) if t.expose_secret().len() >= 16 => Some(t.clone()),
            Some(_) => bail!("ADMIN_TOKEN must be at least 16 bytes"),
            None => None,
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cal-api/tests/fixtures/jwks.json"
    );

    fn prod(tweak: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = Settings {
            cal_env: "prod".into(),
            ..Settings::default()
        };
        tweak(&mut s);
        s
    }

    fn refused(s: Settings) -> String {
        format!("{:#}", s.api_config().expect_err("refused"))
    }

    #[test]
    fn prod_needs_a_secret_or_a_jwks_source() {
        assert!(refused(prod(|_| {})).contains("JWT_SECRET or a JWKS source"));
        // A JWKS file alone: RS256/ES256 only, HS256 off.
        let c = prod(|s| s.jwt_jwks_file = Some(JWKS.into()))
            .api_config()
            .unwrap();
        assert!(!c.accept_hs256);
        assert!(matches!(c.jwks, Some(cal_api::jwks::JwksSource::Static(ref k)) if k.len() == 3));
        // A secret alone: HS256 as before.
        let c = prod(|s| s.jwt_secret = Some(SecretString::from("x".repeat(32))))
            .api_config()
            .unwrap();
        assert!(c.accept_hs256 && c.jwks.is_none());
        // Dev mode keeps the dev secret next to a JWKS.
        let mut dev = Settings {
            jwt_jwks_url: Some("http://127.0.0.1:1/jwks".into()),
            jwt_issuer: Some("https://idp.test".into()),
            jwt_audience: Some(String::new()),
            ..Settings::default()
        };
        dev.jwt_leeway_secs = 5;
        let c = dev.api_config().unwrap();
        assert!(c.accept_hs256);
        assert_eq!(c.jwt_secret.expose_secret(), DEV_JWT_SECRET);
        assert!(matches!(
            c.jwks,
            Some(cal_api::jwks::JwksSource::Url { refresh, .. }) if refresh.as_secs() == 300
        ));
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://idp.test"));
        assert_eq!(c.jwt_audience, None, "empty means unset");
        assert_eq!(c.jwt_leeway.as_secs(), 5);
    }

    #[test]
    fn persisted_queries_and_cors_settings() {
        let c = prod(|s| s.jwt_secret = Some(SecretString::from("x".repeat(32))));
        assert!(matches!(
            c.persisted_queries().unwrap(),
            cal_api::PersistedMode::Automatic
        ));
        assert!(matches!(c.cors_origins().unwrap(), cal_api::CorsOrigins::List(l) if l.is_empty()));
        let dev = Settings::default();
        assert!(matches!(
            dev.cors_origins().unwrap(),
            cal_api::CorsOrigins::Any
        ));
        let mut s = c.clone();
        s.persisted_queries = "safelist".into();
        assert!(
            format!("{:#}", s.persisted_queries().unwrap_err())
                .contains("PERSISTED_QUERY_MANIFEST")
        );
        s.persisted_query_manifest = Some("/nonexistent/manifest.json".into());
        assert!(format!("{:#}", s.persisted_queries().unwrap_err()).contains("/nonexistent"));
        let dir = std::env::temp_dir().join(format!("pq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("manifest.json");
        std::fs::write(
            &file,
            r#"{"format":"apollo-persisted-query-manifest","version":1,"operations":[{"id":"x","name":"Me","type":"query","body":"query Me { me { id } }"}]}"#,
        )
        .unwrap();
        s.persisted_query_manifest = Some(file.display().to_string());
        assert!(matches!(
            s.persisted_queries().unwrap(),
            cal_api::PersistedMode::Safelist(m) if m.len() == 1
        ));
        s.persisted_queries = "apq".into();
        assert!(
            s.persisted_queries().is_err(),
            "a manifest without safelist"
        );
        let mut bad = c.clone();
        bad.cors_allowed_origins = Some("not-an-origin".into());
        assert!(format!("{:#}", bad.cors_origins().unwrap_err()).contains("CORS_ALLOWED_ORIGINS"));
    }

    #[test]
    fn bad_token_settings_stop_the_start_with_the_reason() {
        let both = refused(prod(|s| {
            s.jwt_jwks_file = Some(JWKS.into());
            s.jwt_jwks_url = Some("http://idp/jwks".into());
        }));
        assert!(both.contains("not both"), "{both}");
        let scheme = refused(prod(|s| s.jwt_jwks_url = Some("ftp://idp/jwks".into())));
        assert!(scheme.contains("http://"), "{scheme}");
        let missing = refused(prod(|s| {
            s.jwt_jwks_file = Some("/nonexistent/jwks.json".into())
        }));
        assert!(missing.contains("JWT_JWKS_FILE"), "{missing}");
        let leeway = refused(prod(|s| {
            s.jwt_jwks_file = Some(JWKS.into());
            s.jwt_leeway_secs = 301;
        }));
        assert!(leeway.contains("JWT_LEEWAY_SECS"), "{leeway}");
        let refresh = refused(prod(|s| {
            s.jwt_jwks_url = Some("http://idp/jwks".into());
            s.jwt_jwks_refresh_secs = 0;
        }));
        assert!(refresh.contains("JWT_JWKS_REFRESH_SECS"), "{refresh}");
        let short = refused(prod(|s| s.jwt_secret = Some(SecretString::from("short"))));
        assert!(short.contains("at least 32 bytes"), "{short}");
    }
}
