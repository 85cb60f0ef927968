//! The cache tiers behind the API: a warm month view costs no SQL, the cold path keeps its
//! statement count, a write is never followed by a read of the old data on the same instance,
//! concurrent misses share one load, and a warm cache never leaks to a non-member.

use crate::common::*;
use cal_test_support::dates::{self, at, iso, next_month_start, rfc, window_vars};
use cal_test_support::metric_sum;
use std::sync::Arc;

#[tokio::test]
async fn warm_month_view_issues_no_sql_and_cold_path_is_unchanged() {
    let app = TestApp::spawn().await;
    let w = world(&app, 40, 6).await;
    let warm = cold_then_warm(&app, &w).await;
    assert!(warm.0["extensions"]["stats"]["l1Hits"].as_u64().unwrap() > 0);

    // A second instance sharing Redis (fresh L1) is served by L2, still without SQL.
    let prefix = format!("test:{}:", app.db.name);
    let registry = prometheus::Registry::new();
    let cache = cal_cache::TieredCache::new(
        cal_cache::CacheConfig {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            key_prefix: prefix,
            ..Default::default()
        },
        &registry,
    )
    .await
    .unwrap();
    let other = Arc::new(cal_api::tiers::Tiers::with_bus(
        cache,
        Arc::new(cal_cache::InProcessBus::default()),
        "b",
    ));
    let state = cal_api::AppState::new(
        app.store.clone(),
        (*app.config).clone(),
        other.clone(),
        registry,
    );
    let _sync = other
        .sync
        .start(state.store.clone(), std::future::pending());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, cal_api::router(state)).await.unwrap() });
    let body = json!({ "query": MONTH_VIEW, "variables": month_vars(w.calendar) });
    let resp: Value = app
        .client
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(app.token(w.owner.id))
        .header("x-debug-stats", "1")
        .header("x-admin-token", cal_test_support::TEST_ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["data"], *warm.data());
    assert_eq!(resp["extensions"]["stats"]["sqlStatements"], 0);
    // Served from Redis: whole (the shared response tier) or key by key.
    assert!(
        resp["extensions"]["stats"]["responseCacheHit"] == true
            || resp["extensions"]["stats"]["l2Hits"].as_u64().unwrap() > 0,
        "{}",
        resp["extensions"]
    );

    // With both tiers switched off every request is the cold path.
    let off = TestApp::spawn_full(
        |_| {},
        |c| {
            c.l1_enabled = false;
            c.l2_enabled = false;
        },
    )
    .await;
    let w2 = world(&off, 40, 6).await;
    for _ in 0..2 {
        let r = off
            .gql(Some(w2.owner.id), MONTH_VIEW, month_vars(w2.calendar))
            .await;
        assert!(
            r.sql_statements() >= 4 && r.sql_statements() <= 5,
            "{}",
            r.sql_statements()
        );
    }
}

#[tokio::test]
async fn writes_are_visible_to_the_next_read_on_the_same_instance() {
    let app = TestApp::spawn().await;
    let w = world(&app, 5, 2).await;
    let q = "query($e: ID!) { event(id: $e) { title version attendees { user { id } } } }";
    let upd = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { version } }";
    let ev = w.events[0].id.to_string();
    let mut version = w.events[0].version;
    for i in 0..20 {
        // Warm both the event and the month view, then write, then read.
        app.gql(Some(w.owner.id), q, json!({ "e": ev }))
            .await
            .data();
        app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
            .await
            .data();
        let title = format!("Title {i}");
        let r = app
            .gql(
                Some(w.owner.id),
                upd,
                json!({ "e": ev, "v": version, "t": title }),
            )
            .await;
        version = r.data()["updateEvent"]["version"].as_i64().unwrap();
        let read = app.gql(Some(w.owner.id), q, json!({ "e": ev })).await;
        assert_eq!(read.data()["event"]["title"], title);
        assert_eq!(read.data()["event"]["version"], version);
        let month = app
            .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
            .await;
        let first = &month.data()["calendar"]["events"]["edges"][0]["node"];
        assert_eq!(first["title"], title, "month view after write {i}");
    }
    // Attendee changes too.
    let add = "mutation($e: ID!, $u: ID!) { addAttendees(eventId: $e, attendees: [{ userId: $u }]) { version } }";
    app.gql(
        Some(w.owner.id),
        add,
        json!({ "e": ev, "u": w.users[5].id.to_string() }),
    )
    .await
    .data();
    let read = app.gql(Some(w.owner.id), q, json!({ "e": ev })).await;
    assert_eq!(
        read.data()["event"]["attendees"].as_array().unwrap().len(),
        3
    );
    // Sharing changes access at once, even with a warm calendar summary.
    let stranger = app.user("Later Member").await;
    let cal_q = "query($c: ID!) { calendar(id: $c) { name } }";
    assert_eq!(
        app.gql(
            Some(stranger.id),
            cal_q,
            json!({ "c": w.calendar.to_string() })
        )
        .await
        .code(),
        "FORBIDDEN"
    );
    let share = "mutation($c: ID!, $u: ID!) { shareCalendar(calendarId: $c, userId: $u, role: READER) { id } }";
    app.gql(
        Some(w.owner.id),
        share,
        json!({ "c": w.calendar.to_string(), "u": stranger.id.to_string() }),
    )
    .await
    .data();
    app.gql(
        Some(stranger.id),
        cal_q,
        json!({ "c": w.calendar.to_string() }),
    )
    .await
    .data();
    let unshare = "mutation($c: ID!, $u: ID!) { unshareCalendar(calendarId: $c, userId: $u) }";
    app.gql(
        Some(w.owner.id),
        unshare,
        json!({ "c": w.calendar.to_string(), "u": stranger.id.to_string() }),
    )
    .await
    .data();
    assert_eq!(
        app.gql(
            Some(stranger.id),
            cal_q,
            json!({ "c": w.calendar.to_string() })
        )
        .await
        .code(),
        "FORBIDDEN"
    );
}

#[tokio::test]
async fn a_warm_cache_never_leaks_to_non_members() {
    let app = TestApp::spawn().await;
    let w = world(&app, 3, 2).await;
    let stranger = app.user("Nosy").await;
    // The owner warms everything.
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    let ev = w.events[0].id.to_string();
    app.gql(
        Some(w.owner.id),
        "query($e: ID!) { event(id: $e) { title } }",
        json!({ "e": ev }),
    )
    .await
    .data();
    let q = "query($c: ID!, $e: ID!) { calendar(id: $c) { name } event(id: $e) { title } a: event(id: $e) { id } b: calendar(id: $c) { id } }";
    let resp = app
        .gql(
            Some(stranger.id),
            q,
            json!({ "c": w.calendar.to_string(), "e": ev }),
        )
        .await;
    assert_eq!(resp.codes(), vec!["FORBIDDEN"; 4]);
    let text = resp.0["data"].to_string();
    assert!(
        !text.contains("Team") && !text.contains("Event 0"),
        "{text}"
    );
    // Counted by the store itself: a denied answer carries no figures of its own.
    let before = app.store.stats().statements();
    let resp = app
        .gql(Some(stranger.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(resp.code(), "FORBIDDEN");
    assert!(resp.0["extensions"]["stats"].is_null(), "{}", resp.0);
    assert_eq!(
        app.store.stats().statements() - before,
        0,
        "served from the warm cache, and still refused"
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_load_per_key() {
    let app = Arc::new(TestApp::spawn().await);
    let w = world(&app, 30, 5).await;
    // Warm, then invalidate the calendar's entries with a write.
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    let upd = "mutation($e: ID!, $v: Int!) { updateEvent(id: $e, expectedVersion: $v, input: { title: \"fresh\" }) { id } }";
    app.gql(
        Some(w.owner.id),
        upd,
        json!({ "e": w.events[0].id.to_string(), "v": w.events[0].version }),
    )
    .await
    .data();
    let coalesced_before = app
        .metric("cal_cache_coalesced_total", &[("tier", "db")])
        .await;
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let app = app.clone();
        let owner = w.owner.id;
        let cal = w.calendar;
        tasks.push(tokio::spawn(async move {
            app.gql(Some(owner), MONTH_VIEW, month_vars(cal)).await
        }));
    }
    let (mut loaded, mut statements, mut coalesced) = (0, 0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            r.data()["calendar"]["events"]["edges"][0]["node"]["title"],
            "fresh"
        );
        let stats = &r.0["extensions"]["stats"];
        loaded += stats["cacheLoaded"].as_u64().unwrap();
        coalesced += stats["cacheCoalesced"].as_u64().unwrap();
        // Each request's own count (a shared load counts for the request that ran it); the
        // process-wide figure also holds the relay's background statements.
        statements += r.sql_statements();
    }
    // The write made four keys stale: the calendar summary (new generation), its month bucket,
    // and event 0's attendees and reservations. Each is loaded exactly once for all 500
    // requests, in one statement each; everything else stayed cached.
    assert_eq!(
        loaded, 4,
        "keys loaded from PostgreSQL across 500 concurrent requests"
    );
    assert_eq!(
        statements, 4,
        "500 concurrent requests took {statements} statements"
    );
    // Requests that missed a key while its load ran joined that load; each key they got from
    // it is counted once in the followers' metric.
    assert!(
        coalesced > 0,
        "some of 500 concurrent requests joined a load"
    );
    let shared = app
        .metric("cal_cache_coalesced_total", &[("tier", "db")])
        .await
        - coalesced_before;
    assert_eq!(shared, coalesced as f64, "followers' keys counted");
}

/// The series move by what three month views do (all of them start at zero): the first misses
/// both tiers and fills them, the second is a whole-response hit, the third (other variables,
/// same month) is a response miss served from L1 without SQL.
#[tokio::test]
async fn metrics_expose_tiers_and_kinds() {
    let app = TestApp::spawn().await;
    let w = world(&app, 2, 1).await;
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    let cold = app.metrics().await;
    app.gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await
        .data();
    // Other variables over the same month: executed (not a whole-response hit), from L1.
    let last_day = next_month_start() - chrono::Duration::days(1);
    let part = window_vars(w.calendar, at(2, 0, 0), last_day);
    app.gql(Some(w.owner.id), MONTH_VIEW, part).await.data();
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let bucket = |tier| [("kind", "month_bucket"), ("tier", tier)];
    for (name, labels, at_cold, now) in [
        ("cal_cache_misses_total", bucket("l1"), 1.0, 1.0),
        ("cal_cache_misses_total", bucket("l2"), 1.0, 1.0),
        ("cal_cache_fills_total", bucket("l1"), 1.0, 1.0),
        ("cal_cache_fills_total", bucket("l2"), 1.0, 1.0),
        ("cal_cache_hits_total", bucket("l1"), 0.0, 1.0),
        ("cal_cache_hits_total", bucket("l2"), 0.0, 0.0),
    ] {
        let got = (
            metric_sum(&cold, name, &labels),
            metric_sum(&text, name, &labels),
        );
        assert_eq!(
            got,
            (at_cold, now),
            "{name} {labels:?} after the first read, at the end"
        );
    }
    for (name, at_cold, now) in [
        ("cal_cache_response_hits_total", 0.0, 1.0),
        ("cal_cache_response_misses_total", 1.0, 2.0),
        ("cal_cache_breaker_state", 0.0, 0.0),
    ] {
        let got = (metric_sum(&cold, name, &[]), metric_sum(&text, name, &[]));
        assert_eq!(
            got,
            (at_cold, now),
            "{name} after the first read, at the end"
        );
    }
    let sql = |m: &str| metric_sum(m, "cal_sql_statements_total", &[]);
    assert!(sql(&cold) > 0.0, "the cold read is counted");
    assert_eq!(sql(&text), sql(&cold), "the warm reads sent no SQL");
}

/// Pauses the first fill of one key after its load, until released.
struct PauseFill {
    key: String,
    armed: std::sync::atomic::AtomicBool,
    loaded: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl cal_cache::FillHooks for PauseFill {
    async fn after_load(&self, keys: &[String]) {
        if keys.iter().any(|k| k == &self.key)
            && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.loaded.notify_one();
            self.release.notified().await;
        }
    }
}

#[tokio::test]
async fn a_reader_that_loaded_before_a_write_cannot_fill_the_old_value() {
    // Events get ids from 1 in a fresh database: the first event of `world` is id 1.
    let hook = Arc::new(PauseFill {
        key: "v1:event:1:full".into(),
        armed: false.into(),
        loaded: Default::default(),
        release: Default::default(),
    });
    let h = hook.clone();
    let app = Arc::new(TestApp::spawn_full(|_| {}, move |c| c.hooks = Some(h)).await);
    let w = world(&app, 1, 1).await;
    let ev = w.events[0].clone();
    assert_eq!(ev.id.get(), 1);
    let q = "query($e: ID!) { event(id: $e) { title version } }";
    hook.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    // Reader: loads version 1 from PostgreSQL, then pauses before filling the cache.
    let reader = {
        let app = app.clone();
        let owner = w.owner.id;
        tokio::spawn(async move { app.gql(Some(owner), q, json!({ "e": "1" })).await })
    };
    hook.loaded.notified().await;
    // Writer: commits version 2 and invalidates (tombstones) while the reader is paused. It
    // writes through the app's store (same commit → tombstone → evict → publish path as a
    // mutation): a mutation would first read the event and join the paused reader's flight.
    let patch = cal_storage::EventPatch {
        title: Some(cal_domain::Title::new("new").unwrap()),
        ..Default::default()
    };
    app.store
        .update_event(ev.id, ev.version, &patch)
        .await
        .unwrap();
    hook.release.notify_one();
    let old = reader.await.unwrap();
    assert_eq!(
        old.data()["event"]["title"],
        ev.title,
        "the reader answers what it read"
    );
    // Its late fill was refused: the next read sees the write.
    for _ in 0..3 {
        let now = app.gql(Some(w.owner.id), q, json!({ "e": "1" })).await;
        assert_eq!(now.data()["event"]["title"], "new");
        assert_eq!(now.data()["event"]["version"], ev.version + 1);
    }
    // Refused once in each tier (both hold the write's tombstone), and counted there.
    let metrics = app.metrics().await;
    for tier in ["l1", "l2"] {
        assert_eq!(
            metric_sum(
                &metrics,
                "cal_cache_refused_stale_total",
                &[("kind", "event_full"), ("tier", tier)]
            ),
            1.0,
            "the stale fill was refused and counted in {tier}"
        );
    }
}

#[tokio::test]
async fn warming_fills_the_month_of_active_calendars() {
    let app = TestApp::spawn().await;
    let w = world(&app, 8, 2).await;
    let (from, to) = cal_domain::cache_keys::month_span(dates::ANCHOR);
    let ids = app.store.most_active_calendars(10, from, to).await.unwrap();
    assert_eq!(ids, vec![w.calendar]);
    assert_eq!(
        cal_api::warm(&app.tiers, &app.store, &ids, from, to).await,
        1
    );
    // Only what warming does not cover (attendees, rooms, users) is loaded.
    let r = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    assert_eq!(
        r.sql_statements(),
        3,
        "calendar and month bucket came from the warm cache"
    );
}

#[tokio::test]
async fn resource_availability_is_cached_by_day_and_follows_every_booking_change() {
    let app = TestApp::spawn().await;
    // Event 0: the 1st 08:00–09:00 in room 0; event 1: 09:30–10:30, no room.
    let w = world(&app, 2, 1).await;
    let room = w.rooms[0].id;
    let avail = r#"query($r: ID!, $f: DateTime!, $t: DateTime!) { resourceAvailability(resourceId: $r, from: $f, to: $t) { busy { start end } } }"#;
    let vars = json!({ "r": room.to_string(), "f": iso(month_start()), "t": iso(at(4, 0, 0)) });
    // An interval as `busy` renders it.
    let span = |from, to| format!("{}..{}", rfc(from), rfc(to));
    let busy = |r: &Gql| {
        r.data()["resourceAvailability"]["busy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}..{}",
                    i["start"].as_str().unwrap(),
                    i["end"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    let version =
        || async { cal_test_support::sql::bookings_version(&app.db.pool, room.get()).await };

    // Cold: the resource, then all three days in one statement; warm: no SQL at all.
    let cold = app.gql(Some(w.owner.id), avail, vars.clone()).await;
    assert_eq!(busy(&cold), [span(at(1, 8, 0), at(1, 9, 0))]);
    assert_eq!(cold.sql_statements(), 2, "{}", cold.0["extensions"]);
    let warm = app.gql(Some(w.owner.id), avail, vars.clone()).await;
    assert_eq!(warm.sql_statements(), 0, "{}", warm.0["extensions"]);
    assert_eq!(warm.data(), cold.data());

    // Booking the room for event 1 bumps the room's bookings version (database trigger) and
    // the next read sees the booking.
    let before = version().await;
    let reserve =
        "mutation($e: ID!, $r: ID!) { reserveResource(eventId: $e, resourceId: $r) { id } }";
    let booked = app
        .gql(
            Some(w.owner.id),
            reserve,
            json!({ "e": w.events[1].id.to_string(), "r": room.to_string() }),
        )
        .await;
    let reservation = booked.data()["reserveResource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        version().await > before,
        "a booking bumps the bookings version"
    );
    let after_booking = app.gql(Some(w.owner.id), avail, vars.clone()).await;
    assert_eq!(
        busy(&after_booking),
        [
            span(at(1, 8, 0), at(1, 9, 0)),
            span(at(1, 9, 30), at(1, 10, 30))
        ]
    );

    // Deleting event 0 releases its room; cancelling the new booking frees the day.
    let delete = "mutation($e: ID!) { deleteEvent(id: $e) }";
    app.gql(
        Some(w.owner.id),
        delete,
        json!({ "e": w.events[0].id.to_string() }),
    )
    .await
    .data();
    let after_delete = app.gql(Some(w.owner.id), avail, vars.clone()).await;
    assert_eq!(busy(&after_delete), [span(at(1, 9, 30), at(1, 10, 30))]);
    let cancel = "mutation($r: ID!) { cancelReservation(reservationId: $r) { status } }";
    app.gql(Some(w.owner.id), cancel, json!({ "r": reservation }))
        .await
        .data();
    let after_cancel = app.gql(Some(w.owner.id), avail, vars.clone()).await;
    assert!(busy(&after_cancel).is_empty(), "{:?}", busy(&after_cancel));

    // A statement that touches no reservation of the room leaves its version (and cache) alone.
    let settled = version().await;
    let current: i64 = app.event_version(w.events[1].id.get()).await;
    let rename = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { version } }";
    app.gql(
        Some(w.owner.id),
        rename,
        json!({ "e": w.events[1].id.to_string(), "v": current, "t": "Renamed" }),
    )
    .await
    .data();
    assert_eq!(version().await, settled);
}
