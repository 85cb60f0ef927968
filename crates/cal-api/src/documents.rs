//! Parsed GraphQL documents by query text: clients send the same few documents over and over, and
//! parsing one (async-graphql's pest grammar) cost ~3% of a cold month view's CPU. A repeated
//! query is parsed once and later requests get a copy of the tree; validation still runs on every
//! request (it depends on the variables).

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType,
};
use moka::sync::Cache;
use std::sync::Arc;

/// Documents this large or larger are parsed every time rather than kept.
const MAX_QUERY_BYTES: usize = 64 * 1024;

/// The parsed-document cache. Cheap to clone.
#[derive(Clone)]
pub struct Documents {
    parsed: Cache<String, Arc<ExecutableDocument>>,
}

impl Default for Documents {
    fn default() -> Self {
        Self::new(16 * 1024 * 1024)
    }
}

impl Documents {
    /// A cache weighing each document at 16 times its text (a parsed tree is larger).
    pub fn new(max_bytes: u64) -> Self {
        Self {
            parsed: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|q: &String, _| u32::try_from(q.len() * 16 + 256).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// Attaches the parsed document to `req` (parsing and keeping it if new) and tells which kind
    /// of operation the request runs; `None` when the document does not parse (async-graphql
    /// then parses it again and reports the error) or names no runnable operation.
    pub fn prepare(&self, req: &mut async_graphql::Request) -> Option<OperationType> {
        self.attach(req)
            .and_then(|doc| operation_type(&doc, req.operation_name.as_deref()))
    }

    /// Attaches the parsed document to `req` and returns it (`None`: it does not parse).
    pub fn attach(&self, req: &mut async_graphql::Request) -> Option<Arc<ExecutableDocument>> {
        let doc = match self.parsed.get(&req.query) {
            Some(doc) => doc,
            None => {
                let doc = Arc::new(async_graphql::parser::parse_query(&req.query).ok()?);
                if req.query.len() < MAX_QUERY_BYTES {
                    self.parsed.insert(req.query.clone(), doc.clone());
                }
                doc
            }
        };
        req.set_parsed_query((*doc).clone());
        Some(doc)
    }
}

/// The operation a request with `operation_name` runs in `doc`.
pub fn operation<'d>(
    doc: &'d ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    let op = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        // A lone named operation runs without being named.
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        (DocumentOperations::Multiple(_), None) => None,
    };
    op.map(|op| &op.node)
}

/// The type of the operation a request with `operation_name` runs in `doc`.
pub fn operation_type(
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<OperationType> {
    operation(doc, operation_name).map(|op| op.ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(query: &str, op: Option<&str>) -> Option<OperationType> {
        let mut req = async_graphql::Request::new(query);
        if let Some(op) = op {
            req = req.operation_name(op);
        }
        Documents::default().prepare(&mut req)
    }

    #[test]
    fn operation_kinds() {
        assert_eq!(kind("{ me { id } }", None), Some(OperationType::Query));
        assert_eq!(
            kind("query A { me { id } }", None),
            Some(OperationType::Query)
        );
        assert_eq!(kind("mutation { x }", None), Some(OperationType::Mutation));
        let both = "query A { me { id } } mutation B { x }";
        assert_eq!(kind(both, Some("A")), Some(OperationType::Query));
        assert_eq!(kind(both, Some("B")), Some(OperationType::Mutation));
        assert_eq!(kind(both, None), None);
        assert_eq!(kind("query {", None), None);
    }

    #[test]
    fn a_document_is_parsed_once_and_attached_every_time() {
        let docs = Documents::default();
        let mut a = async_graphql::Request::new("{ me { id } }");
        docs.prepare(&mut a);
        docs.parsed.run_pending_tasks();
        assert_eq!(docs.parsed.entry_count(), 1);
        let mut b = async_graphql::Request::new("{ me { id } }");
        docs.prepare(&mut b);
        docs.parsed.run_pending_tasks();
        assert_eq!(docs.parsed.entry_count(), 1);
        assert!(b.parsed_query().is_ok());
    }
}
