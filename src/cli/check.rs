//! `flowd check [PATHS]`: validate rule files and report every problem.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::{EXIT_INVALID_CONFIG, OutputFormat, default_rule_paths};
use crate::rules::load_rule_set;

/// Arguments of `flowd check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Rule files or folders (default: rules/).
    pub paths: Vec<PathBuf>,
    /// `text` for people, `json` for editors and CI.
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

/// Runs the check and prints the report; returns 0 when valid, 78 when not.
pub fn run(args: &CheckArgs) -> ExitCode {
    let paths = if args.paths.is_empty() {
        default_rule_paths()
    } else {
        args.paths.clone()
    };
    let outcome = load_rule_set(&paths);
    let (valid, rule_count, secrets, diagnostics) = match &outcome.result {
        Ok(set) => (true, set.len(), set.secrets.clone(), Vec::new()),
        Err(diagnostics) => (false, 0, BTreeSet::new(), diagnostics.clone()),
    };
    let warnings = match &outcome.result {
        Ok(set) => {
            let mut warnings = url_warnings(set);
            warnings.extend(initial_message_warnings(set));
            warnings
        }
        Err(_) => Vec::new(),
    };
    match args.format {
        OutputFormat::Json => {
            let report = json!({
                "valid": valid,
                "files": outcome.file_count,
                "rules": rule_count,
                "secrets": secrets,
                "diagnostics": diagnostics,
                "warnings": warnings,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        }
        OutputFormat::Text => {
            if !diagnostics.is_empty() {
                println!("{}", outcome.render_diagnostics(&diagnostics));
            }
            for warning in &warnings {
                println!(
                    "warning[{}]: {}\n  --> {}:{}:{}\n   = in rule `{}`, field `{}`\n   = help: {}\n",
                    warning.code,
                    warning.message,
                    warning.file,
                    warning.line,
                    warning.column,
                    warning.rule,
                    warning.field,
                    warning.help
                );
            }
            if valid {
                if outcome.file_count == 0 {
                    println!("no rule files found in {}", display_paths(&paths));
                } else {
                    println!(
                        "ok: {rule_count} rule{} in {} file{} valid",
                        plural(rule_count),
                        outcome.file_count,
                        plural(outcome.file_count)
                    );
                }
                if !secrets.is_empty() {
                    let names: Vec<&str> = secrets.iter().map(String::as_str).collect();
                    println!(
                        "secrets used: {} (flowd run needs a value for each)",
                        names.join(", ")
                    );
                }
            } else {
                let files: BTreeSet<_> = diagnostics.iter().map(|d| &d.file).collect();
                println!(
                    "error: {} problem{} in {} file{} ({} file{} checked)",
                    diagnostics.len(),
                    plural(diagnostics.len()),
                    files.len(),
                    plural(files.len()),
                    outcome.file_count,
                    plural(outcome.file_count)
                );
            }
        }
    }
    if valid && outcome.file_count > 0 {
        ExitCode::SUCCESS
    } else if valid {
        // Nothing to check is not an error for an empty folder, but a missing one was reported.
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID_CONFIG)
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A warning: valid, but probably not meant.
#[derive(Debug, serde::Serialize)]
struct Warning {
    code: &'static str,
    file: String,
    line: u32,
    column: u32,
    rule: String,
    field: String,
    message: String,
    help: &'static str,
}

/// URLs that put run-time data into their path or query without `urlencode`.
fn url_warnings(set: &crate::rules::RuleSet) -> Vec<Warning> {
    use crate::rules::StepKind;
    fn walk(
        rule: &crate::rules::Rule,
        steps: &[crate::rules::Step],
        prefix: &str,
        out: &mut Vec<Warning>,
    ) {
        for (index, step) in steps.iter().enumerate() {
            let field = format!("{prefix}[{index}]");
            let url = match &step.kind {
                StepKind::Notify { url, .. } => Some((url, "notify")),
                StepKind::Http { url, .. } => Some((url, "http")),
                _ => None,
            };
            if let Some((url, kind)) = url {
                for expression in crate::actions::egress::unencoded_runtime_in_path(url.source()) {
                    out.push(Warning {
                        code: "url-encoding",
                        help: "write `{{urlencode ...}}` so a value with `/`, `?` or `#` stays one part of the URL",
                        file: rule.file.display().to_string(),
                        line: step.at.line,
                        column: step.at.column,
                        rule: rule.name.clone(),
                        field: format!("{field}.{kind}.url"),
                        message: format!(
                            "`{expression}` puts run-time data into the URL without `urlencode`"
                        ),
                    });
                }
            }
            for (status, handler) in &step.on_status {
                walk(rule, handler, &format!("{field}.on_status.{status}"), out);
            }
        }
    }
    let mut out = Vec::new();
    for rule in set.rules() {
        walk(rule, &rule.steps, "do", &mut out);
    }
    out
}

/// `start_flow_run` steps on a WhatsApp thread (from a `message_thread` step with channel
/// `whatsapp`) without an `initial_message`: WhatsApp only lets a chat start with a template
/// (recrubo-api.md §7, "Triggering flows"), so the candidate hears nothing until they write.
fn initial_message_warnings(set: &crate::rules::RuleSet) -> Vec<Warning> {
    use crate::rules::StepKind;
    fn threads(steps: &[crate::rules::Step], out: &mut Vec<(String, String)>) {
        for step in steps {
            if let (Some(id), StepKind::MessageThread { channel, .. }) = (&step.id, &step.kind) {
                out.push((id.clone(), channel.source().to_owned()));
            }
            for (_, handler) in &step.on_status {
                threads(handler, out);
            }
        }
    }
    fn walk(
        rule: &crate::rules::Rule,
        steps: &[crate::rules::Step],
        prefix: &str,
        whatsapp: &[String],
        out: &mut Vec<Warning>,
    ) {
        for (index, step) in steps.iter().enumerate() {
            let field = format!("{prefix}[{index}]");
            if let StepKind::StartFlowRun {
                message_thread,
                initial_message: None,
                ..
            } = &step.kind
                && whatsapp
                    .iter()
                    .any(|id| message_thread.source().contains(&format!("steps.{id}.")))
            {
                out.push(Warning {
                    code: "initial-message",
                    help: "add `initial_message: { type: template, template: { id: ..., components: [...] } }`",
                    file: rule.file.display().to_string(),
                    line: step.at.line,
                    column: step.at.column,
                    rule: rule.name.clone(),
                    field: format!("{field}.start_flow_run"),
                    message: "a WhatsApp chat starts only with a template, and this `start_flow_run` has no `initial_message`: the candidate hears nothing until they write first".to_owned(),
                });
            }
            for (status, handler) in &step.on_status {
                walk(
                    rule,
                    handler,
                    &format!("{field}.on_status.{status}"),
                    whatsapp,
                    out,
                );
            }
        }
    }
    let mut out = Vec::new();
    for rule in set.rules() {
        let mut found = Vec::new();
        threads(&rule.steps, &mut found);
        let whatsapp: Vec<String> = found
            .into_iter()
            .filter(|(_, channel)| channel.trim().eq_ignore_ascii_case("whatsapp"))
            .map(|(id, _)| id)
            .collect();
        if !whatsapp.is_empty() {
            walk(rule, &rule.steps, "do", &whatsapp, &mut out);
        }
    }
    out
}
