//! Request observation hooks: the per-request report that the HTTP layer turns into metrics,
//! operation labels, the `graphql.operation` and `loader.batch` spans, and the error codes.
//!
//! The GraphQL handler and the loaders tell the HTTP layer (`http/observe.rs`) what happened
//! through a few hooks ([`begin`], [`errors`], [`cached`], and [`loader_batch`] from the
//! loaders), which write into a per-request report held in a task-local: the handler,
//! async-graphql and the DataLoaders all run inside the request's task, and no async-graphql
//! extension is registered (any extension would put every field on async-graphql's slow path).
//! One `graphql.operation` span per operation, never one per field. This module is a leaf: it
//! knows no schema, router or state, so the loaders can report to it without an import cycle.
//!
//! Nothing here records headers, variables or the query text: operations are identified by name
//! and by the SHA-256 of their query text (`graphql.document.hash`).

use async_graphql::{BatchRequest, Response as GqlResponse};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tracing::{Span, field::Empty};

/// At most this many distinct operation names become `operation` labels.
pub const MAX_OPERATIONS: usize = 200;
/// The `code` label of an error without `extensions.code`.
pub const UNCODED: &str = "GRAPHQL_VALIDATION_FAILED";
/// Every `extensions.code` the API gives (their series start at zero).
pub const CODES: [&str; 24] = [
    "BAD_USER_INPUT",
    "NOT_FOUND",
    "FORBIDDEN",
    "UNAUTHENTICATED",
    "VERSION_CONFLICT",
    "RESOURCE_CONFLICT",
    "QUERY_TOO_COMPLEX",
    "BUDGET_EXCEEDED",
    "SYNC_TOKEN_EXPIRED",
    "SUBSCRIPTION_LIMIT",
    "GRAPHQL_PARSE_FAILED",
    "GRAPHQL_VALIDATION_FAILED",
    "INTERNAL_SERVER_ERROR",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "BAD_REQUEST",
    "UNSUPPORTED_MEDIA_TYPE",
    "NOT_ACCEPTABLE",
    "METHOD_NOT_ALLOWED",
    "PERSISTED_QUERY_NOT_FOUND",
    "PERSISTED_QUERY_HASH_MISMATCH",
    "PERSISTED_QUERY_NOT_SUPPORTED",
    "PERSISTED_QUERY_NOT_IN_LIST",
    "QUERY_NOT_IN_SAFELIST",
];

/// What the layer learns about one request from the hooks.
#[derive(Default)]
pub(crate) struct Report {
    /// The `operation` label, once the handler has read the request ([`begin`]).
    pub(crate) operation: Option<String>,
    /// `extensions.code` of every error answered.
    pub(crate) codes: Vec<String>,
    pub(crate) statements: u64,
    pub(crate) loader_batches: u64,
    /// Whether direct execution answered (`Some(true)`) or stepped aside, when it was tried.
    pub(crate) direct: Option<bool>,
}

tokio::task_local! {
    pub(crate) static REPORT: Arc<Mutex<Report>>;
}

pub(crate) fn with_report(f: impl FnOnce(&mut Report)) {
    let _ = REPORT.try_with(|r| f(&mut r.lock().unwrap()));
}

/// The operation names seen so far (the label cardinality bound).
static OPERATIONS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b == b'_' || b.is_ascii_alphabetic())
        && bytes.all(|b| b == b'_' || b.is_ascii_alphanumeric())
        && s.len() <= 64
}

/// The `operation` label of one request.
fn operation_label(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".to_owned();
    };
    if !is_name(name) {
        return "other".to_owned();
    }
    let mut known = OPERATIONS.lock().unwrap();
    let known = known.get_or_insert_with(HashSet::new);
    if known.contains(name) {
        return name.to_owned();
    }
    if known.len() < MAX_OPERATIONS {
        known.insert(name.to_owned());
        return name.to_owned();
    }
    "other".to_owned()
}

/// The operation a single request runs, by name: `operationName`, else the name of the document's
/// only operation (clients often send a named operation without `operationName`).
pub(crate) fn operation_name(req: &async_graphql::Request) -> Option<String> {
    req.operation_name
        .clone()
        .or_else(|| only_operation_name(&req.query))
}

/// The name of the document's operation if it has exactly one (named) operation. A lexical scan
/// at brace depth 0 (strings, block strings and comments skipped): no parse.
fn only_operation_name(query: &str) -> Option<String> {
    let b = query.as_bytes();
    let (mut i, mut depth, mut found, mut ops) = (0, 0usize, None, 0);
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => {
                if depth == 0 && ops == 0 {
                    ops = 1; // shorthand `{ … }`: an anonymous query
                }
                depth += 1;
            }
            b'}' => depth = depth.saturating_sub(1),
            c if depth == 0 && (c == b'_' || c.is_ascii_alphabetic()) => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
                let word = &query[start..i];
                if matches!(word, "query" | "mutation" | "subscription") {
                    ops += 1;
                    while i < b.len() && (b[i] as char).is_whitespace() {
                        i += 1;
                    }
                    let name_start = i;
                    while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                        i += 1;
                    }
                    found = (i > name_start).then(|| query[name_start..i].to_owned());
                } else if word == "fragment" {
                    // `fragment Name on Type { … }`: skip to its selection set.
                    while i < b.len() && b[i] != b'{' {
                        i += 1;
                    }
                    // Consume its `{` here: it opens no operation.
                    i += 1;
                    depth += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if ops == 1 { found } else { None }
}

/// Hook: the handler has read the request. Names the operation for the metrics and the HTTP span.
pub fn begin(batch: &BatchRequest) {
    let label = match batch {
        BatchRequest::Single(req) => operation_label(operation_name(req).as_deref()),
        BatchRequest::Batch(_) => "batch".to_owned(),
    };
    Span::current().record("graphql.operation.name", label.as_str());
    with_report(|r| r.operation = Some(label));
}

/// Hook: the handler answers from a whole-response cache, for an operation labelled `label`
/// (as [`begin`] labelled it when the response was built); no statements.
pub fn cached(label: &str) {
    Span::current().record("graphql.operation.name", label);
    with_report(|r| r.operation = Some(label.to_owned()));
}

/// The current request's operation label, once [`begin`] has named it.
pub fn operation() -> Option<String> {
    REPORT
        .try_with(|r| r.lock().unwrap().operation.clone())
        .ok()
        .flatten()
}

/// Hook: the handler answers `resp` without executing it (rejected batch, bad header).
pub fn errors(resp: &GqlResponse) {
    with_report(|r| r.codes.extend(error_codes(resp)));
}

pub(crate) fn error_codes(resp: &GqlResponse) -> impl Iterator<Item = String> + '_ {
    resp.errors.iter().map(
        |e| match e.extensions.as_ref().and_then(|x| x.get("code")) {
            Some(async_graphql::Value::String(code)) => code.clone(),
            _ => UNCODED.to_owned(),
        },
    )
}

/// SHA-256 of the query text, in hex.
pub fn document_hash(query: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(query.as_bytes()))
}

pub(crate) fn operation_span(req: &async_graphql::Request) -> Span {
    let name = operation_name(req);
    let span = tracing::info_span!(
        "graphql.operation",
        otel.name = %format_args!("graphql {}", name.as_deref().unwrap_or("anonymous")),
        otel.status_code = Empty,
        graphql.operation.name = name.as_deref().unwrap_or(""),
        graphql.document.hash = Empty,
        graphql.errors = Empty,
        graphql.error.codes = Empty,
        graphql.direct = Empty,
    );
    if !span.is_disabled() {
        span.record("graphql.document.hash", document_hash(&req.query).as_str());
    }
    span
}

/// Hook for the loaders: one DataLoader batch of `size` keys. Counts it for the request
/// (`extensions.stats.loaderBatches`) and returns its `loader.batch` span.
pub fn loader_batch(loader: &'static str, size: usize) -> Span {
    with_report(|r| r.loader_batches += 1);
    tracing::debug_span!(
        "loader.batch",
        otel.name = %format_args!("loader {loader}"),
        loader = loader,
        batch.size = size as i64,
    )
}

/// DataLoader batches the current request has run so far.
pub fn loader_batches() -> u64 {
    REPORT
        .try_with(|r| r.lock().unwrap().loader_batches)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_found_without_parsing() {
        let cases = [
            (
                "query MonthView($id: ID!) { calendar(id: $id) { id } }",
                Some("MonthView"),
            ),
            ("{ me { id } }", None),
            ("query { me { id } }", None),
            (
                "mutation Create { createCalendar(name: \"a { b\") { id } }",
                Some("Create"),
            ),
            (
                "fragment F on User { id }\nquery Q { me { ...F } }",
                Some("Q"),
            ),
            ("# query Fake\nquery Real { me { id } }", Some("Real")),
            ("query A { me { id } } query B { me { id } }", None),
        ];
        for (query, name) in cases {
            assert_eq!(only_operation_name(query).as_deref(), name, "{query}");
        }
    }

    #[test]
    fn labels_are_bounded_names() {
        assert_eq!(operation_label(None), "anonymous");
        assert_eq!(operation_label(Some("MonthView")), "MonthView");
        assert_eq!(operation_label(Some("not a name")), "other");
        assert_eq!(operation_label(Some(&"x".repeat(65))), "other");
    }

    #[test]
    fn document_hash_is_sha256_hex() {
        assert_eq!(
            document_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
