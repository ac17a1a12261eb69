//! The daemon as a value: [`Daemon::build`] opens the store, starts the intake and binds (or
//! takes) the listeners; [`Daemon::run`] serves and runs the engine's tasks until a shutdown
//! future resolves, then stops in order (intake first, then the work in flight, within
//! `shutdown_timeout`). `flowd run` and `flowd demo` are glue around it, and tests run it
//! in-process; [`Daemon::quiesce`] resolves when nothing is left to do.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::actions::ActionDeps;
use crate::actions::email::Mailer;
use crate::engine::reload::Reloader;
use crate::engine::{Engine, EngineSettings};
use crate::http::serve::ListenerLimits;
use crate::http::{AdminAccess, AppState, admin_router_with, public_router};
use crate::recrubo::{ClientSettings, RecruboClient};
use crate::rules::RuleSet;
use crate::settings::{Secret, Settings, Timings};
use crate::store::sqlite::SqliteStore;
use crate::store::{ExecutionFilter, Store, StoreError};
use crate::triggers::http::Intake;

/// A daemon built and ready to run.
pub struct Daemon {
    settings: Settings,
    timings: Timings,
    engine: Engine,
    intake: Intake,
    metrics: Option<PrometheusHandle>,
    public: TcpListener,
    admin: TcpListener,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_access: AdminAccess,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("public", &self.public_addr)
            .field("admin", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Builds a daemon listening where the settings say.
    pub async fn build(
        settings: Settings,
        rule_set: RuleSet,
        secrets: BTreeMap<String, Secret<String>>,
    ) -> anyhow::Result<Daemon> {
        let public = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let admin = TcpListener::bind(settings.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.admin_listen))?;
        Self::build_on(settings, rule_set, secrets, public, admin).await
    }

    /// Builds a daemon on listeners the caller bound (port 0 in tests, the demo's ports).
    pub async fn build_on(
        settings: Settings,
        rule_set: RuleSet,
        secrets: BTreeMap<String, Secret<String>>,
        public: TcpListener,
        admin: TcpListener,
    ) -> anyhow::Result<Daemon> {
        let timings = settings.timings().map_err(anyhow::Error::msg)?;
        let instance = uuid::Uuid::new_v4().to_string();
        let reloader = Reloader::new(settings.rules.clone(), rule_set);
        let store = open_store(&settings.database, &instance).await?;
        reloader
            .attach_store(store.clone())
            .await
            .map_err(|err| anyhow::anyhow!("cannot store the rule versions: {err}"))?;
        let engine = Engine {
            store: store.clone(),
            reloader,
            deps: action_deps(&settings)?,
            secrets: Arc::new(crate::engine::SecretValues::with_others(
                &secrets,
                &settings.secret_values(),
            )),
            settings: EngineSettings {
                reconcile_after: timings.reconcile_after,
                // Look for stale runs often enough that one is polled soon after it goes stale.
                reconcile_every: (timings.reconcile_after / 4)
                    .clamp(Duration::from_millis(200), Duration::from_secs(30)),
                unknown_run_grace: timings.unknown_run_grace,
                lease: timings.lease,
                instance,
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
            store,
            engine.events_waiting.clone(),
            settings.recrubo.webhook_secret.clone(),
            settings.events.tokens.clone(),
            settings.events.hmac_secret.clone(),
        )
        .with_rules(engine.reloader.clone());
        let public_addr = public.local_addr()?;
        let admin_addr = admin.local_addr()?;
        let admin_access = AdminAccess::new(Some(admin_addr), &settings.admin.hosts)
            .map_err(anyhow::Error::msg)?;
        if admin_addr.ip().is_unspecified() && settings.admin.hosts.is_empty() {
            warn!(admin = %admin_addr, "The admin listener is bound to every address but admin.hosts is empty: requests by a name or address other than localhost get 421; list them in admin.hosts");
        }
        Ok(Daemon {
            settings,
            timings,
            engine,
            intake,
            metrics: metrics_handle(),
            public,
            admin,
            public_addr,
            admin_addr,
            admin_access,
        })
    }

    /// The public listener's address (webhooks, events, health).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.engine.store.clone()
    }

    /// Resolves once nothing is pending: no event in the inbox (deferred ones included) and no
    /// execution waiting to run or to retry. For tests and tools; checks every 20 ms.
    pub fn quiesce(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let store = self.engine.store.clone();
        async move {
            while !nothing_pending(&*store).await? {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    }

    /// Serves and works until `shutdown` resolves, then stops: the listeners first (requests
    /// in flight finish), then the work in flight, all within `shutdown_timeout`; what does
    /// not finish resumes at the next start.
    pub async fn run(
        self,
        shutdown_signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Daemon {
            settings,
            timings,
            engine,
            intake,
            metrics,
            public,
            admin,
            public_addr,
            admin_addr,
            admin_access,
        } = self;
        let shutdown = CancellationToken::new();
        let work_shutdown = CancellationToken::new();
        let store = engine.store.clone();
        let reloader = engine.reloader.clone();
        let processor_task = tokio::spawn(crate::engine::processor::run(
            engine.clone(),
            work_shutdown.clone(),
        ));
        let executor_task = tokio::spawn(crate::engine::executor::run(
            engine.clone(),
            work_shutdown.clone(),
            Duration::from_secs(20),
        ));
        let prune_task = tokio::spawn(prune(
            store.clone(),
            timings.history_max_age,
            settings.history.max_count.max(1),
            work_shutdown.clone(),
        ));
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
        let deadline_task = tokio::spawn(crate::engine::deadlines::run(
            engine.clone(),
            work_shutdown.clone(),
        ));
        let instance_id = engine.settings.instance.clone();
        let me = move |reloader: &crate::engine::reload::Reloader| crate::store::Instance {
            id: instance_id.clone(),
            address: public_addr.to_string(),
            rules_hash: reloader.current().hash.clone(),
            heartbeat_at: chrono::Utc::now(),
            leases: 0,
        };
        let state = AppState {
            reloader: reloader.clone(),
            metrics: metrics.clone(),
            admin_token: settings.admin.token.clone(),
            store: Some(store.clone()),
            intake: Some(intake),
            instance: Some(me(&reloader)),
        };
        // Other instances' work wakes this one at once (Postgres LISTEN/NOTIFY); the processor
        // and executor still look by time, so a lost notification delays, never loses.
        let listen_task = {
            let store = store.clone();
            let events = engine.events_waiting.clone();
            let executions = engine.executions_waiting.clone();
            let stop = work_shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    result = store.listen(events, executions) => {
                        if let Err(err) = result {
                            warn!(error = %err, "Cannot listen for other instances' work; it is found by polling");
                        }
                    }
                }
            })
        };
        // The heartbeat: the cluster view, and which rules each instance has in force.
        let heartbeat_task = {
            let store = store.clone();
            let reloader = reloader.clone();
            let stop = work_shutdown.clone();
            let me = me.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                let mut waiting_seen = std::collections::HashSet::<(String, String)>::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    let mine = me(&reloader);
                    let sent = chrono::Utc::now();
                    match store.heartbeat(&mine).await {
                        Ok(Some(clock)) => {
                            // Leases and claims are reckoned by each instance's clock: one
                            // far off the database's takes work early or holds it too long.
                            let back = chrono::Utc::now();
                            let skew = clock_skew(sent, back, clock);
                            metrics::gauge!("flowd_cluster_clock_skew_seconds").set(skew);
                            if skew.abs() > CLOCK_SKEW_WARNING {
                                warn!(
                                    skew_seconds = skew,
                                    "This instance's clock is off the database's; leases between instances assume clocks within a second or two (run NTP)"
                                );
                            }
                        }
                        Ok(None) => {}
                        Err(err) => {
                            warn!(error = %err, "Cannot record this instance's heartbeat");
                            continue;
                        }
                    }
                    match store
                        .instances(chrono::Utc::now() - crate::http::INSTANCE_ALIVE)
                        .await
                    {
                        Ok(instances) => {
                            let mismatch =
                                instances.iter().any(|i| i.rules_hash != mine.rules_hash);
                            metrics::gauge!("flowd_cluster_rules_hash_mismatch").set(if mismatch {
                                1.0
                            } else {
                                0.0
                            });
                            metrics::gauge!("flowd_cluster_instances")
                                .set(instances.len().max(1) as f64);
                        }
                        Err(err) => warn!(error = %err, "Cannot read the cluster's instances"),
                    }
                    // What waits, by rule and kind (DESIGN 2.5); a pair no longer waiting
                    // goes back to 0.
                    match store.waiting_counts().await {
                        Ok(counts) => {
                            let now: std::collections::HashSet<(String, String)> = counts
                                .iter()
                                .map(|(rule, kind, _)| (rule.clone(), kind.clone()))
                                .collect();
                            for (rule, kind) in waiting_seen.difference(&now) {
                                metrics::gauge!("flowd_executions_waiting", "rule" => rule.clone(), "kind" => kind.clone()).set(0.0);
                            }
                            for (rule, kind, count) in counts {
                                metrics::gauge!("flowd_executions_waiting", "rule" => rule, "kind" => kind).set(count as f64);
                            }
                            waiting_seen = now;
                        }
                        Err(err) => warn!(error = %err, "Cannot count the waiting executions"),
                    }
                }
            })
        };
        info!(
            public = %public_addr,
            admin = %admin_addr,
            rules = reloader.current().len(),
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
        let shutdown_timeout = timings.shutdown_timeout;
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
            shutdown_signal.await;
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
        // Intake has stopped; now let the work in flight finish (or be left to resume), within
        // the same deadline: what does not finish resumes at the next start.
        info!("Shutting down: finishing steps in flight");
        work_shutdown.cancel();
        let finished = tokio::time::timeout_at(deadline, async {
            let _ = processor_task.await;
            let _ = executor_task.await;
            let _ = reconcile_task.await;
            let _ = deadline_task.await;
            let _ = schedule_task.await;
            let _ = prune_task.await;
            let _ = listen_task.await;
            let _ = heartbeat_task.await;
        })
        .await;
        if finished.is_err() {
            error!(deadline = ?shutdown_timeout, "Work still in flight at the shutdown deadline; it resumes at the next start");
        }
        info!("flowd stopped");
        Ok(())
    }
}

/// Whether a store holds no work: no event in the inbox (deferred ones included) and no
/// pending execution (retries included) — for whichever instances share it.
pub async fn nothing_pending(store: &dyn Store) -> Result<bool, StoreError> {
    let far = chrono::Utc::now() + chrono::TimeDelta::days(365 * 20);
    let inbox = store.unprocessed_events(1, i64::MAX, far).await?;
    let pending = store
        .executions(&ExecutionFilter {
            status: Some("pending".to_owned()),
            limit: 1,
            ..ExecutionFilter::default()
        })
        .await?;
    Ok(inbox.is_empty() && pending.is_empty())
}

/// Opens the store a database URL names.
async fn open_store(
    settings: &crate::settings::DatabaseSettings,
    instance: &str,
) -> anyhow::Result<Arc<dyn Store>> {
    let database = settings.url.as_str();
    if database.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(database).await.with_context(
            || format!("cannot open the database {database}"),
        )?))
    } else if database.starts_with("postgres:") || database.starts_with("postgresql:") {
        Ok(Arc::new(
            crate::store::postgres::PgStore::open(database, settings.pool_size, instance)
                .await
                .with_context(|| format!("cannot open the database {}", redact_url(database)))?,
        ))
    } else {
        anyhow::bail!(
            "unsupported database `{}`: use sqlite://PATH or postgres://USER@HOST/DATABASE",
            redact_url(database)
        )
    }
}

/// A database URL as it may be printed: a password in it replaced by `***`.
/// How far an instance's clock may be off the database's before it warns, in seconds.
const CLOCK_SKEW_WARNING: f64 = 2.0;

/// This instance's clock minus the database's, in seconds: the database read its clock between
/// `sent` and `back` (taken as halfway).
fn clock_skew(
    sent: chrono::DateTime<chrono::Utc>,
    back: chrono::DateTime<chrono::Utc>,
    database: chrono::DateTime<chrono::Utc>,
) -> f64 {
    let ours = sent + (back - sent) / 2;
    (ours - database).num_milliseconds() as f64 / 1000.0
}

pub(crate) fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((credentials, host)) if credentials.contains(':') => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Prunes the history every 10 minutes.
async fn prune(
    store: Arc<dyn Store>,
    max_age: Duration,
    max_count: i64,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let before = chrono::TimeDelta::from_std(max_age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
            .unwrap_or_else(chrono::Utc::now);
        match store.prune_history(before, max_count).await {
            Ok(0) => {}
            Ok(count) => info!(executions = count, "History pruned"),
            Err(err) => warn!(error = %err, "Cannot prune the history"),
        }
    }
}

/// What steps need, from the settings.
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
