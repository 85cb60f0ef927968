//! `cargo xtask bench`: the month view under load, every cache mode in one run, against the same
//! database on the same machine, so that the figures can be compared as ratios.
//!
//! Steps (each a function that [`run`] calls in turn): `prepare`: build the server (or take
//! `--server-bin`), seed the large scale for the anchor month unless it is there, write one token
//! per calendar owner; `run_modes`: for each mode start a fresh server and (`run_mode`)
//! - drive it with k6 (`loadtests/month_view.js`) over every (calendar, month) pair, Zipf-ranked
//!   (`--zipf 0`: uniform), one warm-up run and `--windows` measured runs; around each measured
//!   run read the CPU time of the server and of every PostgreSQL process, and the server's
//!   `/metrics` (statements, hits per tier, response-cache hits) (`k6_windows`);
//! - drive one fixed request with wrk, plain and with `Accept-Encoding: gzip` (`wrk_runs`);
//! - read its resident memory and the sizes of its caches.
//!
//! Then (`measure_floor`) it serves the exact bytes of that fixed response (plain and gzipped)
//! with nginx and runs the same wrk commands against it: the floor for moving those bytes on this
//! machine. Last, `report` prints markdown tables for `docs/benchmarks.md`. It owns the steps and
//! their order; what one iteration does lives in the k6 script.

pub mod http;

use crate::http_client::{http_get_status, http_request_raw, metrics_text};
use crate::process::{self, KillOnDrop, TermOnDrop, wait_ready};
use crate::prom::prom_sum;
use crate::report::{command_line, commit, k6_rps, metric, mib, num, ratio, today};
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Only used against a local throwaway server; long enough for the server's minimum key length.
const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret";
/// The operator secret of benchmark servers (it unlocks `x-debug-stats` in prod mode).
pub(crate) const ADMIN_TOKEN: &str = "bench-operator-token-bench";

/// Which cache tiers the server runs with.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Both tiers off, no warming: every read goes to PostgreSQL.
    Cold,
    /// Redis only (fresh key prefix, no warming).
    L2,
    /// moka L1 in front of Redis L2, whole-response cache off.
    #[value(name = "l1l2-noresp")]
    L1l2NoResp,
    /// moka L1 in front of Redis L2 with the whole-response cache (the defaults).
    L1l2,
    /// cold, l2, l1l2-noresp, then l1l2, each with a fresh server on the same database.
    All,
}

impl Mode {
    /// The modes a run with `--mode self` measures, in order.
    fn expand(self) -> Vec<Mode> {
        match self {
            Mode::All => vec![Mode::Cold, Mode::L2, Mode::L1l2NoResp, Mode::L1l2],
            m => vec![m],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::L2 => "l2",
            Mode::L1l2NoResp => "l1l2-noresp",
            Mode::L1l2 => "l1l2",
            Mode::All => "all",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Concurrent virtual users (closed loop).
    #[arg(long, default_value_t = 16)]
    vus: u32,
    /// How long each measured k6 window lasts (k6 duration syntax: 30s, 2m).
    #[arg(long, default_value = "2m")]
    duration: String,
    /// Measured k6 windows per mode, back to back (shows whether a mode degrades over time).
    #[arg(long, default_value_t = 1)]
    windows: u32,
    /// How long the unreported k6 warm-up run before them lasts (`0` skips it).
    #[arg(long, default_value = "10s")]
    warmup: String,
    /// Calendars (with a token for their owner) that k6 picks from.
    #[arg(long, default_value_t = 2000)]
    calendars: u32,
    /// Months read per calendar: the anchor month, then the one before, then the one after.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    months: u32,
    /// The seed's anchor month (its first day): the seed covers it and one month either side.
    #[arg(long, default_value = "2025-02-01")]
    anchor: String,
    /// Cache tiers to measure.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Zipf exponent of the (calendar, month) choice (`0`: uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Share of k6 iterations that also rename an event (`updateEvent`).
    #[arg(long, default_value_t = 0.01)]
    write_ratio: f64,
    /// How long each wrk run lasts (`0` skips wrk and the nginx floor).
    #[arg(long, default_value = "15s")]
    wrk_duration: String,
    /// wrk's connections (two threads).
    #[arg(long, default_value_t = 16)]
    wrk_connections: u32,
    /// Skip the nginx floor.
    #[arg(long)]
    no_floor: bool,
    /// Redis for the cached modes (each run uses its own key prefix).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// `CACHE_L1_MAX_BYTES` for the server (its default when absent).
    #[arg(long)]
    l1_max_bytes: Option<u64>,
    /// `CACHE_RESPONSE_MAX_BYTES` for the `l1l2` mode (its default when absent).
    #[arg(long)]
    response_max_bytes: Option<u64>,
    /// Database to (re)create and seed on the local PostgreSQL.
    #[arg(long, default_value = "calendar_bench")]
    database: String,
    /// Port the server listens on (127.0.0.1); nginx takes the next one.
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Recreate and seed the database even if it holds the large scale for the anchor.
    #[arg(long)]
    reseed: bool,
    /// Build and run the release binary (`--release false` for a debug build).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    release: bool,
    /// Measure this `calendar` binary instead of building one (e.g. an older build, to compare).
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

/// CPU seconds of the server and of PostgreSQL (all its processes) at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    server: f64,
    postgres: f64,
}

/// What one measured k6 window showed.
#[derive(Debug, Default)]
struct Window {
    k6: Value,
    cpu: CpuSample,
    /// `/metrics` counter deltas over the window.
    metrics: MetricDeltas,
}

#[derive(Debug, Default, Clone, Copy)]
struct MetricDeltas {
    statements: f64,
    l1_hits: f64,
    l1_misses: f64,
    l2_hits: f64,
    l2_misses: f64,
    db_loads: f64,
    coalesced: f64,
    response_hits: f64,
    response_misses: f64,
}

impl MetricDeltas {
    fn read(text: &str) -> Self {
        let sum = |name: &str, labels: &[&str]| prom_sum(text, name, labels).unwrap_or(0.0);
        Self {
            statements: sum("cal_sql_statements_total", &[]),
            l1_hits: sum("cal_cache_hits_total", &["tier=\"l1\""]),
            l1_misses: sum("cal_cache_misses_total", &["tier=\"l1\""]),
            l2_hits: sum("cal_cache_hits_total", &["tier=\"l2\""]),
            l2_misses: sum("cal_cache_misses_total", &["tier=\"l2\""]),
            db_loads: sum("cal_cache_hits_total", &["tier=\"db\""])
                + sum("cal_cache_misses_total", &["tier=\"db\""]),
            coalesced: sum("cal_cache_coalesced_total", &[]),
            response_hits: sum("cal_cache_response_hits_total", &[]),
            response_misses: sum("cal_cache_response_misses_total", &[]),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            statements: self.statements - before.statements,
            l1_hits: self.l1_hits - before.l1_hits,
            l1_misses: self.l1_misses - before.l1_misses,
            l2_hits: self.l2_hits - before.l2_hits,
            l2_misses: self.l2_misses - before.l2_misses,
            db_loads: self.db_loads - before.db_loads,
            coalesced: self.coalesced - before.coalesced,
            response_hits: self.response_hits - before.response_hits,
            response_misses: self.response_misses - before.response_misses,
        }
    }
}

/// What one mode measured.
#[derive(Debug, Default)]
struct ModeResult {
    mode: &'static str,
    windows: Vec<Window>,
    wrk: Option<WrkResult>,
    wrk_gzip: Option<WrkResult>,
    /// Server memory just before it was stopped, in KiB.
    vm_rss_kib: Option<u64>,
    vm_hwm_kib: Option<u64>,
    /// From `/metrics` at the end.
    l1_weighted_bytes: Option<f64>,
    response_weighted_bytes: Option<f64>,
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

/// Everything the modes share: tools, binary, fixtures, the fixed wrk request.
struct Setup {
    root: PathBuf,
    out_dir: PathBuf,
    k6: PathBuf,
    wrk: Option<PathBuf>,
    bin: PathBuf,
    database_url: String,
    fixtures_path: PathBuf,
    n_fixtures: usize,
    /// `from/to` pairs, comma-separated, for the k6 script.
    windows: String,
    listen: String,
    wrk_body: String,
    wrk_token: String,
    wrk_calendar: String,
    run_id: u64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    validate(&args)?;
    let command = command_line();
    let setup = prepare(&args)?;
    let (results, captured) = run_modes(&args, &setup)?;
    let floor = measure_floor(&args, &setup, captured)?;
    report(&args, &setup, &command, &results, floor.as_ref());
    Ok(())
}

fn validate(args: &BenchArgs) -> Result<()> {
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
    ensure!(args.windows >= 1, "--windows must be at least 1");
    ensure!(
        args.anchor.len() == 10 && args.anchor.ends_with("-01"),
        "--anchor must be the first day of a month, YYYY-MM-01"
    );
    Ok(())
}

fn prepare(args: &BenchArgs) -> Result<Setup> {
    let root = crate::root();
    let out_dir = target_dir(&root).join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let k6 = crate::ensure_k6()?;
    let wrk = if args.wrk_duration == "0" {
        None
    } else {
        ensure_apt_tool("wrk", &["-v"], "wrk")
    };
    let bin = match &args.server_bin {
        Some(bin) => {
            ensure!(
                bin.exists(),
                "--server-bin {} does not exist",
                bin.display()
            );
            bin.clone()
        }
        None => build_calendar(&root, args.release)?,
    };
    let database_url = database_url(&args.database);
    let calendar = |sub: &[&str]| calendar_command(&bin, &database_url, sub);
    let months = seed_months(&args.anchor)?;
    let (from, to) = months[0].clone();
    if args.reseed || !crate::cluster::large_seed_present(&args.database, &from, &to)? {
        seed_large(&args.database, Some(&args.anchor), calendar)?;
    } else {
        eprintln!(
            "reusing {} (large scale anchored at {}); --reseed recreates it",
            args.database, args.anchor
        );
        process::run(&mut calendar(&["migrate"]))?;
    }
    let fixtures_path = out_dir.join("fixtures.json");
    let (fixtures, n_fixtures) = write_fixtures(calendar, args.calendars, &fixtures_path)?;
    let windows = months[..args.months as usize]
        .iter()
        .map(|(f, t)| format!("{f}/{t}"))
        .collect::<Vec<_>>()
        .join(",");
    // wrk sends one fixed request: the anchor month of the first (under Zipf, the hottest)
    // calendar, as its owner.
    let first = &fixtures[0];
    let wrk_body = serde_json::to_string(&serde_json::json!({
        "query": month_view_query(&root)?,
        "variables": { "calendarId": first["calendarId"], "from": from, "to": to },
    }))?;
    let (wrk_calendar, wrk_token) = fixture_of(first)?;
    let (wrk_calendar, wrk_token) = (wrk_calendar.to_owned(), wrk_token.to_owned());
    Ok(Setup {
        listen: format!("127.0.0.1:{}", args.port),
        run_id: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs(),
        root,
        out_dir,
        k6,
        wrk,
        bin,
        database_url,
        fixtures_path,
        n_fixtures,
        windows,
        wrk_body,
        wrk_token,
        wrk_calendar,
    })
}

/// The seed's three months as RFC 3339 `[from, to)` pairs: the anchor month, the one before,
/// the one after.
fn seed_months(anchor: &str) -> Result<Vec<(String, String)>> {
    let y: i64 = anchor[..4].parse().context("--anchor year")?;
    let m: i64 = anchor[5..7].parse().context("--anchor month")?;
    ensure!((1..=12).contains(&m), "--anchor month must be 01..12");
    let month = |offset: i64| {
        let idx = y * 12 + (m - 1) + offset;
        format!(
            "{:04}-{:02}-01T00:00:00Z",
            idx.div_euclid(12),
            idx.rem_euclid(12) + 1
        )
    };
    Ok([0, -1, 1]
        .into_iter()
        .map(|o| (month(o), month(o + 1)))
        .collect())
}

/// The fixed wrk request's response bytes: plain and gzipped.
type Captured = (Vec<u8>, Vec<u8>);

/// Runs every mode `--mode` names, each with a fresh server; returns their figures and, if a
/// mode captured them (`l1l2`), the fixed wrk response's exact bytes for the nginx floor.
fn run_modes(args: &BenchArgs, setup: &Setup) -> Result<(Vec<ModeResult>, Option<Captured>)> {
    let mut results = Vec::new();
    let mut captured = None;
    for mode in args.mode.expand() {
        let (result, capture) = run_mode(args, setup, mode)?;
        results.push(result);
        if capture.is_some() {
            captured = capture;
        }
    }
    Ok((results, captured))
}

/// The nginx floor, when wrk ran, a mode captured the fixed response and `--no-floor` is off.
fn measure_floor(
    args: &BenchArgs,
    setup: &Setup,
    captured: Option<Captured>,
) -> Result<Option<Floor>> {
    Ok(match (&setup.wrk, captured, args.no_floor) {
        (Some(wrk), Some(bytes), false) => Some(nginx_floor(args, setup, wrk, &bytes)?),
        _ => None,
    })
}

/// Runs one mode with a fresh server: the k6 windows, then (with wrk) the fixed request, then
/// its memory and caches. Returns its figures and, for `l1l2`, the fixed wrk response's exact
/// bytes (plain, gzip) for the nginx floor.
fn run_mode(args: &BenchArgs, setup: &Setup, mode: Mode) -> Result<(ModeResult, Option<Captured>)> {
    let name = mode.name();
    eprintln!("\n=== mode {name} ===");
    let log_path = setup.out_dir.join(format!("server-{name}.log"));
    let mut server = start_server(args, setup, mode, &log_path)?;
    let pid = server.0.id();
    let windows = k6_windows(args, setup, name, pid)?;
    let (wrk_plain, wrk_gzip, captured) = match &setup.wrk {
        Some(wrk) => {
            let (plain, gzip, bytes) = wrk_runs(args, setup, wrk, name)?;
            (
                Some(plain),
                Some(gzip),
                (mode == Mode::L1l2).then_some(bytes),
            )
        }
        None => (None, None, None),
    };

    let (vm_rss_kib, vm_hwm_kib) = memory(pid);
    let metrics = scrape(&setup.listen);
    std::fs::write(setup.out_dir.join(format!("metrics-{name}.txt")), &metrics)?;
    server.stop();
    Ok((
        ModeResult {
            mode: name,
            windows,
            wrk: wrk_plain,
            wrk_gzip,
            vm_rss_kib,
            vm_hwm_kib,
            l1_weighted_bytes: prom_sum(&metrics, "cal_cache_l1_weighted_bytes", &[]),
            response_weighted_bytes: prom_sum(&metrics, "cal_cache_response_weighted_bytes", &[]),
        },
        captured,
    ))
}

/// The unreported k6 warm-up, then `--windows` measured k6 runs against the server (process
/// `pid`), each with the CPU time and the `/metrics` counters it cost.
fn k6_windows(args: &BenchArgs, setup: &Setup, name: &str, pid: u32) -> Result<Vec<Window>> {
    if args.warmup != "0" {
        eprintln!("warm-up ({}, not reported)", args.warmup);
        k6_run(
            args,
            setup,
            &args.warmup,
            &setup.out_dir.join(format!("warmup-{name}.json")),
        )?;
    }
    let mut windows = Vec::new();
    for w in 1..=args.windows {
        let (cpu0, m0) = (cpu_sample(pid), MetricDeltas::read(&scrape(&setup.listen)));
        let k6 = k6_run(
            args,
            setup,
            &args.duration,
            &setup.out_dir.join(format!("summary-{name}-{w}.json")),
        )?;
        let (cpu1, m1) = (cpu_sample(pid), MetricDeltas::read(&scrape(&setup.listen)));
        windows.push(Window {
            k6,
            cpu: CpuSample {
                server: cpu1.server - cpu0.server,
                postgres: cpu1.postgres - cpu0.postgres,
            },
            metrics: m1.since(m0),
        });
    }
    Ok(windows)
}

/// One k6 run of `loadtests/month_view.js` against the server for `duration`; returns the
/// summary it wrote to `summary`.
fn k6_run(args: &BenchArgs, setup: &Setup, duration: &str, summary: &Path) -> Result<Value> {
    let _ = std::fs::remove_file(summary);
    process::run(
        Command::new(&setup.k6)
            .current_dir(&setup.root)
            .args(["run", "--quiet", "loadtests/month_view.js"])
            .env("FIXTURES", &setup.fixtures_path)
            .env("BASE_URL", format!("http://{}", setup.listen))
            .env("VUS", args.vus.to_string())
            .env("DURATION", duration)
            .env("MONTHS", &setup.windows)
            .env("ZIPF", args.zipf.to_string())
            .env("WRITE_RATIO", args.write_ratio.to_string())
            // Figures come from /metrics: real clients send no debug header, and a hit that
            // adds `extensions.stats` is not the hit they get.
            .env("DEBUG_STATS", "0")
            .env("SUMMARY", summary),
    )?;
    Ok(serde_json::from_slice(
        &std::fs::read(summary).with_context(|| format!("k6 wrote no {}", summary.display()))?,
    )?)
}

/// wrk on the fixed request, plain and with `Accept-Encoding: gzip`, after checking that it
/// answers the month view; returns both results and the response's exact bytes (plain, gzip).
fn wrk_runs(
    args: &BenchArgs,
    setup: &Setup,
    wrk: &Path,
    name: &str,
) -> Result<(WrkResult, WrkResult, Captured)> {
    // The fixed request must really be a month view before its rate means anything.
    let auth = format!("Bearer {}", setup.wrk_token);
    let plain = fixed_request(setup, &auth, None)?;
    let gzip = fixed_request(setup, &auth, Some("gzip"))?;
    let measure = |encoding: Option<&str>, suffix: &str| -> Result<WrkResult> {
        let script = setup.out_dir.join(format!("wrk-{name}{suffix}.lua"));
        std::fs::write(&script, wrk_lua("POST", &setup.wrk_body, &auth, encoding))?;
        run_wrk(
            args,
            wrk,
            &script,
            &format!("http://{}/graphql", setup.listen),
            &setup.out_dir.join(format!("wrk-{name}{suffix}.txt")),
        )
    };
    let wrk_plain = measure(None, "")?;
    let wrk_gzip = measure(Some("gzip"), "-gzip")?;
    Ok((wrk_plain, wrk_gzip, (plain, gzip)))
}

fn start_server(
    args: &BenchArgs,
    setup: &Setup,
    mode: Mode,
    log_path: &Path,
) -> Result<KillOnDrop> {
    // A server left over on the port would answer the readiness probe and be measured instead.
    std::net::TcpListener::bind(&setup.listen)
        .with_context(|| format!("{} is taken (a server left running?)", setup.listen))?;
    let log = std::fs::File::create(log_path)?;
    let mut serve = calendar_command(&setup.bin, &setup.database_url, &["serve"]);
    serve
        .env("LISTEN_ADDR", &setup.listen)
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
        "CACHE_RESPONSE_MAX_BYTES",
    ] {
        serve.env_remove(key);
    }
    let prefix = format!("bench:{}:{}:", setup.run_id, mode.name());
    let cached = |serve: &mut Command| {
        serve
            .env("REDIS_URL", &args.redis_url)
            .env("CACHE_L2", "true")
            .env("CACHE_KEY_PREFIX", &prefix);
    };
    match mode {
        Mode::Cold => {
            serve
                .env("CACHE_L1", "false")
                .env("CACHE_L2", "false")
                .env("CACHE_WARM_CALENDARS", "0");
        }
        Mode::L2 => {
            cached(&mut serve);
            serve
                .env("CACHE_L1", "false")
                .env("CACHE_WARM_CALENDARS", "0");
        }
        Mode::L1l2NoResp => {
            cached(&mut serve);
            serve
                .env("CACHE_L1", "true")
                .env("CACHE_RESPONSE_MAX_BYTES", "0");
        }
        Mode::L1l2 => {
            cached(&mut serve);
            serve.env("CACHE_L1", "true");
            if let Some(bytes) = args.response_max_bytes {
                serve.env("CACHE_RESPONSE_MAX_BYTES", bytes.to_string());
            }
        }
        Mode::All => unreachable!(),
    }
    if let Some(bytes) = args.l1_max_bytes {
        serve.env("CACHE_L1_MAX_BYTES", bytes.to_string());
    }
    let child = serve.spawn().context("starting `calendar serve`")?;
    // Killed on every path out of the caller, including errors.
    let mut server = KillOnDrop(child);
    wait_ready(&mut server.0, &setup.listen, log_path)?;
    Ok(server)
}

/// The fixed wrk request's response body (exact bytes), checked to be the month view.
fn fixed_request(setup: &Setup, auth: &str, encoding: Option<&str>) -> Result<Vec<u8>> {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Authorization", auth),
    ];
    if let Some(e) = encoding {
        headers.push(("Accept-Encoding", e));
    }
    // Twice: the second answer is the one a repeated request gets (from the response cache).
    http_request_raw(
        &setup.listen,
        "POST",
        "/graphql",
        &headers,
        setup.wrk_body.as_bytes(),
    )?;
    let (status, head, body) = http_request_raw(
        &setup.listen,
        "POST",
        "/graphql",
        &headers,
        setup.wrk_body.as_bytes(),
    )?;
    let plain =
        if encoding.is_some() && head.to_ascii_lowercase().contains("content-encoding: gzip") {
            let mut out = Vec::new();
            flate_decode(&body, &mut out)?;
            out
        } else {
            body.clone()
        };
    let text = String::from_utf8_lossy(&plain);
    let expect = format!("\"calendar\":{{\"id\":\"{}\"", setup.wrk_calendar);
    ensure!(
        status == 200 && text.contains(&expect) && !text.contains("\"errors\""),
        "the wrk request does not return the month view (HTTP {status}): {}",
        &text[..text.len().min(300)]
    );
    Ok(body)
}

/// gunzip through the system's `gzip -dc` (xtask has no compression library and needs only this).
fn flate_decode(gz: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip -dc")?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = gz.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    child.stdout.take().expect("piped").read_to_end(out)?;
    writer.join().expect("writer thread")?;
    ensure!(child.wait()?.success(), "gzip -dc failed: not gzip data");
    Ok(())
}

fn run_wrk(
    args: &BenchArgs,
    wrk: &Path,
    script: &Path,
    url: &str,
    out: &Path,
) -> Result<WrkResult> {
    let output = Command::new(wrk)
        .args([
            "-t2",
            &format!("-c{}", args.wrk_connections),
            "-d",
            &args.wrk_duration,
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    std::fs::write(out, &text)?;
    eprint!("{text}");
    ensure!(output.status.success(), "wrk failed: {}", output.status);
    Ok(parse_wrk(&text))
}

/// What nginx achieves serving the same bytes.
struct Floor {
    plain: WrkResult,
    gzip: WrkResult,
    plain_bytes: usize,
    gzip_bytes: usize,
}

/// Serves the captured response bytes with nginx (two workers, sendfile, `gzip_static` for the
/// precompressed copy) and runs the same wrk commands against it.
fn nginx_floor(args: &BenchArgs, setup: &Setup, wrk: &Path, bytes: &Captured) -> Result<Floor> {
    eprintln!("\n=== floor: nginx serving the same bytes ===");
    let nginx = ensure_apt_tool("nginx", &["-v"], "nginx")
        .context("nginx is needed for the floor (--no-floor skips it)")?;
    let dir = setup.out_dir.join("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("month_view.json"), &bytes.0)?;
    std::fs::write(www.join("month_view.json.gz"), &bytes.1)?;
    let port = args.port + 1;
    let d = dir.display();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
           client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           default_type application/graphql-response+json;\n\
           server {{\n    listen 127.0.0.1:{port};\n    root {www};\n    gzip_static on;\n    gzip_http_version 1.0;\n  }}\n}}\n",
        www = www.display()
    );
    std::fs::create_dir_all(dir.join("tmp"))?;
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new(&nginx)
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx")?;
    let _nginx = TermOnDrop(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get_status(&addr, "/month_view.json").is_err() {
        ensure!(
            Instant::now() < deadline,
            "nginx did not start; see {d}/error.log"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, head, body) = http_request_raw(
        &addr,
        "GET",
        "/month_view.json",
        &[("Accept-Encoding", "gzip")],
        b"",
    )?;
    ensure!(
        status == 200
            && body == bytes.1
            && head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "nginx does not serve the precompressed copy (gzip_static)"
    );
    let url = format!("http://{addr}/month_view.json");
    let script = dir.join("wrk-plain.lua");
    std::fs::write(
        &script,
        wrk_lua("GET", "", &format!("Bearer {}", setup.wrk_token), None),
    )?;
    let plain = run_wrk(args, wrk, &script, &url, &dir.join("wrk-plain.txt"))?;
    let script = dir.join("wrk-gzip.lua");
    std::fs::write(
        &script,
        wrk_lua(
            "GET",
            "",
            &format!("Bearer {}", setup.wrk_token),
            Some("gzip"),
        ),
    )?;
    let gzip = run_wrk(args, wrk, &script, &url, &dir.join("wrk-gzip.txt"))?;
    Ok(Floor {
        plain,
        gzip,
        plain_bytes: bytes.0.len(),
        gzip_bytes: bytes.1.len(),
    })
}

fn report(
    args: &BenchArgs,
    setup: &Setup,
    command: &str,
    results: &[ModeResult],
    floor: Option<&Floor>,
) {
    println!(
        "\n{} {} | `{command}` | VUs {} | {} x {} after {} warm-up | Zipf s={} over {} calendars x {} months | write ratio {} | wrk -t2 -c{} -d{} (calendar {}, anchor month)",
        today(),
        commit(&setup.root),
        args.vus,
        args.windows,
        args.duration,
        args.warmup,
        args.zipf,
        setup.n_fixtures,
        args.months,
        args.write_ratio,
        args.wrk_connections,
        args.wrk_duration,
        setup.wrk_calendar,
    );
    println!(
        "\n| mode | window | k6 req/s | p50 ms | p95 ms | p99 ms | errors | SQL/req | L1 hit | L2 hit | keys from cache | response hit | server CPU ms/req | PostgreSQL CPU ms/req | server / PostgreSQL |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        for (i, w) in r.windows.iter().enumerate() {
            println!("{}", window_row(r.mode, i + 1, w));
        }
    }
    let cold = results.iter().find(|r| r.mode == "cold");
    if let Some(cold) = cold {
        for r in results.iter().filter(|r| r.mode != "cold") {
            println!(
                "- {} over cold (last windows): k6 {}",
                r.mode,
                ratio(
                    r.windows.last().and_then(|w| k6_rps(&w.k6)),
                    cold.windows.last().and_then(|w| k6_rps(&w.k6))
                ),
            );
        }
    }
    if results.iter().any(|r| r.wrk.is_some()) {
        println!("\n| server | wrk req/s | p50 / p99 ms | wrk gzip req/s | p50 / p99 ms |");
        println!("|---|---:|---:|---:|---:|");
        for r in results {
            println!(
                "| {} | {} | {} | {} | {} |",
                r.mode,
                wrk_rps(r.wrk.as_ref()),
                wrk_lat(r.wrk.as_ref()),
                wrk_rps(r.wrk_gzip.as_ref()),
                wrk_lat(r.wrk_gzip.as_ref())
            );
        }
        if let Some(f) = floor {
            println!(
                "| nginx, same bytes ({} plain, {} gzip) | {} | {} | {} | {} |",
                f.plain_bytes,
                f.gzip_bytes,
                wrk_rps(Some(&f.plain)),
                wrk_lat(Some(&f.plain)),
                wrk_rps(Some(&f.gzip)),
                wrk_lat(Some(&f.gzip)),
            );
            if let Some(hit) = results.iter().find(|r| r.mode == "l1l2") {
                println!(
                    "- whole-response hits against the floor: plain {}, gzip {}",
                    ratio(hit.wrk.as_ref().and_then(|w| w.rps), f.plain.rps),
                    ratio(hit.wrk_gzip.as_ref().and_then(|w| w.rps), f.gzip.rps),
                );
            }
        }
    }
    println!("\n| mode | VmRSS MiB (peak) | L1 weighted MiB | response cache weighted MiB |");
    println!("|---|---:|---:|---:|");
    for r in results {
        println!(
            "| {} | {} ({}) | {} | {} |",
            r.mode,
            mib(r.vm_rss_kib),
            mib(r.vm_hwm_kib),
            num(r.l1_weighted_bytes.map(|b| b / 1_048_576.0), 1),
            num(r.response_weighted_bytes.map(|b| b / 1_048_576.0), 1),
        );
    }
}

fn window_row(mode: &str, index: usize, w: &Window) -> String {
    let k = &w.k6;
    let read = "http_req_duration{name:MonthView}";
    let requests = metric(k, "http_reqs", "count").unwrap_or(0.0);
    let reads = metric(k, "http_reqs{name:MonthView}", "count").unwrap_or(0.0);
    let m = &w.metrics;
    let share = |a: f64, b: f64| {
        if a + b > 0.0 {
            format!("{:.1}%", 100.0 * a / (a + b))
        } else {
            "n/a".to_owned()
        }
    };
    let per_request = |seconds: f64| {
        if requests > 0.0 {
            format!("{:.2}", seconds * 1000.0 / requests)
        } else {
            "n/a".to_owned()
        }
    };
    format!(
        "| {mode} | {index} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        num(k6_rps(k), 1),
        num(metric(k, read, "med"), 1),
        num(metric(k, read, "p(95)"), 1),
        num(metric(k, read, "p(99)"), 1),
        metric(k, "errors", "rate")
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.2}%", r * 100.0)),
        if reads > 0.0 {
            format!("{:.2}", m.statements / requests.max(1.0))
        } else {
            "n/a".to_owned()
        },
        share(m.l1_hits, m.l1_misses),
        share(m.l2_hits, m.l2_misses),
        share(m.l1_hits + m.l2_hits, m.db_loads + m.coalesced),
        share(m.response_hits, m.response_misses),
        per_request(w.cpu.server),
        per_request(w.cpu.postgres),
        if w.cpu.postgres > 0.0 {
            format!("{:.2}x", w.cpu.server / w.cpu.postgres)
        } else {
            "n/a".to_owned()
        },
    )
}

fn wrk_rps(w: Option<&WrkResult>) -> String {
    w.map_or_else(
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
    )
}

fn wrk_lat(w: Option<&WrkResult>) -> String {
    format!(
        "{} / {}",
        num(w.and_then(|w| w.p50_ms), 2),
        num(w.and_then(|w| w.p99_ms), 2)
    )
}

/// The server's `/metrics` text (empty if it does not answer).
fn scrape(addr: &str) -> String {
    metrics_text(addr).unwrap_or_default()
}

/// CPU seconds (user + system) of `pid` and of every process named `postgres`.
fn cpu_sample(pid: u32) -> CpuSample {
    CpuSample {
        server: process_ticks(pid).unwrap_or(0) as f64 / clock_ticks(),
        postgres: postgres_cpu_secs(),
    }
}

/// CPU seconds (user + system) of every process named `postgres` (the server and its
/// backends; a backend that exited between two samples takes its share with it).
pub(crate) fn postgres_cpu_secs() -> f64 {
    let tick = clock_ticks();
    let mut postgres = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(p) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
            {
                postgres += process_ticks(p).unwrap_or(0) as f64 / tick;
            }
        }
    }
    postgres
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`, counted
/// after the parenthesised command name, which may hold spaces).
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
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
    process::run(&mut build)?;
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

/// Drops and recreates `database`, migrates it and seeds the large scale (anchored at `anchor`,
/// the current month when `None`); returns the seed time in seconds. `calendar` builds a
/// `calendar` command against that database.
pub(crate) fn seed_large(
    database: &str,
    anchor: Option<&str>,
    calendar: impl Fn(&[&str]) -> Command,
) -> Result<f64> {
    psql(&format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    ))?;
    psql(&format!("CREATE DATABASE \"{database}\""))?;
    process::run(&mut calendar(&["migrate"]))?;
    let started = Instant::now();
    let mut seed = vec!["seed", "--scale", "large"];
    if let Some(anchor) = anchor {
        seed.extend(["--anchor", anchor]);
    }
    process::run(&mut calendar(&seed))?;
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

/// A fixture's calendar id and its owner's token.
pub(crate) fn fixture_of(fixture: &Value) -> Result<(&str, &str)> {
    let field = |name: &str| {
        fixture[name]
            .as_str()
            .with_context(|| format!("fixture without {name}: {fixture}"))
    };
    Ok((field("calendarId")?, field("token")?))
}

/// The month view query, from the file the k6 script's query mirrors.
fn month_view_query(root: &Path) -> Result<String> {
    let path = root.join("loadtests/month_view.graphql");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A wrk script sending one fixed request. The body goes in a Lua long string, which needs no
/// escaping.
fn wrk_lua(method: &str, body: &str, authorization: &str, accept_encoding: Option<&str>) -> String {
    let mut s = format!(
        "-- written by `cargo xtask bench`: one fixed request\n\
         wrk.method = \"{method}\"\n\
         wrk.headers[\"Authorization\"] = \"{authorization}\"\n"
    );
    if !body.is_empty() {
        s.push_str(&format!(
            "wrk.body = [==[{body}]==]\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ));
    }
    if let Some(e) = accept_encoding {
        s.push_str(&format!("wrk.headers[\"Accept-Encoding\"] = \"{e}\"\n"));
    }
    s
}

/// A Debian-packaged tool on PATH, installed with apt-get when missing and running as root;
/// `None` (with a note) otherwise.
fn ensure_apt_tool(tool: &str, probe: &[&str], package: &str) -> Option<PathBuf> {
    let found = || {
        Command::new(tool)
            .args(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if found() {
        return Some(tool.into());
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
        eprintln!("{tool} is not on PATH; installing it with apt-get");
        let ok = Command::new("apt-get")
            .args(["install", "-y", package])
            .status()
            .is_ok_and(|s| s.success());
        if ok && found() {
            return Some(tool.into());
        }
    }
    eprintln!(
        "note: {tool} is not available (install it, e.g. `apt-get install {package}`); skipping what needs it"
    );
    None
}

/// VmRSS and VmHWM of a process, in KiB.
pub(crate) fn memory(pid: u32) -> (Option<u64>, Option<u64>) {
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

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub(crate) fn psql(sql: &str) -> Result<()> {
    process::run(Command::new("psql").args([
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_months_around_the_anchor() {
        let m = seed_months("2025-01-01").unwrap();
        assert_eq!(
            m[0],
            ("2025-01-01T00:00:00Z".into(), "2025-02-01T00:00:00Z".into())
        );
        assert_eq!(
            m[1],
            ("2024-12-01T00:00:00Z".into(), "2025-01-01T00:00:00Z".into())
        );
        assert_eq!(
            m[2],
            ("2025-02-01T00:00:00Z".into(), "2025-03-01T00:00:00Z".into())
        );
        assert_eq!(
            seed_months("2025-12-01").unwrap()[2].1,
            "2026-02-01T00:00:00Z"
        );
    }

    #[test]
    fn a_window_row_from_a_k6_summary_cpu_and_metrics() {
        let summary = serde_json::json!({ "metrics": {
            "http_reqs": { "values": { "count": 100, "rate": 51.0 } },
            "http_reqs{name:MonthView}": { "values": { "count": 99, "rate": 50.25 } },
            "http_req_duration{name:MonthView}": { "values": { "med": 2.5, "p(95)": 8.25, "p(99)": 11.75 } },
            "errors": { "values": { "rate": 0.0 } }
        }});
        let w = Window {
            k6: summary,
            cpu: CpuSample {
                server: 0.5,
                postgres: 1.0,
            },
            metrics: MetricDeltas {
                statements: 50.0,
                l1_hits: 90.0,
                l1_misses: 10.0,
                l2_hits: 6.0,
                l2_misses: 4.0,
                db_loads: 4.0,
                response_hits: 30.0,
                response_misses: 70.0,
                ..MetricDeltas::default()
            },
        };
        assert_eq!(
            window_row("l1l2", 1, &w),
            "| l1l2 | 1 | 50.2 | 2.5 | 8.2 | 11.8 | 0.00% | 0.50 | 90.0% | 60.0% | 96.0% | 30.0% | 5.00 | 10.00 | 0.50x |"
        );
    }

    #[test]
    fn metric_deltas_from_prometheus_text() {
        let text = "cal_sql_statements_total 10\n\
                    cal_cache_hits_total{kind=\"user\",tier=\"l1\"} 5\n\
                    cal_cache_hits_total{kind=\"user\",tier=\"db\"} 2\n\
                    cal_cache_misses_total{kind=\"user\",tier=\"db\"} 1\n\
                    cal_cache_response_hits_total 3\n";
        let m = MetricDeltas::read(text).since(MetricDeltas::default());
        assert_eq!(
            (m.statements, m.l1_hits, m.db_loads, m.response_hits),
            (10.0, 5.0, 3.0, 3.0)
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
    fn process_ticks_of_this_process() {
        assert!(process_ticks(std::process::id()).is_some());
    }
}
