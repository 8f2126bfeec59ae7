//! Secondary indexes, each a key with an empty value next to the records it points at:
//! messages by account and by recipient (search, newest first: message ids are ULIDs, which
//! sort by time), inbound texts by the account they were routed to, and submitted messages
//! waiting for their receipt (by submit time, for the receipt timeout). Recipients are indexed
//! by blind index, never by number.

use super::{Op, Store, StoreError, layout};
use crate::message::Message;

/// `h/{account}\0{message id}`
pub const BY_ACCOUNT: &[u8] = b"h/";
/// `g/{account}\0{blind index of to}\0{message id}`
pub const BY_RECIPIENT: &[u8] = b"g/";
/// `j/{account}\0{inbound seq, u64 BE}`; unrouted texts have the empty account.
pub const INBOUND_BY_ACCOUNT: &[u8] = b"j/";
/// `t/{commit ms, u64 BE}{first message id}` → the ids (space-separated) of the messages that
/// became `submitted` in that commit.
pub const AWAITING_RECEIPT: &[u8] = b"t/";

/// Set once the indexes cover every record written before they existed.
const BUILT: &[u8] = b"s/index-v1";

/// `h/{account}\0`
pub fn by_account_prefix(account: &str) -> Vec<u8> {
    [BY_ACCOUNT, account.as_bytes(), b"\0"].concat()
}

/// `g/{account}\0{idx}\0`
pub fn by_recipient_prefix(account: &str, idx: &str) -> Vec<u8> {
    [BY_RECIPIENT, account.as_bytes(), b"\0", idx.as_bytes(), b"\0"].concat()
}

/// `j/{account}\0` (`None`: the unrouted texts).
pub fn inbound_prefix(account: Option<&str>) -> Vec<u8> {
    [INBOUND_BY_ACCOUNT, account.unwrap_or("").as_bytes(), b"\0"].concat()
}

/// `j/{account}\0{seq}`
pub fn inbound(account: Option<&str>, seq: u64) -> Vec<u8> {
    [inbound_prefix(account).as_slice(), &seq.to_be_bytes()].concat()
}

/// `t/{commit ms}{first id}`
pub fn awaiting(submitted_ms: u64, id: &str) -> Vec<u8> {
    [AWAITING_RECEIPT, &submitted_ms.to_be_bytes(), id.as_bytes()].concat()
}

/// The id at the end of a message index key.
pub fn id_of(key: &[u8]) -> Option<&str> {
    key.len().checked_sub(26).and_then(|at| std::str::from_utf8(&key[at..]).ok())
}

/// The sequence number at the end of an inbound index key.
pub fn seq_of(key: &[u8]) -> Option<u64> {
    let at = key.len().checked_sub(8)?;
    key[at..].try_into().ok().map(u64::from_be_bytes)
}

/// When a message id (a ULID) was made, in ms.
pub fn id_time_ms(id: &str) -> Option<u64> {
    ulid::Ulid::from_string(id).ok().map(|u| u.timestamp_ms())
}

/// The smallest (`high` false) or largest id made at `ms`: bounds of a time range.
pub fn id_bound(ms: u64, high: bool) -> String {
    ulid::Ulid::from_parts(ms, if high { u128::MAX } else { 0 }).to_string()
}

/// The index entries of a new message whose recipient's blind index is `idx`.
pub fn message_ops(msg: &Message, idx: &str) -> [Op; 2] {
    let by_account = [by_account_prefix(&msg.account).as_slice(), msg.id.as_bytes()].concat();
    let by_recipient = [by_recipient_prefix(&msg.account, idx).as_slice(), msg.id.as_bytes()].concat();
    [Op::Put { key: by_account, value: Vec::new() }, Op::Put { key: by_recipient, value: Vec::new() }]
}

/// Indexes the messages and inbound texts stored before the indexes existed (once; a
/// marker says it is done). Runs in the background after start: until it ends, searches
/// may miss older records.
pub async fn build(store: &Store) -> Result<usize, StoreError> {
    if store.get_raw(BUILT)?.is_some() {
        return Ok(0);
    }
    let mut indexed = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.page::<serde_json::Value>(layout::MESSAGE, after.as_deref(), 500)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let mut ops = Vec::new();
        for (key, _) in &page {
            let Some(id) = std::str::from_utf8(&key[layout::MESSAGE.len()..]).ok() else { continue };
            if let Some(msg) = store.message(id)? {
                let idx = store.crypto().blind_index(&msg.content.to);
                ops.extend(message_ops(&msg, &idx));
                indexed += 1;
            }
        }
        store.commit(ops).await?;
        if page.len() < 500 {
            break;
        }
    }
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.page::<crate::inbound::InboundMessage>(layout::INBOUND, after.as_deref(), 500)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let ops: Vec<Op> = page
            .iter()
            .map(|(_, m)| Op::Put { key: inbound(m.account.as_deref(), m.seq), value: Vec::new() })
            .collect();
        indexed += ops.len();
        store.commit(ops).await?;
        if page.len() < 500 {
            break;
        }
    }
    store.commit(vec![Op::Put { key: BUILT.to_vec(), value: b"1".to_vec() }]).await?;
    Ok(indexed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_in_what_they_point_at() {
        let id = "01KBG9N7Z8Q0F6Y0M7C2W3X4Y5";
        let key = [by_account_prefix("clinic").as_slice(), id.as_bytes()].concat();
        assert_eq!(id_of(&key), Some(id));
        assert_eq!(seq_of(&inbound(Some("clinic"), 42)), Some(42));
        assert!(inbound(None, 1).starts_with(b"j/\0"), "unrouted texts have their own prefix");
        let t = id_time_ms(id).unwrap();
        assert!(id_bound(t, false).as_str() <= id && id <= id_bound(t, true).as_str());
    }
}
