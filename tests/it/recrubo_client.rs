//! The Recrubo client against the simulator, end to end over HTTP.

use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use serde_json::json;

use flowd::recrubo::{
    ClientSettings, FilterOp, FlowRunPatch, FlowRunStatus, ListQuery, NewFlowGeneration,
    NewFlowRun, RecruboClient, RecruboError,
};
use flowd::settings::Secret;
use flowd::sim::{Faults, SimHandle, SimSettings};

use crate::support::eventually;

pub async fn sim(settings: SimSettings) -> SimHandle {
    flowd::sim::start("127.0.0.1:0".parse().expect("addr"), settings)
        .await
        .expect("simulator starts")
}

pub fn client_for(
    sim: &SimHandle,
    token: &str,
    tune: impl FnOnce(&mut ClientSettings),
) -> RecruboClient {
    let mut settings = ClientSettings::new(sim.base_url(), Secret::new(token.to_owned()));
    settings.rate_limit = 0.0;
    settings.read_backoff = Duration::from_millis(20);
    tune(&mut settings);
    RecruboClient::new(&settings).expect("client")
}

pub async fn set_faults(sim: &SimHandle, faults: serde_json::Value) {
    let response = reqwest::Client::new()
        .post(sim.url("/_sim/faults"))
        .json(&faults)
        .send()
        .await
        .expect("faults");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
}

pub async fn sim_requests(sim: &SimHandle) -> Vec<serde_json::Value> {
    reqwest::get(sim.url("/_sim/requests"))
        .await
        .expect("requests")
        .json()
        .await
        .expect("json")
}

fn new_run(flow: &str, thread: &str) -> NewFlowRun {
    NewFlowRun {
        flow_id: flow.to_owned(),
        message_thread_id: thread.to_owned(),
        state: json!({"candidate_ref": "c-1"}),
        initial_message: serde_json::Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_works_against_the_simulator() {
    let sim = sim(SimSettings::default()).await;
    let client = client_for(&sim, "token", |_| {});

    // FlowRuns: create, get, list with filters, patch.
    let run = client
        .create_flow_run(&new_run("flow-1", "thread-1"))
        .await
        .expect("create");
    assert_eq!(run.status(), FlowRunStatus::Queued);
    assert_eq!(run.cost(), Some(0.0));
    assert_eq!(run.state(), json!({"candidate_ref": "c-1"}));
    assert_eq!(run.resource.attributes["initialMessage"], json!({}));
    let fetched = client.get_flow_run(run.id()).await.expect("get");
    assert_eq!(fetched.flow_id(), Some("flow-1"));
    assert_eq!(fetched.message_thread_id(), Some("thread-1"));
    client
        .create_flow_run(&new_run("flow-2", "thread-1"))
        .await
        .expect("create");
    let page = client
        .list_flow_runs(
            &ListQuery::new()
                .filter("flowId", "flow-1")
                .filter("messageThreadId", "thread-1"),
        )
        .await
        .expect("list");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, run.id());
    let created_since = client
        .list_flow_runs(
            &ListQuery::new()
                .filter_op("createdAt", FilterOp::Gte, "2000-01-01T00:00:00Z")
                .sort("-createdAt"),
        )
        .await
        .expect("list");
    assert_eq!(created_since.items.len(), 2);
    let patched = client
        .patch_flow_run(
            run.id(),
            &FlowRunPatch {
                state: Some(json!({})),
                status: Some("cancelled".into()),
            },
        )
        .await
        .expect("patch");
    assert_eq!(patched.status(), FlowRunStatus::Cancelled);
    assert_eq!(patched.state(), json!({}));

    // FlowGenerations: async (stays queued) and sync.
    let generation = client
        .create_flow_generation(&NewFlowGeneration {
            flow_type: "vacancy_application_flow".into(),
            parameters: json!({"knockoutRequirements": [], "preferredRequirements": []}),
            context: json!({"text": "Barista"}),
        })
        .await
        .expect("generation");
    assert_eq!(generation.status().as_str(), "queued");
    assert_eq!(
        client
            .get_flow_generation(generation.id())
            .await
            .expect("get")
            .id(),
        generation.id()
    );
    assert_eq!(
        client
            .list_flow_generations(&ListQuery::new())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let sync_client = client_for(&sim, "token", |settings| settings.sync = true);
    let finished = sync_client
        .create_flow_generation(&NewFlowGeneration {
            flow_type: "vacancy_application_flow".into(),
            parameters: json!({}),
            context: json!({}),
        })
        .await
        .expect("sync generation");
    assert_eq!(finished.status().as_str(), "finished");
    let flow_id = finished.flow_id().expect("flowId").to_owned();

    // Flows: the generation created one.
    assert_eq!(client.get_flow(&flow_id).await.expect("flow").id, flow_id);
    assert_eq!(
        client
            .list_flows(&ListQuery::new())
            .await
            .expect("flows")
            .items
            .len(),
        1
    );

    // VacancyAnalyses: sync gives the result at once.
    let analysis = sync_client
        .create_vacancy_analysis("- 3 years of experience with Java\n- A team player")
        .await
        .expect("analysis");
    let result = analysis.analyze_result().expect("result");
    assert_eq!(
        result["hardSkills"][0]["writtenAsRequirement"],
        "3 years of experience with Java."
    );
    assert_eq!(
        client
            .get_vacancy_analysis(analysis.id())
            .await
            .expect("get")
            .id(),
        analysis.id()
    );

    // MessageThreads through the raw call, then the typed reads.
    let raw = client
        .raw(
            "POST",
            "/message-threads",
            Some(&json!({"type": "messageThreads", "attributes": {"channel": "whatsapp", "identifier": "31612345678"}})),
        )
        .await
        .expect("raw");
    assert_eq!(raw.status, 201);
    let thread_id = raw.body["data"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        client
            .get_message_thread(&thread_id)
            .await
            .expect("thread")
            .id,
        thread_id
    );
    assert_eq!(
        client
            .list_message_threads(&ListQuery::new())
            .await
            .expect("threads")
            .items
            .len(),
        1
    );
    let raw_get = client
        .raw(
            "GET",
            &format!("/message-threads?filter[id]={thread_id}"),
            None,
        )
        .await
        .expect("raw get");
    assert_eq!(raw_get.body["data"][0]["id"], thread_id.as_str());

    // Webhook set-up.
    let attributes = flowd::cli::webhooks::subscription_attributes(
        &flowd::cli::webhooks::default_subscription_body(),
        "flowRuns",
        "update",
        &["status".to_owned()],
        None,
    )
    .expect("attributes");
    assert_eq!(attributes.get("fields"), Some(&json!(["status"])));
    assert!(!attributes.contains_key("webhookUrl"));
    let subscription = client.create_webhook(attributes).await.expect("subscribe");
    assert_eq!(subscription.resource_type, "webhooks");
    let organization = client
        .list("organizations", &ListQuery::new())
        .await
        .expect("orgs")
        .items[0]
        .id
        .clone();
    let updated = client
        .set_organization_webhook(
            &organization,
            "http://127.0.0.1:1/hook",
            &Secret::new("s".into()),
        )
        .await
        .expect("destination");
    assert_eq!(updated.attributes["webhookUrl"], "http://127.0.0.1:1/hook");

    // Every request carried the JSON:API headers and the token (the sim would answer 401).
    let requests = sim_requests(&sim).await;
    assert!(requests.iter().all(|r| r["status"].as_u64() != Some(401)));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_all_pages_through_a_thousand_items() {
    let sim = sim(SimSettings::default()).await;
    for index in 0..1000 {
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            "status".into(),
            json!(if index % 2 == 0 {
                "timeout"
            } else {
                "finished"
            }),
        );
        attributes.insert("n".into(), json!(index));
        sim.state.insert("flow-runs", attributes);
    }
    let client = client_for(&sim, "token", |_| {});
    let all: Vec<_> = client
        .list_all("flow-runs", ListQuery::new().page_size(200))
        .try_collect()
        .await
        .expect("pages");
    assert_eq!(all.len(), 1000);
    let mut seen: Vec<i64> = all
        .iter()
        .map(|r| r.attributes["n"].as_i64().unwrap_or(-1))
        .collect();
    seen.sort();
    assert_eq!(seen, (0..1000).collect::<Vec<_>>());
    let timeouts: Vec<_> = client
        .list_all(
            "flow-runs",
            ListQuery::new().filter("status", "timeout").page_size(30),
        )
        .try_collect()
        .await
        .expect("pages");
    assert_eq!(timeouts.len(), 500);
    let list_requests = sim_requests(&sim).await.len();
    // 5 pages of 200, then 17 pages of 30.
    assert_eq!(list_requests, 5 + 17);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_and_unknown_ids_are_fatal() {
    let sim = sim(SimSettings {
        token: Some("right".into()),
        ..SimSettings::default()
    })
    .await;
    let wrong = client_for(&sim, "wrong", |_| {});
    let err = wrong.get_flow_run("x").await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("access denied"), "{err}");
    // Reads are not retried on a fatal error: one request.
    assert_eq!(sim_requests(&sim).await.len(), 1);

    let right = client_for(&sim, "right", |_| {});
    let err = right
        .get_flow_run("00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("flowRuns not found"), "{err}");
    let err = right
        .create_flow_run(&NewFlowRun {
            flow_id: String::new(),
            ..new_run("", "t")
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.to_string().contains("`flowId` is required"), "{err}");
    assert!(
        !format!("{right:?}").contains("right"),
        "the token never prints"
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_are_retried_on_5xx_and_429_honouring_retry_after() {
    let sim = sim(SimSettings::default()).await;
    let client = client_for(&sim, "token", |settings| settings.read_attempts = 6);
    let run = client
        .create_flow_run(&new_run("f", "t"))
        .await
        .expect("create");

    // Every request fails with 503 until the faults are lifted.
    set_faults(&sim, json!({"error_rate": 1.0})).await;
    let lift = {
        let url = sim.url("/_sim/faults");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            reqwest::Client::new()
                .post(url)
                .json(&json!({}))
                .send()
                .await
                .expect("lift");
        })
    };
    let fetched = client
        .get_flow_run(run.id())
        .await
        .expect("retried until it worked");
    lift.await.expect("lift task");
    assert_eq!(fetched.id(), run.id());
    let statuses: Vec<u64> = sim_requests(&sim)
        .await
        .iter()
        .skip(1)
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert!(statuses.len() >= 2, "{statuses:?}");
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 503),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&200));

    // 429 with Retry-After: 1 — the next attempt waits a second, not the 20 ms backoff.
    reqwest::Client::new()
        .delete(sim.url("/_sim/requests"))
        .send()
        .await
        .expect("clear");
    set_faults(
        &sim,
        json!({"throttle_rate": 1.0, "retry_after_seconds": 1}),
    )
    .await;
    let lift = {
        let url = sim.url("/_sim/faults");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reqwest::Client::new()
                .post(url)
                .json(&json!({}))
                .send()
                .await
                .expect("lift");
        })
    };
    client
        .get_flow_run(run.id())
        .await
        .expect("retried after Retry-After");
    lift.await.expect("lift task");
    let requests = sim_requests(&sim).await;
    let first = &requests[0];
    let second = &requests[1];
    assert_eq!(first["status"], 429);
    let waited = second["at_ms"].as_u64().unwrap_or(0) - first["at_ms"].as_u64().unwrap_or(0);
    assert!(waited >= 950, "the retry came {waited} ms after the 429");

    // Creates are not retried by the client: the caller decides.
    set_faults(&sim, json!({"error_rate": 1.0})).await;
    let err = client
        .create_flow_run(&new_run("f", "t"))
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(err.status(), Some(503));
    set_faults(&sim, json!({})).await;
    sim.stop().await;
}

/// A server that answers every request 200 with a JSON body of `size` bytes.
async fn oversized_server(size: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.api+json\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let mut body = vec![b' '; size];
                body[0] = b'[';
                body[size - 1] = b']';
                let _ = socket.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/public/v2")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_over_the_cap_is_refused_and_a_create_s_is_in_doubt() {
    let base = oversized_server(flowd::recrubo::client::MAX_ANSWER_BYTES + 1).await;
    let mut settings = ClientSettings::new(base, Secret::new("t".to_owned()));
    settings.rate_limit = 0.0;
    settings.read_attempts = 1;
    let client = RecruboClient::new(&settings).expect("client");
    let err = client.get_flow_run("r-1").await.unwrap_err();
    assert!(matches!(err, RecruboError::InvalidBody { .. }), "{err:?}");
    assert!(err.to_string().contains("larger than 8 MiB"), "{err}");
    // A create whose answer cannot be read may have been carried out.
    let err = client
        .create_flow_run(&new_run("f", "t"))
        .await
        .unwrap_err();
    assert!(err.outcome_unknown(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_connection_is_an_unknown_outcome() {
    let sim = sim(SimSettings::default()).await;
    let client = client_for(&sim, "token", |settings| settings.read_attempts = 1);
    set_faults(&sim, json!({"reset_rate": 1.0})).await;
    let err = client
        .create_flow_run(&new_run("f", "t"))
        .await
        .unwrap_err();
    assert!(matches!(err, RecruboError::NoAnswer { .. }), "{err:?}");
    assert!(err.outcome_unknown());
    assert!(err.is_retryable());
    set_faults(&sim, json!({})).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limiter_spaces_requests_for_all_clones() {
    let sim = sim(SimSettings::default()).await;
    let client = client_for(&sim, "token", |settings| settings.rate_limit = 10.0);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let clone = client.clone();
        tasks.push(tokio::spawn(async move {
            clone.list_flows(&ListQuery::new()).await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("list");
    }
    // A burst of 10, then 10 per second: the 25th request cannot start before ~1.5 s.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400),
        "25 requests at 10/s took {elapsed:?}"
    );
    let requests = sim_requests(&sim).await;
    let spread = requests
        .last()
        .and_then(|r| r["at_ms"].as_u64())
        .unwrap_or(0)
        - requests
            .first()
            .and_then(|r| r["at_ms"].as_u64())
            .unwrap_or(0);
    assert!(spread >= 1400, "{spread} ms between first and last");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_faults_delay_answers() {
    let sim = sim(SimSettings {
        faults: Faults {
            latency_ms: 200,
            ..Faults::default()
        },
        ..SimSettings::default()
    })
    .await;
    let client = client_for(&sim, "token", |_| {});
    let started = Instant::now();
    client.list_flows(&ListQuery::new()).await.expect("list");
    assert!(started.elapsed() >= Duration::from_millis(200));
    eventually(
        Duration::from_secs(2),
        "the request is recorded",
        || async { (!sim_requests(&sim).await.is_empty()).then_some(()) },
    )
    .await;
    sim.stop().await;
}
