//! The invalidation bus: how one process tells the others which keys it invalidated, so they
//! evict their L1 copies. This module holds the object-safe trait and an in-process
//! implementation (tokio broadcast) for tests and single-process deployments; a Kafka
//! implementation lives in its own crate. It must not touch the cache itself: the subscriber
//! calls [`crate::TieredCache::apply_remote`].

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Where a message sits in the bus's stream: a Kafka partition and offset (the in-process bus
/// has no positions). Written as `partition:offset`; it is the consistency token a mutation
/// hands back, and a reader waits until its instance has applied the stream up to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (p, o) = s
            .split_once(':')
            .ok_or_else(|| format!("expected partition:offset, got {s:?}"))?;
        let partition = p
            .trim()
            .parse()
            .map_err(|_| format!("bad partition in {s:?}"))?;
        let offset = o
            .trim()
            .parse()
            .map_err(|_| format!("bad offset in {s:?}"))?;
        if partition < 0 || offset < 0 {
            return Err(format!("negative position in {s:?}"));
        }
        Ok(Self { partition, offset })
    }
}

/// Keys a writer invalidated, each with the version its commit produced. A message with no keys
/// is a heartbeat: it only proves that the stream is alive and how far behind a reader is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// `(key, new_version)` pairs, as passed to [`crate::TieredCache::invalidate`].
    pub keys: Vec<(String, i64)>,
    /// Who published it (e.g. a host/instance id), so a process can recognise its own messages.
    pub origin: String,
    /// The publisher's sequence number, for ordering diagnostics.
    pub seq: u64,
    /// The durable outbox row this message publishes, if any.
    pub outbox_id: Option<i64>,
    /// An operator purge of every cached value, by its generation
    /// ([`crate::TieredCache::purge_all`]).
    #[serde(default)]
    pub purge_all: Option<i64>,
    /// Unix milliseconds when the write was acknowledged (or the heartbeat sent): the start of
    /// the invalidation lag, and the freshness a reader compares its clock with.
    pub sent_at_ms: u64,
    /// W3C trace context (`traceparent`, `tracestate`) of the write, carried as message headers.
    pub trace_context: Vec<(String, String)>,
    /// The calendars whose events or sharing the write changed (their ids), for the
    /// subscriptions of every instance that hears the message.
    #[serde(default)]
    pub calendars: Vec<i64>,
    /// Where the message was delivered in the stream; set by the bus on delivery.
    #[serde(skip)]
    pub position: Option<Position>,
}

impl Invalidation {
    /// An invalidation of `keys` sent now, with no outbox row and no trace context.
    pub fn new(keys: Vec<(String, i64)>, origin: impl Into<String>, seq: u64) -> Self {
        Self {
            keys,
            origin: origin.into(),
            seq,
            outbox_id: None,
            purge_all: None,
            sent_at_ms: crate::cache::now_ms(),
            trace_context: Vec::new(),
            calendars: Vec::new(),
            position: None,
        }
    }

    /// A heartbeat from `origin`.
    pub fn heartbeat(origin: impl Into<String>, seq: u64) -> Self {
        Self::new(Vec::new(), origin, seq)
    }

    pub fn is_heartbeat(&self) -> bool {
        self.keys.is_empty() && self.purge_all.is_none()
    }
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
    /// The subscription could not read the stream (broker unreachable, decoding failed).
    #[error("subscription failed: {0}")]
    Subscribe(String),
}

/// Publish invalidations and subscribe to everyone's. Object-safe: use as
/// `Arc<dyn InvalidationBus>`.
#[async_trait]
pub trait InvalidationBus: Send + Sync {
    /// Sends `inv` to every subscriber (including, possibly, the publisher's own) and returns
    /// where it landed in the stream, if the bus has positions. Returns once the bus has
    /// durably accepted the message.
    async fn publish(&self, inv: Invalidation) -> Result<Option<Position>, BusError>;
    /// A stream of every invalidation published from now on; `Err(Lagged)` when some were lost.
    fn subscribe(&self) -> BoxStream<'static, Result<Invalidation, BusError>>;
    /// A short name for logs and metrics (`in-process`, `kafka`).
    fn name(&self) -> &'static str;
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
    async fn publish(&self, inv: Invalidation) -> Result<Option<Position>, BusError> {
        // No subscribers is not an error: nobody has an L1 to evict.
        let _ = self.tx.send(inv);
        Ok(None)
    }

    fn name(&self) -> &'static str {
        "in-process"
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
        let inv = |seq| Invalidation::new(vec![("k".into(), seq as i64)], "a", seq);
        bus.publish(inv(1)).await.unwrap();
        let first = sub.next().await.unwrap().unwrap();
        assert_eq!(first.keys, inv(1).keys);
        for seq in 2..=5 {
            bus.publish(inv(seq)).await.unwrap();
        }
        assert_eq!(sub.next().await, Some(Err(BusError::Lagged(2))));
        assert_eq!(sub.next().await.unwrap().unwrap().seq, 4);
    }

    #[test]
    fn positions_round_trip_and_reject_garbage() {
        let p: Position = "3:1042".parse().unwrap();
        assert_eq!(
            p,
            Position {
                partition: 3,
                offset: 1042
            }
        );
        assert_eq!(p.to_string(), "3:1042");
        for bad in ["", "3", "a:1", "1:b", "-1:4", "1:-4", "1:2:3"] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }
}
