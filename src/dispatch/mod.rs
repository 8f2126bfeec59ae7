//! The dispatcher: one task per carrier queue takes due messages, picks the first healthy
//! carrier of the message's route (failover), hands the segments to that carrier's binds,
//! and records each answer durably before the window slot it used is released.
//!
//! Outcomes (SMPP 3.4 §5.1.3 statuses) are decided in [`collect`]:
//! * every segment accepted → `submitted` (the `q/` entry goes in the same commit);
//! * throttled (`ESME_RTHROTTLED`, `ESME_RMSGQFUL`) → the carrier slows down, the message waits
//!   `throttle_pause_ms`, no attempt counted;
//! * bind lost or no answer → back to the queue at once, counted as an attempt (the carrier may
//!   have it: this is the only path to a duplicate);
//! * never handed to a bind (the carrier went down, or no window slot came free in time) →
//!   back to the queue, no attempt counted;
//! * other temporary errors → exponential backoff with jitter, up to `max_attempts`;
//! * permanent errors (bad address, bad PDU) → `failed` with the carrier's status;
//! * past `expires_ms` → `expired` (also while the carrier is down: a reaper checks the queues).
//!
//! Nothing here waits without a bound: handing a part to a carrier's binds gives up after the
//! carrier's response timeout, a part still waiting in the binds' channel is taken back, and
//! a part a bind took is answered or failed by that bind's own response timeout.
//!
//! A message some of whose parts the carrier already has stays on that carrier until it
//! completes or expires: its remaining parts are the same bytes with the same concatenation
//! reference, so the handset can still join them; sending it whole elsewhere would deliver
//! the start twice.
//!
//! A carrier is healthy when at least one of its binds can send and its circuit breaker is
//! closed. Breakers open after `breaker_failures` consecutive unanswered or failed
//! submissions and stay open `breaker_cooldown_secs`; then one submission decides.

mod breaker;
mod claims;
mod collect;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

pub use breaker::Breaker;
pub use claims::{ClaimGuard, Claims};
pub use collect::{backoff, is_permanent, is_throttle};

use crate::audit::{Audit, Event};
use crate::compliance::DispatchVerdict;
use crate::config::DispatchConfig;
use crate::flow::FlowControl;
use crate::live::Live;
use crate::message::{ErrorInfo, Message, Status, mono_ms, now_ms};
use crate::metrics as m;
use crate::queue::{CarrierQueue, Entry, Queues};
use crate::smpp::client::session::{CarrierLink, SubmitJob, Ticket};
use crate::smpp::client::submit::{SubmitOptions, build_parts};
use crate::smpp::codec::receipt::IdFormat;
use crate::store::{Op, OpResult, Store, StoreError};
use crate::supervise::supervise;

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
    /// Longest wait for a bind to take a part (the carrier's response timeout).
    pub handover_timeout: Duration,
}

impl CarrierDispatch {
    /// Can take traffic now.
    pub fn healthy(&self) -> bool {
        self.link.transmitting_binds() > 0 && !self.breaker.is_open()
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
    /// Per carrier queue: when its task last went round its loop (monotonic ms).
    progress: HashMap<String, AtomicU64>,
}

/// A part handed to a bind, for the collector.
struct Handed {
    index: usize,
    reply: oneshot::Receiver<crate::smpp::client::session::SubmitResult>,
    ticket: Ticket,
}

fn error(code: &str, message: impl Into<String>, carrier_status: Option<u32>) -> Option<ErrorInfo> {
    Some(ErrorInfo { code: code.into(), message: message.into(), carrier_status })
}

/// How often a dispatcher with no healthy carrier looks again.
const HEALTH_POLL: Duration = Duration::from_millis(250);

/// A dispatcher with due work and a healthy carrier that has not gone round its loop for
/// this long is stuck (every wait inside one round is bounded far below it).
const STALL_MS: u64 = 60_000;

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
        let progress = queues.iter().map(|(name, _)| (name.clone(), AtomicU64::new(mono_ms()))).collect();
        Arc::new(Dispatcher { store, queues, carriers, policy, claims, live, audit, progress })
    }

    /// Starts one supervised task per carrier queue, plus the reaper/metrics task; they stop
    /// when `shutdown` turns true. A carrier task that panics starts again with its queue
    /// read back from the store (the entry it held is not lost).
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut handles = Vec::new();
        for (name, queue) in self.queues.iter() {
            let (this, name, queue, stop) = (self.clone(), name.clone(), queue.clone(), shutdown.clone());
            let mut first = true;
            handles.push(supervise("dispatch", shutdown.clone(), move || {
                let (this, name, queue, stop) = (this.clone(), name.clone(), queue.clone(), stop.clone());
                if !std::mem::take(&mut first) {
                    this.reload_queue(&name, &queue);
                }
                let span = tracing::info_span!("dispatch", carrier = %name);
                this.run(name, queue, stop).instrument(span)
            }));
        }
        let this = self.clone();
        let stop = shutdown.clone();
        handles.push(supervise("reaper", shutdown, move || {
            let (this, mut stop) = (this.clone(), stop.clone());
            async move {
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
            }
        }));
        handles
    }

    /// Pushes every stored queue entry of `carrier` again (after its task panicked holding
    /// one); entries already queued are not doubled.
    fn reload_queue(&self, carrier: &str, queue: &CarrierQueue) {
        let result = self.store.for_each_queue_entry(|e| {
            if e.carrier == carrier
                && let Some(entry) = Entry::new(e.due_ms, e.seq, &e.id, e.expires_ms).map(|x| x.of(&e.account))
            {
                queue.push(entry);
            }
            Ok(())
        });
        if let Err(e) = result {
            warn!(carrier, error = %e, "could not read the queue back after a restart of its task");
        }
    }

    /// Carriers whose task has due work and a healthy carrier but has not moved for a minute
    /// (the systemd watchdog stops being fed then).
    pub fn stalled(&self) -> Vec<String> {
        let (now, wall) = (mono_ms(), now_ms());
        self.queues
            .iter()
            .filter(|(name, q)| {
                let due = q.next_due().is_some_and(|d| d <= wall);
                let healthy = self.carriers.get(*name).is_some_and(CarrierDispatch::healthy);
                let last = self.progress.get(*name).map(|p| p.load(Ordering::Acquire)).unwrap_or(now);
                due && healthy && now.saturating_sub(last) > STALL_MS
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether any carrier other than `except` could take traffic.
    fn other_healthy(&self, except: &str) -> bool {
        self.carriers.iter().any(|(n, c)| n != except && c.healthy())
    }

    fn moved(&self, name: &str) {
        if let Some(p) = self.progress.get(name) {
            p.store(mono_ms(), Ordering::Release);
        }
    }

    async fn run(self: Arc<Self>, name: String, queue: Arc<CarrierQueue>, mut shutdown: watch::Receiver<bool>) {
        let Some(own) = self.carriers.get(&name).cloned() else { return };
        loop {
            self.moved(&name);
            if *shutdown.borrow() {
                return;
            }
            // A failed store takes nothing new: the process is on its way out.
            if self.store.tripwire().is_tripped() {
                tokio::select! {
                    _ = tokio::time::sleep(HEALTH_POLL) => continue,
                    _ = shutdown.changed() => return,
                }
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
            let Some(claim) = self.claims.claim(&id) else {
                continue; // a cancel or an earlier dispatch has it; it decides the message
            };
            if let Err(e) = self.dispatch_one(&own, &queue, claim, entry.clone()).await {
                warn!(error = %e, "dispatch failed; will retry");
                queue.push(Entry { due_ms: entry.due_ms.max(now_ms() + 1000), ..entry });
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Checks a due message and hands its parts over; a spawned collector records the
    /// answers and owns the claim from then on.
    async fn dispatch_one(
        self: &Arc<Self>,
        own: &CarrierDispatch,
        queue: &Arc<CarrierQueue>,
        claim: ClaimGuard,
        entry: Entry,
    ) -> Result<(), StoreError> {
        self.store.faults().in_dispatch();
        let id = claim.id().to_string();
        let Some(msg) = self.store.message(&id)? else {
            debug!(id, "queue entry without a readable message; set aside");
            self.store.quarantine_queue_entry(entry.due_ms, entry.seq, "queue entry without a readable message")?;
            return Ok(());
        };
        // Final or fully submitted since this entry was made: the entry is stale.
        if msg.status.is_final() || msg.status == Status::Submitted {
            return Ok(());
        }
        let now = now_ms();
        // An entry read back after a restart of this task may predate a reschedule.
        if msg.due_ms > now {
            queue.push(Entry { due_ms: msg.due_ms, ..entry });
            return Ok(());
        }
        if now >= msg.expires_ms {
            self.finish(&msg, Status::Expired, error("validity_expired", "validity ended before submission", None))
                .await?;
            return Ok(());
        }
        let Some(carrier) = self.target(own, &msg) else {
            // Nothing it may use is healthy right now; let other messages pass.
            queue.push(Entry { due_ms: now + 1000, ..entry });
            return Ok(());
        };
        // Opt-outs and consent may have changed since accept; a retry may fall in quiet hours.
        // In sender scope the sender is the address it really leaves from.
        let sender = msg.content.from.as_deref().or(carrier.options.default_source.as_deref());
        match self.live.compliance().check_dispatch(&self.store, &self.store.crypto(), &msg, sender, now)? {
            DispatchVerdict::Proceed => {}
            DispatchVerdict::Block(code) => {
                let text = match code {
                    "recipient_opted_out" => "the recipient opted out after this message was accepted",
                    _ => "no recorded consent for this recipient",
                };
                self.finish(&msg, Status::Blocked, error(code, text, None)).await?;
                self.audit.record(Event::new("system", "message.blocked", msg.id.clone(), code));
                return Ok(());
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
                return Ok(());
            }
        }
        let parts = build_parts(&msg, &carrier.options, now);
        let total = parts.len();
        let (handed_tx, handed_rx) = mpsc::unbounded_channel();
        let mut expected = 0;
        let collector = collect::Collector {
            dispatcher: self.clone(),
            carrier: carrier.clone(),
            queue: queue.clone(),
            total,
            claim,
        };
        let pending: Vec<_> = parts
            .into_iter()
            .enumerate()
            .filter(|(index, _)| msg.parts.get(*index).is_none_or(|p| p.carrier_message_id.is_none()))
            .collect();
        let wanted = pending.len();
        let handle = collector.spawn(msg, handed_rx, wanted);
        for (index, sm) in pending {
            if self.store.tripwire().is_tripped() {
                break;
            }
            carrier.flow.acquire().await;
            let ticket = Ticket::default();
            let (reply, rx) = oneshot::channel();
            let job = SubmitJob { sm, reply, ticket: ticket.clone() };
            // Bounded: a carrier whose binds are all gone or all full this long gets the
            // rest of the message later (counted as not sent, not as an attempt).
            match tokio::time::timeout(carrier.handover_timeout, carrier.link.submit(job)).await {
                Ok(Ok(())) => {
                    expected += 1;
                    if handed_tx.send(Handed { index, reply: rx, ticket }).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        drop(handed_tx);
        debug!(handed = expected, wanted, "parts handed over");
        drop(handle);
        Ok(())
    }

    /// The carrier to use: one that already has parts of the message, else the first
    /// healthy carrier of its route.
    fn target(&self, own: &CarrierDispatch, msg: &Message) -> Option<CarrierDispatch> {
        let partly_on = msg.carrier.as_ref().filter(|_| msg.parts.iter().any(|p| p.carrier_message_id.is_some()));
        if let Some(name) = partly_on {
            return self.carriers.get(name).filter(|c| c.healthy()).cloned();
        }
        if own.healthy() && msg.route.first().map(String::as_str) == Some(own.link.name().as_ref()) {
            return Some(own.clone());
        }
        msg.route.iter().filter_map(|n| self.carriers.get(n)).find(|c| c.healthy()).cloned()
    }

    async fn finish(&self, msg: &Message, status: Status, error: Option<ErrorInfo>) -> Result<(), StoreError> {
        let r = self.store.commit_one(Op::Finish { id: msg.id.clone(), status, error, count_attempt: false }).await?;
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
                match self.claims.claim(&e.id.to_string()) {
                    Some(guard) => {
                        let entry = e.clone();
                        ops.push(Op::Finish {
                            id: guard.id().to_string(),
                            count_attempt: false,
                            status: Status::Expired,
                            error: error(
                                "validity_expired",
                                "validity ended before the message could be submitted",
                                None,
                            ),
                        });
                        claimed.push((guard, entry));
                    }
                    None => q.push(e), // being dispatched right now; its own outcome decides
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
                Err(e) => {
                    warn!(carrier = %name, error = %e, count = n, "could not expire messages; will retry");
                    for (_, entry) in &claimed {
                        q.push(entry.clone());
                    }
                }
            }
            drop(claimed);
        }
    }
}
