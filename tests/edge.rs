//! The HTTP edge against hostile or sloppy clients: a header sent a byte at a time, idle
//! connections, one connection more than the cap, a flood of the largest batches, and error
//! answers that the real `curl` binary must be able to read over HTTP/1.1 and HTTP/2.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::StatusCode;
use serde_json::json;
use smsgate::sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS connection to the API on which the test writes raw bytes.
async fn raw_tls(addr: std::net::SocketAddr, certs: &Certs) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = (*smsgate::tls::client_config(Some(&certs.path("api.crt")), &[], None).unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

/// Reads until the peer closes (or `limit` passes); returns how long that took.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn gateway(extra_api: &str) -> (Certs, TestSim, TestGateway, tempfile::TempDir) {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), None).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "").replacen(
        "[metrics]",
        &format!("{extra_api}\n[metrics]"),
        1,
    );
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    (certs, sim, gw, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_and_idle_connections_are_cut_off_while_others_are_served() {
    let (certs, _sim, gw, _data) = gateway("header_read_timeout_secs = 2\nidle_timeout_secs = 2").await;
    // A header a byte at a time: the connection ends at the header deadline.
    let mut slow = raw_tls(gw.gateway.api_addr, &certs).await;
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        for b in b"POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".iter().cycle().take(200) {
            if slow.write_all(&[*b]).await.is_err() || slow.flush().await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut [0u8; 64])).await {
                return Some(started.elapsed());
            }
        }
        None
    });
    // Meanwhile an ordinary request is served.
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "not held up"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.json);
    let cut = trickle.await.unwrap().expect("the slow header was cut off");
    println!("slow header: connection closed after {cut:?} (deadline 2 s)");
    assert!(cut >= Duration::from_secs(2) && cut < Duration::from_secs(15), "{cut:?}");

    // An HTTP/1.1 keep-alive connection left idle after a request ends at the same deadline.
    let mut idle = raw_tls(gw.gateway.api_addr, &certs).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let closed = closed_within(&mut idle, Duration::from_secs(15)).await;
    println!("idle HTTP/1.1 connection closed after {closed:?}");
    assert!(closed.is_some_and(|d| d >= Duration::from_secs(2)), "{closed:?}");

    // An HTTP/2 connection with no stream ends after idle_timeout_secs.
    let sender = gw.client.h2().await;
    let started = Instant::now();
    let mut gone = false;
    while started.elapsed() < Duration::from_secs(15) {
        if sender.is_closed() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("idle HTTP/2 connection closed after {:?}", started.elapsed());
    assert!(gone && started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    gw.gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_over_the_cap_is_refused_and_counted() {
    let (certs, _sim, gw, _data) = gateway("max_connections = 3").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(gw.client.connect().await.unwrap());
    }
    for c in &mut open {
        assert_eq!(c.get_json("/healthz").await.unwrap().0, StatusCode::OK);
    }
    // The fourth: accepted by the kernel, closed by smsgate before TLS.
    let tcp = tokio::net::TcpStream::connect(gw.gateway.api_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = smsgate::tls::client_config(Some(&certs.path("api.crt")), &[], None).unwrap();
    let refused = tokio::time::timeout(PATIENCE, tokio_rustls::TlsConnector::from(tls).connect(name, tcp)).await;
    assert!(matches!(refused, Ok(Err(_))), "the connection over the cap is closed");
    let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
    assert!(metric(&exposition, "smsgate_api_connections_refused_total").unwrap_or(0.0) >= 1.0, "counted");
    assert_eq!(metric(&exposition, "smsgate_api_connections"), Some(3.0));
    // Once one closes, there is room again.
    drop(open.pop());
    until(PATIENCE, "room for a new connection", || async {
        match gw.client.connect().await {
            Ok(mut c) => c.get_json("/healthz").await.is_ok_and(|(s, _)| s == StatusCode::OK),
            Err(_) => false,
        }
    })
    .await;
    gw.gateway.shutdown().await;
}

/// RSS of a process, MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_the_largest_batches_keeps_memory_bounded() {
    let concurrent: usize = std::env::var("SMSGATE_FLOOD_BATCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) = config_file_with_key(&certs, &config_text(data.path(), &certs, sim.tls_port(), ""));
    let gw = GatewayProcess::start(&config, &certs.path("flood.log"), &[]).expect("starts");
    let client = gw.client(&certs, &token);
    // 1000 messages of 650 Cyrillic letters written as \u escapes, every one with an invalid
    // number: each is parsed and refused, nothing is stored. Just under the 4 MiB limit.
    let item = format!(r#"{{"to":"+1415","body":"{}"}}"#, "\\u0436".repeat(650));
    let body = Bytes::from(format!(r#"{{"messages":[{}]}}"#, vec![item; 1000].join(",")));
    assert!(body.len() > 3_900_000 && body.len() <= 4 << 20, "{}", body.len());
    let before = rss_mib(gw.child.id());
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let (peak, pid) = (peak.clone(), gw.child.id());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_mib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrent {
        let (client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            client.raw(hyper::Method::POST, "/v1/messages/batch", &[("content-type", "application/json")], body).await
        }));
    }
    let mut answers = std::collections::BTreeMap::new();
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == StatusCode::OK {
            assert_eq!(a.json["rejected"], 1000, "{}", a.json["accepted"]);
        }
        *answers.entry(a.status.as_u16()).or_insert(0) += 1;
    }
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "batch flood: {concurrent} concurrent {:.1} MiB batches in {:?}; answers {answers:?}; gateway RSS {before} MiB before, peak {peak} MiB",
        body.len() as f64 / 1048576.0,
        started.elapsed()
    );
    assert!(answers.keys().all(|s| *s == 200 || *s == 503), "only parsed answers or 503 busy: {answers:?}");
    assert!(answers.get(&200).copied().unwrap_or(0) > 0);
    // The body budget (64 MiB) bounds what is held; 200 × 4 MiB would be 800 MiB.
    assert!(peak < before + 400, "RSS grew from {before} to {peak} MiB");
}

/// curl as a user runs it; (exit code, body, HTTP status).
fn curl(args: &[&str]) -> (i32, String, u16) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or((&stdout, "0"));
    (out.status.code().unwrap_or(-1), body.to_string(), code.trim().parse().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_every_early_error_over_http1_and_http2() {
    if !have("curl", "curl") {
        return;
    }
    let (certs, _sim, gw, _data) = gateway("").await;
    let url = format!("https://127.0.0.1:{}/v1/messages", gw.gateway.api_addr.port());
    let ca = certs.path("api.crt").display().to_string();
    let big = certs.path("big.json");
    std::fs::write(&big, json!({"to": "+14155550123", "body": "x".repeat(70_000)}).to_string()).unwrap();
    let small = r#"{"to":"+14155550123","body":"hi"}"#;
    let token = gw.client.token.clone().unwrap();
    let auth = format!("Authorization: Bearer {token}");
    let data_big = format!("@{}", big.display());
    let results = tokio::task::spawn_blocking(move || {
        let cases: [(&str, Vec<&str>, u16, &str); 3] = [
            ("no key", vec!["-d", small], 401, "unauthorized"),
            ("bad key", vec!["-H", "Authorization: Bearer sgk_000000000000_00", "-d", small], 401, "unauthorized"),
            ("70 KB body", vec!["-H", &auth, "--data-binary", &data_big], 413, "payload_too_large"),
        ];
        let mut failures = Vec::new();
        for version in ["--http2", "--http1.1"] {
            for (name, extra, status, code) in &cases {
                for i in 0..20 {
                    let mut args =
                        vec![version, "--cacert", &ca, "-X", "POST", &url, "-H", "Content-Type: application/json"];
                    args.extend(extra.iter().copied());
                    let (rc, body, got) = curl(&args);
                    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    if rc != 0 || got != *status || parsed["error"]["code"] != *code {
                        failures.push(format!("{version} {name} #{i}: curl exit {rc}, HTTP {got}, body {body:.120}"));
                    }
                }
            }
        }
        failures
    })
    .await
    .unwrap();
    assert!(results.is_empty(), "{} of 120 answers not read: {results:#?}", results.len());
    gw.gateway.shutdown().await;
}
