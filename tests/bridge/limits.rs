//! Per-caller limits and the block list, through real calls: a caller past a quota or on the
//! block list is declined (`reject`, counted by reason), a caller short of minutes gets a
//! shorter call, and the AI is told when a caller's tasks or a call's tool calls are at their
//! limit.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bridge::config;
use bridge::ids::PhoneNumber;
use serde_json::json;
use sim::phone::PhoneCall;
use sim::realtime_ai::{AiDoubleConfig, AiMode, ScriptedCall};
use sim::stack::{LocalStack, StackOptions};
use testkit::audio;

use crate::support::*;

const ADMIN: &str = "limits-admin";

async fn limits_stack(settings: &[(&str, &str)], script: Vec<ScriptedCall>) -> LocalStack {
    let mut all = no_busy_callbacks();
    all.insert(config::ADMIN_TOKEN.to_owned(), ADMIN.to_owned());
    for (key, value) in settings {
        all.insert((*key).to_owned(), (*value).to_owned());
    }
    LocalStack::start(StackOptions {
        max_calls: 5,
        ai: AiDoubleConfig {
            mode: AiMode::Echo,
            script: Arc::new(parking_lot::Mutex::new(script)),
            ..AiDoubleConfig::default()
        },
        settings: all,
        ..StackOptions::default()
    })
    .await
    .expect("stack")
}

/// Dials; the webhook's answer says whether the call was refused, and why.
async fn dial(stack: &LocalStack, tag: &str, caller: &PhoneNumber) -> PhoneCall {
    let call = PhoneCall::dial(
        stack.phone_settings(),
        call_id(tag),
        caller.clone(),
        "Caller",
    )
    .await
    .expect("dial");
    assert_eq!(call.reply.status, 200, "{}", call.reply.body);
    call
}

/// The call was declined with `reason` and Meta was sent `reject` and nothing else.
async fn assert_declined(stack: &LocalStack, call: &PhoneCall, reason: &str) {
    assert_eq!(
        call.reply.refusal().as_deref(),
        Some(reason),
        "{}",
        call.reply.body
    );
    assert!(
        stack
            .graph
            .wait_for(&call.call_id, "reject", WAIT)
            .await
            .is_some(),
        "declined with reject"
    );
    let actions: Vec<_> = stack
        .graph
        .actions_for(&call.call_id)
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["reject"]);
}

async fn answered_and_hung_up(stack: &LocalStack, tag: &str, n: u32) {
    let call = answered_call(stack, tag, n).await;
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
}

/// Whether `/metrics` counts `count` calls declined for `reason`.
fn rejected(stack: &LocalStack, reason: &str, count: u32) -> bool {
    stack.metrics.render().contains(&format!(
        "whatsapp_bridge_call_rejections_total{{reason=\"{reason}\"}} {count}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_past_the_hourly_quota_is_declined_with_reject_and_counted() {
    let stack = limits_stack(&[(config::CALLER_CALLS_PER_HOUR, "2")], vec![]).await;
    answered_and_hung_up(&stack, "quota-1", 2001).await;
    answered_and_hung_up(&stack, "quota-2", 2001).await;

    let third = dial(&stack, "quota-3", &user(2001)).await;
    assert_declined(&stack, &third, "caller_limit").await;
    assert!(rejected(&stack, "caller_limit", 1));
    // Another caller has quotas of their own.
    answered_and_hung_up(&stack, "quota-other", 2002).await;
    // Calls the business places are not limited by the caller's inbound quota.
    let placed = stack
        .calls
        .place(&user(2001), "Say hello.", "A test call.")
        .await;
    assert!(placed.is_ok(), "{placed:?}");
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_number_is_declined_and_never_called_until_it_is_unblocked() {
    let stack = limits_stack(&[], vec![]).await;
    let http = stack.http();
    let blocked = user(2101);
    let url = |path: &str| format!("{}{path}", stack.bridge_url);

    // Bad input changes nothing.
    let bad = http
        .put(url("/blocked/12ab34"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("PUT");
    assert_eq!(bad.status().as_u16(), 400);
    let unauthorized = http
        .put(url(&format!("/blocked/{}", blocked.as_str())))
        .send()
        .await
        .expect("PUT");
    assert_eq!(unauthorized.status().as_u16(), 401);
    let put = http
        .put(url(&format!("/blocked/+{}", blocked.as_str())))
        .bearer_auth(ADMIN)
        .json(&json!({"reason": "abusive calls"}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status().as_u16(), 200);
    let entry: serde_json::Value = put.json().await.expect("JSON");
    assert_eq!(entry["number"], blocked.as_str());
    assert_eq!(entry["reason"], "abusive calls");
    let listed: serde_json::Value = http
        .get(url("/blocked"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        listed["blocked"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["blocked"][0]["number"], blocked.as_str());
    // It is kept in the store, for the other replicas and the next start.
    assert_eq!(stack.store.list_blocked().await.expect("rows").len(), 1);

    let call = dial(&stack, "blocked", &blocked).await;
    assert_declined(&stack, &call, "blocked").await;
    assert!(rejected(&stack, "blocked", 1));
    // The business does not call it either.
    let placed = http
        .post(url("/calls"))
        .bearer_auth(ADMIN)
        .json(&json!({"to": blocked.as_str(), "purpose": "A callback."}))
        .send()
        .await
        .expect("POST /calls");
    assert_eq!(placed.status().as_u16(), 403);
    let body: serde_json::Value = placed.json().await.expect("JSON");
    assert_eq!(body["error"], "blocked");

    let deleted = http
        .delete(url(&format!("/blocked/{}", blocked.as_str())))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 204);
    let again = http
        .delete(url(&format!("/blocked/{}", blocked.as_str())))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(again.status().as_u16(), 404);
    answered_and_hung_up(&stack, "unblocked", 2101).await;
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_few_minutes_left_gets_a_call_cut_to_them_and_then_none() {
    let stack = limits_stack(&[(config::CALLER_MINUTES_PER_DAY, "1")], vec![]).await;
    let caller = user(2201);
    // Earlier today the caller talked for 57 of their 60 seconds.
    stack
        .calls
        .context()
        .caller_limits
        .record(&caller, Duration::from_secs(57), SystemTime::now())
        .await;

    let call = answered_call(&stack, "minutes", 2201).await;
    let terminated = stack.graph.wait_for(&call.call_id, "terminate", WAIT).await;
    assert!(terminated.is_some(), "the bridge ended the call");
    assert!(stack.wait_idle(WAIT).await);
    let row = stack
        .store
        .call(&call.call_id)
        .await
        .expect("store")
        .expect("call log row");
    assert_eq!(row.end_reason.as_deref(), Some("max_duration"));
    let seconds = row.duration_seconds.expect("duration");
    assert!((2..=5).contains(&seconds), "{seconds} s");

    // The minutes are used up: the next call is declined.
    let next = dial(&stack, "minutes-next", &caller).await;
    assert_declined(&stack, &next, "caller_limit").await;
    stack.stop().await.expect("stop");
}

fn scripted(turn: usize, name: &str, arguments: serde_json::Value) -> ScriptedCall {
    ScriptedCall {
        on_user_turn: turn,
        name: name.to_owned(),
        arguments,
    }
}

/// The caller speaks a turn; waits until the AI has `outputs` tool results.
async fn tool_turn(stack: &LocalStack, call: &PhoneCall, outputs: usize) -> String {
    call.say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    let reached = stack
        .ai
        .wait_until(WAIT, move |sessions| {
            sessions.iter().any(|s| s.function_outputs.len() >= outputs)
        })
        .await;
    assert!(reached, "tool output {outputs} reached the AI");
    stack.ai.sessions()[0].function_outputs[outputs - 1]
        .output
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_task_past_the_callers_limit_tells_the_ai_and_adds_nothing() {
    let stack = limits_stack(
        &[(config::CALLER_OPEN_TASKS, "1")],
        vec![
            scripted(1, "add_task", json!({"title": "Buy milk"})),
            scripted(2, "add_task", json!({"title": "Buy bread"})),
        ],
    )
    .await;
    let call = answered_call(&stack, "tasks", 2301).await;
    let first = tool_turn(&stack, &call, 1).await;
    assert!(first.contains("\"added\""), "{first}");
    let second = tool_turn(&stack, &call, 2).await;
    assert!(
        second.contains("The caller has 1 open tasks, the most allowed; nothing was added."),
        "{second}"
    );
    let tasks = stack
        .store
        .list_tasks(&user(2301), None)
        .await
        .expect("tasks");
    assert_eq!(tasks.len(), 1);
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert!(stack.metrics.render().contains(
        "whatsapp_bridge_tool_calls_total{outcome=\"limit_reached\",tool=\"add_task\"} 1"
    ));
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_past_the_calls_limit_are_answered_with_an_error_and_counted() {
    let stack = limits_stack(
        &[(config::TOOL_CALLS_PER_CALL, "1")],
        vec![
            scripted(1, "list_tasks", json!({})),
            scripted(2, "add_task", json!({"title": "Buy milk"})),
        ],
    )
    .await;
    let call = answered_call(&stack, "tool-calls", 2401).await;
    let first = tool_turn(&stack, &call, 1).await;
    assert!(first.contains("\"tasks\""), "{first}");
    let second = tool_turn(&stack, &call, 2).await;
    assert!(
        second.contains("This call has used its 1 tool calls, the most allowed in one call"),
        "{second}"
    );
    // Nothing was done.
    let tasks = stack
        .store
        .list_tasks(&user(2401), None)
        .await
        .expect("tasks");
    assert!(tasks.is_empty());
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert!(stack.metrics.render().contains(
        "whatsapp_bridge_tool_calls_total{outcome=\"limit_reached\",tool=\"add_task\"} 1"
    ));
    stack.stop().await.expect("stop");
}
