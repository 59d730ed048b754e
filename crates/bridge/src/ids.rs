//! Identifiers that cross module boundaries: WhatsApp call ids and phone numbers (masked in logs),
//! and [`LogSafe`] for any outside text that reaches a log line.

use std::fmt;

use serde::{Deserialize, Serialize};

mod log_safe;

pub use log_safe::{LOG_FIELD_CHARS, LogSafe};

/// Longest call id accepted from a webhook. Real ids (`wacid.` and a base64 blob) are about 110
/// characters; anything longer is not Meta's and would cost memory in every map keyed by it.
pub const MAX_CALL_ID_CHARS: usize = 128;
/// Longest phone number accepted (E.164 allows 15 digits; margin for odd formats).
pub const MAX_PHONE_DIGITS: usize = 20;

/// Why a call id from outside was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallIdError {
    #[error("the call id is empty")]
    Empty,
    #[error("the call id is longer than {MAX_CALL_ID_CHARS} characters")]
    TooLong,
    #[error("the call id has a character outside A-Z a-z 0-9 . _ - + / = :")]
    BadCharacter,
}

/// Meta's call identifier (`wacid.…`). Opaque: never parsed, only compared and echoed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(String);

impl CallId {
    /// Wraps an id the bridge already trusts (its own tests, Meta's Graph API responses). Ids
    /// from webhooks and admin requests go through [`CallId::parse`].
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// An id from outside: non-empty, at most [`MAX_CALL_ID_CHARS`], and only the characters of
    /// Meta's ids (ASCII letters and digits, `. _ - + / = :`; base64 and its URL-safe form).
    pub fn parse(id: &str) -> Result<Self, CallIdError> {
        if id.is_empty() {
            return Err(CallIdError::Empty);
        }
        if id.len() > MAX_CALL_ID_CHARS {
            return Err(CallIdError::TooLong);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b".-_+/=:".contains(&b);
        if !id.bytes().all(allowed) {
            return Err(CallIdError::BadCharacter);
        }
        Ok(Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Escaped and truncated ([`LogSafe`]): an id made with [`CallId::new`] is not checked, and
/// a log line must not be forged through it whatever it holds.
impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        LogSafe::truncated(&self.0, MAX_CALL_ID_CHARS).fmt(f)
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({self})")
    }
}

/// A WhatsApp user's phone number as Meta sends it: digits, no `+`.
///
/// `Display` and `Debug` mask the middle digits (`+9198****3421`) so the number cannot leak into
/// logs; [`PhoneNumber::as_str`] gives the full value for the Graph API and the store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Accepts the digits with or without a leading `+`; keeps only the digits.
    pub fn new(number: impl AsRef<str>) -> Self {
        Self(
            number
                .as_ref()
                .chars()
                .filter(char::is_ascii_digit)
                .collect(),
        )
    }

    /// A number given by a person (the admin API): 6 to 15 digits (E.164's most), optionally
    /// after `+`; anything else (spaces, letters, too short or long) is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix('+').unwrap_or(text);
        ((6..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| Self(digits.to_owned()))
    }

    /// The full number, digits only. Never log this.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `+` and the first four digits, `****`, the last four digits; short numbers are all stars.
    pub fn masked(&self) -> String {
        let digits = &self.0;
        if digits.len() <= 8 {
            return format!("+{}", "*".repeat(digits.len()));
        }
        format!("+{}****{}", &digits[..4], &digits[digits.len() - 4..])
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_are_masked_when_displayed() {
        let number = PhoneNumber::new("+919812343421");
        assert_eq!(number.to_string(), "+9198****3421");
        assert_eq!(format!("{number:?}"), "PhoneNumber(+9198****3421)");
        assert_eq!(number.as_str(), "919812343421");
    }

    #[test]
    fn only_six_to_fifteen_digits_parse_as_a_number() {
        assert_eq!(
            PhoneNumber::parse("+447700900123").map(|n| n.as_str().to_owned()),
            Some("447700900123".to_owned())
        );
        for bad in [
            "",
            "+",
            "12345",
            "1234567890123456",
            "44 7700 900123",
            "4477OO900123",
            "++447700900123",
        ] {
            assert_eq!(PhoneNumber::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn call_ids_from_outside_are_bounded_and_of_a_safe_charset() {
        let real = "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggN0ExQzlEMkU0QjZGOEEwQzNFNUQ3RjlCMUQzRTVGN0EcGAsxNTU1MDAwMTExMRUCABUKAA==";
        assert_eq!(
            CallId::parse(real).map(|id| id.to_string()),
            Ok(real.to_owned())
        );
        assert_eq!(CallId::parse(""), Err(CallIdError::Empty));
        let long = format!("wacid.{}", "A".repeat(MAX_CALL_ID_CHARS));
        assert_eq!(CallId::parse(&long), Err(CallIdError::TooLong));
        assert!(CallId::parse(&long[..MAX_CALL_ID_CHARS]).is_ok());
        for bad in ["wacid.1\nERROR", "wacid.1 2", "wacid.é", "wacid.\u{0}"] {
            assert_eq!(
                CallId::parse(bad),
                Err(CallIdError::BadCharacter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_unchecked_call_id_is_escaped_when_displayed() {
        let id = CallId::new("wacid.1\nERROR forged");
        assert_eq!(id.to_string(), "wacid.1\\nERROR forged");
        assert_eq!(format!("{id:?}"), "CallId(wacid.1\\nERROR forged)");
    }

    #[test]
    fn short_numbers_are_fully_masked() {
        assert_eq!(PhoneNumber::new("12345").to_string(), "+*****");
    }

    #[test]
    fn a_typed_number_is_6_to_15_digits_after_an_optional_plus() {
        assert_eq!(
            PhoneNumber::parse("+447700900123").map(|p| p.as_str().to_owned()),
            Some("447700900123".to_owned())
        );
        assert!(PhoneNumber::parse("447700900123").is_some());
        for bad in [
            "",
            "+",
            "12345",
            "1234567890123456",
            "44 7700 900123",
            "44770090012a",
            "++447700900123",
        ] {
            assert_eq!(PhoneNumber::parse(bad), None, "{bad}");
        }
    }
}
