//! Test signals and their analysis (tones, speech-like syllables, Goertzel, onsets, WAV files) for the doubles, tests and demo.
//!
//! Everything here is deterministic and works on PCM16 mono. Signals are built so that they can be
//! recognised again after a trip through the codec and the network: each carries one dominant
//! frequency per segment, which [`tone_sequence`] reads back.

use std::f64::consts::PI;
use std::io;
use std::path::Path;

/// Below this RMS (i16 units, about −50 dBFS) a window counts as silence for [`dominant_frequency`].
pub const SILENCE_RMS: f64 = 100.0;

/// How far the winning candidate's power must exceed the runner-up's in [`dominant_frequency`].
const DOMINANCE: f64 = 4.0;

/// Window of [`onset`].
const ONSET_WINDOW_MS: u32 = 10;

/// Relative weights of the fundamental and its 2nd and 3rd harmonics in [`speech_like`]. The
/// fundamental keeps ≥ 12× the power of either harmonic, so it stays dominant even when a harmonic
/// is itself a candidate.
const HARMONICS: [f64; 3] = [0.7, 0.2, 0.1];

/// Peak amplitudes of successive syllables in [`speech_like`], cycled: speech is not one level.
const SYLLABLE_PEAKS: [f64; 4] = [8_000.0, 9_000.0, 6_000.0, 7_000.0];

/// Attack and decay of each [`speech_like`] syllable, so that onsets are not clicks.
const RAMP_MS: u32 = 10;

fn samples_for(duration_ms: u32, sample_rate: u32) -> usize {
    usize::try_from(u64::from(sample_rate) * u64::from(duration_ms) / 1000).unwrap_or(usize::MAX)
}

fn to_i16(x: f64) -> i16 {
    // `as` saturates and maps NaN to 0, which is exactly the clipping wanted here.
    x.round() as i16
}

/// A sine tone (PCM16 mono), amplitude in i16 units.
pub fn tone(hz: f32, duration_ms: u32, sample_rate: u32, amplitude: i16) -> Vec<i16> {
    let n = samples_for(duration_ms, sample_rate);
    let step = 2.0 * PI * f64::from(hz) / f64::from(sample_rate);
    let amplitude = f64::from(amplitude);
    (0..n)
        .map(|i| to_i16(amplitude * (step * i as f64).sin()))
        .collect()
}

pub fn silence(duration_ms: u32, sample_rate: u32) -> Vec<i16> {
    vec![0; samples_for(duration_ms, sample_rate)]
}

/// "Speech-like" test signal: syllables of `syllable_ms` each carrying one of `pitches_hz` (a
/// fundamental plus 2 weaker harmonics, 10 ms attack/decay envelope, peak amplitude 6000–9000),
/// separated by `gap_ms` silences (none after the last). Recognisable afterwards by
/// [`dominant_frequency`] per syllable.
pub fn speech_like(
    pitches_hz: &[f32],
    syllable_ms: u32,
    gap_ms: u32,
    sample_rate: u32,
) -> Vec<i16> {
    let syllable_len = samples_for(syllable_ms, sample_rate);
    // A syllable shorter than two ramps gets a triangular envelope.
    let ramp = samples_for(RAMP_MS, sample_rate)
        .min(syllable_len / 2)
        .max(1);
    let gap = silence(gap_ms, sample_rate);
    let wave_peak = harmonic_peak();
    let mut out = Vec::new();
    for (index, &pitch) in pitches_hz.iter().enumerate() {
        if index > 0 {
            out.extend_from_slice(&gap);
        }
        let scale = SYLLABLE_PEAKS[index % SYLLABLE_PEAKS.len()] / wave_peak;
        let step = 2.0 * PI * f64::from(pitch) / f64::from(sample_rate);
        out.extend((0..syllable_len).map(|i| {
            let from_edge = i.min(syllable_len - 1 - i);
            let envelope = (from_edge as f64 / ramp as f64).min(1.0);
            let wave: f64 = HARMONICS
                .iter()
                .zip(1..)
                .map(|(weight, k)| weight * (step * f64::from(k) * i as f64).sin())
                .sum();
            to_i16(scale * envelope * wave)
        }));
    }
    out
}

/// Peak of the fundamental-plus-harmonics waveform (in phase, weights [`HARMONICS`]) over one
/// period: below 1 because the harmonics never all peak together, so syllables are scaled by it.
fn harmonic_peak() -> f64 {
    const STEPS: u32 = 4096;
    (0..STEPS)
        .map(|i| {
            let phase = 2.0 * PI * f64::from(i) / f64::from(STEPS);
            HARMONICS
                .iter()
                .zip(1..)
                .map(|(weight, k)| weight * (phase * f64::from(k)).sin())
                .sum::<f64>()
                .abs()
        })
        .fold(f64::MIN_POSITIVE, f64::max)
}

/// Normalised Goertzel power of `hz` in `samples`: the squared amplitude of that sinusoid relative
/// to full scale, so about 1 for a full-scale sine, 0.25 for a half-scale one, 0 for silence.
/// The frequency need not fall on a DFT bin; resolution is about `sample_rate / samples.len()`.
pub fn goertzel(samples: &[i16], sample_rate: u32, hz: f32) -> f64 {
    if samples.is_empty() || sample_rate == 0 {
        return 0.0;
    }
    let omega = 2.0 * PI * f64::from(hz) / f64::from(sample_rate);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) / 32_768.0 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0);
    // A sine of amplitude A over N samples gives |X| ≈ A·N/2.
    let half_n = samples.len() as f64 / 2.0;
    power / (half_n * half_n)
}

/// The candidate frequency with the most Goertzel power, if it stands clearly above the others
/// (≥ 4× the runner-up's power) and the RMS is above [`SILENCE_RMS`].
pub fn dominant_frequency(samples: &[i16], sample_rate: u32, candidates: &[f32]) -> Option<f32> {
    if rms(samples) < SILENCE_RMS {
        return None;
    }
    let mut best: Option<(f32, f64)> = None;
    let mut runner_up = 0.0f64;
    for &hz in candidates {
        let power = goertzel(samples, sample_rate, hz);
        match best {
            Some((_, best_power)) if power <= best_power => runner_up = runner_up.max(power),
            _ => {
                if let Some((_, previous)) = best {
                    runner_up = runner_up.max(previous);
                }
                best = Some((hz, power));
            }
        }
    }
    let (hz, power) = best?;
    (power > 0.0 && power >= DOMINANCE * runner_up).then_some(hz)
}

/// Root mean square in i16 units (0 for no samples).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (sum_of_squares(samples) as f64 / samples.len() as f64).sqrt()
}

/// Exact: i16² < 2³⁰, so 2³³ samples fit in a u64 before it could overflow.
fn sum_of_squares(samples: &[i16]) -> u64 {
    samples.iter().map(|&x| square(x)).sum()
}

fn square(x: i16) -> u64 {
    let x = u64::from(x.unsigned_abs());
    x * x
}

/// Sequence of recognised tones in a recording: windows of `window_ms`, consecutive windows with
/// the same dominant candidate merged, silence (or a window with no clear winner) separating them;
/// returns (start_ms, hz) per segment. A trailing partial window shorter than half a window is
/// ignored (too short to resolve the candidates).
pub fn tone_sequence(
    samples: &[i16],
    sample_rate: u32,
    candidates: &[f32],
    window_ms: u32,
) -> Vec<(u32, f32)> {
    let window = samples_for(window_ms, sample_rate);
    if window == 0 {
        return Vec::new();
    }
    let mut segments = Vec::new();
    let mut current: Option<f32> = None;
    for (index, chunk) in samples.chunks(window).enumerate() {
        if chunk.len() * 2 < window {
            break;
        }
        let found = dominant_frequency(chunk, sample_rate, candidates);
        if let Some(hz) = found
            && current != Some(hz)
        {
            let start_ms = u32::try_from(index)
                .unwrap_or(u32::MAX)
                .saturating_mul(window_ms);
            segments.push((start_ms, hz));
        }
        current = found;
    }
    segments
}

/// Index of the first sample whose 10 ms window (the window starting at that sample) has an RMS
/// reaching `threshold`: onset detection for latency markers. A recording shorter than the window
/// is judged as one window starting at 0.
pub fn onset(samples: &[i16], sample_rate: u32, threshold: f64) -> Option<usize> {
    let window = samples_for(ONSET_WINDOW_MS, sample_rate).max(1);
    if samples.len() <= window {
        return (!samples.is_empty() && rms(samples) >= threshold).then_some(0);
    }
    // Compare sums of squares rather than RMS: exact integer sliding sums, no drift, no sqrt.
    let needed = threshold.max(0.0).powi(2) * window as f64;
    let mut sum = sum_of_squares(&samples[..window]);
    for start in 0..=samples.len() - window {
        if start > 0 {
            sum = sum - square(samples[start - 1]) + square(samples[start + window - 1]);
        }
        if sum as f64 >= needed {
            return Some(start);
        }
    }
    None
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WAV: {message}"))
}

/// `N` bytes at `at`, or `None` past the end (never an overflow, whatever `at`).
fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..)?.get(..N)?.try_into().ok()
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    bytes_at(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes_at(bytes, at).map(u32::from_le_bytes)
}

const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// 16-bit PCM WAV reader: any channel count, mixed to mono by averaging; returns the sample rate.
/// Tolerates chunks in any order, unknown chunks, and a data size larger than the file (as left by
/// recorders that were stopped before rewriting the header).
pub fn read_wav(path: &Path) -> io::Result<(u32, Vec<i16>)> {
    parse_wav(&std::fs::read(path)?)
}

fn parse_wav(bytes: &[u8]) -> io::Result<(u32, Vec<i16>)> {
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(invalid("not a RIFF/WAVE file"));
    }
    let mut format: Option<(u16, u32)> = None;
    let mut at = 12usize;
    while let (Some(id), Some(size)) = (
        bytes_at::<4>(bytes, at),
        u32_at(bytes, at.saturating_add(4)),
    ) {
        // In bounds: the 8 header bytes were just read.
        let body_start = at + 8;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let body_end = body_start.saturating_add(size).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match &id {
            b"fmt " => format = Some(parse_fmt(body)?),
            b"data" => {
                let (channels, sample_rate) = format.ok_or_else(|| invalid("data before fmt"))?;
                return Ok((sample_rate, mix_to_mono(body, channels)));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = body_start.saturating_add(size).saturating_add(size & 1);
    }
    Err(invalid("no data chunk"))
}

/// Returns (channels, sample rate) after checking that the samples are 16-bit integer PCM.
fn parse_fmt(body: &[u8]) -> io::Result<(u16, u32)> {
    let short = || invalid("fmt chunk too short");
    let mut tag = u16_at(body, 0).ok_or_else(short)?;
    let channels = u16_at(body, 2).ok_or_else(short)?;
    let sample_rate = u32_at(body, 4).ok_or_else(short)?;
    let bits = u16_at(body, 14).ok_or_else(short)?;
    if tag == WAVE_FORMAT_EXTENSIBLE {
        // The real format is the first two bytes of the sub-format GUID.
        tag = u16_at(body, 24).ok_or_else(short)?;
    }
    if tag != WAVE_FORMAT_PCM || bits != 16 {
        return Err(invalid("only 16-bit integer PCM is supported"));
    }
    if channels == 0 || sample_rate == 0 {
        return Err(invalid("zero channels or sample rate"));
    }
    Ok((channels, sample_rate))
}

fn mix_to_mono(data: &[u8], channels: u16) -> Vec<i16> {
    let frame_bytes = 2 * usize::from(channels);
    data.chunks_exact(frame_bytes)
        .map(|frame| {
            let sum: i64 = frame
                .chunks_exact(2)
                .map(|s| i64::from(i16::from_le_bytes([s[0], s[1]])))
                .sum();
            // The mean of i16 values is an i16.
            (sum / i64::from(channels)) as i16
        })
        .collect()
}

/// 16-bit PCM mono WAV writer (a plain 44-byte header).
pub fn write_wav(path: &Path, sample_rate: u32, samples: &[i16]) -> io::Result<()> {
    let data_len = u32::try_from(samples.len() * 2)
        .ok()
        .filter(|len| *len <= u32::MAX - 36)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too long for a WAV file"))?;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&WAVE_FORMAT_PCM.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // channels
    bytes.extend_from_slice(&sample_rate.to_le_bytes());
    bytes.extend_from_slice(&(sample_rate.saturating_mul(2)).to_le_bytes()); // byte rate
    bytes.extend_from_slice(&2u16.to_le_bytes()); // block align
    bytes.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

/// Speech for an offline codec measurement: the WAV at `input` resampled to `rate`, cut to whole
/// frames of `frame` samples, and written to `out_dir/reference.wav` for the scorer.
pub fn reference_speech(
    input: &Path,
    rate: u32,
    frame: usize,
    out_dir: &Path,
) -> io::Result<Vec<i16>> {
    let (input_rate, samples) = read_wav(input)?;
    let mut pcm = resample(&samples, input_rate, rate);
    pcm.truncate(pcm.len() / frame * frame);
    write_wav(&out_dir.join("reference.wav"), rate, &pcm)?;
    Ok(pcm)
}

/// Linear-interpolation resampler, for test input only (never on the bridge path): it does not
/// filter, so downsampling folds content above the new Nyquist frequency back into the band.
pub fn resample(samples: &[i16], from_rate: u32, to_rate: u32) -> Vec<i16> {
    if from_rate == to_rate {
        return samples.to_vec();
    }
    if samples.is_empty() || from_rate == 0 || to_rate == 0 {
        return Vec::new();
    }
    let (from, to) = (u128::from(from_rate), u128::from(to_rate));
    let out_len = (samples.len() as u128 * to).div_ceil(from);
    let last = samples.len() - 1;
    (0..out_len)
        .map(|j| {
            // Exact rational position j·from/to, split into index and fraction.
            let position = j * from;
            let index = usize::try_from(position / to).unwrap_or(last).min(last);
            let fraction = (position % to) as f64 / to as f64;
            let a = f64::from(samples[index]);
            let b = f64::from(samples[(index + 1).min(last)]);
            to_i16(a + (b - a) * fraction)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PITCHES: [f32; 5] = [200.0, 300.0, 250.0, 400.0, 350.0];

    #[test]
    fn tone_has_the_requested_length_amplitude_and_frequency() {
        let t = tone(1000.0, 100, 24_000, 10_000);
        assert_eq!(t.len(), 2400);
        assert_eq!(t.iter().map(|s| s.unsigned_abs()).max(), Some(10_000));
        assert!((rms(&t) - 10_000.0 / 2f64.sqrt()).abs() < 10.0);
        assert!((goertzel(&t, 24_000, 1000.0) - 0.0931).abs() < 0.001);
        assert!(goertzel(&t, 24_000, 1500.0) < 1e-4);
    }

    #[test]
    fn a_full_scale_sine_has_goertzel_power_near_one() {
        let t = tone(440.0, 500, 48_000, i16::MAX);
        assert!((goertzel(&t, 48_000, 440.0) - 1.0).abs() < 0.01);
        assert_eq!(goertzel(&[], 48_000, 440.0), 0.0);
        assert_eq!(goertzel(&t, 0, 440.0), 0.0);
    }

    #[test]
    fn silence_is_zeros_of_the_right_length() {
        let s = silence(30, 16_000);
        assert_eq!(s.len(), 480);
        assert!(s.iter().all(|&x| x == 0));
        assert_eq!(rms(&s), 0.0);
        assert_eq!(rms(&[]), 0.0);
    }

    #[test]
    fn rms_of_a_square_wave_is_its_amplitude() {
        let square: Vec<i16> = (0..100)
            .map(|i| if i % 2 == 0 { 300 } else { -300 })
            .collect();
        assert_eq!(rms(&square), 300.0);
        assert_eq!(rms(&[i16::MIN; 4]), 32_768.0);
    }

    #[test]
    fn dominant_frequency_picks_the_clear_winner_only() {
        let candidates = [300.0, 500.0, 700.0];
        let t = tone(500.0, 100, 24_000, 5000);
        assert_eq!(dominant_frequency(&t, 24_000, &candidates), Some(500.0));
        // Two equal tones: no clear winner.
        let mix: Vec<i16> = t
            .iter()
            .zip(tone(700.0, 100, 24_000, 5000))
            .map(|(a, b)| a / 2 + b / 2)
            .collect();
        assert_eq!(dominant_frequency(&mix, 24_000, &candidates), None);
        // Too quiet.
        let quiet = tone(500.0, 100, 24_000, 50);
        assert_eq!(dominant_frequency(&quiet, 24_000, &candidates), None);
        assert_eq!(dominant_frequency(&t, 24_000, &[]), None);
        assert_eq!(dominant_frequency(&t, 24_000, &[500.0]), Some(500.0));
    }

    #[test]
    fn speech_like_has_the_documented_shape() {
        let s = speech_like(&PITCHES, 100, 50, 24_000);
        assert_eq!(s.len(), 5 * 2400 + 4 * 1200);
        // Each syllable: envelope starts and ends at zero, peak within 6000..=9000.
        for (index, syllable) in s.chunks(3600).enumerate() {
            let syllable = &syllable[..2400];
            assert_eq!(syllable[0], 0);
            let peak = syllable.iter().map(|x| x.unsigned_abs()).max().unwrap();
            assert!(
                (5000..=9000).contains(&peak),
                "syllable {index} peak {peak}"
            );
            assert_eq!(
                dominant_frequency(&syllable[240..2160], 24_000, &PITCHES),
                Some(PITCHES[index])
            );
        }
        // The gaps are silent.
        assert!(s[2400..3600].iter().all(|&x| x == 0));
        assert!(speech_like(&[], 100, 50, 24_000).is_empty());
    }

    #[test]
    fn speech_like_fundamental_beats_its_own_harmonic_as_a_candidate() {
        let s = speech_like(&[200.0], 200, 0, 24_000);
        assert_eq!(
            dominant_frequency(&s, 24_000, &[200.0, 400.0, 600.0]),
            Some(200.0)
        );
    }

    #[test]
    fn tone_sequence_recovers_the_pitch_order_of_speech_like_audio() {
        let s = speech_like(&PITCHES, 120, 60, 24_000);
        let sequence = tone_sequence(&s, 24_000, &PITCHES, 20);
        let pitches: Vec<f32> = sequence.iter().map(|&(_, hz)| hz).collect();
        assert_eq!(pitches, PITCHES);
        // Segment starts are at syllable starts, within one window.
        for (index, &(start_ms, _)) in sequence.iter().enumerate() {
            let expected = index as u32 * 180;
            assert!(
                start_ms.abs_diff(expected) <= 20,
                "{start_ms} vs {expected}"
            );
        }
    }

    #[test]
    fn tone_sequence_separates_repeated_pitches_by_silence() {
        let s = speech_like(&[300.0, 300.0], 100, 100, 24_000);
        assert_eq!(
            tone_sequence(&s, 24_000, &[300.0, 500.0], 20),
            vec![(0, 300.0), (200, 300.0)]
        );
        assert!(tone_sequence(&s, 24_000, &[300.0], 0).is_empty());
    }

    #[test]
    fn onset_finds_where_a_burst_starts() {
        let mut s = silence(200, 24_000);
        s.extend(tone(1000.0, 100, 24_000, 8000));
        let at = onset(&s, 24_000, 1000.0).unwrap();
        // The window starting at the onset reaches the threshold a little before the burst.
        assert!((4800 - 240..=4800).contains(&at), "{at}");
        assert_eq!(onset(&s, 24_000, 6000.0), None);
        assert_eq!(onset(&silence(100, 24_000), 24_000, 1.0), None);
        assert_eq!(onset(&[5000; 10], 24_000, 1000.0), Some(0));
        assert_eq!(onset(&[], 24_000, 0.0), None);
    }

    #[test]
    fn wav_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("wvb-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        let samples = tone(440.0, 250, 16_000, 12_345);
        write_wav(&path, 16_000, &samples).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 44 + 8000);
        let (rate, read) = read_wav(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rate, 16_000);
        assert_eq!(read, samples);
    }

    fn stereo_wav(frames: &[(i16, i16)], extra_chunk: bool) -> Vec<u8> {
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&WAVE_FORMAT_PCM.to_le_bytes());
        fmt.extend_from_slice(&2u16.to_le_bytes());
        fmt.extend_from_slice(&8000u32.to_le_bytes());
        fmt.extend_from_slice(&32_000u32.to_le_bytes());
        fmt.extend_from_slice(&4u16.to_le_bytes());
        fmt.extend_from_slice(&16u16.to_le_bytes());
        let mut body = b"WAVE".to_vec();
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&fmt);
        if extra_chunk {
            // An odd-sized chunk, padded, as recorders write LIST/INFO chunks.
            body.extend_from_slice(b"LIST");
            body.extend_from_slice(&3u32.to_le_bytes());
            body.extend_from_slice(&[1, 2, 3, 0]);
        }
        body.extend_from_slice(b"data");
        body.extend_from_slice(&(frames.len() as u32 * 4).to_le_bytes());
        for (l, r) in frames {
            body.extend_from_slice(&l.to_le_bytes());
            body.extend_from_slice(&r.to_le_bytes());
        }
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        file
    }

    #[test]
    fn stereo_wav_is_mixed_to_mono() {
        let frames = [(1000, 3000), (-100, 100), (i16::MAX, i16::MAX), (-5, -6)];
        let expected = vec![2000, 0, i16::MAX, -5];
        for extra in [false, true] {
            let (rate, mono) = parse_wav(&stereo_wav(&frames, extra)).unwrap();
            assert_eq!(rate, 8000);
            assert_eq!(mono, expected);
        }
    }

    #[test]
    fn malformed_wav_is_an_error_not_a_panic() {
        let good = stereo_wav(&[(1, 2), (3, 4)], true);
        // Every truncation either fails cleanly or yields a prefix of the samples.
        for len in 0..good.len() {
            if let Ok((_, samples)) = parse_wav(&good[..len]) {
                assert!(samples.len() <= 2);
            }
        }
        assert!(parse_wav(b"RIFF\0\0\0\0WAVEdata\xff\xff\xff\xff").is_err());
        let mut float = good.clone();
        float[20] = 3; // IEEE float format tag
        assert!(parse_wav(&float).is_err());
        // A data size larger than the file (an unfinished recording) reads what is there.
        let mut unfinished = stereo_wav(&[(10, 20)], false);
        let at = unfinished.len() - 8;
        unfinished[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_wav(&unfinished).unwrap().1, vec![15]);
        let missing = std::env::temp_dir().join("wvb-audio-no-such-file.wav");
        assert_eq!(
            read_wav(&missing).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn resample_keeps_frequency_and_duration() {
        let t16 = tone(500.0, 200, 16_000, 8000);
        let t24 = resample(&t16, 16_000, 24_000);
        assert_eq!(t24.len(), 4800);
        assert_eq!(
            dominant_frequency(&t24, 24_000, &[300.0, 500.0, 750.0]),
            Some(500.0)
        );
        let reference = tone(500.0, 200, 24_000, 8000);
        // Past the last input sample there is nothing to interpolate towards: skip the tail.
        let worst = t24[..4797]
            .iter()
            .zip(&reference)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(worst < 100, "worst sample error {worst}");
        let back = resample(&t24, 24_000, 16_000);
        assert_eq!(back.len(), t16.len());
        assert_eq!(resample(&[1, 2, 3], 8000, 8000), vec![1, 2, 3]);
        assert_eq!(resample(&[1, 3], 8000, 16_000), vec![1, 2, 3, 3]);
        assert!(resample(&[], 8000, 16_000).is_empty());
        assert!(resample(&[1], 0, 16_000).is_empty());
    }
}
