//! The chain itself: entries, their MAC, the files the chain spans, and its verification.
//!
//! Files under `<data_dir>/audit/`, oldest first:
//! * `audit-legacy-{last seq}.jsonl`: entries from before the chain was keyed (plain
//!   SHA-256 links). The first keyed entry links to its head, so it cannot be rewritten
//!   afterwards without breaking the keyed chain.
//! * `audit-{first seq, 12 digits}.jsonl`: keyed entries, rotated out by size.
//! * `audit.jsonl`: the current file.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `prev` of the first entry ever.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// `alg` of keyed entries.
pub const KEYED: &str = "hmac-sha256";

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
    /// The link's algorithm: `hmac-sha256`; absent on entries from before keying (SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `hash` of the previous entry.
    pub prev: String,
    /// HMAC-SHA256 (keyed entries) or SHA-256 (legacy) over the fields above and `prev`.
    pub hash: String,
}

fn hashed_bytes(e: &Entry) -> Vec<u8> {
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
    serde_json::to_vec(&h).unwrap_or_default()
}

/// The keyed link of `e`.
pub fn mac_of(key: &hmac::Key, e: &Entry) -> String {
    crate::fsutil::hex(hmac::sign(key, &hashed_bytes(e)).as_ref())
}

/// The plain SHA-256 link of a legacy entry.
pub(crate) fn sha256_of(e: &Entry) -> String {
    crate::fsutil::hex(ring::digest::digest(&ring::digest::SHA256, &hashed_bytes(e)).as_ref())
}

/// Directory of the chain's files.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit")
}

/// The current file.
pub fn current(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("audit.jsonl")
}

/// Name of a file rotated out whose first entry is `first_seq`.
pub fn rotated_name(first_seq: u64) -> String {
    format!("audit-{first_seq:012}.jsonl")
}

/// Name of the file legacy entries move to.
pub fn legacy_name(last_seq: u64) -> String {
    format!("audit-legacy-{last_seq:012}.jsonl")
}

/// The chain's files, oldest first: legacy, rotated, current (those that exist).
pub fn files(data_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut legacy = Vec::new();
    let mut rotated = Vec::new();
    match std::fs::read_dir(dir(data_dir)) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if name.starts_with("audit-legacy-") && name.ends_with(".jsonl") {
                    legacy.push(name);
                } else if name.starts_with("audit-") && name.ends_with(".jsonl") {
                    rotated.push(name);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    legacy.sort();
    rotated.sort();
    let mut out: Vec<PathBuf> = legacy.into_iter().chain(rotated).map(|n| dir(data_dir).join(n)).collect();
    if current(data_dir).exists() {
        out.push(current(data_dir));
    }
    Ok(out)
}

/// The first complete entry of a file (its first line), if any.
pub fn first_entry(path: &Path) -> std::io::Result<Option<Entry>> {
    let Ok(file) = File::open(path) else { return Ok(None) };
    let mut line = String::new();
    BufReader::new(file).take(1 << 20).read_line(&mut line)?;
    Ok(line.ends_with('\n').then(|| serde_json::from_str(&line).ok()).flatten())
}

/// The last complete entry of a file and the length up to its end (reading backwards from
/// the end, never the whole file): `None` when it has none.
pub fn last_entry(path: &Path) -> std::io::Result<Option<(Entry, u64)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut tail: Vec<u8> = Vec::new();
    let mut from = len;
    loop {
        let step = (64 * 1024).min(from);
        from -= step;
        file.seek(SeekFrom::Start(from))?;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        // The end of the last complete line, and the start of that line.
        if let Some(end) = tail.iter().rposition(|&b| b == b'\n') {
            let start = tail[..end].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
            if start.is_some() || from == 0 {
                let start = start.unwrap_or(0);
                let entry = serde_json::from_slice::<Entry>(&tail[start..end]).ok();
                return Ok(entry.map(|e| (e, from + end as u64 + 1)));
            }
        }
        if from == 0 {
            return Ok(None);
        }
    }
}

/// Result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every entry links and authenticates.
    Intact {
        /// Entries checked (legacy ones included).
        entries: u64,
        /// Of them, from before keying (plain SHA-256: edits show, a rewrite of all of them
        /// would not, except that the first keyed entry names their head).
        legacy: u64,
        /// Files walked.
        files: usize,
        /// Seq of the first entry present (1 unless old files were archived away).
        first_seq: u64,
        /// `hash` of the last entry.
        head: String,
    },
    /// The first entry that does not check out.
    Broken {
        /// File.
        file: PathBuf,
        /// 1-based line number in it.
        line: u64,
        /// Its `seq`, if it could be read.
        seq: Option<u64>,
        /// What is wrong.
        reason: String,
    },
}

/// Walks every file of the chain in `data_dir` with the audit key `key`.
pub fn verify(data_dir: &Path, key: &hmac::Key) -> std::io::Result<Verification> {
    let files = files(data_dir)?;
    let mut prev: Option<String> = None;
    let mut expected_seq: Option<u64> = None;
    let (mut entries, mut legacy, mut keyed, mut first_seq) = (0u64, 0u64, 0u64, 0u64);
    for path in &files {
        let is_legacy_file = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("audit-legacy-"));
        for (i, line) in BufReader::new(File::open(path)?).lines().enumerate() {
            let line = line?;
            let n = i as u64 + 1;
            let broken =
                |seq: Option<u64>, reason: String| Verification::Broken { file: path.clone(), line: n, seq, reason };
            let e: Entry = match serde_json::from_str(&line) {
                Ok(e) => e,
                Err(err) => return Ok(broken(None, format!("not an audit entry: {err}"))),
            };
            if expected_seq.is_none() {
                first_seq = e.seq;
                if e.seq == 1 && e.prev != GENESIS {
                    return Ok(broken(Some(e.seq), "the first entry does not start the chain".into()));
                }
            }
            if expected_seq.is_some_and(|s| s != e.seq) {
                return Ok(broken(
                    Some(e.seq),
                    format!(
                        "sequence {} where {} was expected (entry missing or inserted)",
                        e.seq,
                        expected_seq.unwrap_or(0)
                    ),
                ));
            }
            if prev.as_ref().is_some_and(|p| *p != e.prev) {
                return Ok(broken(Some(e.seq), "does not link to the previous entry".into()));
            }
            match e.alg.as_deref() {
                Some(KEYED) => {
                    if mac_of(key, &e) != e.hash {
                        let why = if keyed == 0 {
                            "its MAC does not verify with this key file's audit key: a wrong key file, or the entry was \
                             edited or rewritten"
                        } else {
                            "its MAC does not verify: the entry was edited or rewritten"
                        };
                        return Ok(broken(Some(e.seq), why.into()));
                    }
                    keyed += 1;
                }
                None if is_legacy_file && keyed == 0 => {
                    if sha256_of(&e) != e.hash {
                        return Ok(broken(Some(e.seq), "its content does not match its hash (edited)".into()));
                    }
                    legacy += 1;
                }
                _ => {
                    return Ok(broken(
                        Some(e.seq),
                        "an unkeyed entry where only keyed ones may be (rewritten without the key)".into(),
                    ));
                }
            }
            entries += 1;
            expected_seq = Some(e.seq + 1);
            prev = Some(e.hash);
        }
    }
    if legacy > 0 && keyed == 0 {
        let file = files.last().cloned().unwrap_or_default();
        return Ok(Verification::Broken {
            file,
            line: 0,
            seq: None,
            reason: "only entries from before keying remain: the keyed chain is missing".into(),
        });
    }
    Ok(Verification::Intact {
        entries,
        legacy,
        files: files.len(),
        first_seq,
        head: prev.unwrap_or_else(|| GENESIS.to_string()),
    })
}
