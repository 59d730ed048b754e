//! The AI works for the caller through a real call: tools on the caller's own tasks and
//! reminders, isolation between callers, a store that is down, the call log and transcript, and
//! memory across calls.

use std::sync::Arc;
use std::time::Duration;

use bridge::ids::PhoneNumber;
use bridge::store::embedded::EmbeddedStore;
use bridge::store::{ReminderStatus, Role, Store, TaskStatus};
use serde_json::json;
use sim::phone::PhoneCall;
use sim::realtime_ai::{AiDoubleConfig, AiMode, ScriptedCall, SessionSnapshot};
use sim::stack::{LocalStack, StackOptions};
use testkit::audio;

use crate::support::*;

fn scripted(turn: usize, name: &str, arguments: serde_json::Value) -> ScriptedCall {
    ScriptedCall {
        on_user_turn: turn,
        name: name.to_owned(),
        arguments,
    }
}

async fn tool_stack(script: Vec<ScriptedCall>, store: Option<Arc<dyn Store>>) -> LocalStack {
    LocalStack::start(StackOptions {
        max_calls: 5,
        ai: AiDoubleConfig {
            mode: AiMode::Echo,
            script: Arc::new(parking_lot::Mutex::new(script)),
            transcripts: vec![
                "Please add buy milk to my list".into(),
                "What is on my list?".into(),
                "Mark it done".into(),
                "Remind me about the dentist tomorrow".into(),
            ],
            ..AiDoubleConfig::default()
        },
        store,
        ..StackOptions::default()
    })
    .await
    .expect("stack")
}

/// The session whose instructions name this caller.
fn session_of(stack: &LocalStack, name: &str) -> SessionSnapshot {
    stack
        .ai
        .sessions()
        .into_iter()
        .find(|s| {
            s.config["instructions"]
                .as_str()
                .is_some_and(|text| text.contains(name))
        })
        .expect("the caller's AI session")
}

/// The caller says one short turn and waits until the AI has received `outputs` tool results
/// and has finished speaking the answer (each tool turn is two responses: the call, the answer).
async fn turn_until_outputs(stack: &LocalStack, call: &PhoneCall, name: &str, outputs: usize) {
    call.say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    let name = name.to_owned();
    let reached = stack
        .ai
        .wait_until(WAIT, move |sessions| {
            sessions.iter().any(|s| {
                s.config["instructions"]
                    .as_str()
                    .is_some_and(|text| text.contains(&name))
                    && s.function_outputs.len() >= outputs
                    && s.responses
                        .iter()
                        .filter(|r| r.status == "completed")
                        .count()
                        >= 2 * outputs
            })
        })
        .await;
    assert!(reached, "tool output {outputs} reached the AI");
}

async fn dial(stack: &LocalStack, tag: &str, user: &PhoneNumber, name: &str) -> PhoneCall {
    let id = call_id(tag);
    let call = PhoneCall::dial(stack.phone_settings(), id.clone(), user.clone(), name)
        .await
        .expect("dial");
    assert_eq!(call.reply.status, 200);
    assert!(stack.graph.wait_for(&id, "accept", WAIT).await.is_some());
    assert!(call.wait_until(WAIT, |r| r.packets_received > 0).await);
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_adds_lists_and_completes_a_task_and_sets_a_reminder_by_voice() {
    let remind_at = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let stack = tool_stack(
        vec![
            scripted(1, "add_task", json!({"title": "Buy milk"})),
            scripted(2, "list_tasks", json!({})),
            scripted(
                4,
                "add_reminder",
                json!({"text": "Dentist", "remind_at": remind_at}),
            ),
        ],
        None,
    )
    .await;
    let ada = user(1001);
    let call = dial(&stack, "tools", &ada, "Ada Tools").await;

    turn_until_outputs(&stack, &call, "Ada Tools", 1).await;
    let added: serde_json::Value =
        serde_json::from_str(&session_of(&stack, "Ada Tools").function_outputs[0].output)
            .expect("JSON output");
    let task_id = added["added"]["task_id"]
        .as_str()
        .expect("task id")
        .to_owned();
    stack
        .ai
        .add_scripted_call(scripted(3, "complete_task", json!({"task_id": task_id})));
    turn_until_outputs(&stack, &call, "Ada Tools", 2).await;
    turn_until_outputs(&stack, &call, "Ada Tools", 3).await;
    turn_until_outputs(&stack, &call, "Ada Tools", 4).await;

    let session = session_of(&stack, "Ada Tools");
    let outputs: Vec<(&str, &str)> = session
        .function_outputs
        .iter()
        .map(|o| (o.name.as_str(), o.output.as_str()))
        .collect();
    assert_eq!(outputs[0].0, "add_task");
    assert!(outputs[0].1.contains("Buy milk"));
    assert_eq!(outputs[1].0, "list_tasks");
    assert!(outputs[1].1.contains(&task_id), "{}", outputs[1].1);
    assert_eq!(outputs[2].0, "complete_task");
    assert!(outputs[2].1.contains("completed"), "{}", outputs[2].1);
    assert_eq!(outputs[3].0, "add_reminder");
    assert!(outputs[3].1.contains("Dentist"), "{}", outputs[3].1);
    assert_eq!(
        session.early_response_creates, 0,
        "response.create only after response.done"
    );

    // The store holds exactly those rows for that phone.
    let tasks = stack.store.list_tasks(&ada, None).await.expect("tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].title, "Buy milk");
    assert_eq!(tasks[0].status, TaskStatus::Done);
    let reminders = stack
        .store
        .list_reminders(&ada, None)
        .await
        .expect("reminders");
    assert_eq!(reminders.len(), 1);
    assert_eq!(reminders[0].text, "Dentist");
    assert_eq!(reminders[0].status, ReminderStatus::Pending);

    // The AI spoke the result back; the call log and transcript are written by the end.
    let id = call.call_id.clone();
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    let record = stack
        .store
        .call(&id)
        .await
        .expect("read")
        .expect("call row");
    assert_eq!(record.phone_number.as_ref(), Some(&ada));
    assert_eq!(record.end_reason.as_deref(), Some("remote_terminated"));
    assert!(record.answered_at.is_some() && record.ended_at.is_some());
    let turns = stack.store.call_turns(&id).await.expect("turns");
    assert!(
        turns
            .iter()
            .any(|t| t.role == Role::User && t.text == "Please add buy milk to my list"),
        "{turns:?}"
    );
    assert!(
        turns.iter().any(|t| t.role == Role::Assistant
            && t.text.contains("Result:")
            && t.text.contains("Buy milk")),
        "{turns:?}"
    );
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains("whatsapp_bridge_tool_calls_total{outcome=\"ok\",tool=\"add_task\"} 1")
    );
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_callers_only_ever_see_their_own_tasks() {
    let stack = tool_stack(
        vec![
            scripted(1, "add_task", json!({"title": "My task"})),
            scripted(2, "list_tasks", json!({})),
        ],
        None,
    )
    .await;
    let (ada, bob) = (user(1101), user(1102));
    let (ada_call, bob_call) = tokio::join!(
        dial(&stack, "iso-a", &ada, "Ada Iso"),
        dial(&stack, "iso-b", &bob, "Bob Iso")
    );
    tokio::join!(
        turn_until_outputs(&stack, &ada_call, "Ada Iso", 1),
        turn_until_outputs(&stack, &bob_call, "Bob Iso", 1)
    );
    tokio::join!(
        turn_until_outputs(&stack, &ada_call, "Ada Iso", 2),
        turn_until_outputs(&stack, &bob_call, "Bob Iso", 2)
    );
    let ada_task = stack.store.list_tasks(&ada, None).await.expect("tasks");
    let bob_task = stack.store.list_tasks(&bob, None).await.expect("tasks");
    assert_eq!((ada_task.len(), bob_task.len()), (1, 1));
    let ada_list = session_of(&stack, "Ada Iso").function_outputs[1]
        .output
        .clone();
    let bob_list = session_of(&stack, "Bob Iso").function_outputs[1]
        .output
        .clone();
    assert!(ada_list.contains(&ada_task[0].id) && !ada_list.contains(&bob_task[0].id));
    assert!(bob_list.contains(&bob_task[0].id) && !bob_list.contains(&ada_task[0].id));

    // Bob's AI tries to complete Ada's task: not found, nothing changes.
    stack.ai.add_scripted_call(scripted(
        3,
        "complete_task",
        json!({"task_id": ada_task[0].id}),
    ));
    turn_until_outputs(&stack, &bob_call, "Bob Iso", 3).await;
    let answer = session_of(&stack, "Bob Iso").function_outputs[2]
        .output
        .clone();
    assert!(answer.contains("No task with that id"), "{answer}");
    let ada_after = stack.store.list_tasks(&ada, None).await.expect("tasks");
    assert_eq!(ada_after[0].status, TaskStatus::Open);

    ada_call.hang_up().await.expect("hang up");
    bob_call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_gives_the_ai_an_error_and_the_call_goes_on() {
    let dir = std::env::temp_dir().join(format!("wvb-down-{}", rand::random::<u64>()));
    let store = EmbeddedStore::open(&dir).expect("store");
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let stack = tool_stack(
        vec![scripted(1, "add_task", json!({"title": "Buy milk"}))],
        Some(shared),
    )
    .await;
    store.set_read_only(true).expect("read-only");
    let ada = user(1201);
    let call = dial(&stack, "down", &ada, "Ada Down").await;
    turn_until_outputs(&stack, &call, "Ada Down", 1).await;
    let output = session_of(&stack, "Ada Down").function_outputs[0]
        .output
        .clone();
    assert!(output.contains("unavailable"), "{output}");
    // The call goes on: audio still flows both ways.
    let before = call.recording().lock().packets_received;
    assert!(
        call.wait_until(WAIT, |r| r.packets_received > before + 25)
            .await
    );
    assert_eq!(stack.registry.active_calls(), 1);
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    let metrics = stack.metrics.render();
    assert!(metrics.contains(
        "whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"remote_terminated\"} 1"
    ));
    assert!(
        metrics.contains(
            "whatsapp_bridge_tool_calls_total{outcome=\"store_error\",tool=\"add_task\"} 1"
        )
    );
    stack.stop().await.expect("stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_call_from_the_same_phone_remembers_the_first() {
    let stack = tool_stack(Vec::new(), None).await;
    let ada = user(1301);
    let first = dial(&stack, "mem1", &ada, "Ada Memory").await;
    first
        .say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    // Wait until the caller's words were transcribed (the double sends it after the commit).
    let transcribed = first.call_id.clone();
    let store = stack.store.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let turns = store.call_turns(&transcribed).await.unwrap_or_default();
        if turns.iter().any(|t| t.role == Role::User) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no transcript written"
        );
        // The journal writes asynchronously; poll the store at a modest pace.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);

    let second = dial(&stack, "mem2", &ada, "Ada Memory").await;
    let sessions = stack.ai.sessions();
    let instructions = sessions
        .last()
        .and_then(|s| s.config["instructions"].as_str())
        .expect("instructions")
        .to_owned();
    assert!(
        instructions.contains("Please add buy milk to my list"),
        "{instructions}"
    );
    second.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_supabase_the_call_log_and_transcript_are_written_and_an_outage_is_survived() {
    use bridge::store::supabase::{SupabaseConfig, SupabaseStore};
    use sim::postgrest_double::PostgrestDouble;

    let double = PostgrestDouble::start("service-key")
        .await
        .expect("PostgREST double");
    let supabase: Arc<dyn Store> = Arc::new(SupabaseStore::new(SupabaseConfig {
        url: double.url(),
        service_role_key: secrecy::SecretString::from("service-key"),
        timeout: Duration::from_secs(2),
    }));
    let stack = tool_stack(
        vec![
            scripted(1, "add_task", json!({"title": "Buy milk"})),
            scripted(2, "add_task", json!({"title": "Buy bread"})),
        ],
        Some(supabase),
    )
    .await;
    let ada = user(1401);
    let call = dial(&stack, "supa", &ada, "Ada Supabase").await;
    turn_until_outputs(&stack, &call, "Ada Supabase", 1).await;
    // Supabase answers 503 for the next request: the tool reports the outage, the call goes on.
    double.fail_next_on(
        "tasks",
        1,
        503,
        r#"{"code":"PGRST000","message":"Database client error"}"#,
    );
    turn_until_outputs(&stack, &call, "Ada Supabase", 2).await;
    let outputs = session_of(&stack, "Ada Supabase").function_outputs;
    assert!(outputs[0].output.contains("Buy milk"));
    assert!(
        outputs[1].output.contains("unavailable"),
        "{}",
        outputs[1].output
    );
    let id = call.call_id.clone();
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);

    let record = stack
        .store
        .call(&id)
        .await
        .expect("read")
        .expect("call row");
    assert_eq!(record.end_reason.as_deref(), Some("remote_terminated"));
    let turns = stack.store.call_turns(&id).await.expect("turns");
    assert!(turns.iter().any(|t| t.role == Role::User), "{turns:?}");
    assert!(turns.iter().any(|t| t.role == Role::Assistant), "{turns:?}");
    let tasks = stack.store.list_tasks(&ada, None).await.expect("tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(double.rows("calls").len(), 1);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_ends_the_call_after_its_goodbye_has_played_out() {
    let stack = tool_stack(vec![scripted(1, "end_call", json!({}))], None).await;
    let call = answered_call(&stack, "end-call", 800).await;
    call.say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    let terminate = stack
        .graph
        .wait_for(&call.call_id, "terminate", WAIT)
        .await
        .expect("the bridge ended the call");
    // The goodbye (the double's answer to the tool output: 600 ms of 440 Hz) played out in
    // full at the phone before the terminate was sent.
    let recording = call.recording();
    let (start, end) = {
        let recording = recording.lock();
        tone_span(&recording.received, 440.0).expect("the goodbye reached the phone")
    };
    assert!(
        end - start >= 13_000,
        "the goodbye was cut: {} samples",
        end - start
    );
    let last_toned_packet = recording
        .lock()
        .arrivals
        .iter()
        .filter(|(_, offset)| *offset < end)
        .map(|(at, _)| *at)
        .max()
        .expect("arrivals");
    // The phone stamps a packet when its own receive task reads it, which on a busy machine can
    // come a moment after the Graph double stamped the terminate sent after that packet.
    assert!(
        last_toned_packet <= terminate.received_at + Duration::from_millis(100),
        "the goodbye's last packet arrived {:?} after the terminate",
        last_toned_packet.saturating_duration_since(terminate.received_at)
    );
    assert!(stack.wait_idle(WAIT).await);
    assert!(
        stack
            .metrics
            .render()
            .contains("whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"ai_ended\"} 1")
    );
    let session = stack.ai.sessions().into_iter().next().expect("session");
    assert!(
        session
            .function_outputs
            .iter()
            .any(|o| o.output.contains("\"ending\":true"))
    );
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_confirms_forget_me_leaves_nothing_behind_and_another_keeps_theirs() {
    let stack = tool_stack(
        vec![
            scripted(1, "forget_me", json!({})),
            scripted(2, "forget_me", json!({"confirm": true})),
        ],
        None,
    )
    .await;
    let (ada, bob) = (user(1101), user(1102));
    let adas_earlier =
        seed_caller(&*stack.store, &ada, "wacid.ADA-EARLIER", two_days_ago(), 1).await;
    let bobs_earlier =
        seed_caller(&*stack.store, &bob, "wacid.BOB-EARLIER", two_days_ago(), 1).await;
    let call = dial(&stack, "forget", &ada, "Ada Forget").await;

    // Asked: the AI is told what would go and to confirm with the caller; nothing is deleted.
    turn_until_outputs(&stack, &call, "Ada Forget", 1).await;
    let asked = session_of(&stack, "Ada Forget").function_outputs[0]
        .output
        .clone();
    assert!(asked.contains("\"deleted\":false"), "{asked}");
    assert!(asked.contains("confirm true"), "{asked}");
    assert_eq!(stack.store.list_tasks(&ada, None).await.unwrap().len(), 1);

    // Confirmed: everything of Ada's goes, at once.
    turn_until_outputs(&stack, &call, "Ada Forget", 2).await;
    let confirmed = session_of(&stack, "Ada Forget").function_outputs[1]
        .output
        .clone();
    assert!(confirmed.contains("\"deleted\":true"), "{confirmed}");
    assert!(stack.store.list_tasks(&ada, None).await.unwrap().is_empty());
    assert!(
        stack
            .store
            .list_reminders(&ada, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(stack.store.call(&adas_earlier).await.unwrap(), None);
    assert_eq!(
        stack.store.caller_profile(&ada).await.unwrap().time_zone,
        None
    );

    // The call goes on; what is said now is not kept, nor the call itself once it ends.
    call.say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    let id = call.call_id.clone();
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert_eq!(stack.store.call(&id).await.unwrap(), None);
    assert!(stack.store.call_turns(&id).await.unwrap().is_empty());
    let since = chrono::Utc::now() - chrono::Duration::days(30);
    assert!(
        stack
            .store
            .recent_turns(&ada, since, 50)
            .await
            .unwrap()
            .is_empty()
    );

    // Bob's are untouched.
    assert_eq!(stack.store.list_tasks(&bob, None).await.unwrap().len(), 1);
    assert_eq!(
        stack.store.list_reminders(&bob, None).await.unwrap().len(),
        1
    );
    assert_eq!(
        stack.store.call_turns(&bobs_earlier).await.unwrap().len(),
        1
    );
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains("whatsapp_bridge_callers_forgotten_total{via=\"tool\"} 1"),
        "{metrics}"
    );
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_me_confirmation_without_the_request_on_the_call_is_refused() {
    let stack = tool_stack(
        vec![scripted(1, "forget_me", json!({"confirm": true}))],
        None,
    )
    .await;
    let ada = user(1103);
    let earlier = seed_caller(&*stack.store, &ada, "wacid.ADA-KEPT", two_days_ago(), 1).await;
    let call = dial(&stack, "forget-refused", &ada, "Ada Refused").await;
    turn_until_outputs(&stack, &call, "Ada Refused", 1).await;
    let refused = session_of(&stack, "Ada Refused").function_outputs[0]
        .output
        .clone();
    assert!(
        refused.contains("Refused: nothing was deleted"),
        "{refused}"
    );

    let id = call.call_id.clone();
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert_eq!(stack.store.list_tasks(&ada, None).await.unwrap().len(), 1);
    assert_eq!(
        stack.store.list_reminders(&ada, None).await.unwrap().len(),
        1
    );
    assert_eq!(stack.store.call_turns(&earlier).await.unwrap().len(), 1);
    // This call is journaled as any other.
    assert!(stack.store.call(&id).await.unwrap().is_some());
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains(
            "whatsapp_bridge_tool_calls_total{outcome=\"not_confirmed\",tool=\"forget_me\"} 1"
        ),
        "{metrics}"
    );
    stack.stop().await.expect("stop");
}

fn two_days_ago() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::days(2)
}
