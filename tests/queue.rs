//! Queue-server semantics with real sockets and real sled: routing and failover, rate limits,
//! per-key limits, scheduling across restarts, retries, expiry, batch, cancel, idempotency,
//! backpressure, fairness.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use smsgate::sim::SimConfig;

/// Config with one TLS carrier per (name, port), routes as given (TOML text), and extra
/// top-level sections.
fn multi_config(data: &std::path::Path, certs: &Certs, carriers: &[(&str, u16)], routes: &str, extra: &str) -> String {
    let carriers: Vec<(&str, u16, &str)> = carriers.iter().map(|(n, p)| (*n, *p, "")).collect();
    carriers_config(data, certs, &carriers, routes, extra)
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
        let m = gw.client.wait_message(id, PATIENCE, |m| m["status"] == "delivered").await;
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
    let down = Reserved::new();
    let text = multi_config(data.path(), &certs, &[("uk", down.port())], routes, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let (status, j) = send(&gw, "+14155550123", "nowhere to go", json!({})).await;
    assert_eq!((status, j["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("no_route")));
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_carrier_and_back() {
    let certs = Certs::new();
    let a = TestSim::start(&certs, SimConfig::default(), Some(certs.path("a.jsonl"))).await;
    let a_port = a.tls_port();
    let b = TestSim::start(&certs, SimConfig::default(), Some(certs.path("b.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let routes = "[[routes]]\nprefix = \"+\"\ncarriers = [\"a\", \"b\"]\n";
    let text = multi_config(data.path(), &certs, &[("a", a_port), ("b", b.tls_port())], routes, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw.client, "a", 1).await;
    wait_ready(&gw.client, "b", 1).await;
    let (_, j) = send(&gw, "+14155550123", "first via a", json!({})).await;
    let m = gw.client.wait_message(j["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["carrier"], "a");

    // Carrier a goes away: traffic moves to b.
    a.stop();
    let stopped = Instant::now();
    let (_, j) = send(&gw, "+14155550123", "during outage", json!({})).await;
    let m = gw.client.wait_message(j["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    let failover = stopped.elapsed();
    assert_eq!((m["status"].as_str(), m["carrier"].as_str()), (Some("delivered"), Some("b")), "{m}");
    println!("failover: carrier a stopped → message delivered via b in {} ms", failover.as_millis());

    // a comes back: traffic returns to it.
    // Same port (released when a stopped; nothing else on this host takes it meanwhile).
    let again = tokio::net::TcpListener::bind(("127.0.0.1", a_port)).await.unwrap();
    let a2 = TestSim::start_on(&certs, SimConfig::default(), Some(certs.path("a2.jsonl")), again).await;
    let back = Instant::now();
    wait_ready(&gw.client, "a", 1).await;
    println!("recovery: carrier a restarted → bound again in {} ms", back.elapsed().as_millis());
    let (_, j) = send(&gw, "+14155550123", "after recovery", json!({})).await;
    let m = gw.client.wait_message(j["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["carrier"], "a", "{m}");
    assert_eq!(texts(&a2), ["after recovery"]);
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
    let scopes = || vec![smsgate::auth::Scope::Send, smsgate::auth::Scope::Read];
    let body = json!({"to": "+14155550123", "body": "one segment"});

    // Rate: 1 request a second (burst 1). Requests on one kept-alive connection until the
    // first 429: however slow the machine, no more got through than the rate allows.
    let (rated, token) = admin.create("default", "rated", scopes()).await.unwrap();
    admin.set_limits(&rated.id, Some(1), None).await.unwrap();
    let mut conn = gw.client.with_token(Some(&token)).connect().await.unwrap();
    let started = Instant::now();
    let mut accepted = 0;
    let limited = loop {
        let (status, j) = conn.post("/v1/messages", &body).await.unwrap();
        match status {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => break j,
            other => panic!("{other}: {j}"),
        }
        assert!(accepted < 50, "50 requests and never limited");
    };
    let allowed = 1 + started.elapsed().as_secs_f64().ceil() as usize;
    assert_eq!(limited["error"]["code"], "rate_limited");
    assert!((1..=allowed).contains(&accepted), "{accepted} accepted before the 429; the rate allows {allowed}");
    let a = gw.client.with_token(Some(&token)).post("/v1/messages", &body).await;
    if a.status == StatusCode::TOO_MANY_REQUESTS {
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
    }

    // Quota: 3 segments a day, no rate limit: a 2-segment message after two 1-segment ones
    // does not fit, a 1-segment one does, and then nothing more.
    let (quota, token) = admin.create("default", "quota", scopes()).await.unwrap();
    admin.set_limits(&quota.id, None, Some(3)).await.unwrap();
    let c = gw.client.with_token(Some(&token));
    assert_eq!(c.post("/v1/messages", &body).await.status, StatusCode::ACCEPTED);
    assert_eq!(c.post("/v1/messages", &body).await.status, StatusCode::ACCEPTED);
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
    let m = client.wait_message(&id, PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered", "{m}");
    let submitted =
        m["history"].as_array().unwrap().iter().find(|h| h["status"] == "submitted").unwrap()["at"].as_str().unwrap();
    let late = submitted.parse::<jiff::Timestamp>().unwrap().as_millisecond() - send_at.as_millisecond();
    println!("scheduled release: submitted {late} ms after send_at");
    // Never early; on time within what a loaded CI machine guarantees (the precise figure is
    // printed above).
    assert!((0..=3000).contains(&late), "released {late} ms after send_at");
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
    // Every injected error is one retry in some message's history (repeats collapsed).
    let mut retries = 0;
    for id in &ids {
        let m = gw.client.wait_message(id, PATIENCE, |m| m["status"] == "delivered").await;
        assert_eq!(m["status"], "delivered", "{m}");
        let h = m["history"].as_array().unwrap();
        let own: u64 = h
            .iter()
            .filter(|e| e["detail"] == "carrier_temporary_error")
            .map(|e| 1 + e["repeats"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(m["attempts"].as_u64().unwrap(), own + 1, "{m}");
        retries += own;
    }
    let injected = sim.stats()["submit_sm_error_injected"].as_u64().unwrap();
    assert!(injected >= 3, "the simulator failed every second submit: {injected}");
    assert_eq!(retries, injected, "each carrier error became one retry");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_expire_while_their_carrier_is_down() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let down = Reserved::new();
    let gw = TestGateway::start(parse_config(&config_text(data.path(), &certs, down.port(), "")), &certs).await;
    let (_, j) = send(&gw, "+14155550123", "too late", json!({"validity_seconds": 5})).await;
    let m = gw.client.wait_message(j["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "expired").await;
    assert_eq!(m["status"], "expired", "{m}");
    assert_eq!(m["error"]["code"], "validity_expired");
    // Expired by the reaper while the carrier was down, not before its validity ended.
    let at = |s: &str| {
        m["history"].as_array().unwrap().iter().find(|e| e["status"] == s).unwrap()["at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    };
    assert!(at("expired") - at("queued") >= 5000, "expired after its 5 s validity");
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
        let m = gw.client.wait_message(r[i]["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
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
    // 20/s: the 60 messages take 3 s to go out; the cancels start once a few went.
    let text = config_text(data.path(), &certs, sim.tls_port(), "window = 3\nrate = 20\nburst = 1");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw.client, "sim", 1).await;
    let bodies: Vec<String> = (0..60).map(|i| format!("race {i}")).collect();
    let sent = gw.client.send_batch("+14155550123", &bodies).await;
    let ids: Vec<(String, String)> = bodies.into_iter().zip(sent).collect();
    until(PATIENCE, "the first submits", || async { sim.submits() >= 5 }).await;
    // Cancel all of them at once while the dispatcher works through them.
    let mut cancels = Vec::new();
    for (_, id) in &ids {
        let (c, id) = (gw.client.clone(), id.clone());
        cancels.push(tokio::spawn(async move { c.delete(&format!("/v1/messages/{id}")).await }));
    }
    let mut answers = Vec::new();
    for c in cancels {
        answers.push(c.await.unwrap());
    }
    // Wait for the outcome of every message, then compare with what the carrier got.
    for ((_, id), answer) in ids.iter().zip(&answers) {
        let want: &[&str] = if answer.status == StatusCode::OK { &["cancelled"] } else { &["delivered"] };
        gw.client.wait_status(std::slice::from_ref(id), PATIENCE, want).await;
    }
    let arrived: HashSet<String> = texts(&sim).into_iter().collect();
    let (mut cancelled, mut sent) = (0, 0);
    for ((text, _), answer) in ids.iter().zip(&answers) {
        match answer.status {
            StatusCode::OK => {
                cancelled += 1;
                assert_eq!(answer.json["status"], "cancelled", "{}", answer.json);
                assert!(!arrived.contains(text), "{text} was cancelled (200) but reached the carrier");
            }
            StatusCode::CONFLICT => {
                sent += 1;
                assert_eq!(answer.json["error"]["code"], "already_submitted");
                assert!(arrived.contains(text), "{text}: 409 but never submitted");
            }
            other => panic!("unexpected {other}: {}", answer.json),
        }
    }
    println!("cancel race: {cancelled} cancelled, {sent} already submitted");
    assert_eq!(cancelled + sent, 60);
    assert!(cancelled > 0 && sent > 0, "the race must have both outcomes to prove anything");
    // Cancelling a delivered message is a conflict, a missing one 404.
    let (_, delivered_id) = ids.iter().zip(&answers).find(|(_, a)| a.status == StatusCode::CONFLICT).unwrap().0;
    let again = gw.client.delete(&format!("/v1/messages/{delivered_id}")).await;
    assert_eq!((again.status, again.json["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_submitted")));
    let a = gw.client.delete("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_loses_nothing() {
    let certs = Certs::new();
    let later = Reserved::new();
    let data = tempfile::tempdir().unwrap();
    let text = multi_config(data.path(), &certs, &[("sim", later.port())], "", "[queue]\nmax_depth = 5");
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
    let sim = TestSim::start_on(&certs, SimConfig::default(), Some(certs.path("q.jsonl")), later.listen()).await;
    until(PATIENCE, "the five accepted messages at the carrier", || async { texts(&sim).len() >= 5 }).await;
    let mut got = texts(&sim);
    got.sort();
    assert_eq!(got, accepted);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_below_its_floor_answers_503() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let down = Reserved::new();
    let text = multi_config(data.path(), &certs, &[("sim", down.port())], "", "[queue]\nmin_free_disk_mb = 1000000000");
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
    let other_key = gw.key(vec![smsgate::auth::Scope::Send, smsgate::auth::Scope::Read]).await;
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
    // Everything accepted is with the carrier before the counts are read.
    let mut accepted = vec![first.json["id"].as_str().unwrap().to_string()];
    accepted.extend(ids.iter().map(|i| i.trim_matches('"').to_string()));
    client.wait_status(&accepted, PATIENCE, &["delivered"]).await;
    let other = [a.json["id"].as_str().unwrap().to_string()];
    client.with_token(Some(&other_key)).wait_status(&other, PATIENCE, &["delivered"]).await;
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
    wait_ready(&gw.client, "fast", 1).await;
    let flood: Vec<Value> = (0..1000).map(|i| json!({"to": "+14155550123", "body": format!("flood {i}")})).collect();
    assert_eq!(gw.client.post("/v1/messages/batch", &json!({"messages": flood})).await.status, StatusCode::OK);
    let started = Instant::now();
    let (_, j) = send(&gw, "+447911123456", "not stuck behind the flood", json!({})).await;
    let m = gw.client.wait_message(j["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered");
    println!(
        "fairness: other carrier's message delivered in {} ms behind a 1000-message flood",
        started.elapsed().as_millis()
    );
    // The flood drains at 20/s (50 s): the other message did not wait for it.
    let flooded = slow.submits();
    assert!(flooded < 500, "{flooded} of the flood went first");
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_queue_limit_refuses_a_whole_batch_that_does_not_fit() {
    let certs = Certs::new();
    let down = Reserved::new();
    let data = tempfile::tempdir().unwrap();
    let text = multi_config(
        data.path(),
        &certs,
        &[("sim", down.port())],
        "",
        "[queue]\nmax_depth = 100\nmax_depth_per_carrier = 4",
    );
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    for i in 0..3 {
        let (status, j) = send(&gw, "+14155550123", &format!("fits {i}"), json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{j}");
    }
    // One place left for this carrier; a batch of two does not fit: all or nothing.
    let batch = json!({"messages": [{"to": "+14155550123", "body": "b1"}, {"to": "+14155550123", "body": "b2"}]});
    let a = gw.client.post("/v1/messages/batch", &batch).await;
    assert_eq!((a.status, a.json["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("queue_full")));
    assert!(a.headers.get("retry-after").is_some());
    assert_eq!(gw.client.get("/readyz").await.json["queued"], 3, "nothing of the batch was stored");
    assert_eq!(send(&gw, "+14155550123", "the last place", json!({})).await.0, StatusCode::ACCEPTED);
    let (status, j) = send(&gw, "+14155550123", "one too many", json!({})).await;
    assert_eq!((status, j["error"]["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("queue_full")));
    gw.gateway.shutdown().await;
}
