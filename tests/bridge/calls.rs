//! Whole calls through real WebRTC on loopback: audio both ways, the Meta signalling order and
//! SDP rules, barge-in; calls the bridge places, played by the user's phone (the callee):
//! picked up, declined, and placed once the user granted permission.

use std::time::{Duration, Instant};

use bridge::call::calls::PlaceError;
use bridge::ids::{CallId, PhoneNumber};
use bridge::whatsapp::graph::{GraphClient, GraphConfig, GraphErrorKind};
use bridge::whatsapp::permissions::PermissionStatus;
use bridge::whatsapp::sdp;
use secrecy::SecretString;
use sim::callee::{Callee, CalleeBehaviour, PermissionAnswer};
use sim::graph_double::GraphDoubleConfig;
use sim::realtime_ai::AiMode;
use sim::stack::LocalStack;
use testkit::audio;

use crate::support::*;

const PITCHES: [f32; 4] = [300.0, 520.0, 760.0, 1000.0];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_speech_reaches_the_ai_and_its_echo_comes_back_after_a_clean_meta_handshake() {
    let stack = echo_stack(5).await;
    let call = answered_call(&stack, "echo", 10).await;

    // Signalling: pre_accept, then accept, with one valid answer.
    let actions = stack.graph.actions_for(&call.call_id);
    let names: Vec<&str> = actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(names, ["pre_accept", "accept"]);
    let offer = stack
        .graph
        .offer_for(&call.call_id)
        .expect("the phone registered its offer");
    let answer = actions[0].sdp.clone().expect("answer SDP");
    assert_eq!(
        actions[1].sdp.as_deref(),
        Some(answer.as_str()),
        "accept SDP identical"
    );
    sdp::validate_answer(&offer, &answer).expect("answer follows Meta's rules");
    assert_eq!(answer.matches("a=fingerprint:").count(), 1);
    assert!(answer.contains("a=fingerprint:sha-256 "));
    assert!(answer.contains("a=setup:active\r\n"));
    // No RTP before accept returned.
    let first_rtp = call.recording().lock().first_rtp_at.expect("RTP arrived");
    assert!(first_rtp >= actions[1].responded_at, "RTP before accept");

    // The caller speaks three pitched syllables.
    let expected = [300.0, 760.0, 520.0];
    let speech = audio::speech_like(&expected, 260, 120, SAMPLE_RATE);
    let heard_before = call.recording().lock().received.len();
    call.say(speech).await;

    // The echo comes back to the phone with the same pitches in order.
    let echoed = call
        .wait_until(WAIT, |r| {
            pitches_in_order(&r.received[heard_before..], &PITCHES, &expected)
        })
        .await;
    assert!(echoed, "the AI's echo reached the phone recognisably");

    // The AI heard 24 kHz PCM carrying the same pitches.
    let session = stack
        .ai
        .sessions()
        .into_iter()
        .next()
        .expect("an AI session");
    assert_eq!(session.appended_before_configured_ms, 0);
    assert!(pitches_in_order(&session.input_audio, &PITCHES, &expected));

    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    let metrics = stack.metrics.render();
    assert!(metrics.contains(
        "whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"remote_terminated\"} 1"
    ));
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_talking_over_the_ai_stops_its_audio_and_truncates_what_was_not_heard() {
    let tone_hz = 440.0;
    let stack = stack(
        5,
        AiMode::Tone {
            hz: tone_hz,
            duration: Duration::from_secs(8),
        },
        Some("Say hello."),
    )
    .await;
    let call = answered_call(&stack, "barge", 20).await;

    // The AI greets with a long tone; after about a second of it the caller talks.
    assert!(
        call.wait_until(WAIT, |r| tone_span(&r.received, tone_hz)
            .is_some_and(|(start, end)| end - start >= SAMPLE_RATE as usize))
            .await,
        "the greeting plays"
    );
    call.say(audio::speech_like(&[300.0, 760.0], 300, 100, SAMPLE_RATE))
        .await;

    // The bridge flushes the queue and truncates the item at what was played.
    let truncated = stack
        .ai
        .wait_until(WAIT, |sessions| {
            sessions.iter().any(|s| !s.truncations.is_empty())
        })
        .await;
    assert!(truncated, "no truncate reached the AI");
    let session = stack.ai.sessions().into_iter().next().expect("session");
    assert_eq!(session.truncations.len(), 1);
    let truncation = session.truncations[0].clone();
    assert!(
        truncation.accepted,
        "the AI accepted the truncate: {truncation:?}"
    );
    // Let anything still in flight arrive, then measure what the phone got.
    let settled = truncation.at + Duration::from_millis(300);
    call.wait_until(WAIT, |_| Instant::now() >= settled).await;
    let (heard_ms, last_tone_arrival) = {
        let recording = call.recording();
        let recording = recording.lock();
        let (start, end) = tone_span(&recording.received, tone_hz).expect("tone heard");
        let last = recording
            .arrivals
            .iter()
            .filter(|(_, offset)| *offset < end)
            .map(|(at, _)| *at)
            .max()
            .expect("arrivals");
        (((end - start) / (SAMPLE_RATE as usize / 1000)) as i64, last)
    };
    let truncated_ms = truncation.audio_end_ms as i64;
    assert!(
        (heard_ms - truncated_ms).abs() <= 40,
        "phone heard {heard_ms} ms, truncate says {truncated_ms} ms"
    );
    // The tone stopped at the phone within 100 ms of the bridge learning of the speech (the
    // truncate is sent right after the flush).
    assert!(
        last_tone_arrival <= truncation.at + Duration::from_millis(100),
        "tone went on for {:?} after the truncate",
        last_tone_arrival.saturating_duration_since(truncation.at)
    );
    assert!(truncated_ms < 8000, "the tone was cut, not played out");
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert!(
        stack
            .metrics
            .render()
            .contains("whatsapp_bridge_barge_ins_total 1")
    );
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_greeting_waits_for_the_lead_of_steady_silence_then_plays_whole() {
    let tone_hz = 440.0;
    let stack = stack(
        5,
        AiMode::Tone {
            hz: tone_hz,
            duration: Duration::from_millis(600),
        },
        Some("Say hello."),
    )
    .await;
    let call = answered_call(&stack, "lead", 25).await;
    let heard = call
        .wait_until(WAIT, |r| {
            tone_span(&r.received, tone_hz).is_some_and(|(start, end)| end - start >= 14_000)
        })
        .await;
    assert!(heard, "the whole greeting reached the phone");
    let received = call.recording().lock().received.clone();
    let (start, _) = tone_span(&received, tone_hz).expect("tone");
    // The phone's recording starts at the bridge's first packet, one 20 ms frame per packet.
    let lead = bridge::config::DEFAULT_GREETING_LEAD;
    let per_ms = SAMPLE_RATE as usize / 1000;
    assert!(
        start + 20 * per_ms >= lead.as_millis() as usize * per_ms,
        "the greeting began {} ms after the first packet",
        start / per_ms
    );
    assert!(
        audio::rms(&received[..start.saturating_sub(per_ms * 20)]) < 50.0,
        "silence before it"
    );
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_places_a_call_and_the_ai_opens_it_once_the_user_picks_up() {
    let stack = stack(
        5,
        AiMode::Tone {
            hz: 440.0,
            duration: Duration::from_millis(800),
        },
        None,
    )
    .await;
    let user = user(40);
    let call_id = stack
        .calls
        .place(
            &user,
            "Remind the user of their 3 pm appointment.",
            "Reminder call.",
        )
        .await
        .expect("call placed");
    let connect = stack
        .graph
        .wait_for(&call_id, "connect", WAIT)
        .await
        .expect("connect sent");
    let offer = connect.sdp.expect("offer SDP");
    sdp::validate_offer(&offer).expect("the offer follows Meta's rules");
    assert!(offer.contains("a=setup:actpass"));
    assert_eq!(stack.registry.active_calls(), 1);

    let call = sim::phone::PhoneCall::pick_up(
        stack.phone_settings(),
        call_id.clone(),
        user.clone(),
        &offer,
    )
    .await
    .expect("picked up");
    // The AI speaks first: its opening (the double's tone) reaches the phone.
    assert!(
        call.wait_until(WAIT, |r| tone_span(&r.received, 440.0)
            .is_some_and(|(start, end)| end - start >= 12_000))
            .await,
        "the AI's opening reached the callee"
    );
    let session = stack.ai.sessions().into_iter().next().expect("AI session");
    let opening = session
        .client_events
        .iter()
        .find(|e| e.kind == "response.create")
        .expect("the bridge asked the AI to open the call");
    assert!(opening.json.to_string().contains("3 pm appointment"));

    // Busy: a second call to the same user is refused while this one is live.
    assert!(stack.calls.place(&user, "x", "y").await.is_err());

    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert!(stack.metrics.render().contains(
        "whatsapp_bridge_calls_total{direction=\"outbound\",outcome=\"remote_terminated\"} 1"
    ));
    stack.stop().await.expect("stop");
}

/// A bridge whose AI opens every call with a 440 Hz tone.
async fn tone_stack() -> LocalStack {
    stack(
        5,
        AiMode::Tone {
            hz: 440.0,
            duration: Duration::from_millis(800),
        },
        None,
    )
    .await
}

/// The kinds of webhooks the callee sent for a call, each answered 200 by the bridge.
fn sent_kinds(callee: &Callee, call_id: &CallId) -> Vec<String> {
    let sent = callee.sent(call_id);
    assert!(sent.iter().all(|s| s.status == 200), "{sent:?}");
    sent.into_iter().map(|s| s.kind).collect()
}

/// The core's Graph client, as the bridge's scheduler has it, against the stack's double.
fn graph_client(stack: &LocalStack) -> GraphClient {
    let config = GraphDoubleConfig::default();
    GraphClient::new(GraphConfig {
        base_url: stack.graph.base_url(),
        version: config.version,
        phone_number_id: config.phone_number_id,
        access_token: SecretString::from(config.access_token),
        timeout: WAIT,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_call_the_callee_picks_up_carries_the_ai_to_the_users_phone() {
    let stack = tone_stack().await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let user = user(41);
    let call_id = stack
        .calls
        .place(
            &user,
            "Remind the user of their 3 pm appointment.",
            "Reminder call.",
        )
        .await
        .expect("call placed");

    let answered = callee
        .next_answered(WAIT)
        .await
        .expect("the user picked up");
    assert_eq!((&answered.call_id, &answered.user), (&call_id, &user));
    assert!(
        answered
            .call
            .wait_until(WAIT, |r| tone_span(&r.received, 440.0)
                .is_some_and(|(start, end)| end - start >= 12_000))
            .await,
        "the AI's opening reached the user's phone"
    );
    assert_eq!(
        sent_kinds(&callee, &call_id),
        ["connect", "RINGING", "ACCEPTED"]
    );
    // Meta counted a connected call, and the user is in it.
    let state = stack.graph.user(&user);
    assert_eq!((state.connected_calls, state.unanswered_in_a_row), (1, 0));
    assert_eq!(stack.graph.active_call(&user), Some(call_id.clone()));

    answered.call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert_eq!(stack.graph.active_call(&user), None);
    assert!(stack.metrics.render().contains(
        "whatsapp_bridge_calls_total{direction=\"outbound\",outcome=\"remote_terminated\"} 1"
    ));
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_call_ends_the_bridges_call_and_counts_as_unanswered() {
    let stack = tone_stack().await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let user = user(42);
    callee.set_behaviour(&user, CalleeBehaviour::Decline);
    let call_id = stack
        .calls
        .place(&user, "Remind the user of their 3 pm appointment.", "")
        .await
        .expect("call placed");

    assert!(
        callee.wait_finished(&call_id, WAIT).await,
        "the user declined"
    );
    // Meta's media answer at dial time, then the decline and an unanswered terminate.
    assert_eq!(
        sent_kinds(&callee, &call_id),
        ["connect", "RINGING", "REJECTED", "terminate"]
    );
    assert!(stack.wait_idle(WAIT).await, "the bridge's call ended");
    assert!(
        stack
            .metrics
            .render()
            .contains("whatsapp_bridge_calls_total{direction=\"outbound\",outcome=\"declined\"} 1")
    );
    // Meta ended it, so the bridge had nothing to terminate; the AI never spoke.
    let actions: Vec<String> = stack
        .graph
        .actions_for(&call_id)
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(actions, ["connect"]);
    for session in stack.ai.sessions() {
        assert!(
            session
                .client_events
                .iter()
                .all(|e| e.kind != "response.create"),
            "the AI was asked to speak to nobody"
        );
    }
    assert!(
        callee
            .next_answered(Duration::from_millis(100))
            .await
            .is_none()
    );
    // Meta counted it against the permission, which survives one decline.
    let state = stack.graph.user(&user);
    assert_eq!((state.unanswered_in_a_row, state.connected_calls), (1, 0));
    assert_eq!(state.permission, PermissionStatus::Temporary);
    assert_eq!(stack.graph.active_call(&user), None);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_rings_out_and_counts_as_unanswered() {
    let stack = tone_stack().await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let user = user(43);
    callee.set_behaviour(
        &user,
        CalleeBehaviour::NoAnswer {
            ring: Duration::from_millis(300),
        },
    );
    let call_id = stack
        .calls
        .place(&user, "Remind the user.", "")
        .await
        .expect("call placed");
    assert!(callee.wait_finished(&call_id, WAIT).await);
    assert_eq!(
        sent_kinds(&callee, &call_id),
        ["connect", "RINGING", "terminate"]
    );
    assert!(stack.wait_idle(WAIT).await, "the bridge's call ended");
    assert_eq!(stack.graph.user(&user).unanswered_in_a_row, 1);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_writes_and_accepts_the_permission_request_can_then_be_called() {
    let stack = tone_stack().await;
    let callee = Callee::start(&stack.graph, stack.phone_settings());
    let client = graph_client(&stack);
    let user: PhoneNumber = user(44);
    stack
        .graph
        .set_permission(&user, PermissionStatus::NoPermission);
    callee.set_permission_answer(&user, PermissionAnswer::Accept);

    // Without permission Meta refuses the call; nothing rings.
    let refused = stack.calls.place(&user, "Remind the user.", "").await;
    assert!(
        matches!(&refused, Err(PlaceError::Graph(e)) if e.kind() == Some(GraphErrorKind::NoCallPermission)),
        "{refused:?}"
    );
    assert!(stack.wait_idle(WAIT).await);
    // Asking needs the customer-service window, which the user's message opens.
    let body = "May we call you about your 3 pm appointment?";
    let error = client
        .request_call_permission(&user, body)
        .await
        .expect_err("outside the window");
    assert_eq!(
        error.kind(),
        Some(GraphErrorKind::OutsideCustomerServiceWindow)
    );
    callee
        .user_writes(&user, "Hi, about my appointment")
        .await
        .expect("the bridge took the message");
    let request_id = client
        .request_call_permission(&user, body)
        .await
        .expect("request sent");

    let reply = callee
        .wait_permission_reply(&user, WAIT)
        .await
        .expect("the user answered");
    assert!(reply.accepted);
    assert_eq!(reply.request_id, request_id);
    assert_eq!(reply.reply.status, 200, "{}", reply.reply.body);
    let permission = client.call_permission(&user).await.expect("read");
    assert_eq!(permission.status, PermissionStatus::Temporary);
    assert!(permission.can_start_call);

    let call_id = stack
        .calls
        .place(&user, "Remind the user of their 3 pm appointment.", "")
        .await
        .expect("call placed");
    let answered = callee.next_answered(WAIT).await.expect("picked up");
    assert_eq!(answered.call_id, call_id);
    answered.call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

/// The `response.create` events the bridge sent in the call's AI session.
fn response_creates(stack: &LocalStack) -> Vec<serde_json::Value> {
    stack
        .ai
        .sessions()
        .into_iter()
        .flat_map(|s| s.client_events)
        .filter(|e| e.kind == "response.create")
        .map(|e| e.json)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_ai_response_is_asked_for_again_then_apologised_for() {
    let stack = stack(
        2,
        AiMode::Tone {
            hz: 440.0,
            duration: Duration::from_millis(600),
        },
        Some("Greet the caller."),
    )
    .await;
    // The greeting fails once: the bridge asks again, and the caller hears it.
    stack.ai.fail_next_responses(1);
    let call = answered_call(&stack, "failed-once", 700).await;
    assert!(
        call.wait_until(WAIT, |r| tone_span(&r.received, 440.0).is_some())
            .await,
        "the greeting was heard after the retry"
    );
    let creates = response_creates(&stack);
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert_eq!(
        creates[0], creates[1],
        "the retry asks for the same greeting"
    );
    let metrics = stack.metrics.render();
    assert!(metrics.contains("whatsapp_bridge_ai_failed_responses_total{action=\"retried\"} 1"));
    // The provider's rate limits (the double's `rate_limits.updated`) are exported.
    assert!(
        metrics.contains("whatsapp_bridge_ai_rate_limit{name=\"tokens\",value=\"limit\"} 40000"),
        "{metrics}"
    );
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);

    // Twice: the retry fails too, and the AI is asked to apologise, which the caller hears.
    stack.ai.fail_next_responses(2);
    let call = answered_call(&stack, "failed-twice", 701).await;
    assert!(
        call.wait_until(WAIT, |r| tone_span(&r.received, 440.0).is_some())
            .await,
        "the apology was heard"
    );
    let creates = response_creates(&stack);
    assert_eq!(creates.len(), 5, "{creates:?}");
    assert!(creates[4].to_string().contains("Apologise"), "{creates:?}");
    let metrics = stack.metrics.render();
    assert!(metrics.contains("whatsapp_bridge_ai_failed_responses_total{action=\"apologised\"} 1"));
    call.hang_up().await.expect("hang up");
    stack.stop().await.expect("stop");
}

/// A bridge whose AI answers every response with 400 ms of 440 Hz, with one setting changed.
async fn short_tone_stack(key: &str, value: &str) -> LocalStack {
    LocalStack::start(sim::stack::StackOptions {
        max_calls: 2,
        ai: sim::realtime_ai::AiDoubleConfig {
            mode: AiMode::Tone {
                hz: 440.0,
                duration: Duration::from_millis(400),
            },
            ..Default::default()
        },
        settings: [(key.to_owned(), value.to_owned())].into(),
        ..Default::default()
    })
    .await
    .expect("stack")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_call_is_prompted_then_ended_after_a_goodbye() {
    let stack = short_tone_stack(bridge::config::IDLE_TIMEOUT, "1s").await;
    // The caller never says a word.
    let call = answered_call(&stack, "idle", 702).await;
    let started = Instant::now();
    let terminate = stack
        .graph
        .wait_for(&call.call_id, "terminate", WAIT)
        .await
        .expect("the silent call was ended");
    // A prompt after 1 s of silence, then, 1 s after it played, the goodbye; then the end.
    assert!(started.elapsed() >= Duration::from_secs(2));
    let creates = response_creates(&stack);
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert!(creates[0].to_string().contains("still there"));
    assert!(creates[1].to_string().contains("goodbye"));
    // Both were heard: two separate 440 Hz spans, the goodbye in full before the terminate.
    let recording = call.recording();
    let toned_windows = recording
        .lock()
        .received
        .chunks(240)
        .filter(|w| {
            w.len() == 240 && audio::rms(w) > 500.0 && audio::goertzel(w, SAMPLE_RATE, 440.0) > 0.05
        })
        .count();
    assert!(
        toned_windows >= 70,
        "{toned_windows} windows of the two 400 ms tones"
    );
    assert!(terminate.received_at >= started);
    assert!(stack.wait_idle(WAIT).await);
    assert!(
        stack.metrics.render().contains(
            "whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"idle_timeout\"} 1"
        )
    );
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_told_before_the_maximum_duration_ends_the_call() {
    let stack = short_tone_stack(bridge::config::MAX_CALL_DURATION, "3s").await;
    let call = answered_call(&stack, "max-duration", 703).await;
    assert!(
        stack
            .graph
            .wait_for(&call.call_id, "terminate", WAIT)
            .await
            .is_some(),
        "the call was ended at its maximum duration"
    );
    // A third of the maximum before the end (1 s here), the AI was asked to say so, and the
    // caller heard it.
    let creates = response_creates(&stack);
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert!(creates[0].to_string().contains("time limit"));
    assert!(
        call.wait_until(WAIT, |r| tone_span(&r.received, 440.0).is_some())
            .await
    );
    assert!(stack.wait_idle(WAIT).await);
    assert!(
        stack.metrics.render().contains(
            "whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"max_duration\"} 1"
        )
    );
    stack.stop().await.expect("stop");
}

/// What the bridge sent Meta for a call: `Ok(answer)` (its pre_accept SDP) or `Err(())` for a
/// reject without any pre_accept or accept; panics on anything else, or if nothing came.
async fn answered_or_rejected(stack: &LocalStack, id: &CallId) -> Result<String, ()> {
    let mut actions = stack.graph.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let recorded = stack.graph.actions_for(id);
        if let Some(pre_accept) = recorded.iter().find(|a| a.action == "pre_accept") {
            return Ok(pre_accept
                .sdp
                .clone()
                .expect("pre_accept carries the answer"));
        }
        if recorded.iter().any(|a| a.action == "reject") {
            let names: Vec<&str> = recorded.iter().map(|a| a.action.as_str()).collect();
            assert_eq!(names, ["reject"], "a reject and nothing else");
            return Err(());
        }
        assert!(
            tokio::time::timeout_at(deadline, actions.recv())
                .await
                .is_ok(),
            "neither answered nor rejected: {recorded:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_the_bridge_cannot_answer_with_one_opus_section_is_rejected_never_answered_without_an_m_line()
 {
    let stack = echo_stack(5).await;
    let offer = loopback_offer();
    let unusable = [
        (
            "no opus",
            offer.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 G722/8000"),
        ),
        ("no audio m= line", offer.replace("m=audio ", "m=video ")),
        (
            "port 0 m= line",
            offer.replace("m=audio 3484 ", "m=audio 0 "),
        ),
        ("inactive", offer.replace("a=sendrecv", "a=inactive")),
    ];
    for (n, (case, offer)) in unusable.iter().enumerate() {
        assert_ne!(offer, &loopback_offer(), "{case}: the offer was changed");
        let id = call_id(&format!("unusable-{n}"));
        let (status, _) =
            post_signed(&stack, connect_body(&id, &user(200 + n as u32), offer)).await;
        assert_eq!(status, 200, "{case}");
        assert_eq!(answered_or_rejected(&stack, &id).await, Err(()), "{case}");
    }
    // Broken but answerable, or refused: never an answer without its one opus audio section.
    let odd = [
        (
            "broken c= line",
            offer.replace("c=IN IP4 127.0.0.1", "c=IN IP4"),
        ),
        (
            "garbage c= line",
            offer.replace("c=IN IP4 127.0.0.1", "c=garbage"),
        ),
    ];
    let mut refused = 0;
    for (n, (case, offer)) in odd.iter().enumerate() {
        assert_ne!(offer, &loopback_offer(), "{case}: the offer was changed");
        let id = call_id(&format!("odd-{n}"));
        let (status, _) =
            post_signed(&stack, connect_body(&id, &user(220 + n as u32), offer)).await;
        assert_eq!(status, 200, "{case}");
        match answered_or_rejected(&stack, &id).await {
            Ok(answer) => {
                let info = sdp::inspect(&answer).expect("the answer carries one opus section");
                assert_eq!(info.mid, "audio", "{case}");
                post_signed(&stack, terminate_body(&id, &user(220 + n as u32))).await;
            }
            Err(()) => {
                refused += 1;
            }
        }
    }
    assert!(stack.wait_idle(WAIT).await);
    let metrics = stack.metrics.render();
    let expected = format!(
        "whatsapp_bridge_calls_total{{direction=\"inbound\",outcome=\"setup_failed\"}} {}",
        4 + refused
    );
    assert!(metrics.contains(&expected), "{expected}\n{metrics}");
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_without_a_direction_attribute_is_answered_as_sendrecv() {
    let stack = echo_stack(5).await;
    let offer = loopback_offer();
    for (n, offer) in [
        offer.replace("a=sendrecv\r\n", ""),
        offer.replace("a=sendrecv", "a=sndrecv"),
    ]
    .iter()
    .enumerate()
    {
        assert_ne!(offer, &loopback_offer(), "the offer was changed");
        let id = call_id(&format!("no-direction-{n}"));
        let (status, _) =
            post_signed(&stack, connect_body(&id, &user(210 + n as u32), offer)).await;
        assert_eq!(status, 200);
        let answer = answered_or_rejected(&stack, &id)
            .await
            .expect("answered, not rejected");
        assert_eq!(answer.matches("m=audio ").count(), 1, "{answer}");
        assert!(answer.contains("a=sendrecv\r\n"), "{answer}");
        post_signed(&stack, terminate_body(&id, &user(210 + n as u32))).await;
    }
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}
