//! The operator's smoke-test script against a local bridge with the Graph double.

use std::process::Command;

use sim::stack::APP_SECRET;

use crate::support::*;

#[test]
fn the_script_documents_itself() {
    let output = Command::new("bash")
        .args(["scripts/test_concurrent_calls.sh", "--help"])
        .output()
        .expect("bash runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--url") && text.contains("--secret") && text.contains("--calls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_simultaneous_signed_connects_admit_three_and_refuse_two() {
    let stack = echo_stack(3).await;
    let offer = std::env::temp_dir().join(format!("smoke-offer-{}.sdp", std::process::id()));
    std::fs::write(&offer, loopback_offer()).expect("offer file");
    let url = stack.bridge_url.clone();
    let offer_path = offer.to_string_lossy().into_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args([
                "scripts/test_concurrent_calls.sh",
                "--url",
                &url,
                "--secret",
                APP_SECRET,
                "--calls",
                "5",
                "--offer",
                &offer_path,
                "--hold",
                "0",
            ])
            .output()
            .expect("script runs")
    })
    .await
    .expect("joined");
    let _ = std::fs::remove_file(&offer);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("admitted: 3  refused: 2  other: 0"),
        "{stdout}"
    );
    assert!(stdout.contains("200 refused"), "{stdout}");
    assert!(stdout.contains("\"reason\":\"at_capacity\""), "{stdout}");
    let rejects = stack
        .graph
        .actions()
        .iter()
        .filter(|a| a.action == "reject")
        .count();
    assert_eq!(rejects, 2);
    // The script's terminate webhooks end every admitted call; Meta ended them, so the bridge
    // sends no terminate of its own.
    assert!(stack.wait_idle(WAIT).await);
    assert!(
        stack
            .graph
            .actions()
            .iter()
            .all(|a| a.action != "terminate")
    );
    stack.stop().await.expect("stop");
}
