//! How simulated runs and generations move on: a script (delays, the final status and `state`
//! per flow id or by a CEL rule over the run's initial state) or control calls only.
//!
//! Without a script a run stays `queued` until `POST /_sim/flow-runs/{id}/status` moves it;
//! `flowd sim --auto` uses [`Script::auto`]: running after 1 s, finished after 3 s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::state::SimState;
use crate::rules::expr::Condition;

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::rules::duration::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The whole script.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Script {
    /// FlowRuns; none: runs move only by control calls.
    pub flow_runs: Option<RunScript>,
    /// FlowGenerations; none: generations move only by control calls.
    pub flow_generations: Option<GenerationScript>,
    /// How long a VacancyAnalysis takes without `?sync=true` (default 100ms).
    #[serde(default, deserialize_with = "optional_duration")]
    pub analysis_delay: Option<Duration>,
}

fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

impl Script {
    /// The `--auto` script: running after 1 s, finished after 3 s; generations likewise.
    pub fn auto() -> Script {
        Script {
            flow_runs: Some(RunScript::default()),
            flow_generations: Some(GenerationScript::default()),
            analysis_delay: None,
        }
    }
}

/// How FlowRuns move on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunScript {
    /// `queued` → `running` after this long.
    #[serde(deserialize_with = "duration")]
    pub running_after: Duration,
    /// → the final status after this long (from creation).
    #[serde(deserialize_with = "duration")]
    pub finish_after: Duration,
    /// The outcome when nothing more specific applies.
    pub outcome: Outcome,
    /// Outcomes by flow id.
    pub by_flow: HashMap<String, Outcome>,
    /// Outcomes by a CEL condition over the run's initial `state` (first match wins, before
    /// `by_flow`), e.g. `state.score >= 7`.
    pub rules: Vec<OutcomeRule>,
}

impl Default for RunScript {
    fn default() -> Self {
        RunScript {
            running_after: Duration::from_secs(1),
            finish_after: Duration::from_secs(3),
            outcome: Outcome::default(),
            by_flow: HashMap::new(),
            rules: Vec::new(),
        }
    }
}

/// A final status and the state the run ends with (merged into its state).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// `finished`, `timeout` or `exception`.
    pub status: String,
    /// Merged into the run's state.
    #[serde(default)]
    pub state: Option<Value>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            status: "finished".to_owned(),
            state: None,
        }
    }
}

/// `when` → `outcome`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeRule {
    /// CEL over `state` (the run's initial state) and `flowId`.
    pub when: String,
    /// The final status.
    pub status: String,
    /// Merged into the run's state.
    #[serde(default)]
    pub state: Option<Value>,
}

/// How FlowGenerations move on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationScript {
    /// `queued` → `processing` after this long.
    #[serde(deserialize_with = "duration")]
    pub processing_after: Duration,
    /// → `finished` (with a new Flow) after this long.
    #[serde(deserialize_with = "duration")]
    pub finish_after: Duration,
}

impl Default for GenerationScript {
    fn default() -> Self {
        GenerationScript {
            processing_after: Duration::from_secs(1),
            finish_after: Duration::from_secs(3),
        }
    }
}

impl RunScript {
    /// The outcome for a run of `flow_id` that started with `state`.
    pub fn outcome_for(&self, flow_id: &str, state: &Value) -> Outcome {
        let context = serde_json::json!({ "state": state, "flowId": flow_id });
        for rule in &self.rules {
            match Condition::compile(&rule.when) {
                Ok(condition) if condition.evaluate(&context).is_true() => {
                    return Outcome {
                        status: rule.status.clone(),
                        state: rule.state.clone(),
                    };
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(when = %rule.when, error = %err, "Simulator script rule does not compile")
                }
            }
        }
        self.by_flow
            .get(flow_id)
            .cloned()
            .unwrap_or_else(|| self.outcome.clone())
    }
}

/// Moves a new run along the script, unless control calls moved it first.
pub fn spawn_run(
    state: Arc<SimState>,
    script: RunScript,
    id: String,
    flow_id: String,
    initial_state: Value,
) {
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let outcome = script.outcome_for(&flow_id, &initial_state);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(script.running_after) => {}
        }
        state.advance_run(&id, &["queued", "created"], "running", None);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(script.finish_after.saturating_sub(script.running_after)) => {}
        }
        state.advance_run(&id, &["running"], &outcome.status, outcome.state);
    });
}

/// Moves a new generation along the script.
pub fn spawn_generation(state: Arc<SimState>, script: GenerationScript, id: String) {
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(script.processing_after) => {}
        }
        state.advance_generation(&id, &["queued"], "processing");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(script.finish_after.saturating_sub(script.processing_after)) => {}
        }
        state.advance_generation(&id, &["processing"], "finished");
    });
}
