//! L1-only behaviour: the weight bound, early refresh (XFetch), metrics rendering and the
//! in-process invalidation bus.

use std::{sync::Arc, time::Duration};

use cal_cache::{InProcessBus, Invalidation, InvalidationBus, RequestStats};
use futures::StreamExt;

use crate::helpers::*;

#[tokio::test]
async fn l1_weight_stays_under_the_bound() {
    let db = Db::new();
    let mut cfg = config(None, &unique_prefix());
    cfg.l1_max_bytes = 64 * 1024;
    let registry = prometheus::Registry::new();
    let c = cal_cache::TieredCache::new(cfg, &registry).await.unwrap();
    let value = "y".repeat(1024);
    for batch in 0..20 {
        let names: Vec<String> = (0..50).map(|i| format!("k{batch}:{i}")).collect();
        for n in &names {
            db.set(n, &value, 1);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let keys = specs(&refs);
        c.get_many(&keys, None, db.loader(&keys))
            .await
            .map(plain)
            .unwrap();
    }
    c.run_pending_tasks().await;
    let status = c.status();
    assert!(status.l1_weighted_bytes > 0);
    assert!(
        status.l1_weighted_bytes <= 64 * 1024,
        "weighted size {} over the bound",
        status.l1_weighted_bytes
    );
    assert!(status.l1_entries < 1000);
    let rendered = c.render();
    assert!(
        metric(
            &rendered,
            "cal_cache_evictions_total",
            &[("tier", "l1"), ("kind", "event")]
        ) > 0.0
    );
    assert!(metric(&rendered, "cal_cache_l1_weighted_bytes", &[]) > 0.0);
}

#[tokio::test]
async fn xfetch_refreshes_early_only_when_beta_says_so() {
    for (beta, expected_loads) in [(0.0, 1), (1e9, 3)] {
        let db = Db::new();
        db.set("k", "v", 1);
        *db.delay.lock().unwrap() = Some(Duration::from_millis(20));
        let mut cfg = config(None, &unique_prefix());
        cfg.xfetch_beta = beta;
        let c = cache(cfg).await;
        let keys = specs(&["k"]);
        for _ in 0..3 {
            let got = c
                .get_many(&keys, None, db.loader(&keys))
                .await
                .map(plain)
                .unwrap();
            assert_eq!(got, vec![Some("v".to_owned())]);
        }
        // beta = 0: loaded once, then hits. A huge beta turns a 20 ms load into a head start far
        // larger than the TTL, so every hit is picked for refresh.
        assert_eq!(db.calls(), expected_loads, "beta {beta}");
    }
}

#[tokio::test]
async fn metrics_render_by_tier_and_kind() {
    let db = Db::new();
    db.set("k", "v", 1);
    let c = cache(config(None, &unique_prefix())).await;
    let keys = vec![
        cal_cache::KeySpec::new("k", "user", Duration::from_secs(60)),
        cal_cache::KeySpec::new("gone", "user", Duration::from_secs(60)),
    ];
    c.get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    c.get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    let r = c.render();
    let user = |tier| [("tier", tier), ("kind", "user")];
    assert_eq!(metric(&r, "cal_cache_hits_total", &user("l1")), 2.0);
    assert_eq!(metric(&r, "cal_cache_misses_total", &user("l1")), 2.0);
    assert_eq!(metric(&r, "cal_cache_hits_total", &user("db")), 1.0);
    assert_eq!(metric(&r, "cal_cache_misses_total", &user("db")), 1.0);
    assert_eq!(metric(&r, "cal_cache_fills_total", &user("l1")), 2.0);
    assert!(r.contains("# TYPE cal_cache_l1_weighted_bytes gauge"));
    assert!(r.contains("# TYPE cal_cache_breaker_state gauge"));
}

#[tokio::test]
async fn remote_invalidations_evict_l1_and_refuse_older_fills() {
    let db = Db::new();
    db.set("k", "v1", 1);
    let c = cache(config(None, &unique_prefix())).await;
    let bus: Arc<dyn InvalidationBus> = Arc::new(InProcessBus::default());
    let mut sub = bus.subscribe();
    let keys = specs(&["k"]);
    c.get_many(&keys, None, db.loader(&keys))
        .await
        .map(plain)
        .unwrap();

    // Another process commits version 2 and publishes.
    db.set("k", "v2", 2);
    bus.publish(Invalidation::new(vec![("k".into(), 2)], "other", 1))
        .await
        .unwrap();
    let inv = sub.next().await.unwrap().unwrap();
    c.apply_remote(&inv);
    assert!(c.l1_refuses("k", 1).await);
    assert!(!c.l1_refuses("k", 2).await);

    let stats = RequestStats::default();
    let got = c
        .get_many(&keys, Some(&stats), db.loader(&keys))
        .await
        .map(plain)
        .unwrap();
    assert_eq!(got, vec![Some("v2".to_owned())]);
    assert_eq!(stats.snapshot().loaded, 1);
}
