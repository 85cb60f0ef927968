//! The invalidation consumer: applies every invalidation published by *other* instances to this
//! process's L1 and keeps [`crate::StreamProgress`] current; and the liveness monitor that
//! distrusts L1 while the stream is behind its bound.

use crate::feed::News;
use crate::invalidator::Invalidator;
use cal_cache::{BusError, Invalidation};
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs the consumer on a thread of its own (with a single-threaded runtime), not on the
/// request runtime: a delivered invalidation is applied as soon as the OS wakes that thread,
/// instead of queueing behind request tasks on busy workers. It stops when `stop` is cancelled
/// or the bus closes.
pub(crate) fn spawn(me: Arc<Invalidator>, stop: CancellationToken) -> std::thread::JoinHandle<()> {
    let stream = me.bus.subscribe();
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let nice = me.config.thread_nice;
    let thread = std::thread::Builder::new()
        .name("cal-invalidations".into())
        .spawn(move || {
            let _guard = tracing::dispatcher::set_default(&dispatch);
            cal_cache::priority::apply(nice, "invalidation threads");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(async move {
                tokio::select! {
                    () = consume(&me, stream) => {}
                    () = stop.cancelled() => {}
                }
            });
        });
    // At start-up; an instance that cannot hear invalidations must not serve.
    thread.expect("spawning the invalidation consumer thread")
}

/// Own messages are not applied (the writer already evicted its L1) but count as applied
/// positions and as proof of liveness.
async fn consume(me: &Invalidator, mut stream: BoxStream<'static, Result<Invalidation, BusError>>) {
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(inv) => {
                me.stream_metrics.received.inc();
                if !inv.is_heartbeat() && inv.origin != me.origin {
                    let span = tracing::info_span!(
                        "kafka.apply",
                        otel.kind = "consumer",
                        messaging.system = %me.bus.name(),
                        messaging.operation = "process",
                        messaging.message.origin = %inv.origin,
                        messaging.outbox_id = inv.outbox_id.unwrap_or(-1),
                        messaging.position = %inv.position.map(|p| p.to_string()).unwrap_or_default(),
                        cache.keys = inv.keys.len() as i64,
                    );
                    crate::trace::set_remote_parent(&span, &inv.trace_context);
                    span.in_scope(|| me.cache.apply_remote(&inv));
                    me.stream_metrics.applied.inc();
                    let lag_ms = cal_cache::now_ms().saturating_sub(inv.sent_at_ms);
                    me.stream_metrics.lag.observe(lag_ms as f64 / 1000.0);
                }
                // The in-process bus has one stream and no positions: partition 0.
                let partition = inv.position.map_or(0, |p| p.partition);
                me.progress.heard(partition, inv.sent_at_ms);
                if let Some(p) = inv.position {
                    me.progress.applied_up_to(p);
                }
                // Own rows too: this instance's subscribers hear its writes from the stream like
                // everyone else's, after the cache has dropped what they changed.
                me.feed.tell(News::Changed {
                    calendars: inv.calendars.into(),
                    sent_at_ms: inv.sent_at_ms,
                });
            }
            Err(e) => {
                // Lost messages: nothing in L1 can be trusted any more.
                tracing::warn!(error = %e, "invalidation stream failed; clearing L1");
                me.cache.clear_l1();
                me.feed.tell(News::Missed);
            }
        }
    }
}

/// Every tenth of the bound: distrust L1 while the freshest applied message is older than the
/// bound, trust it again (freshly cleared) once it is not.
pub(crate) async fn monitor_liveness(
    me: Arc<Invalidator>,
    bound: Duration,
    stop: CancellationToken,
) {
    let every = (bound / 10).max(Duration::from_millis(10));
    let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let age = cal_cache::now_ms().saturating_sub(me.progress.freshest_ms());
        let behind = age > bound_ms;
        if me.progress.set_behind(behind) != behind {
            if behind {
                tracing::warn!(
                    age_ms = age,
                    "invalidation stream is behind the liveness bound: bypassing and flushing L1"
                );
            } else {
                tracing::info!("invalidation stream caught up: L1 back in use");
            }
        }
        me.cache.distrust_l1(behind);
        me.stream_metrics.behind.set(i64::from(behind));
    }
}
