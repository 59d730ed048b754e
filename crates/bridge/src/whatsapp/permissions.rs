//! A user's call permission and quotas for business-initiated calls (spec §9.2, §5.5):
//! `GET /{version}/{phone_number_id}/call_permissions?user_wa_id=<digits>`.
//!
//! The response is read tolerantly, as the webhooks are: unknown fields are ignored, the expiry
//! may be `expiration_time` or `expiration` and a number or a numeric string, and an action
//! Meta did not list cannot be performed. Only a body without a `permission` object is invalid.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::graph::{GraphAction, GraphClient, GraphError, Payload};
use crate::ids::PhoneNumber;

/// `permission.status` (§9.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PermissionStatus {
    /// `no_permission`: also what an uncallable number reports.
    NoPermission,
    /// `temporary`: granted for 7 days from approval.
    Temporary,
    /// `permanent`: until the user revokes it.
    Permanent,
    /// Any other value, lower-cased.
    Other(String),
}

impl PermissionStatus {
    /// The value as Meta writes it.
    pub fn as_str(&self) -> &str {
        match self {
            PermissionStatus::NoPermission => "no_permission",
            PermissionStatus::Temporary => "temporary",
            PermissionStatus::Permanent => "permanent",
            PermissionStatus::Other(other) => other,
        }
    }

    /// Reads Meta's value, case-insensitively; unknown values are kept.
    pub fn parse(text: &str) -> PermissionStatus {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "no_permission" => PermissionStatus::NoPermission,
            "temporary" => PermissionStatus::Temporary,
            "permanent" => PermissionStatus::Permanent,
            _ => PermissionStatus::Other(text),
        }
    }

    /// Temporary or permanent: a call may be placed (quota and expiry permitting).
    pub fn is_granted(&self) -> bool {
        matches!(
            self,
            PermissionStatus::Temporary | PermissionStatus::Permanent
        )
    }
}

/// What Meta says about calling one user (§9.2): the permission and whether the two actions
/// that need it can be performed now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPermission {
    pub status: PermissionStatus,
    /// When a temporary permission lapses (`expiration_time`, or `expiration`).
    pub expires_at: Option<DateTime<Utc>>,
    /// `start_call.can_perform_action`
    pub can_start_call: bool,
    /// `send_call_permission_request.can_perform_action`
    pub can_request_permission: bool,
    /// When an exhausted start_call limit resets (`limit_expiration_time`), if given.
    pub start_call_resets_at: Option<DateTime<Utc>>,
}

/// The action that places a call.
const START_CALL: &str = "start_call";
/// The action that asks the user for permission.
const SEND_PERMISSION_REQUEST: &str = "send_call_permission_request";

impl GraphClient {
    /// GET /{version}/{phone_number_id}/call_permissions?user_wa_id=<digits>
    ///
    /// Never retried: Meta allows 5 reads per second (error 613, HTTP 429); the caller decides
    /// when to read again.
    pub async fn call_permission(&self, user: &PhoneNumber) -> Result<CallPermission, GraphError> {
        let query = [("user_wa_id", user.as_str())];
        let body = self
            .request(GraphAction::CallPermissions, None, Payload::Query(&query))
            .await?;
        let permission = parse_call_permission(&body)?;
        tracing::debug!(
            user = %user,
            status = permission.status.as_str(),
            can_start_call = permission.can_start_call,
            can_request_permission = permission.can_request_permission,
            "call permission read"
        );
        Ok(permission)
    }
}

/// Reads a `call_permissions` response body (§9.2).
pub fn parse_call_permission(body: &Value) -> Result<CallPermission, GraphError> {
    let permission = body
        .get("permission")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            GraphError::InvalidResponse("no permission object in the response".to_owned())
        })?;
    let status = permission
        .get("status")
        .and_then(Value::as_str)
        .map(PermissionStatus::parse)
        .ok_or_else(|| {
            GraphError::InvalidResponse("no permission.status in the response".to_owned())
        })?;
    let expires_at = ["expiration_time", "expiration"]
        .iter()
        .find_map(|key| permission.get(*key).and_then(unix_time));
    let start_call = action(body, START_CALL);
    let request = action(body, SEND_PERMISSION_REQUEST);
    Ok(CallPermission {
        status,
        expires_at,
        can_start_call: start_call.is_some_and(can_perform),
        can_request_permission: request.is_some_and(can_perform),
        start_call_resets_at: start_call.and_then(limit_reset),
    })
}

/// The element of `actions` named `name`.
fn action<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.get("actions")?
        .as_array()?
        .iter()
        .find(|action| action.get("action_name").and_then(Value::as_str) == Some(name))
}

/// `can_perform_action`: `true` (or `"true"`); anything else or nothing is false.
fn can_perform(action: &Value) -> bool {
    match action.get("can_perform_action") {
        Some(Value::Bool(can)) => *can,
        Some(Value::String(text)) => text.trim().eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The latest `limit_expiration_time` of an action's limits: when every exhausted limit has
/// reset.
fn limit_reset(action: &Value) -> Option<DateTime<Utc>> {
    action
        .get("limits")?
        .as_array()?
        .iter()
        .filter_map(|limit| limit.get("limit_expiration_time").and_then(unix_time))
        .max()
}

/// UNIX seconds as a number or a numeric string.
fn unix_time(value: &Value) -> Option<DateTime<Utc>> {
    let seconds = match value {
        Value::Number(n) => n.as_i64()?,
        Value::String(text) => text.trim().parse().ok()?,
        _ => return None,
    };
    DateTime::from_timestamp(seconds, 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::whatsapp::graph::GraphErrorKind;
    use crate::whatsapp::graph::test_server::server;
    use testkit::fixtures::CALL_PERMISSIONS;

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(seconds, 0)
    }

    #[test]
    fn the_spec_sample_is_a_temporary_permission_with_an_exhausted_call_quota() {
        let body: Value = serde_json::from_str(CALL_PERMISSIONS).unwrap();
        assert_eq!(
            parse_call_permission(&body).unwrap(),
            CallPermission {
                status: PermissionStatus::Temporary,
                expires_at: at(1_761_294_800),
                can_start_call: false,
                can_request_permission: true,
                start_call_resets_at: at(1_760_776_400),
            }
        );
    }

    #[tokio::test]
    async fn call_permission_gets_the_users_permission_by_number() {
        let (client, script) = server(&[(200, CALL_PERMISSIONS)]).await;
        let permission = client
            .call_permission(&PhoneNumber::new("447700900123"))
            .await
            .unwrap();
        assert_eq!(permission.status, PermissionStatus::Temporary);
        assert!(!permission.can_start_call);
        let seen = script.only_request();
        assert_eq!(seen.method, axum::http::Method::GET);
        assert_eq!(seen.path, "/v23.0/106540352242922/call_permissions");
        assert_eq!(seen.query.as_deref(), Some("user_wa_id=447700900123"));
        assert_eq!(
            seen.authorization.as_deref(),
            Some("Bearer test-token-never-logged")
        );
        assert_eq!(seen.body, Value::Null);
    }

    #[tokio::test]
    async fn the_rate_limit_is_left_to_the_caller() {
        let limited = r#"{"error":{"message":"(#613) Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613,"fbtrace_id":"X"}}"#;
        let (client, script) = server(&[(429, limited)]).await;
        let error = client
            .call_permission(&PhoneNumber::new("447700900123"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(GraphErrorKind::RateLimited));
        assert_eq!(script.seen.lock().len(), 1, "not retried");
    }

    #[test]
    fn statuses_are_read_case_insensitively_and_unknown_ones_kept() {
        for (sent, expected) in [
            ("no_permission", PermissionStatus::NoPermission),
            ("TEMPORARY", PermissionStatus::Temporary),
            ("Permanent", PermissionStatus::Permanent),
            ("pending", PermissionStatus::Other("pending".to_owned())),
        ] {
            let body = json!({ "permission": { "status": sent } });
            let permission = parse_call_permission(&body).unwrap();
            assert_eq!(permission.status, expected, "{sent}");
            assert_eq!(PermissionStatus::parse(expected.as_str()), expected);
        }
        assert!(PermissionStatus::Permanent.is_granted());
        assert!(!PermissionStatus::NoPermission.is_granted());
    }

    #[test]
    fn the_expiry_may_be_named_expiration_and_be_a_string() {
        let body = json!({ "permission": { "status": "temporary", "expiration": "1761294800" } });
        assert_eq!(
            parse_call_permission(&body).unwrap().expires_at,
            at(1_761_294_800)
        );
        let body = json!({ "permission": { "status": "temporary", "expiration_time": "soon" } });
        assert_eq!(parse_call_permission(&body).unwrap().expires_at, None);
    }

    #[test]
    fn missing_actions_cannot_be_performed_and_unknown_fields_are_ignored() {
        let body = json!({
            "messaging_product": "whatsapp",
            "permission": { "status": "permanent", "granted_by": "profile" },
            "future": [1, 2],
        });
        assert_eq!(
            parse_call_permission(&body).unwrap(),
            CallPermission {
                status: PermissionStatus::Permanent,
                expires_at: None,
                can_start_call: false,
                can_request_permission: false,
                start_call_resets_at: None,
            }
        );
        let body = json!({
            "permission": { "status": "temporary" },
            "actions": [
                { "action_name": "start_call", "can_perform_action": "true", "limits": "none" },
                { "action_name": "send_call_permission_request" },
                { "action_name": "future_action", "can_perform_action": true },
                "garbage",
            ],
        });
        let permission = parse_call_permission(&body).unwrap();
        assert!(permission.can_start_call);
        assert!(!permission.can_request_permission);
        assert_eq!(permission.start_call_resets_at, None);
    }

    #[test]
    fn a_body_without_a_permission_is_invalid() {
        for body in [
            json!({}),
            json!({ "permission": "temporary" }),
            json!({ "permission": {} }),
        ] {
            let error = parse_call_permission(&body).unwrap_err();
            assert!(matches!(error, GraphError::InvalidResponse(_)), "{body}");
        }
    }
}
