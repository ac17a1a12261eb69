//! Running executions: claim due ones (with a lease), run their steps in order, and store the
//! progress after every step, so a crash resumes at the step that was running.
//!
//! A step that fails with a retryable error is retried durably: its next attempt time is stored
//! and the execution is released until then (exponential backoff with jitter, `Retry-After`
//! honoured, the step's `retry` or the default policy). Exhausted or fatal steps go to the dead
//! letters; `continue_on_error` lets the execution go on. A step whose previous attempt ended
//! without an answer (timeout, crash mid-request) and that creates a FlowRun is first checked
//! with a list query, and the run found is adopted instead of creating a second one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Engine;
use super::effects::{Act, Effects, Live};
use super::plan::{self, StepStart};
use super::processor::evaluation_context;
use super::reload::VersionError;
use super::render::redact;
use crate::actions::ActionError;
use futures_util::FutureExt as _;

use crate::recrubo::{FilterOp, FollowedKind, ListQuery};
use crate::rules::ruleset::{RetryPolicy, Step, step_key};
use crate::rules::{Rule, StepKind};
use crate::store::{Execution, FollowedRun, NewEvent, StepRecord, StoreError};

/// Runs until `shutdown`, then waits up to `drain` for executions in flight.
pub async fn run(engine: Engine, shutdown: CancellationToken, drain: Duration) {
    let permits = Arc::new(Semaphore::new(engine.settings.max_steps_in_flight.max(1)));
    // Executions running in this process: one claimed again (its lease ran out while a long
    // step ran) is not started a second time.
    let running = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    // Under a backlog (the last claim filled every free slot), a claim waits a moment for
    // more slots to free up: one claim per finished execution was a commit per execution.
    let total = engine.settings.max_steps_in_flight.max(1);
    let gather = (total / 8).clamp(1, 16);
    let mut backlog = false;
    loop {
        if backlog {
            let until = tokio::time::Instant::now() + Duration::from_millis(5);
            while permits.available_permits() < gather && tokio::time::Instant::now() < until {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = engine.executions_waiting.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        let free = permits.available_permits();
        backlog = false;
        if free > 0 {
            match engine
                .store
                .claim_executions(Utc::now(), engine.settings.lease, free as i64)
                .await
            {
                Ok(claimed) => {
                    backlog = claimed.len() == free;
                    for execution in claimed {
                        if !running
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(execution.id.clone())
                        {
                            continue;
                        }
                        let Ok(permit) = permits.clone().acquire_owned().await else {
                            break;
                        };
                        let engine = engine.clone();
                        let running = running.clone();
                        tokio::spawn(async move {
                            let id = execution.id.clone();
                            let claimed = execution.clone();
                            // The lease is renewed while the execution runs (an analysis may
                            // take minutes): no other worker claims it meanwhile.
                            let heartbeat = tokio::spawn(renew_lease(engine.clone(), id.clone()));
                            // Each execution runs isolated: a panic fails it (dead letter with
                            // the reason) and its concurrency slot is released below; it never
                            // wedges the rule (DESIGN 3).
                            let outcome =
                                std::panic::AssertUnwindSafe(run_execution(&engine, execution))
                                    .catch_unwind()
                                    .await;
                            heartbeat.abort();
                            match outcome {
                                Ok(Ok(())) => {}
                                Ok(Err(err)) => {
                                    error!(execution = %id, error = %err, "Cannot store an execution's progress; it resumes when its lease expires");
                                }
                                Err(panic) => fail_panicked(&engine, claimed, panic).await,
                            }
                            running
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&id);
                            drop(permit);
                            // A free slot: claim more work now rather than at the next tick.
                            engine.executions_waiting.notify_one();
                        });
                    }
                }
                Err(err) => error!(error = %err, "Cannot claim executions"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = engine.executions_waiting.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    // Let steps in flight finish; what does not finish in time resumes after the restart.
    let _ = tokio::time::timeout(drain, permits.acquire_many(total as u32)).await;
}

/// Records an execution whose run panicked: failed, with a dead letter naming the panic.
/// `claimed` is the copy as claimed; the stored one is newer when steps finished before the
/// panic (its step index is the one that panicked, its in-doubt marker must stay).
async fn fail_panicked(engine: &Engine, claimed: Execution, panic: Box<dyn std::any::Any + Send>) {
    let mut execution = match engine.store.execution(&claimed.id).await {
        Ok(Some(stored)) => stored,
        _ => claimed,
    };
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    let message = redacted_message(
        engine,
        &format!(
            "the step failed unexpectedly (panic: {what}); this is a flowd bug, please report it"
        ),
    );
    error!(rule = %execution.rule, execution = %execution.id, error = %message, "Execution panicked; dead letter");
    execution.status = "failed".to_owned();
    execution.last_error = Some(message.clone());
    if let Err(err) = dead_letter(engine, &execution, "panic", &message).await {
        error!(execution = %execution.id, error = %err, "Cannot store the dead letter of a panicked execution");
    }
    if let Err(err) = engine.store.save_execution(&execution, true).await {
        error!(execution = %execution.id, error = %err, "Cannot store a panicked execution");
    }
    metrics::counter!("flowd_executions_total", "rule" => execution.rule.clone(), "status" => "failed").increment(1);
}

/// Renews an execution's lease every third of the lease, until aborted.
async fn renew_lease(engine: Engine, execution_id: String) {
    let lease = engine.settings.lease;
    let every = (lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let until = super::checked_after(Utc::now(), lease).unwrap_or_else(Utc::now);
        if let Err(err) = engine.store.renew_lease(&execution_id, until).await {
            warn!(execution = %execution_id, error = %err, "Cannot renew an execution's lease");
        }
    }
}

/// The delay before attempt `attempt + 1`.
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let base = policy
        .backoff
        .saturating_mul(1u32 << exponent.min(20))
        .min(policy.max_backoff);
    let jittered = base.mul_f64(0.5 + fastrand::f64() * 0.5);
    match retry_after {
        // A server's `Retry-After` is honoured up to the policy's `max_backoff` (DESIGN 3:
        // durations from outside are capped; default 1h, at most 7d by `flowd check`).
        Some(after) => jittered.max(after.min(policy.max_backoff)),
        None => jittered,
    }
}

async fn run_execution(engine: &Engine, mut execution: Execution) -> Result<(), StoreError> {
    // The rule version the execution was created with, whatever is in force now (DESIGN 3).
    let found = engine
        .reloader
        .rule_version(&execution.rule, execution.rule_version.as_deref())
        .await;
    let rule = match found {
        Ok(Some(rule)) => rule,
        Ok(None) => {
            return finish(
                engine,
                execution,
                "orphaned",
                Some("the rule is no longer in the rule set".to_owned()),
            )
            .await;
        }
        Err(VersionError::Gone(reason)) => {
            return finish(engine, execution, "orphaned", Some(reason)).await;
        }
        Err(VersionError::Store(reason)) => return Err(StoreError::Database(reason)),
    };
    if execution.sweep {
        return run_sweep(engine, &rule, execution).await;
    }
    // A waiting execution is `pending` in the store; it runs only once the gate lets it.
    if execution.waiting.is_some() {
        execution.status = "pending".to_owned();
    }
    let main = execution.handler_status.is_none();
    if main {
        match flow_gate(engine, &rule, &mut execution).await? {
            Gated::Go => {}
            Gated::Stop => return Ok(()),
        }
    }
    let mut follows = false;
    let flow_key = execution.flow_key.clone();
    let outcome = run_steps(engine, &rule, execution, &mut follows).await;
    // An execution that ended may free a slot of its group: the oldest one queued behind it
    // looks again now, not at its next poll. One that follows a run keeps its slot until the
    // run ends, and that end wakes the queue (the store does, with the run's status).
    if main
        && !follows
        && rule.flow.concurrency.is_some()
        && let Some(key) = &flow_key
        && let Err(err) = engine.store.wake_group(&rule.name, key, Utc::now()).await
    {
        warn!(rule = %rule.name, error = %err, "Cannot wake the executions queued behind one that ended; they look again at their next poll");
    }
    outcome
}

/// What the flow-control gate said.
enum Gated {
    Go,
    Stop,
}

/// How long a queued execution waits at most before it looks again (it is woken sooner when
/// its group frees a slot).
const QUEUE_POLL: Duration = Duration::from_secs(10);

/// Flow control before an execution's next step (DESIGN 2.5): it expires, stops for a
/// cancellation asked while it was away, or passes the store's gate (or waits, or ends there).
async fn flow_gate(
    engine: &Engine,
    rule: &Rule,
    execution: &mut Execution,
) -> Result<Gated, StoreError> {
    let now = Utc::now();
    if execution.expires_at.is_some_and(|at| at <= now) {
        expire(engine, rule, execution).await?;
        return Ok(Gated::Stop);
    }
    if let Some(reason) = execution.cancel_requested.clone() {
        cancel_self(engine, rule, execution, &reason).await?;
        return Ok(Gated::Stop);
    }
    if !rule.flow.gated() || execution.flow_key.is_none() || execution.admitted_at.is_some() {
        return Ok(Gated::Go);
    }
    let evaluation = evaluation_context(engine, &execution.context, now);
    let gate = gate_for(rule, &evaluation, now);
    let was = execution.waiting.take().map(|waiting| waiting.kind);
    match engine.store.admit(&execution.id, &gate, now).await? {
        crate::store::Admission::Admitted(cancelled) => {
            for id in &cancelled {
                info!(rule = %rule.name, execution = %id, by = %execution.id, "Execution cancelled (concurrency: cancel_previous)");
                count_flow(rule, "cancelled");
            }
            if !cancelled.is_empty() {
                engine.executions_waiting.notify_one();
            }
            execution.admitted_at = Some(now);
            Ok(Gated::Go)
        }
        crate::store::Admission::Waiting(waiting) => {
            if was.as_deref() != Some(waiting.kind.as_str()) {
                info!(rule = %rule.name, execution = %execution.id, kind = %waiting.kind, until = ?waiting.until, behind = ?waiting.behind, "Execution waiting");
                count_flow(rule, &format!("waited_{}", waiting.kind));
            }
            Ok(Gated::Stop)
        }
        crate::store::Admission::Ended(status, reason) => {
            info!(rule = %rule.name, execution = %execution.id, status, reason = %reason, "Execution not started");
            count_flow(rule, status);
            Ok(Gated::Stop)
        }
        crate::store::Admission::Gone => Ok(Gated::Stop),
    }
}

/// The gate of an execution of `rule` due at `now` (quiet hours judged in its context).
pub(super) fn gate_for(rule: &Rule, evaluation: &Value, now: DateTime<Utc>) -> crate::store::Gate {
    let mut quiet_until = None;
    if let Some(quiet) = &rule.flow.quiet_hours {
        let (until, warning) = plan::quiet_until(quiet, evaluation, now);
        if let Some(warning) = warning {
            warn!(rule = %rule.name, "{warning}");
        }
        quiet_until = until;
    }
    crate::store::Gate {
        concurrency: rule.flow.concurrency,
        throttle: rule.flow.throttle,
        debounce: rule.flow.debounce,
        quiet_until,
        on_cancel: !rule.flow.on_cancel.is_empty(),
        poll: QUEUE_POLL,
    }
}

/// Counts a flow-control outcome of a rule (`flowd_flow_control_total{rule, outcome}`; the
/// outcomes are a fixed set: waited_queue, waited_throttle, waited_quiet_hours, skipped,
/// dropped, cancelled, expired).
fn count_flow(rule: &Rule, outcome: &str) {
    metrics::counter!("flowd_flow_control_total", "rule" => rule.name.clone(), "outcome" => outcome.to_owned()).increment(1);
}

/// An execution past its `expires_after`: `expired`, a dead letter with the reason.
async fn expire(engine: &Engine, rule: &Rule, execution: &mut Execution) -> Result<(), StoreError> {
    let after = rule
        .flow
        .expires_after
        .map(|after| humantime::format_duration(after).to_string())
        .unwrap_or_else(|| "its expires_after".to_owned());
    let reason = format!(
        "expired: not finished within {after} of its creation ({}); its remaining steps are skipped",
        execution
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    warn!(rule = %rule.name, execution = %execution.id, "{reason}");
    dead_letter(engine, execution, "expires_after", &reason).await?;
    count_flow(rule, "expired");
    execution.status = "expired".to_owned();
    execution.last_error = Some(reason);
    execution.step_started_at = None;
    execution.waiting = None;
    engine.store.save_execution(execution, true).await?;
    count_finished(execution, "expired");
    Ok(())
}

/// Stops an execution whose cancellation was asked while it ran (see `Store::cancel`).
async fn cancel_self(
    engine: &Engine,
    rule: &Rule,
    execution: &Execution,
    reason: &str,
) -> Result<(), StoreError> {
    // A handler of a cancelled execution is cancelled with it; on_cancel ran for the parent.
    let on_cancel = execution.handler_status.is_none() && !rule.flow.on_cancel.is_empty();
    if engine
        .store
        .cancel_now(&execution.id, reason, on_cancel, Utc::now())
        .await?
    {
        info!(rule = %rule.name, execution = %execution.id, reason = %reason, "Execution cancelled");
        count_flow(rule, "cancelled");
        engine.executions_waiting.notify_one();
    }
    Ok(())
}

/// Runs the steps of an execution (or of the handler it is) from where it is.
async fn run_steps(
    engine: &Engine,
    rule: &Rule,
    mut execution: Execution,
    follows: &mut bool,
) -> Result<(), StoreError> {
    let handler = match (
        execution.handler_step.as_deref(),
        execution.handler_status.as_deref(),
    ) {
        (None, Some(plan::CANCEL_HANDLER)) => Some(("", plan::CANCEL_HANDLER)),
        (step, status) => step.zip(status),
    };
    let cancel_handler = handler.is_some_and(|(step, _)| step.is_empty());
    // A running execution of a rule that can be cancelled looks for a cancellation between
    // its steps (asked by `cancel_on` or `cancel_previous` while it ran).
    // Its handlers too: a handler of a cancelled execution does not run on.
    let watch_cancel = !cancel_handler && rule.flow.cancellable();
    let (steps, prefix) = match plan::steps_to_run(rule, handler) {
        Ok(found) => found,
        Err(reason) => return finish(engine, execution, "orphaned", Some(reason)).await,
    };
    loop {
        let index = execution.next_step as usize;
        // Before every step, the first too: a cancellation may have come since the claim.
        if watch_cancel
            && index < steps.len()
            && let Some(reason) = engine.store.cancel_requested(&execution.id).await?
        {
            return cancel_self(engine, rule, &execution, &reason).await;
        }
        if execution.handler_status.is_none()
            && index < steps.len()
            && execution.expires_at.is_some_and(|at| at <= Utc::now())
        {
            return expire(engine, rule, &mut execution).await;
        }
        let Some(step) = steps.get(index) else {
            return finish(engine, execution, "succeeded", None).await;
        };
        let now = Utc::now();
        let context = evaluation_context(engine, &execution.context, now);
        let mut record = StepRecord {
            execution_id: execution.id.clone(),
            step_index: execution.next_step,
            step_id: step.id.clone(),
            kind: step.kind.name().to_owned(),
            status: "running".to_owned(),
            attempts: execution.attempt,
            input: None,
            output: None,
            error: None,
            note: None,
            started_at: now,
            finished_at: None,
            instance: None,
        };
        let input = match plan::start_step(step, &context) {
            StepStart::Act(input) => input,
            StepStart::Skip { reason, failed } => {
                if failed {
                    // Logged like a rule-level condition that fails.
                    info!(rule = %execution.rule, execution = %execution.id, step = step.kind.name(), reason = %reason, "Step condition failed to evaluate; counted as false");
                }
                record.status = "skipped".to_owned();
                record.error = Some(reason);
                record.finished_at = Some(Utc::now());
                engine.store.record_step(&record).await?;
                execution.next_step += 1;
                execution.attempt = 0;
                continue;
            }
            StepStart::Unrenderable(reason) if cancel_handler => {
                // The cancelled execution may not have reached the step this one names.
                record.status = "skipped".to_owned();
                record.error = Some(format!(
                    "{reason} (on_cancel: the cancelled execution may not have reached the step it names)"
                ));
                record.finished_at = Some(Utc::now());
                engine.store.record_step(&record).await?;
                execution.next_step += 1;
                execution.attempt = 0;
                continue;
            }
            StepStart::Unrenderable(reason) => {
                let failure = ActionError::fatal(reason);
                match fail_step(engine, &mut execution, step, &mut record, failure).await? {
                    Next::Continue => continue,
                    Next::Stop => return Ok(()),
                }
            }
        };
        record.input = Some(redact(&input, engine.secret_values()));
        let in_doubt = execution.step_started_at;
        // Creates leave a trace before they are sent: after a crash, the next attempt checks
        // whether the create went through. Other steps are simply run again (at least once).
        if step.kind.creates() {
            // The claim left the marker of the first step when it is a create (one write less
            // per execution); any other create writes its own.
            if !std::mem::take(&mut execution.create_marked) {
                engine
                    .store
                    .begin_step(&execution.id, now, engine.settings.lease)
                    .await?;
            }
            // The in-doubt marker lives in memory too, so the next save keeps it (it used to
            // erase it, and a lost answer led to a second create). The earliest attempt counts.
            if execution.step_started_at.is_none() {
                execution.step_started_at = Some(now);
            }
        }
        execution.attempt += 1;
        record.attempts = execution.attempt;
        let mut adopted_now = false;
        let result = match adopt_existing(engine, step, &input, &context, in_doubt).await {
            Ok(Some(adopted)) => {
                adopted_now = true;
                info!(rule = %rule.name, execution = %execution.id, resource = %adopted.id, "A resource created by an attempt without an answer was found and adopted");
                record.note = Some(format!(
                    "adopted {} {}: an earlier attempt created it but its answer was lost (found by a list query, not created again)",
                    adopted.kind, adopted.id
                ));
                match adopted.unfinished_analysis {
                    Some(analysis) => crate::actions::await_analysis(&engine.deps, analysis).await,
                    None => Ok(adopted.output),
                }
            }
            Ok(None) => attempt(engine, &execution, step, &input, &context).await,
            Err(failure) => Err(failure),
        };
        match result {
            Ok(output) => {
                let key = step_key(step, &format!("{prefix}{index}"));
                // Outputs join the stored context: a secret echoed by a peer is redacted here.
                plan::keep_output(
                    &mut execution.context,
                    step,
                    redact(&output, engine.secret_values()),
                );
                let mut followed = followed_run(&execution, step, &key, &output);
                if adopted_now && let Some(followed) = &mut followed {
                    // What the adopted resource went through while nobody knew it comes as
                    // webhooks (held while the create was in doubt) or by polling, in order:
                    // it is recorded as new, not at its current status, so none is skipped.
                    followed.status = "queued".to_owned();
                    followed.remote_updated_at = None;
                }
                // A create answered with a status already past the first (a `sync: true`
                // generation comes back finished): that status goes through the inbox like a
                // webhook, in the same transaction, so its handlers fire once (DESIGN 3).
                let answered = followed
                    .as_ref()
                    .and_then(|followed| answered_status(followed, &output));
                record.status = "succeeded".to_owned();
                record.output = Some(redact(&output, engine.secret_values()));
                record.finished_at = Some(Utc::now());
                execution.next_step += 1;
                execution.attempt = 0;
                execution.step_started_at = None;
                execution.last_error = None;
                // The last step done is the execution done: one write for both (the next turn
                // of this loop would only save `succeeded` and give the lease up).
                let last = execution.next_step as usize >= steps.len();
                if last {
                    execution.status = "succeeded".to_owned();
                    count_finished(&execution, "succeeded");
                }
                // The step's record, the progress and the followed run: one transaction.
                engine
                    .store
                    .finish_step(&record, &execution, followed.as_ref(), answered.as_ref())
                    .await?;
                if answered.is_some() {
                    engine.events_waiting.notify_one();
                }
                if let Some(followed) = &followed {
                    *follows = true;
                    info!(rule = %execution.rule, resource = %followed.resource_id, kind = %followed.resource_type, "Following");
                }
                if last {
                    // A cancellation asked while the last step ran: the run it started (if
                    // any) is cancelled with it.
                    if watch_cancel
                        && let Some(reason) = engine.store.cancel_requested(&execution.id).await?
                    {
                        return cancel_self(engine, rule, &execution, &reason).await;
                    }
                    return Ok(());
                }
            }
            Err(failure) => {
                match fail_step(engine, &mut execution, step, &mut record, failure).await? {
                    Next::Continue => continue,
                    Next::Stop => return Ok(()),
                }
            }
        }
    }
}

enum Next {
    Continue,
    Stop,
}

/// Runs a `for_each: { list }` sweep execution. A Recrubo error is retried like a step's (the
/// default retry policy, durably); the sweep then starts again from the first page, and the
/// items already stored are not stored twice.
async fn run_sweep(
    engine: &Engine,
    rule: &Rule,
    mut execution: Execution,
) -> Result<(), StoreError> {
    use super::processor::{SweepError, sweep};
    let context = execution.context.as_object().cloned().unwrap_or_default();
    let event_id = execution.event_id.unwrap_or_default();
    match sweep(engine, rule, event_id, context, &execution.id).await {
        Ok(_) => finish(engine, execution, "succeeded", None).await,
        Err(SweepError::Store(err)) => Err(err),
        Err(SweepError::Failed(reason)) => finish(engine, execution, "failed", Some(reason)).await,
        Err(SweepError::Recrubo(err)) => {
            let failure = ActionError::from(err);
            let message = redacted_message(engine, &failure.message);
            execution.attempt += 1;
            execution.last_error = Some(message.clone());
            if let Some((at, delay)) = retry_at(&RetryPolicy::default(), &execution, &failure) {
                execution.next_attempt_at = at;
                warn!(rule = %execution.rule, execution = %execution.id, attempt = execution.attempt, ?delay, error = %message, "Sweep failed; retrying");
                engine.store.save_execution(&execution, true).await
            } else {
                dead_letter(engine, &execution, "for_each", &message).await?;
                finish(engine, execution, "failed", Some(message)).await
            }
        }
    }
}

/// Handles a failed attempt: schedule a retry, or dead-letter and stop (or go on).
async fn fail_step(
    engine: &Engine,
    execution: &mut Execution,
    step: &Step,
    record: &mut StepRecord,
    failure: ActionError,
) -> Result<Next, StoreError> {
    let message = redacted_message(engine, &failure.message);
    record.error = Some(message.clone());
    record.finished_at = Some(Utc::now());
    execution.last_error = Some(message.clone());
    // Keep the in-flight mark only when the outcome is unknown: the next attempt checks first.
    if !failure.outcome_unknown {
        execution.step_started_at = None;
    }
    if let Some((at, delay)) = retry_at(&step.retry.unwrap_or_default(), execution, &failure) {
        // An execution that expires before its next attempt stops then, not later.
        execution.next_attempt_at = execution.expires_at.map_or(at, |expires| at.min(expires));
        record.status = "retrying".to_owned();
        warn!(rule = %execution.rule, execution = %execution.id, step = step.kind.name(), attempt = execution.attempt, ?delay, error = %message, "Step failed; retrying");
        engine.store.record_step(record).await?;
        engine.store.save_execution(execution, true).await?;
        return Ok(Next::Stop);
    }
    record.status = "failed".to_owned();
    warn!(rule = %execution.rule, execution = %execution.id, step = step.kind.name(), attempts = execution.attempt, error = %message, "Step failed; dead letter");
    engine.store.record_step(record).await?;
    dead_letter(engine, execution, step.kind.name(), &message).await?;
    if step.continue_on_error {
        execution.next_step += 1;
        execution.attempt = 0;
        execution.step_started_at = None;
        // The execution goes on: keep the lease.
        engine.store.save_execution(execution, false).await?;
        Ok(Next::Continue)
    } else {
        execution.status = "failed".to_owned();
        engine.store.save_execution(execution, true).await?;
        count_finished(execution, "failed");
        Ok(Next::Stop)
    }
}

/// An error message as stored: every secret value replaced.
fn redacted_message(engine: &Engine, message: &str) -> String {
    redact(&Value::String(message.to_owned()), engine.secret_values())
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// When the attempt just failed is tried again, and after which delay; `None` when the failure
/// is fatal or the policy's attempts are used up.
fn retry_at(
    policy: &RetryPolicy,
    execution: &Execution,
    failure: &ActionError,
) -> Option<(DateTime<Utc>, Duration)> {
    let attempt = execution.attempt as u32;
    if !failure.retryable || attempt >= policy.attempts {
        return None;
    }
    let delay = backoff(policy, attempt, failure.retry_after);
    // `delay` is bounded by `backoff`; the checked addition keeps even a wrong bound from
    // panicking (an overflow here used to wedge the execution).
    let at = super::checked_after(Utc::now(), delay)
        .unwrap_or_else(|| Utc::now() + chrono::TimeDelta::hours(1));
    Some((at, delay))
}

/// Stores a dead letter for the execution's current step and counts it.
async fn dead_letter(
    engine: &Engine,
    execution: &Execution,
    kind: &str,
    message: &str,
) -> Result<(), StoreError> {
    engine
        .store
        .add_dead_letter(execution, kind, message)
        .await?;
    metrics::counter!("flowd_dead_letters_total", "rule" => execution.rule.clone()).increment(1);
    Ok(())
}

async fn finish(
    engine: &Engine,
    mut execution: Execution,
    status: &str,
    note: Option<String>,
) -> Result<(), StoreError> {
    if status != "succeeded" {
        warn!(rule = %execution.rule, execution = %execution.id, status, note = note.as_deref().unwrap_or(""), "Execution ended");
    }
    count_finished(&execution, status);
    execution.status = status.to_owned();
    if note.is_some() {
        execution.last_error = note;
    }
    execution.step_started_at = None;
    engine.store.save_execution(&execution, true).await
}

/// Counts an execution that ended with `status`, and says so in one line (DESIGN 9: one line
/// per execution outcome at info).
fn count_finished(execution: &Execution, status: &str) {
    info!(rule = %execution.rule, execution = %execution.id, status, "Execution finished");
    metrics::counter!("flowd_executions_total", "rule" => execution.rule.clone(), "status" => status.to_owned()).increment(1);
}

/// One attempt of a step, with the daemon's effects.
async fn attempt(
    engine: &Engine,
    execution: &Execution,
    step: &Step,
    input: &Value,
    context: &Value,
) -> Result<Value, ActionError> {
    let origin = format!("{}-{}", execution.id, execution.next_step);
    Live { engine }
        .perform(Act {
            step,
            input,
            context,
            origin: &origin,
        })
        .await
}

/// A resource an attempt without an answer created, found by [`adopt_existing`].
struct Adopted {
    /// `flowRuns`, `flowGenerations` or `vacancyAnalyses`.
    kind: &'static str,
    /// Its id.
    id: String,
    /// The step's output, as if the create had answered.
    output: Value,
    /// A VacancyAnalysis still without its result: the step waits for it.
    unfinished_analysis: Option<crate::recrubo::VacancyAnalysis>,
}

/// Candidates read at most when looking for what a lost create made (pages of 100).
const ADOPTION_PAGES: u32 = 10;

/// For a create whose last attempt got no answer: what that attempt may have created. The
/// check never creates a second resource on a guess: when the list query itself fails, the step
/// is retried (still in doubt) rather than sent again, and when several resources could be the
/// lost one the step fails (dead letter) rather than pick one or make another.
///
/// Recrubo's docs say nothing of idempotency keys, so a resource counts as the lost one when it
/// was created no earlier than 60 s (clock skew) before the first attempt without an answer,
/// flowd does not follow it already (another execution's), and it is what the step sends:
/// - a FlowRun: the same `messageThreadId` and `flowId` (filtered by the API);
/// - a FlowGeneration: the same `flowType` (filtered), and every key of the `parameters` and
///   `context` sent present with the same value (the docs do not say whether Recrubo echoes them
///   unchanged or adds defaults, so keys and list entries' keys it adds are allowed, and an
///   empty object sent matches one left out);
/// - a VacancyAnalysis: the same `inputText` (the oldest such; analyses are not followed).
async fn adopt_existing(
    engine: &Engine,
    step: &Step,
    input: &Value,
    context: &Value,
    in_doubt: Option<DateTime<Utc>>,
) -> Result<Option<Adopted>, ActionError> {
    let Some(since) = in_doubt else {
        return Ok(None);
    };
    let Some(client) = engine.deps.recrubo.as_ref() else {
        return Ok(None);
    };
    let since = since
        .checked_sub_signed(chrono::Duration::seconds(60))
        .unwrap_or(since)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let unchecked = |err: crate::recrubo::RecruboError| ActionError {
        outcome_unknown: true,
        retry_after: err.retry_after(),
        ..ActionError::retryable(format!(
            "an earlier attempt got no answer and whether it created the resource cannot be checked ({err}); it is not created again before it can be"
        ))
    };
    let request = match &step.kind {
        StepKind::GenerateFlow { .. } => Some(crate::actions::generation_request(input, context)?),
        _ => None,
    };
    let (collection, kind, base, follows): (&str, &'static str, ListQuery, bool) = match &step.kind
    {
        StepKind::StartFlowRun { .. } => (
            FollowedKind::FlowRun.collection(),
            FollowedKind::FlowRun.json_api_type(),
            ListQuery::new()
                .filter(
                    "messageThreadId",
                    input["message_thread"].as_str().unwrap_or_default(),
                )
                .filter("flowId", input["flow"].as_str().unwrap_or_default()),
            true,
        ),
        StepKind::GenerateFlow { .. } => (
            FollowedKind::FlowGeneration.collection(),
            FollowedKind::FlowGeneration.json_api_type(),
            ListQuery::new().filter(
                "flowType",
                request
                    .as_ref()
                    .map(|r| r.flow_type.clone())
                    .unwrap_or_default(),
            ),
            true,
        ),
        StepKind::AnalyzeVacancy { .. } => (
            "vacancy-analyses",
            "vacancyAnalyses",
            ListQuery::new(),
            false,
        ),
        _ => return Ok(None),
    };
    let fits = |resource: &crate::recrubo::jsonapi::Resource| match &step.kind {
        StepKind::GenerateFlow { .. } => request.as_ref().is_some_and(|request| {
            let attribute = |key: &str| resource.attributes.get(key).unwrap_or(&Value::Null);
            contains(attribute("parameters"), &request.parameters)
                && contains(attribute("context"), &request.context)
        }),
        StepKind::AnalyzeVacancy { .. } => {
            resource.str_attribute("inputText") == input["text"].as_str()
        }
        _ => true,
    };
    let mut found = Vec::new();
    for number in 1..=ADOPTION_PAGES {
        let query = base
            .clone()
            .filter_op("createdAt", FilterOp::Gte, since.clone())
            .sort("createdAt")
            .page_size(100)
            .page_number(number);
        let page = client.list(collection, &query).await.map_err(unchecked)?;
        for resource in page.items {
            if !fits(&resource) {
                continue;
            }
            if follows {
                let known = engine.store.followed(&resource.id).await.map_err(|err| {
                    ActionError::retryable(format!("cannot read the store: {err}"))
                })?;
                if known.is_some() {
                    continue;
                }
            }
            found.push(resource);
        }
        if !page.has_more || (!follows && !found.is_empty()) {
            break;
        }
    }
    if follows && found.len() > 1 {
        let ids: Vec<&str> = found.iter().map(|r| r.id.as_str()).collect();
        return Err(ActionError {
            outcome_unknown: true,
            ..ActionError::fatal(format!(
                "an earlier attempt got no answer, and {} {kind} could be the one it created ({}); flowd does not guess and does not create another: check them, then retry the dead letter",
                ids.len(),
                ids.join(", ")
            ))
        });
    }
    Ok(found.into_iter().next().map(|resource| {
        let output = crate::recrubo::types::flattened(&resource);
        let unfinished_analysis = (kind == "vacancyAnalyses")
            .then(|| crate::recrubo::VacancyAnalysis {
                resource: resource.clone(),
            })
            .filter(|analysis| !analysis.is_done());
        Adopted {
            kind,
            id: resource.id,
            output,
            unfinished_analysis,
        }
    }))
}

/// Whether `found` holds what was `sent`: objects key by key (keys added by Recrubo allowed),
/// lists entry by entry, an empty object or list matching one left out (`null`), anything else
/// by equality.
fn contains(found: &Value, sent: &Value) -> bool {
    match (found, sent) {
        (Value::Null, Value::Object(sent)) => sent.is_empty(),
        (Value::Null, Value::Array(sent)) => sent.is_empty(),
        (Value::Object(found), Value::Object(sent)) => sent
            .iter()
            .all(|(key, value)| contains(found.get(key).unwrap_or(&Value::Null), value)),
        (Value::Array(found), Value::Array(sent)) => {
            found.len() == sent.len() && found.iter().zip(sent).all(|(f, s)| contains(f, s))
        }
        (found, sent) => found == sent,
    }
}

/// The inbox event for a status a create already answered with, past the first one; `output`
/// is the created resource, flattened.
fn answered_status(followed: &FollowedRun, output: &Value) -> Option<NewEvent> {
    if matches!(followed.status.as_str(), "queued" | "created" | "") {
        return None;
    }
    let mut attributes = output.as_object().cloned().unwrap_or_default();
    attributes.remove("id");
    attributes.remove("type");
    let resource = json!({
        "type": followed.resource_type.json_api_type(),
        "id": followed.resource_id,
        "attributes": attributes,
    });
    let key = format!("answer:{}:{}", followed.resource_id, followed.status);
    Some(super::status_event(followed.resource_type, key, resource))
}

/// The followed run a create step's output describes, if it is one.
fn followed_run(
    execution: &Execution,
    step: &Step,
    key: &str,
    output: &Value,
) -> Option<FollowedRun> {
    let resource_type = match step.kind {
        StepKind::StartFlowRun { .. } => FollowedKind::FlowRun,
        StepKind::GenerateFlow { .. } => FollowedKind::FlowGeneration,
        _ => return None,
    };
    let id = output["id"].as_str()?;
    Some(FollowedRun {
        resource_id: id.to_owned(),
        resource_type,
        rule: execution.rule.clone(),
        step_id: Some(key.to_owned()),
        execution_id: execution.id.clone(),
        context: execution.context.clone(),
        status: output["status"].as_str().unwrap_or("queued").to_owned(),
        remote_updated_at: output["updatedAt"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        changed_at: Utc::now(),
        terminal: false,
        poll_failures: 0,
        gone_at: None,
        cancelled_at: None,
        deadline_at: step
            .deadline
            .and_then(|after| super::checked_after(Utc::now(), after)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let policy = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        };
        let first = backoff(&policy, 1, None);
        assert!(
            first >= Duration::from_secs(1) && first <= Duration::from_secs(2),
            "{first:?}"
        );
        let third = backoff(&policy, 3, None);
        assert!(
            third >= Duration::from_secs(4) && third <= Duration::from_secs(8),
            "{third:?}"
        );
        assert!(backoff(&policy, 20, None) <= Duration::from_secs(30));
        assert_eq!(
            backoff(&policy, 1, Some(Duration::from_secs(9_000_000_000_000))),
            policy.max_backoff,
            "a huge Retry-After is capped by max_backoff"
        );
        assert_eq!(
            backoff(&policy, 1, Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
        assert_eq!(
            backoff(
                &RetryPolicy::default(),
                1,
                Some(Duration::from_secs(u64::MAX))
            ),
            Duration::from_secs(3600),
            "the default cap is an hour"
        );
    }
}
