//! Caller audio, sans-IO: RTP Opus packets in sequence order become a continuous 24 kHz PCM stream, losses concealed.
//!
//! The Realtime API wants continuous audio (its VAD and timestamps count samples), so each lost
//! packet in a short gap is replaced by a frame of the same length: PLC for all but the last, and
//! the last rebuilt from the in-band FEC copy that the next packet carries, when it carries one.
//! A longer gap (a burst of loss) is concealed for its first frames and filled with silence for
//! the rest, PLC having faded to silence by then, and the decoder is reset: stale prediction
//! state would only colour the first packets after it. A gap longer than a second is taken for
//! a jump in the sender's numbering, not for lost audio, and only resets.

use crate::media::codec::{
    CodecError, MAX_PACKET_SAMPLES, OpusDecoder, SAMPLES_PER_FRAME, carries_fec,
};

/// A gap longer than this is not concealed frame by frame: the rest is silence, then a reset.
pub const MAX_CONCEALED_FRAMES: u16 = 5;
/// A gap longer than this (a second) is not filled at all, only reset after.
pub const MAX_FILLED_FRAMES: u16 = 50;

/// After this many packets in a row that all look older than the last decoded one, the sender is
/// taken to have restarted its sequence numbers and the stream is followed from there. Reordering
/// and duplication never produce such a run; without it, a restart that happens to land "behind"
/// would silence the caller until the 16-bit counter came round again (≈ 22 minutes).
const RESYNC_AFTER_LATE_PACKETS: u32 = 10;

/// Counters since the start of the call. Every frame written to the output is counted once in
/// `decoded`, `concealed` or `fec_recovered` (for 20 ms packets, the sum times 20 ms is the audio
/// produced); `late_or_duplicate` and `undecodable` count packets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UplinkStats {
    /// Packets decoded normally.
    pub decoded: u64,
    /// Frames synthesised by PLC (or, deep in a burst of loss, silence): for lost packets that
    /// no FEC rebuilt, and in place of undecodable ones.
    pub concealed: u64,
    /// Lost frames rebuilt from the in-band FEC data the next packet carried.
    pub fec_recovered: u64,
    /// Packets dropped because one at or after their position was already played out.
    pub late_or_duplicate: u64,
    /// Packets libopus rejected (each replaced by one concealed frame).
    pub undecodable: u64,
}

/// Turns the caller's RTP Opus packets (sequence number + payload) into a continuous stream of
/// 24 kHz PCM frames: in-order packets are decoded; a gap of k ≤ [`MAX_CONCEALED_FRAMES`] lost
/// packets is filled with k frames (PLC for all but the last, which is recovered from the next
/// packet's FEC when `fec` is on); packets older than the last decoded one are dropped.
#[derive(Debug)]
pub struct UplinkDecoder {
    decoder: OpusDecoder,
    /// Whether to ask for in-band FEC (the offer says `useinbandfec=1`; off only to compare).
    fec: bool,
    /// Sequence number of the last packet played out (decoded or concealed); `None` before the first.
    last_sequence: Option<u16>,
    /// Length of the current run of late packets, for [`RESYNC_AFTER_LATE_PACKETS`].
    late_run: u32,
    stats: UplinkStats,
}

impl UplinkDecoder {
    pub fn new(fec: bool) -> Result<Self, CodecError> {
        Ok(Self {
            decoder: OpusDecoder::new()?,
            fec,
            last_sequence: None,
            late_run: 0,
            stats: UplinkStats::default(),
        })
    }

    /// Appends the PCM produced by this packet (0..=(MAX_CONCEALED_FRAMES+1) frames of 20 ms for
    /// 20 ms packets) to `pcm_out` (cleared by the caller, reused between calls: no allocation per
    /// packet once warm). Never fails: whatever the payload, the stream stays continuous.
    pub fn push(&mut self, sequence_number: u16, payload: &[u8], pcm_out: &mut Vec<i16>) {
        let Some(last) = self.last_sequence else {
            // The decoder is fresh: nothing to forget (a reset costs as much as a decode).
            tracing::debug!(sequence_number, "first caller audio packet");
            self.last_sequence = Some(sequence_number);
            self.decode(payload, pcm_out);
            return;
        };
        // Serial-number arithmetic (RFC 1982): 1..=32767 ahead, the rest behind or equal.
        let ahead = sequence_number.wrapping_sub(last);
        if ahead == 0 || ahead > u16::MAX / 2 {
            self.late_run += 1;
            if self.late_run >= RESYNC_AFTER_LATE_PACKETS {
                tracing::debug!(
                    last,
                    sequence_number,
                    "sequence numbers restarted; resyncing"
                );
                self.start_over(sequence_number, payload, pcm_out);
            } else {
                self.stats.late_or_duplicate += 1;
                tracing::trace!(last, sequence_number, "late or duplicate packet dropped");
            }
            return;
        }
        self.late_run = 0;
        let lost = ahead - 1;
        if lost > MAX_CONCEALED_FRAMES {
            tracing::debug!(
                lost,
                sequence_number,
                "long gap in caller audio; decoder reset"
            );
            if lost <= MAX_FILLED_FRAMES {
                for _ in 0..MAX_CONCEALED_FRAMES {
                    self.conceal(pcm_out);
                }
                let silent = usize::from(lost - MAX_CONCEALED_FRAMES) * SAMPLES_PER_FRAME;
                pcm_out.resize(pcm_out.len() + silent, 0);
                self.stats.concealed += u64::from(lost - MAX_CONCEALED_FRAMES);
            }
            self.start_over(sequence_number, payload, pcm_out);
            return;
        }
        if lost > 0 {
            tracing::trace!(lost, sequence_number, "concealing lost packets");
            for _ in 1..lost {
                self.conceal(pcm_out);
            }
            self.recover_last_lost(payload, pcm_out);
        }
        self.last_sequence = Some(sequence_number);
        self.decode(payload, pcm_out);
    }

    /// A packet at `sequence_number` that carried no audio (a keypress: RFC 4733 events share
    /// the audio's sequence numbers, and a sender sends them instead of audio). The next audio
    /// packet does not count it as lost; an older number changes nothing.
    pub fn skip(&mut self, sequence_number: u16) {
        let ahead = self
            .last_sequence
            .map_or(1, |last| sequence_number.wrapping_sub(last));
        if ahead != 0 && ahead <= u16::MAX / 2 {
            self.last_sequence = Some(sequence_number);
        }
    }

    pub fn stats(&self) -> UplinkStats {
        self.stats
    }

    /// Forgets the decoder's history and plays `payload` as the first packet of a new stream.
    fn start_over(&mut self, sequence_number: u16, payload: &[u8], pcm_out: &mut Vec<i16>) {
        if let Err(error) = self.decoder.reset() {
            // Cannot happen with a live decoder; decoding simply continues from the old state.
            tracing::warn!(%error, "opus decoder reset failed");
        }
        self.late_run = 0;
        self.last_sequence = Some(sequence_number);
        self.decode(payload, pcm_out);
    }

    fn decode(&mut self, payload: &[u8], pcm_out: &mut Vec<i16>) {
        let start = pcm_out.len();
        pcm_out.resize(start + MAX_PACKET_SAMPLES, 0);
        match self.decoder.decode(payload, &mut pcm_out[start..]) {
            Ok(samples) => {
                pcm_out.truncate(start + samples);
                self.stats.decoded += 1;
            }
            Err(error) => {
                pcm_out.truncate(start);
                tracing::trace!(%error, len = payload.len(), "undecodable payload concealed");
                self.stats.undecodable += 1;
                self.conceal(pcm_out);
            }
        }
    }

    /// The lost frame just before `next_payload`: from its FEC data when it carries some, else
    /// PLC.
    fn recover_last_lost(&mut self, next_payload: &[u8], pcm_out: &mut Vec<i16>) {
        if !(self.fec && carries_fec(next_payload)) {
            self.conceal(pcm_out);
            return;
        }
        let start = pcm_out.len();
        pcm_out.resize(start + SAMPLES_PER_FRAME, 0);
        match self
            .decoder
            .recover_fec(next_payload, &mut pcm_out[start..])
        {
            Ok(_) => self.stats.fec_recovered += 1,
            Err(_) => {
                pcm_out.truncate(start);
                self.conceal(pcm_out);
            }
        }
    }

    /// Appends one PLC frame; if even that fails, one frame of silence, so the stream keeps time.
    fn conceal(&mut self, pcm_out: &mut Vec<i16>) {
        let start = pcm_out.len();
        pcm_out.resize(start + SAMPLES_PER_FRAME, 0);
        if let Err(error) = self.decoder.conceal(&mut pcm_out[start..]) {
            tracing::warn!(%error, "opus concealment failed; inserting silence");
            pcm_out[start..].fill(0);
        }
        self.stats.concealed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{EncoderSettings, MAX_OPUS_PACKET, OpusEncoder, PCM_SAMPLE_RATE};
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use testkit::audio::{dominant_frequency, rms, speech_like, tone, tone_sequence};

    const CANDIDATES: [f32; 4] = [400.0, 700.0, 1000.0, 1300.0];

    /// `frames` packets of a 700 Hz tone, encoded with FEC actually present (at the default 5 %
    /// loss libopus sends none at 20 kbit/s; see `EncoderSettings::inband_fec`).
    fn tone_packets(frames: usize) -> Vec<Vec<u8>> {
        encode(&tone(700.0, 20 * frames as u32, PCM_SAMPLE_RATE, 8000))
    }

    fn encode(pcm: &[i16]) -> Vec<Vec<u8>> {
        let settings = EncoderSettings {
            expected_loss_percent: 10,
            ..EncoderSettings::default()
        };
        let mut encoder = OpusEncoder::new(settings).unwrap();
        let mut buf = [0u8; MAX_OPUS_PACKET];
        pcm.chunks_exact(SAMPLES_PER_FRAME)
            .map(|frame| {
                let n = encoder.encode(frame, &mut buf).unwrap();
                buf[..n].to_vec()
            })
            .collect()
    }

    /// Pushes the packets numbered from `first_sequence`, skipping the indices in `drop`; returns the
    /// frames produced per pushed packet and all PCM.
    fn run(
        uplink: &mut UplinkDecoder,
        packets: &[Vec<u8>],
        first_sequence: u16,
        drop: &[usize],
    ) -> (Vec<usize>, Vec<i16>) {
        let mut all = Vec::new();
        let mut frames = Vec::new();
        let mut pcm = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            if drop.contains(&i) {
                continue;
            }
            pcm.clear();
            uplink.push(first_sequence.wrapping_add(i as u16), packet, &mut pcm);
            assert_eq!(pcm.len() % SAMPLES_PER_FRAME, 0);
            frames.push(pcm.len() / SAMPLES_PER_FRAME);
            all.extend_from_slice(&pcm);
        }
        (frames, all)
    }

    fn assert_continuous_tone(pcm: &[i16]) {
        // One segment of 700 Hz from the start: no silence, no other pitch.
        assert_eq!(
            tone_sequence(pcm, PCM_SAMPLE_RATE, &CANDIDATES, 20),
            vec![(0, 700.0)]
        );
        for (i, window) in pcm[SAMPLES_PER_FRAME..]
            .chunks(SAMPLES_PER_FRAME)
            .enumerate()
        {
            assert!(rms(window) > 2000.0, "frame {} rms {}", i + 1, rms(window));
        }
    }

    #[test]
    fn an_in_order_stream_decodes_to_a_continuous_tone() {
        let packets = tone_packets(50);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let (frames, pcm) = run(&mut uplink, &packets, 1000, &[]);
        assert!(frames.iter().all(|&f| f == 1));
        assert_eq!(pcm.len(), 50 * SAMPLES_PER_FRAME);
        assert_continuous_tone(&pcm);
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 50,
                ..Default::default()
            }
        );
    }

    #[test]
    fn one_lost_packet_is_rebuilt_from_fec() {
        let packets = tone_packets(30);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let (frames, pcm) = run(&mut uplink, &packets, 7, &[10]);
        assert_eq!(frames[10], 2, "the packet after the loss brings two frames");
        assert_eq!(pcm.len(), 30 * SAMPLES_PER_FRAME);
        assert_continuous_tone(&pcm);
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 29,
                fec_recovered: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn one_lost_packet_is_concealed_when_fec_is_off() {
        let packets = tone_packets(30);
        let mut uplink = UplinkDecoder::new(false).unwrap();
        let (frames, pcm) = run(&mut uplink, &packets, 7, &[10]);
        assert_eq!(frames[10], 2);
        assert_continuous_tone(&pcm);
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 29,
                concealed: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn fec_brings_a_lossy_stream_closer_to_the_lossless_one_than_plc_alone() {
        // The pitch changes every 60 ms, as in speech, so that extrapolation (PLC) guesses wrong.
        let pitches = [220.0, 330.0, 180.0, 290.0, 400.0, 250.0, 310.0, 200.0];
        let packets = encode(&speech_like(&pitches, 60, 0, PCM_SAMPLE_RATE));
        let lossless = run(&mut UplinkDecoder::new(true).unwrap(), &packets, 0, &[]).1;
        let drops: Vec<usize> = (4..packets.len() - 1).step_by(5).collect();
        let error = |fec: bool| -> f64 {
            let pcm = run(&mut UplinkDecoder::new(fec).unwrap(), &packets, 0, &drops).1;
            assert_eq!(pcm.len(), lossless.len());
            pcm.iter()
                .zip(&lossless)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum()
        };
        let (with_fec, without) = (error(true), error(false));
        // Measured: about 17 times less error energy.
        assert!(
            with_fec * 4.0 < without,
            "fec {with_fec:.3e} plc {without:.3e}"
        );
    }

    #[test]
    fn two_lost_packets_are_one_plc_frame_and_one_fec_frame() {
        let packets = tone_packets(30);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let (frames, pcm) = run(&mut uplink, &packets, 7, &[10, 11]);
        assert_eq!(frames[10], 3);
        assert_eq!(pcm.len(), 30 * SAMPLES_PER_FRAME);
        assert_continuous_tone(&pcm);
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 28,
                concealed: 1,
                fec_recovered: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn the_longest_concealed_gap_fills_every_frame() {
        let packets = tone_packets(30);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let gap: Vec<usize> = (10..10 + usize::from(MAX_CONCEALED_FRAMES)).collect();
        let (frames, pcm) = run(&mut uplink, &packets, 7, &gap);
        assert_eq!(frames[10], usize::from(MAX_CONCEALED_FRAMES) + 1);
        assert_eq!(pcm.len(), 30 * SAMPLES_PER_FRAME);
        assert_eq!(
            uplink.stats().concealed,
            u64::from(MAX_CONCEALED_FRAMES) - 1
        );
        assert_eq!(uplink.stats().fec_recovered, 1);
    }

    #[test]
    fn a_burst_of_six_is_concealed_then_silent_and_keeps_time() {
        let packets = tone_packets(30);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let (frames, pcm) = run(&mut uplink, &packets, 7, &[10, 11, 12, 13, 14, 15]);
        assert_eq!(
            frames.iter().sum::<usize>(),
            30,
            "every lost frame is filled"
        );
        assert_eq!(pcm.len(), 30 * SAMPLES_PER_FRAME);
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 24,
                concealed: 6,
                ..Default::default()
            }
        );
        // Five frames of concealment, one of silence, then the tone again after the reset.
        assert_eq!(
            rms(&pcm[15 * SAMPLES_PER_FRAME..16 * SAMPLES_PER_FRAME]),
            0.0
        );
        let after = &pcm[16 * SAMPLES_PER_FRAME..];
        assert_eq!(
            dominant_frequency(after, PCM_SAMPLE_RATE, &CANDIDATES),
            Some(700.0)
        );
    }

    #[test]
    fn a_jump_of_more_than_a_second_only_resets() {
        let packets = tone_packets(4);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let mut pcm = Vec::new();
        uplink.push(100, &packets[0], &mut pcm);
        uplink.push(100 + MAX_FILLED_FRAMES + 2, &packets[1], &mut pcm);
        assert_eq!(pcm.len(), 2 * SAMPLES_PER_FRAME);
        assert_eq!(uplink.stats().concealed, 0);
    }

    #[test]
    fn a_lost_packet_is_concealed_not_counted_as_fec_when_the_next_carries_none() {
        // At 20 kbit/s and the default expected loss libopus sends no FEC.
        let pcm = tone(700.0, 20 * 6, PCM_SAMPLE_RATE, 8000);
        let mut encoder = OpusEncoder::new(EncoderSettings::default()).unwrap();
        let mut buf = [0u8; MAX_OPUS_PACKET];
        let packets: Vec<Vec<u8>> = pcm
            .chunks_exact(SAMPLES_PER_FRAME)
            .map(|frame| {
                let length = encoder.encode(frame, &mut buf).unwrap();
                buf[..length].to_vec()
            })
            .collect();
        assert!(!packets.iter().any(|p| carries_fec(p)));
        let mut uplink = UplinkDecoder::new(true).unwrap();
        run(&mut uplink, &packets, 0, &[3]);
        assert_eq!(
            (uplink.stats().concealed, uplink.stats().fec_recovered),
            (1, 0)
        );
    }

    #[test]
    fn sequence_numbers_wrap_around_at_65535() {
        let packets = tone_packets(20);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        // 65530..=65535 then 0..; in-order across the wrap.
        let (frames, pcm) = run(&mut uplink, &packets, 65_530, &[]);
        assert!(frames.iter().all(|&f| f == 1));
        assert_continuous_tone(&pcm);
        assert_eq!(uplink.stats().decoded, 20);

        // Losing 65535 and 0 is a gap of two across the wrap.
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let (frames, pcm) = run(&mut uplink, &packets, 65_530, &[5, 6]);
        assert_eq!(frames[5], 3);
        assert_eq!(pcm.len(), 20 * SAMPLES_PER_FRAME);
        assert_eq!(uplink.stats().concealed, 1);
        assert_eq!(uplink.stats().fec_recovered, 1);
        // And a packet from before the wrap is late after it.
        let mut out = Vec::new();
        uplink.push(65_534, &packets[4], &mut out);
        assert!(out.is_empty());
        assert_eq!(uplink.stats().late_or_duplicate, 1);
    }

    #[test]
    fn packets_that_carried_no_audio_are_not_losses() {
        let packets = tone_packets(6);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let mut pcm = Vec::new();
        uplink.push(100, &packets[0], &mut pcm);
        uplink.push(101, &packets[1], &mut pcm);
        // A keypress took 102..=105 (and a late one of its packets comes after them).
        for sequence_number in [102, 103, 105, 104] {
            uplink.skip(sequence_number);
        }
        uplink.push(106, &packets[2], &mut pcm);
        assert_eq!(
            pcm.len(),
            3 * SAMPLES_PER_FRAME,
            "no frame made up for the keypress"
        );
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 3,
                ..UplinkStats::default()
            }
        );
    }

    #[test]
    fn duplicates_and_late_packets_are_dropped() {
        let packets = tone_packets(5);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let mut out = Vec::new();
        for (seq, packet) in [(100, 0), (101, 1), (101, 1), (103, 3), (102, 2), (104, 4)] {
            uplink.push(seq, &packets[packet], &mut out);
        }
        assert_eq!(out.len(), 5 * SAMPLES_PER_FRAME);
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 4,
                fec_recovered: 1,
                late_or_duplicate: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn an_undecodable_payload_becomes_one_concealed_frame() {
        let packets = tone_packets(10);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let mut out = Vec::new();
        for (i, packet) in packets.iter().enumerate() {
            out.clear();
            // TOC code 3 without its frame-count byte, then an empty payload.
            let payload: &[u8] = match i {
                4 => &[0x03],
                5 => &[],
                _ => packet,
            };
            uplink.push(i as u16, payload, &mut out);
            assert_eq!(out.len(), SAMPLES_PER_FRAME, "packet {i}");
        }
        assert_eq!(
            uplink.stats(),
            UplinkStats {
                decoded: 8,
                concealed: 2,
                undecodable: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_sequence_restart_behind_the_stream_is_followed_after_a_short_run() {
        let packets = tone_packets(40);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let (_, _) = run(&mut uplink, &packets[..20], 30_000, &[]);
        // The sender restarts at 100 (behind 30 019 in serial arithmetic).
        let (frames, _) = run(&mut uplink, &packets[20..], 100, &[]);
        let silent = frames.iter().take_while(|&&f| f == 0).count();
        assert_eq!(silent as u32, RESYNC_AFTER_LATE_PACKETS - 1);
        assert!(frames[silent..].iter().all(|&f| f == 1));
        assert_eq!(
            uplink.stats().late_or_duplicate,
            u64::from(RESYNC_AFTER_LATE_PACKETS - 1)
        );
    }

    #[test]
    fn random_input_never_panics_and_keeps_the_frame_invariant() {
        let packets = tone_packets(20);
        let mut rng = StdRng::seed_from_u64(7);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let mut out = Vec::new();
        let mut produced = 0usize;
        for _ in 0..3000 {
            out.clear();
            let sequence: u16 = rng.random();
            let payload: Vec<u8> = if rng.random_bool(0.5) {
                packets[rng.random_range(0..packets.len())].clone()
            } else {
                let len = rng.random_range(0..400);
                (0..len).map(|_| rng.random()).collect()
            };
            uplink.push(sequence, &payload, &mut out);
            assert!(out.len() <= (usize::from(MAX_CONCEALED_FRAMES) + 1) * MAX_PACKET_SAMPLES);
            produced += out.len();
        }
        let stats = uplink.stats();
        assert!(stats.decoded + stats.concealed + stats.fec_recovered > 0);
        assert!(produced >= (stats.concealed + stats.fec_recovered) as usize * SAMPLES_PER_FRAME);
    }

    #[test]
    fn a_warm_output_buffer_is_not_reallocated() {
        let packets = tone_packets(20);
        let mut uplink = UplinkDecoder::new(true).unwrap();
        let mut out = Vec::new();
        uplink.push(0, &packets[0], &mut out);
        let (pointer, capacity) = (out.as_ptr(), out.capacity());
        for (i, packet) in packets.iter().enumerate().skip(1) {
            out.clear();
            uplink.push(i as u16, packet, &mut out);
        }
        assert_eq!((out.as_ptr(), out.capacity()), (pointer, capacity));
    }
}
