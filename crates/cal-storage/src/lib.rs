//! The only crate with SQL. It owns the PostgreSQL schema (`migrations/` at the workspace root),
//! batch reads by id lists (`= ANY($1)`, one statement per batch), window queries, and
//! transactional writes that bump `version` and append an outbox row in the same transaction.
//!
//! It knows nothing of GraphQL or caches. Every statement it sends is counted ([`StoreStats`]), so
//! tests can assert how many statements a request costs and the API can report it per request.
//!
//! Modules:
//!
//! - `reads`: batch reads by id lists, window and free/busy queries;
//! - `writes`: the write transaction, its commit and its change-log (outbox) row, and the input
//!   types of the writes (`mod.rs`), with the writes themselves grouped by what they change:
//!   `writes::calendars` (users, resources, calendars, sharing), `writes::events` (single events
//!   and attendees), `writes::reservations` (resource bookings) and `writes::series` (edits of
//!   recurring series);
//! - `outbox`: the change log's claim/prune side, read by the relay;
//! - `purge`: operator purges;
//! - [`sync`]: incremental sync's reads (a calendar's live rows, the events changed between two
//!   snapshots of the change log) and the key its tokens are signed with;
//! - `statement`: the one guard every statement passes (count, span, budget, slow log);
//! - `pool`: pool options and recovery after a database restart;
//! - `error`: [`StorageError`], with client-caused constraint violations mapped by name;
//! - `rows`: column lists and row decoding; `ops`: the binary's commands (connecting and
//!   creating the database, fixtures);
//! - [`seed`]: bulk seeding; [`explain`]: EXPLAIN of the hot queries.

mod error;
pub mod explain;
mod ops;
mod outbox;
mod pool;
mod purge;
mod reads;
mod rows;
pub mod seed;
mod statement;
pub mod sync;
mod writes;

pub use error::{Conflict, StorageError};
pub use explain::seq_scans;
pub use ops::{ConnectError, connect};
pub use outbox::{ClaimedOutbox, OutboxRow};
pub use pool::{ACQUIRE_TIMEOUT, is_connection_lost, pool_options};
pub use purge::{PurgeScope, Purged};
pub use reads::{VersionedList, WindowRows};
pub use seed::{NoProgress, Progress, Scale, SeedSummary, UnknownScale};
/// The driver's error, inside [`StorageError::Database`] (named here so that no other crate names the
/// driver).
pub use sqlx::Error as DriverError;
pub use sqlx::PgPool;
pub use statement::DEFAULT_SLOW_STATEMENT;
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
    /// What the change sink answered for the last commit (e.g. a consistency token).
    commit_token: std::sync::Mutex<Option<String>>,
    /// Slow statements by name (see [`StoreStats::slow_statements`]).
    slow: statement::SlowStatements,
    /// The most a request may spend (`None`: no ceiling, e.g. the store's own figures).
    budget: Option<Budget>,
}

/// A request's ceiling on what it may cost the database: once it has sent `statements`
/// statements or read `rows` rows, its next statement is refused with
/// [`StorageError::BudgetExceeded`] instead of being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub statements: u64,
    pub rows: u64,
}

impl StoreStats {
    /// Figures for one request, which may spend at most `budget`.
    pub fn with_budget(budget: Budget) -> Self {
        Self {
            budget: Some(budget),
            ..Self::default()
        }
    }

    /// `Err` when the next statement would go past the budget.
    pub(crate) fn check_budget(&self) -> Result<(), StorageError> {
        let Some(b) = self.budget else { return Ok(()) };
        if self.statements() >= b.statements {
            return Err(StorageError::BudgetExceeded {
                what: "statements",
                limit: b.statements,
            });
        }
        if self.rows() > b.rows {
            return Err(StorageError::BudgetExceeded {
                what: "rows",
                limit: b.rows,
            });
        }
        Ok(())
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// What the [`ChangeSink`] answered for this handle's last commit, e.g. the position of its
    /// invalidation in the bus's stream.
    pub fn commit_token(&self) -> Option<String> {
        self.commit_token.lock().unwrap().clone()
    }

    /// Statements whose results did not go through the cache (reads and writes alike).
    pub fn uncached_statements(&self) -> u64 {
        self.statements() - self.cache_backed.load(Ordering::Relaxed)
    }
}

/// What one committed write changed: the events (with their new versions), the calendars whose
/// version (cache generation) it bumped, the resources and users whose version moved, and
/// whether it was a purge of everything. It is written, as facts and never as cache keys, into
/// the transaction's change-log (outbox) row (`payload.changed`), from which every instance's
/// relay and consumer derive what to invalidate.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ChangeSet {
    pub events: Vec<cal_domain::cache_keys::EventChange>,
    pub calendars: Vec<(cal_domain::CalendarId, i64)>,
    /// The resources booked by the changed events, with their bookings version after the commit
    /// (bumped by the database whenever a reservation of theirs changed).
    pub resources: Vec<(cal_domain::ResourceId, i64)>,
    /// Users whose profile version moved (a purge of the user).
    pub users: Vec<(cal_domain::UserId, i64)>,
    /// A purge of every cached value; its generation is the change-log row's id (`outbox_id`).
    pub purge_all: bool,
    /// The transaction's outbox row (it carries the same facts, durably).
    #[serde(skip)]
    pub outbox_id: Option<i64>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.calendars.is_empty()
            && self.resources.is_empty()
            && self.users.is_empty()
            && !self.purge_all
    }
}

pub use cal_domain::cache_keys::EventChange;

/// Told about every committed write before the write call returns (the API plugs cache
/// invalidation in here, so this crate never sees a cache).
#[async_trait::async_trait]
pub trait ChangeSink: Send + Sync {
    /// Returns an opaque token the writer may hand to its client (see [`StoreStats::commit_token`]).
    async fn committed(&self, changes: &ChangeSet) -> Option<String>;
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    global: Arc<StoreStats>,
    request: Option<Arc<StoreStats>>,
    sink: Option<Arc<dyn ChangeSink>>,
    cache_backed: bool,
    /// The instance id written into outbox rows (see [`outbox`]).
    origin: Option<Arc<str>>,
    /// The writing request's W3C trace context, carried in its outbox rows to the bus.
    trace_context: Option<Arc<Vec<(String, String)>>>,
    /// Statements at least this slow are logged and counted (see [`statement`]).
    slow_threshold: std::time::Duration,
    /// One request's reads share this connection (see [`Store::with_request_connection`]).
    conn: Option<Arc<RequestConnection>>,
    /// The sync tokens' key, read once per store ([`Store::sync_token_key`]).
    sync_key: Arc<tokio::sync::OnceCell<Arc<[u8]>>>,
}

/// A pooled connection taken on a request's first read and given back by
/// [`Store::release_connection`] (or when the request's last handle drops). sqlx tests a
/// connection with a round trip each time it goes back to the pool; a month view's five reads on
/// one connection pay that once instead of five times, on both sides of the socket.
#[derive(Default)]
struct RequestConnection {
    conn: tokio::sync::Mutex<Option<sqlx::pool::PoolConnection<sqlx::Postgres>>>,
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
            origin: None,
            trace_context: None,
            slow_threshold: DEFAULT_SLOW_STATEMENT,
            conn: None,
            sync_key: Arc::default(),
        }
    }

    /// A handle whose reads run one after another on one connection, taken from the pool at the
    /// first read. Writes still take their own (a transaction never waits on a reader).
    pub fn with_request_connection(&self) -> Store {
        Store {
            conn: Some(Arc::default()),
            ..self.clone()
        }
    }

    /// Gives the request's connection back to the pool; a later read takes one again.
    pub async fn release_connection(&self) {
        if let Some(rc) = &self.conn {
            rc.conn.lock().await.take();
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This handle on another pool, with the same figures, sink and origin: for reads that
    /// must not queue behind the main pool's (a subscription's, see cal-api's `live`).
    pub fn on_pool(&self, pool: PgPool) -> Store {
        Store {
            pool,
            conn: None,
            ..self.clone()
        }
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

    /// A handle whose outbox rows name `origin` (this instance), so its relay publishes them at once.
    pub fn with_origin(&self, origin: &str) -> Store {
        Store {
            origin: Some(origin.into()),
            ..self.clone()
        }
    }

    /// A handle whose outbox rows carry `context` (`traceparent`, `tracestate`).
    pub fn with_trace_context(&self, context: Vec<(String, String)>) -> Store {
        Store {
            trace_context: (!context.is_empty()).then(|| Arc::new(context)),
            ..self.clone()
        }
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    fn record_commit_token(&self, token: Option<String>) {
        if let Some(request) = &self.request {
            *request.commit_token.lock().unwrap() = token;
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

    /// `SELECT 1`, for readiness; once more on a fresh connection if the first one was dead
    /// (see [`pool`]): the answer is about the database now, not about a past restart.
    pub async fn ping(&self) -> Result<(), StorageError> {
        pool::once_more_if_lost(|| sqlx::query("SELECT 1").execute(&self.pool)).await?; // not a request statement
        Ok(())
    }
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
