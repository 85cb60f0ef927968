//! The observation layer around the router: the HTTP span, the operation execution hooks and the
//! request metrics, from the per-request report of [`crate::observe`].
//!
//! [`layer`] wraps the router. For every request it opens an `http.request` span (info level for
//! `/graphql`, debug for the other routes), whose parent is the caller's span when the request
//! carries a W3C `traceparent` header (through the global text-map propagator, which the binary
//! sets when it exports traces). For `/graphql` it then records, once the response is ready:
//!
//! - `cal_graphql_request_duration_seconds{operation, outcome}`: `operation` is the operation
//!   name, `anonymous` when the request names none, `batch` for a batch (names are client input:
//!   only valid GraphQL names of at most 64 characters, and at most [`crate::observe::MAX_OPERATIONS`] distinct
//!   ones, become labels; the rest are `other`); `outcome` is `error` when any operation answered
//!   an error (or the request was rejected before it was read), `ok` otherwise;
//! - `cal_graphql_errors_total{code}`, one per error, by `extensions.code`
//!   ([`crate::observe::UNCODED`] for an error that has none; every error the API answers has one);
//! - `cal_db_statements_per_request`: the request's SQL statements (0 for answers from the
//!   whole-response cache).
//!
//! The GraphQL handler runs operations through [`execute`] and [`execute_direct`] and reports
//! through the hooks of [`crate::observe`]; this layer reads the request's report when the
//! response is ready.
//!
//! The same registry also gets the database figures, read at scrape time: the pool gauges
//! `cal_db_pool_connections`, `cal_db_pool_idle_connections`, `cal_db_pool_max_connections` and
//! `cal_db_slow_statements_total{statement}` (see `cal_storage`'s statement observation).
//!
//! Nothing here records headers, variables or the query text: operations are identified by name
//! and by the SHA-256 of their query text (`graphql.document.hash`).

use crate::AppState;
use crate::observe::{CODES, REPORT, Report, UNCODED, error_codes, operation_span, with_report};
use crate::schema::AppSchema;
use async_graphql::{BatchRequest, BatchResponse, Response as GqlResponse};
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::Response;
use cal_storage::{PgPool, StoreStats};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use opentelemetry::propagation::Extractor;
use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
                    "GraphQL requests (GET and POST /graphql) from the first byte in to the response, by operation and outcome",
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

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
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
            let get = req.method() == Method::GET;
            let graphql = (get || req.method() == Method::POST) && req.uri().path() == "/graphql";
            let span = if graphql {
                tracing::info_span!(
                    "http.request",
                    otel.name = if get { "GET /graphql" } else { "POST /graphql" },
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = if get { "GET" } else { "POST" },
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
        // A 304 is a success: the client's copy is current.
        let failed = !status.is_success() && status != StatusCode::NOT_MODIFIED;
        let outcome = if rejected || !report.codes.is_empty() || failed {
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
