//! The admission decision, sans-IO: from samples of the process's CPU time, its calls and the
//! recent delays, how many more calls this host can carry within the CPU target and whether
//! the live calls are within the latency budget.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::AdmissionSettings;

/// CPU use is measured over about this long (`/proc` counts in 10 ms steps: 1 % of a core
/// over a second).
const CPU_WINDOW: Duration = Duration::from_secs(1);
/// A CPU reading over less than this is not trusted.
const MIN_CPU_SPAN: Duration = Duration::from_millis(400);
/// What one call is assumed to cost (cores) before any was measured: a call on the slower
/// machine of our kind (docs/BENCHMARKS.md: 0.67–1.03 % of a core; 0.47 % on the faster).
pub const DEFAULT_CALL_COST: f64 = 0.01;
/// The estimate never goes below this (cores per call), whatever the noise.
const MIN_CALL_COST: f64 = 0.001;
/// Weight of a new measurement in the smoothed per-call cost and idle use.
const SMOOTHING: f64 = 0.3;
/// The delays must be over budget in this many samples in a row (a second) to stop admission:
/// one stall of the host is not a bridge that cannot keep up.
const OVER_SAMPLES: u32 = 2;
/// Once over budget, the delays must stay under this share of the budget ...
const CALM_SHARE: f64 = 0.8;
/// ... for this many samples in a row before calls are admitted again.
const CALM_SAMPLES: u32 = 3;
/// No more calls are ever counted than this (an absurdly cheap estimate stays finite).
const MAX_ROOM: usize = 100_000;
/// When the live calls broke the latency budget, this share of them is kept as the most calls
/// this host carries (its knee): CPU alone does not say where the frames begin to slip, which
/// moves with the host and its neighbours.
const KNEE_SHARE: f64 = 0.9;
/// Frames late while the calls use less than this share of the CPU target are the host's doing
/// (a stalled virtual CPU, a noisy neighbour), not the calls': no knee is learnt from them.
const KNEE_MIN_LOAD: f64 = 0.5;
/// Within the budget with the calls at the knee, the knee rises by one call this often (the
/// host may have become steadier) ...
const KNEE_PROBE: Duration = Duration::from_secs(10);
/// ... and with fewer calls, where nothing tests it, this often: an old knee is forgotten slowly.
const KNEE_FORGET: Duration = Duration::from_secs(60);

/// What the monitor saw at one sample.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Instant,
    /// CPU time this process has used so far (seconds); `None` when it cannot be read.
    pub cpu_seconds: Option<f64>,
    /// Live calls (outbound ones being placed included).
    pub calls: usize,
    /// Of those, the ones still being set up (not yet carrying media both ways).
    pub setting_up: usize,
    /// p99 of the frame send delay since the last sample; `None`: too few frames to say.
    pub send_delay_p99: Option<Duration>,
    /// p99 of how late the runtime's probe tick fired since the last sample.
    pub lag_p99: Option<Duration>,
}

/// The verdict of one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// CPUs this process may use.
    pub cpus: f64,
    /// CPU used over the last second (cores); `None` until measured.
    pub cpu_used: Option<f64>,
    /// What one more call is expected to cost (cores).
    pub call_cost: f64,
    /// Calls still being set up (they cost more soon).
    pub setting_up: usize,
    pub send_delay_p99: Option<Duration>,
    pub lag_p99: Option<Duration>,
    /// False while the recent delays are over the budget (or not yet calm again).
    pub within_budget: bool,
    /// The most calls this host was found to carry within the latency budget; `None` until
    /// the budget broke with calls running.
    pub knee: Option<usize>,
    /// More calls this host can take now: those the CPU target leaves room for, less the
    /// ones still being set up, and no more than the knee leaves; 0 while over the latency
    /// budget.
    pub can_take: usize,
}

/// The most calls found to be carried within the latency budget, and when it last moved.
#[derive(Clone, Copy, Debug)]
struct Knee {
    calls: usize,
    moved_at: Instant,
}

/// Turns samples into estimates; keeps the smoothed per-call cost and the hysteresis.
pub struct Estimator {
    settings: AdmissionSettings,
    cpus: f64,
    /// (when, process CPU seconds), oldest first, spanning about [`CPU_WINDOW`].
    readings: VecDeque<(Instant, f64)>,
    call_cost: f64,
    /// When a sample last saw a call being set up: the CPU window since then holds set-up work
    /// (ICE, DTLS, the AI's session), which is not what a call costs once it runs.
    setup_seen_at: Option<Instant>,
    /// When more calls were running than at the sample before, and how many ran then: a window
    /// reaching back before such a rise reads the new calls as nearly free.
    running_rose_at: Option<Instant>,
    running: usize,
    /// When a sample last saw any call: idle use is learnt only from a window without one (the
    /// end of a busy level read as idle use charged every later call to "idle").
    calls_seen_at: Option<Instant>,
    /// CPU used with no call at all (the runtime, timers, the HTTP server idling).
    idle: f64,
    over_budget: bool,
    over_samples: u32,
    calm_samples: u32,
    knee: Option<Knee>,
}

impl Estimator {
    pub fn new(settings: AdmissionSettings, cpus: f64) -> Self {
        Self {
            settings,
            cpus: cpus.max(0.01),
            readings: VecDeque::new(),
            call_cost: DEFAULT_CALL_COST,
            setup_seen_at: None,
            running_rose_at: None,
            running: 0,
            calls_seen_at: None,
            idle: 0.0,
            over_budget: false,
            over_samples: 0,
            calm_samples: 0,
            knee: None,
        }
    }

    pub fn update(&mut self, sample: &Sample) -> Estimate {
        let cpu_used = self.cpu_used(sample);
        if sample.setting_up > 0 {
            self.setup_seen_at = Some(sample.at);
        }
        // The running cost of a call is learnt only from windows without set-ups and without a
        // rise in the running calls: a burst's set-up work charged to the few calls already
        // running read as a cost many times the truth and refused calls on an idle host, and a
        // window from before a rise reads the new calls as nearly free. Calls setting up are
        // charged one running call each below, and the latency check catches what that misses.
        let running = sample.calls.saturating_sub(sample.setting_up);
        if running > self.running {
            self.running_rose_at = Some(sample.at);
        }
        self.running = running;
        let settled = |since: Option<Instant>| {
            since.is_none_or(|at| sample.at.duration_since(at) >= CPU_WINDOW)
        };
        let setup_free = settled(self.setup_seen_at) && settled(self.running_rose_at);
        let idle_window = settled(self.calls_seen_at);
        if sample.calls > 0 {
            self.calls_seen_at = Some(sample.at);
        }
        if let Some(used) = cpu_used {
            if sample.calls == 0 && idle_window {
                self.idle += SMOOTHING * (used - self.idle);
            } else if setup_free {
                let set_up = sample.calls.saturating_sub(sample.setting_up);
                if set_up > 0 {
                    let measured = (used - self.idle).max(0.0) / set_up as f64;
                    self.call_cost += SMOOTHING * (measured - self.call_cost);
                    self.call_cost = self.call_cost.max(MIN_CALL_COST);
                }
            }
        }
        let late = self.judge_latency(sample);
        let loaded = cpu_used
            .is_some_and(|used| used >= KNEE_MIN_LOAD * self.settings.cpu_target * self.cpus);
        self.follow_knee(sample, late && loaded, setup_free);
        // The CPU the live calls use: what was measured, but never less than they are known to
        // cost. The window trails a burst: calls that began running in it have hardly shown yet
        // (a 200-call burst read 0.2 of a core with 81 calls running, and 48 more were let in).
        // Unmeasured (no `/proc`, or too soon): the known cost alone.
        let set_up = sample.calls.saturating_sub(sample.setting_up);
        let known = self.idle + set_up as f64 * self.call_cost;
        let used = cpu_used.map_or(known, |measured| measured.max(known));
        let budget = self.settings.cpu_target * self.cpus - used;
        let cpu_room = if budget <= 0.0 {
            0
        } else {
            ((budget / self.call_cost).floor() as usize).min(MAX_ROOM)
        };
        let knee_room = self
            .knee
            .map_or(usize::MAX, |knee| knee.calls.saturating_sub(sample.calls));
        let can_take = if self.over_budget {
            0
        } else {
            cpu_room.saturating_sub(sample.setting_up).min(knee_room)
        };
        Estimate {
            cpus: self.cpus,
            cpu_used,
            call_cost: self.call_cost,
            setting_up: sample.setting_up,
            send_delay_p99: sample.send_delay_p99,
            lag_p99: sample.lag_p99,
            within_budget: !self.over_budget,
            knee: self.knee.map(|knee| knee.calls),
            can_take,
        }
    }

    /// Cores used over the last [`CPU_WINDOW`], once the readings span long enough.
    fn cpu_used(&mut self, sample: &Sample) -> Option<f64> {
        let Some(cpu_seconds) = sample.cpu_seconds else {
            self.readings.clear();
            return None;
        };
        self.readings.push_back((sample.at, cpu_seconds));
        // Keep the newest reading at least a window old as the start of the window.
        while self.readings.len() > 2
            && self
                .readings
                .get(1)
                .is_some_and(|(at, _)| sample.at.duration_since(*at) >= CPU_WINDOW)
        {
            self.readings.pop_front();
        }
        let (first_at, first_cpu) = *self.readings.front()?;
        let span = sample.at.duration_since(first_at);
        if span < MIN_CPU_SPAN {
            return None;
        }
        Some(((cpu_seconds - first_cpu) / span.as_secs_f64()).max(0.0))
    }

    /// Learns the knee while the budget is broken, this sample late under load, with calls
    /// running and no set-up in the window (a burst's set-up work says nothing of what the
    /// running calls cost); lets it rise again while the budget holds.
    fn follow_knee(&mut self, sample: &Sample, late_under_load: bool, setup_free: bool) {
        if self.over_budget {
            if late_under_load && setup_free && sample.calls > 0 {
                let carried = ((sample.calls as f64 * KNEE_SHARE).floor() as usize).max(1);
                let calls = self.knee.map_or(carried, |knee| knee.calls.min(carried));
                self.knee = Some(Knee {
                    calls,
                    moved_at: sample.at,
                });
            }
            return;
        }
        if let Some(knee) = &mut self.knee {
            let every = if sample.calls >= knee.calls {
                KNEE_PROBE
            } else {
                KNEE_FORGET
            };
            if sample.at.duration_since(knee.moved_at) >= every {
                knee.calls = (knee.calls + 1).min(MAX_ROOM);
                knee.moved_at = sample.at;
            }
        }
    }

    /// Over the budget after [`OVER_SAMPLES`] samples over it; back within it only after
    /// [`CALM_SAMPLES`] calm samples. Whether this sample was over the budget.
    fn judge_latency(&mut self, sample: &Sample) -> bool {
        let budget = self.settings.latency_budget;
        // What the callers hear is the frame send delay; the runtime's lag stands in for it
        // only while too few frames went out to say (a probe tick is a noisier witness: on a
        // loaded host it read 6 ms at 25 calls whose frames went out within 3 ms).
        let worst = sample.send_delay_p99.or(sample.lag_p99);
        if worst.is_some_and(|delay| delay > budget) {
            self.over_samples += 1;
            self.calm_samples = 0;
            if self.over_samples >= OVER_SAMPLES {
                self.over_budget = true;
            }
            return true;
        }
        self.over_samples = 0;
        if self.over_budget {
            if worst.is_none_or(|delay| delay.as_secs_f64() <= budget.as_secs_f64() * CALM_SHARE) {
                self.calm_samples += 1;
                if self.calm_samples >= CALM_SAMPLES {
                    self.over_budget = false;
                    self.calm_samples = 0;
                }
            } else {
                self.calm_samples = 0;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdmissionMode;

    const STEP: Duration = Duration::from_millis(500);

    fn settings() -> AdmissionSettings {
        AdmissionSettings {
            mode: AdmissionMode::Headroom,
            cpu_target: 0.8,
            latency_budget: Duration::from_millis(5),
        }
    }

    /// Feeds samples every 500 ms with the process using `cores` and `calls` live calls.
    struct Host {
        estimator: Estimator,
        at: Instant,
        cpu_seconds: f64,
    }

    impl Host {
        fn new(cpus: f64) -> Self {
            Self {
                estimator: Estimator::new(settings(), cpus),
                at: Instant::now(),
                cpu_seconds: 0.0,
            }
        }

        fn step(&mut self, cores: f64, calls: usize, setting_up: usize) -> Estimate {
            self.step_with(cores, calls, setting_up, None, None)
        }

        fn step_with(
            &mut self,
            cores: f64,
            calls: usize,
            setting_up: usize,
            send_delay_p99: Option<Duration>,
            lag_p99: Option<Duration>,
        ) -> Estimate {
            self.at += STEP;
            self.cpu_seconds += cores * STEP.as_secs_f64();
            self.estimator.update(&Sample {
                at: self.at,
                cpu_seconds: Some(self.cpu_seconds),
                calls,
                setting_up,
                send_delay_p99,
                lag_p99,
            })
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_idle_host_has_room_from_the_first_sample_on() {
        let mut host = Host::new(1.0);
        let first = host.step(0.01, 0, 0);
        assert_eq!(first.cpu_used, None, "one reading measures nothing yet");
        assert_eq!(
            first.can_take, 80,
            "0.8 of one core at the default 1 % per call"
        );
        for _ in 0..4 {
            host.step(0.01, 0, 0);
        }
        let settled = host.step(0.01, 0, 0);
        assert!((settled.cpu_used.expect("measured") - 0.01).abs() < 1e-9);
        assert!(settled.within_budget);
        assert_eq!(settled.can_take, 79);
    }

    #[test]
    fn calls_setting_up_take_their_share_before_they_show_in_the_cpu() {
        let mut host = Host::new(1.0);
        host.step(0.0, 0, 0);
        assert_eq!(host.step(0.0, 0, 0).can_take, 80);
        // A burst of 70 admitted: still setting up, hardly any CPU yet.
        assert_eq!(host.step(0.0, 70, 70).can_take, 10);
        assert_eq!(host.step(0.0, 100, 100).can_take, 0);
    }

    #[test]
    fn calls_that_just_began_running_count_before_the_cpu_window_shows_them() {
        let mut host = Host::new(1.0);
        host.step(0.0, 0, 0);
        host.step(0.0, 0, 0);
        // 60 calls at the default 1 % each, but the window has not caught up with them yet.
        let last = host.step(0.1, 60, 0);
        assert_eq!(last.can_take, 20, "(0.8 - 60 x 0.01) / 0.01");
    }

    #[test]
    fn set_up_work_is_not_learnt_as_the_cost_of_a_running_call() {
        let mut host = Host::new(1.0);
        host.step(0.0, 0, 0);
        host.step(0.0, 0, 0);
        // One call running while a burst of 20 sets up and takes half the core.
        let mut last = host.step(0.5, 21, 20);
        for _ in 0..3 {
            last = host.step(0.5, 21, 20);
        }
        assert_eq!(
            last.call_cost, DEFAULT_CALL_COST,
            "set-up CPU is not a call's cost"
        );
        assert_eq!(
            last.can_take, 10,
            "(0.8 - 0.5) / 0.01 less the 20 setting up"
        );
        // Once the window holds no set-up, the running calls' cost is learnt.
        for _ in 0..30 {
            last = host.step(0.02 * 21.0, 21, 0);
        }
        assert!((last.call_cost - 0.02).abs() < 0.001, "{}", last.call_cost);
    }

    #[test]
    fn the_cost_per_call_is_learnt_and_projected_cpu_over_the_target_refuses() {
        // A host where each call costs 2 % of a core: 40 calls fill 0.8 of it.
        let mut host = Host::new(1.0);
        let mut last = host.step(0.0, 0, 0);
        for _ in 0..30 {
            last = host.step(0.02 * 30.0, 30, 0);
        }
        assert!(
            (last.call_cost - 0.02).abs() < 0.001,
            "cost {}",
            last.call_cost
        );
        assert_eq!(last.can_take, 10);
        for _ in 0..30 {
            last = host.step(0.02 * 40.0, 40, 0);
        }
        assert_eq!(last.can_take, 0, "0.8 of the core is used: no more calls");
        assert!(last.within_budget, "refused for CPU alone");
        // Two CPUs carry twice as many.
        let mut wide = Host::new(2.0);
        for _ in 0..30 {
            last = wide.step(0.02 * 40.0, 40, 0);
        }
        assert_eq!(last.can_take, 40);
    }

    #[test]
    fn a_busy_host_measures_a_cost_no_cheaper_than_the_truth() {
        let mut host = Host::new(1.0);
        let mut last = host.step(0.05, 0, 0);
        for _ in 0..10 {
            last = host.step(0.05, 0, 0);
        }
        // Idle use is not charged to the calls.
        for _ in 0..30 {
            last = host.step(0.05 + 0.005 * 100.0, 100, 0);
        }
        assert!(
            (last.call_cost - 0.005).abs() < 0.0005,
            "{}",
            last.call_cost
        );
        assert!(
            (49..=50).contains(&last.can_take),
            "(0.8 - 0.55) / 0.005: {}",
            last.can_take
        );
    }

    #[test]
    fn a_send_delay_over_the_budget_refuses_with_cpu_to_spare() {
        let mut host = Host::new(4.0);
        host.step(0.1, 10, 0);
        let ok = host.step_with(0.1, 10, 0, Some(ms(5)), Some(ms(1)));
        assert!(
            ok.within_budget && ok.can_take > 0,
            "5 ms is within a 5 ms budget"
        );
        let stall = host.step_with(0.1, 10, 0, Some(ms(6)), Some(ms(1)));
        assert!(
            stall.within_budget,
            "one late sample is a stall, not a trend"
        );
        host.step_with(0.1, 10, 0, Some(ms(2)), Some(ms(1)));
        host.step_with(0.1, 10, 0, Some(ms(6)), Some(ms(1)));
        let late = host.step_with(0.1, 10, 0, Some(ms(6)), Some(ms(1)));
        assert!(!late.within_budget, "late for a second");
        assert_eq!(late.can_take, 0);
        let mut lagging = Host::new(4.0);
        lagging.step_with(0.1, 10, 0, None, Some(ms(8)));
        let lagged = lagging.step_with(0.1, 10, 0, None, Some(ms(8)));
        assert_eq!(
            lagged.can_take, 0,
            "without frames to judge, runtime lag refuses"
        );
        let mut sending = Host::new(4.0);
        sending.step_with(0.1, 10, 0, Some(ms(3)), Some(ms(8)));
        let on_time = sending.step_with(0.1, 10, 0, Some(ms(3)), Some(ms(8)));
        assert!(
            on_time.within_budget,
            "frames on time outweigh a lagging probe"
        );
    }

    #[test]
    fn admission_reopens_only_after_the_delays_stay_calm() {
        let mut host = Host::new(1.0);
        host.step(0.1, 10, 0);
        host.step_with(0.1, 10, 0, Some(ms(8)), None);
        assert!(!host.step_with(0.1, 10, 0, Some(ms(8)), None).within_budget);
        // Back under the budget but not well under it: still refusing.
        for _ in 0..5 {
            let edge = host.step_with(0.1, 10, 0, Some(ms(5)), Some(ms(5)));
            assert!(!edge.within_budget);
            assert_eq!(edge.can_take, 0);
        }
        // Calm for three samples: admitting again; one calm sample between spikes is not enough.
        assert!(!host.step_with(0.1, 10, 0, Some(ms(3)), None).within_budget);
        assert!(!host.step_with(0.1, 10, 0, Some(ms(3)), None).within_budget);
        assert!(!host.step_with(0.1, 10, 0, Some(ms(10)), None).within_budget);
        assert!(!host.step_with(0.1, 10, 0, Some(ms(3)), None).within_budget);
        assert!(!host.step_with(0.1, 10, 0, Some(ms(3)), None).within_budget);
        let open = host.step_with(0.1, 10, 0, Some(ms(3)), None);
        assert!(open.within_budget);
        assert!(open.can_take > 0);
    }

    #[test]
    fn without_a_cpu_reading_only_the_latency_decides() {
        let mut estimator = Estimator::new(settings(), 1.0);
        let estimate = estimator.update(&Sample {
            at: Instant::now(),
            cpu_seconds: None,
            calls: 5,
            setting_up: 0,
            send_delay_p99: Some(ms(1)),
            lag_p99: None,
        });
        assert_eq!(estimate.cpu_used, None);
        assert_eq!(estimate.can_take, 75, "five calls at the default cost");
    }

    #[test]
    fn the_calls_at_which_the_budget_broke_cap_admission_until_it_holds_again() {
        // 0.5 % of a core per call: the CPU target alone would allow 160 calls.
        let mut host = Host::new(1.0);
        for _ in 0..30 {
            host.step_with(0.005 * 100.0, 100, 0, Some(ms(2)), None);
        }
        let roomy = host.step_with(0.5, 100, 0, Some(ms(2)), None);
        assert_eq!(roomy.knee, None);
        assert!(roomy.can_take >= 55, "{}", roomy.can_take);
        // The frames slip at 100 calls: no more calls, and 90 is the most from now on.
        host.step_with(0.5, 100, 0, Some(ms(8)), None);
        let broke = host.step_with(0.5, 100, 0, Some(ms(8)), None);
        assert!(!broke.within_budget);
        assert_eq!(broke.knee, Some(90));
        assert_eq!(broke.can_take, 0);
        // Twenty callers hang up and the delays calm down: room for ten, not for the CPU's 60.
        let mut calm = host.step_with(0.4, 80, 0, Some(ms(2)), None);
        for _ in 0..3 {
            calm = host.step_with(0.4, 80, 0, Some(ms(2)), None);
        }
        assert!(calm.within_budget);
        assert_eq!(calm.can_take, 10);
        // Held at the knee within the budget, it rises by one call every 10 s.
        for _ in 0..20 {
            calm = host.step_with(0.45, 90, 0, Some(ms(2)), None);
        }
        assert_eq!(calm.knee, Some(91));
        assert_eq!(calm.can_take, 1);
        // With fewer calls nothing tests it: once a minute.
        for _ in 0..120 {
            calm = host.step_with(0.25, 50, 0, Some(ms(2)), None);
        }
        assert_eq!(calm.knee, Some(92));
        // Broken again with fewer calls: the knee follows it down.
        for _ in 0..3 {
            host.step_with(0.45, 85, 0, Some(ms(2)), None);
        }
        host.step_with(0.45, 85, 0, Some(ms(10)), None);
        let again = host.step_with(0.45, 85, 0, Some(ms(10)), None);
        assert_eq!(again.knee, Some(76));
    }

    #[test]
    fn late_frames_on_a_lightly_loaded_host_or_in_a_burst_teach_no_knee() {
        // Five calls on a host that stalls: refused while it is late, but no ceiling learnt.
        let mut host = Host::new(1.0);
        for _ in 0..4 {
            host.step_with(0.05, 5, 0, Some(ms(2)), None);
        }
        host.step_with(0.05, 5, 0, Some(ms(20)), None);
        let stalled = host.step_with(0.05, 5, 0, Some(ms(20)), None);
        assert_eq!(stalled.can_take, 0);
        assert_eq!(stalled.knee, None, "a stalled host is not a full one");
        // A burst setting up makes the running calls late: refused, but no knee either.
        let mut busy = Host::new(1.0);
        for _ in 0..4 {
            busy.step_with(0.3, 40, 0, Some(ms(2)), None);
        }
        busy.step_with(0.7, 80, 40, Some(ms(9)), None);
        let burst = busy.step_with(0.7, 80, 40, Some(ms(9)), None);
        assert_eq!(burst.can_take, 0);
        assert_eq!(burst.knee, None, "set-up work is not what the calls cost");
    }
}
