//! Queue-server semantics with real sockets and real sled: routing and failover, rate limits,
//! per-key limits, scheduling across restarts, retries, expiry, batch, cancel, idempotency,
//! backpressure, fairness.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use smsgate::sim::SimConfig;

/// Config with one TLS carrier per (name, port), routes as given (TOML text), and extra
/// top-level sections.
fn multi_config(data: &std::path::Path, certs: &Certs, carriers: &[(&str, u16)], routes: &str, extra: &str) -> String {
    let mut text = format!(
        r#"
data_dir = "{data}"
[crypto]
key_file = "{keys}"
[api]
listen = "127.0.0.1:0"
tls_cert = "{crt}"
tls_key = "{key}"
[metrics]
listen = "127.0.0.1:0"
[dispatch]
retry_base_ms = 200
{extra}
"#,
        data = data.display(),
        crt = certs.path("api.crt").display(),
        key = certs.path("api.key").display(),
        keys = certs.path("data.keys").display(),
    );
    for (name, port) in carriers {
        text.push_str(&format!(
            "[[carriers]]\nname = \"{name}\"\nhost = \"localhost\"\nport = {port}\ntls = true\nca_file = \"{}\"\nsystem_id = \"gw\"\nenquire_link_secs = 5\nresponse_timeout_secs = 3\n",
            certs.path("smsc.crt").display()
        ));
    }
    text + routes
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn send(gw: &TestGateway, to: &str, body: &str, extra: Value) -> (StatusCode, Value) {
    let mut msg = json!({"to": to, "body": body});
    if let (Some(m), Some(e)) = (msg.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let a = gw.client.post("/v1/messages", &msg).await;
    (a.status, a.json)
}

fn texts(sim: &TestSim) -> Vec<String> {
    read_record(sim.record.as_ref().unwrap())
        .iter()
        .filter(|r| r["command_status"] == 0)
        .filter_map(|r| r["text"].as_str().map(String::from))
        .collect()
}

async fn wait_ready(gw: &TestGateway, carrier: &str, binds: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.client.get("/readyz").await;
        if r.json["carriers"][carrier]["transmitting_binds"] == binds {
            return;
        }
        assert!(Instant::now() < deadline, "{carrier} never reached {binds} binds: {}", r.json);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_sender_and_category_routing() {
    let certs = Certs::new();
    let us = TestSim::start(&certs, SimConfig::default(), Some(certs.path("us.jsonl"))).await;
    let uk = TestSim::start(&certs, SimConfig::default(), Some(certs.path("uk.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let routes = r#"
[[routes]]
prefix = "+"
carriers = ["us"]
[[routes]]
prefix = "+44"
carriers = ["uk"]
[[routes]]
prefix = "+44"
category = "urgent"
carriers = ["us"]
[[routes]]
prefix = "+1"
sender = "UKSENDER"
carriers = ["uk"]
"#;
    let text = multi_config(data.path(), &certs, &[("us", us.tls_port()), ("uk", uk.tls_port())], routes, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let cases = [
        ("+14155550123", "to us", json!({})),
        ("+447911123456", "to uk", json!({})),
        ("+447911123456", "urgent uk via us", json!({"category": "urgent"})),
        ("+14155550123", "us number, uk sender", json!({"from": "UKSENDER"})),
        ("+33612345678", "france falls to +", json!({})),
    ];
    let mut ids = Vec::new();
    for (to, body, extra) in cases {
        let (status, j) = send(&gw, to, body, extra).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{j}");
        ids.push(j["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let m = gw.client.wait_message(id, Duration::from_secs(5), |m| m["status"] == "delivered").await;
        assert_eq!(m["status"], "delivered", "{m}");
    }
    let mut at_us = texts(&us);
    let mut at_uk = texts(&uk);
    at_us.sort();
    at_uk.sort();
    assert_eq!(at_us, ["france falls to +", "to us", "urgent uk via us"]);
    assert_eq!(at_uk, ["to uk", "us number, uk sender"]);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_refused_at_accept() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let routes = "[[routes]]\nprefix = \"+44\"\ncarriers = [\"uk\"]\n";
    let text = multi_config(data.path(), &certs, &[("uk", free_port())], routes, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let (status, j) = send(&gw, "+14155550123", "nowhere to go", json!({})).await;
    assert_eq!((status, j["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("no_route")));
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_carrier_and_back() {
    let certs = Certs::new();
    let a_port = free_port();
    let a = TestSim::start_on(
        &certs,
        SimConfig::default(),
        Some(certs.path("a.jsonl")),
        format!("127.0.0.1:{a_port}").parse().unwrap(),
    )
    .await;
    let b = TestSim::start(&certs, SimConfig::default(), Some(certs.path("b.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let routes = "[[routes]]\nprefix = \"+\"\ncarriers = [\"a\", \"b\"]\n";
    let text = multi_config(data.path(), &certs, &[("a", a_port), ("b", b.tls_port())], routes, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw, "a", 1).await;
    wait_ready(&gw, "b", 1).await;
    let (_, j) = send(&gw, "+14155550123", "first via a", json!({})).await;
    let m =
        gw.client.wait_message(j["id"].as_str().unwrap(), Duration::from_secs(5), |m| m["status"] == "delivered").await;
    assert_eq!(m["carrier"], "a");

    // Carrier a goes away: traffic moves to b.
    a.stop();
    let stopped = Instant::now();
    let (_, j) = send(&gw, "+14155550123", "during outage", json!({})).await;
    let m = gw
        .client
        .wait_message(j["id"].as_str().unwrap(), Duration::from_secs(10), |m| m["status"] == "delivered")
        .await;
    let failover = stopped.elapsed();
    assert_eq!((m["status"].as_str(), m["carrier"].as_str()), (Some("delivered"), Some("b")), "{m}");
    println!("failover: carrier a stopped → message delivered via b in {} ms", failover.as_millis());

    // a comes back: traffic returns to it.
    let a2 = TestSim::start_on(
        &certs,
        SimConfig::default(),
        Some(certs.path("a2.jsonl")),
        format!("127.0.0.1:{a_port}").parse().unwrap(),
    )
    .await;
    let back = Instant::now();
    wait_ready(&gw, "a", 1).await;
    println!("recovery: carrier a restarted → bound again in {} ms", back.elapsed().as_millis());
    let (_, j) = send(&gw, "+14155550123", "after recovery", json!({})).await;
    let m =
        gw.client.wait_message(j["id"].as_str().unwrap(), Duration::from_secs(5), |m| m["status"] == "delivered").await;
    assert_eq!(m["carrier"], "a", "{m}");
    assert_eq!(texts(&a2), ["after recovery"]);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_rate_is_what_the_simulator_sees() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), Some(certs.path("rate.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "rate = 200\nburst = 20\nbinds = 2\nwindow = 20");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw, "sim", 2).await;
    let total = 200 * 32;
    for chunk in 0..(total / 1000 + 1) {
        let n = (total - chunk * 1000).min(1000);
        if n == 0 {
            break;
        }
        let messages: Vec<Value> =
            (0..n).map(|i| json!({"to": "+14155550123", "body": format!("rate {chunk}-{i}")})).collect();
        let a = gw.client.post("/v1/messages/batch", &json!({"messages": messages})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.json);
        assert_eq!(a.json["accepted"], n);
    }
    // Measure over 30 s of the simulator's own timestamps, after the first second (burst).
    let deadline = Instant::now() + Duration::from_secs(60);
    let stamps = loop {
        let rec = read_record(sim.record.as_ref().unwrap());
        let stamps: Vec<i64> = rec
            .iter()
            .filter(|r| r["command_status"] == 0)
            .filter_map(|r| r["ts"].as_str()?.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .collect();
        if stamps.len() >= 200 * 31 + 20 || Instant::now() > deadline {
            break stamps;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let start = stamps[0] + 1000;
    let in_window = stamps.iter().filter(|&&t| t >= start && t < start + 30_000).count();
    let rate = in_window as f64 / 30.0;
    println!(
        "rate accuracy: configured 200/s, simulator saw {rate:.2}/s over 30 s ({:+.2} %)",
        (rate / 200.0 - 1.0) * 100.0
    );
    assert!((rate - 200.0).abs() <= 4.0, "{rate}/s is not within 2 % of 200/s");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_rate_and_daily_quota_answer_429() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let admin = smsgate::auth::KeyAdmin { store: &gw.gateway.store, ring: &gw.gateway.keys };
    let (key, token) =
        admin.create("limited", vec![smsgate::auth::Scope::Send, smsgate::auth::Scope::Read]).await.unwrap();
    admin.set_limits(&key.id, Some(2), Some(3)).await.unwrap();
    let c = gw.client.with_token(Some(&token));
    let body = json!({"to": "+14155550123", "body": "one segment"});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(c.post("/v1/messages", &body).await);
    }
    assert_eq!(statuses[0].status, StatusCode::ACCEPTED);
    assert_eq!(statuses[1].status, StatusCode::ACCEPTED);
    let limited = &statuses[2];
    assert_eq!(
        (limited.status, limited.json["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert!(limited.headers.get("retry-after").is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Quota: 3 segments a day; 2 used; a 2-segment message does not fit, a 1-segment one does.
    let long = json!({"to": "+14155550123", "body": "x".repeat(200)});
    let a = c.post("/v1/messages", &long).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded")),
        "{}",
        a.json
    );
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    assert_eq!(c.post("/v1/messages", &body).await.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.post("/v1/messages", &body).await.status, StatusCode::TOO_MANY_REQUESTS);
    // Another key is unaffected.
    assert_eq!(gw.client.post("/v1/messages", &body).await.status, StatusCode::ACCEPTED);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_messages_are_released_on_time_after_a_restart() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let send_at = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_millis(2500)).unwrap();
    let (status, j) = send(&gw, "+14155550123", "later", json!({"send_at": send_at.to_string()})).await;
    assert_eq!((status, j["status"].as_str()), (StatusCode::ACCEPTED, Some("scheduled")));
    let id = j["id"].as_str().unwrap().to_string();
    let token = gw.client.token.clone();
    gw.gateway.shutdown().await;
    let gateway = smsgate::gateway::Gateway::start(parse_config(&text)).await.unwrap();
    let client = Client::new(gateway.api_addr, &certs.path("api.crt"), token);
    let m = client.wait_message(&id, Duration::from_secs(10), |m| m["status"] == "delivered").await;
    let submitted =
        m["history"].as_array().unwrap().iter().find(|h| h["status"] == "submitted").unwrap()["at"].as_str().unwrap();
    let late = submitted.parse::<jiff::Timestamp>().unwrap().as_millisecond() - send_at.as_millisecond();
    println!("scheduled release: submitted {late} ms after send_at");
    assert!((0..=100).contains(&late), "released {late} ms after send_at");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_errors_retry_then_succeed() {
    let certs = Certs::new();
    let sim =
        TestSim::start(&certs, SimConfig { error_ratio: 0.5, ..SimConfig::default() }, Some(certs.path("r.jsonl")))
            .await;
    let data = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(parse_config(&config_text(data.path(), &certs, sim.tls_port(), "")), &certs).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            send(&gw, "+14155550123", &format!("flaky {i}"), json!({})).await.1["id"].as_str().unwrap().to_string(),
        );
    }
    let mut retried = 0;
    for id in &ids {
        let m = gw.client.wait_message(id, Duration::from_secs(15), |m| m["status"] == "delivered").await;
        assert_eq!(m["status"], "delivered", "{m}");
        let h = m["history"].as_array().unwrap();
        if h.iter().any(|e| e["detail"] == "carrier_temporary_error") {
            retried += 1;
            assert!(m["attempts"].as_u64().unwrap() >= 2);
        }
    }
    assert!(retried >= 3, "half the first attempts failed; {retried} retried");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_expire_while_their_carrier_is_down() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(parse_config(&config_text(data.path(), &certs, free_port(), "")), &certs).await;
    let (_, j) = send(&gw, "+14155550123", "too late", json!({"validity_seconds": 5})).await;
    let started = Instant::now();
    let m =
        gw.client.wait_message(j["id"].as_str().unwrap(), Duration::from_secs(15), |m| m["status"] == "expired").await;
    assert_eq!(m["status"], "expired", "{m}");
    assert_eq!(m["error"]["code"], "validity_expired");
    assert!(started.elapsed() < Duration::from_secs(8));
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_good_and_bad_items() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), Some(certs.path("b.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let gw = TestGateway::start(parse_config(&config_text(data.path(), &certs, sim.tls_port(), "")), &certs).await;
    let batch = json!({"messages": [
        {"to": "+14155550123", "body": "good 0"},
        {"to": "+1415", "body": "bad number"},
        {"to": "+14155550123", "body": "good 2", "client_ref": "c2"},
        {"to": "+14155550123"},
        {"to": "+14155550123", "body": "good 4", "surprise": true},
        {"to": "+14155550123", "body": "good 5"},
    ]});
    let a = gw.client.post("/v1/messages/batch", &batch).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!((a.json["accepted"].as_u64(), a.json["rejected"].as_u64()), (Some(3), Some(3)));
    let r = a.json["results"].as_array().unwrap();
    assert_eq!(r.len(), 6);
    for (i, item) in r.iter().enumerate() {
        assert_eq!(item["index"], i);
    }
    assert_eq!(r[1]["error"]["field"], "to");
    assert_eq!(r[3]["error"]["code"], "missing_field");
    assert_eq!(r[4]["error"]["code"], "unknown_field");
    for i in [0, 2, 5] {
        let m = gw
            .client
            .wait_message(r[i]["id"].as_str().unwrap(), Duration::from_secs(5), |m| m["status"] == "delivered")
            .await;
        assert_eq!(m["status"], "delivered");
    }
    let mut got = texts(&sim);
    got.sort();
    assert_eq!(got, ["good 0", "good 2", "good 5"]);
    // Envelope errors.
    let a = gw.client.post("/v1/messages/batch", &json!({"messages": []})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"to": "+14155550123", "body": "x"})).collect();
    let a = gw.client.post("/v1/messages/batch", &json!({"messages": too_many})).await;
    assert_eq!((a.status, a.json["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("messages")));
    let a = gw.client.post("/v1/messages/batch", &json!([1, 2])).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_races_dispatch_without_ever_doing_both() {
    let certs = Certs::new();
    let sim =
        TestSim::start(&certs, SimConfig { resp_delay_ms: 5, ..SimConfig::default() }, Some(certs.path("c.jsonl")))
            .await;
    let data = tempfile::tempdir().unwrap();
    // 40/s: the 60 messages take 1.5 s to go out, and the cancels land in the middle.
    let text = config_text(data.path(), &certs, sim.tls_port(), "window = 3\nrate = 40\nburst = 1");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw, "sim", 1).await;
    let send_at = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_millis(800)).unwrap();
    let mut ids = Vec::new();
    for i in 0..60 {
        let (status, j) =
            send(&gw, "+14155550123", &format!("race {i}"), json!({"send_at": send_at.to_string()})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.push((format!("race {i}"), j["id"].as_str().unwrap().to_string()));
    }
    // Cancel while the dispatcher works through them.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let mut cancels = Vec::new();
    for (_, id) in &ids {
        let c = gw.client.clone();
        let id = id.clone();
        cancels.push(tokio::spawn(async move {
            c.raw(Method::DELETE, &format!("/v1/messages/{id}"), &[], Bytes::new()).await
        }));
    }
    let mut answers = Vec::new();
    for c in cancels {
        answers.push(c.await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let arrived: HashSet<String> = texts(&sim).into_iter().collect();
    let (mut cancelled, mut sent) = (0, 0);
    for ((text, id), answer) in ids.iter().zip(&answers) {
        let m = gw.client.get(&format!("/v1/messages/{id}")).await.json;
        match answer.status {
            StatusCode::OK => {
                cancelled += 1;
                assert_eq!(m["status"], "cancelled", "{m}");
                assert!(!arrived.contains(text), "{text} was cancelled (200) but reached the carrier");
            }
            StatusCode::CONFLICT => {
                sent += 1;
                assert_eq!(answer.json["error"]["code"], "already_submitted");
                assert!(arrived.contains(text), "{text}: 409 but never submitted ({m})");
            }
            other => panic!("unexpected {other}: {}", answer.json),
        }
    }
    println!("cancel race: {cancelled} cancelled, {sent} already submitted");
    assert_eq!(cancelled + sent, 60);
    assert!(cancelled > 0 && sent > 0, "the race must have both outcomes to prove anything");
    // Cancelling a delivered message is a conflict, a missing one 404.
    let a = gw.client.raw(Method::DELETE, "/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV", &[], Bytes::new()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_loses_nothing() {
    let certs = Certs::new();
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let text = multi_config(data.path(), &certs, &[("sim", port)], "", "[queue]\nmax_depth = 5");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..8 {
        let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": format!("full {i}")})).await;
        match a.status {
            StatusCode::ACCEPTED => accepted.push(format!("full {i}")),
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(a.json["error"]["code"], "queue_full");
                assert!(a.headers.get("retry-after").is_some());
            }
            s => panic!("{s}: {}", a.json),
        }
    }
    assert_eq!((accepted.len(), refused), (5, 3));
    let sim = TestSim::start_on(
        &certs,
        SimConfig::default(),
        Some(certs.path("q.jsonl")),
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while texts(&sim).len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = texts(&sim);
    got.sort();
    assert_eq!(got, accepted);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_below_its_floor_answers_503() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let text = multi_config(data.path(), &certs, &[("sim", free_port())], "", "[queue]\nmin_free_disk_mb = 1000000000");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "no room"})).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("store_unavailable"))
    );
    assert!(a.headers.get("retry-after").is_some());
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_conflict_and_survive_restarts() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), Some(certs.path("i.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let body = Bytes::from(json!({"to": "+14155550123", "body": "exactly once"}).to_string());
    let headers = [("content-type", "application/json"), ("idempotency-key", "appt-42")];
    let first = gw.client.raw(Method::POST, "/v1/messages", &headers, body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let again = gw.client.raw(Method::POST, "/v1/messages", &headers, body.clone()).await;
    assert_eq!((again.status, &again.json["id"]), (StatusCode::ACCEPTED, &first.json["id"]));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = Bytes::from(json!({"to": "+14155550123", "body": "something else"}).to_string());
    let clash = gw.client.raw(Method::POST, "/v1/messages", &headers, other).await;
    assert_eq!(
        (clash.status, clash.json["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_conflict"))
    );
    // The same key under another API key is independent.
    let other_key = gw.key(vec![smsgate::auth::Scope::Send]).await;
    let a = gw.client.with_token(Some(&other_key)).raw(Method::POST, "/v1/messages", &headers, body.clone()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_ne!(a.json["id"], first.json["id"]);
    // Concurrent duplicates: exactly one message.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = gw.client.clone();
        let b = Bytes::from(json!({"to": "+14155550123", "body": "concurrent"}).to_string());
        tasks.push(tokio::spawn(async move {
            c.raw(Method::POST, "/v1/messages", &[("content-type", "application/json"), ("idempotency-key", "same")], b)
                .await
                .json["id"]
                .clone()
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    let token = gw.client.token.clone();
    gw.gateway.shutdown().await;
    let gateway = smsgate::gateway::Gateway::start(parse_config(&text)).await.unwrap();
    let client = Client::new(gateway.api_addr, &certs.path("api.crt"), token);
    let after = client.raw(Method::POST, "/v1/messages", &headers, body).await;
    assert_eq!((after.status, &after.json["id"]), (StatusCode::ACCEPTED, &first.json["id"]), "durable across restarts");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in texts(&sim) {
        *counts.entry(t).or_default() += 1;
    }
    assert_eq!(counts.get("exactly once"), Some(&2), "one per API key");
    assert_eq!(counts.get("concurrent"), Some(&1));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_carrier_does_not_delay_another() {
    let certs = Certs::new();
    let slow = TestSim::start(&certs, SimConfig::default(), None).await;
    let fast = TestSim::start(&certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let routes =
        "[[routes]]\nprefix = \"+1\"\ncarriers = [\"slow\"]\n[[routes]]\nprefix = \"+44\"\ncarriers = [\"fast\"]\n";
    let mut text =
        multi_config(data.path(), &certs, &[("slow", slow.tls_port()), ("fast", fast.tls_port())], routes, "");
    text = text.replacen("name = \"slow\"", "name = \"slow\"\nrate = 20", 1);
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw, "fast", 1).await;
    let flood: Vec<Value> = (0..1000).map(|i| json!({"to": "+14155550123", "body": format!("flood {i}")})).collect();
    assert_eq!(gw.client.post("/v1/messages/batch", &json!({"messages": flood})).await.status, StatusCode::OK);
    let started = Instant::now();
    let (_, j) = send(&gw, "+447911123456", "not stuck behind the flood", json!({})).await;
    let m =
        gw.client.wait_message(j["id"].as_str().unwrap(), Duration::from_secs(5), |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered");
    println!(
        "fairness: other carrier's message delivered in {} ms behind a 1000-message flood",
        started.elapsed().as_millis()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    gw.gateway.shutdown().await;
}
