//! The command line (DESIGN.md "Command line"): argument parsing and one function per verb.
//! This is the binary's edge, so errors here are `anyhow` with context for the operator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod accounts;
mod keys;
mod messages;
mod records;

pub use keys::KeysCommand;
pub use records::{AuditCommand, OptoutsCommand, QuarantineCommand};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::admin::{self, AdminRequest, AdminResponse};
use crate::auth::KeyRing;
use crate::config::{Config, LogConfig, LogFormat};
use crate::gateway::Gateway;
use crate::sim::{Recorder, Sim, SimConfig, SimListeners};
use crate::store::{Store, StoreOptions};

/// smsgate: SMS carrier gateway and durable message queue.
#[derive(Debug, Parser)]
#[command(name = "smsgate", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Gateway plus a built-in SMSC simulator, self-signed TLS, data under ./data/demo.
    Demo(DemoArgs),
    /// Run the gateway (production).
    Serve(ConfigArg),
    /// Manage accounts (works whether or not the server runs).
    Accounts {
        /// Account action.
        #[command(subcommand)]
        action: accounts::AccountsCommand,
        /// Config file (to find the data directory).
        #[arg(long, global = true, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Export an account's messages as CSV (works whether or not the server runs).
    Messages {
        /// Action.
        #[command(subcommand)]
        action: messages::MessagesCommand,
        /// Config file (to find the data directory).
        #[arg(long, global = true, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Manage API keys (works whether or not the server runs).
    Keys {
        /// Key action.
        #[command(subcommand)]
        action: KeysCommand,
        /// Config file (to find the data directory).
        #[arg(long, global = true, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Export or import the opt-out registry as CSV.
    Optouts {
        /// Action.
        #[command(subcommand)]
        action: OptoutsCommand,
        /// Config file (to find the data directory).
        #[arg(long, global = true, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Write a consistent backup (store + audit log) while the server runs, or offline.
    Backup {
        /// Output file (refused if it exists, unless --force).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Config file.
        #[arg(long, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Restore a backup into an empty data directory (server stopped).
    Restore {
        /// Backup file.
        file: PathBuf,
        /// Config file (its data_dir is the target).
        #[arg(long, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Check or export the audit trail.
    Audit {
        /// Action.
        #[command(subcommand)]
        action: AuditCommand,
        /// Config file (to find the data directory).
        #[arg(long, global = true, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Records set aside because they could not be decoded.
    Quarantine {
        /// Action.
        #[command(subcommand)]
        action: QuarantineCommand,
        /// Config file (to find the data directory).
        #[arg(long, global = true, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
        config: PathBuf,
    },
    /// Run the SMSC simulator alone.
    SmscSim(Box<SimArgs>),
    /// Validate a config file and explain every problem; or, with --pin, print the
    /// pin_sha256 of each certificate in a PEM file.
    CheckConfig(CheckArgs),
}

/// `check-config`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file.
    #[arg(long, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
    pub config: PathBuf,
    /// Print the pin (for a carrier's `pin_sha256`) of every certificate in this PEM file
    /// instead of checking the config.
    #[arg(long, value_name = "PEM_FILE")]
    pub pin: Option<PathBuf>,
}

/// `--config FILE`
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file.
    #[arg(long, env = "SMSGATE_CONFIG", default_value = "config/smsgate.toml")]
    pub config: PathBuf,
}

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Demo config (defaults to the built-in config/demo.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `smsc-sim` options (the switches of `shared/tools/smsc-sim` that the built-in one has).
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// Plain SMPP port (0 = any free port).
    #[arg(long, default_value_t = 2775)]
    pub port: u16,
    /// SMPP over TLS port (needs --cert and --key).
    #[arg(long)]
    pub tls_port: Option<u16>,
    /// PEM certificate for TLS.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// PEM key for TLS.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// HTTP control port (0 = any free port).
    #[arg(long, default_value_t = 8775)]
    pub control_port: u16,
    /// Required system_id.
    #[arg(long)]
    pub system_id: Option<String>,
    /// Required password.
    #[arg(long)]
    pub password: Option<String>,
    /// Receipt delay in ms: N or MIN-MAX.
    #[arg(long, default_value = "50")]
    pub dlr_delay_ms: String,
    /// Fraction of messages whose receipt says UNDELIV.
    #[arg(long, default_value_t = 0.0)]
    pub dlr_fail_ratio: f64,
    /// submit_sm per second per bind before ESME_RTHROTTLED (0 = off).
    #[arg(long, default_value_t = 0)]
    pub throttle: u32,
    /// Delay before each submit_sm_resp, ms.
    #[arg(long, default_value_t = 0)]
    pub resp_delay_ms: u64,
    /// Write one JSON line per submit_sm here.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// PEM CA bundle: require and verify client certificates on the TLS port (mutual TLS).
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// Message id format: hex or dec.
    #[arg(long, default_value = "hex")]
    pub msgid_format: String,
    /// First message id.
    #[arg(long, default_value_t = 1)]
    pub msgid_start: u64,
    /// Receipts carry the id only in their text, in decimal (no receipted_message_id TLV).
    #[arg(long)]
    pub receipt_id_decimal_text: bool,
    /// Close a connection once N submit_sm were answered on it (0 = never).
    #[arg(long, default_value_t = 0)]
    pub drop_after: u64,
    /// once (first connection only) or every.
    #[arg(long, default_value = "once")]
    pub drop_mode: String,
    /// Fraction of submit_sm answered with --error-status.
    #[arg(long, default_value_t = 0.0)]
    pub error_ratio: f64,
    /// command_status for --error-ratio (decimal or 0x hex).
    #[arg(long, default_value = "0x08")]
    pub error_status: String,
}

/// Parses arguments and runs the verb.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let code = if e.downcast_ref::<crate::config::ConfigError>().is_some()
                || e.downcast_ref::<ConfigProblems>().is_some()
            {
                64
            } else if e.downcast_ref::<StoreFailed>().is_some() {
                EXIT_STORE_FAILED
            } else {
                1
            };
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(command: Command) -> Result<()> {
    // Every verb may hold numbers, bodies or keys in memory: none of it goes into a core file.
    if let Err(e) = crate::fsutil::disable_core_dumps() {
        eprintln!("warning: could not turn off core dumps: {e}");
    }
    match command {
        Command::Demo(args) => crate::demo::run(args.config.as_deref()).await,
        Command::Serve(args) => serve(&args.config).await,
        Command::Keys { action: KeysCommand::InitDataKeys { out }, .. } => keys::init_data_keys(&out),
        Command::Keys { action, config } => keys::keys(action, &config).await,
        Command::Accounts { action, config } => accounts::run(action, &Config::load_admin(&config)?).await,
        Command::Messages { action, config } => messages::run(action, &Config::load_admin(&config)?).await,
        Command::Optouts { action, config } => records::optouts(action, &config).await,
        Command::Audit { action, config } => records::audit(action, &config),
        Command::Backup { out, force, config } => records::backup(&out, force, &config).await,
        Command::Restore { file, config } => records::restore(&file, &config),
        Command::Quarantine { action: QuarantineCommand::List, config } => records::quarantine_list(&config).await,
        Command::SmscSim(args) => smsc_sim(*args).await,
        Command::CheckConfig(CheckArgs { pin: Some(pem), .. }) => print_pins(&pem),
        Command::CheckConfig(args) => check_config(&args.config),
    }
}

type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Sets up `tracing`: `RUST_LOG` wins over the config's level. The filter can be changed at
/// run time ([`set_log_filter`], used by SIGHUP reloads).
pub fn init_logging(log: &LogConfig) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Human => fmt.boxed(),
    };
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

/// Replaces the log filter (unless `RUST_LOG` is set, which always wins).
pub fn set_log_filter(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    LOG_FILTER.get().ok_or("logging not initialised")?.reload(filter).map_err(|e| e.to_string())
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn serve(path: &Path) -> Result<()> {
    use sd_notify::NotifyState;
    use tokio::signal::unix::{SignalKind, signal};
    let config = Config::load(path)?;
    init_logging(&config.log);
    let gateway = Gateway::start(config).await.context("starting the gateway")?;
    // One line saying where it listens (port 0 in the config picks a free port; tests and
    // scripts read it here).
    println!(
        "{}",
        serde_json::json!({"event": "listening", "api": gateway.api_addr.to_string(),
                           "metrics": gateway.metrics_addr.to_string(), "pid": std::process::id()})
    );
    // systemd (Type=notify): ready once listening; watchdog pings while the store still commits.
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
    let mut watchdog_usec = 0;
    let gateway = std::sync::Arc::new(gateway);
    let mut watchdog = None;
    if sd_notify::watchdog_enabled(false, &mut watchdog_usec) {
        let gw = gateway.clone();
        let every = std::time::Duration::from_micros(watchdog_usec / 2);
        watchdog = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // An empty group commit proves the writer thread and the disk answer; a
                // dispatcher stuck with due work and a healthy carrier means a restart helps.
                let store_ok = tokio::time::timeout(every, gw.store.commit(Vec::new())).await.is_ok_and(|r| r.is_ok());
                let stalled = gw.stalled();
                if !stalled.is_empty() {
                    tracing::error!(carriers = %stalled.join(","), "dispatch made no progress for a minute; watchdog not fed");
                }
                if store_ok && stalled.is_empty() {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
            }
        }));
    }
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let mut states = vec![NotifyState::Reloading];
                states.extend(NotifyState::monotonic_usec_now().ok());
                let _ = sd_notify::notify(false, &states);
                match Config::load(path) {
                    Ok(new) => {
                        let report = gateway.reload(new);
                        if report.needs_restart.is_empty() {
                            tracing::info!("configuration reloaded");
                        } else {
                            tracing::warn!(needs_restart = %report.needs_restart.join(","), "configuration reloaded; some changes need a restart");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                        gateway.reload_refused(&e.to_string());
                    }
                }
                let _ = sd_notify::notify(false, &[NotifyState::Ready]);
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            reason = gateway.failed() => {
                let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
                stop(gateway, watchdog).await;
                return Err(StoreFailed(reason).into());
            }
        }
    }
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    stop(gateway, watchdog).await;
    Ok(())
}

/// The store failed while serving: `serve` exits with [`EXIT_STORE_FAILED`] so that the
/// service manager starts it again on what reached the disk.
#[derive(Debug, thiserror::Error)]
#[error("the store failed ({0}); exiting so that a restart recovers from what is on disk")]
pub struct StoreFailed(pub String);

/// `check-config` found problems (each printed with its line already): exit 64.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {count} problem(s)", path = .0.display(), count = .1)]
pub struct ConfigProblems(pub PathBuf, pub usize);

/// Exit status after a store failure (sysexits EX_IOERR).
pub const EXIT_STORE_FAILED: u8 = 74;

async fn stop(gateway: std::sync::Arc<Gateway>, watchdog: Option<tokio::task::JoinHandle<()>>) {
    if let Some(w) = watchdog {
        w.abort();
        let _ = w.await;
    }
    match std::sync::Arc::try_unwrap(gateway) {
        Ok(g) => g.shutdown().await,
        Err(_) => tracing::warn!("gateway still shared at shutdown; exiting without a graceful stop"),
    }
}

/// `check-config --pin FILE`: one line per certificate, ready to paste.
fn print_pins(pem: &Path) -> Result<()> {
    for cert in crate::tls::load_certs(pem)? {
        let pin = crate::tls::spki_pin(&cert).with_context(|| pem.display().to_string())?;
        println!("pin_sha256 = [\"{pin}\"]");
    }
    Ok(())
}

fn check_config(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::config::ConfigError::Read { path: path.to_path_buf(), reason: e })?;
    let base = crate::config::Config::base_of(path);
    let (config, mut problems) = crate::config::Config::from_toml_unchecked(&text, path, &base)?;
    // Then the files the values point at, in the same pass.
    if let (Some(cert), Some(key)) = (&config.api.tls_cert, &config.api.tls_key)
        && let Err(e) = crate::tls::server_config(cert, key, &[])
    {
        problems.push(format!("api.tls_cert: {e}"));
    }
    for (i, c) in config.carriers.iter().enumerate() {
        if c.tls
            && let Err(e) = crate::tls::client_config(
                c.ca_file.as_deref(),
                &c.pin_sha256,
                c.client_cert.as_deref().zip(c.client_key.as_deref()),
            )
        {
            problems.push(format!("carriers[{i}] ({}).ca_file: {e}", c.name));
        }
    }
    if let Some(cf) = &config.webhooks.ca_file
        && let Err(e) = crate::tls::client_config(Some(cf), &[], None)
    {
        problems.push(format!("webhooks.ca_file: {e}"));
    }
    if !problems.is_empty() {
        for p in &problems {
            let at = crate::config::line_of(&text, p).map(|l| format!(":{l}")).unwrap_or_default();
            eprintln!("{}{at}: {p}", path.display());
        }
        return Err(ConfigProblems(path.to_path_buf(), problems.len()).into());
    }
    println!("{}: OK ({} carrier(s), {} route(s))", path.display(), config.carriers.len(), config.routes.len());
    Ok(())
}

/// Sends an admin request to the running server, or executes it on the store directly.
pub(super) async fn admin_call(config: &Config, request: AdminRequest) -> Result<AdminResponse> {
    if let Some(a) = admin::request(&config.data_dir, &request).await? {
        return Ok(a);
    }
    let crypto = std::sync::Arc::new(config.crypto.load().map_err(anyhow::Error::msg).context("[crypto]")?);
    let store = Store::open(&config.data_dir, &StoreOptions::default(), crypto)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    crate::compliance::registry::migrate(&store).await?;
    let ring = std::sync::Arc::new(KeyRing::load(&store)?);
    let accounts = std::sync::Arc::new(crate::accounts::Accounts::open(&store).await?);
    let options = config.audit.options(&store.crypto());
    let audit = crate::audit::Audit::open(&config.data_dir, options, store.tripwire().clone())?;
    let ctx = admin::AdminCtx { store, ring, accounts, audit, config: std::sync::Arc::new(config.clone()) };
    let answer = admin::execute(&ctx, "direct", request).await;
    ctx.audit.flush();
    Ok(answer)
}

pub(super) fn output(out: &Path) -> Result<Box<dyn std::io::Write>> {
    if out == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    Ok(Box::new(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?))
}

/// Parses `N` or `MIN-MAX`.
fn parse_range(s: &str) -> Result<(u64, u64)> {
    let parse = |p: &str| p.trim().parse::<u64>().with_context(|| format!("'{p}' is not a number of milliseconds"));
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                bail!("--dlr-delay-ms {s}: MIN is greater than MAX");
            }
            Ok((a, b))
        }
        None => {
            let n = parse(s)?;
            Ok((n, n))
        }
    }
}

async fn smsc_sim(args: SimArgs) -> Result<()> {
    init_logging(&LogConfig::default());
    if !(0.0..=1.0).contains(&args.dlr_fail_ratio) {
        bail!("--dlr-fail-ratio must be between 0 and 1");
    }
    if !(0.0..=1.0).contains(&args.error_ratio) {
        bail!("--error-ratio must be between 0 and 1");
    }
    let error_status = match args.error_status.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => args.error_status.parse(),
    }
    .with_context(|| format!("--error-status {}", args.error_status))?;
    let config = SimConfig {
        system_id: args.system_id,
        password: args.password,
        dlr_delay_ms: parse_range(&args.dlr_delay_ms).context("--dlr-delay-ms")?,
        dlr_fail_ratio: args.dlr_fail_ratio,
        throttle_per_sec: args.throttle,
        resp_delay_ms: args.resp_delay_ms,
        msgid_start: args.msgid_start,
        msgid_decimal: match args.msgid_format.as_str() {
            "hex" => false,
            "dec" => true,
            other => bail!("--msgid-format {other}: use hex or dec"),
        },
        receipt_id_decimal_text: args.receipt_id_decimal_text,
        drop_after: args.drop_after,
        drop_every: match args.drop_mode.as_str() {
            "once" => false,
            "every" => true,
            other => bail!("--drop-mode {other}: use once or every"),
        },
        error_ratio: args.error_ratio,
        error_status,
        ..SimConfig::default()
    };
    let bind = |port: u16| async move {
        let addr = SocketAddr::new(args.host, port);
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))
    };
    let tls = match (args.tls_port, &args.cert, &args.key) {
        (Some(port), Some(cert), Some(key)) => {
            let config = match &args.client_ca {
                Some(ca) => crate::tls::server_config_mtls(cert, key, ca)?,
                None => crate::tls::server_config(cert, key, &[])?,
            };
            Some((bind(port).await?, tokio_rustls::TlsAcceptor::from(config)))
        }
        (None, None, None) => None,
        _ => bail!("--tls-port, --cert and --key go together"),
    };
    let recorder = args.record.as_deref().map(Recorder::create).transpose().context("--record")?;
    let listeners = SimListeners { smpp: Some(bind(args.port).await?), tls, control: bind(args.control_port).await? };
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle = Sim::start(config, listeners, recorder, stop_rx);
    println!(
        "{}",
        serde_json::json!({
            "event": "listening", "host": args.host.to_string(),
            "port": handle.smpp_addr.map(|a| a.port()), "tls_port": handle.tls_addr.map(|a| a.port()),
            "control_port": handle.control_addr.port(), "pid": std::process::id(),
        })
    );
    wait_for_signal().await;
    let _ = stop_tx.send(true);
    let mut summary = handle.sim.stats_json();
    summary["event"] = serde_json::json!("summary");
    println!("{summary}");
    Ok(())
}
