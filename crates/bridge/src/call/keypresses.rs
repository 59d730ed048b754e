//! What a call does with the caller's keypresses, sans-IO: each key reaches the AI at once as a
//! conversation item, and the AI is asked to answer once the caller stops pressing: after a
//! pause of [`KEY_PAUSE`], or at once after `#`, which ends an entry by convention. Someone
//! typing a number is not answered digit by digit.

use std::time::{Duration, Instant};

use crate::media::keypad::Key;

/// With no further key for this long, the entry is complete and the AI answers it.
pub const KEY_PAUSE: Duration = Duration::from_millis(1500);

/// The key that ends an entry at once.
const ENTRY_END: char = '#';

/// When the AI should answer the keys pressed so far.
#[derive(Debug, Default)]
pub struct KeyEntry {
    answer_at: Option<Instant>,
}

impl KeyEntry {
    /// A key was pressed at `now`.
    pub fn pressed(&mut self, key: Key, now: Instant) {
        let wait = if key.symbol() == ENTRY_END {
            Duration::ZERO
        } else {
            KEY_PAUSE
        };
        self.answer_at = Some(now + wait);
    }

    /// The caller spoke: the AI answers that (its VAD asks for the response), not the keys.
    pub fn cancel(&mut self) {
        self.answer_at = None;
    }

    /// When the AI is to be asked, if keys are waiting for an answer.
    pub fn deadline(&self) -> Option<Instant> {
        self.answer_at
    }

    /// Whether the AI is to be asked now. `ready` says it can be (no response being made, no
    /// tool running); if not, the answer waits and is asked for at a later call.
    pub fn take_due(&mut self, now: Instant, ready: bool) -> bool {
        if ready && self.answer_at.is_some_and(|at| at <= now) {
            self.answer_at = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(symbol: char) -> Key {
        let code = "0123456789*#ABCD"
            .find(symbol)
            .expect("a key of the keypad");
        Key::from_event(code as u8).expect("a key")
    }

    #[test]
    fn the_ai_answers_once_the_caller_stops_pressing() {
        let start = Instant::now();
        let mut entry = KeyEntry::default();
        assert_eq!(entry.deadline(), None);
        entry.pressed(key('1'), start);
        let second = start + Duration::from_millis(600);
        entry.pressed(key('2'), second);
        assert_eq!(entry.deadline(), Some(second + KEY_PAUSE));
        assert!(
            !entry.take_due(start + KEY_PAUSE, true),
            "the second key moved it"
        );
        assert!(entry.take_due(second + KEY_PAUSE, true));
        assert!(!entry.take_due(second + KEY_PAUSE * 2, true), "asked once");
    }

    #[test]
    fn hash_ends_the_entry_at_once() {
        let now = Instant::now();
        let mut entry = KeyEntry::default();
        entry.pressed(key('4'), now);
        entry.pressed(key('#'), now);
        assert!(entry.take_due(now, true));
    }

    #[test]
    fn a_busy_ai_is_asked_later_and_speech_cancels_the_answer() {
        let now = Instant::now();
        let mut entry = KeyEntry::default();
        entry.pressed(key('#'), now);
        assert!(!entry.take_due(now, false));
        assert!(entry.take_due(now + KEY_PAUSE, true), "still waiting");
        entry.pressed(key('9'), now);
        entry.cancel();
        assert!(!entry.take_due(now + KEY_PAUSE * 2, true));
    }
}
