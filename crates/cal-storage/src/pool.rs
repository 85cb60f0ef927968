//! The service's connection pool, and what it does when PostgreSQL goes away and comes back.
//!
//! sqlx does not test a pooled connection before handing it out (switched off: it was one extra
//! round trip per statement, ~8% of a cold month view's server CPU). So after PostgreSQL
//! restarts, every idle connection of the pool is dead, and each would fail the next request
//! that took it: up to the pool's size of failures, trickling in as traffic reaches them, long
//! after the database is back.
//!
//! Instead, the first statement that fails because its connection is gone records the moment
//! ([`note_if_lost`], called for every sqlx error the store converts). From then on the pool
//! closes, without a round trip, every idle connection opened before that moment rather than
//! hand it out, and opens a new one. Starting a transaction and the readiness ping, which have
//! done nothing yet when they fail, are retried once on such a fresh connection, so a write or
//! `/ready` never fails on a connection that died in the past. While the server is down,
//! acquiring waits (sqlx retries refused connections) until [`ACQUIRE_TIMEOUT`], then fails.
//!
//! The moment is process-wide: a loss seen by one pool also retires the older connections of any
//! other pool built from [`pool_options`] in the process (a reconnect each, and only after a loss).

use sqlx::postgres::PgPoolOptions;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a statement waits for a pooled connection (including connecting, which sqlx retries
/// while the server refuses connections) before it fails.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The service's pool settings, in one place for the binary and the tests that exercise them.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|_, meta| {
            let usable = opened_after_last_loss(meta.age);
            Box::pin(async move { Ok(usable) })
        })
}

/// Nanoseconds after [`base`] of the last connection loss, plus one (0: none seen).
static LOST_AT: AtomicU64 = AtomicU64::new(0);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos_since_base() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Whether `e` means the connection it happened on is gone: the socket failed, or the server
/// ended the session (class 08 connection exceptions, class 57P: shutting down, crashed, not
/// accepting connections yet).
pub fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// Records a connection loss if `e` is one; answers whether it was.
pub(crate) fn note_if_lost(e: &sqlx::Error) -> bool {
    let lost = is_connection_lost(e);
    if lost {
        LOST_AT.fetch_max(nanos_since_base() + 1, Ordering::AcqRel);
    }
    lost
}

/// Whether a connection of this age was opened after the last recorded loss.
fn opened_after_last_loss(age: Duration) -> bool {
    let lost = LOST_AT.load(Ordering::Acquire);
    if lost == 0 {
        return true;
    }
    let age = u64::try_from(age.as_nanos()).unwrap_or(u64::MAX);
    nanos_since_base().saturating_sub(age) >= lost
}

/// Runs `op`, and once more if it failed on a lost connection. Only for operations that did
/// nothing on the server when they failed that way (`BEGIN`, a ping).
pub(crate) async fn once_more_if_lost<T, F, Fut>(op: F) -> Result<T, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match op().await {
        Err(e) if note_if_lost(&e) => op().await,
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_opened_before_a_loss_are_retired() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert!(note_if_lost(&io));
        assert!(
            !opened_after_last_loss(Duration::from_secs(3600)),
            "opened before"
        );
        std::thread::sleep(Duration::from_millis(1));
        assert!(opened_after_last_loss(Duration::ZERO), "opened since");
    }

    #[test]
    fn only_connection_errors_count_as_losses() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        assert!(is_connection_lost(&io));
        assert!(!is_connection_lost(&sqlx::Error::RowNotFound));
        assert!(!is_connection_lost(&sqlx::Error::PoolTimedOut));
    }
}
