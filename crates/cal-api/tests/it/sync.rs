//! Incremental sync (`Query.changes`): a client that fetched a calendar once and then applied
//! every page of changes holds exactly what a fresh full fetch returns, at every step, with
//! writes and syncs spread over two instances whose caches never hear of each other's writes;
//! a page costs a bounded number of statements whatever its size; tokens are bound to their
//! calendar and viewer, cannot be altered, and expire (`SYNC_TOKEN_EXPIRED`) exactly when the
//! change log has lost a row they could have missed; losing access ends sync with FORBIDDEN.

use super::common::*;
use chrono::{Duration, Utc};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

const CHANGES: &str =
    "query($c: ID!, $s: String, $n: Int) { changes(calendarId: $c, since: $s, first: $n) {
    events { id deleted event { id title version startTime endTime rrule exdates recurringEventId
        originalStartTime status attendees { user { id } responseStatus isOptional } } }
    nextPageToken nextSyncToken } }";

/// A client's copy of a calendar: stored row id → the event as last heard.
type Copy = BTreeMap<String, Value>;

/// Runs a sync to its last page (full when `since` is `None`), applying every page to `copy`;
/// answers the new sync token and the statements each page cost.
async fn sync(
    app: &TestApp,
    user: UserId,
    cal: CalendarId,
    since: Option<String>,
    first: i64,
    copy: &mut Copy,
) -> (String, Vec<u64>) {
    let mut since = since;
    let mut costs = Vec::new();
    loop {
        let vars = json!({ "c": cal.to_string(), "s": since, "n": first });
        let resp = app.gql(Some(user), CHANGES, vars).await;
        costs.push(resp.sql_statements());
        let page = &resp.data()["changes"];
        let events = page["events"].as_array().unwrap();
        assert!(events.len() as i64 <= first, "{page}");
        for e in events {
            let id = e["id"].as_str().unwrap().to_owned();
            if e["deleted"] == true {
                assert!(
                    e["event"].is_null(),
                    "a deleted event shows only its id: {e}"
                );
                copy.remove(&id);
            } else {
                copy.insert(id, e["event"].clone());
            }
        }
        match (
            page["nextPageToken"].as_str(),
            page["nextSyncToken"].as_str(),
        ) {
            (Some(next), None) => since = Some(next.to_owned()),
            (None, Some(token)) => return (token.to_owned(), costs),
            _ => panic!("exactly one of the two tokens must be given: {page}"),
        }
    }
}

async fn full(app: &TestApp, user: UserId, cal: CalendarId) -> Copy {
    let mut copy = Copy::new();
    sync(app, user, cal, None, 3, &mut copy).await;
    copy
}

fn occurrence_id(series: &str, start: chrono::DateTime<Utc>) -> String {
    format!("{series}_{}", start.format("%Y%m%dT%H%M%SZ"))
}

/// One random write through `app`; answers whether it was accepted (an occurrence a split or a
/// deletion already took is refused, which is fine: `now` is the state before the step).
async fn random_write(
    app: &TestApp,
    rng: &mut rand_chacha::ChaCha8Rng,
    owner: UserId,
    cal: CalendarId,
    guests: &[User],
    now: &Copy,
    step: usize,
) -> bool {
    let singles: Vec<&Value> = now
        .values()
        .filter(|e| e["rrule"].is_null() && e["recurringEventId"].is_null())
        .collect();
    let series: Vec<&Value> = now.values().filter(|e| !e["rrule"].is_null()).collect();
    let pick =
        |v: &[&Value], rng: &mut rand_chacha::ChaCha8Rng| v[rng.random_range(0..v.len())].clone();
    let start = month_start() + Duration::hours(8 + 3 * step as i64);
    let upd = "mutation($e: ID!, $v: Int!, $in: UpdateEventInput!, $s: EditScope) {
        updateEvent(id: $e, expectedVersion: $v, input: $in, scope: $s) { id } }";
    let version = |id: &Value| {
        let id: i64 = id.as_str().unwrap().parse().unwrap();
        app.event_version(id)
    };
    let resp = match rng.random_range(0..10) {
        0 | 1 => {
            let rrule = (rng.random_range(0..2) == 0).then_some("FREQ=DAILY;COUNT=6");
            let attendees: Vec<Value> = guests
                .iter()
                .filter(|_| rng.random_range(0..2) == 0)
                .map(|g| json!({ "userId": g.id.to_string() }))
                .collect();
            let q = "mutation($in: CreateEventInput!) { createEvent(input: $in) { id } }";
            let input = json!({ "calendarId": cal.to_string(), "title": format!("Made {step}"),
                "startTime": start.to_rfc3339(), "endTime": (start + Duration::minutes(30)).to_rfc3339(),
                "timeZone": "UTC", "rrule": rrule, "attendees": attendees });
            app.gql(Some(owner), q, json!({ "in": input })).await
        }
        2 if !singles.is_empty() => {
            let e = pick(&singles, rng);
            let v = version(&e["id"]).await;
            let input = json!({ "title": format!("Edited {step}") });
            app.gql(
                Some(owner),
                upd,
                json!({ "e": e["id"], "v": v, "in": input }),
            )
            .await
        }
        3 if !singles.is_empty() => {
            let e = pick(&singles, rng);
            let q = "mutation($e: ID!) { deleteEvent(id: $e) }";
            app.gql(Some(owner), q, json!({ "e": e["id"] })).await
        }
        4 if !singles.is_empty() => {
            let e = pick(&singles, rng);
            let g = &guests[rng.random_range(0..guests.len())];
            let q = "mutation($e: ID!, $a: [AttendeeInput!]!) { addAttendees(eventId: $e, attendees: $a) { id } }";
            app.gql(
                Some(owner),
                q,
                json!({ "e": e["id"], "a": [{ "userId": g.id.to_string(), "isOptional": true }] }),
            )
            .await
        }
        5..=8 if !series.is_empty() => {
            let s = pick(&series, rng);
            let first: chrono::DateTime<Utc> = s["startTime"].as_str().unwrap().parse().unwrap();
            let k = rng.random_range(0..3);
            let occurrence = occurrence_id(s["id"].as_str().unwrap(), first + Duration::days(k));
            let v = version(&s["id"]).await;
            let master = s["id"].as_str().unwrap().to_owned();
            let (scope, target) = match rng.random_range(0..4) {
                0 => ("THIS", &occurrence),
                1 => ("THIS_AND_FOLLOWING", &occurrence),
                2 => ("ALL", &master),
                _ => {
                    // Delete one occurrence (an EXDATE, or the override's row) or the series.
                    let e = if rng.random_range(0..3) == 0 {
                        json!(master)
                    } else {
                        json!(occurrence)
                    };
                    let q =
                        "mutation($e: ID!, $v: Int) { deleteEvent(id: $e, expectedVersion: $v) }";
                    return accepted(app.gql(Some(owner), q, json!({ "e": e, "v": v })).await);
                }
            };
            let input = json!({ "title": format!("{scope} {step}") });
            let vars = json!({ "e": target, "v": v, "in": input, "s": scope });
            app.gql(Some(owner), upd, vars).await
        }
        _ => {
            // Answering an invitation: through the guest, so the viewer differs.
            let invited: Vec<&Value> = now
                .values()
                .filter(|e| e["attendees"].as_array().is_some_and(|a| !a.is_empty()))
                .collect();
            if invited.is_empty() {
                return false;
            }
            let e = pick(&invited, rng);
            let guest: i64 = e["attendees"][0]["user"]["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let q = "mutation($e: ID!) { respondToEvent(eventId: $e, response: ACCEPTED) { id } }";
            app.gql(Some(UserId::new(guest)), q, json!({ "e": e["id"] }))
                .await
        }
    };
    accepted(resp)
}

fn accepted(resp: Gql) -> bool {
    match resp.0.get("errors") {
        None => true,
        Some(_) => {
            let code = resp.code();
            assert!(
                // A target an earlier write of the same step deleted is FORBIDDEN.
                [
                    "NOT_FOUND",
                    "FORBIDDEN",
                    "BAD_USER_INPUT",
                    "VERSION_CONFLICT"
                ]
                .contains(&code),
                "{}",
                resp.0
            );
            false
        }
    }
}

#[tokio::test]
async fn a_client_applying_every_page_holds_what_a_full_fetch_returns_at_every_step() {
    let a = TestApp::spawn().await;
    // A second instance over the same database whose caches never hear of A's writes (its own
    // in-process bus), and A never of B's: only reads from the database keep sync right.
    let b = a.spawn_sibling(|_| {}, |_| {}).await;
    let owner = a.user("Olivia Owner").await;
    let cal = a.calendar(owner.id, "Synced").await;
    let mut guests = Vec::new();
    for i in 0..3 {
        guests.push(a.user(&format!("Guest {i}")).await);
    }
    let seed: u64 = std::env::var("SYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("SYNC_TEST_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let apps = [&a, &b];

    let mut copy = Copy::new();
    let (mut token, _) = sync(&b, owner.id, cal, None, 2, &mut copy).await;
    assert!(copy.is_empty());
    // Whatever the seed draws, the first sync sees a series and an override of it, each
    // written through another instance.
    let start = month_start() + Duration::hours(7);
    let series = a
        .gql(
            Some(owner.id),
            "mutation($in: CreateEventInput!) { createEvent(input: $in) { id version } }",
            json!({ "in": { "calendarId": cal.to_string(), "title": "Daily", "timeZone": "UTC",
                "startTime": start.to_rfc3339(), "endTime": (start + Duration::minutes(15)).to_rfc3339(),
                "rrule": "FREQ=DAILY;COUNT=4" } }),
        )
        .await;
    let created = &series.data()["createEvent"];
    let occurrence = occurrence_id(created["id"].as_str().unwrap(), start + Duration::days(1));
    let upd = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"Moved\" }, scope: THIS) { id } }";
    b.gql(
        Some(owner.id),
        upd,
        json!({ "e": occurrence, "v": created["version"] }),
    )
    .await
    .data();
    let mut now = Copy::new();
    let mut accepted = 0;
    let (mut seen_series, mut seen_override) = (false, false);
    for step in 0..45 {
        let writer = apps[rng.random_range(0..2)];
        for _ in 0..rng.random_range(1..3) {
            accepted +=
                random_write(writer, &mut rng, owner.id, cal, &guests, &now, step).await as usize;
        }
        // Reads through both instances, so that their caches hold what they hold.
        for app in apps {
            for id in now.keys().take(4) {
                app.gql(
                    Some(owner.id),
                    "query($e: ID!) { event(id: $e) { id title } }",
                    json!({ "e": id }),
                )
                .await;
            }
        }
        let reader = apps[rng.random_range(0..2)];
        let first = rng.random_range(1..5);
        token = sync(reader, owner.id, cal, Some(token), first, &mut copy)
            .await
            .0;
        now = full(apps[rng.random_range(0..2)], owner.id, cal).await;
        seen_series |= now.values().any(|e| !e["rrule"].is_null());
        seen_override |= now.values().any(|e| !e["recurringEventId"].is_null());
        assert_eq!(
            copy, now,
            "step {step} (seed {seed}): the synced copy differs from a full fetch"
        );
    }
    // The writes did happen, of every kind: singles, series, overrides.
    assert!(
        accepted >= 30,
        "only {accepted} writes were accepted (seed {seed})"
    );
    assert!(seen_series, "no series was ever synced (seed {seed})");
    assert!(seen_override, "no override was ever synced (seed {seed})");
}

#[tokio::test]
async fn a_sync_through_an_instance_that_has_not_heard_of_a_write_still_shows_it() {
    let a = TestApp::spawn().await;
    let b = a.spawn_sibling(|_| {}, |_| {}).await;
    let w = world(&a, 3, 1).await;
    let mut copy = Copy::new();
    let (token, _) = sync(&b, w.owner.id, w.calendar, None, 10, &mut copy).await;
    assert_eq!(copy.len(), 3);
    // B's tiers now hold the event.
    let ev = &w.events[0];
    let q = "query($e: ID!) { event(id: $e) { title } }";
    b.gql(Some(w.owner.id), q, json!({ "e": ev.id.to_string() }))
        .await
        .data();
    let upd = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"Renamed\" }) { version } }";
    let v = a.event_version(ev.id.get()).await;
    a.gql(
        Some(w.owner.id),
        upd,
        json!({ "e": ev.id.to_string(), "v": v }),
    )
    .await
    .data();
    // B never heard of it: its own reads still show the old title from its cache…
    let stale = b
        .gql(Some(w.owner.id), q, json!({ "e": ev.id.to_string() }))
        .await;
    assert_ne!(
        stale.data()["event"]["title"],
        "Renamed",
        "the test needs B's cache to be stale"
    );
    // …but a sync through B reads the database.
    let mut changes = Copy::new();
    sync(&b, w.owner.id, w.calendar, Some(token), 10, &mut changes).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[&ev.id.to_string()]["title"], "Renamed");
    assert_eq!(changes[&ev.id.to_string()]["version"], v + 1);
}

#[tokio::test]
async fn a_page_costs_the_same_few_statements_whatever_its_size() {
    let app = TestApp::spawn().await;
    let w = world(&app, 24, 3).await;
    // The key is read once per process: take that first read out of the figures.
    let mut copy = Copy::new();
    let (token, _) = sync(&app, w.owner.id, w.calendar, None, 1, &mut copy).await;
    let mut small = Copy::new();
    let (_, small_costs) = sync(&app, w.owner.id, w.calendar, None, 2, &mut small).await;
    let mut big = Copy::new();
    let (_, big_costs) = sync(&app, w.owner.id, w.calendar, None, 24, &mut big).await;
    assert_eq!(small, big);
    assert_eq!(big.len(), 24);
    // calendar, the page, events, attendees ∥ reservations, users: whatever the page holds.
    let most = *small_costs.iter().chain(&big_costs).max().unwrap();
    assert!(
        most <= 6,
        "a full-sync page cost {most} statements: {small_costs:?} {big_costs:?}"
    );
    assert_eq!(
        big_costs[0], small_costs[0],
        "{small_costs:?} {big_costs:?}"
    );

    // Every event changed: one incremental page of 24 costs what a page of 2 does.
    for e in &w.events {
        let v = app.event_version(e.id.get()).await;
        let upd = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"Changed\" }) { id } }";
        app.gql(
            Some(w.owner.id),
            upd,
            json!({ "e": e.id.to_string(), "v": v }),
        )
        .await
        .data();
    }
    let mut changed = copy.clone();
    let (_, small_costs) = sync(
        &app,
        w.owner.id,
        w.calendar,
        Some(token.clone()),
        2,
        &mut changed,
    )
    .await;
    let mut changed_big = copy.clone();
    let (_, big_costs) = sync(
        &app,
        w.owner.id,
        w.calendar,
        Some(token),
        24,
        &mut changed_big,
    )
    .await;
    assert_eq!(changed, changed_big);
    assert!(changed.values().all(|e| e["title"] == "Changed"));
    let most = *small_costs.iter().chain(&big_costs).max().unwrap();
    assert!(
        most <= 6,
        "a changes page cost {most} statements: {small_costs:?} {big_costs:?}"
    );
    assert_eq!(
        big_costs.len(),
        1,
        "24 changes fit one page of 24: {big_costs:?}"
    );
    assert_eq!(
        small_costs.len(),
        12,
        "24 changes are 12 pages of 2: {small_costs:?}"
    );
}

#[tokio::test]
async fn a_token_expires_once_the_log_lost_a_change_it_could_have_missed() {
    let app = TestApp::spawn().await;
    let w = world(&app, 2, 0).await;
    let (owner, cal) = (w.owner.id, w.calendar);
    let prune = || async {
        cal_test_support::sql::age_outbox_rows(&app.db.pool, 30).await;
        let day = std::time::Duration::from_secs(86_400);
        app.store.prune_outbox(day, 10_000).await.unwrap()
    };
    let expired = |since: String| {
        let app = &app;
        async move {
            let resp = app
                .gql(
                    Some(owner),
                    CHANGES,
                    json!({ "c": cal.to_string(), "s": since, "n": 10 }),
                )
                .await;
            assert_eq!(resp.code(), "SYNC_TOKEN_EXPIRED", "{}", resp.0);
            assert!(resp.0["data"]["changes"].is_null());
        }
    };
    let mut copy = Copy::new();
    let (old, _) = sync(&app, owner, cal, None, 10, &mut copy).await;
    rename(&app, owner, w.events[0].id, "First").await;
    assert!(prune().await > 0);
    // `old` would have missed the pruned first rename: expired, with its own code.
    expired(old).await;
    // A token taken after the prune sees what follows, in full.
    cal_test_support::sql::wait_for_older_transactions(&app.db.pool).await;
    let (after, _) = sync(&app, owner, cal, None, 10, &mut copy).await;
    assert_eq!(copy[&w.events[0].id.to_string()]["title"], "First");
    rename(&app, owner, w.events[1].id, "Second").await;
    let mut later = copy.clone();
    cal_test_support::sql::wait_for_older_transactions(&app.db.pool).await;
    let (newest, _) = sync(&app, owner, cal, Some(after.clone()), 10, &mut later).await;
    assert_eq!(later[&w.events[1].id.to_string()]["title"], "Second");
    // Pruning the second rename expires `after` too, but not `newest`, taken after it: no row
    // newer than `newest` was pruned. (A token may expire a little early: one taken while some
    // older transaction of the cluster still ran counts the rows committed after that
    // transaction began as ones it could have missed; hence the waits.)
    assert!(prune().await > 0);
    expired(after).await;
    let resp = app
        .gql(
            Some(owner),
            CHANGES,
            json!({ "c": cal.to_string(), "s": newest, "n": 10 }),
        )
        .await;
    assert!(
        resp.data()["changes"]["events"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

async fn ask(app: &TestApp, user: UserId, cal: CalendarId, since: Option<&str>) -> Gql {
    let vars = json!({ "c": cal.to_string(), "s": since, "n": 10 });
    app.gql(Some(user), CHANGES, vars).await
}

#[tokio::test]
async fn tokens_are_bound_to_their_calendar_and_viewer_and_access_is_checked_each_time() {
    let app = TestApp::spawn().await;
    let other_app = app.spawn_sibling(|_| {}, |_| {}).await;
    let w = world(&app, 2, 0).await;
    let (owner, cal) = (w.owner.id, w.calendar);
    let reader = app.user("Rita Reader").await;
    let busy = app.user("Fred Freebusy").await;
    let other_cal = app.calendar(owner, "Other").await;
    app.store
        .share_calendar(cal, reader.id, Role::Reader)
        .await
        .unwrap();
    app.store
        .share_calendar(cal, busy.id, Role::FreeBusy)
        .await
        .unwrap();
    let mut copy = Copy::new();
    let (token, _) = sync(&app, reader.id, cal, None, 10, &mut copy).await;
    assert_eq!(copy.len(), 2);
    // Another viewer, another calendar, an altered or made-up token: BAD_USER_INPUT.
    assert_eq!(
        ask(&app, owner, cal, Some(&token)).await.code(),
        "BAD_USER_INPUT"
    );
    app.store
        .share_calendar(other_cal, reader.id, Role::Reader)
        .await
        .unwrap();
    assert_eq!(
        ask(&app, reader.id, other_cal, Some(&token)).await.code(),
        "BAD_USER_INPUT"
    );
    let mut altered = token.clone().into_bytes();
    altered[5] = if altered[5] == b'x' { b'y' } else { b'x' };
    let altered = String::from_utf8(altered).unwrap();
    assert_eq!(
        ask(&app, reader.id, cal, Some(&altered)).await.code(),
        "BAD_USER_INPUT"
    );
    for junk in ["", "not-a-token", "a.b", &"x".repeat(100_000)] {
        assert_eq!(
            ask(&app, reader.id, cal, Some(junk)).await.code(),
            "BAD_USER_INPUT",
            "{junk:.20}"
        );
    }
    let vars = json!({ "c": cal.to_string(), "n": 0 });
    assert_eq!(
        app.gql(Some(reader.id), CHANGES, vars).await.code(),
        "BAD_USER_INPUT"
    );
    // Free/busy sees no details, a stranger nothing, anonymous is not signed in.
    assert_eq!(ask(&app, busy.id, cal, None).await.code(), "FORBIDDEN");
    let stranger = app.user("Sam Stranger").await;
    assert_eq!(ask(&app, stranger.id, cal, None).await.code(), "FORBIDDEN");
    let anon = app
        .gql(None, CHANGES, json!({ "c": cal.to_string(), "n": 10 }))
        .await;
    assert_eq!(anon.code(), "UNAUTHENTICATED", "{}", anon.0);
    // The token still works for its viewer, through any instance…
    assert!(
        ask(&other_app, reader.id, cal, Some(&token)).await.data()["changes"]["nextSyncToken"]
            .is_string()
    );
    // …until the viewer loses access: then FORBIDDEN at once, even through an instance whose
    // cache has not heard of it.
    unshare(&app, owner, cal, reader.id).await;
    assert_eq!(
        ask(&other_app, reader.id, cal, Some(&token)).await.code(),
        "FORBIDDEN"
    );
}
