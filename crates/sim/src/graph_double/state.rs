//! What the endpoints share: the double's settings, its state behind one lock, Meta's clock,
//! and the steps every request takes (the token and target checks, scripted delays, Meta's
//! answer shape).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::broadcast;

use super::meta_error::MetaError;
use super::records::{RecordedAction, RecordedMessage, RecordedPermissionRead};
use super::users::{Rules, Users};
use bridge::ids::CallId;
use bridge::whatsapp::permissions::PermissionStatus;

/// What the double accepts as a valid request target and caller, and the rules it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphDoubleConfig {
    /// The only bearer token accepted.
    pub access_token: String,
    /// The only Graph version path segment served.
    pub version: String,
    /// The only business phone number id served.
    pub phone_number_id: String,
    /// The call permission of a user the double has not heard of (a temporary one runs 7 days
    /// from first sight). `Temporary` by default, so business-initiated calls go through.
    pub default_permission: PermissionStatus,
    /// The approved template names; a template message naming another is refused (132001).
    pub templates: Vec<String>,
    /// `callback_permission_status` (§9.3): a user who calls the business is granted a
    /// temporary permission.
    pub callback_permission: bool,
    /// Connected business-initiated calls allowed per user per rolling 24 h (§10: 100 today).
    pub calls_per_day: u32,
    /// Reads of `call_permissions` allowed per second (§10: 5), then 613.
    pub permission_reads_per_second: u32,
}

impl Default for GraphDoubleConfig {
    fn default() -> Self {
        Self {
            access_token: "test-token".to_owned(),
            version: "v23.0".to_owned(),
            phone_number_id: "106540352242922".to_owned(),
            default_permission: PermissionStatus::Temporary,
            templates: vec!["reminder".into()],
            callback_permission: true,
            calls_per_day: 100,
            permission_reads_per_second: 5,
        }
    }
}

pub(super) struct DoubleState {
    pub(super) config: GraphDoubleConfig,
    pub(super) inner: Mutex<Inner>,
    pub(super) actions_tx: broadcast::Sender<RecordedAction>,
    pub(super) messages_tx: broadcast::Sender<RecordedMessage>,
}

pub(super) struct Inner {
    pub(super) actions: Vec<RecordedAction>,
    /// Offers Meta sent for calls (registered by whoever sent the connect webhook).
    pub(super) offers: HashMap<CallId, String>,
    /// The SDP of each call's successful `pre_accept`, which `accept` must repeat exactly.
    pub(super) pre_accepted: HashMap<CallId, String>,
    /// Scripted failures per action: (HTTP status, Meta code), consumed front first.
    pub(super) failures: HashMap<String, VecDeque<(u16, i64)>>,
    pub(super) delays: HashMap<String, Duration>,
    /// Counter for `wacid.SIM<n>` ids of business-initiated calls.
    pub(super) calls_placed: u64,
    /// Counter for `fbtrace_id`s.
    pub(super) requests: u64,
    /// Meta's per-user state (permissions, quotas, windows).
    pub(super) users: Users,
    /// How far Meta's clock runs ahead of the wall clock.
    pub(super) clock_offset: TimeDelta,
    /// The live business-initiated call of each user (by the `users` key), which a second
    /// `connect` to them meets (138003).
    pub(super) active_calls: HashMap<String, CallId>,
    /// Every message request, in the order answered.
    pub(super) messages: Vec<RecordedMessage>,
    /// Counter for `wamid.SIM<n>` ids of sent messages.
    pub(super) messages_sent: u64,
    /// Every `call_permissions` read, in the order answered.
    pub(super) permission_reads: Vec<RecordedPermissionRead>,
    /// When the reads of the last second were served (the 613 rate limit).
    pub(super) recent_reads: VecDeque<Instant>,
}

impl Inner {
    pub(super) fn new(config: &GraphDoubleConfig) -> Self {
        Self {
            actions: Vec::new(),
            offers: HashMap::new(),
            pre_accepted: HashMap::new(),
            failures: HashMap::new(),
            delays: HashMap::new(),
            calls_placed: 0,
            requests: 0,
            users: Users::new(Rules {
                default_permission: config.default_permission.clone(),
                calls_per_day: config.calls_per_day,
                callback_permission: config.callback_permission,
            }),
            clock_offset: TimeDelta::zero(),
            active_calls: HashMap::new(),
            messages: Vec::new(),
            messages_sent: 0,
            permission_reads: Vec::new(),
            recent_reads: VecDeque::new(),
        }
    }

    /// Meta's clock: the wall clock, moved ahead by `GraphDouble::advance_clock`.
    pub(super) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// The next scripted failure of `key` (an action, `messages` or `call_permissions`).
    pub(super) fn scripted_failure(&mut self, key: &str) -> Option<MetaError> {
        let (status, code) = self.failures.get_mut(key)?.pop_front()?;
        Some(MetaError::coded(status, code))
    }
}

/// Holds the answer back by the delay scripted for `key` (an action, `messages` or
/// `call_permissions`), if any.
pub(super) async fn scripted_delay(state: &DoubleState, key: &str) {
    let delay = state.inner.lock().delays.get(key).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
}

/// The HTTP answer to an outcome: 200 with the success body, or Meta's error body with a fresh
/// `fbtrace_id` (and `WWW-Authenticate` on 401). Returns the status as recorded.
pub(super) fn respond(state: &DoubleState, outcome: &Result<Value, MetaError>) -> (u16, Response) {
    let (status, body) = match outcome {
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
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\""),
        );
    }
    (status.as_u16(), response)
}

/// The checks every endpoint of the number makes first: the token, the version, the phone
/// number id, then the method.
pub(super) fn check_target(
    config: &GraphDoubleConfig,
    target: (&str, &str, &str),
    method: &Method,
    expected: Method,
    headers: &HeaderMap,
) -> Result<(), MetaError> {
    let (version, phone_number_id, endpoint) = target;
    check_token(config, headers)?;
    if version != config.version {
        return Err(MetaError::new(
            400,
            2500,
            format!("Unknown path components: /{version}/{phone_number_id}/{endpoint}"),
        ));
    }
    if phone_number_id != config.phone_number_id {
        return Err(MetaError {
            subcode: Some(33),
            ..MetaError::new(
                400,
                100,
                format!(
                    "Unsupported {} request. Object with ID '{phone_number_id}' does not exist, \
                     cannot be loaded due to missing permissions, or does not support this operation.",
                    expected.as_str().to_ascii_lowercase()
                ),
            )
        });
    }
    if *method != expected {
        return Err(MetaError::new(
            400,
            100,
            format!(
                "Unsupported {} request.",
                method.as_str().to_ascii_lowercase()
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_token(
    config: &GraphDoubleConfig,
    headers: &HeaderMap,
) -> Result<(), MetaError> {
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
