//! A resource's confirmed bookings in a window, read through day entries:
//! `v1:resource:{id}:g{bookings_version}:availability:{yyyy-mm-dd}` holds the bookings that overlap
//! one UTC day, as of the resource's bookings version (bumped by the database on every change of
//! its reservations). Readers take the version from the (cached) resource, so after a booking
//! they read new entries; all missing days of a window are loaded with one statement.

use crate::error::{ApiError, ApiResult};
use crate::tiers::Tiers;
use cal_cache::{Loaded, RequestStats};
use cal_domain as d;
use cal_domain::cache_keys::{self, KeyKind};
use cal_storage::Store;

/// The bookings of `res` overlapping `w` (not clipped, possibly repeated across days: callers
/// merge them).
pub(crate) async fn bookings(
    tiers: &Tiers,
    store: &Store,
    stats: &RequestStats,
    res: &d::Resource,
    w: &d::TimeWindow,
) -> ApiResult<Vec<d::Interval>> {
    let days = cache_keys::days_covering(w.from(), w.to());
    let specs: Vec<_> = days
        .iter()
        .map(|day| {
            tiers.spec(
                KeyKind::ResourceAvailability,
                cache_keys::resource_availability(res.id, res.bookings_version, *day),
            )
        })
        .collect();
    let (store, id, generation, wanted) = (
        store.cache_backed(),
        res.id,
        res.bookings_version,
        days.clone(),
    );
    let per_day = tiers
        .cache
        .get_many(&specs, Some(stats), move |missing: Vec<usize>| async move {
            let (from, _) = cache_keys::day_span(wanted[missing[0]]);
            let (_, to) = cache_keys::day_span(wanted[*missing.last().expect("a load has keys")]);
            let span = d::TimeWindow::parse(from, to, chrono::Duration::days(3660))
                .map_err(|e| cal_storage::StorageError::Invalid(e.0))?;
            let rows = store.busy_of_resources(&[id], &span).await?;
            Ok::<_, cal_storage::StorageError>(
                missing
                    .into_iter()
                    .map(|i| {
                        let (ds, de) = cache_keys::day_span(wanted[i]);
                        let day: Vec<d::Interval> = rows
                            .iter()
                            .map(|(_, iv)| *iv)
                            .filter(|iv| iv.start < de && iv.end > ds)
                            .collect();
                        Loaded {
                            index: i,
                            value: Some(day),
                            version: generation,
                        }
                    })
                    .collect(),
            )
        })
        .await
        .map_err(ApiError::from)?;
    Ok(per_day
        .iter()
        .flatten()
        .flat_map(|day| day.iter().copied())
        .collect())
}
