#!/usr/bin/env bash
# Makes sure a Redis answers on 127.0.0.1:6379 (the fleet's tests, `demo --replicas`): starts
# Debian's redis-server there, keeping nothing on disk, when none is running.
set -euo pipefail
ping() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
ping && exit 0
echo "starting redis-server on 127.0.0.1:6379"
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir "${TMPDIR:-/tmp}" --logfile "${TMPDIR:-/tmp}/whatsapp-voice-bridge-redis.log"
for _ in $(seq 1 50); do
  ping && exit 0
  sleep 0.1
done
echo "redis-server did not answer on 127.0.0.1:6379" >&2
exit 1
