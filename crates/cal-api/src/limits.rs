//! Depth and complexity limits. async-graphql enforces both during validation (built-in
//! `limit_depth` / `limit_complexity`); its errors carry no code, so the HTTP layer tags them
//! `QUERY_TOO_COMPLEX` here.
//!
//! Why not a validation extension that raises the coded error itself: any registered extension
//! puts every field resolution on async-graphql's slow path (each field wrapped in the extension
//! chain), which cost the warm month view a sizeable share of its CPU.

use async_graphql::{Response, ServerError};

/// The messages async-graphql's built-in limits produce.
const LIMIT_MESSAGES: [&str; 2] = ["Query is too complex.", "Query is nested too deep."];

pub(crate) fn too_complex(message: String) -> ServerError {
    let mut e = ServerError::new(message, None);
    tag(&mut e);
    e
}

fn tag(e: &mut ServerError) {
    let mut ext = e.extensions.take().unwrap_or_default();
    ext.set("code", "QUERY_TOO_COMPLEX");
    e.extensions = Some(ext);
}

/// Gives limit violations their stable code.
pub(crate) fn tag_limit_errors(resp: &mut Response) {
    for e in &mut resp.errors {
        if LIMIT_MESSAGES.contains(&e.message.as_str()) {
            tag(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_limit_errors_are_tagged() {
        let mut resp = Response::from_errors(vec![
            ServerError::new("Query is too complex.", None),
            ServerError::new("something else", None),
        ]);
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
