//! GSM 03.38 / UCS-2 encoding and segmenting. `cargo bench --bench text`.

/// The allocator the gateway binary uses (src/main.rs), so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use smsgate::text::{self, Encoding};

const GSM_SHORT: &str = "Reminder: your appointment at Main St Clinic is tomorrow at 10:30. Reply STOP to opt out.";
const UCS2_SHORT: &str = "Rappel : votre rendez-vous est demain à 10h30 🙂 Répondez STOP pour vous désabonner.";

fn long_gsm() -> String {
    GSM_SHORT.repeat(6)
}

fn encoding(c: &mut Criterion) {
    let long = long_gsm();
    let mut g = c.benchmark_group("text");
    g.throughput(Throughput::Elements(1));
    g.bench_function("analyze_gsm_90", |b| b.iter(|| text::analyze(black_box(GSM_SHORT))));
    g.bench_function("analyze_ucs2_85", |b| b.iter(|| text::analyze(black_box(UCS2_SHORT))));
    g.bench_function("gsm_encode_90", |b| b.iter(|| text::gsm_encode(black_box(GSM_SHORT)).expect("GSM text")));
    g.bench_function("gsm_encode_pack_90", |b| {
        b.iter(|| text::gsm_pack(&text::gsm_encode(black_box(GSM_SHORT)).expect("GSM text")))
    });
    g.bench_function("ucs2_encode_85", |b| b.iter(|| text::ucs2_encode(black_box(UCS2_SHORT))));
    g.bench_function("split_gsm_540_into_4", |b| {
        b.iter(|| text::split(black_box(&long), Encoding::Gsm7, Encoding::Gsm7.segment_capacity(6)))
    });
    g.bench_function("split_encode_gsm_540", |b| {
        b.iter(|| {
            text::split(black_box(&long), Encoding::Gsm7, Encoding::Gsm7.segment_capacity(6))
                .into_iter()
                .map(|part| text::gsm_encode(part).expect("GSM text").len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, encoding);
criterion_main!(benches);
