//! The message record: what the store keeps per accepted message and what
//! `GET /v1/messages/{id}` shows (minus the content).

use serde::{Deserialize, Serialize};

use crate::text::Encoding;

/// Lifecycle of a message. Names are the API's (DESIGN.md "Statuses").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, waiting for its turn.
    Queued,
    /// Accepted with a due time in the future (send_at, quiet hours, retry backoff).
    Scheduled,
    /// Handed to a bind; no `submit_sm_resp` yet.
    Submitting,
    /// Every segment has a carrier message id.
    Submitted,
    /// Every segment's receipt says delivered.
    Delivered,
    /// The carrier could not deliver it.
    Undeliverable,
    /// Validity ran out, at the carrier or here.
    Expired,
    /// The carrier rejected it.
    Rejected,
    /// Permanent error or attempts exhausted.
    Failed,
    /// Cancelled through the API before submission.
    Cancelled,
    /// An opt-out was found after accept.
    Blocked,
    /// No receipt came within the carrier's `receipt_timeout_secs`; a late receipt still
    /// moves it on.
    Unknown,
}

impl Status {
    /// Final statuses never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Delivered
                | Status::Undeliverable
                | Status::Expired
                | Status::Rejected
                | Status::Failed
                | Status::Cancelled
                | Status::Blocked
                | Status::Unknown
        )
    }

    /// Name as the API and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Scheduled => "scheduled",
            Status::Submitting => "submitting",
            Status::Submitted => "submitted",
            Status::Delivered => "delivered",
            Status::Undeliverable => "undeliverable",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Blocked => "blocked",
            Status::Unknown => "unknown",
        }
    }
}

/// Who the message goes to and what it says: the part that is PHI. Never stored in clear:
/// the store keeps it sealed (`Message::sealed`) and opens it on read.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Destination, E.164.
    pub to: String,
    /// Sender id, if the client set one.
    pub from: Option<String>,
    /// The text.
    pub body: String,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Content(to={}, body=<{} chars>)", crate::phone::mask(&self.to), self.body.chars().count())
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Sent by a client through the API.
    #[default]
    Regular,
    /// smsgate's own reply to a keyword (opt-out confirmation, HELP): exempt from opt-out,
    /// consent, quiet hours and caps, because the rules require it to go out.
    AutoReply,
}

/// One step in a message's life, shown in the API's `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Status entered.
    pub status: Status,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Carrier, error code or other short detail; never content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many more times the same step followed at once (a carrier throttling for an
    /// hour), collapsed into this entry so the record stays small.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u32,
    /// When the last repeat happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most entries a history keeps: the first (accept) and the latest ones.
pub const MAX_HISTORY: usize = 32;

/// One `submit_sm` of a (possibly concatenated) message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The carrier's message id from `submit_sm_resp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_message_id: Option<String>,
    /// Final state from this part's receipt, once it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Status>,
}

/// Why a message failed, as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable snake_case code.
    pub code: String,
    /// A sentence for humans.
    pub message: String,
    /// The SMPP `command_status` or receipt error the carrier gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier_status: Option<u32>,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Public id (ULID).
    pub id: String,
    /// API key that sent it.
    pub key_id: String,
    /// Account of that key; only its keys may read it. Records from before accounts are the
    /// `default` account's.
    #[serde(default = "default_account")]
    pub account: String,
    /// Accept order, for FIFO within a due time.
    pub seq: u64,
    /// Destination, sender and text (in memory only; see `sealed`).
    #[serde(skip)]
    pub content: Content,
    /// `content`, sealed with the data key and bound to this record (AES-256-GCM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::crypto::Sealed>,
    /// The destination, masked (`+1415***0123`): for views and webhooks without opening content.
    #[serde(default)]
    pub to_masked: String,
    /// Whether this message's status webhooks may carry its body (the key allows it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webhook_body: bool,
    /// When the body was purged by retention (the number stays, sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged_ms: Option<u64>,
    /// The client's own reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ref: Option<String>,
    /// Where status webhooks go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Message category (`urgent` bypasses quiet hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Client message or smsgate's own auto-reply.
    #[serde(default, skip_serializing_if = "is_regular")]
    pub kind: MessageKind,
    /// The recipient's time zone as resolved at accept (quiet hours, caps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_tz: Option<String>,
    /// Content rules that matched under `flag`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// GSM-7 or UCS-2.
    pub encoding: Encoding,
    /// Number of `submit_sm` the message needs.
    pub segments: u32,
    /// Accepted at, ms since the epoch.
    pub created_ms: u64,
    /// Not to be submitted before (ms).
    pub due_ms: u64,
    /// Given up on at (ms): the validity deadline.
    pub expires_ms: u64,
    /// Current status.
    pub status: Status,
    /// Carriers to try, in order.
    pub route: Vec<String>,
    /// Carrier it was submitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    /// Per-segment carrier ids and receipts.
    pub parts: Vec<Part>,
    /// When its last part was submitted (ms): the receipt timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_ms: Option<u64>,
    /// Submission attempts so far.
    pub attempts: u32,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Status changes with timestamps.
    pub history: Vec<Event>,
}

impl Event {
    /// A step entered at `at_ms`.
    pub fn new(status: Status, at_ms: u64, detail: Option<String>) -> Event {
        Event { status, at_ms, detail, repeats: 0, last_at_ms: None }
    }
}

fn default_account() -> String {
    crate::accounts::DEFAULT.to_string()
}

fn is_regular(k: &MessageKind) -> bool {
    *k == MessageKind::Regular
}

impl Message {
    /// A newly accepted message: due at `due_ms` (queued, or scheduled when that is later
    /// than `now_ms`), valid `validity_ms` from then, its encoding and parts counted from the
    /// body. The optional fields (sender options, callback, category, …) start empty.
    pub fn accepted(
        key_id: &str,
        seq: u64,
        content: Content,
        route: Vec<String>,
        now_ms: u64,
        due_ms: u64,
        validity_ms: u64,
    ) -> Message {
        let analysis = crate::text::analyze(&content.body);
        let status = if due_ms > now_ms { Status::Scheduled } else { Status::Queued };
        Message {
            id: ulid::Ulid::new().to_string(),
            key_id: key_id.to_string(),
            account: default_account(),
            seq,
            to_masked: crate::phone::mask(&content.to),
            content,
            sealed: None,
            purged_ms: None,
            webhook_body: false,
            client_ref: None,
            callback_url: None,
            category: None,
            kind: MessageKind::Regular,
            recipient_tz: None,
            flags: Vec::new(),
            encoding: analysis.encoding,
            segments: analysis.segments as u32,
            created_ms: now_ms,
            due_ms,
            expires_ms: due_ms + validity_ms,
            status,
            route,
            carrier: None,
            parts: vec![Part::default(); analysis.segments],
            submitted_ms: None,
            attempts: 0,
            error: None,
            history: vec![Event::new(status, now_ms, None)],
        }
    }

    /// The carrier whose queue this message waits in: the first of its route.
    pub fn queue_carrier(&self) -> &str {
        self.route.first().map(String::as_str).unwrap_or("")
    }

    /// Moves to `status` and records it in the history: a step that repeats the last one
    /// counts there, and past [`MAX_HISTORY`] entries the oldest after the first go.
    pub fn set_status(&mut self, status: Status, at_ms: u64, detail: Option<String>) {
        self.status = status;
        self.record(Event::new(status, at_ms, detail));
    }

    /// Adds a history entry without changing the status (same collapsing rules).
    pub fn record(&mut self, event: Event) {
        let collapsible = self.history.len() > 1;
        if collapsible
            && let Some(last) = self.history.last_mut()
            && last.status == event.status
            && last.detail == event.detail
        {
            last.repeats = last.repeats.saturating_add(1);
            last.last_at_ms = Some(event.at_ms);
            return;
        }
        self.history.push(event);
        if self.history.len() > MAX_HISTORY {
            self.history.remove(1);
        }
    }
}

/// Milliseconds on a monotonic clock: for pauses and timeouts, which a wall clock stepped back
/// or forward must not stretch or cut. Counts from the first call in this process plus a
/// constant (a million seconds), so that 0 still reads as "long ago" wherever it means "never".
pub fn mono_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    1_000_000_000 + BASE.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Renders epoch milliseconds as RFC 3339 UTC (`2026-11-22T20:03:29.123Z`).
pub fn rfc3339(ms: u64) -> String {
    match jiff::Timestamp::from_millisecond(ms as i64) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => String::from("invalid-time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn final_statuses() {
        assert!(Status::Delivered.is_final());
        assert!(!Status::Submitted.is_final());
        assert_eq!(serde_json::to_string(&Status::Undeliverable).unwrap(), "\"undeliverable\"");
    }
}
