//! PHI content rules: what must never go out in an SMS. Each detector names a rule; the
//! matched text is never echoed (not in the API error, not in logs, not in the audit).

use regex::{Regex, RegexBuilder};

use crate::config::ContentConfig;

/// Compiled detectors.
#[derive(Debug, Clone)]
pub struct ContentRules {
    ssn: Option<(Regex, Regex)>,
    dob: Option<(Regex, Regex)>,
    mrn: Vec<Regex>,
    deny: Option<Regex>,
}

/// Builds a regex from a pattern that is a compile-time constant here.
fn fixed(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(pattern).case_insensitive(true).build().ok()
}

impl ContentRules {
    /// Compiles the configured rules (invalid patterns were refused by config validation and
    /// are skipped here).
    pub fn new(c: &ContentConfig) -> ContentRules {
        let ssn = c.ssn.then(|| {
            // 123-45-6789 / 123 45 6789 anywhere; a bare 9-digit number only after "SSN" or
            // "social security" (bare 9 digits are too often something else).
            fixed(r"\b(\d{3})[- ](\d{2})[- ](\d{4})\b")
                .zip(fixed(r"(ssn|social security)\D{0,20}(\d{3})-?(\d{2})-?(\d{4})\b"))
        });
        let dob = c.dob.then(|| {
            let date = r"(\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|\d{4}-\d{2}-\d{2}|(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2},? \d{4})";
            fixed(r"\b(dob|d\.o\.b\.?|date of birth|birth ?date|birthday|born)\b").zip(fixed(date))
        });
        let deny = (!c.deny_terms.is_empty()).then(|| {
            let alternatives: Vec<String> = c.deny_terms.iter().map(|t| regex::escape(t.trim())).collect();
            fixed(&format!(r"\b({})\b", alternatives.join("|")))
        });
        ContentRules {
            ssn: ssn.flatten(),
            dob: dob.flatten(),
            mrn: c.mrn_patterns.iter().filter_map(|p| Regex::new(p).ok()).collect(),
            deny: deny.flatten(),
        }
    }

    /// The first rule the text breaks, if any: `ssn`, `mrn`, `dob`, `deny_term`.
    pub fn check(&self, text: &str) -> Option<&'static str> {
        if let Some((separated, labelled)) = &self.ssn {
            let valid = |area: &str, group: &str, serial: &str| {
                area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
            };
            if separated.captures_iter(text).any(|c| valid(&c[1], &c[2], &c[3]))
                || labelled.captures_iter(text).any(|c| valid(&c[2], &c[3], &c[4]))
            {
                return Some("ssn");
            }
        }
        if self.mrn.iter().any(|r| r.is_match(text)) {
            return Some("mrn");
        }
        if let Some((label, date)) = &self.dob {
            // A date within 30 characters after (or before) a birth word.
            for m in label.find_iter(text) {
                let after = &text[m.end()..text.len().min(m.end() + 30)];
                let before = &text[m.start().saturating_sub(30)..m.start()];
                let before = before.get(..).unwrap_or("");
                if date.is_match(after) || date.is_match(before) {
                    return Some("dob");
                }
            }
        }
        if self.deny.as_ref().is_some_and(|d| d.is_match(text)) {
            return Some("deny_term");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> ContentRules {
        ContentRules::new(&ContentConfig {
            mrn_patterns: vec![r"(?i)\bMRN[:#\s]*\d{6,10}\b".into()],
            deny_terms: vec!["HIV".into(), "chlamydia".into(), "positive for".into()],
            ..ContentConfig::default()
        })
    }

    #[test]
    fn detects_each_rule() {
        let r = rules();
        assert_eq!(r.check("Your SSN 123-45-6789 is on file"), Some("ssn"));
        assert_eq!(r.check("ssn: 123456789"), Some("ssn"));
        assert_eq!(r.check("Patient MRN# 00123456 checked in"), Some("mrn"));
        assert_eq!(r.check("Confirm your DOB 04/12/1980 at the desk"), Some("dob"));
        assert_eq!(r.check("born on Jan 5, 1980"), Some("dob"));
        assert_eq!(r.check("Your HIV test is ready"), Some("deny_term"));
        assert_eq!(r.check("You tested Positive for flu"), Some("deny_term"));
    }

    #[test]
    fn ordinary_reminders_pass() {
        let r = rules();
        for t in [
            "Reminder: appointment on 04/12/2026 at 10:30, Dr. Smith, room 4",
            "Call us at 415-555-0123 to reschedule",
            "Your order 123456789 shipped",
            "Invalid SSN shapes: 000-12-3456 666-12-3456 123-00-4567",
            "HIVE of activity",
        ] {
            assert_eq!(r.check(t), None, "{t}");
        }
    }
}
