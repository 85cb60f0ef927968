//! Mutations through the API: each writes what it says, bumps `version`, appends an outbox row in
//! the same transaction, and a failing one writes nothing.

use crate::common::*;
use cal_test_support::dates::{at, iso, rfc};
use cal_test_support::sql;

async fn outbox_count(app: &TestApp) -> i64 {
    sql::outbox_rows(&app.db.pool).await
}

#[tokio::test]
async fn create_event_with_attendees_and_rooms_then_read_it_back() {
    let app = TestApp::spawn().await;
    let w = world(&app, 0, 2).await;
    let before = outbox_count(&app).await;
    let q = r#"mutation($in: CreateEventInput!) { createEvent(input: $in) {
        id title version timeZone status transparency organizer { id }
        attendees { isOptional responseStatus user { id } } reservations { status resource { id } startTime } } }"#;
    // Sent with a +01:00 offset (09:00+01:00 is 08:00Z on the 10th).
    let plus_one = chrono::FixedOffset::east_opt(3600).unwrap();
    let (start, end) = (at(10, 8, 0), at(10, 9, 0));
    let input = json!({ "in": {
        "calendarId": w.calendar.to_string(), "title": "Planning", "location": "HQ",
        "startTime": start.with_timezone(&plus_one).to_rfc3339(), "endTime": end.with_timezone(&plus_one).to_rfc3339(),
        "attendees": [{ "userId": w.users[0].id.to_string() }, { "userId": w.users[1].id.to_string(), "isOptional": true }],
        "reservations": [{ "resourceId": w.rooms[0].id.to_string() }]
    }});
    let resp = app.gql(Some(w.owner.id), q, input).await;
    let ev = &resp.data()["createEvent"];
    assert_eq!(ev["title"], "Planning");
    assert_eq!(ev["version"], 1);
    assert_eq!(
        ev["timeZone"], "Europe/Berlin",
        "defaults to the calendar's zone"
    );
    assert_eq!(ev["organizer"]["id"], w.owner.id.to_string());
    assert_eq!(ev["attendees"].as_array().unwrap().len(), 2);
    assert_eq!(ev["attendees"][1]["isOptional"], true);
    assert_eq!(
        ev["reservations"][0]["resource"]["id"],
        w.rooms[0].id.to_string()
    );
    assert_eq!(ev["reservations"][0]["startTime"], rfc(start));
    assert_eq!(outbox_count(&app).await, before + 1);

    let read = app
        .gql(
            Some(w.owner.id),
            "query($e: ID!) { event(id: $e) { title location attendees { user { id } } } }",
            json!({ "e": ev["id"] }),
        )
        .await;
    assert_eq!(read.data()["event"]["location"], "HQ");
}

#[tokio::test]
async fn overlapping_reservation_is_a_resource_conflict_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let w = world(&app, 1, 1).await; // event 0 holds rooms[0] 08:00–09:00 on the 1st
    let taken = &w.events[0];
    let before_events = sql::event_rows(&app.db.pool).await;
    let before_outbox = outbox_count(&app).await;
    let q = r#"mutation($in: CreateEventInput!) { createEvent(input: $in) { id } }"#;
    let input = json!({ "in": {
        "calendarId": w.calendar.to_string(), "title": "Clash",
        "startTime": (taken.start_time + chrono::Duration::minutes(30)).to_rfc3339(),
        "endTime": (taken.end_time + chrono::Duration::minutes(30)).to_rfc3339(),
        "attendees": [{ "userId": w.users[0].id.to_string() }],
        "reservations": [{ "resourceId": w.rooms[1].id.to_string() }, { "resourceId": w.rooms[0].id.to_string() }]
    }});
    let resp = app.gql(Some(w.owner.id), q, input).await;
    assert_eq!(resp.code(), "RESOURCE_CONFLICT");
    assert!(
        resp.message().contains(&format!("event {}", taken.id)),
        "{}",
        resp.message()
    );
    let conflicts = &resp.0["errors"][0]["extensions"]["conflicts"];
    assert_eq!(conflicts[0]["eventId"], taken.id.to_string());
    assert_eq!(conflicts[0]["resourceId"], w.rooms[0].id.to_string());
    let after_events = sql::event_rows(&app.db.pool).await;
    assert_eq!(after_events, before_events, "the event was not created");
    let res = sql::reservation_rows(&app.db.pool).await;
    assert_eq!(res, 1, "not even the free room was booked");
    assert_eq!(outbox_count(&app).await, before_outbox);

    // Back-to-back is not an overlap ([start, end) intervals).
    let input = json!({ "in": {
        "calendarId": w.calendar.to_string(), "title": "Right after",
        "startTime": taken.end_time.to_rfc3339(), "endTime": (taken.end_time + chrono::Duration::hours(1)).to_rfc3339(),
        "reservations": [{ "resourceId": w.rooms[0].id.to_string() }]
    }});
    app.gql(Some(w.owner.id), q, input).await.data();
}

#[tokio::test]
async fn reserve_and_cancel_and_moving_an_event_moves_its_booking() {
    let app = TestApp::spawn().await;
    let w = world(&app, 2, 1).await; // event 0: rooms[0]; event 1: no room, 09:30–10:30
    let ev1 = &w.events[1];
    let reserve = "mutation($e: ID!, $r: ID!) { reserveResource(eventId: $e, resourceId: $r) { id status startTime resource { name } } }";
    let resp = app
        .gql(
            Some(w.owner.id),
            reserve,
            json!({ "e": ev1.id.to_string(), "r": w.rooms[0].id.to_string() }),
        )
        .await;
    // Event 0 holds rooms[0] 08:00–09:00, event 1 is 09:30–10:30: no overlap.
    let rid = resp.data()["reserveResource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(resp.data()["reserveResource"]["status"], "CONFIRMED");

    // Moving event 1 onto event 0's slot collides through its booking.
    let current: i64 = app.event_version(ev1.id.get()).await;
    let update = "mutation($e: ID!, $v: Int!, $s: DateTime!, $t: DateTime!) { updateEvent(id: $e, expectedVersion: $v, input: { startTime: $s, endTime: $t }) { version startTime reservations { startTime } } }";
    let clash = json!({ "e": ev1.id.to_string(), "v": current, "s": w.events[0].start_time.to_rfc3339(), "t": w.events[0].end_time.to_rfc3339() });
    let resp = app.gql(Some(w.owner.id), update, clash).await;
    assert_eq!(resp.code(), "RESOURCE_CONFLICT");
    let after: i64 = app.event_version(ev1.id.get()).await;
    assert_eq!(after, current, "the failed move changed nothing");

    // A free slot moves the booking with the event.
    let free = json!({ "e": ev1.id.to_string(), "v": current, "s": iso(at(15, 12, 0)), "t": iso(at(15, 13, 0)) });
    let resp = app.gql(Some(w.owner.id), update, free).await;
    assert_eq!(
        resp.data()["updateEvent"]["reservations"][0]["startTime"],
        rfc(at(15, 12, 0))
    );

    let resp = app
        .gql(
            Some(w.owner.id),
            "mutation($r: ID!) { cancelReservation(reservationId: $r) { status } }",
            json!({ "r": rid }),
        )
        .await;
    assert_eq!(resp.data()["cancelReservation"]["status"], "CANCELLED");
    // The slot is free again for someone else.
    let avail = r#"query($r: ID!, $f: DateTime!, $t: DateTime!) { resourceAvailability(resourceId: $r, from: $f, to: $t) { busy { start } free { start end } } }"#;
    let (day, next_day) = (at(15, 0, 0), at(16, 0, 0));
    let vars = json!({ "r": w.rooms[0].id.to_string(), "f": iso(day), "t": iso(next_day) });
    let resp = app.gql(Some(w.owner.id), avail, vars).await;
    assert_eq!(resp.data()["resourceAvailability"]["busy"], json!([]));
    assert_eq!(
        resp.data()["resourceAvailability"]["free"][0]["end"],
        rfc(next_day)
    );
}

#[tokio::test]
async fn delete_is_soft_and_releases_rooms() {
    let app = TestApp::spawn().await;
    let w = world(&app, 1, 1).await;
    let ev = &w.events[0];
    let resp = app
        .gql(
            Some(w.owner.id),
            "mutation($e: ID!, $v: Int) { deleteEvent(id: $e, expectedVersion: $v) }",
            json!({ "e": ev.id.to_string(), "v": ev.version }),
        )
        .await;
    assert_eq!(resp.data()["deleteEvent"], true);
    let (deleted, status) =
        sql::event_deleted_and_reservation_status(&app.db.pool, ev.id.get()).await;
    assert!(deleted, "the row stays, marked deleted");
    assert_eq!(status, "cancelled");
    let resp = app
        .gql(
            Some(w.owner.id),
            "query($e: ID!) { event(id: $e) { id } }",
            json!({ "e": ev.id.to_string() }),
        )
        .await;
    assert_eq!(
        resp.code(),
        "FORBIDDEN",
        "a deleted event is gone for everyone"
    );
    let resp = app
        .gql(
            Some(w.owner.id),
            "mutation($e: ID!) { deleteEvent(id: $e) }",
            json!({ "e": ev.id.to_string() }),
        )
        .await;
    assert!(resp.0["errors"].is_array());
}

#[tokio::test]
async fn attendees_can_be_added_removed_and_respond() {
    let app = TestApp::spawn().await;
    let w = world(&app, 1, 1).await;
    let ev = &w.events[0];
    let add = "mutation($e: ID!, $a: [AttendeeInput!]!) { addAttendees(eventId: $e, attendees: $a) { version attendees { user { id } isOptional } } }";
    let resp = app.gql(Some(w.owner.id), add, json!({ "e": ev.id.to_string(), "a": [{ "userId": w.users[2].id.to_string(), "isOptional": true }] })).await;
    let data = &resp.data()["addAttendees"];
    assert_eq!(data["version"], ev.version + 1);
    assert_eq!(data["attendees"].as_array().unwrap().len(), 2);

    let rsvp = "mutation($e: ID!, $r: ResponseStatus!) { respondToEvent(eventId: $e, response: $r) { myResponse attendees { user { id } responseStatus } } }";
    let resp = app
        .gql(
            Some(w.users[2].id),
            rsvp,
            json!({ "e": ev.id.to_string(), "r": "DECLINED" }),
        )
        .await;
    assert_eq!(resp.data()["respondToEvent"]["myResponse"], "DECLINED");

    let remove = "mutation($e: ID!, $u: ID!) { removeAttendee(eventId: $e, userId: $u) { version attendees { user { id } } } }";
    let resp = app
        .gql(
            Some(w.owner.id),
            remove,
            json!({ "e": ev.id.to_string(), "u": w.users[2].id.to_string() }),
        )
        .await;
    assert_eq!(
        resp.data()["removeAttendee"]["attendees"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let events = sql::outbox_rows_of_event(&app.db.pool, ev.id.get()).await;
    assert_eq!(
        events, 4,
        "created, attendees added, rsvp, attendee removed"
    );
}

#[tokio::test]
async fn calendars_are_created_shared_and_listed() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let bob = app.user("Bob").await;
    let resp = app.gql(Some(alice.id), r#"mutation { createCalendar(input: { name: "Alice's", timeZone: "Asia/Tokyo" }) { id myRole timeZone owner { id } } }"#, json!({})).await;
    let cal = resp.data()["createCalendar"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(resp.data()["createCalendar"]["myRole"], "OWNER");
    let share = "mutation($c: ID!, $u: ID!, $r: CalendarRole!) { shareCalendar(calendarId: $c, userId: $u, role: $r) { members { role user { id } } } }";
    let resp = app
        .gql(
            Some(alice.id),
            share,
            json!({ "c": cal, "u": bob.id.to_string(), "r": "WRITER" }),
        )
        .await;
    assert_eq!(
        resp.data()["shareCalendar"]["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let resp = app
        .gql(
            Some(alice.id),
            share,
            json!({ "c": cal, "u": bob.id.to_string(), "r": "OWNER" }),
        )
        .await;
    assert_eq!(resp.code(), "BAD_USER_INPUT");
    let resp = app
        .gql(
            Some(alice.id),
            share,
            json!({ "c": cal, "u": alice.id.to_string(), "r": "READER" }),
        )
        .await;
    assert_eq!(
        resp.code(),
        "BAD_USER_INPUT",
        "the owner cannot demote itself"
    );
    let resp = app
        .gql(Some(bob.id), "{ myCalendars { id myRole } }", json!({}))
        .await;
    assert_eq!(
        resp.data()["myCalendars"],
        json!([{ "id": cal, "myRole": "WRITER" }])
    );
}

#[tokio::test]
async fn database_forbids_overlapping_confirmed_reservations_even_when_racing() {
    let app = TestApp::spawn().await;
    let w = world(&app, 0, 1).await;
    let room = w.rooms[0].id;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = app.store.clone();
        let (cal, org) = (w.calendar, w.owner.id);
        tasks.push(tokio::spawn(async move {
            let start = month_start() + chrono::Duration::hours(10) + chrono::Duration::minutes(i);
            store
                .create_event(&NewEvent {
                    calendar_id: cal,
                    organizer_id: org,
                    title: cal_domain::Title::new(&format!("Racer {i}")).unwrap(),
                    description: None,
                    location: None,
                    start_time: start,
                    end_time: start + chrono::Duration::hours(1),
                    time_zone: "UTC".into(),
                    all_day: false,
                    status: EventStatus::Confirmed,
                    transparency: Transparency::Busy,
                    rrule: None,
                    series_end: None,
                    attendees: vec![],
                    reservations: vec![NewReservation {
                        resource_id: room,
                        start_time: None,
                        end_time: None,
                    }],
                })
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(cal_storage::StorageError::ResourceConflict(_)) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1, "exactly one of the overlapping bookings wins");
}
