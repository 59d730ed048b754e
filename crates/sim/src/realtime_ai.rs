//! A local double of the OpenAI Realtime API: a WebSocket server speaking the GA protocol,
//! strict like the real service (spec §12) and cheap enough for hundreds of sessions at once.
//!
//! Layout: this file holds the public handle, the listener and one task per connection; the
//! protocol itself is the sans-IO `session::Session` (its input audio buffer and turns, its
//! conversation items and its responses each in a file of `session/`; config in
//! `session_config`, energy VAD in `vad`, audio formats in `pcm`), so its timing is testable
//! without a clock.
//!
//! Choices where the spec leaves room:
//! - `speech_stopped.audio_end_ms` is where the silence reached `silence_duration_ms` (the end of
//!   the committed audio, as the real API documents it); the echo stops at the end of the last
//!   speech window. `speech_started.audio_start_ms` never reaches back past the previous commit.
//! - Replies are immediate except audio (paced) and caller transcripts (500 ms after a commit,
//!   when `audio.input.transcription` is set); `rate_limits.updated` follows `response.done`.
//! - `semantic_vad` is the energy VAD with an end-of-turn silence of 250/500/1000 ms for
//!   `high`/`medium`+`auto`/`low` eagerness.
//! - The Azure preview path is accepted but speaks GA shapes.
//!
//! Responses come from [`AiMode`], or are function calls scripted per user turn
//! ([`ScriptedCall`]).
//!
//! Faults it can inject (§1.4, §10, §12.7), all switched by a test while sessions run:
//! - new connections refused ([`RealtimeAiDouble::refuse_connections`]): the upgrade answered
//!   with an HTTP status (429, 5xx, …), an OpenAI-shaped error body and optionally
//!   `Retry-After`, or the TCP connection reset before any upgrade ([`Refusal`]); live sessions
//!   go on, and [`RealtimeAiDouble::accept_connections`] ends it;
//! - live sessions ended ([`RealtimeAiDouble::close_all`]): an abrupt drop (1006 at the client)
//!   or a close frame with a given code (1011, 1012, 1013, …);
//! - failed responses ([`RealtimeAiDouble::fail_next_responses`]): `response.done` `failed` with
//!   a `server_error`;
//! - the session cap (`max_session`): `session_expired`, then close 1001.
//!
//! What it does not model: a delayed or withheld `session.updated`, duplicate or out-of-order
//! transcription events, a standalone `server_error` `error` event, the two halves of the session
//! cap separately, words that follow what was said (`AiMode::Speech` is one fixed recording), the
//! beta protocol beyond rejecting its handshake.

mod pcm;
mod session;
mod session_config;
mod vad;

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use session::{Output, Session};

/// How long a client may take to complete the upgrade before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close we initiate waits for the client's close reply; reading it (rather than
/// dropping the socket at once) keeps unread client data from turning the close into a reset.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (for example out of file descriptors) so the loop cannot spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Close requests queued per session; one is enough, extra ones are dropped (it is closing).
const CONTROL_CAPACITY: usize = 1;
/// §0: what a beta-shaped handshake gets before close 4000.
const BETA_MESSAGE: &str =
    "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.";

/// What the double says after each user turn (and on `response.create`).
#[derive(Debug, Clone)]
pub enum AiMode {
    /// After each user turn, speak back the caller's own audio of that turn (from speech start,
    /// including the prefix padding, to speech end), as output_audio deltas. A `response.create`
    /// echoes the latest turn, or says a 1 s 440 Hz tone when there has been none.
    Echo,
    /// After each user turn, speak a sine tone of `hz` for `duration`.
    Tone { hz: f32, duration: Duration },
    /// Every response (the greeting a `response.create` asks for, the answer to each user turn)
    /// speaks this recording (PCM16 24 kHz mono, e.g. espeak-ng speech), so what a receiver
    /// plays of the first response can be compared with the same words later in the call.
    Speech(Arc<[i16]>),
    /// Never respond: no response events at all, even for `response.create`.
    Silent,
}

#[derive(Debug, Clone)]
pub struct AiDoubleConfig {
    /// Accepted as `Authorization: Bearer <key>` or `api-key: <key>` (and, on the Azure preview
    /// path only, `?api-key=`). Default `test-key`.
    pub api_key: String,
    /// Default [`AiMode::Echo`].
    pub mode: AiMode,
    /// Audio is produced this many times faster than real time (default 4.0): a delta of
    /// `delta_ms` goes out every `delta_ms / production_speed`.
    pub production_speed: f32,
    /// Audio per `response.output_audio.delta` (default 100 ms).
    pub delta_ms: u32,
    /// `response.created` → first delta (default 50 ms).
    pub first_audio_latency: Duration,
    /// Energy VAD on 20 ms windows of 24 kHz PCM16: speech when RMS ≥ this (default 400.0) at
    /// the session's default `threshold` of 0.5. The session's `threshold` scales it linearly:
    /// effective RMS = `vad_threshold_rms × threshold / 0.5` (so 1.0 doubles it and 0 makes
    /// every window speech). `semantic_vad` has no threshold and uses this value as is.
    pub vad_threshold_rms: f64,
    /// Session cap (default 60 min); at expiry: error `session_expired`, then close 1001.
    pub max_session: Duration,
    /// Function calls to make instead of speaking, on given user turns (per session). Shared, so
    /// tests can add calls while sessions run ([`RealtimeAiDouble::add_scripted_call`]).
    pub script: Arc<parking_lot::Mutex<Vec<ScriptedCall>>>,
    /// The next this many responses (of any session) end `failed` with a `server_error` and no
    /// audio (§10.3); shared, so tests set it while sessions run
    /// ([`RealtimeAiDouble::fail_next_responses`]).
    pub failing_responses: Arc<std::sync::atomic::AtomicUsize>,
    /// What the caller's turns "said": the input transcription of VAD user turn N is
    /// `transcripts[(N-1) % len]` (empty: "(caller speech N)").
    pub transcripts: Vec<String>,
    /// Sees the audio going in and out of every session (default none).
    pub probe: Option<Arc<dyn AudioProbe>>,
}

/// Watches the audio of every session as it passes, for measurements (the load harness times
/// marker sounds with it). Called on the session's connection task with the session's lock held,
/// so implementations must be quick and must not call back into the double.
pub trait AudioProbe: Send + Sync + std::fmt::Debug {
    /// The session's `instructions` after each `session.updated`.
    fn configured(&self, session_id: &str, instructions: &str);
    /// Caller audio from one `input_audio_buffer.append`, decoded to 24 kHz, handled at `at`.
    fn audio_in(&self, session_id: &str, at: Instant, pcm: &[i16]);
    /// Audio of one `response.output_audio.delta`, emitted at `at`.
    fn audio_out(&self, session_id: &str, at: Instant, pcm: &[i16]);
}

/// On VAD user turn `on_user_turn` (1-based, per session), answer with a call of `name`.
#[derive(Debug, Clone)]
pub struct ScriptedCall {
    pub on_user_turn: usize,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// A function call the double made.
#[derive(Debug, Clone)]
pub struct FunctionCallRecord {
    pub call_id: String,
    pub name: String,
    pub arguments: String,
    pub response_id: String,
}

/// A `function_call_output` the client sent for one of the double's calls.
#[derive(Debug, Clone)]
pub struct FunctionOutput {
    pub call_id: String,
    pub name: String,
    pub output: String,
    pub at: Instant,
}

impl Default for AiDoubleConfig {
    fn default() -> Self {
        Self {
            api_key: "test-key".into(),
            mode: AiMode::Echo,
            production_speed: 4.0,
            delta_ms: 100,
            first_audio_latency: Duration::from_millis(50),
            vad_threshold_rms: 400.0,
            max_session: Duration::from_secs(60 * 60),
            script: Arc::default(),
            failing_responses: Arc::default(),
            transcripts: Vec::new(),
            probe: None,
        }
    }
}

/// How [`RealtimeAiDouble::close_all`] ends sessions.
#[derive(Debug, Clone, Copy)]
pub enum CloseKind {
    /// Drop the TCP connection without a close frame: the client sees 1006.
    Abrupt,
    /// A close frame with this code (e.g. 1011), then wait briefly for the client's reply.
    Code(u16),
}

/// How [`RealtimeAiDouble::refuse_connections`] turns new connections away (§1.4, §10.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Answer the upgrade with this HTTP status (4xx or 5xx) and an OpenAI-shaped JSON error
    /// body: 429 as `requests`/`rate_limit_exceeded`, 5xx as `server_error`/`server_error`, any
    /// other status as `invalid_request_error` with a null code. With `retry_after`, a
    /// `Retry-After` header in whole seconds, rounded up.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Accept the TCP connection and reset it at once, before reading the upgrade: the client
    /// sees an I/O error, as with a provider it cannot reach.
    Drop,
}

/// Everything the double saw and did in one session, for assertions.
#[derive(Debug, Clone)]
pub struct SessionSnapshot {
    /// Function calls made in this session, in order.
    pub function_calls: Vec<FunctionCallRecord>,
    /// Tool results the client sent back, in order.
    pub function_outputs: Vec<FunctionOutput>,
    /// `response.create`s refused because a response was still active (0 for a correct client).
    pub early_response_creates: u32,
    /// `sess_…`
    pub id: String,
    /// From `?model=` (or the Azure preview `deployment=`).
    pub model: Option<String>,
    /// The effective session config, as last sent in `session.created`/`session.updated`.
    pub config: serde_json::Value,
    /// Every client event received, in order, except `input_audio_buffer.append` (see `appends`).
    pub client_events: Vec<RecordedEvent>,
    /// `input_audio_buffer.append` events received (valid or not); they are counted, not kept,
    /// because a load test sends 50 a second per session.
    pub appends: u64,
    /// All appended audio, decoded to PCM16 24 kHz, in order (G.711 is upsampled ×3). Kept for
    /// the whole session: 48 kB per second of call.
    pub input_audio: Vec<i16>,
    /// Audio appended before `session.updated` was sent (0 for a correct client). Events are
    /// handled in order, so this is the audio that arrived before the first valid
    /// `session.update`; audio sent right after the update without waiting for the reply is
    /// applied with the new config and not counted.
    pub appended_before_configured_ms: u64,
    /// `audio_start_ms` of each `speech_started`.
    pub speech_starts: Vec<u64>,
    pub responses: Vec<ResponseRecord>,
    /// Every `conversation.item.truncate`, accepted or not.
    pub truncations: Vec<Truncation>,
    /// Codes of the `error` events sent.
    pub errors_sent: Vec<String>,
    /// The connection has ended.
    pub closed: bool,
    /// When the upgrade was accepted and the session created.
    pub opened_at: Instant,
    /// When the first `input_audio_buffer.append` (valid or not, as counted in `appends`) was
    /// handled: the session started taking caller audio.
    pub first_append_at: Option<Instant>,
    /// When the connection task ended (`closed` turned true).
    pub closed_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// The event's `type`.
    pub kind: String,
    pub json: serde_json::Value,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct ResponseRecord {
    pub id: String,
    /// The assistant item the response wrote.
    pub item_id: String,
    /// Audio sent in deltas so far (ms).
    pub produced_ms: u64,
    /// `in_progress`, `completed` or `cancelled`.
    pub status: String,
    pub created_at: Instant,
    pub first_delta_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Truncation {
    /// As sent (empty if missing).
    pub item_id: String,
    /// As sent (0 if missing or invalid).
    pub content_index: u32,
    /// As sent; a fractional value is recorded floored, a missing one as 0.
    pub audio_end_ms: u64,
    /// The item's audio when the truncate arrived (0 for an unknown item).
    pub produced_ms: u64,
    pub at: Instant,
    pub accepted: bool,
}

/// A running double. Cheap to clone; every clone controls the same server.
#[derive(Clone)]
pub struct RealtimeAiDouble {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RealtimeAiDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeAiDouble")
            .field("addr", &self.shared.addr)
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: Arc<AiDoubleConfig>,
    addr: SocketAddr,
    /// Every session ever opened, in order. Each session's state has its own lock, taken by
    /// its connection task per event, so sessions never contend with each other.
    sessions: Mutex<Vec<Entry>>,
    /// Sessions that have sent their first `session.updated`.
    configured: watch::Sender<usize>,
    /// Sessions whose connection task is still running.
    live: watch::Sender<usize>,
    /// Client text events handled so far, over all sessions (wakes `wait_until`).
    handled: watch::Sender<u64>,
    /// Sessions that have handled their first `input_audio_buffer.append`.
    with_audio: watch::Sender<usize>,
    /// How new connections are refused, while they are ([`RealtimeAiDouble::refuse_connections`]).
    /// Read once per connection, as it is accepted.
    refusal: Mutex<Option<Refusal>>,
    /// Connections refused so far.
    refused: watch::Sender<u64>,
    shutdown: CancellationToken,
}

struct Entry {
    session: Arc<Mutex<Session>>,
    control: mpsc::Sender<CloseKind>,
}

impl RealtimeAiDouble {
    /// Binds `127.0.0.1:0` and starts serving. Fails with `InvalidInput` on a nonsensical
    /// config (a production speed or `delta_ms` that is not positive, a negative threshold).
    pub async fn start(config: AiDoubleConfig) -> std::io::Result<RealtimeAiDouble> {
        Self::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Like [`RealtimeAiDouble::start`], on a given address (a bridge in another process was
    /// told where to find it).
    pub async fn start_on(
        config: AiDoubleConfig,
        addr: SocketAddr,
    ) -> std::io::Result<RealtimeAiDouble> {
        let valid = config.production_speed.is_finite()
            && config.production_speed > 0.0
            && config.delta_ms > 0
            && config.vad_threshold_rms.is_finite()
            && config.vad_threshold_rms >= 0.0;
        if !valid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "AiDoubleConfig: production_speed and delta_ms must be positive, vad_threshold_rms non-negative",
            ));
        }
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: Arc::new(config),
            addr,
            sessions: Mutex::new(Vec::new()),
            configured: watch::Sender::new(0),
            live: watch::Sender::new(0),
            handled: watch::Sender::new(0),
            with_audio: watch::Sender::new(0),
            refusal: Mutex::new(None),
            refused: watch::Sender::new(0),
            shutdown: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        info!(%addr, "realtime AI double listening");
        Ok(RealtimeAiDouble { shared })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime` (add `?model=…`).
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.shared.addr)
    }

    /// `http://127.0.0.1:PORT`: the client builds `/openai/v1/realtime?model=<deployment>` from it.
    pub fn azure_endpoint(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Every session ever opened, in order.
    pub fn sessions(&self) -> Vec<SessionSnapshot> {
        let sessions: Vec<_> = self
            .shared
            .sessions
            .lock()
            .iter()
            .map(|entry| entry.session.clone())
            .collect();
        sessions
            .iter()
            .map(|session| session.lock().snapshot())
            .collect()
    }

    /// Drops the record of every session that has ended, so a long run keeps the record
    /// bounded; returns how many were dropped. The counters (configured, with audio) stay.
    pub fn forget_closed_sessions(&self) -> usize {
        let mut sessions = self.shared.sessions.lock();
        let before = sessions.len();
        sessions.retain(|entry| !entry.session.lock().is_closed());
        before - sessions.len()
    }

    pub fn live_sessions(&self) -> usize {
        *self.shared.live.borrow()
    }

    /// Waits (with timeout) until at least `n` sessions have been opened and configured
    /// (`session.updated` sent).
    pub async fn wait_for_sessions(&self, n: usize, timeout: Duration) -> bool {
        let mut configured = self.shared.configured.subscribe();
        let reached = tokio::time::timeout(timeout, configured.wait_for(|count| *count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Sessions ever opened that have started taking caller audio (handled their first
    /// `input_audio_buffer.append`).
    pub fn sessions_with_audio(&self) -> usize {
        *self.shared.with_audio.borrow()
    }

    /// Waits (with timeout) until at least `n` sessions have started taking caller audio. Cheap
    /// next to [`RealtimeAiDouble::wait_until`], which snapshots every session (with all its
    /// audio) after each of the 50 appends a second of every call.
    pub async fn wait_for_sessions_with_audio(&self, n: usize, timeout: Duration) -> bool {
        let mut with_audio = self.shared.with_audio.subscribe();
        let reached = tokio::time::timeout(timeout, with_audio.wait_for(|count| *count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Waits (with timeout) until `condition` holds on the session snapshots, checking again
    /// after every client event the double handles.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&[SessionSnapshot]) -> bool,
    ) -> bool {
        let mut handled = self.shared.handled.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            handled.borrow_and_update();
            if condition(&self.sessions()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, handled.changed()).await {
                Ok(Ok(())) => {}
                _ => return condition(&self.sessions()),
            }
        }
    }

    /// Adds a scripted function call (seen by every session from its next user turn on).
    pub fn add_scripted_call(&self, call: ScriptedCall) {
        self.shared.config.script.lock().push(call);
    }

    /// The next `count` responses, of whichever sessions, end `failed` (a server error).
    pub fn fail_next_responses(&self, count: usize) {
        self.shared
            .config
            .failing_responses
            .store(count, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends every live session the given way (tests of "AI socket closed"). Returns how many
    /// it asked to close (a session already being closed is not counted again).
    pub fn close_all(&self, how: CloseKind) -> usize {
        let mut asked = 0;
        for entry in self.shared.sessions.lock().iter() {
            // Full means a close is already on its way.
            if !entry.session.lock().is_closed() && entry.control.try_send(how).is_ok() {
                asked += 1;
            }
        }
        asked
    }

    /// From now on, until [`RealtimeAiDouble::accept_connections`], every new connection is
    /// refused the given way (a provider rate-limiting, failing or unreachable); live sessions
    /// go on. A connection is judged as it is accepted.
    ///
    /// # Panics
    /// On a [`Refusal::Status`] that is not 4xx or 5xx: a bug in the test.
    pub fn refuse_connections(&self, refusal: Refusal) {
        if let Refusal::Status { status, .. } = refusal {
            assert!(
                (400..=599).contains(&status),
                "refuse_connections: {status} is not an error status"
            );
        }
        *self.shared.refusal.lock() = Some(refusal);
    }

    /// New connections are served again.
    pub fn accept_connections(&self) {
        *self.shared.refusal.lock() = None;
    }

    /// Connections refused so far (each attempt counts).
    pub fn refused_connections(&self) -> u64 {
        *self.shared.refused.borrow()
    }

    /// Waits (with timeout) until at least `n` connections have been refused.
    pub async fn wait_for_refusals(&self, n: u64, timeout: Duration) -> bool {
        let mut refused = self.shared.refused.subscribe();
        let reached = tokio::time::timeout(timeout, refused.wait_for(|count| *count >= n)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Stops accepting and closes every live session with 1001 (going away).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Waits (with timeout) until at most `n` sessions are live.
    #[cfg(test)]
    async fn wait_live_at_most(&self, n: usize, timeout: Duration) -> bool {
        let mut live = self.shared.live.subscribe();
        let reached = tokio::time::timeout(timeout, live.wait_for(|count| *count <= n)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                // Events are small and latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(shared.clone(), stream));
            }
            Err(error) => {
                warn!(%error, "realtime AI double: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    debug!("realtime AI double stopped accepting");
}

/// What an accepted upgrade asked for.
struct Target {
    model: String,
    beta: bool,
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let refusal = *shared.refusal.lock();
    let refusal = match refusal {
        None => None,
        Some(Refusal::Drop) => {
            // With a zero linger the close is a reset, whatever the client has sent by then.
            let _ = stream.set_zero_linger();
            drop(stream);
            debug!("realtime AI double: connection dropped (refusing connections)");
            shared.refused.send_modify(|count| *count += 1);
            return;
        }
        Some(Refusal::Status {
            status,
            retry_after,
        }) => Some(Rejection::refusal(status, retry_after)),
    };
    let mut target = None;
    let mut refused = false;
    let api_key = shared.config.api_key.as_str();
    let upgrade = Upgrade {
        api_key,
        refusal,
        target: &mut target,
        refused: &mut refused,
    };
    // A small read buffer: tungstenite zero-fills all of it before every read.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, upgrade, Some(config));
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await;
    if refused {
        // Counted once the refusal has been written (the handshake returns after it).
        shared.refused.send_modify(|count| *count += 1);
    }
    let ws = match outcome {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            debug!(%error, "realtime AI double: upgrade refused or failed");
            return;
        }
        Err(_) => {
            debug!("realtime AI double: upgrade timed out");
            return;
        }
    };
    let Some(target) = target else {
        return;
    };
    if target.beta {
        reject_beta(ws).await;
        return;
    }
    run_session(shared, ws, target.model).await;
}

/// Runs [`check_upgrade`] inside tungstenite's handshake and keeps what it accepted, or answers
/// with the refusal in force when the connection was accepted.
struct Upgrade<'a> {
    api_key: &'a str,
    refusal: Option<Rejection>,
    target: &'a mut Option<Target>,
    /// Set when the refusal was the answer.
    refused: &'a mut bool,
}

impl Callback for Upgrade<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        if let Some(refusal) = self.refusal {
            *self.refused = true;
            return Err(refusal.into_response());
        }
        match check_upgrade(request, self.api_key) {
            Ok(target) => {
                *self.target = Some(target);
                Ok(response)
            }
            Err(rejection) => Err(rejection.into_response()),
        }
    }
}

/// An HTTP refusal of the upgrade, with an OpenAI-shaped JSON body.
#[derive(Debug, PartialEq)]
struct Rejection {
    status: StatusCode,
    /// `error.type`.
    kind: &'static str,
    /// `error.code` (`None`: null).
    code: Option<&'static str>,
    message: &'static str,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

impl Rejection {
    /// The answer of a [`Refusal::Status`] (its status is 4xx or 5xx, checked when it was set).
    fn refusal(status: u16, retry_after: Option<Duration>) -> Rejection {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, code, message) = match status.as_u16() {
            429 => (
                "requests",
                Some("rate_limit_exceeded"),
                "Rate limit reached for requests. Please try again later.",
            ),
            500..=599 => (
                "server_error",
                Some("server_error"),
                "The server had an error while processing your request. Sorry about that!",
            ),
            _ => (
                "invalid_request_error",
                None,
                "The request was refused by the server.",
            ),
        };
        Rejection {
            status,
            kind,
            code,
            message,
            retry_after: retry_after.map(|d| d.as_nanos().div_ceil(1_000_000_000) as u64),
        }
    }

    fn into_response(self) -> ErrorResponse {
        let body = json!({"error": {"type": self.kind, "code": self.code,
                                    "message": self.message, "param": null}});
        let mut response = ErrorResponse::new(Some(body.to_string()));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(RETRY_AFTER, seconds.into());
        }
        response
    }
}

fn reject(status: StatusCode, code: &'static str, message: &'static str) -> Rejection {
    Rejection {
        status,
        kind: "invalid_request_error",
        code: Some(code),
        message,
        retry_after: None,
    }
}

/// The handshake checks of §1 and §12.1: path, key, model. Errors become the HTTP reply.
fn check_upgrade(request: &Request, api_key: &str) -> Result<Target, Rejection> {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let (model, key_in_query) = match request.uri().path() {
        "/v1/realtime" => (param("model"), None),
        "/openai/v1/realtime" => {
            if param("api-version").is_some() {
                // The Azure GA endpoint answers a leftover api-version with 401 (§1.3).
                return Err(reject(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request",
                    "api-version is not supported on the /openai/v1 endpoint.",
                ));
            }
            (param("model"), None)
        }
        "/openai/realtime" => {
            if param("api-version").is_none() {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "missing_required_parameter",
                    "Missing required parameter: 'api-version'.",
                ));
            }
            (param("deployment"), param("api-key"))
        }
        _ => return Err(reject(StatusCode::NOT_FOUND, "not_found", "Not found.")),
    };
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let bearer = header(AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "));
    let authorised = [bearer, header("api-key"), key_in_query]
        .into_iter()
        .flatten()
        .any(|key| key == api_key);
    if !authorised {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided.",
        ));
    }
    let Some(model) = model.filter(|m| !m.is_empty()) else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "missing_required_parameter",
            "Missing required parameter: 'model'.",
        ));
    };
    let beta = header("openai-beta").is_some_and(|v| v.contains("realtime=v1"));
    Ok(Target {
        model: model.to_owned(),
        beta,
    })
}

/// §0: the beta handshake is accepted only to be told it is gone, then closed with 4000.
async fn reject_beta<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    info!("realtime AI double: beta handshake rejected");
    let error = json!({"type": "error", "event_id": session::new_id("event_", 21),
        "error": {"type": "invalid_request_error", "code": "beta_api_shape_disabled",
                  "message": BETA_MESSAGE, "param": ""}});
    if ws.send(Message::text(error.to_string())).await.is_ok() {
        close_gracefully(&mut ws, 4000, BETA_MESSAGE).await;
    }
}

/// Marks the session closed and live count down on every exit path of its task.
struct LiveGuard {
    shared: Arc<Shared>,
    session: Arc<Mutex<Session>>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.session.lock().mark_closed(Instant::now());
        self.shared
            .live
            .send_modify(|live| *live = live.saturating_sub(1));
    }
}

async fn run_session<S>(shared: Arc<Shared>, ws: WebSocketStream<S>, model: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut pending = Vec::new();
    let session = Session::new(
        shared.config.clone(),
        Some(model.clone()),
        Instant::now(),
        unix_now,
        &mut pending,
    );
    let span = info_span!("ai_session", session = %session.id());
    let session = Arc::new(Mutex::new(session));
    let (control, control_rx) = mpsc::channel(CONTROL_CAPACITY);
    shared.sessions.lock().push(Entry {
        session: session.clone(),
        control,
    });
    shared.live.send_modify(|live| *live += 1);
    let guard = LiveGuard {
        shared: shared.clone(),
        session: session.clone(),
    };
    async move {
        info!(%model, "session opened");
        let ending = drive(&shared, &session, ws, control_rx, pending).await;
        info!(ending, "session closed");
        drop(guard);
    }
    .instrument(span)
    .await;
}

enum Step {
    Message(Option<Result<Message, WsError>>),
    Control(Option<CloseKind>),
    Tick,
    Shutdown,
}

/// The connection's one loop: client frames, close requests, shutdown and the session's next
/// deadline (one timer, re-armed only when the deadline moves). Returns how it ended.
async fn drive<S>(
    shared: &Shared,
    session: &Mutex<Session>,
    mut ws: WebSocketStream<S>,
    mut control: mpsc::Receiver<CloseKind>,
    mut pending: Vec<Output>,
) -> &'static str
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    loop {
        if !pending.is_empty() {
            match flush(shared, &mut ws, &mut pending).await {
                Ok(None) => {}
                Ok(Some((code, reason))) => {
                    close_gracefully(&mut ws, code, &reason).await;
                    return "closed by the double";
                }
                Err(_) => return "client gone",
            }
        }
        let deadline = session.lock().deadline();
        if deadline != armed {
            if let Some(deadline) = deadline {
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(deadline));
            }
            armed = deadline;
        }
        let step = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => Step::Shutdown,
            how = control.recv() => Step::Control(how),
            message = ws.next() => Step::Message(message),
            () = &mut timer, if armed.is_some() => Step::Tick,
        };
        match step {
            Step::Shutdown => {
                close_gracefully(&mut ws, 1001, "server shutting down").await;
                return "shutdown";
            }
            Step::Control(Some(CloseKind::Abrupt)) => return "dropped (abrupt)",
            Step::Control(Some(CloseKind::Code(code))) => {
                close_gracefully(&mut ws, code, "").await;
                return "closed by request";
            }
            Step::Control(None) => return "control channel gone",
            Step::Tick => session.lock().tick(Instant::now(), &mut pending),
            Step::Message(Some(Ok(Message::Text(text)))) => {
                let first_audio = {
                    let mut session = session.lock();
                    let had_audio = session.has_appended();
                    session.on_text(Instant::now(), text.as_str(), &mut pending);
                    !had_audio && session.has_appended()
                };
                if first_audio {
                    shared.with_audio.send_modify(|count| *count += 1);
                }
                shared.handled.send_modify(|count| *count += 1);
            }
            Step::Message(Some(Ok(Message::Binary(_)))) => session.lock().on_binary(&mut pending),
            Step::Message(Some(Ok(Message::Close(frame)))) => {
                debug!(?frame, "client closed");
                // Sends the close reply tungstenite queued.
                let _ = ws.flush().await;
                return "closed by client";
            }
            Step::Message(Some(Ok(_))) => {}
            Step::Message(Some(Err(error))) => {
                debug!(%error, "socket error");
                return "socket error";
            }
            Step::Message(None) => return "client gone",
        }
    }
}

/// Sends the queued outputs in order; returns the close they asked for, if any.
async fn flush<S>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
    pending: &mut Vec<Output>,
) -> Result<Option<(u16, String)>, WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut configured = false;
    let mut close = None;
    for output in pending.drain(..) {
        match output {
            Output::Event(text) if close.is_none() => ws.feed(Message::text(text)).await?,
            Output::Event(_) => {}
            Output::Close { code, reason } => close = close.or(Some((code, reason))),
            Output::Configured => configured = true,
        }
    }
    ws.flush().await?;
    // Counted only once session.updated is on the wire, so a waiter never races it.
    if configured {
        shared.configured.send_modify(|count| *count += 1);
    }
    Ok(close)
}

async fn close_gracefully<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests;
