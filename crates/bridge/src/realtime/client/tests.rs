//! The client against a local WebSocket server speaking the GA protocol's shapes.

use std::future::Future;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::accept_hdr_async;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};

use super::*;

/// Bound on every wait in these tests; each wait ends on an event long before it.
const WAIT: Duration = Duration::from_secs(10);
const OPENAI_KEY: &str = "sk-test-secret-123";
const AZURE_KEY: &str = "azure-secret-456";

type ServerWs = WebSocketStream<TcpStream>;

/// What the client put in its upgrade request.
struct Upgrade {
    path: String,
    query: String,
    headers: HeaderMap,
}

/// A one-connection WebSocket server on port 0. `reject` refuses the upgrade with that status
/// and body; otherwise `script` plays the server side.
async fn serve<F, Fut, T>(
    reject: Option<(StatusCode, String)>,
    script: F,
) -> (String, JoinHandle<(Upgrade, Option<T>)>)
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("client connects");
        let mut seen = None;
        // The callback's `Result` shape is tungstenite's, not ours to shrink.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, response: Response| {
            seen = Some(Upgrade {
                path: request.uri().path().to_owned(),
                query: request.uri().query().unwrap_or_default().to_owned(),
                headers: request.headers().clone(),
            });
            match reject {
                Some((status, body)) => {
                    let mut refusal = ErrorResponse::new(Some(body));
                    *refusal.status_mut() = status;
                    Err(refusal)
                }
                None => Ok(response),
            }
        };
        let accepted = accept_hdr_async(tcp, callback).await;
        let upgrade = seen.expect("the request reached the server");
        match accepted {
            Ok(ws) => (upgrade, Some(script(ws).await)),
            Err(_) => (upgrade, None),
        }
    });
    (format!("ws://{addr}"), handle)
}

async fn within<F: Future>(future: F) -> F::Output {
    timeout(WAIT, future).await.expect("test step timed out")
}

async fn send_json(ws: &mut ServerWs, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("server send");
}

/// The next text frame as JSON; control frames are skipped.
async fn recv_json(ws: &mut ServerWs) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(&text).expect("client sends JSON");
            }
            Some(Ok(Message::Close(frame))) => panic!("client closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// Reads until the client's close frame and returns its code; the library replies to it.
async fn recv_close(ws: &mut ServerWs) -> Option<u16> {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Close(frame) = message {
            return frame.map(|f| u16::from(f.code));
        }
    }
    None
}

async fn close_with(ws: &mut ServerWs, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    ws.close(Some(frame)).await.expect("server close");
    while let Some(Ok(_)) = ws.next().await {}
}

/// session.created, session.update (returned), session.updated.
async fn configure(ws: &mut ServerWs) -> Value {
    send_json(ws, json!({"type":"session.created","event_id":"event_1",
        "session":{"id":"sess_TEST","object":"realtime.session","type":"realtime","instructions":"default"}}))
    .await;
    let update = recv_json(ws).await;
    assert_eq!(update["type"], "session.update");
    send_json(
        ws,
        json!({"type":"session.updated","event_id":"event_2","session":{"id":"sess_TEST"}}),
    )
    .await;
    update
}

fn openai(base: &str) -> RealtimeConfig {
    RealtimeConfig {
        provider: Provider::OpenAi {
            url: format!("{base}/v1/realtime"),
            model: "gpt-realtime".into(),
            api_key: SecretString::from(OPENAI_KEY),
        },
        session: Arc::new(SessionSettings {
            instructions: "Be brief.".into(),
            ..SessionSettings::default()
        }),
        connect_timeout: WAIT,
    }
}

fn header<'a>(upgrade: &'a Upgrade, name: &str) -> Option<&'a str> {
    upgrade.headers.get(name).and_then(|v| v.to_str().ok())
}

async fn connected(base: &str) -> RealtimeSession {
    within(RealtimeSession::connect(&openai(base), ""))
        .await
        .expect("connects")
}

#[tokio::test]
async fn openai_connect_authenticates_with_bearer_and_streams_audio_only_after_session_updated() {
    let (base, server) = serve(None, |mut ws| async move {
        send_json(
            &mut ws,
            json!({"type":"session.created","session":{"id":"sess_ORDER"}}),
        )
        .await;
        let mut frames = vec![recv_json(&mut ws).await];
        // Anything the client sent before answering this ping was sent before session.updated.
        ws.send(Message::Ping("probe".into())).await.expect("ping");
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(payload))) => {
                    assert_eq!(&payload[..], b"probe");
                    break;
                }
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str(&text).expect("JSON"));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        frames.push(json!("<session.updated sent>"));
        send_json(&mut ws, json!({"type":"session.updated"})).await;
        frames.push(recv_json(&mut ws).await);
        frames
    })
    .await;

    let mut session = within(RealtimeSession::connect(
        &openai(&base),
        "The caller is +9198****3421.",
    ))
    .await
    .expect("connects");
    assert_eq!(session.session_id(), "sess_ORDER");
    within(session.send_audio(&[1, -2, 3]))
        .await
        .expect("append");

    let (upgrade, frames) = within(server).await.expect("server task");
    let frames = frames.expect("upgraded");
    assert_eq!(upgrade.path, "/v1/realtime");
    assert_eq!(upgrade.query, "model=gpt-realtime");
    assert_eq!(
        header(&upgrade, "authorization"),
        Some("Bearer sk-test-secret-123")
    );
    assert_eq!(header(&upgrade, "openai-beta"), None);
    assert_eq!(header(&upgrade, "api-key"), None);

    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| f["type"].as_str().or(f.as_str()).unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds,
        [
            "session.update",
            "<session.updated sent>",
            "input_audio_buffer.append"
        ]
    );
    assert_eq!(frames[0]["event_id"], "cfg-1");
    assert_eq!(
        frames[0]["session"]["instructions"],
        "Be brief.\n\nThe caller is +9198****3421."
    );
    assert!(frames[0]["session"].get("model").is_none());
    assert_eq!(frames[2]["audio"], "AQD+/wMA");
}

#[tokio::test]
async fn azure_connect_uses_the_api_key_header_and_the_ga_path_without_api_version() {
    let (base, server) = serve(None, |mut ws| async move { configure(&mut ws).await }).await;
    let config = RealtimeConfig {
        provider: Provider::Azure {
            endpoint: format!("{}/", base.replace("ws://", "http://")),
            deployment: "voice-prod".into(),
            api_key: SecretString::from(AZURE_KEY),
        },
        session: Arc::new(SessionSettings {
            model: Some("voice-prod".into()),
            ..SessionSettings::default()
        }),
        connect_timeout: WAIT,
    };

    let session = within(RealtimeSession::connect(&config, ""))
        .await
        .expect("connects");
    assert_eq!(session.session_id(), "sess_TEST");

    let (upgrade, update) = within(server).await.expect("server task");
    let update = update.expect("upgraded");
    assert_eq!(upgrade.path, "/openai/v1/realtime");
    assert_eq!(upgrade.query, "model=voice-prod");
    assert_eq!(header(&upgrade, "api-key"), Some(AZURE_KEY));
    assert_eq!(header(&upgrade, "authorization"), None);
    assert_eq!(header(&upgrade, "openai-beta"), None);
    assert_eq!(update["session"]["model"], "voice-prod");
    assert_eq!(
        update["session"]["instructions"],
        events::DEFAULT_INSTRUCTIONS
    );
}

#[tokio::test]
async fn an_error_instead_of_session_updated_is_a_server_error_and_the_client_closes_normally() {
    let (base, server) = serve(None, |mut ws| async move {
        send_json(&mut ws, json!({"type":"session.created","session":{"id":"sess_X"}})).await;
        recv_json(&mut ws).await;
        send_json(&mut ws, json!({"type":"error","event_id":"event_3","error":{
            "type":"invalid_request_error","code":"invalid_value",
            "message":"Invalid value: 'robot'.","param":"session.audio.output.voice","event_id":"cfg-1"}}))
        .await;
        recv_close(&mut ws).await
    })
    .await;

    let error = within(RealtimeSession::connect(&openai(&base), ""))
        .await
        .expect_err("configuration refused");
    assert!(
        matches!(&error, RealtimeError::Server { code: Some(code), message }
            if code == "invalid_value" && message == "Invalid value: 'robot'."),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    let (_, close_code) = within(server).await.expect("server task");
    assert_eq!(close_code.flatten(), Some(1000));
}

#[tokio::test]
async fn a_close_before_session_created_is_closed_and_4000_is_not_retried() {
    let (base, server) = serve(None, |mut ws| async move {
        send_json(&mut ws, json!({"type":"error","error":{"type":"invalid_request_error",
            "code":"beta_api_shape_disabled",
            "message":"The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.","param":""}}))
        .await;
        close_with(&mut ws, 4000, "beta_api_shape_disabled").await;
    })
    .await;

    let error = within(RealtimeSession::connect(&openai(&base), ""))
        .await
        .expect_err("closed");
    assert!(
        matches!(&error, RealtimeError::Closed { code: Some(4000), reason } if reason == "beta_api_shape_disabled"),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    within(server).await.expect("server task");
}

#[tokio::test]
async fn a_dropped_connection_before_session_created_is_a_retryable_abnormal_close() {
    let (base, server) = serve(None, |ws| async move { drop(ws) }).await;

    let error = within(RealtimeSession::connect(&openai(&base), ""))
        .await
        .expect_err("dropped");
    assert!(
        matches!(
            error,
            RealtimeError::Closed {
                code: Some(1006),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
    within(server).await.expect("server task");
}

#[tokio::test]
async fn a_refused_upgrade_reports_the_status_without_the_key() {
    let body =
        format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {OPENAI_KEY}\"}}}}");
    let (base, server) = serve(Some((StatusCode::UNAUTHORIZED, body)), |_ws| async {}).await;

    let error = within(RealtimeSession::connect(&openai(&base), ""))
        .await
        .expect_err("refused");
    let RealtimeError::Handshake {
        status: Some(401),
        message,
        ..
    } = &error
    else {
        panic!("expected a 401 handshake error, got {error:?}");
    };
    assert!(message.contains("Incorrect API key provided"));
    assert!(!message.contains(OPENAI_KEY));
    assert!(!error.to_string().contains(OPENAI_KEY));
    assert!(!error.is_retryable());
    within(server).await.expect("server task");
}

#[tokio::test]
async fn a_silent_server_times_out_waiting_for_session_created() {
    let (base, server) = serve(None, |mut ws| async move {
        // Say nothing; wait for the client to give up and go.
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let config = RealtimeConfig {
        connect_timeout: Duration::from_millis(200),
        ..openai(&base)
    };

    let error = within(RealtimeSession::connect(&config, ""))
        .await
        .expect_err("times out");
    assert!(
        matches!(error, RealtimeError::Timeout("session.created")),
        "{error:?}"
    );
    assert!(error.is_retryable());
    within(server).await.expect("server task");
}

/// A GA turn as in spec §11, including events the bridge does not interpret.
const RECORDED_TURN: &[&str] = &[
    r#"{"type":"input_audio_buffer.speech_started","event_id":"event_B1","audio_start_ms":1180,"item_id":"item_U1"}"#,
    r#"{"type":"input_audio_buffer.speech_stopped","event_id":"event_B2","audio_end_ms":2420,"item_id":"item_U1"}"#,
    r#"{"type":"input_audio_buffer.committed","event_id":"event_B3","previous_item_id":null,"item_id":"item_U1"}"#,
    r#"{"type":"conversation.item.added","event_id":"event_B4","previous_item_id":null,"item":{"id":"item_U1","object":"realtime.item","type":"message","status":"completed","role":"user","content":[{"type":"input_audio","transcript":null}]}}"#,
    r#"{"type":"response.created","event_id":"event_B5","response":{"object":"realtime.response","id":"resp_R1","status":"in_progress","status_details":null,"output":[],"conversation_id":"conv_C1","output_modalities":["audio"],"usage":null,"metadata":null}}"#,
    r#"{"type":"response.output_item.added","event_id":"event_B6","response_id":"resp_R1","output_index":0,"item":{"id":"item_A1","object":"realtime.item","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
    r#"{"type":"response.content_part.added","event_id":"event_B7","response_id":"resp_R1","item_id":"item_A1","output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}}"#,
    r#"{"type":"response.output_audio.delta","event_id":"event_B8","response_id":"resp_R1","item_id":"item_A1","output_index":0,"content_index":0,"delta":"AAABAP//"}"#,
    r#"{"type":"response.output_audio_transcript.delta","event_id":"event_B9","response_id":"resp_R1","item_id":"item_A1","output_index":0,"content_index":0,"delta":"Your order"}"#,
    r#"{"type":"conversation.item.input_audio_transcription.completed","event_id":"event_BA","item_id":"item_U1","content_index":0,"transcript":"Where is my order?","usage":{"type":"duration","seconds":1}}"#,
    r#"{"type":"response.output_audio.done","event_id":"event_BB","response_id":"resp_R1","item_id":"item_A1","output_index":0,"content_index":0}"#,
    r#"{"type":"response.output_audio_transcript.done","event_id":"event_BC","response_id":"resp_R1","item_id":"item_A1","output_index":0,"content_index":0,"transcript":"Your order ships Friday."}"#,
    r#"{"type":"response.content_part.done","event_id":"event_BD","response_id":"resp_R1","item_id":"item_A1","output_index":0,"content_index":0,"part":{"type":"output_audio","transcript":"Your order ships Friday."}}"#,
    r#"{"type":"response.output_item.done","event_id":"event_BE","response_id":"resp_R1","output_index":0,"item":{"id":"item_A1","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Your order ships Friday."}]}}"#,
    r#"{"type":"conversation.item.done","event_id":"event_BF","previous_item_id":"item_U1","item":{"id":"item_A1","object":"realtime.item","type":"message","status":"completed","role":"assistant","content":[{"type":"output_audio","transcript":"Your order ships Friday."}]}}"#,
    r#"{"type":"response.done","event_id":"event_BG","response":{"object":"realtime.response","id":"resp_R1","status":"completed","status_details":null,"output":[],"usage":{"total_tokens":253,"input_tokens":132,"output_tokens":121}}}"#,
    r#"{"type":"rate_limits.updated","event_id":"event_BH","rate_limits":[{"name":"tokens","limit":50000,"remaining":49950,"reset_seconds":60}]}"#,
    r#"{"type":"conversation.item.truncated","event_id":"event_BI","item_id":"item_A1","content_index":0,"audio_end_ms":40}"#,
    r#"{"type":"error","event_id":"event_BJ","error":{"type":"invalid_request_error","code":"response_cancel_not_active","message":"Cancellation failed: no active response found","param":null,"event_id":null}}"#,
    r#"not json at all"#,
    r#"{"type":"response.function_call_arguments.done","event_id":"event_BK","response_id":"resp_R2","item_id":"item_F1","output_index":0,"call_id":"call_AbCdEf0123456789","name":"lookup_order","arguments":"{\"order_number\":\"12345\"}"}"#,
];

#[tokio::test]
async fn a_recorded_ga_turn_comes_through_in_order_and_a_normal_close_ends_the_stream() {
    let (base, server) = serve(None, |mut ws| async move {
        configure(&mut ws).await;
        for line in RECORDED_TURN {
            ws.send(Message::text(*line)).await.expect("send");
        }
        close_with(&mut ws, 1000, "").await;
    })
    .await;
    let mut session = connected(&base).await;

    let mut received = Vec::new();
    while let Some(event) = within(session.next_event()).await {
        received.push(event.expect("no error before the normal close"));
    }
    let other = |kind: &str| ServerEvent::Other(kind.to_owned());
    assert_eq!(
        received,
        [
            ServerEvent::SpeechStarted {
                audio_start_ms: 1180,
                item_id: "item_U1".into()
            },
            ServerEvent::SpeechStopped {
                audio_end_ms: 2420,
                item_id: "item_U1".into()
            },
            other("input_audio_buffer.committed"),
            other("conversation.item.added"),
            ServerEvent::ResponseCreated {
                response_id: "resp_R1".into()
            },
            other("response.output_item.added"),
            other("response.content_part.added"),
            ServerEvent::AudioDelta {
                response_id: "resp_R1".into(),
                item_id: "item_A1".into(),
                content_index: 0,
                pcm: vec![0, 0, 1, 0, 255, 255]
            },
            other("response.output_audio_transcript.delta"),
            ServerEvent::InputTranscriptCompleted {
                item_id: "item_U1".into(),
                transcript: "Where is my order?".into()
            },
            ServerEvent::AudioDone {
                response_id: "resp_R1".into(),
                item_id: "item_A1".into()
            },
            ServerEvent::OutputTranscriptDone {
                item_id: "item_A1".into(),
                transcript: "Your order ships Friday.".into()
            },
            other("response.content_part.done"),
            other("response.output_item.done"),
            other("conversation.item.done"),
            ServerEvent::ResponseDone {
                response_id: "resp_R1".into(),
                status: "completed".into(),
                reason: None
            },
            ServerEvent::RateLimits(vec![crate::realtime::events::RateLimit {
                name: "tokens".into(),
                limit: 50000.0,
                remaining: 49950.0,
                reset_seconds: 60.0,
            }]),
            ServerEvent::ItemTruncated {
                item_id: "item_A1".into(),
                audio_end_ms: 40
            },
            ServerEvent::Error {
                code: Some("response_cancel_not_active".into()),
                message: "Cancellation failed: no active response found".into(),
                event_id: None,
                param: None
            },
            // "not json at all" is skipped, not fatal.
            ServerEvent::FunctionCallArgumentsDone {
                response_id: "resp_R2".into(),
                item_id: "item_F1".into(),
                call_id: "call_AbCdEf0123456789".into(),
                name: "lookup_order".into(),
                arguments: r#"{"order_number":"12345"}"#.into()
            },
        ]
    );
    assert!(within(session.next_event()).await.is_none());
    let error = within(session.send_audio(&[0; 480]))
        .await
        .expect_err("closed");
    assert!(matches!(
        error,
        RealtimeError::Closed {
            code: Some(1000),
            ..
        }
    ));
    within(server).await.expect("server task");
}

#[tokio::test]
async fn an_abnormal_close_after_set_up_is_reported_once_and_is_retryable() {
    let (base, server) = serve(None, |mut ws| async move {
        configure(&mut ws).await;
        close_with(&mut ws, 1011, "internal error").await;
    })
    .await;
    let mut session = connected(&base).await;

    let error = within(session.next_event())
        .await
        .expect("an outcome")
        .expect_err("abnormal close");
    assert!(
        matches!(&error, RealtimeError::Closed { code: Some(1011), reason } if reason == "internal error"),
        "{error:?}"
    );
    assert!(error.is_retryable());
    assert!(within(session.next_event()).await.is_none());
    within(server).await.expect("server task");
}

#[tokio::test]
async fn a_truncate_goes_out_with_integer_ms_and_close_sends_1000() {
    let (base, server) = serve(None, |mut ws| async move {
        configure(&mut ws).await;
        let truncate = recv_json(&mut ws).await;
        (truncate, recv_close(&mut ws).await)
    })
    .await;
    let mut session = connected(&base).await;

    within(session.send_text(events::truncate("item_A1", 0, 1500)))
        .await
        .expect("sent");
    within(session.close()).await;
    assert!(within(session.next_event()).await.is_none());
    assert!(
        within(session.send_text(events::response_cancel()))
            .await
            .is_err()
    );

    let (_, outcome) = within(server).await.expect("server task");
    let (truncate, close_code) = outcome.expect("upgraded");
    assert_eq!(truncate["type"], "conversation.item.truncate");
    assert_eq!(truncate["item_id"], "item_A1");
    assert!(truncate["audio_end_ms"].is_u64());
    assert_eq!(truncate["audio_end_ms"], 1500);
    assert_eq!(close_code, Some(1000));
}

#[tokio::test]
async fn pings_are_answered_while_waiting_for_events() {
    let (base, server) = serve(None, |mut ws| async move {
        configure(&mut ws).await;
        ws.send(Message::Ping("keepalive".into())).await.expect("ping");
        let pong = loop {
            match ws.next().await {
                Some(Ok(Message::Pong(payload))) => break payload,
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        };
        send_json(&mut ws, json!({"type":"input_audio_buffer.speech_started","audio_start_ms":5,"item_id":"item_P"})).await;
        close_with(&mut ws, 1000, "").await;
        pong
    })
    .await;
    let mut session = connected(&base).await;

    let event = within(session.next_event())
        .await
        .expect("event")
        .expect("ok");
    assert_eq!(
        event,
        ServerEvent::SpeechStarted {
            audio_start_ms: 5,
            item_id: "item_P".into()
        }
    );
    assert!(within(session.next_event()).await.is_none());
    let (_, pong) = within(server).await.expect("server task");
    assert_eq!(&pong.expect("upgraded")[..], b"keepalive");
}

#[tokio::test]
async fn events_survive_next_event_being_cancelled_by_a_select_loop() {
    const EVENTS: u64 = 20;
    const APPENDS_PER_EVENT: usize = 5;
    let (base, server) = serve(None, |mut ws| async move {
        configure(&mut ws).await;
        let mut samples = Vec::new();
        for i in 0..EVENTS {
            for _ in 0..APPENDS_PER_EVENT {
                let append = recv_json(&mut ws).await;
                samples.push(append["audio"].as_str().unwrap_or_default().to_owned());
            }
            send_json(&mut ws, json!({"type":"input_audio_buffer.speech_started","audio_start_ms":i,"item_id":"item"})).await;
        }
        close_with(&mut ws, 1000, "").await;
        samples
    })
    .await;
    let mut session = connected(&base).await;

    // A paced source, like the phone leg, so frames arrive while a read is pending.
    let (frames, mut audio) = tokio::sync::mpsc::channel::<i16>(8);
    let source = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        for i in 0..(EVENTS as usize * APPENDS_PER_EVENT) {
            pace.tick().await;
            if frames.send(i as i16).await.is_err() {
                break;
            }
        }
    });
    let mut starts = Vec::new();
    within(async {
        loop {
            // Like the call loop: audio frames win, and each one cancels the pending read.
            tokio::select! {
                biased;
                Some(sample) = audio.recv() => {
                    session.send_audio(&[sample]).await.expect("append");
                }
                event = session.next_event() => match event {
                    Some(Ok(ServerEvent::SpeechStarted { audio_start_ms, .. })) => starts.push(audio_start_ms),
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break,
                },
            }
        }
    })
    .await;

    assert_eq!(starts, (0..EVENTS).collect::<Vec<_>>());
    within(source).await.expect("source task");
    let (_, samples) = within(server).await.expect("server task");
    let expected: Vec<String> = (0..(EVENTS as usize * APPENDS_PER_EVENT))
        .map(|i| {
            let mut json = String::new();
            events::write_append(&[i as i16], &mut json);
            serde_json::from_str::<Value>(&json).expect("JSON")["audio"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(samples.expect("upgraded"), expected);
}

#[test]
fn append_frames_reuse_one_allocation_once_the_socket_has_let_go() {
    let pcm = [7i16; 480];
    let mut buffer = AppendBuffer::default();
    let first = buffer.message(&pcm);
    let Message::Text(text) = &first else {
        panic!("append is a text frame")
    };
    let address = text.as_ptr();
    assert_eq!(&text[..35], r#"{"type":"input_audio_buffer.append""#);
    drop(first);
    for _ in 0..5 {
        let next = buffer.message(&pcm);
        let Message::Text(text) = &next else {
            panic!("append is a text frame")
        };
        assert_eq!(text.as_ptr(), address);
    }
}

#[tokio::test]
async fn appends_sent_through_the_socket_leave_the_frame_allocation_free_for_reuse() {
    let (base, server) = serve(None, |mut ws| async move {
        configure(&mut ws).await;
        for _ in 0..2 {
            recv_json(&mut ws).await;
        }
        recv_close(&mut ws).await
    })
    .await;
    let mut session = connected(&base).await;
    let pcm = [3i16; 480];
    let frame_address = |message: Message| match message {
        Message::Text(text) => text.as_ptr(),
        other => panic!("append is a text frame, not {other:?}"),
    };

    within(session.send_audio(&pcm)).await.expect("append");
    let before = frame_address(session.append.message(&pcm));
    within(session.send_audio(&pcm)).await.expect("append");
    let after = frame_address(session.append.message(&pcm));
    assert_eq!(before, after, "the socket kept a reference to a sent frame");

    within(session.close()).await;
    let (_, close_code) = within(server).await.expect("server task");
    assert_eq!(close_code.flatten(), Some(1000));
}

#[test]
fn urls_follow_the_provider_rules() {
    let key = || SecretString::from("k");
    let openai = Provider::OpenAi {
        url: DEFAULT_OPENAI_URL.into(),
        model: "gpt-realtime".into(),
        api_key: key(),
    };
    assert_eq!(
        openai.url().expect("valid").as_str(),
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    );
    let proxied = Provider::OpenAi {
        url: "https://proxy.example/v1/realtime?tenant=a&model=old".into(),
        model: "gpt-realtime-mini".into(),
        api_key: key(),
    };
    assert_eq!(
        proxied.url().expect("valid").as_str(),
        "wss://proxy.example/v1/realtime?tenant=a&model=gpt-realtime-mini"
    );
    let azure = Provider::Azure {
        endpoint: "https://acme.openai.azure.com/?api-version=2025-04-01-preview".into(),
        deployment: "gpt-realtime".into(),
        api_key: key(),
    };
    assert_eq!(
        azure.url().expect("valid").as_str(),
        "wss://acme.openai.azure.com/openai/v1/realtime?model=gpt-realtime"
    );
    let bad = Provider::OpenAi {
        url: "ftp://api.openai.com/v1/realtime".into(),
        model: "m".into(),
        api_key: key(),
    };
    assert!(matches!(
        bad.url(),
        Err(RealtimeError::Handshake { status: None, .. })
    ));
    let garbage = Provider::Azure {
        endpoint: "not a url".into(),
        deployment: "d".into(),
        api_key: key(),
    };
    assert!(garbage.url().is_err());
}

#[test]
fn a_key_that_cannot_be_a_header_is_a_handshake_error_that_does_not_echo_it() {
    let provider = Provider::OpenAi {
        url: DEFAULT_OPENAI_URL.into(),
        model: "m".into(),
        api_key: SecretString::from("sk-bad\u{7f}key"),
    };
    let url = provider.url().expect("valid");
    let error = handshake_request(&url, &provider).expect_err("rejected");
    assert!(!error.to_string().contains("sk-bad"));
    assert!(!error.is_retryable());
}

#[test]
fn debug_output_never_contains_the_key() {
    let config = RealtimeConfig::new(Provider::Azure {
        endpoint: "https://acme.openai.azure.com".into(),
        deployment: "d".into(),
        api_key: SecretString::from(AZURE_KEY),
    });
    let debug = format!("{config:?}");
    assert!(!debug.contains(AZURE_KEY));
    assert!(debug.contains("REDACTED"));
    assert_eq!(config.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
}

#[test]
fn retryability_follows_the_spec() {
    let closed = |code| RealtimeError::Closed {
        code: Some(code),
        reason: String::new(),
    };
    for code in [1001, 1005, 1006, 1011, 1012, 1013, 1015] {
        assert!(closed(code).is_retryable(), "{code}");
    }
    for code in [1000, 1008, 4000] {
        assert!(!closed(code).is_retryable(), "{code}");
    }
    let handshake = |status| RealtimeError::Handshake {
        status,
        message: String::new(),
        retry_after: None,
    };
    assert!(handshake(Some(429)).is_retryable());
    assert!(!handshake(Some(401)).is_retryable());
    assert!(!handshake(Some(403)).is_retryable());
    assert!(handshake(Some(503)).is_retryable());
    assert!(!handshake(None).is_retryable());
    assert!(RealtimeError::Io("reset".into()).is_retryable());
    assert!(RealtimeError::Timeout("session.created").is_retryable());
    assert!(!RealtimeError::Protocol("bad".into()).is_retryable());
    let server = |code: &str| RealtimeError::Server {
        code: Some(code.into()),
        message: String::new(),
    };
    assert!(server("session_expired").is_retryable());
    assert!(!server("invalid_value").is_retryable());
}

#[test]
fn caller_context_follows_the_instructions_after_a_blank_line() {
    assert_eq!(with_caller_context("Be brief.", ""), "Be brief.");
    assert_eq!(
        with_caller_context("Be brief.", "Caller: Ana."),
        "Be brief.\n\nCaller: Ana."
    );
    assert_eq!(with_caller_context("", "Caller: Ana."), "Caller: Ana.");
}

#[test]
fn client_event_types_are_read_for_logs() {
    assert_eq!(
        client_event_type(&events::truncate("i", 0, 1)),
        "conversation.item.truncate"
    );
    assert_eq!(client_event_type("{}"), "?");
}

#[test]
fn the_providers_text_is_shown_escaped_and_cut_short() {
    let page = format!("bad gateway\nERROR forged line{}", "x".repeat(100_000));
    let shown = RealtimeError::Handshake {
        status: Some(502),
        message: page,
        retry_after: None,
    }
    .to_string();
    assert!(shown.starts_with("realtime handshake failed with HTTP 502: bad gateway\\nERROR"));
    assert!(!shown.contains('\n'), "{shown}");
    assert!(shown.len() < AI_TEXT_CHARS + 100, "{} chars", shown.len());
    let closed = RealtimeError::Closed {
        code: Some(1011),
        reason: "down\r\nWARN x".into(),
    }
    .to_string();
    assert_eq!(
        closed,
        "realtime session closed with code 1011: down\\r\\nWARN x"
    );
    let server = RealtimeError::Server {
        code: Some("bad\ncode".into()),
        message: "no".into(),
    }
    .to_string();
    assert_eq!(server, "realtime server error bad\\ncode: no");
}
