//! Background upkeep of stored data, in small chunks so sends never stall behind it:
//!
//! * **retention**: message bodies purged `retention.body_days` after the final status, inbound
//!   texts `retention.inbound_days` after arrival, message and inbound metadata deleted after
//!   `retention.metadata_days` (default 2190 days, HIPAA's six years);
//! * **re-sealing**: after a data-key rotation, everything sealed under an older key is sealed
//!   again under the current one (messages, inbound texts, opt-out and consent entries, webhook
//!   payloads), after which the old key can be retired.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::RetentionConfig;
use crate::crypto::{Crypto, Sealed};
use crate::message::{Content, Message, now_ms};
use crate::store::index;
use crate::store::{Op, Store, StoreError, layout};

/// Records handled per commit.
const CHUNK: usize = 500;
/// Pause between chunks.
const BREATHE: Duration = Duration::from_millis(5);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Message bodies purged.
    pub bodies_purged: usize,
    /// Inbound texts purged.
    pub inbound_purged: usize,
    /// Message records deleted (metadata retention).
    pub messages_deleted: usize,
    /// Inbound records deleted (metadata retention).
    pub inbound_deleted: usize,
    /// Values re-sealed under the current key.
    pub resealed: usize,
}

const DAY_MS: u64 = 86_400_000;

/// Runs a pass every `interval` until `shutdown`.
pub async fn run(store: Store, retention: RetentionConfig, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        match pass(&store, &retention, now_ms()).await {
            Ok(r) if r != PassReport::default() => info!(?r, "maintenance pass"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "maintenance pass failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One pass over messages, inbound texts and the sealed registries.
pub async fn pass(store: &Store, retention: &RetentionConfig, now: u64) -> Result<PassReport, StoreError> {
    let mut report = PassReport::default();
    messages(store, retention, now, &mut report).await?;
    inbound(store, retention, now, &mut report).await?;
    for prefix in
        [crate::compliance::registry::OPTOUT, crate::compliance::registry::CONSENT, crate::store::outbox::OUTBOX]
    {
        reseal_prefix(store, prefix, &mut report).await?;
    }
    Ok(report)
}

async fn messages(
    store: &Store,
    retention: &RetentionConfig,
    now: u64,
    report: &mut PassReport,
) -> Result<(), StoreError> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.page::<Message>(layout::MESSAGE, after.as_deref(), CHUNK)?;
        let Some((last, _)) = page.last() else { return Ok(()) };
        after = Some(last.clone());
        let crypto = store.crypto();
        let mut ops = Vec::new();
        for (key, msg) in &page {
            let final_ms = msg.status.is_final().then(|| msg.history.last().map(|e| e.at_ms)).flatten();
            if let Some(at) = final_ms {
                if now >= at + retention.metadata_days * DAY_MS {
                    // Its search index entries go with it (the writer removes the account's).
                    if let Some(sealed) = &msg.sealed
                        && let Ok(content) = crypto.open_json::<Content>(sealed, key)
                    {
                        let idx = crypto.blind_index(&content.to);
                        let entry =
                            [index::by_recipient_prefix(&msg.account, &idx).as_slice(), msg.id.as_bytes()].concat();
                        ops.push(Op::Delete { key: entry });
                    }
                    ops.push(Op::DeleteMessage { id: msg.id.clone() });
                    report.messages_deleted += 1;
                    continue;
                }
                if msg.purged_ms.is_none() && now >= at + retention.body_days * DAY_MS {
                    let Some(sealed) = &msg.sealed else { continue };
                    let content: Content = crypto.open_json(sealed, key).unwrap_or_default();
                    let kept = Content { body: String::new(), ..content };
                    ops.push(Op::SetSealed {
                        id: msg.id.clone(),
                        sealed: crypto.seal_json(&kept, key),
                        purged_ms: Some(now),
                    });
                    report.bodies_purged += 1;
                    continue;
                }
            }
            if let Some(sealed) = &msg.sealed
                && crypto.is_stale(sealed)
                && let Ok(plain) = crypto.open(sealed, key)
            {
                ops.push(Op::SetSealed { id: msg.id.clone(), sealed: crypto.seal(&plain, key), purged_ms: None });
                report.resealed += 1;
            }
        }
        if !ops.is_empty() {
            store.commit(ops).await?;
        }
        if page.len() < CHUNK {
            return Ok(());
        }
        tokio::time::sleep(BREATHE).await;
    }
}

async fn inbound(
    store: &Store,
    retention: &RetentionConfig,
    now: u64,
    report: &mut PassReport,
) -> Result<(), StoreError> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.page::<Value>(layout::INBOUND, after.as_deref(), CHUNK)?;
        let Some((last, _)) = page.last() else { return Ok(()) };
        after = Some(last.clone());
        let crypto = store.crypto();
        let mut ops = Vec::new();
        for (key, mut v) in page.clone() {
            let received = v["received_ms"].as_u64().unwrap_or(now);
            if now >= received + retention.metadata_days * DAY_MS {
                // Past the metadata retention the record goes, not only its content.
                if let Some(seq) =
                    key.get(layout::INBOUND.len()..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
                {
                    let account = match v.get("account") {
                        None => Some(crate::accounts::DEFAULT),
                        Some(a) => a.as_str(),
                    };
                    ops.push(Op::Delete { key: index::inbound(account, seq) });
                }
                ops.push(Op::Delete { key });
                report.inbound_deleted += 1;
            } else if v.get("sealed").is_some_and(|s| !s.is_null()) && now >= received + retention.inbound_days * DAY_MS
            {
                v["sealed"] = Value::Null;
                v["purged_ms"] = now.into();
                ops.push(Op::Put { value: crate::store::encode(&key, &v)?, key });
                report.inbound_purged += 1;
            } else if reseal_fields(&crypto, &key, &mut v) {
                ops.push(Op::Put { value: crate::store::encode(&key, &v)?, key });
                report.resealed += 1;
            }
        }
        if !ops.is_empty() {
            store.commit(ops).await?;
        }
        if page.len() < CHUNK {
            return Ok(());
        }
        tokio::time::sleep(BREATHE).await;
    }
}

/// Re-seals every sealed field (`sealed`, `number`, `payload`) made under an older key.
fn reseal_fields(crypto: &Crypto, key: &[u8], v: &mut Value) -> bool {
    let mut changed = false;
    for field in ["sealed", "number", "payload"] {
        let Some(old) = v.get(field).and_then(|s| serde_json::from_value::<Sealed>(s.clone()).ok()) else { continue };
        if !crypto.is_stale(&old) {
            continue;
        }
        if let Ok(plain) = crypto.open(&old, key) {
            v[field] = serde_json::to_value(crypto.seal(&plain, key)).unwrap_or(Value::Null);
            changed = true;
        }
    }
    changed
}

async fn reseal_prefix(store: &Store, prefix: &[u8], report: &mut PassReport) -> Result<(), StoreError> {
    let crypto = store.crypto();
    let mut ops = Vec::new();
    for (key, mut v) in store.scan_with_keys::<Value>(prefix)? {
        // Outbox payloads are bound to their entry's id, not to the key (which moves with
        // each retry).
        let bound = match crate::store::outbox::id_of(&key).filter(|_| prefix == crate::store::outbox::OUTBOX) {
            Some(id) => crate::store::outbox::aad(&id),
            None => key.clone(),
        };
        if reseal_fields(&crypto, &bound, &mut v) {
            ops.push(Op::Put { value: crate::store::encode(&key, &v)?, key });
            report.resealed += 1;
        }
        if ops.len() >= CHUNK {
            store.commit(std::mem::take(&mut ops)).await?;
            tokio::time::sleep(BREATHE).await;
        }
    }
    if !ops.is_empty() {
        store.commit(ops).await?;
    }
    Ok(())
}
