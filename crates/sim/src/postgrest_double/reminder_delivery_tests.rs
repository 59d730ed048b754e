//! The Supabase store's reminder delivery against the PostgREST double: the store contract's
//! scenarios (claims, leases, settlements, callbacks, caller profiles, concurrent claimers) on
//! the double's clock, moved on instead of waiting, with the requests the store sent checked
//! after them (claims over `rpc/claim_due_reminders`, writes filtered on the claim, callers
//! upserted on their number); and the double refusing what PostgREST refuses.

use std::sync::Arc;
use std::time::Duration;

use bridge::store::contract::{self, Clock, LEASE};
use bridge::store::supabase::{SupabaseConfig, SupabaseStore};
use bridge::store::{Store, StoreError};
use chrono::{DateTime, SubsecRound, Utc};
use secrecy::SecretString;
use serde_json::{Value, json};

use super::PostgrestDouble;

const KEY: &str = "service-role-test-key";

async fn start() -> (PostgrestDouble, SupabaseStore) {
    let double = PostgrestDouble::start(KEY).await.expect("double");
    let store = SupabaseStore::new(SupabaseConfig {
        url: double.url(),
        service_role_key: SecretString::from(KEY),
        timeout: Duration::from_secs(2),
    });
    (double, store)
}

/// The clock the Supabase store's claims go by: the database's (the double's), to the
/// microsecond as PostgreSQL keeps it, moved on with `advance_clock` instead of waiting.
struct DatabaseClock(PostgrestDouble);

impl Clock for DatabaseClock {
    fn now(&self) -> DateTime<Utc> {
        self.0.now().trunc_subsecs(6)
    }

    fn advance(&self, by: Duration) {
        self.0.advance_clock(by);
    }
}

/// Runs a scenario of the store contract on the Supabase store against a new double, on the
/// double's clock; the double, with the requests the scenario made and the rows it left.
async fn on_a_new_double(scenario: impl AsyncFnOnce(&dyn Store, &dyn Clock)) -> PostgrestDouble {
    let (double, store) = start().await;
    scenario(&store, &DatabaseClock(double.clone())).await;
    double
}

#[tokio::test]
async fn due_reminders_are_claimed_soonest_first_through_the_sql_function() {
    let double =
        on_a_new_double(contract::only_due_reminders_are_claimed_soonest_first_for_their_owner)
            .await;
    let requests = double.requests();
    let sent: Vec<_> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    let (add, claim) = ("/rest/v1/reminders", "/rest/v1/rpc/claim_due_reminders");
    let claims = [("POST", claim), ("POST", claim)];
    let adds = [("POST", add), ("POST", add), ("POST", add)];
    assert_eq!(sent, [&adds[..], &claims[..], &[("GET", add)]].concat());
    assert!(requests.iter().all(|r| r.header("apikey") == Some(KEY)));
    let arguments: Vec<Value> = requests
        .iter()
        .filter(|r| r.path == claim)
        .map(|r| serde_json::from_str(&r.body).expect("JSON arguments"))
        .collect();
    assert_eq!(
        arguments,
        [
            json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": 1}),
            json!({"p_owner": "r1", "p_lease_seconds": 60, "p_limit": 10}),
        ]
    );
}

#[tokio::test]
async fn a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired() {
    let double = on_a_new_double(
        contract::a_claimed_reminder_is_claimed_again_only_once_its_lease_has_expired,
    )
    .await;
    // Every write after the claim, the lost replica's too, is a PATCH filtered on the claim
    // that returns what it changed: r1's extension and settlement, then r2's.
    let reminders = double.rows("reminders");
    let id = reminders[0]["id"].as_str().expect("an id");
    let held_by = |owner: &str| format!("id=eq.{id}&claimed_by=eq.{owner}&status=eq.calling");
    let patches: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    let queries: Vec<&str> = patches.iter().map(|r| r.query.as_str()).collect();
    assert_eq!(
        queries,
        [held_by("r1"), held_by("r1"), held_by("r2"), held_by("r2")]
    );
    for patch in &patches {
        assert_eq!(patch.path, "/rest/v1/reminders");
        assert_eq!(patch.header("prefer"), Some("return=representation"));
    }
}

#[tokio::test]
async fn a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt() {
    on_a_new_double(
        contract::a_retry_goes_back_to_pending_and_is_not_claimed_before_its_next_attempt,
    )
    .await;
}

#[tokio::test]
async fn the_callers_profile_keeps_their_zone_and_their_latest_message() {
    let double =
        on_a_new_double(contract::the_callers_profile_keeps_their_zone_and_their_latest_message)
            .await;
    // Each zone set and each message noted is an upsert on the caller's number.
    let upserts: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.path == "/rest/v1/callers" && r.method != "GET")
        .collect();
    assert_eq!(upserts.len(), 6);
    for upsert in &upserts {
        assert_eq!(upsert.method, "POST");
        assert_eq!(upsert.query, "on_conflict=phone_number");
        assert_eq!(
            upsert.header("prefer"),
            Some("return=representation,resolution=merge-duplicates")
        );
    }
    assert_eq!(double.rows("callers").len(), 2);
}

#[tokio::test]
async fn the_block_list_keeps_one_row_per_number() {
    let double = on_a_new_double(contract::the_block_list_keeps_one_row_per_number).await;
    // An unblock is a DELETE filtered on the number, answered with the rows it removed.
    let deletes: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.path == "/rest/v1/blocked_callers" && r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 2);
    assert!(
        deletes
            .iter()
            .all(|r| r.query.starts_with("phone_number=eq."))
    );
    assert_eq!(double.rows("blocked_callers").len(), 1);
}

#[tokio::test]
async fn delivered_and_failed_reminders_are_final_and_listed_with_their_attempts() {
    on_a_new_double(
        contract::delivered_and_failed_reminders_are_final_and_listed_with_their_attempts,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claimers_claim_every_due_reminder_exactly_once() {
    let (double, store) = start().await;
    // One store shared by the claimers, as the tasks of one replica share it.
    let stores: [Arc<dyn Store>; 1] = [Arc::new(store)];
    let clock = DatabaseClock(double);
    contract::concurrent_claimers_claim_every_due_reminder_exactly_once(&stores, &clock).await;
}

#[tokio::test]
async fn callbacks_are_not_the_callers_reminders_and_each_caller_has_one_at_a_time() {
    on_a_new_double(
        contract::callbacks_are_not_the_callers_reminders_and_each_caller_has_one_at_a_time,
    )
    .await;
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

#[tokio::test]
async fn retention_purges_old_turns_and_call_logs_through_the_sql_function() {
    let double = on_a_new_double(
        contract::retention_purges_old_turns_and_call_logs_in_bounded_rounds_and_keeps_the_rest,
    )
    .await;
    let purges: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.path == "/rest/v1/rpc/purge_history_before")
        .collect();
    assert_eq!(purges.len(), 3);
    let args: Value = serde_json::from_str(&purges[0].body).unwrap();
    assert_eq!(args["p_limit"], json!(2));
    assert!(args["p_cutoff"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn forgetting_a_caller_is_one_call_of_the_sql_function() {
    let double = on_a_new_double(
        contract::forgetting_a_caller_deletes_all_of_theirs_and_nothing_of_anothers,
    )
    .await;
    let forgets: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.path == "/rest/v1/rpc/forget_caller")
        .map(|r| r.body)
        .collect();
    assert_eq!(
        forgets,
        [
            json!({"p_phone": "447700900123"}).to_string(),
            json!({"p_phone": "447700900456"}).to_string(),
            json!({"p_phone": "447700900456"}).to_string(),
        ]
    );
}

#[tokio::test]
async fn deleting_a_call_is_a_filtered_delete_whose_turns_cascade() {
    let double = on_a_new_double(contract::deleting_a_call_removes_its_log_and_turns_only).await;
    let deletes: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| (r.path, r.query))
        .collect();
    assert_eq!(
        deletes,
        [
            ("/rest/v1/calls".to_owned(), "id=eq.wacid.GONE".to_owned()),
            ("/rest/v1/calls".to_owned(), "id=eq.wacid.GONE".to_owned()),
        ]
    );
}

#[tokio::test]
async fn the_double_refuses_a_delete_without_a_filter_and_a_bad_forget() {
    let (double, _store) = start().await;
    let client = reqwest::Client::new();
    let auth = |request: reqwest::RequestBuilder| {
        request
            .header("apikey", KEY)
            .header("authorization", format!("Bearer {KEY}"))
    };
    let answer = auth(client.delete(format!("{}/rest/v1/calls", double.url())))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "21000");
    let answer = auth(client.post(format!("{}/rest/v1/rpc/forget_caller", double.url())))
        .body(json!({"p_phone": "12ab"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "22023");
}
