//! The engine end to end: the simulator and the real daemon on port 0, acting through HTTP.

use std::time::Duration;

use serde_json::{Value, json};

use flowd::recrubo::{FlowRunStatus, ListQuery, RecruboClient};
use flowd::settings::Secret;
use flowd::sim::{SimHandle, SimSettings};

use crate::receiver::{Receiver, distinct_strings};
use crate::recrubo_client::{client_for, sim};
use crate::support::{Daemon, eventually};

pub(crate) const WAIT: Duration = Duration::from_secs(15);
pub(crate) const WEBHOOK_SECRET: &str = "s3cret";
pub(crate) const EVENT_TOKEN: &str = "evt-token";

/// A simulator, a sink for notifications, and a daemon wired to both.
pub(crate) struct World {
    pub(crate) sim: SimHandle,
    pub(crate) sink: Receiver,
    pub(crate) daemon: Daemon,
    pub(crate) client: RecruboClient,
    pub(crate) _rules: tempfile::TempDir,
}

impl World {
    /// Points the simulator's webhooks at the daemon (again after a restart: it listens on a
    /// new port).
    pub(crate) async fn point_webhooks(&self) {
        let organization = self
            .client
            .list("organizations", &ListQuery::new())
            .await
            .expect("orgs")
            .items[0]
            .id
            .clone();
        self.client
            .set_organization_webhook(
                &organization,
                &self.daemon.public_url("/webhooks/recrubo"),
                &Secret::new(WEBHOOK_SECRET.into()),
            )
            .await
            .expect("point the simulator's webhooks at the daemon");
    }

    /// Kills the daemon with SIGKILL; its state folder comes back for [`World::start_again`].
    pub(crate) fn kill_daemon(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.daemon, placeholder_daemon()).kill()
    }

    /// Starts the daemon again on the state of a killed one, with the same rules folder.
    pub(crate) fn start_again(&mut self, state: tempfile::TempDir) {
        let database = format!("sqlite://{}", state.path().join("flowd.db").display());
        let base_url = self.sim.base_url();
        let env = [
            ("FLOWD_RECRUBO_BASE_URL", base_url.as_str()),
            ("RECRUBO_API_TOKEN", "t"),
            ("RECRUBO_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("FLOWD_EVENTS_TOKENS", EVENT_TOKEN),
            ("FLOWD_RECRUBO_RATE_LIMIT", "0"),
        ];
        self.daemon = Daemon::start_with_database(self._rules.path(), &env, &database, state);
    }
}

pub(crate) async fn world(rules_yaml: &str, extra_env: &[(&str, &str)]) -> World {
    world_with(rules_yaml, extra_env, SimSettings::default(), |_| None).await
}

/// [`world`] with simulator settings, and `upstream` to put something (a proxy) between the
/// daemon and the simulator: it gets the simulator's base URL and returns the one flowd uses.
pub(crate) async fn world_with(
    rules_yaml: &str,
    extra_env: &[(&str, &str)],
    settings: SimSettings,
    upstream: impl FnOnce(&str) -> Option<String>,
) -> World {
    let sink = Receiver::start().await;
    let sim = sim(SimSettings {
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        retry_scale: Some(0.0001),
        ..settings
    })
    .await;
    let rules = tempfile::tempdir().expect("rules dir");
    std::fs::write(
        rules.path().join("rules.yaml"),
        rules_yaml.replace("SINK_URL", &sink.url()),
    )
    .expect("write rules");
    let sim_url = sim.base_url();
    let base_url = upstream(&sim_url).unwrap_or(sim_url);
    let mut env = vec![
        ("FLOWD_RECRUBO_BASE_URL", base_url.as_str()),
        ("RECRUBO_API_TOKEN", "t"),
        ("RECRUBO_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("FLOWD_EVENTS_TOKENS", EVENT_TOKEN),
        ("FLOWD_RECRUBO_RATE_LIMIT", "0"),
    ];
    env.extend_from_slice(extra_env);
    let daemon = Daemon::start(rules.path(), &env);
    let client = client_for(&sim, "t", |_| {});
    let world = World {
        sim,
        sink,
        daemon,
        client,
        _rules: rules,
    };
    world.point_webhooks().await;
    world
}

pub(crate) async fn post_event(
    daemon: &Daemon,
    event_type: &str,
    data: Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(daemon.public_url(&format!("/events/{event_type}")))
        .bearer_auth(EVENT_TOKEN)
        .json(&data)
        .send()
        .await
        .expect("post event")
}

/// Moves a simulated run to `status`, merging `state` into its state (`Value::Null`: none).
pub(crate) async fn drive(sim: &SimHandle, run_id: &str, status: &str, state: Value) {
    let mut body = json!({ "status": status });
    if !state.is_null() {
        body["state"] = state;
    }
    let response = reqwest::Client::new()
        .post(sim.url(&format!("/_sim/flow-runs/{run_id}/status")))
        .json(&body)
        .send()
        .await
        .expect("drive");
    assert_eq!(response.status(), 200);
}

pub(crate) async fn runs_on_thread(
    client: &RecruboClient,
    thread: &str,
) -> Vec<flowd::recrubo::jsonapi::Resource> {
    client
        .list_flow_runs(
            &ListQuery::new()
                .filter("messageThreadId", thread)
                .sort("createdAt"),
        )
        .await
        .map(|page| page.items)
        .unwrap_or_default()
}

const SCREENING: &str = r#"
vars:
  screening_flow: screening-flow
  interview_flow: interview-flow
rules:
  - name: screen
    on: { event: application.created }
    if: event.data.vacancy.open
    do:
      - id: screening
        start_flow_run:
          flow: "{{vars.screening_flow}}"
          message_thread: "{{event.data.thread}}"
          state: { candidate: "{{event.data.candidate}}" }
        on_status:
          finished:
            - if: run.state.passed == true
              id: interview
              start_flow_run: { flow: "{{vars.interview_flow}}", message_thread: "{{run.messageThreadId}}" }
            - notify:
                url: SINK_URL
                preset: slack
                body: "{{event.data.name}} finished screening (run {{run.id}})"
            - update_flow_run: { id: "{{run.id}}", state: {} }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_screening_scenario_runs_end_to_end() {
    let world = world(SCREENING, &[]).await;
    let accepted = post_event(&world.daemon, "application.created", json!({"id": "app-1", "name": "Ana", "thread": "thread-1", "candidate": "c-1", "vacancy": {"open": true}})).await;
    assert_eq!(accepted.status(), 202);
    // A closed vacancy starts nothing.
    post_event(&world.daemon, "application.created", json!({"id": "app-2", "name": "Bo", "thread": "thread-2", "candidate": "c-2", "vacancy": {"open": false}})).await;
    // The same event again is absorbed.
    let duplicate = post_event(&world.daemon, "application.created", json!({"id": "app-1", "name": "Ana", "thread": "thread-1", "candidate": "c-1", "vacancy": {"open": true}})).await;
    assert_eq!(duplicate.status(), 200);
    assert_eq!(
        duplicate.json::<Value>().await.expect("json")["status"],
        "duplicate"
    );

    let screening = eventually(WAIT, "the screening run is created", || async {
        runs_on_thread(&world.client, "thread-1")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(screening.attributes["flowId"], "screening-flow");
    assert_eq!(screening.attributes["state"], json!({"candidate": "c-1"}));

    drive(&world.sim, &screening.id, "running", json!({})).await;
    drive(
        &world.sim,
        &screening.id,
        "finished",
        json!({"passed": true}),
    )
    .await;

    let runs = eventually(
        WAIT,
        "the interview run is chained on the same thread",
        || async {
            let runs = runs_on_thread(&world.client, "thread-1").await;
            (runs.len() == 2).then_some(runs)
        },
    )
    .await;
    assert_eq!(runs[1].attributes["flowId"], "interview-flow");
    let notification = eventually(WAIT, "the notification reaches the sink", || async {
        world.sink.received().into_iter().next()
    })
    .await;
    assert_eq!(
        notification.body,
        json!({"text": format!("Ana finished screening (run {})", screening.id)})
    );
    eventually(WAIT, "the screening run's state is scrubbed", || async {
        let run = world.client.get_flow_run(&screening.id).await.ok()?;
        (run.state() == json!({})).then_some(())
    })
    .await;
    assert_eq!(
        world
            .client
            .get_flow_run(&screening.id)
            .await
            .expect("run")
            .status(),
        FlowRunStatus::Finished
    );
    // Nothing ran for the closed vacancy, and nothing twice.
    assert!(runs_on_thread(&world.client, "thread-2").await.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs_on_thread(&world.client, "thread-1").await.len(), 2);
    assert_eq!(world.sink.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_the_reason_and_disturbs_nothing() {
    let world = world(SCREENING, &[]).await;
    let http = reqwest::Client::new();
    let url = world.daemon.public_url("/webhooks/recrubo");
    let forged = http
        .post(&url)
        .header("X-Recrubo-Webhook-Secret", "wrong")
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 401);
    let missing = http.post(&url).json(&json!({})).send().await.expect("post");
    assert_eq!(missing.status(), 401);
    // A client of its own: the server closes a connection whose body it refused to read.
    let oversized = reqwest::Client::new()
        .post(&url)
        .header("X-Recrubo-Webhook-Secret", WEBHOOK_SECRET)
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(oversized.status(), 413);
    let invalid = http
        .post(&url)
        .header("X-Recrubo-Webhook-Secret", WEBHOOK_SECRET)
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(invalid.status(), 400);
    assert!(
        invalid
            .text()
            .await
            .unwrap_or_default()
            .contains("not valid JSON")
    );
    let unknown_shape = http
        .post(&url)
        .header("X-Recrubo-Webhook-Secret", WEBHOOK_SECRET)
        .json(&json!({"hello": "world"}))
        .send()
        .await
        .expect("post");
    assert_eq!(unknown_shape.status(), 422);
    assert!(
        unknown_shape
            .text()
            .await
            .unwrap_or_default()
            .contains("WebhookPayload")
    );
    // An id no database key can hold is refused at the door, not failed in the store.
    let unfit_id = http
        .post(&url)
        .header("X-Recrubo-Webhook-Secret", WEBHOOK_SECRET)
        .json(&json!({"data": {"type": "webhookPayload", "id": "log\u{0}1", "attributes": {
            "event": "update", "resource": {"type": "flowRuns", "id": "r1", "attributes": {"status": "running"}}}}}))
        .send()
        .await
        .expect("post");
    assert_eq!(unfit_id.status(), 422);
    assert!(
        unfit_id
            .text()
            .await
            .unwrap_or_default()
            .contains("control characters")
    );
    let no_token = http
        .post(world.daemon.public_url("/events/application.created"))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(no_token.status(), 401);
    let bad_event = http
        .post(world.daemon.public_url("/events/application.created"))
        .bearer_auth(EVENT_TOKEN)
        .body("{")
        .send()
        .await
        .expect("post");
    assert_eq!(bad_event.status(), 400);

    // A valid event after all that is processed.
    post_event(
        &world.daemon,
        "application.created",
        json!({"name": "Ana", "thread": "thread-9", "candidate": "c", "vacancy": {"open": true}}),
    )
    .await;
    eventually(WAIT, "the valid event starts its run", || async {
        runs_on_thread(&world.client, "thread-9")
            .await
            .into_iter()
            .next()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_always_fails_ends_in_the_dead_letters_and_continue_on_error_goes_on() {
    let rules = r#"
rules:
  - name: failing
    on: { event: ping }
    do:
      - http: { method: POST, url: "http://127.0.0.1:9/unreachable", body: { a: 1 } }
        retry: { attempts: 3, backoff: 10ms }
        continue_on_error: true
      - notify: { url: SINK_URL, body: { text: "after the failure" } }
"#;
    let world = world(rules, &[]).await;
    post_event(&world.daemon, "ping", json!({})).await;
    let delivered = eventually(WAIT, "the step after the failing one runs", || async {
        world.sink.received().into_iter().next()
    })
    .await;
    assert_eq!(delivered.body, json!({"text": "after the failure"}));
    let dead: Value = reqwest::get(world.daemon.admin_url("/api/v1/dead-letters"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let letters = dead["dead_letters"].as_array().expect("list");
    assert_eq!(letters.len(), 1, "{dead}");
    assert_eq!(letters[0]["rule"], "failing");
    assert_eq!(letters[0]["kind"], "http");
    let executions: Value = reqwest::get(world.daemon.admin_url("/api/v1/executions?rule=failing"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let execution = &executions["executions"][0];
    assert_eq!(execution["status"], "succeeded");
    let detail: Value = reqwest::get(world.daemon.admin_url(&format!(
        "/api/v1/executions/{}",
        execution["id"].as_str().unwrap_or_default()
    )))
    .await
    .expect("get")
    .json()
    .await
    .expect("json");
    assert_eq!(detail["steps"][0]["status"], "failed");
    assert_eq!(detail["steps"][0]["attempts"], 3);
    assert_eq!(detail["steps"][1]["status"], "succeeded");

    // The status page shows the rule, the execution's step timeline and the dead letter.
    let page = reqwest::get(world.daemon.admin_url("/"))
        .await
        .expect("page");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/html")
    );
    let html = page.text().await.expect("html");
    assert!(
        html.contains("<h2>Rules</h2>") && html.contains("failing"),
        "{html}"
    );
    assert!(
        html.contains("step s-failed") && html.contains("step s-succeeded"),
        "{html}"
    );
    assert!(
        html.contains("<h2>Dead letters</h2>") && html.contains("data-action=retry"),
        "{html}"
    );
    assert!(
        html.contains("http-equiv=refresh"),
        "the page refreshes itself"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_chain_uses_the_analysis_and_the_new_flow() {
    let rules = r#"
rules:
  - name: vacancy
    on: { event: vacancy.published }
    do:
      - id: analysis
        analyze_vacancy: { text: "{{event.data.text}}" }
      - id: generation
        generate_flow: { from_analysis: analysis, context: { text: "{{event.data.text}}" } }
        on_status:
          finished:
            - notify: { url: SINK_URL, body: { flow: "{{generation.flowId}}", knockouts: "{{steps.generation.parameters.knockoutRequirements}}" } }
"#;
    let world = world(rules, &[]).await;
    post_event(
        &world.daemon,
        "vacancy.published",
        json!({"text": "- 3 years of experience with Java\n- A team player"}),
    )
    .await;
    let generation = eventually(WAIT, "the generation is created", || async {
        world
            .client
            .list_flow_generations(&ListQuery::new())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        generation.attributes["parameters"]["knockoutRequirements"],
        json!([{"value": "3 years of experience with Java."}])
    );
    for status in ["processing", "finished"] {
        reqwest::Client::new()
            .post(
                world
                    .sim
                    .url(&format!("/_sim/flow-generations/{}/status", generation.id)),
            )
            .json(&json!({"status": status}))
            .send()
            .await
            .expect("drive");
    }
    let notification = eventually(WAIT, "the notification with the new flow id", || async {
        world.sink.received().into_iter().next()
    })
    .await;
    let flow_id = world
        .client
        .get_flow_generation(&generation.id)
        .await
        .expect("generation")
        .flow_id()
        .map(str::to_owned);
    assert_eq!(notification.body["flow"].as_str(), flow_id.as_deref());
    assert_eq!(
        notification.body["knockouts"],
        json!([{"value": "3 years of experience with Java."}])
    );
}

const FOLLOW_RULES: &str = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: f, message_thread: "{{event.data.thread}}" }
        retry: { attempts: 20, backoff: 20ms, max_backoff: 500ms }
        on_status:
          finished:
            - notify: { url: SINK_URL, body: { run: "{{run.id}}", thread: "{{run.messageThreadId}}" } }
              retry: { attempts: 20, backoff: 20ms, max_backoff: 500ms }
"#;

async fn wait_for_runs(
    client: &RecruboClient,
    count: usize,
) -> Vec<flowd::recrubo::jsonapi::Resource> {
    eventually(
        Duration::from_secs(60),
        &format!("{count} runs exist"),
        || async {
            let runs: Vec<_> = futures_util::TryStreamExt::try_collect(
                client.list_all("flow-runs", ListQuery::new().page_size(200)),
            )
            .await
            .ok()?;
            (runs.len() >= count).then_some(runs)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn api_faults_slow_things_down_but_every_step_completes_once() {
    let world = world(FOLLOW_RULES, &[]).await;
    crate::recrubo_client::set_faults(
        &world.sim,
        json!({"error_rate": 0.3, "throttle_rate": 0.1, "retry_after_seconds": 1}),
    )
    .await;
    for index in 0..20 {
        post_event(
            &world.daemon,
            "application.created",
            json!({"id": format!("e{index}"), "thread": format!("t{index}")}),
        )
        .await;
    }
    let runs = wait_for_runs(&world.client, 20).await;
    crate::recrubo_client::set_faults(&world.sim, json!({})).await;
    let mut threads: Vec<String> = runs
        .iter()
        .filter_map(|r| r.attributes["messageThreadId"].as_str().map(str::to_owned))
        .collect();
    threads.sort();
    threads.dedup();
    assert_eq!(threads.len(), 20, "one run per event");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        wait_for_runs(&world.client, 20).await.len(),
        20,
        "no run created twice"
    );
    let requests = crate::recrubo_client::sim_requests(&world.sim).await;
    assert!(
        requests.iter().any(|r| r["fault"] == "503"),
        "faults were injected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicated_reordered_and_dropped_webhooks_fire_each_handler_once() {
    let world = world(FOLLOW_RULES, &[("FLOWD_RECRUBO_RECONCILE_AFTER", "1s")]).await;
    for index in 0..10 {
        post_event(
            &world.daemon,
            "application.created",
            json!({"id": format!("e{index}"), "thread": format!("t{index}")}),
        )
        .await;
    }
    let runs = wait_for_runs(&world.client, 10).await;
    // Let the daemon record every run before the faults start.
    eventually(WAIT, "the runs are followed", || async {
        let body: Value = reqwest::get(world.daemon.admin_url("/api/v1/runs"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["runs"].as_array()?.len() == 10).then_some(())
    })
    .await;
    crate::recrubo_client::set_faults(
        &world.sim,
        json!({"duplicate_rate": 0.5, "reorder_rate": 0.5, "drop_rate": 0.2}),
    )
    .await;
    for run in &runs {
        drive(&world.sim, &run.id, "running", json!({})).await;
        drive(&world.sim, &run.id, "finished", json!({})).await;
    }
    let received = eventually(Duration::from_secs(30), "ten notifications", || async {
        let received = world.sink.received();
        (received.len() >= 10).then_some(received)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = world.sink.received().len().max(received.len());
    assert_eq!(received, 10, "each finished handler fired exactly once");
    let (_, notified) = distinct_strings(&world.sink.received(), "run");
    assert_eq!(notified.len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edited_handler_fires_and_a_removed_rule_orphans_its_runs() {
    let world = world(FOLLOW_RULES, &[]).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"id": "a", "thread": "ta"}),
    )
    .await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"id": "b", "thread": "tb"}),
    )
    .await;
    let runs = wait_for_runs(&world.client, 2).await;
    eventually(WAIT, "both runs are followed", || async {
        let body: Value = reqwest::get(world.daemon.admin_url("/api/v1/runs"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["runs"].as_array()?.len() == 2).then_some(())
    })
    .await;
    // Edit the handler: it now says "edited".
    let edited = FOLLOW_RULES
        .replace(
            "body: { run: \"{{run.id}}\", thread: \"{{run.messageThreadId}}\" }",
            "body: { edited: \"{{run.id}}\" }",
        )
        .replace("SINK_URL", &world.sink.url());
    std::fs::write(world._rules.path().join("rules.yaml"), edited).expect("edit");
    let reload = reqwest::Client::new()
        .post(world.daemon.admin_url("/api/v1/reload"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 200);
    let first = runs
        .iter()
        .find(|r| r.attributes["messageThreadId"] == "ta")
        .expect("run a");
    drive(&world.sim, &first.id, "finished", json!({})).await;
    let notification = eventually(WAIT, "the edited handler fires", || async {
        world.sink.received().into_iter().next()
    })
    .await;
    assert_eq!(notification.body, json!({"edited": first.id}));

    // Remove the rule: the other run's change is recorded as orphaned, nothing runs.
    std::fs::write(
        world._rules.path().join("rules.yaml"),
        "rules:\n  - name: other\n    on: { event: x }\n    do: [ { log: x } ]\n",
    )
    .expect("remove");
    reqwest::Client::new()
        .post(world.daemon.admin_url("/api/v1/reload"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("reload");
    let second = runs
        .iter()
        .find(|r| r.attributes["messageThreadId"] == "tb")
        .expect("run b");
    drive(&world.sim, &second.id, "finished", json!({})).await;
    let orphaned = eventually(WAIT, "an orphaned execution is recorded", || async {
        let body: Value = reqwest::get(world.daemon.admin_url("/api/v1/executions?rule=screen"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["executions"]
            .as_array()?
            .iter()
            .find(|e| e["status"] == "orphaned")
            .cloned()
    })
    .await;
    assert!(
        orphaned["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("no longer in the rule set"),
        "{orphaned}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(world.sink.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemon_loses_no_accepted_event_and_creates_no_run_twice() {
    let mut world = world(FOLLOW_RULES, &[]).await;
    let url = world.daemon.public_url("/events/application.created");
    let http = reqwest::Client::new();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut senders = Vec::new();
    for worker in 0..8 {
        let http = http.clone();
        let url = url.clone();
        let accepted = accepted.clone();
        senders.push(tokio::spawn(async move {
            for index in 0..125 {
                let thread = format!("w{worker}-{index}");
                let response = http
                    .post(&url)
                    .bearer_auth(EVENT_TOKEN)
                    .json(&json!({"id": thread, "thread": thread}))
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status().is_success() => {
                        accepted.lock().expect("lock").push(thread)
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill the daemon in the middle of the burst.
    eventually(WAIT, "a third of the burst is accepted", || async {
        (accepted.lock().expect("lock").len() >= 300).then_some(())
    })
    .await;
    let state = world.kill_daemon();
    for sender in senders {
        let _ = sender.await;
    }
    let accepted: Vec<String> = accepted.lock().expect("lock").clone();
    assert!(
        accepted.len() >= 300 && accepted.len() < 1000,
        "{} accepted",
        accepted.len()
    );

    // Restart on the same database: everything accepted is processed, nothing twice.
    world.start_again(state);
    let runs = wait_for_runs(&world.client, accepted.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let runs = wait_for_runs(&world.client, runs.len()).await;
    let mut threads: Vec<String> = runs
        .iter()
        .filter_map(|r| r.attributes["messageThreadId"].as_str().map(str::to_owned))
        .collect();
    let total = threads.len();
    threads.sort();
    threads.dedup();
    assert_eq!(threads.len(), total, "a thread got two runs");
    for thread in &accepted {
        assert!(
            threads.binary_search(thread).is_ok(),
            "accepted event {thread} was lost"
        );
    }
}

/// A stand-in to move the real daemon out of a `World`.
fn placeholder_daemon() -> Daemon {
    let rules = tempfile::tempdir().expect("dir");
    std::fs::write(
        rules.path().join("r.yaml"),
        "rules:\n  - name: p\n    on: { event: x }\n    do: [ { log: x } ]\n",
    )
    .expect("write");
    let daemon = Daemon::start(rules.path(), &[]);
    std::mem::forget(rules);
    daemon
}

#[tokio::test(flavor = "multi_thread")]
async fn an_every_schedule_fires_each_tick_once_and_catches_up_after_a_restart() {
    let rules = r#"
rules:
  - name: tick
    on: { every: { interval: 1s, catch_up: latest } }
    do:
      - notify: { url: SINK_URL, body: { scheduled: "{{event.scheduled_at}}", fired: "{{event.fired_at}}" } }
"#;
    let mut world = world(rules, &[]).await;
    let received = eventually(WAIT, "two ticks", || async {
        let received = world.sink.received();
        (received.len() >= 2).then_some(received)
    })
    .await;
    let (count, scheduled) = distinct_strings(&received, "scheduled");
    assert_eq!(scheduled.len(), count, "a tick fired twice");
    assert!(
        scheduled[0].ends_with(".000Z"),
        "ticks are aligned to the interval: {scheduled:?}"
    );

    // Down for 3 s, then back on the same database: `latest` fires one tick for the gap.
    let state = world.kill_daemon();
    let before = world.sink.received().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    world.start_again(state);
    let after = eventually(WAIT, "the caught-up tick", || async {
        let received = world.sink.received();
        (received.len() > before).then_some(received)
    })
    .await;
    let caught_up = &after[before];
    let scheduled_at = chrono::DateTime::parse_from_rfc3339(
        caught_up.body["scheduled"].as_str().unwrap_or_default(),
    )
    .expect("time");
    let fired_at =
        chrono::DateTime::parse_from_rfc3339(caught_up.body["fired"].as_str().unwrap_or_default())
            .expect("time");
    assert!(
        fired_at - scheduled_at < chrono::Duration::seconds(2),
        "the latest missed tick, not an old one"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (total, all) = distinct_strings(&world.sink.received(), "scheduled");
    assert_eq!(all.len(), total, "no tick fired twice across the restart");
}

/// A rule that sweeps the timed-out flow runs, 50 a page, logging each.
const SWEEP_LOG_RULE: &str = r#"  - name: sweep
    on:
      event: kick
      for_each: { list: flow-runs, filter: { status: timeout }, page_size: 50 }
    do:
      - log: "swept {{item.id}}"
"#;

/// Adds `count` flow runs to the simulator, the n-th with `status(n)`.
fn seed_flow_runs(sim: &SimHandle, count: usize, status: impl Fn(usize) -> &'static str) {
    for index in 0..count {
        let mut attributes = serde_json::Map::new();
        attributes.insert("status".into(), json!(status(index)));
        sim.state.insert("flow-runs", attributes);
    }
}

/// How many flow-run list requests the simulator has answered.
async fn flow_run_pages(sim: &SimHandle) -> usize {
    crate::recrubo_client::sim_requests(sim)
        .await
        .iter()
        .filter(|r| r["path"] == "/public/v2/flow-runs")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_pages_through_every_item_once_despite_faults() {
    // 10,000 timed-out runs among 15,000, listed 100 a page through 10% 5xx answers at a rate
    // limit of 40 requests a second: every item once, and never over the limit.
    let rules = r#"
rules:
  - name: sweep
    on:
      event: kick
      for_each: { list: flow-runs, filter: { status: timeout }, page_size: 100 }
    do:
      - notify: { url: SINK_URL, body: { run: "{{item.id}}" } }
        retry: { attempts: 20, backoff: 10ms, max_backoff: 100ms }
"#;
    let world = world(rules, &[("FLOWD_RECRUBO_RATE_LIMIT", "40")]).await;
    seed_flow_runs(&world.sim, 15_000, |index| {
        if index % 3 == 0 {
            "finished"
        } else {
            "timeout"
        }
    });
    crate::recrubo_client::set_faults(&world.sim, json!({"error_rate": 0.1})).await;
    post_event(&world.daemon, "kick", json!({})).await;
    eventually(Duration::from_secs(120), "10,000 notifications", || async {
        (world.sink.received().len() >= 10_000).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (total, runs) = distinct_strings(&world.sink.received(), "run");
    assert_eq!(
        (total, runs.len()),
        (10_000, 10_000),
        "every timed-out run once"
    );

    // The limiter allows a burst of one second's worth, then 40 a second: no second-long
    // window holds more than 80 list requests.
    let mut pages: Vec<i64> = crate::recrubo_client::sim_requests(&world.sim)
        .await
        .iter()
        .filter(|r| r["path"] == "/public/v2/flow-runs")
        .filter_map(|r| r["at_ms"].as_i64())
        .collect();
    pages.sort_unstable();
    assert!(pages.len() >= 100, "at least one request a page");
    let busiest = pages
        .iter()
        .enumerate()
        .map(|(index, start)| {
            pages[index..]
                .iter()
                .take_while(|at| **at < start + 1000)
                .count()
        })
        .max()
        .unwrap_or_default();
    assert!(
        busiest <= 80,
        "{busiest} list requests in one second at a limit of 40/s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_execution_is_never_run_twice_at_once() {
    // Regression: saving progress between steps released the lease, so a second worker could
    // claim the execution and run its remaining steps again.
    let rules = r#"
rules:
  - name: many
    on: { event: go }
    do:
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}", step: 1 } }
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}", step: 2 } }
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}", step: 3 } }
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}", step: 4 } }
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}", step: 5 } }
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}", step: 6 } }
"#;
    let world = world(rules, &[]).await;
    for n in 0..30 {
        post_event(&world.daemon, "go", json!({"id": format!("g{n}"), "n": n})).await;
    }
    eventually(WAIT, "180 notifications", || async {
        (world.sink.received().len() >= 180).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut seen: Vec<String> = world
        .sink
        .received()
        .iter()
        .map(|r| r.body.to_string())
        .collect();
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!((total, seen.len()), (180, 180), "a step ran twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_clients_trigger_list_and_retry() {
    let rules = r#"
rules:
  - name: resend
    on:
      manual:
        inputs:
          thread: { type: string, required: true }
          priority: { type: number, default: 1 }
    do:
      - start_flow_run: { flow: f, message_thread: "{{event.data.thread}}", state: { priority: "{{event.data.priority}}" } }
  - name: broken
    on: { event: break }
    do:
      - http: { url: "http://127.0.0.1:9/nothing" }
        retry: { attempts: 1 }
"#;
    let world = world(rules, &[]).await;
    let admin = format!("http://{}", world.daemon.admin);
    let flowd = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
            .args(args)
            .args(["--admin-url", &admin])
            .output()
            .expect("run flowd");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, out) =
        tokio::task::block_in_place(|| flowd(&["trigger", "resend", "--input", "thread=t-7"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("triggered resend"), "{out}");
    let run = eventually(WAIT, "the manual run starts its flow run", || async {
        runs_on_thread(&world.client, "t-7")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        run.attributes["state"],
        json!({"priority": 1}),
        "the default input applies"
    );
    let (code, out) = tokio::task::block_in_place(|| flowd(&["trigger", "resend"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("input `thread` is required"), "{out}");

    post_event(&world.daemon, "break", json!({})).await;
    let listing = eventually(WAIT, "a dead letter is listed", || async {
        let (code, out) = tokio::task::block_in_place(|| flowd(&["dead-letters", "--json"]));
        let body: Value = serde_json::from_str(&out).ok()?;
        (code == 0 && body["dead_letters"].as_array()?.len() == 1).then_some(body)
    })
    .await;
    let id = listing["dead_letters"][0]["id"]
        .as_i64()
        .expect("id")
        .to_string();
    let (code, out) = tokio::task::block_in_place(|| flowd(&["dead-letters"]));
    assert_eq!(code, 0);
    assert!(out.contains("broken") && out.contains("http"), "{out}");
    let (code, out) = tokio::task::block_in_place(|| flowd(&["dead-letters", "retry", &id]));
    assert_eq!(code, 0, "{out}");
    let (code, out) = tokio::task::block_in_place(|| flowd(&["dead-letters", "retry", &id]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("retried already"), "{out}");

    let (code, out) = tokio::task::block_in_place(|| flowd(&["executions", "--rule", "resend"]));
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ID") && out.contains("resend") && out.contains("succeeded"),
        "{out}"
    );
    let (code, out) = tokio::task::block_in_place(|| flowd(&["runs"]));
    assert_eq!(code, 0);
    assert!(out.contains(&run.id), "{out}");
    let (code, out) = tokio::task::block_in_place(|| flowd(&["reload"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("unchanged: 2 rules"), "{out}");
}

/// A minimal SMTP server: accepts one session after another and keeps each message's DATA.
async fn smtp_sink() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    smtp_sink_cutting(false).await
}

/// [`smtp_sink`]; with `cut_after_data`, it keeps the message and then closes the connection
/// instead of answering `250` (the client cannot tell whether the mail was taken).
pub(crate) async fn smtp_sink_cutting(
    cut_after_data: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = messages.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                let mut in_data = false;
                let mut data = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if in_data {
                        if line == "." {
                            in_data = false;
                            store.lock().expect("lock").push(std::mem::take(&mut data));
                            if cut_after_data {
                                return;
                            }
                            let _ = write.write_all(b"250 queued\r\n").await;
                        } else {
                            data.push_str(&line);
                            data.push('\n');
                        }
                        continue;
                    }
                    let command = line.to_ascii_uppercase();
                    let answer: &[u8] =
                        if command.starts_with("EHLO") || command.starts_with("HELO") {
                            b"250 sink\r\n"
                        } else if command.starts_with("DATA") {
                            in_data = true;
                            b"354 go on\r\n"
                        } else if command.starts_with("QUIT") {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                    let _ = write.write_all(answer).await;
                }
            });
        }
    });
    (addr, messages)
}

#[tokio::test(flavor = "multi_thread")]
async fn email_steps_go_out_by_smtp() {
    let (smtp, messages) = smtp_sink().await;
    let rules = r#"
rules:
  - name: mail
    on: { event: mail }
    do:
      - email:
          to: [recruiter@example.com]
          subject: "Candidate {{event.data.name}}"
          body: "Please call {{event.data.name}}."
          html: "<p>Please call <b>{{event.data.name}}</b>.</p>"
"#;
    let port = smtp.port().to_string();
    let world = world(
        rules,
        &[
            ("FLOWD_SMTP_HOST", "127.0.0.1"),
            ("FLOWD_SMTP_PORT", port.as_str()),
            ("FLOWD_SMTP_FROM", "flowd@example.com"),
            ("FLOWD_SMTP_TLS", "none"),
        ],
    )
    .await;
    post_event(&world.daemon, "mail", json!({"name": "Ana"})).await;
    let message = eventually(WAIT, "the mail reaches the SMTP sink", || async {
        messages.lock().expect("lock").first().cloned()
    })
    .await;
    assert!(message.contains("Subject: Candidate Ana"), "{message}");
    assert!(message.contains("To: recruiter@example.com"), "{message}");
    assert!(message.contains("Please call Ana."), "{message}");
    assert!(message.contains("text/html"), "{message}");
    let executions: Value = reqwest::get(world.daemon.admin_url("/api/v1/executions?rule=mail"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(executions["executions"][0]["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_killed_halfway_resumes_without_doubles_or_gaps() {
    let rules = format!("rules:\n{SWEEP_LOG_RULE}");
    let mut world = world(&rules, &[]).await;
    seed_flow_runs(&world.sim, 2000, |_| "timeout");
    // Slow pages (40 of them) so that the kill lands in the middle of the sweep.
    crate::recrubo_client::set_faults(&world.sim, json!({"latency_ms": 40})).await;
    post_event(&world.daemon, "kick", json!({})).await;
    eventually(WAIT, "the sweep is under way", || async {
        (flow_run_pages(&world.sim).await >= 8).then_some(())
    })
    .await;
    let state = world.kill_daemon();
    crate::recrubo_client::set_faults(&world.sim, json!({})).await;
    world.start_again(state);
    // Offset pages are no snapshot: a page read while the resumed sweep still stores its last
    // batch shifts the later pages. So wait until everything has succeeded, the sweep's own
    // execution (no item) included, which stores nothing more after it ends; then read again.
    let list = || async {
        let mut all = Vec::new();
        for page in 1..=3 {
            let body: Value = reqwest::get(world.daemon.admin_url(&format!(
                "/api/v1/executions?rule=sweep&limit=1000&page={page}"
            )))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
            all.extend(body["executions"].as_array()?.iter().cloned());
        }
        Some(all)
    };
    eventually(
        Duration::from_secs(60),
        "one execution per item",
        || async {
            let all = list().await?;
            let done = all.len() >= 2001 && all.iter().all(|e| e["status"] == "succeeded");
            done.then_some(())
        },
    )
    .await;
    let executions = list().await.expect("the executions once the sweep ended");
    let mut items: Vec<String> = executions
        .iter()
        .filter_map(|e| e["context"]["item"]["id"].as_str().map(str::to_owned))
        .collect();
    let total = items.len();
    items.sort();
    items.dedup();
    assert_eq!(
        (total, items.len()),
        (2000, 2000),
        "every item exactly once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn other_events_are_handled_while_a_long_sweep_pages() {
    let rules = SWEEP_LOG_RULE.to_owned()
        + r#"
  - name: ping
    on: { event: ping }
    do:
      - notify: { url: SINK_URL, body: { pong: true } }
"#;
    let world = world(&format!("rules:\n{rules}"), &[]).await;
    seed_flow_runs(&world.sim, 2000, |_| "timeout");
    // 40 pages at 100 ms each: the sweep takes at least 4 s.
    crate::recrubo_client::set_faults(&world.sim, json!({"latency_ms": 100})).await;
    post_event(&world.daemon, "kick", json!({})).await;
    eventually(WAIT, "the sweep is under way", || async {
        (flow_run_pages(&world.sim).await >= 2).then_some(())
    })
    .await;
    post_event(&world.daemon, "ping", json!({})).await;
    eventually(WAIT, "the ping's notification", || async {
        (!world.sink.received().is_empty()).then_some(())
    })
    .await;
    let paged = flow_run_pages(&world.sim).await;
    assert!(
        paged < 40,
        "the ping was handled only after the sweep's {paged} pages"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_meets_an_impossible_value_fails_and_frees_the_rule_s_slot() {
    let rules = r#"
rules:
  - name: generate
    on: { event: vacancy.published }
    concurrency: 1
    do:
      - generate_flow: { flow_type: vacancy_application_flow, parameters: "{{event.data.p}}" }
      - notify: { url: SINK_URL, body: { done: "{{event.data.n}}" } }
"#;
    let world = world(rules, &[]).await;
    post_event(
        &world.daemon,
        "vacancy.published",
        json!({"p": "a string", "n": "bad"}),
    )
    .await;
    post_event(
        &world.daemon,
        "vacancy.published",
        json!({"p": ["a", "list"], "n": "bad2"}),
    )
    .await;
    post_event(
        &world.daemon,
        "vacancy.published",
        json!({"p": {"vacancyId": "v-1"}, "n": "good"}),
    )
    .await;
    eventually(
        WAIT,
        "the valid execution after the bad ones ran",
        || async {
            world
                .sink
                .received()
                .iter()
                .any(|r| r.body["done"] == "good")
                .then_some(())
        },
    )
    .await;
    // Executions of one rule may run in any order: wait for both dead letters.
    let dead = eventually(WAIT, "both bad executions are dead letters", || async {
        let dead: Value = reqwest::get(world.daemon.admin_url("/api/v1/dead-letters"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let dead = dead["dead_letters"].as_array()?.clone();
        (dead.len() >= 2).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter()
            .all(|d| d.to_string().contains("`parameters` must be an object")),
        "{dead:?}"
    );
}
