#!/usr/bin/env bash
# Chooses the Opus settings by measurement: real speech from espeak-ng, encoded the way the
# bridge encodes the AI's voice with each candidate setting and decoded the way a phone does
# (examples/codec_sweep.rs), then scored with wideband PESQ. Prints the trade-off table that
# docs/BENCHMARKS.md keeps. Usage: bash scripts/codec_quality.sh [out-dir] [--speech-only]
# (--speech-only: make <out-dir>/speech.wav and stop; scripts/loss_quality.sh uses the same speech)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/codec-quality}"
bash scripts/quality_tools.sh
rm -rf "$out" && mkdir -p "$out/decoded"
sentences=(
  "Hello, thanks for calling. How can I help you today?"
  "I would like to move my dentist appointment to Thursday afternoon, if that is possible."
  "Please remind me to pick up the dry cleaning at six thirty this evening."
  "The quick brown fox jumps over the lazy dog near the riverbank."
  "Your order number is four seven two nine, and it should arrive on Monday."
  "Could you read me the tasks I still have open for this week?"
)
voices=(en-us+m3 en-us+f3 en-gb+m1 en-us+f4 en-gb+f2 en-us+m5)
for i in "${!sentences[@]}"; do
  espeak-ng -v "${voices[$i]}" -s 155 -w "$out/s$i.wav" "${sentences[$i]}"
done
sox "$out"/s*.wav -r 24000 -c 1 -b 16 "$out/speech.wav"
[ "${2:-}" = "--speech-only" ] && exit 0
cargo run --release --locked --quiet -p bridge --example codec_sweep -- "$out/speech.wav" "$out/decoded" > "$out/sweep.csv"
python3 scripts/codec_quality.py "$out/decoded" "$out/sweep.csv"
