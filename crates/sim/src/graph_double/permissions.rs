//! `GET /{version}/{phone_number_id}/call_permissions?user_wa_id=` (§9.2, §5.5): a user's
//! permission and quotas as Meta computes them from its state, at most 5 reads per second
//! (613); and what the user's side reports to Meta about its permission and its calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::meta_error::MetaError;
use super::records::RecordedPermissionRead;
use super::state::{DoubleState, check_target, respond, scripted_delay};
use super::users::{REQUESTS_PER_DAY, REQUESTS_PER_WEEK, UserState};
use bridge::ids::PhoneNumber;

/// The period of the permission-read rate limit.
const RATE_PERIOD: Duration = Duration::from_secs(1);

pub(super) async fn call_permissions(
    State(state): State<Arc<DoubleState>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let received_at = Instant::now();
    let user = query
        .get("user_wa_id")
        .map(|number| PhoneNumber::new(number).as_str().to_owned())
        .filter(|number| !number.is_empty())
        .or_else(|| query.get("recipient").cloned())
        .unwrap_or_default();
    let target = (
        version.as_str(),
        phone_number_id.as_str(),
        "call_permissions",
    );
    let outcome = check_target(&state.config, target, &method, Method::GET, &headers)
        .and_then(|()| read(&state, &user, received_at));
    scripted_delay(&state, "call_permissions").await;
    let (status, response) = respond(&state, &outcome);
    tracing::debug!(status, "Graph API double answered a call permission read");
    state
        .inner
        .lock()
        .permission_reads
        .push(RecordedPermissionRead {
            user,
            status,
            received_at,
        });
    response
}

/// The rate limit, then the user's state in the §9.2 shape.
fn read(state: &DoubleState, user: &str, received_at: Instant) -> Result<Value, MetaError> {
    let mut inner = state.inner.lock();
    while inner
        .recent_reads
        .front()
        .is_some_and(|at| received_at.duration_since(*at) >= RATE_PERIOD)
    {
        inner.recent_reads.pop_front();
    }
    if inner.recent_reads.len() >= state.config.permission_reads_per_second as usize {
        return Err(MetaError::coded(429, 613));
    }
    inner.recent_reads.push_back(received_at);
    if let Some(failure) = inner.scripted_failure("call_permissions") {
        return Err(failure);
    }
    if user.is_empty() {
        return Err(MetaError::invalid_parameter(
            "user_wa_id (the user's phone number) or recipient is required",
        ));
    }
    let now = inner.now();
    let calls_per_day = state.config.calls_per_day;
    Ok(permissions_body(
        &inner.users.state(user, now),
        calls_per_day,
    ))
}

/// The §9.2 response: the permission, then the two actions with their limits.
fn permissions_body(user: &UserState, calls_per_day: u32) -> Value {
    let mut permission = json!({ "status": user.permission.as_str() });
    if let Some(expires_at) = user.expires_at {
        permission["expiration_time"] = expires_at.timestamp().into();
    }
    let limit = |period: &str, max: u32, usage: u32, resets_at: Option<DateTime<Utc>>| {
        let mut limit =
            json!({ "time_period": period, "max_allowed": max, "current_usage": usage });
        if let Some(resets_at) = resets_at.filter(|_| usage >= max) {
            limit["limit_expiration_time"] = resets_at.timestamp().into();
        }
        limit
    };
    json!({
        "messaging_product": "whatsapp",
        "permission": permission,
        "actions": [
            {
                "action_name": "send_call_permission_request",
                "can_perform_action": user.can_request_permission(),
                "limits": [
                    limit("PT24H", REQUESTS_PER_DAY, user.requests_today, user.requests_reset_at),
                    limit("P7D", REQUESTS_PER_WEEK, user.requests_this_week, user.requests_reset_at),
                ],
            },
            {
                "action_name": "start_call",
                "can_perform_action": user.can_start_call(),
                "limits": [
                    limit("PT24H", calls_per_day, user.connected_calls, user.calls_reset_at),
                ],
            },
        ],
    })
}
