//! The simulator's HTTP control interface (loopback): `/stats`, `/mo`, `/sessions`,
//! `/reset`, `/drop`, `/health`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{Sim, inc};
use crate::api::json_response;
use crate::httpd;
use crate::smpp::client::submit::source_address;
use crate::smpp::codec::pdu::ShortMessage;
use crate::text;

pub(super) async fn serve(sim: Arc<Sim>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    httpd::serve(listener, shutdown, move |req| {
        let sim = sim.clone();
        async move { handle(&sim, req).await }
    })
    .await;
}

async fn handle(sim: &Arc<Sim>, req: Request<Bytes>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => json_response(StatusCode::OK, &sim.stats_json()),
        (&Method::GET, "/sessions") => json_response(StatusCode::OK, &sim.sessions_json()),
        (&Method::GET, "/health") => httpd::text(StatusCode::OK, "ok"),
        (&Method::POST, "/reset") => {
            sim.reset();
            json_response(StatusCode::OK, &json!({"ok": true}))
        }
        (&Method::POST, "/drop") => json_response(StatusCode::OK, &json!({"ok": true, "dropped": sim.drop_all()})),
        (&Method::POST, "/mo") => mo(sim, req.body()).await,
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

/// How a long injected text is split: a UDH with an 8-bit (`udh8`, the default) or 16-bit
/// (`udh16`) reference, `sar_*` TLVs (`sar`), or whole in `message_payload` (`payload`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Concat {
    Udh8,
    Udh16,
    Sar,
    Payload,
}

/// Injects a mobile-originated text as `deliver_sm` (split when long) and answers once every
/// part's `deliver_sm_resp` is back. Optional: `concat` (above), `parts` (the pieces, for a
/// text split where a test wants it), `only` (the part numbers to send, from 1; the others
/// never come, or come in a later request with the same `reference`).
async fn mo(sim: &Arc<Sim>, body: &Bytes) -> Response<Full<Bytes>> {
    let bad = |m: &str| json_response(StatusCode::BAD_REQUEST, &json!({"ok": false, "error": m}));
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return bad("body must be JSON");
    };
    let (Some(from), Some(to), Some(msg)) = (v["from"].as_str(), v["to"].as_str(), v["text"].as_str()) else {
        return bad("from, to and text are required");
    };
    let concat = match v["concat"].as_str() {
        None | Some("udh8") => Concat::Udh8,
        Some("udh16") => Concat::Udh16,
        Some("sar") => Concat::Sar,
        Some("payload") => Concat::Payload,
        Some(_) => return bad("concat is udh8, udh16, sar or payload"),
    };
    let system_id = v["system_id"].as_str();
    let session = v["session"].as_u64();
    let gsm = text::gsm_encode(msg).filter(|_| v["data_coding"].as_u64() != Some(8));
    let (data_coding, encoding) = if gsm.is_some() { (0u8, text::Encoding::Gsm7) } else { (8u8, text::Encoding::Ucs2) };
    let encode = |s: &str| {
        if data_coding == 0 { text::gsm_encode(s).unwrap_or_default() } else { text::ucs2_encode(s) }
    };
    let given: Option<Vec<&str>> = v["parts"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect());
    let single = text::analyze(msg).units <= encoding.single_capacity() || text::analyze(msg).encoding != encoding;
    let pieces: Vec<&str> = match given {
        Some(p) => p,
        None if single || concat == Concat::Payload => vec![msg],
        None => text::split(msg, encoding, encoding.segment_capacity(6)),
    };
    let only: Option<Vec<u64>> = v["only"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect());
    let reference = v["reference"].as_u64().map_or_else(|| crate::fsutil::random_u64() & 0xFF, |r| r & 0xFFFF) as u16;
    let total = pieces.len() as u8;
    let mut statuses = Vec::new();
    let mut used_session = None;
    for (i, piece) in pieces.iter().enumerate() {
        let number = i as u8 + 1;
        if only.as_ref().is_some_and(|o| !o.contains(&u64::from(number))) {
            continue;
        }
        let mut sm = BytesMut::new();
        let mut pdu = ShortMessage {
            source: source_address(from),
            dest: source_address(to),
            data_coding,
            ..ShortMessage::default()
        };
        if total > 1 {
            let [hi, lo] = reference.to_be_bytes();
            match concat {
                Concat::Udh8 => sm.put_slice(&[5, 0, 3, lo, total, number]),
                Concat::Udh16 => sm.put_slice(&[6, 8, 4, hi, lo, total, number]),
                Concat::Sar => pdu.tlvs.sar = Some((reference, total, number)),
                Concat::Payload => {}
            }
            if matches!(concat, Concat::Udh8 | Concat::Udh16) {
                pdu.esm_class = 0x40;
            }
        }
        sm.put_slice(&encode(piece));
        if concat == Concat::Payload {
            pdu.tlvs.message_payload = Some(sm.freeze());
        } else {
            pdu.short_message = sm.freeze();
        }
        let Some((sid, rx)) = sim.push_deliver(system_id, used_session.or(session), &pdu) else {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ok": false, "error": "no receiver or transceiver bound"}),
            );
        };
        used_session = Some(sid);
        inc(&sim.stats.mo_sent);
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(status)) => {
                inc(if status == 0 { &sim.stats.mo_resp_ok } else { &sim.stats.mo_resp_error });
                statuses.push(status);
            }
            _ => {
                return json_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    &json!({"ok": false, "error": "no deliver_sm_resp within 10 s"}),
                );
            }
        }
    }
    json_response(
        StatusCode::OK,
        &json!({"ok": true, "session": used_session, "parts": pieces.len(), "data_coding": data_coding, "command_status": statuses}),
    )
}
