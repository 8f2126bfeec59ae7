//! Failure paths, in process with injected faults (test builds only, `smsgate::faults`) and
//! real sockets, TLS and sled: a failed fdatasync stops everything that promises durability;
//! a client that hangs up does not strand its message; an idempotent retry never answers
//! before the request it repeats is durable; long messages pass windows smaller than their
//! part count; a carrier that dies with a full window neither holds messages nor blocks
//! failover; window slots outlive a reconnect; a partly submitted message stays on its
//! carrier; bad records are set aside and orphaned queue entries re-routed; a dispatcher
//! that panics comes back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use hyper::StatusCode;
use serde_json::{Value, json};
use smsgate::faults::Faults;
use smsgate::sim::SimConfig;
use smsgate::store::Op;

const TO: &str = "+14155550123";

async fn post(gw: &TestGateway, body: &str) -> (StatusCode, Value) {
    let a = gw.client.post("/v1/messages", &json!({"to": TO, "body": body})).await;
    (a.status, a.json)
}

async fn accept(gw: &TestGateway, body: &str) -> String {
    let (status, j) = post(gw, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{j}");
    j["id"].as_str().unwrap().to_string()
}

async fn wait_delivered(client: &Client, ids: &[String], timeout: Duration) {
    client.wait_status(ids, timeout, &["delivered"]).await;
}

/// With the carrier or beyond: a receipt the SMSC sent while the store could not take it, or
/// that a dying SMSC never sent, is the SMSC's to send again (these simulators do not).
const WITH_THE_CARRIER: &[&str] = &["submitted", "delivered"];

fn sim_submits(sim: &TestSim) -> u64 {
    sim.submits()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fdatasync_stops_accepts_and_submits_and_a_restart_delivers_everything() {
    let certs = Certs::new();
    let record = certs.path("fsync.jsonl");
    // 200 ms answers through a window of 4: 20 messages a second, so the 100 take 5 s.
    let sim =
        TestSim::start(&certs, SimConfig { resp_delay_ms: 200, ..SimConfig::default() }, Some(record.clone())).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "binds = 1\nwindow = 4");
    let faults = Faults::default();
    let gw = TestGateway::start_with(parse_config(&text), &certs, faults.clone()).await;
    let bodies: Vec<String> = (0..100).map(|i| format!("fsync {i}")).collect();
    let ids = gw.client.send_batch(TO, &bodies).await;
    faults.fail_sync_at(1);
    // Whichever commit comes next (an accept, a submit result or a receipt) fails.
    let (status, j) = post(&gw, "after the failure").await;
    assert_eq!((status, j["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable")));
    let ready = gw.client.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.json);
    assert_eq!(ready.json["store"], "failed");
    assert!(ready.json["store_error"].as_str().unwrap().contains("fdatasync"), "{}", ready.json);
    // Submits in flight at the failure may still arrive (at most window × binds); nothing
    // new is taken: the rest of the 100 waits for the restart.
    let at_failure = sim_submits(&sim);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let later = sim_submits(&sim);
    println!("fdatasync failure: {at_failure} submits when it failed, {later} two seconds later");
    assert!(later <= at_failure + 4, "no new submit_sm after the store failed ({at_failure} → {later})");
    assert!(later < 100, "the dispatcher stopped");
    assert_eq!(post(&gw, "still failed").await.0, StatusCode::SERVICE_UNAVAILABLE);
    let token = gw.client.token.clone();
    gw.gateway.shutdown().await;

    // The restart (what systemd does after the exit) delivers every acknowledged message.
    let gateway = smsgate::gateway::Gateway::start(parse_config(&text)).await.unwrap();
    let client = Client::new(gateway.api_addr, &certs.path("api.crt"), token);
    client.wait_status(&ids, Duration::from_secs(30), WITH_THE_CARRIER).await;
    let arrived = submitted_texts(&record);
    let duplicates: usize = arrived.values().map(|n| n - 1).sum();
    println!("after the restart: {} acknowledged, {} arrived, {duplicates} duplicates", ids.len(), arrived.len());
    assert!(bodies.iter().all(|b| arrived.contains_key(b)), "every acknowledged message reached the carrier");
    assert!(duplicates <= 4, "{duplicates} duplicates exceed window × binds");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_its_stream_does_not_strand_the_message() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), Some(certs.path("reset.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let gw = TestGateway::start_with(parse_config(&text), &certs, faults.clone()).await;
    let mut h2 = gw.client.h2().await;
    faults.hold_commits(true);
    let request = h2.send_request(gw.client.h2_post("/v1/messages", &json!({"to": TO, "body": "hung up"}), &[]));
    let pending = tokio::spawn(request);
    eventually(Duration::from_secs(10), "the accept's commit to reach the writer", || faults.held_commits() >= 1).await;
    // The client gives up: its stream is reset while the writer holds the commit.
    pending.abort();
    let _ = pending.await;
    drop(h2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    faults.hold_commits(false);
    // Committed, so queued and sent: no restart needed.
    until(Duration::from_secs(10), "the message to reach the carrier", || async {
        submitted_texts(&certs.path("reset.jsonl")).contains_key("hung up")
    })
    .await;
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_waits_for_the_first_requests_fsync() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let gw = TestGateway::start_with(parse_config(&text), &certs, faults.clone()).await;
    let body = json!({"to": TO, "body": "once"});
    let key = [("idempotency-key", "k-1")];
    faults.hold_commits(true);
    let mut first_conn = gw.client.h2().await;
    let first = tokio::spawn(first_conn.send_request(gw.client.h2_post("/v1/messages", &body, &key)));
    // Held after apply: sled shows the idempotency entry, the disk does not have it yet.
    eventually(Duration::from_secs(10), "the first request's commit to be applied", || faults.held_commits() >= 1)
        .await;
    let mut retry_conn = gw.client.h2().await;
    let retry = tokio::spawn(retry_conn.send_request(gw.client.h2_post("/v1/messages", &body, &key)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!retry.is_finished(), "the retry answered before the first request was durable");
    assert!(!first.is_finished());
    faults.hold_commits(false);
    let first = first.await.unwrap().unwrap();
    let retry = retry.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.status(), StatusCode::ACCEPTED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let a: Value = serde_json::from_slice(&first.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let b: Value = serde_json::from_slice(&retry.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(a["id"], b["id"]);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_messages_pass_windows_smaller_than_their_part_count() {
    // 1600 Cyrillic letters: UCS-2, 24 parts of 67 characters.
    let long = "ж".repeat(1600);
    for window in [1, 2, 10] {
        let certs = Certs::new();
        let record = certs.path("long.jsonl");
        let sim = TestSim::start(&certs, SimConfig::default(), Some(record.clone())).await;
        let data = tempfile::tempdir().unwrap();
        let text = config_text(data.path(), &certs, sim.tls_port(), &format!("binds = 1\nwindow = {window}"));
        let gw = TestGateway::start(parse_config(&text), &certs).await;
        let (status, j) = post(&gw, &long).await;
        assert_eq!((status, j["segments"].as_u64()), (StatusCode::ACCEPTED, Some(24)), "{j}");
        let long_id = j["id"].as_str().unwrap().to_string();
        let short_id = accept(&gw, "behind the long one").await;
        let started = Instant::now();
        wait_delivered(&gw.client, &[long_id, short_id], Duration::from_secs(20)).await;
        println!("window {window}: 24-part message and the one behind it delivered in {:?}", started.elapsed());
        assert_eq!(sim_submits(&sim), 25, "24 parts and the short message, each once");
        gw.gateway.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_carrier_gives_back_the_parts_it_never_took() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig { resp_delay_ms: 400, ..SimConfig::default() }, None).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "binds = 1\nwindow = 1");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(accept(&gw, &format!("waiting {i}")).await);
    }
    until(Duration::from_secs(10), "the first submit", || async { sim_submits(&sim) >= 1 }).await;
    // The carrier dies with its window full, one part in its channel and the dispatcher
    // waiting to hand over the next.
    sim.stop();
    // Every message not with the carrier can be cancelled within the hand-over timeout
    // (the carrier's response timeout, 3 s here): nothing stays claimed for the outage.
    for id in &ids[1..] {
        let started = Instant::now();
        until(Duration::from_secs(15), "a cancel to succeed", || async {
            let a = gw.client.delete(&format!("/v1/messages/{id}")).await;
            a.status == StatusCode::OK && a.json["status"] == "cancelled"
        })
        .await;
        println!("cancelled {id} {:?} after the carrier died", started.elapsed());
    }
    gw.gateway.shutdown().await;
}

fn plus_route(carriers: &[&str]) -> String {
    format!("[[routes]]\nprefix = \"+\"\ncarriers = {carriers:?}\n")
}

fn two_carriers(data: &std::path::Path, certs: &Certs, a: u16, b: u16, extra_a: &str) -> String {
    carriers_config(data, certs, &[("a", a, extra_a), ("b", b, "")], &plus_route(&["a", "b"]), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_a_carrier_dies_with_a_full_window() {
    let certs = Certs::new();
    let (ra, rb) = (certs.path("a.jsonl"), certs.path("b.jsonl"));
    let a = TestSim::start(&certs, SimConfig { resp_delay_ms: 200, ..SimConfig::default() }, Some(ra.clone())).await;
    let b = TestSim::start(&certs, SimConfig::default(), Some(rb.clone())).await;
    let data = tempfile::tempdir().unwrap();
    let text = two_carriers(data.path(), &certs, a.tls_port(), b.tls_port(), "binds = 1\nwindow = 1");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let batch: Vec<Value> = (0..100).map(|i| json!({"to": TO, "body": format!("failover {i}")})).collect();
    let r = gw.client.post("/v1/messages/batch", &json!({"messages": batch})).await;
    assert_eq!(r.json["accepted"], 100, "{}", r.json);
    let ids: Vec<String> =
        r.json["results"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().into()).collect();
    until(Duration::from_secs(10), "a few submits on a", || async { sim_submits(&a) >= 3 }).await;
    a.stop();
    let killed = Instant::now();
    gw.client.wait_status(&ids, Duration::from_secs(30), WITH_THE_CARRIER).await;
    let on_a = submitted_texts(&ra);
    let on_b = submitted_texts(&rb);
    println!(
        "carrier a died: {} on a, {} on b, all with a carrier {:?} after",
        on_a.len(),
        on_b.len(),
        killed.elapsed()
    );
    assert!((0..100).all(|i| {
        let t = format!("failover {i}");
        on_a.contains_key(&t) || on_b.contains_key(&t)
    }));
    assert!(on_b.len() >= 90, "the rest went through b");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_slots_held_for_durable_answers_survive_a_reconnect() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig { resp_delay_ms: 1500, ..SimConfig::default() }, None).await;
    let data = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let text = config_text(data.path(), &certs, sim.tls_port(), "binds = 1\nwindow = 2");
    let gw = TestGateway::start_with(parse_config(&text), &certs, faults.clone()).await;
    let batch: Vec<Value> = (0..10).map(|i| json!({"to": TO, "body": format!("slot {i}")})).collect();
    let r = gw.client.post("/v1/messages/batch", &json!({"messages": batch})).await;
    let ids: Vec<String> =
        r.json["results"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().into()).collect();
    // From here on, no answer becomes durable: every slot stays taken.
    faults.hold_commits(true);
    until(Duration::from_secs(10), "two submits", || async { sim_submits(&sim) >= 2 }).await;
    let before = sim_submits(&sim);
    let connections = sim.stats()["connections"].as_u64().unwrap();
    sim.handle.sim.drop_all();
    until(Duration::from_secs(15), "the bind to come back", || async {
        let s = sim.stats();
        s["connections"].as_u64().unwrap() > connections && s["binds"] == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sim_submits(&sim), before, "a new connection must not bring new window slots");
    assert!(before <= 2 + 2, "at most window × binds unanswered-or-undurable at a time");
    faults.hold_commits(false);
    wait_delivered(&gw.client, &ids, Duration::from_secs(30)).await;
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_submitted_message_stays_on_its_carrier() {
    let certs = Certs::new();
    let (ra, rb) = (certs.path("a.jsonl"), certs.path("b.jsonl"));
    let a = TestSim::start(&certs, SimConfig { drop_after: 1, ..SimConfig::default() }, Some(ra.clone())).await;
    let b = TestSim::start(&certs, SimConfig::default(), Some(rb.clone())).await;
    let data = tempfile::tempdir().unwrap();
    let text = two_carriers(data.path(), &certs, a.tls_port(), b.tls_port(), "binds = 1");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let body = "Three parts. ".repeat(30); // 390 GSM characters: 3 parts
    let (status, j) = post(&gw, &body).await;
    assert_eq!((status, j["segments"].as_u64()), (StatusCode::ACCEPTED, Some(3)), "{j}");
    let id = j["id"].as_str().unwrap().to_string();
    wait_delivered(&gw.client, std::slice::from_ref(&id), Duration::from_secs(20)).await;
    let m = gw.client.get(&format!("/v1/messages/{id}")).await.json;
    assert_eq!(m["carrier"], "a");
    assert_eq!(m["carrier_message_ids"].as_array().unwrap().iter().filter(|x| x.is_string()).count(), 3);
    assert_eq!(sim_submits(&b), 0, "no part went to b: the handset could not join parts from two carriers");
    assert!(a.stats()["drops"].as_u64().unwrap() >= 1, "a dropped the connection after part 1");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_sets_bad_entries_aside_and_reroutes_orphaned_queue_entries() {
    let certs = Certs::new();
    let record = certs.path("reroute.jsonl");
    let sim = TestSim::start(&certs, SimConfig::default(), Some(record.clone())).await;
    let data = tempfile::tempdir().unwrap();
    // First life: the route goes to carrier "a", which never binds (nothing listens there).
    let down = Reserved::new();
    let first = carriers_config(
        data.path(),
        &certs,
        &[("a", down.port(), ""), ("b", sim.tls_port(), "")],
        &plus_route(&["a"]),
        "",
    );
    let gw = TestGateway::start(parse_config(&first), &certs).await;
    let id = accept(&gw, "orphaned").await;
    // A malformed queue key, and a queue entry whose record does not decode.
    let bad_id = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    let layout = |f: fn(&str) -> Vec<u8>| f(bad_id);
    gw.gateway
        .store
        .commit(vec![
            Op::Put { key: b"q/short".to_vec(), value: b"x".to_vec() },
            Op::Put {
                key: smsgate::store::layout::queue(1, 999),
                value: smsgate::store::layout::queue_value(bad_id, "b", u64::MAX, "default"),
            },
            Op::Put { key: layout(smsgate::store::layout::message), value: b"{not json".to_vec() },
        ])
        .await
        .unwrap();
    let token = gw.client.token.clone();
    gw.gateway.shutdown().await;

    // Second life: carrier "a" is gone from the configuration; "b" takes the "+" route.
    let second = carriers_config(data.path(), &certs, &[("b", sim.tls_port(), "")], &plus_route(&["b"]), "");
    let gateway = smsgate::gateway::Gateway::start(parse_config(&second)).await.expect("starts despite bad entries");
    let client = Client::new(gateway.api_addr, &certs.path("api.crt"), token);
    wait_delivered(&client, std::slice::from_ref(&id), Duration::from_secs(15)).await;
    assert_eq!(client.get(&format!("/v1/messages/{id}")).await.json["carrier"], "b");
    until(Duration::from_secs(10), "the three bad entries to be set aside", || async {
        let keys: Vec<String> = gateway.store.quarantined().unwrap().into_iter().map(|q| q.key).collect();
        keys.iter().any(|k| k == "q/short") && keys.iter().any(|k| k.starts_with("m/")) && keys.len() == 3
    })
    .await;
    let exposition = http_text(gateway.metrics_addr, "/metrics").await;
    assert!(metric(&exposition, "smsgate_store_quarantined_total").unwrap_or(0.0) >= 3.0, "counted");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_dispatcher_restarts_and_delivers_what_it_held() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let faults = Faults::default();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let gw = TestGateway::start_with(parse_config(&text), &certs, faults.clone()).await;
    faults.panic_next_dispatch();
    let id = accept(&gw, "survives a panic").await;
    wait_delivered(&gw.client, std::slice::from_ref(&id), Duration::from_secs(15)).await;
    let after = accept(&gw, "and traffic goes on").await;
    wait_delivered(&gw.client, std::slice::from_ref(&after), Duration::from_secs(15)).await;
    let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
    assert!(
        metric(&exposition, "smsgate_task_restarts_total{task=\"dispatch\"}").unwrap_or(0.0) >= 1.0,
        "the restart is counted: {}",
        exposition.lines().filter(|l| l.contains("restarts")).collect::<Vec<_>>().join("\n")
    );
    gw.gateway.shutdown().await;
}
