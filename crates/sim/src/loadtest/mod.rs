//! `whatsapp-voice-bridge loadtest`: drives a bridge running as a separate process with many
//! simulated callers over real WebRTC on loopback, the Graph API and Realtime AI doubles living
//! in this process (echo mode, one clock for every timing). See `--help` and docs/BENCHMARKS.md.
//!
//! Each level runs on its own: its calls all dial at once, hold, hang up, and the bridge must be
//! idle again before the next level. The harness keeps its own cost low: phones send one
//! pre-encoded clip and keep counters, not recordings.

mod codec_cost;
mod faults;
mod graph_watch;
mod host;
mod level;
mod loss_quality;
mod markers;
mod overflow;
mod phone;
mod plot;
mod reminders;
mod report;
mod soak;
mod summary;
mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::graph_double::{GraphDouble, GraphDoubleConfig};
use crate::loss::{CallLoss, LossProfile};
use crate::realtime_ai::{AiDoubleConfig, AiMode, RealtimeAiDouble};
use crate::stack::APP_SECRET;
use crate::webhooks::BusinessLine;
use bridge::config::{self, parse_duration};
use bridge::media::codec::{Bandwidth, EncoderSettings};
use bridge::media::peer::PeerSettings;
use bridge::scheduling;

use crate::bridge_process::{Bridge, Launch, ProcSample};
use codec_cost::{ai_audio_share, codec_parts};
use host::HostSteadiness;
use level::run_level;
use markers::{CYCLE_FRAMES, Clip, MarkerProbe};
use phone::Caller;
use report::{CodecCost, CodecParts, LevelResult};
use summary::{RSS_BASELINE_SLACK_MIB, Summary};
use target::Target;

/// How long the bridge may take to end every call of a level.
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an idle bridge gets to hand memory back: the allocator returns freed pages after a
/// decay period of about 10 s, and the bridge's HTTP client keeps its idle connections to the
/// Graph API (one per call of a burst) for 90 s before closing them.
const RSS_SETTLE_TIMEOUT: Duration = Duration::from_secs(100);

#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "\
By default the harness starts the bridge itself (this binary's `serve`, as a child process wired \
to the doubles). To measure a bridge you started, give --bridge-url and --bridge-pid and start \
it with WHATSAPP_GRAPH_URL=http://<graph-listen>, OPENAI_REALTIME_URL=ws://<ai-listen>/v1/realtime, \
WHATSAPP_ACCESS_TOKEN=test-token, WHATSAPP_PHONE_NUMBER_ID=106540352242922, OPENAI_API_KEY=test-key, \
WEBRTC_LOOPBACK=true, ASSISTANT_GREETING=off and the --app-secret and OPUS_* settings given here.

Exit status: 0 when every level ran; 1 when --strict and a call failed or audio was lost. With \
--ai-faults: 1 when --strict and a call's AI was not back within 10 s of a fault, not every fault \
could be injected, or the recovery p99 is over 1 s. With --soak: 1 when --strict and a cycle \
failed, a call outlived the cycles, or a permit, registry entry, task, fd or UDP socket was \
left over, or the RSS is more than 5 MiB above the baseline once settled.")]
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
    /// Bridge processes started here sharing a Redis (`--redis-url`), as a fleet: each call's
    /// connect goes to one replica and its terminate to the next, so every terminate is
    /// forwarded; the figures add the replicas up and count Redis's work.
    #[arg(long, default_value_t = 1, conflicts_with = "bridge_url")]
    pub replicas: usize,
    /// The Redis of `--replicas`.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Instead of the levels: this many reminders due at once on `--replicas` bridge processes
    /// sharing one store (and the Redis); measures the delay after the due time and checks
    /// each is delivered by exactly one call.
    #[arg(long, default_value_t = 0)]
    pub reminders: usize,
    /// `REMINDER_CONCURRENCY` of each replica in the `--reminders` run.
    #[arg(long, default_value_t = 25)]
    pub reminder_concurrency: usize,
    /// Instead of the levels: close the AI's sessions in the middle of `--fault-calls` calls
    /// until this many faults were injected (rounds that close every live session, with close
    /// 1011 and abruptly by turns), and measure how soon each call's AI takes caller audio again
    /// and what a reconnect costs the bridge, against a quiet stretch of `--hold` first.
    #[arg(long, default_value_t = 0)]
    pub ai_faults: usize,
    /// Calls held during the `--ai-faults` run.
    #[arg(long, default_value_t = 10)]
    pub fault_calls: usize,
    /// A setting for the bridge processes started here, as `KEY=VALUE` (repeatable), e.g.
    /// `--bridge-setting ADMISSION=count` to compare admission by count with the headroom.
    #[arg(long = "bridge-setting", value_parser = parse_setting)]
    pub bridge_settings: Vec<(String, String)>,
    /// Levels: run the harness's runtime thread, and the bridge started here (its
    /// SCHED_FIFO_PRIORITY), `SCHED_FIFO` at this priority (1-99; needs CAP_SYS_NICE), so that
    /// the host's other processes cannot hold either back; 0: both scheduled normally.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=99))]
    pub sched_fifo_priority: u8,
    /// Instead of the levels: this many calls in randomised cycles (connect/terminate storms,
    /// duplicate connects, terminates before connects, connects whose media never connects,
    /// callers vanishing mid-call, short WebRTC calls), then the idle bridge against its
    /// baseline: permits, registry entries, tasks, fds, UDP sockets and RSS left over.
    #[arg(long, default_value_t = 0)]
    pub soak: u64,
    /// Soak cycles run at once.
    #[arg(long, default_value_t = 16)]
    pub soak_concurrency: usize,
    /// Share of the soak's calls made over real WebRTC (0 to 1); a fifth of them vanish.
    #[arg(long, default_value_t = 0.1, value_parser = soak::parse_share)]
    pub soak_webrtc_share: f64,
    /// The seed of the soak's mix (printed by every run); random when not given.
    #[arg(long)]
    pub soak_seed: Option<u64>,
    /// Percent of the RTP packets each phone sends that its wire loses (before the bridge sees
    /// them: the bridge's FEC recovery and concealment count them). With loss, `--strict` fails.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    pub uplink_loss: f64,
    /// Percent of the RTP packets the bridge sends each phone that its wire loses (before the
    /// phone's WebRTC stack sees them: its receiver reports state the loss to the bridge).
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    pub downlink_loss: f64,
    /// Mean number of packets lost in a row, both directions (1: random loss; more: bursts,
    /// by a two-state Gilbert model with the same long-run loss).
    #[arg(long, default_value_t = 1.0, value_parser = parse_burst)]
    pub loss_burst: f64,
    /// Instead of the levels: speech quality under loss. Calls through a bridge in this
    /// process, one after another, `--loss-calls` at each of 0, 2, 5 and 10 % random loss and
    /// 5 % in bursts of 3 (both directions); the AI double says `--clip` as its greeting and its
    /// answer, the phone says it in between. Writes <out>/loss-calls/: each call's uplink as the
    /// AI heard it, greeting and answer as the phone played them, and calls.csv with the loss
    /// and the bridge's FEC figures, for scripts/loss_calls.sh to score with PESQ-WB.
    #[arg(long, requires = "clip")]
    pub loss_quality: bool,
    /// The speech of `--loss-quality` (a WAV file, 16-bit PCM, any rate).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// Calls at each loss of `--loss-quality`.
    #[arg(long, default_value_t = 3)]
    pub loss_calls: usize,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(percent) if (0.0..=90.0).contains(&percent) => Ok(percent),
        _ => Err(format!("{text:?} is not a percentage from 0 to 90")),
    }
}

fn parse_burst(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(burst) if (1.0..=50.0).contains(&burst) => Ok(burst),
        _ => Err(format!("{text:?} is not a mean burst from 1 to 50 packets")),
    }
}

pub(crate) fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if config::ALL_KEYS.contains(&key) => {
            Ok((key.to_owned(), value.to_owned()))
        }
        Some((key, _)) => Err(format!("{key} is not a setting of the bridge")),
        None => Err("expected KEY=VALUE".to_owned()),
    }
}

pub(crate) fn parse_duration_arg(text: &str) -> Result<Duration, String> {
    parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 500ms, 5s or 2m"))
}

fn parse_bandwidth(text: &str) -> Result<Bandwidth, String> {
    Bandwidth::parse(text).ok_or_else(|| format!("{text:?} is not a bandwidth"))
}

impl LoadtestOptions {
    /// What each phone's wire loses.
    fn call_loss(&self) -> CallLoss {
        let profile = |percent: f64| LossProfile {
            rate: percent / 100.0,
            mean_burst: self.loss_burst,
        };
        CallLoss {
            uplink: profile(self.uplink_loss),
            downlink: profile(self.downlink_loss),
        }
    }

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
    /// Phones that call `bridge` and watch the Graph double; the shared clip encoded once.
    fn new(options: &LoadtestOptions, doubles: &Doubles, bridge: &Target) -> anyhow::Result<Self> {
        Ok(Harness {
            caller: Caller {
                bridge_urls: bridge.urls(),
                app_secret: options.app_secret.clone(),
                line: BusinessLine::default(),
                graph: graph_watch::GraphWatch::start(doubles.graph.clone()),
                http: reqwest::Client::new(),
                clip: Clip::encode(EncoderSettings::default())?,
                loss: options.call_loss(),
            },
            probe: doubles.probe.clone(),
            peer: PeerSettings {
                loopback: true,
                ..PeerSettings::default()
            },
            next_key: 1,
        })
    }

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
    if options.reminders > 0 {
        return reminders::run(&options, options.reminders).await;
    }
    if options.ai_faults > 0 {
        return faults::run(&options, options.ai_faults).await;
    }
    if options.soak > 0 {
        return soak::run(&options, options.soak).await;
    }
    if let (true, Some(clip)) = (options.loss_quality, &options.clip) {
        return loss_quality::run(clip, options.loss_calls.max(1), &options.out).await;
    }
    let levels: Vec<usize> = options.levels.iter().copied().filter(|n| *n > 0).collect();
    anyhow::ensure!(!levels.is_empty(), "no level to run");
    let encoder = options.encoder();
    let doubles = Doubles::start(&options).await?;
    let max_calls = levels.iter().copied().max().unwrap_or(1);
    let bridge = start_target(&options, &doubles, max_calls).await?;
    // Raised only now: the bridge started above would otherwise inherit the policy in every
    // thread, where its own setting raises only its runtime's.
    raise_harness(options.sched_fifo_priority, &bridge).await?;
    println!(
        "Bridge {}, encoder {} bit/s, complexity {}, {}; levels {:?}, hold {:?}.",
        bridge.describe(),
        encoder.bitrate_bps,
        encoder.complexity,
        encoder.max_bandwidth.as_str(),
        levels,
        options.hold
    );
    let mut harness = Harness::new(&options, &doubles, &bridge)?;
    let host = probe_host(options.host_probe).await?;
    let mut codec_samples = vec![codec_parts(encoder, harness.caller.clip.clone()).await];
    let baseline = warm_up(&mut harness, &bridge).await?;
    let mut results = Vec::new();
    for (index, &calls) in levels.iter().enumerate() {
        if index > 0 {
            // Measured again between levels, on the same idle machine; the median is used.
            codec_samples.push(codec_parts(encoder, harness.caller.clip.clone()).await);
        }
        results.push(run_reported_level(&mut harness, &bridge, calls, options.hold).await?);
    }
    let codec = codec_only(&codec_samples, &results);
    harness.close_idle_connections();
    let settled = settle_rss(&bridge, &baseline).await;
    let bridge_processes = bridge.replicas.len();
    let overflow = if options.bridge_url.is_none() && !options.overflow.is_zero() {
        println!();
        println!(
            "Overflow: a second bridge with room for 1 call, which is taken; signed connects for {:?}...",
            options.overflow
        );
        Some(
            overflow::run_overflow(&mut harness, &doubles.graph, &doubles.ai, &options, encoder)
                .await?,
        )
    } else {
        None
    };
    bridge.stop().await;
    doubles.ai.shutdown();
    doubles.graph.shutdown();

    let summary = Summary::of(
        &results,
        summary::Context {
            host: host.as_ref(),
            codec,
            baseline_rss: baseline.rss_mib,
            settled,
            processes: bridge_processes,
            overflow: overflow.as_ref(),
        },
    );
    write_report(&options.out, &results, &summary)?;
    let healthy = results.iter().all(LevelResult::healthy)
        && overflow.as_ref().is_none_or(|o| o.problems.is_empty());
    if options.strict && !healthy {
        println!("FAILED: a call failed or audio was lost (see the problems above).");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The Graph API and Realtime AI doubles the phones and the bridge talk to, and the probe that
/// watches the AI's audio.
struct Doubles {
    graph: GraphDouble,
    ai: RealtimeAiDouble,
    probe: Arc<MarkerProbe>,
}

impl Doubles {
    async fn start(options: &LoadtestOptions) -> anyhow::Result<Doubles> {
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
        Ok(Doubles { graph, ai, probe })
    }
}

/// Runs the harness's runtime thread `SCHED_FIFO` at `priority` (0: leaves it as it is), and
/// says what the bridge applied of its own setting.
async fn raise_harness(priority: u8, bridge: &Target) -> anyhow::Result<()> {
    if priority == 0 {
        return Ok(());
    }
    scheduling::raise_current_thread(priority).map_err(|err| {
        anyhow::anyhow!(
            "running the harness SCHED_FIFO at priority {priority}: {err} (needs CAP_SYS_NICE)"
        )
    })?;
    // A fleet's replicas each report their own: the mean is shown.
    let replicas = bridge.urls().len() as f64;
    let bridge_priority = bridge
        .metrics()
        .await?
        .value("whatsapp_bridge_sched_fifo_priority", &[]);
    println!(
        "SCHED_FIFO priority: harness {priority}, bridge {} (0: scheduled normally).",
        bridge_priority / replicas
    );
    Ok(())
}

/// The bridge under test: attached to (`--bridge-url`), or started here with room for
/// `max_calls`, as one process or as `--replicas` sharing a Redis.
async fn start_target(
    options: &LoadtestOptions,
    doubles: &Doubles,
    max_calls: usize,
) -> anyhow::Result<Target> {
    let encoder = options.encoder();
    let prefix = format!("wvb-loadtest-{}", uuid::Uuid::new_v4().simple());
    let launch = |n: usize, mut settings: Vec<(String, String)>| {
        if options.sched_fifo_priority > 0 {
            settings.push((
                config::SCHED_FIFO_PRIORITY.to_owned(),
                options.sched_fifo_priority.to_string(),
            ));
        }
        settings.extend(options.bridge_settings.iter().cloned());
        let log = options.out.join(match options.replicas {
            1 => "bridge.log".to_owned(),
            _ => format!("bridge-{n}.log"),
        });
        async move {
            Bridge::start(Launch {
                graph_url: doubles.graph.base_url(),
                ai_url: doubles.ai.url(),
                app_secret: &options.app_secret,
                max_calls,
                encoder,
                log: &log,
                cpus: options.bridge_cpus.as_deref(),
                exe: None,
                settings,
            })
            .await
        }
    };
    let bridge = match (&options.bridge_url, options.bridge_pid) {
        (Some(url), Some(pid)) => Target::one(Bridge::attach(url.clone(), pid).await?),
        _ if options.replicas > 1 => {
            let mut replicas = Vec::new();
            for n in 0..options.replicas {
                replicas.push(
                    launch(
                        n,
                        vec![
                            (config::REDIS_URL.to_owned(), options.redis_url.clone()),
                            (config::REDIS_KEY_PREFIX.to_owned(), prefix.clone()),
                            (config::REPLICA_ID.to_owned(), format!("replica-{n}")),
                        ],
                    )
                    .await?,
                );
            }
            Target::fleet(replicas, &options.redis_url)
        }
        _ => Target::one(launch(0, Vec::new()).await?),
    };
    Ok(bridge)
}

/// How steady the host is (1 ms sleeps on the idle harness CPU), unless skipped.
async fn probe_host(duration: Duration) -> anyhow::Result<Option<HostSteadiness>> {
    if duration.is_zero() {
        return Ok(None);
    }
    let host = tokio::task::spawn_blocking(move || HostSteadiness::measure(duration)).await?;
    println!("{}", host.describe());
    Ok(Some(host))
}

/// One short call first, so the baseline is a bridge that has run a call (its code paths paged
/// in, its one-time set-up done) rather than one that never has. Returns the baseline.
async fn warm_up(harness: &mut Harness, bridge: &Target) -> anyhow::Result<ProcSample> {
    println!("Warm-up: one call for 1 s...");
    let warm_up = run_level(harness, bridge, 1, Duration::from_secs(1)).await?;
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
    Ok(baseline)
}

/// Runs one level and prints its figures as it ends.
async fn run_reported_level(
    harness: &mut Harness,
    bridge: &Target,
    calls: usize,
    hold: Duration,
) -> anyhow::Result<LevelResult> {
    println!();
    println!("Level {calls}: dialling {calls} calls at once...");
    let result = run_level(harness, bridge, calls, hold).await?;
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
    if bridge.is_fleet() {
        println!("Level {calls}: {}", summary::fleet_line(&result));
    }
    for problem in &result.problems {
        println!("  problem: {problem}");
    }
    Ok(result)
}

/// The codec-only cost per call from the medians of the measurements, weighted by how much of
/// the time the AI double spoke.
fn codec_only(samples: &[CodecParts], results: &[LevelResult]) -> CodecCost {
    let parts = CodecParts::median(samples);
    let ai_share = ai_audio_share(results);
    // Each echoed turn is followed by one pause.
    let codec = parts.cost(ai_share, CYCLE_FRAMES as f64);
    println!(
        "Codec only (bridge settings, medians of {} runs): decode {:.1} µs, encode {:.1} µs of AI audio; a pause {:.0} µs for its first {:.0} frames, then {:.2} µs a frame (replayed); the AI double sent audio {:.0} % of the time, so {:.1} µs per 20 ms frame = {:.3} % of a core per call.",
        samples.len(),
        parts.decode_us,
        parts.voice_encode_us,
        parts.pause_start_us,
        parts.pause_start_frames,
        parts.pause_replay_us,
        ai_share * 100.0,
        codec.frame_us,
        codec.cores_per_call() * 100.0
    );
    codec
}

/// Waits (bounded) for the idle bridge's RSS to come back near the baseline; returns the RSS
/// (NaN if the bridge is gone) and how long it took.
async fn settle_rss(bridge: &Target, baseline: &ProcSample) -> (f64, Duration) {
    let start = Instant::now();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let idle = loop {
        check.tick().await;
        let Ok(sample) = bridge.sample() else {
            // The bridge is gone: no figure, and the goal is not met.
            break None;
        };
        let slack = RSS_BASELINE_SLACK_MIB * bridge.replicas.len() as f64;
        if sample.rss_mib - baseline.rss_mib <= slack || start.elapsed() >= RSS_SETTLE_TIMEOUT {
            break Some(sample);
        }
    };
    let waited = start.elapsed();
    let rss = idle.map_or(f64::NAN, |s| s.rss_mib);
    println!(
        "Bridge RSS {:.1} MiB {:.1} s after the last call ended (baseline {:.1} MiB); of it anonymous {:.1} MiB (baseline {:.1} MiB), the rest pages of mapped files such as the executable.",
        rss,
        waited.as_secs_f64(),
        baseline.rss_mib,
        idle.map_or(f64::NAN, |s| s.rss_anon_mib),
        baseline.rss_anon_mib
    );
    (rss, waited)
}

/// Prints the table and the summary, and writes the CSV and the plots.
fn write_report(
    out: &std::path::Path,
    results: &[LevelResult],
    summary: &Summary,
) -> anyhow::Result<()> {
    println!();
    print!("{}", report::table(results));
    println!();
    print!("{}", summary.render());
    let csv = out.join("loadtest.csv");
    std::fs::write(&csv, report::csv(results))?;
    match plot::draw(out, results, summary.cpu_fit, summary.rss_fit) {
        Ok(files) => println!(
            "Wrote {} and {}.",
            csv.display(),
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(err) => println!("Wrote {}; no plots: {err:#}", csv.display()),
    }
    Ok(())
}
