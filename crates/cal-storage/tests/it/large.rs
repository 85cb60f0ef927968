//! The benchmark scale, by hand only (about a minute in a release build on 2 cores):
//! `cargo test --release -p cal-storage --test it large -- --ignored --nocapture`.
//! Seeds `Scale::Large` into a fresh database, prints the time each stage took, and checks the hot
//! reads' plans as `tests/it/explain.rs` does at the medium scale.

use cal_storage::{Progress, Scale, Store, seq_scans};
use cal_test_support::TestDb;
use chrono::NaiveDate;
use std::sync::Mutex;
use std::time::Instant;

/// Prints each stage's row count and duration.
struct Timings(Mutex<Option<(String, u64, Instant)>>);

impl Progress for Timings {
    fn stage(&self, name: &str, total: u64) {
        *self.0.lock().unwrap() = Some((name.to_owned(), total, Instant::now()));
    }
    fn inc(&self, _n: u64) {}
    fn finish(&self) {
        if let Some((name, total, started)) = self.0.lock().unwrap().take() {
            eprintln!(
                "  {name:>16}: {total:>9} rows in {:>8.2?}",
                started.elapsed()
            );
        }
    }
}

#[tokio::test]
#[ignore = "about a minute in release; run by hand"]
async fn large_seed_and_plans() {
    let db = TestDb::new().await;
    let store = Store::new(db.pool.clone());
    let started = Instant::now();
    let summary = store
        .seed(
            Scale::Large,
            NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            &Timings(Mutex::new(None)),
        )
        .await
        .unwrap();
    eprintln!("large seed: {summary:?} in {:?}", started.elapsed());

    let mut failures = Vec::new();
    for (name, plan) in store.explain_hot_queries().await.unwrap() {
        let scans = seq_scans(&plan);
        eprintln!("{name}: seq scans {scans:?}");
        if scans
            .iter()
            .any(|t| ["events", "attendees", "reservations"].contains(&t.as_str()))
        {
            failures.push(format!(
                "{name} seq-scans {scans:?}:\n{}",
                serde_json::to_string_pretty(&plan).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
