//! `GET /webhook` (subscription handshake) and `POST /webhook` (signed call events).
//!
//! The signature is checked over the raw bytes before anything is parsed. Each event is routed
//! without waiting for any call work: a `connect` is admitted (or refused with `reject` and
//! 503) and handed to a new call task, a `terminate` is passed to its call or remembered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use parking_lot::Mutex;
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{AppState, error_response};
use crate::call::task::{CallContext, InboundCall, spawn_inbound};
use crate::call::{CallCommand, CallDirection};
use crate::ids::CallId;
use crate::registry::{AdmitResult, Refusal, RefusalReason};
use crate::whatsapp::signature::{self, SIGNATURE_HEADER};
use crate::whatsapp::webhook::{
    self, CallStatus, ConnectEvent, Direction, SdpType, StatusEvent, TerminateEvent, WebhookEvent,
};

/// A `connect` older than this cannot be answered any more (§3.3): it is logged, not acted on.
const STALE_CONNECT: Duration = Duration::from_secs(60);
/// `Retry-After` on a refusal, in seconds.
const RETRY_AFTER_SECONDS: &str = "5";
/// Bound on the `reject` of a refused call.
const REJECT_TIMEOUT: Duration = Duration::from_secs(12);
/// `reject`s of refused calls in flight at once. A flood of connects at capacity (or a slow
/// Graph API) must not grow tasks without bound; past this, a refused call is not declined
/// (Meta ends it on its own) and `whatsapp_bridge_rejects_skipped_total` counts it.
pub const MAX_REJECTS_IN_FLIGHT: usize = 256;
/// At most one warning line about refused calls per this period; each refusal is a debug line.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// What the bridge does about refused calls besides answering 503: a bounded number of
/// background `reject`s, and a warning that summarises rather than floods.
pub struct Refusals {
    rejects: Arc<Semaphore>,
    log: Mutex<RefusalLog>,
}

#[derive(Default)]
struct RefusalLog {
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            rejects: Arc::new(Semaphore::new(MAX_REJECTS_IN_FLIGHT)),
            log: Mutex::new(RefusalLog::default()),
        }
    }
}

impl Refusals {
    /// Logs a refusal: a warning for the first one and then at most one per period, with the
    /// number refused since the last warning.
    fn note(&self, call_id: &CallId, reason: &str) {
        debug!(%call_id, reason, "call refused");
        let now = Instant::now();
        let mut log = self.log.lock();
        log.unreported += 1;
        if log
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_PERIOD)
        {
            warn!(
                refused = log.unreported,
                latest_reason = reason,
                "calls refused since the last report"
            );
            log.last_warning = Some(now);
            log.unreported = 0;
        }
    }
}

/// The subscription handshake (§3.1).
pub async fn verify(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (Some(mode), Some(challenge), Some(token)) = (
        params.get("hub.mode"),
        params.get("hub.challenge"),
        params.get("hub.verify_token"),
    ) else {
        return (StatusCode::BAD_REQUEST, "missing hub parameters").into_response();
    };
    let expected = state.webhook.verify_token.expose_secret().as_bytes();
    if mode == "subscribe" && constant_time_eq(token.as_bytes(), expected) {
        info!("webhook subscription verified");
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            challenge.clone(),
        )
            .into_response();
    }
    warn!("webhook verification refused");
    (StatusCode::FORBIDDEN, "verification failed").into_response()
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Event delivery (§3.2–§4).
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let count = |result: &str| {
        state
            .metrics
            .webhook_requests
            .with_label_values(&[result])
            .inc()
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            count(if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "bad_request"
            });
            return error_response(status, "unreadable body");
        }
    };
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    let secret = state.webhook.app_secret.expose_secret().as_bytes();
    if let Err(err) = signature::verify(secret, &body, header) {
        count("unauthorized");
        warn!(%err, "webhook signature refused");
        return error_response(StatusCode::UNAUTHORIZED, "invalid signature");
    }
    let parsed = match webhook::parse(&body) {
        Ok(parsed) => parsed,
        Err(err) => {
            count("bad_request");
            warn!(%err, "webhook body is not valid JSON");
            return error_response(StatusCode::BAD_REQUEST, "invalid JSON");
        }
    };
    for ignored in &parsed.ignored {
        info!(reason = %ignored, "webhook element ignored");
    }
    let mut refusal = None;
    for event in parsed.events {
        match event {
            WebhookEvent::Connect(connect) => {
                if let Some(refused) = on_connect(&state, connect) {
                    refusal.get_or_insert(refused);
                }
            }
            WebhookEvent::Terminate(terminate) => on_terminate(&state, terminate),
            WebhookEvent::Status(status) => on_status(&state, status),
        }
    }
    match refusal {
        Some(refusal) => {
            count(refusal.reason.as_str());
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "error": refusal.reason.as_str(),
                    "active_calls": refusal.active_calls,
                    "max_calls": refusal.max_calls,
                })),
            )
                .into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
            response
        }
        None => {
            count("ok");
            StatusCode::OK.into_response()
        }
    }
}

fn is_ours(state: &AppState, phone_number_id: &str, call_id: &CallId) -> bool {
    if phone_number_id == state.webhook.phone_number_id {
        return true;
    }
    info!(%call_id, "event for another phone number id ignored");
    false
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Admits and starts an inbound call, or refuses it. Returns the refusal for the response.
fn on_connect(state: &AppState, connect: ConnectEvent) -> Option<Refusal> {
    let received_at = Instant::now();
    if !is_ours(state, &connect.phone_number_id, &connect.call_id) {
        return None;
    }
    if connect.direction == Direction::BusinessInitiated
        || connect.session.sdp_type == SdpType::Answer
    {
        // Meta's answer to a call we placed.
        deliver(
            state,
            &connect.call_id,
            CallCommand::RemoteAnswer(connect.session.sdp),
        );
        return None;
    }
    if let Some(timestamp) = connect.timestamp
        && unix_now().saturating_sub(timestamp) > STALE_CONNECT.as_secs()
    {
        warn!(call_id = %connect.call_id, age_s = unix_now().saturating_sub(timestamp), "stale connect not answered");
        return None;
    }
    let call_id = connect.call_id.clone();
    let result = state
        .registry
        .admit(&call_id, CallDirection::Inbound, connect.user.as_ref());
    match result {
        AdmitResult::Admitted(admission, commands) => {
            let port = match &state.ports {
                None => None,
                Some(pool) => match pool.lease() {
                    Some(port) => Some(port),
                    None => {
                        drop(admission);
                        state.registry.count_refusal(RefusalReason::NoUdpPort);
                        state
                            .refusals
                            .note(&call_id, RefusalReason::NoUdpPort.as_str());
                        let refusal = Refusal {
                            reason: RefusalReason::NoUdpPort,
                            active_calls: state.registry.active_calls(),
                            max_calls: state.registry.max_calls(),
                        };
                        reject_in_background(state, call_id);
                        return Some(refusal);
                    }
                },
            };
            info!(%call_id, caller = ?connect.user, "call admitted");
            spawn_inbound(
                CallContext::clone(&state.calls),
                InboundCall {
                    admission,
                    commands,
                    offer_sdp: connect.session.sdp,
                    caller_name: connect.user_name,
                    port,
                    received_at,
                },
                &state.tracker,
            );
            None
        }
        AdmitResult::Duplicate => {
            debug!(%call_id, "duplicate connect ignored");
            None
        }
        AdmitResult::Tombstoned => {
            info!(%call_id, "connect for an ended or refused call ignored");
            None
        }
        AdmitResult::Refused(refusal) => {
            state.refusals.note(&call_id, refusal.reason.as_str());
            reject_in_background(state, call_id);
            Some(refusal)
        }
    }
}

/// Declines a refused call without holding up the webhook response (§7.1: reject promptly
/// rather than let the caller ring).
fn reject_in_background(state: &AppState, call_id: CallId) {
    let Ok(permit) = state.refusals.rejects.clone().try_acquire_owned() else {
        state.metrics.rejects_skipped.inc();
        debug!(%call_id, "reject not sent: too many in flight");
        return;
    };
    let graph = state.calls.graph.clone();
    state.tracker.spawn(async move {
        let result = tokio::time::timeout(REJECT_TIMEOUT, graph.reject(&call_id)).await;
        drop(permit);
        if !matches!(result, Ok(Ok(()))) {
            warn!(%call_id, "reject of a refused call failed");
        }
    });
}

fn on_terminate(state: &AppState, terminate: TerminateEvent) {
    if !is_ours(state, &terminate.phone_number_id, &terminate.call_id) {
        return;
    }
    for error in &terminate.errors {
        warn!(call_id = %terminate.call_id, code = error.code, details = ?error.details, "call ended with an error");
    }
    match state.registry.get(&terminate.call_id) {
        Some(handle) => {
            if handle
                .commands
                .try_send(CallCommand::RemoteTerminated)
                .is_err()
            {
                // The call's queue is full or it is ending already; make sure it stops.
                handle.cancel.cancel();
            }
        }
        None => {
            debug!(call_id = %terminate.call_id, "terminate for a call not live; remembered");
            state.registry.tombstone(&terminate.call_id);
        }
    }
}

fn on_status(state: &AppState, status: StatusEvent) {
    if !is_ours(state, &status.phone_number_id, &status.call_id) {
        return;
    }
    if status.status == CallStatus::Accepted {
        deliver(state, &status.call_id, CallCommand::RemoteAccepted);
    }
}

/// Hands a command to a live outbound call, or keeps it for a call whose `connect` response
/// has not come back yet (Meta's webhook can be faster than its own API response).
fn deliver(state: &AppState, call_id: &CallId, command: CallCommand) {
    match state.registry.get(call_id) {
        Some(handle) => {
            if handle.commands.try_send(command).is_err() {
                warn!(%call_id, "call command queue full; command dropped");
            }
        }
        None => {
            if !state.registry.hold_for_unknown(call_id, command) {
                debug!(%call_id, "command for an ended call ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"vibecoding", b"vibecoding"));
        assert!(!constant_time_eq(b"vibecoding", b"vibecodinG"));
        assert!(!constant_time_eq(b"vibe", b"vibecoding"));
    }
}
