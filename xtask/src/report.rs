//! What the benchmark reports are made of, shared by `bench`, `bench-http` and `bench-cluster`:
//! the cells of their markdown tables ([`num`], [`ratio`], [`mib`]; the figures of a k6 summary:
//! [`metric`], [`k6_rps`], [`hit_ratio`]) and the facts of their header line (the command as
//! typed, [`command_line`]; [`today`], [`commit`], [`machine`]), and [`publish`], which writes and
//! prints a finished report. Also [`current_month`], the
//! window `bench-cluster` reads, from the same date arithmetic (xtask has no date library).

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// The command as it was typed, `cargo xtask …`, for a report's header.
pub(crate) fn command_line() -> String {
    format!(
        "cargo xtask {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )
}

/// A figure with `digits` decimals; `n/a` when there is none.
pub(crate) fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// `a / b` as `1.23x`; `n/a` unless both are known and `b` is positive.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_owned(),
    }
}

/// KiB as whole MiB; `n/a` when unknown.
pub(crate) fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
}

/// One statistic (`count`, `rate`, `med`, `p(99)`…) of a metric in a k6 summary.
pub(crate) fn metric(summary: &Value, name: &str, stat: &str) -> Option<f64> {
    summary["metrics"][name]["values"][stat].as_f64()
}

/// Month view reads per second (the writes' own requests are left out).
pub(crate) fn k6_rps(summary: &Value) -> Option<f64> {
    metric(summary, "http_reqs{name:MonthView}", "rate")
}

/// (l1 + l2) / (l1 + l2 + misses) over the reads' cache lookups (from `x-debug-stats`).
pub(crate) fn hit_ratio(summary: &Value) -> Option<f64> {
    let count = |name| metric(summary, name, "count").unwrap_or(0.0);
    let hits = count("l1_hits") + count("l2_hits");
    let all = hits + count("cache_misses");
    (all > 0.0).then(|| hits / all)
}

/// The short commit hash, marked when the tree has uncommitted changes.
pub(crate) fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
    };
    let Some(out) = git(&["rev-parse", "--short", "HEAD"]).filter(|o| o.status.success()) else {
        return "unknown".to_owned();
    };
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dirty = git(&["status", "--porcelain"]).is_some_and(|o| !o.stdout.is_empty());
    if dirty { format!("{hash}+dirty") } else { hash }
}

/// "2 cores (model name)" from the machine this runs on.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores ({model})")
}

fn days_since_epoch() -> i64 {
    (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / 86_400) as i64
}

/// Today's UTC date, `YYYY-MM-DD`.
pub(crate) fn today() -> String {
    let (y, m, d) = civil_from_days(days_since_epoch());
    format!("{y:04}-{m:02}-{d:02}")
}

/// The current UTC month as RFC 3339 `[first day, first day of next month)`.
pub(crate) fn current_month() -> (String, String) {
    let (y, m, _) = civil_from_days(days_since_epoch());
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    (
        format!("{y:04}-{m:02}-01T00:00:00Z"),
        format!("{ny:04}-{nm:02}-01T00:00:00Z"),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm);
/// xtask has no date library and needs only this.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Writes a benchmark's report to `path` and prints it (its logs and metrics lie beside it).
pub(crate) fn publish(path: &Path, report: &str) -> anyhow::Result<()> {
    std::fs::write(path, report)?;
    println!("{report}");
    eprintln!("(also in {}; logs and metrics beside it)", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
