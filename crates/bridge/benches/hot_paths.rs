//! The per-frame and per-request hot paths, measured with criterion:
//! `cargo bench -p bridge --bench hot_paths` (results in docs/BENCHMARKS.md).

use std::hint::black_box;

use bridge::media::codec::{
    EncoderSettings, MAX_OPUS_PACKET, MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder,
    SAMPLES_PER_FRAME,
};
use bridge::media::playback::PlaybackBuffer;
use bridge::media::uplink::UplinkDecoder;
use bridge::realtime::events::{self, ServerEvent};
use bridge::whatsapp::{signature, webhook};
use criterion::{Criterion, criterion_group, criterion_main};
use testkit::audio;

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
    let body = testkit::fixtures::CONNECT_UIC.as_bytes();
    let header = signature::sign(b"app-secret", body);
    c.bench_function("webhook_signature_verify_connect", |b| {
        b.iter(|| black_box(signature::verify(b"app-secret", body, Some(&header)).is_ok()))
    });
    c.bench_function("webhook_parse_connect", |b| {
        b.iter(|| black_box(webhook::parse(body).map(|p| p.events.len()).unwrap_or(0)))
    });
}

/// The embedded store's work when 100 calls arrive at once: each call's memory recall (three
/// queries) and its call-log row, all in flight together on a one-thread runtime, as on a
/// one-core bridge. Each burst gets a new database, so every one does the same work. Run it
/// pinned (`taskset -c 0 cargo bench --bench hot_paths -- store_`) so the time is one core's,
/// whatever threads the store uses.
fn store_burst(c: &mut Criterion) {
    use bridge::ids::{CallId, PhoneNumber};
    use bridge::memory::{self, MemorySettings};
    use bridge::store::embedded::EmbeddedStore;
    use bridge::store::{CallLogDirection, CallRecord, Store};
    use criterion::BatchSize;

    /// A store in its own directory, removed when dropped (after the timing).
    struct FreshStore(EmbeddedStore, std::path::PathBuf);
    impl Drop for FreshStore {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = MemorySettings::default();
    let mut burst = 0u64;
    c.bench_function("store_100_call_starts_at_once", |b| {
        b.iter_batched(
            || {
                burst += 1;
                let dir = std::env::temp_dir()
                    .join(format!("bench-store-{}-{burst}", std::process::id()));
                FreshStore(EmbeddedStore::open(&dir).expect("store"), dir)
            },
            |fresh| {
                let (store, settings) = (&fresh.0, &settings);
                runtime.block_on(futures_util::future::join_all((0..100).map(
                    |n| async move {
                        let phone = PhoneNumber::new(format!("+1555{n:07}"));
                        let record = CallRecord::started(
                            CallId::new(format!("call-{n}")),
                            Some(phone.clone()),
                            CallLogDirection::Inbound,
                            chrono::Utc::now(),
                        );
                        let remembered =
                            memory::recall(store, &phone, settings, chrono::Utc::now()).await;
                        store.start_call(&record).await.expect("call-log row");
                        black_box(remembered.len())
                    },
                )));
                fresh
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group!(hot_paths, codec, uplink, downlink, webhooks, store_burst);
criterion_main!(hot_paths);
