//! The month view: the contract query works as written, returns the right data, and costs a fixed
//! handful of SQL statements whatever the number of events (no N+1).

use crate::common::*;
use cal_test_support::dates::{next_month_start, window_vars};

async fn month_view_statements(n: usize) -> (Gql, World) {
    let app = TestApp::spawn().await;
    let w = world(&app, n, 6).await;
    let resp = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    (resp, w)
}

#[tokio::test]
async fn month_view_of_10_events_takes_at_most_5_statements() {
    let (resp, w) = month_view_statements(10).await;
    let edges = resp.data()["calendar"]["events"]["edges"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(edges.len(), 10);
    assert!(
        resp.sql_statements() <= 5,
        "took {} statements",
        resp.sql_statements()
    );
    assert_eq!(resp.data()["calendar"]["name"], "Team");
    assert_eq!(resp.data()["calendar"]["id"], w.calendar.to_string());
}

#[tokio::test]
async fn month_view_of_100_events_takes_at_most_5_statements() {
    let (resp, _) = month_view_statements(100).await;
    let events = &resp.data()["calendar"]["events"];
    assert_eq!(events["edges"].as_array().unwrap().len(), 100);
    assert_eq!(events["pageInfo"]["hasNextPage"], false);
    assert!(
        resp.sql_statements() <= 5,
        "took {} statements",
        resp.sql_statements()
    );
}

#[tokio::test]
async fn month_view_returns_organizers_attendees_and_rooms() {
    let (resp, w) = month_view_statements(12).await;
    let edges = resp.data()["calendar"]["events"]["edges"]
        .as_array()
        .unwrap();
    // Ordered by start time, as created.
    for (edge, ev) in edges.iter().zip(&w.events) {
        let node = &edge["node"];
        assert_eq!(node["id"], ev.id.to_string());
        assert_eq!(node["title"], ev.title);
        let organizer = w
            .users
            .iter()
            .chain(std::iter::once(&w.owner))
            .find(|u| u.id == ev.organizer_id)
            .unwrap();
        assert_eq!(node["organizer"]["name"], organizer.name);
        assert_eq!(
            node["organizer"]["avatarUrl"],
            organizer.avatar_url.clone().unwrap()
        );
        let attendees = node["attendees"].as_array().unwrap();
        assert_eq!(attendees.len(), 6);
        assert!(
            attendees
                .iter()
                .all(|a| a["responseStatus"] == "NEEDS_ACTION" && a["user"]["name"].is_string())
        );
        let rooms = node["reservations"].as_array().unwrap();
        assert_eq!(
            rooms.len(),
            if edges.iter().position(|e| e == edge).unwrap() % 2 == 0 {
                1
            } else {
                0
            }
        );
    }
    let first_room = &edges[0]["node"]["reservations"][0]["resource"];
    assert_eq!(first_room["name"], w.rooms[0].name);
}

#[tokio::test]
async fn keyset_pagination_walks_every_event_once() {
    let app = TestApp::spawn().await;
    let w = world(&app, 25, 1).await;
    let q = r#"query($calendarId: ID!, $from: DateTime!, $to: DateTime!, $after: String) { calendar(id: $calendarId) {
        events(from: $from, to: $to, first: 10, after: $after) { edges { cursor node { id } }
        pageInfo { hasNextPage endCursor } } } }"#;
    let mut seen = Vec::new();
    let mut after = Value::Null;
    let mut pages = 0;
    loop {
        let mut vars = month_vars(w.calendar);
        vars["after"] = after.clone();
        let resp = app.gql(Some(w.owner.id), q, vars).await;
        let conn = &resp.data()["calendar"]["events"];
        for e in conn["edges"].as_array().unwrap() {
            seen.push(e["node"]["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if conn["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = w.events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn window_excludes_other_months_and_deleted_events() {
    let app = TestApp::spawn().await;
    let w = world(&app, 4, 1).await;
    app.store.delete_event(w.events[1].id, None).await.unwrap();
    let resp = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    let ids: Vec<&str> = resp.data()["calendar"]["events"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            w.events[0].id.to_string(),
            w.events[2].id.to_string(),
            w.events[3].id.to_string()
        ]
    );
    // The next month (December for November 2026), 30 days of it.
    let next = next_month_start();
    let next_month = window_vars(w.calendar, next, next + chrono::Duration::days(30));
    let resp = app.gql(Some(w.owner.id), MONTH_VIEW, next_month).await;
    assert_eq!(
        resp.data()["calendar"]["events"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}
