//! The `calendar` binary end to end: `serve` creates and migrates a missing database, answers
//! `/health`, `/ready` and GraphQL with a token from `calendar token`, refuses to start in prod
//! mode without a secret, and exits cleanly on SIGTERM.

use cal_test_support::admin_url;
use cal_test_support::dates::{self, at, month_args};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_calendar");
const SECRET: &str = "binary-test-secret-binary-test-secret";

/// A database name that does not exist yet (the binary must create it), dropped at the end.
struct FreshDb(String);

impl FreshDb {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        FreshDb(format!(
            "cal_bin_{tag}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000
        ))
    }
    fn url(&self) -> String {
        cal_test_support::database_url(&admin_url(), &self.0)
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &admin_url(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.0),
            ])
            .output();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(db: &FreshDb, port: u16, env: &[(&str, &str)]) -> Child {
    Command::new(BIN)
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's `/metrics` text.
async fn metrics_text(client: &reqwest::Client, port: u16) -> String {
    client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn serve_creates_the_database_answers_and_stops_on_sigterm() {
    let db = FreshDb::new("serve");
    let port = free_port();
    let env = [("CAL_ENV", "prod"), ("JWT_SECRET", SECRET)];
    let mut server = Server(spawn(&db, port, &env));
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    let health = client
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // Seed a user through the binary (in the fixtures' month, not the current one) and use a
    // token minted by it.
    let anchor = dates::ANCHOR.to_string();
    let seed = Command::new(BIN)
        .args(["seed", "--scale", "demo", "--anchor", anchor.as_str()])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let token = Command::new(BIN)
        .args(["token", "--user-id", "1"])
        .env("JWT_SECRET", SECRET)
        .env("CAL_ENV", "prod")
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let body: serde_json::Value = client
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "query": "{ me { id name } myCalendars { id } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["me"]["name"], "Demo User", "{body}");
    assert!(!body["data"]["myCalendars"].as_array().unwrap().is_empty());

    // SIGTERM: the process drains and exits successfully.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

/// Runs `calendar serve` against `db` with `env` (a `None` value removes the variable), expects
/// it to refuse to start and returns what it printed on stderr.
fn serve_refuses(db: &FreshDb, env: &[(&str, Option<&str>)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").env("DATABASE_URL", db.url());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn prod_mode_requires_a_secret() {
    let db = FreshDb::new("nosecret");
    let err = serve_refuses(&db, &[("CAL_ENV", Some("prod")), ("JWT_SECRET", None)]);
    assert!(err.contains("JWT_SECRET"));
}

#[test]
fn bad_cache_ttls_stop_the_start_with_the_reason() {
    let db = FreshDb::new("badttls");
    let err = serve_refuses(&db, &[("CACHE_TTLS", Some("month_bucket=60,nope=5"))]);
    assert!(err.contains("CACHE_TTLS"), "{err}");
    assert!(err.contains("unknown key kind `nope`"), "{err}");
}

#[test]
fn a_nice_value_out_of_range_stops_the_start() {
    let db = FreshDb::new("badnice");
    for bad in ["-21", "20"] {
        let err = serve_refuses(&db, &[("INVALIDATION_THREAD_NICE", Some(bad))]);
        assert!(
            err.contains("INVALIDATION_THREAD_NICE must be a nice value between -20 and 19"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_rate_limit_needs_both_settings_and_a_positive_rate() {
    let db = FreshDb::new("badrate");
    let cases = [
        (
            Some("2"),
            None,
            "set both RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST",
        ),
        (
            None,
            Some("5"),
            "set both RATE_LIMIT_PER_SECOND and RATE_LIMIT_BURST",
        ),
        (
            Some("-1"),
            Some("5"),
            "positive number of requests per second",
        ),
        (Some("2000000000"), Some("5"), "too many"),
    ];
    for (rate, burst, expected) in cases {
        let err = serve_refuses(
            &db,
            &[("RATE_LIMIT_PER_SECOND", rate), ("RATE_LIMIT_BURST", burst)],
        );
        assert!(err.contains(expected), "{rate:?} {burst:?}: {err}");
    }
}

#[tokio::test]
async fn the_rate_limit_settings_limit_graphql_requests() {
    let db = FreshDb::new("rate");
    let port = free_port();
    // Dev mode, one request per 100 s: requests without a token share one bucket.
    let env = [("RATE_LIMIT_PER_SECOND", "0.01"), ("RATE_LIMIT_BURST", "2")];
    let _server = Server(spawn(&db, port, &env));
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    let ask = || {
        client
            .post(format!("http://127.0.0.1:{port}/graphql"))
            .json(&serde_json::json!({ "query": "{ me { id } }" }))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(ask().await.unwrap().status(), 200);
    }
    let refused = ask().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    assert!(
        metrics_text(&client, port)
            .await
            .lines()
            .any(|l| l == "cal_rate_limited_total 1")
    );
}

#[test]
fn fixtures_for_load_tests_are_json() {
    let db = FreshDb::new("fixtures");
    let anchor = dates::ANCHOR.to_string();
    let seed = Command::new(BIN)
        .args(["seed", "--anchor", anchor.as_str()])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let out = Command::new(BIN)
        .args(["token", "--calendar-owners", "3"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list.iter().all(
        |f| f["token"].as_str().unwrap().split('.').count() == 3 && f["calendarId"].is_string()
    ));
}

#[test]
fn print_schema_matches_the_contract_file() {
    let out = Command::new(BIN).arg("print-schema").output().unwrap();
    let file =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schema.graphql"))
            .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), file);
}

/// The change log is pruned in the background: published rows older than the retention go,
/// unpublished and recent rows stay, and the size metrics say what is left.
#[tokio::test]
async fn the_change_log_is_pruned_after_its_retention() {
    let db = FreshDb::new("prune");
    let port = free_port();
    let mut server = Server(spawn(
        &db,
        port,
        &[
            ("JWT_SECRET", SECRET),
            ("OUTBOX_PRUNE_INTERVAL_SECS", "1"),
            // The relay must not publish the unpublished row below (it would then be prunable).
            ("RELAY_ENABLED", "false"),
        ],
    ));
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    let pool = cal_storage::PgPool::connect(&db.url()).await.unwrap();
    // Three published rows 10 days old, one unpublished as old, one published just now.
    for (age_days, published) in [(10, true), (10, true), (10, false), (10, true), (0, true)] {
        cal_test_support::sql::insert_outbox_row(&pool, age_days, published).await;
    }
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(f64::NAN)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics_text(&client, port).await;
        if metric(&text, "cal_outbox_rows ") == 2.0 {
            assert_eq!(metric(&text, "cal_outbox_pruned_total "), 3.0);
            let age = metric(&text, "cal_outbox_oldest_age_seconds ");
            assert!(
                (age / 86_400.0 - 10.0).abs() < 0.01,
                "the oldest row left is the unpublished one, 10 days old: {age}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change log was not pruned: {}",
            text.lines()
                .filter(|l| l.starts_with("cal_outbox"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = cal_test_support::sql::outbox_published_and_age_days(&pool).await;
    assert_eq!(left, vec![(false, 10), (true, 0)]);
    pool.close().await;
    let _ = server.0.kill();
}

/// A handler that panics answers 500 with a coded GraphQL error (no detail), is counted, and the
/// server goes on answering (the panic is injected with `CAL_FAILPOINTS=panic-in-handler`).
#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_goes_on() {
    let db = FreshDb::new("panic");
    let port = free_port();
    let _server = Server(spawn(
        &db,
        port,
        &[
            ("JWT_SECRET", SECRET),
            ("CAL_FAILPOINTS", "panic-in-handler"),
        ],
    ));
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    let url = format!("http://127.0.0.1:{port}/graphql");
    let resp = client
        .post(&url)
        .header("x-failpoint", "panic")
        .json(&serde_json::json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    assert_eq!(resp.status(), 500);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "INTERNAL_SERVER_ERROR",
        "{body}"
    );
    assert!(
        !body.to_string().contains("failpoint"),
        "no panic detail: {body}"
    );
    // The next request is served as usual.
    let body: serde_json::Value = client
        .post(&url)
        .json(&serde_json::json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{body}"
    );
    let metrics = metrics_text(&client, port).await;
    assert!(
        metrics.lines().any(|l| l == "cal_http_panics_total 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("panic"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A query within the depth limit that nests calendars through events twice: in a debug build
/// it overflowed the default 2 MiB thread stack and aborted the whole process.
#[tokio::test]
async fn a_deep_query_within_the_limits_is_answered_not_a_crash() {
    let db = FreshDb::new("deep");
    let port = free_port();
    let _server = Server(spawn(&db, port, &[("JWT_SECRET", SECRET)]));
    let client = reqwest::Client::new();
    wait_ready(&client, port).await;
    let store = cal_storage::Store::new(cal_storage::PgPool::connect(&db.url()).await.unwrap());
    let owner = store
        .create_user("deep@example.test", "Deep", None)
        .await
        .unwrap();
    let cal = store
        .create_calendar(
            owner.id,
            &cal_domain::CalendarName::new("C").unwrap(),
            None,
            "UTC",
        )
        .await
        .unwrap();
    let start = at(2, 9, 0);
    store
        .create_event(&cal_test_support::one_hour_event(cal.id, owner.id, start))
        .await
        .unwrap();
    let w = format!("{}, first: 1", month_args());
    let query = format!(
        "query($c: ID!) {{ calendar(id: $c) {{ events({w}) {{ edges {{ node {{ calendar {{ \
         events({w}) {{ edges {{ node {{ calendar {{ id name }} }} }} }} }} }} }} }} }} }}"
    );
    let token = cal_api::auth::mint(
        &secrecy::SecretString::from(SECRET),
        owner.id,
        chrono::Duration::hours(1),
    );
    let body: serde_json::Value = client
        .post(format!("http://127.0.0.1:{port}/graphql"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "query": query, "variables": { "c": cal.id.to_string() } }))
        .send()
        .await
        .expect("an answer, not a dropped connection")
        .json()
        .await
        .unwrap();
    assert!(body["errors"].is_null(), "{body}");
    let inner = &body["data"]["calendar"]["events"]["edges"][0]["node"]["calendar"]["events"]["edges"]
        [0]["node"]["calendar"];
    assert_eq!(inner["name"], "C", "{body}");
}
