//! `whatsapp-voice-bridge loadtest`: drives a bridge running as a separate process with many
//! simulated callers over real WebRTC on loopback, the Graph API and Realtime AI doubles living
//! in this process (echo mode, one clock for every timing). See `--help` and docs/BENCHMARKS.md.
//!
//! Each level runs on its own: its calls all dial at once, hold, hang up, and the bridge must be
//! idle again before the next level. The harness keeps its own cost low: phones send one
//! pre-encoded clip and keep counters, not recordings.

mod bridge_process;
mod graph_watch;
mod host;
mod markers;
mod phone;
mod plot;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::graph_double::{GraphDouble, GraphDoubleConfig};
use crate::realtime_ai::{AiDoubleConfig, AiMode, RealtimeAiDouble};
use crate::stack::APP_SECRET;
use crate::webhooks::BusinessLine;
use bridge::config::parse_duration;
use bridge::media::codec::{
    Bandwidth, EncoderSettings, MAX_OPUS_PACKET, MAX_PACKET_SAMPLES, OpusDecoder,
    SAMPLES_PER_FRAME, StreamEncoder,
};
use bridge::media::peer::PeerSettings;

use bridge_process::{Bridge, Launch, ProcSample};
use host::HostSteadiness;
use markers::{CYCLE_FRAMES, Clip, MarkerProbe, pair_delays};
use phone::{Caller, Dialled, LiveCall, Prepared};
use report::{CodecCost, CodecParts, LevelResult, OverflowResult};

/// Phones prepared (peer + offer) at the same time before a level starts.
const PREPARE_CONCURRENCY: usize = 32;
/// A marker must have been sent this long before the hang-up for its echo to count.
const ROUND_TRIP_ROOM: Duration = Duration::from_millis(2_500);
/// Longest wait, after its reference, for a marker or echo to be seen.
const MATCH_WINDOW: Duration = Duration::from_secs(1);
/// How long the bridge may take to end every call of a level.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "\
By default the harness starts the bridge itself (this binary's `serve`, as a child process wired \
to the doubles). To measure a bridge you started, give --bridge-url and --bridge-pid and start \
it with WHATSAPP_GRAPH_URL=http://<graph-listen>, OPENAI_REALTIME_URL=ws://<ai-listen>/v1/realtime, \
WHATSAPP_ACCESS_TOKEN=test-token, WHATSAPP_PHONE_NUMBER_ID=106540352242922, OPENAI_API_KEY=test-key, \
WEBRTC_LOOPBACK=true, ASSISTANT_GREETING=off and the --app-secret and OPUS_* settings given here.

Exit status: 0 when every level ran; 1 when --strict and a call failed or audio was lost.")]
pub struct LoadtestOptions {
    /// Calls at each level, comma-separated; each level dials all its calls at once.
    #[arg(long, value_delimiter = ',', default_value = "10,25,50,100,150")]
    pub levels: Vec<usize>,
    /// How long each level holds its calls (after a 2 s warm-up).
    #[arg(long, default_value = "20s", value_parser = parse_duration_arg)]
    pub hold: Duration,
    /// Directory for loadtest.csv, cpu_rss.png and latency_cdf.png (and the bridge's log).
    #[arg(long, default_value = "target/loadtest")]
    pub out: PathBuf,
    /// Fail (exit 1) if any call fails or any audio is lost.
    #[arg(long)]
    pub strict: bool,
    /// Length of the overflow test (signed connects at capacity; needs a bridge started here);
    /// 0s skips it.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub overflow: Duration,
    /// How long to probe the host's steadiness (1 ms sleeps on the idle harness CPU) before the
    /// ramp; 0s skips it.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub host_probe: Duration,
    /// Requests in flight during the overflow test.
    #[arg(long, default_value_t = 64)]
    pub overflow_concurrency: usize,
    /// CPUs for a bridge started here, as a `taskset -c` list (e.g. `0`); run the harness itself
    /// on the others (`taskset -c 1 whatsapp-voice-bridge loadtest --bridge-cpus 0`) so the two
    /// do not compete.
    #[arg(long)]
    pub bridge_cpus: Option<String>,
    /// Base URL of a bridge already running (instead of starting one).
    #[arg(long, requires_all = ["bridge_pid", "graph_listen", "ai_listen"])]
    pub bridge_url: Option<String>,
    /// Process id of that bridge (its CPU and memory are read from /proc).
    #[arg(long)]
    pub bridge_pid: Option<u32>,
    /// Where the Graph API double listens (the bridge's WHATSAPP_GRAPH_URL).
    #[arg(long)]
    pub graph_listen: Option<SocketAddr>,
    /// Where the Realtime AI double listens (the bridge's OPENAI_REALTIME_URL).
    #[arg(long)]
    pub ai_listen: Option<SocketAddr>,
    /// The bridge's WHATSAPP_APP_SECRET.
    #[arg(long, default_value = APP_SECRET)]
    pub app_secret: String,
    /// The bridge's OPUS_BITRATE (for the codec-only comparison; passed to a bridge started here).
    #[arg(long, default_value_t = EncoderSettings::default().bitrate_bps)]
    pub opus_bitrate: i32,
    /// The bridge's OPUS_COMPLEXITY.
    #[arg(long, default_value_t = EncoderSettings::default().complexity)]
    pub opus_complexity: i32,
    /// The bridge's OPUS_BANDWIDTH.
    #[arg(long, default_value = "wideband", value_parser = parse_bandwidth)]
    pub opus_bandwidth: Bandwidth,
}

fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 500ms, 5s or 2m"))
}

fn parse_bandwidth(text: &str) -> Result<Bandwidth, String> {
    Bandwidth::parse(text).ok_or_else(|| format!("{text:?} is not a bandwidth"))
}

impl LoadtestOptions {
    fn encoder(&self) -> EncoderSettings {
        EncoderSettings {
            bitrate_bps: self.opus_bitrate,
            complexity: self.opus_complexity,
            max_bandwidth: self.opus_bandwidth,
            ..EncoderSettings::default()
        }
    }
}

/// The doubles and the clip every level shares.
struct Harness {
    caller: Caller,
    probe: Arc<MarkerProbe>,
    peer: PeerSettings,
    next_key: u64,
}

impl Harness {
    /// Drops the phones' keep-alive connections to the bridge (a new client, a new pool), as
    /// Meta's side closes idle ones, so the bridge's idle memory is measured without them.
    fn close_idle_connections(&mut self) {
        self.caller.http = reqwest::Client::new();
    }
}

pub async fn run(options: LoadtestOptions) -> ExitCode {
    match run_inner(options).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("loadtest failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(options: LoadtestOptions) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&options.out)?;
    let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
    let graph = GraphDouble::start_on(
        GraphDoubleConfig::default(),
        options.graph_listen.unwrap_or(localhost),
    )
    .await?;
    let probe = Arc::new(MarkerProbe::default());
    let ai = RealtimeAiDouble::start_on(
        AiDoubleConfig {
            mode: AiMode::Echo,
            // Real-time 20 ms deltas: the bridge's playback queue stays near empty, so the
            // downlink latency is the bridge's own (frame slot wait included), not queueing.
            production_speed: 1.0,
            delta_ms: 20,
            first_audio_latency: Duration::from_millis(20),
            probe: Some(probe.clone()),
            ..AiDoubleConfig::default()
        },
        options.ai_listen.unwrap_or(localhost),
    )
    .await?;
    let encoder = options.encoder();
    let levels: Vec<usize> = options.levels.iter().copied().filter(|n| *n > 0).collect();
    anyhow::ensure!(!levels.is_empty(), "no level to run");
    let top = levels.iter().copied().max().unwrap_or(1);
    let started_here = options.bridge_url.is_none();
    let bridge = match (&options.bridge_url, options.bridge_pid) {
        (Some(url), Some(pid)) => Bridge::attach(url.clone(), pid).await?,
        _ => {
            Bridge::start(Launch {
                graph_url: graph.base_url(),
                ai_url: ai.url(),
                app_secret: &options.app_secret,
                max_calls: top,
                encoder,
                log: &options.out.join("bridge.log"),
                cpus: options.bridge_cpus.as_deref(),
            })
            .await?
        }
    };
    println!(
        "Bridge {} (pid {}), encoder {} bit/s, complexity {}, {}; levels {:?}, hold {:?}.",
        bridge.url,
        bridge.pid,
        encoder.bitrate_bps,
        encoder.complexity,
        encoder.max_bandwidth.as_str(),
        levels,
        options.hold
    );
    let mut harness = Harness {
        caller: Caller {
            bridge_url: bridge.url.clone(),
            app_secret: options.app_secret.clone(),
            line: BusinessLine::default(),
            graph: graph_watch::GraphWatch::start(graph.clone()),
            http: reqwest::Client::new(),
            clip: Clip::encode(EncoderSettings::default())?,
        },
        probe,
        peer: PeerSettings {
            loopback: true,
            ..PeerSettings::default()
        },
        next_key: 1,
    };

    let host = if options.host_probe.is_zero() {
        None
    } else {
        let probe = options.host_probe;
        let host = tokio::task::spawn_blocking(move || HostSteadiness::measure(probe)).await?;
        println!("{}", host.describe());
        Some(host)
    };
    let mut codec_samples = vec![codec_parts(encoder, harness.caller.clip.clone()).await];
    // One short call first, so the baseline is a bridge that has run a call (its code paths
    // paged in, its one-time set-up done) rather than one that never has.
    println!("Warm-up: one call for 1 s...");
    let warm_up = run_level(&mut harness, &bridge, 1, Duration::from_secs(1)).await?;
    anyhow::ensure!(
        warm_up.admitted == 1,
        "the warm-up call failed: {:?}",
        warm_up.problems
    );
    harness.close_idle_connections();
    let baseline = bridge.sample()?;
    println!(
        "Bridge RSS after a warm-up call: {:.1} MiB.",
        baseline.rss_mib
    );

    let mut results = Vec::new();
    for (index, &calls) in levels.iter().enumerate() {
        if index > 0 {
            // Measured again between levels, on the same idle machine; the median is used.
            codec_samples.push(codec_parts(encoder, harness.caller.clip.clone()).await);
        }
        println!();
        println!("Level {calls}: dialling {calls} calls at once...");
        let result = run_level(&mut harness, &bridge, calls, options.hold).await?;
        println!(
            "Level {calls}: {} admitted, {} refused, {} failed; bridge CPU {:.1} % ({:.3} % per call), RSS {:.1} MiB, {:.1} MiB after.",
            result.admitted,
            result.refused,
            result.failed,
            result.bridge_cores * 100.0,
            result.cpu_percent_per_call().unwrap_or(0.0),
            result.rss_mib,
            result.rss_after_mib
        );
        let p = |values: &[f64], q| report::percentile(values, q);
        println!(
            "Level {calls}: setup p50/p99 ms: webhook answered {:.0}/{:.0}, pre_accept {:.0}/{:.0}, accept {:.0}/{:.0}.",
            p(&result.webhook_answered_ms, 50.0),
            p(&result.webhook_answered_ms, 99.0),
            p(&result.pre_accept_ms, 50.0),
            p(&result.pre_accept_ms, 99.0),
            p(&result.setup_ms, 50.0),
            p(&result.setup_ms, 99.0),
        );
        for problem in &result.problems {
            println!("  problem: {problem}");
        }
        results.push(result);
    }

    let parts = CodecParts::median(&codec_samples);
    let ai_share = ai_audio_share(&results);
    // Each echoed turn is followed by one pause.
    let codec = parts.cost(ai_share, CYCLE_FRAMES as f64);
    println!(
        "Codec only (bridge settings, medians of {} runs): decode {:.1} µs, encode {:.1} µs of AI audio; a pause {:.0} µs for its first {:.0} frames, then {:.2} µs a frame (replayed); the AI double sent audio {:.0} % of the time, so {:.1} µs per 20 ms frame = {:.3} % of a core per call.",
        codec_samples.len(),
        parts.decode_us,
        parts.voice_encode_us,
        parts.pause_start_us,
        parts.pause_start_frames,
        parts.pause_replay_us,
        ai_share * 100.0,
        codec.frame_us,
        codec.cores_per_call() * 100.0
    );
    harness.close_idle_connections();
    let (idle, waited) = settle_rss(&bridge, baseline.rss_mib).await;
    let idle_anon = idle.map_or(f64::NAN, |s| s.rss_anon_mib);
    let settled = (idle.map_or(f64::NAN, |s| s.rss_mib), waited);
    println!(
        "Bridge RSS {:.1} MiB {:.1} s after the last call ended (baseline {:.1} MiB); of it anonymous {:.1} MiB (baseline {:.1} MiB), the rest pages of mapped files such as the executable.",
        settled.0,
        waited.as_secs_f64(),
        baseline.rss_mib,
        idle_anon,
        baseline.rss_anon_mib
    );
    let overflow = if started_here && !options.overflow.is_zero() {
        println!();
        println!(
            "Overflow: a second bridge with room for 1 call, which is taken; signed connects for {:?}...",
            options.overflow
        );
        Some(run_overflow(&mut harness, &graph, &ai, &options, encoder).await?)
    } else {
        None
    };
    bridge.stop().await;
    ai.shutdown();
    graph.shutdown();

    let summary = Summary::of(
        &results,
        host.as_ref(),
        codec,
        baseline.rss_mib,
        settled,
        overflow.as_ref(),
    );
    println!();
    print!("{}", report::table(&results));
    println!();
    print!("{}", summary.render());
    std::fs::write(options.out.join("loadtest.csv"), report::csv(&results))?;
    let plots = plot::draw(&options.out, &results, summary.cpu_fit, summary.rss_fit);
    match plots {
        Ok(files) => println!(
            "Wrote {} and {}.",
            options.out.join("loadtest.csv").display(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(err) => println!(
            "Wrote {}; no plots: {err:#}",
            options.out.join("loadtest.csv").display()
        ),
    }
    let healthy = results.iter().all(LevelResult::healthy)
        && overflow.as_ref().is_none_or(|o| o.problems.is_empty());
    if options.strict && !healthy {
        println!("FAILED: a call failed or audio was lost (see the problems above).");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One level: prepare `calls` phones, dial them all at once, warm up, hold, hang up, wait idle.
async fn run_level(
    harness: &mut Harness,
    bridge: &Bridge,
    calls: usize,
    hold: Duration,
) -> anyhow::Result<LevelResult> {
    let mut result = LevelResult {
        calls,
        ..LevelResult::default()
    };
    let keys: Vec<u64> = (0..calls as u64).map(|i| harness.next_key + i).collect();
    harness.next_key += calls as u64;
    let caller = harness.caller.clone();
    let peer = harness.peer.clone();
    let prepared: Vec<anyhow::Result<Prepared>> =
        futures_util::stream::iter(keys.iter().map(|&key| {
            let caller = caller.clone();
            let peer = peer.clone();
            async move { Prepared::new(&caller, &peer, key).await }
        }))
        .buffer_unordered(PREPARE_CONCURRENCY)
        .collect()
        .await;
    let prepared: Vec<Prepared> = prepared.into_iter().collect::<anyhow::Result<_>>()?;
    let before = bridge.metrics().await?;

    let (bridge_dial, self_dial) = (bridge.sample()?, bridge_process::sample(None)?);
    let dialled =
        futures_util::future::join_all(prepared.into_iter().map(|p| phone::dial(&caller, p))).await;
    let (bridge_dialled, self_dialled) = (bridge.sample()?, bridge_process::sample(None)?);
    println!(
        "Level {calls}: dialling took {:.0} ms; bridge CPU {:.0} ms, harness CPU {:.0} ms.",
        (bridge_dialled.at - bridge_dial.at).as_secs_f64() * 1000.0,
        (bridge_dialled.cpu_seconds - bridge_dial.cpu_seconds) * 1000.0,
        (self_dialled.cpu_seconds - self_dial.cpu_seconds) * 1000.0,
    );
    let mut live: Vec<LiveCall> = Vec::new();
    for outcome in dialled {
        match outcome {
            Dialled::Live(call) => {
                result.setup_ms.push(call.setup.as_secs_f64() * 1000.0);
                result
                    .webhook_answered_ms
                    .push(call.webhook_answered.as_secs_f64() * 1000.0);
                result
                    .pre_accept_ms
                    .push(call.pre_accepted.as_secs_f64() * 1000.0);
                live.push(call);
            }
            Dialled::Refused(503) => result.refused += 1,
            Dialled::Refused(status) => {
                result.failed += 1;
                result.problems.push(format!("connect answered {status}"));
            }
            Dialled::Failed(reason) => {
                result.failed += 1;
                result.problems.push(format!("dial: {reason}"));
            }
        }
    }
    result.admitted = live.len();
    tokio::time::sleep(Duration::from_secs(2)).await; // warm-up, not synchronisation
    for call in &live {
        call.begin_hold();
    }
    let hold_start = Instant::now();
    let at_hold = bridge.metrics().await?;
    let (bridge_start, self_start) = (bridge.sample()?, bridge_process::sample(None)?);
    let lag = progress_hold(hold, live.len()).await;
    result.harness_stalls = lag.stalls;
    result.harness_max_lag_ms = lag.max_ms;
    let (bridge_end, self_end) = (bridge.sample()?, bridge_process::sample(None)?);
    result.bridge_cores = bridge_end.cores_since(&bridge_start);
    result.harness_cores = self_end.cores_since(&self_start);
    result.rss_mib = bridge_end.rss_mib;

    let hung_up_at = Instant::now();
    let ended = futures_util::future::join_all(live.into_iter().map(|call| {
        let caller = caller.clone();
        async move {
            let key = call.key;
            let (stats, problem) = call.hang_up(&caller).await;
            (key, stats, problem)
        }
    }))
    .await;
    if !bridge.wait_idle(IDLE_TIMEOUT).await {
        result
            .problems
            .push("the bridge still had live calls after every hang-up".into());
    }
    let after = bridge.metrics().await?;
    result.rss_after_mib = bridge.sample()?.rss_mib;
    let concealed = "whatsapp_bridge_concealed_frames_total";
    result.uplink_concealed =
        (after.value(concealed, &[]) - before.value(concealed, &[])).max(0.0) as u64;
    let name = "whatsapp_bridge_late_pacer_ticks_total";
    result.late_pacer_ticks = (after.value(name, &[]) - at_hold.value(name, &[])).max(0.0) as u64;
    // Frames sent over 10 ms late: all the histogram's frames less those in its 10 ms bucket.
    let sent_late = |metrics: &bridge_process::Metrics| {
        metrics.value("whatsapp_bridge_frame_send_delay_seconds_count", &[])
            - metrics.value(
                "whatsapp_bridge_frame_send_delay_seconds_bucket",
                &[("le", "0.01")],
            )
    };
    result.frames_sent_late = (sent_late(&after) - sent_late(&at_hold)).max(0.0) as u64;

    let mut jitters = Vec::new();
    for (key, stats, problem) in ended {
        if let Some(problem) = problem {
            result.problems.push(format!("call {key}: {problem}"));
        }
        let marks = harness.probe.take(key);
        result.ai_samples_in += marks.samples_in;
        result.ai_samples_out += marks.samples_out;
        let counted = within(&stats.markers_sent, hold_start, hung_up_at, ROUND_TRIP_ROOM);
        let (uplink, up_missing) = pair_delays(&counted, &marks.heard, MATCH_WINDOW);
        let echoes = within(&marks.said, hold_start, hung_up_at, MATCH_WINDOW);
        let (downlink, down_missing) = pair_delays(&echoes, &stats.onsets_heard, MATCH_WINDOW);
        let (_, round_trips_missing) =
            pair_delays(&counted, &stats.onsets_heard, Duration::from_millis(1_900));
        result.uplink_ms.extend(uplink);
        result.downlink_ms.extend(downlink);
        result.uplink_markers_lost += up_missing;
        result.downlink_markers_lost += down_missing;
        result.round_trips_missing += round_trips_missing;
        result.packets_sent += stats.packets_sent;
        result.packets_received += stats.packets_received;
        result.downlink_lost += stats.packets_lost;
        result.late += stats.late;
        result.bunched += stats.bunched;
        result.max_gap_ms = result.max_gap_ms.max(stats.max_gap_ms);
        jitters.push(stats.jitter_ms);
        if counted.is_empty() {
            result
                .problems
                .push(format!("call {key}: no marker was sent while it was up"));
        }
    }
    result.jitter_ms = report::max(&jitters).max(0.0);
    harness.probe.clear();
    Ok(result)
}

/// The instants from `start` on that leave at least `room` before `end`.
fn within(times: &[Instant], start: Instant, end: Instant, room: Duration) -> Vec<Instant> {
    times
        .iter()
        .copied()
        .filter(|&t| t >= start && t + room <= end)
        .collect()
}

/// A harness timer this late means the phones' arrival times were late by as much: a late
/// frame the phones count then says more about the harness than about the bridge.
const HARNESS_STALL: Duration = Duration::from_millis(10);
/// How often the harness checks its own timeliness during a hold.
const HARNESS_LAG_TICK: Duration = Duration::from_millis(2);

/// How late the harness's own runtime ran its timers during a hold.
#[derive(Debug, Default)]
struct HarnessLag {
    /// Ticks that ran `HARNESS_STALL` or more late.
    stalls: u64,
    max_ms: f64,
}

/// Waits out the hold, printing progress, and measures how late the harness's runtime (the
/// thread its phones read their packets on) ran a 2 ms timer.
async fn progress_hold(hold: Duration, calls: usize) -> HarnessLag {
    let start = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let mut lag_ticker = tokio::time::interval(HARNESS_LAG_TICK);
    lag_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag = HarnessLag::default();
    loop {
        let left = hold.saturating_sub(start.elapsed());
        if left.is_zero() {
            return lag;
        }
        tokio::select! {
            due = lag_ticker.tick() => {
                let late = Instant::now().saturating_duration_since(due.into_std());
                lag.max_ms = lag.max_ms.max(late.as_secs_f64() * 1e3);
                if late >= HARNESS_STALL {
                    lag.stalls += 1;
                }
            }
            _ = progress.tick() => println!(
                "  holding {calls} calls: {:.0} s of {:.0} s",
                start.elapsed().as_secs_f64(),
                hold.as_secs_f64()
            ),
            _ = tokio::time::sleep(left) => return lag,
        }
    }
}

/// How close to its starting RSS an idle bridge must come to count as back to baseline.
const RSS_BASELINE_SLACK_MIB: f64 = 5.0;
/// How long an idle bridge gets to hand memory back: the allocator returns freed pages after a
/// decay period of about 10 s, and the bridge's HTTP client keeps its idle connections to the
/// Graph API (one per call of a burst) for 90 s before closing them.
const RSS_SETTLE_TIMEOUT: Duration = Duration::from_secs(100);

/// Waits (bounded) for the idle bridge's RSS to come back near `baseline`; returns the last
/// sample (`None` if the bridge is gone) and how long it took.
async fn settle_rss(bridge: &Bridge, baseline: f64) -> (Option<ProcSample>, Duration) {
    let start = Instant::now();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        check.tick().await;
        let Ok(sample) = bridge.sample() else {
            // The bridge is gone: no figure, and the goal is not met.
            return (None, start.elapsed());
        };
        if sample.rss_mib - baseline <= RSS_BASELINE_SLACK_MIB
            || start.elapsed() >= RSS_SETTLE_TIMEOUT
        {
            return (Some(sample), start.elapsed());
        }
    }
}

/// Measures one call's codec work alone, on one thread, with nothing else around it: decoding
/// the phone clip, and encoding as the bridge's stream encoder does, both AI audio and settled
/// pauses (about a second each).
async fn codec_parts(encoder: EncoderSettings, clip: Arc<Clip>) -> CodecParts {
    tokio::task::spawn_blocking(move || codec_parts_now(encoder, &clip))
        .await
        .expect("the codec measurement does not panic")
}

fn codec_parts_now(settings: EncoderSettings, clip: &Clip) -> CodecParts {
    const PART: Duration = Duration::from_millis(700);
    let mut decoder = OpusDecoder::new().expect("opus decoder");
    let mut pcm = vec![0i16; MAX_PACKET_SAMPLES];
    // The echoed speech is the clip as the bridge decodes it.
    let mut voice = Vec::with_capacity(clip.packets.len() * SAMPLES_PER_FRAME);
    for payload in &clip.packets {
        let samples = decoder.decode(payload, &mut pcm).unwrap_or(0);
        voice.extend_from_slice(&pcm[..samples]);
    }
    let decode_us = per_frame_us(PART, || {
        for payload in &clip.packets {
            let _ = decoder.decode(payload, &mut pcm);
        }
        clip.packets.len()
    });

    let mut encoder = StreamEncoder::new(settings).expect("opus encoder");
    let mut packet = vec![0u8; MAX_OPUS_PACKET];
    let voice_encode_us = per_frame_us(PART, || {
        let frames = voice.chunks_exact(SAMPLES_PER_FRAME);
        let count = frames.len();
        for frame in frames {
            let _ = encoder.encode(frame, false, &mut packet);
        }
        count
    });
    let silence = vec![0i16; SAMPLES_PER_FRAME];
    // Pauses as the bridge has them, each after AI audio (here the marker's first frame): the
    // frames encoded before the replay.
    let voice_frame = voice
        .chunks_exact(SAMPLES_PER_FRAME)
        .next()
        .expect("the clip is longer than a frame");
    let (mut pause_start, mut pause_start_frames, mut pauses) = (Duration::ZERO, 0usize, 0usize);
    let measuring = Instant::now();
    while measuring.elapsed() < PART {
        let _ = encoder.encode(voice_frame, false, &mut packet);
        let start = Instant::now();
        // A pause that never replays (another libopus) counts as encoded throughout.
        while !encoder.replaying() && start.elapsed() < PART {
            let _ = encoder.encode(&silence, true, &mut packet);
            pause_start_frames += 1;
        }
        pause_start += start.elapsed();
        pauses += 1;
    }
    let pause_replay_us = per_frame_us(PART / 7, || {
        for _ in 0..CYCLE_FRAMES {
            let _ = encoder.encode(&silence, true, &mut packet);
        }
        CYCLE_FRAMES
    });
    CodecParts {
        decode_us,
        voice_encode_us,
        pause_start_us: pause_start.as_secs_f64() * 1e6 / pauses as f64,
        pause_start_frames: pause_start_frames as f64 / pauses as f64,
        pause_replay_us,
    }
}

/// Runs `round` (which returns the frames it handled) until `at_least` has passed; µs per frame.
fn per_frame_us(at_least: Duration, mut round: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut frames = 0;
    while start.elapsed() < at_least {
        frames += round();
    }
    start.elapsed().as_secs_f64() * 1e6 / frames.max(1) as f64
}

/// The share of the callers' time the AI double spent sending audio back, over every level.
fn ai_audio_share(levels: &[LevelResult]) -> f64 {
    let heard: u64 = levels.iter().map(|l| l.ai_samples_in).sum();
    let said: u64 = levels.iter().map(|l| l.ai_samples_out).sum();
    if heard == 0 {
        return 1.0;
    }
    said as f64 / heard as f64
}

/// A second bridge with room for one call, which one phone takes; then signed `connect`s for
/// new calls as fast as they are answered, each of which must be refused with 503.
async fn run_overflow(
    harness: &mut Harness,
    graph: &GraphDouble,
    ai: &RealtimeAiDouble,
    options: &LoadtestOptions,
    encoder: EncoderSettings,
) -> anyhow::Result<OverflowResult> {
    let bridge = Bridge::start(Launch {
        graph_url: graph.base_url(),
        ai_url: ai.url(),
        app_secret: &options.app_secret,
        max_calls: 1,
        encoder,
        log: &options.out.join("bridge-overflow.log"),
        cpus: options.bridge_cpus.as_deref(),
    })
    .await?;
    println!("  overflow bridge {} (pid {})", bridge.url, bridge.pid);
    let mut caller = harness.caller.clone();
    caller.bridge_url = bridge.url.clone();
    let mut result = OverflowResult::default();
    let key = harness.next_key;
    harness.next_key += 1;
    let occupant =
        match phone::dial(&caller, Prepared::new(&caller, &harness.peer, key).await?).await {
            Dialled::Live(call) => call,
            _ => anyhow::bail!("the overflow bridge did not take its one call"),
        };
    let body_template = overflow_body(&caller);
    let deadline = Instant::now() + options.overflow;
    let (start, start_sample) = (Instant::now(), bridge.sample()?);
    let workers = (0..options.overflow_concurrency.max(1)).map(|worker| {
        let caller = caller.clone();
        let template = body_template.clone();
        async move {
            let (mut sent, mut refused, mut other) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let body = template.replace("wacid.OVERFLOW", &format!("wacid.OF{worker}-{sent}"));
                let status = caller.post(body).await;
                sent += 1;
                match status {
                    Ok(503) => refused += 1,
                    _ => other += 1,
                }
            }
            (sent, refused, other)
        }
    });
    for (sent, refused, other) in futures_util::future::join_all(workers).await {
        result.sent += sent;
        result.refused_503 += refused;
        result.other += other;
    }
    result.seconds = start.elapsed().as_secs_f64();
    result.bridge_cores = bridge.sample()?.cores_since(&start_sample);
    if result.other > 0 {
        result
            .problems
            .push(format!("{} connects were not answered 503", result.other));
    }
    let (stats, problem) = occupant.hang_up(&caller).await;
    if let Some(problem) = problem {
        result.problems.push(problem);
    }
    if stats.packets_received == 0 {
        result
            .problems
            .push("the call in progress received no audio".into());
    }
    let idle = bridge.wait_idle(IDLE_TIMEOUT).await;
    // The one permit must be free again: a new call is taken.
    let key = harness.next_key;
    harness.next_key += 1;
    let again = phone::dial(&caller, Prepared::new(&caller, &harness.peer, key).await?).await;
    result.permits_intact = idle && matches!(again, Dialled::Live(_));
    if let Dialled::Live(call) = again {
        let _ = call.hang_up(&caller).await;
    }
    if !result.permits_intact {
        result
            .problems
            .push("after the flood the bridge did not take a new call".into());
    }
    bridge.wait_idle(IDLE_TIMEOUT).await;
    bridge.stop().await;
    harness.probe.clear();
    Ok(result)
}

/// A signed-able `connect` for a call id `wacid.OVERFLOW` (replaced per request).
fn overflow_body(caller: &Caller) -> String {
    use bridge::ids::{CallId, PhoneNumber};
    // The bridge refuses at capacity before it looks at the SDP, but the body is a complete,
    // valid connect all the same.
    let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE audio\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\nc=IN IP4 0.0.0.0\r\na=mid:audio\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-lite\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=20;useinbandfec=1\r\na=rtpmap:126 telephone-event/8000\r\n\
a=candidate:1 1 udp 2113937151 127.0.0.1 9 typ host\r\n";
    crate::webhooks::connect_offer(
        &caller.line,
        &CallId::new("wacid.OVERFLOW"),
        &PhoneNumber::new("447700000001"),
        "Overflow",
        offer,
        crate::phone::unix_now(),
    )
}

/// The figures across levels and the goals of issue 5.
struct Summary {
    cpu_fit: Option<report::Fit>,
    rss_fit: Option<report::Fit>,
    lines: Vec<String>,
}

impl Summary {
    fn of(
        levels: &[LevelResult],
        host: Option<&HostSteadiness>,
        codec: CodecCost,
        baseline_rss: f64,
        settled: (f64, Duration),
        overflow: Option<&OverflowResult>,
    ) -> Summary {
        // The CPU cost per call is fitted on the levels the bridge kept up with: its own pacer
        // late on at most 1 % of frames. Past that it is saturated and its CPU stops growing
        // with the calls; below it, a late tick is a stall of the host (see `host`), which
        // can make a few ticks late at any load on a shared machine.
        let kept_up = |l: &LevelResult| {
            l.admitted > 0 && l.late_pacer_ticks as f64 <= 0.01 * l.packets_received as f64
        };
        let points = |value: fn(&LevelResult) -> f64, filter: &dyn Fn(&LevelResult) -> bool| {
            levels
                .iter()
                .filter(|l| filter(l))
                .map(|l| (l.admitted as f64, value(l)))
                .collect::<Vec<_>>()
        };
        // No fit from saturated levels: their slope would understate the cost per call.
        let cpu_points = points(|l| l.bridge_cores, &kept_up);
        let cpu_fit = report::linear_fit(&cpu_points);
        let rss_fit = report::linear_fit(&points(|l| l.rss_mib, &|l| l.admitted > 0));
        let mut lines: Vec<String> = host.map(HostSteadiness::describe).into_iter().collect();
        let on_time = levels
            .iter()
            .filter(|l| l.late == 0 && l.failed == 0 && kept_up(l))
            .max_by_key(|l| l.admitted);
        lines.push(match on_time {
            Some(level) => format!(
                "Largest level with every frame on time at the phones: {} calls (bridge CPU {:.1} %).",
                level.admitted,
                level.bridge_cores * 100.0
            ),
            None => "No level had every frame on time at the phones.".to_owned(),
        });
        if let Some(fit) = cpu_fit {
            let slope = fit.slope;
            let ratio = slope / codec.cores_per_call();
            lines.push(format!(
                "Bridge CPU per call (slope over {} levels it kept up with): {:.3} % of a core (intercept {:.1} %), i.e. {:.0} calls per core at full use; codec only {:.3} %; ratio {:.2}.",
                cpu_points.len(),
                slope * 100.0,
                fit.intercept * 100.0,
                1.0 / slope,
                codec.cores_per_call() * 100.0,
                ratio
            ));
            lines.push(goal(
                PER_CALL_GOAL,
                slope <= 0.01,
                format!("{:.3} %", slope * 100.0),
            ));
            lines.push(goal(RATIO_GOAL, ratio <= 1.3, format!("{ratio:.2} ×")));
        } else if levels.len() >= 2 {
            let why = format!(
                "not measured: {} of {} levels kept up (pacer late on ≤ 1 % of frames), and a fit needs two",
                cpu_points.len(),
                levels.len()
            );
            lines.push(goal(PER_CALL_GOAL, false, why.clone()));
            lines.push(goal(RATIO_GOAL, false, why));
        }
        if let Some(fit) = rss_fit {
            lines.push(goal(
                "≤ 1 MB RSS per call (slope)",
                fit.slope * 1.048_576 <= 1.0,
                format!("{:.2} MiB per call", fit.slope),
            ));
        }
        let back = settled.0 - baseline_rss;
        lines.push(goal(
            "RSS back to baseline after the calls end",
            back <= RSS_BASELINE_SLACK_MIB,
            format!(
                "{baseline_rss:.1} MiB after a warm-up call, {:.1} MiB {:.1} s after the last ended ({back:+.1})",
                settled.0,
                settled.1.as_secs_f64()
            ),
        ));
        if let Some(level) = level_nearest(levels, |l| l.admitted) {
            let up = report::percentile(&level.uplink_ms, 99.0);
            let down = report::percentile(&level.downlink_ms, 99.0);
            lines.push(goal(
                &format!(
                    "latency p99 ≤ 5 ms each way beyond the 20 ms frame, at {} calls",
                    level.admitted
                ),
                up <= UPLINK_P99_GOAL_MS && down <= DOWNLINK_P99_GOAL_MS,
                format!("uplink {up:.1} ms, downlink {down:.1} ms (frame slot included)"),
            ));
            lines.push(goal(
                &format!("no late frames at the phone, at {} calls", level.admitted),
                level.late == 0,
                format!(
                    "{} late, {} bunched of {} packets; the bridge sent {} frames more than 10 ms after their slot; the harness's own timer ran 10 ms or more late {} times (at most {:.1} ms)",
                    level.late, level.bunched, level.packets_received, level.frames_sent_late, level.harness_stalls, level.harness_max_lag_ms
                ),
            ));
        }
        if let Some(level) = level_nearest(levels, |l| l.calls) {
            let p99 = report::percentile(&level.setup_ms, 99.0);
            lines.push(goal(
                &format!(
                    "call setup p99 ≤ 50 ms with {} connects at once",
                    level.calls
                ),
                p99 <= 50.0,
                format!("{p99:.1} ms"),
            ));
        }
        if let Some(overflow) = overflow {
            lines.push(goal(
                "overflow ≥ 10 000 webhooks/s, all refused, no permit leaked",
                overflow.rate() >= 10_000.0
                    && overflow.problems.is_empty()
                    && overflow.permits_intact,
                format!(
                    "{:.0} webhooks/s ({} sent, {} answered 503, {} otherwise; bridge CPU {:.0} %), permits {}",
                    overflow.rate(),
                    overflow.sent,
                    overflow.refused_503,
                    overflow.other,
                    overflow.bridge_cores * 100.0,
                    if overflow.permits_intact { "intact" } else { "LEAKED" }
                ),
            ));
        }
        Summary {
            cpu_fit,
            rss_fit,
            lines,
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// The level whose size (by `size`) is nearest to the 100 calls the goals are set at.
fn level_nearest(levels: &[LevelResult], size: fn(&LevelResult) -> usize) -> Option<&LevelResult> {
    levels
        .iter()
        .min_by_key(|l| (size(l) as i64 - GOAL_CALLS).abs())
}

/// The uplink has no frame slot to wait for (each packet is forwarded as it arrives), so all of
/// its latency is the bridge's; the downlink's includes the wait for the next 20 ms slot.
const UPLINK_P99_GOAL_MS: f64 = 5.0;
const DOWNLINK_P99_GOAL_MS: f64 =
    bridge::media::codec::FRAME_PERIOD.as_millis() as f64 + UPLINK_P99_GOAL_MS;
const PER_CALL_GOAL: &str = "≥ 100 calls per core (≤ 1.0 % of a core per call)";
const RATIO_GOAL: &str = "bridge CPU per call ≤ 1.3 × codec only";

/// The latency, late-frame and setup goals hold at this many concurrent calls.
const GOAL_CALLS: i64 = 100;

fn goal(name: &str, met: bool, value: String) -> String {
    format!("[{}] {name}: {value}", if met { "met" } else { "NOT MET" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(calls: usize, cores: f64, late_pacer_ticks: u64) -> LevelResult {
        LevelResult {
            calls,
            admitted: calls,
            packets_received: calls as u64 * 1000,
            late_pacer_ticks,
            bridge_cores: cores,
            rss_mib: 20.0 + calls as f64 * 0.5,
            ..LevelResult::default()
        }
    }

    fn summary(levels: &[LevelResult]) -> String {
        let codec = CodecCost { frame_us: 120.0 };
        Summary::of(levels, None, codec, 20.0, (21.0, Duration::ZERO), None).render()
    }

    #[test]
    fn the_cost_per_call_is_fitted_on_the_levels_the_bridge_kept_up_with() {
        // 0.8 % per call up to 50 calls; at 100 the core is saturated and the pacer falls behind.
        let levels = [
            level(10, 0.10, 0),
            level(50, 0.42, 40),
            level(100, 0.99, 20_000),
        ];
        let text = summary(&levels);
        assert!(text.contains("slope over 2 levels"), "{text}");
        assert!(
            text.contains("[met] ≥ 100 calls per core (≤ 1.0 % of a core per call): 0.800 %"),
            "{text}"
        );
        assert!(text.contains("ratio 1.33"), "{text}");
    }

    #[test]
    fn saturated_levels_never_yield_a_cost_per_call() {
        // Only one level kept up: a slope through the saturated ones would understate the cost.
        let levels = [
            level(10, 0.15, 0),
            level(50, 0.98, 5_000),
            level(100, 0.99, 30_000),
        ];
        let text = summary(&levels);
        assert!(
            text.contains("[NOT MET] ≥ 100 calls per core (≤ 1.0 % of a core per call): not measured: 1 of 3 levels kept up"),
            "{text}"
        );
        assert!(
            text.contains("[NOT MET] bridge CPU per call ≤ 1.3 × codec only: not measured"),
            "{text}"
        );
    }

    #[test]
    fn the_uplink_gets_no_frame_slot_allowance() {
        let mut at_100 = level(100, 0.5, 0);
        at_100.downlink_ms = vec![24.0; 100];
        at_100.uplink_ms = vec![5.3; 100];
        let text = summary(&[level(10, 0.05, 0), at_100.clone()]);
        assert!(
            text.contains("[NOT MET] latency p99 ≤ 5 ms each way beyond the 20 ms frame, at 100 calls: uplink 5.3 ms, downlink 24.0 ms"),
            "{text}"
        );
        at_100.uplink_ms = vec![4.9; 100];
        let text = summary(&[level(10, 0.05, 0), at_100]);
        assert!(
            text.contains("[met] latency p99 ≤ 5 ms each way beyond the 20 ms frame, at 100 calls"),
            "{text}"
        );
    }
}
