//! The parts of the configuration that change on SIGHUP without dropping binds or accepted
//! messages: routes, API and queue limits, carriers' rate limits, compliance texts, keywords,
//! quiet hours, caps and content rules, log levels. Carrier connection settings (hosts, TLS,
//! credentials, binds) and the data directory need a restart; a reload that changes them
//! applies the rest and says so.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::compliance::Compliance;
use crate::config::{CarrierConfig, Config};
use crate::flow::FlowControl;

/// The current configuration and what is compiled from it.
pub struct Live {
    config: RwLock<Arc<Config>>,
    compliance: RwLock<Arc<Compliance>>,
    flows: HashMap<String, Arc<FlowControl>>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Settings that changed but need a restart to take effect.
    pub needs_restart: Vec<String>,
}

fn connection(c: &CarrierConfig) -> String {
    format!(
        "{}:{} tls={} ca={:?} name={:?} cert={:?} id={} binds={} mode={:?} window={}",
        c.host, c.port, c.tls, c.ca_file, c.server_name, c.client_cert, c.system_id, c.binds, c.bind_mode, c.window
    )
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(v) => v.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl Live {
    /// From the starting configuration and the carriers' flow controls.
    pub fn new(config: Arc<Config>, flows: HashMap<String, Arc<FlowControl>>) -> Live {
        let compliance = Arc::new(Compliance::new(&config.compliance));
        Live { config: RwLock::new(config), compliance: RwLock::new(compliance), flows }
    }

    /// The configuration now.
    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    /// The compliance rules now.
    pub fn compliance(&self) -> Arc<Compliance> {
        read(&self.compliance)
    }

    /// Applies a new (already validated) configuration.
    pub fn reload(&self, new: Config) -> ReloadReport {
        let old = self.config();
        let mut report = ReloadReport::default();
        if new.data_dir != old.data_dir {
            report.needs_restart.push("data_dir".into());
        }
        if new.api.listen != old.api.listen
            || new.api.tls_cert != old.api.tls_cert
            || new.api.tls_key != old.api.tls_key
        {
            report.needs_restart.push("api listener/TLS".into());
        }
        if new.metrics.listen != old.metrics.listen {
            report.needs_restart.push("metrics.listen".into());
        }
        let old_carriers: HashMap<&str, &CarrierConfig> = old.carriers.iter().map(|c| (c.name.as_str(), c)).collect();
        for c in &new.carriers {
            match old_carriers.get(c.name.as_str()) {
                None => report.needs_restart.push(format!("new carrier {}", c.name)),
                Some(o) if connection(o) != connection(c) => {
                    report.needs_restart.push(format!("carrier {} connection settings", c.name))
                }
                Some(_) => {}
            }
            if let Some(flow) = self.flows.get(&c.name) {
                flow.set_limits(c.rate, c.burst);
            }
        }
        if old.carriers.len() > new.carriers.iter().filter(|c| old_carriers.contains_key(c.name.as_str())).count() {
            report.needs_restart.push("removed carrier(s)".into());
        }
        if let Ok(mut c) = self.compliance.write() {
            *c = Arc::new(Compliance::new(&new.compliance));
        }
        if new.log.level != old.log.level
            && let Err(e) = crate::cli::set_log_filter(&new.log.level)
        {
            tracing::warn!(error = %e, "log level not changed");
        }
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(new);
        }
        report
    }
}
