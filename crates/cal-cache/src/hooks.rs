//! Test hooks around a fill, so interleaving tests can pause a reader between its load and its
//! fill while a writer commits and invalidates. Production passes no hooks; the hooks must not
//! change what the cache does, only when.

use async_trait::async_trait;

/// Async callbacks called by the single loader of a batch (never by single-flight followers).
#[async_trait]
pub trait FillHooks: Send + Sync {
    /// After the loader returned and before anything is written to L2 or L1.
    async fn after_load(&self, _keys: &[String]) {}
    /// After the L2 and L1 fills of the batch are done (accepted or refused).
    async fn after_fill(&self, _keys: &[String]) {}
}
