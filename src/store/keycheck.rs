//! Check values that tie a store to its keys, so that a wrong key file is refused before
//! anything is read or written with it, never half-used: with another `index` key every
//! opt-out lookup would miss (a patient who texted STOP would be texted again), and with
//! other data keys every stored record would fail to open.
//!
//! * `s/keycheck/index`: [`Crypto::index_check`], a value only that index key produces.
//! * `s/keycheck/data/{id}`: a constant sealed with data key `id`; it opens only with the same
//!   key.
//!
//! A store made before these existed is checked on a sample instead (an opt-out entry, whose
//! number must open and hash to its own key, or else a message record) and then gets them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{StoreError, decode, layout};
use crate::crypto::{Crypto, Sealed};
use crate::message::Message;

/// The opt-out registry's prefix (`compliance::registry`), read here only for the sample.
const OPTOUT: &[u8] = b"x/";

/// What the sample needs of an opt-out entry: its sealed number.
#[derive(Deserialize)]
struct OptOutNumber {
    number: Sealed,
}

/// The blind index in an opt-out key: `x/{idx}\0{scope}`, or the older `x/{scope}\0{idx}`.
fn idx_of(key: &[u8]) -> &[u8] {
    let rest = &key[OPTOUT.len().min(key.len())..];
    match rest.get(64) {
        Some(0) => &rest[..64],
        _ => rest.rsplit(|&b| b == 0).next().unwrap_or_default(),
    }
}

const INDEX: &[u8] = b"s/keycheck/index";
const DATA: &[u8] = b"s/keycheck/data/";
const PLAINTEXT: &[u8] = b"smsgate data key check";

/// One record: (key, value).
pub type Record = (Vec<u8>, Vec<u8>);

/// Where the records are: the live store or a backup being restored.
pub trait Records {
    /// The value under `key`.
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The first record whose key starts with `prefix`.
    fn first(&self, prefix: &[u8]) -> Result<Option<Record>, StoreError>;
    /// Every record whose key starts with `prefix`.
    fn all(&self, prefix: &[u8]) -> Result<Vec<Record>, StoreError>;
}

impl Records for sled::Db {
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(key)?.map(|v| v.to_vec()))
    }

    fn first(&self, prefix: &[u8]) -> Result<Option<Record>, StoreError> {
        Ok(self.scan_prefix(prefix).next().transpose()?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn all(&self, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        self.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)).collect()
    }
}

impl Records for BTreeMap<Vec<u8>, Vec<u8>> {
    fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(key).cloned())
    }

    fn first(&self, prefix: &[u8]) -> Result<Option<Record>, StoreError> {
        Ok(self
            .range(prefix.to_vec()..)
            .next()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn all(&self, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn data_key(id: &str) -> Vec<u8> {
    [DATA, id.as_bytes()].concat()
}

/// What [`verify`] found: check values to write, and keys the store knows that the file lacks.
#[derive(Debug, Default)]
pub struct Verified {
    /// (key, value) pairs to store.
    pub to_write: Vec<Record>,
    /// Data key ids with a check value but missing from the key file.
    pub missing: Vec<String>,
}

fn wrong(reason: String) -> StoreError {
    StoreError::WrongKeys(reason)
}

/// Checks `crypto` against the check values in `records` (or, for a store without them, a
/// sample record); refuses keys that are not the ones the store was made with.
pub fn verify(records: &dyn Records, crypto: &Crypto) -> Result<Verified, StoreError> {
    let mut found = Verified::default();
    match records.value(INDEX)? {
        Some(stored) if stored == crypto.index_check().as_bytes() => {}
        Some(_) => {
            return Err(wrong(
                "the key file's 'index' key is not the one this store was built with: every opt-out and consent \
                 lookup would miss. Use the key file this data belongs to"
                    .into(),
            ));
        }
        None => {
            check_sample(records, crypto)?;
            found.to_write.push((INDEX.to_vec(), crypto.index_check().into_bytes()));
        }
    }
    let ids = crypto.data_key_ids();
    for id in &ids {
        match records.value(&data_key(id))? {
            Some(v) => {
                let sealed: Sealed = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt { key: format!("s/keycheck/data/{id}"), reason: e.to_string() })?;
                if crypto.open(&sealed, &data_key(id)).ok().as_deref() != Some(PLAINTEXT) {
                    return Err(wrong(format!(
                        "data key '{id}' in the key file is not the key '{id}' this store's data was sealed with. \
                         Use the key file this data belongs to"
                    )));
                }
            }
            None => {
                let sealed = crypto.seal_with(id, PLAINTEXT, &data_key(id));
                let value = serde_json::to_vec(&sealed).map_err(|e| StoreError::Io(e.to_string()))?;
                found.to_write.push((data_key(id), value));
            }
        }
    }
    for (key, _) in records.all(DATA)? {
        let id = String::from_utf8_lossy(&key[DATA.len()..]).into_owned();
        if !ids.contains(&id) {
            found.missing.push(id);
        }
    }
    Ok(found)
}

/// For a store without check values: an opt-out entry must open and hash to its own key; a
/// message record must open.
fn check_sample(records: &dyn Records, crypto: &Crypto) -> Result<(), StoreError> {
    if let Some((key, value)) = records.first(OPTOUT)? {
        let entry: OptOutNumber = decode(&key, &value)?;
        let number = crypto.open(&entry.number, &key).map_err(|_| {
            wrong("the key file's data keys do not open this store's opt-out registry. Use the key file this data belongs to".into())
        })?;
        let idx = crypto.blind_index(&String::from_utf8_lossy(&number));
        if idx_of(&key) != idx.as_bytes() {
            return Err(wrong(
                "the key file's 'index' key is not the one this store was built with: every opt-out lookup would miss. \
                 Use the key file this data belongs to"
                    .into(),
            ));
        }
        return Ok(());
    }
    if let Some((key, value)) = records.first(layout::MESSAGE)? {
        let msg: Message = decode(&key, &value)?;
        if let Some(sealed) = &msg.sealed
            && crypto.open(sealed, &key).is_err()
        {
            return Err(wrong(
                "the key file's data keys do not open this store's messages. Use the key file this data belongs to"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Crypto {
        Crypto::parse(&Crypto::generate_file_text()).unwrap()
    }

    fn apply(records: &mut BTreeMap<Vec<u8>, Vec<u8>>, v: Verified) {
        records.extend(v.to_write);
    }

    #[test]
    fn the_same_keys_pass_and_other_keys_are_refused() {
        let good = keys();
        let mut records = BTreeMap::new();
        let first = verify(&records, &good).unwrap();
        assert_eq!(first.to_write.len(), 2, "index and k1");
        apply(&mut records, first);
        assert!(verify(&records, &good).unwrap().to_write.is_empty());
        let e = verify(&records, &keys()).unwrap_err().to_string();
        assert!(e.contains("'index' key"), "{e}");
    }

    #[test]
    fn a_replaced_data_key_is_refused_and_a_new_one_recorded() {
        let text = Crypto::generate_file_text();
        let good = Crypto::parse(&text).unwrap();
        let mut records = BTreeMap::new();
        let v = verify(&records, &good).unwrap();
        apply(&mut records, v);
        let index = text.lines().find(|l| l.starts_with("index")).unwrap();
        let other_k1 = Crypto::parse(&format!("{index}\nk1 {}\n", "ab".repeat(32))).unwrap();
        let e = verify(&records, &other_k1).unwrap_err().to_string();
        assert!(e.contains("data key 'k1'"), "{e}");
        let rotated = Crypto::parse(&format!("{text}{}\n", good.next_key_line())).unwrap();
        let v = verify(&records, &rotated).unwrap();
        assert_eq!(v.to_write.len(), 1, "the new key gets its check value");
        let without_k1 = Crypto::parse(&format!("{index}\nk9 {}\n", "cd".repeat(32))).unwrap();
        assert_eq!(verify(&records, &without_k1).unwrap().missing, ["k1"]);
    }

    #[test]
    fn a_store_without_check_values_is_checked_on_an_opt_out() {
        let text = Crypto::generate_file_text();
        let good = Crypto::parse(&text).unwrap();
        let mut records = BTreeMap::new();
        let (op, _) = crate::compliance::registry::optout_op(
            &good,
            "+14155550123",
            "*",
            "api",
            None,
            None,
            ("t", None),
            1,
            false,
        )
        .unwrap();
        let crate::store::Op::Put { key, value } = op else { panic!("a put") };
        records.insert(key, value);
        assert!(verify(&records, &good).is_ok());
        let e = verify(&records, &keys()).unwrap_err().to_string();
        assert!(e.contains("do not open"), "{e}");
        // The same data key with another index key: the number opens but hashes elsewhere.
        let k1 = text.lines().find(|l| l.starts_with("k1")).unwrap();
        let other_index = Crypto::parse(&format!("index {}\n{k1}\n", "ef".repeat(32))).unwrap();
        let e = verify(&records, &other_index).unwrap_err().to_string();
        assert!(e.contains("'index' key"), "{e}");
    }
}
