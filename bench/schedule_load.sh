#!/usr/bin/env bash
# 10,000 schedule rules firing every minute: lateness of the ticks (fired_at - scheduled_at,
# from flowd_schedule_lateness_seconds), the time to record them durably
# (flowd_schedule_record_seconds) and flowd's CPU between ticks. Runs MINUTES minute
# boundaries (default 2). Loopback only; stops by itself.
#
#   bench/schedule_load.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-2}"
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet
mkdir -p "$work/rules"
python3 - "$work/rules" <<'PY'
import sys
out = sys.argv[1]
for f in range(100):
    with open(f"{out}/schedules-{f:03}.yaml", "w") as h:
        h.write("rules:\n")
        for i in range(100):
            n = f * 100 + i
            h.write(f"  - name: every-minute-{n}\n    on: {{ schedule: \"* * * * *\" }}\n    do: [ {{ log: \"tick {n} {{{{event.scheduled_at}}}}\" }} ]\n")
PY
./target/release/flowd run --rules "$work/rules" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --database "sqlite://$work/flowd.db" --log-format json --log-level warn,flowd::daemon=info 2> "$work/log" &
daemon=$!
for _ in $(seq 300); do grep -q '"flowd listening"' "$work/log" 2>/dev/null && break; sleep 0.1; done
admin=$(python3 -c 'import json,sys; [print(e["admin"]) for e in map(json.loads, open(sys.argv[1])) if e.get("message")=="flowd listening"]' "$work/log")
ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
hz=$(getconf CLK_TCK)
for m in $(seq "$minutes"); do
  # Sleep to 20 s after the next minute boundary (the ticks and their executions are done by then),
  # then measure CPU over the 30 quiet seconds that follow.
  now=$(date +%s); wait_s=$(( 60 - now % 60 + 20 )); sleep "$wait_s"
  before=$(ticks); sleep 30; after=$(ticks)
  echo "minute $m: idle CPU between ticks: $(python3 -c "print(f'{($after - $before) / $hz / 30 * 100:.2f}%')")"
done
curl -s "http://$admin/metrics" > "$work/metrics"
grep -E '^flowd_schedule_ticks_total\{rule="every-minute-0"' "$work/metrics"
# p99 from the cumulative buckets: the smallest bound holding 99% of the observations.
python3 - "$work/metrics" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for name in ("flowd_schedule_lateness_seconds", "flowd_schedule_record_seconds"):
    buckets = [(float(le), float(n)) for le, n in re.findall(name + r'_bucket\{le="([0-9.e+-]+)"\} (\S+)', text)]
    count = float(re.search(name + r"_count (\S+)", text).group(1))
    total = float(re.search(name + r"_sum (\S+)", text).group(1))
    p99 = next((le for le, n in sorted(buckets) if n >= 0.99 * count), float("inf"))
    p50 = next((le for le, n in sorted(buckets) if n >= 0.5 * count), float("inf"))
    print(f"{name}: {count:.0f} observations, mean {total / count * 1000:.1f} ms, p50 <= {p50 * 1000:.0f} ms, p99 <= {p99 * 1000:.0f} ms")
PY
echo "ticks fired: $(curl -s "http://$admin/metrics" | grep -c 'flowd_schedule_ticks_total{rule="every-minute-[0-9]*",result="fired"}') rules"
