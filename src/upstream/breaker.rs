//! Passive health: a circuit breaker per target, fed by the outcome of real requests.
//!
//! Closed: requests flow; `failures` consecutive failures (connect errors, timeouts, and 5xx
//! answers when configured) open it. Open: the target is skipped by selection until
//! `cooldown` has passed. Then exactly one request is let through as a probe (half-open); its
//! success closes the breaker, its failure opens it for another cooldown. All state is atomic;
//! selection asks [`Breaker::try_acquire`] and the gateway reports with [`Breaker::record`].

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// `[upstreams.NAME.circuit_breaker]`, compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BreakerSettings {
    pub failures: u32,
    pub cooldown: Duration,
    /// Whether 5xx responses count as failures.
    pub on_5xx: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a request's attempt on a target came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failure,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    consecutive: AtomicU32,
    /// When the breaker opened, in milliseconds since `epoch`.
    opened_at_ms: AtomicU64,
    epoch: Instant,
}

/// A permit to send one request; `probe` marks the half-open trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit {
    pub probe: bool,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: AtomicU8::new(State::Closed as u8),
            consecutive: AtomicU32::new(0),
            opened_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a request may go to this target now. When the cooldown of an open breaker has
    /// passed, the first caller gets the single half-open probe.
    pub(crate) fn try_acquire(&self) -> Option<Permit> {
        match self.state() {
            State::Closed => Some(Permit { probe: false }),
            State::HalfOpen => None,
            State::Open => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                if self.now_ms().saturating_sub(opened) < self.settings.cooldown.as_millis() as u64
                {
                    return None;
                }
                self.state
                    .compare_exchange(
                        State::Open as u8,
                        State::HalfOpen as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .ok()
                    .map(|_| Permit { probe: true })
            }
        }
    }

    /// Whether selection would accept the target, without taking the probe.
    pub(crate) fn admits(&self) -> bool {
        match self.state() {
            State::Closed => true,
            State::HalfOpen => false,
            State::Open => {
                let opened = self.opened_at_ms.load(Ordering::Acquire);
                self.now_ms().saturating_sub(opened) >= self.settings.cooldown.as_millis() as u64
            }
        }
    }

    /// Report an attempt's outcome; returns the state afterwards.
    pub(crate) fn record(&self, outcome: Outcome, permit: Permit) -> State {
        match outcome {
            Outcome::Success => {
                self.consecutive.store(0, Ordering::Release);
                if permit.probe || self.state() != State::Closed {
                    self.state.store(State::Closed as u8, Ordering::Release);
                }
            }
            Outcome::Failure => {
                let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                if permit.probe || n >= self.settings.failures {
                    self.opened_at_ms.store(self.now_ms(), Ordering::Release);
                    self.state.store(State::Open as u8, Ordering::Release);
                }
            }
        }
        self.state()
    }

    /// Give back a probe permit that was never used (the request went elsewhere), so the
    /// next request can probe.
    pub(crate) fn release(&self, permit: Permit) {
        if permit.probe {
            let _ = self.state.compare_exchange(
                State::HalfOpen as u8,
                State::Open as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    pub(crate) fn counts_5xx(&self) -> bool {
        self.settings.on_5xx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_millis(cooldown_ms),
            on_5xx: true,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(10_000);
        let p = b.try_acquire().unwrap();
        b.record(Outcome::Failure, p);
        b.record(Outcome::Failure, p);
        b.record(Outcome::Success, p);
        b.record(Outcome::Failure, p);
        b.record(Outcome::Failure, p);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.record(Outcome::Failure, p), State::Open);
        assert!(b.try_acquire().is_none());
        assert!(!b.admits());
    }

    #[test]
    fn one_probe_after_cooldown_then_close_or_reopen() {
        let b = breaker(0);
        let p = b.try_acquire().unwrap();
        for _ in 0..3 {
            b.record(Outcome::Failure, p);
        }
        assert_eq!(b.state(), State::Open);
        let probe = b.try_acquire().unwrap();
        assert!(probe.probe);
        assert!(b.try_acquire().is_none(), "only one probe at a time");
        assert_eq!(b.record(Outcome::Failure, probe), State::Open);
        let probe = b.try_acquire().unwrap();
        assert_eq!(b.record(Outcome::Success, probe), State::Closed);
        assert!(!b.try_acquire().unwrap().probe);
    }
}
