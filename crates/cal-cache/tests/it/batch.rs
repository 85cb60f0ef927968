//! The batch read-through path against a real Redis: L1 hits, L2 hits from a second process,
//! one loader call with exactly the missing indexes, one MGET per batch, negative caching.

use cal_cache::RequestStats;

use crate::helpers::*;

#[tokio::test]
async fn l1_l2_and_loader_each_serve_their_part_of_a_batch() {
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let db = Db::new();
    db.set("v1:event:0", "zero", 1);
    db.set("v1:event:1", "one", 3);
    db.set("v1:event:2", "two", 1);
    // v1:event:3 does not exist: cached as a negative entry.

    let a = cache(config(Some(&redis), &prefix)).await;
    let keys = specs(&["v1:event:0", "v1:event:1", "v1:event:2", "v1:event:3"]);

    // Cold: one loader call with every index.
    let stats = RequestStats::default();
    let got = a
        .get_many(&keys, Some(&stats), db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some("zero".into()),
            Some("one".into()),
            Some("two".into()),
            None
        ]
    );
    assert_eq!(db.calls(), 1);
    assert_eq!(db.requested.lock().unwrap()[0], vec![0, 1, 2, 3]);
    assert_eq!(stats.snapshot().loaded, 4);

    // Warm: all from L1, including the negative entry.
    let stats = RequestStats::default();
    let again = a
        .get_many(&keys, Some(&stats), db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(again, got);
    assert_eq!(db.calls(), 1);
    assert_eq!(stats.snapshot().l1_hits, 4);

    // Another process (fresh cache, same Redis and prefix): all from L2, and L1 gets filled.
    let b = cache(config(Some(&redis), &prefix)).await;
    let stats = RequestStats::default();
    let from_l2 = b
        .get_many(&keys, Some(&stats), db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(from_l2, got);
    assert_eq!(db.calls(), 1);
    assert_eq!(stats.snapshot().l2_hits, 4);
    let stats = RequestStats::default();
    b.get_many(&keys, Some(&stats), db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(stats.snapshot().l1_hits, 4, "L2 hits were filled into L1");

    // A mixed batch on B: L1 hit, L2-only key, two cold keys (one repeated).
    db.set("v1:event:6", "six", 1);
    let only_a = specs(&["v1:event:6"]);
    a.get_many(&only_a, None, db.loader(&only_a))
        .await
        .map(plain)
        .unwrap();
    db.set("v1:event:4", "four", 1);
    db.set("v1:event:5", "five", 2);
    let mixed = specs(&[
        "v1:event:0",
        "v1:event:4",
        "v1:event:6",
        "v1:event:5",
        "v1:event:4",
    ]);
    let scripts_before = redis.command_calls("evalsha").await;
    let stats = RequestStats::default();
    let got = b
        .get_many(&mixed, Some(&stats), db.loader(&mixed))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(
        redis.command_calls("evalsha").await - scripts_before,
        2,
        "one read and one fill per batch"
    );
    assert_eq!(
        got,
        vec![
            Some("zero".into()),
            Some("four".into()),
            Some("six".into()),
            Some("five".into()),
            Some("four".into())
        ]
    );
    let s = stats.snapshot();
    assert_eq!((s.l1_hits, s.l2_hits, s.misses, s.loaded), (1, 1, 2, 2));
    assert_eq!(
        db.requested.lock().unwrap().last().unwrap(),
        &vec![1, 3],
        "the loader gets exactly the first index of each missing key"
    );

    // The stored L2 value carries the version.
    let raw = redis
        .get_raw(&b.redis_key("v1:event:5").unwrap())
        .await
        .unwrap();
    assert!(
        raw.starts_with(b"V2:"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[tokio::test]
async fn l1_only_without_redis_url() {
    let db = Db::new();
    db.set("k", "v", 1);
    let c = cache(config(None, &unique_prefix())).await;
    let keys = specs(&["k", "missing"]);
    for _ in 0..3 {
        let got = c
            .get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
        assert_eq!(got, vec![Some("v".to_owned()), None]);
    }
    assert_eq!(db.calls(), 1);
    let status = c.status();
    assert!(status.l1_enabled && !status.l2_enabled);
    assert_eq!(status.breaker, None);
}

#[tokio::test]
async fn switches_turn_tiers_off() {
    let redis = RedisServer::start();
    let db = Db::new();
    db.set("k", "v", 1);
    let mut cfg = config(Some(&redis), &unique_prefix());
    cfg.l1_enabled = false;
    cfg.l2_enabled = false;
    let c = cache(cfg).await;
    let keys = specs(&["k"]);
    for _ in 0..3 {
        c.get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
    }
    assert_eq!(db.calls(), 3, "cold path: every call loads");
    assert_eq!(redis.command_calls("evalsha").await, 0, "L2 is not asked");
}

#[tokio::test]
async fn values_over_the_size_limit_are_not_cached() {
    let redis = RedisServer::start();
    let db = Db::new();
    db.set("big", &"x".repeat(1000), 1);
    db.set("small", "x", 1);
    let mut cfg = config(Some(&redis), &unique_prefix());
    cfg.max_value_bytes = 100;
    let c = cache(cfg).await;
    let big = specs(&["big"]);
    let small = specs(&["small"]);
    for _ in 0..2 {
        let got = c
            .get_many(&big, None, db.loader(&big))
            .await
            .map(plain)
            .unwrap();
        assert_eq!(got[0].as_deref().map(str::len), Some(1000));
        c.get_many(&small, None, db.loader(&small))
            .await
            .map(plain)
            .unwrap();
    }
    assert_eq!(db.calls(), 3, "big loaded twice, small once");
    assert!(redis.get_raw(&c.redis_key("big").unwrap()).await.is_none());
    assert!(
        redis
            .get_raw(&c.redis_key("small").unwrap())
            .await
            .is_some()
    );
    assert!(c.render().contains("cal_cache_oversize_total"));
}
