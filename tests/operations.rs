//! What an SRE relies on, with the real binary: metrics that a real parser accepts, logs
//! without PHI at trace level, graceful SIGTERM, SIGHUP reload, backup while serving and
//! restore, check-config pointing at lines, the dashboard and alert files.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_smsgate");

struct Gw {
    child: Child,
    log: PathBuf,
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes a config with fixed API and metrics ports and starts `smsgate serve`.
fn config_file(certs: &Certs, data: &Path, sim_port: u16, api: u16, metrics: u16, extra: &str) -> PathBuf {
    let text = config_text(data, certs, sim_port, "")
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{api}\""), 1)
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{metrics}\""), 1)
        + extra;
    let path = certs.path(&format!("ops-{api}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, log: PathBuf, rust_log: Option<&str>) -> Gw {
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(config).stdout(Stdio::null()).stderr(file);
    match rust_log {
        Some(l) => cmd.env("RUST_LOG", l),
        None => cmd.env_remove("RUST_LOG"),
    };
    Gw { child: cmd.spawn().unwrap(), log }
}

fn key(config: &Path) -> String {
    let out = Command::new(BIN)
        .args(["keys", "create", "--name", "ops", "--scopes", "send,read,optouts", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().find_map(|l| l.strip_prefix("token:")).unwrap().trim().to_string()
}

async fn ready(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = client.connect().await
            && let Ok((StatusCode::OK, _)) = c.get_json("/readyz").await
        {
            return;
        }
        assert!(Instant::now() < deadline, "gateway never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
}

fn sighup(child: &Child) {
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(port: u16, path: &str) -> String {
    let out = Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}{path}")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn promtool() -> Option<PathBuf> {
    let found = Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("SMSGATE_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "SMSGATE_REQUIRE_PROMTOOL=1 but promtool is missing"
        );
        eprintln!("SKIPPED: promtool not installed (Debian package 'prometheus')");
        return None;
    }
    Some(PathBuf::from("promtool"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_at_trace_level_logs_no_phi_and_metrics_parse() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (api, metrics) = (free_port(), free_port());
    let config = config_file(&certs, data.path(), sim.tls_port(), api, metrics, "");
    let token = key(&config);
    let mut gw = start(&config, certs.path("trace.log"), Some("trace"));
    let client = Client::new(format!("127.0.0.1:{api}").parse().unwrap(), &certs.path("api.crt"), Some(token));
    ready(&client).await;
    let number = "+14155550142";
    let body = "Gadolinium-Pineapple imaging results are ready";
    let a = client.post("/v1/messages", &json!({"to": number, "body": body, "from": "CLINIC"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let m = client
        .wait_message(a.json["id"].as_str().unwrap(), Duration::from_secs(10), |m| m["status"] == "delivered")
        .await;
    assert_eq!(m["status"], "delivered");
    let inbound = "Quokka-Saxophone reply STOP";
    sim.control("/mo", Some(json!({"from": number, "to": "CLINIC", "text": inbound}))).await;
    sim.control("/mo", Some(json!({"from": number, "to": "CLINIC", "text": "STOP"}))).await;
    let refused = client.post("/v1/messages", &json!({"to": number, "body": body})).await;
    assert_eq!(refused.json["error"]["code"], "recipient_opted_out");
    // Metrics: a real parser accepts them.
    let exposition = tokio::task::spawn_blocking(move || http_get(metrics, "/metrics")).await.unwrap();
    for name in [
        "smsgate_api_requests_total",
        "smsgate_messages_accepted_total",
        "smsgate_messages_submitted_total",
        "smsgate_messages_final_total",
        "smsgate_submit_latency_seconds_bucket",
        "smsgate_delivery_latency_seconds_bucket",
        "smsgate_smpp_binds",
        "smsgate_inbound_total",
        "smsgate_optouts_total",
        "smsgate_store_commit_seconds_bucket",
        "smsgate_store_commit_batch_size_bucket",
        "smsgate_api_request_duration_seconds_bucket",
        "smsgate_smpp_window_in_use",
        "smsgate_receipts_total",
    ] {
        assert!(exposition.contains(name), "{name} missing");
    }
    if let Some(promtool) = promtool() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let problems = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool check metrics: {problems}");
    }
    sigterm(&gw.child);
    assert!(wait_exit(&mut gw.child, Duration::from_secs(30)).is_some());
    let mut log = String::new();
    std::fs::File::open(&gw.log).unwrap().read_to_string(&mut log).unwrap();
    assert!(log.len() > 10_000, "trace logging produced output ({} bytes)", log.len());
    for needle in [number, &number[1..], &number[2..], body, "Gadolinium", inbound, "Quokka"] {
        assert!(!log.contains(needle), "'{needle}' appears in the trace log");
    }
    println!("PHI log check: {} bytes of trace output, no number or body found", log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_unbinds_and_loses_nothing() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &["--resp-delay-ms", "300"]);
    let data = tempfile::tempdir().unwrap();
    let (api, metrics) = (free_port(), free_port());
    let config = config_file(&certs, data.path(), sim.tls_port(), api, metrics, "");
    let token = key(&config);
    let mut gw = start(&config, certs.path("term.log"), None);
    let client = Client::new(format!("127.0.0.1:{api}").parse().unwrap(), &certs.path("api.crt"), Some(token.clone()));
    ready(&client).await;
    let batch: Vec<Value> = (0..40).map(|i| json!({"to": "+14155550123", "body": format!("drain {i}")})).collect();
    let a = client.post("/v1/messages/batch", &json!({"messages": batch})).await;
    assert_eq!(a.json["accepted"], 40);
    tokio::time::sleep(Duration::from_millis(100)).await; // some submits in flight (300 ms answers)
    let stopped = Instant::now();
    sigterm(&gw.child);
    let status = wait_exit(&mut gw.child, Duration::from_secs(40)).expect("exits within the shutdown timeout");
    assert!(status.success(), "exit status {status}");
    println!("graceful shutdown took {} ms", stopped.elapsed().as_millis());
    let stats = sim.control("/stats", None).await;
    assert!(stats["unbind"].as_u64().unwrap() >= 1, "unbind sent: {stats}");
    assert_eq!(stats["submit_sm_unanswered"].as_u64().unwrap_or(0), 0);
    // Restart: whatever was not submitted goes out now; nothing is lost, nothing resent.
    let _gw2 = start(&config, certs.path("term2.log"), None);
    ready(&client).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let texts: std::collections::HashSet<String> = sim
            .records()
            .iter()
            .filter(|r| r["command_status"] == 0)
            .filter_map(|r| r["text"].as_str().map(String::from))
            .collect();
        if texts.len() == 40 {
            let total = sim.records().iter().filter(|r| r["command_status"] == 0).count();
            assert_eq!(total, 40, "no duplicates after a graceful stop");
            break;
        }
        assert!(Instant::now() < deadline, "{} of 40 arrived", texts.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_dropping_binds_and_refuses_a_bad_config() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (api, metrics) = (free_port(), free_port());
    let config = config_file(
        &certs,
        data.path(),
        sim.tls_port(),
        api,
        metrics,
        "[[routes]]\nprefix = \"+1\"\ncarriers = [\"sim\"]\n",
    );
    let token = key(&config);
    let gw = start(&config, certs.path("hup.log"), None);
    let client = Client::new(format!("127.0.0.1:{api}").parse().unwrap(), &certs.path("api.crt"), Some(token));
    ready(&client).await;
    assert_eq!(
        client.post("/v1/messages", &json!({"to": "+447911123456", "body": "x"})).await.json["error"]["code"],
        "no_route"
    );
    // New routes, a carrier rate and a new opt-out reply.
    let original = std::fs::read_to_string(&config).unwrap();
    let changed = original
        .replace("prefix = \"+1\"", "prefix = \"+\"")
        .replace("response_timeout_secs = 3", "response_timeout_secs = 3\nrate = 50")
        + "[compliance]\noptout_reply = \"Reloaded reply\"\n";
    std::fs::write(&config, &changed).unwrap();
    sighup(&gw.child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = client.post("/v1/messages", &json!({"to": "+447911123456", "body": "after reload"})).await;
        if a.status == StatusCode::ACCEPTED {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied: {}", a.json);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.control("/mo", Some(json!({"from": "+14155550123", "to": "12345", "text": "STOP"}))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim.records().iter().any(|r| r["text"] == "Reloaded reply") {
        assert!(Instant::now() < deadline, "new reply text not used");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken config is refused and the running one stays.
    std::fs::write(&config, changed.replace("window", "windoh")).unwrap();
    std::fs::write(&config, changed.clone() + "this is not toml = = =\n").unwrap();
    sighup(&gw.child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = client.post("/v1/messages", &json!({"to": "+447911123457", "body": "still fine"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let stats = sim.control("/stats", None).await;
    assert_eq!(
        (stats["connections"].as_u64(), stats["bind_ok"].as_u64()),
        (Some(1), Some(1)),
        "binds were never dropped: {stats}"
    );
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(log.contains("configuration reloaded") && log.contains("reload refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_then_restore_finds_everything() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (api, metrics) = (free_port(), free_port());
    let config = config_file(&certs, data.path(), sim.tls_port(), api, metrics, "");
    let token = key(&config);
    let mut gw = start(&config, certs.path("backup.log"), None);
    let client = Client::new(format!("127.0.0.1:{api}").parse().unwrap(), &certs.path("api.crt"), Some(token));
    ready(&client).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            client.post("/v1/messages", &json!({"to": "+14155550123", "body": format!("keep {i}")})).await.json["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let put = client.raw(hyper::Method::PUT, "/v1/opt-outs/%2B14155550199", &[], bytes::Bytes::new()).await;
    assert_eq!(put.status, StatusCode::OK);
    // Keep sending while the backup is taken.
    let load = {
        let c = client.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                c.post("/v1/messages", &json!({"to": "+14155550123", "body": format!("during {i}")})).await;
            }
        })
    };
    let out = certs.path("smsgate.backup");
    let cfg = config.clone();
    let out2 = out.clone();
    let backup = tokio::task::spawn_blocking(move || {
        Command::new(BIN).arg("backup").arg("--out").arg(&out2).arg("--config").arg(&cfg).output().unwrap()
    })
    .await
    .unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    load.await.unwrap();
    sigterm(&gw.child);
    wait_exit(&mut gw.child, Duration::from_secs(30));
    let audit_lines_in_backup = {
        let c = smsgate::store::backup::read(&out).unwrap();
        let audit = c.files.iter().find(|(n, _)| n == "audit/audit.jsonl").expect("audit log in the backup");
        String::from_utf8_lossy(&audit.1).lines().count()
    };
    // Restore into an empty data directory with the same keys.
    let restored = tempfile::tempdir().unwrap();
    let rconfig = config_file(&certs, restored.path(), sim.tls_port(), free_port(), free_port(), "");
    let r = Command::new(BIN).arg("restore").arg(&out).arg("--config").arg(&rconfig).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // Restoring again over it is refused.
    let again = Command::new(BIN).arg("restore").arg(&out).arg("--config").arg(&rconfig).output().unwrap();
    assert!(!again.status.success());
    let v = Command::new(BIN).args(["audit", "verify", "--config"]).arg(&rconfig).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stdout).contains(&format!("{audit_lines_in_backup} entries")));
    let gateway =
        smsgate::gateway::Gateway::start(parse_config(&std::fs::read_to_string(&rconfig).unwrap())).await.unwrap();
    for id in &ids {
        let m = gateway.store.message(id).unwrap().expect("every message before the backup");
        assert!(m.content.body.starts_with("keep "));
    }
    let optouts = smsgate::compliance::registry::list_optouts(&gateway.store).unwrap();
    assert_eq!(optouts.len(), 1);
    assert_eq!(optouts[0].0, "+14155550199");
    gateway.shutdown().await;
    // A damaged backup is refused.
    let mut bytes = std::fs::read(&out).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&out, bytes).unwrap();
    assert!(smsgate::store::backup::read(&out).unwrap_err().to_string().contains("checksum"));
}

#[test]
fn check_config_names_each_problem_with_its_line() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let good = config_text(data.path(), &certs, 2775, "");
    let path = certs.path("check.toml");
    std::fs::write(&path, &good).unwrap();
    let ok = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = good.replace("response_timeout_secs = 3", "response_timeout_secs = 3\nwindow = 0\nbinds = 99")
        + "[[routes]]\nprefix = \"+1\"\ncarriers = [\"nope\"]\n";
    std::fs::write(&path, &bad).unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| bad.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    assert!(err.contains(&format!("check.toml:{}: carriers[0] (sim).window", line_of("window = 0"))), "{err}");
    assert!(err.contains(&format!("check.toml:{}: carriers[0] (sim).binds", line_of("binds = 99"))), "{err}");
    assert!(err.contains("routes[0].carriers: no carrier named 'nope'"), "{err}");
    // Unknown keys and syntax errors carry their line from the parser.
    std::fs::write(&path, good.replace("[dispatch]", "[dispatch]\nretries = 3")).unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retries") && err.contains("line"), "{err}");
    // A key that does not match its certificate.
    std::fs::write(
        &path,
        good.replace(&certs.path("api.key").display().to_string(), &certs.path("smsc.key").display().to_string()),
    )
    .unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("api.tls_cert"), "{err}");
}

#[test]
fn dashboard_and_alerts_are_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("docs/grafana/smsgate.json")).unwrap()).unwrap();
    assert_eq!(dash["title"], "smsgate");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30 && dash["uid"].is_string());
    let titles: Vec<String> =
        dash["panels"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap().to_lowercase()).collect();
    for want in ["accepted", "submit_sm", "delivery ratio", "latency", "queue depth", "binds", "throttling", "opt-outs"]
    {
        assert!(titles.iter().any(|t| t.contains(want)), "no panel for {want}: {titles:?}");
    }
    for p in dash["panels"].as_array().unwrap() {
        assert!(p["gridPos"].is_object() && p["type"].is_string() && !p["targets"].as_array().unwrap().is_empty());
    }
    if let Some(promtool) = promtool() {
        let out = Command::new(promtool)
            .args(["check", "rules"])
            .arg(root.join("docs/prometheus/alerts.yml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}
