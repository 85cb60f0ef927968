//! Whole responses of read-only operations, kept in-process beside L1 and served only while every
//! L1 entry they were built from is still in L1, unchanged.
//!
//! Why: a warm month view costs no SQL and no Redis, yet resolving its ~1,500 fields and writing
//! ~66 KB of JSON is most of its time. When the same viewer asks the same operation with the same
//! variables again, and nothing it read has changed, the answer is the same bytes.
//!
//! Why it is never staler than L1: while executing, the cache records every L1 entry (key and
//! stamp) whose value it handed to the request ([`cal_cache::RequestStats::deps`]). A response is
//! stored only if *all* of its data came that way — no error, no SQL statement outside the cache
//! loaders (membership lists, free/busy, writes), only query operations — and it is served only
//! if every recorded entry is still in L1 with the same stamp. An invalidation (local or from the
//! bus), an L1 clear, an expiry or a refill of any of them changes that, so the response is
//! rebuilt. Authorization is part of the response: entries are keyed by the viewer, and the
//! calendar summaries (members and roles) it was checked against are dependencies like any other.
//!
//! Keys are compared in full (viewer, query text, operation name, variables), never by hash
//! alone, so a hash collision can cost a miss but never serve another request's answer.

use crate::auth::Viewer;
use async_graphql::parser::types::{DocumentOperations, OperationType};
use axum::body::Bytes;
use axum::http::HeaderMap;
use cal_cache::TieredCache;
use moka::future::Cache;
use prometheus::{IntCounter, Registry};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// What identifies a response: who asked what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Asked {
    viewer: Option<i64>,
    query: String,
    operation: Option<String>,
    /// The variables as JSON text.
    variables: String,
}

impl Asked {
    /// `None` for requests that are never cached (no signed-in viewer, variables that do not
    /// serialize).
    pub fn of(viewer: Viewer, req: &async_graphql::Request) -> Option<Self> {
        let Viewer::User(user) = viewer else {
            return None;
        };
        Some(Self {
            viewer: Some(user.0),
            query: req.query.clone(),
            operation: req.operation_name.clone(),
            variables: serde_json::to_string(&req.variables).ok()?,
        })
    }

    fn hash_key(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// Whether the operation this request runs is a query (not a mutation or subscription).
    pub fn is_query(&self) -> bool {
        let Ok(doc) = async_graphql::parser::parse_query(&self.query) else {
            return false;
        };
        let op = match (&doc.operations, &self.operation) {
            (DocumentOperations::Single(op), _) => Some(op),
            (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str()),
            // A lone named operation runs without being named.
            (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
            (DocumentOperations::Multiple(_), None) => None,
        };
        op.is_some_and(|op| op.node.ty == OperationType::Query)
    }
}

/// How long a response lives in the shared tier at most (validity is checked on every read; the
/// TTL only bounds Redis memory).
const SHARED_TTL: Duration = Duration::from_secs(60);

fn shared_key(asked: &Asked) -> String {
    use sha2::{Digest, Sha256};
    let material = serde_json::to_vec(asked).expect("asked serializes");
    let digest = Sha256::digest(&material);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1:response:{hex}")
}

/// The stored body for `asked` from the shared (Redis) tier, if every value it was built from is
/// still at the version it was built from. The stored `Asked` is compared in full.
pub async fn shared_lookup(cache: &TieredCache, asked: &Asked) -> Option<Bytes> {
    let blob = cache.get_derived(&shared_key(asked)).await?;
    // `{asked as JSON}\n{body}`: JSON text never holds a raw newline.
    let split = blob.iter().position(|&b| b == b'\n')?;
    let stored: Asked = serde_json::from_slice(&blob[..split]).ok()?;
    (stored == *asked).then(|| Bytes::copy_from_slice(&blob[split + 1..]))
}

/// Stores `body` for `asked` in the shared tier with the versions of the values it was built from.
pub async fn shared_store(
    cache: &TieredCache,
    asked: &Asked,
    versions: &[(String, i64)],
    body: &[u8],
) {
    if !asked.is_query() {
        return;
    }
    let Ok(mut blob) = serde_json::to_vec(asked) else {
        return;
    };
    blob.push(b'\n');
    blob.extend_from_slice(body);
    cache
        .put_derived(&shared_key(asked), versions, &blob, SHARED_TTL)
        .await;
}

/// The headers of a GraphQL response (as async-graphql-axum sets them).
pub fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/graphql-response+json"),
    );
    h
}

/// A stored response.
pub struct Stored {
    asked: Asked,
    deps: Vec<(String, u64)>,
    pub headers: HeaderMap,
    /// `{"data":…}`: no errors and no extensions.
    pub body: Bytes,
}

impl Stored {
    /// How many L1 entries this response was built from.
    pub fn dependencies(&self) -> usize {
        self.deps.len()
    }
}

/// The response cache's counters, registered once per registry.
#[derive(Clone)]
pub struct ResponseMetrics {
    hits: IntCounter,
    misses: IntCounter,
}

impl ResponseMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let hits = IntCounter::new(
            "cal_cache_response_hits_total",
            "Responses served whole because every L1 entry they were built from is unchanged",
        )?;
        let misses = IntCounter::new(
            "cal_cache_response_misses_total",
            "Cacheable requests that had to be executed (no entry, or a dependency changed)",
        )?;
        registry.register(Box::new(hits.clone()))?;
        registry.register(Box::new(misses.clone()))?;
        Ok(Self { hits, misses })
    }
}

/// The response cache. Cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    entries: Cache<u64, Arc<Stored>>,
    metrics: ResponseMetrics,
}

/// Per-entry bookkeeping besides body, query and dependency keys.
const OVERHEAD: usize = 256;

impl ResponseCache {
    /// A cache of at most `max_bytes`, whose entries live at most `ttl` (L1's: dependencies
    /// expire then anyway).
    pub fn new(max_bytes: u64, ttl: Duration, metrics: ResponseMetrics) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &u64, v: &Arc<Stored>| {
                let deps: usize = v.deps.iter().map(|(k, _)| k.len() + 8).sum();
                u32::try_from(v.body.len() + v.asked.query.len() + deps + OVERHEAD)
                    .unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Self { entries, metrics }
    }

    /// The stored response for `asked`, if every L1 entry it was built from is still current.
    pub async fn lookup(&self, asked: &Asked, l1: &TieredCache) -> Option<Arc<Stored>> {
        let span = tracing::debug_span!(
            "cache.response",
            otel.name = "cache response",
            cache.tier = "response",
            cache.hit = tracing::field::Empty
        );
        let key = asked.hash_key();
        let found = match self.entries.get(&key).await {
            Some(s) if s.asked == *asked => {
                if l1.deps_current(&s.deps).await {
                    Some(s)
                } else {
                    self.entries.invalidate(&key).await;
                    None
                }
            }
            _ => None,
        };
        match &found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        }
        span.record("cache.hit", found.is_some());
        found
    }

    /// Stores a response built only from the L1 entries `deps`, if `asked` is a query.
    pub async fn store(
        &self,
        asked: Asked,
        deps: Vec<(String, u64)>,
        headers: HeaderMap,
        body: Bytes,
    ) {
        if !asked.is_query() {
            return;
        }
        let key = asked.hash_key();
        self.entries
            .insert(
                key,
                Arc::new(Stored {
                    asked,
                    deps,
                    headers,
                    body,
                }),
            )
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cal_domain::UserId;

    fn asked(query: &str, op: Option<&str>) -> Asked {
        let mut req = async_graphql::Request::new(query);
        if let Some(op) = op {
            req = req.operation_name(op);
        }
        Asked::of(Viewer::User(UserId(1)), &req).unwrap()
    }

    #[test]
    fn only_queries_are_cacheable() {
        assert!(asked("{ me { id } }", None).is_query());
        assert!(asked("query A { me { id } }", None).is_query());
        assert!(!asked("mutation { x }", None).is_query());
        let both = "query A { me { id } } mutation B { x }";
        assert!(asked(both, Some("A")).is_query());
        assert!(!asked(both, Some("B")).is_query());
        assert!(!asked(both, None).is_query());
        assert!(!asked("query {", None).is_query());
    }

    #[test]
    fn anonymous_and_invalid_viewers_are_not_cached() {
        let req = async_graphql::Request::new("{ me { id } }");
        assert!(Asked::of(Viewer::Anonymous, &req).is_none());
        assert!(Asked::of(Viewer::Invalid, &req).is_none());
    }

    #[test]
    fn viewer_and_variables_are_part_of_the_key() {
        let q = "query($id: ID!) { event(id: $id) { id } }";
        let vars = |id: &str| async_graphql::Variables::from_json(serde_json::json!({ "id": id }));
        let a = Asked::of(
            Viewer::User(UserId(1)),
            &async_graphql::Request::new(q).variables(vars("1")),
        );
        let b = Asked::of(
            Viewer::User(UserId(2)),
            &async_graphql::Request::new(q).variables(vars("1")),
        );
        let c = Asked::of(
            Viewer::User(UserId(1)),
            &async_graphql::Request::new(q).variables(vars("2")),
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            Asked::of(
                Viewer::User(UserId(1)),
                &async_graphql::Request::new(q).variables(vars("1"))
            )
        );
    }
}
