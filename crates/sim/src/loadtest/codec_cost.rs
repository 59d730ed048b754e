//! What one call's codec work costs alone, on one thread with nothing around it: the yardstick
//! the bridge's CPU per call is compared with ("codec only").

use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::media::codec::{
    EncoderSettings, MAX_OPUS_PACKET, MAX_PACKET_SAMPLES, OpusDecoder, SAMPLES_PER_FRAME,
    StreamEncoder,
};

use super::markers::{CYCLE_FRAMES, Clip};
use super::report::{CodecParts, LevelResult};

/// Measures one call's codec work alone, on one thread, with nothing else around it: decoding
/// the phone clip, and encoding as the bridge's stream encoder does, both AI audio and settled
/// pauses (about a second each).
pub(super) async fn codec_parts(encoder: EncoderSettings, clip: Arc<Clip>) -> CodecParts {
    tokio::task::spawn_blocking(move || codec_parts_now(encoder, &clip))
        .await
        .expect("the codec measurement does not panic")
}

fn codec_parts_now(settings: EncoderSettings, clip: &Clip) -> CodecParts {
    const PART: Duration = Duration::from_millis(700);
    let mut decoder = OpusDecoder::new().expect("opus decoder");
    let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
    // The echoed speech is the clip as the bridge decodes it.
    let mut voice = Vec::with_capacity(clip.packets.len() * SAMPLES_PER_FRAME);
    for payload in &clip.packets {
        let samples = decoder.decode(payload, &mut pcm).unwrap_or(0);
        voice.extend_from_slice(&pcm[..samples]);
    }
    let decode_us = per_frame_us(PART, || {
        for payload in &clip.packets {
            let _ = decoder.decode(payload, &mut pcm);
        }
        clip.packets.len()
    });

    let mut encoder = StreamEncoder::new(settings).expect("opus encoder");
    let mut packet = vec![0u8; MAX_OPUS_PACKET];
    let voice_encode_us = per_frame_us(PART, || {
        let frames = voice.chunks_exact(SAMPLES_PER_FRAME);
        let count = frames.len();
        for frame in frames {
            let _ = encoder.encode(frame, false, &mut packet);
        }
        count
    });
    let silence = vec![0i16; SAMPLES_PER_FRAME];
    // Pauses as the bridge has them, each after AI audio (here the marker's first frame): the
    // frames encoded before the replay.
    let voice_frame = voice
        .chunks_exact(SAMPLES_PER_FRAME)
        .next()
        .expect("the clip is longer than a frame");
    let (mut pause_start, mut pause_start_frames, mut pauses) = (Duration::ZERO, 0usize, 0usize);
    let measuring = Instant::now();
    while measuring.elapsed() < PART {
        let _ = encoder.encode(voice_frame, false, &mut packet);
        let start = Instant::now();
        // A pause that never replays (another libopus) counts as encoded throughout.
        while !encoder.replaying() && start.elapsed() < PART {
            let _ = encoder.encode(&silence, true, &mut packet);
            pause_start_frames += 1;
        }
        pause_start += start.elapsed();
        pauses += 1;
    }
    let pause_replay_us = per_frame_us(PART / 7, || {
        for _ in 0..CYCLE_FRAMES {
            let _ = encoder.encode(&silence, true, &mut packet);
        }
        CYCLE_FRAMES
    });
    CodecParts {
        decode_us,
        voice_encode_us,
        pause_start_us: pause_start.as_secs_f64() * 1e6 / pauses as f64,
        pause_start_frames: pause_start_frames as f64 / pauses as f64,
        pause_replay_us,
    }
}

/// Runs `round` (which returns the frames it handled) until `at_least` has passed; µs per frame.
fn per_frame_us(at_least: Duration, mut round: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut frames = 0;
    while start.elapsed() < at_least {
        frames += round();
    }
    start.elapsed().as_secs_f64() * 1e6 / frames.max(1) as f64
}

/// The share of the callers' time the AI double spent sending audio back, over every level.
pub(super) fn ai_audio_share(levels: &[LevelResult]) -> f64 {
    let heard: u64 = levels.iter().map(|l| l.ai_samples_in).sum();
    let said: u64 = levels.iter().map(|l| l.ai_samples_out).sum();
    if heard == 0 {
        return 1.0;
    }
    said as f64 / heard as f64
}
