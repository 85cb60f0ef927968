//! Operator purges through `POST /admin/purge`: each scope drops exactly the cached copies it
//! names, in L1 and the response cache and in Redis (an app without L1 reads Redis and the shared
//! response tier), through a change-log row; the endpoint refuses strangers with stable codes; and
//! an instance that starts after a purge of everything never reads what it dropped.

use crate::common::*;
use cal_test_support::sql;
use secrecy::SecretString;

const ADMIN: &str = "operator-secret-operator-secret";

async fn app(l1: bool) -> TestApp {
    TestApp::spawn_full(
        |c| c.admin_token = Some(SecretString::from(ADMIN)),
        |c| c.l1_enabled = l1,
    )
    .await
}

async fn purge(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = app.client.post(app.url("/admin/purge")).json(&body);
    if let Some(t) = token {
        req = req.header("x-admin-token", t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn purged(app: &TestApp, body: Value) {
    let (status, answer) = purge(app, Some(ADMIN), body.clone()).await;
    assert_eq!(status, 200, "{body}: {answer}");
    assert!(answer["outboxId"].as_i64().unwrap() > 0, "{answer}");
    let row = sql::outbox_event_type(&app.db.pool, answer["outboxId"].as_i64().unwrap()).await;
    assert!(
        row.starts_with("purge."),
        "a purge is a change-log row: {row}"
    );
}

/// Reads `query` as `user` twice (the second from the caches) and answers the second.
async fn warm(app: &TestApp, user: UserId, query: &str, vars: Value) -> Value {
    app.gql(Some(user), query, vars.clone()).await;
    app.gql(Some(user), query, vars).await.data().clone()
}

const EVENT: &str = "query($e: ID!) { event(id: $e) { title } }";
const CALENDAR: &str = "query($c: ID!) { calendar(id: $c) { name } }";
const USER: &str = "query($u: ID!) { user(id: $u) { name } }";
const RESOURCE: &str = "query($r: ID!) { resource(id: $r) { name } }";

fn month_titles(data: &Value) -> Vec<String> {
    data["calendar"]["events"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_scope_drops_what_it_names_in_every_tier() {
    for l1 in [true, false] {
        let app = app(l1).await;
        let w = world(&app, 3, 2).await;
        let me = w.owner.id;
        let (e0, e1) = (w.events[0].id, w.events[1].id);
        let ev = |e: EventId| json!({ "e": e.to_string() });

        // An event: its details and the month view.
        warm(&app, me, EVENT, ev(e0)).await;
        warm(&app, me, MONTH_VIEW, month_vars(w.calendar)).await;
        sql::set_event_title(&app.db.pool, e0.get(), "Fixed by hand").await;
        let stale = warm(&app, me, EVENT, ev(e0)).await;
        assert_ne!(
            stale["event"]["title"], "Fixed by hand",
            "l1={l1}: served from cache"
        );
        purged(&app, json!({ "event": e0.get() })).await;
        let fresh = app.gql(Some(me), EVENT, ev(e0)).await;
        assert_eq!(fresh.data()["event"]["title"], "Fixed by hand", "l1={l1}");
        let month = app.gql(Some(me), MONTH_VIEW, month_vars(w.calendar)).await;
        assert!(month_titles(month.data()).contains(&"Fixed by hand".to_owned()));

        // A calendar.
        let cal = json!({ "c": w.calendar.to_string() });
        warm(&app, me, CALENDAR, cal.clone()).await;
        sql::set_calendar_name(&app.db.pool, w.calendar.get(), "Renamed by hand").await;
        assert_ne!(
            warm(&app, me, CALENDAR, cal.clone()).await["calendar"]["name"],
            "Renamed by hand"
        );
        purged(&app, json!({ "calendar": w.calendar.get() })).await;
        assert_eq!(
            app.gql(Some(me), CALENDAR, cal).await.data()["calendar"]["name"],
            "Renamed by hand",
            "l1={l1}"
        );

        // A user.
        let user = json!({ "u": me.to_string() });
        warm(&app, me, USER, user.clone()).await;
        sql::set_user_name(&app.db.pool, me.get(), "Olivia Hand").await;
        assert_ne!(
            warm(&app, me, USER, user.clone()).await["user"]["name"],
            "Olivia Hand"
        );
        purged(&app, json!({ "user": me.get() })).await;
        assert_eq!(
            app.gql(Some(me), USER, user).await.data()["user"]["name"],
            "Olivia Hand",
            "l1={l1}"
        );

        // A resource.
        let room = w.rooms[0].id;
        let res = json!({ "r": room.to_string() });
        warm(&app, me, RESOURCE, res.clone()).await;
        sql::set_resource_name(&app.db.pool, room.get(), "Room by hand").await;
        assert_ne!(
            warm(&app, me, RESOURCE, res.clone()).await["resource"]["name"],
            "Room by hand"
        );
        purged(&app, json!({ "resource": room.get() })).await;
        assert_eq!(
            app.gql(Some(me), RESOURCE, res).await.data()["resource"]["name"],
            "Room by hand",
            "l1={l1}"
        );

        // Everything.
        warm(&app, me, EVENT, ev(e1)).await;
        warm(&app, me, MONTH_VIEW, month_vars(w.calendar)).await;
        sql::set_event_title(&app.db.pool, e1.get(), "Everything purged").await;
        let month = warm(&app, me, MONTH_VIEW, month_vars(w.calendar)).await;
        assert!(!month_titles(&month).contains(&"Everything purged".to_owned()));
        purged(&app, json!({ "all": true })).await;
        assert_eq!(
            app.gql(Some(me), EVENT, ev(e1)).await.data()["event"]["title"],
            "Everything purged",
            "l1={l1}"
        );
        let month = app.gql(Some(me), MONTH_VIEW, month_vars(w.calendar)).await;
        assert!(month_titles(month.data()).contains(&"Everything purged".to_owned()));
    }
}

#[tokio::test]
async fn an_instance_started_after_a_purge_of_everything_uses_its_generation() {
    let app = app(true).await;
    let (status, answer) = purge(&app, Some(ADMIN), json!({ "all": true })).await;
    assert_eq!(status, 200, "{answer}");
    let generation = answer["outboxId"].as_i64().unwrap();
    assert_eq!(app.tiers.cache.purge_generation(), generation);
    let later = app.spawn_sibling(|_| {}, |_| {}).await;
    assert_eq!(later.tiers.cache.purge_generation(), generation);
}

#[tokio::test]
async fn the_admin_endpoint_refuses_strangers_and_bad_requests_with_codes() {
    let app = app(true).await;
    let code = |v: &Value| {
        v["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (s, v) = purge(&app, None, json!({ "all": true })).await;
    assert_eq!((s, code(&v).as_str()), (401, "UNAUTHENTICATED"));
    let (s, v) = purge(
        &app,
        Some("operator-secret-operator-secreX"),
        json!({ "all": true }),
    )
    .await;
    assert_eq!((s, code(&v).as_str()), (401, "UNAUTHENTICATED"));
    for bad in [
        json!({}),
        json!({ "event": 1, "user": 2 }),
        json!({ "event": -4 }),
        json!({ "everything": true }),
        json!("all"),
    ] {
        let (s, v) = purge(&app, Some(ADMIN), bad.clone()).await;
        assert_eq!(
            (s, code(&v).as_str()),
            (400, "BAD_USER_INPUT"),
            "{bad}: {v}"
        );
    }
    let (s, v) = purge(&app, Some(ADMIN), json!({ "event": 999_999 })).await;
    assert_eq!((s, code(&v).as_str()), (404, "NOT_FOUND"));
    let rows = sql::purge_outbox_rows(&app.db.pool).await;
    assert_eq!(rows, 0, "nothing refused left a row");

    // Without a configured secret nobody gets in.
    let closed = TestApp::spawn_with(|c| c.admin_token = None).await;
    let (s, v) = purge(&closed, Some(ADMIN), json!({ "all": true })).await;
    assert_eq!((s, code(&v).as_str()), (403, "FORBIDDEN"));
}
