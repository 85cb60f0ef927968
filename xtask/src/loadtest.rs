//! `cargo xtask loadtest --scenario NAME`: one k6 script of `loadtests/scenarios/` (`NAME.js`:
//! read_heavy, write_mix, stampede, freshness) against the local cluster, brought up as
//! `bench-cluster` brings up its phases (`crate::cluster`): the large seed of this month, N
//! instances sharing PostgreSQL, Redis and a tansu broker behind the round-robin balancer, in
//! prod mode with the operator secret that unlocks `x-debug-stats`. The scripts hold the KPIs as
//! thresholds; this command exits with k6's status (99: a threshold was crossed) after naming
//! the crossed ones from the summary k6 wrote. With `--report PATH.html` k6 also exports its web
//! dashboard there, for people to look at rather than read.

use crate::cluster::{self, Balancer, Broker, Shared};
use crate::{bench, report};
use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{SystemTime, UNIX_EPOCH};

/// k6's exit status when a threshold was crossed.
const THRESHOLDS_CROSSED: i32 = 99;

#[derive(clap::Args, Debug)]
pub struct LoadtestArgs {
    /// The scenario: the script `loadtests/scenarios/NAME.js` (read_heavy, write_mix, stampede,
    /// freshness).
    #[arg(long)]
    scenario: String,
    /// Number of `calendar serve` instances behind the load balancer (freshness needs two).
    #[arg(long, default_value_t = 3)]
    instances: u16,
    /// Virtual users (the reading ones for stampede and freshness); the scenario's default when
    /// absent.
    #[arg(long)]
    vus: Option<u32>,
    /// How long the load lasts (k6 duration syntax: 30s, 2m); the scenario's default (30s) when
    /// absent.
    #[arg(long)]
    duration: Option<String>,
    /// Also write k6's HTML report (its web dashboard, exported at the end) to this file.
    #[arg(long, value_name = "PATH.html")]
    report: Option<PathBuf>,
    /// Another variable for the script, `KEY=VALUE` (repeatable), e.g. `--env WRITE_RATIO=0.01`.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Calendars (with a token for their owner) the scenario picks from; the first is the hot one.
    #[arg(long, default_value_t = 200)]
    calendars: u32,
    /// The load balancer's port on 127.0.0.1; instance i listens on PORT+i.
    #[arg(long, default_value_t = 18100)]
    port: u16,
    #[command(flatten)]
    setup: cluster::BenchSetup,
    /// Partitions of the invalidation topic.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    partitions: u16,
}

pub fn run(args: LoadtestArgs) -> Result<()> {
    let root = crate::root();
    let script = scenario_script(&root, &args.scenario)?;
    for kv in &args.env {
        ensure!(
            kv.split_once('=').is_some_and(|(k, _)| !k.is_empty()),
            "--env {kv}: expected KEY=VALUE"
        );
    }
    // k6 runs in the workspace root; the path means what it meant where the command was typed.
    let html = args
        .report
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .context("--report")?;
    let out_dir = bench::target_dir(&root).join("loadtest");
    std::fs::create_dir_all(&out_dir)?;
    let summary = out_dir.join(format!("summary-{}.json", args.scenario));
    let status = run_on_cluster(&args, &root, &script, &out_dir, &summary, html.as_deref())?;
    verdict(&args.scenario, status, &summary, html.as_deref())
}

/// `loadtests/scenarios/NAME.js`, which must exist; the error lists the scenarios there are.
fn scenario_script(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join("loadtests/scenarios");
    let path = dir.join(format!("{name}.js"));
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain && path.is_file() {
        return Ok(path);
    }
    let mut known: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| {
            let file = entry.ok()?.file_name();
            Some(file.to_str()?.strip_suffix(".js")?.to_owned())
        })
        .collect();
    known.sort();
    bail!(
        "no scenario {name:?}: --scenario is one of {}",
        known.join(", ")
    )
}

/// Brings the cluster up, runs k6 with `script` against it, and stops everything again (the
/// instances' metrics are kept beside the summary); returns k6's status.
fn run_on_cluster(
    args: &LoadtestArgs,
    root: &Path,
    script: &Path,
    out_dir: &Path,
    summary: &Path,
    html: Option<&Path>,
) -> Result<ExitStatus> {
    cluster::validate(args.instances, args.port, &args.setup.database)?;
    let stop = cluster::stop_flag()?;
    cluster::check_services(&args.setup.redis_url)?;
    let listener = cluster::claim_ports(args.port, args.instances)?;
    let tansu = cluster::tansu()?;
    let k6 = crate::ensure_k6()?;
    let bin = bench::build_calendar(root, args.setup.release)?;
    cluster::check_stop(&stop)?;

    let database_url = bench::database_url(&args.setup.database);
    let calendar = |sub: &[&str]| bench::calendar_command(&bin, &database_url, sub);
    let (from, to) = report::current_month();
    cluster::ensure_large_seed(
        &args.setup.database,
        args.setup.reseed,
        &from,
        &to,
        calendar,
    )?;
    let fixtures = out_dir.join("fixtures.json");
    bench::write_fixtures(calendar, args.calendars, &fixtures)?;
    cluster::check_stop(&stop)?;

    let broker = Broker::start(&tansu, args.setup.broker_nice, &out_dir.join("tansu.log"))?;
    let brokers = broker.brokers();
    let lb = Balancer::start(listener);
    // A topic and a Redis prefix of this run's own: the run starts with cold caches, whatever
    // an earlier run left.
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let topic = format!("loadtest.{run_id}");
    let prefix = format!("loadtest:{run_id}:");
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
    let (instances, notes) = cluster::start_behind(&lb, &shared, args.instances, args.port, |i| {
        out_dir.join(format!("instance-{i}.log"))
    })?;
    cluster::check_stop(&stop)?;

    let instance_urls = instances
        .iter()
        .map(|i| format!("http://{}", i.addr))
        .collect::<Vec<_>>()
        .join(",");
    let mut k6_run = Command::new(&k6);
    k6_run.current_dir(root).args(["run", "--quiet"]);
    for kv in &args.env {
        k6_run.arg("-e").arg(kv);
    }
    k6_run
        .arg(script)
        .env("BASE_URL", format!("http://127.0.0.1:{}", args.port))
        .env("INSTANCE_URLS", &instance_urls)
        .env("FIXTURES", &fixtures)
        .env("FROM", &from)
        .env("TO", &to)
        .env("ADMIN_TOKEN", bench::ADMIN_TOKEN)
        .env("SUMMARY", summary);
    if let Some(vus) = args.vus {
        k6_run.env("VUS", vus.to_string());
    }
    if let Some(duration) = &args.duration {
        k6_run.env("DURATION", duration);
    }
    if let Some(path) = html {
        let _ = std::fs::remove_file(path);
        k6_run
            .env("K6_WEB_DASHBOARD", "true")
            .env("K6_WEB_DASHBOARD_EXPORT", path)
            // No live dashboard: k6 would wait for an open browser tab before it exits.
            .env("K6_WEB_DASHBOARD_PORT", "-1")
            // k6 skips the report of a run shorter than a few periods (10 s by default), and a
            // 30 s run's charts get a point a second.
            .env("K6_WEB_DASHBOARD_PERIOD", "1s");
    }
    let _ = std::fs::remove_file(summary);
    eprintln!("$ {k6_run:?}");
    let status = k6_run.status().context("starting k6")?;
    for i in &instances {
        match i.metrics() {
            Ok(text) => std::fs::write(
                out_dir.join(format!("metrics-instance-{}.txt", i.number)),
                text,
            )?,
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    for note in &notes {
        eprintln!("note: {note}");
    }
    drop(instances);
    drop(broker);
    Ok(status)
}

/// Says how the run went; when k6 failed, exits the process with its status (everything this
/// command started has been stopped by then).
fn verdict(scenario: &str, status: ExitStatus, summary: &Path, html: Option<&Path>) -> Result<()> {
    if let Some(path) = html {
        if path.is_file() {
            eprintln!("k6's HTML report: {}", path.display());
        } else {
            eprintln!("warning: k6 wrote no HTML report at {}", path.display());
        }
    }
    if status.success() {
        eprintln!(
            "loadtest {scenario}: every threshold passed (summary: {})",
            summary.display()
        );
        return Ok(());
    }
    let code = status.code().unwrap_or(1);
    if code == THRESHOLDS_CROSSED {
        let text = std::fs::read(summary).with_context(|| {
            format!("k6 crossed a threshold but wrote no {}", summary.display())
        })?;
        let parsed: Value = serde_json::from_slice(&text)
            .with_context(|| format!("reading {}", summary.display()))?;
        let failed = failed_thresholds(&parsed);
        eprintln!(
            "loadtest {scenario}: {} threshold(s) crossed (summary: {}):",
            failed.len(),
            summary.display()
        );
        for f in &failed {
            eprintln!("  {f}");
        }
    } else {
        eprintln!(
            "loadtest {scenario}: k6 failed ({status}) without a verdict on the thresholds; its output is above"
        );
    }
    std::process::exit(code)
}

/// Every threshold a k6 summary marks as crossed, as `metric expression (statistic = value)`.
fn failed_thresholds(summary: &Value) -> Vec<String> {
    let Some(metrics) = summary["metrics"].as_object() else {
        return Vec::new();
    };
    let mut failed = Vec::new();
    for (name, metric) in metrics {
        let Some(thresholds) = metric["thresholds"].as_object() else {
            continue;
        };
        for (expression, outcome) in thresholds {
            if outcome["ok"].as_bool() != Some(false) {
                continue;
            }
            let stat = expression
                .split(['<', '>', '=', '!'])
                .next()
                .unwrap_or_default()
                .trim();
            failed.push(match metric["values"][stat].as_f64() {
                Some(v) => {
                    let v = (v * 1000.0).round() / 1000.0;
                    format!("{name} {expression} ({stat} = {v})")
                }
                None => format!("{name} {expression}"),
            });
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossed_thresholds_are_named_with_their_value() {
        let summary = serde_json::json!({ "metrics": {
            "cache_hit_ratio": {
                "values": { "rate": 0.41876 },
                "thresholds": { "rate>0.8": { "ok": false } }
            },
            "errors": { "values": { "rate": 0.0 }, "thresholds": { "rate<0.01": { "ok": true } } },
            "http_req_duration{name:MonthView}": {
                "values": { "p(95)": 250.5, "p(99)": 300.0 },
                "thresholds": { "p(95)<200": { "ok": false }, "p(99)<500": { "ok": true } }
            },
            "stale_with_token": { "values": {}, "thresholds": { "count==0": { "ok": false } } },
            "vus": { "values": { "value": 1.0 } }
        }});
        assert_eq!(
            failed_thresholds(&summary),
            [
                "cache_hit_ratio rate>0.8 (rate = 0.419)",
                "http_req_duration{name:MonthView} p(95)<200 (p(95) = 250.5)",
                "stale_with_token count==0",
            ]
        );
        assert!(failed_thresholds(&Value::Null).is_empty());
    }

    #[test]
    fn a_scenario_is_a_script_of_the_folder() {
        let root = crate::root();
        assert_eq!(
            scenario_script(&root, "read_heavy").unwrap(),
            root.join("loadtests/scenarios/read_heavy.js")
        );
        let err = scenario_script(&root, "nope").unwrap_err().to_string();
        assert!(
            err.contains("freshness, read_heavy, stampede, write_mix"),
            "{err}"
        );
        assert!(scenario_script(&root, "../month_view").is_err());
    }
}
