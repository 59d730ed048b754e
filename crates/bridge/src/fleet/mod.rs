//! Call state shared between the replicas of a fleet, through Redis (`REDIS_URL`).
//!
//! Meta sends every webhook of the app to one URL and the platform's ingress hands each to any
//! replica, so what must hold across replicas lives in Redis:
//! - **claims**: a call id's owner (`call:{id}` → replica) and the caller's one live call
//!   (`caller:{number}` → owner and call id), taken atomically at admission and released on every
//!   end path; a redelivered `connect` finds the claim and is a duplicate, a second call of the
//!   same caller finds the caller's. A claim lives as long as its owner: one whose owner stopped
//!   reporting (it died) is stale and free to take, so a replica renews one key per heartbeat,
//!   not one per call;
//! - **tombstones** of ended and refused call ids (`tomb:{id}`, ten minutes);
//! - **forwarding**: an event for a call owned elsewhere goes to the owner's inbox (a stream per
//!   replica) and is applied there; an event that beats the owner's own claim (the answer to a
//!   call being placed) waits in `early:{id}` until the owner takes it;
//! - **reports**: each replica's heartbeat (its live calls, capacity, draining), for `/health`,
//!   the admin API and the fleet's metrics.
//!
//! Redis is never on the media path: only admission, webhooks and a background worker touch it,
//! each command bounded by a timeout. With Redis away a replica keeps its calls, admits on its
//! own knowledge (counted, `whatsapp_bridge_fleet_degraded` = 1), and when Redis is back (or
//! has lost its data) it writes its claims again and the releases and tombstones it could not
//! write.

mod counters;
mod inbox;
mod keys;
mod scripts;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ids::{CallId, PhoneNumber};
use crate::metrics::Metrics;
pub use counters::{Counter, Taken};
use keys::Keys;
use scripts::Scripts;

/// How often the worker writes this replica's report (which keeps its claims alive) and reads
/// the fleet's.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica whose report is older than this is taken for dead, and its claims for stale.
pub const OWNER_TIMEOUT: Duration = Duration::from_secs(6);
/// A claim's own expiry: only a safety net for keys nobody releases (a dead replica's), long
/// after they went stale; no call lasts this long.
pub const CLAIM_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long an ended or refused call id is remembered (whatsapp-calling §6: at least 10 min).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Bound on one Redis command of admission or webhook routing: past it the replica goes on with
/// what it knows rather than hold a webhook.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How long an event for a call nobody owns yet waits for its owner (an outbound call's answer
/// arriving before the `connect` response that names the call).
const EARLY_TTL: Duration = Duration::from_secs(60);
/// Releases and tombstones kept while Redis is away; beyond this new ones are dropped (their
/// claims then stay until the replica stops, or until `CLAIM_TTL`).
const PENDING_MAX: usize = 10_000;

/// Where the fleet's state lives and who this replica is.
#[derive(Clone)]
pub struct FleetSettings {
    /// `redis://` or `rediss://` (TLS); may carry a password.
    pub url: SecretString,
    /// Prefix of every key, so that several fleets (or test runs) can share one Redis.
    pub prefix: String,
    /// This replica's name in the fleet; unique per process.
    pub replica: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// What the fleet says of a call offered to this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This replica owns the call now.
    Claimed,
    /// Redis could not be asked: the call is taken on this replica's own knowledge, and claimed
    /// in Redis when it is back.
    Unconfirmed,
    /// Another replica (or this one) owns the call: a redelivered `connect`.
    Live,
    /// The call ended, was refused or was terminated before.
    Ended,
    /// The caller has a live call on some replica.
    CallerBusy,
}

/// An event of Meta's for a call, as forwarded to the call's owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FleetEvent {
    /// A `terminate` webhook.
    Terminated,
    /// Meta's SDP answer to a call the owner placed.
    Answer { sdp: String },
    /// The callee picked up a call the owner placed.
    Accepted,
    /// The callee declined a call the owner placed.
    Rejected,
    /// An operator ended the call through another replica's admin API.
    Hangup,
}

impl FleetEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Terminated => "terminated",
            Self::Answer { .. } => "answer",
            Self::Accepted => "accepted",
            Self::Rejected => "rejected",
            Self::Hangup => "hangup",
        }
    }
}

/// An event that reached this replica's inbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub call_id: CallId,
    pub event: FleetEvent,
    /// The replica that received the webhook.
    pub from: String,
    /// When it was forwarded, µs since the Unix epoch (for the latency histogram; the replicas'
    /// clocks agree closely enough on one host, and NTP keeps them close across hosts).
    pub sent_at_us: u64,
}

/// Where an event for a call went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Forwarded to the replica that owns the call.
    Forwarded(String),
    /// Nobody owns the call (ended, never known, or its owner died).
    NoOwner,
    /// This replica owns it (the caller then applies it locally).
    Mine,
    /// Redis could not be asked.
    Unavailable,
}

/// One call as a replica's report lists it (for the admin API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallBrief {
    pub id: String,
    pub direction: String,
    /// Masked.
    pub phone: Option<String>,
    pub state: String,
    /// Unix seconds.
    pub started: u64,
    pub duration_seconds: u64,
}

/// What a replica tells the fleet about itself at each heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: String,
    pub active_calls: usize,
    pub max_calls: usize,
    pub draining: bool,
    pub calls: Vec<CallBrief>,
}

/// The fleet as of the last heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub replicas: usize,
    pub active_calls: usize,
    pub max_calls: usize,
    /// Whether Redis could not be reached at the last attempt.
    pub degraded: bool,
}

/// Builds this replica's report at each heartbeat (given by the owner of the live calls).
pub type ReportFn = Arc<dyn Fn() -> ReplicaReport + Send + Sync>;

/// A claim this replica holds.
#[derive(Clone, Debug)]
struct Owned {
    /// The caller whose key holds this owner and call id.
    caller: Option<PhoneNumber>,
}

/// Writes that wait for Redis: releases of ended calls, tombstones.
#[derive(Default)]
struct Pending {
    /// Call id → the caller whose key it may still hold.
    releases: HashMap<CallId, Option<PhoneNumber>>,
    tombstones: HashSet<CallId>,
    /// Placeholders of outbound calls whose placing failed: caller → holder.
    placements: HashMap<PhoneNumber, String>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.releases.is_empty() && self.tombstones.is_empty() && self.placements.is_empty()
    }

    fn len(&self) -> usize {
        self.releases.len() + self.tombstones.len() + self.placements.len()
    }
}

struct Inner {
    me: String,
    keys: Keys,
    conn: ConnectionManager,
    scripts: Scripts,
    metrics: Metrics,
    owned: Mutex<HashMap<CallId, Owned>>,
    pending: Mutex<Pending>,
    /// Wakes the worker when there is something to write.
    work: Notify,
    degraded: AtomicBool,
    /// This replica's claims must be written again at the next heartbeat (Redis was away, or
    /// lost its data).
    reassert: AtomicBool,
    /// A report has been written once (so a missing one later means Redis lost it).
    reported: AtomicBool,
    cluster: Mutex<ClusterView>,
}

/// This replica's handle on the fleet; cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("replica", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects lazily: a Redis that is down at start makes the replica degraded, not dead.
    pub fn new(settings: &FleetSettings, metrics: Metrics) -> Result<Fleet, FleetError> {
        let conn = connection(&settings.url, COMMAND_TIMEOUT)?;
        metrics.fleet_degraded.set(0);
        Ok(Fleet {
            inner: Arc::new(Inner {
                me: settings.replica.clone(),
                keys: Keys::new(&settings.prefix),
                conn,
                scripts: Scripts::new(),
                metrics,
                owned: Mutex::default(),
                pending: Mutex::default(),
                work: Notify::new(),
                degraded: AtomicBool::new(false),
                reassert: AtomicBool::new(false),
                reported: AtomicBool::new(false),
                cluster: Mutex::default(),
            }),
        })
    }

    /// Starts the heartbeat worker and the inbox reader; events forwarded to this replica come
    /// out of the returned channel. Both stop when `shutdown` is cancelled; the worker then
    /// writes what the ended calls left and takes this replica out of the reports, and the
    /// returned handle finishes.
    pub fn start(
        &self,
        settings: &FleetSettings,
        report: ReportFn,
        shutdown: CancellationToken,
    ) -> Result<(mpsc::Receiver<Forwarded>, JoinHandle<()>), FleetError> {
        // The inbox reader blocks on XREAD, so it has a connection of its own.
        let reader = connection(&settings.url, inbox::BLOCK + COMMAND_TIMEOUT)?;
        let (tx, rx) = mpsc::channel(inbox::CAPACITY);
        tokio::spawn(inbox::run(self.clone(), reader, tx, shutdown.clone()));
        let worker = tokio::spawn(worker::run(self.clone(), report, shutdown));
        info!(replica = %self.inner.me, "fleet: call state shared through Redis");
        Ok((rx, worker))
    }

    /// Writes this replica's first report, so that its claims count as alive from the first
    /// call on (a best effort: without Redis the worker's heartbeats write it later).
    pub async fn join(&self, report: &ReportFn) {
        worker::heartbeat(self, report).await;
    }

    /// This replica's name in the fleet.
    pub fn replica(&self) -> &str {
        &self.inner.me
    }

    /// The fleet as of the last heartbeat.
    pub fn cluster(&self) -> ClusterView {
        let mut view = self.inner.cluster.lock().clone();
        view.degraded = self.is_degraded();
        view
    }

    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// Claims an offered call for this replica, and its caller's one live call. Never fails:
    /// without Redis the answer is [`Claim::Unconfirmed`].
    pub async fn claim(&self, call_id: &CallId, caller: Option<&PhoneNumber>) -> Claim {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.claim.prepare_invoke();
        invocation
            .key(keys.call(call_id))
            .key(keys.caller(caller))
            .key(keys.tomb(call_id))
            .arg(&self.inner.me)
            .arg(CLAIM_TTL.as_millis() as u64)
            .arg(call_id.as_str())
            .arg(u8::from(caller.is_some()))
            .arg(keys.report_prefix());
        let answer: Result<String, _> = self
            .run("claim", invocation.invoke_async(&mut self.conn()))
            .await;
        let claim = match answer.as_deref() {
            Ok("claimed") => Claim::Claimed,
            Ok("live") => Claim::Live,
            Ok("ended") => Claim::Ended,
            Ok("busy") => Claim::CallerBusy,
            Ok(other) => {
                warn!(answer = other, "fleet: unexpected claim answer");
                Claim::Unconfirmed
            }
            Err(_) => Claim::Unconfirmed,
        };
        if matches!(claim, Claim::Claimed | Claim::Unconfirmed) {
            self.inner.owned.lock().insert(
                call_id.clone(),
                Owned {
                    caller: caller.cloned(),
                },
            );
        }
        claim
    }

    /// Takes the caller's one live call for an outbound call about to be placed. `Err` when the
    /// caller has a live call somewhere; without Redis the placement goes ahead unconfirmed.
    pub async fn claim_caller(&self, caller: &PhoneNumber) -> Result<Placement, ()> {
        let holder = format!("{}|placing:{}", self.inner.me, uuid::Uuid::new_v4());
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.claim_caller.prepare_invoke();
        invocation
            .key(keys.caller(Some(caller)))
            .arg(&holder)
            .arg(CLAIM_TTL.as_millis() as u64)
            .arg(keys.report_prefix());
        let answer: Result<String, _> = self
            .run("claim_caller", invocation.invoke_async(&mut self.conn()))
            .await;
        if matches!(answer.as_deref(), Ok("busy")) {
            return Err(());
        }
        Ok(Placement {
            fleet: self.clone(),
            caller: caller.clone(),
            holder: Some(holder),
        })
    }

    /// Releases this replica's claim of an ended call and remembers the id as ended, without
    /// waiting (the worker writes it; it is kept while Redis is away).
    pub fn release(&self, call_id: &CallId) {
        let Some(owned) = self.inner.owned.lock().remove(call_id) else {
            return;
        };
        let mut pending = self.inner.pending.lock();
        if pending.len() < PENDING_MAX {
            pending.releases.insert(call_id.clone(), owned.caller);
        }
        drop(pending);
        self.inner.work.notify_one();
    }

    /// Remembers a call id as ended or refused across the fleet, without waiting.
    pub fn tombstone(&self, call_id: &CallId) {
        let mut pending = self.inner.pending.lock();
        if pending.len() < PENDING_MAX {
            pending.tombstones.insert(call_id.clone());
        }
        drop(pending);
        self.inner.work.notify_one();
    }

    /// Sends `event` to the replica that owns the call, if another (live) one does.
    pub async fn route(&self, call_id: &CallId, event: &FleetEvent) -> Routed {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.owner.prepare_invoke();
        invocation.key(keys.call(call_id)).arg(keys.report_prefix());
        let owner: Result<Option<String>, _> = self
            .run("owner", invocation.invoke_async(&mut self.conn()))
            .await;
        let routed = match owner {
            Err(_) => Routed::Unavailable,
            Ok(None) => Routed::NoOwner,
            Ok(Some(owner)) if owner == self.inner.me => Routed::Mine,
            Ok(Some(owner)) => match self.forward(&owner, call_id, event).await {
                Ok(()) => Routed::Forwarded(owner),
                Err(_) => Routed::Unavailable,
            },
        };
        let outcome = match &routed {
            Routed::Forwarded(_) => "sent",
            Routed::NoOwner => "no_owner",
            Routed::Mine => "mine",
            Routed::Unavailable => "unavailable",
        };
        self.inner
            .metrics
            .forwarded_events
            .with_label_values(&[event.kind(), outcome])
            .inc();
        routed
    }

    /// Keeps `event` for the replica that will own the call (an outbound call's answer or
    /// status that beat the `connect` response naming it), then routes it in case the owner
    /// claimed the call meanwhile. The owner takes kept events when it claims
    /// ([`Fleet::bind`]); one of the two always delivers, and applying twice is harmless.
    pub async fn hold_early(&self, call_id: &CallId, event: &FleetEvent) -> Routed {
        let forwarded = self.forwarded(call_id, event);
        let key = self.inner.keys.early(call_id);
        let mut pipe = redis::pipe();
        pipe.cmd("RPUSH")
            .arg(&key)
            .arg(forwarded)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(EARLY_TTL.as_millis() as u64)
            .ignore();
        let kept: Result<(), _> = self
            .run("hold_early", pipe.query_async(&mut self.conn()))
            .await;
        if kept.is_err() {
            return Routed::Unavailable;
        }
        self.route(call_id, event).await
    }

    /// Binds a placed call to the id Meta gave it: the call's claim, the caller's key moved from
    /// the placeholder to the call; returns the events that were kept for it.
    pub async fn bind(&self, mut placement: Placement, call_id: &CallId) -> Vec<Forwarded> {
        let holder = placement.holder.take().unwrap_or_default();
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.bind.prepare_invoke();
        invocation
            .key(keys.call(call_id))
            .key(keys.caller(Some(&placement.caller)))
            .key(keys.early(call_id))
            .arg(&self.inner.me)
            .arg(call_id.as_str())
            .arg(&holder)
            .arg(CLAIM_TTL.as_millis() as u64);
        self.inner.owned.lock().insert(
            call_id.clone(),
            Owned {
                caller: Some(placement.caller.clone()),
            },
        );
        let kept: Result<Vec<String>, _> = self
            .run("bind", invocation.invoke_async(&mut self.conn()))
            .await;
        kept.unwrap_or_default()
            .iter()
            .filter_map(|text| serde_json::from_str(text).ok())
            .collect()
    }

    /// Every other replica's report (for the admin API), fresh from Redis.
    pub async fn other_reports(&self) -> Result<Vec<ReplicaReport>, FleetError> {
        let reports = worker::read_reports(self).await?;
        Ok(reports
            .into_iter()
            .filter(|report| report.replica != self.inner.me)
            .collect())
    }

    fn forwarded(&self, call_id: &CallId, event: &FleetEvent) -> String {
        let forwarded = Forwarded {
            call_id: call_id.clone(),
            event: event.clone(),
            from: self.inner.me.clone(),
            sent_at_us: unix_us(),
        };
        serde_json::to_string(&forwarded).expect("a forwarded event serialises")
    }

    async fn forward(
        &self,
        owner: &str,
        call_id: &CallId,
        event: &FleetEvent,
    ) -> Result<(), FleetError> {
        let forwarded = self.forwarded(call_id, event);
        let inbox = self.inner.keys.inbox(owner);
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&inbox)
            .arg("MAXLEN")
            .arg("~")
            .arg(inbox::MAX_LENGTH)
            .arg("*")
            .arg("e")
            .arg(forwarded)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&inbox)
            .arg(inbox::TTL.as_millis() as u64)
            .ignore();
        self.run("forward", pipe.query_async(&mut self.conn()))
            .await
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Runs one Redis command bounded by [`COMMAND_TIMEOUT`]: counts it, and marks the fleet
    /// degraded or back.
    async fn run<T>(
        &self,
        op: &'static str,
        command: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, FleetError> {
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(FleetError::Redis(err)),
            Err(_) => Err(FleetError::Timeout(COMMAND_TIMEOUT)),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(FleetError::Redis(_)) => "error",
            Err(FleetError::Timeout(_)) => "timeout",
        };
        self.inner
            .metrics
            .fleet_operations
            .with_label_values(&[op, outcome])
            .inc();
        match &result {
            Ok(_) => self.mark_reachable(),
            Err(err) => self.mark_degraded(op, err),
        }
        result
    }

    fn mark_degraded(&self, op: &str, err: &FleetError) {
        if !self.inner.degraded.swap(true, Ordering::Relaxed) {
            warn!(op, %err, "fleet degraded: Redis cannot be reached; live calls go on, new calls are admitted on this replica's own knowledge");
            self.inner.metrics.fleet_degraded.set(1);
        }
    }

    fn mark_reachable(&self) {
        if self.inner.degraded.swap(false, Ordering::Relaxed) {
            info!("fleet: Redis reachable again; this replica's claims are written again");
            self.inner.metrics.fleet_degraded.set(0);
            self.inner.reassert.store(true, Ordering::Relaxed);
            // The worker writes the claims and what waited, now rather than at the next beat.
            self.inner.work.notify_one();
        }
    }
}

/// An outbound call being placed: the caller's key holds a placeholder until the call is bound
/// to the id Meta gives it ([`Fleet::bind`]); dropped unbound, the placeholder is released.
pub struct Placement {
    fleet: Fleet,
    caller: PhoneNumber,
    holder: Option<String>,
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Some(holder) = self.holder.take() {
            let inner = &self.fleet.inner;
            let mut pending = inner.pending.lock();
            if pending.len() < PENDING_MAX {
                pending.placements.insert(self.caller.clone(), holder);
            }
            drop(pending);
            inner.work.notify_one();
        }
    }
}

/// A replica's name when `REPLICA_ID` is not set: the container's (Azure Container Apps sets
/// `CONTAINER_APP_REPLICA_NAME`) or the host's, and a random suffix so that a restarted process
/// never takes over a dead one's inbox.
pub fn default_replica_name() -> String {
    let base = std::env::var("CONTAINER_APP_REPLICA_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "replica".to_owned());
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(48)
        .collect();
    format!("{base}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn connection(
    url: &SecretString,
    response_timeout: Duration,
) -> Result<ConnectionManager, FleetError> {
    let client = redis::Client::open(url.expose_secret())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(2));
    Ok(ConnectionManager::new_lazy_with_config(client, config)?)
}

fn unix_ms() -> u64 {
    unix_us() / 1000
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests;
