#!/usr/bin/env bash
# Speech quality of whole calls under packet loss, both directions: calls through a bridge in
# one process whose simulated phones lose packets on the wire (`loadtest --loss-quality`), the
# AI double saying espeak-ng speech as its greeting and answer and the phone saying it in
# between; each direction scored with wideband PESQ (scripts/loss_calls.py). Prints the table
# docs/BENCHMARKS.md keeps. Usage: bash scripts/loss_calls.sh [out-dir] [calls-per-level]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/loss-calls}"
calls="${2:-3}"
# The speech of the codec sweep (it also installs espeak-ng, sox and pesq when missing); its
# first two sentences (two voices, 8 s) make the clip.
bash scripts/codec_quality.sh "$out/speech" --speech-only
sox "$out/speech/s0.wav" "$out/speech/s1.wav" -r 24000 -c 1 -b 16 "$out/clip.wav"
cargo build --release --locked --quiet
"${CARGO_TARGET_DIR:-target}/release/whatsapp-voice-bridge" loadtest --loss-quality \
  --clip "$out/clip.wav" --loss-calls "$calls" --out "$out"
PYTHONPATH=scripts python3 scripts/loss_calls.py "$out/loss-calls"
