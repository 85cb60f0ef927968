//! Persisted queries: a client sends the SHA-256 of a document instead of the document.
//!
//! - **Automatic** (Apollo's APQ protocol, the default): `extensions.persistedQuery` is
//!   `{"version": 1, "sha256Hash": "<64 hex>"}`. Without `query`, the document registered under
//!   that hash runs, or the answer is `PersistedQueryNotFound` (code `PERSISTED_QUERY_NOT_FOUND`)
//!   and the client sends it again with the document. With `query`, the hash must be the
//!   document's (`PERSISTED_QUERY_HASH_MISMATCH`); a document that parses is registered in L1 and
//!   in Redis (`apq:<hash>` under the cache prefix), so one instance's registration serves all.
//! - **Safelist**: only the operations of a manifest file in Apollo's persisted-query manifest
//!   format run, by id (`PERSISTED_QUERY_NOT_IN_LIST` otherwise) or by their exact text
//!   (`QUERY_NOT_IN_SAFELIST` otherwise). Nothing is registered.
//! - **Off**: a persisted query answers `PERSISTED_QUERY_NOT_SUPPORTED` (Apollo's client then
//!   stops sending hashes).

use crate::http::coded;
use crate::http::wire::bad_request;
use crate::observe::document_hash;
use async_graphql::{Request, ServerError};
use cal_cache::TieredCache;
use moka::sync::Cache;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The request extension that names a persisted query.
pub const EXTENSION: &str = "persistedQuery";

/// How long a registered document stays in Redis after its registration.
const REDIS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Registered documents kept in process, by total text size.
const L1_BYTES: u64 = 16 * 1024 * 1024;

/// Which persisted queries the endpoint accepts.
#[derive(Debug, Clone, Default)]
pub enum PersistedMode {
    /// Automatic persisted queries (registration by any client).
    #[default]
    Automatic,
    /// Only the manifest's operations run.
    Safelist(Arc<Manifest>),
    /// No persisted queries.
    Off,
}

/// An Apollo persisted-query manifest (`format: "apollo-persisted-query-manifest"`, version 1).
#[derive(Debug)]
pub struct Manifest {
    by_id: HashMap<String, Arc<str>>,
    /// The same documents by text: a request that sends its text is checked in O(1).
    bodies: std::collections::HashSet<Arc<str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    format: String,
    version: u32,
    operations: Vec<ManifestOperation>,
}

#[derive(Deserialize)]
struct ManifestOperation {
    id: String,
    body: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl Manifest {
    /// Parses a manifest file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ManifestFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.format != "apollo-persisted-query-manifest" {
            return Err(format!(
                "`format` is {:?}, expected \"apollo-persisted-query-manifest\"",
                file.format
            ));
        }
        if file.version != 1 {
            return Err(format!("`version` is {}, expected 1", file.version));
        }
        let mut by_id = HashMap::new();
        let mut bodies = std::collections::HashSet::new();
        for op in file.operations {
            if let Some(kind) = op.kind.as_deref()
                && !matches!(kind, "query" | "mutation" | "subscription")
            {
                return Err(format!("operation {:?} has type {kind:?}", op.id));
            }
            if async_graphql::parser::parse_query(&op.body).is_err() {
                return Err(format!(
                    "operation {:?} ({}) does not parse",
                    op.id,
                    op.name.as_deref().unwrap_or("unnamed")
                ));
            }
            let body: Arc<str> = op.body.into();
            if by_id.insert(op.id.clone(), body.clone()).is_some() {
                return Err(format!("operation id {:?} appears twice", op.id));
            }
            bodies.insert(body);
        }
        Ok(Self { by_id, bodies })
    }

    /// Reads and parses a manifest file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Self::parse(&text)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The persisted-query store of one instance. Cheap to clone.
#[derive(Clone)]
pub struct PersistedQueries {
    mode: PersistedMode,
    /// Registered documents by hash (automatic mode).
    local: Cache<String, Arc<str>>,
}

/// A document to register once it has been found to parse.
pub struct Registration {
    hash: String,
    query: Arc<str>,
}

impl PersistedQueries {
    pub fn new(mode: PersistedMode) -> Self {
        Self {
            mode,
            local: Cache::builder()
                .max_capacity(L1_BYTES)
                .weigher(|k: &String, v: &Arc<str>| {
                    u32::try_from(k.len() + v.len() + 64).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Fills in `req`'s document from its persisted-query extension, or checks it against the
    /// hash and the safelist. `Ok(Some(_))`: a new document to [`register`](Self::register) once
    /// it parses.
    pub async fn resolve(
        &self,
        cache: &TieredCache,
        req: &mut Request,
    ) -> Result<Option<Registration>, ServerError> {
        let hash = match req.extensions.get(EXTENSION) {
            None => None,
            Some(_) if matches!(self.mode, PersistedMode::Off) => {
                return Err(coded(
                    "PERSISTED_QUERY_NOT_SUPPORTED",
                    "PersistedQueryNotSupported",
                ));
            }
            Some(ext) => Some(requested_hash(ext)?),
        };
        if let Some(hash) = &hash {
            if req.query.is_empty() {
                req.query = self.find(cache, hash).await?.to_string();
                return Ok(None);
            }
            if document_hash(&req.query) != *hash {
                return Err(coded(
                    "PERSISTED_QUERY_HASH_MISMATCH",
                    "provided sha256Hash does not match the query",
                ));
            }
        }
        match (&self.mode, hash) {
            (PersistedMode::Safelist(m), _) if !m.bodies.contains(req.query.as_str()) => {
                Err(coded(
                    "QUERY_NOT_IN_SAFELIST",
                    "this document is not in the safelist",
                ))
            }
            (PersistedMode::Safelist(_), _) | (_, None) => Ok(None),
            (_, Some(hash)) if self.local.contains_key(&hash) => Ok(None),
            (_, Some(hash)) => Ok(Some(Registration {
                hash,
                query: req.query.as_str().into(),
            })),
        }
    }

    /// The document registered (or listed) under `hash`.
    async fn find(&self, cache: &TieredCache, hash: &str) -> Result<Arc<str>, ServerError> {
        match &self.mode {
            PersistedMode::Safelist(m) => m.by_id.get(hash).cloned().ok_or_else(|| {
                coded(
                    "PERSISTED_QUERY_NOT_IN_LIST",
                    "this persisted query id is not in the safelist",
                )
            }),
            _ => self
                .lookup(cache, hash)
                .await
                .ok_or_else(|| coded("PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound")),
        }
    }

    /// Keeps a document that parsed under its hash, here and in Redis.
    pub async fn register(&self, cache: &TieredCache, registration: Registration) {
        let Registration { hash, query } = registration;
        cache
            .put_derived(&redis_key(&hash), &[], query.as_bytes(), REDIS_TTL)
            .await;
        self.local.insert(hash, query);
    }

    async fn lookup(&self, cache: &TieredCache, hash: &str) -> Option<Arc<str>> {
        if let Some(body) = self.local.get(hash) {
            return Some(body);
        }
        let blob = cache.get_derived(&redis_key(hash)).await?;
        let body: Arc<str> = String::from_utf8(blob).ok()?.into();
        // What another instance registered: check it before trusting it.
        if document_hash(&body) != hash {
            return None;
        }
        self.local.insert(hash.to_owned(), body.clone());
        Some(body)
    }
}

fn redis_key(hash: &str) -> String {
    format!("apq:{hash}")
}

/// The hash `{"version": 1, "sha256Hash": …}` names (lower-cased).
fn requested_hash(ext: &async_graphql::Value) -> Result<String, ServerError> {
    let async_graphql::Value::Object(obj) = ext else {
        return Err(bad_request("`extensions.persistedQuery` must be an object"));
    };
    let version = obj.get("version");
    if version != Some(&async_graphql::Value::from(1)) {
        return Err(bad_request(
            "unsupported persisted query version (`extensions.persistedQuery.version` must be 1)",
        ));
    }
    match obj.get("sha256Hash") {
        Some(async_graphql::Value::String(h))
            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(h.to_ascii_lowercase())
        }
        _ => Err(bad_request(
            "`extensions.persistedQuery.sha256Hash` must be 64 hexadecimal digits",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "query Me { me { id } }";

    /// A cache without Redis: registrations live in the store's own L1 only.
    async fn no_redis() -> TieredCache {
        TieredCache::new(Default::default(), &prometheus::Registry::new())
            .await
            .unwrap()
    }

    fn with_ext(query: &str, hash: &str) -> Request {
        let mut r = Request::new(query);
        r.extensions.0.insert(
            EXTENSION.into(),
            async_graphql::Value::from_json(
                serde_json::json!({ "version": 1, "sha256Hash": hash }),
            )
            .unwrap(),
        );
        r
    }

    fn code(e: &ServerError) -> String {
        match e.extensions.as_ref().and_then(|x| x.get("code")) {
            Some(async_graphql::Value::String(s)) => s.clone(),
            other => panic!("no code: {other:?}"),
        }
    }

    #[test]
    fn manifests_are_apollo_manifests() {
        let ok = format!(
            r#"{{"format":"apollo-persisted-query-manifest","version":1,"operations":[{{"id":"{}","name":"Me","type":"query","body":"{DOC}"}}]}}"#,
            document_hash(DOC)
        );
        let m = Manifest::parse(&ok).unwrap();
        assert_eq!(m.len(), 1);
        for bad in [
            r#"{"format":"other","version":1,"operations":[]}"#,
            r#"{"format":"apollo-persisted-query-manifest","version":2,"operations":[]}"#,
            r#"{"format":"apollo-persisted-query-manifest","version":1,"operations":[{"id":"a","body":"{"}]}"#,
            r#"{"format":"apollo-persisted-query-manifest","version":1,"operations":[{"id":"a","body":"{ a }"},{"id":"a","body":"{ b }"}]}"#,
            r#"{"format":"apollo-persisted-query-manifest","version":1,"operations":[{"id":"a","body":"{ a }","type":"fragment"}]}"#,
            "[]",
        ] {
            assert!(Manifest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_extensions_are_bad_requests() {
        for ext in [
            serde_json::json!("string"),
            serde_json::json!({ "version": 2, "sha256Hash": document_hash(DOC) }),
            serde_json::json!({ "version": 1, "sha256Hash": "short" }),
            serde_json::json!({ "version": 1 }),
        ] {
            let v = async_graphql::Value::from_json(ext.clone()).unwrap();
            let e = requested_hash(&v).expect_err(&ext.to_string());
            assert_eq!(code(&e), "BAD_REQUEST");
        }
        let upper = document_hash(DOC).to_ascii_uppercase();
        let v = async_graphql::Value::from_json(
            serde_json::json!({ "version": 1, "sha256Hash": upper }),
        )
        .unwrap();
        assert_eq!(requested_hash(&v).unwrap(), document_hash(DOC));
    }

    #[tokio::test]
    async fn automatic_mode_registers_checks_and_finds_documents() {
        let cache = no_redis().await;
        let pq = PersistedQueries::new(PersistedMode::Automatic);
        let hash = document_hash(DOC);
        let mut unknown = with_ext("", &hash);
        let e = pq.resolve(&cache, &mut unknown).await.err().unwrap();
        assert_eq!(code(&e), "PERSISTED_QUERY_NOT_FOUND");
        assert_eq!(e.message, "PersistedQueryNotFound");
        let mut wrong = with_ext("query Other { me { id } }", &hash);
        let e = pq.resolve(&cache, &mut wrong).await.err().unwrap();
        assert_eq!(code(&e), "PERSISTED_QUERY_HASH_MISMATCH");
        let mut full = with_ext(DOC, &hash);
        let reg = pq.resolve(&cache, &mut full).await.unwrap().expect("new");
        pq.register(&cache, reg).await;
        let mut again = with_ext("", &hash);
        assert!(pq.resolve(&cache, &mut again).await.unwrap().is_none());
        assert_eq!(again.query, DOC);
        let mut plain = Request::new("{ anything }");
        assert!(pq.resolve(&cache, &mut plain).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn safelist_mode_runs_only_listed_documents() {
        let cache = no_redis().await;
        let id = document_hash(DOC);
        let manifest = Manifest::parse(&format!(
            r#"{{"format":"apollo-persisted-query-manifest","version":1,"operations":[{{"id":"{id}","name":"Me","type":"query","body":"{DOC}"}}]}}"#
        ))
        .unwrap();
        let pq = PersistedQueries::new(PersistedMode::Safelist(Arc::new(manifest)));
        let mut by_id = with_ext("", &id);
        assert!(pq.resolve(&cache, &mut by_id).await.unwrap().is_none());
        assert_eq!(by_id.query, DOC);
        let mut by_text = Request::new(DOC);
        assert!(pq.resolve(&cache, &mut by_text).await.is_ok());
        let mut other = Request::new("{ __typename }");
        let e = pq.resolve(&cache, &mut other).await.err().unwrap();
        assert_eq!(code(&e), "QUERY_NOT_IN_SAFELIST");
        let mut unknown_id = with_ext("", &document_hash("{ __typename }"));
        let e = pq.resolve(&cache, &mut unknown_id).await.err().unwrap();
        assert_eq!(code(&e), "PERSISTED_QUERY_NOT_IN_LIST");
        let q = "{ __typename }";
        let mut register = with_ext(q, &document_hash(q));
        let e = pq.resolve(&cache, &mut register).await.err().unwrap();
        assert_eq!(code(&e), "QUERY_NOT_IN_SAFELIST", "no registration");
    }

    #[tokio::test]
    async fn off_mode_refuses_hashes() {
        let cache = no_redis().await;
        let pq = PersistedQueries::new(PersistedMode::Off);
        let mut r = with_ext(DOC, &document_hash(DOC));
        let e = pq.resolve(&cache, &mut r).await.err().unwrap();
        assert_eq!(code(&e), "PERSISTED_QUERY_NOT_SUPPORTED");
    }
}
