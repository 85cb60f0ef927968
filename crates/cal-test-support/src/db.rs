//! Per-test databases. Migrating takes a while; `CREATE DATABASE … TEMPLATE` takes milliseconds, so
//! the first test of a run migrates a template (named after the migrations' checksums, under an
//! advisory lock so parallel test binaries agree) and every test clones it.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

use crate::admin_url;

fn with_database(url: &str, db: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(url)
        .expect("DATABASE_URL is a valid URL")
        .database(db)
        .disable_statement_logging()
}

/// A database of its own for one test, dropped (forcefully) when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
    pub options: PgConnectOptions,
    /// The server it lives on (any database of it), to drop it from.
    server: String,
}

/// The migrated template's name per server URL, found or built once per test binary.
static TEMPLATES: Mutex<BTreeMap<String, Arc<OnceCell<String>>>> = Mutex::new(BTreeMap::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    /// Its URL, for a process of its own (`DATABASE_URL`).
    pub fn url(&self) -> String {
        cal_test_infra::database_url(&self.server, &self.name)
    }

    /// A database on the shared server at [`admin_url`], with a pool of 10 (sqlx defaults).
    pub async fn new() -> TestDb {
        Self::on(&admin_url(), PgPoolOptions::new().max_connections(10)).await
    }

    /// A database on the server at `server_url` (e.g. a [`crate::PgCluster`] of the test's own),
    /// cloned from that server's migrated template, with its pool built from `pool`.
    pub async fn on(server_url: &str, pool: PgPoolOptions) -> TestDb {
        let cell = TEMPLATES
            .lock()
            .unwrap()
            .entry(server_url.to_owned())
            .or_default()
            .clone();
        let template = cell
            .get_or_init(|| ensure_template(server_url))
            .await
            .clone();
        let name = format!(
            "cal_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
                % 1_000_000_000
        );
        let mut admin = admin_conn(server_url).await;
        // Cloning fails while anything else is connected to the template; retry briefly.
        let mut attempt = 0;
        loop {
            let r = sqlx::query(AssertSqlSafe(format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            )))
            .execute(&mut admin)
            .await;
            match r {
                Ok(_) => break,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create test database {name}: {e}"),
            }
        }
        let options = with_database(server_url, &name);
        let pool = pool
            .connect_with(options.clone())
            .await
            .expect("connect to test db");
        TestDb {
            name,
            pool,
            options,
            server: server_url.to_owned(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let server = self.server.clone();
        // Drop may run on the test's runtime thread, which we must not wait on (the pool's tasks
        // live there): use a short-lived runtime on another thread, and let `WITH (FORCE)` end the
        // pool's connections instead of closing the pool.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut admin) =
                    PgConnection::connect_with(&with_database(&server, "postgres")).await
                {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}

async fn admin_conn(server_url: &str) -> PgConnection {
    PgConnection::connect_with(
        &PgConnectOptions::from_str(server_url)
            .unwrap()
            .disable_statement_logging(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "PostgreSQL must be running at {server_url} (DATABASE_URL, default 127.0.0.1:5432): {e}"
        )
    })
}

/// Creates the migrated template for the current migration set on the server at `server_url` if
/// it does not exist yet.
async fn ensure_template(server_url: &str) -> String {
    let checksum: u64 = cal_storage::MIGRATOR
        .iter()
        .fold(0xcbf29ce484222325, |h, m| {
            m.checksum
                .iter()
                .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
        });
    let name = format!("cal_tmpl_{:016x}", checksum);
    let mut admin = admin_conn(server_url).await;
    sqlx::query("SELECT pg_advisory_lock(727272)")
        .execute(&mut admin)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{building}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(with_database(server_url, &building))
            .await
            .unwrap();
        cal_storage::migrate(&pool)
            .await
            .expect("migrations apply to an empty database");
        pool.close().await;
        sqlx::query(AssertSqlSafe(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        )))
        .execute(&mut admin)
        .await
        .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(727272)")
        .execute(&mut admin)
        .await
        .unwrap();
    name
}

/// A plain one-hour event (confirmed, busy, UTC, no attendees or bookings) starting at `start`:
/// the smallest write a test of the storage or the change log needs.
pub fn one_hour_event(
    calendar: cal_domain::CalendarId,
    organizer: cal_domain::UserId,
    start: chrono::DateTime<chrono::Utc>,
) -> cal_storage::NewEvent {
    cal_storage::NewEvent {
        calendar_id: calendar,
        organizer_id: organizer,
        title: cal_domain::Title::new("t").unwrap(),
        description: None,
        location: None,
        start_time: start,
        end_time: start + chrono::Duration::hours(1),
        time_zone: "UTC".into(),
        all_day: false,
        status: cal_domain::EventStatus::Confirmed,
        transparency: cal_domain::Transparency::Busy,
        rrule: None,
        series_end: None,
        attendees: vec![],
        reservations: vec![],
    }
}
