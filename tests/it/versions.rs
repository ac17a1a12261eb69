//! Rule versions (DESIGN 3): an execution runs the rule version it matched to its end, across a
//! reload that changes its steps and across a restart, and its history names that version's
//! steps.

use serde_json::{Value, json};

use flowd::sim::Faults;

use crate::engine::{WAIT, World, post_event, runs_on_thread, world};
use crate::faults::set_faults;
use crate::support::eventually;

fn rules(version: &str) -> String {
    format!(
        r#"
rules:
  - name: screen
    on: {{ event: application.created }}
    do:
      - id: start_{version}
        retry: {{ attempts: 100, backoff: 100ms, max_backoff: 200ms }}
        start_flow_run: {{ flow: flow-{version}, message_thread: "{{{{event.data.thread}}}}" }}
      - id: tell_{version}
        notify: {{ url: SINK_URL, body: {{ version: "{version}" }} }}
"#
    )
}

/// Posts one event while every Recrubo call fails, and waits until its execution retries.
async fn held_in_retry(world: &World, thread: &str) -> String {
    set_faults(
        world,
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    post_event(
        &world.daemon,
        "application.created",
        json!({ "thread": thread }),
    )
    .await;
    eventually(WAIT, "the execution retries its first step", || async {
        let listed: Value = reqwest::get(world.daemon.admin_url("/api/v1/executions?rule=screen"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let execution = listed["executions"].as_array()?.first()?.clone();
        (execution["attempt"].as_i64()? >= 2).then(|| execution["id"].as_str().unwrap().to_owned())
    })
    .await
}

/// Writes the v2 rules (new step ids, another flow, another message).
fn edit_to_v2(world: &World) {
    std::fs::write(
        world._rules.path().join("rules.yaml"),
        rules("v2").replace("SINK_URL", &world.sink.url()),
    )
    .unwrap();
}

async fn finishes_with_v1(world: &World, execution: &str, thread: &str) {
    set_faults(world, Faults::default()).await;
    let message = eventually(WAIT, "the execution's notification", || async {
        world.sink.received().first().map(|r| r.body.clone())
    })
    .await;
    assert_eq!(message["version"], "v1", "{message}");
    let runs = runs_on_thread(&world.client, thread).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].attributes["flowId"], "flow-v1");
    let detail: Value = reqwest::get(
        world
            .daemon
            .admin_url(&format!("/api/v1/executions/{execution}")),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let steps: Vec<&str> = detail["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["step_id"].as_str())
        .collect();
    assert_eq!(steps, ["start_v1", "tell_v1"], "{detail}");
    assert_eq!(detail["execution"]["status"], "succeeded", "{detail}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execution_in_retry_across_a_reload_finishes_with_its_own_steps() {
    let world = world(&rules("v1"), &[]).await;
    let execution = held_in_retry(&world, "thread-reload").await;
    edit_to_v2(&world);
    let reloaded = reqwest::Client::new()
        .post(world.daemon.admin_url("/api/v1/reload"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let body: Value = reloaded.json().await.unwrap();
    assert_eq!(body["status"], "reloaded", "{body}");
    finishes_with_v1(&world, &execution, "thread-reload").await;
    // A new event runs the new version.
    post_event(
        &world.daemon,
        "application.created",
        json!({ "thread": "thread-new" }),
    )
    .await;
    let message = eventually(WAIT, "the new execution's notification", || async {
        world.sink.received().get(1).map(|r| r.body.clone())
    })
    .await;
    assert_eq!(message["version"], "v2");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_execution_in_retry_across_a_restart_finishes_with_its_own_steps() {
    let mut world = world(&rules("v1"), &[]).await;
    let execution = held_in_retry(&world, "thread-restart").await;
    let state = world.kill_daemon();
    edit_to_v2(&world);
    world.start_again(state);
    finishes_with_v1(&world, &execution, "thread-restart").await;
}
