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
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use bridge::ids::CallId;

use self::meta_error::MetaError;

mod calls;
mod meta_error;
#[cfg(test)]
mod tests;

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
            .route("/{version}/{phone_number_id}/calls", any(calls::calls))
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
