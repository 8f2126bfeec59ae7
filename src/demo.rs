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
/// Where the demo's webhook receiver listens.
const WEBHOOK_RECEIVER: &str = "127.0.0.1:8780";

/// A webhook receiver for the demo: checks each signature and prints one line per webhook
/// (event, message id, status; never a number or a body).
async fn receive_webhooks(secret: Vec<u8>, stop: watch::Receiver<bool>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(WEBHOOK_RECEIVER)
        .await
        .with_context(|| format!("webhook receiver on {WEBHOOK_RECEIVER}"))?;
    let addr = listener.local_addr()?;
    let secret = std::sync::Arc::new(secret);
    tokio::spawn(crate::httpd::serve(listener, stop, move |req: hyper::Request<bytes::Bytes>| {
        let secret = secret.clone();
        async move {
            let signature = req.headers().get("smsgate-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
            let now = crate::message::now_ms() / 1000;
            let valid = crate::webhooks::verify(&secret, signature, req.body(), now, 300);
            let event: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
            println!(
                "webhook {} {} {} (signature {})",
                event["event"].as_str().unwrap_or("?"),
                event["id"].as_str().unwrap_or("?"),
                event["status"].as_str().or(event["kind"].as_str()).unwrap_or(""),
                if valid { "valid" } else { "INVALID" }
            );
            crate::httpd::text(
                if valid { hyper::StatusCode::OK } else { hyper::StatusCode::UNAUTHORIZED },
                if valid { "ok\n" } else { "bad signature\n" },
            )
        }
    }));
    Ok(addr)
}

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
    let webhook_secret = fsutil::hex(&fsutil::random_bytes(32));
    fsutil::write_private(&base.join("data/demo/webhook.secret"), webhook_secret.as_bytes())?;
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
    let sim = Sim::start(sim_config, listeners, None, stop_rx.clone());
    let receiver = receive_webhooks(webhook_secret.into_bytes(), stop_rx).await?;

    let gateway = Gateway::start(config).await.context("starting the gateway")?;
    let admin = KeyAdmin { store: &gateway.store, ring: &gateway.keys };
    let (key, token) = admin.create(crate::accounts::DEFAULT, "demo", vec![Scope::Send, Scope::Read, Scope::Optouts]).await?;
    let policy = crate::webhooks::TargetPolicy::new(&["127.0.0.0/8".to_string()]).map_err(anyhow::Error::msg)?;
    admin
        .set_policy(&key.id, None, Some(&format!("http://{receiver}/status")), None, &policy)
        .await
        .context("pointing the demo key's webhooks at the receiver")?;
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

Webhooks: every status change of the demo key's messages, and every inbound text, is POSTed
(signed) to the receiver on http://{receiver}; it prints one "webhook …" line each here.

Test numbers (any other number is delivered):
{test_numbers}"#,
        test_numbers = crate::sim::test_numbers::listing(),
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
