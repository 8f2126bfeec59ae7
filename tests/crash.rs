//! Crash recovery with real processes: the `smsgate` binary against the standalone simulator
//! (`smsgate smsc-sim --record`), several connections posting continuously, SIGKILL of the
//! gateway mid-load, restart on the same data, several cycles. Every message that got a 202
//! must reach the simulator; duplicates are bounded by the submits in flight at each kill.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_smsgate");
const CYCLES: usize = 3;
const CLIENTS: usize = 8;
const WINDOW: usize = 10;
const BINDS: usize = 2;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim(certs: &Certs, record: &Path) -> (Proc, Value) {
    let mut child = Command::new(BIN)
        .args(["smsc-sim", "--port", "0", "--control-port", "0", "--tls-port", "0", "--dlr-delay-ms", "5-50"])
        .arg("--cert")
        .arg(certs.path("smsc.crt"))
        .arg("--key")
        .arg(certs.path("smsc.key"))
        .arg("--record")
        .arg(record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let info: Value = serde_json::from_str(&line).unwrap();
    (Proc(child), info)
}

fn start_gateway(config: &Path, log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc(Command::new(BIN).arg("serve").arg("--config").arg(config).stdout(Stdio::null()).stderr(log).spawn().unwrap())
}

async fn wait_healthy(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = client.connect().await
            && c.post("/healthz", &json!({})).await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing_acknowledged() {
    let certs = Certs::new();
    let record = certs.path("record.jsonl");
    let (_sim, info) = start_sim(&certs, &record);
    let port = info["tls_port"].as_u64().unwrap() as u16;
    let data = tempfile::tempdir().unwrap();
    let api_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = config_text(data.path(), &certs, port, &format!("binds = {BINDS}\nwindow = {WINDOW}")).replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{api_port}\""),
        1,
    );
    let config = certs.path("smsgate.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["keys", "create", "--name", "crash", "--scopes", "send,read", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().find_map(|l| l.strip_prefix("token:")).unwrap().trim().to_string();
    let client = Client::new(format!("127.0.0.1:{api_port}").parse().unwrap(), &certs.path("api.crt"), Some(token));
    let log = certs.path("gateway.log");

    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    for cycle in 0..CYCLES {
        let gateway = start_gateway(&config, &log);
        wait_healthy(&client).await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..CLIENTS {
            let (client, accepted, stop) = (client.clone(), accepted.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut conn) = client.connect().await else {
                    return;
                };
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = format!("crash c{cycle} t{t} n{n}");
                    n += 1;
                    match conn.post("/v1/messages", &json!({"to": "+14155550123", "body": body})).await {
                        Ok((StatusCode::ACCEPTED, _)) => {
                            accepted.lock().unwrap().insert(body);
                        }
                        Ok((status, v)) => panic!("unexpected {status}: {v}"),
                        Err(_) => return, // the gateway died under us: that request got no 202
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(gateway); // SIGKILL, mid-load
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Last start: no kill; let everything drain.
    let _gateway = start_gateway(&config, &log);
    wait_healthy(&client).await;
    let accepted = accepted.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in read_record(&record) {
            if r["command_status"] == 0
                && let Some(t) = r["text"].as_str()
            {
                *counts.entry(t.to_string()).or_default() += 1;
            }
        }
        if accepted.iter().all(|b| counts.contains_key(b)) || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing: Vec<&String> = accepted.iter().filter(|b| !counts.contains_key(*b)).collect();
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let bound = WINDOW * BINDS * CYCLES;
    println!(
        "crash test: {CYCLES} SIGKILL cycles, {} messages acknowledged (202), {} missing, {duplicates} duplicate submits (bound {bound})",
        accepted.len(),
        missing.len()
    );
    assert!(accepted.len() > 100, "the load was too light to prove anything");
    assert!(missing.is_empty(), "acknowledged but never submitted: {:?}", &missing[..missing.len().min(10)]);
    assert!(duplicates <= bound, "{duplicates} duplicates exceed window × binds × kills = {bound}");
}
