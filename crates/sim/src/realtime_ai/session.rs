//! One Realtime session as a sans-IO state machine: client events and `now` in, server events out.
//!
//! The connection task owns the socket and the clock; this type owns everything else (config,
//! input audio, VAD, conversation, responses, records) and never sleeps. Time-driven work
//! (paced audio deltas, delayed transcripts, the idle timeout, the session cap) happens in
//! [`Session::tick`], and [`Session::deadline`] says when it is next due.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};

use super::pcm::{AudioFormat, SAMPLES_PER_MS, tone_sample};
use super::session_config::{self as cfg, ApiError, Effective};
use super::vad::{EnergyVad, VadEvent, VadParams};
use super::{
    AiDoubleConfig, AiMode, FunctionCallRecord, FunctionOutput, RecordedEvent, ResponseRecord,
    ScriptedCall, SessionSnapshot, Truncation,
};

mod input;
mod items;
mod responses;

use responses::describe;

/// What the connection task must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Output {
    /// Send this server event (already serialised).
    Event(String),
    /// Close the socket with this code and reason; nothing after it is sent.
    Close { code: u16, reason: String },
    /// The first `session.updated` was queued just before: the session now counts as configured.
    Configured,
}

/// The session's `threshold` that [`AiDoubleConfig::vad_threshold_rms`] stands for; the RMS
/// threshold scales linearly with it (0.5 → the configured RMS, 1.0 → twice that, 0 → all speech).
const THRESHOLD_REFERENCE: f64 = 0.5;
/// Largest decoded audio accepted in one append (§5.1).
const MAX_APPEND_BYTES: usize = 15 << 20;
/// Minimum audio a commit needs (§5.1).
const MIN_COMMIT_MS: f64 = 100.0;
/// Delay from a commit to its scripted transcript (§12.4 says 0.5–1 s).
const TRANSCRIPTION_DELAY: Duration = Duration::from_millis(500);
/// What the scripted caller transcript says.
/// How long the spoken answer after tool results lasts.
const TOOL_ANSWER_TONE: Duration = Duration::from_millis(600);
/// What Echo mode says when there is nothing to echo yet.
const FALLBACK_TONE_HZ: f32 = 440.0;
const FALLBACK_TONE: Duration = Duration::from_secs(1);
/// Every client event type the GA interface accepts over WebSocket.
const CLIENT_EVENT_TYPES: &[&str] = &[
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
];
const RESPONSE_KEYS: &[&str] = &[
    "instructions",
    "tools",
    "tool_choice",
    "output_modalities",
    "audio",
    "max_output_tokens",
    "metadata",
    "conversation",
    "input",
    "prompt",
];

/// A new id in the shapes of §2: the prefix and `len` alphanumerics.
pub(super) fn new_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(len)
            .map(char::from),
    );
    id
}

fn item_id() -> String {
    new_id("item_", 21)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
    System,
    /// Function calls and their outputs.
    Tool,
}

/// A conversation item as the server keeps it.
#[derive(Debug)]
struct Item {
    id: String,
    /// The item as reported in `conversation.item.added`/`.done` (never with audio bytes).
    json: Value,
    role: Role,
    /// Caller audio this item was committed from, as a range of the session's input samples.
    user_audio: Option<Range<usize>>,
    /// Assistant audio this item holds (produced, less what a truncate cut), in 24 kHz samples.
    assistant_samples: usize,
    /// Whether the model produced any audio for it (only such items can be truncated).
    has_audio: bool,
}

/// A user turn between `speech_started` and `speech_stopped`.
#[derive(Debug)]
struct Turn {
    item_id: String,
    audio_start_ms: u64,
}

/// Where a response's audio comes from.
#[derive(Debug, Clone)]
enum Source {
    /// The caller's own audio: a range of the session's input samples.
    Echo(Range<usize>),
    Tone {
        hz: f32,
        samples: usize,
    },
    /// A recording ([`AiMode::Speech`]), spoken from its start.
    Speech(Arc<[i16]>),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Self::Echo(range) => range.len(),
            Self::Tone { samples, .. } => *samples,
            Self::Speech(pcm) => pcm.len(),
        }
    }
}

/// A response between `response.created` and `response.done`.
#[derive(Debug)]
struct Active {
    id: String,
    item_id: String,
    /// Index into the session's response records.
    record: usize,
    /// `false` for an out-of-band (`conversation: "none"`) response.
    in_conversation: bool,
    text_only: bool,
    format: AudioFormat,
    format_json: Value,
    voice: Value,
    output_modalities: Value,
    max_output_tokens: Value,
    metadata: Value,
    instructions_chars: usize,
    source: Source,
    /// Transcript text said with each delta (`(echo)`, `(tone)`), or once (a tool result).
    label: String,
    label_once: bool,
    /// Samples of `source` already sent.
    emitted: usize,
    chunks_sent: u32,
    /// When the first delta is due (`response.created` + first-audio latency).
    first_at: Instant,
    /// Time between deltas: `delta_ms` of audio at `production_speed` × real time.
    interval: Duration,
    transcript: String,
}

impl Active {
    fn due(&self) -> Instant {
        if self.text_only || self.emitted >= self.source.len() {
            self.first_at
        } else {
            self.first_at + self.interval * self.chunks_sent
        }
    }
}

/// A response request after validation: what differs between VAD, idle-timeout and client ones.
#[derive(Debug, Default)]
struct Request {
    out_of_band: bool,
    instructions: Option<String>,
    output_modalities: Option<Value>,
    format: Option<Value>,
    voice: Option<Value>,
    max_output_tokens: Option<Value>,
    metadata: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Completed,
    Cancelled(&'static str),
    /// A server error (§6.2 `failed`).
    Failed,
}

#[derive(Debug)]
struct PendingTranscript {
    due: Instant,
    item_id: String,
    seconds: f64,
    text: String,
}

pub(super) struct Session {
    settings: Arc<AiDoubleConfig>,
    id: String,
    conversation_id: String,
    model: Option<String>,
    /// The effective session object, as last sent in `session.created`/`session.updated`.
    config: Value,
    effective: Effective,
    expires_at: Instant,
    expired: bool,
    configured: bool,
    /// Set by the first audio delta: from then on the voice cannot change (§4.2).
    audio_produced: bool,

    /// Every appended sample (24 kHz), in order; echo responses read from it.
    input: Vec<i16>,
    /// An odd PCM byte waiting for its partner in the next append.
    carry: Option<u8>,
    /// Where the uncommitted input buffer starts in `input`.
    buffer_start: usize,
    vad: EnergyVad,
    /// Reused between appends so the hot path does not allocate.
    vad_events: Vec<VadEvent>,
    turn: Option<Turn>,
    /// The most recent caller turn (speech start with padding to speech end): what Echo says.
    last_turn: Option<Range<usize>>,
    committed_ms: u64,

    items: Vec<Item>,
    /// `call_id`s of function calls in the conversation, with their function names.
    call_ids: HashSet<String>,
    call_names: HashMap<String, String>,
    /// VAD user turns so far (scripted calls are keyed by it).
    user_turns: usize,
    /// Tool outputs received and not yet spoken back.
    unspoken_outputs: Vec<String>,
    function_calls: Vec<FunctionCallRecord>,
    function_outputs: Vec<FunctionOutput>,
    early_response_creates: u32,
    responses: Vec<Active>,
    idle_deadline: Option<Instant>,
    transcripts: VecDeque<PendingTranscript>,

    client_events: Vec<RecordedEvent>,
    appends: u64,
    appended_before_configured: usize,
    speech_starts: Vec<u64>,
    records: Vec<ResponseRecord>,
    truncations: Vec<Truncation>,
    errors_sent: Vec<String>,
    opened_at: Instant,
    first_append_at: Option<Instant>,
    /// When the connection task ended ([`Session::mark_closed`]).
    closed_at: Option<Instant>,
}

impl Session {
    /// A new session for `model`; queues `session.created`. `unix_now` is wall-clock seconds,
    /// only for the reported `expires_at`.
    pub(super) fn new(
        settings: Arc<AiDoubleConfig>,
        model: Option<String>,
        now: Instant,
        unix_now: u64,
        out: &mut Vec<Output>,
    ) -> Self {
        let id = new_id("sess_", 21);
        let expires_at_unix = unix_now.saturating_add(settings.max_session.as_secs());
        let config = cfg::defaults(
            &id,
            model.as_deref().unwrap_or("gpt-realtime"),
            expires_at_unix,
        );
        let effective = Effective::of(&config);
        let session = Self {
            expires_at: now + settings.max_session,
            settings,
            id,
            conversation_id: new_id("conv_", 21),
            model,
            config,
            effective,
            expired: false,
            configured: false,
            audio_produced: false,
            input: Vec::new(),
            carry: None,
            buffer_start: 0,
            vad: EnergyVad::new(),
            vad_events: Vec::new(),
            turn: None,
            last_turn: None,
            committed_ms: 0,
            items: Vec::new(),
            call_ids: HashSet::new(),
            call_names: HashMap::new(),
            user_turns: 0,
            unspoken_outputs: Vec::new(),
            function_calls: Vec::new(),
            function_outputs: Vec::new(),
            early_response_creates: 0,
            responses: Vec::new(),
            idle_deadline: None,
            transcripts: VecDeque::new(),
            client_events: Vec::new(),
            appends: 0,
            appended_before_configured: 0,
            speech_starts: Vec::new(),
            records: Vec::new(),
            truncations: Vec::new(),
            errors_sent: Vec::new(),
            opened_at: now,
            first_append_at: None,
            closed_at: None,
        };
        session.emit(
            out,
            json!({"type": "session.created", "session": session.config}),
        );
        session
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed_at.is_some()
    }

    /// The connection has ended at `now` (a second call keeps the first time).
    pub(super) fn mark_closed(&mut self, now: Instant) {
        self.closed_at.get_or_insert(now);
    }

    /// Whether an `input_audio_buffer.append` has been handled yet.
    pub(super) fn has_appended(&self) -> bool {
        self.first_append_at.is_some()
    }

    pub(super) fn snapshot(&self) -> SessionSnapshot {
        SessionSnapshot {
            function_calls: self.function_calls.clone(),
            function_outputs: self.function_outputs.clone(),
            early_response_creates: self.early_response_creates,
            id: self.id.clone(),
            model: self.model.clone(),
            config: self.config.clone(),
            client_events: self.client_events.clone(),
            appends: self.appends,
            input_audio: self.input.clone(),
            appended_before_configured_ms: (self.appended_before_configured / SAMPLES_PER_MS)
                as u64,
            speech_starts: self.speech_starts.clone(),
            responses: self.records.clone(),
            truncations: self.truncations.clone(),
            errors_sent: self.errors_sent.clone(),
            closed: self.closed_at.is_some(),
            opened_at: self.opened_at,
            first_append_at: self.first_append_at,
            closed_at: self.closed_at,
        }
    }

    /// When [`Session::tick`] next has work; `None` once the session has expired.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.expired {
            return None;
        }
        let responses = self.responses.iter().map(Active::due);
        let transcripts = self.transcripts.front().map(|t| t.due);
        responses
            .chain(transcripts)
            .chain(self.idle_deadline)
            .chain([self.expires_at])
            .min()
    }

    /// Does whatever time-driven work is due at `now`.
    pub(super) fn tick(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.expired {
            return;
        }
        if now >= self.expires_at {
            self.expire(out);
            return;
        }
        let mut index = 0;
        while index < self.responses.len() {
            if self.responses[index].due() <= now {
                // A late tick catches up: every delta already due goes out now, in order.
                self.step(now, index, out);
            } else {
                index += 1;
            }
        }
        while self.transcripts.front().is_some_and(|t| t.due <= now) {
            if let Some(pending) = self.transcripts.pop_front() {
                self.emit_transcript(pending, out);
            }
        }
        if self.idle_deadline.is_some_and(|d| d <= now) {
            self.idle_timeout(now, out);
        }
    }

    /// A binary frame: the API speaks JSON text frames only.
    pub(super) fn on_binary(&mut self, out: &mut Vec<Output>) {
        if self.expired {
            return;
        }
        let error = ApiError::new(
            "invalid_event",
            "Binary frames are not supported; send each event as a JSON text frame.",
            None,
        );
        self.send_error(out, error, None);
    }

    /// One client text frame.
    pub(super) fn on_text(&mut self, now: Instant, text: &str, out: &mut Vec<Output>) {
        if self.expired {
            return;
        }
        let event = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(event)) => event,
            Ok(_) => {
                let error = ApiError::new(
                    "invalid_json",
                    "Expected a JSON object with a 'type'.",
                    None,
                );
                self.send_error(out, error, None);
                return;
            }
            Err(err) => {
                let error = ApiError::new(
                    "invalid_json",
                    format!("The server could not parse the JSON body of your event: {err}"),
                    None,
                );
                self.send_error(out, error, None);
                return;
            }
        };
        let event_id = event
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let kind = match event.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            Some(other) => {
                let error = ApiError::invalid_type("type", "a string", other);
                self.send_error(out, error, event_id.as_deref());
                return;
            }
            None => {
                self.send_error(out, ApiError::missing("type"), event_id.as_deref());
                return;
            }
        };
        // Appends come 50 a second: counted, not kept (their audio is in `input`).
        if kind == "input_audio_buffer.append" {
            self.appends += 1;
            self.first_append_at.get_or_insert(now);
            tracing::trace!("input_audio_buffer.append");
            if let Err(error) = self.append(now, &event, out) {
                self.send_error(out, error, event_id.as_deref());
            }
            return;
        }
        tracing::debug!(kind = %kind, "client event");
        self.client_events.push(RecordedEvent {
            kind: kind.clone(),
            json: Value::Object(event.clone()),
            at: now,
        });
        let result = match kind.as_str() {
            "session.update" => self.session_update(&event, out),
            "input_audio_buffer.commit" => self.commit(now, out),
            "input_audio_buffer.clear" => {
                self.clear_buffer();
                self.emit(out, json!({"type": "input_audio_buffer.cleared"}));
                Ok(())
            }
            "conversation.item.create" => self.item_create(&event, out),
            "conversation.item.truncate" => self.item_truncate(now, &event, out),
            "conversation.item.delete" => self.item_delete(&event, out),
            "conversation.item.retrieve" => self.item_retrieve(&event, out),
            "response.create" => self.response_create(now, &event, out),
            "response.cancel" => self.response_cancel(now, &event, out),
            _ => Err(ApiError::not_one_of(
                "type",
                &Value::String(kind),
                CLIENT_EVENT_TYPES,
            )),
        };
        if let Err(error) = result {
            self.send_error(out, error, event_id.as_deref());
        }
    }

    fn emit(&self, out: &mut Vec<Output>, mut event: Value) {
        if let Value::Object(fields) = &mut event {
            fields.insert("event_id".into(), Value::String(new_id("event_", 21)));
        }
        out.push(Output::Event(event.to_string()));
    }

    fn send_error(
        &mut self,
        out: &mut Vec<Output>,
        error: ApiError,
        client_event_id: Option<&str>,
    ) {
        tracing::debug!(code = error.code, param = ?error.param, "error sent");
        self.errors_sent.push(error.code.to_owned());
        self.emit(
            out,
            json!({"type": "error", "error": {
                "type": "invalid_request_error",
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "event_id": client_event_id,
            }}),
        );
    }

    fn expire(&mut self, out: &mut Vec<Output>) {
        self.expired = true;
        let message = format!(
            "Your session hit the maximum duration of {}.",
            describe(self.settings.max_session)
        );
        tracing::info!(session = %self.id, "session expired");
        self.send_error(
            out,
            ApiError::new("session_expired", message.clone(), None),
            None,
        );
        out.push(Output::Close {
            code: 1001,
            reason: message,
        });
    }

    // ---- session.update ----

    fn session_update(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let update = match event.get("session") {
            Some(Value::Object(update)) => update,
            Some(other) => return Err(ApiError::invalid_type("session", "an object", other)),
            None => return Err(ApiError::missing("session")),
        };
        let merged = cfg::apply_update(&self.config, update)?;
        if merged.get("model") != self.config.get("model") {
            return Err(ApiError::invalid_value(
                "session.model",
                "The model of a session cannot be changed once the session has started.",
            ));
        }
        let effective = Effective::of(&merged);
        if self.audio_produced && effective.voice != self.effective.voice {
            return Err(ApiError::invalid_value(
                "session.audio.output.voice",
                "Cannot update a conversation's voice if assistant audio is present.",
            ));
        }
        if effective.input_format != self.effective.input_format {
            self.carry = None;
        }
        if effective.turn.is_none() {
            self.vad.reset();
            self.turn = None;
        }
        if effective.turn.and_then(|t| t.idle_timeout_ms).is_none() {
            self.idle_deadline = None;
        }
        self.config = merged;
        self.effective = effective;
        if let Some(probe) = &self.settings.probe {
            let instructions = self.config.get("instructions").and_then(Value::as_str);
            probe.configured(&self.id, instructions.unwrap_or_default());
        }
        self.emit(
            out,
            json!({"type": "session.updated", "session": self.config}),
        );
        if !self.configured {
            self.configured = true;
            out.push(Output::Configured);
        }
        Ok(())
    }

    // ---- input audio and VAD ----
}

#[cfg(test)]
mod tests;
