//! The embedded store's reminder delivery: the store contract's scenarios (claims, leases,
//! settlements, callbacks, caller profiles) on a store of its own each, concurrent claimers in
//! two processes on one file, and the upgrade of a file written by the first schema.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::Connection;

use super::{DATABASE_FILE, EmbeddedStore, schema};
use crate::ids::PhoneNumber;
use crate::store::contract::{self, Clock, LEASE, SteppedClock};
use crate::store::{ReminderKind, ReminderStatus, Store};

/// A directory of its own, removed when the test ends (passing or not).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("wvb-delivery-{}", uuid::Uuid::new_v4())))
    }

    fn open(&self) -> EmbeddedStore {
        EmbeddedStore::open(&self.0).expect("open the store")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a scenario of the store contract on a new store in a directory of its own, on a clock
/// that stands still until the scenario moves it: the embedded store claims at the `now` it is
/// given, so the scenario's boundaries (a lease's last second, a retry's time) are exact.
async fn on_a_new_store(scenario: impl AsyncFnOnce(&dyn Store, &dyn Clock)) {
    let dir = TempDir::new();
    scenario(&dir.open(), &SteppedClock::new()).await;
}

#[tokio::test]
async fn only_due_reminders_are_claimed_soonest_first_for_their_owner() {
    on_a_new_store(contract::only_due_reminders_are_claimed_soonest_first_for_their_owner).await;
}

#[tokio::test]
async fn a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired() {
    on_a_new_store(contract::a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired)
        .await;
}

#[tokio::test]
async fn a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt() {
    on_a_new_store(
        contract::a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt,
    )
    .await;
}

#[tokio::test]
async fn delivered_and_failed_reminders_are_final_and_listed_with_their_attempts() {
    on_a_new_store(
        contract::delivered_and_failed_reminders_are_final_and_listed_with_their_attempts,
    )
    .await;
}

#[tokio::test]
async fn callbacks_are_not_the_callers_reminders_and_each_caller_has_one_at_a_time() {
    on_a_new_store(
        contract::callbacks_are_not_the_callers_reminders_and_each_caller_has_one_at_a_time,
    )
    .await;
}

#[tokio::test]
async fn the_callers_profile_keeps_their_zone_and_their_latest_message() {
    on_a_new_store(contract::the_callers_profile_keeps_their_zone_and_their_latest_message).await;
}

#[tokio::test]
async fn the_block_list_keeps_one_row_per_number() {
    on_a_new_store(contract::the_block_list_keeps_one_row_per_number).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_in_two_processes_claim_every_due_reminder_exactly_once() {
    let dir = TempDir::new();
    // Two stores on one file: two connections, as two bridge processes would have.
    let stores: [Arc<dyn Store>; 2] = [Arc::new(dir.open()), Arc::new(dir.open())];
    let clock = SteppedClock::new();
    contract::concurrent_claimers_claim_every_due_reminder_exactly_once(&stores, &clock).await;
}

fn ada() -> PhoneNumber {
    PhoneNumber::new("447700900123")
}

/// The store's schema before reminder delivery, exactly as that version wrote it.
#[rustfmt::skip]
const OLD_SCHEMA: &str = "
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

#[tokio::test]
async fn a_file_written_by_the_first_schema_is_upgraded_in_place() {
    let dir = TempDir::new();
    // The store keeps microseconds.
    let now = Utc::now().trunc_subsecs(6);
    std::fs::create_dir_all(&dir.0).unwrap();
    {
        let old = Connection::open(dir.0.join(DATABASE_FILE)).unwrap();
        old.execute_batch(OLD_SCHEMA).unwrap();
        let insert = |id: &str, text: &str, remind_at: DateTime<Utc>, status: &str| {
            old.execute(
                "INSERT INTO reminders (id, phone_number, text, remind_at, status, attempts,
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, 2, ?4)",
                rusqlite::params![
                    id,
                    ada().as_str(),
                    text,
                    crate::store::time_text(remind_at),
                    status
                ],
            )
            .unwrap();
        };
        insert(
            "6f1f8a34-7c1a-4c55-9a55-0d6f2b7a9e01",
            "old pills",
            now,
            "pending",
        );
        // Being called when that version stopped: no claim, so nobody holds it now.
        insert(
            "6f1f8a34-7c1a-4c55-9a55-0d6f2b7a9e02",
            "old dentist",
            now - chrono::Duration::minutes(1),
            "calling",
        );
    }
    let store = dir.open();
    let version: i64 = store
        .connection
        .run(|c| {
            c.pragma_query_value(None, "user_version", |row| row.get(0))
                .map_err(super::sql_error)
        })
        .await
        .unwrap();
    assert_eq!(version, schema::current_version());
    let listed = store
        .list_reminders(&ada(), Some(ReminderStatus::Pending))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let old = &listed[0];
    assert_eq!(
        (old.text.as_str(), old.attempts, old.remind_at),
        ("old pills", 2, now)
    );
    assert_eq!(old.kind, ReminderKind::Reminder);
    assert!(old.attempt_log.is_empty());
    assert_eq!((old.next_attempt_at, old.delivered_via), (None, None));

    // The new methods work on the upgraded file, old rows included.
    let claimed = store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();
    let claimed: Vec<&str> = claimed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        claimed,
        ["6f1f8a34-7c1a-4c55-9a55-0d6f2b7a9e02", old.id.as_str()]
    );
    let callback = store.queue_callback(&ada(), "refused", now).await.unwrap();
    assert!(
        callback.is_some(),
        "a callback is queued on the upgraded file"
    );
    store
        .set_caller_time_zone(&ada(), "Europe/London")
        .await
        .unwrap();
    drop(store);
    // Opening it again applies nothing twice.
    let store = dir.open();
    assert_eq!(
        store
            .caller_profile(&ada())
            .await
            .unwrap()
            .time_zone
            .as_deref(),
        Some("Europe/London")
    );
    assert_eq!(store.list_reminders(&ada(), None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn retention_purges_old_turns_and_call_logs_in_bounded_rounds_and_keeps_the_rest() {
    on_a_new_store(
        contract::retention_purges_old_turns_and_call_logs_in_bounded_rounds_and_keeps_the_rest,
    )
    .await;
}

#[tokio::test]
async fn forgetting_a_caller_deletes_all_of_theirs_and_nothing_of_anothers() {
    on_a_new_store(contract::forgetting_a_caller_deletes_all_of_theirs_and_nothing_of_anothers)
        .await;
}

#[tokio::test]
async fn deleting_a_call_removes_its_log_and_turns_only() {
    on_a_new_store(contract::deleting_a_call_removes_its_log_and_turns_only).await;
}
