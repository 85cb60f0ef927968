//! The HTTP surface: `POST /graphql` (and GraphiQL on `GET /graphql` in dev mode), `/health`
//! (liveness: the process answers) and `/ready` (the database answers).
//!
//! A `POST /graphql` goes through these steps ([`graphql_handler`]):
//! 1. who asks ([`Verifier`]) and what they asked for (the raw body, read under
//!    `max_body_bytes`: an oversized one is drained and answered 413 `PAYLOAD_TOO_LARGE`, see
//!    `body.rs`; its consistency token);
//!    Then the viewer's rate limit (`rate_limit.rs`: 429 `RATE_LIMITED`), before anything else;
//! 2. the whole-response caches, keyed by viewer and body bytes, before any parsing;
//! 3. parse the body, check the batch limit, attach the parsed document ([`Documents`]);
//! 4. execute every operation with a fresh [`RequestCtx`] (viewer, loaders, statement counter);
//! 5. keep the answer if it was built only from cached values, then add the consistency token
//!    and, with the `x-debug-stats` header, the request's figures in `extensions.stats`.
//!
//! Responses are compressed (gzip, br, zstd) when the client accepts it: bodies from the
//! response cache once per entry, others by tower-http's layer at its fastest setting.

mod observe;

use crate::ApiConfig;
use crate::auth::{Verifier, Viewer};
use crate::documents::Documents;
use crate::error::ApiError;
use crate::limits::{tag_limit_errors, too_complex};
use crate::response_cache::{self, Encoding, ResponseKey};
use crate::schema::{AppSchema, Direct, RequestCtx};
use crate::tiers::Tiers;
use async_graphql::http::GraphiQLSource;
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, BatchResponse, Response as GqlResponse};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cal_cache::{RequestStats, RequestStatsSnapshot};
use cal_storage::{Store, StoreStats};
use std::sync::Arc;
use tower_http::compression::{CompressionLayer, CompressionLevel};

/// Header that asks for per-request figures in `extensions.stats`.
pub const DEBUG_STATS_HEADER: &str = "x-debug-stats";

/// Header carrying a consistency token (a mutation's `extensions.consistencyToken`): the request
/// is answered only after this instance has applied the invalidation stream up to it (bounded
/// wait, then it reads past L1).
pub const CONSISTENCY_TOKEN_HEADER: &str = "x-consistency-token";

/// The media type of every GraphQL answer.
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";

/// Shared application context, cloned into every handler (one reference count: axum clones the
/// state for every request).
#[derive(Clone)]
pub struct AppState(Arc<AppContext>);

impl std::ops::Deref for AppState {
    type Target = AppContext;
    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppContext {
    pub schema: AppSchema,
    /// Writes through this store invalidate the cache tiers after they commit.
    pub store: Store,
    pub config: Arc<ApiConfig>,
    pub tiers: Arc<Tiers>,
    /// Prometheus registry holding the cache metrics (rendered on `/metrics`).
    pub registry: prometheus::Registry,
    pub verifier: Verifier,
    pub documents: Documents,
    /// Direct execution of plain queries (`None`: switched off by the configuration).
    pub direct: Option<Direct>,
    /// Per-viewer request limit on `POST /graphql` (`None`: off).
    rate_limiter: Option<crate::rate_limit::Limiter>,
    /// Requests refused by it (`cal_rate_limited_total`, registered whether or not it is on).
    rate_limited: prometheus::IntCounter,
}

impl AppState {
    /// Wires the store to the tiers (commits invalidate). The invalidator's relay and consumer
    /// are started by whoever runs the server ([`cal_sync::Invalidator::start`]).
    pub fn new(
        store: Store,
        config: ApiConfig,
        tiers: Arc<Tiers>,
        registry: prometheus::Registry,
    ) -> Self {
        let config = Arc::new(config);
        let store = store
            .with_change_sink(tiers.sync.clone())
            .with_origin(tiers.sync.origin());
        let rate_limiter = config.rate_limit.map(|limit| {
            tracing::info!(
                per_second = limit.per_second,
                burst = limit.burst,
                "per-viewer rate limit on POST /graphql"
            );
            crate::rate_limit::Limiter::new(&limit)
                .expect("the rate limit was validated with rate_limit::quota")
        });
        let rate_limited = prometheus::IntCounter::new(
            "cal_rate_limited_total",
            "POST /graphql requests refused with 429 by the per-viewer rate limit",
        )
        .expect("a valid metric");
        if let Err(e) = registry.register(Box::new(rate_limited.clone())) {
            tracing::warn!(error = %e, "cal_rate_limited_total not registered");
        }
        Self(Arc::new(AppContext {
            rate_limiter,
            rate_limited,
            schema: crate::build_schema(config.clone()),
            direct: config.direct_execution.then(|| Direct::new(&config)),
            store,
            verifier: Verifier::new(&config, &registry),
            config,
            tiers,
            registry,
            documents: Documents::default(),
        }))
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
        // Both POST routes read their bodies themselves (`body.rs`: a clean 413).
        .route("/admin/purge", axum::routing::post(crate::admin::purge))
        // A panicking handler answers 500 with a coded GraphQL error instead of dropping the
        // connection; it is logged and counted.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            PanicResponse::new(&state.registry),
        ))
        // Responses that are not already encoded (from the response cache) are compressed per
        // request, so at the fastest setting.
        .layer(CompressionLayer::new().quality(CompressionLevel::Fastest))
        .layer(observe::layer(&state))
        .with_state(state)
}

/// What a panicking handler answers: 500 with `INTERNAL_SERVER_ERROR` and no detail (the panic
/// message goes to the log only), counted in `cal_http_panics_total`.
#[derive(Clone)]
struct PanicResponse {
    panics: prometheus::IntCounter,
}

impl PanicResponse {
    fn new(registry: &prometheus::Registry) -> Self {
        let panics = prometheus::IntCounter::new(
            "cal_http_panics_total",
            "Requests whose handler panicked (answered 500)",
        )
        .expect("a valid metric");
        if let Err(e) = registry.register(Box::new(panics.clone())) {
            tracing::warn!(error = %e, "cal_http_panics_total not registered");
        }
        Self { panics }
    }
}

impl tower_http::catch_panic::ResponseForPanic for PanicResponse {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(
        &mut self,
        err: Box<dyn std::any::Any + Send + 'static>,
    ) -> axum::http::Response<Self::ResponseBody> {
        let detail = err
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        tracing::error!(panic = %detail, "a request handler panicked");
        self.panics.inc();
        let body = serde_json::json!({
            "errors": [{ "message": "internal error", "extensions": { "code": "INTERNAL_SERVER_ERROR" } }]
        });
        let mut r = (StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// A GraphQL answer that was not executed: a request error.
fn refused(status: StatusCode, err: async_graphql::ServerError) -> Response {
    let resp = GqlResponse::from_errors(vec![err]);
    crate::observe::errors(&resp);
    let body = serde_json::to_vec(&resp).expect("a response serializes");
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRAPHQL_RESPONSE),
    );
    r
}

/// A request error with `extensions.code`.
fn coded(code: &'static str, message: impl Into<String>) -> async_graphql::ServerError {
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    let mut e = async_graphql::ServerError::new(message, None);
    e.extensions = Some(extensions);
    e
}

/// 413 `PAYLOAD_TOO_LARGE`; with `Connection: close` when the body was not read to its end
/// (the connection cannot carry another request then).
pub(crate) fn too_large(limit: usize, drained: bool) -> Response {
    let mut r = refused(
        StatusCode::PAYLOAD_TOO_LARGE,
        coded(
            "PAYLOAD_TOO_LARGE",
            format!("the request body is larger than {limit} bytes (MAX_BODY_BYTES)"),
        ),
    );
    if !drained {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// 429 `RATE_LIMITED` with `Retry-After` when `viewer`'s bucket is empty (counted).
fn rate_limited(state: &AppState, viewer: Viewer) -> Option<Response> {
    let wait = state
        .rate_limiter
        .as_ref()?
        .check(crate::rate_limit::Key::from(viewer))
        .err()?;
    state.rate_limited.inc();
    let secs = crate::rate_limit::retry_after_secs(wait);
    let mut r = refused(
        StatusCode::TOO_MANY_REQUESTS,
        coded(
            "RATE_LIMITED",
            format!("too many requests: retry in {secs} s"),
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Some(r)
}

/// Who asks, and how.
struct Caller {
    viewer: Viewer,
    debug: bool,
    encoding: Option<Encoding>,
    /// Read past L1 (and the in-process response cache): a consistency token this instance
    /// has not applied yet.
    past_l1: bool,
}

impl Caller {
    /// The viewer a request's `Authorization` header names.
    async fn viewer(state: &AppState, headers: &HeaderMap) -> Viewer {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.verifier.viewer(auth).await
    }

    /// Reads the caller from the headers, waiting (bounded) for a presented consistency token.
    async fn read(state: &AppState, headers: &HeaderMap, viewer: Viewer) -> Result<Self, Response> {
        let mut caller = Caller {
            viewer,
            // Per-request figures tell whether something exists and whether others looked at
            // it recently: outside dev mode only an operator gets them.
            debug: headers.contains_key(DEBUG_STATS_HEADER)
                && (state.config.dev_mode
                    || crate::admin::is_operator(state.config.admin_token.as_ref(), headers)
                        .is_ok()),
            encoding: Encoding::negotiate(
                headers
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok()),
            ),
            past_l1: false,
        };
        // Read-your-writes across instances: wait until this instance has heard the writer's
        // invalidation; if it does not arrive in time, read past L1 (and the response cache).
        if let Some(token) = headers.get(CONSISTENCY_TOKEN_HEADER) {
            let positions = token
                .to_str()
                .map_err(|_| "not ASCII text".to_owned())
                .and_then(cal_sync::parse_token)
                .map_err(|e| {
                    let err = ApiError::bad_input(format!(
                        "invalid {CONSISTENCY_TOKEN_HEADER} header (expected partition:offset[,…]): {e}"
                    ));
                    refused(
                        StatusCode::OK,
                        async_graphql::Error::from(err).into_server_error(Default::default()),
                    )
                })?;
            let sync = &state.tiers.sync;
            caller.past_l1 = !sync
                .progress()
                .wait_applied(&positions, sync.config().token_wait)
                .await;
        }
        Ok(caller)
    }
}

/// Where a cacheable answer may be kept.
struct Keep {
    key: ResponseKey,
    /// The in-process response cache (L1 in use for this request).
    local: bool,
    /// The shared tier in Redis (L1 off, distrusted or bypassed).
    shared: bool,
}

async fn graphql_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match crate::body::read(&headers, body, state.config.max_body_bytes).await {
        crate::body::Read::Body(body) => body,
        crate::body::Read::TooLarge { drained } => {
            return too_large(state.config.max_body_bytes, drained);
        }
        crate::body::Read::Broken => {
            return refused(
                StatusCode::BAD_REQUEST,
                coded("BAD_USER_INPUT", "the request body could not be read"),
            );
        }
    };
    if state.tiers.failpoints().panic_in_handler
        && headers.get("x-failpoint").is_some_and(|v| v == "panic")
    {
        panic!("failpoint panic-in-handler");
    }
    // 1. Who asks, and whether they may ask now: the limit comes before the response cache.
    let viewer = Caller::viewer(&state, &headers).await;
    if let Some(refusal) = rate_limited(&state, viewer) {
        return refusal;
    }
    let caller = match Caller::read(&state, &headers, viewer).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let tiers = &state.tiers;

    // 2. The response caches, before anything is parsed. A batch (a JSON array) never is.
    let responses = tiers
        .responses
        .as_ref()
        .filter(|_| !caller.past_l1 && !tiers.cache.l1_distrusted());
    // With L1 in use, executing from L1 entries is what keeps the in-process cache filled, so
    // the shared tier stays out of the way; it serves when L1 cannot answer.
    let shared = tiers.cache.has_l2() && responses.is_none();
    let keep = ResponseKey::new(caller.viewer, &body)
        .filter(|_| body.first() != Some(&b'['))
        .map(|key| Keep {
            key,
            local: responses.is_some(),
            shared,
        });
    if let Some(keep) = &keep {
        if let Some(hit) = responses.and_then(|r| r.lookup(&keep.key, &tiers.cache)) {
            crate::observe::cached(&hit.operation);
            return cached_response(
                hit.body.clone(),
                caller.encoding.and_then(|e| Some((e, hit.encoded(e)?))),
                hit.dependencies(),
                caller.debug,
            );
        }
        if keep.shared
            && let Some((operation, body)) =
                response_cache::shared_lookup(&tiers.cache, &keep.key).await
        {
            crate::observe::cached(&operation);
            return cached_response(body, None, 0, caller.debug);
        }
    }

    // 3. Parse.
    let mut batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                async_graphql::ServerError::new(
                    format!("the request body is not a GraphQL request: {e}"),
                    None,
                ),
            );
        }
    };
    crate::observe::begin(&batch);
    if let BatchRequest::Batch(list) = &batch
        && list.len() > state.config.max_batch
    {
        return refused(
            StatusCode::OK,
            too_complex(format!(
                "a batch may hold at most {} operations (got {})",
                state.config.max_batch,
                list.len()
            )),
        );
    }
    let mut query_only = true;
    let mut document = None;
    for request in batch.iter_mut() {
        let doc = state.documents.attach(request);
        query_only &= doc
            .as_deref()
            .and_then(|d| crate::documents::operation_type(d, request.operation_name.as_deref()))
            == Some(OperationType::Query);
        document = doc;
    }

    // 4. Execute.
    let stats = Arc::new(StoreStats::with_budget(state.config.budget()));
    // Writes carry the request's trace context through their outbox rows to the bus, so an
    // invalidation applied on another instance links to this request in Jaeger.
    let mut store = state
        .store
        .with_request_stats(stats.clone())
        .with_trace_context(cal_sync::trace::current_context());
    // A query's reads share one connection. Not a mutation's: a writer holding a read connection
    // while it waits for a transaction's could exhaust the pool.
    if query_only {
        store = store.with_request_connection();
    }
    let cache_stats = Arc::new(RequestStats::default());
    if caller.past_l1 {
        cache_stats.bypass_l1();
    }
    let keep = keep.filter(|k| query_only && (k.local || k.shared));
    if let (Some(_), Some(responses)) = (&keep, responses) {
        responses.missed();
    }
    if keep.as_ref().is_some_and(|k| k.shared) {
        cache_stats.track_versions();
    }
    let request_ctx = || {
        Arc::new(RequestCtx::new(
            caller.viewer,
            store.clone(),
            state.config.clone(),
            state.tiers.clone(),
            cache_stats.clone(),
        ))
    };

    // A plain query is answered by direct execution where it applies.
    let mut direct_body = None;
    if let (BatchRequest::Single(req), Some(direct), true, Some(doc)) =
        (&mut batch, &state.direct, query_only, &document)
    {
        let ctx = request_ctx();
        direct_body = observe::execute_direct(req, &stats, direct.execute(&ctx, doc, req))
            .await
            .map(Bytes::from);
        store.release_connection().await;
        // The slow path reuses this request's loaders (and what they already loaded).
        if direct_body.is_none() {
            req.data.insert(ctx);
        }
    }
    if let Some(body) = direct_body {
        return finish_direct(&state, &caller, keep, responses, &stats, &cache_stats, body).await;
    }
    for request in batch.iter_mut() {
        if !request
            .data
            .contains_key(&std::any::TypeId::of::<Arc<RequestCtx>>())
        {
            request.data.insert(request_ctx());
        }
    }
    let mut resp = observe::execute(&state.schema, batch, &stats).await;
    store.release_connection().await;
    match &mut resp {
        BatchResponse::Single(r) => tag_limit_errors(r),
        BatchResponse::Batch(list) => list.iter_mut().for_each(tag_limit_errors),
    }

    // 5. Keep the answer if it was built only from cached values (no error, no SQL past the
    // cache, a query).
    if let (Some(keep), BatchResponse::Single(r)) = (&keep, &resp)
        && r.is_ok()
        && r.extensions.is_empty()
        && stats.uncached_statements() == 0
    {
        let body = Bytes::from(serde_json::to_vec(r).expect("a response serializes"));
        store_answer(&state, keep, responses, &cache_stats, &body).await;
        return answer(&caller, responses, &stats, &cache_stats, body);
    }

    // What the request cost, on every answer that is not a denial (how much a denied request
    // read would tell whether the thing exists).
    insert_unless_denied(&mut resp, "cost", &cost_value(&stats));
    let token = stats.commit_token();
    if let (Some(token), BatchResponse::Single(r)) = (&token, &mut resp) {
        r.extensions.insert(
            "consistencyToken".to_owned(),
            async_graphql::Value::from(token.as_str()),
        );
    }
    if caller.debug {
        let value = stats_value(&stats, &cache_stats.snapshot(), responses.map(|_| false));
        insert_unless_denied(&mut resp, "stats", &value);
    }
    let mut response = json_response(Bytes::from(
        serde_json::to_vec(&resp).expect("a response serializes"),
    ));
    if let Some(token) = token
        && let Ok(value) = HeaderValue::from_str(&token)
    {
        response
            .headers_mut()
            .insert(CONSISTENCY_TOKEN_HEADER, value);
    }
    response
}

/// The answer of a direct execution (`{"data":…}`: no errors, a query), kept like any other
/// answer built only from cached values.
async fn finish_direct(
    state: &AppState,
    caller: &Caller,
    keep: Option<Keep>,
    responses: Option<&response_cache::ResponseCache>,
    stats: &StoreStats,
    cache_stats: &RequestStats,
    body: Bytes,
) -> Response {
    if let Some(keep) = &keep
        && stats.uncached_statements() == 0
    {
        store_answer(state, keep, responses, cache_stats, &body).await;
    }
    answer(caller, responses, stats, cache_stats, body)
}

/// Keeps a cacheable answer in the response caches `keep` names.
async fn store_answer(
    state: &AppState,
    keep: &Keep,
    responses: Option<&response_cache::ResponseCache>,
    cache_stats: &RequestStats,
    body: &Bytes,
) {
    let operation = crate::observe::operation().unwrap_or_default();
    // A later hit costs nothing: that is what it reports.
    let body = &with_extensions(body, &[("cost", zero_cost())]);
    if keep.shared {
        response_cache::shared_store(
            &state.tiers.cache,
            &keep.key,
            &cache_stats.versions(),
            &operation,
            body,
        )
        .await;
    }
    if let (true, Some(responses), Some(deps)) = (keep.local, responses, cache_stats.deps()) {
        responses.store(keep.key.clone(), deps, operation, body.clone());
    }
}

/// A `{"data":…}` answer (never an error: those are not kept), with `extensions.cost` and,
/// when asked for, `extensions.stats`.
fn answer(
    caller: &Caller,
    responses: Option<&response_cache::ResponseCache>,
    stats: &StoreStats,
    cache_stats: &RequestStats,
    body: Bytes,
) -> Response {
    let cost = cost_value(stats);
    if caller.debug && !is_denied_body(&body) {
        let value = stats_value(stats, &cache_stats.snapshot(), responses.map(|_| false));
        return json_response(with_extensions(&body, &[("cost", cost), ("stats", value)]));
    }
    json_response(with_extensions(&body, &[("cost", cost)]))
}

/// What the request cost the database, under `extensions.cost`: statements, rows and loader
/// batches (no per-tier cache figures: those would tell of other viewers' activity).
fn cost_value(stats: &StoreStats) -> async_graphql::Value {
    cost(
        stats.statements(),
        stats.rows(),
        crate::observe::loader_batches(),
    )
}

fn cost(statements: u64, rows: u64, loader_batches: u64) -> async_graphql::Value {
    async_graphql::Value::from_json(serde_json::json!({
        "statements": statements,
        "rows": rows,
        "loaderBatches": loader_batches,
    }))
    .expect("a JSON object converts")
}

/// The cost of an answer from a response cache. A constant: it is also built inside a request
/// that ran loaders (when its answer is kept), whose own batches it must not report.
fn zero_cost() -> async_graphql::Value {
    cost(0, 0, 0)
}

/// Adds `name: value` to the extensions of every answer of `resp` that is not a denial.
fn insert_unless_denied(resp: &mut BatchResponse, name: &str, value: &async_graphql::Value) {
    let answers: Vec<&mut GqlResponse> = match resp {
        BatchResponse::Single(r) => vec![r],
        BatchResponse::Batch(list) => list.iter_mut().collect(),
    };
    for r in answers.into_iter().filter(|r| !is_denied(r)) {
        r.extensions.insert(name.to_owned(), value.clone());
    }
}

/// The tail that [`store_answer`] gives every kept body: `,"extensions":{"cost":{…zero…}}}`.
fn zero_cost_tail() -> &'static [u8] {
    static TAIL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAIL.get_or_init(|| {
        let body = with_extensions(&Bytes::from_static(b"{}"), &[("cost", zero_cost())]);
        [&b","[..], &body[1..]].concat()
    })
}

fn json_response(body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(GRAPHQL_RESPONSE),
    );
    r
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

/// Codes of answers that must carry no figures: how much a denied request read would tell
/// whether the thing exists, and whether someone else looked at it recently.
const DENIED: [&str; 2] = ["FORBIDDEN", "UNAUTHENTICATED"];

fn is_denied(resp: &GqlResponse) -> bool {
    resp.errors.iter().any(|e| {
        matches!(
            e.extensions.as_ref().and_then(|x| x.get("code")),
            Some(async_graphql::Value::String(code)) if DENIED.contains(&code.as_str())
        )
    })
}

/// The same for an answer already serialized (direct execution).
fn is_denied_body(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v["errors"].as_array().is_some_and(|errors| {
            errors.iter().any(|e| {
                e["extensions"]["code"]
                    .as_str()
                    .is_some_and(|c| DENIED.contains(&c))
            })
        })
    })
}

/// `body` (a response object without extensions, `{"data":…}`) with an `extensions` object of
/// `entries` spliced in before the closing brace; `body` unchanged if it is not such an object.
fn with_extensions(body: &Bytes, entries: &[(&str, async_graphql::Value)]) -> Bytes {
    let Some(inner) = body.strip_suffix(b"}").filter(|b| b.starts_with(b"{")) else {
        return body.clone();
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(inner);
    if inner.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(b"\"extensions\":{");
    for (i, (name, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, name).expect("a name serializes");
        out.push(b':');
        serde_json::to_writer(&mut out, value).expect("a value serializes");
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// A response-cache hit: the stored bytes (in `encoded`'s encoding when the client accepts one
/// and it could be made), plus `extensions.stats` when asked for (no SQL; `dependencies` keys
/// were checked).
fn cached_response(
    body: Bytes,
    encoded: Option<(Encoding, Bytes)>,
    dependencies: usize,
    debug: bool,
) -> Response {
    if debug {
        let snapshot = RequestStatsSnapshot {
            l1_hits: dependencies as u64,
            ..Default::default()
        };
        let stats = stats_value(&StoreStats::default(), &snapshot, Some(true));
        // Kept bodies end with their (zero) cost; the figures go beside it.
        let data = body
            .strip_suffix(zero_cost_tail())
            .map(|b| Bytes::from([b, &b"}"[..]].concat()))
            .unwrap_or(body);
        return json_response(with_extensions(
            &data,
            &[("cost", zero_cost()), ("stats", stats)],
        ));
    }
    match encoded {
        Some((encoding, bytes)) => {
            let mut r = json_response(bytes);
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(encoding.header()),
            );
            r.headers_mut()
                .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            r
        }
        None => json_response(body),
    }
}

/// Prometheus text: the cache tiers' counters plus the database statement totals.
async fn metrics(State(state): State<AppState>) -> Response {
    use prometheus::Encoder;
    if let Some(responses) = &state.tiers.responses {
        responses.weighted_size();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_spliced_into_a_data_object_and_nothing_else() {
        let stats = async_graphql::Value::from_json(serde_json::json!({ "l1Hits": 3 })).unwrap();
        let body = Bytes::from_static(br#"{"data":{"me":{"id":"1"}}}"#);
        let spliced = with_extensions(&body, &[("cost", zero_cost()), ("stats", stats.clone())]);
        let out: serde_json::Value = serde_json::from_slice(&spliced).unwrap();
        assert_eq!(out["data"]["me"]["id"], "1");
        assert_eq!(out["extensions"]["stats"]["l1Hits"], 3);
        assert_eq!(out["extensions"]["cost"]["statements"], 0);
        for odd in [&b""[..], b"}", b"[1]", b"{"] {
            let odd = Bytes::copy_from_slice(odd);
            assert_eq!(
                with_extensions(&odd, &[("stats", stats.clone())]),
                odd,
                "{odd:?}"
            );
        }
        let kept = with_extensions(&body, &[("cost", zero_cost())]);
        assert!(
            kept.ends_with(zero_cost_tail()),
            "kept bodies end with the zero cost"
        );
    }
}
