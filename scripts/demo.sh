#!/usr/bin/env bash
# The main job on a fresh machine: installs prerequisites and runs the local demo
# (bridge + simulated Meta + simulated AI on loopback; no credentials, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --locked -- demo "$@"
