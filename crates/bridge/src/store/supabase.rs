//! The production store: Supabase over PostgREST (`postgrest` crate), with the service-role key
//! as `apikey` and bearer token. Filters, order and limits are PostgREST's query grammar;
//! PostgREST's error bodies (`code`, `message`, `details`, `hint`) become [`StoreError`]s.

use std::time::Duration;

use chrono::{DateTime, Utc};
use postgrest::Postgrest;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{
    BlockedCaller, CallOutcome, CallRecord, CallerProfile, Forgotten, NewTask, Purged, Reminder,
    ReminderKind, ReminderStatus, ReminderUpdate, SettledColumns, Store, StoreError, Task,
    TaskStatus, TranscriptTurn, enum_text, time_text,
};
use crate::ids::{CallId, PhoneNumber};

#[derive(Clone)]
pub struct SupabaseConfig {
    /// The project URL (`SUPABASE_URL`), e.g. `https://xyz.supabase.co`.
    pub url: String,
    pub service_role_key: SecretString,
    /// Per request.
    pub timeout: Duration,
}

/// The Supabase store; cheap to clone.
#[derive(Clone)]
pub struct SupabaseStore {
    client: Postgrest,
    timeout: Duration,
}

impl std::fmt::Debug for SupabaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupabaseStore")
            .field("service_role_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

fn is_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

/// The SQL function that claims due reminders (`0003_reminder_delivery.sql`).
const CLAIM_FUNCTION: &str = "claim_due_reminders";

/// The SQL function of the retention purge (`0005_retention.sql`).
const PURGE_FUNCTION: &str = "purge_history_before";
/// The SQL function that deletes everything of one caller (`0005_retention.sql`).
const FORGET_FUNCTION: &str = "forget_caller";

/// The row `purge_history_before` answers.
#[derive(serde::Deserialize)]
struct PurgeRow {
    purged_turns: u64,
    purged_calls: u64,
}

/// The row `forget_caller` answers.
#[derive(serde::Deserialize)]
struct ForgetRow {
    forgotten_tasks: u64,
    forgotten_reminders: u64,
    forgotten_turns: u64,
    forgotten_calls: u64,
    forgotten_profiles: u64,
}

/// A lease in the whole seconds the SQL function takes, rounded up (a lease is never shortened).
fn lease_seconds(lease: Duration) -> i32 {
    let seconds = lease.as_secs() + u64::from(lease.subsec_nanos() > 0);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// PostgREST's error body.
fn error_from(status: u16, body: &str) -> StoreError {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = parsed["code"].as_str().unwrap_or_default().to_owned();
    let message = parsed["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        401 | 403 => StoreError::Unauthorized(message),
        404 => StoreError::Schema(message),
        409 => StoreError::Conflict(message),
        500..=599 => StoreError::Unavailable(message),
        _ => StoreError::Other {
            code: if code.is_empty() {
                format!("http_{status}")
            } else {
                code
            },
            message,
        },
    }
}

impl SupabaseStore {
    pub fn new(config: SupabaseConfig) -> Self {
        let key = config.service_role_key.expose_secret().to_owned();
        let client = Postgrest::new(format!("{}/rest/v1", config.url.trim_end_matches('/')))
            .insert_header("apikey", &key)
            .insert_header("Authorization", format!("Bearer {key}"));
        Self {
            client,
            timeout: config.timeout,
        }
    }

    /// Sends a request; the body of a 2xx answer, or the mapped error.
    async fn send(&self, builder: postgrest::Builder) -> Result<String, StoreError> {
        let response = builder
            .build()
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|err| StoreError::Unavailable(err.to_string()))?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(error_from(status, &body))
        }
    }

    async fn rows<T: DeserializeOwned>(
        &self,
        builder: postgrest::Builder,
    ) -> Result<Vec<T>, StoreError> {
        let body = self.send(builder).await?;
        serde_json::from_str(&body).map_err(|err| StoreError::InvalidResponse(err.to_string()))
    }

    /// Runs a PATCH of one reminder filtered on its claim: whether it applied (one row back).
    async fn update_claimed(
        &self,
        id: &str,
        owner: &str,
        changes: Value,
    ) -> Result<bool, StoreError> {
        if !is_uuid(id) {
            return Ok(false);
        }
        let rows: Vec<Reminder> = self
            .rows(
                self.client
                    .from("reminders")
                    .eq("id", id)
                    .eq("claimed_by", owner)
                    .eq("status", enum_text(&ReminderStatus::Calling))
                    .update(changes.to_string()),
            )
            .await?;
        Ok(rows.len() == 1)
    }

    /// Inserts or merges the caller's row (`callers`, keyed on the number): only the columns
    /// in `columns` are written; the database keeps the latest `last_message_at` (a trigger).
    async fn upsert_caller(
        &self,
        phone: &PhoneNumber,
        mut columns: Value,
    ) -> Result<(), StoreError> {
        columns["phone_number"] = json!(phone.as_str());
        self.send(
            self.client
                .from("callers")
                .upsert(columns.to_string())
                .on_conflict("phone_number"),
        )
        .await
        .map(|_| ())
    }

    async fn one<T: DeserializeOwned>(&self, builder: postgrest::Builder) -> Result<T, StoreError> {
        self.rows(builder)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::InvalidResponse("no row returned".into()))
    }
}

#[async_trait::async_trait]
impl Store for SupabaseStore {
    async fn add_task(&self, phone: &PhoneNumber, task: NewTask) -> Result<Task, StoreError> {
        let body = json!({
            "phone_number": phone.as_str(),
            "title": task.title,
            "notes": task.notes,
            "due_at": task.due_at.map(time_text),
        });
        self.one(self.client.from("tasks").insert(body.to_string()))
            .await
    }

    async fn list_tasks(
        &self,
        phone: &PhoneNumber,
        status: Option<TaskStatus>,
    ) -> Result<Vec<Task>, StoreError> {
        let mut query = self
            .client
            .from("tasks")
            .select("*")
            .eq("phone_number", phone.as_str());
        if let Some(status) = status {
            query = query.eq("status", enum_text(&status));
        }
        self.rows(query.order("created_at.desc")).await
    }

    async fn complete_task(
        &self,
        phone: &PhoneNumber,
        id: &str,
    ) -> Result<Option<Task>, StoreError> {
        if !is_uuid(id) {
            return Ok(None);
        }
        let body = json!({ "status": "done", "completed_at": time_text(Utc::now()) });
        let rows: Vec<Task> = self
            .rows(
                self.client
                    .from("tasks")
                    .eq("id", id)
                    .eq("phone_number", phone.as_str())
                    .update(body.to_string()),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn add_reminder(
        &self,
        phone: &PhoneNumber,
        text: &str,
        remind_at: DateTime<Utc>,
    ) -> Result<Reminder, StoreError> {
        let body = json!({
            "phone_number": phone.as_str(),
            "text": text,
            "remind_at": time_text(remind_at),
            "kind": enum_text(&ReminderKind::Reminder),
        });
        self.one(self.client.from("reminders").insert(body.to_string()))
            .await
    }

    async fn list_reminders(
        &self,
        phone: &PhoneNumber,
        status: Option<ReminderStatus>,
    ) -> Result<Vec<Reminder>, StoreError> {
        let mut query = self
            .client
            .from("reminders")
            .select("*")
            .eq("phone_number", phone.as_str())
            .eq("kind", enum_text(&ReminderKind::Reminder));
        if let Some(status) = status {
            query = query.eq("status", enum_text(&status));
        }
        self.rows(query.order("remind_at.asc")).await
    }

    async fn cancel_reminder(
        &self,
        phone: &PhoneNumber,
        id: &str,
    ) -> Result<Option<Reminder>, StoreError> {
        if !is_uuid(id) {
            return Ok(None);
        }
        let rows: Vec<Reminder> = self
            .rows(
                self.client
                    .from("reminders")
                    .eq("id", id)
                    .eq("phone_number", phone.as_str())
                    .eq("kind", enum_text(&ReminderKind::Reminder))
                    .eq("status", "pending")
                    .update(json!({ "status": "cancelled" }).to_string()),
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn start_call(&self, call: &CallRecord) -> Result<(), StoreError> {
        let body = json!({
            "id": call.id.as_str(),
            "phone_number": call.phone_number.as_ref().map(PhoneNumber::as_str),
            "direction": enum_text(&call.direction),
            "started_at": time_text(call.started_at),
            "reminder_id": call.reminder_id,
        });
        match self
            .send(self.client.from("calls").insert(body.to_string()))
            .await
        {
            // Already written: the start is idempotent on the call id.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn finish_call(&self, id: &CallId, outcome: &CallOutcome) -> Result<(), StoreError> {
        let body = json!({
            "answered_at": outcome.answered_at.map(time_text),
            "ended_at": time_text(outcome.ended_at),
            "duration_seconds": outcome.duration_seconds,
            "end_reason": outcome.end_reason,
        });
        self.send(
            self.client
                .from("calls")
                .eq("id", id.as_str())
                .update(body.to_string()),
        )
        .await
        .map(|_| ())
    }

    async fn call(&self, id: &CallId) -> Result<Option<CallRecord>, StoreError> {
        let rows: Vec<CallRecord> = self
            .rows(self.client.from("calls").select("*").eq("id", id.as_str()))
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn append_turns(&self, turns: &[TranscriptTurn]) -> Result<(), StoreError> {
        if turns.is_empty() {
            return Ok(());
        }
        let body: Vec<Value> = turns
            .iter()
            .map(|turn| {
                json!({
                    "call_id": turn.call_id.as_str(),
                    "seq": turn.seq,
                    "role": enum_text(&turn.role),
                    "text": turn.text,
                    "at": time_text(turn.at),
                })
            })
            .collect();
        match self
            .send(
                self.client
                    .from("transcript_turns")
                    .insert(Value::Array(body).to_string()),
            )
            .await
        {
            // The journal never sends a turn twice; a conflict means it is already stored.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn call_turns(&self, id: &CallId) -> Result<Vec<TranscriptTurn>, StoreError> {
        self.rows(
            self.client
                .from("transcript_turns")
                .select("*")
                .eq("call_id", id.as_str())
                .order("seq.asc"),
        )
        .await
    }

    async fn recent_turns(
        &self,
        phone: &PhoneNumber,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TranscriptTurn>, StoreError> {
        // The caller's turns through their calls: an inner-joined embed filtered on the phone.
        let mut turns: Vec<TranscriptTurn> = self
            .rows(
                self.client
                    .from("transcript_turns")
                    .select("call_id,seq,role,text,at,calls!inner(phone_number)")
                    .eq("calls.phone_number", phone.as_str())
                    .gte("at", time_text(since))
                    .order("at.desc")
                    .limit(limit),
            )
            .await?;
        turns.reverse();
        Ok(turns)
    }

    async fn claim_due_reminders(
        &self,
        owner: &str,
        _now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Reminder>, StoreError> {
        // The function claims under row locks (`for update skip locked`) on the database's
        // clock, so replicas with skewed clocks still never claim one row twice.
        let args = json!({
            "p_owner": owner,
            "p_lease_seconds": lease_seconds(lease),
            "p_limit": i32::try_from(limit).unwrap_or(i32::MAX),
        });
        self.rows(self.client.rpc(CLAIM_FUNCTION, args.to_string()))
            .await
    }

    async fn extend_reminder_claim(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.update_claimed(id, owner, json!({ "claim_expires_at": time_text(until) }))
            .await
    }

    async fn settle_reminder(
        &self,
        id: &str,
        owner: &str,
        update: &ReminderUpdate,
    ) -> Result<bool, StoreError> {
        let settled = SettledColumns::of(&update.settlement);
        let changes = json!({
            "status": enum_text(&settled.status),
            "next_attempt_at": settled.next_attempt_at.map(time_text),
            "delivered_via": settled.delivered_via.as_ref().map(enum_text),
            "failure_reason": settled.failure_reason,
            "attempts": update.attempts,
            "attempt_log": update.attempt_log,
            "last_attempt_at": update.last_attempt_at.map(time_text),
            "claimed_by": null,
            "claim_expires_at": null,
        });
        self.update_claimed(id, owner, changes).await
    }

    async fn queue_callback(
        &self,
        phone: &PhoneNumber,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Reminder>, StoreError> {
        let body = json!({
            "phone_number": phone.as_str(),
            "text": purpose,
            "remind_at": time_text(now),
            "kind": enum_text(&ReminderKind::Callback),
        });
        match self
            .one(self.client.from("reminders").insert(body.to_string()))
            .await
        {
            Ok(callback) => Ok(Some(callback)),
            // The unique index on open callbacks: the caller already has one.
            Err(StoreError::Conflict(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn caller_profile(&self, phone: &PhoneNumber) -> Result<CallerProfile, StoreError> {
        let rows: Vec<CallerProfile> = self
            .rows(
                self.client
                    .from("callers")
                    .select("time_zone,last_message_at")
                    .eq("phone_number", phone.as_str()),
            )
            .await?;
        Ok(rows.into_iter().next().unwrap_or_default())
    }

    async fn set_caller_time_zone(
        &self,
        phone: &PhoneNumber,
        zone: &str,
    ) -> Result<(), StoreError> {
        self.upsert_caller(phone, json!({ "time_zone": zone }))
            .await
    }

    async fn list_blocked(&self) -> Result<Vec<BlockedCaller>, StoreError> {
        self.rows(
            self.client
                .from("blocked_callers")
                .select("phone_number,reason,blocked_at")
                .order("blocked_at.asc"),
        )
        .await
    }

    async fn block_caller(
        &self,
        phone: &PhoneNumber,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<BlockedCaller, StoreError> {
        let row = json!({
            "phone_number": phone.as_str(),
            "reason": reason,
            "blocked_at": time_text(at),
        });
        self.one(
            self.client
                .from("blocked_callers")
                .upsert(row.to_string())
                .on_conflict("phone_number"),
        )
        .await
    }

    async fn unblock_caller(&self, phone: &PhoneNumber) -> Result<bool, StoreError> {
        let rows: Vec<BlockedCaller> = self
            .rows(
                self.client
                    .from("blocked_callers")
                    .eq("phone_number", phone.as_str())
                    .delete(),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn note_caller_message(
        &self,
        phone: &PhoneNumber,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.upsert_caller(phone, json!({ "last_message_at": time_text(at) }))
            .await
    }

    async fn purge_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        // One function call: each delete is bounded by the limit inside the database (PostgREST
        // cannot limit a DELETE by itself).
        let args = json!({
            "p_cutoff": time_text(cutoff),
            "p_limit": i32::try_from(limit).unwrap_or(i32::MAX),
        });
        let row: PurgeRow = self
            .one(self.client.rpc(PURGE_FUNCTION, args.to_string()))
            .await?;
        Ok(Purged {
            transcript_turns: row.purged_turns,
            calls: row.purged_calls,
        })
    }

    async fn forget_caller(&self, phone: &PhoneNumber) -> Result<Forgotten, StoreError> {
        // One function call, so one transaction: all of the caller's rows go, or none.
        let args = json!({ "p_phone": phone.as_str() });
        let row: ForgetRow = self
            .one(self.client.rpc(FORGET_FUNCTION, args.to_string()))
            .await?;
        Ok(Forgotten {
            tasks: row.forgotten_tasks,
            reminders: row.forgotten_reminders,
            transcript_turns: row.forgotten_turns,
            calls: row.forgotten_calls,
            profiles: row.forgotten_profiles,
        })
    }

    async fn delete_call(&self, id: &CallId) -> Result<(), StoreError> {
        // The turns go with the row (`on delete cascade`).
        self.send(self.client.from("calls").eq("id", id.as_str()).delete())
            .await
            .map(|_| ())
    }
}
