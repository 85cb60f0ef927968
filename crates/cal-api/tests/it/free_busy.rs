//! Free/busy and meeting times: merged busy intervals per user and resource, series expanded,
//! declined invitations, free and cancelled events left out, overrides honoured.

use crate::common::*;
use cal_test_support::dates::{at, compact, iso, rfc};
use chrono::{DateTime, Utc};

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

/// `[from, to)` as the API answers it in UTC.
fn span(from: DateTime<Utc>, to: DateTime<Utc>) -> (String, String) {
    (rfc(from), rfc(to))
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
    // Daily 09:00–10:00 UTC series with Bob invited, on the 2nd to the 4th.
    let series = create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Daily", "startTime": iso(at(2, 9, 0)),
        "endTime": iso(at(2, 10, 0)), "timeZone": "UTC", "rrule": "FREQ=DAILY;COUNT=3",
        "attendees": [{ "userId": bob_id }] }),
    )
    .await;
    // Touching single 10:00–11:00 on the 2nd (merges with the series), tentative.
    create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Tentative", "status": "TENTATIVE",
        "startTime": iso(at(2, 10, 0)), "endTime": iso(at(2, 11, 0)) }),
    )
    .await;
    // Free and cancelled events never block.
    create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Focus", "transparency": "FREE",
        "startTime": iso(at(2, 13, 0)), "endTime": iso(at(2, 14, 0)) }),
    )
    .await;
    create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Off", "status": "CANCELLED",
        "startTime": iso(at(2, 15, 0)), "endTime": iso(at(2, 16, 0)) }),
    )
    .await;
    // Bob declines a single event he is invited to.
    let lunch = create(
        &app,
        &alice,
        json!({ "calendarId": c, "title": "Lunch", "startTime": iso(at(3, 12, 0)),
        "endTime": iso(at(3, 13, 0)), "attendees": [{ "userId": bob_id }] }),
    )
    .await;
    app.gql(
        Some(bob.id),
        "mutation($e: ID!) { respondToEvent(eventId: $e, response: DECLINED) { id } }",
        json!({ "e": lunch["id"] }),
    )
    .await
    .data();
    // The occurrence on the 4th moves to 16:00.
    let sid = series["id"].as_str().unwrap();
    let v: i64 = app.event_version(sid.parse::<i64>().unwrap()).await;
    app.gql(Some(alice.id), "mutation($e: ID!, $v: Int!, $s: DateTime!, $t: DateTime!) { updateEvent(id: $e, expectedVersion: $v, input: { startTime: $s, endTime: $t }) { id } }",
        json!({ "e": format!("{sid}_{}", compact(at(4, 9, 0))), "v": v, "s": iso(at(4, 16, 0)), "t": iso(at(4, 17, 0)) })).await.data();

    let vars = json!({ "u": [alice.id.to_string(), bob_id], "r": [], "f": iso(month_start()), "t": iso(at(6, 0, 0)), "tz": null });
    let resp = app.gql(Some(bob.id), FB, vars).await;
    let users = &resp.data()["freeBusy"]["users"];
    assert_eq!(
        spans(&users[0]["busy"]),
        vec![
            span(at(2, 9, 0), at(2, 11, 0)),
            span(at(3, 9, 0), at(3, 10, 0)),
            span(at(3, 12, 0), at(3, 13, 0)),
            span(at(4, 16, 0), at(4, 17, 0)),
        ]
    );
    assert_eq!(
        spans(&users[1]["busy"]),
        vec![
            span(at(2, 9, 0), at(2, 10, 0)),
            span(at(3, 9, 0), at(3, 10, 0)),
            span(at(4, 16, 0), at(4, 17, 0)),
        ],
        "Bob declined lunch; his copy of the moved occurrence moved too"
    );

    // Rendered in a zone: same instants, local offsets (Tokyo is +09:00 all year).
    let vars = json!({ "u": [alice.id.to_string()], "r": [], "f": iso(at(2, 0, 0)), "t": iso(at(3, 0, 0)), "tz": "Asia/Tokyo" });
    let resp = app.gql(Some(alice.id), FB, vars).await;
    let tokyo = chrono::FixedOffset::east_opt(9 * 3600).unwrap();
    assert_eq!(
        resp.data()["freeBusy"]["users"][0]["busy"][0]["start"],
        at(2, 9, 0).with_timezone(&tokyo).to_rfc3339()
    );

    // The calendar's own busy view (free_busy role suffices) expands the series too.
    let q = r#"query($c: ID!, $f: DateTime!, $t: DateTime!) { calendar(id: $c) { freeBusy(from: $f, to: $t) { start end } } }"#;
    let vars = json!({ "c": c, "f": iso(month_start()), "t": iso(at(6, 0, 0)) });
    let resp = app.gql(Some(bob.id), q, vars).await;
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
    create(&app, &alice, json!({ "calendarId": cal.to_string(), "title": "A", "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 10, 0)) })).await;
    create(&app, &bob, json!({ "calendarId": bcal.to_string(), "title": "B", "startTime": iso(at(2, 10, 30)), "endTime": iso(at(2, 12, 0)) })).await;
    create(&app, &alice, json!({ "calendarId": cal.to_string(), "title": "Room", "startTime": iso(at(2, 13, 0)), "endTime": iso(at(2, 13, 45)),
        "reservations": [{ "resourceId": room.id.to_string() }] })).await;
    let q = r#"query($u: [ID!]!, $r: [ID!]!, $f: DateTime!, $t: DateTime!, $tz: String) { findMeetingTimes(userIds: $u, resourceIds: $r, duration: 60,
        from: $f, to: $t, timeZone: $tz) { start end } }"#;
    let (f, t) = (iso(at(2, 8, 0)), iso(at(2, 17, 0)));
    let vars = json!({ "u": [alice.id.to_string(), bob.id.to_string()], "r": [room.id.to_string()], "f": f, "t": t, "tz": null });
    let resp = app.gql(Some(alice.id), q, vars).await;
    // Gaps: 08:00–09:00, 10:00–10:30 (too short), 12:00–13:00, 13:45–17:00 (alice's room booking blocks her too).
    assert_eq!(
        spans(&resp.data()["findMeetingTimes"]),
        vec![
            span(at(2, 8, 0), at(2, 9, 0)),
            span(at(2, 12, 0), at(2, 13, 0)),
            span(at(2, 13, 45), at(2, 17, 0)),
        ]
    );
    // Rendered in Berlin: the offset is the one Berlin has on that day (+01:00 in November,
    // +02:00 in summer), so it comes from the zone's rules rather than from a literal.
    let vars =
        json!({ "u": [alice.id.to_string()], "r": [], "f": f, "t": t, "tz": "Europe/Berlin" });
    let resp = app.gql(Some(alice.id), q, vars).await;
    assert_eq!(
        resp.data()["findMeetingTimes"][0]["start"],
        at(2, 8, 0)
            .with_timezone(&chrono_tz::Europe::Berlin)
            .to_rfc3339()
    );
    // Without a share, Bob cannot probe Alice's time.
    let vars = json!({ "u": [alice.id.to_string()], "r": [], "f": f, "t": t, "tz": null });
    assert_eq!(app.gql(Some(bob.id), q, vars).await.code(), "FORBIDDEN");
}
