//! The overflow test: a second bridge with room for one call, which one phone takes; then
//! signed `connect`s for new calls as fast as they are answered, each of which must be refused,
//! and afterwards the one slot must be free again.

use std::time::Instant;

use bridge::ids::{CallId, PhoneNumber};
use bridge::media::codec::EncoderSettings;

use super::phone::{self, Caller, Dialled, Prepared};
use super::report::OverflowResult;
use super::{Harness, IDLE_TIMEOUT, LoadtestOptions};
use crate::bridge_process::{Bridge, Launch};
use crate::graph_double::GraphDouble;
use crate::realtime_ai::RealtimeAiDouble;

/// Runs the overflow test against a bridge of its own.
pub(super) async fn run_overflow(
    harness: &mut Harness,
    graph: &GraphDouble,
    ai: &RealtimeAiDouble,
    options: &LoadtestOptions,
    encoder: EncoderSettings,
) -> anyhow::Result<OverflowResult> {
    let bridge = Bridge::start(Launch {
        graph_url: graph.base_url(),
        ai_url: ai.url(),
        app_secret: &options.app_secret,
        max_calls: 1,
        encoder,
        log: &options.out.join("bridge-overflow.log"),
        cpus: options.bridge_cpus.as_deref(),
        exe: None,
        settings: Vec::new(),
    })
    .await?;
    println!("  overflow bridge {} (pid {})", bridge.url, bridge.pid);
    let mut caller = harness.caller.clone();
    caller.bridge_urls = vec![bridge.url.clone()];
    let mut result = OverflowResult::default();
    let Dialled::Live(occupant) = dial_one(harness, &caller).await? else {
        anyhow::bail!("the overflow bridge did not take its one call");
    };
    let start_sample = bridge.sample()?;
    flood(&caller, options, &mut result).await;
    result.bridge_cores = bridge.sample()?.cores_since(&start_sample);
    if result.other > 0 {
        result
            .problems
            .push(format!("{} connects were not refused", result.other));
    }
    let (stats, problem) = occupant.hang_up(&caller).await;
    result.problems.extend(problem);
    if stats.packets_received == 0 {
        result
            .problems
            .push("the call in progress received no audio".into());
    }
    // The one permit must be free again: a new call is taken.
    let idle = bridge.wait_idle(IDLE_TIMEOUT).await;
    let again = dial_one(harness, &caller).await?;
    result.permits_intact = idle && matches!(again, Dialled::Live(_));
    if let Dialled::Live(call) = again {
        let _ = call.hang_up(&caller).await;
    }
    if !result.permits_intact {
        result
            .problems
            .push("after the flood the bridge did not take a new call".into());
    }
    bridge.wait_idle(IDLE_TIMEOUT).await;
    bridge.stop().await;
    harness.probe.clear();
    Ok(result)
}

/// Dials one call with a new phone.
async fn dial_one(harness: &mut Harness, caller: &Caller) -> anyhow::Result<Dialled> {
    let key = harness.next_key;
    harness.next_key += 1;
    let prepared = Prepared::new(caller, &harness.peer, key).await?;
    Ok(phone::dial(caller, prepared).await)
}

/// Posts signed `connect`s for new calls from `--overflow-concurrency` workers until the
/// test's time is up, counting how each was answered.
async fn flood(caller: &Caller, options: &LoadtestOptions, result: &mut OverflowResult) {
    let template = overflow_body(caller);
    let start = Instant::now();
    let deadline = start + options.overflow;
    let workers = (0..options.overflow_concurrency.max(1)).map(|worker| {
        let template = &template;
        async move {
            let (mut sent, mut refused, mut other) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let body = template.replace("wacid.OVERFLOW", &format!("wacid.OF{worker}-{sent}"));
                let reply = caller.post(body).await;
                sent += 1;
                match reply.map(|reply| reply.refusal()) {
                    Ok(Some(_)) => refused += 1,
                    _ => other += 1,
                }
            }
            (sent, refused, other)
        }
    });
    for (sent, refused, other) in futures_util::future::join_all(workers).await {
        result.sent += sent;
        result.refused += refused;
        result.other += other;
    }
    result.seconds = start.elapsed().as_secs_f64();
}

/// A signed-able `connect` for a call id `wacid.OVERFLOW` (replaced per request). The bridge
/// refuses at capacity before it looks at the SDP, but the body is a complete, valid connect
/// all the same: Meta's offer, its candidates on a dead loopback port.
fn overflow_body(caller: &Caller) -> String {
    crate::webhooks::connect_offer(
        &caller.line,
        &CallId::new("wacid.OVERFLOW"),
        &PhoneNumber::new("447700000001"),
        "Overflow",
        &testkit::fixtures::loopback_offer(),
        crate::phone::unix_now(),
    )
}
