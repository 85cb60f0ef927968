//! The cache's Prometheus metrics: counters by tier (`l1`, `l2`, `db`) and key kind, Redis calls
//! and Redis errors by operation, and gauges for the breaker, the L1 weight and the L2 epoch. This
//! module only counts; it decides nothing.
//!
//! Series start at zero where the label values are known up front (Redis operations here, key
//! kinds once the caller declares them with [`crate::TieredCache::declare_kinds`]), so rates and
//! ratios exist before the first event and every metric name is on `/metrics` from the start.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub(crate) const L1: &str = "l1";
pub(crate) const L2: &str = "l2";
pub(crate) const DB: &str = "db";

/// The `op` label of every Redis call (see `l2.rs`).
pub(crate) const REDIS_OPS: [&str; 4] = ["info", "mget", "fill", "tombstone"];
/// The `op` label of a call the open breaker skipped (errors only).
pub(crate) const BREAKER_OPEN: &str = "breaker_open";

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub hits: IntCounterVec,
    pub misses: IntCounterVec,
    pub fills: IntCounterVec,
    pub evictions: IntCounterVec,
    pub refused_stale: IntCounterVec,
    pub coalesced: IntCounterVec,
    pub oversize: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub redis_requests: IntCounterVec,
    pub redis_shard_errors: IntCounterVec,
    pub breaker_state: IntGauge,
    pub group_breaker_state: IntGaugeVec,
    pub l1_weighted_bytes: IntGauge,
    pub epoch: IntGauge,
}

fn tier_kind(name: &str, help: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &["tier", "kind"])
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            hits: tier_kind(
                "cal_cache_hits_total",
                "Keys found, by tier (db: row exists)",
            )?,
            misses: tier_kind(
                "cal_cache_misses_total",
                "Keys not found, by tier (db: row does not exist)",
            )?,
            fills: tier_kind("cal_cache_fills_total", "Values written to a tier")?,
            evictions: tier_kind(
                "cal_cache_evictions_total",
                "L1 entries evicted for size or expiry",
            )?,
            refused_stale: tier_kind(
                "cal_cache_refused_stale_total",
                "Fills refused because a newer entry or tombstone exists",
            )?,
            coalesced: tier_kind(
                "cal_cache_coalesced_total",
                "Keys a caller got from another caller's load (single-flight followers)",
            )?,
            oversize: tier_kind(
                "cal_cache_oversize_total",
                "Loaded values too large to cache",
            )?,
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "cal_cache_redis_errors_total",
                    "Redis calls that failed, timed out or were skipped by the open breaker",
                ),
                &["op"],
            )?,
            redis_requests: IntCounterVec::new(
                Opts::new(
                    "cal_cache_redis_requests_total",
                    "Redis calls attempted (those the open breaker skipped included), by operation",
                ),
                &["op"],
            )?,
            redis_shard_errors: IntCounterVec::new(
                Opts::new(
                    "cal_cache_redis_shard_errors_total",
                    "Redis calls that failed or timed out, by the server that holds their keys \
                     (a cluster primary's address, or the single Redis)",
                ),
                &["shard"],
            )?,
            breaker_state: IntGauge::new(
                "cal_cache_breaker_state",
                "Redis circuit breaker: 0 closed, 1 half-open, 2 open (a cluster: its worst slot group)",
            )?,
            group_breaker_state: IntGaugeVec::new(
                Opts::new(
                    "cal_cache_redis_group_breaker_state",
                    "Redis Cluster only: the circuit breaker of each slot group, 0 closed, 1 half-open, 2 open",
                ),
                &["group"],
            )?,
            l1_weighted_bytes: IntGauge::new(
                "cal_cache_l1_weighted_bytes",
                "Weighted size of the L1 tier in bytes",
            )?,
            epoch: IntGauge::new(
                "cal_cache_epoch",
                "Times a Redis restart or failover (run_id change) was detected",
            )?,
        };
        registry.register(Box::new(m.hits.clone()))?;
        registry.register(Box::new(m.misses.clone()))?;
        registry.register(Box::new(m.fills.clone()))?;
        registry.register(Box::new(m.evictions.clone()))?;
        registry.register(Box::new(m.refused_stale.clone()))?;
        registry.register(Box::new(m.coalesced.clone()))?;
        registry.register(Box::new(m.oversize.clone()))?;
        registry.register(Box::new(m.redis_errors.clone()))?;
        registry.register(Box::new(m.redis_requests.clone()))?;
        registry.register(Box::new(m.redis_shard_errors.clone()))?;
        registry.register(Box::new(m.breaker_state.clone()))?;
        registry.register(Box::new(m.group_breaker_state.clone()))?;
        registry.register(Box::new(m.l1_weighted_bytes.clone()))?;
        registry.register(Box::new(m.epoch.clone()))?;
        for op in REDIS_OPS {
            m.redis_requests.with_label_values(&[op]);
            m.redis_errors.with_label_values(&[op]);
        }
        m.redis_errors.with_label_values(&[BREAKER_OPEN]);
        Ok(m)
    }

    /// Creates the zero series of every (tier, kind) pair each counter can report.
    pub fn declare_kind(&self, kind: &str) {
        let pairs: [(&IntCounterVec, &[&str]); 7] = [
            (&self.hits, &[L1, L2, DB]),
            (&self.misses, &[L1, L2, DB]),
            (&self.fills, &[L1, L2]),
            (&self.evictions, &[L1]),
            (&self.refused_stale, &[L1, L2]),
            (&self.coalesced, &[DB]),
            (&self.oversize, &[DB]),
        ];
        for (counter, tiers) in pairs {
            for tier in tiers {
                counter.with_label_values(&[tier, kind]);
            }
        }
    }

    pub fn inc(counter: &IntCounterVec, tier: &str, kind: &str) {
        counter.with_label_values(&[tier, kind]).inc();
    }
}

/// Counts of one batch, flushed to the counters once ([`Tally::flush`]): a label lookup per
/// (counter, tier, kind) and batch instead of one per key.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Per key kind (a batch almost always has one), a count per event.
    kinds: Vec<(&'static str, [u64; Tally::EVENTS])>,
}

impl Tally {
    pub const L1_HIT: usize = 0;
    pub const L1_MISS: usize = 1;
    pub const L2_HIT: usize = 2;
    pub const L2_MISS: usize = 3;
    pub const DB_HIT: usize = 4;
    pub const DB_MISS: usize = 5;
    pub const L1_FILL: usize = 6;
    pub const L2_FILL: usize = 7;
    pub const L1_REFUSED: usize = 8;
    pub const L2_REFUSED: usize = 9;
    pub const COALESCED: usize = 10;
    pub const OVERSIZE: usize = 11;
    const EVENTS: usize = 12;

    fn counts(&mut self, kind: &'static str) -> &mut [u64; Self::EVENTS] {
        let i = match self.kinds.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                self.kinds.push((kind, [0; Self::EVENTS]));
                self.kinds.len() - 1
            }
        };
        &mut self.kinds[i].1
    }

    pub fn add(&mut self, kind: &'static str, event: usize) {
        self.counts(kind)[event] += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (kind, counts) in &other.kinds {
            for (mine, n) in self.counts(kind).iter_mut().zip(counts) {
                *mine += n;
            }
        }
    }

    /// Adds the counts to the metrics and resets them.
    pub fn flush(&mut self, m: &Metrics) {
        for (kind, counts) in self.kinds.drain(..) {
            let targets: [(&IntCounterVec, &str); Self::EVENTS] = [
                (&m.hits, L1),
                (&m.misses, L1),
                (&m.hits, L2),
                (&m.misses, L2),
                (&m.hits, DB),
                (&m.misses, DB),
                (&m.fills, L1),
                (&m.fills, L2),
                (&m.refused_stale, L1),
                (&m.refused_stale, L2),
                (&m.coalesced, DB),
                (&m.oversize, DB),
            ];
            for (event, (counter, tier)) in targets.into_iter().enumerate() {
                if counts[event] > 0 {
                    counter
                        .with_label_values(&[tier, kind])
                        .inc_by(counts[event]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_per_kind_and_flushes_once() {
        let m = Metrics::register(&Registry::new()).unwrap();
        let mut t = Tally::default();
        t.add("user", Tally::L1_HIT);
        t.add("user", Tally::L1_HIT);
        t.add("event", Tally::DB_MISS);
        let mut other = Tally::default();
        other.add("user", Tally::L1_HIT);
        other.add("room", Tally::L2_FILL);
        t.merge(&other);
        t.flush(&m);
        assert_eq!(m.hits.with_label_values(&[L1, "user"]).get(), 3);
        assert_eq!(m.misses.with_label_values(&[DB, "event"]).get(), 1);
        assert_eq!(m.fills.with_label_values(&[L2, "room"]).get(), 1);
        t.flush(&m);
        assert_eq!(
            m.hits.with_label_values(&[L1, "user"]).get(),
            3,
            "flush resets"
        );
    }
}
