//! Reading a request body under a size limit without resetting the connection.
//!
//! Answering before the client has finished sending makes hyper close the socket with unread
//! bytes in it, which the kernel turns into a TCP reset, and the client usually reports that reset
//! instead of the answer. So an over-limit body is not refused at its first byte: what is already
//! past the limit is read and thrown away (never buffered) up to [`DRAIN_BYTES`] in all and for
//! at most [`DRAIN_TIME`], then the 413 is answered and the connection stays usable. A body
//! declared larger than [`DRAIN_BYTES`], or one still arriving after those bounds, is answered
//! at once with `Connection: close`: reading it all is what an attacker would want.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use std::time::Duration;

/// Most bytes read (and discarded) from an over-limit body before answering.
pub const DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// Longest time spent discarding an over-limit body before answering.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// What reading a request body gave.
pub enum Read {
    /// The whole body, within the limit.
    Body(Bytes),
    /// Over the limit. `drained`: all of it was read, so the connection can stay open.
    TooLarge { drained: bool },
    /// The client broke off or sent a malformed body.
    Broken,
}

/// Reads `body` if it holds at most `limit` bytes (see the module doc for what happens past it).
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Read {
    let limit = limit as u64;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_BYTES) {
        return Read::TooLarge { drained: false };
    }
    let mut stream = body.into_data_stream();
    // Most bodies arrive in one frame, which is then handed on without a copy.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut seen: u64 = 0;
    // Set once the body is known to be over the limit: from then on it is only drained.
    let mut draining_until = declared
        .filter(|&n| n > limit)
        .map(|_| tokio::time::Instant::now() + DRAIN_TIME);
    loop {
        let next = match draining_until {
            None => stream.next().await,
            Some(at) => match tokio::time::timeout_at(at, stream.next()).await {
                Ok(next) => next,
                Err(_) => return Read::TooLarge { drained: false },
            },
        };
        let chunk = match next {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(_)) => return Read::Broken,
        };
        seen += chunk.len() as u64;
        if seen > DRAIN_BYTES {
            return Read::TooLarge { drained: false };
        }
        if draining_until.is_none() && seen > limit {
            chunks = Vec::new();
            draining_until = Some(tokio::time::Instant::now() + DRAIN_TIME);
        }
        if draining_until.is_none() {
            chunks.push(chunk);
        }
    }
    if draining_until.is_some() {
        return Read::TooLarge { drained: true };
    }
    match chunks.len() {
        0 => Read::Body(Bytes::new()),
        1 => Read::Body(chunks.pop().expect("one chunk")),
        _ => Read::Body(Bytes::from(chunks.concat())),
    }
}
