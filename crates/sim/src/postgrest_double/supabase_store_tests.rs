//! The Supabase store (the core's PostgREST client) against the PostgREST double: requests
//! follow PostgREST's conventions, results and errors parse.

use std::time::Duration;

use bridge::ids::{CallId, PhoneNumber};
use bridge::store::supabase::{SupabaseConfig, SupabaseStore};
use bridge::store::{
    CallLogDirection, CallOutcome, CallRecord, NewTask, ReminderStatus, Role, Store, StoreError,
    TaskStatus, TranscriptTurn,
};
use chrono::Utc;
use secrecy::SecretString;

use super::PostgrestDouble;

const KEY: &str = "service-role-test-key";

async fn store(double: &PostgrestDouble) -> SupabaseStore {
    SupabaseStore::new(SupabaseConfig {
        url: double.url(),
        service_role_key: SecretString::from(KEY),
        timeout: Duration::from_secs(2),
    })
}

fn ada() -> PhoneNumber {
    PhoneNumber::new("447700900123")
}

fn bob() -> PhoneNumber {
    PhoneNumber::new("447700900456")
}

#[tokio::test]
async fn requests_follow_postgrest_conventions_and_results_parse() {
    let double = PostgrestDouble::start(KEY).await.expect("double");
    let store = store(&double).await;
    let task = store
        .add_task(
            &ada(),
            NewTask {
                title: "Buy milk".into(),
                notes: None,
                due_at: None,
            },
        )
        .await
        .expect("add");
    assert_eq!(task.title, "Buy milk");
    assert_eq!(task.status, TaskStatus::Open);
    let listed = store
        .list_tasks(&ada(), Some(TaskStatus::Open))
        .await
        .expect("list");
    assert_eq!(listed, vec![task.clone()]);

    let requests = double.requests();
    let insert = &requests[0];
    assert_eq!(
        (insert.method.as_str(), insert.path.as_str()),
        ("POST", "/rest/v1/tasks")
    );
    assert_eq!(insert.header("apikey"), Some(KEY));
    assert_eq!(
        insert.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(insert.header("prefer"), Some("return=representation"));
    assert_eq!(insert.header("content-type"), Some("application/json"));
    let list = &requests[1];
    assert_eq!(
        (list.method.as_str(), list.path.as_str()),
        ("GET", "/rest/v1/tasks")
    );
    assert_eq!(
        list.query,
        "select=*&phone_number=eq.447700900123&status=eq.open&order=created_at.desc"
    );

    // Another caller's id is not found and changes nothing.
    assert_eq!(store.complete_task(&bob(), &task.id).await.unwrap(), None);
    assert_eq!(store.complete_task(&ada(), "nope").await.unwrap(), None);
    let patch = double.requests().last().cloned().expect("patch");
    assert_eq!(patch.method, "PATCH");
    assert_eq!(
        patch.query,
        format!("id=eq.{}&phone_number=eq.447700900456", task.id)
    );
    let done = store.complete_task(&ada(), &task.id).await.unwrap();
    assert_eq!(done.map(|t| t.status), Some(TaskStatus::Done));
}

#[tokio::test]
async fn reminders_calls_and_turns_round_trip() {
    let double = PostgrestDouble::start(KEY).await.expect("double");
    let store = store(&double).await;
    let at = Utc::now() + chrono::Duration::hours(2);
    let reminder = store.add_reminder(&ada(), "Dentist", at).await.unwrap();
    assert_eq!(reminder.status, ReminderStatus::Pending);
    assert_eq!(
        store.cancel_reminder(&bob(), &reminder.id).await.unwrap(),
        None
    );
    let cancelled = store.cancel_reminder(&ada(), &reminder.id).await.unwrap();
    assert_eq!(cancelled.map(|r| r.status), Some(ReminderStatus::Cancelled));
    let cancel = double.requests().last().cloned().expect("request");
    assert_eq!(
        cancel.query,
        format!(
            "id=eq.{}&phone_number=eq.447700900123&kind=eq.reminder&status=eq.pending",
            reminder.id
        )
    );

    let id = CallId::new("wacid.SUPA");
    let record = CallRecord::started(
        id.clone(),
        Some(ada()),
        CallLogDirection::Inbound,
        Utc::now(),
    );
    store.start_call(&record).await.unwrap();
    store.start_call(&record).await.expect("idempotent on 409");
    let turn = TranscriptTurn {
        call_id: id.clone(),
        seq: 0,
        role: Role::User,
        text: "hello".into(),
        // PostgreSQL keeps microseconds.
        at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
    };
    store
        .append_turns(std::slice::from_ref(&turn))
        .await
        .unwrap();
    store
        .finish_call(
            &id,
            &CallOutcome {
                answered_at: Some(Utc::now()),
                ended_at: Utc::now(),
                duration_seconds: 7,
                end_reason: "remote_terminated".into(),
            },
        )
        .await
        .unwrap();
    let call = store.call(&id).await.unwrap().expect("row");
    assert_eq!(call.duration_seconds, Some(7));
    assert_eq!(store.call_turns(&id).await.unwrap(), vec![turn.clone()]);
    let recent = store
        .recent_turns(&ada(), Utc::now() - chrono::Duration::days(7), 10)
        .await
        .unwrap();
    assert_eq!(recent, vec![turn]);
    let request = double.requests().last().cloned().expect("request");
    assert!(
        request
            .query
            .starts_with("select=call_id%2Cseq%2Crole%2Ctext%2Cat%2Ccalls%21inner%28phone_number%29&calls.phone_number=eq.447700900123&at=gte."),
        "{}",
        request.query
    );
    assert!(
        store
            .recent_turns(&bob(), Utc::now() - chrono::Duration::days(7), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn postgrest_errors_become_typed_store_errors() {
    let double = PostgrestDouble::start(KEY).await.expect("double");
    let wrong_key = SupabaseStore::new(SupabaseConfig {
        url: double.url(),
        service_role_key: SecretString::from("wrong"),
        timeout: Duration::from_secs(2),
    });
    assert!(matches!(
        wrong_key.list_tasks(&ada(), None).await,
        Err(StoreError::Unauthorized(_))
    ));
    let store = store(&double).await;
    double.fail_next(
        1,
        503,
        r#"{"code":"PGRST000","message":"Database client error"}"#,
    );
    assert!(matches!(
        store.list_tasks(&ada(), None).await,
        Err(StoreError::Unavailable(_))
    ));
    double.fail_next(
        1,
        404,
        r#"{"code":"PGRST205","details":null,"hint":null,"message":"Could not find the table 'public.tasks' in the schema cache"}"#,
    );
    assert!(matches!(
        store.list_tasks(&ada(), None).await,
        Err(StoreError::Schema(_))
    ));
    double.fail_next(
        1,
        409,
        r#"{"code":"23505","details":"Key (id) already exists.","hint":null,"message":"duplicate key value violates unique constraint"}"#,
    );
    assert!(matches!(
        store.add_reminder(&ada(), "x", Utc::now()).await,
        Err(StoreError::Conflict(_))
    ));
    double.fail_next(
        1,
        400,
        r#"{"code":"22P02","details":null,"hint":null,"message":"invalid input syntax"}"#,
    );
    match store.list_reminders(&ada(), None).await {
        Err(StoreError::Other { code, .. }) => assert_eq!(code, "22P02"),
        other => panic!("{other:?}"),
    }
    double.set_delay(Duration::from_secs(5));
    assert!(matches!(
        store.list_tasks(&ada(), None).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(!format!("{store:?}").contains(KEY));
}
