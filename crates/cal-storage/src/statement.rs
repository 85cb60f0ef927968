//! One SQL statement as the store observes it. Every statement the store sends is bracketed by a
//! [`Statement`] guard, created right before the statement with a short stable name
//! (`users.by_ids`, `events.bump_version`, …) and finished with the number of rows:
//!
//! - a `db.statement` span (debug level: no cost unless a trace exporter or `RUST_LOG=debug`
//!   wants it) with `db.system = "postgresql"`, `db.statement.name` and `db.rows`; it is a child
//!   of whatever span is current (the cache's `db` tier step of a loader batch, a mutation);
//! - the statement and row counters ([`crate::StoreStats`]);
//! - slow-statement detection: a statement that took at least the store's threshold
//!   ([`Store::with_slow_statement_threshold`], default [`DEFAULT_SLOW_STATEMENT`]) is logged at
//!   warn with its name and duration — never its parameters — and counted per name
//!   ([`crate::StoreStats::slow_statements`]).
//!
//! A guard dropped without [`Statement::done`] is a statement that failed: its span is marked as an
//! error and nothing is counted (as before), but its duration still counts towards slowness.

use crate::{StorageError, Store, StoreStats};
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Statements at least this slow are logged and counted, unless the store says otherwise.
pub const DEFAULT_SLOW_STATEMENT: Duration = Duration::from_millis(200);

/// Slow statements per statement name; every name seen so far is present (with 0 when none was
/// slow), so a metric built from it has a series per statement from the start.
#[derive(Debug, Default)]
pub(crate) struct SlowStatements(RwLock<BTreeMap<&'static str, AtomicU64>>);

impl SlowStatements {
    fn observe(&self, name: &'static str, slow: bool) {
        if let Some(n) = self.0.read().unwrap().get(name) {
            if slow {
                n.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.0
            .write()
            .unwrap()
            .entry(name)
            .or_default()
            .fetch_add(slow as u64, Ordering::Relaxed);
    }
}

impl StoreStats {
    /// `(statement name, slow executions)` for every statement this store has sent (process-wide
    /// figures: only the store's own stats count these).
    pub fn slow_statements(&self) -> Vec<(&'static str, u64)> {
        self.slow
            .0
            .read()
            .unwrap()
            .iter()
            .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// One statement in flight; see the module docs.
pub(crate) struct Statement<'a> {
    store: &'a Store,
    name: &'static str,
    span: tracing::Span,
    started: Instant,
    done: bool,
}

impl Store {
    /// A handle whose statements count as slow from `threshold` on.
    pub fn with_slow_statement_threshold(&self, threshold: Duration) -> Store {
        Store {
            slow_threshold: threshold,
            ..self.clone()
        }
    }

    /// Starts observing the statement `name`; send it, then call [`Statement::done`]. Refused
    /// (nothing to send) when the request has spent its budget.
    pub(crate) fn statement(&self, name: &'static str) -> Result<Statement<'_>, StorageError> {
        if let Some(request) = &self.request {
            request.check_budget()?;
        }
        let span = tracing::debug_span!(
            "db.statement",
            otel.name = name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = "postgresql",
            db.statement.name = name,
            db.rows = tracing::field::Empty,
        );
        Ok(Statement {
            store: self,
            name,
            span,
            started: Instant::now(),
            done: false,
        })
    }
}

impl Statement<'_> {
    /// The statement succeeded and returned (or, for writes without `RETURNING`, is counted as)
    /// `rows` rows.
    pub(crate) fn done(mut self, rows: usize) {
        self.span.record("db.rows", rows as i64);
        self.store.counted(rows);
        self.done = true;
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.span.record("otel.status_code", "ERROR");
        }
        let elapsed = self.started.elapsed();
        let slow = elapsed >= self.store.slow_threshold;
        self.store.global.slow.observe(self.name, slow);
        if slow {
            tracing::warn!(
                statement = self.name,
                elapsed_ms = elapsed.as_millis() as u64,
                failed = !self.done,
                "slow SQL statement"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every file of the crate that talks to PostgreSQL on behalf of a request or the relay
    /// (`seed.rs` is a one-off command's bulk load; `explain.rs` reads plans for tests).
    const SOURCES: [(&str, &str); 10] = [
        ("lib.rs", include_str!("lib.rs")),
        ("ops.rs", include_str!("ops.rs")),
        ("outbox.rs", include_str!("outbox.rs")),
        ("purge.rs", include_str!("purge.rs")),
        ("reads.rs", include_str!("reads.rs")),
        ("writes/mod.rs", include_str!("writes/mod.rs")),
        ("writes/calendars.rs", include_str!("writes/calendars.rs")),
        ("writes/events.rs", include_str!("writes/events.rs")),
        (
            "writes/reservations.rs",
            include_str!("writes/reservations.rs"),
        ),
        ("writes/series.rs", include_str!("writes/series.rs")),
    ];

    /// What sends a statement (or a transaction's BEGIN/COMMIT) to the server. (`Store::begin`
    /// and `Store::fetch` are the store's own guarded wrappers.)
    const SENDS: [&str; 6] = [
        ".fetch_all(",
        ".fetch_one(",
        ".fetch_optional(",
        ".execute(",
        "pool().begin()",
        ".commit()",
    ];

    /// Marks a send that is deliberately not a request's statement (seeding, readiness), or a
    /// second way of sending the statement of the guard above it.
    const EXEMPT: [&str; 2] = ["// not a request statement", "// same statement"];

    /// Every statement the store sends is observed: within each function, no more sends than
    /// `statement(…)` guards. A query added without its guard fails here, so no statement can
    /// bypass the request's count (and its budget) by accident.
    #[test]
    fn every_statement_is_observed() {
        let mut unguarded = Vec::new();
        for (file, text) in SOURCES {
            let (mut guards, mut sends) = (0, Vec::new());
            let mut check = |guards: &mut usize, sends: &mut Vec<(usize, String)>| {
                if sends.len() > *guards {
                    unguarded.extend(sends.iter().map(|(n, l)| format!("{file}:{n}: {l}")));
                }
                *guards = 0;
                sends.clear();
            };
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("fn ")
                    || code.starts_with("pub fn ")
                    || code.starts_with("pub(crate) fn ")
                    || code.starts_with("pub(super) fn ")
                    || code.starts_with("async fn ")
                    || code.starts_with("pub async fn ")
                    || code.starts_with("pub(crate) async fn ")
                    || code.starts_with("pub(super) async fn ")
                    || code.starts_with("#[cfg(test)]")
                {
                    check(&mut guards, &mut sends);
                }
                if code.starts_with("//") || EXEMPT.iter().any(|e| line.contains(e)) {
                    continue;
                }
                guards += line.matches(".statement(").count();
                if SENDS.iter().any(|s| line.contains(s)) {
                    sends.push((n + 1, code.to_owned()));
                }
            }
            check(&mut guards, &mut sends);
        }
        assert!(
            unguarded.is_empty(),
            "statements sent without a `statement(…)` guard:\n{}",
            unguarded.join("\n")
        );
    }
}
