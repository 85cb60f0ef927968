//! The per-viewer rate limit: past its burst a viewer's requests are answered 429 `RATE_LIMITED`
//! with `Retry-After` and counted, other viewers are not affected, requests without a valid token
//! share one bucket, the health and metrics endpoints are never limited, and with the limit off
//! nothing is refused.
//!
//! The rate is one request per 100 s, so no bucket refills while a test runs: what is refused
//! depends on the count of requests only, never on timing.

use crate::common::*;
use cal_api::RateLimit;

const BURST: u32 = 3;

async fn limited_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.rate_limit = Some(RateLimit {
            per_second: 0.01,
            burst: BURST,
        })
    })
    .await
}

/// One `me` query (the same bytes every time, so repeats are whole-response cache hits) as
/// `auth` (a bearer token, a broken one, or none); status, `Retry-After` and body.
async fn ask(app: &TestApp, auth: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ me { id } }" }));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let resp = req.send().await.expect("server reachable");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, resp.json().await.unwrap())
}

fn bearer(app: &TestApp, user: UserId) -> String {
    format!("Bearer {}", app.token(user))
}

fn refused_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("cal_rate_limited_total "))
        .expect("cal_rate_limited_total is exported")
        .trim()
        .parse()
        .unwrap()
}

fn assert_limited((status, retry, body): (u16, Option<String>, Value), what: &str) {
    assert_eq!(status, 429, "{what}: {body}");
    let secs: u64 = retry
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {retry:?} is not whole seconds"));
    assert!((1..=100).contains(&secs), "{what}: Retry-After {secs}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{what}: {body}"
    );
}

#[tokio::test]
async fn past_its_burst_a_viewer_is_refused_and_counted_while_others_are_not() {
    let app = limited_app().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let before = refused_count(&app.metrics().await);
    assert_eq!(before, 0);
    for i in 0..BURST {
        let (status, _, body) = ask(&app, Some(&bearer(&app, alice.id))).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["data"]["me"]["id"], alice.id.to_string());
    }
    // Two more: refused, also the one the response cache could have answered.
    for i in 0..2 {
        assert_limited(
            ask(&app, Some(&bearer(&app, alice.id))).await,
            &format!("alice's extra request {i}"),
        );
    }
    // Bob has a bucket of his own.
    for i in 0..BURST {
        let (status, _, body) = ask(&app, Some(&bearer(&app, bob.id))).await;
        assert_eq!(status, 200, "bob's request {i}: {body}");
        assert_eq!(body["data"]["me"]["id"], bob.id.to_string());
    }
    assert_limited(ask(&app, Some(&bearer(&app, bob.id))).await, "bob's 4th");
    // Health, readiness and metrics are never limited (Alice and Bob are out of tokens).
    for _ in 0..2 * BURST {
        for path in ["/health", "/ready", "/metrics"] {
            let r = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }
    let metrics = app.metrics().await;
    assert_eq!(refused_count(&metrics) - before, 3, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "cal_graphql_errors_total{code=\"RATE_LIMITED\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn requests_without_a_valid_token_share_one_bucket() {
    let app = limited_app().await;
    let alice = app.user("Alice").await;
    // Anonymous and broken tokens draw from the same bucket: answered (UNAUTHENTICATED) for
    // the burst, then refused, whichever of the two asks.
    let tokenless = [None, Some("Bearer not-a-token"), None];
    for auth in tokenless {
        let (status, _, body) = ask(&app, auth).await;
        assert_eq!(status, 200, "{auth:?}: {body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    }
    assert_limited(ask(&app, None).await, "anonymous");
    assert_limited(
        ask(&app, Some("Bearer still-not-a-token")).await,
        "bad token",
    );
    // A signed-in viewer is not affected.
    let (status, _, body) = ask(&app, Some(&bearer(&app, alice.id))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(refused_count(&app.metrics().await), 2);
}

#[tokio::test]
async fn with_the_limit_off_nothing_is_refused() {
    let app = TestApp::spawn().await;
    assert!(app.config.rate_limit.is_none(), "off by default");
    let alice = app.user("Alice").await;
    for i in 0..3 * BURST {
        let (status, _, body) = ask(&app, Some(&bearer(&app, alice.id))).await;
        assert_eq!(status, 200, "request {i}: {body}");
        let (status, _, body) = ask(&app, None).await;
        assert_eq!(status, 200, "anonymous request {i}: {body}");
    }
    assert_eq!(refused_count(&app.metrics().await), 0);
}
