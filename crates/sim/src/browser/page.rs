//! The caller's page: served on loopback (Web Audio worklets need a secure context, which
//! `http://127.0.0.1` is and `about:blank` is not), and its `caller` API (caller.js) driven
//! from Rust. Each page reports itself ready with a request, so nothing is evaluated in a
//! document that is still loading.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::oneshot;

use super::chromium::{Chromium, Tab};

const CALLER_JS: &str = include_str!("caller.js");
/// How long a page may take to load and report ready.
const LOAD_TIMEOUT: Duration = Duration::from_secs(20);

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// The local web server of the callers' pages.
pub struct PageServer {
    addr: SocketAddr,
    ready: Waiters,
    stop: Option<oneshot::Sender<()>>,
}

impl PageServer {
    pub async fn start() -> anyhow::Result<PageServer> {
        let ready: Waiters = Arc::default();
        let app = Router::new()
            .route("/call/{key}", get(page))
            .route(
                "/caller.js",
                get(|| async { ([("content-type", "text/javascript")], CALLER_JS) }),
            )
            .route("/ready/{key}", get(loaded))
            .with_state(ready.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(PageServer {
            addr,
            ready,
            stop: Some(stop),
        })
    }

    /// Opens a caller's page for call `key` in `chromium`, once it has loaded.
    pub async fn open(&self, chromium: &Chromium, key: &str) -> anyhow::Result<CallerPage> {
        let (tx, rx) = oneshot::channel();
        self.ready.lock().insert(key.to_owned(), tx);
        let tab = chromium
            .open(&format!("http://{}/call/{key}", self.addr))
            .await?;
        tokio::time::timeout(LOAD_TIMEOUT, rx)
            .await
            .context("the caller's page did not load")?
            .context("the page server stopped")?;
        Ok(CallerPage { tab })
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn page(Path(key): Path<String>) -> Html<String> {
    // The key is the harness's own (a call number); escaped anyway.
    let key: String = key.chars().filter(char::is_ascii_alphanumeric).collect();
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>caller {key}</title>\
         <script src=/caller.js></script><script>fetch('/ready/{key}')</script>"
    ))
}

async fn loaded(State(ready): State<Waiters>, Path(key): Path<String>) -> &'static str {
    if let Some(waiter) = ready.lock().remove(&key) {
        let _ = waiter.send(());
    }
    "ok"
}

/// What the page hands back at the end of a call.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageResult {
    /// Rate of the recording (48000).
    pub rate: u32,
    /// What Chromium played out of the remote track, PCM16 mono, base64.
    pub pcm: String,
    /// Audio-context frame of the recording's first sample.
    pub record_start_frame: Option<f64>,
    /// Audio-context frame when the connection turned `connected` (ICE and DTLS up).
    pub connected_frame: Option<f64>,
    /// `inbound-rtp` rows every 100 ms and one at the end (see caller.js for the fields).
    pub stats: Vec<Value>,
}

impl PageResult {
    pub fn samples(&self) -> anyhow::Result<Vec<i16>> {
        let bytes = BASE64.decode(&self.pcm)?;
        Ok(bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect())
    }
}

/// One caller's page, through its `caller` API.
pub struct CallerPage {
    tab: Tab,
}

impl CallerPage {
    /// Chromium's offer, every candidate gathered.
    pub async fn offer(&self) -> anyhow::Result<String> {
        let offer = self.tab.evaluate("caller.offer()").await?;
        offer
            .as_str()
            .map(str::to_owned)
            .context("the page returned no offer")
    }

    pub async fn answer(&self, sdp: &str) -> anyhow::Result<()> {
        self.tab
            .evaluate(&format!("caller.answer({})", Value::from(sdp)))
            .await?;
        Ok(())
    }

    /// Waits until received speech starts at or after recording frame `after` and `seconds`
    /// of it are recorded; returns the onset frame (of the recording).
    pub async fn speech(&self, after: u64, seconds: f64) -> anyhow::Result<u64> {
        let onset = self
            .tab
            .evaluate(&format!("caller.speech({after}, {seconds})"))
            .await?;
        onset.as_u64().context("no onset")
    }

    /// The caller talks for `ms` (a tone at speaking level); returns the recording's length
    /// (frames) when the caller began.
    pub async fn speak(&self, ms: u64) -> anyhow::Result<u64> {
        let began = self.tab.evaluate(&format!("caller.speak({ms})")).await?;
        began.as_u64().context("speak returned no frame")
    }

    /// Hangs up the page's side and takes the recording and the stats.
    pub async fn finish(&self) -> anyhow::Result<PageResult> {
        let value = self.tab.evaluate("caller.finish()").await?;
        Ok(serde_json::from_value(value)?)
    }

    pub async fn close(self) {
        self.tab.close().await;
    }
}
