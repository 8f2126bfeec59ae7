//! Webhooks against receivers that are wrong, down or hostile: URLs that name another host
//! than they seem or resolve to metadata and private addresses (run in a network namespace
//! with only loopback, so that a URL wrongly accepted reaches nothing), a receiver that is
//! down with hundreds of entries backing off while another one waits, and a receiver that
//! answers with a gigabyte.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};
use smsgate::sim::SimConfig;

const SECRET: &[u8] = b"whsec-targets-0123456789";

async fn gateway_with_webhooks(certs: &Certs, allow: &str) -> (TestSim, TestGateway, tempfile::TempDir) {
    gateway_trusting(certs, allow, "api.crt").await
}

/// With the webhook receivers' certificate `ca` trusted.
async fn gateway_trusting(certs: &Certs, allow: &str, ca: &str) -> (TestSim, TestGateway, tempfile::TempDir) {
    std::fs::write(certs.path("webhook.secret"), SECRET).unwrap();
    let sim = TestSim::start(certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), certs, sim.tls_port(), "")
        + &format!(
            "[webhooks]\nsecret_file = \"{}\"\nca_file = \"{}\"\nallow_networks = [{allow}]\n",
            certs.path("webhook.secret").display(),
            certs.path(ca).display()
        );
    let gw = TestGateway::start(parse_config(&text), certs).await;
    (sim, gw, data)
}

async fn send_with_hook(gw: &TestGateway, hook: &str) -> Answer {
    gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "hooked", "callback_url": hook})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_that_point_elsewhere_are_refused() {
    // In a namespace of its own: receiver.test is the loopback receiver, metadata.test the
    // cloud metadata address, private.test a private one; nothing else resolves or routes.
    let hosts = "127.0.0.1 receiver.test\n169.254.169.254 metadata.test\n10.1.2.3 private.test";
    if !isolated("webhook_urls_that_point_elsewhere_are_refused", hosts) {
        return;
    }
    let certs = Certs::new();
    let names = ["receiver.test", "metadata.test", "private.test"];
    smsgate::tls::write_self_signed(&names, &certs.path("receiver.crt"), &certs.path("receiver.key")).unwrap();
    let (_sim, gw, _data) = gateway_trusting(&certs, "\"127.0.0.0/8\"", "receiver.crt").await;
    let receiver = Receiver::start_as(&certs, "receiver", SECRET, 0).await;
    // Refused when given, whatever the text around the host says.
    for url in [
        "http://localhost:1@evil.example/h".to_string(),
        "https://user:secret@hooks.example.com/h".to_string(),
        "http://127.0.0.1.evil.example/h".to_string(),
        "http://hooks.example.com/h".to_string(),
        "https://10.0.0.5/h".to_string(),
        "https://169.254.169.254/latest/meta-data".to_string(),
        "https://0xa9.0xfe.0xa9.0xfe/latest".to_string(),
        "https://[::ffff:169.254.169.254]/latest".to_string(),
        "https://[::1]/h".to_string(),
        "ftp://hooks.example.com/h".to_string(),
    ] {
        let a = send_with_hook(&gw, &url).await;
        assert_eq!(
            (a.status, a.json["error"]["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("callback_url")),
            "{url}: {}",
            a.json
        );
    }
    // A name is resolved at delivery, and the address it has then is what counts.
    let port = receiver.port;
    for name in ["metadata.test", "private.test"] {
        let a = send_with_hook(&gw, &format!("https://{name}:{port}/x")).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{name}: {}", a.json);
    }
    let good = send_with_hook(&gw, &format!("https://receiver.test:{port}/ok")).await;
    assert_eq!(good.status, StatusCode::ACCEPTED, "{}", good.json);
    // The allowed receiver gets its webhooks (so names do resolve here)…
    let got = receiver.got.clone();
    eventually(PATIENCE, "the allowed receiver's webhooks", || {
        got.lock().unwrap().iter().any(|d| d.body["status"] == "delivered" && d.valid)
    })
    .await;
    // …and the others are given up as refused, never connected to.
    until(PATIENCE, "the refused webhooks counted", || async {
        let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
        metric(&exposition, "smsgate_webhooks_total{result=\"refused\"}").unwrap_or(0.0) >= 4.0
    })
    .await;
    assert!(got.lock().unwrap().iter().all(|d| d.path == "/ok"), "only the allowed receiver was reached");
    gw.gateway.shutdown().await;
}

/// How receiver X fails.
enum Broken {
    /// Nothing listens: every connection is refused at once.
    Down,
    /// It accepts connections and never says a word: each delivery waits out its deadline.
    Hanging,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_does_not_hold_up_another() {
    receiver_x_does_not_hold_up_receiver_y(Broken::Down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_does_not_hold_up_another() {
    receiver_x_does_not_hold_up_receiver_y(Broken::Hanging).await;
}

async fn receiver_x_does_not_hold_up_receiver_y(broken: Broken) {
    let certs = Certs::new();
    let (_sim, gw, _data) = gateway_with_webhooks(&certs, "\"127.0.0.0/8\"").await;
    let up = Receiver::start(&certs, SECRET, 0).await;
    // Receiver X, with 300 entries due before anything for Y.
    let down = Reserved::new();
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let port = match broken {
        Broken::Down => down.port(),
        Broken::Hanging => {
            let port = hanging.local_addr().unwrap().port();
            let held = held.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = hanging.accept().await {
                    held.lock().unwrap().push(socket);
                }
            });
            port
        }
    };
    let crypto = gw.gateway.store.crypto();
    let x = format!("https://127.0.0.1:{port}/x");
    let ops: Vec<smsgate::store::Op> = (0..300)
        .map(|i| {
            smsgate::store::outbox::inbound_op(&crypto, "default", &x, &json!({"event": "inbound", "n": i})).unwrap()
        })
        .collect();
    gw.gateway.store.commit(ops).await.unwrap();
    match broken {
        Broken::Down => {
            until(PATIENCE, "X's entries failing", || async {
                let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
                metric(&exposition, "smsgate_webhooks_total{result=\"retry\"}").unwrap_or(0.0) >= 8.0
            })
            .await
        }
        // As many of X's deliveries as one host may have are stuck in it.
        Broken::Hanging => eventually(PATIENCE, "X holding deliveries", || held.lock().unwrap().len() >= 4).await,
    }
    // Receiver Y gets its webhooks although X has hundreds of entries in front.
    let hook = format!("https://127.0.0.1:{}/y", up.port);
    let a = send_with_hook(&gw, &hook).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    let id = a.json["id"].as_str().unwrap().to_string();
    let delivered = gw.client.wait_message(&id, PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(delivered["status"], "delivered");
    let since = Instant::now();
    let got = up.got.clone();
    eventually(PATIENCE, "Y's delivered webhook", || {
        got.lock().unwrap().iter().any(|d| d.body["id"] == id.as_str() && d.body["status"] == "delivered")
    })
    .await;
    println!(
        "receiver Y got its webhook {:?} after the message was delivered, with 300 entries for X in front",
        since.elapsed()
    );
    // X's deliveries wait 10 s each when it hangs: Y waiting that long would mean it queued behind X.
    assert!(since.elapsed() < Duration::from_secs(5), "{:?}", since.elapsed());
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_a_gigabyte_is_read_no_further_than_needed() {
    let certs = Certs::new();
    let (_sim, gw, _data) = gateway_with_webhooks(&certs, "\"127.0.0.0/8\"").await;
    let receiver = Receiver::start(&certs, SECRET, 0).await;
    let a = send_with_hook(&gw, &format!("https://127.0.0.1:{}/huge", receiver.port)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    // Each webhook counts as delivered on the 200 alone.
    until(PATIENCE, "the webhooks delivered", || async {
        let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
        metric(&exposition, "smsgate_webhooks_total{result=\"delivered\"}").unwrap_or(0.0) >= 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let streamed = receiver.streamed.load(std::sync::atomic::Ordering::Relaxed);
    println!("huge answers: the receiver wrote {} KiB of 2 × 1 GiB before the gateway hung up", streamed / 1024);
    assert!(streamed < 64 << 20, "{streamed} bytes of the answers were taken");
    let deliveries: Vec<Value> = receiver.got.lock().unwrap().iter().map(|d| d.body.clone()).collect();
    assert!(deliveries.iter().all(|d| d["event"] == "status"), "{deliveries:?}");
    gw.gateway.shutdown().await;
}
