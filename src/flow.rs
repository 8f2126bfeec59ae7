//! Per-carrier flow control: the configured `rate`/`burst` (a `governor` GCRA limiter, one
//! per carrier, shared by its binds, counted in `submit_sm`), and adaptive slow-down when the
//! carrier answers `ESME_RTHROTTLED`/`ESME_RMSGQFUL`: pause, remember how many `submit_sm` the
//! carrier accepted per second as its ceiling, cut the rate to 90 % of it, ramp back by 5 % a
//! second up to 99.5 % of the ceiling, hold there, and probe above it (+1 % a second) only
//! after five minutes without throttling. A carrier with a fixed limit is thus run just under it instead of in a sawtooth
//! (measured against the node simulator's `--throttle 1000` in docs/performance.md).
//!
//! Every pause and ramp step is timed on a monotonic clock: a wall clock stepped back must not
//! hold a carrier for the size of the step.
//!
//! Only the carrier's dispatcher waits here (one waiter per limiter, no thundering herd), and
//! waiting sleeps on tokio's timer until the limiter says the next cell is free: no spinning.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::message::mono_ms;

/// Rate state of one carrier.
pub struct FlowControl {
    throttle_pause: Duration,
    state: Mutex<State>,
    paused_until_ms: AtomicU64,
    /// `submit_sm` let through, per second.
    sent: SecondCounter,
    /// `submit_sm` the carrier accepted, per second.
    accepted: SecondCounter,
}

/// A count per calendar second that also keeps the previous second's total.
#[derive(Default)]
struct SecondCounter {
    second: AtomicU64,
    this_second: AtomicU64,
    last_second: AtomicU64,
}

impl SecondCounter {
    fn add(&self, n: u64) {
        let second = mono_ms() / 1000;
        let prev = self.second.swap(second, Ordering::AcqRel);
        if prev != second {
            let total = self.this_second.swap(0, Ordering::AcqRel);
            self.last_second.store(if second == prev + 1 { total } else { 0 }, Ordering::Release);
        }
        self.this_second.fetch_add(n, Ordering::AcqRel);
    }

    fn recent(&self) -> u64 {
        self.last_second.load(Ordering::Acquire).max(self.this_second.load(Ordering::Acquire))
    }
}

struct State {
    /// `rate`/`burst` from the configuration (changed by a reload).
    configured: Option<(NonZeroU32, NonZeroU32)>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    /// Rate imposed after throttling, below the configured one; `None` when not throttled.
    adaptive: Option<u32>,
    /// What was flowing when the carrier last throttled us.
    ceiling: Option<u32>,
    last_throttle_ms: u64,
    last_ramp_ms: u64,
}

fn limiter(rate: NonZeroU32, burst: NonZeroU32) -> Arc<DefaultDirectRateLimiter> {
    Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
}

/// A small burst while adapting: a carrier counting in fixed one-second windows must not see
/// the bucket's burst on top of the rate.
fn adaptive_burst(rate: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new((rate.get() / 100).max(1)).unwrap_or(NonZeroU32::MIN)
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
                ceiling: None,
                last_throttle_ms: 0,
                last_ramp_ms: 0,
            }),
            paused_until_ms: AtomicU64::new(0),
            sent: SecondCounter::default(),
            accepted: SecondCounter::default(),
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
            let now = mono_ms();
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
        self.sent.add(1);
    }

    /// Counts `submit_sm` the carrier accepted: what it takes per second is its ceiling.
    pub fn on_accepted(&self, parts: u64) {
        self.accepted.add(parts);
    }

    /// The carrier said "too fast": pause, note its ceiling, cut the rate to 90 % of it.
    /// Throttles within one pause count once.
    pub fn on_throttle(&self) {
        let now = mono_ms();
        let Ok(mut s) = self.state.lock() else { return };
        if now < s.last_throttle_ms + self.throttle_pause.as_millis() as u64 {
            return;
        }
        s.last_throttle_ms = now;
        s.last_ramp_ms = now;
        let flowing = self.sent.recent();
        let current = s.adaptive.or(s.configured.map(|(r, _)| r.get())).unwrap_or(u32::MAX);
        let accepted = self.accepted.recent();
        let ceiling = if accepted > 0 { accepted } else { flowing };
        let ceiling = ceiling.min(u64::from(current)).clamp(1, u64::from(u32::MAX)) as u32;
        let cut = ((f64::from(ceiling) * 0.9) as u32).max(1);
        s.ceiling = Some(ceiling);
        s.adaptive = Some(cut);
        s.limiter = NonZeroU32::new(cut).map(|r| limiter(r, adaptive_burst(r)));
        self.paused_until_ms.store(now + self.throttle_pause.as_millis() as u64, Ordering::Release);
        tracing::info!(
            rate = cut,
            pause_ms = self.throttle_pause.as_millis() as u64,
            "carrier throttled us; slowing down"
        );
    }

    /// Ramp back: +5 % (at least 1/s) per quiet second up to 99.5 % of the ceiling, hold, and
    /// +1 % a second after five quiet minutes; ends at the configured rate (or, unlimited, at
    /// twice the old ceiling).
    fn ramp(&self, now: u64) {
        let Ok(mut s) = self.state.lock() else { return };
        let Some(rate) = s.adaptive else { return };
        if now < s.last_ramp_ms + 1000 || now < s.last_throttle_ms + 1000 {
            return;
        }
        s.last_ramp_ms = now;
        let hold = s.ceiling.map(|c| ((f64::from(c) * 0.995) as u32).max(1));
        let calm = now > s.last_throttle_ms + 300_000;
        let next = match hold {
            // Below the remembered ceiling: come back quickly, but stop just under it.
            Some(h) if rate < h => rate.saturating_add((rate / 20).max(1)).min(h),
            // At it: stay, unless a minute passed without throttling; then probe gently.
            Some(_) if !calm => return,
            Some(_) => rate.saturating_add((rate / 100).max(1)),
            None => rate.saturating_add((rate / 20).max(1)),
        };
        match s.configured {
            Some((r, b)) if next >= r.get() => {
                s.adaptive = None;
                s.limiter = Some(limiter(r, b));
            }
            // Unlimited carrier that now takes twice its old ceiling: the limit is gone.
            None if s.ceiling.is_some_and(|c| u64::from(next) >= 2 * u64::from(c)) => {
                s.adaptive = None;
                s.ceiling = None;
                s.limiter = None;
            }
            _ => {
                s.adaptive = Some(next);
                s.limiter = NonZeroU32::new(next).map(|r| limiter(r, adaptive_burst(r)));
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
        // 10 at once (burst), then 100 more at 200/s: never faster than 0.5 s. (How close to
        // it a loaded machine gets is measured by tests/rate.rs and the benchmarks.)
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.45..10.0).contains(&elapsed), "{elapsed}");
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
        assert!(rate <= 45, "{rate}");
        f.on_throttle();
        assert_eq!(f.current_rate(), Some(rate), "a second throttle inside the pause counts once");
        let started = std::time::Instant::now();
        f.acquire().await;
        assert!(started.elapsed() >= Duration::from_millis(150), "paused first");
    }

    #[test]
    fn holds_just_under_the_ceiling_the_carrier_accepted() {
        let f = FlowControl::new(0, 0, Duration::from_millis(200));
        f.on_accepted(1000);
        f.on_throttle();
        assert_eq!(f.current_rate(), Some(900), "90 % of what the carrier accepted");
        let t = f.state.lock().unwrap().last_throttle_ms;
        let rates: Vec<u32> = (1..=12)
            .map(|i| {
                f.ramp(t + 1000 * i);
                f.current_rate().unwrap()
            })
            .collect();
        assert_eq!(&rates[..4], [945, 992, 995, 995], "back quickly, then held at 99.5 %");
        assert!(rates.iter().all(|&r| r <= 995), "{rates:?}");
        f.ramp(t + 301_000);
        assert_eq!(f.current_rate(), Some(1004), "probes after five quiet minutes");
    }
}
