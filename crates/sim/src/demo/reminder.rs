//! The demo's reminder scene: a caller asks for a reminder, the AI sets it with its tool (the
//! AI double is scripted to), the caller hangs up, and a few seconds later the bridge calls the
//! number back; the user picks up and hears the AI's reminder.

use std::time::{Duration, Instant};

use bridge::ids::{CallId, PhoneNumber};
use bridge::local_time;
use bridge::store::{DeliveryChannel, ReminderStatus};
use chrono::Utc;
use serde_json::json;
use testkit::audio;

use super::{GREETING_HZ, SAMPLE_RATE, heard_tone};
use crate::callee::Callee;
use crate::phone::PhoneCall;
use crate::realtime_ai::ScriptedCall;
use crate::stack::LocalStack;

/// How far ahead the reminder is set.
const REMINDER_IN: chrono::Duration = chrono::Duration::seconds(5);
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the scene; the line to print, or what went wrong.
pub async fn run(stack: &LocalStack, started: Instant) -> Result<String, String> {
    let progress = |what: &str| {
        println!(
            "[{:>6.2}s] reminder: {what}",
            started.elapsed().as_secs_f64()
        );
    };
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let user = PhoneNumber::new("447700900999");
    let zone = local_time::caller_zone(Some(&user), None);
    let due = Utc::now() + REMINDER_IN;
    stack.ai.add_scripted_call(ScriptedCall {
        on_user_turn: 1,
        name: "add_reminder".into(),
        arguments: json!({ "text": "call the plumber", "remind_at": due.to_rfc3339() }),
    });
    let call_id = CallId::new(format!("wacid.DEMO-REMINDER-{}", rand::random::<u32>()));
    progress("a caller dials and asks to be reminded to call the plumber");
    let call = PhoneCall::dial(stack.phone_settings(), call_id, user.clone(), "Demo Caller")
        .await
        .map_err(|err| format!("dial failed: {err:#}"))?;
    if !call
        .wait_until(STEP_TIMEOUT, |r| r.packets_received > 0)
        .await
    {
        return Err("the reminder call was never answered".into());
    }
    call.say(audio::speech_like(&[300.0, 520.0], 260, 120, SAMPLE_RATE))
        .await;
    let added = stack
        .ai
        .wait_until(STEP_TIMEOUT, |sessions| {
            sessions.iter().any(|s| {
                s.function_outputs
                    .iter()
                    .any(|o| o.output.contains("call the plumber"))
            })
        })
        .await;
    if !added {
        return Err("the AI's add_reminder tool call did not come back".into());
    }
    progress(&format!("the AI set the reminder for {}", zone.format(due)));
    call.hang_up()
        .await
        .map_err(|err| format!("hang-up failed: {err:#}"))?;
    progress("the caller hung up; waiting for the reminder to come due");
    let answered = callee
        .next_answered(STEP_TIMEOUT)
        .await
        .ok_or("the bridge never called back")?;
    let late = (Utc::now() - due).num_milliseconds() as f64 / 1000.0;
    progress(&format!(
        "the bridge called the user back {late:.1} s after the due time; the user picked up"
    ));
    let heard = answered
        .call
        .wait_until(STEP_TIMEOUT, |r| heard_tone(&r.received, GREETING_HZ))
        .await;
    if !heard {
        return Err("the user did not hear the AI's reminder".into());
    }
    let delivered = wait_delivered(stack, &user).await;
    let _ = answered.call.hang_up().await;
    if !delivered {
        return Err("the reminder was not marked delivered".into());
    }
    Ok(format!(
        "Reminder: set during a call, delivered by a call {late:.1} s after its due time; the user heard the AI's reminder (status: delivered by call)."
    ))
}

/// Until the user's reminder is delivered by call (bounded).
async fn wait_delivered(stack: &LocalStack, user: &PhoneNumber) -> bool {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < deadline {
        tick.tick().await;
        let Ok(reminders) = stack.store.list_reminders(user, None).await else {
            continue;
        };
        if reminders.iter().any(|r| {
            r.status == ReminderStatus::Delivered && r.delivered_via == Some(DeliveryChannel::Call)
        }) {
            return true;
        }
    }
    false
}
