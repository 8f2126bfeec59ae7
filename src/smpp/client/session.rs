//! The client side of SMPP: a carrier's pool of binds, each a task that connects (TCP or
//! TLS), binds, keeps a window of outstanding `submit_sm`, answers the SMSC's requests, and
//! reconnects with capped exponential backoff and jitter when anything goes wrong.
//!
//! The dispatcher sees only [`CarrierLink`]: it sends [`SubmitJob`]s into a channel shared
//! by the carrier's binds; whichever bind has a free window slot takes the next one. The
//! window slot (a semaphore permit) travels back with the response, and the dispatcher drops
//! it only after the response is durable. Each bind keeps one window for its whole life, not
//! one per connection, so slots still held for answers of an earlier connection count after
//! a reconnect. So at any moment at most `window × binds` messages are sent without a
//! durable record of their answer, which is what bounds duplicates after a crash.
//!
//! A job waiting in the channel can be withdrawn (its [`Ticket`]) until a bind takes it: a
//! dispatcher whose carrier went down takes its parts back instead of waiting for the
//! outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, warn};

use crate::config::Secret;
use crate::metrics as m;
use crate::smpp::codec::frame::{FrameError, FrameReader, write_frames};
use crate::smpp::codec::pdu::{self, BindMode, Frame, Pdu, id, status};

pub use super::job::*;

/// What a bind needs to know about its carrier.
#[derive(Clone)]
pub struct LinkSettings {
    /// Carrier name (metrics, logs).
    pub name: Arc<str>,
    /// SMSC host.
    pub host: String,
    /// SMSC port.
    pub port: u16,
    /// TLS client config and the name to verify; `None` for plain TCP.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// system_id
    pub system_id: String,
    /// password
    pub password: Secret,
    /// system_type
    pub system_type: String,
    /// Number of binds (transceivers), or of transmitter+receiver pairs.
    pub binds: usize,
    /// Transceivers, or transmitter + receiver pairs.
    pub split_binds: bool,
    /// Outstanding submit_sm per bind.
    pub window: usize,
    /// Idle time before an enquire_link.
    pub enquire_link_interval: Duration,
    /// Longest wait for any response.
    pub response_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// How long shutdown waits for outstanding responses before unbinding.
    pub drain_timeout: Duration,
}

/// State of one bind, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BindStatus {
    /// transceiver, transmitter or receiver
    pub mode: &'static str,
    /// connecting, bound, down
    pub state: &'static str,
    /// Last failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct LinkState {
    transmitting: AtomicUsize,
    changed: Notify,
    binds: Mutex<Vec<BindStatus>>,
}

/// The dispatcher's handle on a carrier.
#[derive(Clone)]
pub struct CarrierLink {
    name: Arc<str>,
    jobs: mpsc::Sender<SubmitJob>,
    state: Arc<LinkState>,
}

impl CarrierLink {
    /// Carrier name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Queues a part for the next bind with a free window slot. Waits while the channel is
    /// full (every window is full), which is the backpressure the dispatcher wants.
    pub async fn submit(&self, job: SubmitJob) -> Result<(), SubmitJob> {
        self.jobs.send(job).await.map_err(|e| e.0)
    }

    /// Binds that can send right now.
    pub fn transmitting_binds(&self) -> usize {
        self.state.transmitting.load(Ordering::Acquire)
    }

    /// Waits until at least one bind can send.
    pub async fn wait_transmitting(&self) {
        loop {
            let notified = self.state.changed.notified();
            if self.transmitting_binds() > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Each bind's state.
    pub fn bind_statuses(&self) -> Vec<BindStatus> {
        self.state.binds.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// Starts the carrier's binds. They run until `shutdown` turns true, then unbind cleanly.
pub fn start(
    settings: LinkSettings,
    handler: Arc<dyn InboundHandler>,
    shutdown: watch::Receiver<bool>,
) -> (CarrierLink, Vec<JoinHandle<()>>) {
    let modes: Vec<BindMode> = if settings.split_binds {
        (0..settings.binds).flat_map(|_| [BindMode::Transmitter, BindMode::Receiver]).collect()
    } else {
        vec![BindMode::Transceiver; settings.binds]
    };
    let capacity = settings.binds.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let state = Arc::new(LinkState {
        transmitting: AtomicUsize::new(0),
        changed: Notify::new(),
        binds: Mutex::new(
            modes.iter().map(|m| BindStatus { mode: m.as_str(), state: "down", last_error: None }).collect(),
        ),
    });
    let jobs = Arc::new(tokio::sync::Mutex::new(rx));
    let settings = Arc::new(settings);
    let handles = modes
        .into_iter()
        .enumerate()
        .map(|(index, mode)| {
            let bind = Bind {
                index,
                mode,
                settings: settings.clone(),
                jobs: jobs.clone(),
                handler: handler.clone(),
                state: state.clone(),
                window: Arc::new(Semaphore::new(settings.window)),
            };
            let span = tracing::info_span!("bind", carrier = %settings.name, n = index, mode = mode.as_str());
            tokio::spawn(bind.run(shutdown.clone()).instrument(span))
        })
        .collect();
    (CarrierLink { name: settings.name.clone(), jobs: tx, state }, handles)
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP connect failed or timed out.
    #[error("connect to {0} failed: {1}")]
    Connect(String, String),
    /// TLS handshake failed (certificate not trusted, name mismatch, protocol).
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, String),
    /// The SMSC answered the bind with an error.
    #[error("bind rejected with status 0x{0:08x}")]
    BindRejected(u32),
    /// No answer in time (bind, enquire_link or submit_sm).
    #[error("no response within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    /// The byte stream cannot be framed any more.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The SMSC closed the connection.
    #[error("connection closed by the SMSC")]
    Closed,
    /// The SMSC sent unbind.
    #[error("the SMSC unbound")]
    PeerUnbind,
    /// Writing failed.
    #[error("write failed: {0}")]
    Write(String),
    /// A bind field cannot be encoded.
    #[error(transparent)]
    Encode(#[from] pdu::EncodeFailure),
    /// Orderly shutdown.
    #[error("shut down")]
    Shutdown,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxStream = Box<dyn Stream>;

struct Bind {
    index: usize,
    mode: BindMode,
    settings: Arc<LinkSettings>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<SubmitJob>>>,
    handler: Arc<dyn InboundHandler>,
    state: Arc<LinkState>,
    /// Window slots, for the bind's whole life (see the module docs).
    window: Arc<Semaphore>,
}

impl Bind {
    fn set_state(&self, state: &'static str, error: Option<String>) {
        if let Ok(mut binds) = self.state.binds.lock()
            && let Some(b) = binds.get_mut(self.index)
        {
            m::bind_state(&self.settings.name, b.state, -1.0);
            m::bind_state(&self.settings.name, state, 1.0);
            b.state = state;
            if error.is_some() {
                b.last_error = error;
            }
        }
    }

    fn can_transmit(&self) -> bool {
        self.mode != BindMode::Receiver
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        m::bind_state(&self.settings.name, "down", 1.0);
        let mut backoff = self.settings.reconnect_min;
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.set_state("connecting", None);
            let outcome = match connect(&self.settings, self.mode).await {
                Ok((reader, writer)) => {
                    info!("bound");
                    backoff = self.settings.reconnect_min;
                    self.set_state("bound", None);
                    if self.can_transmit() {
                        self.state.transmitting.fetch_add(1, Ordering::AcqRel);
                        self.state.changed.notify_waiters();
                    }
                    let end = self.session(reader, writer, &mut shutdown).await;
                    if self.can_transmit() {
                        self.state.transmitting.fetch_sub(1, Ordering::AcqRel);
                        self.state.changed.notify_waiters();
                    }
                    end
                }
                Err(e) => e,
            };
            match outcome {
                LinkError::Shutdown => {
                    info!("unbound");
                    self.set_state("down", None);
                    break;
                }
                e => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "bind down");
                    self.set_state("down", Some(e.to_string()));
                }
            }
            let delay = jitter(backoff);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(self.settings.reconnect_max);
        }
        m::bind_state(&self.settings.name, "down", -1.0);
    }

    async fn session(
        &self,
        mut reader: FrameReader<ReadHalf<BoxStream>>,
        writer: WriteHalf<BoxStream>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> LinkError {
        let s = &self.settings;
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(4096);
        let mut writer_task = tokio::spawn(write_frames(writer, out_rx));
        let pending: Arc<Mutex<HashMap<u32, Pending>>> = Arc::default();
        let seq = Arc::new(SeqGen::new());
        let pump = self.can_transmit().then(|| {
            tokio::spawn(pump(
                self.jobs.clone(),
                self.window.clone(),
                pending.clone(),
                out_tx.clone(),
                seq.clone(),
                s.name.clone(),
            ))
        });
        let inbound = Arc::new(Semaphore::new(INBOUND_IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_rx = Instant::now();
        let mut enquire: Option<(u32, Instant)> = None;
        let mut draining: Option<Instant> = None;
        let mut unbind_sent: Option<Instant> = None;
        let mut writer_finished = false;
        let end = loop {
            tokio::select! {
                frame = reader.next() => match frame {
                    Ok(Some(frame)) => {
                        last_rx = Instant::now();
                        match self.handle(frame, &pending, &out_tx, &inbound, &mut enquire) {
                            Ok(()) => {}
                            Err(LinkError::Shutdown) if unbind_sent.is_some() => break LinkError::Shutdown,
                            Err(e) => break e,
                        }
                    }
                    Ok(None) => break if unbind_sent.is_some() { LinkError::Shutdown } else { LinkError::Closed },
                    Err(e) => break LinkError::Frame(e),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if let Some(sent) = unbind_sent {
                        if now - sent > s.response_timeout.min(Duration::from_secs(2)) {
                            break LinkError::Shutdown;
                        }
                        continue;
                    }
                    if let Some(deadline) = draining {
                        let empty = pending.lock().map(|p| p.is_empty()).unwrap_or(true);
                        if empty || now >= deadline {
                            let _ = out_tx.send(pdu::unbind(seq.next())).await;
                            unbind_sent = Some(now);
                        }
                        continue;
                    }
                    if let Some(oldest) = oldest_pending(&pending)
                        && now - oldest > s.response_timeout
                    {
                        break LinkError::Timeout(s.response_timeout, "submit_sm");
                    }
                    match enquire {
                        Some((_, sent)) if now - sent > s.response_timeout => {
                            break LinkError::Timeout(s.response_timeout, "enquire_link");
                        }
                        None if now - last_rx > s.enquire_link_interval => {
                            let n = seq.next();
                            enquire = Some((n, now));
                            if out_tx.send(pdu::enquire_link(n)).await.is_err() {
                                break LinkError::Write("writer stopped".into());
                            }
                        }
                        _ => {}
                    }
                }
                _ = shutdown.changed(), if draining.is_none() => {
                    // Stop taking new jobs; let outstanding responses arrive, then unbind.
                    if let Some(p) = &pump { p.abort(); }
                    draining = Some(Instant::now() + s.drain_timeout);
                }
                result = &mut writer_task => {
                    writer_finished = true;
                    break LinkError::Write(match result {
                        Ok(Err(e)) => e.to_string(),
                        _ => "writer stopped".into(),
                    });
                }
            }
        };
        if let Some(p) = pump {
            p.abort();
        }
        // Whatever is still pending was written but never answered.
        let reason = end.to_string();
        let timed_out = matches!(end, LinkError::Timeout(..));
        if let Ok(mut p) = pending.lock() {
            for (_, entry) in p.drain() {
                m::window(&s.name, -1.0);
                let outcome = SubmitOutcome::Unknown { reason: reason.clone(), timed_out };
                let _ = entry.reply.send(SubmitResult { outcome, permit: Some(entry.permit) });
            }
        }
        drop(out_tx);
        // Give the writer a moment to flush the unbind / last responses, then close. (A
        // finished JoinHandle must not be polled again.)
        if !writer_finished && tokio::time::timeout(Duration::from_secs(1), &mut writer_task).await.is_err() {
            writer_task.abort();
        }
        end
    }

    /// Handles one PDU from the SMSC. An `Err` ends the session.
    fn handle(
        &self,
        frame: Frame,
        pending: &Mutex<HashMap<u32, Pending>>,
        out: &mpsc::Sender<Bytes>,
        inbound: &Arc<Semaphore>,
        enquire: &mut Option<(u32, Instant)>,
    ) -> Result<(), LinkError> {
        let name = &self.settings.name;
        let send = |bytes: Bytes| out.try_send(bytes).map_err(|_| LinkError::Write("output queue full".into()));
        let pdu = match pdu::decode(&frame) {
            Ok(p) => p,
            Err(fail) => {
                warn!(command_id = format_args!("0x{:08x}", fail.command_id), reason = %fail.reason, "malformed PDU from SMSC");
                if frame.is_response() {
                    // A response we cannot read still answers its request; its outcome is unknown.
                    let outcome =
                        SubmitOutcome::Unknown { reason: "unreadable submit_sm_resp".into(), timed_out: false };
                    resolve(pending, name, frame.seq, outcome);
                } else {
                    m::generic_nack(name, "sent");
                    send(pdu::generic_nack(frame.seq, fail.nack_status))?;
                }
                return Ok(());
            }
        };
        match pdu {
            Pdu::SubmitSmResp { message_id } => {
                let outcome = if frame.status != status::OK {
                    if matches!(frame.status, status::THROTTLED | status::MSG_QUEUE_FULL) {
                        m::throttled(name);
                    }
                    SubmitOutcome::Rejected(frame.status)
                } else if message_id.is_empty() {
                    SubmitOutcome::Unknown { reason: "submit_sm_resp without a message id".into(), timed_out: false }
                } else {
                    SubmitOutcome::Accepted(message_id)
                };
                resolve(pending, name, frame.seq, outcome);
            }
            Pdu::GenericNack => {
                m::generic_nack(name, "received");
                if enquire.is_some_and(|(s, _)| s == frame.seq) {
                    *enquire = None;
                } else {
                    resolve(pending, name, frame.seq, SubmitOutcome::Rejected(frame.status));
                }
            }
            Pdu::EnquireLink => send(pdu::enquire_link_resp(frame.seq))?,
            Pdu::EnquireLinkResp => *enquire = None,
            Pdu::DeliverSm(sm) => {
                // A carrier that floods us gets "throttled" (it retries later) rather than an
                // unbounded number of tasks, each holding a PDU and a store commit.
                let Ok(permit) = inbound.clone().try_acquire_owned() else {
                    m::inbound_throttled(name);
                    return send(pdu::deliver_sm_resp(frame.seq, status::THROTTLED));
                };
                let handler = self.handler.clone();
                let out = out.clone();
                let carrier = name.clone();
                let seq = frame.seq;
                tokio::spawn(async move {
                    let status = handler.deliver(carrier, *sm).await;
                    let _ = out.send(pdu::deliver_sm_resp(seq, status)).await;
                    drop(permit);
                });
            }
            Pdu::Unbind => {
                let _ = send(pdu::unbind_resp(frame.seq));
                return Err(LinkError::PeerUnbind);
            }
            Pdu::UnbindResp => return Err(LinkError::Shutdown),
            Pdu::DeliverSmResp | Pdu::BindResp { .. } => {}
            Pdu::Bind { .. } | Pdu::SubmitSm(_) | Pdu::Unsupported => {
                if frame.is_response() {
                    debug!(command_id = format_args!("0x{:08x}", frame.command_id), "ignoring unexpected response");
                } else {
                    m::generic_nack(name, "sent");
                    send(pdu::generic_nack(frame.seq, status::INVALID_CMD_ID))?;
                }
            }
        }
        Ok(())
    }
}

struct Pending {
    reply: oneshot::Sender<SubmitResult>,
    permit: OwnedSemaphorePermit,
    sent_at: Instant,
}

fn resolve(pending: &Mutex<HashMap<u32, Pending>>, carrier: &str, seq: u32, outcome: SubmitOutcome) {
    let entry = pending.lock().ok().and_then(|mut p| p.remove(&seq));
    match entry {
        Some(entry) => {
            m::window(carrier, -1.0);
            let _ = entry.reply.send(SubmitResult { outcome, permit: Some(entry.permit) });
        }
        None => debug!(seq, "response for no outstanding request"),
    }
}

fn oldest_pending(pending: &Mutex<HashMap<u32, Pending>>) -> Option<Instant> {
    pending.lock().ok()?.values().map(|p| p.sent_at).min()
}

/// Takes jobs from the carrier's shared channel whenever this bind has a free window slot.
async fn pump(
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<SubmitJob>>>,
    window: Arc<Semaphore>,
    pending: Arc<Mutex<HashMap<u32, Pending>>>,
    out: mpsc::Sender<Bytes>,
    seq: Arc<SeqGen>,
    carrier: Arc<str>,
) {
    loop {
        let Ok(permit) = window.clone().acquire_owned().await else {
            return;
        };
        let job = {
            let mut rx = jobs.lock().await;
            loop {
                match rx.recv().await {
                    Some(job) if job.ticket.take() => break job,
                    Some(_) => continue, // withdrawn while it waited
                    None => return,
                }
            }
        };
        let n = seq.next();
        match pdu::encode_submit_sm(n, &job.sm) {
            Ok(bytes) => {
                if let Ok(mut p) = pending.lock() {
                    p.insert(n, Pending { reply: job.reply, permit, sent_at: Instant::now() });
                }
                m::window(&carrier, 1.0);
                if out.send(bytes).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = job
                    .reply
                    .send(SubmitResult { outcome: SubmitOutcome::Invalid(e.to_string()), permit: Some(permit) });
            }
        }
    }
}

/// Sequence numbers 1..=0x7FFF_FFFF, wrapping back to 1 (SMPP 3.4 §5.1.4).
struct SeqGen(AtomicU32);

impl SeqGen {
    fn new() -> Self {
        SeqGen(AtomicU32::new(1))
    }
    fn next(&self) -> u32 {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = if cur >= 0x7FFF_FFFF { 1 } else { cur + 1 };
            match self.0.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return cur,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// ±25 % jitter, so that many binds do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 2;
    if spread == 0 {
        return d;
    }
    Duration::from_millis(ms - spread / 2 + crate::fsutil::random_u64() % spread)
}

/// Connects, upgrades to TLS if configured, binds, and waits for the bind response.
async fn connect(
    s: &LinkSettings,
    mode: BindMode,
) -> Result<(FrameReader<ReadHalf<BoxStream>>, WriteHalf<BoxStream>), LinkError> {
    let addr = format!("{}:{}", s.host, s.port);
    let tcp = tokio::time::timeout(s.response_timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| LinkError::Timeout(s.response_timeout, "connect"))?
        .map_err(|e| LinkError::Connect(addr.clone(), e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream: BoxStream = match &s.tls {
        None => Box::new(tcp),
        Some((config, name)) => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(s.response_timeout, connector.connect(name.clone(), tcp))
                .await
                .map_err(|_| LinkError::Timeout(s.response_timeout, "TLS handshake"))?
                .map_err(|e| LinkError::Tls(addr.clone(), e.to_string()))?;
            Box::new(tls)
        }
    };
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let bind = pdu::encode_bind(1, mode, &s.system_id, s.password.expose(), &s.system_type)?;
    w.write_all(&bind).await.map_err(|e| LinkError::Write(e.to_string()))?;
    w.flush().await.map_err(|e| LinkError::Write(e.to_string()))?;
    let deadline = Instant::now() + s.response_timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), reader.next())
            .await
            .map_err(|_| LinkError::Timeout(s.response_timeout, "bind"))??
            .ok_or(LinkError::Closed)?;
        let is_bind_resp = matches!(frame.command_id, 0x8000_0001 | 0x8000_0002 | 0x8000_0009);
        if is_bind_resp && frame.seq == 1 {
            if frame.status != status::OK {
                return Err(LinkError::BindRejected(frame.status));
            }
            return Ok((reader, w));
        }
        if frame.command_id == id::GENERIC_NACK && frame.seq == 1 {
            return Err(LinkError::BindRejected(frame.status));
        }
        // Anything else before the bind completes is ignored (SMPP 3.4 §2.3 forbids it anyway).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_wrap_to_one() {
        let g = SeqGen(AtomicU32::new(0x7FFF_FFFE));
        assert_eq!(g.next(), 0x7FFF_FFFE);
        assert_eq!(g.next(), 0x7FFF_FFFF);
        assert_eq!(g.next(), 1);
        assert_eq!(g.next(), 2);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(1000));
            assert!((750..=1250).contains(&(j.as_millis() as u64)), "{j:?}");
        }
    }
}
