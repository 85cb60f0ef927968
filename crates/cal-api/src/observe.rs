//! Request observation: the HTTP span, the GraphQL operation span and the request metrics.
//!
//! [`layer`] wraps the router. For every request it opens an `http.request` span (info level for
//! `POST /graphql`, debug for the other routes), whose parent is the caller's span when the request
//! carries a W3C `traceparent` header (through the global text-map propagator, which the binary
//! sets when it exports traces). For `/graphql` it then records, once the response is ready:
//!
//! - `cal_graphql_request_duration_seconds{operation, outcome}`: `operation` is the operation
//!   name, `anonymous` when the request names none, `batch` for a batch (names are client input:
//!   only valid GraphQL names of at most 64 characters, and at most [`MAX_OPERATIONS`] distinct
//!   ones, become labels; the rest are `other`); `outcome` is `error` when any operation answered
//!   an error (or the request was rejected before it was read), `ok` otherwise;
//! - `cal_graphql_errors_total{code}`, one per error, by `extensions.code`
//!   ([`UNCODED`] for an error that has none; every error the API answers has one);
//! - `cal_db_statements_per_request`: the request's SQL statements (0 for answers from the
//!   whole-response cache).
//!
//! The GraphQL handler tells the layer what happened through a few hooks ([`begin`], [`execute`],
//! [`errors`], and [`loader_batch`] from the loaders), which write into a per-request report held
//! in a task-local: the handler, async-graphql and the DataLoaders all run inside the request's
//! task, and no async-graphql extension is registered (any extension would put every field on
//! async-graphql's slow path). One `graphql.operation` span per operation, never one per field.
//!
//! The same registry also gets the database figures, read at scrape time: the pool gauges
//! `cal_db_pool_connections`, `cal_db_pool_idle_connections`, `cal_db_pool_max_connections` and
//! `cal_db_slow_statements_total{statement}` (see `cal_storage`'s statement observation).
//!
//! Nothing here records headers, variables or the query text: operations are identified by name
//! and by the SHA-256 of their query text (`graphql.document.hash`).

use crate::AppState;
use crate::schema::AppSchema;
use async_graphql::{BatchRequest, BatchResponse, Response as GqlResponse};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::Response;
use cal_storage::{PgPool, StoreStats};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use opentelemetry::propagation::{Extractor, Injector};
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// At most this many distinct operation names become `operation` labels.
pub const MAX_OPERATIONS: usize = 200;
/// The `code` label of an error without `extensions.code`.
pub const UNCODED: &str = "GRAPHQL_VALIDATION_FAILED";
/// Every `extensions.code` the API gives (their series start at zero).
pub const CODES: [&str; 12] = [
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "VERSION_CONFLICT",
    "RESOURCE_CONFLICT",
    "QUERY_TOO_COMPLEX",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
    "INTERNAL_SERVER_ERROR",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
];

const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const STATEMENT_BUCKETS: [f64; 13] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0, 100.0,
];

/// The GraphQL request metrics.
#[derive(Clone)]
struct Metrics {
    duration: HistogramVec,
    errors: IntCounterVec,
    statements: Histogram,
    direct: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "cal_graphql_request_duration_seconds",
                    "GraphQL requests (POST /graphql) from the first byte in to the response, by operation and outcome",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["operation", "outcome"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "cal_graphql_errors_total",
                    "GraphQL errors answered, by extensions.code",
                ),
                &["code"],
            )?,
            statements: Histogram::with_opts(
                HistogramOpts::new(
                    "cal_db_statements_per_request",
                    "SQL statements one GraphQL request sent (0 when answered from the caches)",
                )
                .buckets(STATEMENT_BUCKETS.to_vec()),
            )?,
            direct: IntCounterVec::new(
                Opts::new(
                    "cal_graphql_direct_executions_total",
                    "Queries offered to direct execution, by outcome (answered, or fallback to async-graphql)",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.statements.clone()))?;
        registry.register(Box::new(m.direct.clone()))?;
        for outcome in ["answered", "fallback"] {
            m.direct.with_label_values(&[outcome]);
        }
        for code in CODES.into_iter().chain([UNCODED]) {
            m.errors.with_label_values(&[code]);
        }
        Ok(m)
    }
}

/// Pool gauges and slow-statement counts, read from the pool and the store when scraped.
struct DbCollector {
    pool: PgPool,
    stats: Arc<StoreStats>,
    connections: IntGauge,
    idle: IntGauge,
    max: IntGauge,
    slow_desc: IntCounterVec,
}

fn slow_statements_vec() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "cal_db_slow_statements_total",
            "SQL statements slower than DB_SLOW_STATEMENT_MS, by statement name",
        ),
        &["statement"],
    )
    .expect("valid metric")
}

impl DbCollector {
    fn new(pool: PgPool, stats: Arc<StoreStats>) -> prometheus::Result<Self> {
        Ok(Self {
            pool,
            stats,
            connections: IntGauge::new(
                "cal_db_pool_connections",
                "Connections the database pool holds (idle or in use)",
            )?,
            idle: IntGauge::new(
                "cal_db_pool_idle_connections",
                "Idle connections in the database pool",
            )?,
            max: IntGauge::new(
                "cal_db_pool_max_connections",
                "Largest size of the database pool (DB_MAX_CONNECTIONS)",
            )?,
            slow_desc: slow_statements_vec(),
        })
    }
}

impl Collector for DbCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        [&self.connections, &self.idle, &self.max]
            .into_iter()
            .flat_map(|g| g.desc())
            .chain(self.slow_desc.desc())
            .collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.connections.set(i64::from(self.pool.size()));
        self.idle
            .set(i64::try_from(self.pool.num_idle()).unwrap_or(i64::MAX));
        self.max
            .set(i64::from(self.pool.options().get_max_connections()));
        let slow = slow_statements_vec();
        for (name, n) in self.stats.slow_statements() {
            slow.with_label_values(&[name]).inc_by(n);
        }
        [&self.connections, &self.idle, &self.max]
            .into_iter()
            .flat_map(|g| g.collect())
            .chain(slow.collect())
            .collect()
    }
}

/// What the layer learns about one request from the hooks.
#[derive(Default)]
struct Report {
    /// The `operation` label, once the handler has read the request ([`begin`]).
    operation: Option<String>,
    /// `extensions.code` of every error answered.
    codes: Vec<String>,
    statements: u64,
    loader_batches: u64,
    /// Whether direct execution answered (`Some(true)`) or stepped aside, when it was tried.
    direct: Option<bool>,
}

tokio::task_local! {
    static REPORT: Arc<Mutex<Report>>;
}

fn with_report(f: impl FnOnce(&mut Report)) {
    let _ = REPORT.try_with(|r| f(&mut r.lock().unwrap()));
}

/// The operation names seen so far (the label cardinality bound).
static OPERATIONS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
        && s.len() <= 64
}

/// The `operation` label of one request.
fn operation_label(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".to_owned();
    };
    if !is_name(name) {
        return "other".to_owned();
    }
    let mut known = OPERATIONS.lock().unwrap();
    let known = known.get_or_insert_with(HashSet::new);
    if known.contains(name) {
        return name.to_owned();
    }
    if known.len() < MAX_OPERATIONS {
        known.insert(name.to_owned());
        return name.to_owned();
    }
    "other".to_owned()
}

/// The operation a single request runs, by name: `operationName`, else the name of the document's
/// only operation (clients often send a named operation without `operationName`).
fn operation_name(req: &async_graphql::Request) -> Option<String> {
    req.operation_name
        .clone()
        .or_else(|| only_operation_name(&req.query))
}

/// The name of the document's operation if it has exactly one (named) operation. A lexical scan
/// at brace depth 0 (strings, block strings and comments skipped): no parse.
fn only_operation_name(query: &str) -> Option<String> {
    let b = query.as_bytes();
    let (mut i, mut depth, mut found, mut ops) = (0, 0usize, None, 0);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => {
                if depth == 0 && ops == 0 {
                    ops = 1; // shorthand `{ … }`: an anonymous query
                }
                depth += 1;
            }
            b'}' => depth = depth.saturating_sub(1),
            c if depth == 0 && (c == b'_' || c.is_ascii_alphabetic()) => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word = &query[start..i];
                if matches!(word, "query" | "mutation" | "subscription") {
                    ops += 1;
                    while i < b.len() && (b[i] as char).is_whitespace() {
                        i += 1;
                    }
                    let name_start = i;
                    while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                        i += 1;
                    }
                    found = (i > name_start).then(|| query[name_start..i].to_owned());
                } else if word == "fragment" {
                    // `fragment Name on Type { … }`: skip to its selection set.
                    while i < b.len() && b[i] != b'{' {
                        i += 1;
                    }
                    // Consume its `{` here: it opens no operation.
                    i += 1;
                    depth += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if ops == 1 { found } else { None }
}

/// Hook: the handler has read the request. Names the operation for the metrics and the HTTP span.
pub fn begin(batch: &BatchRequest) {
    let label = match batch {
        BatchRequest::Single(req) => operation_label(operation_name(req).as_deref()),
        BatchRequest::Batch(_) => "batch".to_owned(),
    };
    Span::current().record("graphql.operation.name", label.as_str());
    with_report(|r| r.operation = Some(label));
}

/// Hook: the handler answers from a whole-response cache, for an operation labelled `label`
/// (as [`begin`] labelled it when the response was built); no statements.
pub fn cached(label: &str) {
    Span::current().record("graphql.operation.name", label);
    with_report(|r| r.operation = Some(label.to_owned()));
}

/// The current request's operation label, once [`begin`] has named it.
pub fn operation() -> Option<String> {
    REPORT
        .try_with(|r| r.lock().unwrap().operation.clone())
        .ok()
        .flatten()
}

/// Hook: the handler answers `resp` without executing it (rejected batch, bad header).
pub fn errors(resp: &GqlResponse) {
    with_report(|r| r.codes.extend(error_codes(resp)));
}

fn error_codes(resp: &GqlResponse) -> impl Iterator<Item = String> + '_ {
    resp.errors.iter().map(
        |e| match e.extensions.as_ref().and_then(|x| x.get("code")) {
            Some(async_graphql::Value::String(code)) => code.clone(),
            _ => UNCODED.to_owned(),
        },
    )
}

/// SHA-256 of the query text, in hex.
pub fn document_hash(query: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(query.as_bytes()))
}

/// Hook: executes `batch` (each operation in a `graphql.operation` span: operation name, SHA-256
/// of the query text, error count and codes; never variables), tags limit errors with their code,
/// and reports errors and the request's statement count (`stats`) to the layer.
pub async fn execute(schema: &AppSchema, batch: BatchRequest, stats: &StoreStats) -> BatchResponse {
    let resp = match batch {
        BatchRequest::Single(req) => BatchResponse::Single(execute_one(schema, req).await),
        BatchRequest::Batch(list) => BatchResponse::Batch(
            list.into_iter()
                .map(|req| execute_one(schema, req))
                .collect::<FuturesOrdered<_>>()
                .collect()
                .await,
        ),
    };
    let codes: Vec<String> = match &resp {
        BatchResponse::Single(r) => error_codes(r).collect(),
        BatchResponse::Batch(list) => list.iter().flat_map(error_codes).collect(),
    };
    with_report(|r| {
        r.codes.extend(codes);
        r.statements = stats.statements();
    });
    resp
}

/// Hook: runs `direct` (direct execution of `req`, see `schema/direct.rs`) in a
/// `graphql.operation` span and, when it answers, reports the request's statement count
/// (`stats`) like [`execute`]. `None`: it stepped aside (the span says so) and the caller runs
/// [`execute`].
pub async fn execute_direct(
    req: &async_graphql::Request,
    stats: &StoreStats,
    direct: impl std::future::Future<Output = Option<Vec<u8>>>,
) -> Option<Vec<u8>> {
    let span = operation_span(req);
    span.record("graphql.direct", true);
    let body = direct.instrument(span.clone()).await;
    match &body {
        Some(_) => with_report(|r| {
            r.statements = stats.statements();
            r.direct = Some(true);
        }),
        None => {
            span.record("graphql.direct", false);
            with_report(|r| r.direct = Some(false));
        }
    }
    body
}

fn operation_span(req: &async_graphql::Request) -> Span {
    let name = operation_name(req);
    let span = tracing::info_span!(
        "graphql.operation",
        otel.name = %format_args!("graphql {}", name.as_deref().unwrap_or("anonymous")),
        otel.status_code = Empty,
        graphql.operation.name = name.as_deref().unwrap_or(""),
        graphql.document.hash = Empty,
        graphql.errors = Empty,
        graphql.error.codes = Empty,
        graphql.direct = Empty,
    );
    if !span.is_disabled() {
        span.record("graphql.document.hash", document_hash(&req.query).as_str());
    }
    span
}

async fn execute_one(schema: &AppSchema, req: async_graphql::Request) -> GqlResponse {
    let span = operation_span(&req);
    let mut resp = schema.execute(req).instrument(span.clone()).await;
    crate::limits::tag_limit_errors(&mut resp);
    if !resp.errors.is_empty() {
        let codes: Vec<String> = error_codes(&resp).collect();
        span.record("otel.status_code", "ERROR");
        span.record("graphql.errors", resp.errors.len() as i64);
        span.record("graphql.error.codes", codes.join(",").as_str());
    }
    resp
}

/// Hook for the loaders: one DataLoader batch of `size` keys. Counts it for the request
/// (`extensions.stats.loaderBatches`) and returns its `loader.batch` span.
pub fn loader_batch(loader: &'static str, size: usize) -> Span {
    with_report(|r| r.loader_batches += 1);
    tracing::debug_span!(
        "loader.batch",
        otel.name = %format_args!("loader {loader}"),
        loader = loader,
        batch.size = size as i64,
    )
}

/// DataLoader batches the current request has run so far.
pub fn loader_batches() -> u64 {
    REPORT
        .try_with(|r| r.lock().unwrap().loader_batches)
        .unwrap_or(0)
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct PairsInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for PairsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// The current span's W3C trace context (`traceparent`, `tracestate`), to carry in a message;
/// empty when traces are not exported.
pub fn trace_context() -> Vec<(String, String)> {
    let cx = Span::current().context();
    let mut out = Vec::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut PairsInjector(&mut out))
    });
    out
}

/// Makes the span of a message's handling a child of the span that sent it (`context` as
/// returned by [`trace_context`] on the sender).
pub fn set_remote_parent(span: &Span, context: &[(String, String)]) {
    if span.is_disabled() || context.is_empty() {
        return;
    }
    let map: std::collections::HashMap<String, String> = context.iter().cloned().collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&map));
    let _ = span.set_parent(cx);
}

/// The observation layer for [`crate::router`]: registers its metrics in the app's registry.
pub fn layer(state: &AppState) -> ObserveLayer {
    let metrics = Metrics::register(&state.registry)
        .inspect_err(|e| tracing::warn!(error = %e, "GraphQL metrics not registered"))
        .or_else(|_| Metrics::register(&Registry::new()))
        .expect("metrics register in a fresh registry");
    match DbCollector::new(state.store.pool().clone(), state.store.stats().clone()) {
        Ok(c) => {
            if let Err(e) = state.registry.register(Box::new(c)) {
                tracing::warn!(error = %e, "database pool metrics not registered");
            }
        }
        Err(e) => tracing::warn!(error = %e, "database pool metrics not built"),
    }
    let kinds: Vec<&str> = cal_domain::cache_keys::KeyKind::ALL
        .iter()
        .map(|k| k.label())
        .collect();
    state.tiers.cache.declare_kinds(&kinds);
    ObserveLayer {
        metrics: Arc::new(metrics),
    }
}

/// See [`layer`].
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ObserveLayer`] wraps around the router.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request<Body>> for Observe<S>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was driven to readiness serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let graphql = req.method() == Method::POST && req.uri().path() == "/graphql";
            let span = if graphql {
                tracing::info_span!(
                    "http.request",
                    otel.name = "POST /graphql",
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = "POST",
                    http.route = "/graphql",
                    http.response.status_code = Empty,
                    graphql.operation.name = Empty,
                )
            } else {
                tracing::debug_span!(
                    "http.request",
                    otel.name = %req.method(),
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = %req.method(),
                    url.path = req.uri().path(),
                    http.response.status_code = Empty,
                )
            };
            if !span.is_disabled() && req.headers().contains_key("traceparent") {
                let cx = opentelemetry::global::get_text_map_propagator(|p| {
                    p.extract(&HeaderExtractor(req.headers()))
                });
                let _ = span.set_parent(cx);
            }
            let report = Arc::new(Mutex::new(Report::default()));
            let resp = REPORT
                .scope(report.clone(), inner.call(req))
                .instrument(span.clone())
                .await?;
            let status = resp.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_server_error() {
                span.record("otel.status_code", "ERROR");
            }
            if graphql {
                let report = std::mem::take(&mut *report.lock().unwrap());
                metrics.finish(report, started.elapsed().as_secs_f64(), status);
            }
            Ok(resp)
        })
    }
}

impl Metrics {
    fn finish(&self, report: Report, seconds: f64, status: StatusCode) {
        // No `begin`: the request was rejected before the handler read it (body too large,
        // not GraphQL).
        let rejected = report.operation.is_none();
        let outcome = if rejected || !report.codes.is_empty() || !status.is_success() {
            "error"
        } else {
            "ok"
        };
        let operation = report.operation.as_deref().unwrap_or("anonymous");
        self.duration
            .with_label_values(&[operation, outcome])
            .observe(seconds);
        for code in &report.codes {
            let code = if CODES.contains(&code.as_str()) {
                code.as_str()
            } else {
                UNCODED
            };
            self.errors.with_label_values(&[code]).inc();
        }
        if !rejected {
            self.statements.observe(report.statements as f64);
        }
        if let Some(answered) = report.direct {
            self.direct
                .with_label_values(&[if answered { "answered" } else { "fallback" }])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_found_without_parsing() {
        let cases = [
            (
                "query MonthView($id: ID!) { calendar(id: $id) { id } }",
                Some("MonthView"),
            ),
            ("{ me { id } }", None),
            ("query { me { id } }", None),
            (
                "mutation Create { createCalendar(name: \"a { b\") { id } }",
                Some("Create"),
            ),
            (
                "fragment F on User { id }\nquery Q { me { ...F } }",
                Some("Q"),
            ),
            ("# query Fake\nquery Real { me { id } }", Some("Real")),
            ("query A { me { id } } query B { me { id } }", None),
        ];
        for (query, name) in cases {
            assert_eq!(only_operation_name(query).as_deref(), name, "{query}");
        }
    }

    #[test]
    fn labels_are_bounded_names() {
        assert_eq!(operation_label(None), "anonymous");
        assert_eq!(operation_label(Some("MonthView")), "MonthView");
        assert_eq!(operation_label(Some("not a name")), "other");
        assert_eq!(operation_label(Some(&"x".repeat(65))), "other");
    }

    #[test]
    fn document_hash_is_sha256_hex() {
        assert_eq!(
            document_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
