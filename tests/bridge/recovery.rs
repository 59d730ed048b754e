//! The AI going away, over real WebRTC: a session dropped mid-call is replaced with the
//! conversation so far and the caller's words of the gap; a session nearing the provider's
//! limit is rolled over at a pause; an AI that cannot be reached declines calls before they are
//! answered, and the circuit breaker refuses new ones until the AI is back.

use std::time::{Duration, Instant};

use bridge::config;
use sim::phone::PhoneCall;
use sim::realtime_ai::{AiDoubleConfig, AiMode, CloseKind, Refusal, SessionSnapshot};
use sim::stack::{LocalStack, StackOptions};
use testkit::audio;

use crate::support::*;

const PITCHES: [f32; 4] = [300.0, 520.0, 760.0, 1000.0];
/// What the double's transcription says the caller's first turn was.
const FIRST_WORDS: &str = "I would like a table for two tonight";

async fn echo_stack_with(ai: AiDoubleConfig, settings: &[(&str, &str)]) -> LocalStack {
    let mut all = no_busy_callbacks();
    for (key, value) in settings {
        all.insert((*key).to_owned(), (*value).to_owned());
    }
    LocalStack::start(StackOptions {
        max_calls: 4,
        ai,
        settings: all,
        ..StackOptions::default()
    })
    .await
    .expect("local stack starts")
}

fn transcribing_echo() -> AiDoubleConfig {
    AiDoubleConfig {
        mode: AiMode::Echo,
        transcripts: vec![FIRST_WORDS.to_owned()],
        ..AiDoubleConfig::default()
    }
}

/// The texts of the messages a session was given (`conversation.item.create`), as (role, text).
fn replayed(session: &SessionSnapshot) -> Vec<(String, String)> {
    session
        .client_events
        .iter()
        .filter(|event| event.kind == "conversation.item.create")
        .filter(|event| event.json["item"]["type"] == "message")
        .map(|event| {
            let item = &event.json["item"];
            (
                item["role"].as_str().unwrap_or_default().to_owned(),
                item["content"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Says `pitches` and waits until their echo has reached the phone.
async fn turn(call: &PhoneCall, pitches: &[f32]) {
    let heard_before = call.recording().lock().received.len();
    call.say(audio::speech_like(pitches, 260, 120, SAMPLE_RATE))
        .await;
    assert!(
        call.wait_until(WAIT, |r| pitches_in_order(
            &r.received[heard_before..],
            &PITCHES,
            pitches
        ))
        .await,
        "the echo of {pitches:?} reached the phone"
    );
}

/// [`turn`], then the caller lets the answer play out and pauses (the phone hears 400 ms of
/// quiet), as people do between turns.
async fn turn_and_pause(call: &PhoneCall, pitches: &[f32]) {
    turn(call, pitches).await;
    let quiet = (SAMPLE_RATE as usize) * 400 / 1000;
    assert!(
        call.wait_until(WAIT, |r| r.received.len() >= quiet
            && audio::rms(&r.received[r.received.len() - quiet..]) < 100.0)
            .await,
        "the answer played out"
    );
}

/// The fault of the first test: the AI is cut off while its answer plays at the phone, the
/// caller speaks during the gap.
async fn a_dropped_session_is_replaced_mid_sentence(kind: CloseKind, tag: &str, n: u32) {
    let stack = echo_stack_with(transcribing_echo(), &[]).await;
    let call = answered_call(&stack, tag, n).await;

    // Turn 1, answered; its transcript reaches the bridge half a second after the turn.
    turn(&call, &[300.0, 760.0]).await;
    assert!(
        stack
            .ai
            .wait_until(WAIT, |sessions| sessions[0].errors_sent.is_empty()
                && sessions[0].responses.len() == 1)
            .await
    );
    // Turn 2: while its echo plays at the phone, the AI goes away.
    let heard_before = call.recording().lock().received.len();
    call.say(audio::speech_like(&[520.0, 300.0], 260, 120, SAMPLE_RATE))
        .await;
    assert!(
        call.wait_until(WAIT, |r| pitches_in_order(
            &r.received[heard_before..],
            &PITCHES,
            &[520.0]
        ))
        .await,
        "the second answer is playing"
    );
    let fault = Instant::now();
    let heard_at_fault = call.recording().lock().received.len();
    stack.ai.close_all(kind);
    // The caller goes on talking through the gap.
    call.say(audio::speech_like(&[1000.0], 300, 60, SAMPLE_RATE))
        .await;

    // The phone hears the AI answer those words within 1.5 s of the fault.
    let answered = call
        .wait_until(Duration::from_millis(1500), |r| {
            pitches_in_order(&r.received[heard_at_fault..], &PITCHES, &[1000.0])
        })
        .await;
    assert!(
        answered,
        "no answer to the gap's words within 1.5 s of the fault ({:?})",
        fault.elapsed()
    );

    // A second session: configured, told the earlier turns, then given the gap's words.
    let sessions = stack.ai.sessions();
    assert_eq!(sessions.len(), 2, "one replacement session");
    let new = &sessions[1];
    assert!(new.opened_at >= fault);
    assert_eq!(new.appended_before_configured_ms, 0);
    assert_eq!(new.client_events[0].kind, "session.update");
    let lines = replayed(new);
    assert!(
        lines.contains(&("user".to_owned(), FIRST_WORDS.to_owned())),
        "the caller's first turn was replayed: {lines:?}"
    );
    assert!(
        lines.iter().any(|(role, _)| role == "assistant"),
        "the AI's answers were replayed: {lines:?}"
    );
    // The replay came before any audio.
    let first_append = new.first_append_at.expect("audio reached the new session");
    assert!(
        new.client_events
            .iter()
            .filter(|event| event.kind == "conversation.item.create")
            .all(|event| event.at <= first_append)
    );
    assert!(
        pitches_in_order(&new.input_audio, &PITCHES, &[1000.0]),
        "the caller's words spoken during the gap reached the new session"
    );

    // The call goes on; Meta was never told to end it.
    turn(&call, &[760.0, 300.0]).await;
    let actions = stack.graph.actions_for(&call.call_id);
    assert!(
        actions.iter().all(|a| a.action != "terminate"),
        "{actions:?}"
    );
    let metrics = stack.metrics.render();
    let cause = match kind {
        CloseKind::Abrupt => "close_1006",
        CloseKind::Code(1011) => "close_1011",
        CloseKind::Code(_) => "close_other",
    };
    assert!(
        metrics.contains(&format!(
            "whatsapp_bridge_ai_reconnects_total{{cause=\"{cause}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("whatsapp_bridge_ai_recovery_seconds_count 1"));
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_with_1011_mid_sentence_is_replaced_with_the_conversation() {
    a_dropped_session_is_replaced_mid_sentence(CloseKind::Code(1011), "reconnect-1011", 801).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dropped_abruptly_mid_sentence_is_replaced_with_the_conversation() {
    a_dropped_session_is_replaced_mid_sentence(CloseKind::Abrupt, "reconnect-abrupt", 802).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_nearing_its_limit_is_rolled_over_at_a_pause_without_a_gap() {
    // Sessions last 10 s here (the provider's 60 minutes, scaled down); the double says
    // `session_expired` and closes at the limit.
    let stack = echo_stack_with(
        AiDoubleConfig {
            max_session: Duration::from_secs(10),
            ..transcribing_echo()
        },
        &[],
    )
    .await;
    let call = answered_call(&stack, "rollover", 803).await;
    let started = Instant::now();
    // The caller talks on, with pauses, past the first session's limit.
    let turns: [&[f32]; 5] = [
        &[300.0, 760.0],
        &[520.0],
        &[1000.0, 300.0],
        &[760.0],
        &[520.0, 1000.0],
    ];
    while started.elapsed() < Duration::from_secs(12) {
        for pitches in turns {
            turn_and_pause(&call, pitches).await;
        }
    }
    let sessions = stack.ai.sessions();
    assert!(sessions.len() >= 2, "a next session was opened");
    let first = &sessions[0];
    assert!(
        !first
            .errors_sent
            .iter()
            .any(|code| code == "session_expired"),
        "the first session was replaced before it expired: {:?}",
        first.errors_sent
    );
    let closed = first.closed_at.expect("the first session was closed");
    assert!(closed < first.opened_at + Duration::from_secs(10));
    // The next one was told the conversation before it took the caller's audio.
    let next = &sessions[1];
    assert!(
        replayed(next).contains(&("user".to_owned(), FIRST_WORDS.to_owned())),
        "{:?}",
        replayed(next)
    );
    // No gap at the phone: RTP kept arriving every 20 ms, and every turn was answered in full
    // (checked by `turn`).
    let recording = call.recording();
    let longest_gap = recording
        .lock()
        .arrivals
        .windows(2)
        .map(|pair| pair[1].0.duration_since(pair[0].0))
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap < Duration::from_millis(150),
        "the phone went {longest_gap:?} without audio"
    );
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains("whatsapp_bridge_ai_rollovers_total{how=\"at_pause\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("whatsapp_bridge_ai_reconnects_total"));
    assert!(
        stack
            .graph
            .actions_for(&call.call_id)
            .iter()
            .all(|a| a.action != "terminate")
    );
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ai_declines_the_call_before_accept_and_retry_after_is_honoured() {
    let stack = echo_stack_with(
        AiDoubleConfig::default(),
        &[
            (config::ANSWER_DEADLINE, "3s"),
            (config::AI_BREAKER_THRESHOLD, "0"),
        ],
    )
    .await;

    // The AI answers every upgrade with 503: the call is retried, then declined unanswered.
    stack.ai.refuse_connections(Refusal::Status {
        status: 503,
        retry_after: None,
    });
    let id = call_id("ai-down");
    let call = PhoneCall::dial(stack.phone_settings(), id.clone(), user(804), "Test Caller")
        .await
        .expect("dial");
    assert_eq!(call.reply.status, 200);
    assert!(
        stack.graph.wait_for(&id, "reject", WAIT).await.is_some(),
        "the call was declined"
    );
    let actions = stack.graph.actions_for(&id);
    assert!(
        actions.iter().all(|a| a.action != "accept"),
        "never answered: {actions:?}"
    );
    assert!(
        stack.ai.refused_connections() >= 2,
        "the AI was tried more than once"
    );
    assert!(stack.wait_idle(WAIT).await);
    assert!(
        stack
            .metrics
            .render()
            .contains("whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"ai_failed\"} 1")
    );

    // 429 with Retry-After: 1 — the next attempt waits that long, then the call is answered.
    stack.ai.refuse_connections(Refusal::Status {
        status: 429,
        retry_after: Some(Duration::from_secs(1)),
    });
    let refused_before = stack.ai.refused_connections();
    let call = PhoneCall::dial(
        stack.phone_settings(),
        call_id("ai-busy"),
        user(805),
        "Test Caller",
    )
    .await
    .expect("dial");
    assert!(stack.ai.wait_for_refusals(refused_before + 1, WAIT).await);
    let refused_at = Instant::now();
    stack.ai.accept_connections();
    assert!(
        stack
            .graph
            .wait_for(&call.call_id, "accept", WAIT)
            .await
            .is_some(),
        "answered once the AI let it in"
    );
    let session = stack.ai.sessions().pop().expect("a session");
    assert!(
        session.opened_at >= refused_at + Duration::from_millis(900),
        "the bridge came back {:?} after the 429, not after its Retry-After",
        session.opened_at.saturating_duration_since(refused_at)
    );
    let metrics = stack.metrics.render();
    assert!(metrics.contains("whatsapp_bridge_ai_connect_failures_total{cause=\"http_429\"} 1"));
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_repeated_failures_the_breaker_refuses_calls_at_once_and_closes_when_the_ai_is_back()
{
    let stack = echo_stack_with(
        AiDoubleConfig::default(),
        &[
            (config::ANSWER_DEADLINE, "5s"),
            (config::AI_BREAKER_THRESHOLD, "2"),
            (config::AI_BREAKER_PROBE_INTERVAL, "300ms"),
            (config::ADMIN_TOKEN, "breaker-admin"),
        ],
    )
    .await;
    stack.ai.refuse_connections(Refusal::Drop);

    // The first call's attempts open the breaker; it is declined without waiting out its
    // answer deadline.
    let dialled = Instant::now();
    let first = PhoneCall::dial(stack.phone_settings(), call_id("brk-1"), user(806), "A")
        .await
        .expect("dial");
    assert!(
        stack
            .graph
            .wait_for(&first.call_id, "reject", WAIT)
            .await
            .is_some()
    );
    assert!(
        dialled.elapsed() < Duration::from_secs(4),
        "{:?}",
        dialled.elapsed()
    );
    let status = health(&stack).await;
    assert_eq!(status["ai"]["state"], "open", "{status}");

    // While it is open, a new call is declined at once, without an AI attempt or an answer.
    let refused_before = stack.ai.refused_connections();
    let dialled = Instant::now();
    let second = PhoneCall::dial(stack.phone_settings(), call_id("brk-2"), user(807), "B")
        .await
        .expect("dial");
    let reject = stack
        .graph
        .wait_for(&second.call_id, "reject", WAIT)
        .await
        .expect("declined");
    let actions = stack.graph.actions_for(&second.call_id);
    assert_eq!(
        actions
            .iter()
            .map(|a| a.action.as_str())
            .collect::<Vec<_>>(),
        ["reject"],
        "no pre_accept, no accept"
    );
    assert!(reject.received_at.duration_since(dialled) < Duration::from_secs(1));
    let metrics = stack.metrics.render();
    assert!(metrics.contains("whatsapp_bridge_call_rejections_total{reason=\"ai_unavailable\"} 1"));
    assert!(metrics.contains("whatsapp_bridge_ai_breaker_open 1"));
    // A call the business asks for is refused as well, before the permission is read.
    let placed = stack
        .http()
        .post(format!("{}/calls", stack.bridge_url))
        .bearer_auth("breaker-admin")
        .json(&serde_json::json!({"to": user(809).as_str(), "purpose": "A callback."}))
        .send()
        .await
        .expect("POST /calls");
    assert_eq!(placed.status().as_u16(), 503);
    let body: serde_json::Value = placed.json().await.expect("JSON");
    assert_eq!(body["error"], "ai_unavailable", "{body}");
    // Only the prober tries the AI meanwhile (every 300 ms), not the refused calls.
    assert!(stack.ai.refused_connections() <= refused_before + 3);

    // The AI comes back: the prober closes the breaker and calls are answered again.
    stack.ai.accept_connections();
    assert!(
        stack.ai.wait_for_sessions(1, WAIT).await,
        "the prober opened a session"
    );
    let deadline = Instant::now() + WAIT;
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    while health(&stack).await["ai"]["state"] != "closed" {
        assert!(
            Instant::now() < deadline,
            "the breaker closed once the AI answered"
        );
        poll.tick().await;
    }
    assert!(
        stack
            .metrics
            .render()
            .contains("whatsapp_bridge_ai_breaker_open 0")
    );
    let third = answered_call(&stack, "brk-3", 808).await;
    turn(&third, &[300.0, 760.0]).await;
    third.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}
