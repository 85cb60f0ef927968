//! [`LiveThread`]: the thread subscriptions live on. A change reaches a subscriber through the
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
use cal_storage::{StorageError, Store};
use std::future::Future;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, oneshot};

/// Connections of the subscriptions' pool: one statement per message, so two suffice for a
/// write to a calendar with 10,000 subscribers on one instance to reach them all in 1.8–2.9 s
/// (`cargo xtask bench-subscriptions`, docs/benchmarks.md).
pub const CONNECTIONS: u32 = 2;

/// A thread with a single-threaded runtime and a pool of its own. Dropping it ends the thread
/// (dropping what still runs there) and closes the pool; a connection served there holds the
/// app, and so this, until it ends.
#[derive(Debug)]
pub struct LiveThread {
    handle: Handle,
    store: Store,
    /// One per connection: reads beyond wait here, without the pool's acquire timeout (a write
    /// to a calendar with 10,000 subscribers here queues 10,000 reads at once).
    turns: Arc<Semaphore>,
    _stop: oneshot::Sender<()>,
}

impl LiveThread {
    /// Starts the thread, at `nice` (see [`cal_cache::priority`]; `None`: the process's
    /// priority), with a pool of [`CONNECTIONS`] to the database of `store`, opened on first use.
    pub fn start(store: &Store, nice: Option<i32>) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Made in the runtime's context, so its connections are driven by the thread.
        let pool = {
            let _in = rt.enter();
            cal_storage::pool_options(CONNECTIONS)
                .connect_lazy_with((*store.pool().connect_options()).clone())
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = rt.handle().clone();
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        std::thread::Builder::new()
            .name("cal-subscriptions".into())
            .spawn(move || {
                let _guard = tracing::dispatcher::set_default(&dispatch);
                cal_cache::priority::apply(nice, "subscriptions' thread");
                rt.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            store: store.on_pool(pool),
            turns: Arc::new(Semaphore::new(CONNECTIONS as usize)),
            _stop: stop,
        })
    }

    /// Runs `task` on this thread, detached (a WebSocket connection's serving, see
    /// `http/ws.rs`).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(task);
    }

    /// Runs `read` on this thread with its store (on its pool), one of [`CONNECTIONS`] at a time.
    pub(crate) async fn read<T, F>(&self, read: impl FnOnce(Store) -> F) -> ApiResult<T>
    where
        F: Future<Output = Result<T, StorageError>> + Send + 'static,
        T: Send + 'static,
    {
        let turns = self.turns.clone();
        let read = read(self.store.clone());
        let done = self.handle.spawn(async move {
            let _turn = turns.acquire_owned().await;
            read.await
        });
        match done.await {
            Ok(result) => Ok(result?),
            Err(e) => Err(ApiError::Internal(format!(
                "a subscription read failed: {e}"
            ))),
        }
    }
}
