//! The parts of the configuration that change on SIGHUP without dropping binds or accepted
//! messages: routes, API and queue limits, carriers' rate limits, compliance texts, keywords,
//! quiet hours, caps and content rules, log levels. Carrier connection settings (hosts, TLS,
//! credentials, binds) and the data directory need a restart; a reload that changes them
//! applies the rest and says so.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::compliance::Compliance;
use crate::config::Config;
use crate::flow::FlowControl;

/// The current configuration and what is compiled from it.
pub struct Live {
    config: RwLock<Arc<Config>>,
    compliance: RwLock<Arc<Compliance>>,
    flows: HashMap<String, Arc<FlowControl>>,
    /// The file the process started with: what restart-only keys are compared with.
    running: toml::Table,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Keys (dotted, carriers by name: `carriers.acme.port`) whose new values differ from
    /// what the process runs with and take effect only after a restart. Compared with the
    /// configuration the process started with, so a second reload of the same file says the
    /// same.
    pub needs_restart: Vec<String>,
}

/// Keys a reload applies at once; every other change needs a restart.
fn applies_live(path: &str) -> bool {
    const LIVE: [&str; 6] =
        ["routes", "queue", "compliance", "log.level", "api.max_body_chars", "dispatch.default_validity_secs"];
    if LIVE.iter().any(|k| path == *k || path.starts_with(&format!("{k}."))) {
        return true;
    }
    // A carrier's rate limit: carriers.<name>.rate / .burst.
    let mut parts = path.split('.');
    parts.next() == Some("carriers")
        && parts.next().is_some()
        && matches!(parts.next(), Some("rate" | "burst"))
        && parts.next().is_none()
}

/// Dotted paths of the keys whose values differ between `a` and `b`; arrays of carriers are
/// matched by name, other arrays compared whole.
fn changed_keys(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (a.get(key), b.get(key)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => changed_keys(&path, x, y, out),
            (Some(toml::Value::Array(x)), Some(toml::Value::Array(y))) if path == "carriers" => {
                changed_keys(&path, &by_name(x), &by_name(y), out)
            }
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
}

fn by_name(carriers: &[toml::Value]) -> toml::Table {
    carriers.iter().filter_map(|c| Some((c.get("name")?.as_str()?.to_string(), c.clone()))).collect()
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
        let running = config.raw.clone();
        Live { config: RwLock::new(config), compliance: RwLock::new(compliance), flows, running }
    }

    /// The configuration now.
    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    /// The compliance rules now.
    pub fn compliance(&self) -> Arc<Compliance> {
        read(&self.compliance)
    }

    /// Applies a new (already validated) configuration: what can change live does; the
    /// report lists what needs a restart.
    pub fn reload(&self, new: Config) -> ReloadReport {
        let old = self.config();
        let mut changed = Vec::new();
        changed_keys("", &self.running, &new.raw, &mut changed);
        let needs_restart = changed.into_iter().filter(|k| !applies_live(k)).collect();
        for c in &new.carriers {
            if let Some(flow) = self.flows.get(&c.name) {
                flow.set_limits(c.rate, c.burst);
            }
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
        ReloadReport { needs_restart }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn every_changed_key_is_named_and_live_ones_are_not_restart() {
        let a = table(
            "data_dir = \"d\"\n[api]\nlisten = \"127.0.0.1:1\"\nmax_body_chars = 10\n[[carriers]]\nname = \"x\"\nport = 1\nrate = 5\nenquire_link_secs = 30\n[[carriers]]\nname = \"y\"\nport = 2\n",
        );
        let b = table(
            "data_dir = \"d\"\n[api]\nlisten = \"127.0.0.1:2\"\nmax_body_chars = 20\n[[carriers]]\nname = \"y\"\nport = 2\n[[carriers]]\nname = \"x\"\nport = 1\nrate = 9\nenquire_link_secs = 10\n[[carriers]]\nname = \"z\"\nport = 3\n",
        );
        let mut changed = Vec::new();
        changed_keys("", &a, &b, &mut changed);
        let restart: Vec<&String> = changed.iter().filter(|k| !applies_live(k)).collect();
        assert_eq!(restart, ["api.listen", "carriers.x.enquire_link_secs", "carriers.z"]);
        assert!(
            changed.contains(&"carriers.x.rate".to_string()) && changed.contains(&"api.max_body_chars".to_string())
        );
    }
}
