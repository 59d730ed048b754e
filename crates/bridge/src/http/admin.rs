//! The admin API (`ADMIN_TOKEN` as a bearer token): list live calls, place one, hang one up
//! (with a fleet, on every replica); list, add to and remove from the block list; delete
//! everything kept about a caller.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::{info, warn};

use super::{AppState, error_response};
use crate::call::CallEnd;
use crate::call::calls::brief;
use crate::fleet::CallBrief;
use crate::ids::{CallId, PhoneNumber};
use crate::outreach::OutreachError;
use crate::store::{BlockedCaller, StoreError};

/// Longest `reason` of a block.
const MAX_BLOCK_REASON_CHARS: usize = 500;

/// Longest `purpose` of a placed call (it goes into the AI's instructions).
const MAX_PURPOSE_CHARS: usize = 2_000;

/// `POST /calls` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// The user's number, digits with or without `+` (E.164: at most 15 digits).
    to: String,
    /// Why the business calls; the AI opens the call with it.
    purpose: String,
}

/// Whether the request carries the admin token (compared in constant time).
fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.admin_token else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| {
            super::webhook::constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes())
        })
}

fn unauthorized() -> Response {
    let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// `GET /calls`: every live call, phone numbers masked; with a fleet, every replica's (theirs as
/// of their last heartbeat), each with the replica it runs on.
pub async fn list_calls(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let here = state.calls.fleet().map(|fleet| fleet.replica().to_owned());
    let mut calls: Vec<(Option<String>, CallBrief)> = state
        .calls
        .registry()
        .list()
        .iter()
        .map(|call| (here.clone(), brief(call)))
        .collect();
    let mut complete = true;
    if let Some(fleet) = state.calls.fleet() {
        match fleet.other_reports().await {
            Ok(reports) => {
                for report in reports {
                    let replica = Some(report.replica);
                    calls.extend(report.calls.into_iter().map(|c| (replica.clone(), c)));
                }
            }
            Err(err) => {
                warn!(%err, "admin: the other replicas' calls cannot be read");
                complete = false;
            }
        }
    }
    calls.sort_by_key(|(_, call)| call.started);
    let calls: Vec<_> = calls
        .into_iter()
        .map(|(replica, call)| {
            let mut entry = json!({
                "id": call.id,
                "direction": call.direction,
                "phone": call.phone,
                "state": call.state,
                "started": call.started,
                "duration_seconds": call.duration_seconds,
            });
            if let Some(replica) = replica {
                entry["replica"] = json!(replica);
            }
            entry
        })
        .collect();
    Json(json!({ "calls": calls, "complete": complete })).into_response()
}

/// `DELETE /calls/{id}`: ends the call, on whichever replica it runs; its task sends Meta
/// `terminate` (or `reject`).
pub async fn hang_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let call_id = CallId::new(id);
    if !state.calls.hang_up(&call_id, CallEnd::AdminHangup).await {
        return error_response(StatusCode::NOT_FOUND, "no such live call");
    }
    info!(%call_id, "hang-up requested by an operator");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "id": call_id, "status": "hanging_up" })),
    )
        .into_response()
}

/// `DELETE /callers/{number}/data`: deletes everything kept about the caller (tasks, reminders
/// and callbacks, transcripts, call log, profile) as their "forget me" does; 200 with the rows
/// deleted of each, 400 for a number that is not one (nothing deleted), 503 when the store
/// failed. A call of theirs live now may still write its own log when it ends.
pub async fn forget_caller(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(number): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(phone) = PhoneNumber::parse(&number) else {
        return bad_number();
    };
    let store = state.calls.context().store.clone();
    match store.forget_caller(&phone).await {
        Ok(deleted) => {
            state
                .metrics
                .callers_forgotten
                .with_label_values(&["admin"])
                .inc();
            info!(phone = %phone, rows = deleted.total(), "caller's data deleted by an operator");
            Json(json!({ "deleted": deleted })).into_response()
        }
        Err(err) => {
            warn!(phone = %phone, %err, "deleting a caller's data failed");
            error_response(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        }
    }
}

/// `POST /calls`: places a call to a user (a callback): the same path as every outbound call
/// (the user's call permission, offer, Graph `connect`, Meta's answer webhook, the AI opening
/// with `purpose` once the user picks up). 202 with the call id once Meta took the `connect`;
/// 403 without call permission, 409 when the user is in a call, 429 when the user's call limit
/// is used up, 503 without room here, 502 when Meta failed.
pub async fn place_call(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<PlaceRequest>, JsonRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Ok(Json(request)) = body else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"to\": \"<number>\", \"purpose\": \"<text>\"}",
        );
    };
    let Some(to) = PhoneNumber::parse(&request.to) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "to must be a phone number: 6 to 15 digits, optionally after +",
        );
    };
    let purpose = request.purpose.trim();
    if purpose.is_empty() || purpose.chars().count() > MAX_PURPOSE_CHARS {
        return error_response(
            StatusCode::BAD_REQUEST,
            "purpose must be 1 to 2000 characters",
        );
    }
    let context = "The business is calling this user (a call placed by an operator).";
    match state.outreach.call(&to, purpose, context, None).await {
        Ok(placed) => {
            let call_id = placed.call_id;
            info!(%call_id, to = %to, "call placed by an operator");
            (
                StatusCode::ACCEPTED,
                Json(json!({ "id": call_id, "status": "calling" })),
            )
                .into_response()
        }
        Err(err) => {
            let status = match &err {
                OutreachError::NoPermission { .. } | OutreachError::Blocked => {
                    StatusCode::FORBIDDEN
                }
                OutreachError::Busy => StatusCode::CONFLICT,
                OutreachError::Quota { .. } | OutreachError::RateLimited => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                OutreachError::Uncallable => StatusCode::UNPROCESSABLE_ENTITY,
                OutreachError::NoRoom(_) => StatusCode::SERVICE_UNAVAILABLE,
                OutreachError::Graph(_) => StatusCode::BAD_GATEWAY,
                OutreachError::Setup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            warn!(to = %to, %err, "an operator's call was not placed");
            let label = match &err {
                OutreachError::NoRoom(reason) => reason,
                other => other.label(),
            };
            error_response(status, label)
        }
    }
}

/// `PUT /blocked/{number}` body (optional).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    /// Why, for the operators; kept with the block.
    reason: Option<String>,
}

fn blocked_json(row: &BlockedCaller) -> serde_json::Value {
    json!({
        "number": row.phone_number.as_str(),
        "reason": row.reason,
        "blocked_at": row.blocked_at.to_rfc3339(),
    })
}

fn bad_number() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "the number must be a phone number: 6 to 15 digits, optionally after +",
    )
}

fn store_failed(err: &StoreError) -> Response {
    warn!(%err, "admin: the block list could not be read or changed");
    error_response(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
}

/// `GET /blocked`: every blocked number (as the store has it), earliest first.
pub async fn list_blocked(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    match state.calls.context().block_list.list().await {
        Ok(rows) => {
            let blocked: Vec<_> = rows.iter().map(blocked_json).collect();
            Json(json!({ "blocked": blocked })).into_response()
        }
        Err(err) => store_failed(&err),
    }
}

/// `PUT /blocked/{number}`, optional body `{"reason": "…"}`: the number's calls are declined
/// (`blocked`) on every replica and nothing is sent to it. Blocking again replaces the reason.
pub async fn block(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(number): Path<String>,
    body: Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(phone) = PhoneNumber::parse(&number) else {
        return bad_number();
    };
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        BlockRequest { reason: None }
    } else {
        match serde_json::from_slice::<BlockRequest>(&body) {
            Ok(request) => request,
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "the body must be empty or JSON: {\"reason\": \"<text>\"}",
                );
            }
        }
    };
    let reason = request
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|reason| !reason.is_empty());
    if reason.is_some_and(|reason| reason.chars().count() > MAX_BLOCK_REASON_CHARS) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "reason must be at most 500 characters",
        );
    }
    match state.calls.context().block_list.block(&phone, reason).await {
        Ok(row) => {
            info!(number = %phone, "number blocked by an operator");
            Json(blocked_json(&row)).into_response()
        }
        Err(err) => store_failed(&err),
    }
}

/// `DELETE /blocked/{number}`: 204 once unblocked, 404 when it was not blocked.
pub async fn unblock(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(number): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let Some(phone) = PhoneNumber::parse(&number) else {
        return bad_number();
    };
    match state.calls.context().block_list.unblock(&phone).await {
        Ok(true) => {
            info!(number = %phone, "number unblocked by an operator");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error_response(StatusCode::NOT_FOUND, "not blocked"),
        Err(err) => store_failed(&err),
    }
}
