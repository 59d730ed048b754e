//! This replica's inbox: events other replicas forwarded for calls it owns, read from its
//! stream and handed to the calls.

use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Fleet, FleetError, Forwarded, unix_us};

/// How long one read waits for an event before it is asked again.
pub(super) const BLOCK: Duration = Duration::from_secs(2);
/// Events waiting for the calls to take them; past this an event is dropped (counted) and the
/// call ends by its own means (the caller's media going, the maximum duration).
pub(super) const CAPACITY: usize = 1024;
/// Entries a stream keeps (approximately); they are a few hundred bytes each.
pub(super) const MAX_LENGTH: u64 = 10_000;
/// An inbox nobody renews (its replica died) is gone after this.
pub(super) const TTL: Duration = Duration::from_secs(60);
/// Events read at once.
const BATCH: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) async fn run(
    fleet: Fleet,
    mut conn: ConnectionManager,
    calls: mpsc::Sender<Forwarded>,
    shutdown: CancellationToken,
) {
    let key = fleet.inner.keys.inbox(&fleet.inner.me);
    // The name is new with this process, so every entry of the stream is for it.
    let mut last = "0-0".to_owned();
    let mut backoff = Duration::from_millis(100);
    let options = StreamReadOptions::default()
        .block(BLOCK.as_millis() as usize)
        .count(BATCH);
    loop {
        let (keys, ids) = ([&key], [&last]);
        let read = conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &options);
        let reply = tokio::select! {
            () = shutdown.cancelled() => return,
            reply = read => reply,
        };
        match reply {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                    last = entry.id.clone();
                    let Some(text) = entry.get::<String>("e") else {
                        continue;
                    };
                    match serde_json::from_str::<Forwarded>(&text) {
                        Ok(forwarded) => deliver(&fleet, &calls, forwarded),
                        Err(err) => warn!(%err, "fleet: unreadable forwarded event dropped"),
                    }
                }
            }
            Err(err) => {
                fleet.mark_degraded("inbox", &FleetError::Redis(err));
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn deliver(fleet: &Fleet, calls: &mpsc::Sender<Forwarded>, forwarded: Forwarded) {
    let metrics = &fleet.inner.metrics;
    let kind = forwarded.event.kind();
    let waited_us = unix_us().saturating_sub(forwarded.sent_at_us);
    metrics
        .forward_latency_seconds
        .observe(waited_us as f64 / 1e6);
    debug!(call_id = %forwarded.call_id, kind, from = %forwarded.from, waited_us, "fleet: event forwarded to this replica");
    let outcome = match calls.try_send(forwarded) {
        Ok(()) => "received",
        Err(_) => {
            warn!(kind, "fleet: inbox full; forwarded event dropped");
            "dropped"
        }
    };
    metrics
        .forwarded_events
        .with_label_values(&[kind, outcome])
        .inc();
}
