//! Healthcare compliance, enforced in the gateway: opt-outs and keywords (TCPA/CTIA, FCC 2024
//! revocation rule), consent, quiet hours, the FCC 15-72 healthcare frequency caps, PHI
//! content rules. Checked at accept and again at dispatch.

pub mod content;
pub mod keywords;
pub mod quiet;
pub mod registry;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::config::{CategoryPolicy, ComplianceConfig, ContentAction, OptOutScope};
use crate::crypto::Crypto;
use crate::message::{Message, MessageKind};
use crate::store::{QuotaGuard, Store, StoreError};
use content::ContentRules;
use keywords::{Keyword, Keywords};
use quiet::QuietWindow;

/// Why accept refuses a message (all 422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The recipient opted out (in a scope that covers this sender).
    OptedOut,
    /// `require_consent` and no recorded opt-in.
    ConsentRequired,
    /// A content rule matched (`ssn`, `mrn`, `dob`, `deny_term`, `max_chars`).
    Content(&'static str),
    /// The category's frequency cap is reached; the next send is allowed at this time (ms).
    FrequencyCap {
        /// Earliest time another message of this category may go to this recipient.
        next_allowed_ms: u64,
        /// `max_per_day` or `max_per_week`.
        limit: &'static str,
    },
}

/// What accept must do with a message that passes.
#[derive(Debug, Clone, Default)]
pub struct AcceptPlan {
    /// Moved out of quiet hours, if it fell inside.
    pub due_ms: Option<u64>,
    /// Content rules that matched under `flag`.
    pub flags: Vec<&'static str>,
    /// Frequency counters to add to the commit's guard.
    pub quotas: Vec<QuotaGuard>,
    /// The recipient's zone, as resolved.
    pub recipient_tz: String,
}

/// What dispatch does with a due message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispatchVerdict {
    /// Send it.
    Proceed,
    /// Do not send it: final status `blocked` with this code.
    Block(&'static str),
    /// Not now: quiet hours until this time (ms).
    Defer(u64),
}

/// The compiled compliance rules.
pub struct Compliance {
    config: ComplianceConfig,
    keywords: Keywords,
    content: ContentRules,
    quiet: Option<QuietWindow>,
    default_tz: String,
    policies: HashMap<String, CategoryPolicy>,
    reply_last: Mutex<HashMap<String, u64>>,
}

fn local_day(ms: u64, tz: &jiff::tz::TimeZone, offset_days: i64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .ok()
        .map(|t| t.to_zoned(tz.clone()).date())
        .and_then(|d| d.checked_add(jiff::Span::new().days(offset_days)).ok())
        .map(|d| d.strftime("%Y%m%d").to_string())
        .unwrap_or_default()
}

/// Local midnight starting the day `offset_days` after the local day of `ms`.
fn local_midnight(ms: u64, tz: &jiff::tz::TimeZone, offset_days: i64) -> u64 {
    jiff::Timestamp::from_millisecond(ms as i64)
        .ok()
        .map(|t| t.to_zoned(tz.clone()).date())
        .and_then(|d| d.checked_add(jiff::Span::new().days(offset_days)).ok())
        .and_then(|d| d.to_zoned(tz.clone()).ok())
        .and_then(|z| u64::try_from(z.timestamp().as_millisecond()).ok())
        .unwrap_or(ms + 86_400_000)
}

impl Compliance {
    /// Compiles the configuration.
    pub fn new(config: &ComplianceConfig) -> Compliance {
        let quiet = config
            .quiet_hours
            .as_ref()
            .and_then(|q| Some(QuietWindow { start: quiet::parse_hhmm(&q.start)?, end: quiet::parse_hhmm(&q.end)? }));
        Compliance {
            keywords: Keywords::new(config),
            content: ContentRules::new(&config.content),
            quiet,
            default_tz: config.quiet_hours.as_ref().map(|q| q.default_timezone.clone()).unwrap_or_else(|| "UTC".into()),
            policies: config.category_policies.iter().map(|p| (p.category.clone(), p.clone())).collect(),
            reply_last: Mutex::new(HashMap::new()),
            config: config.clone(),
        }
    }

    /// Classifies an inbound text.
    pub fn classify(&self, text: &str) -> Keyword {
        self.keywords.classify(text)
    }

    /// The automatic reply to `kind`: the owning account's own text, else the configured
    /// one; `{sender}` is the address texted, `{name}` the account's display name. An
    /// account's reply that does not name it starts with "{name}: ", so a patient knows who
    /// answered (the `default` account keeps the configured texts as they are).
    pub fn reply(&self, kind: &Keyword, sender: &str, account: Option<&crate::accounts::Account>) -> Option<String> {
        let own = account.map(|a| &a.replies);
        let text = match kind {
            Keyword::OptOut { .. } => own.and_then(|r| r.optout.as_ref()).unwrap_or(&self.config.optout_reply),
            Keyword::OptIn(_) => own.and_then(|r| r.optin.as_ref()).unwrap_or(&self.config.optin_reply),
            Keyword::Help(_) => own.and_then(|r| r.help.as_ref()).unwrap_or(&self.config.help_reply),
            Keyword::None => return None,
        };
        let mut text = text.clone();
        if account.is_some_and(|a| a.name != crate::accounts::DEFAULT) && !text.contains("{name}") {
            text = format!("{{name}}: {text}");
        }
        let name = account.map(|a| a.display_name.as_str()).unwrap_or(sender);
        Some(text.replace("{name}", name).replace("{sender}", sender))
    }

    /// Opt-out scope for a keyword sent to `our_address`, owned by `account`. In `account`
    /// mode a STOP to an address no account owns is global: a STOP is never dropped.
    pub fn optout_scope(&self, our_address: &str, account: Option<&str>) -> String {
        match (self.config.optout_scope, account) {
            (OptOutScope::Global, _) | (OptOutScope::Account, None) => registry::GLOBAL.to_string(),
            (OptOutScope::Account, Some(a)) => registry::account_scope(a),
            (OptOutScope::Sender, _) => our_address.to_string(),
        }
    }

    /// Scopes checked for a send of `account` that may leave from any of `senders` (its
    /// `from`, or the default sources of the carriers it may go through): always the global
    /// one, and the account's own or each sender's, as configured.
    pub fn scopes(&self, account: &str, senders: &[String]) -> Vec<String> {
        match self.config.optout_scope {
            OptOutScope::Global => registry::scopes_for(false, senders),
            OptOutScope::Sender => registry::scopes_for(true, senders),
            OptOutScope::Account => vec![registry::GLOBAL.to_string(), registry::account_scope(account)],
        }
    }

    /// Whether an automatic reply of `kind` ("help", "optin") may go to `idx` now (at most
    /// one of each kind per interval); records it.
    pub fn reply_allowed(&self, kind: &str, idx: &str, now: u64) -> bool {
        let Ok(mut last) = self.reply_last.lock() else { return false };
        let interval = self.config.keyword_reply_interval_secs * 1000;
        let key = format!("{kind}:{idx}");
        if last.get(&key).is_some_and(|&t| now < t + interval) {
            return false;
        }
        last.insert(key, now);
        if last.len() > 100_000 {
            last.retain(|_, t| now < *t + interval);
        }
        true
    }

    fn zone(&self, msg: &Message, explicit: Option<&str>) -> jiff::tz::TimeZone {
        quiet::recipient_zone(explicit.or(msg.recipient_tz.as_deref()), &msg.content.to, &self.default_tz)
    }

    /// Checks a new message; `senders` are the addresses it may leave from (see
    /// `Config::effective_senders`), `content_action` is the key's override or the configured
    /// action.
    pub fn check_accept(
        &self,
        store: &Store,
        crypto: &Crypto,
        msg: &Message,
        senders: &[String],
        recipient_timezone: Option<&str>,
        content_action: Option<ContentAction>,
    ) -> Result<Result<AcceptPlan, Rejection>, StoreError> {
        let tz = self.zone(msg, recipient_timezone);
        let mut plan =
            AcceptPlan { recipient_tz: tz.iana_name().unwrap_or("UTC").to_string(), ..AcceptPlan::default() };
        if msg.kind == MessageKind::AutoReply {
            return Ok(Ok(plan));
        }
        let idx = crypto.blind_index(&msg.content.to);
        if registry::find_optout(store, &idx, &self.scopes(&msg.account, senders))?.is_some() {
            return Ok(Err(Rejection::OptedOut));
        }
        if self.config.require_consent && !registry::has_consent(store, &idx)? {
            return Ok(Err(Rejection::ConsentRequired));
        }
        let policy = msg.category.as_deref().and_then(|c| self.policies.get(c));
        if let Some(max) = policy.and_then(|p| p.max_chars)
            && msg.content.body.chars().count() > max
        {
            return Ok(Err(Rejection::Content("max_chars")));
        }
        if let Some(rule) = self.content.check(&msg.content.body) {
            match content_action.unwrap_or(self.config.content.action) {
                ContentAction::Reject => return Ok(Err(Rejection::Content(rule))),
                ContentAction::Flag => plan.flags.push(rule),
            }
        }
        let urgent = msg.category.as_deref() == Some("urgent");
        let mut due = msg.due_ms;
        if let Some(w) = &self.quiet
            && !urgent
            && let Some(release) = w.release_time(due, &tz)
        {
            due = release;
            plan.due_ms = Some(release);
        }
        if let (Some(p), Some(category)) = (policy, msg.category.as_deref()) {
            let day_key = |offset| registry::frequency_key(&idx, category, &local_day(due, &tz, offset));
            if let Some(max) = p.max_per_day {
                if store.counter(&day_key(0))? >= u64::from(max) {
                    let next = local_midnight(due, &tz, 1);
                    return Ok(Err(Rejection::FrequencyCap { next_allowed_ms: next, limit: "max_per_day" }));
                }
                plan.quotas.push(QuotaGuard {
                    key: day_key(0),
                    also: vec![],
                    amount: 1,
                    adds: true,
                    limit: max.into(),
                    label: "max_per_day".into(),
                });
            }
            if let Some(max) = p.max_per_week {
                let counts: Vec<u64> = (0..7).map(|d| store.counter(&day_key(-d))).collect::<Result<_, _>>()?;
                if counts.iter().sum::<u64>() >= u64::from(max) {
                    // The oldest day with a message leaves the 7-day window first.
                    let oldest = (0..7).rev().find(|&d| counts[d as usize] > 0).unwrap_or(6);
                    let next = local_midnight(due, &tz, 7 - oldest);
                    return Ok(Err(Rejection::FrequencyCap { next_allowed_ms: next, limit: "max_per_week" }));
                }
                let also = (1..7).map(|d| day_key(-d)).collect();
                plan.quotas.push(QuotaGuard {
                    key: day_key(0),
                    also,
                    amount: 1,
                    // Today's counter counts once, whichever limits look at it.
                    adds: p.max_per_day.is_none(),
                    limit: max.into(),
                    label: "max_per_week".into(),
                });
            }
        }
        Ok(Ok(plan))
    }

    /// Checks a message about to be submitted from `sender` (its `from`, or the carrier's
    /// default source): opt-outs and consent may have changed since accept, and a retry may
    /// have drifted into quiet hours.
    pub fn check_dispatch(
        &self,
        store: &Store,
        crypto: &Crypto,
        msg: &Message,
        sender: Option<&str>,
        now: u64,
    ) -> Result<DispatchVerdict, StoreError> {
        if msg.kind == MessageKind::AutoReply {
            return Ok(DispatchVerdict::Proceed);
        }
        let idx = crypto.blind_index(&msg.content.to);
        let senders: Vec<String> = sender.map(String::from).into_iter().collect();
        if registry::find_optout(store, &idx, &self.scopes(&msg.account, &senders))?.is_some() {
            return Ok(DispatchVerdict::Block("recipient_opted_out"));
        }
        if self.config.require_consent && !registry::has_consent(store, &idx)? {
            return Ok(DispatchVerdict::Block("consent_required"));
        }
        let urgent = msg.category.as_deref() == Some("urgent");
        if let Some(w) = &self.quiet
            && !urgent
            && let Some(release) = w.release_time(now, &self.zone(msg, None))
        {
            return Ok(DispatchVerdict::Defer(release));
        }
        Ok(DispatchVerdict::Proceed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_scope(scope: OptOutScope) -> Compliance {
        Compliance::new(&ComplianceConfig { optout_scope: scope, ..ComplianceConfig::default() })
    }

    #[test]
    fn a_stop_reaches_as_far_as_the_scope_says() {
        let global = with_scope(OptOutScope::Global);
        assert_eq!(global.optout_scope("+14155550100", Some("clinic")), registry::GLOBAL);
        assert_eq!(global.scopes("pharmacy", &["+14155550200".into()]), [registry::GLOBAL]);
        let account = with_scope(OptOutScope::Account);
        assert_eq!(account.optout_scope("+14155550100", Some("clinic")), "acct:clinic");
        assert_eq!(account.optout_scope("+14155550199", None), registry::GLOBAL, "an unowned address: global");
        assert_eq!(account.scopes("pharmacy", &[]), [registry::GLOBAL.to_string(), "acct:pharmacy".into()]);
        let sender = with_scope(OptOutScope::Sender);
        assert_eq!(sender.optout_scope("+14155550100", Some("clinic")), "+14155550100");
        assert_eq!(sender.scopes("clinic", &["+14155550100".into()]), [registry::GLOBAL, "+14155550100"]);
    }

    #[test]
    fn replies_name_the_account_and_use_its_own_texts() {
        let c = with_scope(OptOutScope::Global);
        let stop = Keyword::OptOut { keyword: "STOP".into(), rule: "exact" };
        let mut clinic = crate::accounts::Account::new("clinic", "Main St Clinic", vec![]);
        let reply = c.reply(&stop, "+14155550100", Some(&clinic)).unwrap();
        assert!(reply.starts_with("Main St Clinic: You have been unsubscribed"), "{reply}");
        assert!(reply.contains("+14155550100"), "{reply}");
        clinic.replies.help = Some("{name} helps at 555-0100.".into());
        assert_eq!(
            c.reply(&Keyword::Help("HELP".into()), "x", Some(&clinic)).unwrap(),
            "Main St Clinic helps at 555-0100."
        );
        let default = crate::accounts::Account::new(crate::accounts::DEFAULT, "default", vec![]);
        assert!(
            c.reply(&stop, "CLINIC", Some(&default)).unwrap().starts_with("You have been"),
            "default: as configured"
        );
        assert_eq!(c.reply(&Keyword::None, "x", Some(&clinic)), None);
    }

    #[test]
    fn local_days_and_midnights_follow_the_zone() {
        let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let ms = "2026-11-23T03:30:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64; // 22:30 on the 22nd
        assert_eq!(local_day(ms, &tz, 0), "20261122");
        assert_eq!(local_day(ms, &tz, -6), "20261116");
        let next = local_midnight(ms, &tz, 1);
        assert_eq!(crate::message::rfc3339(next), "2026-11-23T05:00:00.000Z");
    }
}
