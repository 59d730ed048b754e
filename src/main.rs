//! The `whatsapp-voice-bridge` binary: `serve` (the default) and `healthcheck`; with the `sim`
//! feature (the default; the container image leaves it out) also `demo`, `loadtest` and
//! `browser-calls`.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use bridge::app::App;
use bridge::config::{self, Config, ConfigError, LogFormat, ProcessEnv};
use clap::{Parser, Subcommand};
#[cfg(feature = "sim")]
use sim::browser::{self, BrowserCallsOptions};
#[cfg(feature = "sim")]
use sim::demo::{self, DemoOptions};
#[cfg(feature = "sim")]
use sim::loadtest::{self, LoadtestOptions};

/// jemalloc: cheaper than glibc malloc for the many small per-frame buffers, and it returns
/// freed memory to the OS (docs/BENCHMARKS.md). It also serves the C libraries' `malloc`
/// (libopus, SQLite), whose freed memory glibc kept after calls ended.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "whatsapp-voice-bridge",
    version,
    about = "Answers WhatsApp voice calls over WebRTC and bridges them to a realtime speech AI"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook and answer calls (settings from the environment; see .env.example).
    Serve {
        /// HTTP port (overrides PORT).
        #[arg(long)]
        port: Option<u16>,
        /// Any setting as KEY=VALUE (overrides the environment); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        set: Vec<(String, String)>,
    },
    /// Run the bridge locally with simulated callers and a simulated AI: no credentials, no network.
    #[cfg(feature = "sim")]
    Demo(DemoOptions),
    /// Measure a bridge under load: N simulated callers over WebRTC on loopback, ramped by level;
    /// reports setup time, latency, loss, CPU and memory per call (table, CSV, plots).
    #[cfg(feature = "sim")]
    Loadtest(Box<LoadtestOptions>),
    /// Call the bridge from headless Chromium on loopback and score what Chromium plays of the
    /// AI's greeting and of the same words later in the call (PESQ-WB, jitter-buffer stats).
    #[cfg(feature = "sim")]
    BrowserCalls(BrowserCallsOptions),
    /// Exit 0 when the local bridge's /health answers 200 (for container health checks).
    Healthcheck {
        /// Port of the bridge (default: PORT from the environment, else 8080).
        #[arg(long)]
        port: Option<u16>,
    },
}

/// `serve`'s settings: the environment, under `--set` and `--port`.
fn serve_config(port: Option<u16>, set: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut overrides: HashMap<String, String> = set.iter().cloned().collect();
    if let Some(port) = port {
        overrides.insert(config::PORT.to_owned(), port.to_string());
    }
    let env = config::Layered {
        overrides: &overrides,
        base: &ProcessEnv,
    };
    Config::from_env(&env)
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if !config::ALL_KEYS.contains(&key) {
        return Err(format!("{key} is not a setting"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve {
        port: None,
        set: Vec::new(),
    });
    // `serve` reads its settings first: the runtime's threads take its SCHED_FIFO_PRIORITY.
    let config = match &command {
        Command::Serve { port, set } => match serve_config(*port, set) {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("{err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        _ => None,
    };
    let priority = config
        .as_ref()
        .map_or(0, |config| config.sched_fifo_priority);
    let runtime = match build_runtime(priority) {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Command::Serve { .. } => {
            let config = config.expect("read above");
            init_tracing(config.log_format);
            runtime.block_on(serve(config))
        }
        Command::Healthcheck { port } => {
            let port = port
                .or_else(|| std::env::var(config::PORT).ok()?.parse().ok())
                .unwrap_or(8080);
            runtime.block_on(healthcheck(port))
        }
        #[cfg(feature = "sim")]
        Command::Demo(options) => {
            init_tracing_for_demo();
            runtime.block_on(demo::run(options))
        }
        #[cfg(feature = "sim")]
        Command::Loadtest(options) => {
            init_tracing_for_demo();
            runtime.block_on(loadtest::run(*options))
        }
        #[cfg(feature = "sim")]
        Command::BrowserCalls(options) => {
            init_tracing_for_demo();
            runtime.block_on(browser::run(options))
        }
    }
}

/// The async runtime: one thread when the process has one CPU (a `current_thread` scheduler
/// wakes tasks without the cross-thread machinery a one-worker multi-thread scheduler still
/// runs), a worker per CPU otherwise. A parking thread hands its allocator cache back when the
/// last call has ended (`allocator`). With a `SCHED_FIFO` priority, each worker raises itself
/// to it as it starts (the thread that runs `block_on` is raised by `App`, which reports it).
fn build_runtime(sched_fifo_priority: u8) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if sched_fifo_priority > 0 {
        builder.on_thread_start(move || {
            // A refusal shows in `App`'s own attempt, on the thread that runs `block_on`.
            let _ = bridge::scheduling::raise_current_thread(sched_fifo_priority);
        });
    }
    builder
        .enable_all()
        .on_thread_park(bridge::allocator::on_thread_park)
        .build()
}

async fn healthcheck(port: u16) -> ExitCode {
    let url = format!("http://127.0.0.1:{port}/health");
    let client = match reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .build()
    {
        Ok(client) => client,
        Err(_) => return ExitCode::FAILURE,
    };
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("{url}: {}", response.status());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("{url}: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(%err, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let (signals_tx, signals) = tokio::sync::mpsc::channel(2);
    // Every SIGTERM/SIGINT is forwarded: the first starts the drain, the second ends it.
    tokio::spawn(forward_signals(signals_tx));
    match app.run_until_stopped(signals).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(%err, "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn forward_signals(signals: tokio::sync::mpsc::Sender<()>) {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        #[cfg(unix)]
        let term = async {
            match terminate.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        if signals.send(()).await.is_err() {
            return;
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::SERVE_LOG_FILTER));
    // Colours only on a terminal: a log file or collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The demo prints its own progress; the bridge's logs only show warnings unless RUST_LOG says otherwise.
#[cfg(feature = "sim")]
fn init_tracing_for_demo() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::QUIET_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
