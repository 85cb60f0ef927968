//! One-shot HTTP/1 requests over a plain `TcpStream`: xtask needs no HTTP client library for a
//! readiness probe ([`http_get_status`]), a metrics scrape ([`metrics_text`]) and the few check
//! requests whose exact bytes the benchmarks compare ([`http_request_raw`]). Shared by `bench`,
//! `bench-http` and the cluster commands.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One plain HTTP/1.1 request (Connection: close) returning status and body as text; enough for
/// a probe, a metrics scrape and one check request.
pub(crate) fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let (status, _, body) = http_request_raw(addr, method, path, headers, body.as_bytes())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/1.0 request (so the answer is never chunked): status, head and exact body bytes.
pub(crate) fn http_request_raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("not an HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")?;
    Ok((status, head, raw[split + 4..].to_vec()))
}

/// A server's `/metrics` text; an error unless it answers 200.
pub(crate) fn metrics_text(addr: &str) -> Result<String> {
    let (status, body) = http_request(addr, "GET", "/metrics", &[], "")?;
    anyhow::ensure!(status == 200, "GET /metrics on {addr} answered {status}");
    Ok(body)
}

/// The status code of a plain HTTP/1.1 GET (no client library needed for one readiness probe).
pub(crate) fn http_get_status(addr: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = std::str::from_utf8(&head[..n]).unwrap_or("");
    // "HTTP/1.1 200 OK"
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")
}
