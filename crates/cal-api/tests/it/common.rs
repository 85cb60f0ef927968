//! Shared helpers for the API tests: a seeded calendar and the month-view query.

pub use cal_domain::*;
pub use cal_storage::{NewAttendee, NewEvent, NewReservation};
use cal_test_support::dates;
pub use cal_test_support::{Gql, TestApp};
use chrono::{DateTime, Duration, Utc};
pub use serde_json::{Value, json};

/// The month-view contract, exactly as the issue writes it and as the load tests send it: the
/// tests run the file itself, so the two cannot drift apart.
pub const MONTH_VIEW: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../loadtests/month_view.graphql"
));

/// Midnight UTC on the first day of the anchor month ([`dates::month_start`]).
pub fn month_start() -> DateTime<Utc> {
    dates::month_start()
}

/// The month view's variables over the anchor month ([`dates::month_vars`]).
pub fn month_vars(cal: CalendarId) -> Value {
    dates::month_vars(cal)
}

/// An owner, a calendar, `n` events in the anchor month ([`dates::ANCHOR`]) with
/// `attendees_per_event` attendees each (drawn from a pool of users) and a room reserved for
/// every other event.
pub struct World {
    pub owner: User,
    pub calendar: CalendarId,
    pub users: Vec<User>,
    pub rooms: Vec<Resource>,
    pub events: Vec<Event>,
}

/// `w`'s month view read twice by its owner: cold in at most 5 statements, then warm without
/// SQL and with the same data (both asserted). Answers the warm read.
pub async fn cold_then_warm(app: &TestApp, w: &World) -> Gql {
    let cold = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert!(
        cold.sql_statements() <= 5,
        "cold: {}",
        cold.sql_statements()
    );
    let warm = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(
        warm.sql_statements(),
        0,
        "warm month view must be served from memory"
    );
    assert_eq!(warm.data(), cold.data());
    warm
}

pub async fn world(app: &TestApp, n: usize, attendees_per_event: usize) -> World {
    let owner = app.user("Olivia Owner").await;
    let calendar = app.calendar(owner.id, "Team").await;
    let mut users = Vec::new();
    for i in 0..attendees_per_event.max(1) * 3 {
        users.push(app.user(&format!("Person {i}")).await);
    }
    let mut rooms = Vec::new();
    for i in 0..3 {
        rooms.push(
            app.store
                .create_resource(&format!("Room {i}"), ResourceKind::Room, Some(8), None)
                .await
                .unwrap(),
        );
    }
    let mut events = Vec::new();
    for i in 0..n {
        // Spread over the month, one-hour events, never overlapping in the same room.
        let start =
            month_start() + Duration::hours(8) + Duration::minutes(90 * i as i64 % (28 * 24 * 60));
        let attendees = (0..attendees_per_event)
            .map(|k| NewAttendee {
                user_id: users[(i + k) % users.len()].id,
                is_optional: k % 4 == 3,
            })
            .collect();
        let reservations = if i % 2 == 0 {
            vec![NewReservation {
                resource_id: rooms[i % rooms.len()].id,
                start_time: None,
                end_time: None,
            }]
        } else {
            vec![]
        };
        let ev = app
            .store
            .create_event(&NewEvent {
                calendar_id: calendar,
                organizer_id: if i % 3 == 0 {
                    owner.id
                } else {
                    users[i % users.len()].id
                },
                title: Title::new(&format!("Event {i}")).unwrap(),
                description: None,
                location: None,
                start_time: start,
                end_time: start + Duration::hours(1),
                time_zone: "Europe/Berlin".into(),
                all_day: false,
                status: EventStatus::Confirmed,
                transparency: Transparency::Busy,
                rrule: None,
                series_end: None,
                attendees,
                reservations,
            })
            .await
            .unwrap();
        events.push(ev);
    }
    World {
        owner,
        calendar,
        users,
        rooms,
        events,
    }
}

/// Shares `cal` with `user` in `role` directly in the database.
pub async fn share(app: &TestApp, cal: CalendarId, user: UserId, role: Role) {
    app.store.share_calendar(cal, user, role).await.unwrap();
}

/// Renames `event` as `user`, at its current version (asserting the write succeeds).
pub async fn rename(app: &TestApp, user: UserId, event: EventId, title: &str) {
    let v = app.event_version(event.get()).await;
    let upd = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { id } }";
    app.gql(
        Some(user),
        upd,
        json!({ "e": event.to_string(), "v": v, "t": title }),
    )
    .await
    .data();
}

/// Removes `user`'s role on `calendar`, as its owner, through the API.
pub async fn unshare(app: &TestApp, owner: UserId, calendar: CalendarId, user: UserId) {
    let q = "mutation($c: ID!, $u: ID!) { unshareCalendar(calendarId: $c, userId: $u) }";
    app.gql(
        Some(owner),
        q,
        json!({ "c": calendar.to_string(), "u": user.to_string() }),
    )
    .await
    .data();
}
