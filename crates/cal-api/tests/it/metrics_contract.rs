//! The metrics contract: every `cal_*` metric the deployment's dashboards and alerts use
//! (`deploy/metrics.txt`) is on `/metrics` once the service has served a little traffic, and the
//! GraphQL request metrics follow the operations and errors they saw.

use crate::common::*;

/// The metric names the deployment relies on.
const LISTED: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/metrics.txt"
));

/// Prefixes this test checks: every name in the list.
const CHECKED: [&str; 6] = [
    "cal_auth_",
    "cal_graphql_",
    "cal_cache_",
    "cal_sql_",
    "cal_db_",
    "cal_invalidation_",
];

async fn scrape(app: &TestApp) -> String {
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A month view (cold, then answered whole), a mutation and two failing requests.
async fn traffic(app: &TestApp) -> World {
    let w = world(app, 4, 2).await;
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    app.gql(
        Some(w.owner.id),
        r#"mutation Create { createCalendar(input: { name: "Second", timeZone: "UTC" }) { id } }"#,
        json!({}),
    )
    .await
    .data();
    let who = app.gql(None, "query Who { me { id } }", json!({})).await;
    assert_eq!(who.code(), "UNAUTHENTICATED");
    let (status, _) = app
        .post_raw(
            Some(w.owner.id),
            json!({ "query": "query Broken { me { id " }),
        )
        .await;
    assert_eq!(status, 200);
    w
}

#[tokio::test]
async fn every_listed_metric_is_exported() {
    let app = TestApp::spawn().await;
    traffic(&app).await;
    let text = scrape(&app).await;
    let mut missing = Vec::new();
    for name in LISTED.lines().map(str::trim).filter(|n| !n.is_empty()) {
        if !CHECKED.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let typed = text.contains(&format!("# TYPE {name} "));
        let sampled = text.lines().any(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with([' ', '{'])
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| rest.starts_with(s))
            })
        });
        if !(typed && sampled) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
}

#[tokio::test]
async fn graphql_metrics_follow_operations_and_errors() {
    let app = TestApp::spawn().await;
    traffic(&app).await;
    let text = scrape(&app).await;
    let count = |op: &str, outcome: &str| {
        sample(
            &text,
            &format!(
                "cal_graphql_request_duration_seconds_count{{operation=\"{op}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    // The month view twice (the second from the whole-response cache), named by its document.
    assert_eq!(count("MonthView", "ok"), Some(2.0), "{text}");
    assert_eq!(count("Create", "ok"), Some(1.0), "{text}");
    assert_eq!(count("Who", "error"), Some(1.0), "{text}");
    assert_eq!(count("Broken", "error"), Some(1.0), "{text}");
    let errors = |code: &str| {
        sample(
            &text,
            &format!("cal_graphql_errors_total{{code=\"{code}\"}}"),
        )
    };
    assert_eq!(errors("UNAUTHENTICATED"), Some(1.0), "{text}");
    assert_eq!(errors("GRAPHQL_PARSE_FAILED"), Some(1.0), "{text}");
    assert_eq!(errors("GRAPHQL_VALIDATION_FAILED"), Some(0.0), "{text}");
    assert_eq!(
        errors("NOT_FOUND"),
        Some(0.0),
        "codes start at zero:\n{text}"
    );
    // One observation per GraphQL request; the cold month view's statements are in the sum.
    assert_eq!(
        sample(&text, "cal_db_statements_per_request_count"),
        Some(5.0),
        "{text}"
    );
    assert!(
        sample(&text, "cal_db_statements_per_request_sum").unwrap() >= 4.0,
        "{text}"
    );
    // Pool gauges read at scrape time; every statement name seen has a slow counter.
    let max = sample(&text, "cal_db_pool_max_connections").unwrap();
    assert_eq!(
        max,
        f64::from(app.store.pool().options().get_max_connections())
    );
    assert!(
        sample(&text, "cal_db_pool_connections").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "cal_db_slow_statements_total{statement=\"events.in_window\"}"
        ),
        Some(0.0),
        "{text}"
    );
    // Every Redis call is counted by operation (the cold month view read and filled L2).
    let redis = |op: &str| {
        sample(
            &text,
            &format!("cal_cache_redis_requests_total{{op=\"{op}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(redis("mget") >= 1.0 && redis("fill") >= 1.0, "{text}");
}

#[tokio::test]
async fn stats_report_loader_batches() {
    let app = TestApp::spawn().await;
    let w = world(&app, 4, 2).await;
    let cold = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    let batches = cold.0["extensions"]["stats"]["loaderBatches"].as_u64();
    // Calendar, attendees, reservations, users (the events window is a month bucket).
    assert!(batches.is_some_and(|b| b >= 3), "{}", cold.0);
    let whole = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(whole.0["extensions"]["stats"]["responseCacheHit"], true);
    assert_eq!(whole.0["extensions"]["stats"]["loaderBatches"], 0);
}
