//! What the double records of each request, for tests and the harness to look at.

use std::time::Instant;

use serde_json::Value;

use bridge::ids::{CallId, PhoneNumber};

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

/// One message request, as answered.
#[derive(Debug, Clone)]
pub struct RecordedMessage {
    /// The `to` of the request (digits); empty when it had none.
    pub to: PhoneNumber,
    /// `"text"`, `"template"`, `"permission_request"`, or the request's own `type` (or `""`)
    /// for what the double refused before knowing.
    pub kind: String,
    /// The text's body, the permission request's body text, or the template's body parameters
    /// joined with `" | "`.
    pub text: String,
    /// The template's name, for a template.
    pub template: Option<String>,
    /// The id Meta gave the message (`wamid.…`), when it was sent.
    pub id: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// Meta's error code, when refused.
    pub code: Option<i64>,
    /// The request body (`Null` when it was not JSON).
    pub body: Value,
    pub received_at: Instant,
}

impl RecordedMessage {
    /// Sent: Meta accepted it (and the user's phone gets it).
    pub fn sent(&self) -> bool {
        self.id.is_some()
    }
}

/// One `call_permissions` read, as answered.
#[derive(Debug, Clone)]
pub struct RecordedPermissionRead {
    /// `user_wa_id` (digits) or `recipient`, as asked; empty when neither was given.
    pub user: String,
    /// HTTP status of the answer (429 when rate limited).
    pub status: u16,
    pub received_at: Instant,
}
