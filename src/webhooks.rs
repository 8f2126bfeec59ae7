//! Signed webhooks from a durable outbox.
//!
//! Status changes (for messages with a `callback_url`, or whose key has a default one) and
//! inbound texts become outbox entries (`w/{ulid}`) in the same commit as the change itself,
//! so a webhook is never lost and never sent for a change that did not happen. A worker POSTs
//! them in order, retries with exponential backoff (1 s doubling to 1 h, for up to 48 h), and
//! deletes each on a 2xx.
//!
//! Each POST carries `Smsgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, `Smsgate-Event` and `Smsgate-Delivery` (an id for de-duplication). Payloads
//! are sealed in the outbox. Status events carry the number masked and never the body, unless
//! the key allows it (`webhook_include_body`), in which case the body is read and added at
//! send time.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::config::Secret;
use crate::crypto::{Crypto, Sealed};
use crate::message::{Message, now_ms, rfc3339};
use crate::metrics as m;
use crate::store::{Op, Store, StoreError};

/// Outbox entries: `w/{ulid}`.
pub const OUTBOX: &[u8] = b"w/";

/// Give up on a webhook after this long.
const MAX_AGE_MS: u64 = 48 * 3600 * 1000;

/// One pending delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Target URL.
    pub url: String,
    /// `status` or `inbound`.
    pub event: String,
    /// The JSON payload, sealed.
    pub payload: Sealed,
    /// Add this message's body at send time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_body_of: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before (ms).
    pub next_ms: u64,
    /// Created (ms).
    pub created_ms: u64,
}

fn key(id: &str) -> Vec<u8> {
    [OUTBOX, id.as_bytes()].concat()
}

/// The op that queues `payload` for `url`.
pub fn outbox_op(crypto: &Crypto, _seq: u64, url: &str, payload: &Value) -> Result<Op, StoreError> {
    entry_op(crypto, url, "inbound", payload, None)
}

fn entry_op(
    crypto: &Crypto,
    url: &str,
    event: &str,
    payload: &Value,
    include_body_of: Option<String>,
) -> Result<Op, StoreError> {
    let k = key(&ulid::Ulid::new().to_string());
    let now = now_ms();
    let entry = OutboxEntry {
        url: url.to_string(),
        event: event.to_string(),
        payload: crypto.seal_json(payload, &k),
        include_body_of,
        attempts: 0,
        next_ms: now,
        created_ms: now,
    };
    Ok(Op::Put { value: crate::store::encode(&k, &entry)?, key: k })
}

/// The outbox op for a message's status change (called by the store writer).
pub fn status_op(crypto: &Crypto, msg: &Message) -> Option<Result<Op, StoreError>> {
    let url = msg.callback_url.as_ref()?;
    let mut payload = json!({
        "event": "status", "id": msg.id, "status": msg.status.as_str(), "to": msg.to_masked,
        "segments": msg.segments, "carrier": msg.carrier, "attempts": msg.attempts,
        "at": rfc3339(msg.history.last().map(|e| e.at_ms).unwrap_or_else(now_ms)),
    });
    if let Some(r) = &msg.client_ref {
        payload["client_ref"] = json!(r);
    }
    if let Some(e) = &msg.error {
        payload["error"] = json!({"code": e.code, "message": e.message, "carrier_status": e.carrier_status});
    }
    let include = msg.webhook_body.then(|| msg.id.clone());
    Some(entry_op(crypto, url, "status", &payload, include))
}

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

/// Runs the delivery worker until `shutdown`.
pub async fn run(
    store: Store,
    secret: Secret,
    tls: std::sync::Arc<rustls::ClientConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let worked = match deliver_due(&store, &secret, &tls).await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "webhook outbox");
                0
            }
        };
        let pause = if worked > 0 { Duration::from_millis(10) } else { Duration::from_millis(200) };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn deliver_due(
    store: &Store,
    secret: &Secret,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<usize, StoreError> {
    let now = now_ms();
    let due: Vec<(Vec<u8>, OutboxEntry)> =
        store.page::<OutboxEntry>(OUTBOX, None, 256)?.into_iter().filter(|(_, e)| e.next_ms <= now).take(32).collect();
    let mut tasks = Vec::new();
    for (k, entry) in due {
        let (store, secret, tls) = (store.clone(), secret.clone(), tls.clone());
        tasks.push(tokio::spawn(async move { deliver_one(&store, &secret, &tls, k, entry).await }));
    }
    let n = tasks.len();
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            warn!(error = %e, "webhook bookkeeping failed");
        }
    }
    Ok(n)
}

async fn deliver_one(
    store: &Store,
    secret: &Secret,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    k: Vec<u8>,
    mut entry: OutboxEntry,
) -> Result<(), StoreError> {
    let crypto = store.crypto().clone();
    let mut payload: Value = crypto.open_json(&entry.payload, &k).unwrap_or(Value::Null);
    if let Some(id) = &entry.include_body_of
        && let Some(msg) = store.message(id)?
        && msg.purged_ms.is_none()
    {
        payload["body"] = json!(msg.content.body);
    }
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let delivery = String::from_utf8_lossy(&k[OUTBOX.len()..]).into_owned();
    let result = post(tls, &entry.url, &entry.event, &delivery, secret, body).await;
    match result {
        Ok(status) if status.is_success() => {
            m::webhook("delivered");
            store.commit_one(Op::Delete { key: k }).await?;
        }
        other => {
            let why = match other {
                Ok(s) => format!("HTTP {s}"),
                Err(e) => e,
            };
            entry.attempts += 1;
            if now_ms() > entry.created_ms + MAX_AGE_MS {
                m::webhook("abandoned");
                warn!(url = %redact(&entry.url), attempts = entry.attempts, "webhook abandoned after 48 h: {why}");
                store.commit_one(Op::Delete { key: k }).await?;
            } else {
                m::webhook("retry");
                let backoff = (1000u64 << entry.attempts.min(12)).min(3_600_000);
                entry.next_ms = now_ms() + backoff;
                debug!(url = %redact(&entry.url), attempts = entry.attempts, "webhook failed: {why}");
                store.commit_one(Op::Put { value: crate::store::encode(&k, &entry)?, key: k }).await?;
            }
        }
    }
    Ok(())
}

/// Scheme and host only, for logs (paths and queries may carry tokens).
fn redact(url: &str) -> String {
    url.parse::<Uri>()
        .map(|u| format!("{}://{}", u.scheme_str().unwrap_or("?"), u.host().unwrap_or("?")))
        .unwrap_or_default()
}

async fn post(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    url: &str,
    event: &str,
    delivery: &str,
    secret: &Secret,
    body: Vec<u8>,
) -> Result<StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("URL without host")?.trim_matches(['[', ']']).to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let t = now_ms() / 1000;
    let sig = signature(secret.expose().as_bytes(), t, &body);
    let request = Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", uri.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header("content-type", "application/json")
        .header("user-agent", "smsgate-webhooks")
        .header("smsgate-signature", sig)
        .header("smsgate-event", event)
        .header("smsgate-delivery", delivery)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let stream =
                tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work).await.map_err(|_| "timed out".to_string())?
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
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
    fn urls_are_redacted_for_logs() {
        assert_eq!(redact("https://hooks.example.com/p/secret-token?x=1"), "https://hooks.example.com");
    }
}
