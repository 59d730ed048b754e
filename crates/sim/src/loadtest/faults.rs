//! `loadtest --ai-faults N`: how soon a call's AI takes caller audio again after its session
//! drops mid-call, and what that costs the bridge (spec §10.4: a reconnect is a new session,
//! configured again and given the conversation again).
//!
//! The bridge runs as for the levels (a child process wired to the doubles, or `--bridge-url`);
//! `--fault-calls` phones dial and keep talking (the looping clip). Once every call's AI takes
//! audio, a quiet stretch of `--hold` measures what the calls alone cost the bridge. Then rounds:
//! every live AI session is closed at once (close 1011 and an abrupt drop, by turns), each one a
//! fault; the round waits up to [`RECOVERY_TIMEOUT`] for as many sessions opened after the fault
//! to take caller audio, pauses [`ROUND_PAUSE`], and the next round follows until N faults were
//! injected (the last round may overshoot: it closes every live session).
//!
//! Replacements are matched to faults by count: a round of K faults takes the first K sessions
//! opened after its fault instant to take audio, earliest first. A fault's recovery is its
//! replacement's first `input_audio_buffer.append` less the fault instant; a fault with none
//! within the timeout failed. The CPU per reconnect is the bridge's CPU time over the rounds
//! less the quiet stretch's rate over as long, divided by the faults; the replay is the
//! `session.update`s and `conversation.item.create`s a replacement received before its first
//! append. A bridge that ends a call when its AI drops shows every fault failed, and the run
//! stops early once no live session is left to close.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::phone::{self, Caller, Dialled, LiveCall};
use super::report::percentile;
use super::target::Target;
use super::{Doubles, Harness, IDLE_TIMEOUT, LoadtestOptions, level, start_target};
use crate::realtime_ai::{CloseKind, RealtimeAiDouble, RecordedEvent, SessionSnapshot};

/// How long a round waits for its faults' replacements; a fault not replaced by then failed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after each round before the next fault (part of the rounds' measured CPU).
const ROUND_PAUSE: Duration = Duration::from_secs(1);
/// How long the dialled calls' AI sessions get to start taking caller audio.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Between every call's AI taking audio and the quiet stretch, so the calls' set-up work is
/// over before the baseline is measured.
const SETTLE: Duration = Duration::from_secs(2);
/// A recovery p99 above this fails `--strict`.
const P99_LIMIT_MS: f64 = 1_000.0;
/// The client events that configure a new session and give it the conversation again.
const REPLAY_KINDS: [&str; 2] = ["session.update", "conversation.item.create"];

/// What a replacement session was sent before it took caller audio.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Replay {
    events: usize,
    /// The events re-serialised compactly (as recorded), about what came over the wire.
    bytes: usize,
}

impl Replay {
    /// The [`REPLAY_KINDS`] events among `events` handled before `until`.
    fn of(events: &[RecordedEvent], until: Instant) -> Replay {
        events
            .iter()
            .filter(|e| e.at < until && REPLAY_KINDS.contains(&e.kind.as_str()))
            .fold(Replay::default(), |sum, e| Replay {
                events: sum.events + 1,
                bytes: sum.bytes + e.json.to_string().len(),
            })
    }
}

/// A session opened after a fault that has taken caller audio.
#[derive(Debug, Clone, Copy)]
struct Replacement {
    first_append_at: Instant,
    replay: Replay,
}

impl Replacement {
    /// The sessions opened after `fault_at` that have taken caller audio, earliest first.
    fn after(fault_at: Instant, sessions: &[SessionSnapshot]) -> Vec<Replacement> {
        let mut found: Vec<Replacement> = sessions
            .iter()
            .filter(|s| s.opened_at > fault_at)
            .filter_map(|s| {
                let first_append_at = s.first_append_at?;
                Some(Replacement {
                    first_append_at,
                    replay: Replay::of(&s.client_events, first_append_at),
                })
            })
            .collect();
        found.sort_by_key(|r| r.first_append_at);
        found
    }
}

/// One fault and what became of it.
#[derive(Debug, Clone, Copy)]
struct Fault {
    /// 1-based.
    round: usize,
    close: CloseKind,
    /// From the fault to its replacement's first append; `None`: not replaced in time.
    recovery: Option<Duration>,
    /// What the replacement was sent first (zero when there was none).
    replay: Replay,
}

/// A round's `faults`, matched by count to `replacements` (earliest first): fault i gets the
/// i-th replacement if it took audio within `timeout` of the fault.
fn match_round(
    round: usize,
    close: CloseKind,
    fault_at: Instant,
    faults: usize,
    replacements: &[Replacement],
    timeout: Duration,
) -> Vec<Fault> {
    (0..faults)
        .map(|i| {
            let replaced = replacements
                .get(i)
                .map(|r| {
                    (
                        r.first_append_at.saturating_duration_since(fault_at),
                        r.replay,
                    )
                })
                .filter(|(recovery, _)| *recovery <= timeout);
            Fault {
                round,
                close,
                recovery: replaced.map(|(recovery, _)| recovery),
                replay: replaced.map(|(_, replay)| replay).unwrap_or_default(),
            }
        })
        .collect()
}

/// The bridge's CPU over the quiet stretch and over the fault rounds.
#[derive(Debug, Clone, Copy)]
struct CpuCost {
    /// Cores the calls used with no fault.
    quiet_cores: f64,
    quiet: Duration,
    rounds: Duration,
    rounds_cpu_seconds: f64,
}

impl CpuCost {
    /// What the calls alone would have used over the rounds (the quiet rate over as long).
    fn baseline_seconds(&self) -> f64 {
        self.quiet_cores * self.rounds.as_secs_f64()
    }

    /// The rounds' CPU beyond the baseline, per fault, in ms.
    fn per_fault_ms(&self, faults: usize) -> f64 {
        if faults == 0 {
            return f64::NAN;
        }
        (self.rounds_cpu_seconds - self.baseline_seconds()) * 1000.0 / faults as f64
    }
}

/// The run's figures.
#[derive(Debug)]
struct Summary {
    asked: usize,
    faults: Vec<Fault>,
    cpu: CpuCost,
    /// Calls the bridge ended as `ai_failed` during the rounds.
    calls_ended: u64,
}

impl Summary {
    fn recovery_ms(&self) -> Vec<f64> {
        self.faults
            .iter()
            .filter_map(|f| f.recovery)
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect()
    }

    fn recovered(&self) -> usize {
        self.faults.iter().filter(|f| f.recovery.is_some()).count()
    }

    fn failed(&self) -> usize {
        self.faults.len() - self.recovered()
    }

    /// Per reconnect; `None` when nothing reconnected (the CPU difference then measures calls
    /// ending, not reconnects).
    fn cpu_ms_per_reconnect(&self) -> Option<f64> {
        (self.recovered() > 0).then(|| self.cpu.per_fault_ms(self.faults.len()))
    }

    /// Average replay of the faults that recovered, as (events, bytes).
    fn replay(&self) -> Option<(f64, f64)> {
        let recovered: Vec<Replay> = self
            .faults
            .iter()
            .filter(|f| f.recovery.is_some())
            .map(|f| f.replay)
            .collect();
        let n = recovered.len() as f64;
        (!recovered.is_empty()).then(|| {
            (
                recovered.iter().map(|r| r.events).sum::<usize>() as f64 / n,
                recovered.iter().map(|r| r.bytes).sum::<usize>() as f64 / n,
            )
        })
    }

    /// Every fault injected and recovered, with a p99 within the limit.
    fn healthy(&self) -> bool {
        let p99 = percentile(&self.recovery_ms(), 99.0);
        self.faults.len() >= self.asked && self.failed() == 0 && p99 <= P99_LIMIT_MS
    }

    fn table(&self) -> String {
        let recovery = self.recovery_ms();
        let ms = |value: f64| {
            if value.is_nan() {
                "-".to_owned()
            } else {
                format!("{value:.0}")
            }
        };
        let (events, bytes) = self
            .replay()
            .map_or(("-".to_owned(), "-".to_owned()), |(events, bytes)| {
                (format!("{events:.1}"), format!("{bytes:.0}"))
            });
        let cpu = self
            .cpu_ms_per_reconnect()
            .map_or("-".to_owned(), |cpu| format!("{cpu:.1}"));
        let mut text = format!(
            "{:>6} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>16} {:>13} {:>12}\n",
            "faults",
            "recovered",
            "failed",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "CPU ms/reconnect",
            "replay events",
            "replay bytes"
        );
        text.push_str(&format!(
            "{:>6} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8} {:>16} {:>13} {:>12}\n",
            self.faults.len(),
            self.recovered(),
            self.failed(),
            ms(percentile(&recovery, 50.0)),
            ms(percentile(&recovery, 90.0)),
            ms(percentile(&recovery, 99.0)),
            ms(percentile(&recovery, 100.0)),
            cpu,
            events,
            bytes
        ));
        text
    }

    /// One row per fault.
    fn faults_csv(&self) -> String {
        let mut text =
            String::from("round,close,recovered,recovery_ms,replay_events,replay_bytes\n");
        for fault in &self.faults {
            text.push_str(&format!(
                "{},{},{},{},{},{}\n",
                fault.round,
                close_label(fault.close),
                fault.recovery.is_some(),
                fault.recovery.map_or(String::new(), |d| format!(
                    "{:.1}",
                    d.as_secs_f64() * 1000.0
                )),
                fault.replay.events,
                fault.replay.bytes
            ));
        }
        text
    }

    /// The table's figures as one row, with the CPU measurement behind them.
    fn summary_csv(&self) -> String {
        let recovery = self.recovery_ms();
        let figure = |value: Option<f64>| value.map_or(String::new(), |v| format!("{v:.1}"));
        let p = |q| figure(Some(percentile(&recovery, q)).filter(|v| !v.is_nan()));
        let replay = self.replay();
        format!(
            "asked,faults,recovered,failed,p50_ms,p90_ms,p99_ms,max_ms,cpu_ms_per_reconnect,\
             replay_events,replay_bytes,calls_ended_ai_failed,quiet_s,quiet_cores,rounds_s,rounds_cpu_s\n\
             {},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.4},{:.1},{:.3}\n",
            self.asked,
            self.faults.len(),
            self.recovered(),
            self.failed(),
            p(50.0),
            p(90.0),
            p(99.0),
            p(100.0),
            figure(self.cpu_ms_per_reconnect()),
            figure(replay.map(|r| r.0)),
            figure(replay.map(|r| r.1)),
            self.calls_ended,
            self.cpu.quiet.as_secs_f64(),
            self.cpu.quiet_cores,
            self.cpu.rounds.as_secs_f64(),
            self.cpu.rounds_cpu_seconds
        )
    }
}

fn close_label(close: CloseKind) -> String {
    match close {
        CloseKind::Abrupt => "abrupt".to_owned(),
        CloseKind::Code(code) => code.to_string(),
    }
}

fn close_description(close: CloseKind) -> String {
    match close {
        CloseKind::Abrupt => "abrupt drop".to_owned(),
        CloseKind::Code(code) => format!("close {code}"),
    }
}

pub async fn run(options: &LoadtestOptions, faults: usize) -> anyhow::Result<ExitCode> {
    let calls = options.fault_calls;
    anyhow::ensure!(calls > 0, "--fault-calls must be at least 1");
    let doubles = Doubles::start(options).await?;
    let bridge = start_target(options, &doubles, calls).await?;
    println!(
        "Bridge {}; {faults} AI faults over {calls} calls (close 1011 and abrupt drops by turns), \
         quiet stretch {:?}.",
        bridge.describe(),
        options.hold
    );
    let mut harness = Harness::new(options, &doubles, &bridge)?;
    let live = dial(&mut harness, calls).await?;
    let measured = measure(&doubles.ai, &bridge, live.len(), faults, options.hold).await;
    // Whatever was measured, the run ends cleanly: every call hung up, the bridge stopped.
    println!("Hanging up {} calls...", live.len());
    hang_up(&harness.caller, live).await;
    if !bridge.wait_idle(IDLE_TIMEOUT).await {
        println!("  problem: the bridge still had live calls after every hang-up");
    }
    harness.probe.clear();
    bridge.stop().await;
    doubles.ai.shutdown();
    doubles.graph.shutdown();
    let summary = measured?;
    report(&summary);
    std::fs::write(options.out.join("faults.csv"), summary.faults_csv())?;
    std::fs::write(
        options.out.join("faults_summary.csv"),
        summary.summary_csv(),
    )?;
    println!(
        "Wrote {} and {}.",
        options.out.join("faults.csv").display(),
        options.out.join("faults_summary.csv").display()
    );
    if options.strict && !summary.healthy() {
        println!(
            "FAILED: a fault was not recovered within {RECOVERY_TIMEOUT:?}, not every fault could \
             be injected, or the recovery p99 is over {P99_LIMIT_MS:.0} ms."
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Dials `calls` phones at once; returns those that went live (the others are reported).
async fn dial(harness: &mut Harness, calls: usize) -> anyhow::Result<Vec<LiveCall>> {
    println!("Dialling {calls} calls...");
    let prepared = level::prepare(harness, calls).await?;
    let caller = &harness.caller;
    let dialled =
        futures_util::future::join_all(prepared.into_iter().map(|p| phone::dial(caller, p))).await;
    let mut live = Vec::new();
    for outcome in dialled {
        match outcome {
            Dialled::Live(call) => live.push(call),
            Dialled::Refused(reason) => println!("  problem: connect refused: {reason}"),
            Dialled::Failed(reason) => println!("  problem: dial: {reason}"),
        }
    }
    println!("{} of {calls} calls live.", live.len());
    Ok(live)
}

/// The quiet stretch, then fault rounds until `asked` faults were injected (or no live session
/// is left to close).
async fn measure(
    ai: &RealtimeAiDouble,
    bridge: &Target,
    calls: usize,
    asked: usize,
    quiet: Duration,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(calls > 0, "no call went live");
    anyhow::ensure!(
        ai.wait_for_sessions_with_audio(calls, START_TIMEOUT).await,
        "the calls' AI sessions did not all take caller audio within {START_TIMEOUT:?}"
    );
    tokio::time::sleep(SETTLE).await; // the calls' set-up work ends, not synchronisation
    println!("Quiet stretch: {calls} calls, no fault, for {quiet:?}...");
    let quiet_start = bridge.sample()?;
    tokio::time::sleep(quiet).await; // the stretch being measured
    let quiet_end = bridge.sample()?;
    let quiet_cores = quiet_end.cores_since(&quiet_start);
    if ai.live_sessions() < calls {
        println!(
            "  problem: {} of {calls} AI sessions still live after the quiet stretch: its CPU \
             is not the {calls} calls' own",
            ai.live_sessions()
        );
    }
    println!(
        "Quiet stretch: bridge CPU {:.1} % of a core ({:.2} % per call).",
        quiet_cores * 100.0,
        quiet_cores * 100.0 / calls as f64
    );

    let ended = |metrics: &crate::bridge_process::Metrics| {
        metrics.value("whatsapp_bridge_calls_total", &[("outcome", "ai_failed")])
    };
    let ended_before = ended(&bridge.metrics().await?);
    let rounds_start = bridge.sample()?;
    let mut faults = Vec::new();
    let mut round = 0;
    while faults.len() < asked {
        let close = if round % 2 == 0 {
            CloseKind::Code(1011)
        } else {
            CloseKind::Abrupt
        };
        let fault_at = Instant::now();
        let closed = ai.close_all(close);
        if closed == 0 {
            println!(
                "No live AI session left to close after {} of {asked} faults: the bridge ended \
                 the calls.",
                faults.len()
            );
            break;
        }
        round += 1;
        let replacements = wait_for_replacements(ai, fault_at, closed).await;
        let outcome = match_round(
            round,
            close,
            fault_at,
            closed,
            &replacements,
            RECOVERY_TIMEOUT,
        );
        let back: Vec<Duration> = outcome.iter().filter_map(|f| f.recovery).collect();
        match back.iter().max() {
            Some(slowest) => println!(
                "Round {round} ({}): {closed} faults, {} back within {RECOVERY_TIMEOUT:?} (slowest \
                 {:.0} ms).",
                close_description(close),
                back.len(),
                slowest.as_secs_f64() * 1000.0
            ),
            None => println!(
                "Round {round} ({}): {closed} faults, none back within {RECOVERY_TIMEOUT:?}.",
                close_description(close)
            ),
        }
        faults.extend(outcome);
        tokio::time::sleep(ROUND_PAUSE).await; // the pause between rounds, by design
    }
    let rounds_end = bridge.sample()?;
    let calls_ended = (ended(&bridge.metrics().await?) - ended_before).max(0.0) as u64;
    Ok(Summary {
        asked,
        faults,
        cpu: CpuCost {
            quiet_cores,
            quiet: quiet_end.at - quiet_start.at,
            rounds: rounds_end.at - rounds_start.at,
            rounds_cpu_seconds: rounds_end.cpu_seconds - rounds_start.cpu_seconds,
        },
        calls_ended,
    })
}

/// Waits, until [`RECOVERY_TIMEOUT`] after the fault, for `faults` sessions opened after it to
/// take caller audio; returns those that have. Wakes only when a session takes audio for the
/// first time: snapshotting every session after every append would cost the harness a core.
async fn wait_for_replacements(
    ai: &RealtimeAiDouble,
    fault_at: Instant,
    faults: usize,
) -> Vec<Replacement> {
    let deadline = fault_at + RECOVERY_TIMEOUT;
    loop {
        // Read before the snapshot: a session taking audio after it then ends the wait below.
        let with_audio = ai.sessions_with_audio();
        let replacements = Replacement::after(fault_at, &ai.sessions());
        let left = deadline.saturating_duration_since(Instant::now());
        if replacements.len() >= faults
            || left.is_zero()
            || !ai.wait_for_sessions_with_audio(with_audio + 1, left).await
        {
            return replacements;
        }
    }
}

/// Hangs every call up at once; a terminate the bridge did not take is reported.
async fn hang_up(caller: &Caller, live: Vec<LiveCall>) {
    let ended = futures_util::future::join_all(live.into_iter().map(|call| async move {
        let key = call.key;
        let (_, problem) = call.hang_up(caller).await;
        (key, problem)
    }))
    .await;
    for (key, problem) in ended {
        if let Some(problem) = problem {
            println!("  problem: call {key}: {problem}");
        }
    }
}

fn report(summary: &Summary) {
    println!();
    print!("{}", summary.table());
    let cpu = &summary.cpu;
    println!(
        "Recovery: a new AI session's first input_audio_buffer.append after the fault; failed: none \
         within {RECOVERY_TIMEOUT:?}."
    );
    println!(
        "CPU: the bridge used {:.0} ms over {:.1} s of rounds; at the quiet stretch's rate ({:.1} % \
         of a core over {:.1} s) the calls alone would have used {:.0} ms.",
        cpu.rounds_cpu_seconds * 1000.0,
        cpu.rounds.as_secs_f64(),
        cpu.quiet_cores * 100.0,
        cpu.quiet.as_secs_f64(),
        cpu.baseline_seconds() * 1000.0
    );
    if summary.faults.len() < summary.asked {
        println!(
            "INCOMPLETE: {} of {} faults injected; no live AI session was left to close.",
            summary.faults.len(),
            summary.asked
        );
    }
    if summary.failed() > 0 {
        println!(
            "FAILED RECOVERIES: {} of {} faults had no new AI session taking caller audio within \
             {RECOVERY_TIMEOUT:?}; the bridge ended {} calls as ai_failed during the rounds.",
            summary.failed(),
            summary.faults.len(),
            summary.calls_ended
        );
        if summary.recovered() == 0 {
            println!("No reconnect happened, so there is no CPU or replay figure per reconnect.");
        } else {
            println!(
                "Calls that ended use no CPU afterwards, so the CPU per reconnect understates it."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime_ai::AiDoubleConfig;
    use futures_util::SinkExt as _;
    use serde_json::json;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// A call's AI leg as a bridge opens it: configure, give `items` history items, then send
    /// caller audio (one append).
    async fn open_leg(ai: &RealtimeAiDouble, items: usize) -> Socket {
        let mut request = format!("{}?model=gpt-realtime", ai.url())
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("authorization", HeaderValue::from_static("Bearer test-key"));
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgrade");
        let mut events = vec![json!({"type": "session.update", "session": {"type": "realtime"}})];
        events.extend((0..items).map(|n| {
            json!({"type": "conversation.item.create", "item": {"type": "message",
                   "role": "user", "content": [{"type": "input_text", "text": format!("turn {n}")}]}})
        }));
        events.push(json!({"type": "input_audio_buffer.append", "audio": "AAAAAA=="}));
        for event in events {
            ws.send(Message::text(event.to_string()))
                .await
                .expect("send");
        }
        ws
    }

    #[tokio::test]
    async fn sessions_that_take_audio_after_a_fault_are_its_replacements() {
        let ai = RealtimeAiDouble::start(AiDoubleConfig::default())
            .await
            .expect("double starts");
        let wait = Duration::from_secs(10);
        let _first = [open_leg(&ai, 0).await, open_leg(&ai, 0).await];
        assert!(ai.wait_for_sessions_with_audio(2, wait).await);

        let fault_at = Instant::now();
        assert_eq!(ai.close_all(CloseKind::Code(1011)), 2);
        let waiting = {
            let ai = ai.clone();
            tokio::spawn(async move { wait_for_replacements(&ai, fault_at, 2).await })
        };
        // Each call reconnects: a new session, configured, given two turns of history.
        let _second = [open_leg(&ai, 2).await, open_leg(&ai, 2).await];
        let replacements = waiting.await.expect("waiter");
        assert_eq!(replacements.len(), 2);

        let faults = match_round(
            1,
            CloseKind::Code(1011),
            fault_at,
            2,
            &replacements,
            RECOVERY_TIMEOUT,
        );
        assert!(faults.iter().all(|f| f.recovery.is_some()));
        assert!(faults.iter().all(|f| f.replay.events == 3), "{faults:?}");
        assert!(faults.iter().all(|f| f.replay.bytes > 100), "{faults:?}");
        ai.shutdown();
    }

    fn event(kind: &str, at: Instant, json: serde_json::Value) -> RecordedEvent {
        RecordedEvent {
            kind: kind.into(),
            json,
            at,
        }
    }

    #[test]
    fn the_replay_counts_session_updates_and_items_sent_before_the_first_append() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let update = json!({"type": "session.update", "session": {"type": "realtime"}});
        let item = json!({"type": "conversation.item.create", "item": {"type": "message"}});
        let events = [
            event("session.update", ms(1), update.clone()),
            event("conversation.item.create", ms(2), item.clone()),
            event("response.create", ms(3), json!({"type": "response.create"})),
            // After the first append (at 10 ms): not part of the replay.
            event("conversation.item.create", ms(11), item.clone()),
        ];
        let replay = Replay::of(&events, ms(10));
        assert_eq!(replay.events, 2);
        assert_eq!(
            replay.bytes,
            update.to_string().len() + item.to_string().len()
        );
    }

    #[test]
    fn faults_are_matched_to_the_earliest_replacements_and_late_or_missing_ones_fail() {
        let fault_at = Instant::now();
        let after = |ms| Replacement {
            first_append_at: fault_at + Duration::from_millis(ms),
            replay: Replay {
                events: 3,
                bytes: 900,
            },
        };
        let timeout = Duration::from_secs(10);
        // Three faults, two replacements: one in time, one too late.
        let replacements = [after(400), after(12_000)];
        let faults = match_round(2, CloseKind::Abrupt, fault_at, 3, &replacements, timeout);
        assert_eq!(faults.len(), 3);
        assert_eq!(faults[0].recovery, Some(Duration::from_millis(400)));
        assert_eq!(faults[0].replay.events, 3);
        assert_eq!(faults[1].recovery, None, "replaced after the timeout");
        assert_eq!(faults[1].replay, Replay::default());
        assert_eq!(faults[2].recovery, None, "never replaced");
        assert!(faults.iter().all(|f| f.round == 2));
    }

    fn summary(recoveries: &[Option<u64>], asked: usize) -> Summary {
        Summary {
            asked,
            faults: recoveries
                .iter()
                .map(|ms| Fault {
                    round: 1,
                    close: CloseKind::Code(1011),
                    recovery: ms.map(Duration::from_millis),
                    replay: Replay {
                        events: if ms.is_some() { 2 } else { 0 },
                        bytes: if ms.is_some() { 1_000 } else { 0 },
                    },
                })
                .collect(),
            cpu: CpuCost {
                quiet_cores: 0.1,
                quiet: Duration::from_secs(20),
                rounds: Duration::from_secs(4),
                rounds_cpu_seconds: 0.5,
            },
            calls_ended: 0,
        }
    }

    #[test]
    fn the_cost_per_reconnect_is_the_cpu_above_the_quiet_rate_per_fault() {
        let run = summary(&[Some(300), Some(500)], 2);
        // 500 ms used, 0.1 core × 4 s = 400 ms expected without faults: 50 ms each.
        let cpu = run.cpu_ms_per_reconnect().expect("reconnects happened");
        assert!((cpu - 50.0).abs() < 1e-9, "{cpu}");
        assert_eq!(run.replay(), Some((2.0, 1_000.0)));
        assert!(run.healthy());
    }

    #[test]
    fn failed_missing_or_slow_recoveries_are_unhealthy() {
        let none_back = summary(&[None, None], 2);
        assert_eq!(none_back.failed(), 2);
        assert_eq!(none_back.cpu_ms_per_reconnect(), None);
        assert_eq!(none_back.replay(), None);
        assert!(!none_back.healthy());
        assert!(none_back.table().contains('-'));

        assert!(!summary(&[Some(300), None], 2).healthy(), "one failed");
        assert!(
            !summary(&[Some(300)], 2).healthy(),
            "one fault not injected"
        );
        assert!(
            !summary(&[Some(300), Some(1_200)], 2).healthy(),
            "p99 over 1 s"
        );
    }

    #[test]
    fn the_csv_has_a_row_per_fault() {
        let run = summary(&[Some(250), None], 2);
        let csv = run.faults_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "1,1011,true,250.0,2,1000");
        assert_eq!(lines[2], "1,1011,false,,0,0");
        assert_eq!(run.summary_csv().lines().count(), 2);
    }
}
