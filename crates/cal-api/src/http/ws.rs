//! GraphQL over WebSocket at `/graphql` (a GET with `Upgrade: websocket`): the
//! `graphql-transport-ws` protocol (the `graphql-ws` library's) and the older
//! `graphql-ws`/subscriptions-transport one, as async-graphql-axum speaks them.
//!
//! - **Authentication**: the client's `connection_init` payload carries the same bearer token
//!   as HTTP requests, as `{"Authorization": "Bearer <jwt>"}` (any case of the key) or
//!   `{"token": "<jwt>"}`; without a valid one the connection is closed (code 1002, the reason saying so).
//! - **Keepalive**: the server answers the client's pings with pongs, and closes a connection
//!   that has sent nothing for [`IDLE_TIMEOUT`] with 3008 (a `graphql-ws` client pings every
//!   `keepAlive` milliseconds).
//! - **Size**: a client message over `MAX_BODY_BYTES` closes the connection with 1009 (and a
//!   frame that is not WebSocket with 1002), the reason saying so.
//! - **Shutdown**: when the server starts draining ([`AppState::close_subscriptions`]), every
//!   subscription ends and the socket is closed with 1001 (going away), so clients reconnect to
//!   another instance instead of holding a connection the server waits for.

use super::AppState;
use crate::auth::Viewer;
use crate::schema::{Connection, RequestCtx};
use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade, close_code};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use cal_cache::RequestStats;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// A connection that sends nothing (not even a ping) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket's read buffer. Clients send small messages (`subscribe`, `ping`); the library's
/// default of 128 KiB, held by every idle connection, was most of a connection's memory.
const READ_BUFFER: usize = 4 * 1024;

/// Whether a GET asks to become a WebSocket.
pub(super) fn is_upgrade(parts: &Parts) -> bool {
    parts
        .headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Upgrades the request and serves GraphQL over the socket ([`serve`]).
pub(super) async fn upgrade(state: AppState, mut parts: Parts) -> Response {
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &state).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    // A client's message is held to the limit of an HTTP body.
    let max_message = state.config.max_body_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            // Served on the subscriptions' thread (see `crate::live`), not on the request
            // runtime: a change's message is read, resolved and written there.
            let live = state.live.clone();
            live.spawn(serve(state, socket, protocol, max_message));
        })
}

/// Serves GraphQL over an upgraded socket until either side ends it.
async fn serve(
    state: AppState,
    socket: axum::extract::ws::WebSocket,
    protocol: GraphQLProtocol,
    max_message: usize,
) {
    let closing = state.closing.clone();
    let (mut sink, stream) = socket.split();
    // The first read error ends the connection (async-graphql-axum stops there): its
    // close frame goes out once serving has stopped.
    let refusal = Arc::new(std::sync::OnceLock::new());
    let input = stream
        .take_until(closing.clone().cancelled_owned())
        .inspect({
            let refusal = refusal.clone();
            move |message| {
                if let Err(e) = message {
                    refusal.get_or_init(|| refusal_of(e, max_message));
                }
            }
        });
    let init_state = state.clone();
    GraphQLWebSocket::new_with_pair(&mut sink, input, state.schema.clone(), protocol)
        .on_connection_init(move |payload| connection_init(init_state, payload))
        .keepalive_timeout(IDLE_TIMEOUT)
        .serve()
        .await;
    let frame = refusal.get().cloned().or_else(|| {
        closing.is_cancelled().then(|| CloseFrame {
            code: close_code::AWAY,
            reason: "server shutting down".into(),
        })
    });
    if let Some(frame) = frame {
        let _ = sink.send(Message::Close(Some(frame))).await;
    }
}

/// The close frame for a socket error: 1009 for a message over the limit, 1002 for anything
/// else the client sent that is not WebSocket.
fn refusal_of(e: &axum::Error, max_message: usize) -> CloseFrame {
    use std::error::Error as _;
    let too_big = e
        .source()
        .and_then(|s| s.downcast_ref::<tungstenite::Error>())
        .is_some_and(|t| matches!(t, tungstenite::Error::Capacity(_)));
    if too_big {
        CloseFrame {
            code: close_code::SIZE,
            reason: format!("a message may be at most {max_message} bytes (MAX_BODY_BYTES)").into(),
        }
    } else {
        CloseFrame {
            code: close_code::PROTOCOL,
            reason: "not a valid WebSocket frame".into(),
        }
    }
}

/// The connection's context, from the token in the `connection_init` payload.
async fn connection_init(
    state: AppState,
    payload: serde_json::Value,
) -> async_graphql::Result<Data> {
    let viewer = match bearer(&payload) {
        Some(header) => state.verifier.viewer(Some(&header)).await,
        None => Viewer::Anonymous,
    };
    if !matches!(viewer, Viewer::User(_)) {
        return Err(async_graphql::Error::new(
            "connection_init needs a valid bearer token: {\"Authorization\": \"Bearer <token>\"}",
        ));
    }
    let r = Arc::new(RequestCtx::new(
        viewer,
        state.store.clone(),
        state.config.clone(),
        state.tiers.clone(),
        Arc::new(RequestStats::default()),
    ));
    let conn = Connection::new(
        r.clone(),
        state.subscriptions.clone(),
        state.tiers.sync.feed().clone(),
        state.live.clone(),
        state.closing.clone(),
    );
    let mut data = Data::default();
    data.insert(r);
    data.insert(Arc::new(conn));
    Ok(data)
}

/// `Authorization: Bearer …` as the payload gives it (`{"Authorization": "Bearer …"}`, any case,
/// or `{"token": "…"}`).
fn bearer(payload: &serde_json::Value) -> Option<String> {
    let object = payload.as_object()?;
    for (key, value) in object {
        let Some(value) = value.as_str() else {
            continue;
        };
        if key.eq_ignore_ascii_case("authorization") {
            return Some(value.to_owned());
        }
        if key.eq_ignore_ascii_case("token") {
            return Some(format!("Bearer {value}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::bearer;
    use serde_json::json;

    #[test]
    fn the_token_is_read_from_the_payload_in_either_form() {
        let want = Some("Bearer abc".to_owned());
        assert_eq!(bearer(&json!({ "Authorization": "Bearer abc" })), want);
        assert_eq!(bearer(&json!({ "authorization": "Bearer abc" })), want);
        assert_eq!(bearer(&json!({ "token": "abc" })), want);
        assert_eq!(bearer(&json!({ "Authorization": 5 })), None);
        assert_eq!(bearer(&json!(null)), None);
        assert_eq!(bearer(&json!(["Bearer abc"])), None);
    }
}
