//! Realtime API (GA) wire events: the server events the bridge acts on, and the client events it sends.
//!
//! Parsing is lenient by design (spec §2, §13): unknown event types become [`ServerEvent::Other`],
//! unknown fields are ignored, beta aliases of the audio events are accepted, and a missing or
//! `null` id or number in a known event reads as empty or zero rather than failing the event.
//! Only invalid JSON, a missing `type` and undecodable audio are errors.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Standard alphabet, padded on encode; on decode it tolerates missing padding and stray trailing
/// bits, because refusing a delta over a padding detail would cut audio out of a live call.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Input and output audio rate: `audio/pcm` accepts 24 kHz only (spec §4.2).
pub const PCM_RATE_HZ: u32 = 24_000;

/// Instructions used when the configuration gives none.
pub const DEFAULT_INSTRUCTIONS: &str = "You are a helpful voice assistant answering a phone call. \
Speak naturally and keep each answer to one or two short sentences.";

/// What the bridge needs from server events; everything else is `Other(type)` (never an error).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    SessionCreated {
        session_id: String,
        /// `session.expires_at` (Unix seconds): when the provider ends the session (§10.2).
        expires_at: Option<u64>,
    },
    SessionUpdated,
    SpeechStarted {
        audio_start_ms: u64,
        item_id: String,
    },
    SpeechStopped {
        audio_end_ms: u64,
        item_id: String,
    },
    ResponseCreated {
        response_id: String,
    },
    /// `pcm` is the base64-decoded delta: PCM16 LE 24 kHz bytes.
    AudioDelta {
        response_id: String,
        item_id: String,
        content_index: u32,
        pcm: Vec<u8>,
    },
    AudioDone {
        response_id: String,
        item_id: String,
    },
    OutputTranscriptDone {
        item_id: String,
        transcript: String,
    },
    InputTranscriptCompleted {
        item_id: String,
        transcript: String,
    },
    FunctionCallArgumentsDone {
        response_id: String,
        item_id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
    /// `status` is `completed`, `cancelled`, `failed` or `incomplete`. `reason` is
    /// `status_details.reason` (`turn_detected`, `client_cancelled`, `max_output_tokens`, ...) or,
    /// for a failed response, the failure's `error.code`, else its `error.type`.
    ResponseDone {
        response_id: String,
        status: String,
        reason: Option<String>,
    },
    ItemTruncated {
        item_id: String,
        audio_end_ms: u64,
    },
    /// `rate_limits.updated` (§6.3): informational; entries without a name are left out.
    RateLimits(Vec<RateLimit>),
    Error {
        code: Option<String>,
        message: String,
        event_id: Option<String>,
        param: Option<String>,
    },
    /// Any other event, by its `type`.
    Other(String),
}

impl ServerEvent {
    /// The GA wire name of the event (the original `type` for [`ServerEvent::Other`]), for logs.
    /// Never contains ids, transcripts or audio.
    pub fn name(&self) -> &str {
        match self {
            Self::SessionCreated { .. } => "session.created",
            Self::SessionUpdated => "session.updated",
            Self::SpeechStarted { .. } => "input_audio_buffer.speech_started",
            Self::SpeechStopped { .. } => "input_audio_buffer.speech_stopped",
            Self::ResponseCreated { .. } => "response.created",
            Self::AudioDelta { .. } => "response.output_audio.delta",
            Self::AudioDone { .. } => "response.output_audio.done",
            Self::OutputTranscriptDone { .. } => "response.output_audio_transcript.done",
            Self::InputTranscriptCompleted { .. } => {
                "conversation.item.input_audio_transcription.completed"
            }
            Self::FunctionCallArgumentsDone { .. } => "response.function_call_arguments.done",
            Self::ResponseDone { .. } => "response.done",
            Self::ItemTruncated { .. } => "conversation.item.truncated",
            Self::RateLimits(_) => "rate_limits.updated",
            Self::Error { .. } => "error",
            Self::Other(kind) => kind,
        }
    }
}

/// Why a server event could not be read. The session is not affected; the event is lost.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON, not an object, or a known field with the wrong JSON type.
    #[error("server event is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("server event has no type")]
    MissingType,
    #[error("audio delta is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// The server events the bridge interprets; every other `type` is passed through as `Other`.
#[derive(Clone, Copy)]
enum Known {
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    ResponseCreated,
    AudioDelta,
    AudioDone,
    OutputTranscriptDone,
    InputTranscriptCompleted,
    FunctionCallArgumentsDone,
    ResponseDone,
    ItemTruncated,
    RateLimits,
    Error,
}

impl Known {
    /// GA names plus the beta aliases that differ (spec §3).
    fn classify(kind: &str) -> Option<Self> {
        Some(match kind {
            "session.created" => Self::SessionCreated,
            "session.updated" => Self::SessionUpdated,
            "input_audio_buffer.speech_started" => Self::SpeechStarted,
            "input_audio_buffer.speech_stopped" => Self::SpeechStopped,
            "response.created" => Self::ResponseCreated,
            "response.output_audio.delta" | "response.audio.delta" => Self::AudioDelta,
            "response.output_audio.done" | "response.audio.done" => Self::AudioDone,
            "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
                Self::OutputTranscriptDone
            }
            "conversation.item.input_audio_transcription.completed" => {
                Self::InputTranscriptCompleted
            }
            "response.function_call_arguments.done" => Self::FunctionCallArgumentsDone,
            "response.done" => Self::ResponseDone,
            "conversation.item.truncated" => Self::ItemTruncated,
            "rate_limits.updated" => Self::RateLimits,
            "error" => Self::Error,
            _ => return None,
        })
    }
}

/// A JSON string borrowed from the input when it has no escapes, so the large base64 `delta` and
/// the `type` of every event are read without a copy.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// First pass: only the `type`; everything else is skipped without being stored.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Text<'a>>,
}

/// Second pass, for known types only: the union of the fields those events carry. Every field is
/// optional so that a server omitting one, or sending `null`, does not cost us the event.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Fields<'a> {
    item_id: Option<String>,
    response_id: Option<String>,
    call_id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
    transcript: Option<String>,
    #[serde(borrow)]
    delta: Option<Text<'a>>,
    content_index: Option<u32>,
    audio_start_ms: Option<u64>,
    audio_end_ms: Option<u64>,
    session: Option<IdObject>,
    response: Option<ResponseObject>,
    error: Option<ErrorObject>,
    rate_limits: Option<Vec<RateLimitObject>>,
}

/// One entry of `rate_limits.updated`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// `requests` or `tokens` (others may come).
    pub name: String,
    pub limit: f64,
    pub remaining: f64,
    pub reset_seconds: f64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RateLimitObject {
    name: Option<String>,
    limit: Option<f64>,
    remaining: Option<f64>,
    reset_seconds: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct IdObject {
    id: Option<String>,
    expires_at: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponseObject {
    id: Option<String>,
    status: Option<String>,
    status_details: Option<StatusDetails>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct StatusDetails {
    reason: Option<String>,
    error: Option<FailureDetails>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FailureDetails {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorObject {
    code: Option<String>,
    message: Option<String>,
    event_id: Option<String>,
    param: Option<String>,
}

/// Parses one server text frame.
pub fn parse_server_event(text: &str) -> Result<ServerEvent, EventError> {
    // A derived struct also reads a JSON array, field by position: `[""]` would be an event of
    // type "". Events are objects.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(EventError::Json(de::Error::invalid_type(
            de::Unexpected::Other("JSON that is not an object"),
            &"an event object",
        )));
    }
    let envelope: Envelope<'_> = serde_json::from_str(text)?;
    let kind = envelope.kind.ok_or(EventError::MissingType)?.0;
    let Some(known) = Known::classify(&kind) else {
        return Ok(ServerEvent::Other(kind.into_owned()));
    };
    let f: Fields<'_> = serde_json::from_str(text)?;
    Ok(match known {
        Known::SessionCreated => {
            let session = f.session.unwrap_or_default();
            ServerEvent::SessionCreated {
                session_id: session.id.unwrap_or_default(),
                expires_at: session.expires_at,
            }
        }
        Known::SessionUpdated => ServerEvent::SessionUpdated,
        Known::SpeechStarted => ServerEvent::SpeechStarted {
            audio_start_ms: f.audio_start_ms.unwrap_or_default(),
            item_id: f.item_id.unwrap_or_default(),
        },
        Known::SpeechStopped => ServerEvent::SpeechStopped {
            audio_end_ms: f.audio_end_ms.unwrap_or_default(),
            item_id: f.item_id.unwrap_or_default(),
        },
        Known::ResponseCreated => ServerEvent::ResponseCreated {
            response_id: f.response.and_then(|r| r.id).unwrap_or_default(),
        },
        Known::AudioDelta => {
            let pcm = match &f.delta {
                Some(delta) => {
                    let mut pcm = Vec::with_capacity(base64::decoded_len_estimate(delta.0.len()));
                    B64.decode_vec(delta.0.as_bytes(), &mut pcm)?;
                    pcm
                }
                None => Vec::new(),
            };
            ServerEvent::AudioDelta {
                response_id: f.response_id.unwrap_or_default(),
                item_id: f.item_id.unwrap_or_default(),
                content_index: f.content_index.unwrap_or_default(),
                pcm,
            }
        }
        Known::AudioDone => ServerEvent::AudioDone {
            response_id: f.response_id.unwrap_or_default(),
            item_id: f.item_id.unwrap_or_default(),
        },
        Known::OutputTranscriptDone => ServerEvent::OutputTranscriptDone {
            item_id: f.item_id.unwrap_or_default(),
            transcript: f.transcript.unwrap_or_default(),
        },
        Known::InputTranscriptCompleted => ServerEvent::InputTranscriptCompleted {
            item_id: f.item_id.unwrap_or_default(),
            transcript: f.transcript.unwrap_or_default(),
        },
        Known::FunctionCallArgumentsDone => ServerEvent::FunctionCallArgumentsDone {
            response_id: f.response_id.unwrap_or_default(),
            item_id: f.item_id.unwrap_or_default(),
            call_id: f.call_id.unwrap_or_default(),
            name: f.name.unwrap_or_default(),
            arguments: f.arguments.unwrap_or_default(),
        },
        Known::ResponseDone => {
            let response = f.response.unwrap_or_default();
            let reason = response.status_details.and_then(|details| {
                details.reason.or_else(|| {
                    details
                        .error
                        .and_then(|failure| failure.code.or(failure.kind))
                })
            });
            ServerEvent::ResponseDone {
                response_id: response.id.unwrap_or_default(),
                status: response.status.unwrap_or_default(),
                reason,
            }
        }
        Known::RateLimits => ServerEvent::RateLimits(
            f.rate_limits
                .unwrap_or_default()
                .into_iter()
                .filter_map(|entry| {
                    Some(RateLimit {
                        name: entry.name?,
                        limit: entry.limit.unwrap_or_default(),
                        remaining: entry.remaining.unwrap_or_default(),
                        reset_seconds: entry.reset_seconds.unwrap_or_default(),
                    })
                })
                .collect(),
        ),
        Known::ItemTruncated => ServerEvent::ItemTruncated {
            item_id: f.item_id.unwrap_or_default(),
            audio_end_ms: f.audio_end_ms.unwrap_or_default(),
        },
        Known::Error => {
            let error = f.error.unwrap_or_default();
            ServerEvent::Error {
                code: error.code,
                message: error.message.unwrap_or_default(),
                event_id: error.event_id,
                param: error.param,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Client events
// ---------------------------------------------------------------------------------------------

const APPEND_HEAD: &str = r#"{"type":"input_audio_buffer.append","audio":""#;
const APPEND_TAIL: &str = r#""}"#;
/// Samples converted to bytes per step on the stack; 384 samples = 768 bytes, a multiple of 3,
/// so no chunk but the last produces base64 padding and the pieces concatenate exactly.
const APPEND_CHUNK_SAMPLES: usize = 384;

/// Appends `{"type":"input_audio_buffer.append","audio":"<base64 of PCM16 LE>"}` to `out` (cleared
/// first), no allocation once `out` has capacity.
///
/// Built by hand rather than through serde because it runs 50 times a second per call: the
/// samples go through a stack buffer straight into `out`.
pub fn write_append(pcm: &[i16], out: &mut String) {
    out.clear();
    let encoded = base64::encoded_len(pcm.len().saturating_mul(2), true).unwrap_or(0);
    out.reserve(APPEND_HEAD.len() + encoded + APPEND_TAIL.len());
    out.push_str(APPEND_HEAD);
    let mut bytes = [0u8; APPEND_CHUNK_SAMPLES * 2];
    for samples in pcm.chunks(APPEND_CHUNK_SAMPLES) {
        for (pair, sample) in bytes.chunks_exact_mut(2).zip(samples) {
            pair.copy_from_slice(&sample.to_le_bytes());
        }
        B64.encode_string(&bytes[..samples.len() * 2], out);
    }
    out.push_str(APPEND_TAIL);
}

/// `conversation.item.truncate`: cut an assistant item's audio to what the caller heard (§7.2).
pub fn truncate(item_id: &str, content_index: u32, audio_end_ms: u64) -> String {
    #[derive(Serialize)]
    struct Truncate<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        item_id: &'a str,
        content_index: u32,
        audio_end_ms: u64,
    }
    to_json(&Truncate {
        kind: "conversation.item.truncate",
        item_id,
        content_index,
        audio_end_ms,
    })
}

/// `response.cancel` for the active default-conversation response.
pub fn response_cancel() -> String {
    r#"{"type":"response.cancel"}"#.to_owned()
}

/// `response.create`, optionally overriding the instructions for this one response (a greeting).
pub fn response_create(instructions: Option<&str>) -> String {
    #[derive(Serialize)]
    struct ResponseCreate<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<Overrides<'a>>,
    }
    #[derive(Serialize)]
    struct Overrides<'a> {
        instructions: &'a str,
    }
    to_json(&ResponseCreate {
        kind: "response.create",
        response: instructions.map(|instructions| Overrides { instructions }),
    })
}

/// What the bridge configures on every new session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Only for Azure, where it is the deployment name; OpenAI takes the model from the URL.
    pub model: Option<String>,
    pub instructions: String,
    /// `None`: the provider's default voice. Cannot change once the session has produced audio.
    pub voice: Option<String>,
    /// Server VAD activation threshold, 0.0–1.0.
    pub vad_threshold: f32,
    /// Audio kept before detected speech.
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn; set explicitly because the server default is disputed (§4.2).
    pub silence_duration_ms: u32,
    /// Caller transcription model; `None` turns transcription off.
    pub transcription_model: Option<String>,
    /// `near_field` or `far_field`; `None` turns noise reduction off.
    pub noise_reduction: Option<String>,
    /// Function tools the model may call (`{"type":"function","name",...}`); empty: none.
    pub tools: Vec<serde_json::Value>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            model: None,
            instructions: DEFAULT_INSTRUCTIONS.to_owned(),
            voice: None,
            vad_threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            transcription_model: Some("gpt-4o-mini-transcribe".to_owned()),
            noise_reduction: Some("near_field".to_owned()),
            tools: Vec::new(),
        }
    }
}

/// The GA `session.update` of spec §4.1 for 24 kHz PCM both ways, with `event_id` `cfg-1` so an
/// `error` caused by it can be recognised.
pub fn session_update(settings: &SessionSettings) -> String {
    #[derive(Serialize)]
    struct SessionUpdate<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        event_id: &'static str,
        session: Session<'a>,
    }
    #[derive(Serialize)]
    struct Session<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        output_modalities: [&'static str; 1],
        instructions: &'a str,
        audio: Audio<'a>,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        tools: &'a [serde_json::Value],
        #[serde(skip_serializing_if = "Option::is_none")]
        tool_choice: Option<&'static str>,
    }
    #[derive(Serialize)]
    struct Audio<'a> {
        input: Input<'a>,
        output: Output<'a>,
    }
    #[derive(Serialize)]
    struct Input<'a> {
        format: Format,
        noise_reduction: Option<Typed<'a>>,
        transcription: Option<Transcription<'a>>,
        turn_detection: ServerVad,
    }
    #[derive(Serialize)]
    struct Output<'a> {
        format: Format,
        #[serde(skip_serializing_if = "Option::is_none")]
        voice: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Format {
        #[serde(rename = "type")]
        kind: &'static str,
        rate: u32,
    }
    #[derive(Serialize)]
    struct Typed<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
    }
    #[derive(Serialize)]
    struct Transcription<'a> {
        model: &'a str,
    }
    #[derive(Serialize)]
    struct ServerVad {
        #[serde(rename = "type")]
        kind: &'static str,
        threshold: f32,
        prefix_padding_ms: u32,
        silence_duration_ms: u32,
        create_response: bool,
        interrupt_response: bool,
    }
    const PCM: Format = Format {
        kind: "audio/pcm",
        rate: PCM_RATE_HZ,
    };
    to_json(&SessionUpdate {
        kind: "session.update",
        event_id: "cfg-1",
        session: Session {
            kind: "realtime",
            model: settings.model.as_deref(),
            output_modalities: ["audio"],
            instructions: &settings.instructions,
            audio: Audio {
                input: Input {
                    format: PCM,
                    noise_reduction: settings
                        .noise_reduction
                        .as_deref()
                        .map(|kind| Typed { kind }),
                    transcription: settings
                        .transcription_model
                        .as_deref()
                        .map(|model| Transcription { model }),
                    turn_detection: ServerVad {
                        kind: "server_vad",
                        threshold: settings.vad_threshold,
                        prefix_padding_ms: settings.prefix_padding_ms,
                        silence_duration_ms: settings.silence_duration_ms,
                        create_response: true,
                        interrupt_response: true,
                    },
                },
                output: Output {
                    format: PCM,
                    voice: settings.voice.as_deref(),
                },
            },
            tools: &settings.tools,
            tool_choice: (!settings.tools.is_empty()).then_some("auto"),
        },
    })
}

/// Who said a line of the conversation, for [`conversation_message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// The caller: `input_text` content.
    User,
    /// The AI: `output_text` content (assistant audio items cannot be created, §9).
    Assistant,
    /// The bridge: `input_text` content.
    System,
}

/// A text message added to the conversation (`conversation.item.create`, §9): how a new session
/// is told what was said before (§10.4).
pub fn conversation_message(speaker: Speaker, text: &str) -> String {
    let (role, content_type) = match speaker {
        Speaker::User => ("user", "input_text"),
        Speaker::Assistant => ("assistant", "output_text"),
        Speaker::System => ("system", "input_text"),
    };
    // Structs rather than `json!`, so `type` comes first (the client's logs read it there).
    #[derive(Serialize)]
    struct ItemCreate<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        item: Message<'a>,
    }
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        role: &'static str,
        content: [Content<'a>; 1],
    }
    #[derive(Serialize)]
    struct Content<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        text: &'a str,
    }
    to_json(&ItemCreate {
        kind: "conversation.item.create",
        item: Message {
            kind: "message",
            role,
            content: [Content {
                kind: content_type,
                text,
            }],
        },
    })
}

/// The result of a function call, as a conversation item (§8.2).
pub fn function_call_output(call_id: &str, output: &str) -> String {
    to_json(&serde_json::json!({
        "type": "conversation.item.create",
        "item": { "type": "function_call_output", "call_id": call_id, "output": output },
    }))
}

fn to_json<T: Serialize>(event: &T) -> String {
    serde_json::to_string(event)
        .expect("client events are plain structs of strings and numbers, which always serialise")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn parse(value: Value) -> ServerEvent {
        parse_server_event(&value.to_string()).expect("event parses")
    }

    #[test]
    fn session_created_yields_the_session_id() {
        let event = parse(json!({"type":"session.created","event_id":"event_1",
            "session":{"id":"sess_ABC","object":"realtime.session","type":"realtime","expires_at":1767225600,
                       "instructions":"long default","audio":{"input":{"format":{"type":"audio/pcm","rate":24000}}}}}));
        assert_eq!(
            event,
            ServerEvent::SessionCreated {
                session_id: "sess_ABC".into(),
                expires_at: Some(1_767_225_600),
            }
        );
    }

    #[test]
    fn earlier_turns_are_replayed_as_text_items_of_the_right_role_and_content_type() {
        let items: Vec<Value> = [
            (Speaker::User, "book a table"),
            (Speaker::Assistant, "for \"two\"?"),
            (Speaker::System, "tool result"),
        ]
        .iter()
        .map(|(speaker, text)| serde_json::from_str(&conversation_message(*speaker, text)).unwrap())
        .collect();
        let shape = |item: &Value| {
            (
                item["type"].as_str().unwrap().to_owned(),
                item["item"]["role"].as_str().unwrap().to_owned(),
                item["item"]["content"][0]["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                item["item"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        };
        assert_eq!(
            shape(&items[0]),
            (
                "conversation.item.create".into(),
                "user".into(),
                "input_text".into(),
                "book a table".into()
            )
        );
        assert_eq!(
            shape(&items[1]),
            (
                "conversation.item.create".into(),
                "assistant".into(),
                "output_text".into(),
                "for \"two\"?".into()
            )
        );
        assert_eq!(shape(&items[2]).1, "system");
        assert_eq!(shape(&items[2]).2, "input_text");
    }

    #[test]
    fn rate_limits_are_read_whatever_their_number() {
        let event = parse(
            json!({"type":"rate_limits.updated","event_id":"event_9","rate_limits":[
            {"name":"requests","limit":1000,"remaining":999,"reset_seconds":60},
            {"name":"tokens","limit":50000,"remaining":49950,"reset_seconds":0.5},
            {"limit":1}]}),
        );
        let ServerEvent::RateLimits(limits) = event else {
            panic!("not rate limits: {event:?}");
        };
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[1].name, "tokens");
        assert_eq!(limits[1].remaining, 49950.0);
        assert_eq!(limits[1].reset_seconds, 0.5);
        let empty = parse(json!({"type":"rate_limits.updated","rate_limits":[]}));
        assert_eq!(empty, ServerEvent::RateLimits(Vec::new()));
    }

    #[test]
    fn session_updated_is_recognised() {
        let event = parse(
            json!({"type":"session.updated","event_id":"event_2","session":{"id":"sess_ABC"}}),
        );
        assert_eq!(event, ServerEvent::SessionUpdated);
    }

    #[test]
    fn speech_started_and_stopped_carry_offsets_and_item() {
        assert_eq!(
            parse(
                json!({"type":"input_audio_buffer.speech_started","event_id":"e","audio_start_ms":1200,"item_id":"item_U1"})
            ),
            ServerEvent::SpeechStarted {
                audio_start_ms: 1200,
                item_id: "item_U1".into()
            }
        );
        assert_eq!(
            parse(
                json!({"type":"input_audio_buffer.speech_stopped","event_id":"e","audio_end_ms":2400,"item_id":"item_U1"})
            ),
            ServerEvent::SpeechStopped {
                audio_end_ms: 2400,
                item_id: "item_U1".into()
            }
        );
    }

    #[test]
    fn response_created_yields_the_response_id() {
        let event = parse(json!({"type":"response.created","event_id":"e",
            "response":{"object":"realtime.response","id":"resp_1","status":"in_progress","output":[]}}));
        assert_eq!(
            event,
            ServerEvent::ResponseCreated {
                response_id: "resp_1".into()
            }
        );
    }

    #[test]
    fn audio_delta_is_base64_decoded() {
        let event = parse(
            json!({"type":"response.output_audio.delta","event_id":"e","response_id":"resp_1",
            "item_id":"item_A","output_index":0,"content_index":1,"delta":"AAEC/w=="}),
        );
        assert_eq!(
            event,
            ServerEvent::AudioDelta {
                response_id: "resp_1".into(),
                item_id: "item_A".into(),
                content_index: 1,
                pcm: vec![0, 1, 2, 255],
            }
        );
    }

    #[test]
    fn audio_delta_with_escaped_slash_and_no_padding_still_decodes() {
        let text = r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","content_index":0,"delta":"AAEC\/w"}"#;
        let event = parse_server_event(text).expect("parses");
        assert!(matches!(event, ServerEvent::AudioDelta { pcm, .. } if pcm == vec![0, 1, 2, 255]));
    }

    #[test]
    fn beta_audio_names_are_accepted() {
        assert!(matches!(
            parse(json!({"type":"response.audio.delta","response_id":"r","item_id":"i","content_index":0,"delta":"AAA="})),
            ServerEvent::AudioDelta { pcm, .. } if pcm == vec![0, 0]
        ));
        assert_eq!(
            parse(json!({"type":"response.audio.done","response_id":"r","item_id":"i"})),
            ServerEvent::AudioDone {
                response_id: "r".into(),
                item_id: "i".into()
            }
        );
        assert_eq!(
            parse(
                json!({"type":"response.audio_transcript.done","response_id":"r","item_id":"i","transcript":"Hi"})
            ),
            ServerEvent::OutputTranscriptDone {
                item_id: "i".into(),
                transcript: "Hi".into()
            }
        );
    }

    #[test]
    fn audio_done_and_transcripts_are_recognised() {
        assert_eq!(
            parse(
                json!({"type":"response.output_audio.done","event_id":"e","response_id":"resp_1","item_id":"item_A","output_index":0,"content_index":0})
            ),
            ServerEvent::AudioDone {
                response_id: "resp_1".into(),
                item_id: "item_A".into()
            }
        );
        assert_eq!(
            parse(
                json!({"type":"response.output_audio_transcript.done","response_id":"resp_1","item_id":"item_A","output_index":0,"content_index":0,"transcript":"Hello, \"ACME\" here."})
            ),
            ServerEvent::OutputTranscriptDone {
                item_id: "item_A".into(),
                transcript: "Hello, \"ACME\" here.".into()
            }
        );
        assert_eq!(
            parse(
                json!({"type":"conversation.item.input_audio_transcription.completed","item_id":"item_U1","content_index":0,"transcript":"where is my order","usage":{"type":"duration","seconds":2}})
            ),
            ServerEvent::InputTranscriptCompleted {
                item_id: "item_U1".into(),
                transcript: "where is my order".into()
            }
        );
    }

    #[test]
    fn function_call_arguments_done_carries_the_call() {
        let event = parse(
            json!({"type":"response.function_call_arguments.done","response_id":"resp_2",
            "item_id":"item_fc1","output_index":0,"call_id":"call_AbCdEf0123456789","name":"lookup_order",
            "arguments":"{\"order_number\":\"12345\"}"}),
        );
        assert_eq!(
            event,
            ServerEvent::FunctionCallArgumentsDone {
                response_id: "resp_2".into(),
                item_id: "item_fc1".into(),
                call_id: "call_AbCdEf0123456789".into(),
                name: "lookup_order".into(),
                arguments: r#"{"order_number":"12345"}"#.into(),
            }
        );
    }

    #[test]
    fn response_done_reports_status_and_reason() {
        let completed = parse(
            json!({"type":"response.done","response":{"id":"resp_1","status":"completed",
            "status_details":null,"output":[],"usage":{"total_tokens":253}}}),
        );
        assert_eq!(
            completed,
            ServerEvent::ResponseDone {
                response_id: "resp_1".into(),
                status: "completed".into(),
                reason: None
            }
        );
        let cancelled = parse(
            json!({"type":"response.done","response":{"id":"resp_2","status":"cancelled",
            "status_details":{"type":"cancelled","reason":"turn_detected"}}}),
        );
        assert_eq!(
            cancelled,
            ServerEvent::ResponseDone {
                response_id: "resp_2".into(),
                status: "cancelled".into(),
                reason: Some("turn_detected".into())
            }
        );
        let rate_limited = parse(
            json!({"type":"response.done","response":{"id":"resp_3","status":"failed",
            "status_details":{"type":"failed","error":{"type":"requests","code":"rate_limit_exceeded"}}}}),
        );
        assert_eq!(
            rate_limited,
            ServerEvent::ResponseDone {
                response_id: "resp_3".into(),
                status: "failed".into(),
                reason: Some("rate_limit_exceeded".into())
            }
        );
        let server_error = parse(
            json!({"type":"response.done","response":{"id":"resp_4","status":"failed",
            "status_details":{"type":"failed","error":{"type":"server_error","code":null}}}}),
        );
        assert_eq!(
            server_error,
            ServerEvent::ResponseDone {
                response_id: "resp_4".into(),
                status: "failed".into(),
                reason: Some("server_error".into())
            }
        );
    }

    #[test]
    fn item_truncated_is_recognised() {
        let event = parse(
            json!({"type":"conversation.item.truncated","item_id":"item_A","content_index":0,"audio_end_ms":1500}),
        );
        assert_eq!(
            event,
            ServerEvent::ItemTruncated {
                item_id: "item_A".into(),
                audio_end_ms: 1500
            }
        );
    }

    #[test]
    fn error_event_carries_code_message_param_and_event_id() {
        let event = parse(
            json!({"type":"error","event_id":"event_9","error":{"type":"invalid_request_error",
            "code":"invalid_value","message":"Audio content of 900ms is already shorter than 1500ms",
            "param":"audio_end_ms","event_id":"cfg-1"}}),
        );
        assert_eq!(
            event,
            ServerEvent::Error {
                code: Some("invalid_value".into()),
                message: "Audio content of 900ms is already shorter than 1500ms".into(),
                event_id: Some("cfg-1".into()),
                param: Some("audio_end_ms".into()),
            }
        );
        let bare = parse(
            json!({"type":"error","error":{"type":"server_error","code":null,"message":"boom","event_id":null}}),
        );
        assert_eq!(
            bare,
            ServerEvent::Error {
                code: None,
                message: "boom".into(),
                event_id: None,
                param: None
            }
        );
    }

    #[test]
    fn unknown_types_are_other_whatever_their_fields() {
        let event = parse(
            json!({"type":"response.output_item.added","item":{"id":"item_1"},
            "delta":{"not":"a string"},"response":"weird"}),
        );
        assert_eq!(
            event,
            ServerEvent::Other("response.output_item.added".into())
        );
        assert_eq!(event.name(), "response.output_item.added");
    }

    #[test]
    fn unknown_fields_and_nulls_in_known_events_are_tolerated() {
        let event = parse(
            json!({"type":"input_audio_buffer.speech_started","audio_start_ms":10,
            "item_id":null,"brand_new_field":{"x":[1,2,3]}}),
        );
        assert_eq!(
            event,
            ServerEvent::SpeechStarted {
                audio_start_ms: 10,
                item_id: String::new()
            }
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_server_event("{not json"),
            Err(EventError::Json(_))
        ));
        assert!(matches!(
            parse_server_event("[1,2]"),
            Err(EventError::Json(_))
        ));
        assert!(matches!(
            parse_server_event(r#"{"event_id":"e"}"#),
            Err(EventError::MissingType)
        ));
        assert!(matches!(
            parse_server_event(r#"{"type":null}"#),
            Err(EventError::MissingType)
        ));
        assert!(matches!(
            parse_server_event(
                r#"{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"!!!not base64"}"#
            ),
            Err(EventError::Base64(_))
        ));
        assert!(matches!(
            parse_server_event(
                r#"{"type":"input_audio_buffer.speech_started","audio_start_ms":"soon"}"#
            ),
            Err(EventError::Json(_))
        ));
        assert!(matches!(parse_server_event(""), Err(EventError::Json(_))));
    }

    /// Found by fuzzing (`fuzz::realtime_events`): an array was read as an event, by position.
    #[test]
    fn an_array_is_not_an_event() {
        for text in [
            r#"[""]"#,
            r#" ["response.output_audio.delta","item","resp",null,null,null,"AAAA"]"#,
        ] {
            assert!(
                matches!(parse_server_event(text), Err(EventError::Json(_))),
                "{text}"
            );
        }
        assert!(parse_server_event(" \r\n\t{\"type\":\"session.updated\"}").is_ok());
    }

    fn decode_append(text: &str) -> Vec<i16> {
        let value: Value = serde_json::from_str(text).expect("append is JSON");
        assert_eq!(value["type"], "input_audio_buffer.append");
        assert_eq!(value.as_object().map(|o| o.len()), Some(2));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value["audio"].as_str().expect("audio is a string"))
            .expect("audio is canonical base64");
        bytes
            .chunks_exact(2)
            .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
            .collect()
    }

    #[test]
    fn append_decodes_back_to_the_same_pcm_for_any_length() {
        let mut out = String::new();
        for len in [
            0usize, 1, 2, 3, 383, 384, 385, 480, 767, 768, 769, 1000, 2400,
        ] {
            let pcm: Vec<i16> = (0..len)
                .map(|i| (i as i32 * 7919 % 65536 - 32768) as i16)
                .collect();
            write_append(&pcm, &mut out);
            assert_eq!(decode_append(&out), pcm, "length {len}");
        }
    }

    #[test]
    fn append_reuses_the_buffer_once_it_has_capacity() {
        let pcm = [i16::MIN, -1, 0, 1, i16::MAX].repeat(96); // 480 samples: 20 ms at 24 kHz
        let mut out = String::new();
        write_append(&pcm, &mut out);
        let (ptr, capacity) = (out.as_ptr(), out.capacity());
        for _ in 0..10 {
            write_append(&pcm, &mut out);
        }
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, capacity));
        assert_eq!(decode_append(&out), pcm);
    }

    #[test]
    fn truncate_sends_integer_milliseconds() {
        let text = truncate("item_A", 0, 1500);
        assert_eq!(
            text,
            r#"{"type":"conversation.item.truncate","item_id":"item_A","content_index":0,"audio_end_ms":1500}"#
        );
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert!(value["audio_end_ms"].is_u64());
    }

    #[test]
    fn cancel_and_create_have_the_spec_shapes() {
        assert_eq!(response_cancel(), r#"{"type":"response.cancel"}"#);
        assert_eq!(response_create(None), r#"{"type":"response.create"}"#);
        let value: Value =
            serde_json::from_str(&response_create(Some("Greet the caller: \"Hi\".")))
                .expect("JSON");
        assert_eq!(
            value,
            json!({"type":"response.create","response":{"instructions":"Greet the caller: \"Hi\"."}})
        );
    }

    #[test]
    fn session_update_has_the_ga_shape() {
        let value: Value = serde_json::from_str(&session_update(&SessionSettings {
            instructions: "Be brief.".into(),
            ..SessionSettings::default()
        }))
        .expect("JSON");
        assert_eq!(
            value,
            json!({
                "type": "session.update",
                "event_id": "cfg-1",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "instructions": "Be brief.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "noise_reduction": {"type": "near_field"},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                            "turn_detection": {
                                "type": "server_vad",
                                "threshold": 0.5,
                                "prefix_padding_ms": 300,
                                "silence_duration_ms": 500,
                                "create_response": true,
                                "interrupt_response": true
                            }
                        },
                        "output": {
                            "format": {"type": "audio/pcm", "rate": 24000}
                        }
                    }
                }
            })
        );
    }

    #[test]
    fn session_update_sets_the_azure_model_and_turns_optional_features_off() {
        let value: Value = serde_json::from_str(&session_update(&SessionSettings {
            model: Some("my-deployment".into()),
            voice: Some("cedar".into()),
            transcription_model: None,
            noise_reduction: None,
            ..SessionSettings::default()
        }))
        .expect("JSON");
        let session = &value["session"];
        assert_eq!(session["model"], "my-deployment");
        assert_eq!(session["audio"]["output"]["voice"], "cedar");
        assert!(session["audio"]["input"]["transcription"].is_null());
        assert!(session["audio"]["input"]["noise_reduction"].is_null());
        assert!(session.get("temperature").is_none());
        assert!(session.get("modalities").is_none());
    }
}
