//! Wires the bridge together: `App::build(config)` binds the HTTP port, `run_until_stopped`
//! serves until the shutdown future resolves, then ends every call cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::call::dialer::Dialer;
use crate::call::task::CallContext;
use crate::config::Config;
use crate::http::{AppState, WebhookSettings, router};
use crate::media::codec::EncoderSettings;
use crate::media::peer::PeerSettings;
use crate::media::ports::PortPool;
use crate::metrics::Metrics;
use crate::realtime::client::RealtimeConfig;
use crate::realtime::events::SessionSettings;
use crate::registry::Registry;
use crate::whatsapp::graph::{GraphClient, GraphConfig};

/// How long shutdown waits for calls to end after telling them to.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// A built bridge, bound to its port and ready to serve.
pub struct App {
    listener: TcpListener,
    state: AppState,
    root: CancellationToken,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        install_crypto_provider();
        let metrics = Metrics::new();
        let root = CancellationToken::new();
        let registry = Registry::new(config.max_concurrent_calls, metrics.clone(), root.clone());
        let ports = config.udp_ports.clone().map(PortPool::new);
        let graph = GraphClient::new(GraphConfig {
            base_url: config.graph_url.clone(),
            version: config.graph_version.clone(),
            phone_number_id: config.phone_number_id.clone(),
            access_token: config.access_token.clone(),
            timeout: config.graph_timeout,
        });
        let mut session = SessionSettings {
            instructions: config.instructions.clone(),
            ..SessionSettings::default()
        };
        if let Some(voice) = &config.voice {
            session.voice = voice.clone();
        }
        if let crate::realtime::client::Provider::Azure { deployment, .. } = &config.ai_provider {
            session.model = Some(deployment.clone());
        }
        let calls = CallContext {
            graph,
            realtime: RealtimeConfig {
                provider: config.ai_provider.clone(),
                session,
                connect_timeout: Duration::from_secs(10),
            },
            peer: PeerSettings {
                loopback: config.loopback,
                public_ip: config.public_ip,
                stun_urls: config.stun_urls.clone(),
                ports: None,
            },
            encoder: EncoderSettings::default(),
            metrics: metrics.clone(),
            answer_deadline: config.answer_deadline,
            max_call_duration: config.max_call_duration,
            greeting: config.greeting.clone(),
        };
        let state = AppState {
            webhook: Arc::new(WebhookSettings {
                app_secret: config.app_secret.clone(),
                verify_token: config.verify_token.clone(),
                phone_number_id: config.phone_number_id.clone(),
            }),
            registry,
            metrics,
            calls,
            tracker: TaskTracker::new(),
            ports,
            started: Instant::now(),
        };
        let listener = TcpListener::bind((config.bind_addr, config.port)).await?;
        Ok(App {
            listener,
            state,
            root,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn registry(&self) -> Registry {
        self.state.registry.clone()
    }

    pub fn metrics(&self) -> Metrics {
        self.state.metrics.clone()
    }

    /// Places business-initiated calls through this bridge.
    pub fn dialer(&self) -> Dialer {
        Dialer {
            context: self.state.calls.clone(),
            registry: self.state.registry.clone(),
            tracker: self.state.tracker.clone(),
            ports: self.state.ports.clone(),
        }
    }

    /// Cancelling this token ends every call with `CallEnd::Shutdown`.
    pub fn calls_token(&self) -> CancellationToken {
        self.root.clone()
    }

    /// Serves until `shutdown` resolves; then refuses new calls, ends the live ones (each with
    /// its `terminate`) and waits for them, bounded by a grace period.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            listener,
            state,
            root,
        } = self;
        let registry = state.registry.clone();
        let tracker = state.tracker.clone();
        let app = router(state);
        info!(addr = %listener.local_addr()?, "bridge listening");
        let drained = async move {
            shutdown.await;
            info!(active_calls = registry.active_calls(), "shutting down");
            registry.begin_drain();
            root.cancel();
            tracker.close();
            if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
                .await
                .is_err()
            {
                warn!("calls still running after the shutdown grace period");
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(drained)
            .await?;
        Ok(())
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
