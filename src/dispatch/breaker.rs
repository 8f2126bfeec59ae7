//! A carrier's circuit breaker: opens after N consecutive failures, stays open for a
//! cooldown, then lets one submission decide. Times are monotonic, so a clock stepped back
//! never holds a carrier closed for the size of the step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tracing::warn;

use crate::message::mono_ms;

/// Opens after N consecutive failures; closes after a cooldown and a success.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    consecutive: AtomicU32,
    open_until_ms: AtomicU64,
    last_failure_ms: AtomicU64,
}

/// Failures closer together than this are one event (a window of parts timing out together).
const FAILURE_DEBOUNCE_MS: u64 = 500;

impl Breaker {
    /// `threshold` 0 disables the breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Arc<Breaker> {
        Arc::new(Breaker {
            threshold,
            cooldown,
            consecutive: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
        })
    }

    /// Traffic is being kept away.
    pub fn is_open(&self) -> bool {
        mono_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    /// A submission went through.
    pub fn success(&self) {
        self.consecutive.store(0, Ordering::Release);
    }

    /// The cooldown just ended: the first failure after it counts at once.
    fn half_open_expired(&self, now: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        until != 0 && now >= until && self.last_failure_ms.load(Ordering::Acquire) < until
    }

    /// A submission timed out or got a temporary error.
    pub fn failure(&self, carrier: &str) {
        let now = mono_ms();
        let last = self.last_failure_ms.load(Ordering::Acquire);
        if now < last + FAILURE_DEBOUNCE_MS && !self.half_open_expired(now) {
            return;
        }
        self.last_failure_ms.store(now, Ordering::Release);
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if self.threshold > 0 && n >= self.threshold && !self.is_open() {
            self.open_until_ms.store(now + self.cooldown.as_millis() as u64, Ordering::Release);
            // Half-open after the cooldown: the next failure alone reopens it.
            self.consecutive.store(self.threshold.saturating_sub(1), Ordering::Release);
            warn!(carrier, failures = n, cooldown_s = self.cooldown.as_secs(), "circuit breaker open");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_reopens_on_one_after_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(50));
        let fail = |b: &Breaker| {
            b.last_failure_ms.store(0, Ordering::Release); // as if the debounce interval passed
            b.failure("c");
        };
        fail(&b);
        fail(&b);
        b.success();
        fail(&b);
        fail(&b);
        assert!(!b.is_open(), "a success resets the count");
        b.failure("c");
        assert!(!b.is_open(), "failures within the debounce interval are one event");
        fail(&b);
        assert!(b.is_open());
        // The cooldown ends: the clock is moved on instead of sleeping.
        b.open_until_ms.store(mono_ms() - 1, Ordering::Release);
        b.last_failure_ms.store(mono_ms() - 1000, Ordering::Release);
        assert!(!b.is_open(), "half-open after the cooldown");
        b.failure("c");
        assert!(b.is_open(), "one failure in half-open reopens");
    }
}
