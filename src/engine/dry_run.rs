//! Running a rule offline: the daemon's planning ([`super::plan`]: context, `for_each`,
//! conditions, rendering, `on_status` handlers) with every effect recorded instead of performed
//! ([`Recorded`]: a created run gets an id, an HTTP call answers 200) on a virtual clock.
//! `flowd test` runs a rule's `tests:` this way, `flowd simulate` shows what an input would do;
//! nothing touches the network or a store.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::effects::{Act, Effects, Performed, Recorded};
use super::plan::{self, Planned, StepStart, Verdict};
use crate::recrubo::types::flattened;
use crate::recrubo::{FlowGenerationStatus, FlowRunStatus, FollowedKind};
use crate::rules::ruleset::{Expectation, RuleTest};
use crate::rules::template::TemplateValue;
use crate::rules::{Rule, Step, StepKind, Trigger};

/// What a dry run did.
#[derive(Debug, Clone, Default)]
pub struct DryRun {
    /// The steps that ran, in order, each with the context it saw.
    pub steps: Vec<Performed>,
    /// The error that ended it, if one did.
    pub error: Option<String>,
    /// Failures of `continue_on_error` steps, after which it went on.
    pub continued: Vec<String>,
    /// Notes: skipped conditions and the like.
    pub notes: Vec<String>,
    /// Why the rule's trigger does not take the test's event (nothing ran), as the daemon
    /// decides it ([`super::matcher::why_not`]).
    pub mismatch: Option<String>,
    /// The context the execution started from (with `now` and the fake secrets): expected
    /// steps with no step that ran are rendered against it.
    pub base: Value,
}

/// The test's event as the triggers see it. Fields a test leaves out default to what the rule
/// listens to (a test of a `flow_run` rule need not repeat the status it reacts to); fields it
/// writes must match, as they would in the daemon. `started_by` is taken as given: the test
/// stands for a run that rule started.
fn incoming_of<'a>(
    trigger: &'a Trigger,
    event: &'a Value,
    fields: &'a [String],
) -> super::matcher::Incoming<'a> {
    use super::matcher::Incoming;
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    match trigger {
        Trigger::Event { event_type } => Incoming::External {
            event_type: text("type").unwrap_or(event_type),
        },
        Trigger::Recrubo(trigger) => Incoming::Webhook {
            resource: text("type").unwrap_or(&trigger.resource),
            event: text("event")
                .or(trigger.events.first().map(String::as_str))
                .unwrap_or("update"),
            fields,
        },
        Trigger::FlowRun(trigger) => Incoming::FlowRun {
            status: resource_text(event, "status")
                .or(trigger.statuses.first().map(|s| s.as_str()))
                .unwrap_or_default(),
            flow_id: resource_text(event, "flowId").or(trigger.flow.as_deref()),
            starter: None,
        },
        Trigger::FlowGeneration(trigger) => Incoming::FlowGeneration {
            status: resource_text(event, "status")
                .or(trigger.statuses.first().map(|s| s.as_str()))
                .unwrap_or_default(),
            starter: None,
        },
        Trigger::Schedule(_) | Trigger::Every(_) => Incoming::Tick,
        Trigger::Manual(_) => Incoming::Manual,
    }
}

/// An attribute of a test resource written flat (`{status: ...}`) or as JSON:API
/// (`{attributes: {status: ...}}`).
fn resource_text<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event
        .get(key)
        .or_else(|| event.get("attributes").and_then(|a| a.get(key)))
        .and_then(Value::as_str)
}

struct StartedRun {
    step_id: Option<String>,
    step: Step,
    /// The statuses whose handlers ran: each (run, status) fires once, as in the daemon.
    fired: Vec<String>,
    resource: Value,
    context: Value,
}

/// A dry run in progress: the plan's decisions, the recorded effects on a virtual clock.
struct Runner {
    effects: Recorded,
    secrets: Value,
    result: DryRun,
    started: Vec<StartedRun>,
}

/// The fake secrets of a dry run: `{{secrets.NAME}}` renders as `<secret NAME>`.
fn fake_secrets(names: &BTreeSet<String>) -> Value {
    Value::Object(
        names
            .iter()
            .map(|name| (name.clone(), Value::String(format!("<secret {name}>"))))
            .collect(),
    )
}

impl Runner {
    fn new(now: DateTime<Utc>, secret_names: &BTreeSet<String>) -> Runner {
        Runner {
            effects: Recorded::at(now),
            secrets: fake_secrets(secret_names),
            result: DryRun::default(),
            started: Vec::new(),
        }
    }

    fn evaluation(&self, stored: &Value) -> Value {
        plan::evaluation(stored, self.effects.now(), &self.secrets)
    }

    /// Runs steps in order against `context` as the executor does; returns false when an
    /// error ended the run.
    async fn run_steps(&mut self, steps: &[Step], context: &mut Value) -> bool {
        for step in steps {
            let evaluation = self.evaluation(context);
            let input = match plan::start_step(step, &evaluation) {
                StepStart::Act(input) => input,
                StepStart::Skip { reason, .. } => {
                    self.result
                        .notes
                        .push(format!("{} skipped: {reason}", step.kind.name()));
                    continue;
                }
                StepStart::Unrenderable(reason) => {
                    if self.failed(step, format!("{} step: {reason}", step.kind.name())) {
                        continue;
                    }
                    return false;
                }
            };
            let act = Act {
                step,
                input: &input,
                context: &evaluation,
                origin: "dry-run",
            };
            let output = match self.effects.perform(act).await {
                Ok(output) => output,
                Err(failure) => {
                    if self.failed(
                        step,
                        format!("{} step: {}", step.kind.name(), failure.message),
                    ) {
                        continue;
                    }
                    return false;
                }
            };
            plan::keep_output(context, step, output.clone());
            if matches!(
                step.kind,
                StepKind::StartFlowRun { .. } | StepKind::GenerateFlow { .. }
            ) {
                self.started.push(StartedRun {
                    step_id: step.id.clone(),
                    step: step.clone(),
                    fired: Vec::new(),
                    resource: output,
                    context: context.clone(),
                });
            }
        }
        true
    }

    /// A step failed: with `continue_on_error` the run goes on, as the daemon's does (its
    /// failure is a dead letter there, a note here, and an `error:` expectation still sees
    /// it); returns whether it goes on.
    fn failed(&mut self, step: &Step, message: String) -> bool {
        if step.continue_on_error {
            self.result
                .notes
                .push(format!("{message} (continue_on_error: the run goes on)"));
            self.result.continued.push(message);
            true
        } else {
            self.result.error = Some(message);
            false
        }
    }

    fn finish(mut self) -> DryRun {
        self.result.steps = self.effects.performed();
        self.result
    }
}

/// Runs `steps` of a rule (an `on_status` handler) against `context` offline, as the daemon
/// would run a handler execution: for `flowd simulate --run-status`.
pub async fn run_handler(
    steps: &[Step],
    context: Value,
    now: DateTime<Utc>,
    secret_names: &BTreeSet<String>,
) -> DryRun {
    let mut runner = Runner::new(now, secret_names);
    let mut context = context;
    runner.run_steps(steps, &mut context).await;
    runner.finish()
}

/// Runs one test of a rule, on a virtual clock standing at the test's `now` (or at the real
/// time it starts). `secret_names` are the rule set's: each renders as `<secret NAME>`.
pub async fn run_test(rule: &Rule, test: &RuleTest, secret_names: &BTreeSet<String>) -> DryRun {
    let mut runner = Runner::new(test.now.unwrap_or_else(Utc::now), secret_names);
    let now = runner
        .effects
        .now()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let written_fields: Vec<String> = match test.event.get("fields") {
        Some(Value::Array(fields)) => fields
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        // A test of an update that names no fields stands for one that changed what the rule
        // listens to; a create or a delete has no fields.
        _ => match &rule.trigger {
            Trigger::Recrubo(trigger)
                if test
                    .event
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or("update")
                    == "update" =>
            {
                trigger.fields.clone()
            }
            _ => Vec::new(),
        },
    };
    let incoming = incoming_of(&rule.trigger, &test.event, &written_fields);
    if let Some(why) = super::matcher::why_not(&rule.trigger, &incoming, true) {
        runner.result.mismatch = Some(why);
        return runner.finish();
    }
    let mut event = test.event.clone();
    let mut extra = Map::new();
    match &rule.trigger {
        Trigger::Event { event_type } => {
            if let Value::Object(map) = &mut event {
                map.entry("type").or_insert_with(|| json!(event_type));
                map.entry("id").or_insert_with(|| json!("test-event"));
                map.entry("data").or_insert(Value::Null);
            }
        }
        Trigger::FlowRun(_) => {
            extra.insert("run".into(), flatten_test_resource(&event));
        }
        Trigger::FlowGeneration(_) => {
            extra.insert("generation".into(), flatten_test_resource(&event));
        }
        Trigger::Schedule(_) | Trigger::Every(_) => {
            // As the scheduler gives them: the tick's time and when it fired, both now.
            if let Value::Object(map) = &mut event {
                map.entry("scheduled_at").or_insert_with(|| json!(now));
                map.entry("fired_at").or_insert_with(|| json!(now));
            }
        }
        // The inputs as the admin API would check and complete them (defaults filled in); a
        // refusal is the test's error.
        Trigger::Manual(trigger) => {
            let given = event
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            match trigger.resolve(&rule.name, given) {
                Ok(inputs) => {
                    if let Value::Object(map) = &mut event {
                        map.insert("data".into(), inputs);
                        map.entry("type").or_insert_with(|| json!("manual"));
                    }
                }
                Err(reason) => {
                    runner.result.error = Some(reason);
                    return runner.finish();
                }
            }
        }
        Trigger::Recrubo(_) => {}
    }
    let mut context = plan::base_context(rule, event.clone());
    context.extend(extra);
    runner.result.base = runner.evaluation(&Value::Object(context.clone()));
    let mut planned = plan::executions(rule, context, runner.effects.now(), &runner.secrets);
    if let [Planned::Sweep(context)] = planned.as_slice() {
        // The sweep's pages are the test's `event.items`: one execution per item, as the
        // executor plans them page by page.
        let Some(Value::Array(items)) = event.get("items") else {
            runner.result.error = Some(
                "a test of a `for_each: { list: ... }` rule gives the list's items as `event.items`"
                    .to_owned(),
            );
            return runner.finish();
        };
        let context = context.clone();
        planned = items
            .iter()
            .map(|item| {
                let mut with_item = context.clone();
                with_item.insert("item".into(), item.clone());
                plan::item_execution(rule, with_item, runner.effects.now(), &runner.secrets)
            })
            .collect();
    }
    for execution in planned {
        let context = match execution {
            Planned::Execution(context, Verdict::Go) => context,
            Planned::Execution(_, Verdict::False(reason) | Verdict::Failed(reason)) => {
                runner.result.notes.push(format!("rule skipped: {reason}"));
                continue;
            }
            Planned::Failed(_, reason) => {
                runner.result.error = Some(reason);
                return runner.finish();
            }
            Planned::Sweep(_) => continue,
        };
        let mut context = Value::Object(context);
        if !runner.run_steps(&rule.steps, &mut context).await {
            return runner.finish();
        }
    }
    for update in &test.run_updates {
        let index = match &update.step {
            Some(step) => runner
                .started
                .iter()
                .position(|s| s.step_id.as_deref() == Some(step.as_str())),
            None => (!runner.started.is_empty()).then_some(0),
        };
        let Some(index) = index else {
            runner.result.error = Some(format!(
                "run_updates: no run was started{}",
                update
                    .step
                    .as_ref()
                    .map(|s| format!(" by step `{s}`"))
                    .unwrap_or_default()
            ));
            return runner.finish();
        };
        let started = &mut runner.started[index];
        started.resource["status"] = json!(update.status);
        started.resource["updatedAt"] = json!(now);
        if let Some(Value::Object(patch)) = &update.state
            && let Some(state) = started.resource.get_mut("state")
        {
            if !state.is_object() {
                *state = json!({});
            }
            if let Some(state) = state.as_object_mut() {
                state.extend(patch.clone());
            }
        }
        let kind = started.resource["type"]
            .as_str()
            .and_then(FollowedKind::of)
            .unwrap_or(FollowedKind::FlowRun);
        let is_run = kind == FollowedKind::FlowRun;
        if kind.is_terminal(&update.status) && !is_run && started.resource["flowId"].is_null() {
            // A finished generation has produced a Flow.
            let flow = format!(
                "flow-of-{}",
                started.resource["id"].as_str().unwrap_or_default()
            );
            started.resource["flowId"] = json!(flow);
        }
        let valid = if is_run {
            !matches!(
                FlowRunStatus::parse(&update.status),
                FlowRunStatus::Other(_)
            )
        } else {
            !matches!(
                FlowGenerationStatus::parse(&update.status),
                FlowGenerationStatus::Other(_)
            )
        };
        if !valid {
            runner.result.error = Some(format!(
                "run_updates: `{}` is not a status of a {}",
                update.status,
                kind.context_key()
            ));
            return runner.finish();
        }
        if started.fired.contains(&update.status) {
            runner.result.notes.push(format!(
                "run_updates: `{}` again: each status of a run fires once, so nothing ran",
                update.status
            ));
            continue;
        }
        started.fired.push(update.status.clone());
        let Some(handler) = plan::handler_of(&started.step, &update.status) else {
            continue;
        };
        let handler = handler.to_vec();
        let mut context = started.context.clone();
        if let Some(map) = context.as_object_mut() {
            map.insert(kind.context_key().into(), started.resource.clone());
        }
        if !runner.run_steps(&handler, &mut context).await {
            return runner.finish();
        }
    }
    runner.finish()
}

fn flatten_test_resource(event: &Value) -> Value {
    match serde_json::from_value::<crate::recrubo::jsonapi::Resource>(event.clone()) {
        Ok(resource) => flattened(&resource),
        Err(_) => event.clone(),
    }
}

/// Whether `actual` contains `expected`: objects by subset, lists and scalars exactly.
pub fn partial_match(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => expected.iter().all(|(key, value)| {
            actual
                .get(key)
                .is_some_and(|found| partial_match(value, found))
        }),
        (expected, actual) => expected == actual,
    }
}

/// A test's expected steps, each rendered against the context of the step that ran in its place
/// (so an expectation may use `run`, `steps`, `item`, `now` and `secrets.NAME` as the step did).
fn expected_steps(test: &RuleTest, result: &DryRun) -> Result<Vec<(String, Value)>, String> {
    let Expectation::Steps(steps) = &test.expect else {
        return Ok(Vec::new());
    };
    steps
        .iter()
        .enumerate()
        .map(|(index, (kind, fields))| {
            let context = result
                .steps
                .get(index)
                .map_or(&result.base, |ran| &ran.context);
            // `log: text` is the short form of `log: { text }`, as in a rule.
            let fields = match (kind.as_str(), fields) {
                ("log", Value::String(text)) => json!({ "text": text }),
                _ => fields.clone(),
            };
            let rendered = TemplateValue::from_json(&fields)
                .map_err(|err| err.to_string())
                .and_then(|template| template.render(context).map_err(|err| err.to_string()));
            match rendered {
                Ok(rendered) => Ok((kind.clone(), rendered)),
                // No step ran in its place: shown as written, in the difference below.
                Err(_) if index >= result.steps.len() => Ok((kind.clone(), fields)),
                Err(err) => Err(format!("expected {kind} (step {}): {err}", index + 1)),
            }
        })
        .collect()
}

/// Checks a dry run against a test's expectation; `Err` explains the difference.
pub fn check(test: &RuleTest, result: &DryRun) -> Result<(), String> {
    if let Some(why) = &result.mismatch {
        return match &test.expect {
            Expectation::Steps(expected) if expected.is_empty() => Ok(()),
            _ => Err(format!(
                "the test's event does not start this rule ({why}), so no step ran"
            )),
        };
    }
    match &test.expect {
        Expectation::Error(substring) => match &result.error {
            Some(error) if error.contains(substring.as_str()) => Ok(()),
            _ if result
                .continued
                .iter()
                .any(|failure| failure.contains(substring.as_str())) =>
            {
                Ok(())
            }
            Some(error) => Err(format!(
                "expected an error containing `{substring}`, got: {error}"
            )),
            None => Err(format!(
                "expected an error containing `{substring}`, but the rule ran without one"
            )),
        },
        Expectation::Steps(_) => {
            if let Some(error) = &result.error {
                return Err(format!("the rule ended with an error: {error}"));
            }
            let expected_steps = expected_steps(test, result)?;
            let matches = expected_steps.len() == result.steps.len()
                && expected_steps
                    .iter()
                    .zip(&result.steps)
                    .all(|((kind, fields), ran)| {
                        *kind == ran.kind && partial_match(fields, &ran.fields)
                    });
            if matches {
                Ok(())
            } else {
                Err(describe_difference(&expected_steps, &result.steps))
            }
        }
    }
}

fn describe_difference(expected: &[(String, Value)], actual: &[Performed]) -> String {
    let mut out = String::new();
    let count = expected.len().max(actual.len());
    for index in 0..count {
        let expected_text = expected
            .get(index)
            .map(|(kind, fields)| format!("{kind}: {fields}"))
            .unwrap_or_else(|| "(nothing)".to_owned());
        let actual_text = actual
            .get(index)
            .map(|ran| format!("{}: {}", ran.kind, ran.fields))
            .unwrap_or_else(|| "(nothing)".to_owned());
        let same = match (expected.get(index), actual.get(index)) {
            (Some((kind, fields)), Some(ran)) => {
                *kind == ran.kind && partial_match(fields, &ran.fields)
            }
            _ => false,
        };
        let marker = if same { " " } else { "✗" };
        out.push_str(&format!(
            "  {marker} step {}\n      expected: {expected_text}\n      actual:   {actual_text}\n",
            index + 1
        ));
    }
    out
}
