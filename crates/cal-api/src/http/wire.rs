//! The GraphQL-over-HTTP wire format (<https://graphql.github.io/graphql-over-http/draft/>):
//! which media type an answer is written in ([`Media`], from `Accept`), which request bodies are
//! accepted (`Content-Type`), and how a POST body or GET query string becomes a request — strictly:
//! a `query` that is not a string, `variables` or `extensions` that are not maps, a missing
//! `query` are refused with 400 `BAD_REQUEST` rather than guessed at.

use async_graphql::{BatchRequest, Request, ServerError, Variables};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use std::collections::HashMap;

/// The media type of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `application/json`: the legacy type; request errors answer 200.
    Json,
    /// `application/graphql-response+json`: request errors answer 4xx and carry no `data`.
    GraphqlResponse,
}

impl Media {
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Media::Json => "application/json; charset=utf-8",
            Media::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
        })
    }

    /// The status of an answer with no `data`: a document that does not parse or validate,
    /// variables that do not coerce, a refused persisted query.
    pub fn request_error_status(self) -> StatusCode {
        match self {
            Media::Json => StatusCode::OK,
            Media::GraphqlResponse => StatusCode::BAD_REQUEST,
        }
    }

    /// The answer's media type for an `Accept` header; `None` when it accepts neither (406).
    ///
    /// No header, `*/*` and `application/*` mean `application/json` (what every client
    /// understands); `application/graphql-response+json` is chosen when named, unless
    /// `application/json` is named with a higher quality.
    pub fn negotiate(accept: Option<&str>) -> Option<Media> {
        let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
            return Some(Media::Json);
        };
        // For each candidate: the quality of the most specific range that matches it.
        let mut best = [(0u8, 0u16); 2]; // (specificity, q) for [Json, GraphqlResponse]
        for (name, q) in weighted(accept) {
            // A malformed weight counts as absent.
            let q = q.unwrap_or(1000);
            for (i, candidate) in ["application/json", "application/graphql-response+json"]
                .iter()
                .enumerate()
            {
                let specificity = match name.as_str() {
                    n if n == *candidate => 3,
                    "application/*" => 2,
                    "*/*" => 1,
                    _ => continue,
                };
                if specificity > best[i].0 {
                    best[i] = (specificity, q);
                }
            }
        }
        let [(_, json), (gql_specificity, gql)] = best;
        match (json, gql) {
            (0, 0) => None,
            // Named outright (not through a wildcard) and at least as wanted as JSON.
            (j, g) if g > j || (g == j && gql_specificity == 3) => Some(Media::GraphqlResponse),
            _ => Some(Media::Json),
        }
    }
}

/// The entries of a weighted list header (`Accept`, `Accept-Encoding`): each name lower-cased,
/// with its `q` in thousandths: 1000 when absent, `None` when malformed (not a number in
/// `0..=1`); the caller decides what a malformed weight means.
pub(crate) fn weighted(list: &str) -> impl Iterator<Item = (String, Option<u16>)> + '_ {
    list.split(',').map(|entry| {
        let mut parts = entry.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .next_back()
            .map_or(Some(1000), |v| {
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .map(|q| (q * 1000.0).round() as u16)
            });
        (name, q)
    })
}

/// Whether a POST body's `Content-Type` is one this endpoint reads: `application/json`, with no
/// charset or UTF-8.
pub fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';');
    if !parts
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        return false;
    }
    parts.all(|p| {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        !name.trim().eq_ignore_ascii_case("charset")
            || matches!(
                value.trim().trim_matches('"').to_ascii_lowercase().as_str(),
                "utf-8" | "utf8"
            )
    })
}

/// Whether a GET comes from a browser asking for a page (GraphiQL, in dev mode).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
}

/// One request as sent: every member optional and typed, so that a wrong type is a decode error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    extensions: Option<HashMap<String, async_graphql::Value>>,
}

impl WireRequest {
    fn into_request(self) -> Result<Request, ServerError> {
        let extensions = self.extensions.unwrap_or_default();
        let query = match self.query {
            Some(q) => q,
            // A persisted query's document is found by its hash (`persisted.rs`).
            None if extensions.contains_key(crate::persisted::EXTENSION) => String::new(),
            None => return Err(bad_request("the request has no `query` string")),
        };
        let mut req = Request::new(query);
        req.operation_name = self.operation_name;
        if let Some(vars) = self.variables {
            req.variables = Variables::from_json(serde_json::Value::Object(vars));
        }
        req.extensions = async_graphql::Extensions(extensions);
        Ok(req)
    }
}

/// A POST body: one request object, or a batch (a JSON array of them).
pub fn decode_body(body: &[u8]) -> Result<BatchRequest, ServerError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_none() {
        return Err(bad_request("the request body is empty"));
    }
    if first == Some(&b'[') {
        let list: Vec<WireRequest> = serde_json::from_slice(body).map_err(not_a_request)?;
        if list.is_empty() {
            return Err(bad_request("the batch holds no request"));
        }
        let list = list
            .into_iter()
            .map(WireRequest::into_request)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(BatchRequest::Batch(list));
    }
    let one: WireRequest = serde_json::from_slice(body).map_err(not_a_request)?;
    Ok(BatchRequest::Single(one.into_request()?))
}

/// A GET query string: `query`, `operationName`, and `variables` and `extensions` as JSON text;
/// checked by the same rules as a POST body (it becomes one request object first).
pub fn decode_query_string(raw: &str) -> Result<Request, ServerError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
        .map_err(|e| bad_request(format!("the query string does not decode: {e}")))?;
    let mut object = serde_json::Map::new();
    for (name, value) in pairs {
        let value = match name.as_str() {
            "query" => serde_json::Value::String(value),
            // `operationName=` names no operation.
            "operationName" if value.is_empty() => serde_json::Value::Null,
            "operationName" => serde_json::Value::String(value),
            "variables" | "extensions" => serde_json::from_str(&value)
                .map_err(|e| bad_request(format!("`{name}` is not JSON text: {e}")))?,
            _ => continue,
        };
        if object.insert(name.clone(), value).is_some() {
            return Err(bad_request(format!("`{name}` is given more than once")));
        }
    }
    let wire: WireRequest = serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| bad_request(format!("the query string is not a GraphQL request: {e}")))?;
    wire.into_request()
}

fn not_a_request(e: serde_json::Error) -> ServerError {
    bad_request(format!("the request body is not a GraphQL request: {e}"))
}

/// 400 `BAD_REQUEST`: the HTTP request is not a well-formed GraphQL request.
pub fn bad_request(message: impl Into<String>) -> ServerError {
    super::coded("BAD_REQUEST", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_follows_the_spec() {
        use Media::*;
        let n = |a: &str| Media::negotiate(Some(a));
        assert_eq!(
            Media::negotiate(None),
            Some(Json),
            "no Accept: application/json"
        );
        assert_eq!(n(""), Some(Json));
        assert_eq!(n("*/*"), Some(Json));
        assert_eq!(n("application/*"), Some(Json));
        assert_eq!(n("application/json"), Some(Json));
        assert_eq!(n("application/json; charset=utf-8"), Some(Json));
        assert_eq!(
            n("application/graphql-response+json"),
            Some(GraphqlResponse)
        );
        // Apollo Client's header.
        assert_eq!(
            n("application/graphql-response+json,application/json;q=0.9"),
            Some(GraphqlResponse)
        );
        assert_eq!(
            n("application/json, application/graphql-response+json"),
            Some(GraphqlResponse),
            "named both at one quality: the GraphQL type"
        );
        assert_eq!(
            n("application/graphql-response+json;q=0.5, application/json"),
            Some(Json)
        );
        assert_eq!(
            n("application/graphql-response+json, */*;q=0.1"),
            Some(GraphqlResponse)
        );
        assert_eq!(n("text/html, */*;q=0.8"), Some(Json), "a browser");
        assert_eq!(n("text/html"), None, "nothing acceptable: 406");
        assert_eq!(n("application/xml, image/png"), None);
        assert_eq!(n("application/json;q=0"), None, "q=0 refuses");
        assert_eq!(
            n("*/*;q=0, application/graphql-response+json"),
            Some(GraphqlResponse)
        );
    }

    #[test]
    fn weighted_lists_give_names_and_thousandths() {
        let list: Vec<_> =
            weighted("Gzip;q=0.5, br ;level=1; q=1 , zstd;q=2, identity;q=x, deflate").collect();
        assert_eq!(
            list,
            [
                ("gzip".to_owned(), Some(500)),
                ("br".to_owned(), Some(1000)),
                ("zstd".to_owned(), None),
                ("identity".to_owned(), None),
                ("deflate".to_owned(), Some(1000)),
            ]
        );
    }

    #[test]
    fn only_json_bodies_in_utf8_are_read() {
        let ct = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            json_content_type(&h)
        };
        assert!(ct(Some("application/json")));
        assert!(ct(Some("application/json; charset=utf-8")));
        assert!(ct(Some("Application/JSON;charset=\"UTF-8\"")));
        assert!(!ct(None), "no content type: 415");
        assert!(!ct(Some("text/plain")));
        assert!(!ct(Some("application/json; charset=latin1")));
        assert!(!ct(Some("application/x-www-form-urlencoded")));
    }

    #[test]
    fn bodies_decode_strictly() {
        let ok = decode_body(br#"{"query":"{ me { id } }","operationName":null,"variables":null,"extensions":{"a":1}}"#).unwrap();
        let BatchRequest::Single(r) = ok else {
            panic!("single")
        };
        assert_eq!(r.query, "{ me { id } }");
        assert_eq!(r.extensions.get("a"), Some(&async_graphql::Value::from(1)));
        let batch = decode_body(br#"[{"query":"{ a }"},{"query":"{ b }"}]"#).unwrap();
        assert!(matches!(batch, BatchRequest::Batch(ref l) if l.len() == 2));
        for bad in [
            &br#"{ "not a JSON"#[..],
            b"",
            b"  ",
            b"[]",
            br#"{"qeury":"{ a }"}"#,
            br#"{"query":{"obj":"ect"}}"#,
            br#"{"query":0}"#,
            br#"{"query":false}"#,
            br#"{"query":["array"]}"#,
            br#"{"query":"{ a }","operationName":0}"#,
            br#"{"query":"{ a }","variables":"string"}"#,
            br#"{"query":"{ a }","variables":["array"]}"#,
            br#"{"query":"{ a }","extensions":"string"}"#,
            br#"{"query":"{ a }","extensions":0}"#,
            br#"[{"query":"{ a }"},{"nothing":1}]"#,
        ] {
            let err = decode_body(bad).expect_err(&String::from_utf8_lossy(bad));
            let code = err.extensions.as_ref().and_then(|e| e.get("code")).cloned();
            assert_eq!(code, Some(async_graphql::Value::from("BAD_REQUEST")));
        }
        // A persisted query may come without its document.
        let hashed =
            decode_body(br#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"ab"}}}"#)
                .unwrap();
        assert!(matches!(hashed, BatchRequest::Single(ref r) if r.query.is_empty()));
    }

    #[test]
    fn query_strings_decode_like_bodies() {
        let r = decode_query_string(
            "query=query%20Q(%24n%3A%20String!)%20%7B%20a%20%7D&operationName=Q&variables=%7B%22n%22%3A%22x%22%7D&extensions=%7B%22persistedQuery%22%3A%7B%22version%22%3A1%7D%7D&other=1",
        )
        .unwrap();
        assert_eq!(r.query, "query Q($n: String!) { a }");
        assert_eq!(r.operation_name.as_deref(), Some("Q"));
        assert_eq!(r.variables.get("n"), Some(&async_graphql::Value::from("x")));
        assert!(r.extensions.contains_key("persistedQuery"));
        for bad in [
            "",
            "variables=%7B%7D",
            "query=%7Ba%7D&query=%7Bb%7D",
            "query=%7Ba%7D&variables=not-json",
            "query=%7Ba%7D&variables=%5B1%5D",
            "query=%7Ba%7D&extensions=1",
        ] {
            decode_query_string(bad).expect_err(bad);
        }
        let empty_vars = decode_query_string("query=%7Ba%7D&variables=null").unwrap();
        assert!(empty_vars.variables.is_empty());
    }
}
