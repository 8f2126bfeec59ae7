//! Protocol hygiene against a scripted SMSC on a real socket: every malformed or unexpected
//! PDU is answered (generic_nack) without losing the bind, an unframeable stream ends only
//! that bind, the SMSC's unbind is answered, silence is detected, throttling is retried.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use hyper::StatusCode;
use serde_json::json;
use smsgate::smpp::codec::frame::FrameReader;
use smsgate::smpp::codec::pdu::{self, Frame, ShortMessage, id, status};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// One accepted, bound connection of the scripted SMSC.
struct Peer {
    reader: FrameReader<ReadHalf<TcpStream>>,
    writer: WriteHalf<TcpStream>,
}

impl Peer {
    async fn accept(listener: &TcpListener) -> Peer {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("gateway reconnects")
            .unwrap();
        let (r, w) = tokio::io::split(tcp);
        let mut peer = Peer { reader: FrameReader::new(r), writer: w };
        let bind = peer.next().await;
        assert_eq!(bind.command_id, id::BIND_TRANSCEIVER);
        peer.send(&pdu::encode_bind_resp(bind.seq, pdu::BindMode::Transceiver, status::OK, "SCRIPT").unwrap()).await;
        peer
    }

    async fn next(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), self.reader.next())
            .await
            .expect("a PDU in time")
            .unwrap()
            .expect("open")
    }

    /// The next PDU that is not an enquire_link (answered on the way).
    async fn next_non_keepalive(&mut self) -> Frame {
        loop {
            let f = self.next().await;
            if f.command_id == id::ENQUIRE_LINK {
                self.send(&pdu::enquire_link_resp(f.seq)).await;
                continue;
            }
            return f;
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }
}

fn raw(command_id: u32, seq: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u32(16 + body.len() as u32);
    b.put_u32(command_id);
    b.put_u32(0);
    b.put_u32(seq);
    b.put_slice(body);
    b.freeze()
}

async fn gateway_for(listener: &TcpListener, extra: &str) -> (Certs, TestGateway, tempfile::TempDir) {
    gateway_with(listener, extra, "", smsgate::faults::Faults::default()).await
}

/// With extra top-level sections and injected faults.
async fn gateway_with(
    listener: &TcpListener,
    extra: &str,
    sections: &str,
    faults: smsgate::faults::Faults,
) -> (Certs, TestGateway, tempfile::TempDir) {
    let (certs, text, data) = script_config(listener, extra, sections);
    let gw = TestGateway::start_with(parse_config(&text), &certs, faults).await;
    (certs, gw, data)
}

/// The config text for a gateway whose one carrier is the scripted SMSC on `listener`.
fn script_config(listener: &TcpListener, extra: &str, sections: &str) -> (Certs, String, tempfile::TempDir) {
    let certs = Certs::new();
    let data = tempfile::tempdir().unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = config_text(data.path(), &certs, port, extra)
        .replace("tls = true", "tls = false")
        .replace(&format!("ca_file = \"{}\"\n", certs.path("smsc.crt").display()), "")
        .replace("[dispatch]\nretry_base_ms = 200", &format!("[dispatch]\nretry_base_ms = 50\n{sections}"));
    (certs, text, data)
}

fn history_details(m: &serde_json::Value) -> Vec<String> {
    m["history"].as_array().unwrap().iter().filter_map(|h| h["detail"].as_str().map(String::from)).collect()
}

#[tokio::test]
async fn malformed_and_unknown_pdus_get_generic_nack_and_the_bind_survives() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) = gateway_for(&listener, "").await;
    let mut peer = Peer::accept(&listener).await;

    // Unknown command id.
    peer.send(&raw(0x0000_0999, 77, b"")).await;
    let nack = peer.next_non_keepalive().await;
    assert_eq!((nack.command_id, nack.seq, nack.status), (id::GENERIC_NACK, 77, status::INVALID_CMD_ID));
    // deliver_sm whose body is garbage.
    peer.send(&raw(id::DELIVER_SM, 78, &[0xFF; 5])).await;
    let nack = peer.next_non_keepalive().await;
    assert_eq!((nack.command_id, nack.seq, nack.status), (id::GENERIC_NACK, 78, status::INVALID_CMD_LENGTH));
    // A submit_sm from the SMSC makes no sense for an ESME.
    let sm = ShortMessage { short_message: Bytes::from_static(b"x"), ..Default::default() };
    let mut bogus = BytesMut::from(&pdu::encode_submit_sm(79, &sm).unwrap()[..]);
    bogus[4..8].copy_from_slice(&id::SUBMIT_SM.to_be_bytes());
    peer.send(&bogus).await;
    assert_eq!(peer.next_non_keepalive().await.command_id, id::GENERIC_NACK);
    // A receipt with a receipted_message_id TLV missing its NUL, for an id we never sent:
    // acknowledged, counted, kept; nothing crashes.
    let receipt = ShortMessage {
        esm_class: 0x04,
        short_message: Bytes::from_static(b"id:zz stat:DELIVRD err:000"),
        ..Default::default()
    };
    let mut dlr = BytesMut::from(&pdu::encode_deliver_sm(80, &receipt).unwrap()[..]);
    dlr.put_u16(pdu::tag::RECEIPTED_MESSAGE_ID);
    dlr.put_u16(2);
    dlr.put_slice(b"zz");
    let len = dlr.len() as u32;
    dlr[..4].copy_from_slice(&len.to_be_bytes());
    peer.send(&dlr).await;
    let resp = peer.next_non_keepalive().await;
    assert_eq!((resp.command_id, resp.seq, resp.status), (0x8000_0005, 80, status::OK));
    // The SMSC's enquire_link is answered.
    peer.send(&pdu::enquire_link(81)).await;
    let r = peer.next_non_keepalive().await;
    assert_eq!((r.command_id, r.seq), (0x8000_0015, 81));
    // Still bound: a message goes out on this very connection.
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "still bound"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let submit = peer.next_non_keepalive().await;
    assert_eq!(submit.command_id, id::SUBMIT_SM);
    peer.send(&pdu::submit_sm_resp(submit.seq, status::OK, "A1").unwrap()).await;
    let m = gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "submitted").await;
    assert_eq!(m["status"], "submitted");

    // The SMSC unbinds: answered, and the gateway binds again.
    peer.send(&pdu::unbind(82)).await;
    let r = peer.next_non_keepalive().await;
    assert_eq!((r.command_id, r.seq), (0x8000_0006, 82));
    let mut peer = Peer::accept(&listener).await;
    // An unframeable stream (command_length 3) ends that bind only; the gateway reconnects.
    peer.send(&[0, 0, 0, 3, 1, 2, 3]).await;
    let _peer = Peer::accept(&listener).await;
    assert_eq!(gw.client.get("/healthz").await.status, StatusCode::OK);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn throttling_is_retried_and_silence_recycles_the_bind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) = gateway_for(&listener, "").await;
    let mut peer = Peer::accept(&listener).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "retry me"})).await;
    let id = a.json["id"].as_str().unwrap().to_string();
    // Throttled: the message comes back, not failed.
    let s1 = peer.next_non_keepalive().await;
    peer.send(&pdu::header(0x8000_0004, status::THROTTLED, s1.seq)).await;
    // Next attempt: no answer at all. The gateway must give up on this bind (response
    // timeout, 3 s in the test config), reconnect, and submit again.
    let s2 = peer.next_non_keepalive().await;
    assert_eq!(s2.command_id, id::SUBMIT_SM);
    let mut peer2 = Peer::accept(&listener).await;
    let s3 = peer2.next_non_keepalive().await;
    assert_eq!(s3.command_id, id::SUBMIT_SM);
    let text = |f: &Frame| match pdu::decode(f).unwrap() {
        pdu::Pdu::SubmitSm(sm) => (sm.dest.addr.clone(), sm.short_message.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!(text(&s3), text(&s2), "the same message is sent again");
    peer2.send(&pdu::submit_sm_resp(s3.seq, status::OK, "B7").unwrap()).await;
    let m = gw.client.wait_message(&id, PATIENCE, |m| m["status"] == "submitted").await;
    assert_eq!(m["status"], "submitted", "{m}");
    assert_eq!(m["carrier_message_ids"][0], "B7");
    let details: Vec<String> =
        m["history"].as_array().unwrap().iter().filter_map(|h| h["detail"].as_str().map(String::from)).collect();
    assert!(details.contains(&"carrier_throttled".to_string()), "{details:?}");
    assert!(details.contains(&"no_response".to_string()), "{details:?}");
    drop(peer);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn permanent_errors_fail_the_message_with_the_carrier_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) = gateway_for(&listener, "").await;
    let mut peer = Peer::accept(&listener).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "bad destination"})).await;
    let s = peer.next_non_keepalive().await;
    peer.send(&pdu::header(0x8000_0004, status::INVALID_DEST, s.seq)).await;
    let m = gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "failed").await;
    assert_eq!(m["status"], "failed", "{m}");
    assert_eq!(m["error"]["code"], "carrier_rejected");
    assert_eq!(m["error"]["carrier_status"], status::INVALID_DEST);
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn an_unanswered_enquire_link_recycles_the_bind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) = gateway_for(&listener, "enquire_link_secs = 1\nresponse_timeout_secs = 1").await;
    let mut peer = Peer::accept(&listener).await;
    // Idle bind: the gateway asks; we stay silent.
    let e = peer.next().await;
    assert_eq!(e.command_id, id::ENQUIRE_LINK);
    let started = std::time::Instant::now();
    let _again = Peer::accept(&listener).await;
    // 1 s idle + 1 s timeout; the bound is what a loaded machine still meets.
    assert!(started.elapsed() < Duration::from_secs(10), "recycled after the response timeout");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_full_message_queue_is_throttling_not_an_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) = gateway_for(&listener, "throttle_pause_ms = 100").await;
    let mut peer = Peer::accept(&listener).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "queue full"})).await;
    let s1 = peer.next_non_keepalive().await;
    peer.send(&pdu::header(0x8000_0004, status::MSG_QUEUE_FULL, s1.seq)).await;
    let s2 = peer.next_non_keepalive().await;
    peer.send(&pdu::submit_sm_resp(s2.seq, status::OK, "Q1").unwrap()).await;
    let m = gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "submitted").await;
    assert_eq!(m["status"], "submitted", "{m}");
    assert_eq!(m["attempts"], 1, "ESME_RMSGQFUL is not an attempt: {m}");
    assert!(history_details(&m).contains(&"carrier_throttled".to_string()), "{m}");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn temporary_errors_stop_at_max_attempts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) =
        gateway_with(&listener, "", "max_attempts = 3\nretry_max_ms = 200", smsgate::faults::Faults::default()).await;
    let mut peer = Peer::accept(&listener).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "always failing"})).await;
    for _ in 0..3 {
        let s = peer.next_non_keepalive().await;
        assert_eq!(s.command_id, id::SUBMIT_SM);
        peer.send(&pdu::header(0x8000_0004, status::SYSTEM_ERROR, s.seq)).await;
    }
    let m = gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "failed").await;
    assert_eq!((m["status"].as_str(), m["error"]["code"].as_str()), (Some("failed"), Some("max_attempts")), "{m}");
    assert_eq!((m["attempts"].as_u64(), m["error"]["carrier_status"].as_u64()), (Some(3), Some(8)), "{m}");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_generic_nack_answering_a_submit_counts_as_that_status() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_certs, gw, _data) = gateway_for(&listener, "").await;
    let mut peer = Peer::accept(&listener).await;
    // A temporary status in a generic_nack: retried, then accepted.
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "nacked once"})).await;
    let s1 = peer.next_non_keepalive().await;
    peer.send(&pdu::generic_nack(s1.seq, status::SYSTEM_ERROR)).await;
    let s2 = peer.next_non_keepalive().await;
    peer.send(&pdu::submit_sm_resp(s2.seq, status::OK, "N2").unwrap()).await;
    let m = gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "submitted").await;
    assert_eq!((m["status"].as_str(), m["attempts"].as_u64()), (Some("submitted"), Some(2)), "{m}");
    // A permanent one (invalid command length): the message fails with it.
    let b = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "nacked for good"})).await;
    let s3 = peer.next_non_keepalive().await;
    peer.send(&pdu::generic_nack(s3.seq, status::INVALID_CMD_LENGTH)).await;
    let m = gw.client.wait_message(b.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "failed").await;
    assert_eq!((m["status"].as_str(), m["error"]["carrier_status"].as_u64()), (Some("failed"), Some(2)), "{m}");
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_receipt_the_store_cannot_take_is_refused_with_syserr() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let faults = smsgate::faults::Faults::default();
    let (_certs, gw, _data) = gateway_with(&listener, "", "", faults.clone()).await;
    let mut peer = Peer::accept(&listener).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "receipt refused"})).await;
    let s = peer.next_non_keepalive().await;
    peer.send(&pdu::submit_sm_resp(s.seq, status::OK, "R1").unwrap()).await;
    gw.client.wait_message(a.json["id"].as_str().unwrap(), PATIENCE, |m| m["status"] == "submitted").await;
    // The disk fails: the receipt is not acknowledged, so the SMSC keeps it and sends it again.
    faults.fail_sync_at(1);
    let receipt = ShortMessage {
        esm_class: 0x04,
        short_message: Bytes::from_static(
            b"id:R1 sub:001 dlvrd:001 submit date:2601011200 done date:2601011201 stat:DELIVRD err:000",
        ),
        ..Default::default()
    };
    peer.send(&pdu::encode_deliver_sm(90, &receipt).unwrap()).await;
    let resp = peer.next_non_keepalive().await;
    assert_eq!((resp.command_id, resp.seq, resp.status), (0x8000_0005, 90, status::SYSTEM_ERROR));
    // So is an inbound text.
    let mo = ShortMessage {
        source: pdu::Address { ton: 1, npi: 1, addr: "14155550123".into() },
        short_message: Bytes::from_static(b"STOP"),
        ..Default::default()
    };
    peer.send(&pdu::encode_deliver_sm(91, &mo).unwrap()).await;
    let resp = peer.next_non_keepalive().await;
    assert_eq!((resp.command_id, resp.seq, resp.status), (0x8000_0005, 91, status::SYSTEM_ERROR));
    gw.gateway.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_deliver_sm_is_throttled_past_the_per_bind_cap() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let faults = smsgate::faults::Faults::default();
    let (_certs, gw, _data) = gateway_with(&listener, "", "", faults.clone()).await;
    let mut peer = Peer::accept(&listener).await;
    // The store stalls: every inbound text waits for its commit.
    faults.hold_commits(true);
    let cap = smsgate::smpp::client::session::INBOUND_IN_FLIGHT as u32;
    let sent = cap + 36;
    for seq in 1..=sent {
        let mo = ShortMessage {
            source: pdu::Address { ton: 1, npi: 1, addr: "14155550123".into() },
            short_message: Bytes::from(format!("reply {seq}")),
            ..Default::default()
        };
        peer.send(&pdu::encode_deliver_sm(seq, &mo).unwrap()).await;
    }
    // Those past the cap are turned away at once, with a status the SMSC retries.
    let mut throttled = Vec::new();
    for _ in 0..sent - cap {
        let r = peer.next_non_keepalive().await;
        assert_eq!((r.command_id, r.status), (0x8000_0005, status::THROTTLED), "seq {}", r.seq);
        throttled.push(r.seq);
    }
    throttled.sort_unstable();
    assert_eq!(throttled, (cap + 1..=sent).collect::<Vec<_>>(), "the ones past the cap");
    let exposition = http_text(gw.gateway.metrics_addr, "/metrics").await;
    let counted = metric(&exposition, "smsgate_smpp_inbound_throttled_total{carrier=\"sim\"}");
    assert_eq!(counted, Some(f64::from(sent - cap)), "counted");
    // The store moves again: every text within the cap is taken and acknowledged.
    faults.hold_commits(false);
    let mut ok = Vec::new();
    for _ in 0..cap {
        let r = peer.next_non_keepalive().await;
        assert_eq!((r.command_id, r.status), (0x8000_0005, status::OK), "seq {}", r.seq);
        ok.push(r.seq);
    }
    ok.sort_unstable();
    assert_eq!(ok, (1..=cap).collect::<Vec<_>>());
    let listed = gw.client.get("/v1/inbound?limit=500").await.json;
    assert_eq!(listed["inbound"].as_array().unwrap().len(), cap as usize, "{listed}");
    gw.gateway.shutdown().await;
}

fn text_receipt(id: &str, stat: &str) -> ShortMessage {
    ShortMessage {
        esm_class: 0x04,
        short_message: Bytes::from(format!(
            "id:{id} sub:001 dlvrd:001 submit date:2601011200 done date:2601011201 stat:{stat} err:000"
        )),
        ..Default::default()
    }
}

/// A hexadecimal carrier's early receipt (`26`, before its submit_sm_resp) must not be taken
/// for another message whose id is the same number in another base (`1a` = 26).
#[tokio::test]
async fn an_early_receipt_is_not_matched_to_another_message_by_another_reading_of_its_id() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Answers may take long here (the test waits for the parked receipt's retries).
    let (certs, text, _data) = script_config(&listener, "", "");
    let text = text.replace("response_timeout_secs = 3", "response_timeout_secs = 30");
    let gw = TestGateway::start(parse_config(&text), &certs).await;
    let mut peer = Peer::accept(&listener).await;
    let a = gw.client.post("/v1/messages", &json!({"to": "+14155550123", "body": "message a"})).await;
    let b = gw.client.post("/v1/messages", &json!({"to": "+14155550124", "body": "message b"})).await;
    let (a, b) = (a.json["id"].as_str().unwrap().to_string(), b.json["id"].as_str().unwrap().to_string());
    let sa = peer.next_non_keepalive().await;
    let sb = peer.next_non_keepalive().await;
    // The carrier writes ids in hex; nothing says yet that its receipts are decimal.
    peer.send(&pdu::submit_sm_resp(sa.seq, status::OK, "1a").unwrap()).await;
    gw.client.wait_message(&a, PATIENCE, |m| m["status"] == "submitted").await;
    // B's receipt overtakes B's submit_sm_resp.
    peer.send(&pdu::encode_deliver_sm(70, &text_receipt("26", "UNDELIV")).unwrap()).await;
    let r = peer.next_non_keepalive().await;
    assert_eq!((r.command_id, r.status), (0x8000_0005, status::OK));
    // Past the moment after which parked receipts are tried in other forms.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ma = gw.client.get(&format!("/v1/messages/{a}")).await.json;
    assert_eq!(ma["status"], "submitted", "A is untouched: {ma}");
    // B's submit_sm_resp: the parked receipt is B's.
    peer.send(&pdu::submit_sm_resp(sb.seq, status::OK, "26").unwrap()).await;
    let mb = gw.client.wait_message(&b, PATIENCE, |m| m["status"] == "undeliverable").await;
    assert_eq!(mb["status"], "undeliverable", "{mb}");
    assert_eq!(gw.client.get(&format!("/v1/messages/{a}")).await.json["status"], "submitted");
    gw.gateway.shutdown().await;
}
