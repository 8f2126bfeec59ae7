//! Reads outside the writer: point reads, prefix scans, pages and key ranges, straight from
//! sled on the caller's thread. A value that does not decode is handed to the writer to be set
//! aside and reads as absent.

use super::{RawEntry, Store, StoreError};

impl Store {
    /// Every value under a prefix, decoded (undecodable ones set aside).
    pub fn scan<T: serde::de::DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, StoreError> {
        Ok(self.scan_with_keys(prefix)?.into_iter().map(|(_, v)| v).collect())
    }

    /// Every (key, value) under a prefix, decoded (undecodable ones set aside).
    pub fn scan_with_keys<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(prefix) {
            let (k, v) = item?;
            if let Some(value) = self.decode_or_quarantine(&k, &v) {
                out.push((k.to_vec(), value));
            }
        }
        Ok(out)
    }

    /// Values under a prefix, starting after `after` (exclusive), at most `limit`.
    pub fn page<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let start = match after {
            Some(a) => {
                let mut k = a.to_vec();
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        for item in self.inner.db.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if let Some(value) = self.decode_or_quarantine(&k, &v) {
                out.push((k.to_vec(), value));
            }
        }
        Ok(out)
    }

    /// How many keys start with `prefix` (tests and soak checks).
    pub fn key_count(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut n = 0;
        for item in self.inner.db.scan_prefix(prefix).keys() {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Values with keys in `start..end`, in key order, at most `limit` (undecodable ones set
    /// aside).
    pub fn range<T: serde::de::DeserializeOwned>(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.range(start..end) {
            let (k, v) = item?;
            if out.len() >= limit {
                break;
            }
            if let Some(value) = self.decode_or_quarantine(&k, &v) {
                out.push((k.to_vec(), value));
            }
        }
        Ok(out)
    }

    /// Keys in `start..end` (no values), at most `limit`, newest-last order or, with
    /// `reverse`, from the end backwards: index scans read only keys.
    pub fn keys_in(&self, start: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<Vec<u8>>, StoreError> {
        let range = self.inner.db.range(start..end).keys();
        let iter: Box<dyn Iterator<Item = sled::Result<sled::IVec>>> =
            if reverse { Box::new(range.rev()) } else { Box::new(range) };
        let mut out = Vec::new();
        for k in iter.take(limit) {
            out.push(k?.to_vec());
        }
        Ok(out)
    }

    /// Raw keys and values in `start..end`, in key order, at most `limit`.
    pub fn entries_in(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<RawEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.db.range(start..end).take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The raw bytes under `key`.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.db.get(key)?.map(|v| v.to_vec()))
    }

    /// A raw u64 counter (0 when absent).
    pub fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self.inner.db.get(key)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    /// One record (absent, or undecodable and set aside: `None`).
    pub fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.inner.db.get(key)? {
            None => Ok(None),
            Some(v) => Ok(self.decode_or_quarantine(key, &v)),
        }
    }
}
