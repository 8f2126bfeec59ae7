//! The store and the accept path without the network: sled append + group commit (apply_batch,
//! flush, fdatasync) at batch sizes 1/16/256 on a real file in a temp dir, the per-message
//! CPU work of an accept (JSON → validate → build record → seal), and opt-out lookups in a
//! registry of 1M entries (`SMSGATE_BENCH_OPTOUTS` to change; 10,000 in `cargo test
//! --benches`). `cargo bench --bench store`.

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
    let mut msg = send::build_message(request, ("k1", "default"), seq, vec!["sim".into()], 86_400);
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

/// What a send checks (one point read per scope) and what `GET /v1/opt-outs/{n}` reads (every
/// scope of one number), among `SMSGATE_BENCH_OPTOUTS` entries.
fn optout_lookup(c: &mut Criterion) {
    use smsgate::compliance::registry;
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let entries: u64 = std::env::var("SMSGATE_BENCH_OPTOUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benchmarking { 1_000_000 } else { 10_000 });
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
    let number = |i: u64| format!("+1415{:07}", i % 10_000_000);
    let started = std::time::Instant::now();
    for chunk in (0..entries).collect::<Vec<_>>().chunks(10_000) {
        let ops = chunk
            .iter()
            .map(|&i| {
                let scope = if i % 10 == 0 { "12345" } else { registry::GLOBAL };
                registry::optout_op(&crypto, &number(i), scope, "import", None, None, ("bench", None), 1, false)
                    .map(|(op, _)| op)
                    .expect("an opt-out op")
            })
            .collect();
        rt.block_on(store.commit(ops)).expect("the registry fills");
    }
    eprintln!("registry of {entries} opt-outs written in {:?}", started.elapsed());
    let scopes = vec![registry::GLOBAL.to_string(), "12345".to_string()];
    let mut i = 0u64;
    let mut g = c.benchmark_group(format!("optout_lookup_{entries}"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("send_check_two_scopes", |b| {
        b.iter(|| {
            i = (i + 7919) % entries;
            let idx = crypto.blind_index(&number(i));
            registry::find_optout(&store, black_box(&idx), &scopes).expect("a lookup")
        })
    });
    g.bench_function("all_scopes_of_one_number", |b| {
        b.iter(|| {
            i = (i + 7919) % entries;
            let idx = crypto.blind_index(&number(i));
            registry::optouts_of(&store, black_box(&idx)).expect("a lookup")
        })
    });
    g.finish();
}

criterion_group!(benches, accept, group_commit, optout_lookup);
criterion_main!(benches);
