//! Stampede protection: concurrent identical batches on cold keys share one loader call.
//!
//! Both tests hold the leader's load on a gate until every other caller is certainly waiting
//! for it: on a single-threaded runtime, a caller whose `misses` figure is set has finished the
//! poll in which it counted its misses and, in that same poll, entered the flight (nothing in
//! between awaits). Only then is the leader let go, so the outcome does not depend on timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cal_cache::{CacheConfig, RequestStats};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::helpers::*;

const KEYS: usize = 10;

/// Waits (yielding to the callers, bounded) until each caller of `tasks` (with `stats`) counts
/// `KEYS` misses, i.e. has looked in L1 and L2 and joined or started the flight, or is done.
async fn until_all_in_flight<T>(stats: &[Arc<RequestStats>], tasks: &[JoinHandle<T>]) {
    for _ in 0..10_000 {
        if stats
            .iter()
            .zip(tasks)
            .all(|(s, t)| s.snapshot().misses == KEYS as u64 || t.is_finished())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let counted: Vec<u64> = stats.iter().map(|s| s.snapshot().misses).collect();
    panic!("not every caller reached the flight: misses {counted:?}");
}

#[tokio::test]
async fn five_hundred_identical_cold_batches_load_once() {
    let redis = RedisServer::start();
    cold_batches_load_once(config(Some(&redis), &unique_prefix())).await;
}

/// The same stampede over a Redis Cluster: the batch's keys span every slot group, and each
/// group's misses and fills are separate calls, yet the batch still loads once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_identical_cold_batches_load_once_over_a_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    cold_batches_load_once(cluster_config(&cluster, &unique_prefix())).await;
}

async fn cold_batches_load_once(mut cfg: CacheConfig) {
    const CALLERS: usize = 500;
    let db = Db::new();
    let names: Vec<String> = (0..KEYS).map(|i| format!("v1:event:{i}:full")).collect();
    for n in &names {
        db.set(n, n, 1);
    }
    cfg.redis_timeout = Duration::from_secs(2);
    let c = cache(cfg).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let keys = Arc::new(specs(&refs));
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let stats: Vec<Arc<RequestStats>> = (0..CALLERS).map(|_| Arc::default()).collect();

    let tasks: Vec<_> = stats
        .iter()
        .map(|stats| {
            let (c, db, keys, gate, entered, stats) = (
                c.clone(),
                db.clone(),
                keys.clone(),
                gate.clone(),
                entered.clone(),
                stats.clone(),
            );
            tokio::spawn(async move {
                let load = {
                    let (gate, db, keys, entered) = (&gate, &db, &keys, &entered);
                    move |indexes| async move {
                        entered.fetch_add(1, Ordering::SeqCst);
                        let _open = gate.acquire().await.unwrap();
                        db.loader(keys)(indexes).await
                    }
                };
                c.get_many(&keys, Some(&stats), load)
                    .await
                    .map(plain)
                    .unwrap()
            })
        })
        .collect();
    until_all_in_flight(&stats, &tasks).await;
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "one loader started; every other caller waits for it"
    );
    gate.add_permits(CALLERS);
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got, names.iter().cloned().map(Some).collect::<Vec<_>>());
    }
    assert_eq!(db.calls(), 1, "exactly one loader call");
    let led: Vec<_> = stats.iter().map(|s| s.snapshot()).collect();
    assert_eq!(
        led.iter().filter(|s| s.loaded == KEYS as u64).count(),
        1,
        "one leader loaded every key"
    );
    assert_eq!(
        led.iter().filter(|s| s.coalesced == KEYS as u64).count(),
        CALLERS - 1,
        "every other caller shared its load"
    );
    let followers = metric(
        &c.render(),
        "cal_cache_coalesced_total",
        &[("tier", "db"), ("kind", "event")],
    );
    assert_eq!(followers, ((CALLERS - 1) * KEYS) as f64);
}

#[tokio::test]
async fn a_failing_leader_does_not_fail_its_followers() {
    const FOLLOWERS: usize = 3;
    let db = Db::new();
    let names: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    for n in &names {
        db.set(n, "v", 1);
    }
    let c = cache(config(None, &unique_prefix())).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let keys = Arc::new(specs(&refs));
    let gate = Arc::new(Semaphore::new(0));
    let leader_stats = Arc::new(RequestStats::default());
    let leader = {
        let (c, keys, gate, stats) = (c.clone(), keys.clone(), gate.clone(), leader_stats.clone());
        tokio::spawn(async move {
            c.get_many::<String, &str, _, _>(&keys, Some(&stats), |_| async move {
                let _open = gate.acquire().await.unwrap();
                Err("database down")
            })
            .await
        })
    };
    until_all_in_flight(
        std::slice::from_ref(&leader_stats),
        std::slice::from_ref(&leader),
    )
    .await;
    let stats: Vec<Arc<RequestStats>> = (0..FOLLOWERS).map(|_| Arc::default()).collect();
    let followers: Vec<_> = stats
        .iter()
        .map(|stats| {
            let (c, db, keys, stats) = (c.clone(), db.clone(), keys.clone(), stats.clone());
            tokio::spawn(async move {
                c.get_many(&keys, Some(&stats), db.loader(&keys))
                    .await
                    .map(plain)
            })
        })
        .collect();
    until_all_in_flight(&stats, &followers).await;
    assert_eq!(db.calls(), 0, "the followers wait for the leader");
    gate.add_permits(1);
    assert_eq!(leader.await.unwrap(), Err("database down"));
    for f in followers {
        assert_eq!(f.await.unwrap().unwrap(), vec![Some("v".to_owned()); KEYS]);
    }
    // Each follower loaded for itself (the first one's fill may spare the others' loaders,
    // found by their re-check of L1), and none was handed anything from the failed load.
    let calls = db.calls();
    assert!((1..=FOLLOWERS).contains(&calls), "{calls} loader calls");
    let snapshots: Vec<_> = stats.iter().map(|s| s.snapshot()).collect();
    let loaded: u64 = snapshots.iter().map(|s| s.loaded).sum();
    assert_eq!(loaded, (calls * KEYS) as u64, "{snapshots:?}");
    assert!(snapshots.iter().all(|s| s.coalesced == 0), "{snapshots:?}");
    let shared = metric(
        &c.render(),
        "cal_cache_coalesced_total",
        &[("tier", "db"), ("kind", "event")],
    );
    assert_eq!(shared, 0.0, "nothing was shared from a failed load");
}
