//! Recurring events through the API: expansion in the month view (in the event's zone, across
//! DST), instance ids, overrides, EXDATE deletion, splits, whole-series edits, bookings per
//! occurrence, and the statement count of a recurring-heavy month view.

use crate::common::*;
use cal_test_support::dates::{at, compact, first_weekday, iso, next_month_start, rfc};
use cal_test_support::sql;

struct Setup {
    app: TestApp,
    owner: User,
    cal: CalendarId,
}

async fn setup() -> Setup {
    let app = TestApp::spawn().await;
    let owner = app.user("Rhea Recurring").await;
    let cal = app.calendar(owner.id, "Series").await;
    Setup { app, owner, cal }
}

impl Setup {
    async fn create(&self, extra: Value) -> Gql {
        let mut input = json!({ "calendarId": self.cal.to_string(), "title": "Standup" });
        for (k, v) in extra.as_object().unwrap() {
            input[k] = v.clone();
        }
        let q = "mutation($in: CreateEventInput!) { createEvent(input: $in) { id version rrule startTime } }";
        self.app
            .gql(Some(self.owner.id), q, json!({ "in": input }))
            .await
    }

    /// (id, startTime, title) of every event in the window, walking all pages.
    async fn window(
        &self,
        from: &str,
        to: &str,
        tz: Option<&str>,
    ) -> Vec<(String, String, String)> {
        let q = r#"query($c: ID!, $f: DateTime!, $t: DateTime!, $tz: String, $a: String) { calendar(id: $c) {
            events(from: $f, to: $t, first: 7, after: $a, timeZone: $tz) { edges { node { id startTime title } }
            pageInfo { hasNextPage endCursor } } } }"#;
        let mut out = Vec::new();
        let mut after = Value::Null;
        loop {
            let vars =
                json!({ "c": self.cal.to_string(), "f": from, "t": to, "tz": tz, "a": after });
            let resp = self.app.gql(Some(self.owner.id), q, vars).await;
            let conn = &resp.data()["calendar"]["events"];
            for e in conn["edges"].as_array().unwrap() {
                let n = &e["node"];
                out.push((
                    n["id"].as_str().unwrap().into(),
                    n["startTime"].as_str().unwrap().into(),
                    n["title"].as_str().unwrap().into(),
                ));
            }
            if conn["pageInfo"]["hasNextPage"] == false {
                return out;
            }
            after = conn["pageInfo"]["endCursor"].clone();
        }
    }
}

fn starts(w: &[(String, String, String)]) -> Vec<&str> {
    w.iter().map(|(_, s, _)| s.as_str()).collect()
}

#[tokio::test]
async fn weekly_meeting_stays_at_nine_local_across_dst_in_two_zones() {
    // The dates are the point here, not the anchor month: they stay literal because they sit on
    // the real 2026 DST transitions of Europe/Berlin (03-29, 10-25) and America/New_York (03-08).
    let s = setup().await;
    // Mondays 09:00 Europe/Berlin from 2026-03-16 (CET, 08:00Z); DST starts 2026-03-29.
    s.create(
        json!({ "startTime": "2026-03-16T08:00:00Z", "endTime": "2026-03-16T09:00:00Z",
        "timeZone": "Europe/Berlin", "rrule": "FREQ=WEEKLY;BYDAY=MO" }),
    )
    .await
    .data();
    let w = s
        .window("2026-03-15T00:00:00Z", "2026-04-14T00:00:00Z", None)
        .await;
    assert_eq!(
        starts(&w),
        vec![
            "2026-03-16T08:00:00+00:00",
            "2026-03-23T08:00:00+00:00",
            "2026-03-30T07:00:00+00:00",
            "2026-04-06T07:00:00+00:00",
            "2026-04-13T07:00:00+00:00"
        ]
    );
    let local = s
        .window(
            "2026-03-15T00:00:00Z",
            "2026-04-14T00:00:00Z",
            Some("Europe/Berlin"),
        )
        .await;
    assert!(
        starts(&local).iter().all(|t| t.contains("T09:00:00+0")),
        "{local:?}"
    );
    // Fall back on 2026-10-25: back to 08:00Z.
    let w = s
        .window("2026-10-18T00:00:00Z", "2026-11-03T00:00:00Z", None)
        .await;
    assert_eq!(
        starts(&w),
        vec![
            "2026-10-19T07:00:00+00:00",
            "2026-10-26T08:00:00+00:00",
            "2026-11-02T08:00:00+00:00"
        ]
    );

    // America/New_York: DST 2026-03-08 → 2026-11-01. 09:00 local = 14:00Z in winter, 13:00Z in summer.
    s.create(json!({ "title": "NY", "startTime": "2026-03-02T14:00:00Z", "endTime": "2026-03-02T14:30:00Z",
        "timeZone": "America/New_York", "rrule": "FREQ=WEEKLY;COUNT=3" })).await.data();
    let w = s
        .window("2026-03-01T00:00:00Z", "2026-03-31T00:00:00Z", None)
        .await;
    let ny: Vec<&str> = w
        .iter()
        .filter(|(_, _, t)| t == "NY")
        .map(|(_, s, _)| s.as_str())
        .collect();
    assert_eq!(
        ny,
        vec![
            "2026-03-02T14:00:00+00:00",
            "2026-03-09T13:00:00+00:00",
            "2026-03-16T13:00:00+00:00"
        ]
    );
}

#[tokio::test]
async fn an_occurrence_in_the_skipped_hour_moves_forward_by_the_gap() {
    let s = setup().await;
    // Daily 02:30 Europe/Berlin; 02:30 does not exist on 2026-03-29 and happens at 03:30 CEST.
    s.create(
        json!({ "startTime": "2026-03-28T01:30:00Z", "endTime": "2026-03-28T01:45:00Z",
        "timeZone": "Europe/Berlin", "rrule": "FREQ=DAILY;COUNT=3" }),
    )
    .await
    .data();
    let w = s
        .window(
            "2026-03-27T00:00:00Z",
            "2026-04-01T00:00:00Z",
            Some("Europe/Berlin"),
        )
        .await;
    assert_eq!(
        starts(&w),
        vec![
            "2026-03-28T02:30:00+01:00",
            "2026-03-29T03:30:00+02:00",
            "2026-03-30T02:30:00+02:00"
        ]
    );
}

#[tokio::test]
async fn instances_have_stable_ids_usable_with_event() {
    let s = setup().await;
    let created = s
        .create(
            json!({ "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 9, 15)),
        "timeZone": "UTC", "rrule": "FREQ=DAILY;INTERVAL=2" }),
        )
        .await;
    let series = created.data()["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let w = s
        .window(&iso(month_start()), &iso(at(10, 0, 0)), None)
        .await;
    let ids: Vec<&str> = w.iter().map(|(i, _, _)| i.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            format!("{series}_{}", compact(at(2, 9, 0))),
            format!("{series}_{}", compact(at(4, 9, 0))),
            format!("{series}_{}", compact(at(6, 9, 0))),
            format!("{series}_{}", compact(at(8, 9, 0)))
        ]
    );
    let q = "query($e: ID!) { event(id: $e) { id startTime recurringEventId originalStartTime isRecurring } }";
    let resp = s.app.gql(Some(s.owner.id), q, json!({ "e": ids[1] })).await;
    let ev = &resp.data()["event"];
    assert_eq!(ev["id"], ids[1]);
    assert_eq!(ev["recurringEventId"], series);
    assert_eq!(ev["originalStartTime"], rfc(at(4, 9, 0)));
    // An instant the rule does not produce is not an occurrence.
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            q,
            json!({ "e": format!("{series}_{}", compact(at(3, 9, 0))) }),
        )
        .await;
    assert_eq!(resp.code(), "NOT_FOUND");
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            q,
            json!({ "e": format!("{series}_garbage") }),
        )
        .await;
    assert_eq!(resp.code(), "BAD_USER_INPUT");
}

#[tokio::test]
async fn editing_this_this_and_following_and_all() {
    let s = setup().await;
    let created = s
        .create(
            json!({ "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 10, 0)),
        "timeZone": "UTC", "rrule": "FREQ=DAILY;COUNT=6" }),
        )
        .await;
    let series = created.data()["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = created.data()["createEvent"]["version"].as_i64().unwrap();
    let upd = "mutation($e: ID!, $v: Int!, $in: UpdateEventInput!, $s: EditScope) { updateEvent(id: $e, expectedVersion: $v, input: $in, scope: $s) { id version title startTime } }";
    let inst = |day: u32| format!("{series}_{}", compact(at(day, 9, 0)));

    // THIS: the 3rd occurrence moves to 15:00 and is renamed; it keeps its id.
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            upd,
            json!({ "e": inst(4), "v": version,
        "in": { "title": "Moved", "startTime": iso(at(4, 15, 0)), "endTime": iso(at(4, 16, 0)) } }),
        )
        .await;
    assert_eq!(resp.data()["updateEvent"]["id"], inst(4));
    assert_eq!(resp.data()["updateEvent"]["startTime"], rfc(at(4, 15, 0)));
    // The series' version moved on: the old one is stale now.
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            upd,
            json!({ "e": inst(5), "v": version, "in": { "title": "x" } }),
        )
        .await;
    assert_eq!(resp.code(), "VERSION_CONFLICT");
    let version = resp.0["errors"][0]["extensions"]["currentVersion"]
        .as_i64()
        .unwrap();

    let w = s
        .window(&iso(month_start()), &iso(at(10, 0, 0)), None)
        .await;
    let titles: Vec<(String, &str)> = w
        .iter()
        .map(|(_, st, t)| (st.clone(), t.as_str()))
        .collect();
    assert_eq!(
        titles,
        vec![
            (rfc(at(2, 9, 0)), "Standup"),
            (rfc(at(3, 9, 0)), "Standup"),
            (rfc(at(4, 15, 0)), "Moved"),
            (rfc(at(5, 9, 0)), "Standup"),
            (rfc(at(6, 9, 0)), "Standup"),
            (rfc(at(7, 9, 0)), "Standup")
        ]
    );

    // THIS_AND_FOLLOWING from the 5th: renamed from there on; the count is preserved (6 in all).
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            upd,
            json!({ "e": inst(6), "v": version, "s": "THIS_AND_FOLLOWING",
        "in": { "title": "Later" } }),
        )
        .await;
    resp.data();
    let w = s
        .window(&iso(month_start()), &iso(at(10, 0, 0)), None)
        .await;
    let titles: Vec<&str> = w.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(
        titles,
        vec!["Standup", "Standup", "Moved", "Standup", "Later", "Later"]
    );

    // ALL, through the first series: renamed everywhere except the override, which keeps its own title.
    let v: i64 = s.app.event_version(series.parse::<i64>().unwrap()).await;
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            upd,
            json!({ "e": series, "v": v, "in": { "title": "Daily" } }),
        )
        .await;
    resp.data();
    let w = s
        .window(&iso(month_start()), &iso(at(10, 0, 0)), None)
        .await;
    let titles: Vec<&str> = w.iter().map(|(_, _, t)| t.as_str()).collect();
    assert_eq!(
        titles,
        vec!["Daily", "Daily", "Moved", "Daily", "Later", "Later"]
    );
}

#[tokio::test]
async fn deleting_one_occurrence_adds_an_exdate() {
    let s = setup().await;
    let created = s
        .create(
            json!({ "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 10, 0)),
        "timeZone": "UTC", "rrule": "FREQ=DAILY;COUNT=4" }),
        )
        .await;
    let series = created.data()["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let inst = format!("{series}_{}", compact(at(3, 9, 0)));
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            "mutation($e: ID!) { deleteEvent(id: $e) }",
            json!({ "e": inst }),
        )
        .await;
    assert_eq!(resp.data()["deleteEvent"], true);
    let w = s
        .window(&iso(month_start()), &iso(at(10, 0, 0)), None)
        .await;
    assert_eq!(
        starts(&w),
        vec![rfc(at(2, 9, 0)), rfc(at(4, 9, 0)), rfc(at(5, 9, 0))]
    );
    let exdates = sql::exdates(&s.app.db.pool, series.parse::<i64>().unwrap()).await;
    assert_eq!(exdates.len(), 1);
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            "query($e: ID!) { event(id: $e) { id } }",
            json!({ "e": inst }),
        )
        .await;
    assert_eq!(resp.code(), "NOT_FOUND");
    // Deleting the series removes every occurrence.
    s.app
        .gql(
            Some(s.owner.id),
            "mutation($e: ID!) { deleteEvent(id: $e) }",
            json!({ "e": series }),
        )
        .await
        .data();
    assert!(
        s.window(&iso(month_start()), &iso(at(10, 0, 0)), None)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn booking_a_room_for_a_series_books_every_occurrence_or_nothing() {
    let s = setup().await;
    let room = s
        .app
        .store
        .create_resource("Atrium", ResourceKind::Room, Some(10), None)
        .await
        .unwrap();
    // Someone holds the room on the day of the weekly series' third occurrence (the 18th).
    s.create(
        json!({ "title": "Blocker", "startTime": iso(at(18, 9, 30)), "endTime": iso(at(18, 10, 0)),
        "reservations": [{ "resourceId": room.id.to_string() }] }),
    )
    .await
    .data();
    let weekly = json!({ "title": "Weekly", "startTime": iso(at(4, 9, 0)), "endTime": iso(at(4, 10, 0)),
        "timeZone": "UTC", "rrule": "FREQ=WEEKLY;COUNT=5", "reservations": [{ "resourceId": room.id.to_string() }] });
    let resp = s.create(weekly.clone()).await;
    assert_eq!(resp.code(), "RESOURCE_CONFLICT");
    let conflicts = resp.0["errors"][0]["extensions"]["conflicts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0]["startTime"], rfc(at(18, 9, 30)));
    let events = sql::event_rows(&s.app.db.pool).await;
    assert_eq!(events, 1, "nothing of the failed series was written");

    // Without the blocker, all five occurrences are booked.
    let mut free = weekly.clone();
    free["startTime"] = json!(iso(at(4, 11, 0)));
    free["endTime"] = json!(iso(at(4, 12, 0)));
    s.create(free).await.data();
    let booked = sql::confirmed_reservation_rows_of(&s.app.db.pool, room.id.get()).await;
    assert_eq!(booked, 1 + 5);
    // Each occurrence shows its own booking (the fifth is early in the next month).
    let q = r#"query($c: ID!, $f: DateTime!, $t: DateTime!) { calendar(id: $c) { events(from: $f, to: $t) {
        edges { node { title startTime reservations { startTime resource { name } } } } } } }"#;
    let to = next_month_start() + chrono::Duration::days(9);
    let vars = json!({ "c": s.cal.to_string(), "f": iso(month_start()), "t": iso(to) });
    let resp = s.app.gql(Some(s.owner.id), q, vars).await;
    for e in resp.data()["calendar"]["events"]["edges"]
        .as_array()
        .unwrap()
    {
        let n = &e["node"];
        assert_eq!(n["reservations"].as_array().unwrap().len(), 1, "{n}");
        assert_eq!(n["reservations"][0]["startTime"], n["startTime"]);
    }
}

#[tokio::test]
async fn recurring_heavy_month_view_takes_at_most_5_statements() {
    let s = setup().await;
    let people: Vec<User> = {
        let mut v = Vec::new();
        for i in 0..6 {
            v.push(s.app.user(&format!("Att {i}")).await);
        }
        v
    };
    let attendees: Vec<Value> = people
        .iter()
        .map(|u| json!({ "userId": u.id.to_string() }))
        .collect();
    // Nine series from the Monday four weeks before the anchor month's first Monday (2026-10-05
    // for November 2026), the rule's first day: any month holds 12 to 14 occurrences of each, so
    // with the single event they fill more than a page.
    let monday = at(first_weekday(chrono::Weekday::Mon), 0, 0) - chrono::Duration::weeks(4);
    for i in 0..9 {
        let start = monday + chrono::Duration::hours(i + 1);
        s.create(json!({
            "title": format!("Series {i}"),
            "startTime": iso(start),
            "endTime": iso(start + chrono::Duration::minutes(30)),
            "timeZone": "Europe/Berlin",
            "rrule": "FREQ=WEEKLY;BYDAY=MO,WE,FR",
            "attendees": attendees
        }))
        .await
        .data();
    }
    s.create(json!({ "title": "Single", "startTime": iso(at(10, 12, 0)), "endTime": iso(at(10, 13, 0)), "attendees": attendees })).await.data();
    let resp = s
        .app
        .gql(Some(s.owner.id), MONTH_VIEW, month_vars(s.cal))
        .await;
    let edges = resp.data()["calendar"]["events"]["edges"]
        .as_array()
        .unwrap();
    assert_eq!(
        edges.len(),
        100,
        "9 series × at least 12 occurrences in the month + 1 single, first page of 100"
    );
    assert_eq!(
        resp.data()["calendar"]["events"]["pageInfo"]["hasNextPage"],
        true
    );
    assert!(
        edges
            .iter()
            .all(|e| e["node"]["attendees"].as_array().unwrap().len() == 6)
    );
    assert!(
        resp.sql_statements() <= 5,
        "took {} statements",
        resp.sql_statements()
    );
}

#[tokio::test]
async fn bad_rules_and_zones_are_bad_user_input() {
    let s = setup().await;
    let monday = at(first_weekday(chrono::Weekday::Mon), 9, 0);
    let (start, end) = (iso(monday), iso(monday + chrono::Duration::hours(1)));
    for rule in [
        "FREQ=SECONDLY",
        "nonsense",
        "FREQ=WEEKLY;BYDAY=TU", /* Monday start */
    ] {
        let resp = s
            .create(json!({ "startTime": start, "endTime": end, "rrule": rule }))
            .await;
        assert_eq!(resp.code(), "BAD_USER_INPUT", "{rule}: {}", resp.0);
    }
    let q = r#"query($c: ID!, $f: DateTime!, $t: DateTime!) { calendar(id: $c) { events(from: $f, to: $t, timeZone: "Moon/Base") { edges { cursor } } } }"#;
    let vars = json!({ "c": s.cal.to_string(), "f": iso(month_start()), "t": iso(at(2, 0, 0)) });
    assert_eq!(
        s.app.gql(Some(s.owner.id), q, vars).await.code(),
        "BAD_USER_INPUT"
    );
}

#[tokio::test]
async fn all_day_events_stay_on_their_date() {
    let s = setup().await;
    let bad = s.create(json!({ "title": "Bad", "allDay": true, "startTime": "2026-03-29T05:00:00Z", "endTime": "2026-03-30T00:00:00Z" })).await;
    assert_eq!(bad.code(), "BAD_USER_INPUT");
    s.create(json!({ "title": "Birthday", "allDay": true, "startTime": "2026-03-29T00:00:00Z", "endTime": "2026-03-30T00:00:00Z",
        "rrule": "FREQ=YEARLY" })).await.data();
    let q = r#"query($c: ID!, $f: DateTime!, $t: DateTime!) { calendar(id: $c) { events(from: $f, to: $t, timeZone: "America/Los_Angeles") {
        edges { node { startDate endDate startTime } } } } }"#;
    for (year, from, to) in [
        (2027, "2027-03-01T00:00:00Z", "2027-04-15T00:00:00Z"),
        (2030, "2030-03-01T00:00:00Z", "2030-04-15T00:00:00Z"),
    ] {
        let resp = s
            .app
            .gql(
                Some(s.owner.id),
                q,
                json!({ "c": s.cal.to_string(), "f": from, "t": to }),
            )
            .await;
        let n = &resp.data()["calendar"]["events"]["edges"][0]["node"];
        assert_eq!(n["startDate"], format!("{year}-03-29"));
        assert_eq!(n["endDate"], format!("{year}-03-30"));
        assert_eq!(
            n["startTime"],
            format!("{year}-03-29T00:00:00+00:00"),
            "not shifted into the zone"
        );
    }
}

#[tokio::test]
async fn reserving_for_a_series_or_one_occurrence() {
    let s = setup().await;
    let room = s
        .app
        .store
        .create_resource("Studio", ResourceKind::Room, Some(6), None)
        .await
        .unwrap();
    let created = s
        .create(
            json!({ "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 10, 0)),
            "timeZone": "UTC", "rrule": "FREQ=DAILY;COUNT=4" }),
        )
        .await;
    let series = created.data()["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reserve = "mutation($e: ID!, $r: ID!) { reserveResource(eventId: $e, resourceId: $r) { startTime status } }";
    // One occurrence only.
    let one = s
        .app
        .gql(
            Some(s.owner.id),
            reserve,
            json!({ "e": format!("{series}_{}", compact(at(3, 9, 0))), "r": room.id.to_string() }),
        )
        .await;
    assert_eq!(one.data()["reserveResource"]["startTime"], rfc(at(3, 9, 0)));
    // The whole series now collides with that booking on the 3rd: all or nothing.
    let all = s
        .app
        .gql(
            Some(s.owner.id),
            reserve,
            json!({ "e": series, "r": room.id.to_string() }),
        )
        .await;
    assert_eq!(all.code(), "RESOURCE_CONFLICT");
    let booked = sql::confirmed_reservation_rows(&s.app.db.pool).await;
    assert_eq!(booked, 1);
    // A second room takes every occurrence.
    let other = s
        .app
        .store
        .create_resource("Annex", ResourceKind::Room, None, None)
        .await
        .unwrap();
    let all = s
        .app
        .gql(
            Some(s.owner.id),
            reserve,
            json!({ "e": series, "r": other.id.to_string() }),
        )
        .await;
    assert_eq!(all.data()["reserveResource"]["startTime"], rfc(at(2, 9, 0)));
    let booked = sql::reservation_rows_of(&s.app.db.pool, other.id.get()).await;
    assert_eq!(booked, 4);
}

/// Two writers delete the same override holding the same `expectedVersion`, from separate
/// connections, both past any check the API could make on a (cached) row before either reaches
/// the database: the database decides, exactly one succeeds and the other gets VERSION_CONFLICT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deletes_of_one_override_let_exactly_one_win() {
    let s = setup().await;
    let created = s
        .create(
            json!({ "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 10, 0)),
            "rrule": "FREQ=DAILY;COUNT=5" }),
        )
        .await;
    let series = created.data()["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = created.data()["createEvent"]["version"].as_i64().unwrap();
    let occurrence = format!("{series}_{}", compact(at(3, 9, 0)));
    let upd = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"Own\" }, scope: THIS) { id version } }";
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            upd,
            json!({ "e": occurrence, "v": version }),
        )
        .await;
    let override_version = resp.data()["updateEvent"]["version"].as_i64().unwrap();
    let override_id = sql::live_override_of(&s.app.db.pool, series.parse::<i64>().unwrap()).await;
    // Both writers read the override (warming the cache) before either deletes.
    let read = "query($e: ID!) { event(id: $e) { version } }";
    let r = s
        .app
        .gql(Some(s.owner.id), read, json!({ "e": occurrence }))
        .await;
    assert_eq!(r.data()["event"]["version"], override_version);

    // Hold the series row, so both deletes get past the API and queue in the database.
    let blocker = sql::lock_event_row(&s.app.db.pool, series.parse::<i64>().unwrap()).await;
    let del = "mutation($e: ID!, $v: Int) { deleteEvent(id: $e, expectedVersion: $v) }";
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (app, owner, occurrence) = (s.app.client.clone(), s.owner.id, occurrence.clone());
            let url = s.app.url("/graphql");
            let token = s.app.token(owner);
            tokio::spawn(async move {
                app.post(url)
                    .bearer_auth(token)
                    .json(&json!({ "query": del, "variables": { "e": occurrence, "v": override_version } }))
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Both wait on a row lock (the series row, or the override row the other one holds).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting = sql::lock_waiters(&s.app.db.pool).await;
        if waiting >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "both deletes should be waiting on a row lock, {waiting} are"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    blocker.rollback().await.unwrap();
    let mut answers = Vec::new();
    for w in writers {
        answers.push(w.await.unwrap());
    }
    let wins = answers
        .iter()
        .filter(|a| a["data"]["deleteEvent"] == true)
        .count();
    let conflicts: Vec<&Value> = answers
        .iter()
        .filter(|a| a["errors"][0]["extensions"]["code"] == "VERSION_CONFLICT")
        .collect();
    assert_eq!(wins, 1, "exactly one delete wins: {answers:?}");
    assert_eq!(conflicts.len(), 1, "the other conflicts: {answers:?}");
    let deleted = sql::event_is_deleted(&s.app.db.pool, override_id).await;
    assert!(deleted);
}

#[tokio::test]
async fn deleting_an_override_at_a_version_it_no_longer_has_is_a_conflict() {
    let s = setup().await;
    let created = s
        .create(
            json!({ "startTime": iso(at(2, 9, 0)), "endTime": iso(at(2, 10, 0)),
            "rrule": "FREQ=DAILY;COUNT=5" }),
        )
        .await;
    let series = created.data()["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = created.data()["createEvent"]["version"].as_i64().unwrap();
    let occurrence = format!("{series}_{}", compact(at(3, 9, 0)));
    let upd = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"Own\" }, scope: THIS) { id version } }";
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            upd,
            json!({ "e": occurrence, "v": version }),
        )
        .await;
    let override_version = resp.data()["updateEvent"]["version"].as_i64().unwrap();
    // The override moves on in the database behind the caches' back (another writer whose
    // invalidation this instance has not heard): only the database knows its version now.
    sql::bump_live_override_versions(&s.app.db.pool, series.parse::<i64>().unwrap()).await;
    let del = "mutation($e: ID!, $v: Int) { deleteEvent(id: $e, expectedVersion: $v) }";
    let resp = s
        .app
        .gql(
            Some(s.owner.id),
            del,
            json!({ "e": occurrence, "v": override_version }),
        )
        .await;
    assert_eq!(resp.code(), "VERSION_CONFLICT", "{}", resp.0);
}
