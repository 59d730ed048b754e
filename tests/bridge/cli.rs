//! The binary itself: the demo on a fresh set-up, and bad configuration.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-voice-bridge");

#[test]
fn the_demo_places_three_calls_and_exits_zero() {
    let output = Command::new(BIN)
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("3 of 3 callers heard back what they said"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Reminder: set during a call, delivered by a call"),
        "{stdout}"
    );
}

#[test]
fn invalid_settings_are_all_reported_with_exit_code_64() {
    let output = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PORT", "eighty")
        .env("WEBRTC_UDP_PORTS", "9-1")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for key in [
        "PORT",
        "WEBRTC_UDP_PORTS",
        "WHATSAPP_APP_SECRET",
        "OPENAI_API_KEY",
    ] {
        assert!(stderr.contains(key), "{key} not reported: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_command_reports_a_serving_bridge() {
    let stack = crate::support::echo_stack(1).await;
    let port = stack
        .bridge_url
        .rsplit(':')
        .next()
        .expect("port")
        .to_owned();
    let ok = tokio::process::Command::new(BIN)
        .args(["healthcheck", "--port", &port])
        .status()
        .await
        .expect("runs");
    assert!(ok.success());
    stack.stop().await.expect("stop");
    let down = tokio::process::Command::new(BIN)
        .args(["healthcheck", "--port", &port])
        .status()
        .await
        .expect("runs");
    assert!(!down.success());
}
