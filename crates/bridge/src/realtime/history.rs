//! What a call has said so far, kept so that a new session can be told (§10.4: "a reconnect is
//! a new session; no state carries over"). Turns are text (the transcripts), in the order the
//! caller and the AI spoke, bounded so that a long call replays only its recent part.

use std::collections::VecDeque;

use super::events::{self, Speaker};

/// At most this many turns are replayed ...
const MAX_TURNS: usize = 40;
/// ... and at most this much text (about 2,000 tokens).
const MAX_CHARS: usize = 8_000;

#[derive(Debug)]
struct Turn {
    speaker: Speaker,
    /// The caller's turn's item, until its transcript arrives (it comes after the AI may
    /// already have answered, so its place is taken when the caller stops speaking).
    item_id: Option<String>,
    text: String,
}

/// The conversation of one call, across its sessions.
#[derive(Debug, Default)]
pub struct History {
    turns: VecDeque<Turn>,
    chars: usize,
}

impl History {
    /// The caller finished a turn (`speech_stopped`); its words follow with its transcript.
    pub fn caller_spoke(&mut self, item_id: &str) {
        self.turns.push_back(Turn {
            speaker: Speaker::User,
            item_id: Some(item_id.to_owned()),
            text: String::new(),
        });
        self.trim();
    }

    /// The transcript of the caller's turn `item_id` (added at the end if its turn is unknown).
    pub fn caller_said(&mut self, item_id: &str, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match self
            .turns
            .iter_mut()
            .rev()
            .find(|turn| turn.item_id.as_deref() == Some(item_id))
        {
            Some(turn) => {
                self.chars = self.chars - turn.text.len() + text.len();
                turn.text = text.to_owned();
                turn.item_id = None;
            }
            None => self.push(Speaker::User, text),
        }
        self.trim();
    }

    /// The AI said `text` (its audio transcript), or the bridge noted something (`System`).
    pub fn push(&mut self, speaker: Speaker, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.chars += text.len();
        self.turns.push_back(Turn {
            speaker,
            item_id: None,
            text: text.to_owned(),
        });
        self.trim();
    }

    fn trim(&mut self) {
        while self.turns.len() > MAX_TURNS || self.chars > MAX_CHARS {
            let Some(oldest) = self.turns.pop_front() else {
                break;
            };
            self.chars -= oldest.text.len();
        }
    }

    /// The `conversation.item.create` events that tell a new session what was said, oldest
    /// first. Turns without words (no transcription configured) are left out.
    pub fn replay(&self) -> Vec<String> {
        self.turns
            .iter()
            .filter(|turn| !turn.text.is_empty())
            .map(|turn| events::conversation_message(turn.speaker, &turn.text))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn lines(history: &History) -> Vec<(String, String)> {
        history
            .replay()
            .iter()
            .map(|event| {
                let event: Value = serde_json::from_str(event).unwrap();
                (
                    event["item"]["role"].as_str().unwrap().to_owned(),
                    event["item"]["content"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_caller_transcript_that_arrives_after_the_answer_keeps_its_place() {
        let mut history = History::default();
        history.caller_spoke("item_1");
        history.push(Speaker::Assistant, "Sure, for when?");
        history.caller_said("item_1", " Book a table. ");
        history.caller_spoke("item_2");
        assert_eq!(
            lines(&history),
            [
                ("user".to_owned(), "Book a table.".to_owned()),
                ("assistant".to_owned(), "Sure, for when?".to_owned()),
            ],
            "the untranscribed turn is left out"
        );
    }

    #[test]
    fn a_long_call_replays_only_its_recent_turns() {
        let mut history = History::default();
        for n in 0..100 {
            history.push(Speaker::Assistant, &format!("line {n}"));
        }
        let replayed = lines(&history);
        assert_eq!(replayed.len(), MAX_TURNS);
        assert_eq!(replayed.last().unwrap().1, "line 99");
        let long = "x".repeat(3_000);
        for _ in 0..5 {
            history.push(Speaker::User, &long);
        }
        let total: usize = lines(&history).iter().map(|(_, text)| text.len()).sum();
        assert!(total <= MAX_CHARS, "{total}");
    }
}
