//! A resource's confirmed bookings in a window, read through day entries:
//! `v1:resource:{id}:g{bookings_version}:availability:{yyyy-mm-dd}` holds the bookings that overlap
//! one UTC day, as of the resource's bookings version (bumped by the database on every change of
//! its reservations). Readers take the version from the (cached) resource, so after a booking
//! they read new entries; all missing days of a window are loaded with one statement.

use super::range_slices::load_slices;
use crate::error::ApiResult;
use crate::tiers::Tiers;
use cal_cache::RequestStats;
use cal_domain as domain;
use cal_domain::cache_keys::{self, KeyKind};
use cal_storage::Store;

/// The bookings of `res` overlapping `w` (not clipped, possibly repeated across days: callers
/// merge them).
pub(crate) async fn bookings(
    tiers: &Tiers,
    store: &Store,
    stats: &RequestStats,
    res: &domain::Resource,
    w: &domain::TimeWindow,
) -> ApiResult<Vec<domain::Interval>> {
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
    let (store, id) = (store.cache_backed(), res.id);
    let per_day = load_slices(
        tiers,
        stats,
        &specs,
        days.into_iter().map(cache_keys::day_span).collect(),
        res.bookings_version,
        move |span| async move { store.busy_of_resources(&[id], &span).await },
        |rows, (from, to)| {
            rows.iter()
                .map(|(_, booked)| *booked)
                .filter(|b: &domain::Interval| b.start < to && b.end > from)
                .collect::<Vec<_>>()
        },
    )
    .await?;
    Ok(per_day
        .into_iter()
        .flatten()
        .flat_map(|day| day.iter().copied().collect::<Vec<_>>())
        .collect())
}
