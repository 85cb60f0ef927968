//! Several `calendar serve` instances on one machine, sharing PostgreSQL, Redis and a
//! Kafka-protocol broker (tansu, in-memory storage), behind a small round-robin TCP load balancer.
//!
//! - `cargo xtask cluster`: starts such a setup for people to try (GraphiQL through the balancer)
//!   and keeps it up until Ctrl-C.
//! - `cargo xtask bench-cluster`: in one run, drives the month view with k6 through the balancer
//!   against 1 instance, then against N (default 3), and reports throughput, latency and the
//!   cross-instance invalidation lag summed over every instance's `/metrics`; beside the load, a
//!   probe renames an event through the first instance every `--probe-every-ms` and a
//!   `calendarChanged` subscriber on the last one times each rename from its acknowledgement to
//!   its message ([`crate::subscriptions::LagProbe`]).
//!
//! `cargo xtask loadtest` (`crate::loadtest`) brings up the benchmark's setup the same way, with
//! these functions, for one k6 scenario.
//!
//! The balancer works at the TCP level: it picks the next instance for each accepted connection
//! (skipping one that refuses it) and copies bytes both ways, so a keep-alive client stays on the
//! instance it first reached.

use crate::bench;
use crate::http_client::metrics_text;
use crate::process::{self, KillOnDrop};
use crate::prom::{
    Buckets, Quantile, add_buckets, histogram_buckets, prom_sum, quantile, sum_counter,
};
use crate::report;
use crate::subscriptions::{LagProbe, LagSamples};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// More instances than this on one machine only measure the scheduler.
const MAX_INSTANCES: u16 = 16;
/// The invalidation lag histogram every instance exports.
const LAG: &str = "cal_invalidation_lag_seconds";
/// From a writer sending a change to a subscription's message carrying it (the probe's).
const DELIVERY: &str = "cal_subscription_delivery_seconds";

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Number of `calendar serve` instances behind the load balancer.
    #[arg(long, default_value_t = 3)]
    instances: u16,
    /// The load balancer's port on 127.0.0.1; instance i listens on PORT+i.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Database on the local PostgreSQL (created, migrated, and seeded with the demo data when empty).
    #[arg(long, default_value = "calendar_cluster")]
    database: String,
    /// Nice value of the broker process (`0`: unchanged). On this one machine the broker shares
    /// the cores with the load; a higher priority stands in for the broker's own machine.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    broker_nice: i32,
    /// Redis shared by the instances (L2 tier, key prefix `cluster:`).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Build and run the release binary (`--release false` for a debug build).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    release: bool,
    /// Partitions of the invalidation topic (every instance reads all of them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    partitions: u16,
}

/// What `bench-cluster` and `loadtest` run on: the benchmark database, the broker's priority,
/// the shared Redis and the build of the binary.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchSetup {
    /// The benchmark database (seeded with the large scale when it is missing or stale).
    #[arg(long, default_value = "calendar_bench")]
    pub(crate) database: String,
    /// Drop, recreate and seed the database even when it holds the large scale for this month.
    #[arg(long)]
    pub(crate) reseed: bool,
    /// Nice value of the broker process (`0`: unchanged). On this one machine the broker shares
    /// the cores with the load; a higher priority stands in for the broker's own machine.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    pub(crate) broker_nice: i32,
    /// Redis shared by the instances (each run uses key prefixes of its own).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub(crate) redis_url: String,
    /// Build and run the release binary (`--release false` for a debug build).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) release: bool,
}

#[derive(clap::Args, Debug)]
pub struct BenchClusterArgs {
    /// Instances of the second phase (the first always runs one).
    #[arg(long, default_value_t = 3)]
    instances: u16,
    /// The load balancer's port on 127.0.0.1; instance i listens on PORT+i.
    #[arg(long, default_value_t = 18090)]
    port: u16,
    #[command(flatten)]
    setup: BenchSetup,
    /// Concurrent virtual users.
    #[arg(long, default_value_t = 20)]
    vus: u32,
    /// How long each measured k6 run lasts (k6 duration syntax: 30s, 2m).
    #[arg(long, default_value = "30s")]
    duration: String,
    /// How long the unreported k6 warm-up before each measured run lasts (`0` skips it).
    #[arg(long, default_value = "10s")]
    warmup: String,
    /// Number of calendars (with a token for their owner) that k6 picks from.
    #[arg(long, default_value_t = 200)]
    calendars: u32,
    /// Zipf exponent of the calendar choice (`0`: uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Share of k6 iterations that also rename an event (the writes whose invalidations are measured).
    #[arg(long, default_value_t = 0.01)]
    write_ratio: f64,
    /// Milliseconds between the subscription probe's renames (through the first instance, heard
    /// by a subscriber on the last; `0`: no probe).
    #[arg(long, default_value_t = 200)]
    probe_every_ms: u64,
    /// Partitions of the invalidation topic (every instance reads all of them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    partitions: u16,
}

/// The options the cluster commands share, checked before anything starts.
pub(crate) fn validate(instances: u16, port: u16, database: &str) -> Result<()> {
    ensure!(
        (1..=MAX_INSTANCES).contains(&instances),
        "--instances must be between 1 and {MAX_INSTANCES}"
    );
    ensure!(port != 0, "--port must not be 0");
    ensure!(
        u32::from(port) + u32::from(instances) <= u32::from(u16::MAX),
        "--port {port} leaves no room for {instances} instance ports above it (PORT+1..PORT+{instances})"
    );
    // The name goes into SQL and a URL; refuse anything that would need quoting.
    ensure!(
        !database.is_empty()
            && database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "--database must be letters, digits and underscores"
    );
    Ok(())
}

/// Binds the balancer's port and checks that the instances' ports are free, with a message that
/// says which one is taken.
pub(crate) fn claim_ports(port: u16, instances: u16) -> Result<TcpListener> {
    let taken = |p: u16, what: &str, e: std::io::Error| -> anyhow::Error {
        if e.kind() == ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "port {p} ({what}) is already taken on 127.0.0.1 (another cluster or `calendar serve`?); \
                 stop it or choose another --port (the balancer uses PORT, the instances PORT+1..PORT+{instances})"
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot listen on 127.0.0.1:{p} ({what})"))
        }
    };
    let listener =
        TcpListener::bind(("127.0.0.1", port)).map_err(|e| taken(port, "load balancer", e))?;
    for i in 1..=instances {
        let p = port + i;
        drop(
            TcpListener::bind(("127.0.0.1", p))
                .map_err(|e| taken(p, &format!("instance {i}"), e))?,
        );
    }
    Ok(listener)
}

/// `host:port` of a `redis://[user:password@]host[:port][/db]` URL (port 6379 when absent).
fn redis_addr(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://")?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host_port = rest.split('/').next().filter(|h| !h.is_empty())?;
    Some(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    })
}

/// PostgreSQL and Redis must be up; say so plainly instead of letting every instance fail.
pub(crate) fn check_services(redis_url: &str) -> Result<()> {
    let mut services = vec![("PostgreSQL".to_owned(), "127.0.0.1:5432".to_owned())];
    if let Some(addr) = redis_addr(redis_url) {
        services.push(("Redis (--redis-url)".to_owned(), addr));
    }
    for (what, addr) in services {
        let sock = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("cannot resolve {addr} ({what})"))?;
        TcpStream::connect_timeout(&sock, Duration::from_secs(3))
            .with_context(|| format!("{what} is not reachable at {addr}; start it first"))?;
    }
    Ok(())
}

/// SIGINT and SIGTERM set this flag instead of killing xtask, so that the guards of every child
/// process run.
pub(crate) fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, flag.clone()).context("installing a signal handler")?;
    }
    Ok(flag)
}

pub(crate) fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The tansu binary, installed by `ensure_tansu` when missing.
pub(crate) fn tansu() -> Result<PathBuf> {
    Ok(match crate::ensure_tansu()? {
        Some(bin) => bin,
        None => cal_test_infra::tansu_bin().unwrap_or_else(|| PathBuf::from("tansu")),
    })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A tansu broker on a free loopback port with in-memory storage (the flags of the tests'
/// `cal_test_infra::KafkaBroker`), at nice value `nice` (through `nice(1)`, which warns and
/// runs it unchanged without the privilege; `0`: started directly).
pub(crate) struct Broker {
    _child: KillOnDrop,
    port: u16,
}

impl Broker {
    pub(crate) fn start(bin: &Path, nice: i32, log: &Path) -> Result<Broker> {
        let port = free_port()?;
        let out = std::fs::File::create(log)?;
        let mut command = if nice == 0 {
            Command::new(bin)
        } else {
            let mut c = Command::new("nice");
            c.arg("-n").arg(nice.to_string()).arg(bin);
            c
        };
        cal_test_infra::configure_tansu_broker(&mut command, port, &format!("cal-cluster-{port}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = cal_test_infra::kafka_metadata_names(port, "xtask-cluster") {
            if let Some(status) = child.0.try_wait()? {
                bail!(
                    "tansu exited ({status}) before it was ready; see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "tansu on port {port} was not ready within 20 s ({e}); see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Broker {
            _child: child,
            port,
        })
    }

    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// One running `calendar serve`.
pub(crate) struct Instance {
    pub(crate) number: u16,
    pub(crate) addr: String,
    log: PathBuf,
    process: KillOnDrop,
    /// Its exit was already reported.
    reported: bool,
}

impl Instance {
    fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

/// CPU time of a process's threads by role, in nanoseconds (the first field of each thread's
/// `/proc/<pid>/task/<tid>/schedstat`: nanosecond-exact, where `stat`'s clock ticks are 10 ms).
#[derive(Debug, Default, Clone, Copy)]
struct ThreadCpu {
    /// The invalidation consumer's thread (`cal-invalidations`, cut to 15 bytes by the kernel).
    consumer_ns: u64,
    /// librdkafka's threads (`rdk:…`): fetching, producing, the broker connections.
    kafka_ns: u64,
    /// Every thread.
    total_ns: u64,
}

impl ThreadCpu {
    fn of(pid: u32) -> ThreadCpu {
        let mut cpu = ThreadCpu::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return cpu;
        };
        for task in tasks.flatten() {
            let dir = task.path();
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(dir.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            cpu.total_ns += ns;
            if name.starts_with("cal-invalidatio") {
                cpu.consumer_ns += ns;
            } else if name.starts_with("rdk:") {
                cpu.kafka_ns += ns;
            }
        }
        cpu
    }

    fn since(self, earlier: ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            consumer_ns: self.consumer_ns.saturating_sub(earlier.consumer_ns),
            kafka_ns: self.kafka_ns.saturating_sub(earlier.kafka_ns),
            total_ns: self.total_ns.saturating_sub(earlier.total_ns),
        }
    }

    fn sum(all: impl IntoIterator<Item = ThreadCpu>) -> ThreadCpu {
        all.into_iter()
            .fold(ThreadCpu::default(), |a, b| ThreadCpu {
                consumer_ns: a.consumer_ns + b.consumer_ns,
                kafka_ns: a.kafka_ns + b.kafka_ns,
                total_ns: a.total_ns + b.total_ns,
            })
    }
}

/// What a phase left in Redis under its key prefix: keys, bytes (`MEMORY USAGE`, which counts
/// Redis's own per-key overhead) and the calendar-months it cached (distinct calendars among
/// the month-bucket keys: the bench reads one month).
#[derive(Debug, Default, Clone, Copy)]
struct RedisFootprint {
    keys: u64,
    bytes: u64,
    calendar_months: u64,
}

impl RedisFootprint {
    fn of(redis_url: &str, prefix: &str) -> Result<RedisFootprint> {
        let cli = || {
            let mut c = Command::new("redis-cli");
            c.args(["-u", redis_url]);
            c
        };
        let scan = cli()
            .args(["--scan", "--pattern"])
            .arg(format!("*{prefix}*"))
            .output()
            .context("running redis-cli --scan")?;
        ensure!(scan.status.success(), "redis-cli --scan failed");
        let keys: Vec<String> = String::from_utf8_lossy(&scan.stdout)
            .lines()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        let calendars: std::collections::BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| {
                let rest = &k[k.find(":calendar:")? + ":calendar:".len()..];
                let (id, tail) = rest.split_once(':')?;
                tail.contains(":events:").then_some(id)
            })
            .collect();
        // One redis-cli for every key: it reads the commands from its standard input.
        let mut usage = cli()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running redis-cli")?;
        let mut stdin = usage.stdin.take().expect("piped");
        let commands: String = keys
            .iter()
            .map(|k| format!("MEMORY USAGE {k} SAMPLES 0\n"))
            .collect();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            stdin.write_all(commands.as_bytes())
        });
        let out = usage.wait_with_output()?;
        writer.join().expect("the writer thread")?;
        let bytes = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .sum();
        Ok(RedisFootprint {
            keys: keys.len() as u64,
            bytes,
            calendar_months: calendars.len() as u64,
        })
    }
}

/// Settings every instance of one setup shares.
pub(crate) struct Shared<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) database_url: &'a str,
    pub(crate) brokers: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) redis_url: &'a str,
    pub(crate) key_prefix: &'a str,
    pub(crate) cal_env: &'a str,
    /// Set for the benchmark (its tokens); the interactive cluster uses the dev secret.
    pub(crate) jwt_secret: bool,
    /// Partitions of the invalidation topic (the first instance creates it).
    pub(crate) partitions: u16,
}

impl Shared<'_> {
    fn spawn(&self, number: u16, port: u16, demo: bool, log: PathBuf) -> Result<Instance> {
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = if self.jwt_secret {
            bench::calendar_command(self.bin, self.database_url, &["serve"])
        } else {
            let mut c = Command::new(self.bin);
            c.current_dir(crate::root())
                .arg("serve")
                .env("DATABASE_URL", self.database_url);
            c
        };
        if demo {
            cmd.arg("--demo");
        }
        for key in [
            "CACHE_L1",
            "CACHE_L2",
            "CACHE_L1_MAX_BYTES",
            "CACHE_WARM_CALENDARS",
            "RELAY_ENABLED",
        ] {
            cmd.env_remove(key);
        }
        let out = std::fs::File::create(&log)?;
        cmd.env("LISTEN_ADDR", &addr)
            .env("CAL_ENV", self.cal_env)
            // The operator secret unlocks `x-debug-stats` (the bench's hit ratio) in prod.
            .env("ADMIN_TOKEN", crate::bench::ADMIN_TOKEN)
            .env("KAFKA_BROKERS", self.brokers)
            .env("KAFKA_TOPIC", self.topic)
            .env("KAFKA_PARTITIONS", self.partitions.to_string())
            .env("REDIS_URL", self.redis_url)
            .env("CACHE_KEY_PREFIX", self.key_prefix)
            // Plain text in the log files.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(Instance {
            number,
            addr,
            log,
            process: KillOnDrop(child),
            reported: false,
        })
    }
}

impl Instance {
    fn wait_ready(&mut self) -> Result<()> {
        process::wait_ready(&mut self.process.0, &self.addr, &self.log)
            .with_context(|| format!("instance {}", self.number))
    }

    pub(crate) fn metrics(&self) -> Result<String> {
        metrics_text(&self.addr).with_context(|| format!("scraping instance {}", self.number))
    }

    /// Waits until the instance hears the invalidation stream (it bypasses L1 until then).
    fn wait_stream_live(&self) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let behind = prom_sum(&self.metrics()?, "cal_invalidation_consumer_behind", &[]);
            if behind == Some(0.0) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts `count` instances of `shared` on PORT+1..=PORT+count (instance i logging to `log(i)`),
/// waits until each is ready and hears the stream, and puts them behind `lb`. Returns them and a
/// note for each one whose stream was still behind 30 s after its start (it bypasses L1 until
/// it catches up).
pub(crate) fn start_behind(
    lb: &Balancer,
    shared: &Shared<'_>,
    count: u16,
    port: u16,
    log: impl Fn(u16) -> PathBuf,
) -> Result<(Vec<Instance>, Vec<String>)> {
    let mut instances = (1..=count)
        .map(|i| shared.spawn(i, port + i, false, log(i)))
        .collect::<Result<Vec<_>>>()?;
    for i in &mut instances {
        i.wait_ready()?;
    }
    let mut notes = Vec::new();
    for i in &instances {
        if !i.wait_stream_live()? {
            let note = format!(
                "instance {} still reported the stream behind 30 s after start",
                i.number
            );
            eprintln!("warning: {note}");
            notes.push(note);
        }
    }
    lb.set_backends(
        instances
            .iter()
            .map(|i| i.addr.parse())
            .collect::<Result<_, _>>()?,
    );
    Ok((instances, notes))
}

/// Round-robin choice of a backend per connection.
#[derive(Default)]
struct Rotation(AtomicUsize);

impl Rotation {
    /// The order in which to try `n` backends for the next connection: the next one in turn,
    /// then the others after it (one that refuses the connection is skipped).
    fn next_order(&self, n: usize) -> Vec<usize> {
        if n == 0 {
            return Vec::new();
        }
        let start = self.0.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| (start + i) % n).collect()
    }
}

/// A round-robin TCP load balancer on std threads: one accept thread, two copying threads per
/// connection.
pub(crate) struct Balancer {
    backends: RwLock<Vec<SocketAddr>>,
    rotation: Rotation,
    /// Connections handed to each backend since `set_backends`.
    connections: Mutex<Vec<u64>>,
}

impl Balancer {
    pub(crate) fn start(listener: TcpListener) -> Arc<Balancer> {
        let lb = Arc::new(Balancer {
            backends: RwLock::new(Vec::new()),
            rotation: Rotation::default(),
            connections: Mutex::new(Vec::new()),
        });
        let me = lb.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let lb = me.clone();
                std::thread::spawn(move || lb.forward(client));
            }
        });
        lb
    }

    fn set_backends(&self, addrs: Vec<SocketAddr>) {
        *self.connections.lock().unwrap() = vec![0; addrs.len()];
        *self.backends.write().unwrap() = addrs;
    }

    fn connections(&self) -> Vec<u64> {
        self.connections.lock().unwrap().clone()
    }

    fn forward(&self, client: TcpStream) {
        let backends = self.backends.read().unwrap().clone();
        for i in self.rotation.next_order(backends.len()) {
            let Ok(server) = TcpStream::connect_timeout(&backends[i], Duration::from_secs(2))
            else {
                continue;
            };
            if let Some(n) = self.connections.lock().unwrap().get_mut(i) {
                *n += 1;
            }
            let _ = pipe(client, server);
            return;
        }
        // No backend answered: dropping the client closes its connection.
    }
}

/// Copies both directions until each side has finished sending, passing the end of one side's
/// stream on to the other (half-close), then closes both.
fn pipe(client: TcpStream, server: TcpStream) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (c, s) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::spawn(move || copy_then_close(c, s));
    copy_then_close(server, client);
    let _ = upstream.join();
    Ok(())
}

fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// The line after "Dev token for user N ...:" that `serve --demo` prints: (that line, token).
fn dev_token(log: &str) -> Option<(String, String)> {
    let mut lines = log.lines();
    let head = lines.find(|l| l.starts_with("Dev token for user"))?;
    let token = lines.next()?.trim();
    let who = head
        .split(" (")
        .next()
        .unwrap_or(head)
        .trim_end_matches(':');
    (!token.is_empty()).then(|| (who.to_owned(), token.to_owned()))
}

pub fn run(args: ClusterArgs) -> Result<()> {
    validate(args.instances, args.port, &args.database)?;
    let stop = stop_flag()?;
    check_services(&args.redis_url)?;
    let listener = claim_ports(args.port, args.instances)?;
    let root = crate::root();
    let dir = bench::target_dir(&root).join("cluster");
    std::fs::create_dir_all(&dir)?;
    let tansu = tansu()?;
    let bin = bench::build_calendar(&root, args.release)?;
    check_stop(&stop)?;

    let broker = Broker::start(&tansu, args.broker_nice, &dir.join("tansu.log"))?;
    let brokers = broker.brokers();
    eprintln!("tansu broker on {brokers}");
    let database_url = bench::database_url(&args.database);
    let shared = Shared {
        bin: &bin,
        database_url: &database_url,
        brokers: &brokers,
        topic: "cache.invalidate",
        redis_url: &args.redis_url,
        key_prefix: "cluster:",
        cal_env: "dev",
        jwt_secret: false,
        partitions: args.partitions,
    };
    let log = |i: u16| dir.join(format!("instance-{i}.log"));
    // The first creates and migrates the database and seeds the demo data; the others start
    // once it is ready.
    let mut instances = vec![shared.spawn(1, args.port + 1, true, log(1))?];
    instances[0].wait_ready()?;
    let token = dev_token(&std::fs::read_to_string(log(1))?);
    for i in 2..=args.instances {
        check_stop(&stop)?;
        instances.push(shared.spawn(i, args.port + i, false, log(i))?);
    }
    for instance in &mut instances[1..] {
        instance.wait_ready()?;
    }
    let lb = Balancer::start(listener);
    lb.set_backends(
        instances
            .iter()
            .map(|i| i.addr.parse())
            .collect::<Result<_, _>>()?,
    );

    let lb_url = format!("http://127.0.0.1:{}", args.port);
    println!();
    println!(
        "{} instances of `calendar serve` behind a round-robin load balancer (one instance per TCP connection):",
        args.instances
    );
    println!("  GraphQL + GraphiQL   {lb_url}/graphql");
    for i in &instances {
        println!(
            "  instance {:<2}          http://{}/graphql   metrics: http://{}/metrics",
            i.number, i.addr, i.addr
        );
    }
    println!(
        "  shared               PostgreSQL {database_url}, Redis {} (prefix cluster:), Kafka (tansu) {brokers} topic cache.invalidate",
        args.redis_url
    );
    match &token {
        Some((who, token)) => {
            println!("{who} (send as `Authorization: Bearer <token>`):\n{token}");
        }
        None => println!("no dev token found in {}", log(1).display()),
    }
    println!("Logs: {}", dir.display());
    println!("Ctrl-C stops everything.");

    while !stop.load(Ordering::Relaxed) {
        for i in &mut instances {
            if i.reported {
                continue;
            }
            if let Some(status) = i.process.0.try_wait()? {
                i.reported = true;
                eprintln!(
                    "instance {} exited ({status}); the balancer skips it. Log: {}",
                    i.number,
                    i.log.display()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("stopping the instances and the broker");
    drop(instances);
    drop(broker);
    Ok(())
}

/// One phase of the cluster benchmark.
#[derive(Debug, Default)]
struct Phase {
    instances: u16,
    /// The measured k6 run's summary.
    k6: Value,
    /// Lag histogram summed over instances, measured run only (after minus before).
    lag: Buckets,
    /// Subscription delivery histogram, the same way.
    delivery: Buckets,
    /// Counters summed over instances, measured run only.
    applied: f64,
    /// Every message the consumers read (heartbeats and own ones too).
    received: f64,
    published: f64,
    publish_errors: f64,
    /// Instances still bypassing L1 (stream behind) at the end.
    behind_at_end: f64,
    /// Connections the balancer gave each instance during warm-up and measured run.
    connections: Vec<u64>,
    /// The subscription probe's deliveries (none when it was off).
    probe: Option<LagSamples>,
    /// Thread CPU summed over instances, measured run only.
    cpu: ThreadCpu,
    /// Seconds the measured run lasted.
    secs: f64,
    /// What the phase's keys occupy in Redis at the end.
    redis: RedisFootprint,
    /// CPU seconds of every PostgreSQL process during the measured run.
    postgres_secs: f64,
}

/// A histogram summed over instances, measured run only (after minus before).
fn summed_histogram(name: &str, before: &[String], after: &[String]) -> Buckets {
    let mut acc = Buckets::new();
    for t in after {
        add_buckets(&mut acc, &histogram_buckets(t, name), 1.0);
    }
    for t in before {
        add_buckets(&mut acc, &histogram_buckets(t, name), -1.0);
    }
    acc
}

impl Phase {
    fn new(instances: u16, k6: Value, before: &[String], after: &[String]) -> Phase {
        let delta = |name| sum_counter(after, name) - sum_counter(before, name);
        Phase {
            instances,
            k6,
            lag: summed_histogram(LAG, before, after),
            delivery: summed_histogram(DELIVERY, before, after),
            applied: delta("cal_invalidation_applied_total"),
            received: delta("cal_invalidation_received_total"),
            published: delta("cal_invalidation_published_total"),
            publish_errors: delta("cal_invalidation_publish_errors_total"),
            behind_at_end: sum_counter(after, "cal_invalidation_consumer_behind"),
            connections: Vec::new(),
            probe: None,
            cpu: ThreadCpu::default(),
            secs: 0.0,
            redis: RedisFootprint::default(),
            postgres_secs: 0.0,
        }
    }

    fn label(&self) -> String {
        match self.instances {
            1 => "1 instance".to_owned(),
            n => format!("{n} instances"),
        }
    }
}

/// Milliseconds of a lag quantile: "4.1 (≤ 5)", "n/a" without samples.
fn lag_cell(q: Option<Quantile>) -> String {
    match q {
        None => "n/a".to_owned(),
        Some(q) if q.upper.is_infinite() => format!("> {:.0}", q.estimate * 1000.0),
        Some(q) => format!("{:.1} (≤ {})", q.estimate * 1000.0, q.upper * 1000.0),
    }
}

fn table_header() -> String {
    "| setup | k6 req/s | p50 ms | p95 ms | p99 ms | errors | hit ratio | writes (conflicts) | published | applied / lag samples | lag p50 ms | lag p99 ms | connections per instance |\n\
     |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        .to_owned()
}

fn table_row(p: &Phase) -> String {
    let k = &p.k6;
    let read = "http_req_duration{name:MonthView}";
    let count = |name| report::metric(k, name, "count").unwrap_or(0.0);
    let samples = p.lag.last().map_or(0.0, |b| b.1);
    let mut published = format!("{:.0}", p.published);
    if p.publish_errors > 0.0 {
        published.push_str(&format!(" ({:.0} errors)", p.publish_errors));
    }
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {:.0} ({:.0}) | {} | {:.0} / {:.0} | {} | {} | {} |",
        p.label(),
        report::num(report::k6_rps(k), 1),
        report::num(report::metric(k, read, "med"), 1),
        report::num(report::metric(k, read, "p(95)"), 1),
        report::num(report::metric(k, read, "p(99)"), 1),
        report::metric(k, "errors", "rate")
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.2}%", r * 100.0)),
        report::hit_ratio(k).map_or_else(|| "n/a".to_owned(), |h| format!("{:.1}%", h * 100.0)),
        count("writes"),
        count("write_conflicts"),
        published,
        p.applied,
        samples,
        lag_cell(quantile(&p.lag, 0.5)),
        lag_cell(quantile(&p.lag, 0.99)),
        p.connections
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" / "),
    )
}

fn cost_header() -> String {
    "| setup | received per instance per s (applied) | consumer thread µs per received message (per applied) | librdkafka threads, share of a core per instance | server CPU ms per request | SQL statements per request | PostgreSQL CPU ms per request | per statement | Redis keys | Redis MiB (`MEMORY USAGE`) | calendar-months cached | Redis KiB per calendar-month |\n\
     |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

fn cost_row(p: &Phase) -> String {
    let requests = report::metric(&p.k6, "http_reqs", "count").unwrap_or(0.0);
    let per = |num: f64, den: f64| (den > 0.0).then(|| num / den);
    let cpu = p.cpu;
    let r = p.redis;
    // Reads only: the writes' statements are not in the debug stats' average.
    let sql_avg = report::metric(&p.k6, "sql_statements", "avg");
    let reads = report::metric(&p.k6, "http_reqs{name:MonthView}", "count").unwrap_or(0.0);
    let statements = sql_avg.map(|avg| avg * reads);
    let postgres_ms = p.postgres_secs * 1e3;
    let instance_secs = p.secs * f64::from(p.instances);
    let consumer_us = cpu.consumer_ns as f64 / 1e3;
    format!(
        "| {} | {} ({:.0}) | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        p.label(),
        report::num(per(p.received, instance_secs), 1),
        p.applied,
        report::num(per(consumer_us, p.received), 1),
        report::num(per(consumer_us, p.applied), 1),
        report::num(
            per(cpu.kafka_ns as f64 / 1e9, instance_secs).map(|s| s * 100.0),
            2
        ) + " %",
        report::num(per(cpu.total_ns as f64 / 1e6, requests), 2),
        report::num(sql_avg, 2),
        report::num(per(postgres_ms, requests), 3),
        report::num(statements.and_then(|n| per(postgres_ms, n)), 3),
        r.keys,
        report::num(Some(r.bytes as f64 / 1_048_576.0), 1),
        r.calendar_months,
        report::num(per(r.bytes as f64 / 1024.0, r.calendar_months as f64), 1),
    )
}

fn probe_header() -> String {
    "| setup (subscriber on the last instance, writes through the first) | probe writes | delivered | before the ack | resyncs | ack → subscriber p50 ms | p99 ms | sent → message p50 ms | p99 ms | invalidation lag p99 ms | ack → subscriber p99 / invalidation p99 |\n\
     |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        .to_owned()
}

fn probe_row(p: &Phase) -> Option<String> {
    let probe = p.probe.as_ref()?;
    let invalidation_p99 = quantile(&p.lag, 0.99).map(|q| q.estimate * 1000.0);
    let p99 = probe.quantile(0.99);
    Some(format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        p.label(),
        probe.writes,
        probe.lags_ms.len(),
        probe.early,
        probe.resyncs,
        report::num(probe.quantile(0.5), 1),
        report::num(p99, 1),
        lag_cell(quantile(&p.delivery, 0.5)),
        lag_cell(quantile(&p.delivery, 0.99)),
        report::num(invalidation_p99, 1),
        report::ratio(p99, invalidation_p99),
    ))
}

/// Whether `database` exists and holds the large scale with events in `[from, to)`.
pub(crate) fn large_seed_present(database: &str, from: &str, to: &str) -> Result<bool> {
    let psql = |db: &str, sql: &str| -> Result<String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
            .stderr(Stdio::inherit())
            .output()
            .context("running psql")?;
        ensure!(out.status.success(), "psql failed: {sql}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let exists = psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
    )?;
    if exists != "1" {
        eprintln!("database {database} does not exist");
        return Ok(false);
    }
    let seeded = psql(
        database,
        &format!(
            "SELECT to_regclass('public.events') IS NOT NULL \
             AND (SELECT count(*) FROM users) >= 20000 \
             AND EXISTS (SELECT 1 FROM events WHERE start_time >= '{from}' AND start_time < '{to}')"
        ),
    );
    // A database without the tables makes the subqueries fail: not seeded either.
    let present = seeded.is_ok_and(|s| s == "t");
    if !present {
        eprintln!(
            "database {database} does not hold the large scale for this month ({from} .. {to})"
        );
    }
    Ok(present)
}

/// The large seed of the month `[from, to)` in `database`: reused (and migrated) when it is
/// there, else, or with `reseed`, recreated. `calendar` builds a `calendar` command against that
/// database. Returns the seed time in seconds when it seeded.
pub(crate) fn ensure_large_seed(
    database: &str,
    reseed: bool,
    from: &str,
    to: &str,
    calendar: impl Fn(&[&str]) -> Command,
) -> Result<Option<f64>> {
    if reseed || !large_seed_present(database, from, to)? {
        return Ok(Some(bench::seed_large(database, None, calendar)?));
    }
    eprintln!("reusing {database} (large scale for this month); --reseed recreates it");
    process::run(&mut calendar(&["migrate"]))?;
    Ok(None)
}

pub fn bench(args: BenchClusterArgs) -> Result<()> {
    validate(args.instances, args.port, &args.setup.database)?;
    ensure!(args.zipf >= 0.0, "--zipf must not be negative");
    ensure!(
        (0.0..=1.0).contains(&args.write_ratio),
        "--write-ratio must be between 0 and 1"
    );
    let command = report::command_line();
    let stop = stop_flag()?;
    check_services(&args.setup.redis_url)?;
    let listener = claim_ports(args.port, args.instances)?;
    let root = crate::root();
    let out_dir = bench::target_dir(&root).join("cluster-bench");
    std::fs::create_dir_all(&out_dir)?;
    let tansu = tansu()?;
    let k6 = crate::ensure_k6()?;
    let bin = bench::build_calendar(&root, args.setup.release)?;
    check_stop(&stop)?;

    let database_url = bench::database_url(&args.setup.database);
    let calendar = |sub: &[&str]| bench::calendar_command(&bin, &database_url, sub);
    let (from, to) = report::current_month();
    let seed_secs = ensure_large_seed(
        &args.setup.database,
        args.setup.reseed,
        &from,
        &to,
        calendar,
    )?;
    let fixtures_path = out_dir.join("fixtures.json");
    let (fixtures, n_fixtures) = bench::write_fixtures(calendar, args.calendars, &fixtures_path)?;
    check_stop(&stop)?;

    let broker = Broker::start(&tansu, args.setup.broker_nice, &out_dir.join("tansu.log"))?;
    let brokers = broker.brokers();
    let lb = Balancer::start(listener);
    let base_url = format!("http://127.0.0.1:{}", args.port);
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let k6_run = |duration: &str, summary: &Path| -> Result<Value> {
        let _ = std::fs::remove_file(summary);
        process::run(
            Command::new(&k6)
                .current_dir(&root)
                .args(["run", "--quiet", "loadtests/month_view.js"])
                .env("FIXTURES", &fixtures_path)
                .env("BASE_URL", &base_url)
                .env("VUS", args.vus.to_string())
                .env("DURATION", duration)
                .env("FROM", &from)
                .env("TO", &to)
                .env("ZIPF", args.zipf.to_string())
                .env("WRITE_RATIO", args.write_ratio.to_string())
                .env("ADMIN_TOKEN", crate::bench::ADMIN_TOKEN)
                .env("SUMMARY", summary),
        )?;
        Ok(serde_json::from_slice(
            &std::fs::read(summary)
                .with_context(|| format!("k6 wrote no {}", summary.display()))?,
        )?)
    };

    let mut counts = vec![1];
    if args.instances > 1 {
        counts.push(args.instances);
    }
    let mut phases = Vec::new();
    let mut notes = Vec::new();
    for count in counts {
        check_stop(&stop)?;
        eprintln!("\n=== {count} instance(s) behind the balancer ===");
        let topic = format!("bench.cluster.{run_id}.{count}");
        let prefix = format!("benchcluster:{run_id}:{count}:");
        let shared = Shared {
            bin: &bin,
            database_url: &database_url,
            brokers: &brokers,
            topic: &topic,
            redis_url: &args.setup.redis_url,
            key_prefix: &prefix,
            cal_env: "prod",
            jwt_secret: true,
            partitions: args.partitions,
        };
        let (instances, started) = start_behind(&lb, &shared, count, args.port, |i| {
            out_dir.join(format!("phase{count}-instance-{i}.log"))
        })?;
        notes.extend(
            started
                .into_iter()
                .map(|n| format!("{count} instances: {n}")),
        );
        if args.warmup != "0" {
            eprintln!("warm-up ({}, not reported)", args.warmup);
            k6_run(
                &args.warmup,
                &out_dir.join(format!("warmup-phase{count}.json")),
            )?;
        }
        check_stop(&stop)?;
        let before = instances
            .iter()
            .map(Instance::metrics)
            .collect::<Result<Vec<_>>>()?;
        let probe = (args.probe_every_ms > 0)
            .then(|| {
                let (writer, reader) = (&instances[0], &instances[instances.len() - 1]);
                LagProbe::start(
                    &writer.addr,
                    &reader.addr,
                    &fixtures[0],
                    Duration::from_millis(args.probe_every_ms),
                )
            })
            .transpose()?;
        let cpu_before: Vec<ThreadCpu> = instances.iter().map(|i| ThreadCpu::of(i.pid())).collect();
        let postgres_before = bench::postgres_cpu_secs();
        let started_at = Instant::now();
        let summary = k6_run(
            &args.duration,
            &out_dir.join(format!("summary-phase{count}.json")),
        )?;
        let secs = started_at.elapsed().as_secs_f64();
        let postgres_secs = bench::postgres_cpu_secs() - postgres_before;
        let cpu = ThreadCpu::sum(
            instances
                .iter()
                .zip(cpu_before)
                .map(|(i, before)| ThreadCpu::of(i.pid()).since(before)),
        );
        let probe = probe.map(LagProbe::finish).transpose()?;
        let after = instances
            .iter()
            .map(Instance::metrics)
            .collect::<Result<Vec<_>>>()?;
        for (i, text) in instances.iter().zip(&after) {
            std::fs::write(
                out_dir.join(format!("metrics-phase{count}-instance-{}.txt", i.number)),
                text,
            )?;
        }
        let mut phase = Phase::new(count, summary, &before, &after);
        phase.connections = lb.connections();
        phase.probe = probe;
        phase.cpu = cpu;
        phase.secs = secs;
        phase.postgres_secs = postgres_secs;
        phase.redis = RedisFootprint::of(&args.setup.redis_url, &prefix)?;
        eprintln!("{}", table_row(&phase));
        phases.push(phase);
        drop(instances);
    }
    drop(broker);

    let mut report = String::new();
    if let Some(secs) = seed_secs {
        report.push_str(&format!("Large seed: {secs:.1} s\n\n"));
    }
    report.push_str(&format!(
        "`{command}`: {} {} | {} | VUs {} | k6 {} after {} warm-up per phase | Zipf s={} over {n_fixtures} calendars | write ratio {} | {} topic partition(s) | broker nice {} | window {from} .. {to}\n\n",
        report::today(),
        report::commit(&root),
        report::machine(),
        args.vus,
        args.duration,
        args.warmup,
        args.zipf,
        args.write_ratio,
        args.partitions,
        args.setup.broker_nice,
    ));
    report.push_str(&table_header());
    report.push('\n');
    for p in &phases {
        report.push_str(&table_row(p));
        report.push('\n');
    }
    report.push('\n');
    report.push_str(&cost_header());
    report.push('\n');
    for p in &phases {
        report.push_str(&cost_row(p));
        report.push('\n');
    }
    if phases.iter().any(|p| p.probe.is_some()) {
        report.push('\n');
        report.push_str(&probe_header());
        report.push('\n');
        for p in &phases {
            if let Some(row) = probe_row(p) {
                report.push_str(&row);
                report.push('\n');
            }
        }
    }
    if let [one, many] = &phases[..] {
        report.push_str(&format!(
            "\n{} over 1 instance: k6 req/s {}, p99 {}\n",
            many.label(),
            report::ratio(report::k6_rps(&many.k6), report::k6_rps(&one.k6)),
            report::ratio(
                report::metric(&many.k6, "http_req_duration{name:MonthView}", "p(99)"),
                report::metric(&one.k6, "http_req_duration{name:MonthView}", "p(99)")
            ),
        ));
    }
    for p in &phases {
        if p.behind_at_end > 0.0 {
            notes.push(format!(
                "{}: {} instance(s) had the stream behind (L1 bypassed) at the end",
                p.label(),
                p.behind_at_end
            ));
        }
    }
    for note in &notes {
        report.push_str(&format!("\nnote: {note}\n"));
    }
    report::publish(&out_dir.join("results.md"), &report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::tests::METRICS;
    use std::io::{Read, Write};

    #[test]
    fn options_are_checked() {
        assert!(validate(3, 8080, "calendar_cluster").is_ok());
        assert!(validate(1, 65534, "db").is_ok());
        assert!(validate(0, 8080, "db").is_err());
        assert!(validate(MAX_INSTANCES + 1, 8080, "db").is_err());
        assert!(validate(3, 0, "db").is_err());
        assert!(validate(3, 65533, "db").is_err());
        assert!(validate(3, 8080, "").is_err());
        assert!(validate(3, 8080, "cal-endar").is_err());
        assert!(validate(3, 8080, "x\"; DROP").is_err());
    }

    #[test]
    fn taken_port_is_refused() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = claim_ports(port, 1).unwrap_err().to_string();
        assert!(err.contains(&format!("port {port}")), "{err}");
        assert!(err.contains("already taken"), "{err}");
        // An instance port (PORT+1) taken is refused too, naming the instance.
        let err = claim_ports(port - 1, 1);
        if let Err(e) = err {
            let e = e.to_string();
            assert!(
                e.contains("instance 1") || e.contains("load balancer"),
                "{e}"
            );
        } else {
            panic!("port {port} is held, yet PORT+1 was accepted");
        }
    }

    #[test]
    fn round_robin_with_fallback_order() {
        let r = Rotation::default();
        assert_eq!(r.next_order(3), [0, 1, 2]);
        assert_eq!(r.next_order(3), [1, 2, 0]);
        assert_eq!(r.next_order(3), [2, 0, 1]);
        assert_eq!(r.next_order(3), [0, 1, 2]);
        assert_eq!(r.next_order(1), [0]);
        assert!(r.next_order(0).is_empty());
    }

    #[test]
    fn balancer_spreads_connections_and_skips_a_dead_backend() {
        // Two echo-style backends that answer with their own name, and one closed port.
        let backend = |name: &'static str| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            std::thread::spawn(move || {
                for mut s in l.incoming().flatten() {
                    let mut buf = [0u8; 4];
                    let _ = s.read_exact(&mut buf);
                    let _ = s.write_all(name.as_bytes());
                }
            });
            addr
        };
        let a = backend("a");
        let b = backend("b");
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let lb_addr = listener.local_addr().unwrap();
        let lb = Balancer::start(listener);
        lb.set_backends(vec![a, dead, b]);
        let mut got = Vec::new();
        for _ in 0..6 {
            let mut s = TcpStream::connect(lb_addr).unwrap();
            s.write_all(b"ping").unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            got.push(answer);
        }
        // Turns: a, dead→b, b, a, dead→b, b.
        assert_eq!(got, ["a", "b", "b", "a", "b", "b"]);
        assert_eq!(lb.connections(), [2, 0, 4]);
    }

    #[test]
    fn lag_cells() {
        // p99 of the sample: rank 99 lies in (0.01, 0.02], halfway.
        let b = histogram_buckets(METRICS, LAG);
        assert_eq!(lag_cell(quantile(&b, 0.99)), "15.0 (≤ 20)");
        // Above every finite bound.
        let q = quantile(&[(0.1, 1.0), (f64::INFINITY, 10.0)], 0.99);
        assert_eq!(lag_cell(q), "> 100");
        assert_eq!(lag_cell(None), "n/a");
    }

    #[test]
    fn instances_are_summed_and_the_warm_up_subtracted() {
        let before = vec![METRICS.to_owned(), String::new()];
        let second = METRICS
            .replace("} 100", "} 150")
            .replace("applied_total 100", "applied_total 150");
        let after = vec![METRICS.replace("} 100", "} 200"), second];
        let p = Phase::new(2, Value::Null, &before, &after);
        // Instance 1 gained 100 in (0.01, 0.02] and beyond; instance 2 reports 150 there from scratch.
        assert_eq!(p.lag.last(), Some(&(f64::INFINITY, 250.0)));
        assert_eq!(p.lag[3], (0.01, 98.0));
        assert_eq!(p.applied, 150.0);
    }

    #[test]
    fn the_probe_row_sits_beside_the_invalidation_lag() {
        let mut p = Phase::new(2, Value::Null, &[], &[METRICS.to_owned()]);
        assert_eq!(probe_row(&p), None);
        p.probe = Some(LagSamples {
            writes: 3,
            lags_ms: vec![1.0, 2.0, 30.0],
            ..LagSamples::default()
        });
        let row = probe_row(&p).unwrap();
        assert!(
            row.starts_with("| 2 instances | 3 | 3 | 0 | 0 | 2.0 | 30.0 | n/a | n/a | "),
            "{row}"
        );
        assert!(row.ends_with("x |"), "{row}");
    }

    #[test]
    fn redis_addresses() {
        assert_eq!(
            redis_addr("redis://127.0.0.1:6379").as_deref(),
            Some("127.0.0.1:6379")
        );
        assert_eq!(
            redis_addr("redis://user:pw@cache/2").as_deref(),
            Some("cache:6379")
        );
        assert_eq!(redis_addr("rediss://x"), None);
        assert_eq!(redis_addr("redis://"), None);
    }

    #[test]
    fn dev_token_from_the_demo_log() {
        let log = "2026-11-22T10:00:00Z  INFO created database\n\nCalendar service on http://127.0.0.1:8081/graphql (GraphiQL: open it in a browser)\nDev token for user 1 (send as `Authorization: Bearer <token>`):\neyJ.abc.def\n\n";
        assert_eq!(
            dev_token(log),
            Some(("Dev token for user 1".to_owned(), "eyJ.abc.def".to_owned()))
        );
        assert_eq!(dev_token("nothing here"), None);
    }
}
