//! Configuration: TOML → typed structs (`deny_unknown_fields` everywhere) → [`Config::validate`],
//! which collects every problem at once with the key path, so `check-config` can list them all.
//!
//! Relative paths in the file are resolved against the directory of the config file itself, so
//! `smsgate serve --config /etc/smsgate/smsgate.toml` behaves the same from any working
//! directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration that could not be loaded or is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// File that was asked for.
        path: PathBuf,
        /// What the OS said.
        reason: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key; the message carries line and column.
    #[error("{path}: {message}")]
    Parse {
        /// File that failed.
        path: PathBuf,
        /// The parser's explanation, with the line it points at.
        message: String,
    },
    /// The file parsed, but some values are not acceptable; each entry names its key.
    #[error("{path}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// File that failed.
        path: PathBuf,
        /// One sentence per problem, starting with the key path.
        problems: Vec<String>,
    },
}

/// A secret from the config: never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file as written (for telling which keys a reload changed).
    #[serde(skip)]
    pub raw: toml::Table,
    /// Directory of the sled store and the audit log.
    pub data_dir: PathBuf,
    /// The HTTPS API listener.
    pub api: ApiConfig,
    /// The Prometheus listener.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Store tuning.
    #[serde(default)]
    pub store: StoreConfig,
    /// Dispatch and retry policy.
    #[serde(default)]
    pub dispatch: DispatchConfig,
    /// Backpressure limits.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Where the data keys come from (encryption at rest).
    pub crypto: CryptoConfig,
    /// Opt-outs, consent, quiet hours, frequency caps, content rules.
    #[serde(default)]
    pub compliance: ComplianceConfig,
    /// Retention of bodies, inbound texts and metadata.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Signed webhooks.
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// `[inbound]`: long inbound texts.
    #[serde(default)]
    pub inbound: InboundConfig,
    /// Graceful shutdown deadlines.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The audit trail's files.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Carriers (SMSCs) to submit to.
    #[serde(default)]
    pub carriers: Vec<CarrierConfig>,
    /// Destination prefix → carriers. Empty means one catch-all route over every carrier.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `[api]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain; required unless `plaintext = true`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (only behind a TLS-terminating proxy).
    #[serde(default)]
    pub plaintext: bool,
    /// Required as well as `plaintext` when `listen` is not a loopback address.
    #[serde(default)]
    pub allow_plaintext_behind_proxy: bool,
    /// Longest accepted message body, in characters.
    #[serde(default = "default_max_body_chars")]
    pub max_body_chars: usize,
    /// Open connections at most; one more is closed at once (and counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds for the TLS handshake and each request's header (also the longest an idle
    /// HTTP/1.1 keep-alive connection stays open).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds for a request's whole body.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
    /// An HTTP/2 connection with no request and no traffic for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds between HTTP/2 keep-alive pings.
    #[serde(default = "default_http2_keepalive")]
    pub http2_keepalive_secs: u64,
    /// MiB of request bodies held at once across all connections; more waits.
    #[serde(default = "default_body_budget_mb")]
    pub body_budget_mb: usize,
}

fn default_max_body_chars() -> usize {
    1600
}
fn default_max_connections() -> usize {
    4096
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_body_read_timeout() -> u64 {
    30
}
fn default_idle_timeout() -> u64 {
    120
}
fn default_http2_keepalive() -> u64 {
    30
}
fn default_body_budget_mb() -> usize {
    64
}

impl ApiConfig {
    /// The connection and body limits these settings make.
    pub fn limits(&self) -> crate::api::edge::Limits {
        crate::api::edge::Limits {
            header_read: Duration::from_secs(self.header_read_timeout_secs),
            body_read: Duration::from_secs(self.body_read_timeout_secs),
            idle: Duration::from_secs(self.idle_timeout_secs),
            h2_keepalive: Duration::from_secs(self.http2_keepalive_secs),
            max_connections: self.max_connections,
            body_budget: self.body_budget_mb << 20,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP listener for `/metrics`; loopback by default.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
    /// Needed to serve the plain-HTTP metrics listener on a non-loopback address.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// How many accounts get an `account` label of their own; the rest are `other`.
    #[serde(default = "default_max_account_labels")]
    pub max_account_labels: usize,
}

fn default_max_account_labels() -> usize {
    100
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
            allow_non_loopback: false,
            max_account_labels: default_max_account_labels(),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// sled page cache, in MiB.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    /// Most operations folded into one group commit.
    #[serde(default = "default_group_commit_max")]
    pub group_commit_max: usize,
}

fn default_cache_mb() -> u64 {
    256
}
fn default_group_commit_max() -> usize {
    2048
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { cache_mb: default_cache_mb(), group_commit_max: default_group_commit_max() }
    }
}

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    /// Submission attempts before a message fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest retry delay.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Validity when a message does not set `validity_seconds`.
    #[serde(default = "default_validity_secs")]
    pub default_validity_secs: u64,
}

fn default_max_attempts() -> u32 {
    10
}
fn default_retry_base_ms() -> u64 {
    1_000
}
fn default_retry_max_ms() -> u64 {
    300_000
}
fn default_validity_secs() -> u64 {
    48 * 3600
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_attempts: default_max_attempts(),
            retry_base_ms: default_retry_base_ms(),
            retry_max_ms: default_retry_max_ms(),
            default_validity_secs: default_validity_secs(),
        }
    }
}

/// `[compliance]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComplianceConfig {
    /// `global` (an opt-out blocks every sender of every account), `account` (every sender of
    /// the account that owns the address texted) or `sender` (only the sender texted).
    #[serde(default)]
    pub optout_scope: OptOutScope,
    /// Accept only numbers with a recorded opt-in.
    #[serde(default)]
    pub require_consent: bool,
    /// Opt-out keywords (whole message, after trimming, case-folding, dropping punctuation).
    #[serde(default = "default_optout_keywords")]
    pub optout_keywords: Vec<String>,
    /// Opt-in keywords.
    #[serde(default = "default_optin_keywords")]
    pub optin_keywords: Vec<String>,
    /// Help keywords.
    #[serde(default = "default_help_keywords")]
    pub help_keywords: Vec<String>,
    /// A message of at most this many words containing an opt-out keyword is an opt-out
    /// (FCC 2024: any reasonable means); 0 turns the rule off.
    #[serde(default = "default_reasonable_words")]
    pub reasonable_optout_max_words: usize,
    /// Confirmation sent once after an opt-out. `{sender}` is replaced by the sender id.
    #[serde(default = "default_optout_reply")]
    pub optout_reply: String,
    /// Reply to an opt-in.
    #[serde(default = "default_optin_reply")]
    pub optin_reply: String,
    /// Reply to HELP.
    #[serde(default = "default_help_reply")]
    pub help_reply: String,
    /// At most one HELP reply and one START reply per number per this many seconds (a
    /// handset or a loop of autoresponders cannot make us send without end).
    #[serde(default = "default_help_interval", alias = "help_reply_interval_secs")]
    pub keyword_reply_interval_secs: u64,
    /// Quiet hours in the recipient's local time.
    pub quiet_hours: Option<QuietHoursConfig>,
    /// Per-category frequency and length policies (FCC 15-72 healthcare exemption).
    #[serde(default)]
    pub category_policies: Vec<CategoryPolicy>,
    /// PHI content rules.
    #[serde(default)]
    pub content: ContentConfig,
}

/// How far an opt-out reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptOutScope {
    /// Every sender.
    #[default]
    Global,
    /// Every sender of the account that owns the address the STOP was sent to.
    Account,
    /// The sender id the STOP was sent to.
    Sender,
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
fn default_optout_keywords() -> Vec<String> {
    words(&["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT", "STOP ALL"])
}
fn default_optin_keywords() -> Vec<String> {
    words(&["START", "UNSTOP", "YES"])
}
fn default_help_keywords() -> Vec<String> {
    words(&["HELP", "INFO"])
}
fn default_reasonable_words() -> usize {
    4
}
fn default_optout_reply() -> String {
    "You have been unsubscribed and will receive no more messages from {sender}. Reply START to resubscribe.".into()
}
fn default_optin_reply() -> String {
    "You are subscribed again to messages from {sender}. Reply STOP to unsubscribe, HELP for help.".into()
}
fn default_help_reply() -> String {
    "{sender}: appointment and care messages. Msg&data rates may apply. Reply STOP to unsubscribe.".into()
}
fn default_help_interval() -> u64 {
    3600
}

impl Default for ComplianceConfig {
    fn default() -> Self {
        ComplianceConfig {
            optout_scope: OptOutScope::Global,
            require_consent: false,
            optout_keywords: default_optout_keywords(),
            optin_keywords: default_optin_keywords(),
            help_keywords: default_help_keywords(),
            reasonable_optout_max_words: default_reasonable_words(),
            optout_reply: default_optout_reply(),
            optin_reply: default_optin_reply(),
            help_reply: default_help_reply(),
            keyword_reply_interval_secs: default_help_interval(),
            quiet_hours: None,
            category_policies: Vec::new(),
            content: ContentConfig::default(),
        }
    }
}

/// `[compliance.quiet_hours]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    /// Start of the quiet window, `HH:MM` local time.
    pub start: String,
    /// End of the quiet window, `HH:MM` local time (may be before `start`: overnight).
    pub end: String,
    /// Zone when neither the message nor the number fixes one.
    pub default_timezone: String,
}

/// `[[compliance.category_policies]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryPolicy {
    /// The category it applies to.
    pub category: String,
    /// Messages per recipient per local day.
    pub max_per_day: Option<u32>,
    /// Messages per recipient over the last 7 local days.
    pub max_per_week: Option<u32>,
    /// Longest body, in characters.
    pub max_chars: Option<usize>,
}

/// `[compliance.content]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    /// What a match does: `reject` (422) or `flag` (accept, count, audit).
    #[serde(default)]
    pub action: ContentAction,
    /// Detect US Social Security numbers.
    #[serde(default = "default_true")]
    pub ssn: bool,
    /// Detect dates of birth next to identifying words.
    #[serde(default = "default_true")]
    pub dob: bool,
    /// Medical record number patterns (regular expressions).
    #[serde(default)]
    pub mrn_patterns: Vec<String>,
    /// Clinical terms that must not appear (whole words, any case).
    #[serde(default)]
    pub deny_terms: Vec<String>,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            action: ContentAction::Reject,
            ssn: true,
            dob: true,
            mrn_patterns: Vec::new(),
            deny_terms: Vec::new(),
        }
    }
}

/// What a content rule match does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentAction {
    /// Refuse the message (422 `content_policy_violation`).
    #[default]
    Reject,
    /// Accept it, count it, audit it.
    Flag,
}

/// `[shutdown]`: how long SIGTERM waits for in-flight work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Upper bound on the whole shutdown.
    #[serde(default = "default_shutdown_timeout")]
    pub timeout_secs: u64,
    /// How long open HTTP requests may take to finish.
    #[serde(default = "default_http_drain")]
    pub http_drain_secs: u64,
    /// How long binds wait for outstanding `submit_sm_resp` before unbinding.
    #[serde(default = "default_submit_drain")]
    pub submit_drain_secs: u64,
}

fn default_shutdown_timeout() -> u64 {
    30
}
fn default_http_drain() -> u64 {
    10
}
fn default_submit_drain() -> u64 {
    5
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout_secs: default_shutdown_timeout(),
            http_drain_secs: default_http_drain(),
            submit_drain_secs: default_submit_drain(),
        }
    }
}

/// `[retention]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days after the final status before a message body is purged.
    #[serde(default = "default_body_days")]
    pub body_days: u64,
    /// Days before an inbound text is purged.
    #[serde(default = "default_body_days")]
    pub inbound_days: u64,
    /// Days metadata (status history, numbers sealed) is kept; 2190 = HIPAA's 6 years.
    #[serde(default = "default_metadata_days")]
    pub metadata_days: u64,
    /// Seconds between retention / re-sealing passes.
    #[serde(default = "default_sweep_interval")]
    pub sweep_interval_secs: u64,
}

fn default_sweep_interval() -> u64 {
    3600
}

fn default_body_days() -> u64 {
    30
}
fn default_metadata_days() -> u64 {
    2190
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            body_days: default_body_days(),
            inbound_days: default_body_days(),
            metadata_days: default_metadata_days(),
            sweep_interval_secs: default_sweep_interval(),
        }
    }
}

/// `[webhooks]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// File holding the HMAC-SHA256 signing secret.
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding it.
    pub secret_env: Option<String>,
    /// Where inbound texts are pushed.
    pub inbound_url: Option<String>,
    /// PEM CAs to trust for webhook receivers (else the Mozilla roots).
    pub ca_file: Option<PathBuf>,
    /// Networks (CIDR) or addresses a receiver may be at beyond the public internet:
    /// loopback, private, link-local (cloud metadata) addresses are refused unless listed.
    #[serde(default)]
    pub allow_networks: Vec<String>,
}

impl WebhooksConfig {
    /// The receiver address policy these settings make.
    pub fn policy(&self) -> Result<crate::webhooks::TargetPolicy, String> {
        crate::webhooks::TargetPolicy::new(&self.allow_networks)
    }

    /// The signing secret, if configured.
    pub fn secret(&self) -> Result<Option<Secret>, String> {
        match (&self.secret_file, &self.secret_env) {
            (Some(p), None) => std::fs::read_to_string(p)
                .map(|s| Some(Secret::new(s.trim())))
                .map_err(|e| format!("cannot read {}: {e}", p.display())),
            (None, Some(v)) => std::env::var(v).map(|s| Some(Secret::new(s))).map_err(|_| format!("{v} is not set")),
            (None, None) => Ok(None),
            _ => Err("set secret_file or secret_env, not both".into()),
        }
    }
}

/// `[inbound]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// How long the parts of a long inbound text wait for the rest; then what came is released
    /// as one text marked `incomplete`.
    #[serde(default = "default_reassembly_timeout_secs")]
    pub reassembly_timeout_secs: u64,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig { reassembly_timeout_secs: default_reassembly_timeout_secs() }
    }
}

fn default_reassembly_timeout_secs() -> u64 {
    120
}

/// `[crypto]`: the data keys (never in the store). Exactly one of the two.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoConfig {
    /// Key file: `<id> <64 hex>` per line, plus `index <64 hex>`; mode 0600, outside `data_dir`.
    pub key_file: Option<PathBuf>,
    /// Environment variable with the same content (`;` separates entries).
    pub key_env: Option<String>,
}

impl CryptoConfig {
    /// Loads the keys.
    pub fn load(&self) -> Result<crate::crypto::Crypto, String> {
        match (&self.key_file, &self.key_env) {
            (Some(path), None) => crate::crypto::Crypto::from_file(path).map_err(|e| e.to_string()),
            (None, Some(var)) => {
                let text = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
                crate::crypto::Crypto::parse(&text).map_err(|e| e.to_string())
            }
            _ => Err("set exactly one of key_file and key_env".into()),
        }
    }
}

/// `[queue]`: what accept refuses rather than store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Most messages waiting across all carriers (429 `queue_full` beyond).
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Most messages waiting for one carrier.
    #[serde(default = "default_max_depth_per_carrier")]
    pub max_depth_per_carrier: usize,
    /// Free space the data directory must keep (503 `store_unavailable` below it), MiB.
    #[serde(default = "default_min_free_disk_mb")]
    pub min_free_disk_mb: u64,
}

fn default_max_depth() -> usize {
    2_000_000
}
fn default_max_depth_per_carrier() -> usize {
    1_000_000
}
fn default_min_free_disk_mb() -> u64 {
    512
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_depth: default_max_depth(),
            max_depth_per_carrier: default_max_depth_per_carrier(),
            min_free_disk_mb: default_min_free_disk_mb(),
        }
    }
}

impl AuditConfig {
    /// How the log is kept, with the chain's key from `crypto`.
    pub fn options(&self, crypto: &crate::crypto::Crypto) -> crate::audit::Options {
        crate::audit::Options {
            key: crypto.audit_key(),
            rotate_bytes: self.rotate_mb << 20,
            refusal_window_ms: self.refusal_window_secs * 1000,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The current file is rotated (the chain goes on in a new one) at this size.
    #[serde(default = "default_audit_rotate_mb")]
    pub rotate_mb: u64,
    /// Requests without a valid key are recorded as one entry per source per this many
    /// seconds.
    #[serde(default = "default_refusal_window_secs")]
    pub refusal_window_secs: u64,
}

fn default_refusal_window_secs() -> u64 {
    60
}

fn default_audit_rotate_mb() -> u64 {
    64
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { rotate_mb: default_audit_rotate_mb(), refusal_window_secs: default_refusal_window_secs() }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter directives, e.g. `info,smsgate::smpp=debug`. `RUST_LOG` overrides.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: default_log_level(), format: LogFormat::Human }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[[carriers]]`: one SMSC and how to talk to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierConfig {
    /// Unique name; appears in metrics labels and message records.
    pub name: String,
    /// SMSC host name or address.
    pub host: String,
    /// SMSC port.
    pub port: u16,
    /// SMPP over TLS (default) or plain TCP.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// PEM bundle of CAs to trust instead of the built-in public roots.
    pub ca_file: Option<PathBuf>,
    /// Keys to trust (base64 SHA-256 of the SubjectPublicKeyInfo): a self-signed SMSC is
    /// trusted by its key alone; with `ca_file` the chain must verify too.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Name to verify in the SMSC certificate when it differs from `host`.
    pub server_name: Option<String>,
    /// Client certificate (PEM) for carriers that ask for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) for `client_cert`.
    pub client_key: Option<PathBuf>,
    /// SMPP `system_id`.
    pub system_id: String,
    /// Environment variable that holds the bind password.
    pub password_env: Option<String>,
    /// File that holds the bind password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// SMPP `system_type`.
    #[serde(default)]
    pub system_type: String,
    /// Sessions to keep bound.
    #[serde(default = "default_binds")]
    pub binds: usize,
    /// Outstanding `submit_sm` per bind.
    #[serde(default = "default_window")]
    pub window: usize,
    /// `submit_sm` per second across all binds; 0 = unlimited.
    #[serde(default)]
    pub rate: u32,
    /// Burst allowance for `rate`.
    #[serde(default)]
    pub burst: u32,
    /// Seconds between `enquire_link`s on an idle bind.
    #[serde(default = "default_enquire_link_secs")]
    pub enquire_link_secs: u64,
    /// Seconds to wait for any response before the bind is recycled.
    #[serde(default = "default_response_timeout_secs")]
    pub response_timeout_secs: u64,
    /// Sender used when a message has no `from`.
    pub default_source: Option<String>,
    /// ISO country (`US`, `GB`) the carrier's national number forms belong to: a handset
    /// address that arrives without the international marker (TON 0 or 2) is read in it
    /// before it is looked up in, or added to, the opt-out registry.
    pub country: Option<String>,
    /// Transceivers, or a transmitter + receiver pair per `binds`.
    #[serde(default)]
    pub bind_mode: BindModeConfig,
    /// Pause after ESME_RTHROTTLED / ESME_RMSGQFUL before sending again, ms.
    #[serde(default = "default_throttle_pause_ms")]
    pub throttle_pause_ms: u64,
    /// GSM 03.38 on the wire: one septet per octet (common) or packed.
    #[serde(default)]
    pub gsm7_packing: Gsm7Packing,
    /// data_coding for GSM 03.38 text (0 = SMSC default alphabet, the usual; some want 1 or 0xF0).
    #[serde(default)]
    pub gsm7_data_coding: u8,
    /// Send text outside GSM 03.38 that fits ISO-8859-1 as Latin-1 (data_coding 3) instead of UCS-2.
    #[serde(default)]
    pub latin1: bool,
    /// How concatenated messages are carried.
    #[serde(default)]
    pub long_messages: LongMessages,
    /// How this carrier writes message ids in submit_sm_resp.
    #[serde(default)]
    pub submit_id_format: crate::smpp::codec::receipt::IdFormat,
    /// How this carrier writes message ids in receipts.
    #[serde(default)]
    pub receipt_id_format: crate::smpp::codec::receipt::IdFormat,
    /// source_addr TON, instead of inferring it from the sender's form.
    pub source_ton: Option<u8>,
    /// source_addr NPI, instead of inferring it.
    pub source_npi: Option<u8>,
    /// Send validity_period (relative) from the message's validity.
    #[serde(default = "default_true")]
    pub send_validity: bool,
    /// Consecutive failed or unanswered submissions that open the circuit breaker (0 = never).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker keeps traffic away before trying the carrier again.
    #[serde(default = "default_breaker_cooldown_secs")]
    pub breaker_cooldown_secs: u64,
    /// How long a submitted message waits for its receipt before it becomes `unknown` (a late
    /// receipt still updates it). 72 hours, as AWS End User Messaging waits.
    #[serde(default = "default_receipt_timeout_secs")]
    pub receipt_timeout_secs: u64,
}

fn default_receipt_timeout_secs() -> u64 {
    72 * 3600
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_secs() -> u64 {
    30
}

/// `bind_mode`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindModeConfig {
    /// bind_transceiver sessions.
    #[default]
    Transceiver,
    /// A bind_transmitter and a bind_receiver per `binds`.
    Split,
}

/// `gsm7_packing`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gsm7Packing {
    /// One septet per octet.
    #[default]
    Unpacked,
    /// Eight septets in seven octets (3GPP TS 23.038 §6.1.2.1.1).
    Packed,
}

/// `long_messages`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongMessages {
    /// UDH concatenation, 8-bit reference (IEI 0x00).
    #[default]
    Udh8,
    /// UDH concatenation, 16-bit reference (IEI 0x08).
    Udh16,
    /// sar_msg_ref_num / sar_total_segments / sar_segment_seqnum TLVs.
    Sar,
    /// One submit_sm with the whole text in message_payload.
    Payload,
}

fn default_true() -> bool {
    true
}
fn default_binds() -> usize {
    1
}
fn default_window() -> usize {
    10
}
fn default_enquire_link_secs() -> u64 {
    30
}
fn default_response_timeout_secs() -> u64 {
    10
}
fn default_throttle_pause_ms() -> u64 {
    1000
}

impl CarrierConfig {
    /// Interval between keep-alives.
    pub fn enquire_link_interval(&self) -> Duration {
        Duration::from_secs(self.enquire_link_secs)
    }
    /// Longest wait for a response PDU.
    pub fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.response_timeout_secs)
    }

    /// Reads the bind password from the environment variable or file the config names.
    pub fn password(&self) -> Result<Secret, String> {
        let given = if let Some(var) = &self.password_env {
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
        } else if let Some(path) = &self.password_file {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        } else {
            return Ok(Secret::default());
        };
        // A variable or file that is there but empty is a mistake, not "no password": the
        // carrier would only answer the bind with 0x0d.
        if given.is_empty() {
            return Err("is configured but empty".into());
        }
        Ok(Secret::new(given))
    }
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// E.164 prefix, `+` for everything; the longest matching prefix wins.
    pub prefix: String,
    /// Carrier names in failover order.
    pub carriers: Vec<String>,
    /// Only messages with this `from`.
    pub sender: Option<String>,
    /// Only messages with this `category`.
    pub category: Option<String>,
}

/// What a config is loaded for: serving needs every secret; the admin verbs (keys, backup,
/// restore, audit, opt-out export/import) need only the store and its keys, so they work
/// without the carriers' passwords in the environment (a backup cron job, an operator's shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serve`, `demo`, `check-config`: everything.
    Serve,
    /// Admin verbs: no carrier passwords, no webhook secret.
    Admin,
}

impl Config {
    /// Reads, parses and validates a config file for serving.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_for(path, Purpose::Serve)
    }

    /// Reads, parses and validates a config file for an admin verb (see [`Purpose`]).
    pub fn load_admin(path: &Path) -> Result<Config, ConfigError> {
        Config::load_for(path, Purpose::Admin)
    }

    fn load_for(path: &Path, purpose: Purpose) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|reason| ConfigError::Read { path: path.to_path_buf(), reason })?;
        let (config, problems) = Config::parse_checked(&text, path, &Config::base_of(path), purpose)?;
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: path.to_path_buf(), problems }) }
    }

    /// The directory relative paths in the file at `path` are taken from, made absolute so
    /// that checks comparing paths (the key file outside `data_dir`) do not depend on how
    /// the file was named on the command line.
    pub fn base_of(path: &Path) -> PathBuf {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
    }

    /// Parses and validates TOML text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let (config, problems) = Config::from_toml_unchecked(text, path, base)?;
        if problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid { path: path.to_path_buf(), problems }) }
    }

    /// Parses (syntax and types must be right) and returns the config with its value problems,
    /// so that `check-config` can go on checking files and report everything in one pass.
    pub fn from_toml_unchecked(text: &str, path: &Path, base: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        Config::parse_checked(text, path, base, Purpose::Serve)
    }

    fn parse_checked(
        text: &str,
        path: &Path,
        base: &Path,
        purpose: Purpose,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.raw = toml::from_str(text).unwrap_or_default();
        config.resolve_paths(base);
        let problems = config.validate_for(purpose);
        Ok((config, problems))
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        self.crypto.key_file.as_mut().map(fix);
        self.webhooks.secret_file.as_mut().map(fix);
        self.webhooks.ca_file.as_mut().map(fix);
        self.api.tls_cert.as_mut().map(fix);
        self.api.tls_key.as_mut().map(fix);
        for c in &mut self.carriers {
            c.ca_file.as_mut().map(fix);
            c.client_cert.as_mut().map(fix);
            c.client_key.as_mut().map(fix);
            c.password_file.as_mut().map(fix);
        }
    }

    /// Every problem with the values, one sentence each, prefixed with the key path.
    pub fn validate(&self) -> Vec<String> {
        self.validate_for(Purpose::Serve)
    }

    /// [`Config::validate`], leaving out the secrets `purpose` does not use.
    pub fn validate_for(&self, purpose: Purpose) -> Vec<String> {
        let secrets = purpose == Purpose::Serve;
        let mut p = Vec::new();
        if !(1..=86_400).contains(&self.inbound.reassembly_timeout_secs) {
            p.push("inbound.reassembly_timeout_secs: between 1 and 86400".to_string());
        }
        let api = &self.api;
        match (&api.tls_cert, &api.tls_key, api.plaintext) {
            (Some(_), Some(_), false) => {}
            (None, None, true) => {
                if !api.listen.ip().is_loopback() && !api.allow_plaintext_behind_proxy {
                    p.push(format!(
                        "api.plaintext: plain HTTP on non-loopback address {} needs \
                         allow_plaintext_behind_proxy = true (and a TLS-terminating proxy in front)",
                        api.listen
                    ));
                }
            }
            (_, _, true) => p.push("api.plaintext: set either plaintext = true or tls_cert/tls_key, not both".into()),
            _ => {
                p.push("api.tls_cert and api.tls_key are both required (or plaintext = true behind a TLS proxy)".into())
            }
        }
        for (key, value) in [
            ("api.max_connections", api.max_connections as u64),
            ("api.header_read_timeout_secs", api.header_read_timeout_secs),
            ("api.body_read_timeout_secs", api.body_read_timeout_secs),
            ("api.idle_timeout_secs", api.idle_timeout_secs),
            ("api.http2_keepalive_secs", api.http2_keepalive_secs),
            ("api.body_budget_mb", api.body_budget_mb as u64),
        ] {
            if value == 0 {
                p.push(format!("{key}: must be at least 1"));
            }
        }
        if api.body_budget_mb > 4095 {
            p.push("api.body_budget_mb: at most 4095".into());
        }
        if let Err(e) = self.crypto.load() {
            p.push(format!("crypto: {e}"));
        }
        p.extend(self.validate_compliance());
        if secrets && let Err(e) = self.webhooks.secret() {
            p.push(format!("webhooks: {e}"));
        }
        if self.retention.metadata_days < self.retention.body_days {
            p.push("retention.metadata_days: must be at least body_days".into());
        }
        let sd = &self.shutdown;
        if sd.timeout_secs == 0 || sd.http_drain_secs > sd.timeout_secs || sd.submit_drain_secs > sd.timeout_secs {
            p.push(
                "shutdown: timeout_secs must be at least 1 and at least http_drain_secs and submit_drain_secs".into(),
            );
        }
        if self.retention.sweep_interval_secs == 0 {
            p.push("retention.sweep_interval_secs: at least 1".into());
        }
        if let Some(kf) = &self.crypto.key_file
            && kf.starts_with(&self.data_dir)
        {
            p.push("crypto.key_file: keep the data keys outside data_dir (they must not travel with the data)".into());
        }
        if !(1..=10_000).contains(&api.max_body_chars) {
            p.push("api.max_body_chars: must be between 1 and 10000".into());
        }
        if self.store.group_commit_max == 0 {
            p.push("store.group_commit_max: must be at least 1".into());
        }
        if self.dispatch.max_attempts == 0 {
            p.push("dispatch.max_attempts: must be at least 1".into());
        }
        if self.dispatch.retry_base_ms == 0 || self.dispatch.retry_max_ms < self.dispatch.retry_base_ms {
            p.push("dispatch.retry_base_ms/retry_max_ms: need 0 < retry_base_ms <= retry_max_ms".into());
        }
        if self.carriers.is_empty() {
            p.push("carriers: at least one [[carriers]] entry is needed".into());
        }
        let mut names = std::collections::HashSet::new();
        if !(1..=4096).contains(&self.audit.rotate_mb) {
            p.push("audit.rotate_mb: between 1 and 4096".into());
        }
        if !(1..=3600).contains(&self.audit.refusal_window_secs) {
            p.push("audit.refusal_window_secs: between 1 and 3600".into());
        }
        for (i, c) in self.carriers.iter().enumerate() {
            let at = format!("carriers[{i}] ({})", c.name);
            if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                p.push(format!("{at}.name: use letters, digits, '-' and '_' only"));
            }
            if !names.insert(c.name.as_str()) {
                p.push(format!("{at}.name: duplicate carrier name"));
            }
            if c.host.is_empty() {
                p.push(format!("{at}.host: must not be empty"));
            }
            for pin in &c.pin_sha256 {
                if let Err(e) = crate::tls::parse_pin(pin) {
                    p.push(format!("{at}.pin_sha256: {e}"));
                }
            }
            if !c.tls && !c.pin_sha256.is_empty() {
                p.push(format!("{at}.pin_sha256: only for tls = true"));
            }
            if let Some(country) = &c.country
                && country.parse::<phonenumber::country::Id>().is_err()
            {
                p.push(format!("{at}.country: '{country}' is not an ISO 3166 country code such as US or GB"));
            }
            if c.port == 0 {
                p.push(format!("{at}.port: must not be 0"));
            }
            if c.system_id.is_empty() || c.system_id.len() > 15 {
                p.push(format!("{at}.system_id: 1 to 15 characters (SMPP 3.4 §5.2.1)"));
            }
            if c.system_type.len() > 12 {
                p.push(format!("{at}.system_type: at most 12 characters"));
            }
            if c.password_env.is_some() && c.password_file.is_some() {
                p.push(format!("{at}: set password_env or password_file, not both"));
            }
            match c.password() {
                _ if !secrets => {}
                Ok(pw) if pw.expose().len() > 8 => {
                    p.push(format!("{at}: the bind password is longer than SMPP 3.4's 8 characters"))
                }
                Ok(_) => {}
                Err(e) => p.push(format!("{at}.password: {e}")),
            }
            if !(1..=64).contains(&c.binds) {
                p.push(format!("{at}.binds: between 1 and 64"));
            }
            if !(1..=30 * 24 * 3600).contains(&c.receipt_timeout_secs) {
                p.push(format!("{at}.receipt_timeout_secs: between 1 and 2592000 (30 days)"));
            }
            if !(1..=1000).contains(&c.window) {
                p.push(format!("{at}.window: between 1 and 1000"));
            }
            if c.enquire_link_secs == 0 || c.response_timeout_secs == 0 {
                p.push(format!("{at}: enquire_link_secs and response_timeout_secs must be at least 1"));
            }
            if !c.tls && (c.ca_file.is_some() || c.client_cert.is_some()) {
                p.push(format!("{at}: ca_file/client_cert need tls = true"));
            }
            if c.throttle_pause_ms > 600_000 {
                p.push(format!("{at}.throttle_pause_ms: at most 600000"));
            }
            if c.client_cert.is_some() != c.client_key.is_some() {
                p.push(format!("{at}: client_cert and client_key go together"));
            }
            for (key, file) in [("ca_file", &c.ca_file), ("client_cert", &c.client_cert), ("client_key", &c.client_key)]
            {
                if let Some(f) = file
                    && !f.is_file()
                {
                    p.push(format!("{at}.{key}: {} does not exist", f.display()));
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !r.prefix.starts_with('+') || !r.prefix[1..].bytes().all(|b| b.is_ascii_digit()) {
                p.push(format!("routes[{i}].prefix: '+' followed by digits, or '+' alone"));
            }
            if r.carriers.is_empty() {
                p.push(format!("routes[{i}].carriers: name at least one carrier"));
            }
            for name in &r.carriers {
                if !names.contains(name.as_str()) {
                    p.push(format!("routes[{i}].carriers: no carrier named '{name}'"));
                }
            }
        }
        p
    }

    fn validate_compliance(&self) -> Vec<String> {
        let mut p = Vec::new();
        let c = &self.compliance;
        if let Some(q) = &c.quiet_hours {
            for (k, v) in [("start", &q.start), ("end", &q.end)] {
                if crate::compliance::quiet::parse_hhmm(v).is_none() {
                    p.push(format!("compliance.quiet_hours.{k}: '{v}' is not HH:MM"));
                }
            }
            if jiff::tz::TimeZone::get(&q.default_timezone).is_err() {
                p.push(format!(
                    "compliance.quiet_hours.default_timezone: '{}' is not an IANA zone",
                    q.default_timezone
                ));
            }
        }
        for (i, pol) in c.category_policies.iter().enumerate() {
            if pol.max_per_day.is_none() && pol.max_per_week.is_none() && pol.max_chars.is_none() {
                p.push(format!("compliance.category_policies[{i}] ({}): set at least one limit", pol.category));
            }
        }
        for (i, pattern) in c.content.mrn_patterns.iter().enumerate() {
            if let Err(e) = regex::Regex::new(pattern) {
                p.push(format!("compliance.content.mrn_patterns[{i}]: {e}"));
            }
        }
        if c.optout_keywords.is_empty() {
            p.push("compliance.optout_keywords: must not be empty (STOP must always work)".into());
        }

        match self.webhooks.policy() {
            Err(e) => p.push(format!("webhooks.allow_networks: {e}")),
            Ok(policy) => {
                if let Some(url) = &self.webhooks.inbound_url
                    && let Err(e) = policy.check(url)
                {
                    p.push(format!("webhooks.inbound_url: {e}"));
                }
            }
        }
        if self.webhooks.inbound_url.is_some()
            && self.webhooks.secret_file.is_none()
            && self.webhooks.secret_env.is_none()
        {
            p.push("webhooks: a signing secret (secret_file or secret_env) is required for webhooks".into());
        }
        if !self.metrics.listen.ip().is_loopback() && !self.metrics.allow_non_loopback {
            p.push(format!(
                "metrics.listen: {} is not loopback; /metrics is plain HTTP, set allow_non_loopback = true only behind a protected network",
                self.metrics.listen
            ));
        }
        p
    }

    /// The addresses a message may leave from: its `from`, or else the `default_source` of
    /// each carrier of its `route` (what sender-scoped opt-outs must be checked against).
    pub fn effective_senders(&self, from: Option<&str>, route: &[String]) -> Vec<String> {
        match from {
            Some(f) => vec![f.to_string()],
            None => {
                let mut v: Vec<String> = route
                    .iter()
                    .filter_map(|name| self.carriers.iter().find(|c| &c.name == name)?.default_source.clone())
                    .collect();
                v.dedup();
                v
            }
        }
    }

    /// Carrier names in failover order for a message: among the routes whose prefix matches
    /// the destination (and whose `sender`/`category`, when set, match the message), the
    /// longest prefix wins, then the more specific route. With no routes configured, every
    /// carrier in config order.
    pub fn route(&self, destination: &str, sender: Option<&str>, category: Option<&str>) -> Option<Vec<String>> {
        if self.routes.is_empty() {
            return Some(self.carriers.iter().map(|c| c.name.clone()).collect());
        }
        self.routes
            .iter()
            .filter(|r| destination.starts_with(&r.prefix))
            .filter(|r| r.sender.as_deref().is_none_or(|s| Some(s) == sender))
            .filter(|r| r.category.as_deref().is_none_or(|c| Some(c) == category))
            .max_by_key(|r| (r.prefix.len(), usize::from(r.sender.is_some()) + usize::from(r.category.is_some())))
            .map(|r| r.carriers.clone())
    }
}

/// The line (1-based) of a problem's key in the TOML text, from the key path at the start of
/// the problem (`carriers[0] (acme).window: …` → the `window =` line of the first
/// `[[carriers]]`), or of its table when the key is not written (a default).
pub fn line_of(text: &str, problem: &str) -> Option<usize> {
    let path: String = problem.split([':', ' ']).next()?.to_string();
    // Drop a "(name)" annotation after an index: "carriers[0]" stays, "(acme)" goes.
    let path = path.trim_end_matches('.');
    if path.is_empty() {
        return None;
    }
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut table = String::new();
    let mut table_line = None;
    let mut best: Option<usize> = None;
    let key_part = problem.split(':').next().unwrap_or("");
    let key_part = key_part.split(' ').collect::<Vec<_>>();
    // Rebuild "carriers[0].window" from "carriers[0] (acme).window".
    let full_path = match key_part.as_slice() {
        [head, rest] if rest.starts_with('(') => match rest.split_once(")") {
            Some((_, tail)) => format!("{head}{tail}"),
            None => head.to_string(),
        },
        [head, ..] => head.to_string(),
        [] => return None,
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let n = counts.entry(name.trim().to_string()).or_insert(0);
            table = format!("{}[{}]", name.trim(), n);
            *n += 1;
            if full_path == table || full_path.starts_with(&format!("{table}.")) {
                table_line = Some(i + 1);
            }
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.trim().to_string();
            if full_path == table || full_path.starts_with(&format!("{table}.")) {
                table_line = Some(i + 1);
            }
            continue;
        }
        if let Some((key, _)) = line.split_once('=') {
            let full = if table.is_empty() { key.trim().to_string() } else { format!("{table}.{}", key.trim()) };
            if full == full_path {
                best = Some(i + 1);
                break;
            }
        }
    }
    best.or(table_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
data_dir = "data"
[crypto]
key_file = "KEYFILE"
[api]
listen = "127.0.0.1:8443"
plaintext = true
[[carriers]]
name = "acme"
host = "localhost"
port = 2775
tls = false
system_id = "gw"
"#;

    /// A key file shared by the tests (keys are random; the tests only need them to load).
    fn key_file() -> &'static str {
        static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let path = std::env::temp_dir().join(format!("smsgate-config-test-{}.keys", std::process::id()));
            crate::fsutil::write_private(&path, crate::crypto::Crypto::generate_file_text().as_bytes())
                .expect("temp key file");
            path.display().to_string()
        })
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(&text.replace("KEYFILE", key_file()), Path::new("test.toml"), Path::new("/base"))
    }

    #[test]
    fn an_empty_password_is_a_mistake_not_no_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "\n").expect("password file");
        let text = MINIMAL
            .replace("system_id = \"gw\"", &format!("system_id = \"gw\"\npassword_file = \"{}\"", file.display()));
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("password: is configured but empty"), "{e}");
        // The admin verbs do not read it at all.
        let (_, problems) = Config::parse_checked(
            &text.replace("KEYFILE", key_file()),
            Path::new("t.toml"),
            Path::new("/base"),
            Purpose::Admin,
        )
        .expect("parses");
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/base/data"));
        assert_eq!(c.carriers[0].window, 10);
        assert_eq!(c.route("+14155550123", None, None), Some(vec!["acme".to_string()]));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let err = parse(&MINIMAL.replace("tls = false", "tls = false\nwindow_size = 5")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("window_size") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn wrong_types_are_errors() {
        let err = parse(&MINIMAL.replace("port = 2775", "port = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = MINIMAL.replace("system_id = \"gw\"", "system_id = \"\"\nbinds = 0\nwindow = 0")
            + "[[routes]]\nprefix = \"1\"\ncarriers = [\"nope\"]\n";
        let Err(ConfigError::Invalid { problems, .. }) = parse(&text) else { panic!("expected Invalid") };
        assert_eq!(problems.len(), 5, "{problems:#?}");
    }

    #[test]
    fn plaintext_on_public_address_needs_the_proxy_switch() {
        let text = MINIMAL.replace("127.0.0.1:8443", "0.0.0.0:8443");
        assert!(parse(&text).is_err());
        assert!(
            parse(&text.replace("plaintext = true", "plaintext = true\nallow_plaintext_behind_proxy = true")).is_ok()
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let text = MINIMAL.to_string()
            + "[[carriers]]\nname = \"uk\"\nhost = \"h\"\nport = 1\ntls = false\nsystem_id = \"x\"\n"
            + "[[routes]]\nprefix = \"+\"\ncarriers = [\"acme\"]\n[[routes]]\nprefix = \"+44\"\ncarriers = [\"uk\", \"acme\"]\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.route("+447911123456", None, None).unwrap(), vec!["uk", "acme"]);
        assert_eq!(c.route("+14155550123", None, None).unwrap(), vec!["acme"]);
        let text = text + "[[routes]]\nprefix = \"+44\"\ncategory = \"urgent\"\ncarriers = [\"acme\"]\n";
        let c = parse(&text).unwrap();
        assert_eq!(c.route("+447911123456", None, Some("urgent")).unwrap(), vec!["acme"], "more specific wins");
        assert_eq!(c.route("+447911123456", None, Some("other")).unwrap(), vec!["uk", "acme"]);
        let only_uk = MINIMAL.to_string() + "[[routes]]\nprefix = \"+44\"\ncarriers = [\"acme\"]\n";
        assert_eq!(parse(&only_uk).unwrap().route("+14155550123", None, None), None, "no route: refused at accept");
    }

    #[test]
    fn problems_point_at_their_line() {
        let text = "data_dir = \"d\"\n[api]\nlisten = \"x\"\n[[carriers]]\nname = \"a\"\n[[carriers]]\nname = \"b\"\nwindow = 0\n[compliance.quiet_hours]\nstart = \"25:00\"\n";
        assert_eq!(line_of(text, "carriers[1] (b).window: between 1 and 1000"), Some(8));
        assert_eq!(line_of(text, "carriers[0] (a).binds: between 1 and 64"), Some(4), "unwritten key: its table");
        assert_eq!(line_of(text, "compliance.quiet_hours.start: '25:00' is not HH:MM"), Some(10));
        assert_eq!(line_of(text, "api.listen: bad"), Some(3));
        assert_eq!(line_of(text, "nothing.here: x"), None);
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
