//! The audit trail: an append-only chain of JSON lines under `<data_dir>/audit/`, each entry
//! linked to the one before by an HMAC-SHA256 under a key derived from the data keys' index
//! key. Whoever can write the files but does not hold the key file can neither edit, insert,
//! remove nor rewrite entries without `smsgate audit verify` naming the first broken one.
//! The files are the SIEM export format as they are (one JSON object per line); see
//! [`chain`] for their names and order.
//!
//! What goes in: every authenticated API call (actor = API key id, action, target, HTTP
//! status), every admin action (keys, opt-out and consent changes, imports, key rotation),
//! every keyword event, and each opening of the log. Requests without a valid key are counted
//! instead, one entry per source address per minute, so that a flood of them cannot fill the
//! disk. Never a message body; numbers only as blind index (`idx:`).
//!
//! One thread writes, in order, and fsyncs in batches. A write that fails trips the store's
//! fail-stop (the process exits 74): no later entry ever follows a lost one. The current file
//! is rotated when it reaches `[audit] rotate_mb`; the chain goes on in the next file. A
//! crash can lose the last unsynced entries, never reorder or corrupt earlier ones; a torn
//! last line is cut off at the next start, found by reading the file's tail only.

pub mod chain;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::hmac;
use serde_json::{Value, json};

pub use chain::{Entry, GENESIS, Verification, verify};

use crate::message::{now_ms, rfc3339};
use crate::tripwire::Tripwire;

/// Sources counted separately per minute; the rest share one entry.
const MAX_SOURCES: usize = 10_000;

/// An event to record (the chain fields are filled in by the writer).
#[derive(Debug, Clone)]
pub struct Event {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Result.
    pub outcome: String,
    /// Extra fields.
    pub detail: Value,
}

impl Event {
    /// A new event.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        Event {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: Value::Null,
        }
    }

    /// With extra fields.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Audit failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File system.
    #[error("audit log {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Path of the current file in a data directory.
pub fn log_path(data_dir: &Path) -> PathBuf {
    chain::current(data_dir)
}

/// How the log is kept.
#[derive(Debug, Clone)]
pub struct Options {
    /// The chain's key (`Crypto::audit_key`).
    pub key: hmac::Key,
    /// Rotate the current file at this size.
    pub rotate_bytes: u64,
    /// Requests without a valid key are counted per source over windows of this length.
    pub refusal_window_ms: u64,
}

/// Requests without a valid key: per minute, per source, per "actor status".
type Refusals = BTreeMap<u64, HashMap<String, BTreeMap<String, u64>>>;

/// Handle for recording events; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: std_mpsc::SyncSender<Command>,
    refusals: Arc<Mutex<Refusals>>,
    refusal_window_ms: u64,
    tripwire: Tripwire,
}

enum Command {
    Record(Event),
    Flush(std_mpsc::SyncSender<()>),
}

impl Audit {
    /// Opens (creating) the log under `data_dir`, records the opening, and starts its writer
    /// thread. A write that fails trips `tripwire`: entries are never dropped while the
    /// process goes on.
    pub fn open(data_dir: &Path, options: Options, tripwire: Tripwire) -> Result<Audit, AuditError> {
        let path = log_path(data_dir);
        let io = |e| AuditError::Io(path.clone(), e);
        crate::fsutil::private_dir(&chain::dir(data_dir)).map_err(io)?;
        let tail = recover(data_dir).map_err(io)?;
        let file = open_current(&path).map_err(io)?;
        let (tx, rx) = std_mpsc::sync_channel(65_536);
        let refusals: Arc<Mutex<Refusals>> = Arc::default();
        let refusal_window_ms = options.refusal_window_ms.max(1);
        let writer = Writer {
            data_dir: data_dir.to_path_buf(),
            options,
            file,
            tail,
            refusals: refusals.clone(),
            tripwire: tripwire.clone(),
        };
        std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer.run(rx)).map_err(io)?;
        let audit = Audit { tx, refusals, refusal_window_ms, tripwire };
        audit.record(Event::new("system", "audit.open", "", "ok").detail(json!({"pid": std::process::id()})));
        Ok(audit)
    }

    /// Records an event. Waits only if 65,536 events are already queued, and then off the
    /// async workers (`block_in_place`) so that other tasks go on.
    pub fn record(&self, event: Event) {
        let cmd = match self.tx.try_send(Command::Record(event)) {
            Ok(()) => return,
            Err(std_mpsc::TrySendError::Full(cmd)) => cmd,
            Err(std_mpsc::TrySendError::Disconnected(_)) => return self.lost(),
        };
        let send = || self.tx.send(cmd).is_ok();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let sent = if multi_thread { tokio::task::block_in_place(send) } else { send() };
        if !sent {
            self.lost();
        }
    }

    fn lost(&self) {
        tracing::error!("the audit writer has stopped; stopping the gateway rather than going on unaudited");
        self.tripwire.trip("the audit writer stopped".to_string());
    }

    /// Counts a request that had no valid key (actor `anonymous` or `invalid-key`) from
    /// `source`, answered `status`: one entry per source and minute, written when the minute
    /// is over.
    pub fn refused(&self, source: IpAddr, actor: &str, status: u16) {
        let Ok(mut r) = self.refusals.lock() else { return };
        let by_source = r.entry(now_ms() / self.refusal_window_ms).or_default();
        let source = source.to_string();
        let source =
            if by_source.len() < MAX_SOURCES || by_source.contains_key(&source) { source } else { "other".into() };
        *by_source.entry(source).or_default().entry(format!("{actor} {status}")).or_default() += 1;
    }

    /// Waits until everything recorded so far is on disk.
    pub fn flush(&self) {
        let (tx, rx) = std_mpsc::sync_channel(1);
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn open_current(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    crate::fsutil::make_private(path, 0o600)?;
    Ok(file)
}

/// Where the chain stands: the last entry's seq and hash, the current file's first seq and
/// size.
struct Tail {
    seq: u64,
    prev: String,
    first_in_file: u64,
    size: u64,
}

/// Finds the chain's end (reading tails only), cuts a torn last line, and moves a file of
/// entries from before keying aside (`audit-legacy-…`), so the keyed chain starts after it.
fn recover(data_dir: &Path) -> std::io::Result<Tail> {
    let path = log_path(data_dir);
    if let Some((last, complete)) = chain::last_entry(&path)? {
        let len = std::fs::metadata(&path)?.len();
        if complete < len {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(complete)?;
            f.sync_all()?;
        }
        if last.alg.is_none() {
            let legacy = chain::dir(data_dir).join(chain::legacy_name(last.seq));
            std::fs::rename(&path, &legacy)?;
            File::open(chain::dir(data_dir))?.sync_all()?;
            return Ok(Tail { seq: last.seq, prev: last.hash, first_in_file: last.seq + 1, size: 0 });
        }
        let first = chain::first_entry(&path)?.map(|e| e.seq).unwrap_or(last.seq);
        return Ok(Tail { seq: last.seq, prev: last.hash, first_in_file: first, size: complete });
    }
    // The current file is empty or new: the chain ends in the newest older file, if any.
    let older = chain::files(data_dir)?.into_iter().rfind(|p| *p != path);
    match older.map(|p| chain::last_entry(&p)).transpose()?.flatten() {
        Some((last, _)) => Ok(Tail { seq: last.seq, prev: last.hash, first_in_file: last.seq + 1, size: 0 }),
        None => Ok(Tail { seq: 0, prev: GENESIS.to_string(), first_in_file: 1, size: 0 }),
    }
}

struct Writer {
    data_dir: PathBuf,
    options: Options,
    file: File,
    tail: Tail,
    refusals: Arc<Mutex<Refusals>>,
    tripwire: Tripwire,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        let mut waiting: Vec<std_mpsc::SyncSender<()>> = Vec::new();
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(cmd) => Some(cmd),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut lines = Vec::new();
            let mut bytes = 0;
            for event in self.finished_minutes() {
                let line = self.append(event);
                bytes += line.1.len();
                lines.push(line);
            }
            let mut next = first;
            while let Some(cmd) = next {
                match cmd {
                    Command::Record(ev) => {
                        let line = self.append(ev);
                        bytes += line.1.len();
                        lines.push(line);
                    }
                    Command::Flush(done) => waiting.push(done),
                }
                next = if bytes < 1 << 20 { rx.recv_timeout(Duration::from_millis(1)).ok() } else { None };
            }
            if !lines.is_empty()
                && let Err(e) = self.write(&lines)
            {
                tracing::error!(error = %e, "audit log write failed");
                self.tripwire.trip(format!("audit log write failed: {e}"));
                // Nothing more is written: a later entry must never follow a lost one.
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
                while rx.recv().is_ok() {}
                return;
            }
            for w in waiting.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// Entries for minutes of refused requests that are over.
    fn finished_minutes(&self) -> Vec<Event> {
        let Ok(mut r) = self.refusals.lock() else { return Vec::new() };
        let window = self.options.refusal_window_ms.max(1);
        let current = now_ms() / window;
        let mut events = Vec::new();
        while let Some(entry) = r.first_entry() {
            if *entry.key() >= current {
                break;
            }
            let (started, by_source) = entry.remove_entry();
            let at = rfc3339(started * window);
            let mut sources: Vec<_> = by_source.into_iter().collect();
            sources.sort();
            for (source, counts) in sources {
                let total: u64 = counts.values().sum();
                events.push(
                    Event::new("unauthenticated", "api.refused", format!("ip:{source}"), total.to_string())
                        .detail(json!({"from": at, "window_secs": window / 1000, "by_actor_and_status": counts})),
                );
            }
        }
        events
    }

    /// The next entry of the chain for `ev`: (its seq, its line).
    fn append(&mut self, ev: Event) -> (u64, Vec<u8>) {
        self.tail.seq += 1;
        let mut e = Entry {
            seq: self.tail.seq,
            at: rfc3339(now_ms()),
            actor: ev.actor,
            action: ev.action,
            target: ev.target,
            outcome: ev.outcome,
            detail: ev.detail,
            alg: Some(chain::KEYED.to_string()),
            prev: std::mem::take(&mut self.tail.prev),
            hash: String::new(),
        };
        e.hash = chain::mac_of(&self.options.key, &e);
        self.tail.prev = e.hash.clone();
        let mut line = serde_json::to_vec(&e).unwrap_or_default();
        line.push(b'\n');
        (e.seq, line)
    }

    /// Appends and syncs `lines`, rotating the file wherever the next line would make it
    /// larger than `rotate_bytes`.
    fn write(&mut self, lines: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
        let mut pending: Vec<u8> = Vec::new();
        for (seq, line) in lines {
            let size = self.tail.size + pending.len() as u64;
            if size > 0 && size + line.len() as u64 > self.options.rotate_bytes {
                self.file.write_all(&pending)?;
                self.file.sync_data()?;
                self.tail.size += pending.len() as u64;
                pending.clear();
                self.rotate(*seq)?;
            }
            pending.extend_from_slice(line);
        }
        self.file.write_all(&pending)?;
        self.file.sync_data()?;
        self.tail.size += pending.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, first_of_next: u64) -> std::io::Result<()> {
        let current = log_path(&self.data_dir);
        let rotated = chain::dir(&self.data_dir).join(chain::rotated_name(self.tail.first_in_file));
        std::fs::rename(&current, &rotated)?;
        self.file = open_current(&current)?;
        File::open(chain::dir(&self.data_dir))?.sync_all()?;
        self.tail.first_in_file = first_of_next;
        self.tail.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"audit test key")
    }

    fn options(rotate_bytes: u64) -> Options {
        Options { key: key(), rotate_bytes, refusal_window_ms: 100 }
    }

    fn write_some(dir: &Path, n: usize, rotate_bytes: u64) {
        let audit = Audit::open(dir, options(rotate_bytes), Tripwire::default()).unwrap();
        for i in 0..n {
            audit.record(Event::new("key:abc", "api.send", format!("m{i}"), "202"));
        }
        audit.flush();
    }

    fn intact(dir: &Path) -> (u64, u64, usize) {
        match verify(dir, &key()).unwrap() {
            Verification::Intact { entries, legacy, files, .. } => (entries, legacy, files),
            other => panic!("{other:?}"),
        }
    }

    fn broken_at(dir: &Path) -> (u64, String) {
        match verify(dir, &key()).unwrap() {
            Verification::Broken { seq, reason, .. } => (seq.unwrap_or(0), reason),
            other => panic!("expected a broken chain: {other:?}"),
        }
    }

    #[test]
    fn chain_verifies_and_continues_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 5, 1 << 20);
        write_some(dir.path(), 3, 1 << 20);
        // Each opening is an entry too.
        assert_eq!(intact(dir.path()), (10, 0, 1));
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another key file");
        assert!(matches!(verify(dir.path(), &other).unwrap(), Verification::Broken { seq: Some(1), .. }));
    }

    #[test]
    fn an_edit_a_deletion_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 6, 1 << 20);
        let path = log_path(dir.path());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Edit entry 3's outcome.
        std::fs::write(&path, text.replace(lines[2], &lines[2].replace("\"202\"", "\"200\""))).unwrap();
        assert_eq!(broken_at(dir.path()).0, 3);
        // Remove entry 4 instead.
        let without: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, l)| *l).collect();
        std::fs::write(&path, without.join("\n") + "\n").unwrap();
        assert_eq!(broken_at(dir.path()).0, 5);
        // A torn last line from a crash is cut at the next open; the chain goes on.
        std::fs::write(&path, text.clone() + "{\"seq\":8,\"at\"").unwrap();
        write_some(dir.path(), 1, 1 << 20);
        assert_eq!(intact(dir.path()), (9, 0, 1));
    }

    /// Whoever can write the file but lacks the key file cannot rewrite it: not with plain
    /// SHA-256 links recomputed over edited entries, nor with a key of their own.
    #[test]
    fn a_rewrite_without_the_key_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 4, 1 << 20);
        let path = log_path(dir.path());
        let entries: Vec<Entry> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let rewrite = |mac: &dyn Fn(&Entry) -> String, alg: Option<&str>| {
            let mut prev = GENESIS.to_string();
            let mut out = String::new();
            for e in &entries {
                let mut e = e.clone();
                e.outcome = "200".into();
                e.alg = alg.map(String::from);
                e.prev = prev.clone();
                e.hash = mac(&e);
                prev = e.hash.clone();
                out.push_str(&serde_json::to_string(&e).unwrap());
                out.push('\n');
            }
            out
        };
        // What the log was before keying: SHA-256 over the same fields.
        std::fs::write(&path, rewrite(&chain::sha256_of, None)).unwrap();
        let (seq, reason) = broken_at(dir.path());
        assert_eq!(seq, 1, "{reason}");
        let theirs = hmac::Key::new(hmac::HMAC_SHA256, b"the attacker's own key");
        std::fs::write(&path, rewrite(&|e| chain::mac_of(&theirs, e), Some(chain::KEYED))).unwrap();
        let (seq, reason) = broken_at(dir.path());
        assert_eq!(seq, 1, "{reason}");
        assert!(reason.contains("MAC"), "{reason}");
    }

    #[test]
    fn rotation_keeps_one_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 200, 4096);
        let files = chain::files(dir.path()).unwrap();
        assert!(files.len() > 5, "{files:?}");
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() <= 4096 + 4096, "{f:?}");
        }
        assert_eq!(intact(dir.path()), (201, 0, files.len()));
        // Reopened: the chain goes on from the newest file's tail.
        write_some(dir.path(), 10, 4096);
        let (entries, _, _) = intact(dir.path());
        assert_eq!(entries, 212);
        // A file taken out of the middle is a gap.
        let middle = &chain::files(dir.path()).unwrap()[2];
        std::fs::remove_file(middle).unwrap();
        assert!(broken_at(dir.path()).1.contains("expected"));
    }

    #[test]
    fn a_log_from_before_keying_is_kept_and_fixed_by_the_first_keyed_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(chain::dir(dir.path())).unwrap();
        // Three entries as the unkeyed version wrote them.
        let mut prev = GENESIS.to_string();
        let mut text = String::new();
        for seq in 1..=3u64 {
            let mut e = Entry {
                seq,
                at: rfc3339(seq),
                actor: "cli".into(),
                action: "keys.create".into(),
                target: format!("k{seq}"),
                outcome: "ok".into(),
                detail: Value::Null,
                alg: None,
                prev: prev.clone(),
                hash: String::new(),
            };
            e.hash = chain::sha256_of(&e);
            prev = e.hash.clone();
            text.push_str(&serde_json::to_string(&e).unwrap());
            text.push('\n');
        }
        std::fs::write(log_path(dir.path()), &text).unwrap();
        write_some(dir.path(), 2, 1 << 20);
        assert_eq!(intact(dir.path()), (6, 3, 2));
        let legacy = chain::dir(dir.path()).join(chain::legacy_name(3));
        assert!(legacy.exists());
        // Rewriting the old part afterwards (with valid SHA-256 links) breaks the keyed link.
        std::fs::write(&legacy, text.replace("\"k2\"", "\"kX\"")).unwrap();
        assert!(matches!(verify(dir.path(), &key()).unwrap(), Verification::Broken { .. }));
    }

    /// A flood of requests without a valid key from one source is one entry per window.
    #[test]
    fn a_million_refused_requests_are_a_few_entries() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), options(1 << 30), Tripwire::default()).unwrap();
        audit.flush();
        let before = std::fs::metadata(log_path(dir.path())).unwrap().len();
        let source: IpAddr = "192.0.2.7".parse().unwrap();
        let started = std::time::Instant::now();
        for i in 0..1_000_000u32 {
            audit.refused(source, "anonymous", if i % 2 == 0 { 404 } else { 401 });
        }
        let spent = started.elapsed();
        // The windows are 100 ms here: let the last one end, then the writer writes it.
        std::thread::sleep(Duration::from_millis(1200));
        audit.flush();
        let text = std::fs::read_to_string(log_path(dir.path())).unwrap();
        let refused: Vec<&str> = text.lines().filter(|l| l.contains("api.refused")).collect();
        let total: u64 =
            refused.iter().map(|l| serde_json::from_str::<Entry>(l).unwrap().outcome.parse::<u64>().unwrap()).sum();
        assert_eq!(total, 1_000_000, "every request counted");
        let windows = spent.as_millis() as usize / 100 + 2;
        assert!(refused.len() <= windows, "{} entries for {windows} windows", refused.len());
        let grown = std::fs::metadata(log_path(dir.path())).unwrap().len() - before;
        println!("1,000,000 refused requests in {spent:?}: {} entries, {grown} bytes", refused.len());
        // One entry (about 450 bytes) per window, whatever the count.
        assert!(grown < 1024 * windows as u64, "grew {grown} bytes");
        assert_eq!(intact(dir.path()).1, 0);
    }
}
