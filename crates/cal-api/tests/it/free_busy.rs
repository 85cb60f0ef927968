//! Free/busy and meeting times: merged busy intervals per user and resource, series expanded,
//! declined invitations, free and cancelled events left out, overrides honoured.

use crate::common::*;

const FB: &str = r#"query($u: [ID!]!, $r: [ID!]!, $f: DateTime!, $t: DateTime!, $tz: String) {
    freeBusy(userIds: $u, resourceIds: $r, from: $f, to: $t, timeZone: $tz) {
      users { user { id } busy { start end } } resources { resource { id } busy { start end } } } }"#;

async fn create(app: &TestApp, who: &User, input: Value) -> Value {
    let q = "mutation($in: CreateEventInput!) { createEvent(input: $in) { id version } }";
    app.gql(Some(who.id), q, json!({ "in": input }))
        .await
        .data()["createEvent"]
        .clone()
}

fn spans(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["start"].as_str().unwrap().to_owned(),
                i["end"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn busy_intervals_merge_series_singles_and_respect_responses() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let cal = app.calendar(alice.id, "Alice").await;
    share(&app, cal, bob.id, Role::FreeBusy).await;
    let c = cal.to_string();
    let bob_id = bob.id.to_string();
    // Daily 09:00–10:00 UTC series with Bob invited, Nov 2–4.
    let series = create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Daily", "startTime": "2026-11-02T09:00:00Z",
        "endTime": "2026-11-02T10:00:00Z", "timeZone": "UTC", "rrule": "FREQ=DAILY;COUNT=3",
        "attendees": [{ "userId": bob_id }] }),
    )
    .await;
    // Touching single 10:00–11:00 on Nov 2 (merges with the series), tentative.
    create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Tentative", "status": "TENTATIVE",
        "startTime": "2026-11-02T10:00:00Z", "endTime": "2026-11-02T11:00:00Z" }),
    )
    .await;
    // Free and cancelled events never block.
    create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Focus", "transparency": "FREE",
        "startTime": "2026-11-02T13:00:00Z", "endTime": "2026-11-02T14:00:00Z" }),
    )
    .await;
    create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Off", "status": "CANCELLED",
        "startTime": "2026-11-02T15:00:00Z", "endTime": "2026-11-02T16:00:00Z" }),
    )
    .await;
    // Bob declines a single event he is invited to.
    let lunch = create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Lunch", "startTime": "2026-11-03T12:00:00Z",
        "endTime": "2026-11-03T13:00:00Z", "attendees": [{ "userId": bob_id }] }),
    )
    .await;
    app.gql(
        Some(bob.id),
        "mutation($e: ID!) { respondToEvent(eventId: $e, response: DECLINED) { id } }",
        json!({ "e": lunch["id"] }),
    )
    .await
    .data();
    // The Nov 4 occurrence moves to 16:00.
    let sid = series["id"].as_str().unwrap();
    let v: i64 = app.event_version(sid.parse::<i64>().unwrap()).await;
    app.gql(Some(alice.id), "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { startTime: \"2026-11-04T16:00:00Z\", endTime: \"2026-11-04T17:00:00Z\" }) { id } }",
        json!({ "e": format!("{sid}_20261104T090000Z"), "v": v })).await.data();

    let vars = json!({ "u": [alice.id.to_string(), bob_id], "r": [], "f": "2026-11-01T00:00:00Z", "t": "2026-11-06T00:00:00Z", "tz": null });
    let resp = app.gql(Some(bob.id), FB, vars).await;
    let users = &resp.data()["freeBusy"]["users"];
    assert_eq!(
        spans(&users[0]["busy"]),
        vec![
            (
                "2026-11-02T09:00:00+00:00".into(),
                "2026-11-02T11:00:00+00:00".into()
            ),
            (
                "2026-11-03T09:00:00+00:00".into(),
                "2026-11-03T10:00:00+00:00".into()
            ),
            (
                "2026-11-03T12:00:00+00:00".into(),
                "2026-11-03T13:00:00+00:00".into()
            ),
            (
                "2026-11-04T16:00:00+00:00".into(),
                "2026-11-04T17:00:00+00:00".into()
            ),
        ]
    );
    assert_eq!(
        spans(&users[1]["busy"]),
        vec![
            (
                "2026-11-02T09:00:00+00:00".into(),
                "2026-11-02T10:00:00+00:00".into()
            ),
            (
                "2026-11-03T09:00:00+00:00".into(),
                "2026-11-03T10:00:00+00:00".into()
            ),
            (
                "2026-11-04T16:00:00+00:00".into(),
                "2026-11-04T17:00:00+00:00".into()
            ),
        ],
        "Bob declined lunch; his copy of the moved occurrence moved too"
    );

    // Rendered in a zone: same instants, local offsets.
    let vars = json!({ "u": [alice.id.to_string()], "r": [], "f": "2026-11-02T00:00:00Z", "t": "2026-11-03T00:00:00Z", "tz": "Asia/Tokyo" });
    let resp = app.gql(Some(alice.id), FB, vars).await;
    assert_eq!(
        resp.data()["freeBusy"]["users"][0]["busy"][0]["start"],
        "2026-11-02T18:00:00+09:00"
    );

    // The calendar's own busy view (free_busy role suffices) expands the series too.
    let q = r#"query($c: ID!) { calendar(id: $c) { freeBusy(from: "2026-11-01T00:00:00Z", to: "2026-11-06T00:00:00Z") { start end } } }"#;
    let resp = app.gql(Some(bob.id), q, json!({ "c": c })).await;
    assert_eq!(
        resp.data()["calendar"]["freeBusy"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn meeting_times_are_the_common_free_gaps() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let cal = app.calendar(alice.id, "Alice").await;
    let bcal = app.calendar(bob.id, "Bob").await;
    share(&app, bcal, alice.id, Role::FreeBusy).await;
    let room = app
        .store
        .create_resource("Loft", ResourceKind::Room, Some(4), None)
        .await
        .unwrap();
    create(&app, &alice, json!({ "calendarId": cal.to_string(), "title": "A", "startTime": "2026-11-02T09:00:00Z", "endTime": "2026-11-02T10:00:00Z" })).await;
    create(&app, &bob, json!({ "calendarId": bcal.to_string(), "title": "B", "startTime": "2026-11-02T10:30:00Z", "endTime": "2026-11-02T12:00:00Z" })).await;
    create(&app, &alice, json!({ "calendarId": cal.to_string(), "title": "Room", "startTime": "2026-11-02T13:00:00Z", "endTime": "2026-11-02T13:45:00Z",
        "reservations": [{ "resourceId": room.id.to_string() }] })).await;
    let q = r#"query($u: [ID!]!, $r: [ID!]!, $tz: String) { findMeetingTimes(userIds: $u, resourceIds: $r, duration: 60,
        from: "2026-11-02T08:00:00Z", to: "2026-11-02T17:00:00Z", timeZone: $tz) { start end } }"#;
    let vars = json!({ "u": [alice.id.to_string(), bob.id.to_string()], "r": [room.id.to_string()], "tz": null });
    let resp = app.gql(Some(alice.id), q, vars).await;
    // Gaps: 08:00–09:00, 10:00–10:30 (too short), 12:00–13:00, 13:45–17:00 (alice's room booking blocks her too).
    assert_eq!(
        spans(&resp.data()["findMeetingTimes"]),
        vec![
            (
                "2026-11-02T08:00:00+00:00".into(),
                "2026-11-02T09:00:00+00:00".into()
            ),
            (
                "2026-11-02T12:00:00+00:00".into(),
                "2026-11-02T13:00:00+00:00".into()
            ),
            (
                "2026-11-02T13:45:00+00:00".into(),
                "2026-11-02T17:00:00+00:00".into()
            ),
        ]
    );
    let vars = json!({ "u": [alice.id.to_string()], "r": [], "tz": "Europe/Berlin" });
    let resp = app.gql(Some(alice.id), q, vars).await;
    assert_eq!(
        resp.data()["findMeetingTimes"][0]["start"],
        "2026-11-02T09:00:00+01:00"
    );
    // Without a share, Bob cannot probe Alice's time.
    let vars = json!({ "u": [alice.id.to_string()], "r": [], "tz": null });
    assert_eq!(app.gql(Some(bob.id), q, vars).await.code(), "FORBIDDEN");
}
