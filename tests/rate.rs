//! Rate accuracy, in a test binary of its own so that no other test shares the machine with
//! it inside one `cargo test` binary: a carrier configured at 200 submit_sm/s, measured by the
//! simulator's own timestamps. The tolerance holds on a loaded 2-core machine; the precise
//! figure is printed (and measured for docs/performance.md with the release build).

mod common;

use common::*;
use hyper::StatusCode;
use serde_json::{Value, json};
use smsgate::sim::SimConfig;

const RATE: usize = 200;
const SECONDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_rate_is_what_the_simulator_sees() {
    let certs = Certs::new();
    let sim = TestSim::start(&certs, SimConfig::default(), Some(certs.path("rate.jsonl"))).await;
    let data = tempfile::tempdir().unwrap();
    let text = config_text(data.path(), &certs, sim.tls_port(), "rate = 200\nburst = 20\nbinds = 2\nwindow = 20");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    wait_ready(&gw.client, "sim", 2).await;
    // Enough for the whole window and more: the queue never runs dry while it is measured.
    let total = RATE * (SECONDS + 3);
    for chunk in 0..total.div_ceil(1000) {
        let n = (total - chunk * 1000).min(1000);
        let messages: Vec<Value> =
            (0..n).map(|i| json!({"to": "+14155550123", "body": format!("rate {chunk}-{i}")})).collect();
        let a = gw.client.post("/v1/messages/batch", &json!({"messages": messages})).await;
        assert_eq!((a.status, a.json["accepted"].as_u64()), (StatusCode::OK, Some(n as u64)), "{}", a.json);
    }
    let record = sim.record.clone().unwrap();
    let stamps = || -> Vec<i64> {
        read_record(&record)
            .iter()
            .filter(|r| r["command_status"] == 0)
            .filter_map(|r| r["ts"].as_str()?.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .collect()
    };
    // The first second (the burst) is left out; then SECONDS seconds are counted.
    let want = RATE * (SECONDS + 1) + 20;
    until(std::time::Duration::from_secs(120), "the measured window to pass", || async { stamps().len() >= want })
        .await;
    let stamps = stamps();
    let start = stamps[0] + 1000;
    let end = start + (SECONDS as i64) * 1000;
    let in_window = stamps.iter().filter(|&&t| t >= start && t < end).count();
    let rate = in_window as f64 / SECONDS as f64;
    println!(
        "rate accuracy: configured {RATE}/s, simulator saw {rate:.2}/s over {SECONDS} s ({:+.2} %)",
        (rate / RATE as f64 - 1.0) * 100.0
    );
    // Never above the configured rate (a carrier would throttle or bill for it); below it only
    // by what a loaded machine costs.
    assert!(rate <= RATE as f64 * 1.02, "{rate}/s is above the configured {RATE}/s");
    assert!(rate >= RATE as f64 * 0.85, "{rate}/s is far below the configured {RATE}/s");
    gw.gateway.shutdown().await;
}
