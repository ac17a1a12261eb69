//! `flowd simulate --event FILE [--rules DIR] [--at TIME]`: which rules an event matches, why
//! the others do not, and the steps that would run with their rendered inputs — without calling
//! anything (the dry run of `flowd test`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::Value;

use super::{EXIT_INVALID_CONFIG, default_rule_paths};
use crate::engine::dry_run::run_test;
use crate::engine::matcher::{Incoming as Matched, why_not};
use crate::recrubo::jsonapi::WebhookPayload;
use crate::rules::Trigger;
use crate::rules::load_rule_set;
use crate::rules::ruleset::{Expectation, RuleTest};

/// Arguments of `flowd simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A JSON file: `{"type": ..., "data": ...}` for an external event, or a Recrubo
    /// WebhookPayload as delivered.
    #[arg(long)]
    pub event: PathBuf,
    /// The rules folder (default: rules/).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// The time to simulate at (RFC 3339; default now).
    #[arg(long)]
    pub at: Option<String>,
}

/// What the event is.
enum Incoming {
    External { event_type: String, event: Value },
    Webhook(Box<WebhookPayload>),
}

/// Runs the simulation and prints it.
pub fn run(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.event)
        .with_context(|| format!("cannot read {}", args.event.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", args.event.display()))?;
    let incoming = match serde_json::from_value::<WebhookPayload>(value.clone()) {
        Ok(payload) => Incoming::Webhook(Box::new(payload)),
        Err(_) => {
            let event_type = value["type"]
                .as_str()
                .context("the event has no `type` (and is not a Recrubo WebhookPayload)")?
                .to_owned();
            Incoming::External {
                event_type,
                event: value,
            }
        }
    };
    let now: DateTime<Utc> = match &args.at {
        Some(at) => DateTime::parse_from_rfc3339(at)
            .context("--at is not an RFC 3339 time")?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let paths = args
        .rules
        .clone()
        .map(|p| vec![p])
        .unwrap_or_else(default_rule_paths);
    let outcome = load_rule_set(&paths);
    let set = match &outcome.result {
        Ok(set) => set,
        Err(diagnostics) => {
            println!("{}", outcome.render_diagnostics(diagnostics));
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
    };
    let mut matched = 0;
    for rule in set.rules() {
        // The daemon's own decision (engine::matcher::why_not); a simulation has no run that
        // flowd started, so `started_by` cannot be met.
        let (event, why_not) = match &incoming {
            Incoming::External { event_type, event } => (
                event.clone(),
                why_not(&rule.trigger, &Matched::External { event_type }, false),
            ),
            Incoming::Webhook(payload) => {
                let attributes = &payload.data.attributes;
                let resource = &attributes.resource;
                let fields = attributes.fields.clone().unwrap_or_default();
                let status = resource.str_attribute("status").unwrap_or_default();
                let as_seen = match (&rule.trigger, resource.resource_type.as_str()) {
                    (Trigger::FlowRun(_), "flowRuns") => Matched::FlowRun {
                        status,
                        flow_id: resource.str_attribute("flowId"),
                        starter: None,
                    },
                    (Trigger::FlowGeneration(_), "flowGenerations") => Matched::FlowGeneration {
                        status,
                        starter: None,
                    },
                    _ => Matched::Webhook {
                        resource: &resource.resource_type,
                        event: &attributes.event,
                        fields: &fields,
                    },
                };
                (resource.to_json(), why_not(&rule.trigger, &as_seen, false))
            }
        };
        if let Some(reason) = why_not {
            println!("✗ {} — no match: {reason}", rule.name);
            continue;
        }
        let test = RuleTest {
            name: "simulate".to_owned(),
            at: rule.at,
            event,
            run_updates: Vec::new(),
            now: Some(now),
            expect: Expectation::Steps(Vec::new()),
        };
        let result = run_test(rule, &test);
        if rule.condition.is_some()
            && result.steps.is_empty()
            && result.notes.iter().any(|n| n.starts_with("rule skipped"))
        {
            println!(
                "✗ {} — matched, but its `if` is not true: {}",
                rule.name,
                result.notes.join("; ")
            );
            continue;
        }
        matched += 1;
        println!("✓ {} — matches", rule.name);
        for note in &result.notes {
            println!("    note: {note}");
        }
        for step in &result.steps {
            println!("    {}: {}", step.kind, step.fields);
        }
        if let Some(error) = &result.error {
            println!("    error: {error}");
        }
    }
    println!(
        "\n{matched} rule{} would run.",
        if matched == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
