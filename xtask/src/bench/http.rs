//! `cargo xtask bench-http`: what the HTTP protocol features buy for the month view, on the
//! large seed, with the default tiers (L1 + L2 + response cache):
//! - the bytes on the wire of one month view, plain and with gzip, br and zstd (an answer from the
//!   response cache, GET, as a browser sends it), and of the request itself, as a POST body and
//!   as an APQ GET (hash only);
//! - wrk on one fixed GET: a full response-cache hit next to a `304 Not Modified` revalidation
//!   with its `If-None-Match`, identity and br.

use super::{BenchArgs, Mode, WrkResult, run_wrk, wrk_lat, wrk_rps};
use crate::http_client::http_request_raw;
use crate::report::command_line;
use anyhow::{Result, ensure};

pub fn run(args: BenchArgs) -> Result<()> {
    super::validate(&args)?;
    let command = command_line();
    let setup = super::prepare(&args)?;
    let log = setup.out_dir.join("server-http.log");
    let mut server = super::start_server(&args, &setup, Mode::L1l2, &log)?;
    let body: serde_json::Value = serde_json::from_str(&setup.wrk_body)?;
    let query = body["query"].as_str().unwrap_or_default().to_owned();
    let variables = body["variables"].to_string();
    let path = format!(
        "/graphql?{}",
        serde_urlencoded::to_string([("query", &query), ("variables", &variables)])?
    );
    let auth = format!("Bearer {}", setup.wrk_token);
    let accept = "application/graphql-response+json";
    let get = |encoding: Option<&str>, tag: Option<&str>| {
        let mut headers = vec![("Authorization", auth.as_str()), ("Accept", accept)];
        if let Some(e) = encoding {
            headers.push(("Accept-Encoding", e));
        }
        if let Some(t) = tag {
            headers.push(("If-None-Match", t));
        }
        http_request_raw(&setup.listen, "GET", &path, &headers, b"")
    };

    // Bytes: the second answer of each is the response cache's.
    let mut sizes = Vec::new();
    let mut tags = Vec::new();
    for encoding in [None, Some("gzip"), Some("br"), Some("zstd")] {
        get(encoding, None)?;
        let (status, head, bytes) = get(encoding, None)?;
        let head = head.to_ascii_lowercase();
        ensure!(status == 200, "the month view over GET answered {status}");
        if let Some(e) = encoding {
            ensure!(
                head.contains(&format!("content-encoding: {e}")),
                "asked for {e}, got: {head}"
            );
        }
        let tag = head
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .map(|t| t.trim().to_owned())
            .ok_or_else(|| anyhow::anyhow!("no etag in {head}"))?;
        let (status, _, empty) = get(encoding, Some(&tag))?;
        ensure!(
            status == 304 && empty.is_empty(),
            "revalidation answered {status}"
        );
        sizes.push((encoding.unwrap_or("identity"), bytes.len()));
        tags.push((encoding, tag));
    }
    let hash = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(query.as_bytes()))
    };
    let apq_path = format!(
        "/graphql?{}",
        serde_urlencoded::to_string([
            ("variables", variables.as_str()),
            (
                "extensions",
                &format!(r#"{{"persistedQuery":{{"version":1,"sha256Hash":"{hash}"}}}}"#)
            ),
        ])?
    );
    // The hash-only GET must really answer the month view: register the document, then ask.
    let register = serde_json::json!({
        "query": query,
        "variables": body["variables"],
        "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } },
    })
    .to_string();
    let json_headers = [
        ("Authorization", auth.as_str()),
        ("Accept", accept),
        ("Content-Type", "application/json"),
    ];
    let (status, _, _) = http_request_raw(
        &setup.listen,
        "POST",
        "/graphql",
        &json_headers,
        register.as_bytes(),
    )?;
    ensure!(
        status == 200,
        "registering the persisted query answered {status}"
    );
    let (status, _, by_hash) =
        http_request_raw(&setup.listen, "GET", &apq_path, &json_headers[..2], b"")?;
    let month = format!("\"calendar\":{{\"id\":\"{}\"", setup.wrk_calendar);
    ensure!(
        status == 200 && String::from_utf8_lossy(&by_hash).contains(&month),
        "the hash-only GET answered {status} without the month view"
    );

    // Rates: a full hit and a 304, identity and br.
    let mut runs: Vec<(String, WrkResult)> = Vec::new();
    if let Some(wrk) = &setup.wrk {
        for (encoding, tag) in [&tags[0], &tags[2]] {
            // A-B-B-A, so that drift over the run favours neither.
            for revalidate in [false, true, true, false] {
                let name = format!(
                    "{} {}",
                    if revalidate {
                        "304 revalidation"
                    } else {
                        "full response-cache hit"
                    },
                    encoding.unwrap_or("identity")
                );
                let mut lua = format!(
                    "-- written by `cargo xtask bench-http`\nwrk.method = \"GET\"\nwrk.path = [==[{path}]==]\n\
                     wrk.headers[\"Authorization\"] = \"{auth}\"\nwrk.headers[\"Accept\"] = \"{accept}\"\n"
                );
                if let Some(e) = encoding {
                    lua.push_str(&format!("wrk.headers[\"Accept-Encoding\"] = \"{e}\"\n"));
                }
                if revalidate {
                    lua.push_str(&format!("wrk.headers[\"If-None-Match\"] = [==[{tag}]==]\n"));
                }
                let slug = name.replace(' ', "-");
                let script = setup.out_dir.join(format!("wrk-http-{slug}.lua"));
                std::fs::write(&script, lua)?;
                let result = run_wrk(
                    &args,
                    wrk,
                    &script,
                    &format!("http://{}/graphql", setup.listen),
                    &setup.out_dir.join(format!("wrk-http-{slug}.txt")),
                )?;
                runs.push((name, result));
            }
        }
    }
    server.stop();

    println!("\n<!-- {command} -->\n");
    println!(
        "| month view (calendar {}, the hottest) | bytes on the wire (body) |",
        setup.wrk_calendar
    );
    println!("|---|---:|");
    let plain = sizes[0].1 as f64;
    for (encoding, n) in &sizes {
        println!(
            "| answer, {encoding} | {n} ({:.1}x smaller) |",
            plain / *n as f64
        );
    }
    println!("| request: POST body | {} |", setup.wrk_body.len());
    println!("| request: GET with the document | {} (path) |", path.len());
    println!(
        "| request: APQ GET (hash only) | {} (path) |",
        apq_path.len()
    );
    if !runs.is_empty() {
        println!(
            "\n| wrk, one fixed GET, {} connections, {} | req/s | p50 / p99 ms | 4xx/5xx |",
            args.wrk_connections, args.wrk_duration
        );
        println!("|---|---:|---:|---:|");
        for (name, r) in &runs {
            println!(
                "| {name} | {} | {} | {} |",
                wrk_rps(Some(r)),
                wrk_lat(Some(r)),
                r.non_2xx
            );
        }
        for group in runs.chunks(4) {
            let mean = |i: usize, j: usize| -> Option<f64> {
                Some((group.get(i)?.1.rps? + group.get(j)?.1.rps?) / 2.0)
            };
            if let (Some(hit), Some(not_modified)) = (mean(0, 3), mean(1, 2)) {
                println!(
                    "\n{} / {} (means of the two runs each): **{:.2}x** the request rate",
                    group[1].0,
                    group[0].0,
                    not_modified / hit
                );
            }
        }
    }
    Ok(())
}
