//! `[[carriers]]` (one SMSC and how to talk to it) and `[[routes]]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

/// `[[carriers]]`: one SMSC and how to talk to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierConfig {
    /// Unique name; appears in metrics labels and message records.
    pub name: String,
    /// SMSC host name or address.
    pub host: String,
    /// SMSC port.
    pub port: u16,
    /// SMPP over TLS (default) or plain TCP.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// PEM bundle of CAs to trust instead of the built-in public roots.
    pub ca_file: Option<PathBuf>,
    /// Keys to trust (base64 SHA-256 of the SubjectPublicKeyInfo): a self-signed SMSC is
    /// trusted by its key alone; with `ca_file` the chain must verify too.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Name to verify in the SMSC certificate when it differs from `host`.
    pub server_name: Option<String>,
    /// Client certificate (PEM) for carriers that ask for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// SMPP `system_id`.
    pub system_id: String,
    /// Environment variable that holds the bind password.
    pub password_env: Option<String>,
    /// File that holds the bind password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// SMPP `system_type`.
    #[serde(default)]
    pub system_type: String,
    /// Sessions to keep bound.
    #[serde(default = "default_binds")]
    pub binds: usize,
    /// Outstanding `submit_sm` per bind.
    #[serde(default = "default_window")]
    pub window: usize,
    /// `submit_sm` per second across all binds; 0 = unlimited.
    #[serde(default)]
    pub rate: u32,
    /// Burst allowance for `rate`.
    #[serde(default)]
    pub burst: u32,
    /// Seconds between `enquire_link`s on an idle bind.
    #[serde(default = "default_enquire_link_secs")]
    pub enquire_link_secs: u64,
    /// Seconds to wait for any response before the bind is recycled.
    #[serde(default = "default_response_timeout_secs")]
    pub response_timeout_secs: u64,
    /// Sender used when a message has no `from`.
    pub default_source: Option<String>,
    /// ISO country (`US`, `GB`) the carrier's national number forms belong to: a handset
    /// address that arrives without the international marker (TON 0 or 2) is read in it
    /// before it is looked up in, or added to, the opt-out registry.
    pub country: Option<String>,
    /// Transceivers, or a transmitter + receiver pair per `binds`.
    #[serde(default)]
    pub bind_mode: BindModeConfig,
    /// Pause after ESME_RTHROTTLED / ESME_RMSGQFUL before sending again, ms.
    #[serde(default = "default_throttle_pause_ms")]
    pub throttle_pause_ms: u64,
    /// GSM 03.38 on the wire: one septet per octet (common) or packed.
    #[serde(default)]
    pub gsm7_packing: Gsm7Packing,
    /// data_coding for GSM 03.38 text (0 = SMSC default alphabet, the usual; some want 1 or 0xF0).
    #[serde(default)]
    pub gsm7_data_coding: u8,
    /// Send text outside GSM 03.38 that fits ISO-8859-1 as Latin-1 (data_coding 3) instead of UCS-2.
    #[serde(default)]
    pub latin1: bool,
    /// How concatenated messages are carried.
    #[serde(default)]
    pub long_messages: LongMessages,
    /// How this carrier writes message ids in submit_sm_resp.
    #[serde(default)]
    pub submit_id_format: crate::smpp::codec::receipt::IdFormat,
    /// How this carrier writes message ids in receipts.
    #[serde(default)]
    pub receipt_id_format: crate::smpp::codec::receipt::IdFormat,
    /// source_addr TON, instead of inferring it from the sender's form.
    pub source_ton: Option<u8>,
    /// source_addr NPI, instead of inferring it.
    pub source_npi: Option<u8>,
    /// Send validity_period (relative) from the message's validity.
    #[serde(default = "default_true")]
    pub send_validity: bool,
    /// Consecutive failed or unanswered submissions that open the circuit breaker (0 = never).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker keeps traffic away before trying the carrier again.
    #[serde(default = "default_breaker_cooldown_secs")]
    pub breaker_cooldown_secs: u64,
    /// How long a submitted message waits for its receipt before it becomes `unknown` (a late
    /// receipt still updates it). 72 hours, as AWS End User Messaging waits.
    #[serde(default = "default_receipt_timeout_secs")]
    pub receipt_timeout_secs: u64,
}

fn default_receipt_timeout_secs() -> u64 {
    72 * 3600
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_secs() -> u64 {
    30
}

/// `bind_mode`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindModeConfig {
    /// bind_transceiver sessions.
    #[default]
    Transceiver,
    /// A bind_transmitter and a bind_receiver per `binds`.
    Split,
}

/// `gsm7_packing`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gsm7Packing {
    /// One septet per octet.
    #[default]
    Unpacked,
    /// Eight septets in seven octets (3GPP TS 23.038 §6.1.2.1.1).
    Packed,
}

/// `long_messages`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongMessages {
    /// UDH concatenation, 8-bit reference (IEI 0x00).
    #[default]
    Udh8,
    /// UDH concatenation, 16-bit reference (IEI 0x08).
    Udh16,
    /// sar_msg_ref_num / sar_total_segments / sar_segment_seqnum TLVs.
    Sar,
    /// One submit_sm with the whole text in message_payload.
    Payload,
}

fn default_binds() -> usize {
    1
}
fn default_window() -> usize {
    10
}
fn default_enquire_link_secs() -> u64 {
    30
}
fn default_response_timeout_secs() -> u64 {
    10
}
fn default_throttle_pause_ms() -> u64 {
    1000
}

impl CarrierConfig {
    /// Interval between keep-alives.
    pub fn enquire_link_interval(&self) -> Duration {
        Duration::from_secs(self.enquire_link_secs)
    }
    /// Longest wait for a response PDU.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs)
    }

    /// Reads the bind password from the environment variable or file the config names.
    pub fn password(&self) -> Result<Secret, String> {
        let given = if let Some(var) = &self.password_env {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
        } else if let Some(path) = &self.password_file {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        } else {
            return Ok(Secret::default());
        };
        // A variable or file that is there but empty is a mistake, not "no password": the
        // carrier would only answer the bind with 0x0d.
        if given.is_empty() {
            return Err("is configured but empty".into());
        }
        Ok(Secret::new(given))
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// E.164 prefix, `+` for everything; the longest matching prefix wins.
    pub prefix: String,
    /// Carrier names in failover order.
    pub carriers: Vec<String>,
    /// Only messages with this `from`.
    pub sender: Option<String>,
    /// Only messages with this `category`.
    pub category: Option<String>,
}
