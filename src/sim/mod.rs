//! The built-in SMSC simulator: accepts binds (TCP and TLS), answers `submit_sm`, sends
//! delivery receipts after a delay, injects mobile-originated texts on request, records every
//! `submit_sm` as JSON lines, and reports counters. Its control interface (`GET /stats`,
//! `POST /mo`, `GET /sessions`, `POST /reset`, `POST /drop`, `GET /health`) and its record
//! format follow `shared/tools/smsc-sim`, so tests and users can switch between the two.

mod control;
mod record;
mod session;
pub mod test_numbers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

pub use record::Recorder;

/// Simulator behaviour.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Required system_id (any if `None`).
    pub system_id: Option<String>,
    /// Required password (any if `None`).
    pub password: Option<String>,
    /// system_id in bind responses.
    pub smsc_id: String,
    /// Receipt delay range in ms (uniform).
    pub dlr_delay_ms: (u64, u64),
    /// Fraction of accepted messages whose receipt says UNDELIV (deterministic).
    pub dlr_fail_ratio: f64,
    /// Per bind: more than this many submit_sm in one second get ESME_RTHROTTLED (0 = off).
    pub throttle_per_sec: u32,
    /// Delay before each submit_sm_resp.
    pub resp_delay_ms: u64,
    /// First message id (ids are a counter).
    pub msgid_start: u64,
    /// Write message ids in decimal instead of hex.
    pub msgid_decimal: bool,
    /// Receipts carry the id only in their text, in decimal (no `receipted_message_id`), as
    /// carriers with hexadecimal `submit_sm_resp` ids often do.
    pub receipt_id_decimal_text: bool,
    /// Test numbers give their outcomes (see [`test_numbers`]).
    pub test_numbers: bool,
    /// Close a connection once this many submit_sm were answered on it (0 = never).
    pub drop_after: u64,
    /// Drop every connection that reaches `drop_after`, not only the first.
    pub drop_every: bool,
    /// Fraction of submit_sm answered with `error_status` (deterministic).
    pub error_ratio: f64,
    /// Status for `error_ratio`.
    pub error_status: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            system_id: None,
            password: None,
            smsc_id: "SMSGATESIM".into(),
            dlr_delay_ms: (50, 50),
            dlr_fail_ratio: 0.0,
            throttle_per_sec: 0,
            resp_delay_ms: 0,
            msgid_start: 1,
            msgid_decimal: false,
            receipt_id_decimal_text: false,
            test_numbers: true,
            drop_after: 0,
            drop_every: false,
            error_ratio: 0.0,
            error_status: crate::smpp::codec::pdu::status::SYSTEM_ERROR,
        }
    }
}

/// Counters, with the field names of `shared/tools/smsc-sim`'s `/stats`.
#[derive(Default)]
pub struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) bind_ok: AtomicU64,
    pub(crate) bind_fail: AtomicU64,
    pub(crate) submit_sm_total: AtomicU64,
    pub(crate) submit_sm_ok: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) submit_sm_unbound: AtomicU64,
    /// Accepted submits whose response was never written (the connection ended first).
    pub(crate) submit_sm_unanswered: AtomicU64,
    pub(crate) dlr_sent: AtomicU64,
    pub(crate) dlr_delivered: AtomicU64,
    pub(crate) dlr_undeliv: AtomicU64,
    pub(crate) dlr_resp_ok: AtomicU64,
    pub(crate) dlr_resp_error: AtomicU64,
    pub(crate) dlr_pending: AtomicU64,
    pub(crate) mo_sent: AtomicU64,
    pub(crate) mo_resp_ok: AtomicU64,
    pub(crate) mo_resp_error: AtomicU64,
    pub(crate) enquire_link: AtomicU64,
    pub(crate) unbind: AtomicU64,
    pub(crate) drops: AtomicU64,
    pub(crate) generic_nack_sent: AtomicU64,
    pub(crate) submit_sm_error_injected: AtomicU64,
    pub(crate) errors: AtomicU64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

pub(crate) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// A bound session the simulator can push `deliver_sm` into.
pub(crate) struct SessionEntry {
    pub system_id: String,
    pub mode: &'static str,
    pub remote: String,
    pub tls: bool,
    pub can_receive: bool,
    pub out: mpsc::Sender<Bytes>,
    pub next_seq: Arc<AtomicU64>,
    pub awaiting: Arc<Mutex<HashMap<u32, oneshot::Sender<u32>>>>,
    pub submits: Arc<AtomicU64>,
    pub kill: watch::Sender<bool>,
}

/// A receipt waiting for a receiver bind.
pub(crate) struct PendingDlr {
    pub system_id: String,
    pub pdu: crate::smpp::codec::pdu::ShortMessage,
}

/// Shared simulator state.
pub struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) stats: Stats,
    pub(crate) sessions: Mutex<HashMap<u64, SessionEntry>>,
    pub(crate) next_session: AtomicU64,
    pub(crate) next_msgid: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) submits_seen: AtomicU64,
    pub(crate) dropped_once: std::sync::atomic::AtomicBool,
    /// Submits to the throttling test number so far.
    pub(crate) throttle_test: AtomicU64,
    pub(crate) pending_dlrs: Mutex<Vec<PendingDlr>>,
    pub(crate) recorder: Option<Recorder>,
    started_ms: u64,
    first_submit_ms: AtomicU64,
    last_submit_ms: AtomicU64,
}

/// Where a started simulator listens.
#[derive(Clone)]
pub struct SimHandle {
    /// Plain SMPP listener.
    pub smpp_addr: Option<SocketAddr>,
    /// SMPP over TLS listener.
    pub tls_addr: Option<SocketAddr>,
    /// HTTP control listener.
    pub control_addr: SocketAddr,
    /// The simulator itself (for in-process tests).
    pub sim: Arc<Sim>,
}

/// Listeners to open.
pub struct SimListeners {
    /// Plain SMPP.
    pub smpp: Option<TcpListener>,
    /// SMPP over TLS, with its acceptor.
    pub tls: Option<(TcpListener, TlsAcceptor)>,
    /// HTTP control.
    pub control: TcpListener,
}

impl Sim {
    /// Whether this submit to the throttling test number is answered ESME_RTHROTTLED: the
    /// first, third, … are.
    pub(crate) fn throttle_test_number(&self) -> bool {
        self.throttle_test.fetch_add(1, Ordering::Relaxed).is_multiple_of(2)
    }

    /// Starts the simulator on the given listeners; it runs until `shutdown` turns true.
    pub fn start(
        config: SimConfig,
        listeners: SimListeners,
        recorder: Option<Recorder>,
        shutdown: watch::Receiver<bool>,
    ) -> SimHandle {
        let sim = Arc::new(Sim {
            next_msgid: AtomicU64::new(config.msgid_start),
            config,
            stats: Stats::default(),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            submits_seen: AtomicU64::new(0),
            dropped_once: std::sync::atomic::AtomicBool::new(false),
            throttle_test: AtomicU64::new(0),
            pending_dlrs: Mutex::new(Vec::new()),
            recorder,
            started_ms: crate::message::now_ms(),
            first_submit_ms: AtomicU64::new(0),
            last_submit_ms: AtomicU64::new(0),
        });
        let smpp_addr = listeners.smpp.as_ref().and_then(|l| l.local_addr().ok());
        let tls_addr = listeners.tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let control_addr = listeners.control.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        if let Some(l) = listeners.smpp {
            tokio::spawn(accept_loop(sim.clone(), l, None, shutdown.clone()));
        }
        if let Some((l, acceptor)) = listeners.tls {
            tokio::spawn(accept_loop(sim.clone(), l, Some(acceptor), shutdown.clone()));
        }
        tokio::spawn(control::serve(sim.clone(), listeners.control, shutdown));
        SimHandle { smpp_addr, tls_addr, control_addr, sim }
    }

    /// The `/stats` document.
    pub fn stats_json(&self) -> Value {
        let s = &self.stats;
        let sessions = self.sessions.lock().map(|s| s.len()).unwrap_or(0);
        let first = get(&self.first_submit_ms);
        let last = get(&self.last_submit_ms);
        let total = get(&s.submit_sm_total);
        let avg = if last > first { total as f64 * 1000.0 / (last - first) as f64 } else { 0.0 };
        json!({
            "connections": get(&s.connections), "binds": sessions, "bind_ok": get(&s.bind_ok), "bind_fail": get(&s.bind_fail),
            "submit_sm_total": total, "submit_sm_ok": get(&s.submit_sm_ok), "throttled": get(&s.throttled),
            "submit_sm_unbound": get(&s.submit_sm_unbound), "submit_sm_unanswered": get(&s.submit_sm_unanswered),
            "submit_sm_per_sec_avg": avg,
            "first_submit_at": first, "last_submit_at": last,
            "dlr_sent": get(&s.dlr_sent), "dlr_delivered": get(&s.dlr_delivered), "dlr_undeliv": get(&s.dlr_undeliv),
            "dlr_resp_ok": get(&s.dlr_resp_ok), "dlr_resp_error": get(&s.dlr_resp_error), "dlr_pending": get(&s.dlr_pending),
            "mo_sent": get(&s.mo_sent), "mo_resp_ok": get(&s.mo_resp_ok), "mo_resp_error": get(&s.mo_resp_error),
            "enquire_link": get(&s.enquire_link), "unbind": get(&s.unbind), "drops": get(&s.drops),
            "generic_nack_sent": get(&s.generic_nack_sent), "errors": get(&s.errors),
            "submit_sm_error_injected": get(&s.submit_sm_error_injected),
            "uptime_s": (crate::message::now_ms() - self.started_ms) / 1000, "now": crate::message::now_ms(),
        })
    }

    pub(crate) fn note_submit(&self) {
        let now = crate::message::now_ms();
        let _ = self.first_submit_ms.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        self.last_submit_ms.store(now, Ordering::Relaxed);
    }

    /// Resets counters (`POST /reset`).
    pub fn reset(&self) {
        let s = &self.stats;
        for a in [
            &s.connections,
            &s.bind_ok,
            &s.bind_fail,
            &s.submit_sm_total,
            &s.submit_sm_ok,
            &s.throttled,
            &s.submit_sm_unbound,
            &s.submit_sm_unanswered,
            &s.dlr_sent,
            &s.dlr_delivered,
            &s.dlr_undeliv,
            &s.dlr_resp_ok,
            &s.dlr_resp_error,
            &s.mo_sent,
            &s.mo_resp_ok,
            &s.mo_resp_error,
            &s.enquire_link,
            &s.unbind,
            &s.drops,
            &s.generic_nack_sent,
            &s.errors,
            &self.first_submit_ms,
            &self.last_submit_ms,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Drops every SMPP connection (`POST /drop`).
    pub fn drop_all(&self) -> usize {
        let sessions =
            self.sessions.lock().map(|s| s.values().map(|e| e.kill.clone()).collect::<Vec<_>>()).unwrap_or_default();
        for k in &sessions {
            let _ = k.send(true);
            inc(&self.stats.drops);
        }
        sessions.len()
    }

    /// Sends `pdu` to a receiving session of `system_id` (any, if `None`), round-robin.
    /// Returns the session id and a receiver for the `deliver_sm_resp` status.
    pub(crate) fn push_deliver(
        &self,
        system_id: Option<&str>,
        session: Option<u64>,
        pdu: &crate::smpp::codec::pdu::ShortMessage,
    ) -> Option<(u64, oneshot::Receiver<u32>)> {
        let sessions = self.sessions.lock().ok()?;
        let mut candidates: Vec<(&u64, &SessionEntry)> = sessions
            .iter()
            .filter(|(id, e)| {
                e.can_receive && session.is_none_or(|s| s == **id) && system_id.is_none_or(|s| s == e.system_id)
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_by_key(|(id, _)| **id);
        let pick = (self.stats.dlr_sent.load(Ordering::Relaxed) + self.stats.mo_sent.load(Ordering::Relaxed)) as usize
            % candidates.len();
        let (id, entry) = candidates[pick];
        let seq = (entry.next_seq.fetch_add(1, Ordering::Relaxed) % 0x7FFF_FFFF) as u32 + 1;
        let bytes = match crate::smpp::codec::pdu::encode_deliver_sm(seq, pdu) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode deliver_sm");
                return None;
            }
        };
        let (tx, rx) = oneshot::channel();
        if let Ok(mut a) = entry.awaiting.lock() {
            a.insert(seq, tx);
        }
        if entry.out.try_send(bytes).is_err() {
            debug!("session output full; deliver_sm dropped");
            return None;
        }
        Some((*id, rx))
    }

    /// Sends a `deliver_sm` (a receipt or an inbound text) to any receiving session; the
    /// receiver yields the `deliver_sm_resp` status. For embedding the simulator in tests.
    pub fn inject(&self, pdu: &crate::smpp::codec::pdu::ShortMessage) -> Option<(u64, oneshot::Receiver<u32>)> {
        self.push_deliver(None, None, pdu)
    }

    /// Sessions for `GET /sessions`.
    pub fn sessions_json(&self) -> Value {
        let sessions = match self.sessions.lock() {
            Ok(s) => s,
            Err(_) => return json!([]),
        };
        let mut v: Vec<Value> = sessions
            .iter()
            .map(|(id, e)| {
                json!({"id": id, "remote": e.remote, "tls": e.tls, "bound": true, "mode": e.mode, "system_id": e.system_id,
                       "submits": e.submits.load(Ordering::Relaxed)})
            })
            .collect();
        v.sort_by_key(|s| s["id"].as_u64());
        Value::Array(v)
    }
}

async fn accept_loop(
    sim: Arc<Sim>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        inc(&sim.stats.connections);
        let sim = sim.clone();
        let tls = tls.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                None => session::run(sim, tcp, peer.to_string(), false, stop).await,
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => session::run(sim, stream, peer.to_string(), true, stop).await,
                    _ => inc(&sim.stats.errors),
                },
            }
        });
    }
}
