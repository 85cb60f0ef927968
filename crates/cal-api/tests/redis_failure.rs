//! Redis is a cache, never the source of truth: with it killed mid-load, every request still
//! succeeds from PostgreSQL (plus L1), and the tier comes back by itself when Redis does.

mod common;
use cal_test_support::RedisServer;
use common::*;
use std::time::Duration;

/// Served by Redis: key by key (L2 hits) or whole (the shared response tier).
fn from_redis(r: &Gql) -> bool {
    let stats = &r.0["extensions"]["stats"];
    stats["l2Hits"].as_u64().unwrap() > 0 || stats["responseCacheHit"] == true
}

#[tokio::test]
async fn requests_survive_redis_dying_and_the_tier_recovers() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_full(
        |_| {},
        |c| {
            c.redis_url = Some(url);
            // No L1: every read goes to Redis or the database, so Redis' absence is felt at once.
            c.l1_enabled = false;
            c.redis_timeout = Duration::from_millis(50);
            c.breaker_cooldown = Duration::from_millis(300);
        },
    )
    .await;
    let w = world(&app, 10, 3).await;
    let first = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    let expected = first.data().clone();
    let warm = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert!(from_redis(&warm), "served by Redis while it is up");

    let mut failures = 0;
    for i in 0..60 {
        if i == 10 {
            redis.kill();
        }
        if i == 40 {
            redis.restart();
        }
        let r = app
            .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
            .await;
        if r.0.get("errors").is_some() || r.0["data"] != expected {
            failures += 1;
        }
        if (40..60).contains(&i) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(failures, 0, "every request succeeded while Redis was down");

    // Recovery: after the breaker's cool-down the restarted (empty) Redis is filled and used again.
    let mut recovered = false;
    for _ in 0..50 {
        let r = app
            .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
            .await;
        assert_eq!(r.data(), &expected);
        if from_redis(&r) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the Redis tier came back by itself");
    let status = app.tiers.cache.status();
    assert!(
        status.epoch >= 1,
        "a restarted, empty Redis is detected: {status:?}"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cal_cache_redis_errors_total"),
        "errors are counted"
    );
}

#[tokio::test]
async fn without_redis_the_service_runs_on_l1_alone() {
    let app = TestApp::spawn_full(|_| {}, |c| c.redis_url = None).await;
    let w = world(&app, 5, 2).await;
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    let warm = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(warm.sql_statements(), 0);
    assert!(!app.tiers.cache.status().l2_enabled);
}
