//! Per-carrier flow control: the configured `rate`/`burst` (a `governor` GCRA limiter, one
//! per carrier, shared by its binds, counted in `submit_sm`), and adaptive slow-down when the
//! carrier answers `ESME_RTHROTTLED`/`ESME_RMSGQFUL`: pause, cut the rate to 80 % of what was
//! flowing, then ramp back up by 5 % a second while no throttling comes.
//!
//! Only the carrier's dispatcher waits here (one waiter per limiter, no thundering herd), and
//! waiting sleeps on tokio's timer until the limiter says the next cell is free: no spinning.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::message::now_ms;

/// Rate state of one carrier.
pub struct FlowControl {
    throttle_pause: Duration,
    state: Mutex<State>,
    paused_until_ms: AtomicU64,
    sent_this_second: AtomicU64,
    second: AtomicU64,
    sent_last_second: AtomicU64,
}

struct State {
    /// `rate`/`burst` from the configuration (changed by a reload).
    configured: Option<(NonZeroU32, NonZeroU32)>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// Rate imposed after throttling, below the configured one; `None` when not throttled.
    adaptive: Option<u32>,
    last_throttle_ms: u64,
    last_ramp_ms: u64,
}

fn limiter(rate: NonZeroU32, burst: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
    Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
}

fn default_burst(rate: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new((rate.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN)
}

impl FlowControl {
    /// `rate` submit_sm per second (0 = unlimited), `burst` (0 = rate/10, at least 1).
    pub fn new(rate: u32, burst: u32, throttle_pause: Duration) -> Arc<FlowControl> {
        let configured = NonZeroU32::new(rate).map(|r| (r, NonZeroU32::new(burst).unwrap_or_else(|| default_burst(r))));
        Arc::new(FlowControl {
            throttle_pause,
            state: Mutex::new(State {
                configured,
                limiter: configured.map(|(r, b)| limiter(r, b)),
                adaptive: None,
                last_throttle_ms: 0,
                last_ramp_ms: 0,
            }),
            paused_until_ms: AtomicU64::new(0),
            sent_this_second: AtomicU64::new(0),
            second: AtomicU64::new(0),
            sent_last_second: AtomicU64::new(0),
        })
    }

    /// The rate in force now (adaptive or configured), `None` = unlimited.
    pub fn current_rate(&self) -> Option<u32> {
        let s = self.state.lock().ok()?;
        s.adaptive.or(s.configured.map(|(r, _)| r.get()))
    }

    /// Applies a new `rate`/`burst` (configuration reload). An adaptive slow-down in progress
    /// continues and ramps toward the new rate.
    pub fn set_limits(&self, rate: u32, burst: u32) {
        let configured = NonZeroU32::new(rate).map(|r| (r, NonZeroU32::new(burst).unwrap_or_else(|| default_burst(r))));
        if let Ok(mut s) = self.state.lock() {
            if s.configured == configured {
                return;
            }
            s.configured = configured;
            if s.adaptive.is_none() {
                s.limiter = configured.map(|(r, b)| limiter(r, b));
            }
        }
    }

    /// Waits until one more `submit_sm` may go.
    pub async fn acquire(&self) {
        loop {
            let paused = self.paused_until_ms.load(Ordering::Acquire);
            let now = now_ms();
            if paused > now {
                tokio::time::sleep(Duration::from_millis(paused - now)).await;
                continue;
            }
            self.ramp(now);
            let limiter = self.state.lock().ok().and_then(|s| s.limiter.clone());
            let Some(limiter) = limiter else { break };
            match limiter.check() {
                Ok(()) => break,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    tokio::time::sleep(wait.max(Duration::from_micros(100))).await;
                }
            }
        }
        self.count_sent();
    }

    fn count_sent(&self) {
        let second = now_ms() / 1000;
        let prev = self.second.swap(second, Ordering::AcqRel);
        if prev != second {
            let n = self.sent_this_second.swap(0, Ordering::AcqRel);
            self.sent_last_second.store(if second == prev + 1 { n } else { 0 }, Ordering::Release);
        }
        self.sent_this_second.fetch_add(1, Ordering::AcqRel);
    }

    /// The carrier said "too fast": pause, and cut the rate to 80 % of what was flowing.
    /// Throttles within one pause count once.
    pub fn on_throttle(&self) {
        let now = now_ms();
        let Ok(mut s) = self.state.lock() else { return };
        if now < s.last_throttle_ms + self.throttle_pause.as_millis() as u64 {
            return;
        }
        s.last_throttle_ms = now;
        s.last_ramp_ms = now;
        let flowing = self.sent_last_second.load(Ordering::Acquire).max(self.sent_this_second.load(Ordering::Acquire));
        let current = s.adaptive.or(s.configured.map(|(r, _)| r.get())).unwrap_or(u32::MAX);
        let cut = ((flowing.min(u64::from(current)) as f64) * 0.8).max(1.0) as u32;
        s.adaptive = Some(cut);
        s.limiter = NonZeroU32::new(cut).map(|r| limiter(r, default_burst(r)));
        self.paused_until_ms.store(now + self.throttle_pause.as_millis() as u64, Ordering::Release);
        tracing::info!(
            rate = cut,
            pause_ms = self.throttle_pause.as_millis() as u64,
            "carrier throttled us; slowing down"
        );
    }

    /// Additive ramp back: +5 % (at least 1/s) per quiet second, until the configured rate
    /// (or, unlimited, until twice the rate that last drew a throttle is allowed).
    fn ramp(&self, now: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        let Some(rate) = s.adaptive else { return };
        if now < s.last_ramp_ms + 1000 || now < s.last_throttle_ms + 1000 {
            return;
        }
        s.last_ramp_ms = now;
        let next = rate.saturating_add((rate / 20).max(1));
        match s.configured {
            Some((r, b)) if next >= r.get() => {
                s.adaptive = None;
                s.limiter = Some(limiter(r, b));
            }
            None if now > s.last_throttle_ms + 60_000 => {
                s.adaptive = None;
                s.limiter = None;
            }
            _ => {
                s.adaptive = Some(next);
                s.limiter = NonZeroU32::new(next).map(|r| limiter(r, default_burst(r)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_to_the_configured_rate() {
        let f = FlowControl::new(200, 10, Duration::from_millis(100));
        let started = std::time::Instant::now();
        for _ in 0..110 {
            f.acquire().await;
        }
        // 10 at once (burst), then 100 more at 200/s ≈ 0.5 s.
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.45..0.7).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test]
    async fn throttling_pauses_and_cuts_the_rate() {
        let f = FlowControl::new(0, 0, Duration::from_millis(200));
        assert_eq!(f.current_rate(), None);
        for _ in 0..50 {
            f.acquire().await;
        }
        f.on_throttle();
        let rate = f.current_rate().unwrap();
        assert!(rate <= 40, "{rate}");
        f.on_throttle();
        assert_eq!(f.current_rate(), Some(rate), "a second throttle inside the pause counts once");
        let started = std::time::Instant::now();
        f.acquire().await;
        assert!(started.elapsed() >= Duration::from_millis(150), "paused first");
    }
}
