//! `tools::dispatch`, which runs the AI's function calls, against the embedded store: random
//! tool names, argument text of every kind, and arguments shaped like the tools' own with odd
//! values, times, and ids of the caller's own rows or of another caller's.
//!
//! Properties: it never panics; every output is a JSON object, `{"error": "<text>"}` exactly
//! when the outcome is not `ok`; a healthy store never yields `store_error`; and another
//! caller's tasks, reminders and profile are never touched.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value};

use super::{any_json, config, json_like_text, odd_string};
use crate::ids::PhoneNumber;
use crate::store::embedded::EmbeddedStore;
use crate::store::{CallerProfile, NewTask, Reminder, Store, Task};
use crate::tools::{NAMES, ToolLimits, ToolOutcome, dispatch};

/// Whose data must stay as it is.
const OTHER: &str = "447700900999";

/// A value the model might put in an argument; ids are picked when the call runs.
#[derive(Debug, Clone)]
enum Arg {
    Json(Value),
    /// One of the other caller's task ids.
    OtherTask(Index),
    /// One of the other caller's reminder ids.
    OtherReminder(Index),
    /// An id the caller got from an earlier call of the same case.
    Own(Index),
    Time(String),
}

#[derive(Debug, Clone)]
enum Arguments {
    /// Any text at all.
    Text(String),
    /// The tools' own argument names (and unknown ones) with random values.
    Shaped(Vec<(String, Arg)>),
}

#[derive(Debug, Clone)]
struct ToolCall {
    name: String,
    arguments: Arguments,
}

/// A caller's data as the tools can see it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tasks: Vec<Task>,
    reminders: Vec<Reminder>,
    profile: CallerProfile,
}

async fn snapshot(store: &EmbeddedStore, phone: &PhoneNumber) -> Snapshot {
    Snapshot {
        tasks: store.list_tasks(phone, None).await.expect("tasks"),
        reminders: store.list_reminders(phone, None).await.expect("reminders"),
        profile: store.caller_profile(phone).await.expect("profile"),
    }
}

fn time() -> BoxedStrategy<String> {
    prop_oneof![
        // Future local times in the zone of a UK number, some of them in a DST gap.
        3 => "20(2[7-9]|30)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T(0[0-9]|1[0-9]|2[0-3]):[0-5][0-9]",
        2 => "[+-]?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}[T ][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2})?(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:?[0-9]{2})?",
        1 => prop::sample::select(vec![
            "2027-03-28T01:30", "2027-10-31T01:30", "9999-12-31T23:59", "+262143-12-31T23:59",
            "-0001-01-01T00:00", "1970-01-01T00:00Z", "2038-01-19T03:14:08+14:00",
        ])
        .prop_map(str::to_owned),
        1 => odd_string(),
    ]
    .boxed()
}

fn arg() -> BoxedStrategy<Arg> {
    prop_oneof![
        3 => odd_string().prop_map(|s| Arg::Json(Value::String(s))),
        1 => any_json().prop_map(Arg::Json),
        2 => any::<Index>().prop_map(Arg::OtherTask),
        2 => any::<Index>().prop_map(Arg::OtherReminder),
        2 => any::<Index>().prop_map(Arg::Own),
        2 => time().prop_map(Arg::Time),
        1 => prop::sample::select(vec!["open", "done", "all", "pending", "delivered", "cancelled", "failed"])
            .prop_map(|s| Arg::Json(Value::from(s))),
        1 => prop::sample::select(vec!["Europe/Berlin", "America/Chicago", "UTC", "Etc/GMT+12", "Asia/Kathmandu", "europe/berlin", "../../etc/passwd"])
            .prop_map(|s| Arg::Json(Value::from(s))),
    ]
    .boxed()
}

fn tool_call() -> BoxedStrategy<ToolCall> {
    let name = prop_oneof![
        8 => prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        1 => prop::sample::select(NAMES.to_vec()).prop_map(|n| format!(" {}", n.to_ascii_uppercase())),
        1 => odd_string(),
    ];
    let key = prop_oneof![
        8 => prop::sample::select(vec![
            "title", "notes", "due", "status", "task_id", "reminder_id", "text", "remind_at",
            "time_zone",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["phone", "phone_number", "caller"]).prop_map(str::to_owned),
        1 => odd_string(),
    ];
    let arguments = prop_oneof![
        1 => prop_oneof![any::<String>(), json_like_text()].prop_map(Arguments::Text),
        4 => vec((key, arg()), 0..4).prop_map(Arguments::Shaped),
    ];
    (name, arguments)
        .prop_map(|(name, arguments)| ToolCall { name, arguments })
        .boxed()
}

/// Who calls: a fresh number per case (so rows do not pile up on one caller), never the other
/// caller's (a different prefix); now and then nobody (a hidden number).
fn next_caller(callers: &AtomicU64) -> Option<PhoneNumber> {
    let n = callers.fetch_add(1, Ordering::Relaxed);
    (n % 16 != 15).then(|| PhoneNumber::new(format!("4479{n:08}")))
}

fn now() -> BoxedStrategy<DateTime<Utc>> {
    // 2020 to 2100.
    (1_577_836_800i64..4_102_444_800)
        .prop_map(|secs| DateTime::from_timestamp(secs, 0).expect("in range"))
        .boxed()
}

fn resolve(arg: &Arg, other: &Snapshot, own: &[String]) -> Value {
    let pick = |ids: Vec<&str>, at: &Index| {
        if ids.is_empty() {
            Value::from("")
        } else {
            Value::from(ids[at.index(ids.len())])
        }
    };
    match arg {
        Arg::Json(value) => value.clone(),
        Arg::OtherTask(at) => pick(other.tasks.iter().map(|t| t.id.as_str()).collect(), at),
        Arg::OtherReminder(at) => pick(other.reminders.iter().map(|r| r.id.as_str()).collect(), at),
        Arg::Own(at) => pick(own.iter().map(String::as_str).collect(), at),
        Arg::Time(text) => Value::from(text.as_str()),
    }
}

/// Checks one result; returns the id of a row it added, if any.
fn check_result(
    call: &ToolCall,
    caller: Option<&PhoneNumber>,
    output: &str,
    outcome: ToolOutcome,
) -> Result<Option<String>, TestCaseError> {
    let value: Value = serde_json::from_str(output)
        .map_err(|e| TestCaseError::fail(format!("output is not JSON ({e}): {output}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("output is not an object: {output}")))?;
    if caller.is_none() {
        prop_assert_eq!(outcome, ToolOutcome::NoCaller);
    } else if !NAMES.contains(&call.name.as_str()) {
        prop_assert_eq!(outcome, ToolOutcome::UnknownTool);
    }
    prop_assert_ne!(outcome, ToolOutcome::StoreError, "{}", output);
    if outcome == ToolOutcome::Ok {
        prop_assert!(
            !object.contains_key("error"),
            "ok with an error: {}",
            output
        );
    } else {
        prop_assert_eq!(object.len(), 1, "{}", output);
        let message = object.get("error").and_then(Value::as_str);
        prop_assert!(message.is_some_and(|m| !m.is_empty()), "{}", output);
    }
    let added = object.get("added");
    Ok(added
        .and_then(|a| a.get("task_id").or_else(|| a.get("reminder_id")))
        .and_then(Value::as_str)
        .map(str::to_owned))
}

#[test]
fn random_tool_calls_answer_json_and_never_touch_another_callers_data() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("wvb-fuzz-tools-{}", uuid::Uuid::new_v4()));
    let store = EmbeddedStore::open(&dir).expect("store");
    let other = PhoneNumber::new(OTHER);
    let before = runtime.block_on(async {
        let soon = Utc::now() + chrono::Duration::days(400);
        for title in ["pay rent", "call mum"] {
            let task = NewTask {
                title: title.to_owned(),
                notes: Some("theirs".to_owned()),
                due_at: Some(soon),
            };
            store.add_task(&other, task).await.expect("task");
        }
        let done = store.list_tasks(&other, None).await.expect("tasks")[0]
            .id
            .clone();
        store.complete_task(&other, &done).await.expect("complete");
        for text in ["pills", "dentist"] {
            store
                .add_reminder(&other, text, soon)
                .await
                .expect("reminder");
        }
        let cancelled = store.list_reminders(&other, None).await.expect("list")[0]
            .id
            .clone();
        store
            .cancel_reminder(&other, &cancelled)
            .await
            .expect("cancel");
        store
            .set_caller_time_zone(&other, "Asia/Tokyo")
            .await
            .expect("zone");
        snapshot(&store, &other).await
    });
    let callers = AtomicU64::new(0);
    let mut runner = TestRunner::new(config());
    let result = runner.run(&(vec(tool_call(), 1..6), now()), |(calls, now)| {
        let caller = next_caller(&callers);
        let mut own: Vec<String> = Vec::new();
        for call in &calls {
            let arguments = match &call.arguments {
                Arguments::Text(text) => text.clone(),
                Arguments::Shaped(fields) => {
                    let map: Map<String, Value> = fields
                        .iter()
                        .map(|(key, arg)| (key.clone(), resolve(arg, &before, &own)))
                        .collect();
                    Value::Object(map).to_string()
                }
            };
            let result = runtime.block_on(dispatch(
                &store,
                &ToolLimits::default(),
                caller.as_ref(),
                &call.name,
                &arguments,
                now,
            ));
            if let Some(id) = check_result(call, caller.as_ref(), &result.output, result.outcome)? {
                own.push(id);
            }
        }
        let after = runtime.block_on(snapshot(&store, &other));
        prop_assert_eq!(&after, &before, "another caller's data changed");
        Ok(())
    });
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
