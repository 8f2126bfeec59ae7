//! Receipts whose id does not match in the configured form: many carriers answer
//! `submit_sm_resp` with a hexadecimal id and write receipts with the same number in decimal
//! (or pad, or change case), and with the default `submit_id_format`/`receipt_id_format`
//! every such receipt would wait forever. When the configured form finds nothing, the other
//! writings of the number are tried (`smpp::codec::receipt::fallback_ids`), the match is counted
//! (`smsgate_receipt_id_fallback_total{carrier,form}`) and the config line that would match
//! directly is logged once per carrier and form.
//!
//! Reading an id in another base can name another message (`26` and `1a` are two ids of a
//! hexadecimal carrier), so a form is used only when what the carrier writes rules that out:
//! decimal receipts → hexadecimal ids only for a carrier that has sent at least
//! [`DECIMAL_EVIDENCE`] receipts and none with a letter, and only for a candidate with a
//! letter; hexadecimal receipts (with a letter) → decimal ids only for a carrier none of whose
//! ids in the index has a letter. The same digits with other zeros or case are always the same
//! id. A receipt that arrives before its `submit_sm_resp` is parked (`o/`) and tried again
//! here a little later.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics as m;
use crate::smpp::codec::receipt::{IdFallback, fallback_ids};
use crate::store::{Op, OpResult, Store, StoreError};

/// How long a parked receipt waits for its `submit_sm_resp` before other forms are tried.
const PARKED_GRACE_MS: u64 = 2_000;
/// How long a sample of a carrier's ids in the index is trusted.
const SAMPLE_TTL: Duration = Duration::from_secs(60);
/// Receipts without a letter in the id, and none with one, before a carrier's receipt ids are
/// taken as decimal.
pub const DECIMAL_EVIDENCE: u64 = 3;

fn has_letter(id: &str) -> bool {
    id.bytes().any(|b| b.is_ascii_alphabetic())
}

/// What is known of how each carrier writes its ids.
#[derive(Default)]
pub struct Correlator {
    /// Per carrier: receipts seen whose id had no letter, and whether one had a letter.
    receipt_ids: Mutex<HashMap<String, (u64, bool)>>,
    /// Whether a carrier's ids in the index have letters, and when that was looked at.
    index_letters: Mutex<HashMap<String, (bool, Instant)>>,
    /// (carrier, form) already logged.
    advised: Mutex<HashSet<(String, &'static str)>>,
}

impl Correlator {
    /// Notes how a receipt of `carrier` writes its id.
    pub fn saw_receipt(&self, carrier: &str, id: &str) {
        if let Ok(mut seen) = self.receipt_ids.lock() {
            let entry = match seen.get_mut(carrier) {
                Some(e) => e,
                None => seen.entry(carrier.to_string()).or_default(),
            };
            if has_letter(id) {
                entry.1 = true;
            } else {
                entry.0 += 1;
            }
        }
    }

    /// Whether `carrier`'s receipts are known to write ids in decimal.
    fn receipts_are_decimal(&self, carrier: &str) -> bool {
        self.receipt_ids
            .lock()
            .ok()
            .and_then(|s| s.get(carrier).copied())
            .is_some_and(|(digits_only, letters)| !letters && digits_only >= DECIMAL_EVIDENCE)
    }

    fn index_has_letters(&self, store: &Store, carrier: &str) -> Result<bool, StoreError> {
        if let Ok(cache) = self.index_letters.lock()
            && let Some((letters, at)) = cache.get(carrier)
            && at.elapsed() < SAMPLE_TTL
        {
            return Ok(*letters);
        }
        let letters = store.carrier_id_sample(carrier, 256)?.iter().any(|id| has_letter(id));
        if let Ok(mut cache) = self.index_letters.lock() {
            cache.insert(carrier.to_string(), (letters, Instant::now()));
        }
        Ok(letters)
    }

    /// The id in the receipt index that the receipt id `id` of `carrier` is about, when it is
    /// there only in another writing.
    pub fn find(&self, store: &Store, carrier: &str, id: &str) -> Result<Option<(IdFallback, String)>, StoreError> {
        for (form, candidate) in fallback_ids(id) {
            let allowed = match form {
                IdFallback::DecReceiptHexSubmit => self.receipts_are_decimal(carrier) && has_letter(&candidate),
                IdFallback::HexReceiptDecSubmit => has_letter(id) && !self.index_has_letters(store, carrier)?,
                IdFallback::LeadingZeros | IdFallback::HexCaseOrZeros => true,
            };
            if allowed && store.knows_carrier_id(carrier, &candidate)? {
                self.matched(carrier, form);
                return Ok(Some((form, candidate)));
            }
        }
        Ok(None)
    }

    fn matched(&self, carrier: &str, form: IdFallback) {
        m::receipt_id_fallback(carrier, form.label());
        let first = self.advised.lock().map(|mut a| a.insert((carrier.to_string(), form.label()))).unwrap_or(false);
        if first {
            warn!(
                carrier,
                form = form.label(),
                "receipts match their messages only with the id written another way; set {} for this carrier to \
                 match them directly",
                form.advice()
            );
        }
    }

    /// Parked receipts older than a moment whose id is in the index in another writing are
    /// applied there. Returns how many.
    pub async fn retry_parked(&self, store: &Store, now_ms: u64) -> Result<usize, StoreError> {
        let mut adopted = 0;
        for parked in store.orphans(10_000)? {
            if now_ms < parked.at_ms + PARKED_GRACE_MS {
                continue;
            }
            if let Some((_, candidate)) = self.find(store, &parked.carrier, &parked.id)? {
                let carrier = parked.carrier;
                let op =
                    Op::AdoptOrphan { orphan: parked.key, carrier: carrier.clone(), carrier_message_id: candidate };
                if let OpResult::Updated { became_final: true, status, .. } = store.commit_one(op).await? {
                    m::finished(&carrier, status.as_str());
                }
                adopted += 1;
            }
        }
        Ok(adopted)
    }
}
