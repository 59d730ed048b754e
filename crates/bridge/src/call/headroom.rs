//! Admission by measured headroom: a call is refused when admitting it would push the live
//! calls past the CPU target or the latency budget of this host, whatever
//! `MAX_CONCURRENT_CALLS` allows (it stays the upper bound).
//!
//! A [`monitor`] task samples every 500 ms the process's CPU time against the CPUs it may use,
//! the calls and those still being set up, the p99 of the frame send delay (recorded by every
//! call task into a [`window::DelayWindow`]) and of the runtime's lag (a 5 ms probe tick), and
//! the [`estimate::Estimator`] turns that into how many calls the host can still take. That
//! many admission slots are issued until the next sample; admitting takes one with a single
//! atomic, so admission costs nothing measurable and never waits. A call set up since the last
//! sample has taken a slot, and a call still being set up keeps its share reserved until its
//! media flows, so a burst of connects on an empty bridge is admitted only as far as the host
//! can carry it. The first call of an idle bridge is always admitted.

pub mod estimate;
pub mod monitor;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tracing::info;

use crate::config::{AdmissionMode, AdmissionSettings};
use crate::metrics::Metrics;
use estimate::{DEFAULT_CALL_COST, Estimate};
use window::DelayWindow;

/// What this bridge knows of its headroom; cheap to clone.
#[derive(Clone)]
pub struct Headroom {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AdmissionSettings,
    /// `MAX_CONCURRENT_CALLS`: the estimate reported never exceeds what it leaves free.
    max_calls: usize,
    /// Calls that may still be admitted until the next sample.
    slots: AtomicUsize,
    /// Calls admitted whose media is not flowing yet.
    setting_up: AtomicUsize,
    /// Frame send delays of every call since the last sample.
    send_delays: DelayWindow,
    /// The latest estimate, for `/health` (a short lock, never held across an await).
    latest: Mutex<Option<Estimate>>,
    /// Notified when slots appear after there were none.
    room: tokio::sync::Notify,
    /// Whether the latest estimate was within the latency budget (to log its changes once).
    within_budget: AtomicBool,
    /// The latest estimate's knee (`usize::MAX`: none), to log when it is learnt or lowered.
    knee: AtomicUsize,
    metrics: Metrics,
}

impl Headroom {
    pub fn new(settings: AdmissionSettings, max_calls: usize, metrics: Metrics) -> Self {
        // Until the first sample: an idle host at the default cost per call.
        let slots = (settings.cpu_target / DEFAULT_CALL_COST) as usize;
        Self {
            inner: Arc::new(Inner {
                settings,
                max_calls,
                slots: AtomicUsize::new(slots),
                setting_up: AtomicUsize::new(0),
                send_delays: DelayWindow::default(),
                latest: Mutex::new(None),
                room: tokio::sync::Notify::new(),
                within_budget: AtomicBool::new(true),
                knee: AtomicUsize::new(usize::MAX),
                metrics,
            }),
        }
    }

    pub fn settings(&self) -> AdmissionSettings {
        self.inner.settings
    }

    fn enforced(&self) -> bool {
        self.inner.settings.mode == AdmissionMode::Headroom
    }

    /// Whether one more call may be admitted beside `live` calls; takes a slot if so. An idle
    /// bridge always admits (a bridge that takes no call helps nobody).
    pub fn try_admit(&self, live: usize) -> bool {
        if !self.enforced() {
            return true;
        }
        let took = self
            .inner
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |slots| {
                slots.checked_sub(1)
            })
            .is_ok();
        took || live == 0
    }

    /// Calls it can still take now (headroom admission), or `None` when only the count bounds
    /// admission.
    pub fn room(&self) -> Option<usize> {
        self.enforced()
            .then(|| self.inner.slots.load(Ordering::Acquire))
    }

    /// Records how late a call's frame went out after its 20 ms slot.
    pub fn record_send_delay(&self, delay: Duration) {
        self.inner.send_delays.record(delay);
    }

    /// A call admitted: it counts as setting up until [`Self::setup_done`].
    pub fn setup_started(&self) {
        self.inner.setting_up.fetch_add(1, Ordering::AcqRel);
    }

    /// The call's media flows (or it ended before).
    pub fn setup_done(&self) {
        let _ = self
            .inner
            .setting_up
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn setting_up(&self) -> usize {
        self.inner.setting_up.load(Ordering::Acquire)
    }

    /// Resolves when slots appear (after a sample that found room again).
    pub fn room_appeared(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.room.notified()
    }

    /// Issues the slots of a new estimate and shows it (`/health`, metrics). `live`: the calls
    /// live when it was made.
    pub(crate) fn publish(&self, estimate: Estimate, live: usize) {
        // The slots are the headroom alone: the registry bounds the count itself, and a count
        // taken here would be stale by the next sample (a call that ended just after it would
        // keep its slot away from a burst until then).
        let before = self.inner.slots.swap(estimate.can_take, Ordering::AcqRel);
        let can_take = estimate
            .can_take
            .min(self.inner.max_calls.saturating_sub(live));
        *self.inner.latest.lock() = Some(estimate);
        let metrics = &self.inner.metrics;
        metrics.headroom_calls.set(can_take as i64);
        metrics
            .headroom_admitting
            .set(i64::from(can_take > 0 || live == 0));
        metrics.headroom_cpus.set(estimate.cpus);
        if let Some(used) = estimate.cpu_used {
            metrics.headroom_cpu_used.set(used);
        }
        metrics.headroom_call_cost.set(estimate.call_cost);
        metrics
            .headroom_send_delay_p99
            .set(estimate.send_delay_p99.map_or(0.0, |d| d.as_secs_f64()));
        metrics
            .headroom_runtime_lag_p99
            .set(estimate.lag_p99.map_or(0.0, |d| d.as_secs_f64()));
        if before == 0 && estimate.can_take > 0 {
            self.inner.room.notify_waiters();
        }
        let was_within = self
            .inner
            .within_budget
            .swap(estimate.within_budget, Ordering::AcqRel);
        if was_within != estimate.within_budget {
            let ms = |d: Option<Duration>| d.map_or(-1.0, |d| d.as_secs_f64() * 1000.0);
            info!(
                within_budget = estimate.within_budget,
                send_delay_p99_ms = ms(estimate.send_delay_p99),
                runtime_lag_p99_ms = ms(estimate.lag_p99),
                live,
                "headroom: latency budget {}",
                if estimate.within_budget {
                    "kept again"
                } else {
                    "exceeded"
                }
            );
        }
        let knee = estimate.knee.unwrap_or(usize::MAX);
        if knee < self.inner.knee.swap(knee, Ordering::AcqRel) {
            info!(
                knee,
                live,
                cpu_used = estimate.cpu_used.unwrap_or(-1.0),
                "headroom: the latency budget broke at {live} calls; at most {knee} from now on, \
                 rising again while the budget holds"
            );
        }
        if (before == 0) != (estimate.can_take == 0) && live > 0 {
            info!(
                can_take = estimate.can_take,
                live,
                setting_up = estimate.setting_up,
                cpu_used = estimate.cpu_used.unwrap_or(-1.0),
                cpus = estimate.cpus,
                call_cost = estimate.call_cost,
                "headroom: {}",
                if estimate.can_take == 0 {
                    "no room for another call"
                } else {
                    "room again"
                }
            );
        }
    }

    /// What `/health` shows; `live`: the calls live now.
    pub fn status(&self, live: usize) -> HeadroomStatus {
        let settings = self.inner.settings;
        let latest = *self.inner.latest.lock();
        let can_take = self
            .inner
            .slots
            .load(Ordering::Acquire)
            .min(self.inner.max_calls.saturating_sub(live));
        let millis = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        HeadroomStatus {
            admission: match settings.mode {
                AdmissionMode::Headroom => "headroom",
                AdmissionMode::Count => "count",
            },
            cpus: latest.map(|e| e.cpus),
            cpu_used: latest.and_then(|e| e.cpu_used).map(round3),
            cpu_target: settings.cpu_target,
            call_cost: latest.map_or(DEFAULT_CALL_COST, |e| e.call_cost),
            calls_it_can_take: can_take,
            knee_calls: latest.and_then(|e| e.knee),
            setting_up: self.setting_up(),
            send_delay_p99_ms: latest.and_then(|e| millis(e.send_delay_p99)),
            runtime_lag_p99_ms: latest.and_then(|e| millis(e.lag_p99)),
            latency_budget_ms: settings.latency_budget.as_secs_f64() * 1000.0,
            within_latency_budget: latest.is_none_or(|e| e.within_budget),
            admitting: can_take > 0 || live == 0,
        }
    }
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The headroom as `/health` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct HeadroomStatus {
    /// `headroom` (enforced) or `count` (shown, not enforced).
    pub admission: &'static str,
    /// CPUs this process may use; `None` before the first sample.
    pub cpus: Option<f64>,
    /// Cores used over the last second; `None` until measured.
    pub cpu_used: Option<f64>,
    pub cpu_target: f64,
    /// Cores one call is expected to cost.
    pub call_cost: f64,
    /// More calls this host can take now (never more than `MAX_CONCURRENT_CALLS` leaves).
    pub calls_it_can_take: usize,
    /// The most calls this host carries within the latency budget, as learnt when it last
    /// broke (it rises again while the budget holds); `None`: it never broke under load.
    pub knee_calls: Option<usize>,
    pub setting_up: usize,
    pub send_delay_p99_ms: Option<f64>,
    pub runtime_lag_p99_ms: Option<f64>,
    pub latency_budget_ms: f64,
    pub within_latency_budget: bool,
    /// Whether a new call would be admitted now (as far as the headroom goes).
    pub admitting: bool,
}
