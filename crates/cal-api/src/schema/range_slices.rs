//! Values that are each one time span's share of a range query (a calendar's month bucket, a
//! resource's day of bookings), read through the tiers: all keys missing in a request are loaded
//! with ONE statement over the range from the first missing span's start to the last one's end,
//! and each value is cut from those rows.

use crate::error::{ApiError, ApiResult};
use crate::tiers::Tiers;
use cal_cache::{GetSize, KeySpec, Loaded, RequestStats};
use cal_domain::TimeWindow;
use cal_storage::StorageError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

/// `[start, end)`.
pub(crate) type Span = (DateTime<Utc>, DateTime<Utc>);

/// One value per key of `specs`, key `i` holding `cut(rows, spans[i])` as of `version`. `spans`
/// are in ascending order; `load` reads the rows of a window.
pub(crate) async fn load_slices<R, V, Load, Fut>(
    tiers: &Tiers,
    stats: &RequestStats,
    specs: &[KeySpec],
    spans: Vec<Span>,
    version: i64,
    load: Load,
    cut: fn(&R, Span) -> V,
) -> ApiResult<Vec<Option<Arc<V>>>>
where
    V: Serialize + DeserializeOwned + GetSize + Send + Sync + 'static,
    Load: FnOnce(TimeWindow) -> Fut + Send,
    Fut: Future<Output = Result<R, StorageError>> + Send,
{
    tiers
        .cache
        .get_many(specs, Some(stats), move |missing: Vec<usize>| async move {
            let from = spans[missing[0]].0;
            let to = spans[*missing.last().expect("a load has keys")].1;
            let window = TimeWindow::parse(from, to, chrono::Duration::days(3660))
                .map_err(|e| StorageError::Invalid(e.0))?;
            let rows = load(window).await?;
            Ok::<_, StorageError>(
                missing
                    .into_iter()
                    .map(|i| Loaded {
                        index: i,
                        value: Some(cut(&rows, spans[i])),
                        version,
                    })
                    .collect(),
            )
        })
        .await
        .map_err(ApiError::from)
}
