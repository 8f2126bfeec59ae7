//! Encryption at rest: AES-256-GCM (ring) for bodies, phone numbers and inbound texts, and a
//! keyed HMAC-SHA256 blind index for looking numbers up without storing them in clear.
//!
//! Keys never live in the store: they come from a key file or an environment variable, one
//! per line, `<id> <64 hex chars>`; the last data key seals new data, older ones still open
//! what they sealed (rotation). The line `index <64 hex>` is the blind-index key; it must not
//! change without re-indexing (the opt-out registry is keyed by it).
//!
//! Every sealed value carries its key id and is bound (AEAD associated data) to the record it
//! belongs to, so a ciphertext moved to another record does not open.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::fsutil::{hex, random_bytes};

/// Key loading and sealing failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    /// The key source is missing or malformed.
    #[error("data keys: {0}")]
    Keys(String),
    /// A value was sealed with a key we do not have.
    #[error("no data key with id '{0}' (was it removed from the key file?)")]
    UnknownKey(String),
    /// Authentication failed: wrong key, wrong record, or tampering.
    #[error("sealed value does not open (wrong key or tampered)")]
    Open,
}

/// A sealed value as stored: key id, nonce, ciphertext with tag (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Key id.
    pub k: String,
    /// 96-bit nonce.
    pub n: String,
    /// Ciphertext and GCM tag.
    pub c: String,
}

/// The loaded keys.
pub struct Crypto {
    current: String,
    keys: HashMap<String, LessSafeKey>,
    index: hmac::Key,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crypto(current={}, keys={})", self.current, self.keys.len())
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

impl Crypto {
    /// Parses key text (`id hex` per line; `;` also separates, for environment variables).
    pub fn parse(text: &str) -> Result<Crypto, CryptoError> {
        let mut keys = HashMap::new();
        let mut current = None;
        let mut index = None;
        for (n, line) in text.split(['\n', ';']).enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(material), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(CryptoError::Keys(format!("entry {}: expected '<id> <64 hex>'", n + 1)));
            };
            let bytes = unhex(material)
                .filter(|b| b.len() == 32)
                .ok_or_else(|| CryptoError::Keys(format!("key '{id}': expected 64 hex characters (32 bytes)")))?;
            if id == "index" {
                // A second line would silently re-key the opt-out registry: every lookup would
                // miss. One bad edit must not do that.
                if index.replace(hmac::Key::new(hmac::HMAC_SHA256, &bytes)).is_some() {
                    return Err(CryptoError::Keys("the 'index' key appears twice; it must never change".into()));
                }
                continue;
            }
            if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') || id.len() > 32 {
                return Err(CryptoError::Keys(format!("key id '{id}': letters, digits, - and _ only")));
            }
            let key =
                UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| CryptoError::Keys(format!("key '{id}' rejected")))?;
            if keys.insert(id.to_string(), LessSafeKey::new(key)).is_some() {
                return Err(CryptoError::Keys(format!("key id '{id}' appears twice")));
            }
            current = Some(id.to_string());
        }
        Ok(Crypto {
            current: current.ok_or_else(|| CryptoError::Keys("no data key".into()))?,
            keys,
            index: index.ok_or_else(|| CryptoError::Keys("no 'index' key for the blind index".into()))?,
        })
    }

    /// Loads keys from a file outside the data directory; refuses one that others can read
    /// or anyone but its owner can change (see `fsutil::check_secret_file`).
    pub fn from_file(path: &Path) -> Result<Crypto, CryptoError> {
        if let Some(warning) = crate::fsutil::check_secret_file(path).map_err(CryptoError::Keys)? {
            tracing::warn!("{warning}");
        }
        let text = std::fs::read_to_string(path).map_err(|e| CryptoError::Keys(format!("{}: {e}", path.display())))?;
        Crypto::parse(&text)
    }

    /// Appends a fresh data key to the key file at `path` (fsynced) and returns its id.
    pub fn append_key(path: &Path) -> Result<String, CryptoError> {
        use std::io::Write;
        let fail = |e: std::io::Error| CryptoError::Keys(format!("{}: {e}", path.display()));
        let line = Crypto::from_file(path)?.next_key_line();
        let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(fail)?;
        writeln!(f, "{line}").and_then(|_| f.sync_all()).map_err(fail)?;
        Ok(line.split(' ').next().unwrap_or_default().to_string())
    }

    /// Text of a new key file: an index key and one data key.
    pub fn generate_file_text() -> String {
        format!(
            "# smsgate data keys, one '<id> <64 hex>' per line. The last data key seals new data.\n\
             # Keep this file outside the data directory, mode 0600, and back it up separately.\n\
             index {}\nk1 {}\n",
            hex(&random_bytes(32)),
            hex(&random_bytes(32))
        )
    }

    /// A fresh data key line for rotation (`id hex`), with an id not in use yet.
    pub fn next_key_line(&self) -> String {
        let mut n = self.keys.len() + 1;
        while self.keys.contains_key(&format!("k{n}")) {
            n += 1;
        }
        format!("k{n} {}", hex(&random_bytes(32)))
    }

    /// Id of the key that seals new data.
    pub fn current_key(&self) -> &str {
        &self.current
    }

    /// Seals `plaintext`, bound to `context` (the record's key).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        self.seal_with(&self.current, plaintext, context)
    }

    /// Seals with the data key `id` (check values name the key they test).
    pub fn seal_with(&self, id: &str, plaintext: &[u8], context: &[u8]) -> Sealed {
        let nonce_bytes = random_bytes(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&nonce_bytes);
        let mut buf = plaintext.to_vec();
        let sealed = self.keys.get(id).and_then(|key| {
            key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf).ok()
        });
        match sealed {
            Some(()) => Sealed { k: id.to_string(), n: B64.encode(nonce), c: B64.encode(&buf) },
            // Unreachable for an id of this key set (inputs are far below GCM's limits); an
            // empty ciphertext fails to open instead of leaking.
            None => Sealed { k: id.to_string(), n: String::new(), c: String::new() },
        }
    }

    /// The ids of the data keys.
    pub fn data_key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A value that only this index key produces (stored, to recognise the key again).
    pub fn index_check(&self) -> String {
        self.blind_index("smsgate index key check")
    }

    /// Opens a sealed value bound to `context`.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.keys.get(&sealed.k).ok_or_else(|| CryptoError::UnknownKey(sealed.k.clone()))?;
        let nonce: [u8; NONCE_LEN] =
            B64.decode(&sealed.n).ok().and_then(|n| n.try_into().ok()).ok_or(CryptoError::Open)?;
        let mut buf = B64.decode(&sealed.c).map_err(|_| CryptoError::Open)?;
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        Ok(plain.to_vec())
    }

    /// Seals a serialisable value as JSON.
    pub fn seal_json<T: Serialize>(&self, value: &T, context: &[u8]) -> Sealed {
        self.seal(&serde_json::to_vec(value).unwrap_or_default(), context)
    }

    /// Opens a sealed JSON value.
    pub fn open_json<T: serde::de::DeserializeOwned>(&self, sealed: &Sealed, context: &[u8]) -> Result<T, CryptoError> {
        serde_json::from_slice(&self.open(sealed, context)?).map_err(|_| CryptoError::Open)
    }

    /// The blind index of a number (or any identifier): hex HMAC-SHA256 under the index key.
    pub fn blind_index(&self, value: &str) -> String {
        hex(hmac::sign(&self.index, value.as_bytes()).as_ref())
    }

    /// The key that authenticates backups: derived from the index key (which never changes),
    /// so a backup made before a data-key rotation still verifies after it.
    pub fn backup_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&self.index, b"smsgate backup MAC v2").as_ref())
    }

    /// The key of the audit chain's MACs, derived from the index key (which never changes).
    pub fn audit_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&self.index, b"smsgate audit chain v1").as_ref())
    }

    /// Whether `sealed` was made with an older key (for background re-sealing).
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.k != self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto() -> Crypto {
        Crypto::parse(&Crypto::generate_file_text()).unwrap()
    }

    #[test]
    fn seal_and_open_round_trip_bound_to_the_record() {
        let c = crypto();
        let s = c.seal(b"+14155550123 Your test results are ready", b"m/01ABC");
        assert!(!s.c.contains("4155550123"));
        assert_eq!(c.open(&s, b"m/01ABC").unwrap(), b"+14155550123 Your test results are ready");
        assert!(matches!(c.open(&s, b"m/01XYZ"), Err(CryptoError::Open)), "bound to its record");
        let mut tampered = s.clone();
        tampered.c.replace_range(0..1, if tampered.c.starts_with('A') { "B" } else { "A" });
        assert!(c.open(&tampered, b"m/01ABC").is_err());
        assert_ne!(c.seal(b"same", b"x").n, c.seal(b"same", b"x").n, "fresh nonce each time");
    }

    #[test]
    fn rotation_keeps_old_data_readable() {
        let text = Crypto::generate_file_text();
        let old = Crypto::parse(&text).unwrap();
        let sealed = old.seal(b"hello", b"ctx");
        let rotated = Crypto::parse(&format!("{text}{}\n", old.next_key_line())).unwrap();
        assert_eq!(rotated.current_key(), "k2");
        assert!(rotated.is_stale(&sealed));
        assert_eq!(rotated.open(&sealed, b"ctx").unwrap(), b"hello");
        assert_eq!(rotated.blind_index("+14155550123"), old.blind_index("+14155550123"), "index key unchanged");
    }

    #[test]
    fn bad_key_text_is_refused_with_a_reason() {
        for bad in ["", "k1 00", "index zz", "k1 0011", "only-one-field"] {
            assert!(Crypto::parse(bad).is_err(), "{bad:?}");
        }
        let idx = hex(&[1u8; 32]);
        assert!(Crypto::parse(&format!("index {idx}")).unwrap_err().to_string().contains("no data key"));
        assert!(Crypto::parse(&format!("k1 {idx}")).unwrap_err().to_string().contains("index"));
        assert!(Crypto::parse(&format!("index {idx};k1 {idx};k1 {idx}")).is_err(), "duplicate id");
        let other = hex(&[2u8; 32]);
        let e = Crypto::parse(&format!("index {idx};k1 {idx};index {other}")).unwrap_err().to_string();
        assert!(e.contains("'index' key appears twice"), "a second index line never wins: {e}");
        assert!(Crypto::parse(&format!("index {idx};k1 {idx}")).is_ok(), "env form with ';'");
    }
}
