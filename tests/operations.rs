//! What an SRE relies on, with the real binary: metrics that a real parser accepts, logs
//! without PHI at trace level, graceful SIGTERM, SIGHUP reload, backup while serving and
//! restore, check-config pointing at lines, the dashboard and alert files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_smsgate");

/// A config (ports 0: the gateway prints what it bound) and a key with send, read, optouts.
fn config_file(certs: &Certs, data: &Path, sim_port: u16, extra: &str) -> (PathBuf, String) {
    config_file_with_key(certs, &(config_text(data, certs, sim_port, "") + extra))
}

fn start(config: &Path, log: PathBuf, rust_log: Option<&str>) -> GatewayProcess {
    let env: Vec<(&str, &str)> = rust_log.map(|l| ("RUST_LOG", l)).into_iter().collect();
    GatewayProcess::start(config, &log, &env).expect("smsgate serve starts")
}

async fn ready(client: &Client) {
    until(PATIENCE, "readyz 200", || async { client.get("/readyz").await.status == StatusCode::OK }).await;
}

fn promtool() -> Option<PathBuf> {
    have("promtool", "promtool").then(|| PathBuf::from("promtool"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_flow_at_trace_level_logs_no_phi_and_metrics_parse() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) = config_file(&certs, data.path(), sim.tls_port(), "");
    let mut gw = start(&config, certs.path("trace.log"), Some("trace"));
    let client = gw.client(&certs, &token);
    ready(&client).await;
    // Before anything happened, every series a panel or an alert uses is there, at zero.
    let fresh = http_text(gw.metrics, "/metrics").await;
    for series in [
        "smsgate_smpp_throttled_total{carrier=\"sim\"}",
        "smsgate_messages_final_total{carrier=\"sim\",status=\"undeliverable\"}",
        "smsgate_content_flags_total{rule=\"ssn\"}",
        "smsgate_webhooks_total{result=\"retry\"}",
        "smsgate_receipts_total{carrier=\"sim\",result=\"orphan\"}",
        "smsgate_optouts_total{keyword=\"STOP\"}",
    ] {
        assert_eq!(metric(&fresh, series), Some(0.0), "{series} at zero from the start");
    }
    assert!(fresh.contains("# TYPE smsgate_process_cpu_seconds_total counter"), "{fresh}");
    assert!(metric(&fresh, "smsgate_process_cpu_seconds_total").is_some_and(|s| s > 0.0));
    let number = "+14155550142";
    let body = "Gadolinium-Pineapple imaging results are ready";
    let a = client.post("/v1/messages", &json!({"to": number, "body": body, "from": "CLINIC"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let m = client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "delivered").await;
    assert_eq!(m["status"], "delivered");
    let inbound = "Quokka-Saxophone reply STOP";
    sim.mo(number, "CLINIC", inbound).await;
    sim.mo(number, "CLINIC", "STOP").await;
    let refused = client.post("/v1/messages", &json!({"to": number, "body": body})).await;
    assert_eq!(refused.json["error"]["code"], "recipient_opted_out");
    // Metrics: a real parser accepts them.
    let exposition = http_text(gw.metrics, "/metrics").await;
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
    gw.signal("TERM");
    let status = gw.wait_exit(PATIENCE).expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let log = gw.log_text();
    assert!(log.len() > 10_000, "trace logging produced output ({} bytes)", log.len());
    for needle in [number, &number[1..], &number[2..], body, "Gadolinium", inbound, "Quokka"] {
        assert!(!log.contains(needle), "'{needle}' appears in the trace log");
    }
    println!("PHI log check: {} bytes of trace output, no number or body found", log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_unbinds_and_loses_nothing() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &["--resp-delay-ms", "1500"]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) = config_file(&certs, data.path(), sim.tls_port(), "");
    let mut gw = start(&config, certs.path("term.log"), None);
    let client = gw.client(&certs, &token);
    ready(&client).await;
    let batch: Vec<Value> = (0..40).map(|i| json!({"to": "+14155550123", "body": format!("drain {i}")})).collect();
    let a = client.post("/v1/messages/batch", &json!({"messages": batch})).await;
    assert_eq!(a.json["accepted"], 40);
    // Some submits in flight (1.5 s answers) when SIGTERM comes.
    until(PATIENCE, "submits in flight", || async { sim.stats().await["submit_sm_total"].as_u64().unwrap() >= 1 })
        .await;
    let mut open = client.connect().await.unwrap();
    let stopped = Instant::now();
    gw.signal("TERM");
    // While the binds drain (the SMSC answers in 1.5 s), the API answers sends with 503
    // shutting_down and /readyz with 503; it closes only after that.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, j) =
            open.post("/v1/messages", &json!({"to": "+14155550123", "body": "during the stop"})).await.unwrap();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(j["error"]["code"], "shutting_down", "{j}");
            break;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{j}"); // the signal is not handled yet
        assert!(Instant::now() < deadline, "never answered 503 shutting_down");
    }
    let (status, j) = open.get_json("/readyz").await.unwrap();
    assert_eq!((status, j["accepting"].as_bool()), (StatusCode::SERVICE_UNAVAILABLE, Some(false)), "{j}");
    let status = gw.wait_exit(Duration::from_secs(40)).expect("exits within the shutdown timeout");
    assert!(status.success(), "exit status {status}");
    println!("graceful shutdown took {} ms", stopped.elapsed().as_millis());
    let stats = sim.stats().await;
    assert!(stats["unbind"].as_u64().unwrap() >= 1, "unbind sent: {stats}");
    assert_eq!(stats["submit_sm_unanswered"].as_u64(), Some(0), "every submit in flight was answered: {stats}");
    // Restart: whatever was not submitted goes out now; nothing is lost, nothing resent.
    let _gw2 = start(&config, certs.path("term2.log"), None);
    until(PATIENCE, "all 40 at the simulator", || async {
        let texts = submitted_texts(&sim.record);
        (0..40).all(|i| texts.contains_key(&format!("drain {i}")))
    })
    .await;
    let texts = submitted_texts(&sim.record);
    assert!(texts.values().all(|&n| n == 1), "no duplicates after a graceful stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_without_dropping_binds_and_refuses_a_bad_config() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) =
        config_file(&certs, data.path(), sim.tls_port(), "[[routes]]\nprefix = \"+1\"\ncarriers = [\"sim\"]\n");
    let gw = start(&config, certs.path("hup.log"), None);
    let client = gw.client(&certs, &token);
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
    gw.signal("HUP");
    until(PATIENCE, "the reload to apply", || async {
        client.post("/v1/messages", &json!({"to": "+447911123456", "body": "after reload"})).await.status
            == StatusCode::ACCEPTED
    })
    .await;
    sim.mo("+14155550123", "12345", "STOP").await;
    until(PATIENCE, "the new reply text", || async { sim.records().iter().any(|r| r["text"] == "Reloaded reply") })
        .await;
    // A broken config is refused and the running one stays.
    std::fs::write(&config, changed.clone() + "this is not toml = = =\n").unwrap();
    gw.signal("HUP");
    eventually(PATIENCE, "the refusal in the log", || gw.log_text().contains("reload refused")).await;
    let a = client.post("/v1/messages", &json!({"to": "+447911123457", "body": "still fine"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let stats = sim.stats().await;
    assert_eq!(
        (stats["connections"].as_u64(), stats["bind_ok"].as_u64()),
        (Some(1), Some(1)),
        "binds were never dropped: {stats}"
    );
    assert!(gw.log_text().contains("configuration reloaded"));
    // Keys that need a restart are named, and still named by the next reload of the same file
    // (the process keeps running with the old values until then).
    let restart_only = changed
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:9\"", 1)
        .replace("enquire_link_secs = 5", "enquire_link_secs = 7");
    std::fs::write(&config, &restart_only).unwrap();
    for _ in 0..2 {
        let before = gw.log_text().matches("some changes need a restart").count();
        gw.signal("HUP");
        eventually(PATIENCE, "the reload", || gw.log_text().matches("some changes need a restart").count() > before)
            .await;
    }
    assert_eq!(client.get("/healthz").await.status, StatusCode::OK, "the old listener still serves");
    // Every reload is in the audit trail (what `audit export` gives a SIEM).
    std::fs::write(&config, &changed).unwrap();
    let (status, export, stderr) = smsgate(&[
        "audit".as_ref(),
        "export".as_ref(),
        "--out".as_ref(),
        "-".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(status.success(), "{stderr}");
    let reloads: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "config.reload")
        .collect();
    let outcomes: Vec<&str> = reloads.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["applied", "refused", "applied", "applied"], "{reloads:?}");
    for r in &reloads[2..] {
        assert_eq!(r["detail"]["needs_restart"], json!(["api.listen", "carriers.sim.enquire_link_secs"]), "{r}");
    }
    assert_eq!(reloads[0]["detail"]["needs_restart"], json!([]), "routes, rates and texts apply live");
    assert!(stderr.contains("exported"), "{stderr}");
    // --since keeps only later entries.
    let last_at = reloads[1]["at"].as_str().unwrap().to_string();
    let (_, since, _) = smsgate(&[
        "audit".as_ref(),
        "export".as_ref(),
        "--out".as_ref(),
        "-".as_ref(),
        "--since".as_ref(),
        last_at.as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(since.lines().count() >= 1 && since.lines().count() < export.lines().count());
    assert!(
        since.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["at"].as_str().unwrap() >= last_at.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_serving_then_restore_finds_everything() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) = config_file(&certs, data.path(), sim.tls_port(), "");
    let mut gw = start(&config, certs.path("backup.log"), None);
    let client = gw.client(&certs, &token);
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
    // Keep sending while the backup is taken, and after it: serving never stops for it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let (c, stop, sent) = (client.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut conn = c.connect().await.unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, j) = conn
                    .post("/v1/messages", &json!({"to": "+14155550123", "body": format!("during {i}")}))
                    .await
                    .unwrap();
                assert_eq!(status, StatusCode::ACCEPTED, "{j}");
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
        })
    };
    eventually(PATIENCE, "load before the backup", || sent.load(std::sync::atomic::Ordering::Relaxed) >= 5).await;
    let out = certs.path("smsgate.backup");
    let (status, _, stderr) =
        smsgate(&["backup".as_ref(), "--out".as_ref(), out.as_os_str(), "--config".as_ref(), config.as_os_str()]);
    assert!(status.success(), "{stderr}");
    let after_backup = sent.load(std::sync::atomic::Ordering::Relaxed);
    eventually(PATIENCE, "load after the backup", || {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= after_backup + 5
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    gw.signal("TERM");
    assert!(gw.wait_exit(PATIENCE).expect("exits after SIGTERM").success());
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600, "written 0600");
    }
    let mac_key = smsgate::crypto::Crypto::from_file(&certs.path("data.keys")).unwrap().backup_key();
    let audit_lines_in_backup = {
        let c = smsgate::store::backup::read(&out, &mac_key).unwrap();
        assert!(c.authenticated);
        let audit = c.files.iter().find(|(n, _)| n == "audit/audit.jsonl").expect("audit log in the backup");
        String::from_utf8_lossy(&audit.1).lines().count()
    };
    // Restore into an empty data directory with the same keys.
    let restored = tempfile::tempdir().unwrap();
    let rconfig = certs.path("restore.toml");
    std::fs::write(&rconfig, config_text(restored.path(), &certs, sim.tls_port(), "")).unwrap();
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
    // Other data keys cannot vouch for it (nor make one that passes).
    let other_keys = smsgate::crypto::Crypto::parse(&smsgate::crypto::Crypto::generate_file_text()).unwrap();
    let e = smsgate::store::backup::read(&out, &other_keys.backup_key()).unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");
    // A damaged backup is refused.
    let mut bytes = std::fs::read(&out).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&out, bytes).unwrap();
    let e = smsgate::store::backup::read(&out, &mac_key).unwrap_err().to_string();
    assert!(e.contains("authentication failed"), "{e}");
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
    assert_eq!(out.status.code(), Some(64), "problems exit 64 (EX_USAGE), as docs/operations.md says");
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

/// `smsgate keys …` while the server runs goes through the admin socket (the store is the
/// server's): a new key works at once, is listed, and a revoked one is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_managed_through_the_admin_socket_while_serving() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, _) = config_file(&certs, data.path(), sim.tls_port(), "");
    let gw = start(&config, certs.path("keys.log"), None);
    let cfg = config.as_os_str();
    let (status, out, err) = smsgate(&[
        "keys".as_ref(),
        "create".as_ref(),
        "--name".as_ref(),
        "live".as_ref(),
        "--scopes".as_ref(),
        "send,read".as_ref(),
        "--config".as_ref(),
        cfg,
    ]);
    assert!(status.success(), "{err}");
    let field = |name: &str| out.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_string();
    let (id, token) = (field("id:"), field("token:"));
    let client = gw.client(&certs, &token);
    let body = json!({"to": "+14155550123", "body": "with a key made while serving"});
    assert_eq!(client.post("/v1/messages", &body).await.status, StatusCode::ACCEPTED);
    let (status, list, err) = smsgate(&["keys".as_ref(), "list".as_ref(), "--config".as_ref(), cfg]);
    assert!(status.success(), "{err}");
    assert!(list.lines().any(|l| l.starts_with(&id) && l.contains("active") && l.contains("live")), "{list}");
    let (status, _, err) = smsgate(&["keys".as_ref(), "revoke".as_ref(), id.as_ref(), "--config".as_ref(), cfg]);
    assert!(status.success(), "{err}");
    assert_eq!(client.post("/v1/messages", &body).await.status, StatusCode::UNAUTHORIZED);
    let audit = std::fs::read_to_string(smsgate::audit::log_path(data.path())).unwrap();
    assert!(audit.contains("admin.keys_create") && audit.contains("admin.keys_revoke"), "admin actions are audited");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_from_the_start_and_the_process_dumps_no_core() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("lib/smsgate");
    let keys = certs.path("data.keys");
    let text = config_text(&data, &certs, sim.tls_port(), "");
    // A key file every user can read, or others can change, is refused before anything starts.
    let bare = certs.path("bare.toml");
    std::fs::write(&bare, &text).unwrap();
    for (loose, says) in [(0o644, "readable by every user"), (0o620, "other than its owner")] {
        chmod(&keys, loose);
        for verb in ["check-config", "serve"] {
            let (status, _, stderr) = smsgate(&[verb.as_ref(), "--config".as_ref(), bare.as_os_str()]);
            assert!(!status.success(), "{verb} with a {loose:04o} key file");
            assert!(stderr.contains(says) && stderr.contains("data.keys"), "{verb}: {stderr}");
        }
    }
    assert!(!data.exists(), "nothing created");
    chmod(&keys, 0o600);
    let (config, token) = config_file_with_key(&certs, &text);
    // Created private, whatever the umask (the CLI created it here, for the key).
    assert_eq!((mode(&data), mode(&root.path().join("lib"))), (0o700, 0o700));
    // A data directory someone loosened is tightened at start.
    chmod(&data, 0o755);
    // Group-readable by a group the service is not in: starts, with a warning (only root can
    // give a file to another group).
    let foreign_group = std::os::unix::fs::chown(&keys, None, Some(54_321)).is_ok();
    if foreign_group {
        chmod(&keys, 0o640);
    } else {
        skip("root", "chown to a foreign group needs root");
    }
    let mut gw = start(&config, certs.path("private.log"), None);
    ready(&gw.client(&certs, &token)).await;
    assert_eq!(mode(&data), 0o700, "tightened");
    assert_eq!(mode(&data.join("audit")), 0o700);
    assert_eq!(mode(&smsgate::audit::log_path(&data)), 0o600);
    assert_eq!(mode(&data.join("admin.sock")), 0o600);
    let log = gw.log_text();
    assert!(log.contains("tightened permissions"), "{log}");
    if foreign_group {
        assert!(log.contains("not this process's group"), "{log}");
    }
    // No core file, ever: the limit is 0 (and the process is not dumpable).
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().collect::<Vec<_>>()[4..6], ["0", "0"], "{core}");
    gw.signal("TERM");
    assert!(gw.wait_exit(PATIENCE).expect("exits after SIGTERM").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_file_is_refused_by_every_command_and_nothing_is_half_used() {
    let certs = Certs::new();
    let sim = SimProcess::builtin(&certs, &[]);
    let data = tempfile::tempdir().unwrap();
    let (config, token) = config_file(&certs, data.path(), sim.tls_port(), "");
    let mut gw = start(&config, certs.path("keys.log"), None);
    let client = gw.client(&certs, &token);
    ready(&client).await;
    let put = client.raw(hyper::Method::PUT, "/v1/opt-outs/%2B14155550147", &[], bytes::Bytes::new()).await;
    assert_eq!(put.status, StatusCode::OK);
    let out = certs.path("keys.backup");
    let (status, _, stderr) =
        smsgate(&["backup".as_ref(), "--out".as_ref(), out.as_os_str(), "--config".as_ref(), config.as_os_str()]);
    assert!(status.success(), "{stderr}");
    gw.signal("TERM");
    assert!(gw.wait_exit(PATIENCE).expect("exits after SIGTERM").success());

    // A freshly generated key file, as an operator might pick up by mistake.
    let other = certs.path("other.keys");
    let (status, _, stderr) =
        smsgate(&["keys".as_ref(), "init-data-keys".as_ref(), "--out".as_ref(), other.as_os_str()]);
    assert!(status.success(), "{stderr}");
    let text = std::fs::read_to_string(&config).unwrap();
    let keys = certs.path("data.keys").display().to_string();
    let wrong = certs.path("wrong.toml");
    std::fs::write(&wrong, text.replace(&keys, &other.display().to_string())).unwrap();
    let expect_refusal = |args: &[&std::ffi::OsStr], what: &str| {
        let (status, stdout, stderr) = smsgate(args);
        assert!(!status.success(), "{what} with the wrong key file: {stdout}");
        // The backup's MAC key derives from the index key: the restore finds out first.
        let named = (stderr.contains("wrong data keys") && stderr.contains("'index' key"))
            || (what == "restore" && stderr.contains("made with other data keys"));
        assert!(named, "{what}: {stderr}");
    };
    expect_refusal(&["serve".as_ref(), "--config".as_ref(), wrong.as_os_str()], "serve");
    let csv = certs.path("optouts.csv");
    expect_refusal(
        &[
            "optouts".as_ref(),
            "export".as_ref(),
            "--out".as_ref(),
            csv.as_os_str(),
            "--config".as_ref(),
            wrong.as_os_str(),
        ],
        "optouts export",
    );
    assert!(!csv.exists() || std::fs::read_to_string(&csv).unwrap().is_empty(), "nothing exported");
    expect_refusal(&["keys".as_ref(), "list".as_ref(), "--config".as_ref(), wrong.as_os_str()], "keys list");
    // Restore with the wrong keys: refused, and nothing written.
    let empty = tempfile::tempdir().unwrap();
    let wrong_restore = certs.path("wrong-restore.toml");
    std::fs::write(
        &wrong_restore,
        config_text(empty.path(), &certs, sim.tls_port(), "").replace(&keys, &other.display().to_string()),
    )
    .unwrap();
    expect_refusal(&["restore".as_ref(), out.as_os_str(), "--config".as_ref(), wrong_restore.as_os_str()], "restore");
    assert!(!empty.path().join("store/db").exists(), "nothing restored");

    // With the right keys everything is still there: the number stays blocked.
    let mut gw = start(&config, certs.path("keys.log"), None);
    let client = gw.client(&certs, &token);
    ready(&client).await;
    let send = client.post("/v1/messages", &json!({"to": "+14155550147", "body": "still blocked"})).await;
    assert_eq!(send.json["error"]["code"], "recipient_opted_out", "{}", send.json);
    gw.signal("TERM");
    assert!(gw.wait_exit(PATIENCE).expect("exits after SIGTERM").success());
}

/// Admin verbs use the store and its keys only: a backup cron job or an operator's shell does
/// not have the carriers' passwords, and must not need them. Errors are said once.
#[test]
fn admin_verbs_need_no_carrier_secrets_and_errors_are_said_once() {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let unset = "SMSGATE_TEST_NEVER_SET_PASSWORD";
    assert!(std::env::var(unset).is_err());
    let config = certs.path("secretless.toml");
    std::fs::write(&config, config_text(data.path(), &certs, 1, &format!("password_env = \"{unset}\""))).unwrap();
    let run = |args: &[&str]| {
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        all.extend(["--config".as_ref(), config.as_os_str()]);
        smsgate(&all)
    };
    let (status, stdout, stderr) = run(&["keys", "create", "--name", "cron", "--scopes", "read"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("token:"));
    assert!(run(&["keys", "list"]).0.success());
    assert!(run(&["audit", "verify"]).0.success());
    let out = certs.path("nightly.backup");
    let out_s = out.to_str().unwrap();
    let (status, _, stderr) = run(&["backup", "--out", out_s]);
    assert!(status.success(), "{stderr}");
    // An existing backup is not overwritten by accident.
    let (status, _, stderr) = run(&["backup", "--out", out_s]);
    assert!(!status.success() && stderr.contains("exists") && stderr.contains("--force"), "{stderr}");
    assert!(run(&["backup", "--out", out_s, "--force"]).0.success());
    // Serving needs the password, and says which variable.
    let (status, _, stderr) = run(&["check-config"]);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(unset), "{stderr}");
    // An error and its cause once, not the cause repeated.
    let (status, _, stderr) =
        smsgate(&["keys".as_ref(), "list".as_ref(), "--config".as_ref(), "/nonexistent/x.toml".as_ref()]);
    assert_eq!(status.code(), Some(64));
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    // A key that is not the certificate's: named once, with both files.
    let mismatched = certs.path("mismatch.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("password_env = \"{unset}\"\n"), "")
        .replace(&certs.path("api.key").display().to_string(), &certs.path("smsc.key").display().to_string());
    std::fs::write(&mismatched, text).unwrap();
    let (status, _, stderr) = smsgate(&["check-config".as_ref(), "--config".as_ref(), mismatched.as_os_str()]);
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.matches("does not belong to the certificate").count(), 1, "{stderr}");
}
