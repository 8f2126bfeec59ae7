//! Test numbers: destinations for which the built-in simulator (and so `smsgate demo`)
//! produces a given outcome, so an application can exercise every status and webhook from
//! the API, like the magic numbers of hosted providers. They are in the 555-01xx block that
//! North American numbering reserves for fiction. Any other number is delivered.

use crate::smpp::codec::pdu::status;

/// What the simulator does with a message to a test number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accepted; the receipt says `stat` (message_state `state`) after the usual delay.
    Receipt {
        /// Appendix B `stat:` word.
        stat: &'static str,
        /// `message_state` TLV.
        state: u8,
    },
    /// Accepted; the receipt (DELIVRD) comes only after `delay_ms`.
    SlowReceipt {
        /// How long after the submit.
        delay_ms: u64,
    },
    /// Accepted; no receipt ever comes.
    NoReceipt,
    /// Every other `submit_sm` to it is answered ESME_RTHROTTLED (the first one is).
    Throttled,
    /// `submit_sm` refused with this status (a permanent error).
    Refused(u32),
}

/// The test numbers: (E.164, what happens, the status the message ends in).
pub const NUMBERS: &[(&str, Behaviour, &str)] = &[
    ("+12025550101", Behaviour::Receipt { stat: "UNDELIV", state: 5 }, "undeliverable"),
    ("+12025550102", Behaviour::Receipt { stat: "REJECTD", state: 8 }, "rejected"),
    ("+12025550103", Behaviour::Receipt { stat: "EXPIRED", state: 3 }, "expired"),
    ("+12025550104", Behaviour::Throttled, "delivered, after a carrier_throttled retry"),
    ("+12025550105", Behaviour::NoReceipt, "submitted (no receipt ever comes)"),
    ("+12025550106", Behaviour::SlowReceipt { delay_ms: 20_000 }, "delivered, 20 s after submission"),
    ("+12025550107", Behaviour::Refused(status::INVALID_DEST), "failed (ESME_RINVDSTADR)"),
];

/// The behaviour for a destination (`destination_addr` digits, with or without `+`).
pub fn behaviour(destination: &str) -> Option<Behaviour> {
    let digits = destination.trim_start_matches('+');
    NUMBERS.iter().find(|(n, _, _)| &n[1..] == digits).map(|(_, b, _)| *b)
}

/// One line per test number, for `smsgate demo` and `smsc-sim` to print.
pub fn listing() -> String {
    NUMBERS.iter().map(|(n, _, outcome)| format!("    {n}  {outcome}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_numbers_are_valid_numbers_and_others_are_ordinary() {
        for (n, _, _) in NUMBERS {
            assert!(crate::phone::E164::parse(n).is_ok(), "{n} must be accepted by the API");
        }
        assert_eq!(behaviour("12025550101"), Some(Behaviour::Receipt { stat: "UNDELIV", state: 5 }));
        assert_eq!(behaviour("+12025550107"), Some(Behaviour::Refused(status::INVALID_DEST)));
        assert_eq!(behaviour("14155550123"), None);
    }
}
