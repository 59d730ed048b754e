//! Opus codec layer: 20 ms frames of 24 kHz mono PCM16 to and from Opus packets, with loss concealment.
//!
//! libopus encodes from and decodes to 24 kHz natively, which is the rate the realtime AI speaks,
//! so the bridge path needs no resampler. The RTP clock stays 48 kHz whatever the PCM rate.

use opus::{Application, Channels};

/// Sample rate of the PCM on the AI side (PCM16 mono, 24 kHz).
pub const PCM_SAMPLE_RATE: u32 = 24_000;
/// Duration of one Opus frame, as negotiated (`a=ptime:20`).
pub const FRAME_MS: u32 = 20;
/// [`FRAME_MS`] as a duration: the period of the pacer and of the frame phases.
pub const FRAME_PERIOD: std::time::Duration = std::time::Duration::from_millis(FRAME_MS as u64);
/// Samples in one 20 ms frame at [`PCM_SAMPLE_RATE`].
pub const SAMPLES_PER_FRAME: usize = 480;
/// The Opus RTP clock, whatever the codec's internal rate (RFC 7587).
pub const RTP_CLOCK_RATE: u32 = 48_000;
/// RTP timestamp increment per 20 ms frame at [`RTP_CLOCK_RATE`].
pub const RTP_TIMESTAMP_STEP: u32 = 960;
/// Largest Opus packet for one frame (RFC 6716 §3.4); a buffer this size always fits one encoded frame.
pub const MAX_OPUS_PACKET: usize = 1275;

/// Longest audio one Opus packet can carry (120 ms) at [`PCM_SAMPLE_RATE`]; a decode buffer this
/// size never fails for want of room.
pub const MAX_PACKET_SAMPLES: usize = SAMPLES_PER_FRAME * 6;

/// Payloads above this size are refused before reaching libopus. No real Opus packet comes near it
/// (a UDP datagram cannot carry more), and it keeps lengths far inside what the C API accepts.
const MAX_PAYLOAD_BYTES: usize = 65_535;

const _: () = assert!(SAMPLES_PER_FRAME == (PCM_SAMPLE_RATE * FRAME_MS / 1000) as usize);
const _: () = assert!(RTP_TIMESTAMP_STEP == RTP_CLOCK_RATE * FRAME_MS / 1000);

/// Upper limit of the encoded audio band. Meta offers wideband (16 kHz audio), so more is wasted bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bandwidth {
    /// 4 kHz audio band.
    Narrowband,
    /// 6 kHz audio band.
    Mediumband,
    /// 8 kHz audio band (16 kHz sampling): what WhatsApp uses.
    Wideband,
    /// 12 kHz audio band: the most a 24 kHz encoder can carry.
    Superwideband,
    /// 20 kHz audio band; clamped to [`Bandwidth::Superwideband`] by a 24 kHz encoder.
    Fullband,
}

impl Bandwidth {
    /// `narrowband`, `mediumband`, `wideband` or `superwideband` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "narrowband" => Some(Self::Narrowband),
            "mediumband" => Some(Self::Mediumband),
            "wideband" => Some(Self::Wideband),
            "superwideband" => Some(Self::Superwideband),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Narrowband => "narrowband",
            Self::Mediumband => "mediumband",
            Self::Wideband => "wideband",
            Self::Superwideband => "superwideband",
            Self::Fullband => "fullband",
        }
    }
}

impl From<Bandwidth> for opus::Bandwidth {
    fn from(bandwidth: Bandwidth) -> Self {
        match bandwidth {
            Bandwidth::Narrowband => opus::Bandwidth::Narrowband,
            Bandwidth::Mediumband => opus::Bandwidth::Mediumband,
            Bandwidth::Wideband => opus::Bandwidth::Wideband,
            Bandwidth::Superwideband => opus::Bandwidth::Superwideband,
            Bandwidth::Fullband => opus::Bandwidth::Fullband,
        }
    }
}

/// Encoder tuning. The defaults match Meta's offer (`maxaveragebitrate=20000`, wideband,
/// `useinbandfec=1`) at complexity 6: in the PESQ sweep of docs/BENCHMARKS.md it scores 3.81
/// (best 3.98 at complexity 8 and up, which costs about a quarter more) for about the CPU of 5,
/// which scores 3.59. Encoding sets the bridge's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderSettings {
    /// Target bitrate in bit/s (libopus accepts 500..=512_000). Meta caps at 20 kbit/s.
    pub bitrate_bps: i32,
    /// 0 (cheapest) ..= 10 (best). Encoding is most of the CPU a call costs.
    pub complexity: i32,
    /// Upper limit of the encoded audio band.
    pub max_bandwidth: Bandwidth,
    /// Allow a low-rate copy of each frame in the next packet, so the receiver can rebuild a lost
    /// one. libopus only sends it when the bitrate left after the loss allowance pays for it: at
    /// 20 kbit/s wideband that means `expected_loss_percent` ≥ 6, and then it narrows the band to
    /// medium/narrowband to make room; at 5 % it sends none (28 kbit/s keeps wideband with FEC).
    /// Measured with libopus 1.6.1.
    pub inband_fec: bool,
    /// Expected packet loss (0..=100); libopus spends FEC bits in proportion (see `inband_fec`).
    /// A call's stream starts without FEC whatever these two say, and turns it on while the
    /// caller reports loss (`media::loss_protection`); these stay the settings of any other use.
    pub expected_loss_percent: i32,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self {
            bitrate_bps: 20_000,
            complexity: 6,
            max_bandwidth: Bandwidth::Wideband,
            inband_fec: true,
            expected_loss_percent: 5,
        }
    }
}

/// The encoder settings that protect the stream against loss, changed mid-stream as the far end
/// reports loss (`media::loss_protection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FecSettings {
    /// Send a low-rate copy of each frame in the next packet (SILK LBRR).
    pub inband_fec: bool,
    /// The loss libopus plans for (0..=100); it decides how many bits the copy gets.
    pub expected_loss_percent: i32,
    /// Target bitrate in bit/s.
    pub bitrate_bps: i32,
}

impl FecSettings {
    /// What `settings` themselves ask for.
    pub fn of(settings: EncoderSettings) -> Self {
        Self {
            inband_fec: settings.inband_fec,
            expected_loss_percent: settings.expected_loss_percent,
            bitrate_bps: settings.bitrate_bps,
        }
    }
}

/// Failures of the codec layer. None of them is fatal to a call: a bad packet is concealed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus refused a setting or a packet, or failed internally.
    #[error("opus {operation} failed: {source}")]
    Opus {
        operation: &'static str,
        #[source]
        source: opus::Error,
    },
    /// The PCM handed to the encoder is not one 20 ms frame.
    #[error("expected {expected} PCM samples per frame, got {actual}")]
    FrameLength { expected: usize, actual: usize },
    /// An empty payload is not a packet (libopus would read it as a loss).
    #[error("empty Opus packet")]
    EmptyPacket,
    /// A payload larger than any datagram can carry.
    #[error("Opus packet of {0} bytes is larger than any real packet")]
    PacketTooLarge(usize),
    /// The output buffer cannot hold one 20 ms frame.
    #[error("output buffer of {actual} samples is shorter than one frame ({expected})")]
    OutputTooSmall { expected: usize, actual: usize },
}

fn opus_error(operation: &'static str) -> impl FnOnce(opus::Error) -> CodecError {
    move |source| CodecError::Opus { operation, source }
}

/// Encodes 20 ms frames of 24 kHz mono PCM16 into Opus packets (VOIP application, mono,
/// constrained VBR, so the rate stays close to the target whatever the content).
pub struct OpusEncoder {
    /// The libopus encoder; its state carries prediction and FEC history from frame to frame.
    inner: opus::Encoder,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    pub fn new(settings: EncoderSettings) -> Result<Self, CodecError> {
        let mut inner = opus::Encoder::new(PCM_SAMPLE_RATE, Channels::Mono, Application::Voip)
            .map_err(opus_error("encoder create"))?;
        inner
            .set_bitrate(opus::Bitrate::Bits(settings.bitrate_bps))
            .map_err(opus_error("set bitrate"))?;
        inner
            .set_complexity(settings.complexity)
            .map_err(opus_error("set complexity"))?;
        inner
            .set_max_bandwidth(settings.max_bandwidth.into())
            .map_err(opus_error("set max bandwidth"))?;
        inner.set_vbr(true).map_err(opus_error("set vbr"))?;
        inner
            .set_vbr_constraint(true)
            .map_err(opus_error("set vbr constraint"))?;
        inner
            .set_inband_fec(settings.inband_fec)
            .map_err(opus_error("set inband fec"))?;
        inner
            .set_packet_loss_perc(settings.expected_loss_percent)
            .map_err(opus_error("set packet loss"))?;
        tracing::debug!(?settings, "opus encoder created");
        Ok(Self { inner })
    }

    /// Changes the complexity between frames (the stream goes on seamlessly).
    pub fn set_complexity(&mut self, complexity: i32) -> Result<(), CodecError> {
        self.inner
            .set_complexity(complexity)
            .map_err(opus_error("set complexity"))
    }

    /// Changes in-band FEC, the expected loss and the bitrate between frames (the stream goes on
    /// seamlessly; libopus applies them from the next frame).
    pub fn set_fec(&mut self, fec: FecSettings) -> Result<(), CodecError> {
        self.inner
            .set_bitrate(opus::Bitrate::Bits(fec.bitrate_bps))
            .map_err(opus_error("set bitrate"))?;
        self.inner
            .set_inband_fec(fec.inband_fec)
            .map_err(opus_error("set inband fec"))?;
        self.inner
            .set_packet_loss_perc(fec.expected_loss_percent)
            .map_err(opus_error("set packet loss"))
    }

    /// `pcm` must be exactly [`SAMPLES_PER_FRAME`] samples; writes into `out`, returns the packet
    /// length. An `out` of [`MAX_OPUS_PACKET`] bytes always suffices.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        if pcm.len() != SAMPLES_PER_FRAME {
            return Err(CodecError::FrameLength {
                expected: SAMPLES_PER_FRAME,
                actual: pcm.len(),
            });
        }
        self.inner.encode(pcm, out).map_err(opus_error("encode"))
    }
}

/// Silent frames encoded at full complexity at the start of a pause, so the far decoder fades
/// out exactly as it would without the switch.
pub const SILENCE_SETTLE_FRAMES: u32 = 5;
/// Complexity used for the rest of a pause.
const PAUSE_COMPLEXITY: i32 = 0;

/// The encoder of the bridge's outgoing stream. In a pause (no AI audio, so the frame is the
/// bridge's own digital silence) it drops libopus to complexity 0 after
/// [`SILENCE_SETTLE_FRAMES`] frames and restores the configured complexity with the first frame
/// of audio: encoding zeros at full complexity costs about 80 % of encoding speech, and the AI is
/// quiet for much of a call. The stream itself is unchanged: one encoder, a valid frame every
/// 20 ms (§7.4: the leg is never silent at the RTP level).
///
/// Once a pause has settled, libopus's packets for zeros repeat in a short cycle (SILK's frame
/// seed goes round in four), the encoder's state no longer changing. When the last packets show
/// such a cycle, the encoder stops running and the cycle is replayed: the phone receives the very
/// bytes libopus would have produced, at the cost of a copy. Audio ends the replay.
pub struct StreamEncoder {
    inner: OpusEncoder,
    complexity: i32,
    /// Consecutive silent frames so far; past [`SILENCE_SETTLE_FRAMES`] the encoder rests.
    silent_frames: u32,
    pause: PausePackets,
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncoder")
            .field("silent_frames", &self.silent_frames)
            .field("replaying", &self.replaying())
            .finish_non_exhaustive()
    }
}

impl StreamEncoder {
    /// A new stream starts rested, at pause complexity: its first silence follows no audio, so
    /// there is nothing to fade out. A call's media starts with the bridge's silence until the
    /// AI speaks, and during a burst of calls those first frames at full complexity were a
    /// noticeable share of the work.
    pub fn new(settings: EncoderSettings) -> Result<Self, CodecError> {
        let mut inner = OpusEncoder::new(settings)?;
        inner.set_complexity(PAUSE_COMPLEXITY.min(settings.complexity))?;
        Ok(Self {
            inner,
            complexity: settings.complexity,
            silent_frames: SILENCE_SETTLE_FRAMES + 1,
            pause: PausePackets::default(),
        })
    }

    /// Changes the loss protection from the next frame on. A replayed pause cycle is dropped:
    /// its packets were made with the old settings, and libopus's own would now differ.
    pub fn set_fec(&mut self, fec: FecSettings) -> Result<(), CodecError> {
        self.pause.clear();
        self.inner.set_fec(fec)
    }

    /// Whether the pause has lasted long enough for the encoder to run at pause complexity.
    fn resting(&self) -> bool {
        self.silent_frames > SILENCE_SETTLE_FRAMES
    }

    /// Whether silent frames are now replayed packets rather than encoded.
    pub fn replaying(&self) -> bool {
        self.pause.period.is_some()
    }

    /// Encodes one frame into `out`; `silent` says it is the bridge's own fill (all zeros), not
    /// AI audio. Returns the packet length.
    pub fn encode(
        &mut self,
        pcm: &[i16],
        silent: bool,
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        if !silent {
            if self.resting() {
                self.inner.set_complexity(self.complexity)?;
            }
            self.silent_frames = 0;
            self.pause.clear();
            return self.inner.encode(pcm, out);
        }
        if let Some(length) = self.pause.replay(out) {
            return Ok(length);
        }
        let was_resting = self.resting();
        self.silent_frames = self.silent_frames.saturating_add(1);
        if self.resting() && !was_resting {
            self.inner
                .set_complexity(PAUSE_COMPLEXITY.min(self.complexity))?;
        }
        let length = self.inner.encode(pcm, out)?;
        if self.resting() {
            self.pause.record(&out[..length]);
        }
        Ok(length)
    }
}

/// Longest packet cycle looked for in a settled pause.
const PAUSE_CYCLE_MAX: usize = 4;
/// Packets kept to see a cycle repeat twice (once could be chance while the pause settles).
const PAUSE_PACKETS_KEPT: usize = 3 * PAUSE_CYCLE_MAX;
/// A settled pause's packets are a few bytes; longer ones are not kept (nor replayed).
const PAUSE_PACKET_MAX: usize = 32;

/// The latest packets of a settled pause, to find and then replay their cycle.
#[derive(Default)]
struct PausePackets {
    packets: [[u8; PAUSE_PACKET_MAX]; PAUSE_PACKETS_KEPT],
    lengths: [usize; PAUSE_PACKETS_KEPT],
    /// Packets recorded (or replayed) in this pause; the latest is at `(count - 1) % KEPT`.
    count: usize,
    /// The cycle's length, once found.
    period: Option<usize>,
}

impl PausePackets {
    fn clear(&mut self) {
        self.count = 0;
        self.period = None;
    }

    fn packet(&self, index: usize) -> &[u8] {
        let slot = index % PAUSE_PACKETS_KEPT;
        &self.packets[slot][..self.lengths[slot]]
    }

    fn push(&mut self, packet: &[u8]) {
        let slot = self.count % PAUSE_PACKETS_KEPT;
        self.packets[slot][..packet.len()].copy_from_slice(packet);
        self.lengths[slot] = packet.len();
        self.count += 1;
    }

    /// Keeps an encoded packet and looks for a cycle in the kept ones: each of the last
    /// `2 * period` packets equal to the one `period` before it.
    fn record(&mut self, packet: &[u8]) {
        if packet.len() > PAUSE_PACKET_MAX {
            self.clear();
            return;
        }
        self.push(packet);
        self.period = (1..=PAUSE_CYCLE_MAX)
            .filter(|period| 3 * period <= self.count)
            .find(|&period| {
                (1..=2 * period).all(|back| {
                    self.packet(self.count - back) == self.packet(self.count - back - period)
                })
            });
    }

    /// The next packet of the cycle, written to `out`; `None` before a cycle is found.
    fn replay(&mut self, out: &mut [u8]) -> Option<usize> {
        let next = self.packet(self.count - self.period?);
        let length = next.len();
        out.get_mut(..length)?.copy_from_slice(next);
        self.push(&out[..length]);
        Some(length)
    }
}

/// Decodes Opus packets straight to 24 kHz mono PCM16, with loss concealment.
/// Stereo packets (Meta signals `opus/48000/2`) are mixed down to mono by libopus.
pub struct OpusDecoder {
    /// The libopus decoder; PLC and FEC both extrapolate from its state, so calls must follow
    /// the packet order.
    inner: opus::Decoder,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    pub fn new() -> Result<Self, CodecError> {
        let inner = opus::Decoder::new(PCM_SAMPLE_RATE, Channels::Mono)
            .map_err(opus_error("decoder create"))?;
        Ok(Self { inner })
    }

    /// Decodes one packet into `out` and returns the samples written: [`SAMPLES_PER_FRAME`] for a
    /// 20 ms packet, up to [`MAX_PACKET_SAMPLES`] for the longest. An `out` too short for the
    /// packet is an error, not a truncation.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        check_packet(packet)?;
        // No packet needs more room than this; capping it also keeps the length within the C API's
        // `int`, beyond which the `opus` crate panics.
        let room = out.len().min(MAX_PACKET_SAMPLES);
        self.inner
            .decode(packet, &mut out[..room], false)
            .map_err(opus_error("decode"))
    }

    /// Packet loss concealment: synthesises one 20 ms frame continuing the last decoded audio
    /// (fading to silence over consecutive losses). Writes [`SAMPLES_PER_FRAME`] samples.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, CodecError> {
        let frame = frame_slot(out)?;
        // An empty packet is libopus' signal for a loss; the frame size tells it how much to make.
        self.inner
            .decode(&[], frame, false)
            .map_err(opus_error("conceal"))
    }

    /// Rebuilds the frame lost just before `next_packet` from the in-band FEC data `next_packet`
    /// carries. Writes [`SAMPLES_PER_FRAME`] samples. Call it before decoding `next_packet` itself.
    /// When the packet carries no FEC data, libopus conceals instead (PLC), silently.
    pub fn recover_fec(
        &mut self,
        next_packet: &[u8],
        out: &mut [i16],
    ) -> Result<usize, CodecError> {
        check_packet(next_packet)?;
        let frame = frame_slot(out)?;
        self.inner
            .decode(next_packet, frame, true)
            .map_err(opus_error("fec decode"))
    }

    /// Forgets all history, as after a long interruption, so the next packet starts cleanly.
    pub fn reset(&mut self) -> Result<(), CodecError> {
        self.inner.reset_state().map_err(opus_error("reset"))
    }
}

/// Whether an Opus packet carries in-band FEC for the frame before it: the LBRR flag of its
/// first SILK frame is set (RFC 6716 §4.2.3: after the VAD flags, one bit per channel at the
/// very start of the range-coded data, each with probability ½, so readable as plain bits).
/// CELT-only packets and anything unparsable carry none.
pub fn carries_fec(packet: &[u8]) -> bool {
    let Some((&toc, rest)) = packet.split_first() else {
        return false;
    };
    let config = toc >> 3;
    // SILK-only: configurations 0..=11 (10, 20, 40, 60 ms); hybrid: 12..=15 (10, 20 ms).
    let silk_frames = match config {
        0..=11 => match config % 4 {
            0 | 1 => 1,
            2 => 2,
            _ => 3,
        },
        12..=15 => 1,
        _ => return false,
    };
    let channels = if toc & 0x04 != 0 { 2 } else { 1 };
    let Some(first_frame) = first_frame(toc & 0x03, rest) else {
        return false;
    };
    let Some(&flags) = first_frame.first() else {
        return false;
    };
    // Per channel: one VAD flag per SILK frame, then the LBRR flag.
    (1..=channels).any(|channel| flags & (0x80 >> (channel * (silk_frames + 1) - 1)) != 0)
}

/// The first frame's data in the bytes after the TOC (RFC 6716 §3.2), or `None` if malformed.
fn first_frame(code: u8, rest: &[u8]) -> Option<&[u8]> {
    match code {
        // One frame, or two of equal size: the first starts right away.
        0 | 1 => Some(rest),
        // Two frames, the first's length in one or two bytes.
        2 => {
            let (length, skip) = frame_length(rest)?;
            rest.get(skip..skip + length)
        }
        // A frame count byte, optional padding length bytes, then (VBR) all lengths but the last.
        _ => {
            let (&count_byte, mut rest) = rest.split_first()?;
            if count_byte & 0x40 != 0 {
                loop {
                    let (&byte, after) = rest.split_first()?;
                    rest = after;
                    if byte != 255 {
                        break;
                    }
                }
            }
            let frames = usize::from(count_byte & 0x3f);
            if frames == 0 {
                return None;
            }
            if count_byte & 0x80 == 0 {
                return Some(rest);
            }
            let mut offset = 0;
            let mut first = None;
            for _ in 1..frames {
                let (length, skip) = frame_length(rest.get(offset..)?)?;
                first.get_or_insert(length);
                offset += skip;
            }
            let data = rest.get(offset..)?;
            match first {
                Some(length) => data.get(..length),
                None => Some(data),
            }
        }
    }
}

/// A frame length coded in one or two bytes (RFC 6716 §3.2.1): the length and the bytes used.
fn frame_length(bytes: &[u8]) -> Option<(usize, usize)> {
    match *bytes.first()? {
        small @ 0..=251 => Some((usize::from(small), 1)),
        large => Some((usize::from(large) + 4 * usize::from(*bytes.get(1)?), 2)),
    }
}

fn check_packet(packet: &[u8]) -> Result<(), CodecError> {
    match packet.len() {
        0 => Err(CodecError::EmptyPacket),
        n if n > MAX_PAYLOAD_BYTES => Err(CodecError::PacketTooLarge(n)),
        _ => Ok(()),
    }
}

/// The first 20 ms of `out`: PLC and FEC produce exactly as much audio as the slot they are given.
fn frame_slot(out: &mut [i16]) -> Result<&mut [i16], CodecError> {
    let actual = out.len();
    out.get_mut(..SAMPLES_PER_FRAME)
        .ok_or(CodecError::OutputTooSmall {
            expected: SAMPLES_PER_FRAME,
            actual,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::audio::{dominant_frequency, rms, tone};

    /// Codec delay plus settling: comparisons skip the first 10 ms of output.
    const SKIP: usize = SAMPLES_PER_FRAME / 2;

    fn encode_all(pcm: &[i16], settings: EncoderSettings) -> Vec<Vec<u8>> {
        let mut encoder = OpusEncoder::new(settings).expect("valid settings");
        let mut buf = [0u8; MAX_OPUS_PACKET];
        pcm.chunks_exact(SAMPLES_PER_FRAME)
            .map(|frame| {
                let n = encoder.encode(frame, &mut buf).expect("encode");
                buf[..n].to_vec()
            })
            .collect()
    }

    fn decode_all(packets: &[Vec<u8>]) -> Vec<i16> {
        let mut decoder = OpusDecoder::new().expect("decoder");
        let mut out = Vec::new();
        let mut frame = [0i16; MAX_PACKET_SAMPLES];
        for packet in packets {
            let n = decoder.decode(packet, &mut frame).expect("decode");
            out.extend_from_slice(&frame[..n]);
        }
        out
    }

    fn error_energy(a: &[i16], b: &[i16]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum()
    }

    #[test]
    fn codec_types_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<OpusEncoder>();
        assert_send::<OpusDecoder>();
    }

    #[test]
    fn a_700_hz_tone_survives_an_opus_round_trip() {
        let input = tone(700.0, 1000, PCM_SAMPLE_RATE, 10_000);
        let packets = encode_all(&input, EncoderSettings::default());
        assert_eq!(packets.len(), 50);
        // Wideband at 20 kbit/s: about 50 bytes a packet, never near the 1275 cap.
        let total: usize = packets.iter().map(Vec::len).sum();
        assert!(total * 8 < 30_000, "{total} bytes for 1 s");

        let output = decode_all(&packets);
        assert_eq!(output.len(), input.len());
        let candidates = [300.0, 500.0, 700.0, 900.0, 1100.0, 1500.0];
        assert_eq!(
            dominant_frequency(&output[SKIP..], PCM_SAMPLE_RATE, &candidates),
            Some(700.0)
        );
        let (rms_in, rms_out) = (rms(&input[SKIP..]), rms(&output[SKIP..]));
        let ratio = rms_out / rms_in;
        assert!((0.8..1.2).contains(&ratio), "in {rms_in} out {rms_out}");
    }

    #[test]
    fn concealment_produces_one_frame_even_before_any_packet() {
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = [1i16; MAX_PACKET_SAMPLES];
        assert_eq!(decoder.conceal(&mut out).unwrap(), SAMPLES_PER_FRAME);
        assert!(out[..SAMPLES_PER_FRAME].iter().all(|&s| s == 0));
        assert!(out[SAMPLES_PER_FRAME..].iter().all(|&s| s == 1));
    }

    #[test]
    fn concealment_continues_the_tone_after_packets() {
        let input = tone(700.0, 200, PCM_SAMPLE_RATE, 10_000);
        let packets = encode_all(&input, EncoderSettings::default());
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = [0i16; SAMPLES_PER_FRAME];
        for packet in &packets {
            decoder.decode(packet, &mut out).unwrap();
        }
        assert_eq!(decoder.conceal(&mut out).unwrap(), SAMPLES_PER_FRAME);
        assert!(
            rms(&out) > 1000.0,
            "PLC should extrapolate, got {}",
            rms(&out)
        );
    }

    #[test]
    fn fec_recovers_a_dropped_frame_better_than_concealment_when_the_encoder_sends_it() {
        // Pitch changes every 60 ms, so PLC (which extrapolates the previous frame) guesses wrong.
        let input = testkit::audio::speech_like(
            &[220.0, 330.0, 180.0, 290.0, 400.0, 250.0, 310.0, 200.0],
            60,
            0,
            PCM_SAMPLE_RATE,
        );
        // At the default 5 % libopus sends no FEC at 20 kbit/s (see `EncoderSettings::inband_fec`).
        let settings = EncoderSettings {
            expected_loss_percent: 10,
            ..EncoderSettings::default()
        };
        let packets = encode_all(&input, settings);
        let reference = decode_all(&packets);

        let mut plc_error = 0.0;
        let mut fec_error = 0.0;
        // Drop every 5th packet, starting at the fifth; compare each decoder's output for the
        // dropped frames with the loss-free decode of the same packets.
        let mut plc = OpusDecoder::new().unwrap();
        let mut fec = OpusDecoder::new().unwrap();
        let mut a = [0i16; SAMPLES_PER_FRAME];
        let mut b = [0i16; SAMPLES_PER_FRAME];
        for (i, packet) in packets.iter().enumerate() {
            let want = &reference[i * SAMPLES_PER_FRAME..(i + 1) * SAMPLES_PER_FRAME];
            if i % 5 == 4 && i + 1 < packets.len() {
                assert_eq!(plc.conceal(&mut a).unwrap(), SAMPLES_PER_FRAME);
                let next = &packets[i + 1];
                assert_eq!(fec.recover_fec(next, &mut b).unwrap(), SAMPLES_PER_FRAME);
                plc_error += error_energy(&a, want);
                fec_error += error_energy(&b, want);
            } else {
                plc.decode(packet, &mut a).unwrap();
                fec.decode(packet, &mut b).unwrap();
            }
        }
        assert!(plc_error > 0.0);
        assert!(
            fec_error < plc_error / 2.0,
            "fec error {fec_error:.3e} vs plc error {plc_error:.3e}"
        );
    }

    /// Drops every 5th packet from the fifth on and rebuilds it both ways; returns the squared
    /// error of FEC and of concealment against the loss-free decode.
    fn fec_and_plc_errors(packets: &[Vec<u8>]) -> (f64, f64) {
        let reference = decode_all(packets);
        let (mut plc, mut fec) = (OpusDecoder::new().unwrap(), OpusDecoder::new().unwrap());
        let (mut a, mut b) = ([0i16; SAMPLES_PER_FRAME], [0i16; SAMPLES_PER_FRAME]);
        let (mut plc_error, mut fec_error) = (0.0, 0.0);
        for (i, packet) in packets.iter().enumerate() {
            let want = &reference[i * SAMPLES_PER_FRAME..(i + 1) * SAMPLES_PER_FRAME];
            if i % 5 == 4 && i + 1 < packets.len() {
                plc.conceal(&mut a).unwrap();
                fec.recover_fec(&packets[i + 1], &mut b).unwrap();
                plc_error += error_energy(&a, want);
                fec_error += error_energy(&b, want);
            } else {
                plc.decode(packet, &mut a).unwrap();
                fec.decode(packet, &mut b).unwrap();
            }
        }
        (fec_error, plc_error)
    }

    #[test]
    fn loss_protection_switched_on_mid_stream_makes_lost_frames_rebuildable_and_off_sends_none() {
        let input = testkit::audio::speech_like(
            &[220.0, 330.0, 180.0, 290.0, 400.0, 250.0, 310.0, 200.0],
            60,
            0,
            PCM_SAMPLE_RATE,
        );
        let frames: Vec<&[i16]> = input.chunks_exact(SAMPLES_PER_FRAME).collect();
        let off = FecSettings {
            inband_fec: false,
            expected_loss_percent: 0,
            bitrate_bps: 20_000,
        };
        let on = FecSettings {
            inband_fec: true,
            expected_loss_percent: 10,
            ..off
        };
        let mut stream = StreamEncoder::new(EncoderSettings::default()).unwrap();
        let mut buf = [0u8; MAX_OPUS_PACKET];
        let mut encode = |stream: &mut StreamEncoder, frames: &[&[i16]]| -> Vec<Vec<u8>> {
            frames
                .iter()
                .map(|frame| {
                    let n = stream.encode(frame, false, &mut buf).unwrap();
                    buf[..n].to_vec()
                })
                .collect()
        };
        stream.set_fec(off).unwrap();
        let unprotected = encode(&mut stream, &frames);
        assert!(!unprotected.iter().any(|p| carries_fec(p)), "FEC while off");
        stream.set_fec(on).unwrap();
        let protected = encode(&mut stream, &frames);
        let with_fec = protected.iter().filter(|p| carries_fec(p)).count();
        assert!(
            with_fec * 3 >= protected.len() * 2,
            "{with_fec} of {} packets carry FEC",
            protected.len()
        );
        // Protected, a lost frame comes back from the next packet far better than concealed;
        // unprotected, "FEC" is only concealment.
        let (fec_error, plc_error) = fec_and_plc_errors(&protected);
        assert!(
            fec_error < plc_error / 2.0,
            "fec error {fec_error:.3e} vs plc error {plc_error:.3e}"
        );
        let (fec_error, plc_error) = fec_and_plc_errors(&unprotected);
        assert!(
            fec_error > plc_error * 0.8,
            "without FEC: {fec_error:.3e} vs plc {plc_error:.3e}"
        );
        // Off again: no more FEC.
        stream.set_fec(off).unwrap();
        let after = encode(&mut stream, &frames);
        assert!(
            !after.iter().any(|p| carries_fec(p)),
            "FEC after switching off"
        );
    }

    #[test]
    fn new_loss_protection_ends_a_replayed_pause_and_libopus_makes_the_pause_again() {
        let settings = EncoderSettings::default();
        let silence = vec![0i16; SAMPLES_PER_FRAME];
        let mut stream = StreamEncoder::new(settings).unwrap();
        let mut buf = [0u8; MAX_OPUS_PACKET];
        for _ in 0..30 {
            stream.encode(&silence, true, &mut buf).unwrap();
        }
        assert!(stream.replaying());
        stream
            .set_fec(FecSettings {
                inband_fec: true,
                expected_loss_percent: 10,
                bitrate_bps: 20_000,
            })
            .unwrap();
        assert!(!stream.replaying(), "the old cycle is dropped");
        // The pause goes on, encoded (and then replayed) with the new settings.
        for _ in 0..30 {
            stream.encode(&silence, true, &mut buf).unwrap();
        }
        assert!(stream.replaying());
    }

    #[test]
    fn the_fec_flag_is_read_from_silk_and_hybrid_packets_of_every_framing() {
        // TOC 0x08: SILK narrowband 20 ms, mono, one frame; the flag is bit 6 of the next byte.
        assert!(carries_fec(&[0x08, 0b0100_0000, 0x12]));
        assert!(!carries_fec(&[0x08, 0b1000_0000, 0x12]));
        // Stereo (TOC bit 2): the side channel's flag counts too (bit 4).
        assert!(carries_fec(&[0x0c, 0b0001_0000]));
        // 40 ms SILK (config 2): two VAD flags, then the LBRR flag (bit 5).
        assert!(carries_fec(&[0x10, 0b0010_0000]));
        assert!(!carries_fec(&[0x10, 0b0100_0000]));
        // Code 1 (two equal frames), code 2 (first frame's length), code 3 (count, padding,
        // VBR lengths): the first frame is found in each.
        assert!(carries_fec(&[0x09, 0x40, 0x00, 0x00, 0x00]));
        assert!(carries_fec(&[0x0a, 2, 0x40, 0x00, 0x00]));
        assert!(!carries_fec(&[0x0a, 2, 0x00, 0x00, 0x40]));
        assert!(carries_fec(&[
            0x0b,
            0b1100_0010,
            1,
            2,
            0x40,
            0x00,
            0x00,
            0x00
        ]));
        assert!(carries_fec(&[0x0b, 0b0000_0010, 0x40, 0x00]));
        // Hybrid (config 12..=15) carries SILK first; CELT-only (16..) never has FEC.
        assert!(carries_fec(&[0x68, 0x40]));
        assert!(!carries_fec(&[0x80, 0xff, 0xff]));
        // Malformed or empty: no FEC, no panic.
        for packet in [
            &[][..],
            &[0x08],
            &[0x0a, 252],
            &[0x0a, 200, 0x40],
            &[0x0b],
            &[0x0b, 0x40, 255, 255],
            &[0x0b, 0x80],
            &[0x0b, 0x83, 255],
        ] {
            assert!(!carries_fec(packet), "{packet:?}");
        }
    }

    #[test]
    fn encoder_rejects_a_frame_of_the_wrong_length() {
        let mut encoder = OpusEncoder::new(EncoderSettings::default()).unwrap();
        let mut out = [0u8; MAX_OPUS_PACKET];
        let err = encoder.encode(&[0; 479], &mut out).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameLength {
                expected: 480,
                actual: 479
            }
        ));
    }

    #[test]
    fn encoder_rejects_out_of_range_settings() {
        let settings = EncoderSettings {
            complexity: 11,
            ..EncoderSettings::default()
        };
        assert!(matches!(
            OpusEncoder::new(settings),
            Err(CodecError::Opus { .. })
        ));
    }

    #[test]
    fn decoder_refuses_bad_packets_and_small_buffers_without_panicking() {
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = [0i16; MAX_PACKET_SAMPLES];
        assert!(matches!(
            decoder.decode(&[], &mut out),
            Err(CodecError::EmptyPacket)
        ));
        // TOC code 3 announces a frame count byte that is missing.
        assert!(matches!(
            decoder.decode(&[0x03], &mut out),
            Err(CodecError::Opus { .. })
        ));
        assert!(matches!(
            decoder.decode(&vec![0u8; 70_000], &mut out),
            Err(CodecError::PacketTooLarge(70_000))
        ));
        let mut short = [0i16; 100];
        assert!(matches!(
            decoder.conceal(&mut short),
            Err(CodecError::OutputTooSmall { .. })
        ));
        // A valid 20 ms packet does not fit in 10 ms of room.
        let packets = encode_all(&tone(700.0, 20, PCM_SAMPLE_RATE, 5000), Default::default());
        let mut half = [0i16; SAMPLES_PER_FRAME / 2];
        assert!(decoder.decode(&packets[0], &mut half).is_err());
        assert_eq!(
            decoder.decode(&packets[0], &mut out).unwrap(),
            SAMPLES_PER_FRAME
        );
    }

    #[test]
    fn silence_encodes_to_small_packets_and_decodes_to_near_silence() {
        let packets = encode_all(&[0; SAMPLES_PER_FRAME * 10], EncoderSettings::default());
        assert!(packets.iter().all(|p| !p.is_empty() && p.len() < 60));
        assert!(rms(&decode_all(&packets)) < 10.0);
    }

    #[test]
    fn a_settled_pause_is_replayed_byte_for_byte_and_audio_ends_the_replay() {
        let settings = EncoderSettings::default();
        let speech = testkit::audio::speech_like(&[220.0, 330.0, 440.0], 180, 60, 24_000);
        let speech: Vec<&[i16]> = speech.chunks_exact(SAMPLES_PER_FRAME).take(25).collect();
        let silence = vec![0i16; SAMPLES_PER_FRAME];
        let mut stream = StreamEncoder::new(settings).expect("encoder");
        // What libopus itself gives, with the same switch to pause complexity.
        let mut reference = OpusEncoder::new(settings).expect("encoder");
        let (mut buf, mut reference_buf) = ([0u8; MAX_OPUS_PACKET], [0u8; MAX_OPUS_PACKET]);
        for frame in &speech {
            stream.encode(frame, false, &mut buf).expect("encode");
            reference.encode(frame, &mut reference_buf).expect("encode");
        }
        let mut replayed = 0;
        for n in 1..=60u32 {
            if n == SILENCE_SETTLE_FRAMES + 1 {
                reference
                    .set_complexity(PAUSE_COMPLEXITY)
                    .expect("complexity");
            }
            replayed += usize::from(stream.replaying());
            let length = stream.encode(&silence, true, &mut buf).expect("encode");
            let expected = reference
                .encode(&silence, &mut reference_buf)
                .expect("encode");
            assert_eq!(buf[..length], reference_buf[..expected], "pause frame {n}");
        }
        assert!(
            replayed >= 40,
            "only {replayed} of 60 pause frames replayed"
        );
        // Audio ends the replay: it is encoded again, at full complexity, and decodes as speech.
        let mut after = Vec::new();
        for frame in &speech {
            let length = stream.encode(frame, false, &mut buf).expect("encode");
            assert!(!stream.replaying());
            after.push(buf[..length].to_vec());
        }
        let plain = encode_all(&speech.concat(), settings);
        let (level, plain_level) = (rms(&decode_all(&after)), rms(&decode_all(&plain)));
        assert!(
            (level - plain_level).abs() < plain_level * 0.1,
            "{level} vs {plain_level}"
        );
    }

    #[test]
    fn a_new_stream_starts_its_silence_rested_and_its_first_audio_at_full_complexity() {
        let settings = EncoderSettings::default();
        let silence = vec![0i16; SAMPLES_PER_FRAME];
        let mut stream = StreamEncoder::new(settings).expect("encoder");
        // libopus at pause complexity from the first frame gives the same bytes.
        let mut reference = OpusEncoder::new(settings).expect("encoder");
        reference
            .set_complexity(PAUSE_COMPLEXITY)
            .expect("complexity");
        let (mut buf, mut reference_buf) = ([0u8; MAX_OPUS_PACKET], [0u8; MAX_OPUS_PACKET]);
        let mut packets = Vec::new();
        for n in 1..=25 {
            let length = stream.encode(&silence, true, &mut buf).expect("encode");
            let expected = reference
                .encode(&silence, &mut reference_buf)
                .expect("encode");
            assert_eq!(buf[..length], reference_buf[..expected], "start frame {n}");
            packets.push(buf[..length].to_vec());
        }
        assert!(
            stream.replaying(),
            "the start's silence is replayed once settled"
        );
        // Audio ends the rest and comes out at the level plain encoding gives.
        let speech = testkit::audio::speech_like(&[220.0, 330.0, 440.0], 180, 60, 24_000);
        let speech: Vec<&[i16]> = speech.chunks_exact(SAMPLES_PER_FRAME).take(25).collect();
        let mut speech_packets = Vec::new();
        for frame in &speech {
            let length = stream.encode(frame, false, &mut buf).expect("encode");
            speech_packets.push(buf[..length].to_vec());
        }
        assert!(!stream.resting());
        let plain = encode_all(&speech.concat(), settings);
        let (level, plain_level) = (rms(&decode_all(&speech_packets)), rms(&decode_all(&plain)));
        assert!(
            (level - plain_level).abs() < plain_level * 0.1,
            "{level} vs {plain_level}"
        );
        // Decoded as one stream (as the phone does), the start is silent.
        packets.extend(speech_packets);
        let decoded = decode_all(&packets);
        assert!(rms(&decoded[..25 * SAMPLES_PER_FRAME]) < 10.0);
    }

    #[test]
    fn a_pause_cycle_counts_only_once_it_has_repeated_twice() {
        let mut pause = PausePackets::default();
        let mut out = [0u8; 8];
        for packet in [&[9u8][..], &[1], &[2], &[3], &[1], &[2], &[3], &[1], &[2]] {
            assert_eq!(pause.replay(&mut out), None);
            pause.record(packet);
        }
        // 1 2 3 1 2 3 1 2: not yet twice round for three.
        assert_eq!(pause.period, None);
        pause.record(&[3]);
        assert_eq!(pause.period, Some(3));
        let next: Vec<u8> = (0..4)
            .map(|_| {
                let length = pause.replay(&mut out).expect("replay");
                assert_eq!(length, 1);
                out[0]
            })
            .collect();
        assert_eq!(next, [1, 2, 3, 1]);
        // A packet too long to keep starts the search over.
        pause.clear();
        pause.record(&[7; PAUSE_PACKET_MAX + 1]);
        assert_eq!((pause.count, pause.period), (0, None));
    }

    #[test]
    fn the_stream_encoder_keeps_pauses_silent_and_speech_after_them_intact() {
        let settings = EncoderSettings::default();
        let speech = tone(440.0, 400, PCM_SAMPLE_RATE, 8000);
        let pause = vec![0i16; SAMPLES_PER_FRAME * 30];
        let mut input = speech.clone();
        input.extend_from_slice(&pause);
        input.extend_from_slice(&speech);
        let mut stream = StreamEncoder::new(settings).expect("encoder");
        let mut buf = [0u8; MAX_OPUS_PACKET];
        let packets: Vec<Vec<u8>> = input
            .chunks_exact(SAMPLES_PER_FRAME)
            .map(|frame| {
                let silent = frame.iter().all(|&s| s == 0);
                let n = stream.encode(frame, silent, &mut buf).expect("encode");
                buf[..n].to_vec()
            })
            .collect();
        assert!(!stream.resting(), "audio ends the rest");
        let decoded = decode_all(&packets);
        let decoded_plain = decode_all(&encode_all(&input, settings));
        let frames = |pcm: &[i16], from: usize, to: usize| {
            pcm[from * SAMPLES_PER_FRAME..to * SAMPLES_PER_FRAME].to_vec()
        };
        // The pause (after the settling frames) is silent, as with plain encoding.
        assert!(
            rms(&frames(
                &decoded,
                20 + SILENCE_SETTLE_FRAMES as usize + 1,
                50
            )) < 10.0
        );
        // The speech after the pause comes back at once, at the level plain encoding gives.
        let after = frames(&decoded, 51, 70);
        let after_plain = frames(&decoded_plain, 51, 70);
        assert_eq!(
            dominant_frequency(&after, PCM_SAMPLE_RATE, &[440.0, 880.0]),
            Some(440.0)
        );
        let (level, plain) = (rms(&after), rms(&after_plain));
        assert!((level - plain).abs() < plain * 0.1, "{level} vs {plain}");
    }

    #[test]
    fn speech_keeps_its_pitch_order_through_an_opus_round_trip() {
        const PITCHES: [f32; 5] = [200.0, 300.0, 250.0, 400.0, 350.0];
        let s = testkit::audio::speech_like(&PITCHES, 120, 60, PCM_SAMPLE_RATE);
        let mut encoder = OpusEncoder::new(EncoderSettings::default()).unwrap();
        let mut decoder = OpusDecoder::new().unwrap();
        let mut packet = [0u8; MAX_OPUS_PACKET];
        let mut frame = [0i16; MAX_PACKET_SAMPLES];
        let mut decoded = Vec::new();
        for chunk in s.chunks(SAMPLES_PER_FRAME) {
            let mut pcm = [0i16; SAMPLES_PER_FRAME];
            pcm[..chunk.len()].copy_from_slice(chunk);
            let len = encoder.encode(&pcm, &mut packet).unwrap();
            let n = decoder.decode(&packet[..len], &mut frame).unwrap();
            decoded.extend_from_slice(&frame[..n]);
        }
        let pitches: Vec<f32> =
            testkit::audio::tone_sequence(&decoded, PCM_SAMPLE_RATE, &PITCHES, 20)
                .into_iter()
                .map(|(_, hz)| hz)
                .collect();
        assert_eq!(pitches, PITCHES);
    }
}
