//! Shared helpers for the integration tests: everything real (TLS sockets, sled in temp
//! dirs, the `smsgate` binary, the node simulator), with one way each to wait, to start a
//! process, to skip, and to read what a simulator received.
#![allow(dead_code, unused_imports)]

mod client;
mod gateway;
mod receiver;
mod sim;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use client::{Answer, Client, Conn, http_text};
pub use gateway::{GatewayProcess, TestGateway, config_file_with_key, config_file_with_scopes, parse_config};
pub use receiver::{Deliveries, Delivery, Receiver};
pub use sim::{Kind, Reserved, SimProcess, TestSim};

/// A temp dir with self-signed certificates for the API and the SMSC, and a data key file.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        smsgate::fsutil::write_private(
            &dir.path().join("data.keys"),
            smsgate::crypto::Crypto::generate_file_text().as_bytes(),
        )
        .unwrap();
        for name in ["api", "smsc"] {
            smsgate::tls::write_self_signed(
                &["localhost", "127.0.0.1"],
                &dir.path().join(format!("{name}.crt")),
                &dir.path().join(format!("{name}.key")),
            )
            .unwrap();
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The generous deadline for anything a test waits for: long enough for a loaded 2-core CI
/// machine, short enough that a hang fails instead of stalling CI.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Gateway config text for one TLS carrier ("sim") on `port`. Each line of `extra` sets a
/// carrier key, replacing the default line for that key if there is one.
pub fn config_text(data_dir: &Path, certs: &Certs, port: u16, extra: &str) -> String {
    let mut text = format!(
        r#"
data_dir = "{data}"
[crypto]
key_file = "{keys}"
[api]
listen = "127.0.0.1:0"
tls_cert = "{api_crt}"
tls_key = "{api_key}"
[metrics]
listen = "127.0.0.1:0"
[dispatch]
retry_base_ms = 200
[[carriers]]
name = "sim"
host = "localhost"
port = {port}
tls = true
ca_file = "{smsc_crt}"
system_id = "gw"
enquire_link_secs = 5
response_timeout_secs = 3
"#,
        data = data_dir.display(),
        api_crt = certs.path("api.crt").display(),
        api_key = certs.path("api.key").display(),
        smsc_crt = certs.path("smsc.crt").display(),
        keys = certs.path("data.keys").display(),
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let key = format!("{} =", line.split('=').next().unwrap_or_default().trim());
        match text.lines().find(|l| l.starts_with(&key)).map(String::from) {
            Some(old) => text = text.replace(&old, line),
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

/// Config text with TLS carriers (name, port, extra carrier keys), `routes` (TOML) and extra
/// top-level sections.
pub fn carriers_config(
    data: &Path,
    certs: &Certs,
    carriers: &[(&str, u16, &str)],
    routes: &str,
    sections: &str,
) -> String {
    let mut text = format!(
        "data_dir = \"{}\"\n[crypto]\nkey_file = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[dispatch]\nretry_base_ms = 200\n{sections}\n",
        data.display(),
        certs.path("data.keys").display(),
        certs.path("api.crt").display(),
        certs.path("api.key").display(),
    );
    for (name, port, extra) in carriers {
        text.push_str(&format!(
            "[[carriers]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {port}\ntls = true\nca_file = \"{}\"\nsystem_id = \"gw\"\nenquire_link_secs = 5\nresponse_timeout_secs = 3\n{extra}\n",
            certs.path("smsc.crt").display()
        ));
    }
    text + routes
}

/// Waits until `f` is true, or panics after `timeout` naming `what`.
pub async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the async check `f` is true, or panics after `timeout` naming `what`.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Says that a test did not run because `tool` is missing, on the terminal (past libtest's
/// output capture, so the run shows it); or fails it when `SMSGATE_REQUIRE_<TOOL>=1` (CI).
pub fn skip(tool: &str, why: &str) {
    use std::io::Write;
    let var = format!("SMSGATE_REQUIRE_{}", tool.to_ascii_uppercase().replace('-', "_"));
    assert!(std::env::var(&var).as_deref() != Ok("1"), "{var}=1 but {why}");
    let _ = writeln!(std::io::stderr(), "SKIPPED ({tool} unavailable): {why}");
}

/// Whether `cmd --version` runs; skips (see [`skip`]) when it does not.
pub fn have(tool: &str, cmd: &str) -> bool {
    let ok = std::process::Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip(tool, &format!("`{cmd}` is not installed"));
    }
    ok
}

/// Reads a simulator record file (either simulator's format). The simulator may be writing
/// while this reads: a last line without its newline is not complete yet and is left out.
pub fn read_record(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The `text` of every accepted submit_sm in a simulator record, with how often it came.
pub fn submitted_texts(record: &Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for r in read_record(record) {
        if r["command_status"] == 0
            && let Some(t) = r["text"].as_str()
        {
            *counts.entry(t.to_string()).or_default() += 1;
        }
    }
    counts
}

/// The value of one sample line (`name{labels} value`) in a Prometheus exposition, if present.
pub fn metric(exposition: &str, name_and_labels: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
}

/// Waits until `/readyz` reports `binds` transmitting binds for `carrier`.
pub async fn wait_ready(client: &Client, carrier: &str, binds: u64) {
    until(PATIENCE, &format!("{carrier} to have {binds} bind(s)"), || async {
        client.get("/readyz").await.json["carriers"][carrier]["transmitting_binds"] == binds
    })
    .await;
}

/// A number unique within this test process (file names).
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Reads the first line a child prints on stdout, waiting at most `timeout`.
pub fn first_line(stdout: std::process::ChildStdout, timeout: Duration) -> Option<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).ok().filter(|l| !l.is_empty())
}

/// Waits up to `timeout` for a child to end.
pub fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a child's output to its end on a thread of its own (so that two pipes never block
/// each other).
fn read_all(mut r: Box<dyn std::io::Read + Send>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Runs the `smsgate` binary with `args` (blocking, with a deadline); (status, stdout, stderr).
pub fn smsgate(args: &[&std::ffi::OsStr]) -> (std::process::ExitStatus, String, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child, Duration::from_secs(120)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("smsgate {args:?} did not finish in 120 s")
    });
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Runs the calling test again, as a child process, inside a new network namespace that has
/// only a loopback interface (no route to any other host) and `hosts` as its `/etc/hosts`.
/// Returns true in that child (run the test's body there) and false in the parent, after the
/// child passed. Tests that hand the gateway URLs it must refuse run this way, so that a URL
/// wrongly accepted cannot reach a real host. Needs root (CI is); otherwise skipped
/// (`SMSGATE_REQUIRE_NETNS=1` makes that a failure).
pub fn isolated(test: &str, hosts: &str) -> bool {
    if std::env::var("SMSGATE_ISOLATED").as_deref() == Ok("1") {
        return true;
    }
    let probe = std::process::Command::new("unshare").args(["--net", "--mount", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("netns", "`unshare --net --mount` is not permitted here (needs root)");
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts_file = dir.path().join("hosts");
    std::fs::write(&hosts_file, format!("127.0.0.1 localhost\n::1 localhost\n{hosts}\n")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new("unshare")
        .args(["--net", "--mount", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && mount --bind "$HOSTS_FILE" /etc/hosts && exec "$@""#)
        .arg("sh")
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("SMSGATE_ISOLATED", "1")
        .env("HOSTS_FILE", &hosts_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let status = wait_exit(&mut child, Duration::from_secs(300)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{test} in its network namespace did not finish in 300 s")
    });
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    print!("{stdout}");
    assert!(status.success(), "{test} failed in its network namespace:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{test} did not run in its network namespace:\n{stdout}");
    false
}
