//! The runtime budget: every answer reports what it cost the database in `extensions.cost`
//! (statements, rows, loader batches; nothing about the cache tiers), a request that would go
//! past its budget is refused with `BUDGET_EXCEEDED` before the statement is sent, and the
//! count covers every statement a request sends, its transaction's BEGIN and COMMIT included.

use crate::common::*;

fn cost(resp: &Gql) -> &Value {
    &resp.0["extensions"]["cost"]
}

#[tokio::test]
async fn every_answer_reports_its_cost_and_a_cached_answer_costs_nothing() {
    let app = TestApp::spawn().await;
    let w = world(&app, 12, 3).await;
    let cold = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    let c = cost(&cold);
    let mut keys: Vec<&String> = c.as_object().expect("a cost object").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["loaderBatches", "rows", "statements"],
        "only database figures: per-tier cache figures would tell of other viewers' activity"
    );
    assert_eq!(
        c["statements"],
        cold.0["extensions"]["stats"]["sqlStatements"]
    );
    assert_eq!(c["rows"], cold.0["extensions"]["stats"]["sqlRows"]);
    assert!(c["statements"].as_u64().unwrap() > 0, "{c}");
    assert!(c["rows"].as_u64().unwrap() > 0, "{c}");
    assert!(c["loaderBatches"].as_u64().unwrap() > 0, "{c}");

    // Answered whole from the response cache: nothing was sent or loaded.
    let warm = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(warm.0["extensions"]["stats"]["responseCacheHit"], true);
    assert_eq!(
        *cost(&warm),
        json!({ "statements": 0, "rows": 0, "loaderBatches": 0 })
    );
    assert_eq!(warm.data(), cold.data());
    // Also without the operator's figures (the stored bytes carry the cost themselves).
    let (status, _, plain) = app
        .post_text(
            Some(w.owner.id),
            &json!({ "query": MONTH_VIEW, "variables": month_vars(w.calendar) }),
        )
        .await;
    assert_eq!(status, 200);
    let plain: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(plain["extensions"]["cost"]["statements"], 0);
    assert_eq!(plain["data"], *cold.data());

    // A denial says nothing of what it read.
    let stranger = app.user("Stan Stranger").await;
    let denied = app
        .gql(Some(stranger.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(denied.code(), "FORBIDDEN");
    assert!(cost(&denied).is_null(), "{}", denied.0);
}

/// The answer says the budget ran out, and nothing else went wrong.
fn assert_budget_exceeded(resp: &Gql) {
    let codes = resp.codes();
    assert!(codes.iter().any(|c| c == "BUDGET_EXCEEDED"), "{}", resp.0);
    assert!(
        !codes.iter().any(|c| c == "INTERNAL_SERVER_ERROR"),
        "{}",
        resp.0
    );
}

#[tokio::test]
async fn a_request_past_its_statement_budget_is_refused_before_the_statement() {
    let app = TestApp::spawn_with(|c| c.max_request_statements = 2).await;
    let w = world(&app, 12, 3).await;
    let resp = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_budget_exceeded(&resp);
    assert_eq!(
        cost(&resp)["statements"],
        2,
        "the third statement was never sent"
    );
    // A cheap request under the same budget goes through.
    let me = app.gql(Some(w.owner.id), "{ me { id } }", json!({})).await;
    assert!(me.0["errors"].is_null(), "{}", me.0);
}

#[tokio::test]
async fn a_request_past_its_row_budget_is_refused() {
    let app = TestApp::spawn_with(|c| c.max_request_rows = 5).await;
    let w = world(&app, 12, 3).await;
    let resp = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_budget_exceeded(&resp);
    assert!(resp.message().contains("rows"), "{}", resp.message());
}

#[tokio::test]
async fn a_mutation_counts_its_transaction_statements() {
    let app = TestApp::spawn().await;
    let owner = app.user("Olivia Owner").await;
    let resp = app
        .gql(
            Some(owner.id),
            r#"mutation { createCalendar(input: { name: "Second", timeZone: "UTC" }) { id } }"#,
            json!({}),
        )
        .await;
    assert!(resp.0["errors"].is_null(), "{}", resp.0);
    // BEGIN, the calendar, its owner's membership, the calendar read back, the change-log row,
    // COMMIT.
    assert_eq!(cost(&resp)["statements"], 6, "{}", resp.0);
}
