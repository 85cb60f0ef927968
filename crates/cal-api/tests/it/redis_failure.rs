//! Redis is a cache, never the source of truth: with it killed mid-load, every request still
//! succeeds from PostgreSQL (plus L1), and the tier comes back by itself when Redis does.

use crate::common::*;
use cal_test_support::{RedisServer, metric_sum};
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
    let (mut up, mut down) = (String::new(), String::new());
    for i in 0..60 {
        if i == 10 {
            up = app.metrics().await;
            redis.kill();
        }
        if i == 40 {
            down = app.metrics().await;
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
    // Counted: nothing while Redis was up; while it was dead, every call it was sent failed or
    // was skipped by the open breaker, and each of the 30 requests sent at least one.
    let errors = |m: &str| metric_sum(m, "cal_cache_redis_errors_total", &[]);
    let calls = |m: &str| metric_sum(m, "cal_cache_redis_requests_total", &[]);
    assert_eq!(errors(&up), 0.0, "no Redis errors while it is up");
    assert!(calls(&up) > 0.0, "Redis was used while up");
    let (failed, sent) = (errors(&down) - errors(&up), calls(&down) - calls(&up));
    assert_eq!(
        failed, sent,
        "every call to the dead Redis is counted as an error"
    );
    assert!(
        sent >= 30.0,
        "{sent} Redis calls for 30 requests while it was dead"
    );
    let now = app.metrics().await;
    assert_eq!(
        metric_sum(&now, "cal_cache_epoch", &[]),
        1.0,
        "one restart of Redis detected"
    );
    assert_eq!(
        metric_sum(&now, "cal_cache_breaker_state", &[]),
        0.0,
        "breaker closed again"
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

/// Whatever Redis holds under the service's keys (empty, truncated, random or a wrong header),
/// a read treats it as a miss: correct answers from the database, never a panic or a 500.
#[tokio::test]
async fn garbage_in_redis_is_a_miss_never_a_panic() {
    let redis = RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_full(
        |_| {},
        |c| {
            c.redis_url = Some(url);
            c.l1_enabled = false;
        },
    )
    .await;
    let w = world(&app, 6, 2).await;
    let me = Some(w.owner.id);
    let truth = app
        .gql(me, MONTH_VIEW, month_vars(w.calendar))
        .await
        .data()
        .clone();
    let warm = app.gql(me, MONTH_VIEW, month_vars(w.calendar)).await;
    assert!(from_redis(&warm), "the second read came from Redis");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is installed");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let keys: Vec<String> = cli(&["--scan", "--pattern", "*"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        keys.len() > 10,
        "the service cached under many keys: {keys:?}"
    );
    let garbage: [&[u8]; 7] = [
        b"",
        b"V",
        b"V12",
        b"V12:",
        b"T",
        b"V1:0:0:\xff\xfe\x00\x01",
        b"\x00\x01\x02 not a value at all",
    ];
    for (round, bad) in garbage.iter().enumerate() {
        for key in &keys {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &redis.port.to_string(), "-x", "SET", key])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child.stdin.take().unwrap().write_all(bad)?;
                    child.wait()
                })
                .unwrap();
            assert!(out.success());
        }
        for _ in 0..2 {
            let (status, body) = app
                .post_raw(
                    me,
                    json!({ "query": MONTH_VIEW, "variables": month_vars(w.calendar) }),
                )
                .await;
            assert_eq!(status, 200, "round {round}: {body}");
            assert_eq!(body["data"], truth, "round {round}: {body}");
        }
        let ev = w.events[0].id.to_string();
        let r = app
            .gql(
                me,
                "query($e: ID!) { event(id: $e) { id title } }",
                json!({ "e": ev }),
            )
            .await;
        assert_eq!(r.data()["event"]["id"], ev, "round {round}");
    }
}
