//! Loading and validating 10,000 rules spread over 100 files (the target: under 1 s in release).
//! The rule shape matches bench/generate_rules.py.

#![allow(missing_docs)]

use std::fmt::Write as _;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};

fn generate(dir: &Path, rules: usize, files: usize) {
    let per_file = rules / files;
    for file in 0..files {
        let mut text =
            String::from("vars:\n  flow: 3f1c0c3e-8d4e-4c89-9a55-1f8a3c0d2b11\nrules:\n");
        for index in 0..per_file {
            let n = file * per_file + index;
            let trigger = if n.is_multiple_of(10) {
                format!(
                    "{{ schedule: {{ cron: \"{} 8 * * 1-5\", timezone: Europe/Amsterdam }} }}",
                    n % 60
                )
            } else {
                format!("{{ event: application.created.{} }}", n % 50)
            };
            let _ = write!(
                text,
                r#"  - name: rule-{n}
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
"#,
                threshold = n % 10
            );
        }
        std::fs::write(dir.join(format!("rules-{file:03}.yaml")), text).expect("write");
    }
}

fn load_10k_rules(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path(), 10_000, 100);
    let paths = vec![dir.path().to_path_buf()];
    let check = flowd::rules::load_rule_set(&paths);
    assert_eq!(
        check.result.as_ref().map(|set| set.len()).ok(),
        Some(10_000)
    );
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("10k_rules_100_files", |b| {
        b.iter(|| {
            let outcome = flowd::rules::load_rule_set(&paths);
            assert!(outcome.result.is_ok());
        })
    });
    group.finish();
}

criterion_group!(benches, load_10k_rules);
criterion_main!(benches);
