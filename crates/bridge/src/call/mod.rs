//! Calls, from admission to hang-up: [`calls`] admits inbound and outbound calls alike and
//! starts each on its own task; [`registry`] holds the live calls (capacity, one call per
//! caller, tombstones); [`flow`] is the sans-IO call flow of whatsapp-calling §7; [`task`] owns
//! one call's PeerConnection, AI session, media and timers, helped by its [`journal`] (call log
//! and transcript), [`tool_calls`] (when tool results go back to the AI), [`keypresses`]
//! (when the caller's keys are answered) and `fec` (in-band FEC toward the caller while the
//! caller reports loss); `ai_link` keeps the call's AI session going across drops and the
//! provider's session limit, and [`ai_breaker`] stops answering calls while the AI cannot be
//! reached; [`headroom`] measures whether the host can carry one more call; [`caller_limits`]
//! holds the per-caller quotas of inbound calls and [`block_list`] the numbers never answered
//! or called.

pub mod ai_breaker;
mod ai_link;
pub mod block_list;
pub mod caller_limits;
pub mod calls;
mod fec;
pub mod flow;
pub mod headroom;
pub mod journal;
pub mod keypresses;
pub mod registry;
pub mod task;
pub mod tool_calls;

use std::fmt;

/// Who placed the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallDirection {
    /// A WhatsApp user called the business (UIC).
    Inbound,
    /// The business called the user (BIC), e.g. a reminder.
    Outbound,
}

impl CallDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Why a call ended: the log line, the metrics label and what Meta must be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallEnd {
    /// Meta sent a `terminate` webhook (the user hung up, or Meta ended it).
    RemoteTerminated,
    /// The user declined a call we placed (`REJECTED` status; Meta ends the call).
    Declined,
    /// The caller's media went away (ICE/DTLS failed or the connection closed).
    CallerGone,
    /// The AI session failed or closed.
    AiFailed,
    /// The AI ended the call (its `end_call` tool) once its goodbye had played.
    AiEnded,
    /// Nobody spoke for `IDLE_TIMEOUT` twice (after the AI asked whether anyone was there).
    IdleTimeout,
    /// `MAX_CALL_DURATION` was reached.
    MaxDuration,
    /// An operator hung up.
    AdminHangup,
    /// The process is shutting down.
    Shutdown,
    /// Not connected within the answer deadline.
    AnswerTimeout,
    /// The Graph API refused a call action.
    GraphFailed,
    /// WebRTC or SDP set-up failed.
    SetupFailed,
}

impl CallEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteTerminated => "remote_terminated",
            Self::Declined => "declined",
            Self::CallerGone => "caller_gone",
            Self::AiFailed => "ai_failed",
            Self::AiEnded => "ai_ended",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxDuration => "max_duration",
            Self::AdminHangup => "admin_hangup",
            Self::Shutdown => "shutdown",
            Self::AnswerTimeout => "answer_timeout",
            Self::GraphFailed => "graph_failed",
            Self::SetupFailed => "setup_failed",
        }
    }

    /// Whether the bridge ended the call (and so must tell Meta with `reject` or `terminate`).
    pub fn ended_by_bridge(self) -> bool {
        !matches!(self, Self::RemoteTerminated | Self::Declined)
    }
}

impl fmt::Display for CallEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What webhooks and operators send to a live call.
#[derive(Clone, Debug)]
pub enum CallCommand {
    /// A `terminate` webhook arrived for this call.
    RemoteTerminated,
    /// End the call (admin hang-up).
    Hangup(CallEnd),
    /// Meta's SDP answer to our offer (a BIC `connect` webhook).
    RemoteAnswer(String),
    /// The callee picked up (BIC `ACCEPTED` status).
    RemoteAccepted,
    /// The callee declined (BIC `REJECTED` status).
    RemoteRejected,
}
