#!/usr/bin/env bash
# Tests claim_due_reminders (infra/supabase/migrations/0003_reminder_delivery.sql) on a real
# PostgreSQL, as replicas use it: 200 due reminders claimed by concurrent psql loops, each one
# claimed exactly once; an expired claim is given back (and a calling row from before claims);
# a retry waits for its next_attempt_at; the service role may call the function and anon may
# not; bad arguments are refused; one open callback per caller; callers keep their latest
# message time. Run on a fresh database with the migrations applied (scripts/test.sh does):
# DATABASE_URL must name it, and the script refuses a database that already has reminders.
set -euo pipefail
url="${DATABASE_URL:?DATABASE_URL must name a fresh database with the migrations applied}"
command -v psql >/dev/null 2>&1 || { echo "psql is required (Debian: postgresql-client)" >&2; exit 1; }
export PGOPTIONS="-c client_min_messages=warning"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail() { echo "test_reminder_claims: $*" >&2; exit 1; }
# One query's rows, unaligned, as the service role (the bridge's role on Supabase).
sql() { psql "$url" -v ON_ERROR_STOP=1 -qAt -c "set role service_role" -c "$1"; }
# The ids a claim returns.
claim() { sql "select id from public.claim_due_reminders('$1', $2, $3)"; }
# Fails unless running $2 as role $1 fails with SQLSTATE $3.
expect_error() {
  local out
  if out="$(psql "$url" -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -qAt -c "set role $1" -c "$2" 2>&1)"; then
    fail "expected SQLSTATE $3 from: $2 (got: $out)"
  fi
  grep -q "ERROR:  $3" <<<"$out" || fail "expected SQLSTATE $3 from: $2 (got: $out)"
}

[ "$(sql "select count(*) from public.reminders")" = 0 ] || fail "the database already has reminders"

# 200 due reminders, claimed 7 at a time by three replicas at once until none is left.
sql "insert into public.reminders (phone_number, text, remind_at)
     select '4477009' || lpad(g::text, 5, '0'), 'reminder ' || g, now() - g * interval '1 second'
     from generate_series(1, 200) g" >/dev/null
claimer() {
  while true; do
    local batch
    batch="$(claim "$1" 60 7)"
    [ -n "$batch" ] || return 0
    echo "$batch" >>"$work/$1"
  done
}
owners=(replica-a replica-b replica-c)
pids=()
for owner in "${owners[@]}"; do
  : >"$work/$owner"
  claimer "$owner" &
  pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid"; done
claimed="$(cat "${owners[@]/#/$work/}" | wc -l)"
distinct="$(cat "${owners[@]/#/$work/}" | sort -u | wc -l)"
duplicates=$((claimed - distinct))
lost="$(sql "select count(*) from public.reminders where status <> 'calling'")"
echo "claims: $claimed rows by ${#owners[@]} replicas ($(for o in "${owners[@]}"; do printf '%s %s; ' "$o" "$(wc -l <"$work/$o")"; done)), $duplicates duplicates, $lost lost"
[ "$duplicates" -eq 0 ] || fail "$duplicates reminders were claimed twice"
[ "$lost" -eq 0 ] && [ "$distinct" -eq 200 ] || fail "$((200 - distinct)) reminders were not claimed"
for owner in "${owners[@]}"; do
  held="$(sql "select count(*) from public.reminders where claimed_by = '$owner'
               and claim_expires_at > now() + interval '50 seconds'")"
  [ "$held" -eq "$(wc -l <"$work/$owner")" ] || fail "$owner holds $held rows, not the ones it claimed"
done
[ -z "$(claim replica-d 60 7)" ] || fail "a held claim was claimed again"

# A claim that expired (its replica died) is given back to the next claimer.
expired="$(sql "insert into public.reminders (phone_number, text, remind_at)
                values ('447700900001', 'expired claim', now()) returning id")"
[ "$(claim replica-x 0 7)" = "$expired" ] || fail "the due reminder was not claimed"
[ "$(claim replica-y 60 7)" = "$expired" ] || fail "an expired claim was not given back"
[ "$(sql "select claimed_by from public.reminders where id = '$expired'")" = replica-y ] ||
  fail "the expired claim did not pass to its new owner"

# A row left calling before claims existed (no expiry) is nobody's: it is claimed.
legacy="$(sql "insert into public.reminders (phone_number, text, remind_at, status)
               values ('447700900006', 'calling before claims', now(), 'calling') returning id")"
[ "$(claim replica-w 60 7)" = "$legacy" ] || fail "a calling row without a claim was not claimed"

# A retry is due at next_attempt_at, not at remind_at.
sql "insert into public.reminders (phone_number, text, remind_at, next_attempt_at)
     values ('447700900002', 'retry later', now() - interval '1 hour', now() + interval '1 hour')" >/dev/null
retry_due="$(sql "insert into public.reminders (phone_number, text, remind_at, next_attempt_at)
                  values ('447700900003', 'retry now', now() + interval '1 hour',
                          now() - interval '1 second') returning id")"
[ "$(claim replica-z 60 7)" = "$retry_due" ] || fail "a retry was claimed before its next_attempt_at"

# Only the service role may claim; arguments are checked.
expect_error anon "select * from public.claim_due_reminders('a', 60, 7)" 42501
expect_error authenticated "select * from public.claim_due_reminders('a', 60, 7)" 42501
expect_error service_role "select * from public.claim_due_reminders('', 60, 7)" 22004
expect_error service_role "select * from public.claim_due_reminders('a', -1, 7)" 22023
expect_error service_role "select * from public.claim_due_reminders('a', 60, -1)" 22023

# One open callback per caller.
sql "insert into public.reminders (phone_number, text, remind_at, kind)
     values ('447700900004', 'callback', now(), 'callback')" >/dev/null
expect_error service_role "insert into public.reminders (phone_number, text, remind_at, kind)
     values ('447700900004', 'callback', now(), 'callback')" 23505

# The upsert the bridge sends for an older message keeps the latest one.
sql "insert into public.callers (phone_number, last_message_at) values ('447700900005', '2030-01-02Z')" >/dev/null
sql "insert into public.callers (phone_number, last_message_at) values ('447700900005', '2030-01-01Z')
     on conflict (phone_number) do update set last_message_at = excluded.last_message_at" >/dev/null
[ "$(sql "select last_message_at = '2030-01-02Z' from public.callers where phone_number = '447700900005'")" = t ] ||
  fail "an older message moved last_message_at back"
echo "test_reminder_claims: ok"
