//! [`Config::validate`]: every problem with the values at once, one sentence each, prefixed
//! with the key path (`check-config` lists them all with their lines).

use super::*;

impl Config {
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
}
