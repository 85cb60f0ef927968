//! The invalidation stream's and the change log's metrics, registered in the cache's registry.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

/// Buckets of the invalidation latency histograms: fine around the 20 ms lag target.
const LATENCY_BUCKETS: [f64; 19] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.1, 0.25, 0.5, 1.0, 5.0,
];

/// What the consumer and the liveness monitor count.
#[derive(Clone)]
pub(crate) struct StreamMetrics {
    pub applied: IntCounter,
    /// Every message the consumer read: others' invalidations, its own, heartbeats.
    pub received: IntCounter,
    pub lag: Histogram,
    pub behind: IntGauge,
}

/// What the relay and the pruner count.
#[derive(Clone)]
pub(crate) struct RelayMetrics {
    pub published: IntCounter,
    pub errors: IntCounter,
    /// Relay passes whose L2 tombstones could not be written (the rows stay unpublished).
    pub tombstone_failures: IntCounter,
    pub pending: IntGauge,
    /// Rows in the change log, and the age of the oldest one (refreshed by the pruner).
    pub log_rows: IntGauge,
    pub log_oldest_age: Gauge,
    /// Rows the pruner deleted.
    pub pruned: IntCounter,
    /// Publish round trips (hand-over to the bus → broker acknowledgement).
    pub publish: Histogram,
}

/// Registers every series in `registry`.
pub(crate) fn register(registry: &Registry) -> prometheus::Result<(StreamMetrics, RelayMetrics)> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        registry: &Registry,
        m: M,
    ) -> prometheus::Result<M> {
        registry.register(Box::new(m.clone()))?;
        Ok(m)
    }
    let latency = |name: &str, help: &str| {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
    };
    let r = registry;
    let stream = StreamMetrics {
        applied: add(
            r,
            IntCounter::new(
                "cal_invalidation_applied_total",
                "Invalidations from other instances applied to this instance's L1",
            )?,
        )?,
        received: add(
            r,
            IntCounter::new(
                "cal_invalidation_received_total",
                "Messages the invalidation consumer read from the stream: other instances' \
                 invalidations, this instance's own, and heartbeats",
            )?,
        )?,
        lag: add(
            r,
            latency(
                "cal_invalidation_lag_seconds",
                "From a write's acknowledgement on one instance to its L1 eviction on this one",
            )?,
        )?,
        behind: add(
            r,
            IntGauge::new(
                "cal_invalidation_consumer_behind",
                "1 while the invalidation stream is behind the liveness bound and L1 is bypassed",
            )?,
        )?,
    };
    let relay = RelayMetrics {
        published: add(
            r,
            IntCounter::new(
                "cal_invalidation_published_total",
                "Outbox rows this instance's relay published on the bus",
            )?,
        )?,
        errors: add(
            r,
            IntCounter::new(
                "cal_invalidation_publish_errors_total",
                "Outbox rows whose publish failed (retried)",
            )?,
        )?,
        tombstone_failures: add(
            r,
            IntCounter::new(
                "cal_invalidation_tombstone_failures_total",
                "Relay passes whose L2 tombstones could not be written (their rows are retried)",
            )?,
        )?,
        pending: add(
            r,
            IntGauge::new(
                "cal_invalidation_outbox_pending",
                "Outbox rows not yet published (all instances)",
            )?,
        )?,
        log_rows: add(
            r,
            IntGauge::new(
                "cal_outbox_rows",
                "Rows in the change log (outbox), published or not",
            )?,
        )?,
        log_oldest_age: add(
            r,
            Gauge::new(
                "cal_outbox_oldest_age_seconds",
                "Age of the oldest row in the change log (outbox)",
            )?,
        )?,
        pruned: add(
            r,
            IntCounter::new(
                "cal_outbox_pruned_total",
                "Published change-log rows deleted after the retention",
            )?,
        )?,
        publish: add(
            r,
            latency(
                "cal_invalidation_publish_seconds",
                "From handing an invalidation to the bus to the broker's acknowledgement (this instance's relay)",
            )?,
        )?,
    };
    Ok((stream, relay))
}
