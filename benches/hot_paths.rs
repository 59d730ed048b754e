//! The per-frame and per-request hot paths, measured with criterion:
//! `cargo bench --bench hot_paths` (results in docs/BENCHMARKS.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use whatsapp_voice_bridge::media::codec::{
    EncoderSettings, MAX_OPUS_PACKET, MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder,
    SAMPLES_PER_FRAME,
};
use whatsapp_voice_bridge::media::playback::PlaybackBuffer;
use whatsapp_voice_bridge::media::uplink::UplinkDecoder;
use whatsapp_voice_bridge::realtime::events::{self, ServerEvent};
use whatsapp_voice_bridge::sim::audio;
use whatsapp_voice_bridge::whatsapp::{signature, webhook};

/// One second of speech-like audio at 24 kHz, as 20 ms frames.
fn speech_frames() -> Vec<Vec<i16>> {
    audio::speech_like(&[220.0, 330.0, 440.0, 550.0], 180, 60, 24_000)
        .chunks_exact(SAMPLES_PER_FRAME)
        .map(<[i16]>::to_vec)
        .collect()
}

fn encoded(settings: EncoderSettings) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(settings).expect("encoder");
    let mut out = vec![0u8; MAX_OPUS_PACKET];
    speech_frames()
        .iter()
        .map(|frame| {
            let n = encoder.encode(frame, &mut out).expect("encode");
            out[..n].to_vec()
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let frames = speech_frames();
    for complexity in [0, 6, 10] {
        let settings = EncoderSettings {
            complexity,
            ..EncoderSettings::default()
        };
        let mut encoder = OpusEncoder::new(settings).expect("encoder");
        let mut out = vec![0u8; MAX_OPUS_PACKET];
        let mut i = 0;
        c.bench_function(&format!("opus_encode_24k_20kbps_wb_c{complexity}"), |b| {
            b.iter(|| {
                i = (i + 1) % frames.len();
                black_box(encoder.encode(&frames[i], &mut out).expect("encode"))
            })
        });
    }
    let packets = encoded(EncoderSettings::default());
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
    let mut i = 0;
    c.bench_function("opus_decode_20kbps_wb_to_24k", |b| {
        b.iter(|| {
            i = (i + 1) % packets.len();
            black_box(decoder.decode(&packets[i], &mut pcm).expect("decode"))
        })
    });
}

/// RTP payload → PCM (with loss handling) → base64 → `input_audio_buffer.append` JSON.
fn uplink(c: &mut Criterion) {
    let packets = encoded(EncoderSettings::default());
    let mut uplink = UplinkDecoder::new(true).expect("uplink");
    let mut pcm = Vec::with_capacity(SAMPLES_PER_FRAME * 8);
    let mut json = String::with_capacity(4096);
    let mut sequence: u16 = 0;
    c.bench_function("uplink_rtp_to_append_event", |b| {
        b.iter(|| {
            sequence = sequence.wrapping_add(1);
            pcm.clear();
            uplink.push(
                sequence,
                &packets[usize::from(sequence) % packets.len()],
                &mut pcm,
            );
            events::write_append(&pcm, &mut json);
            black_box(json.len())
        })
    });
}

/// `response.output_audio.delta` JSON (100 ms) → PCM → playback queue → five paced 20 ms frames
/// → Opus.
fn downlink(c: &mut Criterion) {
    let frames = speech_frames();
    let pcm: Vec<u8> = frames[..5]
        .concat()
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let delta = serde_json::json!({
        "type": "response.output_audio.delta", "event_id": "event_1", "response_id": "resp_1",
        "item_id": "item_1", "output_index": 0, "content_index": 0,
        "delta": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pcm),
    })
    .to_string();
    let mut playback = PlaybackBuffer::new();
    let mut encoder = OpusEncoder::new(EncoderSettings::default()).expect("encoder");
    let mut frame = vec![0i16; SAMPLES_PER_FRAME];
    let mut out = vec![0u8; MAX_OPUS_PACKET];
    c.bench_function("downlink_delta_100ms_to_5_opus_frames", |b| {
        b.iter(|| {
            if let Ok(ServerEvent::AudioDelta {
                response_id,
                item_id,
                content_index,
                pcm,
            }) = events::parse_server_event(&delta)
            {
                playback.push(&response_id, &item_id, content_index, &pcm);
            }
            let mut bytes = 0;
            for _ in 0..5 {
                playback.pop_frame(&mut frame);
                bytes += encoder.encode(&frame, &mut out).expect("encode");
            }
            black_box(bytes)
        })
    });
}

fn webhooks(c: &mut Criterion) {
    let body = include_bytes!("../tests/fixtures/connect_uic.json");
    let header = signature::sign(b"app-secret", body);
    c.bench_function("webhook_signature_verify_connect", |b| {
        b.iter(|| black_box(signature::verify(b"app-secret", body, Some(&header)).is_ok()))
    });
    c.bench_function("webhook_parse_connect", |b| {
        b.iter(|| black_box(webhook::parse(body).map(|p| p.events.len()).unwrap_or(0)))
    });
}

criterion_group!(hot_paths, codec, uplink, downlink, webhooks);
criterion_main!(hot_paths);
