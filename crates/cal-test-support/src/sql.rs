//! The statements tests send themselves, behind the store's back: fixtures the store cannot
//! write (rows edited by hand, old change-log rows, a held row lock) and inspection of what it
//! wrote. Besides `cal-storage`, this is the only place with SQL, so the tests of other crates
//! need no sqlx of their own (`xtask/tests/tidy.rs` checks it).
//!
//! Ids are the plain `bigint`s of the rows. Every function panics on a database error: it is a
//! test's fixture, and the test should fail right there.

use sqlx::{PgPool, Postgres, Transaction};

async fn int(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn int_of(pool: &PgPool, sql: &'static str, id: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn execute(pool: &PgPool, sql: &'static str, id: i64, text: &str) {
    sqlx::query(sql)
        .bind(id)
        .bind(text)
        .execute(pool)
        .await
        .unwrap();
}

// Events.

/// Event rows, deleted ones included.
pub async fn event_rows(pool: &PgPool) -> i64 {
    int(pool, "SELECT count(*) FROM events").await
}

/// The stored `version` of event row `event`.
pub async fn event_version(pool: &PgPool, event: i64) -> i64 {
    int_of(pool, "SELECT version FROM events WHERE id = $1", event).await
}

/// The stored `version` and title of event row `event`.
pub async fn event_version_and_title(pool: &PgPool, event: i64) -> (i64, String) {
    sqlx::query_as("SELECT version, title FROM events WHERE id = $1")
        .bind(event)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The title of event row `event` unless it is missing or deleted.
pub async fn live_event_title(pool: &PgPool, event: i64) -> Option<String> {
    sqlx::query_scalar("SELECT title FROM events WHERE id = $1 AND deleted_at IS NULL")
        .bind(event)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// The titles of every event row, deleted ones included.
pub async fn event_titles(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT title FROM events")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Whether event row `event` is marked deleted.
pub async fn event_is_deleted(pool: &PgPool, event: i64) -> bool {
    sqlx::query_scalar("SELECT deleted_at IS NOT NULL FROM events WHERE id = $1")
        .bind(event)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether event row `event` is marked deleted, and the status of its (one) reservation.
pub async fn event_deleted_and_reservation_status(pool: &PgPool, event: i64) -> (bool, String) {
    sqlx::query_as(
        "SELECT e.deleted_at IS NOT NULL, r.status FROM events e \
         JOIN reservations r ON r.event_id = e.id WHERE e.id = $1",
    )
    .bind(event)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The `exdates` (original starts of removed occurrences) of series row `series`.
pub async fn exdates(pool: &PgPool, series: i64) -> Vec<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT exdates FROM events WHERE id = $1")
        .bind(series)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The id of the (one) live override of series row `series`.
pub async fn live_override_of(pool: &PgPool, series: i64) -> i64 {
    int_of(
        pool,
        "SELECT id FROM events WHERE recurring_event_id = $1 AND deleted_at IS NULL",
        series,
    )
    .await
}

/// Sets the title of event row `event` by hand: no version bump, no change-log row, so no
/// cache hears of it.
pub async fn set_event_title(pool: &PgPool, event: i64, title: &str) {
    execute(
        pool,
        "UPDATE events SET title = $2 WHERE id = $1",
        event,
        title,
    )
    .await;
}

/// Bumps the `version` of the live overrides of series row `series` by hand (another writer
/// whose invalidation nobody heard).
pub async fn bump_live_override_versions(pool: &PgPool, series: i64) {
    sqlx::query(
        "UPDATE events SET version = version + 1 \
         WHERE recurring_event_id = $1 AND deleted_at IS NULL",
    )
    .bind(series)
    .execute(pool)
    .await
    .unwrap();
}

/// Locks event row `event` (`FOR UPDATE`) in a transaction of its own, held until the returned
/// transaction is rolled back or dropped: writers of that row queue behind it.
pub async fn lock_event_row(pool: &PgPool, event: i64) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM events WHERE id = $1 FOR UPDATE")
        .bind(event)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Sessions of this database, other than the asking one, waiting on a lock.
pub async fn lock_waiters(pool: &PgPool) -> i64 {
    int(
        pool,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    )
    .await
}

// Calendars, users, resources and reservations.

/// Sets the name of calendar row `calendar` by hand (no version bump, no change-log row).
pub async fn set_calendar_name(pool: &PgPool, calendar: i64, name: &str) {
    execute(
        pool,
        "UPDATE calendars SET name = $2 WHERE id = $1",
        calendar,
        name,
    )
    .await;
}

/// Sets the name of user row `user` by hand (no version bump, no change-log row).
pub async fn set_user_name(pool: &PgPool, user: i64, name: &str) {
    execute(pool, "UPDATE users SET name = $2 WHERE id = $1", user, name).await;
}

/// Sets the name of resource row `resource` by hand (no version bump, no change-log row).
pub async fn set_resource_name(pool: &PgPool, resource: i64, name: &str) {
    execute(
        pool,
        "UPDATE resources SET name = $2 WHERE id = $1",
        resource,
        name,
    )
    .await;
}

/// The `bookings_version` of resource row `resource`.
pub async fn bookings_version(pool: &PgPool, resource: i64) -> i64 {
    int_of(
        pool,
        "SELECT bookings_version FROM resources WHERE id = $1",
        resource,
    )
    .await
}

/// Reservation rows, cancelled ones included.
pub async fn reservation_rows(pool: &PgPool) -> i64 {
    int(pool, "SELECT count(*) FROM reservations").await
}

/// Confirmed reservation rows.
pub async fn confirmed_reservation_rows(pool: &PgPool) -> i64 {
    int(
        pool,
        "SELECT count(*) FROM reservations WHERE status = 'confirmed'",
    )
    .await
}

/// Reservation rows of resource row `resource`, cancelled ones included.
pub async fn reservation_rows_of(pool: &PgPool, resource: i64) -> i64 {
    int_of(
        pool,
        "SELECT count(*) FROM reservations WHERE resource_id = $1",
        resource,
    )
    .await
}

/// Confirmed reservation rows of resource row `resource`.
pub async fn confirmed_reservation_rows_of(pool: &PgPool, resource: i64) -> i64 {
    int_of(
        pool,
        "SELECT count(*) FROM reservations WHERE resource_id = $1 AND status = 'confirmed'",
        resource,
    )
    .await
}

// The change log (outbox).

/// Change-log rows.
pub async fn outbox_rows(pool: &PgPool) -> i64 {
    int(pool, "SELECT count(*) FROM outbox").await
}

/// Change-log rows not yet published.
pub async fn unpublished_outbox_rows(pool: &PgPool) -> i64 {
    int(
        pool,
        "SELECT count(*) FROM outbox WHERE published_at IS NULL",
    )
    .await
}

/// Change-log rows published.
pub async fn published_outbox_rows(pool: &PgPool) -> i64 {
    int(
        pool,
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL",
    )
    .await
}

/// Published change-log rows, and how many distinct stream positions they were published at.
pub async fn published_outbox_rows_and_positions(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT stream_position) FROM outbox \
         WHERE published_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Change-log rows of purges.
pub async fn purge_outbox_rows(pool: &PgPool) -> i64 {
    int(
        pool,
        "SELECT count(*) FROM outbox WHERE event_type LIKE 'purge.%'",
    )
    .await
}

/// Change-log rows about event `event`.
pub async fn outbox_rows_of_event(pool: &PgPool, event: i64) -> i64 {
    int_of(
        pool,
        "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND aggregate_type = 'event'",
        event,
    )
    .await
}

/// The `event_type` (e.g. `event.updated`, `purge.all`) of change-log row `id`.
pub async fn outbox_event_type(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT event_type FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The newest change-log row: its id and whether it is published.
pub async fn newest_outbox_row(pool: &PgPool) -> (i64, bool) {
    sqlx::query_as("SELECT id, published_at IS NOT NULL FROM outbox ORDER BY id DESC LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The trace context (`payload->'trace'`) of the newest change-log row.
pub async fn newest_outbox_trace(pool: &PgPool) -> serde_json::Value {
    sqlx::query_scalar("SELECT payload->'trace' FROM outbox ORDER BY id DESC LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every change-log row in id order: whether it is published, and its age in whole days.
pub async fn outbox_published_and_age_days(pool: &PgPool) -> Vec<(bool, i32)> {
    sqlx::query_as(
        "SELECT published_at IS NOT NULL, extract(day FROM now() - created_at)::int \
         FROM outbox ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Marks every unpublished change-log row published (at position `0:0`), so that no relay
/// delivers a fixture's own rows.
pub async fn mark_outbox_published(pool: &PgPool) {
    sqlx::query(
        "UPDATE outbox SET published_at = now(), stream_position = '0:0' \
         WHERE published_at IS NULL",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Backdates every change-log row by `days` and marks it published, so the pruner may take it.
pub async fn age_outbox_rows(pool: &PgPool, days: i32) {
    sqlx::query(
        "UPDATE outbox SET created_at = created_at - make_interval(days => $1), \
           published_at = coalesce(published_at, now()), stream_position = coalesce(stream_position, '0:0')",
    )
    .bind(days)
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until no transaction of the cluster that began before the newest change-log row (or
/// pruned row) was written still runs: a snapshot taken then sees every row, and its `xmin` is above them all
/// (other tests' transactions on the same server hold `xmin` back while they run).
pub async fn wait_for_older_transactions(pool: &PgPool) {
    for _ in 0..500 {
        let past: bool = sqlx::query_scalar(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) > greatest( \
               coalesce((SELECT max(xid) FROM outbox), '0'::xid8), \
               coalesce((SELECT pruned_xid FROM change_log_horizon), '0'::xid8))",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if past {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("a transaction older than the newest change-log row ran for 5 s");
}

/// Writes a change-log (outbox) row `age_days` old, published or not, as a test's own fixture.
pub async fn insert_outbox_row(pool: &PgPool, age_days: i32, published: bool) {
    sqlx::query(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at, \
         published_at, stream_position) \
         VALUES ('event', 1, 'event.updated', '{}', now() - make_interval(days => $1), \
         CASE WHEN $2 THEN now() END, CASE WHEN $2 THEN '0:1' END)",
    )
    .bind(age_days)
    .bind(published)
    .execute(pool)
    .await
    .expect("an outbox row is written");
}
