//! `smsgate optouts …`, `backup`, `restore`, `quarantine list`, `audit …`: the verbs that read
//! or write what the store and the audit trail hold.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::{admin_call, output};
use crate::admin::{AdminRequest, AdminResponse};
use crate::config::Config;

/// `optouts` actions.
#[derive(Debug, Subcommand)]
pub enum OptoutsCommand {
    /// Write every opt-out as CSV: number,scope,source,keyword,rule,recorded_by,at.
    Export {
        /// Output file (`-` for stdout).
        #[arg(long)]
        out: PathBuf,
    },
    /// Record opt-outs from a CSV whose first column is the number and optional second the scope.
    Import {
        /// CSV file (a header row is skipped if its first cell is not a number).
        file: PathBuf,
    },
}

/// `quarantine` actions.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List them: original key, size, when, why.
    List,
}

/// `audit` actions.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain; name the first broken entry.
    Verify,
    /// Copy the trail (JSON lines) for a SIEM.
    Export {
        /// Output file (`-` for stdout).
        #[arg(long)]
        out: PathBuf,
        /// Only entries at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
}

pub(super) async fn optouts(action: OptoutsCommand, config_path: &Path) -> Result<()> {
    let config = Config::load_admin(config_path)?;
    match action {
        OptoutsCommand::Export { out } => {
            let AdminResponse::OptOuts { rows } = admin_call(&config, AdminRequest::OptOutsExport).await? else {
                bail!("the export failed");
            };
            let mut w = csv::Writer::from_writer(output(&out)?);
            w.write_record(["number", "scope", "source", "keyword", "rule", "recorded_by", "at"])?;
            for r in &rows {
                w.write_record(r)?;
            }
            w.flush()?;
            eprintln!("exported {} opt-out(s)", rows.len());
        }
        OptoutsCommand::Import { file } => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_path(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut rows = Vec::new();
            for (i, record) in reader.records().enumerate() {
                let record = record.with_context(|| format!("{}: line {}", file.display(), i + 1))?;
                let number = record.get(0).unwrap_or("").trim().to_string();
                if i == 0 && !number.starts_with('+') {
                    continue; // header
                }
                rows.push((number, record.get(1).unwrap_or("").to_string()));
            }
            match admin_call(&config, AdminRequest::OptOutsImport { rows }).await? {
                AdminResponse::Imported { recorded, refused } => {
                    println!("recorded {recorded} opt-out(s)");
                    for r in &refused {
                        eprintln!("refused {r}");
                    }
                }
                AdminResponse::Error { message } => bail!(message),
                other => bail!("unexpected answer: {other:?}"),
            }
        }
    }
    Ok(())
}

pub(super) async fn backup(out: &Path, force: bool, config_path: &Path) -> Result<()> {
    if out.exists() && !force {
        bail!("{} exists; choose another name, or --force to replace it", out.display());
    }
    let config = Config::load_admin(config_path)?;
    // The server writes the file itself: give it an absolute path.
    let out = std::path::absolute(out).with_context(|| format!("{}", out.display()))?;
    match admin_call(&config, AdminRequest::Backup { out: out.clone() }).await? {
        AdminResponse::BackedUp { records } => {
            println!(
                "wrote {} ({records} records + audit log). It holds sealed data only: keep the data keys separately.",
                out.display()
            );
            Ok(())
        }
        AdminResponse::Error { message } => bail!(message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub(super) async fn quarantine_list(config_path: &Path) -> Result<()> {
    let config = Config::load_admin(config_path)?;
    match admin_call(&config, AdminRequest::QuarantineList).await? {
        AdminResponse::Quarantined { entries } => {
            println!("{:<24} {:>8}  {:<44} reason", "set aside at", "bytes", "key");
            for e in &entries {
                println!("{:<24} {:>8}  {:<44} {}", crate::message::rfc3339(e.at_ms), e.bytes, e.key, e.reason);
            }
            eprintln!("{} record(s) set aside", entries.len());
            Ok(())
        }
        AdminResponse::Error { message } => bail!(message),
        other => bail!("unexpected answer: {other:?}"),
    }
}

pub(super) fn restore(file: &Path, config_path: &Path) -> Result<()> {
    let config = Config::load_admin(config_path)?;
    let crypto = config.crypto.load().map_err(anyhow::Error::msg).context("[crypto]")?;
    let r = crate::store::backup::restore(file, &config.data_dir, &crypto)
        .with_context(|| format!("restoring {} into {}", file.display(), config.data_dir.display()))?;
    if !r.authenticated {
        eprintln!(
            "warning: {} is a version 1 backup (a checksum, not a keyed MAC): it shows no damage, but could have been altered",
            file.display()
        );
    }
    println!("restored {} records and {} file(s) into {}", r.records, r.files, config.data_dir.display());
    Ok(())
}

pub(super) fn audit(action: AuditCommand, config_path: &Path) -> Result<()> {
    use std::io::BufRead;
    let config = Config::load_admin(config_path)?;
    let dir = crate::audit::chain::dir(&config.data_dir);
    match action {
        AuditCommand::Verify => {
            let crypto = config.crypto.load().map_err(anyhow::Error::msg).context("[crypto]")?;
            match crate::audit::verify(&config.data_dir, &crypto.audit_key())? {
                crate::audit::Verification::Intact { entries, legacy, files, first_seq, head } => {
                    println!("{}: intact, {entries} entries in {files} file(s), head {head}", dir.display());
                    if first_seq > 1 {
                        println!("the chain starts at seq {first_seq}: older files were archived away");
                    }
                    if legacy > 0 {
                        println!(
                            "{legacy} entries are from before the chain was keyed (plain SHA-256): edits to them show, and \
                             the first keyed entry fixes their head"
                        );
                    }
                }
                crate::audit::Verification::Broken { file, line, seq, reason } => {
                    let seq = seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
                    bail!("{}: chain broken at line {line}{seq}: {reason}", file.display());
                }
            }
        }
        AuditCommand::Export { out, since } => {
            let since =
                since.map(|s| s.parse::<jiff::Timestamp>().with_context(|| format!("--since {s}"))).transpose()?;
            let mut w = output(&out)?;
            let mut n = 0;
            for path in crate::audit::chain::files(&config.data_dir)? {
                let file = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
                for line in std::io::BufReader::new(file).lines() {
                    let line = line?;
                    let keep = match since {
                        None => true,
                        Some(t) => serde_json::from_str::<crate::audit::Entry>(&line)
                            .ok()
                            .and_then(|e| e.at.parse::<jiff::Timestamp>().ok())
                            .is_some_and(|at| at >= t),
                    };
                    if keep {
                        writeln!(w, "{line}")?;
                        n += 1;
                    }
                }
            }
            eprintln!("exported {n} audit entries");
        }
    }
    Ok(())
}
