//! Matching events to rules, through an index built once per rule set: by event type, by
//! Recrubo resource, by run status. The cost of matching an event does not grow with the number
//! of rules that cannot match it. Pure: no I/O.
//!
//! Whether one trigger takes one event is decided in one place, [`why_not`]: the index narrows
//! the candidates, then asks it; `flowd test` and `flowd simulate` ask it too, so they can never
//! drift from the daemon.

use std::collections::HashMap;
use std::sync::Arc;

use crate::rules::ruleset::StartedBy;
use crate::rules::{Rule, RuleSet, Trigger};

/// The index of one rule set.
#[derive(Debug, Default)]
pub struct MatchIndex {
    /// The hash of the set it indexes.
    pub hash: String,
    by_event_type: HashMap<String, Vec<usize>>,
    by_resource: HashMap<String, Vec<usize>>,
    flow_run_by_status: HashMap<String, Vec<usize>>,
    generation_by_status: HashMap<String, Vec<usize>>,
    /// `cancel_on` entries by event type: (rule, entry).
    cancels_by_event_type: HashMap<String, Vec<(usize, usize)>>,
}

/// Who started a run, when flowd did.
#[derive(Debug, Clone, Copy)]
pub struct Starter<'a> {
    /// The rule.
    pub rule: &'a str,
    /// The step id.
    pub step: Option<&'a str>,
}

/// An event as the triggers see it.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    /// An external or emitted event of a type.
    External {
        /// Its type.
        event_type: &'a str,
    },
    /// A Recrubo webhook about a resource.
    Webhook {
        /// The JSON:API type of the resource (`flowRuns`, `candidates`).
        resource: &'a str,
        /// `create`, `update` or `delete`.
        event: &'a str,
        /// The changed fields, for updates.
        fields: &'a [String],
    },
    /// A FlowRun's status (from a webhook or a poll).
    FlowRun {
        /// Its status.
        status: &'a str,
        /// Its `flowId`.
        flow_id: Option<&'a str>,
        /// Who started it, when flowd did; `None` with `assume_started_by` for tests.
        starter: Option<Starter<'a>>,
    },
    /// A FlowGeneration's status.
    FlowGeneration {
        /// Its status.
        status: &'a str,
        /// Who started it, when flowd did.
        starter: Option<Starter<'a>>,
    },
    /// A schedule tick of the rule.
    Tick,
    /// A manual trigger of the rule.
    Manual,
}

/// Why `trigger` does not take `incoming`, or `None` when it does. `started_by` is checked
/// against the starter unless `trust_started_by` (a test stands for a run its rule started).
pub fn why_not(trigger: &Trigger, incoming: &Incoming, trust_started_by: bool) -> Option<String> {
    let started = |filter: &Option<StartedBy>, starter: Option<Starter>| {
        if trust_started_by || started_by_matches(filter, starter) {
            None
        } else {
            Some(match filter {
                Some(filter) => format!(
                    "it reacts only to runs started by `{}{}`",
                    filter.rule,
                    filter
                        .step
                        .as_deref()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            })
        }
    };
    match (trigger, incoming) {
        (Trigger::Event { event_type: wanted }, Incoming::External { event_type }) => {
            (wanted != event_type).then(|| format!("it listens to `{wanted}`, not `{event_type}`"))
        }
        (
            Trigger::Recrubo(trigger),
            Incoming::Webhook {
                resource,
                event,
                fields,
            },
        ) => {
            if trigger.resource != *resource {
                Some(format!(
                    "it listens to `{}`, not `{resource}`",
                    trigger.resource
                ))
            } else if !trigger.events.is_empty() && !trigger.events.iter().any(|e| e == event) {
                Some(format!(
                    "it listens to {}, not `{event}`",
                    trigger.events.join("/")
                ))
            } else if *event == "update"
                && !trigger.fields.is_empty()
                && !trigger.fields.iter().any(|f| fields.contains(f))
            {
                // `fields` only means something for updates (recrubo-api.md 9): a create or a
                // delete has no changed fields and is taken whatever `fields` says.
                Some(format!(
                    "none of its fields ({}) changed",
                    trigger.fields.join(", ")
                ))
            } else {
                None
            }
        }
        (
            Trigger::FlowRun(trigger),
            Incoming::FlowRun {
                status,
                flow_id,
                starter,
            },
        ) => {
            if !trigger.statuses.iter().any(|s| s.as_str() == *status) {
                Some(format!("the status `{status}` is not one it reacts to"))
            } else if let Some(flow) = trigger.flow.as_deref()
                && Some(flow) != *flow_id
            {
                Some(format!(
                    "it reacts to runs of flow `{flow}`, not `{}`",
                    flow_id.unwrap_or("(none)")
                ))
            } else {
                started(&trigger.started_by, *starter)
            }
        }
        (Trigger::FlowGeneration(trigger), Incoming::FlowGeneration { status, starter }) => {
            if !trigger.statuses.iter().any(|s| s.as_str() == *status) {
                Some(format!("the status `{status}` is not one it reacts to"))
            } else {
                started(&trigger.started_by, *starter)
            }
        }
        (Trigger::Schedule(_) | Trigger::Every(_), Incoming::Tick) => None,
        // Only `manual` rules run by hand (DESIGN 4.3; the admin API answers 409 otherwise).
        (Trigger::Manual(_), Incoming::Manual) => None,
        (trigger, incoming) => Some(format!(
            "its trigger is `{}`, and this is {}",
            trigger.kind(),
            match incoming {
                Incoming::External { .. } => "an event",
                Incoming::Webhook { .. } => "a Recrubo webhook",
                Incoming::FlowRun { .. } => "a FlowRun status",
                Incoming::FlowGeneration { .. } => "a FlowGeneration status",
                Incoming::Tick => "a schedule tick",
                Incoming::Manual => "a manual trigger",
            }
        )),
    }
}

fn started_by_matches(filter: &Option<StartedBy>, starter: Option<Starter>) -> bool {
    match (filter, starter) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(filter), Some(starter)) => {
            filter.rule == starter.rule
                && filter
                    .step
                    .as_deref()
                    .is_none_or(|step| Some(step) == starter.step)
        }
    }
}

impl MatchIndex {
    /// Indexes a rule set.
    pub fn new(set: &RuleSet) -> MatchIndex {
        let mut index = MatchIndex {
            hash: set.hash.clone(),
            ..MatchIndex::default()
        };
        for (position, rule) in set.rules().iter().enumerate() {
            for (entry, cancel) in rule.flow.cancel_on.iter().enumerate() {
                index
                    .cancels_by_event_type
                    .entry(cancel.event.clone())
                    .or_default()
                    .push((position, entry));
            }
            match &rule.trigger {
                Trigger::Event { event_type } => index
                    .by_event_type
                    .entry(event_type.clone())
                    .or_default()
                    .push(position),
                Trigger::Recrubo(trigger) => index
                    .by_resource
                    .entry(trigger.resource.clone())
                    .or_default()
                    .push(position),
                Trigger::FlowRun(trigger) => {
                    for status in &trigger.statuses {
                        index
                            .flow_run_by_status
                            .entry(status.as_str().to_owned())
                            .or_default()
                            .push(position);
                    }
                }
                Trigger::FlowGeneration(trigger) => {
                    for status in &trigger.statuses {
                        index
                            .generation_by_status
                            .entry(status.as_str().to_owned())
                            .or_default()
                            .push(position);
                    }
                }
                Trigger::Schedule(_) | Trigger::Every(_) | Trigger::Manual(_) => {}
            }
        }
        index
    }

    fn rules<'a>(
        set: &'a RuleSet,
        positions: Option<&Vec<usize>>,
    ) -> impl Iterator<Item = &'a Arc<Rule>> {
        positions
            .into_iter()
            .flatten()
            .filter_map(move |position| set.rules().get(*position))
    }

    /// The `cancel_on` entries an event of this type matches: (rule, entry index).
    pub fn cancels<'a>(&self, set: &'a RuleSet, event_type: &str) -> Vec<(&'a Arc<Rule>, usize)> {
        self.cancels_by_event_type
            .get(event_type)
            .into_iter()
            .flatten()
            .filter_map(|(rule, entry)| set.rules().get(*rule).map(|rule| (rule, *entry)))
            .collect()
    }

    /// Rules with `event: TYPE`.
    pub fn external<'a>(&self, set: &'a RuleSet, event_type: &str) -> Vec<&'a Arc<Rule>> {
        Self::rules(set, self.by_event_type.get(event_type)).collect()
    }

    /// Rules with a `recrubo` trigger for this resource, event and changed fields.
    pub fn recrubo<'a>(
        &self,
        set: &'a RuleSet,
        resource: &str,
        event: &str,
        fields: &[String],
    ) -> Vec<&'a Arc<Rule>> {
        let incoming = Incoming::Webhook {
            resource,
            event,
            fields,
        };
        Self::rules(set, self.by_resource.get(resource))
            .filter(|rule| why_not(&rule.trigger, &incoming, false).is_none())
            .collect()
    }

    /// Rules with a `flow_run` trigger for this status (and flow, and starter).
    pub fn flow_run<'a>(
        &self,
        set: &'a RuleSet,
        status: &str,
        flow_id: Option<&str>,
        starter: Option<Starter>,
    ) -> Vec<&'a Arc<Rule>> {
        let incoming = Incoming::FlowRun {
            status,
            flow_id,
            starter,
        };
        Self::rules(set, self.flow_run_by_status.get(status))
            .filter(|rule| why_not(&rule.trigger, &incoming, false).is_none())
            .collect()
    }

    /// Rules with a `flow_generation` trigger for this status (and starter).
    pub fn flow_generation<'a>(
        &self,
        set: &'a RuleSet,
        status: &str,
        starter: Option<Starter>,
    ) -> Vec<&'a Arc<Rule>> {
        let incoming = Incoming::FlowGeneration { status, starter };
        Self::rules(set, self.generation_by_status.get(status))
            .filter(|rule| why_not(&rule.trigger, &incoming, false).is_none())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn set(yaml: &str) -> RuleSet {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("r.yaml"), yaml).expect("write");
        let outcome = crate::rules::load_rule_set(&[PathBuf::from(dir.path())]);
        outcome.result.expect("valid")
    }

    #[test]
    fn matches_by_key_status_and_starter() {
        let set = set(r#"
rules:
  - name: a
    on: { event: application.created }
    do:
      - id: s
        start_flow_run: { flow: f, message_thread: t }
  - name: b
    on: { flow_run: { status: [finished, timeout], started_by: a/s } }
    do: [ { log: x } ]
  - name: c
    on: { flow_run: { status: finished, flow: other } }
    do: [ { log: x } ]
  - name: d
    on: { recrubo: { resource: candidates, event: update, fields: [email] } }
    do: [ { log: x } ]
"#);
        let index = MatchIndex::new(&set);
        let names =
            |rules: Vec<&Arc<Rule>>| rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(index.external(&set, "application.created")), ["a"]);
        assert!(index.external(&set, "other").is_empty());
        let starter = Some(Starter {
            rule: "a",
            step: Some("s"),
        });
        assert_eq!(
            names(index.flow_run(&set, "finished", Some("f"), starter)),
            ["b"]
        );
        assert_eq!(
            names(index.flow_run(&set, "finished", Some("other"), None)),
            ["c"]
        );
        assert!(index.flow_run(&set, "running", None, starter).is_empty());
        assert_eq!(
            names(index.recrubo(&set, "candidates", "update", &["email".to_owned()])),
            ["d"]
        );
        assert!(
            index
                .recrubo(&set, "candidates", "update", &["phone".to_owned()])
                .is_empty()
        );
    }
}
