//! The `/calls` endpoint (§5.2): every rule Meta applies to the call actions, and for `connect`
//! the per-user rules of business-initiated calls (§7.2, §10): a usable permission (138006),
//! the daily limit of connected calls (138012), one live call per user (138003).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::meta_error::MetaError;
use super::records::RecordedAction;
use super::state::{DoubleState, check_target, check_token, respond, scripted_delay};
use bridge::ids::{CallId, PhoneNumber};
use bridge::whatsapp::sdp;

/// Meta's limit on `biz_opaque_callback_data` (§10).
const MAX_CALLBACK_DATA_CHARS: usize = 512;

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

pub(super) async fn calls(
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
    check_target(
        &state.config,
        (version, phone_number_id, "calls"),
        method,
        Method::POST,
        headers,
    )?;
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

    if let Some(failure) = state.inner.lock().scripted_failure(action) {
        return Err(failure);
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
    if action == "terminate" {
        // The business ended the call: the user is free for the next one.
        state
            .inner
            .lock()
            .active_calls
            .retain(|_, active| *active != call_id);
    }
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
    let user = if to_is_number {
        PhoneNumber::new(to).as_str().to_owned()
    } else {
        recipient.to_owned()
    };
    let call_id = {
        let mut inner = state.inner.lock();
        let now = inner.now();
        inner.users.may_start_call(&user, now)?;
        if inner.active_calls.contains_key(&user) {
            return Err(MetaError::coded(400, 138_003));
        }
        inner.calls_placed += 1;
        let call_id = CallId::new(format!("wacid.SIM{}", inner.calls_placed));
        inner.active_calls.insert(user, call_id.clone());
        call_id
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

pub(super) async fn unknown_path(
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
    scripted_delay(state, &action).await;
    let (status, response) = respond(state, &outcome);
    let call_id =
        assigned_call_id.or_else(|| body.get("call_id").and_then(Value::as_str).map(CallId::new));
    let sdp = body
        .get("session")
        .and_then(|s| s.get("sdp"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    tracing::debug!(action = %action, call_id = ?call_id, status, "Graph API double answered");
    let recorded = RecordedAction {
        action,
        call_id,
        body,
        sdp,
        status,
        received_at,
        responded_at: Instant::now(),
    };
    state.inner.lock().actions.push(recorded.clone());
    // No subscriber is fine: the action is in the record.
    let _ = state.actions_tx.send(recorded);
    response
}
