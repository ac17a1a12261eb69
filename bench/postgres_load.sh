#!/usr/bin/env bash
# Several instances on Postgres (DESIGN 6), against one SQLite instance, in one run:
#
#   1. intake and end to end: wrk posts application events for SECONDS, spread evenly over the
#      instances (one wrk per instance, 64 connections in all); the rule starts a FlowRun at the
#      simulator for each. Intake is wrk's accepted events/s; end to end is runs started per
#      second at the simulator (first to last run's createdAt), after the inbox drained.
#   2. latency, event accepted to step started, at a steady 100 events/s posted to instance A
#      only: with several instances most events are picked up by another one, woken by
#      LISTEN/NOTIFY. Read from the database: the step's started_at minus the event's
#      received_at, split by whether the step ran on the instance that accepted the event.
#
# Needs wrk (apt-get install wrk), psql and a PostgreSQL server (POSTGRES, default
# postgres://postgres@127.0.0.1:5432/test); every configuration gets a schema of its own,
# dropped at the end. Loopback only; stops by itself.
#
#   bench/postgres_load.sh [SECONDS] [CONFIGURATIONS...]     (default: 10 sqlite:1 postgres:1 postgres:2 postgres:3)
#
# FLOWD_BIN=path runs that binary instead of building this checkout (to compare two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
shift || true
configurations=("$@")
[ ${#configurations[@]} -gt 0 ] || configurations=(sqlite:1 postgres:1 postgres:2 postgres:3)
server="${POSTGRES:-postgres://postgres@127.0.0.1:5432/test}"
work=$(mktemp -d)
pids=()
schemas=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for schema in "${schemas[@]}"; do psql -q "$server" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

bin="${FLOWD_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=./target/release/flowd
fi
mkdir -p "$work/rules"
cat > "$work/rules/start.yaml" <<'YAML'
rules:
  - name: start-screening
    on: { event: application.created }
    do:
      - start_flow_run: { flow: screening, message_thread: "{{event.data.thread}}" }
YAML
cat > "$work/post.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local body = '{"thread":"t-' .. counter .. '-' .. math.random(1, 1000000000) .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
LUA

# Starts the simulator; sets $base.
start_sim() {
  "$bin" sim --listen 127.0.0.1:0 --no-default-deliveries > "$work/sim.out" 2> "$work/sim.log" &
  sim=$!
  pids+=("$sim")
  for _ in $(seq 100); do grep -q 'base_url to' "$work/sim.out" 2>/dev/null && break; sleep 0.1; done
  base=$(sed -n 's/.*base_url to //p' "$work/sim.out")
}

# Starts instance $1 on database $2; appends its public address to $publics.
start_instance() {
  local log="$work/log.$1"
  FLOWD_RECRUBO_BASE_URL="$base" RECRUBO_API_TOKEN=bench FLOWD_RECRUBO_RATE_LIMIT=0 \
    "$bin" run --rules "$work/rules" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --database "$2" --log-format json --log-level warn,flowd::daemon=info 2> "$log" &
  pids+=("$!")
  for _ in $(seq 200); do grep -q '"flowd listening"' "$log" 2>/dev/null && break; sleep 0.1; done
  publics+=("$(python3 -c 'import json,sys; [print(e["public"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$log")")
}

runs_total() {
  curl -s -H 'Authorization: Bearer bench' "$base/flow-runs?page%5Bsize%5D=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["meta"]["page"]["total"])'
}

# Waits until the simulator's run count stops growing.
drain() {
  local previous=-1 total
  while true; do
    total=$(runs_total)
    [ "$total" = "$previous" ] && break
    previous=$total
    sleep 2
  done
}

runs_per_second() {
  python3 - "$base" <<'PY'
import json, sys, urllib.request
from datetime import datetime
base = sys.argv[1]
def get(query):
    req = urllib.request.Request(f"{base}/flow-runs?{query}", headers={"Authorization": "Bearer bench"})
    return json.load(urllib.request.urlopen(req))
total = get("page%5Bsize%5D=1")["meta"]["page"]["total"]
first = datetime.fromisoformat(get("sort=createdAt&page%5Bsize%5D=1")["data"][0]["attributes"]["createdAt"])
last = datetime.fromisoformat(get("sort=-createdAt&page%5Bsize%5D=1")["data"][0]["attributes"]["createdAt"])
span = (last - first).total_seconds()
print(f"{total} {total / span:.0f}")
PY
}

# Posts 100 events/s for $seconds to $1; prints how many were accepted.
steady() {
  python3 - "$1" "$seconds" <<'PY'
import http.client, json, sys, time, uuid
host, seconds = sys.argv[1], float(sys.argv[2])
connection = http.client.HTTPConnection(host, timeout=10)
accepted, start, n = 0, time.monotonic(), 0
while time.monotonic() - start < seconds:
    delay = start + n / 100 - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    connection.request("POST", "/events/application.created", json.dumps({"thread": f"steady-{uuid.uuid4()}"}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    accepted += response.status == 202
    n += 1
print(accepted)
PY
}

# Event accepted to step started, p50/p99 in ms: all, and where another instance took it.
latency() {
  local kind=$1 database=$2 accepted_by=$3
  if [ "$kind" = sqlite ]; then
    python3 - "${database#sqlite://}" <<'PY'
import sqlite3, sys
from datetime import datetime
rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT e.received_at, s.started_at FROM step_runs s JOIN executions x ON x.id = s.execution_id JOIN events e ON e.id = x.event_id WHERE e.payload LIKE '%steady-%'").fetchall()
ms = sorted((datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds() * 1000 for a, b in rows)
pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")
print(f"{pick(0.5):.1f} {pick(0.99):.1f} - -")
PY
  else
    psql -qAt "$database" -F' ' -c "
      WITH l AS (SELECT extract(epoch FROM s.started_at - e.received_at) * 1000 AS ms, (to_jsonb(s)->>'instance') <> '$accepted_by' AS other
                 FROM step_runs s JOIN executions x ON x.id = s.execution_id JOIN events e ON e.id = x.event_id
                 WHERE e.payload LIKE '%steady-%')
      SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
             coalesce((SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text FROM l WHERE other), '-'),
             coalesce((SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1)::text FROM l WHERE other), '-')
      FROM l"
  fi
}

printf '%-12s %10s %10s %10s %10s %10s %12s %12s\n' configuration "intake/s" "runs" "e2e/s" "lat p50" "lat p99" "other p50" "other p99"
for configuration in "${configurations[@]}"; do
  kind=${configuration%%:*}
  count=${configuration##*:}
  start_sim
  if [ "$kind" = sqlite ]; then
    database="sqlite://$work/flowd-$kind-$count.db"
  else
    schema="flowd_bench_$(python3 -c 'import uuid; print(uuid.uuid4().hex)')"
    schemas+=("$schema")
    psql -q "$server" -c "CREATE SCHEMA $schema" >/dev/null
    separator='?'; [[ "$server" == *\?* ]] && separator='&'
    database="$server${separator}options=-c%20search_path%3D$schema"
  fi
  publics=()
  for n in $(seq "$count"); do start_instance "$kind-$count-$n" "$database"; done
  # Intake and end to end: one wrk per instance, the connections split between them.
  connections=$((64 / count))
  loads=()
  for public in "${publics[@]}"; do
    wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/post.lua" "http://$public/events/application.created" > "$work/wrk.$public" &
    loads+=("$!")
  done
  wait "${loads[@]}"
  intake=$(cat "$work"/wrk.* | sed -n 's/Requests\/sec: *//p' | python3 -c 'import sys; print(round(sum(float(x) for x in sys.stdin)))')
  rm -f "$work"/wrk.*
  drain
  read -r runs e2e < <(runs_per_second)
  # Latency at a steady rate, posted to instance A only.
  accepted_by=""
  if [ "$kind" = postgres ]; then
    accepted_by=$(curl -s "http://${publics[0]}/readyz" >/dev/null; psql -qAt "$database" -c "SELECT id FROM instances WHERE address = '${publics[0]}'")
  fi
  steady "${publics[0]}" > /dev/null
  sleep 2
  read -r p50 p99 other50 other99 < <(latency "$kind" "$database" "$accepted_by")
  printf '%-12s %10s %10s %10s %10s %10s %12s %12s\n' "$configuration" "$intake" "$runs" "$e2e" "$p50" "$p99" "$other50" "$other99"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
done
echo "(latencies in ms, event accepted to step started; 'other': steps run by an instance that did not accept the event)"
