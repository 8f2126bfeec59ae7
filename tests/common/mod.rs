//! Shared helpers for the integration tests: a built-in SMSC simulator and a gateway, both
//! real (TLS sockets, sled in a temp dir), and a small HTTPS client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use smsgate::auth::{KeyAdmin, Scope};
use smsgate::config::Config;
use smsgate::gateway::Gateway;
use smsgate::sim::{Recorder, Sim, SimConfig, SimHandle, SimListeners};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A temp dir with self-signed certificates for the API and the SMSC.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data.keys"), smsgate::crypto::Crypto::generate_file_text()).unwrap();
        for name in ["api", "smsc"] {
            smsgate::tls::write_self_signed(
                &["localhost", "127.0.0.1"],
                &dir.path().join(format!("{name}.crt")),
                &dir.path().join(format!("{name}.key")),
            )
            .unwrap();
        }
        Certs { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running built-in simulator.
pub struct TestSim {
    pub handle: SimHandle,
    pub stop: watch::Sender<bool>,
    pub record: Option<PathBuf>,
}

impl TestSim {
    pub async fn start(certs: &Certs, config: SimConfig, record: Option<PathBuf>) -> TestSim {
        Self::start_on(certs, config, record, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(certs: &Certs, config: SimConfig, record: Option<PathBuf>, tls_addr: SocketAddr) -> TestSim {
        let acceptor = tokio_rustls::TlsAcceptor::from(
            smsgate::tls::server_config(&certs.path("smsc.crt"), &certs.path("smsc.key"), &[]).unwrap(),
        );
        let listeners = SimListeners {
            smpp: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            tls: Some((TcpListener::bind(tls_addr).await.unwrap(), acceptor)),
            control: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let recorder = record.as_deref().map(|p| Recorder::create(p).unwrap());
        let (stop, rx) = watch::channel(false);
        let handle = Sim::start(config, listeners, recorder, rx);
        TestSim { handle, stop, record }
    }

    pub fn tls_port(&self) -> u16 {
        self.handle.tls_addr.unwrap().port()
    }

    pub fn stats(&self) -> Value {
        self.handle.sim.stats_json()
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.handle.sim.drop_all();
    }
}

/// Gateway config text for one TLS carrier on `port`. Each line of `extra` sets a carrier key,
/// replacing the default line for that key if there is one.
pub fn config_text(data_dir: &Path, certs: &Certs, port: u16, extra: &str) -> String {
    let mut text = format!(
        r#"
data_dir = "{data}"
[crypto]
key_file = "{keys}"
[api]
listen = "127.0.0.1:0"
tls_cert = "{api_crt}"
tls_key = "{api_key}"
[metrics]
listen = "127.0.0.1:0"
[dispatch]
retry_base_ms = 200
[[carriers]]
name = "sim"
host = "localhost"
port = {port}
tls = true
ca_file = "{smsc_crt}"
system_id = "gw"
enquire_link_secs = 5
response_timeout_secs = 3
"#,
        data = data_dir.display(),
        api_crt = certs.path("api.crt").display(),
        api_key = certs.path("api.key").display(),
        smsc_crt = certs.path("smsc.crt").display(),
        keys = certs.path("data.keys").display(),
    );
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let key = format!("{} =", line.split('=').next().unwrap_or_default().trim());
        match text.lines().find(|l| l.starts_with(&key)).map(String::from) {
            Some(old) => text = text.replace(&old, line),
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

pub fn parse_config(text: &str) -> Config {
    Config::from_toml(text, Path::new("test.toml"), Path::new("/")).unwrap()
}

/// A gateway with a key.
pub struct TestGateway {
    pub gateway: Gateway,
    pub client: Client,
}

impl TestGateway {
    pub async fn start(config: Config, certs: &Certs) -> TestGateway {
        Self::start_with(config, certs, smsgate::faults::Faults::default()).await
    }

    /// With injected faults (the test build has them).
    pub async fn start_with(config: Config, certs: &Certs, faults: smsgate::faults::Faults) -> TestGateway {
        let gateway = Gateway::start_with(config, faults).await.unwrap();
        let admin = KeyAdmin { store: &gateway.store, ring: &gateway.keys };
        let (_, token) = admin.create("test", vec![Scope::Send, Scope::Read]).await.unwrap();
        let client = Client::new(gateway.api_addr, &certs.path("api.crt"), Some(token));
        TestGateway { gateway, client }
    }

    pub async fn key(&self, scopes: Vec<Scope>) -> String {
        let admin = KeyAdmin { store: &self.gateway.store, ring: &self.gateway.keys };
        admin.create("extra", scopes).await.unwrap().1
    }
}

/// A minimal HTTPS client that trusts the test API certificate.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    pub token: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub json: Value,
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path, token: Option<String>) -> Client {
        let tls = smsgate::tls::client_config(Some(ca), None).unwrap();
        Client { addr, tls, token }
    }

    pub fn with_token(&self, token: Option<&str>) -> Client {
        Client { token: token.map(String::from), ..self.clone() }
    }

    pub async fn raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender.send_request(req.body(Full::new(body)).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, json }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.raw(Method::POST, path, &[("content-type", "application/json")], Bytes::from(body.to_string())).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw(Method::GET, path, &[], Bytes::new()).await
    }

    /// Polls a message until `pred` holds or `timeout` passes; returns the last view.
    pub async fn wait_message(&self, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let a = self.get(&format!("/v1/messages/{id}")).await;
            if pred(&a.json) || Instant::now() > deadline {
                return a.json;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `f` is true or panics after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the async check `f` is true, or panics after `timeout` naming `what`.
pub async fn until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a simulator record file (either simulator's format).
pub fn read_record(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A kept-alive HTTPS connection (HTTP/1.1) for load in tests.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    token: Option<String>,
}

impl Client {
    pub async fn connect(&self) -> std::io::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = connector.connect(name, tcp).await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Conn { sender, token: self.token.clone() })
    }
}

impl Conn {
    /// GETs a path; `Err` if the connection broke.
    pub async fn get_json(&mut self, path: &str) -> Result<(StatusCode, Value), hyper::Error> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// POSTs JSON; `Err` if the connection broke.
    pub async fn post(&mut self, path: &str, body: &Value) -> Result<(StatusCode, Value), hyper::Error> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = self.sender.send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

/// A simulator process (the node one when `node` is true and available, else the built-in
/// `smsgate smsc-sim`), with its startup line and record file.
pub struct SimProcess {
    pub child: std::process::Child,
    pub info: Value,
    pub record: PathBuf,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SimProcess {
    /// Starts the node simulator; `None` (with a SKIPPED line) when node is unavailable,
    /// unless SMSGATE_REQUIRE_NODE=1.
    pub fn node(certs: &Certs, args: &[&str]) -> Option<SimProcess> {
        let dir = std::env::var_os("SMSC_SIM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/smsc-sim"));
        let node_ok = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
        if !node_ok || !dir.join("node_modules").is_dir() {
            let why = format!("node or {}/node_modules is missing (run `npm ci` there)", dir.display());
            assert!(std::env::var("SMSGATE_REQUIRE_NODE").as_deref() != Ok("1"), "SMSGATE_REQUIRE_NODE=1 but {why}");
            eprintln!("SKIPPED: node simulator: {why}");
            return None;
        }
        let mut cmd = std::process::Command::new("node");
        cmd.arg(dir.join("sim.js"));
        Some(Self::spawn(cmd, certs, args))
    }

    /// Starts the built-in simulator as a process (`smsgate smsc-sim`).
    pub fn builtin(certs: &Certs, args: &[&str]) -> SimProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"));
        cmd.arg("smsc-sim");
        Self::spawn(cmd, certs, args)
    }

    fn spawn(mut cmd: std::process::Command, certs: &Certs, args: &[&str]) -> SimProcess {
        use std::io::BufRead;
        let record = certs.path(&format!("sim-{}.jsonl", std::process::id() as u64 * 1000 + rand_suffix()));
        cmd.args(["--port", "0", "--control-port", "0", "--tls-port", "0", "--dlr-delay-ms", "10"])
            .arg("--cert")
            .arg(certs.path("smsc.crt"))
            .arg("--key")
            .arg(certs.path("smsc.key"))
            .arg("--record")
            .arg(&record)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn simulator");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let info: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("startup line: {line:?}"));
        SimProcess { child, info, record }
    }

    pub fn tls_port(&self) -> u16 {
        self.info["tls_port"].as_u64().unwrap() as u16
    }

    /// POSTs to the simulator's control interface (off the async runtime).
    pub async fn control(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.info["control_port"].as_u64().unwrap());
        let out = tokio::task::spawn_blocking(move || {
            let mut c = std::process::Command::new("curl");
            c.args(["-s", "--max-time", "15"]);
            if let Some(b) = body {
                c.args(["-X", "POST", "-d", &b.to_string()]);
            }
            c.arg(url).output().unwrap()
        })
        .await
        .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn records(&self) -> Vec<Value> {
        read_record(&self.record)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The `smsgate serve` binary as a child process (killed with SIGKILL when dropped), with the
/// addresses it printed on start.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Starts `smsgate serve --config CONFIG` (stderr appended to `log`, extra `env`) and
    /// waits up to 60 s for its `listening` line; `Err` with the exit status if it ended first.
    pub fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Result<GatewayProcess, std::process::ExitStatus> {
        use std::io::BufRead;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn smsgate serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        match serde_json::from_str::<Value>(&line) {
            Ok(info) => Ok(GatewayProcess {
                api: info["api"].as_str().unwrap().parse().unwrap(),
                metrics: info["metrics"].as_str().unwrap().parse().unwrap(),
                child,
            }),
            Err(_) => {
                let status = Self::wait(&mut child, Duration::from_secs(30)).expect("no listening line, yet running");
                Err(status)
            }
        }
    }

    fn wait(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for the process to end on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        Self::wait(&mut self.child, timeout)
    }

    /// A client for its API.
    pub fn client(&self, certs: &Certs, token: &str) -> Client {
        Client::new(self.api, &certs.path("api.crt"), Some(token.to_string()))
    }
}

/// Writes `text` as a config file and creates an API key with `smsgate keys create`; returns
/// (config path, token).
pub fn config_file_with_key(certs: &Certs, text: &str) -> (PathBuf, String) {
    let config = certs.path(&format!("smsgate-{}.toml", rand_suffix()));
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"))
        .args(["keys", "create", "--name", "test", "--scopes", "send,read", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().find_map(|l| l.strip_prefix("token:")).unwrap().trim().to_string();
    (config, token)
}

/// The `text` of every accepted submit_sm in a simulator record, with how often it came.
pub fn submitted_texts(record: &Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for r in read_record(record) {
        if r["command_status"] == 0
            && let Some(t) = r["text"].as_str()
        {
            *counts.entry(t.to_string()).or_default() += 1;
        }
    }
    counts
}

/// GETs `path` from a plain-HTTP listener (the metrics endpoint); the body as text.
pub async fn http_text(addr: SocketAddr, path: &str) -> String {
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder().uri(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// The value of one sample line (`name{labels} value`) in a Prometheus exposition, if present.
pub fn metric(exposition: &str, name_and_labels: &str) -> Option<f64> {
    exposition.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
}
