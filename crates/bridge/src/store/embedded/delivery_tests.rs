//! The embedded store's reminder delivery (claims, leases, settlements, callbacks), caller
//! profiles, two processes on one file, and the upgrade of a file written by the first schema.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::Connection;

use super::{DATABASE_FILE, EmbeddedStore, schema};
use crate::ids::PhoneNumber;
use crate::store::{
    CallerProfile, DeliveryChannel, Reminder, ReminderAttempt, ReminderKind, ReminderSettlement,
    ReminderStatus, ReminderUpdate, Store,
};

const LEASE: Duration = Duration::from_secs(60);

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

fn ada() -> PhoneNumber {
    PhoneNumber::new("447700900123")
}

fn bob() -> PhoneNumber {
    PhoneNumber::new("447700900456")
}

/// A test's clock: the store keeps microseconds.
fn start() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

fn attempt(at: DateTime<Utc>, channel: &str, outcome: &str) -> ReminderAttempt {
    ReminderAttempt {
        at,
        channel: channel.to_owned(),
        outcome: outcome.to_owned(),
        call_id: (channel == "call").then(|| "wacid.R1".to_owned()),
        detail: None,
    }
}

fn ids(reminders: &[Reminder]) -> Vec<&str> {
    reminders.iter().map(|r| r.id.as_str()).collect()
}

async fn reminder(store: &EmbeddedStore, id: &str) -> Reminder {
    let all = store.list_reminders(&ada(), None).await.expect("list");
    all.into_iter().find(|r| r.id == id).expect("the reminder")
}

#[tokio::test]
async fn only_due_reminders_are_claimed_soonest_first_for_their_owner() {
    let dir = TempDir::new();
    let store = dir.open();
    let now = start();
    let later = store
        .add_reminder(&ada(), "later", now + minutes(1))
        .await
        .unwrap();
    let due_now = store.add_reminder(&ada(), "now", now).await.unwrap();
    let overdue = store
        .add_reminder(&ada(), "overdue", now - minutes(5))
        .await
        .unwrap();

    let first = store
        .claim_due_reminders("r1", now, LEASE, 1)
        .await
        .unwrap();
    assert_eq!(
        ids(&first),
        [overdue.id.as_str()],
        "the limit holds, soonest first"
    );
    let rest = store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(ids(&rest), [due_now.id.as_str()]);
    let claimed = &rest[0];
    assert_eq!(claimed.status, ReminderStatus::Calling);
    assert_eq!(claimed.claimed_by.as_deref(), Some("r1"));
    assert_eq!(claimed.claim_expires_at, Some(now + minutes(1)));
    assert_eq!(claimed.kind, ReminderKind::Reminder);

    let pending = store
        .list_reminders(&ada(), Some(ReminderStatus::Pending))
        .await
        .unwrap();
    assert_eq!(
        ids(&pending),
        [later.id.as_str()],
        "not due yet, not claimed"
    );
    assert_eq!(pending[0].claimed_by, None);
}

#[tokio::test]
async fn a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired() {
    let dir = TempDir::new();
    let store = dir.open();
    let now = start();
    let due = store.add_reminder(&ada(), "pills", now).await.unwrap();
    store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();

    let during = now + chrono::Duration::seconds(59);
    assert!(
        store
            .claim_due_reminders("r2", during, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let expired = now + chrono::Duration::seconds(60);
    let taken_over = store
        .claim_due_reminders("r2", expired, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(ids(&taken_over), [due.id.as_str()]);
    assert_eq!(taken_over[0].claimed_by.as_deref(), Some("r2"));

    // The first replica has lost it: it can neither extend nor settle it.
    assert!(
        !store
            .extend_reminder_claim(&due.id, "r1", now + minutes(10))
            .await
            .unwrap()
    );
    let update = ReminderUpdate {
        settlement: ReminderSettlement::Delivered(DeliveryChannel::Call),
        attempts: 1,
        attempt_log: vec![attempt(now, "call", "delivered")],
        last_attempt_at: Some(now),
    };
    assert!(!store.settle_reminder(&due.id, "r1", &update).await.unwrap());
    assert_eq!(reminder(&store, &due.id).await, taken_over[0], "unchanged");

    // The holder extends its claim: nobody takes it while the extension lasts.
    assert!(
        store
            .extend_reminder_claim(&due.id, "r2", now + minutes(10))
            .await
            .unwrap()
    );
    let before_extension_ends = now + minutes(9);
    assert!(
        store
            .claim_due_reminders("r3", before_extension_ends, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.settle_reminder(&due.id, "r2", &update).await.unwrap());
}

#[tokio::test]
async fn a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt() {
    let dir = TempDir::new();
    let store = dir.open();
    let now = start();
    let due = store.add_reminder(&ada(), "dentist", now).await.unwrap();
    store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();
    let log = vec![attempt(now, "call", "not_answered")];
    let retry = ReminderUpdate {
        settlement: ReminderSettlement::Retry {
            next_attempt_at: now + minutes(10),
        },
        attempts: 1,
        attempt_log: log.clone(),
        last_attempt_at: Some(now),
    };
    assert!(store.settle_reminder(&due.id, "r1", &retry).await.unwrap());

    let waiting = reminder(&store, &due.id).await;
    assert_eq!(waiting.status, ReminderStatus::Pending);
    assert_eq!(waiting.next_attempt_at, Some(now + minutes(10)));
    assert_eq!((waiting.claimed_by, waiting.claim_expires_at), (None, None));
    assert_eq!((waiting.attempts, waiting.attempt_log), (1, log));
    assert_eq!(waiting.last_attempt_at, Some(now));

    assert!(
        store
            .claim_due_reminders("r2", now + minutes(9), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .claim_due_reminders("r2", now + minutes(10), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(ids(&again), [due.id.as_str()]);
}

#[tokio::test]
async fn delivered_and_failed_reminders_are_final_and_listed_with_their_attempts() {
    let dir = TempDir::new();
    let store = dir.open();
    let now = start();
    let pills = store.add_reminder(&ada(), "pills", now).await.unwrap();
    let dentist = store.add_reminder(&ada(), "dentist", now).await.unwrap();
    assert_eq!(
        store
            .claim_due_reminders("r1", now, LEASE, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // Not the holder: nothing changes.
    let delivered = ReminderUpdate {
        settlement: ReminderSettlement::Delivered(DeliveryChannel::Message),
        attempts: 1,
        attempt_log: vec![
            attempt(now, "call", "not_answered"),
            attempt(now + minutes(1), "message", "sent"),
        ],
        last_attempt_at: Some(now + minutes(1)),
    };
    assert!(
        !store
            .settle_reminder(&pills.id, "r2", &delivered)
            .await
            .unwrap()
    );
    assert_eq!(
        reminder(&store, &pills.id).await.status,
        ReminderStatus::Calling
    );

    assert!(
        store
            .settle_reminder(&pills.id, "r1", &delivered)
            .await
            .unwrap()
    );
    let failed = ReminderUpdate {
        settlement: ReminderSettlement::Failed {
            reason: "no_permission".to_owned(),
        },
        attempts: 0,
        attempt_log: vec![attempt(now, "permission_request", "no_permission")],
        last_attempt_at: Some(now),
    };
    assert!(
        store
            .settle_reminder(&dentist.id, "r1", &failed)
            .await
            .unwrap()
    );

    let listed = store
        .list_reminders(&ada(), Some(ReminderStatus::Delivered))
        .await
        .unwrap();
    assert_eq!(ids(&listed), [pills.id.as_str()]);
    assert_eq!(listed[0].delivered_via, Some(DeliveryChannel::Message));
    assert_eq!(listed[0].attempt_log, delivered.attempt_log);
    assert_eq!(listed[0].claimed_by, None);
    let listed = store
        .list_reminders(&ada(), Some(ReminderStatus::Failed))
        .await
        .unwrap();
    assert_eq!(ids(&listed), [dentist.id.as_str()]);
    assert_eq!(listed[0].failure_reason.as_deref(), Some("no_permission"));
    assert_eq!(listed[0].attempt_log, failed.attempt_log);

    // Final: never claimed again, never settled again.
    let much_later = now + chrono::Duration::days(30);
    assert!(
        store
            .claim_due_reminders("r2", much_later, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .settle_reminder(&pills.id, "r1", &failed)
            .await
            .unwrap()
    );
    assert_eq!(
        store.cancel_reminder(&ada(), &pills.id).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn callbacks_are_not_the_callers_reminders_and_each_caller_has_one_at_a_time() {
    let dir = TempDir::new();
    let store = dir.open();
    let now = start();
    let own = store
        .add_reminder(&ada(), "pills", now + minutes(30))
        .await
        .unwrap();
    let callback = store
        .queue_callback(&ada(), "was refused at capacity", now)
        .await
        .unwrap()
        .expect("queued");
    assert_eq!(callback.kind, ReminderKind::Callback);
    assert_eq!(
        (callback.remind_at, callback.status),
        (now, ReminderStatus::Pending)
    );
    assert_eq!(callback.text, "was refused at capacity");
    assert_eq!(
        store.queue_callback(&ada(), "again", now).await.unwrap(),
        None
    );
    assert!(
        store
            .queue_callback(&bob(), "refused", now)
            .await
            .unwrap()
            .is_some()
    );

    let listed = store.list_reminders(&ada(), None).await.unwrap();
    assert_eq!(
        ids(&listed),
        [own.id.as_str()],
        "the callback is not listed"
    );
    assert_eq!(
        store.cancel_reminder(&ada(), &callback.id).await.unwrap(),
        None
    );

    // While it is being delivered it still counts; once settled, another may be queued.
    let claimed = store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "both callers' callbacks are due");
    assert_eq!(
        store.queue_callback(&ada(), "again", now).await.unwrap(),
        None
    );
    let delivered = ReminderUpdate {
        settlement: ReminderSettlement::Delivered(DeliveryChannel::Call),
        attempts: 1,
        attempt_log: vec![attempt(now, "call", "delivered")],
        last_attempt_at: Some(now),
    };
    assert!(
        store
            .settle_reminder(&callback.id, "r1", &delivered)
            .await
            .unwrap()
    );
    assert!(
        store
            .queue_callback(&ada(), "again", now)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn the_callers_profile_keeps_their_zone_and_their_latest_message() {
    let dir = TempDir::new();
    let store = dir.open();
    let now = start();
    assert_eq!(
        store.caller_profile(&ada()).await.unwrap(),
        CallerProfile::default()
    );

    store
        .set_caller_time_zone(&ada(), "Europe/London")
        .await
        .unwrap();
    store.note_caller_message(&ada(), now).await.unwrap();
    // An older message arriving late does not move the time back.
    store
        .note_caller_message(&ada(), now - minutes(5))
        .await
        .unwrap();
    assert_eq!(
        store.caller_profile(&ada()).await.unwrap(),
        CallerProfile {
            time_zone: Some("Europe/London".to_owned()),
            last_message_at: Some(now),
        }
    );
    store
        .note_caller_message(&ada(), now + minutes(5))
        .await
        .unwrap();
    store
        .set_caller_time_zone(&ada(), "Asia/Kolkata")
        .await
        .unwrap();
    assert_eq!(
        store.caller_profile(&ada()).await.unwrap(),
        CallerProfile {
            time_zone: Some("Asia/Kolkata".to_owned()),
            last_message_at: Some(now + minutes(5)),
        }
    );
    // A message alone makes a profile with no zone.
    store.note_caller_message(&bob(), now).await.unwrap();
    assert_eq!(store.caller_profile(&bob()).await.unwrap().time_zone, None);
}

/// Claims until nothing is left, with a lease no claim outlives in the test; fails rather than
/// loops if the claims never run dry (100 rows at 3 a claim take at most 34).
async fn claim_all(store: EmbeddedStore, owner: String, now: DateTime<Utc>) -> Vec<String> {
    let mut claimed = Vec::new();
    for _ in 0..=34 {
        let batch = store
            .claim_due_reminders(&owner, now, Duration::from_secs(3600), 3)
            .await
            .expect("claim");
        if batch.is_empty() {
            return claimed;
        }
        assert!(
            batch
                .iter()
                .all(|r| r.claimed_by.as_deref() == Some(owner.as_str()))
        );
        claimed.extend(batch.into_iter().map(|r| r.id));
    }
    panic!("{owner} was still claiming after 35 claims");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_in_two_processes_claim_every_due_reminder_exactly_once() {
    let dir = TempDir::new();
    // Two stores on one file: two connections, as two bridge processes would have.
    let stores = [dir.open(), dir.open()];
    let now = start();
    let mut added = HashSet::new();
    for n in 0..100 {
        let due = now - chrono::Duration::seconds(n);
        added.insert(
            stores[0]
                .add_reminder(&ada(), &format!("r{n}"), due)
                .await
                .unwrap()
                .id,
        );
    }
    let claimers: Vec<_> = (0..8)
        .map(|n| {
            tokio::spawn(claim_all(
                stores[n % 2].clone(),
                format!("replica-{n}"),
                now,
            ))
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.expect("claimer"));
    }
    let distinct: HashSet<String> = claimed.iter().cloned().collect();
    assert_eq!(claimed.len(), 100, "no reminder claimed twice");
    assert_eq!(distinct, added, "none lost");
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
    let now = start();
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
            now - minutes(1),
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
    assert_eq!(
        ids(&claimed),
        ["6f1f8a34-7c1a-4c55-9a55-0d6f2b7a9e02", old.id.as_str()]
    );
    assert!(
        store
            .queue_callback(&ada(), "refused", now)
            .await
            .unwrap()
            .is_some()
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
