#!/usr/bin/env bash
# What a real libwebrtc receiver hears of the AI's first words: calls from headless Chromium to
# the bridge (release build) on loopback, the AI double greeting with espeak-ng speech and saying
# it again later in the call; prints PESQ-WB of both renditions and Chromium's jitter-buffer
# figures per call (docs/BENCHMARKS.md). Installs what is missing (Debian packages chromium,
# espeak-ng and sox; PyPI pesq, numpy, scipy).
# Usage: bash scripts/browser_calls.sh [browser-calls options, e.g. --calls 10 --at-once 2]
set -euo pipefail
cd "$(dirname "$0")/.."
out="target/browser-calls"
bash scripts/quality_tools.sh chromium
mkdir -p "$out"
# The greeting: one voice and sentence of scripts/codec_quality.sh, 24 kHz mono, the silence
# before and after the words trimmed so the clip starts and ends with speech.
espeak-ng -v en-us+f3 -s 155 -w "$out/greeting-raw.wav" "Hello, thanks for calling. How can I help you today?"
sox "$out/greeting-raw.wav" -r 24000 -c 1 -b 16 "$out/greeting.wav" \
  silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse
cargo build --release --locked --quiet
exec "${CARGO_TARGET_DIR:-target}/release/whatsapp-voice-bridge" browser-calls --clip "$out/greeting.wav" --out "$out" "$@"
