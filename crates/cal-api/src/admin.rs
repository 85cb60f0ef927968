//! Operator endpoints, authenticated by a configured secret (`ApiConfig::admin_token`) in the
//! `x-admin-token` header. Without a configured secret they answer 403 to everyone.
//!
//! `POST /admin/purge` with one of `{"calendar": ID}`, `{"event": ID}`, `{"user": ID}`,
//! `{"resource": ID}` or `{"all": true}` purges those cached copies everywhere, through the
//! change log (see [`cal_storage::PurgeScope`]): the answer is
//! `{"outboxId": N, "facts": N, "consistencyToken": "p:o" | null}` once this instance has dropped
//! them and its relay has written the Redis tombstones and published the row. Errors carry the
//! usual `errors[].extensions.code`: UNAUTHENTICATED (401), FORBIDDEN (403), BAD_USER_INPUT
//! (400), NOT_FOUND (404).

use crate::error::ApiError;
use crate::http::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cal_storage::PurgeScope;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The header carrying the operator secret.
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    calendar: Option<i64>,
    event: Option<i64>,
    user: Option<i64>,
    resource: Option<i64>,
    #[serde(default)]
    all: bool,
}

impl PurgeRequest {
    fn scope(&self) -> Result<PurgeScope, String> {
        PurgeScope::named(
            self.calendar,
            self.event,
            self.user,
            self.resource,
            self.all,
        )
    }
}

/// Whether `headers` carry the configured operator secret (compared in constant time over
/// digests, so neither its content nor its length leaks through timing).
pub fn is_operator(configured: Option<&SecretString>, headers: &HeaderMap) -> Result<(), ApiError> {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(secret) = configured else {
        return Err(ApiError::Forbidden);
    };
    let Some(given) = headers.get(ADMIN_TOKEN_HEADER) else {
        return Err(ApiError::Unauthenticated);
    };
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(secret.expose_secret().as_bytes());
    if bool::from(a.ct_eq(&b)) {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated)
    }
}

fn error(e: ApiError) -> Response {
    let status = match &e {
        ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden => StatusCode::FORBIDDEN,
        ApiError::BadInput(_) => StatusCode::BAD_REQUEST,
        ApiError::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = match &e {
        ApiError::Forbidden => {
            "the admin endpoints are disabled: no ADMIN_TOKEN is configured".into()
        }
        ApiError::Unauthenticated => format!("a valid {ADMIN_TOKEN_HEADER} header is required"),
        _ => e.message(),
    };
    (
        status,
        Json(json!({ "errors": [{ "message": message, "extensions": { "code": e.code() } }] })),
    )
        .into_response()
}

/// `POST /admin/purge`.
pub async fn purge(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let limit = state.config.max_body_bytes;
    let body = match crate::body::read(&headers, body, limit).await {
        crate::body::Read::Body(body) => body,
        crate::body::Read::TooLarge { drained } => {
            return crate::http::too_large(crate::http::wire::Media::Json, limit, drained);
        }
        crate::body::Read::Broken => {
            return error(ApiError::BadInput(
                "the request body could not be read".into(),
            ));
        }
    };
    if let Err(e) = is_operator(state.config.admin_token.as_ref(), &headers) {
        return error(e);
    }
    let scope = match serde_json::from_slice::<PurgeRequest>(&body)
        .map_err(|e| format!("expected a JSON object naming what to purge: {e}"))
        .and_then(|r| r.scope())
    {
        Ok(scope) => scope,
        Err(msg) => return error(ApiError::BadInput(msg)),
    };
    let stats = Arc::new(cal_storage::StoreStats::default());
    let store = state.store.with_request_stats(stats.clone());
    match store.purge(scope).await {
        Ok(purged) => {
            tracing::warn!(
                ?scope,
                outbox_id = purged.outbox_id,
                facts = purged.facts,
                "operator purge"
            );
            Json(json!({
                "outboxId": purged.outbox_id,
                "facts": purged.facts,
                "consistencyToken": stats.commit_token(),
            }))
            .into_response()
        }
        Err(e) => error(ApiError::from(e)),
    }
}
