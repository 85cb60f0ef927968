//! Figures from a Prometheus text scrape (`cal_test_support::TestApp::metrics`), so that a test
//! asserts how much a series moved rather than that its name is on the page (most series are
//! registered at zero at start-up, so their names are always there).

/// The sum of the samples of `name` whose labels include every pair of `labels` (every series
/// of `name` when `labels` is empty); 0 when there is none. Histogram and summary parts are
/// their own names (`…_bucket`, `…_count`, `…_sum`).
pub fn metric_sum(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(sample)
        .filter(|(n, ls, _)| *n == name && labels.iter().all(|(k, v)| ls.contains(&(*k, *v))))
        .map(|(_, _, v)| v)
        .sum()
}

/// One sample: name, labels, value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// One sample line (label values taken as written: the service's hold no quotes or escapes).
fn sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let labels = rest
        .strip_suffix('}')?
        .split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k, v.strip_suffix('"').unwrap_or(v)))
        })
        .collect();
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_matching_series() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    x{kind=\"a\",tier=\"l1\"} 2\nx{kind=\"b\",tier=\"l1\"} 3\n\
                    x{kind=\"a\",tier=\"l2\"} 5\nxy 7\nplain 1.5\n";
        assert_eq!(metric_sum(text, "x", &[]), 10.0);
        assert_eq!(metric_sum(text, "x", &[("tier", "l1")]), 5.0);
        assert_eq!(metric_sum(text, "x", &[("tier", "l2"), ("kind", "a")]), 5.0);
        assert_eq!(metric_sum(text, "x", &[("kind", "c")]), 0.0);
        assert_eq!(metric_sum(text, "plain", &[]), 1.5);
        assert_eq!(metric_sum(text, "missing", &[]), 0.0);
    }
}
