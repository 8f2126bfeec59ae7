//! Long-lived tasks that must not die silently. A supervised task that panics is logged,
//! counted (`smsgate_task_restarts_total{task}`) and started again after a second; one that
//! returns is done (it saw shutdown). Aborting the supervisor aborts the task.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics as m;

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()`'s future, again after each panic, until one returns or `shutdown` is set.
pub fn supervise<F, Fut>(task: &'static str, shutdown: watch::Receiver<bool>, mut make: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut shutdown = shutdown;
        loop {
            let mut running = AbortOnDrop(tokio::spawn(make()));
            match (&mut running.0).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(task, "task panicked; restarting it in 1 s");
                    m::task_restart(task);
                }
                Err(_) => return,
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_a_returning_one_ends() {
        let runs = Arc::new(AtomicU32::new(0));
        let (_tx, rx) = watch::channel(false);
        let r = runs.clone();
        let handle = supervise("test", rx, move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::AcqRel) == 0 {
                    panic!("first run fails");
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), handle).await.unwrap().unwrap();
        assert_eq!(runs.load(Ordering::Acquire), 2);
    }
}
