//! A fleet on one machine: several bridge processes sharing one Redis (each its own `REPLICA_ID`,
//! one key prefix per fleet), wired to one Graph API double and one Realtime AI double, behind an
//! ingress that hands the webhooks to the replicas in turn (round robin, with no stickiness, as
//! Azure Container Apps' ingress does: Meta sends no cookie), so a call's `terminate` often
//! reaches a replica that does not own the call. Used by the fleet's end-to-end tests and by
//! `demo --replicas N`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::task::JoinHandle;

use crate::bridge_process::{Bridge, Launch};
use crate::graph_double::{GraphDouble, GraphDoubleConfig};
use crate::phone::PhoneSettings;
use crate::realtime_ai::{AiDoubleConfig, RealtimeAiDouble};
use crate::stack::APP_SECRET;
use bridge::config;
use bridge::media::codec::EncoderSettings;
use bridge::whatsapp::signature::SIGNATURE_HEADER;

/// What to vary between fleets.
#[derive(Clone)]
pub struct FleetOptions {
    pub replicas: usize,
    /// `MAX_CONCURRENT_CALLS` of each replica.
    pub max_calls: usize,
    /// The Redis the replicas share.
    pub redis_url: String,
    /// The bridge binary; `None`: this one.
    pub exe: Option<PathBuf>,
    pub ai: AiDoubleConfig,
    /// The replicas' `ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// Where each replica's log goes (`replica-N.log`).
    pub log_dir: PathBuf,
    /// More settings of every replica (`KEY`, value).
    pub settings: Vec<(String, String)>,
}

/// A running fleet; [`FleetStack::stop`] ends it.
pub struct FleetStack {
    pub graph: GraphDouble,
    pub ai: RealtimeAiDouble,
    pub replicas: Vec<Bridge>,
    /// Each replica's `REPLICA_ID`, in the order of `replicas`.
    pub names: Vec<String>,
    /// The key prefix of this fleet in Redis.
    pub prefix: String,
    /// The ingress: the webhooks posted here go to the replicas in turn.
    pub ingress_url: String,
    ingress: JoinHandle<()>,
    http: reqwest::Client,
}

impl FleetStack {
    pub async fn start(options: FleetOptions) -> anyhow::Result<FleetStack> {
        let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
        let graph = GraphDouble::start_on(GraphDoubleConfig::default(), localhost).await?;
        let ai = RealtimeAiDouble::start_on(options.ai.clone(), localhost).await?;
        let prefix = format!("wvb-fleet-{}", uuid::Uuid::new_v4().simple());
        std::fs::create_dir_all(&options.log_dir)?;
        let mut replicas = Vec::new();
        let mut names = Vec::new();
        for n in 0..options.replicas {
            let name = format!("replica-{n}");
            let mut settings = options.settings.clone();
            settings.extend([
                (config::REDIS_URL.to_owned(), options.redis_url.clone()),
                (config::REDIS_KEY_PREFIX.to_owned(), prefix.clone()),
                (config::REPLICA_ID.to_owned(), name.clone()),
            ]);
            if let Some(token) = &options.admin_token {
                settings.push((config::ADMIN_TOKEN.to_owned(), token.clone()));
            }
            let log = options.log_dir.join(format!("{name}.log"));
            let replica = Bridge::start(Launch {
                graph_url: graph.base_url(),
                ai_url: ai.url(),
                app_secret: APP_SECRET,
                max_calls: options.max_calls,
                encoder: EncoderSettings::default(),
                log: &log,
                cpus: None,
                exe: options.exe.as_deref(),
                settings,
            })
            .await?;
            replicas.push(replica);
            names.push(name);
        }
        let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
        let (ingress_url, ingress) = start_ingress(urls).await?;
        Ok(FleetStack {
            graph,
            ai,
            replicas,
            names,
            prefix,
            ingress_url,
            ingress,
            http: reqwest::Client::new(),
        })
    }

    /// Settings for a simulated phone whose webhooks all go to replica `n`.
    pub fn phone_settings(&self, n: usize) -> PhoneSettings {
        self.settings_for(self.replicas[n].url.clone())
    }

    /// Settings for a simulated phone whose webhooks go through the ingress, to the replicas in
    /// turn.
    pub fn ingress_phone_settings(&self) -> PhoneSettings {
        self.settings_for(self.ingress_url.clone())
    }

    fn settings_for(&self, bridge_url: String) -> PhoneSettings {
        PhoneSettings::on_loopback(
            bridge_url,
            APP_SECRET,
            self.graph.clone(),
            self.http.clone(),
        )
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Stops every replica (draining them), the ingress and the doubles.
    pub async fn stop(self) {
        for replica in self.replicas {
            replica.stop().await;
        }
        self.ingress.abort();
        self.ai.shutdown();
        self.graph.shutdown();
    }
}

/// The replicas' webhook URLs, handed out in turn.
struct Ingress {
    replicas: Vec<String>,
    next: AtomicUsize,
    http: reqwest::Client,
}

async fn start_ingress(replicas: Vec<String>) -> anyhow::Result<(String, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let ingress = Arc::new(Ingress {
        replicas,
        next: AtomicUsize::new(0),
        http: reqwest::Client::new(),
    });
    let app = Router::new()
        .route("/webhook", post(forward))
        .with_state(ingress);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, server))
}

/// Hands one webhook to the next replica in turn, signature and body untouched, and its answer
/// back.
async fn forward(State(ingress): State<Arc<Ingress>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = ingress.next.fetch_add(1, Ordering::Relaxed) % ingress.replicas.len();
    let mut request = ingress
        .http
        .post(format!("{}/webhook", ingress.replicas[n]))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = headers.get(SIGNATURE_HEADER) {
        request = request.header(SIGNATURE_HEADER, signature.as_bytes());
    }
    match request.send().await {
        Ok(reply) => {
            let status =
                StatusCode::from_u16(reply.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = reply.text().await.unwrap_or_default();
            (status, [("content-type", "application/json")], body).into_response()
        }
        // As a platform ingress does when no replica answers.
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}
