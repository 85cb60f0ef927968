//! [`TestApp`]: the real router on `127.0.0.1:0` over a database of its own, driven over HTTP.

use crate::TestDb;
use cal_api::tiers::Tiers;
use cal_api::{ApiConfig, AppState};
use cal_cache::{CacheConfig, InProcessBus, TieredCache};
use cal_domain::{CalendarId, User, UserId};
use cal_storage::Store;
use cal_sync::{Invalidator, SyncConfig};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The operator secret every [`TestApp`] is configured with (`x-admin-token`): it unlocks
/// `x-debug-stats` outside dev mode.
pub const TEST_ADMIN_TOKEN: &str = "test-operator-token-0123456789";

static SIBLINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub struct TestApp {
    pub addr: SocketAddr,
    /// The app's own store: writes through it invalidate the app's cache like mutations do.
    pub store: Store,
    pub tiers: Arc<Tiers>,
    /// The app's whole-response cache (`None`: L1 off or a bound of 0).
    pub responses: Option<cal_api::response_cache::ResponseCache>,
    pub config: Arc<ApiConfig>,
    pub client: reqwest::Client,
    /// The invalidation bus this app and its peers share ([`TestApp::spawn_peer`]).
    pub bus: Arc<InProcessBus>,
    /// Ends every subscription and closes every WebSocket, as the binary does when it drains.
    pub state: cal_api::AppState,
    users: std::sync::atomic::AtomicU64,
    _sync: (tokio_util::sync::DropGuard, cal_sync::Running),
    // Last: dropped after the server task's handle so the database goes last (shared with
    // sibling apps over the same database).
    pub db: Arc<TestDb>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns with a configuration adjusted by `tweak`.
    pub async fn spawn_with(tweak: impl FnOnce(&mut ApiConfig)) -> TestApp {
        Self::spawn_full(tweak, |_| {}).await
    }

    /// Spawns with both configurations adjusted. The cache defaults to L1 plus the Redis at
    /// `REDIS_URL` (default `redis://127.0.0.1:6379`) under a key prefix of this test's own.
    pub async fn spawn_full(
        tweak: impl FnOnce(&mut ApiConfig),
        tweak_cache: impl FnOnce(&mut CacheConfig),
    ) -> TestApp {
        Self::spawn_on(Arc::new(TestDb::new().await), tweak, tweak_cache).await
    }

    /// A second app over this app's database (its own cache under its own key prefix, its own
    /// in-process bus): e.g. to compare two configurations on the same data.
    pub async fn spawn_sibling(
        &self,
        tweak: impl FnOnce(&mut ApiConfig),
        tweak_cache: impl FnOnce(&mut CacheConfig),
    ) -> TestApp {
        let n = SIBLINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::spawn_on(self.db.clone(), tweak, |c| {
            c.key_prefix = format!("{}sibling{n}:", c.key_prefix);
            tweak_cache(c)
        })
        .await
    }

    /// Spawns over `db` (e.g. one made by [`TestDb::on`] on a cluster of the test's own, with the
    /// pool the test chose).
    pub async fn spawn_on(
        db: Arc<TestDb>,
        tweak: impl FnOnce(&mut ApiConfig),
        tweak_cache: impl FnOnce(&mut CacheConfig),
    ) -> TestApp {
        let origin = db.name.clone();
        let sync = SyncConfig::default();
        Self::spawn_on_bus(db, Arc::default(), origin, sync, tweak, tweak_cache, |s| s).await
    }

    /// Spawns with the subscriptions' feed keeping only `capacity` messages (a subscriber that
    /// falls further behind gets a resync).
    pub async fn spawn_with_feed(capacity: usize) -> TestApp {
        let db = Arc::new(TestDb::new().await);
        let origin = db.name.clone();
        let sync = SyncConfig {
            feed_capacity: capacity,
            ..SyncConfig::default()
        };
        Self::spawn_on_bus(db, Arc::default(), origin, sync, |_| {}, |_| {}, |s| s).await
    }

    /// Another instance of the same deployment: this app's database and invalidation bus, its
    /// own cache (key prefix) and its own name on the bus, so each hears the other's writes as
    /// instances do over Kafka.
    pub async fn spawn_peer(&self) -> TestApp {
        self.spawn_peer_with_store(|s| s).await
    }

    /// [`TestApp::spawn_peer`] with its store adjusted by `store` (e.g. a slow-statement
    /// threshold of zero, so that every statement is counted by name).
    pub async fn spawn_peer_with_store(&self, store: impl FnOnce(Store) -> Store) -> TestApp {
        let n = SIBLINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let origin = format!("{}-peer{n}", self.db.name);
        Self::spawn_on_bus(
            self.db.clone(),
            self.bus.clone(),
            origin,
            SyncConfig::default(),
            |_| {},
            |c| {
                c.key_prefix = format!("{}peer{n}:", c.key_prefix);
            },
            store,
        )
        .await
    }

    async fn spawn_on_bus(
        db: Arc<TestDb>,
        bus: Arc<InProcessBus>,
        origin: String,
        sync: SyncConfig,
        tweak: impl FnOnce(&mut ApiConfig),
        tweak_cache: impl FnOnce(&mut CacheConfig),
        tweak_store: impl FnOnce(Store) -> Store,
    ) -> TestApp {
        let mut config = ApiConfig::new(TEST_SECRET);
        config.admin_token = Some(secrecy::SecretString::from(TEST_ADMIN_TOKEN));
        tweak(&mut config);
        let mut cache_config = CacheConfig {
            redis_url: Some(
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
            ),
            key_prefix: format!("test:{}:", db.name),
            ..CacheConfig::default()
        };
        tweak_cache(&mut cache_config);
        let registry = prometheus::Registry::new();
        let cache = TieredCache::new(cache_config, &registry)
            .await
            .expect("cache config is valid");
        let invalidator = Invalidator::new(cache.clone(), bus.clone(), origin, sync);
        let tiers = Arc::new(Tiers::new(cache, invalidator, Default::default()));
        tiers
            .sync
            .load_purge_generation(&Store::new(db.pool.clone()))
            .await
            .expect("the change log is readable");
        let state = AppState::new(
            tweak_store(Store::new(db.pool.clone())),
            config,
            tiers.clone(),
            registry,
        );
        let store = state.store.clone();
        // The relay and the consumer stop when the app is dropped.
        let stop = tokio_util::sync::CancellationToken::new();
        let sync = tiers
            .sync
            .start(store.clone(), stop.clone().cancelled_owned());
        let config = state.config.clone();
        let responses = state.responses.clone();
        let app_state = state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, cal_api::router(state)).await.unwrap();
        });
        TestApp {
            addr,
            store,
            tiers,
            responses,
            config,
            client: reqwest::Client::new(),
            bus,
            state: app_state,
            users: Default::default(),
            _sync: (stop.drop_guard(), sync),
            db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, user: UserId) -> String {
        cal_api::auth::mint(&self.config.jwt_secret, user, chrono::Duration::hours(1))
    }

    /// Posts a raw body to `/graphql` as `user` (anonymous when `None`); returns status and JSON.
    pub async fn post_raw(&self, user: Option<UserId>, body: Value) -> (u16, Value) {
        let mut req = self
            .client
            .post(self.url("/graphql"))
            .header("x-debug-stats", "1")
            .header(cal_api::admin::ADMIN_TOKEN_HEADER, TEST_ADMIN_TOKEN)
            .json(&body);
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        let resp = req.send().await.expect("server reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Posts `body` to `/graphql` as `user` without the debug header; returns status, the
    /// response headers and the body text exactly as sent.
    pub async fn post_text(
        &self,
        user: Option<UserId>,
        body: &Value,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut req = self.client.post(self.url("/graphql")).json(body);
        if let Some(u) = user {
            req = req.bearer_auth(self.token(u));
        }
        let resp = req.send().await.expect("server reachable");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("server reachable")
            .text()
            .await
            .unwrap()
    }

    /// The sum of the series of `name` that carry `labels`, scraped now (see [`crate::metric_sum`]).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        crate::metric_sum(&self.metrics().await, name, labels)
    }

    /// Runs one GraphQL operation as `user`; asserts HTTP 200 and returns the JSON response.
    pub async fn gql(&self, user: Option<UserId>, query: &str, variables: Value) -> Gql {
        let (status, body) = self
            .post_raw(user, json!({ "query": query, "variables": variables }))
            .await;
        assert_eq!(status, 200, "HTTP status for {query}: {body}");
        Gql(body)
    }

    /// Creates a user directly in the database.
    pub async fn user(&self, name: &str) -> User {
        let n = self
            .users
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let email = format!("{}.{n}@example.test", name.to_lowercase().replace(' ', "."));
        self.store
            .create_user(&email, name, Some(&format!("https://avatars.test/{n}.png")))
            .await
            .unwrap()
    }

    /// An event's current version, read from the database (the `expectedVersion` of a write).
    pub async fn event_version(&self, id: i64) -> i64 {
        crate::sql::event_version(&self.db.pool, id).await
    }

    /// Creates a calendar owned by `owner` directly in the database.
    pub async fn calendar(&self, owner: UserId, name: &str) -> CalendarId {
        self.store
            .create_calendar(
                owner,
                &cal_domain::CalendarName::new(name).unwrap(),
                None,
                "Europe/Berlin",
            )
            .await
            .unwrap()
            .id
    }
}

/// A GraphQL response with small accessors for assertions.
#[derive(Debug, Clone)]
pub struct Gql(pub Value);

impl Gql {
    /// `data`, asserting there are no errors.
    pub fn data(&self) -> &Value {
        assert!(
            self.0.get("errors").is_none(),
            "unexpected errors: {}",
            self.0
        );
        &self.0["data"]
    }

    /// The first error's `extensions.code` (panics when there is no error).
    pub fn code(&self) -> &str {
        self.0["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error with a code, got {}", self.0))
    }

    pub fn message(&self) -> &str {
        self.0["errors"][0]["message"].as_str().unwrap_or("")
    }

    /// Every error's code.
    pub fn codes(&self) -> Vec<String> {
        self.0["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["extensions"]["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SQL statements the request issued (from `extensions.stats`).
    pub fn sql_statements(&self) -> u64 {
        self.0["extensions"]["stats"]["sqlStatements"]
            .as_u64()
            .expect("stats present")
    }
}
