//! Real clients against the real server: the GraphQL-over-HTTP reference audit (`graphql-http`'s
//! `auditServer`), Apollo Client 4 with automatic persisted queries over GET and a browser-like
//! ETag cache, and a plain `fetch`. They run under node from `tests/js` (its `node_modules` is
//! installed by `cargo xtask test`).

use crate::common::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// `tests/js/node_modules` must be there: `cargo xtask test` installs it (`npm ci`).
pub(crate) fn node_modules() {
    for package in ["graphql-http", "@apollo/client", "graphql-ws", "ws"] {
        let manifest = js_dir()
            .join("node_modules")
            .join(package)
            .join("package.json");
        assert!(
            manifest.exists(),
            "{} is missing: run `cargo xtask test`, or `npm ci` in {}",
            manifest.display(),
            js_dir().display()
        );
    }
}

/// Runs `node <script> <args>` with `stdin`, returning its stdout as JSON.
pub(crate) fn node(script: &str, args: &[&str], stdin: &str) -> Value {
    node_modules();
    let mut child = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node {script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs the blocking `node` on a thread of its own, so the server keeps answering.
pub(crate) async fn node_async(script: &'static str, args: Vec<String>, stdin: String) -> Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node(script, &args, &stdin)
    })
    .await
    .unwrap()
}

/// Every MUST and SHOULD of the reference audit passes, in prod mode with a bearer token.
#[tokio::test]
async fn the_graphql_over_http_audit_passes() {
    let app = TestApp::spawn().await;
    assert!(!app.config.dev_mode, "prod mode");
    let me = app.user("Auditor").await;
    let results = node_async(
        "audit.mjs",
        vec![app.url("/graphql"), app.token(me.id)],
        String::new(),
    )
    .await;
    let results = results.as_array().expect("a list of audit results");
    assert!(
        results.len() >= 50,
        "the audit ran: {} results",
        results.len()
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r["status"] != "ok")
        .filter(|r| {
            let name = r["name"].as_str().unwrap_or("");
            name.starts_with("MUST") || name.starts_with("SHOULD")
        })
        .map(|r| {
            format!(
                "{} {} [{}]: {} (HTTP {})",
                r["id"], r["name"], r["status"], r["reason"], r["httpStatus"]
            )
        })
        .collect();
    assert!(failed.is_empty(), "audit failures:\n{}", failed.join("\n"));
    // The optional points are met too, except none.
    let optional: Vec<&Value> = results.iter().filter(|r| r["status"] != "ok").collect();
    assert!(optional.is_empty(), "MAY points not met: {optional:?}");
}

fn exchange_code(x: &Value) -> String {
    serde_json::from_str::<Value>(x["bodyText"].as_str().unwrap_or(""))
        .ok()
        .and_then(|b| {
            b["errors"][0]["extensions"]["code"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Apollo Client fetches the month view with APQ over GET, revalidates it with its tag (304),
/// runs a mutation and then reads it; a plain fetch asks for brotli.
#[tokio::test]
async fn apollo_client_uses_persisted_queries_get_and_etags() {
    let app = TestApp::spawn().await;
    let w = world(&app, 6, 2).await;
    let ev = &w.events[0];
    let vars = month_vars(w.calendar);
    let month = json!({ "kind": "apollo", "operation": "query", "document": MONTH_VIEW, "variables": vars });
    let rename = "mutation Rename($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, expectedVersion: $v, input: { title: $t }) { id version title } }";
    let query_string = serde_urlencoded::to_string([
        ("query", MONTH_VIEW.to_owned()),
        ("variables", vars.to_string()),
    ])
    .unwrap();
    let plan = json!({
        "url": app.url("/graphql"),
        "token": app.token(w.owner.id),
        "steps": [
            month, month, month,
            { "kind": "apollo", "operation": "mutation", "document": rename,
              "variables": { "e": ev.id.to_string(), "v": ev.version, "t": "Renamed by Apollo" } },
            month,
            { "kind": "fetch", "method": "GET", "path_and_query": format!("/graphql?{query_string}"),
              "headers": { "accept-encoding": "br", "accept": "application/graphql-response+json" }, "body": null },
        ]
    });
    let out = node_async("clients.mjs", vec![], plan.to_string()).await;
    let steps = out["steps"].as_array().unwrap();
    let x = out["exchanges"].as_array().unwrap();
    let log: Vec<String> = x
        .iter()
        .map(|e| format!("{} {} {}", e["method"], e["status"], exchange_code(e)))
        .collect();
    for (i, s) in steps.iter().enumerate().take(5) {
        assert!(s["error"].is_null(), "step {i}: {s} ({log:?})");
    }
    let events = |i: usize| steps[i]["data"]["calendar"]["events"]["edges"].clone();
    assert_eq!(events(0).as_array().unwrap().len(), 6);
    assert_eq!(events(1), events(0));
    assert_eq!(events(2), events(0));

    // 1st read: the hash alone over GET, unknown; then the document over POST (registers it).
    assert_eq!(x[0]["method"], "GET", "{log:?}");
    assert!(
        !x[0]["url"].as_str().unwrap().contains("query="),
        "hash only"
    );
    assert_eq!(exchange_code(&x[0]), "PERSISTED_QUERY_NOT_FOUND", "{log:?}");
    assert_eq!(x[1]["method"], "POST");
    assert_eq!(x[1]["status"], 200);
    // 2nd read: the hash over GET is known now; the answer carries a tag.
    assert_eq!(
        (x[2]["method"].as_str(), x[2]["status"].as_u64()),
        (Some("GET"), Some(200))
    );
    let tag = x[2]["etag"].as_str().expect("a tag").to_owned();
    assert_eq!(
        x[2]["contentType"],
        "application/graphql-response+json; charset=utf-8"
    );
    // 3rd read: revalidated, 304 without a body.
    assert_eq!(x[3]["requestHeaders"]["if-none-match"], tag.as_str());
    assert_eq!(x[3]["status"], 304, "{log:?}");
    assert_eq!(x[3]["bodyText"], "");

    // The mutation (always POST), then the read sees it although it presents the old tag.
    let renamed = &steps[3]["data"]["updateEvent"];
    assert_eq!(renamed["title"], "Renamed by Apollo");
    let after = x.iter().rposition(|e| e["method"] == "GET").unwrap();
    let read = &x[after];
    assert_eq!(
        read["requestHeaders"]["if-none-match"],
        tag.as_str(),
        "{log:?}"
    );
    assert_eq!(read["status"], 200, "{log:?}");
    assert_ne!(read["etag"], tag.as_str());
    assert!(
        events(4).to_string().contains("Renamed by Apollo"),
        "{}",
        events(4)
    );

    // A plain fetch asking for brotli gets it (fetch decodes it).
    let fetched = &steps[5];
    assert_eq!(fetched["status"], 200);
    assert_eq!(fetched["headers"]["content-encoding"], "br");
    let body: Value = serde_json::from_str(fetched["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["data"]["calendar"]["events"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
}
