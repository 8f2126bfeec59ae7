//! The contract between the dispatcher and the binds: a part to submit ([`SubmitJob`]), the
//! ticket that lets the dispatcher withdraw it until a bind takes it, the answer it gets
//! back, and the handler inbound `deliver_sm` go to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::smpp::codec::pdu::ShortMessage;

/// One message part to submit.
pub struct SubmitJob {
    /// The PDU fields (the session adds the sequence number).
    pub sm: ShortMessage,
    /// Where the answer goes. If this is dropped unanswered, the PDU was never written.
    pub reply: oneshot::Sender<SubmitResult>,
    /// Taken by a bind, or withdrawn by the dispatcher: whichever comes first.
    pub ticket: Ticket,
}

/// `deliver_sm` a bind handles at once (receipts and inbound texts, each a store commit);
/// more get ESME_RTHROTTLED, which SMSCs retry. Far above what one bind delivers while the
/// store keeps up; reached only when the store stalls or a carrier floods.
pub const INBOUND_IN_FLIGHT: usize = 64;

/// Who has a job: still waiting in the channel, taken by a bind (its answer will come), or
/// withdrawn by the dispatcher (no bind will send it).
#[derive(Debug, Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

impl Ticket {
    /// A bind takes the job; false if it was withdrawn.
    pub(super) fn take(&self) -> bool {
        self.0.compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The dispatcher takes the job back; false if a bind has it already (then its answer,
    /// or the end of that connection, will come).
    pub fn withdraw(&self) -> bool {
        self.0.compare_exchange(WAITING, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// The answer to a [`SubmitJob`].
pub struct SubmitResult {
    /// What happened.
    pub outcome: SubmitOutcome,
    /// The window slot; drop it once the outcome is durable.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// What became of a submitted part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// `submit_sm_resp` with status 0 and this message id.
    Accepted(String),
    /// `submit_sm_resp` or `generic_nack` with this error status.
    Rejected(u32),
    /// Written, but no answer came: the carrier may or may not have it. `timed_out` says
    /// whether the SMSC stayed silent past the response timeout (a carrier health signal)
    /// rather than the connection ending (a bind problem, already visible as bind state).
    Unknown {
        /// What happened.
        reason: String,
        /// The response timeout passed.
        timed_out: bool,
    },
    /// Could not be encoded (a field SMPP cannot carry): retrying will not help.
    Invalid(String),
}

/// Handles `deliver_sm` (receipts and inbound texts); the returned status goes into the
/// `deliver_sm_resp`, which is sent only after the future completes, so a handler that
/// stores durably makes the acknowledgement mean "safe".
pub trait InboundHandler: Send + Sync + 'static {
    /// Processes one `deliver_sm` from `carrier`.
    fn deliver(&self, carrier: Arc<str>, sm: ShortMessage) -> Pin<Box<dyn Future<Output = u32> + Send>>;
}
