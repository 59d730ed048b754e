//! In-band FEC toward the phone, driven by the loss the phone reports in RTCP: the phone's
//! receiver reports reach the call, the bridge's packets carry FEC while the phone reports
//! loss, and stop carrying it once the reports have been loss-free for a while.

use std::time::{Duration, Instant};

use bridge::media::codec::carries_fec;
use sim::phone::PhoneCall;
use sim::stack::LocalStack;
use testkit::audio;

use crate::support::*;

const PITCHES: [f32; 4] = [300.0, 520.0, 760.0, 1000.0];
/// 10 % lost, in 256ths (RTCP's fraction lost).
const TEN_PERCENT: u8 = 26;
/// Protection ends 10 s after the last lossy report; the phone's own reports come every second.
const FEC_OFF_WAIT: Duration = Duration::from_secs(25);

/// Whether the bridge's metrics show `line`, polled until `deadline`; `before_each` runs before
/// each look (the phone repeating its report, say).
async fn metric_shows<F, Fut>(
    stack: &LocalStack,
    line: &str,
    timeout: Duration,
    before_each: F,
) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < deadline {
        tick.tick().await;
        before_each().await;
        if stack.metrics.render().lines().any(|l| l == line) {
            return true;
        }
    }
    false
}

/// The phone says three pitched syllables and waits for the AI's echo; returns the range of
/// received packets that carried it.
async fn echo_round(call: &PhoneCall, expected: &[f32]) -> std::ops::Range<usize> {
    let (samples, packets) = {
        let recording = call.recording();
        let recording = recording.lock();
        (recording.received.len(), recording.payloads.len())
    };
    call.say(audio::speech_like(expected, 260, 120, SAMPLE_RATE))
        .await;
    let echoed = call
        .wait_until(WAIT, |r| {
            pitches_in_order(&r.received[samples..], &PITCHES, expected)
        })
        .await;
    assert!(echoed, "the AI's echo reached the phone");
    packets..call.recording().lock().payloads.len()
}

fn fec_packets(call: &PhoneCall, range: std::ops::Range<usize>) -> usize {
    call.recording().lock().payloads[range]
        .iter()
        .filter(|p| carries_fec(p))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_sends_fec_while_the_phone_reports_loss_and_stops_once_its_reports_are_clean() {
    let stack = echo_stack(2).await;
    let call = answered_call(&stack, "fec", 70).await;

    // The phone's own reports say nothing is lost: no FEC, no bits spent on it.
    let clean = echo_round(&call, &[300.0, 760.0, 520.0]).await;
    assert_eq!(fec_packets(&call, clean.clone()), 0, "FEC without loss");
    assert!(
        stack
            .metrics
            .render()
            .contains("whatsapp_bridge_calls_sending_fec 0")
    );

    // The phone reports 10 % loss (again, until the bridge reacts: a report no newer than the
    // phone stack's own last one is ignored as a duplicate).
    let switched_on = metric_shows(&stack, "whatsapp_bridge_calls_sending_fec 1", WAIT, || {
        call.report_loss(TEN_PERCENT)
    })
    .await;
    assert!(switched_on, "the bridge turned FEC on");
    let lossy = echo_round(&call, &[520.0, 1000.0, 300.0]).await;
    let with_fec = fec_packets(&call, lossy.clone());
    assert!(
        with_fec >= 20,
        "{with_fec} of {} packets of the echo carry FEC",
        lossy.len()
    );
    // (That such packets rebuild a lost frame far better than concealment is shown on the
    // encoder itself: media::codec, `loss_protection_switched_on_mid_stream_...`.)

    // Only the phone's own, loss-free reports from now on: FEC stops after 10 s of them.
    let switched_off = metric_shows(
        &stack,
        "whatsapp_bridge_calls_sending_fec 0",
        FEC_OFF_WAIT,
        || async {},
    )
    .await;
    assert!(switched_off, "the bridge turned FEC off again");
    let after = echo_round(&call, &[760.0, 300.0, 1000.0]).await;
    assert_eq!(fec_packets(&call, after), 0, "FEC after the loss ended");
    let metrics = stack.metrics.render();
    assert!(
        metrics.contains("whatsapp_bridge_fec_switch_ons_total 1"),
        "{metrics}"
    );
    assert!(call.recording().lock().loss_reports_sent >= 1);

    call.hang_up().await.expect("hang up");
    assert!(stack.wait_idle(WAIT).await);
    stack.stop().await.expect("stop");
}
