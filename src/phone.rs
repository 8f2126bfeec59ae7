//! E.164 phone numbers: validation at the API edge and masking everywhere else.
//!
//! A [`E164`] prints masked (`+1415***0123`) through both `Display` and `Debug`, so a number
//! that ends up in a log line or a panic message never shows in full. Code that really needs
//! the digits (the SMPP encoder, the at-rest sealer) asks for [`E164::as_str`] explicitly.

use std::fmt;

/// Why a string is not an acceptable destination number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// The string does not start with `+` followed by digits.
    #[error("must be in E.164 form: '+' followed by the country code and number, digits only")]
    NotE164,
    /// Digits in E.164 form, but no number plan allows it.
    #[error("is not a valid phone number for its country code")]
    Invalid,
}

/// A validated, normalised E.164 number (`+` and 8–15 digits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// Parses and validates a number against libphonenumber's metadata (via the `phonenumber`
    /// crate). Only the strict `+digits` form is accepted: senders who pass national formats
    /// or spaces get a clear error instead of a guess about which country they meant.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let digits = input.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
            return Err(PhoneError::NotE164);
        }
        let parsed = phonenumber::parse(None, input).map_err(|_| PhoneError::Invalid)?;
        if !parsed.is_valid() {
            return Err(PhoneError::Invalid);
        }
        Ok(E164(parsed.format().mode(phonenumber::Mode::E164).to_string()))
    }

    /// Wraps a number that was validated before (read back from the store, or from a carrier,
    /// where refusing it would lose a message). Only the syntax is checked.
    pub fn from_trusted(input: &str) -> Result<Self, PhoneError> {
        let digits = input.strip_prefix('+').ok_or(PhoneError::NotE164)?;
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::NotE164);
        }
        Ok(E164(input.to_string()))
    }

    /// The full number, `+` included. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without `+`, as SMPP carries an international number (TON 1, NPI 1).
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// The masked form used in logs: country code and area kept, three middle digits hidden, last four kept.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks any address-like string: keeps at most the first 5 and the last 4 characters and
/// hides at least three in between (`+15551234567` → `+1555***4567`). Short strings (sender
/// ids, short codes) are shown in part only.
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    if n <= 4 {
        return "*".repeat(n.max(1));
    }
    let keep_tail = if n >= 11 { 4 } else { 2 };
    let keep_head = (n - keep_tail).saturating_sub(3).min(5);
    let head: String = chars[..keep_head].iter().collect();
    let tail: String = chars[n - keep_tail..].iter().collect();
    format!("{head}***{tail}")
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "E164({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_numbers_and_normalises() {
        assert_eq!(E164::parse("+14155550123").unwrap().as_str(), "+14155550123");
        assert_eq!(E164::parse("+447911123456").unwrap().as_str(), "+447911123456");
    }

    #[test]
    fn rejects_non_e164_forms() {
        for bad in [
            "",
            "+",
            "14155550123",
            "+1 415 555 0123",
            "+1-415",
            "+0123456789",
            "++14155550123",
            "+1415555012345678",
            "+1４１５５５５０１２３",
        ] {
            assert_eq!(E164::parse(bad), Err(PhoneError::NotE164), "{bad:?}");
        }
    }

    #[test]
    fn rejects_numbers_no_plan_allows() {
        // 555 is not a NANP area code; +44 7700 900123 is Ofcom's drama range.
        assert_eq!(E164::parse("+15555550123"), Err(PhoneError::Invalid));
        assert_eq!(E164::parse("+999123456789"), Err(PhoneError::Invalid));
    }

    #[test]
    fn display_and_debug_are_masked() {
        let n = E164::parse("+14155550123").unwrap();
        assert_eq!(n.to_string(), "+1415***0123");
        assert!(!format!("{n:?}").contains("4155550123"));
        assert_eq!(mask("12345"), "***45");
        assert_eq!(mask("ACME"), "****");
    }
}
