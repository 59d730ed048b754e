//! Encodes speech with each candidate encoder setting the way the bridge does (24 kHz PCM16 in,
//! 20 ms frames), decodes it the way a phone would, and writes the decoded audio plus the
//! encoder's cost per frame. `scripts/codec_quality.sh` scores the WAVs with PESQ.
//!
//! Usage: `cargo run --release -p bridge --example codec_sweep -- <speech.wav> <out-dir>`
//! Writes `<out-dir>/<name>.wav` (24 kHz) per setting and prints CSV:
//! `name,bitrate,complexity,bandwidth,encode_us,decode_us,kbps`.
//!
//! Two more rows compare the bridge's [`StreamEncoder`] (which drops to complexity 0 in long
//! pauses) with encoding every frame, on the same speech with 400 ms pauses of digital silence
//! every 1.6 s (`paused_*`, scored against `reference_paused.wav`).

use std::path::PathBuf;
use std::time::Instant;

use bridge::media::codec::{
    Bandwidth, EncoderSettings, MAX_OPUS_PACKET, MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder,
    PCM_SAMPLE_RATE, SAMPLES_PER_FRAME, StreamEncoder,
};
use testkit::audio;

/// Times each encode is repeated to steady the cost figure.
const REPEATS: usize = 5;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: codec_sweep <speech.wav> <out-dir>");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let pcm = audio::reference_speech(input.as_ref(), PCM_SAMPLE_RATE, SAMPLES_PER_FRAME, &out)?;

    let mut settings = Vec::new();
    for complexity in [0, 1, 2, 3, 4, 5, 6, 8, 10] {
        settings.push((20_000, complexity, Bandwidth::Wideband));
    }
    for bitrate in [12_000, 16_000, 24_000, 32_000] {
        settings.push((bitrate, 5, Bandwidth::Wideband));
        settings.push((bitrate, 2, Bandwidth::Wideband));
    }
    settings.push((20_000, 5, Bandwidth::Superwideband));
    settings.push((20_000, 5, Bandwidth::Mediumband));

    println!("name,bitrate,complexity,bandwidth,encode_us,decode_us,kbps");
    let paused = with_pauses(&pcm);
    audio::write_wav(&out.join("reference_paused.wav"), PCM_SAMPLE_RATE, &paused)?;
    for skip in [false, true] {
        let settings = EncoderSettings::default();
        let mut full = OpusEncoder::new(settings)?;
        let mut stream = StreamEncoder::new(settings)?;
        let mut packets = Vec::new();
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let started = Instant::now();
        for frame in paused.chunks_exact(SAMPLES_PER_FRAME) {
            let silent = frame.iter().all(|&s| s == 0);
            let length = if skip {
                stream.encode(frame, silent, &mut packet)?
            } else {
                full.encode(frame, &mut packet)?
            };
            packets.push(packet[..length].to_vec());
        }
        let frames = packets.len();
        let encode_us = started.elapsed().as_secs_f64() * 1e6 / frames as f64;
        let (decoded, decode_us) = decode(&packets)?;
        let name = if skip { "paused_stream" } else { "paused_full" };
        audio::write_wav(&out.join(format!("{name}.wav")), PCM_SAMPLE_RATE, &decoded)?;
        println!(
            "{name},{},{},{},{encode_us:.1},{decode_us:.1},{:.1}",
            settings.bitrate_bps,
            settings.complexity,
            settings.max_bandwidth.as_str(),
            kbps(&packets)
        );
    }
    for (bitrate_bps, complexity, max_bandwidth) in settings {
        let settings = EncoderSettings {
            bitrate_bps,
            complexity,
            max_bandwidth,
            ..EncoderSettings::default()
        };
        let name = format!(
            "b{}_c{}_{}",
            bitrate_bps / 1000,
            complexity,
            max_bandwidth.as_str()
        );
        let mut packets = Vec::new();
        let mut packet = vec![0u8; MAX_OPUS_PACKET];
        let started = Instant::now();
        for repeat in 0..REPEATS {
            let mut encoder = OpusEncoder::new(settings)?;
            for frame in pcm.chunks_exact(SAMPLES_PER_FRAME) {
                let length = encoder.encode(frame, &mut packet)?;
                if repeat == 0 {
                    packets.push(packet[..length].to_vec());
                }
            }
        }
        let frames = pcm.len() / SAMPLES_PER_FRAME;
        let encode_us = started.elapsed().as_secs_f64() * 1e6 / (frames * REPEATS) as f64;
        let (decoded, decode_us) = decode(&packets)?;
        let kbps = kbps(&packets);
        audio::write_wav(&out.join(format!("{name}.wav")), PCM_SAMPLE_RATE, &decoded)?;
        println!(
            "{name},{bitrate_bps},{complexity},{},{encode_us:.1},{decode_us:.1},{kbps:.1}",
            max_bandwidth.as_str()
        );
    }
    Ok(())
}

/// Decodes a stream as a phone would; returns the audio and the µs per frame.
fn decode(packets: &[Vec<u8>]) -> anyhow::Result<(Vec<i16>, f64)> {
    let mut decoder = OpusDecoder::new()?;
    let mut decoded = Vec::with_capacity(packets.len() * SAMPLES_PER_FRAME);
    let mut buffer = vec![0i16; MAX_PACKET_SAMPLES];
    let started = Instant::now();
    for payload in packets {
        let n = decoder.decode(payload, &mut buffer)?;
        decoded.extend_from_slice(&buffer[..n]);
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / packets.len().max(1) as f64;
    Ok((decoded, us))
}

fn kbps(packets: &[Vec<u8>]) -> f64 {
    let bytes: usize = packets.iter().map(Vec::len).sum();
    bytes as f64 * 8.0 / (packets.len().max(1) as f64 * 0.02) / 1000.0
}

/// The speech with 400 ms of digital silence after every 1.6 s, as an AI's turns would leave.
fn with_pauses(pcm: &[i16]) -> Vec<i16> {
    let speech = 80 * SAMPLES_PER_FRAME;
    let pause = 20 * SAMPLES_PER_FRAME;
    let mut out = Vec::with_capacity(pcm.len() * 5 / 4);
    for chunk in pcm.chunks(speech) {
        out.extend_from_slice(chunk);
        out.resize(out.len() + pause, 0);
    }
    out.truncate(out.len() / SAMPLES_PER_FRAME * SAMPLES_PER_FRAME);
    out
}
