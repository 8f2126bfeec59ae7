//! The carrier interop matrix, run against both simulators as separate processes with the
//! same switches: the independent node one (`shared/tools/smsc-sim`, node-smpp) and the
//! built-in `smsgate smsc-sim`. Every case checks what arrived at the simulator (its
//! `--record` file and `/stats`), not only what smsgate reports.
//!
//! Node cases skip with a message when node or the simulator's `node_modules` is missing,
//! unless `SMSGATE_REQUIRE_NODE=1` (as in CI).

mod common;

use std::time::Duration;

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

/// Starts a simulator of `kind` with `args`; `None` when the node one is not installed.
fn spawn_sim(kind: Kind, certs: &Certs, args: &[&str]) -> Option<SimProcess> {
    SimProcess::start(kind, certs, args)
}

/// A gateway whose one carrier is `sim`, over TLS or plain TCP, with extra carrier keys.
async fn gateway(certs: &Certs, sim: &SimProcess, tls: bool, extra: &str) -> (TestGateway, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let port = if tls { sim.tls_port() } else { sim.plain_port() };
    let mut text = config_text(data.path(), certs, port, extra);
    if !tls {
        text = text
            .replace("tls = true", "tls = false")
            .replace(&format!("ca_file = \"{}\"\n", certs.path("smsc.crt").display()), "");
    }
    (TestGateway::start(parse_config(&text), certs).await, data)
}

async fn send_all(gw: &TestGateway, bodies: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for b in bodies {
        let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": b, "from": "CLINIC"})).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
        ids.push(a.json["id"].as_str().unwrap().to_string());
    }
    ids
}

async fn wait_final(gw: &TestGateway, ids: &[String], timeout: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let m = gw
            .client
            .wait_message(id, timeout, |m| {
                matches!(m["status"].as_str(), Some("delivered" | "undeliverable" | "failed" | "expired" | "rejected"))
            })
            .await;
        out.push(m);
    }
    out
}

/// Texts the simulator accepted (status 0), single parts as they are, concatenated parts
/// reassembled by (reference, sequence).
fn arrived_texts(records: &[Value]) -> Vec<String> {
    let mut singles = Vec::new();
    let mut groups: std::collections::BTreeMap<(u64, u64), Vec<(u64, String)>> = Default::default();
    for r in records.iter().filter(|r| r["command_status"] == 0) {
        let text = r["text"].as_str().unwrap_or_default().to_string();
        match r["concat"].as_object() {
            Some(c) => groups
                .entry((c["ref"].as_u64().unwrap(), c["total"].as_u64().unwrap()))
                .or_default()
                .push((c["seq"].as_u64().unwrap(), text)),
            None => singles.push(text),
        }
    }
    for (_, mut parts) in groups {
        parts.sort();
        parts.dedup_by_key(|p| p.0);
        singles.push(parts.into_iter().map(|p| p.1).collect());
    }
    singles
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} message {i}")).collect()
}

async fn plain_tcp(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &[]) else { return };
    let (gw, _d) = gateway(&certs, &sim, false, "").await;
    let b = bodies("tcp", 3);
    let done = wait_final(&gw, &send_all(&gw, &b).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"), "{done:?}");
    let mut got = arrived_texts(&sim.records());
    got.sort();
    assert_eq!(got, b);
    gw.gateway.shutdown().await;
}

async fn tls_with_encodings(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &[]) else { return };
    let (gw, _d) = gateway(&certs, &sim, true, "").await;
    let gsm500: String = "Appointment reminder: {clinic} [room 4] costs ~€0, reply STOP to opt out. "
        .repeat(7)
        .chars()
        .take(500)
        .collect();
    let ucs300: String = "Напоминание о приёме 👩‍⚕️ завтра в 9:30. ".repeat(10).chars().take(300).collect();
    let b = vec!["Emoji 🎉 and ümlauts".to_string(), gsm500.clone(), ucs300.clone()];
    let done = wait_final(&gw, &send_all(&gw, &b).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"), "{done:?}");
    assert_eq!(done[1]["encoding"], "gsm7");
    assert_eq!(done[2]["encoding"], "ucs2");
    let records = sim.records();
    let got = arrived_texts(&records);
    for body in &b {
        assert!(got.contains(body), "{body:?} not reassembled from {got:?}");
    }
    // The 500-character GSM text went as 8-bit-reference UDH parts of data_coding 0.
    let gsm_parts = records.iter().filter(|r| r["data_coding"] == 0 && r["concat"].is_object()).count();
    assert_eq!(gsm_parts as u64, done[1]["segments"].as_u64().unwrap());
    gw.gateway.shutdown().await;
}

async fn three_binds(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &["--resp-delay-ms", "20"]) else { return };
    let (gw, _d) = gateway(&certs, &sim, true, "binds = 3\nwindow = 4").await;
    wait_ready(&gw.client, "sim", 3).await;
    let b = bodies("pool", 40);
    let done = wait_final(&gw, &send_all(&gw, &b).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"));
    let records = sim.records();
    let sessions: std::collections::HashSet<u64> = records.iter().filter_map(|r| r["session"].as_u64()).collect();
    assert_eq!(sessions.len(), 3, "traffic shared across the binds");
    assert_eq!(sim.stats().await["binds"], 3);
    gw.gateway.shutdown().await;
}

async fn throttling(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &["--throttle", "5"]) else { return };
    let (gw, _d) = gateway(&certs, &sim, true, "throttle_pause_ms = 300").await;
    let b = bodies("throttle", 15);
    let done = wait_final(&gw, &send_all(&gw, &b).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"), "throttled messages are retried, not failed: {done:?}");
    let stats = sim.stats().await;
    assert!(stats["throttled"].as_u64().unwrap() > 0, "the simulator throttled: {stats}");
    let mut got = arrived_texts(&sim.records());
    got.sort();
    got.dedup();
    let mut want = b.clone();
    want.sort();
    assert_eq!(got, want);
    gw.gateway.shutdown().await;
}

async fn dropped_mid_window(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &["--drop-after", "5", "--resp-delay-ms", "30"]) else { return };
    let (gw, _d) = gateway(&certs, &sim, true, "window = 10").await;
    let b = bodies("drop", 20);
    let done = wait_final(&gw, &send_all(&gw, &b).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"), "{done:?}");
    let got: std::collections::HashSet<String> = arrived_texts(&sim.records()).into_iter().collect();
    assert!(b.iter().all(|x| got.contains(x)), "every message arrived after the drop");
    assert!(sim.stats().await["drops"].as_u64().unwrap() >= 1);
    gw.gateway.shutdown().await;
}

async fn failed_receipts(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &["--dlr-fail-ratio", "0.5"]) else { return };
    let (gw, _d) = gateway(&certs, &sim, true, "").await;
    let done = wait_final(&gw, &send_all(&gw, &bodies("dlr", 10)).await, PATIENCE).await;
    let undeliv = done.iter().filter(|m| m["status"] == "undeliverable").count();
    let delivered = done.iter().filter(|m| m["status"] == "delivered").count();
    assert_eq!((delivered, undeliv), (5, 5), "{done:?}");
    gw.gateway.shutdown().await;
}

async fn long_message_modes(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &[]) else { return };
    let body: String = "Long text for concatenation checks. ".repeat(12);
    for (mode, check) in [("udh16", "ref_bits16"), ("sar", "sar"), ("payload", "payload")] {
        let extra = format!("long_messages = \"{mode}\"");
        let (gw, _d) = gateway(&certs, &sim, true, &extra).await;
        let before = sim.records().len();
        let done = wait_final(&gw, &send_all(&gw, std::slice::from_ref(&body)).await, PATIENCE).await;
        assert_eq!(done[0]["status"], "delivered", "{mode}: {}", done[0]);
        let records: Vec<Value> = sim.records().into_iter().skip(before).collect();
        match check {
            "ref_bits16" => {
                assert!(records.iter().all(|r| r["concat"]["ref_bits"] == 16 && r["udh"] == true), "{records:?}")
            }
            "sar" => assert!(records.iter().all(|r| r["concat"]["sar"] == true && r["udh"] == false), "{records:?}"),
            _ => assert!(records.len() == 1 && records[0]["message_payload"] == true, "{records:?}"),
        }
        assert_eq!(arrived_texts(&records), vec![body.clone()], "{mode}");
        gw.gateway.shutdown().await;
    }
}

async fn latin1_and_decimal_ids(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &["--msgid-format", "dec", "--msgid-start", "99"]) else { return };
    let (gw, _d) =
        gateway(&certs, &sim, true, "latin1 = true\nsubmit_id_format = \"dec\"\nreceipt_id_format = \"dec\"").await;
    let b = vec!["Café à l'hôpital: ça va?".to_string()];
    let done = wait_final(&gw, &send_all(&gw, &b).await, PATIENCE).await;
    assert_eq!(done[0]["status"], "delivered", "{}", done[0]);
    assert_eq!(done[0]["carrier_message_ids"][0], "99");
    let r = &sim.records()[0];
    assert_eq!((r["data_coding"].as_u64(), r["text"].as_str()), (Some(3), Some(b[0].as_str())));
    gw.gateway.shutdown().await;
}

async fn split_binds(kind: Kind) {
    let certs = Certs::new();
    let Some(sim) = spawn_sim(kind, &certs, &[]) else { return };
    let (gw, _d) = gateway(&certs, &sim, true, "bind_mode = \"split\"").await;
    let done = wait_final(&gw, &send_all(&gw, &bodies("split", 4)).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"), "receipts come back on the receiver: {done:?}");
    let sessions = sim.sessions().await;
    let mut modes: Vec<&str> = sessions.as_array().unwrap().iter().filter_map(|s| s["mode"].as_str()).collect();
    modes.sort();
    assert_eq!(modes, ["receiver", "transmitter"], "{sessions}");
    gw.gateway.shutdown().await;
}

macro_rules! matrix {
    ($($case:ident),* $(,)?) => {
        mod node {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Node).await;
                }
            )*
        }
        mod builtin {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Kind::Builtin).await;
                }
            )*
        }
    };
}

matrix!(
    plain_tcp,
    tls_with_encodings,
    three_binds,
    split_binds,
    throttling,
    dropped_mid_window,
    failed_receipts,
    long_message_modes,
    latin1_and_decimal_ids,
);

/// Mutual TLS: only the built-in simulator can ask for client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_the_builtin_simulator() {
    let certs = Certs::new();
    let (ca, cert, key) = (certs.path("client-ca.crt"), certs.path("client.crt"), certs.path("client.key"));
    smsgate::tls::write_client_ca(&ca, &cert, &key).unwrap();
    let ca_arg = ca.display().to_string();
    let sim = spawn_sim(Kind::Builtin, &certs, &["--client-ca", &ca_arg]).unwrap();
    // Without a client certificate the handshake fails and readyz says why.
    let (gw, _d) = gateway(&certs, &sim, true, "").await;
    until(PATIENCE, "the bind error in readyz", || async {
        gw.client.get("/readyz").await.json["carriers"]["sim"]["binds"][0]["last_error"].is_string()
    })
    .await;
    let ready = gw.client.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let err = ready.json["carriers"]["sim"]["binds"][0]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(!err.is_empty(), "{}", ready.json);
    gw.gateway.shutdown().await;
    // With it, messages flow.
    let extra = format!("client_cert = \"{}\"\nclient_key = \"{}\"", cert.display(), key.display());
    let (gw, _d) = gateway(&certs, &sim, true, &extra).await;
    let done = wait_final(&gw, &send_all(&gw, &bodies("mtls", 2)).await, PATIENCE).await;
    assert!(done.iter().all(|m| m["status"] == "delivered"), "{done:?}");
    gw.gateway.shutdown().await;
}

/// A certificate that does not verify is an error naming the carrier's problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_smsc_certificate_is_refused_with_the_reason() {
    let certs = Certs::new();
    let sim = spawn_sim(Kind::Builtin, &certs, &[]).unwrap();
    let data = tempfile::tempdir().unwrap();
    // Trust the API certificate instead of the SMSC's: verification must fail.
    let text = config_text(data.path(), &certs, sim.tls_port(), "")
        .replace(&certs.path("smsc.crt").display().to_string(), &certs.path("api.crt").display().to_string());
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    until(PATIENCE, "the bind error in readyz", || async {
        gw.client.get("/readyz").await.json["carriers"]["sim"]["binds"][0]["last_error"].is_string()
    })
    .await;
    let err =
        gw.client.get("/readyz").await.json["carriers"]["sim"]["binds"][0]["last_error"].as_str().unwrap().to_string();
    assert!(err.contains("TLS handshake") && err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(sim.stats().await["bind_ok"], 0);
    gw.gateway.shutdown().await;
}

/// `openssl` run with `args` (a failure fails the test); its stdout.
fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl").args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bind_error(readyz: &Value) -> Option<String> {
    readyz["carriers"]["sim"]["binds"][0]["last_error"].as_str().map(String::from)
}

/// A carrier with an `openssl req -x509` certificate (which marks itself a CA): `ca_file`
/// cannot trust it and the error says how to pin it; `pin_sha256` binds; a wrong pin does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_smsc_certificate_is_trusted_by_its_pin() {
    if !std::process::Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        skip("openssl", "`openssl` is not installed");
        return;
    }
    let certs = Certs::new();
    let (crt, key) = (certs.path("smsc.crt"), certs.path("smsc.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
    ]);
    assert!(openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"]).contains("CA:TRUE"));
    // The pin as smsgate prints it is the pin as openssl computes it.
    let (status, stdout, stderr) = smsgate(&["check-config".as_ref(), "--pin".as_ref(), crt.as_os_str()]);
    assert!(status.success(), "{stderr}");
    let pin = stdout.trim().strip_prefix("pin_sha256 = [\"").and_then(|p| p.strip_suffix("\"]")).unwrap().to_string();
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        crt.display()
    );
    let by_openssl = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&by_openssl.stdout).trim(), pin);
    // The independent simulator presents it (Node's TLS).
    let Some(sim) = spawn_sim(Kind::Node, &certs, &[]) else { return };

    // As a CA file: never binds, and the error names the way out, with the pin.
    let (gw, _data) = gateway(&certs, &sim, true, "").await;
    until(PATIENCE, "the bind error", || async { bind_error(&gw.client.get("/readyz").await.json).is_some() }).await;
    let err = bind_error(&gw.client.get("/readyz").await.json).unwrap();
    assert!(err.contains("CaUsedAsEndEntity") && err.contains(&format!("pin_sha256 = [\"{pin}\"]")), "{err}");
    gw.gateway.shutdown().await;

    // A pin that is not this key's: refused, saying which key was presented.
    let ca_line = format!("ca_file = \"{}\"\n", crt.display());
    let other = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let data = tempfile::tempdir().unwrap();
    let text =
        config_text(data.path(), &certs, sim.tls_port(), &format!("pin_sha256 = [\"{other}\"]")).replace(&ca_line, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    until(PATIENCE, "the bind error", || async { bind_error(&gw.client.get("/readyz").await.json).is_some() }).await;
    let err = bind_error(&gw.client.get("/readyz").await.json).unwrap();
    assert!(err.contains("not in pin_sha256") && err.contains(&pin), "{err}");
    gw.gateway.shutdown().await;

    // Its pin: binds and delivers.
    let data = tempfile::tempdir().unwrap();
    let text =
        config_text(data.path(), &certs, sim.tls_port(), &format!("pin_sha256 = [\"{pin}\"]")).replace(&ca_line, "");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw.client, "sim", 1).await;
    let ids = send_all(&gw, &["pinned".to_string()]).await;
    let done = wait_final(&gw, &ids, PATIENCE).await;
    assert_eq!(done[0]["status"], "delivered", "{}", done[0]);
    gw.gateway.shutdown().await;
}

/// A carrier with hexadecimal `submit_sm_resp` ids and receipts that carry the id only in
/// their text, in decimal: delivered with no id format configured, the fallback counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_with_decimal_ids_match_hex_submit_ids_without_configuration() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &["--msgid-start", "1000", "--receipt-id-decimal-text"]);
    let (gw, _data) = gateway(&certs, &sim, true, "").await;
    let ids = send_all(&gw, &bodies("dec-receipt", 8)).await;
    let done = wait_final(&gw, &ids, PATIENCE).await;
    for m in &done {
        assert_eq!(m["status"], "delivered", "{m}");
    }
    // The ids really differ in form: hex in the answer, decimal in the receipt.
    assert!(
        done.iter().any(|m| m["carrier_message_ids"][0].as_str().unwrap().bytes().any(|b| b.is_ascii_alphabetic()))
    );
    let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
    let counted =
        metric(&exposition, "smsgate_receipt_id_fallback_total{carrier=\"sim\",form=\"dec_receipt_hex_submit\"}");
    assert!(counted.unwrap_or(0.0) >= 1.0, "{exposition}");
    gw.gateway.shutdown().await;
}
