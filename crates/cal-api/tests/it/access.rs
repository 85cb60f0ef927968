//! Who may see what: every query and mutation against every calendar role, plus strangers,
//! anonymous callers and bad tokens. A stranger learns nothing, not even whether a thing exists.

use crate::common::*;
use cal_test_support::dates::{at, iso, month_args};

/// The people around one calendar: one per role, plus a stranger and an invitee who is not a member.
struct Cast {
    app: TestApp,
    w: World,
    writer: User,
    reader: User,
    free_busy: User,
    stranger: User,
}

async fn cast() -> Cast {
    let app = TestApp::spawn().await;
    let w = world(&app, 3, 2).await;
    let writer = app.user("Wendy Writer").await;
    let reader = app.user("Rita Reader").await;
    let free_busy = app.user("Fred Freebusy").await;
    let stranger = app.user("Sam Stranger").await;
    share(&app, w.calendar, writer.id, Role::Writer).await;
    share(&app, w.calendar, reader.id, Role::Reader).await;
    share(&app, w.calendar, free_busy.id, Role::FreeBusy).await;
    Cast {
        app,
        w,
        writer,
        reader,
        free_busy,
        stranger,
    }
}

impl Cast {
    /// (name, user) for the five relations, strongest first.
    fn everyone(&self) -> Vec<(&'static str, UserId)> {
        vec![
            ("owner", self.w.owner.id),
            ("writer", self.writer.id),
            ("reader", self.reader.id),
            ("free_busy", self.free_busy.id),
            ("stranger", self.stranger.id),
        ]
    }

    /// Ok(()) when the operation succeeded, Err(code) otherwise.
    async fn attempt(&self, who: UserId, query: &str, vars: Value) -> Result<Value, String> {
        let resp = self.app.gql(Some(who), query, vars).await;
        if resp.0.get("errors").is_some() {
            Err(resp.code().to_owned())
        } else {
            Ok(resp.0["data"].clone())
        }
    }

    /// Asserts that exactly the relations in `allowed` succeed and every other one gets FORBIDDEN.
    async fn only(&self, allowed: &[&str], query: &str, vars: impl Fn() -> Value) {
        for (name, who) in self.everyone() {
            let got = self.attempt(who, query, vars()).await;
            if allowed.contains(&name) {
                assert!(got.is_ok(), "{name} should be allowed: {query} -> {got:?}");
            } else {
                assert_eq!(
                    got.err().as_deref(),
                    Some("FORBIDDEN"),
                    "{name} must be forbidden: {query}"
                );
            }
        }
    }
}

#[tokio::test]
async fn reading_a_calendar_and_its_events() {
    let c = cast().await;
    let cal = c.w.calendar.to_string();
    c.only(
        &["owner", "writer", "reader", "free_busy"],
        "query($c: ID!) { calendar(id: $c) { id name myRole } }",
        || json!({ "c": cal }),
    )
    .await;
    c.only(&["owner", "writer", "reader"], MONTH_VIEW, || {
        month_vars(c.w.calendar)
    })
    .await;
    c.only(
        &["owner", "writer", "reader"],
        "query($c: ID!) { calendar(id: $c) { members { role user { id } } } }",
        || json!({ "c": cal }),
    )
    .await;
    let fb = format!(
        "query($c: ID!) {{ calendar(id: $c) {{ freeBusy({}) {{ start end }} }} }}",
        month_args()
    );
    c.only(
        &["owner", "writer", "reader", "free_busy"],
        &fb,
        || json!({ "c": cal }),
    )
    .await;
    // free_busy members see the busy blocks of the events.
    let data = c
        .attempt(c.free_busy.id, &fb, json!({ "c": cal }))
        .await
        .unwrap();
    assert_eq!(data["calendar"]["freeBusy"].as_array().unwrap().len(), 3);
    let ev = c.w.events[0].id.to_string();
    c.only(
        &["owner", "writer", "reader"],
        "query($e: ID!) { event(id: $e) { id title } }",
        || json!({ "e": ev }),
    )
    .await;
}

#[tokio::test]
async fn strangers_learn_nothing_not_even_existence() {
    let c = cast().await;
    let q = "query($c: ID!) { calendar(id: $c) { id name } }";
    let existing = c
        .app
        .gql(
            Some(c.stranger.id),
            q,
            json!({ "c": c.w.calendar.to_string() }),
        )
        .await;
    let missing = c
        .app
        .gql(Some(c.stranger.id), q, json!({ "c": "987654321" }))
        .await;
    assert_eq!(existing.code(), "FORBIDDEN");
    assert_eq!(
        existing.0["errors"][0]["message"],
        missing.0["errors"][0]["message"]
    );
    assert_eq!(existing.0["data"], missing.0["data"]);
    let q = "query($e: ID!) { event(id: $e) { id title } }";
    let existing = c
        .app
        .gql(
            Some(c.stranger.id),
            q,
            json!({ "e": c.w.events[0].id.to_string() }),
        )
        .await;
    let missing = c
        .app
        .gql(Some(c.stranger.id), q, json!({ "e": "987654321" }))
        .await;
    assert_eq!(
        (existing.code(), missing.code()),
        ("FORBIDDEN", "FORBIDDEN")
    );
    assert_eq!(existing.0["data"], missing.0["data"]);
    // Aliases do not help: every field is checked on its own.
    let q = "query($c: ID!, $e: ID!) { a: calendar(id: $c) { name } b: event(id: $e) { title } c: myCalendars { id } }";
    let resp = c
        .app
        .gql(
            Some(c.stranger.id),
            q,
            json!({ "c": c.w.calendar.to_string(), "e": c.w.events[0].id.to_string() }),
        )
        .await;
    assert_eq!(resp.codes(), vec!["FORBIDDEN", "FORBIDDEN"], "{}", resp.0);
    assert_eq!(
        resp.0["data"]["c"],
        json!([]),
        "a stranger is a member of nothing"
    );
    assert!(!resp.0.to_string().contains("Team") && !resp.0.to_string().contains("Event 0"));
}

#[tokio::test]
async fn invitees_see_the_event_but_not_the_calendar() {
    let c = cast().await;
    // Event 0 invites users[0] and users[1], who are not members of the calendar.
    let invitee = c.w.users[0].id;
    let q = "query($e: ID!) { event(id: $e) { id title myResponse calendar { id } } }";
    let data = c
        .attempt(invitee, q, json!({ "e": c.w.events[0].id.to_string() }))
        .await
        .unwrap();
    assert_eq!(data["event"]["title"], "Event 0");
    assert_eq!(data["event"]["myResponse"], "NEEDS_ACTION");
    assert_eq!(data["event"]["calendar"], Value::Null);
    // …and may answer the invitation, which nobody else can do in their name.
    let rsvp = "mutation($e: ID!) { respondToEvent(eventId: $e, response: ACCEPTED) { version myResponse } }";
    let data = c
        .attempt(invitee, rsvp, json!({ "e": c.w.events[0].id.to_string() }))
        .await
        .unwrap();
    assert_eq!(data["respondToEvent"]["myResponse"], "ACCEPTED");
    assert_eq!(
        c.attempt(
            c.reader.id,
            rsvp,
            json!({ "e": c.w.events[0].id.to_string() })
        )
        .await
        .err()
        .as_deref(),
        Some("FORBIDDEN")
    );
    assert_eq!(
        c.attempt(
            c.stranger.id,
            rsvp,
            json!({ "e": c.w.events[0].id.to_string() })
        )
        .await
        .err()
        .as_deref(),
        Some("FORBIDDEN")
    );
}

#[tokio::test]
async fn writers_and_owners_write_events() {
    let c = cast().await;
    let cal = c.w.calendar.to_string();
    let create = r#"mutation($c: ID!, $s: DateTime!, $e: DateTime!) { createEvent(input: { calendarId: $c, title: "x",
        startTime: $s, endTime: $e }) { id version } }"#;
    let (start, end) = (iso(at(20, 10, 0)), iso(at(20, 11, 0)));
    c.only(
        &["owner", "writer"],
        create,
        || json!({ "c": cal, "s": start, "e": end }),
    )
    .await;

    // Each mutation on an existing event: a fresh event per attempt so versions do not interfere.
    type Vars = Box<dyn Fn(&Event, &Cast) -> Value>;
    let ops: Vec<(&str, Vars)> = vec![
        (
            "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"y\" }) { version } }",
            Box::new(|e, _| json!({ "e": e.id.to_string(), "v": e.version })),
        ),
        (
            "mutation($e: ID!) { deleteEvent(id: $e) }",
            Box::new(|e, _| json!({ "e": e.id.to_string() })),
        ),
        (
            "mutation($e: ID!, $u: ID!) { addAttendees(eventId: $e, attendees: [{ userId: $u }]) { version } }",
            Box::new(|e, c| json!({ "e": e.id.to_string(), "u": c.stranger.id.to_string() })),
        ),
        (
            "mutation($e: ID!, $u: ID!) { removeAttendee(eventId: $e, userId: $u) { version } }",
            Box::new(|e, c| json!({ "e": e.id.to_string(), "u": c.w.users[0].id.to_string() })),
        ),
        (
            "mutation($e: ID!, $r: ID!) { reserveResource(eventId: $e, resourceId: $r) { id status } }",
            Box::new(|e, c| json!({ "e": e.id.to_string(), "r": c.w.rooms[2].id.to_string() })),
        ),
    ];
    let mut slot = 0;
    for (query, vars) in &ops {
        for (name, who) in c.everyone() {
            slot += 1;
            let ev = fresh_event(&c, slot).await;
            let got = c.attempt(who, query, vars(&ev, &c)).await;
            if ["owner", "writer"].contains(&name) {
                assert!(got.is_ok(), "{name} should be allowed: {query} -> {got:?}");
            } else {
                assert_eq!(
                    got.err().as_deref(),
                    Some("FORBIDDEN"),
                    "{name} must be forbidden: {query}"
                );
            }
        }
    }
    // cancelReservation.
    for (name, who) in c.everyone() {
        slot += 1;
        let ev = fresh_event(&c, slot).await;
        let r = c
            .app
            .store
            .reserve(
                ev.id,
                None,
                &[NewReservation {
                    resource_id: c.w.rooms[1].id,
                    start_time: None,
                    end_time: None,
                }],
            )
            .await
            .unwrap()
            .remove(0);
        let got = c
            .attempt(
                who,
                "mutation($r: ID!) { cancelReservation(reservationId: $r) { status } }",
                json!({ "r": r.id.to_string() }),
            )
            .await;
        if ["owner", "writer"].contains(&name) {
            assert_eq!(got.unwrap()["cancelReservation"]["status"], "CANCELLED");
        } else {
            assert_eq!(got.err().as_deref(), Some("FORBIDDEN"), "{name}");
        }
    }
}

/// An event of the cast's calendar in its own slot (so room bookings never collide), inviting users[0].
async fn fresh_event(c: &Cast, slot: i64) -> Event {
    let start = month_start() + chrono::Duration::days(20) + chrono::Duration::hours(2 * slot);
    c.app
        .store
        .create_event(&NewEvent {
            calendar_id: c.w.calendar,
            organizer_id: c.w.owner.id,
            title: cal_domain::Title::new(&format!("Fresh {slot}")).unwrap(),
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
            attendees: vec![NewAttendee {
                user_id: c.w.users[0].id,
                is_optional: false,
            }],
            reservations: vec![],
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn only_owners_share() {
    let c = cast().await;
    let cal = c.w.calendar.to_string();
    let target = c.app.user("Newcomer").await.id.to_string();
    let share = "mutation($c: ID!, $u: ID!) { shareCalendar(calendarId: $c, userId: $u, role: READER) { id } }";
    c.only(&["owner"], share, || json!({ "c": cal, "u": target }))
        .await;
    let unshare = "mutation($c: ID!, $u: ID!) { unshareCalendar(calendarId: $c, userId: $u) }";
    c.only(&["owner"], unshare, || json!({ "c": cal, "u": target }))
        .await;
    // The share took effect and was undone: the newcomer now sees nothing.
    let newcomer = UserId::parse(&target).unwrap();
    let got = c
        .attempt(
            newcomer,
            "query($c: ID!) { calendar(id: $c) { id } }",
            json!({ "c": cal }),
        )
        .await;
    assert_eq!(got.err().as_deref(), Some("FORBIDDEN"));
}

#[tokio::test]
async fn free_busy_of_people_needs_a_share() {
    let c = cast().await;
    let q = format!(
        "query($u: [ID!]!) {{ freeBusy(userIds: $u, {}) {{
        users {{ user {{ id }} busy {{ start end }} }} }} }}",
        month_args()
    );
    let q = q.as_str();
    let owner = c.w.owner.id.to_string();
    // Members of the owner's calendar (free_busy included) may see the owner's busy time; strangers may not.
    c.only(
        &["owner", "writer", "reader", "free_busy"],
        q,
        || json!({ "u": [owner] }),
    )
    .await;
    let data = c
        .attempt(c.free_busy.id, q, json!({ "u": [owner] }))
        .await
        .unwrap();
    let busy = data["freeBusy"]["users"][0]["busy"].as_array().unwrap();
    assert_eq!(busy.len(), 1, "event 0 is organized by the owner: {data}");
    // Everyone may see their own.
    let me = c.stranger.id.to_string();
    assert!(
        c.attempt(c.stranger.id, q, json!({ "u": [me] }))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn anonymous_and_bad_tokens_are_unauthenticated() {
    let c = cast().await;
    let resp = c.app.gql(None, "{ me { id } }", json!({})).await;
    assert_eq!(resp.code(), "UNAUTHENTICATED");
    let resp = c.app.gql(None, MONTH_VIEW, month_vars(c.w.calendar)).await;
    assert_eq!(resp.code(), "UNAUTHENTICATED");
    for bad in ["Bearer not-a-jwt", "Basic abc", "Bearer "] {
        let r = c
            .app
            .client
            .post(c.app.url("/graphql"))
            .header("authorization", bad)
            .json(&json!({ "query": "{ me { id } }" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{bad}"
        );
    }
    let resp = c
        .app
        .gql(Some(c.reader.id), "{ me { id name } }", json!({}))
        .await;
    assert_eq!(resp.data()["me"]["name"], "Rita Reader");
}
