//! Static checks of the operator files in `deploy/` (no container engine runs here):
//! promtool validates and unit-tests the Prometheus rules and config, the Grafana dashboard and
//! provisioning and the compose file are parsed and checked for what the stack needs, and every
//! `cal_*` metric they use must be one the service exports (`deploy/metrics.txt`).

use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

fn read(rel: &str) -> String {
    let path = deploy().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(rel))
        .unwrap_or_else(|e| panic!("deploy/{rel} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "deploy/{rel}: expected one YAML document");
    docs.remove(0)
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dashboards/calendar.json"))
        .expect("deploy/grafana/dashboards/calendar.json is not valid JSON")
}

fn str_of<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {y:?}"))
}

fn vec_of<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {y:?}"))
}

/// Runs promtool in `deploy/prometheus` and fails with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let dir = deploy().join("prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): `cargo xtask test` installs it \
                 (`apt-get install prometheus`)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn promtool_accepts_the_prometheus_config_and_its_rule_files() {
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("1 rule files found"), "{out}");
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    let out = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

fn alert_rules() -> Vec<Yaml> {
    let doc = yaml("prometheus/alerts.yml");
    let groups = vec_of(&doc["groups"], "alerts.yml groups");
    let calendar = groups
        .iter()
        .find(|g| g["name"].as_str() == Some("calendar"))
        .expect("alerts.yml has a group `calendar`");
    vec_of(&calendar["rules"], "group calendar rules").to_vec()
}

#[test]
fn every_alert_has_a_duration_a_severity_and_annotations() {
    let rules = alert_rules();
    let names: Vec<&str> = rules
        .iter()
        .map(|r| str_of(&r["alert"], "alert name"))
        .collect();
    for expected in [
        "CalendarInstanceDown",
        "CalendarHighLatencyP95",
        "CalendarCacheHitRatioLow",
        "RedisMemoryHigh",
        "RedisConnectionFailures",
        "RedisBreakerOpen",
        "DatabasePoolSaturated",
        "InvalidationConsumerBehind",
    ] {
        assert!(names.contains(&expected), "alerts.yml lacks {expected}");
    }
    for rule in &rules {
        let name = str_of(&rule["alert"], "alert name");
        assert!(
            !str_of(&rule["expr"], name).trim().is_empty(),
            "{name}: expr"
        );
        str_of(&rule["for"], &format!("{name}: for"));
        let severity = str_of(&rule["labels"]["severity"], &format!("{name}: severity"));
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity}"
        );
        for key in ["summary", "description"] {
            let text = str_of(&rule["annotations"][key], &format!("{name}: {key}"));
            assert!(!text.trim().is_empty(), "{name}: empty {key}");
        }
    }
}

/// Each alert has a unit test that fires it and one in which it stays silent.
#[test]
fn every_alert_is_unit_tested_firing_and_silent() {
    let tests = yaml("prometheus/alerts.test.yml");
    let mut fired = HashSet::new();
    let mut silent = HashSet::new();
    for test in vec_of(&tests["tests"], "alerts.test.yml tests") {
        for case in vec_of(&test["alert_rule_test"], "alert_rule_test") {
            let name = str_of(&case["alertname"], "alertname").to_owned();
            let expected = vec_of(&case["exp_alerts"], &format!("{name}: exp_alerts"));
            if expected.is_empty() {
                silent.insert(name);
            } else {
                for alert in expected {
                    assert!(
                        alert["exp_annotations"].as_hash().is_some(),
                        "{name}: a firing case without exp_annotations"
                    );
                }
                fired.insert(name);
            }
        }
    }
    for rule in alert_rules() {
        let name = str_of(&rule["alert"], "alert name");
        assert!(fired.contains(name), "no unit test fires {name}");
        assert!(silent.contains(name), "no unit test keeps {name} silent");
    }
}

#[test]
fn prometheus_scrapes_every_instance_and_redis() {
    let doc = yaml("prometheus/prometheus.yml");
    let rule_files: Vec<&str> = vec_of(&doc["rule_files"], "rule_files")
        .iter()
        .map(|f| str_of(f, "rule file"))
        .collect();
    assert_eq!(rule_files, ["alerts.yml"]);
    let mut targets = BTreeSet::new();
    for job in vec_of(&doc["scrape_configs"], "scrape_configs") {
        let name = str_of(&job["job_name"], "job_name");
        if name == "calendar" {
            assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
        }
        for sc in vec_of(&job["static_configs"], name) {
            for t in vec_of(&sc["targets"], name) {
                targets.insert(format!("{name}/{}", str_of(t, "target")));
            }
        }
    }
    for t in [
        "calendar/calendar-1:8080",
        "calendar/calendar-2:8080",
        "calendar/calendar-3:8080",
        "redis/redis-exporter:9121",
    ] {
        assert!(targets.contains(t), "no scrape target {t} in {targets:?}");
    }
}

fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("dashboard panels") {
        out.push(p);
        // A collapsed row carries its panels inside it.
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

#[test]
fn dashboard_panels_query_prometheus_and_have_unique_ids() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "calendar-overview");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 39);
    let mut ids = HashSet::new();
    let mut queries = 0;
    for p in panels(&dash) {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "panel id {id} ({title}) is not unique");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "prometheus",
            "{title}: datasource uid"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            if !t["datasource"].is_null() {
                assert_eq!(
                    t["datasource"]["uid"], "prometheus",
                    "{title}: target datasource"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "only {queries} queries");

    let vars = dash["templating"]["list"].as_array().expect("templating");
    let instance = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an $instance variable");
    assert_eq!(instance["datasource"]["uid"], "prometheus");
    assert_eq!(
        instance["definition"],
        "label_values(cal_sql_statements_total, instance)"
    );
}

/// promtool parses every dashboard query, with Grafana's variables replaced by values.
#[test]
fn dashboard_queries_are_valid_promql() {
    let dash = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for p in panels(&dash) {
        for (i, t) in p["targets"].as_array().into_iter().flatten().enumerate() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:panel_{}_{i}\n        expr: {}\n",
                p["id"],
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "dashboard-queries-{}.rules.yml",
        std::process::id()
    ));
    std::fs::write(&path, rules).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}

#[test]
fn grafana_provisions_prometheus_jaeger_and_the_dashboard_folder() {
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let list = vec_of(&ds["datasources"], "datasources");
    let find = |uid: &str| {
        list.iter()
            .find(|d| d["uid"].as_str() == Some(uid))
            .unwrap_or_else(|| panic!("no datasource with uid {uid}"))
    };
    assert_eq!(find("prometheus")["type"].as_str(), Some("prometheus"));
    assert_eq!(
        find("prometheus")["url"].as_str(),
        Some("http://prometheus:9090")
    );
    assert_eq!(find("jaeger")["type"].as_str(), Some("jaeger"));
    assert_eq!(find("jaeger")["url"].as_str(), Some("http://jaeger:16686"));

    let providers = yaml("grafana/provisioning/dashboards/calendar.yml");
    let provider = &vec_of(&providers["providers"], "providers")[0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert_eq!(
        provider["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_badvalue(), "compose.yaml has no service {name}");
    s
}

fn volumes(s: &Yaml) -> Vec<&str> {
    vec_of(&s["volumes"], "volumes")
        .iter()
        .map(|v| str_of(v, "volume"))
        .collect()
}

#[test]
fn compose_runs_the_whole_stack() {
    let compose = yaml("compose.yaml");
    for name in [
        "postgres",
        "redis",
        "kafka",
        "jaeger",
        "prometheus",
        "grafana",
        "redis-exporter",
        "migrate",
        "calendar-1",
        "calendar-2",
        "calendar-3",
        "nginx",
    ] {
        service(&compose, name);
    }
    assert!(
        str_of(&service(&compose, "postgres")["image"], "postgres image")
            .starts_with("postgres:16")
    );
    assert!(str_of(&service(&compose, "redis")["image"], "redis image").starts_with("redis:7"));
    assert!(
        str_of(&service(&compose, "kafka")["image"], "kafka image").starts_with("apache/kafka:3.8")
    );
    assert_eq!(
        service(&compose, "kafka")["environment"]["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller"),
        "Kafka runs in KRaft mode"
    );
    let jaeger = service(&compose, "jaeger");
    assert_eq!(
        jaeger["environment"]["COLLECTOR_OTLP_ENABLED"].as_str(),
        Some("true")
    );
    let ports: Vec<&str> = vec_of(&jaeger["ports"], "jaeger ports")
        .iter()
        .map(|p| str_of(p, "port"))
        .collect();
    for port in ["16686", "4317", "4318"] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "jaeger port {port}"
        );
    }

    let migrate = service(&compose, "migrate");
    let command: Vec<&str> = vec_of(&migrate["command"], "migrate command")
        .iter()
        .map(|c| str_of(c, "arg"))
        .collect();
    assert_eq!(command, ["calendar", "migrate"]);
    for n in 1..=3 {
        let name = format!("calendar-{n}");
        let s = service(&compose, &name);
        assert_eq!(
            s["build"]["dockerfile"].as_str(),
            Some("deploy/Dockerfile"),
            "{name}"
        );
        let env = &s["environment"];
        for key in [
            "DATABASE_URL",
            "REDIS_URL",
            "KAFKA_BROKERS",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_SERVICE_NAME",
            "JWT_SECRET",
            "CAL_ENV",
            "LISTEN_ADDR",
        ] {
            let value = env[key]
                .as_str()
                .unwrap_or_else(|| panic!("{name} lacks {key}"));
            assert!(!value.is_empty(), "{name}: empty {key}");
        }
        assert_eq!(env["KAFKA_BROKERS"].as_str(), Some("kafka:9092"));
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some("http://jaeger:4317")
        );
        assert_eq!(env["LISTEN_ADDR"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(env["CAL_ENV"].as_str(), Some("prod"));
        // The image runs as a non-root user: RLIMIT_NICE must allow the default
        // INVALIDATION_THREAD_NICE of -10 (a ceiling of 20 - nice).
        assert_eq!(
            s["ulimits"]["nice"].as_i64(),
            Some(30),
            "{name} may raise its invalidation threads to nice -10"
        );
    }

    assert!(volumes(service(&compose, "nginx")).contains(&"./nginx.conf:/etc/nginx/nginx.conf:ro"));
    assert!(volumes(service(&compose, "prometheus")).contains(&"./prometheus:/etc/prometheus:ro"));
    let grafana = volumes(service(&compose, "grafana"));
    assert!(grafana.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro"));
    assert!(grafana.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro"));

    let nginx = read("nginx.conf");
    for n in 1..=3 {
        assert!(
            nginx.contains(&format!("server calendar-{n}:8080")),
            "nginx upstream calendar-{n}"
        );
    }
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked -p cal-server --bin calendar"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains(r#"CMD ["calendar", "serve"]"#));
}

/// The metric names in `text` that start with `cal_` (recording-rule names use `:`).
fn cal_metrics(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("cal_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && is_name(bytes[end]) {
            end += 1;
        }
        if start == 0 || !is_name(bytes[start - 1]) {
            out.insert(text[start..end].to_owned());
        }
        i = end.max(start + 1);
    }
    out
}

fn exported() -> BTreeSet<String> {
    let text = read("metrics.txt");
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let set: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    assert_eq!(set.len(), names.len(), "deploy/metrics.txt has duplicates");
    for n in &set {
        assert!(
            n.starts_with("cal_")
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "deploy/metrics.txt: {n:?} is not a cal_ metric name"
        );
    }
    set
}

/// `name` is exported as is, or is a series of an exported histogram.
fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| !base.ends_with("_total") && exported.contains(base))
        })
}

#[test]
fn referenced_metrics_are_exported_by_the_service() {
    let exported = exported();
    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for file in [
        "prometheus/alerts.yml",
        "prometheus/alerts.test.yml",
        "grafana/dashboards/calendar.json",
    ] {
        let names = cal_metrics(&read(file));
        assert!(!names.is_empty(), "{file} uses no cal_ metric");
        for n in names {
            if !is_exported(&n, &exported) {
                unknown.insert(format!("{n} (in deploy/{file})"));
            }
            used.insert(n);
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics not in deploy/metrics.txt: {unknown:#?}"
    );
    assert!(used.contains("cal_graphql_request_duration_seconds_bucket"));
}

#[test]
fn metric_name_extraction() {
    let names =
        cal_metrics(r#"rate(cal_a_total{x="local_b"}[5m]) / cal_h_bucket, cal:rule_x cal_c"#);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["cal_a_total", "cal_c", "cal_h_bucket"]);
    let exported: BTreeSet<String> = ["cal_h", "cal_a_total"].map(String::from).into();
    assert!(is_exported("cal_h_bucket", &exported));
    assert!(is_exported("cal_a_total", &exported));
    assert!(!is_exported("cal_a_total_count", &exported));
    assert!(!is_exported("cal_c", &exported));
}
