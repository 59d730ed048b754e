//! The embedded store's schema: the tables as the first version created them, then numbered
//! upgrades (`PRAGMA user_version`) that bring a file written by an older bridge up to date in
//! place, under the write lock so that two processes opening one file upgrade it once.

use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

/// How long a connection waits for another process's write lock (an upgrade, a claim of due
/// reminders, any batch of work) before the store reports itself unavailable. Set explicitly
/// rather than left to the SQLite crate's default: two bridges on one file rely on it.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection's settings, applied outside any transaction (the journal mode cannot change
/// inside one).
///
/// `synchronous = NORMAL` is SQLite's advice for WAL: a commit no longer waits for an fsync (the
/// WAL is synced at checkpoints), so a crash of the process loses nothing and a power cut at most
/// the last transcript turns. With FULL, a 100-call load spent about 5 % of a core on the
/// fsync of every turn's commit.
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA foreign_keys = ON;
";

/// The tables as the first version of the store created them (`user_version` 0). Never edited:
/// changes are [`UPGRADES`], so that old files and new ones end up with the same schema.
const BASE: &str = "
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

/// Upgrade `n` takes a file from `user_version` n to n + 1. Append only; never edit one that
/// has shipped.
const UPGRADES: &[&str] = &[REMINDER_DELIVERY, BLOCKED_CALLERS, RETENTION];

/// Supabase's `0003_reminder_delivery.sql`: what the reminder scheduler needs (kinds, retries,
/// the outcome, the attempt log, the claim of a replica) and the `callers` table.
const REMINDER_DELIVERY: &str = "
ALTER TABLE reminders ADD COLUMN kind TEXT NOT NULL DEFAULT 'reminder'
    CHECK (kind IN ('reminder', 'callback'));
ALTER TABLE reminders ADD COLUMN next_attempt_at TEXT;
ALTER TABLE reminders ADD COLUMN delivered_via TEXT CHECK (delivered_via IN ('call', 'message'));
ALTER TABLE reminders ADD COLUMN failure_reason TEXT;
ALTER TABLE reminders ADD COLUMN attempt_log TEXT NOT NULL DEFAULT '[]'
    CHECK (json_valid(attempt_log) AND json_type(attempt_log) = 'array');
ALTER TABLE reminders ADD COLUMN claimed_by TEXT;
ALTER TABLE reminders ADD COLUMN claim_expires_at TEXT;
-- The claim's query: pending reminders by when they are due, and claims by when they expire.
DROP INDEX IF EXISTS reminders_due;
CREATE INDEX reminders_claimable ON reminders (coalesce(next_attempt_at, remind_at))
    WHERE status = 'pending';
CREATE INDEX reminders_claims ON reminders (claim_expires_at) WHERE status = 'calling';
-- At most one callback waiting or under way per caller.
CREATE UNIQUE INDEX reminders_one_open_callback ON reminders (phone_number)
    WHERE kind = 'callback' AND status IN ('pending', 'calling');
CREATE TABLE callers (
    phone_number TEXT PRIMARY KEY,
    time_zone TEXT,
    last_message_at TEXT,
    updated_at TEXT NOT NULL
);
";

/// Supabase's `0005_retention.sql`: the retention purge finds old turns by their time and old
/// call-log rows by when they ended.
const RETENTION: &str = "
CREATE INDEX transcript_turns_by_time ON transcript_turns (at);
CREATE INDEX calls_by_end ON calls (coalesce(ended_at, started_at));
";

/// Supabase's `0004_blocked_callers.sql`: the numbers the business neither answers nor calls.
const BLOCKED_CALLERS: &str = "
CREATE TABLE blocked_callers (
    phone_number TEXT PRIMARY KEY,
    reason TEXT,
    blocked_at TEXT NOT NULL
);
";

/// The `user_version` of a file with every upgrade applied.
pub(super) fn current_version() -> i64 {
    i64::try_from(UPGRADES.len()).unwrap_or(i64::MAX)
}

/// Sets the connection up and brings the file's schema up to date: the tables of the first
/// version, then the upgrades the file has not had, in one transaction that holds the write
/// lock from the start (a second process opening the file waits, then finds it upgraded).
pub(super) fn prepare(connection: &mut Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.execute_batch(PRAGMAS)?;
    let upgrade = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    upgrade.execute_batch(BASE)?;
    let version: i64 = upgrade.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    // A file from a newer bridge keeps its version: its extra columns do not hinder this one.
    if applied < UPGRADES.len() {
        for step in &UPGRADES[applied..] {
            upgrade.execute_batch(step)?;
        }
        upgrade.pragma_update(None, "user_version", current_version())?;
    }
    upgrade.commit()
}
