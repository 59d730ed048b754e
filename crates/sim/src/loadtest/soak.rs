//! `loadtest --soak N`: N calls in randomised cycles against a bridge process, then whether the
//! idle bridge is back where it was. See [`cycles`] for the mix (storms, duplicates, terminates
//! first, connects whose media never connects, vanishing callers, short real WebRTC calls), drawn
//! from a seed that is printed so a run can be repeated (`--soak-seed`).
//!
//! A warm-up cycle of each kind runs first; once the bridge is idle and its task and fd counts
//! stop moving, it is observed (the baseline). After the last cycle the harness drops its
//! connections, waits (bounded) for the bridge to have no call, and then for nothing to be left
//! over or the settle timeout; the report compares that last observation with the baseline.
//!
//! The harness keeps its own footprint bounded at any N: at most `--soak-concurrency` cycles
//! run at once, and what the doubles record of a cycle's calls is dropped when it ends.

mod cycles;
mod leaks;
mod observe;
mod tally;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bridge::config;
use futures_util::StreamExt as _;

use super::{Doubles, Harness, IDLE_TIMEOUT, LoadtestOptions, start_target};
use crate::bridge_process::Bridge;
use cycles::{Cycle, Kind};
use leaks::{Leaks, Observation};
use observe::{Footprint, harness_footprint, observe};
use tally::{Report, Tally};

/// The run's calls are numbered from here; the warm-up's below it.
const FIRST_CALL: u64 = 1_000;
/// How long the bridge's task and fd counts get to stop moving before the baseline.
const BASELINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the idle bridge gets to give back what the cycles took: memory is handed back
/// after the allocator's decay time (about 10 s).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Between observations while waiting.
const OBSERVE_EVERY: Duration = Duration::from_millis(250);
/// Largest storm, for the bridge's room: every concurrent cycle may be a storm.
const STORM_MAX: usize = 8;

/// A `--soak-webrtc-share`: a fraction from 0 to 1.
pub(super) fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text:?} is not a share from 0 to 1 (e.g. 0.1)")),
    }
}

pub(super) async fn run(options: &LoadtestOptions, calls: u64) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        options.replicas == 1,
        "--soak measures one bridge process (no --replicas)"
    );
    let concurrency = options.soak_concurrency;
    anyhow::ensure!(concurrency > 0, "--soak-concurrency must be at least 1");
    let seed = options.soak_seed.unwrap_or_else(rand::random);
    let doubles = Doubles::start(options).await?;
    // The soak looks for what a call's life leaves behind, so every cycle must be admitted:
    // admission counts calls (`MAX_CONCURRENT_CALLS` is sized for the cycles) unless the run
    // says otherwise. Refusals by headroom have their own tests and the load levels.
    let mut options = options.clone();
    if !options
        .bridge_settings
        .iter()
        .any(|(key, _)| key == config::ADMISSION)
    {
        options
            .bridge_settings
            .push((config::ADMISSION.to_owned(), "count".to_owned()));
    }
    let options = &options;
    let target = start_target(options, &doubles, concurrency * STORM_MAX).await?;
    let graph_port = graph_port(&doubles.graph.base_url())?;
    println!(
        "Bridge {}; soak of {calls} calls, {concurrency} cycles at a time, {:.0} % over WebRTC, seed {seed} (--soak-seed {seed} repeats the mix).",
        target.describe(),
        options.soak_webrtc_share * 100.0
    );
    let mut harness = Harness::new(options, &doubles, &target)?;
    let bridge = &target.replicas[0];

    println!("Warm-up: one cycle of each kind...");
    let mut warm_up = Tally::default();
    run_cycles(
        &harness,
        &doubles,
        warm_up_plan(),
        concurrency,
        &mut warm_up,
    )
    .await;
    if warm_up.errors > 0 {
        anyhow::bail!("the warm-up failed:\n{}", warm_up_report(&warm_up));
    }
    harness.close_idle_connections();
    anyhow::ensure!(
        bridge.wait_idle(IDLE_TIMEOUT).await,
        "the bridge still had calls after the warm-up"
    );
    let baseline = steady_observation(bridge, graph_port).await?;
    let harness_before = harness_footprint()?;
    println!(
        "Baseline: {} tasks, {} fds, {:.1} MiB RSS, {} tombstones.",
        baseline.tasks, baseline.fds, baseline.rss_mib, baseline.tombstones
    );

    let plan = cycles::plan(calls, options.soak_webrtc_share, seed, FIRST_CALL);
    let started = Instant::now();
    let mut tally = Tally::default();
    run_cycles(&harness, &doubles, plan, concurrency, &mut tally).await;
    let elapsed = started.elapsed();
    println!(
        "Cycles done in {:.1} s; waiting for the bridge to settle...",
        elapsed.as_secs_f64()
    );

    harness.close_idle_connections();
    let idle = bridge.wait_idle(IDLE_TIMEOUT).await;
    let harness_after = harness_footprint()?;
    // Actions the bridge made after their cycle had ended (e.g. a pre_accept racing a storm's
    // terminate) are still in the record.
    let late = doubles.graph.actions();
    tally.add_actions(&late);
    let settle_start = Instant::now();
    let (after, leaks) = settle(bridge, graph_port, &baseline, calls).await?;
    let report = Report {
        seed,
        concurrency,
        tally: &tally,
        elapsed,
        idle,
        baseline,
        after,
        settled_in: settle_start.elapsed(),
        leaks,
        harness: (harness_before, harness_after),
    };
    println!();
    print!("{}", report.render());
    let csv = options.out.join("soak.csv");
    std::fs::write(&csv, report.csv())?;
    println!("Wrote {}.", csv.display());
    target.stop().await;
    doubles.ai.shutdown();
    doubles.graph.shutdown();

    let mut problems = leaks.problems();
    if !idle {
        problems.push("the bridge still had calls after every cycle had ended".into());
    }
    if tally.errors > 0 {
        problems.push(format!("{} errors", tally.errors));
    }
    if options.strict && !problems.is_empty() {
        println!("FAILED: {}.", problems.join("; "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One cycle of each kind (a small storm), below the run's call numbers.
fn warm_up_plan() -> Vec<Cycle> {
    Kind::ALL
        .iter()
        .enumerate()
        .map(|(n, kind)| Cycle::warm_up(*kind, n as u64 * 10))
        .collect()
}

fn warm_up_report(tally: &Tally) -> String {
    let report = Report {
        seed: 0,
        concurrency: 1,
        tally,
        elapsed: Duration::ZERO,
        idle: false,
        baseline: Observation::default(),
        after: Observation::default(),
        settled_in: Duration::ZERO,
        leaks: Leaks::default(),
        harness: (Footprint::default(), Footprint::default()),
    };
    report.render()
}

/// Runs `plan`, `concurrency` cycles at a time, counting into `tally`; what the doubles
/// recorded of each cycle is dropped as it ends.
async fn run_cycles(
    harness: &Harness,
    doubles: &Doubles,
    plan: Vec<Cycle>,
    concurrency: usize,
    tally: &mut Tally,
) {
    let total = plan.len();
    let (caller, peer) = (&harness.caller, &harness.peer);
    let mut outcomes = futures_util::stream::iter(plan)
        .map(|cycle| cycles::run(caller, peer, cycle))
        .buffer_unordered(concurrency);
    let mut done = 0;
    while let Some(outcome) = outcomes.next().await {
        for call_id in &outcome.call_ids {
            tally.add_call(outcome.kind, &doubles.graph.forget_call(call_id));
        }
        doubles.ai.forget_closed_sessions();
        harness.probe.clear();
        tally.add(outcome);
        done += 1;
        if total >= 100 && done % (total / 10) == 0 {
            println!(
                "  {done} of {total} cycles, {} calls, {} errors",
                tally.calls(),
                tally.errors
            );
        }
    }
}

/// Observes the idle bridge until its task and fd counts read the same twice in a row (its
/// connections to the harness closing), or [`BASELINE_TIMEOUT`]; returns the last reading.
async fn steady_observation(bridge: &Bridge, graph_port: u16) -> anyhow::Result<Observation> {
    let deadline = Instant::now() + BASELINE_TIMEOUT;
    let mut check = tokio::time::interval(OBSERVE_EVERY);
    check.tick().await;
    let mut last = observe(bridge, graph_port).await?;
    loop {
        check.tick().await;
        let now = observe(bridge, graph_port).await?;
        let steady = (now.tasks, now.fds) == (last.tasks, last.fds);
        last = now;
        if steady || Instant::now() >= deadline {
            return Ok(last);
        }
    }
}

/// Observes the idle bridge until nothing is left over against `baseline` (with `call_ids`
/// new call ids used since), or [`SETTLE_TIMEOUT`]; returns the last reading and its leaks.
async fn settle(
    bridge: &Bridge,
    graph_port: u16,
    baseline: &Observation,
    call_ids: u64,
) -> anyhow::Result<(Observation, Leaks)> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut check = tokio::time::interval(OBSERVE_EVERY);
    loop {
        check.tick().await;
        let after = observe(bridge, graph_port).await?;
        let leaks = Leaks::between(baseline, &after, call_ids);
        if leaks.none() || Instant::now() >= deadline {
            return Ok((after, leaks));
        }
    }
}

/// The port of the Graph API double's `http://127.0.0.1:PORT`.
fn graph_port(base_url: &str) -> anyhow::Result<u16> {
    base_url
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {base_url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_outside_zero_to_one_are_refused() {
        assert_eq!(parse_share("0.1"), Ok(0.1));
        assert_eq!(parse_share("1"), Ok(1.0));
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("-0.1").is_err());
        assert!(parse_share("a tenth").is_err());
        assert_eq!(graph_port("http://127.0.0.1:40123").ok(), Some(40123));
    }
}
