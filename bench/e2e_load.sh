#!/usr/bin/env bash
# End to end: events → rule → POST /flow-runs at the simulator. wrk posts events for SECONDS;
# the script then waits for the runs to stop growing and reports runs started per second
# (from the first to the last run's createdAt, as the simulator recorded them).
# Needs wrk (apt-get install wrk). Loopback only; stops by itself.
#
#   bench/e2e_load.sh [SECONDS]
#
# FLOW_CONTROL=1 gives the rule a key (one per event: many distinct keys) and
# `concurrency: { limit: 1, mode: queue }`, so that the cost of flow control on the common
# path is measured against the same rule without it (DESIGN 2.5; run both in one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
work=$(mktemp -d)
trap 'kill "$daemon" "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
./target/release/flowd sim --listen 127.0.0.1:0 --no-default-deliveries > "$work/sim.out" 2> "$work/sim.log" &
sim=$!
for _ in $(seq 100); do grep -q 'base_url to' "$work/sim.out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/.*base_url to //p' "$work/sim.out")
mkdir -p "$work/rules"
if [ "${FLOW_CONTROL:-0}" = 1 ]; then
  flow_control='    key: "{{event.data.thread}}"
    concurrency: { limit: 1, mode: queue }'
else
  flow_control=''
fi
cat > "$work/rules/start.yaml" <<YAML
rules:
  - name: start-screening
    on: { event: application.created }
$flow_control
    do:
      - start_flow_run: { flow: screening, message_thread: "{{event.data.thread}}" }
YAML
echo "flow control: ${FLOW_CONTROL:-0}"
FLOWD_RECRUBO_BASE_URL="$base" RECRUBO_API_TOKEN=bench FLOWD_RECRUBO_RATE_LIMIT=0 \
  ./target/release/flowd run --rules "$work/rules" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --database "sqlite://$work/flowd.db" --log-format json --log-level warn,flowd::daemon=info 2> "$work/log" &
daemon=$!
for _ in $(seq 100); do grep -q '"flowd listening"' "$work/log" 2>/dev/null && break; sleep 0.1; done
public=$(python3 -c 'import json,sys; [print(e["public"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$work/log")
cat > "$work/post.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local body = '{"thread":"t-' .. counter .. '-' .. math.random(1, 1000000000) .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
LUA
wrk -t2 -c64 -d"${seconds}s" -s "$work/post.lua" "http://$public/events/application.created" | grep -E "Requests/sec|requests in"
previous=-1
while true; do
  total=$(curl -s -H 'Authorization: Bearer bench' "$base/flow-runs?page%5Bsize%5D=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["meta"]["page"]["total"])')
  [ "$total" = "$previous" ] && break
  previous=$total
  sleep 2
done
python3 - "$base" "$total" <<'PY'
import json, sys, urllib.request
from datetime import datetime
base, total = sys.argv[1], int(sys.argv[2])
def page(sort):
    req = urllib.request.Request(f"{base}/flow-runs?sort={sort}&page%5Bsize%5D=1", headers={"Authorization": "Bearer bench"})
    return json.load(urllib.request.urlopen(req))["data"][0]["attributes"]["createdAt"]
first, last = datetime.fromisoformat(page("createdAt")), datetime.fromisoformat(page("-createdAt"))
span = (last - first).total_seconds()
print(f"runs started: {total} in {span:.2f} s = {total / span:.0f} runs/s")
PY
