//! smsgate-loadtest: drives smsgate's HTTPS API and reports what it saw.
//!
//! * closed loop (`--mode closed`): every connection sends the next request as soon as the
//!   previous one is answered;
//! * open loop (`--mode open --rate R`): requests are due at fixed intended times
//!   (t0 + i/R); latency is measured from the intended time, so a stall shows up in the
//!   percentiles instead of silently lowering the offered load (no coordinated omission);
//! * single sends or batches (`--batch N`), HTTP/1.1 or HTTP/2 (`--http2`), unique
//!   destination numbers, bounded by `--duration` and `--count`.
//!
//! With `--sim-control` it reads the SMSC simulator's `/stats` before and after, and with
//! `--metrics` smsgate's `/metrics`, to report submit_sm/s, receipts/s, accept → delivered
//! percentiles (from the histogram) and the gateway's CPU per message.

/// Same allocator as the gateway: the generator shares the 2 cores it measures on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    Closed,
    Open,
}

/// Load generator for smsgate.
#[derive(Debug, Parser)]
#[command(name = "smsgate-loadtest", version)]
struct Args {
    /// API base URL.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// API key (Bearer token).
    #[arg(long, env = "SMSGATE_KEY")]
    key: String,
    /// PEM CA (or self-signed certificate) to trust for the API.
    #[arg(long)]
    ca: PathBuf,
    /// Name to verify in the certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Connections (closed loop: also the concurrency).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// HTTP/2 (ALPN h2); `--streams` requests in flight per connection.
    #[arg(long)]
    http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// closed or open loop.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Open loop: requests per second offered.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Messages per request (1 = POST /v1/messages; more = the batch endpoint).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Message text.
    #[arg(long, default_value = "Reminder: your appointment is tomorrow at 10:30. Reply STOP to opt out.")]
    body: String,
    /// SMSC simulator control URL (http://127.0.0.1:8775) for carrier-side rates.
    #[arg(long)]
    sim_control: Option<String>,
    /// smsgate metrics URL (http://127.0.0.1:9464/metrics) for delivery latency and CPU.
    #[arg(long)]
    metrics: Option<String>,
    /// After the send phase, wait up to this many seconds for the carrier side to catch up.
    #[arg(long, default_value_t = 0.0)]
    drain: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Unique, valid NANP destinations: area codes × exchanges × lines.
fn destination(n: u64) -> String {
    const AREAS: [u32; 12] = [212, 305, 312, 415, 469, 512, 617, 646, 702, 718, 917, 971];
    let line = n % 10_000;
    let exchange = 200 + (n / 10_000) % 800;
    let area = AREAS[((n / 8_000_000) % AREAS.len() as u64) as usize];
    format!("+1{area}{exchange:03}{line:04}")
}

struct Shared {
    args: Args,
    started: Instant,
    next: AtomicU64,
    stop: AtomicBool,
    accepted: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    /// Claims the next message numbers for one request; `None` when a bound is reached.
    fn load_over(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.started.elapsed().as_secs_f64() >= self.args.duration
    }

    fn claim(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || self.started.elapsed().as_secs_f64() >= self.args.duration {
            return None;
        }
        let n = self.next.fetch_add(self.args.batch as u64, Ordering::Relaxed);
        if self.args.count.is_some_and(|c| n >= c) {
            return None;
        }
        Some(n)
    }

    fn body(&self, n: u64) -> Bytes {
        let msg = |i: u64| json!({"to": destination(i), "body": self.args.body});
        let v = if self.args.batch <= 1 {
            msg(n)
        } else {
            json!({"messages": (0..self.args.batch as u64).map(|i| msg(n + i)).collect::<Vec<_>>()})
        };
        Bytes::from(v.to_string())
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

enum Conn {
    H1(Sender),
    H2(Sender2),
}

async fn connect(args: &Args, tls: &Arc<rustls::ClientConfig>) -> Result<Conn> {
    let uri: hyper::Uri = args.url.parse()?;
    let host = uri.host().context("URL host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(args.server_name.clone())?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?;
    let io = TokioIo::new(stream);
    if args.http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Conn::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn::H1(sender))
    }
}

async fn send(conn: &mut Conn, shared: &Shared, body: Bytes) -> Result<(u16, Bytes)> {
    let path = if shared.args.batch <= 1 { "/v1/messages" } else { "/v1/messages/batch" };
    let req = Request::post(path)
        .header("host", &shared.args.server_name)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", shared.args.key))
        .body(Full::new(body))?;
    let resp = match conn {
        Conn::H1(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Conn::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

async fn record(shared: &Shared, status: u16, body: &Bytes, latency: Duration) {
    let accepted = match status {
        202 => 1,
        200 if shared.args.batch > 1 => {
            serde_json::from_slice::<Value>(body).ok().and_then(|v| v["accepted"].as_u64()).unwrap_or(0)
        }
        _ => 0,
    };
    shared.accepted.fetch_add(accepted, Ordering::Relaxed);
    if status != 202 && status != 200 {
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(String::from))
            .unwrap_or_default();
        *shared.errors.lock().await.entry(format!("{status} {code}")).or_default() += 1;
    }
    let _ = shared.hist.lock().await.record(latency.as_micros().max(1) as u64);
}

/// Closed loop: send, wait, send.
async fn closed_worker(shared: Arc<Shared>, mut conn: Conn) {
    while let Some(n) = shared.claim() {
        let t = Instant::now();
        match send(&mut conn, &shared, shared.body(n)).await {
            Ok((status, body)) => record(&shared, status, &body, t.elapsed()).await,
            Err(e) => {
                *shared.errors.lock().await.entry(format!("transport: {e}")).or_default() += 1;
                return;
            }
        }
    }
}

/// Open loop: takes tickets (intended send times) and measures from them.
async fn open_worker(
    shared: Arc<Shared>,
    mut conn: Conn,
    tickets: Arc<Mutex<tokio::sync::mpsc::Receiver<(u64, Instant)>>>,
) {
    loop {
        let ticket = tickets.lock().await.recv().await;
        let Some((n, intended)) = ticket else { return };
        match send(&mut conn, &shared, shared.body(n)).await {
            Ok((status, body)) => record(&shared, status, &body, intended.elapsed()).await,
            Err(e) => {
                *shared.errors.lock().await.entry(format!("transport: {e}")).or_default() += 1;
                return;
            }
        }
    }
}

async fn get_json(url: &str) -> Option<Value> {
    let out = tokio::process::Command::new("curl").args(["-s", "--max-time", "5", url]).output().await.ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

async fn get_text(url: &str) -> Option<String> {
    let out = tokio::process::Command::new("curl").args(["-s", "--max-time", "5", url]).output().await.ok()?;
    String::from_utf8(out.stdout).ok()
}

/// Sum of a metric's samples (all label sets) in a Prometheus exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && (l.as_bytes().get(name.len()) == Some(&b' ') || l.as_bytes().get(name.len()) == Some(&b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Cumulative bucket counts of a histogram summed over label sets: le → count.
fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut map: BTreeMap<u64, f64> = BTreeMap::new();
    for l in text.lines().filter(|l| l.starts_with(&prefix)) {
        let Some(le) = l.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
        let v: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *map.entry(le.to_bits()).or_default() += v;
    }
    let mut v: Vec<(f64, f64)> = map.into_iter().map(|(k, c)| (f64::from_bits(k), c)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// Quantile from the difference of two bucket snapshots, linear within a bucket.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map(|(_, c)| *c).unwrap_or(0.0)))
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for (le, c) in &diff {
        if *c >= target {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let frac = if c - prev.1 > 0.0 { (target - prev.1) / (c - prev.1) } else { 1.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (*le, *c);
    }
    None
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.batch == 0 || args.batch > 1000 {
        bail!("--batch is 1 to 1000");
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&args.ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = if args.http2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    let tls = Arc::new(tls);

    let sim_before = match &args.sim_control {
        Some(u) => get_json(&format!("{u}/stats")).await,
        None => None,
    };
    let metrics_before = match &args.metrics {
        Some(u) => get_text(u).await,
        None => None,
    };

    // One worker per HTTP/1.1 connection, `--streams` workers per HTTP/2 connection.
    let mut conns = Vec::new();
    for i in 0..args.connections {
        match connect(&args, &tls).await.with_context(|| format!("connection {i}"))? {
            Conn::H1(s) => conns.push(Conn::H1(s)),
            Conn::H2(s) => conns.extend((0..args.streams).map(|_| Conn::H2(s.clone()))),
        }
    }
    let shared = Arc::new(Shared {
        started: Instant::now(),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        errors: Mutex::new(BTreeMap::new()),
        args,
    });
    let mut tasks = Vec::new();
    let mut ticket_task = None;
    let tickets = if shared.args.mode == Mode::Open {
        let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(1_000_000);
        let sh = shared.clone();
        ticket_task = Some(tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / sh.args.rate);
            let t0 = Instant::now();
            let mut i = 0u64;
            while let Some(n) = sh.claim() {
                let due = t0 + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                if tx.send((n, due)).await.is_err() {
                    return;
                }
                i += 1;
            }
        }));
        Some(Arc::new(Mutex::new(rx)))
    } else {
        None
    };
    for conn in conns {
        let sh = shared.clone();
        tasks.push(match &tickets {
            Some(t) => tokio::spawn(open_worker(sh, conn, t.clone())),
            None => tokio::spawn(closed_worker(sh, conn)),
        });
    }
    // Once a second while the load runs: the queue depth ("flat" is the end-to-end claim) and
    // the carrier's submit_sm rate (a throttled carrier's steady rate).
    let sampler = {
        let sh = shared.clone();
        tokio::spawn(async move {
            let (mut depth, mut carrier_rates) = (Vec::new(), Vec::new());
            let mut last: Option<(Instant, f64)> = None;
            while !sh.load_over() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(text) = sh.args.metrics.as_deref().map(get_text) {
                    depth.extend(text.await.map(|t| metric_sum(&t, "smsgate_queue_depth")));
                }
                let Some(url) = &sh.args.sim_control else { continue };
                let Some(n) = get_json(&format!("{url}/stats")).await.and_then(|s| s["submit_sm_ok"].as_f64()) else {
                    continue;
                };
                let now = Instant::now();
                if let Some((t, m)) = last {
                    carrier_rates.push((n - m) / (now - t).as_secs_f64());
                }
                last = Some((now, n));
            }
            (depth, carrier_rates)
        })
    };
    if let Some(t) = ticket_task {
        let _ = t.await;
    }
    for t in tasks {
        let _ = t.await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let (depth, carrier_rates) = sampler.await.unwrap_or_default();
    let elapsed = shared.started.elapsed().as_secs_f64();
    let accepted = shared.accepted.load(Ordering::Relaxed);

    // Carrier side: wait for the submits to catch up, if asked.
    let mut sim_after = None;
    if let Some(u) = &shared.args.sim_control {
        let deadline = Instant::now() + Duration::from_secs_f64(shared.args.drain);
        loop {
            sim_after = get_json(&format!("{u}/stats")).await;
            let before = sim_before.as_ref().and_then(|s| s["submit_sm_ok"].as_u64()).unwrap_or(0);
            let now = sim_after.as_ref().and_then(|s| s["submit_sm_ok"].as_u64()).unwrap_or(0);
            if now - before >= accepted || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let metrics_after = match &shared.args.metrics {
        Some(u) => get_text(u).await,
        None => None,
    };

    let h = shared.hist.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let mut report = json!({
        "mode": format!("{:?}", shared.args.mode).to_lowercase(),
        "http": if shared.args.http2 { "h2" } else { "http/1.1" },
        "connections": shared.args.connections,
        "batch": shared.args.batch,
        "seconds": elapsed,
        "requests": h.len(),
        "accepted": accepted,
        "accepted_per_sec": accepted as f64 / elapsed,
        "errors": *shared.errors.lock().await,
        "accept_latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99.9": ms(0.999), "max": h.max() as f64 / 1000.0},
    });
    if carrier_rates.len() >= 3 {
        let mut sorted = carrier_rates.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        // Skip the first second and the last (partial) one.
        let middle = &carrier_rates[1..carrier_rates.len() - 1];
        report["carrier_rate_per_second"] = json!({
            "median": sorted[sorted.len() / 2],
            "mean_excluding_first_and_last": middle.iter().sum::<f64>() / middle.len() as f64,
            "samples": carrier_rates,
        });
    }
    if !depth.is_empty() {
        report["queue_depth"] = json!({
            "max": depth.iter().cloned().fold(0.0, f64::max),
            "at_end_of_load": depth.last(),
            "per_second": depth,
        });
    }
    if shared.args.mode == Mode::Open {
        report["offered_per_sec"] = json!(shared.args.rate * shared.args.batch as f64);
    }
    if let (Some(b), Some(a)) = (&sim_before, &sim_after) {
        let d = |k: &str| a[k].as_f64().unwrap_or(0.0) - b[k].as_f64().unwrap_or(0.0);
        let first = a["first_submit_at"].as_f64().unwrap_or(0.0).max(b["last_submit_at"].as_f64().unwrap_or(0.0));
        let span = ((a["last_submit_at"].as_f64().unwrap_or(0.0) - first) / 1000.0).max(1e-3);
        report["carrier"] = json!({
            "submit_sm_ok": d("submit_sm_ok"),
            "submit_sm_per_sec": d("submit_sm_ok") / span,
            "receipts_acked": d("dlr_resp_ok"),
            "receipts_per_sec": d("dlr_resp_ok") / span,
            "throttled": d("throttled"),
            "span_seconds": span,
            "simulator_cpu_ms": d("cpu_user_ms") + d("cpu_system_ms"),
        });
    }
    if let (Some(b), Some(a)) = (&metrics_before, &metrics_after) {
        let cpu =
            metric_sum(a, "smsgate_process_cpu_seconds_total") - metric_sum(b, "smsgate_process_cpu_seconds_total");
        let delivered = metric_sum(a, "smsgate_delivery_latency_seconds_count")
            - metric_sum(b, "smsgate_delivery_latency_seconds_count");
        let (db, da) = (buckets(b, "smsgate_delivery_latency_seconds"), buckets(a, "smsgate_delivery_latency_seconds"));
        let (sb, sa) = (buckets(b, "smsgate_submit_latency_seconds"), buckets(a, "smsgate_submit_latency_seconds"));
        let q = |bf: &[(f64, f64)], af: &[(f64, f64)], x| quantile(bf, af, x).map(|s| s * 1000.0);
        let (cb, ca) = (buckets(b, "smsgate_store_commit_seconds"), buckets(a, "smsgate_store_commit_seconds"));
        let (rb, ra) =
            (buckets(b, "smsgate_api_request_duration_seconds"), buckets(a, "smsgate_api_request_duration_seconds"));
        let commits =
            metric_sum(a, "smsgate_store_commit_seconds_count") - metric_sum(b, "smsgate_store_commit_seconds_count");
        report["gateway"] = json!({
            "cpu_seconds": cpu,
            "cpu_us_per_accepted_message": if accepted > 0 { cpu * 1e6 / accepted as f64 } else { 0.0 },
            "delivered": delivered,
            "accept_to_submitted_ms": {"p50": q(&sb, &sa, 0.5), "p99": q(&sb, &sa, 0.99)},
            "accept_to_delivered_ms": {"p50": q(&db, &da, 0.5), "p99": q(&db, &da, 0.99), "note": "interpolated from histogram buckets"},
            "rss_mb": metric_sum(a, "smsgate_process_resident_memory_bytes") / 1048576.0,
            "store_commits": commits,
            "store_commit_ms": {"p50": q(&cb, &ca, 0.5), "p99": q(&cb, &ca, 0.99)},
            "api_request_ms": {"p50": q(&rb, &ra, 0.5), "p99": q(&rb, &ra, 0.99), "note": "server side, every endpoint"},
        });
    }
    if shared.args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(())
}

fn ms1(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

fn print_human(r: &Value) {
    println!(
        "smsgate-loadtest: {} loop, {}, {} connections, batch {}",
        r["mode"].as_str().unwrap_or(""),
        r["http"].as_str().unwrap_or(""),
        r["connections"],
        r["batch"]
    );
    if let Some(o) = r.get("offered_per_sec") {
        println!("  offered       {:.0} msg/s", o.as_f64().unwrap_or(0.0));
    }
    println!(
        "  accepted      {} in {:.2} s = {:.0} msg/s",
        r["accepted"],
        r["seconds"].as_f64().unwrap_or(0.0),
        r["accepted_per_sec"].as_f64().unwrap_or(0.0)
    );
    let l = &r["accept_latency_ms"];
    println!(
        "  accept latency p50 {:.2} ms  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        l["p50"].as_f64().unwrap_or(0.0),
        l["p90"].as_f64().unwrap_or(0.0),
        l["p99"].as_f64().unwrap_or(0.0),
        l["p99.9"].as_f64().unwrap_or(0.0),
        l["max"].as_f64().unwrap_or(0.0)
    );
    if let Some(e) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        println!("  errors        {e:?}");
    }
    if let Some(c) = r.get("carrier") {
        println!(
            "  carrier       {} submit_sm ({:.0}/s), {} receipts ({:.0}/s), {} throttled",
            c["submit_sm_ok"],
            c["submit_sm_per_sec"].as_f64().unwrap_or(0.0),
            c["receipts_acked"],
            c["receipts_per_sec"].as_f64().unwrap_or(0.0),
            c["throttled"]
        );
    }
    if let Some(g) = r.get("gateway") {
        println!(
            "  gateway       {:.1} µs CPU per message, RSS {:.0} MB, accept→submitted p50 {} p99 {} ms, accept→delivered p50 {} p99 {} ms",
            g["cpu_us_per_accepted_message"].as_f64().unwrap_or(0.0),
            g["rss_mb"].as_f64().unwrap_or(0.0),
            ms1(&g["accept_to_submitted_ms"]["p50"]),
            ms1(&g["accept_to_submitted_ms"]["p99"]),
            ms1(&g["accept_to_delivered_ms"]["p50"]),
            ms1(&g["accept_to_delivered_ms"]["p99"])
        );
    }
    if let Some(g) = r.get("gateway") {
        println!(
            "  server side   request p50 {} p99 {} ms; {} group commits, commit p50 {} p99 {} ms",
            ms1(&g["api_request_ms"]["p50"]),
            ms1(&g["api_request_ms"]["p99"]),
            g["store_commits"],
            ms1(&g["store_commit_ms"]["p50"]),
            ms1(&g["store_commit_ms"]["p99"])
        );
    }
    if let Some(c) = r.get("carrier_rate_per_second") {
        println!(
            "  carrier rate  median {:.0}/s per second sampled during the load (mean {:.0}/s without the first and last)",
            c["median"].as_f64().unwrap_or(0.0),
            c["mean_excluding_first_and_last"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(d) = r.get("queue_depth") {
        println!("  queue depth   max {} during the load, {} at its end", d["max"], d["at_end_of_load"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_unique_and_well_formed() {
        let set: std::collections::HashSet<String> = (0..100_000).map(destination).collect();
        assert_eq!(set.len(), 100_000);
        assert!(set.iter().all(|d| d.len() == 12 && d.starts_with("+1")));
    }

    #[test]
    fn quantiles_from_buckets() {
        let before = vec![(0.01, 0.0), (0.1, 0.0), (f64::INFINITY, 0.0)];
        let after = vec![(0.01, 50.0), (0.1, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&before, &after, 0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((quantile(&before, &after, 0.75).unwrap() - 0.055).abs() < 1e-9);
    }
}
