//! Glue between the storage and the cache tiers (the two never see each other): key specs with
//! per-kind TTLs, the change sink that turns committed writes into invalidations, and the bus
//! consumer that applies other instances' invalidations to this process's L1.
//!
//! Write order, as the consistency argument needs it: the transaction commits (with its outbox
//! row) → L2 tombstones carrying the new versions → local L1 eviction → publish on the bus. The
//! mutation answers only after all of that, so the same instance never serves the old value.

use crate::response_cache::{ResponseCache, ResponseMetrics};
use cal_cache::{Invalidation, InvalidationBus, KeySpec, TieredCache};
use cal_domain::cache_keys::{self, KeyKind};
use cal_storage::{ChangeSet, ChangeSink};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The response cache's default bound.
pub const DEFAULT_RESPONSE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// The cache tiers as the API uses them.
pub struct Tiers {
    pub cache: TieredCache,
    pub bus: Arc<dyn InvalidationBus>,
    /// Whole responses built only from L1 entries (present when L1 is on).
    pub responses: Option<ResponseCache>,
    response_metrics: Option<ResponseMetrics>,
    ttls: HashMap<KeyKind, Duration>,
    origin: String,
    seq: AtomicU64,
}

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers")
            .field("cache", &self.cache)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Tiers {
    /// `ttls` overrides the default L2 TTL of some kinds of keys.
    pub fn new(
        cache: TieredCache,
        bus: Arc<dyn InvalidationBus>,
        ttls: HashMap<KeyKind, Duration>,
        origin: String,
    ) -> Self {
        let ttls = KeyKind::ALL
            .iter()
            .map(|k| (*k, ttls.get(k).copied().unwrap_or_else(|| k.default_ttl())))
            .collect();
        let response_metrics = ResponseMetrics::register(cache.registry())
            .inspect_err(|e| tracing::warn!(error = %e, "response cache metrics not registered"))
            .ok();
        let mut tiers = Self {
            cache,
            bus,
            responses: None,
            response_metrics,
            ttls,
            origin,
            seq: AtomicU64::new(0),
        };
        tiers.set_response_cache_bytes(DEFAULT_RESPONSE_CACHE_BYTES);
        tiers
    }

    /// Bounds the response cache at `bytes` (0 switches it off). It only exists with L1 on.
    pub fn with_response_cache_bytes(mut self, bytes: u64) -> Self {
        self.set_response_cache_bytes(bytes);
        self
    }

    fn set_response_cache_bytes(&mut self, bytes: u64) {
        self.responses = match (self.cache.l1_ttl(), &self.response_metrics, bytes) {
            (Some(ttl), Some(metrics), 1..) => {
                Some(ResponseCache::new(bytes, ttl, metrics.clone()))
            }
            _ => None,
        };
    }

    pub fn spec(&self, kind: KeyKind, key: String) -> KeySpec {
        KeySpec::new(key, kind.label(), self.ttls[&kind])
    }

    /// Applies every invalidation published by *other* instances to this process's L1 until the
    /// bus closes. Own messages are skipped: the writer already evicted its L1.
    pub fn spawn_consumer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut stream = self.bus.subscribe();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(inv) if inv.origin == me.origin => {}
                    Ok(inv) => me.cache.apply_remote(&inv).await,
                    Err(e) => {
                        // Lost messages: nothing in L1 can be trusted any more.
                        tracing::warn!(error = %e, "invalidation bus lagged; clearing L1");
                        me.cache.clear_l1();
                    }
                }
            }
        })
    }
}

/// Keys made stale by a committed change, with the versions the new state carries.
pub fn invalidations(changes: &ChangeSet) -> Vec<(String, i64)> {
    let mut keys: Vec<(String, i64)> = Vec::new();
    for e in &changes.events {
        keys.extend(cache_keys::invalidations_for_event(e));
    }
    for (c, v) in &changes.calendars {
        keys.extend(cache_keys::invalidations_for_calendar(*c, *v));
    }
    // One entry per key, with the highest version.
    keys.sort();
    keys.reverse();
    keys.dedup_by(|a, b| a.0 == b.0);
    keys
}

#[async_trait::async_trait]
impl ChangeSink for Tiers {
    async fn committed(&self, changes: &ChangeSet) {
        let keys = invalidations(changes);
        // L2 tombstones, then local L1 eviction (both inside `invalidate`), then the bus.
        self.cache.invalidate(&keys).await;
        let inv = Invalidation::new(
            keys,
            self.origin.clone(),
            self.seq.fetch_add(1, Ordering::Relaxed),
        );
        if let Err(e) = self.bus.publish(inv).await {
            tracing::warn!(error = %e, "publishing an invalidation failed; other instances rely on TTLs and L2 tombstones");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cal_domain::cache_keys::EventChange;
    use cal_domain::{CalendarId, EventId};

    #[test]
    fn a_change_set_maps_to_each_key_once_with_its_newest_version() {
        let c = CalendarId(1);
        let changes = ChangeSet {
            events: vec![
                EventChange {
                    event: EventId(7),
                    event_version: 3,
                    calendar: c,
                    calendar_version: 10,
                },
                EventChange {
                    event: EventId(8),
                    event_version: 1,
                    calendar: c,
                    calendar_version: 11,
                },
            ],
            calendars: vec![(c, 11)],
        };
        let keys = invalidations(&changes);
        let summary: Vec<_> = keys
            .iter()
            .filter(|(k, _)| k == "v1:calendar:1:summary")
            .collect();
        assert_eq!(summary, vec![&("v1:calendar:1:summary".to_owned(), 11)]);
        assert!(keys.contains(&("v1:event:7:attendees".to_owned(), 3)));
        assert!(keys.contains(&("v1:event:8:full".to_owned(), 1)));
    }
}
