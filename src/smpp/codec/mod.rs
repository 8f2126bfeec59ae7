//! What both sides of an SMPP session share: PDUs and their encoding (`pdu`), length-prefixed
//! framing with bounds (`frame`), delivery receipts and message ids (`receipt`).

pub mod encode;
pub mod frame;
pub mod pdu;
pub mod receipt;
