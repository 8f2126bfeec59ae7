//! Fault injection for the failure-path tests: fail the Nth fdatasync, hold the store writer
//! between apply and flush, slow every commit down, panic a dispatcher once.
//!
//! Everything that can arm a fault exists only with the `fault-injection` cargo feature, which
//! only the test build turns on (the crate's dev-dependency on itself); a release build
//! compiles [`Faults`] to an empty type whose hooks do nothing. Faults are per gateway (passed
//! in with the store options), so tests running side by side in one process do not see each
//! other's faults. The binary under test reads `SMSGATE_FAULTS` (e.g. `fail_sync_at=40`) when
//! built with the feature.

#[cfg(feature = "fault-injection")]
pub use armed::Faults;
#[cfg(not(feature = "fault-injection"))]
pub use inert::Faults;

#[cfg(not(feature = "fault-injection"))]
mod inert {
    /// No faults: this build cannot inject any.
    #[derive(Debug, Clone, Default)]
    pub struct Faults;

    impl Faults {
        /// Nothing to read in a build without fault injection.
        pub fn from_env() -> Faults {
            Faults
        }
        /// Never fails.
        pub fn before_sync(&self) -> std::io::Result<()> {
            Ok(())
        }
        /// Never waits.
        pub fn after_apply(&self) {}
        /// Never panics.
        pub fn in_dispatch(&self) {}
    }
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    #[derive(Debug, Default)]
    struct Inner {
        syncs: AtomicU64,
        /// Fail the fdatasync with this 1-based number and every later one (0 = never).
        fail_sync_at: AtomicU64,
        /// Sleep this long after each apply (ms), before the flush.
        commit_delay_ms: AtomicU64,
        /// While set, the writer waits after apply, before flush.
        hold: Mutex<bool>,
        held: Condvar,
        /// Commits that reached the hold point while it was closed.
        holding: AtomicU64,
        /// Panic in the next dispatch.
        panic_dispatch: AtomicBool,
    }

    /// Armed faults for one gateway; clones share them.
    #[derive(Debug, Clone, Default)]
    pub struct Faults(Arc<Inner>);

    impl Faults {
        /// From `SMSGATE_FAULTS`: comma-separated `fail_sync_at=N`, `commit_delay_ms=N`.
        pub fn from_env() -> Faults {
            let f = Faults::default();
            for item in std::env::var("SMSGATE_FAULTS").unwrap_or_default().split(',') {
                match item.split_once('=') {
                    Some(("fail_sync_at", n)) => f.fail_sync_at(n.trim().parse().unwrap_or(0)),
                    Some(("commit_delay_ms", n)) => {
                        f.commit_delay(Duration::from_millis(n.trim().parse().unwrap_or(0)))
                    }
                    _ => {}
                }
            }
            f
        }

        /// Makes the `n`th fdatasync from now on (1 = the next one), and all after it, fail.
        pub fn fail_sync_at(&self, n: u64) {
            let done = self.0.syncs.load(Ordering::Acquire);
            self.0.fail_sync_at.store(if n == 0 { 0 } else { done + n }, Ordering::Release);
        }

        /// Slows every commit down by `d` between apply and flush.
        pub fn commit_delay(&self, d: Duration) {
            self.0.commit_delay_ms.store(d.as_millis() as u64, Ordering::Release);
        }

        /// Closes (true) or opens (false) the gate between apply and flush.
        pub fn hold_commits(&self, hold: bool) {
            if let Ok(mut h) = self.0.hold.lock() {
                *h = hold;
            }
            self.0.held.notify_all();
        }

        /// How many commits have waited at the closed gate.
        pub fn held_commits(&self) -> u64 {
            self.0.holding.load(Ordering::Acquire)
        }

        /// The next dispatch panics (once).
        pub fn panic_next_dispatch(&self) {
            self.0.panic_dispatch.store(true, Ordering::Release);
        }

        /// Called by the writer before each fdatasync.
        pub fn before_sync(&self) -> std::io::Result<()> {
            let n = self.0.syncs.fetch_add(1, Ordering::AcqRel) + 1;
            let at = self.0.fail_sync_at.load(Ordering::Acquire);
            if at != 0 && n >= at {
                return Err(std::io::Error::other("injected fdatasync failure"));
            }
            Ok(())
        }

        /// Called by the writer between apply and flush.
        pub fn after_apply(&self) {
            let delay = self.0.commit_delay_ms.load(Ordering::Acquire);
            if delay > 0 {
                std::thread::sleep(Duration::from_millis(delay));
            }
            let Ok(mut hold) = self.0.hold.lock() else { return };
            if *hold {
                self.0.holding.fetch_add(1, Ordering::AcqRel);
            }
            while *hold {
                hold = match self.0.held.wait(hold) {
                    Ok(h) => h,
                    Err(_) => return,
                };
            }
        }

        /// Called by the dispatcher for each message it takes.
        #[allow(clippy::panic)]
        pub fn in_dispatch(&self) {
            if self.0.panic_dispatch.swap(false, Ordering::AcqRel) {
                panic!("injected dispatcher panic");
            }
        }
    }
}
