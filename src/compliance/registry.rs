//! The opt-out and consent registries, keyed by the blind index of the number (so the store
//! holds no number in clear); each entry keeps the number sealed, for listing and export, and
//! who/when/how it was recorded.

use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Sealed};
use crate::store::{Op, Store, StoreError};

/// Scope of a global opt-out.
pub const GLOBAL: &str = "*";

/// Opt-outs: `x/{scope}\0{blind index}`.
pub const OPTOUT: &[u8] = b"x/";
/// Consents: `y/{blind index}`.
pub const CONSENT: &[u8] = b"y/";
/// Frequency counters: `f/{blind index}\0{category}\0{YYYYMMDD}` (u64 BE).
pub const FREQUENCY: &[u8] = b"f/";

/// `x/{scope}\0{idx}`
pub fn optout_key(scope: &str, idx: &str) -> Vec<u8> {
    [OPTOUT, scope.as_bytes(), b"\0", idx.as_bytes()].concat()
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

/// The scopes to look at for a send from `sender` under the configured mode: the global one,
/// and the sender's own in `sender` mode.
pub fn scopes_for(per_sender: bool, sender: Option<&str>) -> Vec<String> {
    let mut v = vec![GLOBAL.to_string()];
    if per_sender && let Some(s) = sender {
        v.push(s.to_string());
    }
    v
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
    actor: &str,
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
