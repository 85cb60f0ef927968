//! Traces end to end, in a process of their own (the subscriber and the tracer provider are
//! global): an in-process OTLP/gRPC receiver, the service's telemetry exporting to it, and the
//! month view run cold, warm (executed from L1) and answered whole by the response cache, each
//! request carrying a W3C `traceparent` of its own. Asserts the span tree of each trace, the
//! resource, and that JSON log lines written inside a request carry its trace id and never the
//! bearer token or the JWT secret.
//!
//! Kept out of the one binary of `tests/it`: it installs the global tracing subscriber and the
//! OpenTelemetry tracer provider and propagator (`telemetry::init`), which would capture the
//! spans and logs of every other test in the same process, and only the first test to install a
//! subscriber gets it.

use cal_api::tiers::Tiers;
use cal_api::{ApiConfig, AppState};
use cal_cache::{CacheConfig, InProcessBus, TieredCache};
use cal_domain::{EventStatus, ResourceKind, Transparency};
use cal_server::telemetry::{self, TelemetryConfig};
use cal_storage::{NewAttendee, NewEvent, NewReservation};
use cal_test_support::dates::{self, at, month_vars, next_month_start, window_vars};
use cal_test_support::{TEST_ADMIN_TOKEN, TEST_SECRET, TestApp};
use chrono::Duration as Days;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MONTH_VIEW: &str = include_str!("../../../loadtests/month_view.graphql");
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// Spans received, with the resource attributes of their batch.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
    resource: Arc<Mutex<Vec<KeyValue>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            if let Some(r) = rs.resource {
                *self.resource.lock().unwrap() = r.attributes;
            }
            for ss in rs.scope_spans {
                self.spans.lock().unwrap().extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Log output, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(&s.attributes, key)? {
        any_value::Value::StringValue(v) => Some(v),
        _ => None,
    }
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(&s.attributes, key)? {
        any_value::Value::IntValue(v) => Some(*v),
        _ => None,
    }
}

/// One trace's spans, by span id.
struct Trace {
    spans: HashMap<String, Span>,
}

impl Trace {
    fn of(all: &[Span], trace_id: &str) -> Trace {
        Trace {
            spans: all
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .map(|s| (hex(&s.span_id), s.clone()))
                .collect(),
        }
    }

    fn named(&self, name: &str) -> Vec<&Span> {
        self.spans.values().filter(|s| s.name == name).collect()
    }

    fn with(&self, key: &str, value: &str) -> Vec<&Span> {
        self.spans
            .values()
            .filter(|s| str_attr(s, key) == Some(value))
            .collect()
    }

    fn parent(&self, s: &Span) -> Option<&Span> {
        self.spans.get(&hex(&s.parent_span_id))
    }

    /// The names of `s`'s ancestors, nearest first.
    fn ancestors(&self, s: &Span) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = self.parent(s);
        while let Some(p) = cur {
            out.push(p.name.clone());
            cur = self.parent(p);
        }
        out
    }

    fn tree(&self) -> String {
        let mut lines: Vec<String> = self
            .spans
            .values()
            .map(|s| format!("{} <- {:?}", s.name, self.ancestors(s)))
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_view_traces_show_loaders_tiers_and_sql() {
    // The receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // The service's telemetry, exporting to it, with JSON logs captured.
    let logs = Captured::default();
    let sink = logs.clone();
    let telemetry = Arc::new(
        telemetry::init(TelemetryConfig {
            json_logs: true,
            log_filter: Some("info,sqlx=warn".into()),
            log_writer: Some(tracing_subscriber::fmt::writer::BoxMakeWriter::new(
                move || sink.clone(),
            )),
            otlp_endpoint: Some(format!("http://{otlp}")),
            service_name: "calendar-test".into(),
            service_version: "0.0.0-test".into(),
            service_instance_id: "traces-1".into(),
            sample_ratio: 1.0,
        })
        .unwrap(),
    );
    assert!(telemetry.exporting());

    // Data: a calendar with four events, attendees and a room.
    let app = TestApp::spawn().await;
    let owner = app.user("Olivia Owner").await;
    let calendar = app.calendar(owner.id, "Team").await;
    let guest = app.user("Gus Guest").await;
    let room = app
        .store
        .create_resource("Room", ResourceKind::Room, Some(4), None)
        .await
        .unwrap();
    for i in 0..4 {
        let start = at(3 + i, 9, 0);
        app.store
            .create_event(&NewEvent {
                calendar_id: calendar,
                organizer_id: owner.id,
                title: cal_domain::Title::new(&format!("Event {i}")).unwrap(),
                description: None,
                location: None,
                start_time: start,
                end_time: start + Days::hours(1),
                time_zone: "UTC".into(),
                all_day: false,
                status: EventStatus::Confirmed,
                transparency: Transparency::Busy,
                rrule: None,
                series_end: None,
                attendees: vec![NewAttendee {
                    user_id: guest.id,
                    is_optional: false,
                }],
                reservations: vec![NewReservation {
                    resource_id: room.id,
                    start_time: None,
                    end_time: None,
                }],
            })
            .await
            .unwrap();
    }

    // The service under test: its own cold tiers, and every statement "slow" so that each one
    // writes a log line inside the request.
    let registry = prometheus::Registry::new();
    let cache = TieredCache::new(
        CacheConfig {
            redis_url: Some(
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            ),
            key_prefix: format!("test:{}:traces:", app.db.name),
            ..CacheConfig::default()
        },
        &registry,
    )
    .await
    .unwrap();
    let tiers = Arc::new(Tiers::with_bus(
        cache,
        Arc::new(InProcessBus::default()),
        "traces",
    ));
    let store = app.store.with_slow_statement_threshold(Duration::ZERO);
    let mut config = ApiConfig::new(TEST_SECRET);
    config.admin_token = Some(secrecy::SecretString::from(TEST_ADMIN_TOKEN));
    let state = AppState::new(store, config, tiers.clone(), registry);
    let _sync = tiers
        .sync
        .start(state.store.clone(), std::future::pending());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, cal_api::router(state)).await.unwrap() });

    let token = app.token(owner.id);
    let ask = |trace: &'static str, vars: Value| {
        let client = app.client.clone();
        let token = token.clone();
        async move {
            let resp = client
                .post(format!("http://{addr}/graphql"))
                .bearer_auth(token)
                .header("x-debug-stats", "1")
                .header("x-admin-token", TEST_ADMIN_TOKEN)
                .header("traceparent", format!("00-{trace}-{PARENT_SPAN}-01"))
                .json(&json!({ "query": MONTH_VIEW, "variables": vars }))
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            assert!(body.get("errors").is_none(), "{body}");
            body["extensions"]["stats"].clone()
        }
    };
    let month = month_vars(calendar);
    let last_day = next_month_start() - Days::days(1);
    let part = window_vars(calendar, at(2, 0, 0), last_day);
    const COLD: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const WARM: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    const WHOLE: &str = "6bf92f3577b34da6a3ce929d0e0e4738";
    let cold = ask(COLD, month.clone()).await;
    let warm = ask(WARM, part).await;
    let whole = ask(WHOLE, month).await;
    assert!(cold["sqlStatements"].as_u64().unwrap() > 0, "{cold}");
    assert_eq!(warm["sqlStatements"], 0, "{warm}");
    assert!(warm["l1Hits"].as_u64().unwrap() > 0, "{warm}");
    assert_eq!(whole["responseCacheHit"], true, "{whole}");

    // Flush until the three HTTP spans have arrived.
    let mut all = Vec::new();
    for _ in 0..50 {
        let t = telemetry.clone();
        tokio::task::spawn_blocking(move || t.flush())
            .await
            .unwrap()
            .unwrap();
        all = receiver.spans.lock().unwrap().clone();
        let roots = all
            .iter()
            .filter(|s| s.name == "POST /graphql")
            .filter(|s| [COLD, WARM, WHOLE].contains(&hex(&s.trace_id).as_str()))
            .count();
        if roots == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The resource.
    let resource = receiver.resource.lock().unwrap().clone();
    let res = |k: &str| match attr(&resource, k) {
        Some(any_value::Value::StringValue(v)) => v.clone(),
        other => panic!("resource attribute {k}: {other:?}"),
    };
    assert_eq!(res("service.name"), "calendar-test");
    assert_eq!(res("service.version"), "0.0.0-test");
    assert_eq!(res("service.instance.id"), "traces-1");

    // Cold: HTTP (child of the caller's span) → operation → loader batches → tiers → SQL.
    let t = Trace::of(&all, COLD);
    let tree = t.tree();
    let http = t.named("POST /graphql");
    assert_eq!(http.len(), 1, "{tree}");
    let http = http[0];
    assert_eq!(
        hex(&http.parent_span_id),
        PARENT_SPAN,
        "traceparent honoured"
    );
    assert_eq!(http.kind, SpanKind::Server as i32);
    assert_eq!(
        int_attr(http, "http.response.status_code"),
        Some(200),
        "{:?}",
        http.attributes
    );
    let op = t.named("graphql MonthView");
    assert_eq!(op.len(), 1, "{tree}");
    let op = op[0];
    assert_eq!(t.parent(op).map(|p| p.name.as_str()), Some("POST /graphql"));
    assert_eq!(str_attr(op, "graphql.operation.name"), Some("MonthView"));
    assert_eq!(
        str_attr(op, "graphql.document.hash"),
        Some(cal_api::observe::document_hash(MONTH_VIEW).as_str())
    );
    // Variables' values (the window's first day) appear nowhere in a span.
    let first_day = dates::ANCHOR.to_string();
    for s in t.spans.values() {
        for kv in &s.attributes {
            let v = format!("{:?}", kv.value);
            assert!(!v.contains(&first_day), "{} has {kv:?}", s.name);
        }
    }
    let loaders: Vec<_> = t.with("loader", "calendar_summary");
    assert_eq!(loaders.len(), 1, "{tree}");
    assert!(int_attr(loaders[0], "batch.size").is_some_and(|n| n >= 1));
    let sql = t.with("db.system", "postgresql");
    assert_eq!(
        sql.len() as u64,
        cold["sqlStatements"].as_u64().unwrap(),
        "one span per statement:\n{tree}"
    );
    for s in &sql {
        let parent = t
            .parent(s)
            .unwrap_or_else(|| panic!("{} has no parent\n{tree}", s.name));
        assert_eq!(str_attr(parent, "cache.tier"), Some("db"), "{tree}");
        assert!(
            t.ancestors(s).contains(&"graphql MonthView".to_owned()),
            "{tree}"
        );
        assert!(str_attr(s, "db.statement.name").is_some());
        assert!(int_attr(s, "db.rows").is_some());
        assert_eq!(s.kind, SpanKind::Client as i32);
    }
    // The calendar's statement sits exactly under its loader batch's db tier step.
    let calendar_sql = t.with("db.statement.name", "calendars.by_ids");
    assert_eq!(calendar_sql.len(), 1, "{tree}");
    assert_eq!(
        t.ancestors(calendar_sql[0])[..4],
        [
            "cache db".to_owned(),
            "loader calendar_summary".to_owned(),
            "graphql MonthView".to_owned(),
            "POST /graphql".to_owned()
        ],
        "{tree}"
    );
    for tier in ["l1", "l2", "db"] {
        let steps = t.with("cache.tier", tier);
        assert!(!steps.is_empty(), "no {tier} step\n{tree}");
        for s in steps {
            assert!(int_attr(s, "cache.hits").is_some() && int_attr(s, "cache.misses").is_some());
        }
    }
    assert!(
        t.with("cache.tier", "l1")
            .iter()
            .all(|s| int_attr(s, "cache.hits") == Some(0)),
        "cold L1\n{tree}"
    );
    let redis = t.with("db.system", "redis");
    assert!(
        redis
            .iter()
            .any(|s| str_attr(s, "db.operation.name") == Some("mget")),
        "{tree}"
    );

    // Warm (other variables, same month): executed from L1, no SQL, no lower tiers.
    let t = Trace::of(&all, WARM);
    let tree = t.tree();
    assert_eq!(t.named("graphql MonthView").len(), 1, "{tree}");
    assert!(!t.named("loader calendar_summary").is_empty(), "{tree}");
    assert!(t.with("db.system", "postgresql").is_empty(), "{tree}");
    assert!(t.with("cache.tier", "db").is_empty(), "{tree}");
    assert!(t.with("cache.tier", "l2").is_empty(), "{tree}");
    let l1 = t.with("cache.tier", "l1");
    assert!(!l1.is_empty(), "{tree}");
    assert!(
        l1.iter().all(|s| int_attr(s, "cache.misses") == Some(0)),
        "{tree}"
    );
    assert!(
        l1.iter().all(|s| int_attr(s, "cache.hits").unwrap() > 0),
        "{tree}"
    );

    // Answered whole: the response-cache span says so; nothing executed.
    let t = Trace::of(&all, WHOLE);
    let tree = t.tree();
    let hit = t.named("cache response");
    assert_eq!(hit.len(), 1, "{tree}");
    assert!(matches!(
        attr(&hit[0].attributes, "cache.hit"),
        Some(any_value::Value::BoolValue(true))
    ));
    assert_eq!(
        t.parent(hit[0]).map(|p| p.name.as_str()),
        Some("POST /graphql")
    );
    assert!(t.named("graphql MonthView").is_empty(), "{tree}");
    assert!(t.with("db.system", "postgresql").is_empty(), "{tree}");
    assert!(
        t.spans.values().all(|s| str_attr(s, "loader").is_none()),
        "{tree}"
    );

    // Logs: JSON lines; those written inside the cold request carry its trace id; no secrets.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let slow_in_cold: Vec<&Value> = lines
        .iter()
        .filter(|l| l["trace_id"] == COLD && l["fields"]["message"] == "slow SQL statement")
        .collect();
    assert_eq!(
        slow_in_cold.len() as u64,
        cold["sqlStatements"].as_u64().unwrap(),
        "{text}"
    );
    assert!(
        slow_in_cold
            .iter()
            .all(|l| l["fields"]["statement"].is_string()
                && l["span_id"].as_str().is_some_and(|s| s.len() == 16))
    );
    // A write carries its request's trace context through its outbox row to the bus.
    const WRITE: &str = "6bf92f3577b34da6a3ce929d0e0e4738";
    let created: Value = app
        .client
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{WRITE}-{PARENT_SPAN}-01"))
        .json(&json!({ "query": r#"mutation { createCalendar(input: { name: "Traced", timeZone: "UTC" }) { id } }"# }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created.get("errors").is_none(), "{created}");
    let trace = cal_test_support::sql::newest_outbox_trace(&app.db.pool).await;
    let traceparent = trace
        .as_array()
        .and_then(|pairs| pairs.iter().find(|p| p[0] == "traceparent"))
        .and_then(|p| p[1].as_str())
        .unwrap_or_else(|| panic!("no traceparent in the outbox row: {trace}"));
    assert!(traceparent.contains(WRITE), "{traceparent}");

    assert!(!text.contains(&token), "the bearer token was logged");
    assert!(!text.contains(TEST_SECRET), "the JWT secret was logged");
    assert!(
        !text.to_ascii_lowercase().contains("authorization"),
        "{text}"
    );
}
