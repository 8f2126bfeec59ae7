//! Account changes, shared by the CLI (`smsgate accounts …`, directly or through the admin
//! socket) and the admin API (`/v1/admin/accounts…`): one code path, every change audited by
//! its caller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Account, AccountError, Accounts, DEFAULT, Replies, account_key, new_secret, normalize_address, owner_key};
use crate::store::{Op, Store};

/// A new account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// Its name.
    pub name: String,
    /// How patients see it named (default: the name).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Its senders.
    #[serde(default)]
    pub senders: Vec<String>,
    /// Its pools: name → senders (each must be one of its senders).
    #[serde(default)]
    pub pools: BTreeMap<String, Vec<String>>,
    /// Its webhook URL.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// Changes to an account; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountChanges {
    /// New display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Senders to add.
    #[serde(default)]
    pub add_senders: Vec<String>,
    /// Senders to remove (also from its pools).
    #[serde(default)]
    pub remove_senders: Vec<String>,
    /// Pools to set (replacing a pool of the same name).
    #[serde(default)]
    pub pools: BTreeMap<String, Vec<String>>,
    /// Pools to remove.
    #[serde(default)]
    pub remove_pools: Vec<String>,
    /// Webhook URL (`""` removes it).
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Make a new webhook signing secret.
    #[serde(default)]
    pub rotate_webhook_secret: bool,
    /// Requests per second (0 = unlimited).
    #[serde(default)]
    pub rate_per_sec: Option<u32>,
    /// Segments per UTC day (0 = unlimited).
    #[serde(default)]
    pub daily_segments: Option<u64>,
    /// Its share of the queue in percent of `queue.max_depth` (0 = unlimited).
    #[serde(default)]
    pub queue_share: Option<u8>,
    /// Allow sending from any address no account owns (`true`) or only its own (`false`).
    #[serde(default)]
    pub any_sender: Option<bool>,
    /// Its own automatic replies (each `Some("")` returns to the configured text).
    #[serde(default)]
    pub replies: Option<Replies>,
    /// Enable (`false`) or disable (`true`).
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// Account management on an open store.
pub struct AccountAdmin<'a> {
    /// The store.
    pub store: &'a Store,
    /// The registry to keep in step.
    pub accounts: &'a Accounts,
}

fn addresses(list: &[String]) -> Result<Vec<String>, AccountError> {
    let mut out: Vec<String> = Vec::new();
    for s in list {
        let a = normalize_address(s).ok_or_else(|| {
            AccountError::Invalid(format!(
                "sender '{s}': +E.164, 3 to 15 digits (a short or long code), or 1 to 11 letters, digits and spaces"
            ))
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

fn check_pools(account: &Account) -> Result<(), AccountError> {
    for (pool, members) in &account.pools {
        if !(1..=32).contains(&pool.len()) || !pool.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AccountError::Invalid(format!("pool name '{pool}': 1 to 32 of letters, digits, '-', '_'")));
        }
        if members.is_empty() {
            return Err(AccountError::Invalid(format!("pool '{pool}' has no senders")));
        }
        if let Some(m) = members.iter().find(|m| !account.senders.contains(m)) {
            return Err(AccountError::Invalid(format!("pool '{pool}': {m} is not one of the account's senders")));
        }
    }
    Ok(())
}

fn check_url(url: &str, policy: &crate::webhooks::TargetPolicy) -> Result<(), AccountError> {
    policy.check(url).map(|_| ()).map_err(|e| AccountError::Invalid(format!("webhook URL is refused: {e}")))
}

impl AccountAdmin<'_> {
    /// Stores `account` and its owner index (`claimed` addresses added, `released` removed).
    async fn save(&self, account: &Account, claimed: &[String], released: &[String]) -> Result<(), AccountError> {
        for a in claimed {
            if let Some(owner) = self.accounts.owner_of(a).filter(|o| *o != account.name) {
                return Err(AccountError::Taken { address: a.clone(), owner });
            }
        }
        check_pools(account)?;
        let key = account_key(&account.name);
        let mut ops = vec![Op::Put { value: crate::store::encode(&key, account)?, key }];
        for a in claimed {
            ops.push(Op::Put { key: owner_key(a), value: account.name.as_bytes().to_vec() });
        }
        for a in released {
            ops.push(Op::Delete { key: owner_key(a) });
        }
        self.store.commit(ops).await?;
        self.accounts.put(account.clone());
        Ok(())
    }

    /// Creates an account; returns it and its webhook signing secret (shown once).
    pub async fn create(
        &self,
        new: NewAccount,
        policy: &crate::webhooks::TargetPolicy,
    ) -> Result<(Account, String), AccountError> {
        super::valid_name(&new.name)?;
        let _changing = self.accounts.changing.lock().await;
        if self.accounts.get(&new.name).is_some() {
            return Err(AccountError::Exists(new.name));
        }
        if let Some(url) = &new.webhook_url {
            check_url(url, policy)?;
        }
        let senders = addresses(&new.senders)?;
        let mut pools = BTreeMap::new();
        for (pool, members) in &new.pools {
            pools.insert(pool.clone(), addresses(members)?);
        }
        let crypto = self.store.crypto();
        let (secret, sealed) = new_secret(&crypto, &new.name);
        let display_name = new.display_name.unwrap_or_else(|| new.name.clone());
        valid_display_name(&display_name)?;
        let account = Account {
            pools,
            webhook_url: new.webhook_url,
            webhook_secret: Some(sealed),
            ..Account::new(&new.name, &display_name, senders.clone())
        };
        self.save(&account, &senders, &[]).await?;
        Ok((account, secret))
    }

    /// Applies `changes`; returns the account and, when rotated, its new webhook secret.
    pub async fn update(
        &self,
        name: &str,
        changes: AccountChanges,
        policy: &crate::webhooks::TargetPolicy,
    ) -> Result<(Account, Option<String>), AccountError> {
        let _changing = self.accounts.changing.lock().await;
        let current = self.accounts.get(name).ok_or_else(|| AccountError::NotFound(name.to_string()))?;
        let mut account = Account::clone(&current);
        if let Some(d) = changes.display_name {
            valid_display_name(&d)?;
            account.display_name = d;
        }
        let added: Vec<String> =
            addresses(&changes.add_senders)?.into_iter().filter(|a| !account.senders.contains(a)).collect();
        let removed: Vec<String> =
            addresses(&changes.remove_senders)?.into_iter().filter(|a| account.senders.contains(a)).collect();
        account.senders.extend(added.iter().cloned());
        account.senders.retain(|s| !removed.contains(s));
        for members in account.pools.values_mut() {
            members.retain(|s| !removed.contains(s));
        }
        account.pools.retain(|_, members| !members.is_empty());
        for (pool, members) in &changes.pools {
            account.pools.insert(pool.clone(), addresses(members)?);
        }
        for pool in &changes.remove_pools {
            account.pools.remove(pool);
        }
        if let Some(url) = changes.webhook_url {
            if !url.is_empty() {
                check_url(&url, policy)?;
            }
            account.webhook_url = (!url.is_empty()).then_some(url);
        }
        let mut secret = None;
        if changes.rotate_webhook_secret || account.webhook_secret.is_none() {
            let (s, sealed) = new_secret(&self.store.crypto(), &account.name);
            account.webhook_secret = Some(sealed);
            secret = Some(s);
        }
        if let Some(r) = changes.rate_per_sec {
            account.rate_per_sec = (r > 0).then_some(r);
        }
        if let Some(d) = changes.daily_segments {
            account.daily_segments = (d > 0).then_some(d);
        }
        if let Some(share) = changes.queue_share {
            if share > 100 {
                return Err(AccountError::Invalid("queue share: a percentage, 0 (unlimited) to 100".into()));
            }
            account.queue_share = (share > 0).then_some(share);
        }
        if let Some(any) = changes.any_sender {
            account.any_sender = any;
        }
        if let Some(r) = changes.replies {
            let keep = |new: Option<String>, old: Option<String>| match new {
                Some(t) if t.is_empty() => None,
                Some(t) => Some(t),
                None => old,
            };
            account.replies = Replies {
                optout: keep(r.optout, account.replies.optout.take()),
                optin: keep(r.optin, account.replies.optin.take()),
                help: keep(r.help, account.replies.help.take()),
            };
        }
        if let Some(d) = changes.disabled {
            if d && account.name == DEFAULT {
                return Err(AccountError::Invalid("the default account cannot be disabled".into()));
            }
            account.disabled = d;
        }
        self.save(&account, &added, &removed).await?;
        Ok((account, secret))
    }

    /// Makes sure the account `default` exists (keys without an account, and everything from
    /// before accounts, are its): created taking any address no account owns.
    pub async fn ensure_default(&self) -> Result<(), AccountError> {
        let _changing = self.accounts.changing.lock().await;
        if self.accounts.get(DEFAULT).is_some() {
            return Ok(());
        }
        let (_, sealed) = new_secret(&self.store.crypto(), DEFAULT);
        let account =
            Account { any_sender: true, webhook_secret: Some(sealed), ..Account::new(DEFAULT, DEFAULT, Vec::new()) };
        self.save(&account, &[], &[]).await
    }
}

fn valid_display_name(d: &str) -> Result<(), AccountError> {
    if (1..=60).contains(&d.chars().count()) && !d.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(AccountError::Invalid("display name: 1 to 60 characters, no control characters".into()))
    }
}
