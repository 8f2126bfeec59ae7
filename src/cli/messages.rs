//! `smsgate messages export`: one account's messages in a time range as CSV, numbers masked
//! unless `--unmask` (which the audit trail records).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::admin::{AdminRequest, AdminResponse};
use crate::config::Config;

/// `messages` actions.
#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Write an account's messages as CSV (newest first).
    Export {
        /// The account.
        #[arg(long)]
        account: String,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Created at or before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Numbers in clear instead of masked (recorded in the audit trail).
        #[arg(long)]
        unmask: bool,
        /// Output file, `-` for stdout.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
}

fn ms(flag: &str, value: Option<String>) -> Result<Option<u64>> {
    value
        .map(|v| match v.parse::<jiff::Timestamp>().ok().and_then(|t| u64::try_from(t.as_millisecond()).ok()) {
            Some(ms) => Ok(ms),
            None => bail!("--{flag} {v}: an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"),
        })
        .transpose()
}

/// Runs a `messages` action.
pub async fn run(action: MessagesCommand, config: &Config) -> Result<()> {
    let MessagesCommand::Export { account, since, until, unmask, out } = action;
    let request =
        AdminRequest::MessagesExport { account, since_ms: ms("since", since)?, until_ms: ms("until", until)?, unmask };
    let rows = match super::admin_call(config, request).await? {
        AdminResponse::Messages { rows } => rows,
        AdminResponse::Error { message } => bail!("{message}"),
        _ => bail!("the export failed"),
    };
    let mut w = csv::Writer::from_writer(super::output(&out)?);
    w.write_record([
        "id",
        "created_at",
        "status",
        "to",
        "from",
        "client_ref",
        "category",
        "segments",
        "carrier",
        "error",
    ])?;
    for r in &rows {
        w.write_record(r)?;
    }
    w.flush()?;
    eprintln!("exported {} message(s)", rows.len());
    Ok(())
}
