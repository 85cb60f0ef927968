//! Subscriptions from the outside: a `graphql-transport-ws` client over a blocking socket
//! ([`Subscriber`], tungstenite), the delivery-lag probe that `bench-cluster` runs beside its
//! load ([`LagProbe`]: renames through one instance, a subscriber on another, the time from each
//! write's acknowledgement to its message), and `bench-subscriptions` ([`bench`]): the memory
//! per idle subscription and per 10,000 on one instance, and the time one write takes to reach
//! all of them.

use crate::http_client::{http_request, metrics_text};
use crate::process::KillOnDrop;
use crate::{bench, process, report};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// What a subscriber asks for: enough to recognise the probe's writes.
const SUBSCRIPTION: &str = "subscription($c: ID!) { calendarChanged(calendarId: $c) { events { id event { title } } resync } }";

/// One `graphql-transport-ws` connection, past `connection_init`.
pub(crate) struct Subscriber {
    ws: WebSocket<TcpStream>,
}

impl Subscriber {
    pub(crate) fn connect(addr: &str, token: &str) -> Result<Subscriber> {
        let stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!("ws://{addr}/graphql").into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws"
                .parse()
                .expect("a valid header value"),
        );
        let (ws, _) = tungstenite::client::client(request, stream)
            .map_err(|e| anyhow::anyhow!("WebSocket handshake with {addr}: {e}"))?;
        let mut me = Subscriber { ws };
        me.send(json!({
            "type": "connection_init",
            "payload": { "Authorization": format!("Bearer {token}") },
        }))?;
        match me.read()? {
            Some(msg) if msg["type"] == "connection_ack" => Ok(me),
            other => bail!("expected connection_ack from {addr}, got {other:?}"),
        }
    }

    pub(crate) fn subscribe(&mut self, id: &str, calendar: &str) -> Result<()> {
        self.send(json!({
            "id": id, "type": "subscribe",
            "payload": { "query": SUBSCRIPTION, "variables": { "c": calendar } },
        }))
    }

    /// How long a read waits before [`Subscriber::next`] answers `None`.
    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        Ok(self.ws.get_ref().set_read_timeout(Some(timeout))?)
    }

    /// The next `next` payload; `None` when nothing arrived within the read timeout. Pings are
    /// answered; an `error` or a close is an error.
    fn next(&mut self) -> Result<Option<Value>> {
        loop {
            let Some(msg) = self.read()? else {
                return Ok(None);
            };
            match msg["type"].as_str() {
                Some("next") => return Ok(Some(msg["payload"].clone())),
                Some("ping") => self.send(json!({ "type": "pong" }))?,
                Some("error" | "complete") => bail!("the subscription ended: {msg}"),
                _ => {}
            }
        }
    }

    fn send(&mut self, msg: Value) -> Result<()> {
        Ok(self.ws.send(Message::text(msg.to_string()))?)
    }

    fn read(&mut self) -> Result<Option<Value>> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return Ok(Some(serde_json::from_str(text.as_str())?)),
                Ok(Message::Close(frame)) => bail!("the server closed the connection: {frame:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One GraphQL request over HTTP; the body, whatever its errors.
fn graphql(addr: &str, token: &str, query: &str, variables: Value) -> Result<Value> {
    let body = json!({ "query": query, "variables": variables }).to_string();
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, text) = http_request(addr, "POST", "/graphql", &headers, &body)?;
    ensure!(status == 200, "POST /graphql on {addr}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Renames one single (non-recurring) event of a calendar, carrying its version along.
struct Renamer {
    addr: String,
    token: String,
    event: String,
    version: i64,
}

impl Renamer {
    /// A renamer of the calendar's first single event.
    fn new(addr: &str, token: &str, calendar: &str) -> Result<Renamer> {
        let q = "query($c: ID!) { changes(calendarId: $c, first: 100) { events { id event { version rrule } } } }";
        let body = graphql(addr, token, q, json!({ "c": calendar }))?;
        let events = body["data"]["changes"]["events"]
            .as_array()
            .with_context(|| format!("no changes page: {body}"))?;
        let single = events
            .iter()
            .find(|e| e["event"]["rrule"].is_null() && e["event"]["version"].is_i64())
            .with_context(|| format!("calendar {calendar} has no single event to rename"))?;
        Ok(Renamer {
            addr: addr.to_owned(),
            token: token.to_owned(),
            event: single["id"].as_str().unwrap_or_default().to_owned(),
            version: single["event"]["version"].as_i64().unwrap_or(0),
        })
    }

    /// Renames the event; `false` when another writer got there first (the version is then
    /// read again).
    fn rename(&mut self, title: &str) -> Result<bool> {
        let q = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { version } }";
        let vars = json!({ "e": self.event, "v": self.version, "t": title });
        let body = graphql(&self.addr, &self.token, q, vars)?;
        if let Some(v) = body["data"]["updateEvent"]["version"].as_i64() {
            self.version = v;
            return Ok(true);
        }
        ensure!(
            body["errors"][0]["extensions"]["code"] == "VERSION_CONFLICT",
            "renaming {}: {body}",
            self.event
        );
        let q = "query($e: ID!) { event(id: $e) { version } }";
        let now = graphql(&self.addr, &self.token, q, json!({ "e": self.event }))?;
        self.version = now["data"]["event"]["version"]
            .as_i64()
            .with_context(|| format!("reading {}: {now}", self.event))?;
        Ok(false)
    }
}

const PROBE_TITLE: &str = "lag probe ";

/// Renames through one instance at a steady pace while a subscriber on another records when
/// each rename's message arrives.
pub(crate) struct LagProbe {
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Result<Vec<(u64, Instant)>>>,
    reader: JoinHandle<Result<(HashMap<u64, Instant>, u64)>>,
}

/// What the probe saw.
#[derive(Debug, Default)]
pub(crate) struct LagSamples {
    /// Acknowledged renames.
    pub(crate) writes: usize,
    /// From each delivered rename's acknowledgement to its message, in ms, sorted; a message
    /// that arrived before its writer had the acknowledgement counts as 0.
    pub(crate) lags_ms: Vec<f64>,
    /// Messages that arrived before the acknowledgement did.
    pub(crate) early: usize,
    /// Resync messages the subscriber got.
    pub(crate) resyncs: u64,
}

impl LagSamples {
    /// The `q` quantile (nearest rank) in ms.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.lags_ms.len();
        (n > 0).then(|| {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            self.lags_ms[rank - 1]
        })
    }
}

impl LagProbe {
    /// Subscribes on `reader` to `fixture`'s calendar, then renames one of its events through
    /// `writer` every `every`, until [`LagProbe::finish`].
    pub(crate) fn start(
        writer: &str,
        reader: &str,
        fixture: &Value,
        every: Duration,
    ) -> Result<LagProbe> {
        let (calendar, token) = bench::fixture_of(fixture)?;
        let mut renamer = Renamer::new(writer, token, calendar)?;
        let mut sub = Subscriber::connect(reader, token)?;
        sub.subscribe("probe", calendar)?;
        sub.set_timeout(Duration::from_millis(100))?;
        let stop = Arc::new(AtomicBool::new(false));
        let writes_done = Arc::new(AtomicBool::new(false));
        let reader = {
            let writes_done = writes_done.clone();
            std::thread::spawn(move || {
                let (mut seen, mut resyncs) = (HashMap::new(), 0);
                // Messages still on their way get 3 s after the last write.
                let mut until: Option<Instant> = None;
                loop {
                    if writes_done.load(Ordering::Acquire) {
                        let until =
                            *until.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
                        if Instant::now() >= until {
                            break;
                        }
                    }
                    let Some(payload) = sub.next()? else {
                        continue;
                    };
                    let now = Instant::now();
                    let message = &payload["data"]["calendarChanged"];
                    if message["resync"] == true {
                        resyncs += 1;
                    }
                    for e in message["events"].as_array().into_iter().flatten() {
                        if let Some(n) = e["event"]["title"]
                            .as_str()
                            .and_then(|t| t.strip_prefix(PROBE_TITLE))
                            .and_then(|n| n.parse().ok())
                        {
                            seen.entry(n).or_insert(now);
                        }
                    }
                }
                Ok((seen, resyncs))
            })
        };
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acks = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let started = Instant::now();
                    n += 1;
                    if renamer.rename(&format!("{PROBE_TITLE}{n}"))? {
                        acks.push((n, Instant::now()));
                    }
                    std::thread::sleep(every.saturating_sub(started.elapsed()));
                }
                writes_done.store(true, Ordering::Release);
                Ok(acks)
            })
        };
        Ok(LagProbe {
            stop,
            writer,
            reader,
        })
    }

    /// Stops writing, waits for the messages still on their way, and pairs them with the acks.
    pub(crate) fn finish(self) -> Result<LagSamples> {
        self.stop.store(true, Ordering::Release);
        let acks = self
            .writer
            .join()
            .map_err(|_| anyhow::anyhow!("the probe's writer panicked"))??;
        let (seen, resyncs) = self
            .reader
            .join()
            .map_err(|_| anyhow::anyhow!("the probe's subscriber panicked"))??;
        let mut samples = LagSamples {
            writes: acks.len(),
            resyncs,
            ..LagSamples::default()
        };
        for (n, acked) in acks {
            let Some(arrived) = seen.get(&n) else {
                continue;
            };
            match arrived.checked_duration_since(acked) {
                Some(lag) => samples.lags_ms.push(lag.as_secs_f64() * 1000.0),
                None => {
                    samples.early += 1;
                    samples.lags_ms.push(0.0);
                }
            }
        }
        samples.lags_ms.sort_by(f64::total_cmp);
        Ok(samples)
    }
}

#[derive(clap::Args)]
pub struct BenchSubscriptionsArgs {
    /// Subscriptions open at the end of each run.
    #[arg(long, default_value_t = 10_000)]
    subscriptions: usize,
    /// Subscriptions per WebSocket connection, one run (with a fresh server) per value.
    #[arg(long, value_delimiter = ',', default_value = "1,20")]
    per_connection: Vec<usize>,
    /// The server's port on 127.0.0.1.
    #[arg(long, default_value_t = 18110)]
    port: u16,
    /// The database (recreated with the demo seed on every run of the command).
    #[arg(long, default_value = "calendar_bench_subscriptions")]
    database: String,
    /// Build and run the release binary (`--release false` for a debug build).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    release: bool,
}

/// Subscriptions open before the baseline is read: the first ones pay for what every later
/// one shares (the feed, buffers the allocator keeps).
const BASELINE: usize = 100;

/// One run of `bench-subscriptions`.
struct MemoryRun {
    per_connection: usize,
    connections: usize,
    ready_kib: Option<u64>,
    baseline_kib: Option<u64>,
    full_kib: Option<u64>,
    open_secs: f64,
    /// From one write's acknowledgement until every subscription had sent its message, and the
    /// SQL statements the server sent meanwhile per subscription (the write's own included).
    fan_out: Option<FanOut>,
}

impl MemoryRun {
    fn per_subscription_kib(&self, subscriptions: usize) -> Option<f64> {
        let (b, f) = (self.baseline_kib?, self.full_kib?);
        Some((f as f64 - b as f64) / (subscriptions - BASELINE) as f64)
    }
}

fn scrape(addr: &str, name: &str, labels: &[&str]) -> Result<f64> {
    Ok(crate::prom::prom_sum(&metrics_text(addr)?, name, labels).unwrap_or(0.0))
}

/// Waits until the server reports `want` of a metric (e.g. subscriptions listening).
fn wait_metric(addr: &str, name: &str, labels: &[&str], want: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = scrape(addr, name, labels)?;
        if have >= want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{name} on {addr} stayed at {have}, below {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn bench(args: BenchSubscriptionsArgs) -> Result<()> {
    ensure!(
        args.subscriptions > BASELINE,
        "--subscriptions must be above {BASELINE}"
    );
    ensure!(
        args.per_connection
            .iter()
            .all(|&p| (1..=BASELINE).contains(&p) && BASELINE.is_multiple_of(p)),
        "--per-connection values must divide {BASELINE}"
    );
    let command = report::command_line();
    let root = crate::root();
    let out_dir = bench::target_dir(&root).join("subscriptions-bench");
    std::fs::create_dir_all(&out_dir)?;
    let bin = bench::build_calendar(&root, args.release)?;
    let database_url = bench::database_url(&args.database);
    let calendar = |sub: &[&str]| bench::calendar_command(&bin, &database_url, sub);
    bench::psql(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        args.database
    ))?;
    bench::psql(&format!("CREATE DATABASE \"{}\"", args.database))?;
    process::run(&mut calendar(&["migrate"]))?;
    process::run(&mut calendar(&["seed", "--scale", "demo"]))?;
    let (fixtures, _) = bench::write_fixtures(calendar, 1, &out_dir.join("fixtures.json"))?;
    let (calendar_id, token) = bench::fixture_of(&fixtures[0])?;
    let addr = format!("127.0.0.1:{}", args.port);
    let mut runs = Vec::new();
    for (i, &per_connection) in args.per_connection.iter().enumerate() {
        let connections = args.subscriptions.div_ceil(per_connection);
        let subscriptions = connections * per_connection;
        eprintln!(
            "\n=== {subscriptions} subscriptions, {per_connection} per connection ({connections} connections) ==="
        );
        let log = out_dir.join(format!("server-{per_connection}.log"));
        let out = std::fs::File::create(&log)?;
        let mut server = KillOnDrop(
            calendar(&["serve"])
                .env("LISTEN_ADDR", &addr)
                .env("CAL_ENV", "prod")
                .env("ADMIN_TOKEN", bench::ADMIN_TOKEN)
                .env("CACHE_KEY_PREFIX", format!("benchsubs:{i}:"))
                .env(
                    "MAX_SUBSCRIPTIONS_PER_CONNECTION",
                    per_connection.to_string(),
                )
                .env("MAX_SUBSCRIPTIONS_PER_VIEWER", subscriptions.to_string())
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("starting the server")?,
        );
        process::wait_ready(&mut server.0, &addr, &log)?;
        let pid = server.0.id();
        let ready_kib = bench::memory(pid).0;
        let started = Instant::now();
        let mut held = Vec::with_capacity(connections);
        let mut baseline_kib = None;
        for c in 0..connections {
            let mut sub = Subscriber::connect(&addr, token)?;
            for s in 0..per_connection {
                sub.subscribe(&s.to_string(), calendar_id)?;
            }
            held.push(sub);
            if (c + 1) * per_connection == BASELINE {
                wait_metric(&addr, "cal_subscriptions_active", &[], BASELINE as f64)?;
                settle();
                baseline_kib = bench::memory(pid).0;
            }
        }
        wait_metric(&addr, "cal_subscriptions_active", &[], subscriptions as f64)?;
        let open_secs = started.elapsed().as_secs_f64();
        settle();
        let full_kib = bench::memory(pid).0;
        let fan_out = fan_out(&addr, token, calendar_id, subscriptions)
            .inspect_err(|e| eprintln!("warning: fan-out not measured: {e:#}"))
            .ok();
        let run = MemoryRun {
            per_connection,
            connections,
            ready_kib,
            baseline_kib,
            full_kib,
            open_secs,
            fan_out,
        };
        eprintln!("{}", memory_row(&run, subscriptions));
        runs.push(run);
        drop(held);
    }
    let mut out = format!(
        "`{command}`: {} {} | {} | demo seed, one viewer and calendar, in-process bus\n\n",
        report::today(),
        report::commit(&root),
        report::machine(),
    );
    out.push_str(
        "| per connection | connections | subscriptions | RSS ready MiB | RSS at 100 MiB | RSS at all MiB | KiB per subscription | MiB per 10,000 | open s | one write to all s | SQL per message |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in &runs {
        out.push_str(&memory_row(run, run.connections * run.per_connection));
        out.push('\n');
    }
    report::publish(&out_dir.join("results.md"), &out)
}

/// Lets the allocator and the server's tasks come to rest before RSS is read.
fn settle() {
    std::thread::sleep(Duration::from_secs(2));
}

/// One write, then the time until every subscription has sent its message (the server's
/// `cal_subscription_messages_total{kind="changes"}`).
#[derive(Debug, Clone, Copy)]
struct FanOut {
    secs: f64,
    statements_per_message: f64,
}

fn fan_out(addr: &str, token: &str, calendar: &str, subscriptions: usize) -> Result<FanOut> {
    let before = scrape(
        addr,
        "cal_subscription_messages_total",
        &["kind=\"changes\""],
    )?;
    let mut renamer = Renamer::new(addr, token, calendar)?;
    let statements_before = scrape(addr, "cal_sql_statements_total", &[])?;
    let started = Instant::now();
    ensure!(renamer.rename("fan-out")?, "the fan-out write conflicted");
    wait_metric(
        addr,
        "cal_subscription_messages_total",
        &["kind=\"changes\""],
        before + subscriptions as f64,
    )?;
    let secs = started.elapsed().as_secs_f64();
    let statements = scrape(addr, "cal_sql_statements_total", &[])? - statements_before;
    Ok(FanOut {
        secs,
        statements_per_message: statements / subscriptions as f64,
    })
}

fn memory_row(run: &MemoryRun, subscriptions: usize) -> String {
    let per = run.per_subscription_kib(subscriptions);
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
        run.per_connection,
        run.connections,
        subscriptions,
        report::mib(run.ready_kib),
        report::mib(run.baseline_kib),
        report::mib(run.full_kib),
        report::num(per, 1),
        report::num(per.map(|k| k * 10_000.0 / 1024.0), 1),
        run.open_secs,
        report::num(run.fan_out.map(|f| f.secs), 2),
        report::num(run.fan_out.map(|f| f.statements_per_message), 2),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_quantiles_are_nearest_rank() {
        let samples = LagSamples {
            lags_ms: (1..=100).map(f64::from).collect(),
            ..LagSamples::default()
        };
        assert_eq!(samples.quantile(0.5), Some(50.0));
        assert_eq!(samples.quantile(0.99), Some(99.0));
        assert_eq!(samples.quantile(1.0), Some(100.0));
        assert_eq!(LagSamples::default().quantile(0.5), None);
    }

    #[test]
    fn memory_per_subscription_leaves_the_baseline_out() {
        let run = MemoryRun {
            per_connection: 1,
            connections: 1100,
            ready_kib: Some(10_000),
            baseline_kib: Some(20_000),
            full_kib: Some(30_000),
            open_secs: 1.0,
            fan_out: None,
        };
        assert_eq!(run.per_subscription_kib(1100), Some(10.0));
        assert!(memory_row(&run, 1100).ends_with("| 10.0 | 97.7 | 1.0 | n/a | n/a |"));
    }
}
