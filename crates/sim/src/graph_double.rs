//! A strict double of Meta's Graph API `/calls` endpoint (spec §5, §8.2, §8.6, §11).
//!
//! It refuses what Meta refuses (wrong token or path, undocumented fields, SDP that breaks
//! Meta's rules, an `accept` whose SDP differs from its `pre_accept`) with Meta's error shape,
//! records every request with the instants it was received and answered, and can be scripted to
//! fail or to answer slowly. A double more forgiving than Meta would hide bugs, so when in doubt
//! it refuses.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use bridge::ids::CallId;
use bridge::whatsapp::sdp;

/// What the double accepts as a valid request target and caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphDoubleConfig {
    /// The only bearer token accepted.
    pub access_token: String,
    /// The only Graph version path segment served.
    pub version: String,
    /// The only business phone number id served.
    pub phone_number_id: String,
}

impl Default for GraphDoubleConfig {
    fn default() -> Self {
        Self {
            access_token: "test-token".to_owned(),
            version: "v23.0".to_owned(),
            phone_number_id: "106540352242922".to_owned(),
        }
    }
}

/// One request to the double, as answered.
#[derive(Debug, Clone)]
pub struct RecordedAction {
    /// The body's `action`, or `""` when the body had none.
    pub action: String,
    /// The body's `call_id`; for a successful `connect`, the id the double assigned.
    pub call_id: Option<CallId>,
    /// The request body (`Null` when it was not JSON).
    pub body: Value,
    /// `session.sdp`, when present.
    pub sdp: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    pub received_at: Instant,
    /// Taken right before the handler returned the response: nothing the client does in reaction
    /// to the answer can happen before this instant.
    pub responded_at: Instant,
}

/// Handle to a running double. Clones share it; the server stops when the last handle is dropped
/// or on [`GraphDouble::shutdown`].
#[derive(Clone)]
pub struct GraphDouble {
    handle: Arc<Handle>,
}

struct Handle {
    state: Arc<DoubleState>,
    addr: SocketAddr,
    /// Cancelled to stop the server (shutdown or last handle dropped).
    stop: CancellationToken,
    /// Cancelled by the server task once it has stopped serving.
    stopped: CancellationToken,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Capacity of the action broadcast: a subscriber that falls this far behind sees `Lagged`.
const ACTION_CHANNEL_CAPACITY: usize = 1024;
/// Meta's limit on `biz_opaque_callback_data` (§10).
const MAX_CALLBACK_DATA_CHARS: usize = 512;

struct DoubleState {
    config: GraphDoubleConfig,
    inner: Mutex<Inner>,
    actions_tx: broadcast::Sender<RecordedAction>,
}

#[derive(Default)]
struct Inner {
    actions: Vec<RecordedAction>,
    /// Offers Meta sent for calls (registered by whoever sent the connect webhook).
    offers: HashMap<CallId, String>,
    /// The SDP of each call's successful `pre_accept`, which `accept` must repeat exactly.
    pre_accepted: HashMap<CallId, String>,
    /// Scripted failures per action: (HTTP status, Meta code), consumed front first.
    failures: HashMap<String, VecDeque<(u16, i64)>>,
    delays: HashMap<String, Duration>,
    /// Counter for `wacid.SIM<n>` ids of business-initiated calls.
    calls_placed: u64,
    /// Counter for `fbtrace_id`s.
    requests: u64,
}

impl GraphDouble {
    /// Starts the double on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: GraphDoubleConfig) -> std::io::Result<GraphDouble> {
        Self::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts the double on a given address (a bridge in another process was told where it is).
    pub async fn start_on(
        config: GraphDoubleConfig,
        addr: SocketAddr,
    ) -> std::io::Result<GraphDouble> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (actions_tx, _) = broadcast::channel(ACTION_CHANNEL_CAPACITY);
        let state = Arc::new(DoubleState {
            config,
            inner: Mutex::new(Inner::default()),
            actions_tx,
        });
        let router = Router::new()
            .route("/{version}/{phone_number_id}/calls", any(calls))
            .fallback(unknown_path)
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = CancellationToken::new();
        let server =
            axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
        let done = stopped.clone();
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::warn!(%error, "Graph API double stopped with an error");
            }
            done.cancel();
        });
        tracing::info!(%addr, "Graph API double listening");
        Ok(GraphDouble {
            handle: Arc::new(Handle {
                state,
                addr,
                stop,
                stopped,
            }),
        })
    }

    /// `http://127.0.0.1:PORT`, to use as the Graph client's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    /// Every request so far, in the order they were answered.
    pub fn actions(&self) -> Vec<RecordedAction> {
        self.handle.state.inner.lock().actions.clone()
    }

    pub fn actions_for(&self, call_id: &CallId) -> Vec<RecordedAction> {
        self.handle
            .state
            .inner
            .lock()
            .actions
            .iter()
            .filter(|a| a.call_id.as_ref() == Some(call_id))
            .cloned()
            .collect()
    }

    /// Every action once answered, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RecordedAction> {
        self.handle.state.actions_tx.subscribe()
    }

    /// Waits (with timeout) until an action with that name for that call has been answered; also returns one already recorded.
    ///
    /// Returns the first such action, whatever its status.
    pub async fn wait_for(
        &self,
        call_id: &CallId,
        action: &str,
        timeout: Duration,
    ) -> Option<RecordedAction> {
        let matches =
            |a: &RecordedAction| a.action == action && a.call_id.as_ref() == Some(call_id);
        // Subscribe before looking at the record, so nothing answered in between is missed.
        let mut rx = self.subscribe();
        let find = || self.actions().into_iter().find(|a| matches(a));
        if let Some(found) = find() {
            return Some(found);
        }
        tokio::time::timeout(timeout, async {
            loop {
                match rx.recv().await {
                    Ok(recorded) if matches(&recorded) => return Some(recorded),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(found) = find() {
                            return Some(found);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Scripted failures: the next `times` requests of `action` get HTTP `status` with a Meta error body carrying `code`.
    pub fn fail_next(&self, action: &str, times: usize, status: u16, code: i64) {
        self.handle
            .state
            .inner
            .lock()
            .failures
            .entry(action.to_owned())
            .or_default()
            .extend(std::iter::repeat_n((status, code), times));
    }

    /// Delay every answer to `action` by `delay` (to test timeouts).
    pub fn set_delay(&self, action: &str, delay: Duration) {
        self.handle
            .state
            .inner
            .lock()
            .delays
            .insert(action.to_owned(), delay);
    }

    /// Tells the double which SDP offer Meta sent for a call, so `pre_accept` and `accept`
    /// answers are validated against it (§12.2). The phone double calls this when it sends a
    /// `connect` webhook.
    pub fn register_offer(&self, call_id: &CallId, offer_sdp: &str) {
        self.handle
            .state
            .inner
            .lock()
            .offers
            .insert(call_id.clone(), offer_sdp.to_owned());
    }

    /// The offer registered for a call with [`GraphDouble::register_offer`].
    pub fn offer_for(&self, call_id: &CallId) -> Option<String> {
        self.handle.state.inner.lock().offers.get(call_id).cloned()
    }

    /// Stops accepting connections; requests in flight are still answered.
    pub fn shutdown(&self) {
        self.handle.stop.cancel();
    }

    /// Resolves once the server has stopped serving, i.e. after [`GraphDouble::shutdown`] and
    /// the requests in flight have been answered.
    pub async fn stopped(&self) {
        self.handle.stopped.cancelled().await;
    }
}

/// A Graph API error as Meta writes it (§5.3).
#[derive(Debug)]
struct MetaError {
    status: u16,
    code: i64,
    subcode: Option<i64>,
    message: String,
    details: Option<String>,
}

impl MetaError {
    fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            subcode: None,
            message: message.into(),
            details: None,
        }
    }

    fn invalid_parameter(details: impl Into<String>) -> Self {
        Self {
            details: Some(details.into()),
            ..Self::new(400, 100, "(#100) Invalid parameter")
        }
    }

    fn sdp_validation(details: impl Into<String>) -> Self {
        Self {
            details: Some(details.into()),
            ..Self::new(400, 138_008, "(#138008) SDP Validation error")
        }
    }

    /// A scripted failure, worded like Meta's error for that code where we know it (§11).
    fn scripted(status: u16, code: i64) -> Self {
        let title = match code {
            100 => "Invalid parameter",
            131_044 => "Payment method missing",
            131_055 => "Calling not allowed: SIP is enabled",
            138_000 => "Calling is not enabled for this phone number",
            138_001 => "Receiver is unable to receive calls",
            138_002 => "Concurrent call limit reached",
            138_003 => "Duplicate call: a call with this user is already active",
            138_004 => "Error connecting the call",
            138_005 => "Call rate limit exceeded",
            138_006 => "No approved call permission from the recipient",
            138_007 => "Connect timeout",
            138_008 => "SDP Validation error",
            138_012 => "Business-initiated call limit reached",
            138_013 => "Business-initiated calling is not available",
            _ => "Scripted failure",
        };
        Self {
            details: Some(title.to_owned()),
            ..Self::new(status, code, format!("(#{code}) {title}"))
        }
    }

    fn body(&self, fbtrace_id: &str) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": "OAuthException",
            "code": self.code,
            "fbtrace_id": fbtrace_id,
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = subcode.into();
        }
        if let Some(details) = &self.details {
            error["error_data"] = json!({ "messaging_product": "whatsapp", "details": details });
        }
        json!({ "error": error })
    }
}

/// Top-level fields Meta documents per action (§5.2); anything else is refused.
fn allowed_fields(action: &str) -> Option<&'static [&'static str]> {
    Some(match action {
        "pre_accept" => &["messaging_product", "action", "call_id", "session"],
        "accept" => &[
            "messaging_product",
            "action",
            "call_id",
            "session",
            "biz_opaque_callback_data",
            "recording",
            "transcription",
        ],
        "reject" | "terminate" => &["messaging_product", "action", "call_id"],
        "connect" => &[
            "messaging_product",
            "action",
            "to",
            "recipient",
            "session",
            "biz_opaque_callback_data",
            "recording",
            "transcription",
        ],
        _ => return None,
    })
}

async fn unknown_path(
    State(state): State<Arc<DoubleState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
    let error = check_token(&state.config, &headers)
        .err()
        .unwrap_or_else(|| {
            MetaError::new(
                404,
                2500,
                format!("Unknown path components: {}", uri.path()),
            )
        });
    finish(&state, received_at, &body, Err(error), None).await
}

async fn calls(
    State(state): State<Arc<DoubleState>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
    let outcome = handle_calls(&state, &version, &phone_number_id, &method, &headers, &body);
    let assigned = outcome.as_ref().ok().and_then(|(_, id)| id.clone());
    finish(
        &state,
        received_at,
        &body,
        outcome.map(|(v, _)| v),
        assigned,
    )
    .await
}

/// Applies the scripted delay, records the action and builds the response.
async fn finish(
    state: &DoubleState,
    received_at: Instant,
    raw: &[u8],
    outcome: Result<Value, MetaError>,
    assigned_call_id: Option<CallId>,
) -> Response {
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let action = body
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let delay = state.inner.lock().delays.get(&action).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let (status, response_body) = match &outcome {
        Ok(success) => (200, success.clone()),
        Err(error) => {
            let fbtrace_id = {
                let mut inner = state.inner.lock();
                inner.requests += 1;
                format!("SIM{:08}", inner.requests)
            };
            (error.status, error.body(&fbtrace_id))
        }
    };
    let call_id =
        assigned_call_id.or_else(|| body.get("call_id").and_then(Value::as_str).map(CallId::new));
    let sdp = body
        .get("session")
        .and_then(|s| s.get("sdp"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    tracing::debug!(action = %action, call_id = ?call_id, status, "Graph API double answered");
    let status_code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status_code,
        [(header::CONTENT_TYPE, "application/json")],
        response_body.to_string(),
    )
        .into_response();
    if status == 401 {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\""),
        );
    }
    let recorded = RecordedAction {
        action,
        call_id,
        body,
        sdp,
        status: status_code.as_u16(),
        received_at,
        responded_at: Instant::now(),
    };
    state.inner.lock().actions.push(recorded.clone());
    // No subscriber is fine: the action is in the record.
    let _ = state.actions_tx.send(recorded);
    response
}

fn check_token(config: &GraphDoubleConfig, headers: &HeaderMap) -> Result<(), MetaError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(header) = header else {
        return Err(MetaError::new(
            401,
            190,
            "An active access token must be used to query information about the current user.",
        ));
    };
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if token != Some(config.access_token.as_str()) {
        return Err(MetaError::new(
            401,
            190,
            "Invalid OAuth access token - Cannot parse access token",
        ));
    }
    Ok(())
}

/// Every rule of the `/calls` endpoint. On success: the response body and, for `connect`, the
/// new call id.
fn handle_calls(
    state: &DoubleState,
    version: &str,
    phone_number_id: &str,
    method: &Method,
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<(Value, Option<CallId>), MetaError> {
    let config = &state.config;
    check_token(config, headers)?;
    if version != config.version {
        return Err(MetaError::new(
            400,
            2500,
            format!("Unknown path components: /{version}/{phone_number_id}/calls"),
        ));
    }
    if phone_number_id != config.phone_number_id {
        return Err(MetaError {
            subcode: Some(33),
            ..MetaError::new(
                400,
                100,
                format!(
                    "Unsupported post request. Object with ID '{phone_number_id}' does not exist, \
                     cannot be loaded due to missing permissions, or does not support this operation."
                ),
            )
        });
    }
    if method != Method::POST {
        return Err(MetaError::new(
            400,
            100,
            format!(
                "Unsupported {} request.",
                method.as_str().to_ascii_lowercase()
            ),
        ));
    }
    let body: Value = serde_json::from_slice(raw)
        .map_err(|_| MetaError::invalid_parameter("the request body is not JSON"))?;
    let body = body
        .as_object()
        .ok_or_else(|| MetaError::invalid_parameter("the request body is not a JSON object"))?;
    let action = body
        .get("action")
        .and_then(Value::as_str)
        .ok_or_else(|| MetaError::invalid_parameter("action is required"))?;
    let allowed = allowed_fields(action)
        .ok_or_else(|| MetaError::invalid_parameter(format!("unknown action {action:?}")))?;

    if let Some((status, code)) = state
        .inner
        .lock()
        .failures
        .get_mut(action)
        .and_then(VecDeque::pop_front)
    {
        return Err(MetaError::scripted(status, code));
    }

    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(MetaError::invalid_parameter(
            "messaging_product must be \"whatsapp\"",
        ));
    }
    if let Some(extra) = body.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(MetaError::invalid_parameter(format!(
            "unexpected parameter {extra:?} for action {action}"
        )));
    }
    if let Some(data) = body.get("biz_opaque_callback_data") {
        match data.as_str() {
            Some(data) if data.chars().count() <= MAX_CALLBACK_DATA_CHARS => {}
            _ => {
                return Err(MetaError::invalid_parameter(format!(
                    "biz_opaque_callback_data must be a string of at most {MAX_CALLBACK_DATA_CHARS} characters"
                )));
            }
        }
    }

    if action == "connect" {
        return connect(state, body);
    }
    let call_id = body
        .get("call_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(CallId::new)
        .ok_or_else(|| MetaError::invalid_parameter("call_id is required"))?;
    if matches!(action, "pre_accept" | "accept") {
        let sdp = session_sdp(body, "answer")?;
        let mut inner = state.inner.lock();
        if let Some(offer) = inner.offers.get(&call_id)
            && let Err(problems) = sdp::validate_answer(offer, sdp)
        {
            return Err(MetaError::sdp_validation(problems.join("; ")));
        }
        if action == "pre_accept" {
            inner.pre_accepted.insert(call_id, sdp.to_owned());
        } else if let Some(pre_accepted) = inner.pre_accepted.get(&call_id)
            && pre_accepted != sdp
        {
            return Err(MetaError::invalid_parameter(
                "the SDP in accept is not identical to the SDP sent with pre_accept",
            ));
        }
    }
    Ok((
        json!({ "messaging_product": "whatsapp", "success": true }),
        None,
    ))
}

fn connect(
    state: &DoubleState,
    body: &Map<String, Value>,
) -> Result<(Value, Option<CallId>), MetaError> {
    let to = body.get("to").and_then(Value::as_str).unwrap_or("");
    let recipient = body.get("recipient").and_then(Value::as_str).unwrap_or("");
    let to_is_number = !to.is_empty()
        && to
            .trim_start_matches('+')
            .bytes()
            .all(|b| b.is_ascii_digit());
    if !to_is_number && recipient.is_empty() {
        return Err(MetaError::invalid_parameter(
            "to (the user's phone number) or recipient is required",
        ));
    }
    let sdp = session_sdp(body, "offer")?;
    if let Err(problems) = sdp::validate_offer(sdp) {
        return Err(MetaError::sdp_validation(problems.join("; ")));
    }
    let call_id = {
        let mut inner = state.inner.lock();
        inner.calls_placed += 1;
        CallId::new(format!("wacid.SIM{}", inner.calls_placed))
    };
    let response =
        json!({ "messaging_product": "whatsapp", "calls": [{ "id": call_id.as_str() }] });
    Ok((response, Some(call_id)))
}

/// `session.sdp`, after checking `session.sdp_type` is `expected`.
fn session_sdp<'a>(body: &'a Map<String, Value>, expected: &str) -> Result<&'a str, MetaError> {
    let session = body
        .get("session")
        .and_then(Value::as_object)
        .ok_or_else(|| MetaError::invalid_parameter("session is required"))?;
    let sdp = session
        .get("sdp")
        .and_then(Value::as_str)
        .filter(|sdp| !sdp.is_empty())
        .ok_or_else(|| MetaError::invalid_parameter("session.sdp must be the SDP as a string"))?;
    match session.get("sdp_type").and_then(Value::as_str) {
        Some(t) if t == expected => Ok(sdp),
        other => Err(MetaError::sdp_validation(format!(
            "session.sdp_type must be {expected:?}, found {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use bridge::ids::PhoneNumber;
    use bridge::whatsapp::graph::{GraphClient, GraphConfig, GraphError};

    const WAIT: Duration = Duration::from_secs(5);

    use testkit::fixtures::{META_ANSWER as ANSWER, meta_offer as offer};

    fn bic_offer() -> String {
        ANSWER.replace("a=setup:active", "a=setup:actpass")
    }

    fn call() -> CallId {
        CallId::new(
            "wacid.HBgMNDQ3NzAwOTAwMTIzFQIAEhggN0ExQzlEMkU0QjZGOEEwQzNFNUQ3RjlCMUQzRTVGN0EcGAsxNTU1MDAwMTExMRUCABUKAA==",
        )
    }

    async fn double() -> GraphDouble {
        GraphDouble::start(GraphDoubleConfig::default())
            .await
            .unwrap()
    }

    fn client_with(double: &GraphDouble, token: &str, timeout: Duration) -> GraphClient {
        let config = GraphDoubleConfig::default();
        GraphClient::new(GraphConfig {
            base_url: double.base_url(),
            version: config.version,
            phone_number_id: config.phone_number_id,
            access_token: SecretString::from(token),
            timeout,
        })
    }

    fn client(double: &GraphDouble) -> GraphClient {
        client_with(double, "test-token", WAIT)
    }

    /// Posts a raw body with the right token to `path` and returns status and JSON body.
    async fn post(double: &GraphDouble, path: &str, body: &str) -> (u16, Value) {
        post_with(double, path, Some("Bearer test-token"), body).await
    }

    async fn post_with(
        double: &GraphDouble,
        path: &str,
        authorization: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", double.base_url()))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap();
        (status, body)
    }

    const CALLS: &str = "/v23.0/106540352242922/calls";

    fn error_code(body: &Value) -> i64 {
        body["error"]["code"].as_i64().unwrap()
    }

    fn details(body: &Value) -> &str {
        body["error"]["error_data"]["details"]
            .as_str()
            .unwrap_or("")
    }

    #[tokio::test]
    async fn a_user_initiated_call_is_pre_accepted_accepted_and_terminated() {
        let double = double().await;
        assert_eq!(double.offer_for(&call()), None);
        double.register_offer(&call(), &offer());
        assert_eq!(double.offer_for(&call()), Some(offer()));
        let client = client(&double);
        client.pre_accept(&call(), ANSWER).await.unwrap();
        client
            .accept(&call(), ANSWER, Some("sess-7f3a"))
            .await
            .unwrap();
        let returned_at = Instant::now();
        client.terminate(&call()).await.unwrap();

        let actions = double.actions_for(&call());
        let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(names, ["pre_accept", "accept", "terminate"]);
        assert!(actions.iter().all(|a| a.status == 200));
        assert_eq!(actions[0].sdp.as_deref(), Some(ANSWER));
        assert_eq!(actions[1].body["biz_opaque_callback_data"], "sess-7f3a");
        assert!(actions[1].received_at <= actions[1].responded_at);
        assert!(actions[1].responded_at <= returned_at);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_is_refused_with_oauth_error_190() {
        let double = double().await;
        let error = client_with(&double, "wrong", WAIT)
            .terminate(&call())
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                GraphError::Api {
                    status: 401,
                    code: 190,
                    ..
                }
            ),
            "{error:?}"
        );

        let body = r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"terminate"}"#;
        let (status, response) = post_with(&double, CALLS, None, body).await;
        assert_eq!(status, 401);
        assert_eq!(response["error"]["type"], "OAuthException");
        assert_eq!(error_code(&response), 190);
        assert!(response["error"]["fbtrace_id"].is_string());
        let (status, _) = post_with(&double, CALLS, Some("Basic test-token"), body).await;
        assert_eq!(status, 401);
        assert!(double.actions().iter().all(|a| a.status == 401));
    }

    #[tokio::test]
    async fn wrong_paths_are_refused_in_metas_shape() {
        let double = double().await;
        let body = r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"terminate"}"#;
        let (status, response) = post(&double, "/v19.0/106540352242922/calls", body).await;
        assert_eq!((status, error_code(&response)), (400, 2500));
        let (status, response) = post(&double, "/v23.0/999/calls", body).await;
        assert_eq!((status, error_code(&response)), (400, 100));
        assert_eq!(response["error"]["error_subcode"], 33);
        let (status, response) = post(&double, "/v23.0/106540352242922/messages", body).await;
        assert_eq!((status, error_code(&response)), (404, 2500));
        let response = reqwest::Client::new()
            .get(format!("{}{CALLS}", double.base_url()))
            .bearer_auth("test-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
    }

    #[tokio::test]
    async fn malformed_bodies_get_invalid_parameter() {
        let double = double().await;
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            (
                r#"{"messaging_product":"whatsapp","call_id":"wacid.X"}"#,
                "action",
            ),
            (
                r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"hold"}"#,
                "unknown action",
            ),
            (
                r#"{"call_id":"wacid.X","action":"terminate"}"#,
                "messaging_product",
            ),
            (
                r#"{"messaging_product":"sms","call_id":"wacid.X","action":"terminate"}"#,
                "messaging_product",
            ),
            (
                r#"{"messaging_product":"whatsapp","action":"terminate"}"#,
                "call_id",
            ),
            (
                r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"terminate","to":"447700900123"}"#,
                "unexpected parameter \"to\"",
            ),
            (
                r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"pre_accept"}"#,
                "session is required",
            ),
            (
                r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"pre_accept","session":{"sdp_type":"answer","sdp":{"sdp":"v=0"}}}"#,
                "session.sdp",
            ),
            (
                r#"{"messaging_product":"whatsapp","call_id":"wacid.X","action":"reject","connection":{"webrtc":{"sdp":"v=0"}}}"#,
                "unexpected parameter \"connection\"",
            ),
        ];
        for (body, needle) in cases {
            let (status, response) = post(&double, CALLS, body).await;
            assert_eq!(status, 400, "{body}");
            assert_eq!(error_code(&response), 100, "{body}");
            assert_eq!(response["error"]["message"], "(#100) Invalid parameter");
            assert!(details(&response).contains(needle), "{body}: {response}");
        }
    }

    #[tokio::test]
    async fn callback_data_longer_than_512_characters_is_refused() {
        let double = double().await;
        let client = client(&double);
        let long = "é".repeat(513);
        let error = client
            .accept(&call(), ANSWER, Some(&long))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(100));
        client
            .accept(&call(), ANSWER, Some(&"é".repeat(512)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn answers_must_be_answers() {
        let double = double().await;
        let body = json!({
            "messaging_product": "whatsapp",
            "call_id": call().as_str(),
            "action": "pre_accept",
            "session": { "sdp_type": "offer", "sdp": ANSWER },
        });
        let (status, response) = post(&double, CALLS, &body.to_string()).await;
        assert_eq!((status, error_code(&response)), (400, 138_008));
        assert!(details(&response).contains("sdp_type"), "{response}");
    }

    #[tokio::test]
    async fn answers_are_validated_against_a_registered_offer() {
        let double = double().await;
        let client = client(&double);
        let bad = ANSWER
            .replace("a=setup:active", "a=setup:passive")
            .replace("a=mid:audio", "a=mid:0");

        // Without a known offer only the shape of the request is checked.
        let unknown = CallId::new("wacid.UNKNOWN");
        client.pre_accept(&unknown, &bad).await.unwrap();

        double.register_offer(&call(), &offer());
        let error = client.pre_accept(&call(), &bad).await.unwrap_err();
        let GraphError::Api {
            status,
            code,
            details,
            ..
        } = &error
        else {
            panic!("expected an API error, got {error:?}");
        };
        assert_eq!((*status, *code), (400, 138_008));
        let details = details.as_deref().unwrap_or("");
        assert!(details.contains("a=setup must be active"), "{details}");
        assert!(details.contains("a=mid"), "{details}");
        let error = client.accept(&call(), &bad, None).await.unwrap_err();
        assert_eq!(error.code(), Some(138_008));
    }

    #[tokio::test]
    async fn accept_must_repeat_the_pre_accept_sdp_byte_for_byte() {
        let double = double().await;
        double.register_offer(&call(), &offer());
        let client = client(&double);
        client.pre_accept(&call(), ANSWER).await.unwrap();
        let other = ANSWER.replace("2859301122", "2859301123");
        let error = client.accept(&call(), &other, None).await.unwrap_err();
        let GraphError::Api { code, details, .. } = &error else {
            panic!("expected an API error, got {error:?}");
        };
        assert_eq!(*code, 100);
        assert!(details.as_deref().unwrap_or("").contains("pre_accept"));
        client.accept(&call(), ANSWER, None).await.unwrap();
    }

    #[tokio::test]
    async fn connect_assigns_new_call_ids() {
        let double = double().await;
        let client = client(&double);
        let user = PhoneNumber::new("447700900123");
        let first = client
            .connect(&user, &bic_offer(), Some("job-42"))
            .await
            .unwrap();
        let second = client.connect(&user, &bic_offer(), None).await.unwrap();
        assert_eq!(first, CallId::new("wacid.SIM1"));
        assert_eq!(second, CallId::new("wacid.SIM2"));
        let recorded = double.actions_for(&first);
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].action, "connect");
        assert_eq!(recorded[0].body["to"], "447700900123");

        let (status, response) = post(
            &double,
            CALLS,
            &json!({
                "messaging_product": "whatsapp",
                "to": "447700900123",
                "action": "connect",
                "session": { "sdp_type": "offer", "sdp": bic_offer() },
            })
            .to_string(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            response,
            json!({ "messaging_product": "whatsapp", "calls": [{ "id": "wacid.SIM3" }] })
        );
    }

    #[tokio::test]
    async fn connect_refuses_bad_offers_and_missing_recipients() {
        let double = double().await;
        let client = client(&double);
        let user = PhoneNumber::new("447700900123");
        let error = client.connect(&user, ANSWER, None).await.unwrap_err();
        let GraphError::Api { code, details, .. } = &error else {
            panic!("expected an API error, got {error:?}");
        };
        assert_eq!(*code, 138_008);
        assert!(details.as_deref().unwrap_or("").contains("actpass"));

        let body = json!({
            "messaging_product": "whatsapp",
            "action": "connect",
            "session": { "sdp_type": "offer", "sdp": bic_offer() },
        });
        let (status, response) = post(&double, CALLS, &body.to_string()).await;
        assert_eq!((status, error_code(&response)), (400, 100));
        assert!(double.actions().iter().all(|a| a.call_id.is_none()));
    }

    #[tokio::test]
    async fn success_bodies_are_metas() {
        let double = double().await;
        let body =
            json!({ "messaging_product": "whatsapp", "call_id": "wacid.X", "action": "reject" });
        let (status, response) = post(&double, CALLS, &body.to_string()).await;
        assert_eq!(status, 200);
        assert_eq!(
            response,
            json!({ "messaging_product": "whatsapp", "success": true })
        );
    }

    #[tokio::test]
    async fn scripted_failures_are_served_then_stop() {
        let double = double().await;
        let client = client(&double);
        double.fail_next("terminate", 2, 503, 138_004);
        client.terminate(&call()).await.unwrap();
        let statuses: Vec<u16> = double
            .actions_for(&call())
            .iter()
            .map(|a| a.status)
            .collect();
        assert_eq!(statuses, [503, 503, 200]);

        double.fail_next("connect", 1, 401, 138_006);
        let user = PhoneNumber::new("447700900123");
        let error = client.connect(&user, &bic_offer(), None).await.unwrap_err();
        let GraphError::Api {
            status,
            code,
            message,
            fbtrace_id,
            ..
        } = &error
        else {
            panic!("expected an API error, got {error:?}");
        };
        assert_eq!((*status, *code), (401, 138_006));
        assert_eq!(
            message,
            "(#138006) No approved call permission from the recipient"
        );
        assert!(fbtrace_id.is_some());
        client.connect(&user, &bic_offer(), None).await.unwrap();
    }

    #[tokio::test]
    async fn delayed_answers_make_the_client_time_out() {
        let double = double().await;
        double.set_delay("connect", Duration::from_secs(3));
        let impatient = client_with(&double, "test-token", Duration::from_millis(100));
        let user = PhoneNumber::new("447700900123");
        let error = impatient
            .connect(&user, &bic_offer(), None)
            .await
            .unwrap_err();
        assert!(matches!(error, GraphError::Timeout), "{error:?}");
    }

    #[tokio::test]
    async fn delays_hold_the_answer_back() {
        let double = double().await;
        let delay = Duration::from_millis(50);
        double.set_delay("reject", delay);
        client(&double).reject(&call()).await.unwrap();
        let recorded = double.wait_for(&call(), "reject", WAIT).await.unwrap();
        assert!(recorded.responded_at - recorded.received_at >= delay);
    }

    #[tokio::test]
    async fn wait_for_sees_past_and_future_actions_and_gives_up_on_time() {
        let double = double().await;
        let client = client(&double);
        client.reject(&call()).await.unwrap();
        let past = double.wait_for(&call(), "reject", WAIT).await.unwrap();
        assert_eq!(past.status, 200);

        let waiter = {
            let double = double.clone();
            tokio::spawn(async move { double.wait_for(&call(), "terminate", WAIT).await })
        };
        // The waiter may subscribe before or after the request: both must work.
        client.terminate(&call()).await.unwrap();
        let future = waiter.await.unwrap().unwrap();
        assert_eq!(future.action, "terminate");

        let never = double
            .wait_for(&call(), "accept", Duration::from_millis(20))
            .await;
        assert!(never.is_none());
    }

    #[tokio::test]
    async fn subscribers_see_every_answered_action() {
        let double = double().await;
        let mut rx = double.subscribe();
        let client = client(&double);
        client.reject(&call()).await.unwrap();
        client_with(&double, "wrong", WAIT)
            .reject(&call())
            .await
            .unwrap_err();
        let first = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let second = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first.action.as_str(), first.status), ("reject", 200));
        assert_eq!((second.action.as_str(), second.status), ("reject", 401));
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let double = double().await;
        let base_url = double.base_url();
        let stopped = double.handle.stopped.clone();
        double.shutdown();
        tokio::time::timeout(WAIT, stopped.cancelled())
            .await
            .unwrap();
        assert!(reqwest::Client::new().post(base_url).send().await.is_err());
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_server() {
        let double = double().await;
        let clone = double.clone();
        let stopped = double.handle.stopped.clone();
        drop(double);
        assert!(!stopped.is_cancelled());
        client(&clone).reject(&call()).await.unwrap();
        drop(clone);
        tokio::time::timeout(WAIT, stopped.cancelled())
            .await
            .unwrap();
    }
}
