//! How much of the AI's voice survives packet loss on the way to the phone, with and without
//! in-band FEC: speech is encoded the way the bridge encodes it (24 kHz PCM16, 20 ms frames, the
//! stream encoder), packets are dropped at random (seeded, the same drops for every setting), and
//! the rest is decoded the way a phone does (a lost frame rebuilt from the next packet's FEC when
//! that arrived, else concealed). `scripts/loss_quality.sh` scores the WAVs with PESQ.
//!
//! Usage: `cargo run --release -p bridge --example loss_sweep -- <speech.wav> <out-dir>`
//! Writes `<out-dir>/reference.wav` and `<out-dir>/<setting>_loss<p>.wav` (24 kHz) and prints CSV:
//! `name,loss_percent,inband_fec,expected_loss,bitrate,kbps,fec_packets,recovered`.
//!
//! Settings: `plain` (the bridge before loss protection: FEC allowed at 5 % expected loss, which
//! libopus does not act on at 20 kbit/s), `controller` (what [`LossProtection`] decides after
//! steady reports of the loss applied), `fec<n>` (FEC at a fixed expected loss of n %) and, to
//! see what WhatsApp's 20 kbit/s cap costs, `plain_b<k>` / `fec10_b<k>` at k kbit/s above it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bridge::media::codec::{
    EncoderSettings, FecSettings, MAX_OPUS_PACKET, MAX_PACKET_SAMPLES, OpusDecoder,
    PCM_SAMPLE_RATE, SAMPLES_PER_FRAME, StreamEncoder, carries_fec,
};
use bridge::media::loss_protection::{DEFAULT_OFF_AFTER, LossProtection, LossProtectionSettings};
use bridge::media::peer::LossReport;
use rand::{Rng, SeedableRng, rngs::StdRng};
use testkit::audio;

/// Packet loss applied, in percent.
const LOSSES: [u32; 4] = [0, 2, 5, 10];
/// Fixed expected losses tried, in percent.
const FIXED: [i32; 6] = [6, 8, 10, 15, 20, 25];
/// Bitrates above the phone's cap tried, for comparison only (the bridge never sends them).
const ABOVE_CAP: [i32; 2] = [28_000, 32_000];
/// Seed of the drops; each loss rate draws its own from it.
const SEED: u64 = 20_261_207;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: loss_sweep <speech.wav> <out-dir>");
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let pcm = audio::reference_speech(input.as_ref(), PCM_SAMPLE_RATE, SAMPLES_PER_FRAME, &out)?;

    let plain = EncoderSettings::default();
    println!("name,loss_percent,inband_fec,expected_loss,bitrate,kbps,fec_packets,recovered");
    for loss in LOSSES {
        let drops = drops(pcm.len() / SAMPLES_PER_FRAME, loss);
        let mut settings = vec![("plain".to_owned(), FecSettings::of(plain))];
        settings.push(("controller".to_owned(), controller_settings(plain, loss)));
        for expected in FIXED {
            let fec = FecSettings {
                inband_fec: true,
                expected_loss_percent: expected,
                bitrate_bps: plain.bitrate_bps,
            };
            settings.push((format!("fec{expected}"), fec));
        }
        for bitrate_bps in ABOVE_CAP {
            let kbps = bitrate_bps / 1000;
            let plain_above = FecSettings {
                bitrate_bps,
                ..FecSettings::of(plain)
            };
            settings.push((format!("plain_b{kbps}"), plain_above));
            let fec_above = FecSettings {
                inband_fec: true,
                expected_loss_percent: 10,
                bitrate_bps,
            };
            settings.push((format!("fec10_b{kbps}"), fec_above));
        }
        for (name, fec) in settings {
            let packets = encode(&pcm, plain, fec)?;
            let (decoded, recovered) = decode(&packets, &drops)?;
            let file = format!("{name}_loss{loss}.wav");
            audio::write_wav(&out.join(&file), PCM_SAMPLE_RATE, &decoded)?;
            let with_fec = packets.iter().filter(|p| carries_fec(p)).count();
            println!(
                "{name},{loss},{},{},{},{:.1},{:.3},{recovered}",
                fec.inband_fec,
                fec.expected_loss_percent,
                fec.bitrate_bps,
                kbps(&packets),
                with_fec as f64 / packets.len().max(1) as f64,
            );
        }
    }
    Ok(())
}

/// Which of `frames` packets are lost: each independently with probability `loss` %.
fn drops(frames: usize, loss: u32) -> Vec<bool> {
    let mut rng = StdRng::seed_from_u64(SEED + u64::from(loss));
    (0..frames)
        .map(|_| rng.random_range(0..100) < loss)
        .collect()
}

/// What the bridge's controller settles on after a minute of reports stating `loss` %.
fn controller_settings(plain: EncoderSettings, loss: u32) -> FecSettings {
    const SSRC: u32 = 1;
    let mut controller = LossProtection::new(
        LossProtectionSettings {
            plain,
            max_bitrate_bps: 20_000,
            off_after: DEFAULT_OFF_AFTER,
        },
        SSRC,
    );
    let start = Instant::now();
    for second in 1..=60u32 {
        let report = LossReport {
            ssrc: SSRC,
            fraction_lost: (loss * 256 / 100) as u8,
            cumulative_lost: 0,
            highest_sequence: 50 * second,
            jitter: 0,
            last_sender_report: 0,
        };
        controller.on_report(start + Duration::from_secs(u64::from(second)), &report);
    }
    controller.current()
}

/// Encodes like the bridge: the stream encoder, told which frames are its own digital silence.
fn encode(pcm: &[i16], plain: EncoderSettings, fec: FecSettings) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut encoder = StreamEncoder::new(plain)?;
    encoder.set_fec(fec)?;
    let mut packet = vec![0u8; MAX_OPUS_PACKET];
    pcm.chunks_exact(SAMPLES_PER_FRAME)
        .map(|frame| {
            let silent = frame.iter().all(|&s| s == 0);
            let length = encoder.encode(frame, silent, &mut packet)?;
            Ok(packet[..length].to_vec())
        })
        .collect()
}

/// Decodes like a phone: a lost frame comes from the next packet's FEC when that packet
/// arrived, else from concealment. Returns the audio and how many frames FEC rebuilt.
fn decode(packets: &[Vec<u8>], drops: &[bool]) -> anyhow::Result<(Vec<i16>, usize)> {
    let mut decoder = OpusDecoder::new()?;
    let mut decoded = Vec::with_capacity(packets.len() * SAMPLES_PER_FRAME);
    let mut buffer = vec![0i16; MAX_PACKET_SAMPLES];
    let mut recovered = 0;
    for (i, packet) in packets.iter().enumerate() {
        let n = if !drops[i] {
            decoder.decode(packet, &mut buffer)?
        } else if let Some(next) = packets.get(i + 1).filter(|_| !drops[i + 1]) {
            recovered += usize::from(carries_fec(next));
            decoder.recover_fec(next, &mut buffer)?
        } else {
            decoder.conceal(&mut buffer)?
        };
        decoded.extend_from_slice(&buffer[..n]);
    }
    Ok((decoded, recovered))
}

fn kbps(packets: &[Vec<u8>]) -> f64 {
    let bytes: usize = packets.iter().map(Vec::len).sum();
    bytes as f64 * 8.0 / (packets.len().max(1) as f64 * 0.02) / 1000.0
}
