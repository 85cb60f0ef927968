//! The invalidation bus: how one process tells the others which keys it invalidated, so they
//! evict their L1 copies. This module holds the object-safe trait and an in-process
//! implementation (tokio broadcast) for tests and single-process deployments; a Kafka
//! implementation lives in its own crate. It must not touch the cache itself: the subscriber
//! calls [`crate::TieredCache::apply_remote`].

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Keys a writer invalidated, each with the version its commit produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// `(key, new_version)` pairs, as passed to [`crate::TieredCache::invalidate`].
    pub keys: Vec<(String, i64)>,
    /// Who published it (e.g. a host/instance id), so a process can recognise its own messages.
    pub origin: String,
    /// The publisher's sequence number, for ordering diagnostics.
    pub seq: u64,
}

/// Bus failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The subscriber fell behind and `n` messages were lost: it should clear its whole L1.
    #[error("subscriber lagged; {0} invalidations lost")]
    Lagged(u64),
    /// The message could not be published.
    #[error("publish failed: {0}")]
    Publish(String),
}

/// Publish invalidations and subscribe to everyone's. Object-safe: use as
/// `Arc<dyn InvalidationBus>`.
#[async_trait]
pub trait InvalidationBus: Send + Sync {
    /// Sends `inv` to every subscriber (including, possibly, the publisher's own).
    async fn publish(&self, inv: Invalidation) -> Result<(), BusError>;
    /// A stream of every invalidation published from now on; `Err(Lagged)` when some were lost.
    fn subscribe(&self) -> BoxStream<'static, Result<Invalidation, BusError>>;
}

/// An in-process bus over `tokio::sync::broadcast`.
#[derive(Debug, Clone)]
pub struct InProcessBus {
    tx: broadcast::Sender<Invalidation>,
}

impl InProcessBus {
    /// A bus whose slow subscribers lag after `capacity` unread messages.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

#[async_trait]
impl InvalidationBus for InProcessBus {
    async fn publish(&self, inv: Invalidation) -> Result<(), BusError> {
        // No subscribers is not an error: nobody has an L1 to evict.
        let _ = self.tx.send(inv);
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, Result<Invalidation, BusError>> {
        let rx = self.tx.subscribe();
        Box::pin(stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(inv) => Some((Ok(inv), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((Err(BusError::Lagged(n)), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn subscribers_receive_and_lag_is_reported() {
        let bus: std::sync::Arc<dyn InvalidationBus> = std::sync::Arc::new(InProcessBus::new(2));
        let mut sub = bus.subscribe();
        let inv = |seq| Invalidation {
            keys: vec![("k".into(), seq as i64)],
            origin: "a".into(),
            seq,
        };
        bus.publish(inv(1)).await.unwrap();
        assert_eq!(sub.next().await, Some(Ok(inv(1))));
        for seq in 2..=5 {
            bus.publish(inv(seq)).await.unwrap();
        }
        assert_eq!(sub.next().await, Some(Err(BusError::Lagged(2))));
        assert_eq!(sub.next().await, Some(Ok(inv(4))));
    }
}
