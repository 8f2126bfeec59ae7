//! `smsgate demo`: the gateway plus the built-in SMSC simulator as its carrier, self-signed TLS
//! on both sides, a fresh API key, and the commands to try it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::auth::{KeyAdmin, Scope};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::sim::{Sim, SimConfig, SimListeners};
use crate::{fsutil, tls};

/// The built-in demo configuration (config/demo.toml).
pub const DEMO_TOML: &str = include_str!("../config/demo.toml");

/// Where the simulator's control interface listens in the demo.
const SIM_CONTROL: &str = "127.0.0.1:8775";

/// Runs the demo until Ctrl-C.
pub async fn run(config_path: Option<&Path>) -> Result<()> {
    let (text, path, base) = match config_path {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.to_path_buf(),
            p.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ),
        None => (DEMO_TOML.to_string(), "demo.toml (built in)".into(), std::env::current_dir()?),
    };
    // Certificates and the bind password must exist before the config is validated.
    let tls_dir = base.join("data/demo/tls");
    tls::write_self_signed(&["localhost", "127.0.0.1"], &tls_dir.join("api.crt"), &tls_dir.join("api.key"))?;
    tls::write_self_signed(&["localhost", "127.0.0.1"], &tls_dir.join("smsc.crt"), &tls_dir.join("smsc.key"))?;
    let keys = base.join("data/demo.keys");
    if !keys.exists() {
        // Created once: the demo's data stays readable across runs.
        fsutil::write_private(&keys, crate::crypto::Crypto::generate_file_text().as_bytes())?;
    }
    let password = fsutil::hex(&fsutil::random_bytes(4));
    fsutil::write_private(&base.join("data/demo/smsc.password"), password.as_bytes())?;
    let config = Config::from_toml(&text, &path, &base)?;
    crate::cli::init_logging(&config.log);
    let carrier = config.carriers.first().context("the demo config needs one carrier")?.clone();

    let (stop_tx, stop_rx) = watch::channel(false);
    let smpp_addr: SocketAddr = format!("127.0.0.1:{}", carrier.port).parse()?;
    let sim_tls = tls::server_config(&tls_dir.join("smsc.crt"), &tls_dir.join("smsc.key"), &[])?;
    let listeners = SimListeners {
        smpp: None,
        tls: Some((
            tokio::net::TcpListener::bind(smpp_addr).await.with_context(|| format!("simulator on {smpp_addr}"))?,
            tokio_rustls::TlsAcceptor::from(sim_tls),
        )),
        control: tokio::net::TcpListener::bind(SIM_CONTROL)
            .await
            .with_context(|| format!("simulator control on {SIM_CONTROL}"))?,
    };
    let sim_config =
        SimConfig { system_id: Some(carrier.system_id.clone()), password: Some(password), ..SimConfig::default() };
    let sim = Sim::start(sim_config, listeners, None, stop_rx);

    let gateway = Gateway::start(config).await.context("starting the gateway")?;
    let admin = KeyAdmin { store: &gateway.store, ring: &gateway.keys };
    let (_, token) = admin.create("demo", vec![Scope::Send, Scope::Read, Scope::Optouts]).await?;
    let api = format!("https://{}", gateway.api_addr);
    println!(
        r#"
smsgate demo is running (Ctrl-C to stop)

  API            {api}   (self-signed certificate: use curl -k)
  metrics        http://{metrics}/metrics
  SMSC simulator SMPP over TLS on {smpp}, control http://{control}
  data           {data}

  API key (send,read,optouts), shown once:
    {token}

Send a message:
  curl -k {api}/v1/messages -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{"to":"+14155550123","body":"Hello from smsgate"}}'

Then follow it (use the id from the answer):
  curl -k {api}/v1/messages/ID -H 'Authorization: Bearer {token}'

Play the handset (an inbound text through the simulator):
  curl -s http://{control}/mo -d '{{"from":"+14155550123","to":"SMSGATE","text":"Hello back"}}'
  curl -s http://{control}/mo -d '{{"from":"+14155550123","to":"SMSGATE","text":"STOP"}}'   # then sends to it get 422
  curl -k {api}/v1/inbound -H 'Authorization: Bearer {token}'
"#,
        metrics = gateway.metrics_addr,
        smpp = sim.tls_addr.map(|a| a.to_string()).unwrap_or_default(),
        control = sim.control_addr,
        data = gateway.store.path().display(),
    );
    crate::cli::wait_for_signal().await;
    gateway.shutdown().await;
    let _ = stop_tx.send(true);
    Ok(())
}
