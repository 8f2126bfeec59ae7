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

/// Most messages one pass moves.
const PASS_LIMIT: usize = 1000;

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

/// One pass: moves the messages whose receipt is overdue at `now`; returns how many.
pub async fn pass(store: &Store, live: &Live, now: u64) -> Result<usize, StoreError> {
    let config = live.config();
    let timeout_ms = |carrier: &str| {
        let c = config.carriers.iter().find(|c| c.name == carrier);
        c.map(|c| c.receipt_timeout_secs).unwrap_or(72 * 3600) * 1000
    };
    let shortest = config.carriers.iter().map(|c| c.receipt_timeout_secs * 1000).min().unwrap_or(72 * 3_600_000);
    let end = index::awaiting(now.saturating_sub(shortest).saturating_add(1), "");
    let keys = store.keys_in(index::AWAITING_RECEIPT, &end, PASS_LIMIT * 4, false)?;
    let mut ops = Vec::new();
    let mut carriers = Vec::new();
    for key in keys {
        let Some(id) = index::id_of(&key) else { continue };
        let Some(msg) = store.get::<Message>(&layout::message(id))? else {
            ops.push(Op::Delete { key });
            continue;
        };
        let carrier = msg.carrier.clone().unwrap_or_default();
        match (msg.status, msg.submitted_ms) {
            (Status::Submitted, Some(at)) if now >= at + timeout_ms(&carrier) => {
                ops.push(Op::ReceiptTimeout { id: id.to_string() });
                carriers.push(carrier);
            }
            (Status::Submitted, Some(_)) => {}
            // Moved on without the writer seeing it leave `submitted`: the entry is stale.
            _ => ops.push(Op::Delete { key }),
        }
        if ops.len() >= PASS_LIMIT {
            break;
        }
    }
    if ops.is_empty() {
        return Ok(0);
    }
    let results = store.commit(ops).await?;
    let mut moved = 0;
    for (result, carrier) in results.iter().filter(|r| !matches!(r, OpResult::Done)).zip(carriers) {
        if let OpResult::Updated { became_final: true, .. } = result {
            crate::metrics::finished(&carrier, Status::Unknown.as_str());
            moved += 1;
        }
    }
    Ok(moved)
}
