//! Subscriptions over WebSocket with the real `graphql-ws` client (node, `tests/js/subscribe.mjs`):
//! a change made through instance A reaches a subscriber on instance B (peers sharing the
//! invalidation bus, as instances share Kafka), with tokens that continue `changes` without a
//! gap; a member who loses access gets a final FORBIDDEN; the connection needs a valid token;
//! a drain closes subscriptions. With the protocol written out ([`WsClient`]): a message costs
//! one statement, a reader that stops reading gets one resync instead of a queue, and the limits
//! per connection and per viewer hold.

use super::common::*;
use super::http_clients::node_async;
use cal_test_support::ws::{Frame, WsClient};

const SUBSCRIBE: &str =
    "subscription($c: ID!, $s: String) { calendarChanged(calendarId: $c, since: $s) {
    events { id deleted event { id title version } } syncToken resync } }";

const CHANGES: &str =
    "query($c: ID!, $s: String, $n: Int) { changes(calendarId: $c, since: $s, first: $n) {
    events { id deleted event { id title version } } nextPageToken nextSyncToken } }";

fn ws_url(app: &TestApp) -> String {
    format!("ws://{}/graphql", app.addr)
}

/// Subscribes as `user` on `app` (from `since`) in the background, until every id of `until`
/// has arrived or an error ends it.
fn subscribe(
    app: &TestApp,
    user: UserId,
    cal: CalendarId,
    since: Option<&str>,
    until: &[String],
) -> tokio::task::JoinHandle<Value> {
    let plan = json!({
        "url": ws_url(app), "token": app.token(user), "query": SUBSCRIBE,
        "variables": { "c": cal.to_string(), "s": since }, "untilIds": until, "timeoutMs": 20000,
    });
    tokio::spawn(node_async("subscribe.mjs", vec![], plan.to_string()))
}

/// Waits until exactly `n` subscriptions on `app` have taken their start position and listen.
async fn listening(app: &TestApp, n: usize) {
    for _ in 0..2000 {
        if app.state.listening_subscriptions() == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let now = app.state.listening_subscriptions();
    panic!("{now} subscriptions listening after 20 s, not {n}");
}

async fn sync_token(app: &TestApp, user: UserId, cal: CalendarId) -> String {
    let mut since: Option<String> = None;
    loop {
        let resp = app
            .gql(
                Some(user),
                CHANGES,
                json!({ "c": cal.to_string(), "s": since, "n": 100 }),
            )
            .await;
        let page = &resp.data()["changes"];
        match page["nextPageToken"].as_str() {
            Some(next) => since = Some(next.to_owned()),
            None => return page["nextSyncToken"].as_str().unwrap().to_owned(),
        }
    }
}

#[tokio::test]
async fn a_change_through_one_instance_reaches_a_subscriber_on_another() {
    let a = TestApp::spawn().await;
    let b = a.spawn_peer().await;
    let w = world(&a, 3, 1).await;
    let (owner, cal) = (w.owner.id, w.calendar);
    let (renamed, deleted) = (w.events[0].id, w.events[1].id);
    // From now on (no `since`): only the feed can tell it of the changes below.
    let sub = subscribe(
        &b,
        owner,
        cal,
        None,
        &[renamed.to_string(), deleted.to_string()],
    );
    listening(&b, 1).await;
    rename(&a, owner, renamed, "Moved to Friday").await;
    let del = "mutation($e: ID!) { deleteEvent(id: $e) }";
    a.gql(Some(owner), del, json!({ "e": deleted.to_string() }))
        .await
        .data();
    let report = sub.await.unwrap();
    assert_eq!(report["errors"], json!([]), "{report}");
    assert_eq!(report["timedOut"], false, "{report}");
    let messages = report["messages"].as_array().unwrap();
    let events: Vec<&Value> = messages
        .iter()
        .flat_map(|m| m["calendarChanged"]["events"].as_array().unwrap())
        .collect();
    let last = |id: EventId| {
        events
            .iter()
            .rev()
            .find(|e| e["id"] == id.to_string())
            .copied()
            .unwrap()
    };
    assert_eq!(last(renamed)["event"]["title"], "Moved to Friday");
    assert_eq!(last(renamed)["deleted"], false);
    assert_eq!(last(deleted)["deleted"], true);
    assert!(last(deleted)["event"].is_null());
    assert!(
        events.iter().all(|e| e["id"] != w.events[2].id.to_string()),
        "an unchanged event was sent: {report}"
    );
    // The last message's token continues `changes` without a gap: nothing new since.
    let last_token = messages.last().unwrap()["calendarChanged"]["syncToken"]
        .as_str()
        .unwrap();
    assert!(
        messages
            .iter()
            .all(|m| m["calendarChanged"]["resync"] == false)
    );
    let after = b
        .gql(
            Some(owner),
            CHANGES,
            json!({ "c": cal.to_string(), "s": last_token, "n": 10 }),
        )
        .await;
    assert_eq!(after.data()["changes"]["events"], json!([]), "{}", after.0);
}

#[tokio::test]
async fn a_subscription_message_costs_one_statement() {
    let a = TestApp::spawn().await;
    // Every statement of B counts as slow: its statements are then counted by name.
    let b = a
        .spawn_peer_with_store(|s| s.with_slow_statement_threshold(std::time::Duration::ZERO))
        .await;
    let w = world(&a, 2, 0).await;
    let (owner, cal, event) = (w.owner.id, w.calendar, w.events[0].id);
    let mut client = WsClient::connect(b.addr, Some(&b.token(owner)), None)
        .await
        .unwrap();
    const SUBSCRIPTIONS: usize = 3;
    for id in 0..SUBSCRIPTIONS {
        client
            .subscribe(&id.to_string(), SUBSCRIBE, json!({ "c": cal.to_string() }))
            .await;
    }
    listening(&b, SUBSCRIPTIONS).await;
    // What B sent, by name, apart from its relay's own polling of the outbox.
    let sent = || -> std::collections::BTreeMap<&'static str, u64> {
        b.store
            .stats()
            .slow_statements()
            .into_iter()
            .filter(|(name, _)| !name.starts_with("outbox.") && !name.starts_with("tx."))
            .collect()
    };
    let before = sent();
    rename(&a, owner, event, "One statement each").await;
    for _ in 0..SUBSCRIPTIONS {
        let Frame::Next { payload, .. } = next_frame(&mut client).await else {
            panic!("a subscription ended");
        };
        let events = &payload["data"]["calendarChanged"]["events"];
        assert_eq!(
            events[0]["event"]["title"], "One statement each",
            "{payload}"
        );
    }
    let grown: Vec<(&str, u64)> = sent()
        .into_iter()
        .map(|(name, n)| (name, n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        grown,
        [("sync.live_changes", SUBSCRIPTIONS as u64)],
        "one statement per message: the role, the changed rows and their state together"
    );
}

#[tokio::test]
async fn a_member_who_loses_access_gets_a_final_forbidden() {
    let a = TestApp::spawn().await;
    let b = a.spawn_peer().await;
    let w = world(&a, 1, 0).await;
    let (owner, cal) = (w.owner.id, w.calendar);
    let reader = a.user("Rita Reader").await;
    a.store
        .share_calendar(cal, reader.id, Role::Reader)
        .await
        .unwrap();
    let token = sync_token(&b, reader.id, cal).await;
    // It waits for an event that never changes: only the error ends it.
    let sub = subscribe(&b, reader.id, cal, Some(&token), &["0".to_owned()]);
    listening(&b, 1).await;
    rename(&a, owner, w.events[0].id, "Seen by the reader").await;
    unshare(&a, owner, cal, reader.id).await;
    rename(&a, owner, w.events[0].id, "Not for the reader").await;
    let report = sub.await.unwrap();
    assert_eq!(report["timedOut"], false, "{report}");
    let titles: Vec<&Value> = report["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["calendarChanged"]["events"].as_array().unwrap())
        .map(|e| &e["event"]["title"])
        .collect();
    assert!(
        !titles.contains(&&json!("Not for the reader")),
        "a change after the revocation reached the revoked member: {report}"
    );
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert_eq!(errors[0][0]["extensions"]["code"], "FORBIDDEN", "{report}");
}

#[tokio::test]
async fn a_subscription_needs_a_valid_token_and_a_reader_role() {
    let app = TestApp::spawn().await;
    let w = world(&app, 1, 0).await;
    // No token: the connection is closed with 1002 and the reason.
    let plan = json!({ "url": ws_url(&app), "token": null, "query": SUBSCRIBE,
        "variables": { "c": w.calendar.to_string() }, "timeoutMs": 5000 });
    let report = node_async("subscribe.mjs", vec![], plan.to_string()).await;
    assert_eq!(report["closeCode"], 1002, "{report}");
    let reason = report["errors"][0][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("bearer token"), "{report}");
    assert_eq!(report["messages"], json!([]));
    // A stranger may connect but not subscribe to someone else's calendar.
    let stranger = app.user("Sam Stranger").await;
    let report = subscribe(&app, stranger.id, w.calendar, None, &["0".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        report["errors"][0][0]["extensions"]["code"], "FORBIDDEN",
        "{report}"
    );
    // Over HTTP a subscription is refused with a code, never run.
    let over_http = app
        .gql(
            Some(w.owner.id),
            SUBSCRIBE,
            json!({ "c": w.calendar.to_string(), "s": null }),
        )
        .await;
    assert_eq!(
        over_http.code(),
        "GRAPHQL_VALIDATION_FAILED",
        "{}",
        over_http.0
    );
    assert!(
        over_http.message().contains("not supported"),
        "{}",
        over_http.0
    );
    assert!(over_http.0.get("data").is_none(), "{}", over_http.0);
}

#[tokio::test]
async fn draining_the_server_closes_subscriptions_with_going_away() {
    let app = TestApp::spawn().await;
    let w = world(&app, 1, 0).await;
    let sub = subscribe(&app, w.owner.id, w.calendar, None, &["0".to_owned()]);
    listening(&app, 1).await;
    app.state.close_subscriptions();
    let report = sub.await.unwrap();
    assert_eq!(report["timedOut"], false, "{report}");
    assert_eq!(report["closeCode"], 1001, "{report}");
}

/// Asserts that `frame` refuses a subscription (`next` with errors, or `error`) with
/// SUBSCRIPTION_LIMIT and a message naming `limit`.
fn assert_limited(frame: &Frame, limit: &str) {
    let errors = match frame {
        Frame::Next { payload, .. } => &payload["errors"],
        Frame::Error { errors, .. } => errors,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "SUBSCRIPTION_LIMIT",
        "{frame:?}"
    );
    let message = errors[0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(limit), "{frame:?}");
}

/// Reads until a frame that is not the subscription's `complete`.
async fn next_frame(client: &mut WsClient) -> Frame {
    loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(20), client.next())
            .await
            .expect("a frame within 20 s");
        if !matches!(frame, Frame::Complete { .. }) {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_gets_one_resync_not_a_queue() {
    // The feed keeps 4 messages for subscribers that are behind.
    let app = TestApp::spawn_with_feed(4).await;
    let w = world(&app, 1, 0).await;
    let (owner, cal, event) = (w.owner.id, w.calendar, w.events[0].id);
    // A receive buffer of 4 KiB: the server's send buffer (at most 4 MiB here) fills after a few
    // messages of ~500 KB (the 20,000-character description, 25 times over), and from then on
    // the server waits for the socket instead of queueing.
    let mut client = WsClient::connect(app.addr, Some(&app.token(owner)), Some(4096))
        .await
        .unwrap();
    let copies: Vec<String> = (0..25).map(|i| format!("d{i}: description")).collect();
    let big = format!(
        "subscription($c: ID!) {{ calendarChanged(calendarId: $c) {{
        events {{ id event {{ title {} }} }} syncToken resync }} }}",
        copies.join(" ")
    );
    client
        .subscribe("1", &big, json!({ "c": cal.to_string() }))
        .await;
    listening(&app, 1).await;
    const UPDATES: usize = 60;
    let upd = "mutation($e: ID!, $v: Int!, $t: String!, $d: String!) {
        updateEvent(id: $e, expectedVersion: $v, input: { title: $t, description: $d }) { id } }";
    let description = "x".repeat(20_000);
    for n in 0..UPDATES {
        let v = app.event_version(event.get()).await;
        let vars =
            json!({ "e": event.to_string(), "v": v, "t": format!("v{n}"), "d": description });
        app.gql(Some(owner), upd, vars).await.data();
    }
    // Reading again: what the buffers held, then one resync for the rest.
    let (mut changes, mut resyncs) = (0, Vec::new());
    let mut after = false;
    loop {
        let Frame::Next { payload, .. } = next_frame(&mut client).await else {
            panic!("the subscription ended");
        };
        let message = &payload["data"]["calendarChanged"];
        if message["resync"] == true {
            assert_eq!(message["events"], json!([]), "{message}");
            resyncs.push(message["syncToken"].as_str().unwrap().to_owned());
            if !after {
                // Changes after the resync come as changes again.
                rename(&app, owner, event, "after the resync").await;
                after = true;
            }
            continue;
        }
        changes += 1;
        if message["events"][0]["event"]["title"] == "after the resync" {
            break;
        }
    }
    assert_eq!(resyncs.len(), 1, "one resync for the whole backlog");
    assert!(
        changes < UPDATES / 2,
        "{changes} messages for {UPDATES} updates: the server queued for a reader that did not read"
    );
    assert_eq!(
        app.metric("cal_subscription_messages_total", &[("kind", "resync")])
            .await,
        1.0
    );
    // The resync's token fetches what the reader missed.
    let missed = app
        .gql(
            Some(owner),
            CHANGES,
            json!({ "c": cal.to_string(), "s": resyncs[0], "n": 10 }),
        )
        .await;
    let events = &missed.data()["changes"]["events"];
    assert_eq!(events[0]["id"], event.to_string(), "{}", missed.0);
    assert!(
        events[0]["event"]["version"].as_i64().unwrap() > UPDATES as i64,
        "{}",
        missed.0
    );
}

#[tokio::test]
async fn subscriptions_are_limited_per_connection_and_per_viewer() {
    let app = TestApp::spawn_with(|c| {
        c.max_subscriptions_per_connection = 2;
        c.max_subscriptions_per_viewer = 3;
    })
    .await;
    let w = world(&app, 1, 0).await;
    let (owner, cal) = (w.owner.id, w.calendar);
    let token = app.token(owner);
    let vars = json!({ "c": cal.to_string() });
    let mut first = WsClient::connect(app.addr, Some(&token), None)
        .await
        .unwrap();
    first.subscribe("1", SUBSCRIBE, vars.clone()).await;
    first.subscribe("2", SUBSCRIBE, vars.clone()).await;
    listening(&app, 2).await;
    first.subscribe("3", SUBSCRIBE, vars.clone()).await;
    assert_limited(&next_frame(&mut first).await, "per connection");
    // A second connection of the same viewer: one more, then the viewer's limit.
    let mut second = WsClient::connect(app.addr, Some(&token), None)
        .await
        .unwrap();
    second.subscribe("1", SUBSCRIBE, vars.clone()).await;
    listening(&app, 3).await;
    second.subscribe("2", SUBSCRIBE, vars.clone()).await;
    assert_limited(&next_frame(&mut second).await, "per viewer");
    // Another viewer is not held back by this one.
    let reader = app.user("Rita Reader").await;
    app.store
        .share_calendar(cal, reader.id, Role::Reader)
        .await
        .unwrap();
    let mut other = WsClient::connect(app.addr, Some(&app.token(reader.id)), None)
        .await
        .unwrap();
    other.subscribe("1", SUBSCRIBE, vars.clone()).await;
    listening(&app, 4).await;
    // Ending one gives its place back.
    first.complete("1").await;
    listening(&app, 3).await;
    second.subscribe("3", SUBSCRIBE, vars).await;
    listening(&app, 4).await;
    assert_eq!(app.metric("cal_subscriptions_active", &[]).await, 4.0);
    for reason in ["connection_limit", "viewer_limit"] {
        assert_eq!(
            app.metric("cal_subscription_refused_total", &[("reason", reason)])
                .await,
            1.0,
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_message_over_the_body_limit_closes_the_socket_with_1009() {
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 4096).await;
    let w = world(&app, 1, 0).await;
    let token = app.token(w.owner.id);
    let mut client = WsClient::connect(app.addr, Some(&token), None)
        .await
        .unwrap();
    let padded = format!("{SUBSCRIBE} # {}", "x".repeat(8192));
    client
        .subscribe("1", &padded, json!({ "c": w.calendar.to_string() }))
        .await;
    let frame = next_frame(&mut client).await;
    let Frame::Closed { code, reason } = &frame else {
        panic!("expected the socket closed, got {frame:?}");
    };
    assert_eq!(*code, 1009, "{frame:?}");
    assert!(reason.contains("MAX_BODY_BYTES"), "{frame:?}");
    // A new connection, with messages within the limit, is served.
    let mut client = WsClient::connect(app.addr, Some(&token), None)
        .await
        .unwrap();
    client
        .subscribe("1", SUBSCRIBE, json!({ "c": w.calendar.to_string() }))
        .await;
    listening(&app, 1).await;
}
