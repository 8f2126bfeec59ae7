//! The dispatcher: one task per carrier takes due messages from that carrier's queue, hands
//! their segments to the carrier's binds, and records each answer durably before the window
//! slot it used is released.
//!
//! Outcomes (SMPP 3.4 §5.1.3 statuses):
//! * every segment accepted → `submitted` (the `q/` entry goes in the same commit);
//! * throttled (`ESME_RTHROTTLED`, `ESME_RMSGQFUL`) → back to the queue shortly, no attempt counted;
//! * bind lost or no answer → back to the queue at once, counted as an attempt (the carrier may
//!   have it: this is the only path to a duplicate);
//! * other temporary errors → exponential backoff with jitter, up to `max_attempts`;
//! * permanent errors (bad address, bad PDU) → `failed` with the carrier's status;
//! * past `expires_ms` → `expired` without submitting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use crate::config::DispatchConfig;
use crate::flow::FlowControl;
use crate::message::{ErrorInfo, Message, Status, now_ms};
use crate::metrics as m;
use crate::queue::{CarrierQueue, Queues};
use crate::smpp::pdu::status;
use crate::smpp::receipt::{IdFormat, normalize_id};
use crate::smpp::session::{CarrierLink, SubmitJob, SubmitOutcome, SubmitResult};
use crate::smpp::submit::{SubmitOptions, build_parts};
use crate::store::{Op, OpResult, Store};

/// What the dispatcher needs per carrier.
#[derive(Clone)]
pub struct CarrierDispatch {
    /// The carrier's binds.
    pub link: CarrierLink,
    /// How to build its PDUs.
    pub options: SubmitOptions,
    /// How it writes message ids in submit_sm_resp (to match receipts).
    pub id_format: IdFormat,
    /// Its rate limit and throttling state.
    pub flow: Arc<FlowControl>,
    /// How long to keep a throttled message back.
    pub throttle_pause: Duration,
}

/// Shared by all carrier tasks.
pub struct Dispatcher {
    store: Store,
    queues: Arc<Queues>,
    carriers: HashMap<String, CarrierDispatch>,
    policy: DispatchConfig,
}

/// Whether a `submit_sm_resp` error is worth retrying. Unknown vendor codes are treated as
/// temporary: a retry costs little, a wrongly failed reminder costs a missed appointment.
pub fn is_permanent(code: u32) -> bool {
    matches!(
        code,
        0x01 | 0x02
            | 0x03
            | 0x0A
            | 0x0B
            | 0x0C
            | 0x33
            | 0x40
            | 0x42
            | 0x43
            | 0x44
            | 0x48
            | 0x49
            | 0x50
            | 0x51
            | 0x53
            | 0x61
            | 0x62
            | 0x65
            | 0x66
            | 0xC0..=0xC4
    )
}

/// Backoff before attempt `attempt` (1-based): base × 2^(attempt-1), capped, ±20 % jitter.
pub fn backoff(policy: &DispatchConfig, attempt: u32) -> Duration {
    let exp = policy.retry_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(policy.retry_max_ms);
    let spread = capped / 5;
    let jitter = if spread == 0 { 0 } else { crate::fsutil::random_u64() % (2 * spread) };
    Duration::from_millis(capped - spread + jitter)
}

impl Dispatcher {
    /// Builds the dispatcher.
    pub fn new(
        store: Store,
        queues: Arc<Queues>,
        carriers: HashMap<String, CarrierDispatch>,
        policy: DispatchConfig,
    ) -> Arc<Self> {
        Arc::new(Dispatcher { store, queues, carriers, policy })
    }

    /// Starts one task per carrier; they stop when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for (name, queue) in self.queues.iter() {
            let Some(carrier) = self.carriers.get(name).cloned() else {
                continue;
            };
            let this = self.clone();
            let queue = queue.clone();
            let span = tracing::info_span!("dispatch", carrier = %name);
            handles.push(tokio::spawn(this.run(carrier, queue, shutdown.clone()).instrument(span)));
        }
        let this = self.clone();
        let mut stop = shutdown.clone();
        handles.push(tokio::spawn(async move {
            loop {
                for (name, q) in this.queues.iter() {
                    m::queue_depth(name, q.len());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
            }
        }));
        handles
    }

    async fn run(
        self: Arc<Self>,
        carrier: CarrierDispatch,
        queue: Arc<CarrierQueue>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let entry = tokio::select! {
                _ = carrier.link.wait_transmitting() => {
                    tokio::select! {
                        e = queue.pop_due() => e,
                        _ = shutdown.changed() => return,
                    }
                }
                _ = shutdown.changed() => return,
            };
            let (due, seq, id) = entry;
            match self.dispatch_one(&carrier, &queue, &id).await {
                Ok(()) => {}
                Err(e) => {
                    // Store trouble: put it back and slow down rather than spin.
                    warn!(error = %e, "dispatch failed; will retry");
                    queue.push(due.max(now_ms() + 1000), seq, id);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn dispatch_one(
        self: &Arc<Self>,
        carrier: &CarrierDispatch,
        queue: &Arc<CarrierQueue>,
        id: &str,
    ) -> Result<(), crate::store::StoreError> {
        let Some(msg) = self.store.message(id)? else {
            debug!(id, "queue entry without a message; skipping");
            return Ok(());
        };
        if msg.status.is_final() {
            return Ok(());
        }
        let now = now_ms();
        if now >= msg.expires_ms {
            let error = ErrorInfo {
                code: "validity_expired".into(),
                message: "validity period ended before submission".into(),
                carrier_status: None,
            };
            self.finish(&msg, Status::Expired, error).await?;
            return Ok(());
        }
        let parts = build_parts(&msg, &carrier.options, now);
        let total = parts.len();
        let mut waiting = Vec::new();
        for (index, sm) in parts.into_iter().enumerate() {
            if msg.parts.get(index).is_some_and(|p| p.carrier_message_id.is_some()) {
                continue;
            }
            carrier.flow.acquire().await;
            let (tx, rx) = oneshot::channel();
            if carrier.link.submit(SubmitJob { sm, reply: tx }).await.is_err() {
                break;
            }
            waiting.push((index, rx));
        }
        let this = self.clone();
        let carrier = carrier.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            if let Err(e) = this.complete(msg, carrier, queue, waiting, total).await {
                warn!(error = %e, "recording a submit result failed");
            }
        });
        Ok(())
    }

    async fn finish(&self, msg: &Message, status: Status, error: ErrorInfo) -> Result<(), crate::store::StoreError> {
        let r = self.store.commit_one(Op::Finish { id: msg.id.clone(), status, error: Some(error) }).await?;
        if let OpResult::Updated { became_final: true, .. } = r {
            m::finished(msg.queue_carrier(), status.as_str());
        }
        Ok(())
    }

    /// Waits for every part's answer, records them in one commit, then frees the window slots.
    async fn complete(
        &self,
        msg: Message,
        carrier: CarrierDispatch,
        queue: Arc<CarrierQueue>,
        waiting: Vec<(usize, oneshot::Receiver<SubmitResult>)>,
        total: usize,
    ) -> Result<(), crate::store::StoreError> {
        let name = carrier.link.name().to_string();
        let mut ops = Vec::new();
        let mut permits = Vec::new();
        let mut problem: Option<Problem> = None;
        let expected = waiting.len();
        for (index, rx) in waiting {
            let outcome = match rx.await {
                Ok(SubmitResult { outcome, permit }) => {
                    permits.extend(permit);
                    outcome
                }
                // Dropped unanswered: the PDU was never written.
                Err(_) => SubmitOutcome::Unknown("not sent".into()),
            };
            match outcome {
                SubmitOutcome::Accepted(carrier_id) => ops.push(Op::PartSubmitted {
                    id: msg.id.clone(),
                    part: index,
                    total,
                    carrier: name.clone(),
                    carrier_message_id: normalize_id(&carrier_id, carrier.id_format),
                }),
                SubmitOutcome::Invalid(reason) => problem = worst(problem, Problem::Invalid(reason)),
                SubmitOutcome::Rejected(code) => problem = worst(problem, Problem::Rejected(code)),
                SubmitOutcome::Unknown(reason) => problem = worst(problem, Problem::Unknown(reason)),
            }
        }
        let all_sent = expected > 0 && problem.is_none() && ops.len() == expected;
        let mut requeue_at = None;
        if expected == 0 {
            // Nothing could be handed over (the link is gone): try again soon.
            problem = Some(Problem::Unknown("carrier link closed".into()));
        }
        if let Some(p) = &problem {
            let attempts = msg.attempts + 1;
            let (op, due) = match p {
                Problem::Invalid(reason) => (finish_op(&msg, "invalid_pdu", reason, None), None),
                Problem::Rejected(code) if is_permanent(*code) => (
                    finish_op(
                        &msg,
                        "carrier_rejected",
                        &format!("carrier refused the message (0x{code:08x})"),
                        Some(*code),
                    ),
                    None,
                ),
                _ if attempts >= self.policy.max_attempts => {
                    (finish_op(&msg, "max_attempts", &format!("gave up after {attempts} attempts"), code_of(p)), None)
                }
                Problem::Rejected(code) if is_throttle(*code) => {
                    carrier.flow.on_throttle();
                    let due = now_ms() + carrier.throttle_pause.as_millis() as u64;
                    (
                        reschedule_op(&msg, due, false, "carrier_throttled", "carrier asked to slow down", Some(*code)),
                        Some(due),
                    )
                }
                Problem::Unknown(reason) => {
                    let due = now_ms();
                    (reschedule_op(&msg, due, true, "no_response", reason, None), Some(due))
                }
                Problem::Rejected(code) => {
                    let due = now_ms() + backoff(&self.policy, attempts).as_millis() as u64;
                    (
                        reschedule_op(
                            &msg,
                            due,
                            true,
                            "carrier_temporary_error",
                            &format!("carrier error 0x{code:08x}"),
                            Some(*code),
                        ),
                        Some(due),
                    )
                }
            };
            ops.push(op);
            requeue_at = due;
        }
        let results = self.store.commit(ops).await?;
        drop(permits);
        for r in results {
            match r {
                OpResult::Updated { status: Status::Submitted, created_ms, .. } if all_sent => {
                    m::submitted(&name, now_ms().saturating_sub(created_ms) as f64 / 1000.0);
                }
                OpResult::Updated { status, became_final: true, created_ms, .. } => {
                    m::finished(&name, status.as_str());
                    if status == Status::Delivered || status == Status::Undeliverable {
                        m::delivered(&name, now_ms().saturating_sub(created_ms) as f64 / 1000.0);
                    }
                }
                _ => {}
            }
        }
        if let Some(due) = requeue_at {
            queue.push(due, msg.seq, msg.id);
        }
        Ok(())
    }
}

/// A part that was not accepted.
enum Problem {
    Invalid(String),
    Rejected(u32),
    Unknown(String),
}

impl Problem {
    /// Seriousness: invalid > permanent > no answer > temporary > throttled.
    fn rank(&self) -> u8 {
        match self {
            Problem::Invalid(_) => 4,
            Problem::Rejected(c) if is_permanent(*c) => 3,
            Problem::Unknown(_) => 2,
            Problem::Rejected(c) if is_throttle(*c) => 0,
            Problem::Rejected(_) => 1,
        }
    }
}

/// Keeps the more serious of two problems of one message's parts.
fn worst(current: Option<Problem>, new: Problem) -> Option<Problem> {
    match current {
        Some(c) if c.rank() >= new.rank() => Some(c),
        _ => Some(new),
    }
}

/// The carrier asks us to slow down (SMPP 3.4 §5.1.3: 0x58, 0x14).
pub fn is_throttle(code: u32) -> bool {
    matches!(code, status::THROTTLED | status::MSG_QUEUE_FULL)
}

fn code_of(p: &Problem) -> Option<u32> {
    match p {
        Problem::Rejected(c) => Some(*c),
        _ => None,
    }
}

fn finish_op(msg: &Message, code: &str, message: &str, carrier_status: Option<u32>) -> Op {
    Op::Finish {
        id: msg.id.clone(),
        status: Status::Failed,
        error: Some(ErrorInfo { code: code.into(), message: message.into(), carrier_status }),
    }
}

fn reschedule_op(
    msg: &Message,
    due_ms: u64,
    count_attempt: bool,
    code: &str,
    message: &str,
    carrier_status: Option<u32>,
) -> Op {
    Op::Reschedule {
        id: msg.id.clone(),
        due_ms,
        count_attempt,
        error: Some(ErrorInfo { code: code.into(), message: message.into(), carrier_status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = DispatchConfig { retry_base_ms: 1000, retry_max_ms: 10_000, ..DispatchConfig::default() };
        for _ in 0..100 {
            let first = backoff(&p, 1).as_millis();
            assert!((800..=1200).contains(&first), "{first}");
            let third = backoff(&p, 3).as_millis();
            assert!((3200..=4800).contains(&third), "{third}");
            let capped = backoff(&p, 40).as_millis();
            assert!((8000..=12_000).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn permanent_and_temporary_codes() {
        assert!(is_permanent(status::INVALID_DEST));
        assert!(!is_permanent(status::THROTTLED));
        assert!(!is_permanent(status::SYSTEM_ERROR));
        assert!(!is_permanent(0x0000_0401), "unknown vendor codes retry");
    }
}
