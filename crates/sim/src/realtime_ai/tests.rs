//! The double over a real WebSocket, driven by a tokio-tungstenite client as the bridge would.

use std::f64::consts::TAU;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::pcm::AudioFormat;
use super::*;

/// Upper bound on any single wait; generous because the test machine is shared.
const WAIT: Duration = Duration::from_secs(10);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Defaults, but producing audio fast so tests finish quickly.
fn fast() -> AiDoubleConfig {
    AiDoubleConfig {
        production_speed: 20.0,
        first_audio_latency: Duration::from_millis(10),
        ..AiDoubleConfig::default()
    }
}

async fn start(config: AiDoubleConfig) -> RealtimeAiDouble {
    RealtimeAiDouble::start(config)
        .await
        .expect("double starts")
}

async fn upgrade(url: &str, headers: &[(&'static str, &str)]) -> Result<Socket, WsError> {
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        let value = HeaderValue::from_str(value).expect("test header values are ASCII");
        request.headers_mut().insert(*name, value);
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

fn refused_with(result: Result<Socket, WsError>) -> u16 {
    match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

fn server_vad(silence_duration_ms: u64) -> Value {
    json!({"type": "realtime", "audio": {"input": {"turn_detection": {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
        "silence_duration_ms": silence_duration_ms, "create_response": true,
        "interrupt_response": true}}}})
}

fn manual_turns() -> Value {
    json!({"type": "realtime", "audio": {"input": {"turn_detection": null}}})
}

fn tone(hz: f64, ms: usize) -> Vec<i16> {
    (0..ms * 24)
        .map(|i| (8000.0 * (TAU * hz * i as f64 / 24_000.0).sin()) as i16)
        .collect()
}

fn silence(ms: usize) -> Vec<i16> {
    vec![0; ms * 24]
}

/// Signal power at `hz` (Goertzel over 24 kHz samples).
fn goertzel(samples: &[i16], hz: f64) -> f64 {
    let coefficient = 2.0 * (TAU * hz / 24_000.0).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &sample in samples {
        let s0 = f64::from(sample) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coefficient * s1 * s2
}

fn dominant_frequency(samples: &[i16]) -> f64 {
    [250.0, 440.0, 600.0, 1000.0, 2000.0, 3000.0]
        .into_iter()
        .max_by(|a, b| goertzel(samples, *a).total_cmp(&goertzel(samples, *b)))
        .unwrap_or_default()
}

/// The PCM16 carried by the `response.output_audio.delta` events among `events`.
fn delta_pcm(events: &[Value]) -> Vec<i16> {
    delta_bytes(events)
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

fn delta_bytes(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["type"] == "response.output_audio.delta")
        .flat_map(|e| {
            BASE64
                .decode(e["delta"].as_str().expect("delta is a string"))
                .expect("delta is base64")
        })
        .collect()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["type"].as_str()).collect()
}

struct Client {
    ws: Socket,
}

impl Client {
    /// Connects with the default key and model and reads `session.created`.
    async fn connect(double: &RealtimeAiDouble) -> Client {
        let url = format!("{}?model=gpt-realtime", double.url());
        let ws = upgrade(&url, &[("authorization", "Bearer test-key")])
            .await
            .expect("upgrade");
        let mut client = Client { ws };
        client.expect("session.created").await;
        client
    }

    async fn send(&mut self, event: Value) {
        self.ws
            .send(Message::text(event.to_string()))
            .await
            .expect("send");
    }

    /// The next server event; fails the test on timeout, close or a non-JSON frame.
    async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for an event");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str()).expect("events are JSON");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    async fn expect(&mut self, kind: &str) -> Value {
        let event = self.next().await;
        assert_eq!(event["type"], kind, "{event}");
        event
    }

    /// Events up to and including the first one of type `kind`.
    async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let done = event["type"] == kind;
            seen.push(event);
            if done {
                return seen;
            }
        }
    }

    async fn configure(&mut self, session: Value) -> Value {
        self.send(json!({"type": "session.update", "session": session}))
            .await;
        self.expect("session.updated").await
    }

    async fn append(&mut self, pcm: &[i16], chunk_samples: usize) {
        for chunk in pcm.chunks(chunk_samples) {
            let mut bytes = Vec::with_capacity(chunk.len() * 2);
            AudioFormat::Pcm24k.encode(chunk, &mut bytes);
            self.send(json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(bytes)}))
                .await;
        }
    }

    /// Reads until the server ends the connection: the close code, or `None` for a connection
    /// dropped without a close frame (what a browser reports as 1006).
    async fn close_code(&mut self) -> Option<u16> {
        let mut code = None;
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the close");
            match message {
                // Keep reading after it so tungstenite sends the close reply.
                Some(Ok(Message::Close(frame))) => code = frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return code,
            }
        }
    }
}

#[tokio::test]
async fn upgrades_need_the_key_a_known_path_and_a_model() {
    let double = start(fast()).await;
    let openai = double.url();
    let azure = double.azure_endpoint().replace("http://", "ws://");
    let bearer = ("authorization", "Bearer test-key");
    let api_key = ("api-key", "test-key");

    assert_eq!(
        refused_with(upgrade(&format!("{openai}?model=gpt-realtime"), &[]).await),
        401
    );
    assert_eq!(
        refused_with(
            upgrade(
                &format!("{openai}?model=gpt-realtime"),
                &[("authorization", "Bearer nope")]
            )
            .await
        ),
        401
    );
    assert_eq!(refused_with(upgrade(&openai, &[bearer]).await), 400);
    assert_eq!(
        refused_with(
            upgrade(
                &format!("{azure}/openai/v1/realtime?model=dep&api-version=2025-04-01-preview"),
                &[api_key]
            )
            .await
        ),
        401,
        "api-version on the Azure GA path is a 401"
    );
    assert_eq!(
        refused_with(upgrade(&format!("{azure}/v2/realtime?model=m"), &[bearer]).await),
        404
    );

    let accepted = [
        (
            format!("{openai}?model=gpt-realtime"),
            api_key,
            "gpt-realtime",
        ),
        (
            format!("{azure}/openai/v1/realtime?model=my-deployment"),
            api_key,
            "my-deployment",
        ),
        (
            format!(
                "{azure}/openai/realtime?api-version=2025-04-01-preview&deployment=old-deployment"
            ),
            bearer,
            "old-deployment",
        ),
    ];
    for (url, header, model) in &accepted {
        let mut client = Client {
            ws: upgrade(url, &[*header]).await.expect("upgrade"),
        };
        let created = client.expect("session.created").await;
        assert_eq!(created["session"]["model"], *model);
        assert!(
            created["event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("event_") && id.len() == 27)
        );
        let id = created["session"]["id"].as_str().expect("session id");
        assert!(id.starts_with("sess_") && id.len() == 26, "{id}");
    }
    let models: Vec<_> = double.sessions().into_iter().map(|s| s.model).collect();
    assert_eq!(
        models,
        accepted
            .iter()
            .map(|(_, _, model)| Some(model.to_string()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_beta_handshake_is_told_it_is_gone_and_closed_with_4000() {
    let double = start(fast()).await;
    let url = format!("{}?model=gpt-4o-realtime-preview", double.url());
    let ws = upgrade(
        &url,
        &[
            ("authorization", "Bearer test-key"),
            ("openai-beta", "realtime=v1"),
        ],
    )
    .await
    .expect("the beta upgrade itself is accepted");
    let mut client = Client { ws };
    let error = client.expect("error").await;
    assert_eq!(error["error"]["code"], "beta_api_shape_disabled");
    assert_eq!(
        error["error"]["message"],
        "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
    );
    assert_eq!(client.close_code().await, Some(4000));
    assert!(double.sessions().is_empty(), "no session was opened");
}

#[tokio::test]
async fn session_update_is_validated_then_deep_merged_and_reported_in_full() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    assert!(!double.wait_for_sessions(1, Duration::from_millis(20)).await);

    let rejected = [
        (
            json!({"instructions": "x"}),
            "missing_required_parameter",
            "session.type",
        ),
        (
            json!({"type": "realtime", "audio": {"output": {"voice": "robot"}}}),
            "invalid_value",
            "session.audio.output.voice",
        ),
        (
            json!({"type": "realtime", "voice": "alloy"}),
            "unknown_parameter",
            "session.voice",
        ),
        (
            json!({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
            "invalid_value",
            "session.audio.input.format.rate",
        ),
    ];
    for (index, (session, code, param)) in rejected.iter().enumerate() {
        let event_id = format!("bad-{index}");
        client
            .send(json!({"type": "session.update", "event_id": event_id, "session": session}))
            .await;
        let error = client.expect("error").await;
        assert_eq!(error["error"]["code"], *code, "{session}");
        assert_eq!(error["error"]["param"], *param, "{session}");
        assert_eq!(error["error"]["event_id"], event_id);
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }

    client
        .send(json!({"type": "session.update", "event_id": "cfg-1", "session": {
            "type": "realtime", "instructions": "Be brief.",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}}))
        .await;
    let updated = client.expect("session.updated").await;
    assert_ne!(
        updated["event_id"], "cfg-1",
        "success replies do not echo the event_id"
    );
    let session = &updated["session"];
    assert_eq!(session["instructions"], "Be brief.");
    assert_eq!(
        session["audio"]["input"]["turn_detection"]["silence_duration_ms"],
        500
    );
    assert_eq!(
        session["audio"]["input"]["turn_detection"]["prefix_padding_ms"],
        300
    );
    assert_eq!(
        session["audio"]["output"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    assert!(double.wait_for_sessions(1, WAIT).await);

    let again = client
        .configure(json!({"type": "realtime", "audio": {"output": {"voice": "cedar"}}}))
        .await;
    assert_eq!(again["session"]["instructions"], "Be brief.");
    assert_eq!(again["session"]["audio"]["output"]["voice"], "cedar");

    let snapshot = &double.sessions()[0];
    assert_eq!(snapshot.config, again["session"]);
    assert_eq!(
        snapshot.errors_sent,
        [
            "missing_required_parameter",
            "invalid_value",
            "unknown_parameter",
            "invalid_value"
        ]
    );
    assert_eq!(snapshot.client_events.len(), 6);
    assert!(
        snapshot
            .client_events
            .iter()
            .all(|e| e.kind == "session.update")
    );
}

#[tokio::test]
async fn malformed_events_get_errors_and_the_session_carries_on() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    client
        .send(json!({"type": "response.audio.delta", "event_id": "e1"}))
        .await;
    let unknown = client.expect("error").await;
    assert_eq!(unknown["error"]["code"], "invalid_value");
    assert_eq!(unknown["error"]["param"], "type");
    assert_eq!(unknown["error"]["event_id"], "e1");

    client
        .ws
        .send(Message::text("{not json"))
        .await
        .expect("send");
    assert_eq!(
        client.expect("error").await["error"]["code"],
        "invalid_json"
    );

    client
        .send(json!({"type": "input_audio_buffer.append", "event_id": "e2", "audio": "***"}))
        .await;
    let bad_audio = client.expect("error").await;
    assert_eq!(bad_audio["error"]["param"], "audio");
    assert_eq!(bad_audio["error"]["event_id"], "e2");

    client.configure(manual_turns()).await;
    let snapshot = &double.sessions()[0];
    assert_eq!(snapshot.appends, 1);
    assert_eq!(snapshot.errors_sent.len(), 3);
}

#[tokio::test]
async fn a_spoken_turn_is_detected_committed_and_echoed_back() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    client.configure(server_vad(500)).await;

    // 600 ms silence, 500 ms of 1 kHz, 800 ms silence, in 37 ms appends (not window-aligned).
    let audio = [silence(600), tone(1000.0, 500), silence(800)].concat();
    client.append(&audio, 37 * 24).await;
    let events = client.until("rate_limits.updated").await;

    let mut expected = vec![
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ];
    for _ in 0..8 {
        expected.extend([
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
        ]);
    }
    expected.extend([
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "rate_limits.updated",
    ]);
    assert_eq!(kinds(&events), expected);

    let started = &events[0];
    assert_eq!(
        started["audio_start_ms"], 300,
        "onset 600 ms less 300 ms of padding"
    );
    assert_eq!(
        events[1]["audio_end_ms"], 1600,
        "speech end 1100 ms plus 500 ms of silence"
    );
    let user_item = started["item_id"].as_str().expect("item id");
    assert!(user_item.starts_with("item_") && user_item.len() == 26);
    assert_eq!(events[1]["item_id"], user_item);
    assert_eq!(events[2]["item_id"], user_item);
    assert_eq!(events[2]["previous_item_id"], Value::Null);
    assert_eq!(events[3]["item"]["role"], "user");
    assert_eq!(events[3]["item"]["content"][0]["type"], "input_audio");

    // The echo is the turn from speech start (with padding) to speech end: 300..1100 ms.
    let turn = &audio[300 * 24..1100 * 24];
    let echo = delta_pcm(&events);
    assert_eq!(echo.len(), turn.len());
    assert_eq!(dominant_frequency(&echo), 1000.0);
    assert_eq!(dominant_frequency(turn), 1000.0);
    assert_eq!(echo, turn);

    let done = &events[events.len() - 2]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["type"], "output_audio");
    assert!(
        done["output"][0]["content"][0]["transcript"]
            .as_str()
            .is_some_and(|t| t.contains("(echo)"))
    );
    assert!(
        done["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    assert!(
        done["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("resp_"))
    );

    let snapshot = &double.sessions()[0];
    assert_eq!(snapshot.speech_starts, [300]);
    assert_eq!(snapshot.responses.len(), 1);
    assert_eq!(snapshot.responses[0].produced_ms, 800);
    assert_eq!(snapshot.responses[0].status, "completed");
    assert!(snapshot.responses[0].first_delta_at.is_some());
    assert_eq!(snapshot.appends, audio.len().div_ceil(37 * 24) as u64);
    assert_eq!(snapshot.appended_before_configured_ms, 0);
    // The rest of the trailing silence may still be in flight; what arrived is what was sent.
    assert_eq!(snapshot.input_audio[..1600 * 24], audio[..1600 * 24]);
}

#[tokio::test]
async fn speech_during_a_response_cancels_it_with_turn_detected() {
    let double = start(AiDoubleConfig {
        mode: AiMode::Tone {
            hz: 600.0,
            duration: Duration::from_secs(5),
        },
        production_speed: 2.0,
        first_audio_latency: Duration::from_millis(10),
        ..AiDoubleConfig::default()
    })
    .await;
    let mut client = Client::connect(&double).await;
    client.configure(server_vad(200)).await;

    client
        .append(&[tone(1000.0, 300), silence(300)].concat(), 480)
        .await;
    let first = client.until("response.output_audio.delta").await;
    let created = first
        .iter()
        .find(|e| e["type"] == "response.created")
        .expect("a response started");
    let response_id = created["response"]["id"].clone();
    assert_eq!(dominant_frequency(&delta_pcm(&first)), 600.0);

    client
        .append(&[tone(1000.0, 200), silence(300)].concat(), 480)
        .await;
    let events = client.until("response.created").await;
    let barge_in = events
        .iter()
        .position(|e| e["type"] == "input_audio_buffer.speech_started")
        .expect("speech started");
    let done = events
        .iter()
        .position(|e| e["type"] == "response.done")
        .expect("the response ended");
    assert!(barge_in < done);
    assert!(
        events[barge_in..]
            .iter()
            .all(|e| e["type"] != "response.output_audio.delta"),
        "no delta after the barge-in"
    );
    assert_eq!(
        kinds(&events[barge_in + 1..=done]),
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done"
        ]
    );
    assert_eq!(events[barge_in + 4]["item"]["status"], "incomplete");
    let response = &events[done]["response"];
    assert_eq!(response["id"], response_id);
    assert_eq!(response["status"], "cancelled");
    assert_eq!(
        response["status_details"],
        json!({"type": "cancelled", "reason": "turn_detected"})
    );
    // The new turn is committed and answered.
    assert_eq!(events[done + 1]["type"], "rate_limits.updated");
    assert!(kinds(&events).contains(&"input_audio_buffer.speech_stopped"));

    let snapshot = &double.sessions()[0];
    assert_eq!(snapshot.responses.len(), 2);
    assert_eq!(snapshot.responses[0].status, "cancelled");
    assert!(snapshot.responses[0].produced_ms < 5000);
    assert_eq!(snapshot.speech_starts.len(), 2);
}

#[tokio::test]
async fn truncate_is_checked_against_the_audio_the_item_holds() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    client.configure(manual_turns()).await;

    // Echo with no caller turn yet says 1 s of 440 Hz.
    client.send(json!({"type": "response.create"})).await;
    let events = client.until("response.done").await;
    assert_eq!(delta_pcm(&events).len(), 24_000);
    assert_eq!(dominant_frequency(&delta_pcm(&events)), 440.0);
    let assistant = events
        .last()
        .and_then(|done| done["response"]["output"][0]["id"].as_str())
        .expect("assistant item")
        .to_owned();
    client.expect("rate_limits.updated").await;

    client
        .send(
            json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
               "content": [{"type": "input_text", "text": "hello"}]}}),
        )
        .await;
    let user = client.expect("conversation.item.added").await["item"]["id"].clone();
    assert_eq!(
        client.expect("conversation.item.done").await["previous_item_id"],
        assistant
    );

    let truncate = |event_id: &str, item: &Value, end: Value| {
        json!({"type": "conversation.item.truncate", "event_id": event_id, "item_id": item,
               "content_index": 0, "audio_end_ms": end})
    };
    let assistant_id = json!(assistant);
    let rejected = [
        (
            truncate("t1", &assistant_id, json!(1500)),
            "invalid_value",
            Some("Audio content of 1000ms is already shorter than 1500ms"),
        ),
        (
            truncate("t2", &assistant_id, json!(200.5)),
            "invalid_type",
            None,
        ),
        (
            truncate("t3", &json!("item_nope"), json!(10)),
            "invalid_value",
            None,
        ),
        (truncate("t4", &user, json!(0)), "invalid_value", None),
    ];
    for (event, code, message) in &rejected {
        client.send(event.clone()).await;
        let error = client.expect("error").await;
        assert_eq!(error["error"]["code"], *code, "{event}");
        assert_eq!(error["error"]["event_id"], event["event_id"]);
        if let Some(message) = message {
            assert_eq!(error["error"]["message"], *message);
            assert_eq!(error["error"]["param"], "audio_end_ms");
        }
    }

    client.send(truncate("t5", &assistant_id, json!(400))).await;
    let truncated = client.expect("conversation.item.truncated").await;
    assert_eq!(truncated["item_id"], assistant_id);
    assert_eq!(truncated["audio_end_ms"], 400);
    assert_eq!(truncated["content_index"], 0);

    client.send(truncate("t6", &assistant_id, json!(600))).await;
    let error = client.expect("error").await;
    assert_eq!(
        error["error"]["message"],
        "Audio content of 400ms is already shorter than 600ms"
    );

    let truncations = &double.sessions()[0].truncations;
    let summary: Vec<_> = truncations
        .iter()
        .map(|t| (t.audio_end_ms, t.produced_ms, t.accepted))
        .collect();
    assert_eq!(
        summary,
        [
            (1500, 1000, false),
            (200, 1000, false),
            (10, 0, false),
            (0, 0, false),
            (400, 1000, true),
            (600, 400, false)
        ]
    );
}

#[tokio::test]
async fn a_second_response_create_while_one_is_active_is_rejected() {
    let double = start(AiDoubleConfig {
        mode: AiMode::Tone {
            hz: 1000.0,
            duration: Duration::from_secs(5),
        },
        ..fast()
    })
    .await;
    let mut client = Client::connect(&double).await;
    client.configure(manual_turns()).await;

    client
        .send(json!({"type": "response.create", "event_id": "r1",
               "response": {"instructions": "Greet the caller."}}))
        .await;
    client
        .send(json!({"type": "response.create", "event_id": "r2"}))
        .await;
    let created = client.expect("response.created").await;
    let id = created["response"]["id"].as_str().expect("id").to_owned();
    let events = client.until("error").await;
    let error = &events[events.len() - 1]["error"];
    assert_eq!(error["code"], "conversation_already_has_active_response");
    assert_eq!(error["event_id"], "r2");
    assert_eq!(
        error["message"],
        format!(
            "Conversation already has an active response in progress: {id}. Wait until the response is finished before creating a new one."
        )
    );

    client
        .send(json!({"type": "response.cancel", "event_id": "c1"}))
        .await;
    let events = client.until("response.done").await;
    let done = &events[events.len() - 1]["response"];
    assert_eq!(done["id"], id.as_str());
    assert_eq!(
        done["status_details"],
        json!({"type": "cancelled", "reason": "client_cancelled"})
    );
    client.expect("rate_limits.updated").await;

    client
        .send(json!({"type": "response.cancel", "event_id": "c2"}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(error["error"]["code"], "response_cancel_not_active");
    assert_eq!(
        error["error"]["message"],
        "Cancellation failed: no active response found"
    );
    assert_eq!(error["error"]["event_id"], "c2");

    let snapshot = &double.sessions()[0];
    assert_eq!(snapshot.responses.len(), 1);
    assert_eq!(snapshot.responses[0].status, "cancelled");
    assert_eq!(
        snapshot.errors_sent,
        [
            "conversation_already_has_active_response",
            "response_cancel_not_active"
        ]
    );
}

#[tokio::test]
async fn a_manual_commit_needs_100_ms_and_does_not_start_a_response() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    client.configure(manual_turns()).await;

    client.append(&tone(1000.0, 50), 480).await;
    client
        .send(json!({"type": "input_audio_buffer.commit", "event_id": "k1"}))
        .await;
    let error = client.expect("error").await;
    assert_eq!(error["error"]["code"], "input_audio_buffer_commit_empty");
    assert_eq!(error["error"]["event_id"], "k1");
    assert_eq!(
        error["error"]["message"],
        "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has 50.00ms of audio."
    );

    client.append(&tone(1000.0, 100), 480).await;
    client
        .send(json!({"type": "input_audio_buffer.commit"}))
        .await;
    let committed = client.expect("input_audio_buffer.committed").await;
    assert_eq!(committed["previous_item_id"], Value::Null);
    let added = client.expect("conversation.item.added").await;
    assert_eq!(added["item"]["id"], committed["item_id"]);
    client.expect("conversation.item.done").await;

    // A probe whose reply must come next: nothing (no response) was queued in between.
    client
        .send(json!({"type": "no.such.event", "event_id": "probe"}))
        .await;
    assert_eq!(client.expect("error").await["error"]["event_id"], "probe");
    client
        .send(json!({"type": "input_audio_buffer.clear"}))
        .await;
    client.expect("input_audio_buffer.cleared").await;
    assert!(double.sessions()[0].responses.is_empty());
}

#[tokio::test]
async fn the_session_cap_sends_session_expired_then_closes_1001() {
    let double = start(AiDoubleConfig {
        max_session: Duration::from_millis(300),
        ..fast()
    })
    .await;
    let mut client = Client::connect(&double).await;
    client.configure(manual_turns()).await;
    let error = client.expect("error").await;
    assert_eq!(error["error"]["code"], "session_expired");
    assert_eq!(
        error["error"]["message"],
        "Your session hit the maximum duration of 300 milliseconds."
    );
    assert_eq!(client.close_code().await, Some(1001));
    assert!(double.wait_live_at_most(0, WAIT).await);
    assert!(double.sessions()[0].closed);
}

#[tokio::test]
async fn close_all_ends_live_sessions_the_requested_way() {
    let double = start(fast()).await;
    let mut first = Client::connect(&double).await;
    let mut second = Client::connect(&double).await;
    assert_eq!(double.live_sessions(), 2);
    assert_eq!(double.close_all(CloseKind::Code(1011)), 2);
    assert_eq!(first.close_code().await, Some(1011));
    assert_eq!(second.close_code().await, Some(1011));
    assert!(double.wait_live_at_most(0, WAIT).await);
    assert!(double.sessions().iter().all(|s| s.closed));

    let mut third = Client::connect(&double).await;
    assert_eq!(
        double.close_all(CloseKind::Abrupt),
        1,
        "closed sessions are not counted"
    );
    assert_eq!(
        third.close_code().await,
        None,
        "dropped without a close frame"
    );
    assert!(double.wait_live_at_most(0, WAIT).await);
    assert_eq!(double.sessions().len(), 3);
}

/// The refusal an upgrade got: status, `Retry-After` and the JSON body.
fn refusal_of(result: Result<Socket, WsError>) -> (u16, Option<String>, Value) {
    let response = match result {
        Err(WsError::Http(response)) => response,
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    };
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("Retry-After is ASCII").to_owned());
    let body = response.body().as_deref().expect("a body");
    let body = serde_json::from_slice(body).expect("the body is JSON");
    (response.status().as_u16(), retry_after, body)
}

#[tokio::test]
async fn refused_upgrades_get_the_status_an_openai_error_and_retry_after() {
    let double = start(fast()).await;
    let url = format!("{}?model=gpt-realtime", double.url());
    let bearer = ("authorization", "Bearer test-key");

    double.refuse_connections(Refusal::Status {
        status: 429,
        retry_after: Some(Duration::from_millis(1_500)),
    });
    let (status, retry_after, body) = refusal_of(upgrade(&url, &[bearer]).await);
    assert_eq!(status, 429);
    assert_eq!(
        retry_after.as_deref(),
        Some("2"),
        "whole seconds, rounded up"
    );
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(body["error"]["message"].is_string());
    assert!(body["error"]["param"].is_null());

    double.refuse_connections(Refusal::Status {
        status: 503,
        retry_after: None,
    });
    // Even a request the double would otherwise turn away (no key) gets the refusal.
    let (status, retry_after, body) = refusal_of(upgrade(&url, &[]).await);
    assert_eq!(status, 503);
    assert_eq!(retry_after, None);
    assert_eq!(body["error"]["type"], "server_error");
    assert_eq!(body["error"]["code"], "server_error");

    assert!(double.wait_for_refusals(2, WAIT).await);
    assert_eq!(double.refused_connections(), 2);
    assert!(double.sessions().is_empty());
}

#[tokio::test]
async fn a_dropped_connection_is_an_io_error_and_live_sessions_go_on() {
    let double = start(fast()).await;
    let mut live = Client::connect(&double).await;
    let url = format!("{}?model=gpt-realtime", double.url());
    let bearer = ("authorization", "Bearer test-key");

    double.refuse_connections(Refusal::Drop);
    match upgrade(&url, &[bearer]).await {
        Err(WsError::Io(_)) => {}
        Err(other) => panic!("expected an I/O error, got {other}"),
        Ok(_) => panic!("expected an I/O error, got an upgrade"),
    }
    assert!(double.wait_for_refusals(1, WAIT).await);
    // The session opened before the refusal still answers.
    live.configure(manual_turns()).await;
    assert_eq!(double.live_sessions(), 1);

    double.accept_connections();
    let mut next = Client::connect(&double).await;
    next.configure(manual_turns()).await;
    assert_eq!(double.refused_connections(), 1);
    assert_eq!(double.sessions().len(), 2);
}

#[tokio::test]
async fn sessions_record_when_they_opened_took_audio_and_closed() {
    let double = start(fast()).await;
    let before = std::time::Instant::now();
    let mut client = Client::connect(&double).await;
    client.configure(manual_turns()).await;
    let configured = double.sessions().remove(0);
    assert!(configured.opened_at >= before);
    assert_eq!(configured.first_append_at, None);
    assert_eq!(configured.closed_at, None);
    assert_eq!(double.sessions_with_audio(), 0);

    client.append(&silence(20), 480).await;
    assert!(double.wait_for_sessions_with_audio(1, WAIT).await);
    let appending = double.sessions().remove(0);
    let first_append = appending.first_append_at.expect("an append was handled");
    assert!(first_append >= configured.opened_at);
    assert_eq!(appending.appends, 1);

    client.append(&silence(20), 480).await;
    client.ws.close(None).await.expect("close");
    assert!(double.wait_live_at_most(0, WAIT).await);
    let closed = double.sessions().remove(0);
    assert_eq!(
        closed.first_append_at,
        Some(first_append),
        "the first one stays"
    );
    let closed_at = closed.closed_at.expect("closed");
    assert!(closed.closed && closed_at >= first_append);
    assert_eq!(double.sessions_with_audio(), 1);
}

#[tokio::test]
async fn shutdown_closes_live_sessions_with_1001() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    double.shutdown();
    assert_eq!(client.close_code().await, Some(1001));
    assert!(double.wait_live_at_most(0, WAIT).await);
}

#[tokio::test]
async fn g711_sessions_hear_and_speak_g711() {
    let double = start(fast()).await;
    let mut client = Client::connect(&double).await;
    client
        .configure(json!({"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"},
                      "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}},
            "output": {"format": {"type": "audio/pcmu"}}}}))
        .await;
    let mut ulaw = Vec::new();
    AudioFormat::Pcmu.encode(&[tone(1000.0, 400), silence(500)].concat(), &mut ulaw);
    // 20 ms of μ-law is 160 bytes.
    for chunk in ulaw.chunks(160) {
        client
            .send(json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(chunk)}))
            .await;
    }
    let events = client.until("response.done").await;
    assert_eq!(events[0]["audio_start_ms"], 0);
    let echo = delta_bytes(&events);
    // The echo is 0..400 ms at 8 bytes a millisecond, and says what the caller said.
    assert_eq!(echo.len(), 400 * 8);
    let (mut heard, mut said) = (Vec::new(), Vec::new());
    AudioFormat::Pcmu.decode_into(&echo, &mut None, &mut heard);
    AudioFormat::Pcmu.decode_into(&ulaw[..400 * 8], &mut None, &mut said);
    assert_eq!(heard, said);
    assert_eq!(double.sessions()[0].input_audio.len(), 900 * 24);
}

#[tokio::test]
async fn many_sessions_run_side_by_side() {
    const SESSIONS: usize = 30;
    let double = start(fast()).await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..SESSIONS {
        let double = double.clone();
        calls.spawn(async move {
            let mut client = Client::connect(&double).await;
            client.configure(server_vad(200)).await;
            client
                .append(&[tone(1000.0, 200), silence(300)].concat(), 480)
                .await;
            let events = client.until("response.done").await;
            delta_pcm(&events).len()
        });
    }
    assert!(double.wait_for_sessions(SESSIONS, WAIT).await);
    while let Some(echoed) = calls.join_next().await {
        // 200 ms of speech, with no room for padding before it.
        assert_eq!(echoed.expect("session task"), 200 * 24);
    }
    assert_eq!(double.sessions().len(), SESSIONS);
    assert!(double.sessions().iter().all(|s| s.responses.len() == 1));
}
