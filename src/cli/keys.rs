//! `smsgate keys …`: API keys (through the running server's admin socket, or on the store
//! directly when it is stopped) and the data-key file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::admin::{AdminRequest, AdminResponse};
use crate::auth::Scope;
use crate::config::Config;

/// `keys` actions.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token once.
    Create {
        /// Label for the key.
        #[arg(long)]
        name: String,
        /// The account it belongs to (default: the account `default`).
        #[arg(long)]
        account: Option<String>,
        /// Comma-separated scopes: send, read, optouts, admin.
        #[arg(long, default_value = "send,read")]
        scopes: String,
        /// Requests per second this key may make (default: unlimited).
        #[arg(long)]
        rate: Option<u32>,
        /// Segments this key may send per UTC day (default: unlimited).
        #[arg(long)]
        daily_quota: Option<u64>,
    },
    /// Change a key's limits (0 removes a limit).
    SetLimits {
        /// Key id.
        id: String,
        /// Requests per second.
        #[arg(long)]
        rate: Option<u32>,
        /// Segments per UTC day.
        #[arg(long)]
        daily_quota: Option<u64>,
    },
    /// List keys (never their tokens).
    List,
    /// Revoke a key by id.
    Revoke {
        /// Key id (from `keys list`).
        id: String,
    },
    /// Admin: a key's content-rule action and webhook settings.
    SetPolicy {
        /// Key id.
        id: String,
        /// reject, flag, or default (the configured action).
        #[arg(long)]
        content_action: Option<String>,
        /// Default webhook URL for the key's messages (`none` removes it).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Let the key's webhooks carry message bodies.
        #[arg(long)]
        webhook_include_body: Option<bool>,
    },
    /// Append a data key to the key file (run it as a user who may write the file); the
    /// server then seals new data with it and re-seals what is stored.
    RotateDataKey,
    /// Write a new data key file, mode 0600 (refuses to overwrite). Then give it to the
    /// service's group: `chown root:smsgate FILE && chmod 0640 FILE`. smsgate refuses a key
    /// file every user can read or anyone but its owner can change.
    InitDataKeys {
        /// Where (keep it outside the data directory).
        #[arg(long)]
        out: PathBuf,
    },
}

pub(super) fn init_data_keys(out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{} exists; refusing to overwrite data keys", out.display());
    }
    crate::fsutil::write_private(out, crate::crypto::Crypto::generate_file_text().as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (mode 0600). For the service: chown root:smsgate and chmod 0640 it. Back it up apart \
         from the data: without it nothing stored can be read.",
        out.display()
    );
    Ok(())
}

pub(super) async fn keys(action: KeysCommand, config_path: &Path) -> Result<()> {
    let config = Config::load_admin(config_path)?;
    let request = match action {
        KeysCommand::Create { name, account, scopes, rate, daily_quota } => {
            let scopes = Scope::parse_list(&scopes).map_err(anyhow::Error::msg).context("--scopes")?;
            AdminRequest::KeysCreate { account, name, scopes, rate_per_sec: rate, daily_segments: daily_quota }
        }
        KeysCommand::SetLimits { id, rate, daily_quota } => {
            if rate.is_none() && daily_quota.is_none() {
                bail!("give --rate and/or --daily-quota");
            }
            AdminRequest::KeysSetLimits { id, rate_per_sec: rate, daily_segments: daily_quota }
        }
        KeysCommand::SetPolicy { id, content_action, webhook_url, webhook_include_body } => {
            AdminRequest::KeysSetPolicy { id, content_action, webhook_url, webhook_include_body }
        }
        KeysCommand::RotateDataKey => {
            // The operator's command writes the key file; the service only reads it.
            let path = config.crypto.key_file.as_ref().context("rotate-data-key needs [crypto] key_file")?;
            let id = crate::crypto::Crypto::append_key(path)
                .with_context(|| format!("adding a key to {}", path.display()))?;
            eprintln!("added data key {id} to {}", path.display());
            AdminRequest::RotateDataKey
        }
        KeysCommand::InitDataKeys { .. } => bail!("init-data-keys needs no config"),
        KeysCommand::List => AdminRequest::KeysList,
        KeysCommand::Revoke { id } => AdminRequest::KeysRevoke { id },
    };
    let answer = super::admin_call(&config, request).await?;
    match answer {
        AdminResponse::Created { key, token } => {
            println!(
                "id:      {}\naccount: {}\nname:    {}\nscopes:  {}\nlimits:  {}\ntoken:   {token}",
                key.id,
                key.account,
                key.name,
                scopes_text(&key.scopes),
                limits_text(&key)
            );
            eprintln!("The token is shown only this once; store it in your secret manager.");
        }
        AdminResponse::Updated { key } => println!("{}: {}", key.id, limits_text(&key)),
        AdminResponse::Keys { keys } => {
            println!("{:<14} {:<8} {:<20} {:<34} {:<24} name", "id", "state", "scopes", "limits", "created");
            for k in keys {
                let state = if k.revoked_ms.is_some() { "revoked" } else { "active" };
                println!(
                    "{:<14} {:<8} {:<20} {:<34} {:<24} {}",
                    k.id,
                    state,
                    scopes_text(&k.scopes),
                    limits_text(&k),
                    crate::message::rfc3339(k.created_ms),
                    k.name
                );
            }
        }
        AdminResponse::Revoked { key } => println!("revoked {}", key.id),
        AdminResponse::Rotated { key_id } => println!("new data key {key_id} in use; stored data re-sealed"),
        AdminResponse::BackedUp { records } => println!("backup written ({records} records)"),
        AdminResponse::Error { message } => bail!(message),
        other => bail!("unexpected answer: {other:?}"),
    }
    Ok(())
}

fn limits_text(k: &crate::auth::ApiKey) -> String {
    let rate = k.rate_per_sec.map(|r| format!("{r} req/s")).unwrap_or_else(|| "no rate limit".into());
    let quota = k.daily_segments.map(|d| format!("{d} seg/day")).unwrap_or_else(|| "no quota".into());
    format!("{rate}, {quota}")
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(",")
}
