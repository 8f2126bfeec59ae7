//! In-memory due queues, one per carrier, mirroring the store's `q/` entries.
//!
//! The store is the truth; these queues are an index rebuilt from it at start. An entry here
//! whose message turns out final (cancelled, blocked) is simply skipped by the dispatcher, so
//! removing from the store never needs to reach in here.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::message::now_ms;

/// One waiting message, ordered by due time, then accept order.
///
/// The id is held as a 16-byte ULID rather than its 26-character text: a million queued
/// entries then cost about 40 MB instead of about 100 MB (docs/performance.md).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Not before (ms).
    pub due_ms: u64,
    /// Accept order.
    pub seq: u64,
    /// Message id.
    pub id: ulid::Ulid,
    /// Validity deadline (ms).
    pub expires_ms: u64,
    /// Its account's tag ([`crate::accounts::tag`]), for the account's share of the queue.
    pub account: u16,
}

impl Entry {
    /// The entry for a message id; `None` unless the id is a ULID in its canonical form (every
    /// id smsgate makes is). The ULID decoder also takes lower case and overflowing text, which
    /// would print back as a different id, so the round trip is checked.
    pub fn new(due_ms: u64, seq: u64, id: &str, expires_ms: u64) -> Option<Entry> {
        let ulid = ulid::Ulid::from_string(id).ok()?;
        let mut buf = [0u8; ulid::ULID_LEN];
        (ulid.array_to_str(&mut buf) == id).then_some(Entry { due_ms, seq, id: ulid, expires_ms, account: 0 })
    }

    /// The entry, counted for `account`.
    pub fn of(self, account: &str) -> Entry {
        Entry { account: crate::accounts::tag(account), ..self }
    }
}

/// A queue's entries and how many each account has among them.
#[derive(Default)]
struct Waiting {
    set: BTreeSet<Entry>,
    per_account: HashMap<u16, usize>,
}

impl Waiting {
    fn counted(&mut self, e: &Entry, added: bool) {
        let n = self.per_account.entry(e.account).or_default();
        *n = if added { *n + 1 } else { n.saturating_sub(1) };
    }
}

/// A carrier's queue.
#[derive(Default)]
pub struct CarrierQueue {
    entries: Mutex<Waiting>,
    changed: Notify,
}

impl CarrierQueue {
    /// Adds an entry and wakes the dispatcher.
    pub fn push(&self, entry: Entry) {
        if let Ok(mut w) = self.entries.lock() {
            let counted = entry.clone();
            if w.set.insert(entry) {
                w.counted(&counted, true);
            }
        }
        self.changed.notify_one();
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|w| w.set.len()).unwrap_or(0)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Due time of the first entry.
    pub fn next_due(&self) -> Option<u64> {
        self.entries.lock().ok()?.set.first().map(|e| e.due_ms)
    }

    fn pop_if_due(&self, now: u64) -> Result<Entry, Option<u64>> {
        let Ok(mut w) = self.entries.lock() else { return Err(None) };
        match w.set.first() {
            Some(first) if first.due_ms <= now => {
                let taken = w.set.pop_first().ok_or(None)?;
                w.counted(&taken, false);
                Ok(taken)
            }
            Some(first) => Err(Some(first.due_ms)),
            None => Err(None),
        }
    }

    /// Waits for the first entry that is due and takes it.
    pub async fn pop_due(&self) -> Entry {
        loop {
            let notified = self.changed.notified();
            match self.pop_if_due(now_ms()) {
                Ok(entry) => return entry,
                Err(Some(due)) => {
                    let wait = Duration::from_millis(due.saturating_sub(now_ms()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = notified => {}
                    }
                }
                Err(None) => notified.await,
            }
        }
    }

    /// Removes and returns every entry whose validity ended by `now` (so messages expire on
    /// time even while their carrier is down and nothing is popped).
    pub fn take_expired(&self, now: u64) -> Vec<Entry> {
        let Ok(mut w) = self.entries.lock() else { return Vec::new() };
        let expired: Vec<Entry> = w.set.iter().filter(|x| x.expires_ms <= now).cloned().collect();
        for x in &expired {
            if w.set.remove(x) {
                w.counted(x, false);
            }
        }
        expired
    }

    /// How many of `account`'s (tag) messages wait here.
    pub fn queued_for(&self, account: u16) -> usize {
        self.entries.lock().map(|w| w.per_account.get(&account).copied().unwrap_or(0)).unwrap_or(0)
    }
}

/// All carriers' queues.
#[derive(Default)]
pub struct Queues {
    by_carrier: HashMap<String, Arc<CarrierQueue>>,
}

impl Queues {
    /// One empty queue per carrier name.
    pub fn new<'a>(carriers: impl IntoIterator<Item = &'a str>) -> Queues {
        Queues { by_carrier: carriers.into_iter().map(|c| (c.to_string(), Arc::default())).collect() }
    }

    /// The queue of a carrier.
    pub fn get(&self, carrier: &str) -> Option<&Arc<CarrierQueue>> {
        self.by_carrier.get(carrier)
    }

    /// Every (carrier, queue).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<CarrierQueue>)> {
        self.by_carrier.iter()
    }

    /// Messages waiting across all carriers.
    pub fn total(&self) -> usize {
        self.by_carrier.values().map(|q| q.len()).sum()
    }

    /// An account's messages waiting across all carriers.
    pub fn queued_for(&self, account: &str) -> usize {
        let tag = crate::accounts::tag(account);
        self.by_carrier.values().map(|q| q.queued_for(tag)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(due_ms: u64, seq: u64, n: u128) -> Entry {
        Entry { due_ms, seq, id: ulid::Ulid(n), expires_ms: u64::MAX, account: 0 }
    }

    #[tokio::test]
    async fn pops_in_due_then_accept_order_and_waits_for_due_time() {
        let q = CarrierQueue::default();
        let now = now_ms();
        q.push(entry(now + 150, 1, 3));
        q.push(entry(now, 3, 2));
        q.push(entry(now, 2, 1));
        assert_eq!(q.pop_due().await.id.0, 1);
        assert_eq!(q.pop_due().await.id.0, 2);
        let started = std::time::Instant::now();
        assert_eq!(q.pop_due().await.id.0, 3);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_push_wakes_a_waiting_pop() {
        let q = Arc::new(CarrierQueue::default());
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.pop_due().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.push(entry(now_ms(), 1, 7));
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap().id.0, 7);
    }

    #[test]
    fn only_ulid_ids_make_entries() {
        let id = ulid::Ulid::new();
        assert_eq!(Entry::new(1, 2, &id.to_string(), 3).map(|e| e.id), Some(id));
        for bad in [
            "",
            "old",
            "01M82PWVY7DYV10CMPP5CH6HD",
            "01M82PWVY7DYV10CMPP5CH6HDA!",
            "ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
            "01m82pwvy7dyv10cmpp5ch6hda",
        ] {
            assert!(Entry::new(1, 2, bad, 3).is_none(), "{bad}");
        }
    }

    #[test]
    fn expired_entries_are_taken_out() {
        let q = CarrierQueue::default();
        let old = ulid::Ulid::new();
        q.push(Entry { due_ms: 5, seq: 1, id: old, expires_ms: 10, account: 3 });
        q.push(Entry { due_ms: 5, seq: 2, id: ulid::Ulid::new(), expires_ms: 100, account: 3 });
        assert_eq!(q.queued_for(3), 2);
        let gone = q.take_expired(50);
        assert_eq!(gone.iter().map(|e| e.id).collect::<Vec<_>>(), [old]);
        assert_eq!((q.len(), q.queued_for(3)), (1, 1), "counted per account as it leaves");
    }
}
