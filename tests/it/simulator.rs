//! The simulator on its own: lifecycles, webhooks with the secret header, delivery retries,
//! subscriptions, every fault knob, and the documented example payloads (contract).

use std::time::Duration;

use serde_json::{Value, json};

use flowd::recrubo::jsonapi::{Document, Resource, WebhookPayload};
use flowd::recrubo::{FlowRunStatus, ListQuery, NewFlowRun};
use flowd::sim::SimSettings;

use crate::receiver::Receiver;
use crate::recrubo_client::{client_for, set_faults, sim, sim_requests};
use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(5);

fn settings_for(receiver: &Receiver) -> SimSettings {
    SimSettings {
        webhook_url: Some(receiver.url()),
        webhook_secret: Some("s3cret".into()),
        retry_scale: Some(0.0001),
        ..SimSettings::default()
    }
}

fn script(yaml: &str) -> flowd::sim::Script {
    serde_saphyr::from_str(yaml).expect("script parses")
}

fn new_run(flow: &str, state: Value) -> NewFlowRun {
    NewFlowRun {
        flow_id: flow.to_owned(),
        message_thread_id: "thread".to_owned(),
        state,
        initial_message: Value::Null,
    }
}

async fn deliveries(sim: &flowd::sim::SimHandle) -> Vec<Value> {
    reqwest::get(sim.url("/_sim/deliveries"))
        .await
        .expect("deliveries")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_runs_end_by_flow_and_by_rule_with_webhooks() {
    let receiver = Receiver::start().await;
    let mut settings = settings_for(&receiver);
    settings.script = script(
        r#"
flow_runs:
  running_after: 20ms
  finish_after: 60ms
  outcome: { status: finished, state: { passed: true } }
  by_flow:
    slow-flow: { status: timeout }
  rules:
    - { when: "state.score < 5", status: exception }
"#,
    );
    let sim = sim(settings).await;
    let client = client_for(&sim, "t", |_| {});
    let passing = client
        .create_flow_run(&new_run("any", json!({"score": 8})))
        .await
        .expect("run");
    let timing_out = client
        .create_flow_run(&new_run("slow-flow", json!({"score": 8})))
        .await
        .expect("run");
    let failing = client
        .create_flow_run(&new_run("any", json!({"score": 2})))
        .await
        .expect("run");

    let received = eventually(
        WAIT,
        "six webhooks (running + final for three runs)",
        || async {
            let received = receiver.received();
            (received.len() >= 6).then_some(received)
        },
    )
    .await;
    assert!(
        received
            .iter()
            .all(|r| r.secret.as_deref() == Some("s3cret"))
    );
    assert!(received.iter().all(|r| r.event() == "update"));
    let final_status = |id: &str| {
        received
            .iter()
            .filter(|r| r.body["data"]["attributes"]["resource"]["id"] == id)
            .filter_map(|r| r.status().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert_eq!(final_status(passing.id()), ["running", "finished"]);
    assert_eq!(final_status(timing_out.id()), ["running", "timeout"]);
    assert_eq!(final_status(failing.id()), ["running", "exception"]);
    let finished = client.get_flow_run(passing.id()).await.expect("get");
    assert_eq!(finished.state(), json!({"score": 8, "passed": true}));
    assert_eq!(finished.cost(), Some(1.0));
    // Every payload has Recrubo's shape.
    for delivery in &received {
        let payload: WebhookPayload =
            serde_json::from_value(delivery.body.clone()).expect("WebhookPayload");
        assert_eq!(payload.data.payload_type, "webhookPayload");
        assert_eq!(
            payload
                .data
                .attributes
                .fields
                .as_ref()
                .map(|f| f.contains(&"status".to_owned())),
            Some(true)
        );
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_script_runs_wait_for_control_calls() {
    let receiver = Receiver::start().await;
    let sim = sim(settings_for(&receiver)).await;
    let client = client_for(&sim, "t", |_| {});
    let run = client
        .create_flow_run(&new_run("f", json!({})))
        .await
        .expect("run");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        client.get_flow_run(run.id()).await.expect("get").status(),
        FlowRunStatus::Queued
    );
    assert!(
        receiver.received().is_empty(),
        "creates are not delivered by default"
    );

    let http = reqwest::Client::new();
    let answer = http
        .post(sim.url(&format!("/_sim/flow-runs/{}/status", run.id())))
        .json(&json!({"status": "finished", "state": {"knockout_passed": true}}))
        .send()
        .await
        .expect("control");
    assert_eq!(answer.status(), 200);
    let received = eventually(WAIT, "the finished webhook", || async {
        receiver
            .received()
            .into_iter()
            .find(|r| r.status() == Some("finished"))
    })
    .await;
    assert_eq!(
        received.body["data"]["attributes"]["resource"]["attributes"]["state"]["knockout_passed"],
        true
    );
    let unknown = http
        .post(sim.url("/_sim/flow-runs/nope/status"))
        .json(&json!({"status": "finished"}))
        .send()
        .await
        .expect("control");
    assert_eq!(unknown.status(), 404);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_deliveries_are_retried_with_the_same_log_id() {
    let receiver = Receiver::start().await;
    let sim = sim(settings_for(&receiver)).await;
    let client = client_for(&sim, "t", |_| {});
    let run = client
        .create_flow_run(&new_run("f", json!({})))
        .await
        .expect("run");
    receiver.fail_next(2);
    reqwest::Client::new()
        .post(sim.url(&format!("/_sim/flow-runs/{}/status", run.id())))
        .json(&json!({"status": "running"}))
        .send()
        .await
        .expect("control");
    let received = eventually(WAIT, "the delivery after two failures", || async {
        receiver.received().into_iter().next()
    })
    .await;
    let log = deliveries(&sim).await;
    let attempts: Vec<(u64, Option<u64>)> = log
        .iter()
        .filter(|d| d["log_id"] == received.log_id())
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap_or(0),
                d["response_status"].as_u64(),
            )
        })
        .collect();
    assert_eq!(attempts, [(1, Some(500)), (2, Some(500)), (3, Some(200))]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_choose_resource_event_and_fields() {
    let receiver = Receiver::start().await;
    let sim = sim(settings_for(&receiver)).await;
    let client = client_for(&sim, "t", |_| {});
    let mut attributes = serde_json::Map::new();
    attributes.insert("resource".into(), json!("flowRuns"));
    attributes.insert("event".into(), json!("update"));
    attributes.insert("fields".into(), json!(["state"]));
    let subscription = client.create_webhook(attributes).await.expect("subscribe");
    let run = client
        .create_flow_run(&new_run("f", json!({})))
        .await
        .expect("run");
    let http = reqwest::Client::new();
    // A status-only change: not subscribed.
    http.post(sim.url(&format!("/_sim/flow-runs/{}/status", run.id())))
        .json(&json!({"status": "finished"}))
        .send()
        .await
        .expect("control");
    // A state change: subscribed.
    client
        .patch_flow_run(
            run.id(),
            &flowd::recrubo::FlowRunPatch {
                state: Some(json!({})),
                status: None,
            },
        )
        .await
        .expect("patch");
    let received = eventually(WAIT, "the state delivery", || async {
        receiver.received().into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(
        received.body["data"]["attributes"]["webhookId"],
        subscription.id.as_str()
    );
    assert_eq!(
        received.body["data"]["attributes"]["fields"],
        json!(["state"])
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_faults_drop_duplicate_and_delay() {
    let receiver = Receiver::start().await;
    let sim = sim(settings_for(&receiver)).await;
    let client = client_for(&sim, "t", |_| {});
    let http = reqwest::Client::new();
    let drive = |id: String, status: &'static str| {
        let http = http.clone();
        let url = sim.url(&format!("/_sim/flow-runs/{id}/status"));
        async move {
            http.post(url)
                .json(&json!({"status": status}))
                .send()
                .await
                .expect("control");
        }
    };
    let run = client
        .create_flow_run(&new_run("f", json!({})))
        .await
        .expect("run");

    set_faults(&sim, json!({"drop_rate": 1.0})).await;
    drive(run.id().to_owned(), "running").await;
    eventually(WAIT, "the dropped delivery is recorded", || async {
        deliveries(&sim)
            .await
            .iter()
            .any(|d| d["error"] == "dropped (fault)")
            .then_some(())
    })
    .await;
    assert!(receiver.received().is_empty());

    set_faults(&sim, json!({"duplicate_rate": 1.0})).await;
    drive(run.id().to_owned(), "finished").await;
    let received = eventually(WAIT, "two copies", || async {
        let received = receiver.received();
        (received.len() == 2).then_some(received)
    })
    .await;
    assert_eq!(received[0].log_id(), received[1].log_id());

    set_faults(&sim, json!({"delivery_delay_ms": 300, "reorder_rate": 1.0})).await;
    let before = sim.state.elapsed_ms();
    drive(run.id().to_owned(), "timeout").await;
    let delivered = eventually(WAIT, "the delayed delivery", || async {
        deliveries(&sim)
            .await
            .into_iter()
            .find(|d| d["status"] == "timeout")
    })
    .await;
    let after = delivered["at_ms"].as_u64().unwrap_or(0);
    assert!(
        after - before >= 350,
        "delivered {} ms after the change",
        after - before
    );

    // Faults are validated.
    let refused = http
        .post(sim.url("/_sim/faults"))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .expect("faults");
    assert_eq!(refused.status(), 422);
    let unknown = http
        .post(sim.url("/_sim/faults"))
        .json(&json!({"eror_rate": 0.1}))
        .send()
        .await
        .expect("faults");
    assert_eq!(unknown.status(), 400);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_faults_answer_503_and_429() {
    let sim = sim(SimSettings::default()).await;
    let http = reqwest::Client::new();
    set_faults(&sim, json!({"error_rate": 1.0})).await;
    let answer = http
        .get(sim.url("/public/v2/flows"))
        .bearer_auth("t")
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 503);
    set_faults(
        &sim,
        json!({"throttle_rate": 1.0, "retry_after_seconds": 7}),
    )
    .await;
    let answer = http
        .get(sim.url("/public/v2/flows"))
        .bearer_auth("t")
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after"], "7");
    let requests = sim_requests(&sim).await;
    assert_eq!(requests[0]["fault"], "503");
    assert_eq!(requests[1]["fault"], "429");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn generations_and_analyses_follow_their_lifecycles() {
    let receiver = Receiver::start().await;
    let mut settings = settings_for(&receiver);
    settings.script = script(
        "flow_generations: { processing_after: 20ms, finish_after: 50ms }\nanalysis_delay: 10ms\n",
    );
    let sim = sim(settings).await;
    let client = client_for(&sim, "t", |_| {});
    let generation = client
        .create_flow_generation(&flowd::recrubo::NewFlowGeneration {
            flow_type: "vacancy_application_flow".into(),
            parameters: json!({}),
            context: json!({}),
        })
        .await
        .expect("generation");
    let statuses = eventually(WAIT, "processing and finished webhooks", || async {
        let statuses: Vec<String> = receiver
            .received()
            .iter()
            .filter(|r| r.body["data"]["attributes"]["resource"]["type"] == "flowGenerations")
            .filter_map(|r| r.status().map(str::to_owned))
            .collect();
        (statuses.len() == 2).then_some(statuses)
    })
    .await;
    assert_eq!(statuses, ["processing", "finished"]);
    let finished = client
        .get_flow_generation(generation.id())
        .await
        .expect("get");
    let flow_id = finished.flow_id().expect("flowId");
    assert!(client.get_flow(flow_id).await.is_ok(), "a new Flow exists");

    let analysis = client
        .create_vacancy_analysis("Must speak fluent Dutch")
        .await
        .expect("analysis");
    assert!(!analysis.is_done());
    let done = eventually(WAIT, "the analysis result", || async {
        client
            .get_vacancy_analysis(analysis.id())
            .await
            .ok()
            .filter(|a| a.is_done())
    })
    .await;
    assert_eq!(
        done.analyze_result().expect("result")["hardSkills"][0]["rating"],
        5
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_examples_pass_through_both_sides() {
    let sim = sim(SimSettings::default()).await;
    let http = reqwest::Client::new();
    // recrubo-api.md §6.1: the flow-run POST of the Triggering flows guide.
    let flow_run_post = json!({"data": {"type": "flowRuns", "attributes": {
        "flowId": "eb3c92e9-2548-4e4c-95d5-adfb94270c3f",
        "messageThreadId": "7125853f-26ac-4a65-9044-cab092806249",
        "state": {},
        "initialMessage": {"type": "template",
            "template": {"id": "7fqa9715-5e7c-4328-ab47-bb9e595438c9",
                         "components": [{"type": "body", "parameters": [{"type": "text", "text": "John"}]}]}}}}});
    let answer = http
        .post(sim.url("/public/v2/flow-runs"))
        .bearer_auth("t")
        .header("content-type", "application/vnd.api+json")
        .json(&flow_run_post)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 201);
    let created: Document<Resource> = answer.json().await.expect("document");
    let run = flowd::recrubo::FlowRun {
        resource: created.data,
    };
    assert_eq!(run.status(), FlowRunStatus::Queued);
    assert_eq!(
        run.resource.attributes["initialMessage"]["template"]["components"][0]["type"],
        "body"
    );

    // §6.1: the initial response of the guide, as Recrubo sends it.
    let initial: Document<Resource> = serde_json::from_value(json!({"data": {"id": "cbb3835f-137e-49ed-b5cb-e72eefde7da2", "type": "flowRuns",
        "attributes": {"createdAt": "2024-04-16T07:05:39+00:00", "updatedAt": "2024-04-16T07:05:39+00:00", "status": "queued", "cost": 0}}}))
        .expect("initial response");
    let initial = flowd::recrubo::FlowRun {
        resource: initial.data,
    };
    assert_eq!(initial.status(), FlowRunStatus::Queued);
    assert!(initial.updated_at().is_some());
    assert_eq!(FlowRunStatus::parse("created"), FlowRunStatus::Created);
    assert_eq!(
        FlowRunStatus::parse("paused"),
        FlowRunStatus::Other("paused".into())
    );

    // §6.2: the flow-generation POST of the Generating flows guide.
    let generation_post = json!({"data": {"type": "flowGenerations", "attributes": {"flowType": "vacancy_application_flow",
        "parameters": {"knockoutRequirements": [{"value": "Has 1 year of javascript experience.", "sessionField": "java_skill"},
                                                {"value": "Fluent in Dutch", "sessionField": "dutch_fluency"}],
                       "preferredRequirements": [{"value": "Lives in amsterdam", "sessionField": "location"}],
                       "requiredFields": [{"value": "name", "sessionField": "name"}, {"value": "email", "sessionField": "email"}]},
        "context": {"text": "We are hiring a JavaScript developer"}}}});
    let answer = http
        .post(sim.url("/public/v2/flow-generations?sync=true"))
        .bearer_auth("t")
        .json(&generation_post)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 201);
    let generation: Document<Resource> = answer.json().await.expect("document");
    assert_eq!(generation.data.attributes["status"], "finished");
    assert_eq!(
        generation.data.attributes["parameters"]["knockoutRequirements"][1]["sessionField"],
        "dutch_fluency"
    );

    // §9.4: the webhook payload example (a candidate create, without webhookId and fields).
    let payload: WebhookPayload = serde_json::from_value(json!({"data":{"type":"webhookPayload","id":"b6445194-8a33-433e-bad2-89c6463eb620",
        "attributes":{"event":"create",
          "resource":{"id":"0970562b-5231-406a-a4b3-2b976c0bfc18","type":"candidates",
            "attributes":{"createdAt":"2024-04-15T00:00:00+00:00","updatedAt":"2024-04-15T00:00:00+00:00",
                          "firstName":"Recrubo","lastName":"Developer","email":"dev@example.com"},
            "relationships":{"organization":{"links":{"related":"/public/v2/organizations/f034e98b-591d-48d6-9fb1-903808deebe5"}}}}}}}))
        .expect("the documented payload parses");
    assert_eq!(payload.data.attributes.event, "create");
    assert_eq!(payload.data.attributes.webhook_id, None);
    assert_eq!(payload.data.attributes.resource.resource_type, "candidates");
    assert_eq!(
        payload.data.attributes.resource.attributes["firstName"],
        "Recrubo"
    );

    // Malformed bodies get a 4xx with the reason.
    let answer = http
        .post(sim.url("/public/v2/flow-runs"))
        .bearer_auth("t")
        .body("{")
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 400);
    let answer = http
        .post(sim.url("/public/v2/flow-runs"))
        .bearer_auth("t")
        .json(&json!({"data": {"type": "flows", "attributes": {}}}))
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 409);
    let answer = http
        .get(sim.url("/public/v2/flow-runs?filter[status][near]=x"))
        .bearer_auth("t")
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 400);
    let client = client_for(&sim, "t", |_| {});
    assert_eq!(
        client
            .list_flow_runs(&ListQuery::new())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    sim.stop().await;
}
