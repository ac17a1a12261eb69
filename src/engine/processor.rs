//! From stored events to executions. One task takes the inbox in order, matches each event
//! against the rule set in force, evaluates rule conditions, and stores the executions it causes
//! together with "processed" in one transaction — so a crash between the two cannot lose or
//! double anything.
//!
//! Status changes of runs and generations are the subtle part: each (run, status) fires once
//! (the `fired` table), a delivery older than what is known (`updatedAt`) is ignored, the
//! `on_status` handler is looked up by (rule, step id) in the rule set in force *now*, and a
//! change for a run flowd does not know yet is held back for a short grace period, because
//! Recrubo's webhook may overtake the answer to the create that started the run.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize as _;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Engine;
use super::matcher::{MatchIndex, Starter};
use super::plan::{self, Planned, Verdict, base_context};
use crate::recrubo::jsonapi::{Resource, WebhookPayload};
use crate::recrubo::types::flattened;
use crate::recrubo::{FilterOp, FlowRunStatus, FollowedKind, ListQuery};
use crate::rules::ruleset::ForEach;
use crate::rules::{Rule, RuleSet};
use crate::store::{
    Deferral, EventOutcome, EventSource, FollowedRun, NewExecution, StatusChange, StoreError,
    StoredEvent,
};

/// How long at most a webhook for an unknown run waits while some create is in doubt.
const IN_DOUBT_HOLD: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Events read from the inbox at a time.
const PAGE: i64 = 500;
/// Payload bytes read from the inbox at a time (at least one event, whatever its size): 500
/// events of 1 MiB would otherwise be half a gigabyte in memory, times the matches.
const PAGE_BYTES: i64 = 8 << 20;
/// How long a page of the inbox is this instance's (several instances on Postgres): a page is
/// judged in well under a second, so an instance that died holds its page this long at most.
const CLAIM: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs until `shutdown`.
pub async fn run(engine: Engine, shutdown: CancellationToken) {
    let mut index = MatchIndex::default();
    loop {
        let set = engine.reloader.current();
        if index.hash != set.hash {
            index = MatchIndex::new(&set);
        }
        let now = Utc::now();
        // A full page processed means more may be waiting (a backlog, or 10,000 schedule ticks
        // recorded at once): go on at once instead of waiting for the next wake-up.
        let mut more = false;
        match engine
            .store
            .claim_events(PAGE, PAGE_BYTES, now, CLAIM)
            .await
        {
            Ok(events) => {
                let full = !events.is_empty();
                let claimed: Vec<i64> = events.iter().map(|event| event.id).collect();
                let mut failed = false;
                let mut reread = false;
                let mut created = false;
                let mut batch: Vec<(i64, EventOutcome)> = Vec::new();
                let mut deferrals: Vec<Deferral> = Vec::new();
                for event in events {
                    // `cancel_on`: what this event cancels is cancelled before its own outcome
                    // is stored, after every earlier event's (their executions may be among the
                    // cancelled). Cancelling again after a crash cancels nothing twice.
                    let cancels = cancels_for(&engine, &set, &index, &event);
                    if !cancels.is_empty() {
                        if !flush(&engine, &mut batch).await {
                            failed = true;
                            break;
                        }
                        if !cancel(&engine, &cancels).await {
                            failed = true;
                            break;
                        }
                        created = true;
                    }
                    match outcome_of(&engine, &set, &index, &event).await {
                        Ok(Outcome::Done(outcome)) => {
                            created |= !outcome.executions.is_empty();
                            batch.push((event.id, outcome));
                            // A status change must be stored before the next one is judged
                            // (older deliveries, fire once): it closes the batch.
                            let closes_batch = matches!(
                                event.source,
                                EventSource::Recrubo | EventSource::Reconcile
                            );
                            if (closes_batch || batch.len() >= 500)
                                && !flush(&engine, &mut batch).await
                            {
                                failed = true;
                                break;
                            }
                        }
                        Ok(Outcome::Implied(implied, outcome)) => {
                            // A status the run must have passed through first (its webhook
                            // was lost): its handlers fire first, in its own outcome.
                            created = true;
                            batch.push((event.id, *implied));
                            batch.push((event.id, outcome));
                            if !flush(&engine, &mut batch).await {
                                failed = true;
                                break;
                            }
                        }
                        Ok(Outcome::Defer { key, until }) => {
                            // Set aside in the store, not held at the head of the inbox:
                            // later events go on at once (no head-of-line wait).
                            deferrals.push(Deferral {
                                event_id: event.id,
                                key,
                                until,
                            });
                        }
                        Ok(Outcome::Reread) => {
                            // The run is known now and its deferred webhooks were released
                            // with it: read the page again so they come first, in order.
                            reread = true;
                            break;
                        }
                        Err(err) => {
                            error!(event = event.id, error = %err, "Cannot process an event; it will be processed again");
                            failed = true;
                            break;
                        }
                    }
                }
                let flushed = flush(&engine, &mut batch).await;
                let set_aside = match engine.store.defer_events(&deferrals).await {
                    Ok(()) => true,
                    Err(err) => {
                        error!(error = %err, "Cannot defer events; they will be judged again");
                        false
                    }
                };
                // A page not completed goes back at once, for any instance (the store leaves
                // its processed events alone). So do deferrals the store did not write (their
                // run was recorded meanwhile). A page all processed has nothing to give back.
                if (failed || reread || !flushed || !set_aside || !deferrals.is_empty())
                    && let Err(err) = engine.store.release_events(&claimed).await
                {
                    warn!(error = %err, "Cannot give unprocessed events back; they are taken again when their claim ends");
                }
                more = full && flushed && set_aside && !failed;
                if created {
                    engine.executions_waiting.notify_one();
                }
            }
            Err(err) => error!(error = %err, "Cannot read the inbox"),
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = engine.events_waiting.notified() => {}
            // Deferred events come due by time alone: they are found at the next look.
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}

/// The cancellations an external or emitted event asks for (`cancel_on` entries of its type
/// whose condition holds), each with its rendered key.
fn cancels_for(
    engine: &Engine,
    set: &RuleSet,
    index: &MatchIndex,
    event: &StoredEvent,
) -> Vec<crate::store::CancelRequest> {
    if !matches!(event.source, EventSource::Event | EventSource::Emit) {
        return Vec::new();
    }
    let matching = index.cancels(set, &event.event_type);
    if matching.is_empty() {
        return Vec::new();
    }
    let now = Utc::now();
    let context = json!({
        "event": {
            "type": event.payload["type"],
            "id": event.payload["id"],
            "data": event.payload["data"],
        }
    });
    let mut requests = Vec::new();
    for (rule, entry) in matching {
        let Some(cancel_on) = rule.flow.cancel_on.get(entry) else {
            continue;
        };
        let mut scoped = context.clone();
        if let Some(map) = scoped.as_object_mut() {
            map.insert("vars".into(), Value::Object((*rule.vars).clone()));
        }
        let evaluation = evaluation_context(engine, &scoped, now);
        match plan::cancel_key(cancel_on, &evaluation) {
            Ok(Some(key)) => requests.push(crate::store::CancelRequest {
                rule: rule.name.clone(),
                key,
                only: None,
                reason: format!(
                    "cancelled by event {} ({}, cancel_on)",
                    event.id, event.event_type
                ),
                on_cancel: !rule.flow.on_cancel.is_empty(),
            }),
            Ok(None) => {}
            Err(reason) => {
                warn!(rule = %rule.name, event = event.id, reason = %reason, "A cancel_on entry cannot be judged; nothing cancelled by it");
            }
        }
    }
    requests
}

/// Applies cancellations; false when the store failed (the event is processed again).
async fn cancel(engine: &Engine, requests: &[crate::store::CancelRequest]) -> bool {
    for request in requests {
        match engine.store.cancel(request, Utc::now()).await {
            Ok(cancelled) => {
                for id in &cancelled {
                    info!(rule = %request.rule, execution = %id, reason = %request.reason, "Execution cancelled");
                    metrics::counter!("flowd_flow_cancelled_total", "rule" => request.rule.clone())
                        .increment(1);
                }
            }
            Err(err) => {
                error!(rule = %request.rule, error = %err, "Cannot cancel; the event will be processed again");
                return false;
            }
        }
    }
    true
}

/// Stores a batch of outcomes; false when the store failed (the events stay unprocessed).
async fn flush(engine: &Engine, batch: &mut Vec<(i64, EventOutcome)>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let result = engine.store.complete_events(batch).await;
    batch.clear();
    match result {
        Ok(_) => true,
        Err(err) => {
            error!(error = %err, "Cannot store the outcome of events; they will be processed again");
            false
        }
    }
}

/// The `event` a `recrubo` rule sees for a webhook: the resource, with the webhook's `event`
/// (`create`/`update`/`delete`) and changed `fields`. Shared with `flowd simulate`.
pub fn webhook_event(payload: &WebhookPayload) -> Value {
    let attributes = &payload.data.attributes;
    let mut event = attributes.resource.to_json();
    if let Some(map) = event.as_object_mut() {
        map.insert("event".into(), json!(attributes.event));
        map.insert(
            "fields".into(),
            json!(attributes.fields.clone().unwrap_or_default()),
        );
    }
    event
}

/// The context a condition or template sees: the stored context plus `now` and `secrets`.
pub fn evaluation_context(engine: &Engine, stored: &Value, now: DateTime<Utc>) -> Value {
    plan::evaluation(stored, now, engine.secrets_json())
}

/// Executions of `rule` for a context, as [`plan::executions`] plans them: one, or one per
/// `for_each` item, each `skipped` with the reason when the rule's condition is not true. A
/// `for_each: { list }` rule gets one execution that runs the sweep (see [`sweep`]): the
/// executor pages through the list while the processor goes on with the inbox.
fn executions_for(
    engine: &Engine,
    rule: &Rule,
    event_id: i64,
    context: Map<String, Value>,
    now: DateTime<Utc>,
) -> Vec<NewExecution> {
    plan::executions(rule, context, now, engine.secrets_json())
        .into_iter()
        .map(|planned| match planned {
            Planned::Execution(context, verdict) => with_flow(
                engine,
                rule,
                new_execution(rule, event_id, Value::Object(context), verdict),
                now,
            ),
            Planned::Sweep(context) => NewExecution {
                id: format!("sweep-{event_id}-{}", rule.name),
                sweep: true,
                first_step_creates: false,
                ..pending(rule, event_id, Value::Object(context))
            },
            Planned::Failed(context, reason) => {
                note_only(rule, event_id, context, "failed", reason)
            }
        })
        .collect()
}

/// The stored execution for a planned one: pending, or skipped with the reason.
fn new_execution(rule: &Rule, event_id: i64, context: Value, verdict: Verdict) -> NewExecution {
    match verdict {
        Verdict::Go => pending(rule, event_id, context),
        Verdict::False(reason) => skipped(rule, event_id, context, reason),
        Verdict::Failed(reason) => {
            info!(rule = %rule.name, reason = %reason, "Rule condition failed to evaluate; counted as false");
            skipped(rule, event_id, context, reason)
        }
    }
}

/// Why a sweep stopped.
#[derive(Debug)]
pub enum SweepError {
    /// Recrubo failed (retryable or not, as the error says).
    Recrubo(crate::recrubo::RecruboError),
    /// The sweep cannot run as written (no token, a filter that does not render).
    Failed(String),
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for SweepError {
    fn from(err: StoreError) -> Self {
        SweepError::Store(err)
    }
}

/// A `for_each: { list: ... }` sweep, run by the executor for the execution `sweep_id`: pages
/// through the Recrubo list (one page in memory at a time, at the client's rate limit) and
/// stores one execution per item, with an id made of the event and the item, so that a sweep
/// run again after a crash or an error creates no item twice. The lease of the sweep's
/// execution is renewed with every page stored. Returns how many items it found.
pub async fn sweep(
    engine: &Engine,
    rule: &Rule,
    event_id: i64,
    context: Map<String, Value>,
    sweep_id: &str,
) -> Result<usize, SweepError> {
    let now = Utc::now();
    use futures_util::StreamExt;
    let Some(ForEach::List {
        resource,
        filter,
        sort,
        page_size,
    }) = &rule.for_each
    else {
        return Ok(0);
    };
    let Some(client) = engine.deps.recrubo.as_ref() else {
        return Err(SweepError::Failed(
            "for_each list needs a Recrubo token".to_owned(),
        ));
    };
    let evaluation = evaluation_context(engine, &Value::Object(context.clone()), now);
    let mut query = ListQuery::new().page_size(*page_size);
    for (field, value) in filter {
        let rendered = match value.render(&evaluation) {
            Ok(rendered) => rendered,
            Err(err) => {
                return Err(SweepError::Failed(format!(
                    "for_each filter `{field}`: {err}"
                )));
            }
        };
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        match rendered {
            Value::Object(operators) => {
                for (operator, operand) in operators {
                    let Some(op) = FilterOp::parse(&operator) else {
                        return Err(SweepError::Failed(format!(
                            "for_each filter `{field}`: unknown operator `{operator}`"
                        )));
                    };
                    query = query.filter_op(field, op, text(&operand));
                }
            }
            Value::Array(options) => {
                query = query.filter(
                    field,
                    options.iter().map(text).collect::<Vec<_>>().join(","),
                )
            }
            other => query = query.filter(field, text(&other)),
        }
    }
    if let Some(sort) = sort {
        query = query.sort(sort);
    }
    let mut items = Box::pin(client.list_all(resource, query));
    let mut batch = Vec::new();
    let mut count = 0usize;
    while let Some(item) = items.next().await {
        let item = match item {
            Ok(item) => item,
            Err(err) => {
                warn!(rule = %rule.name, error = %err, swept = count, "Sweep stopped by a Recrubo error");
                engine.store.insert_executions(&batch).await?;
                return Err(SweepError::Recrubo(err));
            }
        };
        let mut item_context = context.clone();
        let item_id = item.id.clone();
        item_context.insert("item".into(), item.to_json());
        let Planned::Execution(item_context, verdict) =
            plan::item_execution(rule, item_context, now, engine.secrets_json())
        else {
            continue;
        };
        let mut execution = with_flow(
            engine,
            rule,
            new_execution(rule, event_id, Value::Object(item_context), verdict),
            now,
        );
        execution.id = format!("sweep-{event_id}-{}-{item_id}", rule.name);
        batch.push(execution);
        count += 1;
        if batch.len() >= 200 {
            engine.store.insert_executions(&batch).await?;
            batch.clear();
            engine
                .store
                .begin_step(sweep_id, Utc::now(), engine.settings.lease)
                .await?;
            engine.executions_waiting.notify_one();
        }
    }
    engine.store.insert_executions(&batch).await?;
    engine.executions_waiting.notify_one();
    info!(rule = %rule.name, items = count, "Sweep done");
    Ok(count)
}

fn pending(rule: &Rule, event_id: i64, context: Value) -> NewExecution {
    NewExecution {
        id: uuid::Uuid::new_v4().to_string(),
        rule: rule.name.clone(),
        event_id: Some(event_id),
        handler_step: None,
        handler_status: None,
        status: "pending".into(),
        context,
        note: None,
        rule_version: Some(rule.version.clone()),
        sweep: false,
        first_step_creates: plan::first_step_creates(rule, None),
        flow_key: None,
        expires_at: None,
        gate: None,
        idempotency: None,
        parent: None,
    }
}

/// An execution of a rule with flow control gets its group key (rendered now, DESIGN 2.5) and
/// its expiry; a key that does not render fails the execution with the reason.
fn with_flow(
    engine: &Engine,
    rule: &Rule,
    mut execution: NewExecution,
    now: DateTime<Utc>,
) -> NewExecution {
    if execution.status != "pending" || execution.sweep {
        return execution;
    }
    if let Some(after) = rule.flow.expires_after {
        execution.expires_at = super::checked_after(now, after);
    }
    if !rule.flow.keyed() && rule.flow.idempotency.is_none() {
        return execution;
    }
    // Keys are rendered against the stored context (event, item, vars): no copy of it with
    // `now` and `secrets` for every execution. A template that needs those gets them.
    let full;
    let evaluation = if rule.flow.plain_templates {
        &execution.context
    } else {
        full = evaluation_context(engine, &execution.context, now);
        &full
    };
    if let Some((template, window)) = &rule.flow.idempotency {
        match plan::idempotency_key(template, evaluation) {
            Ok(key) => {
                let until = super::checked_after(now, *window).unwrap_or(DateTime::<Utc>::MAX_UTC);
                execution.idempotency = Some((key, until));
            }
            Err(reason) => {
                warn!(rule = %rule.name, reason = %reason, "Execution not started");
                execution.status = "failed".into();
                execution.note = Some(reason);
                return execution;
            }
        }
    }
    if !rule.flow.keyed() {
        return execution;
    }
    match plan::flow_key(rule, evaluation) {
        Ok(key) => {
            execution.flow_key = Some(key);
            // Judged where it is stored, in the same transaction (no write of its own).
            if rule.flow.gated() {
                execution.gate = Some(super::executor::gate_for(rule, evaluation, now));
            }
        }
        Err(reason) => {
            warn!(rule = %rule.name, reason = %reason, "Execution not started");
            execution.status = "failed".into();
            execution.note = Some(reason);
        }
    }
    execution
}

fn skipped(rule: &Rule, event_id: i64, context: Value, note: String) -> NewExecution {
    NewExecution {
        status: "skipped".into(),
        note: Some(note),
        ..pending(rule, event_id, context)
    }
}

fn note_only(
    rule: &Rule,
    event_id: i64,
    context: Map<String, Value>,
    status: &str,
    note: String,
) -> NewExecution {
    warn!(rule = %rule.name, note = %note, "Execution not started");
    NewExecution {
        status: status.into(),
        note: Some(note),
        ..pending(rule, event_id, Value::Object(context))
    }
}

/// What the processor does with one event.
enum Outcome {
    /// Store this with "processed".
    Done(EventOutcome),
    /// A status change of a run flowd does not know (yet): set it aside until `until` or until
    /// the run is recorded, because Recrubo's webhook may overtake the answer to the create.
    Defer {
        /// The run or generation id.
        key: String,
        /// Judged again at the latest then (`unknown_run_grace` after it arrived).
        until: DateTime<Utc>,
    },
    /// The run of deferred events is known now: read the inbox again from its head.
    Reread,
    /// Store the first (a status the run passed through unseen), then the second.
    Implied(Box<EventOutcome>, EventOutcome),
}

/// What an event causes.
async fn outcome_of(
    engine: &Engine,
    set: &Arc<RuleSet>,
    index: &MatchIndex,
    event: &StoredEvent,
) -> Result<Outcome, StoreError> {
    let now = Utc::now();
    match event.source {
        EventSource::Schedule => {
            let mut outcome = EventOutcome::default();
            if let Some(rule) = event.payload["rule"]
                .as_str()
                .and_then(|name| set.get(name))
            {
                let tick = json!({
                    "scheduled_at": event.payload["scheduled_at"],
                    "fired_at": event.payload["fired_at"],
                });
                outcome.executions =
                    executions_for(engine, rule, event.id, base_context(rule, tick), now);
            }
            Ok(Outcome::Done(outcome))
        }
        EventSource::Event | EventSource::Emit | EventSource::Manual => {
            let mut outcome = EventOutcome::default();
            let rules: Vec<&Arc<Rule>> = if event.source == EventSource::Manual {
                event.payload["rule"]
                    .as_str()
                    .and_then(|name| set.get(name))
                    .into_iter()
                    .collect()
            } else {
                index.external(set, &event.event_type)
            };
            let event_context = json!({
                "type": event.payload["type"],
                "id": event.payload["id"],
                "data": event.payload["data"],
            });
            for rule in rules {
                outcome.executions.extend(executions_for(
                    engine,
                    rule,
                    event.id,
                    base_context(rule, event_context.clone()),
                    now,
                ));
            }
            debug!(
                event = event.id,
                executions = outcome.executions.len(),
                "Event matched"
            );
            Ok(Outcome::Done(outcome))
        }
        EventSource::Recrubo | EventSource::Reconcile => {
            // Deserialized from a borrow: the payload is not copied first.
            let payload = match WebhookPayload::deserialize(&event.payload) {
                Ok(payload) => payload,
                Err(err) => {
                    warn!(event = event.id, error = %err, "Stored webhook does not parse; skipped");
                    return Ok(Outcome::Done(EventOutcome::default()));
                }
            };
            let attributes = &payload.data.attributes;
            let resource = &attributes.resource;
            let fields = attributes.fields.clone().unwrap_or_default();
            let mut outcome = EventOutcome::default();
            if event.source == EventSource::Recrubo {
                let event_context = webhook_event(&payload);
                for rule in index.recrubo(set, &resource.resource_type, &attributes.event, &fields)
                {
                    outcome.executions.extend(executions_for(
                        engine,
                        rule,
                        event.id,
                        base_context(rule, event_context.clone()),
                        now,
                    ));
                }
            }
            let tracks_status = FollowedKind::of(&resource.resource_type).is_some();
            if tracks_status && attributes.event != "delete" {
                match status_change(engine, set, index, event, resource, now).await? {
                    StatusOutcome::Hold { until } => {
                        return Ok(Outcome::Defer {
                            key: resource.id.clone(),
                            until,
                        });
                    }
                    StatusOutcome::Reread => return Ok(Outcome::Reread),
                    StatusOutcome::Ignore => {}
                    StatusOutcome::Fire { fired, implied } => {
                        outcome.executions.extend(fired.executions);
                        outcome.status_change = fired.status_change;
                        outcome.fire = fired.fire;
                        if let Some(implied) = implied {
                            return Ok(Outcome::Implied(implied, outcome));
                        }
                    }
                }
            }
            Ok(Outcome::Done(outcome))
        }
    }
}

enum StatusOutcome {
    /// Wait: the run may not be recorded yet.
    Hold {
        /// Until when at most.
        until: DateTime<Utc>,
    },
    /// The run is known now and webhooks deferred for it were released: read again.
    Reread,
    /// Nothing to do (no status, or an older delivery).
    Ignore,
    /// Fire for (resource, status); `implied` first when there is one.
    Fire {
        fired: EventOutcome,
        implied: Option<Box<EventOutcome>>,
    },
}

async fn status_change(
    engine: &Engine,
    set: &Arc<RuleSet>,
    index: &MatchIndex,
    event: &StoredEvent,
    resource: &Resource,
    now: DateTime<Utc>,
) -> Result<StatusOutcome, StoreError> {
    let Some(status) = resource.str_attribute("status").map(str::to_owned) else {
        return Ok(StatusOutcome::Ignore);
    };
    let Some(kind) = FollowedKind::of(&resource.resource_type) else {
        return Ok(StatusOutcome::Ignore);
    };
    let is_run = kind == FollowedKind::FlowRun;
    let updated_at = resource
        .str_attribute("updatedAt")
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let followed = engine.store.followed(&resource.id).await?;
    let grace = chrono::Duration::from_std(engine.settings.unknown_run_grace).unwrap_or_default();
    let until = event
        .received_at
        .checked_add_signed(grace)
        .unwrap_or(event.received_at);
    // Earlier webhooks of this run not processed yet (deferred, or released when the run was
    // recorded): this one waits behind them, so a run's changes are judged in order — also
    // after a restart, since the store, not memory, knows them.
    let earlier = engine
        .store
        .earlier_deferred(&resource.id, event.id)
        .await?;
    match (&followed, earlier) {
        // The step that created this run may not have recorded it yet.
        (None, _) if now < until => return Ok(StatusOutcome::Hold { until }),
        (None, Some(Some(theirs))) if theirs > now => {
            return Ok(StatusOutcome::Hold { until: theirs });
        }
        // Deferred earlier in this very page (written at its end): wait a moment behind it.
        (None, Some(None)) => {
            return Ok(StatusOutcome::Hold {
                until: now + chrono::TimeDelta::seconds(1),
            });
        }
        // A create whose answer was lost may have made this run: while one is in doubt, the
        // webhook waits (at most `IN_DOUBT_HOLD`) so the run, once adopted, gets its handlers.
        (None, _)
            if now < event.received_at + IN_DOUBT_HOLD
                && engine.store.creates_in_doubt().await? =>
        {
            return Ok(StatusOutcome::Hold { until: now + grace });
        }
        (Some(_), Some(None)) => return Ok(StatusOutcome::Reread),
        _ => {}
    }
    // The create that made this run may have recorded it (and left doubt) between the first
    // read and the doubt check: read again before judging it a run flowd does not follow, or
    // its status would be fired without the handler.
    if followed.is_none() && engine.store.followed(&resource.id).await?.is_some() {
        return Ok(StatusOutcome::Reread);
    }
    if let Some(cancelled) = followed.as_ref().and_then(|f| f.cancelled_at) {
        debug!(resource = %resource.id, status = %status, %cancelled, "A run flowd cancelled changed; no handler fires");
        return Ok(StatusOutcome::Ignore);
    }
    if let (Some(followed), Some(updated_at)) = (&followed, updated_at)
        && let Some(known) = followed.remote_updated_at
        && updated_at < known
    {
        debug!(resource = %resource.id, status = %status, "Delivery older than what is known; ignored");
        return Ok(StatusOutcome::Ignore);
    }
    // A run that finished ran: when flowd knows it only as not started yet (the `running`
    // webhook was lost, and polling sees only the status now), the `running` handlers fire
    // first, as if that webhook had come (DESIGN 3: handlers fire even when a delivery never
    // came). Only `finished` implies it; a timeout or an exception may come without a start.
    let implied = match &followed {
        Some(followed)
            if is_run
                && FlowRunStatus::parse(&status) == FlowRunStatus::Finished
                && matches!(
                    FlowRunStatus::parse(&followed.status),
                    FlowRunStatus::Queued | FlowRunStatus::Created
                ) =>
        {
            let mut running = resource.clone();
            running
                .attributes
                .insert("status".into(), Value::String("running".into()));
            info!(resource = %resource.id, "A run finished whose start flowd never saw; its `running` handlers fire first");
            Some(Box::new(fire_for(
                engine,
                set,
                index,
                event,
                &running,
                &followed_run_starter(followed),
                Some(followed),
                "running",
                None,
                now,
            )))
        }
        _ => None,
    };
    let fired = fire_for(
        engine,
        set,
        index,
        event,
        resource,
        &followed
            .as_ref()
            .map(followed_run_starter)
            .unwrap_or_default(),
        followed.as_ref(),
        &status,
        updated_at,
        now,
    );
    Ok(StatusOutcome::Fire { fired, implied })
}

/// Who started a followed run, as the matcher wants it: (rule, step key).
fn followed_run_starter(followed: &FollowedRun) -> (String, Option<String>) {
    (followed.rule.clone(), followed.step_id.clone())
}

/// What firing (resource, status) stores: the executions of the rules that react to it and the
/// followed run's handler, the status change of the followed run, and the fire-once key.
#[allow(clippy::too_many_arguments)]
fn fire_for(
    engine: &Engine,
    set: &Arc<RuleSet>,
    index: &MatchIndex,
    event: &StoredEvent,
    resource: &Resource,
    starter: &(String, Option<String>),
    followed: Option<&FollowedRun>,
    status: &str,
    updated_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> EventOutcome {
    let kind = FollowedKind::of(&resource.resource_type).unwrap_or(FollowedKind::FlowRun);
    let is_run = kind == FollowedKind::FlowRun;
    let resource_context = flattened(resource);
    let key = kind.context_key();
    let mut executions = Vec::new();
    let starter = followed.map(|_| Starter {
        rule: starter.0.as_str(),
        step: starter.1.as_deref(),
    });
    let matching = if is_run {
        index.flow_run(set, status, resource.str_attribute("flowId"), starter)
    } else {
        index.flow_generation(set, status, starter)
    };
    for rule in matching {
        let mut context = base_context(rule, resource.to_json());
        context.insert(key.into(), resource_context.clone());
        executions.extend(executions_for(engine, rule, event.id, context, now));
    }
    if let Some(followed) = followed
        && let Some(handler) =
            handler_execution(set, followed, status, key, &resource_context, event.id)
    {
        executions.insert(0, handler);
    }
    let terminal = kind.is_terminal(status);
    let status_change = followed.map(|f| StatusChange {
        resource_id: f.resource_id.clone(),
        status: status.to_owned(),
        remote_updated_at: updated_at,
        terminal,
        frees_slot: set.get(&f.rule).is_some_and(|rule| rule.flow.gated()),
    });
    // Judged, not yet stored: the store's fire-once key may still drop it (a duplicate).
    debug!(resource = %resource.id, status = %status, executions = executions.len(), "Status change");
    EventOutcome {
        executions,
        status_change,
        fire: Some((resource.id.clone(), status.to_owned())),
    }
}

/// The `on_status` handler execution of a followed run, looked up in the rule set in force.
pub(super) fn handler_execution(
    set: &RuleSet,
    followed: &FollowedRun,
    status: &str,
    key: &str,
    resource_context: &Value,
    event_id: i64,
) -> Option<NewExecution> {
    let mut context = followed.context.as_object().cloned().unwrap_or_default();
    context.insert(key.into(), resource_context.clone());
    let base = NewExecution {
        id: uuid::Uuid::new_v4().to_string(),
        rule: followed.rule.clone(),
        event_id: Some(event_id),
        handler_step: followed.step_id.clone(),
        handler_status: Some(status.to_owned()),
        status: "pending".into(),
        context: Value::Null,
        note: None,
        rule_version: None,
        sweep: false,
        first_step_creates: false,
        flow_key: None,
        expires_at: None,
        gate: None,
        idempotency: None,
        parent: None,
    };
    let Some(rule) = set.get(&followed.rule) else {
        warn!(rule = %followed.rule, run = %followed.resource_id, "The rule that started this run is gone; orphaned");
        return Some(NewExecution {
            status: "orphaned".into(),
            note: Some(format!(
                "rule `{}` is no longer in the rule set",
                followed.rule
            )),
            context: Value::Object(context),
            ..base
        });
    };
    let step = followed
        .step_id
        .as_deref()
        .and_then(|key| rule.step_by_key(key));
    let Some(step) = step else {
        return Some(NewExecution {
            status: "orphaned".into(),
            note: Some(format!(
                "step `{}` is no longer in rule `{}`",
                followed.step_id.as_deref().unwrap_or("(no id)"),
                followed.rule
            )),
            context: Value::Object(context),
            ..base
        });
    };
    step.on_status.iter().find(|(s, _)| s == status)?;
    // Handlers read the rule's vars as they are now, and run the rule version in force now
    // (DESIGN 3: `on_status` handlers are looked up when the status changes) to their end.
    context.insert("vars".into(), Value::Object((*rule.vars).clone()));
    let first_step_creates = followed
        .step_id
        .as_deref()
        .is_some_and(|key| plan::first_step_creates(rule, Some((key, status))));
    Some(NewExecution {
        context: Value::Object(context),
        rule_version: Some(rule.version.clone()),
        first_step_creates,
        ..base
    })
}
