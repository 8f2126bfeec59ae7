//! One SMPP connection to the simulator.

use super::test_numbers::Behaviour;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use super::{PendingDlr, SessionEntry, Sim, inc};
use crate::smpp::codec::frame::{FrameReader, write_frames};
use crate::smpp::codec::pdu::{self, Address, BindMode, Pdu, ShortMessage, status};

/// Runs a connection until it closes, is unbound, or is dropped on request.
pub(crate) async fn run<S>(sim: Arc<Sim>, stream: S, remote: String, tls: bool, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let mut reader = FrameReader::new(r);
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(8192);
    let (kill_tx, mut kill_rx) = watch::channel(false);
    let writer = tokio::spawn(write_frames(w, out_rx));
    let session_id = sim.next_session.fetch_add(1, Ordering::Relaxed);
    let awaiting: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<u32>>>> = Arc::default();
    let next_seq = Arc::new(AtomicU64::new(1));
    let submits = Arc::new(AtomicU64::new(0));
    // Set when the session ends: a delayed submit_sm_resp not written by then is unanswered.
    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut bound: Option<(BindMode, String)> = None;
    let mut window_second = 0u64;
    let mut in_window = 0u32;
    loop {
        let frame = tokio::select! {
            f = reader.next() => f,
            _ = kill_rx.changed() => break,
            _ = shutdown.changed() => break,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            _ => break,
        };
        let send = |b: Bytes| {
            let _ = out_tx.try_send(b);
        };
        let decoded = pdu::decode(&frame);
        let pdu = match decoded {
            Ok(p) => p,
            Err(fail) => {
                if !frame.is_response() {
                    inc(&sim.stats.generic_nack_sent);
                    send(pdu::generic_nack(frame.seq, fail.nack_status));
                }
                continue;
            }
        };
        match pdu {
            Pdu::Bind { mode, system_id, password, .. } => {
                if bound.is_some() {
                    send(pdu::encode_bind_resp(frame.seq, mode, status::ALREADY_BOUND, "").unwrap_or_default());
                    continue;
                }
                let ok = sim.config.system_id.as_ref().is_none_or(|s| *s == system_id)
                    && sim.config.password.as_ref().is_none_or(|p| *p == password);
                if !ok {
                    inc(&sim.stats.bind_fail);
                    send(pdu::encode_bind_resp(frame.seq, mode, status::BIND_FAILED, "").unwrap_or_default());
                    continue;
                }
                inc(&sim.stats.bind_ok);
                send(pdu::encode_bind_resp(frame.seq, mode, status::OK, &sim.config.smsc_id).unwrap_or_default());
                let can_receive = mode != BindMode::Transmitter;
                if let Ok(mut sessions) = sim.sessions.lock() {
                    sessions.insert(
                        session_id,
                        SessionEntry {
                            system_id: system_id.clone(),
                            mode: mode.as_str(),
                            remote: remote.clone(),
                            tls,
                            can_receive,
                            out: out_tx.clone(),
                            next_seq: next_seq.clone(),
                            awaiting: awaiting.clone(),
                            submits: submits.clone(),
                            kill: kill_tx.clone(),
                        },
                    );
                }
                bound = Some((mode, system_id.clone()));
                if can_receive {
                    flush_pending_dlrs(&sim, &system_id);
                }
            }
            Pdu::SubmitSm(sm) => {
                inc(&sim.stats.submit_sm_total);
                sim.note_submit();
                submits.fetch_add(1, Ordering::Relaxed);
                let Some((mode, system_id)) = bound.clone().filter(|(m, _)| *m != BindMode::Receiver) else {
                    inc(&sim.stats.submit_sm_unbound);
                    send(pdu::header(0x8000_0004, status::INVALID_BIND_STATUS, frame.seq));
                    continue;
                };
                let second = crate::message::now_ms() / 1000;
                if second != window_second {
                    window_second = second;
                    in_window = 0;
                }
                in_window += 1;
                if sim.config.throttle_per_sec > 0 && in_window > sim.config.throttle_per_sec {
                    inc(&sim.stats.throttled);
                    if let Some(r) = &sim.recorder {
                        r.record(session_id, &system_id, frame.seq, status::THROTTLED, None, &sm);
                    }
                    send(pdu::header(0x8000_0004, status::THROTTLED, frame.seq));
                    continue;
                }
                let test_number =
                    if sim.config.test_numbers { super::test_numbers::behaviour(&sm.dest.addr) } else { None };
                let refusal = match test_number {
                    Some(Behaviour::Refused(code)) => Some(code),
                    Some(Behaviour::Throttled) if sim.throttle_test_number() => Some(status::THROTTLED),
                    _ => None,
                };
                if let Some(code) = refusal {
                    if let Some(r) = &sim.recorder {
                        r.record(session_id, &system_id, frame.seq, code, None, &sm);
                    }
                    send(pdu::header(0x8000_0004, code, frame.seq));
                    continue;
                }
                let n = sim.submits_seen.fetch_add(1, Ordering::Relaxed) + 1;
                let ratio = sim.config.error_ratio;
                if ratio > 0.0 && (n as f64 * ratio).floor() > ((n - 1) as f64 * ratio).floor() {
                    inc(&sim.stats.submit_sm_error_injected);
                    if let Some(r) = &sim.recorder {
                        r.record(session_id, &system_id, frame.seq, sim.config.error_status, None, &sm);
                    }
                    send(pdu::header(0x8000_0004, sim.config.error_status, frame.seq));
                    continue;
                }
                let counter = sim.next_msgid.fetch_add(1, Ordering::Relaxed);
                let id = if sim.config.msgid_decimal { counter.to_string() } else { format!("{counter:x}") };
                inc(&sim.stats.submit_sm_ok);
                if let Some(r) = &sim.recorder {
                    r.record(session_id, &system_id, frame.seq, status::OK, Some(&id), &sm);
                }
                let resp = pdu::submit_sm_resp(frame.seq, status::OK, &id).unwrap_or_default();
                if sim.config.resp_delay_ms > 0 {
                    let (out, closed, sim) = (out_tx.clone(), closed.clone(), sim.clone());
                    let delay = Duration::from_millis(sim.config.resp_delay_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if closed.load(Ordering::Acquire) || out.send(resp).await.is_err() {
                            inc(&sim.stats.submit_sm_unanswered);
                        }
                    });
                } else {
                    send(resp);
                }
                if sm.registered_delivery & 0x03 != 0 && test_number != Some(Behaviour::NoReceipt) {
                    schedule_receipt(&sim, session_id, mode, system_id, id, *sm, test_number);
                }
                let answered = submits.load(Ordering::Relaxed);
                if sim.config.drop_after > 0
                    && answered == sim.config.drop_after
                    && (sim.config.drop_every || !sim.dropped_once.swap(true, Ordering::AcqRel))
                {
                    // Fault injection: close right after this response; later submits on
                    // this connection get no answer.
                    inc(&sim.stats.drops);
                    break;
                }
            }
            Pdu::DeliverSmResp => {
                let waiter = awaiting.lock().ok().and_then(|mut a| a.remove(&frame.seq));
                if let Some(w) = waiter {
                    let _ = w.send(frame.status);
                }
            }
            Pdu::EnquireLink => {
                inc(&sim.stats.enquire_link);
                send(pdu::enquire_link_resp(frame.seq));
            }
            Pdu::Unbind => {
                inc(&sim.stats.unbind);
                send(pdu::unbind_resp(frame.seq));
                break;
            }
            Pdu::GenericNack
            | Pdu::EnquireLinkResp
            | Pdu::UnbindResp
            | Pdu::BindResp { .. }
            | Pdu::SubmitSmResp { .. } => {}
            Pdu::DeliverSm(_) | Pdu::Unsupported => {
                inc(&sim.stats.generic_nack_sent);
                send(pdu::generic_nack(frame.seq, status::INVALID_CMD_ID));
            }
        }
    }
    closed.store(true, Ordering::Release);
    if let Ok(mut sessions) = sim.sessions.lock() {
        sessions.remove(&session_id);
    }
    // Receipts whose deliver_sm_resp never came are sent again on the next bind.
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}

fn schedule_receipt(
    sim: &Arc<Sim>,
    session_id: u64,
    mode: BindMode,
    system_id: String,
    id: String,
    submitted: ShortMessage,
    test_number: Option<Behaviour>,
) {
    let n = sim.accepted.fetch_add(1, Ordering::Relaxed) + 1;
    // Deterministic accumulator: exactly `ratio` of the messages fail.
    let ratio = sim.config.dlr_fail_ratio;
    let (lo, hi) = sim.config.dlr_delay_ms;
    let mut delay = if hi > lo { lo + crate::fsutil::random_u64() % (hi - lo + 1) } else { lo };
    let (stat, dlvrd, err, state) = match test_number {
        Some(Behaviour::Receipt { stat, state }) => (stat, "000", "001", state),
        _ if ratio > 0.0 && ((n as f64 * ratio).floor() > ((n - 1) as f64 * ratio).floor()) => {
            ("UNDELIV", "000", "001", 5u8)
        }
        _ => ("DELIVRD", "001", "000", 2u8),
    };
    if let Some(Behaviour::SlowReceipt { delay_ms }) = test_number {
        delay = delay_ms;
    }
    let fail = state != 2;
    let sim = sim.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let now = jiff::Timestamp::now().strftime("%y%m%d%H%M").to_string();
        let decimal_text = sim.config.receipt_id_decimal_text;
        let text_id = match u128::from_str_radix(&id, if sim.config.msgid_decimal { 10 } else { 16 }) {
            Ok(n) if decimal_text => n.to_string(),
            _ => id.clone(),
        };
        let text =
            format!("id:{text_id} sub:001 dlvrd:{dlvrd} submit date:{now} done date:{now} stat:{stat} err:{err} text:");
        let receipt = ShortMessage {
            source: Address { ton: submitted.dest.ton, npi: submitted.dest.npi, addr: submitted.dest.addr.clone() },
            dest: Address { ton: submitted.source.ton, npi: submitted.source.npi, addr: submitted.source.addr.clone() },
            esm_class: 0x04,
            short_message: Bytes::from(text.into_bytes()),
            tlvs: if decimal_text {
                pdu::Tlvs::default()
            } else {
                pdu::Tlvs {
                    receipted_message_id: Some(id),
                    message_state: Some(state),
                    network_error_code: fail.then_some((3, 1)),
                    ..Default::default()
                }
            },
            ..ShortMessage::default()
        };
        let target = if mode == BindMode::Transceiver { Some(session_id) } else { None };
        deliver_receipt(&sim, &system_id, target, receipt, fail).await;
    });
}

async fn deliver_receipt(sim: &Arc<Sim>, system_id: &str, session: Option<u64>, receipt: ShortMessage, fail: bool) {
    let pushed = sim
        .push_deliver(Some(system_id), session, &receipt)
        .or_else(|| sim.push_deliver(Some(system_id), None, &receipt));
    match pushed {
        Some((_, rx)) => {
            inc(&sim.stats.dlr_sent);
            inc(if fail { &sim.stats.dlr_undeliv } else { &sim.stats.dlr_delivered });
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(0)) => inc(&sim.stats.dlr_resp_ok),
                Ok(Ok(_)) => inc(&sim.stats.dlr_resp_error),
                // Connection closed before the answer: send it again on the next bind.
                _ => park(sim, system_id, receipt),
            }
        }
        None => park(sim, system_id, receipt),
    }
}

fn park(sim: &Arc<Sim>, system_id: &str, pdu: ShortMessage) {
    if let Ok(mut p) = sim.pending_dlrs.lock() {
        p.push(PendingDlr { system_id: system_id.to_string(), pdu });
        sim.stats.dlr_pending.store(p.len() as u64, Ordering::Relaxed);
    }
}

fn flush_pending_dlrs(sim: &Arc<Sim>, system_id: &str) {
    let mine: Vec<PendingDlr> = match sim.pending_dlrs.lock() {
        Ok(mut p) => {
            let (mine, rest): (Vec<_>, Vec<_>) = p.drain(..).partition(|d| d.system_id == system_id);
            *p = rest;
            sim.stats.dlr_pending.store(p.len() as u64, Ordering::Relaxed);
            mine
        }
        Err(_) => return,
    };
    for d in mine {
        let sim = sim.clone();
        let system_id = system_id.to_string();
        tokio::spawn(async move {
            let fail = d.pdu.tlvs.message_state == Some(5);
            deliver_receipt(&sim, &system_id, None, d.pdu, fail).await;
        });
    }
}
