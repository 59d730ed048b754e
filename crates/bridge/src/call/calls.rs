//! The calls of this process: one admission path for inbound and outbound calls, one way to
//! start a call's task, and the ways in to a live call (Meta's events, an operator, other
//! replicas; in `routes`).
//!
//! Admission never waits on a call: a call takes a slot in the [`Registry`] (capacity, one live
//! call per caller, tombstones), its claim in the fleet when there is one (the same checks across
//! replicas, bounded by the fleet's command timeout) and, when `WEBRTC_UDP_PORTS` is set, a UDP
//! port; an inbound call then passes its caller's own checks (the block list, the caller's
//! quotas); then its task is spawned and owns all of them until it ends. A refused inbound call is
//! declined with `reject` in the background, bounded, and summarised in the log rather than
//! flooding it.

mod routes;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::CallDirection;
use super::caller_limits::Verdict;
use super::flow::CallFlow;
use super::registry::CallSummary;
use super::registry::{AdmitResult, Refusal, RefusalReason, Registry};
use super::task::{CallContext, CallMedia, CallTask, PlacedOutcome, fail_before_start};
use crate::fleet::{CallBrief, Claim, Fleet, ReplicaReport};
use crate::ids::{CallId, PhoneNumber};
use crate::media::ports::{PortLease, PortPool};
use crate::whatsapp::graph::GraphError;
use crate::whatsapp::sdp;

/// Bound on the `reject` of a refused call.
const REJECT_TIMEOUT: Duration = Duration::from_secs(12);
/// `reject`s of refused calls in flight at once. A flood of connects at capacity (or a slow
/// Graph API) must not grow tasks without bound; past this, a refused call is not declined
/// (Meta ends it on its own) and `whatsapp_bridge_rejects_skipped_total` counts it.
pub const MAX_REJECTS_IN_FLIGHT: usize = 256;
/// At most one warning line about refused calls per this period; each refusal is a debug line.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// A `connect` webhook that offers the bridge a call (whatsapp-calling §4.1).
#[derive(Debug)]
pub struct InboundOffer {
    pub call_id: CallId,
    /// The caller's number; `None` when hidden.
    pub caller: Option<PhoneNumber>,
    /// The caller's WhatsApp profile name.
    pub caller_name: Option<String>,
    pub sdp: String,
    /// When the webhook arrived (the answer deadline and setup time count from here).
    pub received_at: Instant,
}

/// What became of an offered call.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Admitted: the call runs on its own task.
    Started,
    /// The call is live already: a redelivery, ignored.
    Duplicate,
    /// The call ended, was refused or was terminated before: ignored.
    Ended,
    /// Refused. `declined`: Meta is sent `reject` in the background; otherwise too many
    /// rejects were in flight, and Meta is left to end the call (or redeliver it).
    Refused { refusal: Refusal, declined: bool },
}

/// A call the bridge placed: Meta's id for it, and what became of it (see [`PlacedOutcome`]).
#[derive(Debug)]
pub struct Placed {
    pub call_id: CallId,
    pub outcome: oneshot::Receiver<PlacedOutcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("refused: {}", .0.reason.as_str())]
    Refused(Refusal),
    #[error("media set-up failed: {0}")]
    Setup(String),
    #[error("the Graph API refused the call: {0}")]
    Graph(#[from] GraphError),
}

/// The calls of this process; cheap to clone.
#[derive(Clone)]
pub struct Calls {
    inner: Arc<Inner>,
}

struct Inner {
    context: Arc<CallContext>,
    registry: Registry,
    /// Every call task (and every background `reject`) runs on it; shutdown waits on it.
    tracker: TaskTracker,
    /// One UDP port per call when `WEBRTC_UDP_PORTS` is set.
    ports: Option<PortPool>,
    refusals: Refusals,
    /// The other replicas, when `REDIS_URL` is set.
    fleet: Option<Fleet>,
}

impl Calls {
    pub fn new(
        context: CallContext,
        registry: Registry,
        tracker: TaskTracker,
        ports: Option<PortPool>,
        fleet: Option<Fleet>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                context: Arc::new(context),
                registry,
                tracker,
                ports,
                refusals: Refusals::default(),
                fleet,
            }),
        }
    }

    /// The other replicas, when `REDIS_URL` is set.
    pub fn fleet(&self) -> Option<&Fleet> {
        self.inner.fleet.as_ref()
    }

    /// What this replica tells the fleet at each heartbeat.
    pub fn report(&self) -> ReplicaReport {
        let registry = &self.inner.registry;
        ReplicaReport {
            replica: self
                .inner
                .fleet
                .as_ref()
                .map(|fleet| fleet.replica().to_owned())
                .unwrap_or_default(),
            active_calls: registry.active_calls(),
            // What this host can carry now, so that the fleet's capacity follows the headroom.
            max_calls: registry.capacity(),
            draining: registry.is_draining(),
            calls: registry.list().iter().map(brief).collect(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// What every call shares (clients, settings, the store).
    pub fn context(&self) -> &CallContext {
        &self.inner.context
    }

    /// Admits an offered call and starts answering it on its own task, or refuses it (Meta is
    /// sent `reject` in the background). Waits only for the fleet's claim, which is bounded.
    pub async fn answer(&self, offer: InboundOffer) -> Offered {
        let InboundOffer {
            call_id,
            caller,
            caller_name,
            sdp,
            received_at,
        } = offer;
        let registry = &self.inner.registry;
        let refusal = match registry.admit(&call_id, CallDirection::Inbound, caller.as_ref()) {
            AdmitResult::Admitted(admission, commands) => match self.claim(&call_id, &caller).await
            {
                Err(outcome) => {
                    drop(admission);
                    match outcome {
                        Claimed::Elsewhere(offered) => return offered,
                        Claimed::Refused(reason) => {
                            // The registry tombstoned its own refusals and released ones in
                            // the fleet; this one it never saw. Every replica must know, so a
                            // redelivery of the declined call is not answered anywhere.
                            registry.tombstone(&call_id);
                            self.refusal(reason)
                        }
                    }
                }
                // Checked once the call is known to be new here and in the fleet, so that a
                // redelivered connect of a live call is never declined.
                Ok(()) if self.ai_unavailable() => {
                    drop(admission);
                    registry.tombstone(&call_id);
                    self.refusal(RefusalReason::AiUnavailable)
                }
                Ok(()) => match self.lease_port() {
                    Ok(port) => {
                        // Last, so that only a call that goes ahead is counted.
                        let time_left = match self.caller_allowed(caller.as_ref()).await {
                            Ok(time_left) => time_left,
                            Err(reason) => {
                                drop((admission, port));
                                registry.tombstone(&call_id);
                                let refusal = self.refusal(reason);
                                self.inner.refusals.note(&call_id, reason.as_str());
                                let declined = self.reject_in_background(call_id);
                                return Offered::Refused { refusal, declined };
                            }
                        };
                        let max_call_duration = time_left
                            .map_or(self.inner.context.max_call_duration, |left| {
                                left.min(self.inner.context.max_call_duration)
                            });
                        info!(%call_id, caller = ?caller, "call admitted");
                        let context = self.inner.context.clone();
                        let span = call_span(&call_id, CallDirection::Inbound);
                        self.spawn_call(span, async move {
                            let flow = CallFlow::new(
                                CallDirection::Inbound,
                                received_at,
                                context.answer_deadline,
                                max_call_duration,
                            );
                            let offer = match sdp::inspect(&sdp) {
                                Ok(offer) => offer,
                                Err(err) => {
                                    warn!(%err, "unusable offer");
                                    return fail_before_start(&context, &admission, flow).await;
                                }
                            };
                            let prepared = sdp::prepare_offer(&sdp);
                            if prepared.dropped_candidates > 0 {
                                context
                                    .metrics
                                    .ice_candidates_dropped
                                    .inc_by(prepared.dropped_candidates as u64);
                                debug!(
                                    dropped = prepared.dropped_candidates,
                                    "unusable ICE candidates dropped from the offer"
                                );
                            }
                            if prepared.direction_added {
                                debug!("the offer has no direction: answered as sendrecv");
                            }
                            let media = match CallMedia::new(
                                &context,
                                port,
                                offer.opus_fec,
                                offer.opus_max_average_bitrate,
                            )
                            .await
                            {
                                Ok(media) => media,
                                Err(err) => {
                                    warn!(%err, "media set-up failed");
                                    return fail_before_start(&context, &admission, flow).await;
                                }
                            };
                            let ai_context =
                                caller_context(caller.as_ref(), caller_name.as_deref());
                            let greeting = context.greeting.clone();
                            let mut task = CallTask::new(
                                context, admission, commands, flow, media, greeting, None,
                            );
                            task.start_ai(ai_context);
                            let end = task.answer_and_run(&prepared.sdp).await;
                            task.finish(end).await;
                        });
                        return Offered::Started;
                    }
                    Err(reason) => {
                        drop(admission);
                        self.refusal(reason)
                    }
                },
            },
            AdmitResult::Duplicate => {
                debug!(%call_id, "duplicate connect ignored");
                return Offered::Duplicate;
            }
            AdmitResult::Tombstoned => {
                info!(%call_id, "connect for an ended or refused call ignored");
                return Offered::Ended;
            }
            AdmitResult::Refused(refusal) => refusal,
        };
        self.inner.refusals.note(&call_id, refusal.reason.as_str());
        let declined = self.reject_in_background(call_id);
        Offered::Refused { refusal, declined }
    }

    /// The AI cannot be reached: new calls are refused at once rather than answered into
    /// silence (the circuit breaker is open).
    pub fn ai_unavailable(&self) -> bool {
        self.inner.context.ai_breaker.is_open()
    }

    /// Whether this caller may call now (checked after the fleet's claim, so that a redelivered
    /// connect is never counted or declined): not blocked, and within their quotas, which
    /// counts the call. `Ok` with what is left of their minutes today when those are limited;
    /// a hidden number is not limited.
    async fn caller_allowed(
        &self,
        caller: Option<&PhoneNumber>,
    ) -> Result<Option<Duration>, RefusalReason> {
        let Some(caller) = caller else {
            return Ok(None);
        };
        if self.inner.context.block_list.is_blocked(caller) {
            return Err(RefusalReason::Blocked);
        }
        match self
            .inner
            .context
            .caller_limits
            .admit(caller, std::time::SystemTime::now())
            .await
        {
            Verdict::Admitted { time_left } => Ok(time_left),
            Verdict::Refused(quota) => {
                debug!(caller = %caller, quota = quota.as_str(), "caller over a quota");
                Err(RefusalReason::CallerLimit)
            }
        }
    }

    /// The fleet's claim of an admitted call (nothing to claim without a fleet). `Err`: the
    /// call is live on another replica or ended there, or its caller has a live call there.
    async fn claim(&self, call_id: &CallId, caller: &Option<PhoneNumber>) -> Result<(), Claimed> {
        let Some(fleet) = &self.inner.fleet else {
            return Ok(());
        };
        match fleet.claim(call_id, caller.as_ref()).await {
            Claim::Claimed => Ok(()),
            Claim::Unconfirmed => {
                debug!(%call_id, "admitted on this replica's own knowledge (fleet degraded)");
                Ok(())
            }
            Claim::Live => {
                debug!(%call_id, "connect for a call live on another replica ignored");
                Err(Claimed::Elsewhere(Offered::Duplicate))
            }
            Claim::Ended => {
                info!(%call_id, "connect for a call ended on another replica ignored");
                Err(Claimed::Elsewhere(Offered::Ended))
            }
            Claim::CallerBusy => Err(Claimed::Refused(RefusalReason::CallerBusy)),
        }
    }

    /// Places a call to `to` (§7.2): takes a slot like an inbound call, makes the offer, sends
    /// `connect` (never retried: a replay could ring the user twice), registers the call under
    /// the id Meta gave it and hands it to its own task, which applies Meta's answer when the
    /// `connect` webhook brings it and lets the AI speak once the callee picks up. `opening` is
    /// what the AI is asked to say first; `ai_context` goes into its instructions. Returns
    /// Meta's call id.
    pub async fn place(
        &self,
        to: &PhoneNumber,
        opening: &str,
        ai_context: &str,
    ) -> Result<CallId, PlaceError> {
        self.place_for(to, opening, ai_context, None)
            .await
            .map(|placed| placed.call_id)
    }

    /// [`Self::place`], with the outcome reported back and the call logged against
    /// `reminder_id` when it delivers one.
    pub async fn place_for(
        &self,
        to: &PhoneNumber,
        opening: &str,
        ai_context: &str,
        reminder_id: Option<&str>,
    ) -> Result<Placed, PlaceError> {
        let started = Instant::now();
        if self.inner.context.block_list.is_blocked(to) {
            return Err(PlaceError::Refused(self.refusal(RefusalReason::Blocked)));
        }
        if self.ai_unavailable() {
            return Err(PlaceError::Refused(
                self.refusal(RefusalReason::AiUnavailable),
            ));
        }
        let reservation = self
            .inner
            .registry
            .reserve(to)
            .map_err(PlaceError::Refused)?;
        // The caller is busy for the whole fleet while the call is placed; dropped on any
        // failure below, the placement frees the caller again.
        let placement = match &self.inner.fleet {
            None => None,
            Some(fleet) => match fleet.claim_caller(to).await {
                Ok(placement) => Some(placement),
                Err(()) => {
                    drop(reservation);
                    return Err(PlaceError::Refused(self.refusal(RefusalReason::CallerBusy)));
                }
            },
        };
        let port = match self.lease_port() {
            Ok(port) => port,
            Err(reason) => {
                drop(reservation);
                return Err(PlaceError::Refused(self.refusal(reason)));
            }
        };
        let context = self.inner.context.clone();
        // Our offer asks for in-band FEC, so the callee's audio may carry it. Its answer comes
        // after the encoder is made: the usual cap is assumed.
        let mut media = CallMedia::new(&context, port, true, None)
            .await
            .map_err(PlaceError::Setup)?;
        let offer = match media.peer.offer().await {
            Ok(offer) => sdp::normalize_offer(&offer),
            Err(err) => {
                media.peer.close().await;
                return Err(PlaceError::Setup(err.to_string()));
            }
        };
        let call_id = match context.graph.connect(to, &offer, None).await {
            Ok(call_id) => call_id,
            Err(err) => {
                media.peer.close().await;
                return Err(err.into());
            }
        };
        let (admission, commands) = reservation.register(&call_id);
        if let (Some(fleet), Some(placement)) = (&self.inner.fleet, placement) {
            // Meta's answer or status may have reached another replica before `connect`
            // returned: it was kept for this call.
            for kept in fleet.bind(placement, &call_id).await {
                self.apply(kept);
            }
        }
        // The flow's `connect` is the request just made.
        let flow = CallFlow::placed(started, Instant::now(), context.max_call_duration);
        let span = call_span(&call_id, CallDirection::Outbound);
        info!(parent: &span, "outbound call placed");
        let (opening, ai_context) = (opening.to_owned(), ai_context.to_owned());
        let reminder_id = reminder_id.map(str::to_owned);
        let (reporter, outcome) = oneshot::channel();
        self.spawn_call(span, async move {
            let mut task = CallTask::new(
                context,
                admission,
                commands,
                flow,
                media,
                Some(opening),
                reminder_id,
            );
            task.report_to(reporter);
            task.start_ai(ai_context);
            let end = task.run().await;
            task.finish(end).await;
        });
        Ok(Placed { call_id, outcome })
    }

    /// A UDP port for a new call when a range is configured; a full range refuses the call.
    fn lease_port(&self) -> Result<Option<PortLease>, RefusalReason> {
        match &self.inner.ports {
            None => Ok(None),
            Some(pool) => pool.lease().map(Some).ok_or(RefusalReason::NoUdpPort),
        }
    }

    /// Counts a refusal that came after the registry's own checks (no UDP port).
    fn refusal(&self, reason: RefusalReason) -> Refusal {
        let registry = &self.inner.registry;
        registry.count_refusal(reason);
        Refusal {
            reason,
            active_calls: registry.active_calls(),
            max_calls: registry.max_calls(),
        }
    }

    /// Runs a call's task on the tracker, in the call's span. A panic in it is a bug: it is
    /// logged, the admission the task owns is released by unwinding, and no other call is
    /// touched.
    ///
    /// Combinators rather than an `async` block around `task`: a block would keep the moved-in
    /// future as a captured value and again as the one it awaits, two copies of a call's whole
    /// state (about 25 KB) for the life of the call.
    fn spawn_call(&self, span: tracing::Span, task: impl Future<Output = ()> + Send + 'static) {
        let guarded = AssertUnwindSafe(task).catch_unwind().map(|ended| {
            if ended.is_err() {
                warn!("call task panicked");
            }
        });
        self.inner.tracker.spawn(guarded.instrument(span));
    }

    /// Declines a refused call without holding up the webhook response (§7.1: reject promptly
    /// rather than let the caller ring). False when too many rejects are in flight already.
    fn reject_in_background(&self, call_id: CallId) -> bool {
        let Ok(permit) = self.inner.refusals.rejects.clone().try_acquire_owned() else {
            self.inner.context.metrics.rejects_skipped.inc();
            debug!(%call_id, "reject not sent: too many in flight");
            return false;
        };
        let graph = self.inner.context.graph.clone();
        self.inner.tracker.spawn(async move {
            let result = tokio::time::timeout(REJECT_TIMEOUT, graph.reject(&call_id)).await;
            drop(permit);
            if !matches!(result, Ok(Ok(()))) {
                warn!(%call_id, "reject of a refused call failed");
            }
        });
        true
    }
}

/// Why the fleet did not let an admitted call go on.
enum Claimed {
    /// Nothing to do here: the call is live on another replica, or ended.
    Elsewhere(Offered),
    Refused(RefusalReason),
}

/// A live call as the admin API and the fleet's reports list it (the number masked).
pub fn brief(call: &CallSummary) -> CallBrief {
    CallBrief {
        id: call.call_id.to_string(),
        direction: call.direction.as_str().to_owned(),
        phone: call.phone.as_ref().map(PhoneNumber::masked),
        state: call.phase.as_str().to_owned(),
        started: call
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        duration_seconds: call.started.elapsed().as_secs(),
    }
}

fn call_span(call_id: &CallId, direction: CallDirection) -> tracing::Span {
    info_span!("call", call_id = %call_id, direction = direction.as_str())
}

/// The AI learns who is calling (name only; numbers stay out of prompts and logs).
fn caller_context(phone: Option<&PhoneNumber>, name: Option<&str>) -> String {
    let mut context = String::new();
    if let Some(name) = name.filter(|n| !n.trim().is_empty()) {
        context.push_str(&format!("The caller's WhatsApp profile name is {name}."));
    }
    if phone.is_none() {
        context.push_str(" The caller's number is hidden.");
    }
    context.trim().to_owned()
}

/// What the bridge does about refused calls besides answering 503: a bounded number of
/// background `reject`s, and a warning that summarises rather than floods.
struct Refusals {
    rejects: Arc<Semaphore>,
    log: Mutex<RefusalLog>,
}

#[derive(Default)]
struct RefusalLog {
    last_warning: Option<Instant>,
    unreported: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            rejects: Arc::new(Semaphore::new(MAX_REJECTS_IN_FLIGHT)),
            log: Mutex::new(RefusalLog::default()),
        }
    }
}

impl Refusals {
    /// Logs a refusal: a warning for the first one and then at most one per period, with the
    /// number refused since the last warning.
    fn note(&self, call_id: &CallId, reason: &str) {
        debug!(%call_id, reason, "call refused");
        let now = Instant::now();
        let mut log = self.log.lock();
        log.unreported += 1;
        if log
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_PERIOD)
        {
            warn!(
                refused = log.unreported,
                latest_reason = reason,
                "calls refused since the last report"
            );
            log.last_warning = Some(now);
            log.unreported = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::caller_context;
    use crate::ids::PhoneNumber;

    #[test]
    fn the_ai_is_told_the_callers_name_and_never_the_number() {
        let phone = PhoneNumber::new("447700900123");
        let context = caller_context(Some(&phone), Some("Ada"));
        assert_eq!(context, "The caller's WhatsApp profile name is Ada.");
        assert_eq!(
            caller_context(None, Some(" ")),
            "The caller's number is hidden."
        );
        assert!(!caller_context(Some(&phone), None).contains("447700900123"));
    }
}
