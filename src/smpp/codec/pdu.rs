//! SMPP 3.4 PDUs as smsgate uses them, encoded and decoded with `rusmpp` (pinned `=0.4.0`),
//! plus a lenient fallback for `deliver_sm`/`submit_sm`.
//!
//! Why the fallback: rusmpp rejects a whole PDU over one quirky TLV (a `receipted_message_id`
//! without its NUL is common in the field). Losing the PDU would make the carrier resend it
//! forever, so when rusmpp refuses a `deliver_sm` we parse the mandatory fields and walk the
//! TLVs by their own lengths. Anything else rusmpp cannot decode gets a `generic_nack`.
//!
//! Encoding is in [`super::encode`], re-exported here so that `pdu::` names every PDU function.

pub use super::encode::*;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rusmpp::decode::DecodeWithLength;
use rusmpp::tlvs::TlvValue;
use rusmpp::types::COctetString;
use rusmpp::values::InterfaceVersion;
use rusmpp::{Command, Pdu as RPdu};

/// Command ids used by smsgate (SMPP 3.4 §5.1.2.1).
pub mod id {
    /// bind_receiver
    pub const BIND_RECEIVER: u32 = 0x0000_0001;
    /// bind_transmitter
    pub const BIND_TRANSMITTER: u32 = 0x0000_0002;
    /// submit_sm
    pub const SUBMIT_SM: u32 = 0x0000_0004;
    /// deliver_sm
    pub const DELIVER_SM: u32 = 0x0000_0005;
    /// unbind
    pub const UNBIND: u32 = 0x0000_0006;
    /// bind_transceiver
    pub const BIND_TRANSCEIVER: u32 = 0x0000_0009;
    /// enquire_link
    pub const ENQUIRE_LINK: u32 = 0x0000_0015;
    /// generic_nack
    pub const GENERIC_NACK: u32 = 0x8000_0000;
    /// Bit set in every response id.
    pub const RESPONSE: u32 = 0x8000_0000;
}

/// `command_status` values smsgate acts on (SMPP 3.4 §5.1.3).
pub mod status {
    /// No error.
    pub const OK: u32 = 0x0000_0000;
    /// Message length is invalid.
    pub const INVALID_MSG_LENGTH: u32 = 0x0000_0001;
    /// Command length is invalid.
    pub const INVALID_CMD_LENGTH: u32 = 0x0000_0002;
    /// Invalid command id.
    pub const INVALID_CMD_ID: u32 = 0x0000_0003;
    /// Incorrect bind status for the command.
    pub const INVALID_BIND_STATUS: u32 = 0x0000_0004;
    /// Already bound.
    pub const ALREADY_BOUND: u32 = 0x0000_0005;
    /// System error.
    pub const SYSTEM_ERROR: u32 = 0x0000_0008;
    /// Invalid source address.
    pub const INVALID_SOURCE: u32 = 0x0000_000A;
    /// Invalid destination address.
    pub const INVALID_DEST: u32 = 0x0000_000B;
    /// Bind failed.
    pub const BIND_FAILED: u32 = 0x0000_000D;
    /// Invalid password.
    pub const INVALID_PASSWORD: u32 = 0x0000_000E;
    /// Invalid system id.
    pub const INVALID_SYSTEM_ID: u32 = 0x0000_000F;
    /// Message queue full.
    pub const MSG_QUEUE_FULL: u32 = 0x0000_0014;
    /// Throttling error.
    pub const THROTTLED: u32 = 0x0000_0058;
    /// Delivery failure (used in deliver_sm_resp).
    pub const DELIVERY_FAILURE: u32 = 0x0000_00FE;
    /// Unknown error.
    pub const UNKNOWN_ERROR: u32 = 0x0000_00FF;
}

/// TLV tags smsgate reads or writes.
pub mod tag {
    /// sar_msg_ref_num
    pub const SAR_MSG_REF_NUM: u16 = 0x020C;
    /// sar_total_segments
    pub const SAR_TOTAL_SEGMENTS: u16 = 0x020E;
    /// sar_segment_seqnum
    pub const SAR_SEGMENT_SEQNUM: u16 = 0x020F;
    /// receipted_message_id
    pub const RECEIPTED_MESSAGE_ID: u16 = 0x001E;
    /// network_error_code
    pub const NETWORK_ERROR_CODE: u16 = 0x0423;
    /// message_payload
    pub const MESSAGE_PAYLOAD: u16 = 0x0424;
    /// message_state
    pub const MESSAGE_STATE: u16 = 0x0427;
}

/// Smallest PDU: the 16-octet header.
pub const HEADER_LEN: usize = 16;

/// A framed PDU: header decoded, body still raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// command_id
    pub command_id: u32,
    /// command_status
    pub status: u32,
    /// sequence_number
    pub seq: u32,
    /// Everything after the header.
    pub body: Bytes,
}

impl Frame {
    /// Whether this is a response PDU.
    pub fn is_response(&self) -> bool {
        self.command_id & id::RESPONSE != 0
    }

    /// The whole PDU as sent on the wire (length prefix included).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        b.put_u32((HEADER_LEN + self.body.len()) as u32);
        b.put_u32(self.command_id);
        b.put_u32(self.status);
        b.put_u32(self.seq);
        b.extend_from_slice(&self.body);
        b.freeze()
    }
}

/// How a session is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Send and receive.
    Transceiver,
    /// Send only.
    Transmitter,
    /// Receive only.
    Receiver,
}

impl BindMode {
    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BindMode::Transceiver => "transceiver",
            BindMode::Transmitter => "transmitter",
            BindMode::Receiver => "receiver",
        }
    }
}

/// An SMPP address (TON, NPI, digits or alphanumeric).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// Type of number.
    pub ton: u8,
    /// Numbering plan indicator.
    pub npi: u8,
    /// The address itself (ASCII).
    pub addr: String,
}

/// The TLVs smsgate understands on submit_sm/deliver_sm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tlvs {
    /// receipted_message_id (NUL stripped).
    pub receipted_message_id: Option<String>,
    /// message_state.
    pub message_state: Option<u8>,
    /// network_error_code: (network type, error code).
    pub network_error_code: Option<(u8, u16)>,
    /// message_payload.
    pub message_payload: Option<Bytes>,
    /// sar_msg_ref_num, sar_total_segments, sar_segment_seqnum.
    pub sar: Option<(u16, u8, u8)>,
}

/// Fields shared by submit_sm and deliver_sm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShortMessage {
    /// service_type
    pub service_type: String,
    /// Source address.
    pub source: Address,
    /// Destination address.
    pub dest: Address,
    /// esm_class
    pub esm_class: u8,
    /// protocol_id
    pub protocol_id: u8,
    /// priority_flag
    pub priority: u8,
    /// schedule_delivery_time (empty for immediate)
    pub schedule_delivery_time: String,
    /// validity_period (empty for the SMSC default)
    pub validity_period: String,
    /// registered_delivery
    pub registered_delivery: u8,
    /// data_coding
    pub data_coding: u8,
    /// short_message octets (UDH included when esm_class has UDHI).
    pub short_message: Bytes,
    /// Optional parameters.
    pub tlvs: Tlvs,
}

impl ShortMessage {
    /// esm_class says this deliver_sm is an SMSC delivery receipt (or an intermediate notification).
    pub fn is_receipt(&self) -> bool {
        let message_type = self.esm_class & 0b0011_1100;
        message_type == 0b0000_0100 || message_type == 0b0010_0000 || self.tlvs.receipted_message_id.is_some()
    }

    /// The user data: `message_payload` if present, else `short_message`.
    pub fn payload(&self) -> &Bytes {
        self.tlvs.message_payload.as_ref().unwrap_or(&self.short_message)
    }
}

/// A decoded PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    /// bind_transmitter / bind_receiver / bind_transceiver
    Bind {
        /// Which bind.
        mode: BindMode,
        /// system_id
        system_id: String,
        /// password
        password: String,
        /// interface_version
        interface_version: u8,
    },
    /// Any bind response.
    BindResp {
        /// Which bind it answers.
        mode: BindMode,
        /// The SMSC's system_id (may be empty on errors).
        system_id: String,
    },
    /// submit_sm
    SubmitSm(Box<ShortMessage>),
    /// submit_sm_resp
    SubmitSmResp {
        /// The SMSC's message id (empty on errors).
        message_id: String,
    },
    /// deliver_sm
    DeliverSm(Box<ShortMessage>),
    /// deliver_sm_resp
    DeliverSmResp,
    /// enquire_link
    EnquireLink,
    /// enquire_link_resp
    EnquireLinkResp,
    /// unbind
    Unbind,
    /// unbind_resp
    UnbindResp,
    /// generic_nack
    GenericNack,
    /// A valid PDU smsgate does not handle (query_sm, data_sm, …).
    Unsupported,
}

/// Why a frame could not be turned into a [`Pdu`]; the session answers a request with
/// `generic_nack` and ignores a bad response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode PDU 0x{command_id:08x} (seq {seq}): {reason}")]
pub struct DecodeFailure {
    /// command_id of the bad PDU.
    pub command_id: u32,
    /// Its sequence number, for the generic_nack.
    pub seq: u32,
    /// What was wrong.
    pub reason: String,
    /// The status to send in the generic_nack.
    pub nack_status: u32,
}

/// Decodes a frame. Never panics, whatever the bytes.
pub fn decode(frame: &Frame) -> Result<Pdu, DecodeFailure> {
    let mut buf = BytesMut::with_capacity(12 + frame.body.len());
    buf.put_u32(frame.command_id);
    buf.put_u32(frame.status);
    buf.put_u32(frame.seq);
    buf.extend_from_slice(&frame.body);
    let len = buf.len();
    let strict = Command::decode(&mut buf, len).map_err(|e| e.to_string()).and_then(|(c, _)| from_rusmpp(&c, frame));
    match strict {
        Ok(pdu) => Ok(pdu),
        Err(reason) => match frame.command_id {
            id::DELIVER_SM => lenient_short_message(&frame.body).map(|sm| Pdu::DeliverSm(Box::new(sm))),
            id::SUBMIT_SM => lenient_short_message(&frame.body).map(|sm| Pdu::SubmitSm(Box::new(sm))),
            // A response whose body is odd still answers its request; the header is what counts.
            c if c & id::RESPONSE != 0 && frame.status != status::OK => Ok(header_only_response(c)),
            _ => Err(reason),
        }
        .map_err(|reason| DecodeFailure {
            command_id: frame.command_id,
            seq: frame.seq,
            reason,
            nack_status: if known_command(frame.command_id) {
                status::INVALID_CMD_LENGTH
            } else {
                status::INVALID_CMD_ID
            },
        }),
    }
}

fn known_command(command_id: u32) -> bool {
    matches!(command_id & !id::RESPONSE, 0x01..=0x09 | 0x0B | 0x15 | 0x21 | 0x102 | 0x103)
}

fn header_only_response(command_id: u32) -> Pdu {
    match command_id {
        0x8000_0001 => Pdu::BindResp { mode: BindMode::Receiver, system_id: String::new() },
        0x8000_0002 => Pdu::BindResp { mode: BindMode::Transmitter, system_id: String::new() },
        0x8000_0009 => Pdu::BindResp { mode: BindMode::Transceiver, system_id: String::new() },
        0x8000_0004 => Pdu::SubmitSmResp { message_id: String::new() },
        0x8000_0005 => Pdu::DeliverSmResp,
        0x8000_0006 => Pdu::UnbindResp,
        0x8000_0015 => Pdu::EnquireLinkResp,
        id::GENERIC_NACK => Pdu::GenericNack,
        _ => Pdu::Unsupported,
    }
}

fn from_rusmpp(command: &Command, frame: &Frame) -> Result<Pdu, String> {
    let Some(pdu) = command.pdu() else {
        // Header-only PDU: fine for responses (error responses carry no body, SMPP 3.4
        // §4.4.2) and for the body-less requests; any other request is missing its body.
        return match frame.command_id {
            id::ENQUIRE_LINK => Ok(Pdu::EnquireLink),
            id::UNBIND => Ok(Pdu::Unbind),
            c if c & id::RESPONSE != 0 && known_command(c) => Ok(header_only_response(c)),
            c if known_command(c) => Err("request without its body".into()),
            _ => Err("unknown command id".into()),
        };
    };
    Ok(match pdu {
        RPdu::BindTransceiver(b) => bind(BindMode::Transceiver, &b.system_id, &b.password, b.interface_version),
        RPdu::BindTransmitter(b) => bind(BindMode::Transmitter, &b.system_id, &b.password, b.interface_version),
        RPdu::BindReceiver(b) => bind(BindMode::Receiver, &b.system_id, &b.password, b.interface_version),
        RPdu::BindTransceiverResp(r) => {
            Pdu::BindResp { mode: BindMode::Transceiver, system_id: c_text(r.system_id.as_ref()) }
        }
        RPdu::BindTransmitterResp(r) => {
            Pdu::BindResp { mode: BindMode::Transmitter, system_id: c_text(r.system_id.as_ref()) }
        }
        RPdu::BindReceiverResp(r) => {
            Pdu::BindResp { mode: BindMode::Receiver, system_id: c_text(r.system_id.as_ref()) }
        }
        RPdu::SubmitSmResp(r) => Pdu::SubmitSmResp { message_id: c_text(r.message_id().as_ref()) },
        RPdu::DeliverSmResp(_) => Pdu::DeliverSmResp,
        RPdu::SubmitSm(s) => Pdu::SubmitSm(Box::new(ShortMessage {
            service_type: c_text(s.service_type.value().as_ref()),
            source: Address {
                ton: s.source_addr_ton.into(),
                npi: s.source_addr_npi.into(),
                addr: c_text(s.source_addr.as_ref()),
            },
            dest: Address {
                ton: s.dest_addr_ton.into(),
                npi: s.dest_addr_npi.into(),
                addr: c_text(s.destination_addr.as_ref()),
            },
            esm_class: s.esm_class.into(),
            protocol_id: s.protocol_id,
            priority: s.priority_flag.into(),
            schedule_delivery_time: c_text(s.schedule_delivery_time.as_ref()),
            validity_period: c_text(s.validity_period.as_ref()),
            registered_delivery: s.registered_delivery.into(),
            data_coding: s.data_coding.into(),
            short_message: Bytes::copy_from_slice(s.short_message().as_ref()),
            tlvs: tlvs_from(s.tlvs().iter().filter_map(|t| t.value())),
        })),
        RPdu::DeliverSm(d) => Pdu::DeliverSm(Box::new(ShortMessage {
            service_type: c_text(d.service_type.value().as_ref()),
            source: Address {
                ton: d.source_addr_ton.into(),
                npi: d.source_addr_npi.into(),
                addr: c_text(d.source_addr.as_ref()),
            },
            dest: Address {
                ton: d.dest_addr_ton.into(),
                npi: d.dest_addr_npi.into(),
                addr: c_text(d.destination_addr.as_ref()),
            },
            esm_class: d.esm_class.into(),
            protocol_id: d.protocol_id,
            priority: d.priority_flag.into(),
            schedule_delivery_time: c_text(d.schedule_delivery_time.as_ref()),
            validity_period: c_text(d.validity_period.as_ref()),
            registered_delivery: d.registered_delivery.into(),
            data_coding: d.data_coding.into(),
            short_message: Bytes::copy_from_slice(d.short_message().as_ref()),
            tlvs: tlvs_from(d.tlvs().iter().filter_map(|t| t.value())),
        })),
        RPdu::EnquireLink => Pdu::EnquireLink,
        RPdu::EnquireLinkResp => Pdu::EnquireLinkResp,
        RPdu::Unbind => Pdu::Unbind,
        RPdu::UnbindResp => Pdu::UnbindResp,
        RPdu::GenericNack => Pdu::GenericNack,
        RPdu::Other { .. } => return Err("unknown command id".into()),
        _ => Pdu::Unsupported,
    })
}

/// A C-octet string from rusmpp as text, up to its NUL. rusmpp's own `as_str` panics on
/// anything but ASCII and relies on its decoder having checked that; this cannot panic,
/// whatever a carrier sent.
fn c_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn bind<const A: usize, const B: usize>(
    mode: BindMode,
    system_id: &COctetString<1, A>,
    password: &COctetString<1, B>,
    version: InterfaceVersion,
) -> Pdu {
    Pdu::Bind {
        mode,
        system_id: c_text(system_id.as_ref()),
        password: c_text(password.as_ref()),
        interface_version: version.into(),
    }
}

fn tlvs_from<'a>(values: impl Iterator<Item = &'a TlvValue>) -> Tlvs {
    let mut t = Tlvs::default();
    let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
    for v in values {
        match v {
            TlvValue::ReceiptedMessageId(id) => t.receipted_message_id = Some(c_text(id.as_ref())),
            TlvValue::MessageState(s) => t.message_state = Some((*s).into()),
            TlvValue::NetworkErrorCode(n) => t.network_error_code = Some((n.network_type.into(), n.error_code)),
            TlvValue::MessagePayload(p) => t.message_payload = Some(Bytes::copy_from_slice(p.value.as_ref())),
            TlvValue::SarMsgRefNum(r) => sar_ref = Some(*r),
            TlvValue::SarTotalSegments(n) => sar_total = Some(*n),
            TlvValue::SarSegmentSeqnum(n) => sar_seq = Some(*n),
            _ => {}
        }
    }
    if let (Some(r), Some(n), Some(s)) = (sar_ref, sar_total, sar_seq) {
        t.sar = Some((r, n, s));
    }
    t
}

/// Reads a C-octet string of at most `max` octets (NUL included).
fn c_string(body: &mut Bytes, max: usize, field: &str) -> Result<String, String> {
    let end =
        body.iter().take(max).position(|&b| b == 0).ok_or_else(|| format!("{field}: no NUL within {max} octets"))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

fn octet(body: &mut Bytes, field: &str) -> Result<u8, String> {
    if body.is_empty() {
        return Err(format!("{field}: PDU ends early"));
    }
    Ok(body.get_u8())
}

/// Parses submit_sm/deliver_sm by hand: mandatory fields strictly, TLVs by their own lengths
/// (a string TLV may or may not end in NUL), unknown TLVs skipped, a truncated last TLV ignored.
pub fn lenient_short_message(body: &Bytes) -> Result<ShortMessage, String> {
    let mut b = body.clone();
    let mut sm = ShortMessage { service_type: c_string(&mut b, 6, "service_type")?, ..ShortMessage::default() };
    sm.source.ton = octet(&mut b, "source_addr_ton")?;
    sm.source.npi = octet(&mut b, "source_addr_npi")?;
    sm.source.addr = c_string(&mut b, 21, "source_addr")?;
    sm.dest.ton = octet(&mut b, "dest_addr_ton")?;
    sm.dest.npi = octet(&mut b, "dest_addr_npi")?;
    sm.dest.addr = c_string(&mut b, 21, "destination_addr")?;
    sm.esm_class = octet(&mut b, "esm_class")?;
    sm.protocol_id = octet(&mut b, "protocol_id")?;
    sm.priority = octet(&mut b, "priority_flag")?;
    sm.schedule_delivery_time = c_string(&mut b, 17, "schedule_delivery_time")?;
    sm.validity_period = c_string(&mut b, 17, "validity_period")?;
    sm.registered_delivery = octet(&mut b, "registered_delivery")?;
    let _replace_if_present = octet(&mut b, "replace_if_present_flag")?;
    sm.data_coding = octet(&mut b, "data_coding")?;
    let _sm_default_msg_id = octet(&mut b, "sm_default_msg_id")?;
    let sm_length = usize::from(octet(&mut b, "sm_length")?);
    if b.len() < sm_length {
        return Err(format!("sm_length {sm_length} exceeds the {} octets left", b.len()));
    }
    sm.short_message = b.split_to(sm_length);
    let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
    while b.len() >= 4 {
        let tag = b.get_u16();
        let len = usize::from(b.get_u16());
        if b.len() < len {
            break;
        }
        let v = b.split_to(len);
        match (tag, len) {
            (tag::RECEIPTED_MESSAGE_ID, _) => {
                let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                sm.tlvs.receipted_message_id = Some(String::from_utf8_lossy(&v[..end]).into_owned());
            }
            (tag::MESSAGE_STATE, 1) => sm.tlvs.message_state = Some(v[0]),
            (tag::NETWORK_ERROR_CODE, 3) => sm.tlvs.network_error_code = Some((v[0], u16::from_be_bytes([v[1], v[2]]))),
            (tag::MESSAGE_PAYLOAD, _) => sm.tlvs.message_payload = Some(v),
            (tag::SAR_MSG_REF_NUM, 2) => sar_ref = Some(u16::from_be_bytes([v[0], v[1]])),
            (tag::SAR_TOTAL_SEGMENTS, 1) => sar_total = Some(v[0]),
            (tag::SAR_SEGMENT_SEQNUM, 1) => sar_seq = Some(v[0]),
            _ => {}
        }
    }
    if let (Some(r), Some(n), Some(s)) = (sar_ref, sar_total, sar_seq) {
        sm.tlvs.sar = Some((r, n, s));
    }
    Ok(sm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_strings_from_a_carrier_never_panic() {
        // deliver_sm with 0xFF in source_addr and validity_period and a receipted_message_id
        // TLV full of 0xC3 (half a UTF-8 sequence): rusmpp's `as_str` would panic on these.
        let mut body = Vec::new();
        body.extend_from_slice(b"\0"); // service_type
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(b"1415\xff555\0");
        body.extend_from_slice(&[5, 0]);
        body.extend_from_slice(b"CLINIC\0");
        body.extend_from_slice(&[4, 0, 0]);
        body.extend_from_slice(b"\0"); // schedule_delivery_time
        body.extend_from_slice(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0");
        body.extend_from_slice(&[0, 0, 0, 0, 2]);
        body.extend_from_slice(b"ok");
        body.extend_from_slice(&[0x00, 0x1E, 0x00, 0x04, 0xC3, 0xC3, 0xC3, 0x00]);
        let frame = Frame { command_id: id::DELIVER_SM, status: 0, seq: 9, body: Bytes::from(body) };
        match decode(&frame) {
            Ok(Pdu::DeliverSm(sm)) => assert!(sm.source.addr.starts_with("1415")),
            Ok(other) => panic!("{other:?}"),
            Err(e) => assert_eq!(e.seq, 9),
        }
        // submit_sm_resp and bind_transceiver_resp whose ids are not ASCII.
        for command_id in [0x8000_0004, 0x8000_0009] {
            let frame = Frame { command_id, status: 0, seq: 3, body: Bytes::from_static(b"\xe2\x82\0") };
            let _ = decode(&frame);
        }
    }

    fn round_trip(bytes: &Bytes) -> Pdu {
        decode(&frame_of(bytes).expect("frame")).expect("decode")
    }

    fn sample() -> ShortMessage {
        ShortMessage {
            source: Address { ton: 5, npi: 0, addr: "CLINIC".into() },
            dest: Address { ton: 1, npi: 1, addr: "14155550123".into() },
            registered_delivery: 1,
            short_message: Bytes::from_static(b"hello"),
            ..ShortMessage::default()
        }
    }

    #[test]
    fn bind_round_trips_with_version_3_4() {
        let b = encode_bind(7, BindMode::Transceiver, "gw", "secret", "").unwrap();
        assert_eq!(
            round_trip(&b),
            Pdu::Bind {
                mode: BindMode::Transceiver,
                system_id: "gw".into(),
                password: "secret".into(),
                interface_version: 0x34
            }
        );
        assert!(encode_bind(1, BindMode::Transceiver, "gw", "far-too-long", "").is_err());
    }

    #[test]
    fn submit_sm_round_trips() {
        let mut sm = sample();
        sm.tlvs.sar = Some((9, 2, 1));
        let Pdu::SubmitSm(got) = round_trip(&encode_submit_sm(3, &sm).unwrap()) else { panic!() };
        assert_eq!(*got, sm);
    }

    #[test]
    fn deliver_sm_receipt_round_trips() {
        let mut sm = sample();
        sm.esm_class = 0x04;
        sm.tlvs.receipted_message_id = Some("abc123".into());
        sm.tlvs.message_state = Some(2);
        sm.tlvs.network_error_code = Some((3, 1));
        let Pdu::DeliverSm(got) = round_trip(&encode_deliver_sm(4, &sm).unwrap()) else { panic!() };
        assert!(got.is_receipt());
        assert_eq!(*got, sm);
    }

    #[test]
    fn receipted_message_id_without_nul_is_decoded_leniently() {
        let mut sm = sample();
        sm.esm_class = 0x04;
        let good = encode_deliver_sm(5, &sm).unwrap();
        // Append a receipted_message_id TLV without its NUL, and fix the length.
        let mut bad = BytesMut::from(&good[..]);
        bad.put_u16(tag::RECEIPTED_MESSAGE_ID);
        bad.put_u16(3);
        bad.extend_from_slice(b"a1b");
        let len = bad.len() as u32;
        bad[..4].copy_from_slice(&len.to_be_bytes());
        let Pdu::DeliverSm(got) = round_trip(&bad.freeze()) else { panic!() };
        assert_eq!(got.tlvs.receipted_message_id.as_deref(), Some("a1b"));
    }

    #[test]
    fn header_only_error_responses_decode() {
        assert_eq!(
            round_trip(&header(0x8000_0004, status::THROTTLED, 9)),
            Pdu::SubmitSmResp { message_id: String::new() }
        );
        assert_eq!(round_trip(&generic_nack(3, status::INVALID_CMD_ID)), Pdu::GenericNack);
    }

    #[test]
    fn garbage_bodies_fail_without_panicking() {
        for body in [&b""[..], b"\x00", b"\xff\xff\xff", &[0u8; 40], &[1u8; 300]] {
            for command_id in [id::DELIVER_SM, id::SUBMIT_SM, id::BIND_TRANSCEIVER, 0x8000_0004, 0x0000_0666] {
                let frame = Frame { command_id, status: 0, seq: 1, body: Bytes::copy_from_slice(body) };
                let _ = decode(&frame);
            }
        }
        let unknown = Frame { command_id: 0x0000_0666, status: 0, seq: 4, body: Bytes::new() };
        assert_eq!(decode(&unknown).unwrap_err().nack_status, status::INVALID_CMD_ID);
    }
}
