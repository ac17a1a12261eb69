#!/usr/bin/env bash
# Throughput of the simulator's POST /flow-runs (faults off), keep-alive, 64 connections.
# Needs wrk (apt-get install wrk). Loopback only; stops by itself.
#
#   bench/sim_load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
work=$(mktemp -d)
trap 'kill "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
./target/release/flowd sim --listen 127.0.0.1:0 --no-default-deliveries > "$work/out" 2> "$work/log" &
sim=$!
for _ in $(seq 100); do
  grep -q 'base_url to' "$work/out" 2>/dev/null && break
  sleep 0.1
done
base=$(sed -n 's/.*base_url to //p' "$work/out")
echo "simulator at $base"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer bench"
wrk.headers["Content-Type"] = "application/vnd.api+json"
wrk.body = '{"data":{"type":"flowRuns","attributes":{"flowId":"eb3c92e9-2548-4e4c-95d5-adfb94270c3f","messageThreadId":"7125853f-26ac-4a65-9044-cab092806249","state":{"candidate_ref":"c-1"},"initialMessage":{}}}}'
LUA
wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/post.lua" "$base/flow-runs"
