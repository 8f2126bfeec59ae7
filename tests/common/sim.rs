//! Carrier simulators for the tests: the built-in one in process ([`TestSim`]), either one as
//! a process ([`SimProcess`]: the independent node simulator or `smsgate smsc-sim`), and a
//! port held for a carrier that is not up yet ([`Reserved`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use smsgate::sim::{Recorder, Sim, SimConfig, SimHandle, SimListeners};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Certs, first_line, skip, unique};

/// A local port held (bound, not listening) so that nothing else takes it: connections to it
/// are refused, as to a carrier that is down, until a simulator starts on it.
pub struct Reserved(tokio::net::TcpSocket);

impl Reserved {
    pub fn new() -> Reserved {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Reserved(socket)
    }

    pub fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    /// Starts listening on the held port.
    pub fn listen(self) -> TcpListener {
        self.0.listen(128).unwrap()
    }
}

/// A running built-in simulator in this process.
pub struct TestSim {
    pub handle: SimHandle,
    pub stop: watch::Sender<bool>,
    pub record: Option<PathBuf>,
}

impl TestSim {
    pub async fn start(certs: &Certs, config: SimConfig, record: Option<PathBuf>) -> TestSim {
        Self::start_on(certs, config, record, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// On a given TLS listener (a [`Reserved`] port, or the port of a simulator that was stopped).
    pub async fn start_on(certs: &Certs, config: SimConfig, record: Option<PathBuf>, tls: TcpListener) -> TestSim {
        let acceptor = tokio_rustls::TlsAcceptor::from(
            smsgate::tls::server_config(&certs.path("smsc.crt"), &certs.path("smsc.key"), &[]).unwrap(),
        );
        let listeners = SimListeners {
            smpp: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            tls: Some((tls, acceptor)),
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

    pub fn submits(&self) -> u64 {
        self.stats()["submit_sm_total"].as_u64().unwrap()
    }

    /// The carrier goes away: listeners closed, every session dropped.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.handle.sim.drop_all();
    }
}

/// Which simulator a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `shared/tools/smsc-sim` (node-smpp): an independent SMPP implementation.
    Node,
    /// `smsgate smsc-sim`.
    Builtin,
}

/// A simulator process (killed when dropped), with its startup line and record file.
pub struct SimProcess {
    pub child: std::process::Child,
    pub info: Value,
    pub record: PathBuf,
    pub kind: Kind,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_dir() -> PathBuf {
    std::env::var_os("SMSC_SIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/smsc-sim"))
}

impl SimProcess {
    /// Starts `kind` with `args` (after the defaults: free ports, TLS with the test
    /// certificate, a record file, 10 ms receipts). `None` when the node simulator is not
    /// installed (skipped; a failure with `SMSGATE_REQUIRE_NODE=1`).
    pub fn start(kind: Kind, certs: &Certs, args: &[&str]) -> Option<SimProcess> {
        let mut cmd = match kind {
            Kind::Builtin => {
                let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"));
                c.arg("smsc-sim");
                c
            }
            Kind::Node => {
                let dir = node_dir();
                let node_ok =
                    std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
                if !node_ok || !dir.join("node_modules").is_dir() {
                    skip("node", &format!("node or {}/node_modules is missing (run `npm ci` there)", dir.display()));
                    return None;
                }
                let mut c = std::process::Command::new("node");
                c.arg(dir.join("sim.js"));
                c
            }
        };
        let record = certs.path(&format!("sim-{kind:?}-{}.jsonl", unique()));
        let mut defaults = vec!["--port", "0", "--control-port", "0", "--tls-port", "0"];
        if !args.contains(&"--dlr-delay-ms") {
            defaults.extend(["--dlr-delay-ms", "10"]);
        }
        cmd.args(&defaults)
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
        let line = first_line(child.stdout.take().unwrap(), Duration::from_secs(30));
        let info: Value = match line.as_deref().map(serde_json::from_str) {
            Some(Ok(v)) => v,
            _ => {
                let _ = child.kill();
                panic!("{kind:?} simulator gave no startup line: {line:?}");
            }
        };
        Some(SimProcess { child, info, record, kind })
    }

    /// The node simulator (`None` when skipped).
    pub fn node(certs: &Certs, args: &[&str]) -> Option<SimProcess> {
        Self::start(Kind::Node, certs, args)
    }

    /// The built-in simulator as a process.
    pub fn builtin(certs: &Certs, args: &[&str]) -> SimProcess {
        Self::start(Kind::Builtin, certs, args).expect("the built-in simulator always runs")
    }

    pub fn tls_port(&self) -> u16 {
        self.info["tls_port"].as_u64().unwrap() as u16
    }

    pub fn plain_port(&self) -> u16 {
        self.info["port"].as_u64().unwrap() as u16
    }

    fn control_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.info["control_port"].as_u64().unwrap() as u16))
    }

    /// A control request that must succeed (2xx and JSON); its answer.
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, text) = super::client::http_request(self.control_addr(), method, path, body.as_ref()).await;
        assert!(status.is_success(), "simulator {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("simulator {path}: not JSON: {text}"))
    }

    pub async fn stats(&self) -> Value {
        self.control(Method::GET, "/stats", None).await
    }

    pub async fn sessions(&self) -> Value {
        self.control(Method::GET, "/sessions", None).await
    }

    /// A text from a handset, which smsgate must acknowledge with status 0 (stored).
    pub async fn mo(&self, from: &str, to: &str, text: &str) -> Value {
        let r = self.control(Method::POST, "/mo", Some(json!({"from": from, "to": to, "text": text}))).await;
        let statuses = r["command_status"].as_array().cloned().unwrap_or_default();
        assert!(
            r["ok"] == true && !statuses.is_empty() && statuses.iter().all(|s| s == 0),
            "inbound text not acknowledged: {r}"
        );
        r
    }

    /// A text from a handset, whatever smsgate answers (the answer is returned).
    pub async fn mo_answer(&self, from: &str, to: &str, text: &str) -> (StatusCode, Value) {
        let body = json!({"from": from, "to": to, "text": text});
        let (status, text) = super::client::http_request(self.control_addr(), Method::POST, "/mo", Some(&body)).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn records(&self) -> Vec<Value> {
        super::read_record(&self.record)
    }
}
