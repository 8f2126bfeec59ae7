//! Prometheus metrics: the names from DESIGN.md (prefix `smsgate_`), the recorder, and small
//! helpers so the rest of the code never spells a metric name.
//!
//! Labels carry carrier names, routes, statuses and keywords only: never a number or a body.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `api_requests_total{route,status}`
pub const API_REQUESTS: &str = "smsgate_api_requests_total";
/// `api_request_duration_seconds{route}`
pub const API_REQUEST_DURATION: &str = "smsgate_api_request_duration_seconds";
/// `messages_accepted_total`
pub const MESSAGES_ACCEPTED: &str = "smsgate_messages_accepted_total";
/// `messages_submitted_total{carrier}`
pub const MESSAGES_SUBMITTED: &str = "smsgate_messages_submitted_total";
/// `messages_final_total{carrier,status}`
pub const MESSAGES_FINAL: &str = "smsgate_messages_final_total";
/// `submit_latency_seconds{carrier}`: accept → `submit_sm_resp`.
pub const SUBMIT_LATENCY: &str = "smsgate_submit_latency_seconds";
/// `delivery_latency_seconds{carrier}`: accept → receipt.
pub const DELIVERY_LATENCY: &str = "smsgate_delivery_latency_seconds";
/// `queue_depth{carrier}`
pub const QUEUE_DEPTH: &str = "smsgate_queue_depth";
/// `smpp_binds{carrier,state}`
pub const SMPP_BINDS: &str = "smsgate_smpp_binds";
/// `smpp_throttled_total{carrier}`
pub const SMPP_THROTTLED: &str = "smsgate_smpp_throttled_total";
/// `receipt_id_fallback_total{carrier,form}`
pub const RECEIPT_ID_FALLBACK: &str = "smsgate_receipt_id_fallback_total";
/// `smpp_inbound_throttled_total{carrier}`
pub const SMPP_INBOUND_THROTTLED: &str = "smsgate_smpp_inbound_throttled_total";
/// `smpp_window_in_use{carrier}`
pub const SMPP_WINDOW_IN_USE: &str = "smsgate_smpp_window_in_use";
/// `smpp_generic_nack_total{carrier,direction}`: malformed or unknown PDUs.
pub const SMPP_GENERIC_NACK: &str = "smsgate_smpp_generic_nack_total";
/// `receipts_total{carrier,result}`: matched, orphan (before its resp), unknown.
pub const RECEIPTS: &str = "smsgate_receipts_total";
/// `inbound_total{carrier,kind}`
pub const INBOUND: &str = "smsgate_inbound_total";
/// `inbound_unrouted_total{carrier}`: inbound texts to an address no account owns.
pub const INBOUND_UNROUTED: &str = "smsgate_inbound_unrouted_total";
/// `optouts_total{keyword}`
pub const OPTOUTS: &str = "smsgate_optouts_total";
/// `content_flags_total{rule}`: PHI content rules matched under `flag`.
pub const CONTENT_FLAGS: &str = "smsgate_content_flags_total";
/// `compliance_rejections_total{reason}`: sends refused at accept by a compliance rule.
pub const COMPLIANCE_REJECTIONS: &str = "smsgate_compliance_rejections_total";
/// `webhooks_total{result}`: webhook deliveries.
pub const WEBHOOKS: &str = "smsgate_webhooks_total";
/// Process resident memory, bytes.
pub const PROCESS_RSS: &str = "smsgate_process_resident_memory_bytes";
/// Process open file descriptors.
pub const PROCESS_FDS: &str = "smsgate_process_open_fds";
/// Process CPU time, user + system, seconds: a counter read at each scrape and written by
/// [`render`] (the metrics crate's counters are integers; CPU time needs fractions).
pub const PROCESS_CPU: &str = "smsgate_process_cpu_seconds_total";
/// Free bytes on the data directory's file system.
pub const DISK_FREE: &str = "smsgate_store_disk_free_bytes";
/// Bytes the store uses on disk.
pub const STORE_SIZE: &str = "smsgate_store_size_bytes";
/// `store_quarantined_total`: records that could not be decoded and were set aside.
pub const STORE_QUARANTINED: &str = "smsgate_store_quarantined_total";
/// `task_restarts_total{task}`: long-lived tasks restarted after a panic.
pub const TASK_RESTARTS: &str = "smsgate_task_restarts_total";
/// `store_failed`: 1 once a write failed (the process is about to exit).
pub const STORE_FAILED: &str = "smsgate_store_failed";
/// `api_connections`: API connections open now.
pub const API_CONNECTIONS: &str = "smsgate_api_connections";
/// `api_connections_refused_total`: connections closed at once because `api.max_connections`
/// were open.
pub const API_CONNECTIONS_REFUSED: &str = "smsgate_api_connections_refused_total";
/// `store_commit_seconds`
pub const STORE_COMMIT: &str = "smsgate_store_commit_seconds";
/// `store_commit_batch_size`
pub const STORE_COMMIT_BATCH: &str = "smsgate_store_commit_batch_size";

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const DELIVERY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    14400.0, 86400.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and starts
/// its upkeep task, without which histogram buffers grow without bound.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), DELIVERY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STORE_COMMIT_BATCH.into()), BATCH_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS));
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                // Another recorder is installed (a test harness): keep a private one for rendering.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(API_REQUESTS, "API requests by route and HTTP status");
    describe_histogram!(API_REQUEST_DURATION, Unit::Seconds, "API request handling time");
    describe_counter!(MESSAGES_ACCEPTED, "Messages accepted (durably stored, 202 sent)");
    describe_counter!(MESSAGES_SUBMITTED, "Messages fully submitted (every segment has a carrier id)");
    describe_counter!(MESSAGES_FINAL, "Messages that reached a final status");
    describe_histogram!(SUBMIT_LATENCY, Unit::Seconds, "Accept to submit_sm_resp of the last segment");
    describe_histogram!(DELIVERY_LATENCY, Unit::Seconds, "Accept to final delivery receipt");
    describe_gauge!(QUEUE_DEPTH, "Messages waiting to be submitted");
    describe_gauge!(SMPP_BINDS, "SMPP sessions by state");
    describe_counter!(SMPP_THROTTLED, "submit_sm answered with ESME_RTHROTTLED or ESME_RMSGQFUL");
    describe_counter!(
        RECEIPT_ID_FALLBACK,
        "Receipts matched only with their id written another way (form); set the carrier's id formats"
    );
    describe_counter!(
        SMPP_INBOUND_THROTTLED,
        "deliver_sm answered with ESME_RTHROTTLED because the bind already had its cap of them in progress"
    );
    describe_gauge!(SMPP_WINDOW_IN_USE, "Outstanding submit_sm across a carrier's binds");
    describe_counter!(SMPP_GENERIC_NACK, "generic_nack sent (direction=sent) or received");
    describe_counter!(RECEIPTS, "Delivery receipts by correlation result");
    describe_counter!(INBOUND, "deliver_sm received, by kind (receipt, mo)");
    describe_counter!(INBOUND_UNROUTED, "Inbound texts to an address no account owns (listed for operators)");
    describe_counter!(OPTOUTS, "Opt-outs recorded, by keyword");
    describe_histogram!(STORE_COMMIT, Unit::Seconds, "Group commit: apply + flush + fdatasync");
    describe_counter!(CONTENT_FLAGS, "Messages accepted although a PHI content rule matched (action flag)");
    describe_counter!(COMPLIANCE_REJECTIONS, "Sends refused at accept by a compliance rule");
    describe_counter!(WEBHOOKS, "Webhook deliveries by result");
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the smsgate process");
    describe_gauge!(PROCESS_FDS, "Open file descriptors of the smsgate process");
    describe_gauge!(DISK_FREE, Unit::Bytes, "Free space on the data directory's file system");
    describe_gauge!(STORE_SIZE, Unit::Bytes, "Space the store uses on disk");
    describe_histogram!(STORE_COMMIT_BATCH, "Operations per group commit");
    describe_counter!(STORE_QUARANTINED, "Records that could not be decoded and were set aside under z/");
    describe_counter!(TASK_RESTARTS, "Long-lived tasks restarted after a panic");
    describe_gauge!(STORE_FAILED, "1 once a store write failed (fail-stop: the process exits)");
    describe_gauge!(API_CONNECTIONS, "API connections open now");
    describe_counter!(API_CONNECTIONS_REFUSED, "API connections refused at api.max_connections");
}

/// API connections open now.
pub fn api_connections(n: usize) {
    gauge!(API_CONNECTIONS).set(n as f64);
}

/// An API connection refused at the cap.
pub fn api_connection_refused() {
    counter!(API_CONNECTIONS_REFUSED).increment(1);
}

/// A record set aside.
pub fn quarantined() {
    counter!(STORE_QUARANTINED).increment(1);
}

/// A task restarted after a panic.
pub fn task_restart(task: &'static str) {
    counter!(TASK_RESTARTS, "task" => task).increment(1);
}

/// The store failed.
pub fn store_failed() {
    gauge!(STORE_FAILED).set(1.0);
}

/// Records one group commit.
pub fn store_commit(seconds: f64, ops: u64) {
    histogram!(STORE_COMMIT).record(seconds);
    histogram!(STORE_COMMIT_BATCH).record(ops as f64);
}

/// Records one API request.
pub fn api_request(route: &'static str, status: u16, seconds: f64) {
    counter!(API_REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    histogram!(API_REQUEST_DURATION, "route" => route).record(seconds);
}

/// Messages accepted for `account`.
pub fn accepted(account: &str, n: u64) {
    counter!(MESSAGES_ACCEPTED, "account" => account_label(account)).increment(n);
}

/// How many accounts get a label of their own; the rest are reported as `other`.
static ACCOUNT_LABELS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(100);
static LABELLED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Sets how many accounts are labelled by name (`metrics.max_account_labels`).
pub fn set_account_label_limit(n: usize) {
    ACCOUNT_LABELS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The `account` label for `name`: the name for the first accounts seen, up to the limit,
/// then `other`, so that the number of series stays bounded however many accounts there are.
pub fn account_label(name: &str) -> String {
    let Ok(mut seen) = LABELLED.lock() else { return "other".into() };
    if seen.iter().any(|s| s == name) {
        return name.to_string();
    }
    if seen.len() < ACCOUNT_LABELS.load(std::sync::atomic::Ordering::Relaxed) {
        seen.push(name.to_string());
        return name.to_string();
    }
    "other".into()
}

/// An inbound text to an address no account owns.
pub fn inbound_unrouted(carrier: &str) {
    counter!(INBOUND_UNROUTED, "carrier" => carrier.to_string()).increment(1);
}

/// A message fully submitted, `latency` after accept.
pub fn submitted(carrier: &str, latency_secs: f64) {
    counter!(MESSAGES_SUBMITTED, "carrier" => carrier.to_string()).increment(1);
    histogram!(SUBMIT_LATENCY, "carrier" => carrier.to_string()).record(latency_secs);
}

/// A message reached a final status.
pub fn finished(carrier: &str, status: &'static str) {
    counter!(MESSAGES_FINAL, "carrier" => carrier.to_string(), "status" => status).increment(1);
}

/// A final receipt, `latency` after accept.
pub fn delivered(carrier: &str, latency_secs: f64) {
    histogram!(DELIVERY_LATENCY, "carrier" => carrier.to_string()).record(latency_secs);
}

/// Queue depth of a carrier.
pub fn queue_depth(carrier: &str, depth: usize) {
    gauge!(QUEUE_DEPTH, "carrier" => carrier.to_string()).set(depth as f64);
}

/// Bind state gauge: +1 / -1 as a session enters or leaves `state`.
pub fn bind_state(carrier: &str, state: &'static str, delta: f64) {
    gauge!(SMPP_BINDS, "carrier" => carrier.to_string(), "state" => state).increment(delta);
}

/// Throttling answer from a carrier.
pub fn throttled(carrier: &str) {
    counter!(SMPP_THROTTLED, "carrier" => carrier.to_string()).increment(1);
}

/// A receipt matched with its id written another way.
pub fn receipt_id_fallback(carrier: &str, form: &'static str) {
    counter!(RECEIPT_ID_FALLBACK, "carrier" => carrier.to_string(), "form" => form).increment(1);
}

/// A `deliver_sm` turned away: too many in progress on its bind.
pub fn inbound_throttled(carrier: &str) {
    counter!(SMPP_INBOUND_THROTTLED, "carrier" => carrier.to_string()).increment(1);
}

/// Window occupancy change.
pub fn window(carrier: &str, delta: f64) {
    gauge!(SMPP_WINDOW_IN_USE, "carrier" => carrier.to_string()).increment(delta);
}

/// A generic_nack sent or received.
pub fn generic_nack(carrier: &str, direction: &'static str) {
    counter!(SMPP_GENERIC_NACK, "carrier" => carrier.to_string(), "direction" => direction).increment(1);
}

/// A receipt and what it matched.
pub fn receipt(carrier: &str, result: &'static str) {
    counter!(RECEIPTS, "carrier" => carrier.to_string(), "result" => result).increment(1);
}

/// An inbound deliver_sm.
pub fn inbound(carrier: &str, kind: &'static str) {
    counter!(INBOUND, "carrier" => carrier.to_string(), "kind" => kind).increment(1);
}

/// A content rule matched under `flag`.
pub fn content_flag(rule: &'static str) {
    counter!(CONTENT_FLAGS, "rule" => rule).increment(1);
}

/// A compliance refusal at accept.
pub fn compliance_rejection(reason: &'static str) {
    counter!(COMPLIANCE_REJECTIONS, "reason" => reason).increment(1);
}

/// An opt-out recorded.
pub fn optout(keyword: &str) {
    counter!(OPTOUTS, "keyword" => keyword.to_string()).increment(1);
}

/// A webhook delivery attempt.
pub fn webhook(result: &'static str) {
    counter!(WEBHOOKS, "result" => result).increment(1);
}

/// What `/proc/self` says about this process: (resident bytes, open fds, CPU seconds).
pub fn process_sample() -> Option<(u64, u64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture smsgate targets.
    Some((rss_kb * 1024, fds, (utime + stime) / 100.0))
}

/// The exposition for a scrape: the recorder's metrics and the process CPU counter.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    if let Some((_, _, cpu)) = process_sample() {
        text.push_str(&format!(
            "# HELP {PROCESS_CPU} CPU time (user + system) of the smsgate process\n# TYPE {PROCESS_CPU} counter\n{PROCESS_CPU} {cpu}\n"
        ));
    }
    text
}

/// Every labelled series whose label values are known at start, at zero: a panel or an
/// alert sees 0 rather than nothing, and `rate()` sees the first increment.
pub fn start_at_zero(carriers: &[String], optout_keywords: &[String]) {
    for c in carriers {
        let c = || c.clone();
        for n in [MESSAGES_SUBMITTED, SMPP_THROTTLED, SMPP_INBOUND_THROTTLED] {
            counter!(n, "carrier" => c()).increment(0);
        }
        for status in ["delivered", "undeliverable", "expired", "rejected", "failed", "cancelled", "blocked"] {
            counter!(MESSAGES_FINAL, "carrier" => c(), "status" => status).increment(0);
        }
        for direction in ["sent", "received"] {
            counter!(SMPP_GENERIC_NACK, "carrier" => c(), "direction" => direction).increment(0);
        }
        for result in ["matched", "orphan", "duplicate", "unknown", "unparseable"] {
            counter!(RECEIPTS, "carrier" => c(), "result" => result).increment(0);
        }
        for kind in ["receipt", "mo"] {
            counter!(INBOUND, "carrier" => c(), "kind" => kind).increment(0);
        }
        for form in ["dec_receipt_hex_submit", "hex_receipt_dec_submit", "leading_zeros", "hex_case_or_zeros"] {
            counter!(RECEIPT_ID_FALLBACK, "carrier" => c(), "form" => form).increment(0);
        }
        gauge!(QUEUE_DEPTH, "carrier" => c()).increment(0.0);
        gauge!(SMPP_WINDOW_IN_USE, "carrier" => c()).increment(0.0);
        for state in ["connecting", "bound", "down"] {
            gauge!(SMPP_BINDS, "carrier" => c(), "state" => state).increment(0.0);
        }
    }
    for k in optout_keywords {
        counter!(OPTOUTS, "keyword" => k.clone()).increment(0);
    }
    for rule in ["ssn", "mrn", "dob", "deny_term"] {
        counter!(CONTENT_FLAGS, "rule" => rule).increment(0);
    }
    for reason in ["recipient_opted_out", "consent_required", "content_policy_violation", "frequency_cap_exceeded"] {
        counter!(COMPLIANCE_REJECTIONS, "reason" => reason).increment(0);
    }
    for result in ["delivered", "retry", "abandoned", "refused"] {
        counter!(WEBHOOKS, "result" => result).increment(0);
    }
    for n in [MESSAGES_ACCEPTED, STORE_QUARANTINED, API_CONNECTIONS_REFUSED] {
        counter!(n).increment(0);
    }
    gauge!(STORE_FAILED).increment(0.0);
}

/// Updates the process, disk and store gauges.
pub fn sample(disk_free: u64, store_size: Option<u64>) {
    if let Some((rss, fds, _)) = process_sample() {
        gauge!(PROCESS_RSS).set(rss as f64);
        gauge!(PROCESS_FDS).set(fds as f64);
    }
    gauge!(DISK_FREE).set(disk_free as f64);
    if let Some(size) = store_size {
        gauge!(STORE_SIZE).set(size as f64);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_self_is_readable() {
        let (rss, fds, cpu) = super::process_sample().expect("Linux /proc");
        assert!(rss > 1_000_000 && fds >= 3 && cpu >= 0.0);
    }
}
