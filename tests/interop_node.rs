//! Interop against an independent SMPP implementation: `shared/tools/smsc-sim` (node-smpp).
//! Skipped with a message when node or the simulator's `node_modules` is missing, unless
//! `SMSGATE_REQUIRE_NODE=1` (as `.ci/run` sets), in which case that is a failure.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

pub struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sim_dir() -> PathBuf {
    std::env::var_os("SMSC_SIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/smsc-sim"))
}

/// Starts the node simulator, or explains why not.
pub fn start_node_sim(certs: &Certs, extra: &[&str]) -> Option<(Node, Value)> {
    let dir = sim_dir();
    let required = std::env::var("SMSGATE_REQUIRE_NODE").is_ok_and(|v| v == "1");
    let node_ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok || !dir.join("node_modules").is_dir() {
        let why = format!("node or {}/node_modules is missing (run `npm ci` there)", dir.display());
        assert!(!required, "SMSGATE_REQUIRE_NODE=1 but {why}");
        eprintln!("SKIPPED: interop with the node simulator: {why}");
        return None;
    }
    let mut child = Command::new("node")
        .arg(dir.join("sim.js"))
        .args(["--port", "0", "--control-port", "0", "--tls-port", "0", "--system-id", "gw"])
        .arg("--cert")
        .arg(certs.path("smsc.crt"))
        .arg("--key")
        .arg(certs.path("smsc.key"))
        .arg("--record")
        .arg(certs.path("node-record.jsonl"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let info: Value = serde_json::from_str(&line).expect("startup line");
    Some((Node(child), info))
}

#[tokio::test]
async fn submit_receipt_and_inbound_through_the_node_simulator_over_tls() {
    let certs = Certs::new();
    let Some((_node, info)) = start_node_sim(&certs, &["--dlr-delay-ms", "20"]) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = info["tls_port"].as_u64().unwrap() as u16;
    let gw = TestGateway::start(parse_config(&config_text(data.path(), &certs, port, "")), &certs).await;
    let long =
        "This is a long reminder for your appointment; please bring your insurance card and arrive early. ".repeat(4);
    let bodies = ["Plain GSM text with {braces} and €", "Emoji and Cyrillic: Привет 👋", long.as_str()];
    let mut ids = Vec::new();
    for b in bodies {
        let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": b, "from": "CLINIC"})).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
        ids.push(a.json["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let m = gw.client.wait_message(id, Duration::from_secs(10), |m| m["status"] == "delivered").await;
        assert_eq!(m["status"], "delivered", "{m}");
    }
    // What the independent implementation decoded is what we meant to send.
    let rec = read_record(&certs.path("node-record.jsonl"));
    let single: Vec<&str> = rec.iter().filter(|r| r["concat"].is_null()).filter_map(|r| r["text"].as_str()).collect();
    assert!(single.contains(&bodies[0]), "{single:?}");
    assert!(single.contains(&bodies[1]), "{single:?}");
    let mut parts: Vec<&Value> = rec.iter().filter(|r| r["concat"].is_object()).collect();
    parts.sort_by_key(|r| r["concat"]["seq"].as_u64());
    assert!(parts.len() >= 3);
    assert_eq!(parts.iter().map(|r| r["text"].as_str().unwrap()).collect::<String>(), long);
    assert!(rec.iter().all(|r| r["source"] == "CLINIC" && r["source_ton"] == 5 && r["dest_ton"] == 1));

    // A handset's text comes back as deliver_sm and is stored.
    let control = info["control_port"].as_u64().unwrap();
    // curl blocks, and the gateway runs on this test's runtime: keep it off the runtime.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-s",
                "-X",
                "POST",
                &format!("http://127.0.0.1:{control}/mo"),
                "-d",
                r#"{"from":"+14155550123","to":"CLINIC","text":"Running late, sorry"}"#,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let mo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(mo["ok"], true, "{mo}");
    assert_eq!(mo["command_status"][0], 0);
    let inbound = smsgate::inbound::list(&gw.gateway.store, None, 10).unwrap();
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].content.body, "Running late, sorry");
    assert_eq!(inbound[0].content.from, "+14155550123");
    assert_eq!(inbound[0].kind, "text");
    gw.gateway.shutdown().await;
}
