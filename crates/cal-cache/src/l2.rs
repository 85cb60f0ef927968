//! The Redis tier: key namespacing, batched reads, versioned fills and tombstones through Lua
//! scripts, a timeout and a circuit breaker around every call, and detection of a Redis that lost
//! its data. It never returns a Redis error to its caller: a failed call is logged (rate-limited),
//! counted, and reported as "L2 unavailable" for the keys it carried. It knows nothing of L1
//! except the reset callback it is given.
//!
//! Stored values are `V{version}:{delta_ms}:{expires_at_ms}:` followed by the postcard bytes of
//! the `Option<V>`; tombstones are `T{version}`. The textual header lets the Lua scripts compare
//! versions with one `string.match`; the payload stays binary.
//!
//! **Key layout.** A caller key `k` belongs to one of [`SLOT_GROUPS`] slot groups,
//! `g = crc16(k) mod 16`, and is stored as `{{prefix}gNN}e{run}[p{purge}]:k`. The part in braces
//! is a Redis Cluster hash tag, so every key of a group lives in one slot, and every script and
//! read below is sent per group: its keys always share a slot (a cluster would answer CROSSSLOT
//! otherwise). A single Redis gets the same keys, one call per batch.
//!
//! **Epochs.** `run` is the first 12 characters of the `run_id` of the server that holds the
//! group's slot: a single Redis, or the cluster primary that owns the slot. A restarted server
//! (empty or restored from an old snapshot) has a new `run_id`, and so has a replica promoted after
//! a failover, which may have lost writes the old primary acknowledged (replication is
//! asynchronous) — tombstones among them. Either way the group moves to a fresh namespace, so
//! nothing written before can be read again, and L1 is cleared. Only the groups of the server
//! that changed move: the others keep their keys. Every script first checks that the server
//! running it has the `run_id` its namespace was built from and refuses otherwise (`CALEPOCH`),
//! so a client that follows a failover to the new primary before its next periodic check never
//! reads the old namespace there. The `run_id`s are read before the first use, after any Redis
//! error, whenever a breaker closes again, after a refusal, and periodically.
//!
//! **Partial failure.** A cluster has one breaker per slot group, so a primary that is down
//! only sends its groups' keys to the loader, while the other groups keep being served; errors are
//! counted and logged with the shard's address. A single Redis has one breaker.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use redis::{
    Client, Cmd, Pipeline, RedisFuture, RedisResult, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
};

use crate::{
    breaker::{Breaker, BreakerState},
    error::CacheError,
    metrics::Metrics,
};
use tracing::Instrument;

/// How many slot groups the keys are spread over: at most this many cluster shards carry cache
/// keys, and a batch takes at most this many calls. It is part of the key layout, so every
/// instance must use the same value: changing it is a new key layout (a cold L2).
pub(crate) const SLOT_GROUPS: usize = 16;

/// The guard every script starts with: ARGV[1] is the `run_id` the keys' namespace was built
/// from. Any other server (a promoted replica, a restarted primary) refuses, so that the caller
/// re-reads the `run_id`s instead of reading or writing the old namespace there.
macro_rules! guarded {
    ($body:literal) => {
        concat!(
            "if string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') ~= ARGV[1] then\n",
            "  return redis.error_reply('CALEPOCH the server holding these keys changed')\n",
            "end\n",
            $body
        )
    };
}

/// KEYS: n keys. ARGV: run_id. The value of each key (nil when absent).
const READ_LUA: &str = guarded!(
    r#"
local res = {}
for i = 1, #KEYS do
  res[i] = redis.call('GET', KEYS[i])
end
return res
"#
);

/// KEYS: one key. ARGV: run_id, blob, ttl_ms. Stores the blob.
const SET_LUA: &str = guarded!(
    r#"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#
);

/// KEYS: n keys. ARGV: run_id, then (version, ttl_ms, blob) per key. Stores a blob unless the key
/// holds a value or tombstone with a newer version; returns 1 (stored) or 0 (refused) per key.
const FILL_LUA: &str = guarded!(
    r#"
local res = {}
for i = 1, #KEYS do
  local v = tonumber(ARGV[3 * i - 1])
  local cur = redis.call('GET', KEYS[i])
  local ok = 1
  if cur then
    local cv = tonumber(string.match(cur, '^[VT](%-?%d+)'))
    if cv and cv > v then ok = 0 end
  end
  if ok == 1 then
    redis.call('SET', KEYS[i], ARGV[3 * i + 1], 'PX', ARGV[3 * i])
  end
  res[i] = ok
end
return res
"#
);

/// KEYS: n keys. ARGV: run_id, the version per key, then the tombstone TTL in ms. Replaces
/// whatever the key holds with `T{version}` unless it already holds a version at least as new.
const TOMBSTONE_LUA: &str = guarded!(
    r#"
local ttl = ARGV[#KEYS + 2]
for i = 1, #KEYS do
  local v = tonumber(ARGV[i + 1])
  local cur = redis.call('GET', KEYS[i])
  local keep = false
  if cur then
    local cv = tonumber(string.match(cur, '^[VT](%-?%d+)'))
    if cv and cv >= v then keep = true end
  end
  if not keep then
    redis.call('SET', KEYS[i], 'T' .. ARGV[i + 1], 'PX', ttl)
  end
end
return #KEYS
"#
);

/// KEYS: n keys. ARGV: run_id, then the version each must hold. 1 when every key holds a value
/// (not a tombstone) of exactly that version, else 0. Reads only each value's header.
const VERSIONS_LUA: &str = guarded!(
    r#"
for i = 1, #KEYS do
  local head = redis.call('GETRANGE', KEYS[i], 0, 24)
  if string.match(head, '^V(%-?%d+):') ~= ARGV[i + 1] then return 0 end
end
return 1
"#
);

/// KEYS: one key of the slot whose owner is asked. The owner's `run_id`.
const RUN_ID_LUA: &str = "return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')";

/// The error code of a script's refusal (see [`guarded!`]).
const REFUSED: &str = "CALEPOCH";

const WARN_EVERY: Duration = Duration::from_secs(1);

/// Tombstones that could not be written are kept (newest version per key) and written before
/// the next L2 read or fill of their slot group; past this many in a group, the oldest guarantee
/// is given up (and logged).
const MAX_PENDING_TOMBSTONES: usize = 100_000 / SLOT_GROUPS;

/// A decoded L2 value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stored<'a> {
    Value {
        version: i64,
        delta_ms: u64,
        expires_at_ms: u64,
        payload: &'a [u8],
    },
    Tombstone {
        version: i64,
    },
}

pub(crate) fn encode_value(
    version: i64,
    delta_ms: u64,
    expires_at_ms: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = format!("V{version}:{delta_ms}:{expires_at_ms}:").into_bytes();
    out.extend_from_slice(payload);
    out
}

pub(crate) fn decode(blob: &[u8]) -> Option<Stored<'_>> {
    let (&tag, rest) = blob.split_first()?;
    match tag {
        b'T' => Some(Stored::Tombstone {
            version: std::str::from_utf8(rest).ok()?.parse().ok()?,
        }),
        b'V' => {
            let mut fields = [0_i128; 3];
            let mut rest = rest;
            for field in &mut fields {
                let colon = rest.iter().position(|&b| b == b':')?;
                *field = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
                rest = &rest[colon + 1..];
            }
            Some(Stored::Value {
                version: i64::try_from(fields[0]).ok()?,
                delta_ms: u64::try_from(fields[1]).ok()?,
                expires_at_ms: u64::try_from(fields[2]).ok()?,
                payload: rest,
            })
        }
        _ => None,
    }
}

/// The slot group of a caller key. CRC16 rather than a std hasher: every instance, whatever
/// it was built with, must put a key in the same group.
pub(crate) fn group_of(key: &str) -> usize {
    usize::from(crc16::State::<crc16::XMODEM>::calculate(key.as_bytes())) % SLOT_GROUPS
}

/// The hash-tagged start of every key of `group`.
fn group_tag(prefix: &str, group: usize) -> String {
    format!("{{{prefix}g{group:02}}}")
}

/// Redis Cluster's slot of a key that starts with a [`group_tag`] (the tag's content, hashed as
/// Redis does), for naming the shard that holds it.
fn tag_slot(tag: &str) -> u16 {
    let inner = tag.trim_start_matches('{');
    let inner = inner.split('}').next().unwrap_or(inner);
    crc16::State::<crc16::XMODEM>::calculate(inner.as_bytes()) % 16384
}

/// Where L2 lives.
#[derive(Debug, Clone)]
pub(crate) enum Target<'a> {
    /// One Redis, by URL.
    Single(&'a str),
    /// A Redis Cluster, by some of its nodes (`redis://host:port` or `host:port`).
    Cluster(&'a [String]),
}

/// One connection type for both deployments: the scripts and commands below run on either.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What a unit's server is known to be.
struct Epoch {
    run_id: String,
    /// `e{run}[p{purge}]:`, between a key's group tag and the caller's key.
    ns: String,
}

/// The part of L2 that fails and recovers as one: the single Redis, or one slot group of a
/// cluster (whose slot one primary at a time owns).
struct Unit {
    breaker: Breaker,
    known: RwLock<Option<Arc<Epoch>>>,
    needs_check: AtomicBool,
    /// The server's address for logs and the shard metric (a cluster primary, once known).
    shard: RwLock<Arc<str>>,
}

/// The keys of one call: all in one unit (and in a cluster, one slot group).
struct Part {
    unit: usize,
    /// (index into the caller's keys, slot group).
    keys: Vec<(usize, usize)>,
}

/// One item of a fill: the caller's key, the row version, the L2 TTL and the encoded blob.
pub(crate) struct FillItem<'a> {
    pub key: &'a str,
    pub version: i64,
    pub ttl: Duration,
    pub blob: Vec<u8>,
}

/// A key read from L2: `None` when L2 could not answer for it, `Some(None)` when absent.
pub(crate) type Fetched = Option<Option<Vec<u8>>>;

pub(crate) struct L2 {
    conn: Conn,
    units: Vec<Unit>,
    /// [`group_tag`] of every slot group.
    tags: Vec<String>,
    timeout: Duration,
    tombstone_ttl: Duration,
    check_lock: tokio::sync::Mutex<()>,
    epoch: AtomicU64,
    /// The purge generation the key namespace is built from (0: none; set by
    /// [`L2::renew_namespace`]), so that nothing written before a purge is read again.
    purge: AtomicI64,
    round_trips: AtomicU64,
    metrics: Metrics,
    run_id_script: Script,
    read_script: Script,
    set_script: Script,
    fill_script: Script,
    tombstone_script: Script,
    versions_script: Script,
    last_warn: Mutex<Option<Instant>>,
    /// Tombstones whose write failed, per slot group, to be retried before the group's next
    /// read or fill.
    pending_tombstones: Vec<Mutex<HashMap<String, i64>>>,
    on_reset: Box<dyn Fn() + Send + Sync>,
}

impl L2 {
    /// Builds the tier without connecting: a Redis that is down at start-up is not an error.
    /// `breaker` makes each unit's breaker (given the unit's gauge).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target<'_>,
        prefix: &str,
        timeout: Duration,
        breaker: impl Fn(prometheus::IntGauge) -> Breaker,
        tombstone_ttl: Duration,
        metrics: Metrics,
        on_reset: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, CacheError> {
        let connect_timeout = timeout.max(Duration::from_millis(250));
        let tags: Vec<String> = (0..SLOT_GROUPS).map(|g| group_tag(prefix, g)).collect();
        let (conn, units) = match target {
            Target::Single(url) => {
                let client = Client::open(url).map_err(CacheError::RedisUrl)?;
                // Short, bounded reconnect attempts: our own timeout bounds every call anyway,
                // and a reconnect stuck in a long back-off would delay recovery once Redis is
                // back.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200));
                let manager = ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(CacheError::RedisUrl)?;
                let unit = Unit::new(breaker(metrics.breaker_state.clone()), url_host(url));
                (Conn::Single(manager), vec![unit])
            }
            Target::Cluster(nodes) => {
                let nodes: Vec<String> = nodes
                    .iter()
                    .map(|n| {
                        if n.contains("://") {
                            n.clone()
                        } else {
                            format!("redis://{n}")
                        }
                    })
                    .collect();
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout)
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(200)
                    .build()
                    .map_err(CacheError::RedisUrl)?;
                let conn = client.get_pending_async_connection_with_config(
                    ClusterConfig::new()
                        .set_connection_timeout(connect_timeout)
                        .set_response_timeout(timeout),
                );
                let units = (0..SLOT_GROUPS)
                    .map(|g| {
                        let gauge = metrics
                            .group_breaker_state
                            .with_label_values(&[&g.to_string()]);
                        Unit::new(breaker(gauge), format!("slot {}", tag_slot(&tags[g])))
                    })
                    .collect();
                (Conn::Cluster(conn), units)
            }
        };
        Ok(Self {
            conn,
            units,
            tags,
            timeout,
            tombstone_ttl,
            check_lock: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            purge: AtomicI64::new(0),
            round_trips: AtomicU64::new(0),
            metrics,
            run_id_script: Script::new(RUN_ID_LUA),
            read_script: Script::new(READ_LUA),
            set_script: Script::new(SET_LUA),
            fill_script: Script::new(FILL_LUA),
            tombstone_script: Script::new(TOMBSTONE_LUA),
            versions_script: Script::new(VERSIONS_LUA),
            last_warn: Mutex::new(None),
            pending_tombstones: (0..SLOT_GROUPS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            on_reset,
        })
    }

    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    fn unit_of(&self, group: usize) -> usize {
        if self.is_cluster() { group } else { 0 }
    }

    /// The worst breaker state over the units.
    pub fn breaker_state(&self) -> BreakerState {
        self.units
            .iter()
            .map(|u| u.breaker.state())
            .max_by_key(|&s| s.gauge_value())
            .unwrap_or(BreakerState::Closed)
    }

    /// In a cluster, `cal_cache_breaker_state` reports the worst slot group.
    fn report_breakers(&self) {
        if self.is_cluster() {
            self.metrics
                .breaker_state
                .set(self.breaker_state().gauge_value());
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn warn(&self, op: &str, shard: &str, err: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut last = self.last_warn.lock().unwrap();
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            drop(last);
            tracing::warn!(op, shard, error = %err, "redis call failed; serving its keys from L1 and the loader");
        } else {
            tracing::debug!(op, shard, error = %err, "redis call failed");
        }
    }

    /// Runs one Redis round trip for `unit` through its breaker and the timeout, in a `redis`
    /// span (`db.operation.name` = `op`). `None`: unavailable.
    async fn call<T, F, Fut>(&self, unit: usize, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let u = &self.units[unit];
        self.metrics.redis_requests.with_label_values(&[op]).inc();
        let Some(permit) = u.breaker.try_acquire() else {
            self.metrics
                .redis_errors
                .with_label_values(&[crate::metrics::BREAKER_OPEN])
                .inc();
            return None;
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!(
            "redis",
            otel.name = op,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system = "redis",
            db.operation.name = op,
        );
        let round_trip = tokio::time::timeout(self.timeout, f(self.conn.clone()))
            .instrument(span.clone())
            .await;
        if !matches!(round_trip, Ok(Ok(_))) {
            span.record("otel.status_code", "ERROR");
        }
        // Any failure may hide a restart or a failover: re-check the run_id before the next use.
        let error = match round_trip {
            Ok(Ok(v)) => {
                if permit.success() {
                    tracing::info!(shard = %u.shard(), "redis is reachable again; circuit breaker closed");
                    u.needs_check.store(true, Ordering::Relaxed);
                    self.report_breakers();
                }
                return Some(v);
            }
            Ok(Err(e)) if e.code() == Some(REFUSED) => {
                // Not a failure of Redis: another server holds the keys now (a failover, or a
                // restart behind the same address).
                let _ = permit.success();
                u.needs_check.store(true, Ordering::Relaxed);
                tracing::info!(op, shard = %u.shard(), "another redis server holds these keys now; re-reading its run_id");
                return None;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timeout".to_owned(),
        };
        permit.failure();
        self.report_breakers();
        u.needs_check.store(true, Ordering::Relaxed);
        let shard = u.shard();
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        self.metrics
            .redis_shard_errors
            .with_label_values(&[&shard])
            .inc();
        self.warn(op, &shard, &error);
        None
    }

    /// What `unit`'s server is known to be, checking its run_id first when needed.
    async fn known(&self, unit: usize) -> Option<Arc<Epoch>> {
        let u = &self.units[unit];
        if !u.needs_check.load(Ordering::Relaxed)
            && let Some(known) = u.known.read().unwrap().clone()
        {
            return Some(known);
        }
        self.check_units(&[unit]).await;
        u.current()
    }

    /// Reads the run_id of every unit in `units` that needs it (concurrently), and moves each
    /// whose server changed to a fresh namespace, clearing L1 once.
    async fn check_units(&self, units: &[usize]) {
        let _guard = self.check_lock.lock().await;
        // Someone else may have checked while we waited for the lock.
        let due: Vec<usize> = units
            .iter()
            .copied()
            .filter(|&i| {
                self.units[i].needs_check.load(Ordering::Relaxed)
                    || self.units[i].current().is_none()
            })
            .collect();
        if due.is_empty() {
            return;
        }
        if self.is_cluster() {
            self.refresh_shard_names().await;
        }
        let run_ids = join_all(due.iter().map(|&i| self.read_run_id(i))).await;
        let mut changed = false;
        for (&i, run_id) in due.iter().zip(run_ids) {
            let u = &self.units[i];
            u.needs_check.store(false, Ordering::Relaxed);
            let Some(run_id) = run_id.filter(|id| !id.is_empty()) else {
                u.needs_check.store(true, Ordering::Relaxed);
                continue;
            };
            let previous = u.known.read().unwrap().clone();
            if previous.as_ref().is_some_and(|p| p.run_id != run_id) {
                changed = true;
                let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.epoch.set(epoch as i64);
                tracing::warn!(
                    epoch,
                    shard = %u.shard(),
                    "redis run_id changed (restart or failover): new L2 namespace for its keys, L1 cleared"
                );
            }
            *u.known.write().unwrap() = Some(Arc::new(Epoch {
                ns: self.namespace_for(&run_id),
                run_id,
            }));
        }
        if changed {
            (self.on_reset)();
        }
    }

    fn namespace_for(&self, run_id: &str) -> String {
        let tag: String = run_id.chars().take(12).collect();
        match self.purge.load(Ordering::Acquire) {
            0 => format!("e{tag}:"),
            purge => format!("e{tag}p{purge}:"),
        }
    }

    /// The `run_id` of the server that holds `unit`'s keys, asked through a script on a key of
    /// the unit's slot: a keyless `INFO` may be answered by whichever node the client picks
    /// while the cluster's layout changes (a failover), but a node that does not own a key's
    /// slot answers `MOVED`, which the client follows to the owner.
    async fn read_run_id(&self, unit: usize) -> Option<String> {
        let mut invocation = self.run_id_script.prepare_invoke();
        invocation.key(format!("{}run_id", self.tags[unit]));
        self.call(unit, "info", |mut con| async move {
            invocation.invoke_async::<String>(&mut con).await
        })
        .await
    }

    /// Names each slot group's shard by its primary's address (`CLUSTER SLOTS`), for logs and
    /// the shard metric. Best effort: a failure keeps the names known so far.
    async fn refresh_shard_names(&self) {
        let Conn::Cluster(mut con) = self.conn.clone() else {
            return;
        };
        let slots = tokio::time::timeout(
            self.timeout,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut con),
        )
        .await;
        let Ok(Ok(Value::Array(ranges))) = slots else {
            return;
        };
        let owners: Vec<(i64, i64, String)> = ranges.iter().filter_map(slot_range_owner).collect();
        for (g, unit) in self.units.iter().enumerate() {
            let slot = i64::from(tag_slot(&self.tags[g]));
            if let Some((_, _, addr)) = owners
                .iter()
                .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            {
                *unit.shard.write().unwrap() = Arc::from(addr.as_str());
            }
        }
    }

    /// Moves to the key namespace of purge `generation` (the caller applies each generation
    /// once, newest last) and clears L1.
    pub fn renew_namespace(&self, generation: i64) {
        self.purge.store(generation, Ordering::Release);
        for u in &self.units {
            u.needs_check.store(true, Ordering::Release);
            // Drop the namespace so that nothing uses the old one before the re-check.
            *u.known.write().unwrap() = None;
        }
        tracing::warn!(
            generation,
            "purge of every cached value: new L2 namespace, L1 cleared"
        );
        (self.on_reset)();
    }

    /// The periodic health check: re-reads every run_id, then writes pending tombstones.
    pub async fn health_check(&self) {
        for u in &self.units {
            u.needs_check.store(true, Ordering::Relaxed);
        }
        let all: Vec<usize> = (0..self.units.len()).collect();
        self.check_units(&all).await;
        join_all(all.iter().map(|&unit| self.flush_pending(unit))).await;
        self.report_breakers();
    }

    /// The slot groups whose keys `unit` holds.
    fn groups_of_unit(&self, unit: usize) -> std::ops::Range<usize> {
        if self.is_cluster() {
            unit..unit + 1
        } else {
            0..SLOT_GROUPS
        }
    }

    /// Splits a batch into its calls: one for a single Redis, one per slot group in a cluster.
    fn parts<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Vec<Part> {
        let keyed = keys.into_iter().map(group_of).enumerate();
        if !self.is_cluster() {
            return vec![Part {
                unit: 0,
                keys: keyed.collect(),
            }];
        }
        let mut by_group: Vec<Vec<(usize, usize)>> = vec![Vec::new(); SLOT_GROUPS];
        for (i, g) in keyed {
            by_group[g].push((i, g));
        }
        by_group
            .into_iter()
            .enumerate()
            .filter(|(_, keys)| !keys.is_empty())
            .map(|(g, keys)| Part { unit: g, keys })
            .collect()
    }

    /// The full Redis key of a caller key of `group` in namespace `known`.
    fn full_key(&self, known: &Epoch, group: usize, key: &str) -> String {
        format!("{}{}{key}", self.tags[group], known.ns)
    }

    /// The namespace for `part`'s call, once its pending tombstones are written (never read what
    /// a lost tombstone should hide). `None`: the part's keys are unavailable.
    async fn ready(&self, part: &Part) -> Option<Arc<Epoch>> {
        let known = self.known(part.unit).await?;
        self.flush_pending(part.unit).await.then_some(known)
    }

    /// One read of every key. A key whose slot group is unavailable is `None`.
    pub async fn mget(&self, keys: &[&str]) -> Vec<Fetched> {
        let parts = self.parts(keys.iter().copied());
        let answers = join_all(parts.iter().map(|part| async move {
            let known = self.ready(part).await?;
            let mut invocation = self.read_script.prepare_invoke();
            invocation.arg(known.run_id.as_str());
            for &(i, g) in &part.keys {
                invocation.key(self.full_key(&known, g, keys[i]));
            }
            self.call(part.unit, "mget", |mut con| async move {
                invocation
                    .invoke_async::<Vec<Option<Vec<u8>>>>(&mut con)
                    .await
            })
            .await
        }))
        .await;
        per_key(&parts, keys.len(), answers)
    }

    /// One raw blob (a derived result), `None` when absent or L2 is unavailable.
    pub async fn get_blob(&self, key: &str) -> Option<Vec<u8>> {
        self.mget(&[key]).await.pop().flatten().flatten()
    }

    /// Whether every key holds a value of exactly its version (`None`: L2 unavailable for one
    /// of them, and none is known to have changed).
    pub async fn versions_current(&self, deps: &[(String, i64)]) -> Option<bool> {
        let parts = self.parts(deps.iter().map(|(k, _)| k.as_str()));
        let results = join_all(parts.iter().map(|part| async move {
            let known = self.known(part.unit).await?;
            let mut invocation = self.versions_script.prepare_invoke();
            invocation.arg(known.run_id.as_str());
            for &(i, g) in &part.keys {
                let (key, version) = &deps[i];
                invocation
                    .key(self.full_key(&known, g, key))
                    .arg(version.to_string());
            }
            let ok: i64 = self
                .call(part.unit, "versions", |mut con| async move {
                    invocation.invoke_async(&mut con).await
                })
                .await?;
            Some(ok == 1)
        }))
        .await;
        if results.contains(&Some(false)) {
            return Some(false);
        }
        results
            .into_iter()
            .collect::<Option<Vec<bool>>>()
            .map(|_| true)
    }

    /// Stores a raw blob for `ttl` (best effort).
    pub async fn set_blob(&self, key: &str, blob: &[u8], ttl: Duration) {
        let group = group_of(key);
        let unit = self.unit_of(group);
        let Some(known) = self.known(unit).await else {
            return;
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = self.set_script.prepare_invoke();
        invocation
            .key(self.full_key(&known, group, key))
            .arg(known.run_id.as_str())
            .arg(blob)
            .arg(ttl_ms);
        let _: Option<i64> = self
            .call(unit, "set", |mut con| async move {
                invocation.invoke_async(&mut con).await
            })
            .await;
    }

    /// Versioned fill of all items, one script call per part. One flag per item: stored (true),
    /// refused as stale (false), or `None` where L2 was unavailable.
    pub async fn fill(&self, items: &[FillItem<'_>]) -> Vec<Option<bool>> {
        let parts = self.parts(items.iter().map(|i| i.key));
        let answers = join_all(parts.iter().map(|part| async move {
            let known = self.ready(part).await?;
            let mut invocation = self.fill_script.prepare_invoke();
            invocation.arg(known.run_id.as_str());
            for &(i, g) in &part.keys {
                let item = &items[i];
                let ttl_ms = u64::try_from(item.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                invocation
                    .key(self.full_key(&known, g, item.key))
                    .arg(item.version)
                    .arg(ttl_ms)
                    .arg(item.blob.as_slice());
            }
            self.call(part.unit, "fill", |mut con| async move {
                invocation.invoke_async::<Vec<i64>>(&mut con).await
            })
            .await
        }))
        .await;
        per_key(&parts, items.len(), answers)
            .into_iter()
            .map(|f| f.map(|f| f == 1))
            .collect()
    }

    /// Writes tombstones for all keys, one script call per part. Those whose slot group is
    /// unavailable are kept and written before the group's next read or fill, so a Redis that
    /// was briefly unreachable for the writer does not go on serving the old values afterwards.
    /// `true` when all were written now.
    pub async fn tombstone(&self, keys: &[(String, i64)]) -> bool {
        let parts = self.parts(keys.iter().map(|(k, _)| k.as_str()));
        let written = join_all(parts.iter().map(|part| async move {
            let _ = self.flush_pending(part.unit).await;
            let batch: Vec<(String, i64)> =
                part.keys.iter().map(|&(i, _)| keys[i].clone()).collect();
            self.write_tombstones(part.unit, &batch).await
        }))
        .await;
        written.into_iter().all(|w| w)
    }

    /// Writes the tombstones of `unit`'s groups whose first write failed. `false` if some are
    /// still pending.
    async fn flush_pending(&self, unit: usize) -> bool {
        let pending: Vec<(String, i64)> = self
            .groups_of_unit(unit)
            .flat_map(|g| {
                let mut pending = self.pending_tombstones[g].lock().unwrap();
                pending.drain().collect::<Vec<_>>()
            })
            .collect();
        if pending.is_empty() {
            return true;
        }
        tracing::info!(
            keys = pending.len(),
            shard = %self.units[unit].shard(),
            "writing tombstones that failed earlier"
        );
        self.write_tombstones(unit, &pending).await
    }

    /// Writes `keys` (all of `unit`'s) in one script call, or keeps them pending.
    async fn write_tombstones(&self, unit: usize, keys: &[(String, i64)]) -> bool {
        if keys.is_empty() {
            return true;
        }
        let Some(known) = self.known(unit).await else {
            self.keep_pending(keys);
            return false;
        };
        let mut invocation = self.tombstone_script.prepare_invoke();
        invocation.arg(known.run_id.as_str());
        for (key, version) in keys {
            invocation
                .key(self.full_key(&known, group_of(key), key))
                .arg(*version);
        }
        let ttl_ms = u64::try_from(self.tombstone_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        invocation.arg(ttl_ms);
        let written = self
            .call(unit, "tombstone", |mut con| async move {
                invocation.invoke_async::<i64>(&mut con).await
            })
            .await
            .is_some();
        if !written {
            self.keep_pending(keys);
        }
        written
    }

    fn keep_pending(&self, keys: &[(String, i64)]) {
        for (key, version) in keys {
            let group = group_of(key);
            let mut pending = self.pending_tombstones[group].lock().unwrap();
            let v = pending.entry(key.clone()).or_insert(*version);
            *v = (*v).max(*version);
            if pending.len() > MAX_PENDING_TOMBSTONES {
                tracing::error!(
                    keys = pending.len(),
                    shard = %self.units[self.unit_of(group)].shard(),
                    "too many unwritten tombstones; dropping them (L2 may serve stale values until their TTL)"
                );
                pending.clear();
            }
        }
    }

    /// Number of tombstones waiting to be written.
    pub fn pending_tombstones(&self) -> usize {
        self.pending_tombstones
            .iter()
            .map(|p| p.lock().unwrap().len())
            .sum()
    }

    /// The full Redis key for a caller key in the current namespace (for diagnostics and tests).
    pub fn current_key(&self, key: &str) -> Option<String> {
        let group = group_of(key);
        let known = self.units[self.unit_of(group)].current()?;
        Some(self.full_key(&known, group, key))
    }
}

impl Unit {
    fn new(breaker: Breaker, shard: String) -> Self {
        Self {
            breaker,
            known: RwLock::new(None),
            needs_check: AtomicBool::new(true),
            shard: RwLock::new(Arc::from(shard)),
        }
    }

    fn current(&self) -> Option<Arc<Epoch>> {
        self.known.read().unwrap().clone()
    }

    fn shard(&self) -> Arc<str> {
        self.shard.read().unwrap().clone()
    }
}

/// Puts each part's answers, one per key, back in the order of the caller's `n` keys: `None`
/// for the keys of a part that got no answer (L2 unavailable, or an answer of another length).
fn per_key<T: Clone>(parts: &[Part], n: usize, answers: Vec<Option<Vec<T>>>) -> Vec<Option<T>> {
    let mut out = vec![None; n];
    for (part, answer) in parts.iter().zip(answers) {
        let Some(answer) = answer.filter(|a| a.len() == part.keys.len()) else {
            continue;
        };
        for (&(i, _), value) in part.keys.iter().zip(answer) {
            out[i] = Some(value);
        }
    }
    out
}

/// `host:port` of a Redis URL, for naming the single server in logs (never its password).
fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// One range of a `CLUSTER SLOTS` reply: (first slot, last slot, `ip:port` of its primary).
fn slot_range_owner(range: &Value) -> Option<(i64, i64, String)> {
    let Value::Array(fields) = range else {
        return None;
    };
    let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(primary))) =
        (fields.first(), fields.get(1), fields.get(2))
    else {
        return None;
    };
    let ip = match primary.first()? {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let Value::Int(port) = primary.get(1)? else {
        return None;
    };
    Some((*lo, *hi, format!("{ip}:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_blob_round_trips() {
        let blob = encode_value(-3, 12, 1_700_000_000_000, b"\x00:\xffbytes");
        assert_eq!(
            decode(&blob),
            Some(Stored::Value {
                version: -3,
                delta_ms: 12,
                expires_at_ms: 1_700_000_000_000,
                payload: b"\x00:\xffbytes",
            })
        );
        assert_eq!(decode(b"T42"), Some(Stored::Tombstone { version: 42 }));
        assert_eq!(decode(b"garbage"), None);
        assert_eq!(decode(b"V1:2"), None);
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use redis::cluster_routing::Slot;

    fn cluster_l2() -> L2 {
        let nodes = vec!["127.0.0.1:1".to_owned()];
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        L2::new(
            Target::Cluster(&nodes),
            "t:",
            Duration::from_millis(50),
            |gauge| Breaker::new(1, Duration::from_secs(1), gauge),
            Duration::from_secs(1),
            metrics,
            Box::new(|| {}),
        )
        .unwrap()
    }

    /// The contract the cluster relies on: every key one script call touches hashes to the slot
    /// of its first key, as Redis computes slots.
    #[tokio::test]
    async fn every_key_of_a_call_shares_the_slot_of_its_first_key() {
        let l2 = cluster_l2();
        let known = Epoch {
            run_id: "0123456789abcdef".into(),
            ns: l2.namespace_for("0123456789abcdef"),
        };
        let keys: Vec<String> = (0..2_000).map(|i| format!("v1:event:{i}:full")).collect();
        let parts = l2.parts(keys.iter().map(String::as_str));
        assert_eq!(parts.len(), SLOT_GROUPS, "2,000 keys fill every group");
        let mut slots = std::collections::HashSet::new();
        for part in &parts {
            let full: Vec<String> = part
                .keys
                .iter()
                .map(|&(i, g)| l2.full_key(&known, g, &keys[i]))
                .collect();
            let first = Slot::for_key(&full[0]);
            for key in &full {
                assert_eq!(
                    Slot::for_key(key),
                    first,
                    "{key} is not in {}'s slot",
                    full[0]
                );
            }
            assert_eq!(Some(first), Slot::new(tag_slot(&l2.tags[part.unit])));
            slots.insert(first);
        }
        assert_eq!(slots.len(), SLOT_GROUPS, "each group has a slot of its own");
    }

    #[tokio::test]
    async fn a_single_redis_takes_one_call_per_batch() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        let l2 = L2::new(
            Target::Single("redis://127.0.0.1:1"),
            "t:",
            Duration::from_millis(50),
            |gauge| Breaker::new(1, Duration::from_secs(1), gauge),
            Duration::from_secs(1),
            metrics,
            Box::new(|| {}),
        )
        .unwrap();
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let parts = l2.parts(keys.iter().map(String::as_str));
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].keys.len(), 100);
        assert_eq!(l2.groups_of_unit(parts[0].unit), 0..SLOT_GROUPS);
    }

    #[test]
    fn redis_urls_are_named_without_credentials() {
        assert_eq!(url_host("redis://:secret@cache:6380/0"), "cache:6380");
        assert_eq!(url_host("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }

    #[test]
    fn cluster_slots_ranges_are_parsed() {
        let range = Value::Array(vec![
            Value::Int(0),
            Value::Int(5460),
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(7000),
                Value::BulkString(b"id".to_vec()),
            ]),
        ]);
        assert_eq!(
            slot_range_owner(&range),
            Some((0, 5460, "127.0.0.1:7000".to_owned()))
        );
    }
}
