//! The store and the accept path without the network: sled append + group commit (apply_batch,
//! flush, fdatasync) at batch sizes 1/16/256 on a real file in a temp dir, and the per-message
//! CPU work of an accept (JSON → validate → build record → seal). `cargo bench --bench store`.

/// The allocator the gateway binary uses (src/main.rs), so the figures match production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use serde_json::Value;
use smsgate::api::send::{self, Limits};
use smsgate::crypto::Crypto;
use smsgate::message::Message;
use smsgate::store::{self, Op, Store, StoreOptions};

const REQUEST: &[u8] =
    br#"{"to":"+14155550123","body":"Reminder: your appointment at Main St Clinic is tomorrow at 10:30.","client_ref":"appt-8812"}"#;
const LIMITS: Limits = Limits { max_body_chars: 1600 };

fn crypto() -> Arc<Crypto> {
    match Crypto::parse(&Crypto::generate_file_text()) {
        Ok(c) => Arc::new(c),
        Err(e) => panic!("bench keys: {e}"),
    }
}

/// Everything an accept does to one request before the group commit (a request that does
/// not validate fails the benchmark: it would measure the error path).
fn prepare(crypto: &Crypto, raw: &[u8], seq: u64) -> Message {
    let value: Value = serde_json::from_slice(raw).expect("the request is JSON");
    let request = send::parse(&value, LIMITS).expect("the request validates");
    let mut msg = send::build_message(request, "k1", seq, vec!["sim".into()], 86_400);
    msg.sealed = Some(store::seal_content(crypto, &msg));
    msg
}

fn accept(c: &mut Criterion) {
    let crypto = crypto();
    let mut g = c.benchmark_group("accept");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_build_seal", |b| b.iter(|| prepare(&crypto, black_box(REQUEST), 1)));
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let crypto = crypto();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temp dir: {e}"),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    };
    let store = match Store::open(dir.path(), &StoreOptions::default(), crypto.clone()) {
        Ok(s) => s,
        Err(e) => panic!("open store: {e}"),
    };
    let mut seq = 0u64;
    let mut g = c.benchmark_group("store_group_commit");
    for batch in [1usize, 16, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter_batched(
                || {
                    (0..batch)
                        .map(|_| {
                            seq += 1;
                            Op::Insert(Box::new(prepare(&crypto, REQUEST, seq)))
                        })
                        .collect::<Vec<_>>()
                },
                |ops| rt.block_on(store.commit(ops)).expect("the group commit succeeds"),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, accept, group_commit);
criterion_main!(benches);
