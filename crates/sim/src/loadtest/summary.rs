//! The figures across levels and the speed goals: CPU and RSS per call (fitted on the levels
//! the bridge kept up with), memory back to baseline, latency and late frames at 100 calls,
//! setup time, overflow.

use std::time::Duration;

use super::host::HostSteadiness;
use super::report::{self, CodecCost, Fit, LevelResult, OverflowResult};

/// How close to its starting RSS an idle bridge process must come to count as back to baseline
/// (per process: a fleet of N gets N times this).
pub(super) const RSS_BASELINE_SLACK_MIB: f64 = 5.0;
/// The uplink has no frame slot to wait for (each packet is forwarded as it arrives), so all of
/// its latency is the bridge's; the downlink's includes the wait for the next 20 ms slot.
const UPLINK_P99_GOAL_MS: f64 = 5.0;
const DOWNLINK_P99_GOAL_MS: f64 =
    bridge::media::codec::FRAME_PERIOD.as_millis() as f64 + UPLINK_P99_GOAL_MS;
const PER_CALL_GOAL: &str = "≥ 100 calls per core (≤ 1.0 % of a core per call)";
const RATIO_GOAL: &str = "bridge CPU per call ≤ 1.3 × codec only";
/// The latency, late-frame and setup goals hold at this many concurrent calls.
const GOAL_CALLS: i64 = 100;

/// The summary's lines, and the fits the plots draw.
pub(super) struct Summary {
    pub(super) cpu_fit: Option<Fit>,
    pub(super) rss_fit: Option<Fit>,
    lines: Vec<String>,
}

/// What the summary is made of besides the levels.
pub(super) struct Context<'a> {
    pub(super) host: Option<&'a HostSteadiness>,
    pub(super) codec: CodecCost,
    /// The bridge's RSS after a warm-up call, MiB.
    pub(super) baseline_rss: f64,
    /// Its RSS once idle after the last level, and how long that took to come.
    pub(super) settled: (f64, Duration),
    /// Bridge processes measured together (a fleet), each with its own baseline slack.
    pub(super) processes: usize,
    pub(super) overflow: Option<&'a OverflowResult>,
}

impl Summary {
    pub(super) fn of(levels: &[LevelResult], context: Context<'_>) -> Summary {
        let mut lines: Vec<String> = context
            .host
            .map(HostSteadiness::describe)
            .into_iter()
            .collect();
        lines.push(on_time_line(levels));
        let cpu_fit = cpu_lines(levels, context.codec, &mut lines);
        let rss_fit = report::linear_fit(&points(levels, |l| l.rss_mib, &|l| l.admitted > 0));
        if let Some(fit) = rss_fit {
            lines.push(goal(
                "≤ 1 MB RSS per call (slope)",
                fit.slope * 1.048_576 <= 1.0,
                format!("{:.2} MiB per call", fit.slope),
            ));
        }
        lines.push(rss_back_line(
            context.baseline_rss,
            context.settled,
            RSS_BASELINE_SLACK_MIB * context.processes as f64,
        ));
        if let Some(level) = level_nearest(levels, |l| l.admitted) {
            lines.extend(latency_lines(level));
        }
        if let Some(level) = level_nearest(levels, |l| l.calls) {
            let p99 = report::percentile(&level.setup_ms, 99.0);
            lines.push(goal(
                &format!(
                    "call setup p99 ≤ 50 ms with {} connects at once",
                    level.calls
                ),
                p99 <= 50.0,
                format!("{p99:.1} ms"),
            ));
        }
        if let Some(level) = level_nearest(levels, |l| l.admitted)
            && level.forwarded > 0
        {
            lines.push(format!(
                "At {} calls on {} replicas, {}.",
                level.admitted,
                context.processes,
                fleet_line(level)
            ));
        }
        if let Some(overflow) = context.overflow {
            lines.push(overflow_line(overflow));
        }
        Summary {
            cpu_fit,
            rss_fit,
            lines,
        }
    }

    pub(super) fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Whether the bridge kept up with a level: its own pacer late on at most 1 % of frames. Past
/// that it is saturated and its CPU stops growing with the calls; below it, a late tick is a
/// stall of the host (see `host`), which can make a few ticks late at any load on a shared
/// machine.
fn kept_up(level: &LevelResult) -> bool {
    level.admitted > 0 && level.late_pacer_ticks as f64 <= 0.01 * level.packets_received as f64
}

/// (calls admitted, `value`) of the levels that pass `filter`.
fn points(
    levels: &[LevelResult],
    value: fn(&LevelResult) -> f64,
    filter: &dyn Fn(&LevelResult) -> bool,
) -> Vec<(f64, f64)> {
    levels
        .iter()
        .filter(|l| filter(l))
        .map(|l| (l.admitted as f64, value(l)))
        .collect()
}

fn on_time_line(levels: &[LevelResult]) -> String {
    let on_time = levels
        .iter()
        .filter(|l| l.late == 0 && l.failed == 0 && kept_up(l))
        .max_by_key(|l| l.admitted);
    match on_time {
        Some(level) => format!(
            "Largest level with every frame on time at the phones: {} calls (bridge CPU {:.1} %).",
            level.admitted,
            level.bridge_cores * 100.0
        ),
        None => "No level had every frame on time at the phones.".to_owned(),
    }
}

/// The CPU cost per call, fitted on the levels the bridge kept up with (a slope through
/// saturated levels would understate it), against the goals; returns the fit.
fn cpu_lines(levels: &[LevelResult], codec: CodecCost, lines: &mut Vec<String>) -> Option<Fit> {
    let cpu_points = points(levels, |l| l.bridge_cores, &kept_up);
    let cpu_fit = report::linear_fit(&cpu_points);
    if let Some(fit) = cpu_fit {
        let slope = fit.slope;
        let ratio = slope / codec.cores_per_call();
        lines.push(format!(
            "Bridge CPU per call (slope over {} levels it kept up with): {:.3} % of a core (intercept {:.1} %), i.e. {:.0} calls per core at full use; codec only {:.3} %; ratio {:.2}.",
            cpu_points.len(),
            slope * 100.0,
            fit.intercept * 100.0,
            1.0 / slope,
            codec.cores_per_call() * 100.0,
            ratio
        ));
        lines.push(goal(
            PER_CALL_GOAL,
            slope <= 0.01,
            format!("{:.3} %", slope * 100.0),
        ));
        lines.push(goal(RATIO_GOAL, ratio <= 1.3, format!("{ratio:.2} ×")));
    } else if levels.len() >= 2 {
        let why = format!(
            "not measured: {} of {} levels kept up (pacer late on ≤ 1 % of frames), and a fit needs two",
            cpu_points.len(),
            levels.len()
        );
        lines.push(goal(PER_CALL_GOAL, false, why.clone()));
        lines.push(goal(RATIO_GOAL, false, why));
    }
    cpu_fit
}

fn rss_back_line(baseline_rss: f64, settled: (f64, Duration), slack: f64) -> String {
    let back = settled.0 - baseline_rss;
    goal(
        "RSS back to baseline after the calls end",
        back <= slack,
        format!(
            "{baseline_rss:.1} MiB after a warm-up call, {:.1} MiB {:.1} s after the last ended ({back:+.1})",
            settled.0,
            settled.1.as_secs_f64()
        ),
    )
}

/// Latency each way and late frames at the phones, at the level nearest 100 calls.
fn latency_lines(level: &LevelResult) -> [String; 2] {
    let up = report::percentile(&level.uplink_ms, 99.0);
    let down = report::percentile(&level.downlink_ms, 99.0);
    [
        goal(
            &format!(
                "latency p99 ≤ 5 ms each way beyond the 20 ms frame, at {} calls",
                level.admitted
            ),
            up <= UPLINK_P99_GOAL_MS && down <= DOWNLINK_P99_GOAL_MS,
            format!("uplink {up:.1} ms, downlink {down:.1} ms (frame slot included)"),
        ),
        goal(
            &format!("no late frames at the phone, at {} calls", level.admitted),
            level.late == 0,
            format!(
                "{} late, {} bunched of {} packets; the bridge sent {} frames more than 10 ms after their slot; the harness's own timer ran 10 ms or more late {} times (at most {:.1} ms); steal time on one CPU {:.0} ms over the hold, at most {:.0} ms within 100 ms",
                level.late,
                level.bunched,
                level.packets_received,
                level.frames_sent_late,
                level.harness_stalls,
                level.harness_max_lag_ms,
                level.steal_ms,
                level.steal_peak_ms
            ),
        ),
    ]
}

fn overflow_line(overflow: &OverflowResult) -> String {
    goal(
        "overflow ≥ 10 000 webhooks/s, all refused, no permit leaked",
        overflow.rate() >= 10_000.0 && overflow.problems.is_empty() && overflow.permits_intact,
        format!(
            "{:.0} webhooks/s ({} sent, {} refused, {} otherwise; bridge CPU {:.0} %), permits {}",
            overflow.rate(),
            overflow.sent,
            overflow.refused,
            overflow.other,
            overflow.bridge_cores * 100.0,
            if overflow.permits_intact {
                "intact"
            } else {
                "LEAKED"
            }
        ),
    )
}

/// What a fleet's coordination did at one level.
pub(super) fn fleet_line(level: &LevelResult) -> String {
    let calls = level.admitted.max(1) as f64;
    format!(
        "fleet: {} events forwarded to their call's replica, in p50 {:.2} / p99 {:.2} ms; Redis: {} commands ({:.1} per call), {:.0} ms of its CPU ({:.0} µs per call)",
        level.forwarded,
        level.forward_p50_ms,
        level.forward_p99_ms,
        level.redis_commands,
        level.redis_commands as f64 / calls,
        level.redis_cpu_ms,
        level.redis_cpu_ms * 1000.0 / calls,
    )
}

/// The level whose size (by `size`) is nearest to the 100 calls the goals are set at.
fn level_nearest(levels: &[LevelResult], size: fn(&LevelResult) -> usize) -> Option<&LevelResult> {
    levels
        .iter()
        .min_by_key(|l| (size(l) as i64 - GOAL_CALLS).abs())
}

fn goal(name: &str, met: bool, value: String) -> String {
    format!("[{}] {name}: {value}", if met { "met" } else { "NOT MET" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(calls: usize, cores: f64, late_pacer_ticks: u64) -> LevelResult {
        LevelResult {
            calls,
            admitted: calls,
            packets_received: calls as u64 * 1000,
            late_pacer_ticks,
            bridge_cores: cores,
            rss_mib: 20.0 + calls as f64 * 0.5,
            ..LevelResult::default()
        }
    }

    fn summary(levels: &[LevelResult]) -> String {
        let context = Context {
            host: None,
            codec: CodecCost { frame_us: 120.0 },
            baseline_rss: 20.0,
            settled: (21.0, Duration::ZERO),
            processes: 1,
            overflow: None,
        };
        Summary::of(levels, context).render()
    }

    #[test]
    fn the_cost_per_call_is_fitted_on_the_levels_the_bridge_kept_up_with() {
        // 0.8 % per call up to 50 calls; at 100 the core is saturated and the pacer falls behind.
        let levels = [
            level(10, 0.10, 0),
            level(50, 0.42, 40),
            level(100, 0.99, 20_000),
        ];
        let text = summary(&levels);
        assert!(text.contains("slope over 2 levels"), "{text}");
        assert!(
            text.contains("[met] ≥ 100 calls per core (≤ 1.0 % of a core per call): 0.800 %"),
            "{text}"
        );
        assert!(text.contains("ratio 1.33"), "{text}");
    }

    #[test]
    fn saturated_levels_never_yield_a_cost_per_call() {
        // Only one level kept up: a slope through the saturated ones would understate the cost.
        let levels = [
            level(10, 0.15, 0),
            level(50, 0.98, 5_000),
            level(100, 0.99, 30_000),
        ];
        let text = summary(&levels);
        assert!(
            text.contains("[NOT MET] ≥ 100 calls per core (≤ 1.0 % of a core per call): not measured: 1 of 3 levels kept up"),
            "{text}"
        );
        assert!(
            text.contains("[NOT MET] bridge CPU per call ≤ 1.3 × codec only: not measured"),
            "{text}"
        );
    }

    #[test]
    fn the_uplink_gets_no_frame_slot_allowance() {
        let mut at_100 = level(100, 0.5, 0);
        at_100.downlink_ms = vec![24.0; 100];
        at_100.uplink_ms = vec![5.3; 100];
        let text = summary(&[level(10, 0.05, 0), at_100.clone()]);
        assert!(
            text.contains("[NOT MET] latency p99 ≤ 5 ms each way beyond the 20 ms frame, at 100 calls: uplink 5.3 ms, downlink 24.0 ms"),
            "{text}"
        );
        at_100.uplink_ms = vec![4.9; 100];
        let text = summary(&[level(10, 0.05, 0), at_100]);
        assert!(
            text.contains("[met] latency p99 ≤ 5 ms each way beyond the 20 ms frame, at 100 calls"),
            "{text}"
        );
    }
}
