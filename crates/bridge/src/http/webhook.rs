//! `GET /webhook` (subscription handshake) and `POST /webhook` (signed call events).
//!
//! The signature is checked over the raw bytes before anything is parsed. Each event goes to
//! [`Calls`](crate::call::calls::Calls) without waiting for any call work: an offer is answered
//! (or refused and declined: 200 with the refusal in the body), a `terminate` reaches its call
//! on whichever replica owns it, an answer or status reaches the call we placed. This file only
//! verifies, parses and maps outcomes to HTTP.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::{debug, info, warn};

use super::{AppState, error_response};
use crate::call::CallCommand;
use crate::call::calls::{InboundOffer, Offered};
use crate::call::registry::{Refusal, RefusalReason};
use crate::ids::{CallId, LogSafe, PhoneNumber};
use crate::whatsapp::signature::{self, SIGNATURE_HEADER};
use crate::whatsapp::webhook::{
    self, CallStatus, ConnectEvent, Direction, RefusedElement, SdpType, StatusEvent,
    TerminateEvent, WebhookError, WebhookEvent,
};

/// A `connect` older than this cannot be answered any more (§3.3): it is logged, not acted on.
const STALE_CONNECT: Duration = Duration::from_secs(60);
/// `Retry-After` on a refusal, in seconds.
const RETRY_AFTER_SECONDS: &str = "5";

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
    log_skipped(&state, &parsed.ignored, &parsed.refused);
    let mut refusal = None;
    let mut call_errors = Vec::new();
    for event in parsed.events {
        match event {
            WebhookEvent::Connect(connect) => {
                if let Some(refused) = on_connect(&state, connect).await {
                    refusal.get_or_insert(refused);
                }
            }
            WebhookEvent::Terminate(terminate) => {
                on_terminate(&state, terminate, &mut call_errors).await;
            }
            WebhookEvent::Status(status) => on_status(&state, status).await,
            // Messages (§4.6): each opens the user's 24-hour customer-service window.
            WebhookEvent::PermissionReply(reply) => {
                info!(
                    user = %reply.user,
                    accepted = reply.accepted,
                    permanent = reply.permanent,
                    source = %LogSafe::new(&reply.source),
                    "call permission reply received"
                );
                note_message(&state, &reply.user, reply.timestamp).await;
            }
            WebhookEvent::UserMessage(message) => {
                debug!(user = %message.user, kind = %LogSafe::new(&message.kind), "user message received");
                note_message(&state, &message.user, message.timestamp).await;
            }
        }
    }
    log_call_errors(&call_errors);
    match refusal {
        // Declined with `reject`: Meta is told the call is over, so a redelivery (to this or
        // any other replica) would be pointless. 200, with the refusal in the body.
        Some((refusal, true)) => {
            count(refusal.reason.as_str());
            (
                StatusCode::OK,
                Json(json!({
                    "status": "refused",
                    "reason": refusal.reason.as_str(),
                    "active_calls": refusal.active_calls,
                    "max_calls": refusal.max_calls,
                })),
            )
                .into_response()
        }
        // Not declined (too many rejects in flight): 503 invites Meta to deliver the call
        // again, perhaps to a replica with room.
        Some((refusal, false)) => {
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

/// Answers an offered call, or refuses it. Returns the refusal for the response, and whether
/// the call was declined with `reject`.
async fn on_connect(state: &AppState, connect: ConnectEvent) -> Option<(Refusal, bool)> {
    let received_at = Instant::now();
    if !is_ours(state, &connect.phone_number_id, &connect.call_id) {
        return None;
    }
    if connect.direction == Direction::BusinessInitiated
        || connect.session.sdp_type == SdpType::Answer
    {
        // Meta's answer to a call we placed.
        let answer = CallCommand::RemoteAnswer(connect.session.sdp);
        state.calls.deliver(&connect.call_id, answer).await;
        return None;
    }
    if let Some(timestamp) = connect.timestamp
        && unix_now().saturating_sub(timestamp) > STALE_CONNECT.as_secs()
    {
        warn!(call_id = %connect.call_id, age_s = unix_now().saturating_sub(timestamp), "stale connect not answered");
        return None;
    }
    let caller = connect.user.clone();
    let offered = state
        .calls
        .answer(InboundOffer {
            call_id: connect.call_id,
            caller: connect.user,
            caller_name: connect.user_name,
            sdp: connect.session.sdp,
            received_at,
        })
        .await;
    match offered {
        Offered::Refused { refusal, declined } => {
            // A caller turned away for lack of room is told and called back.
            if matches!(
                refusal.reason,
                RefusalReason::AtCapacity | RefusalReason::NoUdpPort
            ) && let Some(caller) = caller
            {
                state.outreach.caller_refused_at_capacity(caller);
            }
            Some((refusal, declined))
        }
        Offered::Started | Offered::Duplicate | Offered::Ended => None,
    }
}

/// Records that the user wrote to the business at `timestamp` (UNIX seconds; now when absent or
/// in the future): it opens the 24-hour window for free-form messages.
async fn note_message(state: &AppState, user: &PhoneNumber, timestamp: Option<u64>) {
    let now = chrono::Utc::now();
    let at = timestamp
        .and_then(|secs| chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0))
        .filter(|at| *at <= now)
        .unwrap_or(now);
    let store = &state.calls.context().store;
    if let Err(err) = store.note_caller_message(user, at).await {
        state
            .metrics
            .store_errors
            .with_label_values(&["note_caller_message"])
            .inc();
        warn!(user = %user, %err, "the user's message could not be recorded");
    }
}

/// Ends the call; its errors join `call_errors`, logged once for the whole delivery.
async fn on_terminate(
    state: &AppState,
    terminate: TerminateEvent,
    call_errors: &mut Vec<(CallId, WebhookError)>,
) {
    if !is_ours(state, &terminate.phone_number_id, &terminate.call_id) {
        return;
    }
    call_errors.extend(
        terminate
            .errors
            .into_iter()
            .map(|error| (terminate.call_id.clone(), error)),
    );
    state.calls.remote_terminated(&terminate.call_id).await;
}

/// Items named in one summary line; the rest are only counted.
const LOGGED_ITEMS: usize = 3;
/// Characters of one item in a summary line.
const LOGGED_ITEM_CHARS: usize = 200;

/// `first; second; third (and N more)`, each item escaped and cut short.
fn summary<T: AsRef<str>>(items: &[T]) -> String {
    let mut line = items
        .iter()
        .take(LOGGED_ITEMS)
        .map(|item| LogSafe::truncated(item.as_ref(), LOGGED_ITEM_CHARS).to_string())
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > LOGGED_ITEMS {
        line.push_str(&format!(" (and {} more)", items.len() - LOGGED_ITEMS));
    }
    line
}

/// One line for the delivery's ignored elements and one for its refused ones, however many.
fn log_skipped(state: &AppState, ignored: &[String], refused: &[RefusedElement]) {
    if !ignored.is_empty() {
        info!(count = ignored.len(), elements = %summary(ignored), "webhook elements ignored");
    }
    if refused.is_empty() {
        return;
    }
    for element in refused {
        state
            .metrics
            .webhook_events_refused
            .with_label_values(&[element.reason.as_str()])
            .inc();
    }
    let lines: Vec<String> = refused
        .iter()
        .map(|element| format!("{}: {}", element.at, element.reason.as_str()))
        .collect();
    warn!(count = refused.len(), elements = %summary(&lines), "webhook elements refused: over a limit");
}

/// One warning for every error Meta reported on the delivery's terminates.
fn log_call_errors(call_errors: &[(CallId, WebhookError)]) {
    if call_errors.is_empty() {
        return;
    }
    let lines: Vec<String> = call_errors
        .iter()
        .map(|(call_id, error)| {
            let details = error
                .details
                .as_deref()
                .or(error.message.as_deref())
                .unwrap_or("");
            format!("{call_id} code {} {details}", error.code)
        })
        .collect();
    warn!(count = call_errors.len(), errors = %summary(&lines), "calls ended with errors");
}

async fn on_status(state: &AppState, status: StatusEvent) {
    if !is_ours(state, &status.phone_number_id, &status.call_id) {
        return;
    }
    let command = match status.status {
        CallStatus::Accepted => CallCommand::RemoteAccepted,
        CallStatus::Rejected => CallCommand::RemoteRejected,
        CallStatus::Ringing | CallStatus::Other(_) => return,
    };
    state.calls.deliver(&status.call_id, command).await;
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
