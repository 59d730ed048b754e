//! Wires the bridge together: `App::build(config)` binds the HTTP port, `run_until_stopped`
//! serves until the shutdown future resolves, then ends every call cleanly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::call::ai_breaker::{AiBreaker, run_prober};
use crate::call::block_list::BlockList;
use crate::call::caller_limits::CallerLimits;
use crate::call::calls::Calls;
use crate::call::headroom::monitor::{self as headroom_monitor, CpuClock, ProcCpu};
use crate::call::registry::Registry;
use crate::call::task::CallContext;
use crate::config::{Config, HttpLimits, StoreSettings};
use crate::fleet::{Fleet, FleetSettings, default_replica_name};
use crate::http::server::serve;
use crate::http::{AppState, WebhookSettings, metrics_router, router};
use crate::media::peer::PeerSettings;
use crate::media::phases::FramePhases;
use crate::media::ports::PortPool;
use crate::memory::MemorySettings;
use crate::metrics::Metrics;
use crate::open_files;
use crate::outreach::Outreach;
use crate::outreach::scheduler::Scheduler;
use crate::realtime::client::RealtimeConfig;
use crate::realtime::events::SessionSettings;
use crate::retention::{FIRST_RUN_DELAY, PurgeBounds, RetentionPurge};
use crate::scheduling;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::supabase::{SupabaseConfig, SupabaseStore};
use crate::tools::{self, ToolLimits};
use crate::whatsapp::graph::{GraphClient, GraphConfig};

/// After the drain, how long shutdown waits for calls to finish ending (each sends its
/// `terminate`, bounded by the Graph client's own retry budget).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
/// After the calls, how long shutdown waits for the fleet's last writes (releases, leaving).
const FLEET_STOP_GRACE: Duration = Duration::from_secs(3);
/// After the calls, how long shutdown waits for the reminder deliveries to be recorded.
const SCHEDULER_STOP_GRACE: Duration = Duration::from_secs(5);
/// The metrics listener's connection cap when `HTTP_MAX_CONNECTIONS` is higher: a Prometheus
/// server or two scrape it, so its connections need not count against the file descriptors
/// that the main listener and the calls share.
const METRICS_MAX_CONNECTIONS: usize = 32;

/// A built bridge, bound to its port and ready to serve.
pub struct App {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    root: CancellationToken,
    drain_timeout: Duration,
    /// Stops the fleet's background work once every call has ended; the worker then writes
    /// the calls' releases (awaited, bounded) and leaves the fleet's reports.
    fleet_stop: CancellationToken,
    fleet_worker: Option<tokio::task::JoinHandle<()>>,
    /// Delivers due reminders and callbacks (`REMINDERS=off`: `None`); stops claiming when
    /// the drain begins.
    scheduler: Option<Scheduler>,
    /// How often the AI is tried while its circuit breaker is open.
    ai_probe_interval: Duration,
    /// Purges transcripts and call logs past `TRANSCRIPT_RETENTION` (`None`: kept forever).
    retention: Option<RetentionPurge>,
    /// How often the block list is read again (other replicas' changes).
    block_list_refresh: Duration,
    /// Timeouts and connection cap of the HTTP listeners.
    http_limits: HttpLimits,
    /// Where the headroom monitor reads this process's CPU use.
    cpu_clock: Arc<dyn CpuClock>,
}

/// What [`App::build_from`] takes instead of building it from the configuration.
#[derive(Default)]
pub struct Parts {
    /// The caller-data store; `None`: the configured one.
    pub store: Option<Arc<dyn Store>>,
    /// Where the process's CPU use is read; `None`: `/proc/self/stat`.
    pub cpu_clock: Option<Arc<dyn CpuClock>>,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        Self::build_with_store(config, None).await
    }

    /// Like [`App::build`], with the caller-data store given instead of the configured one.
    pub async fn build_with_store(
        config: Config,
        store: Option<Arc<dyn Store>>,
    ) -> anyhow::Result<App> {
        Self::build_from(
            config,
            Parts {
                store,
                ..Parts::default()
            },
        )
        .await
    }

    /// Like [`App::build`], with some parts given instead of built.
    pub async fn build_from(config: Config, parts: Parts) -> anyhow::Result<App> {
        install_crypto_provider();
        raise_open_files(&config);
        let Parts { store, cpu_clock } = parts;
        let store = match store {
            Some(store) => store,
            None => open_store(&config.store)?,
        };
        let metrics = Metrics::new();
        raise_scheduling(config.sched_fifo_priority, &metrics);
        let root = CancellationToken::new();
        let fleet_settings = config.fleet.as_ref().map(|fleet| FleetSettings {
            url: fleet.url.clone(),
            prefix: fleet.prefix.clone(),
            replica: fleet.replica.clone().unwrap_or_else(default_replica_name),
        });
        let fleet = match &fleet_settings {
            Some(settings) => Some(Fleet::new(settings, metrics.clone())?),
            None => None,
        };
        let registry = Registry::new(
            config.max_concurrent_calls,
            config.admission,
            metrics.clone(),
            root.clone(),
            fleet.clone(),
        );
        let ports = config.udp_ports.clone().map(PortPool::new);
        let attempts = metrics.graph_requests.clone();
        let graph = GraphClient::new(GraphConfig {
            base_url: config.graph_url.clone(),
            version: config.graph_version.clone(),
            phone_number_id: config.phone_number_id.clone(),
            access_token: config.access_token.clone(),
            timeout: config.graph_timeout,
        })
        .with_attempt_observer(Arc::new(move |action, outcome| {
            attempts
                .with_label_values(&[action.as_str(), outcome])
                .inc();
        }));
        let mut session = SessionSettings {
            instructions: config.instructions.clone(),
            ..SessionSettings::default()
        };
        session.voice = config.voice.clone();
        session.transcription_model = config.transcription_model.clone();
        if session.transcription_model.is_none() {
            warn!(
                "caller speech is not transcribed (OPENAI_TRANSCRIBE_MODEL unset on Azure, or off):                  no transcripts, and the AI remembers nothing of earlier calls"
            );
        }
        session.tools = tools::definitions();
        if let crate::realtime::client::Provider::Azure { deployment, .. } = &config.ai_provider {
            session.model = Some(deployment.clone());
        }
        let block_list = BlockList::new(store.clone());
        if let Err(err) = block_list.refresh().await {
            warn!(%err, "the block list could not be read at start; it is read again periodically");
        }
        let context = CallContext {
            graph,
            realtime: RealtimeConfig {
                provider: config.ai_provider.clone(),
                session: Arc::new(session),
                connect_timeout: Duration::from_secs(10),
            },
            peer: PeerSettings {
                loopback: config.loopback,
                public_ip: config.public_ip,
                stun_urls: config.stun_urls.clone(),
                ports: None,
            },
            encoder: config.encoder,
            metrics: metrics.clone(),
            answer_deadline: config.answer_deadline,
            max_call_duration: config.max_call_duration,
            greeting: config.greeting.clone(),
            greeting_lead: config.greeting_lead,
            store: store.clone(),
            memory: MemorySettings {
                turns: config.memory_turns,
                days: config.memory_days,
                ..MemorySettings::default()
            },
            tool_timeout: config.tool_timeout,
            idle_timeout: config.idle_timeout,
            frame_phases: FramePhases::default(),
            ai_breaker: AiBreaker::new(config.ai_breaker_threshold, metrics.clone()),
            block_list: block_list.clone(),
            caller_limits: CallerLimits::new(&config.caller_limits, fleet.clone()),
            tool_limits: ToolLimits {
                open_tasks: config.caller_limits.open_tasks as usize,
                pending_reminders: config.caller_limits.pending_reminders as usize,
            },
            tool_calls_per_call: config.caller_limits.tool_calls_per_call,
            headroom: registry.headroom().clone(),
        };
        let calls = Calls::new(context, registry, TaskTracker::new(), ports, fleet.clone());
        let outreach = Outreach::new(calls.clone(), config.reminders.clone());
        let scheduler = config.reminders.enabled.then(|| {
            // The claims' owner: the fleet's name for this replica, or a name of its own.
            let owner = fleet_settings
                .as_ref()
                .map(|settings| settings.replica.clone())
                .or_else(|| config.fleet.as_ref().and_then(|f| f.replica.clone()))
                .unwrap_or_else(default_replica_name);
            Scheduler::new(outreach.clone(), owner)
        });
        let retention = config.transcript_retention.map(|retention| {
            RetentionPurge::new(
                store.clone(),
                retention,
                PurgeBounds::default(),
                metrics.clone(),
            )
        });
        let state = AppState {
            webhook: Arc::new(WebhookSettings {
                app_secret: config.app_secret.clone(),
                verify_token: config.verify_token.clone(),
                phone_number_id: config.phone_number_id.clone(),
            }),
            calls,
            metrics,
            started: Instant::now(),
            admin_token: config.admin_token.clone(),
            outreach,
        };
        let fleet_stop = CancellationToken::new();
        let mut fleet_worker = None;
        if let (Some(fleet), Some(settings)) = (&fleet, &fleet_settings) {
            let calls = state.calls.clone();
            let report: crate::fleet::ReportFn = Arc::new(move || calls.report());
            // Reported before the first call, so that its claim counts as alive at once.
            fleet.join(&report).await;
            let (inbox, worker) = fleet.start(settings, report, fleet_stop.clone())?;
            state.calls.take_forwarded(inbox);
            fleet_worker = Some(worker);
        }
        let listener = TcpListener::bind((config.bind_addr, config.port)).await?;
        let metrics_listener = match config.metrics_port {
            Some(port) => Some(TcpListener::bind((config.bind_addr, port)).await?),
            None => None,
        };
        Ok(App {
            listener,
            metrics_listener,
            state,
            root,
            drain_timeout: config.drain_timeout,
            fleet_stop,
            fleet_worker,
            scheduler,
            ai_probe_interval: config.ai_breaker_probe_interval,
            retention,
            block_list_refresh: config.caller_limits.block_list_refresh,
            http_limits: config.http,
            cpu_clock: cpu_clock.unwrap_or_else(|| Arc::new(ProcCpu)),
        })
    }

    /// The port of the separate metrics listener, when `METRICS_PORT` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn registry(&self) -> Registry {
        self.state.calls.registry().clone()
    }

    pub fn metrics(&self) -> Metrics {
        self.state.metrics.clone()
    }

    /// The caller-data store the calls use.
    pub fn store(&self) -> Arc<dyn Store> {
        self.state.calls.context().store.clone()
    }

    /// The calls of this bridge: live calls, and placing business-initiated ones.
    pub fn calls(&self) -> Calls {
        self.state.calls.clone()
    }

    /// Cancelling this token ends every call with `CallEnd::Shutdown`.
    pub fn calls_token(&self) -> CancellationToken {
        self.root.clone()
    }

    /// Serves until told to stop, then drains: the first signal on `signals` turns readiness
    /// off and refuses new calls while live calls go on, until they have all ended or
    /// `DRAIN_TIMEOUT` passed or a second signal came; then every remaining call is ended
    /// cleanly (`terminate`, AI socket closed), and the server stops once the last is gone.
    pub async fn run_until_stopped(self, mut signals: mpsc::Receiver<()>) -> anyhow::Result<()> {
        let App {
            listener,
            metrics_listener,
            state,
            root,
            drain_timeout,
            fleet_stop,
            fleet_worker,
            scheduler,
            ai_probe_interval,
            retention,
            block_list_refresh,
            http_limits,
            cpu_clock,
        } = self;
        let scheduler_stop = CancellationToken::new();
        let scheduler =
            scheduler.map(|scheduler| tokio::spawn(scheduler.run(scheduler_stop.clone())));
        let registry = state.calls.registry().clone();
        let tracker = state.calls.tracker().clone();
        let app = router(state.clone(), metrics_listener.is_some());
        info!(addr = %listener.local_addr()?, "bridge listening");
        let stopped = CancellationToken::new();
        let context = state.calls.context();
        tokio::spawn(run_prober(
            context.ai_breaker.clone(),
            context.realtime.clone(),
            ai_probe_interval,
            stopped.clone(),
        ));
        if let Some(retention) = retention {
            tokio::spawn(retention.run(FIRST_RUN_DELAY, stopped.clone()));
        }
        tokio::spawn(
            context
                .block_list
                .clone()
                .run_refresh(block_list_refresh, stopped.clone()),
        );
        let live = registry.clone();
        tokio::spawn(headroom_monitor::run(
            registry.headroom().clone(),
            cpu_clock,
            move || live.active_calls(),
            stopped.clone(),
        ));
        if let Some(metrics_listener) = metrics_listener {
            info!(addr = %metrics_listener.local_addr()?, "metrics listening");
            let limits = HttpLimits {
                max_connections: http_limits.max_connections.min(METRICS_MAX_CONNECTIONS),
                ..http_limits
            };
            let metrics = state.metrics.http_listener("metrics");
            tokio::spawn(serve(
                metrics_listener,
                metrics_router(state.clone()),
                limits,
                metrics,
                stopped.clone().cancelled_owned(),
            ));
        }
        let drained = async move {
            if signals.recv().await.is_none() {
                // Nobody can signal any more: serve until the process is killed.
                std::future::pending::<()>().await;
            }
            info!(
                active_calls = registry.active_calls(),
                drain_timeout_s = drain_timeout.as_secs(),
                "draining: new calls are refused, live calls go on"
            );
            registry.begin_drain();
            scheduler_stop.cancel();
            tokio::select! {
                idle = registry.wait_idle(drain_timeout) => {
                    if !idle {
                        warn!(active_calls = registry.active_calls(), "drain timeout passed; ending the remaining calls");
                    }
                }
                _ = signals.recv() => {
                    warn!(active_calls = registry.active_calls(), "second signal; ending the remaining calls now");
                }
            }
            root.cancel();
            tracker.close();
            if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
                .await
                .is_err()
            {
                warn!("calls still running after the shutdown grace period");
            }
            info!("drained");
        };
        let metrics = state.metrics.http_listener("main");
        serve(listener, app, http_limits, metrics, drained).await;
        stopped.cancel();
        if let Some(scheduler) = scheduler
            && tokio::time::timeout(SCHEDULER_STOP_GRACE, scheduler)
                .await
                .is_err()
        {
            warn!("reminder deliveries still unrecorded; their claims expire with their lease");
        }
        fleet_stop.cancel();
        if let Some(worker) = fleet_worker
            && tokio::time::timeout(FLEET_STOP_GRACE, worker)
                .await
                .is_err()
        {
            warn!("the fleet's last writes did not finish; the claims expire with their lease");
        }
        Ok(())
    }
}

/// Runs the runtime's threads `SCHED_FIFO` when `SCHED_FIFO_PRIORITY` asks for it (from the
/// thread that runs the runtime: `App` is built there). Refused, the bridge runs on, scheduled
/// normally, and says so.
fn raise_scheduling(priority: u8, metrics: &Metrics) {
    if priority == 0 {
        return;
    }
    match scheduling::raise_current_thread(priority) {
        Ok(()) => {
            metrics.sched_fifo_priority.set(i64::from(priority));
            info!(priority, "the runtime's threads run SCHED_FIFO");
        }
        Err(err) => warn!(
            priority,
            %err,
            "SCHED_FIFO_PRIORITY could not be applied (needs CAP_SYS_NICE); scheduled normally"
        ),
    }
}

/// Raises the open-file limit to its hard limit (logged), and warns when the connection caps
/// do not fit under it: stalled connections could then use up the descriptors calls need.
fn raise_open_files(config: &Config) {
    let limit = match open_files::raise_to_hard_limit() {
        Ok(limit) => {
            if limit.after > limit.before {
                info!(
                    before = limit.before,
                    after = limit.after,
                    "open-file limit raised to its hard limit"
                );
            }
            limit.after
        }
        Err(err) => {
            warn!(%err, "the open-file limit could not be read or raised");
            return;
        }
    };
    let mut connections = config.http.max_connections;
    if config.metrics_port.is_some() {
        connections += config.http.max_connections.min(METRICS_MAX_CONNECTIONS);
    }
    if connections as u64 >= limit {
        warn!(
            max_connections = connections,
            open_file_limit = limit,
            "HTTP_MAX_CONNECTIONS is not below the open-file limit: connections could use up the descriptors calls need"
        );
    }
}

/// The configured store.
fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    match settings {
        StoreSettings::Embedded { data_dir } => {
            let store = EmbeddedStore::open(data_dir).map_err(|err| {
                anyhow::anyhow!("opening the store in {}: {err}", data_dir.display())
            })?;
            info!(data_dir = %data_dir.display(), "caller data in the embedded store");
            Ok(Arc::new(store))
        }
        StoreSettings::Supabase {
            url,
            service_role_key,
        } => {
            info!(%url, "caller data in Supabase");
            Ok(Arc::new(SupabaseStore::new(SupabaseConfig {
                url: url.clone(),
                service_role_key: service_role_key.clone(),
                timeout: Duration::from_secs(5),
            })))
        }
    }
}

/// TLS (Graph API, wss://) uses rustls with ring; installing it explicitly keeps the choice
/// from depending on which crate enables what. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A secret from a plain string (tests, demo).
pub fn secret(value: &str) -> SecretString {
    SecretString::from(value.to_owned())
}
