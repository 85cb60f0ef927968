//! GraphQL over HTTP, rule by rule: media types and `Accept`, status codes of request errors,
//! request bodies, GET, persisted queries (automatic and safelist), `ETag`/304, compression and
//! CORS. The reference audit and real clients run in `http_clients.rs`.

use crate::common::*;
use reqwest::header::HeaderMap;
use std::sync::Arc;

const GQL: &str = "application/graphql-response+json";

struct Answer {
    status: u16,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|_| panic!("JSON body: {}", String::from_utf8_lossy(&self.bytes)))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn code(&self) -> String {
        self.json()["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req.send().await.expect("server reachable");
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        bytes: resp.bytes().await.unwrap().to_vec(),
    }
}

fn post(
    app: &TestApp,
    user: UserId,
    accept: Option<&str>,
    body: &Value,
) -> reqwest::RequestBuilder {
    let mut r = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(app.token(user))
        .json(body);
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    r
}

fn get(app: &TestApp, user: UserId, params: &[(&str, String)]) -> reqwest::RequestBuilder {
    app.client
        .get(app.url("/graphql"))
        .bearer_auth(app.token(user))
        .query(params)
}

fn month_params(cal: CalendarId) -> Vec<(&'static str, String)> {
    vec![
        ("query", MONTH_VIEW.to_owned()),
        ("variables", month_vars(cal).to_string()),
    ]
}

#[tokio::test]
async fn media_types_follow_accept_and_request_errors_have_no_data() {
    let app = TestApp::spawn().await;
    let me = app.user("Mia").await;
    let ok = json!({ "query": "{ me { id } }" });
    for (accept, media) in [
        (None, "application/json"),
        (Some("*/*"), "application/json"),
        (Some("application/json"), "application/json"),
        (Some(GQL), GQL),
        (
            Some("application/graphql-response+json, application/json;q=0.9"),
            GQL,
        ),
    ] {
        let a = send(post(&app, me.id, accept, &ok)).await;
        assert_eq!(a.status, 200, "{accept:?}");
        assert_eq!(
            a.header("content-type"),
            format!("{media}; charset=utf-8"),
            "{accept:?}"
        );
        assert_eq!(a.json()["data"]["me"]["id"], me.id.to_string());
    }
    let refused = send(post(&app, me.id, Some("text/html"), &ok)).await;
    assert_eq!(refused.status, 406);
    assert_eq!(refused.code(), "NOT_ACCEPTABLE");

    // A document that does not parse, one that does not validate, variables that do not
    // coerce: 400 without `data` under the GraphQL media type, 200 (still without `data`) under
    // the legacy one.
    for body in [
        json!({ "query": "{" }),
        json!({ "query": "{ noSuchField }" }),
        json!({ "query": "query($id: ID!) { __typename }", "variables": { "id": null } }),
    ] {
        let strict = send(post(&app, me.id, Some(GQL), &body)).await;
        assert_eq!(strict.status, 400, "{body}");
        let v = strict.json();
        assert!(v.get("data").is_none(), "{v}");
        assert!(v["errors"][0]["message"].is_string());
        let legacy = send(post(&app, me.id, Some("application/json"), &body)).await;
        assert_eq!(legacy.status, 200, "{body}");
        assert!(legacy.json().get("data").is_none());
    }
    // A field error is not a request error: 200 with `data`.
    let denied = send(post(
        &app,
        me.id,
        Some(GQL),
        &json!({ "query": "{ calendar(id: \"999999\") { id } }" }),
    ))
    .await;
    assert_eq!(denied.status, 200);
    assert!(denied.json().get("data").is_some());
}

#[tokio::test]
async fn malformed_requests_are_400_and_bodies_must_be_json() {
    let app = TestApp::spawn().await;
    let me = app.user("Mia").await;
    let url = app.url("/graphql");
    let token = app.token(me.id);
    let raw = |ct: Option<&str>, body: &'static str| {
        let mut r = app.client.post(&url).bearer_auth(&token).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r
    };
    for ct in [
        None,
        Some("text/plain"),
        Some("application/json; charset=latin1"),
    ] {
        let a = send(raw(ct, r#"{"query":"{ me { id } }"}"#)).await;
        assert_eq!(a.status, 415, "{ct:?}");
        assert_eq!(a.code(), "UNSUPPORTED_MEDIA_TYPE");
    }
    let ok = send(raw(
        Some("application/json; charset=utf-8"),
        r#"{"query":"{ me { id } }"}"#,
    ))
    .await;
    assert_eq!(ok.status, 200);
    for body in [
        "",
        r#"{ "not a JSON"#,
        r#"{"qeury":"{ me { id } }"}"#,
        r#"{"query":{"obj":"ect"}}"#,
        r#"{"query":["array"]}"#,
        r#"{"query":"{ me { id } }","variables":"string"}"#,
        r#"{"query":"{ me { id } }","extensions":0}"#,
        "[]",
    ] {
        let a = send(raw(Some("application/json"), body)).await;
        assert_eq!(a.status, 400, "{body}");
        assert_eq!(a.code(), "BAD_REQUEST", "{body}");
        assert!(a.json().get("data").is_none());
    }
}

#[tokio::test]
async fn get_executes_queries_and_refuses_mutations() {
    let app = TestApp::spawn().await;
    let w = world(&app, 6, 2).await;
    let by_post = app
        .gql(Some(w.owner.id), MONTH_VIEW, month_vars(w.calendar))
        .await;
    let by_get = send(get(&app, w.owner.id, &month_params(w.calendar))).await;
    assert_eq!(by_get.status, 200);
    assert_eq!(by_get.json()["data"], *by_post.data());

    let mutation = "mutation { createCalendar(input: { name: \"Sneaky\" }) { id } }";
    let refused = send(get(&app, w.owner.id, &[("query", mutation.to_owned())])).await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), "POST");
    assert_eq!(refused.code(), "METHOD_NOT_ALLOWED");
    // Nothing was created.
    let mine = app
        .gql(Some(w.owner.id), "{ myCalendars { name } }", json!({}))
        .await;
    assert!(!mine.0.to_string().contains("Sneaky"), "{}", mine.0);

    // Bad parameters are 400; no query at all too.
    for params in [
        vec![],
        vec![
            ("query", "{ me { id } }".to_owned()),
            ("variables", "not json".to_owned()),
        ],
        vec![
            ("query", "{ me { id } }".to_owned()),
            ("extensions", "[1]".to_owned()),
        ],
    ] {
        let a = send(get(&app, w.owner.id, &params)).await;
        assert_eq!(a.status, 400, "{params:?}");
        assert_eq!(a.code(), "BAD_REQUEST");
    }

    // Outside dev mode a browser gets no page, and nothing it can read: 406.
    let page = |app: &TestApp, accept: &'static str| {
        send(app.client.get(app.url("/graphql")).header("accept", accept))
    };
    assert_eq!(page(&app, "text/html").await.status, 406);
    let dev = TestApp::spawn_with(|c| c.dev_mode = true).await;
    let page = page(&dev, "text/html,application/xhtml+xml,*/*;q=0.8").await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(String::from_utf8_lossy(&page.bytes).contains("graphiql"));
}

fn persisted(hash: &str) -> String {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": hash } }).to_string()
}

#[tokio::test]
async fn automatic_persisted_queries_register_once_for_every_instance() {
    let app = TestApp::spawn().await;
    let w = world(&app, 6, 2).await;
    let hash = cal_api::observe::document_hash(MONTH_VIEW);
    let by_hash = |app: &TestApp| {
        get(
            app,
            w.owner.id,
            &[
                ("operationName", "MonthView".to_owned()),
                ("variables", month_vars(w.calendar).to_string()),
                ("extensions", persisted(&hash)),
            ],
        )
        .header("accept", GQL)
    };
    let unknown = send(by_hash(&app)).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.code(), "PERSISTED_QUERY_NOT_FOUND");
    assert_eq!(
        unknown.json()["errors"][0]["message"],
        "PersistedQueryNotFound"
    );

    // A document that is not the hash's is refused, and not registered.
    let wrong = json!({ "query": "{ me { id } }", "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } } });
    let a = send(post(&app, w.owner.id, Some(GQL), &wrong)).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.code(), "PERSISTED_QUERY_HASH_MISMATCH");
    assert_eq!(
        send(by_hash(&app)).await.code(),
        "PERSISTED_QUERY_NOT_FOUND"
    );

    // Registered with its document, then found by hash: here and on another instance, which
    // shares only Redis (and the database) with this one.
    let register = json!({
        "query": MONTH_VIEW,
        "variables": month_vars(w.calendar),
        "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } }
    });
    let first = send(post(&app, w.owner.id, Some(GQL), &register)).await;
    assert_eq!(first.status, 200);
    let expected = first.json()["data"].clone();
    assert!(
        expected["calendar"]["events"]["edges"]
            .as_array()
            .unwrap()
            .len()
            == 6
    );
    let again = send(by_hash(&app)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["data"], expected);
    let other = TestApp::spawn_on(app.db.clone(), |_| {}, |_| {}).await;
    let there = send(by_hash(&other)).await;
    assert_eq!(
        there.status,
        200,
        "{}",
        String::from_utf8_lossy(&there.bytes)
    );
    assert_eq!(there.json()["data"], expected);

    // Without persisted queries, a hash is refused as Apollo's client expects.
    let off = TestApp::spawn_on(
        app.db.clone(),
        |c| c.persisted_queries = cal_api::PersistedMode::Off,
        |_| {},
    )
    .await;
    let a = send(post(&off, w.owner.id, Some(GQL), &register)).await;
    assert_eq!(a.code(), "PERSISTED_QUERY_NOT_SUPPORTED");
}

#[tokio::test]
async fn a_safelist_runs_only_the_manifest() {
    let id = cal_api::observe::document_hash(MONTH_VIEW);
    let manifest = cal_api::Manifest::parse(
        &json!({
            "format": "apollo-persisted-query-manifest",
            "version": 1,
            "operations": [{ "id": id, "name": "MonthView", "type": "query", "body": MONTH_VIEW }]
        })
        .to_string(),
    )
    .unwrap();
    let app = TestApp::spawn_with(|c| {
        c.persisted_queries = cal_api::PersistedMode::Safelist(Arc::new(manifest))
    })
    .await;
    let w = world(&app, 4, 2).await;
    let by_id = send(
        get(
            &app,
            w.owner.id,
            &[
                ("variables", month_vars(w.calendar).to_string()),
                ("extensions", persisted(&id)),
            ],
        )
        .header("accept", GQL),
    )
    .await;
    assert_eq!(by_id.status, 200);
    assert_eq!(
        by_id.json()["data"]["calendar"]["events"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let by_text = send(post(
        &app,
        w.owner.id,
        Some(GQL),
        &json!({ "query": MONTH_VIEW, "variables": month_vars(w.calendar) }),
    ))
    .await;
    assert_eq!(by_text.status, 200);
    let other = send(post(
        &app,
        w.owner.id,
        Some(GQL),
        &json!({ "query": "{ me { id } }" }),
    ))
    .await;
    assert_eq!(other.status, 400);
    assert_eq!(other.code(), "QUERY_NOT_IN_SAFELIST");
    let other_hash = cal_api::observe::document_hash("{ me { id } }");
    let unknown = send(post(
        &app,
        w.owner.id,
        Some(GQL),
        &json!({ "extensions": { "persistedQuery": { "version": 1, "sha256Hash": other_hash } } }),
    ))
    .await;
    assert_eq!(unknown.code(), "PERSISTED_QUERY_NOT_IN_LIST");
    let register = send(post(
        &app,
        w.owner.id,
        Some("application/json"),
        &json!({ "query": "{ me { id } }", "extensions": { "persistedQuery": { "version": 1, "sha256Hash": other_hash } } }),
    ))
    .await;
    assert_eq!(
        register.status, 200,
        "legacy media type: request errors are 200"
    );
    assert_eq!(register.code(), "QUERY_NOT_IN_SAFELIST");
}

#[tokio::test]
async fn etags_revalidate_to_304_until_something_changes() {
    let app = TestApp::spawn().await;
    let w = world(&app, 8, 2).await;
    let first = send(get(&app, w.owner.id, &month_params(w.calendar))).await;
    assert_eq!(first.status, 200);
    let tag = first.header("etag").to_owned();
    assert!(
        tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"),
        "{tag}"
    );
    assert_eq!(first.header("cache-control"), "private, no-cache");
    let vary = first.header("vary").to_ascii_lowercase();
    for h in ["authorization", "accept", "accept-encoding"] {
        assert!(vary.contains(h), "{vary}");
    }
    // The second answer comes from the response cache: same tag.
    let second = send(get(&app, w.owner.id, &month_params(w.calendar))).await;
    assert_eq!(second.header("etag"), tag);
    let errors = || {
        app.metric(
            "cal_graphql_request_duration_seconds_count",
            &[("outcome", "error")],
        )
    };
    let errors_before = errors().await;
    let revalidated =
        send(get(&app, w.owner.id, &month_params(w.calendar)).header("if-none-match", &tag)).await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(errors().await, errors_before, "a 304 is not an error");
    assert!(revalidated.bytes.is_empty());
    assert_eq!(revalidated.header("etag"), tag);
    assert_eq!(revalidated.header("cache-control"), "private, no-cache");
    // A POST of the same query revalidates too (its tag is the same answer's).
    let body = json!({ "query": MONTH_VIEW, "variables": month_vars(w.calendar) });
    let posted = send(post(&app, w.owner.id, None, &body).header("if-none-match", &tag)).await;
    assert_eq!(posted.status, 304);
    // The tag names the answer, not the viewer: someone who may not read the calendar presenting
    // the owner's tag gets their own answer (a denial), never a 304.
    let stranger = app.user("Stranger").await;
    let denied =
        send(get(&app, stranger.id, &month_params(w.calendar)).header("if-none-match", &tag)).await;
    assert_eq!(denied.status, 200);
    assert_eq!(denied.code(), "FORBIDDEN");
    assert_ne!(denied.header("etag"), tag);

    // A write: the old tag no longer matches, the new answer shows the write.
    let ev = &w.events[0];
    let upd = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { version } }";
    let written = send(post(
        &app,
        w.owner.id,
        None,
        &json!({ "query": upd, "variables": { "e": ev.id.to_string(), "v": ev.version, "t": "Moved" } }),
    ))
    .await;
    assert_eq!(written.status, 200);
    assert!(
        written.headers.get("etag").is_none(),
        "a mutation has no tag"
    );
    assert_eq!(written.header("cache-control"), "no-store");
    let after =
        send(get(&app, w.owner.id, &month_params(w.calendar)).header("if-none-match", &tag)).await;
    assert_eq!(after.status, 200);
    assert_ne!(after.header("etag"), tag);
    assert!(after.json().to_string().contains("Moved"));
    let new_tag = after.header("etag").to_owned();
    let again =
        send(get(&app, w.owner.id, &month_params(w.calendar)).header("if-none-match", &new_tag))
            .await;
    assert_eq!(again.status, 304);
}

fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "zstd" => out = zstd::stream::decode_all(bytes).unwrap(),
        "" => out = bytes.to_vec(),
        other => panic!("unexpected coding {other}"),
    }
    out
}

#[tokio::test]
async fn answers_are_compressed_as_negotiated_each_coding_with_its_own_tag() {
    let app = TestApp::spawn().await;
    let w = world(&app, 20, 3).await;
    let plain = send(get(&app, w.owner.id, &month_params(w.calendar))).await;
    let plain_data = plain.json()["data"].clone();
    let mut tags = vec![plain.header("etag").to_owned()];
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.5", "gzip"),
    ] {
        // Twice: once executed or from the cache, then from the response cache.
        for _ in 0..2 {
            let a = send(
                get(&app, w.owner.id, &month_params(w.calendar)).header("accept-encoding", accept),
            )
            .await;
            assert_eq!(a.status, 200);
            assert_eq!(a.header("content-encoding"), coding, "{accept}");
            assert!(a.bytes.len() * 3 < plain.bytes.len(), "{coding} compresses");
            let body: Value = serde_json::from_slice(&decode(coding, &a.bytes)).unwrap();
            assert_eq!(body["data"], plain_data);
            assert!(
                a.header("etag").ends_with(&format!("-{coding}\"")),
                "{}",
                a.header("etag")
            );
            let revalidated = send(
                get(&app, w.owner.id, &month_params(w.calendar))
                    .header("accept-encoding", accept)
                    .header("if-none-match", a.header("etag")),
            )
            .await;
            assert_eq!(revalidated.status, 304);
            tags.push(a.header("etag").to_owned());
        }
    }
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 4, "identity, gzip, br, zstd: {tags:?}");
    // An identity tag does not revalidate a compressed representation.
    let other_coding = send(
        get(&app, w.owner.id, &month_params(w.calendar))
            .header("accept-encoding", "br")
            .header("if-none-match", plain.header("etag")),
    )
    .await;
    assert_eq!(other_coding.status, 200);
}

#[tokio::test]
async fn cors_lets_in_configured_origins_and_preflights_never_reach_the_database() {
    let allowed = "https://calendar.example.com";
    let app = TestApp::spawn_with(|c| {
        c.cors_origins = cal_api::CorsOrigins::parse(allowed).unwrap();
    })
    .await;
    let preflight = |origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type, x-consistency-token",
            )
    };
    // With the database gone, a preflight is still answered: it never gets that far.
    app.db.pool.close().await;
    let ok = send(preflight(allowed)).await;
    assert!(ok.status == 200 || ok.status == 204, "{}", ok.status);
    assert_eq!(ok.header("access-control-allow-origin"), allowed);
    assert!(ok.header("access-control-allow-methods").contains("POST"));
    let headers = ok
        .header("access-control-allow-headers")
        .to_ascii_lowercase();
    for h in ["authorization", "content-type", "x-consistency-token"] {
        assert!(headers.contains(h), "{headers}");
    }
    let stranger = send(preflight("https://evil.example")).await;
    assert!(
        stranger
            .headers
            .get("access-control-allow-origin")
            .is_none()
    );

    // The actual request: the origin is allowed, and a script may read the tag.
    let open = TestApp::spawn_with(|c| {
        c.cors_origins = cal_api::CorsOrigins::parse(allowed).unwrap();
    })
    .await;
    let me = open.user("Mia").await;
    let a = send(
        post(&open, me.id, None, &json!({ "query": "{ me { id } }" })).header("origin", allowed),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("access-control-allow-origin"), allowed);
    assert!(
        a.header("access-control-expose-headers")
            .to_ascii_lowercase()
            .contains("etag")
    );

    // By default (prod) no origin is let in.
    let closed = TestApp::spawn().await;
    let a = send(
        closed
            .client
            .request(reqwest::Method::OPTIONS, closed.url("/graphql"))
            .header("origin", allowed)
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
}
