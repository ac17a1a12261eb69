//! The command line: one module per subcommand. [`run`] parses nothing; `main.rs` hands it the
//! parsed [`Cli`] and maps the returned exit code.

pub mod admin;
pub mod check;
pub mod daemon;
pub mod demo;
pub mod schema;
pub mod sim;
pub mod simulate;
pub mod test;
pub mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::settings::LogFormat;

/// Exit code of `flowd check` (and `flowd run` at startup) when the rules are invalid:
/// EX_CONFIG from sysexits.h.
pub const EXIT_INVALID_CONFIG: u8 = 78;

/// flowd: workflow automation for Recrubo recruiting chat flows.
#[derive(Debug, Parser)]
#[command(name = "flowd", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate rule files; exit 0 when valid, 78 when not.
    Check(check::CheckArgs),
    /// Print the JSON Schema of rule files.
    Schema,
    /// Show which rules an event matches and the steps they would run, calling nothing.
    Simulate(simulate::SimulateArgs),
    /// Run the `tests:` of every rule offline; exit 1 on any failure.
    Test(test::TestArgs),
    /// Run the daemon.
    Run(daemon::RunArgs),
    /// The simulator and the daemon together on examples/quickstart, showing what happens.
    Demo(demo::DemoArgs),
    /// Run the Recrubo simulator.
    Sim(sim::SimArgs),
    /// Run a rule by hand (manual triggers) with inputs.
    Trigger(admin::TriggerArgs),
    /// List executions, or show one with its steps.
    Executions(admin::ExecutionsArgs),
    /// List the runs and generations flowd follows.
    Runs(admin::AdminConnection),
    /// List dead letters, or retry one.
    DeadLetters(admin::DeadLettersArgs),
    /// Ask the daemon to reload its rules now.
    Reload(admin::AdminConnection),
    /// Manage Recrubo webhook subscriptions and the organization's webhook destination.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
}

/// Output format of commands that report diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// For editors and CI.
    Json,
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => Ok(check::run(&args)),
        Command::Test(args) => Ok(test::run(&args)),
        Command::Simulate(args) => simulate::run(&args),
        Command::Schema => {
            println!("{}", schema::rule_file_schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => daemon::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Trigger(args) => admin::run(admin::AdminCommand::Trigger(args)),
        Command::Executions(args) => admin::run(admin::AdminCommand::Executions(args)),
        Command::Runs(args) => admin::run(admin::AdminCommand::Runs(args)),
        Command::DeadLetters(args) => admin::run(admin::AdminCommand::DeadLetters(args)),
        Command::Reload(args) => admin::run(admin::AdminCommand::Reload(args)),
        Command::Sim(args) => sim::run(args),
        Command::Webhooks(command) => webhooks::run(command),
    }
}

/// The paths to check when none are given.
pub fn default_rule_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("rules")]
}

/// Sets up logging to stderr.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
