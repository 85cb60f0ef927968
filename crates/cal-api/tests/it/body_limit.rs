//! A request body over `max_body_bytes` is answered 413 with a coded GraphQL error that the client
//! actually reads (the server drains the body before answering instead of resetting the
//! connection), whether the client declared its length or streamed it chunked.

use crate::common::*;

const EIGHT_MIB: usize = 8 * 1024 * 1024;

/// The body of a valid request padded with spaces to `len` bytes.
fn padded(len: usize) -> Vec<u8> {
    let mut body = br#"{"query":"{ me { id } }"}"#.to_vec();
    body.resize(len, b' ');
    body
}

/// Sends `body` to `/graphql` as `user`; the status and the JSON answer, or the transport error.
async fn post(app: &TestApp, user: UserId, body: reqwest::Body) -> Result<(u16, Value), String> {
    let resp = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(app.token(user))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport error: {e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e:?}"))?;
    let json = serde_json::from_str(&text).map_err(|_| format!("not JSON: {text}"))?;
    Ok((status, json))
}

/// `len` bytes of `padded` as a stream of 64 KiB chunks: sent without Content-Length.
fn chunked(len: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = padded(len)
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

fn assert_too_large(got: Result<(u16, Value), String>, what: &str) {
    let (status, body) = got.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(status, 413, "{what}: {body}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE",
        "{what}: {body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("262144")),
        "{what}: {body}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_answered_413_with_a_code_not_reset() {
    let app = TestApp::spawn().await;
    let me = app.user("Big Sender").await;
    let limit = app.config.max_body_bytes;
    assert_eq!(limit, 256 * 1024, "the message names the default limit");
    let ok = |got: Result<(u16, Value), String>, what: &str| {
        let (status, body) = got.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, 200, "{what}: {body}");
        assert_eq!(
            body["data"]["me"]["id"],
            me.id.to_string(),
            "{what}: {body}"
        );
    };
    // At the limit: answered.
    ok(
        post(&app, me.id, padded(limit).into()).await,
        "at the limit",
    );
    ok(
        post(&app, me.id, chunked(limit)).await,
        "chunked at the limit",
    );
    // Over it, with and without Content-Length, by one byte or by megabytes.
    for round in 0..2 {
        assert_too_large(
            post(&app, me.id, padded(EIGHT_MIB).into()).await,
            "8 MiB with Content-Length",
        );
        assert_too_large(post(&app, me.id, chunked(EIGHT_MIB)).await, "8 MiB chunked");
        assert_too_large(
            post(&app, me.id, padded(limit + 1).into()).await,
            "one byte over",
        );
        assert_too_large(
            post(&app, me.id, chunked(limit + 1)).await,
            "chunked, one byte over",
        );
        // The same client (and its pooled connections) goes on working.
        ok(
            post(&app, me.id, padded(100).into()).await,
            &format!("after round {round}"),
        );
    }
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "cal_graphql_errors_total{code=\"PAYLOAD_TOO_LARGE\"} 8"),
        "counted by code:\n{metrics}"
    );
}

/// Writes one request (head and body) to `conn`, all of it before reading anything, as a simple
/// client does; then reads one response. The status and body, or the I/O error.
async fn exchange(
    conn: &mut tokio::net::TcpStream,
    token: &str,
    framing: &str,
    body: &[u8],
) -> std::io::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /graphql HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\n{framing}\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    if framing.starts_with("transfer-encoding") {
        for chunk in body.chunks(64 * 1024) {
            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            conn.write_all(chunk).await?;
            conn.write_all(b"\r\n").await?;
        }
        conn.write_all(b"0\r\n\r\n").await?;
    } else {
        conn.write_all(body).await?;
    }
    // One response: its head, then exactly Content-Length bytes of body.
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut more = [0u8; 4096];
        let n = conn.read(&mut more).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&more[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let mut more = [0u8; 4096];
        let n = conn.read(&mut more).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&more[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
    Ok((status, body))
}

#[tokio::test]
async fn a_client_that_sends_everything_first_reads_the_413_and_keeps_its_connection() {
    let app = TestApp::spawn().await;
    let me = app.user("Plain Client").await;
    let token = app.token(me.id);
    let big = padded(EIGHT_MIB);
    let small = padded(100);
    for framing in [
        format!("content-length: {}\r\n", big.len()),
        "transfer-encoding: chunked\r\n".to_owned(),
    ] {
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let got = exchange(&mut conn, &token, &framing, &big)
            .await
            .map_err(|e| format!("{framing}: {e}"));
        assert_too_large(got, &framing);
        // The same connection carries the next request.
        let small_framing = format!("content-length: {}\r\n", small.len());
        let (status, body) = exchange(&mut conn, &token, &small_framing, &small)
            .await
            .unwrap_or_else(|e| panic!("{framing}: the connection after the 413: {e}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["me"]["id"], me.id.to_string());
    }
}

#[tokio::test]
async fn the_admin_endpoint_answers_an_oversized_body_413_too() {
    let app = TestApp::spawn().await;
    for (body, what) in [
        (
            reqwest::Body::from(padded(EIGHT_MIB)),
            "8 MiB with Content-Length",
        ),
        (chunked(EIGHT_MIB), "8 MiB chunked"),
    ] {
        let resp = app
            .client
            .post(app.url("/admin/purge"))
            .header(
                cal_api::admin::ADMIN_TOKEN_HEADER,
                cal_test_support::TEST_ADMIN_TOKEN,
            )
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: transport error {e:?}"));
        assert_eq!(resp.status().as_u16(), 413, "{what}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE",
            "{what}: {body}"
        );
    }
}
