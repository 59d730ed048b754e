//! The caller's keypresses, sans-IO: RFC 4733 telephone-event packets in, one key per press out.
//!
//! A press is one event: every packet of it carries the event's start as its RTP timestamp,
//! with a growing duration, and its end is sent about three times over (the E bit, RFC 4733
//! §2.5.1.4). So a key is reported the first time a packet with a new timestamp is seen,
//! whichever of its packets that is (the first ones may be lost), and every later packet of
//! the same event is merged into it. An event longer than the 16-bit duration field allows
//! continues under a new timestamp (§2.5.1.3); that is the same press, not a second one.
//! Also here: the words a key is put to the AI in.

/// Payload of one event: event code, E|R|volume, 16-bit duration (RFC 4733 §2.3).
const EVENT_BYTES: usize = 4;
/// The E bit of the second byte: the event has ended.
const END_BIT: u8 = 0x80;
/// The audio's RTP clock (Opus, 48 kHz) over the events' (8 kHz): Meta's events share the audio's
/// timestamps while counting their durations at 8 kHz (whatsapp-calling §8.5).
const AUDIO_CLOCK_PER_EVENT_CLOCK: u32 = 6;
/// The last event code that is a key of a phone's keypad (0–9, *, #, A–D; §3.2).
const LAST_KEY_CODE: u8 = 15;

/// A key of the phone's keypad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(char);

impl Key {
    /// The key of RFC 4733 event code `code`; `None` for events that are not keys (flash,
    /// tones).
    pub fn from_event(code: u8) -> Option<Self> {
        let symbol = match code {
            0..=9 => char::from(b'0' + code),
            10 => '*',
            11 => '#',
            12..=LAST_KEY_CODE => char::from(b'A' + code - 12),
            _ => return None,
        };
        Some(Self(symbol))
    }

    /// As printed on the keypad: `0`–`9`, `*`, `#`, `A`–`D`.
    pub fn symbol(self) -> char {
        self.0
    }

    /// The key as a `&'static str` (a metric label).
    pub fn as_str(self) -> &'static str {
        const SYMBOLS: [&str; 16] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "#", "A", "B", "C", "D",
        ];
        let index = match self.0 {
            '0'..='9' => self.0 as usize - '0' as usize,
            '*' => 10,
            '#' => 11,
            _ => 12 + (self.0 as usize - 'A' as usize),
        };
        SYMBOLS[index]
    }
}

/// The conversation item the AI receives for one keypress. The assistant's instructions use
/// the same words when the business says what the keys mean.
pub fn pressed_text(key: Key) -> String {
    format!("(The caller pressed {} on the keypad.)", key.symbol())
}

/// How the business's meaning of the keys (`KEYPAD_INSTRUCTIONS`) is put to the AI.
pub fn keypad_instructions(meaning: &str) -> String {
    format!(
        "The caller may press keys on the phone's keypad; each press reaches you as a message \
         such as \"(The caller pressed 1 on the keypad.)\". What the keys mean: {meaning}"
    )
}

/// The event being received: where it started, what it is, how far it got.
#[derive(Clone, Copy, Debug)]
struct Event {
    timestamp: u32,
    code: u8,
    duration: u16,
    ended: bool,
}

/// Turns telephone-event payloads into keypresses, one per press.
#[derive(Debug, Default)]
pub struct KeypadDecoder {
    current: Option<Event>,
}

impl KeypadDecoder {
    /// One telephone-event packet (its RTP timestamp and payload). Returns the key when this
    /// packet is the first seen of a new press; `None` for the rest of a press, for events that
    /// are not keys, for payloads too short to be an event, and for packets of older events.
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Option<Key> {
        let [code, flags, high, low] = *payload.get(..EVENT_BYTES)? else {
            return None;
        };
        let event = Event {
            timestamp,
            code,
            duration: u16::from_be_bytes([high, low]),
            ended: flags & END_BIT != 0,
        };
        if let Some(current) = self.current.as_mut() {
            let ahead = timestamp.wrapping_sub(current.timestamp);
            if ahead == 0 {
                // More of the same press, or one of its redundant end packets.
                current.duration = current.duration.max(event.duration);
                current.ended |= event.ended;
                return None;
            }
            if ahead > u32::MAX / 2 {
                // A packet of an earlier event, arriving late.
                return None;
            }
            // Durations count 8 kHz units; the timestamp may run at the audio's 48 kHz.
            let segment = u32::from(current.duration);
            let continues = !current.ended
                && current.code == code
                && (ahead == segment || ahead == segment * AUDIO_CLOCK_PER_EVENT_CLOCK);
            self.current = Some(event);
            if continues {
                return None;
            }
        } else {
            self.current = Some(event);
        }
        Key::from_event(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event packet: `code`, end flag, volume 10, `duration` in 8 kHz units.
    fn packet(code: u8, end: bool, duration: u16) -> [u8; 4] {
        let [high, low] = duration.to_be_bytes();
        [code, if end { END_BIT | 10 } else { 10 }, high, low]
    }

    /// A whole press as a sender sends it: start, updates every 50 ms, three end packets.
    fn press(code: u8, timestamp: u32) -> Vec<(u32, [u8; 4])> {
        let mut packets: Vec<_> = [0, 400, 800]
            .into_iter()
            .map(|duration| (timestamp, packet(code, false, duration)))
            .collect();
        packets.extend((0..3).map(|_| (timestamp, packet(code, true, 1_000))));
        packets
    }

    fn keys(decoder: &mut KeypadDecoder, packets: &[(u32, [u8; 4])]) -> String {
        packets
            .iter()
            .filter_map(|(timestamp, payload)| decoder.push(*timestamp, payload))
            .map(Key::symbol)
            .collect()
    }

    #[test]
    fn each_press_is_one_key_whatever_its_packets() {
        let mut decoder = KeypadDecoder::default();
        let mut packets = press(1, 1_000);
        packets.extend(press(1, 9_000));
        packets.extend(press(11, 20_000));
        assert_eq!(keys(&mut decoder, &packets), "11#");
    }

    #[test]
    fn every_key_of_the_keypad_is_named() {
        let named: String = (0..=15)
            .map(|code| Key::from_event(code).expect("a key").symbol())
            .collect();
        assert_eq!(named, "0123456789*#ABCD");
        for code in 0..=15 {
            let key = Key::from_event(code).expect("a key");
            assert_eq!(key.as_str(), key.symbol().to_string());
        }
        assert_eq!(Key::from_event(16), None, "flash is not a key");
    }

    #[test]
    fn a_press_whose_first_packets_were_lost_still_counts_once() {
        let mut decoder = KeypadDecoder::default();
        let packets = &press(5, 4_000)[3..];
        assert_eq!(keys(&mut decoder, packets), "5");
    }

    #[test]
    fn a_long_press_continued_under_a_new_timestamp_is_one_press() {
        let mut decoder = KeypadDecoder::default();
        let first = (70_000, packet(9, false, u16::MAX));
        let continued = (70_000 + u32::from(u16::MAX), packet(9, false, 2_000));
        let end = (70_000 + u32::from(u16::MAX), packet(9, true, 3_000));
        assert_eq!(keys(&mut decoder, &[first, continued, end]), "9");
        // The same key pressed again afterwards is a new press.
        assert_eq!(keys(&mut decoder, &press(9, 200_000)), "9");
        // In the audio's 48 kHz timestamps, the segment is six times as long.
        let first = (300_000, packet(6, false, u16::MAX));
        let continued = (300_000 + 6 * u32::from(u16::MAX), packet(6, true, 100));
        assert_eq!(keys(&mut decoder, &[first, continued]), "6");
    }

    #[test]
    fn late_packets_of_an_earlier_press_and_short_payloads_are_ignored() {
        let mut decoder = KeypadDecoder::default();
        assert_eq!(keys(&mut decoder, &press(2, 10_000)), "2");
        assert_eq!(keys(&mut decoder, &press(3, 20_000)), "3");
        assert_eq!(
            keys(&mut decoder, &press(2, 10_000)),
            "",
            "late: not a press"
        );
        assert_eq!(decoder.push(30_000, &[4, 0, 0]), None);
        assert_eq!(decoder.push(30_000, &[]), None);
    }

    #[test]
    fn timestamps_wrap_around() {
        let mut decoder = KeypadDecoder::default();
        let mut packets = press(7, u32::MAX - 100);
        packets.extend(press(8, 900));
        assert_eq!(keys(&mut decoder, &packets), "78");
    }

    #[test]
    fn events_that_are_not_keys_report_nothing_but_end_the_press_before() {
        let mut decoder = KeypadDecoder::default();
        let mut packets = press(4, 1_000);
        packets.extend(press(16, 5_000));
        packets.extend(press(4, 9_000));
        assert_eq!(keys(&mut decoder, &packets), "44");
    }

    #[test]
    fn the_item_and_the_instructions_name_the_key_the_same_way() {
        let text = pressed_text(Key::from_event(10).expect("a key"));
        assert_eq!(text, "(The caller pressed * on the keypad.)");
        assert!(
            keypad_instructions("1 for sales")
                .contains(&pressed_text(Key::from_event(1).expect("a key")))
        );
        assert!(keypad_instructions("1 for sales").ends_with("1 for sales"));
    }
}
