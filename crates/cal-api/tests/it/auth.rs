//! Bearer tokens against the real server: RS256/ES256 tokens verified with a JWKS (a file, or a
//! URL served here by a small axum server, with rotation and failing refreshes), issuer,
//! audience and leeway checks, HS256 next to them, and the tokens that must be refused (`alg:
//! none`, algorithm confusion, unknown kids). A refused token must get exactly the answer any
//! bad token gets.
//!
//! Keys: `tests/fixtures/` (test-only keys, see its README). Every token carries a fresh `jti`,
//! so that the verifier's memory of accepted tokens never answers for a new check.

use crate::common::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use cal_api::jwks::{JwksSource, KeySet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// The DER inside a PEM file (what `EncodingKey::from_*_der` takes: PKCS#1 for RSA, PKCS#8 for
/// EC), so that the tests need no PEM feature of jsonwebtoken.
fn der(pem: &[u8]) -> Vec<u8> {
    let body: String = std::str::from_utf8(pem)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// A test signing key: its kid in `jwks.json`, its algorithm and the private key.
struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

fn rsa_old() -> Signer {
    Signer {
        kid: "rsa-old",
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(&der(&fixture("rsa-old.pem"))),
    }
}

fn rsa_new() -> Signer {
    Signer {
        kid: "rsa-new",
        alg: Algorithm::RS256,
        key: EncodingKey::from_rsa_der(&der(&fixture("rsa-new.pem"))),
    }
}

fn ec() -> Signer {
    Signer {
        kid: "ec-1",
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(&der(&fixture("ec.pem"))),
    }
}

/// A JWKS holding the fixture keys named by `kids`.
fn jwks(kids: &[&str]) -> Value {
    let all: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    assert_eq!(keys.len(), kids.len());
    json!({ "keys": keys })
}

static JTI: AtomicU64 = AtomicU64::new(0);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims for `user`, valid for an hour, with a fresh `jti`.
fn claims(user: UserId) -> Value {
    json!({
        "sub": user.to_string(),
        "iat": now(),
        "exp": now() + 3600,
        "jti": JTI.fetch_add(1, Ordering::Relaxed),
    })
}

/// `claims` with `extra` merged in (a `null` removes a claim).
fn with(mut claims: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn sign_as(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn sign(signer: &Signer, claims: &Value) -> String {
    sign_as(signer.alg, Some(signer.kid), &signer.key, claims)
}

/// `{ me { id } }` with `Authorization: Bearer <token>`.
async fn ask(app: &TestApp, token: &str) -> Value {
    let r = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn assert_accepted(app: &TestApp, token: &str, user: UserId, what: &str) {
    let body = ask(app, token).await;
    assert_eq!(
        body["data"]["me"]["id"],
        json!(user.to_string()),
        "{what}: {body}"
    );
}

/// Refused: the very answer a token that is not a JWT at all gets (UNAUTHENTICATED).
async fn assert_refused(app: &TestApp, token: &str, what: &str) {
    let body = ask(app, token).await;
    let garbage = ask(app, "not-a-token").await;
    assert_eq!(body, garbage, "{what}");
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{what}: {body}"
    );
}

fn file_set() -> JwksSource {
    JwksSource::Static(KeySet::from_file(format!("{FIXTURES}/jwks.json")).unwrap())
}

/// An app with the fixture JWKS file and HS256 on (the test secret).
async fn file_app(tweak: impl FnOnce(&mut cal_api::ApiConfig)) -> TestApp {
    TestApp::spawn_with(|c| {
        c.jwks = Some(file_set());
        tweak(c)
    })
    .await
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_a_jwks_file_are_accepted() {
    let app = file_app(|_| {}).await;
    let ann = app.user("Ann").await.id;
    assert_accepted(&app, &sign(&rsa_old(), &claims(ann)), ann, "RS256").await;
    assert_accepted(&app, &sign(&rsa_new(), &claims(ann)), ann, "RS256, 2nd key").await;
    assert_accepted(&app, &sign(&ec(), &claims(ann)), ann, "ES256").await;
    // HS256 next to the JWKS, as configured (JWT_SECRET set).
    assert_accepted(&app, &app.token(ann), ann, "HS256").await;
}

#[tokio::test]
async fn unknown_kids_missing_kids_and_wrong_keys_are_refused() {
    let app = file_app(|_| {}).await;
    let ann = app.user("Ann").await.id;
    let old = rsa_old();
    let c = claims(ann);
    assert_refused(
        &app,
        &sign_as(old.alg, Some("nobody"), &old.key, &c),
        "unknown kid",
    )
    .await;
    assert_refused(&app, &sign_as(old.alg, None, &old.key, &c), "no kid").await;
    // Signed with the new key but naming the old one.
    let new = rsa_new();
    assert_refused(
        &app,
        &sign_as(new.alg, Some("rsa-old"), &new.key, &c),
        "wrong key",
    )
    .await;
    // An RSA-signed token naming the EC key: the key's algorithm is ES256.
    assert_refused(
        &app,
        &sign_as(Algorithm::RS256, Some("ec-1"), &old.key, &c),
        "alg ≠ key's",
    )
    .await;
    // RS384 with the right RSA key: only the published RS256 is accepted.
    assert_refused(
        &app,
        &sign_as(Algorithm::RS384, Some("rsa-old"), &old.key, &c),
        "RS384",
    )
    .await;
    // A sub that is no user id.
    let odd = with(claims(ann), json!({ "sub": "alice@example.test" }));
    assert_refused(&app, &sign(&old, &odd), "sub not an id").await;
    let no_exp = with(claims(ann), json!({ "exp": null }));
    assert_refused(&app, &sign(&old, &no_exp), "no exp").await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let app = file_app(|_| {}).await;
    let ann = app.user("Ann").await.id;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let body = b64(&claims(ann));
    for alg in ["none", "None", "NONE"] {
        let header = b64(&json!({ "alg": alg, "typ": "JWT", "kid": "rsa-old" }));
        assert_refused(&app, &format!("{header}.{body}."), alg).await;
        // A valid RS256 signature pasted under an `alg: none` header.
        let real = sign(&rsa_old(), &claims(ann));
        let sig = real.rsplit('.').next().unwrap();
        assert_refused(&app, &format!("{header}.{body}.{sig}"), alg).await;
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    // HS256 is on (the test secret): the attack needs it to be.
    let app = file_app(|_| {}).await;
    let ann = app.user("Ann").await.id;
    let public_pem = fixture("rsa-old.pub.pem");
    let jwk = jwks(&["rsa-old"])["keys"][0].to_string();
    for (what, secret) in [
        ("public key PEM", public_pem.clone()),
        ("public key DER", der(&public_pem)),
        ("public JWK", jwk.into_bytes()),
    ] {
        let key = EncodingKey::from_secret(&secret);
        let forged = sign_as(Algorithm::HS256, Some("rsa-old"), &key, &claims(ann));
        assert_refused(&app, &forged, what).await;
        let no_kid = sign_as(Algorithm::HS256, None, &key, &claims(ann));
        assert_refused(&app, &no_kid, what).await;
    }
    assert_accepted(&app, &app.token(ann), ann, "the real HS256 secret").await;
}

#[tokio::test]
async fn hs256_is_refused_when_not_configured() {
    let app = file_app(|c| c.accept_hs256 = false).await;
    let ann = app.user("Ann").await.id;
    assert_refused(&app, &app.token(ann), "HS256 with the (unused) secret").await;
    assert_accepted(&app, &sign(&rsa_old(), &claims(ann)), ann, "RS256").await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = file_app(|c| {
        c.jwt_issuer = Some("https://idp.test/".into());
        c.jwt_audience = Some("calendar".into());
    })
    .await;
    let ann = app.user("Ann").await.id;
    let key = rsa_old();
    let ok = |c: Value| with(c, json!({ "iss": "https://idp.test/", "aud": "calendar" }));
    assert_accepted(&app, &sign(&key, &ok(claims(ann))), ann, "iss and aud").await;
    let many = with(ok(claims(ann)), json!({ "aud": ["other", "calendar"] }));
    assert_accepted(&app, &sign(&key, &many), ann, "aud among several").await;
    for (what, extra) in [
        ("wrong issuer", json!({ "iss": "https://evil.test/" })),
        ("no issuer", json!({ "iss": null })),
        ("wrong audience", json!({ "aud": "mail" })),
        ("wrong audiences", json!({ "aud": ["mail", "chat"] })),
        ("no audience", json!({ "aud": null })),
    ] {
        let c = with(ok(claims(ann)), extra);
        assert_refused(&app, &sign(&key, &c), what).await;
        assert_refused(&app, &sign(&ec(), &c), what).await;
    }
    // This service's own HS256 tokens carry neither: they are not checked for them.
    assert_accepted(&app, &app.token(ann), ann, "HS256").await;
}

#[tokio::test]
async fn without_a_configured_audience_any_aud_is_accepted() {
    let app = file_app(|_| {}).await;
    let ann = app.user("Ann").await.id;
    let c = with(
        claims(ann),
        json!({ "aud": "someone-else", "iss": "anyone" }),
    );
    assert_accepted(&app, &sign(&rsa_old(), &c), ann, "aud unchecked").await;
}

#[tokio::test]
async fn exp_and_nbf_get_the_leeway_and_no_more() {
    let app = file_app(|c| c.jwt_leeway = StdDuration::from_secs(30)).await;
    let ann = app.user("Ann").await.id;
    let key = rsa_old();
    let at = |extra: Value| sign(&key, &with(claims(ann), extra));
    assert_accepted(
        &app,
        &at(json!({ "exp": now() - 5 })),
        ann,
        "expired within leeway",
    )
    .await;
    assert_refused(
        &app,
        &at(json!({ "exp": now() - 120 })),
        "expired beyond leeway",
    )
    .await;
    assert_accepted(
        &app,
        &at(json!({ "nbf": now() + 5 })),
        ann,
        "nbf within leeway",
    )
    .await;
    assert_refused(
        &app,
        &at(json!({ "nbf": now() + 120 })),
        "nbf beyond leeway",
    )
    .await;
    // HS256 gets the same leeway.
    let secret = EncodingKey::from_secret(cal_test_support::TEST_SECRET.as_bytes());
    let hs = |exp: i64| {
        sign_as(
            Algorithm::HS256,
            None,
            &secret,
            &with(claims(ann), json!({ "exp": exp })),
        )
    };
    assert_accepted(&app, &hs(now() - 5), ann, "HS256 within leeway").await;
    assert_refused(&app, &hs(now() - 120), "HS256 beyond leeway").await;
}

/// The JWKS endpoint the URL tests fetch: it serves `set`, or 500 while `set` is `None`, and
/// counts the requests it answered.
#[derive(Clone, Default)]
struct Idp {
    set: Arc<Mutex<Option<Value>>>,
    hits: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(set: Value) -> (Idp, String) {
        let idp = Idp::default();
        idp.serve(Some(set));
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(Self::answer))
            .with_state(idp.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (idp, url)
    }

    fn serve(&self, set: Option<Value>) {
        *self.set.lock().unwrap() = set;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn answer(State(idp): State<Idp>) -> Response {
        idp.hits.fetch_add(1, Ordering::SeqCst);
        match idp.set.lock().unwrap().clone() {
            Some(set) => axum::Json(set).into_response(),
            None => (StatusCode::INTERNAL_SERVER_ERROR, "down").into_response(),
        }
    }
}

/// The refresh counter for `outcome` on the app's `/metrics`.
async fn refreshes(app: &TestApp, outcome: &str) -> u64 {
    let series = format!("cal_auth_jwks_refreshes_total{{outcome=\"{outcome}\"}} ");
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until two more refreshes with `outcome` completed than when called: at least one of
/// them started after the caller changed what the endpoint serves. Returns the count.
async fn refreshed(app: &TestApp, outcome: &str) -> u64 {
    let from = refreshes(app, outcome).await;
    await_refreshes(app, outcome, from + 2).await
}

/// Waits until at least `n` refreshes with `outcome` completed.
async fn await_refreshes(app: &TestApp, outcome: &str, n: u64) -> u64 {
    for _ in 0..1000 {
        let now = refreshes(app, outcome).await;
        if now >= n {
            return now;
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    panic!("not {n} JWKS refreshes ({outcome}) yet");
}

async fn url_app(url: &str, every: StdDuration) -> TestApp {
    let url = url.to_owned();
    TestApp::spawn_with(move |c| {
        c.jwks = Some(JwksSource::Url {
            url,
            refresh: every,
        })
    })
    .await
}

#[tokio::test]
async fn a_rotated_key_set_from_the_url_is_followed() {
    let (idp, url) = Idp::start(jwks(&["rsa-old"])).await;
    let app = url_app(&url, StdDuration::from_millis(20)).await;
    let ann = app.user("Ann").await.id;
    await_refreshes(&app, "ok", 1).await;
    assert_accepted(&app, &sign(&rsa_old(), &claims(ann)), ann, "{old}: old").await;
    assert_refused(&app, &sign(&rsa_new(), &claims(ann)), "{old}: new").await;

    // Overlap: both keys work.
    idp.serve(Some(jwks(&["rsa-old", "rsa-new"])));
    refreshed(&app, "ok").await;
    let remembered = sign(&rsa_old(), &claims(ann));
    assert_accepted(&app, &remembered, ann, "{old,new}: old").await;
    assert_accepted(&app, &sign(&rsa_new(), &claims(ann)), ann, "{old,new}: new").await;

    // After it: the old key is refused, also for a token accepted (and remembered) before.
    idp.serve(Some(jwks(&["rsa-new"])));
    refreshed(&app, "ok").await;
    assert_refused(&app, &sign(&rsa_old(), &claims(ann)), "{new}: old").await;
    assert_refused(&app, &remembered, "{new}: old, remembered").await;
    assert_accepted(&app, &sign(&rsa_new(), &claims(ann)), ann, "{new}: new").await;
    assert!(app.metrics().await.contains("cal_auth_jwks_keys 1\n"));
}

#[tokio::test]
async fn a_failing_refresh_keeps_the_last_good_set() {
    let (idp, url) = Idp::start(jwks(&["rsa-old", "ec-1"])).await;
    let app = url_app(&url, StdDuration::from_millis(20)).await;
    let ann = app.user("Ann").await.id;
    await_refreshes(&app, "ok", 1).await;
    assert_accepted(&app, &sign(&rsa_old(), &claims(ann)), ann, "before").await;

    idp.serve(None);
    refreshed(&app, "failed").await;
    assert_accepted(
        &app,
        &sign(&rsa_old(), &claims(ann)),
        ann,
        "during 500s: RS256",
    )
    .await;
    assert_accepted(&app, &sign(&ec(), &claims(ann)), ann, "during 500s: ES256").await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("cal_auth_jwks_keys 2\n"), "{metrics}");

    // A document without usable keys is a failed refresh too, not an empty set.
    idp.serve(Some(
        json!({ "keys": [{ "kty": "oct", "kid": "h", "k": "c2VjcmV0" }] }),
    ));
    refreshed(&app, "failed").await;
    assert_accepted(
        &app,
        &sign(&rsa_old(), &claims(ann)),
        ann,
        "after a bad set",
    )
    .await;

    // And the endpoint's recovery is followed.
    idp.serve(Some(jwks(&["rsa-new"])));
    refreshed(&app, "ok").await;
    assert_refused(&app, &sign(&rsa_old(), &claims(ann)), "recovered: old").await;
    assert_accepted(&app, &sign(&rsa_new(), &claims(ann)), ann, "recovered: new").await;
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_set_once_early() {
    let (idp, url) = Idp::start(jwks(&["rsa-old"])).await;
    // Refreshed only at start-up within this test: every further fetch is an early one.
    let app = url_app(&url, StdDuration::from_secs(3600)).await;
    let ann = app.user("Ann").await.id;
    await_refreshes(&app, "ok", 1).await;
    assert_eq!(idp.hits(), 1);
    assert_accepted(&app, &sign(&rsa_old(), &claims(ann)), ann, "known kid").await;
    assert_eq!(idp.hits(), 1, "a known kid fetches nothing");

    // The issuer rotates a key in: the first token naming it works at once.
    idp.serve(Some(jwks(&["rsa-old", "rsa-new"])));
    assert_accepted(&app, &sign(&rsa_new(), &claims(ann)), ann, "rotated in").await;
    assert_eq!(idp.hits(), 2, "one early fetch");
    assert_accepted(&app, &sign(&rsa_new(), &claims(ann)), ann, "again").await;
    assert_eq!(idp.hits(), 2, "now known");

    // Made-up kids: refused, and within the gap they fetch nothing more.
    let old = rsa_old();
    for kid in ["ghost-1", "ghost-2", "ghost-3"] {
        let t = sign_as(old.alg, Some(kid), &old.key, &claims(ann));
        assert_refused(&app, &t, kid).await;
    }
    assert_eq!(idp.hits(), 2, "rate-limited to one early fetch per gap");
}
