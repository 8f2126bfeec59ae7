//! A one-way "this process can no longer keep its promises" flag.
//!
//! The store writer trips it on the first apply, flush or fdatasync error (after which sled's
//! memory may hold writes that never reached the disk), and so does the audit writer when it
//! cannot write. Everything that promises durability checks it: accepts answer 503, the
//! dispatcher takes nothing new, `/readyz` says why, and `serve` exits non-zero so that the
//! service manager restarts the process on the data that is on disk.

use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Inner {
    reason: OnceLock<String>,
    tripped: Notify,
}

/// Shared by everything of one gateway; clones see the same state.
#[derive(Debug, Clone, Default)]
pub struct Tripwire(Arc<Inner>);

impl Tripwire {
    /// Trips (the first reason wins; later calls change nothing).
    pub fn trip(&self, reason: impl Into<String>) {
        let reason = reason.into();
        if self.0.reason.set(reason.clone()).is_ok() {
            tracing::error!(reason = %reason, "fail-stop: the store can no longer promise durability");
            self.0.tripped.notify_waiters();
        }
    }

    /// Why it tripped, if it did.
    pub fn reason(&self) -> Option<&str> {
        self.0.reason.get().map(String::as_str)
    }

    /// Whether it tripped.
    pub fn is_tripped(&self) -> bool {
        self.0.reason.get().is_some()
    }

    /// Waits until it trips; returns the reason.
    pub async fn tripped(&self) -> String {
        loop {
            let notified = self.0.tripped.notified();
            if let Some(r) = self.reason() {
                return r.to_string();
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_wins_and_waiters_wake() {
        let t = Tripwire::default();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.tripped().await }
        });
        tokio::task::yield_now().await;
        assert!(!t.is_tripped());
        t.trip("disk full");
        t.trip("later");
        assert_eq!(waiter.await.unwrap(), "disk full");
        assert_eq!(t.reason(), Some("disk full"));
    }
}
