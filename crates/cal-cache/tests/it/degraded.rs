//! Redis down, slow or restarted: gets keep succeeding through L1 and the loader, the breaker
//! opens, errors are counted, and the cache recovers by itself, moving to a new epoch (and
//! clearing L1) when the restarted Redis lost its data.

use std::time::{Duration, Instant};

use cal_cache::{BreakerState, RequestStats};

use crate::helpers::*;

#[tokio::test]
async fn redis_outage_restart_and_data_loss() {
    let mut redis = RedisServer::start();
    let prefix = unique_prefix();
    let db = Db::new();
    let mut cfg = config(Some(&redis), &prefix);
    cfg.redis_timeout = Duration::from_millis(100);
    cfg.breaker_failures = 5;
    cfg.breaker_cooldown = Duration::from_millis(300);
    cfg.health_check_interval = Duration::from_secs(3600); // only the request path probes
    let c = cache(cfg).await;

    db.set("a", "alpha", 1);
    let a = specs(&["a"]);
    c.get_many(&a, None, db.loader(&a))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(c.status().epoch, 0);
    assert_eq!(c.status().breaker, Some(BreakerState::Closed));

    redis.kill();
    for i in 0..200 {
        let name = format!("d{i}");
        db.set(&name, &name, 1);
        let keys = specs(&[&name]);
        let got = c
            .get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
        assert_eq!(got, vec![Some(name)]);
    }
    assert_eq!(c.status().breaker, Some(BreakerState::Open));
    let rendered = c.render();
    assert!(metric(&rendered, "cal_cache_redis_errors_total", &[("op", "mget")]) >= 1.0);
    assert!(
        metric(
            &rendered,
            "cal_cache_redis_errors_total",
            &[("op", "breaker_open")]
        ) >= 1.0
    );
    assert_eq!(metric(&rendered, "cal_cache_breaker_state", &[]), 2.0);
    // L1 still serves what it had.
    let calls = db.calls();
    c.get_many(&a, None, db.loader(&a))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(db.calls(), calls);

    // Redis comes back empty on the same port: after the cool-down the cache uses L2 again.
    redis.spawn();
    let l2_fills = |c: &cal_cache::TieredCache| {
        metric(
            &c.render(),
            "cal_cache_fills_total",
            &[("tier", "l2"), ("kind", "event")],
        )
    };
    let fills_before = l2_fills(&c);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while l2_fills(&c) == fills_before {
        assert!(
            Instant::now() < deadline,
            "L2 never used again: {:?}",
            c.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let name = format!("r{i}");
        i += 1;
        db.set(&name, &name, 1);
        let keys = specs(&[&name]);
        c.get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
    }
    let status = c.status();
    assert_eq!(status.breaker, Some(BreakerState::Closed));
    assert_eq!(status.epoch, 1, "the new run_id was detected");

    // L1 was cleared by the epoch change: "a" is loaded again and lands in the new L2.
    let calls = db.calls();
    c.get_many(&a, None, db.loader(&a))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(db.calls(), calls + 1);
    let key = c.redis_key("a").unwrap();
    assert!(redis.get_raw(&key).await.is_some());

    // Another process reading the new Redis gets an L2 hit.
    let mut cfg = config(Some(&redis), &prefix);
    cfg.l1_enabled = false;
    let other = cache(cfg).await;
    let stats = RequestStats::default();
    let got = other
        .get_many(&a, Some(&stats), db.loader(&a))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(got, vec![Some("alpha".to_owned())]);
    assert_eq!(stats.snapshot().l2_hits, 1);
}

#[tokio::test]
async fn redis_absent_at_start_is_not_an_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(None, &unique_prefix());
    cfg.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
    cfg.redis_timeout = Duration::from_millis(50);
    let c = cache(cfg).await;
    let db = Db::new();
    db.set("k", "v", 1);
    let keys = specs(&["k"]);
    for _ in 0..10 {
        let got = c
            .get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
        assert_eq!(got, vec![Some("v".to_owned())]);
    }
    assert_eq!(db.calls(), 1, "L1 still works");
    c.invalidate(&[("k".to_owned(), 2)]).await; // must not panic or hang
}

#[tokio::test]
async fn tombstones_that_failed_during_a_stall_are_written_afterwards() {
    let redis = RedisServer::start();
    let prefix = unique_prefix();
    let db = Db::new();
    db.set("a", "v1", 1);
    db.set("b", "b", 1);
    let mut cfg = config(Some(&redis), &prefix);
    cfg.redis_timeout = Duration::from_millis(100);
    let writer = cache(cfg.clone()).await;
    cfg.l1_enabled = false;
    let other = cache(cfg).await;
    let a = specs(&["a"]);
    writer
        .get_many(&a, None, db.loader(&a))
        .await
        .map(plain)
        .unwrap();

    // Redis stalls while the writer commits and invalidates: the tombstone write times out.
    redis.freeze(true);
    db.set("a", "v2", 2);
    writer.invalidate(&[("a".to_owned(), 2)]).await;
    assert_eq!(writer.status().pending_tombstones, 1);
    redis.freeze(false);

    // The writer's next use of L2 writes the tombstone first.
    let b = specs(&["b"]);
    writer
        .get_many(&b, None, db.loader(&b))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(writer.status().pending_tombstones, 0);
    let raw = redis
        .get_raw(&writer.redis_key("a").unwrap())
        .await
        .unwrap();
    assert_eq!(raw, b"T2");

    // Another process does not get the old value from L2.
    let got = other
        .get_many(&a, None, db.loader(&a))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(got, vec![Some("v2".to_owned())]);
}
