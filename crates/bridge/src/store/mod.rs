//! The caller's data: tasks, reminders, the call log and transcripts, behind one [`Store`] trait
//! with two implementations: [`supabase::SupabaseStore`] over PostgREST (production) and
//! [`embedded::EmbeddedStore`], a SQLite database on disk (the default when Supabase is not
//! configured).
//!
//! Every operation on tasks and reminders takes the caller's phone number, which comes from the
//! call, never from the AI: an id belonging to another number is "not found".

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    /// A UUID, as text.
    pub id: String,
    pub phone_number: PhoneNumber,
    pub text: String,
    pub remind_at: DateTime<Utc>,
    pub status: ReminderStatus,
    pub attempts: u32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
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
    /// The caller's reminders, soonest first; all when `status` is `None`.
    async fn list_reminders(
        &self,
        phone: &PhoneNumber,
        status: Option<ReminderStatus>,
    ) -> Result<Vec<Reminder>, StoreError>;
    /// Cancels the caller's pending reminder; `None` when no pending reminder with that id
    /// belongs to this caller.
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
