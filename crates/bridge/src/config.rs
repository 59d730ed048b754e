//! Every setting, read from the environment (or a map in tests) and validated at start.
//!
//! All invalid values are reported together; `main` exits with code 64 (EX_USAGE) on any.
//! Each key is documented in `.env.example`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::media::codec::{Bandwidth, EncoderSettings};
use crate::media::keypad::keypad_instructions;
use crate::realtime::client::Provider;
use crate::scheduling;

pub const PORT: &str = "PORT";
pub const BIND_ADDR: &str = "BIND_ADDR";
pub const WHATSAPP_APP_SECRET: &str = "WHATSAPP_APP_SECRET";
pub const WHATSAPP_VERIFY_TOKEN: &str = "WHATSAPP_VERIFY_TOKEN";
pub const WHATSAPP_GRAPH_URL: &str = "WHATSAPP_GRAPH_URL";
pub const WHATSAPP_GRAPH_VERSION: &str = "WHATSAPP_GRAPH_VERSION";
pub const WHATSAPP_PHONE_NUMBER_ID: &str = "WHATSAPP_PHONE_NUMBER_ID";
pub const WHATSAPP_ACCESS_TOKEN: &str = "WHATSAPP_ACCESS_TOKEN";
pub const GRAPH_TIMEOUT: &str = "GRAPH_TIMEOUT";
pub const MAX_CONCURRENT_CALLS: &str = "MAX_CONCURRENT_CALLS";
pub const ADMISSION: &str = "ADMISSION";
pub const ADMISSION_CPU_TARGET: &str = "ADMISSION_CPU_TARGET";
pub const SCHED_FIFO_PRIORITY: &str = "SCHED_FIFO_PRIORITY";
pub const ADMISSION_LATENCY_BUDGET: &str = "ADMISSION_LATENCY_BUDGET";
pub const MAX_CALL_DURATION: &str = "MAX_CALL_DURATION";
pub const ANSWER_DEADLINE: &str = "ANSWER_DEADLINE";
pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
pub const OPENAI_REALTIME_URL: &str = "OPENAI_REALTIME_URL";
pub const OPENAI_REALTIME_MODEL: &str = "OPENAI_REALTIME_MODEL";
pub const OPENAI_VOICE: &str = "OPENAI_VOICE";
pub const OPENAI_TRANSCRIBE_MODEL: &str = "OPENAI_TRANSCRIBE_MODEL";
pub const AZURE_OPENAI_ENDPOINT: &str = "AZURE_OPENAI_ENDPOINT";
pub const AZURE_OPENAI_API_KEY: &str = "AZURE_OPENAI_API_KEY";
pub const AZURE_OPENAI_DEPLOYMENT: &str = "AZURE_OPENAI_DEPLOYMENT";
pub const ASSISTANT_INSTRUCTIONS: &str = "ASSISTANT_INSTRUCTIONS";
pub const ASSISTANT_INSTRUCTIONS_FILE: &str = "ASSISTANT_INSTRUCTIONS_FILE";
pub const ASSISTANT_GREETING: &str = "ASSISTANT_GREETING";
pub const KEYPAD_INSTRUCTIONS: &str = "KEYPAD_INSTRUCTIONS";
pub const GREETING_LEAD: &str = "GREETING_LEAD";
pub const WEBRTC_PUBLIC_IP: &str = "WEBRTC_PUBLIC_IP";
pub const WEBRTC_UDP_PORTS: &str = "WEBRTC_UDP_PORTS";
pub const WEBRTC_LOOPBACK: &str = "WEBRTC_LOOPBACK";
pub const STUN_URLS: &str = "STUN_URLS";
pub const LOG_FORMAT: &str = "LOG_FORMAT";
pub const METRICS_PORT: &str = "METRICS_PORT";
pub const ADMIN_TOKEN: &str = "ADMIN_TOKEN";
pub const DRAIN_TIMEOUT: &str = "DRAIN_TIMEOUT";
pub const SUPABASE_URL: &str = "SUPABASE_URL";
pub const SUPABASE_SERVICE_ROLE_KEY: &str = "SUPABASE_SERVICE_ROLE_KEY";
pub const DATA_DIR: &str = "DATA_DIR";
pub const MEMORY_TURNS: &str = "MEMORY_TURNS";
pub const MEMORY_DAYS: &str = "MEMORY_DAYS";
pub const TOOL_TIMEOUT: &str = "TOOL_TIMEOUT";
pub const IDLE_TIMEOUT: &str = "IDLE_TIMEOUT";
pub const AI_BREAKER_THRESHOLD: &str = "AI_BREAKER_THRESHOLD";
pub const AI_BREAKER_PROBE_INTERVAL: &str = "AI_BREAKER_PROBE_INTERVAL";
pub const OPUS_BITRATE: &str = "OPUS_BITRATE";
pub const OPUS_COMPLEXITY: &str = "OPUS_COMPLEXITY";
pub const OPUS_BANDWIDTH: &str = "OPUS_BANDWIDTH";
pub const REDIS_URL: &str = "REDIS_URL";
pub const REDIS_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";
pub const REPLICA_ID: &str = "REPLICA_ID";
pub const REMINDERS: &str = "REMINDERS";
pub const REMINDER_POLL_INTERVAL: &str = "REMINDER_POLL_INTERVAL";
pub const REMINDER_MAX_ATTEMPTS: &str = "REMINDER_MAX_ATTEMPTS";
pub const REMINDER_WINDOW: &str = "REMINDER_WINDOW";
pub const REMINDER_RETRY_DELAY: &str = "REMINDER_RETRY_DELAY";
pub const REMINDER_CONCURRENCY: &str = "REMINDER_CONCURRENCY";
pub const REMINDER_CLAIM_LEASE: &str = "REMINDER_CLAIM_LEASE";
pub const REMINDER_TEMPLATE: &str = "REMINDER_TEMPLATE";
pub const REMINDER_TEMPLATE_LANGUAGE: &str = "REMINDER_TEMPLATE_LANGUAGE";
pub const CALLBACK_ON_BUSY: &str = "CALLBACK_ON_BUSY";
pub const TRANSCRIPT_RETENTION: &str = "TRANSCRIPT_RETENTION";
pub const CALLER_CALLS_PER_HOUR: &str = "CALLER_CALLS_PER_HOUR";
pub const CALLER_CALLS_PER_DAY: &str = "CALLER_CALLS_PER_DAY";
pub const CALLER_MINUTES_PER_DAY: &str = "CALLER_MINUTES_PER_DAY";
pub const CALLER_OPEN_TASKS: &str = "CALLER_OPEN_TASKS";
pub const CALLER_PENDING_REMINDERS: &str = "CALLER_PENDING_REMINDERS";
pub const TOOL_CALLS_PER_CALL: &str = "TOOL_CALLS_PER_CALL";
pub const BLOCK_LIST_REFRESH: &str = "BLOCK_LIST_REFRESH";
pub const HTTP_HEADER_TIMEOUT: &str = "HTTP_HEADER_TIMEOUT";
pub const HTTP_BODY_TIMEOUT: &str = "HTTP_BODY_TIMEOUT";
pub const HTTP_IDLE_TIMEOUT: &str = "HTTP_IDLE_TIMEOUT";
pub const HTTP_MAX_CONNECTIONS: &str = "HTTP_MAX_CONNECTIONS";

/// Every key, for `.env.example` checks and `--help`.
pub const ALL_KEYS: &[&str] = &[
    PORT,
    BIND_ADDR,
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    WHATSAPP_GRAPH_URL,
    WHATSAPP_GRAPH_VERSION,
    WHATSAPP_PHONE_NUMBER_ID,
    WHATSAPP_ACCESS_TOKEN,
    GRAPH_TIMEOUT,
    MAX_CONCURRENT_CALLS,
    ADMISSION,
    ADMISSION_CPU_TARGET,
    ADMISSION_LATENCY_BUDGET,
    SCHED_FIFO_PRIORITY,
    MAX_CALL_DURATION,
    ANSWER_DEADLINE,
    OPENAI_API_KEY,
    OPENAI_REALTIME_URL,
    OPENAI_REALTIME_MODEL,
    OPENAI_VOICE,
    OPENAI_TRANSCRIBE_MODEL,
    AZURE_OPENAI_ENDPOINT,
    AZURE_OPENAI_API_KEY,
    AZURE_OPENAI_DEPLOYMENT,
    ASSISTANT_INSTRUCTIONS,
    ASSISTANT_INSTRUCTIONS_FILE,
    ASSISTANT_GREETING,
    KEYPAD_INSTRUCTIONS,
    GREETING_LEAD,
    WEBRTC_PUBLIC_IP,
    WEBRTC_UDP_PORTS,
    WEBRTC_LOOPBACK,
    STUN_URLS,
    LOG_FORMAT,
    METRICS_PORT,
    ADMIN_TOKEN,
    DRAIN_TIMEOUT,
    SUPABASE_URL,
    SUPABASE_SERVICE_ROLE_KEY,
    DATA_DIR,
    MEMORY_TURNS,
    MEMORY_DAYS,
    TOOL_TIMEOUT,
    IDLE_TIMEOUT,
    AI_BREAKER_THRESHOLD,
    AI_BREAKER_PROBE_INTERVAL,
    OPUS_BITRATE,
    OPUS_COMPLEXITY,
    OPUS_BANDWIDTH,
    REDIS_URL,
    REDIS_KEY_PREFIX,
    REPLICA_ID,
    REMINDERS,
    REMINDER_POLL_INTERVAL,
    REMINDER_MAX_ATTEMPTS,
    REMINDER_WINDOW,
    REMINDER_RETRY_DELAY,
    REMINDER_CONCURRENCY,
    REMINDER_CLAIM_LEASE,
    REMINDER_TEMPLATE,
    REMINDER_TEMPLATE_LANGUAGE,
    CALLBACK_ON_BUSY,
    TRANSCRIPT_RETENTION,
    CALLER_CALLS_PER_HOUR,
    CALLER_CALLS_PER_DAY,
    CALLER_MINUTES_PER_DAY,
    CALLER_OPEN_TASKS,
    CALLER_PENDING_REMINDERS,
    TOOL_CALLS_PER_CALL,
    BLOCK_LIST_REFRESH,
    HTTP_HEADER_TIMEOUT,
    HTTP_BODY_TIMEOUT,
    HTTP_IDLE_TIMEOUT,
    HTTP_MAX_CONNECTIONS,
];

/// Where the caller's data lives.
#[derive(Clone, Debug)]
pub enum StoreSettings {
    /// Supabase over PostgREST.
    Supabase {
        url: String,
        service_role_key: SecretString,
    },
    /// The embedded on-disk database under this directory.
    Embedded { data_dir: PathBuf },
}

/// How the replicas of a fleet share call state (`REDIS_URL` set).
#[derive(Clone)]
pub struct FleetConfig {
    pub url: SecretString,
    pub prefix: String,
    /// `None`: named after the container or host, with a random suffix.
    pub replica: Option<String>,
}

/// How reminders and callbacks are delivered (see `outreach`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReminderSettings {
    /// Whether this replica delivers due reminders (`REMINDERS=off`: another process does).
    pub enabled: bool,
    /// How often the store is asked for due reminders (a callback queued here wakes it at once).
    pub poll_interval: Duration,
    /// Calls per reminder before the message fallback.
    pub max_attempts: u32,
    /// Calls are tried only this long after the due time; then the message fallback.
    pub window: Duration,
    /// The wait before the first retry; it doubles with each further one.
    pub retry_delay: Duration,
    /// Reminders delivered at once by this replica.
    pub concurrency: usize,
    /// How long a claim holds before another replica may take the reminder over (renewed
    /// while a delivery runs).
    pub claim_lease: Duration,
    /// An approved message template (one body parameter: the text) for messages outside the
    /// 24-hour customer-service window; `None`: only free-form messages inside it.
    pub template: Option<String>,
    pub template_language: String,
    /// A caller refused at capacity is told the lines are busy and called back.
    pub callback_on_busy: bool,
}

/// What one caller (one number) may use; every limit 0 means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerLimitSettings {
    /// Inbound calls admitted per number per clock hour (UTC).
    pub calls_per_hour: u32,
    /// Inbound calls admitted per number per day (UTC).
    pub calls_per_day: u32,
    /// Minutes of inbound calls per number per day (UTC); a call is cut to what is left.
    pub minutes_per_day: u32,
    /// Open tasks per number; `add_task` refuses past it.
    pub open_tasks: u32,
    /// Pending reminders per number; `add_reminder` refuses past it.
    pub pending_reminders: u32,
    /// Tool calls per call; past it every tool call is answered with an error.
    pub tool_calls_per_call: u32,
    /// How often the block list is read again from the store (other replicas' changes).
    pub block_list_refresh: Duration,
}

impl Default for CallerLimitSettings {
    fn default() -> Self {
        Self {
            calls_per_hour: 20,
            calls_per_day: 60,
            minutes_per_day: 120,
            open_tasks: 200,
            pending_reminders: 50,
            tool_calls_per_call: 50,
            block_list_refresh: Duration::from_secs(30),
        }
    }
}

/// How long an HTTP client may take, and how many connections a listener holds (both the main
/// listener and `METRICS_PORT`'s), so that stalled or idle clients cannot use up the process's
/// file descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A new connection must send a request's complete headers within this; so must a
    /// kept-alive one from the first byte of its next request.
    pub header_timeout: Duration,
    /// A request's body must have arrived this long after its headers, or it is answered 408.
    pub body_timeout: Duration,
    /// A kept-alive connection with no new request this long after its last response is
    /// closed.
    pub idle_timeout: Duration,
    /// Connections a listener holds at once; past it a new one is closed at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    /// Webhook deliveries send their few kilobytes at once: 10 s for the headers and 30 s for
    /// a body (1 MiB at most, `WEBHOOK_BODY_LIMIT`: 35 KB/s) leave room for a slow network.
    /// 75 s idle outlasts the 60 s idle timeout of common load balancers, so that they, not
    /// the bridge, close an idle connection (no race on a reused one). 1024 connections are
    /// ten per call at the default 100 calls, far more than Meta and the probes open.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            max_connections: 1024,
        }
    }
}

/// The caller's speech is transcribed by this OpenAI model unless `OPENAI_TRANSCRIBE_MODEL` says
/// otherwise.
pub const DEFAULT_TRANSCRIBE_MODEL: &str = "gpt-4o-mini-transcribe";

/// Steady packets the caller's phone receives before the AI's first words (`GREETING_LEAD`):
/// a receiver's adaptive jitter buffer settles on them instead of stretching the greeting.
pub const DEFAULT_GREETING_LEAD: Duration = Duration::from_millis(1000);

/// The instructions for the AI's first words once a call is answered.
pub const DEFAULT_GREETING: &str =
    "Greet the caller in one short sentence and ask how you can help.";

const DEFAULT_INSTRUCTIONS: &str = "You are a friendly phone assistant answering a WhatsApp voice \
call for a business. Keep every answer to one or two short sentences, speak naturally, and ask one \
question at a time.";

/// Where settings come from: the process environment in production, a map in tests.
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// An environment with overrides (command-line flags) on top.
pub struct Layered<'a> {
    pub overrides: &'a HashMap<String, String>,
    pub base: &'a dyn EnvSource,
}

impl EnvSource for Layered<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.overrides
            .get(key)
            .cloned()
            .or_else(|| self.base.get(key))
    }
}

/// Log filters used when RUST_LOG is unset: `serve`'s, and the quieter one of the demo, the load
/// harness and the bridges they start. The WebRTC stack's DTLS and ICE crates warn on every call
/// about things that are expected here (no SNI name for the DTLS client, an ICE check tick before
/// the caller's candidates are paired), so only their errors are shown.
pub const SERVE_LOG_FILTER: &str = "info,webrtc=warn,rtc=warn,rtc_dtls=error,rtc_ice=error";
pub const QUIET_LOG_FILTER: &str = "warn,webrtc=error,rtc=error,rtc_dtls=error,rtc_ice=error";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// The validated configuration of one bridge process.
#[derive(Clone)]
pub struct Config {
    pub port: u16,
    pub bind_addr: IpAddr,
    pub app_secret: SecretString,
    pub verify_token: SecretString,
    pub graph_url: String,
    pub graph_version: String,
    pub phone_number_id: String,
    pub access_token: SecretString,
    pub graph_timeout: Duration,
    pub max_concurrent_calls: usize,
    /// How a new call is judged besides `max_concurrent_calls`: by the host's measured headroom
    /// or by the count alone.
    pub admission: AdmissionSettings,
    /// `SCHED_FIFO` priority of the runtime's threads (`scheduling`); 0: scheduled normally.
    pub sched_fifo_priority: u8,
    pub max_call_duration: Duration,
    pub answer_deadline: Duration,
    pub ai_provider: Provider,
    /// `None`: the provider's default voice.
    pub voice: Option<String>,
    /// The model (on Azure, the deployment) that transcribes the caller; `None`: no transcripts.
    pub transcription_model: Option<String>,
    pub instructions: String,
    /// What the AI is asked to say first; `None` (`ASSISTANT_GREETING=off`): it waits for the caller.
    pub greeting: Option<String>,
    /// How long the AI's audio is held after media starts, the bridge's silence going out.
    pub greeting_lead: Duration,
    pub public_ip: Option<IpAddr>,
    pub udp_ports: Option<RangeInclusive<u16>>,
    pub loopback: bool,
    pub stun_urls: Vec<String>,
    pub log_format: LogFormat,
    /// Serve `/metrics` on this port (same bind address) instead of the main one.
    pub metrics_port: Option<u16>,
    /// Bearer token of the admin API; `None` disables it (its routes answer 404).
    pub admin_token: Option<SecretString>,
    /// How long live calls may go on after a shutdown signal before they are ended.
    pub drain_timeout: Duration,
    pub store: StoreSettings,
    /// Recent turns remembered across calls, and how far back.
    pub memory_turns: usize,
    pub memory_days: u32,
    pub tool_timeout: Duration,
    /// No speech either way for this long: the AI asks whether the caller is still there, and
    /// after as long again says goodbye and the call ends. `None` (`off`): never.
    pub idle_timeout: Option<Duration>,
    /// Failed attempts in a row to open an AI session (any call's) after which new calls are
    /// refused until the AI answers again; 0: never.
    pub ai_breaker_threshold: u32,
    /// While the breaker is open, how often a session is tried.
    pub ai_breaker_probe_interval: Duration,
    /// How the AI's voice is encoded for the caller.
    pub encoder: EncoderSettings,
    /// Call state shared with the other replicas; `None`: one process, state in memory.
    pub fleet: Option<FleetConfig>,
    pub reminders: ReminderSettings,
    /// Transcript turns and call-log rows older than this are purged; `None` (`0`/`off`):
    /// kept forever.
    pub transcript_retention: Option<Duration>,
    pub caller_limits: CallerLimitSettings,
    pub http: HttpLimits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are left out on purpose.
        f.debug_struct("Config")
            .field("port", &self.port)
            .field("bind_addr", &self.bind_addr)
            .field("graph_url", &self.graph_url)
            .field("graph_version", &self.graph_version)
            .field("phone_number_id", &self.phone_number_id)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("loopback", &self.loopback)
            .field("fleet", &self.fleet.is_some())
            .finish_non_exhaustive()
    }
}

/// Every problem found, one line each.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

/// Collects values and problems while reading.
struct Reader<'a> {
    env: &'a dyn EnvSource,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn raw(&self, key: &str) -> Option<String> {
        self.env
            .get(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    fn required(&mut self, key: &str) -> String {
        self.raw(key).unwrap_or_else(|| {
            self.problems.push(format!("{key} is required"));
            String::new()
        })
    }

    fn parsed<T: std::str::FromStr>(&mut self, key: &str, default: T, what: &str) -> T {
        match self.raw(key) {
            None => default,
            Some(value) => value.parse().unwrap_or_else(|_| {
                self.problems.push(format!("{key}={value:?} is not {what}"));
                default
            }),
        }
    }

    fn duration(&mut self, key: &str, default: Duration) -> Duration {
        match self.raw(key) {
            None => default,
            Some(value) => parse_duration(&value).unwrap_or_else(|| {
                self.problems.push(format!(
                    "{key}={value:?} is not a duration (write e.g. 250ms, 30s, 5m)"
                ));
                default
            }),
        }
    }
}

/// `250ms`, `30s`, `5m`, `1h`, `90d`, or bare seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(number)),
        "" | "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number * 60)),
        "h" => Some(Duration::from_secs(number.checked_mul(3600)?)),
        "d" => Some(Duration::from_secs(number.checked_mul(86_400)?)),
        _ => None,
    }
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let (low, high) = text.split_once('-')?;
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (low > 0 && low <= high).then_some(low..=high)
}

/// The Opus encoder settings; defaults from [`EncoderSettings::default`] (chosen by measurement,
/// see docs/BENCHMARKS.md).
fn read_encoder(r: &mut Reader) -> EncoderSettings {
    let defaults = EncoderSettings::default();
    let bitrate_bps = r.parsed(OPUS_BITRATE, defaults.bitrate_bps, "a bitrate in bit/s");
    if !(6_000..=128_000).contains(&bitrate_bps) {
        r.problems.push(format!(
            "{OPUS_BITRATE}={bitrate_bps} is outside 6000..=128000 bit/s"
        ));
    }
    let complexity = r.parsed(OPUS_COMPLEXITY, defaults.complexity, "0 to 10");
    if !(0..=10).contains(&complexity) {
        r.problems
            .push(format!("{OPUS_COMPLEXITY}={complexity} is outside 0..=10"));
    }
    let max_bandwidth = match r.raw(OPUS_BANDWIDTH) {
        None => defaults.max_bandwidth,
        Some(text) => Bandwidth::parse(&text).unwrap_or_else(|| {
            r.problems.push(format!(
                "{OPUS_BANDWIDTH}={text:?} is not narrowband, mediumband, wideband or superwideband"
            ));
            defaults.max_bandwidth
        }),
    };
    EncoderSettings {
        bitrate_bps,
        complexity,
        max_bandwidth,
        ..defaults
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Config {
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, ConfigError> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        let port = r.parsed(PORT, 8080u16, "a port number");
        let bind_addr = r.parsed(BIND_ADDR, IpAddr::from([0, 0, 0, 0]), "an IP address");
        let app_secret = SecretString::from(r.required(WHATSAPP_APP_SECRET));
        let verify_token = SecretString::from(r.required(WHATSAPP_VERIFY_TOKEN));
        let graph_url = r
            .string(WHATSAPP_GRAPH_URL, "https://graph.facebook.com")
            .trim_end_matches('/')
            .to_owned();
        if !(graph_url.starts_with("http://") || graph_url.starts_with("https://")) {
            r.problems.push(format!(
                "{WHATSAPP_GRAPH_URL}={graph_url:?} is not an http(s) URL"
            ));
        }
        let graph_version = r.string(WHATSAPP_GRAPH_VERSION, "v23.0");
        let phone_number_id = r.required(WHATSAPP_PHONE_NUMBER_ID);
        let access_token = SecretString::from(r.required(WHATSAPP_ACCESS_TOKEN));
        let graph_timeout = r.duration(GRAPH_TIMEOUT, Duration::from_secs(10));
        let max_concurrent_calls = r.parsed(MAX_CONCURRENT_CALLS, 100usize, "a number of calls");
        if max_concurrent_calls == 0 {
            r.problems
                .push(format!("{MAX_CONCURRENT_CALLS} must be at least 1"));
        }
        let admission = read_admission(&mut r);
        let sched_fifo_priority = r.parsed(SCHED_FIFO_PRIORITY, 0u8, "a priority from 0 to 99");
        if sched_fifo_priority > scheduling::MAX_PRIORITY {
            r.problems.push(format!(
                "{SCHED_FIFO_PRIORITY}={sched_fifo_priority} is not a priority from 0 to 99"
            ));
        }
        let max_call_duration = r.duration(MAX_CALL_DURATION, Duration::from_secs(3600));
        let answer_deadline = r.duration(ANSWER_DEADLINE, Duration::from_secs(20));

        let ai_provider = read_provider(&mut r);
        let voice = r.raw(OPENAI_VOICE);
        // OpenAI has a default transcription model; on Azure it is a deployment of the
        // customer's, so nothing is assumed there.
        let transcription_model = match r.raw(OPENAI_TRANSCRIBE_MODEL) {
            Some(value) if value.eq_ignore_ascii_case("off") => None,
            Some(value) => Some(value),
            None => match ai_provider {
                Provider::OpenAi { .. } => Some(DEFAULT_TRANSCRIBE_MODEL.to_owned()),
                Provider::Azure { .. } => None,
            },
        };
        let instructions = match (
            r.raw(ASSISTANT_INSTRUCTIONS),
            r.raw(ASSISTANT_INSTRUCTIONS_FILE),
        ) {
            (Some(text), _) => text,
            (None, Some(path)) => std::fs::read_to_string(PathBuf::from(&path))
                .map(|text| text.trim().to_owned())
                .unwrap_or_else(|err| {
                    r.problems.push(format!(
                        "{ASSISTANT_INSTRUCTIONS_FILE}={path:?} cannot be read: {err}"
                    ));
                    String::new()
                }),
            (None, None) => DEFAULT_INSTRUCTIONS.to_owned(),
        };
        // What the business says the keys mean, after its instructions.
        let instructions = match r.raw(KEYPAD_INSTRUCTIONS) {
            Some(meaning) if instructions.is_empty() => keypad_instructions(&meaning),
            Some(meaning) => format!("{instructions}\n\n{}", keypad_instructions(&meaning)),
            None => instructions,
        };

        let greeting_lead = r.duration(GREETING_LEAD, DEFAULT_GREETING_LEAD);
        let greeting = match r.raw(ASSISTANT_GREETING) {
            None => Some(DEFAULT_GREETING.to_owned()),
            Some(text) if text.eq_ignore_ascii_case("off") => None,
            Some(text) => Some(text),
        };
        let public_ip = match r.raw(WEBRTC_PUBLIC_IP) {
            None => None,
            Some(value) => match value.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    r.problems
                        .push(format!("{WEBRTC_PUBLIC_IP}={value:?} is not an IP address"));
                    None
                }
            },
        };
        let udp_ports = match r.raw(WEBRTC_UDP_PORTS) {
            None => None,
            Some(value) => {
                let range = parse_port_range(&value);
                if range.is_none() {
                    r.problems.push(format!(
                        "{WEBRTC_UDP_PORTS}={value:?} is not a port range like 40000-40999"
                    ));
                }
                range
            }
        };
        let loopback = match r.raw(WEBRTC_LOOPBACK) {
            None => false,
            Some(value) => parse_bool(&value).unwrap_or_else(|| {
                r.problems
                    .push(format!("{WEBRTC_LOOPBACK}={value:?} is not true or false"));
                false
            }),
        };
        let stun_urls = r
            .raw(STUN_URLS)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for url in &stun_urls {
            if !url.starts_with("stun:") {
                r.problems.push(format!(
                    "{STUN_URLS} entry {url:?} does not start with stun:"
                ));
            }
        }
        let log_format = match r.string(LOG_FORMAT, "pretty").as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                r.problems
                    .push(format!("{LOG_FORMAT}={other:?} is not json or pretty"));
                LogFormat::Pretty
            }
        };

        let metrics_port = r
            .raw(METRICS_PORT)
            .is_some()
            .then(|| r.parsed(METRICS_PORT, 0u16, "a port number"));
        if metrics_port.is_some_and(|p| p != 0 && p == port) {
            r.problems
                .push(format!("{METRICS_PORT} must differ from {PORT}"));
        }
        let admin_token = r.raw(ADMIN_TOKEN).map(SecretString::from);
        let drain_timeout = r.duration(DRAIN_TIMEOUT, Duration::from_secs(30));
        let store = match (r.raw(SUPABASE_URL), r.raw(SUPABASE_SERVICE_ROLE_KEY)) {
            (Some(url), Some(key)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    r.problems
                        .push(format!("{SUPABASE_URL}={url:?} is not an http(s) URL"));
                }
                StoreSettings::Supabase {
                    url: url.trim_end_matches('/').to_owned(),
                    service_role_key: SecretString::from(key),
                }
            }
            (Some(_), None) => {
                r.problems.push(format!(
                    "{SUPABASE_SERVICE_ROLE_KEY} is required with {SUPABASE_URL}"
                ));
                StoreSettings::Embedded {
                    data_dir: PathBuf::new(),
                }
            }
            (None, Some(_)) => {
                r.problems.push(format!(
                    "{SUPABASE_URL} is required with {SUPABASE_SERVICE_ROLE_KEY}"
                ));
                StoreSettings::Embedded {
                    data_dir: PathBuf::new(),
                }
            }
            (None, None) => StoreSettings::Embedded {
                data_dir: PathBuf::from(r.string(DATA_DIR, "./data")),
            },
        };
        let memory_turns = r.parsed(MEMORY_TURNS, 10usize, "a number of turns");
        let memory_days = r.parsed(MEMORY_DAYS, 7u32, "a number of days");
        let tool_timeout = r.duration(TOOL_TIMEOUT, Duration::from_secs(5));
        let idle_timeout = match r.raw(IDLE_TIMEOUT) {
            Some(value) if value.eq_ignore_ascii_case("off") => None,
            _ => Some(r.duration(IDLE_TIMEOUT, Duration::from_secs(120))),
        };
        let ai_breaker_threshold = r.parsed(AI_BREAKER_THRESHOLD, 5u32, "a number of failures");
        let ai_breaker_probe_interval =
            r.duration(AI_BREAKER_PROBE_INTERVAL, Duration::from_secs(5));
        let encoder = read_encoder(&mut r);
        let fleet = read_fleet(&mut r);
        let reminders = read_reminders(&mut r);
        let transcript_retention = read_retention(&mut r, max_call_duration);
        let caller_limits = read_caller_limits(&mut r);
        let http = read_http_limits(&mut r);

        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems));
        }
        Ok(Self {
            port,
            bind_addr,
            app_secret,
            verify_token,
            graph_url,
            graph_version,
            phone_number_id,
            access_token,
            graph_timeout,
            max_concurrent_calls,
            admission,
            sched_fifo_priority,
            max_call_duration,
            answer_deadline,
            ai_provider,
            voice,
            transcription_model,
            instructions,
            greeting,
            greeting_lead,
            public_ip,
            udp_ports,
            loopback,
            stun_urls,
            log_format,
            metrics_port,
            admin_token,
            drain_timeout,
            store,
            memory_turns,
            memory_days,
            tool_timeout,
            idle_timeout,
            ai_breaker_threshold,
            ai_breaker_probe_interval,
            encoder,
            fleet,
            reminders,
            transcript_retention,
            caller_limits,
            http,
        })
    }
}

/// How long transcripts and call logs are kept: 90 days unless set; `0` or `off` keeps them
/// forever. It must be longer than a call can last, so that a live call's rows are never purged.
fn read_retention(r: &mut Reader<'_>, max_call_duration: Duration) -> Option<Duration> {
    const DEFAULT: Duration = Duration::from_secs(90 * 86_400);
    match r.raw(TRANSCRIPT_RETENTION) {
        Some(value) if value == "0" || value.eq_ignore_ascii_case("off") => None,
        _ => {
            let retention = r.duration(TRANSCRIPT_RETENTION, DEFAULT);
            if retention <= max_call_duration {
                r.problems.push(format!(
                    "{TRANSCRIPT_RETENTION} must be longer than {MAX_CALL_DURATION} \
                     ({}s), or 0/off to keep transcripts forever",
                    max_call_duration.as_secs()
                ));
            }
            Some(retention)
        }
    }
}

/// The per-caller limits (0: no limit).
fn read_caller_limits(r: &mut Reader<'_>) -> CallerLimitSettings {
    let defaults = CallerLimitSettings::default();
    let settings = CallerLimitSettings {
        calls_per_hour: r.parsed(
            CALLER_CALLS_PER_HOUR,
            defaults.calls_per_hour,
            "a number of calls",
        ),
        calls_per_day: r.parsed(
            CALLER_CALLS_PER_DAY,
            defaults.calls_per_day,
            "a number of calls",
        ),
        minutes_per_day: r.parsed(
            CALLER_MINUTES_PER_DAY,
            defaults.minutes_per_day,
            "a number of minutes",
        ),
        open_tasks: r.parsed(CALLER_OPEN_TASKS, defaults.open_tasks, "a number of tasks"),
        pending_reminders: r.parsed(
            CALLER_PENDING_REMINDERS,
            defaults.pending_reminders,
            "a number of reminders",
        ),
        tool_calls_per_call: r.parsed(
            TOOL_CALLS_PER_CALL,
            defaults.tool_calls_per_call,
            "a number of tool calls",
        ),
        block_list_refresh: r.duration(BLOCK_LIST_REFRESH, defaults.block_list_refresh),
    };
    if settings.block_list_refresh < Duration::from_secs(1) {
        r.problems
            .push(format!("{BLOCK_LIST_REFRESH} must be at least 1s"));
    }
    settings
}

/// The HTTP listeners' timeouts and connection cap.
fn read_http_limits(r: &mut Reader<'_>) -> HttpLimits {
    let defaults = HttpLimits::default();
    let limits = HttpLimits {
        header_timeout: r.duration(HTTP_HEADER_TIMEOUT, defaults.header_timeout),
        body_timeout: r.duration(HTTP_BODY_TIMEOUT, defaults.body_timeout),
        idle_timeout: r.duration(HTTP_IDLE_TIMEOUT, defaults.idle_timeout),
        max_connections: r.parsed(
            HTTP_MAX_CONNECTIONS,
            defaults.max_connections,
            "a number of connections",
        ),
    };
    for (key, value) in [
        (HTTP_HEADER_TIMEOUT, limits.header_timeout),
        (HTTP_BODY_TIMEOUT, limits.body_timeout),
        (HTTP_IDLE_TIMEOUT, limits.idle_timeout),
    ] {
        if value.is_zero() {
            r.problems.push(format!("{key} must be more than 0"));
        }
    }
    if limits.max_connections == 0 {
        r.problems
            .push(format!("{HTTP_MAX_CONNECTIONS} must be at least 1"));
    }
    limits
}

/// How new calls are admitted (see `call::headroom`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdmissionSettings {
    pub mode: AdmissionMode,
    /// The share of the CPUs this process may use that live calls (and the one admitted) may
    /// take, e.g. 0.7.
    pub cpu_target: f64,
    /// The recent frame send delay and runtime lag (p99) above which no call is admitted.
    pub latency_budget: Duration,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            mode: AdmissionMode::Headroom,
            cpu_target: 0.7,
            latency_budget: Duration::from_millis(5),
        }
    }
}

/// `ADMISSION`: what bounds the live calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmissionMode {
    /// The measured headroom of this host, and `MAX_CONCURRENT_CALLS` as an upper bound.
    Headroom,
    /// `MAX_CONCURRENT_CALLS` alone.
    Count,
}

fn read_admission(r: &mut Reader<'_>) -> AdmissionSettings {
    let defaults = AdmissionSettings::default();
    let mode = match r.raw(ADMISSION) {
        None => defaults.mode,
        Some(value) => match value.to_ascii_lowercase().as_str() {
            "headroom" => AdmissionMode::Headroom,
            "count" => AdmissionMode::Count,
            _ => {
                r.problems
                    .push(format!("{ADMISSION}={value:?} is not headroom or count"));
                defaults.mode
            }
        },
    };
    let cpu_target = r.parsed(ADMISSION_CPU_TARGET, defaults.cpu_target, "a fraction");
    if !(cpu_target > 0.0 && cpu_target <= 1.0) {
        r.problems.push(format!(
            "{ADMISSION_CPU_TARGET}={cpu_target} is outside (0, 1] (a share of the CPUs)"
        ));
    }
    let latency_budget = r.duration(ADMISSION_LATENCY_BUDGET, defaults.latency_budget);
    if latency_budget < Duration::from_millis(1) || latency_budget > Duration::from_secs(1) {
        r.problems.push(format!(
            "{ADMISSION_LATENCY_BUDGET} must be between 1ms and 1s"
        ));
    }
    AdmissionSettings {
        mode,
        cpu_target,
        latency_budget,
    }
}

/// A boolean setting (`true`/`false`, `on`/`off`, `1`/`0`, `yes`/`no`).
fn read_bool(r: &mut Reader<'_>, key: &str, default: bool) -> bool {
    match r.raw(key) {
        None => default,
        Some(value) => parse_bool(&value).unwrap_or_else(|| {
            r.problems
                .push(format!("{key}={value:?} is not true or false"));
            default
        }),
    }
}

/// The reminder scheduler's settings.
fn read_reminders(r: &mut Reader<'_>) -> ReminderSettings {
    let settings = ReminderSettings {
        enabled: read_bool(r, REMINDERS, true),
        poll_interval: r.duration(REMINDER_POLL_INTERVAL, Duration::from_secs(2)),
        max_attempts: r.parsed(REMINDER_MAX_ATTEMPTS, 3u32, "a number of calls"),
        window: r.duration(REMINDER_WINDOW, Duration::from_secs(2 * 3600)),
        retry_delay: r.duration(REMINDER_RETRY_DELAY, Duration::from_secs(5 * 60)),
        concurrency: r.parsed(REMINDER_CONCURRENCY, 8usize, "a number of deliveries"),
        claim_lease: r.duration(REMINDER_CLAIM_LEASE, Duration::from_secs(120)),
        template: r.raw(REMINDER_TEMPLATE),
        template_language: r.string(REMINDER_TEMPLATE_LANGUAGE, "en_US"),
        callback_on_busy: read_bool(r, CALLBACK_ON_BUSY, true),
    };
    if settings.max_attempts == 0 {
        r.problems
            .push(format!("{REMINDER_MAX_ATTEMPTS} must be at least 1"));
    }
    if settings.concurrency == 0 {
        r.problems
            .push(format!("{REMINDER_CONCURRENCY} must be at least 1"));
    }
    if settings.poll_interval.is_zero() {
        r.problems
            .push(format!("{REMINDER_POLL_INTERVAL} must be more than 0"));
    }
    // A claim must outlive the longest step of a delivery without a renewal (a call rings up
    // to 60 s; renewals come every third of the lease).
    if settings.claim_lease < Duration::from_secs(30) {
        r.problems
            .push(format!("{REMINDER_CLAIM_LEASE} must be at least 30s"));
    }
    settings
}

/// The fleet's settings when `REDIS_URL` is set.
fn read_fleet(r: &mut Reader<'_>) -> Option<FleetConfig> {
    let url = r.raw(REDIS_URL)?;
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        // The value may hold a password: it is not echoed.
        r.problems
            .push(format!("{REDIS_URL} is not a redis:// or rediss:// URL"));
    }
    let prefix = r.string(REDIS_KEY_PREFIX, "wvb");
    if prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') {
        r.problems.push(format!(
            "{REDIS_KEY_PREFIX}={prefix:?} may not hold whitespace or braces (it becomes the keys' hash tag)"
        ));
    }
    let replica = r.raw(REPLICA_ID);
    if let Some(replica) = &replica
        && !replica
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        r.problems.push(format!(
            "{REPLICA_ID}={replica:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Some(FleetConfig {
        url: SecretString::from(url),
        prefix,
        replica,
    })
}

/// Azure when its endpoint is set, OpenAI otherwise.
fn read_provider(r: &mut Reader<'_>) -> Provider {
    if let Some(endpoint) = r.raw(AZURE_OPENAI_ENDPOINT) {
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            r.problems.push(format!(
                "{AZURE_OPENAI_ENDPOINT}={endpoint:?} is not an http(s) URL"
            ));
        }
        let api_key = SecretString::from(r.required(AZURE_OPENAI_API_KEY));
        let deployment = r.required(AZURE_OPENAI_DEPLOYMENT);
        return Provider::Azure {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            deployment,
            api_key,
        };
    }
    let url = r.string(OPENAI_REALTIME_URL, "wss://api.openai.com/v1/realtime");
    if !(url.starts_with("wss://") || url.starts_with("ws://")) {
        r.problems
            .push(format!("{OPENAI_REALTIME_URL}={url:?} is not a ws(s) URL"));
    }
    if r.raw(OPENAI_API_KEY).is_none() {
        r.problems.push(format!(
            "{OPENAI_API_KEY} is required (or set {AZURE_OPENAI_ENDPOINT}, {AZURE_OPENAI_API_KEY} and {AZURE_OPENAI_DEPLOYMENT})"
        ));
    }
    Provider::OpenAi {
        url,
        model: r.string(OPENAI_REALTIME_MODEL, "gpt-realtime"),
        api_key: SecretString::from(r.raw(OPENAI_API_KEY).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> HashMap<String, String> {
        env(&[
            (WHATSAPP_APP_SECRET, "secret"),
            (WHATSAPP_VERIFY_TOKEN, "verify"),
            (WHATSAPP_PHONE_NUMBER_ID, "106540352242922"),
            (WHATSAPP_ACCESS_TOKEN, "token"),
            (OPENAI_API_KEY, "sk-test"),
        ])
    }

    #[test]
    fn minimal_settings_get_the_documented_defaults() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.port, 8080);
        assert_eq!(config.max_concurrent_calls, 100);
        assert_eq!(config.graph_url, "https://graph.facebook.com");
        assert_eq!(config.graph_version, "v23.0");
        assert_eq!(config.answer_deadline, Duration::from_secs(20));
        assert!(!config.loopback);
        match config.ai_provider {
            Provider::OpenAi { url, model, .. } => {
                assert_eq!(url, "wss://api.openai.com/v1/realtime");
                assert_eq!(model, "gpt-realtime");
            }
            Provider::Azure { .. } => panic!("expected OpenAI"),
        }
    }

    #[test]
    fn what_the_keys_mean_follows_the_assistant_instructions() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.instructions, DEFAULT_INSTRUCTIONS);
        let mut keyed = minimal();
        keyed.extend(env(&[
            (ASSISTANT_INSTRUCTIONS, "You answer for ACME."),
            (KEYPAD_INSTRUCTIONS, " 1 for sales, 2 for support "),
        ]));
        let instructions = Config::from_env(&keyed).expect("valid").instructions;
        assert!(instructions.starts_with("You answer for ACME.\n\n"));
        assert!(instructions.ends_with("What the keys mean: 1 for sales, 2 for support"));
    }

    #[test]
    fn the_encoder_settings_are_read_and_checked() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.encoder, EncoderSettings::default());
        let mut custom = minimal();
        custom.extend(env(&[
            (OPUS_BITRATE, "16000"),
            (OPUS_COMPLEXITY, "3"),
            (OPUS_BANDWIDTH, "Mediumband"),
        ]));
        let encoder = Config::from_env(&custom).expect("valid").encoder;
        assert_eq!(
            (
                encoder.bitrate_bps,
                encoder.complexity,
                encoder.max_bandwidth
            ),
            (16_000, 3, Bandwidth::Mediumband)
        );
        let mut bad = minimal();
        bad.extend(env(&[
            (OPUS_BITRATE, "1000"),
            (OPUS_COMPLEXITY, "11"),
            (OPUS_BANDWIDTH, "fullband"),
        ]));
        let error = Config::from_env(&bad).expect_err("invalid").to_string();
        for key in [OPUS_BITRATE, OPUS_COMPLEXITY, OPUS_BANDWIDTH] {
            assert!(error.contains(key), "{error}");
        }
    }

    #[test]
    fn azure_is_used_when_its_endpoint_is_set() {
        let mut vars = minimal();
        vars.extend(env(&[
            (AZURE_OPENAI_ENDPOINT, "https://res.openai.azure.com/"),
            (AZURE_OPENAI_API_KEY, "k"),
            (AZURE_OPENAI_DEPLOYMENT, "rt"),
        ]));
        let config = Config::from_env(&vars).expect("valid");
        match config.ai_provider {
            Provider::Azure {
                endpoint,
                deployment,
                ..
            } => {
                assert_eq!(endpoint, "https://res.openai.azure.com");
                assert_eq!(deployment, "rt");
            }
            Provider::OpenAi { .. } => panic!("expected Azure"),
        }
        // Azure has no default transcription model: it is a deployment of one's own.
        assert_eq!(config.transcription_model, None);
        vars.insert(OPENAI_TRANSCRIBE_MODEL.into(), "my-transcribe".into());
        let config = Config::from_env(&vars).expect("valid");
        assert_eq!(config.transcription_model.as_deref(), Some("my-transcribe"));
    }

    #[test]
    fn voice_and_transcription_default_to_the_provider_and_can_be_turned_off() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.voice, None);
        assert_eq!(
            config.transcription_model.as_deref(),
            Some(DEFAULT_TRANSCRIBE_MODEL)
        );
        let mut vars = minimal();
        vars.insert(OPENAI_TRANSCRIBE_MODEL.into(), "off".into());
        vars.insert(OPENAI_VOICE.into(), "cedar".into());
        let config = Config::from_env(&vars).expect("valid");
        assert_eq!(config.transcription_model, None);
        assert_eq!(config.voice.as_deref(), Some("cedar"));
    }

    #[test]
    fn admission_is_by_headroom_unless_told_otherwise_and_bad_values_are_reported() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.admission, AdmissionSettings::default());
        assert_eq!(config.admission.mode, AdmissionMode::Headroom);
        let mut vars = minimal();
        vars.extend(env(&[
            (ADMISSION, "Count"),
            (ADMISSION_CPU_TARGET, "0.6"),
            (ADMISSION_LATENCY_BUDGET, "8ms"),
        ]));
        let config = Config::from_env(&vars).expect("valid");
        assert_eq!(
            config.admission,
            AdmissionSettings {
                mode: AdmissionMode::Count,
                cpu_target: 0.6,
                latency_budget: Duration::from_millis(8),
            }
        );
        let mut vars = minimal();
        vars.extend(env(&[
            (ADMISSION, "vibes"),
            (ADMISSION_CPU_TARGET, "1.5"),
            (ADMISSION_LATENCY_BUDGET, "0ms"),
        ]));
        let text = Config::from_env(&vars).expect_err("invalid").to_string();
        for key in [ADMISSION, ADMISSION_CPU_TARGET, ADMISSION_LATENCY_BUDGET] {
            assert!(text.contains(key), "{key} not reported in {text}");
        }
    }

    #[test]
    fn every_invalid_value_is_reported_at_once() {
        let vars = env(&[
            (PORT, "eighty"),
            (MAX_CONCURRENT_CALLS, "-1"),
            (WEBRTC_UDP_PORTS, "40999-40000"),
            (WEBRTC_LOOPBACK, "maybe"),
            (GRAPH_TIMEOUT, "soon"),
        ]);
        let err = Config::from_env(&vars).expect_err("invalid");
        let text = err.to_string();
        for key in [
            PORT,
            MAX_CONCURRENT_CALLS,
            WEBRTC_UDP_PORTS,
            WEBRTC_LOOPBACK,
            GRAPH_TIMEOUT,
            WHATSAPP_APP_SECRET,
            OPENAI_API_KEY,
        ] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
    }

    #[test]
    fn the_fleet_is_configured_by_redis_url_and_its_password_is_never_echoed() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert!(config.fleet.is_none(), "no REDIS_URL: one process");

        let mut vars = minimal();
        vars.insert(
            REDIS_URL.into(),
            "rediss://:s3cret@cache.example:6380".into(),
        );
        vars.insert(REPLICA_ID.into(), "replica-7".into());
        let fleet = Config::from_env(&vars)
            .expect("valid")
            .fleet
            .expect("a fleet");
        assert_eq!(fleet.prefix, "wvb");
        assert_eq!(fleet.replica.as_deref(), Some("replica-7"));

        vars.insert(REDIS_URL.into(), "http://:s3cret@cache.example".into());
        vars.insert(REDIS_KEY_PREFIX.into(), "a{b}".into());
        vars.insert(REPLICA_ID.into(), "replica 7".into());
        let text = Config::from_env(&vars).expect_err("invalid").to_string();
        for key in [REDIS_URL, REDIS_KEY_PREFIX, REPLICA_ID] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn durations_and_port_ranges_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("12"), Some(Duration::from_secs(12)));
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_port_range("40000-40999"), Some(40000..=40999));
        assert_eq!(parse_port_range("40000"), None);
    }

    #[test]
    fn transcript_retention_defaults_to_90_days_turns_off_and_must_outlast_a_call() {
        let days = |n: u64| Some(Duration::from_secs(n * 86_400));
        assert_eq!(parse_duration("90d"), days(90));
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.transcript_retention, days(90));
        for (value, expected) in [("30d", days(30)), ("0", None), ("off", None), ("OFF", None)] {
            let mut vars = minimal();
            vars.insert(TRANSCRIPT_RETENTION.into(), value.into());
            let config = Config::from_env(&vars).expect("valid");
            assert_eq!(config.transcript_retention, expected, "{value}");
        }
        for value in ["soon", "30m", "-1d"] {
            let mut vars = minimal();
            vars.insert(TRANSCRIPT_RETENTION.into(), value.into());
            let text = Config::from_env(&vars).expect_err(value).to_string();
            assert!(text.contains(TRANSCRIPT_RETENTION), "{value}: {text}");
        }
    }

    #[test]
    fn sched_fifo_priority_is_off_by_default_and_bounded() {
        assert_eq!(
            Config::from_env(&minimal())
                .expect("valid")
                .sched_fifo_priority,
            0
        );
        let mut vars = minimal();
        vars.insert(SCHED_FIFO_PRIORITY.into(), "10".into());
        assert_eq!(
            Config::from_env(&vars).expect("valid").sched_fifo_priority,
            10
        );
        for value in ["100", "-1", "high"] {
            vars.insert(SCHED_FIFO_PRIORITY.into(), value.into());
            let problems = Config::from_env(&vars).expect_err(value).0;
            assert_eq!(problems.len(), 1, "{value}: {problems:?}");
            assert!(problems[0].contains(SCHED_FIFO_PRIORITY), "{problems:?}");
        }
    }

    #[test]
    fn env_example_lists_every_key_once() {
        let example = include_str!("../../../.env.example");
        for key in ALL_KEYS {
            let lines = example
                .lines()
                .filter(|line| line.starts_with(&format!("{key}=")))
                .count();
            assert_eq!(lines, 1, "{key} in .env.example");
        }
    }

    #[test]
    fn reminder_settings_have_defaults_and_bad_values_are_reported() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert!(config.reminders.enabled && config.reminders.callback_on_busy);
        assert_eq!(config.reminders.max_attempts, 3);
        assert_eq!(config.reminders.window, Duration::from_secs(7200));
        assert_eq!(config.reminders.template, None);
        let mut env = minimal();
        env.insert(REMINDERS.into(), "maybe".into());
        env.insert(REMINDER_MAX_ATTEMPTS.into(), "0".into());
        env.insert(REMINDER_CLAIM_LEASE.into(), "5s".into());
        env.insert(CALLBACK_ON_BUSY.into(), "false".into());
        let problems = Config::from_env(&env).unwrap_err().0.join("\n");
        for key in [REMINDERS, REMINDER_MAX_ATTEMPTS, REMINDER_CLAIM_LEASE] {
            assert!(problems.contains(key), "{key}: {problems}");
        }
        assert!(!problems.contains(CALLBACK_ON_BUSY));
    }

    #[test]
    fn http_limits_have_defaults_and_bad_values_are_reported() {
        let config = Config::from_env(&minimal()).expect("valid");
        assert_eq!(config.http, HttpLimits::default());
        assert_eq!(config.http.header_timeout, Duration::from_secs(10));
        assert_eq!(config.http.max_connections, 1024);
        let mut vars = minimal();
        vars.extend(env(&[
            (HTTP_HEADER_TIMEOUT, "2s"),
            (HTTP_BODY_TIMEOUT, "500ms"),
            (HTTP_IDLE_TIMEOUT, "1m"),
            (HTTP_MAX_CONNECTIONS, "16"),
        ]));
        let http = Config::from_env(&vars).expect("valid").http;
        assert_eq!(
            http,
            HttpLimits {
                header_timeout: Duration::from_secs(2),
                body_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(60),
                max_connections: 16,
            }
        );
        vars.extend(env(&[
            (HTTP_HEADER_TIMEOUT, "0s"),
            (HTTP_BODY_TIMEOUT, "soon"),
            (HTTP_IDLE_TIMEOUT, "0"),
            (HTTP_MAX_CONNECTIONS, "0"),
        ]));
        let problems = Config::from_env(&vars).expect_err("invalid").0;
        assert_eq!(problems.len(), 4, "{problems:?}");
        for key in [
            HTTP_HEADER_TIMEOUT,
            HTTP_BODY_TIMEOUT,
            HTTP_IDLE_TIMEOUT,
            HTTP_MAX_CONNECTIONS,
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key}: {problems:?}"
            );
        }
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let config = Config::from_env(&minimal()).expect("valid");
        let text = format!("{config:?}");
        assert!(!text.contains("secret") && !text.contains("sk-test") && !text.contains("token\""));
    }
}
