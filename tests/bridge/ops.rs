//! Running it in production: health and readiness, the admin API, metrics as Prometheus reads
//! them, Graph API retries, and phone numbers kept out of logs.

use std::collections::HashMap;

use sim::phone::PhoneCall;
use sim::stack::{LocalStack, StackOptions};

use crate::support::*;

const ADMIN_TOKEN: &str = "test-admin-token";

async fn stack_with(max_calls: usize, settings: &[(&str, &str)]) -> LocalStack {
    LocalStack::start(StackOptions {
        max_calls,
        settings: no_busy_callbacks()
            .into_iter()
            .chain(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    })
    .await
    .expect("stack")
}

async fn get(stack: &LocalStack, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = stack.http().get(format!("{}{path}", stack.bridge_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    (
        response.status().as_u16(),
        response.text().await.expect("body"),
    )
}

/// How many observations a histogram holds (its largest bucket count).
fn histogram_count(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .unwrap_or_else(|| panic!("no histogram {name}"));
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max)
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_process_and_a_full_replica_stays_ready_for_webhooks() {
    let stack = stack_with(1, &[]).await;
    let report = health(&stack).await;
    assert_eq!(report["status"], "healthy");
    assert_eq!(report["max_calls"], 1);
    assert_eq!(report["capacity"], 1);
    assert_eq!(
        report["headroom"]["admission"], "count",
        "the headroom is shown, not enforced: {report}"
    );
    assert!(report["uptime_seconds"].is_u64());
    assert_eq!(report["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&stack, "/ready", None).await.0, 200);

    // Full: still ready, since the terminates of its own calls must reach it; it refuses new
    // calls itself.
    let call = answered_call(&stack, "ready", 1).await;
    let (status, body) = get(&stack, "/ready", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(health(&stack).await["capacity_used_percent"], 100.0);
    assert!(
        health(&stack).await.get("cluster").is_none(),
        "one process: no fleet"
    );
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    assert_eq!(get(&stack, "/ready", None).await.0, 200);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_and_hangs_up_calls_with_the_token_only() {
    let stack = stack_with(5, &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let call = answered_call(&stack, "admin", 2).await;

    for token in [None, Some("wrong")] {
        assert_eq!(get(&stack, "/calls", token).await.0, 401);
    }
    let (status, body) = get(&stack, "/calls", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let calls = listed["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["id"], call.call_id.as_str());
    assert_eq!(calls[0]["direction"], "inbound");
    assert_eq!(calls[0]["state"], "active");
    assert_eq!(calls[0]["phone"], user(2).masked());
    assert!(
        !body.contains(user(2).as_str()),
        "full number listed: {body}"
    );

    let url = format!("{}/calls/{}", stack.bridge_url, call.call_id);
    let unauthorized = stack.http().delete(&url).send().await.expect("DELETE");
    assert_eq!(unauthorized.status().as_u16(), 401);
    assert_eq!(stack.registry.active_calls(), 1);
    let deleted = stack
        .http()
        .delete(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(deleted.status().as_u16(), 202);
    assert!(
        stack
            .graph
            .wait_for(&call.call_id, "terminate", WAIT)
            .await
            .is_some()
    );
    assert!(stack.wait_idle(WAIT).await);
    let missing = stack
        .http()
        .delete(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(missing.status().as_u16(), 404);
    stack.stop().await.expect("stop");

    // No token configured: the admin routes do not exist.
    let stack = stack_with(5, &[]).await;
    assert_eq!(get(&stack, "/calls", Some(ADMIN_TOKEN)).await.0, 404);
    stack.stop().await.expect("stop");
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("Prometheus text parses")
}

fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_their_own_port_count_exactly_what_happened() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let stack = stack_with(3, &[("METRICS_PORT", metrics_port.as_str())]).await;
    // Five callers at once: three answered, two refused.
    let dials = (0..5u32).map(|n| {
        let settings = stack.phone_settings();
        async move {
            PhoneCall::dial(settings, call_id(&format!("m{n}")), user(50 + n), "Caller")
                .await
                .expect("dial")
        }
    });
    let calls = futures_util::future::join_all(dials).await;
    let (refused, live): (Vec<_>, Vec<_>) =
        calls.into_iter().partition(|c| c.reply.refusal().is_some());
    assert_eq!((live.len(), refused.len()), (3, 2));
    for call in &live {
        assert!(
            stack
                .graph
                .wait_for(&call.call_id, "accept", WAIT)
                .await
                .is_some()
        );
        // Media starts once the bridge has read the `accept` response, so the first packet at
        // the phone means that attempt is counted (hanging up earlier would cancel it).
        assert!(call.wait_until(WAIT, |r| r.first_rtp_at.is_some()).await);
    }
    for call in live {
        call.hang_up().await.expect("hang up");
    }
    assert!(stack.wait_idle(WAIT).await);
    for call in &refused {
        assert!(
            stack
                .graph
                .wait_for(&call.call_id, "reject", WAIT)
                .await
                .is_some()
        );
    }

    // /metrics moved to the metrics port.
    assert_eq!(get(&stack, "/metrics", None).await.0, 404);
    let text = stack
        .http()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let scrape = scrape(&text);
    let calls = [("direction", "inbound"), ("outcome", "remote_terminated")];
    assert_eq!(counter(&scrape, "whatsapp_bridge_calls_total", &calls), 3.0);
    let at_capacity = [("reason", "at_capacity")];
    assert_eq!(
        counter(
            &scrape,
            "whatsapp_bridge_call_rejections_total",
            &at_capacity
        ),
        2.0
    );
    assert_eq!(counter(&scrape, "whatsapp_bridge_active_calls", &[]), 0.0);
    assert_eq!(counter(&scrape, "whatsapp_bridge_max_calls", &[]), 3.0);
    // The registry's maps, read at the scrape: no call or busy caller left, and a tombstone for
    // each of the five call ids (three ended, two refused).
    let entries = |map| counter(&scrape, "whatsapp_bridge_registry_entries", &[("map", map)]);
    assert_eq!(entries("calls"), 0.0);
    assert_eq!(entries("phones"), 0.0);
    assert_eq!(entries("reserved"), 0.0);
    assert_eq!(entries("tombstones"), 5.0);
    assert!(counter(&scrape, "whatsapp_bridge_runtime_alive_tasks", &[]) > 0.0);
    let accepted = [("action", "accept"), ("status", "200")];
    assert_eq!(
        counter(&scrape, "whatsapp_bridge_graph_requests_total", &accepted),
        3.0
    );
    let rejected = [("action", "reject"), ("status", "200")];
    assert_eq!(
        counter(&scrape, "whatsapp_bridge_graph_requests_total", &rejected),
        2.0
    );
    assert_eq!(
        counter(
            &scrape,
            "whatsapp_bridge_webhook_requests_total",
            &[("result", "at_capacity")]
        ),
        2.0
    );
    let setups = histogram_count(&scrape, "whatsapp_bridge_call_setup_seconds");
    assert_eq!(setups, 3.0, "three setups observed");
    let frames_out = counter(
        &scrape,
        "whatsapp_bridge_audio_frames_total",
        &[("direction", "out")],
    );
    assert!(frames_out > 0.0);
    // One send delay per pacer poll that sent frames (a late poll sends up to three).
    let delays = histogram_count(&scrape, "whatsapp_bridge_frame_send_delay_seconds");
    assert!(
        delays >= frames_out / 3.0 && delays <= frames_out,
        "{delays} delays for {frames_out} frames"
    );
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_errors_are_retried_when_transient_and_end_the_call_when_not() {
    let stack = stack_with(5, &[]).await;
    // 503 twice, then success: the call is accepted.
    stack.graph.fail_next("accept", 2, 503, 1);
    let call = answered_call(&stack, "retry", 60).await;
    let attempts: Vec<u16> = stack
        .graph
        .actions_for(&call.call_id)
        .iter()
        .filter(|a| a.action == "accept")
        .map(|a| a.status)
        .collect();
    assert_eq!(attempts, [503, 503, 200]);
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);

    // 400: no retry, the call ends and its slot is released.
    stack.graph.fail_next("pre_accept", 1, 400, 100);
    let failing =
        PhoneCall::dial(stack.phone_settings(), call_id("fail"), user(61), "Caller").await;
    let failing_id = match failing {
        Ok(call) => call.call_id.clone(),
        // The phone gives up when no successful pre_accept brings an answer.
        Err(_) => stack
            .graph
            .actions()
            .iter()
            .rev()
            .find(|a| a.action == "pre_accept")
            .and_then(|a| a.call_id.clone())
            .expect("a pre_accept was attempted"),
    };
    assert!(
        stack
            .graph
            .wait_for(&failing_id, "reject", WAIT)
            .await
            .is_some()
    );
    assert!(stack.wait_idle(WAIT).await);
    let pre_accepts = stack
        .graph
        .actions_for(&failing_id)
        .iter()
        .filter(|a| a.action == "pre_accept")
        .count();
    assert_eq!(pre_accepts, 1, "a 4xx is never retried");
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains(
            "whatsapp_bridge_calls_total{direction=\"inbound\",outcome=\"graph_failed\"} 1"
        )
    );
    assert!(
        metrics
            .contains("whatsapp_bridge_graph_requests_total{action=\"accept\",status=\"503\"} 2")
    );
    let again = answered_call(&stack, "after-fail", 62).await;
    again.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_full_number_never_reaches_the_logs() {
    let logs = captured_logs();
    let stack = stack_with(1, &[]).await;
    let number = user(77);
    let call = answered_call(&stack, "pii", 77).await;
    // A second call from the same number is refused and logged too.
    let busy = PhoneCall::dial(
        stack.phone_settings(),
        call_id("pii2"),
        number.clone(),
        "Caller",
    )
    .await
    .expect("dial");
    assert_eq!(busy.reply.refusal().as_deref(), Some("caller_busy"));
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");

    let text = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(text.contains("call admitted"), "logs were captured");
    assert!(
        text.contains(&number.masked()),
        "the masked number is logged"
    );
    assert!(
        !text.contains(number.as_str()),
        "the full number {} appears in the logs",
        number.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_deletes_everything_of_one_caller_and_nothing_of_another() {
    let stack = stack_with(5, &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let (ada, bob) = (user(31), user(32));
    seed_caller(
        &*stack.store,
        &ada,
        "wacid.ADMIN-ADA",
        chrono::Utc::now(),
        2,
    )
    .await;
    seed_caller(
        &*stack.store,
        &bob,
        "wacid.ADMIN-BOB",
        chrono::Utc::now(),
        2,
    )
    .await;
    let delete = |number: &str, token: Option<&str>| {
        let mut request = stack
            .http()
            .delete(format!("{}/callers/{number}/data", stack.bridge_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.expect("DELETE");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    };
    let adas_rows = |stack: &LocalStack, phone: bridge::ids::PhoneNumber| {
        let store = stack.store.clone();
        async move {
            (
                store.list_tasks(&phone, None).await.unwrap().len(),
                store.list_reminders(&phone, None).await.unwrap().len(),
                store
                    .recent_turns(&phone, chrono::Utc::now() - chrono::Duration::days(1), 10)
                    .await
                    .unwrap()
                    .len(),
            )
        }
    };

    // No token, a wrong one, a number that is not one: refused, nothing deleted.
    assert_eq!(delete(&format!("+{}", ada.as_str()), None).await.0, 401);
    assert_eq!(delete(ada.as_str(), Some("wrong")).await.0, 401);
    for bad in ["12ab5678", "123", "+%2B447700900031"] {
        let (status, body) = delete(bad, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("6 to 15 digits"), "{body}");
    }
    assert_eq!(adas_rows(&stack, ada.clone()).await, (1, 1, 2));

    let (status, body) = delete(&format!("+{}", ada.as_str()), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        answer["deleted"],
        serde_json::json!({
            "tasks": 1, "reminders": 1, "transcript_turns": 2, "calls": 1, "profiles": 1
        })
    );
    assert!(
        !body.contains(ada.as_str()),
        "the number is not echoed: {body}"
    );
    assert_eq!(adas_rows(&stack, ada.clone()).await, (0, 0, 0));
    assert_eq!(
        stack
            .store
            .call(&bridge::ids::CallId::new("wacid.ADMIN-ADA"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        stack.store.caller_profile(&ada).await.unwrap().time_zone,
        None
    );
    assert_eq!(adas_rows(&stack, bob.clone()).await, (1, 1, 2));
    assert_eq!(
        stack
            .store
            .caller_profile(&bob)
            .await
            .unwrap()
            .time_zone
            .as_deref(),
        Some("Europe/London")
    );
    // Again: nothing left to delete.
    let (status, body) = delete(ada.as_str(), Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"tasks\":0"), "{body}");
    let (_, metrics) = get(&stack, "/metrics", None).await;
    assert!(
        metrics.contains("whatsapp_bridge_callers_forgotten_total{via=\"admin\"} 2"),
        "{metrics}"
    );
    stack.stop().await.expect("stop");
}
