//! Sender pools: a pool picks one of its senders for each recipient and keeps it (a patient
//! always sees the same number from a clinic), spreads new recipients over the senders
//! evenly, and passes over senders whose carrier route is down.
//!
//! `p/{account}\0{pool}\0{blind index}` holds the sender a recipient has; `p/{account}\0{pool}
//! \0#{sender}` counts the recipients given to each sender. Both change in the commit of the
//! message that made the choice. Two first messages to one recipient accepted at the same
//! instant may pick two senders; the later one sticks.

use super::Account;
use crate::store::{Op, QuotaGuard, Store, StoreError};

/// Pool assignments.
pub const STICKY: &[u8] = b"p/";

fn prefix(account: &str, pool: &str) -> Vec<u8> {
    [STICKY, account.as_bytes(), b"\0", pool.as_bytes(), b"\0"].concat()
}

/// Where a recipient's sender is kept.
pub fn sticky_key(account: &str, pool: &str, idx: &str) -> Vec<u8> {
    [prefix(account, pool).as_slice(), idx.as_bytes()].concat()
}

fn count_key(account: &str, pool: &str, sender: &str) -> Vec<u8> {
    [prefix(account, pool).as_slice(), b"#", sender.as_bytes()].concat()
}

/// A sender for one message, and what its commit must also record.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The sender.
    pub sender: String,
    /// The assignment to store (none when the recipient keeps its sender).
    pub ops: Vec<Op>,
    /// The count to add to (none when the recipient keeps its sender).
    pub count: Option<QuotaGuard>,
}

/// Picks `pool`'s sender for the recipient with blind index `idx`: the one it has, if that is
/// still in the pool and `usable`; else the usable sender with the fewest recipients (all
/// senders if none is usable, so that the message waits for its route instead of failing).
pub fn pick(
    store: &Store,
    account: &Account,
    pool: &str,
    idx: &str,
    usable: impl Fn(&str) -> bool,
) -> Result<Option<Pick>, StoreError> {
    let Some(members) = account.pools.get(pool).filter(|m| !m.is_empty()) else { return Ok(None) };
    let key = sticky_key(&account.name, pool, idx);
    let current = store.get_raw(&key)?.and_then(|v| String::from_utf8(v).ok());
    if let Some(s) = current.filter(|s| members.contains(s) && usable(s)) {
        return Ok(Some(Pick { sender: s, ops: Vec::new(), count: None }));
    }
    let usable_members: Vec<&String> = members.iter().filter(|m| usable(m)).collect();
    let candidates: Vec<&String> = if usable_members.is_empty() { members.iter().collect() } else { usable_members };
    let mut best: Option<(&String, u64)> = None;
    for m in candidates {
        let n = store.counter(&count_key(&account.name, pool, m))?;
        if best.is_none_or(|(_, b)| n < b) {
            best = Some((m, n));
        }
    }
    let Some((sender, _)) = best else { return Ok(None) };
    let count = QuotaGuard {
        key: count_key(&account.name, pool, sender),
        also: Vec::new(),
        amount: 1,
        adds: true,
        limit: u64::MAX,
        label: format!("pool {pool}"),
    };
    Ok(Some(Pick {
        sender: sender.clone(),
        ops: vec![Op::Put { key, value: sender.as_bytes().to_vec() }],
        count: Some(count),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Crypto;
    use crate::store::{Guard, StoreOptions};

    fn clinic() -> Account {
        let senders: Vec<String> = ["+14155550301", "+14155550302", "+14155550303"].map(String::from).into();
        Account {
            pools: [("reminders".to_string(), senders.clone())].into(),
            ..Account::new("clinic", "Clinic", senders)
        }
    }

    /// Picks for `idx` and commits the choice, as an accept does.
    async fn assign(store: &Store, account: &Account, idx: &str, usable: impl Fn(&str) -> bool) -> String {
        let pick = pick(store, account, "reminders", idx, usable).unwrap().unwrap();
        let guard = Guard { idempotency: None, quotas: pick.count.into_iter().collect() };
        store.commit_guarded(pick.ops, Some(guard)).await.unwrap();
        pick.sender
    }

    #[tokio::test]
    async fn recipients_keep_their_sender_and_down_routes_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let crypto = std::sync::Arc::new(Crypto::parse(&Crypto::generate_file_text()).unwrap());
        let store = Store::open(dir.path(), &StoreOptions::default(), crypto).unwrap();
        let account = clinic();
        let all = |_: &str| true;
        let mut first = Vec::new();
        for i in 0..9 {
            first.push(assign(&store, &account, &format!("idx{i}"), all).await);
        }
        for s in &account.senders {
            assert_eq!(first.iter().filter(|f| *f == s).count(), 3, "new recipients spread evenly: {first:?}");
        }
        for (i, sender) in first.iter().enumerate() {
            assert_eq!(&assign(&store, &account, &format!("idx{i}"), all).await, sender, "sticky");
        }
        // The first sender's route is down: its recipients move, new ones avoid it.
        let down = account.senders[0].clone();
        let up = |s: &str| s != down;
        let moved = assign(&store, &account, "idx0", up).await;
        assert_ne!(moved, down);
        assert_eq!(assign(&store, &account, "idx0", all).await, moved, "and stay where they moved");
        assert_ne!(assign(&store, &account, "new", up).await, down);
        // With every route down, the message still gets a sender (it waits for its route).
        assert!(account.senders.contains(&assign(&store, &account, "idx1", |_| false).await));
        assert!(pick(&store, &account, "other", "idx1", all).unwrap().is_none(), "no such pool");
    }
}
