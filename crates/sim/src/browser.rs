//! `whatsapp-voice-bridge browser-calls`: what a real libwebrtc receiver hears of the AI's first
//! words. Calls from headless Chromium (driven over the DevTools protocol) to a bridge process
//! on loopback wired to the doubles; the AI double says a speech clip as its greeting and the
//! same clip again as its answer to the caller's first turn. Each page records what Chromium
//! plays out and reads `getStats()`; both renditions are scored with wideband PESQ.
//!
//! - [`chromium`]: the browser process and its DevTools connection;
//! - [`page`]: the callers' page (caller.js) and its server; [`offer`]: the offer as sent;
//! - [`call`]: one call's flow; [`score`]: PESQ by score.py; [`report`]: the table.

mod call;
mod chromium;
mod offer;
mod page;
mod report;
mod score;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;

use crate::bridge_process::{Bridge, Launch};
use crate::graph_double::{GraphDouble, GraphDoubleConfig};
use crate::loadtest::parse_setting;
use crate::realtime_ai::{AiDoubleConfig, AiMode, RealtimeAiDouble};
use crate::stack::APP_SECRET;
use bridge::config;
use bridge::media::codec::EncoderSettings;
use testkit::audio;

use call::{CallRecord, Line};
pub use report::Row;

/// The AI double's audio rate.
const AI_RATE: u32 = 24_000;

#[derive(clap::Args, Clone, Debug)]
#[command(after_help = "\
Needs Chromium (Debian package `chromium`) and python3 with numpy, scipy and pesq; \
scripts/browser_calls.sh installs them, makes the clip with espeak-ng and runs this.")]
pub struct BrowserCallsOptions {
    /// Calls to place.
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// Calls in progress at once (1: one after another).
    #[arg(long, default_value_t = 1)]
    pub at_once: usize,
    /// What the AI says: a 16-bit PCM WAV (any rate, mono), spoken as the greeting and again as
    /// the answer to the caller's first turn.
    #[arg(long)]
    pub clip: PathBuf,
    /// Directory for the recordings, the stats and the table.
    #[arg(long, default_value = "target/browser-calls")]
    pub out: PathBuf,
    /// The Chromium executable.
    #[arg(long, default_value = "chromium")]
    pub chromium: String,
    /// The Python that runs the scorer (needs numpy, scipy and pesq).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// A setting for the bridge process, as `KEY=VALUE` (repeatable).
    #[arg(long = "bridge-setting", value_parser = parse_setting)]
    pub bridge_settings: Vec<(String, String)>,
    /// The bridge binary to measure (its `serve`); default: this one. Lets one harness compare
    /// two builds.
    #[arg(long)]
    pub bridge_exe: Option<PathBuf>,
}

/// What a run measured.
pub struct Measured {
    /// One row per call that completed, by call number.
    pub rows: Vec<Row>,
    /// Calls that failed (each printed as it failed).
    pub failures: usize,
    /// Chromium's product and version.
    pub chromium: String,
}

pub async fn run(options: BrowserCallsOptions) -> ExitCode {
    match run_inner(options).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("browser-calls failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_inner(options: BrowserCallsOptions) -> anyhow::Result<ExitCode> {
    let measured = measure(&options).await?;
    let table = report::table(&measured.rows);
    let summary = report::summary(&measured.rows, options.calls);
    println!();
    print!("{table}");
    println!();
    println!("{summary}");
    std::fs::write(
        options.out.join("browser-calls.md"),
        format!("{}\n\n{table}\n{summary}\n", measured.chromium),
    )?;
    println!(
        "Recordings, stats and the table are in {}.",
        options.out.display()
    );
    Ok(if measured.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Starts the doubles, the bridge and Chromium, places the calls and scores them; prints a line
/// per call as it ends.
pub async fn measure(options: &BrowserCallsOptions) -> anyhow::Result<Measured> {
    anyhow::ensure!(options.calls > 0 && options.at_once > 0, "nothing to run");
    std::fs::create_dir_all(&options.out)?;
    let (rate, clip) = audio::read_wav(&options.clip)
        .with_context(|| format!("reading {}", options.clip.display()))?;
    let clip: Arc<[i16]> = audio::resample(&clip, rate, AI_RATE).into();
    let clip_seconds = clip.len() as f64 / f64::from(AI_RATE);
    let reference = options.out.join("reference.wav");
    audio::write_wav(&reference, AI_RATE, &clip)?;

    let graph = GraphDouble::start(GraphDoubleConfig::default()).await?;
    let ai_config = AiDoubleConfig {
        mode: AiMode::Speech(clip.clone()),
        ..AiDoubleConfig::default()
    };
    let ai = RealtimeAiDouble::start(ai_config.clone()).await?;
    // The bridge greets; it admits by count, as the host's CPU (Chromium's included) is not
    // what is measured here.
    let mut settings = vec![
        (
            config::ASSISTANT_GREETING.to_owned(),
            config::DEFAULT_GREETING.to_owned(),
        ),
        (config::ADMISSION.to_owned(), "count".to_owned()),
    ];
    settings.extend(options.bridge_settings.iter().cloned());
    let bridge = Bridge::start(Launch {
        graph_url: graph.base_url(),
        ai_url: ai.url(),
        app_secret: APP_SECRET,
        max_calls: options.calls,
        encoder: EncoderSettings::default(),
        log: &options.out.join("bridge.log"),
        cpus: None,
        exe: options.bridge_exe.as_deref(),
        settings,
    })
    .await?;
    let chromium =
        chromium::Chromium::launch(&options.chromium, &options.out.join("chromium.log")).await?;
    let pages = page::PageServer::start().await?;
    println!(
        "{} calls from headless {} ({} at once) to the bridge at {} on {}; the AI says a {:.2} s clip \
         (deltas of {} ms at {}× real time, first after {} ms) as its greeting and again after the caller's first turn.",
        options.calls,
        chromium.product,
        options.at_once,
        bridge.url,
        cpu_model(),
        clip_seconds,
        ai_config.delta_ms,
        ai_config.production_speed,
        ai_config.first_audio_latency.as_millis(),
    );

    let http = reqwest::Client::new();
    let line = Line {
        bridge_url: &bridge.url,
        app_secret: APP_SECRET,
        graph: &graph,
        http: &http,
        chromium: &chromium,
        pages: &pages,
        clip_seconds,
    };
    let mut calls = futures_util::stream::iter(1..=options.calls as u64)
        .map(|key| {
            let (line, bridge) = (&line, &bridge);
            async move {
                let before = bridge.metrics().await.ok();
                let mut record = call::place(line, key)
                    .await
                    .with_context(|| format!("call {key}"))?;
                let after = bridge.metrics().await.ok();
                record.bridge_sent_late = before.zip(after).map(|(before, after)| {
                    (after.frames_sent_late() - before.frames_sent_late()).max(0.0) as u64
                });
                anyhow::Ok(record)
            }
        })
        .buffer_unordered(options.at_once);
    let mut rows = Vec::new();
    let mut failures = 0;
    while let Some(placed) = calls.next().await {
        let scored = match placed {
            Ok(record) => score_call(options, &reference, &record, clip_seconds).await,
            Err(err) => Err(err),
        };
        match scored {
            Ok(row) => {
                println!(
                    "call {}: greeting PESQ-WB {} (correlation {}), later {} ({}); concealed {} samples, accelerated {}, decelerated {}; max jitter {} ms; connected → greeting {} ms.",
                    row.key,
                    fmt(row.greeting_pesq),
                    fmt(row.correlation[0]),
                    fmt(row.later_pesq),
                    fmt(row.correlation[1]),
                    row.concealed_samples,
                    row.accelerated,
                    row.decelerated,
                    fmt(row.max_jitter_ms),
                    row.connected_to_greeting_ms
                        .map_or("–".into(), |ms| format!("{ms:.0}")),
                );
                rows.push(row);
            }
            Err(err) => {
                failures += 1;
                println!("{err:#}");
            }
        }
    }
    drop(calls);
    rows.sort_by_key(|row| row.key);
    let chromium_product = chromium.product.clone();
    drop(pages);
    chromium.stop().await;
    bridge.stop().await;
    ai.shutdown();
    graph.shutdown();
    Ok(Measured {
        rows,
        failures,
        chromium: chromium_product,
    })
}

/// Keeps the call's recording and stats on disk and scores both renditions.
async fn score_call(
    options: &BrowserCallsOptions,
    reference: &Path,
    record: &CallRecord,
    clip_seconds: f64,
) -> anyhow::Result<Row> {
    let recording = options.out.join(format!("call-{:02}.wav", record.key));
    audio::write_wav(&recording, record.page.rate, &record.page.samples()?)?;
    let stats = serde_json::json!({
        "recordStartFrame": record.page.record_start_frame,
        "connectedFrame": record.page.connected_frame,
        "onsets": record.onsets,
        "stats": record.page.stats,
    });
    std::fs::write(
        options.out.join(format!("call-{:02}.json", record.key)),
        serde_json::to_vec_pretty(&stats)?,
    )?;
    let renditions =
        score::renditions(&options.python, reference, &recording, &record.onsets).await?;
    Ok(Row::of(record, &renditions, clip_seconds))
}

fn fmt(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"))
}

/// The CPU's model name (from /proc/cpuinfo), for the record.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".to_owned())
}
