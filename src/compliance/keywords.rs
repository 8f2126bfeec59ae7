//! Keyword matching on inbound texts: opt-out, opt-in, help.
//!
//! The whole message is matched after trimming, case-folding and dropping punctuation
//! ("Stop." and " stop! " are STOP; "opt-out" is OPTOUT). Besides exact keywords, the FCC's
//! 2024 rule makes any reasonable opt-out request binding, so a short message (at most
//! `reasonable_optout_max_words` words) whose words include an opt-out keyword ("stop texting
//! me", "please unsubscribe") is an opt-out too; which rule matched is reported and audited.

use crate::config::ComplianceConfig;

/// What an inbound text asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keyword {
    /// Stop messages; `rule` is `exact` or `reasonable`.
    OptOut {
        /// The keyword found (normalised).
        keyword: String,
        /// `exact` or `reasonable`.
        rule: &'static str,
    },
    /// Resume messages.
    OptIn(String),
    /// Ask for help.
    Help(String),
    /// Anything else.
    None,
}

/// Upper-cases, drops punctuation and symbols, collapses whitespace.
pub fn normalize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .flat_map(char::to_uppercase)
        .filter_map(|c| {
            if c.is_alphanumeric() {
                Some(c)
            } else if c.is_whitespace() {
                Some(' ')
            } else {
                None
            }
        })
        .collect();
    cleaned.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The keyword lists, normalised once.
#[derive(Debug, Clone)]
pub struct Keywords {
    optout: Vec<String>,
    optin: Vec<String>,
    help: Vec<String>,
    max_words: usize,
}

impl Keywords {
    /// From the configuration.
    pub fn new(c: &ComplianceConfig) -> Keywords {
        let norm = |v: &[String]| v.iter().map(|k| normalize(k)).filter(|k| !k.is_empty()).collect();
        Keywords {
            optout: norm(&c.optout_keywords),
            optin: norm(&c.optin_keywords),
            help: norm(&c.help_keywords),
            max_words: c.reasonable_optout_max_words,
        }
    }

    /// Classifies one inbound text.
    pub fn classify(&self, text: &str) -> Keyword {
        let t = normalize(text);
        if let Some(k) = self.optout.iter().find(|k| **k == t) {
            return Keyword::OptOut { keyword: k.clone(), rule: "exact" };
        }
        if let Some(k) = self.optin.iter().find(|k| **k == t) {
            return Keyword::OptIn(k.clone());
        }
        if let Some(k) = self.help.iter().find(|k| **k == t) {
            return Keyword::Help(k.clone());
        }
        let words: Vec<&str> = t.split(' ').filter(|w| !w.is_empty()).collect();
        if self.max_words > 0 && words.len() <= self.max_words {
            // Single-word keywords against each word, multi-word ones ("OPT OUT") against runs.
            for k in &self.optout {
                let n = k.split(' ').count();
                if words.windows(n).any(|w| w.join(" ") == *k) {
                    return Keyword::OptOut { keyword: k.clone(), rule: "reasonable" };
                }
            }
        }
        Keyword::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw() -> Keywords {
        let mut c = ComplianceConfig::default();
        c.optout_keywords.extend(["ALTO".to_string(), "PARAR".to_string()]);
        Keywords::new(&c)
    }

    fn out(k: &Keyword) -> Option<(&str, &str)> {
        match k {
            Keyword::OptOut { keyword, rule } => Some((keyword.as_str(), *rule)),
            _ => None,
        }
    }

    #[test]
    fn exact_keywords_in_any_case_and_punctuation() {
        let k = kw();
        for t in [
            "STOP",
            "stop",
            " Stop. ",
            "STOP!!!",
            "stop all",
            "Stop-All",
            "opt out",
            "Opt-Out",
            "OPTOUT",
            "revoke",
            "Unsubscribe",
            "alto",
            "PARAR",
        ] {
            assert_eq!(out(&k.classify(t)).map(|o| o.1), Some("exact"), "{t:?}");
        }
        assert_eq!(k.classify("start"), Keyword::OptIn("START".into()));
        assert_eq!(k.classify("Yes!"), Keyword::OptIn("YES".into()));
        assert_eq!(k.classify("help?"), Keyword::Help("HELP".into()));
        assert_eq!(k.classify("INFO"), Keyword::Help("INFO".into()));
    }

    #[test]
    fn short_messages_with_an_opt_out_word_are_reasonable_opt_outs() {
        let k = kw();
        assert_eq!(out(&k.classify("stop texting me")), Some(("STOP", "reasonable")));
        assert_eq!(out(&k.classify("please unsubscribe")), Some(("UNSUBSCRIBE", "reasonable")));
        assert_eq!(out(&k.classify("please opt out now")), Some(("OPT OUT", "reasonable")));
        // Too long to be a plain request under the default 4 words.
        assert_eq!(k.classify("I will stop by the clinic at noon"), Keyword::None);
        assert_eq!(k.classify("See you tomorrow"), Keyword::None);
        assert_eq!(k.classify("stopwatch"), Keyword::None, "whole words only");
        assert_eq!(k.classify(""), Keyword::None);
    }

    #[test]
    fn the_reasonable_rule_can_be_turned_off() {
        let c = ComplianceConfig { reasonable_optout_max_words: 0, ..ComplianceConfig::default() };
        assert_eq!(Keywords::new(&c).classify("stop texting me"), Keyword::None);
    }
}
