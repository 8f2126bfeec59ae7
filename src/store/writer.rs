//! The group-commit thread: the only writer of the sled tree.
//!
//! Because every mutation runs here, one after another, read-modify-write of a message record
//! needs no locks or transactions: the dispatcher's "submitted" and a receipt's "delivered"
//! for the same message can never race.
//!
//! Fail-stop: the first apply, flush or fdatasync error trips the store's [`Tripwire`]. The
//! failed group may already sit in sled's memory, so nothing is applied after it: every
//! waiter of that group and every later request gets [`StoreError::Failed`], and the gateway
//! exits so that a restart reads only what reached the disk.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::backup::CopyOnWrite;
use super::{
    Guard, Guarded, IDEMPOTENCY_TTL_MS, Op, OpResult, QuarantineRecord, ReceiptOutcome, Request, StoreError, decode,
    encode, layout,
};
use crate::faults::Faults;
use crate::message::{ErrorInfo, Message, Status, now_ms};
use crate::metrics as m;
use crate::tripwire::Tripwire;

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

/// The writer thread's state.
pub(super) struct Writer {
    pub db: sled::Db,
    /// sled's log file, for the fdatasync after each flush.
    pub log: File,
    pub max_ops: usize,
    pub stats: Arc<WriterStats>,
    pub crypto: super::KeyHandle,
    pub tripwire: Tripwire,
    pub faults: Faults,
    /// The backup being copied, if one runs: keys the writer changes keep their old value there.
    pub backup: Option<Arc<CopyOnWrite>>,
}

/// Trips the store if the writer thread ends by a panic.
struct PanicGuard(Tripwire);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.trip("the store writer thread panicked");
        }
    }
}

pub(super) fn spawn(mut w: Writer, mut rx: mpsc::Receiver<Request>) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || {
            let _guard = PanicGuard(w.tripwire.clone());
            let mut next = None;
            while let Some(first) = next.take().or_else(|| rx.blocking_recv()) {
                if let Some(reason) = w.tripwire.reason() {
                    let _ = first.reply.send(Err(StoreError::Failed(reason.to_string())));
                    continue;
                }
                if first.snapshot.is_some() {
                    w.start_backup(first);
                    continue;
                }
                let mut requests = vec![first];
                let mut ops = requests[0].ops.len();
                while ops < w.max_ops {
                    match rx.try_recv() {
                        // A backup starts after what came before it is committed.
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
                w.commit_group(requests);
            }
            // Channel closed: every Store handle is gone. Leave sled consistent (unless a
            // write failed: then what is on disk is what a restart must see), and release
            // sled's files before saying so: the same directory may be opened at once.
            if !w.tripwire.is_tripped() {
                let _ = w.db.flush();
                let _ = w.log.sync_data();
            }
            let stats = w.stats.clone();
            drop(w);
            stats.exited.store(true, Ordering::Release);
        })
        .map_err(|e| StoreError::Io(format!("spawn store writer: {e}")))?;
    Ok(())
}

impl Writer {
    /// Starts copying a backup on its own thread; commits go on meanwhile (their keys' old
    /// values are kept for the copy). Answers the request at once; the count comes later.
    fn start_backup(&mut self, request: Request) {
        let Some(snapshot) = request.snapshot else { return };
        if self.backup.as_ref().is_some_and(|b| b.is_active()) {
            let _ = snapshot.done.send(Err(StoreError::Io("a backup is already running".into())));
            let _ = request.reply.send(Ok(Guarded::Applied(Vec::new())));
            return;
        }
        let cow = Arc::new(CopyOnWrite::default());
        self.backup = Some(cow.clone());
        super::backup::spawn(self.db.clone(), cow, snapshot);
        let _ = request.reply.send(Ok(Guarded::Applied(Vec::new())));
    }

    fn commit_group(&mut self, requests: Vec<Request>) {
        let started = Instant::now();
        if self.backup.as_ref().is_some_and(|b| !b.is_active()) {
            self.backup = None;
        }
        let crypto = match self.crypto.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut set = WriteSet::new(&self.db);
        let mut results = Vec::with_capacity(requests.len());
        let mut op_count = 0u64;
        let mut failure = None;
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
            // Decoding problems are set aside inside the write set, so what fails here is
            // reading sled itself: the same fail-stop as a failed write.
            if let Err(e) = &outcome {
                failure.get_or_insert_with(|| e.to_string());
            }
            results.push(outcome);
        }
        let outcome = match failure {
            Some(reason) => Err(reason),
            None => self.write(set, &crypto),
        };
        m::store_commit(started.elapsed().as_secs_f64(), op_count);
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.ops.fetch_add(op_count, Ordering::Relaxed);
        if let Err(reason) = &outcome {
            tracing::error!(error = %reason, ops = op_count, "group commit failed");
            self.tripwire.trip(format!("group commit failed: {reason}"));
        }
        for (request, result) in requests.into_iter().zip(results) {
            let reply = match &outcome {
                Err(reason) => Err(StoreError::Failed(reason.clone())),
                Ok(()) => result,
            };
            let _ = request.reply.send(reply);
        }
    }

    /// Applies the group's batch, flushes it and fdatasyncs sled's log.
    fn write(&self, set: WriteSet<'_>, crypto: &crate::crypto::Crypto) -> Result<(), String> {
        let batch = set.finish(crypto, self.backup.as_deref()).map_err(|e| e.to_string())?;
        self.db.apply_batch(batch).map_err(|e| format!("apply: {e}"))?;
        self.faults.after_apply();
        self.db.flush().map_err(|e| format!("flush: {e}"))?;
        self.faults.before_sync().and_then(|()| self.log.sync_data()).map_err(|e| format!("fdatasync: {e}"))
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

    /// Decodes `raw` (read from `key`); a value that does not decode is moved to `z/` in this
    /// group and reads as absent, so one bad record never fails the commit around it.
    fn decode_or_set_aside<T: serde::de::DeserializeOwned>(&mut self, key: &[u8], raw: &[u8]) -> Option<T> {
        match decode(key, raw) {
            Ok(v) => Some(v),
            Err(e) => {
                self.set_aside(key, raw, &e.to_string());
                None
            }
        }
    }

    fn set_aside(&mut self, key: &[u8], raw: &[u8], reason: &str) {
        use base64::Engine;
        let record = QuarantineRecord {
            reason: reason.to_string(),
            at_ms: now_ms(),
            value: base64::engine::general_purpose::STANDARD.encode(raw),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        tracing::warn!(key = %String::from_utf8_lossy(key).chars().take(40).collect::<String>(), reason,
            "record set aside (quarantined); see `smsgate quarantine list`");
        m::quarantined();
        self.put(layout::quarantine(key), Some(value));
        self.put(key.to_vec(), None);
    }

    /// Checks a request's preconditions; when they hold, stages the idempotency entry and the
    /// counter increment and answers `Applied` (with no results yet).
    fn check(&mut self, guard: &Guard) -> Result<Guarded, StoreError> {
        if let Some((key, _)) = &guard.idempotency
            && let Some(raw) = self.get_raw(key)?
            && let Some(existing) = self.decode_or_set_aside::<super::IdempotencyRecord>(key, &raw)
            && now_ms() < existing.created_ms + IDEMPOTENCY_TTL_MS
        {
            return Ok(Guarded::Replay(existing));
        }
        let read = |set: &Self, k: &[u8]| -> Result<u64, StoreError> {
            Ok(set.get_raw(k)?.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
        };
        // What the whole request adds, per counter; then every limit is checked against the
        // counters with all of it, before anything is staged (a refusal leaves nothing).
        let mut adding: HashMap<Vec<u8>, u64> = HashMap::new();
        for q in guard.quotas.iter().filter(|q| q.adds) {
            *adding.entry(q.key.clone()).or_default() += q.amount;
        }
        for q in &guard.quotas {
            let mut used = 0;
            let mut added = 0;
            for k in std::iter::once(&q.key).chain(&q.also) {
                used += read(self, k)?;
                added += adding.get(k).copied().unwrap_or(0);
            }
            if used + added > q.limit {
                return Ok(Guarded::QuotaExceeded { label: q.label.clone(), used, limit: q.limit });
            }
        }
        for (key, amount) in adding {
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
            let Some(raw) = self.get_raw(&key)? else { return Ok(None) };
            let Some(msg) = self.decode_or_set_aside::<Message>(&key, &raw) else { return Ok(None) };
            self.original.insert(id.to_string(), msg.status);
            self.messages.insert(id.to_string(), msg);
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
                    Some(layout::queue_value(&msg.id, msg.queue_carrier(), msg.expires_ms, &msg.account)),
                );
                self.messages.insert(msg.id.clone(), (**msg).clone());
                Ok(OpResult::Done)
            }
            Op::Put { key, value } => {
                self.put(key.clone(), Some(value.clone()));
                Ok(OpResult::Done)
            }
            Op::Quarantine { key, seen, reason } => {
                // Only if nothing replaced the bad value since a reader saw it.
                if self.get_raw(key)?.as_deref() == Some(seen.as_slice()) {
                    self.set_aside(key, seen, reason);
                }
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
                keys.push([super::index::by_account_prefix(&msg.account).as_slice(), id.as_bytes()].concat());
                self.messages.remove(id);
                self.original.remove(id);
                for k in keys {
                    self.put(k, None);
                }
                self.put(layout::message(id), None);
                Ok(OpResult::Done)
            }
            Op::Reroute { id, route } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.status.is_final() {
                    return Ok(OpResult::AlreadyFinal(msg.status));
                }
                msg.route = route.clone();
                let (key, value) = (
                    layout::queue(msg.due_ms, msg.seq),
                    layout::queue_value(&msg.id, msg.queue_carrier(), msg.expires_ms, &msg.account),
                );
                let (status, created_ms) = (msg.status, msg.created_ms);
                self.put(key, Some(value));
                Ok(OpResult::Updated { id: id.clone(), status, created_ms, became_final: false })
            }
            Op::ReceiptTimeout { id } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.status != Status::Submitted {
                    return Ok(OpResult::AlreadyFinal(msg.status));
                }
                msg.set_status(Status::Unknown, now, Some("receipt_timeout".into()));
                msg.error = Some(ErrorInfo {
                    code: "receipt_timeout".into(),
                    message: "The carrier sent no delivery receipt in time; a late one still updates the status."
                        .into(),
                    carrier_status: None,
                });
                let created_ms = msg.created_ms;
                Ok(OpResult::Updated { id: id.clone(), status: Status::Unknown, created_ms, became_final: true })
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
                    msg.submitted_ms = Some(now);
                    msg.set_status(Status::Submitted, now, Some(carrier.clone()));
                } else if !all_submitted && !msg.status.is_final() && msg.status != Status::Submitting {
                    // Some parts are with the carrier: a cancel is too late, and GET says so.
                    msg.set_status(Status::Submitting, now, Some(carrier.clone()));
                }
                let status = msg.status;
                if all_submitted {
                    self.put(queue_key, None);
                }
                self.put(layout::carrier_id(carrier, carrier_message_id), Some(layout::carrier_id_value(id, *part)));
                // A receipt may have overtaken its submit_sm_resp, its id in another form.
                for orphan_id in layout::orphan_ids(carrier_message_id) {
                    let orphan_key = layout::orphan(carrier, &orphan_id);
                    if let Some(raw) = self.get_raw(&orphan_key)? {
                        self.put(orphan_key.clone(), None);
                        if let Some(outcome) = self.decode_or_set_aside::<StoredReceipt>(&orphan_key, &raw) {
                            return self.apply_receipt(id, *part, &outcome.into_outcome(), now);
                        }
                    }
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
                    (msg.created_ms, layout::queue_value(&msg.id, msg.queue_carrier(), msg.expires_ms, &msg.account));
                self.put(old, None);
                self.put(new, Some(value));
                Ok(OpResult::Updated { id: id.clone(), status, created_ms, became_final: false })
            }
            Op::Finish { id, status, error, count_attempt } => {
                let Some(msg) = self.load(id)? else {
                    return Ok(OpResult::NotFound);
                };
                if msg.status.is_final() {
                    return Ok(OpResult::AlreadyFinal(msg.status));
                }
                msg.error = error.clone();
                if *count_attempt {
                    msg.attempts += 1;
                }
                msg.set_status(*status, now, error.as_ref().map(|e| e.code.clone()));
                let q = layout::queue(msg.due_ms, msg.seq);
                let created_ms = msg.created_ms;
                self.put(q, None);
                Ok(OpResult::Updated { id: id.clone(), status: *status, created_ms, became_final: true })
            }
            Op::AdoptOrphan { orphan, carrier, carrier_message_id } => {
                let Some(raw) = self.get_raw(orphan)? else { return Ok(OpResult::NotFound) };
                let Some(stored) = self.decode_or_set_aside::<StoredReceipt>(orphan, &raw) else {
                    return Ok(OpResult::NotFound);
                };
                let index_key = layout::carrier_id(carrier, carrier_message_id);
                let Some((id, part)) = self.get_raw(&index_key)?.and_then(|v| layout::parse_carrier_id_value(&v))
                else {
                    return Ok(OpResult::NotFound);
                };
                self.put(orphan.clone(), None);
                self.apply_receipt(&id, part, &stored.into_outcome(), now)
            }
            Op::Receipt { carrier, carrier_message_id, outcome } => {
                let index_key = layout::carrier_id(carrier, carrier_message_id);
                let target = match self.get_raw(&index_key)? {
                    Some(v) => match layout::parse_carrier_id_value(&v) {
                        Some(target) => Some(target),
                        None => {
                            self.set_aside(&index_key, &v, "malformed carrier id index entry");
                            return Ok(OpResult::NotFound);
                        }
                    },
                    None => None,
                };
                match target {
                    Some((id, part)) => self.apply_receipt(&id, part, outcome, now),
                    None => {
                        let key = layout::orphan(carrier, &layout::canonical_id(carrier_message_id));
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
        // `unknown` (no receipt in time) is final, but a late receipt still says what happened.
        if msg.status.is_final() && msg.status != Status::Unknown {
            return Ok(OpResult::AlreadyFinal(msg.status));
        }
        let Some(final_status) = outcome.status else {
            // Intermediate (ENROUTE, ACCEPTD): history only.
            let status = msg.status;
            msg.record(crate::message::Event::new(status, now, Some(outcome.stat.clone())));
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
    fn finish(
        mut self,
        crypto: &crate::crypto::Crypto,
        backup: Option<&CopyOnWrite>,
    ) -> Result<sled::Batch, StoreError> {
        let mut outbox = Vec::new();
        let mut finished = Vec::new();
        let mut awaiting = Vec::new();
        for (id, m) in &self.messages {
            let was = self.original.get(id).copied();
            if was == Some(m.status) {
                continue;
            }
            // A message that became final leaves the queue, whichever op finished it (a
            // receipt can finish a message whose other parts were never submitted).
            if m.status.is_final() && !was.is_some_and(Status::is_final) {
                finished.push(layout::queue(m.due_ms, m.seq));
            }
            // Messages submitted in this commit are listed together under `t/` for the receipt
            // timeout: one entry per commit, not a write per message (see receipt_timeout.rs).
            if m.status == Status::Submitted {
                awaiting.push(id.clone());
            }
            // Status changes of messages with a webhook go to the outbox in this same batch
            // (not the passing `submitting` of a long message between its parts).
            if m.status != Status::Submitting
                && let Some(Ok(Op::Put { key, value })) = super::outbox::status_op(crypto, m)
            {
                outbox.push((key, value));
            }
        }
        for key in finished {
            self.put(key, None);
        }
        if let Some(first) = awaiting.first() {
            let value = awaiting.join(" ").into_bytes();
            self.put(super::index::awaiting(now_ms(), first), Some(value));
        }
        for (key, value) in outbox {
            self.put(key, Some(value));
        }
        let mut batch = sled::Batch::default();
        for (key, value) in self.raw {
            if let Some(b) = backup {
                b.keep(self.db, &key)?;
            }
            match value {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        for (id, mut msg) in self.messages {
            let key = layout::message(&id);
            if let Some(b) = backup {
                b.keep(self.db, &key)?;
            }
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
