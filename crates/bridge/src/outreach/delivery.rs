//! One claimed reminder's way to the user: a call while the user has given permission, the
//! retries within `REMINDER_WINDOW` (an unanswered or declined call counts against the
//! permission, §7.2, so they are few and spaced), then a WhatsApp message and a call-permission
//! request. Ends with what the store is told: retry at a time, delivered, or failed with why.
//!
//! The decisions ([`after_call`], [`retry_at`]) are plain functions of the reminder and the
//! outcome; [`deliver`] carries them out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::{MessageError, Outreach, OutreachError};
use crate::call::CallEnd;
use crate::call::task::PlacedOutcome;
use crate::config::ReminderSettings;
use crate::ids::PhoneNumber;
use crate::store::{
    DeliveryChannel, Reminder, ReminderAttempt, ReminderKind, ReminderSettlement, ReminderUpdate,
};

/// The text a callback's row carries (its "reminder" is the call itself).
pub const CALLBACK_PURPOSE: &str = "The caller tried to call earlier while all lines were busy.";
/// Why a reminder for a blocked number failed (nothing was sent).
pub const BLOCKED_REASON: &str = "the number is blocked";
/// The longest a placed call may take to be heard or end: 60 s ringing, then the opening.
const CALL_OUTCOME_TIMEOUT: Duration = Duration::from_secs(120);
/// After the replica had no room or shut down mid-call: try again soon (on any replica).
const SOON: chrono::Duration = chrono::Duration::seconds(2);

/// What became of one call attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallAttempt {
    /// The user heard the AI's opening.
    Heard { call_id: String },
    /// Not answered, declined, busy, hung up early or failed: counts as an attempt.
    Missed {
        outcome: &'static str,
        call_id: Option<String>,
        detail: Option<String>,
    },
    /// The daily call limit is used up until `resets_at`.
    Quota { resets_at: Option<DateTime<Utc>> },
    /// No permission: straight to the message (and a permission request where allowed).
    NoPermission { can_request: bool },
    /// Not the user's doing (no room here, shutting down): retried soon, not counted.
    Interrupted { outcome: &'static str },
}

/// The next step after a call attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Settle(ReminderSettlement),
    /// Send the message (and, when `request_permission`, a permission request).
    Fallback {
        request_permission: bool,
    },
}

/// When the next call may go out after `attempts` calls (the retry delay, doubling), if that
/// is still inside the window.
pub fn retry_at(
    reminder: &Reminder,
    attempts: u32,
    now: DateTime<Utc>,
    settings: &ReminderSettings,
) -> Option<DateTime<Utc>> {
    if attempts >= settings.max_attempts {
        return None;
    }
    let doubling = 2u32.saturating_pow(attempts.saturating_sub(1)).min(64);
    let delay = chrono::Duration::from_std(settings.retry_delay * doubling).ok()?;
    let next = now + delay;
    (next < window_end(reminder, settings)).then_some(next)
}

/// Calls are tried until this time.
pub fn window_end(reminder: &Reminder, settings: &ReminderSettings) -> DateTime<Utc> {
    reminder.remind_at + chrono::Duration::from_std(settings.window).unwrap_or_default()
}

/// Up to a second, so that reminders held back together do not all come back at once.
fn jitter() -> chrono::Duration {
    chrono::Duration::milliseconds(rand::random_range(0..1000))
}

/// What to do after a call attempt, given the call-attempt count including it.
pub fn after_call(
    reminder: &Reminder,
    attempt: &CallAttempt,
    attempts: u32,
    now: DateTime<Utc>,
    settings: &ReminderSettings,
) -> Next {
    match attempt {
        CallAttempt::Heard { .. } => {
            Next::Settle(ReminderSettlement::Delivered(DeliveryChannel::Call))
        }
        CallAttempt::Interrupted { .. } => Next::Settle(ReminderSettlement::Retry {
            next_attempt_at: now + SOON + jitter(),
        }),
        CallAttempt::NoPermission { can_request } => Next::Fallback {
            request_permission: *can_request,
        },
        CallAttempt::Quota { resets_at } => match resets_at {
            Some(at) if *at < window_end(reminder, settings) => {
                Next::Settle(ReminderSettlement::Retry {
                    next_attempt_at: *at,
                })
            }
            _ => Next::Fallback {
                request_permission: false,
            },
        },
        CallAttempt::Missed { .. } => match retry_at(reminder, attempts, now, settings) {
            Some(next_attempt_at) => Next::Settle(ReminderSettlement::Retry { next_attempt_at }),
            None => Next::Fallback {
                request_permission: false,
            },
        },
    }
}

/// What the AI says first on a reminder's or a callback's call.
pub fn opening(reminder: &Reminder) -> String {
    match reminder.kind {
        ReminderKind::Reminder => format!(
            "You are calling the user to deliver a reminder they asked for: \"{}\". Greet them \
             in one short sentence, say you are calling with their reminder, give it clearly, \
             then ask whether there is anything else. Speak the language the user spoke in \
             earlier calls.",
            reminder.text
        ),
        ReminderKind::Callback => "You are calling the user back: they called earlier while \
             all lines were busy. Greet them in one short sentence, say you are returning their \
             call, and ask how you can help. Speak the language the user spoke in earlier \
             calls."
            .to_owned(),
    }
}

/// The AI's instructions about the call.
fn call_context(reminder: &Reminder) -> &'static str {
    match reminder.kind {
        ReminderKind::Reminder => {
            "The business is calling this user to deliver a reminder the user set."
        }
        ReminderKind::Callback => "The business is calling this user back.",
    }
}

/// The message that stands in for the call.
pub fn message_text(reminder: &Reminder) -> String {
    match reminder.kind {
        ReminderKind::Reminder => format!("Reminder: {}", reminder.text),
        ReminderKind::Callback => "Sorry we could not reach you: all our lines were busy when \
            you called. Call us again any time."
            .to_owned(),
    }
}

/// What call `call_id`, which ended before its opening was heard, counts as.
fn missed(end: CallEnd, answered: bool, call_id: Option<String>) -> CallAttempt {
    let outcome = match end {
        CallEnd::Shutdown => {
            return CallAttempt::Interrupted {
                outcome: "shutdown",
            };
        }
        CallEnd::Declined => "rejected",
        _ if answered => "hung_up",
        CallEnd::RemoteTerminated | CallEnd::AnswerTimeout => "not_answered",
        _ => "failed",
    };
    CallAttempt::Missed {
        outcome,
        call_id,
        detail: Some(end.as_str().to_owned()),
    }
}

/// One call attempt for `reminder`, to its end or until the opening was heard.
async fn call_once(outreach: &Outreach, reminder: &Reminder, to: &PhoneNumber) -> CallAttempt {
    let placed = outreach
        .call(
            to,
            &opening(reminder),
            call_context(reminder),
            Some(reminder.id.as_str()),
        )
        .await;
    let placed = match placed {
        Ok(placed) => placed,
        Err(err) => {
            return match err {
                OutreachError::NoPermission { can_request } => {
                    CallAttempt::NoPermission { can_request }
                }
                OutreachError::Quota { resets_at } => CallAttempt::Quota { resets_at },
                OutreachError::NoRoom(_) => CallAttempt::Interrupted { outcome: "no_room" },
                OutreachError::RateLimited => CallAttempt::Interrupted {
                    outcome: "rate_limited",
                },
                other => CallAttempt::Missed {
                    outcome: other.label(),
                    call_id: None,
                    detail: Some(other.to_string()),
                },
            };
        }
    };
    let call_id = placed.call_id.to_string();
    let outcome = tokio::time::timeout(CALL_OUTCOME_TIMEOUT, placed.outcome).await;
    match outcome {
        Ok(Ok(PlacedOutcome::OpeningHeard)) => CallAttempt::Heard { call_id },
        Ok(Ok(PlacedOutcome::Ended { end, answered })) => missed(end, answered, Some(call_id)),
        // The call task is gone without a word (it panicked), or took far too long.
        Ok(Err(_)) | Err(_) => CallAttempt::Missed {
            outcome: "failed",
            call_id: Some(call_id),
            detail: Some("no outcome from the call".to_owned()),
        },
    }
}

/// Delivers one claimed reminder as far as it goes now; the update for the store.
pub async fn deliver(outreach: &Outreach, reminder: &Reminder) -> ReminderUpdate {
    let settings = outreach.settings();
    let to = &reminder.phone_number;
    let mut log = reminder.attempt_log.clone();
    let mut attempts = reminder.attempts;
    if outreach.is_blocked(to) {
        info!(reminder = %reminder.id, "reminder not delivered: the number is blocked");
        return ReminderUpdate {
            settlement: ReminderSettlement::Failed {
                reason: BLOCKED_REASON.to_owned(),
            },
            attempts,
            last_attempt_at: log.last().map(|attempt| attempt.at),
            attempt_log: log,
        };
    }
    let now = Utc::now();
    let calls_left = attempts < settings.max_attempts && now < window_end(reminder, settings);
    let next = if calls_left {
        let attempt = call_once(outreach, reminder, to).await;
        let now = Utc::now();
        if matches!(
            attempt,
            CallAttempt::Missed { .. } | CallAttempt::Heard { .. }
        ) {
            attempts += 1;
        }
        let entry = call_entry(&attempt, now);
        outreach
            .metrics()
            .reminder_attempts
            .with_label_values(&["call", &entry.outcome])
            .inc();
        // Not the user's doing and no call went out: counted, not listed to the user.
        if !matches!(attempt, CallAttempt::Interrupted { .. }) {
            log.push(entry);
        }
        after_call(reminder, &attempt, attempts, now, settings)
    } else {
        Next::Fallback {
            request_permission: false,
        }
    };
    let settlement = match next {
        Next::Settle(settlement) => settlement,
        Next::Fallback { request_permission } => {
            fallback(outreach, reminder, to, request_permission, &mut log).await
        }
    };
    ReminderUpdate {
        settlement,
        attempts,
        last_attempt_at: log.last().map(|attempt| attempt.at),
        attempt_log: log,
    }
}

/// The message in place of the call, and a permission request where one may help.
async fn fallback(
    outreach: &Outreach,
    reminder: &Reminder,
    to: &PhoneNumber,
    request_permission: bool,
    log: &mut Vec<ReminderAttempt>,
) -> ReminderSettlement {
    let sent = outreach.message(to, &message_text(reminder)).await;
    let message = match &sent {
        Ok(kind) => entry("message", "sent", None, Some(kind.as_str().to_owned())),
        Err(MessageError::NoChannel) => entry("message", "no_channel", None, None),
        Err(err) => entry("message", "failed", None, Some(err.to_string())),
    };
    outreach
        .metrics()
        .reminder_attempts
        .with_label_values(&["message", &message.outcome])
        .inc();
    log.push(message);
    if request_permission {
        let requested = outreach.request_permission(to).await;
        let request = match requested {
            Ok(()) => entry("permission_request", "sent", None, None),
            Err(err) => entry("permission_request", "failed", None, Some(err.to_string())),
        };
        outreach
            .metrics()
            .reminder_attempts
            .with_label_values(&["permission_request", &request.outcome])
            .inc();
        log.push(request);
    }
    match sent {
        Ok(_) => {
            info!(reminder = %reminder.id, "reminder delivered by message");
            ReminderSettlement::Delivered(DeliveryChannel::Message)
        }
        Err(err) => {
            let calls = log
                .iter()
                .rev()
                .find(|attempt| attempt.channel == "call")
                .map_or("no call", |attempt| attempt.outcome.as_str());
            let reason = match err {
                MessageError::NoChannel => {
                    format!("call: {calls}; message: outside the 24-hour window and no template")
                }
                MessageError::Graph(err) => format!("call: {calls}; message failed: {err}"),
            };
            warn!(reminder = %reminder.id, %reason, "reminder not delivered");
            ReminderSettlement::Failed { reason }
        }
    }
}

fn entry(
    channel: &str,
    outcome: &str,
    call_id: Option<String>,
    detail: Option<String>,
) -> ReminderAttempt {
    ReminderAttempt {
        at: Utc::now(),
        channel: channel.to_owned(),
        outcome: outcome.to_owned(),
        call_id,
        detail,
    }
}

/// The attempt log's line for a call attempt.
fn call_entry(attempt: &CallAttempt, at: DateTime<Utc>) -> ReminderAttempt {
    let (outcome, call_id, detail) = match attempt {
        CallAttempt::Heard { call_id } => ("delivered", Some(call_id.clone()), None),
        CallAttempt::Missed {
            outcome,
            call_id,
            detail,
        } => (*outcome, call_id.clone(), detail.clone()),
        CallAttempt::Quota { .. } => ("quota", None, None),
        CallAttempt::NoPermission { .. } => ("no_permission", None, None),
        CallAttempt::Interrupted { outcome } => (*outcome, None, None),
    };
    ReminderAttempt {
        at,
        channel: "call".to_owned(),
        outcome: outcome.to_owned(),
        call_id,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReminderSettings {
        ReminderSettings {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            max_attempts: 3,
            window: Duration::from_secs(3600),
            retry_delay: Duration::from_secs(300),
            concurrency: 4,
            claim_lease: Duration::from_secs(60),
            template: None,
            template_language: "en_US".into(),
            callback_on_busy: true,
        }
    }

    fn reminder(remind_at: DateTime<Utc>) -> Reminder {
        Reminder {
            id: "r1".into(),
            phone_number: PhoneNumber::new("447700900123"),
            text: "take the pills".into(),
            remind_at,
            status: crate::store::ReminderStatus::Calling,
            attempts: 0,
            last_attempt_at: None,
            created_at: remind_at,
            kind: ReminderKind::Reminder,
            next_attempt_at: None,
            delivered_via: None,
            failure_reason: None,
            attempt_log: Vec::new(),
            claimed_by: Some("a".into()),
            claim_expires_at: None,
        }
    }

    fn missed() -> CallAttempt {
        CallAttempt::Missed {
            outcome: "rejected",
            call_id: None,
            detail: None,
        }
    }

    #[test]
    fn missed_calls_are_retried_with_a_doubling_delay_then_the_message() {
        let now = Utc::now();
        let reminder = reminder(now);
        let s = settings();
        let minutes = |m| now + chrono::Duration::minutes(m);
        assert_eq!(
            after_call(&reminder, &missed(), 1, now, &s),
            Next::Settle(ReminderSettlement::Retry {
                next_attempt_at: minutes(5)
            })
        );
        assert_eq!(
            after_call(&reminder, &missed(), 2, now, &s),
            Next::Settle(ReminderSettlement::Retry {
                next_attempt_at: minutes(10)
            })
        );
        assert_eq!(
            after_call(&reminder, &missed(), 3, now, &s),
            Next::Fallback {
                request_permission: false
            }
        );
    }

    #[test]
    fn no_retry_goes_past_the_window() {
        let now = Utc::now();
        // Due 58 minutes ago: a retry in 5 minutes would be after the 1-hour window.
        let reminder = reminder(now - chrono::Duration::minutes(58));
        assert_eq!(
            after_call(&reminder, &missed(), 1, now, &settings()),
            Next::Fallback {
                request_permission: false
            }
        );
    }

    #[test]
    fn heard_is_delivered_no_permission_asks_and_interruptions_retry_soon() {
        let now = Utc::now();
        let reminder = reminder(now);
        let s = settings();
        let heard = CallAttempt::Heard {
            call_id: "wacid.1".into(),
        };
        assert_eq!(
            after_call(&reminder, &heard, 0, now, &s),
            Next::Settle(ReminderSettlement::Delivered(DeliveryChannel::Call))
        );
        assert_eq!(
            after_call(
                &reminder,
                &CallAttempt::NoPermission { can_request: true },
                0,
                now,
                &s
            ),
            Next::Fallback {
                request_permission: true
            }
        );
        let Next::Settle(ReminderSettlement::Retry { next_attempt_at }) = after_call(
            &reminder,
            &CallAttempt::Interrupted {
                outcome: "shutdown",
            },
            0,
            now,
            &s,
        ) else {
            panic!("an interruption is retried");
        };
        let latest = now + SOON + chrono::Duration::seconds(1);
        assert!(next_attempt_at >= now + SOON && next_attempt_at < latest);
        let resets = now + chrono::Duration::minutes(30);
        assert_eq!(
            after_call(
                &reminder,
                &CallAttempt::Quota {
                    resets_at: Some(resets)
                },
                0,
                now,
                &s
            ),
            Next::Settle(ReminderSettlement::Retry {
                next_attempt_at: resets
            })
        );
    }

    #[test]
    fn a_call_ending_early_is_classified_by_how_it_ended() {
        let outcome = |end, answered| match super::missed(end, answered, None) {
            CallAttempt::Missed { outcome, .. } => outcome,
            CallAttempt::Interrupted { outcome } => outcome,
            other => panic!("{other:?}"),
        };
        assert_eq!(outcome(CallEnd::Declined, false), "rejected");
        assert_eq!(outcome(CallEnd::RemoteTerminated, false), "not_answered");
        assert_eq!(outcome(CallEnd::AnswerTimeout, false), "not_answered");
        assert_eq!(outcome(CallEnd::RemoteTerminated, true), "hung_up");
        assert_eq!(outcome(CallEnd::Shutdown, true), "shutdown");
        assert_eq!(outcome(CallEnd::AiFailed, false), "failed");
    }
}
