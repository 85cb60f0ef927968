//! The Redis tier: key namespacing, one `MGET` per batch, versioned fills and tombstones through
//! Lua scripts, a timeout and the circuit breaker around every call, and detection of a Redis that
//! lost its data. It never returns a Redis error to its caller: a failed call is logged
//! (rate-limited), counted, and reported as `None` ("L2 unavailable"). It knows nothing of L1
//! except the reset callback it is given.
//!
//! Stored values are `V{version}:{delta_ms}:{expires_at_ms}:` followed by the postcard bytes of
//! the `Option<V>`; tombstones are `T{version}`. The textual header lets the Lua scripts compare
//! versions with one `string.match`; the payload stays binary.
//!
//! Epoch: every key is `{prefix}e{tag}:{key}` where `tag` is the first 12 characters of the Redis
//! server's `run_id`. A restarted server (empty or restored from an old snapshot) has a new
//! `run_id`, so every process that notices the change moves to the same fresh namespace without
//! any coordination, and data written before the restart can no longer be read. The `run_id` is
//! checked before the first use, after any Redis error, whenever the breaker closes again, and
//! periodically; a change bumps the local epoch counter (reported by `status()`) and clears L1.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    Client, RedisResult, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{
    breaker::{Breaker, BreakerState},
    error::CacheError,
    metrics::Metrics,
};
use tracing::Instrument;

/// KEYS: n keys. ARGV: (version, ttl_ms, blob) per key. Stores a blob unless the key holds a
/// value or tombstone with a newer version; returns 1 (stored) or 0 (refused) per key.
const FILL_LUA: &str = r#"
local res = {}
for i = 1, #KEYS do
  local v = tonumber(ARGV[3 * i - 2])
  local cur = redis.call('GET', KEYS[i])
  local ok = 1
  if cur then
    local cv = tonumber(string.match(cur, '^[VT](%-?%d+)'))
    if cv and cv > v then ok = 0 end
  end
  if ok == 1 then
    redis.call('SET', KEYS[i], ARGV[3 * i], 'PX', ARGV[3 * i - 1])
  end
  res[i] = ok
end
return res
"#;

/// KEYS: n keys. ARGV: version per key, then the tombstone TTL in ms. Replaces whatever the key
/// holds with `T{version}` unless it already holds a version at least as new.
const TOMBSTONE_LUA: &str = r#"
local ttl = ARGV[#KEYS + 1]
for i = 1, #KEYS do
  local v = tonumber(ARGV[i])
  local cur = redis.call('GET', KEYS[i])
  local keep = false
  if cur then
    local cv = tonumber(string.match(cur, '^[VT](%-?%d+)'))
    if cv and cv >= v then keep = true end
  end
  if not keep then
    redis.call('SET', KEYS[i], 'T' .. ARGV[i], 'PX', ttl)
  end
end
return #KEYS
"#;

/// KEYS: n keys. ARGV: the version each must hold. 1 when every key holds a value (not a
/// tombstone) of exactly that version, else 0. Reads only each value's header.
const VERSIONS_LUA: &str = r#"
for i = 1, #KEYS do
  local head = redis.call('GETRANGE', KEYS[i], 0, 24)
  if string.match(head, '^V(%-?%d+):') ~= ARGV[i] then return 0 end
end
return 1
"#;

const WARN_EVERY: Duration = Duration::from_secs(1);

/// Tombstones that could not be written are kept (newest version per key) and written before
/// the next L2 read or fill; past this many, the oldest guarantee is given up (and logged).
const MAX_PENDING_TOMBSTONES: usize = 100_000;

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

fn parse_run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
}

/// One item of a fill: the caller's key, the row version, the L2 TTL and the encoded blob.
pub(crate) struct FillItem<'a> {
    pub key: &'a str,
    pub version: i64,
    pub ttl: Duration,
    pub blob: Vec<u8>,
}

pub(crate) struct L2 {
    manager: ConnectionManager,
    breaker: Breaker,
    timeout: Duration,
    prefix: String,
    tombstone_ttl: Duration,
    /// `e{tag}:` once the server's run_id is known.
    namespace: RwLock<Option<Arc<str>>>,
    run_id: Mutex<Option<String>>,
    needs_check: AtomicBool,
    check_lock: tokio::sync::Mutex<()>,
    epoch: AtomicU64,
    /// The purge generation the key namespace is built from (0: none; set by
    /// [`L2::renew_namespace`]), so that nothing written before a purge is read again.
    purge: AtomicI64,
    round_trips: AtomicU64,
    metrics: Metrics,
    fill_script: Script,
    tombstone_script: Script,
    last_warn: Mutex<Option<Instant>>,
    /// Tombstones whose write failed, to be retried before the next read or fill.
    pending_tombstones: Mutex<HashMap<String, i64>>,
    on_reset: Box<dyn Fn() + Send + Sync>,
}

impl L2 {
    /// Builds the tier without connecting: a Redis that is down at start-up is not an error.
    pub fn new(
        url: &str,
        prefix: String,
        timeout: Duration,
        breaker: Breaker,
        tombstone_ttl: Duration,
        metrics: Metrics,
        on_reset: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Self, CacheError> {
        let client = Client::open(url).map_err(CacheError::RedisUrl)?;
        // Short, bounded reconnect attempts: our own timeout bounds every call anyway, and a
        // reconnect stuck in a long back-off would delay recovery once Redis is back.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(CacheError::RedisUrl)?;
        Ok(Self {
            manager,
            breaker,
            timeout,
            prefix,
            tombstone_ttl,
            namespace: RwLock::new(None),
            run_id: Mutex::new(None),
            needs_check: AtomicBool::new(true),
            check_lock: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            purge: AtomicI64::new(0),
            round_trips: AtomicU64::new(0),
            metrics,
            fill_script: Script::new(FILL_LUA),
            tombstone_script: Script::new(TOMBSTONE_LUA),
            last_warn: Mutex::new(None),
            pending_tombstones: Mutex::new(HashMap::new()),
            on_reset,
        })
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn warn(&self, op: &str, err: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut last = self.last_warn.lock().unwrap();
        if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            *last = Some(now);
            drop(last);
            tracing::warn!(op, error = %err, "redis call failed; serving from L1 and the loader");
        } else {
            tracing::debug!(op, error = %err, "redis call failed");
        }
    }

    /// Runs one Redis round trip through the breaker and the timeout, in a `redis` span
    /// (`db.operation.name` = `op`). `None`: unavailable.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.metrics.redis_requests.with_label_values(&[op]).inc();
        let Some(permit) = self.breaker.try_acquire() else {
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
        let round_trip = tokio::time::timeout(self.timeout, f(self.manager.clone()))
            .instrument(span.clone())
            .await;
        if !matches!(round_trip, Ok(Ok(_))) {
            span.record("otel.status_code", "ERROR");
        }
        match round_trip {
            Ok(Ok(v)) => {
                if permit.success() {
                    tracing::info!("redis is reachable again; circuit breaker closed");
                    self.needs_check.store(true, Ordering::Relaxed);
                }
                Some(v)
            }
            Ok(Err(e)) => {
                permit.failure();
                // A failure may hide a restart: re-check the run_id before the next use.
                self.needs_check.store(true, Ordering::Relaxed);
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                self.warn(op, &e);
                None
            }
            Err(_) => {
                permit.failure();
                self.needs_check.store(true, Ordering::Relaxed);
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                self.warn(op, &"timeout");
                None
            }
        }
    }

    /// The current key namespace, checking the server's run_id first when needed.
    async fn namespace(&self) -> Option<Arc<str>> {
        if !self.needs_check.load(Ordering::Relaxed)
            && let Some(ns) = self.namespace.read().unwrap().clone()
        {
            return Some(ns);
        }
        self.check_run_id().await
    }

    /// Reads `INFO server`, and on a run_id change bumps the epoch and clears L1.
    pub async fn check_run_id(&self) -> Option<Arc<str>> {
        let _guard = self.check_lock.lock().await;
        if !self.needs_check.load(Ordering::Relaxed)
            && let Some(ns) = self.namespace.read().unwrap().clone()
        {
            // Someone else checked while we waited for the lock.
            return Some(ns);
        }
        self.needs_check.store(false, Ordering::Relaxed);
        let info: String = self
            .call("info", |mut con| async move {
                redis::cmd("INFO").arg("server").query_async(&mut con).await
            })
            .await?;
        let Some(run_id) = parse_run_id(&info) else {
            self.needs_check.store(true, Ordering::Relaxed);
            self.warn("info", &"INFO server has no run_id");
            return None;
        };
        let changed = {
            let mut known = self.run_id.lock().unwrap();
            let changed = known.as_deref().is_some_and(|old| old != run_id);
            *known = Some(run_id.clone());
            changed
        };
        let tag: String = run_id.chars().take(12).collect();
        let ns: Arc<str> = match self.purge.load(Ordering::Acquire) {
            0 => Arc::from(format!("{}e{}:", self.prefix, tag)),
            purge => Arc::from(format!("{}e{}p{}:", self.prefix, tag, purge)),
        };
        *self.namespace.write().unwrap() = Some(ns.clone());
        if changed {
            let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics.epoch.set(epoch as i64);
            tracing::warn!(
                epoch,
                "redis run_id changed (restart or failover): new L2 epoch, L1 cleared"
            );
            (self.on_reset)();
        }
        Some(ns)
    }

    /// Moves to the key namespace of purge `generation` (the caller applies each generation
    /// once, newest last) and clears L1.
    pub fn renew_namespace(&self, generation: i64) {
        self.purge.store(generation, Ordering::Release);
        self.needs_check.store(true, Ordering::Release);
        tracing::warn!(
            generation,
            "purge of every cached value: new L2 namespace, L1 cleared"
        );
        (self.on_reset)();
    }

    /// Forces a run_id check (the periodic health check).
    pub async fn health_check(&self) {
        self.needs_check.store(true, Ordering::Relaxed);
        if self.check_run_id().await.is_some() {
            self.flush_pending_tombstones().await;
        }
    }

    /// Writes the tombstones whose first write failed. `false` if they are still pending.
    async fn flush_pending_tombstones(&self) -> bool {
        let pending: Vec<(String, i64)> = {
            let mut pending = self.pending_tombstones.lock().unwrap();
            if pending.is_empty() {
                return true;
            }
            pending.drain().collect()
        };
        tracing::info!(
            keys = pending.len(),
            "writing tombstones that failed earlier"
        );
        self.write_tombstones(&pending).await
    }

    /// One `MGET` for all `keys`. `None`: L2 unavailable.
    pub async fn mget(&self, keys: &[&str]) -> Option<Vec<Option<Vec<u8>>>> {
        let ns = self.namespace().await?;
        if !self.flush_pending_tombstones().await {
            return None; // never read what a lost tombstone should hide
        }
        let full: Vec<String> = keys.iter().map(|k| format!("{ns}{k}")).collect();
        self.call("mget", |mut con| async move {
            redis::cmd("MGET").arg(&full).query_async(&mut con).await
        })
        .await
    }

    /// One raw blob (a derived result), `None` when absent or L2 is unavailable.
    pub async fn get_blob(&self, key: &str) -> Option<Vec<u8>> {
        let ns = self.namespace().await?;
        if !self.flush_pending_tombstones().await {
            return None;
        }
        let full = format!("{ns}{key}");
        self.call("get", |mut con| async move {
            redis::cmd("GET")
                .arg(&full)
                .query_async::<Option<Vec<u8>>>(&mut con)
                .await
        })
        .await
        .flatten()
    }

    /// Whether every key holds a value of exactly its version (`None`: L2 unavailable).
    pub async fn versions_current(&self, deps: &[(String, i64)]) -> Option<bool> {
        let ns = self.namespace().await?;
        let script = Script::new(VERSIONS_LUA);
        let mut invocation = script.prepare_invoke();
        for (key, version) in deps {
            invocation
                .key(format!("{ns}{key}"))
                .arg(version.to_string());
        }
        let ok: i64 = self
            .call("versions", |mut con| async move {
                invocation.invoke_async(&mut con).await
            })
            .await?;
        Some(ok == 1)
    }

    /// Stores a raw blob for `ttl` (best effort).
    pub async fn set_blob(&self, key: &str, blob: &[u8], ttl: Duration) {
        let Some(ns) = self.namespace().await else {
            return;
        };
        let full = format!("{ns}{key}");
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: Option<()> = self
            .call("set", |mut con| async move {
                redis::cmd("SET")
                    .arg(&full)
                    .arg(blob)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut con)
                    .await
            })
            .await;
    }

    /// Versioned fill of all items in one script call. `None`: L2 unavailable; otherwise one
    /// flag per item: stored (true) or refused as stale (false).
    pub async fn fill(&self, items: &[FillItem<'_>]) -> Option<Vec<bool>> {
        if items.is_empty() {
            return Some(Vec::new());
        }
        let ns = self.namespace().await?;
        if !self.flush_pending_tombstones().await {
            return None;
        }
        let mut invocation = self.fill_script.prepare_invoke();
        for item in items {
            let ttl_ms = u64::try_from(item.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            invocation
                .key(format!("{ns}{}", item.key))
                .arg(item.version)
                .arg(ttl_ms)
                .arg(item.blob.as_slice());
        }
        let flags: Vec<i64> = self
            .call("fill", |mut con| async move {
                invocation.invoke_async(&mut con).await
            })
            .await?;
        Some(flags.into_iter().map(|f| f == 1).collect())
    }

    /// Writes tombstones for all keys in one script call. If L2 is unavailable they are kept
    /// and written before the next read or fill, so a Redis that was briefly unreachable for
    /// the writer does not go on serving the old values afterwards.
    /// `true` when they were written now.
    pub async fn tombstone(&self, keys: &[(String, i64)]) -> bool {
        let _ = self.flush_pending_tombstones().await;
        self.write_tombstones(keys).await
    }

    async fn write_tombstones(&self, keys: &[(String, i64)]) -> bool {
        if keys.is_empty() {
            return true;
        }
        let Some(ns) = self.namespace().await else {
            self.keep_pending(keys);
            return false;
        };
        let mut invocation = self.tombstone_script.prepare_invoke();
        for (key, version) in keys {
            invocation.key(format!("{ns}{key}")).arg(*version);
        }
        let ttl_ms = u64::try_from(self.tombstone_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        invocation.arg(ttl_ms);
        let written = self
            .call("tombstone", |mut con| async move {
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
        let mut pending = self.pending_tombstones.lock().unwrap();
        for (key, version) in keys {
            let v = pending.entry(key.clone()).or_insert(*version);
            *v = (*v).max(*version);
        }
        if pending.len() > MAX_PENDING_TOMBSTONES {
            tracing::error!(
                keys = pending.len(),
                "too many unwritten tombstones; dropping them (L2 may serve stale values until their TTL)"
            );
            pending.clear();
        }
    }

    /// Number of tombstones waiting to be written.
    pub fn pending_tombstones(&self) -> usize {
        self.pending_tombstones.lock().unwrap().len()
    }

    /// The full Redis key for a caller key in the current namespace (for diagnostics and tests).
    pub fn current_key(&self, key: &str) -> Option<String> {
        self.namespace
            .read()
            .unwrap()
            .as_ref()
            .map(|ns| format!("{ns}{key}"))
    }
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

    #[test]
    fn run_id_is_parsed_from_info() {
        let info = "# Server\r\nredis_version:7.0.0\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(parse_run_id(info).as_deref(), Some("abc123"));
    }
}
