//! The dispatcher: one task per carrier queue takes due messages, picks the first healthy
//! carrier of the message's route (failover), hands the segments to that carrier's binds,
//! and records each answer durably before the window slot it used is released.
//!
//! Outcomes (SMPP 3.4 §5.1.3 statuses):
//! * every segment accepted → `submitted` (the `q/` entry goes in the same commit);
//! * throttled (`ESME_RTHROTTLED`, `ESME_RMSGQFUL`) → the carrier slows down, the message waits
//!   `throttle_pause_ms`, no attempt counted;
//! * bind lost or no answer → back to the queue at once, counted as an attempt (the carrier may
//!   have it: this is the only path to a duplicate);
//! * other temporary errors → exponential backoff with jitter, up to `max_attempts`;
//! * permanent errors (bad address, bad PDU) → `failed` with the carrier's status;
//! * past `expires_ms` → `expired` (also while the carrier is down: a reaper checks the queues).
//!
//! A carrier is healthy when at least one of its binds can send and its circuit breaker is
//! closed. Breakers open after `breaker_failures` consecutive unanswered or failed
//! submissions and stay open `breaker_cooldown_secs`; then one submission decides.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::audit::{Audit, Event};
use crate::compliance::DispatchVerdict;
use crate::config::DispatchConfig;
use crate::flow::FlowControl;
use crate::live::Live;
use crate::message::{ErrorInfo, Message, Status, now_ms};
use crate::metrics as m;
use crate::queue::{CarrierQueue, Entry, Queues};
use crate::smpp::pdu::status;
use crate::smpp::receipt::{IdFormat, normalize_id};
use crate::smpp::session::{CarrierLink, SubmitJob, SubmitOutcome, SubmitResult};
use crate::smpp::submit::{SubmitOptions, build_parts};
use crate::store::{Op, OpResult, Store, StoreError};

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
    /// Its circuit breaker.
    pub breaker: Arc<Breaker>,
}

impl CarrierDispatch {
    /// Can take traffic now.
    pub fn healthy(&self) -> bool {
        self.link.transmitting_binds() > 0 && !self.breaker.is_open()
    }
}

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
        now_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    fn success(&self) {
        self.consecutive.store(0, Ordering::Release);
    }

    /// The cooldown just ended: the first failure after it counts at once.
    fn half_open_expired(&self, now: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Acquire);
        until != 0 && now >= until && self.last_failure_ms.load(Ordering::Acquire) < until
    }

    fn failure(&self, carrier: &str) {
        let now = now_ms();
        let last = self.last_failure_ms.load(Ordering::Acquire);
        if now < last + FAILURE_DEBOUNCE_MS && !self.half_open_expired(now) {
            return;
        }
        self.last_failure_ms.store(now, Ordering::Release);
        let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        if self.threshold > 0 && n >= self.threshold && !self.is_open() {
            self.open_until_ms.store(now_ms() + self.cooldown.as_millis() as u64, Ordering::Release);
            // Half-open after the cooldown: the next failure alone reopens it.
            self.consecutive.store(self.threshold.saturating_sub(1), Ordering::Release);
            warn!(carrier, failures = n, cooldown_s = self.cooldown.as_secs(), "circuit breaker open");
        }
    }
}

/// Messages a task is working on: the dispatcher while submitting, the API while cancelling.
/// Whoever claims first wins, so a cancel and a dispatch of one message never interleave.
#[derive(Default)]
pub struct Claims(Mutex<HashSet<String>>);

impl Claims {
    /// Takes the message; false if someone else has it.
    pub fn try_claim(&self, id: &str) -> bool {
        self.0.lock().map(|mut s| s.insert(id.to_string())).unwrap_or(false)
    }

    /// Gives it back.
    pub fn release(&self, id: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(id);
        }
    }
}

/// Shared by all carrier tasks.
pub struct Dispatcher {
    store: Store,
    queues: Arc<Queues>,
    carriers: HashMap<String, CarrierDispatch>,
    policy: DispatchConfig,
    claims: Arc<Claims>,
    live: Arc<Live>,
    audit: Audit,
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
    Unknown(String, bool),
}

impl Problem {
    /// Seriousness: invalid > permanent > no answer > temporary > throttled.
    fn rank(&self) -> u8 {
        match self {
            Problem::Invalid(_) => 4,
            Problem::Rejected(c) if is_permanent(*c) => 3,
            Problem::Unknown(..) => 2,
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

fn error(code: &str, message: impl Into<String>, carrier_status: Option<u32>) -> Option<ErrorInfo> {
    Some(ErrorInfo { code: code.into(), message: message.into(), carrier_status })
}

/// How often a dispatcher with no healthy carrier looks again.
const HEALTH_POLL: Duration = Duration::from_millis(250);

impl Dispatcher {
    /// Builds the dispatcher.
    pub fn new(
        store: Store,
        queues: Arc<Queues>,
        carriers: HashMap<String, CarrierDispatch>,
        policy: DispatchConfig,
        claims: Arc<Claims>,
        live: Arc<Live>,
        audit: Audit,
    ) -> Arc<Self> {
        Arc::new(Dispatcher { store, queues, carriers, policy, claims, live, audit })
    }

    /// Starts one task per carrier queue, plus the reaper/metrics task; they stop when
    /// `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for (name, queue) in self.queues.iter() {
            let this = self.clone();
            let (name, queue) = (name.clone(), queue.clone());
            let span = tracing::info_span!("dispatch", carrier = %name);
            handles.push(tokio::spawn(this.run(name, queue, shutdown.clone()).instrument(span)));
        }
        let this = self.clone();
        let mut stop = shutdown.clone();
        handles.push(tokio::spawn(async move {
            loop {
                this.reap_expired().await;
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

    /// Whether any carrier other than `except` could take traffic.
    fn other_healthy(&self, except: &str) -> bool {
        self.carriers.iter().any(|(n, c)| n != except && c.healthy())
    }

    async fn run(self: Arc<Self>, name: String, queue: Arc<CarrierQueue>, mut shutdown: watch::Receiver<bool>) {
        let Some(own) = self.carriers.get(&name).cloned() else { return };
        loop {
            if *shutdown.borrow() {
                return;
            }
            // With nothing that could send, wait instead of cycling through the queue.
            if !own.healthy() && !self.other_healthy(&name) {
                tokio::select! {
                    _ = own.link.wait_transmitting() => {}
                    _ = tokio::time::sleep(HEALTH_POLL) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            let entry = tokio::select! {
                e = queue.pop_due() => e,
                _ = tokio::time::sleep(HEALTH_POLL) => continue,
                _ = shutdown.changed() => return,
            };
            let id = entry.id.to_string();
            if !self.claims.try_claim(&id) {
                continue; // a cancel has it; it finishes the message
            }
            match self.dispatch_one(&own, &queue, &id, entry.clone()).await {
                Ok(true) => {} // the completion task releases the claim
                Ok(false) => self.claims.release(&id),
                Err(e) => {
                    self.claims.release(&id);
                    warn!(error = %e, "dispatch failed; will retry");
                    queue.push(Entry { due_ms: entry.due_ms.max(now_ms() + 1000), ..entry });
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Returns whether a completion task now owns the claim.
    async fn dispatch_one(
        self: &Arc<Self>,
        own: &CarrierDispatch,
        queue: &Arc<CarrierQueue>,
        id: &str,
        entry: Entry,
    ) -> Result<bool, StoreError> {
        let Some(msg) = self.store.message(id)? else {
            debug!(id, "queue entry without a message; skipping");
            return Ok(false);
        };
        if msg.status.is_final() {
            return Ok(false);
        }
        let now = now_ms();
        if now >= msg.expires_ms {
            self.finish(&msg, Status::Expired, error("validity_expired", "validity ended before submission", None))
                .await?;
            return Ok(false);
        }
        // Opt-outs and consent may have changed since accept; a retry may fall in quiet hours.
        match self.live.compliance().check_dispatch(&self.store, &self.store.crypto(), &msg, now)? {
            DispatchVerdict::Proceed => {}
            DispatchVerdict::Block(code) => {
                let text = match code {
                    "recipient_opted_out" => "the recipient opted out after this message was accepted",
                    _ => "no recorded consent for this recipient",
                };
                self.finish(&msg, Status::Blocked, error(code, text, None)).await?;
                self.audit.record(Event::new("system", "message.blocked", msg.id.clone(), code));
                return Ok(false);
            }
            DispatchVerdict::Defer(due) => {
                let op = Op::Reschedule {
                    id: msg.id.clone(),
                    due_ms: due,
                    count_attempt: false,
                    error: error("quiet_hours", "held until the recipient's quiet hours end", None),
                };
                self.store.commit_one(op).await?;
                queue.push(Entry { due_ms: due, ..entry });
                return Ok(false);
            }
        }
        // Failover: the first healthy carrier of the route, in order.
        let target = if own.healthy() && msg.route.first().map(String::as_str) == Some(own.link.name().as_ref()) {
            Some(own.clone())
        } else {
            msg.route.iter().filter_map(|n| self.carriers.get(n)).find(|c| c.healthy()).cloned()
        };
        let Some(carrier) = target else {
            // Its route has nothing healthy right now; let other messages pass.
            queue.push(Entry { due_ms: now + 1000, ..entry });
            return Ok(false);
        };
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
        let queue = queue.clone();
        tokio::spawn(async move {
            let id = msg.id.clone();
            if let Err(e) = this.complete(msg, carrier, queue, waiting, total).await {
                warn!(error = %e, "recording a submit result failed");
            }
            this.claims.release(&id);
        });
        Ok(true)
    }

    async fn finish(&self, msg: &Message, status: Status, error: Option<ErrorInfo>) -> Result<(), StoreError> {
        let r = self.store.commit_one(Op::Finish { id: msg.id.clone(), status, error }).await?;
        if let OpResult::Updated { became_final: true, .. } = r {
            m::finished(msg.queue_carrier(), status.as_str());
        }
        Ok(())
    }

    /// Expires queued messages whose validity ended, whether or not their carrier is up.
    async fn reap_expired(&self) {
        let now = now_ms();
        for (name, q) in self.queues.iter() {
            let expired = q.take_expired(now);
            if expired.is_empty() {
                continue;
            }
            let mut ops = Vec::new();
            let mut claimed = Vec::new();
            for e in expired {
                let id = e.id.to_string();
                if self.claims.try_claim(&id) {
                    ops.push(Op::Finish {
                        id: id.clone(),
                        status: Status::Expired,
                        error: error("validity_expired", "validity ended before the message could be submitted", None),
                    });
                    claimed.push(id);
                } else {
                    q.push(e); // being dispatched right now; its own outcome decides
                }
            }
            let n = ops.len();
            match self.store.commit(ops).await {
                Ok(results) => {
                    let done =
                        results.iter().filter(|r| matches!(r, OpResult::Updated { became_final: true, .. })).count();
                    for _ in 0..done {
                        m::finished(name, Status::Expired.as_str());
                    }
                    if done > 0 {
                        info!(carrier = %name, expired = done, "messages expired in the queue");
                    }
                }
                Err(e) => warn!(carrier = %name, error = %e, count = n, "could not expire messages; will retry"),
            }
            for id in claimed {
                self.claims.release(&id);
            }
        }
    }

    /// Waits for every part's answer, records them in one commit, then frees the window slots.
    async fn complete(
        &self,
        msg: Message,
        carrier: CarrierDispatch,
        queue: Arc<CarrierQueue>,
        waiting: Vec<(usize, oneshot::Receiver<SubmitResult>)>,
        total: usize,
    ) -> Result<(), StoreError> {
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
                Err(_) => SubmitOutcome::Unknown { reason: "not sent".into(), timed_out: false },
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
                SubmitOutcome::Unknown { reason, timed_out } => {
                    problem = worst(problem, Problem::Unknown(reason, timed_out))
                }
            }
        }
        if expected == 0 {
            // Nothing could be handed over (the link is gone): try again soon.
            problem = Some(Problem::Unknown("carrier link closed".into(), false));
        }
        let all_sent = problem.is_none() && ops.len() == expected;
        if !ops.is_empty() {
            carrier.flow.on_accepted(ops.len() as u64);
        }
        match &problem {
            None => carrier.breaker.success(),
            // A lost bind is a bind problem (bind state covers it); silence past the timeout
            // and temporary errors are the carrier's.
            Some(Problem::Unknown(_, false)) => {}
            Some(Problem::Unknown(_, true)) => carrier.breaker.failure(&name),
            Some(Problem::Rejected(c)) if !is_permanent(*c) && !is_throttle(*c) => carrier.breaker.failure(&name),
            Some(_) => carrier.breaker.success(), // the carrier answered; the message is the problem
        }
        let mut requeue_at = None;
        if let Some(p) = &problem {
            let attempts = msg.attempts + 1;
            let now = now_ms();
            let (op, due) = match p {
                Problem::Invalid(reason) => (finish_op(&msg, Status::Failed, "invalid_pdu", reason, None), None),
                Problem::Rejected(code) if is_permanent(*code) => {
                    let text = format!("carrier refused the message (0x{code:08x})");
                    (finish_op(&msg, Status::Failed, "carrier_rejected", &text, Some(*code)), None)
                }
                _ if attempts >= self.policy.max_attempts && !matches!(p, Problem::Rejected(c) if is_throttle(*c)) => {
                    let text = format!("gave up after {attempts} attempts");
                    (finish_op(&msg, Status::Failed, "max_attempts", &text, code_of(p)), None)
                }
                Problem::Rejected(code) if is_throttle(*code) => {
                    carrier.flow.on_throttle();
                    let due = now + carrier.throttle_pause.as_millis() as u64;
                    (
                        reschedule_op(&msg, due, false, "carrier_throttled", "carrier asked to slow down", Some(*code)),
                        Some(due),
                    )
                }
                Problem::Unknown(reason, _) => (reschedule_op(&msg, now, true, "no_response", reason, None), Some(now)),
                Problem::Rejected(code) => {
                    let due = now + backoff(&self.policy, attempts).as_millis() as u64;
                    let text = format!("carrier error 0x{code:08x}");
                    (reschedule_op(&msg, due, true, "carrier_temporary_error", &text, Some(*code)), Some(due))
                }
            };
            // A retry that would come after the validity deadline is an expiry now.
            let (op, due) = match due {
                Some(d) if d >= msg.expires_ms => {
                    let text = format!("validity ends before the next attempt ({})", p_text(p));
                    (finish_op(&msg, Status::Expired, "validity_expired", &text, code_of(p)), None)
                }
                other => (op, other),
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
        if let Some(entry) = requeue_at.and_then(|due_ms| Entry::new(due_ms, msg.seq, &msg.id, msg.expires_ms)) {
            queue.push(entry);
        }
        Ok(())
    }
}

fn p_text(p: &Problem) -> String {
    match p {
        Problem::Invalid(r) | Problem::Unknown(r, _) => r.clone(),
        Problem::Rejected(c) => format!("carrier status 0x{c:08x}"),
    }
}

fn code_of(p: &Problem) -> Option<u32> {
    match p {
        Problem::Rejected(c) => Some(*c),
        _ => None,
    }
}

fn finish_op(msg: &Message, status: Status, code: &str, message: &str, carrier_status: Option<u32>) -> Op {
    Op::Finish { id: msg.id.clone(), status, error: error(code, message, carrier_status) }
}

fn reschedule_op(
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
    fn breaker_opens_after_consecutive_failures_and_reopens_on_one_after_cooldown() {
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
        std::thread::sleep(Duration::from_millis(60));
        assert!(!b.is_open(), "half-open after the cooldown");
        b.failure("c");
        assert!(b.is_open(), "one failure in half-open reopens");
    }

    #[test]
    fn claims_are_exclusive() {
        let c = Claims::default();
        assert!(c.try_claim("a"));
        assert!(!c.try_claim("a"));
        c.release("a");
        assert!(c.try_claim("a"));
    }
}
