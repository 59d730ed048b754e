//! Reminders that reach the caller, over real WebRTC on loopback: set during a call and
//! delivered by a call the user hears; retried, then sent as a WhatsApp message; a permission
//! request where the user has not allowed calls; failed with the reason when nothing can reach
//! the user, or with nothing sent when the number is blocked; delayed, not lost, while the store
//! is down; and the busy callback for a caller refused at capacity. Two processes on one store
//! delivering 100 due reminders exactly once is the load harness's `--reminders` run, which
//! `scripts/test.sh` runs as its own process (its hundred phones would disturb the socket counts
//! of the tests running beside it here).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::config;
use bridge::ids::PhoneNumber;
use bridge::store::{DeliveryChannel, Reminder, ReminderStatus, Store};
use bridge::whatsapp::permissions::PermissionStatus;
use chrono::Utc;
use serde_json::json;
use sim::callee::{Callee, CalleeBehaviour};
use sim::phone::PhoneCall;
use sim::realtime_ai::{AiDoubleConfig, AiMode, ScriptedCall};
use sim::stack::{LocalStack, StackOptions};
use testkit::audio;

use crate::support::*;

/// The AI double's voice: a tone the phone can recognise.
const OPENING_TONE: f32 = 440.0;
/// Long enough for a few retries and messages.
const DELIVERY_WAIT: Duration = Duration::from_secs(40);

fn tone() -> AiMode {
    AiMode::Tone {
        hz: OPENING_TONE,
        duration: Duration::from_millis(800),
    }
}

/// A stack whose scheduler polls often and retries quickly.
async fn reminder_stack(
    max_calls: usize,
    settings: &[(&str, &str)],
    script: Vec<ScriptedCall>,
) -> LocalStack {
    let mut all: HashMap<String, String> = [
        (config::REMINDER_POLL_INTERVAL, "200ms"),
        (config::REMINDER_RETRY_DELAY, "300ms"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    LocalStack::start(StackOptions {
        max_calls,
        ai: AiDoubleConfig {
            mode: tone(),
            script: Arc::new(parking_lot::Mutex::new(script)),
            ..AiDoubleConfig::default()
        },
        settings: all,
        ..StackOptions::default()
    })
    .await
    .expect("stack")
}

/// Waits until the user's reminder is no longer pending or calling.
async fn settled(store: &dyn Store, user: &PhoneNumber, wait: Duration) -> Reminder {
    let deadline = Instant::now() + wait;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let reminders = store.list_reminders(user, None).await.expect("store");
        if let Some(done) = reminders
            .iter()
            .find(|r| matches!(r.status, ReminderStatus::Delivered | ReminderStatus::Failed))
        {
            return done.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the reminder was not settled in time: {reminders:#?}"
        );
    }
}

/// Waits until the metrics hold `line`: the scheduler counts a reminder just after
/// it has recorded the settlement, so the count can trail the stored status.
async fn metric_line(stack: &LocalStack, line: &str) -> String {
    let deadline = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let metrics = stack.metrics.render();
        if metrics.contains(line) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "no `{line}` in:\n{metrics}");
    }
}

fn outcomes(reminder: &Reminder) -> Vec<String> {
    reminder
        .attempt_log
        .iter()
        .map(|a| format!("{} {}", a.channel, a.outcome))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_set_during_a_call_is_delivered_by_a_call_the_user_hears() {
    let due = Utc::now() + chrono::Duration::seconds(4);
    let script = vec![ScriptedCall {
        on_user_turn: 1,
        name: "add_reminder".into(),
        arguments: json!({ "text": "take the blue pills", "remind_at": due.to_rfc3339() }),
    }];
    let stack = reminder_stack(4, &[], script).await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let caller = user(501);

    // The caller asks for a reminder; the AI (scripted) sets it with the tool.
    let call = answered_call(&stack, "set-reminder", 501).await;
    call.say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    let added = stack
        .ai
        .wait_until(WAIT, |sessions| {
            sessions.iter().any(|s| {
                s.function_outputs
                    .iter()
                    .any(|o| o.output.contains("added"))
            })
        })
        .await;
    assert!(added, "the tool added the reminder");
    // The AI was told the caller's date and time in the caller's zone (a UK number).
    let session = stack.ai.sessions().into_iter().next().expect("session");
    let instructions = session.config["instructions"].as_str().unwrap_or_default();
    assert!(
        instructions.contains("For the caller it is now") && instructions.contains("Europe/London"),
        "{instructions}"
    );
    call.hang_up().await.expect("hang up");

    // At the due time the bridge calls the number; the user picks up and hears the AI.
    let answered = callee
        .next_answered(DELIVERY_WAIT)
        .await
        .expect("the bridge called the user back");
    assert_eq!(answered.user, caller);
    assert!(
        answered
            .call
            .wait_until(WAIT, |r| tone_span(&r.received, OPENING_TONE)
                .is_some_and(|(start, end)| end - start >= 12_000))
            .await,
        "the AI's reminder reached the phone"
    );
    let reminder = settled(&*stack.store, &caller, WAIT).await;
    assert_eq!(reminder.status, ReminderStatus::Delivered);
    assert_eq!(reminder.delivered_via, Some(DeliveryChannel::Call));
    assert_eq!(outcomes(&reminder), ["call delivered"]);
    assert!(Utc::now() >= due);
    // The AI opened the call with the reminder.
    let opening = stack
        .ai
        .sessions()
        .into_iter()
        .flat_map(|s| s.client_events)
        .filter(|e| e.kind == "response.create")
        .any(|e| e.json.to_string().contains("take the blue pills"));
    assert!(opening, "the AI was asked to deliver the reminder");
    // The call log links the call to the reminder.
    let record = stack
        .store
        .call(&answered.call_id)
        .await
        .expect("store")
        .expect("call logged");
    assert_eq!(record.reminder_id.as_deref(), Some(reminder.id.as_str()));
    metric_line(
        &stack,
        "whatsapp_bridge_reminders_delivered_total{channel=\"call\",kind=\"reminder\"} 1",
    )
    .await;
    answered.call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_twice_the_reminder_is_sent_as_a_message() {
    let stack = reminder_stack(4, &[(config::REMINDER_MAX_ATTEMPTS, "2")], Vec::new()).await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let person = user(502);
    callee.set_behaviour(&person, CalleeBehaviour::Decline);
    // The user wrote to the business today: the customer-service window is open.
    callee.user_writes(&person, "hi").await.expect("message");
    stack
        .store
        .add_reminder(&person, "the car's MOT", Utc::now())
        .await
        .expect("reminder");

    let reminder = settled(&*stack.store, &person, DELIVERY_WAIT).await;
    assert_eq!(reminder.status, ReminderStatus::Delivered);
    assert_eq!(reminder.delivered_via, Some(DeliveryChannel::Message));
    assert_eq!(reminder.attempts, 2);
    assert_eq!(
        outcomes(&reminder),
        ["call rejected", "call rejected", "message sent"]
    );
    let connects = stack
        .graph
        .actions()
        .into_iter()
        .filter(|a| a.action == "connect" && a.status == 200)
        .count();
    assert_eq!(connects, 2);
    let messages = stack.graph.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].kind, "text");
    assert!(messages[0].text.contains("the car's MOT"));
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_call_permission_the_user_gets_the_message_and_a_permission_request() {
    let stack = reminder_stack(4, &[], Vec::new()).await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let person = user(503);
    stack
        .graph
        .set_permission(&person, PermissionStatus::NoPermission);
    callee.user_writes(&person, "hello").await.expect("message");
    stack
        .store
        .add_reminder(&person, "renew the passport", Utc::now())
        .await
        .expect("reminder");

    let reminder = settled(&*stack.store, &person, DELIVERY_WAIT).await;
    assert_eq!(reminder.status, ReminderStatus::Delivered);
    assert_eq!(reminder.delivered_via, Some(DeliveryChannel::Message));
    assert_eq!(
        outcomes(&reminder),
        [
            "call no_permission",
            "message sent",
            "permission_request sent"
        ]
    );
    assert!(
        !stack.graph.actions().iter().any(|a| a.action == "connect"),
        "no call without permission"
    );
    let kinds: Vec<String> = stack
        .graph
        .messages()
        .iter()
        .map(|m| m.kind.clone())
        .collect();
    assert_eq!(kinds, ["text", "permission_request"]);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_window_a_reminder_fails_with_the_reason_or_goes_by_template() {
    let stack = reminder_stack(4, &[(config::REMINDER_WINDOW, "1s")], Vec::new()).await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let person = user(504);
    callee.set_behaviour(
        &person,
        CalleeBehaviour::NoAnswer {
            ring: Duration::from_millis(300),
        },
    );
    // Never written to the business: no free-form message, and no template is configured.
    stack
        .store
        .add_reminder(&person, "the dentist", Utc::now())
        .await
        .expect("reminder");
    let reminder = settled(&*stack.store, &person, DELIVERY_WAIT).await;
    assert_eq!(reminder.status, ReminderStatus::Failed);
    let reason = reminder.failure_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("not_answered") && reason.contains("no template"),
        "{reason}"
    );
    assert_eq!(outcomes(&reminder)[0], "call not_answered");
    assert!(stack.graph.messages().iter().all(|m| m.status != 200));
    metric_line(
        &stack,
        "whatsapp_bridge_reminders_failed_total{kind=\"reminder\",reason=\"no_message_channel\"} 1",
    )
    .await;
    stack.stop().await.expect("stop");

    // With an approved template the same reminder reaches the user outside the window.
    let stack = reminder_stack(
        4,
        &[
            (config::REMINDER_WINDOW, "1s"),
            (config::REMINDER_TEMPLATE, "reminder"),
        ],
        Vec::new(),
    )
    .await;
    let _callee = Callee::start(&stack.graph, stack.phone_settings());
    stack
        .store
        .add_reminder(
            &person,
            "the dentist",
            Utc::now() - chrono::Duration::seconds(5),
        )
        .await
        .expect("reminder");
    let reminder = settled(&*stack.store, &person, DELIVERY_WAIT).await;
    assert_eq!(reminder.delivered_via, Some(DeliveryChannel::Message));
    assert_eq!(outcomes(&reminder), ["message sent"]);
    let messages = stack.graph.messages();
    assert_eq!(messages[0].kind, "template");
    assert_eq!(messages[0].template.as_deref(), Some("reminder"));
    assert!(messages[0].text.contains("the dentist"));
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_for_a_blocked_number_fails_and_nothing_reaches_it() {
    let stack = reminder_stack(4, &[], Vec::new()).await;
    let _callee = Callee::start(&stack.graph, stack.phone_settings());
    let person = user(505);
    stack
        .calls
        .context()
        .block_list
        .block(&person, Some("abuse"))
        .await
        .expect("blocked");
    stack
        .store
        .add_reminder(&person, "the dentist", Utc::now())
        .await
        .expect("reminder");
    let reminder = settled(&*stack.store, &person, DELIVERY_WAIT).await;
    assert_eq!(reminder.status, ReminderStatus::Failed);
    assert_eq!(
        reminder.failure_reason.as_deref(),
        Some("the number is blocked")
    );
    // No call and no message went out.
    assert!(
        stack.graph.actions().is_empty(),
        "{:?}",
        stack.graph.actions()
    );
    assert!(stack.graph.messages().is_empty());
    metric_line(
        &stack,
        "whatsapp_bridge_reminders_failed_total{kind=\"reminder\",reason=\"blocked\"} 1",
    )
    .await;
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_refused_at_capacity_gets_the_busy_message_and_a_callback_once_a_line_frees() {
    let stack = reminder_stack(1, &[], Vec::new()).await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let first = answered_call(&stack, "busy-first", 505).await;
    let second_user = user(506);
    callee
        .user_writes(&second_user, "are you there?")
        .await
        .expect("message");
    let refused = PhoneCall::dial(
        stack.phone_settings(),
        call_id("busy-second"),
        second_user.clone(),
        "Second",
    )
    .await
    .expect("dial");
    assert_eq!(refused.reply.refusal().as_deref(), Some("at_capacity"));
    let busy = stack
        .graph
        .wait_for_message(WAIT, |m| m.to == second_user)
        .await
        .expect("the busy message");
    assert!(busy.text.contains("lines are busy"), "{}", busy.text);
    drop(refused);
    // Dialling again while the callback is queued does not send the message twice.
    let again = PhoneCall::dial(
        stack.phone_settings(),
        call_id("busy-again"),
        second_user.clone(),
        "Second",
    )
    .await
    .expect("dial");
    assert_eq!(again.reply.refusal().as_deref(), Some("at_capacity"));
    drop(again);

    // The line frees: the bridge calls the second caller back.
    first.hang_up().await.expect("hang up");
    let answered = callee
        .next_answered(DELIVERY_WAIT)
        .await
        .expect("called back");
    assert_eq!(answered.user, second_user);
    assert!(
        answered
            .call
            .wait_until(WAIT, |r| tone_span(&r.received, OPENING_TONE).is_some())
            .await
    );
    let callback = metric_line(
        &stack,
        "whatsapp_bridge_reminders_delivered_total{channel=\"call\",kind=\"callback\"} 1",
    )
    .await;
    assert!(callback.contains("whatsapp_bridge_callbacks_queued_total 1"));
    let busy_messages = stack
        .graph
        .messages()
        .iter()
        .filter(|m| m.text.contains("lines are busy"))
        .count();
    assert_eq!(busy_messages, 1);
    answered.call.hang_up().await.expect("hang up");
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_us_callers_instructions_carry_their_own_local_time() {
    let stack = reminder_stack(2, &[], Vec::new()).await;
    let id = call_id("us-caller");
    let call = PhoneCall::dial(
        stack.phone_settings(),
        id.clone(),
        PhoneNumber::new("12125550123"),
        "New Yorker",
    )
    .await
    .expect("dial");
    assert!(stack.graph.wait_for(&id, "accept", WAIT).await.is_some());
    let reached = stack
        .ai
        .wait_until(WAIT, |sessions| !sessions.is_empty())
        .await;
    assert!(reached);
    let session = stack.ai.sessions().into_iter().next().expect("session");
    let instructions = session.config["instructions"].as_str().unwrap_or_default();
    assert!(instructions.contains("America/New_York"), "{instructions}");
    call.hang_up().await.expect("hang up");
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_at_the_due_time_delays_the_reminder_and_loses_nothing() {
    use bridge::store::supabase::{SupabaseConfig, SupabaseStore};
    use sim::postgrest_double::PostgrestDouble;
    const KEY: &str = "service-role-key";
    let postgrest = PostgrestDouble::start(KEY).await.expect("PostgREST double");
    let store: Arc<dyn Store> = Arc::new(SupabaseStore::new(SupabaseConfig {
        url: postgrest.url(),
        service_role_key: bridge::app::secret(KEY),
        timeout: Duration::from_secs(2),
    }));
    let stack = LocalStack::start(StackOptions {
        max_calls: 4,
        ai: AiDoubleConfig {
            mode: tone(),
            ..AiDoubleConfig::default()
        },
        settings: [(
            config::REMINDER_POLL_INTERVAL.to_owned(),
            "200ms".to_owned(),
        )]
        .into(),
        store: Some(store.clone()),
        ..StackOptions::default()
    })
    .await
    .expect("stack");
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let person = user(507);
    let due = Utc::now() + chrono::Duration::milliseconds(500);
    store
        .add_reminder(&person, "water the plants", due)
        .await
        .expect("reminder");
    // The store goes down before the reminder is due, and stays down past it.
    postgrest.fail_next(usize::MAX, 503, r#"{"message":"upstream unavailable"}"#);
    let failing_claims = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("whatsapp_bridge_store_errors_total{operation=\"claim_reminders\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !(Utc::now() > due + chrono::Duration::seconds(1)
        && failing_claims(&stack.metrics.render()) >= 3.0)
    {
        assert!(
            Instant::now() < deadline,
            "the scheduler never tried the store"
        );
        tick.tick().await;
    }
    assert!(
        !stack.graph.actions().iter().any(|a| a.action == "connect"),
        "nothing is called while the store is down"
    );
    // The store comes back: the reminder is delivered, once.
    postgrest.fail_next(0, 503, "");
    let answered = callee
        .next_answered(DELIVERY_WAIT)
        .await
        .expect("called once the store was back");
    assert_eq!(answered.user, person);
    let reminder = settled(&*store, &person, WAIT).await;
    assert_eq!(reminder.status, ReminderStatus::Delivered);
    assert_eq!(reminder.delivered_via, Some(DeliveryChannel::Call));
    answered.call.hang_up().await.expect("hang up");
    stack.stop().await.expect("stop");
}
