//! The admin calls API (`ADMIN_TOKEN` as a bearer token): list live calls, hang one up.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use secrecy::ExposeSecret;
use serde_json::json;
use tracing::info;

use super::{AppState, error_response};
use crate::call::CallEnd;
use crate::ids::CallId;

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

/// `GET /calls`: every live call, phone numbers masked.
pub async fn list_calls(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let mut calls = state.calls.registry().list();
    calls.sort_by_key(|call| call.started);
    let calls: Vec<_> = calls
        .into_iter()
        .map(|call| {
            json!({
                "id": call.call_id,
                "direction": call.direction.as_str(),
                "phone": call.phone.map(|phone| phone.masked()),
                "state": call.phase.as_str(),
                "started": call
                    .started_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                "duration_seconds": call.started.elapsed().as_secs(),
            })
        })
        .collect();
    Json(json!({ "calls": calls })).into_response()
}

/// `DELETE /calls/{id}`: ends the call; the call task sends Meta `terminate` (or `reject`).
pub async fn hang_up(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let call_id = CallId::new(id);
    if !state.calls.hang_up(&call_id, CallEnd::AdminHangup) {
        return error_response(StatusCode::NOT_FOUND, "no such live call");
    }
    info!(%call_id, "hang-up requested by an operator");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "id": call_id, "status": "hanging_up" })),
    )
        .into_response()
}
