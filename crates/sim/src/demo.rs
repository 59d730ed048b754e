//! `whatsapp-voice-bridge demo`: the bridge on loopback with both doubles, N simulated callers
//! at once. Each caller waits for the AI's greeting, talks over it (a barge-in), says a short
//! "sentence" of pitched syllables, checks that the AI's echo brings the same pitches back in
//! order, and hangs up. Then a reminder is set during a call and delivered by a call a few
//! seconds later ([`reminder`]). No credentials, no network. With `--replicas N`, N bridge processes
//! share a Redis behind an ingress that hands the webhooks to them in turn, so a call's webhooks
//! reach different replicas.

mod reminder;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::fleet::{FleetOptions, FleetStack};
use crate::graph_double::GraphDouble;
use crate::phone::{PhoneCall, PhoneSettings};
use crate::realtime_ai::{AiDoubleConfig, AiMode, RealtimeAiDouble};
use crate::stack::{LocalStack, StackOptions};
use bridge::config::{self, DEFAULT_GREETING};
use bridge::ids::{CallId, PhoneNumber};
use testkit::audio;

/// Pitches the callers speak with, far from each other and from the greeting tone.
pub const PITCHES_HZ: [f32; 6] = [250.0, 330.0, 550.0, 680.0, 820.0, 1000.0];
/// The AI double's greeting tone (its reply to a response.create without a user turn).
pub const GREETING_HZ: f32 = 440.0;
const SAMPLE_RATE: u32 = 24_000;
const SYLLABLE_MS: u32 = 260;
const GAP_MS: u32 = 120;
/// Audio level that counts as "hearing something" at the phone.
const HEARING_RMS: f64 = 300.0;

#[derive(clap::Args, Clone, Debug)]
pub struct DemoOptions {
    /// Number of simultaneous calls.
    #[arg(long, default_value_t = 3)]
    pub calls: usize,
    /// A 16-bit PCM WAV file each caller says after the check (optional; any rate, mono or stereo).
    #[arg(long)]
    pub wav: Option<PathBuf>,
    /// Bridge processes sharing a Redis (`--redis-url`), with the webhooks of each call handed to
    /// them in turn; 1: one bridge in this process, no Redis.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// The Redis the replicas share.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// What a demo caller needs of the set-up it calls: Meta's and the AI's doubles, and where its
/// webhooks go.
pub struct Line<'a> {
    pub graph: &'a GraphDouble,
    pub ai: &'a RealtimeAiDouble,
    pub phone: PhoneSettings,
}

/// What one call did.
#[derive(Clone, Debug)]
pub struct CallReport {
    pub index: usize,
    pub call_id: CallId,
    pub setup_ms: Option<u64>,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub barge_ins: usize,
    pub echo_ok: bool,
    pub end_reason: String,
    pub error: Option<String>,
}

impl CallReport {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.echo_ok
    }
}

/// The pitches caller `index` speaks: three distinct ones, different from the next caller's.
pub fn caller_pitches(index: usize) -> Vec<f32> {
    (0..3)
        .map(|k| PITCHES_HZ[(index + k * 2) % PITCHES_HZ.len()])
        .collect()
}

pub async fn run(options: DemoOptions) -> ExitCode {
    if options.replicas > 1 {
        return run_fleet(options).await;
    }
    let calls = options.calls.max(1);
    println!(
        "Starting the bridge on loopback with a simulated Meta and a simulated AI (echo mode)..."
    );
    let stack = match LocalStack::start(StackOptions {
        max_calls: calls.max(3),
        ai: AiDoubleConfig {
            mode: AiMode::Echo,
            ..AiDoubleConfig::default()
        },
        greeting: Some(DEFAULT_GREETING.to_owned()),
        ..StackOptions::default()
    })
    .await
    {
        Ok(stack) => stack,
        Err(err) => {
            eprintln!("could not start the local stack: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "Bridge at {}; placing {calls} simultaneous calls.",
        stack.bridge_url
    );
    let Ok(wav) = read_wav(&options) else {
        return ExitCode::FAILURE;
    };
    let line = Line {
        graph: &stack.graph,
        ai: &stack.ai,
        phone: stack.phone_settings(),
    };
    let started = Instant::now();
    let reports = futures_util::future::join_all(
        (0..calls).map(|index| echo_call(&line, index, wav.clone(), started)),
    )
    .await;
    let idle = stack.wait_idle(Duration::from_secs(10)).await;
    println!();
    let scene = reminder::run(&stack, started).await;
    let idle = idle && stack.wait_idle(Duration::from_secs(10)).await;
    let active = stack.registry.active_calls();
    if let Err(err) = stack.stop().await {
        eprintln!("stopping the local stack: {err:#}");
    }
    let code = print_reports(&reports, idle, active);
    match scene {
        Ok(line) => {
            println!("{line}");
            code
        }
        Err(err) => {
            println!("Reminder scene failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The fleet demo: `options.replicas` bridge processes sharing a Redis, the webhooks handed to
/// them in turn by an ingress (so a call's terminate often reaches a replica that does not own
/// it and is forwarded).
async fn run_fleet(options: DemoOptions) -> ExitCode {
    let calls = options.calls.max(1);
    println!(
        "Starting {} bridge processes sharing the Redis at {}, behind an ingress that hands the webhooks to them in turn, with a simulated Meta and a simulated AI (echo mode)...",
        options.replicas,
        redacted(&options.redis_url)
    );
    let exe = std::env::current_exe().ok();
    let fleet = match FleetStack::start(FleetOptions {
        replicas: options.replicas,
        max_calls: calls.max(3),
        redis_url: options.redis_url.clone(),
        exe,
        ai: AiDoubleConfig {
            mode: AiMode::Echo,
            ..AiDoubleConfig::default()
        },
        admin_token: None,
        log_dir: std::env::temp_dir().join(format!("wvb-demo-{}", rand::random::<u32>())),
        settings: vec![(
            config::ASSISTANT_GREETING.to_owned(),
            DEFAULT_GREETING.to_owned(),
        )],
    })
    .await
    {
        Ok(fleet) => fleet,
        Err(err) => {
            eprintln!(
                "could not start the fleet: {err:#} (is Redis running? `bash scripts/redis.sh` starts one)"
            );
            return ExitCode::FAILURE;
        }
    };
    for (name, replica) in fleet.names.iter().zip(&fleet.replicas) {
        println!("  {name} at {} (pid {})", replica.url, replica.pid);
    }
    println!(
        "Ingress at {}; placing {calls} simultaneous calls through it.",
        fleet.ingress_url
    );
    let Ok(wav) = read_wav(&options) else {
        return ExitCode::FAILURE;
    };
    let line = Line {
        graph: &fleet.graph,
        ai: &fleet.ai,
        phone: fleet.ingress_phone_settings(),
    };
    let started = Instant::now();
    let reports = futures_util::future::join_all(
        (0..calls).map(|index| echo_call(&line, index, wav.clone(), started)),
    )
    .await;
    let (mut idle, mut active) = (true, 0);
    println!();
    for (name, replica) in fleet.names.iter().zip(&fleet.replicas) {
        idle &= replica.wait_idle(Duration::from_secs(10)).await;
        let Ok(metrics) = replica.metrics().await else {
            continue;
        };
        let forwarded = |outcome| {
            metrics.value(
                "whatsapp_bridge_forwarded_events_total",
                &[("outcome", outcome)],
            ) as u64
        };
        active += metrics.value("whatsapp_bridge_active_calls", &[]) as usize;
        println!(
            "{name}: answered {} calls; forwarded {} events to other replicas, applied {} forwarded to it",
            metrics.value("whatsapp_bridge_calls_total", &[]) as u64,
            forwarded("sent"),
            forwarded("received"),
        );
    }
    fleet.stop().await;
    print_reports(&reports, idle, active)
}

/// The extra speech of `--wav`, at the PCM rate.
fn read_wav(options: &DemoOptions) -> Result<Option<Vec<i16>>, ()> {
    let Some(path) = &options.wav else {
        return Ok(None);
    };
    match audio::read_wav(path) {
        Ok((rate, samples)) => Ok(Some(audio::resample(&samples, rate, SAMPLE_RATE))),
        Err(err) => {
            eprintln!("cannot read {}: {err}", path.display());
            Err(())
        }
    }
}

/// A Redis URL without its password, for printing.
fn redacted(url: &str) -> String {
    match url.split_once('@') {
        Some((scheme_and_secret, host)) => {
            let scheme = scheme_and_secret.split("://").next().unwrap_or("redis");
            format!("{scheme}://…@{host}")
        }
        None => url.to_owned(),
    }
}

fn print_reports(reports: &[CallReport], idle: bool, active: usize) -> ExitCode {
    println!();
    println!(
        "{:<6} {:>9} {:>10} {:>10} {:>10} {:>6}  {:<20} result",
        "call", "setup ms", "frames in", "frames out", "barge-ins", "echo", "end reason"
    );
    for report in reports {
        println!(
            "{:<6} {:>9} {:>10} {:>10} {:>10} {:>6}  {:<20} {}",
            report.index + 1,
            report.setup_ms.map_or("-".into(), |ms| ms.to_string()),
            report.frames_sent,
            report.frames_received,
            report.barge_ins,
            if report.echo_ok { "yes" } else { "no" },
            report.end_reason,
            report.error.as_deref().unwrap_or("ok"),
        );
    }
    let failed = reports.iter().filter(|r| !r.ok()).count();
    println!();
    println!(
        "Round trip: {} of {} callers heard back what they said. Bridge idle afterwards: {} (active calls: {active}).",
        reports.len() - failed,
        reports.len(),
        if idle { "yes" } else { "no" }
    );
    if failed == 0 && idle {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One simulated caller, start to finish (see the module doc).
pub async fn echo_call(
    line: &Line<'_>,
    index: usize,
    extra_speech: Option<Vec<i16>>,
    started: Instant,
) -> CallReport {
    let call_id = CallId::new(format!("wacid.DEMO{index}-{}", rand::random::<u32>()));
    let mut report = CallReport {
        index,
        call_id: call_id.clone(),
        setup_ms: None,
        frames_sent: 0,
        frames_received: 0,
        barge_ins: 0,
        echo_ok: false,
        end_reason: "-".into(),
        error: None,
    };
    let progress = |what: &str| {
        println!(
            "[{:>6.2}s] call {}: {what}",
            started.elapsed().as_secs_f64(),
            index + 1
        );
    };
    let name = format!("Demo Caller {}", index + 1);
    let user = PhoneNumber::new(format!("4477009{:05}", 10000 + index));
    let dialled = Instant::now();
    progress("dialling");
    let call = match PhoneCall::dial(line.phone.clone(), call_id.clone(), user, &name).await {
        Ok(call) => call,
        Err(err) => {
            report.error = Some(format!("dial failed: {err:#}"));
            return report;
        }
    };
    if let Some(reason) = call.reply.refusal() {
        report.error = Some(format!("the bridge refused the call: {reason}"));
        return report;
    }
    if call.reply.status != 200 {
        report.error = Some(format!("webhook answered {}", call.reply.status));
        return report;
    }
    match line
        .graph
        .wait_for(&call_id, "accept", Duration::from_secs(10))
        .await
    {
        Some(accept) => {
            let ms = accept.responded_at.duration_since(dialled).as_millis() as u64;
            report.setup_ms = Some(ms);
            progress(&format!("answered ({ms} ms from dialling to accept)"));
        }
        None => {
            report.error = Some("never accepted".into());
            return report;
        }
    }
    let heard_greeting = call
        .wait_until(Duration::from_secs(10), |r| {
            heard_tone(&r.received, GREETING_HZ)
        })
        .await;
    if heard_greeting {
        progress("hears the AI's greeting, and talks over it");
    } else {
        progress("no greeting heard; speaking anyway");
    }
    let pitches = caller_pitches(index);
    let sentence = audio::speech_like(&pitches, SYLLABLE_MS, GAP_MS, SAMPLE_RATE);
    let heard_before = call.recording().lock().received.len();
    call.say(sentence).await;
    let expected: Vec<f32> = pitches.clone();
    let echo_ok = call
        .wait_until(Duration::from_secs(15), |r| {
            let tail = &r.received[heard_before.min(r.received.len())..];
            contains_in_order(
                &audio::tone_sequence(tail, SAMPLE_RATE, &PITCHES_HZ, 40),
                &expected,
            )
        })
        .await;
    report.echo_ok = echo_ok;
    progress(if echo_ok {
        "heard its own words come back from the AI"
    } else {
        "did NOT hear its words come back"
    });
    if let Some(speech) = extra_speech {
        call.say(speech).await;
        let until = call.speaking_until();
        let _ = call
            .wait_until(Duration::from_secs(60), move |_| Instant::now() >= until)
            .await;
    }
    {
        let recording = call.recording();
        let recording = recording.lock();
        report.frames_sent = recording.packets_sent;
        report.frames_received = recording.packets_received;
    }
    report.barge_ins = line
        .ai
        .sessions()
        .iter()
        .filter(|s| {
            s.config
                .get("instructions")
                .and_then(|v| v.as_str())
                .is_some_and(|text| text.contains(&name))
        })
        .map(|s| s.truncations.iter().filter(|t| t.accepted).count())
        .sum();
    match call.hang_up().await {
        Ok(reply) if reply.status == 200 => {
            report.end_reason = "remote_terminated".into();
            progress("hung up");
        }
        Ok(reply) => report.error = Some(format!("terminate webhook answered {}", reply.status)),
        Err(err) => report.error = Some(format!("hang-up failed: {err:#}")),
    }
    report
}

/// Whether the recording holds at least 200 ms of `hz`.
fn heard_tone(received: &[i16], hz: f32) -> bool {
    let window = (SAMPLE_RATE / 10) as usize;
    received
        .chunks(window)
        .filter(|chunk| {
            chunk.len() == window
                && audio::rms(chunk) > HEARING_RMS
                && audio::dominant_frequency(chunk, SAMPLE_RATE, &[hz, 250.0, 1000.0]) == Some(hz)
        })
        .count()
        >= 2
}

/// Whether `expected` appears, in order, among the recognised tones.
pub fn contains_in_order(segments: &[(u32, f32)], expected: &[f32]) -> bool {
    let mut wanted = expected.iter().peekable();
    for (_, hz) in segments {
        if wanted.peek().is_some_and(|&&w| (w - hz).abs() < 1.0) {
            wanted.next();
        }
    }
    wanted.peek().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_get_distinct_pitch_sequences() {
        assert_ne!(caller_pitches(0), caller_pitches(1));
        assert!(caller_pitches(0).iter().all(|p| *p != GREETING_HZ));
    }

    #[test]
    fn an_expected_sequence_is_found_in_order_only() {
        let segments = [(0, 250.0), (300, 440.0), (600, 550.0), (900, 820.0)];
        assert!(contains_in_order(&segments, &[250.0, 550.0, 820.0]));
        assert!(!contains_in_order(&segments, &[550.0, 250.0]));
    }
}
