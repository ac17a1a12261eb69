//! `flowd demo`: the simulator and the daemon together, on `examples/quickstart`, with a few
//! applications posted and the simulated runs driven to their outcomes, printing what flowd does
//! as it happens. Everything lives in a temporary folder; nothing outside loopback is touched.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::post;
use clap::Args;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::init_logging;
use crate::recrubo::{ClientSettings, ListQuery, RecruboClient};
use crate::settings::{LogFormat, Secret, Settings};
use crate::sim::{SimSettings, start as start_sim};

/// The quickstart rules, built in so the demo runs from any folder.
const QUICKSTART: &str = include_str!("../../examples/quickstart/quickstart.yaml");
const QUICKSTART_SINK: &str = "http://127.0.0.1:9999/notifications";
/// The demo's events bearer token (its listener is on loopback in a throwaway folder).
const DEMO_EVENTS_TOKEN: &str = "demo-events-token";
const WEBHOOK_SECRET: &str = "demo-secret";

/// The simulator's script for the demo: Ana passes, Bo never answers, Cy does not pass.
const DEMO_SCRIPT: &str = r#"
flow_runs:
  running_after: 1s
  finish_after: 3s
  outcome: { status: finished }
  rules:
    - { when: "has(state.name) && state.name == 'Ana'", status: finished, state: { passed: true } }
    - { when: "has(state.name) && state.name == 'Bo'", status: timeout }
    - { when: "has(state.name) && state.name == 'Cy'", status: finished, state: { passed: false } }
"#;

/// Arguments of `flowd demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop when the scenario is done instead of waiting for Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
    /// The daemon's public listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The daemon's admin listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: std::net::SocketAddr,
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    init_logging(LogFormat::Text, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(demo(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let folder = tempfile::tempdir().context("cannot create a temporary folder")?;

    // A sink that prints the notifications flowd sends.
    let notifications = Arc::new(Mutex::new(Vec::<Value>::new()));
    let sink_notifications = notifications.clone();
    let sink = Router::new().route(
        "/notifications",
        post(move |axum::Json(body): axum::Json<Value>| {
            let notifications = sink_notifications.clone();
            async move {
                say(format!(
                    "  ✉  notification received: {}",
                    body["text"].as_str().unwrap_or(&body.to_string())
                ));
                notifications
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(body);
                "ok"
            }
        }),
    );
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}/notifications", sink_listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(sink_listener, sink).await;
    });

    // The simulator.
    let mut sim_settings = SimSettings {
        webhook_secret: Some(WEBHOOK_SECRET.to_owned()),
        ..SimSettings::default()
    };
    sim_settings.script =
        serde_saphyr::from_str(DEMO_SCRIPT).map_err(|err| anyhow::anyhow!("demo script: {err}"))?;
    let sim = start_sim("127.0.0.1:0".parse()?, sim_settings).await?;

    // The rules and the daemon.
    let rules = folder.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("quickstart.yaml"),
        QUICKSTART.replace(QUICKSTART_SINK, &sink_url),
    )?;
    let public = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let mut settings = Settings {
        rules: rules.clone(),
        database: crate::settings::DatabaseSettings {
            url: format!("sqlite://{}", folder.path().join("flowd.db").display()),
            ..Default::default()
        },
        ..Settings::default()
    };
    settings.recrubo.base_url = sim.base_url();
    settings.recrubo.token = Some(Secret::new("demo-token".to_owned()));
    settings.recrubo.webhook_secret = vec![Secret::new(WEBHOOK_SECRET.to_owned())];
    settings.events.tokens = vec![Secret::new(DEMO_EVENTS_TOKEN.to_owned())];
    let loaded = crate::rules::load_rule_set(std::slice::from_ref(&rules));
    let rule_set = match &loaded.result {
        Ok(set) => set.clone(),
        Err(diagnostics) => anyhow::bail!("{}", loaded.render_diagnostics(diagnostics)),
    };
    let stop = CancellationToken::new();
    let daemon =
        crate::daemon::Daemon::build_on(settings, rule_set, BTreeMap::new(), public, admin).await?;
    let daemon = tokio::spawn(daemon.run(stop.clone().cancelled_owned()));

    // Point the simulator's webhooks at the daemon, as `flowd webhooks set-destination` would.
    let client = RecruboClient::new(&ClientSettings::new(
        sim.base_url(),
        Secret::new("demo-token".to_owned()),
    ))?;
    let organization = client.list("organizations", &ListQuery::new()).await?.items[0]
        .id
        .clone();
    client
        .set_organization_webhook(
            &organization,
            &format!("http://{public_addr}/webhooks/recrubo"),
            &Secret::new(WEBHOOK_SECRET.to_owned()),
        )
        .await?;

    say("flowd demo");
    say(format!("  Recrubo simulator  {}", sim.base_url()));
    say(format!(
        "  flowd              http://{public_addr} (events, webhooks)   admin http://{admin_addr}"
    ));
    say(
        "  rules              examples/quickstart: screen new applications, chain the interview, scrub timeouts",
    );
    say("");
    let http = reqwest::Client::new();
    for (id, name) in [("app-1", "Ana"), ("app-2", "Bo"), ("app-3", "Cy")] {
        http.post(format!("http://{public_addr}/events/application.created"))
            .bearer_auth(DEMO_EVENTS_TOKEN)
            .json(&json!({ "id": id, "name": name, "message_thread_id": format!("thread-{}", name.to_lowercase()) }))
            .send()
            .await?;
        say(format!("→ event application.created posted for {name}"));
    }

    // Follow what happens through the admin API.
    let mut seen_executions: HashMap<String, String> = HashMap::new();
    let mut seen_runs: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let executions: Value = http
            .get(format!("http://{admin_addr}/api/v1/executions?limit=200"))
            .send()
            .await?
            .json()
            .await?;
        let mut list: Vec<&Value> = executions["executions"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        list.reverse();
        for execution in list {
            let id = execution["id"].as_str().unwrap_or_default().to_owned();
            let status = execution["status"].as_str().unwrap_or_default().to_owned();
            if seen_executions.get(&id) == Some(&status) {
                continue;
            }
            let rule = execution["rule"].as_str().unwrap_or_default();
            let who = execution["context"]["event"]["data"]["name"]
                .as_str()
                .map(|name| format!(" for {name}"))
                .unwrap_or_default();
            let what = match execution["handler_status"].as_str() {
                Some(handler) => format!("on_status.{handler} handler of {rule}{who}"),
                None => format!("rule {rule}{who}"),
            };
            match status.as_str() {
                "pending" => say(format!("  ▶  {what} matched")),
                "succeeded" => say(format!("  ✔  {what} done")),
                "skipped" => say(format!(
                    "  ·  {what} skipped: {}",
                    execution["last_error"]
                        .as_str()
                        .unwrap_or("condition false")
                )),
                other => say(format!(
                    "  ✖  {what} {other}: {}",
                    execution["last_error"].as_str().unwrap_or_default()
                )),
            }
            seen_executions.insert(id, status);
        }
        let runs: Value = http
            .get(format!("http://{admin_addr}/api/v1/runs"))
            .send()
            .await?
            .json()
            .await?;
        for run in runs["runs"].as_array().into_iter().flatten() {
            let id = run["resource_id"].as_str().unwrap_or_default().to_owned();
            let status = run["status"].as_str().unwrap_or_default().to_owned();
            if seen_runs.get(&id) == Some(&status) {
                continue;
            }
            let short: String = id.chars().take(8).collect();
            if seen_runs.contains_key(&id) {
                say(format!("  ↻  run {short}… is now {status}"));
            } else {
                say(format!(
                    "  ●  run {short}… started by {} ({status})",
                    run["rule"].as_str().unwrap_or_default()
                ));
            }
            seen_runs.insert(id, status);
        }
        let all_runs_done = !seen_runs.is_empty()
            && seen_runs
                .values()
                .all(|status| crate::recrubo::FlowRunStatus::parse(status).is_terminal());
        let nothing_pending = seen_executions.values().all(|status| status != "pending");
        let notified = notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if (all_runs_done && nothing_pending && notified >= 3)
            || tokio::time::Instant::now() > deadline
        {
            break;
        }
    }
    say("");
    say(format!(
        "done: {} executions, {} runs followed, {} notifications.",
        seen_executions.len(),
        seen_runs.len(),
        notifications
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    ));
    say(format!("  status page http://{admin_addr}/"));
    say(format!(
        "  executions  http://{admin_addr}/api/v1/executions"
    ));
    say(format!("  runs        http://{admin_addr}/api/v1/runs"));
    say(format!("  metrics     http://{admin_addr}/metrics"));
    if !args.exit_when_done {
        say(format!(
            "flowd keeps running; post more events (Authorization: Bearer {DEMO_EVENTS_TOKEN}) or press Ctrl-C to stop."
        ));
        super::daemon::wait_for_termination().await;
    }
    stop.cancel();
    let _ = daemon.await;
    sim.stop().await;
    Ok(())
}
