//! How steadily this machine runs a thread that waits for a timer, measured before the ramp.
//!
//! A virtual machine's CPU can be taken away by the host for milliseconds at a time, reported as
//! steal time or not at all. The bridge's frames are then late by as much, whatever the bridge
//! does, so the report shows these figures beside its late-frame counts: the probe's before the
//! ramp, and each level's [`Steal`] during its hold.

use std::time::{Duration, Instant};

use super::report;

/// The timer each probe waits for: shorter than a frame, so a stall of a few milliseconds shows.
const PROBE_SLEEP: Duration = Duration::from_millis(1);
/// A stall at least this long would make a 20 ms frame noticeably late.
const STALL: Duration = Duration::from_millis(5);

/// How much later than asked a 1 ms sleep woke, over many sleeps on an idle machine.
#[derive(Debug, Clone)]
pub struct HostSteadiness {
    pub sleeps: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Sleeps that woke `STALL` or more late.
    pub stalls: usize,
}

impl HostSteadiness {
    /// Sleeps for 1 ms again and again for `duration` on the calling thread (blocking).
    pub fn measure(duration: Duration) -> Self {
        let mut overshoot_ms = Vec::with_capacity(duration.as_millis() as usize);
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let asleep = Instant::now();
            std::thread::sleep(PROBE_SLEEP);
            let late = asleep.elapsed().saturating_sub(PROBE_SLEEP);
            overshoot_ms.push(late.as_secs_f64() * 1e3);
        }
        Self::of(&overshoot_ms)
    }

    fn of(overshoot_ms: &[f64]) -> Self {
        let stall_ms = STALL.as_secs_f64() * 1e3;
        Self {
            sleeps: overshoot_ms.len(),
            p50_ms: report::percentile(overshoot_ms, 50.0),
            p99_ms: report::percentile(overshoot_ms, 99.0),
            p999_ms: report::percentile(overshoot_ms, 99.9),
            max_ms: report::max(overshoot_ms),
            stalls: overshoot_ms.iter().filter(|&&ms| ms >= stall_ms).count(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "Host steadiness: a 1 ms sleep on the harness's idle CPU woke late by p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.1} ms ({} of {} sleeps ≥ {} ms late).",
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.stalls,
            self.sleeps,
            STALL.as_millis()
        )
    }
}

/// The steal time of each CPU so far (`/proc/stat`), in ms: time the hypervisor ran something
/// else while this machine's CPU was ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Steal(Vec<f64>);

impl Steal {
    /// `None` where `/proc/stat` is missing or reports no steal column.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        Self::parse(&stat, crate::bridge_process::clock_ticks())
    }

    fn parse(stat: &str, ticks_per_second: f64) -> Option<Self> {
        let per_cpu: Vec<f64> = stat
            .lines()
            .filter(|line| {
                line.strip_prefix("cpu")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            // cpuN user nice system idle iowait irq softirq steal ...
            .map(|line| line.split_whitespace().nth(8)?.parse::<f64>().ok())
            .collect::<Option<_>>()?;
        (!per_cpu.is_empty())
            .then(|| Self(per_cpu.iter().map(|t| t * 1e3 / ticks_per_second).collect()))
    }

    /// The most steal any one CPU had since `earlier`, in ms.
    pub fn max_since(&self, earlier: &Steal) -> f64 {
        self.0
            .iter()
            .zip(&earlier.0)
            .map(|(now, then)| (now - then).max(0.0))
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_per_cpu_and_compared_per_cpu() {
        let stat = |steal0: u64, steal1: u64| {
            format!(
                "cpu  10 0 5 100 1 0 2 {} 0 0\ncpu0 5 0 2 50 0 0 1 {steal0} 0 0\ncpu1 5 0 3 50 1 0 1 {steal1} 0 0\nintr 1 2 3\n",
                steal0 + steal1
            )
        };
        let before = Steal::parse(&stat(28, 25), 100.0).expect("parsed");
        assert_eq!(before, Steal(vec![280.0, 250.0]));
        let after = Steal::parse(&stat(31, 25), 100.0).expect("parsed");
        assert_eq!(after.max_since(&before), 30.0);
        assert_eq!(Steal::parse("cpu0 1 2 3\n", 100.0), None);
    }

    #[test]
    fn stalls_are_the_sleeps_that_woke_five_ms_or_more_late() {
        let mut overshoot = vec![0.1; 995];
        overshoot.extend([4.9, 5.0, 7.5, 12.0, 0.2]);
        let steadiness = HostSteadiness::of(&overshoot);
        assert_eq!(steadiness.sleeps, 1000);
        assert_eq!(steadiness.stalls, 3);
        assert_eq!(steadiness.max_ms, 12.0);
        assert_eq!(steadiness.p50_ms, 0.1);
        // The worst tenth of a percent is the two worst sleeps.
        assert!(steadiness.p999_ms >= 7.5, "{steadiness:?}");
    }
}
