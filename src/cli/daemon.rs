//! `flowd run`: the daemon.
//!
//! Start-up order: settings, logging, rules (refused with exit 78 when invalid), secrets, then
//! the listeners. Shutdown on SIGTERM/SIGINT stops the listeners (in-flight requests finish),
//! then the background tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::warn;

use super::{EXIT_INVALID_CONFIG, init_logging};
use crate::actions::ActionDeps;
use crate::actions::email::Mailer;
use crate::engine::reload::Reloader;
use crate::engine::{Engine, EngineSettings};
use crate::http::serve::ListenerLimits;
use crate::http::{AdminAccess, AppState, admin_router_with, public_router};
use crate::recrubo::{ClientSettings, RecruboClient};
use crate::rules::load_rule_set;
use crate::settings::Secret;
use crate::settings::{LogFormat, Settings, layer, resolve_secrets};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use crate::triggers::http::Intake;

/// Arguments of `flowd run`; each overrides the `FLOWD_*` variable and the settings file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of rule files (default: rules/).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Public listener address (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin listener address (default 127.0.0.1:8081).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// State database (default sqlite://flowd.db).
    #[arg(long)]
    pub database: Option<String>,
    /// A settings file (YAML); flags and FLOWD_* variables override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or filter.
    #[arg(long)]
    pub log_level: Option<String>,
}

impl RunArgs {
    fn flag_overrides(&self) -> Vec<(&'static str, Value)> {
        let mut flags = Vec::new();
        if let Some(rules) = &self.rules {
            flags.push(("rules", Value::String(rules.display().to_string())));
        }
        if let Some(listen) = self.listen {
            flags.push(("listen", Value::String(listen.to_string())));
        }
        if let Some(admin) = self.admin_listen {
            flags.push(("admin_listen", Value::String(admin.to_string())));
        }
        if let Some(database) = &self.database {
            flags.push(("database", Value::String(database.clone())));
        }
        if let Some(format) = self.log_format {
            let name = match format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            flags.push(("log.format", Value::String(name.to_owned())));
        }
        if let Some(level) = &self.log_level {
            flags.push(("log.level", Value::String(level.clone())));
        }
        flags
    }
}

/// The process-wide Prometheus recorder (a recorder can be installed once per process).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Schedule lateness and tick recording are histograms with fixed buckets (rather
            // than the exporter's default summaries over a rolling minute), so a scrape after
            // the minute still tells the p99 of every tick since the start.
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Prefix("flowd_schedule_".into()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = args
        .config
        .clone()
        .or_else(|| env.get("FLOWD_CONFIG").map(PathBuf::from));
    let settings = match layer(config.as_deref(), &env, &args.flag_overrides()) {
        Ok(settings) => settings,
        Err(err) => {
            // Secret settings are never part of these messages (settings::check_secret_setting).
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    init_logging(settings.log.format, &settings.log.level);

    let loaded = load_rule_set(std::slice::from_ref(&settings.rules));
    let rule_set = match loaded.result {
        Ok(set) => set,
        Err(ref diagnostics) => {
            eprintln!("{}", loaded.render_diagnostics(diagnostics));
            eprintln!(
                "error: the rules in {} are invalid ({} problem{}); flowd did not start",
                settings.rules.display(),
                diagnostics.len(),
                if diagnostics.len() == 1 { "" } else { "s" }
            );
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    if !settings.admin_listen.ip().is_loopback() && settings.admin.token.is_none() {
        eprintln!(
            "error: the admin listener {} is not on loopback and no admin token is set; set FLOWD_ADMIN_TOKEN (or admin.token)",
            settings.admin_listen
        );
        return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
    }

    let secrets = match resolve_secrets(&rule_set.secrets, &env, settings.secrets_file.as_deref()) {
        Ok(secrets) => secrets,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    let reconcile_after =
        match crate::rules::duration::parse_duration(&settings.recrubo.reconcile_after) {
            Ok(duration) => duration,
            Err(err) => {
                eprintln!("error: recrubo.reconcile_after: {err}");
                return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
            }
        };

    if let Err(err) = crate::rules::duration::parse_duration(&settings.recrubo.unknown_run_grace) {
        eprintln!("error: recrubo.unknown_run_grace: {err}");
        return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
    }
    if let Err(err) = crate::rules::duration::parse_duration(&settings.shutdown_timeout) {
        eprintln!("error: shutdown_timeout: {err}");
        return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
    }
    if let Err(err) = crate::actions::egress::EgressPolicy::new(&settings.egress.allow) {
        eprintln!("error: {err}");
        return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        // CEL evaluation and template rendering recurse with the expression's depth: on tokio's
        // default 2 MiB a 1,229-term condition (2.4 KB, valid at load) overflowed the stack
        // (found by fuzzing). 32 MiB covers the 16 KiB condition limit.
        .thread_stack_size(32 * 1024 * 1024)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(settings, rule_set, secrets, reconcile_after));
    // Tasks still running after the shutdown deadline (a step stuck in a call) are dropped.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

fn action_deps(settings: &Settings) -> anyhow::Result<ActionDeps> {
    let recrubo = match &settings.recrubo.token {
        Some(token) => {
            let mut client_settings =
                ClientSettings::new(settings.recrubo.base_url.clone(), token.clone());
            client_settings.sync = settings.recrubo.sync;
            client_settings.rate_limit = settings.recrubo.rate_limit;
            Some(RecruboClient::new(&client_settings)?)
        }
        None => {
            warn!("No Recrubo token (recrubo.token / RECRUBO_API_TOKEN): Recrubo steps will fail");
            None
        }
    };
    let smtp = match &settings.smtp {
        Some(smtp) => Some(Mailer::new(smtp).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let redirects = if settings.egress.follow_redirects {
        reqwest::redirect::Policy::limited(5)
    } else {
        // A redirect could lead anywhere, the admin listener included (DESIGN 3).
        reqwest::redirect::Policy::none()
    };
    let http = reqwest::Client::builder()
        .user_agent(concat!("flowd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .redirect(redirects)
        .build()
        .context("cannot build the HTTP client")?;
    Ok(ActionDeps {
        recrubo,
        http,
        smtp,
        analysis_timeout: Duration::from_secs(600),
        egress: crate::actions::egress::EgressPolicy::new(&settings.egress.allow)
            .map_err(anyhow::Error::msg)?,
    })
}

async fn serve(
    settings: Settings,
    rule_set: crate::rules::RuleSet,
    secrets: BTreeMap<String, Secret<String>>,
    reconcile_after: Duration,
) -> anyhow::Result<()> {
    serve_with(
        settings,
        rule_set,
        secrets,
        reconcile_after,
        None,
        CancellationToken::new(),
    )
    .await
}

/// Runs the daemon on listeners bound by the caller (or bound here from the settings) until
/// SIGTERM/SIGINT or until `stop` is cancelled (the demo runs the daemon in-process this way).
pub async fn serve_with(
    settings: Settings,
    rule_set: crate::rules::RuleSet,
    secrets: BTreeMap<String, Secret<String>>,
    reconcile_after: Duration,
    listeners: Option<(tokio::net::TcpListener, tokio::net::TcpListener)>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = metrics_handle();
    let rule_count = rule_set.len();
    let reloader = Reloader::new(settings.rules.clone(), rule_set);
    let shutdown = CancellationToken::new();
    let work_shutdown = CancellationToken::new();

    let store: Arc<dyn Store> = if settings.database.starts_with("sqlite:") {
        Arc::new(
            SqliteStore::open(&settings.database)
                .await
                .with_context(|| format!("cannot open the database {}", settings.database))?,
        )
    } else {
        anyhow::bail!(
            "unsupported database `{}`: use sqlite://PATH (Postgres comes later)",
            settings.database
        );
    };
    reloader
        .attach_store(store.clone())
        .await
        .map_err(|err| anyhow::anyhow!("cannot store the rule versions: {err}"))?;
    let engine = Engine {
        store: store.clone(),
        reloader: reloader.clone(),
        deps: action_deps(&settings)?,
        secrets: Arc::new(crate::engine::SecretValues::with_others(
            &secrets,
            &settings.secret_values(),
        )),
        settings: EngineSettings {
            reconcile_after,
            // Look for stale runs often enough that one is polled soon after it goes stale.
            reconcile_every: (reconcile_after / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(30)),
            // Checked at start (`run`); the demo passes settings it made itself.
            unknown_run_grace: crate::rules::duration::parse_duration(
                &settings.recrubo.unknown_run_grace,
            )
            .unwrap_or(Duration::from_secs(30)),
            ..EngineSettings::default()
        },
        events_waiting: Arc::new(Notify::new()),
        executions_waiting: Arc::new(Notify::new()),
    };
    if settings.recrubo.webhook_secret.is_empty() {
        warn!(
            "No webhook secret (recrubo.webhook_secret / RECRUBO_WEBHOOK_SECRET): POST /webhooks/recrubo answers 401"
        );
    }
    if settings.events.tokens.is_empty() && settings.events.hmac_secret.is_none() {
        warn!(
            "SECURITY: no events.tokens or events.hmac_secret is set, so POST /events accepts unauthenticated events from anyone who can reach this listener; set FLOWD_EVENTS_TOKENS or FLOWD_EVENTS_HMAC_SECRET"
        );
    }
    let intake = Intake::start(
        store.clone(),
        engine.events_waiting.clone(),
        settings.recrubo.webhook_secret.clone(),
        settings.events.tokens.clone(),
        settings.events.hmac_secret.clone(),
    );
    let processor_task = tokio::spawn(crate::engine::processor::run(
        engine.clone(),
        work_shutdown.clone(),
    ));
    let executor_task = tokio::spawn(crate::engine::executor::run(
        engine.clone(),
        work_shutdown.clone(),
        Duration::from_secs(20),
    ));
    let history_age = crate::rules::duration::parse_duration(&settings.history.max_age)
        .map_err(|err| anyhow::anyhow!("history.max_age: {err}"))?;
    let history_count = settings.history.max_count.max(1);
    let prune_store = store.clone();
    let prune_shutdown = work_shutdown.clone();
    let prune_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = prune_shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let before =
                chrono::Utc::now() - chrono::Duration::from_std(history_age).unwrap_or_default();
            match prune_store.prune_history(before, history_count).await {
                Ok(0) => {}
                Ok(count) => info!(executions = count, "History pruned"),
                Err(err) => warn!(error = %err, "Cannot prune the history"),
            }
        }
    });
    let schedule_task = tokio::spawn(crate::triggers::schedule::run(
        reloader.clone(),
        store.clone(),
        engine.events_waiting.clone(),
        work_shutdown.clone(),
        crate::triggers::schedule::Clock::Wall,
    ));
    let reconcile_task = tokio::spawn(crate::engine::reconcile::run(
        engine.clone(),
        work_shutdown.clone(),
    ));

    let state = AppState {
        reloader: reloader.clone(),
        metrics: metrics.clone(),
        admin_token: settings.admin.token.clone(),
        store: Some(store.clone()),
        intake: Some(intake),
    };
    let (public, admin) = match listeners {
        Some(bound) => bound,
        None => (
            tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("cannot listen on {}", settings.listen))?,
            tokio::net::TcpListener::bind(settings.admin_listen)
                .await
                .with_context(|| format!("cannot listen on {}", settings.admin_listen))?,
        ),
    };
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let admin_access =
        AdminAccess::new(Some(admin_addr), &settings.admin.hosts).map_err(anyhow::Error::msg)?;
    if admin_addr.ip().is_unspecified() && settings.admin.hosts.is_empty() {
        warn!(admin = %admin_addr, "The admin listener is bound to every address but admin.hosts is empty: requests by a name or address other than localhost get 421; list them in admin.hosts");
    }
    info!(
        public = %public_addr,
        admin = %admin_addr,
        rules = rule_count,
        rules_dir = %settings.rules.display(),
        "flowd listening"
    );

    let watch_task = tokio::spawn(reloader.clone().watch(
        Duration::from_secs(settings.rescan_interval_seconds),
        shutdown.clone(),
    ));
    let upkeep_task = metrics.map(|handle| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => handle.run_upkeep(),
                }
            }
        })
    });

    let shutdown_timeout = crate::rules::duration::parse_duration(&settings.shutdown_timeout)
        .map_err(|err| anyhow::anyhow!("shutdown_timeout: {err}"))?;
    let limits = ListenerLimits {
        max_connections: settings.limits.max_connections,
        ..ListenerLimits::default()
    }
    .fitting_descriptors(2);
    let public_server = crate::http::serve::serve(
        public,
        public_router(state.clone()),
        limits,
        shutdown.clone(),
        shutdown_timeout,
    );
    let admin_server = crate::http::serve::serve(
        admin,
        admin_router_with(state, admin_access),
        limits,
        shutdown.clone(),
        shutdown_timeout,
    );
    let signal_shutdown = shutdown.clone();
    let stopping_since = Arc::new(OnceLock::new());
    let stopping = stopping_since.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = wait_for_termination() => {}
            _ = stop.cancelled() => {}
        }
        let _ = stopping.set(tokio::time::Instant::now());
        info!(deadline = ?shutdown_timeout, "Shutting down: stopping intake");
        signal_shutdown.cancel();
    });

    tokio::join!(public_server, admin_server);
    shutdown.cancel();
    let deadline = stopping_since
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        + shutdown_timeout;
    let _ = tokio::time::timeout_at(deadline, watch_task).await;
    if let Some(task) = upkeep_task {
        let _ = tokio::time::timeout_at(deadline, task).await;
    }
    // Intake has stopped; now let the work in flight finish (or be left to resume), within the
    // same deadline: what does not finish resumes at the next start.
    info!("Shutting down: finishing steps in flight");
    work_shutdown.cancel();
    let finished = tokio::time::timeout_at(deadline, async {
        let _ = processor_task.await;
        let _ = executor_task.await;
        let _ = reconcile_task.await;
        let _ = schedule_task.await;
        let _ = prune_task.await;
    })
    .await;
    if finished.is_err() {
        error!(deadline = ?shutdown_timeout, "Work still in flight at the shutdown deadline; it resumes at the next start");
    }
    info!("flowd stopped");
    Ok(())
}

pub(crate) async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
