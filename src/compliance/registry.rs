//! The opt-out and consent registries, keyed by the blind index of the number (so the store
//! holds no number in clear); each entry keeps the number sealed, for listing and export, and
//! who/when/how it was recorded.
//!
//! Opt-outs are keyed by number first (`x/{idx}\0{scope}`): a send checks one key per scope,
//! and everything recorded for one number is one short prefix scan, however large the
//! registry. Numbers are always E.164 as `phone::E164::normalize` or `E164::from_carrier`
//! make them, so a STOP and the sends it must block hash alike.

use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Sealed};
use crate::store::{Op, Store, StoreError};

/// Scope of a global opt-out.
pub const GLOBAL: &str = "*";

/// The scope of an opt-out from every sender of one account: `acct:{name}` (sender ids
/// cannot hold a `:`, so it never collides with one).
pub fn account_scope(account: &str) -> String {
    format!("acct:{account}")
}

/// Opt-outs: `x/{blind index}\0{scope}`.
pub const OPTOUT: &[u8] = b"x/";
/// Consents: `y/{blind index}`.
pub const CONSENT: &[u8] = b"y/";
/// Frequency counters: `f/{blind index}\0{category}\0{YYYYMMDD}` (u64 BE).
pub const FREQUENCY: &[u8] = b"f/";

/// `x/{idx}\0{scope}`
pub fn optout_key(scope: &str, idx: &str) -> Vec<u8> {
    [OPTOUT, idx.as_bytes(), b"\0", scope.as_bytes()].concat()
}

/// `x/{idx}\0`: every scope of one number.
fn optout_prefix(idx: &str) -> Vec<u8> {
    [OPTOUT, idx.as_bytes(), b"\0"].concat()
}

/// `y/{idx}`
pub fn consent_key(idx: &str) -> Vec<u8> {
    [CONSENT, idx.as_bytes()].concat()
}

/// `f/{idx}\0{category}\0{day}`
pub fn frequency_key(idx: &str, category: &str, day: &str) -> Vec<u8> {
    [FREQUENCY, idx.as_bytes(), b"\0", category.as_bytes(), b"\0", day.as_bytes()].concat()
}

/// One opt-out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOutEntry {
    /// The number, sealed (bound to the entry's key).
    pub number: Sealed,
    /// `*` (global) or the sender id it applies to.
    pub scope: String,
    /// `keyword`, `api` or `import`.
    pub source: String,
    /// The keyword and rule (`exact`/`reasonable`) for keyword opt-outs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    /// Which rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Who: `key:<id>`, `carrier:<name>`, `cli`.
    pub actor: String,
    /// The account it was recorded for (the key's, or the owner of the address texted);
    /// `None`: an operator's, or from before accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// When (ms).
    pub at_ms: u64,
    /// Whether the one confirmation text has been queued.
    #[serde(default)]
    pub confirmation_sent: bool,
}

/// One recorded opt-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEntry {
    /// The number, sealed.
    pub number: Sealed,
    /// Where the consent came from (`web form`, `keyword:START`, …).
    pub source: String,
    /// When the person consented (ms).
    pub consented_ms: u64,
    /// Who recorded it.
    pub actor: String,
    /// When it was recorded (ms).
    pub recorded_ms: u64,
}

/// The scopes to look at for a send that may leave from any of `senders` under the
/// configured mode: the global one, and in `sender` mode each sender's own.
pub fn scopes_for(per_sender: bool, senders: &[String]) -> Vec<String> {
    let mut v = vec![GLOBAL.to_string()];
    if per_sender {
        v.extend(senders.iter().filter(|s| !s.is_empty() && s.as_str() != GLOBAL).cloned());
    }
    v
}

/// Whether `account` may see (list, show, remove) an opt-out: one recorded for it, or in its
/// own scope (`acct:{name}`, or one of its senders). A global opt-out another account's
/// patient texted still blocks its sends, but is not its to list or lift.
pub fn visible_to(entry: &OptOutEntry, account: &crate::accounts::Account) -> bool {
    let recorded_for = entry.account.as_deref().unwrap_or(crate::accounts::DEFAULT);
    recorded_for == account.name
        || entry.scope == account_scope(&account.name)
        || account.senders.contains(&entry.scope)
}

/// The first opt-out blocking `idx` in any of `scopes`.
pub fn find_optout(store: &Store, idx: &str, scopes: &[String]) -> Result<Option<OptOutEntry>, StoreError> {
    for scope in scopes {
        if let Some(e) = store.get::<OptOutEntry>(&optout_key(scope, idx))? {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// Whether `idx` has a recorded opt-in.
pub fn has_consent(store: &Store, idx: &str) -> Result<bool, StoreError> {
    Ok(store.get::<ConsentEntry>(&consent_key(idx))?.is_some())
}

/// The op that stores an opt-out for `number`.
#[allow(clippy::too_many_arguments)]
pub fn optout_op(
    crypto: &Crypto,
    number: &str,
    scope: &str,
    source: &str,
    keyword: Option<String>,
    rule: Option<String>,
    (actor, account): (&str, Option<&str>),
    at_ms: u64,
    confirmation_sent: bool,
) -> Result<(Op, OptOutEntry), StoreError> {
    let key = optout_key(scope, &crypto.blind_index(number));
    let entry = OptOutEntry {
        number: crypto.seal(number.as_bytes(), &key),
        scope: scope.to_string(),
        source: source.to_string(),
        keyword,
        rule,
        actor: actor.to_string(),
        account: account.map(String::from),
        at_ms,
        confirmation_sent,
    };
    let value = crate::store::encode(&key, &entry)?;
    Ok((Op::Put { key, value }, entry))
}

/// The op that stores a consent for `number`.
pub fn consent_op(
    crypto: &Crypto,
    number: &str,
    source: &str,
    consented_ms: u64,
    actor: &str,
    now_ms: u64,
) -> Result<Op, StoreError> {
    let key = consent_key(&crypto.blind_index(number));
    let entry = ConsentEntry {
        number: crypto.seal(number.as_bytes(), &key),
        source: source.to_string(),
        consented_ms,
        actor: actor.to_string(),
        recorded_ms: now_ms,
    };
    Ok(Op::Put { value: crate::store::encode(&key, &entry)?, key })
}

/// Opens an entry's number.
pub fn number_of(crypto: &Crypto, key: &[u8], sealed: &Sealed) -> Option<String> {
    crypto.open(sealed, key).ok().and_then(|b| String::from_utf8(b).ok())
}

/// Every opt-out recorded for `idx` (all scopes), with their keys.
pub fn optouts_of(store: &Store, idx: &str) -> Result<Vec<(Vec<u8>, OptOutEntry)>, StoreError> {
    store.scan_with_keys::<OptOutEntry>(&optout_prefix(idx))
}

/// One page of the registry.
pub struct OptOutPage {
    /// (number, entry), in key order.
    pub entries: Vec<(String, OptOutEntry)>,
    /// The last key read, when the page is full (more may follow): the next page's start.
    pub next: Option<Vec<u8>>,
}

/// One page of the registry in key order, after the key `after` (exclusive). Only the page
/// is read and opened.
pub fn optout_page(store: &Store, after: Option<&[u8]>, limit: usize) -> Result<OptOutPage, StoreError> {
    let start = match after {
        Some(k) => [k, b"\0"].concat(),
        None => OPTOUT.to_vec(),
    };
    let end = [&OPTOUT[..OPTOUT.len() - 1], &[OPTOUT[OPTOUT.len() - 1] + 1]].concat();
    let crypto = store.crypto().clone();
    let read = store.range::<OptOutEntry>(&start, &end, limit)?;
    let next = (read.len() == limit).then(|| read.last().map(|(k, _)| k.clone())).flatten();
    let entries = read.into_iter().filter_map(|(key, e)| Some((number_of(&crypto, &key, &e.number)?, e))).collect();
    Ok(OptOutPage { entries, next })
}

/// The canonical form of a number stored before every number was normalised.
fn canonical(number: &str) -> String {
    crate::phone::E164::normalize(number)
        .ok()
        .or_else(|| crate::phone::E164::from_carrier(number, 0, None))
        .map(|n| n.as_str().to_string())
        .unwrap_or_else(|| number.to_string())
}

/// Brings entries written before the current layout and normalisation up to date: opt-outs
/// to `x/{idx}\0{scope}`, and opt-outs and consents under the index of their normalised
/// number (a STOP stored as `14155550123` blocks `+14155550123`). Idempotent; returns how
/// many entries moved.
pub async fn migrate(store: &Store) -> Result<usize, StoreError> {
    let crypto = store.crypto().clone();
    let mut ops = Vec::new();
    let mut written = std::collections::HashSet::new();
    for (key, entry) in store.scan_with_keys::<OptOutEntry>(OPTOUT)? {
        let Some(number) = number_of(&crypto, &key, &entry.number) else { continue };
        let number = canonical(&number);
        let new_key = optout_key(&entry.scope, &crypto.blind_index(&number));
        if new_key == key {
            continue;
        }
        // Two old forms of one number: keep one entry, a texted STOP over anything else.
        let keep_existing = written.contains(&new_key)
            || store.get::<OptOutEntry>(&new_key)?.is_some_and(|e| e.source == "keyword" || entry.source != "keyword");
        if !keep_existing {
            let moved = OptOutEntry { number: crypto.seal(number.as_bytes(), &new_key), ..entry };
            ops.push(Op::Put { value: crate::store::encode(&new_key, &moved)?, key: new_key.clone() });
            written.insert(new_key);
        }
        ops.push(Op::Delete { key });
    }
    for (key, entry) in store.scan_with_keys::<ConsentEntry>(CONSENT)? {
        let Some(number) = number_of(&crypto, &key, &entry.number) else { continue };
        let number = canonical(&number);
        let new_key = consent_key(&crypto.blind_index(&number));
        if new_key == key {
            continue;
        }
        if !written.contains(&new_key) && store.get::<ConsentEntry>(&new_key)?.is_none() {
            let moved = ConsentEntry { number: crypto.seal(number.as_bytes(), &new_key), ..entry };
            ops.push(Op::Put { value: crate::store::encode(&new_key, &moved)?, key: new_key.clone() });
            written.insert(new_key);
        }
        ops.push(Op::Delete { key });
    }
    let moved = ops.iter().filter(|op| matches!(op, Op::Delete { .. })).count();
    for chunk in ops.chunks(1000) {
        store.commit(chunk.to_vec()).await?;
    }
    Ok(moved)
}

/// Every opt-out, with its number opened: (number, entry).
pub fn list_optouts(store: &Store) -> Result<Vec<(String, OptOutEntry)>, StoreError> {
    let crypto = store.crypto().clone();
    let mut out = Vec::new();
    for (key, entry) in store.scan_with_keys::<OptOutEntry>(OPTOUT)? {
        if let Some(n) = number_of(&crypto, &key, &entry.number) {
            out.push((n, entry));
        }
    }
    Ok(out)
}
