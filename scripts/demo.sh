#!/usr/bin/env bash
# The main job on a fresh machine: installs prerequisites and runs the local demo
# (bridge + simulated Meta + simulated AI on loopback; no credentials, no network).
# `bash scripts/demo.sh --replicas 2`: two bridge processes sharing a Redis, webhooks split.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# `--replicas N`: N bridge processes sharing a Redis; start the local one if none runs.
case " $* " in
  *" --replicas "* | *" --replicas="*) [ -n "${REDIS_URL:-}" ] || bash scripts/redis.sh ;;
esac
exec cargo run --locked -- demo "$@"
