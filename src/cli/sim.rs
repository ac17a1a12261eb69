//! `flowd sim`: run the Recrubo simulator for a person (or a demo, or a benchmark).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tracing::info;

use super::init_logging;
use crate::settings::LogFormat;
use crate::sim::{Script, SimSettings, describe, start};

/// Arguments of `flowd sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Where to listen; the API is served under /public/v2.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Where webhooks go (the organization's webhookUrl).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Sent as X-Recrubo-Webhook-Secret with every delivery.
    #[arg(long)]
    pub webhook_secret: Option<String>,
    /// The accepted bearer token (any non-empty token when not given).
    #[arg(long)]
    pub token: Option<String>,
    /// A script (YAML): lifecycles, outcomes by flow or rule, faults, webhook settings.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Move runs along by themselves: running after 1 s, finished after 3 s.
    #[arg(long)]
    pub auto: bool,
    /// Do not deliver flow-run and flow-generation updates while no subscription exists.
    #[arg(long)]
    pub no_default_deliveries: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Runs the simulator until Ctrl-C or SIGTERM.
pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, "info");
    let mut settings = match &args.script {
        Some(path) => SimSettings::from_file(path).map_err(anyhow::Error::msg)?,
        None => SimSettings::default(),
    };
    if args.auto && settings.script.flow_runs.is_none() {
        settings.script = Script::auto();
    }
    if args.webhook_url.is_some() {
        settings.webhook_url = args.webhook_url.clone();
    }
    if args.webhook_secret.is_some() {
        settings.webhook_secret = args.webhook_secret.clone();
    }
    if args.token.is_some() {
        settings.token = args.token.clone();
    }
    if args.no_default_deliveries {
        settings.deliver_by_default = Some(false);
    }
    settings.faults.validate().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let description = describe(&settings);
        let handle = start(args.listen, settings)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        info!(base_url = %handle.base_url(), "Recrubo simulator listening");
        info!("{description}");
        println!(
            "Recrubo simulator: set recrubo.base_url to {}",
            handle.base_url()
        );
        super::daemon::wait_for_termination().await;
        handle.stop().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
