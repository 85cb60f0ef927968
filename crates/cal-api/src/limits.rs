//! Depth, complexity and alias limits, and the codes of errors raised before execution.
//! async-graphql enforces the limits during validation (built-in
//! `limit_depth` / `limit_complexity`); its errors carry no code, so the HTTP layer tags them
//! `QUERY_TOO_COMPLEX` here.
//!
//! Why not a validation extension that raises the coded error itself: any registered extension
//! puts every field resolution on async-graphql's slow path (each field wrapped in the extension
//! chain), which cost the warm month view a sizeable share of its CPU.

use async_graphql::{Response, ServerError};

/// The messages async-graphql's built-in limits produce (the alias limit's ends with the bound).
const LIMIT_MESSAGES: [&str; 3] = [
    "Query is too complex.",
    "Query is nested too deep.",
    "The amount of aliases of the query cannot be greater than",
];

pub(crate) fn too_complex(message: String) -> ServerError {
    let mut e = ServerError::new(message, None);
    tag(&mut e);
    e
}

fn tag(e: &mut ServerError) {
    set_code(e, "QUERY_TOO_COMPLEX");
}

fn set_code(e: &mut ServerError, code: &str) {
    let mut ext = e.extensions.take().unwrap_or_default();
    ext.set("code", code);
    e.extensions = Some(ext);
}

/// The code of an error async-graphql raised before execution (it gives none): a limit, a
/// document that does not parse, a value that does not fit its type, or any other rule.
fn request_error_code(message: &str) -> &'static str {
    if LIMIT_MESSAGES.iter().any(|m| message.starts_with(m)) {
        "QUERY_TOO_COMPLEX"
    } else if message.contains(" --> ") {
        "GRAPHQL_PARSE_FAILED"
    } else if is_bad_value(message) {
        "BAD_USER_INPUT"
    } else {
        "GRAPHQL_VALIDATION_FAILED"
    }
}

/// A value that does not fit its type (async-graphql's input coercion messages).
fn is_bad_value(message: &str) -> bool {
    message.starts_with("Invalid value for argument")
        || message.starts_with("Failed to parse \"")
        || (message.starts_with("Variable \"") && message.contains("invalid value"))
}

/// Gives every error without a code one: limit violations `QUERY_TOO_COMPLEX`, request errors
/// (no path: raised before execution) by [`request_error_code`]. Resolver errors always carry
/// their code already ([`crate::error::ApiError`]).
pub(crate) fn tag_limit_errors(resp: &mut Response) {
    for e in &mut resp.errors {
        let coded = e
            .extensions
            .as_ref()
            .is_some_and(|x| x.get("code").is_some());
        if coded {
            continue;
        }
        if e.path.is_empty() {
            let code = request_error_code(&e.message);
            set_code(e, code);
        } else if is_bad_value(&e.message) {
            // An argument async-graphql failed to coerce while resolving (e.g. a variable
            // holding a malformed `DateTime`).
            set_code(e, "BAD_USER_INPUT");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_limit_errors_are_tagged() {
        let mut resp =
            Response::from_errors(vec![ServerError::new("Query is too complex.", None), {
                let mut e = ServerError::new("something else", None);
                e.path = vec![async_graphql::PathSegment::Field("me".into())];
                e
            }]);
        tag_limit_errors(&mut resp);
        let codes: Vec<_> = resp
            .errors
            .iter()
            .map(|e| e.extensions.as_ref().and_then(|x| x.get("code").cloned()))
            .collect();
        assert_eq!(
            codes[0],
            Some(async_graphql::Value::from("QUERY_TOO_COMPLEX"))
        );
        assert_eq!(codes[1], None);
    }
}
