//! Bearer tokens: HS256 JWTs whose `sub` is the user id. Minting is here too so that the binary's
//! `token` subcommand and the tests produce exactly what the server accepts.

use cal_domain::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: i64,
    exp: i64,
}

/// Who is asking. `Invalid` is kept apart from `Anonymous` so that a bad token is reported as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    User(UserId),
    Anonymous,
    Invalid,
}

/// Mints a token for `user`, valid for `ttl`.
pub fn mint(secret: &SecretString, user: UserId, ttl: chrono::Duration) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: user.to_string(),
        iat: now,
        exp: now + ttl.num_seconds(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .expect("HS256 encoding of a small claim set cannot fail")
}

/// Reads the viewer from an `Authorization` header value.
pub fn viewer_from_header(secret: &SecretString, header: Option<&str>) -> Viewer {
    let Some(value) = header else {
        return Viewer::Anonymous;
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Viewer::Invalid;
    };
    match decode(secret, token.trim()) {
        Some((user, _)) => Viewer::User(user),
        None => Viewer::Invalid,
    }
}

/// Verifies bearer tokens, remembering the ones it accepted until they expire (at most
/// [`Verifier::REMEMBER`]): a client sends the same token with every request, and checking its
/// signature again each time is work a cached response would otherwise not need.
#[derive(Clone)]
pub struct Verifier {
    secret: SecretString,
    /// Token text → (user, expiry as unix seconds).
    accepted: moka::sync::Cache<String, (UserId, i64)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// How long an accepted token is remembered at most.
    pub const REMEMBER: std::time::Duration = std::time::Duration::from_secs(300);

    pub fn new(secret: SecretString) -> Self {
        Self {
            secret,
            accepted: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Self::REMEMBER)
                .build(),
        }
    }

    /// The viewer an `Authorization` header value names.
    pub fn viewer(&self, header: Option<&str>) -> Viewer {
        let Some(value) = header else {
            return Viewer::Anonymous;
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
        else {
            return Viewer::Invalid;
        };
        let now = chrono::Utc::now().timestamp();
        if let Some((user, exp)) = self.accepted.get(token) {
            // jsonwebtoken's default leeway, so the remembered answer equals a fresh check.
            if now <= exp + 60 {
                return Viewer::User(user);
            }
            self.accepted.invalidate(token);
        }
        match decode(&self.secret, token) {
            Some((user, exp)) => {
                self.accepted.insert(token.to_owned(), (user, exp));
                Viewer::User(user)
            }
            None => Viewer::Invalid,
        }
    }
}

fn decode(secret: &SecretString, token: &str) -> Option<(UserId, i64)> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        &validation,
    )
    .ok()?;
    Some((UserId::parse(&data.claims.sub).ok()?, data.claims.exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let secret = SecretString::from("s3cret-s3cret-s3cret-s3cret-s3cret");
        let token = mint(&secret, UserId(7), chrono::Duration::hours(1));
        assert_eq!(
            viewer_from_header(&secret, Some(&format!("Bearer {token}"))),
            Viewer::User(UserId(7))
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
        let expired = mint(&secret, UserId(7), chrono::Duration::hours(-2));
        assert_eq!(
            viewer_from_header(&secret, Some(&format!("Bearer {expired}"))),
            Viewer::Invalid,
            "expired"
        );
    }

    #[test]
    fn the_verifier_remembers_accepted_tokens_until_they_expire() {
        let secret = SecretString::from("s3cret-s3cret-s3cret-s3cret-s3cret");
        let v = Verifier::new(secret.clone());
        let token = mint(&secret, UserId(7), chrono::Duration::hours(1));
        let header = format!("Bearer {token}");
        assert_eq!(v.viewer(Some(&header)), Viewer::User(UserId(7)));
        assert_eq!(v.viewer(Some(&header)), Viewer::User(UserId(7)));
        v.accepted.run_pending_tasks();
        assert_eq!(v.accepted.entry_count(), 1);
        let expired = mint(&secret, UserId(7), chrono::Duration::hours(-2));
        assert_eq!(
            v.viewer(Some(&format!("Bearer {expired}"))),
            Viewer::Invalid
        );
        // A remembered token past its expiry (plus leeway) is checked again, and refused.
        v.accepted.insert(
            "remembered".to_owned(),
            (UserId(7), chrono::Utc::now().timestamp() - 61),
        );
        assert_eq!(v.viewer(Some("Bearer remembered")), Viewer::Invalid);
        assert_eq!(v.viewer(None), Viewer::Anonymous);
        assert_eq!(v.viewer(Some("Basic abc")), Viewer::Invalid);
    }
}
