//! Fault injection against the real daemon and simulator (DESIGN 3): answers lost after the
//! server acted, impossible values, a huge `Retry-After`, runs gone from Recrubo, webhooks for
//! runs not known yet, creates that answer terminal, SMTP cut after `DATA`, a full disk.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use flowd::recrubo::ListQuery;
use flowd::sim::{Faults, SimSettings};

use crate::engine::{WAIT, World, drive, post_event, runs_on_thread, world, world_with};
use crate::proxy::DropProxy;
use crate::support::eventually;

async fn get_json(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// The executions of `rule` once `count` of them are no longer pending.
async fn settled(world: &World, rule: &str, count: usize) -> Vec<Value> {
    eventually(
        WAIT,
        &format!("{count} executions of `{rule}` settle"),
        || async {
            let listed = get_json(
                &world
                    .daemon
                    .admin_url(&format!("/api/v1/executions?rule={rule}&limit=1000")),
            )
            .await?;
            let executions = listed["executions"].as_array()?.clone();
            let done: Vec<Value> = executions
                .into_iter()
                .filter(|e| e["status"] != "pending")
                .collect();
            (done.len() >= count).then_some(done)
        },
    )
    .await
}

async fn steps_of(world: &World, execution: &Value) -> Vec<Value> {
    let id = execution["id"].as_str().unwrap();
    get_json(&world.daemon.admin_url(&format!("/api/v1/executions/{id}")))
        .await
        .unwrap()["steps"]
        .as_array()
        .unwrap()
        .clone()
}

/// The simulator's faults, typed (`recrubo_client::set_faults` takes them as JSON).
pub(crate) async fn set_faults(world: &World, faults: Faults) {
    crate::recrubo_client::set_faults(&world.sim, serde_json::to_value(faults).unwrap()).await;
}

/// The simulator delivers no webhook from now on.
async fn drop_every_webhook(world: &World) {
    set_faults(
        world,
        Faults {
            drop_rate: 1.0,
            ..Faults::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_answer_is_lost_is_adopted_not_made_twice() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        retry: { attempts: 5, backoff: 50ms }
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
  - name: generate
    on: { event: vacancy.published }
    do:
      - id: analysis
        retry: { attempts: 5, backoff: 50ms }
        analyze_vacancy: { text: "{{event.data.text}}" }
      - id: generation
        retry: { attempts: 5, backoff: 50ms }
        generate_flow:
          flow_type: vacancy_application_flow
          from_analysis: analysis
          parameters: { language: nl }
          context: { companyName: "{{event.data.company}}" }
"#;
    // The first create of each kind reaches the simulator; its answer never comes back.
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let rule: crate::proxy::DropRule = Arc::new(move |method, path| {
        method == "POST"
            && ["/flow-runs", "/vacancy-analyses", "/flow-generations"]
                .iter()
                .any(|kind| path.ends_with(kind))
            && seen.lock().unwrap().insert(path.to_owned())
    });
    let (world, proxy) = world_behind_proxy(rules, &[], rule).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "thread-lost"}),
    )
    .await;
    post_event(
        &world.daemon,
        "vacancy.published",
        json!({"text": "Barista wanted in Amsterdam", "company": "Koffie BV"}),
    )
    .await;

    let screen = settled(&world, "screen", 1).await;
    let generate = settled(&world, "generate", 1).await;
    assert_eq!(screen[0]["status"], "succeeded", "{screen:?}");
    assert_eq!(generate[0]["status"], "succeeded", "{generate:?}");
    assert_eq!(proxy.dropped().len(), 3, "{:?}", proxy.dropped());

    // Exactly one of each in Recrubo.
    assert_eq!(runs_on_thread(&world.client, "thread-lost").await.len(), 1);
    let analyses = world
        .client
        .list("vacancy-analyses", &ListQuery::new())
        .await
        .unwrap()
        .items;
    assert_eq!(analyses.len(), 1, "{analyses:?}");
    let generations = world
        .client
        .list_flow_generations(&ListQuery::new())
        .await
        .unwrap()
        .items;
    assert_eq!(generations.len(), 1, "{generations:?}");

    // The history says what happened.
    let steps = steps_of(&world, &screen[0]).await;
    let note = steps[0]["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("adopted flowRuns"), "{steps:?}");
    let steps = steps_of(&world, &generate[0]).await;
    assert!(
        steps[0]["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("adopted vacancyAnalyses")),
        "{steps:?}"
    );
    assert!(
        steps[1]["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("adopted flowGenerations")),
        "{steps:?}"
    );
    // The adopted resources are followed like created ones.
    let runs = get_json(&world.daemon.admin_url("/api/v1/runs"))
        .await
        .unwrap();
    let followed: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["resource_id"].as_str())
        .collect();
    assert!(followed.contains(&generations[0].id.as_str()), "{runs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_retry_after_neither_wedges_nor_overflows() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    concurrency: 1
    do:
      - retry: { attempts: 1 }
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
  - name: patient
    on: { event: application.patient }
    do:
      - retry: { attempts: 3 }
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
"#;
    let world = world(rules, &[]).await;
    set_faults(
        &world,
        Faults {
            throttle_rate: 1.0,
            retry_after_seconds: 9_000_000_000_000,
            ..Faults::default()
        },
    )
    .await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "t-1"}),
    )
    .await;
    post_event(
        &world.daemon,
        "application.patient",
        json!({"thread": "t-2"}),
    )
    .await;
    let first = settled(&world, "screen", 1).await;
    assert_eq!(first[0]["status"], "failed", "{first:?}");
    // The one that may retry waits at most the cap (an hour), it does not overflow.
    let waiting = eventually(
        WAIT,
        "the patient execution waits for its retry",
        || async {
            let listed =
                get_json(&world.daemon.admin_url("/api/v1/executions?rule=patient")).await?;
            let execution = listed["executions"].as_array()?.first()?.clone();
            (execution["attempt"] == 1).then_some(execution)
        },
    )
    .await;
    let at =
        chrono::DateTime::parse_from_rfc3339(waiting["next_attempt_at"].as_str().unwrap()).unwrap();
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        wait <= chrono::TimeDelta::minutes(61) && wait >= chrono::TimeDelta::minutes(55),
        "{waiting}"
    );
    // The rule's slot is free: the next execution runs.
    set_faults(&world, Faults::default()).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "t-3"}),
    )
    .await;
    let both = settled(&world, "screen", 2).await;
    assert!(both.iter().any(|e| e["status"] == "succeeded"), "{both:?}");
    let dead = get_json(&world.daemon.admin_url("/api/v1/dead-letters"))
        .await
        .unwrap();
    let dead = dead["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["error"].as_str().unwrap().contains("429"),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_gone_from_recrubo_are_marked_and_do_not_starve_the_others() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
        on_status:
          finished:
            - notify: { url: SINK_URL, body: { finished: "{{run.id}}" } }
"#;
    let world = world(rules, &[("FLOWD_RECRUBO_RECONCILE_AFTER", "1s")]).await;
    // Every webhook is lost: only reconciliation can see a change.
    drop_every_webhook(&world).await;
    // More gone runs than one reconciliation batch (200), created first (polled first).
    let gone = 210;
    for n in 0..gone {
        post_event(
            &world.daemon,
            "application.created",
            json!({"thread": format!("gone-{n}")}),
        )
        .await;
    }
    settled(&world, "screen", gone).await;
    let http = reqwest::Client::new();
    let runs = world
        .client
        .list_flow_runs(&ListQuery::new().page_size(100))
        .await
        .unwrap();
    assert!(runs.has_more);
    let mut ids = Vec::new();
    for page in 1..=3 {
        let page = world
            .client
            .list_flow_runs(&ListQuery::new().page_size(100).page_number(page))
            .await
            .unwrap();
        ids.extend(page.items.into_iter().map(|r| r.id));
    }
    assert_eq!(ids.len(), gone);
    for id in &ids {
        let response = http
            .delete(world.sim.url(&format!("/public/v2/flow-runs/{id}")))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }
    // A run that is still there finishes; its webhook is dropped.
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "alive"}),
    )
    .await;
    settled(&world, "screen", gone + 1).await;
    let alive = runs_on_thread(&world.client, "alive").await[0].id.clone();
    drive(&world.sim, &alive, "finished", Value::Null).await;
    eventually(
        Duration::from_secs(30),
        "the live run's finished handler fired by reconciliation",
        || async {
            world
                .sink
                .received()
                .iter()
                .any(|r| r.body["finished"] == alive.as_str())
                .then_some(())
        },
    )
    .await;
    let marked = eventually(WAIT, "the gone runs are marked gone", || async {
        let listed = get_json(&world.daemon.admin_url("/api/v1/runs?limit=500")).await?;
        let gone_now = listed["runs"]
            .as_array()?
            .iter()
            .filter(|r| !r["gone_at"].is_null())
            .count();
        (gone_now == gone).then_some(gone_now)
    })
    .await;
    assert_eq!(marked, gone);
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_for_unknown_runs_do_not_hold_up_later_events() {
    let rules = r#"
rules:
  - name: ping
    on: { event: ping }
    do:
      - notify: { url: SINK_URL, body: { n: "{{event.data.n}}" } }
"#;
    let world = world(rules, &[]).await;
    // More webhooks for runs flowd never started than one inbox page (500); each waits the
    // grace period (30 s) in case its create's answer is still on the way.
    let http = reqwest::Client::new();
    let posts = (0..600).map(|n| {
        let http = http.clone();
        let url = world.daemon.public_url("/webhooks/recrubo");
        async move {
            let body = json!({"data": {"type": "webhookPayload", "id": format!("log-{n}"), "attributes": {
                "event": "update", "fields": ["status"],
                "resource": {"type": "flowRuns", "id": format!("unknown-{n}"), "attributes": {
                    "status": "running", "updatedAt": "2026-12-02T10:00:00Z"}}}}});
            http.post(url)
                .header("x-recrubo-webhook-secret", crate::engine::WEBHOOK_SECRET)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
    let posted = std::time::Instant::now();
    post_event(&world.daemon, "ping", json!({"n": "after"})).await;
    eventually(
        WAIT,
        "the event after the webhooks is processed",
        || async {
            world
                .sink
                .received()
                .iter()
                .any(|r| r.body["n"] == "after")
                .then_some(())
        },
    )
    .await;
    // Well within the grace period: nothing waited behind the deferred webhooks.
    assert!(
        posted.elapsed() < Duration::from_secs(10),
        "{:?}",
        posted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_generation_that_answers_finished_fires_its_handler_once() {
    let rules = r#"
rules:
  - name: generate
    on: { event: vacancy.published }
    do:
      - id: generation
        generate_flow: { flow_type: vacancy_application_flow, parameters: { vacancyId: v-1, knockoutRequirements: [], preferredRequirements: [] } }
        on_status:
          finished:
            - notify: { url: SINK_URL, body: { flow: "{{generation.flowId}}" } }
"#;
    let world = world(rules, &[("FLOWD_RECRUBO_SYNC", "true")]).await;
    // No webhook ever arrives (the sandbox's point): only the create's answer tells.
    drop_every_webhook(&world).await;
    post_event(&world.daemon, "vacancy.published", json!({})).await;
    let flow = eventually(WAIT, "the finished handler ran", || async {
        world
            .sink
            .received()
            .first()
            .map(|r| r.body["flow"].clone())
    })
    .await;
    assert!(flow.as_str().is_some_and(|f| !f.is_empty()), "{flow}");
    let runs = eventually(
        WAIT,
        "the generation is no longer followed as open",
        || async {
            let listed = get_json(&world.daemon.admin_url("/api/v1/runs")).await?;
            let run = listed["runs"].as_array()?.first()?.clone();
            (run["terminal"] == true).then_some(run)
        },
    )
    .await;
    assert_eq!(runs["status"], "finished");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        world.sink.received().len(),
        1,
        "{:?}",
        world.sink.received()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_cut_off_after_data_is_not_sent_twice_and_the_history_says_why() {
    let (smtp, messages) = crate::engine::smtp_sink_cutting(true).await;
    let rules = r#"
rules:
  - name: mail
    on: { event: mail }
    do:
      - retry: { attempts: 3, backoff: 10ms }
        email: { to: [recruiter@example.com], subject: "Candidate", body: "Please call." }
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
    post_event(&world.daemon, "mail", json!({})).await;
    let done = settled(&world, "mail", 1).await;
    assert_eq!(done[0]["status"], "failed", "{done:?}");
    let error = done[0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("may have taken the mail"), "{error}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(messages.lock().unwrap().len(), 1, "sent once, not retried");
}

/// A tmpfs of `size` mounted on a new folder; `None` (with a printed notice) where this test
/// process may not mount.
fn small_file_system(size: &str) -> Option<(tempfile::TempDir, Unmount)> {
    let dir = tempfile::tempdir().ok()?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(output) if output.status.success() => {
            let unmount = Unmount(dir.path().to_owned());
            Some((dir, unmount))
        }
        other => {
            eprintln!(
                "NOTICE: disk-full test skipped: cannot mount a tmpfs here ({other:?}); run as root to include it"
            );
            None
        }
    }
}

/// Unmounts when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` to the last byte with `filler`.
fn fill(filler: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_loses_nothing_and_intake_resumes() {
    let Some((disk, _unmount)) = small_file_system("16m") else {
        return;
    };
    let sink = crate::receiver::Receiver::start().await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("rules.yaml"),
        format!(
            "rules:\n  - name: ping\n    on: {{ event: ping }}\n    do:\n      - notify: {{ url: \"{}\", body: {{ n: \"{{{{event.data.n}}}}\" }} }}\n",
            sink.url()
        ),
    )
    .unwrap();
    let database = format!("sqlite://{}", disk.path().join("flowd.db").display());
    let state = tempfile::tempdir().unwrap();
    let daemon = crate::support::Daemon::start_with_database(
        rules.path(),
        &[("FLOWD_EVENTS_TOKENS", crate::engine::EVENT_TOKEN)],
        &database,
        state,
    );
    let http = reqwest::Client::new();
    let post = |n: usize| {
        let http = http.clone();
        let url = daemon.public_url("/events/ping");
        async move {
            let response = http
                .post(url)
                .bearer_auth(crate::engine::EVENT_TOKEN)
                .json(&json!({"n": n.to_string(), "pad": "x".repeat(4000)}))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.headers().get("retry-after").is_some(),
            )
        }
    };
    let mut accepted = Vec::new();
    for n in 0..20 {
        if post(n).await.0 == 202 {
            accepted.push(n);
        }
    }
    assert_eq!(accepted.len(), 20);
    let filler = disk.path().join("filler");
    fill(&filler);
    // Full: the intake refuses with 503 and Retry-After, and says nothing it did not store.
    let mut refused = 0;
    for n in 20..400 {
        let (status, retry_after) = post(n).await;
        match status {
            202 => accepted.push(n),
            503 => {
                assert!(retry_after, "503 without Retry-After");
                refused += 1;
            }
            other => panic!("unexpected answer {other} on a full disk"),
        }
        if refused >= 20 {
            break;
        }
    }
    assert!(
        refused >= 20,
        "a full disk was never refused ({} accepted)",
        accepted.len()
    );
    // Space returns: intake resumes.
    std::fs::remove_file(&filler).unwrap();
    let resumed = eventually(WAIT, "the intake accepts again", || {
        let post = post(1000);
        async move { (post.await.0 == 202).then_some(()) }
    })
    .await;
    let () = resumed;
    accepted.push(1000);
    // Every accepted event is processed.
    eventually(
        Duration::from_secs(30),
        "every accepted event reaches the sink",
        || async {
            let seen: HashSet<String> = sink
                .received()
                .iter()
                .filter_map(|r| r.body["n"].as_str().map(str::to_owned))
                .collect();
            accepted
                .iter()
                .all(|n| seen.contains(&n.to_string()))
                .then_some(())
        },
    )
    .await;
}

/// A world whose `POST /flow-runs` answers number `lose` (1 for the first) are lost on the way
/// back (the runs are made).
async fn world_losing_run_answers(
    rules: &str,
    env: &[(&str, &str)],
    lose: &'static [usize],
) -> (World, DropProxy) {
    let posts = Arc::new(Mutex::new(0usize));
    let rule: crate::proxy::DropRule = Arc::new(move |method, path| {
        if method != "POST" || !path.ends_with("/flow-runs") {
            return false;
        }
        let mut posts = posts.lock().unwrap();
        *posts += 1;
        lose.contains(&*posts)
    });
    world_behind_proxy(rules, env, rule).await
}

/// A world whose daemon reaches the simulator through a [`DropProxy`] with `rule`.
async fn world_behind_proxy(
    rules: &str,
    env: &[(&str, &str)],
    rule: crate::proxy::DropRule,
) -> (World, DropProxy) {
    let mut proxy = None;
    let world = world_with(rules, env, SimSettings::default(), |sim_url| {
        let url = url::Url::parse(sim_url).unwrap();
        let upstream: SocketAddr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
            .parse()
            .unwrap();
        let started = DropProxy::start(upstream, rule);
        let base = started.base_for(sim_url);
        proxy = Some(started);
        Some(base)
    })
    .await;
    (world, proxy.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_run_gets_the_handlers_of_what_it_went_through_meanwhile() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        retry: { attempts: 5, backoff: 3s }
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
        on_status:
          running:
            - notify: { url: SINK_URL, body: { status: running, run: "{{run.id}}" } }
          finished:
            - notify: { url: SINK_URL, body: { status: finished, run: "{{run.id}}" } }
"#;
    // The grace for unknown runs (1 s) is far shorter than the retry (3 s): the webhooks of the
    // run whose answer was lost wait because a create is in doubt, not because of the grace.
    let (world, proxy) =
        world_losing_run_answers(rules, &[("FLOWD_RECRUBO_UNKNOWN_RUN_GRACE", "1s")], &[1]).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "thread-meanwhile"}),
    )
    .await;
    let run = eventually(WAIT, "the run exists at Recrubo", || async {
        runs_on_thread(&world.client, "thread-meanwhile")
            .await
            .first()
            .map(|r| r.id.clone())
    })
    .await;
    assert_eq!(proxy.dropped().len(), 1);
    // While flowd waits to retry, the run starts and finishes; both webhooks are delivered.
    for status in ["running", "finished"] {
        drive(&world.sim, &run, status, Value::Null).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let received = eventually(WAIT, "both handlers ran", || async {
        let received = world.sink.received();
        (received.len() >= 2).then_some(received)
    })
    .await;
    // Two handler executions: they may run in either order.
    let mut statuses: Vec<&str> = received
        .iter()
        .filter_map(|r| r.body["status"].as_str())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, ["finished", "running"], "{received:?}");
    assert!(received.iter().all(|r| r.body["run"] == run.as_str()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.sink.received().len(), 2, "each handler once");
    assert_eq!(
        runs_on_thread(&world.client, "thread-meanwhile")
            .await
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adoption_never_takes_a_run_another_execution_follows() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        retry: { attempts: 5, backoff: 200ms }
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
"#;
    let (world, proxy) = world_losing_run_answers(rules, &[], &[2]).await;
    // A first application on the thread: its run is created and followed.
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "shared"}),
    )
    .await;
    settled(&world, "screen", 1).await;
    // A second application on the same thread and flow, whose answer is lost: the newest
    // unfollowed run is its own, the first run belongs to the first execution.
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "shared"}),
    )
    .await;
    let both = settled(&world, "screen", 2).await;
    assert!(both.iter().all(|e| e["status"] == "succeeded"), "{both:?}");
    assert_eq!(proxy.dropped().len(), 1);
    // Two applications, two runs, each execution following its own.
    let runs = runs_on_thread(&world.client, "shared").await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    let followed = get_json(&world.daemon.admin_url("/api/v1/runs"))
        .await
        .unwrap();
    let mut pairs: Vec<(String, String)> = followed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["resource_id"].as_str().unwrap().to_owned(),
                r["execution_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    let mut made: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    made.sort();
    assert_eq!(
        pairs.iter().map(|(run, _)| run.clone()).collect::<Vec<_>>(),
        made
    );
    assert_ne!(pairs[0].1, pairs[1].1, "each run has its own execution");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finish_whose_start_was_never_seen_fires_the_running_handlers_too() {
    let rules = r#"
rules:
  - name: screen
    on: { event: application.created }
    do:
      - id: screening
        start_flow_run: { flow: screening-flow, message_thread: "{{event.data.thread}}" }
        on_status:
          running:
            - notify: { url: SINK_URL, body: { status: running, seen: "{{run.status}}" } }
          finished:
            - notify: { url: SINK_URL, body: { status: finished, seen: "{{run.status}}" } }
"#;
    let world = world(rules, &[]).await;
    post_event(
        &world.daemon,
        "application.created",
        json!({"thread": "t-unseen"}),
    )
    .await;
    settled(&world, "screen", 1).await;
    let run = runs_on_thread(&world.client, "t-unseen").await[0]
        .id
        .clone();
    // The `running` webhook is lost; the `finished` one arrives.
    drop_every_webhook(&world).await;
    drive(&world.sim, &run, "running", Value::Null).await;
    set_faults(&world, Faults::default()).await;
    drive(&world.sim, &run, "finished", Value::Null).await;
    let received = eventually(WAIT, "both handlers ran", || async {
        let received = world.sink.received();
        (received.len() >= 2).then_some(received)
    })
    .await;
    // Two executions: they may run in either order; each sees its own status.
    let mut bodies: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            (
                r.body["status"].as_str().unwrap_or_default().to_owned(),
                r.body["seen"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            ("finished".to_owned(), "finished".to_owned()),
            ("running".to_owned(), "running".to_owned())
        ]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.sink.received().len(), 2, "each handler once");
}
