//! The HTTP surface: signature, body limit, verification handshake, tolerant parsing,
//! idempotency and capacity.

use std::time::{Duration, Instant};

use bridge::ids::CallId;
use bridge::whatsapp::signature;
use sim::phone::PhoneCall;
use sim::stack::{APP_SECRET, VERIFY_TOKEN};

use crate::support::*;

async fn post_raw(
    stack: &sim::stack::LocalStack,
    body: Vec<u8>,
    signature: Option<String>,
) -> reqwest::Response {
    let mut request = stack
        .http()
        .post(format!("{}/webhook", stack.bridge_url))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    request.send().await.expect("POST")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_signature_starts_a_call_and_a_bad_missing_or_stale_one_is_refused_before_parsing()
{
    let stack = echo_stack(5).await;

    // Valid: the call is answered.
    let call = answered_call(&stack, "signed", 1).await;
    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);

    let id = call_id("unsigned");
    let body = connect_body(&id, &user(2), &loopback_offer());
    let good = signature::sign(APP_SECRET.as_bytes(), body.as_bytes());
    let wrong_secret = signature::sign(b"not-the-secret", body.as_bytes());
    // Stale body: signed before one byte changed.
    let mut stale = body.clone().into_bytes();
    let position = stale.len() / 2;
    stale[position] ^= 0x01;
    for (case, bytes, header) in [
        ("bad", body.clone().into_bytes(), Some(wrong_secret)),
        ("missing", body.clone().into_bytes(), None),
        ("stale body", stale, Some(good.clone())),
        (
            "malformed",
            body.clone().into_bytes(),
            Some("sha256=xyz".to_owned()),
        ),
    ] {
        let response = post_raw(&stack, bytes, header).await;
        assert_eq!(response.status().as_u16(), 401, "{case}");
    }
    assert_eq!(stack.registry.active_calls(), 0);
    assert!(stack.graph.actions_for(&id).is_empty(), "no Graph request");
    let metrics = stack.metrics.render();
    assert!(metrics.contains("whatsapp_bridge_webhook_requests_total{result=\"unauthorized\"} 4"));
    stack.stop().await.expect("stop");
}

#[tokio::test]
async fn a_body_over_one_mebibyte_gets_413() {
    let stack = echo_stack(5).await;
    let body = vec![b' '; 2 << 20];
    let signature = signature::sign(APP_SECRET.as_bytes(), &body);
    let response = post_raw(&stack, body, Some(signature)).await;
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(stack.registry.active_calls(), 0);
    stack.stop().await.expect("stop");
}

#[tokio::test]
async fn the_verification_handshake_echoes_the_challenge_only_for_the_right_token() {
    let stack = echo_stack(5).await;
    let get = |query: String| {
        let url = format!("{}/webhook?{query}", stack.bridge_url);
        let http = stack.http().clone();
        async move { http.get(url).send().await.expect("GET") }
    };
    let ok = get(format!(
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}"
    ))
    .await;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().await.expect("body"), "1158201444");
    let wrong =
        get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong".into()).await;
    assert_eq!(wrong.status().as_u16(), 403);
    let missing = get("hub.mode=subscribe".into()).await;
    assert_eq!(missing.status().as_u16(), 400);
    stack.stop().await.expect("stop");
}

#[tokio::test]
async fn unknown_events_and_other_objects_are_acknowledged_and_ignored() {
    let stack = echo_stack(5).await;
    let unknown_event = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"calls","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"106540352242922"},"calls":[{"id":"wacid.X","event":"call_created","from":"1","to":"2","timestamp":"1760681506","new_field":{"a":1}}]}}]}]}"#;
    let other_object = r#"{"object":"page","entry":[]}"#;
    for body in [unknown_event, other_object] {
        let (status, _) = post_signed(&stack, body.to_owned()).await;
        assert_eq!(status, 200);
    }
    let (status, _) = post_signed(&stack, "not json".to_owned()).await;
    assert_eq!(status, 400);
    assert_eq!(stack.registry.active_calls(), 0);
    assert!(stack.graph.actions().is_empty());
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_connect_makes_one_call_and_a_terminate_before_connect_blocks_it() {
    let stack = echo_stack(5).await;

    // The same connect delivered twice: one call, one pre_accept.
    let id = call_id("dup");
    let body = connect_body(&id, &user(3), &loopback_offer());
    let (first, _) = post_signed(&stack, body.clone()).await;
    let (second, _) = post_signed(&stack, body).await;
    assert_eq!((first, second), (200, 200));
    assert_eq!(stack.registry.active_calls(), 1);
    assert!(
        stack
            .graph
            .wait_for(&id, "pre_accept", WAIT)
            .await
            .is_some()
    );
    let (status, _) = post_signed(&stack, terminate_body(&id, &user(3))).await;
    assert_eq!(status, 200);
    assert!(stack.wait_idle(WAIT).await);
    let pre_accepts = stack
        .graph
        .actions_for(&id)
        .iter()
        .filter(|a| a.action == "pre_accept")
        .count();
    assert_eq!(pre_accepts, 1);
    // Meta ended it: the bridge must not answer the terminate with a terminate.
    assert!(
        stack
            .graph
            .actions_for(&id)
            .iter()
            .all(|a| a.action != "terminate" && a.action != "reject")
    );

    // terminate first, connect after: nothing is answered.
    let late = call_id("late");
    let (status, _) = post_signed(&stack, terminate_body(&late, &user(4))).await;
    assert_eq!(status, 200);
    let (status, _) = post_signed(&stack, connect_body(&late, &user(4), &loopback_offer())).await;
    assert_eq!(status, 200);
    // Admission is decided inside the webhook request, so this is final.
    assert_eq!(stack.registry.active_calls(), 0);
    assert!(stack.graph.actions_for(&late).is_empty());
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_calls_are_declined_and_answered_200_with_the_refusal_and_the_slots_come_back()
{
    let stack = echo_stack(3).await;
    let dials = (0..5u32).map(|n| {
        let settings = stack.phone_settings();
        async move {
            PhoneCall::dial(
                settings,
                call_id(&format!("cap{n}")),
                user(100 + n),
                "Caller",
            )
            .await
            .expect("dial")
        }
    });
    let calls = futures_util::future::join_all(dials).await;
    let (refused, live): (Vec<_>, Vec<_>) =
        calls.into_iter().partition(|c| c.reply.refusal().is_some());
    assert_eq!(live.len(), 3);
    assert_eq!(refused.len(), 2);
    for call in &refused {
        assert_eq!(call.reply.status, 200);
        let body: serde_json::Value = serde_json::from_str(&call.reply.body).expect("JSON");
        assert_eq!(body["status"], "refused");
        assert_eq!(body["reason"], "at_capacity");
        assert_eq!(body["active_calls"], 3);
        assert_eq!(body["max_calls"], 3);
        assert!(
            stack
                .graph
                .wait_for(&call.call_id, "reject", WAIT)
                .await
                .is_some(),
            "refused call rejected at the Graph API"
        );
        // A redelivery of the refused connect: 200 and nothing more.
        let (status, _) = post_signed(
            &stack,
            connect_body(&call.call_id, &call.user, &loopback_offer()),
        )
        .await;
        assert_eq!(status, 200);
        let rejects = stack
            .graph
            .actions_for(&call.call_id)
            .iter()
            .filter(|a| a.action == "reject")
            .count();
        assert_eq!(rejects, 1);
    }
    assert_eq!(health(&stack).await["active_calls"], 3);

    // The same phone calling again while live: caller_busy.
    let busy = PhoneCall::dial(
        stack.phone_settings(),
        call_id("busy"),
        live[0].user.clone(),
        "Caller",
    )
    .await
    .expect("dial");
    assert_eq!(busy.reply.status, 200);
    assert_eq!(busy.reply.refusal().as_deref(), Some("caller_busy"));

    for call in live {
        call.hang_up().await.expect("hang up");
    }
    assert!(stack.wait_idle(WAIT).await);
    let health = health(&stack).await;
    assert_eq!(health["active_calls"], 0);
    assert_eq!(health["status"], "healthy");
    let again = answered_call(&stack, "after", 200).await;
    again.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    let metrics = stack.metrics.render();
    assert!(metrics.contains("whatsapp_bridge_call_rejections_total{reason=\"at_capacity\"} 2"));
    assert!(metrics.contains("whatsapp_bridge_call_rejections_total{reason=\"caller_busy\"} 1"));
    tokio::time::timeout(Duration::from_secs(20), stack.stop())
        .await
        .expect("stops")
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_udp_port_range_refuses_calls_like_capacity_and_ports_come_back() {
    // A free port below the kernel's ephemeral range (32768 and up), so that the sockets the
    // other tests open on port 0 meanwhile cannot take it.
    let port = (0..100)
        .map(|_| rand::random_range(20_000..30_000u16))
        .find(|port| std::net::UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port");
    let stack = sim::stack::LocalStack::start(sim::stack::StackOptions {
        max_calls: 5,
        settings: no_busy_callbacks()
            .into_iter()
            .chain([("WEBRTC_UDP_PORTS".to_owned(), format!("{port}-{port}"))])
            .collect(),
        ..Default::default()
    })
    .await
    .expect("stack");
    let first = answered_call(&stack, "port1", 300).await;
    let answer = stack.graph.actions_for(&first.call_id)[0]
        .sdp
        .clone()
        .expect("answer");
    assert!(
        answer.contains(&format!("127.0.0.1 {port} typ host")),
        "the call uses the configured port: {answer}"
    );

    let second = PhoneCall::dial(
        stack.phone_settings(),
        call_id("port2"),
        user(301),
        "Caller",
    )
    .await
    .expect("dial");
    assert_eq!(second.reply.status, 200);
    assert_eq!(second.reply.refusal().as_deref(), Some("no_udp_port"));
    assert!(
        stack
            .graph
            .wait_for(&second.call_id, "reject", WAIT)
            .await
            .is_some()
    );
    assert_eq!(stack.registry.active_calls(), 1);

    first.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    // The lease comes back when the call ends; the connection's socket is closed by its
    // driver task a moment later (after `close()` returns, on a loaded host). With a range of
    // one port, the next call needs that too: wait until the host has the port free.
    let deadline = Instant::now() + WAIT;
    while std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never came free");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = answered_call(&stack, "port3", 302).await;
    third.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}

/// A terminate delivery for `ids`, each call carrying `errors` error objects whose details hold
/// `marker`.
fn terminates_with_errors(ids: &[CallId], errors: usize, marker: &str) -> String {
    let mut body: serde_json::Value =
        serde_json::from_str(&terminate_body(&ids[0], &user(90))).expect("JSON");
    let template = body["entry"][0]["changes"][0]["value"]["calls"][0].clone();
    let calls: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            let mut call = template.clone();
            call["id"] = id.as_str().into();
            call["status"] = "FAILED".into();
            call["errors"] = (0..errors)
                .map(|i| {
                    serde_json::json!({
                        "code": 131_000 + i,
                        "error_data": { "details": format!("{marker}\n{i}") },
                    })
                })
                .collect();
            call
        })
        .collect();
    body["entry"][0]["changes"][0]["value"]["calls"] = calls.into();
    body.to_string()
}

/// Lines of the captured log that contain `needle`.
fn log_lines_with(logs: &std::sync::Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().expect("logs"))
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_over_long_or_control_character_call_id_creates_nothing_and_valid_events_beside_it_still_count()
 {
    let logs = captured_logs();
    let stack = echo_stack(5).await;
    let marker = format!("FORGED-{}", rand::random::<u32>());
    let long_id = CallId::new(format!("wacid.{}", "A".repeat(1_000_000)));
    let forged_id = CallId::new(format!("wacid.X\n2026-01-01T00:00:00Z ERROR {marker}"));
    let valid = call_id("beside-bad");
    let tombstones = stack.registry.tombstone_count();

    // A connect with each bad id (to the Graph API it would be pre_accept/accept or reject).
    for bad in [&long_id, &forged_id] {
        let (status, _) =
            post_signed(&stack, connect_body(bad, &user(91), &loopback_offer())).await;
        assert_eq!(status, 200, "answered 200 so Meta does not redeliver");
    }
    // One delivery: a terminate with a bad id and one with a valid id.
    let mut body: serde_json::Value =
        serde_json::from_str(&terminate_body(&valid, &user(92))).expect("JSON");
    let mut bad = body["entry"][0]["changes"][0]["value"]["calls"][0].clone();
    bad["id"] = forged_id.as_str().into();
    body["entry"][0]["changes"][0]["value"]["calls"]
        .as_array_mut()
        .expect("calls")
        .insert(0, bad);
    let (status, _) = post_signed(&stack, body.to_string()).await;
    assert_eq!(status, 200);

    // Nothing of the bad ids reached the Graph API, the registry or the tombstones; the valid
    // terminate beside them was taken (its id is tombstoned).
    assert!(stack.graph.actions().iter().all(|a| {
        a.call_id
            .as_ref()
            .is_none_or(|id| id != &long_id && id != &forged_id)
    }));
    assert_eq!(stack.registry.active_calls(), 0);
    assert_eq!(stack.registry.tombstone_count(), tombstones + 1);
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains(
            "whatsapp_bridge_webhook_events_refused_total{reason=\"call_id_too_long\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "whatsapp_bridge_webhook_events_refused_total{reason=\"call_id_bad_character\"} 2"
    ));
    // No forged line: the marker never starts a line of its own.
    assert!(
        log_lines_with(&logs, &marker)
            .iter()
            .all(|line| !line.starts_with("2026-01-01T00:00:00Z")),
        "a forged log line"
    );
    assert!(
        log_lines_with(&logs, &"A".repeat(1_000)).is_empty(),
        "the long id reached the log"
    );
    stack.stop().await.expect("stop");
}

#[tokio::test]
async fn a_terminate_flood_of_errors_is_one_log_line_per_delivery() {
    let logs = captured_logs();
    let stack = echo_stack(5).await;
    let ids: Vec<CallId> = (0..10).map(|i| call_id(&format!("errors-{i}"))).collect();

    // 10 calls × 16 errors (the most one call may carry): taken, their errors one WARN line.
    let marker = format!("ERRMARK-{}", rand::random::<u32>());
    let (status, _) = post_signed(&stack, terminates_with_errors(&ids, 16, &marker)).await;
    assert_eq!(status, 200);
    let lines = log_lines_with(&logs, &marker);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("count=160"), "{}", lines[0]);
    assert!(lines[0].contains("(and 157 more)"), "{}", lines[0]);

    // 10 calls × 1,000 errors (the 28 kB body of the finding): refused, one line, no error text.
    let flood_ids: Vec<CallId> = (0..10).map(|i| call_id(&format!("flood-{i}"))).collect();
    let flood = format!("FLOODMARK-{}", rand::random::<u32>());
    let tombstones = stack.registry.tombstone_count();
    let (status, _) = post_signed(&stack, terminates_with_errors(&flood_ids, 1_000, &flood)).await;
    assert_eq!(status, 200);
    assert!(log_lines_with(&logs, &flood).is_empty());
    assert_eq!(stack.registry.tombstone_count(), tombstones);
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains(
            "whatsapp_bridge_webhook_events_refused_total{reason=\"too_many_errors\"} 10"
        ),
        "{metrics}"
    );
    let refused_lines = log_lines_with(&logs, "webhook elements refused");
    assert!(
        refused_lines.iter().any(|l| l.contains("count=10")),
        "{refused_lines:#?}"
    );
    stack.stop().await.expect("stop");
}
