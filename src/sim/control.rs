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
use crate::smpp::pdu::ShortMessage;
use crate::smpp::submit::source_address;
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

/// Injects a mobile-originated text as `deliver_sm` (split with a UDH when long) and
/// answers once every part's `deliver_sm_resp` is back.
async fn mo(sim: &Arc<Sim>, body: &Bytes) -> Response<Full<Bytes>> {
    let bad = |m: &str| json_response(StatusCode::BAD_REQUEST, &json!({"ok": false, "error": m}));
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return bad("body must be JSON");
    };
    let (Some(from), Some(to), Some(msg)) = (v["from"].as_str(), v["to"].as_str(), v["text"].as_str()) else {
        return bad("from, to and text are required");
    };
    let system_id = v["system_id"].as_str();
    let session = v["session"].as_u64();
    let gsm = text::gsm_encode(msg).filter(|_| v["data_coding"].as_u64() != Some(8));
    let (data_coding, encoding) = if gsm.is_some() { (0u8, text::Encoding::Gsm7) } else { (8u8, text::Encoding::Ucs2) };
    let encode = |s: &str| {
        if data_coding == 0 { text::gsm_encode(s).unwrap_or_default() } else { text::ucs2_encode(s) }
    };
    let single = text::analyze(msg).units <= encoding.single_capacity() || text::analyze(msg).encoding != encoding;
    let pieces: Vec<&str> = if single { vec![msg] } else { text::split(msg, encoding, encoding.segment_capacity(6)) };
    let reference = (crate::fsutil::random_u64() & 0xFF) as u8;
    let mut statuses = Vec::new();
    let mut used_session = None;
    for (i, piece) in pieces.iter().enumerate() {
        let mut sm = BytesMut::new();
        let mut esm_class = 0u8;
        if pieces.len() > 1 {
            sm.put_slice(&[5, 0, 3, reference, pieces.len() as u8, i as u8 + 1]);
            esm_class = 0x40;
        }
        sm.put_slice(&encode(piece));
        let pdu = ShortMessage {
            source: source_address(from),
            dest: source_address(to),
            esm_class,
            data_coding,
            short_message: sm.freeze(),
            ..ShortMessage::default()
        };
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
