//! The month view's window, read through month buckets: `v1:calendar:{id}:g{generation}:events:{yyyy-mm}`
//! holds everything one calendar shows in one UTC month (single events and overrides overlapping
//! it, the series that may touch it and their overrides), as of the calendar's generation (its
//! version, bumped by every event or membership change). A write never has to find the buckets it
//! touches: it bumps the generation, and readers of the new calendar summary read new buckets.
//! All missing months of a window are loaded with one statement.

use super::range_slices::load_slices;
use super::rc;
use crate::error::ApiResult;
use crate::tiers::Tiers;
use async_graphql::Context;
use cal_cache::Loaded as Filled;
use cal_cache::RequestStats;
use cal_domain as domain;
use cal_domain::cache_keys::{self, KeyKind};
use cal_domain::{MAX_EVENT_DURATION, TimeWindow};
use cal_storage::Store;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

/// What a window (or one month) shows, before series expansion.
#[derive(Debug, Clone, Default, Serialize, Deserialize, get_size2::GetSize)]
pub(crate) struct Bucket {
    // `Arc`s: a warm read shares the cached rows instead of copying them.
    pub singles: Vec<Arc<domain::Event>>,
    pub masters: Vec<Arc<domain::Event>>,
    pub overrides: Vec<Arc<domain::Event>>,
}

impl Bucket {
    /// The part of `rows` that belongs to the month `[from, to)`.
    fn month(rows: &cal_storage::WindowRows, from: DateTime<Utc>, to: DateTime<Utc>) -> Bucket {
        let pick = |list: &[domain::Event],
                    keep: &dyn Fn(&domain::Event) -> bool|
         -> Vec<Arc<domain::Event>> {
            list.iter()
                .filter(|e| keep(e))
                .map(|e| Arc::new(e.clone()))
                .collect()
        };
        Bucket {
            singles: pick(&rows.singles, &|e| e.start_time < to && e.end_time > from),
            // A master's rule decides which months it reaches; the database already dropped the
            // series that ended before the span, so keep every one that starts before this month ends.
            masters: pick(&rows.masters, &|m| m.start_time < to),
            overrides: pick(&rows.overrides, &|o| {
                o.original_start_time
                    .is_some_and(|s| s >= from - MAX_EVENT_DURATION && s < to)
            }),
        }
    }

    fn absorb(&mut self, other: &Bucket, seen: &mut HashSet<(u8, domain::EventId)>) {
        for (part, list, into) in [
            (0u8, &other.singles, &mut self.singles),
            (1, &other.masters, &mut self.masters),
            (2, &other.overrides, &mut self.overrides),
        ] {
            for e in list {
                if seen.insert((part, e.id)) {
                    into.push(e.clone());
                }
            }
        }
    }
}

/// Everything `cal` shows in `w`, through the month buckets of its current generation.
pub(crate) async fn window_rows(
    ctx: &Context<'_>,
    cal: &domain::Calendar,
    w: &TimeWindow,
) -> ApiResult<Bucket> {
    let r = rc(ctx);
    load_window(&r.tiers, &r.store, &r.cache_stats, cal, w).await
}

/// [`window_rows`] without a GraphQL context (cache warming uses it).
pub(crate) async fn load_window(
    tiers: &Tiers,
    store: &Store,
    stats: &RequestStats,
    cal: &domain::Calendar,
    w: &TimeWindow,
) -> ApiResult<Bucket> {
    let months = cache_keys::months_covering(w.from(), w.to());
    let specs: Vec<_> = months
        .iter()
        .map(|m| {
            tiers.spec(
                KeyKind::MonthBucket,
                cache_keys::month_bucket(cal.id, cal.version, *m),
            )
        })
        .collect();
    let (store, cal_id) = (store.cache_backed(), cal.id);
    let buckets = load_slices(
        tiers,
        stats,
        &specs,
        months.into_iter().map(cache_keys::month_span).collect(),
        cal.version,
        move |span| async move { store.events_in_window(cal_id, &span, None, i64::MAX).await },
        |rows, (from, to)| Bucket::month(rows, from, to),
    )
    .await?;
    let mut out = Bucket::default();
    let mut seen = HashSet::new();
    for b in buckets.iter().flatten() {
        out.absorb(b, &mut seen);
    }
    Ok(out)
}

/// Loads the calendar summaries and the month buckets of `[from, to)` for `calendars` into the
/// tiers (start-up warming). Failures are logged, never fatal.
pub async fn warm(
    tiers: &Tiers,
    store: &Store,
    calendars: &[domain::CalendarId],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> usize {
    let stats = RequestStats::default();
    let Ok(w) = TimeWindow::parse(from, to, chrono::Duration::days(3660)) else {
        return 0;
    };
    let specs: Vec<_> = calendars
        .iter()
        .map(|c| tiers.spec(KeyKind::CalendarSummary, cache_keys::calendar_summary(*c)))
        .collect();
    let owned = store.clone();
    let ids = calendars.to_vec();
    let cals = tiers
        .cache
        .get_many(
            &specs,
            Some(&stats),
            move |missing: Vec<usize>| async move {
                let want: Vec<domain::CalendarId> = missing.iter().map(|&i| ids[i]).collect();
                let rows = owned.calendars_by_ids(&want).await?;
                Ok::<_, cal_storage::StorageError>(
                    missing
                        .into_iter()
                        .map(|i| {
                            let value = rows.iter().find(|c| c.id == ids[i]).cloned();
                            let version =
                                value.as_ref().map_or(0, |c: &domain::Calendar| c.version);
                            Filled {
                                index: i,
                                value,
                                version,
                            }
                        })
                        .collect(),
                )
            },
        )
        .await;
    let mut warmed = 0;
    match cals {
        Ok(cals) => {
            for cal in cals.into_iter().flatten() {
                match load_window(tiers, store, &stats, &cal, &w).await {
                    Ok(_) => warmed += 1,
                    Err(e) => {
                        tracing::warn!(calendar = %cal.id, error = ?e, "warming a calendar failed")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "warming: loading calendars failed"),
    }
    warmed
}
