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
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    match jsonwebtoken::decode::<Claims>(
        token.trim(),
        &DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        &validation,
    ) {
        Ok(data) => UserId::parse(&data.claims.sub)
            .map(Viewer::User)
            .unwrap_or(Viewer::Invalid),
        Err(_) => Viewer::Invalid,
    }
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
}
