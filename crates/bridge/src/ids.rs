//! Identifiers that cross module boundaries: WhatsApp call ids and phone numbers (masked in logs).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Meta's call identifier (`wacid.…`). Opaque: never parsed, only compared and echoed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(String);

impl CallId {
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallId({})", self.0)
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
