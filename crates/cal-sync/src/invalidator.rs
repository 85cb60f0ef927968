//! [`Invalidator`]: this instance's side of the change log. As the store's change sink it turns
//! committed writes into invalidations; started, it runs the relay and the consumer.

use crate::config::SyncConfig;
use crate::metrics::{self, RelayMetrics, StreamMetrics};
use crate::progress::StreamProgress;
use crate::relay::Relay;
use cal_cache::{InvalidationBus, TieredCache};
use cal_domain::cache_keys;
use cal_storage::{ChangeSet, ChangeSink, Store};
use prometheus::Registry;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// This instance's side of the change log: the writer's invalidations out, other instances' in.
pub struct Invalidator {
    pub(crate) cache: TieredCache,
    pub(crate) bus: Arc<dyn InvalidationBus>,
    pub(crate) origin: String,
    pub(crate) config: SyncConfig,
    pub(crate) progress: StreamProgress,
    pub(crate) stream_metrics: StreamMetrics,
    relay_metrics: RelayMetrics,
    /// What the stream delivers, for subscriptions (fed by the consumer).
    pub(crate) feed: crate::feed::CalendarFeed,
    /// Set by [`Invalidator::start`].
    relay: OnceLock<Arc<Relay>>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator")
            .field("bus", &self.bus.name())
            .field("origin", &self.origin)
            .finish()
    }
}

impl Invalidator {
    /// `origin` names this instance on the bus and in its change-log rows. The metrics go into
    /// the cache's registry. With a liveness bound, L1 is distrusted from the start until the
    /// first fresh message arrives.
    pub fn new(
        cache: TieredCache,
        bus: Arc<dyn InvalidationBus>,
        origin: String,
        config: SyncConfig,
    ) -> Arc<Self> {
        let (stream_metrics, relay_metrics) = metrics::register(cache.registry())
            .inspect_err(|e| tracing::warn!(error = %e, "invalidation metrics not registered"))
            .or_else(|_| metrics::register(&Registry::new()))
            .expect("metrics register in a fresh registry");
        let progress = StreamProgress::default();
        if config.liveness.is_some() {
            cache.distrust_l1(true);
            progress.set_behind(true);
            stream_metrics.behind.set(1);
        }
        if config.kill_after_commit {
            tracing::warn!(
                "failpoint kill-after-commit is armed: the first write kills this process"
            );
        }
        let feed = crate::feed::CalendarFeed::new(config.feed_capacity);
        Arc::new(Self {
            cache,
            bus,
            origin,
            config,
            progress,
            stream_metrics,
            relay_metrics,
            feed,
            relay: OnceLock::new(),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The calendars each delivered change-log row changed, as the consumer applies them.
    pub fn feed(&self) -> &crate::feed::CalendarFeed {
        &self.feed
    }

    /// What this instance has applied of the stream (consistency tokens wait on it).
    pub fn progress(&self) -> &StreamProgress {
        &self.progress
    }

    /// Applies the newest purge of everything recorded in the change log (at start-up, before
    /// serving: an instance that starts after a purge never reads what it dropped).
    pub async fn load_purge_generation(
        &self,
        store: &Store,
    ) -> Result<(), cal_storage::StorageError> {
        let generation = store.purge_generation().await?;
        if generation > 0 {
            self.cache.purge_all(generation);
        }
        Ok(())
    }

    /// Starts the consumer (on a thread of its own), the liveness monitor and the relay over
    /// `store` (publisher, heartbeats, pruner). They run until `shutdown` resolves or the
    /// runtime that called this shuts down; [`Running::join`] waits for them. The relay makes
    /// one last pass on shutdown, so rows written while the server drained go out. A second
    /// call starts nothing (its `Running` holds no task).
    pub fn start(
        self: &Arc<Self>,
        store: Store,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Running {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let relay = Relay::new(
            store,
            self.cache.clone(),
            self.bus.clone(),
            self.origin.clone(),
            self.config.relay.clone(),
            self.config.publish_wait,
            self.relay_metrics.clone(),
        );
        if self.relay.set(relay.clone()).is_err() {
            tracing::warn!("the invalidator was already started; not starting it again");
            return Running {
                stop,
                tasks,
                consumer: None,
            };
        }
        // Cancels when the signal comes, and when the runtime drops this task.
        let guard = stop.clone().drop_guard();
        let stopped = stop.clone();
        tasks.spawn(async move {
            let _guard = guard;
            tokio::select! {
                () = shutdown => {}
                () = stopped.cancelled() => {}
            }
        });
        let consumer = Some(crate::consumer::spawn(self.clone(), stop.clone()));
        if let Some(bound) = self.config.liveness {
            tasks.spawn(crate::consumer::monitor_liveness(
                self.clone(),
                bound,
                stop.clone(),
            ));
        }
        relay.run(&mut tasks, &stop);
        Running {
            stop,
            tasks,
            consumer,
        }
    }
}

/// The started tasks of an [`Invalidator`].
pub struct Running {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    consumer: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops every task now (as the shutdown signal would).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until every task has stopped (after the shutdown signal, or [`Running::stop`]).
    pub async fn join(mut self) {
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done
                && e.is_panic()
            {
                tracing::error!(error = %e, "an invalidation task panicked");
            }
        }
        if let Some(thread) = self.consumer.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Keys made stale by a committed change, with the versions the new state carries: the one
/// place where change-log facts become cache keys.
pub fn invalidations(changes: &ChangeSet) -> Vec<(String, i64)> {
    cache_keys::invalidations(
        &changes.events,
        &changes.calendars,
        &changes.resources,
        &changes.users,
    )
}

#[async_trait::async_trait]
impl ChangeSink for Invalidator {
    /// Local L1 eviction and new generations, then the relay writes the L2 tombstones and
    /// publishes the change-log row; answers its stream position (`partition:offset`) when the
    /// bus has one. When no relay confirms the publish in time (none running, switched off, or
    /// the bus is slow), the writer writes the L2 tombstones itself before it acknowledges, so a
    /// read after the acknowledgement never gets the old value from Redis either.
    async fn committed(&self, changes: &ChangeSet) -> Option<String> {
        let keys = invalidations(changes);
        if self.config.kill_after_commit {
            failpoint_kill("kill-after-commit");
        }
        if changes.purge_all
            && let Some(generation) = changes.outbox_id
        {
            self.cache.purge_all(generation);
        }
        self.cache.invalidate_local(&keys).await;
        let relay = self.relay.get().filter(|_| self.config.relay.enabled);
        if let (Some(relay), Some(outbox_id)) = (relay, changes.outbox_id)
            && let Ok(position) = relay.publish_now(outbox_id, self.config.publish_wait).await
        {
            return position.map(|p| p.to_string());
        }
        if self.relay.get().is_none() {
            tracing::warn!(
                "no relay running: the invalidation reaches other instances only through TTLs and L2 tombstones"
            );
        }
        self.cache.tombstone_l2(&keys).await;
        None
    }
}

fn failpoint_kill(name: &str) -> ! {
    tracing::error!(failpoint = name, "failpoint: killing this process");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}
