//! The only crate with SQL. It owns the PostgreSQL schema (`migrations/` at the workspace root),
//! batch reads by id lists (`= ANY($1)`, one statement per batch), window queries, and
//! transactional writes that bump `version` and append an outbox row in the same transaction.
//!
//! It knows nothing of GraphQL or caches. Every statement it sends is counted ([`StoreStats`]), so
//! tests can assert how many statements a request costs and the API can report it per request.

mod error;
pub mod explain;
mod reads;
mod rows;
pub mod seed;
mod writes;

pub use error::{Conflict, StorageError};
pub use explain::seq_scans;
pub use reads::{VersionedList, WindowRows};
pub use seed::{NoProgress, Progress, Scale, SeedSummary, UnknownScale};
pub use sqlx::PgPool;
pub use writes::{EventPatch, NewAttendee, NewEvent, NewReservation};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Migrations embedded at compile time from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Statement and row counters. One lives as long as the [`Store`] (process-wide figures); a
/// request may attach its own with [`Store::with_request_stats`].
#[derive(Debug, Default)]
pub struct StoreStats {
    statements: AtomicU64,
    rows: AtomicU64,
    /// Statements sent through a [`Store::cache_backed`] handle (loads that fill the cache).
    cache_backed: AtomicU64,
}

impl StoreStats {
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Statements whose results did not go through the cache (reads and writes alike).
    pub fn uncached_statements(&self) -> u64 {
        self.statements() - self.cache_backed.load(Ordering::Relaxed)
    }
}

/// What one committed write changed: the events (with their new versions) and the calendars
/// whose version (cache generation) it bumped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    pub events: Vec<cal_domain::cache_keys::EventChange>,
    pub calendars: Vec<(cal_domain::CalendarId, i64)>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.calendars.is_empty()
    }
}

pub use cal_domain::cache_keys::EventChange;

/// Told about every committed write before the write call returns (the API plugs cache
/// invalidation in here, so this crate never sees a cache).
#[async_trait::async_trait]
pub trait ChangeSink: Send + Sync {
    async fn committed(&self, changes: &ChangeSet);
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    global: Arc<StoreStats>,
    request: Option<Arc<StoreStats>>,
    sink: Option<Arc<dyn ChangeSink>>,
    cache_backed: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool)
            .field("has_sink", &self.sink.is_some())
            .finish()
    }
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            global: Arc::default(),
            request: None,
            sink: None,
            cache_backed: false,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A handle whose writes report their changes to `sink` after committing.
    pub fn with_change_sink(&self, sink: Arc<dyn ChangeSink>) -> Store {
        Store {
            sink: Some(sink),
            ..self.clone()
        }
    }

    /// Process-wide figures.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.global
    }

    /// A handle that also counts into `stats` (one request's figures).
    pub fn with_request_stats(&self, stats: Arc<StoreStats>) -> Store {
        Store {
            request: Some(stats),
            ..self.clone()
        }
    }

    /// A handle for loads whose results fill the cache: its statements count as cache-backed, so
    /// a caller can tell whether a request read anything past the cache
    /// ([`StoreStats::uncached_statements`]).
    pub fn cache_backed(&self) -> Store {
        Store {
            cache_backed: true,
            ..self.clone()
        }
    }

    /// Records one statement returning `rows` rows. Called by every method that talks to the database.
    fn counted(&self, rows: usize) {
        for s in std::iter::once(&self.global).chain(self.request.as_ref()) {
            s.statements.fetch_add(1, Ordering::Relaxed);
            s.rows.fetch_add(rows as u64, Ordering::Relaxed);
            if self.cache_backed {
                s.cache_backed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `SELECT 1`, for readiness.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
