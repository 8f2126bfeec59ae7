//! `POST /v1/messages`: field-by-field validation of the request, so every error names its
//! field, and the building of the message record.

use serde_json::{Map, Value};

use super::error::ApiError;
use crate::message::{Content, Message, now_ms};
use crate::phone::{E164, PhoneError};

/// A validated send request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    /// Destination.
    pub to: E164,
    /// Sender id.
    pub from: Option<String>,
    /// Text.
    pub body: String,
    /// Client reference.
    pub client_ref: Option<String>,
    /// Not before (ms).
    pub send_at_ms: Option<u64>,
    /// Validity from the due time, seconds.
    pub validity_seconds: Option<u64>,
    /// Webhook target.
    pub callback_url: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// IANA time zone of the recipient.
    pub recipient_timezone: Option<String>,
}

/// How `from` names one of the account's sender pools.
pub const POOL: &str = "pool:";

const FIELDS: &[&str] = &[
    "to",
    "from",
    "body",
    "client_ref",
    "send_at",
    "validity_seconds",
    "callback_url",
    "category",
    "recipient_timezone",
];

/// Limits that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest body in characters.
    pub max_body_chars: usize,
}

fn opt_string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(ApiError::invalid(field, format!("'{field}' must be a string."))),
    }
}

/// Parses and validates a JSON value as a send request.
pub fn parse(value: &Value, limits: Limits) -> Result<SendRequest, ApiError> {
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid("", "The body must be a JSON object.").field("body"));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::unknown_field(unknown));
    }
    let to = opt_string(obj, "to")?.ok_or_else(|| ApiError::missing("to"))?;
    let to = E164::normalize(to).map_err(|e| match e {
        PhoneError::NotE164 => ApiError::invalid(
            "to",
            "'to' must be an E.164 number: '+', country code and number (e.g. +14155550123); spaces, dashes, dots \
             and parentheses are ignored.",
        ),
        PhoneError::Invalid => ApiError::invalid("to", "'to' is not a valid phone number for its country code."),
    })?;
    let body = opt_string(obj, "body")?.ok_or_else(|| ApiError::missing("body"))?;
    if body.is_empty() {
        return Err(ApiError::invalid("body", "'body' must not be empty."));
    }
    let chars = body.chars().count();
    if chars > limits.max_body_chars {
        return Err(ApiError::invalid(
            "body",
            format!("'body' has {chars} characters; the limit is {}.", limits.max_body_chars),
        ));
    }
    if body.chars().any(|c| c == '\0') {
        return Err(ApiError::invalid("body", "'body' must not contain NUL characters."));
    }
    let from = opt_string(obj, "from")?.map(validate_sender).transpose()?;
    let client_ref = opt_string(obj, "client_ref")?.map(|s| {
        if s.len() > 128 {
            Err(ApiError::invalid("client_ref", "'client_ref' is limited to 128 bytes."))
        } else {
            Ok(s.to_string())
        }
    });
    let client_ref = client_ref.transpose()?;
    let send_at_ms = opt_string(obj, "send_at")?
        .map(|s| {
            let ts: jiff::Timestamp = s.parse().map_err(|_| {
                ApiError::invalid(
                    "send_at",
                    "'send_at' must be an RFC 3339 time with an offset, e.g. 2026-11-23T09:00:00Z.",
                )
            })?;
            let ms = u64::try_from(ts.as_millisecond())
                .map_err(|_| ApiError::invalid("send_at", "'send_at' is before 1970."))?;
            if ms > now_ms() + 366 * 24 * 3600 * 1000 {
                return Err(ApiError::invalid("send_at", "'send_at' is more than a year ahead."));
            }
            Ok(ms)
        })
        .transpose()?;
    let validity_seconds = match obj.get("validity_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if (5..=30 * 24 * 3600).contains(&n) => Some(n),
            _ => {
                return Err(ApiError::invalid(
                    "validity_seconds",
                    "'validity_seconds' must be an integer from 5 to 2592000 (30 days).",
                ));
            }
        },
    };
    let callback_url = opt_string(obj, "callback_url")?.map(validate_callback).transpose()?;
    let category = opt_string(obj, "category")?
        .map(|c| {
            if (1..=64).contains(&c.len())
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::invalid("category", "'category' is 1 to 64 characters of a-z, 0-9 and '_'."))
            }
        })
        .transpose()?;
    let recipient_timezone = opt_string(obj, "recipient_timezone")?
        .map(|tz| match jiff::tz::TimeZone::get(tz) {
            Ok(_) => Ok(tz.to_string()),
            Err(_) => Err(ApiError::invalid(
                "recipient_timezone",
                "'recipient_timezone' must be an IANA time zone name, e.g. America/Chicago.",
            )),
        })
        .transpose()?;
    Ok(SendRequest {
        to,
        from,
        body: body.to_string(),
        client_ref,
        send_at_ms,
        validity_seconds,
        callback_url,
        category,
        recipient_timezone,
    })
}

/// Sender ids: `+E.164`, 3–15 digits (short or long code), 1–11 alphanumerics (GSM 03.40
/// limits alphanumeric senders to 11 characters), or `pool:NAME` (one of the account's pools).
fn validate_sender(s: &str) -> Result<String, ApiError> {
    let ok = if let Some(pool) = s.strip_prefix(POOL) {
        (1..=32).contains(&pool.len()) && pool.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    } else if let Some(d) = s.strip_prefix('+') {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        (3..=15).contains(&s.len())
    } else {
        (1..=11).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ') && !s.starts_with(' ')
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(ApiError::invalid(
            "from",
            "'from' must be +E.164, 3 to 15 digits, 1 to 11 letters, digits and spaces, or pool:NAME.",
        ))
    }
}

/// A webhook URL as given (its address rules are checked against the configured policy
/// when the message is prepared); at most 2048 characters, no whitespace.
fn validate_callback(url: &str) -> Result<String, ApiError> {
    if url.len() <= 2048 && !url.chars().any(char::is_whitespace) && url::Url::parse(url).is_ok() {
        Ok(url.to_string())
    } else {
        Err(ApiError::invalid("callback_url", "'callback_url' must be an https:// URL of at most 2048 characters."))
    }
}

/// Builds the record for an accepted request.
pub fn build_message(
    req: SendRequest,
    (key_id, account): (&str, &str),
    seq: u64,
    route: Vec<String>,
    default_validity_secs: u64,
) -> Message {
    let now = now_ms();
    let due_ms = req.send_at_ms.unwrap_or(now).max(now);
    let validity_ms = req.validity_seconds.unwrap_or(default_validity_secs) * 1000;
    let content = Content { to: req.to.as_str().to_string(), from: req.from, body: req.body };
    let mut msg = Message::accepted(key_id, seq, content, route, now, due_ms, validity_ms);
    msg.account = account.to_string();
    msg.to_masked = req.to.masked();
    msg.client_ref = req.client_ref;
    msg.callback_url = req.callback_url;
    msg.category = req.category;
    msg.recipient_tz = req.recipient_timezone;
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Status;
    use serde_json::json;

    const LIMITS: Limits = Limits { max_body_chars: 1600 };

    fn err(v: Value) -> (String, Option<String>) {
        let e = parse(&v, LIMITS).unwrap_err();
        (e.code.to_string(), e.field)
    }

    #[test]
    fn minimal_request_is_accepted() {
        let r = parse(&json!({"to": "+14155550123", "body": "Your appointment is at 10:00"}), LIMITS).unwrap();
        assert_eq!(r.to.as_str(), "+14155550123");
        assert_eq!(r.from, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (json!({"body": "x"}), "missing_field", "to"),
            (json!({"to": "+14155550123"}), "missing_field", "body"),
            (json!({"to": "+14155550123", "body": ""}), "invalid_field", "body"),
            (json!({"to": 14155550123u64, "body": "x"}), "invalid_field", "to"),
            (json!({"to": "4155550123", "body": "x"}), "invalid_field", "to"),
            (json!({"to": "+15555550123", "body": "x"}), "invalid_field", "to"),
            (json!({"to": "+14155550123", "body": 5}), "invalid_field", "body"),
            (json!({"to": "+14155550123", "body": "x", "extra": 1}), "unknown_field", "extra"),
            (json!({"to": "+14155550123", "body": "x", "from": "TWELVE_CHARS"}), "invalid_field", "from"),
            (json!({"to": "+14155550123", "body": "x", "from": "pool:"}), "invalid_field", "from"),
            (json!({"to": "+14155550123", "body": "x", "from": "pool:a b"}), "invalid_field", "from"),
            (json!({"to": "+14155550123", "body": "x", "send_at": "tomorrow"}), "invalid_field", "send_at"),
            (json!({"to": "+14155550123", "body": "x", "validity_seconds": -1}), "invalid_field", "validity_seconds"),
            (json!({"to": "+14155550123", "body": "x", "validity_seconds": 1.5}), "invalid_field", "validity_seconds"),
            (json!({"to": "+14155550123", "body": "x", "callback_url": "not a url"}), "invalid_field", "callback_url"),
            (json!({"to": "+14155550123", "body": "x", "category": "Urgent!"}), "invalid_field", "category"),
            (
                json!({"to": "+14155550123", "body": "x", "recipient_timezone": "Mars/Olympus"}),
                "invalid_field",
                "recipient_timezone",
            ),
            (json!({"to": "+14155550123", "body": "x".repeat(1601)}), "invalid_field", "body"),
            (json!({"to": "+14155550123", "body": "a\u{0}b"}), "invalid_field", "body"),
        ];
        for (v, code, field) in cases {
            assert_eq!(err(v.clone()), (code.to_string(), Some(field.to_string())), "{v}");
        }
        assert_eq!(parse(&json!([1, 2]), LIMITS).unwrap_err().code, "invalid_field");
    }

    #[test]
    fn optional_fields_are_kept() {
        // More than a year ahead (derived from now, so the test does not age).
        let too_far =
            jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(24 * 400)).unwrap().to_string();
        let r = parse(
            &json!({"to": "+14155550123", "body": "x", "from": "CLINIC", "client_ref": "r1", "send_at": too_far,
                    "validity_seconds": 3600, "callback_url": "https://app.example/hook", "category": "appointment_reminder",
                    "recipient_timezone": "America/Chicago"}),
            LIMITS,
        );
        assert_eq!(r.unwrap_err().field.as_deref(), Some("send_at"));
        let soon = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(2)).unwrap().to_string();
        let r = parse(
            &json!({"to": "+14155550123", "body": "x", "send_at": soon, "callback_url": "http://127.0.0.1:9/x"}),
            LIMITS,
        )
        .unwrap();
        assert!(r.send_at_ms.unwrap() > now_ms());
        let m = build_message(r, ("k1", "default"), 7, vec!["c".into()], 3600);
        assert_eq!(m.status, Status::Scheduled);
        assert_eq!(m.expires_ms, m.due_ms + 3_600_000);
    }
}
