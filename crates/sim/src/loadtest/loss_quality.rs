//! `loadtest --loss-quality --clip speech.wav`: calls through a bridge in this process whose
//! phones lose packets on the wire (both directions alike, random and in bursts), with the AI
//! double speaking the clip as every response. For each call it writes what each direction
//! carried, for PESQ scoring by scripts/loss_calls.py: the uplink as the AI received it, the
//! greeting and the answer as the phone played them, and the bridge's loss figures (CSV).
//!
//! A call: the AI greets (the clip; the call's first second, before any receiver report), the
//! phone listens to the end, says the clip, and listens to the AI's answer (the clip again,
//! after the phone's reports have had the whole call so far to turn FEC on).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::loss::{CallLoss, LossProfile};
use crate::phone::{PhoneCall, Recording};
use crate::realtime_ai::{AiDoubleConfig, AiMode, SessionSnapshot};
use crate::stack::{LocalStack, StackOptions};
use bridge::ids::{CallId, PhoneNumber};
use bridge::media::codec::carries_fec;
use testkit::audio;

/// PCM rate of the phone's recording, of the AI's audio and of the files written.
const SAMPLE_RATE: u32 = 24_000;
/// Audio kept after each clip-long window, for the scorer's alignment to find the whole clip.
const MARGIN: usize = SAMPLE_RATE as usize;
/// Bound on each wait of a call: connecting, a response starting, audio arriving.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the phone's last spoken sample its final turn has surely ended (the VAD's
/// 500 ms of silence) and the AI's answer to it begun.
const ANSWER_AFTER: Duration = Duration::from_secs(2);

/// The loss conditions measured, in order: (percent lost each direction, mean burst).
const LEVELS: [(f64, f64); 5] = [(0.0, 1.0), (2.0, 1.0), (5.0, 1.0), (10.0, 1.0), (5.0, 3.0)];

/// The columns of `calls.csv`, one row per call.
const CSV_HEADER: &str = "level,loss_percent,mean_burst,call,up_lost,up_sent,down_lost,down_arrived,\
bridge_fec_recovered,bridge_concealed,fec_switch_ons,fec_on_at_answer,greeting_fec_packets,\
greeting_packets,answer_fec_packets,answer_packets,phone_fec_recovered,phone_concealed";

/// The bridge's counters a call moves.
#[derive(Clone, Copy, Debug, Default)]
struct BridgeCounts {
    fec_recovered: f64,
    concealed: f64,
    fec_switch_ons: f64,
}

impl BridgeCounts {
    fn read(stack: &LocalStack) -> Self {
        let text = stack.metrics.render();
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        Self {
            fec_recovered: value("whatsapp_bridge_fec_recovered_frames_total"),
            concealed: value("whatsapp_bridge_concealed_frames_total"),
            fec_switch_ons: value("whatsapp_bridge_fec_switch_ons_total"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            fec_recovered: self.fec_recovered - before.fec_recovered,
            concealed: self.concealed - before.concealed,
            fec_switch_ons: self.fec_switch_ons - before.fec_switch_ons,
        }
    }
}

/// Runs every level's calls, one after another, and writes the files into `out`.
pub async fn run(clip_path: &Path, calls: usize, out: &Path) -> anyhow::Result<ExitCode> {
    let (rate, samples) = audio::read_wav(clip_path)
        .map_err(|err| anyhow::anyhow!("cannot read {}: {err}", clip_path.display()))?;
    let clip: Arc<[i16]> = audio::resample(&samples, rate, SAMPLE_RATE).into();
    anyhow::ensure!(!clip.is_empty(), "{} holds no audio", clip_path.display());
    let dir = out.join("loss-calls");
    std::fs::create_dir_all(&dir)?;
    audio::write_wav(&dir.join("clip.wav"), SAMPLE_RATE, &clip)?;
    let stack = LocalStack::start(StackOptions {
        max_calls: 2,
        ai: AiDoubleConfig {
            mode: AiMode::Speech(clip.clone()),
            ..AiDoubleConfig::default()
        },
        greeting: Some("Greet the caller.".into()),
        ..StackOptions::default()
    })
    .await?;
    let mut csv = std::fs::File::create(dir.join("calls.csv"))?;
    writeln!(csv, "{CSV_HEADER}")?;
    println!(
        "Loss quality: a {:.1} s clip, {calls} calls per level, files in {}.",
        clip.len() as f64 / f64::from(SAMPLE_RATE),
        dir.display()
    );
    let mut key = 0u32;
    for (percent, burst) in LEVELS {
        let profile = LossProfile {
            rate: percent / 100.0,
            mean_burst: burst,
        };
        let level = if burst > 1.0 {
            format!("burst{percent}x{burst}")
        } else {
            format!("random{percent}")
        };
        for n in 0..calls {
            key += 1;
            let row = measure_call(
                &stack,
                &clip,
                profile,
                key,
                &dir.join(format!("{level}_{n}")),
            )
            .await?;
            println!("{level} call {n}: {row}");
            writeln!(csv, "{level},{percent},{burst},{n},{row}")?;
        }
    }
    stack.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// One call at `profile` loss each direction; writes `<prefix>_{uplink,greeting,answer}.wav`
/// and returns its CSV fields after the level's.
async fn measure_call(
    stack: &LocalStack,
    clip: &[i16],
    profile: LossProfile,
    key: u32,
    prefix: &Path,
) -> anyhow::Result<String> {
    stack.ai.forget_closed_sessions();
    let before = BridgeCounts::read(stack);
    let mut settings = stack.phone_settings();
    settings.loss = CallLoss {
        uplink: profile,
        downlink: profile,
    };
    let call_id = CallId::new(format!("wacid.LOSSQ{key}-{:08x}", rand::random::<u32>()));
    let user = PhoneNumber::new(format!("4477008{key:05}"));
    let call = PhoneCall::dial(settings, call_id, user, "Loss Caller").await?;
    anyhow::ensure!(
        call.reply.refusal().is_none() && call.wait_connected(STEP_TIMEOUT).await,
        "the call did not connect: {}",
        call.reply.body
    );

    // The greeting, played to its end before the phone speaks (so it is not barged in on).
    let greeting_at = response_after(stack, None).await?;
    let greeting = played_window(&call, greeting_at, clip.len()).await?;

    let say_at = Instant::now();
    call.say(clip.to_vec()).await;
    let spoken = call.speaking_until() + ANSWER_AFTER;
    anyhow::ensure!(
        call.wait_until(STEP_TIMEOUT, |r| r
            .arrivals
            .last()
            .is_some_and(|(at, _)| *at >= spoken))
            .await,
        "the phone's audio stopped while it spoke"
    );
    // The answer to the phone's last turn (an earlier turn's, cut short by the phone speaking on,
    // is not it).
    let answer_at = response_after(stack, Some(say_at)).await?;
    let fec_on = stack
        .metrics
        .render()
        .lines()
        .any(|line| line == "whatsapp_bridge_calls_sending_fec 1");
    let answer = played_window(&call, answer_at, clip.len()).await?;

    let session = newest_session(stack).ok_or_else(|| anyhow::anyhow!("no AI session"))?;
    audio::write_wav(
        &path_with(prefix, "uplink"),
        SAMPLE_RATE,
        &session.input_audio,
    )?;
    let (greeting_fec, greeting_packets, answer_fec, answer_packets, phone_figures) = {
        let recording = call.recording();
        let recording = recording.lock();
        write_window(&recording, &greeting, &path_with(prefix, "greeting"))?;
        write_window(&recording, &answer, &path_with(prefix, "answer"))?;
        let (greeting_fec, greeting_packets) = fec_packets(&recording, &greeting);
        let (answer_fec, answer_packets) = fec_packets(&recording, &answer);
        let phone_figures = (
            recording.packets_sent,
            recording.packets_received,
            recording.fec_recovered_frames,
            recording.concealed_frames,
        );
        (
            greeting_fec,
            greeting_packets,
            answer_fec,
            answer_packets,
            phone_figures,
        )
    };
    let (up_lost, down_lost) = call.wire_losses();
    call.hang_up().await?;
    anyhow::ensure!(
        stack.wait_idle(STEP_TIMEOUT).await,
        "the bridge kept the call"
    );
    let counts = BridgeCounts::read(stack).since(before);
    let (sent, arrived, phone_fec, phone_concealed) = phone_figures;
    Ok(format!(
        "{up_lost},{sent},{down_lost},{arrived},{},{},{},{},{greeting_fec},{greeting_packets},\
{answer_fec},{answer_packets},{phone_fec},{phone_concealed}",
        counts.fec_recovered,
        counts.concealed,
        counts.fec_switch_ons,
        u8::from(fec_on),
    ))
}

/// Where a response's audio lies in the phone's recording: from the first packet that arrived
/// after it was created, a clip and a margin long (samples).
struct Window {
    /// Index of the first packet (into `arrivals` and `payloads`) and its sample offset.
    packet: usize,
    start: usize,
    end: usize,
}

/// Waits until the phone has played `len` samples and a margin from the first packet that
/// arrived after `created`.
async fn played_window(call: &PhoneCall, created: Instant, len: usize) -> anyhow::Result<Window> {
    let first = |r: &Recording| r.arrivals.iter().position(|(at, _)| *at >= created);
    let complete = |r: &Recording| {
        first(r).is_some_and(|i| r.received.len() >= r.arrivals[i].1 + len + MARGIN)
    };
    anyhow::ensure!(
        call.wait_until(STEP_TIMEOUT, complete).await,
        "the response did not reach the phone"
    );
    let recording = call.recording();
    let recording = recording.lock();
    let packet = first(&recording).unwrap_or(0);
    let start = recording.arrivals[packet].1;
    Ok(Window {
        packet,
        start,
        end: start + len + MARGIN,
    })
}

fn write_window(recording: &Recording, window: &Window, path: &Path) -> anyhow::Result<()> {
    let end = window.end.min(recording.received.len());
    audio::write_wav(path, SAMPLE_RATE, &recording.received[window.start..end])?;
    Ok(())
}

/// (packets carrying FEC, packets) among those whose audio starts in `window`.
fn fec_packets(recording: &Recording, window: &Window) -> (usize, usize) {
    let in_window = recording.arrivals[window.packet..]
        .iter()
        .zip(&recording.payloads[window.packet..])
        .take_while(|((_, offset), _)| *offset < window.end);
    in_window.fold((0, 0), |(fec, all), (_, payload)| {
        (fec + usize::from(carries_fec(payload)), all + 1)
    })
}

/// The session of the call in progress (the newest one).
fn newest_session(stack: &LocalStack) -> Option<SessionSnapshot> {
    stack.ai.sessions().into_iter().max_by_key(|s| s.opened_at)
}

/// When the call's AI created its first response (`after` none), or its last one created
/// after `after`; polled until there is one (bounded).
async fn response_after(stack: &LocalStack, after: Option<Instant>) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let created = newest_session(stack).and_then(|session| {
            let mut times = session.responses.iter().map(|r| r.created_at);
            match after {
                None => times.next(),
                Some(after) => times.filter(|at| *at > after).max(),
            }
        });
        if let Some(created) = created {
            return Ok(created);
        }
        anyhow::ensure!(Instant::now() < deadline, "the AI never responded");
    }
}

fn path_with(prefix: &Path, what: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(format!("_{what}.wav"));
    PathBuf::from(name)
}
