//! Fail-stop with the real binary: a store write that fails makes `smsgate serve` answer 503,
//! stop submitting and exit with status 74 (so that systemd's `Restart=on-failure` brings it
//! back), and the restart delivers every message that got a 202. Once with an injected
//! fdatasync failure (`SMSGATE_FAULTS`, test builds only), once with a real full file system:
//! a 64 MiB ext4 image mounted with `mount -o loop` (needs root; CI runs as root and sets
//! `SMSGATE_REQUIRE_LOOP_MOUNT=1` so that it cannot skip there).

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use serde_json::json;

const WINDOW: usize = 10;
const BINDS: usize = 2;
const EXIT_STORE_FAILED: i32 = 74;

/// Posts from `clients` connections until `stop`; counts answers and keeps the 202'd bodies.
struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<HashSet<String>>>,
    refused: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &Client, clients: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
        let refused = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|t| {
                let (client, stop, accepted, refused) =
                    (client.clone(), stop.clone(), accepted.clone(), refused.clone());
                let tag = tag.to_string();
                tokio::spawn(async move {
                    let mut n = 0;
                    'outer: while !stop.load(Ordering::Relaxed) {
                        let Ok(mut conn) = client.connect().await else { break };
                        while !stop.load(Ordering::Relaxed) {
                            let body = format!("{tag} t{t} n{n}");
                            n += 1;
                            match conn.post("/v1/messages", &json!({"to": "+14155550123", "body": body})).await {
                                Ok((StatusCode::ACCEPTED, _)) => {
                                    accepted.lock().unwrap().insert(body);
                                }
                                Ok((StatusCode::SERVICE_UNAVAILABLE, j)) => {
                                    let code = j["error"]["code"].as_str().unwrap_or_default();
                                    assert!(["store_unavailable", "shutting_down"].contains(&code), "{j}");
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                Ok((status, j)) => panic!("unexpected {status}: {j}"),
                                Err(_) => continue 'outer, // the gateway went away: no 202 for that one
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, accepted, refused, tasks }
    }

    async fn finish(self) -> (HashSet<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let accepted = self.accepted.lock().unwrap().clone();
        (accepted, self.refused.load(Ordering::Relaxed))
    }
}

/// Waits until every body in `accepted` reached the simulator; returns (missing, duplicates).
async fn arrivals(record: &Path, accepted: &HashSet<String>, timeout: Duration) -> (Vec<String>, usize) {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = submitted_texts(record);
        let missing: Vec<String> = accepted.iter().filter(|b| !counts.contains_key(*b)).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            let duplicates = counts.values().map(|c| c - 1).sum();
            return (missing, duplicates);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn gateway_config(certs: &Certs, data: &Path, sim_port: u16, extra_top: &str) -> String {
    let text = config_text(data, certs, sim_port, &format!("binds = {BINDS}\nwindow = {WINDOW}"));
    format!("{extra_top}\n{text}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_74_when_fdatasync_fails_and_a_restart_delivers_everything() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) = config_file_with_key(&certs, &gateway_config(&certs, data.path(), sim.tls_port(), ""));
    let log = certs.path("gateway.log");
    let mut gw = GatewayProcess::start(&config, &log, &[("SMSGATE_FAULTS", "fail_sync_at=150")]).expect("starts");
    let load = Load::start(&gw.client(&certs, &token), 4, "fsync");
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(60));
        (s, gw)
    })
    .await
    .unwrap();
    let (status, _gw) = status;
    let (accepted, refused) = load.finish().await;
    let status = status.expect("the gateway exits on its own after the failed fdatasync");
    println!("injected fdatasync failure: {} accepted, {refused} refused with 503, exit {status}", accepted.len());
    assert_eq!(status.code(), Some(EXIT_STORE_FAILED), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(accepted.len() > 20, "the load got going before the failure");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("injected fdatasync failure"), "the log says why");

    let _gw = GatewayProcess::start(&config, &log, &[]).expect("restarts");
    let (missing, duplicates) = arrivals(&sim.record, &accepted, Duration::from_secs(60)).await;
    println!("after the restart: {} missing, {duplicates} duplicates (bound {})", missing.len(), WINDOW * BINDS);
    assert!(missing.is_empty(), "acknowledged but never submitted: {:?}", &missing[..missing.len().min(5)]);
    assert!(duplicates <= WINDOW * BINDS, "{duplicates} duplicates");

    let out = Command::new(env!("CARGO_BIN_EXE_smsgate"))
        .args(["quarantine", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 record(s) set aside"));
}

/// A loop-mounted ext4 image, unmounted (lazily) on drop.
struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn new(base: &Path, size_mb: u64) -> Option<LoopMount> {
        let skip = |why: String| {
            skip("loop-mount", &format!("full-disk test: {why}"));
            None
        };
        let image = base.join("disk.img");
        let dir = base.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let run = |cmd: &mut Command| {
            cmd.output().map_err(|e| e.to_string()).and_then(|o| {
                if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }
            })
        };
        if let Err(e) = run(Command::new("truncate").args(["-s", &format!("{size_mb}M")]).arg(&image)) {
            return skip(format!("truncate: {e}"));
        }
        // -m 0: no blocks reserved for root (the test runs as root), so "full" is full.
        if let Err(e) = run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image)) {
            return skip(format!("mkfs.ext4: {e}"));
        }
        if let Err(e) = run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&dir)) {
            return skip(format!("mount -o loop (needs root): {e}"));
        }
        Some(LoopMount { dir })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// Writes zeros into `path` until the file system has no byte left.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_stop_and_everything_is_delivered_once_space_returns() {
    let certs = Certs::new();
    let base = tempfile::tempdir().unwrap();
    let Some(mount) = LoopMount::new(base.path(), 64) else { return };
    let data = mount.dir.join("data");
    let sim = SimProcess::builtin(&certs, &[]);
    // A 1 MiB floor: accepts stop just short of full; the filler below takes the rest.
    let text = gateway_config(&certs, &data, sim.tls_port(), "")
        .replace("[dispatch]", "[queue]\nmin_free_disk_mb = 1\n[dispatch]");
    let (config, token) = config_file_with_key(&certs, &text);
    let log = certs.path("gateway.log");
    let mut gw = GatewayProcess::start(&config, &log, &[]).expect("starts");
    let client = gw.client(&certs, &token);
    let load = Load::start(&client, 4, "disk");
    let accepted = load.accepted.clone();
    eventually(PATIENCE, "load before the disk fills", || accepted.lock().unwrap().len() >= 200).await;
    let before_full = load.accepted.lock().unwrap().len();
    let filler = mount.dir.join("filler");
    let filled = tokio::task::spawn_blocking({
        let f = filler.clone();
        move || fill(&f)
    })
    .await
    .unwrap();
    let full_at = Instant::now();
    // Full to the last byte: the next write the store needs fails, and serve exits.
    let (status, gw) = tokio::task::spawn_blocking(move || (gw.wait_exit(Duration::from_secs(120)), gw)).await.unwrap();
    drop(gw);
    let (accepted, refused) = load.finish().await;
    let status = status.expect("the gateway exits on its own when the disk is full");
    println!(
        "full disk: {before_full} accepted before filling ({filled} bytes), {} in all, {refused} × 503, exit {status} {:?} after filling",
        accepted.len(),
        full_at.elapsed()
    );
    assert_ne!(status.code(), Some(0), "a failed store is a failure exit");
    // A restart on the still-full disk stops before binding (nothing submitted it cannot record).
    let submits_before = submitted_texts(&sim.record).values().sum::<usize>();
    match GatewayProcess::start(&config, &log, &[]) {
        Ok(mut still) => {
            let s = tokio::task::spawn_blocking(move || still.wait_exit(Duration::from_secs(30))).await.unwrap();
            println!("restart on a full disk: it started, then exited {s:?}");
        }
        Err(status) => println!("restart on a full disk: refused to start ({status})"),
    }
    assert_eq!(
        submitted_texts(&sim.record).values().sum::<usize>(),
        submits_before,
        "a restart on a full disk submits nothing it could not record"
    );
    // The space comes back; systemd's next restart serves again.
    std::fs::remove_file(&filler).unwrap();
    let _ = Command::new("sync").output();
    let freed = Instant::now();
    let gw = loop {
        match GatewayProcess::start(&config, &log, &[]) {
            Ok(g) => break g,
            Err(status) => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(8).collect();
                assert!(freed.elapsed() < Duration::from_secs(60), "never came back: {status}: {tail:#?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let client = gw.client(&certs, &token);
    until(Duration::from_secs(30), "readyz", || async { client.get("/readyz").await.status == StatusCode::OK }).await;
    let back = freed.elapsed();
    let (missing, duplicates) = arrivals(&sim.record, &accepted, Duration::from_secs(90)).await;
    println!(
        "space returned: serving again after {back:?}; {} acknowledged, {} lost, {duplicates} duplicates (bound {})",
        accepted.len(),
        missing.len(),
        WINDOW * BINDS,
    );
    assert!(missing.is_empty(), "acknowledged but lost: {:?}", &missing[..missing.len().min(5)]);
    assert!(duplicates <= WINDOW * BINDS, "{duplicates} duplicates exceed window × binds");
    let a = client.post("/v1/messages", &json!({"to": "+14155550123", "body": "after the disk came back"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    drop(gw);
    drop(mount);
}
