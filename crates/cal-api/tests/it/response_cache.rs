//! The whole-response cache beside L1: a repeated read is answered with the stored bytes only
//! while every L1 entry it was built from is unchanged. Any write (local, or heard from another
//! instance), a revoked membership, or a read past the cache makes the next request execute.

use crate::common::*;
use cal_test_support::dates::{month_start_after, next_month_start, window_vars};

fn hit(r: &Gql) -> bool {
    r.0["extensions"]["stats"]["responseCacheHit"]
        .as_bool()
        .expect("stats report responseCacheHit")
}

#[tokio::test]
async fn repeated_reads_are_served_whole_until_something_they_read_changes() {
    let app = TestApp::spawn().await;
    let w = world(&app, 12, 3).await;
    let vars = month_vars(w.calendar);
    let first = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(!hit(&first));
    let second = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(hit(&second), "{}", second.0);
    assert_eq!(second.data(), first.data());
    assert_eq!(second.sql_statements(), 0);
    assert!(second.0["extensions"]["stats"]["l1Hits"].as_u64().unwrap() > 12);

    // Other variables are another entry.
    let next_month = window_vars(w.calendar, next_month_start(), month_start_after(2));
    assert!(!hit(&app
        .gql(Some(w.owner.id), MONTH_VIEW, next_month)
        .await));

    // A write through the API: the next read executes and sees it, then is cached again.
    let upd = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { version } }";
    let ev = &w.events[0];
    app.gql(
        Some(w.owner.id),
        upd,
        json!({ "e": ev.id.to_string(), "v": ev.version, "t": "Renamed" }),
    )
    .await
    .data();
    let after = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(!hit(&after));
    assert_eq!(
        after.data()["calendar"]["events"]["edges"][0]["node"]["title"],
        "Renamed"
    );
    assert!(hit(&app
        .gql(Some(w.owner.id), MONTH_VIEW, vars.clone())
        .await));

    // A write on another instance (here: an attendee's profile) counts too: that writer
    // tombstones Redis, then this instance hears the invalidation and evicts its L1.
    let other = cal_cache::TieredCache::new(
        cal_cache::CacheConfig {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            key_prefix: format!("test:{}:", app.db.name),
            ..Default::default()
        },
        &prometheus::Registry::new(),
    )
    .await
    .unwrap();
    let keys = vec![(cache_keys::user_profile(w.users[0].id), i64::MAX)];
    other.invalidate(&keys).await;
    let inv = cal_cache::Invalidation::new(keys, "another-instance", 1);
    app.tiers.cache.apply_remote(&inv);
    let heard = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(!hit(&heard));
    assert_eq!(heard.data(), after.data());
}

#[tokio::test]
async fn entries_belong_to_one_viewer_and_follow_their_membership() {
    let app = TestApp::spawn().await;
    let w = world(&app, 4, 2).await;
    let reader = app.user("Rita Reader").await;
    let share = "mutation($c: ID!, $u: ID!) { shareCalendar(calendarId: $c, userId: $u, role: READER) { id } }";
    let unshare = "mutation($c: ID!, $u: ID!) { unshareCalendar(calendarId: $c, userId: $u) }";
    let ids = json!({ "c": w.calendar.to_string(), "u": reader.id.to_string() });
    app.gql(Some(w.owner.id), share, ids.clone()).await.data();
    let vars = month_vars(w.calendar);

    // The owner's cached answer is not the reader's.
    app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone())
        .await
        .data();
    assert!(hit(&app
        .gql(Some(w.owner.id), MONTH_VIEW, vars.clone())
        .await));
    assert!(!hit(&app
        .gql(Some(reader.id), MONTH_VIEW, vars.clone())
        .await));
    assert!(hit(&app
        .gql(Some(reader.id), MONTH_VIEW, vars.clone())
        .await));

    // Revoking the membership changes the calendar summary the answer was checked against.
    app.gql(Some(w.owner.id), unshare, ids).await.data();
    let refused = app.gql(Some(reader.id), MONTH_VIEW, vars.clone()).await;
    assert_eq!(refused.code(), "FORBIDDEN");
    // Errors are never stored: the stranger is refused again, by execution.
    let again = app.gql(Some(reader.id), MONTH_VIEW, vars).await;
    // Not the stored answer (that one has data and no error), and no figures on a denial.
    assert_eq!(again.code(), "FORBIDDEN");
    assert!(again.0["extensions"]["stats"].is_null(), "{}", again.0);
}

#[tokio::test]
async fn reads_past_the_cache_and_mutations_are_never_stored() {
    let app = TestApp::spawn().await;
    let w = world(&app, 2, 1).await;
    // `myCalendars` reads memberships with its own statement: not built from L1 entries only.
    let q = "{ myCalendars { id name } }";
    for _ in 0..3 {
        let r = app.gql(Some(w.owner.id), q, json!({})).await;
        assert!(!hit(&r));
        assert!(r.sql_statements() >= 1);
    }
    // A mutation never comes from the cache, even when repeated with the same variables.
    let name =
        r#"mutation($n: String!) { createCalendar(input: { name: $n, timeZone: "UTC" }) { id } }"#;
    let a = app.gql(Some(w.owner.id), name, json!({ "n": "X" })).await;
    let b = app.gql(Some(w.owner.id), name, json!({ "n": "X" })).await;
    assert!(!hit(&a) && !hit(&b));
    assert_ne!(
        a.data()["createCalendar"]["id"],
        b.data()["createCalendar"]["id"]
    );
}

#[tokio::test]
async fn without_l1_the_shared_tier_serves_until_a_version_changes() {
    let app = TestApp::spawn_full(|_| {}, |c| c.l1_enabled = false).await;
    assert!(app.responses.is_none(), "the L1 response cache needs L1");
    let w = world(&app, 6, 2).await;
    let vars = month_vars(w.calendar);
    let first = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(first.0["extensions"]["stats"]["responseCacheHit"].is_null());
    let second = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(hit(&second), "{}", second.0);
    assert_eq!(second.data(), first.data());
    assert_eq!(second.sql_statements(), 0);

    // Another viewer is another entry (and is refused by execution).
    let stranger = app.user("Nosy").await;
    let refused = app.gql(Some(stranger.id), MONTH_VIEW, vars.clone()).await;
    assert_eq!(refused.code(), "FORBIDDEN");

    // A write tombstones what it changed in Redis: the next read executes and sees it.
    let upd = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { version } }";
    let ev = &w.events[0];
    app.gql(
        Some(w.owner.id),
        upd,
        json!({ "e": ev.id.to_string(), "v": ev.version, "t": "Renamed" }),
    )
    .await
    .data();
    let after = app.gql(Some(w.owner.id), MONTH_VIEW, vars.clone()).await;
    assert!(after.0["extensions"]["stats"]["responseCacheHit"].is_null());
    assert_eq!(
        after.data()["calendar"]["events"]["edges"][0]["node"]["title"],
        "Renamed"
    );
    let again = app.gql(Some(w.owner.id), MONTH_VIEW, vars).await;
    assert!(hit(&again));
    assert_eq!(again.data(), after.data());
}
