#!/usr/bin/env bash
# p99 of GET /healthz while the rule set (10,000 rules in 100 files) is reloaded over and over.
# Needs wrk (apt-get install wrk) and python3. Loopback only; stops by itself.
#
#   bench/reload_latency.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
python3 bench/generate_rules.py "$work/rules" --rules 10000 --files 100
FLOWD_SECRET_HOOK=https://hooks.example/x ./target/release/flowd run \
  --rules "$work/rules" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json \
  2> "$work/log" &
daemon=$!
for _ in $(seq 100); do
  grep -q '"flowd listening"' "$work/log" 2>/dev/null && break
  sleep 0.1
done
public=$(python3 -c 'import json,sys; [print(e["public"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$work/log")
admin=$(python3 -c 'import json,sys; [print(e["admin"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$work/log")
echo "daemon on $public (admin $admin)"

# Reload continuously: change one file (so every reload swaps a new set) and ask for a reload.
(
  end=$((SECONDS + seconds))
  n=0
  while [ $SECONDS -lt $end ]; do
    n=$((n + 1))
    sed -i "s/Synthetic rule 0 for the loading benchmark.*/Synthetic rule 0 for the loading benchmark, edit $n./" "$work/rules/rules-000.yaml"
    curl -s -o /dev/null -X POST "http://$admin/api/v1/reload"
  done
  echo "reloads done: $n"
) &
reloader=$!

wrk -t1 -c10 -d"${seconds}s" --latency "http://$public/healthz"
wait "$reloader"
echo "reloads recorded by the daemon:"
curl -s "http://$admin/metrics" | grep '^flowd_rules_reloads_total'
