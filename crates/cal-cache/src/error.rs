//! The errors [`crate::TieredCache::new`] can return. Redis being down is deliberately not one of
//! them: only a malformed configuration or a metrics registration clash is.

/// Why a cache could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The Redis URL could not be parsed (a Redis that is down is not an error).
    #[error("invalid redis url: {0}")]
    RedisUrl(#[source] redis::RedisError),
    /// The cache's metrics could not be registered (for example twice in one registry).
    #[error("could not register cache metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
