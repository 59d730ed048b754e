//! The business reaching out to users by WhatsApp's rules (whatsapp-calling §7.2, §9): calls
//! placed only with the user's call permission, messages (free-form inside the 24-hour
//! customer-service window, the approved template outside it), call-permission requests; and
//! what is built on them: the [`scheduler`] that delivers due reminders and callbacks exactly
//! once across replicas ([`delivery`] is one reminder's way to the user), and the busy
//! callback for a caller refused at capacity.

pub mod delivery;
pub mod scheduler;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, info, warn};

use crate::call::calls::{Calls, PlaceError, Placed};
use crate::call::registry::RefusalReason;
use crate::config::ReminderSettings;
use crate::ids::PhoneNumber;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::whatsapp::graph::{GraphClient, GraphError, GraphErrorKind};
use crate::whatsapp::permissions::PermissionStatus;

/// Meta's codes the outreach acts on that `GraphErrorKind` does not name (§11).
mod codes {
    /// Receiver uncallable (not on WhatsApp, old client).
    pub const UNCALLABLE: i64 = 138_001;
    /// Business-initiated calls not available for this number.
    pub const NOT_AVAILABLE: i64 = 138_013;
}

/// The customer-service window: free-form messages only this long after the user's last one
/// (24 hours, less a margin: Meta may accept a late free-form message and fail it afterwards
/// with 131047 in a status webhook, which would leave the reminder counted as delivered).
const SERVICE_WINDOW: chrono::Duration = chrono::Duration::minutes(24 * 60 - 10);
/// Busy messages and callbacks being queued at once (a flood of refusals must not grow tasks).
const MAX_BUSY_NOTICES_IN_FLIGHT: usize = 64;
/// Meta allows 5 permission reads a second per business number (§5.5, error 613): this replica
/// spaces its own reads by this much. Replicas do not share the budget, so with several a read
/// can still get 613; the reminder is then tried again shortly.
const PERMISSION_READ_SPACING: Duration = Duration::from_millis(200);

/// The busy message for a caller refused at capacity.
pub const BUSY_MESSAGE: &str = "Sorry, all our lines are busy right now. We will call you back \
as soon as a line is free.";
/// The body of a call-permission request.
pub const PERMISSION_REQUEST_TEXT: &str =
    "May we call you on WhatsApp to deliver your reminders and call you back?";

/// Why a call to a user was not placed.
#[derive(Debug, thiserror::Error)]
pub enum OutreachError {
    #[error("the user has not given call permission")]
    NoPermission {
        /// Whether a permission request may be sent now (§9.2).
        can_request: bool,
    },
    #[error("the user is in a call")]
    Busy,
    #[error("no room for a call on this replica: {0}")]
    NoRoom(&'static str),
    #[error("Meta's permission-state rate limit was hit")]
    RateLimited,
    #[error("the call limit for this user is used up")]
    Quota { resets_at: Option<DateTime<Utc>> },
    #[error("the user cannot be called")]
    Uncallable,
    #[error("the Graph API failed: {0}")]
    Graph(GraphError),
    #[error("media set-up failed: {0}")]
    Setup(String),
    #[error("the number is blocked")]
    Blocked,
}

impl OutreachError {
    /// A bounded label for metrics and attempt logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoPermission { .. } => "no_permission",
            Self::Busy => "busy",
            Self::NoRoom(_) => "no_room",
            Self::RateLimited => "rate_limited",
            Self::Quota { .. } => "quota",
            Self::Uncallable => "uncallable",
            Self::Graph(_) => "graph_failed",
            Self::Setup(_) => "setup_failed",
            Self::Blocked => "blocked",
        }
    }
}

/// Which kind of message reached the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// Free-form text, inside the customer-service window.
    Text,
    /// The approved template, outside it.
    Template,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Template => "template",
        }
    }
}

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Outside the 24-hour window with no `REMINDER_TEMPLATE` configured.
    #[error("outside the 24-hour customer-service window and no REMINDER_TEMPLATE is set")]
    NoChannel,
    #[error("the Graph API refused the message: {0}")]
    Graph(GraphError),
}

/// The business's ways to reach users; cheap to clone.
#[derive(Clone)]
pub struct Outreach {
    inner: Arc<Inner>,
}

struct Inner {
    calls: Calls,
    graph: GraphClient,
    store: Arc<dyn Store>,
    metrics: Metrics,
    settings: ReminderSettings,
    /// Wakes the scheduler at once (a callback was queued).
    wake: Notify,
    busy_notices: Arc<Semaphore>,
    /// When the next permission read may go out.
    next_permission_read: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Outreach {
    pub fn new(calls: Calls, settings: ReminderSettings) -> Self {
        let context = calls.context();
        Self {
            inner: Arc::new(Inner {
                graph: context.graph.clone(),
                store: context.store.clone(),
                metrics: context.metrics.clone(),
                calls,
                settings,
                wake: Notify::new(),
                busy_notices: Arc::new(Semaphore::new(MAX_BUSY_NOTICES_IN_FLIGHT)),
                next_permission_read: tokio::sync::Mutex::new(tokio::time::Instant::now()),
            }),
        }
    }

    pub fn settings(&self) -> &ReminderSettings {
        &self.inner.settings
    }

    pub fn calls(&self) -> &Calls {
        &self.inner.calls
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Calls `to` by §7.2: the permission first (`GET call_permissions`), then the offer and
    /// `connect`. `opening` is what the AI says once the user picks up; `ai_context` goes into
    /// its instructions.
    pub async fn call(
        &self,
        to: &PhoneNumber,
        opening: &str,
        ai_context: &str,
        reminder_id: Option<&str>,
    ) -> Result<Placed, OutreachError> {
        let calls = &self.inner.calls;
        if self.is_blocked(to) {
            return Err(OutreachError::Blocked);
        }
        if calls.registry().free_slots() == 0 {
            return Err(OutreachError::NoRoom(RefusalReason::AtCapacity.as_str()));
        }
        if calls.ai_unavailable() {
            return Err(OutreachError::NoRoom(RefusalReason::AiUnavailable.as_str()));
        }
        self.pace_permission_read().await;
        let permission =
            self.inner
                .graph
                .call_permission(to)
                .await
                .map_err(|err| match err.kind() {
                    Some(GraphErrorKind::RateLimited) => OutreachError::RateLimited,
                    _ => OutreachError::Graph(err),
                })?;
        if !permission.can_start_call {
            let granted = matches!(
                permission.status,
                PermissionStatus::Temporary | PermissionStatus::Permanent
            );
            return Err(if granted {
                OutreachError::Quota {
                    resets_at: permission.start_call_resets_at,
                }
            } else {
                OutreachError::NoPermission {
                    can_request: permission.can_request_permission,
                }
            });
        }
        calls
            .place_for(to, opening, ai_context, reminder_id)
            .await
            .map_err(|err| match err {
                PlaceError::Refused(refusal) => match refusal.reason {
                    RefusalReason::CallerBusy => OutreachError::Busy,
                    RefusalReason::Blocked => OutreachError::Blocked,
                    reason => OutreachError::NoRoom(reason.as_str()),
                },
                PlaceError::Setup(err) => OutreachError::Setup(err),
                PlaceError::Graph(err) => match err.code() {
                    Some(codes::UNCALLABLE | codes::NOT_AVAILABLE) => OutreachError::Uncallable,
                    _ => match err.kind() {
                        Some(GraphErrorKind::CallAlreadyActive) => OutreachError::Busy,
                        Some(GraphErrorKind::NoCallPermission) => {
                            OutreachError::NoPermission { can_request: true }
                        }
                        Some(GraphErrorKind::CallLimitReached) => {
                            OutreachError::Quota { resets_at: None }
                        }
                        _ => OutreachError::Graph(err),
                    },
                },
            })
    }

    /// Whether the number is on the block list: it is never called or messaged.
    pub fn is_blocked(&self, phone: &PhoneNumber) -> bool {
        self.inner.calls.context().block_list.is_blocked(phone)
    }

    /// Waits for this replica's next permission-read slot.
    async fn pace_permission_read(&self) {
        let slot = {
            let mut next = self.inner.next_permission_read.lock().await;
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + PERMISSION_READ_SPACING;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Sends `text` to the user: free-form inside the customer-service window (the user wrote
    /// within 24 hours), else the configured template with `text` as its parameter.
    pub async fn message(&self, to: &PhoneNumber, text: &str) -> Result<MessageKind, MessageError> {
        let last_message = match self.inner.store.caller_profile(to).await {
            Ok(profile) => profile.last_message_at,
            Err(err) => {
                debug!(%err, "caller profile unavailable; the window is taken as closed");
                None
            }
        };
        let in_window = last_message.is_some_and(|at| Utc::now() - at < SERVICE_WINDOW);
        if in_window {
            match self.inner.graph.send_text(to, text).await {
                Ok(_) => return Ok(self.sent(MessageKind::Text)),
                // Meta knows the window better than our record of it: the template then.
                Err(err) if err.kind() == Some(GraphErrorKind::OutsideCustomerServiceWindow) => {
                    self.count_message("text", "outside_window");
                }
                Err(err) => {
                    self.count_message("text", "failed");
                    return Err(MessageError::Graph(err));
                }
            }
        }
        let Some(template) = &self.inner.settings.template else {
            self.count_message("template", "not_configured");
            return Err(MessageError::NoChannel);
        };
        let language = &self.inner.settings.template_language;
        match self
            .inner
            .graph
            .send_template(to, template, language, &[text.to_owned()])
            .await
        {
            Ok(_) => Ok(self.sent(MessageKind::Template)),
            Err(err) => {
                self.count_message("template", "failed");
                Err(MessageError::Graph(err))
            }
        }
    }

    /// Asks the user for call permission (free-form, so only inside the customer-service
    /// window: outside it Meta needs a permission-request template, which is not configured).
    pub async fn request_permission(&self, to: &PhoneNumber) -> Result<(), MessageError> {
        match self
            .inner
            .graph
            .request_call_permission(to, PERMISSION_REQUEST_TEXT)
            .await
        {
            Ok(_) => {
                self.count_message("permission_request", "sent");
                Ok(())
            }
            Err(err) => {
                let outcome = if err.kind() == Some(GraphErrorKind::OutsideCustomerServiceWindow) {
                    "outside_window"
                } else {
                    "failed"
                };
                self.count_message("permission_request", outcome);
                Err(MessageError::Graph(err))
            }
        }
    }

    fn sent(&self, kind: MessageKind) -> MessageKind {
        self.count_message(kind.as_str(), "sent");
        kind
    }

    fn count_message(&self, kind: &str, outcome: &str) {
        self.inner
            .metrics
            .messages_sent
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// A caller was refused at capacity: unless `CALLBACK_ON_BUSY=false`, a callback is queued
    /// and the caller told the lines are busy (once per queued callback: a caller who redials
    /// is not messaged again). In the background, bounded; never delays the webhook.
    pub fn caller_refused_at_capacity(&self, caller: PhoneNumber) {
        // A blocked number is neither messaged nor called back.
        if !self.inner.settings.callback_on_busy || self.is_blocked(&caller) {
            return;
        }
        let Ok(permit) = self.inner.busy_notices.clone().try_acquire_owned() else {
            debug!("busy notice skipped: too many in flight");
            return;
        };
        let outreach = self.clone();
        self.inner.calls.tracker().spawn(async move {
            outreach.queue_callback(&caller).await;
            drop(permit);
        });
    }

    async fn queue_callback(&self, caller: &PhoneNumber) {
        let queued = self
            .inner
            .store
            .queue_callback(caller, delivery::CALLBACK_PURPOSE, Utc::now())
            .await;
        match queued {
            Ok(Some(_)) => {
                self.inner.metrics.callbacks_queued.inc();
                info!(caller = %caller, "callback queued for a caller refused at capacity");
                if let Err(err) = self.message(caller, BUSY_MESSAGE).await {
                    warn!(caller = %caller, %err, "the busy message could not be sent");
                }
                self.inner.wake.notify_one();
            }
            Ok(None) => debug!(caller = %caller, "a callback is already queued"),
            Err(err) => {
                self.inner
                    .metrics
                    .store_errors
                    .with_label_values(&["queue_callback"])
                    .inc();
                warn!(caller = %caller, %err, "the callback could not be queued");
            }
        }
    }
}
