//! How an instance takes part in the invalidation stream. Plain data: the binary decides where
//! the values come from.

use std::time::Duration;

/// Default change-log retention: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How this instance takes part in the invalidation stream.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Distrust L1 when the freshest applied message is older than this (`None`: never, for the
    /// in-process bus, which cannot fall behind without reporting it).
    pub liveness: Option<Duration>,
    /// How long a mutation waits for its invalidation's stream position; a writer acknowledges
    /// at the latest this long after its row was written.
    pub publish_wait: Duration,
    /// How long a request presenting a consistency token waits for this instance to apply the
    /// stream up to it before it reads past L1 instead.
    pub token_wait: Duration,
    pub relay: RelayConfig,
    /// The nice value of the thread that applies invalidations (see [`cal_cache::priority`];
    /// `None`: the process's priority).
    pub thread_nice: Option<i32>,
    /// Messages of the subscriptions' feed kept for subscribers that have not read them yet; one
    /// further behind gets a single "resync" instead ([`crate::feed`]).
    pub feed_capacity: usize,
    /// Failure injection for crash tests: the process kills itself (SIGKILL) right after a
    /// write's commit, before any invalidation. Never on by any default.
    pub kill_after_commit: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            liveness: None,
            publish_wait: Duration::from_secs(1),
            token_wait: Duration::from_secs(1),
            relay: RelayConfig::default(),
            thread_nice: None,
            feed_capacity: crate::feed::CalendarFeed::CAPACITY,
            kill_after_commit: false,
        }
    }
}

impl SyncConfig {
    /// Defaults for a bus shared by several instances (Kafka): 2 s liveness bound, heartbeats
    /// every 200 ms.
    pub fn shared() -> Self {
        Self {
            liveness: Some(Duration::from_secs(2)),
            relay: RelayConfig {
                heartbeat: Some(Duration::from_millis(200)),
                ..RelayConfig::default()
            },
            ..Self::default()
        }
    }
}

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Publish at all (tests switch it off to play a relay that died after the commit).
    pub enabled: bool,
    /// How often to sweep for rows nobody published.
    pub poll: Duration,
    /// How old another instance's unpublished row must be before this relay takes it over.
    pub grace: Duration,
    /// Heartbeat interval (`None`: no heartbeats, e.g. the in-process bus).
    pub heartbeat: Option<Duration>,
    /// Rows per pass.
    pub batch: i64,
    /// How long published rows stay in the change log before the pruner deletes them.
    pub retention: Duration,
    /// How often the pruner runs (and refreshes the change log's size metrics).
    pub prune_every: Duration,
    /// Rows deleted per prune statement.
    pub prune_batch: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            poll: Duration::from_millis(250),
            grace: Duration::from_secs(1),
            heartbeat: None,
            batch: 256,
            retention: DEFAULT_RETENTION,
            prune_every: Duration::from_secs(60),
            prune_batch: 1000,
        }
    }
}
