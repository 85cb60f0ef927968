//! [`WsClient`]: GraphQL over WebSocket with the `graphql-transport-ws` protocol (the one the
//! `graphql-ws` library speaks), written out over tokio-tungstenite so that a test controls the
//! socket: its receive buffer, when it reads, how many subscriptions share it.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What the server sent for one subscription, or how the connection ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `next`: an execution result (`data` and/or `errors`).
    Next {
        id: String,
        payload: Value,
    },
    /// `error`: the operation was refused before it ran (validation, a resolver error at
    /// subscribe time); its GraphQL errors.
    Error {
        id: String,
        errors: Value,
    },
    Complete {
        id: String,
    },
    /// The server closed the connection.
    Closed {
        code: u16,
        reason: String,
    },
}

pub struct WsClient {
    socket: WebSocketStream<TcpStream>,
}

impl WsClient {
    /// Connects to `/graphql` at `addr` and completes `connection_init` with the bearer token;
    /// `recv_buffer` sets the socket's receive buffer (`SO_RCVBUF`) before it connects.
    /// `Err` carries the close frame when the server refuses the connection.
    pub async fn connect(
        addr: SocketAddr,
        token: Option<&str>,
        recv_buffer: Option<u32>,
    ) -> Result<WsClient, Frame> {
        let tcp = TcpSocket::new_v4().expect("a socket");
        if let Some(bytes) = recv_buffer {
            tcp.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let stream = tcp.connect(addr).await.expect("the server accepts");
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .expect("a valid URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().expect("a valid header"),
        );
        let (socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("the WebSocket handshake");
        let mut me = WsClient { socket };
        let payload = match token {
            Some(t) => json!({ "Authorization": format!("Bearer {t}") }),
            None => json!({}),
        };
        me.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        match me.read().await {
            Ok(msg) if msg["type"] == "connection_ack" => Ok(me),
            Ok(msg) => panic!("expected connection_ack, got {msg}"),
            Err(closed) => Err(closed),
        }
    }

    /// Starts the subscription `id`.
    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({
            "id": id, "type": "subscribe",
            "payload": { "query": query, "variables": variables },
        }))
        .await;
    }

    /// Ends the subscription `id`.
    pub async fn complete(&mut self, id: &str) {
        self.send(json!({ "id": id, "type": "complete" })).await;
    }

    /// The next frame of any subscription (pings are answered on the way).
    pub async fn next(&mut self) -> Frame {
        loop {
            let msg = match self.read().await {
                Ok(msg) => msg,
                Err(closed) => return closed,
            };
            let id = msg["id"].as_str().unwrap_or_default().to_owned();
            match msg["type"].as_str() {
                Some("next") => {
                    return Frame::Next {
                        id,
                        payload: msg["payload"].clone(),
                    };
                }
                Some("error") => {
                    return Frame::Error {
                        id,
                        errors: msg["payload"].clone(),
                    };
                }
                Some("complete") => return Frame::Complete { id },
                Some("ping") => self.send(json!({ "type": "pong" })).await,
                _ => {}
            }
        }
    }

    async fn send(&mut self, msg: Value) {
        // A send to a closed socket shows up as `Closed` at the next read.
        let _ = self.socket.send(Message::text(msg.to_string())).await;
    }

    /// The next JSON message, or how the connection ended.
    async fn read(&mut self) -> Result<Value, Frame> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(text.as_str()).expect("JSON from the server"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Frame::Closed {
                        code: frame.as_ref().map_or(1005, |f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(Frame::Closed {
                        code: 1006,
                        reason: e.to_string(),
                    });
                }
                None => {
                    return Err(Frame::Closed {
                        code: 1006,
                        reason: "the connection ended".to_owned(),
                    });
                }
            }
        }
    }
}
