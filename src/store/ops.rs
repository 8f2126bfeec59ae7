//! The store's vocabulary: the changes a commit is made of ([`Op`]), what each answers
//! ([`OpResult`]), the guards a commit checks first (idempotency, quotas) and what the store
//! gives back when it is read at start (queue entries, parked receipts).

use crate::message::{ErrorInfo, Message, Status};

/// What a receipt says about one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptOutcome {
    /// Final state for the part, or `None` for an intermediate one (ENROUTE, ACCEPTD).
    pub status: Option<Status>,
    /// The carrier's state word (DELIVRD, UNDELIV, …) for the history.
    pub stat: String,
    /// The carrier's error code, if it gave one.
    pub error_code: Option<u32>,
}

/// A key and its value, as stored.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// One change to the store. A list of them commits atomically.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new message: its record and its queue entry.
    Insert(Box<Message>),
    /// One segment got its `submit_sm_resp` with a message id.
    PartSubmitted {
        /// Message id.
        id: String,
        /// Segment index.
        part: usize,
        /// How many submit_sm this carrier needs for the message (its long-message mode may
        /// differ from the count made at accept; fixed at the first recorded part).
        total: usize,
        /// Carrier that answered.
        carrier: String,
        /// Its message id (normalised).
        carrier_message_id: String,
    },
    /// Back to the queue at `due_ms` (temporary failure, lost bind, throttling).
    Reschedule {
        /// Message id.
        id: String,
        /// When to try again.
        due_ms: u64,
        /// Whether this counts as a submission attempt.
        count_attempt: bool,
        /// What went wrong, for the history.
        error: Option<ErrorInfo>,
    },
    /// A final state reached before a receipt (permanent error, expiry, cancel).
    Finish {
        /// Message id.
        id: String,
        /// The final status.
        status: Status,
        /// Why.
        error: Option<ErrorInfo>,
        /// Whether a submission attempt led here (a carrier's answer, not an expiry).
        count_attempt: bool,
    },
    /// A receipt parked under `o/` (key `orphan`) turned out to be about the carrier id
    /// `carrier_message_id` (written another way): apply it there, and un-park it.
    AdoptOrphan {
        /// The `o/` key.
        orphan: Vec<u8>,
        /// Carrier.
        carrier: String,
        /// The id as the `c/` index has it.
        carrier_message_id: String,
    },
    /// A delivery receipt.
    Receipt {
        /// Carrier it came from.
        carrier: String,
        /// The id it refers to (normalised).
        carrier_message_id: String,
        /// What it says.
        outcome: ReceiptOutcome,
    },
    /// A queued message's carriers, routed again (its carrier left the configuration): the
    /// record and the queue entry change together.
    Reroute {
        /// Message id.
        id: String,
        /// The new route, first carrier first.
        route: Vec<String>,
    },
    /// A submitted message's receipt did not come in time: `unknown`, if it is still
    /// `submitted`.
    ReceiptTimeout {
        /// Message id.
        id: String,
    },
    /// Cancel a message that no part of has been submitted yet.
    Cancel {
        /// Message id.
        id: String,
    },
    /// Replace a message's sealed content (re-sealed under a new key, or purged of its body).
    SetSealed {
        /// Message id.
        id: String,
        /// The new sealed content.
        sealed: crate::crypto::Sealed,
        /// Set when retention purged the body.
        purged_ms: Option<u64>,
    },
    /// Delete a message record and its carrier-id index entries (retention of metadata).
    DeleteMessage {
        /// Message id.
        id: String,
    },
    /// Remove an auxiliary record (expired idempotency entries, old counters).
    Delete {
        /// Full key.
        key: Vec<u8>,
    },
    /// Sets a record that could not be decoded aside under `z/`, if it still holds `seen`
    /// (readers that find one ask for this without waiting).
    Quarantine {
        /// Its key.
        key: Vec<u8>,
        /// The bytes the reader could not decode.
        seen: Vec<u8>,
        /// The decoder's message.
        reason: String,
    },
    /// An auxiliary record (API key, inbound message) under a key from [`layout`].
    Put {
        /// Full key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
}

/// What one [`Op`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// Applied; nothing to report.
    Done,
    /// A message changed.
    Updated {
        /// Message id.
        id: String,
        /// Its status now.
        status: Status,
        /// When it was accepted, for latency metrics.
        created_ms: u64,
        /// Whether this op moved it to a final status.
        became_final: bool,
    },
    /// No such message (or carrier id).
    NotFound,
    /// A receipt for an id we do not know yet: kept until its `submit_sm_resp` is recorded.
    Orphan,
    /// The message is final already; nothing changed.
    AlreadyFinal(Status),
    /// A cancel came too late: some part is with the carrier already.
    AlreadySubmitted(Status),
}

/// A receipt parked under `o/` until its message's carrier id is known.
#[derive(Debug, Clone)]
pub struct Parked {
    /// Its `o/` key.
    pub key: Vec<u8>,
    /// The carrier it came from.
    pub carrier: String,
    /// Its id (canonical form, see `layout::canonical_id`).
    pub id: String,
    /// When it was parked (ms).
    pub at_ms: u64,
}

/// How long an idempotency entry answers replays (DESIGN.md: 24 h).
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// What a request with an `Idempotency-Key` answered, kept for replays.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 (hex) of the request body.
    pub body_hash: String,
    /// HTTP status of the first answer.
    pub status: u16,
    /// Its JSON body.
    pub response: serde_json::Value,
    /// When it was stored (ms).
    pub created_ms: u64,
}

/// Preconditions the writer checks, race-free, before applying any op of a request; if one
/// fails nothing of the request is applied.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// If an unexpired entry exists under `.0`, replay it; else store `.1` with the ops.
    pub idempotency: Option<(Vec<u8>, IdempotencyRecord)>,
    /// Counters with ceilings (daily key quota, per-recipient frequency caps), checked in order.
    pub quotas: Vec<QuotaGuard>,
}

/// A counter with a ceiling: the request is refused if `key` plus the `also` counters (a
/// rolling window's other days), with everything the request adds to them, would pass
/// `limit`; otherwise, if `adds`, `key` gets `amount` added.
///
/// Two limits on one counter (a day's and a week's, both counting today) are two guards on
/// the same key, and only one of them adds: the request is one message, not two.
#[derive(Debug, Clone)]
pub struct QuotaGuard {
    /// Counter key.
    pub key: Vec<u8>,
    /// Other counters that count toward the same limit.
    pub also: Vec<Vec<u8>>,
    /// What this request adds.
    pub amount: u64,
    /// Whether this guard adds `amount` to `key` (false: it only checks a limit that another
    /// guard of the same request adds to).
    pub adds: bool,
    /// Ceiling.
    pub limit: u64,
    /// Caller's label, returned when this guard refuses.
    pub label: String,
}

/// Outcome of a guarded commit.
#[derive(Debug, Clone, PartialEq)]
pub enum Guarded {
    /// Preconditions held; one result per op.
    Applied(Vec<OpResult>),
    /// The same idempotency key was seen: here is what was answered then.
    Replay(IdempotencyRecord),
    /// A quota would be exceeded; `used` so far.
    QuotaExceeded {
        /// The refusing guard's label.
        label: String,
        /// Counter value now.
        used: u64,
        /// Ceiling.
        limit: u64,
    },
}

/// A queue entry as found at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// Not before (ms since epoch).
    pub due_ms: u64,
    /// Accept order.
    pub seq: u64,
    /// Message id.
    pub id: String,
    /// Carrier queue it waits in (the first carrier of its route).
    pub carrier: String,
    /// When it stops being worth sending (ms).
    pub expires_ms: u64,
    /// Its account.
    pub account: String,
}
