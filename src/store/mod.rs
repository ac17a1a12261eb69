//! flowd's durable state: the inbox of events, executions and their steps, followed runs, the
//! (run, status) pairs already fired, and dead letters.
//!
//! [`Store`] is the boundary: the engine and the HTTP intake talk to a `dyn Store`, so the
//! Postgres implementation (a later issue) plugs in without changes above it. Every method is
//! one transaction; the ones that must be atomic together (marking an event processed *and*
//! creating its executions) are one method.

pub mod postgres;
pub mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// Stored data could not be read back.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// `POST /events/{type}`.
    Event,
    /// `POST /webhooks/recrubo`.
    Recrubo,
    /// An `emit` step.
    Emit,
    /// `flowd trigger` / the admin API.
    Manual,
    /// A status change found by polling a followed run.
    Reconcile,
    /// A schedule tick (`schedule` or `every`).
    Schedule,
}

impl EventSource {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Event => "event",
            EventSource::Recrubo => "recrubo",
            EventSource::Emit => "emit",
            EventSource::Manual => "manual",
            EventSource::Reconcile => "reconcile",
            EventSource::Schedule => "schedule",
        }
    }

    /// From storage.
    pub fn parse(text: &str) -> EventSource {
        match text {
            "recrubo" => EventSource::Recrubo,
            "emit" => EventSource::Emit,
            "manual" => EventSource::Manual,
            "reconcile" => EventSource::Reconcile,
            "schedule" => EventSource::Schedule,
            _ => EventSource::Event,
        }
    }
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Its source.
    pub source: EventSource,
    /// The event type (external), or `resource/event` for Recrubo.
    pub event_type: String,
    /// Deduplicates retried deliveries.
    pub dedup_key: Option<String>,
    /// The payload.
    pub payload: Value,
}

impl NewEvent {
    /// What orders it among other events: a Recrubo run's or generation's status changes (by
    /// webhook or poll) are processed one at a time, in arrival order, whichever instance takes
    /// them; other events have no order among themselves (`None`).
    pub fn order_key(&self) -> Option<&str> {
        let (resource, _) = self.event_type.split_once('/')?;
        crate::recrubo::FollowedKind::of(resource)?;
        self.payload["data"]["attributes"]["resource"]["id"].as_str()
    }

    /// The dedup key as stored ([`stored_key`]).
    pub fn stored_dedup_key(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.dedup_key.as_deref().map(stored_key)
    }
}

/// The most bytes of a key stored as it is.
const KEY_BYTES: usize = 200;

/// Whether a key is stored as it is: at most 200 bytes, no control character.
pub fn key_fits(key: &str) -> bool {
    key.len() <= KEY_BYTES && !key.chars().any(char::is_control)
}

/// A dedup key as stored. Keys come from senders (an `Idempotency-Key`, a body's `id`), and a
/// unique index holds a few kilobytes at most, PostgreSQL's text no NUL: a key longer than 200
/// bytes, or with a control character, is stored as `sha256:<hex>` of itself (still one stored
/// key per key), so that no sender's key can fail the batch it is written with.
pub fn stored_key(key: &str) -> std::borrow::Cow<'_, str> {
    if key_fits(key) {
        return std::borrow::Cow::Borrowed(key);
    }
    use sha2::Digest;
    std::borrow::Cow::Owned(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    ))
}

/// One flowd instance on a shared database, as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Instance {
    /// Its id (a UUID chosen at start).
    pub id: String,
    /// Its public listener's address.
    pub address: String,
    /// The hash of the rule set it has in force.
    pub rules_hash: String,
    /// When it last said it is alive.
    pub heartbeat_at: DateTime<Utc>,
    /// Executions it holds a lease on now.
    pub leases: i64,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored with this id.
    Stored(i64),
    /// Already stored before (same dedup key).
    Duplicate,
}

/// A stored event.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Inbox id.
    pub id: i64,
    /// Source.
    pub source: EventSource,
    /// Type.
    pub event_type: String,
    /// Payload.
    pub payload: Value,
    /// When accepted.
    pub received_at: DateTime<Utc>,
}

/// An execution to create.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// Its id (UUID).
    pub id: String,
    /// The rule.
    pub rule: String,
    /// The event that started it.
    pub event_id: Option<i64>,
    /// For handlers: the step whose run changed.
    pub handler_step: Option<String>,
    /// For handlers: the status it changed to.
    pub handler_status: Option<String>,
    /// `pending`, or `skipped` / `orphaned` (recorded, never run).
    pub status: String,
    /// The context (no secrets).
    pub context: Value,
    /// Why it was skipped or orphaned.
    pub note: Option<String>,
    /// The rule version it runs ([`crate::rules::Rule::version`]).
    pub rule_version: Option<String>,
    /// A `for_each: { list }` sweep: it pages through the list instead of running the steps.
    pub sweep: bool,
    /// Its first step creates a resource ([`crate::rules::StepKind::creates`]): the claim that
    /// starts it sets the in-doubt marker (`step_started_at`) itself, one write less per
    /// execution than a separate `begin_step`.
    pub first_step_creates: bool,
    /// Its flow-control group (DESIGN 2.5): the rendered `key`, or `""` for a rule whose
    /// `concurrency` has no key (the rule is one group); `None` outside flow control.
    pub flow_key: Option<String>,
    /// When it expires unfinished (`expires_after`).
    pub expires_at: Option<DateTime<Utc>>,
    /// The flow-control gate, judged in the transaction that stores it (see [`Store::admit`]):
    /// an execution of a group with room starts admitted, with no write of its own; one
    /// without room is stored waiting (or skipped, dropped). `None` outside flow control.
    pub gate: Option<Gate>,
    /// For a handler: the execution whose run changed (a cancellation of it cancels this too).
    pub parent: Option<String>,
    /// Its rendered `idempotency_key` and when the key is forgotten: stored with it, unless a
    /// live execution of the rule holds the key already (then it is stored `skipped`, naming
    /// that execution).
    pub idempotency: Option<(String, DateTime<Utc>)>,
}

/// Why a waiting execution waits (DESIGN 2.5), as the admin API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Waiting {
    /// `queue`, `throttle`, `quiet_hours` or `debounce`.
    pub kind: String,
    /// Until when, where that is known (throttle, quiet hours).
    pub until: Option<DateTime<Utc>>,
    /// The execution it waits behind (queue).
    pub behind: Option<String>,
}

/// When a debounce window opened at `first` ends after an event at `now`.
pub fn debounce_window_end(
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    debounce: crate::rules::ruleset::Debounce,
) -> DateTime<Utc> {
    let after = |at: DateTime<Utc>, span: std::time::Duration| {
        chrono::Duration::from_std(span)
            .ok()
            .and_then(|span| at.checked_add_signed(span))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    let end = after(now, debounce.period);
    match debounce.max_wait {
        Some(max_wait) => end.min(after(first, max_wait)),
        None => end,
    }
}

/// A new execution as stored when another holds its idempotency key: `skipped`, naming it.
pub fn idempotent_duplicate(execution: &NewExecution, holder: &str) -> NewExecution {
    let key = execution
        .idempotency
        .as_ref()
        .map(|(key, _)| key.as_str())
        .unwrap_or_default();
    NewExecution {
        status: "skipped".to_owned(),
        note: Some(format!(
            "duplicate of {holder} (idempotency_key `{key}` within its window)"
        )),
        gate: None,
        idempotency: None,
        ..execution.clone()
    }
}

/// The context of an execution that opens a debounce window: with `keep: all`, its event gets
/// `batch`, the list of the window's events (`{type, id, data}`, oldest first).
pub fn debounce_open(mut context: Value, keep: crate::rules::ruleset::DebounceKeep) -> Value {
    if keep == crate::rules::ruleset::DebounceKeep::All
        && let Some(event) = context.get_mut("event").and_then(Value::as_object_mut)
    {
        let mut first = event.clone();
        first.remove("batch");
        event.insert("batch".into(), Value::Array(vec![Value::Object(first)]));
    }
    context
}

/// The context of an open debounce window after one more event's execution (`context`) joins
/// it: the first kept, the last taken, or the event added to `event.batch`.
pub fn debounce_merge(
    open: Value,
    mut context: Value,
    keep: crate::rules::ruleset::DebounceKeep,
) -> Value {
    use crate::rules::ruleset::DebounceKeep;
    match keep {
        DebounceKeep::First => open,
        DebounceKeep::Last => context,
        DebounceKeep::All => {
            let mut open = open;
            let event = context
                .get_mut("event")
                .map(Value::take)
                .unwrap_or(Value::Null);
            let mut event = event;
            if let Some(map) = event.as_object_mut() {
                map.remove("batch");
            }
            if let Some(batch) = open
                .get_mut("event")
                .and_then(|event| event.get_mut("batch"))
                .and_then(Value::as_array_mut)
            {
                batch.push(event);
            }
            open
        }
    }
}

/// What [`Store::admit`] applies to an execution before its first step.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// Active executions per group, and what a later one does.
    pub concurrency: Option<crate::rules::ruleset::Concurrency>,
    /// Starts per group and sliding period.
    pub throttle: Option<crate::rules::ruleset::Throttle>,
    /// Quiet hours now: held until then.
    pub quiet_until: Option<DateTime<Utc>>,
    /// Events of the group merged (judged when the execution is stored).
    pub debounce: Option<crate::rules::ruleset::Debounce>,
    /// Whether the rule has `on_cancel` steps (an execution cancelled by `cancel_previous`
    /// gets a cancel execution).
    pub on_cancel: bool,
    /// How long a queued execution waits at most before it looks again (it is also woken when
    /// its group frees a slot).
    pub poll: Duration,
}

/// What [`Store::admit`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// It runs now; it cancelled these (`cancel_previous`).
    Admitted(Vec<String>),
    /// It waits (stored as such, lease given up).
    Waiting(Waiting),
    /// It ended without running: `skipped` or `dropped`, with the reason (stored).
    Ended(&'static str, String),
    /// It is no longer pending (cancelled or ended meanwhile): nothing to run.
    Gone,
}

/// A cancellation of a key group (DESIGN 2.5 `cancel_on`, `concurrency: cancel_previous`).
#[derive(Debug, Clone)]
pub struct CancelRequest {
    /// The rule.
    pub rule: String,
    /// The group.
    pub key: String,
    /// Only these executions of it (`cancel_previous`); every one when `None`.
    pub only: Option<Vec<String>>,
    /// Why, as the history shows it.
    pub reason: String,
    /// Whether the rule has `on_cancel` steps: each cancelled execution then gets a cancel
    /// execution (id `cancel-<id>`, handler status `cancel`) with its context.
    pub on_cancel: bool,
}

/// An execution as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Execution {
    /// Id.
    pub id: String,
    /// Rule.
    pub rule: String,
    /// Starting event.
    pub event_id: Option<i64>,
    /// Handler step.
    pub handler_step: Option<String>,
    /// Handler status.
    pub handler_status: Option<String>,
    /// Status.
    pub status: String,
    /// Context.
    pub context: Value,
    /// The next step to run.
    pub next_step: i64,
    /// Attempts of that step so far.
    pub attempt: i64,
    /// When it is due.
    pub next_attempt_at: DateTime<Utc>,
    /// Set while a step is in flight: after a crash, its outcome is unknown.
    pub step_started_at: Option<DateTime<Utc>>,
    /// The last error.
    pub last_error: Option<String>,
    /// The rule version it runs; `None` for executions stored before versions were.
    pub rule_version: Option<String>,
    /// A `for_each: { list }` sweep (see [`NewExecution::sweep`]).
    pub sweep: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Its flow-control group ([`NewExecution::flow_key`]).
    pub flow_key: Option<String>,
    /// When the gate let it start (flow control); `None` before, or outside flow control.
    pub admitted_at: Option<DateTime<Utc>>,
    /// Why it waits; its `status` is then `waiting`.
    pub waiting: Option<Waiting>,
    /// When it expires unfinished.
    pub expires_at: Option<DateTime<Utc>>,
    /// A cancellation asked for while it ran (another instance, or between two of its steps):
    /// it stops at its next step boundary.
    #[serde(skip)]
    pub cancel_requested: Option<String>,
    /// Set by `claim_executions` only: the claim left the in-doubt marker of the step it is
    /// at (its first, a create) in the database, so the executor sends without `begin_step`.
    /// `step_started_at` is then the value from before the claim (an earlier attempt's).
    #[serde(skip)]
    pub create_marked: bool,
}

/// A step attempt's record.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Execution.
    pub execution_id: String,
    /// Index in the execution's steps.
    pub step_index: i64,
    /// The step's id.
    pub step_id: Option<String>,
    /// Its kind.
    pub kind: String,
    /// `succeeded`, `failed`, `retrying` or `skipped`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i64,
    /// Rendered input, secrets redacted.
    pub input: Option<Value>,
    /// Output.
    pub output: Option<Value>,
    /// Error.
    pub error: Option<String>,
    /// Why the record is what it is, when that is not obvious (e.g. a resource adopted after an
    /// attempt without an answer).
    pub note: Option<String>,
    /// Started.
    pub started_at: DateTime<Utc>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The instance that ran it, where several share the database (Postgres: the store fills it
    /// in when it writes the record); `None` on SQLite, which has one.
    pub instance: Option<String>,
}

/// What polling a followed run found, for [`Store::mark_polled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMark {
    /// Read, status unchanged (or the change was put in the inbox): poll again after
    /// `reconcile_after`.
    Read,
    /// The poll failed: not polled again before this time (backoff per run).
    Failed(DateTime<Utc>),
    /// Recrubo answered 404: the run is gone; it is no longer polled.
    Gone,
}

/// A rule version to store.
#[derive(Debug, Clone)]
pub struct RuleVersion {
    /// SHA-256 of the definition.
    pub hash: String,
    /// The rule's name.
    pub rule: String,
    /// Canonical JSON.
    pub definition: std::sync::Arc<str>,
}

/// A webhook set aside until its run is known or `until` passes.
#[derive(Debug, Clone)]
pub struct Deferral {
    /// The inbox id.
    pub event_id: i64,
    /// The run or generation it is about; recording that resource releases the event.
    pub key: String,
    /// Processed at the latest from then on.
    pub until: DateTime<Utc>,
}

/// A run or generation flowd follows.
#[derive(Debug, Clone, Serialize)]
pub struct FollowedRun {
    /// The FlowRun or FlowGeneration id.
    pub resource_id: String,
    /// `flowRuns` or `flowGenerations`.
    pub resource_type: crate::recrubo::FollowedKind,
    /// The rule whose step started it.
    pub rule: String,
    /// That step's id.
    pub step_id: Option<String>,
    /// The starting execution.
    pub execution_id: String,
    /// The starting execution's context when the step ran.
    pub context: Value,
    /// Last known status.
    pub status: String,
    /// Recrubo's `updatedAt` of that status.
    pub remote_updated_at: Option<DateTime<Utc>>,
    /// When flowd last saw a change.
    pub changed_at: DateTime<Utc>,
    /// Whether the status is terminal.
    pub terminal: bool,
    /// Polls that failed in a row (reconciliation backs off by it).
    pub poll_failures: i64,
    /// When Recrubo answered 404 for it: gone, no longer polled.
    pub gone_at: Option<DateTime<Utc>>,
    /// When flowd cancelled it with its execution (DESIGN 2.5): no handler fires for it.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// When it is late (`deadline` on the step that started it): `on_status.deadline` fires
    /// once if it is not terminal then.
    pub deadline_at: Option<DateTime<Utc>>,
}

/// A status change to apply to a followed run.
#[derive(Debug, Clone)]
pub struct StatusChange {
    /// Run or generation id.
    pub resource_id: String,
    /// The new status.
    pub status: String,
    /// Recrubo's `updatedAt`.
    pub remote_updated_at: Option<DateTime<Utc>>,
    /// Whether the status is terminal.
    pub terminal: bool,
    /// The run's execution is in a flow-control group (its rule gates): a terminal status
    /// frees a slot, and the group's queue is woken.
    pub frees_slot: bool,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Id.
    pub id: i64,
    /// Execution.
    pub execution_id: String,
    /// Step index.
    pub step_index: i64,
    /// Rule.
    pub rule: String,
    /// Step kind.
    pub kind: String,
    /// The error.
    pub error: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When retried, if it was.
    pub retried_at: Option<DateTime<Utc>>,
}

/// The outcome of processing one event: what to store atomically with "processed".
#[derive(Debug, Clone, Default)]
pub struct EventOutcome {
    /// Executions to create.
    pub executions: Vec<NewExecution>,
    /// A status change of a followed run to record.
    pub status_change: Option<StatusChange>,
    /// (resource id, status) pairs that fire now; a pair already fired makes the outcome store
    /// nothing but "processed" — except that a terminal status still ends the following.
    pub fire: Option<(String, String)>,
}

/// A query of the execution history.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// Page size.
    pub limit: i64,
    /// Rows to skip.
    pub offset: i64,
}

/// What retrying a dead letter did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOutcome {
    /// The execution is pending again at the failed step.
    Retried,
    /// No such dead letter.
    NotFound,
    /// It was retried before.
    AlreadyRetried,
    /// The execution went on past the step (`continue_on_error`) or runs again already.
    ExecutionWentOn,
}

/// Ticks of one schedule rule to record.
#[derive(Debug, Clone)]
pub struct TickBatch {
    /// The rule.
    pub rule: String,
    /// Its schedule's fingerprint.
    pub fingerprint: String,
    /// (scheduled time, `fired` or `caught_up`, the inbox event).
    pub ticks: Vec<(DateTime<Utc>, &'static str, NewEvent)>,
}

/// The state store.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores events (one transaction, deduplicated by key).
    ///
    /// Takes the events by value: a batch of payloads is moved to the writer, never copied.
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<Vec<InsertOutcome>, StoreError>;
    /// Events not yet processed and not deferred past `now`, oldest first: at most `limit`, and
    /// no more than `max_bytes` of payload (at least one event, whatever its size).
    async fn unprocessed_events(
        &self,
        limit: i64,
        max_bytes: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Takes a page of the inbox for this instance's processor, as [`Store::unprocessed_events`]
    /// pages it, leased for `lease` so no other instance processes the same events meanwhile;
    /// a run's status changes are taken one at a time across instances, in order (see
    /// [`NewEvent::order_key`]). The default is `unprocessed_events`: a store only one process
    /// opens (SQLite) has one processor.
    async fn claim_events(
        &self,
        limit: i64,
        max_bytes: i64,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let _ = lease;
        self.unprocessed_events(limit, max_bytes, now).await
    }
    /// Gives claimed events back that were not completed (the processor stopped early): others
    /// may take them at once instead of when the lease ends.
    async fn release_events(&self, ids: &[i64]) -> Result<(), StoreError> {
        let _ = ids;
        Ok(())
    }
    /// Wakes `events` when another instance stored inbox events (or completed some, which may
    /// let the next of a run go) and `executions` when it stored executions. Returns at once
    /// where there are no other instances (SQLite).
    async fn listen(
        &self,
        events: std::sync::Arc<tokio::sync::Notify>,
        executions: std::sync::Arc<tokio::sync::Notify>,
    ) -> Result<(), StoreError> {
        let _ = (events, executions);
        Ok(())
    }
    /// Records that `instance` is alive (its heartbeat, address and rules) and answers the
    /// database's clock at that moment (instances compare it with their own: leases and claims
    /// are reckoned by each instance's clock); the default keeps nothing and has no clock of its
    /// own (one process: it is the cluster).
    async fn heartbeat(&self, instance: &Instance) -> Result<Option<DateTime<Utc>>, StoreError> {
        let _ = instance;
        Ok(None)
    }
    /// The instances that beat since `since`, each with the leases it holds; empty where the
    /// store keeps no heartbeats.
    async fn instances(&self, since: DateTime<Utc>) -> Result<Vec<Instance>, StoreError> {
        let _ = since;
        Ok(Vec::new())
    }
    /// Stores rule versions (hash, rule name, definition); a version stored before is kept.
    async fn save_rule_versions(&self, versions: &[RuleVersion]) -> Result<(), StoreError>;
    /// The definition of a stored rule version.
    async fn rule_version(&self, hash: &str) -> Result<Option<String>, StoreError>;
    /// Whether events of `key` older than the event `before` are still unprocessed, and if so
    /// the latest time one of them is deferred until (`None`: released, due now).
    async fn earlier_deferred(
        &self,
        key: &str,
        before: i64,
    ) -> Result<Option<Option<DateTime<Utc>>>, StoreError>;
    /// Whether some create's outcome is unknown (an execution in doubt): a webhook for a run
    /// flowd does not know may be about the run it made.
    async fn creates_in_doubt(&self) -> Result<bool, StoreError>;
    /// Extends the lease of an execution that is still running (a long step must not be
    /// claimed a second time).
    async fn renew_lease(&self, execution_id: &str, until: DateTime<Utc>)
    -> Result<(), StoreError>;
    /// Sets events aside (see [`Deferral`]).
    async fn defer_events(&self, deferrals: &[Deferral]) -> Result<(), StoreError>;
    /// Marks events processed and stores what they caused, in one transaction. For each event,
    /// false when its `fire` pair had fired already (then only "processed" is stored for it), or
    /// when another instance processed the event first (then nothing is stored for it). An
    /// event may appear twice in a row (an implied status, then its own).
    async fn complete_events(&self, batch: &[(i64, EventOutcome)])
    -> Result<Vec<bool>, StoreError>;
    /// Claims due pending executions for `lease`. One at its first step that creates
    /// ([`NewExecution::first_step_creates`], `next_step` 0) gets that step's in-doubt marker in
    /// the same write, kept if an earlier attempt set it, and comes back `create_marked` with
    /// `step_started_at` as it was before the claim.
    async fn claim_executions(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Execution>, StoreError>;
    /// Marks a step in flight (so a crash leaves a trace) and renews the lease.
    async fn begin_step(
        &self,
        execution_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(), StoreError>;
    /// Saves progress: context, next step, attempt, status, due time, error. `release` gives the
    /// lease up (the execution stops here: done, failed, or waiting for a retry).
    async fn save_execution(&self, execution: &Execution, release: bool) -> Result<(), StoreError>;
    /// Records a step attempt, saves the execution's progress and (for a create) starts
    /// following what it created — one transaction, one fsync.
    ///
    /// Recording a followed run releases the webhooks deferred for it; `event`, when given, is
    /// stored in the same transaction (the status a create answered with, e.g. a `sync: true`
    /// generation already finished, goes through the inbox like a webhook). An execution no
    /// longer `pending` (its last step done) gives its lease up in the same write.
    async fn finish_step(
        &self,
        record: &StepRecord,
        execution: &Execution,
        followed: Option<&FollowedRun>,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError>;
    /// Records a step attempt.
    async fn record_step(&self, record: &StepRecord) -> Result<(), StoreError>;
    /// A followed run.
    async fn followed(&self, resource_id: &str) -> Result<Option<FollowedRun>, StoreError>;
    /// Followed runs that are not terminal and unchanged since `before`.
    ///
    /// Only runs not terminal, unchanged since `before` and not backing off at `now`, the ones
    /// checked longest ago first.
    async fn stale_followed(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError>;
    /// [`Store::stale_followed`], taken for this instance's reconciler until `until` (no other
    /// instance polls them meanwhile; [`Store::mark_polled`] ends the claim). The default, for
    /// a store with one instance, only lists them.
    async fn claim_stale_followed(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
        until: DateTime<Utc>,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        let _ = until;
        self.stale_followed(before, now, limit).await
    }
    /// Notes what polling a followed run found (see [`PollMark`]).
    async fn mark_polled(
        &self,
        resource_id: &str,
        mark: PollMark,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Adds a dead letter.
    async fn add_dead_letter(
        &self,
        execution: &Execution,
        kind: &str,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Puts a dead letter's execution back to pending at the failed step.
    async fn retry_dead_letter(&self, id: i64) -> Result<RetryOutcome, StoreError>;
    /// Dead letters, newest first.
    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError>;
    /// Executions, newest first, filtered and paged.
    async fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError>;
    /// One execution.
    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError>;
    /// Deletes finished executions that are older than `before` or beyond the newest `keep`
    /// (either is enough), with their steps and the processed events nothing refers to, and
    /// schedule ticks older than `before` other than each rule's last; returns how many
    /// executions went. Pending executions and followed runs stay.
    async fn prune_history(&self, before: DateTime<Utc>, keep: i64) -> Result<u64, StoreError>;
    /// The step records of an execution.
    async fn step_records(&self, execution_id: &str) -> Result<Vec<StepRecord>, StoreError>;
    /// Followed runs, most recently changed first.
    async fn followed_runs(&self, limit: i64) -> Result<Vec<FollowedRun>, StoreError>;
    /// The schedule state of every rule that has one: rule → (fingerprint, last tick). One
    /// read, so that 10,000 schedules start without 10,000 queries.
    async fn schedule_states(
        &self,
    ) -> Result<std::collections::HashMap<String, (String, DateTime<Utc>)>, StoreError>;
    /// Sets schedule states, (rule, fingerprint, last tick) each, in one transaction (a new or
    /// changed schedule starts from its `last_tick_at`).
    async fn set_schedule_states(
        &self,
        states: &[(String, String, DateTime<Utc>)],
    ) -> Result<(), StoreError>;
    /// Records ticks of many rules and their inbox events in one transaction, each tick at most
    /// once, and moves each rule's state to its last tick. Returns, per rule and tick, whether
    /// the tick was new.
    async fn record_ticks(&self, batches: &[TickBatch]) -> Result<Vec<Vec<bool>>, StoreError>;
    /// Stores executions, ignoring ids already stored (sweeps re-run after a crash).
    async fn insert_executions(&self, executions: &[NewExecution]) -> Result<(), StoreError>;
    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// The flow-control gate (DESIGN 2.5), one transaction holding the execution's group: lets
    /// a pending execution with a `flow_key` start, or makes it wait (`queue`, `throttle`,
    /// `quiet_hours`: status `waiting`, due again when its wait ends), or ends it (`skipped`,
    /// `dropped`), or cancels the group's active ones first (`cancel_previous`). Active = let
    /// start and not ended, or following a run that is not terminal. Within a group the older
    /// execution goes first. An execution admitted before is admitted again (a retry).
    async fn admit(
        &self,
        execution_id: &str,
        gate: &Gate,
        now: DateTime<Utc>,
    ) -> Result<Admission, StoreError>;
    /// Cancels a key group: each pending (or waiting) execution of it is `cancelled`, and so is
    /// each that follows a run not terminal (the run too: no more handlers fire for it); one
    /// running now under a live lease is asked to stop instead (`cancel_requested`), and stops
    /// at its next step boundary through [`Store::cancel_now`]. Returns the ids cancelled now.
    /// Idempotent: a second request cancels nothing twice.
    async fn cancel(
        &self,
        request: &CancelRequest,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;
    /// Cancels one execution now (its runner found `cancel_requested`), as [`Store::cancel`]
    /// would, whatever its lease.
    async fn cancel_now(
        &self,
        execution_id: &str,
        reason: &str,
        on_cancel: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    /// A cancellation asked for an execution ([`Store::cancel`]), if any.
    async fn cancel_requested(&self, execution_id: &str) -> Result<Option<String>, StoreError>;
    /// How many executions wait, by rule and kind of wait.
    async fn waiting_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError>;
    /// Followed runs past their deadline, not terminal, whose deadline has not fired: the ones
    /// late longest first, at most `limit`.
    async fn due_deadlines(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError>;
    /// Fires deadlines, each once (also across instances): a run's deadline is marked fired and
    /// its handler execution, if it has one, stored in the same transaction. Returns how many
    /// fired now.
    async fn fire_deadlines(
        &self,
        fires: &[(String, Option<NewExecution>)],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError>;
    /// The execution that holds a rule's idempotency key at `now`, if one does.
    async fn idempotent_execution(
        &self,
        rule: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;
    /// Wakes the queued executions of a group (one of it ended): due now.
    async fn wake_group(&self, rule: &str, key: &str, now: DateTime<Utc>)
    -> Result<(), StoreError>;
}
