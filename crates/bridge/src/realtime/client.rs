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

/// Why a session could not be opened or went away.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// The upgrade was refused (`status` is the HTTP status) or could not be attempted (bad URL,
    /// bad key characters, TLS failure).
    #[error("realtime handshake failed{}: {message}", status.map(|s| format!(" with HTTP {s}")).unwrap_or_default())]
    Handshake {
        status: Option<u16>,
        message: String,
    },
    /// The named step did not finish within `connect_timeout`.
    #[error("realtime API timed out waiting for {0}")]
    Timeout(&'static str),
    /// The WebSocket closed. `code` 1006 means it ended without a close frame, 1005 that the
    /// close frame had no status.
    #[error("realtime session closed{}: {reason}", code.map(|c| format!(" with code {c}")).unwrap_or_default())]
    Closed { code: Option<u16>, reason: String },
    /// The server answered the configuration with an `error` event.
    #[error("realtime server error {}: {message}", code.as_deref().unwrap_or("(no code)"))]
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
    /// Also retryable: 1005 and 1015 closes, HTTP 5xx at upgrade, timeouts, and the
    /// `session_expired` and `server_error` codes. Not retryable: 1000 (a deliberate close),
    /// configuration and protocol errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Handshake { status, .. } => status.is_some_and(|s| s >= 500),
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
                Some(Ok(ServerEvent::SessionCreated { session_id })) => {
                    self.session_id = session_id;
                    break;
                }
                Some(Ok(ServerEvent::Error { code, message, .. })) => {
                    warn!(
                        code = code.as_deref().unwrap_or_default(),
                        error_message = %message,
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
            }
        }
        tungstenite::Error::Io(e) => RealtimeError::Io(e.to_string()),
        tungstenite::Error::Url(e) => RealtimeError::Handshake {
            status: None,
            message: format!("invalid realtime URL: {e}"),
        },
        other => RealtimeError::Handshake {
            status: None,
            message: other.to_string(),
        },
    }
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
mod tests {
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
    async fn openai_connect_authenticates_with_bearer_and_streams_audio_only_after_session_updated()
    {
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
    async fn an_error_instead_of_session_updated_is_a_server_error_and_the_client_closes_normally()
    {
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
                other("rate_limits.updated"),
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
        };
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
}
