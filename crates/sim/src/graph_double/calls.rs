//! The `/calls` endpoint (§5.2): every rule Meta applies to the call actions.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::meta_error::MetaError;
use super::{DoubleState, MAX_CALLBACK_DATA_CHARS, check_token, finish};
use bridge::ids::CallId;
use bridge::whatsapp::sdp;

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
