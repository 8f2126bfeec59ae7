//! Delivery receipts: the `receipted_message_id`/`message_state` TLVs when present, else the
//! SMPP 3.4 Appendix B text (`id:… sub:… dlvrd:… submit date:… done date:… stat:… err:…`),
//! parsed tolerantly because every SMSC vendor writes it a little differently.

use serde::Deserialize;

use super::pdu::ShortMessage;
use crate::message::Status;
use crate::store::ReceiptOutcome;
use crate::text;

/// How a carrier writes message ids; both sides are normalised so they meet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdFormat {
    /// Opaque string, compared as is (trimmed).
    #[default]
    String,
    /// Hexadecimal number (any case, leading zeros allowed).
    Hex,
    /// Decimal number (leading zeros allowed).
    Dec,
}

/// Brings a carrier message id to one canonical form: numbers become plain decimal, so a
/// hex `submit_sm_resp` id and a decimal receipt id of the same message compare equal.
pub fn normalize_id(id: &str, format: IdFormat) -> String {
    let id = id.trim();
    let parsed = match format {
        IdFormat::String => None,
        IdFormat::Hex => u128::from_str_radix(id, 16).ok(),
        IdFormat::Dec => id.parse::<u128>().ok(),
    };
    match parsed {
        Some(n) => n.to_string(),
        None => id.to_string(),
    }
}

/// How a receipt's id was matched when it did not match in the configured form: the label of
/// `smsgate_receipt_id_fallback_total{form}` and the config that would make it match at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFallback {
    /// Decimal in the receipt, hexadecimal in `submit_sm_resp`.
    DecReceiptHexSubmit,
    /// Hexadecimal in the receipt, decimal in `submit_sm_resp`.
    HexReceiptDecSubmit,
    /// The same decimal number, with or without leading zeros.
    LeadingZeros,
    /// The same hexadecimal number, another case or padding.
    HexCaseOrZeros,
}

impl IdFallback {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            IdFallback::DecReceiptHexSubmit => "dec_receipt_hex_submit",
            IdFallback::HexReceiptDecSubmit => "hex_receipt_dec_submit",
            IdFallback::LeadingZeros => "leading_zeros",
            IdFallback::HexCaseOrZeros => "hex_case_or_zeros",
        }
    }

    /// The carrier settings that match such receipts directly.
    pub fn advice(self) -> &'static str {
        match self {
            IdFallback::DecReceiptHexSubmit => "submit_id_format = \"hex\" and receipt_id_format = \"dec\"",
            IdFallback::HexReceiptDecSubmit => "submit_id_format = \"dec\" and receipt_id_format = \"hex\"",
            IdFallback::LeadingZeros => "submit_id_format = \"dec\" and receipt_id_format = \"dec\"",
            IdFallback::HexCaseOrZeros => "submit_id_format = \"hex\" and receipt_id_format = \"hex\"",
        }
    }
}

/// Padded widths carriers write hexadecimal ids in, tried when a receipt's id does not match.
const HEX_WIDTHS: [usize; 7] = [0, 8, 10, 12, 16, 20, 32];

/// The forms the `submit_sm_resp` id of the message a receipt with id `id` is about may have
/// been written in, when the configured form found nothing: the receipt's number read as
/// decimal and as hexadecimal, each written back in decimal and in hexadecimal (both cases,
/// common paddings). In the order to try; without `id` itself.
pub fn fallback_ids(id: &str) -> Vec<(IdFallback, String)> {
    let id = id.trim();
    let mut out: Vec<(IdFallback, String)> = Vec::new();
    let mut push = |form: IdFallback, candidate: String| {
        if candidate != id && !out.iter().any(|(_, c)| *c == candidate) {
            out.push((form, candidate));
        }
    };
    if id.is_empty() || id.len() > 32 {
        return out;
    }
    if id.bytes().all(|b| b.is_ascii_digit())
        && let Ok(v) = id.parse::<u128>()
    {
        push(IdFallback::LeadingZeros, v.to_string());
        for w in HEX_WIDTHS {
            push(IdFallback::DecReceiptHexSubmit, format!("{v:0w$x}"));
            push(IdFallback::DecReceiptHexSubmit, format!("{v:0w$X}"));
        }
    }
    if id.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(v) = u128::from_str_radix(id, 16)
    {
        push(IdFallback::HexReceiptDecSubmit, v.to_string());
        for w in HEX_WIDTHS {
            push(IdFallback::HexCaseOrZeros, format!("{v:0w$x}"));
            push(IdFallback::HexCaseOrZeros, format!("{v:0w$X}"));
        }
    }
    out
}

/// A parsed receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The carrier message id it is about, as the carrier wrote it.
    pub id: String,
    /// The outcome for the store.
    pub outcome: ReceiptOutcome,
}

/// Maps an Appendix B `stat` word to a final status (`None` for intermediate states).
fn status_of_stat(stat: &str) -> Option<Status> {
    match stat.to_ascii_uppercase().as_str() {
        "DELIVRD" | "DELIVERED" => Some(Status::Delivered),
        "EXPIRED" => Some(Status::Expired),
        "DELETED" | "UNDELIV" | "UNDELIVERABLE" | "UNKNOWN" | "SKIPPED" => Some(Status::Undeliverable),
        "REJECTD" | "REJECTED" => Some(Status::Rejected),
        // ENROUTE, ACCEPTD, SCHEDULED and anything unrecognised: not final.
        _ => None,
    }
}

/// `message_state` TLV (SMPP 3.4 §5.2.28) to stat word.
fn stat_of_state(state: u8) -> &'static str {
    match state {
        0 => "SCHEDULED",
        1 => "ENROUTE",
        2 => "DELIVRD",
        3 => "EXPIRED",
        4 => "DELETED",
        5 => "UNDELIV",
        6 => "ACCEPTD",
        7 => "UNKNOWN",
        8 => "REJECTD",
        9 => "SKIPPED",
        _ => "UNKNOWN",
    }
}

/// Finds `key` (e.g. `stat:`) at a word start and returns the following token.
fn field<'a>(text: &'a str, lower: &str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(pos) = lower[from..].find(key) {
        let at = from + pos;
        let at_word_start = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        if at_word_start {
            let rest = text[at + key.len()..].trim_start();
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
        from = at + key.len();
    }
    None
}

/// Parses the Appendix B text. Returns `(id, stat, err)`; any may be missing.
pub fn parse_text(text: &str) -> (Option<&str>, Option<&str>, Option<&str>) {
    let lower = text.to_ascii_lowercase();
    (field(text, &lower, "id:"), field(text, &lower, "stat:"), field(text, &lower, "err:"))
}

/// Reads a receipt out of a `deliver_sm`. `None` when neither the TLVs nor the text carry an id.
pub fn parse(sm: &ShortMessage) -> Option<Receipt> {
    let body = text_of(sm);
    let (text_id, text_stat, text_err) = parse_text(&body);
    let id = sm.tlvs.receipted_message_id.as_deref().or(text_id).filter(|s| !s.trim().is_empty())?.to_string();
    let stat = match sm.tlvs.message_state {
        Some(state) => stat_of_state(state).to_string(),
        None => text_stat.unwrap_or("UNKNOWN").to_string(),
    };
    let error_code = sm
        .tlvs
        .network_error_code
        .map(|(_, code)| u32::from(code))
        .or_else(|| text_err.and_then(|e| e.parse::<u32>().ok().or_else(|| u32::from_str_radix(e, 16).ok())))
        .filter(|&c| c != 0);
    Some(Receipt { id, outcome: ReceiptOutcome { status: status_of_stat(&stat), stat, error_code } })
}

/// The receipt text, decoded from whatever data_coding the SMSC chose.
fn text_of(sm: &ShortMessage) -> String {
    let payload = sm.payload();
    match sm.data_coding {
        8 => text::ucs2_decode(payload),
        3 => text::latin1_decode(payload),
        // Receipts are ASCII in practice; GSM decoding keeps ASCII letters and digits intact.
        _ => String::from_utf8_lossy(payload).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::HashMap;

    fn receipt_sm(text: &str) -> ShortMessage {
        ShortMessage { esm_class: 4, short_message: Bytes::copy_from_slice(text.as_bytes()), ..ShortMessage::default() }
    }

    #[test]
    fn appendix_b_text() {
        let r = parse(&receipt_sm(
            "id:0123456789 sub:001 dlvrd:001 submit date:2611221530 done date:2611221531 stat:DELIVRD err:000 text:Hello",
        ))
        .unwrap();
        assert_eq!(r.id, "0123456789");
        assert_eq!(
            r.outcome,
            ReceiptOutcome { status: Some(Status::Delivered), stat: "DELIVRD".into(), error_code: None }
        );
    }

    #[test]
    fn vendor_variants() {
        // Upper-case keys, extra spaces, failure with an error code.
        let r = parse(&receipt_sm("ID: 7f3A SUB:001 DLVRD:000 STAT:UNDELIV ERR:034 Text:x")).unwrap();
        assert_eq!(
            (r.id.as_str(), r.outcome.status, r.outcome.error_code),
            ("7f3A", Some(Status::Undeliverable), Some(34))
        );
        // Intermediate states are not final.
        let r = parse(&receipt_sm("id:5 stat:ENROUTE")).unwrap();
        assert_eq!(r.outcome.status, None);
        let r = parse(&receipt_sm("id:5 stat:ACCEPTD")).unwrap();
        assert_eq!(r.outcome.status, None);
        // "submit date:" must not be mistaken for "id:" or "date:".
        assert_eq!(parse_text("submit date:2611 id:9 stat:EXPIRED").0, Some("9"));
        // Text without an id is not a receipt we can use.
        assert_eq!(parse(&receipt_sm("stat:DELIVRD")), None);
        assert_eq!(parse(&receipt_sm("")), None);
    }

    #[test]
    fn tlvs_win_over_text() {
        let mut sm = receipt_sm("id:1 stat:DELIVRD err:0");
        sm.tlvs.receipted_message_id = Some("abc".into());
        sm.tlvs.message_state = Some(5);
        sm.tlvs.network_error_code = Some((3, 21));
        let r = parse(&sm).unwrap();
        assert_eq!(
            (r.id.as_str(), r.outcome.status, r.outcome.error_code),
            ("abc", Some(Status::Undeliverable), Some(21))
        );
    }

    #[test]
    fn ids_normalise_across_formats() {
        assert_eq!(normalize_id("00FF", IdFormat::Hex), "255");
        assert_eq!(normalize_id("ff", IdFormat::Hex), "255");
        assert_eq!(normalize_id("0255", IdFormat::Dec), "255");
        assert_eq!(normalize_id(" Abc ", IdFormat::String), "Abc");
        assert_eq!(normalize_id("not-hex", IdFormat::Hex), "not-hex");
    }

    #[test]
    fn fallback_forms_reach_the_submit_side_id() {
        let forms = |id: &str| fallback_ids(id).into_iter().map(|(f, c)| (c, f)).collect::<HashMap<_, _>>();
        // Decimal text receipt, hex submit_sm_resp (as carriers and the node simulator write them).
        let f = forms("7994");
        assert_eq!(f.get("1f3a"), Some(&IdFallback::DecReceiptHexSubmit));
        assert_eq!(f.get("1F3A"), Some(&IdFallback::DecReceiptHexSubmit));
        assert_eq!(f.get("00001F3A"), Some(&IdFallback::DecReceiptHexSubmit));
        // Leading zeros either way.
        assert_eq!(forms("0000031").get("31"), Some(&IdFallback::LeadingZeros));
        // Hex receipt, decimal submit.
        assert_eq!(forms("1f3a").get("7994"), Some(&IdFallback::HexReceiptDecSubmit));
        // Another case or padding of the same hex id.
        assert_eq!(forms("1f3a").get("00001F3A"), Some(&IdFallback::HexCaseOrZeros));
        // Opaque ids have no other forms.
        assert!(fallback_ids("msg-42-x").is_empty());
        assert!(fallback_ids("").is_empty());
        assert!(!forms("7994").contains_key("7994"), "never the id itself");
    }
}
