//! Conditional requests and caching headers of `/graphql`.
//!
//! A query's answer carries a strong `ETag`, derived from its bytes: the hash (XXH3-128) of the
//! answer's media type and its `data`/`errors` members, before the per-request `extensions`
//! (cost figures, stats) are added. The tag therefore names exactly what the client renders and
//! changes as soon as any value the answer was built from changes, on every instance (the answer
//! is only ever as fresh as the cache tiers allow, and read-your-writes holds for it). It is the
//! same whether the answer was executed cold or served from the response cache.
//!
//! The layer here sits outside compression: it appends the content coding to the tag (`"…-br"`),
//! so every representation has its own strong tag, then answers `304 Not Modified` with no body
//! when `If-None-Match` names the current tag (GET, HEAD, and POST of a query). It also sets
//! `Cache-Control` (`private, no-cache` on answers with a tag: per-viewer data a cache must
//! revalidate; `no-store` on everything else) and `Vary: accept, accept-encoding,
//! authorization` (the answer depends on the viewer, the media type and the coding).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::wire::Media;

/// The strong entity tag of an answer whose bytes before `extensions` are `head` and `tail`
/// (`tail` closes an answer whose stored form had its extensions cut off).
pub fn etag(media: Media, head: &[u8], tail: &[u8]) -> HeaderValue {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[media as u8]);
    h.update(head);
    h.update(tail);
    HeaderValue::from_str(&format!("\"{:032x}\"", h.digest128())).expect("hex is a valid header")
}

const VARY: &str = "accept, accept-encoding, authorization";

/// The layer's function (`axum::middleware::from_fn`).
pub async fn layer(req: Request, next: Next) -> Response {
    if req.uri().path() != "/graphql" {
        return next.run(req).await;
    }
    // Only query answers carry a tag, whatever the method that asked (GET, HEAD, POST).
    let conditional = req.headers().get(header::IF_NONE_MATCH).cloned();
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static(VARY));
    let Some(tag) = headers.get(header::ETAG).cloned() else {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return resp;
    };
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    let tag = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        Some(coding) => coded_tag(&tag, coding),
        None => tag,
    };
    headers.insert(header::ETAG, tag.clone());
    if resp.status() == StatusCode::OK
        && conditional.is_some_and(|inm| none_match_names(&inm, &tag))
    {
        return not_modified(resp.headers());
    }
    resp
}

/// `"abc"` with coding `br` becomes `"abc-br"`.
fn coded_tag(tag: &HeaderValue, coding: &str) -> HeaderValue {
    let Some(inner) = tag
        .to_str()
        .ok()
        .and_then(|t| t.strip_prefix('"'))
        .and_then(|t| t.strip_suffix('"'))
    else {
        return tag.clone();
    };
    HeaderValue::from_str(&format!("\"{inner}-{}\"", coding.trim())).unwrap_or_else(|_| tag.clone())
}

/// Whether an `If-None-Match` value names `tag` (weak comparison, as RFC 9110 asks for this
/// header; `*` names any current representation).
fn none_match_names(if_none_match: &HeaderValue, tag: &HeaderValue) -> bool {
    let (Ok(list), Ok(tag)) = (if_none_match.to_str(), tag.to_str()) else {
        return false;
    };
    let tag = tag.trim_start_matches("W/");
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

/// 304 with the validator and caching headers of the answer it replaces, and no body.
fn not_modified(answer: &HeaderMap) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [header::ETAG, header::CACHE_CONTROL, header::VARY] {
        if let Some(v) = answer.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_bytes_and_the_media_type() {
        let a = etag(Media::Json, br#"{"data":{"a":1}"#, b"}");
        assert_eq!(a, etag(Media::Json, br#"{"data":{"a":1}}"#, b""));
        assert_ne!(a, etag(Media::Json, br#"{"data":{"a":2}}"#, b""));
        assert_ne!(a, etag(Media::GraphqlResponse, br#"{"data":{"a":1}}"#, b""));
        let s = a.to_str().unwrap();
        assert!(
            s.starts_with('"') && s.ends_with('"') && s.len() == 34,
            "{s}"
        );
    }

    #[test]
    fn codings_get_their_own_tag() {
        let t = HeaderValue::from_static("\"abc\"");
        assert_eq!(coded_tag(&t, "br"), "\"abc-br\"");
        assert_eq!(coded_tag(&t, "gzip"), "\"abc-gzip\"");
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let tag = HeaderValue::from_static("\"abc-br\"");
        let names = |v: &'static str| none_match_names(&HeaderValue::from_static(v), &tag);
        assert!(names("\"abc-br\""));
        assert!(names("W/\"abc-br\""));
        assert!(names("\"x\", \"abc-br\""));
        assert!(names("*"));
        assert!(!names("\"abc\""), "another coding's tag");
        assert!(!names("\"abc-gzip\""));
        assert!(!names(""));
    }
}
