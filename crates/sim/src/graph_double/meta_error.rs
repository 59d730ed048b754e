//! Graph API errors in Meta's shape (§5.3), worded like Meta's where the code is known (§11).

use serde_json::{Value, json};

use super::users::Refusal;

/// A Graph API error as Meta writes it (§5.3).
#[derive(Debug)]
pub(super) struct MetaError {
    pub(super) status: u16,
    pub(super) code: i64,
    pub(super) subcode: Option<i64>,
    pub(super) message: String,
    pub(super) details: Option<String>,
}

impl MetaError {
    pub(super) fn new(status: u16, code: i64, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            subcode: None,
            message: message.into(),
            details: None,
        }
    }

    pub(super) fn invalid_parameter(details: impl Into<String>) -> Self {
        Self {
            details: Some(details.into()),
            ..Self::new(400, 100, "(#100) Invalid parameter")
        }
    }

    pub(super) fn sdp_validation(details: impl Into<String>) -> Self {
        Self {
            details: Some(details.into()),
            ..Self::new(400, 138_008, "(#138008) SDP Validation error")
        }
    }

    /// An error worded like Meta's for that code where we know it (§11), the title repeated
    /// as the details: a scripted failure, or one of the per-user rules.
    pub(super) fn coded(status: u16, code: i64) -> Self {
        let title = match code {
            100 => "Invalid parameter",
            613 => "Calls to this api have exceeded the rate limit.",
            131_047 => "Re-engagement message",
            132_001 => "Template name does not exist in the translation",
            131_044 => "Payment method missing",
            131_055 => "Calling not allowed: SIP is enabled",
            138_000 => "Calling is not enabled for this phone number",
            138_001 => "Receiver is unable to receive calls",
            138_002 => "Concurrent call limit reached",
            138_003 => "Duplicate call: a call with this user is already active",
            138_004 => "Error connecting the call",
            138_005 => "Call rate limit exceeded",
            138_006 => "No approved call permission from the recipient",
            138_007 => "Connect timeout",
            138_008 => "SDP Validation error",
            138_012 => "Business-initiated call limit reached",
            138_013 => "Business-initiated calling is not available",
            138_009 => "Call permission request limit reached",
            138_017 => "Call permission request not allowed: a permanent permission exists",
            _ => "Scripted failure",
        };
        Self {
            details: Some(title.to_owned()),
            ..Self::new(status, code, format!("(#{code}) {title}"))
        }
    }

    pub(super) fn body(&self, fbtrace_id: &str) -> Value {
        let mut error = json!({
            "message": self.message,
            "type": "OAuthException",
            "code": self.code,
            "fbtrace_id": fbtrace_id,
        });
        if let Some(subcode) = self.subcode {
            error["error_subcode"] = subcode.into();
        }
        if let Some(details) = &self.details {
            error["error_data"] = json!({ "messaging_product": "whatsapp", "details": details });
        }
        json!({ "error": error })
    }
}

impl From<Refusal> for MetaError {
    /// Meta's answer to a call or message its per-user rules refuse (§10, §11).
    fn from(refusal: Refusal) -> Self {
        let with_details = |error: MetaError, details: String| MetaError {
            details: Some(details),
            ..error
        };
        match refusal {
            Refusal::NoPermission => Self::coded(401, 138_006),
            Refusal::CallLimit { resets_at } => with_details(
                Self::coded(400, 138_012),
                format!(
                    "Business-initiated call limit reached; next call allowed at {}",
                    resets_at.timestamp()
                ),
            ),
            Refusal::OutsideWindow => with_details(
                Self::coded(400, 131_047),
                "Message failed to send because more than 24 hours have passed since the \
                 customer last replied to this number."
                    .to_owned(),
            ),
            Refusal::PermanentPermission => Self::coded(400, 138_017),
            Refusal::RequestLimit { resets_at } => with_details(
                Self::coded(400, 138_009),
                format!(
                    "Call permission request limit reached; next request allowed at {}",
                    resets_at.timestamp()
                ),
            ),
        }
    }
}
