//! A circuit breaker for Redis calls: closed → open after N consecutive failures → half-open after
//! a cool-down (exactly one probe in flight) → closed on the probe's success. No I/O and no
//! clock other than `Instant::now()`; the L2 tier decides what a failure is.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::IntGauge;

/// The breaker's state as reported by [`crate::TieredCache::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe call is in flight; other calls are skipped.
    HalfOpen,
    /// Calls are skipped until the cool-down ends.
    Open,
}

impl BreakerState {
    /// Its `cal_cache_breaker_state` value, which also orders the states from best to worst.
    pub(crate) fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    // A std Mutex: the critical sections are a few comparisons and never span an `.await`.
    state: Mutex<State>,
    failures_to_open: u32,
    cooldown: Duration,
    gauge: IntGauge,
}

/// Permission to make one call. Report the outcome with [`Permit::success`] or
/// [`Permit::failure`]; a probe dropped without an outcome (its caller was cancelled) lets the
/// next caller probe instead of leaving the breaker half-open forever.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    done: bool,
}

impl Breaker {
    pub fn new(failures_to_open: u32, cooldown: Duration, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            failures_to_open: failures_to_open.max(1),
            cooldown,
            gauge,
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.state.lock().unwrap() {
            State::Closed { .. } => BreakerState::Closed,
            State::HalfOpen => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        }
    }

    fn set(&self, guard: &mut State, new: State) {
        *guard = new;
        let reported = match new {
            State::Closed { .. } => BreakerState::Closed,
            State::HalfOpen => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        };
        self.gauge.set(reported.gauge_value());
    }

    /// `None` while open (or while another caller is probing).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.state.lock().unwrap();
        match *state {
            State::Closed { .. } => Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            State::Open { until } if Instant::now() >= until => {
                self.set(&mut state, State::HalfOpen);
                Some(Permit {
                    breaker: self,
                    probe: true,
                    done: false,
                })
            }
            State::Open { .. } | State::HalfOpen => None,
        }
    }
}

impl Permit<'_> {
    /// The call succeeded. Returns true if this closed a half-open breaker (Redis is back).
    pub fn success(mut self) -> bool {
        self.done = true;
        let b = self.breaker;
        let mut state = b.state.lock().unwrap();
        match *state {
            State::HalfOpen if self.probe => {
                b.set(&mut state, State::Closed { failures: 0 });
                true
            }
            State::Closed { .. } => {
                b.set(&mut state, State::Closed { failures: 0 });
                false
            }
            _ => false,
        }
    }

    /// The call failed or timed out.
    pub fn failure(mut self) {
        self.done = true;
        let b = self.breaker;
        let mut state = b.state.lock().unwrap();
        match *state {
            State::HalfOpen if self.probe => {
                let until = Instant::now() + b.cooldown;
                b.set(&mut state, State::Open { until });
            }
            State::Closed { failures } => {
                let failures = failures + 1;
                if failures >= b.failures_to_open {
                    let until = Instant::now() + b.cooldown;
                    b.set(&mut state, State::Open { until });
                } else {
                    b.set(&mut state, State::Closed { failures });
                }
            }
            _ => {}
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.done || !self.probe {
            return;
        }
        let b = self.breaker;
        let mut state = b.state.lock().unwrap();
        if let State::HalfOpen = *state {
            b.set(
                &mut state,
                State::Open {
                    until: Instant::now(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        let gauge = IntGauge::new("g", "g").unwrap();
        Breaker::new(3, Duration::from_millis(cooldown_ms), gauge)
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers() {
        let b = breaker(0);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success(); // resets the count
        for _ in 0..2 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        // Cool-down of 0: the next caller probes, others are refused meanwhile.
        let probe = b.try_acquire().unwrap();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_none());
        assert!(probe.success());
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens_and_dropped_probe_frees_the_slot() {
        let b = breaker(60_000);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert!(b.try_acquire().is_none(), "open during cool-down");
        let b = breaker(0);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        drop(b.try_acquire().unwrap());
        assert!(
            b.try_acquire().is_some(),
            "a dropped probe lets the next one probe"
        );
    }
}
