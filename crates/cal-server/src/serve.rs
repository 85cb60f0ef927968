//! Wiring: database connection (creating the database if missing), migrations, the HTTP server
//! with graceful shutdown, seeding with a progress bar. Logs and traces: `cal_server::telemetry`.

use crate::config::Settings;
use anyhow::{Context, Result};
use cal_api::tiers::Tiers;
use cal_api::{AppState, router};
use cal_bus_kafka::{KafkaBus, KafkaConfig};
use cal_cache::{InProcessBus, InvalidationBus, Position, TieredCache};
use cal_server::telemetry::hostname;
use cal_storage::Store;
use cal_storage::seed::{Progress, Scale};
use cal_sync::Invalidator;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connects (creating the database if it does not exist) and applies migrations.
pub async fn connect_and_migrate(settings: &Settings) -> Result<Store> {
    let pool = cal_storage::connect(&settings.db.url, settings.db.max_connections).await?;
    cal_storage::migrate(&pool)
        .await
        .context("migrations failed")?;
    Ok(Store::new(pool)
        .with_slow_statement_threshold(Duration::from_millis(settings.db.slow_statement_ms)))
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(name.to_owned());
    }
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub async fn seed(
    store: &Store,
    scale: Scale,
    anchor: Option<chrono::NaiveDate>,
) -> Result<cal_storage::seed::SeedSummary> {
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let anchor = anchor.unwrap_or_else(|| today.with_day(1).expect("day 1 exists"));
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let summary = store.seed(scale, anchor, &Bar(bar)).await?;
    eprintln!(
        "seeded {} users, {} calendars, {} resources, {} events, {} attendees, {} reservations in {:.1}s",
        summary.users,
        summary.calendars,
        summary.resources,
        summary.events,
        summary.attendees,
        summary.reservations,
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// Prints `[{calendarId, userId, token}]` for `n` calendars spread over the id range, each with its owner.
pub async fn print_fixtures(
    settings: &Settings,
    secret: &SecretString,
    n: i64,
    ttl: chrono::Duration,
) -> Result<()> {
    let store = connect_and_migrate(settings).await?;
    let fixtures: Vec<serde_json::Value> = store
        .spread_calendars(n)
        .await?
        .into_iter()
        .map(|(cal, owner)| {
            serde_json::json!({
                "calendarId": cal.to_string(),
                "userId": owner.to_string(),
                "token": cal_api::auth::mint(secret, owner, ttl),
            })
        })
        .collect();
    println!("{}", serde_json::to_string(&fixtures)?);
    Ok(())
}

pub async fn serve(settings: Settings, demo: bool) -> Result<()> {
    let api = settings.api_config()?;
    let store = connect_and_migrate(&settings).await?;
    let listener = TcpListener::bind(&settings.http.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.http.listen_addr))?;
    let addr = listener.local_addr()?;
    if demo {
        let demo_user = match store.first_user().await? {
            None => seed(&store, Scale::Demo, None).await?.demo_user_id,
            Some(user) => {
                tracing::info!("database already has data; not seeding");
                user
            }
        };
        let token = cal_api::auth::mint(&api.jwt_secret, demo_user, chrono::Duration::days(7));
        println!(
            "\nCalendar service on http://{addr}/graphql{}",
            if api.dev_mode {
                " (GraphiQL: open it in a browser)"
            } else {
                ""
            }
        );
        println!(
            "Dev token for user {demo_user} (send as `Authorization: Bearer <token>`):\n{token}\n"
        );
    }
    tracing::info!(%addr, dev_mode = api.dev_mode, "serving GraphQL on /graphql");
    let grace = Duration::from_secs(settings.http.shutdown_grace_secs);
    let (tiers, registry) = build_tiers(&settings).await?;
    tiers
        .sync
        .load_purge_generation(&store)
        .await
        .context("reading the newest purge from the change log")?;
    let state = AppState::new(store, api, tiers.clone(), registry);
    // The relay and the consumer outlive the HTTP server: requests still draining after the
    // signal write change-log rows that must go out, so they stop only once it has returned.
    let stop_sync = tokio_util::sync::CancellationToken::new();
    let sync = tiers
        .sync
        .start(state.store.clone(), stop_sync.clone().cancelled_owned());
    spawn_warming(&settings, tiers, state.store.clone());
    let subscriptions = state.clone();
    let app = router(state);
    // WebSocket connections are not part of HTTP's drain: close them when it starts.
    let shutdown = async move {
        shutdown_signal().await;
        subscriptions.close_subscriptions();
    };
    let served = run(listener, app, shutdown, grace).await;
    stop_sync.cancel();
    if tokio::time::timeout(grace, sync.join()).await.is_err() {
        tracing::warn!("the invalidation tasks did not stop within the grace period");
    }
    served
}

/// The cache tiers: L1 always (unless switched off), L2 when `REDIS_URL` or
/// `REDIS_CLUSTER_NODES` is set, and the
/// in-process invalidation bus (a single instance hears its own writes).
pub async fn build_tiers(settings: &Settings) -> Result<(Arc<Tiers>, prometheus::Registry)> {
    let cfg = settings.cache.config();
    let nodes = cfg.redis_cluster_nodes.len();
    match (cfg.redis_url.is_some() || nodes > 0, cfg.l2_enabled) {
        (false, _) => tracing::warn!(
            "neither REDIS_URL nor REDIS_CLUSTER_NODES is set: caching in process memory only (L1), no shared L2"
        ),
        (true, false) => tracing::warn!("CACHE_L2=false: the Redis tier is switched off"),
        _ if nodes > 0 => tracing::info!(nodes, "cache tiers: L1 (moka) over L2 (Redis Cluster)"),
        _ => tracing::info!("cache tiers: L1 (moka) over L2 (Redis)"),
    }
    if !cfg.l1_enabled {
        tracing::warn!("CACHE_L1=false: the in-process tier is switched off");
    }
    let registry = prometheus::Registry::new();
    let cache = TieredCache::new(cfg, &registry)
        .await
        .context("cache configuration")?;
    let origin = format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    let brokers = settings.bus.kafka_brokers();
    let (bus, start): (Arc<dyn InvalidationBus>, Vec<Position>) = match brokers {
        Some(brokers) => {
            let mut kc = KafkaConfig::new(brokers);
            kc.topic = settings.bus.topic.clone();
            kc.partitions = settings.bus.partitions;
            kc.fetch_wait = std::time::Duration::from_millis(settings.bus.fetch_wait_ms);
            kc.thread_nice = settings.sync.thread_nice();
            kc.client_id = origin.clone();
            // Positions this instance at the end of every partition before it serves anything.
            let bus = KafkaBus::connect(kc)
                .await
                .context("cannot connect to Kafka (KAFKA_BROKERS)")?;
            let start = bus.start_positions();
            tracing::info!(topic = %settings.bus.topic, ?start, "invalidation bus: Kafka, positioned at the end of every partition");
            (Arc::new(bus), start)
        }
        None => {
            tracing::warn!(
                "KAFKA_BROKERS is not set: in-process invalidation bus (a single instance only)"
            );
            (Arc::new(InProcessBus::default()), Vec::new())
        }
    };
    let shared = brokers.is_some();
    let sync = Invalidator::new(
        cache.clone(),
        bus,
        origin,
        settings.sync_config(shared).map_err(anyhow::Error::msg)?,
    );
    sync.progress().start_at(&start);
    let tiers = Tiers::new(cache, sync, settings.cache.ttls()?);
    Ok((Arc::new(tiers), registry))
}

/// Warms the current and next month of the most active calendars in the background; readiness
/// does not wait for it.
fn spawn_warming(settings: &Settings, tiers: Arc<Tiers>, store: Store) {
    let n = settings.cache.warm_calendars;
    if n == 0 {
        return;
    }
    tokio::spawn(async move {
        use chrono::{Datelike, Months, TimeZone};
        let now = chrono::Utc::now();
        let month = chrono::Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .expect("valid month start");
        let until = month + Months::new(2);
        let started = std::time::Instant::now();
        match store.most_active_calendars(n, month, until).await {
            Ok(ids) => {
                let warmed = cal_api::warm(&tiers, &store, &ids, month, until).await;
                tracing::info!(
                    warmed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "cache warmed"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cache warming skipped"),
        }
    });
}

/// Stack of every thread that resolves requests. Resolving nests a future per selection level;
/// a query within the depth limit (`MAX_DEPTH` 12: calendar → events → node → calendar, twice)
/// overflowed the default 2 MiB in a debug build and aborted the process. 8 MiB leaves room for
/// the limit with a margin; it is address space, paged in only as deep as a request goes.
pub const REQUEST_THREAD_STACK: usize = 8 * 1024 * 1024;

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish
/// (at most `grace`).
///
/// Connections are served by one single-threaded runtime per core; the main runtime accepts
/// and hands them out in turn, and a connection and its requests stay on the thread it was
/// given to. On the work-stealing runtime, every I/O event that made a task runnable woke a
/// parked worker to steal it: a futex wake-up and a context switch per request, which on a
/// cache hit cost more than the answer. Background work (the relay, warming, the Redis and bus
/// connections) stays on the main runtime.
pub async fn run(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<()> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handoffs = Vec::with_capacity(workers);
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let (to_worker, incoming) = tokio::sync::mpsc::unbounded_channel();
        handoffs.push(to_worker);
        let (app, mut stop) = (app.clone(), stop_rx.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .stack_size(REQUEST_THREAD_STACK)
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building an HTTP runtime")
                    .and_then(|rt| {
                        rt.block_on(async move {
                            axum::serve(Handoff { incoming, addr }, app)
                                .with_graceful_shutdown(async move {
                                    let _ = stop.wait_for(|s| *s).await;
                                })
                                .await
                                .context("server error")
                        })
                    });
                let _ = tx.send(served);
            })
            .context("starting an HTTP thread")?;
        done.push(rx);
    }
    let accepting = async move {
        let mut listener = listener;
        for next in (0..workers).cycle() {
            let (stream, peer) = axum::serve::Listener::accept(&mut listener).await;
            let _ = stream.set_nodelay(true);
            match stream.into_std() {
                Ok(stream) => {
                    let _ = handoffs[next].send((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a connection that could not be handed over")
                }
            }
        }
    };
    let all_done = async {
        for rx in done {
            rx.await.unwrap_or(Ok(()))?;
        }
        Ok::<(), anyhow::Error>(())
    };
    tokio::pin!(all_done);
    tokio::select! {
        r = &mut all_done => r?,
        () = accepting => {}
        () = shutdown => {
            tracing::info!("shutdown requested; draining in-flight requests");
            let _ = stop_tx.send(true);
            tokio::select! {
                r = &mut all_done => r?,
                () = tokio::time::sleep(grace) => {
                    tracing::warn!("grace period over; dropping remaining connections");
                }
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// One HTTP thread's side of the accept loop: the connections handed to it.
struct Handoff {
    incoming: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, std::net::SocketAddr)>,
    addr: std::net::SocketAddr,
}

impl axum::serve::Listener for Handoff {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some((stream, peer)) = self.incoming.recv().await else {
                // The accept loop ended: nothing more comes; shutdown stops this server.
                std::future::pending::<()>().await;
                unreachable!()
            };
            // Registers the socket with this thread's reactor.
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => return (stream, peer),
                Err(e) => tracing::warn!(error = %e, "dropping a handed-over connection"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
