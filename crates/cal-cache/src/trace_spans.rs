//! The spans of a lookup batch: one per tier step of [`crate::TieredCache::get_many`], named
//! `cache.lookup`, with `cache.tier` (`l1`, `l2` or `db`), the number of keys the step looked up
//! (`cache.keys`) and how many it found (`cache.hits`) or not (`cache.misses`). The `l2` step's
//! span holds the Redis round trips (`redis` spans); the `db` step's span holds the loader call,
//! so the caller's SQL spans nest under it, and the fills of both tiers.
//!
//! Debug level: with no trace exporter and the default log filter they are never created. Numbers
//! are recorded as `i64` (tracing-opentelemetry exports `u64` fields as strings).

use tracing::Span;

/// The span of one tier step over `keys` keys.
pub(crate) fn tier(tier: &'static str, keys: usize) -> Span {
    tracing::debug_span!(
        "cache.lookup",
        otel.name = tier_name(tier),
        cache.tier = tier,
        cache.keys = keys as i64,
        cache.hits = tracing::field::Empty,
        cache.misses = tracing::field::Empty,
    )
}

fn tier_name(tier: &str) -> &'static str {
    match tier {
        "l1" => "cache l1",
        "l2" => "cache l2",
        _ => "cache db",
    }
}

/// Records the outcome of the step: `hits` of its `keys` keys were found.
pub(crate) fn found(span: &Span, keys: usize, hits: usize) {
    span.record("cache.hits", hits as i64);
    span.record("cache.misses", keys.saturating_sub(hits) as i64);
}
