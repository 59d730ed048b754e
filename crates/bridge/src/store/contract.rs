//! The contract of reminder delivery that every [`Store`] keeps, as scenarios each store's tests
//! run once on a store of their own: due reminders claimed soonest first for a lease, a claim
//! lost once its lease has expired (and with it the right to extend or settle), retries, final
//! settlements, callbacks kept out of the caller's reminders, caller profiles, and concurrent
//! claimers claiming every due reminder exactly once; the retention purge, forgetting a caller
//! and deleting one call; and the block list.
//!
//! A scenario takes a fresh, empty store and the [`Clock`] its claims go by. A store that claims
//! at the `now` it is given (the embedded one) runs on a [`SteppedClock`]; one whose database
//! decides the time (Supabase, whose claim function reads the database's clock) runs on that
//! clock, which its test moves on (the PostgREST double's `advance_clock`). Either way no
//! scenario waits: leases expire and retries fall due because the clock is moved.
//!
//! What only one store does (its requests, its files, its errors) stays in that store's tests:
//! `store/embedded/delivery_tests.rs`, and `crates/sim`'s `postgrest_double` for the Supabase
//! store. Compiled for the core's tests and, for stores tested outside the core, with the
//! `store-contract` feature (`crates/sim` enables it as a dev-dependency); never in `serve`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use parking_lot::Mutex;

use super::{
    BlockedCaller, CallLogDirection, CallOutcome, CallRecord, CallerProfile, DeliveryChannel,
    Forgotten, NewTask, Purged, Reminder, ReminderAttempt, ReminderKind, ReminderSettlement,
    ReminderStatus, ReminderUpdate, Role, Store, TranscriptTurn,
};
use crate::ids::{CallId, PhoneNumber};

/// The lease the scenarios claim for.
pub const LEASE: Duration = Duration::from_secs(60);

/// The time a store's claims go by, as a scenario reads and moves it.
pub trait Clock: Send + Sync {
    /// The present as the store's claims see it, to the microsecond (what both stores keep).
    fn now(&self) -> DateTime<Utc>;
    /// Moves that present on, without waiting.
    fn advance(&self, by: Duration);
}

/// A clock that stands still until a scenario moves it: for a store that claims at the `now`
/// it is given, so that every boundary (a lease's last second, a retry's time) is exact.
pub struct SteppedClock(Mutex<DateTime<Utc>>);

impl SteppedClock {
    /// Starts at the wall clock's present, in microseconds.
    pub fn new() -> Self {
        Self(Mutex::new(Utc::now().trunc_subsecs(6)))
    }
}

impl Default for SteppedClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SteppedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock()
    }

    fn advance(&self, by: Duration) {
        *self.0.lock() += chrono::Duration::from_std(by).expect("a scenario's step of the clock");
    }
}

fn ada() -> PhoneNumber {
    PhoneNumber::new("447700900123")
}

fn bob() -> PhoneNumber {
    PhoneNumber::new("447700900456")
}

fn minutes(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

/// One attempt as the scheduler logs it: a call has its call id; the other channels a detail
/// (so that both an absent and a present detail go through the store and back).
fn attempt(at: DateTime<Utc>, channel: &str, outcome: &str) -> ReminderAttempt {
    let call = channel == "call";
    ReminderAttempt {
        at,
        channel: channel.to_owned(),
        outcome: outcome.to_owned(),
        call_id: call.then(|| "wacid.R1".to_owned()),
        detail: (!call).then(|| format!("{outcome} by {channel}")),
    }
}

fn delivered_by_call(at: DateTime<Utc>) -> ReminderUpdate {
    ReminderUpdate {
        settlement: ReminderSettlement::Delivered(DeliveryChannel::Call),
        attempts: 1,
        attempt_log: vec![attempt(at, "call", "delivered")],
        last_attempt_at: Some(at),
    }
}

fn ids(reminders: &[Reminder]) -> Vec<&str> {
    reminders.iter().map(|r| r.id.as_str()).collect()
}

/// What `owner` claims at the clock's present: up to ten due reminders, for the lease.
async fn claim(store: &dyn Store, clock: &dyn Clock, owner: &str) -> Vec<Reminder> {
    let now = clock.now();
    store
        .claim_due_reminders(owner, now, LEASE, 10)
        .await
        .expect("claim")
}

async fn reminder(store: &dyn Store, id: &str) -> Reminder {
    let all = store.list_reminders(&ada(), None).await.expect("list");
    all.into_iter().find(|r| r.id == id).expect("the reminder")
}

/// Claims take due reminders only, soonest first, up to the limit, each for its owner until
/// the present plus the lease (exactly, on a clock that stands still; on a database's clock,
/// from its present when the claim was made).
pub async fn only_due_reminders_are_claimed_soonest_first_for_their_owner(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
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
    let before = clock.now();
    let rest = store
        .claim_due_reminders("r1", before, LEASE, 10)
        .await
        .unwrap();
    let after = clock.now();
    assert_eq!(ids(&rest), [due_now.id.as_str()]);
    let claimed = &rest[0];
    assert_eq!(claimed.status, ReminderStatus::Calling);
    assert_eq!(claimed.claimed_by.as_deref(), Some("r1"));
    let expiry = claimed.claim_expires_at.expect("an expiry");
    let lease = chrono::Duration::from_std(LEASE).unwrap();
    assert!(
        before + lease <= expiry && expiry <= after + lease,
        "claimed until {expiry}, for a lease from between {before} and {after}"
    );
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

/// Nobody takes a claimed reminder during its lease, to its last second; once it has expired
/// another owner does, and the first can then neither extend nor settle it. The holder's
/// extension keeps it from others for as long as it lasts.
pub async fn a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let due = store.add_reminder(&ada(), "pills", now).await.unwrap();
    claim(store, clock, "r1").await;
    assert!(claim(store, clock, "r2").await.is_empty());
    clock.advance(LEASE - Duration::from_secs(1));
    assert!(
        claim(store, clock, "r2").await.is_empty(),
        "a second of the lease is left"
    );
    clock.advance(Duration::from_secs(1));
    let taken_over = claim(store, clock, "r2").await;
    assert_eq!(ids(&taken_over), [due.id.as_str()]);
    assert_eq!(taken_over[0].claimed_by.as_deref(), Some("r2"));

    // The first replica has lost it: it can neither extend nor settle it.
    let until = clock.now() + minutes(10);
    assert!(
        !store
            .extend_reminder_claim(&due.id, "r1", until)
            .await
            .unwrap()
    );
    let update = delivered_by_call(now);
    assert!(!store.settle_reminder(&due.id, "r1", &update).await.unwrap());
    assert_eq!(reminder(store, &due.id).await, taken_over[0], "unchanged");

    // The holder extends its claim: nobody takes it while the extension lasts (its lease alone
    // would have expired by then).
    assert!(
        store
            .extend_reminder_claim(&due.id, "r2", until)
            .await
            .unwrap()
    );
    clock.advance(Duration::from_secs(9 * 60));
    assert!(claim(store, clock, "r3").await.is_empty());
    assert!(store.settle_reminder(&due.id, "r2", &update).await.unwrap());
}

/// A retry puts the reminder back to pending with its attempts and no claim, and it is not
/// claimed before its next attempt's time, and is from that time on.
pub async fn a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let due = store.add_reminder(&ada(), "dentist", now).await.unwrap();
    claim(store, clock, "r1").await;
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

    let waiting = reminder(store, &due.id).await;
    assert_eq!(waiting.status, ReminderStatus::Pending);
    assert_eq!(waiting.next_attempt_at, Some(now + minutes(10)));
    assert_eq!((waiting.claimed_by, waiting.claim_expires_at), (None, None));
    assert_eq!((waiting.attempts, waiting.attempt_log), (1, log));
    assert_eq!(waiting.last_attempt_at, Some(now));

    clock.advance(Duration::from_secs(9 * 60));
    assert!(claim(store, clock, "r2").await.is_empty());
    clock.advance(Duration::from_secs(60));
    let again = claim(store, clock, "r2").await;
    assert_eq!(ids(&again), [due.id.as_str()]);
}

/// Only the holder settles; delivered and failed are final (never claimed, settled or
/// cancelled again) and listed with their channel or reason and their attempts.
pub async fn delivered_and_failed_reminders_are_final_and_listed_with_their_attempts(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let pills = store.add_reminder(&ada(), "pills", now).await.unwrap();
    let dentist = store.add_reminder(&ada(), "dentist", now).await.unwrap();
    assert_eq!(claim(store, clock, "r1").await.len(), 2);
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
        reminder(store, &pills.id).await.status,
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
    clock.advance(Duration::from_secs(30 * 24 * 3600));
    assert!(claim(store, clock, "r2").await.is_empty());
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

/// A callback is due at once, is neither listed nor cancelled as the caller's, and a caller has
/// one at a time: while it is pending or being delivered, another is not queued.
pub async fn callbacks_are_not_the_callers_reminders_and_each_caller_has_one_at_a_time(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
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
    let claimed = claim(store, clock, "r1").await;
    assert_eq!(claimed.len(), 2, "both callers' callbacks are due");
    assert_eq!(
        store.queue_callback(&ada(), "again", now).await.unwrap(),
        None
    );
    assert!(
        store
            .settle_reminder(&callback.id, "r1", &delivered_by_call(now))
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

/// The profile keeps the latest zone set and the latest message (a late, older one does not
/// move it back); a message alone makes a profile with no zone.
pub async fn the_callers_profile_keeps_their_zone_and_their_latest_message(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
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

/// The block list keeps one row per number: blocking again replaces the reason and time,
/// unblocking removes the row and says whether there was one.
pub async fn the_block_list_keeps_one_row_per_number(store: &dyn Store, clock: &dyn Clock) {
    let now = clock.now();
    assert!(store.list_blocked().await.unwrap().is_empty());
    let blocked = store
        .block_caller(&ada(), Some("abusive"), now)
        .await
        .unwrap();
    assert_eq!(
        blocked,
        BlockedCaller {
            phone_number: ada(),
            reason: Some("abusive".to_owned()),
            blocked_at: now,
        }
    );
    store
        .block_caller(&bob(), None, now + minutes(1))
        .await
        .unwrap();
    // Blocked again: still one row, with the new reason and time.
    store
        .block_caller(&ada(), Some("spam"), now + minutes(2))
        .await
        .unwrap();
    let listed = store.list_blocked().await.unwrap();
    assert_eq!(
        listed,
        vec![
            BlockedCaller {
                phone_number: bob(),
                reason: None,
                blocked_at: now + minutes(1),
            },
            BlockedCaller {
                phone_number: ada(),
                reason: Some("spam".to_owned()),
                blocked_at: now + minutes(2),
            },
        ]
    );
    assert!(store.unblock_caller(&ada()).await.unwrap());
    assert!(!store.unblock_caller(&ada()).await.unwrap());
    let listed = store.list_blocked().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].phone_number, bob());
}

/// Claims until nothing is left, with a lease no claim outlives in the test; fails rather than
/// loops if the claims never run dry (100 rows at 3 a claim take at most 34).
async fn claim_all(store: Arc<dyn Store>, owner: String, now: DateTime<Utc>) -> Vec<String> {
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

/// Eight claimers at once, spread over `stores` (handles on the same data, as replicas have:
/// one, or one per process), claim 100 due reminders between them: none twice, none lost.
/// Run it on a runtime with more than one worker thread.
pub async fn concurrent_claimers_claim_every_due_reminder_exactly_once(
    stores: &[Arc<dyn Store>],
    clock: &dyn Clock,
) {
    let now = clock.now();
    let mut added = HashSet::new();
    for n in 0..100 {
        let due = now - chrono::Duration::seconds(n);
        let reminder = stores[0].add_reminder(&ada(), &format!("r{n}"), due).await;
        added.insert(reminder.unwrap().id);
    }
    let claimers: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(&stores[n % stores.len()]);
            tokio::spawn(claim_all(store, format!("replica-{n}"), now))
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

/// A finished call of `phone` (None: a hidden caller) that ran from `started` for a minute,
/// with one turn per text, said at the call's start.
async fn finished_call(
    store: &dyn Store,
    id: &str,
    phone: Option<PhoneNumber>,
    started: DateTime<Utc>,
    texts: &[&str],
) -> CallId {
    let id = CallId::new(id);
    store
        .start_call(&CallRecord::started(
            id.clone(),
            phone,
            CallLogDirection::Inbound,
            started,
        ))
        .await
        .unwrap();
    let turns: Vec<TranscriptTurn> = texts
        .iter()
        .zip(0..)
        .map(|(text, seq)| TranscriptTurn {
            call_id: id.clone(),
            seq,
            role: if seq % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            },
            text: (*text).to_owned(),
            at: started,
        })
        .collect();
    store.append_turns(&turns).await.unwrap();
    store
        .finish_call(
            &id,
            &CallOutcome {
                answered_at: Some(started),
                ended_at: started + minutes(1),
                duration_seconds: 60,
                end_reason: "remote_terminated".to_owned(),
            },
        )
        .await
        .unwrap();
    id
}

fn texts(turns: &[TranscriptTurn]) -> Vec<&str> {
    turns.iter().map(|turn| turn.text.as_str()).collect()
}

/// Retention: turns said before the cutoff go, at most `limit` a round; a call-log row goes
/// once its call ended before the cutoff and none of its turns is left; newer calls and turns,
/// tasks, reminders and profiles stay.
pub async fn retention_purges_old_turns_and_call_logs_in_bounded_rounds_and_keeps_the_rest(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let cutoff = now - chrono::Duration::days(90);
    let old = finished_call(
        store,
        "wacid.OLD",
        Some(ada()),
        now - chrono::Duration::days(100),
        &["one", "two", "three"],
    )
    .await;
    let hidden = finished_call(
        store,
        "wacid.HIDDEN",
        None,
        now - chrono::Duration::days(95),
        &[],
    )
    .await;
    let recent = finished_call(
        store,
        "wacid.RECENT",
        Some(ada()),
        now - chrono::Duration::days(1),
        &["hello", "hi"],
    )
    .await;
    let task = store
        .add_task(
            &ada(),
            NewTask {
                title: "Buy milk".to_owned(),
                notes: None,
                due_at: None,
            },
        )
        .await
        .unwrap();
    let reminder = store
        .add_reminder(&ada(), "pills", now + minutes(30))
        .await
        .unwrap();
    store
        .set_caller_time_zone(&ada(), "Europe/London")
        .await
        .unwrap();

    // Two turns of the old call; its row stays while it has a turn; the hidden caller's call
    // (no turns) goes.
    assert_eq!(
        store.purge_before(cutoff, 2).await.unwrap(),
        Purged {
            transcript_turns: 2,
            calls: 1
        }
    );
    assert_eq!(texts(&store.call_turns(&old).await.unwrap()), ["three"]);
    assert!(store.call(&old).await.unwrap().is_some());
    assert_eq!(store.call(&hidden).await.unwrap(), None);
    // The last old turn, then its call.
    assert_eq!(
        store.purge_before(cutoff, 2).await.unwrap(),
        Purged {
            transcript_turns: 1,
            calls: 1
        }
    );
    assert_eq!(store.call(&old).await.unwrap(), None);
    assert!(store.call_turns(&old).await.unwrap().is_empty());
    assert_eq!(
        store.purge_before(cutoff, 2).await.unwrap(),
        Purged::default()
    );

    assert!(store.call(&recent).await.unwrap().is_some());
    assert_eq!(
        texts(&store.call_turns(&recent).await.unwrap()),
        ["hello", "hi"]
    );
    let tasks = store.list_tasks(&ada(), None).await.unwrap();
    assert_eq!(tasks.iter().map(|t| &t.id).collect::<Vec<_>>(), [&task.id]);
    let reminders = store.list_reminders(&ada(), None).await.unwrap();
    assert_eq!(ids(&reminders), [reminder.id.as_str()]);
    assert_eq!(
        store
            .caller_profile(&ada())
            .await
            .unwrap()
            .time_zone
            .as_deref(),
        Some("Europe/London")
    );
}

/// "Forget me" deletes every row of the caller (tasks, reminders and callbacks, calls and
/// their turns, the profile) with counts, and nothing of another caller; a second time finds
/// nothing.
pub async fn forgetting_a_caller_deletes_all_of_theirs_and_nothing_of_anothers(
    store: &dyn Store,
    clock: &dyn Clock,
) {
    let now = clock.now();
    let task = |title: &str| NewTask {
        title: title.to_owned(),
        notes: None,
        due_at: None,
    };
    for phone in [ada(), bob()] {
        store.add_task(&phone, task("Buy milk")).await.unwrap();
        store
            .add_reminder(&phone, "pills", now + minutes(30))
            .await
            .unwrap();
        store
            .set_caller_time_zone(&phone, "Europe/London")
            .await
            .unwrap();
    }
    store.add_task(&ada(), task("Call mum")).await.unwrap();
    store.queue_callback(&ada(), "busy", now).await.unwrap();
    let adas_calls = [
        finished_call(
            store,
            "wacid.ADA1",
            Some(ada()),
            now - minutes(60),
            &["a", "b"],
        )
        .await,
        finished_call(store, "wacid.ADA2", Some(ada()), now - minutes(10), &["c"]).await,
    ];
    let bobs_call = finished_call(
        store,
        "wacid.BOB",
        Some(bob()),
        now - minutes(5),
        &["d", "e"],
    )
    .await;

    assert_eq!(
        store.forget_caller(&ada()).await.unwrap(),
        Forgotten {
            tasks: 2,
            reminders: 2,
            transcript_turns: 3,
            calls: 2,
            profiles: 1,
        }
    );
    assert!(store.list_tasks(&ada(), None).await.unwrap().is_empty());
    assert!(store.list_reminders(&ada(), None).await.unwrap().is_empty());
    // The callback went too: the caller can have a new one.
    assert!(
        store
            .queue_callback(&ada(), "again", now)
            .await
            .unwrap()
            .is_some()
    );
    for call in &adas_calls {
        assert_eq!(store.call(call).await.unwrap(), None);
        assert!(store.call_turns(call).await.unwrap().is_empty());
    }
    assert_eq!(
        store.caller_profile(&ada()).await.unwrap(),
        CallerProfile::default()
    );

    assert_eq!(store.list_tasks(&bob(), None).await.unwrap().len(), 1);
    assert_eq!(store.list_reminders(&bob(), None).await.unwrap().len(), 1);
    assert!(store.call(&bobs_call).await.unwrap().is_some());
    assert_eq!(
        texts(&store.call_turns(&bobs_call).await.unwrap()),
        ["d", "e"]
    );
    assert_eq!(
        store
            .caller_profile(&bob())
            .await
            .unwrap()
            .time_zone
            .as_deref(),
        Some("Europe/London")
    );

    let again = store.forget_caller(&bob()).await.unwrap();
    assert_eq!(again.total(), 6, "{again:?}");
    assert_eq!(
        store.forget_caller(&bob()).await.unwrap(),
        Forgotten::default()
    );
}

/// Deleting one call removes its row and its turns, and nothing of the caller's other calls.
pub async fn deleting_a_call_removes_its_log_and_turns_only(store: &dyn Store, clock: &dyn Clock) {
    let now = clock.now();
    let gone = finished_call(store, "wacid.GONE", Some(ada()), now, &["x", "y"]).await;
    let kept = finished_call(store, "wacid.KEPT", Some(ada()), now, &["z"]).await;
    store.delete_call(&gone).await.unwrap();
    assert_eq!(store.call(&gone).await.unwrap(), None);
    assert!(store.call_turns(&gone).await.unwrap().is_empty());
    assert!(store.call(&kept).await.unwrap().is_some());
    assert_eq!(texts(&store.call_turns(&kept).await.unwrap()), ["z"]);
    // Deleting it again is not an error.
    store.delete_call(&gone).await.unwrap();
}
