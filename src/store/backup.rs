//! Backup and restore of the store (plus named files, i.e. the audit log) as one file.
//!
//! Format: `SMSGATE-BACKUP\x02\n`, then records `0x01 ‖ u32 key length ‖ key ‖ u32 value
//! length ‖ value`, then files `0x02 ‖ u16 name length ‖ name ‖ u64 length ‖ bytes`, then
//! `0x00 ‖ HMAC-SHA256 of everything before it`, keyed by a key derived from the data keys'
//! index key: a plain digest could be recomputed by whoever altered the file. Version 1 files
//! (`\x01`, a plain SHA-256) are still read, reported as unauthenticated. Values stay sealed: a
//! backup is as unreadable as the store without the data keys, which it does not contain.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ring::hmac;
use sled::IVec;
use tokio::sync::oneshot;

use super::StoreError;

const MAGIC: &[u8] = b"SMSGATE-BACKUP\x02\n";
/// The first format: the same layout ending in a plain SHA-256.
const MAGIC_V1: &[u8] = b"SMSGATE-BACKUP\x01\n";
/// The only place restored files may go: the backup carries the audit log and nothing else.
const FILES_UNDER: &str = "audit";

/// A backup request for the writer thread.
#[derive(Debug)]
pub struct Snapshot {
    /// Output file.
    pub out: PathBuf,
    /// Extra files to include: (name inside the backup, path now).
    pub files: Vec<(String, PathBuf)>,
    /// Authenticates the file (`Crypto::backup_key`).
    pub mac_key: hmac::Key,
    /// Gets the record count, or why the backup failed.
    pub done: oneshot::Sender<Result<u64, StoreError>>,
}

/// Old values of keys the writer changed since a backup's starting point: the copy takes
/// those instead of what it finds in the live tree, so it shows the store exactly as it was
/// at that point while commits go on.
#[derive(Debug, Default)]
pub struct CopyOnWrite {
    active: AtomicBool,
    state: Mutex<CowState>,
}

#[derive(Debug, Default)]
struct CowState {
    /// key → (value at the starting point, `None` if absent then; whether the copy has it).
    before: HashMap<Vec<u8>, (Option<IVec>, bool)>,
    /// The last key the copy's (ordered) walk of the live tree reached.
    position: Vec<u8>,
}

impl CopyOnWrite {
    /// Still copying.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Called by the writer before it changes `key`: the first change keeps the old value.
    pub fn keep(&self, db: &sled::Db, key: &[u8]) -> Result<(), StoreError> {
        if !self.is_active() {
            return Ok(());
        }
        let Ok(mut state) = self.state.lock() else { return Ok(()) };
        if !state.before.contains_key(key) {
            // A key the walk passed already is in the copy with its old value.
            let copied = key <= state.position.as_slice();
            state.before.insert(key.to_vec(), (db.get(key)?, copied));
        }
        Ok(())
    }

    /// The walk reached `key`, whose live value is `live`: what the copy holds for it (the
    /// old value if the writer changed it since the starting point, nothing if it did not
    /// exist then).
    fn visit(&self, key: &[u8], live: IVec) -> Option<IVec> {
        let Ok(mut state) = self.state.lock() else { return Some(live) };
        state.position = key.to_vec();
        match state.before.get_mut(key) {
            None => Some(live),
            Some((old, copied)) => {
                *copied = true;
                old.clone()
            }
        }
    }

    /// Keys deleted after the starting point that the walk never met, with their old value.
    fn not_visited(&self) -> Vec<(Vec<u8>, IVec)> {
        let Ok(state) = self.state.lock() else { return Vec::new() };
        state
            .before
            .iter()
            .filter(|(_, (_, copied))| !copied)
            .filter_map(|(k, (old, _))| Some((k.clone(), old.clone()?)))
            .collect()
    }
}

struct Signing<W: Write> {
    inner: W,
    mac: hmac::Context,
}

impl<W: Write> Signing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.mac.update(bytes);
        self.inner.write_all(bytes)
    }

    fn record(&mut self, k: &[u8], v: &[u8]) -> std::io::Result<()> {
        self.put(&[1])?;
        self.put(&(k.len() as u32).to_be_bytes())?;
        self.put(k)?;
        self.put(&(v.len() as u32).to_be_bytes())?;
        self.put(v)
    }
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

/// Starts the copy on its own thread (called by the writer at the starting point, with
/// `cow` already in place). The files are copied up to their length now: the audit log only
/// grows, so that is its content at this point.
pub(super) fn spawn(db: sled::Db, cow: Arc<CopyOnWrite>, snapshot: Snapshot) {
    cow.active.store(true, Ordering::Release);
    let files: Vec<(String, PathBuf, u64)> = snapshot
        .files
        .iter()
        .filter_map(|(name, path)| Some((name.clone(), path.clone(), std::fs::metadata(path).ok()?.len())))
        .collect();
    let Snapshot { out, done, mac_key, .. } = snapshot;
    let thread = std::thread::Builder::new().name("store-backup".into()).spawn(move || {
        let result = write(&Source { db: &db, cow: &cow, files: &files, mac_key: &mac_key }, &out);
        cow.active.store(false, Ordering::Release);
        let _ = done.send(result);
    });
    if let Err(e) = thread {
        tracing::error!(error = %e, "cannot start the backup thread");
    }
}

/// Writes the tree as of the starting point, then the files, to a temporary file that is
/// renamed to `out` once complete and synced.
/// What a backup copies, and the key that signs it.
struct Source<'a> {
    db: &'a sled::Db,
    cow: &'a CopyOnWrite,
    /// (name in the backup, path, length at the starting point)
    files: &'a [(String, PathBuf, u64)],
    mac_key: &'a hmac::Key,
}

fn write(source: &Source<'_>, out: &Path) -> Result<u64, StoreError> {
    let tmp = out.with_extension("partial");
    let result = write_to(source, &tmp);
    match result {
        Ok(count) => {
            std::fs::rename(&tmp, out).map_err(|e| io(&out.display().to_string(), e))?;
            if let Some(dir) = out.parent() {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(count)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_to(source: &Source<'_>, out: &Path) -> Result<u64, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let Source { db, cow, files, mac_key } = *source;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| io(&out.display().to_string(), e))?;
    let mut w = Signing { inner: BufWriter::new(file), mac: hmac::Context::with_key(mac_key) };
    let e = |err| io("writing the backup", err);
    w.put(MAGIC).map_err(e)?;
    let mut count = 0u64;
    for item in db.iter() {
        let (k, v) = item?;
        if let Some(value) = cow.visit(&k, v) {
            w.record(&k, &value).map_err(e)?;
            count += 1;
        }
    }
    for (k, v) in cow.not_visited() {
        w.record(&k, &v).map_err(e)?;
        count += 1;
    }
    for (name, path, len) in files {
        let mut f = match File::open(path) {
            Ok(f) => f.take(*len),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io(&path.display().to_string(), err)),
        };
        w.put(&[2]).map_err(e)?;
        w.put(&(name.len() as u16).to_be_bytes()).map_err(e)?;
        w.put(name.as_bytes()).map_err(e)?;
        w.put(&len.to_be_bytes()).map_err(e)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut copied = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(e)?;
            if n == 0 {
                break;
            }
            w.put(&buf[..n]).map_err(e)?;
            copied += n as u64;
        }
        if copied != *len {
            return Err(StoreError::Io(format!("{} shrank while it was copied", path.display())));
        }
    }
    w.put(&[0]).map_err(e)?;
    let tag = w.mac.sign();
    w.inner.write_all(tag.as_ref()).map_err(e)?;
    let file = w.inner.into_inner().map_err(|err| io("writing the backup", err.into_error()))?;
    file.sync_all().map_err(e)?;
    Ok(count)
}

/// What a backup file holds.
#[derive(Debug, Default)]
pub struct Contents {
    /// Store records.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Named files.
    pub files: Vec<(String, Vec<u8>)>,
    /// Whether a keyed MAC vouched for the file (false: a version 1 file, checksum only).
    pub authenticated: bool,
}

/// Reads and verifies a backup file; `mac_key` is `Crypto::backup_key` of the data keys the
/// store had when the backup was made.
pub fn read(path: &Path, mac_key: &hmac::Key) -> Result<Contents, StoreError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io(&path.display().to_string(), e))?;
    let bad = |why: &str| StoreError::Corrupt { key: path.display().to_string(), reason: why.to_string() };
    if bytes.len() < MAGIC.len() + 33 {
        return Err(bad("not an smsgate backup"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let authenticated = if bytes.starts_with(MAGIC) {
        hmac::verify(mac_key, body, tag).map_err(|_| {
            bad("authentication failed: the file is damaged, incomplete or altered, or was made with other data keys")
        })?;
        true
    } else if bytes.starts_with(MAGIC_V1) {
        if ring::digest::digest(&ring::digest::SHA256, body).as_ref() != tag {
            return Err(bad("checksum mismatch: the file is damaged or incomplete"));
        }
        false
    } else {
        return Err(bad("not an smsgate backup"));
    };
    let mut contents = Contents { authenticated, ..Contents::default() };
    let mut at = MAGIC.len();
    let take = |at: &mut usize, n: usize| -> Result<&[u8], StoreError> {
        let s = body.get(*at..*at + n).ok_or_else(|| bad("truncated"))?;
        *at += n;
        Ok(s)
    };
    loop {
        match take(&mut at, 1)?[0] {
            0 => break,
            1 => {
                let kl = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad("length"))?) as usize;
                let k = take(&mut at, kl)?.to_vec();
                let vl = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad("length"))?) as usize;
                let v = take(&mut at, vl)?.to_vec();
                contents.records.push((k, v));
            }
            2 => {
                let nl = u16::from_be_bytes(take(&mut at, 2)?.try_into().map_err(|_| bad("length"))?) as usize;
                let name = String::from_utf8(take(&mut at, nl)?.to_vec()).map_err(|_| bad("file name"))?;
                let len = u64::from_be_bytes(take(&mut at, 8)?.try_into().map_err(|_| bad("length"))?) as usize;
                contents.files.push((name, take(&mut at, len)?.to_vec()));
            }
            _ => return Err(bad("unknown section")),
        }
    }
    Ok(contents)
}

/// What a restore wrote.
#[derive(Debug)]
pub struct Restored {
    /// Store records.
    pub records: u64,
    /// Files (the audit log).
    pub files: usize,
    /// See [`Contents::authenticated`].
    pub authenticated: bool,
}

/// Restores a backup into `data_dir`, which must not hold a store yet, with the data keys
/// `crypto`: they must be the ones the backup's store was made with (see [`super::keycheck`]),
/// checked before anything is written. Files in the backup may only go under `audit/` and
/// never over a file that exists: whoever made the file cannot use it to replace the store or
/// anything else in the data directory.
pub fn restore(backup: &Path, data_dir: &Path, crypto: &crate::crypto::Crypto) -> Result<Restored, StoreError> {
    let mut contents = read(backup, &crypto.backup_key())?;
    let records: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = contents.records.drain(..).collect();
    let verified = super::keycheck::verify(&records, crypto)?;
    let store_dir = data_dir.join("store");
    if store_dir.join("db").exists() {
        return Err(StoreError::Io(format!(
            "{} already holds a store; restore only into an empty data directory",
            data_dir.display()
        )));
    }
    for (name, _) in &contents.files {
        let refuse = |reason: &str| StoreError::Corrupt { key: name.clone(), reason: reason.into() };
        let parts: Vec<_> = Path::new(name).components().collect();
        let under_audit = parts.len() >= 2 && parts[0] == std::path::Component::Normal(FILES_UNDER.as_ref());
        if !under_audit || !parts.iter().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(refuse("a backup restores files only under audit/"));
        }
        if data_dir.join(name).exists() {
            return Err(refuse("the file exists already; restore only into an empty data directory"));
        }
    }
    crate::fsutil::private_dir(&store_dir).map_err(|e| io(&store_dir.display().to_string(), e))?;
    let db = sled::Config::new().path(&store_dir).open()?;
    let count = records.len() as u64;
    let all: Vec<(Vec<u8>, Vec<u8>)> = records.into_iter().chain(verified.to_write).collect();
    for chunk in all.chunks(10_000) {
        let mut batch = sled::Batch::default();
        for (k, v) in chunk {
            batch.insert(k.as_slice(), v.as_slice());
        }
        db.apply_batch(batch)?;
    }
    db.flush()?;
    File::open(store_dir.join("db")).and_then(|f| f.sync_all()).map_err(|e| io("fsync", e))?;
    drop(db);
    for (name, bytes) in &contents.files {
        let path = data_dir.join(name);
        if let Some(dir) = path.parent() {
            crate::fsutil::private_dir(dir).map_err(|e| io(&dir.display().to_string(), e))?;
        }
        crate::fsutil::write_private(&path, bytes).map_err(|e| io(&path.display().to_string(), e))?;
    }
    Ok(Restored { records: count, files: contents.files.len(), authenticated: contents.authenticated })
}
