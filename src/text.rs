//! Text encodings for SMS: GSM 03.38 (default alphabet + extension table), UCS-2/UTF-16,
//! Latin-1, and the segmenting rules carriers bill by.
//!
//! Hand-written because no maintained crate covers it: `rusmpp-extra` 0.4 encodes only (no
//! decoder for inbound texts, UCS-2 rejects emoji), `gsm7` does packed septets only. The tables
//! are the ones in 3GPP TS 23.038 §6.2.1; tests check every code point both ways.
//!
//! Invariants: a segment boundary never falls inside a GSM escape pair (ESC + extension char)
//! or a UTF-16 surrogate pair, because splitting works on whole `char`s and each `char` has a
//! fixed cost (1 or 2 septets; 1 or 2 UTF-16 units).

use serde::{Deserialize, Serialize};

/// GSM 03.38 default alphabet, indexed by septet value.
const GSM_BASIC: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The escape septet that introduces an extension-table character.
const GSM_ESCAPE: u8 = 0x1B;

/// GSM 03.38 extension table: (septet after ESC, character).
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0C}'), // form feed (page break)
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

/// How a message's text is carried: the two encodings the API reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet with the extension table.
    Gsm7,
    /// UCS-2 on the wire; UTF-16 in fact, so characters outside the BMP travel as surrogate pairs.
    Ucs2,
}

impl Encoding {
    /// Name as reported by the API (`gsm7`, `ucs2`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// Units (septets or UTF-16 code units) that fit in one unsegmented message.
    pub fn single_capacity(self) -> usize {
        match self {
            Encoding::Gsm7 => 160,
            Encoding::Ucs2 => 70,
        }
    }

    /// Units per segment of a concatenated message, after the user data header of
    /// `udh_octets` octets (6 for an 8-bit reference, 7 for a 16-bit one).
    pub fn segment_capacity(self, udh_octets: usize) -> usize {
        match self {
            // 140 octets = 1120 bits; the UDH is padded to a septet boundary.
            Encoding::Gsm7 => (1120 - (udh_octets * 8).div_ceil(7) * 7) / 7,
            Encoding::Ucs2 => (140 - udh_octets) / 2,
        }
    }
}

/// Septet value of a basic-alphabet character.
fn gsm_basic_septet(c: char) -> Option<u8> {
    if c == '\u{1b}' {
        return None;
    }
    // ASCII letters and digits map to themselves; everything else by table lookup.
    if c.is_ascii_alphanumeric() {
        return Some(c as u8);
    }
    GSM_BASIC.iter().position(|&g| g == c).map(|i| i as u8)
}

/// Septet after ESC for an extension-table character.
fn gsm_extension_septet(c: char) -> Option<u8> {
    GSM_EXTENSION.iter().find(|(_, g)| *g == c).map(|(s, _)| *s)
}

/// Cost of one character in GSM septets (1 or 2), or `None` if GSM 03.38 cannot carry it.
pub fn gsm_cost(c: char) -> Option<usize> {
    if gsm_basic_septet(c).is_some() {
        Some(1)
    } else if gsm_extension_septet(c).is_some() {
        Some(2)
    } else {
        None
    }
}

/// Cost of a character in the chosen encoding's units.
fn cost(c: char, encoding: Encoding) -> usize {
    match encoding {
        Encoding::Gsm7 => gsm_cost(c).unwrap_or(2),
        Encoding::Ucs2 => c.len_utf16(),
    }
}

/// Encoding and segment count of a text, as computed at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Analysis {
    /// GSM 03.38 if every character fits, else UCS-2.
    pub encoding: Encoding,
    /// Units (septets or UTF-16 units) of the whole text.
    pub units: usize,
    /// Number of `submit_sm` the message needs with an 8-bit concatenation reference.
    pub segments: usize,
}

/// Picks the encoding and counts segments with the 160/153 (GSM) and 70/67 (UCS-2) rules.
pub fn analyze(text: &str) -> Analysis {
    let gsm_units: Option<usize> = text.chars().map(gsm_cost).sum();
    let (encoding, units) = match gsm_units {
        Some(units) => (Encoding::Gsm7, units),
        None => (Encoding::Ucs2, text.encode_utf16().count()),
    };
    let segments =
        if units <= encoding.single_capacity() { 1 } else { split(text, encoding, encoding.segment_capacity(6)).len() };
    Analysis { encoding, units, segments }
}

/// Splits `text` into parts of at most `capacity` units each, greedily, on character
/// boundaries (so never inside an escape pair or a surrogate pair).
pub fn split(text: &str, encoding: Encoding, capacity: usize) -> Vec<&str> {
    split_by(text, capacity, |c| cost(c, encoding))
}

/// [`split`] with any per-character cost (Latin-1 is one octet per character).
pub fn split_by(text: &str, capacity: usize, cost: impl Fn(char) -> usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let c_cost = cost(c);
        if used + c_cost > capacity && i > start {
            parts.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += c_cost;
    }
    if start < text.len() || parts.is_empty() {
        parts.push(&text[start..]);
    }
    parts
}

/// Encodes to unpacked GSM 03.38 (one septet per octet, as SMPP `data_coding` 0 usually
/// carries it). `None` if a character has no GSM representation.
pub fn gsm_encode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if let Some(s) = gsm_basic_septet(c) {
            out.push(s);
        } else {
            out.push(GSM_ESCAPE);
            out.push(gsm_extension_septet(c)?);
        }
    }
    Some(out)
}

/// Decodes unpacked GSM 03.38. Unknown escapes decode as the basic character (TS 23.038:
/// "the receiving entity shall display the character in the default alphabet"); values
/// above 0x7F are masked to 7 bits.
pub fn gsm_decode(septets: &[u8]) -> String {
    let mut out = String::with_capacity(septets.len());
    let mut bytes = septets.iter().map(|b| b & 0x7F);
    while let Some(s) = bytes.next() {
        if s == GSM_ESCAPE {
            match bytes.next() {
                Some(e) => match GSM_EXTENSION.iter().find(|(x, _)| *x == e) {
                    Some((_, c)) => out.push(*c),
                    None => out.push(GSM_BASIC[e as usize]),
                },
                None => out.push(' '),
            }
        } else {
            out.push(GSM_BASIC[s as usize]);
        }
    }
    out
}

/// Packs septets 8-into-7 octets (TS 23.038 §6.1.2.1.1) for carriers that want packed GSM.
pub fn gsm_pack(septets: &[u8]) -> Vec<u8> {
    gsm_pack_after(septets, 0)
}

/// Packs septets after `fill_bits` zero bits: the padding that puts the first septet on a
/// septet boundary after a user data header (TS 23.040 §9.2.3.24).
pub fn gsm_pack_after(septets: &[u8], fill_bits: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity((septets.len() * 7 + fill_bits as usize).div_ceil(8));
    let mut acc: u32 = 0;
    let mut bits = fill_bits;
    for &s in septets {
        acc |= u32::from(s & 0x7F) << bits;
        bits += 7;
        while bits >= 8 {
            out.push((acc & 0xFF) as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push((acc & 0xFF) as u8);
    }
    out
}

/// Unpacks `count` septets from packed octets.
pub fn gsm_unpack(octets: &[u8], count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &o in octets {
        acc |= u32::from(o) << bits;
        bits += 8;
        while bits >= 7 && out.len() < count {
            out.push((acc & 0x7F) as u8);
            acc >>= 7;
            bits -= 7;
        }
    }
    out
}

/// UTF-16BE, which is what carriers accept as "UCS-2" (`data_coding` 8) in practice.
pub fn ucs2_encode(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// Decodes UTF-16BE; an odd trailing byte or a lone surrogate becomes U+FFFD.
pub fn ucs2_decode(bytes: &[u8]) -> String {
    let units = bytes.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    let mut out: String = char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
    if bytes.len() % 2 == 1 {
        out.push(char::REPLACEMENT_CHARACTER);
    }
    out
}

/// ISO-8859-1 (`data_coding` 3); `None` if a character is above U+00FF.
pub fn latin1_encode(text: &str) -> Option<Vec<u8>> {
    text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// ISO-8859-1 decode: every octet is its own code point.
pub fn latin1_decode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_basic_and_extension_character_round_trips() {
        for (i, &c) in GSM_BASIC.iter().enumerate() {
            if i == usize::from(GSM_ESCAPE) {
                continue;
            }
            let s = c.to_string();
            let enc = gsm_encode(&s).unwrap();
            assert_eq!(enc, vec![i as u8], "{c:?}");
            assert_eq!(gsm_decode(&enc), s);
        }
        for (e, c) in GSM_EXTENSION {
            let s = c.to_string();
            assert_eq!(gsm_encode(&s).unwrap(), vec![GSM_ESCAPE, e]);
            assert_eq!(gsm_decode(&[GSM_ESCAPE, e]), s);
        }
    }

    #[test]
    fn encoding_choice_and_segment_rules() {
        let a = analyze(&"a".repeat(160));
        assert_eq!((a.encoding, a.units, a.segments), (Encoding::Gsm7, 160, 1));
        assert_eq!(analyze(&"a".repeat(161)).segments, 2);
        assert_eq!(analyze(&"a".repeat(306)).segments, 2);
        assert_eq!(analyze(&"a".repeat(307)).segments, 3);
        // Extension characters count twice.
        let a = analyze(&"€".repeat(80));
        assert_eq!((a.encoding, a.units, a.segments), (Encoding::Gsm7, 160, 1));
        assert_eq!(analyze(&"€".repeat(81)).segments, 2);
        // One non-GSM character makes the whole message UCS-2.
        let a = analyze(&format!("{}ж", "a".repeat(69)));
        assert_eq!((a.encoding, a.units, a.segments), (Encoding::Ucs2, 70, 1));
        assert_eq!(analyze(&format!("{}ж", "a".repeat(70))).segments, 2);
        assert_eq!(analyze(&"ж".repeat(134)).segments, 2);
        assert_eq!(analyze(&"ж".repeat(135)).segments, 3);
        // Emoji are two UTF-16 units.
        let a = analyze("👋");
        assert_eq!((a.encoding, a.units), (Encoding::Ucs2, 2));
        assert_eq!(analyze("").segments, 1);
    }

    #[test]
    fn capacities_follow_the_udh_size() {
        assert_eq!(Encoding::Gsm7.segment_capacity(6), 153);
        assert_eq!(Encoding::Gsm7.segment_capacity(7), 152);
        assert_eq!(Encoding::Ucs2.segment_capacity(6), 67);
        assert_eq!(Encoding::Ucs2.segment_capacity(7), 66);
    }

    #[test]
    fn split_never_breaks_escape_or_surrogate_pairs() {
        // 152 'a' then '€' (2 septets) would straddle 153: it must move to the next part.
        let text = format!("{}€b", "a".repeat(152));
        let parts = split(&text, Encoding::Gsm7, 153);
        assert_eq!(parts, vec!["a".repeat(152).as_str(), "€b"]);
        let text = format!("{}👋z", "ж".repeat(66));
        let parts = split(&text, Encoding::Ucs2, 67);
        assert_eq!(parts, vec!["ж".repeat(66).as_str(), "👋z"]);
        for part in split(&"😀".repeat(100), Encoding::Ucs2, 67) {
            assert!(part.encode_utf16().count() <= 67);
            assert_eq!(ucs2_decode(&ucs2_encode(part)), part);
        }
    }

    #[test]
    fn pack_and_unpack_are_inverse() {
        let septets = gsm_encode("hellohello").unwrap();
        let packed = gsm_pack(&septets);
        // The TS 23.038 example: "hellohello" packs to E8329BFD4697D9EC37.
        assert_eq!(packed, vec![0xE8, 0x32, 0x9B, 0xFD, 0x46, 0x97, 0xD9, 0xEC, 0x37]);
        assert_eq!(gsm_unpack(&packed, septets.len()), septets);
    }

    #[test]
    fn packing_after_a_udh_starts_on_a_septet_boundary() {
        // 6-octet UDH = 48 bits; 1 fill bit brings it to 49 = 7 septets.
        let packed = gsm_pack_after(&[0x41], 1);
        assert_eq!(packed, vec![0x82]);
        let mut all = vec![0u8; 6];
        all.extend(&packed);
        // Unpacking the whole user data as septets: the 8th septet is the 'A'.
        assert_eq!(gsm_unpack(&all, 8)[7], 0x41);
    }

    #[test]
    fn decoders_never_panic_on_odd_input() {
        assert_eq!(gsm_decode(&[0x1B]), " ");
        assert_eq!(gsm_decode(&[0xFF]), "à");
        assert_eq!(ucs2_decode(&[0x00]), "\u{FFFD}");
        assert_eq!(ucs2_decode(&[0xD8, 0x3D]), "\u{FFFD}");
        assert_eq!(latin1_decode(&[0xE9]), "é");
        assert_eq!(latin1_encode("€"), None);
    }
}
