//! The classic cache race (reader loads v1, writer commits v2 and invalidates, reader fills v1)
//! driven deterministically through the fill hooks: every interleaving of {load, commit,
//! tombstone, fill} must leave the cache equal to the database with versioned fills and
//! tombstones, and a plain delete-on-write cache must be shown to fail the same check.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use cal_cache::{CacheConfig, FillHooks, Loaded, TieredCache};
use tokio::sync::Semaphore;

use crate::helpers::*;

const KEY: &str = "v1:event:7:full";

/// Pauses one reader at two points: before its loader reads the database, and between the
/// load and the fill (through `FillHooks::after_load`).
struct Gate {
    armed: AtomicBool,
    load_go: Semaphore,
    loaded: Semaphore,
    fill_go: Semaphore,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            armed: AtomicBool::new(true),
            load_go: Semaphore::new(0),
            loaded: Semaphore::new(0),
            fill_go: Semaphore::new(0),
        })
    }

    async fn wait(s: &Semaphore) {
        s.acquire().await.unwrap().forget();
    }

    /// The reader's side, before reading the database.
    async fn before_read(&self) {
        if self.armed.load(Ordering::SeqCst) {
            Self::wait(&self.load_go).await;
        }
    }

    /// The reader's side, between load and fill.
    async fn between_load_and_fill(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.loaded.add_permits(1);
            Self::wait(&self.fill_go).await;
        }
    }
}

#[async_trait]
impl FillHooks for Gate {
    async fn after_load(&self, _keys: &[String]) {
        self.between_load_and_fill().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Load,
    Fill,
    Commit,
    Tombstone,
}

/// All orders of the reader's (Load, Fill) and the writer's (Commit, Tombstone).
fn interleavings() -> Vec<Vec<Step>> {
    use Step::*;
    let mut all = Vec::new();
    for reader_slots in [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]] {
        let mut order = Vec::new();
        let (mut r, mut w) = ([Load, Fill].into_iter(), [Commit, Tombstone].into_iter());
        for slot in 0..4 {
            order.push(if reader_slots.contains(&slot) {
                r.next().unwrap()
            } else {
                w.next().unwrap()
            });
        }
        all.push(order);
    }
    all
}

/// A cache under test, seen from the race's point of view.
#[async_trait]
trait Subject: Send + Sync + 'static {
    /// A read through the cache whose loader pauses at the gate's two points.
    async fn gated_read(&self, db: Arc<Db>, gate: Arc<Gate>) -> Option<String>;
    /// The writer's invalidation after committing `version`.
    async fn invalidate(&self, version: i64);
    /// A plain read through the cache after everything settled.
    async fn read(&self, db: Arc<Db>) -> Option<String>;
}

/// Runs one interleaving; returns (what the cache serves afterwards, what the database holds).
async fn run<S: Subject>(
    subject: Arc<S>,
    gate: Arc<Gate>,
    order: &[Step],
) -> (Option<String>, Option<String>) {
    let db = Db::new();
    db.set(KEY, "v1", 1);
    let reader = tokio::spawn({
        let (subject, db, gate) = (subject.clone(), db.clone(), gate.clone());
        async move { subject.gated_read(db, gate).await }
    });
    for step in order {
        match step {
            Step::Load => {
                gate.load_go.add_permits(1);
                Gate::wait(&gate.loaded).await; // the reader has read and is paused before its fill
            }
            Step::Fill => {
                gate.fill_go.add_permits(1);
                reader.await.unwrap();
                break; // Fill is the reader's last step; the writer's remaining steps follow
            }
            Step::Commit => db.set(KEY, "v2", 2),
            Step::Tombstone => subject.invalidate(2).await,
        }
    }
    // Writer steps after the fill.
    let fill_at = order.iter().position(|s| *s == Step::Fill).unwrap();
    for step in &order[fill_at + 1..] {
        match step {
            Step::Commit => db.set(KEY, "v2", 2),
            Step::Tombstone => subject.invalidate(2).await,
            _ => unreachable!(),
        }
    }
    let served = subject.read(db.clone()).await;
    (served, db.read(KEY).0)
}

struct Tiered(TieredCache);

fn gated_loader(
    db: Arc<Db>,
    gate: Arc<Gate>,
) -> impl FnOnce(Vec<usize>) -> LoadFuture<'static> + Send {
    move |indexes| {
        Box::pin(async move {
            gate.before_read().await;
            let (value, version) = db.read(KEY);
            Ok::<_, Infallible>(vec![Loaded {
                index: indexes[0],
                value,
                version,
            }])
        })
    }
}

#[async_trait]
impl Subject for Tiered {
    async fn gated_read(&self, db: Arc<Db>, gate: Arc<Gate>) -> Option<String> {
        let keys = specs(&[KEY]);
        self.0
            .get_many(&keys, None, gated_loader(db, gate))
            .await
            .map(plain)
            .unwrap()
            .remove(0)
    }
    async fn invalidate(&self, version: i64) {
        self.0.invalidate(&[(KEY.to_owned(), version)]).await;
    }
    async fn read(&self, db: Arc<Db>) -> Option<String> {
        let keys = specs(&[KEY]);
        self.0
            .get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap()
            .remove(0)
    }
}

async fn tiered(redis: &RedisServer, prefix: &str, gate: &Arc<Gate>) -> TieredCache {
    let mut cfg = config(Some(redis), prefix);
    cfg.hooks = Some(gate.clone());
    cache(cfg).await
}

#[tokio::test]
async fn stale_fill_after_invalidation_is_refused_in_both_tiers() {
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let gate = Gate::new();
    let c = tiered(&redis, &prefix, &gate).await;
    let order = [Step::Load, Step::Commit, Step::Tombstone, Step::Fill];
    let (served, truth) = run(Arc::new(Tiered(c.clone())), gate, &order).await;
    assert_eq!(truth.as_deref(), Some("v2"));
    assert_eq!(
        served.as_deref(),
        Some("v2"),
        "the next get loads version 2"
    );

    let r = c.render();
    let event = |tier| [("tier", tier), ("kind", "event")];
    assert_eq!(
        metric(&r, "cal_cache_refused_stale_total", &event("l2")),
        1.0
    );
    assert_eq!(
        metric(&r, "cal_cache_refused_stale_total", &event("l1")),
        1.0
    );
    // L2 now holds version 2 (filled by the next get over the tombstone).
    let raw = redis.get_raw(&c.redis_key(KEY).unwrap()).await.unwrap();
    assert!(raw.starts_with(b"V2:"), "{}", String::from_utf8_lossy(&raw));

    // Another process with L1 off sees version 2 from L2 without loading.
    let mut cfg = config(Some(&redis), &prefix);
    cfg.l1_enabled = false;
    let other = cache(cfg).await;
    let db = Db::new();
    let keys = specs(&[KEY]);
    let got = other
        .get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(got, vec![Some("v2".to_owned())]);
    assert_eq!(db.calls(), 0);
}

#[tokio::test]
async fn every_interleaving_ends_consistent_in_l1_only_mode() {
    for order in interleavings() {
        let gate = Gate::new();
        let mut cfg = config(None, &unique_prefix());
        cfg.hooks = Some(gate.clone());
        let c = cache(cfg).await;
        let (served, truth) = run(Arc::new(Tiered(c)), gate, &order).await;
        assert_eq!(served, truth, "order {order:?}");
    }
}

#[tokio::test]
async fn every_interleaving_ends_consistent_with_tombstones() {
    let redis = RedisServer::start();
    interleavings_with_tombstones(|prefix| config(Some(&redis), prefix)).await;
}

/// The same over a Redis Cluster: tombstones, versioned fills and reads go to the key's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_interleaving_ends_consistent_over_a_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    interleavings_with_tombstones(|prefix| cluster_config(&cluster, prefix)).await;
}

async fn interleavings_with_tombstones(config: impl Fn(&str) -> CacheConfig) {
    for order in interleavings() {
        let gate = Gate::new();
        let prefix = unique_prefix();
        let mut cfg = config(&prefix);
        cfg.hooks = Some(gate.clone());
        let c = cache(cfg).await;
        let (served, truth) = run(Arc::new(Tiered(c)), gate, &order).await;
        assert_eq!(served, truth, "order {order:?}");
        // L2 must agree too: a process with an empty L1 reads the same.
        let mut cfg = config(&prefix);
        cfg.l1_enabled = false;
        let fresh = cache(cfg).await;
        let db = Db::new();
        db.set(KEY, "v2", 2);
        let keys = specs(&[KEY]);
        let got = fresh
            .get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
        assert_eq!(got[0], truth, "L2 after order {order:?}");
    }
}

/// The strategy tombstones replace: fill with SET, invalidate with DEL (Redis only).
struct DeleteOnWrite {
    con: redis::aio::MultiplexedConnection,
    key: String,
}

#[async_trait]
impl Subject for DeleteOnWrite {
    async fn gated_read(&self, db: Arc<Db>, gate: Arc<Gate>) -> Option<String> {
        let mut con = self.con.clone();
        let cached: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut con)
            .await
            .unwrap();
        if cached.is_some() {
            return cached;
        }
        gate.before_read().await;
        let (value, _) = db.read(KEY);
        gate.between_load_and_fill().await;
        let _: () = redis::cmd("SET")
            .arg(&self.key)
            .arg(value.clone().unwrap_or_default())
            .query_async(&mut con)
            .await
            .unwrap();
        value
    }
    async fn invalidate(&self, _version: i64) {
        let mut con = self.con.clone();
        let _: () = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    async fn read(&self, db: Arc<Db>) -> Option<String> {
        let mut con = self.con.clone();
        let cached: Option<String> = redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut con)
            .await
            .unwrap();
        cached.or_else(|| db.read(KEY).0)
    }
}

#[tokio::test]
async fn delete_on_write_serves_stale_values_in_some_interleaving() {
    let redis = RedisServer::start();
    let mut stale_found = false;
    for order in interleavings() {
        let subject = Arc::new(DeleteOnWrite {
            con: redis.connection().await,
            key: format!("{}{KEY}", unique_prefix()),
        });
        let (served, truth) = run(subject, Gate::new(), &order).await;
        if served != truth {
            stale_found = true;
            assert_eq!(
                order,
                [Step::Load, Step::Commit, Step::Tombstone, Step::Fill]
            );
        }
    }
    assert!(
        stale_found,
        "without tombstones the race must be observable"
    );
}

/// A reader that starts after a write was acknowledged (commit, then invalidation) must not
/// share a load that read the database before the commit: it misses L1 (evicted) and L2
/// (tombstone) while that older load is still in flight, and must load again rather than join it.
#[tokio::test]
async fn a_reader_after_the_acknowledgement_does_not_join_an_older_flight() {
    let redis = RedisServer::start();
    let gate = Gate::new();
    let c = tiered(&redis, &unique_prefix(), &gate).await;
    let db = Db::new();
    db.set(KEY, "v1", 1);
    let keys = specs(&[KEY]);

    // Reader A reads v1 from the database and is paused before its fill.
    let first = tokio::spawn({
        let (c, db, gate) = (c.clone(), db.clone(), gate.clone());
        async move { Tiered(c).gated_read(db, gate).await }
    });
    gate.load_go.add_permits(1);
    Gate::wait(&gate.loaded).await;

    // The writer commits v2 and invalidates: the write is acknowledged.
    db.set(KEY, "v2", 2);
    c.invalidate(&[(KEY.to_owned(), 2)]).await;

    // Reader B starts now. Give it two seconds; if it joined A's flight it waits for A.
    let second = tokio::spawn({
        let (c, db) = (c.clone(), db.clone());
        async move {
            let keys = specs(&[KEY]);
            c.get_many(&keys, None, db.loader(&keys))
                .await
                .map(plain)
                .unwrap()
                .remove(0)
        }
    });
    let joined = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while !second.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .is_err();
    gate.fill_go.add_permits(1);
    let b = second.await.unwrap();
    let a = first.await.unwrap();
    assert!(!joined, "the later reader waited for the earlier load");
    assert_eq!(
        b.as_deref(),
        Some("v2"),
        "the later reader got the pre-write row"
    );
    assert_eq!(
        a.as_deref(),
        Some("v1"),
        "the earlier reader started before the write"
    );
    assert_eq!(
        db.calls(),
        1,
        "B loaded once, with its own (ungated) loader"
    );
    // And the cache keeps v2: A's late fill was refused.
    let got = c
        .get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(got, vec![Some("v2".to_owned())]);
}
