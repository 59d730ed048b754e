//! One call from headless Chromium to the bridge binary (`browser-calls`): the page's offer is
//! answered, the greeting and the later rendition are both heard and found in the recording.
//! Skipped, with the reason printed, where Chromium or the PESQ scorer is not installed.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use sim::browser::{BrowserCallsOptions, measure};
use testkit::audio;

const BIN: &str = env!("CARGO_BIN_EXE_whatsapp-voice-bridge");

/// Why this machine cannot run the test, if it cannot.
fn missing() -> Option<&'static str> {
    let runs = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !runs("chromium", &["--version"]) {
        return Some("chromium is not installed (bash scripts/browser_calls.sh installs it)");
    }
    if !runs("python3", &["-c", "import pesq, numpy, scipy"]) {
        return Some("python3 with pesq, numpy and scipy is not installed");
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chromium_caller_hears_the_greeting_and_the_same_words_later() {
    if let Some(reason) = missing() {
        println!("skipped: {reason}");
        return;
    }
    let out = std::env::temp_dir().join(format!("wvb-browser-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let clip = out.join("clip.wav");
    let speech = audio::speech_like(&[220.0, 330.0, 262.0, 294.0, 247.0], 220, 60, 24_000);
    audio::write_wav(&clip, 24_000, &speech).expect("clip");
    let options = BrowserCallsOptions {
        calls: 1,
        at_once: 1,
        clip,
        out: out.clone(),
        chromium: "chromium".into(),
        python: "python3".into(),
        bridge_settings: Vec::new(),
        bridge_exe: Some(PathBuf::from(BIN)),
    };
    let measured = tokio::time::timeout(std::time::Duration::from_secs(60), measure(&options))
        .await
        .expect("the call ends within a minute")
        .expect("the harness runs");
    assert_eq!(measured.failures, 0);
    let [row] = measured.rows.as_slice() else {
        panic!("one call, one row: {}", measured.rows.len());
    };
    for (rendition, correlation) in ["greeting", "later"].iter().zip(row.correlation) {
        assert!(
            correlation.is_some_and(|c| c > 0.3),
            "the {rendition} is in the recording: {correlation:?}"
        );
    }
    assert!(row.later_pesq.is_some(), "{row:?}");
    assert!(
        row.connected_to_greeting_ms
            .is_some_and(|ms| ms > 0.0 && ms < 5_000.0),
        "{row:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}
