#!/usr/bin/env bash
# Chaos: does anything get lost or doubled when everything goes wrong at once? One rule starts a
# FlowRun per `application.created` event (its own message thread each) and notifies a local sink
# when the run is `running` and `finished`. The simulator answers 20% of API requests 503, 10% 429
# (Retry-After: 1), carries out 10% and then cuts the connection (the answer is lost), and drops,
# duplicates or reorders 20% of its webhooks. EVENTS events are posted (each with its own
# Idempotency-Key, posted again until a 2xx) while the daemon is killed with SIGKILL at 5 random
# moments and restarted on the same SQLite file and ports. After the last restart it waits for
# the work to drain and prints: events accepted, executions finished, FlowRuns per thread in the
# simulator (DUPLICATES and LOST must be 0), on_status handler executions per (run, status)
# (exactly once expected), sink notifications (at-least-once: repeats are allowed), dead letters
# and the time to drain. Exits 1 when DUPLICATES or LOST is not 0, a handler fired twice or never,
# or the work did not drain in time (the work folder with the
# daemon's JSON logs and the database is then kept and its path printed; CHAOS_KEEP=1 keeps it
# always). Runs go running 1 s and finished 5 s after their creation; lost webhooks are
# recovered by polling (reconcile_after 2s). Loopback only; stops by itself (at most ~10
# minutes). Knobs: FLOWD_BIN (test this binary instead of building the tree), CHAOS_POST_SECONDS
# (40), CHAOS_DRAIN_TIMEOUT (300), CHAOS_LOG_LEVEL (info), CHAOS_KEEP. Helpers: chaos_report.py.
#
#   bench/chaos.sh [EVENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-5000}"
kills=5
post_seconds="${CHAOS_POST_SECONDS:-40}"   # the posting pace: EVENTS over this many seconds
drain_timeout="${CHAOS_DRAIN_TIMEOUT:-300}"
secret=chaos-webhook-secret
events_token=chaos-events-token
api_token=chaos-api-token
helper="$PWD/bench/chaos_report.py"
work=$(mktemp -d)
daemon="" sim="" sink="" poster="" keep="${CHAOS_KEEP:-0}"
cleanup() {
  for pid in $poster $daemon $sim $sink; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$keep" = 1 ]; then echo "work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 124' INT TERM
began=$(date +%s)

# FLOWD_BIN: a flowd binary to test instead of building this tree. Either way it is copied
# first, so a rebuild during the run cannot swap the binary between two restarts.
if [ -z "${FLOWD_BIN:-}" ]; then cargo build --release --quiet; FLOWD_BIN=target/release/flowd; fi
cp "$FLOWD_BIN" "$work/flowd"
flowd="$work/flowd"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
public_port=$(free_port)
admin_port=$(free_port)
run_id=$(python3 -c 'import uuid; print(uuid.uuid4().hex[:8])')

# The notify sink.
python3 "$helper" sink "$work/sink.port" "$work/sink.jsonl" &
sink=$!
for _ in $(seq 100); do [ -s "$work/sink.port" ] && break; sleep 0.1; done
sink_url="http://127.0.0.1:$(cat "$work/sink.port")/notify"

# The simulator: runs go running after 1 s and finished after 5 s, faults from the start.
cat > "$work/sim.yaml" <<YAML
token: $api_token
webhook_url: http://127.0.0.1:$public_port/webhooks/recrubo
webhook_secret: $secret
script:
  flow_runs: { running_after: 1s, finish_after: 5s }
faults:
  error_rate: 0.2
  throttle_rate: 0.1
  retry_after_seconds: 1
  lose_answer_rate: 0.1
  drop_rate: 0.07
  duplicate_rate: 0.07
  reorder_rate: 0.06
YAML
"$flowd" sim --listen 127.0.0.1:0 --script "$work/sim.yaml" > "$work/sim.out" 2> "$work/sim.log" &
sim=$!
for _ in $(seq 100); do grep -q 'base_url to' "$work/sim.out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/.*base_url to //p' "$work/sim.out")
[ -n "$base" ] || { echo "the simulator did not start:" >&2; cat "$work/sim.log" >&2; exit 2; }

mkdir -p "$work/rules"
cat > "$work/rules/chaos.yaml" <<YAML
rules:
  - name: chaos-screening
    on: { event: application.created }
    concurrency: 200
    do:
      - id: screening
        start_flow_run: { flow: screening, message_thread: "{{event.data.thread}}" }
        retry: { attempts: 20, backoff: 1s, max_backoff: 5s }
        on_status:
          running:
            - notify: { url: "$sink_url", body: { run: "{{run.id}}", status: running } }
              retry: { attempts: 20, backoff: 1s, max_backoff: 5s }
          finished:
            - notify: { url: "$sink_url", body: { run: "{{run.id}}", status: finished } }
              retry: { attempts: 20, backoff: 1s, max_backoff: 5s }
YAML
"$flowd" check "$work/rules" > /dev/null

incarnation=0
start_daemon() {
  incarnation=$((incarnation + 1))
  local log="$work/daemon.$incarnation.log"
  RECRUBO_WEBHOOK_SECRET=$secret RECRUBO_API_TOKEN=$api_token FLOWD_RECRUBO_BASE_URL="$base" \
    FLOWD_RECRUBO_RATE_LIMIT=0 FLOWD_EVENTS_TOKENS=$events_token FLOWD_RECRUBO_RECONCILE_AFTER=2s \
    "$flowd" run --rules "$work/rules" --listen "127.0.0.1:$public_port" \
    --admin-listen "127.0.0.1:$admin_port" --database "sqlite://$work/flowd.db" \
    --log-format json --log-level "${CHAOS_LOG_LEVEL:-info}" 2> "$log" &
  daemon=$!
  for _ in $(seq 200); do grep -q '"flowd listening"' "$log" 2>/dev/null && break; sleep 0.05; done
  grep -q '"flowd listening"' "$log" || { echo "the daemon did not start:" >&2; tail -5 "$log" >&2; keep=1; exit 2; }
  python3 -c 'import time; print(time.time())' >> "$work/restarted"
}
start_daemon

# Post, and kill the daemon at 5 random moments of the posting window (at least 2 s apart).
python3 "$helper" post "http://127.0.0.1:$public_port/events/application.created" "$events_token" \
  "$events" "$run_id" "$post_seconds" "$work/posted.json" &
poster=$!
posting_began=$(date +%s.%N)
read -r -a moments < <(python3 -c '
import random, sys
window, kills = float(sys.argv[1]), int(sys.argv[2])
while True:
    moments = sorted(random.uniform(1.5, max(window - 1, 2)) for _ in range(kills))
    if all(b - a >= 2 for a, b in zip(moments, moments[1:])) or window < 2 * kills + 3:
        break
print(" ".join(f"{m:.2f}" for m in moments))' "$post_seconds" "$kills")
for moment in "${moments[@]}"; do
  # The moments are on the posting clock: restarts take time, so sleep until the moment itself.
  sleep "$(python3 -c "import time; print(max(0, $posting_began + $moment - time.time()))")"
  kill -9 "$daemon" 2>/dev/null || { echo "the daemon had exited by itself: $work/daemon.$incarnation.log"; keep=1; }
  wait "$daemon" 2>/dev/null || true
  down=$(python3 -c 'import random; print(f"{random.uniform(0.2, 1.5):.2f}")')
  still=$(kill -0 "$poster" 2>/dev/null && echo "while posting" || echo "after posting")
  echo "t=${moment}s: kill -9 daemon (incarnation $incarnation) $still, down ${down}s"
  sleep "$down"
  start_daemon
done
wait "$poster"
poster=""
echo "posting done after $(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["seconds"], 1))' "$work/posted.json") s; waiting for the work to drain"

status=0
python3 "$helper" report --db "$work/flowd.db" --sim "$base" --token "$api_token" \
  --sink "$work/sink.jsonl" --posted "$work/posted.json" --restarted "$work/restarted" \
  --details "$work/details.json" --timeout "$drain_timeout" || status=$?
kill -0 "$daemon" 2>/dev/null || { echo "the daemon exited by itself: $work/daemon.$incarnation.log"; status=1; }
echo "daemon restarts: $((incarnation - 1)); whole run: $(( $(date +%s) - began )) s"
[ "$status" = 0 ] || keep=1
exit "$status"
