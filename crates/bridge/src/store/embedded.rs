//! The embedded store: a SQLite database on disk under `DATA_DIR` (the default when Supabase is
//! not configured), with the same tables and semantics as the Supabase schema. Blocking SQLite
//! work runs on the connection's own thread ([`SqliteThread`]), never on the async workers.

use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::sqlite_thread::SqliteThread;
use super::{
    CallLogDirection, CallOutcome, CallRecord, NewTask, Reminder, ReminderStatus, Store,
    StoreError, Task, TaskStatus, TranscriptTurn, enum_text, time_text,
};
use crate::ids::{CallId, PhoneNumber};

/// Prepared statements kept for reuse: more than the store has (SQLite's parser was a tenth
/// of the store's work when each write prepared its statement again).
const STATEMENT_CACHE: usize = 32;

/// The file under `DATA_DIR`.
pub const DATABASE_FILE: &str = "bridge.sqlite3";

/// `synchronous = NORMAL` is SQLite's advice for WAL: a commit no longer waits for an fsync (the
/// WAL is synced at checkpoints), so a crash of the process loses nothing and a power cut at most
/// the last transcript turns. With FULL, a 100-call load spent about 5 % of a core on the
/// fsync of every turn's commit.
const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    phone_number TEXT NOT NULL,
    title TEXT NOT NULL,
    notes TEXT,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    due_at TEXT,
    created_at TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_phone ON tasks (phone_number, status, created_at);
CREATE TABLE IF NOT EXISTS reminders (
    id TEXT PRIMARY KEY,
    phone_number TEXT NOT NULL,
    text TEXT NOT NULL,
    remind_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'calling', 'delivered', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reminders_by_phone ON reminders (phone_number, remind_at);
CREATE INDEX IF NOT EXISTS reminders_due ON reminders (remind_at) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    phone_number TEXT,
    direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    started_at TEXT NOT NULL,
    answered_at TEXT,
    ended_at TEXT,
    duration_seconds INTEGER,
    end_reason TEXT,
    reminder_id TEXT REFERENCES reminders (id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS calls_by_phone ON calls (phone_number, started_at);
CREATE TABLE IF NOT EXISTS transcript_turns (
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (call_id, seq)
);
";

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
    })
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
    /// Opens (creating it if needed) `<data_dir>/bridge.sqlite3` and applies the schema.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|err| {
            StoreError::Unavailable(format!("cannot create {}: {err}", data_dir.display()))
        })?;
        let connection = Connection::open(data_dir.join(DATABASE_FILE)).map_err(sql_error)?;
        connection.execute_batch(SCHEMA).map_err(sql_error)?;
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
        let reminder = Reminder {
            id: uuid::Uuid::new_v4().to_string(),
            phone_number: phone.clone(),
            text: text.to_owned(),
            remind_at,
            status: ReminderStatus::Pending,
            attempts: 0,
            last_attempt_at: None,
            created_at: Utc::now(),
        };
        let row = reminder.clone();
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO reminders (id, phone_number, text, remind_at, status, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
            )?
            .execute(params![
                row.id,
                row.phone_number.as_str(),
                row.text,
                time_text(row.remind_at),
                time_text(row.created_at)
            ])
        })
        .await?;
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
                "SELECT * FROM reminders WHERE phone_number = ?1 AND (?2 IS NULL OR status = ?2)
                 ORDER BY remind_at ASC, rowid ASC",
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
                    "UPDATE reminders SET status = 'cancelled'
                 WHERE id = ?1 AND phone_number = ?2 AND status = 'pending'",
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
}

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
