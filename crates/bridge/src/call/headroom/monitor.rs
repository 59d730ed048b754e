//! The task that measures the headroom: a 5 ms probe tick (how late it fires is the runtime's
//! lag), and every 500 ms a sample of the process's CPU time, calls and delays turned into a
//! new estimate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Headroom;
use super::estimate::{Estimator, Sample};
use super::window::DelayWindow;

/// How often the headroom is estimated (and admission slots issued).
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(500);
/// The runtime-lag probe's period: 100 probes per sample.
const PROBE_PERIOD: Duration = Duration::from_millis(5);
/// Fewer frames than this in a sample say nothing about the send delay (a few calls' one late
/// frame is noise; the probe covers a quiet bridge).
const MIN_FRAMES: u64 = 100;
/// Fewer probes than this in a sample say nothing about the lag.
const MIN_PROBES: u64 = 20;

/// Where the process's CPU use is read; the tests give their own.
pub trait CpuClock: Send + Sync + 'static {
    /// CPU time (user + system) this process has used so far, in seconds; `None` when it
    /// cannot be read.
    fn cpu_seconds(&self) -> Option<f64>;
    /// CPUs this process may use.
    fn cpus(&self) -> f64;
}

/// `/proc/self/stat` and the CPUs the scheduler lets this process use.
pub struct ProcCpu;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux ABI we run on).
const USER_HZ: f64 = 100.0;

impl CpuClock for ProcCpu {
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
    }

    /// `available_parallelism` follows the affinity mask (`taskset -c 1`: 1) and a cgroup
    /// quota (rounded down, at least 1).
    fn cpus(&self) -> f64 {
        std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
    }
}

/// utime + stime (fields 14 and 15) of `/proc/<pid>/stat`, counted after the command name,
/// which may hold spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Measures until `stop`; `live_calls` counts the live calls (outbound ones being placed
/// included).
pub async fn run(
    headroom: Headroom,
    clock: Arc<dyn CpuClock>,
    live_calls: impl Fn() -> usize + Send + 'static,
    stop: CancellationToken,
) {
    let mut estimator = Estimator::new(headroom.settings(), clock.cpus());
    let lag = DelayWindow::default();
    let mut probe = tokio::time::interval(PROBE_PERIOD);
    probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_sample = tokio::time::Instant::now();
    loop {
        let scheduled = tokio::select! {
            _ = stop.cancelled() => return,
            scheduled = probe.tick() => scheduled,
        };
        let now = tokio::time::Instant::now();
        lag.record(now.saturating_duration_since(scheduled));
        if now < next_sample {
            continue;
        }
        next_sample = now + SAMPLE_PERIOD;
        let calls = live_calls();
        let estimate = estimator.update(&Sample {
            at: Instant::now(),
            cpu_seconds: clock.cpu_seconds(),
            calls,
            setting_up: headroom.setting_up(),
            send_delay_p99: headroom.inner.send_delays.take(MIN_FRAMES),
            lag_p99: lag.take(MIN_PROBES),
        });
        headroom.publish(estimate, calls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat =
            "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 37 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(187));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_reads_its_own_cpu_and_cpus() {
        let clock = ProcCpu;
        assert!(clock.cpus() >= 1.0);
        if cfg!(target_os = "linux") {
            let before = clock.cpu_seconds().expect("readable on Linux");
            // Busy until the count moves (a 10 ms tick), for at most two seconds.
            let spin = Instant::now();
            let mut after = before;
            let mut x = 0u64;
            while after <= before && spin.elapsed() < Duration::from_secs(2) {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                after = clock.cpu_seconds().expect("readable on Linux");
            }
            assert!(after > before, "{before} -> {after}");
        }
    }
}
