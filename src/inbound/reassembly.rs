//! Long inbound texts: a handset splits a long text into parts (3GPP TS 23.040 concatenation
//! in the UDH with an 8- or 16-bit reference, or SMPP's `sar_*` TLVs). Parts wait here,
//! durably and sealed, until all have come; the text is then handled once, whole, so that a
//! keyword is read in the text the patient wrote and no part alone triggers one. After
//! `inbound.reassembly_timeout_secs` the parts that came are released as one text marked
//! incomplete.
//!
//! `r/{blind index of the sender}\0{our address}\0{reference, u16 BE}{total}\0{part number}`
//! → [`StoredPart`]. The sender is keyed by blind index, so no number is in a key.

use serde::{Deserialize, Serialize};

use crate::crypto::{Crypto, Sealed};
use crate::smpp::codec::pdu::ShortMessage;
use crate::store::{Store, StoreError};

/// Parts waiting for the rest of their text.
pub const PARTS: &[u8] = b"r/";

/// Where one part sits in its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The handset's reference, the same in every part of one text.
    pub reference: u16,
    /// How many parts the text has.
    pub total: u8,
    /// This part's number, from 1.
    pub number: u8,
}

/// A part's place and its user data (the UDH removed), when `sm` is one part of several.
pub fn segment(sm: &ShortMessage) -> Option<(Segment, &[u8])> {
    let data: &[u8] = sm.payload();
    if sm.esm_class & 0x40 != 0 {
        let udh_len = usize::from(*data.first()?);
        let udh = data.get(1..=udh_len)?;
        let rest = data.get(udh_len + 1..)?;
        let mut i = 0;
        while i + 2 <= udh.len() {
            let (iei, len) = (udh[i], usize::from(udh[i + 1]));
            let value = udh.get(i + 2..i + 2 + len)?;
            let seg = match (iei, value) {
                (0x00, [r, t, n]) => Some(Segment { reference: u16::from(*r), total: *t, number: *n }),
                (0x08, [r1, r2, t, n]) => {
                    Some(Segment { reference: u16::from_be_bytes([*r1, *r2]), total: *t, number: *n })
                }
                _ => None,
            };
            if let Some(s) = seg.filter(|s| s.total > 1 && (1..=s.total).contains(&s.number)) {
                return Some((s, rest));
            }
            i += 2 + len;
        }
        return None;
    }
    let (reference, total, number) = sm.tlvs.sar?;
    (total > 1 && (1..=total).contains(&number)).then_some((Segment { reference, total, number }, data))
}

/// A stored part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPart {
    /// Carrier it came from.
    pub carrier: String,
    /// When it came (ms).
    pub received_ms: u64,
    /// [`PartContent`], sealed to the part's key.
    pub sealed: Sealed,
}

/// What a part says.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartContent {
    /// The handset.
    pub from: String,
    /// Our address.
    pub to: String,
    /// Its `data_coding`.
    pub data_coding: u8,
    /// Its user data, the UDH removed: parts are joined before decoding, so that a character
    /// split between two parts (a UCS-2 surrogate pair) comes out whole.
    pub data: Vec<u8>,
}

/// The key prefix of one text's parts.
pub fn group(idx: &str, to: &str, seg: Segment) -> Vec<u8> {
    let mut k = [PARTS, idx.as_bytes(), b"\0", to.as_bytes(), b"\0"].concat();
    k.extend_from_slice(&seg.reference.to_be_bytes());
    k.push(seg.total);
    k.push(0);
    k
}

/// One part's key.
pub fn part_key(group: &[u8], number: u8) -> Vec<u8> {
    [group, &[number]].concat()
}

/// A text's parts as they stand: (number, key, part, content) by number.
pub type Parts = Vec<(u8, Vec<u8>, StoredPart, PartContent)>;

/// The parts stored for `group`, opened.
pub fn stored(store: &Store, crypto: &Crypto, group: &[u8]) -> Result<Parts, StoreError> {
    let mut parts: Parts = store
        .scan_with_keys::<StoredPart>(group)?
        .into_iter()
        .filter_map(|(key, p)| {
            let number = *key.last()?;
            let content: PartContent = crypto.open_json(&p.sealed, &key).ok()?;
            Some((number, key, p, content))
        })
        .collect();
    parts.sort_by_key(|(n, ..)| *n);
    parts.dedup_by_key(|(n, ..)| *n);
    Ok(parts)
}

/// The whole text, parts in order: their data joined and decoded once when they share one
/// coding (they do, from one handset), else each decoded on its own.
pub fn join(parts: &Parts, decode: impl Fn(&[u8], u8) -> String) -> String {
    let Some((_, _, _, first)) = parts.first() else { return String::new() };
    if parts.iter().all(|(_, _, _, c)| c.data_coding == first.data_coding) {
        let data: Vec<u8> = parts.iter().flat_map(|(_, _, _, c)| c.data.iter().copied()).collect();
        return decode(&data, first.data_coding);
    }
    parts.iter().map(|(_, _, _, c)| decode(&c.data, c.data_coding)).collect()
}

/// The group prefixes whose oldest part came before `before_ms`.
pub fn overdue(store: &Store, before_ms: u64) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut groups: Vec<Vec<u8>> = Vec::new();
    for (key, part) in store.scan_with_keys::<StoredPart>(PARTS)? {
        let Some(group) = key.get(..key.len().saturating_sub(1)) else { continue };
        if part.received_ms < before_ms && groups.last().is_none_or(|g| g.as_slice() != group) {
            groups.push(group.to_vec());
        }
    }
    groups.dedup();
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn udh_part(udh: &[u8], text: &[u8]) -> ShortMessage {
        ShortMessage { esm_class: 0x40, short_message: Bytes::from([udh, text].concat()), ..Default::default() }
    }

    #[test]
    fn parts_are_recognised_in_every_form() {
        let sm = udh_part(&[5, 0x00, 3, 0x2a, 3, 2], b"abc");
        assert_eq!(segment(&sm), Some((Segment { reference: 0x2a, total: 3, number: 2 }, &b"abc"[..])));
        let sm = udh_part(&[6, 0x08, 4, 0x12, 0x34, 3, 3], b"xyz");
        assert_eq!(segment(&sm), Some((Segment { reference: 0x1234, total: 3, number: 3 }, &b"xyz"[..])));
        let mut sm = ShortMessage { short_message: Bytes::from_static(b"hi"), ..Default::default() };
        assert_eq!(segment(&sm), None, "a single text");
        sm.tlvs.sar = Some((7, 2, 1));
        assert_eq!(segment(&sm), Some((Segment { reference: 7, total: 2, number: 1 }, &b"hi"[..])));
        // Not parts: one of one, number out of range, truncated or other elements.
        for udh in [&[5u8, 0x00, 3, 1, 1, 1][..], &[5, 0x00, 3, 1, 3, 4], &[5, 0x00, 3, 1], &[3, 0x24, 1, 1]] {
            assert_eq!(segment(&udh_part(udh, b"t")), None, "{udh:?}");
        }
        sm.tlvs.sar = Some((7, 2, 0));
        assert_eq!(segment(&sm), None);
    }
}
