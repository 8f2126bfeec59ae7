//! smsgate as an ESME toward carriers: the bind pool with its windows, timeouts and
//! reconnects (`session`), and how a message becomes `submit_sm` parts (`submit`).

pub mod job;
pub mod session;
pub mod submit;
