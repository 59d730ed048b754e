//! The call cycles a soak run mixes, the seeded plan of them, and how one is run against the
//! bridge. A cycle is one call id's life; a storm is several at once and counts as that many.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::super::phone::{self, Caller, Dialled, Prepared};
use crate::phone::unix_now;
use crate::webhooks;
use bridge::ids::{CallId, PhoneNumber};
use bridge::media::peer::PeerSettings;

/// Calls in one connect/terminate storm (fewer when the run has fewer left).
const STORM_CALLS: std::ops::RangeInclusive<u64> = 4..=8;
/// Of the cycles without WebRTC, the percentage that are storms.
const STORM_PERCENT: u32 = 30;
/// How long a WebRTC call is held before its caller hangs up or vanishes.
const HOLD_MS: std::ops::RangeInclusive<u64> = 300..=1_500;
/// How long the bridge gets to end a call on its own (one whose media never connects, one
/// whose caller vanished): the answer deadline (20 s) with room to spare.
const BRIDGE_ENDS_WITHIN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Many connects at once (media never connects), then their terminates.
    Storm,
    /// The same connect delivered twice, then a terminate.
    Duplicate,
    /// The terminate arrives before the connect, which must then change nothing.
    TerminateFirst,
    /// A connect whose media never connects and no terminate: the bridge ends it itself.
    NoMedia,
    /// A real WebRTC call whose caller vanishes (media stops, no terminate).
    Vanish,
    /// A real WebRTC call, short, hung up normally.
    Short,
}

impl Kind {
    pub(super) const ALL: [Kind; 6] = [
        Kind::Storm,
        Kind::Duplicate,
        Kind::TerminateFirst,
        Kind::NoMedia,
        Kind::Vanish,
        Kind::Short,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::Storm => "storm",
            Kind::Duplicate => "duplicate",
            Kind::TerminateFirst => "terminate_first",
            Kind::NoMedia => "no_media",
            Kind::Vanish => "vanish",
            Kind::Short => "short_webrtc",
        }
    }
}

/// One planned cycle.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cycle {
    pub(super) kind: Kind,
    /// Index of its first call in the run (call ids and callers derive from it).
    pub(super) first: u64,
    /// Calls it makes: one, or a storm's.
    pub(super) calls: u64,
    /// How long a WebRTC call is held.
    hold: Duration,
}

impl Cycle {
    /// A warm-up cycle of `kind` from call `first` (a storm of two, the shortest hold).
    pub(super) fn warm_up(kind: Kind, first: u64) -> Cycle {
        Cycle {
            kind,
            first,
            calls: if kind == Kind::Storm { 2 } else { 1 },
            hold: Duration::from_millis(*HOLD_MS.start()),
        }
    }
}

/// `calls` calls in cycles, drawn from `seed`: a `webrtc_share` of them real WebRTC calls
/// (one in five of which vanish), the rest spread over storms, duplicates, terminates first
/// and connects without media.
pub(super) fn plan(calls: u64, webrtc_share: f64, seed: u64, first: u64) -> Vec<Cycle> {
    // A cycle without WebRTC makes 30 % × 6 (a storm's mean) + 70 % × 1 = 2.5 calls on
    // average, so WebRTC cycles are drawn more often than their share of the calls.
    let storms = f64::from(STORM_PERCENT) / 100.0;
    let storm_mean = (*STORM_CALLS.start() + *STORM_CALLS.end()) as f64 / 2.0;
    let other_calls = storms * storm_mean + (1.0 - storms);
    let webrtc_cycles = webrtc_share * other_calls / (1.0 + webrtc_share * (other_calls - 1.0));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cycles = Vec::new();
    let mut next = first;
    let end = first + calls;
    while next < end {
        let kind = if rng.random_bool(webrtc_cycles) {
            if rng.random_bool(0.2) {
                Kind::Vanish
            } else {
                Kind::Short
            }
        } else {
            match rng.random_range(0..100) {
                n if n < STORM_PERCENT => Kind::Storm,
                n if n < STORM_PERCENT + 25 => Kind::Duplicate,
                n if n < STORM_PERCENT + 50 => Kind::TerminateFirst,
                _ => Kind::NoMedia,
            }
        };
        let size = match kind {
            Kind::Storm => rng.random_range(STORM_CALLS).min(end - next),
            _ => 1,
        };
        cycles.push(Cycle {
            kind,
            first: next,
            calls: size,
            hold: Duration::from_millis(rng.random_range(HOLD_MS)),
        });
        next += size;
    }
    cycles
}

/// What one cycle saw.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) kind: Kind,
    pub(super) calls: u64,
    /// The call ids it used (the Graph double's record of each is dropped afterwards).
    pub(super) call_ids: Vec<CallId>,
    pub(super) errors: Vec<String>,
}

/// Runs `cycle` with the phones of `caller`.
pub(super) async fn run(caller: &Caller, peer: &PeerSettings, cycle: Cycle) -> Outcome {
    let mut outcome = Outcome {
        kind: cycle.kind,
        calls: cycle.calls,
        call_ids: Vec::new(),
        errors: Vec::new(),
    };
    let result = match cycle.kind {
        Kind::Storm => storm(caller, &cycle, &mut outcome).await,
        Kind::Duplicate => duplicate(caller, &cycle, &mut outcome).await,
        Kind::TerminateFirst => terminate_first(caller, &cycle, &mut outcome).await,
        Kind::NoMedia => no_media(caller, &cycle, &mut outcome).await,
        Kind::Vanish | Kind::Short => webrtc(caller, peer, &cycle, &mut outcome).await,
    };
    if let Err(err) = result {
        outcome
            .errors
            .push(format!("{}: {err:#}", cycle.kind.label()));
    }
    outcome
}

/// The call id and caller of the run's call `index` (a cycle without a phone double).
fn ids(index: u64) -> (CallId, PhoneNumber) {
    (
        CallId::new(format!("wacid.SOAK{index}")),
        PhoneNumber::new(format!("4478{index:08}")),
    )
}

/// Meta's `connect` for a call whose media can never connect (its candidates are a dead
/// loopback port).
fn dead_connect(caller: &Caller, call_id: &CallId, user: &PhoneNumber) -> String {
    webhooks::connect_offer(
        &caller.line,
        call_id,
        user,
        "Soak",
        &testkit::fixtures::loopback_offer(),
        unix_now(),
    )
}

/// Posts a `connect`, which must be answered 200 without a refusal.
async fn connect(caller: &Caller, call_id: &CallId, user: &PhoneNumber) -> anyhow::Result<()> {
    let reply = caller.post(dead_connect(caller, call_id, user)).await?;
    anyhow::ensure!(
        reply.status == 200 && reply.refusal().is_none(),
        "connect {call_id} answered {} {}",
        reply.status,
        reply.body
    );
    Ok(())
}

/// Posts the user's `terminate`, which must be answered 2xx.
async fn terminate(caller: &Caller, call_id: &CallId, user: &PhoneNumber) -> anyhow::Result<()> {
    let body = webhooks::terminate(&caller.line, call_id, user, unix_now(), None, false);
    let reply = caller.post(body).await?;
    anyhow::ensure!(
        (200..300).contains(&reply.status),
        "terminate {call_id} answered {}",
        reply.status
    );
    Ok(())
}

async fn storm(caller: &Caller, cycle: &Cycle, outcome: &mut Outcome) -> anyhow::Result<()> {
    let calls: Vec<_> = (cycle.first..cycle.first + cycle.calls).map(ids).collect();
    outcome
        .call_ids
        .extend(calls.iter().map(|(id, _)| id.clone()));
    let connects = calls.iter().map(|(id, user)| connect(caller, id, user));
    let terminates = calls.iter().map(|(id, user)| terminate(caller, id, user));
    for result in futures_util::future::join_all(connects).await {
        result?;
    }
    for result in futures_util::future::join_all(terminates).await {
        result?;
    }
    Ok(())
}

async fn duplicate(caller: &Caller, cycle: &Cycle, outcome: &mut Outcome) -> anyhow::Result<()> {
    let (call_id, user) = ids(cycle.first);
    outcome.call_ids.push(call_id.clone());
    connect(caller, &call_id, &user).await?;
    connect(caller, &call_id, &user).await?;
    terminate(caller, &call_id, &user).await
}

async fn terminate_first(
    caller: &Caller,
    cycle: &Cycle,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let (call_id, user) = ids(cycle.first);
    outcome.call_ids.push(call_id.clone());
    terminate(caller, &call_id, &user).await?;
    // The bridge remembers the ended id: the late connect is acknowledged and ignored (the
    // outcomes then show no pre_accept for it).
    connect(caller, &call_id, &user).await
}

async fn no_media(caller: &Caller, cycle: &Cycle, outcome: &mut Outcome) -> anyhow::Result<()> {
    let (call_id, user) = ids(cycle.first);
    outcome.call_ids.push(call_id.clone());
    connect(caller, &call_id, &user).await?;
    bridge_ends(caller, &call_id).await
}

/// Waits (bounded) for the bridge to end the call itself: its `reject` or `terminate` at the
/// Graph double.
async fn bridge_ends(caller: &Caller, call_id: &CallId) -> anyhow::Result<()> {
    let graph = caller.graph.double();
    let ended = tokio::select! {
        found = graph.wait_for(call_id, "reject", BRIDGE_ENDS_WITHIN) => found,
        found = graph.wait_for(call_id, "terminate", BRIDGE_ENDS_WITHIN) => found,
    };
    anyhow::ensure!(
        ended.is_some(),
        "the bridge did not end {call_id} within {BRIDGE_ENDS_WITHIN:?}"
    );
    Ok(())
}

async fn webrtc(
    caller: &Caller,
    peer: &PeerSettings,
    cycle: &Cycle,
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let prepared = Prepared::new(caller, peer, cycle.first).await?;
    let call = match phone::dial(caller, prepared).await {
        Dialled::Live(call) => call,
        Dialled::Refused(reason) => anyhow::bail!("refused: {reason}"),
        Dialled::Failed(reason) => anyhow::bail!("dial: {reason}"),
    };
    outcome.call_ids.push(call.call_id.clone());
    // The call's length, not a wait for something to happen.
    tokio::time::sleep(cycle.hold).await;
    if cycle.kind == Kind::Vanish {
        let call_id = call.call_id.clone();
        call.vanish().await;
        bridge_ends(caller, &call_id).await
    } else {
        let (_, problem) = call.hang_up(caller).await;
        problem.map_or(Ok(()), |problem| Err(anyhow::anyhow!(problem)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_reproducible_from_its_seed_and_counts_every_call_once() {
        let plan_a = plan(2_000, 0.1, 42, 100);
        let plan_b = plan(2_000, 0.1, 42, 100);
        let summary = |p: &[Cycle]| {
            p.iter()
                .map(|c| (c.kind, c.first, c.calls, c.hold))
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&plan_a), summary(&plan_b));
        assert_ne!(summary(&plan_a), summary(&plan(2_000, 0.1, 43, 100)));
        // Calls 100..2100, each in exactly one cycle, in order.
        let mut next = 100;
        for cycle in &plan_a {
            assert_eq!(cycle.first, next);
            next += cycle.calls;
        }
        assert_eq!(next, 2_100);
        for kind in Kind::ALL {
            assert!(plan_a.iter().any(|c| c.kind == kind), "{kind:?} missing");
        }
        let webrtc: u64 = plan_a
            .iter()
            .filter(|c| matches!(c.kind, Kind::Short | Kind::Vanish))
            .map(|c| c.calls)
            .sum();
        // A tenth of the calls, give or take the draw.
        assert!((150..250).contains(&webrtc), "{webrtc} WebRTC calls");
        assert!(
            plan(500, 0.0, 1, 0)
                .iter()
                .all(|c| !matches!(c.kind, Kind::Short | Kind::Vanish))
        );
    }
}
