//! `realtime::events::parse_server_event`, which the Realtime client runs on every text frame
//! from the AI: any text, any JSON, and events of the spec's types with their fields in random
//! shapes.
//!
//! Properties: it never panics; a frame it reads is named by its `type` (the GA name for a beta
//! alias); and a well-formed event keeps its ids, texts and audio exactly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::{
    any_json, array, config, deeply_nested, field, json_like_text, object, odd_number, text,
};
use crate::realtime::events::{ServerEvent, parse_server_event};

/// The server events of the spec (GA names, the beta aliases the bridge accepts, and some it
/// passes through), with the GA name each is reported under.
const TYPES: [(&str, &str); 22] = [
    ("session.created", "session.created"),
    ("session.updated", "session.updated"),
    (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_started",
    ),
    (
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.speech_stopped",
    ),
    ("response.created", "response.created"),
    ("response.output_audio.delta", "response.output_audio.delta"),
    ("response.audio.delta", "response.output_audio.delta"),
    ("response.output_audio.done", "response.output_audio.done"),
    ("response.audio.done", "response.output_audio.done"),
    (
        "response.output_audio_transcript.done",
        "response.output_audio_transcript.done",
    ),
    (
        "response.audio_transcript.done",
        "response.output_audio_transcript.done",
    ),
    (
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.completed",
    ),
    (
        "response.function_call_arguments.done",
        "response.function_call_arguments.done",
    ),
    ("response.done", "response.done"),
    ("conversation.item.truncated", "conversation.item.truncated"),
    ("rate_limits.updated", "rate_limits.updated"),
    ("error", "error"),
    // Passed through as `Other`.
    (
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
    ),
    ("response.output_item.added", "response.output_item.added"),
    ("conversation.item.added", "conversation.item.added"),
    (
        "input_audio_buffer.committed",
        "input_audio_buffer.committed",
    ),
    ("response.content_part.added", "response.content_part.added"),
];

fn kind() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .prop_map(str::to_owned),
        1 => super::odd_string(),
    ]
    .boxed()
}

/// Base64 of random bytes, sometimes unpadded, sometimes not base64 at all.
fn delta() -> BoxedStrategy<Value> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..2048);
    prop_oneof![
        3 => bytes.clone().prop_map(|b| Value::from(STANDARD.encode(b))),
        1 => bytes.prop_map(|b| Value::from(STANDARD.encode(b).trim_end_matches('=').to_owned())),
        1 => text(),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![3 => any::<u32>().prop_map(Value::from), 1 => odd_number()].boxed()
}

/// An event of a random type with the union of the known events' fields, each in a random shape.
fn event() -> BoxedStrategy<Value> {
    let session = object(vec![
        ("id", field(text())),
        ("expires_at", field(number())),
        ("model", field(text())),
    ]);
    let failure = object(vec![("type", field(text())), ("code", field(text()))]);
    let response = object(vec![
        ("id", field(text())),
        (
            "status",
            field(super::word(&[
                "completed",
                "cancelled",
                "failed",
                "incomplete",
            ])),
        ),
        (
            "status_details",
            field(object(vec![
                ("type", field(text())),
                ("reason", field(text())),
                ("error", field(failure)),
            ])),
        ),
        ("output", field(array(any_json(), 2))),
    ]);
    let error = object(vec![
        ("type", field(text())),
        ("code", field(text())),
        ("message", field(text())),
        ("param", field(text())),
        ("event_id", field(text())),
    ]);
    let rate_limit = object(vec![
        ("name", field(super::word(&["requests", "tokens"]))),
        ("limit", field(number())),
        ("remaining", field(number())),
        ("reset_seconds", field(odd_number())),
    ]);
    let fields = object(vec![
        ("event_id", field(text())),
        ("item_id", field(text())),
        ("response_id", field(text())),
        ("call_id", field(text())),
        ("name", field(text())),
        ("arguments", field(text())),
        ("transcript", field(text())),
        ("delta", field(delta())),
        ("content_index", field(number())),
        ("output_index", field(number())),
        ("audio_start_ms", field(number())),
        ("audio_end_ms", field(number())),
        ("session", field(session)),
        ("response", field(response)),
        ("error", field(error)),
        ("rate_limits", field(array(rate_limit, 3))),
    ]);
    let kind = field(kind().prop_map(Value::from).boxed());
    (kind, fields)
        .prop_map(|(kind, mut fields)| {
            if let (Some(kind), Some(map)) = (kind, fields.as_object_mut()) {
                map.insert("type".to_owned(), kind);
            }
            fields
        })
        .boxed()
}

/// Parses `text`; when it reads, the event's name follows its `type`.
fn check(text: &str) -> Result<Option<ServerEvent>, TestCaseError> {
    let Ok(event) = parse_server_event(text) else {
        return Ok(None);
    };
    let kind = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned));
    let Some(kind) = kind else {
        return Err(TestCaseError::fail(format!(
            "read an event without a string type: {event:?}"
        )));
    };
    let expected = TYPES
        .iter()
        .find(|(t, _)| *t == kind)
        .map_or(kind.as_str(), |(_, name)| name);
    prop_assert_eq!(event.name(), expected);
    Ok(Some(event))
}

/// A well-formed event of each type the bridge acts on, with the values it must keep.
fn well_formed() -> BoxedStrategy<(Value, ServerEvent)> {
    let id = || "[A-Za-z0-9_]{0,24}";
    let any_text = any::<String>;
    prop_oneof![
        (
            id(),
            id(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..1024)
        )
            .prop_map(|(response_id, item_id, content_index, pcm)| (
                json!({ "type": "response.output_audio.delta", "response_id": response_id,
                    "item_id": item_id, "content_index": content_index,
                    "delta": STANDARD.encode(&pcm) }),
                ServerEvent::AudioDelta {
                    response_id,
                    item_id,
                    content_index,
                    pcm
                },
            )),
        (id(), id(), id(), id(), any_text()).prop_map(
            |(response_id, item_id, call_id, name, arguments)| (
                json!({ "type": "response.function_call_arguments.done",
                    "response_id": response_id, "item_id": item_id, "call_id": call_id,
                    "name": name, "arguments": arguments }),
                ServerEvent::FunctionCallArgumentsDone {
                    response_id,
                    item_id,
                    call_id,
                    name,
                    arguments,
                },
            )
        ),
        (id(), any_text()).prop_map(|(item_id, transcript)| (
            json!({ "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id, "transcript": transcript }),
            ServerEvent::InputTranscriptCompleted {
                item_id,
                transcript
            },
        )),
        (id(), any::<u64>()).prop_map(|(item_id, audio_start_ms)| (
            json!({ "type": "input_audio_buffer.speech_started",
                "item_id": item_id, "audio_start_ms": audio_start_ms }),
            ServerEvent::SpeechStarted {
                item_id,
                audio_start_ms
            },
        )),
        (id(), any::<Option<u64>>()).prop_map(|(session_id, expires_at)| (
            json!({ "type": "session.created",
                "session": { "id": session_id, "expires_at": expires_at } }),
            ServerEvent::SessionCreated {
                session_id,
                expires_at
            },
        )),
        (id(), id(), any::<Option<String>>()).prop_map(|(response_id, status, reason)| (
            json!({ "type": "response.done", "response": { "id": response_id,
                "status": status, "status_details": { "reason": reason } } }),
            ServerEvent::ResponseDone {
                response_id,
                status,
                reason
            },
        )),
        (any::<Option<String>>(), any_text(), any::<Option<String>>()).prop_map(
            |(code, message, param)| (
                json!({ "type": "error", "error": { "code": code, "message": message,
                    "param": param } }),
                ServerEvent::Error {
                    code,
                    message,
                    event_id: None,
                    param
                },
            )
        ),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_never_panics(text in prop_oneof![any::<String>(), json_like_text(), deeply_nested()]) {
        check(&text)?;
    }

    #[test]
    fn any_json_never_panics(value in any_json()) {
        check(&value.to_string())?;
    }

    #[test]
    fn generated_events_never_panic(value in event()) {
        check(&value.to_string())?;
    }

    #[test]
    fn well_formed_events_keep_their_values((value, expected) in well_formed(), extra in any_json()) {
        // Unknown fields, such as a newer server adds, change nothing.
        let mut value = value;
        if let Some(map) = value.as_object_mut() {
            map.insert("x_unknown_field".to_owned(), extra);
        }
        let event = check(&value.to_string())?;
        prop_assert_eq!(event, Some(expected));
    }
}

#[test]
fn an_event_whose_type_is_not_a_string_is_not_read() {
    for text in [r#"{"type":1}"#, r#"{"type":null}"#, r#"{"item_id":"x"}"#] {
        assert!(parse_server_event(text).is_err(), "{text}");
    }
}
