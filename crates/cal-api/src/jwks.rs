//! Signing keys for bearer tokens from a JWKS (RFC 7517): a fixed set read at start-up
//! (`JWT_JWKS_FILE`), or a set fetched from a URL and refreshed in the background
//! (`JWT_JWKS_URL`).
//!
//! Only RS256 and ES256 (P-256) signature keys that have a `kid` are kept. Everything else a set
//! may hold (encryption keys, symmetric `oct` keys, other algorithms and curves) is skipped, and
//! each kept key is bound to its one algorithm: a token is checked only with the algorithm its
//! key was published for, never with one the token names for itself.
//!
//! A refresh that fails (unreachable, non-2xx, too large, unreadable, no usable key) keeps the
//! last good set; it is logged (without the URL, which may carry credentials) and counted.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often a JWKS URL is fetched again, unless configured (`JWT_JWKS_REFRESH_SECS`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// Largest JWKS document read (file or URL). Real sets hold a handful of keys, a few KB.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Longest a fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Least time between two fetches caused by an unknown `kid`: a key rotated in at the issuer
/// works at once, and a stream of made-up kids costs the issuer at most one fetch per gap.
pub const EARLY_REFRESH_GAP: Duration = Duration::from_secs(30);

/// Where the RS256/ES256 signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A fixed set, e.g. read with [`KeySet::from_file`].
    Static(KeySet),
    /// A set fetched from `url` (`https://`, or plain `http://`) every `refresh`,
    /// and early (at most once per [`EARLY_REFRESH_GAP`]) for a token with an unknown `kid`.
    Url { url: String, refresh: Duration },
}

/// Why a JWKS could not be used. The messages name no key material and no URL.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS: {0}")]
    Read(#[from] std::io::Error),
    #[error("the JWKS is larger than 1 MiB")]
    TooLarge,
    #[error("the JWKS is not a JSON object with a `keys` array: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the JWKS holds no usable key (RS256 or ES256 on P-256, with a `kid`)")]
    NoUsableKey,
    #[error("fetching the JWKS failed: {0}")]
    Fetch(String),
    #[error("the JWKS URL answered HTTP {0}")]
    Status(u16),
}

/// One usable key: the algorithm it was published for and the key itself.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
}

/// The usable keys of a JWKS, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    /// The JWKs kept, to tell whether a refresh changed anything.
    kept: BTreeMap<String, Jwk>,
}

impl PartialEq for KeySet {
    fn eq(&self, other: &Self) -> bool {
        self.kept == other.kept
    }
}

/// Kids only: public keys are not secret, but logs need none of them.
impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kept.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// Reads a JWKS file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, JwksError> {
        let path = path.as_ref();
        if std::fs::metadata(path)?.len() > MAX_JWKS_BYTES as u64 {
            return Err(JwksError::TooLarge);
        }
        Self::parse(&std::fs::read(path)?)
    }

    /// Parses a JWKS document, keeping the usable keys (see the module doc); a set without any
    /// is an error, so that a broken document never replaces a working set.
    pub fn parse(json: &[u8]) -> Result<Self, JwksError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            keys: Vec<serde_json::Value>,
        }
        if json.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let raw: Raw = serde_json::from_slice(json)?;
        let mut set = KeySet::default();
        for value in raw.keys {
            match usable(value) {
                Ok((kid, key, jwk)) => {
                    if set.kept.contains_key(&kid) {
                        tracing::warn!(%kid, "JWKS: a second key with this kid is ignored");
                        continue;
                    }
                    set.keys.insert(kid.clone(), Arc::new(key));
                    set.kept.insert(kid, jwk);
                }
                Err((kid, why)) => tracing::debug!(?kid, why, "JWKS: key skipped"),
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(set)
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&Arc<Key>> {
        self.keys.get(kid)
    }

    /// How many usable keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A usable key from one JWKS entry, or its kid (if any) and why it is skipped.
fn usable(value: serde_json::Value) -> Result<(String, Key, Jwk), (Option<String>, &'static str)> {
    let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
    let jwk: Jwk =
        serde_json::from_value(value).map_err(|_| (kid.clone(), "not a JWK this server reads"))?;
    let skip = |why| (kid.clone(), why);
    let kid = kid
        .clone()
        .filter(|k| !k.is_empty())
        .ok_or(skip("no kid"))?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err(skip("not a signature key"));
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err(skip("key_ops lacks verify"));
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return Err(skip("not an RS256 or ES256 (P-256) key")),
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| skip("malformed key"))?;
    Ok((kid, Key { alg, decoding }, jwk))
}

/// The JWKS metrics: refreshes by outcome, and the keys of the current set.
#[derive(Clone)]
pub(crate) struct JwksMetrics {
    ok: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    keys: prometheus::IntGauge,
}

impl JwksMetrics {
    /// Registered on `registry` (always, so that dashboards see zeros without a JWKS URL).
    pub(crate) fn new(registry: &prometheus::Registry) -> Self {
        let refreshes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "cal_auth_jwks_refreshes_total",
                "JWKS URL fetches by outcome (failed: the last good set was kept)",
            ),
            &["outcome"],
        )
        .expect("a valid metric");
        let keys = prometheus::IntGauge::new(
            "cal_auth_jwks_keys",
            "Usable signing keys in the current JWKS",
        )
        .expect("a valid metric");
        for m in [
            Box::new(refreshes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(keys.clone()),
        ] {
            if let Err(e) = registry.register(m) {
                tracing::warn!(error = %e, "a JWKS metric was not registered");
            }
        }
        Self {
            ok: refreshes.with_label_values(&["ok"]),
            failed: refreshes.with_label_values(&["failed"]),
            keys,
        }
    }

    pub(crate) fn set_keys(&self, set: &KeySet) {
        self.keys.set(set.len() as i64);
    }
}

/// A JWKS fetched from a URL: the current set, and the fetches that replace it.
pub(crate) struct Remote {
    url: String,
    client: reqwest::Client,
    current: RwLock<Arc<KeySet>>,
    /// Serializes fetches (so an older answer never overwrites a newer one); holds when the
    /// last fetch for an unknown kid started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    metrics: JwksMetrics,
}

impl Remote {
    /// Starts with an empty set: the first fetch is the refresher's first tick.
    pub(crate) fn new(url: String, metrics: JwksMetrics) -> Self {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("an HTTP client with the bundled WebPKI roots builds");
        Self {
            url,
            client,
            current: RwLock::new(Arc::new(KeySet::default())),
            fetching: tokio::sync::Mutex::new(None),
            metrics,
        }
    }

    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fetches the set now; `true` when it replaced a different one.
    pub(crate) async fn refresh(&self) -> bool {
        let _turn = self.fetching.lock().await;
        self.fetch_and_swap().await
    }

    /// For a token whose `kid` is not in the current set: fetch once, unless a fetch for an
    /// unknown kid started less than [`EARLY_REFRESH_GAP`] ago. Returns the key (if the set has
    /// it now) and whether the set changed.
    pub(crate) async fn refresh_for(&self, kid: &str) -> (Option<Arc<Key>>, bool) {
        let mut last_early = self.fetching.lock().await;
        // Another request's fetch may have brought it while this one waited.
        if let Some(key) = self.current().get(kid) {
            return (Some(key.clone()), false);
        }
        if last_early.is_some_and(|t| t.elapsed() < EARLY_REFRESH_GAP) {
            return (None, false);
        }
        *last_early = Some(Instant::now());
        let changed = self.fetch_and_swap().await;
        (self.current().get(kid).cloned(), changed)
    }

    /// One fetch, with the `fetching` lock held by the caller.
    async fn fetch_and_swap(&self) -> bool {
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                let changed = {
                    let mut current = self
                        .current
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let changed = **current != *set;
                    *current = set.clone();
                    changed
                };
                self.metrics.set_keys(&set);
                // Counted after the swap: whoever sees the count sees the set.
                self.metrics.ok.inc();
                if changed {
                    tracing::info!(keys = ?set, "JWKS refreshed: the key set changed");
                }
                changed
            }
            Err(e) => {
                self.metrics.failed.inc();
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the last good set");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let fetch_err = |e: reqwest::Error| JwksError::Fetch(e.without_url().to_string());
        let mut resp = self.client.get(&self.url).send().await.map_err(fetch_err)?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fetch_err)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RSA_N: &str = "rH8RA-n0JmLxK3MTWLOTbX1impHLXn25PVLRbUngP4G8x_yB1WWxiqtdbiACFbNh1CjvY7OC-18lZfxjwBksUinVYOy4MlSB0K0RiXEWNZX8Bd_zFq4jOptP_Ylhc5zPrYygk5dVEpeXvQI4nnAp3AMdgEbgIy7tHr0ye7JBCOP_-i4X3mWj49gBY6pKwhBzyz9cblcAjVdoib_0541bm2AEJimuAach9jppkDZy6KRNCp1em65ktIoYyGv3zmp27JqSVf02TY6K_8PGzl6sBknamMbStQ2spqTDiIUZfrk7e61z0zE6uF_S3maN8jjAclYqS9PjCXQFTehSr1xiLw";

    fn rsa(kid: &str) -> serde_json::Value {
        json!({ "kty": "RSA", "kid": kid, "n": RSA_N, "e": "AQAB" })
    }

    #[test]
    fn only_rs256_and_es256_signature_keys_with_a_kid_are_kept() {
        let doc = json!({ "keys": [
            rsa("plain"),
            { "kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "kid": "ps", "alg": "PS256", "n": RSA_N, "e": "AQAB" },
            { "kty": "RSA", "n": RSA_N, "e": "AQAB" },
            { "kty": "oct", "kid": "hmac", "alg": "HS256", "k": "c2VjcmV0" },
            { "kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA" },
            { "kty": "weird", "kid": "weird" },
            { "kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": RSA_N, "e": "AQAB" },
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{set:?}");
        assert_eq!(set.get("plain").unwrap().alg, Algorithm::RS256);
    }

    #[test]
    fn unusable_documents_are_errors() {
        assert!(matches!(KeySet::parse(b"nope"), Err(JwksError::Json(_))));
        assert!(matches!(
            KeySet::parse(br#"{"keys": []}"#),
            Err(JwksError::NoUsableKey)
        ));
        let only_hmac = json!({ "keys": [{ "kty": "oct", "kid": "h", "k": "c2VjcmV0" }] });
        assert!(matches!(
            KeySet::parse(only_hmac.to_string().as_bytes()),
            Err(JwksError::NoUsableKey)
        ));
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(matches!(KeySet::parse(&big), Err(JwksError::TooLarge)));
    }

    #[test]
    fn sets_compare_by_their_keys_and_debug_shows_kids_only() {
        let one = |kids: &[&str]| {
            let keys: Vec<_> = kids.iter().map(|k| rsa(k)).collect();
            KeySet::parse(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
        };
        assert_eq!(one(&["a", "b"]), one(&["b", "a"]));
        assert_ne!(one(&["a"]), one(&["a", "b"]));
        let shown = format!("{:?}", one(&["a"]));
        assert!(!shown.contains(&RSA_N[..20]), "{shown}");
        assert!(shown.contains("\"a\""), "{shown}");
    }
}
