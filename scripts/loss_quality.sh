#!/usr/bin/env bash
# Chooses how the bridge protects the AI's voice against loss toward the phone, by measurement:
# the speech of scripts/codec_quality.sh, encoded as the bridge does with and without in-band FEC,
# 0/2/5/10 % of packets dropped at random (seeded), decoded as a phone does (examples/loss_sweep.rs),
# scored with wideband PESQ. Prints the table docs/BENCHMARKS.md keeps.
# Usage: bash scripts/loss_quality.sh [out-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/loss-quality}"
# The same speech as the codec sweep (it also installs espeak-ng, sox and pesq when missing).
bash scripts/codec_quality.sh "$out/speech" --speech-only
# No timing is measured here, so the dev profile (libopus itself is optimised there) spares a
# release build.
cargo run --locked --quiet -p bridge --example loss_sweep -- "$out/speech/speech.wav" "$out/decoded" > "$out/sweep.csv"
PYTHONPATH=scripts python3 scripts/loss_quality.py "$out/decoded" "$out/sweep.csv"
