//! One level of the ramp: its phones are prepared, dial all at once, warm up, hold and hang
//! up; then the level's figures are gathered from the phones, the AI double's probe and the
//! bridge's own metrics.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::host::Steal;
use super::markers::pair_delays;
use super::phone::{self, Caller, Dialled, LiveCall, PhoneStats, Prepared};
use super::report::{self, LevelResult};
use super::target::{RedisStats, Target};
use super::{Harness, IDLE_TIMEOUT};
use crate::bridge_process::{self, Metrics, quantile};

/// Phones prepared (peer + offer) at the same time before a level starts.
const PREPARE_CONCURRENCY: usize = 32;
/// How long the calls run after dialling before the hold (and its measurements) begins.
const WARM_UP: Duration = Duration::from_secs(2);
/// A marker must have been sent this long before the hang-up for its echo to count.
const ROUND_TRIP_ROOM: Duration = Duration::from_millis(2_500);
/// Longest wait, after its reference, for a marker or echo to be seen.
const MATCH_WINDOW: Duration = Duration::from_secs(1);
/// Longest wait for a whole round trip (marker sent, echo heard at the phone).
const ROUND_TRIP_WINDOW: Duration = Duration::from_millis(1_900);
/// A harness timer this late means the phones' arrival times were late by as much: a late
/// frame the phones count then says more about the harness than about the bridge.
const HARNESS_STALL: Duration = Duration::from_millis(10);
/// How often the harness checks its own timeliness during a hold.
const HARNESS_LAG_TICK: Duration = Duration::from_millis(2);
/// How often the CPUs' steal time is read during a hold (the kernel counts it in 10 ms ticks).
const STEAL_WINDOW: Duration = Duration::from_millis(100);

/// A call's phone after the hang-up: its key, counters and what went wrong.
type Ended = (u64, PhoneStats, Option<String>);

/// Runs one level of `calls` calls held for `hold`.
pub(super) async fn run_level(
    harness: &mut Harness,
    bridge: &Target,
    calls: usize,
    hold: Duration,
) -> anyhow::Result<LevelResult> {
    let mut result = LevelResult {
        calls,
        ..LevelResult::default()
    };
    let caller = harness.caller.clone();
    let prepared = prepare(harness, calls).await?;
    let before = bridge.metrics().await?;
    let redis_before = bridge.redis_stats().await;
    let live = dial_all(&caller, bridge, prepared, &mut result).await?;
    tokio::time::sleep(WARM_UP).await; // warm-up, not synchronisation
    for call in &live {
        call.begin_hold();
    }
    let hold_start = Instant::now();
    let at_hold = bridge.metrics().await?;
    hold_calls(bridge, hold, live.len(), &mut result).await?;
    let hung_up_at = Instant::now();
    let ended = hang_up_all(&caller, live).await;
    if !bridge.wait_idle(IDLE_TIMEOUT).await {
        result
            .problems
            .push("the bridge still had live calls after every hang-up".into());
    }
    let after = bridge.metrics().await?;
    result.rss_after_mib = bridge.sample()?.rss_mib;
    count_bridge_side(&mut result, &before, &at_hold, &after);
    if let (Some(earlier), Some(later)) = (redis_before, bridge.redis_stats().await) {
        count_fleet_side(&mut result, &before, &after, earlier, later);
    }
    tally_phones(harness, ended, hold_start, hung_up_at, &mut result);
    harness.probe.clear();
    Ok(result)
}

/// Prepares a phone (peer and offer) for each call of the level, a few at a time.
pub(super) async fn prepare(harness: &mut Harness, calls: usize) -> anyhow::Result<Vec<Prepared>> {
    let keys: Vec<u64> = (0..calls as u64).map(|i| harness.next_key + i).collect();
    harness.next_key += calls as u64;
    let (caller, peer) = (&harness.caller, &harness.peer);
    let prepared: Vec<anyhow::Result<Prepared>> =
        futures_util::stream::iter(keys.iter().map(|&key| Prepared::new(caller, peer, key)))
            .buffer_unordered(PREPARE_CONCURRENCY)
            .collect()
            .await;
    prepared.into_iter().collect()
}

/// Dials every prepared phone at once; records the setup times of the calls that went live
/// and why the others did not.
async fn dial_all(
    caller: &Caller,
    bridge: &Target,
    prepared: Vec<Prepared>,
    result: &mut LevelResult,
) -> anyhow::Result<Vec<LiveCall>> {
    let calls = result.calls;
    let (bridge_dial, self_dial) = (bridge.sample()?, bridge_process::sample(None)?);
    let dialled =
        futures_util::future::join_all(prepared.into_iter().map(|p| phone::dial(caller, p))).await;
    let (bridge_dialled, self_dialled) = (bridge.sample()?, bridge_process::sample(None)?);
    println!(
        "Level {calls}: dialling took {:.0} ms; bridge CPU {:.0} ms, harness CPU {:.0} ms.",
        (bridge_dialled.at - bridge_dial.at).as_secs_f64() * 1000.0,
        (bridge_dialled.cpu_seconds - bridge_dial.cpu_seconds) * 1000.0,
        (self_dialled.cpu_seconds - self_dial.cpu_seconds) * 1000.0,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut live = Vec::new();
    for outcome in dialled {
        match outcome {
            Dialled::Live(call) => {
                result.setup_ms.push(ms(call.setup));
                result.webhook_answered_ms.push(ms(call.webhook_answered));
                result.pre_accept_ms.push(ms(call.pre_accepted));
                live.push(call);
            }
            Dialled::Refused(reason) => {
                result.refused += 1;
                // Only a full bridge is expected to refuse; any other reason is a problem.
                if reason != "at_capacity" {
                    result.problems.push(format!("connect refused: {reason}"));
                }
            }
            Dialled::Failed(reason) => {
                result.failed += 1;
                result.problems.push(format!("dial: {reason}"));
            }
        }
    }
    result.admitted = live.len();
    Ok(live)
}

/// Holds the live calls for `hold`: the bridge's and the harness's CPU over it, the bridge's
/// RSS at its end, and how late the harness's own timers ran meanwhile.
async fn hold_calls(
    bridge: &Target,
    hold: Duration,
    calls: usize,
    result: &mut LevelResult,
) -> anyhow::Result<()> {
    let (bridge_start, self_start) = (bridge.sample()?, bridge_process::sample(None)?);
    let lag = progress_hold(hold, calls).await;
    result.harness_stalls = lag.stalls;
    result.harness_max_lag_ms = lag.max_ms;
    result.steal_ms = lag.steal_ms;
    result.steal_peak_ms = lag.steal_peak_ms;
    let (bridge_end, self_end) = (bridge.sample()?, bridge_process::sample(None)?);
    result.bridge_cores = bridge_end.cores_since(&bridge_start);
    result.harness_cores = self_end.cores_since(&self_start);
    result.rss_mib = bridge_end.rss_mib;
    Ok(())
}

/// Hangs every call up at once.
async fn hang_up_all(caller: &Caller, live: Vec<LiveCall>) -> Vec<Ended> {
    futures_util::future::join_all(live.into_iter().map(|call| async move {
        let key = call.key;
        let (stats, problem) = call.hang_up(caller).await;
        (key, stats, problem)
    }))
    .await
}

/// What the bridge's own counters say about the level: frames concealed on the uplink, pacer
/// ticks and frames sent late during the hold, and the p99 of the frames' send delay then.
fn count_bridge_side(
    result: &mut LevelResult,
    before: &Metrics,
    at_hold: &Metrics,
    after: &Metrics,
) {
    let grown = |name: &str, from: &Metrics| {
        (after.value(name, &[]) - from.value(name, &[])).max(0.0) as u64
    };
    result.uplink_concealed = grown("whatsapp_bridge_concealed_frames_total", before);
    result.late_pacer_ticks = grown("whatsapp_bridge_late_pacer_ticks_total", at_hold);
    result.frames_sent_late =
        (after.frames_sent_late() - at_hold.frames_sent_late()).max(0.0) as u64;
    let send_delay = "whatsapp_bridge_frame_send_delay_seconds";
    result.send_delay_p99_ms = quantile(
        &at_hold.buckets(send_delay),
        &after.buckets(send_delay),
        0.99,
    )
    .map(|seconds| seconds * 1000.0);
}

/// What a fleet's coordination did over the level: the events forwarded to a call's replica and
/// how long that took (the owners' histogram), and what Redis did.
fn count_fleet_side(
    result: &mut LevelResult,
    before: &Metrics,
    after: &Metrics,
    redis_before: RedisStats,
    redis_after: RedisStats,
) {
    let name = "whatsapp_bridge_forward_latency_seconds";
    let (earlier, later) = (before.buckets(name), after.buckets(name));
    let count = format!("{name}_count");
    result.forwarded = (after.value(&count, &[]) - before.value(&count, &[])).max(0.0) as u64;
    let ms = |q| quantile(&earlier, &later, q).map_or(f64::NAN, |s| s * 1000.0);
    result.forward_p50_ms = ms(0.5);
    result.forward_p99_ms = ms(0.99);
    result.redis_commands = redis_after.commands.saturating_sub(redis_before.commands);
    result.redis_cpu_ms = (redis_after.cpu_seconds - redis_before.cpu_seconds).max(0.0) * 1000.0;
}

/// Adds up what the phones and the AI double's probe saw: markers paired into latencies each
/// way, packets, losses, lateness and jitter.
fn tally_phones(
    harness: &Harness,
    ended: Vec<Ended>,
    hold_start: Instant,
    hung_up_at: Instant,
    result: &mut LevelResult,
) {
    let mut jitters = Vec::new();
    for (key, stats, problem) in ended {
        if let Some(problem) = problem {
            result.problems.push(format!("call {key}: {problem}"));
        }
        let marks = harness.probe.take(key);
        result.ai_samples_in += marks.samples_in;
        result.ai_samples_out += marks.samples_out;
        let counted = within(&stats.markers_sent, hold_start, hung_up_at, ROUND_TRIP_ROOM);
        let (uplink, up_missing) = pair_delays(&counted, &marks.heard, MATCH_WINDOW);
        let echoes = within(&marks.said, hold_start, hung_up_at, MATCH_WINDOW);
        let (downlink, down_missing) = pair_delays(&echoes, &stats.onsets_heard, MATCH_WINDOW);
        let (_, round_trips_missing) =
            pair_delays(&counted, &stats.onsets_heard, ROUND_TRIP_WINDOW);
        result.uplink_ms.extend(uplink);
        result.downlink_ms.extend(downlink);
        result.uplink_markers_lost += up_missing;
        result.downlink_markers_lost += down_missing;
        result.round_trips_missing += round_trips_missing;
        result.packets_sent += stats.packets_sent;
        result.packets_received += stats.packets_received;
        result.downlink_lost += stats.packets_lost;
        result.late += stats.late;
        result.bunched += stats.bunched;
        result.max_gap_ms = result.max_gap_ms.max(stats.max_gap_ms);
        jitters.push(stats.jitter_ms);
        if counted.is_empty() {
            result
                .problems
                .push(format!("call {key}: no marker was sent while it was up"));
        }
    }
    result.jitter_ms = report::max(&jitters).max(0.0);
}

/// The instants from `start` on that leave at least `room` before `end`.
fn within(times: &[Instant], start: Instant, end: Instant, room: Duration) -> Vec<Instant> {
    times
        .iter()
        .copied()
        .filter(|&t| t >= start && t + room <= end)
        .collect()
}

/// How late the harness's own runtime ran its timers during a hold, and how much CPU time the
/// hypervisor took from the machine meanwhile.
#[derive(Debug, Default)]
struct HarnessLag {
    /// Ticks that ran `HARNESS_STALL` or more late.
    stalls: u64,
    max_ms: f64,
    /// The most steal time one CPU had over the hold, and within one `STEAL_WINDOW`.
    steal_ms: f64,
    steal_peak_ms: f64,
}

/// Waits out the hold, printing progress, and measures how late the harness's runtime (the
/// thread its phones read their packets on) ran a 2 ms timer.
async fn progress_hold(hold: Duration, calls: usize) -> HarnessLag {
    let start = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    progress.tick().await;
    let mut lag_ticker = tokio::time::interval(HARNESS_LAG_TICK);
    lag_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut steal_ticker = tokio::time::interval(STEAL_WINDOW);
    let first_steal = Steal::read();
    let mut last_steal = first_steal.clone();
    let mut lag = HarnessLag::default();
    loop {
        let left = hold.saturating_sub(start.elapsed());
        if left.is_zero() {
            if let (Some(first), Some(now)) = (&first_steal, Steal::read()) {
                lag.steal_ms = now.max_since(first);
            }
            return lag;
        }
        tokio::select! {
            _ = steal_ticker.tick() => {
                let now = Steal::read();
                if let (Some(last), Some(now)) = (&last_steal, &now) {
                    lag.steal_peak_ms = lag.steal_peak_ms.max(now.max_since(last));
                }
                last_steal = now;
            }
            due = lag_ticker.tick() => {
                let late = Instant::now().saturating_duration_since(due.into_std());
                lag.max_ms = lag.max_ms.max(late.as_secs_f64() * 1e3);
                if late >= HARNESS_STALL {
                    lag.stalls += 1;
                }
            }
            _ = progress.tick() => println!(
                "  holding {calls} calls: {:.0} s of {:.0} s",
                start.elapsed().as_secs_f64(),
                hold.as_secs_f64()
            ),
            _ = tokio::time::sleep(left) => continue,
        }
    }
}
