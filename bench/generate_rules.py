#!/usr/bin/env python3
"""Writes a synthetic rule set: N rules spread over F files, realistic in shape (templates,
conditions, on_status handlers, a schedule in every tenth rule).

    bench/generate_rules.py OUT_DIR [--rules 10000] [--files 100]

The criterion bench (benches/load_rules.rs) generates the same shape in Rust."""
import argparse
import os

RULE = """  - name: rule-{n}
    description: Synthetic rule {n} for the loading benchmark.
    on: {trigger}
    if: event.data.vacancy.open && event.data.score >= {threshold}
    do:
      - id: screening
        start_flow_run:
          flow: "{{{{vars.flow}}}}"
          message_thread: "{{{{event.data.message_thread_id}}}}"
          state: {{ candidate: "{{{{event.data.candidate_id}}}}", rule: "{{{{rule}}}}", n: {n} }}
        retry: {{ attempts: 5, backoff: 2s }}
        on_status:
          finished:
            - if: run.state.passed == true
              notify:
                url: "{{{{secrets.hook}}}}"
                body: {{ text: "{{{{upper event.data.name}}}} passed rule {n}" }}
          timeout:
            - update_flow_run: {{ id: "{{{{run.id}}}}", state: {{}} }}
      - log: "rule {n} started {{{{steps.screening.id}}}}"
"""


def trigger(n):
    if n % 10 == 0:
        return '{ schedule: { cron: "%d 8 * * 1-5", timezone: Europe/Amsterdam } }' % (n % 60)
    return "{ event: application.created.%d }" % (n % 50)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--rules", type=int, default=10000)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    per_file = args.rules // args.files
    for f in range(args.files):
        with open(os.path.join(args.out, "rules-%03d.yaml" % f), "w") as out:
            out.write("vars:\n  flow: 3f1c0c3e-8d4e-4c89-9a55-1f8a3c0d2b11\nrules:\n")
            for i in range(per_file):
                n = f * per_file + i
                out.write(RULE.format(n=n, trigger=trigger(n), threshold=n % 10))


if __name__ == "__main__":
    main()
