//! `flowd run`: the daemon.
//!
//! Start-up order: settings, logging, rules (refused with exit 78 when invalid), secrets, then
//! the listeners. Shutdown on SIGTERM/SIGINT stops the listeners (in-flight requests finish),
//! then the background tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;

use super::{EXIT_INVALID_CONFIG, init_logging};
use crate::rules::load_rule_set;
use crate::settings::{LogFormat, layer, resolve_secrets};

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
            flags.push(("database.url", Value::String(database.clone())));
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
    if let Err(err) = settings.timings() {
        eprintln!("error: {err}");
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
    let result = runtime.block_on(async move {
        crate::daemon::Daemon::build(settings, rule_set, secrets)
            .await?
            .run(wait_for_termination())
            .await
    });
    // Tasks still running after the shutdown deadline (a step stuck in a call) are dropped.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
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
