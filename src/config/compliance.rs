//! `[compliance]` and its tables: keywords and replies, opt-out scope, quiet hours, category
//! policies, PHI content rules.

use serde::Deserialize;

use super::*;

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
