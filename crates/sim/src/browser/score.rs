//! Wideband PESQ of each rendition of the clip in a call's recording, by score.py (numpy, scipy
//! and PyPI's `pesq`, as scripts/codec_quality.py uses them).

use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;

const SCORER: &str = include_str!("score.py");

/// One rendition of the clip as Chromium played it.
#[derive(Debug, Clone, Deserialize)]
pub struct Rendition {
    /// Where it starts in the recording (48 kHz samples), found by cross-correlation.
    pub start: Option<u64>,
    /// Normalised cross-correlation with the reference at that start (1.0: identical shape).
    pub correlation: Option<f64>,
    /// PESQ-WB (MOS-LQO) against the reference.
    pub pesq: Option<f64>,
}

#[derive(Deserialize)]
struct Scored {
    renditions: Vec<Rendition>,
}

/// Scores the renditions near `onsets` (recording samples) in `recording` against `reference`.
pub async fn renditions(
    python: &str,
    reference: &Path,
    recording: &Path,
    onsets: &[u64],
) -> anyhow::Result<Vec<Rendition>> {
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SCORER)
        .arg(reference)
        .arg(recording)
        .args(onsets.iter().map(u64::to_string))
        .output()
        .await
        .with_context(|| format!("running {python}"))?;
    anyhow::ensure!(
        output.status.success(),
        "the scorer failed ({}); it needs numpy, scipy and pesq: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let scored: Scored = serde_json::from_slice(&output.stdout).context("the scorer's output")?;
    Ok(scored.renditions)
}
