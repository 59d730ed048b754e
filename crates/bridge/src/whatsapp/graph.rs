//! Graph API client for the call actions (spec §5): pre_accept, accept, reject, terminate, connect.
//!
//! Every action is one `POST {base}/{version}/{phone_number_id}/calls` with only the documented
//! fields. Timeouts, 5xx and 429 are retried with jittered exponential backoff, 4xx never:
//! answering actions retry quickly within a short budget well inside the answer window (the SDP
//! stays identical), clean-up actions retry for about 10 s (they are idempotent), and `connect`
//! never retries (a replay could ring the user twice). Every attempt can be observed (metrics).
//!
//! The same transport, error parsing and observation serve the requests of the other endpoints
//! of the number (§5.5): messages ([`super::messaging`]) and the call permission
//! ([`super::permissions`]). Those are never retried here: a replayed message reaches the user
//! twice, and a permission read's caller decides when to read again (613 asks for ≥ 1 s).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};

use crate::ids::{CallId, LogSafe, PhoneNumber};

/// Where and as whom to call the Graph API.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// `https://graph.facebook.com`, or a double's address in tests.
    pub base_url: String,
    /// Graph API version path segment, e.g. `v23.0`.
    pub version: String,
    /// Graph id of our business number; selects the `/calls` endpoint.
    pub phone_number_id: String,
    /// System-user access token; sent as `Authorization: Bearer`, never logged.
    pub access_token: SecretString,
    /// Per-request timeout (spec §5.1 suggests about 10 s).
    pub timeout: Duration,
}

/// A Graph API request: one of the five call actions, as named in the request body (§5.2), or a
/// request to another endpoint of the number (§5.5), named after the endpoint. The metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphAction {
    PreAccept,
    Accept,
    Reject,
    Terminate,
    Connect,
    /// `POST …/messages`: a text, a template or a call-permission request.
    Messages,
    /// `GET …/call_permissions`: a user's call permission and quotas.
    CallPermissions,
}

impl GraphAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphAction::PreAccept => "pre_accept",
            GraphAction::Accept => "accept",
            GraphAction::Reject => "reject",
            GraphAction::Terminate => "terminate",
            GraphAction::Connect => "connect",
            GraphAction::Messages => "messages",
            GraphAction::CallPermissions => "call_permissions",
        }
    }
}

impl fmt::Display for GraphAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call action failed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Meta answered with an error status. `code` is Meta's error code (§11), or 0 when the body
    /// was not a Graph error (e.g. a proxy's 502 page).
    #[error("Graph API error {code} (HTTP {status}): {message}")]
    Api {
        status: u16,
        code: i64,
        message: String,
        /// `error_data.details`: Meta's explanation, e.g. which SDP rule failed.
        details: Option<String>,
        /// Meta's request id; quote it when asking Meta support.
        fbtrace_id: Option<String>,
    },
    #[error("Graph API answered 200 with \"success\": false")]
    Unsuccessful,
    #[error("Graph API request timed out")]
    Timeout,
    #[error("Graph API request failed: {0}")]
    Transport(String),
    #[error("unexpected Graph API response: {0}")]
    InvalidResponse(String),
}

/// The Meta error codes a caller placing calls and sending messages acts on (§11), named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GraphErrorKind {
    /// 613 (HTTP 429): the permission-state API's rate limit (5 requests/s); back off ≥ 1 s.
    RateLimited,
    /// 131047: "Re-engagement message": a free-form message (text, interactive) outside the
    /// 24-hour customer-service window; send an approved template instead.
    OutsideCustomerServiceWindow,
    /// 132001: the template name (in that language) is not approved on the account.
    TemplateNotFound,
    /// 138003: a call with this user is already active.
    CallAlreadyActive,
    /// 138006: no approved call permission from the user; ask for it.
    NoCallPermission,
    /// 138009: the permission-request limit (1 per 24 h, 2 per 7 days) is reached; wait.
    PermissionRequestLimit,
    /// 138012: the daily limit of connected business-initiated calls to this user is reached.
    CallLimitReached,
    /// 138017: asking is pointless, the user granted a permanent permission.
    PermanentPermissionExists,
}

impl GraphErrorKind {
    /// The kind of Meta error `code`, when it is one of the named ones.
    pub fn from_code(code: i64) -> Option<GraphErrorKind> {
        Some(match code {
            613 => GraphErrorKind::RateLimited,
            131_047 => GraphErrorKind::OutsideCustomerServiceWindow,
            132_001 => GraphErrorKind::TemplateNotFound,
            138_003 => GraphErrorKind::CallAlreadyActive,
            138_006 => GraphErrorKind::NoCallPermission,
            138_009 => GraphErrorKind::PermissionRequestLimit,
            138_012 => GraphErrorKind::CallLimitReached,
            138_017 => GraphErrorKind::PermanentPermissionExists,
            _ => return None,
        })
    }

    /// Meta's code for this kind.
    pub fn code(self) -> i64 {
        match self {
            GraphErrorKind::RateLimited => 613,
            GraphErrorKind::OutsideCustomerServiceWindow => 131_047,
            GraphErrorKind::TemplateNotFound => 132_001,
            GraphErrorKind::CallAlreadyActive => 138_003,
            GraphErrorKind::NoCallPermission => 138_006,
            GraphErrorKind::PermissionRequestLimit => 138_009,
            GraphErrorKind::CallLimitReached => 138_012,
            GraphErrorKind::PermanentPermissionExists => 138_017,
        }
    }
}

impl GraphError {
    /// Meta's error code, when Meta sent one.
    pub fn code(&self) -> Option<i64> {
        match self {
            GraphError::Api { code, .. } if *code != 0 => Some(*code),
            _ => None,
        }
    }

    /// The named kind of Meta's error, when it is one a caller acts on (branch on this or on
    /// [`GraphError::code`], never on the message, §5.3).
    pub fn kind(&self) -> Option<GraphErrorKind> {
        self.code().and_then(GraphErrorKind::from_code)
    }

    /// Timeouts, transport failures, 5xx and 429: the request may succeed if repeated.
    pub fn is_retryable(&self) -> bool {
        match self {
            GraphError::Timeout | GraphError::Transport(_) => true,
            GraphError::Api { status, .. } => *status == 429 || (500..600).contains(status),
            GraphError::Unsuccessful | GraphError::InvalidResponse(_) => false,
        }
    }
}

/// Client for one business number's `/calls` endpoint. Cheap to clone.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `{base}/{version}/{phone_number_id}/calls`, built once.
    calls_url: String,
    /// `{base}/{version}/{phone_number_id}/messages`.
    messages_url: String,
    /// `{base}/{version}/{phone_number_id}/call_permissions`.
    permissions_url: String,
    token: SecretString,
    observer: Option<AttemptObserver>,
}

/// What a request carries: a JSON body (POST) or query parameters (GET).
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    Json(&'a Value),
    Query(&'a [(&'a str, &'a str)]),
}

/// Told about every HTTP attempt: the action and its outcome (`"200"`, `"503"`, `"timeout"`,
/// `"transport_error"`, ...).
pub type AttemptObserver = Arc<dyn Fn(GraphAction, &str) + Send + Sync>;

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("calls_url", &self.inner.calls_url)
            .field("access_token", &"[redacted]")
            .finish()
    }
}

/// `pre_accept`/`accept`: first backoff, doubled per attempt up to the cap, jittered; no new
/// attempt starts later than the budget after the first (the answer deadline is 20 s).
const ANSWER_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const ANSWER_MAX_BACKOFF: Duration = Duration::from_millis(800);
const ANSWER_RETRY_BUDGET: Duration = Duration::from_secs(3);
/// `reject`/`terminate`: first backoff, doubled per attempt up to the cap, jittered.
const CLEANUP_FIRST_BACKOFF: Duration = Duration::from_millis(200);
const CLEANUP_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// `reject`/`terminate`: no new attempt starts later than this after the first.
const CLEANUP_RETRY_BUDGET: Duration = Duration::from_secs(10);

/// Idle keep-alive connections kept to the Graph API. A call needs them only for its two
/// answering requests (and a `terminate`), so a burst of calls opens one each and then leaves
/// them idle for the length of the calls; reqwest would keep them all, for up to three minutes
/// (90 s idle timeout, checked every 90 s). Enough stay to answer the next calls without a new
/// handshake.
const GRAPH_IDLE_CONNECTIONS: usize = 16;

impl GraphClient {
    pub fn new(config: GraphConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_max_idle_per_host(GRAPH_IDLE_CONNECTIONS)
            .build()
            .expect("reqwest builds a client from static settings");
        let number_url = format!(
            "{}/{}/{}",
            config.base_url.trim_end_matches('/'),
            config.version.trim_matches('/'),
            config.phone_number_id.trim_matches('/'),
        );
        Self {
            inner: Arc::new(Inner {
                http,
                calls_url: format!("{number_url}/calls"),
                messages_url: format!("{number_url}/messages"),
                permissions_url: format!("{number_url}/call_permissions"),
                token: config.access_token,
                observer: None,
            }),
        }
    }

    /// The same client, telling `observer` about every attempt.
    pub fn with_attempt_observer(self, observer: AttemptObserver) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                http: inner.http.clone(),
                calls_url: inner.calls_url.clone(),
                messages_url: inner.messages_url.clone(),
                permissions_url: inner.permissions_url.clone(),
                token: inner.token.clone(),
                observer: Some(observer),
            }),
        }
    }

    /// Hands Meta our SDP answer early so ICE and DTLS can finish before the call is answered.
    pub async fn pre_accept(&self, call_id: &CallId, answer_sdp: &str) -> Result<(), GraphError> {
        let body = json!({
            "messaging_product": "whatsapp",
            "call_id": call_id.as_str(),
            "action": GraphAction::PreAccept.as_str(),
            "session": { "sdp_type": "answer", "sdp": answer_sdp },
        });
        self.send(GraphAction::PreAccept, Some(call_id), &body)
            .await
            .and_then(expect_success)
    }

    /// Answers the call. `answer_sdp` must be byte-identical to the one sent with `pre_accept`.
    pub async fn accept(
        &self,
        call_id: &CallId,
        answer_sdp: &str,
        biz_opaque_callback_data: Option<&str>,
    ) -> Result<(), GraphError> {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "call_id": call_id.as_str(),
            "action": GraphAction::Accept.as_str(),
            "session": { "sdp_type": "answer", "sdp": answer_sdp },
        });
        if let Some(data) = biz_opaque_callback_data {
            body["biz_opaque_callback_data"] = data.into();
        }
        self.send(GraphAction::Accept, Some(call_id), &body)
            .await
            .and_then(expect_success)
    }

    /// Declines a call that has not been answered.
    pub async fn reject(&self, call_id: &CallId) -> Result<(), GraphError> {
        self.call_only(GraphAction::Reject, call_id).await
    }

    /// Ends an active call. Not needed after Meta's `terminate` webhook.
    pub async fn terminate(&self, call_id: &CallId) -> Result<(), GraphError> {
        self.call_only(GraphAction::Terminate, call_id).await
    }

    /// Starts a business-initiated call with our SDP offer; returns Meta's call id.
    pub async fn connect(
        &self,
        to: &PhoneNumber,
        offer_sdp: &str,
        biz_opaque_callback_data: Option<&str>,
    ) -> Result<CallId, GraphError> {
        let mut body = json!({
            "messaging_product": "whatsapp",
            "to": to.as_str(),
            "action": GraphAction::Connect.as_str(),
            "session": { "sdp_type": "offer", "sdp": offer_sdp },
        });
        if let Some(data) = biz_opaque_callback_data {
            body["biz_opaque_callback_data"] = data.into();
        }
        let response = self.send(GraphAction::Connect, None, &body).await?;
        let call_id = connect_call_id(&response)?;
        tracing::info!(call_id = %call_id, to = %to, "business-initiated call placed");
        Ok(call_id)
    }

    async fn call_only(&self, action: GraphAction, call_id: &CallId) -> Result<(), GraphError> {
        let body = json!({
            "messaging_product": "whatsapp",
            "call_id": call_id.as_str(),
            "action": action.as_str(),
        });
        self.send(action, Some(call_id), &body)
            .await
            .and_then(expect_success)
    }

    /// Posts a call action's `body`, retrying per §5.4; returns the parsed body of a 2xx
    /// response.
    async fn send(
        &self,
        action: GraphAction,
        call_id: Option<&CallId>,
        body: &Value,
    ) -> Result<Value, GraphError> {
        self.request(action, call_id, Payload::Json(body)).await
    }

    /// Sends one request to the endpoint of `action` (POST with a JSON body, or GET with a
    /// query), retrying per §5.4; returns the parsed body of a 2xx response. Every attempt is
    /// observed and every failure logged here, for every endpoint.
    pub(crate) async fn request(
        &self,
        action: GraphAction,
        call_id: Option<&CallId>,
        payload: Payload<'_>,
    ) -> Result<Value, GraphError> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let result = self.send_once(action, payload).await;
            if let Some(observer) = &self.inner.observer {
                observer(action, &attempt_outcome(&result));
            }
            let error = match result {
                Ok(response) => {
                    tracing::debug!(action = %action, call_id = call_id.map_or("", CallId::as_str), attempt, "Graph API action succeeded");
                    return Ok(response);
                }
                Err(error) => error,
            };
            log_failure(action, call_id, attempt, &error);
            let Some(delay) = retry_delay(action, attempt, started.elapsed(), &error) else {
                return Err(error);
            };
            tracing::debug!(action = %action, call_id = call_id.map_or("", CallId::as_str), delay_ms = delay.as_millis() as u64, "retrying Graph API action");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn send_once(
        &self,
        action: GraphAction,
        payload: Payload<'_>,
    ) -> Result<Value, GraphError> {
        let inner = &self.inner;
        let url = match action {
            GraphAction::Messages => &inner.messages_url,
            GraphAction::CallPermissions => &inner.permissions_url,
            _ => &inner.calls_url,
        };
        let request = match payload {
            Payload::Json(body) => inner.http.post(url).json(body),
            Payload::Query(query) => inner.http.get(url).query(query),
        };
        let response = request
            .bearer_auth(inner.token.expose_secret())
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes)
                .map_err(|e| GraphError::InvalidResponse(format!("HTTP {status} body: {e}")))
        } else {
            Err(api_error(status, &bytes))
        }
    }
}

/// How long to wait before the next attempt, or `None` to give up (§5.4).
fn retry_delay(
    action: GraphAction,
    attempt: u32,
    elapsed: Duration,
    error: &GraphError,
) -> Option<Duration> {
    if !error.is_retryable() {
        return None;
    }
    let mut rng = rand::rng();
    let (first, cap, budget) = match action {
        GraphAction::Connect | GraphAction::Messages | GraphAction::CallPermissions => return None,
        GraphAction::PreAccept | GraphAction::Accept => (
            ANSWER_FIRST_BACKOFF,
            ANSWER_MAX_BACKOFF,
            ANSWER_RETRY_BUDGET,
        ),
        GraphAction::Reject | GraphAction::Terminate => (
            CLEANUP_FIRST_BACKOFF,
            CLEANUP_MAX_BACKOFF,
            CLEANUP_RETRY_BUDGET,
        ),
    };
    let backoff = first.saturating_mul(2u32.saturating_pow(attempt)).min(cap);
    // Jitter in [backoff/2, backoff] so many calls failing at once do not retry in step.
    let delay = backoff.mul_f64(rng.random_range(0.5..=1.0));
    (elapsed + delay <= budget).then_some(delay)
}

/// The metrics label of one attempt's outcome.
fn attempt_outcome(result: &Result<Value, GraphError>) -> String {
    match result {
        Ok(_) => "200".to_owned(),
        Err(GraphError::Api { status, .. }) => status.to_string(),
        Err(GraphError::Timeout) => "timeout".to_owned(),
        Err(GraphError::Transport(_)) => "transport_error".to_owned(),
        Err(GraphError::Unsuccessful) => "unsuccessful".to_owned(),
        Err(GraphError::InvalidResponse(_)) => "invalid_response".to_owned(),
    }
}

fn log_failure(action: GraphAction, call_id: Option<&CallId>, attempt: u32, error: &GraphError) {
    // Meta's rate limit on permission reads is expected under load and handled by the caller
    // (counted in `graph_requests_total` with its status): not a warning.
    if error.kind() == Some(GraphErrorKind::RateLimited) {
        tracing::debug!(action = %action, attempt, "Graph API rate limit (613)");
        return;
    }
    match error {
        GraphError::Api {
            status,
            code,
            message,
            details,
            fbtrace_id,
        } => tracing::warn!(
            action = %action,
            call_id = call_id.map_or("", CallId::as_str),
            attempt,
            status,
            code,
            message = %message,
            details = ?details,
            fbtrace_id = ?fbtrace_id,
            "Graph API action failed"
        ),
        other => tracing::warn!(
            action = %action,
            call_id = call_id.map_or("", CallId::as_str),
            attempt,
            error = %other,
            "Graph API action failed"
        ),
    }
}

fn transport_error(error: reqwest::Error) -> GraphError {
    if error.is_timeout() {
        return GraphError::Timeout;
    }
    // reqwest's own message is vague ("error sending request"); the cause chain says why.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    GraphError::Transport(text)
}

/// Characters kept of each text in Meta's error (it ends up in log lines).
const ERROR_TEXT_CHARS: usize = 512;

/// Reads Meta's error shape (§5.3); anything else still becomes `Api` with code 0. Its texts
/// are escaped and cut short ([`LogSafe`]): they are logged.
fn api_error(status: u16, body: &[u8]) -> GraphError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .map(|text| LogSafe::truncated(text, ERROR_TEXT_CHARS).to_string())
    };
    match error {
        Some(error) => GraphError::Api {
            status,
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: text(error.get("message")).unwrap_or_default(),
            details: text(error.get("error_data").and_then(|d| d.get("details"))),
            fbtrace_id: text(error.get("fbtrace_id")),
        },
        None => GraphError::Api {
            status,
            code: 0,
            message: format!("HTTP {status} without a Graph API error body"),
            details: None,
            fbtrace_id: None,
        },
    }
}

/// `{"success": true}`, with or without `messaging_product`.
fn expect_success(body: Value) -> Result<(), GraphError> {
    match body.get("success").and_then(Value::as_bool) {
        Some(true) => Ok(()),
        Some(false) => Err(GraphError::Unsuccessful),
        None => Err(GraphError::InvalidResponse(
            "no \"success\" field in the response".to_owned(),
        )),
    }
}

/// `{"calls":[{"id":"wacid.…"}]}`, possibly with `messaging_product` and `"success": true`.
fn connect_call_id(body: &Value) -> Result<CallId, GraphError> {
    if body.get("success").and_then(Value::as_bool) == Some(false) {
        return Err(GraphError::Unsuccessful);
    }
    body.get("calls")
        .and_then(|calls| calls.get(0))
        .and_then(|call| call.get("id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(CallId::new)
        .ok_or_else(|| {
            GraphError::InvalidResponse("no calls[0].id in the connect response".to_owned())
        })
}

#[cfg(test)]
pub(crate) mod test_server;

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::test_server::{Script, Seen, TOKEN, client, server};
    use super::*;

    const CALL: &str = "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggN0ExQzlEMkU0QjZGOEEwQzNFNUQ3RjlCMUQzRTVGN0EcGAsxNTU1MDAwMTExMRUCABUKAA==";
    const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n";
    const PERMISSION_ERROR: &str = r#"{"error":{"message":"(#138006) No approved call permission from the recipient","type":"OAuthException","code":138006,"error_data":{"messaging_product":"whatsapp","details":"No approved call permission from the recipient"},"fbtrace_id":"A1b2C3d4E5"}}"#;

    fn call() -> CallId {
        CallId::new(CALL)
    }

    fn only_request(script: &Script) -> Seen {
        script.only_request()
    }

    #[tokio::test]
    async fn pre_accept_posts_the_answer_with_bearer_auth() {
        let (client, script) = server(&[]).await;
        client.pre_accept(&call(), SDP).await.unwrap();
        let seen = only_request(&script);
        assert_eq!(seen.path, "/v23.0/106540352242922/calls");
        assert_eq!(
            seen.authorization.as_deref(),
            Some("Bearer test-token-never-logged")
        );
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            seen.body,
            json!({
                "messaging_product": "whatsapp",
                "call_id": CALL,
                "action": "pre_accept",
                "session": { "sdp_type": "answer", "sdp": SDP },
            })
        );
    }

    #[tokio::test]
    async fn accept_sends_the_answer_and_optional_callback_data() {
        let (client, script) = server(&[]).await;
        client
            .accept(&call(), SDP, Some("sess-7f3a"))
            .await
            .unwrap();
        client.accept(&call(), SDP, None).await.unwrap();
        let seen = script.seen.lock().clone();
        assert_eq!(
            seen[0].body,
            json!({
                "messaging_product": "whatsapp",
                "call_id": CALL,
                "action": "accept",
                "session": { "sdp_type": "answer", "sdp": SDP },
                "biz_opaque_callback_data": "sess-7f3a",
            })
        );
        assert_eq!(
            seen[1].body,
            json!({
                "messaging_product": "whatsapp",
                "call_id": CALL,
                "action": "accept",
                "session": { "sdp_type": "answer", "sdp": SDP },
            })
        );
    }

    #[tokio::test]
    async fn reject_and_terminate_send_only_the_call_id() {
        let (client, script) = server(&[]).await;
        client.reject(&call()).await.unwrap();
        client.terminate(&call()).await.unwrap();
        let seen = script.seen.lock().clone();
        for (seen, action) in seen.iter().zip(["reject", "terminate"]) {
            assert_eq!(seen.path, "/v23.0/106540352242922/calls");
            assert_eq!(
                seen.body,
                json!({ "messaging_product": "whatsapp", "call_id": CALL, "action": action })
            );
        }
    }

    #[tokio::test]
    async fn connect_sends_the_offer_and_returns_metas_call_id() {
        let (client, script) = server(&[
            (
                200,
                r#"{"messaging_product":"whatsapp","calls":[{"id":"wacid.NEW"}]}"#,
            ),
            (200, r#"{"calls":[{"id":"wacid.TWO"}],"success":true}"#),
        ])
        .await;
        let to = PhoneNumber::new("447700900123");
        let id = client.connect(&to, SDP, Some("job-42")).await.unwrap();
        assert_eq!(id, CallId::new("wacid.NEW"));
        let id = client.connect(&to, SDP, None).await.unwrap();
        assert_eq!(id, CallId::new("wacid.TWO"));
        let seen = script.seen.lock().clone();
        assert_eq!(
            seen[0].body,
            json!({
                "messaging_product": "whatsapp",
                "to": "447700900123",
                "action": "connect",
                "session": { "sdp_type": "offer", "sdp": SDP },
                "biz_opaque_callback_data": "job-42",
            })
        );
        assert!(seen[1].body.get("biz_opaque_callback_data").is_none());
    }

    #[tokio::test]
    async fn success_bodies_with_and_without_messaging_product_are_accepted() {
        let (client, _script) = server(&[(200, r#"{"success":true}"#)]).await;
        client.terminate(&call()).await.unwrap();
    }

    #[tokio::test]
    async fn success_false_is_a_failure() {
        let (client, script) = server(&[(200, r#"{"success":false}"#)]).await;
        let error = client.terminate(&call()).await.unwrap_err();
        assert!(matches!(error, GraphError::Unsuccessful), "{error:?}");
        assert_eq!(script.seen.lock().len(), 1);
    }

    #[tokio::test]
    async fn malformed_success_bodies_are_invalid_responses() {
        let (client, _script) = server(&[
            (200, "not json"),
            (200, r#"{"messaging_product":"whatsapp"}"#),
            (200, r#"{"calls":[]}"#),
        ])
        .await;
        for _ in 0..2 {
            let error = client.reject(&call()).await.unwrap_err();
            assert!(matches!(error, GraphError::InvalidResponse(_)), "{error:?}");
        }
        let error = client
            .connect(&PhoneNumber::new("1"), SDP, None)
            .await
            .unwrap_err();
        assert!(matches!(error, GraphError::InvalidResponse(_)), "{error:?}");
    }

    #[tokio::test]
    async fn the_permission_error_fixture_becomes_an_api_error_with_its_code() {
        let (client, script) = server(&[(401, PERMISSION_ERROR)]).await;
        let error = client
            .connect(&PhoneNumber::new("447700900123"), SDP, None)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(138_006));
        assert!(!error.is_retryable());
        let GraphError::Api {
            status,
            code,
            message,
            details,
            fbtrace_id,
        } = error
        else {
            panic!("expected an API error, got {error:?}");
        };
        assert_eq!(status, 401);
        assert_eq!(code, 138_006);
        assert_eq!(
            message,
            "(#138006) No approved call permission from the recipient"
        );
        assert_eq!(
            details.as_deref(),
            Some("No approved call permission from the recipient")
        );
        assert_eq!(fbtrace_id.as_deref(), Some("A1b2C3d4E5"));
        assert_eq!(script.seen.lock().len(), 1);
    }

    #[test]
    fn the_codes_a_caller_acts_on_have_names() {
        for kind in [
            GraphErrorKind::RateLimited,
            GraphErrorKind::OutsideCustomerServiceWindow,
            GraphErrorKind::TemplateNotFound,
            GraphErrorKind::CallAlreadyActive,
            GraphErrorKind::NoCallPermission,
            GraphErrorKind::PermissionRequestLimit,
            GraphErrorKind::CallLimitReached,
            GraphErrorKind::PermanentPermissionExists,
        ] {
            assert_eq!(GraphErrorKind::from_code(kind.code()), Some(kind));
        }
        let api = |code| GraphError::Api {
            status: 400,
            code,
            message: String::new(),
            details: None,
            fbtrace_id: None,
        };
        assert_eq!(api(131_047).code(), Some(131_047));
        assert_eq!(
            api(131_047).kind(),
            Some(GraphErrorKind::OutsideCustomerServiceWindow)
        );
        assert_eq!(api(138_006).kind(), Some(GraphErrorKind::NoCallPermission));
        assert_eq!(
            api(138_009).kind(),
            Some(GraphErrorKind::PermissionRequestLimit)
        );
        assert_eq!(
            api(138_017).kind(),
            Some(GraphErrorKind::PermanentPermissionExists)
        );
        assert_eq!(api(613).kind(), Some(GraphErrorKind::RateLimited));
        assert_eq!(api(100).kind(), None);
        assert_eq!(api(0).kind(), None);
        assert_eq!(GraphError::Timeout.kind(), None);
    }

    #[tokio::test]
    async fn terminate_retries_server_errors_until_it_succeeds() {
        let (client, script) = server(&[(503, "{}"), (503, "unavailable")]).await;
        client.terminate(&call()).await.unwrap();
        assert_eq!(script.seen.lock().len(), 3);
    }

    #[tokio::test]
    async fn client_errors_are_never_retried() {
        let (client, script) = server(&[
            (
                400,
                r#"{"error":{"code":100,"message":"(#100) Invalid parameter"}}"#,
            ),
            (
                400,
                r#"{"error":{"code":100,"message":"(#100) Invalid parameter"}}"#,
            ),
        ])
        .await;
        let error = client.terminate(&call()).await.unwrap_err();
        assert_eq!(error.code(), Some(100));
        assert_eq!(script.seen.lock().len(), 1);
        client.accept(&call(), SDP, None).await.unwrap_err();
        assert_eq!(script.seen.lock().len(), 2);
    }

    #[tokio::test]
    async fn accept_retries_server_errors_with_the_same_sdp_and_every_attempt_is_observed() {
        let (client, script) = server(&[(500, "{}"), (503, "{}")]).await;
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let seen_outcomes = outcomes.clone();
        let client = client.with_attempt_observer(Arc::new(move |action, outcome| {
            seen_outcomes.lock().push(format!("{action}:{outcome}"));
        }));
        client.accept(&call(), SDP, None).await.unwrap();
        let seen = script.seen.lock().clone();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].body, seen[2].body);
        assert_eq!(
            *outcomes.lock(),
            ["accept:500", "accept:503", "accept:200"].map(String::from)
        );
    }

    #[test]
    fn answering_retries_stop_within_their_budget() {
        let error = GraphError::Timeout;
        let mut elapsed = Duration::ZERO;
        let mut attempts = 0;
        while let Some(delay) = retry_delay(GraphAction::Accept, attempts, elapsed, &error) {
            assert!(delay <= ANSWER_MAX_BACKOFF);
            elapsed += delay;
            attempts += 1;
        }
        assert!(elapsed <= ANSWER_RETRY_BUDGET);
        assert!(attempts >= 3, "{attempts} retries");
    }

    #[tokio::test]
    async fn rate_limits_are_retried_for_clean_up_actions() {
        let (client, script) =
            server(&[(429, r#"{"error":{"code":138005,"message":"rate"}}"#)]).await;
        client.reject(&call()).await.unwrap();
        assert_eq!(script.seen.lock().len(), 2);
    }

    #[tokio::test]
    async fn connect_is_never_retried() {
        let (client, script) = server(&[(503, "{}")]).await;
        let error = client
            .connect(&PhoneNumber::new("447700900123"), SDP, None)
            .await
            .unwrap_err();
        assert!(error.is_retryable());
        assert_eq!(script.seen.lock().len(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_retryable_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = client(&format!("http://{addr}"));
        let error = client
            .connect(&PhoneNumber::new("1"), SDP, None)
            .await
            .unwrap_err();
        assert!(matches!(error, GraphError::Transport(_)), "{error:?}");
        assert!(error.is_retryable());
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let client = client("http://127.0.0.1:1");
        let text = format!("{client:?}");
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains("/v23.0/106540352242922/calls"), "{text}");
    }

    #[test]
    fn clean_up_backoff_grows_is_capped_and_stops_after_the_budget() {
        let error = GraphError::Timeout;
        for attempt in 0..20 {
            let delay = retry_delay(GraphAction::Terminate, attempt, Duration::ZERO, &error)
                .expect("inside the budget");
            let backoff = (CLEANUP_FIRST_BACKOFF * 2u32.saturating_pow(attempt.min(10)))
                .min(CLEANUP_MAX_BACKOFF);
            assert!(
                delay >= backoff / 2 && delay <= backoff,
                "{attempt}: {delay:?}"
            );
        }
        assert_eq!(
            retry_delay(GraphAction::Reject, 3, Duration::from_secs(10), &error),
            None
        );
        assert_eq!(
            retry_delay(GraphAction::Accept, 1, ANSWER_RETRY_BUDGET, &error),
            None
        );
        let first = retry_delay(GraphAction::PreAccept, 0, Duration::ZERO, &error).unwrap();
        assert!((50..=100).contains(&(first.as_millis() as u64)));
    }

    #[test]
    fn action_names_match_the_graph_api() {
        let names: Vec<&str> = [
            GraphAction::PreAccept,
            GraphAction::Accept,
            GraphAction::Reject,
            GraphAction::Terminate,
            GraphAction::Connect,
            GraphAction::Messages,
            GraphAction::CallPermissions,
        ]
        .into_iter()
        .map(GraphAction::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "pre_accept",
                "accept",
                "reject",
                "terminate",
                "connect",
                "messages",
                "call_permissions"
            ]
        );
    }
}
