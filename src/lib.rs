//! smsgate: an SMS carrier gateway and durable message queue.
//!
//! Data flow: `api` validates and authenticates a send, `store` makes it durable (group
//! commit + fdatasync) before the 202, `dispatch` takes due messages and submits them through
//! a carrier's `smpp::client::session` binds, and receipts coming back as `deliver_sm` are correlated
//! in the store. `sim` is an SMSC simulator for the demo and tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod accounts;
pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod correlate;
pub mod crypto;
pub mod demo;
pub mod dispatch;
pub mod faults;
pub mod flow;
pub mod fsutil;
pub mod gateway;
pub mod httpd;
pub mod inbound;
pub mod live;
pub mod maintenance;
pub mod message;
pub mod metrics;
pub mod phone;
pub mod queue;
pub mod receipt_timeout;
pub mod search;
pub mod sim;
pub mod smpp;
pub mod store;
pub mod supervise;
pub mod text;
pub mod tls;
pub mod tripwire;
pub mod webhooks;
