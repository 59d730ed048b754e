//! Headless Chromium as a child process, driven over the Chrome DevTools Protocol (a WebSocket;
//! commands answered by id, events ignored).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::SinkExt as _;
use futures_util::stream::{SplitSink, StreamExt as _};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to open its DevTools endpoint.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What Chromium prints on stderr once the DevTools endpoint listens.
const LISTENING: &str = "DevTools listening on ";
/// A call's recording comes back as one message of a few MB.
const MAX_MESSAGE: usize = 256 << 20;

/// Flags for a caller's browser on loopback: no window, no GPU, no sandbox (the harness runs as
/// root in a container), media allowed without a prompt or a user gesture, host candidates on
/// the loopback interface and with their addresses (not mDNS names), and no throttling of pages
/// that are not in front (several calls run in pages side by side).
const FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = HashMap<u64, oneshot::Sender<Result<Value, String>>>;

/// A running Chromium and its DevTools connection; killed when dropped.
pub struct Chromium {
    child: Child,
    cdp: Cdp,
    profile: PathBuf,
    /// `Chrome/156.0.8078.129`, as `Browser.getVersion` names it.
    pub product: String,
}

impl Chromium {
    /// Starts `exe` with its own temporary profile; its stderr goes to `log`.
    pub async fn launch(exe: &str, log: &Path) -> anyhow::Result<Chromium> {
        let profile = std::env::temp_dir().join(format!("wvb-chromium-{}", uuid::Uuid::new_v4()));
        let mut child = Command::new(exe)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {exe} (is Chromium installed?)"))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let log = tokio::fs::File::create(log)
            .await
            .with_context(|| format!("creating {}", log.display()))?;
        let url = tokio::time::timeout(START_TIMEOUT, devtools_url(stderr, log))
            .await
            .context("Chromium did not open its DevTools endpoint")??;
        let cdp = Cdp::connect(&url).await?;
        let version = cdp.call("Browser.getVersion", json!({}), None).await?;
        let product = version["product"].as_str().unwrap_or("?").to_owned();
        Ok(Chromium {
            child,
            cdp,
            profile,
            product,
        })
    }

    /// Opens `url` in a new page and attaches to it.
    pub async fn open(&self, url: &str) -> anyhow::Result<Tab> {
        let target = self
            .cdp
            .call("Target.createTarget", json!({"url": url}), None)
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .context("no targetId")?
            .to_owned();
        let attached = self
            .cdp
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                None,
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_owned();
        Ok(Tab {
            cdp: self.cdp.clone(),
            target_id,
            session,
        })
    }

    /// Closes the browser and removes its profile.
    pub async fn stop(mut self) {
        let _ = self.cdp.call("Browser.close", json!({}), None).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Reads Chromium's stderr until the DevTools URL, then keeps copying it to the log (a pipe
/// nobody reads would block Chromium once full).
async fn devtools_url(stderr: ChildStderr, mut log: tokio::fs::File) -> anyhow::Result<String> {
    let mut lines = BufReader::new(stderr).lines();
    while let Some(line) = lines.next_line().await? {
        log.write_all(line.as_bytes()).await?;
        log.write_all(b"\n").await?;
        if let Some(url) = line.strip_prefix(LISTENING) {
            let url = url.trim().to_owned();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = log.write_all(line.as_bytes()).await;
                    let _ = log.write_all(b"\n").await;
                }
            });
            return Ok(url);
        }
    }
    anyhow::bail!("Chromium exited before opening DevTools (see its log)")
}

/// One page, attached with its own DevTools session.
pub struct Tab {
    cdp: Cdp,
    target_id: String,
    session: String,
}

impl Tab {
    /// Evaluates `expression` in the page, awaiting a promise, and returns its value as JSON.
    pub async fn evaluate(&self, expression: &str) -> anyhow::Result<Value> {
        let result = self
            .cdp
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
                Some(&self.session),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("exception");
            anyhow::bail!("{expression:.40}: {text}");
        }
        Ok(result["result"]["value"].clone())
    }

    pub async fn close(self) {
        let _ = self
            .cdp
            .call(
                "Target.closeTarget",
                json!({"targetId": self.target_id}),
                None,
            )
            .await;
    }
}

/// The DevTools connection: commands are sent with an id; a reader task hands each answer to
/// the command waiting for it.
#[derive(Clone)]
struct Cdp {
    sink: Arc<tokio::sync::Mutex<Sink>>,
    pending: Arc<Mutex<Pending>>,
    next_id: Arc<AtomicU64>,
}

impl Cdp {
    async fn connect(url: &str) -> anyhow::Result<Cdp> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (socket, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        let (sink, mut stream) = socket.split();
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let routes = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(reply) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let Some(id) = reply["id"].as_u64() else {
                    continue; // an event
                };
                if let Some(waiter) = routes.lock().remove(&id) {
                    let answer = match reply.get("error") {
                        Some(error) => Err(error.to_string()),
                        None => Ok(reply["result"].clone()),
                    };
                    let _ = waiter.send(answer);
                }
            }
            // The browser is gone: every waiting command fails.
            routes.lock().clear();
        });
        Ok(Cdp {
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    async fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::text(command.to_string()))
            .await
            .with_context(|| format!("sending {method}"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("{method}: the browser closed the connection"))?
            .map_err(|error| anyhow::anyhow!("{method}: {error}"))
    }
}
