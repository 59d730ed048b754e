//! Shared helpers: a local stack per test, webhook bodies, audio checks.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bridge::ids::{CallId, PhoneNumber};
use sim::phone::{PhoneCall, post_webhook, unix_now};
use sim::realtime_ai::{AiDoubleConfig, AiMode};
use sim::stack::{APP_SECRET, LocalStack, StackOptions};
use sim::webhooks::{self, BusinessLine};
use testkit::audio;

pub const SAMPLE_RATE: u32 = 24_000;
pub const WAIT: Duration = Duration::from_secs(15);

/// A bridge whose AI echoes each caller turn and never greets.
pub async fn echo_stack(max_calls: usize) -> LocalStack {
    stack(max_calls, AiMode::Echo, None).await
}

/// A bridge for tests of calls and admission: callers refused at capacity are not called back
/// here (the busy callback has its own tests, in `reminders.rs`).
pub async fn stack(max_calls: usize, mode: AiMode, greeting: Option<&str>) -> LocalStack {
    LocalStack::start(StackOptions {
        max_calls,
        ai: AiDoubleConfig {
            mode,
            ..AiDoubleConfig::default()
        },
        greeting: greeting.map(str::to_owned),
        settings: no_busy_callbacks(),
        ..StackOptions::default()
    })
    .await
    .expect("local stack starts")
}

pub fn call_id(tag: &str) -> CallId {
    CallId::new(format!("wacid.TEST-{tag}-{}", rand::random::<u32>()))
}

pub fn user(n: u32) -> PhoneNumber {
    PhoneNumber::new(format!("4477009{:05}", n))
}

/// Dials and waits until the bridge accepted the call and media flows.
pub async fn answered_call(stack: &LocalStack, tag: &str, n: u32) -> PhoneCall {
    let id = call_id(tag);
    let call = PhoneCall::dial(stack.phone_settings(), id.clone(), user(n), "Test Caller")
        .await
        .expect("dial");
    assert_eq!(call.reply.status, 200, "webhook reply: {}", call.reply.body);
    assert!(
        stack.graph.wait_for(&id, "accept", WAIT).await.is_some(),
        "the bridge accepted the call"
    );
    assert!(
        call.wait_until(WAIT, |r| r.packets_received > 0).await,
        "audio reached the phone"
    );
    call
}

/// A connect webhook body for a call with a placeholder offer (for tests of the HTTP layer
/// that never get as far as media).
pub fn connect_body(call_id: &CallId, user: &PhoneNumber, offer: &str) -> String {
    webhooks::connect_offer(
        &BusinessLine::default(),
        call_id,
        user,
        "Test Caller",
        offer,
        unix_now(),
    )
}

pub fn terminate_body(call_id: &CallId, user: &PhoneNumber) -> String {
    webhooks::terminate(
        &BusinessLine::default(),
        call_id,
        user,
        unix_now(),
        None,
        false,
    )
}

pub async fn post_signed(stack: &LocalStack, body: String) -> (u16, String) {
    let reply = post_webhook(stack.http(), &stack.bridge_url, APP_SECRET, body)
        .await
        .expect("webhook POST");
    (reply.status, reply.body)
}

pub async fn health(stack: &LocalStack) -> serde_json::Value {
    stack
        .http()
        .get(format!("{}/health", stack.bridge_url))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON")
}

/// Whether the expected pitches appear in order in the recording.
pub fn pitches_in_order(samples: &[i16], candidates: &[f32], expected: &[f32]) -> bool {
    let segments = audio::tone_sequence(samples, SAMPLE_RATE, candidates, 40);
    sim::demo::contains_in_order(&segments, expected)
}

pub use testkit::fixtures::loopback_offer;

/// Where AI tone audio starts and ends in the phone's recording, in samples (10 ms windows).
pub fn tone_span(samples: &[i16], hz: f32) -> Option<(usize, usize)> {
    let window = (SAMPLE_RATE / 100) as usize;
    let toned: Vec<usize> = samples
        .chunks(window)
        .enumerate()
        .filter(|(_, chunk)| {
            chunk.len() == window
                && audio::rms(chunk) > 500.0
                && audio::goertzel(chunk, SAMPLE_RATE, hz) > 0.05
        })
        .map(|(i, _)| i)
        .collect();
    Some((*toned.first()? * window, (*toned.last()? + 1) * window))
}

/// Settings that turn the busy callback off.
pub fn no_busy_callbacks() -> std::collections::HashMap<String, String> {
    [(
        bridge::config::CALLBACK_ON_BUSY.to_owned(),
        "false".to_owned(),
    )]
    .into()
}

/// Everything logged in this test binary, at every level.
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A task, a reminder, a stated zone and a call started `at` with `turns` transcript turns, for
/// `phone`: a caller with something of everything the store keeps about them.
pub async fn seed_caller(
    store: &dyn bridge::store::Store,
    phone: &PhoneNumber,
    call: &str,
    at: chrono::DateTime<chrono::Utc>,
    turns: u32,
) -> CallId {
    use bridge::store::{CallLogDirection, CallRecord, NewTask, Role, TranscriptTurn};
    let task = NewTask {
        title: "Buy milk".into(),
        notes: None,
        due_at: None,
    };
    store.add_task(phone, task).await.expect("task");
    store
        .add_reminder(
            phone,
            "Dentist",
            chrono::Utc::now() + chrono::Duration::days(1),
        )
        .await
        .expect("reminder");
    store
        .set_caller_time_zone(phone, "Europe/London")
        .await
        .expect("zone");
    let id = CallId::new(call);
    let record = CallRecord::started(
        id.clone(),
        Some(phone.clone()),
        CallLogDirection::Inbound,
        at,
    );
    store.start_call(&record).await.expect("call");
    let turns: Vec<_> = (0..turns)
        .map(|seq| TranscriptTurn {
            call_id: id.clone(),
            seq,
            role: Role::User,
            text: format!("turn {seq}"),
            at,
        })
        .collect();
    store.append_turns(&turns).await.expect("turns");
    id
}
