//! The session's protocol, driven with synthetic time.

use super::*;

fn settings(mode: AiMode) -> Arc<AiDoubleConfig> {
    Arc::new(AiDoubleConfig {
        mode,
        ..AiDoubleConfig::default()
    })
}

fn events(out: &mut Vec<Output>) -> Vec<Value> {
    out.drain(..)
        .filter_map(|o| match o {
            Output::Event(text) => serde_json::from_str(&text).ok(),
            _ => None,
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

fn send(session: &mut Session, now: Instant, event: Value, out: &mut Vec<Output>) {
    session.on_text(now, &event.to_string(), out);
}

fn manual_session(mode: AiMode, now: Instant) -> (Session, Vec<Output>) {
    let mut out = Vec::new();
    let mut session = Session::new(
        settings(mode),
        Some("gpt-realtime".into()),
        now,
        0,
        &mut out,
    );
    send(
        &mut session,
        now,
        json!({"type": "session.update", "session": {"type": "realtime",
               "audio": {"input": {"turn_detection": null}}}}),
        &mut out,
    );
    out.clear();
    (session, out)
}

#[test]
fn deltas_are_paced_at_the_production_speed_after_the_first_audio_latency() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Echo, t0);
    send(
        &mut session,
        t0,
        json!({"type": "response.create"}),
        &mut out,
    );
    // Echo without a turn: 1 s of 440 Hz in 100 ms deltas at 4×, first after 50 ms.
    assert_eq!(session.deadline(), Some(t0 + Duration::from_millis(50)));
    let created = events(&mut out);
    assert_eq!(
        kinds(&created),
        [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added"
        ]
    );
    session.tick(t0 + Duration::from_millis(49), &mut out);
    assert!(out.is_empty());
    session.tick(t0 + Duration::from_millis(50), &mut out);
    assert_eq!(
        kinds(&events(&mut out)),
        [
            "response.output_audio.delta",
            "response.output_audio_transcript.delta"
        ]
    );
    assert_eq!(session.deadline(), Some(t0 + Duration::from_millis(75)));
    // A late tick catches up with everything that is due, then ends the response.
    session.tick(t0 + Duration::from_millis(300), &mut out);
    let rest = events(&mut out);
    let deltas = rest
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta")
        .count();
    assert_eq!(deltas, 9);
    assert_eq!(
        kinds(&rest)[18..],
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
            "rate_limits.updated"
        ]
    );
    let record = &session.snapshot().responses[0];
    assert_eq!(
        (record.produced_ms, record.status.as_str()),
        (1000, "completed")
    );
    assert_eq!(record.first_delta_at, Some(t0 + Duration::from_millis(50)));
    assert_eq!(session.deadline(), Some(session.expires_at));
}

#[test]
fn audio_before_session_updated_is_counted() {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut session = Session::new(settings(AiMode::Silent), None, t0, 0, &mut out);
    let audio = BASE64.encode(vec![0u8; 48 * 30]);
    send(
        &mut session,
        t0,
        json!({"type": "input_audio_buffer.append", "audio": audio}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "session.update", "session": {"type": "realtime"}}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "input_audio_buffer.append", "audio": audio}),
        &mut out,
    );
    assert!(out.contains(&Output::Configured));
    let snapshot = session.snapshot();
    assert_eq!(snapshot.appended_before_configured_ms, 30);
    assert_eq!(snapshot.appends, 2);
    assert_eq!(snapshot.input_audio.len(), 2 * 30 * 24);
    // Appends are counted, not recorded.
    assert_eq!(snapshot.client_events.len(), 1);
}

#[test]
fn the_session_cap_sends_session_expired_then_closes_1001() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Silent, t0);
    let cap = session.deadline().expect("the cap is always pending");
    session.tick(cap, &mut out);
    let Some(Output::Close { code, reason }) = out.pop() else {
        panic!("expected a close, got {out:?}")
    };
    assert_eq!(code, 1001);
    assert_eq!(
        reason,
        "Your session hit the maximum duration of 60 minutes."
    );
    assert_eq!(kinds(&events(&mut out)), ["error"]);
    assert_eq!(session.snapshot().errors_sent, ["session_expired"]);
    assert_eq!(session.deadline(), None);
    send(
        &mut session,
        cap,
        json!({"type": "response.create"}),
        &mut out,
    );
    assert!(out.is_empty(), "an expired session is silent");
}

#[test]
fn silent_mode_never_responds() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Silent, t0);
    send(
        &mut session,
        t0,
        json!({"type": "response.create"}),
        &mut out,
    );
    assert!(out.is_empty());
    assert!(session.snapshot().responses.is_empty());
}

#[test]
fn text_responses_carry_text_not_audio() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Echo, t0);
    send(
        &mut session,
        t0,
        json!({"type": "response.create", "response": {"output_modalities": ["text"]}}),
        &mut out,
    );
    session.tick(t0 + Duration::from_secs(1), &mut out);
    let all = events(&mut out);
    assert!(kinds(&all).contains(&"response.output_text.delta"));
    assert!(!kinds(&all).contains(&"response.output_audio.delta"));
    let done = all
        .iter()
        .find(|e| e["type"] == "response.done")
        .expect("done");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["type"],
        "output_text"
    );
}

#[test]
fn function_call_outputs_need_a_known_call_and_assistant_audio_cannot_be_created() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Silent, t0);
    for (item, param) in [
        (
            json!({"type": "function_call_output", "call_id": "call_x", "output": "{}"}),
            "item.call_id",
        ),
        (
            json!({"type": "message", "role": "assistant",
                "content": [{"type": "output_audio", "audio": "AAAA"}]}),
            "item.content[0].type",
        ),
        (
            json!({"type": "message", "role": "system",
                "content": [{"type": "input_audio", "audio": "AAAA"}]}),
            "item.content[0].type",
        ),
        (
            json!({"type": "message", "role": "tool", "content": []}),
            "item.role",
        ),
    ] {
        send(
            &mut session,
            t0,
            json!({"type": "conversation.item.create", "item": item}),
            &mut out,
        );
        let reply = events(&mut out);
        assert_eq!(reply[0]["type"], "error", "{item}");
        assert_eq!(reply[0]["error"]["param"], param, "{item}");
    }
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.create", "item": {"type": "function_call",
               "call_id": "call_1", "name": "f", "arguments": "{}"}}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.create", "item": {"type": "function_call_output",
               "call_id": "call_1", "output": "{}"}}),
        &mut out,
    );
    let reply = events(&mut out);
    assert_eq!(
        kinds(&reply),
        [
            "conversation.item.added",
            "conversation.item.done",
            "conversation.item.added",
            "conversation.item.done"
        ]
    );
    assert_eq!(reply[2]["previous_item_id"], reply[0]["item"]["id"]);
}

#[test]
fn items_can_be_inserted_at_the_root_retrieved_and_deleted() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Silent, t0);
    let text = |t: &str| json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": t}]});
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.create", "item": text("a")}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.create", "previous_item_id": "root", "item": text("b")}),
        &mut out,
    );
    let added = events(&mut out);
    assert_eq!(added[2]["previous_item_id"], Value::Null);
    let first = added[0]["item"]["id"].as_str().expect("id").to_owned();
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.retrieve", "item_id": first}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.delete", "item_id": first}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "conversation.item.delete", "item_id": first}),
        &mut out,
    );
    let replies = events(&mut out);
    assert_eq!(
        kinds(&replies),
        [
            "conversation.item.retrieved",
            "conversation.item.deleted",
            "error"
        ]
    );
    assert_eq!(replies[0]["item"]["content"][0]["text"], "a");
}

fn append(session: &mut Session, now: Instant, pcm: &[i16], out: &mut Vec<Output>) {
    let mut bytes = Vec::new();
    AudioFormat::Pcm24k.encode(pcm, &mut bytes);
    send(
        session,
        now,
        json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(bytes)}),
        out,
    );
}

fn sine(amplitude: f64, ms: usize) -> Vec<i16> {
    (0..ms * SAMPLES_PER_MS)
        .map(|i| (amplitude * (std::f64::consts::TAU * 1000.0 * i as f64 / 24_000.0).sin()) as i16)
        .collect()
}

fn vad_session(mode: AiMode, turn_detection: Value, now: Instant) -> (Session, Vec<Output>) {
    let mut out = Vec::new();
    let mut session = Session::new(
        settings(mode),
        Some("gpt-realtime".into()),
        now,
        0,
        &mut out,
    );
    send(
        &mut session,
        now,
        json!({"type": "session.update", "session": {"type": "realtime",
               "audio": {"input": {"turn_detection": turn_detection}}}}),
        &mut out,
    );
    out.clear();
    (session, out)
}

#[test]
fn the_session_threshold_scales_the_rms_threshold() {
    let t0 = Instant::now();
    // RMS of a sine is amplitude / √2: 850 → about 601, above 400 (0.5) but below 800 (1.0).
    let quiet = [sine(850.0, 200), vec![0; 400 * SAMPLES_PER_MS]].concat();
    for (threshold, detected) in [(0.5, true), (1.0, false)] {
        let td = json!({"type": "server_vad", "threshold": threshold, "create_response": false});
        let (mut session, mut out) = vad_session(AiMode::Silent, td, t0);
        append(&mut session, t0, &quiet, &mut out);
        assert_eq!(
            !session.snapshot().speech_starts.is_empty(),
            detected,
            "threshold {threshold}"
        );
    }
}

#[test]
fn create_response_false_commits_without_responding() {
    let t0 = Instant::now();
    let td = json!({"type": "server_vad", "create_response": false, "silence_duration_ms": 200});
    let (mut session, mut out) = vad_session(AiMode::Echo, td, t0);
    append(
        &mut session,
        t0,
        &[sine(8000.0, 200), vec![0; 300 * SAMPLES_PER_MS]].concat(),
        &mut out,
    );
    assert_eq!(
        kinds(&events(&mut out)),
        [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done"
        ]
    );
    // The turn is remembered: response.create now echoes it (200 ms, no room for padding).
    send(
        &mut session,
        t0,
        json!({"type": "response.create"}),
        &mut out,
    );
    session.tick(t0 + Duration::from_secs(5), &mut out);
    let done = events(&mut out)
        .into_iter()
        .find(|e| e["type"] == "response.done")
        .expect("done");
    assert!(
        done["response"]["output"][0]["content"][0]["transcript"]
            .as_str()
            .is_some_and(|t| t.starts_with("(echo)"))
    );
    assert_eq!(session.snapshot().responses[0].produced_ms, 200);
}

#[test]
fn transcripts_arrive_after_the_commit_when_transcription_is_on() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Silent, t0);
    send(
        &mut session,
        t0,
        json!({"type": "session.update", "session": {"type": "realtime",
               "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}}),
        &mut out,
    );
    append(&mut session, t0, &sine(8000.0, 150), &mut out);
    send(
        &mut session,
        t0,
        json!({"type": "input_audio_buffer.commit"}),
        &mut out,
    );
    let committed = events(&mut out);
    let item_id = committed[1]["item_id"].clone();
    assert_eq!(session.deadline(), Some(t0 + TRANSCRIPTION_DELAY));
    session.tick(t0 + TRANSCRIPTION_DELAY, &mut out);
    let transcript = events(&mut out);
    assert_eq!(
        kinds(&transcript),
        [
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.completed"
        ]
    );
    assert_eq!(transcript[1]["item_id"], item_id);
    assert_eq!(
        transcript[1]["usage"],
        json!({"type": "duration", "seconds": 0.15})
    );
}

#[test]
fn the_idle_timeout_commits_the_silence_and_responds() {
    let t0 = Instant::now();
    let td = json!({"type": "server_vad", "idle_timeout_ms": 5000});
    let (mut session, mut out) = vad_session(AiMode::Echo, td, t0);
    send(
        &mut session,
        t0,
        json!({"type": "response.create"}),
        &mut out,
    );
    let t1 = t0 + Duration::from_secs(1);
    session.tick(t1, &mut out);
    out.clear();
    // 1 s of audio produced, then 5 s of idle.
    assert_eq!(session.deadline(), Some(t1 + Duration::from_secs(6)));
    append(&mut session, t1, &vec![0; 300 * SAMPLES_PER_MS], &mut out);
    session.tick(t1 + Duration::from_secs(6), &mut out);
    let fired = events(&mut out);
    assert_eq!(
        kinds(&fired)[..5],
        [
            "input_audio_buffer.timeout_triggered",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "response.created"
        ]
    );
    assert_eq!(
        (
            fired[0]["audio_start_ms"].as_u64(),
            fired[0]["audio_end_ms"].as_u64()
        ),
        (Some(0), Some(300))
    );
}

#[test]
fn the_voice_is_fixed_once_audio_was_produced() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Echo, t0);
    let voice = |v: &str| json!({"type": "session.update", "session": {"type": "realtime", "audio": {"output": {"voice": v}}}});
    send(&mut session, t0, voice("ash"), &mut out);
    assert_eq!(kinds(&events(&mut out)), ["session.updated"]);
    send(
        &mut session,
        t0,
        json!({"type": "response.create"}),
        &mut out,
    );
    session.tick(t0 + Duration::from_secs(1), &mut out);
    out.clear();
    send(&mut session, t0, voice("cedar"), &mut out);
    let reply = events(&mut out);
    assert_eq!(reply[0]["error"]["param"], "session.audio.output.voice");
    send(&mut session, t0, voice("ash"), &mut out);
    assert_eq!(kinds(&events(&mut out)), ["session.updated"]);
}

#[test]
fn an_out_of_band_response_runs_beside_the_default_one() {
    let t0 = Instant::now();
    let (mut session, mut out) = manual_session(AiMode::Echo, t0);
    send(
        &mut session,
        t0,
        json!({"type": "response.create"}),
        &mut out,
    );
    send(
        &mut session,
        t0,
        json!({"type": "response.create", "response": {"conversation": "none",
               "metadata": {"purpose": "summary"}, "output_modalities": ["text"]}}),
        &mut out,
    );
    let created = events(&mut out);
    assert_eq!(
        kinds(&created)
            .iter()
            .filter(|k| **k == "response.created")
            .count(),
        2
    );
    // Out-of-band items never enter the conversation.
    assert_eq!(
        kinds(&created)
            .iter()
            .filter(|k| **k == "conversation.item.added")
            .count(),
        1
    );
    let oob = &created
        .iter()
        .rfind(|e| e["type"] == "response.created")
        .expect("second response")["response"];
    assert_eq!(oob["conversation_id"], Value::Null);
    assert_eq!(oob["metadata"], json!({"purpose": "summary"}));
    session.tick(t0 + Duration::from_secs(2), &mut out);
    let done = events(&mut out);
    assert_eq!(
        kinds(&done)
            .iter()
            .filter(|k| **k == "response.done")
            .count(),
        2
    );
}

#[test]
fn speech_mode_speaks_its_recording_whole_in_every_response() {
    let t0 = Instant::now();
    let clip: Arc<[i16]> = (0..7_200).map(|i| (i % 300) as i16 * 50).collect();
    let (mut session, mut out) = manual_session(AiMode::Speech(clip.clone()), t0);
    for round in 0..2u64 {
        let at = t0 + Duration::from_secs(10 * round);
        send(
            &mut session,
            at,
            json!({"type": "response.create"}),
            &mut out,
        );
        session.tick(at + Duration::from_secs(5), &mut out);
        let sent = events(&mut out);
        let audio: Vec<i16> = sent
            .iter()
            .filter(|e| e["type"] == "response.output_audio.delta")
            .flat_map(|e| {
                let bytes = BASE64
                    .decode(e["delta"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(audio, &clip[..], "response {round}");
        assert_eq!(kinds(&sent).last(), Some(&"rate_limits.updated"));
    }
}
