//! The caller's data: tasks, reminders, the call log and transcripts, caller profiles, behind one
//! [`Store`] trait with two implementations: [`supabase::SupabaseStore`] over PostgREST
//! (production) and [`embedded::EmbeddedStore`], a SQLite database on disk (the default when
//! Supabase is not configured).
//!
//! Every operation on tasks and reminders takes the caller's phone number, which comes from the
//! call, never from the AI: an id belonging to another number is "not found".
//!
//! Reminders (and callbacks) are delivered by replicas sharing the store: a replica claims due
//! rows for a lease ([`Store::claim_due_reminders`]), extends the lease while it delivers, and
//! settles each row it still holds. Every write after the claim is filtered on the claim, so a
//! replica that lost it (its lease expired and another took the row) changes nothing.

#[cfg(any(test, feature = "store-contract"))]
pub mod contract;
pub mod embedded;
mod sqlite_thread;
pub mod supabase;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CallId, PhoneNumber};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Open,
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// A UUID, as text.
    pub id: String,
    pub phone_number: PhoneNumber,
    pub title: String,
    pub notes: Option<String>,
    pub status: TaskStatus,
    pub due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask {
    pub title: String,
    pub notes: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReminderStatus {
    Pending,
    Calling,
    Delivered,
    Failed,
    Cancelled,
}

/// What a reminder row is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReminderKind {
    /// One the caller asked for: theirs to list and cancel.
    #[default]
    Reminder,
    /// The business calls back a caller it refused at capacity; not one of the caller's reminders.
    Callback,
}

/// How a reminder reached the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryChannel {
    Call,
    Message,
}

impl DeliveryChannel {
    /// The wire and metrics name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Message => "message",
        }
    }
}

impl ReminderKind {
    /// The wire and metrics name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reminder => "reminder",
            Self::Callback => "callback",
        }
    }
}

/// One delivery attempt, as recorded on the reminder (listed by the `list_reminders` tool).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderAttempt {
    pub at: DateTime<Utc>,
    /// "call", "message" or "permission_request".
    pub channel: String,
    /// e.g. "delivered", "not_answered", "rejected", "busy", "hung_up", "no_permission", "sent", "failed".
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    /// A UUID, as text.
    pub id: String,
    pub phone_number: PhoneNumber,
    pub text: String,
    pub remind_at: DateTime<Utc>,
    pub status: ReminderStatus,
    /// The number of call attempts so far.
    pub attempts: u32,
    /// The last attempt of any channel.
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub kind: ReminderKind,
    /// A retry is not due before this (None: due at remind_at).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_via: Option<DeliveryChannel>,
    pub failure_reason: Option<String>,
    pub attempt_log: Vec<ReminderAttempt>,
    /// The replica holding the claim while status is `calling`.
    pub claimed_by: Option<String>,
    pub claim_expires_at: Option<DateTime<Utc>>,
}

impl Reminder {
    /// When the reminder is (next) due: its retry time, or else its time.
    pub fn due_at(&self) -> DateTime<Utc> {
        self.next_attempt_at.unwrap_or(self.remind_at)
    }
}

/// How a delivery round ended, for [`Store::settle_reminder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReminderSettlement {
    /// Back to `pending`, due again at this time.
    Retry {
        next_attempt_at: DateTime<Utc>,
    },
    Delivered(DeliveryChannel),
    Failed {
        reason: String,
    },
}

/// What the claimant writes when it settles a reminder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReminderUpdate {
    pub settlement: ReminderSettlement,
    /// The new call-attempt count.
    pub attempts: u32,
    /// The whole attempt log (the claimant holds the row, so it replaces the stored one).
    pub attempt_log: Vec<ReminderAttempt>,
    pub last_attempt_at: Option<DateTime<Utc>>,
}

/// The columns a settlement writes, the same in both stores. The claim is cleared whatever the
/// settlement: a settled reminder is nobody's.
pub(crate) struct SettledColumns {
    pub status: ReminderStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_via: Option<DeliveryChannel>,
    pub failure_reason: Option<String>,
}

impl SettledColumns {
    pub fn of(settlement: &ReminderSettlement) -> Self {
        let none = Self {
            status: ReminderStatus::Pending,
            next_attempt_at: None,
            delivered_via: None,
            failure_reason: None,
        };
        match settlement {
            ReminderSettlement::Retry { next_attempt_at } => Self {
                next_attempt_at: Some(*next_attempt_at),
                ..none
            },
            ReminderSettlement::Delivered(channel) => Self {
                status: ReminderStatus::Delivered,
                delivered_via: Some(*channel),
                ..none
            },
            ReminderSettlement::Failed { reason } => Self {
                status: ReminderStatus::Failed,
                failure_reason: Some(reason.clone()),
                ..none
            },
        }
    }
}

/// What the bridge keeps about a caller besides their tasks and reminders.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerProfile {
    /// An IANA zone name the caller stated (e.g. "Europe/London"); None: derive from the number.
    pub time_zone: Option<String>,
    /// The caller's last inbound WhatsApp message (opens the 24-hour customer-service window).
    pub last_message_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallLogDirection {
    Inbound,
    Outbound,
}

/// One row of the call log, written when the call starts and completed when it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub id: CallId,
    pub phone_number: Option<PhoneNumber>,
    pub direction: CallLogDirection,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<u32>,
    pub end_reason: Option<String>,
    pub reminder_id: Option<String>,
}

impl CallRecord {
    /// The row of a call that has just started: nothing about its answer or end yet.
    pub fn started(
        id: CallId,
        phone_number: Option<PhoneNumber>,
        direction: CallLogDirection,
        started_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            phone_number,
            direction,
            started_at,
            answered_at: None,
            ended_at: None,
            duration_seconds: None,
            end_reason: None,
            reminder_id: None,
        }
    }
}

/// How a call ended, for [`Store::finish_call`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallOutcome {
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
    pub duration_seconds: u32,
    pub end_reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptTurn {
    pub call_id: CallId,
    /// Order within the call, from 0.
    pub seq: u32,
    pub role: Role,
    pub text: String,
    pub at: DateTime<Utc>,
}

/// What one round of [`Store::purge_before`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub transcript_turns: u64,
    pub calls: u64,
}

/// What [`Store::forget_caller`] deleted of one caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forgotten {
    pub tasks: u64,
    pub reminders: u64,
    pub transcript_turns: u64,
    pub calls: u64,
    /// 1 when the caller had a profile (`callers` row), else 0.
    pub profiles: u64,
}

impl Forgotten {
    pub fn total(&self) -> u64 {
        self.tasks + self.reminders + self.transcript_turns + self.calls + self.profiles
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused our credentials (PostgREST 401/403, PGRST301...).
    #[error("store refused the credentials: {0}")]
    Unauthorized(String),
    /// A unique or foreign-key constraint (PostgREST 409, SQLite constraint).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The table or column does not exist (PostgREST 404 / PGRST205, migrations not applied).
    #[error("schema problem: {0}")]
    Schema(String),
    /// The store answered something we cannot read.
    #[error("invalid response from the store: {0}")]
    InvalidResponse(String),
    /// Anything else the store reported, with its code (PostgREST `code`, SQLite error).
    #[error("store error {code}: {message}")]
    Other { code: String, message: String },
}

/// The one seam between the bridge and its data.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn add_task(&self, phone: &PhoneNumber, task: NewTask) -> Result<Task, StoreError>;
    /// The caller's tasks, newest first; all when `status` is `None`.
    async fn list_tasks(
        &self,
        phone: &PhoneNumber,
        status: Option<TaskStatus>,
    ) -> Result<Vec<Task>, StoreError>;
    /// Marks the caller's task done; `None` when no task with that id belongs to this caller.
    async fn complete_task(
        &self,
        phone: &PhoneNumber,
        id: &str,
    ) -> Result<Option<Task>, StoreError>;
    async fn add_reminder(
        &self,
        phone: &PhoneNumber,
        text: &str,
        remind_at: DateTime<Utc>,
    ) -> Result<Reminder, StoreError>;
    /// The caller's reminders (kind `reminder`: callbacks are not theirs), soonest first; all
    /// when `status` is `None`.
    async fn list_reminders(
        &self,
        phone: &PhoneNumber,
        status: Option<ReminderStatus>,
    ) -> Result<Vec<Reminder>, StoreError>;
    /// Cancels the caller's pending reminder (kind `reminder`); `None` when no pending reminder
    /// with that id belongs to this caller.
    async fn cancel_reminder(
        &self,
        phone: &PhoneNumber,
        id: &str,
    ) -> Result<Option<Reminder>, StoreError>;
    /// Writes the call log row at the start of a call (idempotent on the call id).
    async fn start_call(&self, call: &CallRecord) -> Result<(), StoreError>;
    /// Completes the call log row.
    async fn finish_call(&self, id: &CallId, outcome: &CallOutcome) -> Result<(), StoreError>;
    async fn call(&self, id: &CallId) -> Result<Option<CallRecord>, StoreError>;
    /// Appends transcript turns (idempotent on `(call_id, seq)`).
    async fn append_turns(&self, turns: &[TranscriptTurn]) -> Result<(), StoreError>;
    /// The turns of one call, in order.
    async fn call_turns(&self, id: &CallId) -> Result<Vec<TranscriptTurn>, StoreError>;
    /// The caller's most recent `limit` turns since `since` (over all their calls), oldest first.
    async fn recent_turns(
        &self,
        phone: &PhoneNumber,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TranscriptTurn>, StoreError>;
    /// Claims up to `limit` reminders due at `now` for `owner` until `now + lease`: pending ones
    /// whose `coalesce(next_attempt_at, remind_at) <= now`, and `calling` ones whose claim
    /// expired (a replica died mid-delivery; a `calling` row from before claims existed has no
    /// expiry and counts as expired), soonest first. Each claimed row becomes `calling`
    /// with `claimed_by = owner`. Atomic: two replicas never claim the same row at once.
    /// (Supabase: the database clock decides; `now` is ignored there, and the lease is counted
    /// in whole seconds, rounded up.)
    async fn claim_due_reminders(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Reminder>, StoreError>;
    /// Extends a claim this owner still holds; false when it lost it (expired and re-claimed,
    /// or settled).
    async fn extend_reminder_claim(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// Settles a reminder this owner holds (status `calling`, claimed_by = owner): retry (back
    /// to `pending`, claim cleared), delivered or failed (final). False, changing nothing, when
    /// the owner no longer holds it.
    async fn settle_reminder(
        &self,
        id: &str,
        owner: &str,
        update: &ReminderUpdate,
    ) -> Result<bool, StoreError>;
    /// Queues a callback (a `Callback`-kind reminder due at `now`, `text` = purpose) unless the
    /// caller already has one pending or calling: `None` then.
    async fn queue_callback(
        &self,
        phone: &PhoneNumber,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Reminder>, StoreError>;
    /// The caller's profile (default when none stored).
    async fn caller_profile(&self, phone: &PhoneNumber) -> Result<CallerProfile, StoreError>;
    async fn set_caller_time_zone(&self, phone: &PhoneNumber, zone: &str)
    -> Result<(), StoreError>;
    /// Records an inbound message from the caller at `at` (keeps the latest).
    async fn note_caller_message(
        &self,
        phone: &PhoneNumber,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Retention: deletes up to `limit` transcript turns said before `cutoff`, then up to
    /// `limit` call-log rows of calls that ended (or, never completed, started) before `cutoff`
    /// and have no turns left. Tasks, reminders and profiles are the caller's own and are kept.
    /// A round deleting `limit` of either means more may be left.
    async fn purge_before(&self, cutoff: DateTime<Utc>, limit: usize)
    -> Result<Purged, StoreError>;
    /// "Forget me": deletes everything kept about the caller (tasks, reminders and callbacks,
    /// their calls' transcripts, their call log, their profile), at once.
    async fn forget_caller(&self, phone: &PhoneNumber) -> Result<Forgotten, StoreError>;
    /// Deletes one call's log row and its transcript turns (a call whose caller asked to be
    /// forgotten during it).
    async fn delete_call(&self, id: &CallId) -> Result<(), StoreError>;
    /// Every blocked number, earliest block first.
    async fn list_blocked(&self) -> Result<Vec<BlockedCaller>, StoreError>;
    /// Blocks a number at `at`; blocking it again replaces the reason and the time.
    async fn block_caller(
        &self,
        phone: &PhoneNumber,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<BlockedCaller, StoreError>;
    /// Unblocks a number; false when it was not blocked.
    async fn unblock_caller(&self, phone: &PhoneNumber) -> Result<bool, StoreError>;
}

/// A number the business neither takes calls from nor calls (the admin API's `/blocked`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedCaller {
    pub phone_number: PhoneNumber,
    /// Why, as the operator put it.
    pub reason: Option<String>,
    pub blocked_at: DateTime<Utc>,
}

/// Timestamps as both stores write them: RFC 3339, UTC, microseconds (PostgreSQL's precision;
/// also sorts as text in SQLite).
pub(crate) fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The wire text of one of the lowercase enums above (`open`, `pending`, `inbound`, ...).
pub(crate) fn enum_text<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
