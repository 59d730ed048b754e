//! Admission by measured headroom: a host that reads full refuses a new call (`reject`,
//! `at_capacity`) though `MAX_CONCURRENT_CALLS` would allow it, and says so on `/health` and
//! `/metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::call::headroom::monitor::CpuClock;
use bridge::config;
use sim::phone::PhoneCall;
use sim::stack::{LocalStack, StackOptions};

use crate::support::*;

const ADMIN_TOKEN: &str = "test-admin-token";

/// A host whose every CPU reads busy all the time.
struct BusyCpus {
    since: Instant,
    cpus: f64,
}

impl CpuClock for BusyCpus {
    fn cpu_seconds(&self) -> Option<f64> {
        Some(self.since.elapsed().as_secs_f64() * self.cpus)
    }

    fn cpus(&self) -> f64 {
        self.cpus
    }
}

/// Polls `/health` until `done` holds (at most [`WAIT`]); the last report either way.
async fn health_when(
    stack: &LocalStack,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = health(stack).await;
        if done(&report) || Instant::now() >= deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_headroom_refuses_new_calls_at_capacity_and_health_shows_why() {
    let mut settings = no_busy_callbacks();
    settings.insert(config::ADMISSION.into(), "headroom".into());
    settings.insert(config::ADMIN_TOKEN.into(), ADMIN_TOKEN.into());
    let stack = LocalStack::start(StackOptions {
        max_calls: 10,
        settings,
        cpu_clock: Some(Arc::new(BusyCpus {
            since: Instant::now(),
            cpus: 2.0,
        })),
        ..StackOptions::default()
    })
    .await
    .expect("stack");

    // However busy the host reads, an idle bridge takes its first call.
    let first = answered_call(&stack, "headroom-first", 1).await;
    let report = health_when(&stack, |h| {
        h["headroom"]["cpu_used"]
            .as_f64()
            .is_some_and(|used| used > 1.9)
            && h["headroom"]["admitting"] == false
    })
    .await;
    let headroom = &report["headroom"];
    assert_eq!(headroom["admission"], "headroom", "{report}");
    assert_eq!(headroom["admitting"], false, "{report}");
    assert_eq!(headroom["cpus"], 2.0, "{report}");
    assert_eq!(headroom["cpu_target"], 0.7, "{report}");
    assert!(
        headroom["knee_calls"].is_null(),
        "full by CPU, but the frames never slipped: {report}"
    );
    assert_eq!(headroom["calls_it_can_take"], 0, "{report}");
    assert_eq!(headroom["latency_budget_ms"], 5.0, "{report}");
    assert!(headroom["call_cost"].as_f64().is_some_and(|c| c > 0.0));
    assert_eq!(report["active_calls"], 1);
    assert_eq!(report["max_calls"], 10, "the count stays the upper bound");
    assert_eq!(report["capacity"], 1, "what the replica can carry now");
    assert_eq!(report["capacity_used_percent"], 100.0);

    // A second caller is declined like at a full registry.
    let second = PhoneCall::dial(
        stack.phone_settings(),
        call_id("headroom-second"),
        user(2),
        "Caller",
    )
    .await
    .expect("dial");
    assert_eq!(second.reply.status, 200, "{}", second.reply.body);
    assert_eq!(second.reply.refusal().as_deref(), Some("at_capacity"));
    assert!(
        stack
            .graph
            .wait_for(&second.call_id, "reject", WAIT)
            .await
            .is_some(),
        "the refused call is rejected at the Graph API"
    );
    assert!(
        stack
            .graph
            .actions_for(&second.call_id)
            .iter()
            .all(|a| a.action == "reject")
    );

    // An operator's call finds no room either.
    let placed = stack
        .http()
        .post(format!("{}/calls", stack.bridge_url))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "to": user(3).as_str(), "purpose": "a callback" }))
        .send()
        .await
        .expect("POST /calls");
    assert_eq!(placed.status().as_u16(), 503);
    let body: serde_json::Value = placed.json().await.expect("JSON");
    assert_eq!(body["error"], "at_capacity");

    let metrics = stack.metrics.render();
    for line in [
        "whatsapp_bridge_call_rejections_total{reason=\"at_capacity\"} 1",
        "whatsapp_bridge_headroom_calls 0",
        "whatsapp_bridge_headroom_admitting 0",
        "whatsapp_bridge_headroom_cpus 2",
        "whatsapp_bridge_active_calls 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    first.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    // Idle again: the next caller is admitted.
    let again = answered_call(&stack, "headroom-again", 4).await;
    again.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    tokio::time::timeout(Duration::from_secs(20), stack.stop())
        .await
        .expect("stops")
        .expect("stop");
}
