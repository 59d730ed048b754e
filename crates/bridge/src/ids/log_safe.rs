//! Text from outside (ids, names, Meta's error messages) made safe to log: escaped and cut short.
//!
//! A `\n` inside a call id would otherwise start a forged log line, and a megabyte of error text
//! would land in the log as is. [`LogSafe`] escapes every control character the way Rust's
//! `escape_debug` does (`\n` → `\\n`, others as `\u{…}`) and truncates after a number of
//! characters, marking the cut with `…(N more chars)`.

use std::fmt::{self, Write as _};

/// Characters of outside text kept in one log field unless a caller asks for fewer.
pub const LOG_FIELD_CHARS: usize = 128;

/// Displays `text` escaped and truncated to `max_chars` characters (before escaping).
#[derive(Clone, Copy)]
pub struct LogSafe<'a> {
    text: &'a str,
    max_chars: usize,
}

impl<'a> LogSafe<'a> {
    /// At most [`LOG_FIELD_CHARS`] characters.
    pub fn new(text: &'a str) -> Self {
        Self::truncated(text, LOG_FIELD_CHARS)
    }

    /// At most `max_chars` characters.
    pub fn truncated(text: &'a str, max_chars: usize) -> Self {
        Self { text, max_chars }
    }
}

impl fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.text.chars();
        for c in chars.by_ref().take(self.max_chars) {
            if c.is_control() || c == '\\' {
                for escaped in c.escape_debug() {
                    f.write_char(escaped)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        let rest = chars.count();
        if rest > 0 {
            write!(f, "…({rest} more chars)")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LogSafe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_no_line_can_be_forged() {
        let text = "wacid.1\nERROR forged line\r\t\u{1b}[31m";
        let shown = LogSafe::new(text).to_string();
        assert_eq!(shown, "wacid.1\\nERROR forged line\\r\\t\\u{1b}[31m");
        assert!(!shown.chars().any(char::is_control), "{shown}");
    }

    #[test]
    fn a_backslash_is_escaped_so_an_escape_cannot_be_faked() {
        assert_eq!(LogSafe::new("a\\nb").to_string(), "a\\\\nb");
    }

    #[test]
    fn long_text_is_cut_with_the_count_of_what_was_left_out() {
        let text = "x".repeat(1_000_000);
        assert_eq!(
            LogSafe::truncated(&text, 5).to_string(),
            "xxxxx…(999995 more chars)"
        );
        assert_eq!(LogSafe::truncated("short", 5).to_string(), "short");
        assert_eq!(format!("{:?}", LogSafe::new("ok")), "\"ok\"");
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(
            LogSafe::truncated("éééé", 2).to_string(),
            "éé…(2 more chars)"
        );
    }
}
