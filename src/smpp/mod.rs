//! SMPP 3.4: PDUs (via `rusmpp`), framing, receipts, and the client session/bind pool.

pub mod frame;
pub mod pdu;
pub mod receipt;
pub mod session;
pub mod submit;
