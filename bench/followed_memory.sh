#!/usr/bin/env bash
# Resident memory of flowd with 1,000,000 followed runs in its SQLite store (target: < 200 MB).
# Followed runs live in the store, not in memory; this checks that it stays that way.
#
#   bench/followed_memory.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-1000000}"
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
mkdir -p "$work/rules"
cat > "$work/rules/r.yaml" <<'YAML'
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: f, message_thread: "{{event.data.thread}}" }
        on_status:
          finished:
            - log: "finished {{run.id}}"
YAML
start() {
  RECRUBO_WEBHOOK_SECRET=s ./target/release/flowd run --rules "$work/rules" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --database "sqlite://$work/flowd.db" --log-format json --log-level warn,flowd::daemon=info 2> "$work/log" &
  daemon=$!
  for _ in $(seq 300); do grep -q '"flowd listening"' "$work/log" 2>/dev/null && break; sleep 0.1; done
}
start   # creates the schema
kill "$daemon"; wait "$daemon" 2>/dev/null || true
python3 - "$work/flowd.db" "$count" <<'PY'
import json, sqlite3, sys, uuid
db, count = sys.argv[1], int(sys.argv[2])
con = sqlite3.connect(db)
context = json.dumps({"event": {"type": "application.created", "data": {"thread": "t", "name": "Ana"}}, "vars": {}, "rule": "screen", "steps": {}})
rows = ((str(uuid.UUID(int=i)), "flowRuns", "screen", "screening", "exec", context, "running", None, "2026-01-01T00:00:00Z", 0) for i in range(count))
con.executemany("INSERT INTO followed VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
con.commit()
print("followed runs:", con.execute("SELECT count(*) FROM followed").fetchone()[0])
PY
start
public=$(python3 -c 'import json,sys; [print(e["public"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$work/log")
# Status changes for 2,000 of them, as webhooks.
for i in $(seq 1 2000); do
  id=$(python3 -c "import uuid; print(uuid.UUID(int=$i))")
  printf '{"data":{"type":"webhookPayload","id":"log-%s","attributes":{"event":"update","fields":["status"],"resource":{"id":"%s","type":"flowRuns","attributes":{"status":"finished","updatedAt":"2026-01-02T00:00:00Z"}}}}}\n' "$i" "$id"
done > "$work/hooks"
while read -r body; do
  curl -s -o /dev/null -H 'X-Recrubo-Webhook-Secret: s' -H 'Content-Type: application/json' -d "$body" "http://$public/webhooks/recrubo"
done < "$work/hooks"
sleep 3
grep -E 'VmRSS|VmHWM' "/proc/$daemon/status"
