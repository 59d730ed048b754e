//! The Supabase store's reminder delivery (claims over `rpc/claim_due_reminders`, leases,
//! settlements, callbacks) and caller profiles against the PostgREST double, with the double's
//! clock moved on instead of waiting; and the double refusing what PostgREST refuses.

use std::collections::HashSet;
use std::time::Duration;

use bridge::ids::PhoneNumber;
use bridge::store::supabase::{SupabaseConfig, SupabaseStore};
use bridge::store::{
    CallerProfile, DeliveryChannel, Reminder, ReminderAttempt, ReminderKind, ReminderSettlement,
    ReminderStatus, ReminderUpdate, Store, StoreError,
};
use chrono::{DateTime, SubsecRound, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use super::PostgrestDouble;

const KEY: &str = "service-role-test-key";
const LEASE: Duration = Duration::from_secs(60);

async fn start() -> (PostgrestDouble, SupabaseStore) {
    let double = PostgrestDouble::start(KEY).await.expect("double");
    let store = SupabaseStore::new(SupabaseConfig {
        url: double.url(),
        service_role_key: SecretString::from(KEY),
        timeout: Duration::from_secs(2),
    });
    (double, store)
}

fn ada() -> PhoneNumber {
    PhoneNumber::new("447700900123")
}

fn bob() -> PhoneNumber {
    PhoneNumber::new("447700900456")
}

/// The database's clock as PostgreSQL keeps it (microseconds).
fn db_now(double: &PostgrestDouble) -> DateTime<Utc> {
    double.now().trunc_subsecs(6)
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
        detail: Some("test".to_owned()),
    }
}

fn ids(reminders: &[Reminder]) -> Vec<&str> {
    reminders.iter().map(|r| r.id.as_str()).collect()
}

async fn reminder(store: &SupabaseStore, id: &str) -> Reminder {
    let all = store.list_reminders(&ada(), None).await.expect("list");
    all.into_iter().find(|r| r.id == id).expect("the reminder")
}

fn delivered_by_call(at: DateTime<Utc>) -> ReminderUpdate {
    ReminderUpdate {
        settlement: ReminderSettlement::Delivered(DeliveryChannel::Call),
        attempts: 1,
        attempt_log: vec![attempt(at, "call", "delivered")],
        last_attempt_at: Some(at),
    }
}

#[tokio::test]
async fn due_reminders_are_claimed_soonest_first_through_the_sql_function() {
    let (double, store) = start().await;
    let now = db_now(&double);
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
        .claim_due_reminders("r1", Utc::now(), LEASE, 1)
        .await
        .unwrap();
    assert_eq!(
        ids(&first),
        [overdue.id.as_str()],
        "the limit holds, soonest first"
    );
    let before = double.now();
    let rest = store
        .claim_due_reminders("r1", Utc::now(), LEASE, 10)
        .await
        .unwrap();
    let after = double.now();
    assert_eq!(ids(&rest), [due_now.id.as_str()]);
    let claimed = &rest[0];
    assert_eq!(claimed.status, ReminderStatus::Calling);
    assert_eq!(claimed.claimed_by.as_deref(), Some("r1"));
    let expiry = claimed.claim_expires_at.expect("an expiry");
    let lease = chrono::Duration::from_std(LEASE).unwrap();
    assert!(expiry >= (before + lease).trunc_subsecs(6) && expiry <= after + lease);

    let request = double.requests().last().cloned().expect("request");
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/rest/v1/rpc/claim_due_reminders")
    );
    assert_eq!(request.header("apikey"), Some(KEY));
    assert_eq!(
        serde_json::from_str::<Value>(&request.body).unwrap(),
        json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": 10})
    );
    let pending = store
        .list_reminders(&ada(), Some(ReminderStatus::Pending))
        .await
        .unwrap();
    assert_eq!(
        ids(&pending),
        [later.id.as_str()],
        "not due yet, not claimed"
    );
}

#[tokio::test]
async fn a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired() {
    let (double, store) = start().await;
    let now = db_now(&double);
    let due = store.add_reminder(&ada(), "pills", now).await.unwrap();
    store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();
    assert!(
        store
            .claim_due_reminders("r2", now, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    double.advance_clock(LEASE + Duration::from_secs(1));
    let taken_over = store
        .claim_due_reminders("r2", now, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(ids(&taken_over), [due.id.as_str()]);
    assert_eq!(taken_over[0].claimed_by.as_deref(), Some("r2"));

    // The first replica has lost it: it can neither extend nor settle it.
    let until = db_now(&double) + minutes(10);
    assert!(
        !store
            .extend_reminder_claim(&due.id, "r1", until)
            .await
            .unwrap()
    );
    let update = delivered_by_call(now);
    assert!(!store.settle_reminder(&due.id, "r1", &update).await.unwrap());
    let patch = double.requests().last().cloned().expect("request");
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.query,
        format!("id=eq.{}&claimed_by=eq.r1&status=eq.calling", due.id)
    );
    assert_eq!(patch.header("prefer"), Some("return=representation"));
    assert_eq!(reminder(&store, &due.id).await, taken_over[0], "unchanged");

    // The holder extends its claim: nobody takes it while the extension lasts.
    assert!(
        store
            .extend_reminder_claim(&due.id, "r2", until)
            .await
            .unwrap()
    );
    double.advance_clock(Duration::from_secs(9 * 60));
    assert!(
        store
            .claim_due_reminders("r3", now, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.settle_reminder(&due.id, "r2", &update).await.unwrap());
}

#[tokio::test]
async fn a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt() {
    let (double, store) = start().await;
    let now = db_now(&double);
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

    double.advance_clock(Duration::from_secs(9 * 60));
    assert!(
        store
            .claim_due_reminders("r2", now, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    double.advance_clock(Duration::from_secs(60));
    let again = store
        .claim_due_reminders("r2", now, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(ids(&again), [due.id.as_str()]);
}

#[tokio::test]
async fn delivered_and_failed_reminders_are_final_and_listed_with_their_attempts() {
    let (double, store) = start().await;
    let now = db_now(&double);
    let pills = store.add_reminder(&ada(), "pills", now).await.unwrap();
    let dentist = store.add_reminder(&ada(), "dentist", now).await.unwrap();
    let claimed = store
        .claim_due_reminders("r1", now, LEASE, 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let delivered = ReminderUpdate {
        settlement: ReminderSettlement::Delivered(DeliveryChannel::Message),
        attempts: 1,
        attempt_log: vec![
            attempt(now, "call", "not_answered"),
            attempt(now + minutes(1), "message", "sent"),
        ],
        last_attempt_at: Some(now + minutes(1)),
    };
    // Not the holder: nothing changes.
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
    double.advance_clock(Duration::from_secs(30 * 24 * 3600));
    assert!(
        store
            .claim_due_reminders("r2", now, LEASE, 10)
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
    let (double, store) = start().await;
    let now = db_now(&double);
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

#[tokio::test]
async fn the_callers_profile_keeps_their_zone_and_their_latest_message() {
    let (double, store) = start().await;
    let now = db_now(&double);
    assert_eq!(
        store.caller_profile(&ada()).await.unwrap(),
        CallerProfile::default()
    );
    store
        .set_caller_time_zone(&ada(), "Europe/London")
        .await
        .unwrap();
    let upsert = double.requests().last().cloned().expect("request");
    assert_eq!(
        (upsert.method.as_str(), upsert.path.as_str()),
        ("POST", "/rest/v1/callers")
    );
    assert_eq!(upsert.query, "on_conflict=phone_number");
    assert_eq!(
        upsert.header("prefer"),
        Some("return=representation,resolution=merge-duplicates")
    );

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
    store.note_caller_message(&bob(), now).await.unwrap();
    assert_eq!(store.caller_profile(&bob()).await.unwrap().time_zone, None);
    assert_eq!(double.rows("callers").len(), 2);
}

/// Claims until nothing is left, with a lease no claim outlives in the test; fails rather than
/// loops if the claims never run dry (100 rows at 3 a claim take at most 34).
async fn claim_all(store: SupabaseStore, owner: String) -> Vec<String> {
    let mut claimed = Vec::new();
    for _ in 0..=34 {
        let batch = store
            .claim_due_reminders(&owner, Utc::now(), Duration::from_secs(3600), 3)
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
async fn concurrent_claimers_claim_every_due_reminder_exactly_once() {
    let (double, store) = start().await;
    let now = db_now(&double);
    let mut added = HashSet::new();
    for n in 0..100 {
        let due = now - chrono::Duration::seconds(n);
        let reminder = store.add_reminder(&ada(), &format!("r{n}"), due).await;
        added.insert(reminder.unwrap().id);
    }
    let claimers: Vec<_> = (0..8)
        .map(|n| tokio::spawn(claim_all(store.clone(), format!("replica-{n}"))))
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.expect("claimer"));
    }
    let distinct: HashSet<String> = claimed.iter().cloned().collect();
    assert_eq!(claimed.len(), 100, "no reminder claimed twice");
    assert_eq!(distinct, added, "none lost");
}

#[tokio::test]
async fn a_missing_claim_function_is_a_schema_error() {
    let (double, store) = start().await;
    double.fail_next_on(
        "rpc/claim_due_reminders",
        1,
        404,
        r#"{"code":"PGRST202","details":null,"hint":null,"message":"Could not find the function public.claim_due_reminders(p_lease_seconds, p_limit, p_owner) in the schema cache"}"#,
    );
    let result = store.claim_due_reminders("r1", Utc::now(), LEASE, 1).await;
    assert!(matches!(result, Err(StoreError::Schema(_))), "{result:?}");
}

/// Sends a request to the double as PostgREST's clients do; its status and body.
async fn send(
    double: &PostgrestDouble,
    method: reqwest::Method,
    path: &str,
    prefer: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}/rest/v1/{path}", double.url()))
        .header("apikey", KEY)
        .header("authorization", format!("Bearer {KEY}"))
        .json(&body);
    if let Some(prefer) = prefer {
        request = request.header("prefer", prefer);
    }
    let response = request.send().await.expect("the double answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_double_refuses_what_postgrest_and_the_schema_refuse() {
    let (double, _store) = start().await;
    let claim = |args: Value| {
        let double = double.clone();
        async move {
            send(
                &double,
                reqwest::Method::POST,
                "rpc/claim_due_reminders",
                None,
                args,
            )
            .await
        }
    };
    let args = json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": 5});
    assert_eq!(claim(args.clone()).await, (200, json!([])));
    let (status, body) = send(&double, reqwest::Method::POST, "rpc/no_such", None, args).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("PGRST202")));
    let (status, body) = claim(json!({"owner": "r1", "p_lease_seconds": 60, "p_limit": 5})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("PGRST202")));
    assert_eq!(
        body["message"],
        "Could not find the function public.claim_due_reminders(owner, p_lease_seconds, p_limit) in the schema cache"
    );
    let code = |(status, body): (u16, Value)| (status, body["code"].as_str().map(str::to_owned));
    let refused = |sqlstate: &str| (400, Some(sqlstate.to_owned()));
    let bad = json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": "ten"});
    assert_eq!(code(claim(bad).await), refused("22P02"));
    let bad = json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": 3_000_000_000_i64});
    assert_eq!(code(claim(bad).await), refused("22003"));
    let bad = json!({"p_owner": "", "p_lease_seconds": 60, "p_limit": 5});
    assert_eq!(code(claim(bad).await), refused("22004"));
    let bad = json!({"p_owner": "r1", "p_lease_seconds": -1, "p_limit": 5});
    assert_eq!(code(claim(bad).await), refused("22023"));
    let bad = json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": null});
    assert_eq!(code(claim(bad).await), refused("22023"));
    let (status, _) = send(
        &double,
        reqwest::Method::GET,
        "rpc/claim_due_reminders",
        None,
        json!({}),
    )
    .await;
    assert_eq!(status, 405);

    // The schema's constraints on the new columns and table.
    let reminder = json!({"phone_number": "1", "text": "x", "remind_at": "2030-01-01T00:00:00Z"});
    let mut bad = reminder.clone();
    bad["kind"] = json!("chore");
    let insert = |body: Value| {
        let double = double.clone();
        async move { code(send(&double, reqwest::Method::POST, "reminders", None, body).await) }
    };
    assert_eq!(insert(bad).await, refused("23514"));
    let mut bad = reminder.clone();
    bad["next_attempt_at"] = json!("tomorrow");
    assert_eq!(insert(bad).await, refused("22007"));
    let mut bad = reminder.clone();
    bad["attempt_log"] = json!({"at": "now"});
    assert_eq!(insert(bad).await, refused("23514"));
    let merge = Some("resolution=merge-duplicates");
    let (status, body) = send(
        &double,
        reqwest::Method::POST,
        "callers?on_conflict=time_zone",
        merge,
        json!({"phone_number": "1", "time_zone": "UTC"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("42P10")));
    let (status, body) = send(
        &double,
        reqwest::Method::POST,
        "callers?on_conflict=phone_number",
        merge,
        json!({"phone_number": "1", "zone": "UTC"}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("PGRST204")));
    assert!(double.rows("callers").is_empty(), "nothing was written");
}
