//! One Realtime API (GA) WebSocket session per phone call: connect, configure, stream audio, read events.
//!
//! The session is owned by the call task, which drives it from one `tokio::select!` loop:
//! [`RealtimeSession::next_event`] is cancellation-safe, and sends happen in the loop body, so the
//! order of appends, cancels and truncates is the order the call decides (spec §13).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt as _, StreamExt as _};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, trace, warn};
use url::Url;

use super::events::{self, ServerEvent, SessionSettings};
use crate::ids::LogSafe;

/// OpenAI's GA endpoint; `?model=` is added from the configuration.
pub const DEFAULT_OPENAI_URL: &str = "wss://api.openai.com/v1/realtime";
/// Bound on the whole of [`RealtimeSession::connect`] unless configured otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RealtimeSession::close`] waits for the server to acknowledge, and how long a close
/// reply may take to flush; a stuck peer must not hold up the end of a call.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Largest server message accepted. Realtime events are kilobytes; the library default (64 MiB)
/// would let one misbehaving peer pin that much memory in each of a hundred calls.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// tungstenite zero-fills its whole read buffer before every socket read (128 KiB by default,
/// which the load profile showed as 5 % of the bridge's CPU) and keeps it for the session's
/// life. Audio deltas are a few kB, so 8 KiB reads most in one go; a bigger event takes a few.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// How much of an HTTP error body a handshake error keeps.
const MAX_ERROR_BODY_CHARS: usize = 512;
/// Close code for "the connection ended without a close frame" (RFC 6455 §7.1.5); never sent.
const ABNORMAL_CLOSE: u16 = 1006;
/// Close code for "a close frame without a status" (RFC 6455 §7.1.5); never sent.
const NO_STATUS_CLOSE: u16 = 1005;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the Realtime API lives and how to authenticate. `Debug` redacts the key.
#[derive(Clone, Debug)]
pub enum Provider {
    /// `url` is normally [`DEFAULT_OPENAI_URL`]; `ws://` works for local doubles.
    OpenAi {
        url: String,
        model: String,
        api_key: SecretString,
    },
    /// GA endpoint: {endpoint}/openai/v1/realtime?model=<deployment>, `api-key` header, no api-version.
    Azure {
        endpoint: String,
        deployment: String,
        api_key: SecretString,
    },
}

impl Provider {
    /// For logs and metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::OpenAi { .. } => "openai",
            Self::Azure { .. } => "azure",
        }
    }

    fn api_key(&self) -> &SecretString {
        match self {
            Self::OpenAi { api_key, .. } | Self::Azure { api_key, .. } => api_key,
        }
    }

    /// The WebSocket URL to upgrade (spec §1.1, §1.3). `https`/`http` are accepted for
    /// convenience, since Azure shows endpoints that way, and become `wss`/`ws`.
    fn url(&self) -> Result<Url, RealtimeError> {
        match self {
            Self::OpenAi { url, model, .. } => {
                let mut url = websocket_url(url)?;
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(name, _)| name != "model")
                    .map(|(name, value)| (name.into_owned(), value.into_owned()))
                    .collect();
                url.query_pairs_mut()
                    .clear()
                    .extend_pairs(kept)
                    .append_pair("model", model);
                Ok(url)
            }
            Self::Azure {
                endpoint,
                deployment,
                ..
            } => {
                let mut url = websocket_url(endpoint)?;
                let path = format!("{}/openai/v1/realtime", url.path().trim_end_matches('/'));
                url.set_path(&path);
                // The GA endpoint refuses `api-version` (401), so nothing from the endpoint's
                // query is carried over.
                url.set_query(None);
                url.query_pairs_mut().append_pair("model", deployment);
                Ok(url)
            }
        }
    }
}

fn websocket_url(raw: &str) -> Result<Url, RealtimeError> {
    let invalid = |message: String| RealtimeError::Handshake {
        status: None,
        message,
        retry_after: None,
    };
    let mut url =
        Url::parse(raw.trim()).map_err(|e| invalid(format!("invalid realtime URL: {e}")))?;
    let scheme = match url.scheme() {
        "wss" | "https" => "wss",
        "ws" | "http" => "ws",
        other => {
            return Err(invalid(format!(
                "realtime URL scheme must be wss, ws, https or http, not {other}"
            )));
        }
    };
    url.set_scheme(scheme)
        .map_err(|()| invalid(format!("cannot use scheme {scheme} for the realtime URL")))?;
    url.set_fragment(None);
    Ok(url)
}

/// Everything needed to open one session.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    pub provider: Provider,
    /// Shared: every call (and every clone of the app state) reads the same settings.
    pub session: Arc<SessionSettings>,
    /// Bounds the upgrade, `session.created` and `session.updated` together.
    pub connect_timeout: Duration,
}

impl RealtimeConfig {
    /// Default session settings and [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(provider: Provider) -> Self {
        Self {
            provider,
            session: Arc::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// Characters of the AI provider's own text (an error page, a close reason, an `error` event's
/// message) kept when it is shown: it reaches logs and `/health`, escaped ([`LogSafe`]).
pub const AI_TEXT_CHARS: usize = 300;

/// Why a session could not be opened or went away. The provider's text in it is displayed
/// escaped and cut short.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// The upgrade was refused (`status` is the HTTP status) or could not be attempted (bad URL,
    /// bad key characters, TLS failure).
    #[error("realtime handshake failed{}: {}", status.map(|s| format!(" with HTTP {s}")).unwrap_or_default(), LogSafe::truncated(message, AI_TEXT_CHARS))]
    Handshake {
        status: Option<u16>,
        message: String,
        /// The refusal's `Retry-After` (a 429 or 503 says when to come back).
        retry_after: Option<Duration>,
    },
    /// The named step did not finish within `connect_timeout`.
    #[error("realtime API timed out waiting for {0}")]
    Timeout(&'static str),
    /// The WebSocket closed. `code` 1006 means it ended without a close frame, 1005 that the
    /// close frame had no status.
    #[error("realtime session closed{}: {}", code.map(|c| format!(" with code {c}")).unwrap_or_default(), LogSafe::truncated(reason, AI_TEXT_CHARS))]
    Closed { code: Option<u16>, reason: String },
    /// The server answered the configuration with an `error` event.
    #[error("realtime server error {}: {}", LogSafe::new(code.as_deref().unwrap_or("(no code)")), LogSafe::truncated(message, AI_TEXT_CHARS))]
    Server {
        code: Option<String>,
        message: String,
    },
    /// The server broke the WebSocket protocol (oversized or malformed frames).
    #[error("realtime protocol error: {0}")]
    Protocol(String),
    /// The connection could not be made or written to.
    #[error("realtime connection I/O error: {0}")]
    Io(String),
}

impl RealtimeError {
    /// §10.4 / §1.4: whether a new session could help (1001/1006/1011/1012/1013, io) or not (4xx, 4000, 1008)
    ///
    /// Also retryable: 1005 and 1015 closes, HTTP 429 and 5xx at upgrade, timeouts, and the
    /// `session_expired` and `server_error` codes. Not retryable: 1000 (a deliberate close),
    /// configuration and protocol errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Handshake { status, .. } => status.is_some_and(|s| s == 429 || s >= 500),
            Self::Timeout(_) | Self::Io(_) => true,
            Self::Closed { code, .. } => matches!(
                code,
                None | Some(1001 | 1005 | 1006 | 1011 | 1012 | 1013 | 1015)
            ),
            Self::Server { code, .. } => {
                matches!(code.as_deref(), Some("session_expired" | "server_error"))
            }
            Self::Protocol(_) => false,
        }
    }
}

/// Reusable buffers for `input_audio_buffer.append`, so steady-state audio does not allocate.
///
/// `json` is rebuilt for each frame; `frame` holds the bytes handed to the socket. The socket
/// copies a frame into its own write buffer and drops our handle before `send` returns, so the
/// next `reserve` finds the allocation unshared and reuses it.
#[derive(Default)]
struct AppendBuffer {
    json: String,
    frame: BytesMut,
}

impl AppendBuffer {
    fn message(&mut self, pcm: &[i16]) -> Message {
        events::write_append(pcm, &mut self.json);
        self.frame.reserve(self.json.len());
        self.frame.extend_from_slice(self.json.as_bytes());
        let bytes = self.frame.split().freeze();
        let text =
            Utf8Bytes::try_from(bytes).expect("the frame is a copy of a String, hence UTF-8");
        Message::Text(text)
    }
}

/// One configured Realtime session. Owned by the call task; dropping it drops the connection
/// (the server sees 1006), so call [`RealtimeSession::close`] for a clean end.
pub struct RealtimeSession {
    /// The WebSocket; read and written only through this struct.
    socket: Socket,
    /// From `session.created`; names the session in logs and support requests.
    session_id: String,
    /// When the provider will end the session (`session.expires_at`), if it said.
    expires: Option<std::time::Instant>,
    /// See [`AppendBuffer`].
    append: AppendBuffer,
    /// Set once the socket is finished with (close seen or sent, read error); reads then yield
    /// `None` and sends fail with `Closed`.
    ended: bool,
    /// The outcome of a server close, stored before the close reply is flushed so that a
    /// `next_event` cancelled during that flush still reports it on the next call.
    pending: Option<RealtimeError>,
    /// Code and reason of the close, for errors on later sends and in `connect`.
    close_code: Option<u16>,
    close_reason: String,
}

impl fmt::Debug for RealtimeSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RealtimeSession")
            .field("session_id", &self.session_id)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl RealtimeSession {
    /// Upgrade (Authorization: Bearer for OpenAI, api-key for Azure; never OpenAI-Beta), wait for session.created,
    /// send session.update with `config.session` whose instructions get `caller_context` appended (if non-empty,
    /// after a blank line), wait for session.updated (an `error` instead → RealtimeError::Server; close before
    /// session.created → Closed). All bounded by connect_timeout. Logs never contain the key.
    pub async fn connect(
        config: &RealtimeConfig,
        caller_context: &str,
    ) -> Result<RealtimeSession, RealtimeError> {
        let provider = &config.provider;
        let url = provider.url()?;
        let request = handshake_request(&url, provider)?;
        let deadline = Instant::now() + config.connect_timeout;
        info!(
            provider = provider.label(),
            host = url.host_str().unwrap_or_default(),
            path = url.path(),
            "connecting to the realtime API"
        );

        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .read_buffer_size(READ_BUFFER_BYTES);
        let upgrade = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
        let (socket, _response) = timeout_at(deadline, upgrade)
            .await
            .map_err(|_| RealtimeError::Timeout("websocket handshake"))?
            .map_err(|e| handshake_error(e, provider.api_key()))?;

        let mut session = RealtimeSession {
            socket,
            session_id: String::new(),
            expires: None,
            append: AppendBuffer::default(),
            ended: false,
            pending: None,
            close_code: None,
            close_reason: String::new(),
        };
        let mut created = false;
        let configured = timeout_at(
            deadline,
            session.configure(&config.session, caller_context, &mut created),
        )
        .await;
        match configured {
            Ok(Ok(())) => {
                info!(session_id = %session.session_id, "realtime session configured");
                Ok(session)
            }
            Ok(Err(error)) => {
                debug!(%error, "realtime session set-up failed");
                // Tell the server we are going, within what is left of the budget.
                if !session.ended {
                    let _ = timeout_at(deadline, session.socket.close(Some(normal_close()))).await;
                }
                Err(error)
            }
            Err(_) => Err(RealtimeError::Timeout(if created {
                "session.updated"
            } else {
                "session.created"
            })),
        }
    }

    /// Waits for `session.created`, sends the configuration and waits for `session.updated`.
    /// Nothing else is sent before that, so no caller audio is read with the default format.
    async fn configure(
        &mut self,
        settings: &SessionSettings,
        caller_context: &str,
        created: &mut bool,
    ) -> Result<(), RealtimeError> {
        // An `error` before `session.created` usually explains the close that follows it.
        let mut early_error = None;
        loop {
            match self.next_event().await {
                Some(Ok(ServerEvent::SessionCreated {
                    session_id,
                    expires_at,
                })) => {
                    self.session_id = session_id;
                    self.expires = expires_at.map(expiry_instant);
                    break;
                }
                Some(Ok(ServerEvent::Error { code, message, .. })) => {
                    warn!(
                        code = %LogSafe::new(code.as_deref().unwrap_or_default()),
                        error_message = %LogSafe::truncated(&message, AI_TEXT_CHARS),
                        "realtime error before session.created"
                    );
                    early_error = Some(message);
                }
                Some(Ok(other)) => {
                    debug!(
                        event = other.name(),
                        "ignoring realtime event before session.created"
                    );
                }
                Some(Err(RealtimeError::Closed { code, reason })) => {
                    let reason = match early_error {
                        Some(message) if reason.is_empty() => message,
                        _ => reason,
                    };
                    return Err(RealtimeError::Closed { code, reason });
                }
                Some(Err(error)) => return Err(error),
                None => return Err(self.closed_error()),
            }
        }
        *created = true;
        info!(session_id = %self.session_id, "realtime session created");

        let mut settings = settings.clone();
        settings.instructions = with_caller_context(&settings.instructions, caller_context);
        self.send_text(events::session_update(&settings)).await?;

        loop {
            match self.next_event().await {
                Some(Ok(ServerEvent::SessionUpdated)) => return Ok(()),
                Some(Ok(ServerEvent::Error { code, message, .. })) => {
                    return Err(RealtimeError::Server { code, message });
                }
                Some(Ok(other)) => {
                    debug!(
                        event = other.name(),
                        "ignoring realtime event before session.updated"
                    );
                }
                Some(Err(error)) => return Err(error),
                None => return Err(self.closed_error()),
            }
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// When the provider will end this session (its `expires_at`), if it said.
    pub fn expires(&self) -> Option<std::time::Instant> {
        self.expires
    }

    /// Sends one append built in a reused buffer. An empty slice sends nothing.
    pub async fn send_audio(&mut self, pcm: &[i16]) -> Result<(), RealtimeError> {
        if pcm.is_empty() {
            return Ok(());
        }
        let message = self.append.message(pcm);
        trace!(samples = pcm.len(), "input_audio_buffer.append");
        self.send(message).await
    }

    /// Sends a client event built by [`events`] (truncate, cancel, response.create, ...).
    pub async fn send_text(&mut self, event_json: String) -> Result<(), RealtimeError> {
        debug!(
            event = client_event_type(&event_json),
            bytes = event_json.len(),
            "sending realtime event"
        );
        self.send(Message::Text(event_json.into())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), RealtimeError> {
        if self.ended {
            return Err(self.closed_error());
        }
        match self.socket.send(message).await {
            Ok(()) => Ok(()),
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(ProtocolError::SendAfterClosing),
            ) => Err(self.closed_error()),
            Err(tungstenite::Error::Io(e)) => Err(RealtimeError::Io(e.to_string())),
            Err(other) => Err(RealtimeError::Protocol(other.to_string())),
        }
    }

    /// Next server event; None after a normal close. Cancellation-safe (used inside tokio::select!).
    /// Answers pings. `error` events come through as ServerEvent::Error (logged at warn with their code by the caller).
    /// An abnormal close comes back as Some(Err(RealtimeError::Closed{..})).
    ///
    /// An event that cannot be read (invalid JSON, bad base64) is logged and skipped: one bad
    /// event must not end a call. After `None` or an error, every later call returns `None`.
    pub async fn next_event(&mut self) -> Option<Result<ServerEvent, RealtimeError>> {
        loop {
            if self.ended {
                return self.pending.take().map(Err);
            }
            // Cancelling this await loses nothing: the socket keeps partly read frames buffered.
            let message = match self.socket.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    self.ended = true;
                    let error = read_error(error);
                    info!(%error, "realtime connection lost");
                    return Some(Err(error));
                }
                None => {
                    self.ended = true;
                    return Some(Err(self.closed_error()));
                }
            };
            match message {
                Message::Text(text) => match events::parse_server_event(&text) {
                    Ok(event) => {
                        if matches!(event, ServerEvent::AudioDelta { .. }) {
                            trace!(event = event.name(), "realtime event");
                        } else {
                            debug!(event = event.name(), "realtime event");
                        }
                        return Some(Ok(event));
                    }
                    Err(error) => warn!(%error, "skipping unreadable realtime event"),
                },
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((NO_STATUS_CLOSE, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    info!(code, reason, "realtime server closed the session");
                    self.ended = true;
                    self.close_code = Some(code);
                    self.close_reason.clone_from(&reason);
                    if code != 1000 {
                        self.pending = Some(RealtimeError::Closed {
                            code: Some(code),
                            reason,
                        });
                    }
                    // The library queued the close reply; send it now rather than never.
                    if let Ok(Err(error)) = timeout(CLOSE_GRACE, self.socket.flush()).await {
                        debug!(%error, "could not acknowledge the realtime close");
                    }
                }
                Message::Binary(bytes) => {
                    warn!(
                        bytes = bytes.len(),
                        "ignoring binary frame from the realtime API"
                    );
                }
                // Pongs to pings are queued by the library and go out on the next read or write.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                    trace!("realtime control frame");
                }
            }
        }
    }

    /// Close with 1000.
    ///
    /// Waits up to a second for the server's acknowledgement. Idempotent; later reads return
    /// `None` and later sends fail with `Closed`.
    pub async fn close(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.close_code = Some(1000);
        let socket = &mut self.socket;
        let closing = timeout(CLOSE_GRACE, async {
            socket.close(Some(normal_close())).await?;
            // Drain until the server's close reply ends the stream.
            while let Some(message) = socket.next().await {
                message?;
            }
            Ok::<(), tungstenite::Error>(())
        })
        .await;
        match closing {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, "realtime close was not clean"),
            Err(_) => debug!("realtime server did not acknowledge the close in time"),
        }
        info!(session_id = %self.session_id, "realtime session closed");
    }

    fn closed_error(&self) -> RealtimeError {
        RealtimeError::Closed {
            code: Some(self.close_code.unwrap_or(ABNORMAL_CLOSE)),
            reason: if self.close_code.is_none() {
                "connection ended without a close frame".to_owned()
            } else {
                self.close_reason.clone()
            },
        }
    }
}

/// The local instant of a Unix time in seconds (the provider's clock, read by ours).
fn expiry_instant(unix_seconds: u64) -> std::time::Instant {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(unix_seconds).saturating_sub(now_unix);
    std::time::Instant::now() + left
}

fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::from_static(""),
    }
}

/// The configured instructions, then a blank line and what we know about this caller.
fn with_caller_context(instructions: &str, caller_context: &str) -> String {
    match (instructions.is_empty(), caller_context.is_empty()) {
        (_, true) => instructions.to_owned(),
        (true, false) => caller_context.to_owned(),
        (false, false) => format!("{instructions}\n\n{caller_context}"),
    }
}

fn handshake_request(url: &Url, provider: &Provider) -> Result<Request, RealtimeError> {
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| RealtimeError::Handshake {
            status: None,
            message: format!("invalid realtime URL: {e}"),
            retry_after: None,
        })?;
    let key = provider.api_key().expose_secret().trim();
    let (name, value) = match provider {
        Provider::OpenAi { .. } => (
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")),
        ),
        Provider::Azure { .. } => (
            HeaderName::from_static("api-key"),
            HeaderValue::from_str(key),
        ),
    };
    let mut value = value.map_err(|_| RealtimeError::Handshake {
        status: None,
        message: "the API key contains characters that cannot go in an HTTP header".to_owned(),
        retry_after: None,
    })?;
    value.set_sensitive(true);
    request.headers_mut().insert(name, value);
    Ok(request)
}

fn handshake_error(error: tungstenite::Error, key: &SecretString) -> RealtimeError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let mut message = redact(body.trim(), key.expose_secret().trim());
            if message.is_empty() {
                message = status
                    .canonical_reason()
                    .unwrap_or("upgrade refused")
                    .to_owned();
            }
            RealtimeError::Handshake {
                status: Some(status.as_u16()),
                message,
                retry_after: retry_after(response.headers()),
            }
        }
        tungstenite::Error::Io(e) => RealtimeError::Io(e.to_string()),
        tungstenite::Error::Url(e) => RealtimeError::Handshake {
            status: None,
            message: format!("invalid realtime URL: {e}"),
            retry_after: None,
        },
        other => RealtimeError::Handshake {
            status: None,
            message: other.to_string(),
            retry_after: None,
        },
    }
}

/// `Retry-After` in seconds (RFC 9110 §10.2.3; the HTTP-date form is not used by the providers
/// and is ignored).
fn retry_after(headers: &tungstenite::http::HeaderMap) -> Option<Duration> {
    let value = headers.get(tungstenite::http::header::RETRY_AFTER)?;
    let seconds: f64 = value.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// Shortens a server-supplied text and removes the key from it, in case the server echoes it.
fn redact(text: &str, key: &str) -> String {
    let shortened: String = text.chars().take(MAX_ERROR_BODY_CHARS).collect();
    if key.is_empty() {
        shortened
    } else {
        shortened.replace(key, "[REDACTED]")
    }
}

fn read_error(error: tungstenite::Error) -> RealtimeError {
    match error {
        tungstenite::Error::Io(e) => RealtimeError::Closed {
            code: Some(ABNORMAL_CLOSE),
            reason: format!("connection lost: {e}"),
        },
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            RealtimeError::Closed {
                code: Some(ABNORMAL_CLOSE),
                reason: "connection ended without a close frame".to_owned(),
            }
        }
        tungstenite::Error::Tls(e) => RealtimeError::Closed {
            code: Some(ABNORMAL_CLOSE),
            reason: format!("TLS failure: {e}"),
        },
        other => RealtimeError::Protocol(other.to_string()),
    }
}

/// The `type` of a client event built by [`events`] (they all start with it), for logs only.
fn client_event_type(json: &str) -> &str {
    json.strip_prefix(r#"{"type":""#)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
}

#[cfg(test)]
mod tests;
