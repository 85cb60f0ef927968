//! The HTTP surface: `/graphql` (GET for queries, POST for everything; see `wire.rs` for the
//! protocol), `/health` (liveness: the process answers) and `/ready` (the database answers).
//!
//! A GraphQL request goes through these steps ([`graphql_post`], [`graphql_get`], then
//! [`serve`]):
//! 1. the media type of the answer (`Accept`: 406 when none fits), for a POST its content type
//!    (415) and the raw body, read under `max_body_bytes` (an oversized one is drained and
//!    answered 413 `PAYLOAD_TOO_LARGE`, see `body.rs`); who asks ([`Verifier`]), the viewer's
//!    rate limit (`rate_limit.rs`: 429 `RATE_LIMITED`), the consistency token;
//! 2. the whole-response caches, keyed by viewer and body bytes (or query string), before any
//!    parsing (`caching.rs`: which caches the request may use, the lookup, and at step 5 the
//!    store);
//! 3. decode the request strictly (`wire.rs`: 400 `BAD_REQUEST`), check the batch limit, resolve
//!    persisted queries (`persisted.rs`), attach the parsed document ([`Documents`]); a GET that
//!    is not a query is 405;
//! 4. execute every operation with a fresh [`RequestCtx`] (viewer, loaders, statement counter);
//! 5. keep the answer if it was built only from cached values, then add the consistency token
//!    and, with the `x-debug-stats` header, the request's figures in `extensions.stats`; a
//!    request error (nothing executed) has no `data` and, under
//!    `application/graphql-response+json`, status 400; a query's answer gets its `ETag`.
//!
//! Around the router: CORS (outermost: preflights end there), the observation layer, the
//! conditional layer (`conditional.rs`: tag per coding, 304, `Cache-Control`, `Vary`), then
//! compression (gzip, br, zstd) for bodies not already compressed by the response cache, which
//! compresses once per entry.

mod caching;
mod conditional;
mod observe;
pub mod wire;
mod ws;

use crate::ApiConfig;
use crate::auth::{Verifier, Viewer};
use crate::documents::Documents;
use crate::error::ApiError;
use crate::limits::{tag_limit_errors, too_complex};
use crate::persisted::PersistedQueries;
use crate::response_cache::{self, Encoding};
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
use caching::Caching;
use cal_cache::{RequestStats, RequestStatsSnapshot};
use cal_storage::{Store, StoreStats};
use std::sync::Arc;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use wire::Media;

/// Header that asks for per-request figures in `extensions.stats`.
pub const DEBUG_STATS_HEADER: &str = "x-debug-stats";

/// Header carrying a consistency token (a mutation's `extensions.consistencyToken`): the request
/// is answered only after this instance has applied the invalidation stream up to it (bounded
/// wait, then it reads past L1).
pub const CONSISTENCY_TOKEN_HEADER: &str = "x-consistency-token";

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
    /// Whole responses built only from L1 entries (present when L1 is on and the configured
    /// bound is not 0).
    pub responses: Option<response_cache::ResponseCache>,
    /// Prometheus registry holding the cache metrics (rendered on `/metrics`).
    pub registry: prometheus::Registry,
    pub verifier: Verifier,
    pub documents: Documents,
    /// Persisted queries (APQ or a safelist), by the configuration.
    pub persisted: PersistedQueries,
    /// Direct execution of plain queries (`None`: switched off by the configuration).
    pub direct: Option<Direct>,
    /// Per-viewer request limit on `/graphql` (`None`: off).
    rate_limiter: Option<crate::rate_limit::Limiter>,
    /// Requests refused by it (`cal_rate_limited_total`, registered whether or not it is on).
    rate_limited: prometheus::IntCounter,
    /// Subscriptions held per viewer (their limit spans connections).
    subscriptions: Arc<crate::schema::ViewerSubscriptions>,
    /// Cancelled when the server starts draining: every WebSocket connection closes.
    closing: tokio_util::sync::CancellationToken,
    /// The thread WebSocket connections are served on, and its pool (see [`crate::live`]).
    live: Arc<crate::live::LiveThread>,
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
                "per-viewer rate limit on /graphql"
            );
            crate::rate_limit::Limiter::new(&limit)
                .expect("the rate limit was validated with rate_limit::quota")
        });
        let rate_limited = prometheus::IntCounter::new(
            "cal_rate_limited_total",
            "GraphQL requests refused with 429 by the per-viewer rate limit",
        )
        .expect("a valid metric");
        if let Err(e) = registry.register(Box::new(rate_limited.clone())) {
            tracing::warn!(error = %e, "cal_rate_limited_total not registered");
        }
        let responses =
            response_cache::ResponseCache::beside(&tiers.cache, config.response_cache_bytes);
        let subscriptions = Arc::new(crate::schema::ViewerSubscriptions::new(&registry));
        let live = Arc::new(
            crate::live::LiveThread::start(&store, tiers.sync.config().thread_nice)
                .expect("starting the subscriptions' thread"),
        );
        Self(Arc::new(AppContext {
            live,
            responses,
            rate_limiter,
            rate_limited,
            schema: crate::build_schema(config.clone()),
            direct: config.direct_execution.then(|| Direct::new(&config)),
            store,
            verifier: Verifier::new(&config, &registry),
            persisted: PersistedQueries::new(config.persisted_queries.clone()),
            config,
            tiers,
            registry,
            documents: Documents::default(),
            subscriptions,
            closing: Default::default(),
        }))
    }

    /// Ends every subscription and closes every WebSocket connection (code 1001), now and for
    /// connections that open later: called when the server starts draining, since HTTP's
    /// graceful shutdown neither waits for nor ends upgraded connections.
    pub fn close_subscriptions(&self) {
        self.closing.cancel();
    }

    /// Subscriptions on this instance that have started and listen for changes.
    pub fn listening_subscriptions(&self) -> usize {
        self.subscriptions.listening()
    }
}

pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.cors_origins);
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
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
        // Outside compression: the entity tag names the coding, and a 304 drops the body before
        // it is compressed.
        .layer(axum::middleware::from_fn(conditional::layer))
        .layer(observe::layer(&state))
        // Outermost: a preflight is answered here, before anything else runs.
        .layer(cors)
        .with_state(state)
}

/// CORS for browsers on other origins: the configured ones (none by default), GET and POST, the
/// headers a GraphQL client sends, and the tag and consistency token readable by scripts.
/// Preflights (`OPTIONS`) are answered by the layer itself and cached by the browser for 10 min.
fn cors_layer(origins: &crate::config::CorsOrigins) -> tower_http::cors::CorsLayer {
    use crate::config::CorsOrigins;
    use axum::http::{HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::IF_NONE_MATCH,
            HeaderName::from_static(CONSISTENCY_TOKEN_HEADER),
            HeaderName::from_static("apollographql-client-name"),
            HeaderName::from_static("apollographql-client-version"),
        ])
        .expose_headers([
            header::ETAG,
            header::RETRY_AFTER,
            HeaderName::from_static(CONSISTENCY_TOKEN_HEADER),
        ])
        .max_age(std::time::Duration::from_secs(600))
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

/// A GraphQL answer that was not executed: a request error (`{"errors":[…]}`, no `data`).
fn refused(media: Media, status: StatusCode, err: async_graphql::ServerError) -> Response {
    let resp = GqlResponse::from_errors(vec![err]);
    crate::observe::errors(&resp);
    let mut r = (status, errors_only(&resp.errors)).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    r
}

/// `{"errors":[…]}`: an answer to a request that was not executed has no `data` entry.
fn errors_only(errors: &[async_graphql::ServerError]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "errors": errors })).expect("errors serialize")
}

/// A request error with `extensions.code`.
pub(crate) fn coded(code: &'static str, message: impl Into<String>) -> async_graphql::ServerError {
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    let mut e = async_graphql::ServerError::new(message, None);
    e.extensions = Some(extensions);
    e
}

/// 413 `PAYLOAD_TOO_LARGE`; with `Connection: close` when the body was not read to its end
/// (the connection cannot carry another request then).
pub(crate) fn too_large(media: Media, limit: usize, drained: bool) -> Response {
    let mut r = refused(
        media,
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
fn rate_limited(state: &AppState, media: Media, viewer: Viewer) -> Option<Response> {
    let wait = state
        .rate_limiter
        .as_ref()?
        .check(crate::rate_limit::Key::from(viewer))
        .err()?;
    state.rate_limited.inc();
    let secs = crate::rate_limit::retry_after_secs(wait);
    let mut r = refused(
        media,
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
    media: Media,
    debug: bool,
    encoding: Option<Encoding>,
    /// Read past L1 (and the in-process response cache): a consistency token this instance
    /// has not applied yet.
    past_l1: bool,
}

impl Caller {
    /// Step 1: who asks (the `Authorization` header), whether their rate limit lets them ask
    /// now, and how (debug figures, coding, a consistency token to wait for).
    async fn admit(state: &AppState, headers: &HeaderMap, media: Media) -> Result<Self, Response> {
        let viewer = Self::viewer(state, headers).await;
        if let Some(refusal) = rate_limited(state, media, viewer) {
            return Err(refusal);
        }
        Self::read(state, headers, media, viewer).await
    }

    /// The viewer a request's `Authorization` header names.
    async fn viewer(state: &AppState, headers: &HeaderMap) -> Viewer {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        state.verifier.viewer(auth).await
    }

    /// Reads the caller from the headers, waiting (bounded) for a presented consistency token.
    async fn read(
        state: &AppState,
        headers: &HeaderMap,
        media: Media,
        viewer: Viewer,
    ) -> Result<Self, Response> {
        let mut caller = Caller {
            viewer,
            media,
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
                        media,
                        media.request_error_status(),
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

/// A GraphQL request as it came over HTTP, before it is decoded.
enum Incoming {
    /// A POST body (a request object or a batch).
    Post(Bytes),
    /// A GET query string (one request; queries only).
    Get(String),
}

/// The media type the client accepts (`None`: nothing this endpoint writes).
fn negotiate(headers: &HeaderMap) -> Option<Media> {
    Media::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))
}

/// 406 `NOT_ACCEPTABLE`.
fn not_acceptable() -> Response {
    refused(
        Media::Json,
        StatusCode::NOT_ACCEPTABLE,
        coded(
            "NOT_ACCEPTABLE",
            "this endpoint answers application/graphql-response+json or application/json",
        ),
    )
}

/// `POST /graphql`: a JSON body (`Content-Type: application/json`).
async fn graphql_post(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let Some(media) = negotiate(&headers) else {
        return not_acceptable();
    };
    if !wire::json_content_type(&headers) {
        return refused(
            media,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            coded(
                "UNSUPPORTED_MEDIA_TYPE",
                "a POST body must be `Content-Type: application/json` (UTF-8)",
            ),
        );
    }
    let body = match crate::body::read(&headers, body, state.config.max_body_bytes).await {
        crate::body::Read::Body(body) => body,
        crate::body::Read::TooLarge { drained } => {
            return too_large(media, state.config.max_body_bytes, drained);
        }
        crate::body::Read::Broken => {
            return refused(
                media,
                StatusCode::BAD_REQUEST,
                wire::bad_request("the request body could not be read"),
            );
        }
    };
    serve(state, headers, media, Incoming::Post(body)).await
}

/// `GET /graphql?query=…&operationName=…&variables=…&extensions=…`: a query (a mutation answers
/// 405). In dev mode a browser asking for a page without a query gets GraphiQL.
async fn graphql_get(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    if ws::is_upgrade(&parts) {
        return ws::upgrade(state, parts).await;
    }
    let headers = parts.headers;
    let raw = parts.uri.query().unwrap_or_default().to_owned();
    let names_a_request = raw
        .split('&')
        .any(|p| p.starts_with("query=") || p.starts_with("extensions="));
    if state.config.dev_mode && !names_a_request && wire::wants_html(&headers) {
        return graphiql().await.into_response();
    }
    let Some(media) = negotiate(&headers) else {
        return not_acceptable();
    };
    serve(state, headers, media, Incoming::Get(raw)).await
}

/// 405 for an operation other than a query over GET.
fn post_only(media: Media) -> Response {
    let mut r = refused(
        media,
        StatusCode::METHOD_NOT_ALLOWED,
        coded(
            "METHOD_NOT_ALLOWED",
            "only queries may be sent with GET; send mutations with POST",
        ),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

async fn serve(state: AppState, headers: HeaderMap, media: Media, incoming: Incoming) -> Response {
    if state.config.failpoints.panic_in_handler
        && headers.get("x-failpoint").is_some_and(|v| v == "panic")
    {
        panic!("failpoint panic-in-handler");
    }
    // 1. Who asks, and whether they may ask now: the limit comes before the response cache.
    let caller = match Caller::admit(&state, &headers, media).await {
        Ok(c) => c,
        Err(refusal) => return refusal,
    };
    // 2. The response caches, before anything is parsed.
    let caching = Caching::plan(&state.tiers, state.responses.as_ref(), &caller, &incoming);
    if let Some(hit) = caching.lookup(&state.tiers.cache, &caller).await {
        return hit;
    }
    // 3. Decode and parse.
    let prepared = match prepare(&state, media, &incoming).await {
        Ok(p) => p,
        Err(refusal) => return refusal,
    };
    // 4. and 5. Execute, keep what may be kept, answer.
    execute(&state, &caller, caching, prepared).await
}

/// A decoded request, ready to execute.
struct Prepared {
    batch: BatchRequest,
    /// The parsed document of the (last) operation.
    document: Option<Arc<async_graphql::parser::types::ExecutableDocument>>,
    /// Every operation is a query.
    query_only: bool,
}

/// Step 3: decodes the request strictly, checks the batch limit, resolves persisted queries and
/// attaches the parsed documents; refuses a GET that is not a query.
async fn prepare(
    state: &AppState,
    media: Media,
    incoming: &Incoming,
) -> Result<Prepared, Response> {
    let tiers = &state.tiers;
    let get = matches!(incoming, Incoming::Get(_));
    let decoded = match incoming {
        Incoming::Post(body) => wire::decode_body(body),
        Incoming::Get(raw) => wire::decode_query_string(raw).map(BatchRequest::Single),
    };
    let mut batch = decoded.map_err(|e| refused(media, StatusCode::BAD_REQUEST, e))?;
    crate::observe::begin(&batch);
    if let BatchRequest::Batch(list) = &batch
        && list.len() > state.config.max_batch
    {
        return Err(refused(
            media,
            media.request_error_status(),
            too_complex(format!(
                "a batch may hold at most {} operations (got {})",
                state.config.max_batch,
                list.len()
            )),
        ));
    }
    let mut query_only = true;
    let mut document = None;
    // (Not `batch.iter_mut()`: that iterator is not `Send`, and this loop awaits.)
    let requests: Vec<&mut async_graphql::Request> = match &mut batch {
        BatchRequest::Single(r) => vec![r],
        BatchRequest::Batch(list) => list.iter_mut().collect(),
    };
    for request in requests {
        // Persisted queries: the document named by its hash, or checked against it.
        let registration = state
            .persisted
            .resolve(&tiers.cache, request)
            .await
            .map_err(|e| refused(media, media.request_error_status(), e))?;
        let doc = state.documents.attach(request);
        if let (Some(registration), Some(_)) = (registration, &doc) {
            state.persisted.register(&tiers.cache, registration).await;
        }
        let kind = doc
            .as_deref()
            .and_then(|d| crate::documents::operation_type(d, request.operation_name.as_deref()));
        if get && kind.is_some_and(|k| k != OperationType::Query) {
            return Err(post_only(media));
        }
        query_only &= kind == Some(OperationType::Query);
        document = doc;
    }
    Ok(Prepared {
        batch,
        document,
        query_only,
    })
}

/// Steps 4 and 5: executes every operation (a plain query directly where it applies), keeps an
/// answer built only from cached values, and writes the answer with its figures and token.
async fn execute(
    state: &AppState,
    caller: &Caller,
    caching: Caching<'_>,
    prepared: Prepared,
) -> Response {
    let Prepared {
        mut batch,
        document,
        query_only,
    } = prepared;
    let media = caller.media;
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
    let caching = caching.executing(query_only, &cache_stats);
    let responses = caching.responses();
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
        if stats.uncached_statements() == 0 {
            caching.store(&state.tiers.cache, &cache_stats, &body).await;
        }
        return answer(caller, responses, &stats, &cache_stats, body);
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

    // Keep the answer if it was built only from cached values (no error, no SQL past the cache,
    // a query).
    if let (true, BatchResponse::Single(r)) = (caching.keeps(), &resp)
        && r.is_ok()
        && r.extensions.is_empty()
        && stats.uncached_statements() == 0
    {
        let body = Bytes::from(serde_json::to_vec(r).expect("a response serializes"));
        caching.store(&state.tiers.cache, &cache_stats, &body).await;
        return answer(caller, responses, &stats, &cache_stats, body);
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
    let mut response = match resp {
        BatchResponse::Single(r) => single_response(media, query_only, r),
        batch => json_response(
            media,
            Bytes::from(serde_json::to_vec(&batch).expect("a response serializes")),
        ),
    };
    if let Some(token) = token
        && let Ok(value) = HeaderValue::from_str(&token)
    {
        response
            .headers_mut()
            .insert(CONSISTENCY_TOKEN_HEADER, value);
    }
    response
}

/// Whether an executed answer is a request error: nothing was executed (the document did not
/// parse or validate, the variables did not coerce), so there is no `data` and no error has a
/// path.
fn is_request_error(r: &GqlResponse) -> bool {
    r.data == async_graphql::Value::Null
        && !r.errors.is_empty()
        && r.errors.iter().all(|e| e.path.is_empty())
}

/// One executed answer: a request error without `data` (4xx under
/// `application/graphql-response+json`), or a result (200; a query's with its `ETag`).
fn single_response(media: Media, query: bool, mut r: GqlResponse) -> Response {
    // The tag covers the bytes before `extensions`: serialize without them, then splice them in.
    let extensions = std::mem::take(&mut r.extensions);
    let entries: Vec<(&str, async_graphql::Value)> = extensions
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let splice = |head: Vec<u8>| {
        let head = Bytes::from(head);
        if entries.is_empty() {
            head
        } else {
            with_extensions(&head, &entries)
        }
    };
    if is_request_error(&r) {
        let mut resp = json_response(media, splice(errors_only(&r.errors)));
        *resp.status_mut() = media.request_error_status();
        return resp;
    }
    let head = serde_json::to_vec(&r).expect("a response serializes");
    let tag = query.then(|| conditional::etag(media, &head, b""));
    let mut resp = json_response(media, splice(head));
    if let Some(tag) = tag {
        resp.headers_mut().insert(header::ETAG, tag);
    }
    resp
}

/// The tag of a kept body: the bytes before its (zero) cost, closed.
fn kept_etag(media: Media, body: &Bytes) -> HeaderValue {
    match body.strip_suffix(zero_cost_tail()) {
        Some(head) => conditional::etag(media, head, b"}"),
        None => conditional::etag(media, body, b""),
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
    let tag = conditional::etag(caller.media, &body, b"");
    let mut r = if caller.debug && !is_denied_body(&body) {
        let value = stats_value(stats, &cache_stats.snapshot(), responses.map(|_| false));
        json_response(
            caller.media,
            with_extensions(&body, &[("cost", cost), ("stats", value)]),
        )
    } else {
        json_response(caller.media, with_extensions(&body, &[("cost", cost)]))
    };
    r.headers_mut().insert(header::ETAG, tag);
    r
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

fn json_response(media: Media, body: Bytes) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
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
    media: Media,
    tag: HeaderValue,
    body: Bytes,
    encoded: Option<(Encoding, Bytes)>,
    dependencies: usize,
    debug: bool,
) -> Response {
    let mut r = cached_body(media, body, encoded, dependencies, debug);
    r.headers_mut().insert(header::ETAG, tag);
    r
}

fn cached_body(
    media: Media,
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
        return json_response(
            media,
            with_extensions(&data, &[("cost", zero_cost()), ("stats", stats)]),
        );
    }
    match encoded {
        Some((encoding, bytes)) => {
            let mut r = json_response(media, bytes);
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(encoding.header()),
            );
            r
        }
        None => json_response(media, body),
    }
}

/// Prometheus text: the cache tiers' counters plus the database statement totals.
async fn metrics(State(state): State<AppState>) -> Response {
    use prometheus::Encoder;
    if let Some(responses) = &state.responses {
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
