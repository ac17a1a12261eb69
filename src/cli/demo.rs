//! `flowd demo`: the simulator and the daemon together, on `examples/quickstart`, with a few
//! applications posted and the simulated runs driven to their outcomes, printing what flowd does
//! as it happens. Everything lives in a temporary folder; nothing outside loopback is touched.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::response::IntoResponse as _;
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
    /// How many flowd instances share the work (more than one needs a Postgres `--database`);
    /// the first takes `--listen` and `--admin-listen`, the others ports of their own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub instances: u8,
    /// The database: a SQLite file in a temporary folder by default, or `postgres://...`, where
    /// the demo makes a schema of its own and drops it when it ends.
    #[arg(long)]
    pub database: Option<String>,
}

/// The letter an instance goes by in the demo's lines.
fn letter(index: usize) -> char {
    char::from(b'A' + (index % 26) as u8)
}

/// A schema of the demo's own on a Postgres server, dropped by [`DemoSchema::drop_now`].
struct DemoSchema {
    server: String,
    name: String,
    url: String,
}

impl DemoSchema {
    async fn create(server: &str) -> anyhow::Result<DemoSchema> {
        use sqlx_core::connection::Connection as _;
        use sqlx_core::executor::Executor as _;
        let name = format!("flowd_demo_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx_postgres::PgConnection::connect(server)
            .await
            .with_context(|| format!("cannot connect to {}", crate::daemon::redact_url(server)))?;
        connection
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .context("cannot create the demo's schema")?;
        let separator = if server.contains('?') { '&' } else { '?' };
        Ok(DemoSchema {
            url: format!("{server}{separator}options=-c%20search_path%3D{name}"),
            server: server.to_owned(),
            name,
        })
    }

    async fn drop_now(self) {
        use sqlx_core::connection::Connection as _;
        use sqlx_core::executor::Executor as _;
        if let Ok(mut connection) = sqlx_postgres::PgConnection::connect(&self.server).await {
            // Not forever behind a daemon's transaction, should one still hold a lock.
            let _ = connection.execute("SET lock_timeout = '5s'").await;
            let _ = connection
                .execute(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name).as_str())
                .await;
        }
    }
}

/// Forwards each request to the next instance in turn, as a load balancer in front of the
/// public listeners would (the simulator's webhooks go through it).
async fn balancer(targets: Vec<std::net::SocketAddr>) -> anyhow::Result<std::net::SocketAddr> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (next, client, targets) = (next.clone(), client.clone(), targets.clone());
        async move {
            let target = targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
            let (parts, body) = request.into_parts();
            let Ok(body) = axum::body::to_bytes(body, 2 << 20).await else {
                return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
            };
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut outgoing = client.request(parts.method, format!("http://{target}{path}"));
            for (name, value) in &parts.headers {
                if name != axum::http::header::HOST {
                    outgoing = outgoing.header(name, value);
                }
            }
            match outgoing.body(body).send().await {
                Ok(answer) => {
                    let status = answer.status();
                    let headers = answer.headers().clone();
                    let bytes = answer.bytes().await.unwrap_or_default();
                    let mut response = (status, bytes).into_response();
                    for (name, value) in &headers {
                        if name != axum::http::header::CONTENT_LENGTH
                            && name != axum::http::header::TRANSFER_ENCODING
                        {
                            response.headers_mut().insert(name, value.clone());
                        }
                    }
                    response
                }
                Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(forward)).await;
    });
    Ok(addr)
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
    let postgres = args
        .database
        .as_deref()
        .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"));
    if args.instances > 1 && postgres.is_none() {
        anyhow::bail!(
            "--instances {} needs a database the instances share: pass --database postgres://user@host/db (the demo makes a schema of its own there and drops it at the end)",
            args.instances
        );
    }
    let schema = match postgres {
        Some(server) => Some(DemoSchema::create(server).await?),
        None => None,
    };
    // Ctrl-C before the scenario is done ends it too; the schema is dropped either way.
    let outcome = tokio::select! {
        outcome = demo_on(&args, schema.as_ref().map(|s| s.url.clone())) => outcome,
        () = super::daemon::wait_for_termination() => Ok(()),
    };
    if let Some(schema) = schema {
        schema.drop_now().await;
    }
    outcome
}

async fn demo_on(args: &DemoArgs, postgres: Option<String>) -> anyhow::Result<()> {
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
    let database = match (&postgres, &args.database) {
        (Some(url), _) => url.clone(),
        (None, Some(path)) => path.clone(),
        (None, None) => format!("sqlite://{}", folder.path().join("flowd.db").display()),
    };
    let mut settings = Settings {
        rules: rules.clone(),
        database: crate::settings::DatabaseSettings {
            url: database,
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
    let mut daemons = Vec::new();
    let mut publics = Vec::new();
    let mut admins = Vec::new();
    for index in 0..usize::from(args.instances) {
        let (listen, admin_listen) = if index == 0 {
            (args.listen, args.admin_listen)
        } else {
            ("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?)
        };
        let public = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin = tokio::net::TcpListener::bind(admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen}"))?;
        publics.push(public.local_addr()?);
        admins.push(admin.local_addr()?);
        let daemon = crate::daemon::Daemon::build_on(
            settings.clone(),
            rule_set.clone(),
            BTreeMap::new(),
            public,
            admin,
        )
        .await?;
        daemons.push(tokio::spawn(daemon.run(stop.clone().cancelled_owned())));
    }
    // Whatever happens from here, the daemons are stopped before the demo returns (and its
    // schema is dropped).
    let outcome = async {
        let public_addr = publics[0];
        let admin_addr = admins[0];
        let several = publics.len() > 1;
        let webhook_addr = if several {
            balancer(publics.clone()).await?
        } else {
            public_addr
        };

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
                &format!("http://{webhook_addr}/webhooks/recrubo"),
                &Secret::new(WEBHOOK_SECRET.to_owned()),
            )
            .await?;

        let http = reqwest::Client::new();
        // Which instance is which: the cluster view names each by its public address.
        let mut names: HashMap<String, char> = HashMap::new();
        if several {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while names.len() < publics.len() && tokio::time::Instant::now() < deadline {
                let cluster: Value = http
                    .get(format!("http://{admin_addr}/api/v1/cluster"))
                    .send()
                    .await?
                    .json()
                    .await?;
                for instance in cluster["instances"].as_array().into_iter().flatten() {
                    let address = instance["address"].as_str().unwrap_or_default();
                    if let Some(index) = publics.iter().position(|p| p.to_string() == address) {
                        names.insert(
                            instance["id"].as_str().unwrap_or_default().to_owned(),
                            letter(index),
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        say("flowd demo");
        say(format!("  Recrubo simulator  {}", sim.base_url()));
        if several {
            say(format!(
                "  database           {} (a schema of the demo's own, dropped at the end)",
                crate::daemon::redact_url(args.database.as_deref().unwrap_or_default())
            ));
            for (index, (public, admin)) in publics.iter().zip(&admins).enumerate() {
                say(format!(
                    "  flowd {}            http://{public} (events, webhooks)   admin http://{admin}",
                    letter(index)
                ));
            }
            say(format!(
                "  load balancer      http://{webhook_addr} (Recrubo's webhooks, round-robin)"
            ));
        } else {
            say(format!(
                "  flowd              http://{public_addr} (events, webhooks)   admin http://{admin_addr}"
            ));
        }
        say(
            "  rules              examples/quickstart: screen new applications, chain the interview, scrub timeouts",
        );
        say("");
        for (index, (id, name)) in [("app-1", "Ana"), ("app-2", "Bo"), ("app-3", "Cy")]
            .into_iter()
            .enumerate()
        {
            let target = publics[index % publics.len()];
            http.post(format!("http://{target}/events/application.created"))
                .bearer_auth(DEMO_EVENTS_TOKEN)
                .json(&json!({ "id": id, "name": name, "message_thread_id": format!("thread-{}", name.to_lowercase()) }))
                .send()
                .await?;
            let at = if several {
                format!(" to flowd {}", letter(index % publics.len()))
            } else {
                String::new()
            };
            say(format!("→ event application.created posted for {name}{at}"));
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
                let mut what = match execution["handler_status"].as_str() {
                    Some(handler) => format!("on_status.{handler} handler of {rule}{who}"),
                    None => format!("rule {rule}{who}"),
                };
                if several && status != "pending" {
                    what.push_str(&ran_on(&http, admin_addr, &id, &names).await);
                }
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
        if several {
            say("  every instance's admin API and status page show the whole cluster's work:");
        }
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
        Ok::<(), anyhow::Error>(())
    }
    .await;
    stop.cancel();
    for daemon in daemons {
        let _ = daemon.await;
    }
    sim.stop().await;
    outcome
}

/// " on flowd B" (or "B, C" when its steps ran on several): the instances that ran an
/// execution's steps, from its step records.
async fn ran_on(
    http: &reqwest::Client,
    admin: std::net::SocketAddr,
    id: &str,
    names: &HashMap<String, char>,
) -> String {
    let Ok(answer) = http
        .get(format!("http://{admin}/api/v1/executions/{id}"))
        .send()
        .await
    else {
        return String::new();
    };
    let detail: Value = answer.json().await.unwrap_or_default();
    let mut on: Vec<char> = detail["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|step| step["instance"].as_str())
        .map(|instance| names.get(instance).copied().unwrap_or('?'))
        .collect();
    on.sort_unstable();
    on.dedup();
    if on.is_empty() {
        return String::new();
    }
    let on: Vec<String> = on.iter().map(char::to_string).collect();
    format!(" on flowd {}", on.join(", "))
}
