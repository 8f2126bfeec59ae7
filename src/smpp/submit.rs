//! Turns a stored message into the `submit_sm` PDUs that carry it: encoding, segmenting with a
//! concatenation UDH, addresses with their TON/NPI.

use bytes::{BufMut, Bytes, BytesMut};

use super::pdu::{Address, ShortMessage};
use crate::message::Message;
use crate::text::{self, Encoding};

/// Per-carrier choices for building PDUs.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Sender when the message has none.
    pub default_source: Option<String>,
    /// Ask for delivery receipts (`registered_delivery` = 1).
    pub registered_delivery: bool,
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

/// The 8-bit-reference concatenation UDH (IEI 0x00): `05 00 03 ref total seq`.
fn udh_8bit(reference: u8, total: u8, seq: u8) -> [u8; 6] {
    [0x05, 0x00, 0x03, reference, total, seq]
}

/// All segments of `msg`, in order, whether or not they were submitted before; the caller
/// skips those that already have a carrier id. Splitting is deterministic, so segment `i`
/// is the same bytes on every attempt and a handset reassembles parts from different attempts.
pub fn build_parts(msg: &Message, options: &SubmitOptions) -> Vec<ShortMessage> {
    let body = &msg.content.body;
    let source = msg.content.from.as_deref().or(options.default_source.as_deref()).unwrap_or("");
    let template = ShortMessage {
        source: source_address(source),
        dest: Address { ton: 1, npi: 1, addr: msg.content.to.trim_start_matches('+').to_string() },
        registered_delivery: u8::from(options.registered_delivery),
        data_coding: match msg.encoding {
            Encoding::Gsm7 => 0x00,
            Encoding::Ucs2 => 0x08,
        },
        ..ShortMessage::default()
    };
    let encode = |s: &str| -> Vec<u8> {
        match msg.encoding {
            // A message stored as GSM-7 was checked at accept; fall back to UCS-2 defensively.
            Encoding::Gsm7 => text::gsm_encode(s).unwrap_or_else(|| text::ucs2_encode(s)),
            Encoding::Ucs2 => text::ucs2_encode(s),
        }
    };
    if msg.segments <= 1 {
        return vec![ShortMessage { short_message: Bytes::from(encode(body)), ..template }];
    }
    let pieces = text::split(body, msg.encoding, msg.encoding.segment_capacity(6));
    let total = pieces.len().min(255) as u8;
    let reference = (msg.seq & 0xFF) as u8;
    pieces
        .iter()
        .take(255)
        .enumerate()
        .map(|(i, piece)| {
            let mut sm = BytesMut::with_capacity(6 + piece.len() * 2);
            sm.put_slice(&udh_8bit(reference, total, i as u8 + 1));
            sm.put_slice(&encode(piece));
            ShortMessage { esm_class: 0x40, short_message: sm.freeze(), ..template.clone() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Content, Status};

    fn message(body: &str) -> Message {
        let a = text::analyze(body);
        Message {
            id: "01TEST".into(),
            key_id: "k".into(),
            seq: 0x1234,
            content: Content { to: "+14155550123".into(), from: Some("CLINIC".into()), body: body.into() },
            client_ref: None,
            callback_url: None,
            category: None,
            encoding: a.encoding,
            segments: a.segments as u32,
            created_ms: 0,
            due_ms: 0,
            expires_ms: 0,
            status: Status::Queued,
            route: vec!["c".into()],
            carrier: None,
            parts: vec![],
            attempts: 0,
            error: None,
            history: vec![],
        }
    }

    #[test]
    fn single_gsm_message() {
        let parts =
            build_parts(&message("Hi [you]"), &SubmitOptions { registered_delivery: true, ..Default::default() });
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!((p.data_coding, p.esm_class, p.registered_delivery), (0, 0, 1));
        assert_eq!(p.short_message.as_ref(), b"Hi \x1b<you\x1b>");
        assert_eq!(p.dest, Address { ton: 1, npi: 1, addr: "14155550123".into() });
        assert_eq!(p.source, Address { ton: 5, npi: 0, addr: "CLINIC".into() });
    }

    #[test]
    fn long_ucs2_message_gets_udh_and_reassembles() {
        let body = "Привет 👋 ".repeat(20);
        let msg = message(&body);
        let parts = build_parts(&msg, &SubmitOptions::default());
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
    fn addresses_get_their_ton_npi() {
        assert_eq!(source_address("+15551234567"), Address { ton: 1, npi: 1, addr: "15551234567".into() });
        assert_eq!(source_address("12345"), Address { ton: 3, npi: 0, addr: "12345".into() });
        assert_eq!(source_address("15551234567"), Address { ton: 1, npi: 1, addr: "15551234567".into() });
        assert_eq!(source_address(""), Address::default());
    }
}
