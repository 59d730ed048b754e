#!/usr/bin/env bash
# Operator smoke test: N simultaneous signed `connect` webhooks against a running bridge.
# Needs bash, curl, openssl and coreutils. Run with --help for usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/test_concurrent_calls.sh --url URL --secret APP_SECRET [options]

Sends N simultaneous connect webhooks, signed with X-Hub-Signature-256 exactly as Meta signs
them, each carrying a realistic SDP offer; prints each answer (admitted, or refused with the
reason), then /health and a summary, then ends the calls with signed terminate webhooks.

Options:
  --url URL               the bridge's base URL, e.g. http://127.0.0.1:8080 (required)
  --secret SECRET         the app secret the bridge checks signatures with (required)
  --calls N               simultaneous calls (default 5)
  --phone-number-id ID    the business phone number id the bridge serves (default 106540352242922)
  --offer FILE            SDP offer to send (CRLF or LF lines). Default: the offer of
                          crates/testkit/fixtures/connect_uic.json, whose candidates are documentation
                          addresses (203.0.113.49, 2001:db8::): a bridge that is not on
                          loopback will send ICE checks there. Use an offer with reachable
                          candidates (or 127.0.0.1 ones for a local bridge).
  --hold SECONDS          wait this long before the terminate webhooks (default 2)
  --no-terminate          leave the calls running
  -h, --help              this text

Exit code: 0 when every connect was admitted or refused, 1 otherwise, 2 on bad usage.
The summary line reads: admitted: A  refused: R  other: O
EOF
}

url="" secret="" calls=5 phone_number_id="106540352242922" offer_file="" hold=2 terminate=1
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url="${2:-}"; shift 2 ;;
    --secret) secret="${2:-}"; shift 2 ;;
    --calls) calls="${2:-}"; shift 2 ;;
    --phone-number-id) phone_number_id="${2:-}"; shift 2 ;;
    --offer) offer_file="${2:-}"; shift 2 ;;
    --hold) hold="${2:-}"; shift 2 ;;
    --no-terminate) terminate=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -z "$url" ] || [ -z "$secret" ]; then
  echo "--url and --secret are required" >&2
  usage >&2
  exit 2
fi
case "$calls" in ''|*[!0-9]*) echo "--calls must be a number" >&2; exit 2 ;; esac
url="${url%/}"
here="$(cd "$(dirname "$0")/.." && pwd)"

# The offer as one JSON string value: CRLF line endings escaped as \r\n.
if [ -n "$offer_file" ]; then
  offer_json="$(tr -d '\r' < "$offer_file" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | awk '{printf "%s\\r\\n", $0}')"
else
  offer_json="$(grep -o '"sdp": *"[^"]*"' "$here/crates/testkit/fixtures/connect_uic.json" | head -n 1 | sed -e 's/^"sdp": *"//' -e 's/"$//')"
fi

run="$(date +%s)$$"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

sign() { # body file -> "sha256=<hex>"
  printf 'sha256=%s' "$(openssl dgst -sha256 -hmac "$secret" -r < "$1" | cut -d' ' -f1)"
}

post() { # index body-file out-prefix
  local status
  status="$(curl -sS -o "$3.body" -w '%{http_code}' -X POST "$url/webhook" \
    -H 'Content-Type: application/json' \
    -H "X-Hub-Signature-256: $(sign "$2")" \
    --data-binary "@$2" || true)"
  printf '%s' "${status:-000}" > "$3.status"
}

user_of() { printf '4477009%05d' "$((20000 + $1))"; }
call_id_of() { printf 'wacid.SMOKE-%s-%d' "$run" "$1"; }

connect_body() { # index
  local now; now="$(date +%s)"
  printf '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"%s"},"contacts":[{"profile":{"name":"Smoke Test %d"},"wa_id":"%s"}],"calls":[{"id":"%s","from":"%s","to":"15550001111","event":"connect","timestamp":"%s","direction":"USER_INITIATED","session":{"sdp":"%s","sdp_type":"offer"}}]},"field":"calls"}]}]}' \
    "$phone_number_id" "$1" "$(user_of "$1")" "$(call_id_of "$1")" "$(user_of "$1")" "$now" "$offer_json"
}

terminate_body() { # index
  local now; now="$(date +%s)"
  printf '{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550001111","phone_number_id":"%s"},"calls":[{"id":"%s","from":"%s","to":"15550001111","event":"terminate","timestamp":"%s","direction":"USER_INITIATED","status":"COMPLETED"}]},"field":"calls"}]}]}' \
    "$phone_number_id" "$(call_id_of "$1")" "$(user_of "$1")" "$now"
}

echo "Sending $calls simultaneous connect webhooks to $url/webhook"
for i in $(seq 1 "$calls"); do
  connect_body "$i" > "$work/connect-$i.json"
done
for i in $(seq 1 "$calls"); do
  post "$i" "$work/connect-$i.json" "$work/connect-$i" &
done
wait

admitted=0 refused=0 other=0
for i in $(seq 1 "$calls"); do
  status="$(cat "$work/connect-$i.status")"
  body="$(cat "$work/connect-$i.body" 2>/dev/null)"
  # A refused call is declined with reject and answered 200 with the refusal in the body
  # (503 only when the bridge could not send the reject).
  case "$status:$body" in
    200:*'"status":"refused"'*) refused=$((refused + 1)); echo "call $i $(call_id_of "$i"): 200 refused $body" ;;
    200:*) admitted=$((admitted + 1)); echo "call $i $(call_id_of "$i"): 200 admitted" ;;
    503:*) refused=$((refused + 1)); echo "call $i $(call_id_of "$i"): 503 refused $body" ;;
    *) other=$((other + 1)); echo "call $i $(call_id_of "$i"): $status $body" ;;
  esac
done
echo "health: $(curl -sS "$url/health" || echo unreachable)"
echo "admitted: $admitted  refused: $refused  other: $other"

if [ "$terminate" -eq 1 ]; then
  sleep "$hold"
  echo "Ending the calls with terminate webhooks"
  for i in $(seq 1 "$calls"); do
    terminate_body "$i" > "$work/terminate-$i.json"
    post "$i" "$work/terminate-$i.json" "$work/terminate-$i" &
  done
  wait
  for i in $(seq 1 "$calls"); do
    echo "terminate $i: $(cat "$work/terminate-$i.status")"
  done
  echo "health: $(curl -sS "$url/health" || echo unreachable)"
fi

[ "$other" -eq 0 ]
