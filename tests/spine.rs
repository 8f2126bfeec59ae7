//! The end-to-end path through real sockets: HTTPS API → sled → SMPP over TLS → the built-in
//! SMSC simulator → delivery receipt → status.

mod common;

use bytes::Bytes;
use common::*;
use hyper::{Method, StatusCode};
use serde_json::json;
use smsgate::auth::Scope;
use smsgate::sim::SimConfig;

async fn setup(sim_config: SimConfig) -> (Certs, TestSim, TestGateway, tempfile::TempDir) {
    let certs = Certs::new();
    let record = certs.path("record.jsonl");
    let sim = TestSim::start(&certs, sim_config, Some(record)).await;
    let data = tempfile::tempdir().unwrap();
    let config = parse_config(&config_text(data.path(), &certs, sim.tls_port(), ""));
    let gw = TestGateway::start(config, &certs).await;
    (certs, sim, gw, data)
}

#[tokio::test]
async fn a_message_goes_queued_submitted_delivered() {
    let (_certs, sim, gw, _data) = setup(SimConfig::default()).await;
    let a = gw
        .client
        .post(
            "/v1/messages",
            &json!({"to": "+14155550123", "body": "Your appointment is at 10:00", "client_ref": "r-1"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    assert_eq!(a.json["status"], "queued");
    assert_eq!(a.json["segments"], 1);
    assert_eq!(a.json["encoding"], "gsm7");
    let id = a.json["id"].as_str().unwrap().to_string();
    let m = gw.client.wait_message(&id, PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered", "{m}");
    let history: Vec<&str> = m["history"].as_array().unwrap().iter().map(|h| h["status"].as_str().unwrap()).collect();
    assert_eq!(history, ["queued", "submitted", "delivered"]);
    assert_eq!(m["carrier"], "sim");
    assert_eq!(m["client_ref"], "r-1");
    assert_eq!(m["to"], "+1415***0123", "numbers are masked in the API view");
    assert!(m.get("body").is_none());
    assert!(m["carrier_message_ids"][0].as_str().is_some_and(|s| !s.is_empty()));
    // What arrived at the SMSC is what was sent.
    let rec = read_record(sim.record.as_ref().unwrap());
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["destination"], "14155550123");
    assert_eq!(rec[0]["dest_ton"], 1);
    assert_eq!(rec[0]["text"], "Your appointment is at 10:00");
    assert_eq!(rec[0]["registered_delivery"], 1);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn long_and_unicode_messages_arrive_whole() {
    let (_certs, sim, gw, _data) = setup(SimConfig::default()).await;
    let long = "Reminder: your visit with Dr. Smith is tomorrow at 09:30 in building C [room 2]. ".repeat(5);
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": long})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.json["encoding"], "gsm7");
    let segments = a.json["segments"].as_u64().unwrap();
    assert!(segments >= 3);
    let b = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "Привет 👋 see you soon"})).await;
    assert_eq!(b.json["encoding"], "ucs2");
    for id in [&a.json["id"], &b.json["id"]] {
        let m = gw.client.wait_message(id.as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
        assert_eq!(m["status"], "delivered", "{m}");
    }
    let rec = read_record(sim.record.as_ref().unwrap());
    let mut parts: Vec<_> = rec.iter().filter(|r| r["concat"].is_object()).collect();
    assert_eq!(parts.len() as u64, segments);
    parts.sort_by_key(|r| r["concat"]["seq"].as_u64());
    let text: String = parts.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(text, long);
    let ucs2 = rec.iter().find(|r| r["data_coding"] == 8).unwrap();
    assert_eq!(ucs2["text"], "Привет 👋 see you soon");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn undeliverable_receipts_end_the_message() {
    let (_certs, _sim, gw, _data) = setup(SimConfig { dlr_fail_ratio: 1.0, ..SimConfig::default() }).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "x"})).await;
    let m = gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "undeliverable").await;
    assert_eq!(m["status"], "undeliverable", "{m}");
    assert_eq!(m["error"]["code"], "carrier_undeliverable");
    assert_eq!(m["error"]["carrier_status"], 1);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn authentication_and_scopes() {
    let (_certs, _sim, gw, _data) = setup(SimConfig::default()).await;
    let body = json!({"to": "+14155550123", "body": "x"});
    let none = gw.client.with_token(None).post("/v1/messages", &body).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json["error"]["code"], "unauthorized");
    let bad = gw.client.with_token(Some("sgk_000000000000_00")).post("/v1/messages", &body).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    let read_only = gw.key(vec![Scope::Read]).await;
    let a = gw.client.with_token(Some(&read_only)).post("/v1/messages", &body).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.json["error"]["code"], "forbidden");
    let send_only = gw.key(vec![Scope::Send]).await;
    let sent = gw.client.with_token(Some(&send_only)).post("/v1/messages", &body).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED);
    let id = sent.json["id"].as_str().unwrap();
    let g = gw.client.with_token(Some(&send_only)).get(&format!("/v1/messages/{id}")).await;
    assert_eq!(g.status, StatusCode::FORBIDDEN);
    // A message is visible to the keys of the account that sent it only.
    let same_account = gw.client.get(&format!("/v1/messages/{id}")).await;
    assert_eq!(same_account.status, StatusCode::OK);
    let accounts = smsgate::accounts::admin::AccountAdmin { store: &gw.gateway.store, accounts: &gw.gateway.accounts };
    let new = smsgate::accounts::admin::NewAccount { name: "other".into(), ..Default::default() };
    accounts.create(new, &Default::default()).await.unwrap();
    let keys = smsgate::auth::KeyAdmin { store: &gw.gateway.store, ring: &gw.gateway.keys };
    let (_, other_account) = keys.create("other", "other", vec![Scope::Read]).await.unwrap();
    let other = gw.client.with_token(Some(&other_account)).get(&format!("/v1/messages/{id}")).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    // Revocation takes effect at once.
    let victim = gw.key(vec![Scope::Send]).await;
    let key_id = victim.split('_').nth(1).unwrap().to_string();
    smsgate::auth::KeyAdmin { store: &gw.gateway.store, ring: &gw.gateway.keys }.revoke(&key_id).await.unwrap();
    assert_eq!(gw.client.with_token(Some(&victim)).post("/v1/messages", &body).await.status, StatusCode::UNAUTHORIZED);
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_by_alpn_and_hsts_and_no_store_on_every_answer() {
    let (_certs, _sim, gw, _data) = setup(SimConfig::default()).await;
    let h2 = gw.client.raw_h2(hyper::Method::GET, "/healthz", &[], bytes::Bytes::new()).await;
    assert_eq!((h2.status, h2.version), (StatusCode::OK, hyper::Version::HTTP_2));
    let body = json!({"to": "+14155550123", "body": "over HTTP/2"});
    let sent = gw
        .client
        .raw_h2(hyper::Method::POST, "/v1/messages", &[("content-type", "application/json")], body.to_string().into())
        .await;
    assert_eq!((sent.status, sent.version), (StatusCode::ACCEPTED, hyper::Version::HTTP_2), "{}", sent.json);
    let h1 = gw.client.get("/healthz").await;
    assert_eq!(h1.version, hyper::Version::HTTP_11);
    let status = gw.client.get(&format!("/v1/messages/{}", sent.json["id"].as_str().unwrap())).await;
    assert_eq!(status.status, StatusCode::OK);
    for a in [&h2, &sent, &h1, &status, &gw.client.get("/v1/nothing").await] {
        assert_eq!(a.headers["strict-transport-security"], "max-age=31536000", "HSTS on every answer");
        assert_eq!(a.headers["cache-control"], "no-store", "no answer is kept by a cache");
    }
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_the_documented_errors() {
    let (_certs, sim, gw, _data) = setup(SimConfig::default()).await;
    let c = &gw.client;
    let json_ct = [("content-type", "application/json")];
    let a = c.raw(Method::POST, "/v1/messages", &json_ct, Bytes::from_static(b"{\"to\": ")).await;
    assert_eq!((a.status, a.json["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));
    assert!(a.json["error"]["message"].as_str().unwrap().len() > 10);
    let a = c.post("/v1/messages", &json!({"to": "+14155550123", "body": "x", "priority": 1})).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str(), a.json["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unknown_field"), Some("priority"))
    );
    let a = c.post("/v1/messages", &json!({"to": "+1415", "body": "x"})).await;
    assert_eq!(
        (a.json["error"]["code"].as_str(), a.json["error"]["field"].as_str()),
        (Some("invalid_field"), Some("to"))
    );
    let big = Bytes::from(vec![b' '; 64 * 1024 + 1]);
    let a = c.raw(Method::POST, "/v1/messages", &json_ct, big).await;
    assert_eq!(
        (a.status, a.json["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );
    let a = c.raw(Method::POST, "/v1/messages", &[("content-type", "text/plain")], Bytes::from_static(b"hi")).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let a = c.get("/v1/messages/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_eq!((a.status, a.json["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let a = c.get("/v1/messages/../../etc/passwd").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = c.get("/v2/anything").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = c.raw(Method::DELETE, "/healthz", &[], Bytes::new()).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(c.get("/healthz").await.status, StatusCode::OK);
    wait_ready(c, "sim", 1).await;
    let ready = c.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.json);
    assert_eq!(ready.json["store"], "open");
    // Nothing bad reached the carrier.
    assert_eq!(sim.stats()["submit_sm_total"], 0);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn messages_wait_for_a_carrier_that_is_down_and_survive_a_restart() {
    let certs = Certs::new();
    // A port held for the simulator, which starts only later (connections are refused).
    let later = Reserved::new();
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, later.port(), "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": format!("queued {i}")})).await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
        ids.push(a.json["id"].as_str().unwrap().to_string());
    }
    let ready = gw.client.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "no carrier bound yet: {}", ready.json);
    assert_eq!(ready.json["carriers"]["sim"]["transmitting_binds"], 0);
    let token = gw.client.token.clone();
    gw.gateway.shutdown().await;

    // Restart on the same data with the carrier now up: everything goes out.
    let sim = TestSim::start_on(&certs, SimConfig::default(), None, later.listen()).await;
    let gateway = smsgate::gateway::Gateway::start(parse_config(&text)).await.unwrap();
    let client = Client::new(gateway.api_addr, &certs.path("api.crt"), token);
    for id in &ids {
        let m = client.wait_message(id, PATIENCE, |m| m["status"] == "delivered").await;
        assert_eq!(m["status"], "delivered", "{m}");
    }
    assert_eq!(sim.stats()["submit_sm_ok"], 5);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_headers_their_status_calls_for() {
    let (_certs, _sim, gw, _data) = setup(SimConfig::default()).await;
    let body = json!({"to": "+14155550123", "body": "headers"});
    let none = gw.client.with_token(None).post("/v1/messages", &body).await;
    assert_eq!(none.headers["www-authenticate"], r#"Bearer realm="smsgate""#);
    assert!(none.json["error"]["message"].as_str().unwrap().starts_with("The request has no"));
    let bad = gw.client.with_token(Some("sgk_000000000000_00")).post("/v1/messages", &body).await;
    assert_eq!(bad.headers["www-authenticate"], r#"Bearer realm="smsgate", error="invalid_token""#);
    assert_eq!(bad.json["error"]["message"], "The API key is not valid, or it has been revoked.");
    let wrong = gw.client.raw(hyper::Method::PATCH, "/v1/messages/01ABC", &[], bytes::Bytes::new()).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.headers["allow"], "GET, DELETE");
    assert_eq!(wrong.json["error"]["message"], "Use GET or DELETE on this path.");
    let sent = gw.client.post("/v1/messages", &body).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED);
    let location = sent.headers["location"].to_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/messages/{}", sent.json["id"].as_str().unwrap()));
    assert_eq!(gw.client.get(&location).await.status, StatusCode::OK, "the Location answers");
    gw.gateway.shutdown().await;
}
