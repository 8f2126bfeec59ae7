//! The durable store: one sled tree (see [`layout`]) behind a narrow interface.
//!
//! Writes go through one group-commit thread ([`writer`]): callers send a list of [`Op`]s and
//! wait; the thread folds everything that queued up while the previous flush ran into one
//! `apply_batch`, then `flush()` plus an `fdatasync` of sled's log file, then answers every
//! waiter. sled's own `flush()` ends in `sync_file_range`, which neither syncs metadata nor the
//! drive cache, hence the extra `fdatasync` (see docs/architecture.md, "Store").
//!
//! Reads go straight to sled from any thread.
//!
//! The rest of the program sees only this module's types, so the engine can be replaced
//! (redb, or a distributed log) without touching the API or the dispatcher.

pub mod backup;
pub mod index;
pub mod keycheck;
pub mod layout;
mod ops;
pub mod outbox;
mod read;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::crypto::{Crypto, CryptoError};
use crate::faults::Faults;
use crate::message::{Content, Message};
use crate::tripwire::Tripwire;

pub use ops::*;
pub use writer::WriterStats;

/// Store failures. Callers answer 503 for these: nothing is promised to the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// sled or the file system failed.
    #[error("store I/O error: {0}")]
    Io(String),
    /// A stored record could not be decoded (it is set aside under `z/`).
    #[error("corrupt record under {key}: {reason}")]
    Corrupt {
        /// Key whose value is bad (printable part only).
        key: String,
        /// Decoder's message.
        reason: String,
    },
    /// A sealed value does not open with the data keys (a wrong key file, or tampering).
    #[error("sealed value under {key} does not open: {reason}")]
    Sealed {
        /// Key whose value is sealed (printable part only).
        key: String,
        /// Why it does not open.
        reason: String,
    },
    /// An earlier write failed; the store takes no more writes until the process restarts.
    #[error("the store stopped after a failed write ({0}); restart smsgate")]
    Failed(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// The key file is not the one the store was made with (see [`keycheck`]).
    #[error("wrong data keys: {0}")]
    WrongKeys(String),
    /// Another process holds the store open.
    #[error("store at {0} is in use by another process (is the server running?)")]
    Locked(PathBuf),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

struct Request {
    ops: Vec<Op>,
    guard: Option<Guard>,
    /// A backup to take at this point of the write order (ops are then empty).
    snapshot: Option<backup::Snapshot>,
    reply: oneshot::Sender<Result<Guarded, StoreError>>,
}

/// Handle to the open store; clone it freely.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    path: PathBuf,
    tx: mpsc::Sender<Request>,
    stats: Arc<WriterStats>,
    crypto: KeyHandle,
    tripwire: Tripwire,
    faults: Faults,
}

/// The data keys, swappable at run time (key rotation) without reopening the store.
pub type KeyHandle = Arc<std::sync::RwLock<Arc<Crypto>>>;

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache in bytes.
    pub cache_bytes: u64,
    /// Most ops in one group commit.
    pub group_commit_max: usize,
    /// Injected faults (test builds only; inert otherwise).
    pub faults: Faults,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 256 << 20, group_commit_max: 2048, faults: Faults::default() }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and starts the group-commit thread. `crypto`
    /// seals message content on write and opens it on read.
    pub fn open(dir: &Path, options: &StoreOptions, crypto: Arc<Crypto>) -> Result<Store, StoreError> {
        crate::fsutil::private_dir(dir)
            .map_err(|e| StoreError::Io(format!("data directory {}: {e}", dir.display())))?;
        let path = dir.join("store");
        discard_unfinished_snapshots(&path)?;
        // No background flusher: the writer flushes and syncs after every group commit, and a
        // flusher thread would hold sled's files (and its lock) for up to its interval after
        // the last handle is gone, so a store closed in this process could not be reopened at
        // once.
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                // sled reports a held lock only through the message text.
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    StoreError::Locked(path.clone())
                }
                other => StoreError::Io(format!("{}: {other}", path.display())),
            })?;
        // sled's data lives in one log file; fdatasync it after each flush (see module docs).
        let log = File::open(path.join("db")).map_err(|e| StoreError::Io(format!("open sled log: {e}")))?;
        // Nothing is read or written with keys that are not this store's.
        let verified = keycheck::verify(&db, &crypto)?;
        for id in &verified.missing {
            tracing::warn!(key_id = %id, "data key is not in the key file: anything still sealed with it cannot be read");
        }
        if !verified.to_write.is_empty() {
            let mut batch = sled::Batch::default();
            for (k, v) in verified.to_write {
                batch.insert(k, v);
            }
            db.apply_batch(batch)?;
            db.flush()?;
            log.sync_data().map_err(|e| StoreError::Io(format!("fsync: {e}")))?;
        }
        let (tx, rx) = mpsc::channel(16_384);
        let stats = Arc::new(WriterStats::default());
        let crypto: KeyHandle = Arc::new(std::sync::RwLock::new(crypto));
        let tripwire = Tripwire::default();
        writer::spawn(
            writer::Writer {
                db: db.clone(),
                log,
                max_ops: options.group_commit_max.max(1),
                stats: stats.clone(),
                crypto: crypto.clone(),
                tripwire: tripwire.clone(),
                faults: options.faults.clone(),
                backup: None,
            },
            rx,
        )?;
        let faults = options.faults.clone();
        Ok(Store { inner: Arc::new(Inner { db, path, tx, stats, crypto, tripwire, faults }) })
    }

    /// Trips when a write fails (see [`Tripwire`]); the gateway exits on it.
    pub fn tripwire(&self) -> &Tripwire {
        &self.inner.tripwire
    }

    /// The faults armed for this store (test builds).
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Directory of the sled files.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Applies `ops` atomically and durably; returns one result per op.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<OpResult>, StoreError> {
        match self.commit_guarded(ops, None).await? {
            Guarded::Applied(results) => Ok(results),
            // Without a guard nothing else can come back.
            _ => Err(StoreError::Closed),
        }
    }

    /// Applies `ops` only if `guard`'s preconditions hold, atomically and durably.
    pub async fn commit_guarded(&self, ops: Vec<Op>, guard: Option<Guard>) -> Result<Guarded, StoreError> {
        if let Some(reason) = self.inner.tripwire.reason() {
            return Err(StoreError::Failed(reason.to_string()));
        }
        let (reply, rx) = oneshot::channel();
        self.inner.tx.send(Request { ops, guard, snapshot: None, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once everything the writer applied before this call is on disk: what a reader
    /// saw in sled may come from a group that is applied but not yet fsynced.
    pub async fn durable_barrier(&self) -> Result<(), StoreError> {
        self.commit(Vec::new()).await.map(|_| ())
    }

    /// Commits a single op.
    pub async fn commit_one(&self, op: Op) -> Result<OpResult, StoreError> {
        let mut results = self.commit(vec![op]).await?;
        results.pop().ok_or(StoreError::Closed)
    }

    /// Group-commit counters (commits, ops, exit flag).
    pub fn writer_stats(&self) -> Arc<WriterStats> {
        self.inner.stats.clone()
    }

    /// Reads one message, its content opened. A record that does not decode is set aside
    /// and reads as absent.
    pub fn message(&self, id: &str) -> Result<Option<Message>, StoreError> {
        let key = layout::message(id);
        let Some(mut msg) = self.get::<Message>(&key)? else { return Ok(None) };
        msg.content = open_content(&self.crypto(), &key, msg.sealed.as_ref())?;
        Ok(Some(msg))
    }

    /// Decodes a value read outside the writer; one that does not decode is handed to the
    /// writer to be set aside (without waiting) and skipped.
    fn decode_or_quarantine<T: serde::de::DeserializeOwned>(&self, key: &[u8], value: &[u8]) -> Option<T> {
        match decode(key, value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.quarantine(key, value, &e.to_string());
                None
            }
        }
    }

    /// Asks the writer to set `key` aside if it still holds `seen`.
    fn quarantine(&self, key: &[u8], seen: &[u8], reason: &str) {
        let (reply, _) = oneshot::channel();
        let op = Op::Quarantine { key: key.to_vec(), seen: seen.to_vec(), reason: reason.to_string() };
        let _ = self.inner.tx.try_send(Request { ops: vec![op], guard: None, snapshot: None, reply });
    }

    /// Records set aside under `z/`: (original key, reason, when).
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(layout::QUARANTINE) {
            let (k, v) = item?;
            let original = String::from_utf8_lossy(&k[layout::QUARANTINE.len()..]).into_owned();
            let entry: QuarantineRecord = serde_json::from_slice(&v).unwrap_or_default();
            out.push(Quarantined { key: original, reason: entry.reason, at_ms: entry.at_ms, bytes: entry.value.len() });
        }
        Ok(out)
    }

    /// The data keys (for sealing before commit and for blind indexes).
    pub fn crypto(&self) -> Arc<Crypto> {
        match self.inner.crypto.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the data keys (after a rotation added one) once they pass the store's check
    /// values (see [`keycheck`]): new data is sealed with the current key, old data still opens
    /// with the older ones the file keeps.
    pub async fn set_crypto(&self, crypto: Crypto) -> Result<(), StoreError> {
        let verified = keycheck::verify(&self.inner.db, &crypto)?;
        let ops: Vec<Op> = verified.to_write.into_iter().map(|(key, value)| Op::Put { key, value }).collect();
        if !ops.is_empty() {
            self.commit(ops).await?;
        }
        if let Ok(mut c) = self.inner.crypto.write() {
            *c = Arc::new(crypto);
        }
        Ok(())
    }

    /// Every queue entry in due order.
    pub fn queue_entries(&self) -> Result<Vec<QueueEntry>, StoreError> {
        let mut out = Vec::new();
        self.for_each_queue_entry(|e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// Visits every queue entry in due order without collecting them (rebuilding the scheduler
    /// at startup: a million entries must not be held twice). A malformed entry is set aside.
    pub fn for_each_queue_entry(
        &self,
        mut visit: impl FnMut(QueueEntry) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.inner.db.scan_prefix(layout::QUEUE) {
            let (k, v) = item?;
            let parsed = layout::parse_queue(&k).zip(layout::parse_queue_value(&v));
            let Some(((due_ms, seq), value)) = parsed else {
                self.quarantine(&k, &v, "malformed queue entry");
                continue;
            };
            let layout::QueueValue { id, carrier, expires_ms, account } = value;
            visit(QueueEntry { due_ms, seq, id, carrier, expires_ms, account })?;
        }
        Ok(())
    }

    /// Sets a queue entry aside (its message record is gone or unreadable).
    pub fn quarantine_queue_entry(&self, due_ms: u64, seq: u64, reason: &str) -> Result<(), StoreError> {
        let key = layout::queue(due_ms, seq);
        if let Some(v) = self.inner.db.get(&key)? {
            self.quarantine(&key, &v, reason);
        }
        Ok(())
    }

    /// A fresh, monotonic sequence number (accept order). Crash-safe: sled never hands out
    /// the same value twice, though it skips ahead after a restart.
    pub fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.generate_id()?)
    }

    /// Deletes what has outlived its use: idempotency entries past 24 h, usage counters of
    /// days before yesterday, per-recipient frequency counters older than the longest cap
    /// window (a week) plus a day, orphan receipts older than `orphan_ttl_ms`. Returns how many.
    pub async fn sweep(&self, now_ms: u64, orphan_ttl_ms: u64) -> Result<usize, StoreError> {
        let mut ops = Vec::new();
        for item in self.inner.db.scan_prefix(layout::IDEMPOTENCY) {
            let (k, v) = item?;
            let stale = decode::<IdempotencyRecord>(&k, &v)
                .map(|r| now_ms >= r.created_ms + IDEMPOTENCY_TTL_MS)
                .unwrap_or(true);
            if stale {
                ops.push(Op::Delete { key: k.to_vec() });
            }
        }
        let day_before = |days: i64| {
            jiff::Timestamp::from_millisecond(now_ms as i64 - days * 86_400_000)
                .map(|t| t.strftime("%Y%m%d").to_string())
                .unwrap_or_default()
        };
        // Both key forms end in `\0YYYYMMDD`.
        let older_than = |k: &[u8], cutoff: &str| {
            let day = k.rsplit(|&b| b == 0).next().map(|d| String::from_utf8_lossy(d).into_owned()).unwrap_or_default();
            day.as_str() < cutoff
        };
        for (prefix, cutoff) in
            [(layout::USAGE, day_before(1)), (crate::compliance::registry::FREQUENCY, day_before(8))]
        {
            for item in self.inner.db.scan_prefix(prefix) {
                let (k, _) = item?;
                if older_than(&k, &cutoff) {
                    ops.push(Op::Delete { key: k.to_vec() });
                }
            }
        }
        for item in self.inner.db.scan_prefix(layout::ORPHAN) {
            let (k, v) = item?;
            let at =
                serde_json::from_slice::<serde_json::Value>(&v).ok().and_then(|v| v["at_ms"].as_u64()).unwrap_or(0);
            if now_ms >= at + orphan_ttl_ms {
                ops.push(Op::Delete { key: k.to_vec() });
            }
        }
        let n = ops.len();
        for chunk in ops.chunks(1000) {
            self.commit(chunk.to_vec()).await?;
        }
        Ok(n)
    }

    /// Writes a consistent backup to `out`: it holds exactly the commits before the point in
    /// the write order where the writer took it, and `files` (name, path; the audit log) up to
    /// their length at that point. The copy runs on its own thread while commits go on (see
    /// [`backup`]). Returns the number of records.
    pub async fn backup(&self, out: &Path, files: Vec<(String, PathBuf)>) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        let (done, count) = oneshot::channel();
        let mac_key = self.crypto().backup_key();
        let snapshot = backup::Snapshot { out: out.to_path_buf(), files, mac_key, done };
        self.inner
            .tx
            .send(Request { ops: Vec::new(), guard: None, snapshot: Some(snapshot), reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)??;
        count.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether the carrier id `carrier_message_id` of `carrier` is in the receipt index.
    pub fn knows_carrier_id(&self, carrier: &str, carrier_message_id: &str) -> Result<bool, StoreError> {
        Ok(self.inner.db.contains_key(layout::carrier_id(carrier, carrier_message_id))?)
    }

    /// Up to `limit` receipt ids of `carrier` in the receipt index (a sample of how it writes
    /// them).
    pub fn carrier_id_sample(&self, carrier: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let prefix = layout::carrier_id(carrier, "");
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(&prefix).keys().take(limit) {
            out.push(String::from_utf8_lossy(&item?[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Parked receipts (`o/`), at most `limit`.
    pub fn orphans(&self, limit: usize) -> Result<Vec<Parked>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(layout::ORPHAN).take(limit) {
            let (k, v) = item?;
            let rest = &k[layout::ORPHAN.len()..];
            let Some(split) = rest.iter().position(|&b| b == 0) else { continue };
            let carrier = String::from_utf8_lossy(&rest[..split]).into_owned();
            let id = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
            let at =
                serde_json::from_slice::<serde_json::Value>(&v).ok().and_then(|v| v["at_ms"].as_u64()).unwrap_or(0);
            out.push(Parked { key: k.to_vec(), carrier, id, at_ms: at });
        }
        Ok(out)
    }

    /// Bytes used on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// Flushes everything to disk (used at shutdown); after a failed write it does nothing,
    /// so that a restart sees what the disk had when the failure was reported.
    pub fn flush(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.inner.tripwire.reason() {
            return Err(StoreError::Failed(reason.to_string()));
        }
        self.inner.db.flush()?;
        Ok(())
    }
}

/// Removes `snap.*.generating` files from sled's directory before it opens.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, fsyncs it and renames it, so such a
/// file is by construction unfinished; but when it opens, it reads the newest `snap.*` file
/// *including* these, and fails with "Read corrupted data" on an empty one (spacejam/sled#1527).
/// A write that failed on a full disk leaves exactly that behind, and the store would never
/// open again. The finished snapshot before it and the log are untouched.
fn discard_unfinished_snapshots(path: &Path) -> Result<(), StoreError> {
    let Ok(entries) = std::fs::read_dir(path) else { return Ok(()) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing an unfinished sled snapshot left by an interrupted write");
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::Io(format!("remove {}: {e}", entry.path().display())))?;
        }
    }
    Ok(())
}

/// A record set aside, as `smsgate quarantine list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Quarantined {
    /// The key it had (printable).
    pub key: String,
    /// Why it was set aside.
    pub reason: String,
    /// When (ms).
    pub at_ms: u64,
    /// Size of the bytes kept.
    pub bytes: usize,
}

/// The value stored under `z/{key}`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct QuarantineRecord {
    pub reason: String,
    pub at_ms: u64,
    /// The original bytes, base64.
    pub value: String,
}

/// Opens a message's sealed content (empty when there is none).
fn open_content(crypto: &Crypto, key: &[u8], sealed: Option<&crate::crypto::Sealed>) -> Result<Content, StoreError> {
    match sealed {
        None => Ok(Content::default()),
        Some(s) => crypto
            .open_json(s, key)
            .map_err(|e: CryptoError| StoreError::Sealed { key: printable(key), reason: e.to_string() }),
    }
}

fn printable(key: &[u8]) -> String {
    String::from_utf8_lossy(key).chars().take(40).collect()
}

/// Seals a message's content, bound to its record key.
pub fn seal_content(crypto: &Crypto, msg: &Message) -> crate::crypto::Sealed {
    crypto.seal_json(&msg.content, &layout::message(&msg.id))
}

fn corrupt(key: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt { key: printable(key), reason: reason.to_string() }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(key, &e.to_string()))
}

pub(crate) fn encode<T: serde::Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| corrupt(key, &e.to_string()))
}
