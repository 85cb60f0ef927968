//! The hot reads use indexes: on a seeded, analyzed database large enough that the planner has a
//! choice, no hot read's plan scans `events`, `attendees` or `reservations` sequentially.
//!
//! `Scale::Medium` has many users for its size on purpose: with 2,000 users, the ten users of a
//! free/busy query attend so large a share of the three seeded months that the planner rightly
//! hash-joins their attendance against a sequential scan of `events`; production data (more users,
//! more months) is nothing like that. `tests/it/large.rs` runs the same check on the benchmark
//! scale.

use cal_storage::{NoProgress, Scale, Store, seq_scans};
use cal_test_support::TestDb;
use chrono::NaiveDate;

const BIG_TABLES: &[&str] = &["events", "attendees", "reservations"];

#[tokio::test]
async fn hot_reads_do_not_seq_scan_big_tables() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone());
    let started = std::time::Instant::now();
    let summary = store
        .seed(
            Scale::Medium,
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            &NoProgress,
        )
        .await
        .unwrap();
    eprintln!("medium seed: {summary:?} in {:?}", started.elapsed());

    let plans = store.explain_hot_queries().await.unwrap();
    let names: Vec<&str> = plans.iter().map(|(n, _)| *n).collect();
    for expected in [
        "users_by_ids",
        "calendars_by_ids",
        "events_by_ids",
        "attendees_by_event_ids",
        "reservations_by_event_ids",
        "resources_by_ids",
        "events_in_window",
        "events_in_window_after_cursor",
        "memberships_of",
        "users_sharing_calendar_with",
        "busy_of_users",
        "busy_of_resources",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not explained: {names:?}"
        );
    }

    let mut failures = Vec::new();
    for (name, plan) in &plans {
        let scans = seq_scans(plan);
        eprintln!("{name}: seq scans {scans:?}");
        if scans.iter().any(|t| BIG_TABLES.contains(&t.as_str())) {
            failures.push(format!(
                "{name} seq-scans {scans:?}:\n{}",
                serde_json::to_string_pretty(plan).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
