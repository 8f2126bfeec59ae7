//! SMPP 3.4, laid out by role: `codec` (PDUs via `rusmpp`, framing, receipt texts) is shared;
//! `client` is smsgate binding out to carriers (the bind pool, message → `submit_sm`). The
//! server side (clients binding to smsgate) is the built-in simulator's (`crate::sim`) today.

pub mod client;
pub mod codec;
