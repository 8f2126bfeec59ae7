//! Signed webhooks from the durable outbox (`store::outbox`).
//!
//! A worker takes due entries in due order and POSTs them, each on its own task: at most
//! 64 at once, at most 4 to one receiver (host and port), so a slow or dead receiver holds only its own
//! deliveries. A failure is retried with exponential backoff (2 s doubling to 1 h) and moved
//! to its new due time; after 48 h it is given up (`smsgate_webhooks_total{result="abandoned"}`).
//! A URL whose host resolves to an address the operator has not allowed is given up at once
//! (`result="refused"`, see [`target`]). Of an answer only the status and at most 4 KiB are
//! read.
//!
//! Each POST carries `Smsgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, `Smsgate-Event` and `Smsgate-Delivery` (the same id on every retry, for
//! de-duplication). Payloads are sealed in the outbox. Status events carry the number masked
//! and never the body, unless the key allows it (`webhook_include_body`), in which case the
//! body is read and added at send time.

pub mod target;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use ring::hmac;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::Secret;
use crate::message::now_ms;
use crate::metrics as m;
use crate::store::outbox::{self, OUTBOX, OutboxEntry};
use crate::store::{Op, Store, StoreError};
pub use target::{TargetError, TargetPolicy};

/// Give up on a webhook after this long.
const MAX_AGE_MS: u64 = 48 * 3600 * 1000;
/// Deliveries in flight at once, and to one receiver (host and port).
const MAX_IN_FLIGHT: usize = 64;
const MAX_PER_HOST: usize = 4;
/// Due entries read per look at the outbox, and at most per pass (every 100 ms).
const SCAN_PAGE: usize = 256;
const MAX_SCAN: usize = 8192;
/// Of an answer, read at most this much (and only to finish the exchange).
const MAX_ANSWER_BYTES: usize = 4096;
/// How long one delivery may take, connect to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// `t=<secs>,v1=<hex>` for `body` at `t`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut data = format!("{t}.").into_bytes();
    data.extend_from_slice(body);
    format!("t={t},v1={}", crate::fsutil::hex(hmac::sign(&key, &data).as_ref()))
}

/// Checks a signature header (for receivers, and the tests): right MAC and at most
/// `tolerance_secs` old.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_secs: u64, tolerance_secs: u64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if now_secs.abs_diff(t) > tolerance_secs {
        return false;
    }
    let expected = signature(secret, t, body);
    let expected_mac = expected.rsplit("v1=").next().unwrap_or("");
    // Constant-time comparison of the hex MACs.
    subtle::ConstantTimeEq::ct_eq(expected_mac.as_bytes(), v1.as_bytes()).into()
}

/// Everything a delivery needs.
#[derive(Clone)]
pub struct Deliverer {
    /// The store (outbox and message bodies).
    pub store: Store,
    /// The configured signing secret, which the `default` account signs with when it is set
    /// (receivers set up before accounts keep verifying).
    pub secret: Option<Secret>,
    /// The accounts: every other delivery is signed with its account's own secret.
    pub accounts: Arc<crate::accounts::Accounts>,
    /// TLS for https receivers.
    pub tls: Arc<rustls::ClientConfig>,
    /// Which addresses a receiver may have.
    pub policy: Arc<TargetPolicy>,
}

/// How a delivery ended.
enum Outcome {
    Delivered,
    Failed(String),
    Refused(TargetError),
}

/// Runs the delivery worker until `shutdown`.
pub async fn run(d: Deliverer, mut shutdown: watch::Receiver<bool>) {
    if let Err(e) = migrate(&d.store).await {
        warn!(error = %e, "webhook outbox: moving entries to due-time keys failed; will retry at the next start");
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Vec<u8>, String)>();
    let mut in_flight: HashSet<Vec<u8>> = HashSet::new();
    let mut per_host: HashMap<String, usize> = HashMap::new();
    loop {
        if in_flight.len() < MAX_IN_FLIGHT {
            take_due(&d, &mut in_flight, &mut per_host, &done_tx);
        }
        tokio::select! {
            Some((key, host)) = done_rx.recv() => {
                in_flight.remove(&key);
                if let Some(n) = per_host.get_mut(&host) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_host.remove(&host);
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Starts deliveries of due entries, oldest due first, until [`MAX_IN_FLIGHT`] run. Entries
/// whose host already has [`MAX_PER_HOST`] in flight are passed over, and the walk goes on past
/// them (up to [`MAX_SCAN`] entries): a receiver that hangs with thousands of due entries does
/// not hide the ones behind them.
fn take_due(
    d: &Deliverer,
    in_flight: &mut HashSet<Vec<u8>>,
    per_host: &mut HashMap<String, usize>,
    done_tx: &mpsc::UnboundedSender<(Vec<u8>, String)>,
) {
    let end = outbox::due_end(now_ms());
    let mut start = OUTBOX.to_vec();
    let mut scanned = 0;
    while in_flight.len() < MAX_IN_FLIGHT && scanned < MAX_SCAN {
        let page = match d.store.range::<OutboxEntry>(&start, &end, SCAN_PAGE) {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, "webhook outbox");
                return;
            }
        };
        let Some((last, _)) = page.last() else { return };
        start = last.clone();
        start.push(0);
        scanned += page.len();
        let full = page.len() == SCAN_PAGE;
        for (key, entry) in page {
            if in_flight.contains(&key) || in_flight.len() >= MAX_IN_FLIGHT {
                continue;
            }
            let host = host_of(&entry.url);
            let n = per_host.entry(host.clone()).or_default();
            if *n >= MAX_PER_HOST {
                continue;
            }
            *n += 1;
            in_flight.insert(key.clone());
            let (d, done) = (d.clone(), done_tx.clone());
            tokio::spawn(async move {
                if let Err(e) = deliver_one(&d, key.clone(), entry).await {
                    warn!(error = %e, "webhook bookkeeping failed");
                }
                let _ = done.send((key, host));
            });
        }
        if !full {
            return;
        }
    }
}

/// Moves entries written before keys carried their due time (`w/{ulid}`) to `w/{due}{ulid}`.
async fn migrate(store: &Store) -> Result<(), StoreError> {
    let old: Vec<(Vec<u8>, OutboxEntry)> =
        store.scan_with_keys::<OutboxEntry>(OUTBOX)?.into_iter().filter(|(k, _)| outbox::is_old_form(k)).collect();
    if old.is_empty() {
        return Ok(());
    }
    info!(entries = old.len(), "webhook outbox: moving entries to due-time keys");
    for chunk in old.chunks(500) {
        let mut ops = Vec::new();
        for (key, entry) in chunk {
            let Some(id) = outbox::id_of(key) else { continue };
            let new = outbox::key(entry.next_ms, &id);
            ops.push(Op::Put { value: crate::store::encode(&new, entry)?, key: new });
            ops.push(Op::Delete { key: key.clone() });
        }
        store.commit(ops).await?;
    }
    Ok(())
}

/// The receiver (host and port), for the per-receiver cap and logs (the URL as given when it
/// does not parse).
fn host_of(url: &str) -> String {
    let receiver = |u: url::Url| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?));
    url::Url::parse(url).ok().and_then(receiver).unwrap_or_else(|| url.to_string())
}

async fn deliver_one(d: &Deliverer, key: Vec<u8>, mut entry: OutboxEntry) -> Result<(), StoreError> {
    let id = outbox::id_of(&key).unwrap_or_default();
    let crypto = d.store.crypto();
    let mut payload: Value = crypto.open_json(&entry.payload, &outbox::aad(&id)).unwrap_or(Value::Null);
    // A message that is gone or unreadable simply has no body to add.
    if let Some(msg_id) = &entry.include_body_of
        && let Ok(Some(msg)) = d.store.message(msg_id)
        && msg.purged_ms.is_none()
    {
        payload["body"] = json!(msg.content.body);
    }
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let account = entry.account.as_deref().unwrap_or(crate::accounts::DEFAULT);
    let outcome = match (d.policy.check(&entry.url), signing_secret(d, account)) {
        (Err(e), _) => Outcome::Refused(e),
        (Ok(_), None) => Outcome::Failed(format!("the account '{account}' has no webhook secret")),
        (Ok(url), Some(secret)) => post(d, &url, (&entry.event, &id), secret.as_bytes(), body).await,
    };
    match outcome {
        Outcome::Delivered => {
            m::webhook("delivered");
            d.store.commit_one(Op::Delete { key }).await?;
        }
        Outcome::Refused(why) => {
            m::webhook("refused");
            warn!(host = %host_of(&entry.url), reason = %why, "webhook refused: its receiver's address is not allowed");
            d.store.commit_one(Op::Delete { key }).await?;
        }
        Outcome::Failed(why) => {
            entry.attempts += 1;
            if now_ms() > entry.created_ms + MAX_AGE_MS {
                m::webhook("abandoned");
                warn!(host = %host_of(&entry.url), attempts = entry.attempts, "webhook abandoned after 48 h: {why}");
                d.store.commit_one(Op::Delete { key }).await?;
            } else {
                m::webhook("retry");
                let backoff = (1000u64 << entry.attempts.min(12)).min(3_600_000);
                entry.next_ms = now_ms() + backoff;
                debug!(host = %host_of(&entry.url), attempts = entry.attempts, "webhook failed: {why}");
                let moved = outbox::key(entry.next_ms, &id);
                let value = crate::store::encode(&moved, &entry)?;
                d.store.commit(vec![Op::Delete { key }, Op::Put { key: moved, value }]).await?;
            }
        }
    }
    Ok(())
}

/// The secret `account`'s deliveries are signed with: the configured one for `default` when
/// there is one, else the account's own. Secrets are never shared between accounts.
fn signing_secret(d: &Deliverer, account: &str) -> Option<String> {
    if account == crate::accounts::DEFAULT
        && let Some(s) = &d.secret
    {
        return Some(s.expose().to_string());
    }
    let a = d.accounts.get(account)?;
    crate::accounts::open_secret(&d.store.crypto(), &a)
}

async fn post(d: &Deliverer, url: &url::Url, (event, delivery): (&str, &str), secret: &[u8], body: Vec<u8>) -> Outcome {
    let https = url.scheme() == "https";
    let Some(host) = url.host_str().map(|h| h.trim_matches(['[', ']']).to_string()) else {
        return Outcome::Refused(TargetError::Syntax);
    };
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let path = &url[url::Position::BeforePath..];
    let t = now_ms() / 1000;
    let sig = signature(secret, t, &body);
    let request = Request::post(if path.is_empty() { "/" } else { path })
        .header("host", authority)
        .header("content-type", "application/json")
        .header("user-agent", "smsgate-webhooks")
        .header("smsgate-signature", sig)
        .header("smsgate-event", event)
        .header("smsgate-delivery", delivery)
        .body(Full::new(Bytes::from(body)));
    let Ok(request) = request else { return Outcome::Refused(TargetError::Syntax) };
    let work = async {
        // Resolved and checked now, and connected to exactly that address.
        let addr = d.policy.resolve(url).await.map_err(Err)?;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| Ok(e.to_string()))?;
        let status = if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| Ok(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(d.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| Ok(e.to_string()))?;
            send(TokioIo::new(stream), request).await.map_err(Ok)?
        } else {
            send(TokioIo::new(tcp), request).await.map_err(Ok)?
        };
        Ok::<StatusCode, Result<String, TargetError>>(status)
    };
    match tokio::time::timeout(DELIVERY_TIMEOUT, work).await {
        Err(_) => Outcome::Failed("timed out".into()),
        Ok(Ok(s)) if s.is_success() => Outcome::Delivered,
        Ok(Ok(s)) => Outcome::Failed(format!("HTTP {s}")),
        Ok(Err(Ok(why))) => Outcome::Failed(why),
        Ok(Err(Err(refused))) => Outcome::Refused(refused),
    }
}

/// Sends the request and reads at most [`MAX_ANSWER_BYTES`] of the answer.
async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut read = 0;
    while read < MAX_ANSWER_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map(|d| d.len()).unwrap_or(0),
            _ => break,
        }
    }
    // Whatever else the receiver sends is not read: the connection goes.
    drop(body);
    conn.abort();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_tampering_and_age() {
        let s = signature(b"secret", 1_800_000_000, b"{\"a\":1}");
        assert!(s.starts_with("t=1800000000,v1="));
        assert!(verify(b"secret", &s, b"{\"a\":1}", 1_800_000_010, 300));
        assert!(!verify(b"secret", &s, b"{\"a\":2}", 1_800_000_010, 300), "body changed");
        assert!(!verify(b"other", &s, b"{\"a\":1}", 1_800_000_010, 300), "wrong secret");
        assert!(!verify(b"secret", &s, b"{\"a\":1}", 1_800_001_000, 300), "too old");
        assert!(!verify(b"secret", "garbage", b"", 0, 300));
    }

    #[test]
    fn only_the_receiver_of_a_url_goes_to_logs_and_counts_for_the_cap() {
        assert_eq!(host_of("https://hooks.example.com/p/secret-token?x=1"), "hooks.example.com:443");
        // Two receivers on one host are two receivers.
        assert_ne!(host_of("https://127.0.0.1:8001/a"), host_of("https://127.0.0.1:8002/a"));
    }
}
