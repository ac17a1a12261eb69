//! Matching events to rules, through an index built once per rule set: by event type, by
//! Recrubo resource, by run status. The cost of matching an event does not grow with the number
//! of rules that cannot match it. Pure: no I/O.

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
}

/// Who started a run, when flowd did.
#[derive(Debug, Clone, Copy)]
pub struct Starter<'a> {
    /// The rule.
    pub rule: &'a str,
    /// The step id.
    pub step: Option<&'a str>,
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
        Self::rules(set, self.by_resource.get(resource))
            .filter(|rule| match &rule.trigger {
                Trigger::Recrubo(trigger) => {
                    (trigger.events.is_empty() || trigger.events.iter().any(|e| e == event))
                        && (trigger.fields.is_empty()
                            || trigger.fields.iter().any(|f| fields.contains(f)))
                }
                _ => false,
            })
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
        Self::rules(set, self.flow_run_by_status.get(status))
            .filter(|rule| match &rule.trigger {
                Trigger::FlowRun(trigger) => {
                    trigger
                        .flow
                        .as_deref()
                        .is_none_or(|flow| Some(flow) == flow_id)
                        && started_by_matches(&trigger.started_by, starter)
                }
                _ => false,
            })
            .collect()
    }

    /// Rules with a `flow_generation` trigger for this status (and starter).
    pub fn flow_generation<'a>(
        &self,
        set: &'a RuleSet,
        status: &str,
        starter: Option<Starter>,
    ) -> Vec<&'a Arc<Rule>> {
        Self::rules(set, self.generation_by_status.get(status))
            .filter(|rule| match &rule.trigger {
                Trigger::FlowGeneration(trigger) => {
                    started_by_matches(&trigger.started_by, starter)
                }
                _ => false,
            })
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
