//! Per-viewer rate limiting of `/graphql` (GET and POST) (`governor`'s keyed GCRA, a token bucket per key):
//! a viewer may send `burst` requests at once and `per_second` after that; more are answered 429
//! `RATE_LIMITED` with `Retry-After`, before the response cache or any parsing, and counted in
//! `cal_rate_limited_total`. `/health`, `/ready` and `/metrics` are never limited.
//!
//! Keys: the user id of a valid token. Every request without one (no token, or a bad or expired
//! one) shares a single bucket: such a request can only be refused (`UNAUTHENTICATED`), so
//! limiting all of them together caps what strangers can make the server parse, and client
//! addresses would be the load balancer's anyway (a forwarded-for header is the client's to
//! forge). Keys are user ids only an issued token carries, so the store holds at most the active
//! users; it is swept of keys whose bucket is full again (indistinguishable from a fresh one)
//! every [`SWEEP_EVERY`] checks, so users who went quiet do not stay in it.

use crate::auth::Viewer;
use crate::config::RateLimit;
use cal_domain::UserId;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Checks between two sweeps of the keyed store.
pub const SWEEP_EVERY: u64 = 4096;

/// Whose bucket a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    User(UserId),
    /// Every request without a valid token.
    Anonymous,
}

impl From<Viewer> for Key {
    fn from(v: Viewer) -> Self {
        match v {
            Viewer::User(id) => Key::User(id),
            Viewer::Anonymous | Viewer::Invalid => Key::Anonymous,
        }
    }
}

/// Highest accepted rate: a microsecond between requests is already no limit at all.
pub const MAX_PER_SECOND: f64 = 1_000_000.0;

/// The quota of `limit`, or why it has none.
pub fn quota(limit: &RateLimit) -> Result<Quota, String> {
    let burst = NonZeroU32::new(limit.burst).ok_or("the burst must be at least 1")?;
    if !(limit.per_second.is_finite() && limit.per_second > 0.0) {
        return Err(format!(
            "the rate must be a positive number of requests per second, not {}",
            limit.per_second
        ));
    }
    if limit.per_second > MAX_PER_SECOND {
        return Err(format!(
            "{} requests per second is too many (at most {MAX_PER_SECOND})",
            limit.per_second
        ));
    }
    Duration::try_from_secs_f64(1.0 / limit.per_second)
        .ok()
        .and_then(Quota::with_period)
        .map(|q| q.allow_burst(burst))
        .ok_or_else(|| format!("{} requests per second is too many", limit.per_second))
}

/// The per-viewer limiter of one instance.
pub struct Limiter<C: Clock = DefaultClock> {
    buckets: RateLimiter<Key, DashMapStateStore<Key>, C, NoOpMiddleware<C::Instant>>,
    checks: AtomicU64,
    sweep_every: u64,
}

impl Limiter {
    pub fn new(limit: &RateLimit) -> Result<Self, String> {
        Ok(Self::with_clock(
            quota(limit)?,
            DefaultClock::default(),
            SWEEP_EVERY,
        ))
    }
}

impl<C: Clock> Limiter<C> {
    fn with_clock(quota: Quota, clock: C, sweep_every: u64) -> Self {
        Self {
            buckets: RateLimiter::new(quota, DashMapStateStore::default(), clock),
            checks: AtomicU64::new(0),
            sweep_every: sweep_every.max(1),
        }
    }

    /// Takes a token from `key`'s bucket; `Err(wait)` when it is empty, `wait` being how long
    /// until the next one.
    pub fn check(&self, key: Key) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % self.sweep_every == self.sweep_every - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.buckets.clock().now()))
    }

    /// Keys in the store (for tests and figures).
    pub fn keys(&self) -> usize {
        self.buckets.len()
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_bucket_holds_its_burst_then_refills_at_the_rate() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(quota(&limit(0.5, 3)).unwrap(), clock.clone(), 1 << 20);
        let me = Key::User(UserId::new(1));
        for _ in 0..3 {
            assert_eq!(l.check(me), Ok(()));
        }
        let wait = l.check(me).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert_eq!(retry_after_secs(wait), 2);
        // Others have their own buckets; all tokenless requests share one.
        assert_eq!(l.check(Key::User(UserId::new(2))), Ok(()));
        assert_eq!(Key::from(Viewer::Invalid), Key::from(Viewer::Anonymous));
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.check(me), Ok(()));
        assert!(l.check(me).is_err());
    }

    #[test]
    fn quiet_keys_are_swept() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(quota(&limit(1.0, 3)).unwrap(), clock.clone(), 100);
        for u in 0..99 {
            assert_eq!(l.check(Key::User(UserId::new(u))), Ok(()));
        }
        assert_eq!(l.keys(), 99);
        // Three seconds later every bucket is full again; the 100th check sweeps them.
        clock.advance(Duration::from_secs(3));
        assert_eq!(l.check(Key::User(UserId::new(1000))), Ok(()));
        assert_eq!(l.keys(), 1, "only the key just used is left");
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(quota(&limit(0.0, 3)).is_err());
        assert!(quota(&limit(-1.0, 3)).is_err());
        assert!(quota(&limit(f64::NAN, 3)).is_err());
        assert!(quota(&limit(1.0, 0)).is_err());
        assert!(quota(&limit(1e12, 3)).is_err());
        assert!(quota(&limit(2e9, 3)).is_err());
        assert!(quota(&limit(MAX_PER_SECOND, 3)).is_ok());
        assert!(quota(&limit(0.01, 3)).is_ok());
    }

    #[test]
    fn retry_after_is_a_whole_second_at_least() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
