//! Accounts: several clinics (or customers) on one gateway. Every API key belongs to exactly
//! one account, and everything a key sees or does stays inside it: its messages, the inbound
//! texts sent to its addresses, its webhooks (its own URL and signing secret), its limits. An
//! account owns its senders (long codes, short codes, alphanumeric ids), and no two accounts
//! own the same one; named pools of them pick a sender per recipient and keep it.
//!
//! Stored under `a/{name}` (JSON; the webhook secret sealed), with an owner index
//! `n/{address}` → name that inbound routing and sender checks read. The account `default`
//! always exists: keys made without `--account`, and everything from before accounts, are
//! its. It may send from any address no other account owns (`any_sender`), so that an
//! upgrade keeps working, until an operator restricts it.

pub mod admin;
pub mod pools;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Sealed};
use crate::store::{Store, StoreError};

/// Account records: `a/{name}`.
pub const ACCOUNT: &[u8] = b"a/";
/// Sender owners: `n/{address}` → account name.
pub const OWNER: &[u8] = b"n/";
/// The account keys and data without one belong to.
pub const DEFAULT: &str = "default";

/// `a/{name}`
pub fn account_key(name: &str) -> Vec<u8> {
    [ACCOUNT, name.as_bytes()].concat()
}

/// `n/{address}`
pub fn owner_key(address: &str) -> Vec<u8> {
    [OWNER, address.as_bytes()].concat()
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its id: `a-z 0-9 - _`, 1 to 32, starting with a letter or digit.
    pub name: String,
    /// How it is named to patients (automatic replies).
    pub display_name: String,
    /// Addresses it sends from and receives at (normalised, see [`normalize_address`]).
    #[serde(default)]
    pub senders: Vec<String>,
    /// Named pools of its senders.
    #[serde(default)]
    pub pools: BTreeMap<String, Vec<String>>,
    /// Whether it may also send from addresses no account owns (the `default` account after
    /// an upgrade).
    #[serde(default)]
    pub any_sender: bool,
    /// Where its webhooks go unless a message or key names another URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Its webhook signing secret (hex), sealed; never shared with another account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Sealed>,
    /// Requests per second across its keys; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    /// Segments per UTC day across its keys; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_segments: Option<u64>,
    /// Its share of the queue, in percent of `queue.max_depth`: at most that many of its
    /// messages wait at once, so one clinic's campaign cannot fill the queue for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_share: Option<u8>,
    /// Its own automatic reply texts (else the configured ones).
    #[serde(default)]
    pub replies: Replies,
    /// Disabled accounts' keys are refused.
    #[serde(default)]
    pub disabled: bool,
    /// Created at (ms).
    #[serde(default)]
    pub created_ms: u64,
}

impl Account {
    /// An account with `senders`, no pools, no limits, no webhook yet, enabled, made now.
    pub fn new(name: &str, display_name: &str, senders: Vec<String>) -> Account {
        Account {
            name: name.to_string(),
            display_name: display_name.to_string(),
            senders,
            pools: BTreeMap::new(),
            any_sender: false,
            webhook_url: None,
            webhook_secret: None,
            rate_per_sec: None,
            daily_segments: None,
            queue_share: None,
            replies: Replies::default(),
            disabled: false,
            created_ms: crate::message::now_ms(),
        }
    }
}

/// An account's own automatic replies; `None` = the configured text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replies {
    /// Reply to an opt-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optout: Option<String>,
    /// Reply to an opt-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optin: Option<String>,
    /// Reply to HELP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// What is shown of an account (never its webhook secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// Its name.
    pub name: String,
    /// How patients see it named.
    pub display_name: String,
    /// Its senders.
    pub senders: Vec<String>,
    /// Its pools.
    pub pools: BTreeMap<String, Vec<String>>,
    /// Whether it may send from addresses no account owns.
    pub any_sender: bool,
    /// Its webhook URL.
    pub webhook_url: Option<String>,
    /// Requests per second across its keys.
    pub rate_per_sec: Option<u32>,
    /// Segments per UTC day across its keys.
    pub daily_segments: Option<u64>,
    /// Its share of the queue (percent of `queue.max_depth`).
    pub queue_share: Option<u8>,
    /// Its own automatic replies.
    pub replies: Replies,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Created (RFC 3339).
    pub created_at: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        AccountView {
            name: a.name.clone(),
            display_name: a.display_name.clone(),
            senders: a.senders.clone(),
            pools: a.pools.clone(),
            any_sender: a.any_sender,
            webhook_url: a.webhook_url.clone(),
            rate_per_sec: a.rate_per_sec,
            daily_segments: a.daily_segments,
            queue_share: a.queue_share,
            replies: a.replies.clone(),
            disabled: a.disabled,
            created_at: crate::message::rfc3339(a.created_ms),
        }
    }
}

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such account.
    #[error("no account named '{0}'")]
    NotFound(String),
    /// The name is taken.
    #[error("an account named '{0}' exists already")]
    Exists(String),
    /// The address belongs to another account.
    #[error("{address} belongs to the account '{owner}'")]
    Taken {
        /// The address.
        address: String,
        /// Its owner.
        owner: String,
    },
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks an account name.
pub fn valid_name(name: &str) -> Result<(), AccountError> {
    let ok = (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "account name '{name}': 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )))
    }
}

/// A sender address in the one form everything compares: `+E.164` normalised, 3–15 digits
/// (short and long codes) as is, or 1–11 letters, digits and spaces (alphanumeric ids).
pub fn normalize_address(s: &str) -> Option<String> {
    let s = s.trim();
    if s.starts_with('+') {
        return crate::phone::E164::normalize(s).ok().map(|n| n.as_str().to_string());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return (3..=15).contains(&s.len()).then(|| s.to_string());
    }
    let alnum = (1..=11).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ');
    alnum.then(|| s.to_string())
}

/// A new webhook signing secret (hex) and its sealed form for `name`'s record.
pub fn new_secret(crypto: &Crypto, name: &str) -> (String, Sealed) {
    let secret = crate::fsutil::hex(&crate::fsutil::random_bytes(32));
    let sealed = crypto.seal(secret.as_bytes(), &secret_context(name));
    (secret, sealed)
}

fn secret_context(name: &str) -> Vec<u8> {
    [account_key(name).as_slice(), b"/webhook-secret"].concat()
}

/// The account's webhook secret, opened.
pub fn open_secret(crypto: &Crypto, account: &Account) -> Option<String> {
    let sealed = account.webhook_secret.as_ref()?;
    crypto.open(sealed, &secret_context(&account.name)).ok().and_then(|b| String::from_utf8(b).ok())
}

/// A small number for an account name, for the per-account counts of the in-memory queues
/// (a queue entry holds two bytes, not a name). `default` is 0; names past 65,535 share 0.
pub fn tag(name: &str) -> u16 {
    static TAGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut tags) = TAGS.lock() else { return 0 };
    if tags.is_empty() {
        tags.push(DEFAULT.to_string());
    }
    if let Some(i) = tags.iter().position(|t| t == name) {
        return i as u16;
    }
    if tags.len() > usize::from(u16::MAX) {
        return 0;
    }
    tags.push(name.to_string());
    (tags.len() - 1) as u16
}

type Limiter = governor::DefaultDirectRateLimiter;

/// The accounts in memory, loaded at start and kept in step with every change.
#[derive(Default)]
pub struct Accounts {
    by_name: RwLock<HashMap<String, Arc<Account>>>,
    owners: RwLock<HashMap<String, String>>,
    limiters: RwLock<HashMap<String, (u32, Arc<Limiter>)>>,
    /// Serialises changes, so that two of them cannot claim one address.
    pub(crate) changing: tokio::sync::Mutex<()>,
}

impl Accounts {
    /// Loads every account, creating `default` first if it is missing (a new store, or one
    /// from before accounts: its keys and data are `default`'s).
    pub async fn open(store: &Store) -> Result<Accounts, AccountError> {
        let accounts = Accounts::load(store)?;
        admin::AccountAdmin { store, accounts: &accounts }.ensure_default().await?;
        Ok(accounts)
    }

    /// Loads every account from the store.
    pub fn load(store: &Store) -> Result<Accounts, StoreError> {
        let accounts = Accounts::default();
        for a in store.scan::<Account>(ACCOUNT)? {
            accounts.put(a);
        }
        Ok(accounts)
    }

    /// Adds or replaces an account (after it was stored).
    pub fn put(&self, account: Account) {
        if let Ok(mut owners) = self.owners.write() {
            owners.retain(|_, owner| *owner != account.name);
            for s in &account.senders {
                owners.insert(s.clone(), account.name.clone());
            }
        }
        if let Ok(mut by_name) = self.by_name.write() {
            by_name.insert(account.name.clone(), Arc::new(account));
        }
    }

    /// One account (shared: every request reads it, nobody copies it).
    pub fn get(&self, name: &str) -> Option<Arc<Account>> {
        self.by_name.read().ok()?.get(name).cloned()
    }

    /// Every account, by name.
    pub fn list(&self) -> Vec<Arc<Account>> {
        let mut v: Vec<Arc<Account>> = self.by_name.read().map(|m| m.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The account that owns `address` (normalised).
    pub fn owner_of(&self, address: &str) -> Option<String> {
        self.owners.read().ok()?.get(address).cloned()
    }

    /// Where an inbound text to `address` goes: its owner; else `default` when that account
    /// takes any address (a single-tenant gateway); else nowhere (unrouted).
    pub fn route_inbound(&self, address: &str) -> Option<String> {
        if let Some(owner) = normalize_address(address).and_then(|a| self.owner_of(&a)) {
            return Some(owner);
        }
        self.get(DEFAULT).filter(|d| d.any_sender && !d.disabled).map(|d| d.name.clone())
    }

    /// Whether `account` may send from `from` (normalised): one of its senders, or, for an
    /// account with `any_sender`, an address no other account owns.
    pub fn may_send_from(&self, account: &Account, from: &str) -> bool {
        match self.owner_of(from) {
            Some(owner) => owner == account.name,
            None => account.any_sender,
        }
    }

    /// Counts one request against the account's rate; `Err(wait)` when over it.
    pub fn check_rate(&self, name: &str) -> Result<(), Duration> {
        let rate = self.by_name.read().ok().and_then(|m| m.get(name).and_then(|a| a.rate_per_sec));
        let Some(rate) = rate.and_then(NonZeroU32::new) else { return Ok(()) };
        let cached = self
            .limiters
            .read()
            .ok()
            .and_then(|l| l.get(name).filter(|(r, _)| *r == rate.get()).map(|(_, l)| l.clone()));
        let limiter = match cached {
            Some(l) => l,
            None => {
                let l = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(rate)));
                if let Ok(mut map) = self.limiters.write() {
                    map.insert(name.to_string(), (rate.get(), l.clone()));
                }
                l
            }
        };
        limiter.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_normalise_to_one_form() {
        assert_eq!(normalize_address("+1 (415) 555-0100").as_deref(), Some("+14155550100"));
        assert_eq!(normalize_address("12345").as_deref(), Some("12345"));
        assert_eq!(normalize_address("Main Clinic").as_deref(), Some("Main Clinic"));
        for bad in ["", "12", "TWELVE_CHARS", "+1415", "pool:x"] {
            assert_eq!(normalize_address(bad), None, "{bad}");
        }
        assert!(valid_name("main-st_clinic2").is_ok());
        for bad in ["", "Main", "-x", "a b", &"x".repeat(33)] {
            assert!(valid_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ownership_routes_inbound_and_limits_senders() {
        let accounts = Accounts::default();
        let a = Account::new("clinic", "Main St Clinic", vec!["+14155550100".into()]);
        let default = Account { name: DEFAULT.into(), senders: vec![], any_sender: true, ..a.clone() };
        accounts.put(a.clone());
        accounts.put(default.clone());
        assert_eq!(
            accounts.route_inbound("14155550100").as_deref(),
            Some(DEFAULT),
            "digits without + are another address"
        );
        assert_eq!(accounts.route_inbound("+14155550100").as_deref(), Some("clinic"));
        assert_eq!(accounts.route_inbound("+14155550199").as_deref(), Some(DEFAULT), "a single-tenant default");
        assert!(accounts.may_send_from(&a, "+14155550100"));
        assert!(!accounts.may_send_from(&a, "+14155550199"), "not its own");
        assert!(!accounts.may_send_from(&default, "+14155550100"), "another account's, even for any_sender");
        assert!(accounts.may_send_from(&default, "+14155550199"));
        // Restricted, the default takes nothing unowned.
        accounts.put(Account { any_sender: false, ..default });
        assert_eq!(accounts.route_inbound("+14155550199"), None);
    }
}
