//! Receipts that never come: a message that stays `submitted` longer than its carrier's
//! `receipt_timeout_secs` becomes `unknown` (final, with its webhook), so that neither the
//! sender nor the dashboards wait forever. A late receipt still moves it on (see the writer).
//!
//! Submitted messages are indexed by submit time under `t/`, so each pass reads only the
//! entries old enough for the shortest timeout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::live::Live;
use crate::message::{Message, Status, now_ms};
use crate::store::{Op, OpResult, Store, StoreError, index, layout};

/// Most `t/` entries one pass reads (each lists the messages of one commit).
const PASS_LIMIT: usize = 200;

/// Runs a pass every second until `shutdown`.
pub async fn run(store: Store, live: Arc<Live>, mut shutdown: watch::Receiver<bool>) {
    loop {
        match pass(&store, &live, now_ms()).await {
            Ok(0) => {}
            Ok(n) => info!(moved = n, "messages without a receipt in time are now 'unknown'"),
            Err(e) => warn!(error = %e, "receipt timeout pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass: moves the messages whose receipt is overdue at `now`; returns how many. The
/// `t/` entries old enough for the shortest timeout are read; an entry goes once none of its
/// messages still waits, and is rewritten with those that do (a carrier with a longer
/// timeout).
pub async fn pass(store: &Store, live: &Live, now: u64) -> Result<usize, StoreError> {
    let config = live.config();
    let timeout_ms = |carrier: &str| {
        let c = config.carriers.iter().find(|c| c.name == carrier);
        c.map(|c| c.receipt_timeout_secs).unwrap_or(72 * 3600) * 1000
    };
    let shortest = config.carriers.iter().map(|c| c.receipt_timeout_secs * 1000).min().unwrap_or(72 * 3_600_000);
    let end = index::awaiting(now.saturating_sub(shortest).saturating_add(1), "");
    let mut ops = Vec::new();
    let mut timed_out = Vec::new();
    for (key, value) in store.entries_in(index::AWAITING_RECEIPT, &end, PASS_LIMIT)? {
        let ids = String::from_utf8_lossy(&value).into_owned();
        let mut waiting = Vec::new();
        for id in ids.split(' ').filter(|id| !id.is_empty()) {
            let Some(msg) = store.get::<Message>(&layout::message(id))? else { continue };
            let carrier = msg.carrier.clone().unwrap_or_default();
            match (msg.status, msg.submitted_ms) {
                (Status::Submitted, Some(at)) if now >= at + timeout_ms(&carrier) => {
                    ops.push(Op::ReceiptTimeout { id: id.to_string() });
                    timed_out.push((ops.len() - 1, carrier));
                }
                (Status::Submitted, Some(_)) => waiting.push(id),
                // Delivered, failed, … already: nothing to wait for.
                _ => {}
            }
        }
        if waiting.is_empty() {
            ops.push(Op::Delete { key });
        } else if waiting.len() < ids.split(' ').count() {
            ops.push(Op::Put { key, value: waiting.join(" ").into_bytes() });
        }
    }
    if ops.is_empty() {
        return Ok(0);
    }
    let results = store.commit(ops).await?;
    let mut moved = 0;
    for (at, carrier) in timed_out {
        if let Some(OpResult::Updated { became_final: true, .. }) = results.get(at) {
            crate::metrics::finished(&carrier, Status::Unknown.as_str());
            moved += 1;
        }
    }
    Ok(moved)
}
