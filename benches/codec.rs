//! SMPP codec: submit_sm and deliver_sm (receipt with TLVs) encode + decode, framing, and the
//! receipt-text parser. `cargo bench --bench codec`; figures go to docs/performance.md.

/// The allocator the gateway binary uses (src/main.rs), so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use smsgate::smpp::codec::pdu::{self, Address, ShortMessage, Tlvs};
use smsgate::smpp::codec::receipt;

fn submit_sm() -> ShortMessage {
    ShortMessage {
        source: Address { ton: 5, npi: 0, addr: "CLINIC".into() },
        dest: Address { ton: 1, npi: 1, addr: "14155550123".into() },
        registered_delivery: 1,
        validity_period: "000001000000000R".into(),
        short_message: Bytes::from_static(b"Reminder: your appointment is tomorrow at 10:30. Reply STOP to opt out."),
        ..ShortMessage::default()
    }
}

fn receipt_sm() -> ShortMessage {
    let text = "id:0123456789 sub:001 dlvrd:001 submit date:2611221000 done date:2611221000 stat:DELIVRD err:000 text:Reminder: your";
    ShortMessage {
        source: Address { ton: 1, npi: 1, addr: "14155550123".into() },
        dest: Address { ton: 5, npi: 0, addr: "CLINIC".into() },
        esm_class: 4,
        short_message: Bytes::copy_from_slice(text.as_bytes()),
        tlvs: Tlvs {
            receipted_message_id: Some("0123456789".into()),
            message_state: Some(2),
            network_error_code: Some((3, 0)),
            ..Tlvs::default()
        },
        ..ShortMessage::default()
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let sm = submit_sm();
    // A benchmark of an operation that fails measures nothing: every result is checked.
    let wire = pdu::encode_submit_sm(7, &sm).expect("submit_sm encodes");
    let frame = pdu::frame_of(&wire).expect("submit_sm frames");
    pdu::decode(&frame).expect("submit_sm decodes");
    g.bench_function("submit_sm_encode", |b| {
        b.iter(|| pdu::encode_submit_sm(black_box(7), black_box(&sm)).expect("encodes"))
    });
    g.bench_function("submit_sm_decode", |b| b.iter(|| pdu::decode(black_box(&frame)).expect("decodes")));
    g.bench_function("submit_sm_encode_decode", |b| {
        b.iter(|| {
            let wire = pdu::encode_submit_sm(black_box(7), black_box(&sm)).expect("encodes");
            pdu::decode(&pdu::frame_of(&wire).expect("frames")).expect("decodes")
        })
    });
    let dlr = receipt_sm();
    let wire = pdu::encode_deliver_sm(9, &dlr).expect("deliver_sm encodes");
    let frame = pdu::frame_of(&wire).expect("deliver_sm frames");
    pdu::decode(&frame).expect("deliver_sm decodes");
    g.bench_function("deliver_sm_tlv_encode", |b| {
        b.iter(|| pdu::encode_deliver_sm(black_box(9), black_box(&dlr)).expect("encodes"))
    });
    g.bench_function("deliver_sm_tlv_decode", |b| b.iter(|| pdu::decode(black_box(&frame)).expect("decodes")));
    g.bench_function("submit_sm_resp_encode", |b| {
        b.iter(|| pdu::submit_sm_resp(black_box(7), 0, black_box("0123456789")))
    });
    g.finish();

    let mut g = c.benchmark_group("receipt");
    g.throughput(Throughput::Elements(1));
    let mut text_only = receipt_sm();
    text_only.tlvs = Tlvs::default();
    g.bench_function("parse_text", |b| b.iter(|| receipt::parse(black_box(&text_only))));
    g.bench_function("parse_tlvs", |b| b.iter(|| receipt::parse(black_box(&dlr))));
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
