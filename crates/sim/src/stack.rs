//! A whole local set-up in one process: the Graph API double, the Realtime AI double and a
//! bridge on loopback wired to both. Used by the `demo` command and the tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::graph_double::{GraphDouble, GraphDoubleConfig};
use crate::phone::PhoneSettings;
use crate::realtime_ai::{AiDoubleConfig, RealtimeAiDouble};
use bridge::app::{App, Parts};
use bridge::call::calls::Calls;
use bridge::call::headroom::monitor::CpuClock;
use bridge::call::registry::Registry;
use bridge::config::{self, Config};
use bridge::metrics::Metrics;
use bridge::store::Store;
use bridge::store::embedded::EmbeddedStore;

pub const APP_SECRET: &str = "local-app-secret";
pub const VERIFY_TOKEN: &str = "local-verify-token";

/// What to vary between local set-ups.
#[derive(Clone)]
pub struct StackOptions {
    pub max_calls: usize,
    pub ai: AiDoubleConfig,
    /// `None`: the AI waits for the caller instead of greeting.
    pub greeting: Option<String>,
    /// Any other setting (`KEY` → value).
    pub settings: HashMap<String, String>,
    /// The caller-data store; `None`: a fresh embedded store in a temporary directory.
    pub store: Option<Arc<dyn Store>>,
    /// Where the bridge reads its CPU use (with `ADMISSION=headroom` in `settings`); `None`:
    /// this process's own.
    pub cpu_clock: Option<Arc<dyn CpuClock>>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            max_calls: 100,
            ai: AiDoubleConfig::default(),
            greeting: None,
            settings: HashMap::new(),
            store: None,
            cpu_clock: None,
        }
    }
}

/// A running local set-up; stops the bridge (ending its calls cleanly) on [`LocalStack::stop`].
pub struct LocalStack {
    pub graph: GraphDouble,
    pub ai: RealtimeAiDouble,
    pub bridge_url: String,
    pub registry: Registry,
    pub metrics: Metrics,
    /// The caller-data store the bridge uses.
    pub store: Arc<dyn Store>,
    /// The bridge's calls: places outbound calls through it.
    pub calls: Calls,
    /// Cancelling it ends every call with `shutdown` (without stopping the server).
    pub calls_token: CancellationToken,
    /// Like SIGTERM for a process: the first starts the drain, the second ends it.
    stop: Option<mpsc::Sender<()>>,
    /// The temporary store directory this stack made, removed at stop.
    temp_dir: Option<std::path::PathBuf>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
}

impl LocalStack {
    pub async fn start(options: StackOptions) -> anyhow::Result<LocalStack> {
        let graph_config = GraphDoubleConfig::default();
        let phone_number_id = graph_config.phone_number_id.clone();
        let access_token = graph_config.access_token.clone();
        let version = graph_config.version.clone();
        let graph = GraphDouble::start(graph_config).await?;
        let api_key = options.ai.api_key.clone();
        let ai = RealtimeAiDouble::start(options.ai.clone()).await?;

        let mut env: HashMap<String, String> = HashMap::new();
        let mut set = |key: &str, value: String| {
            env.insert(key.to_owned(), value);
        };
        set(config::PORT, "0".into());
        set(config::BIND_ADDR, "127.0.0.1".into());
        set(config::WHATSAPP_APP_SECRET, APP_SECRET.into());
        set(config::WHATSAPP_VERIFY_TOKEN, VERIFY_TOKEN.into());
        set(config::WHATSAPP_GRAPH_URL, graph.base_url());
        set(config::WHATSAPP_GRAPH_VERSION, version);
        set(config::WHATSAPP_PHONE_NUMBER_ID, phone_number_id);
        set(config::WHATSAPP_ACCESS_TOKEN, access_token);
        set(config::OPENAI_API_KEY, api_key);
        set(config::OPENAI_REALTIME_URL, ai.url());
        set(config::MAX_CONCURRENT_CALLS, options.max_calls.to_string());
        set(config::WEBRTC_LOOPBACK, "true".into());
        set(
            config::ASSISTANT_GREETING,
            options.greeting.clone().unwrap_or_else(|| "off".into()),
        );
        // The bridge shares this process with the phones, the doubles and often other
        // stacks: its CPU and lag are theirs too, so the count alone admits unless a test
        // asks for the headroom (the load harness runs the bridge as its own process).
        set(config::ADMISSION, "count".into());
        env.extend(options.settings.clone());
        let config = Config::from_env(&env).map_err(|err| anyhow::anyhow!("{err}"))?;

        let mut temp_dir = None;
        let store: Arc<dyn Store> = match options.store.clone() {
            Some(store) => store,
            None => {
                let dir = std::env::temp_dir().join(format!("wvb-stack-{}", uuid::Uuid::new_v4()));
                let store = EmbeddedStore::open(&dir).map_err(|err| anyhow::anyhow!("{err}"))?;
                temp_dir = Some(dir);
                Arc::new(store)
            }
        };
        let app = App::build_from(
            config,
            Parts {
                store: Some(store.clone()),
                cpu_clock: options.cpu_clock.clone(),
            },
        )
        .await?;
        let bridge_url = format!("http://127.0.0.1:{}", app.port());
        let registry = app.registry();
        let metrics = app.metrics();
        let calls = app.calls();
        let calls_token = app.calls_token();
        let (stop, signals) = mpsc::channel::<()>(2);
        let server = tokio::spawn(app.run_until_stopped(signals));
        Ok(LocalStack {
            graph,
            ai,
            bridge_url,
            registry,
            metrics,
            store,
            calls,
            calls_token,
            stop: Some(stop),
            temp_dir,
            server: Some(server),
            http: reqwest::Client::new(),
        })
    }

    /// Settings for a simulated phone calling this bridge.
    pub fn phone_settings(&self) -> PhoneSettings {
        PhoneSettings::on_loopback(
            self.bridge_url.clone(),
            APP_SECRET,
            self.graph.clone(),
            self.http.clone(),
        )
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Waits until the bridge has no live call (bounded).
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        self.registry.wait_idle(timeout).await
    }

    /// Shuts the bridge down (live calls end with `terminate`) and the doubles with it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            // Two signals: drain, then end the live calls at once.
            let _ = stop.send(()).await;
            let _ = stop.send(()).await;
        }
        if let Some(server) = self.server.take() {
            server.await??;
        }
        self.ai.shutdown();
        self.graph.shutdown();
        if let Some(dir) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }
}
