//! Planning, without effects: what a rule makes of a matched event, and what one step does
//! before it acts. The daemon (processor and executor), `flowd test` and `flowd simulate` all
//! decide here — the context an execution starts from, `for_each` expansion, the rule's and a
//! step's condition, the `on_status` handler a status change runs, the rendered step and where
//! its output goes — so the three cannot drift apart. Matching an event to rules is
//! [`super::matcher`]; acting is an [`super::effects::Effects`] implementation.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::render::render_step;
use crate::rules::expr::{Condition, ConditionOutcome};
use crate::rules::ruleset::ForEach;
use crate::rules::{Rule, Step};

/// The context every execution of `rule` starts from.
pub fn base_context(rule: &Rule, event: Value) -> Map<String, Value> {
    let mut context = Map::new();
    context.insert("event".into(), event);
    context.insert("vars".into(), Value::Object((*rule.vars).clone()));
    context.insert("rule".into(), Value::String(rule.name.clone()));
    context.insert("steps".into(), json!({}));
    context
}

/// The context a condition or template sees: the stored context plus `now` and `secrets`
/// (never stored: secrets stay out of the database).
pub fn evaluation(stored: &Value, now: DateTime<Utc>, secrets: &Value) -> Value {
    let mut context = stored.as_object().cloned().unwrap_or_default();
    context.insert(
        "now".into(),
        Value::String(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    context.insert("secrets".into(), secrets.clone());
    Value::Object(context)
}

/// Whether a condition lets an execution or a step go on.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It does (or there is none).
    Go,
    /// It is false: the reason, as the history shows it.
    False(String),
    /// It failed to evaluate, which counts as false: the reason.
    Failed(String),
}

/// Judges an optional condition against an evaluation context.
pub fn verdict(condition: Option<&Condition>, evaluation: &Value) -> Verdict {
    let Some(condition) = condition else {
        return Verdict::Go;
    };
    match condition.evaluate(evaluation) {
        ConditionOutcome::Value(true) => Verdict::Go,
        ConditionOutcome::Value(false) => {
            Verdict::False(format!("condition `{}` is false", condition.source()))
        }
        ConditionOutcome::Failed(reason) => Verdict::Failed(format!(
            "condition `{}` failed to evaluate: {reason}",
            condition.source()
        )),
    }
}

/// One execution a matched event makes of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// Its context and the rule condition's verdict on it.
    Execution(Map<String, Value>, Verdict),
    /// A `for_each: { list }` rule: one execution that pages through the list and plans one
    /// execution per item with [`item_execution`].
    Sweep(Map<String, Value>),
    /// The rule cannot run for this event (its `for_each` items are not a list): why.
    Failed(Map<String, Value>, String),
}

/// What a matched event makes of `rule`: one execution, or one per `for_each` item, each with
/// the rule condition's verdict.
pub fn executions(
    rule: &Rule,
    context: Map<String, Value>,
    now: DateTime<Utc>,
    secrets: &Value,
) -> Vec<Planned> {
    match &rule.for_each {
        None => vec![item_execution(rule, context, now, secrets)],
        Some(ForEach::List { .. }) => vec![Planned::Sweep(context)],
        Some(ForEach::Items(items)) => {
            let evaluation = evaluation(&Value::Object(context.clone()), now, secrets);
            match items.render(&evaluation) {
                Ok(Value::Array(items)) => items
                    .into_iter()
                    .map(|item| {
                        let mut with_item = context.clone();
                        with_item.insert("item".into(), item);
                        item_execution(rule, with_item, now, secrets)
                    })
                    .collect(),
                Ok(other) => vec![Planned::Failed(
                    context,
                    format!("for_each items is {other}, not a list"),
                )],
                Err(err) => vec![Planned::Failed(context, format!("for_each items: {err}"))],
            }
        }
    }
}

/// One execution of `rule` for a context (an item of a sweep, or the event's own).
pub fn item_execution(
    rule: &Rule,
    context: Map<String, Value>,
    now: DateTime<Utc>,
    secrets: &Value,
) -> Planned {
    let verdict = verdict(
        rule.condition.as_ref(),
        &evaluation(&Value::Object(context.clone()), now, secrets),
    );
    Planned::Execution(context, verdict)
}

/// The steps an execution runs — the rule's, or the `on_status.<status>` handler of the step
/// `handler` (its key) — and the position path their history names them by.
pub fn steps_to_run<'a>(
    rule: &'a Rule,
    handler: Option<(&str, &str)>,
) -> Result<(&'a [Step], String), String> {
    let Some((key, status)) = handler else {
        return Ok((&rule.steps, String::new()));
    };
    if key.is_empty() && status == CANCEL_HANDLER {
        return Ok((&rule.flow.on_cancel, "on_cancel/".to_owned()));
    }
    let step = rule
        .step_by_key(key)
        .ok_or_else(|| format!("step `{key}` is no longer in rule `{}`", rule.name))?;
    let (_, steps) = step
        .on_status
        .iter()
        .find(|(s, _)| s == status)
        .ok_or_else(|| format!("step `{key}` has no `{status}` handler any more"))?;
    let path = rule.path_of(key).unwrap_or_default();
    Ok((steps, format!("{path}/{status}/")))
}

/// The handler status of an execution that runs a rule's `on_cancel` steps (its handler step
/// is empty: it belongs to the rule, not to a step).
pub const CANCEL_HANDLER: &str = "cancel";

/// The flow-control group key of an execution (DESIGN 2.5): its `key` rendered (a key too long
/// for an index is stored as its hash, as dedup keys are), or `""` for a rule without `key`
/// (the rule is one group). A key that does not render, or renders empty, is an error naming
/// the template: every execution without a candidate id would otherwise share one group.
pub fn flow_key(rule: &Rule, evaluation: &Value) -> Result<String, String> {
    let Some(template) = &rule.flow.key else {
        return Ok(String::new());
    };
    key_text(template, evaluation, "key")
}

fn key_text(
    template: &crate::rules::template::Template,
    evaluation: &Value,
    what: &str,
) -> Result<String, String> {
    let value = template
        .render(evaluation)
        .map_err(|err| format!("{what} `{}` does not render: {err}", template.source()))?;
    let text = match value {
        Value::String(text) => text,
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => {
            return Err(format!(
                "{what} `{}` rendered {other}, not a text or a number",
                template.source()
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(format!(
            "{what} `{}` rendered empty; executions without a key would all share one group",
            template.source()
        ));
    }
    Ok(crate::store::stored_key(&text).into_owned())
}

/// An execution's rendered `idempotency_key` (stored as its hash when too long for an index).
pub fn idempotency_key(
    template: &crate::rules::template::Template,
    evaluation: &Value,
) -> Result<String, String> {
    key_text(template, evaluation, "idempotency_key")
}

/// The group a `cancel_on` entry cancels for an event (`evaluation` has `event`), or `None`
/// when its condition is not true.
pub fn cancel_key(
    cancel_on: &crate::rules::ruleset::CancelOn,
    evaluation: &Value,
) -> Result<Option<String>, String> {
    match verdict(cancel_on.condition.as_ref(), evaluation) {
        Verdict::Go => key_text(&cancel_on.key, evaluation, "cancel_on key").map(Some),
        Verdict::False(_) => Ok(None),
        Verdict::Failed(reason) => Err(reason),
    }
}

/// When the quiet hours that hold an execution due at `now` end, if `now` is inside them, and
/// a warning when the zone the rule renders is not one (the fallback zone is used then).
pub fn quiet_until(
    quiet: &crate::rules::ruleset::QuietHours,
    evaluation: &Value,
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<String>) {
    use crate::rules::ruleset::Zone;
    let (zone, warning) = match &quiet.timezone {
        Zone::Fixed(zone) => (*zone, None),
        Zone::Template(template) => match template.render(evaluation) {
            Ok(Value::String(name)) => match name.trim().parse::<chrono_tz::Tz>() {
                Ok(zone) => (zone, None),
                Err(_) => (
                    quiet.fallback,
                    Some(format!(
                        "quiet_hours.timezone `{}` rendered {name:?}, not an IANA time zone; {} is used",
                        template.source(),
                        quiet.fallback
                    )),
                ),
            },
            Ok(other) => (
                quiet.fallback,
                Some(format!(
                    "quiet_hours.timezone `{}` rendered {other}, not a time zone name; {} is used",
                    template.source(),
                    quiet.fallback
                )),
            ),
            Err(err) => (
                quiet.fallback,
                Some(format!(
                    "quiet_hours.timezone `{}` does not render ({err}); {} is used",
                    template.source(),
                    quiet.fallback
                )),
            ),
        },
    };
    (quiet_end(quiet.from, quiet.to, zone, now), warning)
}

/// The end of the daily window `[from, to)` in `zone` that `now` is inside, if it is. A window
/// with `to <= from` spans midnight. An end that falls in a DST gap moves to the first local
/// time after it; one that falls in a repeated hour is its first occurrence (as cron does).
pub fn quiet_end(
    from: chrono::NaiveTime,
    to: chrono::NaiveTime,
    zone: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    use chrono::TimeZone as _;
    let local = now.with_timezone(&zone);
    let time = local.time();
    let date = local.date_naive();
    let end_date = if from < to {
        (from <= time && time < to).then_some(date)?
    } else if time >= from {
        date.succ_opt()?
    } else if time < to {
        date
    } else {
        return None;
    };
    let mut end = end_date.and_time(to);
    // At most a few hours of gap anywhere: step a minute at a time past it.
    for _ in 0..=24 * 60 {
        match zone.from_local_datetime(&end) {
            chrono::LocalResult::Single(at) => return Some(at.with_timezone(&Utc)),
            // The first occurrence, unless it has passed already (now is in the second).
            chrono::LocalResult::Ambiguous(first, second) => {
                let first = first.with_timezone(&Utc);
                return Some(if first > now {
                    first
                } else {
                    second.with_timezone(&Utc)
                });
            }
            chrono::LocalResult::None => end += chrono::TimeDelta::minutes(1),
        }
    }
    None
}

/// Whether the first step an execution runs creates a resource: its claim then leaves the
/// step's in-doubt marker in the same write (see [`crate::store::NewExecution`]).
pub fn first_step_creates(rule: &Rule, handler: Option<(&str, &str)>) -> bool {
    steps_to_run(rule, handler)
        .ok()
        .and_then(|(steps, _)| steps.first())
        .is_some_and(|step| step.kind.creates())
}

/// The `on_status` handler of `step` for `status`, if it has one.
pub fn handler_of<'a>(step: &'a Step, status: &str) -> Option<&'a [Step]> {
    step.on_status
        .iter()
        .find(|(s, _)| s == status)
        .map(|(_, steps)| steps.as_slice())
}

/// What a step does before it acts.
#[derive(Debug, Clone, PartialEq)]
pub enum StepStart {
    /// Its condition stops it: why, and whether the condition failed to evaluate (which
    /// counts as false, and is logged).
    Skip {
        /// As the history shows it.
        reason: String,
        /// The condition failed to evaluate.
        failed: bool,
    },
    /// Its templates do not render: why (a fatal failure of the step).
    Unrenderable(String),
    /// Act with this rendered input.
    Act(Value),
}

/// Judges a step's condition and renders its input against an evaluation context.
pub fn start_step(step: &Step, evaluation: &Value) -> StepStart {
    match verdict(step.condition.as_ref(), evaluation) {
        Verdict::Go => match render_step(&step.kind, evaluation) {
            Ok(input) => StepStart::Act(input),
            Err(err) => StepStart::Unrenderable(format!("rendering the step failed: {err}")),
        },
        Verdict::False(reason) => StepStart::Skip {
            reason,
            failed: false,
        },
        Verdict::Failed(reason) => StepStart::Skip {
            reason,
            failed: true,
        },
    }
}

/// Keeps a step's output where later steps read it (`steps.<id>`), if the step has an id.
pub fn keep_output(context: &mut Value, step: &Step, output: Value) {
    if let Some(id) = &step.id
        && let Some(steps) = context.get_mut("steps").and_then(Value::as_object_mut)
    {
        steps.insert(id.clone(), output);
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveTime, TimeZone, Utc};

    use super::quiet_end;

    fn at(text: &str) -> chrono::DateTime<Utc> {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn quiet_hours_end_in_local_time_across_midnight_and_dst() {
        let (from, to) = (
            NaiveTime::from_hms_opt(21, 0, 0).expect("from"),
            NaiveTime::from_hms_opt(8, 0, 0).expect("to"),
        );
        let amsterdam = chrono_tz::Europe::Amsterdam;
        // Winter (UTC+1): 22:30 local is quiet until 08:00 local, 07:00 UTC.
        assert_eq!(
            quiet_end(from, to, amsterdam, at("2026-01-15T21:30:00Z")),
            Some(at("2026-01-16T07:00:00Z"))
        );
        // Daytime is not quiet; 21:00 sharp is, 08:00 sharp is not.
        assert_eq!(
            quiet_end(from, to, amsterdam, at("2026-01-15T12:00:00Z")),
            None
        );
        assert!(quiet_end(from, to, amsterdam, at("2026-01-15T20:00:00Z")).is_some());
        assert_eq!(
            quiet_end(from, to, amsterdam, at("2026-01-16T07:00:00Z")),
            None
        );
        // The night clocks go forward (29 March 2026, 02:00 → 03:00): 23:00 CET is quiet until
        // 08:00 CEST, 06:00 UTC — nine hours, not ten.
        assert_eq!(
            quiet_end(from, to, amsterdam, at("2026-03-28T22:00:00Z")),
            Some(at("2026-03-29T06:00:00Z"))
        );
        // The night they go back (25 October 2026): 23:00 CEST until 08:00 CET, 07:00 UTC.
        assert_eq!(
            quiet_end(from, to, amsterdam, at("2026-10-24T21:00:00Z")),
            Some(at("2026-10-25T07:00:00Z"))
        );
        // A window ending inside the gap ends at the first local time after it.
        let gap_end = NaiveTime::from_hms_opt(2, 30, 0).expect("to");
        assert_eq!(
            quiet_end(from, gap_end, amsterdam, at("2026-03-28T22:00:00Z")),
            Some(
                amsterdam
                    .with_ymd_and_hms(2026, 3, 29, 3, 0, 0)
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
        // A window ending in the hour that repeats (25 October 2026, 02:00–03:00 twice): in
        // the second pass it ends at the second 02:30, not the first (which has passed).
        let (one, half_past_two) = (
            NaiveTime::from_hms_opt(1, 0, 0).expect("from"),
            NaiveTime::from_hms_opt(2, 30, 0).expect("to"),
        );
        assert_eq!(
            quiet_end(one, half_past_two, amsterdam, at("2026-10-25T00:15:00Z")),
            Some(at("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            quiet_end(one, half_past_two, amsterdam, at("2026-10-25T01:15:00Z")),
            Some(at("2026-10-25T01:30:00Z"))
        );
        // A zone from far away: 10:00 UTC is 19:00 in Tokyo, not quiet; 13:00 UTC is 22:00.
        let tokyo = chrono_tz::Asia::Tokyo;
        assert_eq!(quiet_end(from, to, tokyo, at("2026-06-01T10:00:00Z")), None);
        assert_eq!(
            quiet_end(from, to, tokyo, at("2026-06-01T13:00:00Z")),
            Some(at("2026-06-01T23:00:00Z"))
        );
    }
}
