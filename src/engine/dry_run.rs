//! Running a rule offline: the same conditions, templates and step rendering as the engine, with
//! every effect replaced by a plausible answer (a created run gets an id, an HTTP call answers
//! 200). `flowd test` runs a rule's `tests:` this way; nothing touches the network or a store.

use serde_json::{Map, Value, json};

use super::processor::base_context;
use super::render::render_step;
use crate::recrubo::types::flattened;
use crate::recrubo::{FlowGenerationStatus, FlowRunStatus, FollowedKind};
use crate::rules::expr::ConditionOutcome;
use crate::rules::ruleset::{Expectation, ForEach, RuleTest};
use crate::rules::{Rule, Step, StepKind, Trigger};

/// A step that ran: its kind and its rendered fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RanStep {
    /// The step kind (`notify`).
    pub kind: String,
    /// The rendered fields.
    pub fields: Value,
}

/// What a dry run did.
#[derive(Debug, Clone, Default)]
pub struct DryRun {
    /// The steps that ran, in order.
    pub steps: Vec<RanStep>,
    /// The error that ended it, if one did.
    pub error: Option<String>,
    /// Notes: skipped conditions and the like.
    pub notes: Vec<String>,
    /// Why the rule's trigger does not take the test's event (nothing ran), as the daemon
    /// decides it ([`super::matcher::why_not`]).
    pub mismatch: Option<String>,
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
    resource: Value,
    context: Value,
}

struct Runner<'a> {
    rule: &'a Rule,
    now: String,
    result: DryRun,
    started: Vec<StartedRun>,
    counter: usize,
}

/// The fake secrets of a dry run: `{{secrets.NAME}}` renders as `<secret NAME>`.
fn fake_secrets(rule: &Rule) -> Value {
    let mut names = Vec::new();
    collect_secret_names(&rule.steps, &mut names);
    Value::Object(
        names
            .into_iter()
            .map(|name| (name.clone(), Value::String(format!("<secret {name}>"))))
            .collect(),
    )
}

fn collect_secret_names(steps: &[Step], names: &mut Vec<String>) {
    for step in steps {
        let text = format!("{:?}", step.kind);
        let mut rest = text.as_str();
        while let Some(index) = rest.find("secrets.") {
            rest = &rest[index + 8..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        for (_, handler) in &step.on_status {
            collect_secret_names(handler, names);
        }
    }
}

impl Runner<'_> {
    fn evaluation(&self, stored: &Value) -> Value {
        let mut context = stored.as_object().cloned().unwrap_or_default();
        context.insert("now".into(), Value::String(self.now.clone()));
        context.insert("secrets".into(), fake_secrets(self.rule));
        Value::Object(context)
    }

    fn fake_output(&mut self, step: &Step, fields: &Value) -> Value {
        self.counter += 1;
        let n = self.counter;
        match &step.kind {
            StepKind::StartFlowRun { .. } => json!({
                "id": format!("run-{n}"), "type": FollowedKind::FlowRun.json_api_type(), "status": "queued", "cost": 0,
                "flowId": fields["flow"], "messageThreadId": fields["message_thread"],
                "state": if fields["state"].is_null() { json!({}) } else { fields["state"].clone() },
                "createdAt": self.now, "updatedAt": self.now,
            }),
            StepKind::GenerateFlow { .. } => json!({
                "id": format!("generation-{n}"), "type": FollowedKind::FlowGeneration.json_api_type(), "status": "queued",
                "flowId": Value::Null, "flowType": fields["flow_type"], "parameters": fields["parameters"],
            }),
            StepKind::AnalyzeVacancy { .. } => json!({
                "id": format!("analysis-{n}"), "type": "vacancyAnalyses",
                "inputText": fields["text"],
                "analyzeResult": crate::recrubo::sample::analyze(fields["text"].as_str().unwrap_or_default()),
            }),
            StepKind::UpdateFlowRun { .. } => {
                json!({ "id": fields["id"], "type": FollowedKind::FlowRun.json_api_type(), "state": fields["state"], "status": fields["status"] })
            }
            StepKind::Recrubo { .. } => json!({ "status": 200, "body": { "data": null } }),
            StepKind::Notify { .. } | StepKind::Http { .. } => {
                json!({ "status": 200, "headers": {}, "body": null })
            }
            StepKind::Email { .. } => json!({ "message_id": format!("<dry-run-{n}@flowd>") }),
            StepKind::Emit { .. } => json!({ "event_id": format!("dry-run-{n}") }),
            StepKind::Log { .. } => Value::Null,
        }
    }

    /// Runs steps in order against `context`; returns false when an error ended the run.
    fn run_steps(&mut self, steps: &[Step], context: &mut Value) -> bool {
        for step in steps {
            let evaluation = self.evaluation(context);
            if let Some(condition) = &step.condition {
                match condition.evaluate(&evaluation) {
                    ConditionOutcome::Value(true) => {}
                    ConditionOutcome::Value(false) => {
                        self.result.notes.push(format!(
                            "{} skipped: `{}` is false",
                            step.kind.name(),
                            condition.source()
                        ));
                        continue;
                    }
                    ConditionOutcome::Failed(reason) => {
                        self.result.notes.push(format!(
                            "{} skipped: `{}` failed: {reason}",
                            step.kind.name(),
                            condition.source()
                        ));
                        continue;
                    }
                }
            }
            let fields = match render_step(&step.kind, &evaluation) {
                Ok(fields) => fields,
                Err(err) => {
                    self.result.error = Some(format!("{} step: {err}", step.kind.name()));
                    if step.continue_on_error {
                        continue;
                    }
                    return false;
                }
            };
            self.result.steps.push(RanStep {
                kind: step.kind.name().to_owned(),
                fields: fields.clone(),
            });
            let output = self.fake_output(step, &fields);
            if let Some(id) = &step.id
                && let Some(steps) = context.get_mut("steps").and_then(Value::as_object_mut)
            {
                steps.insert(id.clone(), output.clone());
            }
            if matches!(
                step.kind,
                StepKind::StartFlowRun { .. } | StepKind::GenerateFlow { .. }
            ) {
                self.started.push(StartedRun {
                    step_id: step.id.clone(),
                    step: step.clone(),
                    resource: output,
                    context: context.clone(),
                });
            }
        }
        true
    }
}

/// Runs `steps` of `rule` (an `on_status` handler) against `context` offline, as the daemon
/// would run a handler execution: for `flowd simulate --run-status`.
pub fn run_handler(
    rule: &Rule,
    steps: &[Step],
    context: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> DryRun {
    let mut runner = Runner {
        rule,
        now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        result: DryRun::default(),
        started: Vec::new(),
        counter: 0,
    };
    let mut context = context;
    runner.run_steps(steps, &mut context);
    runner.result
}

/// Runs one test of a rule.
pub fn run_test(rule: &Rule, test: &RuleTest) -> DryRun {
    let now = test
        .now
        .unwrap_or_else(chrono::Utc::now)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut runner = Runner {
        rule,
        now: now.clone(),
        result: DryRun::default(),
        started: Vec::new(),
        counter: 0,
    };
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
        return runner.result;
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
            if let Value::Object(map) = &mut event {
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
                    return runner.result;
                }
            }
        }
        Trigger::Recrubo(_) => {}
    }
    let mut context = base_context(rule, event.clone());
    context.extend(extra);
    let items: Vec<Option<Value>> = match &rule.for_each {
        None => vec![None],
        Some(ForEach::Items(items)) => {
            match items.render(&runner.evaluation(&Value::Object(context.clone()))) {
                Ok(Value::Array(items)) => items.into_iter().map(Some).collect(),
                Ok(other) => {
                    runner.result.error = Some(format!("for_each items is {other}, not a list"));
                    return runner.result;
                }
                Err(err) => {
                    runner.result.error = Some(format!("for_each items: {err}"));
                    return runner.result;
                }
            }
        }
        Some(ForEach::List { .. }) => match event.get("items") {
            Some(Value::Array(items)) => items.iter().cloned().map(Some).collect(),
            _ => {
                runner.result.error = Some("a test of a `for_each: { list: ... }` rule gives the list's items as `event.items`".to_owned());
                return runner.result;
            }
        },
    };
    for item in items {
        let mut context = Value::Object(context.clone());
        if let (Some(item), Some(map)) = (item, context.as_object_mut()) {
            map.insert("item".into(), item);
        }
        if let Some(condition) = &rule.condition {
            match condition.evaluate(&runner.evaluation(&context)) {
                ConditionOutcome::Value(true) => {}
                ConditionOutcome::Value(false) => {
                    runner
                        .result
                        .notes
                        .push(format!("rule skipped: `{}` is false", condition.source()));
                    continue;
                }
                ConditionOutcome::Failed(reason) => {
                    runner.result.notes.push(format!(
                        "rule skipped: `{}` failed: {reason}",
                        condition.source()
                    ));
                    continue;
                }
            }
        }
        if !runner.run_steps(&rule.steps, &mut context) {
            return runner.result;
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
            return runner.result;
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
        let is_run = started.resource["type"]
            .as_str()
            .and_then(crate::recrubo::FollowedKind::of)
            == Some(crate::recrubo::FollowedKind::FlowRun);
        if !is_run && update.status == "finished" && started.resource["flowId"].is_null() {
            // A finished generation has produced a Flow.
            let flow = format!(
                "flow-of-{}",
                started.resource["id"].as_str().unwrap_or_default()
            );
            started.resource["flowId"] = json!(flow);
        }
        let key = if is_run { "run" } else { "generation" };
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
                "run_updates: `{}` is not a status of a {key}",
                update.status
            ));
            return runner.result;
        }
        let Some((_, handler)) = started
            .step
            .on_status
            .iter()
            .find(|(status, _)| *status == update.status)
        else {
            continue;
        };
        let handler = handler.clone();
        let mut context = started.context.clone();
        if let Some(map) = context.as_object_mut() {
            map.insert(key.into(), started.resource.clone());
        }
        if !runner.run_steps(&handler, &mut context) {
            return runner.result;
        }
    }
    runner.result
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

/// Checks a dry run against a test's expectation; `Err` explains the difference.
pub fn check(
    test: &RuleTest,
    result: &DryRun,
    expected_steps: &[(String, Value)],
) -> Result<(), String> {
    if let Some(why) = &result.mismatch {
        return match &test.expect {
            Expectation::Steps(_) if expected_steps.is_empty() => Ok(()),
            _ => Err(format!(
                "the test's event does not start this rule ({why}), so no step ran"
            )),
        };
    }
    match &test.expect {
        Expectation::Error(substring) => match &result.error {
            Some(error) if error.contains(substring.as_str()) => Ok(()),
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
                Err(describe_difference(expected_steps, &result.steps))
            }
        }
    }
}

fn describe_difference(expected: &[(String, Value)], actual: &[RanStep]) -> String {
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
