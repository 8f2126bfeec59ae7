//! The webhook outbox table: `w/{due ms, u64 BE}{ulid}` → [`OutboxEntry`], payload sealed.
//!
//! Entries are written in the same commit as the change they report (the writer adds status
//! events itself, inbound handling adds its own), so a webhook is never lost and never sent
//! for a change that did not happen. Keys sort by when an entry is due, so the webhook worker
//! reads only what is due now: a receiver that is down, with thousands of entries backing off,
//! does not stand in front of anyone else's. The payload is sealed bound to `w/{ulid}`, which
//! stays the same when a retry moves the entry to a later key.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Op, StoreError};
use crate::crypto::{Crypto, Sealed};
use crate::message::{Message, now_ms, rfc3339};

/// Outbox entries: `w/`.
pub const OUTBOX: &[u8] = b"w/";

/// One pending delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Target URL.
    pub url: String,
    /// `status` or `inbound`.
    pub event: String,
    /// The account whose secret signs it (`None`: from before accounts, the `default` one's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The JSON payload, sealed (bound to [`aad`] of its id).
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

/// `w/{due}{id}`
pub fn key(due_ms: u64, id: &str) -> Vec<u8> {
    [OUTBOX, &due_ms.to_be_bytes(), id.as_bytes()].concat()
}

/// The first key due after `now_ms` (the end of a scan for due entries).
pub fn due_end(now_ms: u64) -> Vec<u8> {
    [OUTBOX, &now_ms.saturating_add(1).to_be_bytes()].concat()
}

/// The entry's id (its delivery id) from a key; the older `w/{ulid}` form (before keys
/// carried the due time) as well.
pub fn id_of(key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(OUTBOX)?;
    let id = match rest.len() {
        26 => rest,
        34 => &rest[8..],
        _ => return None,
    };
    std::str::from_utf8(id).ok().map(String::from)
}

/// Whether a key is in the older form (migrated by the worker at start).
pub fn is_old_form(key: &[u8]) -> bool {
    key.strip_prefix(OUTBOX).is_some_and(|rest| rest.len() == 26)
}

/// What the payload's seal is bound to: `w/{id}`.
pub fn aad(id: &str) -> Vec<u8> {
    [OUTBOX, id.as_bytes()].concat()
}

/// The op that queues `payload` as `event` for `url`, due now.
pub fn entry_op(
    crypto: &Crypto,
    (account, url): (&str, &str),
    event: &str,
    payload: &Value,
    include_body_of: Option<String>,
) -> Result<Op, StoreError> {
    let id = ulid::Ulid::new().to_string();
    let now = now_ms();
    let entry = OutboxEntry {
        url: url.to_string(),
        event: event.to_string(),
        account: Some(account.to_string()),
        payload: crypto.seal_json(payload, &aad(&id)),
        include_body_of,
        attempts: 0,
        next_ms: now,
        created_ms: now,
    };
    let key = key(now, &id);
    Ok(Op::Put { value: super::encode(&key, &entry)?, key })
}

/// The outbox op for an inbound text routed to `account`.
pub fn inbound_op(crypto: &Crypto, account: &str, url: &str, payload: &Value) -> Result<Op, StoreError> {
    entry_op(crypto, (account, url), "inbound", payload, None)
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
    Some(entry_op(crypto, (&msg.account, url), "status", &payload, include))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_due_time_and_keep_their_id() {
        let id = "01M8TREVQ26SBWSWE04Z7WVJFX";
        let (early, late) = (key(1_000, id), key(2_000, id));
        assert!(early < late && late < due_end(2_000) && due_end(1_999) <= late);
        assert_eq!(id_of(&late).as_deref(), Some(id));
        let old = aad(id);
        assert!(is_old_form(&old) && !is_old_form(&late));
        assert_eq!(id_of(&old).as_deref(), Some(id), "the older form reads too");
        assert_eq!(id_of(b"w/short"), None);
    }
}
