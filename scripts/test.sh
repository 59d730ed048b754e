#!/usr/bin/env bash
# The test command: installs prerequisites, then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/lint_infra.sh
# The Supabase schema on the local PostgreSQL, in a fresh database for this run; then replicas
# claiming due reminders through its SQL function, on that database (dropped either way).
ci_url="postgresql://postgres@127.0.0.1:5432/whatsapp_bridge_ci_$$"
DATABASE_URL="$ci_url" bash scripts/apply_migrations.sh --fresh
claims_status=0
DATABASE_URL="$ci_url" bash scripts/test_reminder_claims.sh || claims_status=$?
psql "postgresql://postgres@127.0.0.1:5432/postgres" -q -c "drop database if exists whatsapp_bridge_ci_$$"
[ "$claims_status" -eq 0 ] || exit "$claims_status"
# No import loops between the modules of the core or of the wing, tests included (docs/ARCHITECTURE.md).
for crate in crates/bridge crates/sim; do
  python3 scripts/module_deps.py "$crate/src" --tests --check >/dev/null
done
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The serving binary as the container image builds it: the core alone, without the doubles,
# the demo and the load harness.
cargo check --locked -p whatsapp-voice-bridge --no-default-features
# The fleet's tests share call state through a Redis: the local one, started if it is not
# running (each test uses a key prefix of its own).
bash scripts/redis.sh
cargo test --workspace --all-targets --locked
# Load smoke run: the bridge as its own process, 5 calls for 5 s over WebRTC on loopback, then a
# short overflow flood; fails if any call fails, any audio is lost or a permit leaks.
smoke_out="$(mktemp -d)"
cargo run --locked --quiet -- loadtest --levels 5 --hold 5s --overflow 1s --host-probe 0s --strict --out "$smoke_out"
# The AI's socket dropped mid-call, 10 times over 5 calls (close 1011, then abruptly): fails
# unless every call's AI takes the caller's audio again, with a recovery p99 under 1 s.
cargo run --locked --quiet -- loadtest --ai-faults 10 --fault-calls 5 --hold 3s --strict --out "$smoke_out"
# Reminders on a fleet: two bridge processes on one store (and the Redis), 100 reminders due at
# once; fails unless each is delivered by exactly one call the user hears (0 duplicates, 0 lost).
cargo run --locked --quiet -- loadtest --reminders 100 --replicas 2 --reminder-concurrency 10 --out "$smoke_out"
# Soak smoke: 300 calls in randomised cycles (storms, duplicates, terminates first, media that
# never connects, vanishing callers, short WebRTC calls); fails on any error, any call left, or
# a permit, registry entry, task, fd or UDP socket left over, or RSS over 5 MiB above baseline.
cargo run --locked --quiet -- loadtest --soak 300 --strict --out "$smoke_out"
rm -rf "$smoke_out"
