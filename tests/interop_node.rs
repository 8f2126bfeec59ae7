//! Interop against an independent SMPP implementation: `shared/tools/smsc-sim` (node-smpp).
//! Skipped with a message when node or the simulator's `node_modules` is missing, unless
//! `SMSGATE_REQUIRE_NODE=1` (as `.ci/run` sets), in which case that is a failure.

mod common;

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_receipt_and_inbound_through_the_node_simulator_over_tls() {
    let certs = Certs::new();
    let Some(sim) = SimProcess::node(&certs, &["--dlr-delay-ms", "20", "--system-id", "gw"]) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(parse_config(&config_text(data.path(), &certs, sim.tls_port(), "")), &certs).await;
    let long =
        "This is a long reminder for your appointment; please bring your insurance card and arrive early. ".repeat(4);
    let bodies = ["Plain GSM text with {braces} and €", "Emoji and Cyrillic: Привет 👋", long.as_str()];
    let mut ids = Vec::new();
    for b in bodies {
        let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": b, "from": "CLINIC"})).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
        ids.push(a.json["id"].as_str().unwrap().to_string());
    }
    gw.client.wait_status(&ids, PATIENCE, &["delivered"]).await;
    // What the independent implementation decoded is what we meant to send.
    let rec = sim.records();
    let single: Vec<&str> = rec.iter().filter(|r| r["concat"].is_null()).filter_map(|r| r["text"].as_str()).collect();
    assert!(single.contains(&bodies[0]), "{single:?}");
    assert!(single.contains(&bodies[1]), "{single:?}");
    let mut parts: Vec<&Value> = rec.iter().filter(|r| r["concat"].is_object()).collect();
    parts.sort_by_key(|r| r["concat"]["seq"].as_u64());
    assert!(parts.len() >= 3);
    assert_eq!(parts.iter().map(|r| r["text"].as_str().unwrap()).collect::<String>(), long);
    assert!(rec.iter().all(|r| r["source"] == "CLINIC" && r["source_ton"] == 5 && r["dest_ton"] == 1));

    // A handset's text comes back as deliver_sm and is stored before it is acknowledged.
    sim.mo("+14155550123", "CLINIC", "Running late, sorry").await;
    let inbound = smsgate::inbound::list(&gw.gateway.store, Some("default"), None, 10).unwrap();
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].content.body, "Running late, sorry");
    assert_eq!(inbound[0].content.from, "+14155550123");
    assert_eq!(inbound[0].kind, "text");
    gw.gateway.shutdown().await;
}
