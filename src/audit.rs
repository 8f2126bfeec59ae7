//! The audit trail: an append-only, hash-chained JSON-lines file (`<data_dir>/audit/audit.jsonl`).
//!
//! Each entry carries the SHA-256 of the previous one, and its own hash covers its fields and
//! that link, so changing, inserting or removing an entry in the middle breaks the chain at
//! that point; `smsgate audit verify` names the first broken entry. The file is the SIEM
//! export format as it is (one JSON object per line).
//!
//! What goes in: every API call (actor = API key id, action, target message id, HTTP status),
//! every admin action (keys, opt-out and consent changes, imports, key rotation), every
//! keyword event. Never a message body; numbers only as blind index (`idx:`) or masked.
//!
//! Entries are written by one thread, in order, and fsynced in batches (at least every
//! 100 ms). A crash can lose the last unsynced entries, never reorder or corrupt earlier ones;
//! a torn last line is cut off at the next start.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::{now_ms, rfc3339};
use crate::tripwire::Tripwire;

/// Hash of the entry before the first.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: `key:<id>`, `anonymous`, `cli`, `carrier:<name>`, `system`.
    pub actor: String,
    /// What, e.g. `api.send`, `keys.create`, `optout.keyword`.
    pub action: String,
    /// On what: a message id, a key id, `idx:<blind index>`; may be empty.
    pub target: String,
    /// Result: an HTTP status, `ok`, `error: …`.
    pub outcome: String,
    /// Extra fields (never content).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
    /// Hash of the previous entry.
    pub prev: String,
    /// SHA-256 over this entry's fields (without `hash`) and `prev`.
    pub hash: String,
}

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

fn hash_of(e: &Entry) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        seq: u64,
        at: &'a str,
        actor: &'a str,
        action: &'a str,
        target: &'a str,
        outcome: &'a str,
        detail: &'a Value,
        prev: &'a str,
    }
    let h = Hashed {
        seq: e.seq,
        at: &e.at,
        actor: &e.actor,
        action: &e.action,
        target: &e.target,
        outcome: &e.outcome,
        detail: &e.detail,
        prev: &e.prev,
    };
    let bytes = serde_json::to_vec(&h).unwrap_or_default();
    crate::fsutil::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
}

/// Path of the log in a data directory.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit").join("audit.jsonl")
}

/// Handle for recording events; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    tx: std_mpsc::SyncSender<Command>,
}

enum Command {
    Record(Event),
    Flush(std_mpsc::SyncSender<()>),
}

impl Audit {
    /// Opens (creating) the log under `data_dir` and starts its writer thread. A write that
    /// fails trips `tripwire`: entries are never dropped while the process goes on.
    pub fn open(data_dir: &Path, tripwire: Tripwire) -> Result<Audit, AuditError> {
        let path = log_path(data_dir);
        let io = |e| AuditError::Io(path.clone(), e);
        if let Some(dir) = path.parent() {
            crate::fsutil::private_dir(dir).map_err(io)?;
        }
        let (seq, prev) = recover_tail(&path).map_err(io)?;
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io)?
        };
        crate::fsutil::make_private(&path, 0o600).map_err(io)?;
        let (tx, rx) = std_mpsc::sync_channel(65_536);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(file, rx, seq, prev, tripwire))
            .map_err(io)?;
        Ok(Audit { tx })
    }

    /// Records an event (waits only if 65,536 events are already queued).
    pub fn record(&self, event: Event) {
        if self.tx.send(Command::Record(event)).is_err() {
            tracing::error!("audit writer has stopped; an audit event was lost");
        }
    }

    /// Waits until everything recorded so far is on disk.
    pub fn flush(&self) {
        let (tx, rx) = std_mpsc::sync_channel(1);
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// Reads the last complete entry; cuts off a torn last line left by a crash.
fn recover_tail(path: &Path) -> std::io::Result<(u64, String)> {
    let Ok(text) = std::fs::read(path) else { return Ok((0, GENESIS.to_string())) };
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < text.len() {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(complete as u64)?;
        f.sync_all()?;
    }
    let last = text[..complete].split(|&b| b == b'\n').rev().find(|l| !l.is_empty());
    match last.and_then(|l| serde_json::from_slice::<Entry>(l).ok()) {
        Some(e) => Ok((e.seq, e.hash)),
        None => Ok((0, GENESIS.to_string())),
    }
}

fn run(mut file: File, rx: std_mpsc::Receiver<Command>, mut seq: u64, mut prev: String, tripwire: Tripwire) {
    let mut waiting: Vec<std_mpsc::SyncSender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut buf = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                Command::Record(ev) => {
                    seq += 1;
                    let mut e = Entry {
                        seq,
                        at: rfc3339(now_ms()),
                        actor: ev.actor,
                        action: ev.action,
                        target: ev.target,
                        outcome: ev.outcome,
                        detail: ev.detail,
                        prev: prev.clone(),
                        hash: String::new(),
                    };
                    e.hash = hash_of(&e);
                    prev = e.hash.clone();
                    let _ = serde_json::to_writer(&mut buf, &e);
                    buf.push(b'\n');
                }
                Command::Flush(done) => waiting.push(done),
            }
            next = if buf.len() < 1 << 20 { rx.recv_timeout(Duration::from_millis(1)).ok() } else { None };
        }
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            tracing::error!(error = %e, "audit log write failed");
            tripwire.trip(format!("audit log write failed: {e}"));
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

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every entry links and hashes correctly.
    Intact {
        /// Entries checked.
        entries: u64,
        /// Hash of the last one (to compare with an earlier export).
        head: String,
    },
    /// The first entry that does not check out.
    Broken {
        /// 1-based line number.
        line: u64,
        /// Its `seq`, if it could be read.
        seq: Option<u64>,
        /// What is wrong.
        reason: String,
    },
}

/// Walks the log at `path`.
pub fn verify(path: &Path) -> std::io::Result<Verification> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verification::Intact { entries: 0, head: GENESIS.to_string() });
        }
        Err(e) => return Err(e),
    };
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        let n = i as u64 + 1;
        let e: Entry = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(err) => {
                return Ok(Verification::Broken { line: n, seq: None, reason: format!("not an audit entry: {err}") });
            }
        };
        let broken = |reason: String| Verification::Broken { line: n, seq: Some(e.seq), reason };
        if e.seq != expected_seq {
            return Ok(broken(format!(
                "sequence {} where {expected_seq} was expected (entry missing or inserted)",
                e.seq
            )));
        }
        if e.prev != prev {
            return Ok(broken("does not link to the previous entry".into()));
        }
        if hash_of(&e) != e.hash {
            return Ok(broken("its content does not match its hash (edited)".into()));
        }
        prev = e.hash;
        expected_seq += 1;
    }
    Ok(Verification::Intact { entries: expected_seq - 1, head: prev })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_some(dir: &Path, n: usize) {
        let audit = Audit::open(dir, Tripwire::default()).unwrap();
        for i in 0..n {
            audit.record(Event::new("key:abc", "api.send", format!("m{i}"), "202"));
        }
        audit.flush();
    }

    #[test]
    fn chain_verifies_and_continues_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 5);
        write_some(dir.path(), 3);
        match verify(&log_path(dir.path())).unwrap() {
            Verification::Intact { entries, .. } => assert_eq!(entries, 8),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_edit_a_deletion_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        write_some(dir.path(), 6);
        let path = log_path(dir.path());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Edit entry 3's outcome.
        let edited = text.replace(lines[2], &lines[2].replace("\"202\"", "\"200\""));
        std::fs::write(&path, &edited).unwrap();
        assert!(matches!(verify(&path).unwrap(), Verification::Broken { line: 3, seq: Some(3), .. }));
        // Remove entry 4 instead.
        let without: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, l)| *l).collect();
        std::fs::write(&path, without.join("\n") + "\n").unwrap();
        assert!(matches!(verify(&path).unwrap(), Verification::Broken { line: 4, seq: Some(5), .. }));
        // A torn last line from a crash is cut at the next open; the chain goes on.
        std::fs::write(&path, text.clone() + "{\"seq\":7,\"at\"").unwrap();
        write_some(dir.path(), 1);
        assert!(matches!(verify(&path).unwrap(), Verification::Intact { entries: 7, .. }));
    }
}
