//! Property tests ("fuzzing") for every place smsgate parses bytes that come from a carrier:
//! PDU framing, PDU decoding (strict and lenient), receipt text, inbound text decoding. The
//! property is always the same: whatever the bytes, no panic, and framing never hands out a
//! frame that breaks its own invariants. Case counts are modest so CI stays fast; raise
//! `PROPTEST_CASES` for a longer run.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use smsgate::smpp::frame::FrameReader;
use smsgate::smpp::pdu::{self, Frame, ShortMessage};
use smsgate::smpp::receipt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// A PDU-shaped byte string: a plausible header (sometimes a wrong length) and a random body.
fn pdu_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0x0000_0005u32), Just(0x0000_0004), Just(0x8000_0004), Just(0x0000_0009), any::<u32>()],
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..400),
        prop_oneof![Just(0i64), -20i64..20],
    )
        .prop_map(|(id, status, seq, body, skew)| {
            let mut b = BytesMut::new();
            b.put_u32(((16 + body.len()) as i64 + skew).max(0) as u32);
            b.put_u32(id);
            b.put_u32(status);
            b.put_u32(seq);
            b.put_slice(&body);
            b.to_vec()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn framing_never_panics_and_frames_are_consistent(chunks in proptest::collection::vec(pdu_bytes(), 1..6)) {
        let wire: Vec<u8> = chunks.concat();
        runtime().block_on(async {
            let mut r = FrameReader::new(&wire[..]);
            let mut taken = 0usize;
            while let Ok(Some(f)) = r.next().await {
                taken += 16 + f.body.len();
                prop_assert!(taken <= wire.len());
                let _ = pdu::decode(&f);
            }
            Ok(())
        })?;
    }

    #[test]
    fn decoding_any_frame_never_panics(id in any::<u32>(), status in any::<u32>(), seq in any::<u32>(),
                                       body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let frame = Frame { command_id: id, status, seq, body: Bytes::from(body.clone()) };
        let _ = pdu::decode(&frame);
        let _ = pdu::lenient_short_message(&Bytes::from(body));
    }

    #[test]
    fn mutated_deliver_sm_never_panics(flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..8),
                                      cut in 0usize..200, text in ".{0,80}") {
        let sm = ShortMessage {
            esm_class: 4,
            short_message: Bytes::from(text.into_bytes()),
            tlvs: pdu::Tlvs { receipted_message_id: Some("abc".into()), message_state: Some(2), ..Default::default() },
            ..ShortMessage::default()
        };
        let Ok(encoded) = pdu::encode_deliver_sm(1, &sm) else { return Ok(()) };
        let mut bytes = encoded.to_vec();
        for (at, v) in flips {
            if at < bytes.len() { bytes[at] = v; }
        }
        bytes.truncate(cut.max(16).min(bytes.len()));
        let len = bytes.len() as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        if let Some(f) = pdu::frame_of(&bytes)
            && let Ok(pdu::Pdu::DeliverSm(sm)) = pdu::decode(&f)
        {
            let _ = receipt::parse(&sm);
            let _ = smsgate::inbound::decode_text(&sm);
        }
    }

    #[test]
    fn receipt_text_never_panics(text in ".{0,300}") {
        let _ = receipt::parse_text(&text);
        let sm = ShortMessage { esm_class: 4, short_message: Bytes::from(text.clone().into_bytes()), ..ShortMessage::default() };
        if let Some(r) = receipt::parse(&sm) {
            prop_assert!(!r.id.trim().is_empty());
        }
    }

    #[test]
    fn receipt_fields_are_found_wherever_they_sit(id in "[0-9A-Fa-f]{1,20}", stat in "(DELIVRD|UNDELIV|EXPIRED|REJECTD|ENROUTE)",
                                                 pre in "[a-z ]{0,10}") {
        let text = format!("{pre} id:{id} sub:001 dlvrd:001 submit date:2611221530 done date:2611221531 stat:{stat} err:000 text:x");
        let (got_id, got_stat, _) = receipt::parse_text(&text);
        prop_assert_eq!(got_id, Some(id.as_str()));
        prop_assert_eq!(got_stat, Some(stat.as_str()));
    }
}
