//! Static checks of the operator files in `deploy/` (no container engine runs here):
//! promtool validates and unit-tests the Prometheus rules and config, the Grafana dashboard and
//! provisioning and the compose file are parsed and checked for what the stack needs, and every
//! `cal_*` metric they use must be one the service exports (`deploy/metrics.txt`).
//! `kubernetes-validate` checks the Kubernetes manifests of `deploy/k8s` against the API's
//! schemas, and the tests below check what the schemas cannot: probes, ports, selectors, the
//! shutdown timing, the security context and the references between the manifests.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
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

// Kubernetes: deploy/k8s.

/// The Kubernetes versions the manifests are validated against: the oldest and the newest whose
/// schemas the kubernetes-validate that `cargo xtask test` installs (1.37.0, pinned in
/// xtask/src/main.rs) bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

/// Lists the manifests for kustomize; not a Kubernetes resource (no schema to validate).
const KUSTOMIZATION: &str = "kustomization.yaml";

fn k8s_dir() -> PathBuf {
    deploy().join("k8s")
}

/// The YAML files of `deploy/k8s`, by name, sorted.
fn k8s_files() -> Vec<String> {
    let dir = k8s_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap()
                .file_name()
                .into_string()
                .expect("a UTF-8 file name")
        })
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// The manifests: every YAML file of `deploy/k8s` but the kustomization.
fn k8s_manifests() -> Vec<String> {
    let files: Vec<String> = k8s_files()
        .into_iter()
        .filter(|name| name != KUSTOMIZATION)
        .collect();
    assert!(!files.is_empty(), "deploy/k8s has no manifests");
    files
}

/// Every resource of the manifests (a file may hold several documents), looked up by kind.
struct Manifests(Vec<Yaml>);

impl Manifests {
    fn load() -> Self {
        let mut resources = Vec::new();
        for file in k8s_manifests() {
            let docs = YamlLoader::load_from_str(&read(&format!("k8s/{file}")))
                .unwrap_or_else(|e| panic!("deploy/k8s/{file} is not valid YAML: {e}"));
            resources.extend(
                docs.into_iter()
                    .filter(|d| !d.is_badvalue() && !d.is_null()),
            );
        }
        Manifests(resources)
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.0
            .iter()
            .filter(|r| r["kind"].as_str() == Some(kind))
            .collect()
    }

    /// The one resource of `kind`.
    fn one(&self, kind: &str) -> &Yaml {
        let found = self.of_kind(kind);
        assert_eq!(
            found.len(),
            1,
            "deploy/k8s: expected exactly one {kind}, found {}",
            found.len()
        );
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Yaml> {
        self.of_kind(kind)
            .into_iter()
            .find(|r| r["metadata"]["name"].as_str() == Some(name))
    }
}

fn strings<'a>(y: &'a Yaml, what: &str) -> Vec<&'a str> {
    vec_of(y, what).iter().map(|s| str_of(s, what)).collect()
}

/// A mapping of strings (labels, a selector, a ConfigMap's data).
fn string_map(y: &Yaml, what: &str) -> BTreeMap<String, String> {
    y.as_hash()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, got {y:?}"))
        .iter()
        .map(|(k, v)| (str_of(k, what).to_owned(), str_of(v, what).to_owned()))
        .collect()
}

fn pod_spec(deployment: &Yaml) -> &Yaml {
    let spec = &deployment["spec"]["template"]["spec"];
    assert!(
        spec.as_hash().is_some(),
        "the Deployment has no pod template spec"
    );
    spec
}

fn pod_labels(deployment: &Yaml) -> BTreeMap<String, String> {
    string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod template labels",
    )
}

/// The Deployment's one container, `calendar`.
fn container(deployment: &Yaml) -> &Yaml {
    let containers = vec_of(&pod_spec(deployment)["containers"], "Deployment containers");
    assert_eq!(containers.len(), 1, "the Deployment runs one container");
    let c = &containers[0];
    assert_eq!(c["name"].as_str(), Some("calendar"), "the container's name");
    c
}

/// The port the container declares (the service's only one).
fn container_port(c: &Yaml) -> i64 {
    let ports = vec_of(&c["ports"], "container ports");
    assert_eq!(
        ports.len(),
        1,
        "the container declares one port, the service's"
    );
    ports[0]["containerPort"]
        .as_i64()
        .expect("the container port has a containerPort")
}

/// The container port that a probe's `port` or the Service's `targetPort` means: a number, or
/// the name of one of the container's ports.
fn resolve_port(c: &Yaml, port: &Yaml, what: &str) -> i64 {
    if let Some(n) = port.as_i64() {
        return n;
    }
    let name = str_of(port, what);
    vec_of(&c["ports"], "container ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("{what}: the container has no port named {name:?}"))
}

/// The ConfigMap's data: the non-secret environment.
fn config_env(m: &Manifests) -> BTreeMap<String, String> {
    string_map(&m.one("ConfigMap")["data"], "ConfigMap data")
}

/// `selector` picks the pods of the template: each of its labels is one of theirs.
fn assert_selects(selector: &Yaml, labels: &BTreeMap<String, String>, what: &str) {
    let selector = string_map(selector, what);
    assert!(!selector.is_empty(), "{what}: an empty selector");
    for (k, v) in &selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{what} selects {k}={v}, which the pod template's labels {labels:?} lack"
        );
    }
}

/// Every manifest validates against the schemas of each of [`KUBERNETES_VERSIONS`], strictly
/// (an unknown field is an error). A resource whose kind has no schema (a CRD, a mistyped
/// apiVersion) is only a warning to the tool: it fails here too.
#[test]
fn kubernetes_validate_accepts_every_manifest() {
    let files = k8s_manifests();
    let resources = Manifests::load().0.len();
    // As a module of the Python that `cargo xtask test` installs it into (its script may be in
    // a directory PATH lacks).
    let program = "python3 -m kubernetes_validate";
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate"]);
    let mut args = vec!["--strict".to_owned()];
    for v in KUBERNETES_VERSIONS {
        args.extend(["-k".to_owned(), v.to_owned()]);
    }
    args.extend(files.iter().cloned());
    let out = cmd
        .args(&args)
        .current_dir(k8s_dir())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e} (`cargo xtask test` installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!("`{program} {}` in deploy/k8s", args.join(" "));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{text}",
        out.status
    );
    for word in ["WARN", "ERROR", "FATAL"] {
        assert!(!text.contains(word), "{shown} reported {word}:\n{text}");
    }
    let passed = text
        .lines()
        .filter(|l| l.starts_with("INFO ") && l.contains(" passed for resource "))
        .count();
    assert_eq!(
        passed,
        resources * KUBERNETES_VERSIONS.len(),
        "{shown}: {resources} resources x {} versions should pass:\n{text}",
        KUBERNETES_VERSIONS.len()
    );
    for v in KUBERNETES_VERSIONS {
        let minor = v.rsplit_once('.').unwrap().0;
        assert!(
            text.contains(&format!("against version {minor}\n")),
            "{shown}: nothing validated against the schemas of {minor}:\n{text}"
        );
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = yaml(&format!("k8s/{KUSTOMIZATION}"));
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    let listed = strings(&k["resources"], "kustomization resources");
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "the kustomization lists a file twice"
    );
    let files = k8s_manifests();
    let on_disk: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        unique, on_disk,
        "deploy/k8s/{KUSTOMIZATION}'s resources and the folder's manifests differ"
    );
}

/// Probes on the service's port, the port LISTEN_ADDR opens, the Service's target and the
/// scrape annotations: one and the same.
#[test]
fn the_deployment_probes_and_ports_agree_with_the_service() {
    let m = Manifests::load();
    let d = m.one("Deployment");
    let c = container(d);
    let port = container_port(c);
    let env = config_env(&m);
    let addr = env
        .get("LISTEN_ADDR")
        .expect("the ConfigMap sets LISTEN_ADDR");
    let (host, listen) = addr
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("LISTEN_ADDR {addr:?} has no port"));
    assert!(
        host == "0.0.0.0" || host == "[::]",
        "LISTEN_ADDR {addr:?}: the kubelet probes the pod's IP, so listen on all addresses"
    );
    assert_eq!(
        listen.parse::<i64>().ok(),
        Some(port),
        "LISTEN_ADDR {addr:?} and the containerPort {port} differ"
    );
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            get["path"].as_str(),
            Some(path),
            "the {probe} is an HTTP GET of {path}"
        );
        assert_eq!(resolve_port(c, &get["port"], probe), port, "{probe} port");
    }
    if !c["startupProbe"].is_badvalue() {
        let get = &c["startupProbe"]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/health"), "startupProbe path");
        assert_eq!(resolve_port(c, &get["port"], "startupProbe"), port);
    }

    let svc = m.one("Service");
    let svc_ports = vec_of(&svc["spec"]["ports"], "Service ports");
    assert!(!svc_ports.is_empty(), "the Service has no port");
    for p in svc_ports {
        assert_eq!(
            resolve_port(c, &p["targetPort"], "Service targetPort"),
            port,
            "the Service's targetPort is the container's port"
        );
    }

    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    let port_text = port.to_string();
    for (key, value) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", port_text.as_str()),
        ("prometheus.io/path", "/metrics"),
    ] {
        assert_eq!(
            annotations[key].as_str(),
            Some(value),
            "the pod template's annotation {key}"
        );
    }
    assert!(
        read("Dockerfile").contains(&format!("EXPOSE {port}")),
        "deploy/Dockerfile exposes {port}"
    );
}

/// Seconds the preStop hook waits: the native `sleep` action, or `exec` of `sleep N`.
fn pre_stop_secs(c: &Yaml) -> i64 {
    let hook = &c["lifecycle"]["preStop"];
    assert!(
        hook.as_hash().is_some(),
        "the container has no lifecycle.preStop: the load balancers must stop sending before SIGTERM"
    );
    if let Some(secs) = hook["sleep"]["seconds"].as_i64() {
        return secs;
    }
    let command = strings(&hook["exec"]["command"], "preStop exec command");
    command
        .iter()
        .position(|a| *a == "sleep" || a.ends_with("/sleep"))
        .and_then(|i| command.get(i + 1))
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            panic!("preStop {command:?} is neither `sleep: {{seconds: N}}` nor `exec` of `sleep N`")
        })
}

/// Kubernetes counts the preStop hook into the grace period, and `calendar serve` drains HTTP
/// for up to SHUTDOWN_GRACE_SECS after SIGTERM, then waits as long again for the invalidation
/// tasks (crates/cal-server/src/serve.rs): all of it before SIGKILL.
#[test]
fn pods_drain_before_they_are_killed() {
    let m = Manifests::load();
    let d = m.one("Deployment");
    let env = config_env(&m);
    let grace: i64 = env
        .get("SHUTDOWN_GRACE_SECS")
        .expect("the ConfigMap sets SHUTDOWN_GRACE_SECS (the grace period is sized against it)")
        .parse::<i64>()
        .expect("SHUTDOWN_GRACE_SECS is a number of seconds");
    let pre_stop = pre_stop_secs(container(d));
    assert!(
        pre_stop >= 5,
        "a preStop delay of {pre_stop} s leaves load balancers too little time to drop the pod"
    );
    let termination = pod_spec(d)["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("the pod sets terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} <= SHUTDOWN_GRACE_SECS {grace}"
    );
    assert!(
        termination > pre_stop + 2 * grace,
        "terminationGracePeriodSeconds {termination} must exceed preStop ({pre_stop} s) + the \
         HTTP drain and the invalidation tasks' stop (2 x SHUTDOWN_GRACE_SECS = {} s)",
        2 * grace
    );
}

/// A securityContext field as the container gets it: its own, else the pod's.
fn effective<'a>(c: &'a Yaml, pod: &'a Yaml, field: &str) -> &'a Yaml {
    let own = &c["securityContext"][field];
    if own.is_badvalue() {
        &pod["securityContext"][field]
    } else {
        own
    }
}

#[test]
fn the_container_runs_unprivileged_with_only_sys_nice() {
    let m = Manifests::load();
    let d = m.one("Deployment");
    let c = container(d);
    let pod = pod_spec(d);
    assert_eq!(
        effective(c, pod, "runAsNonRoot").as_bool(),
        Some(true),
        "runAsNonRoot"
    );
    let uid = effective(c, pod, "runAsUser")
        .as_i64()
        .expect("runAsUser is set");
    assert!(uid > 0, "runAsUser {uid} is root");
    assert!(
        read("Dockerfile").contains(&format!("--uid {uid} ")),
        "runAsUser {uid} is not the image's user (deploy/Dockerfile's `useradd --uid`)"
    );
    let sc = &c["securityContext"];
    assert_eq!(
        sc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    assert_ne!(sc["privileged"].as_bool(), Some(true), "privileged");
    let added = strings(&sc["capabilities"]["add"], "capabilities.add");
    assert_eq!(
        added,
        ["SYS_NICE"],
        "only SYS_NICE is added (INVALIDATION_THREAD_NICE)"
    );
    let dropped = strings(&sc["capabilities"]["drop"], "capabilities.drop");
    assert!(
        dropped.contains(&"ALL"),
        "capabilities.drop {dropped:?} lacks ALL"
    );
}

/// A memory quantity in bytes: `1Gi`, `512Mi`, `1G`, `1048576`.
fn memory_bytes(q: &Yaml) -> u64 {
    if let Some(n) = q.as_i64() {
        return u64::try_from(n).expect("a memory quantity >= 0");
    }
    let text = str_of(q, "memory quantity");
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("memory {text:?}: {e}"))
                * factor;
        }
    }
    text.parse::<u64>()
        .unwrap_or_else(|e| panic!("memory {text:?}: {e}"))
}

/// A CPU quantity in millicores: `500m`, `1`, `1.5`.
fn millicores(q: &Yaml) -> u64 {
    if let Some(n) = q.as_i64() {
        return u64::try_from(n).expect("a CPU quantity >= 0") * 1000;
    }
    let text = str_of(q, "cpu quantity");
    match text.strip_suffix('m') {
        Some(m) => m
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("cpu {text:?}: {e}")),
        None => {
            let cores = text
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("cpu {text:?}: {e}"));
            (cores * 1000.0).round() as u64
        }
    }
}

#[test]
fn quantities() {
    let y = |s: &str| Yaml::String(s.to_owned());
    assert_eq!(memory_bytes(&y("1Gi")), 1 << 30);
    assert_eq!(memory_bytes(&y("512Mi")), 512 << 20);
    assert_eq!(memory_bytes(&y("1G")), 1_000_000_000);
    assert_eq!(memory_bytes(&Yaml::Integer(4096)), 4096);
    assert_eq!(millicores(&y("500m")), 500);
    assert_eq!(millicores(&y("1.5")), 1500);
    assert_eq!(millicores(&y("2")), 2000);
    assert_eq!(millicores(&Yaml::Integer(1)), 1000);
}

/// Requests and limits for CPU and memory, and a memory limit that holds the in-process caches
/// the ConfigMap sizes (L1 and the response cache) with room for the rest.
#[test]
fn the_container_has_requests_and_limits_that_hold_its_caches() {
    let m = Manifests::load();
    let c = container(m.one("Deployment"));
    let r = &c["resources"];
    // A request above zero and at most the limit; answers the limit.
    let bounded = |resource: &str, amount: fn(&Yaml) -> u64| {
        let (request, limit) = (
            amount(&r["requests"][resource]),
            amount(&r["limits"][resource]),
        );
        assert!(
            request > 0 && request <= limit,
            "{resource} request {request}, limit {limit}"
        );
        limit
    };
    bounded("cpu", millicores);
    let memory_limit = bounded("memory", memory_bytes);
    let env = config_env(&m);
    let caches: u64 = ["CACHE_L1_MAX_BYTES", "CACHE_RESPONSE_MAX_BYTES"]
        .iter()
        .map(|key| {
            env.get(*key)
                .unwrap_or_else(|| {
                    panic!("the ConfigMap sets {key} (the memory limit is sized against it)")
                })
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{key}: {e}"))
        })
        .sum();
    let headroom: u64 = 256 << 20;
    assert!(
        caches + headroom <= memory_limit,
        "the memory limit ({memory_limit} bytes) must hold the caches ({caches} bytes) and \
         {headroom} bytes more"
    );
}

#[test]
fn the_autoscaler_the_disruption_budget_and_the_service_select_the_pods() {
    let m = Manifests::load();
    let d = m.one("Deployment");
    let name = str_of(&d["metadata"]["name"], "Deployment name");
    let labels = pod_labels(d);
    assert_selects(
        &d["spec"]["selector"]["matchLabels"],
        &labels,
        "the Deployment's selector",
    );
    assert_selects(
        &m.one("Service")["spec"]["selector"],
        &labels,
        "the Service's selector",
    );
    assert!(
        d["spec"]["replicas"].is_badvalue(),
        "the Deployment sets no replicas: the HorizontalPodAutoscaler owns the count \
         (every `kubectl apply` would reset it)"
    );

    let hpa = m.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"].as_str(), Some("autoscaling/v2"));
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(target["kind"].as_str(), Some("Deployment"));
    assert_eq!(
        target["name"].as_str(),
        Some(name),
        "the HorizontalPodAutoscaler scales the Deployment {name}"
    );
    let on_cpu = vec_of(&hpa["spec"]["metrics"], "HPA metrics")
        .iter()
        .any(|metric| {
            let resource = &metric["resource"];
            metric["type"].as_str() == Some("Resource")
                && resource["name"].as_str() == Some("cpu")
                && resource["target"]["type"].as_str() == Some("Utilization")
                && resource["target"]["averageUtilization"]
                    .as_i64()
                    .is_some_and(|u| (1..=100).contains(&u))
        });
    assert!(
        on_cpu,
        "the HorizontalPodAutoscaler has no CPU utilization metric"
    );
    let min = hpa["spec"]["minReplicas"]
        .as_i64()
        .expect("the HorizontalPodAutoscaler sets minReplicas");
    let max = hpa["spec"]["maxReplicas"].as_i64().expect("maxReplicas");
    assert!(min >= 2 && max >= min, "replicas {min}..{max}");

    let pdb = m.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"].as_str(), Some("policy/v1"));
    let spec = &pdb["spec"];
    assert!(
        spec["selector"]["matchExpressions"].is_badvalue(),
        "the PodDisruptionBudget selects by matchLabels only (checked against the pods)"
    );
    assert_selects(
        &spec["selector"]["matchLabels"],
        &labels,
        "the PodDisruptionBudget's selector",
    );
    assert!(
        !spec["maxUnavailable"].is_badvalue() || !spec["minAvailable"].is_badvalue(),
        "the PodDisruptionBudget sets maxUnavailable or minAvailable"
    );
    if let Some(n) = spec["minAvailable"].as_i64() {
        assert!(
            n < min,
            "minAvailable {n} >= minReplicas {min}: no node could be drained"
        );
    }
    if let Some(n) = spec["maxUnavailable"].as_i64() {
        assert!(n >= 1, "maxUnavailable {n}: no node could be drained");
    }
}

/// envFrom takes the ConfigMap and the Secret of the folder; the secrets are in the Secret,
/// as placeholders; the ConfigMap sets what a real deployment needs.
#[test]
fn the_environment_comes_from_the_configmap_and_the_secret() {
    let m = Manifests::load();
    let c = container(m.one("Deployment"));
    let (mut config_maps, mut secrets) = (Vec::new(), Vec::new());
    for source in vec_of(&c["envFrom"], "envFrom") {
        assert!(
            source["prefix"].is_badvalue(),
            "an envFrom prefix would rename the variables"
        );
        let (kind, reference) = if !source["configMapRef"].is_badvalue() {
            ("ConfigMap", &source["configMapRef"])
        } else if !source["secretRef"].is_badvalue() {
            ("Secret", &source["secretRef"])
        } else {
            panic!("an envFrom entry with neither configMapRef nor secretRef: {source:?}");
        };
        let name = str_of(&reference["name"], "envFrom name");
        assert_ne!(
            reference["optional"].as_bool(),
            Some(true),
            "envFrom {kind} {name} is optional: a missing one would start pods without it"
        );
        assert!(
            m.named(kind, name).is_some(),
            "envFrom names the {kind} {name}, which deploy/k8s does not define"
        );
        if kind == "ConfigMap" {
            config_maps.push(name);
        } else {
            secrets.push(name);
        }
    }
    assert!(!config_maps.is_empty(), "envFrom takes no ConfigMap");
    assert!(!secrets.is_empty(), "envFrom takes no Secret");

    let env = config_env(&m);
    assert_eq!(
        env.get("CAL_ENV").map(String::as_str),
        Some("prod"),
        "the ConfigMap sets CAL_ENV=prod"
    );
    for key in [
        "LISTEN_ADDR",
        "SHUTDOWN_GRACE_SECS",
        "REDIS_URL",
        "KAFKA_BROKERS",
    ] {
        assert!(env.contains_key(key), "the ConfigMap does not set {key}");
    }
    let secret = m.one("Secret");
    assert!(
        secret["data"].is_badvalue(),
        "the Secret's values are in stringData (placeholders to replace), not in base64 data"
    );
    let values = string_map(&secret["stringData"], "Secret stringData");
    for key in ["DATABASE_URL", "JWT_SECRET", "ADMIN_TOKEN"] {
        assert!(values.contains_key(key), "the Secret does not set {key}");
        assert!(
            !env.contains_key(key),
            "{key} is a secret: in the Secret, not the ConfigMap"
        );
    }
    for (key, value) in &values {
        assert!(
            value.contains("CHANGE-ME"),
            "Secret {key}: a committed value must be a placeholder marked CHANGE-ME"
        );
    }
    // The placeholders pass the start's checks, so the manifests run as they are.
    assert!(
        values["JWT_SECRET"].len() >= 32,
        "JWT_SECRET: at least 32 bytes"
    );
    assert!(
        values["ADMIN_TOKEN"].len() >= 16,
        "ADMIN_TOKEN: at least 16 bytes"
    );
}
