//! Flow control per key (DESIGN 2.5) end to end: the simulator and the daemon on port 0.

use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::{WAIT, drive, post_event, world};
use crate::recrubo_client::sim_requests;
use crate::support::eventually;

/// The flow runs the simulator holds, oldest first: (id, status, state).
async fn runs(world: &crate::engine::World) -> Vec<(String, String, Value)> {
    let page = world
        .client
        .list_flow_runs(
            &flowd::recrubo::ListQuery::new()
                .sort("createdAt")
                .page_size(100),
        )
        .await
        .expect("list runs");
    page.items
        .into_iter()
        .map(|run| {
            (
                run.id.clone(),
                run.str_attribute("status").unwrap_or_default().to_owned(),
                run.attributes.get("state").cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

async fn executions(world: &crate::engine::World, rule: &str) -> Vec<Value> {
    let body: Value = reqwest::get(
        world
            .daemon
            .admin_url(&format!("/api/v1/executions?rule={rule}&limit=500")),
    )
    .await
    .expect("get")
    .json()
    .await
    .expect("json");
    body["executions"].as_array().cloned().unwrap_or_default()
}

fn bodies(world: &crate::engine::World) -> Vec<Value> {
    world.sink.received().into_iter().map(|r| r.body).collect()
}

fn with_status<'a>(executions: &'a [Value], status: &str) -> Vec<&'a Value> {
    executions
        .iter()
        .filter(|e| e["status"] == status)
        .collect()
}

fn screening(concurrency: &str, extra: &str) -> String {
    format!(
        r#"
rules:
  - name: screen
    on: {{ event: application.created }}
    key: "{{{{event.data.candidate}}}}"
    concurrency: {concurrency}
{extra}
    do:
      - id: screening
        start_flow_run:
          flow: screening-flow
          message_thread: "thread-{{{{event.data.candidate}}}}"
          state: {{ n: "{{{{event.data.n}}}}" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_runs_one_chat_per_candidate_at_a_time_in_order() {
    let world = world(&screening("{ limit: 1, mode: queue }", ""), &[]).await;
    for n in 0..20 {
        post_event(
            &world.daemon,
            "application.created",
            json!({"candidate": "c-1", "n": n}),
        )
        .await;
    }
    // Another candidate is not held behind c-1.
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-2", "n": 100}),
    )
    .await;
    let mut finished = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while finished < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue stalled after {finished} runs"
        );
        let all: Vec<_> = runs(&world)
            .await
            .into_iter()
            .filter(|(_, _, state)| state["n"] != 100)
            .collect();
        let active: Vec<_> = all
            .iter()
            .filter(|(_, status, _)| status == "queued")
            .collect();
        assert!(
            active.len() <= 1,
            "two chats with one candidate at once: {active:?}"
        );
        if let Some((id, _, state)) = active.first() {
            assert_eq!(state["n"], json!(finished), "the queue runs in order");
            if finished == 3 {
                // The ones behind show why they wait.
                let waiting = with_status(&executions(&world, "screen").await, "waiting")
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>();
                assert!(!waiting.is_empty(), "executions wait visibly");
                assert!(
                    waiting
                        .iter()
                        .all(|e| e["waiting"]["kind"] == "queue"
                            && e["waiting"]["behind"].is_string()),
                    "{waiting:?}"
                );
            }
            drive(&world.sim, id, "finished", Value::Null).await;
            finished += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let other = runs(&world)
        .await
        .into_iter()
        .filter(|(_, _, s)| s["n"] == 100)
        .count();
    assert_eq!(other, 1, "the other candidate's chat ran");
    let all = executions(&world, "screen").await;
    eventually(WAIT, "every execution done", || async {
        let all = executions(&world, "screen").await;
        (with_status(&all, "succeeded").len() == 21).then_some(())
    })
    .await;
    assert_eq!(all.len(), 21);
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_runs_one_and_records_the_rest_with_the_reason() {
    let world = world(&screening("{ limit: 1, mode: skip }", ""), &[]).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-1", "n": 0}),
    )
    .await;
    eventually(WAIT, "the first chat starts", || async {
        (runs(&world).await.len() == 1).then_some(())
    })
    .await;
    for n in 1..20 {
        post_event(
            &world.daemon,
            "application.created",
            json!({"candidate": "c-1", "n": n}),
        )
        .await;
    }
    let skipped = eventually(WAIT, "19 skipped", || async {
        let all = executions(&world, "screen").await;
        let skipped: Vec<Value> = with_status(&all, "skipped").into_iter().cloned().collect();
        (skipped.len() == 19).then_some(skipped)
    })
    .await;
    assert!(
        skipped.iter().all(|e| e["last_error"]
            .as_str()
            .is_some_and(|r| r.contains("mode skip") && r.contains("c-1"))),
        "{skipped:?}"
    );
    assert_eq!(runs(&world).await.len(), 1, "one chat only");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_previous_cancels_the_active_chat_and_starts_the_new_one() {
    let rules = screening(
        "{ limit: 1, mode: cancel_previous }",
        r#"    on_cancel:
      - update_flow_run: { id: "{{steps.screening.id}}", status: cancelled }"#,
    );
    let world = world(&rules, &[]).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-1", "n": 0}),
    )
    .await;
    let first = eventually(WAIT, "the first chat starts", || async {
        runs(&world).await.into_iter().next().map(|(id, ..)| id)
    })
    .await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-1", "n": 1}),
    )
    .await;
    eventually(
        WAIT,
        "the first chat is cancelled and a second one started",
        || async {
            let all = runs(&world).await;
            (all.len() == 2 && all[0].1 == "cancelled" && all[1].1 == "queued").then_some(())
        },
    )
    .await;
    let patches: Vec<Value> = sim_requests(&world.sim)
        .await
        .into_iter()
        .filter(|r| {
            r["method"] == "PATCH"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/flow-runs/"))
        })
        .collect();
    assert_eq!(patches.len(), 1, "the old chat is closed once: {patches:?}");
    assert!(
        patches[0]["path"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&first)
    );
    let all = executions(&world, "screen").await;
    assert_eq!(with_status(&all, "cancelled").len(), 1, "{all:?}");
    // The cancelled run's later webhooks fire nothing (no handler, no new state).
    drive(&world.sim, &first, "finished", Value::Null).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_on_stops_every_kind_of_pending_work_for_that_candidate_only() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    key: "{{event.data.candidate}}"
    throttle: { limit: 1, period: 1h }
    cancel_on:
      - event: application.withdrawn
        key: "{{event.data.candidate}}"
        if: event.data.reason != "duplicate"
    on_cancel:
      - update_flow_run: { id: "{{steps.screening.id}}", status: cancelled }
      - notify: { url: SINK_URL, body: { cancelled: "{{event.data.candidate}}" } }
    do:
      - id: screening
        start_flow_run:
          flow: screening-flow
          message_thread: "thread-{{event.data.candidate}}"
        on_status:
          finished:
            - notify: { url: SINK_URL, body: { finished: "{{event.data.candidate}}" } }
"#;
    let world = world(rules, &[]).await;
    // c-1: one chat followed, one more throttled behind it; c-2: one chat followed.
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-1"}),
    )
    .await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-2"}),
    )
    .await;
    eventually(WAIT, "two chats", || async {
        (runs(&world).await.len() == 2).then_some(())
    })
    .await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"candidate": "c-1"}),
    )
    .await;
    eventually(WAIT, "the second of c-1 is throttled", || async {
        let all = executions(&world, "screen").await;
        with_status(&all, "waiting")
            .first()
            .filter(|e| e["waiting"]["kind"] == "throttle")
            .map(|_| ())
    })
    .await;
    // A withdrawal the condition excludes cancels nothing.
    post_event(
        &world.daemon,
        "application.withdrawn",
        json!({"candidate": "c-1", "reason": "duplicate"}),
    )
    .await;
    post_event(
        &world.daemon,
        "application.withdrawn",
        json!({"candidate": "c-1", "reason": "hired elsewhere"}),
    )
    .await;
    let cancelled = eventually(WAIT, "both of c-1 cancelled", || async {
        let all = executions(&world, "screen").await;
        let main: Vec<Value> = all
            .iter()
            .filter(|e| e["handler_status"].is_null() && e["status"] == "cancelled")
            .cloned()
            .collect();
        let handlers_done = all
            .iter()
            .filter(|e| e["handler_status"] == "cancel" && e["status"] == "succeeded")
            .count();
        (main.len() == 2 && handlers_done == 2).then_some(main)
    })
    .await;
    assert!(
        cancelled
            .iter()
            .all(|e| e["context"]["event"]["data"]["candidate"] == "c-1")
    );
    // The chat was closed once; the throttled one never started one.
    let all_runs = runs(&world).await;
    assert_eq!(all_runs.len(), 2, "{all_runs:?}");
    let statuses: Vec<&str> = all_runs.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "cancelled").count(),
        1,
        "{statuses:?}"
    );
    // c-2 is untouched: its chat finishing fires its handler; c-1's cancelled chat fires none.
    for (id, status, _) in &all_runs {
        if status == "queued" {
            drive(&world.sim, id, "finished", Value::Null).await;
        }
    }
    let c2 = eventually(WAIT, "c-2's handler ran", || async {
        bodies(&world).into_iter().find(|b| b["finished"] == "c-2")
    })
    .await;
    assert_eq!(c2["finished"], "c-2");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = bodies(&world);
    assert_eq!(
        seen.iter().filter(|b| b["cancelled"] == "c-1").count(),
        2,
        "on_cancel once per cancelled execution: {seen:?}"
    );
    assert!(!seen.iter().any(|b| b["finished"] == "c-1"), "{seen:?}");
    // A second withdrawal cancels nothing twice.
    post_event(
        &world.daemon,
        "application.withdrawn",
        json!({"candidate": "c-1", "reason": "again"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bodies(&world)
            .iter()
            .filter(|b| b["cancelled"] == "c-1")
            .count(),
        2
    );
}
