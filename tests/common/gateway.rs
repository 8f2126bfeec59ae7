//! The gateway under test: in process ([`TestGateway`]) or as the `smsgate serve` binary
//! ([`GatewayProcess`]), which prints the addresses it bound, so no test guesses a port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use smsgate::auth::{KeyAdmin, Scope};
use smsgate::config::Config;
use smsgate::gateway::Gateway;

use super::{Certs, Client, first_line, unique, wait_exit};

pub fn parse_config(text: &str) -> Config {
    Config::from_toml(text, Path::new("test.toml"), Path::new("/")).unwrap()
}

/// A gateway in this process, with a send+read key.
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
        let (_, token) = admin.create("default", "test", vec![Scope::Send, Scope::Read]).await.unwrap();
        let client = Client::new(gateway.api_addr, &certs.path("api.crt"), Some(token));
        TestGateway { gateway, client }
    }

    pub async fn key(&self, scopes: Vec<Scope>) -> String {
        let admin = KeyAdmin { store: &self.gateway.store, ring: &self.gateway.keys };
        admin.create("default", "extra", scopes).await.unwrap().1
    }
}

/// The `smsgate serve` binary as a child process (killed with SIGKILL when dropped), with the
/// addresses it printed on start and its log file.
pub struct GatewayProcess {
    pub child: std::process::Child,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    /// Starts `smsgate serve --config CONFIG` (stderr appended to `log`, extra `env`; `RUST_LOG`
    /// removed unless given) and waits up to 60 s for its `listening` line; `Err` with the exit
    /// status if it ended first.
    pub fn start(config: &Path, log: &Path, env: &[(&str, &str)]) -> Result<GatewayProcess, std::process::ExitStatus> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_smsgate"));
        cmd.arg("serve").arg("--config").arg(config).env_remove("RUST_LOG");
        cmd.envs(env.iter().copied()).stdout(std::process::Stdio::piped()).stderr(file);
        let mut child = cmd.spawn().expect("spawn smsgate serve");
        let line = first_line(child.stdout.take().unwrap(), Duration::from_secs(60));
        match line.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(info)) => Ok(GatewayProcess {
                api: info["api"].as_str().unwrap().parse().unwrap(),
                metrics: info["metrics"].as_str().unwrap().parse().unwrap(),
                child,
                log: log.to_path_buf(),
            }),
            _ => match wait_exit(&mut child, Duration::from_secs(30)) {
                Some(status) => Err(status),
                None => {
                    let _ = child.kill();
                    panic!("smsgate serve printed no listening line and did not exit: {line:?}")
                }
            },
        }
    }

    /// Waits up to `timeout` for the process to end on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// Sends a signal (`TERM`, `HUP`).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{name} failed");
    }

    /// A client for its API.
    pub fn client(&self, certs: &Certs, token: &str) -> Client {
        Client::new(self.api, &certs.path("api.crt"), Some(token.to_string()))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Writes `text` as a config file and creates an API key with `smsgate keys create` (scopes
/// `send,read,optouts`); returns (config path, token).
pub fn config_file_with_key(certs: &Certs, text: &str) -> (PathBuf, String) {
    config_file_with_scopes(certs, text, "send,read,optouts")
}

/// [`config_file_with_key`] with a key of these scopes.
pub fn config_file_with_scopes(certs: &Certs, text: &str, scopes: &str) -> (PathBuf, String) {
    let config = certs.path(&format!("smsgate-{}.toml", unique()));
    std::fs::write(&config, text).unwrap();
    let (status, stdout, stderr) = super::smsgate(&[
        "keys".as_ref(),
        "create".as_ref(),
        "--name".as_ref(),
        "test".as_ref(),
        "--scopes".as_ref(),
        scopes.as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(status.success(), "keys create: {stderr}");
    let token = stdout.lines().find_map(|l| l.strip_prefix("token:")).unwrap().trim().to_string();
    (config, token)
}
