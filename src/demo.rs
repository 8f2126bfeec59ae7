//! `smsgate demo`: the gateway plus the built-in SMSC simulator as its carrier, self-signed TLS
//! on both sides, two accounts (a clinic and a pharmacy) with a fresh API key each, and the
//! commands to try it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::accounts::Account;
use crate::accounts::admin::{AccountAdmin, AccountChanges, NewAccount};
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

/// A webhook receiver for the demo: each account's webhooks go to `/{account}`, checked with
/// that account's secret; prints one line per webhook (account, event, id, status; never a
/// number or a body).
async fn receive_webhooks(
    secrets: Vec<(String, String)>,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let secrets = std::sync::Arc::new(secrets);
    tokio::spawn(crate::httpd::serve(listener, stop, move |req: hyper::Request<bytes::Bytes>| {
        let secrets = secrets.clone();
        async move {
            let account = req.uri().path().trim_start_matches('/').to_string();
            let secret = secrets.iter().find(|(a, _)| *a == account).map(|(_, s)| s.as_bytes()).unwrap_or_default();
            let signature = req.headers().get("smsgate-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
            let now = crate::message::now_ms() / 1000;
            let valid = crate::webhooks::verify(secret, signature, req.body(), now, 300);
            let event: serde_json::Value = serde_json::from_slice(req.body()).unwrap_or_default();
            println!(
                "webhook {account} {} {} {} (signature {})",
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
    Ok(())
}

/// The demo's two accounts: a clinic and a pharmacy, each with its senders, its webhook URL
/// on the receiver, and a new key; created on the first run, their webhook secrets rotated
/// on later ones (a secret is shown only when made). Returns (account, secret, key) each.
async fn demo_accounts(
    gateway: &Gateway,
    policy: &crate::webhooks::TargetPolicy,
) -> Result<Vec<(Account, String, String)>> {
    let admin = AccountAdmin { store: &gateway.store, accounts: &gateway.accounts };
    let keys = KeyAdmin { store: &gateway.store, ring: &gateway.keys };
    let mut out = Vec::new();
    for (name, display, senders, pool) in [
        (
            "clinic",
            "Main St Clinic",
            vec!["SMSGATE", "+14155550100", "+14155550101", "+14155550102"],
            Some("reminders"),
        ),
        ("pharmacy", "Corner Pharmacy", vec!["PHARMACY", "+14155550200"], None),
    ] {
        let senders: Vec<String> = senders.into_iter().map(String::from).collect();
        let url = format!("http://{WEBHOOK_RECEIVER}/{name}");
        let (account, secret) = if gateway.accounts.get(name).is_some() {
            let changes = AccountChanges { rotate_webhook_secret: true, ..AccountChanges::default() };
            let (a, s) = admin.update(name, changes, policy).await?;
            (a, s.context("a rotated secret")?)
        } else {
            let pools = pool.map(|p| (p.to_string(), senders[1..].to_vec())).into_iter().collect();
            let new = NewAccount {
                name: name.into(),
                display_name: Some(display.into()),
                senders,
                pools,
                webhook_url: Some(url),
            };
            admin.create(new, policy).await?
        };
        let (_, token) = keys.create(name, "demo", vec![Scope::Send, Scope::Read, Scope::Optouts]).await?;
        out.push((account, secret, token));
    }
    Ok(out)
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
    let receiver = tokio::net::TcpListener::bind(WEBHOOK_RECEIVER)
        .await
        .with_context(|| format!("webhook receiver on {WEBHOOK_RECEIVER}"))?;

    let policy = config.webhooks.policy().map_err(anyhow::Error::msg)?;
    let gateway = Gateway::start(config).await.context("starting the gateway")?;
    let accounts = demo_accounts(&gateway, &policy).await?;
    let secrets = accounts.iter().map(|(a, s, _)| (a.name.clone(), s.clone())).collect();
    receive_webhooks(secrets, receiver, stop_rx).await?;
    let (token, pharmacy_token) = (accounts[0].2.clone(), accounts[1].2.clone());
    let api = format!("https://{}", gateway.api_addr);
    println!(
        r#"
smsgate demo is running (Ctrl-C to stop)

  API            {api}   (self-signed certificate: use curl -k)
  metrics        http://{metrics}/metrics
  SMSC simulator SMPP over TLS on {smpp}, control http://{control}
  data           {data}

Two accounts share this gateway; each key sees only its own account's messages, inbound
texts and opt-outs. API keys (send,read,optouts), shown once:
  Main St Clinic  (account clinic;   senders SMSGATE, +14155550100-102 in pool:reminders)
    {token}
  Corner Pharmacy (account pharmacy; senders PHARMACY, +14155550200)
    {pharmacy_token}

Send a message as the clinic:
  curl -k {api}/v1/messages -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' -d '{{"to":"+14155550123","body":"Hello from smsgate"}}'

Then follow it (use the id from the answer):
  curl -k {api}/v1/messages/ID -H 'Authorization: Bearer {token}'

Play the handset (an inbound text through the simulator, to the clinic's SMSGATE):
  curl -s http://{control}/mo -d '{{"from":"+14155550123","to":"SMSGATE","text":"Hello back"}}'
  curl -s http://{control}/mo -d '{{"from":"+14155550123","to":"SMSGATE","text":"STOP"}}'   # then sends to it get 422
  curl -k {api}/v1/inbound -H 'Authorization: Bearer {token}'
The pharmacy's key lists none of the clinic's texts, and may not send from the clinic's SMSGATE (422):
  curl -k {api}/v1/inbound -H 'Authorization: Bearer {pharmacy_token}'
  curl -k {api}/v1/messages -H 'Authorization: Bearer {pharmacy_token}' -H 'Content-Type: application/json' -d '{{"to":"+14155550123","from":"SMSGATE","body":"Hi"}}'

Webhooks: every status change and inbound text of each account is POSTed, signed with that
account's own secret, to the receiver on http://{receiver}/ACCOUNT; it prints one "webhook …"
line each here.

Test numbers (any other number is delivered):
{test_numbers}"#,
        test_numbers = crate::sim::test_numbers::listing(),
        metrics = gateway.metrics_addr,
        smpp = sim.tls_addr.map(|a| a.to_string()).unwrap_or_default(),
        control = sim.control_addr,
        data = gateway.store.path().display(),
        receiver = WEBHOOK_RECEIVER,
    );
    crate::cli::wait_for_signal().await;
    gateway.shutdown().await;
    let _ = stop_tx.send(true);
    Ok(())
}
