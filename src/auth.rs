//! API keys: creation, storage (SHA-256 of the token only), and request authentication.
//!
//! A token is `sgk_<key id>_<64 hex chars of randomness>`. The key id lets the server find the
//! record without scanning; the digest of the whole token is compared in constant time. The
//! token itself is shown once, at creation, and never stored.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::fsutil::{hex, random_bytes};
use crate::message::now_ms;
use crate::store::{Op, Store, StoreError, layout};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send and cancel messages.
    Send,
    /// Read message status and inbound messages.
    Read,
    /// Manage the opt-out and consent registries.
    Optouts,
    /// Administrative overrides.
    Admin,
}

impl Scope {
    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim() {
            "send" => Some(Scope::Send),
            "read" => Some(Scope::Read),
            "optouts" => Some(Scope::Optouts),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// Parses a comma-separated list (`send,read`).
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let scope = Scope::parse(part)
                .ok_or_else(|| format!("unknown scope '{}' (use send, read, optouts, admin)", part.trim()))?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        if out.is_empty() {
            return Err("at least one scope is needed".into());
        }
        Ok(out)
    }
}

fn default_account() -> String {
    crate::accounts::DEFAULT.to_string()
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id (appears in tokens, logs and audit entries).
    pub id: String,
    /// The account it belongs to (keys from before accounts: `default`).
    #[serde(default = "default_account")]
    pub account: String,
    /// Human label.
    pub name: String,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// Created at (ms).
    pub created_ms: u64,
    /// Revoked at (ms), if revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// Requests per second this key may make (all endpoints); `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    /// Segments this key may send per UTC day; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_segments: Option<u64>,
    /// Content-rule action for this key instead of the configured one (set by an admin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_action: Option<crate::config::ContentAction>,
    /// Default webhook URL for this key's messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Whether this key's webhooks may carry the message body.
    #[serde(default)]
    pub webhook_include_body: bool,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Key id.
    pub key_id: String,
    /// Its account.
    pub account: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
    /// Its daily segment quota.
    pub daily_segments: Option<u64>,
    /// Its content-rule action override.
    pub content_action: Option<crate::config::ContentAction>,
    /// Its default webhook.
    pub webhook_url: Option<String>,
    /// Whether its webhooks may carry bodies.
    pub webhook_include_body: bool,
}

impl Principal {
    /// Whether the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Why authentication failed (all answered 401, without saying which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("The request has no 'Authorization: Bearer <API key>' header.")]
    Missing,
    /// Unknown, malformed or revoked key.
    #[error("The API key is not valid, or it has been revoked.")]
    Invalid,
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// Makes a new key record of `account` and its token. The token is returned once and not
/// kept.
pub fn generate(account: &str, name: &str, scopes: Vec<Scope>) -> (ApiKey, String) {
    let id = hex(&random_bytes(6));
    let token = format!("sgk_{id}_{}", hex(&random_bytes(32)));
    let key = ApiKey {
        id,
        account: account.to_string(),
        name: name.to_string(),
        scopes,
        hash: hex(&digest(&token)),
        created_ms: now_ms(),
        revoked_ms: None,
        rate_per_sec: None,
        daily_segments: None,
        content_action: None,
        webhook_url: None,
        webhook_include_body: false,
    };
    (key, token)
}

type Limiter = governor::DefaultDirectRateLimiter;

/// The keys in memory, loaded from the store at start and updated on every change.
#[derive(Default)]
pub struct KeyRing {
    keys: RwLock<HashMap<String, ApiKey>>,
    limiters: RwLock<HashMap<String, (u32, Arc<Limiter>)>>,
}

impl KeyRing {
    /// Loads every key from the store.
    pub fn load(store: &Store) -> Result<KeyRing, StoreError> {
        let keys: Vec<ApiKey> = store.scan(layout::API_KEY)?;
        Ok(KeyRing {
            keys: RwLock::new(keys.into_iter().map(|k| (k.id.clone(), k)).collect()),
            limiters: RwLock::default(),
        })
    }

    /// Replaces or adds a key (after it was stored).
    pub fn put(&self, key: ApiKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(key.id.clone(), key);
        }
    }

    /// Checks an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AuthError::Missing)?;
        let id = token.strip_prefix("sgk_").and_then(|rest| rest.split('_').next()).ok_or(AuthError::Invalid)?;
        let keys = self.keys.read().map_err(|_| AuthError::Invalid)?;
        let key = keys.get(id).ok_or(AuthError::Invalid)?;
        let stored = unhex32(&key.hash).ok_or(AuthError::Invalid)?;
        let matches: bool = digest(token).ct_eq(&stored).into();
        if !matches || key.revoked_ms.is_some() {
            return Err(AuthError::Invalid);
        }
        Ok(Principal {
            key_id: key.id.clone(),
            account: key.account.clone(),
            scopes: key.scopes.clone(),
            daily_segments: key.daily_segments,
            content_action: key.content_action,
            webhook_url: key.webhook_url.clone(),
            webhook_include_body: key.webhook_include_body,
        })
    }

    /// Counts one request against the key's rate; `Err(wait)` when over it.
    pub fn check_rate(&self, key_id: &str) -> Result<(), Duration> {
        let rate = self.keys.read().ok().and_then(|k| k.get(key_id).and_then(|k| k.rate_per_sec));
        let Some(rate) = rate.and_then(NonZeroU32::new) else { return Ok(()) };
        let cached = self
            .limiters
            .read()
            .ok()
            .and_then(|l| l.get(key_id).filter(|(r, _)| *r == rate.get()).map(|(_, l)| l.clone()));
        let limiter = match cached {
            Some(l) => l,
            None => {
                // A burst of one second's worth: clients that pace themselves never see a 429.
                let l = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(rate)));
                if let Ok(mut map) = self.limiters.write() {
                    map.insert(key_id.to_string(), (rate.get(), l.clone()));
                }
                l
            }
        };
        limiter.check().map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Every key, newest first.
    pub fn list(&self) -> Vec<ApiKey> {
        let mut v: Vec<ApiKey> = self.keys.read().map(|k| k.values().cloned().collect()).unwrap_or_default();
        v.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(a.id.cmp(&b.id)));
        v
    }

    /// One key.
    pub fn get(&self, id: &str) -> Option<ApiKey> {
        self.keys.read().ok()?.get(id).cloned()
    }
}

/// Key management on an open store (used by the CLI directly and by the admin socket).
pub struct KeyAdmin<'a> {
    /// The store.
    pub store: &'a Store,
    /// The in-memory ring to keep in step.
    pub ring: &'a KeyRing,
}

/// A key management failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyAdminError {
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No key with that id.
    #[error("no API key with id '{0}'")]
    NotFound(String),
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
}

impl KeyAdmin<'_> {
    async fn save(&self, key: &ApiKey) -> Result<(), KeyAdminError> {
        let k = layout::api_key(&key.id);
        let value = crate::store::encode(&k, key)?;
        self.store.commit_one(Op::Put { key: k, value }).await?;
        self.ring.put(key.clone());
        Ok(())
    }

    /// Creates a key of `account` (which the caller checked exists); returns the record and
    /// the token (shown once).
    pub async fn create(
        &self,
        account: &str,
        name: &str,
        scopes: Vec<Scope>,
    ) -> Result<(ApiKey, String), KeyAdminError> {
        if name.trim().is_empty() || name.len() > 100 {
            return Err(KeyAdminError::Invalid("--name must be 1 to 100 characters".into()));
        }
        let (key, token) = generate(account, name.trim(), scopes);
        self.save(&key).await?;
        Ok((key, token))
    }

    /// Sets (or, with 0, clears) a key's request rate and daily segment quota.
    pub async fn set_limits(
        &self,
        id: &str,
        rate_per_sec: Option<u32>,
        daily_segments: Option<u64>,
    ) -> Result<ApiKey, KeyAdminError> {
        let mut key = self.ring.get(id).ok_or_else(|| KeyAdminError::NotFound(id.to_string()))?;
        if let Some(r) = rate_per_sec {
            key.rate_per_sec = (r > 0).then_some(r);
        }
        if let Some(d) = daily_segments {
            key.daily_segments = (d > 0).then_some(d);
        }
        self.save(&key).await?;
        Ok(key)
    }

    /// Sets a key's content-rule action (`reject`, `flag`, `default`) and webhook settings; a
    /// webhook URL must pass `policy` (the receiver address rules).
    pub async fn set_policy(
        &self,
        id: &str,
        content_action: Option<&str>,
        webhook_url: Option<&str>,
        include_body: Option<bool>,
        policy: &crate::webhooks::TargetPolicy,
    ) -> Result<ApiKey, KeyAdminError> {
        let mut key = self.ring.get(id).ok_or_else(|| KeyAdminError::NotFound(id.to_string()))?;
        match content_action {
            None => {}
            Some("default") => key.content_action = None,
            Some("reject") => key.content_action = Some(crate::config::ContentAction::Reject),
            Some("flag") => key.content_action = Some(crate::config::ContentAction::Flag),
            Some(other) => {
                return Err(KeyAdminError::Invalid(format!("content action '{other}': use reject, flag or default")));
            }
        }
        match webhook_url {
            None => {}
            Some("none") => key.webhook_url = None,
            Some(url) => match policy.check(url) {
                Ok(_) => key.webhook_url = Some(url.to_string()),
                Err(e) => return Err(KeyAdminError::Invalid(format!("webhook URL: {e}"))),
            },
        }
        if let Some(b) = include_body {
            key.webhook_include_body = b;
        }
        self.save(&key).await?;
        Ok(key)
    }

    /// Revokes a key; later requests with it get 401.
    pub async fn revoke(&self, id: &str) -> Result<ApiKey, KeyAdminError> {
        let mut key = self.ring.get(id).ok_or_else(|| KeyAdminError::NotFound(id.to_string()))?;
        if key.revoked_ms.is_none() {
            key.revoked_ms = Some(now_ms());
            self.save(&key).await?;
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(key: ApiKey) -> KeyRing {
        let ring = KeyRing::default();
        ring.put(key);
        ring
    }

    #[test]
    fn tokens_authenticate_and_only_the_hash_is_kept() {
        let (key, token) = generate("default", "clinic", vec![Scope::Send]);
        assert!(!key.hash.contains(&token[20..]));
        assert_eq!(key.hash.len(), 64);
        let ring = ring_with(key.clone());
        let p = ring.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(p.key_id, key.id);
        assert!(p.has(Scope::Send) && !p.has(Scope::Read));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let (key, token) = generate("default", "clinic", vec![Scope::Send]);
        let ring = ring_with(key.clone());
        assert_eq!(ring.authenticate(None), Err(AuthError::Missing));
        assert_eq!(ring.authenticate(Some(&token)), Err(AuthError::Missing), "no Bearer prefix");
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push('x');
        for bad in ["Bearer ", "Bearer sgk_", "Bearer sgk_nope_00", "Bearer garbage", &format!("Bearer {tampered}")] {
            assert_eq!(ring.authenticate(Some(bad)), Err(AuthError::Invalid), "{bad}");
        }
        let mut revoked = key;
        revoked.revoked_ms = Some(1);
        ring.put(revoked);
        assert_eq!(ring.authenticate(Some(&format!("Bearer {token}"))), Err(AuthError::Invalid));
    }

    #[test]
    fn scope_lists_parse() {
        assert_eq!(Scope::parse_list("send, read,send").unwrap(), vec![Scope::Send, Scope::Read]);
        assert!(Scope::parse_list("send,root").unwrap_err().contains("root"));
        assert!(Scope::parse_list("").is_err());
    }
}
