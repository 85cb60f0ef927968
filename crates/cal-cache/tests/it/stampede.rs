//! Stampede protection: many concurrent identical batches on cold keys share one loader call.

use std::{sync::Arc, time::Duration};

use cal_cache::RequestStats;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_identical_cold_batches_load_once() {
    let redis = RedisServer::start();
    let db = Db::new();
    let names: Vec<String> = (0..10).map(|i| format!("v1:event:{i}:full")).collect();
    for n in &names {
        db.set(n, n, 1);
    }
    *db.delay.lock().unwrap() = Some(Duration::from_millis(200));
    let mut cfg = config(Some(&redis), &unique_prefix());
    cfg.redis_timeout = Duration::from_secs(2);
    let c = cache(cfg).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let keys = Arc::new(specs(&refs));

    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (c, db, keys) = (c.clone(), db.clone(), keys.clone());
            tokio::spawn(async move {
                let stats = RequestStats::default();
                let got = c
                    .get_many(&keys, Some(&stats), db.loader(&keys))
                    .await
                    .map(plain)
                    .unwrap();
                (got, stats.snapshot())
            })
        })
        .collect();
    let mut coalesced_calls = 0;
    let mut hit_calls = 0;
    for t in tasks {
        let (got, s) = t.await.unwrap();
        assert_eq!(got, names.iter().cloned().map(Some).collect::<Vec<_>>());
        if s.coalesced == 10 {
            coalesced_calls += 1;
        } else if s.l1_hits + s.l2_hits == 10 {
            hit_calls += 1;
        }
    }
    assert_eq!(db.calls(), 1, "exactly one loader call");
    assert_eq!(
        coalesced_calls + hit_calls,
        499,
        "everyone else coalesced or hit"
    );
    assert!(coalesced_calls > 0);
    let followers = metric(
        &c.render(),
        "cal_cache_coalesced_total",
        &[("tier", "db"), ("kind", "event")],
    );
    assert_eq!(followers, (coalesced_calls * 10) as f64);
}

#[tokio::test]
async fn a_failing_leader_does_not_fail_its_followers() {
    let db = Db::new();
    db.set("k", "v", 1);
    let c = cache(config(None, &unique_prefix())).await;
    let keys = specs(&["k"]);
    let failing = c.get_many::<String, &str, _, _>(&keys, None, |_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err("database down")
    });
    let follower = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.get_many(&keys, None, db.loader(&keys)).await
    };
    let (failed, followed) = tokio::join!(failing, follower);
    assert_eq!(failed, Err("database down"));
    assert_eq!(plain(followed.unwrap()), vec![Some("v".to_owned())]);
    assert_eq!(db.calls(), 1, "the follower ran its own loader");
}
