//! The embedded store: a SQLite database on disk under `DATA_DIR` (the default when Supabase is
//! not configured), with the same tables and semantics as the Supabase schema. Blocking SQLite
//! work runs on the connection's own thread ([`SqliteThread`]), never on the async workers.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::sqlite_thread::SqliteThread;
use super::{
    BlockedCaller, CallLogDirection, CallOutcome, CallRecord, CallerProfile, Forgotten, NewTask,
    Purged, Reminder, ReminderKind, ReminderStatus, ReminderUpdate, SettledColumns, Store,
    StoreError, Task, TaskStatus, TranscriptTurn, enum_text, time_text,
};
use crate::ids::{CallId, PhoneNumber};

mod schema;

/// Prepared statements kept for reuse: more than the store has (SQLite's parser was a tenth
/// of the store's work when each write prepared its statement again).
const STATEMENT_CACHE: usize = 32;

/// The file under `DATA_DIR`.
pub const DATABASE_FILE: &str = "bridge.sqlite3";

/// The embedded store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    connection: SqliteThread,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

pub(super) fn sql_error(err: rusqlite::Error) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(code, message) => {
            let message = message.clone().unwrap_or_else(|| err.to_string());
            match code.code {
                rusqlite::ErrorCode::ConstraintViolation => StoreError::Conflict(message),
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                    StoreError::Unavailable(message)
                }
                other => StoreError::Other {
                    code: format!("{other:?}"),
                    message,
                },
            }
        }
        _ => StoreError::Other {
            code: "sqlite".to_owned(),
            message: err.to_string(),
        },
    }
}

fn parse_time(text: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn blocked_from_row(row: &Row<'_>) -> rusqlite::Result<BlockedCaller> {
    Ok(BlockedCaller {
        phone_number: PhoneNumber::new(row.get::<_, String>("phone_number")?),
        reason: row.get("reason")?,
        blocked_at: parse_time(&row.get::<_, String>("blocked_at")?)?,
    })
}

fn parse_opt_time(text: Option<String>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    text.as_deref().map(parse_time).transpose()
}

fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: row.get("id")?,
        phone_number: PhoneNumber::new(row.get::<_, String>("phone_number")?),
        title: row.get("title")?,
        notes: row.get("notes")?,
        status: parse_enum(&row.get::<_, String>("status")?)?,
        due_at: parse_opt_time(row.get("due_at")?)?,
        created_at: parse_time(&row.get::<_, String>("created_at")?)?,
        completed_at: parse_opt_time(row.get("completed_at")?)?,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn reminder_from_row(row: &Row<'_>) -> rusqlite::Result<Reminder> {
    Ok(Reminder {
        id: row.get("id")?,
        phone_number: PhoneNumber::new(row.get::<_, String>("phone_number")?),
        text: row.get("text")?,
        remind_at: parse_time(&row.get::<_, String>("remind_at")?)?,
        status: parse_enum(&row.get::<_, String>("status")?)?,
        attempts: row.get("attempts")?,
        last_attempt_at: parse_opt_time(row.get("last_attempt_at")?)?,
        created_at: parse_time(&row.get::<_, String>("created_at")?)?,
        kind: parse_enum(&row.get::<_, String>("kind")?)?,
        next_attempt_at: parse_opt_time(row.get("next_attempt_at")?)?,
        delivered_via: row
            .get::<_, Option<String>>("delivered_via")?
            .as_deref()
            .map(parse_enum)
            .transpose()?,
        failure_reason: row.get("failure_reason")?,
        attempt_log: parse_json(&row.get::<_, String>("attempt_log")?)?,
        claimed_by: row.get("claimed_by")?,
        claim_expires_at: parse_opt_time(row.get("claim_expires_at")?)?,
    })
}

/// A reminder as [`EmbeddedStore::insert_reminder`] writes it: pending, never attempted.
fn new_reminder(
    phone: &PhoneNumber,
    text: &str,
    remind_at: DateTime<Utc>,
    kind: ReminderKind,
) -> Reminder {
    Reminder {
        id: uuid::Uuid::new_v4().to_string(),
        phone_number: phone.clone(),
        text: text.to_owned(),
        remind_at,
        status: ReminderStatus::Pending,
        attempts: 0,
        last_attempt_at: None,
        created_at: Utc::now(),
        kind,
        next_attempt_at: None,
        delivered_via: None,
        failure_reason: None,
        attempt_log: Vec::new(),
        claimed_by: None,
        claim_expires_at: None,
    }
}

/// The end of a lease taken at `now`. A lease is at most `i32::MAX` seconds (68 years), as in
/// the Supabase store, so that its end keeps the four-digit year that sorts right as text.
fn lease_end(now: DateTime<Utc>, lease: std::time::Duration) -> DateTime<Utc> {
    let lease = chrono::Duration::from_std(lease)
        .unwrap_or(chrono::Duration::MAX)
        .min(chrono::Duration::seconds(i32::MAX.into()));
    now.checked_add_signed(lease)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn turn_from_row(row: &Row<'_>) -> rusqlite::Result<TranscriptTurn> {
    Ok(TranscriptTurn {
        call_id: CallId::new(row.get::<_, String>("call_id")?),
        seq: row.get("seq")?,
        role: parse_enum(&row.get::<_, String>("role")?)?,
        text: row.get("text")?,
        at: parse_time(&row.get::<_, String>("at")?)?,
    })
}

fn call_from_row(row: &Row<'_>) -> rusqlite::Result<CallRecord> {
    Ok(CallRecord {
        id: CallId::new(row.get::<_, String>("id")?),
        phone_number: row
            .get::<_, Option<String>>("phone_number")?
            .map(PhoneNumber::new),
        direction: parse_enum::<CallLogDirection>(&row.get::<_, String>("direction")?)?,
        started_at: parse_time(&row.get::<_, String>("started_at")?)?,
        answered_at: parse_opt_time(row.get("answered_at")?)?,
        ended_at: parse_opt_time(row.get("ended_at")?)?,
        duration_seconds: row.get("duration_seconds")?,
        end_reason: row.get("end_reason")?,
        reminder_id: row.get("reminder_id")?,
    })
}

/// A valid UUID text (others can never match a row; answering "not found" early is cheaper).
fn is_uuid(id: &str) -> bool {
    uuid::Uuid::from_str(id).is_ok()
}

impl EmbeddedStore {
    /// Opens (creating it if needed) `<data_dir>/bridge.sqlite3` and brings its schema up to
    /// date. Several stores, in one process or several, may open the same directory.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            StoreError::Unavailable(format!("cannot create {}: {err}", data_dir.display()))
        })?;
        let mut connection = Connection::open(data_dir.join(DATABASE_FILE)).map_err(sql_error)?;
        schema::prepare(&mut connection).map_err(sql_error)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            connection: SqliteThread::start(connection, sql_error)?,
        })
    }

    /// Makes every later write fail (SQLite `query_only`), as a read-only or full disk would:
    /// for tests and for an operator freezing the data.
    pub fn set_read_only(&self, read_only: bool) -> Result<(), StoreError> {
        self.connection.run_blocking(move |c| {
            c.pragma_update(None, "query_only", read_only)
                .map_err(sql_error)
        })
    }

    /// Runs `work` on the connection's thread.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.connection
            .run(move |c| work(c).map_err(sql_error))
            .await
    }

    /// Writes a new reminder row; false (nothing written) when a unique index refuses it (a
    /// caller's second open callback).
    async fn insert_reminder(&self, row: Reminder) -> Result<bool, StoreError> {
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO reminders (id, phone_number, text, remind_at, status, kind, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                row.id,
                row.phone_number.as_str(),
                row.text,
                time_text(row.remind_at),
                enum_text(&row.kind),
                time_text(row.created_at)
            ])
            .map(|inserted| inserted == 1)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn add_task(&self, phone: &PhoneNumber, task: NewTask) -> Result<Task, StoreError> {
        let task = Task {
            id: uuid::Uuid::new_v4().to_string(),
            phone_number: phone.clone(),
            title: task.title,
            notes: task.notes,
            status: TaskStatus::Open,
            due_at: task.due_at,
            created_at: Utc::now(),
            completed_at: None,
        };
        let row = task.clone();
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO tasks (id, phone_number, title, notes, status, due_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'open', ?5, ?6)",
            )?
            .execute(params![
                row.id,
                row.phone_number.as_str(),
                row.title,
                row.notes,
                row.due_at.map(time_text),
                time_text(row.created_at)
            ])
        })
        .await?;
        Ok(task)
    }

    async fn list_tasks(
        &self,
        phone: &PhoneNumber,
        status: Option<TaskStatus>,
    ) -> Result<Vec<Task>, StoreError> {
        let phone = phone.as_str().to_owned();
        let status = status.map(|s| enum_text(&s));
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT * FROM tasks WHERE phone_number = ?1 AND (?2 IS NULL OR status = ?2)
                 ORDER BY created_at DESC, rowid DESC",
            )?;
            statement
                .query_map(params![phone, status], task_from_row)?
                .collect()
        })
        .await
    }

    async fn complete_task(
        &self,
        phone: &PhoneNumber,
        id: &str,
    ) -> Result<Option<Task>, StoreError> {
        if !is_uuid(id) {
            return Ok(None);
        }
        let (phone, id) = (phone.as_str().to_owned(), id.to_owned());
        self.with(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE tasks SET status = 'done', completed_at = ?3
                 WHERE id = ?1 AND phone_number = ?2",
                )?
                .execute(params![id, phone, time_text(Utc::now())])?;
            if changed == 0 {
                return Ok(None);
            }
            c.query_row(
                "SELECT * FROM tasks WHERE id = ?1",
                params![id],
                task_from_row,
            )
            .optional()
        })
        .await
    }

    async fn add_reminder(
        &self,
        phone: &PhoneNumber,
        text: &str,
        remind_at: DateTime<Utc>,
    ) -> Result<Reminder, StoreError> {
        let reminder = new_reminder(phone, text, remind_at, ReminderKind::Reminder);
        if !self.insert_reminder(reminder.clone()).await? {
            return Err(StoreError::Conflict(
                "the reminder's id is taken".to_owned(),
            ));
        }
        Ok(reminder)
    }

    async fn list_reminders(
        &self,
        phone: &PhoneNumber,
        status: Option<ReminderStatus>,
    ) -> Result<Vec<Reminder>, StoreError> {
        let phone = phone.as_str().to_owned();
        let status = status.map(|s| enum_text(&s));
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT * FROM reminders WHERE phone_number = ?1 AND kind = 'reminder'
                 AND (?2 IS NULL OR status = ?2) ORDER BY remind_at ASC, rowid ASC",
            )?;
            statement
                .query_map(params![phone, status], reminder_from_row)?
                .collect()
        })
        .await
    }

    async fn cancel_reminder(
        &self,
        phone: &PhoneNumber,
        id: &str,
    ) -> Result<Option<Reminder>, StoreError> {
        if !is_uuid(id) {
            return Ok(None);
        }
        let (phone, id) = (phone.as_str().to_owned(), id.to_owned());
        self.with(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE reminders SET status = 'cancelled' WHERE id = ?1
                 AND phone_number = ?2 AND kind = 'reminder' AND status = 'pending'",
                )?
                .execute(params![id, phone])?;
            if changed == 0 {
                return Ok(None);
            }
            c.query_row(
                "SELECT * FROM reminders WHERE id = ?1",
                params![id],
                reminder_from_row,
            )
            .optional()
        })
        .await
    }

    async fn start_call(&self, call: &CallRecord) -> Result<(), StoreError> {
        let call = call.clone();
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO calls (id, phone_number, direction, started_at, reminder_id)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                call.id.as_str(),
                call.phone_number.as_ref().map(PhoneNumber::as_str),
                enum_text(&call.direction),
                time_text(call.started_at),
                call.reminder_id
            ])
            .map(|_| ())
        })
        .await
    }

    async fn finish_call(&self, id: &CallId, outcome: &CallOutcome) -> Result<(), StoreError> {
        let (id, outcome) = (id.as_str().to_owned(), outcome.clone());
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE calls SET answered_at = ?2, ended_at = ?3, duration_seconds = ?4,
                 end_reason = ?5 WHERE id = ?1",
            )?
            .execute(params![
                id,
                outcome.answered_at.map(time_text),
                time_text(outcome.ended_at),
                outcome.duration_seconds,
                outcome.end_reason
            ])
            .map(|_| ())
        })
        .await
    }

    async fn call(&self, id: &CallId) -> Result<Option<CallRecord>, StoreError> {
        let id = id.as_str().to_owned();
        self.with(move |c| {
            c.prepare_cached("SELECT * FROM calls WHERE id = ?1")?
                .query_row(params![id], call_from_row)
                .optional()
        })
        .await
    }

    async fn append_turns(&self, turns: &[TranscriptTurn]) -> Result<(), StoreError> {
        let turns = turns.to_vec();
        // All turns or none: the store's thread runs each piece of work in a savepoint.
        self.with(move |c| {
            let mut insert = c.prepare_cached(
                "INSERT INTO transcript_turns (call_id, seq, role, text, at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (call_id, seq) DO NOTHING",
            )?;
            for turn in &turns {
                insert.execute(params![
                    turn.call_id.as_str(),
                    turn.seq,
                    enum_text(&turn.role),
                    turn.text,
                    time_text(turn.at)
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn call_turns(&self, id: &CallId) -> Result<Vec<TranscriptTurn>, StoreError> {
        let id = id.as_str().to_owned();
        self.with(move |c| {
            let mut statement =
                c.prepare_cached("SELECT * FROM transcript_turns WHERE call_id = ?1 ORDER BY seq")?;
            statement.query_map(params![id], turn_from_row)?.collect()
        })
        .await
    }

    async fn recent_turns(
        &self,
        phone: &PhoneNumber,
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<TranscriptTurn>, StoreError> {
        let phone = phone.as_str().to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT t.* FROM transcript_turns t JOIN calls c ON c.id = t.call_id
                 WHERE c.phone_number = ?1 AND t.at >= ?2
                 ORDER BY t.at DESC, t.seq DESC LIMIT ?3",
            )?;
            let mut turns: Vec<TranscriptTurn> = statement
                .query_map(params![phone, time_text(since), limit], turn_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            turns.reverse();
            Ok(turns)
        })
        .await
    }

    async fn claim_due_reminders(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<Reminder>, StoreError> {
        let owner = owner.to_owned();
        let (now, until) = (time_text(now), time_text(lease_end(now, lease)));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One statement in the store thread's transaction, which holds the write lock from its
        // start (`BEGIN IMMEDIATE`): another process's claim waits for this one to commit.
        let mut claimed = self
            .with(move |c| {
                let mut statement = c.prepare_cached(
                    "UPDATE reminders SET status = 'calling', claimed_by = ?1, claim_expires_at = ?2
                     WHERE id IN (
                         SELECT id FROM reminders
                         WHERE (status = 'pending' AND coalesce(next_attempt_at, remind_at) <= ?3)
                            OR (status = 'calling'
                                AND (claim_expires_at IS NULL OR claim_expires_at <= ?3))
                         ORDER BY coalesce(next_attempt_at, remind_at), rowid
                         LIMIT ?4)
                     RETURNING *",
                )?;
                statement
                    .query_map(params![owner, until, now, limit], reminder_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        // RETURNING gives the rows in no particular order.
        claimed.sort_by_key(|reminder| (reminder.due_at(), reminder.created_at));
        Ok(claimed)
    }

    async fn extend_reminder_claim(
        &self,
        id: &str,
        owner: &str,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if !is_uuid(id) {
            return Ok(false);
        }
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE reminders SET claim_expires_at = ?3
                 WHERE id = ?1 AND claimed_by = ?2 AND status = 'calling'",
            )?
            .execute(params![id, owner, time_text(until)])
            .map(|changed| changed == 1)
        })
        .await
    }

    async fn settle_reminder(
        &self,
        id: &str,
        owner: &str,
        update: &ReminderUpdate,
    ) -> Result<bool, StoreError> {
        if !is_uuid(id) {
            return Ok(false);
        }
        let (id, owner) = (id.to_owned(), owner.to_owned());
        let settled = SettledColumns::of(&update.settlement);
        let attempt_log = serde_json::to_string(&update.attempt_log)
            .map_err(|err| StoreError::InvalidResponse(err.to_string()))?;
        let (attempts, last_attempt_at) = (update.attempts, update.last_attempt_at);
        self.with(move |c| {
            c.prepare_cached(
                "UPDATE reminders SET status = ?3, next_attempt_at = ?4, delivered_via = ?5,
                 failure_reason = ?6, attempts = ?7, attempt_log = ?8, last_attempt_at = ?9,
                 claimed_by = NULL, claim_expires_at = NULL
                 WHERE id = ?1 AND claimed_by = ?2 AND status = 'calling'",
            )?
            .execute(params![
                id,
                owner,
                enum_text(&settled.status),
                settled.next_attempt_at.map(time_text),
                settled.delivered_via.as_ref().map(enum_text),
                settled.failure_reason,
                attempts,
                attempt_log,
                last_attempt_at.map(time_text)
            ])
            .map(|changed| changed == 1)
        })
        .await
    }

    async fn queue_callback(
        &self,
        phone: &PhoneNumber,
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Reminder>, StoreError> {
        let callback = new_reminder(phone, purpose, now, ReminderKind::Callback);
        // The unique index on open callbacks decides, whichever process queues first.
        let queued = self.insert_reminder(callback.clone()).await?;
        Ok(queued.then_some(callback))
    }

    async fn caller_profile(&self, phone: &PhoneNumber) -> Result<CallerProfile, StoreError> {
        let phone = phone.as_str().to_owned();
        self.with(move |c| {
            c.prepare_cached(
                "SELECT time_zone, last_message_at FROM callers WHERE phone_number = ?1",
            )?
            .query_row(params![phone], |row| {
                Ok(CallerProfile {
                    time_zone: row.get("time_zone")?,
                    last_message_at: parse_opt_time(row.get("last_message_at")?)?,
                })
            })
            .optional()
            .map(Option::unwrap_or_default)
        })
        .await
    }

    async fn set_caller_time_zone(
        &self,
        phone: &PhoneNumber,
        zone: &str,
    ) -> Result<(), StoreError> {
        let (phone, zone) = (phone.as_str().to_owned(), zone.to_owned());
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO callers (phone_number, time_zone, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (phone_number) DO UPDATE
                 SET time_zone = excluded.time_zone, updated_at = excluded.updated_at",
            )?
            .execute(params![phone, zone, time_text(Utc::now())])
            .map(|_| ())
        })
        .await
    }

    async fn list_blocked(&self) -> Result<Vec<BlockedCaller>, StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT phone_number, reason, blocked_at FROM blocked_callers
                 ORDER BY blocked_at, phone_number",
            )?
            .query_map([], blocked_from_row)?
            .collect()
        })
        .await
    }

    async fn block_caller(
        &self,
        phone: &PhoneNumber,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<BlockedCaller, StoreError> {
        let (phone, reason) = (phone.as_str().to_owned(), reason.map(str::to_owned));
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO blocked_callers (phone_number, reason, blocked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (phone_number) DO UPDATE
                 SET reason = excluded.reason, blocked_at = excluded.blocked_at
                 RETURNING phone_number, reason, blocked_at",
            )?
            .query_row(params![phone, reason, time_text(at)], blocked_from_row)
        })
        .await
    }

    async fn unblock_caller(&self, phone: &PhoneNumber) -> Result<bool, StoreError> {
        let phone = phone.as_str().to_owned();
        self.with(move |c| {
            c.prepare_cached("DELETE FROM blocked_callers WHERE phone_number = ?1")?
                .execute(params![phone])
                .map(|deleted| deleted > 0)
        })
        .await
    }

    async fn note_caller_message(
        &self,
        phone: &PhoneNumber,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let phone = phone.as_str().to_owned();
        self.with(move |c| {
            // Webhooks may arrive out of order: a message older than the stored one changes
            // nothing (the times are all written by `time_text`, so they compare as text).
            c.prepare_cached(
                "INSERT INTO callers (phone_number, last_message_at, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (phone_number) DO UPDATE SET
                 last_message_at = max(coalesce(last_message_at, excluded.last_message_at),
                                       excluded.last_message_at),
                 updated_at = excluded.updated_at",
            )?
            .execute(params![phone, time_text(at), time_text(Utc::now())])
            .map(|_| ())
        })
        .await
    }

    async fn purge_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        let (cutoff, limit) = (time_text(cutoff), i64::try_from(limit).unwrap_or(i64::MAX));
        self.with(move |c| {
            let transcript_turns = c
                .prepare_cached(
                    "DELETE FROM transcript_turns WHERE rowid IN (SELECT rowid FROM transcript_turns
                     WHERE at < ?1 ORDER BY at LIMIT ?2)",
                )?
                .execute(params![cutoff, limit])?;
            let calls = c
                .prepare_cached(
                    "DELETE FROM calls WHERE id IN (SELECT id FROM calls
                     WHERE coalesce(ended_at, started_at) < ?1
                     AND NOT EXISTS (SELECT 1 FROM transcript_turns t WHERE t.call_id = calls.id)
                     ORDER BY coalesce(ended_at, started_at) LIMIT ?2)",
                )?
                .execute(params![cutoff, limit])?;
            Ok(Purged {
                transcript_turns: transcript_turns as u64,
                calls: calls as u64,
            })
        })
        .await
    }

    async fn forget_caller(&self, phone: &PhoneNumber) -> Result<Forgotten, StoreError> {
        let phone = phone.as_str().to_owned();
        // One piece of work on the store's thread: all of it or nothing (a savepoint).
        self.with(move |c| {
            let delete = |sql: &str| -> rusqlite::Result<u64> {
                Ok(c.prepare_cached(sql)?.execute(params![phone])? as u64)
            };
            let transcript_turns = delete(
                "DELETE FROM transcript_turns
                 WHERE call_id IN (SELECT id FROM calls WHERE phone_number = ?1)",
            )?;
            let calls = delete("DELETE FROM calls WHERE phone_number = ?1")?;
            let reminders = delete("DELETE FROM reminders WHERE phone_number = ?1")?;
            let tasks = delete("DELETE FROM tasks WHERE phone_number = ?1")?;
            let profiles = delete("DELETE FROM callers WHERE phone_number = ?1")?;
            Ok(Forgotten {
                tasks,
                reminders,
                transcript_turns,
                calls,
                profiles,
            })
        })
        .await
    }

    async fn delete_call(&self, id: &CallId) -> Result<(), StoreError> {
        let id = id.as_str().to_owned();
        self.with(move |c| {
            // The turns go with the row (ON DELETE CASCADE).
            c.prepare_cached("DELETE FROM calls WHERE id = ?1")?
                .execute(params![id])
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod delivery_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn temp_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("wvb-store-{}", uuid::Uuid::new_v4()))
    }

    fn ada() -> PhoneNumber {
        PhoneNumber::new("447700900123")
    }

    fn bob() -> PhoneNumber {
        PhoneNumber::new("447700900456")
    }

    fn new_task(title: &str) -> NewTask {
        NewTask {
            title: title.to_owned(),
            notes: None,
            due_at: None,
        }
    }

    #[tokio::test]
    async fn tasks_are_scoped_to_their_caller() {
        let dir = temp_dir();
        let store = EmbeddedStore::open(&dir).expect("open");
        let milk = store.add_task(&ada(), new_task("Buy milk")).await.unwrap();
        store.add_task(&bob(), new_task("Call mum")).await.unwrap();
        let tasks = store
            .list_tasks(&ada(), Some(TaskStatus::Open))
            .await
            .unwrap();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].title, "Buy milk");
        // Bob cannot complete Ada's task; nothing changes.
        assert_eq!(store.complete_task(&bob(), &milk.id).await.unwrap(), None);
        assert_eq!(
            store.complete_task(&bob(), "not-a-uuid").await.unwrap(),
            None
        );
        let open = store
            .list_tasks(&ada(), Some(TaskStatus::Open))
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        let done = store
            .complete_task(&ada(), &milk.id)
            .await
            .unwrap()
            .expect("done");
        assert_eq!(done.status, TaskStatus::Done);
        assert!(done.completed_at.is_some());
        assert!(
            store
                .list_tasks(&ada(), Some(TaskStatus::Open))
                .await
                .unwrap()
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn reminders_are_listed_soonest_first_and_only_pending_ones_cancel() {
        let dir = temp_dir();
        let store = EmbeddedStore::open(&dir).expect("open");
        let now = Utc::now();
        let later = store
            .add_reminder(&ada(), "dentist", now + chrono::Duration::hours(5))
            .await
            .unwrap();
        let sooner = store
            .add_reminder(&ada(), "pills", now + chrono::Duration::hours(1))
            .await
            .unwrap();
        let listed = store.list_reminders(&ada(), None).await.unwrap();
        assert_eq!(listed[0].id, sooner.id);
        assert_eq!(
            store.cancel_reminder(&bob(), &later.id).await.unwrap(),
            None
        );
        let cancelled = store
            .cancel_reminder(&ada(), &later.id)
            .await
            .unwrap()
            .expect("cancel");
        assert_eq!(cancelled.status, ReminderStatus::Cancelled);
        assert_eq!(
            store.cancel_reminder(&ada(), &later.id).await.unwrap(),
            None
        );
        let pending = store
            .list_reminders(&ada(), Some(ReminderStatus::Pending))
            .await
            .unwrap();
        assert_eq!(pending.len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn calls_and_turns_survive_a_restart_and_recent_turns_are_per_caller() {
        let dir = temp_dir();
        let id = CallId::new("wacid.A");
        {
            let store = EmbeddedStore::open(&dir).expect("open");
            let record = CallRecord::started(
                id.clone(),
                Some(ada()),
                CallLogDirection::Inbound,
                Utc::now(),
            );
            store.start_call(&record).await.unwrap();
            store.start_call(&record).await.unwrap();
            let turn = |seq, role, text: &str| TranscriptTurn {
                call_id: id.clone(),
                seq,
                role,
                text: text.to_owned(),
                at: Utc::now(),
            };
            let turns = [
                turn(0, Role::User, "hello"),
                turn(1, Role::Assistant, "hi there"),
                turn(2, Role::User, "add milk"),
            ];
            store.append_turns(&turns).await.unwrap();
            store.append_turns(&turns[..1]).await.unwrap();
            store
                .finish_call(
                    &id,
                    &CallOutcome {
                        answered_at: Some(Utc::now()),
                        ended_at: Utc::now(),
                        duration_seconds: 12,
                        end_reason: "remote_terminated".into(),
                    },
                )
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(&dir).expect("reopen");
        let call = store.call(&id).await.unwrap().expect("call row");
        assert_eq!(call.duration_seconds, Some(12));
        assert_eq!(call.end_reason.as_deref(), Some("remote_terminated"));
        assert_eq!(store.call_turns(&id).await.unwrap().len(), 3);
        let recent = store
            .recent_turns(&ada(), Utc::now() - chrono::Duration::days(1), 2)
            .await
            .unwrap();
        assert_eq!(
            recent.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(),
            ["hi there", "add milk"]
        );
        assert!(
            store
                .recent_turns(&bob(), Utc::now() - chrono::Duration::days(1), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_read_only_store_refuses_writes_with_an_error() {
        let dir = temp_dir();
        let store = EmbeddedStore::open(&dir).expect("open");
        store.set_read_only(true).unwrap();
        let error = store.add_task(&ada(), new_task("x")).await.unwrap_err();
        assert!(matches!(error, StoreError::Other { .. }), "{error:?}");
        assert!(store.list_tasks(&ada(), None).await.unwrap().is_empty());
        store.set_read_only(false).unwrap();
        store.add_task(&ada(), new_task("x")).await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
