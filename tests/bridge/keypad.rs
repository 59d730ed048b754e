//! The caller's keypresses (RFC 4733 telephone events on PT 126) over real WebRTC: each key
//! reaches the AI as one conversation item, stops the AI talking, and is answered once the
//! caller has finished; what the business says the keys mean is in the AI's instructions.

use std::time::Duration;

use sim::realtime_ai::{AiDoubleConfig, AiMode};
use sim::stack::{LocalStack, StackOptions};

use crate::support::*;

const MEANING: &str = "1 for opening hours, 2 to book a table; # ends a number.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_reach_the_ai_as_items_stop_its_speech_and_are_answered_once_entered() {
    let tone_hz = 440.0;
    let mut settings = no_busy_callbacks();
    settings.insert(
        bridge::config::KEYPAD_INSTRUCTIONS.to_owned(),
        MEANING.to_owned(),
    );
    let stack = LocalStack::start(StackOptions {
        max_calls: 5,
        ai: AiDoubleConfig {
            mode: AiMode::Tone {
                hz: tone_hz,
                duration: Duration::from_secs(8),
            },
            ..AiDoubleConfig::default()
        },
        greeting: Some("Say hello.".to_owned()),
        settings,
        ..StackOptions::default()
    })
    .await
    .expect("local stack starts");
    let call = answered_call(&stack, "keys", 60).await;

    // The business's meaning of the keys is in the AI's instructions.
    let session = stack.ai.sessions().into_iter().next().expect("AI session");
    let instructions = session.config["instructions"].as_str().unwrap_or_default();
    assert!(
        instructions.contains(MEANING) && instructions.contains("keypad"),
        "instructions: {instructions}"
    );

    // The AI greets with a long tone; a second into it the caller presses 1, 2 and #.
    assert!(
        call.wait_until(WAIT, |r| tone_span(&r.received, tone_hz)
            .is_some_and(|(start, end)| end - start >= SAMPLE_RATE as usize))
            .await,
        "the greeting plays"
    );
    call.press("12#").await;

    // Three items, one per key, in order; then the AI is asked to answer, once.
    let pressed = |sessions: &[sim::realtime_ai::SessionSnapshot]| -> Vec<String> {
        sessions
            .iter()
            .flat_map(|s| &s.client_events)
            .filter(|e| e.kind == "conversation.item.create")
            .filter_map(|e| e.json["item"]["content"][0]["text"].as_str())
            .filter(|text| text.contains("pressed"))
            .map(str::to_owned)
            .collect()
    };
    let answered = stack
        .ai
        .wait_until(WAIT, |sessions| {
            pressed(sessions).len() == 3
                && sessions
                    .iter()
                    .flat_map(|s| &s.client_events)
                    .filter(|e| e.kind == "response.create")
                    .count()
                    == 2
        })
        .await;
    let sessions = stack.ai.sessions();
    assert!(
        answered,
        "items and answer: {:?}",
        sessions
            .iter()
            .flat_map(|s| &s.client_events)
            .map(|e| &e.kind)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        pressed(&sessions),
        [
            "(The caller pressed 1 on the keypad.)",
            "(The caller pressed 2 on the keypad.)",
            "(The caller pressed # on the keypad.)",
        ]
    );
    let session = &sessions[0];
    let kinds: Vec<&str> = session
        .client_events
        .iter()
        .map(|e| e.kind.as_str())
        .filter(|kind| *kind != "session.update")
        .collect();
    let last_key = kinds
        .iter()
        .rposition(|kind| *kind == "conversation.item.create")
        .expect("items");
    assert_eq!(
        kinds.last(),
        Some(&"response.create"),
        "the answer is asked for after the last key: {kinds:?}"
    );
    assert!(kinds.len() - 1 > last_key);
    assert_eq!(
        session.early_response_creates, 0,
        "no response was asked for while another was active"
    );
    // The first key stopped the greeting and told the AI how much of it was heard.
    assert_eq!(session.truncations.len(), 1, "{:?}", session.truncations);
    assert!(session.truncations[0].accepted);
    assert!(session.truncations[0].audio_end_ms < 8_000);

    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    let metrics = stack.metrics.render();
    for key in ["1", "2", "#"] {
        let line = format!("whatsapp_bridge_keypresses_total{{key=\"{key}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing");
    }
    // The events took sequence numbers of the audio stream; none was taken for lost audio.
    assert!(metrics.contains("whatsapp_bridge_concealed_frames_total 0"));
    assert!(metrics.contains("whatsapp_bridge_fec_recovered_frames_total 0"));
    stack.stop().await.expect("stop");
}
