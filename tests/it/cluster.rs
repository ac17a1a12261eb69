//! Several flowd instances on one Postgres database (DESIGN 6): the stores of two instances side
//! by side, then real daemons as separate processes behind a round-robin balancer, with the
//! simulator. Skipped (with a notice) when `FLOWD_TEST_POSTGRES` is not set.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde_json::{Value, json};

use flowd::recrubo::ListQuery;
use flowd::settings::Secret;
use flowd::sim::SimSettings;
use flowd::store::postgres::PgStore;
use flowd::store::{EventOutcome, EventSource, NewEvent, NewExecution, Store};

use crate::conformance::new_execution;
use crate::engine::{EVENT_TOKEN, WEBHOOK_SECRET};
use crate::receiver::{Receiver, distinct_strings};
use crate::recrubo_client::{client_for, sim};
use crate::support::{Daemon, PostgresSchema, eventually, postgres_schema};

const CLAIM: Duration = Duration::from_secs(10);

fn webhook(run: &str, status: &str, log: &str) -> NewEvent {
    NewEvent {
        source: EventSource::Recrubo,
        event_type: "flowRuns/update".to_owned(),
        dedup_key: Some(log.to_owned()),
        payload: json!({ "data": { "type": "webhookPayload", "id": log, "attributes": {
            "event": "update", "fields": ["status"],
            "resource": { "id": run, "type": "flowRuns", "attributes": { "status": status } },
        } } }),
    }
}

fn external(id: &str) -> NewEvent {
    NewEvent {
        source: EventSource::Event,
        event_type: "ping".to_owned(),
        dedup_key: Some(id.to_owned()),
        payload: json!({ "type": "ping", "id": id }),
    }
}

async fn two_instances() -> Option<(PgStore, PgStore, PostgresSchema)> {
    let schema = postgres_schema().await?;
    let a = PgStore::open(&schema.url, Some(4), "a").await.expect("a");
    let b = PgStore::open(&schema.url, Some(4), "b").await.expect("b");
    Some((a, b, schema))
}

fn ids(events: &[flowd::store::StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn two_instances_claim_different_events_and_a_run_s_changes_one_at_a_time() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    a.insert_events(vec![
        webhook("run-1", "running", "l1"),
        external("e1"),
        webhook("run-1", "finished", "l2"),
        external("e2"),
    ])
    .await
    .unwrap();
    let now = Utc::now();
    let first = a.claim_events(2, i64::MAX, now, CLAIM).await.unwrap();
    assert_eq!(first.len(), 2, "the two oldest");
    let second = b.claim_events(10, i64::MAX, now, CLAIM).await.unwrap();
    // run-1's finished waits until its running is done, whoever holds that.
    assert_eq!(
        second
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        vec!["ping"],
        "{second:?}"
    );
    assert!(ids(&first).iter().all(|id| !ids(&second).contains(id)));
    // Once the running is processed, the finished is free for anyone.
    a.complete_events(&[(first[0].id, EventOutcome::default())])
        .await
        .unwrap();
    a.release_events(&ids(&first)).await.unwrap();
    let third = b.claim_events(10, i64::MAX, now, CLAIM).await.unwrap();
    let types: Vec<&str> = third.iter().map(|e| e.event_type.as_str()).collect();
    assert!(types.contains(&"flowRuns/update"), "{third:?}");
}

#[tokio::test]
async fn an_event_another_instance_processed_first_stores_nothing_again() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    a.insert_events(vec![external("e1")]).await.unwrap();
    let event = a
        .claim_events(10, i64::MAX, Utc::now(), CLAIM)
        .await
        .unwrap()
        .remove(0);
    // A's claim ran out (it stalled): B takes the event and processes it first.
    let later = Utc::now() + chrono::TimeDelta::seconds(11);
    let taken = b.claim_events(10, i64::MAX, later, CLAIM).await.unwrap();
    assert_eq!(ids(&taken), vec![event.id]);
    let outcome = |id: &str| EventOutcome {
        executions: vec![NewExecution {
            event_id: Some(event.id),
            ..new_execution(id, "r", "pending")
        }],
        ..EventOutcome::default()
    };
    assert_eq!(
        b.complete_events(&[(event.id, outcome("by-b"))])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        a.complete_events(&[(event.id, outcome("by-a"))])
            .await
            .unwrap(),
        vec![false],
        "processed already: nothing is stored"
    );
    assert!(a.execution("by-b").await.unwrap().is_some());
    assert!(a.execution("by-a").await.unwrap().is_none());
}

#[tokio::test]
async fn tls_is_chosen_by_sslmode() {
    let Some(schema) = postgres_schema().await else {
        return;
    };
    use sqlx_core::connection::Connection as _;
    use sqlx_core::row::Row as _;
    let with = |mode: &str| schema.url.replace("?", &format!("?sslmode={mode}&"));
    let mut plain = sqlx_postgres::PgConnection::connect(&with("disable"))
        .await
        .unwrap();
    let ssl: String = sqlx_core::query::query("SHOW ssl")
        .fetch_one(&mut plain)
        .await
        .unwrap()
        .get(0);
    if ssl != "on" {
        let refused = PgStore::open(&with("require"), Some(1), "tls").await;
        assert!(
            refused.is_err(),
            "a server without TLS is refused under require"
        );
        return;
    }
    // This server has TLS on with a certificate of its own: `require` encrypts without checking
    // it; `verify-full` checks it against the system's roots and refuses, naming why.
    let store = PgStore::open(&with("require"), Some(1), "tls")
        .await
        .expect("sslmode=require connects");
    store.ping().await.unwrap();
    let refused = PgStore::open(&with("verify-full"), Some(1), "tls")
        .await
        .expect_err("an unverifiable certificate is refused");
    let text = refused.to_string();
    assert!(
        text.contains("cannot connect")
            && (text.contains("certificate") || text.contains("TLS") || text.contains("tls")),
        "{text}"
    );
}

#[tokio::test]
async fn only_the_holder_gives_a_claim_back() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    a.insert_events(vec![external("e1")]).await.unwrap();
    let event = a
        .claim_events(10, i64::MAX, Utc::now(), CLAIM)
        .await
        .unwrap()
        .remove(0);
    // A stalled past its claim; B has the event now. A giving back what it held leaves B's
    // claim alone: nobody else takes the event while B works on it.
    let later = Utc::now() + chrono::TimeDelta::seconds(11);
    assert_eq!(
        ids(&b.claim_events(10, i64::MAX, later, CLAIM).await.unwrap()),
        vec![event.id]
    );
    a.release_events(&[event.id]).await.unwrap();
    assert!(
        a.claim_events(10, i64::MAX, later, CLAIM)
            .await
            .unwrap()
            .is_empty(),
        "B still holds it"
    );
    b.release_events(&[event.id]).await.unwrap();
    assert_eq!(
        ids(&a.claim_events(10, i64::MAX, later, CLAIM).await.unwrap()),
        vec![event.id]
    );
}

#[tokio::test]
async fn instances_reconciling_together_poll_different_runs() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    let t = Utc::now();
    let minutes = chrono::TimeDelta::minutes;
    crate::conformance::following(
        &a,
        &[
            ("run-1", t - minutes(30)),
            ("run-2", t - minutes(20)),
            ("run-3", t - minutes(10)),
        ],
    )
    .await;
    let until = t + minutes(5);
    let first = a
        .claim_stale_followed(t - minutes(5), t, 2, until)
        .await
        .unwrap();
    let second = b
        .claim_stale_followed(t - minutes(5), t, 10, until)
        .await
        .unwrap();
    let names = |runs: &[flowd::store::FollowedRun]| -> Vec<String> {
        runs.iter().map(|r| r.resource_id.clone()).collect()
    };
    assert_eq!(names(&first), ["run-1", "run-2"], "the quiet longest first");
    assert_eq!(names(&second), ["run-3"], "the rest, not A's");
    // A died without polling run-1: once its claim runs out, B polls it.
    let after = until + chrono::TimeDelta::seconds(1);
    b.mark_polled("run-3", flowd::store::PollMark::Read, after)
        .await
        .unwrap();
    let again = b
        .claim_stale_followed(after - minutes(5), after, 10, after + minutes(5))
        .await
        .unwrap();
    assert_eq!(names(&again), ["run-1", "run-2"]);
}

#[tokio::test]
async fn a_step_record_names_the_instance_that_ran_it() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    crate::conformance::pending(&a, "x").await;
    b.record_step(&crate::conformance::step("x", 0))
        .await
        .unwrap();
    let records = a.step_records("x").await.unwrap();
    assert_eq!(records[0].instance.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_claimed_execution_names_its_instance_in_the_cluster_view() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    let now = Utc::now();
    for (store, id) in [(&a, "a"), (&b, "b")] {
        store
            .heartbeat(&flowd::store::Instance {
                id: id.to_owned(),
                address: format!("127.0.0.1:{}", if id == "a" { 1 } else { 2 }),
                rules_hash: "h".to_owned(),
                heartbeat_at: now,
                leases: 0,
            })
            .await
            .unwrap();
    }
    a.insert_executions(&[new_execution("x", "r", "pending")])
        .await
        .unwrap();
    assert_eq!(
        b.claim_executions(Utc::now(), Duration::from_secs(30), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let instances = a
        .instances(now - chrono::TimeDelta::seconds(30))
        .await
        .unwrap();
    let leases: Vec<(String, i64)> = instances.iter().map(|i| (i.id.clone(), i.leases)).collect();
    assert_eq!(leases, vec![("a".to_owned(), 0), ("b".to_owned(), 1)]);
}

// ---------------------------------------------------------------------------------------------
// Daemons as processes

/// Forwards every request to the next upstream in turn, as a load balancer in front of the
/// public listeners would; an upstream that is down gets the next one.
struct Balancer {
    url: String,
}

#[derive(Clone)]
struct Upstreams {
    targets: Arc<std::sync::Mutex<Vec<String>>>,
    next: Arc<AtomicUsize>,
    client: reqwest::Client,
}

async fn forward(
    State(upstreams): State<Upstreams>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let targets = upstreams.targets.lock().unwrap().clone();
    for _ in 0..targets.len() {
        let index = upstreams.next.fetch_add(1, Ordering::Relaxed) % targets.len();
        let mut request = upstreams
            .client
            .post(format!("{}{}", targets[index], uri.path()))
            .body(body.clone());
        for (name, value) in &headers {
            if name != "host" && name != "content-length" {
                request = request.header(name, value);
            }
        }
        if let Ok(response) = request.send().await {
            let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
            return (status, response.text().await.unwrap_or_default());
        }
    }
    (StatusCode::BAD_GATEWAY, "no upstream".to_owned())
}

impl Balancer {
    async fn start(targets: Vec<String>) -> (Balancer, Upstreams) {
        let upstreams = Upstreams {
            targets: Arc::new(std::sync::Mutex::new(targets)),
            next: Arc::new(AtomicUsize::new(0)),
            client: reqwest::Client::new(),
        };
        let app = axum::Router::new()
            .fallback(axum::routing::post(forward))
            .with_state(upstreams.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (Balancer { url }, upstreams)
    }
}

const RULES: &str = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: f, message_thread: "{{event.data.thread}}" }
        retry: { attempts: 20, backoff: 20ms, max_backoff: 500ms }
        on_status:
          running:
            - notify: { url: SINK_URL, body: { kind: running, run: "{{run.id}}" } }
              retry: { attempts: 20, backoff: 20ms, max_backoff: 500ms }
          finished:
            - notify: { url: SINK_URL, body: { kind: finished, run: "{{run.id}}", thread: "{{run.messageThreadId}}" } }
              retry: { attempts: 20, backoff: 20ms, max_backoff: 500ms }
"#;

/// The simulator, a sink, `count` daemons on one schema, and a balancer in front of them that
/// the simulator's webhooks go through.
struct Cluster {
    sim: flowd::sim::SimHandle,
    sink: Receiver,
    daemons: Vec<Option<Daemon>>,
    client: flowd::recrubo::RecruboClient,
    upstreams: Upstreams,
    _balancer: Balancer,
    _rules: tempfile::TempDir,
    schema: PostgresSchema,
}

async fn cluster(count: usize, rules: &str, extra_env: &[(&str, &str)]) -> Option<Cluster> {
    cluster_via(count, rules, extra_env, None).await
}

/// [`cluster`], with the daemons reaching the database through `switch` when given.
async fn cluster_via(
    count: usize,
    rules: &str,
    extra_env: &[(&str, &str)],
    switch: Option<&crate::proxy::Switch>,
) -> Option<Cluster> {
    let schema = postgres_schema().await?;
    let database = match switch {
        Some(switch) => {
            let mut url = url::Url::parse(&schema.url).unwrap();
            url.set_host(Some("127.0.0.1")).unwrap();
            url.set_port(Some(switch.addr.port())).unwrap();
            url.to_string()
        }
        None => schema.url.clone(),
    };
    let sink = Receiver::start().await;
    // Runs move on by themselves, quickly: running, then finished.
    let script = flowd::sim::Script {
        flow_runs: Some(flowd::sim::lifecycle::RunScript {
            running_after: Duration::from_millis(50),
            finish_after: Duration::from_millis(150),
            ..Default::default()
        }),
        ..flowd::sim::Script::auto()
    };
    let sim = sim(SimSettings {
        webhook_secret: Some(WEBHOOK_SECRET.into()),
        retry_scale: Some(0.0001),
        script,
        ..SimSettings::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        rules.replace("SINK_URL", &sink.url()),
    )
    .unwrap();
    let base_url = sim.base_url();
    let mut env = vec![
        ("FLOWD_RECRUBO_BASE_URL", base_url.as_str()),
        ("RECRUBO_API_TOKEN", "t"),
        ("RECRUBO_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("FLOWD_EVENTS_TOKENS", EVENT_TOKEN),
        ("FLOWD_RECRUBO_RATE_LIMIT", "0"),
        ("FLOWD_DATABASE_POOL_SIZE", "4"),
    ];
    env.extend_from_slice(extra_env);
    let daemons: Vec<Option<Daemon>> = (0..count)
        .map(|_| {
            Some(Daemon::start_with_database(
                dir.path(),
                &env,
                &database,
                tempfile::tempdir().unwrap(),
            ))
        })
        .collect();
    let targets = daemons.iter().flatten().map(|d| d.public_url("")).collect();
    let (balancer, upstreams) = Balancer::start(targets).await;
    let client = client_for(&sim, "t", |_| {});
    let organization = client
        .list("organizations", &ListQuery::new())
        .await
        .unwrap()
        .items[0]
        .id
        .clone();
    client
        .set_organization_webhook(
            &organization,
            &format!("{}/webhooks/recrubo", balancer.url),
            &Secret::new(WEBHOOK_SECRET.into()),
        )
        .await
        .unwrap();
    Some(Cluster {
        sim,
        sink,
        daemons,
        client,
        upstreams,
        _balancer: balancer,
        _rules: dir,
        schema,
    })
}

impl Cluster {
    /// Posts `count` application events round-robin over the live instances, `parallel` at a
    /// time; returns the threads of the events that were accepted (202).
    async fn post(&self, from: usize, count: usize, parallel: usize) -> Vec<String> {
        use futures_util::StreamExt;
        let client = reqwest::Client::new();
        let targets: Vec<String> = self.upstreams.targets.lock().unwrap().clone();
        futures_util::stream::iter(from..from + count)
            .map(|n| {
                let client = client.clone();
                let target = targets[n % targets.len()].clone();
                async move {
                    let thread = format!("t{n}");
                    let accepted = client
                        .post(format!("{target}/events/application.created"))
                        .bearer_auth(EVENT_TOKEN)
                        .json(&json!({ "id": format!("e{n}"), "thread": thread }))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 202);
                    accepted.then_some(thread)
                }
            })
            .buffer_unordered(parallel)
            .filter_map(|thread| async move { thread })
            .collect()
            .await
    }

    /// Every FlowRun the simulator holds.
    async fn runs(&self) -> Vec<flowd::recrubo::jsonapi::Resource> {
        futures_util::TryStreamExt::try_collect(
            self.client
                .list_all("flow-runs", ListQuery::new().page_size(200)),
        )
        .await
        .unwrap_or_default()
    }

    /// Waits until the sink has `count` notifications of `kind`.
    async fn wait_for(&self, kind: &str, count: usize, within: Duration) {
        let started = std::time::Instant::now();
        let last = std::sync::Mutex::new(std::time::Instant::now());
        let last = &last;
        eventually(within, &format!("{count} {kind} notifications"), || async {
            let seen = self
                .sink
                .received()
                .iter()
                .filter(|r| r.body["kind"] == kind)
                .count();
            let mut last = last.lock().unwrap();
            if last.elapsed() > Duration::from_secs(10) {
                eprintln!("{kind}: {seen}/{count} after {:?}", started.elapsed());
                *last = std::time::Instant::now();
            }
            (seen >= count).then_some(())
        })
        .await;
    }

    /// Asserts that each accepted thread has exactly one run, and each run exactly one
    /// `running` and one `finished` handler execution (in the database, whichever instance
    /// made it) that notified the sink. With `killed`, an instance died with SIGKILL: a
    /// `notify` it sent but could not record is sent again by the instance that takes its
    /// execution over (DESIGN 3: steps run at least once; only creates are checked first), so
    /// the sink may see a handler's notification twice — never none, and its execution once.
    async fn assert_each_once(&self, threads: &[String], killed: bool) {
        let runs = self.runs().await;
        let mut run_threads: Vec<String> = runs
            .iter()
            .filter_map(|r| r.attributes["messageThreadId"].as_str().map(str::to_owned))
            .collect();
        run_threads.sort();
        let before = run_threads.len();
        run_threads.dedup();
        assert_eq!(before, run_threads.len(), "no FlowRun was created twice");
        let mut expected = threads.to_vec();
        expected.sort();
        assert_eq!(
            run_threads, expected,
            "one FlowRun per accepted event, none lost"
        );
        let store = PgStore::open(&self.schema.url, Some(1), "observer")
            .await
            .unwrap();
        let executions = store
            .executions(&flowd::store::ExecutionFilter {
                limit: 1_000_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let received = self.sink.received();
        for kind in ["running", "finished"] {
            let mut handled: Vec<String> = executions
                .iter()
                .filter(|e| e.handler_status.as_deref() == Some(kind))
                .map(|e| {
                    assert_eq!(e.status, "succeeded", "{e:?}");
                    e.context["run"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            handled.sort();
            let total = handled.len();
            handled.dedup();
            assert_eq!(total, handled.len(), "no {kind} handler execution twice");
            assert_eq!(total, threads.len(), "every run's {kind} handler ran");
            let of_kind: Vec<_> = received
                .iter()
                .filter(|r| r.body["kind"] == kind)
                .cloned()
                .collect();
            let (sent, distinct) = distinct_strings(&of_kind, "run");
            assert_eq!(
                distinct.len(),
                threads.len(),
                "every run's {kind} notification arrived"
            );
            if !killed {
                assert_eq!(sent, distinct.len(), "no {kind} notification twice");
            }
        }
    }

    /// Waits until the inbox is empty and nothing is pending, as every instance sees it.
    async fn settle(&self) {
        let store = PgStore::open(&self.schema.url, Some(1), "observer")
            .await
            .unwrap();
        eventually(Duration::from_secs(60), "the cluster settles", || async {
            flowd::daemon::nothing_pending(&store)
                .await
                .ok()
                .filter(|quiet| *quiet)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_5000_events_each_processed_once() {
    let Some(cluster) = cluster(3, RULES, &[]).await else {
        return;
    };
    let events: usize = std::env::var("FLOWD_CLUSTER_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    let threads = cluster.post(0, events, 48).await;
    assert_eq!(threads.len(), events, "every event accepted");
    cluster
        .wait_for("finished", events, Duration::from_secs(300))
        .await;
    cluster
        .wait_for("running", events, Duration::from_secs(60))
        .await;
    cluster.settle().await;
    cluster.assert_each_once(&threads, false).await;
    // The work was shared: every instance created some of the executions.
    let admin = reqwest::Client::new();
    let view: Value = admin
        .get(
            cluster.daemons[0]
                .as_ref()
                .unwrap()
                .admin_url("/api/v1/cluster"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["instances"].as_array().map(Vec::len),
        Some(3),
        "{view}"
    );
    drop(cluster.sim);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_killed_mid_burst_loses_and_doubles_nothing() {
    let Some(mut cluster) = cluster(3, RULES, &[("FLOWD_DATABASE_LEASE", "2s")]).await else {
        return;
    };
    let mut threads = cluster.post(0, 600, 24).await;
    // kill -9 one instance while the work is in flight; the balancer goes on without it.
    let killed = cluster.daemons[1].take().unwrap();
    let killed_url = killed.public_url("");
    let _state = killed.kill();
    cluster
        .upstreams
        .targets
        .lock()
        .unwrap()
        .retain(|t| *t != killed_url);
    threads.extend(cluster.post(600, 600, 24).await);
    assert!(threads.len() >= 1000, "{} accepted", threads.len());
    cluster
        .wait_for("finished", threads.len(), Duration::from_secs(240))
        .await;
    cluster.settle().await;
    cluster.assert_each_once(&threads, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schedules_on_three_instances_fire_each_tick_once() {
    let mut rules = String::from("rules:\n");
    for n in 0..100 {
        rules.push_str(&format!(
            "  - name: tick-{n}\n    on: {{ every: 1s }}\n    do: [ {{ notify: {{ url: SINK_URL, body: {{ tick: \"{n}@{{{{event.scheduled_at}}}}\" }} }} }} ]\n"
        ));
    }
    let Some(cluster) = cluster(3, &rules, &[]).await else {
        return;
    };
    tokio::time::sleep(Duration::from_secs(12)).await;
    let received = cluster.sink.received();
    let (total, distinct) = distinct_strings(&received, "tick");
    assert_eq!(total, distinct.len(), "no tick fired twice");
    // 100 rules for about 12 s: most ticks are in (start-up and the last second aside).
    assert!(total >= 100 * 8, "{total} ticks");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_webhook_at_two_instances_at_once_runs_once() {
    let rules = r#"
rules:
  - name: candidate
    on: { recrubo: { resource: candidates, event: create } }
    do: [ { notify: { url: SINK_URL, body: { candidate: "{{event.id}}" } } } ]
"#;
    let Some(cluster) = cluster(2, rules, &[]).await else {
        return;
    };
    let body = json!({ "data": { "type": "webhookPayload", "id": "log-1", "attributes": {
        "event": "create",
        "resource": { "id": "c-1", "type": "candidates", "attributes": {} },
    } } })
    .to_string();
    let client = reqwest::Client::new();
    let send = |daemon: &Daemon| {
        client
            .post(daemon.public_url("/webhooks/recrubo"))
            .header("content-type", "application/json")
            .header("x-recrubo-webhook-secret", WEBHOOK_SECRET)
            .body(body.clone())
            .send()
    };
    let (a, b) = tokio::join!(
        send(cluster.daemons[0].as_ref().unwrap()),
        send(cluster.daemons[1].as_ref().unwrap())
    );
    assert!(a.unwrap().status().is_success());
    assert!(b.unwrap().status().is_success());
    cluster.settle().await;
    let received = cluster.sink.received();
    assert_eq!(received.len(), 1, "{received:?}");
}

#[tokio::test]
async fn a_run_waiting_behind_its_deferred_first_change_does_not_hold_up_the_inbox() {
    let Some((a, _b, _schema)) = two_instances().await else {
        return;
    };
    let mut events = vec![webhook("run-1", "running", "l0")];
    for n in 1..=5 {
        events.push(webhook("run-1", "running", &format!("l{n}")));
    }
    events.push(external("e1"));
    a.insert_events(events).await.unwrap();
    let now = Utc::now();
    let head = a.claim_events(1, i64::MAX, now, CLAIM).await.unwrap();
    a.defer_events(&[flowd::store::Deferral {
        event_id: head[0].id,
        key: "run-1".to_owned(),
        until: now + chrono::TimeDelta::seconds(30),
    }])
    .await
    .unwrap();
    // Five changes of run-1 wait behind the deferred one; a page of five still finds the
    // unrelated event instead of coming back empty.
    let page = a.claim_events(5, i64::MAX, now, CLAIM).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        vec!["ping"]
    );
}

#[tokio::test]
async fn an_instance_whose_lease_was_taken_over_writes_nothing_more() {
    let Some((a, b, _schema)) = two_instances().await else {
        return;
    };
    a.insert_executions(&[new_execution("x", "r", "pending")])
        .await
        .unwrap();
    let mut mine = a
        .claim_executions(Utc::now(), Duration::from_secs(1), 10)
        .await
        .unwrap()
        .remove(0);
    // A stalls past its lease; B takes the execution over.
    let later = Utc::now() + chrono::TimeDelta::seconds(5);
    let theirs = b
        .claim_executions(later, Duration::from_secs(30), 10)
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);
    mine.next_step = 7;
    assert!(
        a.save_execution(&mine, false).await.is_err(),
        "A's write is refused"
    );
    assert!(
        a.begin_step("x", Utc::now(), Duration::from_secs(30))
            .await
            .is_err()
    );
    assert_eq!(a.execution("x").await.unwrap().unwrap().next_step, 0);
    assert!(
        b.save_execution(&theirs[0], true).await.is_ok(),
        "B's goes through"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_answer_503_while_the_database_is_down_and_recover_losing_nothing() {
    let Some(server) = std::env::var("FLOWD_TEST_POSTGRES").ok() else {
        let _ = postgres_schema().await; // prints the notice, or fails under FLOWD_REQUIRE_POSTGRES
        return;
    };
    let server = url::Url::parse(&server).unwrap();
    let upstream = format!(
        "{}:{}",
        server.host_str().unwrap_or("127.0.0.1"),
        server.port().unwrap_or(5432)
    );
    let upstream = tokio::net::lookup_host(upstream)
        .await
        .unwrap()
        .next()
        .unwrap();
    let switch = crate::proxy::Switch::start(upstream).await;
    // Webhooks the outage costs (the simulator gives up on them) are found by polling.
    let env = [("FLOWD_RECRUBO_RECONCILE_AFTER", "2s")];
    let Some(cluster) = cluster_via(2, RULES, &env, Some(&switch)).await else {
        return;
    };
    let mut accepted = cluster.post(0, 100, 8).await;
    assert_eq!(accepted.len(), 100);

    switch.off();
    let client = reqwest::Client::new();
    let targets: Vec<String> = cluster.upstreams.targets.lock().unwrap().clone();
    // While it is down, every instance refuses what it cannot store: 503, never a 2xx for an
    // event it might lose; readiness says so; liveness does not.
    for target in &targets {
        let answer = eventually(Duration::from_secs(15), "a 503 while down", || async {
            let answer = client
                .post(format!("{target}/events/application.created"))
                .bearer_auth(EVENT_TOKEN)
                .json(&json!({ "id": "during", "thread": "t-during" }))
                .send()
                .await
                .ok()?;
            (answer.status() != 202).then_some(answer)
        })
        .await;
        assert_eq!(answer.status(), 503, "{target}");
        assert!(answer.headers().contains_key("retry-after"));
    }
    for daemon in cluster.daemons.iter().flatten() {
        let ready = client
            .get(daemon.public_url("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let live = client
            .get(daemon.public_url("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    switch.on();
    for daemon in cluster.daemons.iter().flatten() {
        eventually(Duration::from_secs(30), "ready again", || async {
            let ready = client.get(daemon.public_url("/readyz")).send().await.ok()?;
            (ready.status() == 200).then_some(())
        })
        .await;
    }
    accepted.extend(cluster.post(100, 100, 8).await);
    assert_eq!(accepted.len(), 200, "accepted again once it is back");
    cluster
        .wait_for("finished", 200, Duration::from_secs(120))
        .await;
    cluster.settle().await;
    // A notify sent just before the cut whose record could not be written is sent again.
    cluster.assert_each_once(&accepted, true).await;
    for daemon in cluster.daemons.iter().flatten() {
        let live = client.get(daemon.public_url("/healthz")).send().await;
        assert!(live.is_ok_and(|l| l.status() == 200), "no instance gave up");
    }
}
