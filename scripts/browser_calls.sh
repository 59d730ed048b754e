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
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python3 -c "import pesq, numpy, scipy" 2>/dev/null || python3 -m pip install -q pesq numpy scipy
mkdir -p "$out"
# The greeting: one voice and sentence of scripts/codec_quality.sh, 24 kHz mono, the silence
# before and after the words trimmed so the clip starts and ends with speech.
espeak-ng -v en-us+f3 -s 155 -w "$out/greeting-raw.wav" "Hello, thanks for calling. How can I help you today?"
sox "$out/greeting-raw.wav" -r 24000 -c 1 -b 16 "$out/greeting.wav" \
  silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse
cargo build --release --locked --quiet
exec "${CARGO_TARGET_DIR:-target}/release/whatsapp-voice-bridge" browser-calls --clip "$out/greeting.wav" --out "$out" "$@"
