//! Whole responses of read-only operations, decided before any GraphQL work: kept in-process
//! beside L1 and served while nothing they were built from has been invalidated, and (the shared
//! tier) in Redis with the versions of their values, for when L1 cannot answer.
//!
//! Why: a warm month view costs no SQL and no Redis, yet resolving its ~1,500 fields and writing
//! ~66 KB of JSON is most of its time. When the same viewer sends the same request again and
//! nothing it read has changed, the answer is the same bytes, so a hit should cost about what
//! writing those bytes costs.
//!
//! The key is the viewer and the request body exactly as received (query, operation name,
//! variables, extensions), compared in full: no parse, no JSON decode, and a hash collision can
//! cost a miss but never serve another request's answer. Two spellings of one request are two
//! entries; one client always sends the same spelling.
//!
//! Why an entry is never staler than L1: while executing, the cache records, for every value it
//! hands to the request, the invalidation generation of its key taken *before* the value was
//! read ([`cal_cache::RequestStats::deps`]). A response is stored only if all of its data came
//! through the cache loaders — no error, no SQL outside them (membership lists, free/busy,
//! writes), a query operation — and it is served only while every recorded generation and the L1
//! epoch are unchanged: any invalidation of one of its keys (a local write, one heard on the bus),
//! an L1 clear or distrust ends it. That check is O(keys) atomic loads. Authorization is part of
//! the response: entries are keyed by the viewer, and the calendar summaries (members and roles)
//! it was checked against are dependencies like any other.
//!
//! Bodies are kept as [`Bytes`], written to the socket without a copy, and compressed at most
//! once per entry and encoding: the first hit that accepts gzip, br or zstd compresses the body
//! and keeps the result beside it.

use crate::auth::Viewer;
use crate::http::wire::Media;
use axum::body::Bytes;
use axum::http::HeaderValue;
use cal_cache::{Deps, TieredCache};
use moka::sync::Cache;
use prometheus::{IntCounter, IntGauge, Registry};
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How a request came: its bytes are a POST body or a GET query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Post = 0,
    Get = 1,
}

/// What identifies a response: who sent which request bytes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseKey {
    viewer: i64,
    kind: RequestKind,
    request: Bytes,
    hash: u64,
}

impl ResponseKey {
    /// `None` for requests that are never cached (no signed-in viewer).
    pub fn new(viewer: Viewer, kind: RequestKind, request: &Bytes) -> Option<Self> {
        let Viewer::User(user) = viewer else {
            return None;
        };
        // Collisions only cost a miss (the key is compared in full), so a fast hash will do.
        let hash = foldhash::fast::FixedState::with_seed(0x5eed).hash_one((
            user.get(),
            kind,
            &request[..],
        ));
        Some(Self {
            viewer: user.get(),
            kind,
            request: request.clone(),
            hash,
        })
    }
}

/// A compressed variant of a stored body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    pub fn header(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// The best encoding an `Accept-Encoding` header allows, by quality and then zstd, br,
    /// gzip (the order tower-http's compression layer uses, so that an answer from the response
    /// cache and an executed one come in the same coding); a `q=0` refuses one; `None` for
    /// identity.
    pub fn negotiate(accept: Option<&str>) -> Option<Self> {
        let accept = accept?;
        let mut best: Option<(Encoding, (u16, u8))> = None;
        // A malformed weight refuses the coding.
        for (name, q) in crate::http::wire::weighted(accept) {
            let q = q.unwrap_or(0);
            if q == 0 {
                continue;
            }
            let candidate = match name.as_str() {
                "zstd" => (Encoding::Zstd, (q, 3)),
                "br" => (Encoding::Brotli, (q, 2)),
                "gzip" | "x-gzip" => (Encoding::Gzip, (q, 1)),
                _ => continue,
            };
            if best.is_none_or(|(_, rank)| candidate.1 > rank) {
                best = Some(candidate);
            }
        }
        best.map(|(e, _)| e)
    }

    /// Compresses `body` (at the encoding's best-ratio setting that still runs in a few ms for
    /// a month view: it is done once per stored entry).
    pub fn compress(self, body: &[u8]) -> Option<Bytes> {
        use std::io::Write;
        let out = match self {
            Encoding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                e.write_all(body).ok()?;
                e.finish().ok()?
            }
            Encoding::Brotli => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    w.write_all(body).ok()?;
                }
                out
            }
            Encoding::Zstd => zstd::bulk::compress(body, 6).ok()?,
        };
        Some(Bytes::from(out))
    }
}

/// A stored response.
pub struct Stored {
    key: ResponseKey,
    deps: Deps,
    /// The operation's metrics label (see [`crate::observe`]), reported again on every hit.
    pub operation: String,
    /// `{"data":…}`: no errors and no extensions.
    pub body: Bytes,
    gzip: OnceLock<Option<Bytes>>,
    brotli: OnceLock<Option<Bytes>>,
    zstd: OnceLock<Option<Bytes>>,
    /// The entity tag per media type (see `http/conditional.rs`), computed on first use.
    etags: [OnceLock<HeaderValue>; 2],
}

impl Stored {
    /// The body's entity tag for `media`, made by `compute` on first use and kept.
    pub fn etag(&self, media: Media, compute: impl FnOnce() -> HeaderValue) -> HeaderValue {
        self.etags[media as usize].get_or_init(compute).clone()
    }

    /// How many keys this response was built from.
    pub fn dependencies(&self) -> usize {
        self.deps.len()
    }

    /// The body in `encoding`, compressed on first use and kept.
    pub fn encoded(&self, encoding: Encoding) -> Option<Bytes> {
        let slot = match encoding {
            Encoding::Gzip => &self.gzip,
            Encoding::Brotli => &self.brotli,
            Encoding::Zstd => &self.zstd,
        };
        slot.get_or_init(|| encoding.compress(&self.body)).clone()
    }

    fn weight(&self) -> u32 {
        let compressed: usize = [&self.gzip, &self.brotli, &self.zstd]
            .iter()
            .filter_map(|s| s.get().and_then(|b| b.as_ref()).map(Bytes::len))
            .sum();
        // A compressed variant added after insertion is not re-weighed: allow for one up front
        // (month views compress about 8x).
        let allowance = self.body.len() / 6;
        u32::try_from(
            self.body.len()
                + compressed.max(allowance)
                + self.key.request.len()
                + self.operation.len()
                + self.deps.weight()
                + OVERHEAD,
        )
        .unwrap_or(u32::MAX)
    }
}

/// The response cache's counters, registered once per registry.
#[derive(Clone)]
pub struct ResponseMetrics {
    hits: IntCounter,
    misses: IntCounter,
    weighted: IntGauge,
}

impl ResponseMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let hits = IntCounter::new(
            "cal_cache_response_hits_total",
            "Responses served whole because nothing they were built from was invalidated",
        )?;
        let misses = IntCounter::new(
            "cal_cache_response_misses_total",
            "Cacheable requests that had to be executed (no entry, or a dependency changed)",
        )?;
        let weighted = IntGauge::new(
            "cal_cache_response_weighted_bytes",
            "Memory the whole-response cache holds by its weigher (bodies, compressed copies, keys, dependencies)",
        )?;
        registry.register(Box::new(hits.clone()))?;
        registry.register(Box::new(misses.clone()))?;
        registry.register(Box::new(weighted.clone()))?;
        Ok(Self {
            hits,
            misses,
            weighted,
        })
    }
}

/// The response cache. Cheap to clone.
#[derive(Clone)]
pub struct ResponseCache {
    entries: Cache<u64, Arc<Stored>>,
    metrics: ResponseMetrics,
}

/// Per-entry bookkeeping besides bodies, request and dependencies (this struct, moka's entry).
const OVERHEAD: usize = 512;

impl ResponseCache {
    /// The response cache beside `cache`'s L1, bounded at `max_bytes`; `None` when L1 is off or
    /// the bound is 0 (or its metrics could not be registered in the cache's registry). The
    /// metrics are registered either way, so `/metrics` shows the same series in every mode.
    pub fn beside(cache: &TieredCache, max_bytes: u64) -> Option<Self> {
        let metrics = ResponseMetrics::register(cache.registry())
            .inspect_err(|e| tracing::warn!(error = %e, "response cache metrics not registered"))
            .ok()?;
        let ttl = cache.l1_ttl().filter(|_| max_bytes > 0)?;
        Some(Self::new(max_bytes, ttl, metrics))
    }

    /// A cache of at most `max_bytes`, whose entries live at most `ttl` (L1's).
    pub fn new(max_bytes: u64, ttl: Duration, metrics: ResponseMetrics) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &u64, v: &Arc<Stored>| v.weight())
            .time_to_live(ttl)
            .build();
        Self { entries, metrics }
    }

    /// The stored response for `key`, if nothing it was built from has been invalidated since.
    /// Counts a hit; a caller that then executes a cacheable request counts the miss
    /// ([`ResponseCache::missed`]), since only it knows whether the request was cacheable.
    pub fn lookup(&self, key: &ResponseKey, cache: &TieredCache) -> Option<Arc<Stored>> {
        // Debug level: never created without a trace exporter or RUST_LOG=debug.
        let span = tracing::debug_span!(
            "cache.response",
            otel.name = "cache response",
            cache.tier = "response",
            cache.hit = tracing::field::Empty
        );
        let found = match self.entries.get(&key.hash) {
            Some(s) if s.key == *key => {
                if cache.deps_current(&s.deps) {
                    Some(s)
                } else {
                    self.entries.invalidate(&key.hash);
                    None
                }
            }
            _ => None,
        };
        if found.is_some() {
            self.metrics.hits.inc();
        }
        span.record("cache.hit", found.is_some());
        found
    }

    /// A cacheable request found no current entry and was executed.
    pub fn missed(&self) {
        self.metrics.misses.inc();
    }

    /// Stores a query's response built only from cached values with dependencies `deps`.
    pub fn store(&self, key: ResponseKey, deps: Deps, operation: String, body: Bytes) {
        let hash = key.hash;
        // The body was written into a growing buffer, whose capacity can be up to twice its
        // length, and `Bytes` keeps all of it. A stored copy of exactly its length is what the
        // weigher counts (one memcpy per stored response).
        let body = Bytes::copy_from_slice(&body);
        self.entries.insert(
            hash,
            Arc::new(Stored {
                key,
                deps,
                operation,
                body,
                gzip: OnceLock::new(),
                brotli: OnceLock::new(),
                zstd: OnceLock::new(),
                etags: Default::default(),
            }),
        );
    }

    /// Bytes held (moka's weighted size, after pending maintenance); also sets the gauge.
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        let size = self.entries.weighted_size();
        self.metrics
            .weighted
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        size
    }
}

/// How long a response lives in the shared tier at most (validity is checked on every read; the
/// TTL only bounds Redis memory).
const SHARED_TTL: Duration = Duration::from_secs(60);

fn shared_key(key: &ResponseKey) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key.viewer.to_be_bytes());
    h.update([key.kind as u8]);
    h.update(&key.request);
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("v3:response:{hex}")
}

/// The stored body (and operation label) for `key` from the shared (Redis) tier, if every value
/// it was built from is still at the version it was built from. The stored viewer and request
/// are compared in full.
pub async fn shared_lookup(cache: &TieredCache, key: &ResponseKey) -> Option<(String, Bytes)> {
    let blob = cache.get_derived(&shared_key(key)).await?;
    let (viewer, kind, request, operation, body): (i64, u8, &[u8], &str, &[u8]) =
        postcard::from_bytes(&blob).ok()?;
    (viewer == key.viewer && kind == key.kind as u8 && request == key.request.as_ref())
        .then(|| (operation.to_owned(), Bytes::copy_from_slice(body)))
}

/// Stores `body` for `key` in the shared tier with the versions of the values it was built from.
pub async fn shared_store(
    cache: &TieredCache,
    key: &ResponseKey,
    versions: &[(String, i64)],
    operation: &str,
    body: &[u8],
) {
    let Ok(blob) = postcard::to_allocvec(&(
        key.viewer,
        key.kind as u8,
        key.request.as_ref(),
        operation,
        body,
    )) else {
        return;
    };
    cache
        .put_derived(&shared_key(key), versions, &blob, SHARED_TTL)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use cal_domain::UserId;

    #[test]
    fn anonymous_and_invalid_viewers_are_not_cached() {
        let body = Bytes::from_static(b"{\"query\":\"{ me { id } }\"}");
        assert!(ResponseKey::new(Viewer::Anonymous, RequestKind::Post, &body).is_none());
        assert!(ResponseKey::new(Viewer::Invalid, RequestKind::Get, &body).is_none());
    }

    #[test]
    fn viewer_and_request_bytes_are_the_key() {
        let a = Bytes::from_static(b"{\"query\":\"{ me { id } }\"}");
        let b = Bytes::from_static(b"{\"query\": \"{ me { id } }\"}");
        let k = |u, body: &Bytes| {
            ResponseKey::new(Viewer::User(UserId::new(u)), RequestKind::Post, body).unwrap()
        };
        assert_eq!(k(1, &a), k(1, &a));
        let get = ResponseKey::new(Viewer::User(UserId::new(1)), RequestKind::Get, &a).unwrap();
        assert_ne!(k(1, &a), get, "a GET is not a POST of the same bytes");
        assert_ne!(shared_key(&k(1, &a)), shared_key(&get));
        assert_ne!(k(1, &a), k(2, &a));
        assert_ne!(k(1, &a), k(1, &b), "another spelling is another entry");
        assert_ne!(shared_key(&k(1, &a)), shared_key(&k(2, &a)));
    }

    #[test]
    fn accept_encoding_negotiation() {
        assert_eq!(Encoding::negotiate(None), None);
        assert_eq!(Encoding::negotiate(Some("identity")), None);
        assert_eq!(Encoding::negotiate(Some("gzip")), Some(Encoding::Gzip));
        assert_eq!(
            Encoding::negotiate(Some("gzip, deflate, br")),
            Some(Encoding::Brotli)
        );
        assert_eq!(
            Encoding::negotiate(Some("gzip, br;q=0, zstd")),
            Some(Encoding::Zstd)
        );
        assert_eq!(Encoding::negotiate(Some("br;q=0")), None);
        assert_eq!(
            Encoding::negotiate(Some("zstd;q=0.5, br")),
            Some(Encoding::Brotli),
            "quality first"
        );
        assert_eq!(
            Encoding::negotiate(Some("gzip;q=0.8, deflate")),
            Some(Encoding::Gzip)
        );
    }

    #[test]
    fn every_encoding_round_trips() {
        use std::io::Read;
        let body = br#"{"data":{"calendar":{"id":"1","name":"Team"}}}"#.repeat(50);
        let gz = Encoding::Gzip.compress(&body).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
        let br = Encoding::Brotli.compress(&body).unwrap();
        let mut out = Vec::new();
        brotli::Decompressor::new(&br[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
        let zs = Encoding::Zstd.compress(&body).unwrap();
        assert_eq!(zstd::bulk::decompress(&zs, body.len()).unwrap(), body);
        assert!(gz.len() < body.len() / 4 && br.len() < body.len() / 4);
    }
}
