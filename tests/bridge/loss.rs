//! Phones that lose packets on the wire: what the bridge makes of a lossy uplink, and how it
//! protects a lossy downlink once the phone's own receiver reports state the loss.

use std::time::{Duration, Instant};

use sim::loss::{CallLoss, LossProfile};
use sim::phone::PhoneCall;
use sim::stack::LocalStack;

use crate::support::*;

/// The value of a counter or gauge of the bridge's metrics (0 when absent).
fn metric(stack: &LocalStack, name: &str) -> f64 {
    stack
        .metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Polls (every 100 ms, until `timeout`) until `condition` holds.
async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while Instant::now() < deadline {
        tick.tick().await;
        if condition() {
            return true;
        }
    }
    condition()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_losing_a_tenth_of_each_direction_gets_its_uplink_rebuilt_and_fec_toward_it() {
    let stack = echo_stack(2).await;
    let mut settings = stack.phone_settings();
    settings.loss = CallLoss {
        uplink: LossProfile::random(10.0),
        downlink: LossProfile::random(10.0),
    };
    let call = PhoneCall::dial(settings, call_id("loss"), user(80), "Lossy Caller")
        .await
        .expect("dial");
    assert_eq!(call.reply.status, 200, "{}", call.reply.body);
    assert!(call.wait_connected(WAIT).await, "connected");

    // Uplink: the bridge fills the phone's lost packets in (from FEC or by concealment).
    let rebuilt = || {
        metric(&stack, "whatsapp_bridge_fec_recovered_frames_total")
            + metric(&stack, "whatsapp_bridge_concealed_frames_total")
    };
    assert!(
        eventually(WAIT, || rebuilt() >= 5.0).await,
        "frames rebuilt by the bridge: {}, lost on the wire (up, down): {:?}",
        rebuilt(),
        call.wire_losses()
    );
    // Downlink: the phone's WebRTC stack reports what it lost, and the bridge protects.
    assert!(
        eventually(WAIT, || metric(&stack, "whatsapp_bridge_calls_sending_fec")
            == 1.0)
        .await,
        "the bridge turned FEC on; lost on the wire (up, down): {:?}",
        call.wire_losses()
    );
    assert_eq!(
        call.recording().lock().loss_reports_sent,
        0,
        "no crafted report"
    );
    let (up, down) = call.wire_losses();
    assert!(up > 0 && down > 0, "lost up {up}, down {down}");
    // The phone plays continuous audio: each lost packet became a frame of its own.
    let recording = call.recording();
    {
        let recording = recording.lock();
        let replaced = recording.concealed_frames + recording.fec_recovered_frames;
        assert!(replaced > 0, "lost {down}, replaced {replaced}");
    }

    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}
