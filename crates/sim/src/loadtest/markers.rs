//! Marker sounds and where they are seen: the phone's speech clip (pre-encoded once, with a sharp
//! onset), an onset detector for 20 ms chunks, and the AI double's [`AudioProbe`] that times the
//! markers arriving from the bridge and the echoes it sends back.
//!
//! Latency is timed on onsets (a loud chunk after at least 200 ms of quiet), at 20 ms
//! granularity: a phone sends the packet holding an onset at `t`; the AI double sees the append
//! holding it at `t'`; `t' - t` is the uplink latency. The AI double's echo carries the same onset
//! in a delta sent at `u`; the phone hears the packet holding it at `u'`; `u' - u` is the downlink
//! latency, which includes waiting for the bridge's next 20 ms frame slot.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::realtime_ai::AudioProbe;
use bridge::media::codec::{
    EncoderSettings, MAX_OPUS_PACKET, OpusEncoder, PCM_SAMPLE_RATE, SAMPLES_PER_FRAME,
};
use testkit::audio;

/// A chunk at least this loud (RMS of PCM16) is sound; the marker is about 3000.
pub const ONSET_RMS: f64 = 500.0;
/// Quiet chunks (of 20 ms) needed before a loud one counts as an onset.
const QUIET_CHUNKS: u32 = 10;
/// One cycle of the phone's speech: a 400 ms voiced marker, then silence (2 s in all), leaving
/// room for the AI double's echo (VAD end of turn after 500 ms of silence, then 300 ms of padding
/// and the 400 ms sound) before the next marker.
pub const CYCLE_FRAMES: usize = 100;
const MARKER_MS: usize = 400;
/// Name prefix of simulated callers; the bridge puts the name in the AI's instructions, which
/// is how the probe knows which call a session belongs to.
pub const CALLER_NAME_PREFIX: &str = "Load Caller ";

/// Finds sound onsets in a stream of 20 ms chunks.
#[derive(Debug, Clone, Copy)]
pub struct OnsetDetector {
    quiet: u32,
}

impl Default for OnsetDetector {
    fn default() -> Self {
        Self {
            quiet: QUIET_CHUNKS,
        }
    }
}

impl OnsetDetector {
    /// Feeds one chunk; `true` when it is loud after enough quiet ones.
    pub fn feed(&mut self, pcm: &[i16]) -> bool {
        if pcm.is_empty() {
            return false;
        }
        if audio::rms(pcm) >= ONSET_RMS {
            let onset = self.quiet >= QUIET_CHUNKS;
            self.quiet = 0;
            onset
        } else {
            self.quiet = self.quiet.saturating_add(1);
            false
        }
    }
}

/// The marker: a voiced, speech-like sound (a falling 150→120 Hz fundamental with eight
/// harmonics), at full level from its first millisecond so its onset is sharp.
pub fn marker_pcm() -> Vec<i16> {
    let rate = f64::from(PCM_SAMPLE_RATE);
    let len = MARKER_MS * PCM_SAMPLE_RATE as usize / 1000;
    let ramp = PCM_SAMPLE_RATE as usize / 1000;
    let mut phase = 0.0f64;
    (0..len)
        .map(|i| {
            let progress = i as f64 / len as f64;
            let f0 = 150.0 - 30.0 * progress;
            phase += 2.0 * PI * f0 / rate;
            let wave: f64 = (1..=8)
                .map(|k| (phase * f64::from(k)).sin() / f64::from(k))
                .sum();
            let edge = i.min(len - 1 - i);
            let envelope = (edge as f64 / ramp as f64).min(1.0);
            (wave * envelope * 2600.0).round() as i16
        })
        .collect()
}

/// The phone's speech, Opus-encoded once and shared by every simulated phone: one cycle of
/// [`CYCLE_FRAMES`] packets, the marker starting at packet 0.
#[derive(Debug)]
pub struct Clip {
    pub packets: Vec<Bytes>,
}

impl Clip {
    pub fn encode(settings: EncoderSettings) -> anyhow::Result<Arc<Clip>> {
        let mut pcm = marker_pcm();
        pcm.resize(CYCLE_FRAMES * SAMPLES_PER_FRAME, 0);
        let mut encoder = OpusEncoder::new(settings)?;
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let mut packets = Vec::with_capacity(CYCLE_FRAMES);
        for frame in pcm.chunks_exact(SAMPLES_PER_FRAME) {
            let length = encoder.encode(frame, &mut packet)?;
            packets.push(Bytes::copy_from_slice(&packet[..length]));
        }
        Ok(Arc::new(Clip { packets }))
    }
}

/// What the AI double saw of one call.
#[derive(Debug, Default)]
pub struct SessionMarks {
    /// When appends holding a marker onset arrived.
    pub heard: Vec<Instant>,
    /// When deltas holding an echoed onset were sent.
    pub said: Vec<Instant>,
    /// 20 ms frames appended and sent.
    pub samples_in: u64,
    pub samples_out: u64,
    input: OnsetDetector,
    output: OnsetDetector,
}

#[derive(Debug, Default)]
struct ProbeState {
    /// Session id → call key (from the caller name in the instructions).
    calls: HashMap<String, u64>,
    marks: HashMap<u64, SessionMarks>,
}

/// The AI double's view of the markers, per call.
#[derive(Debug, Default)]
pub struct MarkerProbe {
    state: Mutex<ProbeState>,
}

impl MarkerProbe {
    /// Removes and returns what was seen of call `key`.
    pub fn take(&self, key: u64) -> SessionMarks {
        self.state.lock().marks.remove(&key).unwrap_or_default()
    }

    /// Forgets sessions that ended (call `take` first for the calls you want).
    pub fn clear(&self) {
        let mut state = self.state.lock();
        state.calls.clear();
        state.marks.clear();
    }

    fn with_marks(&self, session_id: &str, apply: impl FnOnce(&mut SessionMarks)) {
        let mut state = self.state.lock();
        if let Some(&key) = state.calls.get(session_id) {
            apply(state.marks.entry(key).or_default());
        }
    }
}

/// The call key in `Load Caller <key>` inside a session's instructions.
pub fn caller_key(instructions: &str) -> Option<u64> {
    let start = instructions.find(CALLER_NAME_PREFIX)? + CALLER_NAME_PREFIX.len();
    let digits: String = instructions[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl AudioProbe for MarkerProbe {
    fn configured(&self, session_id: &str, instructions: &str) {
        if let Some(key) = caller_key(instructions) {
            self.state.lock().calls.insert(session_id.to_owned(), key);
        }
    }

    fn audio_in(&self, session_id: &str, at: Instant, pcm: &[i16]) {
        self.with_marks(session_id, |marks| {
            marks.samples_in += pcm.len() as u64;
            if marks.input.feed(pcm) {
                marks.heard.push(at);
            }
        });
    }

    fn audio_out(&self, session_id: &str, at: Instant, pcm: &[i16]) {
        self.with_marks(session_id, |marks| {
            marks.samples_out += pcm.len() as u64;
            if marks.output.feed(pcm) {
                marks.said.push(at);
            }
        });
    }
}

/// Pairs each reference instant with the first observation at or after it (within `window`),
/// returning the delays in milliseconds and how many references had none.
pub fn pair_delays(
    references: &[Instant],
    observations: &[Instant],
    window: std::time::Duration,
) -> (Vec<f64>, usize) {
    let mut delays = Vec::with_capacity(references.len());
    let mut missing = 0;
    let mut next = 0;
    for &reference in references {
        while next < observations.len() && observations[next] < reference {
            next += 1;
        }
        match observations.get(next) {
            Some(&seen) if seen - reference <= window => {
                delays.push((seen - reference).as_secs_f64() * 1000.0);
                next += 1;
            }
            _ => missing += 1,
        }
    }
    (delays, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge::media::codec::OpusDecoder;
    use std::time::Duration;

    #[test]
    fn the_marker_onset_survives_two_codec_passes_in_its_first_frame() {
        let clip = Clip::encode(EncoderSettings::default()).expect("clip");
        assert_eq!(clip.packets.len(), CYCLE_FRAMES);
        // Phone → bridge: decode; bridge → phone: encode again and decode.
        let mut decoder = OpusDecoder::new().expect("decoder");
        let mut encoder = OpusEncoder::new(EncoderSettings::default()).expect("encoder");
        let mut second = OpusDecoder::new().expect("decoder");
        let mut pcm = vec![0i16; SAMPLES_PER_FRAME * 6];
        let mut again = vec![0i16; SAMPLES_PER_FRAME * 6];
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let (mut first_pass, mut second_pass) =
            (OnsetDetector::default(), OnsetDetector::default());
        let (mut onsets_first, mut onsets_second) = (vec![], vec![]);
        for cycle in 0..3 {
            for (index, payload) in clip.packets.iter().enumerate() {
                let n = decoder.decode(payload, &mut pcm).expect("decode");
                if first_pass.feed(&pcm[..n]) {
                    onsets_first.push((cycle, index));
                }
                let length = encoder.encode(&pcm[..n], &mut packet).expect("encode");
                let m = second
                    .decode(&packet[..length], &mut again)
                    .expect("decode");
                if second_pass.feed(&again[..m]) {
                    onsets_second.push((cycle, index));
                }
            }
        }
        assert_eq!(onsets_first, vec![(0, 0), (1, 0), (2, 0)]);
        assert_eq!(onsets_second, vec![(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn an_onset_needs_quiet_before_it() {
        let mut detector = OnsetDetector::default();
        let loud = vec![4000i16; SAMPLES_PER_FRAME];
        let quiet = vec![0i16; SAMPLES_PER_FRAME];
        assert!(detector.feed(&loud));
        assert!(!detector.feed(&loud));
        for _ in 0..5 {
            assert!(!detector.feed(&quiet));
        }
        assert!(
            !detector.feed(&loud),
            "100 ms of quiet is a pause, not a new sound"
        );
        for _ in 0..QUIET_CHUNKS {
            assert!(!detector.feed(&quiet));
        }
        assert!(detector.feed(&loud));
    }

    #[test]
    fn the_caller_key_is_read_from_the_instructions() {
        let text = "Be brief.\n\nThe caller's WhatsApp profile name is Load Caller 1207.";
        assert_eq!(caller_key(text), Some(1207));
        assert_eq!(
            caller_key("The caller's WhatsApp profile name is Ann."),
            None
        );
    }

    #[test]
    fn delays_pair_each_reference_with_the_next_observation() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (delays, missing) = pair_delays(
            &[ms(0), ms(2000), ms(4000)],
            &[ms(3), ms(2010)],
            Duration::from_secs(1),
        );
        assert_eq!(delays.len(), 2);
        assert!((delays[0] - 3.0).abs() < 0.5 && (delays[1] - 10.0).abs() < 0.5);
        assert_eq!(missing, 1);
    }
}
