//! The HTTP surface: `POST /graphql` (and GraphiQL on `GET /graphql` in dev mode), `/health`
//! (liveness: the process answers) and `/ready` (the database answers).
//!
//! Per request this layer authenticates the bearer token, builds a fresh [`RequestCtx`] (viewer,
//! loaders, statement counter) for every operation, enforces the body and batch limits, and, when
//! the `x-debug-stats` header is present, reports the request's SQL figures in `extensions.stats`.

use crate::ApiConfig;
use crate::auth::viewer_from_header;
use crate::error::ApiError;
use crate::limits::{tag_limit_errors, too_complex};
use crate::response_cache::{self, Asked};
use crate::schema::{AppSchema, RequestCtx};
use crate::tiers::Tiers;
use crate::tiers::parse_token;
use async_graphql::http::GraphiQLSource;
use async_graphql::{BatchRequest, BatchResponse, Response as GqlResponse};
use async_graphql_axum::{GraphQLBatchRequest, GraphQLResponse};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cal_cache::{RequestStats, RequestStatsSnapshot};
use cal_storage::{Store, StoreStats};
use std::sync::Arc;
use tower_http::limit::RequestBodyLimitLayer;

/// Header that asks for per-request figures in `extensions.stats`.
pub const DEBUG_STATS_HEADER: &str = "x-debug-stats";

/// Header carrying a consistency token (a mutation's `extensions.consistencyToken`): the request
/// is answered only after this instance has applied the invalidation stream up to it (bounded
/// wait, then it reads past L1).
pub const CONSISTENCY_TOKEN_HEADER: &str = "x-consistency-token";

/// Shared application context, cloned into every handler.
#[derive(Clone)]
pub struct AppState {
    pub schema: AppSchema,
    /// Writes through this store invalidate the cache tiers after they commit.
    pub store: Store,
    pub config: Arc<ApiConfig>,
    pub tiers: Arc<Tiers>,
    /// Prometheus registry holding the cache metrics (rendered on `/metrics`).
    pub registry: prometheus::Registry,
}

impl AppState {
    /// Wires the store to the tiers (commits invalidate) and starts applying other instances'
    /// invalidations from the bus.
    pub fn new(
        store: Store,
        config: ApiConfig,
        tiers: Arc<Tiers>,
        registry: prometheus::Registry,
    ) -> Self {
        let config = Arc::new(config);
        let store = store
            .with_change_sink(tiers.clone())
            .with_origin(tiers.origin());
        tiers.spawn_consumer();
        tiers.start_relay(store.clone());
        Self {
            schema: crate::build_schema(config.clone()),
            store,
            config,
            tiers,
            registry,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let graphql = if state.config.dev_mode {
        get(graphiql).post(graphql_handler)
    } else {
        axum::routing::post(graphql_handler)
    };
    Router::new()
        .route("/graphql", graphql)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        // The GraphQL extractor streams the body itself, so axum's DefaultBodyLimit would not
        // apply; this layer caps the body for every route and answers 413.
        .layer(RequestBodyLimitLayer::new(state.config.max_body_bytes))
        .layer(crate::observe::layer(&state))
        .with_state(state)
}

async fn graphql_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: GraphQLBatchRequest,
) -> Response {
    let mut batch = req.into_inner();
    crate::observe::begin(&batch);
    if let BatchRequest::Batch(list) = &batch
        && list.len() > state.config.max_batch
    {
        let mut resp = GqlResponse::from_errors(vec![too_complex(format!(
            "a batch may hold at most {} operations (got {})",
            state.config.max_batch,
            list.len()
        ))]);
        resp.extensions.clear();
        crate::observe::errors(&resp);
        return GraphQLResponse(BatchResponse::Single(resp)).into_response();
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let viewer = viewer_from_header(&state.config.jwt_secret, auth);
    let debug = headers.contains_key(DEBUG_STATS_HEADER);

    // Read-your-writes across instances: wait until this instance has heard the writer's
    // invalidation; if it does not arrive in time, read past L1 (and the response cache).
    let mut past_l1 = false;
    if let Some(token) = headers.get(CONSISTENCY_TOKEN_HEADER) {
        let positions = token
            .to_str()
            .map_err(|_| "not ASCII text".to_owned())
            .and_then(parse_token);
        match positions {
            Ok(positions) => {
                past_l1 = !state
                    .tiers
                    .stream
                    .wait_applied(&positions, state.tiers.stream_config.token_wait)
                    .await;
            }
            Err(e) => {
                let err = ApiError::bad_input(format!(
                    "invalid {CONSISTENCY_TOKEN_HEADER} header (expected partition:offset[,…]): {e}"
                ));
                let resp = GqlResponse::from_errors(vec![
                    async_graphql::Error::from(err).into_server_error(Default::default()),
                ]);
                crate::observe::errors(&resp);
                return GraphQLResponse(BatchResponse::Single(resp)).into_response();
            }
        }
    }

    // A single read-only operation may be answered whole from the response cache.
    let responses = state.tiers.responses.as_ref().filter(|_| !past_l1);
    let asked = match &batch {
        BatchRequest::Single(req) => Asked::of(viewer, req),
        BatchRequest::Batch(_) => None,
    };
    if let (Some(asked), Some(responses)) = (&asked, responses)
        && let Some(hit) = responses.lookup(asked, &state.tiers.cache).await
    {
        return cached_response(&hit.headers, &hit.body, hit.dependencies(), debug);
    }
    // The shared tier, for when L1 cannot answer: L1 off, distrusted (stream behind) or
    // bypassed (a consistency token not yet applied). Redis is tombstoned before any write is
    // acknowledged, so it needs no stream position. With L1 in use, executing from L1 entries
    // is what keeps the L1 response cache filled, so the shared tier stays out of the way.
    let shared =
        state.tiers.cache.has_l2() && (responses.is_none() || state.tiers.cache.l1_distrusted());
    if let (Some(asked), true) = (&asked, shared)
        && let Some(body) = response_cache::shared_lookup(&state.tiers.cache, asked).await
    {
        return cached_response(&response_cache::json_headers(), &body, 0, debug);
    }

    let stats = Arc::new(StoreStats::default());
    // Writes carry the request's trace context through their outbox rows to the bus, so an
    // invalidation applied on another instance links to this request in Jaeger.
    let store = state
        .store
        .with_request_stats(stats.clone())
        .with_trace_context(crate::observe::trace_context());
    let cache_stats = Arc::new(RequestStats::default());
    if past_l1 {
        cache_stats.bypass_l1();
    }
    for request in batch.iter_mut() {
        request.data.insert(RequestCtx::new(
            viewer,
            store.clone(),
            state.config.clone(),
            state.tiers.clone(),
            cache_stats.clone(),
        ));
    }
    let mut resp = crate::observe::execute(&state.schema, batch, &stats).await;
    match &mut resp {
        BatchResponse::Single(r) => tag_limit_errors(r),
        BatchResponse::Batch(list) => list.iter_mut().for_each(tag_limit_errors),
    }

    // Store the answer if it was built only from cached values (no error, no SQL past the
    // cache, a query): beside L1 when every value came from an L1 entry, and in Redis with the
    // versions of every value it was built from.
    if let (Some(asked), BatchResponse::Single(r)) = (asked, &resp)
        && r.is_ok()
        && r.extensions.is_empty()
        && stats.uncached_statements() == 0
        && asked.is_query()
        && (responses.is_some() || shared)
    {
        let (parts, body) = GraphQLResponse(resp).into_response().into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("a response built in memory can be read back");
        if shared {
            response_cache::shared_store(
                &state.tiers.cache,
                &asked,
                &cache_stats.versions(),
                &body,
            )
            .await;
        }
        if let (Some(responses), Some(deps)) = (responses, cache_stats.deps()) {
            responses
                .store(asked, deps, parts.headers.clone(), body.clone())
                .await;
        }
        if !debug {
            return Response::from_parts(parts, axum::body::Body::from(body));
        }
        // With the debug header, answer with the figures added (rare: load tests and tests).
        resp = BatchResponse::Single(
            serde_json::from_slice(&body).expect("a response serialized here parses back"),
        );
    }
    let token = stats.commit_token();
    if let (Some(token), BatchResponse::Single(r)) = (&token, &mut resp) {
        r.extensions.insert(
            "consistencyToken".to_owned(),
            async_graphql::Value::from(token.as_str()),
        );
    }
    if debug {
        let value = stats_value(&stats, &cache_stats.snapshot(), responses.map(|_| false));
        match &mut resp {
            BatchResponse::Single(r) => {
                r.extensions.insert("stats".to_owned(), value);
            }
            BatchResponse::Batch(list) => {
                for r in list {
                    r.extensions.insert("stats".to_owned(), value.clone());
                }
            }
        }
    }
    let mut response = GraphQLResponse(resp).into_response();
    if let Some(token) = token
        && let Ok(value) = axum::http::HeaderValue::from_str(&token)
    {
        response
            .headers_mut()
            .insert(CONSISTENCY_TOKEN_HEADER, value);
    }
    response
}

/// The per-request figures reported under `extensions.stats`.
fn stats_value(
    stats: &StoreStats,
    c: &RequestStatsSnapshot,
    response_cache_hit: Option<bool>,
) -> async_graphql::Value {
    let mut v = serde_json::json!({
        "sqlStatements": stats.statements(),
        "sqlRows": stats.rows(),
        "l1Hits": c.l1_hits,
        "l2Hits": c.l2_hits,
        "cacheMisses": c.misses,
        "cacheLoaded": c.loaded,
        "cacheCoalesced": c.coalesced,
        "loaderBatches": crate::observe::loader_batches(),
    });
    if let Some(hit) = response_cache_hit {
        v["responseCacheHit"] = hit.into();
    }
    async_graphql::Value::from_json(v).expect("a JSON object converts")
}

/// A response-cache hit: the stored bytes, plus `extensions.stats` when asked for (no SQL; from
/// L1, `dependencies` entries were checked).
fn cached_response(
    headers: &HeaderMap,
    stored: &[u8],
    dependencies: usize,
    debug: bool,
) -> Response {
    let body = if debug {
        let snapshot = RequestStatsSnapshot {
            l1_hits: dependencies as u64,
            ..Default::default()
        };
        let stats =
            serde_json::to_string(&stats_value(&StoreStats::default(), &snapshot, Some(true)))
                .expect("stats serialize");
        // Stored bodies are exactly `{"data":…}`: splice the extensions in before the last brace.
        let mut body = stored[..stored.len() - 1].to_vec();
        body.extend_from_slice(b",\"extensions\":{\"stats\":");
        body.extend_from_slice(stats.as_bytes());
        body.extend_from_slice(b"}}");
        axum::body::Body::from(body)
    } else {
        axum::body::Body::from(stored.to_vec())
    };
    let mut resp = Response::new(body);
    *resp.headers_mut() = headers.clone();
    resp
}

/// Prometheus text: the cache tiers' counters plus the database statement totals.
async fn metrics(State(state): State<AppState>) -> Response {
    use prometheus::Encoder;
    let mut body = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode(&state.registry.gather(), &mut body) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    let db = state.store.stats();
    body.extend_from_slice(
        format!(
            "# HELP cal_sql_statements_total SQL statements sent to PostgreSQL.\n# TYPE cal_sql_statements_total counter\ncal_sql_statements_total {}\n\
             # HELP cal_sql_rows_total Rows returned by PostgreSQL.\n# TYPE cal_sql_rows_total counter\ncal_sql_rows_total {}\n",
            db.statements(),
            db.rows()
        )
        .as_bytes(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn graphiql() -> Html<String> {
    Html(GraphiQLSource::build().endpoint("/graphql").finish())
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(serde_json::json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "database unavailable" })),
            )
                .into_response()
        }
    }
}
