//! Configuration: TOML → typed structs (`deny_unknown_fields` everywhere) → [`Config::validate`],
//! which collects every problem at once with the key path, so `check-config` can list them all.
//!
//! Relative paths in the file are resolved against the directory of the config file itself, so
//! `smsgate serve --config /etc/smsgate/smsgate.toml` behaves the same from any working
//! directory.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod carriers;
mod compliance;
mod sections;
mod validate;

pub use carriers::*;
pub use compliance::*;
pub use sections::*;

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

fn default_true() -> bool {
    true
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
