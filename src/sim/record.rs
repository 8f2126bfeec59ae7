//! `--record FILE`: one JSON line per received `submit_sm`, in the format of
//! `shared/tools/smsc-sim`, so the same checks read either simulator's file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::fsutil::hex;
use crate::smpp::codec::pdu::ShortMessage;
use crate::text;

/// Appends records to a file, flushing each line (a killed test still finds every record).
pub struct Recorder {
    out: Mutex<BufWriter<File>>,
    n: AtomicU64,
}

impl Recorder {
    /// Creates (truncates) the record file.
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        Ok(Recorder { out: Mutex::new(BufWriter::new(File::create(path)?)), n: AtomicU64::new(0) })
    }

    /// Writes one record.
    pub fn record(
        &self,
        session: u64,
        system_id: &str,
        seq: u32,
        command_status: u32,
        message_id: Option<&str>,
        sm: &ShortMessage,
    ) {
        let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
        let mut line = describe(sm);
        line["ts"] = json!(jiff::Timestamp::now().to_string());
        line["n"] = json!(n);
        line["session"] = json!(session);
        line["system_id"] = json!(system_id);
        line["seq"] = json!(seq);
        line["command_status"] = json!(command_status);
        line["message_id"] = json!(message_id);
        if let Ok(mut out) = self.out.lock() {
            let _ = serde_json::to_writer(&mut *out, &line);
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    }
}

/// The record fields that describe the PDU itself.
pub fn describe(sm: &ShortMessage) -> Value {
    let payload = sm.payload();
    let has_udh = sm.esm_class & 0x40 != 0;
    let (udh, data): (&[u8], &[u8]) = match payload.first() {
        Some(&len) if has_udh && payload.len() > usize::from(len) => payload.split_at(usize::from(len) + 1),
        _ => (&[], &payload[..]),
    };
    let mut concat = Value::Null;
    let mut ies = Vec::new();
    let mut i = 1;
    while i + 1 < udh.len() {
        let (iei, len) = (udh[i], usize::from(udh[i + 1]));
        let Some(ie) = udh.get(i + 2..i + 2 + len) else {
            break;
        };
        ies.push(json!({"iei": iei, "data": hex(ie)}));
        match (iei, ie) {
            (0x00, [r, t, s]) => concat = json!({"ref": r, "total": t, "seq": s, "ref_bits": 8}),
            (0x08, [r1, r2, t, s]) => {
                concat = json!({"ref": u16::from_be_bytes([*r1, *r2]), "total": t, "seq": s, "ref_bits": 16})
            }
            _ => {}
        }
        i += 2 + len;
    }
    if let Some((r, t, s)) = sm.tlvs.sar {
        concat = json!({"ref": r, "total": t, "seq": s, "ref_bits": 16, "sar": true});
    }
    let (alphabet, text) = match sm.data_coding {
        0 => ("gsm", Some(text::gsm_decode(data))),
        1 => ("ascii", Some(String::from_utf8_lossy(data).into_owned())),
        3 => ("latin1", Some(text::latin1_decode(data))),
        8 => ("ucs2", Some(text::ucs2_decode(data))),
        _ => ("binary", None),
    };
    json!({
        "source": sm.source.addr, "source_ton": sm.source.ton, "source_npi": sm.source.npi,
        "destination": sm.dest.addr, "dest_ton": sm.dest.ton, "dest_npi": sm.dest.npi,
        "service_type": sm.service_type, "data_coding": sm.data_coding, "esm_class": sm.esm_class,
        "registered_delivery": sm.registered_delivery, "udh": has_udh, "udh_hex": hex(udh), "udh_ies": ies,
        "concat": concat, "message_payload": sm.tlvs.message_payload.is_some(), "alphabet": alphabet, "text": text,
        "sm_length": sm.short_message.len(), "sm_hex": hex(&sm.short_message),
    })
}
