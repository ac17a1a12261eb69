#!/usr/bin/env bash
# Intake throughput: POST /events/{type} accepted durably (2xx after the SQLite commit), with
# wrk at 64 connections, keep-alive. The rule set holds RULES rules that do not match the event
# type posted (matching cost must stay flat), plus one that does when MATCH=1.
# Needs wrk (apt-get install wrk). Loopback only; stops by itself.
#
#   RULES=10 bench/intake_load.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
rules="${RULES:-10}"
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
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
  --database "sqlite://$work/flowd.db" --log-format json --log-level warn,flowd::cli=info 2> "$work/log" &
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
wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/post.lua" "http://$public/events/application.created"
