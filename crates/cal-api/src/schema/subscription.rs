//! Subscriptions, over WebSocket at `/graphql` (`graphql-transport-ws`, the protocol of the
//! `graphql-ws` client library; the bearer token goes in `connection_init`): `calendarChanged`.
//!
//! A subscriber learns of changes from [`cal_sync::feed`]: the calendars each change-log row
//! changed, as this instance's invalidation consumer hears them (its own writes included). On
//! news of its calendar a subscription reads a page of `changes` after its sync token, as
//! `Query.changes` does (from the database, access checked again) but in one statement, run on
//! the subscriptions' own thread and pool ([`crate::live`]), and sends what it found with the
//! new token, so a client can mix subscriptions with `changes` without gaps. A member who
//! lost access gets FORBIDDEN as a final error at the next change of the calendar (a sharing
//! change is one).
//!
//! Resources are bounded: a connection and a viewer hold a limited number of subscriptions; the
//! feed keeps a fixed number of messages for all subscribers together, and one that falls
//! behind (a client that does not read: the socket pushes back, nothing is queued for it) gets a
//! single `resync` message instead of a growing backlog.
//!
//! Metrics (in the app's registry): `cal_subscriptions_active` (listening on this instance),
//! `cal_subscription_messages_total{kind}` (`changes`, `resync`, `error`: a final error),
//! `cal_subscription_refused_total{reason}` (`connection_limit`, `viewer_limit`) and
//! `cal_subscription_delivery_seconds`, from the writer sending a change to its message being
//! handed to the socket (as `cal_invalidation_lag_seconds` measures it to the cache).

use super::RequestCtx;
use super::sync::{self, EventChange};
use super::types::Wants;
use crate::error::{ApiError, ApiResult};
use crate::live::LiveThread;
use async_graphql::{Context, ID, SimpleObject, Subscription};
use cal_domain::{CalendarId, UserId};
use cal_sync::feed::{CalendarFeed, News, Subscriber};
use futures::Stream;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

/// Events per message at most; more changes go out as several messages.
const PAGE: usize = 100;

/// What one change (or a few together) of a calendar sends.
#[derive(SimpleObject)]
pub struct CalendarChange {
    /// The changed events, each once, as `changes` lists them.
    pub events: Vec<EventChange>,
    /// The calendar's sync token after these changes: pass it to `changes(since:)`, or to
    /// `calendarChanged(since:)` when subscribing again.
    pub sync_token: String,
    /// This subscriber missed notifications (it fell behind): `events` is empty, and
    /// `changes(since: syncToken)` fetches what it missed. Later messages follow on from then.
    pub resync: bool,
    /// The connection's turn, held until the message is resolved (see [`Connection`]).
    #[graphql(skip)]
    pub(crate) _turn: Option<OwnedMutexGuard<()>>,
}

/// Subscriptions held per viewer on this instance, and their metrics.
#[derive(Debug)]
pub struct ViewerSubscriptions {
    held: Mutex<HashMap<UserId, usize>>,
    metrics: Metrics,
}

impl ViewerSubscriptions {
    /// Registers the metrics in `registry` (a registry that has them already keeps its own, and
    /// these go unexported).
    pub fn new(registry: &Registry) -> Self {
        let metrics = Metrics::default();
        if let Err(e) = metrics.register(registry) {
            tracing::warn!(error = %e, "subscription metrics not registered");
        }
        Self {
            held: Mutex::default(),
            metrics,
        }
    }

    /// Subscriptions past their start (position taken) listening for changes on this instance:
    /// the `cal_subscriptions_active` gauge, which counts them whether or not it is exported.
    pub fn listening(&self) -> usize {
        usize::try_from(self.metrics.active.get()).unwrap_or(0)
    }
}

/// The subscriptions' metrics.
#[derive(Debug, Clone)]
struct Metrics {
    active: IntGauge,
    messages: IntCounterVec,
    refused: IntCounterVec,
    delivery: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric")
        };
        let m = Self {
            active: IntGauge::new(
                "cal_subscriptions_active",
                "Subscriptions listening for changes on this instance",
            )
            .expect("a valid metric"),
            messages: counter(
                "cal_subscription_messages_total",
                "Subscription messages sent, by kind (changes, resync, error: a final error)",
                "kind",
            ),
            refused: counter(
                "cal_subscription_refused_total",
                "Subscriptions refused by a limit, by reason (connection_limit, viewer_limit)",
                "reason",
            ),
            delivery: Histogram::with_opts(
                HistogramOpts::new(
                    "cal_subscription_delivery_seconds",
                    "From a writer sending a change to the subscription message that carries it",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("a valid metric"),
        };
        for kind in ["changes", "resync", "error"] {
            m.messages.with_label_values(&[kind]);
        }
        for reason in ["connection_limit", "viewer_limit"] {
            m.refused.with_label_values(&[reason]);
        }
        m
    }
}

impl Metrics {
    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.active.clone()))?;
        registry.register(Box::new(self.messages.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(self.delivery.clone()))
    }

    fn sent(&self, kind: &str) {
        self.messages.with_label_values(&[kind]).inc();
    }
}

/// What the subscriptions of one WebSocket connection share: the viewer's context, which reads
/// everything from the database and forgets what it loaded before each message, and whose turn
/// it is to use it (one message at a time, from its first read until it has been resolved: a
/// message must not show what another one loaded earlier).
pub struct Connection {
    pub(crate) r: Arc<RequestCtx>,
    turn: Arc<tokio::sync::Mutex<()>>,
    open: Arc<AtomicUsize>,
    viewers: Arc<ViewerSubscriptions>,
    feed: CalendarFeed,
    live: Arc<LiveThread>,
    shutdown: CancellationToken,
}

impl Connection {
    pub(crate) fn new(
        r: Arc<RequestCtx>,
        viewers: Arc<ViewerSubscriptions>,
        feed: CalendarFeed,
        live: Arc<LiveThread>,
        shutdown: CancellationToken,
    ) -> Self {
        r.cache_stats.read_source();
        Self {
            r,
            turn: Arc::default(),
            open: Arc::default(),
            viewers,
            feed,
            live,
            shutdown,
        }
    }

    /// One more subscription, if neither the connection's nor the viewer's limit forbids it.
    fn hold(&self, viewer: UserId) -> ApiResult<Held> {
        let config = &self.r.config;
        let per_connection = config.max_subscriptions_per_connection;
        let refused = |reason: &str| {
            self.viewers
                .metrics
                .refused
                .with_label_values(&[reason])
                .inc()
        };
        if self.open.fetch_add(1, Ordering::AcqRel) >= per_connection {
            self.open.fetch_sub(1, Ordering::AcqRel);
            refused("connection_limit");
            return Err(ApiError::SubscriptionLimit(format!(
                "at most {per_connection} subscriptions per connection"
            )));
        }
        let per_viewer = config.max_subscriptions_per_viewer;
        let mut held = self.viewers.held.lock().unwrap();
        let n = held.entry(viewer).or_default();
        if *n >= per_viewer {
            drop(held);
            self.open.fetch_sub(1, Ordering::AcqRel);
            refused("viewer_limit");
            return Err(ApiError::SubscriptionLimit(format!(
                "at most {per_viewer} subscriptions per viewer"
            )));
        }
        *n += 1;
        Ok(Held {
            open: self.open.clone(),
            viewers: self.viewers.clone(),
            viewer,
            listening: false,
        })
    }
}

/// A subscription's place under the limits, given back when it ends.
struct Held {
    open: Arc<AtomicUsize>,
    viewers: Arc<ViewerSubscriptions>,
    viewer: UserId,
    listening: bool,
}

impl Held {
    fn listen(&mut self) {
        self.listening = true;
        self.viewers.metrics.active.inc();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if self.listening {
            self.viewers.metrics.active.dec();
        }
        let mut held = self.viewers.held.lock().unwrap();
        if let Some(n) = held.get_mut(&self.viewer) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.viewer);
            }
        }
    }
}

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// Every committed change to the calendar's events, from any instance: the changed events
    /// (a deleted one as its id and `deleted: true`) with the calendar's new sync token. With
    /// `since` (a token of `changes` or of an earlier message), it first sends what changed
    /// after it; without, it starts now. Needs the reader role or above, checked when
    /// subscribing and again at every change: a member who loses access gets a final
    /// FORBIDDEN. Only over WebSocket.
    async fn calendar_changed(
        &self,
        ctx: &Context<'_>,
        calendar_id: ID,
        since: Option<String>,
    ) -> Result<impl Stream<Item = ApiResult<CalendarChange>> + use<>, ApiError> {
        let conn = ctx
            .data_opt::<Arc<Connection>>()
            .ok_or_else(|| {
                ApiError::bad_input("subscriptions are served over WebSocket at /graphql")
            })?
            .clone();
        let me = conn.r.viewer_id()?;
        let calendar = CalendarId::parse(&calendar_id)?;
        let mut held = conn.hold(me)?;
        let wants = Wants::of_event(&ctx.look_ahead().field("events").field("event"));
        // Listening before the position is read: a change after it is heard.
        let news = conn.feed.subscribe();
        let (token, pending) = {
            let _turn = conn.turn.lock().await;
            conn.r.forget().await;
            let key = sync::admit(&conn.r, calendar).await?;
            match since {
                Some(t) => {
                    sync::verify(&key, &t, calendar, me)?;
                    (t, true)
                }
                None => (sync::token_of_now(&conn.r, &key, calendar).await?, false),
            }
        };
        held.listen();
        let state = Listening {
            conn,
            calendar,
            token,
            pending,
            sent_at_ms: None,
            news,
            wants,
            done: false,
            _held: held,
        };
        Ok(futures::stream::unfold(state, Listening::next))
    }
}

/// One subscription between its messages.
struct Listening {
    conn: Arc<Connection>,
    calendar: CalendarId,
    token: String,
    /// Changes may be waiting after `token`.
    pending: bool,
    /// When the oldest change not yet sent was sent by its writer (Unix ms), if the feed told.
    sent_at_ms: Option<u64>,
    news: Subscriber,
    wants: Wants,
    /// A final error went out.
    done: bool,
    _held: Held,
}

impl Listening {
    async fn next(mut self) -> Option<(ApiResult<CalendarChange>, Self)> {
        if self.done {
            return None;
        }
        // When the oldest change this message covers was sent: what the news heard before the
        // read said (the read sees every change heard before it; news that a read finds
        // nothing new for was carried by an earlier message, and is not counted again).
        let mut sent_at_ms = None;
        let message = loop {
            if self.pending {
                sent_at_ms = self.sent_at_ms.take();
                // Boxed, as below: an idle subscription's state then holds no room for a read.
                match Box::pin(self.fetch()).await.transpose() {
                    None => continue,
                    Some(message) => break message,
                }
            }
            tokio::select! {
                news = self.news.next() => match news? {
                    News::Changed { calendars, sent_at_ms } => {
                        if calendars.contains(&self.calendar.get()) {
                            self.pending = true;
                            self.sent_at_ms.get_or_insert(sent_at_ms);
                        }
                    }
                    News::Missed => break Box::pin(self.resync()).await,
                },
                () = self.conn.shutdown.cancelled() => return None,
            }
        };
        let metrics = &self.conn.viewers.metrics;
        match &message {
            Ok(change) if change.resync => metrics.sent("resync"),
            Ok(_) => {
                metrics.sent("changes");
                if let Some(sent) = sent_at_ms {
                    let lag_ms = cal_cache::now_ms().saturating_sub(sent);
                    metrics.delivery.observe(lag_ms as f64 / 1000.0);
                }
            }
            Err(_) => {
                metrics.sent("error");
                self.done = true;
            }
        }
        Some((message, self))
    }

    /// A page of changes after the token (`None`: nothing new), moving the token past it.
    async fn fetch(&mut self) -> ApiResult<Option<CalendarChange>> {
        let turn = self.conn.turn.clone().lock_owned().await;
        let r = &self.conn.r;
        r.forget().await;
        let page = sync::live_page(
            r,
            &self.conn.live,
            self.calendar,
            &self.token,
            PAGE,
            self.wants,
        )
        .await?;
        self.pending = page.next_page_token.is_some();
        if let Some(next) = page.next_page_token.or(page.next_sync_token) {
            self.token = next;
        }
        if page.events.is_empty() {
            return Ok(None);
        }
        Ok(Some(CalendarChange {
            events: page.events,
            sync_token: self.token.clone(),
            resync: false,
            _turn: Some(turn),
        }))
    }

    /// Notifications were lost: tell the client where to fetch from, and go on from now.
    async fn resync(&mut self) -> ApiResult<CalendarChange> {
        let r = &self.conn.r;
        let key = r.store.sync_token_key().await?;
        let missed_from = std::mem::replace(
            &mut self.token,
            sync::token_of_now(r, &key, self.calendar).await?,
        );
        self.pending = false;
        self.sent_at_ms = None;
        Ok(CalendarChange {
            events: Vec::new(),
            sync_token: missed_from,
            resync: true,
            _turn: None,
        })
    }
}
