//! Serves a router on a listener with bounded connections: a cap on how many are open, and
//! header, body and idle timeouts, so that clients that stall cannot hold file descriptors.
//!
//! At the cap a new connection is closed at once (`whatsapp_bridge_http_connections_refused_total`)
//! and the connections already open go on: Meta's kept-alive webhook connections and the
//! probes' keep working, and a stalled connection frees its place within `HTTP_HEADER_TIMEOUT`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::body_deadline::{BodyDeadline, limit_body_time};
use super::conn_clock::{ConnectionClock, Expiry};
use crate::config::HttpLimits;
use crate::metrics::ListenerMetrics;

/// After a failed `accept` (most often: no file descriptor left), the wait before the next,
/// so that the loop does not spin while the condition lasts.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets each
/// connection finish its request in flight (idle ones close at once) and returns once every
/// connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: ListenerMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let router = router.layer(from_fn_with_state(
        BodyDeadline {
            timeout: limits.body_timeout,
            timed_out: metrics.body_timeouts.clone(),
        },
        limit_body_time,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    // Whether the last connection was refused: the cap is logged once per episode, not per
    // connection.
    let mut at_cap = false;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    warn!(%err, "accepting an HTTP connection failed");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.refused.inc();
            if !at_cap {
                warn!(
                    max_connections = limits.max_connections,
                    "HTTP connection cap reached: new connections are closed at once"
                );
                at_cap = true;
            }
            // Dropped: closed at once, no file descriptor held.
            drop(stream);
            continue;
        };
        if at_cap {
            info!("HTTP connections below the cap again");
            at_cap = false;
        }
        connections.spawn(serve_connection(
            stream,
            router.clone(),
            limits,
            metrics.clone(),
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// The clock of one connection, shared by its socket (bytes read), its service (requests) and
/// its task (which closes the connection when the clock says so).
struct Watch {
    clock: Mutex<ConnectionClock>,
    /// Woken when the deadline may have moved.
    changed: Notify,
}

/// Serves one connection until it ends, its clock expires, or shutdown closes it after its
/// request in flight. Holds its place under the cap (`_permit`) until then.
async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    metrics: ListenerMetrics,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::count(metrics.open.clone());
    let watch = Arc::new(Watch {
        clock: Mutex::new(ConnectionClock::new(
            Instant::now(),
            limits.header_timeout,
            limits.idle_timeout,
        )),
        changed: Notify::new(),
    });
    let service = {
        let watch = watch.clone();
        let router = TowerToHyperService::new(router);
        service_fn(move |request| {
            watch.clock.lock().request_started();
            watch.changed.notify_one();
            let response = router.call(request);
            let watch = watch.clone();
            async move {
                let response = response.await;
                watch.clock.lock().response_ready(Instant::now());
                watch.changed.notify_one();
                response
            }
        })
    };
    let io = TokioIo::new(WatchedStream {
        stream,
        watch: watch.clone(),
    });
    // hyper's own header timer is off: the clock keeps the header and idle deadlines apart.
    let connection = http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let deadline = watch.clock.lock().deadline();
        let expiry = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    debug!(%err, "HTTP connection ended with an error");
                }
                return;
            }
            () = watch.changed.notified() => {}
            () = expiry => {
                let expired = watch.clock.lock().expired(Instant::now());
                if let Some(expiry) = expired {
                    let counter = match expiry {
                        Expiry::Header => &metrics.header_timeouts,
                        Expiry::Idle => &metrics.idle_timeouts,
                    };
                    counter.inc();
                    debug!(?expiry, "HTTP connection timed out; closing it");
                    return;
                }
            }
            () = stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection counted in the open-connections gauge for as long as its task lives, however
/// it ends.
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn count(open: IntGauge) -> Self {
        open.inc();
        Self(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection's socket that tells its clock when the client sends bytes.
struct WatchedStream {
    stream: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let moved = this.watch.clock.lock().bytes_read(Instant::now());
            if moved {
                this.watch.changed.notify_one();
            }
        }
        read
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
