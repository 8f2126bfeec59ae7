//! `smsgate accounts …`: create, list, show, update and disable accounts (through the running
//! server's admin socket, or on the store directly when it is stopped).

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::accounts::AccountView;
use crate::accounts::admin::{AccountChanges, NewAccount};
use crate::admin::{AdminRequest, AdminResponse};
use crate::config::Config;

/// `accounts` actions.
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account; prints its webhook signing secret once.
    Create {
        /// Its name (a-z 0-9 - _).
        name: String,
        /// How patients see it named in automatic replies (default: the name).
        #[arg(long)]
        display_name: Option<String>,
        /// A sender it owns: +E.164, a short or long code, or an alphanumeric id (repeat).
        #[arg(long = "sender")]
        senders: Vec<String>,
        /// A pool of its senders: NAME=ADDR,ADDR… (repeat).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Where its webhooks go.
        #[arg(long)]
        webhook_url: Option<String>,
    },
    /// List accounts.
    List,
    /// Show one account.
    Show {
        /// Its name.
        name: String,
    },
    /// Change an account.
    Update {
        /// Its name.
        name: String,
        /// New display name.
        #[arg(long)]
        display_name: Option<String>,
        /// A sender to add (repeat).
        #[arg(long = "add-sender")]
        add_senders: Vec<String>,
        /// A sender to remove, also from its pools (repeat).
        #[arg(long = "remove-sender")]
        remove_senders: Vec<String>,
        /// Set a pool: NAME=ADDR,ADDR… (repeat).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Remove a pool (repeat).
        #[arg(long = "remove-pool")]
        remove_pools: Vec<String>,
        /// Webhook URL (`none` removes it).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Make a new webhook signing secret (printed once).
        #[arg(long)]
        rotate_webhook_secret: bool,
        /// Requests per second across its keys (0 = unlimited).
        #[arg(long)]
        rate: Option<u32>,
        /// Segments per UTC day across its keys (0 = unlimited).
        #[arg(long)]
        daily_quota: Option<u64>,
        /// Its share of the queue, percent of `queue.max_depth` (0 = unlimited).
        #[arg(long)]
        queue_share: Option<u8>,
        /// Only its own senders (true), or also any address no account owns (false).
        #[arg(long)]
        restrict_senders: Option<bool>,
        /// Its own reply to an opt-out (STOP); `""` returns to the configured text.
        #[arg(long)]
        optout_reply: Option<String>,
        /// Its own reply to an opt-in (START); `""` returns to the configured text.
        #[arg(long)]
        optin_reply: Option<String>,
        /// Its own reply to HELP; `""` returns to the configured text.
        #[arg(long)]
        help_reply: Option<String>,
        /// Enable a disabled account.
        #[arg(long)]
        enable: bool,
    },
    /// Disable an account: its keys are refused; its data stays.
    Disable {
        /// Its name.
        name: String,
    },
}

fn pools(specs: &[String]) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    specs
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, list)) => Ok((name.to_string(), list.split(',').map(|a| a.trim().to_string()).collect())),
            None => bail!("--pool {s}: use NAME=ADDR,ADDR…"),
        })
        .collect()
}

/// Runs an `accounts` action.
pub async fn run(action: AccountsCommand, config: &Config) -> Result<()> {
    let request = match action {
        AccountsCommand::Create { name, display_name, senders, pools: p, webhook_url } => {
            AdminRequest::AccountsCreate {
                account: NewAccount { name, display_name, senders, pools: pools(&p)?, webhook_url },
            }
        }
        AccountsCommand::List => AdminRequest::AccountsList,
        AccountsCommand::Show { name } => AdminRequest::AccountsShow { name },
        AccountsCommand::Disable { name } => AdminRequest::AccountsUpdate {
            name,
            changes: AccountChanges { disabled: Some(true), ..Default::default() },
        },
        AccountsCommand::Update {
            name,
            display_name,
            add_senders,
            remove_senders,
            pools: p,
            remove_pools,
            webhook_url,
            rotate_webhook_secret,
            rate,
            daily_quota,
            queue_share,
            restrict_senders,
            optout_reply,
            optin_reply,
            help_reply,
            enable,
        } => AdminRequest::AccountsUpdate {
            name,
            changes: AccountChanges {
                display_name,
                add_senders,
                remove_senders,
                pools: pools(&p)?,
                remove_pools,
                webhook_url: webhook_url.map(|u| if u == "none" { String::new() } else { u }),
                rotate_webhook_secret,
                rate_per_sec: rate,
                daily_segments: daily_quota,
                queue_share,
                any_sender: restrict_senders.map(|r| !r),
                replies: (optout_reply.is_some() || optin_reply.is_some() || help_reply.is_some())
                    .then_some(crate::accounts::Replies { optout: optout_reply, optin: optin_reply, help: help_reply }),
                disabled: enable.then_some(false),
            },
        },
    };
    match super::admin_call(config, request).await? {
        AdminResponse::Account { account, webhook_secret } => {
            print_account(&account);
            if let Some(s) = webhook_secret {
                println!("webhook secret: {s}");
                eprintln!("The webhook secret is shown only this once; its receivers verify signatures with it.");
            }
        }
        AdminResponse::Accounts { accounts } => {
            println!("{:<20} {:<9} {:<8} display name", "name", "state", "senders");
            for a in accounts {
                let state = if a.disabled { "disabled" } else { "active" };
                println!("{:<20} {:<9} {:<8} {}", a.name, state, a.senders.len(), a.display_name);
            }
        }
        AdminResponse::Error { message } => bail!(message),
        other => bail!("unexpected answer: {other:?}"),
    }
    Ok(())
}

fn print_account(a: &AccountView) {
    println!("name:          {}", a.name);
    println!("display name:  {}", a.display_name);
    println!("state:         {}", if a.disabled { "disabled" } else { "active" });
    println!("senders:       {}", if a.senders.is_empty() { "-".into() } else { a.senders.join(", ") });
    for (pool, members) in &a.pools {
        println!("pool {pool}: {}", members.join(", "));
    }
    if a.any_sender {
        println!("also sends from any address no account owns (restrict with --restrict-senders true)");
    }
    println!("webhook URL:   {}", a.webhook_url.as_deref().unwrap_or("-"));
    let rate = a.rate_per_sec.map(|r| format!("{r} req/s")).unwrap_or_else(|| "no rate limit".into());
    let quota = a.daily_segments.map(|d| format!("{d} seg/day")).unwrap_or_else(|| "no quota".into());
    let share = a.queue_share.map(|q| format!("{q} % of the queue")).unwrap_or_else(|| "any share of the queue".into());
    println!("limits:        {rate}, {quota}, {share}");
}
