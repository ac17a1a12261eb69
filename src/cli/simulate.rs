//! `flowd simulate`: which rules an input would start, why the others would not, and the steps
//! that would run with their rendered inputs — without calling anything. The input is an event
//! (`--event FILE`), a schedule tick (`--tick RULE [--at]`), a manual run (`--manual RULE
//! --input k=v`) or a status change of a run or generation (`--run-status STATUS --run FILE
//! [--started-by RULE/STEP]`: the `flow_run`/`flow_generation` rules and the starting step's
//! `on_status` handler). Matching is the daemon's own (`engine::matcher::why_not`), the steps
//! run through the dry run of `flowd test`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use serde_json::{Map, Value, json};

use super::admin::parse_input;
use super::{EXIT_INVALID_CONFIG, default_rule_paths};
use crate::engine::dry_run::{DryRun, run_handler, run_test};
use crate::engine::matcher::{Incoming as Matched, Starter, why_not};
use crate::engine::plan::base_context;
use crate::recrubo::FollowedKind;
use crate::recrubo::jsonapi::{Resource, WebhookPayload};
use crate::recrubo::types::flattened;
use crate::rules::ruleset::{Expectation, RuleTest};
use crate::rules::{Rule, RuleSet, Trigger, load_rule_set};

/// Arguments of `flowd simulate`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["event", "tick", "manual", "run_status"])))]
pub struct SimulateArgs {
    /// A JSON file: `{"type": ..., "data": ...}` for an external event, or a Recrubo
    /// WebhookPayload as delivered.
    #[arg(long)]
    pub event: Option<PathBuf>,
    /// A schedule tick of this rule (at `--at`).
    #[arg(long, value_name = "RULE")]
    pub tick: Option<String>,
    /// A manual run of this rule, with `--input`s.
    #[arg(long, value_name = "RULE")]
    pub manual: Option<String>,
    /// An input of `--manual`, `name=value` (the value is read as JSON when it parses).
    #[arg(long = "input", value_name = "NAME=VALUE", requires = "manual")]
    pub inputs: Vec<String>,
    /// A run or generation (`--run`) changing to this status.
    #[arg(long, value_name = "STATUS", requires = "run")]
    pub run_status: Option<String>,
    /// The FlowRun or FlowGeneration, a JSON:API resource `{id, type, attributes}`.
    #[arg(long, value_name = "FILE", requires = "run_status")]
    pub run: Option<PathBuf>,
    /// Who started it: `RULE/STEP` (the step's id), as flowd records it.
    #[arg(long, value_name = "RULE/STEP", requires = "run_status")]
    pub started_by: Option<String>,
    /// The rules folder (default: rules/).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// The time to simulate at (RFC 3339; default now).
    #[arg(long)]
    pub at: Option<String>,
}

/// What comes in, as the rules see it.
enum Incoming {
    External {
        event_type: String,
        event: Value,
    },
    Webhook(Box<WebhookPayload>),
    Tick(String),
    Manual(String, Map<String, Value>),
    Status {
        resource: Resource,
        started_by: Option<(String, String)>,
    },
}

/// Runs the simulation and prints it.
pub fn run(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let incoming = incoming(args)?;
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
    for name in [&args.tick, &args.manual].into_iter().flatten() {
        if set.get(name).is_none() {
            anyhow::bail!("there is no rule `{name}` in {}", display(&paths));
        }
    }
    let mut matched = 0;
    if let Incoming::Status {
        resource,
        started_by: Some((rule, step)),
    } = &incoming
    {
        matched += show_handler(set, resource, rule, step, now)?;
    }
    for rule in set.rules() {
        let Some((event, why)) = judge(&incoming, rule, now) else {
            continue;
        };
        if let Some(reason) = why {
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
        if let Some(crate::rules::ruleset::ForEach::List { resource, .. }) = &rule.for_each {
            // A sweep pages through Recrubo: nothing to show offline but what it would do.
            matched += 1;
            println!(
                "✓ {} — matches: it would page through `{resource}` and run its steps once per item (test it with `event.items`)",
                rule.name
            );
            continue;
        }
        let result = block_on(run_test(rule, &test, &set.secrets))?;
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
        print_steps(&result);
    }
    println!(
        "\n{matched} rule{} would run.",
        if matched == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

fn display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads what the arguments describe.
fn incoming(args: &SimulateArgs) -> anyhow::Result<Incoming> {
    if let Some(rule) = &args.tick {
        return Ok(Incoming::Tick(rule.clone()));
    }
    if let Some(rule) = &args.manual {
        let mut inputs = Map::new();
        for text in &args.inputs {
            let (name, value) = parse_input(text)?;
            inputs.insert(name, value);
        }
        return Ok(Incoming::Manual(rule.clone(), inputs));
    }
    if let (Some(status), Some(file)) = (&args.run_status, &args.run) {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let mut resource: Resource = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a JSON:API resource ({{\"id\", \"type\", \"attributes\"}})",
                file.display()
            )
        })?;
        if FollowedKind::of(&resource.resource_type).is_none() {
            anyhow::bail!(
                "{} is a `{}`; --run-status takes a `flowRuns` or `flowGenerations` resource",
                file.display(),
                resource.resource_type
            );
        }
        resource
            .attributes
            .insert("status".into(), Value::String(status.clone()));
        let started_by = match &args.started_by {
            Some(text) => {
                let (rule, step) = text
                    .split_once('/')
                    .with_context(|| format!("--started-by `{text}` is not RULE/STEP"))?;
                Some((rule.to_owned(), step.to_owned()))
            }
            None => None,
        };
        return Ok(Incoming::Status {
            resource,
            started_by,
        });
    }
    let file = args
        .event
        .as_ref()
        .context("give --event, --tick, --manual or --run-status")?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    Ok(
        match serde_json::from_value::<WebhookPayload>(value.clone()) {
            Ok(payload) => Incoming::Webhook(Box::new(payload)),
            Err(_) => Incoming::External {
                event_type: value["type"]
                    .as_str()
                    .context("the event has no `type` (and is not a Recrubo WebhookPayload)")?
                    .to_owned(),
                event: value,
            },
        },
    )
}

/// For one rule: the event its execution would see and why it would not run (`None`: it
/// would); `None` altogether for rules the input is not about (other rules of a tick).
fn judge(incoming: &Incoming, rule: &Rule, now: DateTime<Utc>) -> Option<(Value, Option<String>)> {
    Some(match incoming {
        Incoming::External { event_type, event } => (
            event.clone(),
            why_not(&rule.trigger, &Matched::External { event_type }, false),
        ),
        Incoming::Webhook(payload) => {
            let attributes = &payload.data.attributes;
            let resource = &attributes.resource;
            let fields = attributes.fields.clone().unwrap_or_default();
            let status = resource.str_attribute("status").unwrap_or_default();
            let as_seen = match (&rule.trigger, FollowedKind::of(&resource.resource_type)) {
                (Trigger::FlowRun(_), Some(FollowedKind::FlowRun)) => Matched::FlowRun {
                    status,
                    flow_id: resource.str_attribute("flowId"),
                    starter: None,
                },
                (Trigger::FlowGeneration(_), Some(FollowedKind::FlowGeneration)) => {
                    Matched::FlowGeneration {
                        status,
                        starter: None,
                    }
                }
                _ => Matched::Webhook {
                    resource: &resource.resource_type,
                    event: &attributes.event,
                    fields: &fields,
                },
            };
            // As the processor does: a delete is no status change.
            let why = match (&rule.trigger, attributes.event.as_str()) {
                (Trigger::FlowRun(_) | Trigger::FlowGeneration(_), "delete") => {
                    Some("a delete is not a status change".to_owned())
                }
                _ => why_not(&rule.trigger, &as_seen, false),
            };
            let event = match &rule.trigger {
                Trigger::Recrubo(_) => crate::engine::processor::webhook_event(payload),
                _ => resource.to_json(),
            };
            (event, why)
        }
        Incoming::Tick(name) => {
            if *name != rule.name {
                return None;
            }
            let at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            (
                json!({ "scheduled_at": at, "fired_at": at }),
                why_not(&rule.trigger, &Matched::Tick, false),
            )
        }
        Incoming::Manual(name, given) => {
            if *name != rule.name {
                return None;
            }
            let why = why_not(&rule.trigger, &Matched::Manual, false);
            let data = match &rule.trigger {
                Trigger::Manual(trigger) => match trigger.resolve(&rule.name, given.clone()) {
                    Ok(inputs) => inputs,
                    Err(reason) => return Some((Value::Null, Some(reason))),
                },
                _ => Value::Object(given.clone()),
            };
            (
                json!({ "type": "manual", "id": "simulate", "data": data }),
                why,
            )
        }
        Incoming::Status {
            resource,
            started_by,
        } => {
            let status = resource.str_attribute("status").unwrap_or_default();
            let starter = started_by.as_ref().map(|(rule, step)| Starter {
                rule,
                step: Some(step),
            });
            let as_seen =
                if FollowedKind::of(&resource.resource_type) == Some(FollowedKind::FlowRun) {
                    Matched::FlowRun {
                        status,
                        flow_id: resource.str_attribute("flowId"),
                        starter,
                    }
                } else {
                    Matched::FlowGeneration { status, starter }
                };
            (resource.to_json(), why_not(&rule.trigger, &as_seen, false))
        }
    })
}

/// The `on_status` handler of the step that started the run, run as the daemon would; 1 when
/// it runs.
fn show_handler(
    set: &RuleSet,
    resource: &Resource,
    rule_name: &str,
    step_key: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<usize> {
    let status = resource.str_attribute("status").unwrap_or_default();
    let label = format!("{rule_name}/{step_key} on_status.{status}");
    let Some(rule) = set.get(rule_name) else {
        println!("✗ {label} — there is no rule `{rule_name}`: the run would be orphaned");
        return Ok(0);
    };
    let Some(step) = rule.step_by_key(step_key) else {
        println!(
            "✗ {label} — rule `{rule_name}` has no step `{step_key}`: the run would be orphaned"
        );
        return Ok(0);
    };
    let Some(handler) = crate::engine::plan::handler_of(step, status) else {
        println!("✗ {label} — the step has no `{status}` handler");
        return Ok(0);
    };
    let key = FollowedKind::of(&resource.resource_type)
        .unwrap_or(FollowedKind::FlowRun)
        .context_key();
    // The starting execution's context is not known here: `event` is empty.
    let mut context = base_context(rule, Value::Null);
    context.insert(key.into(), flattened(resource));
    let result = block_on(run_handler(
        handler,
        Value::Object(context),
        now,
        &set.secrets,
    ))?;
    println!("✓ {label} — runs");
    println!(
        "    note: the context of the execution that started the run is not known offline: `event` and the outputs of earlier steps are empty here"
    );
    print_steps(&result);
    Ok(1)
}

/// Runs a dry run to its end; its effects are recorded, never awaited on anything outside.
fn block_on<T>(run: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(run))
}

fn print_steps(result: &DryRun) {
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
