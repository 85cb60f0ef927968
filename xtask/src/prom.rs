//! Prometheus text as the services' `/metrics` write it, read without a client library: the sum
//! of a metric's series whose labels match ([`prom_sum`]), over several instances
//! ([`sum_counter`]); a histogram's cumulative buckets ([`histogram_buckets`]), added or
//! subtracted bucket by bucket ([`add_buckets`]), and their quantiles ([`quantile`]). Used by
//! `bench` (counters around each measured window, cache sizes) and the cluster commands (the
//! invalidation lag, stream liveness).

/// The sum of a Prometheus metric's samples whose labels contain every one of `labels`.
pub(crate) fn prom_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue, // a longer metric name
        };
        if !labels.iter().all(|l| label_part.contains(l)) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The sum of [`prom_sum`] of `name` (all its series) over several instances' scrapes.
pub(crate) fn sum_counter(texts: &[String], name: &str) -> f64 {
    texts.iter().filter_map(|t| prom_sum(t, name, &[])).sum()
}

/// Cumulative histogram buckets: (upper bound, observations at or below it), by bound; the last
/// bound is `+Inf` (all observations).
pub(crate) type Buckets = Vec<(f64, f64)>;

/// The `NAME_bucket{…le="X"…} COUNT` samples of one histogram in Prometheus text.
pub(crate) fn histogram_buckets(text: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{");
    let mut out: Buckets = text
        .lines()
        .filter_map(|line| {
            let (labels, value) = line.strip_prefix(&prefix)?.split_once('}')?;
            let le = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("le=\"")?.strip_suffix('"'))?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, value.split_whitespace().next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Adds `sign * other` to `acc` bucket by bucket (instances share their bounds; a bound only
/// one side has is kept).
pub(crate) fn add_buckets(acc: &mut Buckets, other: &[(f64, f64)], sign: f64) {
    for &(bound, count) in other {
        match acc.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += sign * count,
            None => acc.push((bound, sign * count)),
        }
    }
    acc.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// A quantile of cumulative buckets: an estimate and the bound it cannot exceed.
#[derive(Debug, PartialEq)]
pub(crate) struct Quantile {
    /// Linear interpolation inside the bucket where the cumulative count crosses the quantile's
    /// rank (as Prometheus' `histogram_quantile`; the largest finite bound when that is `+Inf`).
    pub(crate) estimate: f64,
    /// That bucket's upper bound: the quantile is at most this (`inf`: above every bound).
    pub(crate) upper: f64,
}

/// The `q` quantile of cumulative buckets; `None` without observations.
pub(crate) fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<Quantile> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, count) in buckets {
        if count >= rank && count > below {
            let estimate = if upper.is_infinite() {
                lower
            } else {
                lower + (upper - lower) * (rank - below) / (count - below)
            };
            return Some(Quantile { estimate, upper });
        }
        lower = upper;
        below = count;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The lag histogram's name in [`METRICS`].
    const LAG: &str = "cal_invalidation_lag_seconds";

    /// An instance's lag histogram and one counter, as `/metrics` writes them.
    pub(crate) const METRICS: &str =
        "# HELP cal_invalidation_lag_seconds From a write's acknowledgement
# TYPE cal_invalidation_lag_seconds histogram
cal_invalidation_lag_seconds_bucket{le=\"0.001\"} 0
cal_invalidation_lag_seconds_bucket{le=\"0.002\"} 10
cal_invalidation_lag_seconds_bucket{le=\"0.005\"} 80
cal_invalidation_lag_seconds_bucket{le=\"0.01\"} 98
cal_invalidation_lag_seconds_bucket{le=\"0.02\"} 100
cal_invalidation_lag_seconds_bucket{le=\"+Inf\"} 100
cal_invalidation_lag_seconds_sum 0.4
cal_invalidation_lag_seconds_count 100
cal_invalidation_applied_total 100
";

    #[test]
    fn buckets_from_prometheus_text() {
        assert_eq!(
            histogram_buckets(METRICS, LAG),
            [
                (0.001, 0.0),
                (0.002, 10.0),
                (0.005, 80.0),
                (0.01, 98.0),
                (0.02, 100.0),
                (f64::INFINITY, 100.0)
            ]
        );
        assert!(histogram_buckets(METRICS, "cal_other").is_empty());
        let labelled = "x_bucket{kind=\"a\",le=\"0.5\"} 3\nx_bucket{kind=\"a\",le=\"+Inf\"} 4\n";
        assert_eq!(
            histogram_buckets(labelled, "x"),
            [(0.5, 3.0), (f64::INFINITY, 4.0)]
        );
    }

    #[test]
    fn quantiles_interpolate_inside_the_crossing_bucket() {
        let b = histogram_buckets(METRICS, LAG);
        // p50: rank 50 lies in (0.002, 0.005] holding 70 (10 below): 0.002 + 0.003 * 40/70.
        let p50 = quantile(&b, 0.5).unwrap();
        assert_eq!(p50.upper, 0.005);
        assert!((p50.estimate - (0.002 + 0.003 * 40.0 / 70.0)).abs() < 1e-12);
        // p99: rank 99 lies in (0.01, 0.02] holding 2 (98 below): halfway.
        let p99 = quantile(&b, 0.99).unwrap();
        assert_eq!(p99.upper, 0.02);
        assert!((p99.estimate - 0.015).abs() < 1e-12);
        // p10: rank 10 is exactly the count at 0.002: that bound.
        assert!((quantile(&b, 0.1).unwrap().estimate - 0.002).abs() < 1e-12);
        // Nothing observed: no quantile.
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
        // Above every finite bound: the largest finite bound, with an infinite upper bound.
        let q = quantile(&[(0.1, 1.0), (f64::INFINITY, 10.0)], 0.99).unwrap();
        assert_eq!(
            q,
            Quantile {
                estimate: 0.1,
                upper: f64::INFINITY
            }
        );
    }

    #[test]
    fn prometheus_sums() {
        let text = "# TYPE cal_cache_evictions_total counter
cal_cache_evictions_total{kind=\"user\",tier=\"l1\"} 3
cal_cache_evictions_total{kind=\"event\",tier=\"l1\"} 4
cal_cache_evictions_total{kind=\"event\",tier=\"l2\"} 100
cal_cache_l1_weighted_bytes 1048576
cal_cache_l1_weighted_bytes_other 1
";
        assert_eq!(
            prom_sum(text, "cal_cache_evictions_total", &["tier=\"l1\""]),
            Some(7.0)
        );
        assert_eq!(
            prom_sum(text, "cal_cache_l1_weighted_bytes", &[]),
            Some(1_048_576.0)
        );
        assert_eq!(prom_sum(text, "cal_cache_misses_total", &[]), None);
    }
}
