//! PostgreSQL restarted and stopped under load, against the real app over a cluster of the
//! test's own (the shared server is never disturbed), with the service's own pool settings
//! (`cal_storage::pool_options`):
//! - no acknowledged write is lost, and each has its value afterwards;
//! - nothing a failed (rolled-back) mutation wrote is ever read, through the caches or not;
//! - while the database is down, warm (cached) reads are still answered and everything else fails
//!   with the stable code of internal errors and nothing of the driver's text;
//! - once the database is back, errors stop after a bounded number of attempts;
//! - `/ready` reports the outage and the recovery.

use crate::common::*;
use cal_test_support::{PgCluster, TestDb, sql};
use chrono::Duration;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The app's pool: small enough that every connection of it is in use during the load.
const POOL: u32 = 6;

/// Once the database is back, at most this many of a client's requests may still fail: the
/// first request that finds its pooled connection dead retires every connection opened before
/// (`cal_storage::pool_options`), so no client meets a second one. Without that, each of the
/// pool's dead connections would fail a request in turn.
const FAILURES_AFTER_RETURN: usize = 1;

/// Requests each worker sends once the database is back.
const OPS_AFTER_RETURN: usize = 25;

/// Creations per writer at most (the month view below reads at most 200 events).
const MAX_CREATES: usize = 70;

const CREATE: &str = "mutation($in: CreateEventInput!) { createEvent(input: $in) { id title } }";
const UPDATE: &str = "mutation($e: ID!, $v: Int!, $t: String!) { updateEvent(id: $e, \
                      expectedVersion: $v, input: { title: $t }) { version title } }";
const EVENT: &str = "query($e: ID!) { event(id: $e) { id title } }";
/// Up to 200 events of a calendar's anchor month, with [`month_vars`].
const MONTH: &str = "query($calendarId: ID!, $from: DateTime!, $to: DateTime!) { \
                     calendar(id: $calendarId) { events(from: $from, to: $to, first: 200) \
                     { edges { node { id title } } } } }";

/// What one request got: its data, or its first error.
#[derive(Debug, Clone)]
enum Outcome {
    Ok(Value),
    Failed {
        status: u16,
        code: String,
        body: Value,
    },
}

impl Outcome {
    fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

async fn send(app: &TestApp, user: UserId, query: &str, variables: Value) -> Outcome {
    let (status, body) = app
        .post_raw(
            Some(user),
            json!({ "query": query, "variables": variables }),
        )
        .await;
    if status == 200 && body.get("errors").is_none() {
        return Outcome::Ok(body["data"].clone());
    }
    let code = body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    Outcome::Failed { status, code, body }
}

/// A failure caused by the database being away: answered (HTTP 200, as GraphQL errors are) with
/// the stable code of internal errors and nothing of the driver's text.
fn assert_outage_error(o: &Outcome, what: &str) {
    if let Outcome::Failed { status, code, body } = o {
        assert_eq!(*status, 200, "{what}: {body}");
        assert_eq!(code, "INTERNAL_SERVER_ERROR", "{what}: {body}");
        let errors = body["errors"].as_array().expect("errors");
        for e in errors {
            assert_eq!(e["message"], "internal error", "{what}: {body}");
        }
    }
}

/// Every title found anywhere in `data`.
fn titles(data: &Value, into: &mut BTreeSet<String>) {
    match data {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("title", Value::String(t)) => {
                        into.insert(t.clone());
                    }
                    _ => titles(v, into),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| titles(v, into)),
        _ => {}
    }
}

/// What the workers saw.
#[derive(Default)]
struct Seen {
    /// Every title in every successful read.
    read_titles: BTreeSet<String>,
    /// Acknowledged creations: (event id, title).
    created: Vec<(i64, String)>,
    /// Titles of creations that failed (committed or not: the database tells afterwards).
    failed_creates: Vec<String>,
    /// The last acknowledged update of the updated event: (version, title).
    last_update: Option<(i64, String)>,
    /// Titles of failed updates whose expected version a later update still found: those
    /// certainly rolled back.
    rolled_back_updates: Vec<String>,
    /// Failed updates not (yet) known to be rolled back.
    pending_updates: Vec<String>,
}

/// Per worker: the outcomes of the requests it started after the database came back.
type AfterReturn = Arc<Mutex<Vec<Vec<bool>>>>;

struct Load {
    app: Arc<TestApp>,
    owner: UserId,
    calendar: CalendarId,
    updated: EventId,
    seen: Arc<Mutex<Seen>>,
    /// Set once the restart has returned (the database accepts connections again).
    back: Arc<AtomicBool>,
    after: AfterReturn,
}

impl Load {
    /// Runs `op` until it has run [`OPS_AFTER_RETURN`] times after the return (or `limit`
    /// times in all), recording the outcomes of those after the return in slot `slot`.
    async fn worker<F, Fut>(&self, slot: usize, limit: usize, mut op: F)
    where
        F: FnMut(usize) -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        for i in 0..limit {
            let after = self.back.load(Ordering::Acquire);
            let o = op(i).await;
            assert_outage_error(&o, "a request during the restart");
            if after {
                let mut all = self.after.lock().unwrap();
                all[slot].push(o.is_ok());
                if all[slot].len() >= OPS_AFTER_RETURN {
                    return;
                }
            }
            // Let the load run until the restart has happened and been observed.
            if !after && i + 1 == limit {
                panic!("worker {slot} ran out of requests before the database came back");
            }
        }
    }

    async fn writer(&self, slot: usize, k: usize) {
        let app = self.app.clone();
        let (owner, calendar, seen) = (self.owner, self.calendar, self.seen.clone());
        self.worker(slot, MAX_CREATES, |i| {
            let app = app.clone();
            let seen = seen.clone();
            async move {
                let title = format!("w{k}-{i}");
                let start = month_start()
                    + Duration::hours(24 + 2 * i as i64)
                    + Duration::minutes(k as i64);
                let o = send(
                    &app,
                    owner,
                    CREATE,
                    json!({ "in": { "calendarId": calendar.to_string(), "title": title,
                        "startTime": start.to_rfc3339(),
                        "endTime": (start + Duration::minutes(30)).to_rfc3339() } }),
                )
                .await;
                let mut s = seen.lock().unwrap();
                match &o {
                    Outcome::Ok(d) => {
                        let ev = &d["createEvent"];
                        assert_eq!(ev["title"], title.as_str());
                        let id = ev["id"].as_str().unwrap().parse().unwrap();
                        s.created.push((id, title));
                    }
                    Outcome::Failed { .. } => s.failed_creates.push(title),
                }
                o
            }
        })
        .await;
    }

    async fn updater(&self, slot: usize) {
        let (app, owner, id, seen) = (
            self.app.clone(),
            self.owner,
            self.updated,
            self.seen.clone(),
        );
        let version = Arc::new(Mutex::new(app.event_version(id.get()).await));
        self.worker(slot, 400, |i| {
            let (app, seen, version) = (app.clone(), seen.clone(), version.clone());
            async move {
                let title = format!("u{i}");
                let v = *version.lock().unwrap();
                let o = send(
                    &app,
                    owner,
                    UPDATE,
                    json!({ "e": id.to_string(), "v": v, "t": title }),
                )
                .await;
                let mut s = seen.lock().unwrap();
                match &o {
                    Outcome::Ok(d) => {
                        let new = d["updateEvent"]["version"].as_i64().unwrap();
                        assert_eq!(d["updateEvent"]["title"], title.as_str());
                        // Still at `v`: none of the failed attempts at `v` committed.
                        let pending = std::mem::take(&mut s.pending_updates);
                        s.rolled_back_updates.extend(pending);
                        s.last_update = Some((new, title));
                        *version.lock().unwrap() = new;
                        o
                    }
                    Outcome::Failed { code, body, .. } if code == "VERSION_CONFLICT" => {
                        // One of the failed attempts at `v` committed after all.
                        s.pending_updates.clear();
                        s.last_update = None;
                        *version.lock().unwrap() =
                            body["errors"][0]["extensions"]["currentVersion"]
                                .as_i64()
                                .unwrap();
                        Outcome::Ok(Value::Null)
                    }
                    Outcome::Failed { .. } => {
                        s.pending_updates.push(title);
                        o
                    }
                }
            }
        })
        .await;
    }

    async fn reader(&self, slot: usize, month: bool) {
        let (app, owner, seen) = (self.app.clone(), self.owner, self.seen.clone());
        let (calendar, updated) = (self.calendar, self.updated);
        self.worker(slot, 2_000, |_| {
            let (app, seen) = (app.clone(), seen.clone());
            async move {
                let o = if month {
                    send(&app, owner, MONTH, month_vars(calendar)).await
                } else {
                    send(&app, owner, EVENT, json!({ "e": updated.to_string() })).await
                };
                if let Outcome::Ok(d) = &o {
                    titles(d, &mut seen.lock().unwrap().read_titles);
                }
                o
            }
        })
        .await;
    }
}

/// Runs a blocking fixture call off the runtime's workers.
async fn blocking(f: impl FnOnce() + Send + 'static) {
    tokio::task::spawn_blocking(f).await.unwrap();
}

async fn ready(app: &TestApp) -> u16 {
    app.client
        .get(app.url("/ready"))
        .send()
        .await
        .expect("server reachable")
        .status()
        .as_u16()
}

/// Sends `op` until it succeeds (at most `limit` attempts); answers the attempts it took.
async fn attempts_until_ok<Fut>(limit: usize, mut op: impl FnMut() -> Fut) -> usize
where
    Fut: std::future::Future<Output = Outcome>,
{
    for n in 1..=limit {
        let o = op().await;
        if o.is_ok() {
            return n;
        }
        assert_outage_error(&o, "a request after the database came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("still failing after {limit} attempts once the database was back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_under_load_loses_nothing_and_recovers() {
    let cluster = Arc::new(tokio::task::block_in_place(PgCluster::start));
    let db = TestDb::on(&cluster.url(), cal_storage::pool_options(POOL)).await;
    let app = Arc::new(TestApp::spawn_on(Arc::new(db), |_| {}, |_| {}).await);
    let w = world(&app, 6, 2).await;
    // A second calendar, read only while the database is down.
    let quiet = world(&app, 3, 1).await;
    assert_eq!(ready(&app).await, 200);

    // 1. Restart under load: two writers, one updater, two readers.
    let load = Arc::new(Load {
        app: app.clone(),
        owner: w.owner.id,
        calendar: w.calendar,
        updated: w.events[0].id,
        seen: Default::default(),
        back: Default::default(),
        after: Arc::new(Mutex::new(vec![Vec::new(); 5])),
    });
    let workers = [
        tokio::spawn({
            let l = load.clone();
            async move { l.writer(0, 0).await }
        }),
        tokio::spawn({
            let l = load.clone();
            async move { l.writer(1, 1).await }
        }),
        tokio::spawn({
            let l = load.clone();
            async move { l.updater(2).await }
        }),
        tokio::spawn({
            let l = load.clone();
            async move { l.reader(3, true).await }
        }),
        tokio::spawn({
            let l = load.clone();
            async move { l.reader(4, false).await }
        }),
    ];
    // Restart once every kind of request has succeeded a few times.
    for _ in 0..2_000 {
        let warm = {
            let s = load.seen.lock().unwrap();
            s.created.len() >= 6 && s.last_update.is_some() && s.read_titles.len() >= 6
        };
        if warm {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let c = cluster.clone();
    blocking(move || c.restart_fast()).await;
    load.back.store(true, Ordering::Release);
    for w in workers {
        w.await.expect("a worker failed");
    }
    let after = load.after.lock().unwrap().clone();
    for (slot, outcomes) in after.iter().enumerate() {
        let failed: Vec<usize> = (0..outcomes.len()).filter(|&i| !outcomes[i]).collect();
        assert!(
            failed.len() <= FAILURES_AFTER_RETURN,
            "worker {slot}: requests after the restart kept failing: {failed:?} of {}",
            outcomes.len()
        );
    }

    // 2. A longer outage: stop, look, start.
    let warm_month = month_vars(quiet.calendar);
    let warm_event = json!({ "e": quiet.events[0].id.to_string() });
    let cold_event = json!({ "e": quiet.events[1].id.to_string() });
    let owner = quiet.owner.id;
    let mut warm = Vec::new();
    for _ in 0..2 {
        warm = vec![
            send(&app, owner, MONTH, warm_month.clone()).await,
            send(&app, owner, EVENT, warm_event.clone()).await,
        ];
    }
    assert!(warm.iter().all(Outcome::is_ok), "{warm:?}");
    // Every connection of the pool open (and idle) when the server goes: all of them die.
    let mut held = Vec::new();
    for _ in 0..POOL {
        held.push(app.db.pool.acquire().await.unwrap());
    }
    drop(held);
    let c = cluster.clone();
    blocking(move || c.stop()).await;

    // Warm reads are answered from the caches; everything else waits for a connection until
    // the acquire timeout and fails (concurrently, so that the test waits for it once).
    for (query, vars, before) in [
        (MONTH, &warm_month, &warm[0]),
        (EVENT, &warm_event, &warm[1]),
    ] {
        let o = send(&app, owner, query, vars.clone()).await;
        let (Outcome::Ok(now), Outcome::Ok(then)) = (&o, before) else {
            panic!("a warm read failed while the database was down: {o:?}");
        };
        assert_eq!(now, then, "a warm read answered differently while down");
    }
    let down_title = "written while down";
    let start = month_start() + Duration::days(20);
    let create = json!({ "in": { "calendarId": quiet.calendar.to_string(), "title": down_title,
        "startTime": start.to_rfc3339(), "endTime": (start + Duration::hours(1)).to_rfc3339() } });
    let (down_ready, cold, write) = tokio::join!(
        ready(&app),
        send(&app, owner, EVENT, cold_event.clone()),
        send(&app, owner, CREATE, create.clone()),
    );
    assert_ne!(down_ready, 200, "/ready while the database is down");
    assert!(!cold.is_ok(), "a cold read succeeded without a database");
    assert_outage_error(&cold, "a cold read while the database is down");
    assert!(!write.is_ok(), "a write succeeded without a database");
    assert_outage_error(&write, "a write while the database is down");

    let c = cluster.clone();
    blocking(move || c.start_again()).await;
    let reads = attempts_until_ok(FAILURES_AFTER_RETURN + 1, || {
        send(&app, owner, EVENT, cold_event.clone())
    })
    .await;
    let back_title = "written once back";
    let writes = attempts_until_ok(FAILURES_AFTER_RETURN + 1, || {
        let mut c = create.clone();
        c["in"]["title"] = back_title.into();
        send(&app, owner, CREATE, c)
    })
    .await;
    println!("after the outage: {reads} attempt(s) to read, {writes} to write");
    assert_eq!(ready(&app).await, 200, "/ready once the database is back");

    // 3. What the database holds, and what the caches answer now.
    let pool = &app.db.pool;
    // The workers are done: what they saw is the test's now.
    let s = std::mem::take(&mut *load.seen.lock().unwrap());
    for (id, title) in &s.created {
        let stored = sql::live_event_title(pool, *id).await;
        assert_eq!(
            stored.as_deref(),
            Some(title.as_str()),
            "acknowledged event {id}"
        );
    }
    let (version, title) = sql::event_version_and_title(pool, w.events[0].id.get()).await;
    if let Some((acked_version, acked_title)) = &s.last_update {
        assert!(version >= *acked_version, "acknowledged update lost");
        if version == *acked_version {
            assert_eq!(&title, acked_title, "acknowledged update's value");
        } else {
            // Only a failed attempt after the acknowledged one can have moved it.
            assert!(s.pending_updates.contains(&title), "{title} at v{version}");
        }
    }
    let stored: BTreeSet<String> = sql::event_titles(pool).await.into_iter().collect();
    let mut never: Vec<&String> = s
        .failed_creates
        .iter()
        .filter(|t| !stored.contains(*t))
        .chain(s.rolled_back_updates.iter())
        .collect();
    let down = down_title.to_owned();
    assert!(
        !stored.contains(&down),
        "the write during the outage committed"
    );
    never.push(&down);
    // Through the caches now: twice each, the second from whatever the first filled.
    let mut seen = s.read_titles.clone();
    for _ in 0..2 {
        for (c, u) in [(w.calendar, w.owner.id), (quiet.calendar, quiet.owner.id)] {
            if let Outcome::Ok(d) = send(&app, u, MONTH, month_vars(c)).await {
                titles(&d, &mut seen);
            } else {
                panic!("month view failed after recovery");
            }
        }
        for (id, title) in &s.created {
            let Outcome::Ok(d) =
                send(&app, w.owner.id, EVENT, json!({ "e": id.to_string() })).await
            else {
                panic!("event {id} unreadable after recovery");
            };
            assert_eq!(
                d["event"]["title"],
                title.as_str(),
                "event {id} through the caches"
            );
        }
        let Outcome::Ok(d) = send(
            &app,
            w.owner.id,
            EVENT,
            json!({ "e": w.events[0].id.to_string() }),
        )
        .await
        else {
            panic!("the updated event is unreadable after recovery");
        };
        assert_eq!(
            d["event"]["title"],
            title.as_str(),
            "the updated event through the caches"
        );
    }
    assert!(
        seen.contains(back_title),
        "the write after the outage is read"
    );
    for t in never {
        assert!(
            !seen.contains(t),
            "{t}: written by a failed mutation, yet read"
        );
    }
    println!(
        "{} acknowledged creations, {} failed ({} rolled back), {} rolled-back updates",
        s.created.len(),
        s.failed_creates.len(),
        s.failed_creates
            .iter()
            .filter(|t| !stored.contains(*t))
            .count(),
        s.rolled_back_updates.len()
    );
}
