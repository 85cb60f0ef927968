//! L2 on a Redis Cluster of the test's own (three primaries, three replicas): a warm batch spread
//! over every shard loads nothing, a primary killed under load sends only its own keys to the
//! loader while the other shards keep serving, and a failover that lost an acknowledged
//! tombstone never serves the value it hid. (The race and stampede tests run over a cluster too,
//! in `race.rs` and `stampede.rs`.)

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use cal_cache::{RequestStats, TieredCache};
use tokio::task::block_in_place;

use crate::helpers::*;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v1:event:{i}:full")).collect()
}

async fn start_cluster() -> RedisCluster {
    tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap()
}

/// An L1-less cache on `cluster`: every read goes to Redis.
async fn l2_only(cluster: &RedisCluster, prefix: &str) -> TieredCache {
    let mut cfg = cluster_config(cluster, prefix);
    cfg.l1_enabled = false;
    cfg.redis_timeout = Duration::from_millis(300);
    cfg.breaker_cooldown = Duration::from_millis(300);
    // Only the request path notices changes: no periodic check hides what the tests look at.
    cfg.health_check_interval = Duration::from_secs(3600);
    cache(cfg).await
}

/// The node that is the primary for the slot of a full Redis key, now.
fn primary_of(cluster: &RedisCluster, full_key: &str) -> usize {
    let slot = cluster.cli(0, &["CLUSTER", "KEYSLOT", full_key]);
    cluster.primary_for_slot(
        slot.trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number"),
    )
}

/// Which node is the primary of each key's slot (by the key's hash tag: one question per group).
fn primaries(cluster: &RedisCluster, c: &TieredCache, keys: &[String]) -> Vec<usize> {
    let mut by_tag: HashMap<String, usize> = HashMap::new();
    keys.iter()
        .map(|k| {
            let full = c.redis_key(k).expect("the namespace is known after a read");
            let tag = full[..=full.find('}').expect("a hash tag")].to_owned();
            *by_tag
                .entry(tag)
                .or_insert_with(|| primary_of(cluster, &full))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_batch_over_every_shard_costs_no_loads() {
    let cluster = start_cluster().await;
    let prefix = unique_prefix();
    let db = Db::new();
    let names = names(200);
    for n in &names {
        db.set(n, n, 1);
    }
    let keys = specs(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let writer = cache(cluster_config(&cluster, &prefix)).await;
    writer
        .get_many(&keys, None, db.loader(&keys))
        .await
        .unwrap();
    assert_eq!(db.calls(), 1);

    let reader = l2_only(&cluster, &prefix).await;
    let stats = RequestStats::default();
    let got = reader
        .get_many(&keys, Some(&stats), db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(got, names.iter().cloned().map(Some).collect::<Vec<_>>());
    assert_eq!(db.calls(), 1, "the warm batch loaded nothing");
    assert_eq!(stats.snapshot().l2_hits, 200);
    let shards: BTreeSet<usize> =
        block_in_place(|| primaries(&cluster, &reader, &names).into_iter().collect());
    assert_eq!(
        shards.len(),
        3,
        "the keys are spread over all three primaries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_sends_only_its_keys_to_the_loader() {
    let mut cluster = start_cluster().await;
    let prefix = unique_prefix();
    let db = Db::new();
    let names = names(160);
    for n in &names {
        db.set(n, n, 1);
    }
    let keys = Arc::new(specs(&names.iter().map(String::as_str).collect::<Vec<_>>()));
    let c = l2_only(&cluster, &prefix).await;
    c.get_many(&keys, None, db.loader(&keys)).await.unwrap();
    let owner = block_in_place(|| primaries(&cluster, &c, &names));
    let victim = owner[0];
    let victim_port = cluster.port(victim);
    // Its replica takes over its slots: errors during the failover may name either.
    let replica_port = cluster.port(block_in_place(|| cluster.replica_of(victim)));
    let victims: BTreeSet<usize> = (0..names.len()).filter(|&i| owner[i] == victim).collect();
    assert!(
        victims.len() < names.len(),
        "the other shards hold keys too"
    );
    let victim_groups: BTreeSet<String> = victims
        .iter()
        .map(|&i| {
            let full = c.redis_key(&names[i]).unwrap();
            full[..=full.find('}').unwrap()].to_owned()
        })
        .collect();
    db.requested.lock().unwrap().clear();
    let calls = db.calls();

    // Readers in a loop while the primary dies and its replica takes over.
    let stop = Instant::now() + Duration::from_secs(6);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (c, db, keys, names) = (c.clone(), db.clone(), keys.clone(), names.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                while Instant::now() < stop {
                    let got = c.get_many(&keys, None, db.loader(&keys)).await.map(plain);
                    assert_eq!(
                        got.unwrap(),
                        names.iter().cloned().map(Some).collect::<Vec<_>>(),
                        "every read answers, with the right values"
                    );
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    block_in_place(|| cluster.kill(victim));
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 20, "the readers kept going: {reads} reads");

    let loaded: BTreeSet<usize> = db
        .requested
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .copied()
        .collect();
    assert!(db.calls() > calls, "the dead shard's keys were loaded");
    assert!(
        loaded.is_subset(&victims),
        "only the dead shard's keys go to the loader; also loaded: {:?}",
        loaded.difference(&victims).collect::<Vec<_>>()
    );
    let rendered = c.render();
    let shard = format!("127.0.0.1:{victim_port}");
    let errors = metric(
        &rendered,
        "cal_cache_redis_shard_errors_total",
        &[("shard", &shard)],
    );
    assert!(errors >= 1.0, "the dead shard is named:\n{rendered}");
    let replica = format!("127.0.0.1:{replica_port}");
    let others: Vec<&str> = rendered
        .lines()
        .filter(|l| l.starts_with("cal_cache_redis_shard_errors_total{"))
        .filter(|l| !l.contains(&format!("\"{shard}\"")) && !l.contains(&format!("\"{replica}\"")))
        .collect();
    assert!(others.is_empty(), "no other shard failed: {others:?}");

    // The replica took over: the cache uses its shard again by itself, in a new namespace.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = db.calls();
        c.get_many(&keys, None, db.loader(&keys)).await.unwrap();
        if db.calls() == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "L2 never served every key again: {:?}",
            c.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let epoch = c.status().epoch;
    assert!(
        (1..=victim_groups.len() as u64).contains(&epoch),
        "the promoted replica is a new epoch for each of the dead shard's {} slot groups, once: \
         {epoch}",
        victim_groups.len()
    );
}

/// Waits until `replica` has every write `primary` has (their replication offsets agree).
fn replicated(cluster: &RedisCluster, primary: usize, replica: usize) {
    let offset = |node: usize, field: &str| -> i64 {
        let info = cluster.cli(node, &["INFO", "replication"]);
        info.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {info}"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while offset(replica, "slave_repl_offset:") < offset(primary, "master_repl_offset:") {
        assert!(Instant::now() < deadline, "the replica never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_a_tombstone_serves_no_old_value() {
    const KEY: &str = "v1:event:7:full";
    let cluster = start_cluster().await;
    let prefix = unique_prefix();
    let db = Db::new();
    db.set(KEY, "v1", 1);
    let keys = specs(&[KEY]);
    let reader = l2_only(&cluster, &prefix).await;
    let got = reader
        .get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain);
    assert_eq!(got.unwrap(), vec![Some("v1".to_owned())]);
    // The writer knows the cluster before anything goes wrong, as a running instance does.
    let writer = l2_only(&cluster, &prefix).await;
    writer
        .get_many(&keys, None, db.loader(&keys))
        .await
        .unwrap();
    let full = reader.redis_key(KEY).unwrap();
    let (primary, replica) = block_in_place(|| {
        let primary = primary_of(&cluster, &full);
        let replica = cluster.replica_of(primary);
        replicated(&cluster, primary, replica);
        (primary, replica)
    });

    // The replica stops replicating (frozen, and its link dropped so that nothing buffered in
    // the socket reaches it later); a write is acknowledged with its tombstone on the primary.
    block_in_place(|| {
        cluster.pause(replica);
        cluster.cli(primary, &["CLIENT", "KILL", "TYPE", "replica"]);
    });
    db.set(KEY, "v2", 2);
    writer.invalidate(&[(KEY.to_owned(), 2)]).await;
    assert_eq!(
        writer.status().pending_tombstones,
        0,
        "the tombstone was written"
    );
    let held = block_in_place(|| cluster.cli(primary, &["GET", &full]));
    assert!(
        held.starts_with("T2"),
        "the primary holds the tombstone: {held}"
    );

    // The replica takes over without it; the old primary rejoins as its replica and resyncs.
    block_in_place(|| {
        cluster.pause(primary);
        cluster.resume(replica);
        cluster.takeover(replica);
        cluster.resume(primary);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .cli(primary, &["INFO", "replication"])
            .contains("role:slave")
        {
            assert!(
                Instant::now() < deadline,
                "the old primary never rejoined as a replica"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.wait_healthy();
        let kept = cluster.cli(replica, &["GET", &full]);
        assert!(
            kept.starts_with("V1:"),
            "the failover lost the tombstone: {kept}"
        );
    });

    // A reader whose last word from that shard predates the failover, and a new one.
    let got = reader
        .get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain);
    assert_eq!(
        got.unwrap(),
        vec![Some("v2".to_owned())],
        "no old value after the failover"
    );
    let fresh = l2_only(&cluster, &prefix).await;
    let got = fresh
        .get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain);
    assert_eq!(got.unwrap(), vec![Some("v2".to_owned())]);
    assert_eq!(reader.status().epoch, 1, "the new primary was noticed");
}
