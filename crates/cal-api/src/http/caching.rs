//! Step 2 of a GraphQL request and the end of step 5: the whole-response caches' decisions, so
//! that [`super::serve`] only asks "is there an answer?" and "keep this one".
//!
//! [`Caching::plan`] decides, before anything is parsed, which response caches this request may
//! use: the in-process one (`response_cache.rs`) while L1 is trusted and the caller presented no
//! consistency token this instance has yet to apply, and otherwise the shared tier in Redis. The
//! key is the viewer and the request bytes; a batch and a request without a signed-in viewer
//! have none. [`Caching::lookup`] answers a hit. Once the request is decoded,
//! [`Caching::executing`] narrows the plan to queries (counting the miss), and
//! [`Caching::store`] keeps an answer built only from cached values.

use super::{Caller, Incoming, cached_response, kept_etag, with_extensions, zero_cost};
use crate::response_cache::{self, RequestKind, ResponseCache, ResponseKey};
use crate::tiers::Tiers;
use axum::body::Bytes;
use axum::response::Response;
use cal_cache::{RequestStats, TieredCache};

/// Where a cacheable answer may be kept.
struct Keep {
    key: ResponseKey,
    /// The in-process response cache (L1 in use for this request).
    local: bool,
    /// The shared tier in Redis (L1 off, distrusted or bypassed).
    shared: bool,
}

/// What one request may do with the response caches.
pub(super) struct Caching<'a> {
    /// The in-process response cache, when this request may use it.
    responses: Option<&'a ResponseCache>,
    keep: Option<Keep>,
}

impl<'a> Caching<'a> {
    /// The caches `caller`'s request may read and fill, and its key.
    pub fn plan(
        tiers: &Tiers,
        responses: Option<&'a ResponseCache>,
        caller: &Caller,
        incoming: &Incoming,
    ) -> Self {
        let responses = responses.filter(|_| !caller.past_l1 && !tiers.cache.l1_distrusted());
        // With L1 in use, executing from L1 entries is what keeps the in-process cache filled,
        // so the shared tier stays out of the way; it serves when L1 cannot answer.
        let shared = tiers.cache.has_l2() && responses.is_none();
        // A batch (a JSON array) is never kept.
        let key = match incoming {
            Incoming::Post(body) if body.first() != Some(&b'[') => {
                ResponseKey::new(caller.viewer, RequestKind::Post, body)
            }
            Incoming::Post(_) => None,
            Incoming::Get(raw) => ResponseKey::new(
                caller.viewer,
                RequestKind::Get,
                &Bytes::copy_from_slice(raw.as_bytes()),
            ),
        };
        let keep = key.map(|key| Keep {
            key,
            local: responses.is_some(),
            shared,
        });
        Self { responses, keep }
    }

    /// A kept answer that is still current: the in-process one, else the shared tier's.
    pub async fn lookup(&self, cache: &TieredCache, caller: &Caller) -> Option<Response> {
        let keep = self.keep.as_ref()?;
        let media = caller.media;
        if let Some(hit) = self.responses.and_then(|r| r.lookup(&keep.key, cache)) {
            crate::observe::cached(&hit.operation);
            let tag = hit.etag(media, || kept_etag(media, &hit.body));
            return Some(cached_response(
                media,
                tag,
                hit.body.clone(),
                caller.encoding.and_then(|e| Some((e, hit.encoded(e)?))),
                hit.dependencies(),
                caller.debug,
            ));
        }
        if keep.shared
            && let Some((operation, body)) = response_cache::shared_lookup(cache, &keep.key).await
        {
            crate::observe::cached(&operation);
            let tag = kept_etag(media, &body);
            return Some(cached_response(media, tag, body, None, 0, caller.debug));
        }
        None
    }

    /// The plan for an executed request: only a query's answer may be kept. Counts the
    /// in-process cache's miss, and has the cache record the versions the shared tier checks.
    pub fn executing(self, query_only: bool, cache_stats: &RequestStats) -> Self {
        let keep = self.keep.filter(|k| query_only && (k.local || k.shared));
        if let (Some(_), Some(responses)) = (&keep, self.responses) {
            responses.missed();
        }
        if keep.as_ref().is_some_and(|k| k.shared) {
            cache_stats.track_versions();
        }
        Self {
            responses: self.responses,
            keep,
        }
    }

    /// The in-process response cache this request uses, if any.
    pub fn responses(&self) -> Option<&'a ResponseCache> {
        self.responses
    }

    /// Whether an answer of this request may be kept at all.
    pub fn keeps(&self) -> bool {
        self.keep.is_some()
    }

    /// Keeps `body` (`{"data":…}`, built only from cached values) in the caches the plan names.
    pub async fn store(&self, cache: &TieredCache, cache_stats: &RequestStats, body: &Bytes) {
        let Some(keep) = &self.keep else {
            return;
        };
        let operation = crate::observe::operation().unwrap_or_default();
        // A later hit costs nothing: that is what it reports.
        let body = &with_extensions(body, &[("cost", zero_cost())]);
        if keep.shared {
            response_cache::shared_store(
                cache,
                &keep.key,
                &cache_stats.versions(),
                &operation,
                body,
            )
            .await;
        }
        if let (true, Some(responses), Some(deps)) =
            (keep.local, self.responses, cache_stats.deps())
        {
            responses.store(keep.key.clone(), deps, operation, body.clone());
        }
    }
}
