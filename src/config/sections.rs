//! The smaller sections: `[api]`, `[metrics]`, `[store]`, `[dispatch]`, `[shutdown]`,
//! `[retention]`, `[webhooks]`, `[inbound]`, `[crypto]`, `[queue]`, `[audit]`, `[log]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::*;

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
