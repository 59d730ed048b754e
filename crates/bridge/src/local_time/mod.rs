//! The caller's local time: which time zone a caller lives in (the one they stated, else the one
//! their number says, from libphonenumber's time-zone map), the date and time the AI is told,
//! and the times the AI passes to tools, read in that zone and checked (not in the past, not in
//! a daylight-saving gap) before they reach the store.

mod phone_zones;

use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::ids::PhoneNumber;

/// Where a caller's zone came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneSource {
    /// The caller said where they are (`set_time_zone`).
    Stated,
    /// Their number's prefix maps to this one zone.
    Number,
    /// Their number's country spans several zones (or the number is hidden or unknown): a
    /// guess; the AI is asked to check with the caller.
    Guess,
}

/// The time zone the bridge uses for one caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerZone {
    pub zone: Tz,
    pub source: ZoneSource,
}

/// Why a time from the AI was not used; the text is a line the AI can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "\"{0}\" is not a time I can read; use the caller's local time as YYYY-MM-DDTHH:MM (or ISO 8601 with an offset)."
    )]
    Unreadable(String),
    #[error(
        "{0} is in the past for the caller (it is now {1}). Ask the caller for a time in the future."
    )]
    Past(String, String),
    #[error(
        "{0} does not exist in {1}: the clocks go forward at that time. Ask the caller for another time, e.g. an hour later."
    )]
    Nonexistent(String, String),
}

/// The zones numbers starting with `digits` (E.164 without `+`) belong to, by the longest
/// prefix that libphonenumber knows; empty when no prefix matches.
fn zones_for_digits(digits: &str) -> Vec<Tz> {
    let longest = (1..=digits.len().min(10)).rev().find_map(|len| {
        phone_zones::PREFIX_ZONES
            .binary_search_by(|(prefix, _)| (*prefix).cmp(&digits[..len]))
            .ok()
    });
    longest
        .map(|at| phone_zones::PREFIX_ZONES[at].1)
        .unwrap_or_default()
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect()
}

/// The zone of a number: `Number` when its prefix names one zone, `Guess` (the prefix's first
/// zone, or UTC) otherwise.
pub fn zone_for_number(phone: &PhoneNumber) -> CallerZone {
    let zones = zones_for_digits(phone.as_str());
    match zones.as_slice() {
        [one] => CallerZone {
            zone: *one,
            source: ZoneSource::Number,
        },
        more => CallerZone {
            zone: more.first().copied().unwrap_or(Tz::UTC),
            source: ZoneSource::Guess,
        },
    }
}

/// The caller's zone: the one they stated when it is a zone the tz database knows, else their
/// number's, else UTC (a guess).
pub fn caller_zone(phone: Option<&PhoneNumber>, stated: Option<&str>) -> CallerZone {
    if let Some(zone) = stated.and_then(|name| name.parse::<Tz>().ok()) {
        return CallerZone {
            zone,
            source: ZoneSource::Stated,
        };
    }
    match phone {
        Some(phone) => zone_for_number(phone),
        None => CallerZone {
            zone: Tz::UTC,
            source: ZoneSource::Guess,
        },
    }
}

/// Parses an IANA zone name the caller's words were resolved to ("Europe/Berlin").
pub fn parse_zone(name: &str) -> Option<Tz> {
    name.trim().parse().ok()
}

/// Local time formats the AI may use (no offset: the caller's zone applies).
const LOCAL_FORMATS: [&str; 4] = [
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
];

impl CallerZone {
    /// The line for the AI's instructions: the caller's date, weekday and time now.
    pub fn now_line(&self, now: DateTime<Utc>) -> String {
        let local = now.with_timezone(&self.zone);
        let mut line = format!(
            "For the caller it is now {} ({}, {}, UTC{}).",
            local.format("%A %-d %B %Y, %H:%M"),
            local.format("%Y-%m-%dT%H:%M"),
            self.zone.name(),
            local.format("%:z"),
        );
        match self.source {
            ZoneSource::Stated => line.push_str(" The caller chose this time zone."),
            ZoneSource::Number => line.push_str(" The time zone comes from the caller's number."),
            ZoneSource::Guess => line.push_str(
                " This time zone is a guess: before setting a time, ask where the caller is and \
                 call set_time_zone.",
            ),
        }
        line.push_str(
            " Pass times to tools in the caller's local time (YYYY-MM-DDTHH:MM); they are read \
             back in local time.",
        );
        line
    }

    /// A time from the AI: with an offset it is taken as is; without one it is the caller's
    /// local time. Refused when unreadable, in a daylight-saving gap, or not after `now`. A
    /// local time that occurs twice (clocks going back) is the first of the two.
    pub fn parse_future(&self, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, TimeError> {
        let time = self.parse(text)?;
        if time <= now {
            return Err(TimeError::Past(self.format(time), self.format(now)));
        }
        Ok(time)
    }

    /// A time from the AI, in the past or future (see [`Self::parse_future`]).
    pub fn parse(&self, text: &str) -> Result<DateTime<Utc>, TimeError> {
        let text = text.trim();
        if let Ok(time) = DateTime::parse_from_rfc3339(text) {
            return Ok(time.with_timezone(&Utc));
        }
        let naive = LOCAL_FORMATS
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
            .ok_or_else(|| TimeError::Unreadable(text.to_owned()))?;
        match self.zone.from_local_datetime(&naive) {
            LocalResult::Single(time) | LocalResult::Ambiguous(time, _) => {
                Ok(time.with_timezone(&Utc))
            }
            LocalResult::None => Err(TimeError::Nonexistent(
                naive.format("%Y-%m-%d %H:%M").to_string(),
                self.zone.name().to_owned(),
            )),
        }
    }

    /// A time as the caller reads it: local, with the offset and the weekday.
    pub fn format(&self, time: DateTime<Utc>) -> String {
        let local = time.with_timezone(&self.zone);
        format!(
            "{} ({} {})",
            local.format("%Y-%m-%dT%H:%M%:z"),
            local.weekday(),
            self.zone.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn every_zone_in_the_prefix_table_is_one_the_tz_database_knows_and_prefixes_are_sorted() {
        for (prefix, zones) in phone_zones::PREFIX_ZONES {
            for zone in *zones {
                assert!(zone.parse::<Tz>().is_ok(), "{prefix}: {zone}");
            }
        }
        assert!(
            phone_zones::PREFIX_ZONES
                .windows(2)
                .all(|pair| pair[0].0 < pair[1].0)
        );
    }

    #[test]
    fn a_uk_number_is_in_london_and_us_numbers_by_their_area_code() {
        let uk = zone_for_number(&PhoneNumber::new("447700900123"));
        assert_eq!(
            (uk.zone, uk.source),
            (Tz::Europe__London, ZoneSource::Number)
        );
        let new_york = zone_for_number(&PhoneNumber::new("12125550123"));
        assert_eq!(new_york.zone, Tz::America__New_York);
        let california = zone_for_number(&PhoneNumber::new("14155550123"));
        assert_eq!(california.zone, Tz::America__Los_Angeles);
        // A number whose prefix spans zones is a guess the AI must check.
        assert_eq!(
            zone_for_number(&PhoneNumber::new("1")).source,
            ZoneSource::Guess
        );
        assert_eq!(caller_zone(None, None).zone, Tz::UTC);
    }

    #[test]
    fn a_stated_zone_wins_over_the_number_and_a_bad_one_is_ignored() {
        let phone = PhoneNumber::new("447700900123");
        let stated = caller_zone(Some(&phone), Some("Asia/Tokyo"));
        assert_eq!(
            (stated.zone, stated.source),
            (Tz::Asia__Tokyo, ZoneSource::Stated)
        );
        assert_eq!(
            caller_zone(Some(&phone), Some("Mars/Olympus")).zone,
            Tz::Europe__London
        );
    }

    #[test]
    fn the_ai_is_told_the_callers_weekday_date_and_time() {
        let zone = zone_for_number(&PhoneNumber::new("14155550123"));
        let line = zone.now_line(utc("2026-12-07T17:05:00Z"));
        assert!(
            line.contains("Monday 7 December 2026, 09:05")
                && line.contains("America/Los_Angeles")
                && line.contains("UTC-08:00"),
            "{line}"
        );
    }

    #[test]
    fn local_times_are_read_in_the_callers_zone_across_a_dst_change() {
        let london = caller_zone(None, Some("Europe/London"));
        let now = utc("2026-03-28T12:00:00Z");
        // Before the change (GMT) and after it (BST, UTC+1).
        assert_eq!(
            london.parse_future("2026-03-28T15:00", now).unwrap(),
            utc("2026-03-28T15:00:00Z")
        );
        assert_eq!(
            london.parse_future("2026-03-29T15:00", now).unwrap(),
            utc("2026-03-29T14:00:00Z")
        );
        // 01:30 on 29 March does not exist in London.
        let gap = london.parse_future("2026-03-29T01:30", now).unwrap_err();
        assert!(matches!(gap, TimeError::Nonexistent(..)), "{gap}");
        // 01:30 on 25 October happens twice: the first (BST) is taken.
        assert_eq!(
            london.parse("2026-10-25T01:30").unwrap(),
            utc("2026-10-25T00:30:00Z")
        );
        // US Eastern changes on another day (8 March 2026).
        let new_york = caller_zone(None, Some("America/New_York"));
        assert_eq!(
            new_york.parse("2026-03-08T12:00").unwrap(),
            utc("2026-03-08T16:00:00Z")
        );
        assert_eq!(
            new_york.parse("2026-03-07T12:00").unwrap(),
            utc("2026-03-07T17:00:00Z")
        );
    }

    #[test]
    fn a_time_in_the_past_or_unreadable_is_refused_with_a_line_the_ai_can_say() {
        let london = caller_zone(None, Some("Europe/London"));
        let now = utc("2026-12-07T12:00:00Z");
        let past = london.parse_future("2026-12-07T11:59", now).unwrap_err();
        assert!(past.to_string().contains("in the past"), "{past}");
        assert!(matches!(
            london.parse_future("tomorrow at 3", now),
            Err(TimeError::Unreadable(_))
        ));
        // An explicit offset is taken as given.
        assert_eq!(
            london
                .parse_future("2026-12-07T15:00:00+01:00", now)
                .unwrap(),
            utc("2026-12-07T14:00:00Z")
        );
    }

    #[test]
    fn times_are_read_back_in_local_time() {
        let la = caller_zone(None, Some("America/Los_Angeles"));
        assert_eq!(
            la.format(utc("2026-07-01T17:00:00Z")),
            "2026-07-01T10:00-07:00 (Wed America/Los_Angeles)"
        );
    }
}
