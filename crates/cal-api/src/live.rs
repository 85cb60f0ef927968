//! [`LiveReads`]: the thread subscriptions live on. A change reaches a subscriber through the
//! invalidation consumer, which runs on a thread of its own at raised priority (`cal_sync`'s
//! consumer); the message it turns into would otherwise wait behind month-view requests, for a
//! worker of the request runtime (to wake the subscription, to resolve the message, to write
//! it) and for a connection of the request pool (to read it). So WebSocket connections are
//! served on a thread of their own too, at the consumer's priority, and their reads use a small
//! pool of their own ([`CONNECTIONS`]): the delivery lag then stays close to the invalidation
//! lag under load (docs/benchmarks.md, "Live calendars").
//!
//! A message costs one statement ([`cal_storage::Store::live_changes`]: the role, the changed
//! rows and their state), plus what its selection asks beyond the event's own fields (through
//! the connection's loaders, on the request pool).

use crate::error::{ApiError, ApiResult};
use cal_domain::{CalendarId, UserId};
use cal_storage::Store;
use cal_storage::sync::{ChangeKey, LiveChanges, Snapshot};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};

/// Connections of the subscriptions' pool: one statement per message, each a few hundred
/// microseconds of the database's time, so two keep up with thousands of messages a second
/// (a write to a calendar with 10,000 subscribers here: docs/benchmarks.md).
pub const CONNECTIONS: u32 = 2;

/// The subscriptions' reader: a thread with a single-threaded runtime and a pool of its own.
/// Dropping it ends the thread, and with it the pool.
#[derive(Debug)]
pub struct LiveReads {
    handle: Handle,
    store: Store,
    /// One per connection: reads beyond wait here, without the pool's acquire timeout (a write
    /// to a calendar with 10,000 subscribers here queues 10,000 reads at once).
    turns: Arc<Semaphore>,
    _stop: oneshot::Sender<()>,
}

impl LiveReads {
    /// Starts the thread, at `nice` (see [`cal_cache::priority`]; `None`: the process's
    /// priority), with a pool of [`CONNECTIONS`] to the database of `store`, opened on first use.
    pub fn start(store: &Store, nice: Option<i32>) -> std::io::Result<Self> {
        let (started, ready) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let base = store.clone();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::Builder::new()
            .name("cal-live-reads".into())
            .spawn(move || {
                let _guard = tracing::dispatcher::set_default(&dispatch);
                cal_cache::priority::apply(nice, "subscription reads");
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                // Made inside the runtime, so its connections are driven by this thread.
                let store = rt.block_on(async {
                    let options = base.pool().connect_options();
                    let pool = cal_storage::pool_options(CONNECTIONS)
                        .connect_lazy_with((*options).clone());
                    base.on_pool(pool)
                });
                if started.send(Ok((rt.handle().clone(), store))).is_ok() {
                    rt.block_on(async {
                        let _ = stopped.await;
                    });
                }
            })?;
        let (handle, store) = ready.recv().map_err(|_| {
            std::io::Error::other("the subscription reads' thread ended before it started")
        })??;
        Ok(Self {
            handle,
            store,
            turns: Arc::new(Semaphore::new(CONNECTIONS as usize)),
            _stop: stop,
        })
    }

    /// Runs `task` on this thread (a WebSocket connection's serving, see `http/ws.rs`).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// [`Store::live_changes`], run on this thread and pool.
    pub(crate) async fn live_changes(
        &self,
        viewer: UserId,
        calendar: CalendarId,
        since: Snapshot,
        until: Option<Snapshot>,
        after: ChangeKey,
        limit: i64,
    ) -> ApiResult<LiveChanges> {
        let (store, turns) = (self.store.clone(), self.turns.clone());
        let read = self.handle.spawn(async move {
            let _turn = turns.acquire_owned().await;
            store
                .live_changes(viewer, calendar, &since, until.as_ref(), after, limit)
                .await
        });
        match read.await {
            Ok(changes) => Ok(changes?),
            Err(e) => Err(ApiError::Internal(format!(
                "a subscription read failed: {e}"
            ))),
        }
    }
}
