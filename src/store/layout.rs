//! Key layout of the single sled tree. Everything that must change together lives in one tree
//! so that one `apply_batch` commits it atomically (sled 0.34's multi-tree transactions are
//! the part its README warns about).
//!
//! | prefix | key after the prefix | value |
//! |---|---|---|
//! | `m/` | message id (ULID, 26 ASCII) | message record, JSON |
//! | `q/` | due ms (u64 BE) ‖ seq (u64 BE) | message id ‖ `0x00` ‖ carrier queue ‖ `0x00` ‖ expiry ms (decimal) |
//! | `c/` | carrier ‖ `0x00` ‖ carrier message id | message id ‖ `0x00` ‖ part index (decimal) |
//! | `o/` | carrier ‖ `0x00` ‖ carrier message id | receipt that came before its `submit_sm_resp`, JSON |
//! | `k/` | API key id | API key record, JSON |
//! | `i/` | seq (u64 BE) | inbound message, JSON |
//! | `d/` | API key id ‖ `0x00` ‖ Idempotency-Key | the first answer, JSON (24 h) |
//! | `u/` | API key id ‖ `0x00` ‖ UTC day `YYYYMMDD` | segments sent that day (u64 BE) |
//! | `z/` | the original key | a record that could not be decoded, set aside (JSON: reason, time, bytes) |
//!
//! Big-endian integers make sled's byte order the due order, so a range scan over `q/` yields
//! messages by due time, then by accept order.

/// Message records.
pub const MESSAGE: &[u8] = b"m/";
/// Ready queue.
pub const QUEUE: &[u8] = b"q/";
/// Carrier message id → message, for receipts.
pub const CARRIER_ID: &[u8] = b"c/";
/// Receipts that arrived before the `submit_sm_resp` they belong to.
pub const ORPHAN: &[u8] = b"o/";
/// API keys.
pub const API_KEY: &[u8] = b"k/";
/// Inbound (mobile-originated) messages.
pub const INBOUND: &[u8] = b"i/";

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    key.extend_from_slice(prefix);
    for p in parts {
        key.extend_from_slice(p);
    }
    key
}

/// Idempotency entries.
pub const IDEMPOTENCY: &[u8] = b"d/";
/// Daily usage counters.
pub const USAGE: &[u8] = b"u/";
/// Records set aside because they could not be decoded (see [`super::Op::Quarantine`]).
pub const QUARANTINE: &[u8] = b"z/";

/// `z/{original key}`
pub fn quarantine(original: &[u8]) -> Vec<u8> {
    join(QUARANTINE, &[original])
}

/// `d/{key_id}\0{idempotency_key}`
pub fn idempotency(key_id: &str, idempotency_key: &str) -> Vec<u8> {
    join(IDEMPOTENCY, &[key_id.as_bytes(), b"\0", idempotency_key.as_bytes()])
}

/// `u/{key_id}\0{yyyymmdd}`
pub fn usage(key_id: &str, day: &str) -> Vec<u8> {
    join(USAGE, &[key_id.as_bytes(), b"\0", day.as_bytes()])
}

/// `m/{id}`
pub fn message(id: &str) -> Vec<u8> {
    join(MESSAGE, &[id.as_bytes()])
}

/// `q/{due}{seq}`
pub fn queue(due_ms: u64, seq: u64) -> Vec<u8> {
    join(QUEUE, &[&due_ms.to_be_bytes(), &seq.to_be_bytes()])
}

/// Reads `(due_ms, seq)` back from a `q/` key.
pub fn parse_queue(key: &[u8]) -> Option<(u64, u64)> {
    let rest = key.strip_prefix(QUEUE)?;
    if rest.len() != 16 {
        return None;
    }
    let due = u64::from_be_bytes(rest[..8].try_into().ok()?);
    let seq = u64::from_be_bytes(rest[8..].try_into().ok()?);
    Some((due, seq))
}

/// `c/{carrier}\0{carrier_message_id}`
pub fn carrier_id(carrier: &str, carrier_message_id: &str) -> Vec<u8> {
    join(CARRIER_ID, &[carrier.as_bytes(), b"\0", carrier_message_id.as_bytes()])
}

/// `o/{carrier}\0{carrier_message_id}`
pub fn orphan(carrier: &str, carrier_message_id: &str) -> Vec<u8> {
    join(ORPHAN, &[carrier.as_bytes(), b"\0", carrier_message_id.as_bytes()])
}

/// The form a receipt's id is kept in while it waits for its `submit_sm_resp` (`o/`), so that
/// writings of one id meet: a number (decimal or hexadecimal digits) without leading zeros and
/// in lower case; anything else as is. Never another base: `26` and `1a` may be two messages.
pub fn canonical_id(id: &str) -> String {
    let id = id.trim();
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let stripped = id.trim_start_matches('0');
        return if stripped.is_empty() { "0".into() } else { stripped.to_ascii_lowercase() };
    }
    id.to_string()
}

/// The `o/` ids a receipt for the `submit_sm_resp` id `id` may wait under: `id` as stored
/// before receipts were kept canonical, and its canonical form. (Not other readings of its
/// digits: with sequential ids, another message's receipt would match.)
pub fn orphan_ids(id: &str) -> Vec<String> {
    let id = id.trim();
    let mut out = vec![id.to_string(), canonical_id(id)];
    out.sort();
    out.dedup();
    out
}

/// Value of a `q/` entry: the message, the carrier whose queue holds it, its expiry.
pub fn queue_value(message_id: &str, carrier: &str, expires_ms: u64, account: &str) -> Vec<u8> {
    format!("{message_id}\0{carrier}\0{expires_ms}\0{account}").into_bytes()
}

/// A `q/` value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueValue {
    /// Message id.
    pub id: String,
    /// Carrier queue.
    pub carrier: String,
    /// Validity deadline (ms).
    pub expires_ms: u64,
    /// Its account (`default` for entries written before accounts).
    pub account: String,
}

/// Reads a `q/` value back.
pub fn parse_queue_value(value: &[u8]) -> Option<QueueValue> {
    let s = std::str::from_utf8(value).ok()?;
    let mut it = s.split('\0');
    let (id, carrier, expires) = (it.next()?, it.next()?, it.next()?);
    let account = it.next().unwrap_or(crate::accounts::DEFAULT);
    Some(QueueValue {
        id: id.to_string(),
        carrier: carrier.to_string(),
        expires_ms: expires.parse().ok()?,
        account: account.to_string(),
    })
}

/// Value of a `c/` entry.
pub fn carrier_id_value(message_id: &str, part: usize) -> Vec<u8> {
    format!("{message_id}\0{part}").into_bytes()
}

/// Reads a `c/` value back.
pub fn parse_carrier_id_value(value: &[u8]) -> Option<(String, usize)> {
    let s = std::str::from_utf8(value).ok()?;
    let (id, part) = s.split_once('\0')?;
    Some((id.to_string(), part.parse().ok()?))
}

/// `k/{key_id}`
pub fn api_key(key_id: &str) -> Vec<u8> {
    join(API_KEY, &[key_id.as_bytes()])
}

/// `i/{seq}`
pub fn inbound(seq: u64) -> Vec<u8> {
    join(INBOUND, &[&seq.to_be_bytes()])
}

#[cfg(test)]
mod tests {

    #[test]
    fn queue_values_carry_their_account_and_old_ones_are_the_defaults() {
        let v = parse_queue_value(&queue_value("01M8TZKKC878YD069FHA6YABDA", "acme", 42, "clinic")).unwrap();
        assert_eq!((v.carrier.as_str(), v.expires_ms, v.account.as_str()), ("acme", 42, "clinic"));
        let old = parse_queue_value(b"01M8TZKKC878YD069FHA6YABDA\x00acme\x0042").unwrap();
        assert_eq!(old.account, "default", "written before accounts");
    }

    use super::*;

    #[test]
    fn queue_keys_sort_by_due_then_seq() {
        let mut keys = [queue(2, 1), queue(1, 9), queue(1, 2), queue(256, 0)];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_queue(k).unwrap()).collect();
        assert_eq!(parsed, vec![(1, 2), (1, 9), (2, 1), (256, 0)]);
        assert_eq!(parse_queue(b"q/short"), None);
    }

    #[test]
    fn carrier_index_round_trips() {
        let v = carrier_id_value("01ABC", 3);
        assert_eq!(parse_carrier_id_value(&v), Some(("01ABC".into(), 3)));
        assert_eq!(parse_carrier_id_value(b"garbage"), None);
    }
}
