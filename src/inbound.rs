//! What smsgate does with a `deliver_sm`: receipts update their message, anything else is an
//! inbound (mobile-originated) text and is stored. Both are durable before the
//! `deliver_sm_resp` goes back, so an acknowledged PDU is never lost; when the store fails
//! the answer is `ESME_RSYSERR` and the SMSC sends it again later.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::message::{Status, now_ms};
use crate::metrics as m;
use crate::smpp::pdu::{ShortMessage, status};
use crate::smpp::receipt::{self, IdFormat, normalize_id};
use crate::smpp::session::InboundHandler;
use crate::store::{Op, OpResult, Store, layout};
use crate::text;

/// An inbound text as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// Accept order; the paging cursor.
    pub seq: u64,
    /// Carrier it came from.
    pub carrier: String,
    /// Sender (the handset), as the carrier wrote it.
    pub from: String,
    /// Our number or short code it was sent to.
    pub to: String,
    /// Decoded text.
    pub body: String,
    /// Received at (ms).
    pub received_ms: u64,
}

/// Handles receipts and inbound texts for every carrier.
pub struct Inbound {
    store: Store,
    id_formats: HashMap<String, IdFormat>,
}

impl Inbound {
    /// `id_formats`: how each carrier writes receipt ids.
    pub fn new(store: Store, id_formats: HashMap<String, IdFormat>) -> Arc<Self> {
        Arc::new(Inbound { store, id_formats })
    }

    async fn handle(&self, carrier: &str, sm: ShortMessage) -> u32 {
        if sm.is_receipt() { self.receipt(carrier, &sm).await } else { self.mobile_originated(carrier, &sm).await }
    }

    async fn receipt(&self, carrier: &str, sm: &ShortMessage) -> u32 {
        m::inbound(carrier, "receipt");
        let Some(r) = receipt::parse(sm) else {
            m::receipt(carrier, "unparseable");
            warn!(carrier, "receipt without a message id; acknowledged and dropped");
            return status::OK;
        };
        let format = self.id_formats.get(carrier).copied().unwrap_or_default();
        let op = Op::Receipt {
            carrier: carrier.to_string(),
            carrier_message_id: normalize_id(&r.id, format),
            outcome: r.outcome,
        };
        match self.store.commit_one(op).await {
            Ok(OpResult::Updated { status, became_final, created_ms, .. }) => {
                m::receipt(carrier, "matched");
                if became_final {
                    m::finished(carrier, status.as_str());
                    if status != Status::Expired {
                        m::delivered(carrier, now_ms().saturating_sub(created_ms) as f64 / 1000.0);
                    }
                }
                status::OK
            }
            Ok(OpResult::Orphan) => {
                // Before its submit_sm_resp was recorded, or for a message we never sent.
                m::receipt(carrier, "orphan");
                debug!(carrier, "receipt kept until its submit_sm_resp is recorded");
                status::OK
            }
            Ok(OpResult::AlreadyFinal(_)) => {
                m::receipt(carrier, "duplicate");
                status::OK
            }
            Ok(_) => {
                m::receipt(carrier, "unknown");
                status::OK
            }
            Err(e) => {
                warn!(carrier, error = %e, "cannot record receipt; asking the SMSC to retry");
                status::SYSTEM_ERROR
            }
        }
    }

    async fn mobile_originated(&self, carrier: &str, sm: &ShortMessage) -> u32 {
        m::inbound(carrier, "mo");
        let seq = match self.store.next_seq() {
            Ok(s) => s,
            Err(_) => return status::SYSTEM_ERROR,
        };
        let msg = InboundMessage {
            seq,
            carrier: carrier.to_string(),
            from: address(&sm.source.addr, sm.source.ton),
            to: address(&sm.dest.addr, sm.dest.ton),
            body: decode_text(sm),
            received_ms: now_ms(),
        };
        let key = layout::inbound(seq);
        let op = match crate::store::encode(&key, &msg) {
            Ok(value) => Op::Put { key, value },
            Err(_) => return status::SYSTEM_ERROR,
        };
        match self.store.commit_one(op).await {
            Ok(_) => status::OK,
            Err(e) => {
                warn!(carrier, error = %e, "cannot store inbound message; asking the SMSC to retry");
                status::SYSTEM_ERROR
            }
        }
    }
}

impl InboundHandler for Inbound {
    fn deliver(&self, carrier: Arc<str>, sm: ShortMessage) -> Pin<Box<dyn Future<Output = u32> + Send>> {
        let this = Inbound { store: self.store.clone(), id_formats: self.id_formats.clone() };
        Box::pin(async move { this.handle(&carrier, sm).await })
    }
}

/// International numbers (TON 1) get their `+` back.
fn address(addr: &str, ton: u8) -> String {
    if ton == 1 && !addr.starts_with('+') { format!("+{addr}") } else { addr.to_string() }
}

/// Decodes an inbound text; a UDH (esm_class 0x40) is skipped.
pub fn decode_text(sm: &ShortMessage) -> String {
    let mut payload: &[u8] = sm.payload();
    if sm.esm_class & 0x40 != 0
        && let Some(&udh_len) = payload.first()
    {
        payload = payload.get(usize::from(udh_len) + 1..).unwrap_or(&[]);
    }
    match sm.data_coding {
        0x08 => text::ucs2_decode(payload),
        0x03 => text::latin1_decode(payload),
        0x01 => String::from_utf8_lossy(payload).into_owned(),
        dc if dc & 0xF0 == 0xF0 && dc & 0x04 == 0 => text::gsm_decode(payload),
        dc if dc & 0xC0 == 0 && dc & 0x0C == 0x08 => text::ucs2_decode(payload),
        _ => text::gsm_decode(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn inbound_text_decodes_by_data_coding_and_skips_udh() {
        let sm = ShortMessage {
            data_coding: 0,
            short_message: Bytes::from(text::gsm_encode("STOP €").unwrap()),
            ..Default::default()
        };
        assert_eq!(decode_text(&sm), "STOP €");
        let sm = ShortMessage {
            data_coding: 8,
            short_message: Bytes::from(text::ucs2_encode("Alto 👋")),
            ..Default::default()
        };
        assert_eq!(decode_text(&sm), "Alto 👋");
        let mut udh = vec![5, 0, 3, 1, 2, 1];
        udh.extend(text::gsm_encode("part").unwrap());
        let sm = ShortMessage { esm_class: 0x40, short_message: Bytes::from(udh), ..Default::default() };
        assert_eq!(decode_text(&sm), "part");
        let sm = ShortMessage { esm_class: 0x40, short_message: Bytes::from_static(&[200]), ..Default::default() };
        assert_eq!(decode_text(&sm), "");
    }

    #[test]
    fn international_addresses_get_a_plus() {
        assert_eq!(address("15551234567", 1), "+15551234567");
        assert_eq!(address("12345", 3), "12345");
    }
}
