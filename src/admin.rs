//! The local admin socket (`<data_dir>/admin.sock`, mode 0600): lets `smsgate keys …` work
//! while the server runs, since sled allows one process per store. File permissions are the
//! authentication: whoever can open the socket can already read the data directory.
//!
//! Protocol: one JSON request line, one JSON answer line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::accounts::admin::{AccountAdmin, AccountChanges, NewAccount};
use crate::accounts::{AccountView, Accounts};
use crate::audit::{Audit, Event};
use crate::auth::{ApiKey, KeyAdmin, KeyRing, Scope};
use crate::config::Config;
use crate::store::{Store, StoreError};

/// What admin requests act on.
#[derive(Clone)]
pub struct AdminCtx {
    /// The store.
    pub store: Store,
    /// API keys.
    pub ring: Arc<KeyRing>,
    /// Accounts.
    pub accounts: Arc<Accounts>,
    /// The audit trail.
    pub audit: Audit,
    /// The configuration.
    pub config: Arc<Config>,
}

/// A request over the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Create an API key.
    KeysCreate {
        /// Its account (absent: `default`).
        #[serde(default)]
        account: Option<String>,
        /// Label.
        name: String,
        /// Scopes.
        scopes: Vec<Scope>,
        /// Requests per second (0 or absent = unlimited).
        #[serde(default)]
        rate_per_sec: Option<u32>,
        /// Segments per UTC day (0 or absent = unlimited).
        #[serde(default)]
        daily_segments: Option<u64>,
    },
    /// Change a key's limits.
    KeysSetLimits {
        /// Key id.
        id: String,
        /// Requests per second (0 = unlimited, absent = unchanged).
        rate_per_sec: Option<u32>,
        /// Segments per UTC day (0 = unlimited, absent = unchanged).
        daily_segments: Option<u64>,
    },
    /// List keys.
    KeysList,
    /// Revoke a key.
    KeysRevoke {
        /// Key id.
        id: String,
    },
    /// Change a key's content-rule action and webhook settings.
    KeysSetPolicy {
        /// Key id.
        id: String,
        /// `reject`, `flag`, or `default` (the configured action).
        content_action: Option<String>,
        /// Default webhook URL (`none` removes it).
        webhook_url: Option<String>,
        /// Whether webhooks may carry the body.
        webhook_include_body: Option<bool>,
    },
    /// Re-read the key file, switch to its newest data key, and re-seal everything stored.
    RotateDataKey,
    /// Every opt-out, numbers in clear, for CSV export.
    OptOutsExport,
    /// A consistent backup of the store and the audit log, written by the server to `out`.
    Backup {
        /// Output path (on the server's file system).
        out: PathBuf,
    },
    /// Record opt-outs (from a CSV import).
    OptOutsImport {
        /// (number, scope) pairs; scope `global` or a sender id.
        rows: Vec<(String, String)>,
    },
    /// Records set aside because they could not be decoded.
    QuarantineList,
    /// Create an account.
    AccountsCreate {
        /// What to create.
        account: NewAccount,
    },
    /// List accounts.
    AccountsList,
    /// One account.
    AccountsShow {
        /// Its name.
        name: String,
    },
    /// Change an account (also: disable it).
    AccountsUpdate {
        /// Its name.
        name: String,
        /// What changes.
        changes: AccountChanges,
    },
    /// An account's messages created in a time range, as CSV rows.
    MessagesExport {
        /// The account.
        account: String,
        /// Created at or after (ms).
        since_ms: Option<u64>,
        /// Created at or before (ms).
        until_ms: Option<u64>,
        /// Numbers in clear (audited) instead of masked.
        unmask: bool,
    },
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// A key was created; the token is shown once.
    Created {
        /// The key record.
        key: ApiKey,
        /// The token.
        token: String,
    },
    /// Keys.
    Keys {
        /// Every key.
        keys: Vec<ApiKey>,
    },
    /// A backup was written.
    BackedUp {
        /// Records in it.
        records: u64,
    },
    /// The new data key's id.
    Rotated {
        /// Key id now sealing new data.
        key_id: String,
    },
    /// Opt-out rows: number, scope, source, keyword, rule, recorded_by, at.
    OptOuts {
        /// Rows.
        rows: Vec<Vec<String>>,
    },
    /// Import result.
    Imported {
        /// Rows recorded.
        recorded: usize,
        /// Rows refused (bad number), with their line.
        refused: Vec<String>,
    },
    /// A key's limits changed.
    Updated {
        /// The key record.
        key: ApiKey,
    },
    /// A key was revoked.
    Revoked {
        /// The key record.
        key: ApiKey,
    },
    /// An account, and its webhook signing secret when it was just made (shown once).
    Account {
        /// The account.
        account: AccountView,
        /// Its new webhook secret.
        webhook_secret: Option<String>,
    },
    /// Accounts.
    Accounts {
        /// Every account.
        accounts: Vec<AccountView>,
    },
    /// Message rows: id, created_at, status, to, from, client_ref, category, segments,
    /// carrier, error.
    Messages {
        /// Rows, newest first.
        rows: Vec<Vec<String>>,
    },
    /// Records set aside.
    Quarantined {
        /// Each with its original key, reason and time.
        entries: Vec<crate::store::Quarantined>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Path of the socket for a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Executes a request against an open store (server side, or the CLI when no server runs),
/// and records it in the audit trail.
pub async fn execute(ctx: &AdminCtx, actor: &str, req: AdminRequest) -> AdminResponse {
    let action = op_name(&req);
    let target = match &req {
        AdminRequest::KeysSetLimits { id, .. }
        | AdminRequest::KeysRevoke { id }
        | AdminRequest::KeysSetPolicy { id, .. } => id.clone(),
        AdminRequest::AccountsShow { name } | AdminRequest::AccountsUpdate { name, .. } => format!("account:{name}"),
        AdminRequest::AccountsCreate { account } => format!("account:{}", account.name),
        AdminRequest::MessagesExport { account, unmask: true, .. } => format!("account:{account} numbers:unmasked"),
        AdminRequest::MessagesExport { account, .. } => format!("account:{account} numbers:masked"),
        _ => String::new(),
    };
    let answer = run_request(ctx, req).await;
    let (target, outcome) = match &answer {
        AdminResponse::Created { key, .. } | AdminResponse::Updated { key } | AdminResponse::Revoked { key } => {
            (key.id.clone(), "ok".to_string())
        }
        AdminResponse::Error { message } => (target, format!("error: {message}")),
        AdminResponse::Rotated { key_id } => (key_id.clone(), "ok".to_string()),
        AdminResponse::BackedUp { records } => (target, format!("ok: {records} records")),
        AdminResponse::Imported { recorded, refused } => {
            (target, format!("recorded {recorded}, refused {}", refused.len()))
        }
        AdminResponse::Keys { .. }
        | AdminResponse::OptOuts { .. }
        | AdminResponse::Quarantined { .. }
        | AdminResponse::Account { .. }
        | AdminResponse::Accounts { .. } => (target, "ok".to_string()),
        AdminResponse::Messages { rows } => (target, format!("ok: {} messages", rows.len())),
    };
    ctx.audit.record(Event::new(format!("cli:{actor}"), format!("admin.{action}"), target, outcome));
    answer
}

/// Account requests.
async fn accounts_request(ctx: &AdminCtx, req: AdminRequest) -> AdminResponse {
    let admin = AccountAdmin { store: &ctx.store, accounts: &ctx.accounts };
    let policy = ctx.config.webhooks.policy().unwrap_or_default();
    let answer = match req {
        AdminRequest::AccountsCreate { account } => admin
            .create(account, &policy)
            .await
            .map(|(a, secret)| AdminResponse::Account { account: (&a).into(), webhook_secret: Some(secret) }),
        AdminRequest::AccountsUpdate { name, changes } => admin
            .update(&name, changes, &policy)
            .await
            .map(|(a, secret)| AdminResponse::Account { account: (&a).into(), webhook_secret: secret }),
        AdminRequest::AccountsShow { name } => ctx
            .accounts
            .get(&name)
            .map(|a| AdminResponse::Account { account: a.as_ref().into(), webhook_secret: None })
            .ok_or(crate::accounts::AccountError::NotFound(name)),
        _ => Ok(AdminResponse::Accounts {
            accounts: ctx.accounts.list().iter().map(|a| AccountView::from(a.as_ref())).collect(),
        }),
    };
    answer.unwrap_or_else(|e| AdminResponse::Error { message: e.to_string() })
}

async fn run_request(ctx: &AdminCtx, req: AdminRequest) -> AdminResponse {
    let (store, ring, config) = (&ctx.store, ctx.ring.as_ref(), ctx.config.as_ref());
    match req {
        AdminRequest::AccountsCreate { .. }
        | AdminRequest::AccountsList
        | AdminRequest::AccountsShow { .. }
        | AdminRequest::AccountsUpdate { .. } => return accounts_request(ctx, req).await,
        AdminRequest::RotateDataKey => return rotate(store, config).await,
        AdminRequest::MessagesExport { account, since_ms, until_ms, unmask } => {
            if ctx.accounts.get(&account).is_none() {
                return AdminResponse::Error { message: format!("no account named '{account}'") };
            }
            let query = crate::search::Query { account, since_ms, until_ms, ..Default::default() };
            return match export(store, &query, unmask) {
                Ok(rows) => AdminResponse::Messages { rows },
                Err(e) => AdminResponse::Error { message: e.to_string() },
            };
        }
        AdminRequest::QuarantineList => {
            return match store.quarantined() {
                Ok(entries) => AdminResponse::Quarantined { entries },
                Err(e) => AdminResponse::Error { message: e.to_string() },
            };
        }
        AdminRequest::OptOutsExport => {
            return match crate::compliance::registry::list_optouts(store) {
                Ok(list) => AdminResponse::OptOuts {
                    rows: list
                        .into_iter()
                        .map(|(n, e)| {
                            let scope =
                                if e.scope == crate::compliance::registry::GLOBAL { "global".into() } else { e.scope };
                            vec![
                                n,
                                scope,
                                e.source,
                                e.keyword.unwrap_or_default(),
                                e.rule.unwrap_or_default(),
                                e.actor,
                                crate::message::rfc3339(e.at_ms),
                            ]
                        })
                        .collect(),
                },
                Err(e) => AdminResponse::Error { message: e.to_string() },
            };
        }
        AdminRequest::OptOutsImport { rows } => return import(store, rows).await,
        AdminRequest::Backup { out } => {
            // Every file of the audit chain, under its name.
            let files = match crate::audit::chain::files(&config.data_dir) {
                Ok(f) => f,
                Err(e) => return AdminResponse::Error { message: format!("listing the audit files: {e}") },
            };
            let files = files
                .into_iter()
                .filter_map(|p| Some((format!("audit/{}", p.file_name()?.to_string_lossy()), p)))
                .collect();
            return match store.backup(&out, files).await {
                Ok(records) => AdminResponse::BackedUp { records },
                Err(e) => AdminResponse::Error { message: e.to_string() },
            };
        }
        _ => {}
    }
    let admin = KeyAdmin { store, ring };
    let result = match req {
        AdminRequest::KeysCreate { account, name, scopes, rate_per_sec, daily_segments } => {
            let account = account.unwrap_or_else(|| crate::accounts::DEFAULT.to_string());
            if ctx.accounts.get(&account).is_none() {
                return AdminResponse::Error {
                    message: format!("no account named '{account}' (smsgate accounts list)"),
                };
            }
            match admin.create(&account, &name, scopes).await {
                Ok((key, token)) if rate_per_sec.is_some() || daily_segments.is_some() => admin
                    .set_limits(&key.id, rate_per_sec, daily_segments)
                    .await
                    .map(|key| AdminResponse::Created { key, token }),
                other => other.map(|(key, token)| AdminResponse::Created { key, token }),
            }
        }
        AdminRequest::KeysSetLimits { id, rate_per_sec, daily_segments } => {
            admin.set_limits(&id, rate_per_sec, daily_segments).await.map(|key| AdminResponse::Updated { key })
        }
        AdminRequest::KeysList => Ok(AdminResponse::Keys { keys: ring.list() }),
        AdminRequest::KeysSetPolicy { id, content_action, webhook_url, webhook_include_body } => admin
            .set_policy(
                &id,
                content_action.as_deref(),
                webhook_url.as_deref(),
                webhook_include_body,
                &config.webhooks.policy().unwrap_or_default(),
            )
            .await
            .map(|key| AdminResponse::Updated { key }),
        AdminRequest::RotateDataKey
        | AdminRequest::OptOutsExport
        | AdminRequest::QuarantineList
        | AdminRequest::OptOutsImport { .. }
        | AdminRequest::Backup { .. }
        | AdminRequest::AccountsCreate { .. }
        | AdminRequest::AccountsList
        | AdminRequest::AccountsShow { .. }
        | AdminRequest::AccountsUpdate { .. }
        | AdminRequest::MessagesExport { .. } => Err(crate::auth::KeyAdminError::Invalid("handled above".into())),
        AdminRequest::KeysRevoke { id } => admin.revoke(&id).await.map(|key| AdminResponse::Revoked { key }),
    };
    result.unwrap_or_else(|e| AdminResponse::Error { message: e.to_string() })
}

/// Re-reads the key file (the CLI has appended a data key to it: the service itself only
/// reads the file), switches the store to its newest data key and re-seals.
async fn rotate(store: &Store, config: &Config) -> AdminResponse {
    let Some(path) = config.crypto.key_file.as_ref() else {
        return AdminResponse::Error {
            message: "keys come from an environment variable: add a key line there and restart".into(),
        };
    };
    let loaded = crate::crypto::Crypto::from_file(path).map_err(|e| e.to_string());
    let key_id = loaded.as_ref().map(|c| c.current_key().to_string()).unwrap_or_default();
    let adopted = match loaded {
        Ok(crypto) => store.set_crypto(crypto).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match adopted {
        Ok(()) => {
            // Re-seal now rather than at the next hourly pass.
            match crate::maintenance::pass(store, &config.retention, crate::message::now_ms()).await {
                Ok(r) => info!(resealed = r.resealed, "re-sealed under the new data key"),
                Err(e) => tracing::warn!(error = %e, "re-sealing failed; the next maintenance pass retries"),
            }
            AdminResponse::Rotated { key_id }
        }
        Err(message) => AdminResponse::Error { message },
    }
}

async fn import(store: &Store, rows: Vec<(String, String)>) -> AdminResponse {
    let crypto = store.crypto();
    let now = crate::message::now_ms();
    let mut ops = Vec::new();
    let mut refused = Vec::new();
    for (i, (number, scope)) in rows.iter().enumerate() {
        let Ok(n) = crate::phone::E164::normalize(number) else {
            refused.push(format!("row {}: not a valid E.164 number", i + 1));
            continue;
        };
        let scope = match scope.trim() {
            "" | "global" => crate::compliance::registry::GLOBAL.to_string(),
            s => s.to_string(),
        };
        match crate::compliance::registry::optout_op(
            &crypto,
            n.as_str(),
            &scope,
            "import",
            None,
            None,
            ("cli", None),
            now,
            true,
        ) {
            Ok((op, _)) => ops.push(op),
            Err(e) => return AdminResponse::Error { message: e.to_string() },
        }
    }
    let recorded = ops.len();
    for chunk in ops.chunks(1000) {
        if let Err(e) = store.commit(chunk.to_vec()).await {
            return AdminResponse::Error { message: e.to_string() };
        }
    }
    AdminResponse::Imported { recorded, refused }
}

/// Starts the socket server.
pub fn serve(ctx: AdminCtx, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    let path = socket_path(&ctx.config.data_dir);
    tokio::spawn(async move {
        let _ = std::fs::remove_file(&path);
        let listener = match UnixListener::bind(&path) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, path = %path.display(), "admin socket unavailable; key commands need the server stopped");
                return;
            }
        };
        // The data directory (0700) already keeps others out; the socket's own mode must hold
        // too, or it is not offered at all.
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
                tracing::error!(error = %e, path = %path.display(), "cannot make the admin socket private; not serving it");
                let _ = std::fs::remove_file(&path);
                return;
            }
        }
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                _ = shutdown.changed() => break,
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(r).take_line_limit();
                let answer = match reader.read_line(&mut line).await {
                    Ok(_) => match serde_json::from_str::<AdminRequest>(&line) {
                        Ok(req) => {
                            info!(op = op_name(&req), "admin request");
                            execute(&ctx, "admin-socket", req).await
                        }
                        Err(e) => AdminResponse::Error { message: format!("bad request: {e}") },
                    },
                    Err(e) => AdminResponse::Error { message: e.to_string() },
                };
                let mut out = serde_json::to_vec(&answer).unwrap_or_default();
                out.push(b'\n');
                let _ = w.write_all(&out).await;
            });
        }
        let _ = std::fs::remove_file(&path);
    })
}

fn op_name(req: &AdminRequest) -> &'static str {
    match req {
        AdminRequest::KeysCreate { .. } => "keys_create",
        AdminRequest::KeysSetLimits { .. } => "keys_set_limits",
        AdminRequest::KeysSetPolicy { .. } => "keys_set_policy",
        AdminRequest::RotateDataKey => "rotate_data_key",
        AdminRequest::OptOutsExport => "optouts_export",
        AdminRequest::OptOutsImport { .. } => "optouts_import",
        AdminRequest::Backup { .. } => "backup",
        AdminRequest::KeysList => "keys_list",
        AdminRequest::KeysRevoke { .. } => "keys_revoke",
        AdminRequest::QuarantineList => "quarantine_list",
        AdminRequest::AccountsCreate { .. } => "accounts_create",
        AdminRequest::AccountsList => "accounts_list",
        AdminRequest::AccountsShow { .. } => "accounts_show",
        AdminRequest::AccountsUpdate { .. } => "accounts_update",
        AdminRequest::MessagesExport { .. } => "messages_export",
    }
}

/// Every message `query` finds, as CSV rows; numbers masked unless `unmask`.
fn export(store: &Store, query: &crate::search::Query, unmask: bool) -> Result<Vec<Vec<String>>, StoreError> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = crate::search::messages(store, query, cursor.as_deref(), 1000)?;
        for m in &page.messages {
            let to = if unmask { m.content.to.clone() } else { crate::phone::mask(&m.content.to) };
            rows.push(vec![
                m.id.clone(),
                crate::message::rfc3339(m.created_ms),
                m.status.as_str().to_string(),
                to,
                m.content.from.clone().unwrap_or_default(),
                m.client_ref.clone().unwrap_or_default(),
                m.category.clone().unwrap_or_default(),
                m.segments.to_string(),
                m.carrier.clone().unwrap_or_default(),
                m.error.as_ref().map(|e| e.code.clone()).unwrap_or_default(),
            ]);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(rows),
        }
    }
}

trait TakeLineLimit: Sized {
    fn take_line_limit(self) -> tokio::io::Take<Self>;
}

impl<R: tokio::io::AsyncRead> TakeLineLimit for BufReader<R> {
    /// Admin requests are tiny; refuse to buffer more than 64 KiB.
    fn take_line_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 64 * 1024)
    }
}

/// Sends a request to a running server. `Ok(None)` when no server listens on the socket.
pub async fn request(data_dir: &Path, req: &AdminRequest) -> std::io::Result<Option<AdminResponse>> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    serde_json::from_str(&answer).map(Some).map_err(std::io::Error::other)
}
