//! Property tests ("fuzzing") for every place smsgate parses bytes that come from a carrier:
//! PDU framing, PDU decoding (strict and lenient), receipt text, inbound text decoding. The
//! property is always the same: whatever the bytes, no panic, and framing never hands out a
//! frame that breaks its own invariants. Case counts are modest so CI stays fast (512 each);
//! `PROPTEST_CASES=100000` runs that many instead.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use smsgate::smpp::codec::frame::FrameReader;
use smsgate::smpp::codec::pdu::{self, Frame, ShortMessage, id};
use smsgate::smpp::codec::receipt;

/// `PROPTEST_CASES` if set, else 512.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

/// Failures are kept (and replayed first) in the repository, as for the unit tests.
fn persistence() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/fuzz_carrier_bytes.txt")))
}

/// A command id a carrier may send: mostly the known ones (so strict decoding is exercised),
/// sometimes anything.
fn command_id() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => prop::sample::select(vec![
            id::DELIVER_SM,
            id::SUBMIT_SM,
            id::GENERIC_NACK,
            id::ENQUIRE_LINK,
            id::UNBIND,
            id::BIND_TRANSCEIVER,
            0x8000_0001,
            0x8000_0002,
            0x8000_0004,
            0x8000_0005,
            0x8000_0006,
            0x8000_0009,
            0x8000_0015,
            0x0000_0103,
            0x0000_0003,
            0x0000_0008,
        ]),
        1 => any::<u32>(),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// A PDU-shaped byte string: a plausible header (sometimes a wrong length) and a random body.
fn pdu_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        command_id(),
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
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: persistence(), ..ProptestConfig::default() })]

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
    fn decoding_any_frame_never_panics(id in command_id(), status in any::<u32>(), seq in any::<u32>(),
                                       body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let frame = Frame { command_id: id, status, seq, body: Bytes::from(body.clone()) };
        let _ = pdu::decode(&frame);
        let _ = pdu::lenient_short_message(&Bytes::from(body));
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

/// Receipts damaged byte by byte never panic the decoder, the receipt parser or the text
/// decoder; and enough of them still decode as `deliver_sm` for the parsers to be reached
/// (counted, so that a generator that stops producing decodable PDUs fails the test).
#[test]
fn mutated_deliver_sm_never_panics() {
    use proptest::test_runner::{Config, TestRunner};
    let strategy = (proptest::collection::vec((0usize..200, any::<u8>()), 0..8), 0usize..200, ".{0,80}");
    let mut runner =
        TestRunner::new(Config { cases: cases(), failure_persistence: persistence(), ..Config::default() });
    let reached = std::cell::Cell::new(0u32);
    runner
        .run(&strategy, |(flips, cut, text)| {
            let sm = ShortMessage {
                esm_class: 4,
                short_message: Bytes::from(text.into_bytes()),
                tlvs: pdu::Tlvs {
                    receipted_message_id: Some("abc".into()),
                    message_state: Some(2),
                    ..Default::default()
                },
                ..ShortMessage::default()
            };
            let encoded = pdu::encode_deliver_sm(1, &sm).expect("encodes");
            let mut bytes = encoded.to_vec();
            for (at, v) in flips {
                if at < bytes.len() {
                    bytes[at] = v;
                }
            }
            bytes.truncate(cut.max(16).min(bytes.len()));
            let len = bytes.len() as u32;
            bytes[..4].copy_from_slice(&len.to_be_bytes());
            if let Some(f) = pdu::frame_of(&bytes)
                && let Ok(pdu::Pdu::DeliverSm(sm)) = pdu::decode(&f)
            {
                reached.set(reached.get() + 1);
                let _ = receipt::parse(&sm);
                let _ = smsgate::inbound::decode_text(&sm);
            }
            Ok(())
        })
        .unwrap();
    let n = reached.get();
    println!("mutated deliver_sm: {n} of {} cases reached the receipt parser", cases());
    assert!(
        n >= cases() / 10,
        "only {n} of {} mutated PDUs decoded; the generator no longer tests the parsers",
        cases()
    );
}
