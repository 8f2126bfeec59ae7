//! Small file-system helpers: private files and directories, checks on secret files, random
//! tokens.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates (or truncates) `path` with mode 0600 (also when it existed) and writes `data`, then fsyncs it.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode when truncated.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens an existing one that its
/// group or others can enter: the data directory holds sealed data, blind indexes, the audit
/// log and the admin socket, and must not rely on the service manager's umask.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    make_private(dir, 0o700)
}

/// Sets `path` to `mode` if its group or others have any access to it now.
pub fn make_private(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{} has mode {current:04o} and cannot be made {mode:04o}: {e}", path.display()),
            )
        })?;
        tracing::warn!(path = %path.display(), was = format_args!("{current:04o}"), now = format_args!("{mode:04o}"), "tightened permissions");
    }
    Ok(())
}

/// Who can reach a secret file (the data keys): an `Err` when others can read it or anyone
/// but its owner can write it; `Ok(Some(warning))` when a group other than the process's own
/// can read it (0640 root:smsgate is fine when the service runs in group smsgate).
pub fn check_secret_file(path: &Path) -> Result<Option<String>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(format!(
            "{} is readable by every user (mode {mode:04o}); make it 0600 (owned by the service user) or 0640 root:<service group>",
            path.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{} can be changed by users other than its owner (mode {mode:04o}); make it 0600 or 0640",
            path.display()
        ));
    }
    if mode & 0o040 != 0 && !in_group(meta.gid()) {
        return Ok(Some(format!(
            "{} is readable by group {} (mode {mode:04o}), which is not this process's group; members of that group can read the data keys",
            path.display(),
            meta.gid()
        )));
    }
    Ok(None)
}

/// Whether this process runs with group `gid` (effective or supplementary).
fn in_group(gid: u32) -> bool {
    use rustix::process::{Gid, getegid, getgroups};
    let gid = Gid::from_raw(gid);
    getegid() == gid || getgroups().is_ok_and(|groups| groups.contains(&gid))
}

/// Turns off core dumps for this process (and the ptrace access that comes with them): its
/// memory holds phone numbers, message bodies and the data keys. Belt and braces with the
/// unit's `LimitCORE=0`, and effective where a crash handler ignores the core limit.
pub fn disable_core_dumps() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })?;
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// `n` bytes from the OS random source.
#[allow(clippy::panic)] // no entropy means no keys, tokens or nonces: nothing safe can continue
pub fn random_bytes(n: usize) -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; n];
    // SystemRandom reads getrandom(2); it only fails if the kernel has no entropy source at all,
    // in which case nothing secure can continue.
    if ring::rand::SystemRandom::new().fill(&mut buf).is_err() {
        panic!("the operating system's random number generator failed");
    }
    buf
}

/// A random u64 (for jitter and references, not secrets).
pub fn random_u64() -> u64 {
    let b = random_bytes(8);
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_dirs_are_created_0700_and_loose_ones_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("a/b");
        private_dir(&new).unwrap();
        assert_eq!((mode(&new), mode(&tmp.path().join("a"))), (0o700, 0o700));
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        chmod(&loose, 0o755);
        private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
    }

    #[test]
    fn private_files_stay_private_when_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("secret");
        std::fs::write(&f, "x").unwrap();
        chmod(&f, 0o644);
        write_private(&f, b"y").unwrap();
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn secret_files_readable_by_others_or_writable_by_non_owners_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("keys");
        write_private(&f, b"k").unwrap();
        assert_eq!(check_secret_file(&f), Ok(None));
        for refused in [0o644, 0o604, 0o620, 0o602, 0o660] {
            chmod(&f, refused);
            let e = check_secret_file(&f).unwrap_err();
            assert!(e.contains(&format!("{refused:04o}")), "{e}");
        }
        // Group-readable by this process's own group: fine.
        chmod(&f, 0o640);
        assert_eq!(check_secret_file(&f), Ok(None));
        assert!(check_secret_file(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn secret_files_readable_by_a_foreign_group_are_warned_about() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("keys");
        write_private(&f, b"k").unwrap();
        chmod(&f, 0o640);
        // Only root may hand a file to a group it is not in.
        let foreign = 54_321;
        if std::os::unix::fs::chown(&f, None, Some(foreign)).is_err() {
            eprintln!("SKIPPED: chown to a foreign group needs root");
            return;
        }
        let warning = check_secret_file(&f).unwrap().expect("a warning");
        assert!(warning.contains("54321"), "{warning}");
    }
}
