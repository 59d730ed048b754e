//! The fleet's background work: at each heartbeat this replica writes its report (which keeps
//! all its claims alive) and reads everyone's, and writes its claims again when Redis was away
//! or lost them; in between it writes the releases and tombstones of ended calls as they come,
//! and keeps them while Redis is away.

use std::sync::atomic::Ordering;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    CLAIM_TTL, Fleet, FleetError, HEARTBEAT, OWNER_TIMEOUT, Pending, ReplicaReport, ReportFn,
    TOMBSTONE_TTL, inbox, unix_ms,
};

/// Claims written again by one script call.
const REASSERT_BATCH: usize = 200;

const _: () = assert!(OWNER_TIMEOUT.as_millis() >= 3 * HEARTBEAT.as_millis());

pub(super) async fn run(fleet: Fleet, report: ReportFn, shutdown: CancellationToken) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                // The calls have ended: what they left to write goes out now, and the report
                // with it, so the fleet stops counting this replica.
                flush(&fleet).await;
                let _ = leave(&fleet).await;
                return;
            }
            _ = beat.tick() => {
                heartbeat(&fleet, &report).await;
                flush(&fleet).await;
            }
            () = fleet.inner.work.notified() => flush(&fleet).await,
        }
    }
}

/// Writes this replica's report (keeping its claims alive), writes its claims again if Redis
/// was away or lost them, and reads the fleet's reports.
pub(super) async fn heartbeat(fleet: &Fleet, report: &ReportFn) {
    let mine = report();
    let inner = &fleet.inner;
    let now = unix_ms();
    let ttl = OWNER_TIMEOUT.as_millis() as u64;
    let mut pipe = redis::pipe();
    // GET: the previous report comes back, so a missing one (Redis restarted empty, or this
    // replica went unheard for too long) is seen.
    pipe.cmd("SET")
        .arg(inner.keys.report(&inner.me))
        .arg(serde_json::to_string(&mine).unwrap_or_default())
        .arg("PX")
        .arg(ttl)
        .arg("GET")
        .cmd("ZADD")
        .arg(inner.keys.replicas())
        .arg(now + ttl)
        .arg(&inner.me)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(inner.keys.replicas())
        .arg("-inf")
        .arg(now)
        .ignore()
        .cmd("PEXPIRE")
        .arg(inner.keys.inbox(&inner.me))
        .arg(inbox::TTL.as_millis() as u64)
        .ignore();
    let written: Result<(Option<String>,), _> = fleet
        .run("report", pipe.query_async(&mut fleet.conn()))
        .await;
    let Ok((previous,)) = written else {
        return;
    };
    let lost = previous.is_none() && inner.reported.swap(true, Ordering::Relaxed);
    if (lost || inner.reassert.swap(false, Ordering::Relaxed)) && reassert(fleet).await.is_err() {
        inner.reassert.store(true, Ordering::Relaxed);
    }
    if let Ok(reports) = read_reports(fleet).await {
        let view = super::ClusterView {
            replicas: reports.len(),
            active_calls: reports.iter().map(|r| r.active_calls).sum(),
            max_calls: reports.iter().map(|r| r.max_calls).sum(),
            degraded: false,
        };
        inner.metrics.cluster_replicas.set(view.replicas as i64);
        inner
            .metrics
            .cluster_active_calls
            .set(view.active_calls as i64);
        *inner.cluster.lock() = view;
    }
}

/// Writes every claim this replica holds again (after Redis lost them, or while it was away);
/// a call now owned by another live replica (both admitted it while Redis was away) is logged.
pub(super) async fn reassert(fleet: &Fleet) -> Result<(), FleetError> {
    let owned: Vec<_> = fleet
        .inner
        .owned
        .lock()
        .iter()
        .map(|(id, owned)| (id.clone(), owned.caller.clone()))
        .collect();
    for batch in owned.chunks(REASSERT_BATCH) {
        let keys = &fleet.inner.keys;
        let mut invocation = fleet.inner.scripts.reassert.prepare_invoke();
        invocation
            .arg(&fleet.inner.me)
            .arg(CLAIM_TTL.as_millis() as u64)
            .arg(keys.report_prefix());
        for (id, caller) in batch {
            invocation
                .key(keys.call(id))
                .key(keys.caller(caller.as_ref()))
                .arg(id.as_str())
                .arg(u8::from(caller.is_some()));
        }
        let taken: Vec<String> = fleet
            .run("reassert", invocation.invoke_async(&mut fleet.conn()))
            .await?;
        for id in taken {
            warn!(call_id = %id, "fleet: a live call of this replica is claimed by another one (both admitted it while Redis was away)");
        }
    }
    if !owned.is_empty() {
        info!(
            claims = owned.len(),
            "fleet: this replica's claims written again"
        );
    }
    Ok(())
}

/// Writes the releases, tombstones and abandoned placements that wait; what Redis does not take
/// is kept for the next attempt.
pub(super) async fn flush(fleet: &Fleet) {
    let work = std::mem::take(&mut *fleet.inner.pending.lock());
    if work.is_empty() {
        return;
    }
    let mut left = Pending::default();
    let mut failed = false;
    let keys = &fleet.inner.keys;
    let tombstone_ms = TOMBSTONE_TTL.as_millis() as u64;
    for (id, caller) in work.releases {
        if failed {
            left.releases.insert(id, caller);
            continue;
        }
        let mut invocation = fleet.inner.scripts.release.prepare_invoke();
        invocation
            .key(keys.call(&id))
            .key(keys.caller(caller.as_ref()))
            .key(keys.tomb(&id))
            .arg(&fleet.inner.me)
            .arg(id.as_str())
            .arg(tombstone_ms)
            .arg(u8::from(caller.is_some()));
        let released: Result<i64, _> = fleet
            .run("release", invocation.invoke_async(&mut fleet.conn()))
            .await;
        if released.is_err() {
            failed = true;
            left.releases.insert(id, caller);
        }
    }
    for (caller, holder) in work.placements {
        if failed {
            left.placements.insert(caller, holder);
            continue;
        }
        let mut invocation = fleet.inner.scripts.release_placement.prepare_invoke();
        invocation.key(keys.caller(Some(&caller))).arg(&holder);
        let released: Result<i64, _> = fleet
            .run("release", invocation.invoke_async(&mut fleet.conn()))
            .await;
        if released.is_err() {
            failed = true;
            left.placements.insert(caller, holder);
        }
    }
    if !work.tombstones.is_empty() {
        if failed {
            left.tombstones = work.tombstones;
        } else {
            let mut pipe = redis::pipe();
            for id in &work.tombstones {
                pipe.cmd("SET")
                    .arg(keys.tomb(id))
                    .arg(1)
                    .arg("PX")
                    .arg(tombstone_ms)
                    .ignore();
            }
            let written: Result<(), _> = fleet
                .run("tombstone", pipe.query_async(&mut fleet.conn()))
                .await;
            if written.is_err() {
                left.tombstones = work.tombstones;
            }
        }
    }
    if !left.is_empty() {
        let mut pending = fleet.inner.pending.lock();
        left.releases.extend(pending.releases.drain());
        left.tombstones.extend(pending.tombstones.drain());
        left.placements.extend(pending.placements.drain());
        *pending = left;
    }
}

/// Every live replica's report.
pub(super) async fn read_reports(fleet: &Fleet) -> Result<Vec<ReplicaReport>, FleetError> {
    let keys = &fleet.inner.keys;
    let replicas: Vec<String> = fleet
        .run(
            "reports",
            redis::cmd("ZRANGEBYSCORE")
                .arg(keys.replicas())
                .arg(unix_ms())
                .arg("+inf")
                .query_async(&mut fleet.conn()),
        )
        .await?;
    if replicas.is_empty() {
        return Ok(Vec::new());
    }
    let mut mget = redis::cmd("MGET");
    for replica in &replicas {
        mget.arg(keys.report(replica));
    }
    let texts: Vec<Option<String>> = fleet
        .run("reports", mget.query_async(&mut fleet.conn()))
        .await?;
    Ok(texts
        .into_iter()
        .flatten()
        .filter_map(|text| serde_json::from_str(&text).ok())
        .collect())
}

/// Takes this replica out of the fleet's reports at shutdown.
pub(super) async fn leave(fleet: &Fleet) -> Result<(), FleetError> {
    let inner = &fleet.inner;
    let mut pipe = redis::pipe();
    pipe.cmd("ZREM")
        .arg(inner.keys.replicas())
        .arg(&inner.me)
        .ignore()
        .cmd("DEL")
        .arg(inner.keys.report(&inner.me))
        .ignore();
    fleet
        .run("report", pipe.query_async(&mut fleet.conn()))
        .await
}
