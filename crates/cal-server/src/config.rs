//! Configuration: defaults, then an optional TOML file (`--config` or `CALENDAR_CONFIG`), then
//! environment variables. Only this binary reads the environment.
//!
//! Every variable is listed once, in [`VARIABLES`]: its name, its default as users read it, and
//! who reads it (what it sets is said once, in the README's configuration table). The loader reads exactly the variables listed for it (any other is
//! ignored); the tests at the end of this file hold the README's configuration table and
//! `deploy/calendar.env.example` to the list, and its defaults to the ones the code uses. Adding
//! a variable means a line in [`VARIABLES`], a field of `Raw`, a row of the README's table and a
//! line of the example.
//!
//! [`Settings::load`] extracts a flat `Raw` (one field per variable, named after it in lower
//! case, which is also the key a TOML file uses), whose `Default` holds every default, and groups
//! it by concern into [`Settings`]: [`HttpSettings`], [`DbSettings`], [`AuthSettings`],
//! [`LimitSettings`], [`PersistedQuerySettings`], [`CacheSettings`], [`BusSettings`] and
//! [`SyncSettings`], beside the [`Environment`] (`CAL_ENV`). Logs and traces (`RUST_LOG`,
//! `OTEL_*`) are read by `cal_server::telemetry`.

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// Used only in dev mode when no secret is configured. Tokens minted with it are worthless elsewhere.
pub const DEV_JWT_SECRET: &str = "dev-only-secret-change-me-dev-only-secret";

/// One environment variable of the service.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    /// As the README's configuration table shows it: a literal in backticks (`` `300` ``) for a
    /// value the variable takes when unset, else `unset` or a short phrase.
    #[allow(dead_code)] // read by the tests, which hold the README and the example to it
    pub default: &'static str,
    pub reader: Reader,
}

/// Who reads a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// [`Settings::load`]; a TOML file sets it too, under its name in lower case.
    Settings,
    /// `cal_server::telemetry` (`TelemetryConfig::from_env`) or the OpenTelemetry SDK.
    Telemetry,
}

const fn var(name: &'static str, default: &'static str) -> Var {
    Var {
        name,
        default,
        reader: Reader::Settings,
    }
}

const fn telemetry(name: &'static str, default: &'static str) -> Var {
    Var {
        name,
        default,
        reader: Reader::Telemetry,
    }
}

/// Every environment variable the service reads, in the order of the README's table. The one
/// list: [`Settings::load`] reads exactly the [`Reader::Settings`] ones (any other variable is
/// ignored), and the tests hold the README's configuration table (names and defaults) and
/// `deploy/calendar.env.example` (names) to it, and its defaults to the ones the code uses.
pub const VARIABLES: &[Var] = &[
    var(
        "DATABASE_URL",
        "`postgres://postgres@127.0.0.1:5432/calendar`",
    ),
    var("LISTEN_ADDR", "`127.0.0.1:8080`"),
    var("CAL_ENV", "`dev`"),
    var("JWT_SECRET", "fixed dev secret in `dev`"),
    var("JWT_JWKS_FILE", "unset"),
    var("JWT_JWKS_URL", "unset"),
    var("JWT_JWKS_REFRESH_SECS", "`300`"),
    var("JWT_ISSUER", "unset"),
    var("JWT_AUDIENCE", "unset"),
    var("JWT_LEEWAY_SECS", "`30`"),
    var("DB_MAX_CONNECTIONS", "`20`"),
    var("MAX_WINDOW_DAYS", "`62`"),
    var("MAX_PAGE_SIZE", "`200`"),
    var("MAX_REQUEST_STATEMENTS", "`200`"),
    var("MAX_REQUEST_ROWS", "`200000`"),
    var("MAX_DEPTH", "`12`"),
    var("MAX_COMPLEXITY", "`20000`"),
    var("MAX_ALIASES", "`30`"),
    var("MAX_BATCH", "`10`"),
    var("MAX_BODY_BYTES", "`262144`"),
    var("MAX_SUBSCRIPTIONS_PER_CONNECTION", "`20`"),
    var("MAX_SUBSCRIPTIONS_PER_VIEWER", "`100`"),
    var("RATE_LIMIT_PER_SECOND", "`0`"),
    var("RATE_LIMIT_BURST", "`0`"),
    var("PERSISTED_QUERIES", "`apq`"),
    var("PERSISTED_QUERY_MANIFEST", "unset"),
    var("CORS_ALLOWED_ORIGINS", "unset: none in prod, `*` in dev"),
    var("SHUTDOWN_GRACE_SECS", "`20`"),
    var("REDIS_URL", "unset"),
    var("REDIS_CLUSTER_NODES", "unset"),
    var("CACHE_L1", "`true`"),
    var("CACHE_L2", "`true`"),
    var("CACHE_L1_MAX_BYTES", "`134217728`"),
    var("CACHE_L1_TTL_SECS", "`300`"),
    var("CACHE_RESPONSE_MAX_BYTES", "`536870912`"),
    var("CACHE_KEY_PREFIX", "`cal:`"),
    var("CACHE_TTLS", "unset"),
    var("CACHE_WARM_CALENDARS", "`100`"),
    var("KAFKA_BROKERS", "unset"),
    var("KAFKA_TOPIC", "`cache.invalidate`"),
    var("KAFKA_PARTITIONS", "`1`"),
    var("KAFKA_FETCH_WAIT_MS", "`5`"),
    var("INVALIDATION_THREAD_NICE", "`-10`"),
    var("INVALIDATION_LIVENESS_MS", "`2000`"),
    var("CONSISTENCY_WAIT_MS", "`1000`"),
    var("RELAY_ENABLED", "`true`"),
    var("RELAY_GRACE_MS", "`1000`"),
    var("OUTBOX_RETENTION_SECS", "`604800`"),
    var("OUTBOX_PRUNE_INTERVAL_SECS", "`60`"),
    var("ADMIN_TOKEN", "unset"),
    var("CAL_FAILPOINTS", "unset"),
    var("DB_SLOW_STATEMENT_MS", "`200`"),
    telemetry("RUST_LOG", "`info,sqlx=warn`"),
    telemetry("OTEL_EXPORTER_OTLP_ENDPOINT", "unset"),
    telemetry("OTEL_SERVICE_NAME", "`calendar`"),
    telemetry("OTEL_TRACES_SAMPLER_ARG", "`1`"),
    telemetry("OTEL_RESOURCE_ATTRIBUTES", "unset"),
];

/// `CAL_ENV`: which audience the instance serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// GraphiQL, introspection, pretty logs; the dev secret and any CORS origin unless configured.
    Dev,
    /// None of those; JSON logs.
    Prod,
}

impl std::str::FromStr for Environment {
    type Err = anyhow::Error;

    /// `dev` or `prod`, exactly; anything else is refused with the value it got.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dev" => Ok(Self::Dev),
            "prod" => Ok(Self::Prod),
            other => bail!("CAL_ENV must be `dev` or `prod`, not {other:?}"),
        }
    }
}

/// The configuration, grouped by concern. [`Settings::load`] reads it as a flat `Raw` (one
/// field per variable) and groups it; every default is in `Raw::default`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `CAL_ENV`.
    pub environment: Environment,
    pub http: HttpSettings,
    pub db: DbSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub persisted: PersistedQuerySettings,
    pub cache: CacheSettings,
    pub bus: BusSettings,
    pub sync: SyncSettings,
    /// `CAL_FAILPOINTS`, parsed by [`Settings::failpoints`].
    pub cal_failpoints: Option<String>,
}

/// The HTTP server and what is checked of a request before GraphQL sees it.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `LISTEN_ADDR`.
    pub listen_addr: String,
    /// `SHUTDOWN_GRACE_SECS`.
    pub shutdown_grace_secs: u64,
    /// `CORS_ALLOWED_ORIGINS`, parsed by [`Settings::cors_origins`].
    pub cors_allowed_origins: Option<String>,
    /// `MAX_BATCH`.
    pub max_batch: usize,
    /// `MAX_SUBSCRIPTIONS_PER_CONNECTION`.
    pub max_subscriptions_per_connection: usize,
    /// `MAX_SUBSCRIPTIONS_PER_VIEWER`.
    pub max_subscriptions_per_viewer: usize,
    /// `MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
}

/// PostgreSQL.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// `DATABASE_URL`.
    pub url: String,
    /// `DB_MAX_CONNECTIONS`.
    pub max_connections: u32,
    /// `DB_SLOW_STATEMENT_MS`.
    pub slow_statement_ms: u64,
}

/// Bearer tokens and the operator secret.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `JWT_SECRET`.
    pub jwt_secret: Option<SecretString>,
    /// `JWT_JWKS_FILE`.
    pub jwks_file: Option<String>,
    /// `JWT_JWKS_URL`.
    pub jwks_url: Option<String>,
    /// `JWT_JWKS_REFRESH_SECS`.
    pub jwks_refresh_secs: u64,
    /// `JWT_ISSUER`.
    pub issuer: Option<String>,
    /// `JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// `JWT_LEEWAY_SECS`.
    pub leeway_secs: u64,
    /// `ADMIN_TOKEN`.
    pub admin_token: Option<SecretString>,
}

/// What one GraphQL request may ask for and spend, and how often a viewer may ask.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// `MAX_WINDOW_DAYS`.
    pub max_window_days: i64,
    /// `MAX_PAGE_SIZE`.
    pub max_page_size: usize,
    /// `MAX_DEPTH`.
    pub max_depth: usize,
    /// `MAX_ALIASES`.
    pub max_aliases: usize,
    /// `MAX_COMPLEXITY`.
    pub max_complexity: usize,
    /// `MAX_REQUEST_STATEMENTS`.
    pub max_request_statements: u64,
    /// `MAX_REQUEST_ROWS`.
    pub max_request_rows: u64,
    /// `RATE_LIMIT_PER_SECOND`.
    pub rate_limit_per_second: f64,
    /// `RATE_LIMIT_BURST`.
    pub rate_limit_burst: u32,
}

/// Which operations run: persisted queries.
#[derive(Debug, Clone)]
pub struct PersistedQuerySettings {
    /// `PERSISTED_QUERIES`: `apq`, `safelist` or `off` (see [`PersistedQuerySettings::mode`]).
    pub queries: String,
    /// `PERSISTED_QUERY_MANIFEST`.
    pub manifest: Option<String>,
}

/// The cache tiers: L1, Redis (L2), the whole-response cache, warming.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// `REDIS_URL` (a single Redis).
    pub redis_url: Option<String>,
    /// `REDIS_CLUSTER_NODES`, or the nodes of a `redis+cluster://` `REDIS_URL`.
    pub redis_cluster_nodes: Vec<String>,
    /// `CACHE_L1`.
    pub l1: bool,
    /// `CACHE_L2`.
    pub l2: bool,
    /// `CACHE_L1_MAX_BYTES`.
    pub l1_max_bytes: u64,
    /// `CACHE_L1_TTL_SECS`.
    pub l1_ttl_secs: u64,
    /// `CACHE_RESPONSE_MAX_BYTES`.
    pub response_max_bytes: u64,
    /// `CACHE_KEY_PREFIX`.
    pub key_prefix: String,
    /// `CACHE_TTLS`, parsed by [`CacheSettings::ttls`].
    pub ttl_overrides: Option<String>,
    /// `CACHE_WARM_CALENDARS`.
    pub warm_calendars: i64,
}

/// The Kafka bus that carries invalidations between instances.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// `KAFKA_BROKERS`.
    pub brokers: Option<String>,
    /// `KAFKA_TOPIC`.
    pub topic: String,
    /// `KAFKA_PARTITIONS`.
    pub partitions: i32,
    /// `KAFKA_FETCH_WAIT_MS`.
    pub fetch_wait_ms: u64,
}

/// The invalidation stream: its threads, liveness and consistency waits, the outbox relay and
/// its pruner.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// `INVALIDATION_THREAD_NICE`.
    pub invalidation_thread_nice: i32,
    /// `INVALIDATION_LIVENESS_MS`.
    pub invalidation_liveness_ms: u64,
    /// `CONSISTENCY_WAIT_MS`.
    pub consistency_wait_ms: u64,
    /// `RELAY_ENABLED`.
    pub relay_enabled: bool,
    /// `RELAY_GRACE_MS`.
    pub relay_grace_ms: u64,
    /// `OUTBOX_RETENTION_SECS`.
    pub outbox_retention_secs: u64,
    /// `OUTBOX_PRUNE_INTERVAL_SECS`.
    pub outbox_prune_interval_secs: u64,
}

/// What figment extracts: one field per variable, named after it in lower case, so neither the
/// variable names nor the keys of the TOML file depend on how [`Settings`] groups them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Raw {
    database_url: String,
    listen_addr: String,
    #[serde(serialize_with = "no_secret")]
    jwt_secret: Option<SecretString>,
    jwt_jwks_file: Option<String>,
    jwt_jwks_url: Option<String>,
    jwt_jwks_refresh_secs: u64,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_leeway_secs: u64,
    #[serde(serialize_with = "no_secret")]
    admin_token: Option<SecretString>,
    cal_env: String,
    db_max_connections: u32,
    max_window_days: i64,
    max_page_size: usize,
    max_depth: usize,
    max_aliases: usize,
    max_request_statements: u64,
    max_request_rows: u64,
    max_complexity: usize,
    max_batch: usize,
    max_subscriptions_per_connection: usize,
    max_subscriptions_per_viewer: usize,
    max_body_bytes: usize,
    rate_limit_per_second: f64,
    rate_limit_burst: u32,
    persisted_queries: String,
    persisted_query_manifest: Option<String>,
    cors_allowed_origins: Option<String>,
    shutdown_grace_secs: u64,
    redis_url: Option<String>,
    redis_cluster_nodes: Option<String>,
    cache_l1: bool,
    cache_l2: bool,
    cache_l1_max_bytes: u64,
    cache_l1_ttl_secs: u64,
    cache_response_max_bytes: u64,
    cache_key_prefix: String,
    cache_ttls: Option<String>,
    cache_warm_calendars: i64,
    kafka_brokers: Option<String>,
    kafka_topic: String,
    kafka_partitions: i32,
    kafka_fetch_wait_ms: u64,
    invalidation_thread_nice: i32,
    invalidation_liveness_ms: u64,
    consistency_wait_ms: u64,
    relay_enabled: bool,
    relay_grace_ms: u64,
    outbox_retention_secs: u64,
    outbox_prune_interval_secs: u64,
    cal_failpoints: Option<String>,
    db_slow_statement_ms: u64,
}

fn no_secret<S: serde::Serializer>(_: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_none()
}

impl Default for Raw {
    /// Every default of the configuration. Where a library already has one (the API's limits,
    /// the cache's, Kafka's, the relay's), it is taken from there rather than written again.
    fn default() -> Self {
        let api = cal_api::ApiConfig::new("");
        let cache = cal_cache::CacheConfig::default();
        let kafka = cal_bus_kafka::KafkaConfig::default();
        let sync = cal_sync::SyncConfig::default();
        let shared = cal_sync::SyncConfig::shared();
        let relay = cal_sync::RelayConfig::default();
        let millis = |d: Duration| d.as_millis() as u64;
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
            max_window_days: api.max_window.num_days(),
            max_page_size: api.max_page_size,
            max_depth: api.max_depth,
            max_aliases: api.max_aliases,
            max_request_statements: api.max_request_statements,
            max_request_rows: api.max_request_rows,
            max_complexity: api.max_complexity,
            max_batch: api.max_batch,
            max_subscriptions_per_connection: api.max_subscriptions_per_connection,
            max_subscriptions_per_viewer: api.max_subscriptions_per_viewer,
            max_body_bytes: api.max_body_bytes,
            rate_limit_per_second: 0.0,
            rate_limit_burst: 0,
            persisted_queries: "apq".to_owned(),
            persisted_query_manifest: None,
            cors_allowed_origins: None,
            shutdown_grace_secs: 20,
            redis_url: None,
            redis_cluster_nodes: None,
            cache_l1: cache.l1_enabled,
            cache_l2: cache.l2_enabled,
            cache_l1_max_bytes: cache.l1_max_bytes,
            cache_l1_ttl_secs: cache.l1_ttl.as_secs(),
            cache_response_max_bytes: cal_api::config::DEFAULT_RESPONSE_CACHE_BYTES,
            cache_key_prefix: cache.key_prefix.clone(),
            cache_ttls: None,
            cache_warm_calendars: 100,
            kafka_brokers: None,
            kafka_topic: kafka.topic.clone(),
            kafka_partitions: kafka.partitions,
            kafka_fetch_wait_ms: millis(kafka.fetch_wait),
            invalidation_thread_nice: -10,
            invalidation_liveness_ms: millis(
                shared
                    .liveness
                    .expect("a bus shared by instances has a liveness bound"),
            ),
            consistency_wait_ms: millis(sync.publish_wait),
            relay_enabled: relay.enabled,
            relay_grace_ms: millis(relay.grace),
            outbox_retention_secs: relay.retention.as_secs(),
            outbox_prune_interval_secs: relay.prune_every.as_secs(),
            cal_failpoints: None,
            db_slow_statement_ms: millis(cal_storage::DEFAULT_SLOW_STATEMENT),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_raw(Raw::default()).expect("the defaults are valid")
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Raw::default()));
        if let Some(f) = file {
            if !f.exists() {
                bail!("configuration file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        let keys: Vec<&str> = VARIABLES
            .iter()
            .filter(|v| v.reader == Reader::Settings)
            .map(|v| v.name)
            .collect();
        fig = fig.merge(
            Env::raw()
                .only(&keys)
                .map(|k| k.as_str().to_lowercase().into()),
        );
        let raw: Raw = fig.extract().context("invalid configuration")?;
        let s = Settings::from_raw(raw)?;
        s.check_auth()?;
        s.cors_origins()?;
        if !matches!(s.persisted.queries.as_str(), "apq" | "safelist" | "off") {
            bail!(
                "PERSISTED_QUERIES must be `apq`, `safelist` or `off`, not {:?}",
                s.persisted.queries
            );
        }
        if !(-20..=19).contains(&s.sync.invalidation_thread_nice) {
            bail!(
                "INVALIDATION_THREAD_NICE must be a nice value between -20 and 19, not {}",
                s.sync.invalidation_thread_nice
            );
        }
        Ok(s)
    }

    /// Groups `raw`. On the way it checks what [`Settings::load`] has always checked first, in
    /// the same order (`CACHE_TTLS`, the rate limit, `CAL_FAILPOINTS`, `CAL_ENV`), so that the
    /// first problem reported stays the same.
    fn from_raw(raw: Raw) -> Result<Self> {
        let Raw {
            database_url,
            listen_addr,
            jwt_secret,
            jwt_jwks_file,
            jwt_jwks_url,
            jwt_jwks_refresh_secs,
            jwt_issuer,
            jwt_audience,
            jwt_leeway_secs,
            admin_token,
            cal_env,
            db_max_connections,
            max_window_days,
            max_page_size,
            max_depth,
            max_aliases,
            max_request_statements,
            max_request_rows,
            max_complexity,
            max_batch,
            max_subscriptions_per_connection,
            max_subscriptions_per_viewer,
            max_body_bytes,
            rate_limit_per_second,
            rate_limit_burst,
            persisted_queries,
            persisted_query_manifest,
            cors_allowed_origins,
            shutdown_grace_secs,
            redis_url,
            redis_cluster_nodes,
            cache_l1,
            cache_l2,
            cache_l1_max_bytes,
            cache_l1_ttl_secs,
            cache_response_max_bytes,
            cache_key_prefix,
            cache_ttls,
            cache_warm_calendars,
            kafka_brokers,
            kafka_topic,
            kafka_partitions,
            kafka_fetch_wait_ms,
            invalidation_thread_nice,
            invalidation_liveness_ms,
            consistency_wait_ms,
            relay_enabled,
            relay_grace_ms,
            outbox_retention_secs,
            outbox_prune_interval_secs,
            cal_failpoints,
            db_slow_statement_ms,
        } = raw;
        let (redis_url, redis_cluster_nodes) = redis_target(redis_url, redis_cluster_nodes)?;
        let cache = CacheSettings {
            redis_url,
            redis_cluster_nodes,
            l1: cache_l1,
            l2: cache_l2,
            l1_max_bytes: cache_l1_max_bytes,
            l1_ttl_secs: cache_l1_ttl_secs,
            response_max_bytes: cache_response_max_bytes,
            key_prefix: cache_key_prefix,
            ttl_overrides: cache_ttls,
            warm_calendars: cache_warm_calendars,
        };
        cache.ttls().context("invalid CACHE_TTLS")?;
        let limits = LimitSettings {
            max_window_days,
            max_page_size,
            max_depth,
            max_aliases,
            max_complexity,
            max_request_statements,
            max_request_rows,
            rate_limit_per_second,
            rate_limit_burst,
        };
        limits.rate_limit()?;
        cal_api::config::Failpoints::parse(cal_failpoints.as_deref().unwrap_or(""))
            .map_err(anyhow::Error::msg)
            .context("invalid CAL_FAILPOINTS")?;
        let environment = cal_env.parse::<Environment>()?;
        Ok(Settings {
            environment,
            http: HttpSettings {
                listen_addr,
                shutdown_grace_secs,
                cors_allowed_origins,
                max_batch,
                max_subscriptions_per_connection,
                max_subscriptions_per_viewer,
                max_body_bytes,
            },
            db: DbSettings {
                url: database_url,
                max_connections: db_max_connections,
                slow_statement_ms: db_slow_statement_ms,
            },
            auth: AuthSettings {
                jwt_secret,
                jwks_file: jwt_jwks_file,
                jwks_url: jwt_jwks_url,
                jwks_refresh_secs: jwt_jwks_refresh_secs,
                issuer: jwt_issuer,
                audience: jwt_audience,
                leeway_secs: jwt_leeway_secs,
                admin_token,
            },
            limits,
            persisted: PersistedQuerySettings {
                queries: persisted_queries,
                manifest: persisted_query_manifest,
            },
            cache,
            bus: BusSettings {
                brokers: kafka_brokers,
                topic: kafka_topic,
                partitions: kafka_partitions,
                fetch_wait_ms: kafka_fetch_wait_ms,
            },
            sync: SyncSettings {
                invalidation_thread_nice,
                invalidation_liveness_ms,
                consistency_wait_ms,
                relay_enabled,
                relay_grace_ms,
                outbox_retention_secs,
                outbox_prune_interval_secs,
            },
            cal_failpoints,
        })
    }

    pub fn dev_mode(&self) -> bool {
        self.environment == Environment::Dev
    }

    /// The token secret; outside dev mode it must be configured and long enough.
    pub fn secret(&self) -> Result<SecretString> {
        match &self.auth.jwt_secret {
            Some(s) if s.expose_secret().len() >= 32 => Ok(s.clone()),
            Some(_) => bail!("JWT_SECRET must be at least 32 bytes"),
            None if self.dev_mode() => Ok(SecretString::from(DEV_JWT_SECRET)),
            None => bail!("JWT_SECRET is required when CAL_ENV=prod"),
        }
    }

    /// The HS256 secret the server accepts tokens with: `JWT_SECRET`, or the dev secret in dev
    /// mode; `None` in prod without `JWT_SECRET` (then only JWKS-signed tokens are accepted).
    fn hs256_secret(&self) -> Result<Option<SecretString>> {
        match &self.auth.jwt_secret {
            Some(_) => self.secret().map(Some),
            None if self.dev_mode() => Ok(Some(SecretString::from(DEV_JWT_SECRET))),
            None => Ok(None),
        }
    }

    /// The token settings, checked without reading the JWKS file (that happens in
    /// [`Settings::api_config`]).
    fn check_auth(&self) -> Result<()> {
        let auth = &self.auth;
        if auth.configured_jwks_file().is_some() && auth.configured_jwks_url().is_some() {
            bail!("set JWT_JWKS_FILE or JWT_JWKS_URL, not both");
        }
        if let Some(url) = auth.configured_jwks_url()
            && !url.starts_with("https://")
            && !url.starts_with("http://")
        {
            bail!("JWT_JWKS_URL must be an https:// or http:// URL");
        }
        if auth.jwks_refresh_secs == 0 {
            bail!("JWT_JWKS_REFRESH_SECS must be at least 1");
        }
        if auth.leeway_secs > 300 {
            bail!(
                "JWT_LEEWAY_SECS must be at most 300 (clock skew, not a validity extension), not {}",
                auth.leeway_secs
            );
        }
        if !self.dev_mode()
            && auth.jwt_secret.is_none()
            && auth.configured_jwks_file().is_none()
            && auth.configured_jwks_url().is_none()
        {
            bail!("CAL_ENV=prod needs JWT_SECRET or a JWKS source (JWT_JWKS_FILE or JWT_JWKS_URL)");
        }
        Ok(())
    }

    /// The invalidation stream's settings; `shared` when a Kafka bus connects the instances.
    pub fn sync_config(&self, shared: bool) -> Result<cal_sync::SyncConfig, String> {
        let s = &self.sync;
        let mut c = if shared {
            let mut c = cal_sync::SyncConfig::shared();
            c.liveness = Some(Duration::from_millis(s.invalidation_liveness_ms));
            c
        } else {
            cal_sync::SyncConfig::default()
        };
        c.publish_wait = Duration::from_millis(s.consistency_wait_ms);
        c.token_wait = Duration::from_millis(s.consistency_wait_ms);
        c.relay.enabled = s.relay_enabled;
        c.relay.grace = Duration::from_millis(s.relay_grace_ms);
        c.relay.retention = Duration::from_secs(s.outbox_retention_secs);
        c.relay.prune_every = Duration::from_secs(s.outbox_prune_interval_secs.max(1));
        c.thread_nice = s.thread_nice();
        c.kill_after_commit = self.failpoints()?.kill_after_commit;
        Ok(c)
    }

    /// `CAL_FAILPOINTS`: failure injection, off unless set.
    pub fn failpoints(&self) -> Result<cal_api::config::Failpoints, String> {
        cal_api::config::Failpoints::parse(self.cal_failpoints.as_deref().unwrap_or(""))
    }

    /// `CORS_ALLOWED_ORIGINS`: unset lets any origin in dev mode and none in prod.
    pub fn cors_origins(&self) -> Result<cal_api::CorsOrigins> {
        match self.http.cors_allowed_origins.as_deref() {
            None if self.dev_mode() => Ok(cal_api::CorsOrigins::Any),
            None => Ok(cal_api::CorsOrigins::List(Vec::new())),
            Some(list) => cal_api::CorsOrigins::parse(list)
                .map_err(anyhow::Error::msg)
                .context("invalid CORS_ALLOWED_ORIGINS"),
        }
    }

    pub fn api_config(&self) -> Result<cal_api::ApiConfig> {
        self.check_auth()?;
        let (auth, limits) = (&self.auth, &self.limits);
        let mut c = cal_api::ApiConfig::new("hs256-is-off-without-a-secret");
        match self.hs256_secret()? {
            Some(secret) => c.jwt_secret = secret,
            None => c.accept_hs256 = false,
        }
        c.jwks = auth.jwks_source()?;
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        c.jwt_issuer = nonempty(&auth.issuer);
        c.jwt_audience = nonempty(&auth.audience);
        c.jwt_leeway = Duration::from_secs(auth.leeway_secs);
        c.dev_mode = self.dev_mode();
        c.max_window = chrono::Duration::days(limits.max_window_days);
        c.max_page_size = limits.max_page_size;
        c.max_depth = limits.max_depth;
        c.max_aliases = limits.max_aliases;
        if limits.max_request_statements == 0 || limits.max_request_rows == 0 {
            bail!("MAX_REQUEST_STATEMENTS and MAX_REQUEST_ROWS must be at least 1");
        }
        c.max_request_statements = limits.max_request_statements;
        c.max_request_rows = limits.max_request_rows;
        c.max_complexity = limits.max_complexity;
        c.max_batch = self.http.max_batch;
        c.max_subscriptions_per_connection = self.http.max_subscriptions_per_connection;
        c.max_subscriptions_per_viewer = self.http.max_subscriptions_per_viewer;
        c.max_body_bytes = self.http.max_body_bytes;
        c.rate_limit = limits.rate_limit()?;
        c.persisted_queries = self.persisted.mode()?;
        c.cors_origins = self.cors_origins()?;
        c.response_cache_bytes = self.cache.response_max_bytes;
        c.failpoints = self.failpoints().map_err(anyhow::Error::msg)?;
        c.admin_token = match &auth.admin_token {
            Some(t) if t.expose_secret().len() >= 16 => Some(t.clone()),
            Some(_) => bail!("ADMIN_TOKEN must be at least 16 bytes"),
            None => None,
        };
        Ok(c)
    }
}

impl AuthSettings {
    /// `JWT_JWKS_FILE`, empty meaning unset.
    fn configured_jwks_file(&self) -> Option<&str> {
        self.jwks_file.as_deref().filter(|f| !f.is_empty())
    }

    /// `JWT_JWKS_URL`, empty meaning unset.
    fn configured_jwks_url(&self) -> Option<&str> {
        self.jwks_url.as_deref().filter(|u| !u.is_empty())
    }

    /// Where RS256/ES256 keys come from; reads and checks the JWKS file.
    fn jwks_source(&self) -> Result<Option<cal_api::jwks::JwksSource>> {
        use cal_api::jwks::{JwksSource, KeySet};
        if let Some(file) = self.configured_jwks_file() {
            let set = KeySet::from_file(file).with_context(|| format!("JWT_JWKS_FILE {file}"))?;
            return Ok(Some(JwksSource::Static(set)));
        }
        Ok(self.configured_jwks_url().map(|url| JwksSource::Url {
            url: url.to_owned(),
            refresh: Duration::from_secs(self.jwks_refresh_secs),
        }))
    }
}

impl LimitSettings {
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
}

impl PersistedQuerySettings {
    /// `PERSISTED_QUERIES` and, for `safelist`, the manifest it reads.
    pub fn mode(&self) -> Result<cal_api::PersistedMode> {
        let manifest = self.manifest.as_deref().filter(|p| !p.is_empty());
        match (self.queries.as_str(), manifest) {
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
}

/// L2's Redis: a single server (`REDIS_URL`), or a cluster (`REDIS_CLUSTER_NODES=h1:p1,h2:p2`,
/// or `REDIS_URL=redis+cluster://h1:p1,h2:p2`), never both.
fn redis_target(
    url: Option<String>,
    nodes: Option<String>,
) -> Result<(Option<String>, Vec<String>)> {
    let url = url.filter(|u| !u.trim().is_empty());
    let nodes = nodes.filter(|n| !n.trim().is_empty());
    let (url, nodes) = match (url, nodes) {
        (Some(_), Some(_)) => bail!("set REDIS_URL or REDIS_CLUSTER_NODES, not both"),
        (Some(url), None) => match url.strip_prefix("redis+cluster://") {
            Some(nodes) => (None, Some(nodes.to_owned())),
            None => (Some(url), None),
        },
        (None, nodes) => (None, nodes),
    };
    let nodes: Vec<String> = nodes
        .iter()
        .flat_map(|n| n.split(','))
        .map(|n| n.trim().trim_end_matches('/').to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    for node in &nodes {
        let address = node.strip_prefix("redis://").unwrap_or(node);
        let address = address.rsplit_once('@').map_or(address, |(_, a)| a);
        let valid = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            bail!("REDIS_CLUSTER_NODES: {node:?} is not host:port");
        }
    }
    Ok((url, nodes))
}

impl CacheSettings {
    pub fn config(&self) -> cal_cache::CacheConfig {
        cal_cache::CacheConfig {
            l1_enabled: self.l1,
            l2_enabled: self.l2,
            l1_max_bytes: self.l1_max_bytes,
            l1_ttl: Duration::from_secs(self.l1_ttl_secs),
            redis_url: self.redis_url.clone(),
            redis_cluster_nodes: self.redis_cluster_nodes.clone(),
            key_prefix: self.key_prefix.clone(),
            ..cal_cache::CacheConfig::default()
        }
    }

    /// Per-kind L2 TTL overrides (`CACHE_TTLS`).
    pub fn ttls(
        &self,
    ) -> Result<std::collections::HashMap<cal_domain::cache_keys::KeyKind, Duration>> {
        cal_domain::cache_keys::parse_ttls(self.ttl_overrides.as_deref().unwrap_or(""))
            .map_err(anyhow::Error::msg)
    }
}

impl BusSettings {
    /// `KAFKA_BROKERS`, empty meaning unset (the in-process bus).
    pub fn kafka_brokers(&self) -> Option<&str> {
        self.brokers.as_deref().filter(|b| !b.is_empty())
    }
}

impl SyncSettings {
    /// `INVALIDATION_THREAD_NICE`, `None` for 0 (the process's priority).
    pub fn thread_nice(&self) -> Option<i32> {
        Some(self.invalidation_thread_nice).filter(|&n| n != 0)
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
            environment: Environment::Prod,
            ..Settings::default()
        };
        tweak(&mut s);
        s
    }

    fn refused(s: Settings) -> String {
        format!("{:#}", s.api_config().expect_err("refused"))
    }

    #[test]
    fn cal_env_is_dev_or_prod_and_nothing_else() {
        assert_eq!("dev".parse::<Environment>().unwrap(), Environment::Dev);
        assert_eq!("prod".parse::<Environment>().unwrap(), Environment::Prod);
        for bad in ["Prod", "staging", ""] {
            let err = bad.parse::<Environment>().unwrap_err().to_string();
            assert_eq!(err, format!("CAL_ENV must be `dev` or `prod`, not {bad:?}"));
        }
        assert!(Settings::default().dev_mode());
    }

    #[test]
    fn prod_needs_a_secret_or_a_jwks_source() {
        assert!(refused(prod(|_| {})).contains("JWT_SECRET or a JWKS source"));
        // A JWKS file alone: RS256/ES256 only, HS256 off.
        let c = prod(|s| s.auth.jwks_file = Some(JWKS.into()))
            .api_config()
            .unwrap();
        assert!(!c.accept_hs256);
        assert!(matches!(c.jwks, Some(cal_api::jwks::JwksSource::Static(ref k)) if k.len() == 3));
        // A secret alone: HS256 as before.
        let c = prod(|s| s.auth.jwt_secret = Some(SecretString::from("x".repeat(32))))
            .api_config()
            .unwrap();
        assert!(c.accept_hs256 && c.jwks.is_none());
        // Dev mode keeps the dev secret next to a JWKS.
        let mut dev = Settings::default();
        dev.auth.jwks_url = Some("http://127.0.0.1:1/jwks".into());
        dev.auth.issuer = Some("https://idp.test".into());
        dev.auth.audience = Some(String::new());
        dev.auth.leeway_secs = 5;
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
        let c = prod(|s| s.auth.jwt_secret = Some(SecretString::from("x".repeat(32))));
        assert!(matches!(
            c.persisted.mode().unwrap(),
            cal_api::PersistedMode::Automatic
        ));
        assert!(matches!(c.cors_origins().unwrap(), cal_api::CorsOrigins::List(l) if l.is_empty()));
        let dev = Settings::default();
        assert!(matches!(
            dev.cors_origins().unwrap(),
            cal_api::CorsOrigins::Any
        ));
        let mut s = c.clone();
        s.persisted.queries = "safelist".into();
        assert!(
            format!("{:#}", s.persisted.mode().unwrap_err()).contains("PERSISTED_QUERY_MANIFEST")
        );
        s.persisted.manifest = Some("/nonexistent/manifest.json".into());
        assert!(format!("{:#}", s.persisted.mode().unwrap_err()).contains("/nonexistent"));
        let dir = std::env::temp_dir().join(format!("pq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("manifest.json");
        std::fs::write(
            &file,
            r#"{"format":"apollo-persisted-query-manifest","version":1,"operations":[{"id":"x","name":"Me","type":"query","body":"query Me { me { id } }"}]}"#,
        )
        .unwrap();
        s.persisted.manifest = Some(file.display().to_string());
        assert!(matches!(
            s.persisted.mode().unwrap(),
            cal_api::PersistedMode::Safelist(m) if m.len() == 1
        ));
        s.persisted.queries = "apq".into();
        assert!(s.persisted.mode().is_err(), "a manifest without safelist");
        let mut bad = c.clone();
        bad.http.cors_allowed_origins = Some("not-an-origin".into());
        assert!(format!("{:#}", bad.cors_origins().unwrap_err()).contains("CORS_ALLOWED_ORIGINS"));
    }

    #[test]
    fn bad_token_settings_stop_the_start_with_the_reason() {
        let both = refused(prod(|s| {
            s.auth.jwks_file = Some(JWKS.into());
            s.auth.jwks_url = Some("http://idp/jwks".into());
        }));
        assert!(both.contains("not both"), "{both}");
        let scheme = refused(prod(|s| s.auth.jwks_url = Some("ftp://idp/jwks".into())));
        assert!(scheme.contains("http://"), "{scheme}");
        let missing = refused(prod(|s| {
            s.auth.jwks_file = Some("/nonexistent/jwks.json".into())
        }));
        assert!(missing.contains("JWT_JWKS_FILE"), "{missing}");
        let leeway = refused(prod(|s| {
            s.auth.jwks_file = Some(JWKS.into());
            s.auth.leeway_secs = 301;
        }));
        assert!(leeway.contains("JWT_LEEWAY_SECS"), "{leeway}");
        let refresh = refused(prod(|s| {
            s.auth.jwks_url = Some("http://idp/jwks".into());
            s.auth.jwks_refresh_secs = 0;
        }));
        assert!(refresh.contains("JWT_JWKS_REFRESH_SECS"), "{refresh}");
        let short = refused(prod(|s| {
            s.auth.jwt_secret = Some(SecretString::from("short"))
        }));
        assert!(short.contains("at least 32 bytes"), "{short}");
    }

    #[test]
    fn redis_is_one_server_or_a_cluster_never_both() {
        let target = |url: Option<&str>, nodes: Option<&str>| {
            redis_target(url.map(Into::into), nodes.map(Into::into)).map_err(|e| format!("{e:#}"))
        };
        assert_eq!(
            target(Some("redis://r:6379"), None).unwrap(),
            (Some("redis://r:6379".to_owned()), vec![])
        );
        let cluster = (None, vec!["a:7000".to_owned(), "b:7001".to_owned()]);
        assert_eq!(target(None, Some("a:7000, b:7001,")).unwrap(), cluster);
        assert_eq!(
            target(Some("redis+cluster://a:7000,b:7001"), None).unwrap(),
            cluster
        );
        assert_eq!(target(Some(""), Some("")).unwrap(), (None, vec![]));
        let both = target(Some("redis://r:6379"), Some("a:7000")).unwrap_err();
        assert!(both.contains("not both"), "{both}");
        let bad = target(None, Some("a:7000,nonsense")).unwrap_err();
        assert!(bad.contains("\"nonsense\" is not host:port"), "{bad}");
    }

    // The list of variables against the README, the env example and the code.

    /// The README, whose `## Configuration` table shows every variable and its default.
    const README: &str = include_str!("../../../README.md");

    /// The example environment, which mentions every variable, set or commented out.
    const EXAMPLE: &str = include_str!("../../../deploy/calendar.env.example");

    /// `` `x` `` → `x`: the value a default shows, when it is one literal in backticks.
    fn literal(shown: &str) -> Option<&str> {
        let inner = shown.strip_prefix('`')?.strip_suffix('`')?;
        (!inner.contains('`')).then_some(inner)
    }

    /// The README's configuration table as (variable, default) pairs, row by row. A row naming
    /// several variables (`` `A` / `B` ``) shows as many defaults, separated by ` / ` too.
    fn readme_table(readme: &str) -> Result<Vec<(String, String)>, String> {
        let mut rows = readme
            .lines()
            .skip_while(|l| l.trim() != "## Configuration")
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .filter(|l| l.starts_with('|'));
        let header = rows
            .next()
            .ok_or("README.md has no table under `## Configuration`")?;
        if header.replace(' ', "") != "|variable|default|meaning|" {
            return Err(format!(
                "the configuration table's header is {header:?}, not `| variable | default | meaning |`"
            ));
        }
        if !rows.next().is_some_and(|l| l.starts_with("|-")) {
            return Err(
                "the configuration table's header is not followed by `|---|---|---|`".into(),
            );
        }
        let mut pairs = Vec::new();
        for row in rows {
            let cells: Vec<&str> = row.splitn(4, '|').collect();
            let [_, names, defaults, _meaning] = cells.as_slice() else {
                return Err(format!("not a row of three cells: {row}"));
            };
            let names: Vec<&str> = names.split('/').map(str::trim).collect();
            let defaults: Vec<&str> = if names.len() == 1 {
                vec![defaults.trim()]
            } else {
                defaults.split(" / ").map(str::trim).collect()
            };
            if names.len() != defaults.len() {
                return Err(format!(
                    "{} variables but {} defaults (separate them with ` / `) in: {row}",
                    names.len(),
                    defaults.len()
                ));
            }
            for (name, default) in names.into_iter().zip(defaults) {
                let Some(name) = literal(name) else {
                    return Err(format!(
                        "{name:?} is not a variable in backticks, in: {row}"
                    ));
                };
                pairs.push((name.to_owned(), default.to_owned()));
            }
        }
        Ok(pairs)
    }

    /// The variables `deploy/calendar.env.example` sets (`NAME=value`) or shows unset
    /// (`# NAME=value`, `#NAME=value`).
    fn example_names(example: &str) -> Vec<&str> {
        example
            .lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let line = line.strip_prefix('#').unwrap_or(line).trim_start();
                let (name, _) = line.split_once('=')?;
                let is_name = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                is_name.then_some(name)
            })
            .collect()
    }

    /// Names that occur more than once.
    fn repeated<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for name in names {
            *seen.entry(name).or_default() += 1;
        }
        seen.into_iter()
            .filter(|&(_, n)| n > 1)
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn the_readme_table_shows_every_variable_with_its_default() {
        let table = readme_table(README).unwrap_or_else(|e| panic!("README.md: {e}"));
        let mut problems = Vec::new();
        for (name, default) in &table {
            match VARIABLES.iter().find(|v| v.name == name.as_str()) {
                None => problems.push(format!(
                    "README shows {name}, which VARIABLES does not list"
                )),
                Some(v) if v.default != default.as_str() => problems.push(format!(
                    "{name}: README shows the default {default:?}, VARIABLES {:?}",
                    v.default
                )),
                Some(_) => {}
            }
        }
        for name in repeated(table.iter().map(|(n, _)| n.as_str())) {
            problems.push(format!("README shows {name} more than once"));
        }
        for v in VARIABLES {
            if !table.iter().any(|(n, _)| n == v.name) {
                problems.push(format!("README lacks {} (default {})", v.name, v.default));
            }
        }
        assert!(
            problems.is_empty(),
            "README.md's configuration table and config::VARIABLES disagree:\n{}",
            problems.join("\n")
        );
        let readme_order: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
        let listed: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(
            readme_order, listed,
            "README.md shows the variables in another order than config::VARIABLES lists them"
        );
    }

    #[test]
    fn the_env_example_mentions_every_variable() {
        let names = example_names(EXAMPLE);
        let mut problems = Vec::new();
        for name in &names {
            if !VARIABLES.iter().any(|v| v.name == *name) {
                problems.push(format!(
                    "the example sets {name}, which VARIABLES does not list"
                ));
            }
        }
        for name in repeated(names.iter().copied()) {
            problems.push(format!("the example mentions {name} more than once"));
        }
        for v in VARIABLES {
            if !names.contains(&v.name) {
                problems.push(format!(
                    "the example lacks {0}: add `{0}=value`, or `# {0}=value` to show it unset",
                    v.name
                ));
            }
        }
        assert!(
            problems.is_empty(),
            "deploy/calendar.env.example and config::VARIABLES disagree:\n{}",
            problems.join("\n")
        );
    }

    /// What `cal_server::telemetry` falls back to when a variable it reads is unset.
    fn telemetry_default(name: &str) -> Option<String> {
        use cal_server::telemetry::{
            DEFAULT_LOG_FILTER, DEFAULT_SAMPLE_RATIO, DEFAULT_SERVICE_NAME,
        };
        match name {
            "RUST_LOG" => Some(DEFAULT_LOG_FILTER.to_owned()),
            "OTEL_SERVICE_NAME" => Some(DEFAULT_SERVICE_NAME.to_owned()),
            "OTEL_TRACES_SAMPLER_ARG" => Some(DEFAULT_SAMPLE_RATIO.to_string()),
            // OTEL_EXPORTER_OTLP_ENDPOINT (no export), OTEL_RESOURCE_ATTRIBUTES.
            _ => None,
        }
    }

    /// Each default VARIABLES shows is the one the loader starts from (`Raw::default`, which is
    /// what figment extracts before the file and the environment) or telemetry falls back to:
    /// a literal (`` `300` ``) the same value, anything else (`unset`, a phrase) no value.
    #[test]
    fn the_defaults_shown_are_the_ones_the_code_uses() {
        use serde_json::Value;
        let raw = serde_json::to_value(Raw::default()).unwrap();
        let fields = raw.as_object().expect("Raw serializes as a map");
        let mut problems = Vec::new();
        for v in VARIABLES {
            let key = v.name.to_lowercase();
            let used = match v.reader {
                Reader::Settings => match fields.get(&key) {
                    None => {
                        problems.push(format!("{}: Raw has no field `{key}`", v.name));
                        continue;
                    }
                    Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(other) => Some(other.to_string()),
                },
                Reader::Telemetry => telemetry_default(v.name),
            };
            let same = match (literal(v.default), &used) {
                (None, None) => true,
                (Some(shown), Some(used)) => {
                    shown == used
                        || matches!(
                            (shown.parse::<f64>(), used.parse::<f64>()),
                            (Ok(a), Ok(b)) if a == b
                        )
                }
                _ => false,
            };
            if !same {
                let used = used.map_or("none".to_owned(), |u| format!("`{u}`"));
                problems.push(format!(
                    "{}: VARIABLES shows the default {}, the code's is {used}",
                    v.name, v.default
                ));
            }
        }
        for key in fields.keys() {
            let listed = VARIABLES
                .iter()
                .any(|v| v.reader == Reader::Settings && v.name.to_lowercase() == *key);
            if !listed {
                problems.push(format!(
                    "Raw has a field `{key}` that no variable of VARIABLES sets"
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The default VARIABLES shows for `name`, parsed (it must be one literal).
    fn shown<T: std::str::FromStr>(name: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        let v = VARIABLES
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} is not in VARIABLES"));
        let value = literal(v.default)
            .unwrap_or_else(|| panic!("{name}'s default {:?} is not a literal", v.default));
        value
            .parse()
            .unwrap_or_else(|e| panic!("{name}'s default {value:?}: {e:?}"))
    }

    /// Grouping takes each default to where it is used: the API's, the cache's, the
    /// invalidation stream's and the bus's configuration.
    #[test]
    fn the_grouped_settings_carry_the_defaults_shown() {
        let s = Settings::default();
        assert_eq!(s.environment, shown::<Environment>("CAL_ENV"));
        assert_eq!(s.http.listen_addr, shown::<String>("LISTEN_ADDR"));
        assert_eq!(
            s.http.shutdown_grace_secs,
            shown::<u64>("SHUTDOWN_GRACE_SECS")
        );
        assert_eq!(s.db.url, shown::<String>("DATABASE_URL"));
        assert_eq!(s.db.max_connections, shown::<u32>("DB_MAX_CONNECTIONS"));
        assert_eq!(s.db.slow_statement_ms, shown::<u64>("DB_SLOW_STATEMENT_MS"));

        let api = s.api_config().unwrap();
        assert!(api.dev_mode);
        assert_eq!(api.jwt_leeway.as_secs(), shown::<u64>("JWT_LEEWAY_SECS"));
        assert_eq!(api.max_window.num_days(), shown::<i64>("MAX_WINDOW_DAYS"));
        assert_eq!(api.max_page_size, shown::<usize>("MAX_PAGE_SIZE"));
        assert_eq!(api.max_depth, shown::<usize>("MAX_DEPTH"));
        assert_eq!(api.max_complexity, shown::<usize>("MAX_COMPLEXITY"));
        assert_eq!(api.max_aliases, shown::<usize>("MAX_ALIASES"));
        assert_eq!(api.max_batch, shown::<usize>("MAX_BATCH"));
        assert_eq!(
            api.max_subscriptions_per_connection,
            shown::<usize>("MAX_SUBSCRIPTIONS_PER_CONNECTION")
        );
        assert_eq!(
            api.max_subscriptions_per_viewer,
            shown::<usize>("MAX_SUBSCRIPTIONS_PER_VIEWER")
        );
        assert_eq!(api.max_body_bytes, shown::<usize>("MAX_BODY_BYTES"));
        assert_eq!(
            api.max_request_statements,
            shown::<u64>("MAX_REQUEST_STATEMENTS")
        );
        assert_eq!(api.max_request_rows, shown::<u64>("MAX_REQUEST_ROWS"));
        assert!(api.rate_limit.is_none(), "RATE_LIMIT_* are off by default");
        assert!(matches!(
            api.persisted_queries,
            cal_api::PersistedMode::Automatic
        ));
        assert!(matches!(api.cors_origins, cal_api::CorsOrigins::Any));

        let cache = s.cache.config();
        assert_eq!(cache.l1_enabled, shown::<bool>("CACHE_L1"));
        assert_eq!(cache.l2_enabled, shown::<bool>("CACHE_L2"));
        assert_eq!(cache.l1_max_bytes, shown::<u64>("CACHE_L1_MAX_BYTES"));
        assert_eq!(cache.l1_ttl.as_secs(), shown::<u64>("CACHE_L1_TTL_SECS"));
        assert_eq!(cache.key_prefix, shown::<String>("CACHE_KEY_PREFIX"));
        assert_eq!(cache.redis_url, None);
        assert_eq!(
            s.cache.response_max_bytes,
            shown::<u64>("CACHE_RESPONSE_MAX_BYTES")
        );
        assert_eq!(s.cache.warm_calendars, shown::<i64>("CACHE_WARM_CALENDARS"));
        assert!(s.cache.ttls().unwrap().is_empty());

        let sync = s.sync_config(true).unwrap();
        assert_eq!(
            sync.liveness,
            Some(Duration::from_millis(shown("INVALIDATION_LIVENESS_MS")))
        );
        assert_eq!(
            sync.publish_wait,
            Duration::from_millis(shown("CONSISTENCY_WAIT_MS"))
        );
        assert_eq!(sync.token_wait, sync.publish_wait);
        assert_eq!(sync.relay.enabled, shown::<bool>("RELAY_ENABLED"));
        assert_eq!(
            sync.relay.grace,
            Duration::from_millis(shown("RELAY_GRACE_MS"))
        );
        assert_eq!(
            sync.relay.retention,
            Duration::from_secs(shown("OUTBOX_RETENTION_SECS"))
        );
        assert_eq!(
            sync.relay.prune_every,
            Duration::from_secs(shown("OUTBOX_PRUNE_INTERVAL_SECS"))
        );
        assert_eq!(
            sync.thread_nice,
            Some(shown::<i32>("INVALIDATION_THREAD_NICE"))
        );
        assert!(!sync.kill_after_commit);

        assert_eq!(s.bus.kafka_brokers(), None);
        assert_eq!(s.bus.topic, shown::<String>("KAFKA_TOPIC"));
        assert_eq!(s.bus.partitions, shown::<i32>("KAFKA_PARTITIONS"));
        assert_eq!(s.bus.fetch_wait_ms, shown::<u64>("KAFKA_FETCH_WAIT_MS"));
        assert_eq!(
            s.auth.jwks_refresh_secs,
            shown::<u64>("JWT_JWKS_REFRESH_SECS")
        );
    }

    // The Kubernetes manifests of deploy/k8s against the list.

    /// The folder of the Kubernetes manifests.
    const K8S: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/k8s");

    /// What the binary reads besides VARIABLES: `--config` as a variable (main.rs).
    const ALSO_READ: &[&str] = &["CALENDAR_CONFIG"];

    /// The environment variables Kubernetes manifests give a container: the keys of a
    /// ConfigMap's `data` and of a Secret's `data` and `stringData`, and the names in every
    /// container's `env` list.
    fn manifest_env_names(text: &str) -> Vec<String> {
        use yaml_rust2::{Yaml, YamlLoader};
        let docs = YamlLoader::load_from_str(text).expect("a manifest is valid YAML");
        let keys = |y: &Yaml| -> Vec<String> {
            y.as_hash()
                .map(|h| {
                    h.keys()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut names = Vec::new();
        for doc in &docs {
            match doc["kind"].as_str() {
                Some("ConfigMap") => names.extend(keys(&doc["data"])),
                Some("Secret") => {
                    names.extend(keys(&doc["data"]));
                    names.extend(keys(&doc["stringData"]));
                }
                _ => {
                    let pod = &doc["spec"]["template"]["spec"];
                    for list in ["initContainers", "containers"] {
                        for container in pod[list].as_vec().into_iter().flatten() {
                            for var in container["env"].as_vec().into_iter().flatten() {
                                names.extend(var["name"].as_str().map(str::to_owned));
                            }
                        }
                    }
                }
            }
        }
        names
    }

    #[test]
    fn manifest_env_name_extraction() {
        let text = r#"
kind: ConfigMap
data:
  A: "1"
  # B: commented out
  C: |
    D: not a key
---
kind: Secret
stringData:
  F: s
data:
  G: czM=
---
kind: Deployment
spec:
  template:
    spec:
      containers:
        - name: calendar
          env:
            - name: I
              valueFrom:
                secretKeyRef:
                  name: not-a-variable
                  key: K
          envFrom:
            - configMapRef:
                name: not-a-variable-either
"#;
        let mut names = manifest_env_names(text);
        names.sort();
        assert_eq!(names, ["A", "C", "F", "G", "I"]);
    }

    /// Every variable the manifests of deploy/k8s set (ConfigMap and Secret keys, `env:` names)
    /// is one the binary reads: anything else would be silently ignored.
    #[test]
    fn the_kubernetes_manifests_set_only_variables_the_binary_reads() {
        let dir = std::path::Path::new(K8S);
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| x == "yaml" || x == "yml")
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no manifests in {}", dir.display());
        let mut seen = std::collections::BTreeSet::new();
        let mut problems = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            for name in manifest_env_names(&text) {
                let known =
                    VARIABLES.iter().any(|v| v.name == name) || ALSO_READ.contains(&name.as_str());
                if !known {
                    problems.push(format!(
                        "deploy/k8s/{} sets {name}, which VARIABLES does not list",
                        file.file_name().unwrap().to_string_lossy()
                    ));
                }
                seen.insert(name);
            }
        }
        assert!(
            problems.is_empty(),
            "deploy/k8s and config::VARIABLES disagree:\n{}",
            problems.join("\n")
        );
        // The environment was found at all: a parse that finds nothing would pass the above.
        for name in [
            "CAL_ENV",
            "LISTEN_ADDR",
            "SHUTDOWN_GRACE_SECS",
            "DATABASE_URL",
            "JWT_SECRET",
            "REDIS_URL",
            "KAFKA_BROKERS",
        ] {
            assert!(
                seen.contains(name),
                "no manifest of deploy/k8s sets {name} (or this test no longer finds it)"
            );
        }
    }
}
