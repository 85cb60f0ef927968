//! Bearer tokens: JWTs whose `sub` is the user id. Minting is here too so that the binary's
//! `token` subcommand and the tests produce exactly what the server accepts.
//!
//! Which tokens are accepted, by the `alg` in the token's header:
//! - `HS256`: signed with `ApiConfig::jwt_secret`, only while `accept_hs256` is on (dev, tests,
//!   and prod with `JWT_SECRET` set). These are this service's own tokens ([`mint`]), so the
//!   issuer and audience are not checked on them.
//! - `RS256`, `ES256`: signed by a key of the configured JWKS ([`crate::jwks`]), chosen by the
//!   header's `kid` (required), whose own algorithm must be the header's. `iss` and `aud` must
//!   match `jwt_issuer` / `jwt_audience` when those are configured (and are then required).
//! - anything else (`none`, other algorithms) is refused.
//!
//! An HS256 token is only ever checked against the secret and an RS256/ES256 one only against a
//! JWKS public key, so a token "signed" with a public key as HMAC secret gets nowhere. `exp` and
//! `sub` are required; `exp` and `nbf` get `jwt_leeway` of clock skew. A refused token is
//! [`Viewer::Invalid`], answered exactly like any other bad token.

use crate::ApiConfig;
use crate::jwks::{JwksMetrics, JwksSource, KeySet, Remote};
use cal_domain::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Clock skew allowed on `exp` and `nbf`, unless configured (`JWT_LEEWAY_SECS`).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// Optional when reading: issuers need not send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    exp: i64,
}

/// Who is asking. `Invalid` is kept apart from `Anonymous` so that a bad token is reported as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    User(UserId),
    Anonymous,
    Invalid,
}

/// Mints an HS256 token for `user`, valid for `ttl`.
pub fn mint(secret: &SecretString, user: UserId, ttl: chrono::Duration) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user.to_string(),
        iat: Some(now),
        exp: now + ttl.num_seconds(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .expect("HS256 encoding of a small claim set cannot fail")
}

/// Reads the viewer from an `Authorization` header value, accepting HS256 tokens signed with
/// `secret` only (the [`Verifier`] is what the server uses).
pub fn viewer_from_header(secret: &SecretString, header: Option<&str>) -> Viewer {
    let token = match bearer(header) {
        Ok(token) => token,
        Err(viewer) => return viewer,
    };
    let key = DecodingKey::from_secret(secret.expose_secret().as_bytes());
    match decode(
        token,
        &key,
        &Checks::own(DEFAULT_LEEWAY.as_secs()),
        Algorithm::HS256,
    ) {
        Some((user, _)) => Viewer::User(user),
        None => Viewer::Invalid,
    }
}

/// The token of a `Bearer` header value, or the viewer a header without one names.
fn bearer(header: Option<&str>) -> Result<&str, Viewer> {
    let value = header.ok_or(Viewer::Anonymous)?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(Viewer::Invalid)
}

/// Verifies bearer tokens, remembering the ones it accepted until they expire (at most
/// [`Verifier::REMEMBER`]): a client sends the same token with every request, and checking its
/// signature again each time is work a cached response would otherwise not need. A JWKS refresh
/// that changes the key set forgets them all, so a key taken out of the set stops working at once.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The HS256 key, when HS256 is accepted.
    hs256: Option<DecodingKey>,
    keys: Option<Keys>,
    own: Checks,
    external: Checks,
    /// Token text → (user, expiry as unix seconds).
    accepted: moka::sync::Cache<String, (UserId, i64)>,
    /// The background JWKS refresh (URL sources only); aborted when the verifier goes.
    refresher: OnceLock<tokio::task::AbortHandle>,
}

enum Keys {
    Static(KeySet),
    Remote(Remote),
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.refresher.get() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// How long an accepted token is remembered at most.
    pub const REMEMBER: std::time::Duration = std::time::Duration::from_secs(300);

    /// The verifier `config` describes, its metrics on `registry`. With a JWKS URL this starts
    /// the background refresh (so it needs a Tokio runtime); it holds the verifier weakly and
    /// ends when the verifier is dropped.
    pub fn new(config: &ApiConfig, registry: &prometheus::Registry) -> Self {
        let metrics = JwksMetrics::new(registry);
        let leeway = config.jwt_leeway.as_secs();
        let (keys, refresh) = match &config.jwks {
            None => (None, None),
            Some(JwksSource::Static(set)) => {
                metrics.set_keys(set);
                (Some(Keys::Static(set.clone())), None)
            }
            Some(JwksSource::Url { url, refresh }) => (
                Some(Keys::Remote(Remote::new(url.clone(), metrics))),
                Some(*refresh),
            ),
        };
        let inner = Arc::new(Inner {
            hs256: config
                .accept_hs256
                .then(|| DecodingKey::from_secret(config.jwt_secret.expose_secret().as_bytes())),
            keys,
            own: Checks::own(leeway),
            external: Checks {
                leeway,
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
            },
            accepted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Self::REMEMBER)
                .build(),
            refresher: OnceLock::new(),
        });
        if let Some(every) = refresh {
            let task = tokio::spawn(refresh_loop(Arc::downgrade(&inner), every));
            let _ = inner.refresher.set(task.abort_handle());
        }
        Self { inner }
    }

    /// The viewer an `Authorization` header value names.
    pub async fn viewer(&self, header: Option<&str>) -> Viewer {
        let token = match bearer(header) {
            Ok(token) => token,
            Err(viewer) => return viewer,
        };
        let inner = &self.inner;
        let now = chrono::Utc::now().timestamp();
        if let Some((user, exp)) = inner.accepted.get(token) {
            // The same leeway as a fresh check, so the remembered answer equals it.
            if now <= exp.saturating_add(inner.own.leeway as i64) {
                return Viewer::User(user);
            }
            inner.accepted.invalidate(token);
        }
        match inner.verify(token).await {
            Some((user, exp)) => {
                inner.accepted.insert(token.to_owned(), (user, exp));
                Viewer::User(user)
            }
            None => Viewer::Invalid,
        }
    }
}

impl Inner {
    async fn verify(&self, token: &str) -> Option<(UserId, i64)> {
        // Fails for `alg: none` and any algorithm jsonwebtoken does not know.
        let header = jsonwebtoken::decode_header(token).ok()?;
        match header.alg {
            Algorithm::HS256 => decode(token, self.hs256.as_ref()?, &self.own, Algorithm::HS256),
            Algorithm::RS256 | Algorithm::ES256 => {
                let key = self.key(header.kid.as_deref()?).await?;
                if key.alg != header.alg {
                    return None;
                }
                decode(token, &key.decoding, &self.external, key.alg)
            }
            _ => None,
        }
    }

    /// The JWKS key named `kid`; for a URL source an unknown kid may fetch the set early.
    async fn key(&self, kid: &str) -> Option<Arc<crate::jwks::Key>> {
        match self.keys.as_ref()? {
            Keys::Static(set) => set.get(kid).cloned(),
            Keys::Remote(remote) => {
                if let Some(key) = remote.current().get(kid) {
                    return Some(key.clone());
                }
                let (key, changed) = remote.refresh_for(kid).await;
                if changed {
                    self.accepted.invalidate_all();
                }
                key
            }
        }
    }

    async fn refresh(&self) {
        if let Some(Keys::Remote(remote)) = &self.keys
            && remote.refresh().await
        {
            self.accepted.invalidate_all();
        }
    }
}

/// Fetches the JWKS at once and then every `every`, until the verifier is gone.
async fn refresh_loop(verifier: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = verifier.upgrade() else {
            return;
        };
        inner.refresh().await;
    }
}

/// The claim checks beyond the signature.
struct Checks {
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Checks {
    /// For this service's own HS256 tokens: no issuer or audience.
    fn own(leeway: u64) -> Self {
        Self {
            leeway,
            issuer: None,
            audience: None,
        }
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // Issuers put an `aud` in every token; without a configured one it is not checked.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }
}

fn decode(
    token: &str,
    key: &DecodingKey,
    checks: &Checks,
    alg: Algorithm,
) -> Option<(UserId, i64)> {
    let data = jsonwebtoken::decode::<Claims>(token, key, &checks.validation(alg)).ok()?;
    Some((UserId::parse(&data.claims.sub).ok()?, data.claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-s3cret";

    fn verifier(tweak: impl FnOnce(&mut ApiConfig)) -> Verifier {
        let mut config = ApiConfig::new(SECRET);
        tweak(&mut config);
        Verifier::new(&config, &prometheus::Registry::new())
    }

    #[test]
    fn round_trip_and_rejections() {
        let secret = SecretString::from(SECRET);
        let token = mint(&secret, UserId::new(7), chrono::Duration::hours(1));
        assert_eq!(
            viewer_from_header(&secret, Some(&format!("Bearer {token}"))),
            Viewer::User(UserId::new(7))
        );
        assert_eq!(viewer_from_header(&secret, None), Viewer::Anonymous);
        assert_eq!(
            viewer_from_header(&secret, Some(&token)),
            Viewer::Invalid,
            "missing scheme"
        );
        let other = SecretString::from("another-secret-another-secret-xx");
        assert_eq!(
            viewer_from_header(&other, Some(&format!("Bearer {token}"))),
            Viewer::Invalid,
            "wrong key"
        );
        let expired = mint(&secret, UserId::new(7), chrono::Duration::hours(-2));
        assert_eq!(
            viewer_from_header(&secret, Some(&format!("Bearer {expired}"))),
            Viewer::Invalid,
            "expired"
        );
    }

    #[tokio::test]
    async fn the_verifier_remembers_accepted_tokens_until_they_expire() {
        let secret = SecretString::from(SECRET);
        let v = verifier(|_| {});
        let token = mint(&secret, UserId::new(7), chrono::Duration::hours(1));
        let header = format!("Bearer {token}");
        assert_eq!(v.viewer(Some(&header)).await, Viewer::User(UserId::new(7)));
        assert_eq!(v.viewer(Some(&header)).await, Viewer::User(UserId::new(7)));
        v.inner.accepted.run_pending_tasks();
        assert_eq!(v.inner.accepted.entry_count(), 1);
        let expired = mint(&secret, UserId::new(7), chrono::Duration::hours(-2));
        assert_eq!(
            v.viewer(Some(&format!("Bearer {expired}"))).await,
            Viewer::Invalid
        );
        // A remembered token past its expiry (plus leeway) is checked again, and refused.
        v.inner.accepted.insert(
            "remembered".to_owned(),
            (UserId::new(7), chrono::Utc::now().timestamp() - 61),
        );
        assert_eq!(v.viewer(Some("Bearer remembered")).await, Viewer::Invalid);
        assert_eq!(v.viewer(None).await, Viewer::Anonymous);
        assert_eq!(v.viewer(Some("Basic abc")).await, Viewer::Invalid);
    }

    #[tokio::test]
    async fn hs256_is_refused_when_switched_off() {
        let token = mint(
            &SecretString::from(SECRET),
            UserId::new(7),
            chrono::Duration::hours(1),
        );
        let v = verifier(|c| c.accept_hs256 = false);
        assert_eq!(
            v.viewer(Some(&format!("Bearer {token}"))).await,
            Viewer::Invalid
        );
    }

    #[tokio::test]
    async fn no_refresh_task_without_a_url() {
        assert!(verifier(|_| {}).inner.refresher.get().is_none());
        let set = KeySet::parse(include_bytes!("../tests/fixtures/jwks.json")).unwrap();
        let v = verifier(|c| c.jwks = Some(JwksSource::Static(set)));
        assert!(v.inner.refresher.get().is_none());
    }

    #[tokio::test]
    async fn the_refresh_task_ends_with_the_verifier() {
        // Nothing listens on port 9 of localhost: every refresh fails, quickly.
        let v = verifier(|c| {
            c.jwks = Some(JwksSource::Url {
                url: "http://127.0.0.1:9/jwks.json".to_owned(),
                refresh: Duration::from_millis(10),
            })
        });
        let task = v.inner.refresher.get().cloned().expect("a refresh task");
        let weak = Arc::downgrade(&v.inner);
        let clone = v.clone();
        // A current-thread runtime: the task has not run yet (no await so far), so it holds no
        // upgraded reference while the verifier is dropped.
        drop(v);
        assert!(!task.is_finished(), "a clone still holds the verifier");
        drop(clone);
        // The task holds no strong reference that would keep the verifier alive...
        assert!(weak.upgrade().is_none());
        // ...and is aborted with it.
        for _ in 0..10_000 {
            if task.is_finished() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the refresh task outlived the verifier");
    }
}
