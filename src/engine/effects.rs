//! The seam between deciding and acting. A step's effect (a Recrubo call, an HTTP request, an
//! email, an emitted event, a log line) and the clock come from an [`Effects`]: the daemon's
//! executor plugs in [`Live`] (the real clients, the store for `emit`); `flowd test` and
//! `flowd simulate` plug in [`Recorded`], which answers every effect with a plausible result
//! and keeps a virtual clock. Everything else a step does — its condition, its rendering, where
//! its output goes — is [`super::plan`], the same for both.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Engine;
use super::render::redact;
use crate::actions::{ActionError, perform};
use crate::recrubo::FollowedKind;
use crate::rules::{Step, StepKind};
use crate::store::{EventSource, NewEvent};

/// One step's effect to perform.
#[derive(Debug, Clone, Copy)]
pub struct Act<'a> {
    /// The step.
    pub step: &'a Step,
    /// Its rendered input.
    pub input: &'a Value,
    /// The evaluation context it was rendered with.
    pub context: &'a Value,
    /// Which execution and step this is (`<execution>-<index>`): an emitted event's id, so the
    /// same emit retried is the same event.
    pub origin: &'a str,
}

/// Where effects and time come from.
pub trait Effects {
    /// The time now.
    fn now(&self) -> DateTime<Utc>;
    /// Performs a step's effect; the output is what `steps.<id>` holds afterwards.
    fn perform(
        &self,
        act: Act<'_>,
    ) -> impl std::future::Future<Output = Result<Value, ActionError>> + Send;
}

/// The daemon's effects: the configured clients, the store for `emit`, the wall clock.
pub struct Live<'a> {
    /// The engine whose clients and store act.
    pub engine: &'a Engine,
}

impl Effects for Live<'_> {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn perform(&self, act: Act<'_>) -> Result<Value, ActionError> {
        let engine = self.engine;
        metrics::counter!("flowd_steps_total", "kind" => act.step.kind.name()).increment(1);
        match act.step.kind {
            StepKind::Emit { .. } => {
                let event_type = act.input["type"].as_str().unwrap_or_default().to_owned();
                let event = NewEvent {
                    source: EventSource::Emit,
                    event_type: event_type.clone(),
                    // The same emit retried is the same event.
                    dedup_key: Some(format!("emit:{}", act.origin)),
                    payload: json!({ "type": event_type, "id": act.origin, "data": redact(&act.input["data"], engine.secret_values()) }),
                };
                engine
                    .store
                    .insert_events(vec![event])
                    .await
                    .map_err(|err| {
                        ActionError::retryable(format!("cannot store the emitted event: {err}"))
                    })?;
                engine.events_waiting.notify_one();
                Ok(json!({ "event_id": act.origin }))
            }
            // The log line is written by `perform`: hand it the redacted text.
            StepKind::Log { .. } => {
                let redacted = redact(act.input, engine.secret_values());
                perform(&act.step.kind, &redacted, act.context, &engine.deps).await
            }
            _ => perform(&act.step.kind, act.input, act.context, &engine.deps).await,
        }
    }
}

/// A step a [`Recorded`] run performed: its kind, its rendered input, and the evaluation
/// context it saw (for expectations written against `run`, `steps`, `item` or `now`).
#[derive(Debug, Clone, PartialEq)]
pub struct Performed {
    /// The step kind (`notify`).
    pub kind: String,
    /// The rendered fields.
    pub fields: Value,
    /// What its templates saw.
    pub context: Value,
}

/// Effects of an offline run: nothing leaves the process. A created run gets an id, an HTTP
/// call answers 200, a vacancy analysis is analysed by [`crate::recrubo::sample`]. The clock
/// is virtual: it stands still until [`Recorded::advance`] moves it.
pub struct Recorded {
    clock: Mutex<DateTime<Utc>>,
    counter: Mutex<usize>,
    performed: Mutex<Vec<Performed>>,
}

impl Recorded {
    /// Fakes with the virtual clock at `now`.
    pub fn at(now: DateTime<Utc>) -> Recorded {
        Recorded {
            clock: Mutex::new(now),
            counter: Mutex::new(0),
            performed: Mutex::new(Vec::new()),
        }
    }

    /// Moves the virtual clock on.
    pub fn advance(&self, by: chrono::TimeDelta) {
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        *clock = clock.checked_add_signed(by).unwrap_or(*clock);
    }

    /// What was performed, in order.
    pub fn performed(&self) -> Vec<Performed> {
        self.performed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn next(&self) -> usize {
        let mut counter = self.counter.lock().unwrap_or_else(|p| p.into_inner());
        *counter += 1;
        *counter
    }

    fn now_text(&self) -> String {
        self.now()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    /// The plausible answer to a step.
    fn answer(&self, step: &Step, fields: &Value) -> Value {
        let n = self.next();
        let now = self.now_text();
        match &step.kind {
            StepKind::StartFlowRun { .. } => json!({
                "id": format!("run-{n}"), "type": FollowedKind::FlowRun.json_api_type(), "status": "queued", "cost": 0,
                "flowId": fields["flow"], "messageThreadId": fields["message_thread"],
                "state": if fields["state"].is_null() { json!({}) } else { fields["state"].clone() },
                "createdAt": now, "updatedAt": now,
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
            StepKind::MessageThread { .. } => json!({
                "id": format!("thread-{n}"), "type": "messageThreads",
                "channel": fields["channel"], "identifier": fields["identifier"],
                "chatbotPaused": fields["chatbot_paused"].as_bool().unwrap_or(false),
                "createdAt": now, "updatedAt": now,
            }),
            StepKind::Recrubo { .. } => json!({ "status": 200, "body": { "data": null } }),
            StepKind::Notify { .. } | StepKind::Http { .. } => {
                json!({ "status": 200, "headers": {}, "body": null })
            }
            StepKind::Email { .. } => json!({ "message_id": format!("<dry-run-{n}@flowd>") }),
            StepKind::Emit { .. } => json!({ "event_id": format!("dry-run-{n}") }),
            StepKind::Log { .. } => Value::Null,
        }
    }
}

impl Effects for Recorded {
    fn now(&self) -> DateTime<Utc> {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn perform(&self, act: Act<'_>) -> Result<Value, ActionError> {
        self.performed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Performed {
                kind: act.step.kind.name().to_owned(),
                fields: act.input.clone(),
                context: act.context.clone(),
            });
        Ok(self.answer(act.step, act.input))
    }
}
