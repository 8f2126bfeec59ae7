//! The group-commit thread: the only writer of the sled tree.
//!
//! Because every mutation runs here, one after another, read-modify-write of a message record
//! needs no locks or transactions: the dispatcher's "submitted" and a receipt's "delivered"
//! for the same message can never race.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{
    Guard, Guarded, IDEMPOTENCY_TTL_MS, Op, OpResult, ReceiptOutcome, Request, StoreError, decode, encode, layout,
};
use crate::message::{ErrorInfo, Message, Status, now_ms};
use crate::metrics as m;

/// Counters of the writer, for tests and the operations page.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Group commits done.
    pub commits: AtomicU64,
    /// Ops applied.
    pub ops: AtomicU64,
    /// Set when the writer thread has ended and released its handle on the files.
    pub exited: std::sync::atomic::AtomicBool,
}

pub(super) fn spawn(
    db: sled::Db,
    log: File,
    mut rx: mpsc::Receiver<Request>,
    max_ops: usize,
    stats: Arc<WriterStats>,
    crypto: super::KeyHandle,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let mut next = None;
            while let Some(first) = next.take().or_else(|| rx.blocking_recv()) {
                if first.snapshot.is_some() {
                    take_snapshot(&db, first);
                    continue;
                }
                let mut requests = vec![first];
                let mut ops = requests[0].ops.len();
                while ops < max_ops {
                    match rx.try_recv() {
                        // A backup waits until what came before it is committed.
                        Ok(r) if r.snapshot.is_some() => {
                            next = Some(r);
                            break;
                        }
                        Ok(r) => {
                            ops += r.ops.len();
                            requests.push(r);
                        }
                        Err(_) => break,
                    }
                }
                let keys = match crypto.read() {
                    Ok(c) => c.clone(),
                    Err(poisoned) => poisoned.into_inner().clone(),
                };
                commit_group(&db, &log, requests, &stats, &keys);
            }
            // Channel closed: every Store handle is gone. Leave sled consistent.
            let _ = db.flush();
            let _ = log.sync_data();
            drop(db);
            stats.exited.store(true, Ordering::Release);
        })
        .map_err(|e| StoreError::Io(format!("spawn store writer: {e}")))?;
    Ok(())
}

fn take_snapshot(db: &sled::Db, request: Request) {
    let Some(snapshot) = request.snapshot else { return };
    let result = super::backup::write(db, &snapshot.out, &snapshot.files);
    let reply = match result {
        Ok(count) => {
            let _ = snapshot.done.send(count);
            Ok(Guarded::Applied(Vec::new()))
        }
        Err(e) => Err(e),
    };
    let _ = request.reply.send(reply);
}

fn commit_group(
    db: &sled::Db,
    log: &File,
    requests: Vec<Request>,
    stats: &WriterStats,
    crypto: &crate::crypto::Crypto,
) {
    let started = Instant::now();
    let mut set = WriteSet::new(db);
    let mut results = Vec::with_capacity(requests.len());
    let mut op_count = 0u64;
    for r in &requests {
        let outcome = match r.guard.as_ref().map(|g| set.check(g)).transpose() {
            Err(e) => Err(e),
            Ok(Some(refused @ (Guarded::Replay(_) | Guarded::QuotaExceeded { .. }))) => Ok(refused),
            Ok(_) => {
                let rs: Result<Vec<OpResult>, StoreError> = r.ops.iter().map(|op| set.apply(op)).collect();
                op_count += r.ops.len() as u64;
                rs.map(Guarded::Applied)
            }
        };
        results.push(outcome);
    }
    let outcome = set.finish(crypto).and_then(|batch| {
        db.apply_batch(batch)?;
        db.flush()?;
        log.sync_data().map_err(|e| StoreError::Io(format!("fdatasync: {e}")))
    });
    m::store_commit(started.elapsed().as_secs_f64(), op_count);
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.ops.fetch_add(op_count, Ordering::Relaxed);
    if let Err(e) = &outcome {
        tracing::error!(error = %e, ops = op_count, "group commit failed");
    }
    for (request, result) in requests.into_iter().zip(results) {
        let reply = match &outcome {
            Err(e) => Err(e.clone()),
            Ok(()) => result,
        };
        let _ = request.reply.send(reply);
    }
}

/// Pending changes of one group, with reads that see earlier ops of the same group.
struct WriteSet<'a> {
    db: &'a sled::Db,
    messages: HashMap<String, Message>,
    /// Status of each loaded message before this group, to spot changes for webhooks.
    original: HashMap<String, Status>,
    raw: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    raw_index: HashMap<Vec<u8>, usize>,
}

impl<'a> WriteSet<'a> {
    fn new(db: &'a sled::Db) -> Self {
        WriteSet { db, messages: HashMap::new(), original: HashMap::new(), raw: Vec::new(), raw_index: HashMap::new() }
    }

    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match self.raw_index.get(&key) {
            Some(&i) => self.raw[i].1 = value,
            None => {
                self.raw_index.insert(key.clone(), self.raw.len());
                self.raw.push((key, value));
            }
        }
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(&i) = self.raw_index.get(key) {
            return Ok(self.raw[i].1.clone());
        }
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    /// Checks a request's preconditions; when they hold, stages the idempotency entry and the
    /// counter increment and answers `Applied` (with no results yet).
    fn check(&mut self, guard: &Guard) -> Result<Guarded, StoreError> {
        if let Some((key, _)) = &guard.idempotency
            && let Some(raw) = self.get_raw(key)?
        {
            let existing: super::IdempotencyRecord = decode(key, &raw)?;
            if now_ms() < existing.created_ms + IDEMPOTENCY_TTL_MS {
                return Ok(Guarded::Replay(existing));
            }
        }
        let read = |set: &Self, k: &[u8]| -> Result<u64, StoreError> {
            Ok(set.get_raw(k)?.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
        };
        // Check every quota before staging any increment, so a refusal leaves nothing behind.
        let mut staged = Vec::with_capacity(guard.quotas.len());
        for q in &guard.quotas {
            let own = read(self, &q.key)?;
            let mut used = own;
            for k in &q.also {
                used += read(self, k)?;
            }
            // Earlier guards of this request on the same counters count too.
            used += staged
                .iter()
                .filter(|(k, _): &&(Vec<u8>, u64)| *k == q.key || q.also.contains(k))
                .map(|(_, a)| *a)
                .sum::<u64>();
            if used + q.amount > q.limit {
                return Ok(Guarded::QuotaExceeded { label: q.label.clone(), used, limit: q.limit });
            }
            staged.push((q.key.clone(), q.amount));
        }
        for (key, amount) in staged {
            let now = read(self, &key)?;
            self.put(key, Some((now + amount).to_be_bytes().to_vec()));
        }
        if let Some((key, record)) = &guard.idempotency {
            let value = encode(key, record)?;
            self.put(key.clone(), Some(value));
        }
        Ok(Guarded::Applied(Vec::new()))
    }

    /// Loads a message into the write set (so later ops of the group see changes).
    fn load(&mut self, id: &str) -> Result<Option<&mut Message>, StoreError> {
        if !self.messages.contains_key(id) {
            let key = layout::message(id);
            match self.db.get(&key)? {
                None => return Ok(None),
                Some(v) => {
                    let msg: Message = decode(&key, &v)?;
                    self.original.insert(id.to_string(), msg.status);
                    self.messages.insert(id.to_string(), msg);
                }
            }
        }
        Ok(self.messages.get_mut(id))
    }

    fn apply(&mut self, op: &Op) -> Result<OpResult, StoreError> {
        let now = now_ms();
        match op {
            Op::Insert(msg) => {
                self.original.insert(msg.id.clone(), msg.status);
                self.put(
                    layout::queue(msg.due_ms, msg.seq),
                    Some(layout::queue_value(&msg.id, msg.queue_carrier(), msg.expires_ms)),
                );
                self.messages.insert(msg.id.clone(), (**msg).clone());
                Ok(OpResult::Done)
            }
            Op::Put { key, value } => {
                self.put(key.clone(), Some(value.clone()));
                Ok(OpResult::Done)
            }
            Op::Delete { key } => {
                self.put(key.clone(), None);
                Ok(OpResult::Done)
            }
            Op::SetSealed { id, sealed, purged_ms } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                msg.sealed = Some(sealed.clone());
                if purged_ms.is_some() {
                    msg.purged_ms = *purged_ms;
                }
                Ok(OpResult::Done)
            }
            Op::DeleteMessage { id } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                let mut keys = vec![layout::queue(msg.due_ms, msg.seq)];
                if let Some(carrier) = &msg.carrier {
                    for part in msg.parts.iter().filter_map(|p| p.carrier_message_id.as_ref()) {
                        keys.push(layout::carrier_id(carrier, part));
                    }
                }
                self.messages.remove(id);
                self.original.remove(id);
                for k in keys {
                    self.put(k, None);
                }
                self.put(layout::message(id), None);
                Ok(OpResult::Done)
            }
            Op::Cancel { id } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.status == Status::Submitted || msg.parts.iter().any(|p| p.carrier_message_id.is_some()) {
                    return Ok(OpResult::AlreadySubmitted(msg.status));
                }
                if msg.status.is_final() {
                    return Ok(OpResult::AlreadyFinal(msg.status));
                }
                msg.set_status(Status::Cancelled, now, None);
                let (q, created_ms) = (layout::queue(msg.due_ms, msg.seq), msg.created_ms);
                self.put(q, None);
                Ok(OpResult::Updated { id: id.clone(), status: Status::Cancelled, created_ms, became_final: true })
            }
            Op::PartSubmitted { id, part, total, carrier, carrier_message_id } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.parts.len() != *total && msg.parts.iter().all(|p| p.carrier_message_id.is_none()) {
                    msg.parts = vec![crate::message::Part::default(); *total];
                }
                let Some(p) = msg.parts.get_mut(*part) else {
                    return Ok(OpResult::NotFound);
                };
                p.carrier_message_id = Some(carrier_message_id.clone());
                msg.carrier = Some(carrier.clone());
                let all_submitted = msg.parts.iter().all(|p| p.carrier_message_id.is_some());
                let queue_key = layout::queue(msg.due_ms, msg.seq);
                let created_ms = msg.created_ms;
                if all_submitted && !msg.status.is_final() {
                    msg.attempts += 1;
                    msg.set_status(Status::Submitted, now, Some(carrier.clone()));
                }
                let status = msg.status;
                if all_submitted {
                    self.put(queue_key, None);
                }
                self.put(layout::carrier_id(carrier, carrier_message_id), Some(layout::carrier_id_value(id, *part)));
                // A receipt may have overtaken its submit_sm_resp.
                let orphan_key = layout::orphan(carrier, carrier_message_id);
                if let Some(raw) = self.get_raw(&orphan_key)? {
                    self.put(orphan_key.clone(), None);
                    let outcome: StoredReceipt = decode(&orphan_key, &raw)?;
                    return self.apply_receipt(id, *part, &outcome.into_outcome(), now);
                }
                Ok(OpResult::Updated { id: id.clone(), status, created_ms, became_final: false })
            }
            Op::Reschedule { id, due_ms, count_attempt, error } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.status.is_final() {
                    return Ok(OpResult::AlreadyFinal(msg.status));
                }
                let old = layout::queue(msg.due_ms, msg.seq);
                msg.due_ms = *due_ms;
                if *count_attempt {
                    msg.attempts += 1;
                }
                let status = if *due_ms > now { Status::Scheduled } else { Status::Queued };
                let detail = error.as_ref().map(|e| e.code.clone());
                msg.error = error.clone();
                msg.set_status(status, now, detail);
                let new = layout::queue(msg.due_ms, msg.seq);
                let (created_ms, value) =
                    (msg.created_ms, layout::queue_value(&msg.id, msg.queue_carrier(), msg.expires_ms));
                self.put(old, None);
                self.put(new, Some(value));
                Ok(OpResult::Updated { id: id.clone(), status, created_ms, became_final: false })
            }
            Op::Finish { id, status, error } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.status.is_final() {
                    return Ok(OpResult::AlreadyFinal(msg.status));
                }
                msg.error = error.clone();
                msg.set_status(*status, now, error.as_ref().map(|e| e.code.clone()));
                let q = layout::queue(msg.due_ms, msg.seq);
                let created_ms = msg.created_ms;
                self.put(q, None);
                Ok(OpResult::Updated { id: id.clone(), status: *status, created_ms, became_final: true })
            }
            Op::Receipt { carrier, carrier_message_id, outcome } => {
                let index_key = layout::carrier_id(carrier, carrier_message_id);
                match self.get_raw(&index_key)? {
                    Some(v) => {
                        let Some((id, part)) = layout::parse_carrier_id_value(&v) else {
                            return Err(StoreError::Corrupt {
                                key: "c/".into(),
                                reason: "bad carrier index value".into(),
                            });
                        };
                        self.apply_receipt(&id, part, outcome, now)
                    }
                    None => {
                        let key = layout::orphan(carrier, carrier_message_id);
                        let value = encode(&key, &StoredReceipt::from_outcome(outcome, now))?;
                        self.put(key, Some(value));
                        Ok(OpResult::Orphan)
                    }
                }
            }
        }
    }

    fn apply_receipt(
        &mut self,
        id: &str,
        part: usize,
        outcome: &ReceiptOutcome,
        now: u64,
    ) -> Result<OpResult, StoreError> {
        let Some(msg) = self.load(id)? else {
            return Ok(OpResult::NotFound);
        };
        let created_ms = msg.created_ms;
        if msg.status.is_final() {
            return Ok(OpResult::AlreadyFinal(msg.status));
        }
        let Some(final_status) = outcome.status else {
            // Intermediate (ENROUTE, ACCEPTD): history only.
            let status = msg.status;
            msg.history.push(crate::message::Event { status, at_ms: now, detail: Some(outcome.stat.clone()) });
            return Ok(OpResult::Updated { id: id.to_string(), status, created_ms, became_final: false });
        };
        if let Some(p) = msg.parts.get_mut(part) {
            p.receipt = Some(final_status);
        }
        let all_delivered = msg.parts.iter().all(|p| p.receipt == Some(Status::Delivered));
        let new_status = if final_status != Status::Delivered {
            Some(final_status)
        } else if all_delivered {
            Some(Status::Delivered)
        } else {
            None
        };
        match new_status {
            Some(s) => {
                if s != Status::Delivered {
                    msg.error = Some(ErrorInfo {
                        code: format!("carrier_{}", s.as_str()),
                        message: format!("carrier receipt: {}", outcome.stat),
                        carrier_status: outcome.error_code,
                    });
                }
                msg.set_status(s, now, Some(outcome.stat.clone()));
                Ok(OpResult::Updated { id: id.to_string(), status: s, created_ms, became_final: true })
            }
            None => {
                let status = msg.status;
                Ok(OpResult::Updated { id: id.to_string(), status, created_ms, became_final: false })
            }
        }
    }

    /// Serialises the changed messages (sealing any content not sealed yet; the writer itself
    /// never opens content) and builds the sled batch.
    fn finish(mut self, crypto: &crate::crypto::Crypto) -> Result<sled::Batch, StoreError> {
        // Status changes of messages with a webhook go to the outbox in this same batch.
        let changed: Vec<String> = self
            .messages
            .iter()
            .filter(|(id, m)| m.callback_url.is_some() && self.original.get(*id) != Some(&m.status))
            .map(|(id, _)| id.clone())
            .collect();
        for id in changed {
            if let Some(Ok(Op::Put { key, value })) =
                self.messages.get(&id).and_then(|m| crate::webhooks::status_op(crypto, m))
            {
                self.put(key, Some(value));
            }
        }
        let mut batch = sled::Batch::default();
        for (key, value) in self.raw {
            match value {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        for (id, mut msg) in self.messages {
            let key = layout::message(&id);
            if msg.sealed.is_none() && msg.purged_ms.is_none() {
                msg.sealed = Some(super::seal_content(crypto, &msg));
            }
            let value = encode(&key, &msg)?;
            batch.insert(key, value);
        }
        Ok(batch)
    }
}

/// A receipt parked under `o/` until its message's id is known.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredReceipt {
    status: Option<Status>,
    stat: String,
    error_code: Option<u32>,
    at_ms: u64,
}

impl StoredReceipt {
    fn from_outcome(o: &ReceiptOutcome, at_ms: u64) -> Self {
        StoredReceipt { status: o.status, stat: o.stat.clone(), error_code: o.error_code, at_ms }
    }
    fn into_outcome(self) -> ReceiptOutcome {
        ReceiptOutcome { status: self.status, stat: self.stat, error_code: self.error_code }
    }
}
