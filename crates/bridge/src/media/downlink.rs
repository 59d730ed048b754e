//! The AI's voice on its way to the caller, sans-IO: audio deltas in, numbered Opus frames out.
//!
//! The mirror of [`uplink`](super::uplink). A [`Downlink`] owns the playback queue, the 20 ms
//! pacer and the call's phase slot, the stream encoder, and the RTP sequence number and
//! timestamp. The call task feeds it the AI's audio and barge-ins, asks it when the next frame
//! is due, and at that instant [`Downlink::poll`] says what to send: AI audio when some is
//! queued, the bridge's own encoded silence otherwise, so the caller's leg is never silent at
//! the RTP level (whatsapp-calling §7.4). Nothing here reads a clock or touches a socket.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::{
    CodecError, FecSettings, MAX_OPUS_PACKET, RTP_TIMESTAMP_STEP, SAMPLES_PER_FRAME, StreamEncoder,
};
use super::pacer::{Due, Pacer};
use super::phases::PhaseSlot;
use super::playback::{PlaybackBuffer, Truncation};

/// One Opus frame, numbered, ready for the outgoing track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingFrame {
    pub sequence_number: u16,
    pub timestamp: u32,
    pub payload: Bytes,
    /// Whether the frame carries AI audio (false: the bridge's silence).
    pub audio: bool,
}

/// What one [`Downlink::poll`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Frames put out (0 when polled early or before media started).
    pub frames: u32,
    /// How long after its slot the first of them goes out.
    pub delay: Duration,
    /// The poll came a whole period or more late: frames went out at once, or slots were
    /// given up (the RTP timestamp still advanced over those).
    pub late: bool,
}

/// The outgoing half of a call's media.
#[derive(Debug)]
pub struct Downlink {
    playback: PlaybackBuffer,
    encoder: StreamEncoder,
    /// Running once media has started (the call is answered); `None` before.
    pacer: Option<Pacer>,
    /// The call's millisecond of the 20 ms period, held while the pacer runs.
    slot: Option<PhaseSlot>,
    /// One frame of PCM and one encoded packet, reused every frame.
    frame: Vec<i16>,
    packet: Vec<u8>,
    sequence_number: u16,
    timestamp: u32,
    /// The AI's audio waits in the queue (the bridge's silence goes out) until then: the far
    /// end's jitter buffer settles on steady packets before the first words.
    audio_from: Option<Instant>,
}

impl Downlink {
    /// A stream that will start at `sequence_number` and `timestamp` (random per call, RFC 3550).
    pub fn new(encoder: StreamEncoder, sequence_number: u16, timestamp: u32) -> Self {
        Self {
            playback: PlaybackBuffer::new(),
            encoder,
            pacer: None,
            slot: None,
            frame: vec![0; SAMPLES_PER_FRAME],
            packet: vec![0; MAX_OPUS_PACKET],
            sequence_number,
            timestamp,
            audio_from: None,
        }
    }

    /// Media starts: the first frame is due at `slot`'s next instant (within 20 ms: §7.1, RTP
    /// at once) and goes with the second (the pacer's head start), the rest every 20 ms after
    /// them. Starting again changes nothing.
    pub fn start(&mut self, now: Instant, slot: PhaseSlot) {
        if self.pacer.is_some() {
            return;
        }
        self.pacer = Some(Pacer::in_phase(now, &slot));
        self.slot = Some(slot);
    }

    /// Holds the AI's audio back until `at`: frames due before then carry the bridge's silence,
    /// and nothing queued is lost or cut.
    pub fn hold_audio_until(&mut self, at: Instant) {
        self.audio_from = Some(at);
    }

    /// Whether AI audio is still waiting to be played to the caller.
    pub fn has_queued_audio(&self) -> bool {
        !self.playback.is_empty()
    }

    /// Whether media has started.
    pub fn is_started(&self) -> bool {
        self.pacer.is_some()
    }

    /// When the next frame is due; `None` before media started.
    pub fn deadline(&self) -> Option<Instant> {
        self.pacer.as_ref().map(Pacer::deadline)
    }

    /// Queues one audio delta of the AI (PCM16 little-endian). Returns whether it was queued:
    /// deltas of a response cut off by a barge-in are dropped.
    pub fn push_audio(
        &mut self,
        response_id: &str,
        item_id: &str,
        content_index: u32,
        pcm_le: &[u8],
    ) -> bool {
        self.playback
            .push(response_id, item_id, content_index, pcm_le)
    }

    /// The caller started speaking: queued AI audio is dropped at once. Returns what the AI
    /// must be told about the items cut (empty when nothing was queued).
    pub fn barge_in(&mut self) -> Vec<Truncation> {
        self.playback.barge_in()
    }

    /// Changes the encoder's loss protection from the next frame on (the stream goes on: same
    /// numbering, no gap).
    pub fn set_fec(&mut self, fec: FecSettings) -> Result<(), CodecError> {
        self.encoder.set_fec(fec)
    }

    /// Puts the frames due at `now` into `out` (cleared first): encoded, numbered and
    /// timestamped. A frame libopus fails to encode is not sent; its timestamp is skipped over
    /// like a late slot's, so the receiver places the next frame correctly.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<OutgoingFrame>) -> Polled {
        out.clear();
        let Some(pacer) = self.pacer.as_mut() else {
            return Polled::default();
        };
        let Due {
            frames,
            skipped,
            delay,
            late,
        } = pacer.poll(now);
        self.timestamp = self
            .timestamp
            .wrapping_add(RTP_TIMESTAMP_STEP.wrapping_mul(skipped));
        let held = self.audio_from.is_some_and(|at| now < at);
        for _ in 0..frames {
            let ai_samples = if held {
                self.frame.fill(0);
                0
            } else {
                self.playback.pop_frame(&mut self.frame)
            };
            let encoded = self
                .encoder
                .encode(&self.frame, ai_samples == 0, &mut self.packet);
            match encoded {
                Ok(length) => {
                    out.push(OutgoingFrame {
                        sequence_number: self.sequence_number,
                        timestamp: self.timestamp,
                        payload: Bytes::copy_from_slice(&self.packet[..length]),
                        audio: ai_samples > 0,
                    });
                    self.sequence_number = self.sequence_number.wrapping_add(1);
                }
                Err(err) => tracing::warn!(%err, "opus encode failed; frame not sent"),
            }
            self.timestamp = self.timestamp.wrapping_add(RTP_TIMESTAMP_STEP);
        }
        Polled {
            frames: out.len() as u32,
            delay,
            late,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{
        EncoderSettings, MAX_PACKET_SAMPLES, OpusDecoder, PCM_SAMPLE_RATE, SILENCE_SETTLE_FRAMES,
    };
    use crate::media::phases::FramePhases;
    use testkit::audio::{dominant_frequency, rms, tone};

    const MS: Duration = Duration::from_millis(1);

    fn downlink() -> Downlink {
        let encoder = StreamEncoder::new(EncoderSettings::default()).expect("encoder");
        Downlink::new(encoder, 65_534, u32::MAX - 960)
    }

    /// A tone as one AI audio delta (PCM16 little-endian).
    fn delta(hz: f32, ms: u32) -> Vec<u8> {
        tone(hz, ms, PCM_SAMPLE_RATE, 8_000)
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect()
    }

    /// Polls `count` times, each at the instant the next frame is due, collecting what is sent.
    fn run(downlink: &mut Downlink, count: u32, sent: &mut Vec<OutgoingFrame>) {
        let mut out = Vec::new();
        for _ in 0..count {
            let due = downlink.deadline().expect("started");
            downlink.poll(due, &mut out);
            sent.append(&mut out);
        }
    }

    fn decode(frames: &[OutgoingFrame]) -> Vec<i16> {
        let mut decoder = OpusDecoder::new().expect("decoder");
        let mut pcm = vec![0; MAX_PACKET_SAMPLES];
        let mut decoded = Vec::new();
        for frame in frames {
            let n = decoder.decode(&frame.payload, &mut pcm).expect("decodes");
            decoded.extend_from_slice(&pcm[..n]);
        }
        decoded
    }

    #[test]
    fn nothing_is_sent_before_media_starts_and_the_first_frames_go_at_once() {
        let mut downlink = downlink();
        let mut out = Vec::new();
        let now = Instant::now();
        assert_eq!(downlink.deadline(), None);
        assert_eq!(downlink.poll(now, &mut out), Polled::default());
        assert!(out.is_empty());

        downlink.start(now, FramePhases::new(now).take());
        assert!(downlink.is_started());
        assert_eq!(downlink.deadline(), Some(now));
        // The first frame and, as the head start, the second: not a late poll.
        let polled = downlink.poll(now, &mut out);
        assert_eq!((polled.frames, polled.late), (2, false));
        assert_eq!(out[0].sequence_number, 65_534);
        assert_eq!(out[0].timestamp, u32::MAX - 960);
        assert_eq!(out[1].sequence_number, 65_535);
        assert_eq!(out[1].timestamp, u32::MAX - 960 + 960);
        assert!(
            !out[0].audio && !out[1].audio,
            "silence before the AI speaks"
        );
        assert_eq!(downlink.deadline(), Some(now + 20 * MS));
    }

    #[test]
    fn frames_keep_to_the_calls_phase_slot_and_a_stall_keeps_the_schedule() {
        let epoch = Instant::now();
        let phases = FramePhases::new(epoch);
        let _others: Vec<_> = (0..5).map(|_| phases.take()).collect();
        let mut downlink = downlink();
        let mut out = Vec::new();
        // Media starts 1 003 ms in; slot 5's next instant is 1 005 ms: the first frame then.
        let start = epoch + 1_003 * MS;
        downlink.start(start, phases.take());
        assert_eq!(downlink.poll(start, &mut out).frames, 0);
        assert_eq!(downlink.deadline(), Some(epoch + 1_005 * MS));
        downlink.poll(epoch + 1_005 * MS, &mut out);
        assert_eq!(downlink.deadline(), Some(epoch + 1_025 * MS));
        for k in 0..10u32 {
            let due = epoch + (1_025 + 20 * k) * MS;
            assert_eq!(downlink.deadline(), Some(due));
            let polled = downlink.poll(due + 2 * MS, &mut out);
            assert_eq!((polled.frames, polled.delay), (1, 2 * MS));
        }
        // A 45 ms stall: the two frames missed go out at once, the slot is kept.
        let due = downlink.deadline().expect("started");
        let polled = downlink.poll(due + 45 * MS, &mut out);
        assert_eq!((polled.frames, polled.late), (3, true));
        assert_eq!(downlink.deadline(), Some(due + 60 * MS));
        // Polled early: nothing.
        assert_eq!(downlink.poll(due + 50 * MS, &mut out).frames, 0);
        assert!(out.is_empty());
    }

    #[test]
    fn held_audio_waits_for_its_instant_and_then_plays_in_full() {
        let now = Instant::now();
        let mut downlink = downlink();
        downlink.start(now, FramePhases::new(now).take());
        downlink.hold_audio_until(now + 100 * MS);
        downlink.push_audio("resp_1", "item_1", 0, &delta(440.0, 100));
        let mut sent = Vec::new();
        run(&mut downlink, 12, &mut sent);
        let audio: Vec<bool> = sent.iter().map(|f| f.audio).collect();
        // Frames sent at 0..=80 ms (the first poll's two with them) are the bridge's silence;
        // the 100 ms of audio follows whole.
        let expected: Vec<bool> = [false; 6]
            .into_iter()
            .chain([true; 5])
            .chain([false; 2])
            .collect();
        assert_eq!(audio, expected);
        let decoded = decode(&sent);
        let tone = &decoded[6 * SAMPLES_PER_FRAME..11 * SAMPLES_PER_FRAME];
        assert_eq!(
            dominant_frequency(tone, PCM_SAMPLE_RATE, &[440.0, 660.0]),
            Some(440.0)
        );
        assert!(
            rms(&decoded[..4 * SAMPLES_PER_FRAME]) < 50.0,
            "silence first"
        );
    }

    #[test]
    fn sequence_numbers_and_timestamps_run_on_across_audio_silence_and_a_long_stall() {
        let now = Instant::now();
        let mut downlink = downlink();
        downlink.start(now, FramePhases::new(now).take());
        let mut sent = Vec::new();
        downlink.push_audio("resp_1", "item_1", 0, &delta(440.0, 100));
        run(&mut downlink, 10, &mut sent);
        downlink.push_audio("resp_2", "item_2", 0, &delta(660.0, 60));
        run(&mut downlink, 6, &mut sent);
        let audio: Vec<bool> = sent.iter().map(|f| f.audio).collect();
        // The first poll sends two frames (the head start): 11 frames in the first 10 polls.
        let expected: Vec<bool> = [true; 5]
            .into_iter()
            .chain([false; 6])
            .chain([true; 3])
            .chain([false; 3])
            .collect();
        assert_eq!(audio, expected);
        for pair in sent.windows(2) {
            assert_eq!(
                pair[1].sequence_number,
                pair[0].sequence_number.wrapping_add(1)
            );
            assert_eq!(pair[1].timestamp, pair[0].timestamp.wrapping_add(960));
        }
        // Both counters wrapped on the way, as RFC 3550 wants.
        assert_eq!(sent.last().map(|f| f.sequence_number), Some(14));

        // Polled 200 ms late: three frames go out, the eight slots given up still count in
        // time, and no sequence number is skipped.
        let last = sent.last().cloned().expect("frames");
        let mut out = Vec::new();
        let due = downlink.deadline().expect("started");
        downlink.poll(due + 200 * MS, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].sequence_number, last.sequence_number.wrapping_add(1));
        assert_eq!(out[0].timestamp, last.timestamp.wrapping_add(960 * (1 + 8)));
        assert_eq!(out[2].timestamp, out[0].timestamp.wrapping_add(2 * 960));
    }

    #[test]
    fn a_barge_in_flushes_the_queue_at_once_and_the_cut_response_stays_silent() {
        let now = Instant::now();
        let mut downlink = downlink();
        downlink.start(now, FramePhases::new(now).take());
        downlink.push_audio("resp_1", "item_1", 0, &delta(440.0, 1_000));
        let mut sent = Vec::new();
        run(&mut downlink, 13, &mut sent);
        assert_eq!(sent.len(), 14, "the first poll sends two frames");
        assert!(sent.iter().all(|f| f.audio));
        assert_eq!(downlink.playback.queued_ms(), 720);

        let truncations = downlink.barge_in();
        assert_eq!(
            truncations,
            vec![Truncation {
                item_id: "item_1".into(),
                content_index: 0,
                audio_end_ms: 280,
            }]
        );
        assert_eq!(downlink.playback.queued_ms(), 0);
        // The interrupted response's late deltas are dropped; the very next frame is silence.
        assert!(!downlink.push_audio("resp_1", "item_1", 0, &delta(440.0, 100)));
        let mut after = Vec::new();
        run(&mut downlink, 10, &mut after);
        assert!(after.iter().all(|f| !f.audio));
        let heard = decode(&sent.iter().chain(&after).cloned().collect::<Vec<_>>());
        let speech = &heard[2 * SAMPLES_PER_FRAME..12 * SAMPLES_PER_FRAME];
        assert_eq!(
            dominant_frequency(speech, PCM_SAMPLE_RATE, &[440.0, 660.0]),
            Some(440.0)
        );
        // Two frames after the cut the decoder's fade is over: silence.
        let tail = &heard[16 * SAMPLES_PER_FRAME..];
        assert!(rms(tail) < 50.0, "rms {}", rms(tail));
    }

    #[test]
    fn a_settled_pause_is_replayed_and_the_next_audio_is_encoded_again() {
        let now = Instant::now();
        let mut downlink = downlink();
        downlink.start(now, FramePhases::new(now).take());
        downlink.push_audio("resp_1", "item_1", 0, &delta(440.0, 200));
        let mut sent = Vec::new();
        run(&mut downlink, 40, &mut sent);
        let pause = &sent[10..];
        assert!(pause.iter().all(|f| !f.audio));
        // Once settled, the pause's packets go round in a cycle of four, byte for byte.
        let settled = &pause[SILENCE_SETTLE_FRAMES as usize + 12..];
        for (i, frame) in settled.iter().enumerate().skip(4) {
            assert_eq!(frame.payload, settled[i - 4].payload);
        }
        assert!(downlink.encoder.replaying());

        downlink.push_audio("resp_2", "item_2", 0, &delta(660.0, 100));
        let mut again = Vec::new();
        run(&mut downlink, 5, &mut again);
        assert!(again.iter().all(|f| f.audio));
        assert!(!downlink.encoder.replaying());
        let heard = decode(&sent.iter().chain(&again).cloned().collect::<Vec<_>>());
        let tail = &heard[heard.len() - 3 * SAMPLES_PER_FRAME..];
        assert_eq!(
            dominant_frequency(tail, PCM_SAMPLE_RATE, &[440.0, 660.0]),
            Some(660.0)
        );
        assert!(rms(tail) > 3_000.0, "rms {}", rms(tail));
    }
}
