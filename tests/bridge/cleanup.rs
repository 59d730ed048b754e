//! Nothing outlives a call: after many calls ended every possible way, the registry is empty,
//! and the process's tasks and file descriptors are back to their baseline.

use std::time::Duration;

use bridge::call::{CallCommand, CallEnd};
use sim::realtime_ai::CloseKind;

use crate::support::*;

const CALLS: u32 = 50;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[derive(Clone, Copy, Debug)]
enum Ending {
    TerminateWebhook,
    CallerGone,
    AiClosed,
    AdminHangup,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_ended_every_way_leave_no_task_permit_entry_or_socket_behind() {
    let stack = echo_stack(2).await;
    // Warm up once so lazily created pools and caches exist before the baseline.
    let warm = answered_call(&stack, "warm", 500).await;
    warm.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    let fds_before = open_fds();
    let tasks_before = alive_tasks();

    let endings = [
        Ending::TerminateWebhook,
        Ending::CallerGone,
        Ending::AiClosed,
        Ending::AdminHangup,
    ];
    for n in 0..CALLS {
        let ending = endings[n as usize % endings.len()];
        let mut call = answered_call(&stack, &format!("clean{n}"), 600 + n).await;
        match ending {
            Ending::TerminateWebhook => {
                call.hang_up().await.expect("hang up");
            }
            Ending::CallerGone => call.drop_media().await,
            Ending::AiClosed => {
                // 1008 (policy violation): a close a new session cannot help with.
                stack.ai.close_all(CloseKind::Code(1008));
                assert!(
                    stack
                        .graph
                        .wait_for(&call.call_id, "terminate", WAIT)
                        .await
                        .is_some(),
                    "the bridge terminates a call whose AI went away"
                );
                call.stop_media().await;
            }
            Ending::AdminHangup => {
                let handle = stack.registry.get(&call.call_id).expect("live call");
                handle
                    .commands
                    .try_send(CallCommand::Hangup(CallEnd::AdminHangup))
                    .expect("command queued");
                assert!(
                    stack
                        .graph
                        .wait_for(&call.call_id, "terminate", WAIT)
                        .await
                        .is_some()
                );
                call.stop_media().await;
            }
        }
        assert!(stack.wait_idle(WAIT).await, "call {n} ({ending:?}) ended");
    }

    let health = health(&stack).await;
    assert_eq!(health["active_calls"], 0);
    assert!(stack.registry.list().is_empty());
    // Closed sockets and finished tasks may take a moment to be reaped by the runtime.
    let settled = async {
        while alive_tasks() > tasks_before || open_fds() > fds_before + 2 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), settled).await;
    assert!(
        alive_tasks() <= tasks_before,
        "tasks: {} before, {} after",
        tasks_before,
        alive_tasks()
    );
    // Keep-alive HTTP connections of the test's own clients may differ by one or two.
    assert!(
        open_fds() <= fds_before + 2,
        "file descriptors: {} before, {} after",
        fds_before,
        open_fds()
    );
    let metrics = stack.metrics.render();
    for outcome in [
        "remote_terminated",
        "caller_gone",
        "ai_failed",
        "admin_hangup",
    ] {
        assert!(
            metrics.contains(&format!(
                "whatsapp_bridge_calls_total{{direction=\"inbound\",outcome=\"{outcome}\"}}"
            )),
            "{outcome} counted"
        );
    }
    stack.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_live_calls_with_terminate() {
    let stack = echo_stack(5).await;
    let first = answered_call(&stack, "shut1", 900).await;
    let second = answered_call(&stack, "shut2", 901).await;
    let ids = [first.call_id.clone(), second.call_id.clone()];
    let graph = stack.graph.clone();
    tokio::time::timeout(Duration::from_secs(20), stack.stop())
        .await
        .expect("shutdown finishes")
        .expect("stop");
    for id in &ids {
        assert!(
            graph
                .actions_for(id)
                .iter()
                .any(|a| a.action == "terminate"),
            "terminate sent for {id}"
        );
    }
    drop((first, second));
}
