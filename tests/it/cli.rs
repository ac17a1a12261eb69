//! `flowd check` and `flowd schema` as a user runs them.

use crate::support::flowd;

#[test]
fn check_exits_0_on_valid_rules_and_78_on_invalid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = flowd(&["check", &format!("{root}/rules")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");

    let (code, out) = flowd(&[
        "check",
        &format!("{root}/tests/corpus/broken/bad-cron.yaml"),
        &format!("{root}/tests/corpus/broken/unknown-var.yaml"),
    ]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("bad-cron.yaml:3:29"), "{out}");
    assert!(out.contains("unknown-var.yaml"), "{out}");
    // Both files name their rule `r1`: a duplicate across files is a problem of its own.
    assert!(out.contains("duplicate rule name `r1`"), "{out}");
    assert!(out.contains("error: 3 problems in 2 files"), "{out}");
}

#[test]
fn check_reports_json_for_editors() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = flowd(&[
        "check",
        "--format",
        "json",
        &format!("{root}/tests/corpus/broken/unknown-step-field.yaml"),
    ]);
    assert_eq!(code, 78);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["valid"], false);
    let diagnostic = &report["diagnostics"][0];
    assert_eq!(diagnostic["code"], "unknown-field");
    assert_eq!(diagnostic["line"], 7);
    assert_eq!(diagnostic["column"], 11);
    assert_eq!(diagnostic["rule"], "r1");
    assert_eq!(diagnostic["hint"], "did you mean `message_thread`?");
}

#[test]
fn schema_is_json_schema() {
    let (code, out) = flowd(&["schema"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(schema["title"], "flowd rule file");
    assert!(schema["properties"]["rules"].is_object());
}

#[test]
fn every_problem_is_reported_not_only_the_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "rules:\n  - name: screening\n    on: { schedule: { cron: \"0 8 * * *\", timezone: Mars/Olympus } }\n    do:\n      - log: \"{{run.id}}\"\n      - log: \"{{steps.nope.id}}\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("b.yaml"),
        "rules:\n  - name: screening\n    on: { event: x }\n    do: [ { log: x } ]\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("c.yaml"),
        "rules:\n  - name: c\n    on: { evnt: x }\n    do: [ { log: x } ]\n",
    )
    .expect("write");
    let (code, out) = flowd(&[
        "check",
        "--format",
        "json",
        dir.path().to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, 78);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let codes: Vec<(String, String, u64)> = report["diagnostics"]
        .as_array()
        .expect("list")
        .iter()
        .map(|d| {
            let file = d["file"].as_str().unwrap_or_default();
            let name = file.rsplit('/').next().unwrap_or_default().to_owned();
            (
                name,
                d["code"].as_str().unwrap_or_default().to_owned(),
                d["line"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("a.yaml".to_owned(), "timezone".to_owned(), 3),
            ("a.yaml".to_owned(), "reference".to_owned(), 5),
            ("a.yaml".to_owned(), "reference".to_owned(), 6),
            ("b.yaml".to_owned(), "duplicate".to_owned(), 2),
            ("c.yaml".to_owned(), "unknown-field".to_owned(), 3),
        ]
    );
    let duplicate = &report["diagnostics"][3];
    assert!(
        duplicate["hint"]
            .as_str()
            .unwrap_or_default()
            .contains("a.yaml:2"),
        "{duplicate}"
    );
}

#[test]
fn check_on_a_missing_folder_says_so() {
    let (code, out) = flowd(&["check", "/definitely/not/here"]);
    assert_eq!(code, 78);
    assert!(out.contains("cannot read `/definitely/not/here`"), "{out}");
}

#[test]
fn every_shipped_rule_file_has_tests_and_they_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = flowd(&[
        "test",
        &format!("{root}/rules"),
        &format!("{root}/examples"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test result: ok."), "{out}");
    for folder in ["rules", "examples"] {
        let outcome = flowd::rules::load_rule_set(&[format!("{root}/{folder}").into()]);
        let set = outcome.result.expect("valid");
        for file in &set.files {
            assert!(
                set.rules()
                    .iter()
                    .any(|rule| rule.file == *file && !rule.tests.is_empty()),
                "{} has no tests",
                file.display()
            );
        }
    }
}

#[test]
fn a_failing_rule_test_exits_1_with_expected_and_actual() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"rules:
  - name: greet
    on: { event: hello }
    do:
      - id: run
        start_flow_run: { flow: f, message_thread: "{{event.data.thread}}" }
        on_status:
          finished:
            - notify: { url: "https://x.example/hook", body: { text: "hi {{event.data.name}}: {{run.state.answer}}" } }
    tests:
      - name: wrong name
        event: { data: { thread: t, name: Ana } }
        run_updates: [{ status: finished, state: { answer: "yes" } }]
        expect:
          steps:
            - start_flow_run: { flow: f, message_thread: t }
            - notify: { body: { text: "hi Bo: yes" } }
      - name: the missing thread is an error
        event: { data: { name: Ana } }
        expect: { error: "event.data.thread" }
"#,
    )
    .expect("write");
    let (code, out) = flowd(&["test", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("test greet::wrong name ... FAILED"), "{out}");
    assert!(
        out.contains("test greet::the missing thread is an error ... ok"),
        "{out}"
    );
    assert!(
        out.contains(r#"expected: notify: {"body":{"text":"hi Bo: yes"}}"#),
        "{out}"
    );
    assert!(out.contains(r#""text":"hi Ana: yes""#), "{out}");
    assert!(
        out.contains("test result: FAILED. 1 passed; 1 failed"),
        "{out}"
    );
}

#[test]
fn a_rule_test_whose_event_the_trigger_would_not_take_runs_nothing_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"rules:
  - name: greet
    on: { event: hello }
    do: [ { log: "hi {{event.data.name}}" } ]
    tests:
      - name: another event type
        event: { type: goodbye, data: { name: Ana } }
        expect: { steps: [ { log: {} } ] }
      - name: another event type runs nothing
        event: { type: goodbye, data: { name: Ana } }
        expect: { steps: [] }
  - name: on-finish
    on: { flow_run: { status: finished, flow: screening } }
    do: [ { log: "done" } ]
    tests:
      - name: a timeout is not a finish
        event: { id: r-1, type: flowRuns, attributes: { status: timeout, flowId: screening } }
        expect: { steps: [ { log: {} } ] }
      - name: another flow
        event: { id: r-1, status: finished, flowId: onboarding }
        expect: { steps: [ { log: {} } ] }
      - name: the status it reacts to
        event: { id: r-1, status: finished, flowId: screening }
        expect: { steps: [ { log: { text: done } } ] }
"#,
    )
    .expect("write");
    let (code, out) = flowd(&["test", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("it listens to `hello`, not `goodbye`"),
        "{out}"
    );
    assert!(
        out.contains("test greet::another event type runs nothing ... ok"),
        "{out}"
    );
    assert!(
        out.contains("the status `timeout` is not one it reacts to"),
        "{out}"
    );
    assert!(
        out.contains("it reacts to runs of flow `screening`, not `onboarding`"),
        "{out}"
    );
    assert!(
        out.contains("test result: FAILED. 2 passed; 3 failed"),
        "{out}"
    );
}

#[test]
fn rule_tests_check_manual_inputs_and_recrubo_fields_as_the_daemon_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"rules:
  - name: resend
    on: { manual: { inputs: { thread: { type: string, required: true }, n: { type: number, default: 3 } } } }
    do: [ { log: "resend {{event.data.thread}} x{{event.data.n}}" } ]
    tests:
      - name: the default is filled in
        event: { data: { thread: t-1 } }
        expect: { steps: [ { log: { text: "resend t-1 x3" } } ] }
      - name: a missing required input is refused
        event: { data: {} }
        expect: { error: "input `thread` is required" }
  - name: email-changed
    on: { recrubo: { resource: candidates, event: [create, update], fields: [email] } }
    do: [ { log: "candidate {{event.id}} {{event.event}}" } ]
    tests:
      - name: a create has no fields and is taken
        event: { id: c-1, type: candidates, event: create, attributes: {} }
        expect: { steps: [ { log: { text: "candidate c-1 create" } } ] }
      - name: an update of another field is not
        event: { id: c-1, type: candidates, event: update, fields: [phone], attributes: {} }
        expect: { steps: [] }
"#,
    )
    .expect("write");
    let (code, out) = flowd(&["test", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test result: ok. 4 passed"), "{out}");
}

#[test]
fn rule_test_expectations_see_the_context_their_step_saw() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
        on_status:
          finished:
            - notify:
                url: "{{secrets.hook}}"
                body: { run: "{{run.id}}", score: "{{run.state.score}}", at: "{{now}}" }
    tests:
      - name: the handler's notify names the run it was started for
        now: 2026-12-02T09:30:00Z
        event: { type: application.created, data: { thread: t-1 } }
        run_updates: [ { status: finished, state: { score: 7 } } ]
        expect:
          steps:
            - start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
            - notify:
                url: "{{secrets.hook}}"
                body: { run: "{{steps.screening.id}}", score: "{{run.state.score}}", at: "{{now}}" }
      - name: a wrong expectation still fails
        now: 2026-12-02T09:30:00Z
        event: { type: application.created, data: { thread: t-1 } }
        run_updates: [ { status: finished, state: { score: 7 } } ]
        expect:
          steps:
            - start_flow_run: {}
            - notify: { body: { run: "{{run.id}}-not" } }
"#,
    )
    .expect("write");
    let (code, out) = flowd(&["test", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("test screen::the handler's notify names the run it was started for ... ok"),
        "{out}"
    );
    assert!(
        out.contains("test screen::a wrong expectation still fails ... FAILED"),
        "{out}"
    );
    // The expected value is rendered against the step's own context: `run-1-not`, not `-not`.
    assert!(out.contains(r#""run":"run-1-not""#), "{out}");
    assert!(
        out.contains("test result: FAILED. 1 passed; 1 failed"),
        "{out}"
    );
}

#[test]
fn rule_tests_follow_the_daemon_on_repeats_failures_that_go_on_and_ticks() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("a.yaml"),
        r#"rules:
  - name: screen
    on: { event: application.created }
    do:
      - start_flow_run: { flow: f, message_thread: t }
        on_status:
          finished: [ { log: done } ]
    tests:
      - name: a status seen twice fires once
        event: { type: application.created }
        run_updates: [ { status: finished }, { status: running }, { status: finished } ]
        expect: { steps: [ { start_flow_run: {} }, { log: done } ] }
  - name: goes-on
    on: { event: x }
    do:
      - log: "{{event.data.missing}}"
        continue_on_error: true
      - log: after
    tests:
      - name: the next step runs
        event: { type: x, data: {} }
        expect: { steps: [ { log: after } ] }
      - name: the failure is still seen
        event: { type: x, data: {} }
        expect: { error: "event.data.missing" }
  - name: morning
    on: { schedule: "0 8 * * *" }
    do: [ { log: "tick {{event.scheduled_at}}" } ]
    tests:
      - name: a tick has its scheduled time
        now: 2026-12-02T08:00:00Z
        event: {}
        expect: { steps: [ { log: "tick 2026-12-02T08:00:00Z" } ] }
"#,
    )
    .expect("write");
    let (code, out) = flowd(&["test", dir.path().to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("test result: ok. 4 passed"), "{out}");
}

#[test]
fn simulate_runs_ticks_manual_runs_and_status_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("mkdir");
    std::fs::write(
        rules.join("r.yaml"),
        r#"rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
        on_status:
          finished:
            - log: "run {{run.id}} scored {{run.state.score}}"
  - name: morning
    on: { schedule: "0 8 * * 1-5" }
    do: [ { log: "good morning at {{event.scheduled_at}}" } ]
  - name: resend
    on: { manual: { inputs: { thread: { type: string, required: true } } } }
    do: [ { log: "resend to {{event.data.thread}}" } ]
  - name: after-screening
    on: { flow_run: { status: finished, started_by: screen } }
    do: [ { log: "finished {{run.id}}" } ]
"#,
    )
    .expect("write");
    let run = dir.path().join("run.json");
    std::fs::write(
        &run,
        r#"{"id":"run-1","type":"flowRuns","attributes":{"status":"running","flowId":"screening-flow","state":{"score":7}}}"#,
    )
    .expect("write");
    let rules = rules.to_str().expect("utf-8");
    let (code, out) = flowd(&[
        "simulate",
        "--rules",
        rules,
        "--tick",
        "morning",
        "--at",
        "2026-12-07T08:00:00Z",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#"log: {"text":"good morning at 2026-12-07T08:00:00Z"}"#),
        "{out}"
    );
    let (code, out) = flowd(&["simulate", "--rules", rules, "--tick", "screen"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✗ screen — no match: its trigger is `event`"),
        "{out}"
    );
    let (_, out) = flowd(&[
        "simulate",
        "--rules",
        rules,
        "--manual",
        "resend",
        "--input",
        "thread=t-9",
    ]);
    assert!(out.contains(r#"log: {"text":"resend to t-9"}"#), "{out}");
    let (_, out) = flowd(&["simulate", "--rules", rules, "--manual", "resend"]);
    assert!(out.contains("input `thread` is required"), "{out}");
    let run = run.to_str().expect("utf-8");
    let (_, out) = flowd(&[
        "simulate",
        "--rules",
        rules,
        "--run-status",
        "finished",
        "--run",
        run,
        "--started-by",
        "screen/screening",
    ]);
    assert!(
        out.contains("✓ screen/screening on_status.finished — runs"),
        "{out}"
    );
    assert!(
        out.contains(r#"log: {"text":"run run-1 scored 7"}"#),
        "{out}"
    );
    assert!(out.contains("✓ after-screening — matches"), "{out}");
    let (_, out) = flowd(&[
        "simulate",
        "--rules",
        rules,
        "--run-status",
        "finished",
        "--run",
        run,
    ]);
    assert!(
        out.contains("✗ after-screening — no match: it reacts only to runs started by `screen`"),
        "{out}"
    );
}

#[test]
fn the_demo_runs_the_quickstart_scenario_to_its_end() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(["demo", "--exit-when-done"])
        .output()
        .expect("run the demo");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("notification received: Ana finished screening"),
        "{out}"
    );
    assert!(
        out.contains("notification received: Bo did not answer; data scrubbed"),
        "{out}"
    );
    assert!(
        out.contains("started by quickstart-interview"),
        "Ana's interview is chained: {out}"
    );
    assert!(
        out.contains("done: 8 executions, 4 runs followed, 3 notifications."),
        "{out}"
    );
}

#[test]
fn the_demo_runs_on_three_instances_and_says_which_did_what() {
    let Ok(server) = std::env::var("FLOWD_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("FLOWD_REQUIRE_POSTGRES").is_none(),
            "FLOWD_REQUIRE_POSTGRES is set but FLOWD_TEST_POSTGRES is not"
        );
        eprintln!("notice: FLOWD_TEST_POSTGRES is not set; the three-instance demo is skipped");
        return;
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args([
            "demo",
            "--exit-when-done",
            "--instances",
            "3",
            "--database",
            &server,
        ])
        .output()
        .expect("run the demo");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    for instance in ["flowd A", "flowd B", "flowd C"] {
        assert!(out.contains(&format!("  {instance} ")), "{instance}: {out}");
    }
    assert!(out.contains("posted for Bo to flowd B"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("on_status.finished handler") && l.contains(" on flowd ")),
        "a handler says where it ran: {out}"
    );
    assert!(
        out.contains("done: 8 executions, 4 runs followed, 3 notifications."),
        "the same scenario as on one instance: {out}"
    );
    // Without a shared database, several instances are refused with what to pass.
    let (code, _) = flowd(&["demo", "--instances", "2"]);
    assert_eq!(code, 1);
}

#[test]
fn simulate_shows_matches_reasons_and_rendered_steps() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().expect("temp dir");
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"type": "application.created", "data": {"name": "Ana", "phone": "316", "candidate_id": "c-1", "message_thread_id": "t-1", "vacancy": {"open": false, "title": "Barista"}}}"#,
    )
    .expect("write");
    let (code, out) = flowd(&[
        "simulate",
        "--event",
        event.to_str().expect("utf-8"),
        "--rules",
        &format!("{root}/rules"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✗ screen-new-applications — matched, but its `if` is not true"),
        "{out}"
    );
    assert!(out.contains("✗ generate-vacancy-flow — no match: it listens to `vacancy.published`, not `application.created`"), "{out}");
    assert!(out.contains("0 rules would run."), "{out}");

    std::fs::write(
        &event,
        r#"{"data":{"type":"webhookPayload","id":"w-1","attributes":{"event":"update","fields":["status"],"resource":{"id":"r-1","type":"flowRuns","attributes":{"status":"exception","flowId":"f-1","messageThreadId":"t-1"}}}}}"#,
    )
    .expect("write");
    let (code, out) = flowd(&[
        "simulate",
        "--event",
        event.to_str().expect("utf-8"),
        "--rules",
        &format!("{root}/rules"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✓ alert-on-run-exception — matches"), "{out}");
    assert!(out.contains(r#""subject":"Flow run r-1 failed""#), "{out}");
    assert!(out.contains("✗ chain-interview-scheduling — no match: the status `exception` is not one it reacts to"), "{out}");
}

#[test]
fn check_warns_where_a_url_takes_run_time_data_without_urlencode() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("r.yaml"),
        r#"rules:
  - name: cb
    on: { event: x }
    do:
      - http: { method: GET, url: "https://ats.example.com/c/{{event.data.id}}/x?n={{urlencode event.data.n}}" }
"#,
    )
    .expect("write");
    let (code, out) = crate::support::flowd(&["check", dir.path().to_str().expect("path")]);
    assert_eq!(code, 0, "a warning does not make the rules invalid: {out}");
    assert!(
        out.contains("warning[url-encoding]: `{{event.data.id}}`"),
        "{out}"
    );
    assert!(!out.contains("event.data.n"), "{out}");
}

#[test]
fn check_warns_where_a_whatsapp_chat_has_no_initial_message() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("r.yaml"),
        r#"rules:
  - name: start
    on: { event: x }
    do:
      - id: thread
        message_thread: { identifier: "{{event.data.phone}}" }
      - start_flow_run: { flow: f, message_thread: "{{steps.thread.id}}" }
      - start_flow_run:
          flow: f
          message_thread: "{{steps.thread.id}}"
          initial_message: { type: template, template: { id: t, components: [] } }
      - id: sms
        message_thread: { channel: sms, identifier: "{{event.data.phone}}" }
      - start_flow_run: { flow: f, message_thread: "{{steps.sms.id}}" }
"#,
    )
    .expect("write");
    let (code, out) = crate::support::flowd(&["check", dir.path().to_str().expect("path")]);
    assert_eq!(code, 0, "a warning does not make the rules invalid: {out}");
    assert_eq!(out.matches("warning[initial-message]").count(), 1, "{out}");
    assert!(out.contains("field `do[1].start_flow_run`"), "{out}");
}
