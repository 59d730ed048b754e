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
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Self::Echo(range) => range.len(),
            Self::Tone { samples, .. } => *samples,
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
    closed: bool,
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
            closed: false,
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
        self.closed
    }

    pub(super) fn mark_closed(&mut self) {
        self.closed = true;
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
            closed: self.closed,
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

    fn append(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let audio = match event.get("audio") {
            Some(Value::String(audio)) => audio,
            Some(other) => return Err(ApiError::invalid_type("audio", "a string", other)),
            None => return Err(ApiError::missing("audio")),
        };
        let bytes = BASE64.decode(audio).map_err(|_| {
            ApiError::invalid_value(
                "audio",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
            )
        })?;
        if bytes.len() > MAX_APPEND_BYTES {
            return Err(ApiError::invalid_value(
                "audio",
                "Invalid 'audio': an append may carry at most 15 MiB of audio.",
            ));
        }
        let start = self.input.len();
        self.effective
            .input_format
            .decode_into(&bytes, &mut self.carry, &mut self.input);
        if !self.configured {
            self.appended_before_configured += self.input.len() - start;
        }
        if let Some(probe) = &self.settings.probe {
            probe.audio_in(&self.id, now, &self.input[start..]);
        }
        let params = self.effective.turn.map(|turn| VadParams {
            threshold_rms: self.settings.vad_threshold_rms * turn.threshold / THRESHOLD_REFERENCE,
            silence_duration_ms: turn.silence_duration_ms,
        });
        let mut events = std::mem::take(&mut self.vad_events);
        events.clear();
        self.vad.feed(&self.input[start..], params, &mut events);
        for event in events.drain(..) {
            match event {
                VadEvent::Started { onset_ms } => self.speech_started(now, onset_ms, out),
                VadEvent::Stopped {
                    speech_end_ms,
                    detected_ms,
                } => self.speech_stopped(now, speech_end_ms, detected_ms, out),
            }
        }
        self.vad_events = events;
        Ok(())
    }

    fn speech_started(&mut self, now: Instant, onset_ms: u64, out: &mut Vec<Output>) {
        let Some(turn) = self.effective.turn else {
            return;
        };
        // The padding cannot reach back past the start of the (uncommitted) buffer.
        let buffer_start_ms = self.buffer_start.div_ceil(SAMPLES_PER_MS) as u64;
        let audio_start_ms = onset_ms
            .saturating_sub(turn.prefix_padding_ms)
            .max(buffer_start_ms)
            .min(onset_ms);
        let item_id = item_id();
        self.speech_starts.push(audio_start_ms);
        self.idle_deadline = None;
        tracing::debug!(audio_start_ms, "speech started");
        self.emit(
            out,
            json!({"type": "input_audio_buffer.speech_started",
                   "audio_start_ms": audio_start_ms, "item_id": item_id}),
        );
        self.turn = Some(Turn {
            item_id,
            audio_start_ms,
        });
        if turn.interrupt_response
            && let Some(index) = self.active_default()
        {
            self.finish(now, index, Ending::Cancelled("turn_detected"), out);
        }
    }

    fn speech_stopped(
        &mut self,
        now: Instant,
        speech_end_ms: u64,
        detected_ms: u64,
        out: &mut Vec<Output>,
    ) {
        let (Some(config), Some(turn)) = (self.effective.turn, self.turn.take()) else {
            return;
        };
        tracing::debug!(audio_end_ms = detected_ms, "speech stopped");
        self.emit(
            out,
            json!({"type": "input_audio_buffer.speech_stopped",
                   "audio_end_ms": detected_ms, "item_id": turn.item_id}),
        );
        // start ≤ speech_end ≤ end ≤ input length, whatever the offsets say.
        let start = (turn.audio_start_ms as usize * SAMPLES_PER_MS)
            .max(self.buffer_start)
            .min(self.input.len());
        let end = (detected_ms as usize * SAMPLES_PER_MS)
            .min(self.input.len())
            .max(start);
        let speech_end = (speech_end_ms as usize * SAMPLES_PER_MS)
            .min(end)
            .max(start);
        self.user_turns += 1;
        self.commit_turn(now, turn.item_id, start..end, Some(start..speech_end), out);
        if config.create_response && self.active_default().is_none() {
            let scripted: Vec<ScriptedCall> = self
                .settings
                .script
                .lock()
                .iter()
                .filter(|call| call.on_user_turn == self.user_turns)
                .cloned()
                .collect();
            if scripted.is_empty() {
                self.start_response(now, Request::default(), out);
            } else {
                self.function_call_response(now, &scripted, out);
            }
        }
    }

    fn commit(&mut self, now: Instant, out: &mut Vec<Output>) -> Result<(), ApiError> {
        let buffered = self.input.len() - self.buffer_start;
        let buffered_ms = buffered as f64 / SAMPLES_PER_MS as f64;
        if buffered_ms < MIN_COMMIT_MS {
            return Err(ApiError::new(
                "input_audio_buffer_commit_empty",
                format!(
                    "Error committing input audio buffer: buffer too small. Expected at least \
                     100ms of audio, but buffer only has {buffered_ms:.2}ms of audio."
                ),
                None,
            ));
        }
        // A commit in the middle of a VAD turn takes the turn's pre-allocated item id.
        let item_id = self.turn.take().map_or_else(item_id, |turn| turn.item_id);
        self.vad.reset();
        let range = self.buffer_start..self.input.len();
        self.commit_turn(now, item_id, range.clone(), Some(range), out);
        Ok(())
    }

    fn clear_buffer(&mut self) {
        self.buffer_start = self.input.len();
        self.vad.reset();
        self.turn = None;
    }

    /// `committed`, then the user item (`added`, `done`); schedules its transcript if enabled.
    fn commit_turn(
        &mut self,
        now: Instant,
        item_id: String,
        audio: Range<usize>,
        echo: Option<Range<usize>>,
        out: &mut Vec<Output>,
    ) {
        let previous = self.last_item_id();
        self.emit(
            out,
            json!({"type": "input_audio_buffer.committed",
                   "item_id": item_id, "previous_item_id": previous}),
        );
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message",
                          "status": "completed", "role": "user",
                          "content": [{"type": "input_audio", "transcript": null}]});
        self.emit(
            out,
            json!({"type": "conversation.item.added", "previous_item_id": previous, "item": item}),
        );
        self.emit(
            out,
            json!({"type": "conversation.item.done", "previous_item_id": previous, "item": item}),
        );
        let ms = (audio.len() / SAMPLES_PER_MS) as u64;
        self.committed_ms += ms;
        self.buffer_start = self.buffer_start.max(audio.end);
        if self.effective.transcription {
            let turn = self.user_turns.max(1);
            let text = match self.settings.transcripts.len() {
                0 => format!("(caller speech {turn})"),
                n => self.settings.transcripts[(turn - 1) % n].clone(),
            };
            self.transcripts.push_back(PendingTranscript {
                due: now + TRANSCRIPTION_DELAY,
                item_id: item_id.clone(),
                seconds: ms as f64 / 1000.0,
                text,
            });
        }
        if echo.is_some() {
            self.last_turn = echo;
        }
        self.items.push(Item {
            id: item_id,
            json: item,
            role: Role::User,
            user_audio: Some(audio),
            assistant_samples: 0,
            has_audio: false,
        });
    }

    fn emit_transcript(&mut self, pending: PendingTranscript, out: &mut Vec<Output>) {
        self.emit(
            out,
            json!({"type": "conversation.item.input_audio_transcription.delta",
                   "item_id": pending.item_id, "content_index": 0, "delta": pending.text}),
        );
        self.emit(
            out,
            json!({"type": "conversation.item.input_audio_transcription.completed",
                   "item_id": pending.item_id, "content_index": 0, "transcript": pending.text,
                   "usage": {"type": "duration", "seconds": pending.seconds}}),
        );
        if let Some(item) = self
            .items
            .iter_mut()
            .find(|item| item.id == pending.item_id)
            && let Some(part) = item.json.pointer_mut("/content/0/transcript")
        {
            *part = json!(pending.text);
        }
    }

    /// `idle_timeout_ms` ran out after the assistant finished: commit the silence and respond.
    fn idle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.idle_deadline = None;
        if !self.effective.turn.is_some_and(|t| t.server_vad)
            || self.vad.in_speech()
            || self.active_default().is_some()
        {
            return;
        }
        let item_id = item_id();
        let range = self.buffer_start..self.input.len();
        self.emit(
            out,
            json!({"type": "input_audio_buffer.timeout_triggered",
                   "audio_start_ms": range.start / SAMPLES_PER_MS,
                   "audio_end_ms": range.end / SAMPLES_PER_MS, "item_id": item_id}),
        );
        self.vad.reset();
        self.commit_turn(now, item_id, range, None, out);
        self.start_response(now, Request::default(), out);
    }

    // ---- conversation items ----

    fn last_item_id(&self) -> Value {
        self.items
            .last()
            .map_or(Value::Null, |item| Value::String(item.id.clone()))
    }

    fn previous_of(&self, index: usize) -> Value {
        index
            .checked_sub(1)
            .and_then(|i| self.items.get(i))
            .map_or(Value::Null, |item| Value::String(item.id.clone()))
    }

    fn find_item(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|item| item.id == id)
    }

    fn required_item_id(event: &Map<String, Value>) -> Result<&str, ApiError> {
        match event.get("item_id") {
            Some(Value::String(id)) => Ok(id),
            Some(other) => Err(ApiError::invalid_type("item_id", "a string", other)),
            None => Err(ApiError::missing("item_id")),
        }
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::invalid_value("item_id", format!("Item with item_id not found: {id}"))
    }

    fn item_create(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let item = match event.get("item") {
            Some(Value::Object(item)) => item,
            Some(other) => return Err(ApiError::invalid_type("item", "an object", other)),
            None => return Err(ApiError::missing("item")),
        };
        let insert_at = match event.get("previous_item_id") {
            None | Some(Value::Null) => self.items.len(),
            Some(Value::String(id)) if id == "root" => 0,
            Some(Value::String(id)) => match self.find_item(id) {
                Some(index) => index + 1,
                None => {
                    return Err(ApiError::invalid_value(
                        "previous_item_id",
                        format!("Previous item with id '{id}' not found."),
                    ));
                }
            },
            Some(other) => {
                return Err(ApiError::invalid_type(
                    "previous_item_id",
                    "a string",
                    other,
                ));
            }
        };
        let id = match item.get("id") {
            None | Some(Value::Null) => item_id(),
            Some(Value::String(id)) if self.find_item(id).is_some() => {
                return Err(ApiError::invalid_value(
                    "item.id",
                    format!("Item with id '{id}' already exists."),
                ));
            }
            Some(Value::String(id)) => id.clone(),
            Some(other) => return Err(ApiError::invalid_type("item.id", "a string", other)),
        };
        let kind = item.get("type").unwrap_or(&Value::Null);
        let (role, mut reported, new_call_id) = match kind.as_str() {
            Some("message") => {
                check_item_keys(item, &["role", "content"])?;
                let (role, content) = validate_message(item)?;
                let mut reported = Map::new();
                reported.insert(
                    "role".into(),
                    item.get("role").cloned().unwrap_or(Value::Null),
                );
                reported.insert("content".into(), Value::Array(content));
                (role, reported, None)
            }
            Some("function_call") => {
                check_item_keys(item, &["call_id", "name", "arguments"])?;
                let call_id = match item.get("call_id") {
                    Some(Value::String(call_id)) => call_id.clone(),
                    Some(other) => {
                        return Err(ApiError::invalid_type("item.call_id", "a string", other));
                    }
                    None => return Err(ApiError::missing("item.call_id")),
                };
                let mut reported = Map::new();
                reported.insert("call_id".into(), Value::String(call_id.clone()));
                for key in ["name", "arguments"] {
                    match item.get(key) {
                        Some(value @ Value::String(_)) => {
                            reported.insert(key.into(), value.clone());
                        }
                        Some(other) => {
                            return Err(ApiError::invalid_type(
                                &format!("item.{key}"),
                                "a string",
                                other,
                            ));
                        }
                        None => return Err(ApiError::missing(&format!("item.{key}"))),
                    }
                }
                (Role::Tool, reported, Some(call_id))
            }
            Some("function_call_output") => {
                check_item_keys(item, &["call_id", "output"])?;
                let call_id = match item.get("call_id") {
                    Some(Value::String(call_id)) => call_id,
                    Some(other) => {
                        return Err(ApiError::invalid_type("item.call_id", "a string", other));
                    }
                    None => return Err(ApiError::missing("item.call_id")),
                };
                if !self.call_ids.contains(call_id) {
                    return Err(ApiError::invalid_value(
                        "item.call_id",
                        format!("Tool call ID '{call_id}' not found in conversation."),
                    ));
                }
                let output = match item.get("output") {
                    Some(output @ Value::String(_)) => output.clone(),
                    Some(other) => {
                        return Err(ApiError::invalid_type("item.output", "a string", other));
                    }
                    None => return Err(ApiError::missing("item.output")),
                };
                let mut reported = Map::new();
                reported.insert("call_id".into(), Value::String(call_id.clone()));
                reported.insert("output".into(), output.clone());
                let text = output.as_str().unwrap_or_default().to_owned();
                self.function_outputs.push(FunctionOutput {
                    call_id: call_id.clone(),
                    name: self.call_names.get(call_id).cloned().unwrap_or_default(),
                    output: text.clone(),
                    at: Instant::now(),
                });
                self.unspoken_outputs.push(text);
                (Role::Tool, reported, None)
            }
            _ => {
                return Err(ApiError::not_one_of(
                    "item.type",
                    kind,
                    &["message", "function_call", "function_call_output"],
                ));
            }
        };
        reported.insert("id".into(), Value::String(id.clone()));
        reported.insert("object".into(), json!("realtime.item"));
        reported.insert("type".into(), kind.clone());
        reported.insert("status".into(), json!("completed"));
        let reported = Value::Object(reported);
        if let Some(call_id) = new_call_id {
            self.call_ids.insert(call_id);
        }
        self.items.insert(
            insert_at,
            Item {
                id,
                json: reported.clone(),
                role,
                user_audio: None,
                assistant_samples: 0,
                has_audio: false,
            },
        );
        let previous = self.previous_of(insert_at);
        self.emit(
            out,
            json!({"type": "conversation.item.added", "previous_item_id": previous, "item": reported}),
        );
        self.emit(
            out,
            json!({"type": "conversation.item.done", "previous_item_id": previous, "item": reported}),
        );
        Ok(())
    }

    fn item_truncate(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let index = event
            .get("item_id")
            .and_then(Value::as_str)
            .and_then(|id| self.find_item(id));
        let produced_ms = index.map_or(0, |i| {
            (self.items[i].assistant_samples / SAMPLES_PER_MS) as u64
        });
        let audio_end = event.get("audio_end_ms");
        let mut record = Truncation {
            item_id: event
                .get("item_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            content_index: event
                .get("content_index")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
            audio_end_ms: audio_end
                .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
                .unwrap_or(0),
            produced_ms,
            at: now,
            accepted: false,
        };
        let result = self.check_truncate(event, index, produced_ms);
        record.accepted = result.is_ok();
        self.truncations.push(record);
        let (index, content_index, audio_end_ms) = result?;
        let item = &mut self.items[index];
        item.assistant_samples = audio_end_ms as usize * SAMPLES_PER_MS;
        // The server forgets the words the caller never heard (§7.2).
        if let Some(transcript) = item.json.pointer_mut("/content/0/transcript") {
            *transcript = Value::Null;
        }
        let item_id = item.id.clone();
        tracing::debug!(audio_end_ms, produced_ms, "item truncated");
        self.emit(
            out,
            json!({"type": "conversation.item.truncated", "item_id": item_id,
                   "content_index": content_index, "audio_end_ms": audio_end_ms}),
        );
        Ok(())
    }

    fn check_truncate(
        &self,
        event: &Map<String, Value>,
        index: Option<usize>,
        produced_ms: u64,
    ) -> Result<(usize, u64, u64), ApiError> {
        let item_id = Self::required_item_id(event)?;
        let content_index = match event.get("content_index") {
            Some(value) => value.as_u64().ok_or_else(|| {
                ApiError::invalid_type("content_index", "a non-negative integer", value)
            })?,
            None => return Err(ApiError::missing("content_index")),
        };
        let audio_end_ms = match event.get("audio_end_ms") {
            Some(value) if value.is_u64() => value.as_u64().unwrap_or(0),
            Some(value) if value.is_i64() => {
                return Err(ApiError::invalid_value(
                    "audio_end_ms",
                    "Invalid 'audio_end_ms': integer below minimum value. Expected a value >= 0.",
                ));
            }
            Some(value) => return Err(ApiError::invalid_type("audio_end_ms", "an integer", value)),
            None => return Err(ApiError::missing("audio_end_ms")),
        };
        let index = index.ok_or_else(|| Self::not_found(item_id))?;
        let item = &self.items[index];
        if item.role != Role::Assistant || !item.has_audio {
            return Err(ApiError::invalid_value(
                "item_id",
                "Only model output audio messages can be truncated",
            ));
        }
        if content_index != 0 {
            return Err(ApiError::invalid_value(
                "content_index",
                format!(
                    "Invalid 'content_index': item {item_id} has no content at index {content_index}."
                ),
            ));
        }
        if audio_end_ms > produced_ms {
            return Err(ApiError::invalid_value(
                "audio_end_ms",
                format!(
                    "Audio content of {produced_ms}ms is already shorter than {audio_end_ms}ms"
                ),
            ));
        }
        Ok((index, content_index, audio_end_ms))
    }

    fn item_delete(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let item_id = Self::required_item_id(event)?;
        let index = self
            .find_item(item_id)
            .ok_or_else(|| Self::not_found(item_id))?;
        let item = self.items.remove(index);
        self.emit(
            out,
            json!({"type": "conversation.item.deleted", "item_id": item.id}),
        );
        Ok(())
    }

    fn item_retrieve(
        &mut self,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let item_id = Self::required_item_id(event)?;
        let index = self
            .find_item(item_id)
            .ok_or_else(|| Self::not_found(item_id))?;
        let item = &self.items[index];
        let mut reported = item.json.clone();
        // Unlike every other event, retrieve includes the audio (§9).
        if let Some(range) = &item.user_audio
            && let Some(samples) = self.input.get(range.clone())
            && let Some(part) = reported.pointer_mut("/content/0")
            && let Value::Object(part) = part
        {
            let mut bytes = Vec::new();
            self.effective.input_format.encode(samples, &mut bytes);
            part.insert("audio".into(), Value::String(BASE64.encode(bytes)));
        }
        self.emit(
            out,
            json!({"type": "conversation.item.retrieved", "item": reported}),
        );
        Ok(())
    }

    // ---- responses ----

    /// The active response that writes to the default conversation (at most one).
    fn active_default(&self) -> Option<usize> {
        self.responses.iter().position(|r| r.in_conversation)
    }

    fn response_create(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let request = self.parse_request(event)?;
        if !request.out_of_band
            && let Some(index) = self.active_default()
        {
            self.early_response_creates += 1;
            return Err(ApiError::new(
                "conversation_already_has_active_response",
                format!(
                    "Conversation already has an active response in progress: {}. Wait until the \
                     response is finished before creating a new one.",
                    self.responses[index].id
                ),
                None,
            ));
        }
        if self.audio_produced
            && let Some(voice) = &request.voice
            && *voice != self.effective.voice
        {
            return Err(ApiError::invalid_value(
                "response.audio.output.voice",
                "Cannot update a conversation's voice if assistant audio is present.",
            ));
        }
        self.start_response(now, request, out);
        Ok(())
    }

    fn parse_request(&self, event: &Map<String, Value>) -> Result<Request, ApiError> {
        let params = match event.get("response") {
            None | Some(Value::Null) => return Ok(Request::default()),
            Some(Value::Object(params)) => params,
            Some(other) => return Err(ApiError::invalid_type("response", "an object", other)),
        };
        if let Some(key) = params
            .keys()
            .find(|key| !RESPONSE_KEYS.contains(&key.as_str()))
        {
            return Err(ApiError::unknown(&format!("response.{key}")));
        }
        let mut request = Request::default();
        if let Some(conversation) = params.get("conversation") {
            match conversation.as_str() {
                Some("auto") => {}
                Some("none") => request.out_of_band = true,
                _ => {
                    return Err(ApiError::not_one_of(
                        "response.conversation",
                        conversation,
                        &["auto", "none"],
                    ));
                }
            }
        }
        if let Some(instructions) = params.get("instructions") {
            match instructions {
                Value::String(text) => request.instructions = Some(text.clone()),
                other => {
                    return Err(ApiError::invalid_type(
                        "response.instructions",
                        "a string",
                        other,
                    ));
                }
            }
        }
        if let Some(modalities) = params.get("output_modalities") {
            cfg::validate_modalities("response.output_modalities", modalities)?;
            request.output_modalities = Some(modalities.clone());
        }
        if let Some(audio) = params.get("audio") {
            let Value::Object(audio) = audio else {
                return Err(ApiError::invalid_type("response.audio", "an object", audio));
            };
            if let Some(key) = audio.keys().find(|key| *key != "output") {
                return Err(ApiError::unknown(&format!("response.audio.{key}")));
            }
            if let Some(output) = audio.get("output") {
                let Value::Object(output) = output else {
                    return Err(ApiError::invalid_type(
                        "response.audio.output",
                        "an object",
                        output,
                    ));
                };
                if let Some(key) = output
                    .keys()
                    .find(|key| *key != "format" && *key != "voice")
                {
                    return Err(ApiError::unknown(&format!("response.audio.output.{key}")));
                }
                if let Some(format) = output.get("format") {
                    cfg::validate_format("response.audio.output.format", format)?;
                    request.format = Some(format.clone());
                }
                if let Some(voice) = output.get("voice") {
                    cfg::validate_voice("response.audio.output.voice", voice)?;
                    request.voice = Some(voice.clone());
                }
            }
        }
        if let Some(tokens) = params.get("max_output_tokens") {
            cfg::validate_max_output_tokens("response.max_output_tokens", tokens)?;
            request.max_output_tokens = Some(tokens.clone());
        }
        if let Some(tools) = params.get("tools") {
            cfg::validate_tools("response.tools", tools)?;
        }
        if let Some(choice) = params.get("tool_choice") {
            cfg::validate_tool_choice("response.tool_choice", choice)?;
        }
        if let Some(input) = params.get("input")
            && !input.is_array()
        {
            return Err(ApiError::invalid_type("response.input", "an array", input));
        }
        if let Some(prompt) = params.get("prompt")
            && !(prompt.is_null() || prompt.is_object())
        {
            return Err(ApiError::invalid_type(
                "response.prompt",
                "an object",
                prompt,
            ));
        }
        match params.get("metadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(pairs)) => {
                let valid = pairs.len() <= 16
                    && pairs
                        .iter()
                        .all(|(k, v)| k.len() <= 64 && v.as_str().is_some_and(|v| v.len() <= 512));
                if !valid {
                    return Err(ApiError::invalid_value(
                        "response.metadata",
                        "Invalid 'response.metadata': at most 16 string pairs (keys up to 64 characters, values up to 512).",
                    ));
                }
                request.metadata = params.get("metadata").cloned();
            }
            Some(other) => {
                return Err(ApiError::invalid_type(
                    "response.metadata",
                    "an object",
                    other,
                ));
            }
        }
        Ok(request)
    }

    /// A response made of function calls only (§8.1, §12.4), emitted at once.
    fn function_call_response(
        &mut self,
        now: Instant,
        calls: &[ScriptedCall],
        out: &mut Vec<Output>,
    ) {
        let response_id = new_id("resp_", 21);
        let mut output = Vec::new();
        self.emit(
            out,
            json!({"type": "response.created", "response": {
                "object": "realtime.response", "id": response_id, "status": "in_progress",
                "status_details": null, "output": [], "conversation_id": self.conversation_id,
                "output_modalities": ["audio"], "usage": null, "metadata": null}}),
        );
        for (index, call) in calls.iter().enumerate() {
            let item_id = item_id();
            let call_id = new_id("call_", 16);
            let arguments = call.arguments.to_string();
            let added = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
                               "status": "in_progress", "name": call.name, "call_id": call_id,
                               "arguments": ""});
            self.emit(
                out,
                json!({"type": "response.output_item.added", "response_id": response_id,
                       "output_index": index, "item": added}),
            );
            let previous = self.last_item_id();
            self.emit(
                out,
                json!({"type": "conversation.item.added", "previous_item_id": previous, "item": added}),
            );
            self.emit(
                out,
                json!({"type": "response.function_call_arguments.delta", "response_id": response_id,
                       "item_id": item_id, "output_index": index, "call_id": call_id,
                       "delta": arguments}),
            );
            self.emit(
                out,
                json!({"type": "response.function_call_arguments.done", "response_id": response_id,
                       "item_id": item_id, "output_index": index, "call_id": call_id,
                       "name": call.name, "arguments": arguments}),
            );
            let done = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
                              "status": "completed", "name": call.name, "call_id": call_id,
                              "arguments": arguments});
            self.emit(
                out,
                json!({"type": "response.output_item.done", "response_id": response_id,
                       "output_index": index, "item": done}),
            );
            self.emit(
                out,
                json!({"type": "conversation.item.done", "previous_item_id": previous, "item": done}),
            );
            self.items.push(Item {
                id: item_id.clone(),
                json: done.clone(),
                role: Role::Tool,
                user_audio: None,
                assistant_samples: 0,
                has_audio: false,
            });
            self.call_ids.insert(call_id.clone());
            self.call_names.insert(call_id.clone(), call.name.clone());
            self.function_calls.push(FunctionCallRecord {
                call_id,
                name: call.name.clone(),
                arguments,
                response_id: response_id.clone(),
            });
            output.push(done);
        }
        self.records.push(ResponseRecord {
            id: response_id.clone(),
            item_id: String::new(),
            produced_ms: 0,
            status: "completed".into(),
            created_at: now,
            first_delta_at: None,
        });
        self.emit(
            out,
            json!({"type": "response.done", "response": {
                "object": "realtime.response", "id": response_id, "status": "completed",
                "status_details": null, "output": output, "conversation_id": self.conversation_id,
                "output_modalities": ["audio"], "metadata": null,
                "usage": {"total_tokens": 40, "input_tokens": 30, "output_tokens": 10}}}),
        );
    }

    fn start_response(&mut self, now: Instant, request: Request, out: &mut Vec<Output>) {
        let (source, label) = match &self.settings.mode {
            AiMode::Silent => return,
            AiMode::Echo => match &self.last_turn {
                Some(range) => (Source::Echo(range.clone()), "(echo)"),
                None => (tone(FALLBACK_TONE_HZ, FALLBACK_TONE), "(tone)"),
            },
            AiMode::Tone { hz, duration } => (tone(*hz, *duration), "(tone)"),
        };
        // After tool results, the answer "speaks" them: a short tone whose transcript carries
        // the outputs verbatim.
        let unspoken: Vec<String> = self.unspoken_outputs.drain(..).collect();
        let (source, label, label_once) = if unspoken.is_empty() {
            (source, label.to_owned(), false)
        } else {
            (
                tone(FALLBACK_TONE_HZ, TOOL_ANSWER_TONE),
                format!("Result: {}", unspoken.join(" ")),
                true,
            )
        };
        let output_modalities = request.output_modalities.unwrap_or_else(|| {
            self.config
                .get("output_modalities")
                .cloned()
                .unwrap_or(json!(["audio"]))
        });
        let text_only = output_modalities.get(0).and_then(Value::as_str) == Some("text");
        let format_json = request
            .format
            .unwrap_or_else(|| self.effective.output_format_json.clone());
        let instructions_chars = request.instructions.as_deref().map_or_else(
            || {
                self.config
                    .get("instructions")
                    .and_then(Value::as_str)
                    .map_or(0, str::len)
            },
            str::len,
        );
        let delta_ms = self.settings.delta_ms.max(1);
        let active = Active {
            id: new_id("resp_", 21),
            item_id: item_id(),
            record: self.records.len(),
            in_conversation: !request.out_of_band,
            text_only,
            format: AudioFormat::from_config(Some(&format_json)),
            format_json,
            voice: request
                .voice
                .unwrap_or_else(|| self.effective.voice.clone()),
            output_modalities,
            max_output_tokens: request.max_output_tokens.unwrap_or_else(|| {
                self.config
                    .get("max_output_tokens")
                    .cloned()
                    .unwrap_or(json!("inf"))
            }),
            metadata: request.metadata.unwrap_or(Value::Null),
            instructions_chars,
            source,
            label,
            label_once,
            emitted: 0,
            chunks_sent: 0,
            first_at: now + self.settings.first_audio_latency,
            interval: Duration::from_secs_f64(
                f64::from(delta_ms) / 1000.0 / f64::from(self.settings.production_speed),
            ),
            transcript: String::new(),
        };
        tracing::debug!(response = %active.id, out_of_band = request.out_of_band, "response created");
        self.records.push(ResponseRecord {
            id: active.id.clone(),
            item_id: active.item_id.clone(),
            produced_ms: 0,
            status: "in_progress".into(),
            created_at: now,
            first_delta_at: None,
        });
        self.idle_deadline = None;
        let response = self.response_json(&active, "in_progress", Value::Null, vec![], Value::Null);
        self.emit(
            out,
            json!({"type": "response.created", "response": response}),
        );
        let item = json!({"id": active.item_id, "object": "realtime.item", "type": "message",
                          "status": "in_progress", "role": "assistant", "content": []});
        self.emit(
            out,
            json!({"type": "response.output_item.added", "response_id": active.id,
                   "output_index": 0, "item": item}),
        );
        if active.in_conversation {
            let previous = self.last_item_id();
            self.items.push(Item {
                id: active.item_id.clone(),
                json: item.clone(),
                role: Role::Assistant,
                user_audio: None,
                assistant_samples: 0,
                has_audio: false,
            });
            self.emit(
                out,
                json!({"type": "conversation.item.added", "previous_item_id": previous, "item": item}),
            );
        }
        let part = if text_only {
            json!({"type": "text", "text": ""})
        } else {
            json!({"type": "audio", "transcript": ""})
        };
        self.emit(
            out,
            json!({"type": "response.content_part.added", "response_id": active.id,
                   "item_id": active.item_id, "output_index": 0, "content_index": 0, "part": part}),
        );
        self.responses.push(active);
    }

    /// Sends the next due delta of response `index`, and ends it when its audio is out.
    fn step(&mut self, now: Instant, index: usize, out: &mut Vec<Output>) {
        let chunk = self.settings.delta_ms.max(1) as usize * SAMPLES_PER_MS;
        let response = &self.responses[index];
        let total = response.source.len();
        if response.text_only || response.emitted >= total {
            if response.text_only {
                let label = response.label.clone();
                let ids = json!({"type": "response.output_text.delta", "response_id": response.id,
                                 "item_id": response.item_id, "output_index": 0, "content_index": 0,
                                 "delta": label});
                self.emit(out, ids);
                self.responses[index].transcript.push_str(&label);
            }
            self.finish(now, index, Ending::Completed, out);
            return;
        }
        let start = response.emitted;
        let end = (start + chunk).min(total);
        let mut bytes = Vec::with_capacity((end - start) * 2);
        let probe = self.settings.probe.as_deref();
        match &response.source {
            Source::Echo(range) => {
                let from = range.start + start;
                let samples = self.input.get(from..range.start + end).unwrap_or(&[]);
                response.format.encode(samples, &mut bytes);
                if let Some(probe) = probe {
                    probe.audio_out(&self.id, now, samples);
                }
            }
            Source::Tone { hz, .. } => {
                let samples: Vec<i16> = (start..end).map(|i| tone_sample(*hz, i)).collect();
                response.format.encode(&samples, &mut bytes);
                if let Some(probe) = probe {
                    probe.audio_out(&self.id, now, &samples);
                }
            }
        }
        let text = if response.chunks_sent == 0 {
            response.label.clone()
        } else if response.label_once {
            String::new()
        } else {
            format!(" {}", response.label)
        };
        self.emit(
            out,
            json!({"type": "response.output_audio.delta", "response_id": response.id,
                   "item_id": response.item_id, "output_index": 0, "content_index": 0,
                   "delta": BASE64.encode(&bytes)}),
        );
        self.emit(
            out,
            json!({"type": "response.output_audio_transcript.delta", "response_id": response.id,
                   "item_id": response.item_id, "output_index": 0, "content_index": 0,
                   "delta": text}),
        );
        tracing::trace!(response = %response.id, samples = end - start, "audio delta");
        let in_conversation = response.in_conversation;
        let item_id = response.item_id.clone();
        let record = response.record;
        let response = &mut self.responses[index];
        response.emitted = end;
        response.chunks_sent += 1;
        response.transcript.push_str(&text);
        self.audio_produced = true;
        if let Some(record) = self.records.get_mut(record) {
            record.produced_ms = (end / SAMPLES_PER_MS) as u64;
            record.first_delta_at.get_or_insert(now);
        }
        if in_conversation && let Some(item) = self.items.iter_mut().find(|item| item.id == item_id)
        {
            item.assistant_samples += end - start;
            item.has_audio = true;
        }
        if end >= total {
            self.finish(now, index, Ending::Completed, out);
        }
    }

    /// Closes the open part and item and sends `response.done` (then `rate_limits.updated`).
    fn finish(&mut self, now: Instant, index: usize, ending: Ending, out: &mut Vec<Output>) {
        let response = self.responses.remove(index);
        let ids = |kind: &str| {
            json!({"type": kind, "response_id": response.id, "item_id": response.item_id,
                   "output_index": 0, "content_index": 0})
        };
        let content = if response.text_only {
            let mut done = ids("response.output_text.done");
            done["text"] = json!(response.transcript);
            self.emit(out, done);
            let mut part = ids("response.content_part.done");
            part["part"] = json!({"type": "text", "text": response.transcript});
            self.emit(out, part);
            json!([{"type": "output_text", "text": response.transcript}])
        } else {
            self.emit(out, ids("response.output_audio.done"));
            let mut done = ids("response.output_audio_transcript.done");
            done["transcript"] = json!(response.transcript);
            self.emit(out, done);
            let mut part = ids("response.content_part.done");
            part["part"] = json!({"type": "audio", "transcript": response.transcript});
            self.emit(out, part);
            json!([{"type": "output_audio", "transcript": response.transcript}])
        };
        let (status, item_status, details) = match ending {
            Ending::Completed => ("completed", "completed", Value::Null),
            Ending::Cancelled(reason) => (
                "cancelled",
                "incomplete",
                json!({"type": "cancelled", "reason": reason}),
            ),
        };
        let item = json!({"id": response.item_id, "object": "realtime.item", "type": "message",
                          "status": item_status, "role": "assistant", "content": content});
        self.emit(
            out,
            json!({"type": "response.output_item.done", "response_id": response.id,
                   "output_index": 0, "item": item}),
        );
        if response.in_conversation
            && let Some(position) = self.find_item(&response.item_id)
        {
            self.items[position].json = item.clone();
            let previous = self.previous_of(position);
            self.emit(
                out,
                json!({"type": "conversation.item.done", "previous_item_id": previous, "item": item}),
            );
        }
        let usage = self.usage(&response);
        let total_tokens = usage["total_tokens"].as_u64().unwrap_or(0);
        let body = self.response_json(&response, status, details, vec![item], usage);
        self.emit(out, json!({"type": "response.done", "response": body}));
        self.emit(
            out,
            json!({"type": "rate_limits.updated", "rate_limits": [
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 40000, "remaining": 40000u64.saturating_sub(total_tokens),
                 "reset_seconds": 0.5},
            ]}),
        );
        let produced_ms = (response.emitted / SAMPLES_PER_MS) as u64;
        if let Some(record) = self.records.get_mut(response.record) {
            record.status = status.into();
            record.produced_ms = produced_ms;
        }
        tracing::debug!(response = %response.id, status, produced_ms, "response done");
        // The idle timer starts when the assistant's audio would have finished playing (§4.2),
        // unless the caller is already talking (a barge-in).
        if response.in_conversation
            && self.turn.is_none()
            && let Some(idle_ms) = self.effective.turn.and_then(|t| t.idle_timeout_ms)
        {
            self.idle_deadline = Some(now + Duration::from_millis(produced_ms + idle_ms));
        }
    }

    fn response_json(
        &self,
        response: &Active,
        status: &str,
        details: Value,
        output: Vec<Value>,
        usage: Value,
    ) -> Value {
        json!({
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": if response.in_conversation {
                Value::String(self.conversation_id.clone())
            } else {
                Value::Null
            },
            "output_modalities": response.output_modalities,
            "max_output_tokens": response.max_output_tokens,
            "audio": {"output": {"format": response.format_json, "voice": response.voice}},
            "usage": usage,
            "metadata": response.metadata,
        })
    }

    /// Plausible token counts: audio at 10 tokens/s in and 20 tokens/s out, text at 4 chars a token.
    fn usage(&self, response: &Active) -> Value {
        let input_audio = self.committed_ms / 100;
        let input_text = (response.instructions_chars / 4 + self.items.len() * 8) as u64 + 4;
        let output_audio = (response.emitted / SAMPLES_PER_MS / 50) as u64;
        let output_text = response.transcript.len().div_ceil(4) as u64;
        let input = input_audio + input_text;
        let output = output_audio + output_text;
        json!({
            "total_tokens": input + output,
            "input_tokens": input,
            "output_tokens": output,
            "input_token_details": {
                "text_tokens": input_text, "audio_tokens": input_audio, "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
        })
    }

    fn response_cancel(
        &mut self,
        now: Instant,
        event: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), ApiError> {
        let index = match event.get("response_id") {
            None | Some(Value::Null) => self.active_default(),
            Some(Value::String(id)) => self.responses.iter().position(|r| r.id == *id),
            Some(other) => return Err(ApiError::invalid_type("response_id", "a string", other)),
        };
        let index = index.ok_or_else(|| {
            ApiError::new(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                None,
            )
        })?;
        self.finish(now, index, Ending::Cancelled("client_cancelled"), out);
        Ok(())
    }
}

fn tone(hz: f32, duration: Duration) -> Source {
    let samples = (duration.as_secs_f64() * 1000.0 * SAMPLES_PER_MS as f64).round() as usize;
    Source::Tone { hz, samples }
}

/// "60 minutes", "90 seconds", "250 milliseconds": the session cap as the expiry message says it.
fn describe(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(60_000) {
        let minutes = ms / 60_000;
        format!("{minutes} minute{}", if minutes == 1 { "" } else { "s" })
    } else if ms.is_multiple_of(1000) {
        format!("{} seconds", ms / 1000)
    } else {
        format!("{ms} milliseconds")
    }
}

fn check_item_keys(item: &Map<String, Value>, specific: &[&str]) -> Result<(), ApiError> {
    const COMMON: &[&str] = &["id", "type", "object", "status"];
    match item
        .keys()
        .find(|key| !COMMON.contains(&key.as_str()) && !specific.contains(&key.as_str()))
    {
        Some(key) => Err(ApiError::unknown(&format!("item.{key}"))),
        None => Ok(()),
    }
}

/// Checks a message item's role and content (§9) and returns the content as it is reported
/// (input audio bytes are never echoed).
fn validate_message(item: &Map<String, Value>) -> Result<(Role, Vec<Value>), ApiError> {
    let role_value = item
        .get("role")
        .ok_or_else(|| ApiError::missing("item.role"))?;
    let role = match role_value.as_str() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("system") => Role::System,
        _ => {
            return Err(ApiError::not_one_of(
                "item.role",
                role_value,
                &["user", "assistant", "system"],
            ));
        }
    };
    let parts = match item.get("content") {
        Some(Value::Array(parts)) if !parts.is_empty() => parts,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid_value(
                "item.content",
                "Invalid 'item.content': empty array.",
            ));
        }
        Some(other) => return Err(ApiError::invalid_type("item.content", "an array", other)),
        None => return Err(ApiError::missing("item.content")),
    };
    let allowed: &[&str] = match role {
        Role::User => &["input_text", "input_audio", "input_image"],
        Role::System => &["input_text"],
        _ => &["output_text"],
    };
    let mut reported = Vec::with_capacity(parts.len());
    for (index, part) in parts.iter().enumerate() {
        let path = format!("item.content[{index}]");
        let Value::Object(fields) = part else {
            return Err(ApiError::invalid_type(&path, "an object", part));
        };
        let kind = fields.get("type").unwrap_or(&Value::Null);
        let kind_str = kind.as_str().unwrap_or_default();
        if role == Role::Assistant && matches!(kind_str, "output_audio" | "audio") {
            return Err(ApiError::invalid_value(
                &format!("{path}.type"),
                "Assistant audio content cannot be created; use 'output_text'.",
            ));
        }
        if !allowed.contains(&kind_str) {
            return Err(ApiError::not_one_of(&format!("{path}.type"), kind, allowed));
        }
        let (required, optional): (&str, &[&str]) = match kind_str {
            "input_audio" => ("audio", &["transcript"]),
            "input_image" => ("image_url", &["detail"]),
            _ => ("text", &[]),
        };
        if let Some(key) = fields
            .keys()
            .find(|key| *key != "type" && *key != required && !optional.contains(&key.as_str()))
        {
            return Err(ApiError::unknown(&format!("{path}.{key}")));
        }
        let value = match fields.get(required) {
            Some(Value::String(value)) => value,
            Some(other) => {
                return Err(ApiError::invalid_type(
                    &format!("{path}.{required}"),
                    "a string",
                    other,
                ));
            }
            None => return Err(ApiError::missing(&format!("{path}.{required}"))),
        };
        if kind_str == "input_audio" {
            BASE64.decode(value).map_err(|_| {
                ApiError::invalid_value(
                    &format!("{path}.audio"),
                    "Invalid 'audio'. Expected base64-encoded audio bytes.",
                )
            })?;
            let transcript = fields.get("transcript").cloned().unwrap_or(Value::Null);
            reported.push(json!({"type": "input_audio", "transcript": transcript}));
        } else {
            reported.push(part.clone());
        }
    }
    Ok((role, reported))
}

#[cfg(test)]
mod tests {
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
            .map(|i| {
                (amplitude * (std::f64::consts::TAU * 1000.0 * i as f64 / 24_000.0).sin()) as i16
            })
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
            let td =
                json!({"type": "server_vad", "threshold": threshold, "create_response": false});
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
        let td =
            json!({"type": "server_vad", "create_response": false, "silence_duration_ms": 200});
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
}
