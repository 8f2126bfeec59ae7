//! The collector of one message's submission: it takes each part's answer as it comes,
//! records it durably and only then frees the window slot the part used, so a message with
//! more parts than the window (an 11-part reminder through a window of 10) never waits for a
//! slot that it holds itself. When every handed part is answered it decides the message's
//! next step (see the outcomes in the module above) in the same commit as the last answers.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc;
use tracing::warn;

use super::{ClaimGuard, Dispatcher, Handed, error};
use crate::config::DispatchConfig;
use crate::message::{Message, Status, now_ms};
use crate::metrics as m;
use crate::queue::{CarrierQueue, Entry};
use crate::smpp::client::session::{SubmitOutcome, SubmitResult};
use crate::smpp::codec::pdu::status;
use crate::smpp::codec::receipt::normalize_id;
use crate::store::{Op, OpResult, StoreError};

use super::CarrierDispatch;

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

/// The carrier asks us to slow down (SMPP 3.4 §5.1.3: 0x58, 0x14).
pub fn is_throttle(code: u32) -> bool {
    matches!(code, status::THROTTLED | status::MSG_QUEUE_FULL)
}

/// Backoff before attempt `attempt` (1-based): base × 2^(attempt-1), capped, ±20 % jitter.
pub fn backoff(policy: &DispatchConfig, attempt: u32) -> Duration {
    let exp = policy.retry_base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(policy.retry_max_ms);
    let spread = capped / 5;
    let jitter = if spread == 0 { 0 } else { crate::fsutil::random_u64() % (2 * spread) };
    Duration::from_millis(capped - spread + jitter)
}

/// A part that was not accepted.
enum Problem {
    Invalid(String),
    Rejected(u32),
    /// Written, no answer: `timed_out` tells silence from a lost connection.
    Unknown(String, bool),
    /// Never written: no bind took it.
    NotSent,
}

impl Problem {
    /// Seriousness: invalid > permanent > no answer > temporary > throttled > not sent.
    fn rank(&self) -> u8 {
        match self {
            Problem::Invalid(_) => 5,
            Problem::Rejected(c) if is_permanent(*c) => 4,
            Problem::Unknown(..) => 3,
            Problem::Rejected(c) if is_throttle(*c) => 1,
            Problem::Rejected(_) => 2,
            Problem::NotSent => 0,
        }
    }

    fn text(&self) -> String {
        match self {
            Problem::Invalid(r) | Problem::Unknown(r, _) => r.clone(),
            Problem::Rejected(c) => format!("carrier status 0x{c:08x}"),
            Problem::NotSent => "not handed to the carrier".into(),
        }
    }

    fn code(&self) -> Option<u32> {
        match self {
            Problem::Rejected(c) => Some(*c),
            _ => None,
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

/// How soon a message none of whose remaining parts was handed over is tried again.
const NOT_SENT_DELAY_MS: u64 = 200;

/// Records one message's part answers.
pub(super) struct Collector {
    pub dispatcher: Arc<Dispatcher>,
    pub carrier: CarrierDispatch,
    pub queue: Arc<CarrierQueue>,
    /// How many submit_sm the carrier needs for the whole message.
    pub total: usize,
    pub claim: ClaimGuard,
}

/// The answer for one handed part: the outcome (`None`: never written) and the window slot
/// to free once it is recorded.
type Answer = (usize, Option<SubmitOutcome>, Option<OwnedSemaphorePermit>);

/// Waits for a part's answer; takes it back if no bind took it within the handover timeout.
async fn answer(part: Handed, handover: Duration) -> Answer {
    let Handed { index, mut reply, ticket } = part;
    loop {
        match tokio::time::timeout(handover, &mut reply).await {
            Ok(Ok(SubmitResult { outcome, permit })) => return (index, Some(outcome), permit),
            // Dropped unanswered: the PDU was never written.
            Ok(Err(_)) => return (index, None, None),
            // Still in the channel: take it back. Taken by a bind: its answer (or the end of
            // its connection, bounded by the response timeout) will come.
            Err(_) if ticket.withdraw() => return (index, None, None),
            Err(_) => {}
        }
    }
}

impl Collector {
    /// Starts collecting; `wanted` parts are to come through `handed` (fewer if the hand-over
    /// stopped). A panic inside is caught: the message goes back to the queue.
    pub fn spawn(
        self,
        msg: Message,
        handed: mpsc::UnboundedReceiver<Handed>,
        wanted: usize,
    ) -> tokio::task::JoinHandle<()> {
        let entry = Entry::new(msg.due_ms, msg.seq, &msg.id, msg.expires_ms).map(|e| e.of(&msg.account));
        let queue = self.queue.clone();
        tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(self.run(msg, handed, wanted)).catch_unwind();
            match run.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "recording a submit result failed"),
                Err(_) => {
                    tracing::error!("the submit collector panicked; the message goes back to the queue");
                    m::task_restart("collector");
                    if let Some(entry) = entry {
                        queue.push(Entry { due_ms: now_ms() + 1000, ..entry });
                    }
                }
            }
        })
    }

    async fn run(
        self,
        msg: Message,
        mut handed: mpsc::UnboundedReceiver<Handed>,
        wanted: usize,
    ) -> Result<(), StoreError> {
        let name = self.carrier.link.name().to_string();
        let handover = self.carrier.handover_timeout;
        let mut waiting = FuturesUnordered::new();
        let mut all_handed = false;
        let mut received = 0usize;
        let mut ops = Vec::new();
        let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
        let mut problem: Option<Problem> = None;
        let mut accepted = 0u64;
        loop {
            if all_handed && waiting.is_empty() {
                break;
            }
            tokio::select! {
                part = handed.recv(), if !all_handed => match part {
                    Some(part) => waiting.push(answer(part, handover)),
                    None => all_handed = true,
                },
                Some((index, outcome, permit)) = waiting.next(), if !waiting.is_empty() => {
                    received += 1;
                    permits.extend(permit);
                    match outcome {
                        None => problem = worst(problem, Problem::NotSent),
                        Some(SubmitOutcome::Accepted(carrier_id)) => {
                            accepted += 1;
                            ops.push(Op::PartSubmitted {
                                id: msg.id.clone(),
                                part: index,
                                total: self.total,
                                carrier: name.clone(),
                                carrier_message_id: normalize_id(&carrier_id, self.carrier.id_format),
                            });
                        }
                        Some(SubmitOutcome::Invalid(reason)) => problem = worst(problem, Problem::Invalid(reason)),
                        Some(SubmitOutcome::Rejected(code)) => problem = worst(problem, Problem::Rejected(code)),
                        Some(SubmitOutcome::Unknown { reason, timed_out }) => {
                            problem = worst(problem, Problem::Unknown(reason, timed_out))
                        }
                    }
                    // Another part may be waiting for the slot this one holds: record what
                    // came and free the slots now rather than at the end.
                    loop {
                        match handed.try_recv() {
                            Ok(part) => waiting.push(answer(part, handover)),
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                all_handed = true;
                                break;
                            }
                            Err(mpsc::error::TryRecvError::Empty) => break,
                        }
                    }
                    let more = !all_handed || !waiting.is_empty();
                    if more && !permits.is_empty() {
                        self.commit(std::mem::take(&mut ops), &mut permits).await?;
                    }
                }
            }
        }
        if received < wanted {
            problem = worst(problem, Problem::NotSent);
        }
        if accepted > 0 {
            self.carrier.flow.on_accepted(accepted);
        }
        self.note_health(&problem, &name);
        let mut requeue_at = None;
        if let Some(p) = &problem {
            let (op, due) = self.next_step(&msg, p);
            ops.push(op);
            requeue_at = due;
        }
        let results = self.commit(ops, &mut permits).await?;
        for r in results {
            match r {
                OpResult::Updated { status: Status::Submitted, created_ms, .. } if problem.is_none() => {
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
        if let Some(entry) = requeue_at
            .and_then(|due_ms| Entry::new(due_ms, msg.seq, &msg.id, msg.expires_ms))
            .map(|e| e.of(&msg.account))
        {
            self.queue.push(entry);
        }
        drop(self.claim);
        Ok(())
    }

    /// Commits `ops`, then frees the slots. If the store failed, the slots are never freed:
    /// nothing more may leave for the carrier without a durable record of its answer.
    async fn commit(&self, ops: Vec<Op>, permits: &mut Vec<OwnedSemaphorePermit>) -> Result<Vec<OpResult>, StoreError> {
        let result = self.dispatcher.store.commit(ops).await;
        match &result {
            Ok(_) => permits.clear(),
            Err(_) => permits.drain(..).for_each(std::mem::forget),
        }
        result
    }

    fn note_health(&self, problem: &Option<Problem>, name: &str) {
        let breaker = &self.carrier.breaker;
        match problem {
            None => breaker.success(),
            // A lost bind is a bind problem (bind state covers it); nothing sent says nothing
            // about the carrier; silence past the timeout and temporary errors are the carrier's.
            Some(Problem::Unknown(_, false) | Problem::NotSent) => {}
            Some(Problem::Unknown(_, true)) => breaker.failure(name),
            Some(Problem::Rejected(c)) if !is_permanent(*c) && !is_throttle(*c) => breaker.failure(name),
            Some(_) => breaker.success(), // the carrier answered; the message is the problem
        }
    }

    /// The op that decides a message with a problem, and when to queue it again.
    fn next_step(&self, msg: &Message, p: &Problem) -> (Op, Option<u64>) {
        let policy = &self.dispatcher.policy;
        let attempts = msg.attempts + 1;
        let now = now_ms();
        let (op, due) = match p {
            Problem::Invalid(reason) => (finish(msg, Status::Failed, "invalid_pdu", reason, None), None),
            Problem::Rejected(code) if is_permanent(*code) => {
                let text = format!("carrier refused the message (0x{code:08x})");
                (finish(msg, Status::Failed, "carrier_rejected", &text, Some(*code)), None)
            }
            Problem::NotSent => {
                let due = now + NOT_SENT_DELAY_MS;
                (reschedule(msg, due, false, "not_sent", "no bind of the carrier took it in time", None), Some(due))
            }
            Problem::Rejected(code) if is_throttle(*code) => {
                self.carrier.flow.on_throttle();
                let due = now + self.carrier.throttle_pause.as_millis() as u64;
                (reschedule(msg, due, false, "carrier_throttled", "carrier asked to slow down", Some(*code)), Some(due))
            }
            _ if attempts >= policy.max_attempts => {
                let text = format!("gave up after {attempts} attempts");
                (finish(msg, Status::Failed, "max_attempts", &text, p.code()), None)
            }
            Problem::Unknown(reason, _) => (reschedule(msg, now, true, "no_response", reason, None), Some(now)),
            Problem::Rejected(code) => {
                let due = now + super::backoff(policy, attempts).as_millis() as u64;
                let text = format!("carrier error 0x{code:08x}");
                (reschedule(msg, due, true, "carrier_temporary_error", &text, Some(*code)), Some(due))
            }
        };
        // A retry that would come after the validity deadline is an expiry now (an attempt
        // only if something was sent and not throttled).
        match due {
            Some(d) if d >= msg.expires_ms => {
                let text = format!("validity ends before the next attempt ({})", p.text());
                let mut op = finish(msg, Status::Expired, "validity_expired", &text, p.code());
                if let Op::Finish { count_attempt, .. } = &mut op {
                    *count_attempt =
                        !matches!(p, Problem::NotSent) && !matches!(p, Problem::Rejected(c) if is_throttle(*c));
                }
                (op, None)
            }
            other => (op, other),
        }
    }
}

/// A final status after a submission attempt.
fn finish(msg: &Message, status: Status, code: &str, message: &str, carrier_status: Option<u32>) -> Op {
    Op::Finish { id: msg.id.clone(), status, error: error(code, message, carrier_status), count_attempt: true }
}

fn reschedule(
    msg: &Message,
    due_ms: u64,
    count_attempt: bool,
    code: &str,
    message: &str,
    carrier_status: Option<u32>,
) -> Op {
    Op::Reschedule { id: msg.id.clone(), due_ms, count_attempt, error: error(code, message, carrier_status) }
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

    #[test]
    fn the_worst_problem_of_a_message_decides() {
        let p = worst(None, Problem::NotSent);
        let p = worst(p, Problem::Rejected(status::THROTTLED));
        assert!(matches!(p, Some(Problem::Rejected(c)) if c == status::THROTTLED));
        let p = worst(p, Problem::Unknown("gone".into(), false));
        let p = worst(p, Problem::NotSent);
        assert!(matches!(p, Some(Problem::Unknown(..))), "not sent never hides an unanswered part");
    }
}
