//! Message search within one account, newest first: by recipient through the blind index
//! (`g/`), otherwise through the account's index (`h/`); status, sender, client reference and
//! time filters applied to the records the index yields. Used by `GET /v1/messages` and
//! `smsgate messages export`.

use crate::message::{Message, Status};
use crate::store::{Store, StoreError, index};

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The account searched.
    pub account: String,
    /// Only this status.
    pub status: Option<Status>,
    /// Only to this number (E.164).
    pub to: Option<String>,
    /// Only from this sender (normalised address).
    pub from: Option<String>,
    /// Only with this client reference.
    pub client_ref: Option<String>,
    /// Created at or after (ms).
    pub since_ms: Option<u64>,
    /// Created at or before (ms).
    pub until_ms: Option<u64>,
}

/// One page of results.
#[derive(Debug, Default)]
pub struct Page {
    /// Matching messages, newest first, content opened.
    pub messages: Vec<Message>,
    /// Where the next page starts (the id of the last message looked at), when the search
    /// has not reached its end.
    pub next: Option<String>,
}

/// Most index entries one page looks at, so that a rare status in a large account answers in
/// bounded time; the page then holds what it found and `next` continues.
const BUDGET: usize = 5000;

/// Messages of `q.account` matching `q`, newer than nothing and older than `before` (an id
/// from a previous page's `next`), at most `limit`.
pub fn messages(store: &Store, q: &Query, before: Option<&str>, limit: usize) -> Result<Page, StoreError> {
    let prefix = match &q.to {
        Some(to) => index::by_recipient_prefix(&q.account, &store.crypto().blind_index(to)),
        None => index::by_account_prefix(&q.account),
    };
    let at = |id: &str| [prefix.as_slice(), id.as_bytes()].concat();
    let low = q.since_ms.map(|ms| at(&index::id_bound(ms, false))).unwrap_or_else(|| prefix.clone());
    let mut high = match (before, q.until_ms) {
        (Some(id), _) => at(id),
        (None, Some(ms)) => [at(&index::id_bound(ms, true)).as_slice(), &[0]].concat(),
        (None, None) => [prefix.as_slice(), &[0xff]].concat(),
    };
    let mut page = Page::default();
    let mut looked = 0;
    while page.messages.len() < limit && looked < BUDGET {
        let keys = store.keys_in(&low, &high, 200.min(BUDGET - looked), true)?;
        let Some(oldest) = keys.last() else { return Ok(page) };
        high = oldest.clone();
        let exhausted = keys.len() < 200.min(BUDGET - looked);
        for key in keys {
            looked += 1;
            let Some(id) = index::id_of(&key) else { continue };
            page.next = Some(id.to_string());
            if let Some(m) = store.message(id)?
                && matches(&m, q)
            {
                page.messages.push(m);
                if page.messages.len() == limit {
                    break;
                }
            }
        }
        if exhausted && page.messages.len() < limit {
            page.next = None;
            return Ok(page);
        }
    }
    Ok(page)
}

fn matches(m: &Message, q: &Query) -> bool {
    m.account == q.account
        && q.status.is_none_or(|s| m.status == s)
        && q.to.as_ref().is_none_or(|t| *t == m.content.to)
        && q.from.as_ref().is_none_or(|f| Some(f) == m.content.from.as_ref())
        && q.client_ref.as_ref().is_none_or(|c| Some(c) == m.client_ref.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Crypto;
    use crate::store::{Op, StoreOptions};

    async fn add(store: &Store, account: &str, to: &str, client_ref: &str) -> String {
        let req = crate::api::send::parse(
            &serde_json::json!({"to": to, "body": "x", "client_ref": client_ref}),
            crate::api::send::Limits { max_body_chars: 100 },
        )
        .unwrap();
        let msg = crate::api::send::build_message(req, ("k", account), 1, vec!["c".into()], 60);
        let idx = store.crypto().blind_index(&msg.content.to);
        let mut ops = vec![Op::Insert(Box::new(msg.clone()))];
        ops.extend(index::message_ops(&msg, &idx));
        store.commit(ops).await.unwrap();
        // Ids made in one millisecond are not ordered; the index is by id.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        msg.id
    }

    #[tokio::test]
    async fn finds_only_the_accounts_own_newest_first_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let crypto = std::sync::Arc::new(Crypto::parse(&Crypto::generate_file_text()).unwrap());
        let store = Store::open(dir.path(), &StoreOptions::default(), crypto).unwrap();
        let (x, y) = ("+14155554001", "+14155554002");
        let mut mine = Vec::new();
        for i in 0..5 {
            mine.push(add(&store, "clinic", if i % 2 == 0 { x } else { y }, &format!("r{i}")).await);
            add(&store, "pharmacy", x, "theirs").await;
        }
        let q = Query { account: "clinic".into(), ..Query::default() };
        let ids = |p: &Page| p.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        let first = messages(&store, &q, None, 3).unwrap();
        assert_eq!(ids(&first), [mine[4].clone(), mine[3].clone(), mine[2].clone()]);
        let second = messages(&store, &q, first.next.as_deref(), 3).unwrap();
        assert_eq!((ids(&second), second.next), (vec![mine[1].clone(), mine[0].clone()], None));
        let to_x = Query { to: Some(x.into()), ..q.clone() };
        assert_eq!(
            ids(&messages(&store, &to_x, None, 10).unwrap()),
            [mine[4].clone(), mine[2].clone(), mine[0].clone()]
        );
        let by_ref = Query { client_ref: Some("r3".into()), ..q.clone() };
        assert_eq!(ids(&messages(&store, &by_ref, None, 10).unwrap()), [mine[3].clone()]);
        let created = |id: &str| index::id_time_ms(id).unwrap();
        let window = Query { since_ms: Some(created(&mine[1])), until_ms: Some(created(&mine[3])), ..q.clone() };
        assert_eq!(
            ids(&messages(&store, &window, None, 10).unwrap()),
            [mine[3].clone(), mine[2].clone(), mine[1].clone()]
        );
        let delivered = Query { status: Some(Status::Delivered), ..q };
        assert!(messages(&store, &delivered, None, 10).unwrap().messages.is_empty());
    }
}
