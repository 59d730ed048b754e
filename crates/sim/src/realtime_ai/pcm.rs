//! The audio formats a GA session can use (§4.2): PCM16 LE at 24 kHz, and G.711 μ-law and A-law
//! at 8 kHz. Internally the double always works on 24 kHz PCM16.

use serde_json::Value;

/// Samples in one millisecond of the double's internal audio (24 kHz).
pub(super) const SAMPLES_PER_MS: usize = 24;
/// Peak of the tones the double speaks.
pub(super) const TONE_AMPLITUDE: f64 = 8000.0;
const RATE_HZ: f64 = 24_000.0;
/// 24 kHz samples per G.711 (8 kHz) sample.
const G711_FACTOR: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AudioFormat {
    Pcm24k,
    Pcmu,
    Pcma,
}

impl AudioFormat {
    /// Reads a validated `{"type": …}` format object; anything else is the PCM default.
    pub(super) fn from_config(format: Option<&Value>) -> Self {
        match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("audio/pcmu") => Self::Pcmu,
            Some("audio/pcma") => Self::Pcma,
            _ => Self::Pcm24k,
        }
    }

    /// Decodes `bytes` of this format to 24 kHz samples appended to `out`. PCM16 may split a
    /// sample across appends; the odd byte waits in `carry` for the next call.
    pub(super) fn decode_into(self, bytes: &[u8], carry: &mut Option<u8>, out: &mut Vec<i16>) {
        match self {
            Self::Pcm24k => {
                let mut rest = bytes;
                if let Some(low) = carry.take() {
                    match rest.split_first() {
                        Some((&high, tail)) => {
                            out.push(i16::from_le_bytes([low, high]));
                            rest = tail;
                        }
                        None => *carry = Some(low),
                    }
                }
                let mut pairs = rest.chunks_exact(2);
                out.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
                if let [last] = pairs.remainder() {
                    *carry = Some(*last);
                }
            }
            Self::Pcmu | Self::Pcma => {
                // Sample-and-hold up to 24 kHz: exact to undo in `encode`, good enough for an
                // energy VAD and an echo.
                out.reserve(bytes.len() * G711_FACTOR);
                for &byte in bytes {
                    let sample = if self == Self::Pcmu {
                        ulaw_to_linear(byte)
                    } else {
                        alaw_to_linear(byte)
                    };
                    out.extend([sample; G711_FACTOR]);
                }
            }
        }
    }

    /// Encodes 24 kHz samples in this format, appending to `out` (G.711 averages each group of
    /// three samples down to 8 kHz; a trailing partial group is dropped).
    pub(super) fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Self::Pcm24k => {
                out.reserve(samples.len() * 2);
                for sample in samples {
                    out.extend_from_slice(&sample.to_le_bytes());
                }
            }
            Self::Pcmu | Self::Pcma => {
                for group in samples.chunks_exact(G711_FACTOR) {
                    let sum: i32 = group.iter().map(|&s| i32::from(s)).sum();
                    let sample = i16::try_from(sum / G711_FACTOR as i32).unwrap_or(0);
                    out.push(if self == Self::Pcmu {
                        linear_to_ulaw(sample)
                    } else {
                        linear_to_alaw(sample)
                    });
                }
            }
        }
    }
}

/// Sample `index` (24 kHz) of a sine of `hz` at [`TONE_AMPLITUDE`].
pub(super) fn tone_sample(hz: f32, index: usize) -> i16 {
    let phase = std::f64::consts::TAU * f64::from(hz) * index as f64 / RATE_HZ;
    // `as` saturates and maps NaN to 0, so a nonsense `hz` gives silence, not a panic.
    (TONE_AMPLITUDE * phase.sin()) as i16
}

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32_635;

/// G.711 μ-law: sign, 3-bit segment, 4-bit step, all bits inverted.
fn linear_to_ulaw(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // `biased >> 7` is in 1..=255, so the segment (its highest set bit) is 0..=7.
    let segment = 31 - ((biased >> 7) as u32).leading_zeros();
    let step = (biased >> (segment + 3)) & 0x0F;
    !(sign | ((segment as i32) << 4) | step) as u8
}

fn ulaw_to_linear(byte: u8) -> i16 {
    let code = i32::from(!byte);
    let segment = (code >> 4) & 0x07;
    let step = code & 0x0F;
    let magnitude = (((step << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    let value = if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    };
    value as i16
}

/// Upper ends of the A-law segments, on the 13-bit magnitude.
const ALAW_SEGMENT_ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

/// G.711 A-law: sign, 3-bit segment, 4-bit step, even bits inverted (XOR 0x55).
fn linear_to_alaw(sample: i16) -> u8 {
    let value = i32::from(sample) >> 3;
    let (magnitude, sign_mask) = if value >= 0 {
        (value, 0xD5)
    } else {
        (-value - 1, 0x55)
    };
    let Some(segment) = ALAW_SEGMENT_ENDS.iter().position(|&end| magnitude <= end) else {
        return (0x7F ^ sign_mask) as u8;
    };
    let shift = if segment < 2 { 1 } else { segment };
    let code = ((segment as i32) << 4) | ((magnitude >> shift) & 0x0F);
    (code ^ sign_mask) as u8
}

fn alaw_to_linear(byte: u8) -> i16 {
    let code = i32::from(byte ^ 0x55);
    let segment = (code >> 4) & 0x07;
    let mut magnitude = (code & 0x0F) << 4;
    magnitude += if segment == 0 { 8 } else { 0x108 };
    if segment > 1 {
        magnitude <<= segment - 1;
    }
    let value = if code & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    };
    value as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_samples_split_across_appends_are_reassembled() {
        let samples: Vec<i16> = vec![1, -2, 300, -32768, 32767];
        let mut bytes = Vec::new();
        AudioFormat::Pcm24k.encode(&samples, &mut bytes);
        let mut carry = None;
        let mut out = Vec::new();
        for piece in [&bytes[..1], &bytes[1..1], &bytes[1..4], &bytes[4..]] {
            AudioFormat::Pcm24k.decode_into(piece, &mut carry, &mut out);
        }
        assert_eq!(out, samples);
        assert_eq!(carry, None);
    }

    #[test]
    fn g711_round_trips_within_its_quantisation_step() {
        for format in [AudioFormat::Pcmu, AudioFormat::Pcma] {
            for sample in (-32768..=32767).step_by(97).map(|s: i32| s as i16) {
                let mut bytes = Vec::new();
                format.encode(&[sample; 3], &mut bytes);
                assert_eq!(bytes.len(), 1);
                let mut out = Vec::new();
                format.decode_into(&bytes, &mut None, &mut out);
                assert_eq!(out.len(), 3);
                let error = (i32::from(out[0]) - i32::from(sample)).abs();
                // Largest G.711 step is 1024 (μ-law) / 1024 (A-law) at full scale.
                let allowed = (i32::from(sample).abs() / 16).max(16) + 8;
                assert!(
                    error <= allowed,
                    "{format:?} {sample} -> {} (error {error})",
                    out[0]
                );
            }
        }
    }

    #[test]
    fn g711_silence_bytes_decode_to_near_zero() {
        let mut out = Vec::new();
        AudioFormat::Pcmu.decode_into(&[0xFF], &mut None, &mut out);
        assert_eq!(out, vec![0, 0, 0]);
        out.clear();
        AudioFormat::Pcma.decode_into(&[0xD5], &mut None, &mut out);
        assert!(out.iter().all(|s| s.abs() <= 8));
    }

    #[test]
    fn decoded_g711_re_encodes_to_the_same_bytes() {
        for format in [AudioFormat::Pcmu, AudioFormat::Pcma] {
            let bytes: Vec<u8> = (0..=255).collect();
            let mut pcm = Vec::new();
            format.decode_into(&bytes, &mut None, &mut pcm);
            let mut again = Vec::new();
            format.encode(&pcm, &mut again);
            for (a, b) in bytes.iter().zip(&again) {
                // μ-law has two zeros (0x7F and 0xFF); both decode to 0.
                if format == AudioFormat::Pcmu && (*a == 0x7F || *a == 0xFF) {
                    continue;
                }
                assert_eq!(a, b, "{format:?}");
            }
        }
    }

    #[test]
    fn tone_has_the_configured_peak() {
        let peak = (0..2400).map(|i| tone_sample(1000.0, i).abs()).max();
        assert_eq!(peak, Some(8000));
        assert_eq!(tone_sample(f32::NAN, 5), 0);
    }
}
