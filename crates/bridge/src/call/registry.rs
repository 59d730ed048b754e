//! Admission: a capacity semaphore in front of the map of live calls, one live call per caller,
//! and tombstones of ended or refused call ids so late or repeated webhooks change nothing.
//!
//! A call that is admitted gets an [`Admission`] guard holding its permit and its registry
//! entry; dropping the guard (on every exit path of the call task, panics included) releases
//! both. Besides the count, the host's measured [`Headroom`] must have room for the call
//! (`ADMISSION=headroom`); a call refused for either reason is `at_capacity`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::flow::Phase;
use super::headroom::Headroom;
use super::{CallCommand, CallDirection};
use crate::config::AdmissionSettings;
use crate::fleet::Fleet;
use crate::ids::{CallId, PhoneNumber};
use crate::metrics::Metrics;

/// How long an ended or refused call id is remembered (whatsapp-calling §6: at least 10 min).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
/// Most tombstones kept; past it the oldest is forgotten early (and
/// `whatsapp_bridge_tombstones_evicted_total` counts it). Far above a busy bridge's ended calls in
/// [`TOMBSTONE_TTL`]; with ids of at most `MAX_CALL_ID_CHARS` (128) the map stays under ~8 MB
/// whatever a flood of distinct ids does.
pub const MAX_TOMBSTONES: usize = 20_000;
/// Commands queued to one call (terminate webhook, admin hang-up, BIC answer). They are rare;
/// a full queue means the call task is stuck, and the command is dropped with a warning.
pub const CALL_COMMAND_CAPACITY: usize = 8;

/// Why a call was refused at admission (metrics label and webhook error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    AtCapacity,
    CallerBusy,
    Draining,
    NoUdpPort,
    /// The AI cannot be reached (its circuit breaker is open).
    AiUnavailable,
    /// The caller used up a quota of calls or minutes (`CALLER_CALLS_PER_HOUR`, …).
    CallerLimit,
    /// The number is on the block list.
    Blocked,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AtCapacity => "at_capacity",
            Self::CallerBusy => "caller_busy",
            Self::Draining => "draining",
            Self::NoUdpPort => "no_udp_port",
            Self::AiUnavailable => "ai_unavailable",
            Self::CallerLimit => "caller_limit",
            Self::Blocked => "blocked",
        }
    }
}

/// The outcome of trying to admit a call.
pub enum AdmitResult {
    /// Admitted: the guard, and the queue of commands for the call task.
    Admitted(Admission, mpsc::Receiver<CallCommand>),
    /// The call is already live: a duplicate delivery.
    Duplicate,
    /// The call already ended, was refused, or was terminated before this connect arrived.
    Tombstoned,
    Refused(Refusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub active_calls: usize,
    pub max_calls: usize,
}

/// What others may do with a live call: send it commands or cancel it.
#[derive(Clone, Debug)]
pub struct CallHandle {
    pub commands: mpsc::Sender<CallCommand>,
    pub cancel: CancellationToken,
    pub direction: CallDirection,
    pub phone: Option<PhoneNumber>,
    pub started: Instant,
    /// Wall-clock start, for listings.
    pub started_at: SystemTime,
    /// The call's phase as its task last published it.
    phase: Arc<AtomicU8>,
}

impl CallHandle {
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
}

/// A live call summary for `/health` and admin listings.
#[derive(Clone, Debug)]
pub struct CallSummary {
    pub call_id: CallId,
    pub direction: CallDirection,
    pub phone: Option<PhoneNumber>,
    pub phase: Phase,
    pub started: Instant,
    pub started_at: SystemTime,
}

#[derive(Default)]
struct Tombstones {
    ids: HashSet<CallId>,
    order: VecDeque<(Instant, CallId)>,
}

impl Tombstones {
    /// Remembers `call_id` until `now + TOMBSTONE_TTL`; returns how many were evicted early
    /// to stay within `max`.
    fn insert(&mut self, call_id: CallId, now: Instant, max: usize) -> usize {
        self.prune(now);
        if !self.ids.insert(call_id.clone()) {
            return 0;
        }
        self.order.push_back((now + TOMBSTONE_TTL, call_id));
        let mut evicted = 0;
        while self.order.len() > max {
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
                evicted += 1;
            }
        }
        evicted
    }

    fn len(&self) -> usize {
        self.order.len()
    }

    fn contains(&self, call_id: &CallId) -> bool {
        self.ids.contains(call_id)
    }

    fn prune(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }
}

#[derive(Default)]
struct Live {
    calls: HashMap<CallId, CallHandle>,
    phones: HashSet<PhoneNumber>,
    tombstones: Tombstones,
    /// Outbound calls holding a slot while Meta has not named them yet.
    reserved: usize,
    /// Commands for call ids not registered yet (Meta's answer to an outbound call can arrive
    /// before the `connect` response that names the call), with when they arrived.
    early: HashMap<CallId, (Instant, Vec<CallCommand>)>,
}

impl Live {
    fn occupied(&self) -> usize {
        self.calls.len() + self.reserved
    }
}

/// How many entries each of the registry's maps holds, for `/metrics` (leaks show as entries
/// that outlive their calls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistrySizes {
    pub calls: usize,
    pub phones: usize,
    pub tombstones: usize,
    pub reserved: usize,
    pub early_commands: usize,
}

/// How long a command for a not-yet-registered call is kept.
const EARLY_COMMAND_TTL: Duration = Duration::from_secs(60);
/// At most this many call ids with early commands are kept (a flood of unknown ids is dropped).
const EARLY_COMMAND_IDS: usize = 1024;

struct Inner {
    semaphore: Arc<Semaphore>,
    max_calls: usize,
    live: Mutex<Live>,
    draining: AtomicBool,
    metrics: Metrics,
    /// Cancelled on shutdown; every call's token is a child of it.
    root: CancellationToken,
    /// Notified whenever a call leaves the registry.
    released: tokio::sync::Notify,
    /// With `REDIS_URL`: where claims are released and tombstones shared with the other
    /// replicas (never waiting: the fleet's worker writes them).
    fleet: Option<Fleet>,
    /// Whether the host can carry one more call, beside the count.
    headroom: Headroom,
}

/// The registry of live calls; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    pub fn new(
        max_calls: usize,
        admission: AdmissionSettings,
        metrics: Metrics,
        root: CancellationToken,
        fleet: Option<Fleet>,
    ) -> Self {
        metrics.max_calls.set(max_calls as i64);
        let headroom = Headroom::new(admission, max_calls, metrics.clone());
        Self {
            inner: Arc::new(Inner {
                semaphore: Arc::new(Semaphore::new(max_calls)),
                max_calls,
                live: Mutex::new(Live::default()),
                draining: AtomicBool::new(false),
                metrics,
                root,
                released: tokio::sync::Notify::new(),
                fleet,
                headroom,
            }),
        }
    }

    /// `MAX_CONCURRENT_CALLS`: the upper bound, whatever the headroom.
    pub fn max_calls(&self) -> usize {
        self.inner.max_calls
    }

    /// The calls this replica can carry now: the live ones and as many more as both the count
    /// and the measured headroom allow (at least one on an idle bridge).
    pub fn capacity(&self) -> usize {
        let active = self.active_calls();
        match self.inner.headroom.room() {
            None => self.inner.max_calls,
            Some(room) => (active + room.max(usize::from(active == 0))).min(self.inner.max_calls),
        }
    }

    pub fn headroom(&self) -> &Headroom {
        &self.inner.headroom
    }

    /// Live calls, counting outbound calls that are being placed.
    pub fn active_calls(&self) -> usize {
        self.inner.live.lock().occupied()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// New calls are refused from now on; live calls go on.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.metrics.draining.set(1);
    }

    /// Tries to admit a call, never waiting. On success the returned guard owns the permit and
    /// the registry entry, and the receiver gets what webhooks and admins send to the call.
    pub fn admit(
        &self,
        call_id: &CallId,
        direction: CallDirection,
        phone: Option<&PhoneNumber>,
    ) -> AdmitResult {
        let now = Instant::now();
        let mut live = self.inner.live.lock();
        if live.calls.contains_key(call_id) {
            return AdmitResult::Duplicate;
        }
        if live.tombstones.contains(call_id) {
            return AdmitResult::Tombstoned;
        }
        let refuse = |reason: RefusalReason, live: &mut Live| {
            self.bury(live, call_id, now);
            if let Some(fleet) = &self.inner.fleet {
                fleet.tombstone(call_id);
            }
            self.count_refusal(reason);
            AdmitResult::Refused(Refusal {
                reason,
                active_calls: live.occupied(),
                max_calls: self.inner.max_calls,
            })
        };
        if self.is_draining() {
            return refuse(RefusalReason::Draining, &mut live);
        }
        if let Some(phone) = phone
            && live.phones.contains(phone)
        {
            return refuse(RefusalReason::CallerBusy, &mut live);
        }
        let Ok(permit) = self.inner.semaphore.clone().try_acquire_owned() else {
            return refuse(RefusalReason::AtCapacity, &mut live);
        };
        if !self.inner.headroom.try_admit(live.occupied()) {
            drop(permit);
            return refuse(RefusalReason::AtCapacity, &mut live);
        }
        let (admission, rx) = self.insert(
            &mut live,
            call_id,
            direction,
            phone,
            permit,
            Vec::new(),
            false,
        );
        drop(live);
        AdmitResult::Admitted(admission, rx)
    }

    /// Takes a slot for an outbound call to `phone` before Meta has named it (never waiting).
    pub fn reserve(&self, phone: &PhoneNumber) -> Result<Reservation, Refusal> {
        let mut live = self.inner.live.lock();
        let refuse = |reason: RefusalReason, live: &Live| {
            self.count_refusal(reason);
            Refusal {
                reason,
                active_calls: live.occupied(),
                max_calls: self.inner.max_calls,
            }
        };
        if self.is_draining() {
            return Err(refuse(RefusalReason::Draining, &live));
        }
        if live.phones.contains(phone) {
            return Err(refuse(RefusalReason::CallerBusy, &live));
        }
        let Ok(permit) = self.inner.semaphore.clone().try_acquire_owned() else {
            return Err(refuse(RefusalReason::AtCapacity, &live));
        };
        if !self.inner.headroom.try_admit(live.occupied()) {
            return Err(refuse(RefusalReason::AtCapacity, &live));
        }
        // Set up from now: the offer, the connect, the ringing, the media.
        self.inner.headroom.setup_started();
        live.phones.insert(phone.clone());
        live.reserved += 1;
        self.inner.metrics.active_calls.set(live.occupied() as i64);
        Ok(Reservation {
            registry: self.clone(),
            phone: phone.clone(),
            permit: Some(permit),
        })
    }

    /// Keeps a command for a call id that is not registered yet; false if the id already ended.
    /// A call registered since the caller looked for it (a placed call's `connect` response
    /// racing Meta's webhook, whose delivery to a fleet waits on Redis meanwhile) gets the
    /// command at once: checked under the lock that registration takes the held commands in,
    /// so a command is never kept for a call that will not look again.
    pub fn hold_for_unknown(&self, call_id: &CallId, command: CallCommand) -> bool {
        let now = Instant::now();
        let mut live = self.inner.live.lock();
        if let Some(handle) = live.calls.get(call_id) {
            if handle.commands.try_send(command).is_err() {
                warn!(%call_id, "call command queue full; command dropped");
            }
            return true;
        }
        if live.tombstones.contains(call_id) {
            return false;
        }
        live.early
            .retain(|_, (at, _)| now.duration_since(*at) < EARLY_COMMAND_TTL);
        if live.early.len() >= EARLY_COMMAND_IDS && !live.early.contains_key(call_id) {
            return false;
        }
        let held = &mut live
            .early
            .entry(call_id.clone())
            .or_insert_with(|| (now, Vec::new()))
            .1;
        // As many as the call's own queue takes: a flood for one id cannot grow the map.
        if held.len() >= CALL_COMMAND_CAPACITY {
            return false;
        }
        held.push(command);
        true
    }

    /// Registers a call that holds `permit`: its handle in the map, its phone marked busy.
    /// `held` commands are queued to it first. It counts as setting up until its media flows
    /// (`counted`: it already does, since its reservation).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        live: &mut Live,
        call_id: &CallId,
        direction: CallDirection,
        phone: Option<&PhoneNumber>,
        permit: OwnedSemaphorePermit,
        held: Vec<CallCommand>,
        counted: bool,
    ) -> (Admission, mpsc::Receiver<CallCommand>) {
        if !counted {
            self.inner.headroom.setup_started();
        }
        let (tx, rx) = mpsc::channel(CALL_COMMAND_CAPACITY);
        for command in held {
            let _ = tx.try_send(command);
        }
        let cancel = self.inner.root.child_token();
        let phase = Arc::new(AtomicU8::new(Phase::Negotiating.to_u8()));
        live.calls.insert(
            call_id.clone(),
            CallHandle {
                commands: tx,
                cancel: cancel.clone(),
                direction,
                phone: phone.cloned(),
                started: Instant::now(),
                started_at: SystemTime::now(),
                phase: phase.clone(),
            },
        );
        if let Some(phone) = phone {
            live.phones.insert(phone.clone());
        }
        self.inner.metrics.active_calls.set(live.occupied() as i64);
        crate::allocator::close_thread_cache_flush();
        let admission = Admission {
            call_id: call_id.clone(),
            phone: phone.cloned(),
            cancel,
            phase,
            setting_up: AtomicBool::new(true),
            registry: self.clone(),
            _permit: permit,
        };
        (admission, rx)
    }

    /// Records a refusal that happened after admission was possible (e.g. no UDP port).
    pub fn count_refusal(&self, reason: RefusalReason) {
        self.inner
            .metrics
            .rejections
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The live call's handle, if any.
    pub fn get(&self, call_id: &CallId) -> Option<CallHandle> {
        self.inner.live.lock().calls.get(call_id).cloned()
    }

    /// Remembers a call id as ended (a terminate for a call not (yet) known), so that a
    /// `connect` arriving after it is not answered.
    pub fn tombstone(&self, call_id: &CallId) {
        self.bury(&mut self.inner.live.lock(), call_id, Instant::now());
        if let Some(fleet) = &self.inner.fleet {
            fleet.tombstone(call_id);
        }
    }

    /// Tombstones `call_id` within [`MAX_TOMBSTONES`], counting what that evicts.
    fn bury(&self, live: &mut Live, call_id: &CallId, now: Instant) {
        let evicted = live.tombstones.insert(call_id.clone(), now, MAX_TOMBSTONES);
        if evicted > 0 {
            self.inner.metrics.tombstones_evicted.inc_by(evicted as u64);
            debug!(
                evicted,
                "tombstone map full: the oldest were forgotten early"
            );
        }
    }

    /// Call ids remembered as ended or refused right now.
    pub fn tombstone_count(&self) -> usize {
        self.inner.live.lock().tombstones.len()
    }

    /// The sizes of the registry's maps, read under its lock.
    pub fn sizes(&self) -> RegistrySizes {
        let live = self.inner.live.lock();
        RegistrySizes {
            calls: live.calls.len(),
            phones: live.phones.len(),
            tombstones: live.tombstones.ids.len(),
            reserved: live.reserved,
            early_commands: live.early.len(),
        }
    }

    pub fn list(&self) -> Vec<CallSummary> {
        self.inner
            .live
            .lock()
            .calls
            .iter()
            .map(|(id, handle)| CallSummary {
                call_id: id.clone(),
                direction: handle.direction,
                phone: handle.phone.clone(),
                phase: handle.phase(),
                started: handle.started,
                started_at: handle.started_at,
            })
            .collect()
    }

    fn release(&self, call_id: &CallId, phone: Option<&PhoneNumber>) {
        let mut live = self.inner.live.lock();
        live.calls.remove(call_id);
        if let Some(phone) = phone {
            live.phones.remove(phone);
        }
        self.bury(&mut live, call_id, Instant::now());
        let occupied = live.occupied();
        self.inner.metrics.active_calls.set(occupied as i64);
        drop(live);
        if let Some(fleet) = &self.inner.fleet {
            fleet.release(call_id);
        }
        if occupied == 0 {
            crate::allocator::request_thread_cache_flush();
        }
        self.inner.released.notify_waiters();
    }

    fn cancel_reservation(&self, phone: &PhoneNumber) {
        self.inner.headroom.setup_done();
        let mut live = self.inner.live.lock();
        live.reserved -= 1;
        live.phones.remove(phone);
        self.inner.metrics.active_calls.set(live.occupied() as i64);
        drop(live);
        self.inner.released.notify_waiters();
    }

    /// Calls that could be admitted now (by the count and the headroom): none while draining.
    pub fn free_slots(&self) -> usize {
        if self.is_draining() {
            return 0;
        }
        self.capacity().saturating_sub(self.active_calls())
    }

    /// Waits until a call could be admitted (a slot is free, the headroom has room and the
    /// registry is not draining).
    pub async fn wait_for_room(&self) {
        loop {
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let room = self.inner.headroom.room_appeared();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.free_slots() > 0 {
                return;
            }
            tokio::select! {
                _ = released => {}
                _ = room => {}
            }
        }
    }

    /// Waits until no call is live; false if `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.active_calls() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.active_calls() == 0;
            }
        }
    }
}

/// A live call's permit and registry entry; both are released when this is dropped.
pub struct Admission {
    call_id: CallId,
    phone: Option<PhoneNumber>,
    cancel: CancellationToken,
    phase: Arc<AtomicU8>,
    /// Until its media flows the call counts as setting up in the headroom.
    setting_up: AtomicBool,
    registry: Registry,
    /// Released after the registry entry (fields drop after `drop` runs).
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub fn call_id(&self) -> &CallId {
        &self.call_id
    }

    pub fn phone(&self) -> Option<&PhoneNumber> {
        self.phone.as_ref()
    }

    /// Cancelled on shutdown.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Publishes the call's phase for listings; a call whose media flows (or that ends) is set
    /// up as far as the headroom goes.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase.to_u8(), Ordering::Relaxed);
        if matches!(phase, Phase::Active | Phase::Ended) {
            self.set_up();
        }
    }

    fn set_up(&self) {
        if self.setting_up.swap(false, Ordering::AcqRel) {
            self.registry.inner.headroom.setup_done();
        }
    }
}

/// A slot held for an outbound call until Meta names it; dropping it unused frees the slot.
pub struct Reservation {
    registry: Registry,
    phone: PhoneNumber,
    /// `None` once registered.
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    pub fn phone(&self) -> &PhoneNumber {
        &self.phone
    }

    /// Registers the call under the id Meta gave it. Commands that arrived for the id before
    /// (see [`Registry::hold_for_unknown`]) are queued first.
    pub fn register(mut self, call_id: &CallId) -> (Admission, mpsc::Receiver<CallCommand>) {
        let permit = self
            .permit
            .take()
            .expect("a reservation holds its permit until it registers once");
        let registry = self.registry.clone();
        let mut live = registry.inner.live.lock();
        live.reserved -= 1;
        let held = live
            .early
            .remove(call_id)
            .map(|(_, commands)| commands)
            .unwrap_or_default();
        registry.insert(
            &mut live,
            call_id,
            CallDirection::Outbound,
            Some(&self.phone),
            permit,
            held,
            true,
        )
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.registry.cancel_reservation(&self.phone);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.set_up();
        self.registry.release(&self.call_id, self.phone.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::headroom::estimate::Estimate;
    use crate::config::AdmissionMode;

    #[test]
    fn tombstones_stay_bounded_under_many_distinct_ids_oldest_evicted_first() {
        let metrics = Metrics::new();
        let count_only = AdmissionSettings {
            mode: AdmissionMode::Count,
            ..AdmissionSettings::default()
        };
        let registry = Registry::new(
            1,
            count_only,
            metrics.clone(),
            CancellationToken::new(),
            None,
        );
        let flood = MAX_TOMBSTONES + 500;
        for i in 0..flood {
            registry.tombstone(&CallId::new(format!("wacid.FLOOD-{i}")));
        }
        assert_eq!(registry.tombstone_count(), MAX_TOMBSTONES);
        assert_eq!(metrics.tombstones_evicted.get(), 500);
        // The newest are still remembered: a late connect for them is not answered.
        let newest = CallId::new(format!("wacid.FLOOD-{}", flood - 1));
        assert!(matches!(
            registry.admit(&newest, CallDirection::Inbound, None),
            AdmitResult::Tombstoned
        ));
        // The oldest were forgotten first.
        let oldest = CallId::new("wacid.FLOOD-0");
        assert!(matches!(
            registry.admit(&oldest, CallDirection::Inbound, None),
            AdmitResult::Admitted(..)
        ));
    }

    #[test]
    fn commands_held_for_one_unknown_id_are_bounded() {
        let registry = registry(1);
        let id = CallId::new("wacid.EARLY");
        for _ in 0..CALL_COMMAND_CAPACITY {
            assert!(registry.hold_for_unknown(&id, CallCommand::RemoteAccepted));
        }
        assert!(!registry.hold_for_unknown(&id, CallCommand::RemoteAccepted));
    }

    fn registry(max: usize) -> Registry {
        let count_only = AdmissionSettings {
            mode: AdmissionMode::Count,
            ..AdmissionSettings::default()
        };
        Registry::new(
            max,
            count_only,
            Metrics::new(),
            CancellationToken::new(),
            None,
        )
    }

    fn admit(registry: &Registry, id: &str, phone: &str) -> AdmitResult {
        registry.admit(
            &CallId::new(id),
            CallDirection::Inbound,
            Some(&PhoneNumber::new(phone)),
        )
    }

    #[test]
    fn calls_beyond_capacity_are_refused_and_the_slot_returns_on_drop() {
        let registry = registry(1);
        let AdmitResult::Admitted(first, _) = admit(&registry, "wacid.1", "4470001") else {
            panic!("first call should be admitted");
        };
        match admit(&registry, "wacid.2", "4470002") {
            AdmitResult::Refused(refusal) => {
                assert_eq!(refusal.reason, RefusalReason::AtCapacity);
                assert_eq!((refusal.active_calls, refusal.max_calls), (1, 1));
            }
            _ => panic!("second call should be refused"),
        }
        drop(first);
        assert_eq!(registry.active_calls(), 0);
        assert!(matches!(
            admit(&registry, "wacid.3", "4470003"),
            AdmitResult::Admitted(..)
        ));
    }

    #[test]
    fn a_duplicate_connect_is_recognised_and_a_refused_one_stays_refused() {
        let registry = registry(1);
        let _live = admit(&registry, "wacid.1", "4470001");
        assert!(matches!(
            admit(&registry, "wacid.1", "4470001"),
            AdmitResult::Duplicate
        ));
        assert!(matches!(
            admit(&registry, "wacid.2", "4470002"),
            AdmitResult::Refused(_)
        ));
        assert!(matches!(
            admit(&registry, "wacid.2", "4470002"),
            AdmitResult::Tombstoned
        ));
    }

    #[test]
    fn one_live_call_per_caller() {
        let registry = registry(5);
        let _live = admit(&registry, "wacid.1", "4470001");
        match admit(&registry, "wacid.2", "4470001") {
            AdmitResult::Refused(refusal) => assert_eq!(refusal.reason, RefusalReason::CallerBusy),
            _ => panic!("same caller twice should be refused"),
        }
    }

    #[test]
    fn a_terminate_before_connect_blocks_the_late_connect() {
        let registry = registry(5);
        registry.tombstone(&CallId::new("wacid.1"));
        assert!(matches!(
            admit(&registry, "wacid.1", "4470001"),
            AdmitResult::Tombstoned
        ));
        assert_eq!(registry.active_calls(), 0);
    }

    #[test]
    fn the_permit_and_entry_are_released_when_a_task_panics() {
        let registry = registry(1);
        let AdmitResult::Admitted(admission, _) = admit(&registry, "wacid.1", "4470001") else {
            panic!("admitted");
        };
        let result = std::thread::spawn(move || {
            let _owned = admission;
            panic!("call task bug");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(registry.active_calls(), 0);
        assert!(matches!(
            admit(&registry, "wacid.2", "4470001"),
            AdmitResult::Admitted(..)
        ));
    }

    #[test]
    fn an_outbound_reservation_counts_until_dropped_or_registered() {
        let registry = registry(1);
        let phone = PhoneNumber::new("4470009");
        let reservation = registry.reserve(&phone).expect("reserved");
        assert_eq!(registry.active_calls(), 1);
        assert_eq!(
            registry
                .reserve(&PhoneNumber::new("4470010"))
                .err()
                .map(|r| r.reason),
            Some(RefusalReason::AtCapacity)
        );
        drop(reservation);
        assert_eq!(registry.active_calls(), 0);

        let reservation = registry.reserve(&phone).expect("reserved again");
        let id = CallId::new("wacid.out");
        assert!(registry.hold_for_unknown(&id, CallCommand::RemoteAnswer("v=0".into())));
        let (admission, mut commands) = reservation.register(&id);
        assert!(matches!(
            commands.try_recv(),
            Ok(CallCommand::RemoteAnswer(_))
        ));
        assert_eq!(registry.active_calls(), 1);
        assert!(registry.get(&id).is_some());
        drop(admission);
        assert_eq!(registry.active_calls(), 0);
        assert!(!registry.hold_for_unknown(&id, CallCommand::RemoteAccepted));
    }

    #[test]
    fn a_command_held_after_its_call_registered_reaches_the_call() {
        // The deliverer looked the call up before it registered, and holds the command after.
        let registry = registry(5);
        let reservation = registry
            .reserve(&PhoneNumber::new("4470020"))
            .expect("reserved");
        let id = CallId::new("wacid.raced");
        let (_admission, mut commands) = reservation.register(&id);
        assert!(registry.hold_for_unknown(&id, CallCommand::RemoteAnswer("v=0".into())));
        assert!(matches!(
            commands.try_recv(),
            Ok(CallCommand::RemoteAnswer(_))
        ));
    }

    #[test]
    fn draining_refuses_new_calls() {
        let registry = registry(5);
        registry.begin_drain();
        match admit(&registry, "wacid.1", "4470001") {
            AdmitResult::Refused(refusal) => assert_eq!(refusal.reason, RefusalReason::Draining),
            _ => panic!("refused while draining"),
        }
    }

    fn full_host() -> Estimate {
        Estimate {
            cpus: 1.0,
            cpu_used: Some(0.9),
            call_cost: 0.01,
            setting_up: 0,
            send_delay_p99: None,
            lag_p99: None,
            within_budget: true,
            knee: None,
            can_take: 0,
        }
    }

    #[test]
    fn without_headroom_a_call_is_refused_at_capacity_though_the_count_allows_it() {
        let registry = Registry::new(
            10,
            AdmissionSettings::default(),
            Metrics::new(),
            CancellationToken::new(),
            None,
        );
        registry.headroom().publish(full_host(), 0);
        assert_eq!(
            registry.capacity(),
            1,
            "an idle bridge takes its first call"
        );
        let AdmitResult::Admitted(first, _) = admit(&registry, "wacid.1", "4470001") else {
            panic!("the first call on an idle host is admitted");
        };
        assert_eq!(registry.headroom().setting_up(), 1);
        match admit(&registry, "wacid.2", "4470002") {
            AdmitResult::Refused(refusal) => assert_eq!(refusal.reason, RefusalReason::AtCapacity),
            _ => panic!("no headroom: refused"),
        }
        assert_eq!(
            registry
                .reserve(&PhoneNumber::new("4470003"))
                .err()
                .map(|r| r.reason),
            Some(RefusalReason::AtCapacity)
        );
        assert_eq!((registry.capacity(), registry.free_slots()), (1, 0));

        // The next sample finds room for two: two more are admitted, then none.
        let mut roomy = full_host();
        roomy.can_take = 2;
        registry.headroom().publish(roomy, 1);
        assert_eq!(registry.capacity(), 3);
        let second = admit(&registry, "wacid.4", "4470004");
        let third = admit(&registry, "wacid.5", "4470005");
        assert!(matches!(second, AdmitResult::Admitted(..)));
        assert!(matches!(third, AdmitResult::Admitted(..)));
        assert!(matches!(
            admit(&registry, "wacid.6", "4470006"),
            AdmitResult::Refused(_)
        ));
        first.set_phase(Phase::Active);
        assert_eq!(
            registry.headroom().setting_up(),
            2,
            "set up once media flows"
        );
        drop((second, third));
        assert_eq!(
            registry.headroom().setting_up(),
            0,
            "ended calls are set up"
        );
    }

    #[test]
    fn count_admission_ignores_the_headroom() {
        let registry = registry(3);
        registry.headroom().publish(full_host(), 0);
        let _one = admit(&registry, "wacid.1", "4470001");
        assert!(matches!(
            admit(&registry, "wacid.2", "4470002"),
            AdmitResult::Admitted(..)
        ));
        assert_eq!(registry.capacity(), 3);
    }
}
