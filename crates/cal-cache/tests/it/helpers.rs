//! Test helpers: a disposable `redis-server`, a test-side "database" with a counting loader,
//! cache configs with unique prefixes, and metric parsing.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use cal_cache::{CacheConfig, KeySpec, Loaded, TieredCache};
pub use cal_test_infra::RedisCluster;
use futures::Future;

/// A `redis-server` child process on its own port; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the server on the same port, empty.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: a Redis that is slow, not gone.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0_u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Calls of one command so far (from `INFO commandstats`).
    pub async fn command_calls(&self, command: &str) -> u64 {
        let mut con = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
            .unwrap_or(0)
    }

    pub async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        let mut con = self.connection().await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

static PREFIX_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A key prefix no other test (or test run) uses.
pub fn unique_prefix() -> String {
    let n = PREFIX_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("test:{}:{n}:", std::process::id())
}

pub fn config(redis: Option<&RedisServer>, prefix: &str) -> CacheConfig {
    CacheConfig {
        redis_url: redis.map(RedisServer::url),
        key_prefix: prefix.to_owned(),
        redis_timeout: Duration::from_millis(500),
        ..CacheConfig::default()
    }
}

/// A config whose L2 is a Redis Cluster of the test's own.
pub fn cluster_config(cluster: &RedisCluster, prefix: &str) -> CacheConfig {
    CacheConfig {
        redis_cluster_nodes: cluster.nodes_list().split(',').map(str::to_owned).collect(),
        ..config(None, prefix)
    }
}

pub async fn cache(cfg: CacheConfig) -> TieredCache {
    TieredCache::new(cfg, &prometheus::Registry::new())
        .await
        .unwrap()
}

pub fn spec(key: &str) -> KeySpec {
    KeySpec::new(key, "event", Duration::from_secs(60))
}

pub fn specs(keys: &[&str]) -> Vec<KeySpec> {
    keys.iter().map(|k| spec(k)).collect()
}

pub type LoadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Loaded<String>>, Infallible>> + Send + 'a>>;

/// The test's source of truth: key → (value, version); a missing key is a missing row.
#[derive(Default)]
pub struct Db {
    rows: Mutex<HashMap<String, (String, i64)>>,
    pub calls: AtomicUsize,
    pub requested: Mutex<Vec<Vec<usize>>>,
    pub delay: Mutex<Option<Duration>>,
}

impl Db {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn set(&self, key: &str, value: &str, version: i64) {
        self.rows
            .lock()
            .unwrap()
            .insert(key.to_owned(), (value.to_owned(), version));
    }

    pub fn read(&self, key: &str) -> (Option<String>, i64) {
        match self.rows.lock().unwrap().get(key) {
            Some((v, ver)) => (Some(v.clone()), *ver),
            None => (None, 0),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// A loader for `get_many(keys, ..)`: one "statement" for all requested indexes.
    pub fn loader<'a>(
        &'a self,
        keys: &'a [KeySpec],
    ) -> impl FnOnce(Vec<usize>) -> LoadFuture<'a> + Send + 'a {
        move |indexes| {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.requested.lock().unwrap().push(indexes.clone());
                let delay = *self.delay.lock().unwrap();
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                Ok(indexes
                    .into_iter()
                    .map(|index| {
                        let (value, version) = self.read(&keys[index].key);
                        Loaded {
                            index,
                            value,
                            version,
                        }
                    })
                    .collect())
            })
        }
    }
}

/// The value of one sample in Prometheus text output, matched by name and labels.
pub fn metric(rendered: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    rendered
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// `get_many`'s values as plain strings, for comparisons.
pub fn plain(values: Vec<Option<Arc<String>>>) -> Vec<Option<String>> {
    values
        .into_iter()
        .map(|v| v.map(|s| s.as_ref().clone()))
        .collect()
}
