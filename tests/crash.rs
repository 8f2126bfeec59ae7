//! Crash recovery with real processes: the `smsgate` binary against the standalone simulator
//! (`smsgate smsc-sim --record`), several connections posting continuously, SIGKILL of the
//! gateway mid-load, restart on the same data, several cycles. Every message that got a 202
//! must reach the simulator; duplicates are bounded by the submits in flight at each kill.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hyper::StatusCode;
use serde_json::json;

const CYCLES: usize = 3;
const CLIENTS: usize = 8;
const WINDOW: usize = 10;
const BINDS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing_acknowledged() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &["--dlr-delay-ms", "5-50"]);
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), &format!("binds = {BINDS}\nwindow = {WINDOW}"));
    let (config, token) = config_file_with_key(&certs, &text);
    let log = certs.path("gateway.log");

    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    for cycle in 0..CYCLES {
        let gateway = GatewayProcess::start(&config, &log, &[]).expect("the gateway starts");
        let client = gateway.client(&certs, &token);
        let stop = Arc::new(AtomicBool::new(false));
        let in_cycle = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for t in 0..CLIENTS {
            let (client, accepted, stop, in_cycle) = (client.clone(), accepted.clone(), stop.clone(), in_cycle.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut conn) = client.connect().await else {
                    return;
                };
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("crash c{cycle} t{t} n{n}");
                    n += 1;
                    match conn.post("/v1/messages", &json!({"to": "+14155550123", "body": body})).await {
                        Ok((StatusCode::ACCEPTED, _)) => {
                            accepted.lock().unwrap().insert(body);
                            in_cycle.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, v)) => panic!("unexpected {status}: {v}"),
                        Err(_) => return, // the gateway died under us: that request got no 202
                    }
                }
            }));
        }
        // Kill mid-load: once this cycle's load is well under way (not after a fixed time).
        eventually(PATIENCE, "load in this cycle", || in_cycle.load(Ordering::Relaxed) >= 150).await;
        drop(gateway); // SIGKILL
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Last start: no kill; let everything drain.
    let _gateway = GatewayProcess::start(&config, &log, &[]).expect("the gateway starts");
    let accepted = accepted.lock().unwrap().clone();
    until(Duration::from_secs(90), "every acknowledged message at the simulator", || async {
        let counts = submitted_texts(&sim.record);
        accepted.iter().all(|b| counts.contains_key(b))
    })
    .await;
    let counts = submitted_texts(&sim.record);
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let bound = WINDOW * BINDS * CYCLES;
    println!(
        "crash test: {CYCLES} SIGKILL cycles, {} messages acknowledged (202), 0 missing, {duplicates} duplicate submits (bound {bound})",
        accepted.len(),
    );
    assert!(duplicates <= bound, "{duplicates} duplicates exceed window × binds × kills = {bound}");
}
