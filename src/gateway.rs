//! Assembles a running gateway from a [`Config`]: store, keys, queues, carrier links,
//! dispatcher, API, metrics and admin socket; and takes it down again in order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::audit::Audit;
use crate::auth::KeyRing;
use crate::config::{CarrierConfig, Config};
use crate::dispatch::{Breaker, CarrierDispatch, Claims, Dispatcher};
use crate::faults::Faults;
use crate::flow::FlowControl;
use crate::inbound::Inbound;
use crate::live::{Live, ReloadReport};
use crate::queue::{Entry, Queues};
use crate::smpp::client::session::{self, LinkSettings};
use crate::smpp::client::submit::SubmitOptions;
use crate::smpp::codec::receipt::IdFormat;
use crate::store::{Op, Store, StoreOptions};
use crate::supervise::supervise;
use crate::{admin, httpd, metrics, tls};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// TLS material is missing or wrong.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A listener could not bind.
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The data keys, the audit log or the webhook secret could not be set up.
    #[error("{0}")]
    Crypto(String),
    /// A carrier setting is unusable.
    #[error("carrier {0}: {1}")]
    Carrier(String, String),
}

/// A running gateway.
pub struct Gateway {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    /// The store (shared).
    pub store: Store,
    /// The API keys.
    pub keys: Arc<KeyRing>,
    /// The accounts.
    pub accounts: Arc<crate::accounts::Accounts>,
    dispatcher: Arc<Dispatcher>,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    /// Stops the API listener, which outlives the rest of the stop: requests that arrive
    /// while binds drain get `503 shutting_down` rather than a refused connection.
    api_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    link_tasks: Vec<JoinHandle<()>>,
    api_task: JoinHandle<()>,
    shutdown_timeout: Duration,
}

fn link_settings(c: &CarrierConfig, drain_secs: u64) -> Result<LinkSettings, StartError> {
    let err = |m: String| StartError::Carrier(c.name.clone(), m);
    let tls = if c.tls {
        let client_cert = c.client_cert.as_deref().zip(c.client_key.as_deref());
        let config =
            tls::client_config(c.ca_file.as_deref(), &c.pin_sha256, client_cert).map_err(|e| err(e.to_string()))?;
        let name = c.server_name.clone().unwrap_or_else(|| c.host.clone());
        let name = ServerName::try_from(name).map_err(|e| err(format!("server name: {e}")))?;
        Some((config, name))
    } else {
        None
    };
    Ok(LinkSettings {
        name: Arc::from(c.name.as_str()),
        host: c.host.clone(),
        port: c.port,
        tls,
        system_id: c.system_id.clone(),
        password: c.password().map_err(err)?,
        system_type: c.system_type.clone(),
        binds: c.binds,
        split_binds: c.bind_mode == crate::config::BindModeConfig::Split,
        window: c.window,
        enquire_link_interval: c.enquire_link_interval(),
        response_timeout: c.response_timeout(),
        reconnect_min: Duration::from_millis(500),
        reconnect_max: Duration::from_secs(60),
        drain_timeout: Duration::from_secs(drain_secs),
    })
}

impl Gateway {
    /// Opens everything and starts serving (with the faults of `SMSGATE_FAULTS` in a test
    /// build; none otherwise).
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        Gateway::start_with(config, Faults::from_env()).await
    }

    /// [`Gateway::start`] with the given injected faults (tests).
    pub async fn start_with(config: Config, faults: Faults) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let metrics_handle = metrics::install();
        let carrier_names: Vec<String> = config.carriers.iter().map(|c| c.name.clone()).collect();
        metrics::start_at_zero(&carrier_names, &config.compliance.optout_keywords);
        // libphonenumber's metadata loads lazily (hundreds of ms); pay it before the first request.
        let _ = tokio::task::spawn_blocking(|| crate::phone::E164::parse("+14155550123")).await;
        let crypto = Arc::new(config.crypto.load().map_err(StartError::Crypto)?);
        let store = Store::open(
            &config.data_dir,
            &StoreOptions {
                cache_bytes: config.store.cache_mb << 20,
                group_commit_max: config.store.group_commit_max,
                faults,
            },
            crypto,
        )?;
        // Prove the disk takes a durable write before binding to any carrier: a restart on a
        // full disk must stop here, not submit messages whose answers it cannot record.
        store
            .commit(vec![Op::Put {
                key: b"s/started".to_vec(),
                value: crate::message::now_ms().to_be_bytes().to_vec(),
            }])
            .await?;
        let moved = crate::compliance::registry::migrate(&store).await?;
        if moved > 0 {
            tracing::info!(moved, "opt-out and consent entries moved to normalised numbers and the current layout");
        }
        let keys = Arc::new(KeyRing::load(&store)?);
        let accounts = Arc::new(
            crate::accounts::Accounts::open(&store).await.map_err(|e| StartError::Crypto(format!("accounts: {e}")))?,
        );
        let audit = Audit::open(&config.data_dir, config.audit.options(&store.crypto()), store.tripwire().clone())
            .map_err(|e| StartError::Crypto(e.to_string()))?;
        let queues = Arc::new(Queues::new(config.carriers.iter().map(|c| c.name.as_str())));
        restore_queues(&store, &config, &queues).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (api_stop, api_stop_rx) = watch::channel(false);

        let id_formats: HashMap<String, IdFormat> =
            config.carriers.iter().map(|c| (c.name.clone(), c.receipt_id_format)).collect();
        let flows: HashMap<String, Arc<FlowControl>> = config
            .carriers
            .iter()
            .map(|c| (c.name.clone(), FlowControl::new(c.rate, c.burst, Duration::from_millis(c.throttle_pause_ms))))
            .collect();
        let live = Arc::new(Live::new(config.clone(), flows.clone()));
        let inbound =
            Inbound::new(store.clone(), accounts.clone(), id_formats, live.clone(), audit.clone(), queues.clone());
        let mut links = Vec::new();
        let mut link_tasks = Vec::new();
        let mut dispatch = HashMap::new();
        for c in &config.carriers {
            let (link, handles) = session::start(
                link_settings(c, config.shutdown.submit_drain_secs)?,
                inbound.clone(),
                shutdown_rx.clone(),
            );
            link_tasks.extend(handles);
            dispatch.insert(
                c.name.clone(),
                CarrierDispatch {
                    link: link.clone(),
                    options: SubmitOptions::from_carrier(c),
                    id_format: c.submit_id_format,
                    flow: flows.get(&c.name).cloned().unwrap_or_else(|| {
                        FlowControl::new(c.rate, c.burst, Duration::from_millis(c.throttle_pause_ms))
                    }),
                    throttle_pause: Duration::from_millis(c.throttle_pause_ms),
                    breaker: Breaker::new(c.breaker_failures, Duration::from_secs(c.breaker_cooldown_secs)),
                    handover_timeout: c.response_timeout(),
                },
            );
            links.push(link);
        }
        let claims = Arc::new(Claims::default());
        let dispatcher = Dispatcher::new(
            store.clone(),
            queues.clone(),
            dispatch,
            config.dispatch.clone(),
            claims.clone(),
            live.clone(),
            audit.clone(),
        );
        let mut tasks = dispatcher.start(shutdown_rx.clone());
        tasks.push(tokio::spawn({
            let tripwire = store.tripwire().clone();
            async move {
                let reason = tripwire.tripped().await;
                metrics::store_failed();
                tracing::error!(reason = %reason, "the store failed: accepts answer 503, nothing new is submitted");
            }
        }));

        let state = Arc::new(AppState {
            store: store.clone(),
            keys: keys.clone(),
            accounts: accounts.clone(),
            queues: queues.clone(),
            live: live.clone(),
            links,
            accepting: AtomicBool::new(true),
            claims,
            disk_free_bytes: AtomicU64::new(disk_free(&config.data_dir)),
            audit: audit.clone(),
            edge: api::edge::Edge::new(config.api.limits()),
        });
        // Every account has a signing secret, so webhooks always run.
        let secret = config.webhooks.secret().map_err(|e| StartError::Crypto(format!("webhooks: {e}")))?;
        let tls = tls::client_config(config.webhooks.ca_file.as_deref(), &[], None)?;
        let policy = Arc::new(config.webhooks.policy().map_err(|e| StartError::Crypto(format!("webhooks: {e}")))?);
        let deliverer =
            crate::webhooks::Deliverer { store: store.clone(), secret, accounts: accounts.clone(), tls, policy };
        let stop = shutdown_rx.clone();
        tasks.push(supervise("webhooks", shutdown_rx.clone(), move || {
            crate::webhooks::run(deliverer.clone(), stop.clone())
        }));
        let (s, stop) = (state.clone(), shutdown_rx.clone());
        tasks.push(supervise("disk_watch", shutdown_rx.clone(), move || watch_disk(s.clone(), stop.clone())));
        let (st, stop) = (store.clone(), shutdown_rx.clone());
        tasks.push(supervise("sweep", shutdown_rx.clone(), move || sweep_hourly(st.clone(), stop.clone())));
        let (inb, stop) = (inbound.clone(), shutdown_rx.clone());
        tasks.push(supervise("receipt_retry", shutdown_rx.clone(), move || {
            inb.clone().retry_parked_receipts(stop.clone())
        }));
        let (inb, stop) = (inbound.clone(), shutdown_rx.clone());
        tasks.push(supervise("inbound_parts", shutdown_rx.clone(), move || {
            inb.clone().release_overdue_parts(stop.clone())
        }));
        let (st, lv, stop) = (store.clone(), live.clone(), shutdown_rx.clone());
        tasks.push(supervise("receipt_timeout", shutdown_rx.clone(), move || {
            crate::receipt_timeout::run(st.clone(), lv.clone(), stop.clone())
        }));
        // Records from before the search indexes get their entries in the background.
        tasks.push(tokio::spawn({
            let store = store.clone();
            async move {
                match crate::store::index::build(&store).await {
                    Ok(0) => {}
                    Ok(n) => info!(indexed = n, "older messages and inbound texts indexed for search"),
                    Err(e) => warn!(error = %e, "indexing older records failed; will retry at the next start"),
                }
            }
        }));
        metrics::set_account_label_limit(config.metrics.max_account_labels);
        let (st, retention, stop) = (store.clone(), config.retention.clone(), shutdown_rx.clone());
        tasks.push(supervise("maintenance", shutdown_rx.clone(), move || {
            let interval = Duration::from_secs(retention.sweep_interval_secs);
            crate::maintenance::run(st.clone(), retention.clone(), interval, stop.clone())
        }));
        let api_listener =
            TcpListener::bind(config.api.listen).await.map_err(|e| StartError::Listen(config.api.listen, e))?;
        let api_addr = api_listener.local_addr().map_err(|e| StartError::Listen(config.api.listen, e))?;
        let acceptor = match (&config.api.tls_cert, &config.api.tls_key) {
            (Some(cert), Some(key)) if !config.api.plaintext => {
                Some(tokio_rustls::TlsAcceptor::from(tls::server_config(cert, key, &[b"h2", b"http/1.1"])?))
            }
            _ => {
                warn!(listen = %api_addr, "the API serves plain HTTP: only behind a TLS-terminating proxy");
                None
            }
        };
        let api_task = tokio::spawn(api::serve(
            api_listener,
            acceptor,
            state.clone(),
            api_stop_rx.clone(),
            Duration::from_secs(config.shutdown.http_drain_secs),
        ));

        let metrics_listener =
            TcpListener::bind(config.metrics.listen).await.map_err(|e| StartError::Listen(config.metrics.listen, e))?;
        let metrics_addr = metrics_listener.local_addr().map_err(|e| StartError::Listen(config.metrics.listen, e))?;
        tasks.push(tokio::spawn(httpd::serve(metrics_listener, api_stop_rx, move |req| {
            let handle = metrics_handle.clone();
            async move {
                if req.uri().path() == "/metrics" {
                    let mut r = httpd::text(hyper::StatusCode::OK, metrics::render(&handle));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                } else {
                    httpd::text(hyper::StatusCode::NOT_FOUND, "see /metrics\n")
                }
            }
        })));
        let ctx = admin::AdminCtx {
            store: store.clone(),
            ring: keys.clone(),
            accounts: accounts.clone(),
            audit: audit.clone(),
            config: config.clone(),
        };
        tasks.push(admin::serve(ctx, shutdown_rx.clone()));
        info!(api = %api_addr, metrics = %metrics_addr, queued = queues.total(), "smsgate started");
        Ok(Gateway {
            api_addr,
            metrics_addr,
            store,
            keys,
            accounts,
            dispatcher,
            state,
            shutdown,
            api_stop,
            tasks,
            link_tasks,
            api_task,
            shutdown_timeout: Duration::from_secs(config.shutdown.timeout_secs),
        })
    }

    /// Waits until a store write fails; returns why. `serve` then stops and exits non-zero.
    pub async fn failed(&self) -> String {
        self.store.tripwire().tripped().await
    }

    /// Carriers whose dispatcher has due work and a healthy carrier but made no progress for
    /// a minute (the watchdog stops being fed).
    pub fn stalled(&self) -> Vec<String> {
        self.dispatcher.stalled()
    }

    /// Applies a new configuration (SIGHUP): routes, limits, compliance rules, log levels;
    /// binds and queued messages are untouched. The caller validated `config`.
    pub fn reload(&self, config: Config) -> ReloadReport {
        let report = self.state.live.reload(config);
        self.state.audit.record(
            crate::audit::Event::new("system", "config.reload", "", "applied")
                .detail(serde_json::json!({"needs_restart": report.needs_restart})),
        );
        report
    }

    /// Records a SIGHUP whose configuration was refused (the running one stays).
    pub fn reload_refused(&self, reason: &str) {
        self.state.audit.record(
            crate::audit::Event::new("system", "config.reload", "", "refused")
                .detail(serde_json::json!({"reason": reason})),
        );
    }

    /// Graceful stop: refuse new sends (`503 shutting_down`, the API keeps answering), let
    /// outstanding submit_sm get their answers and unbind every session, then close the API
    /// after its open requests finished, flush the store, and wait until the store's files
    /// are released (so the same data directory can be opened again at once).
    pub async fn shutdown(self) {
        info!("shutting down");
        let Gateway {
            store,
            keys,
            state,
            shutdown,
            api_stop,
            tasks,
            link_tasks,
            api_task,
            shutdown_timeout,
            dispatcher,
            ..
        } = self;
        drop(dispatcher);
        state.accepting.store(false, Ordering::Release);
        let _ = shutdown.send(true);
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        for t in link_tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        let _ = api_stop.send(true);
        let _ = tokio::time::timeout_at(deadline, api_task).await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = store.flush() {
            warn!(error = %e, "final store flush failed");
        }
        let writer = store.writer_stats();
        drop((store, keys, state));
        while !writer.exited.load(Ordering::Acquire) {
            if tokio::time::Instant::now() > deadline {
                warn!("store still in use at the end of shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("stopped");
    }
}

/// Free bytes on the file system holding `dir` (u64::MAX when it cannot be read, so a
/// broken statvfs never stops traffic on its own).
fn disk_free(dir: &std::path::Path) -> u64 {
    fs2::available_space(dir).unwrap_or(u64::MAX)
}

/// Refreshes the free-space reading once a second for the accept path's disk floor.
async fn watch_disk(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    // The store's own directory: `data_dir` in a reloaded file takes effect only at a restart.
    let data_dir = state.store.path().to_path_buf();
    loop {
        let dir = data_dir.clone();
        let store = state.store.clone();
        if let Ok((free, size)) =
            tokio::task::spawn_blocking(move || (disk_free(&dir), store.size_on_disk().ok())).await
        {
            state.disk_free_bytes.store(free, Ordering::Release);
            metrics::sample(free, size);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Orphan receipts (for ids never recorded) are kept this long, in case their
/// `submit_sm_resp` is still to be recorded after an outage.
const ORPHAN_TTL_MS: u64 = 7 * 86_400_000;

/// Deletes stale idempotency entries, usage counters and orphan receipts once an hour.
async fn sweep_hourly(store: Store, mut shutdown: watch::Receiver<bool>) {
    loop {
        match store.sweep(crate::message::now_ms(), ORPHAN_TTL_MS).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "swept stale idempotency entries, counters and orphan receipts"),
            Err(e) => warn!(error = %e, "sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Rebuilds the in-memory queues from the store's `q/` entries. A queued message whose
/// carrier is no longer configured is routed again by the current routes (its record and
/// queue entry say so), or failed with `no_route`; an entry without a readable message is
/// set aside.
async fn restore_queues(store: &Store, config: &Config, queues: &Queues) -> Result<(), crate::store::StoreError> {
    let mut rerouted = Vec::new();
    let mut orphans = Vec::new();
    store.for_each_queue_entry(|e| {
        let Some(entry) = Entry::new(e.due_ms, e.seq, &e.id, e.expires_ms).map(|x| x.of(&e.account)) else {
            orphans.push((e.due_ms, e.seq, "queue entry with a malformed message id"));
            return Ok(());
        };
        if let Some(q) = queues.get(&e.carrier) {
            q.push(entry);
            return Ok(());
        }
        rerouted.push((e.id, entry));
        Ok(())
    })?;
    for (due_ms, seq, reason) in orphans {
        warn!(seq, reason, "queue entry set aside");
        store.quarantine_queue_entry(due_ms, seq, reason)?;
    }
    let mut ops = Vec::new();
    let mut pushes = Vec::new();
    for (id, entry) in rerouted {
        let Some(msg) = store.message(&id)? else {
            store.quarantine_queue_entry(entry.due_ms, entry.seq, "queue entry without a readable message")?;
            continue;
        };
        let route = config
            .route(&msg.content.to, msg.content.from.as_deref(), msg.category.as_deref())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| queues.get(c).is_some())
            .collect::<Vec<_>>();
        match route.first().cloned() {
            Some(first) => {
                ops.push(Op::Reroute { id: id.clone(), route });
                pushes.push((first, entry));
            }
            None => ops.push(Op::Finish {
                id: id.clone(),
                count_attempt: false,
                status: crate::message::Status::Failed,
                error: Some(crate::message::ErrorInfo {
                    code: "no_route".into(),
                    message: "its carrier was removed from the configuration and no route matches".into(),
                    carrier_status: None,
                }),
            }),
        }
    }
    if !ops.is_empty() {
        warn!(
            rerouted = pushes.len(),
            failed = ops.len() - pushes.len(),
            "queued messages whose carrier was removed from the configuration"
        );
        for chunk in ops.chunks(1000) {
            store.commit(chunk.to_vec()).await?;
        }
    }
    for (carrier, entry) in pushes {
        if let Some(q) = queues.get(&carrier) {
            q.push(entry);
        }
    }
    Ok(())
}
