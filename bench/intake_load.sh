#!/usr/bin/env bash
# Intake throughput: POST /events/{type} accepted durably (2xx after the SQLite commit), with
# wrk at 64 connections, keep-alive. The rule set holds RULES rules that do not match the event
# type posted (matching cost must stay flat). In the same run, the same load against the
# ceiling (benches/intake_ceiling.rs: a bare axum endpoint that parses the JSON and appends it
# to a file, one fsync per batch) and the ratio of the two.
# Needs wrk (apt-get install wrk). Loopback only; stops by itself.
#
#   RULES=10 bench/intake_load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
rules="${RULES:-10}"
work=$(mktemp -d)
trap 'kill "$daemon" "$ceiling" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --bins --bench intake_ceiling
mkdir -p "$work/rules"
python3 - "$work/rules" "$rules" <<'PY'
import sys
out, count = sys.argv[1], int(sys.argv[2])
per_file = max(1, count // 10)
for f in range((count + per_file - 1) // per_file):
    with open(f"{out}/rules-{f:03}.yaml", "w") as h:
        h.write("rules:\n")
        for i in range(f * per_file, min(count, (f + 1) * per_file)):
            h.write(f"  - name: other-{i}\n    on: {{ event: other.{i} }}\n    do: [ {{ log: \"{{{{event.data.n}}}}\" }} ]\n")
PY
./target/release/flowd run --rules "$work/rules" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --database "sqlite://$work/flowd.db" --log-format json --log-level warn,flowd::daemon=info 2> "$work/log" &
daemon=$!
for _ in $(seq 100); do
  grep -q '"flowd listening"' "$work/log" 2>/dev/null && break
  sleep 0.1
done
public=$(python3 -c 'import json,sys; [print(e["public"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$work/log")
echo "daemon on $public with $rules rules"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"name":"Ana","thread":"t-1","vacancy":{"open":true,"title":"Barista"},"n":1}'
LUA
wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/post.lua" "http://$public/events/application.created" | tee "$work/flowd.txt"
kill "$daemon"; wait "$daemon" 2>/dev/null || true

ceiling_bin=$(ls -t target/release/deps/intake_ceiling-* | grep -v '\.d$' | head -1)
"$ceiling_bin" 127.0.0.1:9399 & ceiling=$!
sleep 1
echo "ceiling (bare axum + JSON + group-committed append):"
wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/post.lua" "http://127.0.0.1:9399/events/application.created" | tee "$work/ceiling.txt"
rate() { awk '/Requests\/sec/ {print $2}' "$1"; }
python3 -c "import sys; f, c = float(sys.argv[1]), float(sys.argv[2]); print(f'flowd {f:.0f}/s, ceiling {c:.0f}/s, ratio {f / c:.2f}')" "$(rate "$work/flowd.txt")" "$(rate "$work/ceiling.txt")"
