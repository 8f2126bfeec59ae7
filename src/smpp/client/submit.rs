//! Turns a stored message into the `submit_sm` PDUs that carry it, per the carrier's choices:
//! wire encoding (GSM 03.38 unpacked or packed, Latin-1, UCS-2), how long messages are
//! carried (UDH with an 8- or 16-bit reference, SAR TLVs, or one `message_payload`),
//! addresses with their TON/NPI, validity period and priority.
//!
//! Splitting is deterministic: segment `i` is the same bytes on every attempt, so a handset
//! reassembles parts that came from different attempts.

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::{Gsm7Packing, LongMessages};
use crate::message::Message;
use crate::smpp::codec::pdu::{Address, ShortMessage, Tlvs};
use crate::text::{self, Encoding};

/// Per-carrier choices for building PDUs.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Sender when the message has none.
    pub default_source: Option<String>,
    /// Ask for delivery receipts (`registered_delivery` = 1).
    pub registered_delivery: bool,
    /// GSM 03.38 unpacked or packed.
    pub packing: Gsm7Packing,
    /// data_coding for GSM 03.38.
    pub gsm7_data_coding: u8,
    /// Latin-1 for non-GSM text that fits it.
    pub latin1: bool,
    /// Concatenation method.
    pub long_messages: LongMessages,
    /// source_addr TON override.
    pub source_ton: Option<u8>,
    /// source_addr NPI override.
    pub source_npi: Option<u8>,
    /// Send a relative validity_period.
    pub send_validity: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            default_source: None,
            registered_delivery: true,
            packing: Gsm7Packing::Unpacked,
            gsm7_data_coding: 0,
            latin1: false,
            long_messages: LongMessages::Udh8,
            source_ton: None,
            source_npi: None,
            send_validity: true,
        }
    }
}

impl SubmitOptions {
    /// The options a carrier's configuration asks for.
    pub fn from_carrier(c: &crate::config::CarrierConfig) -> Self {
        SubmitOptions {
            default_source: c.default_source.clone(),
            registered_delivery: true,
            packing: c.gsm7_packing,
            gsm7_data_coding: c.gsm7_data_coding,
            latin1: c.latin1,
            long_messages: c.long_messages,
            source_ton: c.source_ton,
            source_npi: c.source_npi,
            send_validity: c.send_validity,
        }
    }
}

/// TON/NPI for a sender id: `+digits` international, up to 8 digits a short code,
/// longer digit strings international, anything else alphanumeric (SMPP 3.4 §5.2.5/5.2.6).
pub fn source_address(source: &str) -> Address {
    if let Some(digits) = source.strip_prefix('+') {
        return Address { ton: 1, npi: 1, addr: digits.to_string() };
    }
    if source.is_empty() {
        return Address::default();
    }
    if source.bytes().all(|b| b.is_ascii_digit()) {
        if source.len() <= 8 {
            return Address { ton: 3, npi: 0, addr: source.to_string() };
        }
        return Address { ton: 1, npi: 1, addr: source.to_string() };
    }
    Address { ton: 5, npi: 0, addr: source.to_string() }
}

/// How the text goes on the wire for this carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Gsm,
    Latin1,
    Ucs2,
}

impl Wire {
    fn cost(self, c: char) -> usize {
        match self {
            Wire::Gsm => text::gsm_cost(c).unwrap_or(2),
            Wire::Latin1 => 1,
            Wire::Ucs2 => c.len_utf16(),
        }
    }

    /// Units in one unsegmented message.
    fn single(self) -> usize {
        match self {
            Wire::Gsm => 160,
            Wire::Latin1 => 140,
            Wire::Ucs2 => 70,
        }
    }

    /// Units per segment after a UDH of `udh` octets (SAR uses the 8-bit size: the SMSC adds a UDH).
    fn per_segment(self, udh: usize) -> usize {
        match self {
            Wire::Gsm => Encoding::Gsm7.segment_capacity(udh),
            Wire::Latin1 => 140 - udh,
            Wire::Ucs2 => Encoding::Ucs2.segment_capacity(udh),
        }
    }
}

/// A relative validity period (`0000DDhhmmss000R`, SMPP 3.4 §7.1.1) for `secs` seconds.
pub fn relative_validity(secs: u64) -> String {
    let secs = secs.min(99 * 86_400 + 86_399);
    let (d, rest) = (secs / 86_400, secs % 86_400);
    format!("0000{:02}{:02}{:02}{:02}000R", d, rest / 3600, (rest % 3600) / 60, rest % 60)
}

/// All segments of `msg`, in order, whether or not they were submitted before; the caller
/// skips those that already have a carrier id.
pub fn build_parts(msg: &Message, options: &SubmitOptions, now_ms: u64) -> Vec<ShortMessage> {
    let body = &msg.content.body;
    let wire = match msg.encoding {
        Encoding::Gsm7 if text::gsm_encode(body).is_some() => Wire::Gsm,
        _ if options.latin1 && text::latin1_encode(body).is_some() => Wire::Latin1,
        _ => Wire::Ucs2,
    };
    let data_coding = match wire {
        Wire::Gsm => options.gsm7_data_coding,
        Wire::Latin1 => 0x03,
        Wire::Ucs2 => 0x08,
    };
    let source = msg.content.from.as_deref().or(options.default_source.as_deref()).unwrap_or("");
    let mut source = source_address(source);
    source.ton = options.source_ton.unwrap_or(source.ton);
    source.npi = options.source_npi.unwrap_or(source.npi);
    let validity_period = match (options.send_validity, msg.expires_ms.checked_sub(now_ms)) {
        (true, Some(ms)) if ms >= 1000 => relative_validity(ms / 1000),
        _ => String::new(),
    };
    let template = ShortMessage {
        source,
        dest: Address { ton: 1, npi: 1, addr: msg.content.to.trim_start_matches('+').to_string() },
        registered_delivery: u8::from(options.registered_delivery),
        data_coding,
        priority: u8::from(msg.category.as_deref() == Some("urgent")),
        validity_period,
        ..ShortMessage::default()
    };
    let units: usize = body.chars().map(|c| wire.cost(c)).sum();
    if units <= wire.single() {
        return vec![ShortMessage { short_message: Bytes::from(user_data(body, wire, options, &[])), ..template }];
    }
    if options.long_messages == LongMessages::Payload {
        let payload = Bytes::from(user_data(body, wire, options, &[]));
        return vec![ShortMessage { tlvs: Tlvs { message_payload: Some(payload), ..Tlvs::default() }, ..template }];
    }
    let udh_len = if options.long_messages == LongMessages::Udh16 { 7 } else { 6 };
    let pieces = text::split_by(body, wire.per_segment(udh_len), |c| wire.cost(c));
    let total = pieces.len().min(255) as u8;
    pieces
        .iter()
        .take(255)
        .enumerate()
        .map(|(i, piece)| {
            let seq = i as u8 + 1;
            match options.long_messages {
                LongMessages::Sar => ShortMessage {
                    short_message: Bytes::from(user_data(piece, wire, options, &[])),
                    tlvs: Tlvs { sar: Some(((msg.seq & 0xFFFF) as u16, total, seq)), ..Tlvs::default() },
                    ..template.clone()
                },
                LongMessages::Udh16 => {
                    let r = ((msg.seq & 0xFFFF) as u16).to_be_bytes();
                    let udh = [0x06, 0x08, 0x04, r[0], r[1], total, seq];
                    ShortMessage {
                        esm_class: 0x40,
                        short_message: Bytes::from(user_data(piece, wire, options, &udh)),
                        ..template.clone()
                    }
                }
                _ => {
                    let udh = [0x05, 0x00, 0x03, (msg.seq & 0xFF) as u8, total, seq];
                    ShortMessage {
                        esm_class: 0x40,
                        short_message: Bytes::from(user_data(piece, wire, options, &udh)),
                        ..template.clone()
                    }
                }
            }
        })
        .collect()
}

/// UDH (if any) followed by the encoded text.
fn user_data(s: &str, wire: Wire, options: &SubmitOptions, udh: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(udh.len() + s.len() * 2);
    out.put_slice(udh);
    match wire {
        Wire::Gsm => {
            let septets = text::gsm_encode(s).unwrap_or_default();
            match options.packing {
                Gsm7Packing::Unpacked => out.put_slice(&septets),
                Gsm7Packing::Packed => {
                    let fill = (7 - (udh.len() as u32 * 8) % 7) % 7;
                    out.put_slice(&text::gsm_pack_after(&septets, fill));
                }
            }
        }
        Wire::Latin1 => out.put_slice(&text::latin1_encode(s).unwrap_or_default()),
        Wire::Ucs2 => out.put_slice(&text::ucs2_encode(s)),
    }
    out.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Content;

    fn message(body: &str) -> Message {
        let content = Content { to: "+14155550123".into(), from: Some("CLINIC".into()), body: body.into() };
        Message::accepted("k", 0x1234, content, vec!["c".into()], 0, 0, 3_600_000)
    }

    fn opts(long: LongMessages) -> SubmitOptions {
        SubmitOptions { long_messages: long, ..SubmitOptions::default() }
    }

    #[test]
    fn single_gsm_message() {
        let parts = build_parts(&message("Hi [you]"), &SubmitOptions::default(), 0);
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!((p.data_coding, p.esm_class, p.registered_delivery, p.priority), (0, 0, 1, 0));
        assert_eq!(p.short_message.as_ref(), b"Hi \x1b<you\x1b>");
        assert_eq!(p.dest, Address { ton: 1, npi: 1, addr: "14155550123".into() });
        assert_eq!(p.source, Address { ton: 5, npi: 0, addr: "CLINIC".into() });
        assert_eq!(p.validity_period, "000000010000000R");
    }

    #[test]
    fn long_ucs2_message_gets_udh_and_reassembles() {
        let body = "Привет 👋 ".repeat(20);
        let msg = message(&body);
        let parts = build_parts(&msg, &SubmitOptions::default(), 0);
        assert_eq!(parts.len(), msg.segments as usize);
        let mut text = String::new();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.esm_class, 0x40);
            assert_eq!(&p.short_message[..6], &[5, 0, 3, 0x34, parts.len() as u8, i as u8 + 1]);
            assert!(p.short_message.len() <= 140);
            text.push_str(&text::ucs2_decode(&p.short_message[6..]));
        }
        assert_eq!(text, body);
    }

    #[test]
    fn sixteen_bit_udh_sar_and_payload() {
        let body = "a".repeat(400);
        let udh16 = build_parts(&message(&body), &opts(LongMessages::Udh16), 0);
        assert_eq!(udh16.len(), 3);
        assert_eq!(&udh16[0].short_message[..7], &[6, 8, 4, 0x12, 0x34, 3, 1]);
        assert_eq!(udh16[0].short_message.len(), 7 + 152);
        let sar = build_parts(&message(&body), &opts(LongMessages::Sar), 0);
        assert_eq!(sar.len(), 3);
        assert_eq!((sar[2].esm_class, sar[2].tlvs.sar), (0, Some((0x1234, 3, 3))));
        let payload = build_parts(&message(&body), &opts(LongMessages::Payload), 0);
        assert_eq!(payload.len(), 1);
        assert!(payload[0].short_message.is_empty());
        assert_eq!(payload[0].tlvs.message_payload.as_ref().unwrap().len(), 400);
    }

    #[test]
    fn packed_gsm_and_latin1() {
        let packed = SubmitOptions { packing: Gsm7Packing::Packed, ..SubmitOptions::default() };
        let p = build_parts(&message("hellohello"), &packed, 0);
        assert_eq!(p[0].short_message.as_ref(), &[0xE8, 0x32, 0x9B, 0xFD, 0x46, 0x97, 0xD9, 0xEC, 0x37]);
        let long = build_parts(&message(&"a".repeat(200)), &packed, 0);
        // UDH + 1 fill bit + 153 septets = 6 + 134 octets.
        assert_eq!(long[0].short_message.len(), 140);
        let unpacked = text::gsm_unpack(&long[0].short_message, 160);
        assert!(unpacked[7..].iter().all(|&s| s == b'a'));
        let latin = SubmitOptions { latin1: true, ..SubmitOptions::default() };
        let p = build_parts(&message("Café « spécial »"), &latin, 0);
        assert_eq!((p[0].data_coding, p[0].short_message.len()), (3, 16));
        let p = build_parts(&message("Привет"), &latin, 0);
        assert_eq!(p[0].data_coding, 8, "not Latin-1: UCS-2");
    }

    #[test]
    fn overrides_priority_and_validity() {
        let mut m = message("x");
        m.category = Some("urgent".into());
        let o = SubmitOptions {
            source_ton: Some(2),
            source_npi: Some(9),
            send_validity: false,
            ..SubmitOptions::default()
        };
        let p = &build_parts(&m, &o, 0)[0];
        assert_eq!((p.priority, p.source.ton, p.source.npi, p.validity_period.as_str()), (1, 2, 9, ""));
        assert_eq!(relative_validity(90_061), "000001010101000R");
    }

    #[test]
    fn addresses_get_their_ton_npi() {
        assert_eq!(source_address("+15551234567"), Address { ton: 1, npi: 1, addr: "15551234567".into() });
        assert_eq!(source_address("12345"), Address { ton: 3, npi: 0, addr: "12345".into() });
        assert_eq!(source_address("15551234567"), Address { ton: 1, npi: 1, addr: "15551234567".into() });
        assert_eq!(source_address(""), Address::default());
    }
}
