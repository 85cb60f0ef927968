//! Bad input gets a GraphQL error with a stable `extensions.code`: never a panic, a 500 or a
//! leaked SQL message.

use crate::common::*;
use cal_test_support::dates::{at, iso, month_args, next_month_start, window_args};

async fn setup() -> (TestApp, World) {
    let app = TestApp::spawn().await;
    let w = world(&app, 2, 1).await;
    (app, w)
}

fn assert_clean(resp: &Gql) {
    let text = resp.0.to_string().to_lowercase();
    for leak in [
        "sqlx",
        "syntax error",
        "violates",
        "constraint",
        "postgres",
        "panicked",
    ] {
        assert!(
            !text.contains(leak),
            "response leaks internals ({leak}): {text}"
        );
    }
}

#[tokio::test]
async fn invalid_ids_are_bad_user_input() {
    let (app, w) = setup().await;
    let free_busy = format!(
        "query($u: [ID!]!) {{ freeBusy(userIds: $u, {}) {{ users {{ busy {{ start }} }} }} }}",
        window_args(month_start(), at(2, 0, 0))
    );
    for (q, v) in [
        (
            "query($c: ID!) { calendar(id: $c) { id } }",
            json!({ "c": "abc" }),
        ),
        (
            "query($c: ID!) { calendar(id: $c) { id } }",
            json!({ "c": "-5" }),
        ),
        (
            "query($e: ID!) { event(id: $e) { id } }",
            json!({ "e": "1; DROP TABLE events" }),
        ),
        (
            "query($u: ID!) { user(id: $u) { id } }",
            json!({ "u": "0" }),
        ),
        (free_busy.as_str(), json!({ "u": ["x"] })),
    ] {
        let resp = app.gql(Some(w.owner.id), q, v).await;
        assert_eq!(resp.code(), "BAD_USER_INPUT", "{q}");
        assert_clean(&resp);
    }
}

#[tokio::test]
async fn unknown_things_are_not_found() {
    let (app, w) = setup().await;
    let resp = app
        .gql(
            Some(w.owner.id),
            "{ user(id: \"999999\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(resp.code(), "NOT_FOUND");
    let resp = app
        .gql(
            Some(w.owner.id),
            "{ resource(id: \"999999\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(resp.code(), "NOT_FOUND");
    let q = format!(
        r#"{{ resourceAvailability(resourceId: "999999", {}) {{ free {{ start }} }} }}"#,
        window_args(month_start(), at(2, 0, 0))
    );
    assert_eq!(
        app.gql(Some(w.owner.id), &q, json!({})).await.code(),
        "NOT_FOUND"
    );
    let q = "mutation($e: ID!, $u: ID!) { removeAttendee(eventId: $e, userId: $u) { id } }";
    let resp = app
        .gql(
            Some(w.owner.id),
            q,
            json!({ "e": w.events[0].id.to_string(), "u": w.owner.id.to_string() }),
        )
        .await;
    assert_eq!(resp.code(), "NOT_FOUND");
}

#[tokio::test]
async fn windows_must_be_ordered_and_bounded() {
    let (app, w) = setup().await;
    let q = "query($c: ID!, $f: DateTime!, $t: DateTime!) { calendar(id: $c) { events(from: $f, to: $t) { edges { cursor } } } }";
    let cal = w.calendar.to_string();
    // The last window is far longer than 62 days: from 304 days before the anchor month to its
    // end (2026-01-01 to 2026-12-01 for November 2026).
    let long_ago = month_start() - chrono::Duration::days(304);
    for (from, to, msg) in [
        (at(10, 0, 0), month_start(), "after"),
        (month_start(), month_start(), "after"),
        (long_ago, next_month_start(), "at most 62 days"),
    ] {
        let (from, to) = (iso(from), iso(to));
        let resp = app
            .gql(Some(w.owner.id), q, json!({ "c": cal, "f": from, "t": to }))
            .await;
        assert_eq!(resp.code(), "BAD_USER_INPUT");
        assert!(resp.message().contains(msg), "{}", resp.message());
    }
    // Not an RFC 3339 instant: rejected while parsing variables.
    let resp = app
        .gql(
            Some(w.owner.id),
            q,
            json!({ "c": cal, "f": "yesterday", "t": iso(month_start()) }),
        )
        .await;
    assert!(resp.0["errors"].is_array());
    assert_clean(&resp);
}

#[tokio::test]
async fn page_size_and_cursor_are_checked() {
    let (app, w) = setup().await;
    let q = format!(
        "query($c: ID!, $n: Int, $a: String) {{ calendar(id: $c) {{ events({}, first: $n, after: $a) {{ edges {{ cursor }} }} }} }}",
        month_args()
    );
    let cal = w.calendar.to_string();
    for vars in [
        json!({ "c": cal, "n": 201 }),
        json!({ "c": cal, "n": -1 }),
        json!({ "c": cal, "n": 10, "a": "garbage" }),
    ] {
        let resp = app.gql(Some(w.owner.id), &q, vars.clone()).await;
        assert_eq!(resp.code(), "BAD_USER_INPUT", "{vars}");
    }
}

#[tokio::test]
async fn unknown_time_zones_are_bad_user_input() {
    let (app, w) = setup().await;
    let q = r#"mutation { createCalendar(input: { name: "x", timeZone: "Mars/Olympus_Mons" }) { id } }"#;
    let resp = app.gql(Some(w.owner.id), q, json!({})).await;
    assert_eq!(resp.code(), "BAD_USER_INPUT");
    assert!(resp.message().contains("time zone"));
    let q = r#"mutation($c: ID!, $s: DateTime!, $e: DateTime!) { createEvent(input: { calendarId: $c, title: "x", timeZone: "Europe/Nowhere",
        startTime: $s, endTime: $e }) { id } }"#;
    let vars =
        json!({ "c": w.calendar.to_string(), "s": iso(at(20, 10, 0)), "e": iso(at(20, 11, 0)) });
    assert_eq!(
        app.gql(Some(w.owner.id), q, vars).await.code(),
        "BAD_USER_INPUT"
    );
}

#[tokio::test]
async fn invalid_event_input_is_bad_user_input_and_writes_nothing() {
    let (app, w) = setup().await;
    let cal = w.calendar.to_string();
    let q = r#"mutation($c: ID!, $t: String!, $s: DateTime!, $e: DateTime!, $a: [AttendeeInput!]!) {
        createEvent(input: { calendarId: $c, title: $t, startTime: $s, endTime: $e, attendees: $a }) { id } }"#;
    let ok_a = json!([{ "userId": w.users[0].id.to_string() }]);
    let (ten, eleven) = (iso(at(20, 10, 0)), iso(at(20, 11, 0)));
    // Longer than an event may last: the 1st of the month to the 20th of the next.
    let (first, next_20th) = (
        iso(at(1, 10, 0)),
        iso(next_month_start() + chrono::Duration::days(19) + chrono::Duration::hours(10)),
    );
    for vars in [
        json!({ "c": cal, "t": "", "s": ten, "e": eleven, "a": ok_a }),
        json!({ "c": cal, "t": "x".repeat(501), "s": ten, "e": eleven, "a": ok_a }),
        json!({ "c": cal, "t": "x", "s": eleven, "e": ten, "a": ok_a }),
        json!({ "c": cal, "t": "x", "s": first, "e": next_20th, "a": ok_a }),
        json!({ "c": cal, "t": "x", "s": ten, "e": eleven, "a": [{ "userId": "424242" }] }),
        json!({ "c": cal, "t": "x", "s": ten, "e": eleven,
                "a": [{ "userId": w.users[0].id.to_string() }, { "userId": w.users[0].id.to_string() }] }),
    ] {
        let resp = app.gql(Some(w.owner.id), q, vars.clone()).await;
        assert_eq!(resp.code(), "BAD_USER_INPUT", "{vars}: {}", resp.0);
        assert_clean(&resp);
    }
    let count = cal_test_support::sql::event_rows(&app.db.pool).await;
    assert_eq!(count, 2, "no failed mutation left a row behind");
}

#[tokio::test]
async fn stale_versions_are_version_conflicts() {
    let (app, w) = setup().await;
    let ev = &w.events[0];
    let q = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"new\" }) { version title } }";
    let resp = app
        .gql(
            Some(w.owner.id),
            q,
            json!({ "e": ev.id.to_string(), "v": ev.version }),
        )
        .await;
    assert_eq!(resp.data()["updateEvent"]["version"], ev.version + 1);
    let resp = app
        .gql(
            Some(w.owner.id),
            q,
            json!({ "e": ev.id.to_string(), "v": ev.version }),
        )
        .await;
    assert_eq!(resp.code(), "VERSION_CONFLICT");
    assert_eq!(
        resp.0["errors"][0]["extensions"]["currentVersion"],
        ev.version + 1
    );
}

/// Rounds of `calendar → events → edges → node` in [`deep_but_cheap`].
const DEPTH_ROUNDS: usize = 3;

/// `calendar(id:)` followed [`DEPTH_ROUNDS`] times through its first event back to the
/// calendar: 2 + 4 × 3 = 14 levels, beyond the default depth limit (12), while each list asks
/// for one item, so its complexity is far below the default limit (20,000).
fn deep_but_cheap(calendar: CalendarId) -> String {
    let mut q = "id".to_owned();
    for _ in 0..DEPTH_ROUNDS {
        q = format!(
            "id events({}, first: 1) {{ edges {{ node {{ calendar {{ {q} }} }} }} }}",
            month_args()
        );
    }
    format!("{{ calendar(id: \"{calendar}\") {{ {q} }} }}")
}

#[tokio::test]
async fn depth_complexity_batch_and_body_limits() {
    let (app, w) = setup().await;
    // Too deep, and only that: every list asks for one item, so the query costs little. Asked
    // anonymously, here and below: the limits are checked before anything runs, and a missing
    // limit shows as an answer rather than as a 14-level execution (which overflows a test
    // thread's 2 MiB stack in debug builds).
    let deep = deep_but_cheap(w.calendar);
    let resp = app.gql(None, &deep, json!({})).await;
    assert_eq!(resp.code(), "QUERY_TOO_COMPLEX", "{}", resp.0);
    assert_eq!(resp.message(), "Query is nested too deep.", "{}", resp.0);
    assert!(resp.0["data"].is_null(), "nothing was executed: {}", resp.0);
    // Within every other limit: where only the depth limit is higher, the same query passes
    // validation and reaches its first resolver.
    let deeper = app.spawn_sibling(|c| c.max_depth = 1_000, |_| {}).await;
    let resp = deeper.gql(None, &deep, json!({})).await;
    assert_eq!(resp.code(), "UNAUTHENTICATED", "{}", resp.0);
    assert_eq!(resp.0["errors"][0]["path"][0], "calendar", "{}", resp.0);
    // Too complex: list fields count their `first`.
    let wide = format!(
        "{{ calendar(id: \"1\") {{ events({}, first: 200) {{ edges {{ node {{ id title attendees {{ user {{ id name email avatarUrl timeZone }} }} organizer {{ id name }} reservations {{ resource {{ id name kind }} }} }} }} }} }} }}",
        window_args(month_start(), at(2, 0, 0))
    );
    let resp = app
        .gql(
            Some(w.owner.id),
            &format!(
                "{{ a: {} b: {} }}",
                &wide[1..wide.len() - 1],
                &wide[1..wide.len() - 1]
            ),
            json!({}),
        )
        .await;
    assert_eq!(resp.code(), "QUERY_TOO_COMPLEX", "{}", resp.0);
    assert_eq!(resp.message(), "Query is too complex.", "{}", resp.0);
    // The month view itself is well within the limits.
    let resp = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    resp.data();
    // Too many operations in one batch.
    let batch: Vec<Value> = (0..11)
        .map(|_| json!({ "query": "{ me { id } }" }))
        .collect();
    let (status, body) = app.post_raw(Some(w.owner.id), Value::Array(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX",
        "{body}"
    );
    // A small batch works.
    let batch: Vec<Value> = (0..2)
        .map(|_| json!({ "query": "{ me { id } }" }))
        .collect();
    let (_, body) = app.post_raw(Some(w.owner.id), Value::Array(batch)).await;
    assert_eq!(body.as_array().unwrap().len(), 2);
    // Oversized body.
    let huge = json!({ "query": format!("{{ me {{ id }} }} #{}", "x".repeat(300 * 1024)) });
    let (status, body) = app.post_raw(Some(w.owner.id), huge).await;
    assert_eq!(status, 413);
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE",
        "{body}"
    );
}

#[tokio::test]
async fn introspection_and_graphiql_only_in_dev_mode() {
    let app = TestApp::spawn().await;
    let user = app.user("Ivy").await;
    let resp = app
        .gql(
            Some(user.id),
            "{ __schema { queryType { name } } }",
            json!({}),
        )
        .await;
    assert!(
        resp.0["errors"].is_array() || resp.0["data"]["__schema"].is_null(),
        "introspection is off outside dev mode: {}",
        resp.0
    );
    let page = |app: &TestApp| {
        app.client
            .get(app.url("/graphql"))
            .header("accept", "text/html")
            .send()
    };
    let r = page(&app).await.unwrap();
    assert_ne!(r.status(), 200, "no GraphiQL outside dev mode");

    let dev = TestApp::spawn_with(|c| c.dev_mode = true).await;
    let user = dev.user("Ivy").await;
    let resp = dev
        .gql(
            Some(user.id),
            "{ __schema { queryType { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(resp.data()["__schema"]["queryType"]["name"], "QueryRoot");
    let r = page(&dev).await.unwrap();
    assert_eq!(r.status(), 200, "a browser asking for a page gets GraphiQL");
    assert!(r.text().await.unwrap().to_lowercase().contains("graphiql"));
}

#[tokio::test]
async fn malformed_requests_do_not_crash() {
    let (app, w) = setup().await;
    for body in ["not json", "{\"query\": 5}", "{}", "[]"] {
        let r = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(app.token(w.owner.id))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_client_error() || r.status() == 200,
            "{body}: {}",
            r.status()
        );
    }
    let resp = app.gql(Some(w.owner.id), "{ nope }", json!({})).await;
    assert!(resp.0["errors"].is_array());
    // The server is still fine.
    app.gql(Some(w.owner.id), "{ me { id } }", json!({}))
        .await
        .data();
}

/// Errors raised before execution carry a code too, outside dev mode they suggest nothing, and
/// a document with too many aliases is refused before any field resolves.
#[tokio::test]
async fn request_errors_have_codes_and_no_suggestions_and_aliases_are_bounded() {
    let (app, w) = setup().await;
    let me = Some(w.owner.id);
    let q = format!(
        "query($f: DateTime!) {{ calendar(id: \"1\") {{ events(from: $f, to: \"{}\") {{ edges {{ node {{ id }} }} }} }} }}",
        iso(next_month_start())
    );
    let resp = app
        .gql(me, &q, json!({ "f": "the first of november" }))
        .await;
    assert_eq!(
        resp.code(),
        "BAD_USER_INPUT",
        "a malformed DateTime variable: {}",
        resp.0
    );
    let q = format!(
        "{{ calendar(id: \"1\") {{ events(from: \"yesterday\", to: \"{}\") {{ edges {{ node {{ id }} }} }} }} }}",
        iso(next_month_start())
    );
    let resp = app.gql(me, &q, json!({})).await;
    assert_eq!(
        resp.code(),
        "BAD_USER_INPUT",
        "a malformed DateTime literal: {}",
        resp.0
    );
    let resp = app.gql(me, "{ me { nam } }", json!({})).await;
    assert_eq!(resp.code(), "GRAPHQL_VALIDATION_FAILED", "{}", resp.0);
    assert!(
        !resp.message().contains("Did you mean"),
        "no suggestions outside dev mode: {}",
        resp.message()
    );
    let resp = app
        .gql(
            me,
            "query($x: ID!) { me { id } calendar(id: $y) { id } }",
            json!({ "x": "1" }),
        )
        .await;
    assert_eq!(resp.code(), "GRAPHQL_VALIDATION_FAILED", "{}", resp.0);
    let resp = app.gql(me, "{ me { id ", json!({})).await;
    assert_eq!(resp.code(), "GRAPHQL_PARSE_FAILED", "{}", resp.0);
    // Only the depth limit: shallow enough for complexity, one level too deep.
    let mut deep = "id".to_owned();
    for _ in 0..3 {
        deep = format!(
            "calendar {{ events({}, first: 1) {{ edges {{ node {{ {deep} }} }} }} }}",
            window_args(month_start(), at(2, 0, 0))
        );
    }
    let resp = app
        .gql(
            None,
            &format!("{{ event(id: \"1\") {{ {deep} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(resp.code(), "QUERY_TOO_COMPLEX", "{}", resp.0);
    assert_eq!(resp.message(), "Query is nested too deep.", "{}", resp.0);
    // Aliases: the bound passes, one more is refused, whatever the fields cost.
    let aliased = |n: usize| {
        let fields: String = (0..n)
            .map(|i| format!(" c{i}: calendar(id: \"{}\") {{ id }}", w.calendar))
            .collect();
        format!("{{{fields} }}")
    };
    let resp = app
        .gql(me, &aliased(app.config.max_aliases), json!({}))
        .await;
    assert_eq!(
        resp.0["data"]["c0"]["id"],
        w.calendar.to_string(),
        "{}",
        resp.0
    );
    let resp = app.gql(me, &aliased(1000), json!({})).await;
    assert_eq!(resp.code(), "QUERY_TOO_COMPLEX", "{}", resp.0);
    assert!(resp.0["data"].is_null(), "nothing was executed: {}", resp.0);
    assert_eq!(resp.sql_statements(), 0, "refused before any load");
}

/// In dev mode the validation hints stay (they help whoever writes the queries).
#[tokio::test]
async fn dev_mode_keeps_suggestions() {
    let app = TestApp::spawn_with(|c| c.dev_mode = true).await;
    let user = app.user("Dev").await;
    let resp = app.gql(Some(user.id), "{ me { nam } }", json!({})).await;
    assert_eq!(resp.code(), "GRAPHQL_VALIDATION_FAILED");
    assert!(
        resp.message().contains("Did you mean"),
        "{}",
        resp.message()
    );
}

/// Outside dev mode `x-debug-stats` needs the operator secret, and a denied answer never carries
/// figures (they would tell whether the thing exists and whether others read it recently).
#[tokio::test]
async fn debug_stats_are_for_operators_and_never_on_denied_answers() {
    let (app, w) = setup().await;
    let stranger = app.user("Stranger").await;
    let ask = |user: UserId, admin: Option<&'static str>| {
        let req = app
            .client
            .post(app.url("/graphql"))
            .bearer_auth(app.token(user))
            .header("x-debug-stats", "1")
            .json(&json!({ "query": MONTH_VIEW, "variables": month_vars(w.calendar) }));
        let req = match admin {
            Some(t) => req.header("x-admin-token", t),
            None => req,
        };
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let owner = w.owner.id;
    let body = ask(owner, None).await;
    assert!(body["data"]["calendar"].is_object(), "{body}");
    assert!(
        body["extensions"]["stats"].is_null(),
        "no figures without the secret: {body}"
    );
    let body = ask(owner, Some("not-the-operator-token")).await;
    assert!(
        body["extensions"]["stats"].is_null(),
        "nor with a wrong one: {body}"
    );
    let body = ask(owner, Some(cal_test_support::TEST_ADMIN_TOKEN)).await;
    assert!(
        body["extensions"]["stats"]["sqlStatements"].is_number(),
        "{body}"
    );
    // Denied, even for the operator's header (through the executor and direct execution alike).
    let body = ask(stranger.id, Some(cal_test_support::TEST_ADMIN_TOKEN)).await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    assert!(
        body["extensions"]["stats"].is_null(),
        "a denied answer carries no figures: {body}"
    );
    let q = "query($c: ID!) { calendar(id: $c) { name } }";
    let (_, body) = app
        .post_raw(
            Some(stranger.id),
            json!({ "query": q, "variables": { "c": w.calendar.to_string() } }),
        )
        .await;
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "FORBIDDEN",
        "{body}"
    );
    assert!(body["extensions"]["stats"].is_null(), "{body}");
}
