#!/usr/bin/env python3
"""Helpers of bench/chaos.sh (standard library only): the notify sink, the event poster, and the
drain wait + report. Not meant to be run by hand; see bench/chaos.sh.

  chaos_report.py sink PORT_FILE OUT_FILE
  chaos_report.py post URL TOKEN EVENTS RUN_ID SECONDS OUT_FILE
  chaos_report.py report --db DB --sim BASE --token T --sink FILE --posted FILE --restarted FILE
                         --timeout SECONDS
"""

import argparse
import http.client
import json
import os
import queue
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# --- the notify sink -----------------------------------------------------------------------------

def sink(port_file, out_file):
    lock = threading.Lock()
    out = open(out_file, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = {"raw": body.decode("utf-8", "replace")}
            with lock:
                out.write(json.dumps({"at": time.time(), "body": parsed}) + "\n")
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a daemon killed mid-request cuts its connection: not worth a traceback

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


# --- the poster ----------------------------------------------------------------------------------

def post(url, token, events, run_id, seconds, out_file, workers=16, deadline=240):
    """Posts `events` events at an even pace over `seconds`, each with its own Idempotency-Key
    and thread; an event is posted again until it gets a 2xx (connection refused while the
    daemon is down, a cut connection when it is killed mid-request, 503)."""
    parsed = urllib.parse.urlsplit(url)
    host, port, path = parsed.hostname, parsed.port, parsed.path
    start = time.time()
    stop_at = start + deadline
    pace = seconds / max(events, 1)
    todo = queue.Queue()
    for i in range(events):
        todo.put(i)
    lock = threading.Lock()
    results = {}          # key -> {"status": final 2xx, "tries": n, "first": first outcome}
    outcomes = Counter()  # every answer or error, by kind

    def worker():
        conn = None
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            due = start + i * pace
            now = time.time()
            if due > now:
                time.sleep(due - now)
            key = f"chaos-{run_id}-{i}"
            body = json.dumps({"thread": f"thread-{run_id}-{i}", "n": i}).encode()
            tries, first, final = 0, None, None
            while time.time() < stop_at:
                tries += 1
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(host, port, timeout=15)
                    conn.request("POST", path, body=body, headers={
                        "Authorization": f"Bearer {token}",
                        "Idempotency-Key": key,
                        "Content-Type": "application/json",
                    })
                    answer = conn.getresponse()
                    answer.read()
                    kind = str(answer.status)
                    if answer.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as err:
                    kind = type(err).__name__
                    if conn is not None:
                        conn.close()
                    conn = None
                with lock:
                    outcomes[kind] += 1
                first = first or kind
                if kind.startswith("2"):
                    final = int(kind)
                    break
                if kind in ("401", "403", "400", "413", "415"):
                    break  # not worth repeating: the script is wrong
                time.sleep(0.2)
            with lock:
                results[key] = {"status": final, "tries": tries, "first": first,
                                "accepted_at": time.time() if final else None}

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = {k: v for k, v in results.items() if v["status"]}
    summary = {
        "events": events,
        "accepted": len(accepted),
        "stored_202": sum(1 for v in accepted.values() if v["status"] == 202),
        "duplicate_200": sum(1 for v in accepted.values() if v["status"] == 200),
        "reposted": sum(1 for v in results.values() if v["tries"] > 1),
        "not_accepted": sorted(k for k, v in results.items() if not v["status"]),
        "outcomes": dict(outcomes),
        "first_at": start,
        "last_accepted_at": max((v["accepted_at"] for v in accepted.values()), default=None),
        "seconds": time.time() - start,
        "threads": {k: f"thread-{run_id}-{k.rsplit('-', 1)[1]}" for k in accepted},
    }
    with open(out_file, "w") as f:
        json.dump(summary, f)


# --- drain + report ------------------------------------------------------------------------------

def connect(db):
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def scalar(conn, sql, *args):
    return conn.execute(sql, args).fetchone()[0]


def drain_state(db):
    conn = connect(db)
    try:
        return {
            "external_events": scalar(conn, "SELECT count(*) FROM events WHERE source = 'event'"),
            "unprocessed": scalar(conn, "SELECT count(*) FROM events WHERE processed_at IS NULL"),
            "pending": scalar(conn, "SELECT count(*) FROM executions WHERE status = 'pending'"),
            "following": scalar(conn, "SELECT count(*) FROM followed WHERE terminal = 0 AND gone_at IS NULL"),
            "followed": scalar(conn, "SELECT count(*) FROM followed"),
        }
    finally:
        conn.close()


def sim_get(url, token, tries=200):
    """GET with retries: the simulator's faults apply to reads too."""
    last = None
    for _ in range(tries):
        try:
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=15) as answer:
                return json.load(answer)
        except (OSError, http.client.HTTPException, ValueError) as err:
            last = err
            time.sleep(0.1)
    raise RuntimeError(f"GET {url} kept failing: {last}")


def sim_runs(base, token):
    runs, number = [], 1
    while True:
        doc = sim_get(f"{base}/flow-runs?page%5Bsize%5D=100&page%5Bnumber%5D={number}", token)
        runs.extend(doc["data"])
        last_page = doc["meta"]["page"]["lastPage"]
        if number >= last_page:
            return runs
        number += 1


def report(args):
    posted = json.load(open(args.posted))
    restarted_at = float(open(args.restarted).read().split()[-1])
    accepted = posted["accepted"]
    start = time.time()
    deadline = start + args.timeout
    state = None
    drained_at = None
    while time.time() < deadline:
        try:
            state = drain_state(args.db)
        except sqlite3.Error as err:  # busy during a checkpoint: try again
            print(f"  (store not readable: {err})", file=sys.stderr)
            time.sleep(1)
            continue
        if (state["external_events"] >= accepted and state["unprocessed"] == 0
                and state["pending"] == 0 and state["following"] == 0):
            drained_at = time.time()
            break
        time.sleep(1)
    print(f"drain state at the end of the wait: {json.dumps(state)}")

    conn = connect(args.db)
    thread_of_key = posted["threads"]
    our_threads = set(thread_of_key.values())

    # FlowRuns in the simulator, by thread.
    runs = sim_runs(args.sim, args.token)
    by_thread = defaultdict(list)
    for run in runs:
        by_thread[run["attributes"].get("messageThreadId")].append(run)
    duplicates = {t: rs for t, rs in by_thread.items() if len(rs) > 1}
    lost = sorted(t for t in our_threads if t not in by_thread)
    sim_status = Counter(r["attributes"].get("status") for r in runs)

    # Executions in flowd's store.
    by_status = Counter()
    for row in conn.execute("SELECT handler_status IS NOT NULL AS handler, status, count(*) AS n "
                            "FROM executions GROUP BY 1, 2"):
        by_status[("handler" if row["handler"] else "rule", row["status"])] = row["n"]
    finished = sum(n for (_, s), n in by_status.items() if s != "pending")
    followed = {row["resource_id"] for row in conn.execute("SELECT resource_id FROM followed")}
    pairs = Counter()
    for row in conn.execute("SELECT json_extract(context, '$.run.id') AS run, handler_status AS s, "
                            "count(*) AS n FROM executions WHERE handler_status IS NOT NULL "
                            "GROUP BY 1, 2"):
        pairs[(row["run"], row["s"])] = row["n"]
    sim_ids = {r["id"] for r in runs if r["attributes"].get("messageThreadId") in our_threads}
    expected = {(run, s) for run in sim_ids for s in ("running", "finished")}
    once = sum(1 for p in expected if pairs.get(p) == 1)
    twice = sorted(p for p in expected if pairs.get(p, 0) > 1)
    never = sorted(p for p in expected if p not in pairs)
    never_by_status = Counter(s for _, s in never)
    # A status flowd was told about (a webhook or a poll in its inbox) but fired no handler for,
    # versus one it never learned of (webhook dropped and no poll saw the run in that status).
    seen = {(row[0], row[1]) for row in conn.execute(
        "SELECT json_extract(payload, '$.data.attributes.resource.id'), "
        "json_extract(payload, '$.data.attributes.resource.attributes.status') "
        "FROM events WHERE source != 'event'")}
    never_seen = [p for p in never if p in seen]
    # Of those: did the status reach flowd before a later one (in order), or only after it (a
    # late webhook retry, ignored as older by design)?
    in_order = []
    for run, status in never_seen:
        rows = conn.execute(
            "SELECT json_extract(payload, '$.data.attributes.resource.attributes.status'), "
            "json_extract(payload, '$.data.attributes.resource.attributes.updatedAt'), received_at "
            "FROM events WHERE source != 'event' AND "
            "json_extract(payload, '$.data.attributes.resource.id') = ?", (run,)).fetchall()
        mine = [r for r in rows if r[0] == status]
        first_mine = min(r[2] for r in mine)
        later = [r[2] for r in rows if r[0] != status and r[1] > max(m[1] for m in mine)]
        if not later or first_mine < min(later):
            in_order.append((run, status))
    stray = sorted(p for p in pairs if p not in expected)
    not_followed = sorted(sim_ids - followed)

    # The sink.
    received = Counter()
    lines = 0
    for line in open(args.sink):
        body = json.loads(line)["body"]
        received[(body.get("run"), body.get("status"))] += 1
        lines += 1
    sink_dup = {p: n for p, n in received.items() if n > 1}
    sink_missing = sorted(p for p in expected if p not in received)

    dead = Counter()
    dead_examples = []
    for row in conn.execute("SELECT kind, error, execution_id FROM dead_letters"):
        dead[row["kind"]] += 1
        if len(dead_examples) < 3:
            dead_examples.append(f"{row['kind']} {row['execution_id']}: {row['error'][:160]}")
    events_by_source = dict(conn.execute("SELECT source, count(*) FROM events GROUP BY 1").fetchall())
    adopted = scalar(conn, "SELECT count(*) FROM step_runs WHERE note LIKE 'adopted%'")

    def fmt(counter):
        return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "none"

    print("--- chaos results ---")
    print(f"events accepted:        {accepted} of {posted['events']} (distinct keys with a 2xx: "
          f"{posted['stored_202']} stored 202, {posted['duplicate_200']} duplicate 200; "
          f"{posted['reposted']} re-posted; in the store: {events_by_source.get('event', 0)})")
    print(f"poster answers:         {fmt(Counter(posted['outcomes']))}")
    print(f"inbox by source:        {fmt(Counter(events_by_source))}")
    print(f"executions finished:    {finished} (rule: "
          f"{fmt(Counter({s: n for (k, s), n in by_status.items() if k == 'rule'}))}; handler: "
          f"{fmt(Counter({s: n for (k, s), n in by_status.items() if k == 'handler'}))})")
    print(f"FlowRuns created:       {len(runs)} in the simulator ({fmt(sim_status)}) over "
          f"{len(by_thread)} threads; adopted after a lost answer: {adopted}")
    print(f"DUPLICATES:             {len(duplicates)} threads with more than one FlowRun")
    print(f"LOST:                   {len(lost)} threads with no FlowRun")
    print(f"runs not followed:      {len(not_followed)}")
    print(f"handler pairs:          {len(expected)} (run, status) expected: {once} fired once, "
          f"{len(twice)} more than once, {len(never)} never ({fmt(never_by_status)}; "
          f"{len(never_seen)} of them reached flowd's inbox: {len(in_order)} before the next status, "
          f"{len(never_seen) - len(in_order)} only after it); "
          f"{len(stray)} for runs outside these threads")
    print(f"sink notifications:     {lines} received, {len(received)} distinct (run, status), "
          f"{len(sink_dup)} received more than once (at-least-once, allowed), "
          f"{len(sink_missing)} expected never received")
    print(f"dead letters:           {sum(dead.values())} ({fmt(dead)})")
    for example in dead_examples:
        print(f"  {example}")
    if drained_at:
        print(f"drain:                  {drained_at - restarted_at:.1f} s after the last restart, "
              f"{drained_at - posted['last_accepted_at']:.1f} s after the last event was accepted")
    else:
        print(f"drain:                  NOT DRAINED within {args.timeout} s of the end of posting")

    # Evidence for whoever looks into a failure: the simulator's journals, the store, the logs.
    root = args.sim.rsplit("/public/v2", 1)[0]
    deliveries = sim_get(f"{root}/_sim/deliveries", args.token)
    requests = sim_get(f"{root}/_sim/requests", args.token)
    folder = args.details.rsplit("/", 1)[0]
    json.dump(deliveries, open(f"{folder}/sim_deliveries.json", "w"))
    json.dump(requests, open(f"{folder}/sim_requests.json", "w"))
    attempts = Counter("dropped" if "dropped" in (d.get("error") or "") else
                       "answered 2xx" if (d.get("response_status") or 0) // 100 == 2 else
                       "failed" for d in deliveries)
    print(f"webhook deliveries:     {len(deliveries)} attempts ({fmt(attempts)})")

    def deliveries_of(run):
        return [f"{d['status']}#{d['attempt']}@{d['at_ms'] / 1000:.1f}s:"
                f"{d.get('response_status') or d.get('error')}"
                for d in deliveries if d["resource"].endswith(run)]

    def polls_of(run):
        return [f"{r['method']}@{r['at_ms'] / 1000:.1f}s:{r.get('fault') or r['status']}"
                for r in requests if r["path"].endswith(run)]

    def executions_of(run, status):
        return [dict(row) for row in conn.execute(
            "SELECT e.id, e.event_id, e.status, e.created_at, ev.source, ev.dedup_key, "
            "ev.received_at FROM executions e LEFT JOIN events ev ON ev.id = e.event_id "
            "WHERE json_extract(e.context, '$.run.id') = ? AND e.handler_status = ?",
            (run, status))]

    def thread_evidence(thread, rs):
        rows = [dict(row) for row in conn.execute(
            "SELECT e.id, e.status, s.attempts, s.status AS step, s.note, s.error, s.output "
            "FROM executions e LEFT JOIN step_runs s ON s.execution_id = e.id "
            "WHERE e.handler_status IS NULL AND json_extract(e.context, '$.event.data.thread') = ?",
            (thread,))]
        return (f"{thread}: runs " + ", ".join(f"{r['id']} created {r['attributes'].get('createdAt')}"
                                              for r in rs)
                + f"; rule execution(s): {json.dumps(rows)[:800]}")

    def show(title, items):
        if items:
            print(f"{title} (first {min(5, len(items))} of {len(items)}):")
            for item in items[:5]:
                print(f"  {item}")

    def inbox_of(run):
        return [f"#{row[0]} {row[1]} {row[2]} received {row[3][11:23]} processed "
                f"{(row[4] or '-')[11:23]}" for row in conn.execute(
                    "SELECT id, source, json_extract(payload, "
                    "'$.data.attributes.resource.attributes.status'), received_at, processed_at "
                    "FROM events WHERE source != 'event' AND "
                    "json_extract(payload, '$.data.attributes.resource.id') = ? ORDER BY id", (run,))]

    def followed_of(run):
        row = conn.execute("SELECT f.remote_updated_at, f.changed_at, s.note FROM followed f "
                           "LEFT JOIN step_runs s ON s.execution_id = f.execution_id "
                           "WHERE f.resource_id = ?", (run,)).fetchone()
        return (f"recorded {row[1][11:23]} with updatedAt {row[0][11:23]}"
                + ("; adopted after a lost answer" if row[2] and row[2].startswith("adopted")
                   else "")) if row else "not followed"

    show("evidence: handlers never fired although the status reached flowd before the next one "
         "(inbox; followed)",
         [f"{run} {s}: inbox {inbox_of(run)}; {followed_of(run)}" for run, s in in_order])
    show("evidence: handlers never fired, the status reached flowd only after the next one "
         "(inbox; followed)",
         [f"{run} {s}: inbox {inbox_of(run)}; {followed_of(run)}"
          for run, s in never_seen if (run, s) not in in_order])
    show("evidence: handlers never fired, status never reached flowd (deliveries; API requests)",
         [f"{run} {s}: deliveries {deliveries_of(run)}; requests {polls_of(run)}"
          for run, s in never if (run, s) not in seen])
    show("evidence: handlers fired more than once (executions and the events behind them)",
         [f"{run} {s}: {json.dumps(executions_of(run, s))}; deliveries {deliveries_of(run)}"
          for run, s in twice])
    show("evidence: duplicate threads",
         [thread_evidence(t, rs) for t, rs in sorted(duplicates.items())])

    show("lost threads", lost)
    show("runs not followed", not_followed)
    show("expected but never at the sink", sink_missing)
    with open(args.details, "w") as f:
        json.dump({"duplicates": {t: [r["id"] for r in rs] for t, rs in duplicates.items()},
                   "lost": lost, "twice": twice, "never": never, "not_followed": not_followed,
                   "sink_duplicates": [list(p) + [n] for p, n in sink_dup.items()],
                   "sink_missing": sink_missing, "stray": stray, "never_seen": never_seen, "never_in_order": in_order}, f)
    # Nothing doubled, nothing lost: no duplicate or missing run, every handler exactly once,
    # and all of it done before the drain timeout.
    return 1 if duplicates or lost or twice or never or not drained_at else 0


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "sink":
        sink(*rest)
    elif command == "post":
        url, token, events, run_id, seconds, out_file = rest
        post(url, token, int(events), run_id, float(seconds), out_file)
    elif command == "report":
        parser = argparse.ArgumentParser()
        for name in ("db", "sim", "token", "sink", "posted", "restarted", "details"):
            parser.add_argument(f"--{name}", required=True)
        parser.add_argument("--timeout", type=float, default=300)
        sys.exit(report(parser.parse_args(rest)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
