//! The SQLite store (rusqlite): WAL, `synchronous = FULL` (an accepted event survives power loss,
//! not only a crash), a busy timeout, embedded migrations.
//!
//! Threads, not async: SQLite is a library doing blocking file I/O, so the store owns OS threads
//! and talks to the async world through channels. One writer thread holds the only connection
//! that writes — SQLite's single writer never meets `SQLITE_BUSY` — and applies every queued
//! write inside one transaction (group commit: one fsync serves a batch). Two reader threads
//! answer queries (WAL: readers never wait for the writer). A job crosses threads twice (there
//! and back), however many rows it touches. sqlx's SQLite driver, used before, also ran each
//! connection on a thread but sent every statement and every returned row across: the intake
//! took 9,300 events/s with it and 20,000 with this (bench/intake_load.sh, same machine).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{
    DeadLetter, Deferral, EventOutcome, EventSource, Execution, ExecutionFilter, FollowedRun,
    InsertOutcome, NewEvent, NewExecution, PollMark, RetryOutcome, RuleVersion, StepRecord, Store,
    StoreError, StoredEvent, TickBatch,
};

/// The migrations, in order; `PRAGMA user_version` counts the ones applied.
const MIGRATIONS: [&str; 7] = [
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_schedules.sql"),
    include_str!("../../migrations/sqlite/0003_hardening.sql"),
    include_str!("../../migrations/sqlite/0004_rule_versions.sql"),
    include_str!("../../migrations/sqlite/0005_sweeps.sql"),
    include_str!("../../migrations/sqlite/0006_create_marks.sql"),
    include_str!("../../migrations/sqlite/0007_flow_control.sql"),
];

mod flow;

/// How many threads answer reads.
const READERS: usize = 2;
/// The most writes one transaction takes.
const WRITE_BATCH: usize = 256;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// Every write goes to the writer thread.
    writer: mpsc::Sender<WriteJob>,
    /// Reads go to the reader threads.
    readers: std::sync::mpsc::Sender<ReadJob>,
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Database(err.to_string())
    }
}

fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| StoreError::Corrupt(format!("time `{text}`: {err}")))
}

fn parse_optional_time(text: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.as_deref().map(parse_time).transpose()
}

fn parse_json(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::Corrupt(format!("JSON: {err}")))
}

fn parse_optional_json(text: Option<String>) -> Result<Option<Value>, StoreError> {
    text.as_deref().map(parse_json).transpose()
}

/// Where a database URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    File(String),
    Memory,
}

/// Reads `sqlite://flowd.db`, `sqlite:///abs/flowd.db`, `sqlite:flowd.db` and `sqlite::memory:`
/// (query parameters such as `?mode=rwc` are accepted and ignored: the file is always created
/// when missing).
fn location(url: &str) -> Result<Location, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            StoreError::Database(format!(
                "invalid database URL `{url}`: expected sqlite://PATH"
            ))
        })?;
    let path = rest.split('?').next().unwrap_or_default();
    match path {
        "" => Err(StoreError::Database(format!(
            "invalid database URL `{url}`: no file path"
        ))),
        ":memory:" => Ok(Location::Memory),
        path => Ok(Location::File(path.to_owned())),
    }
}

fn connect(location: &Location, memory_name: &str) -> Result<Connection, StoreError> {
    let connection = match location {
        Location::File(path) => Connection::open(path)?,
        // Several connections share one in-memory database through a named shared cache.
        Location::Memory => Connection::open_with_flags(
            format!("file:{memory_name}?mode=memory&cache=shared"),
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_URI,
        )?,
    };
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

/// Applies the migrations not applied yet, each in its own transaction. A database made by
/// flowd 0.1 (sqlx's migration table) counts its applied migrations from that table.
fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let mut applied: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if applied == 0 {
        let sqlx_table: Option<String> = connection
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        if sqlx_table.is_some() {
            applied = connection.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
                [],
                |row| row.get(0),
            )?;
        }
    }
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        return Err(StoreError::Database(format!(
            "the database has {applied} migrations applied but this flowd knows {known}: it was written by a newer flowd"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(sql).map_err(|err| {
            StoreError::Database(format!("migration {} failed: {err}", index + 1))
        })?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url`
    /// (`sqlite://flowd.db`, `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let location = location(url)?;
        let memory_name = format!("flowd-{}", uuid::Uuid::new_v4());
        let (opened, ready) = oneshot::channel();
        let (writer, jobs) = mpsc::channel(4096);
        let writer_location = location.clone();
        let writer_memory = memory_name.clone();
        std::thread::Builder::new()
            .name("flowd-sqlite-writer".into())
            .spawn(move || {
                let setup = (|| {
                    let mut connection = connect(&writer_location, &writer_memory)?;
                    if writer_location != Location::Memory {
                        connection.pragma_update(None, "journal_mode", "WAL")?;
                        // Checkpoint every ~40 MiB of WAL instead of 4 MiB: a page written by
                        // many transactions in between is copied to the database once. End to
                        // end this took 2,770 runs/s to 4,300-4,800 (bench/e2e_load.sh); a
                        // larger page cache or mmap made no difference.
                        connection.pragma_update(None, "wal_autocheckpoint", 10_000)?;
                    }
                    migrate(&mut connection)?;
                    // A SQLite file has one flowd process: leases left by a previous process
                    // that died are void, so its work resumes at once instead of when the
                    // leases expire.
                    connection.execute(
                        "UPDATE executions SET lease_until = NULL WHERE lease_until IS NOT NULL",
                        [],
                    )?;
                    Ok::<_, StoreError>(connection)
                })();
                match setup {
                    Ok(connection) => {
                        let _ = opened.send(Ok(()));
                        write_loop(connection, jobs);
                    }
                    Err(err) => {
                        let _ = opened.send(Err(err));
                    }
                }
            })
            .map_err(|err| StoreError::Database(format!("cannot start the writer: {err}")))?;
        ready
            .await
            .map_err(|_| StoreError::Database("the database writer stopped at start".into()))??;

        let (readers, reads) = std::sync::mpsc::channel::<ReadJob>();
        let reads = Arc::new(Mutex::new(reads));
        for index in 0..READERS {
            let connection = connect(&location, &memory_name)?;
            let reads = Arc::clone(&reads);
            std::thread::Builder::new()
                .name(format!("flowd-sqlite-reader-{index}"))
                .spawn(move || read_loop(&connection, &reads))
                .map_err(|err| StoreError::Database(format!("cannot start a reader: {err}")))?;
        }
        Ok(SqliteStore { writer, readers })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriteJob { op, reply })
            .await
            .map_err(|_| StoreError::Database("the database writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the database writer has stopped".into()))?
    }

    /// Runs `query` on a reader thread.
    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.readers
            .send(Box::new(move |connection: &Connection| {
                let _ = reply.send(query(connection));
            }))
            .map_err(|_| StoreError::Database("the database readers have stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the database readers have stopped".into()))?
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// A reader: takes the next read job, runs it, until the store is dropped.
fn read_loop(connection: &Connection, reads: &Mutex<std::sync::mpsc::Receiver<ReadJob>>) {
    loop {
        let job = match reads.lock() {
            Ok(reads) => reads.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(connection),
            Err(_) => return,
        }
    }
}

/// An execution due to be claimed at `?1`: pending, its time come, no live lease.
const DUE: &str =
    "status = 'pending' AND next_attempt_at <= ?1 AND (lease_until IS NULL OR lease_until < ?1)";

const EXECUTION_COLUMNS: &str = "id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, step_started_at, last_error, rule_version, sweep, created_at, updated_at, flow_key, admitted_at, wait_kind, wait_until, wait_behind, expires_at, cancel_requested";

fn execution_from_row(row: &Row<'_>) -> Result<Execution, StoreError> {
    let wait_kind: Option<String> = row.get("wait_kind")?;
    let status: String = row.get("status")?;
    let waiting = match wait_kind {
        Some(kind) if status == "pending" => Some(super::Waiting {
            kind,
            until: parse_optional_time(row.get("wait_until")?)?,
            behind: row.get("wait_behind")?,
        }),
        _ => None,
    };
    Ok(Execution {
        status: if waiting.is_some() {
            "waiting".to_owned()
        } else {
            status
        },
        waiting,
        flow_key: row.get("flow_key")?,
        admitted_at: parse_optional_time(row.get("admitted_at")?)?,
        expires_at: parse_optional_time(row.get("expires_at")?)?,
        cancel_requested: row.get("cancel_requested")?,
        id: row.get("id")?,
        rule: row.get("rule")?,
        event_id: row.get("event_id")?,
        handler_step: row.get("handler_step")?,
        handler_status: row.get("handler_status")?,
        context: parse_json(&row.get::<_, String>("context")?)?,
        next_step: row.get("next_step")?,
        attempt: row.get("attempt")?,
        next_attempt_at: parse_time(&row.get::<_, String>("next_attempt_at")?)?,
        step_started_at: parse_optional_time(row.get("step_started_at")?)?,
        last_error: row.get("last_error")?,
        rule_version: row.get("rule_version")?,
        sweep: row.get::<_, i64>("sweep")? != 0,
        created_at: parse_time(&row.get::<_, String>("created_at")?)?,
        updated_at: parse_time(&row.get::<_, String>("updated_at")?)?,
        create_marked: false,
    })
}

fn followed_from_row(row: &Row<'_>) -> Result<FollowedRun, StoreError> {
    Ok(FollowedRun {
        resource_id: row.get("resource_id")?,
        resource_type: {
            let text: String = row.get("resource_type")?;
            crate::recrubo::FollowedKind::of(&text).ok_or_else(|| {
                StoreError::Database(format!("a followed run of an unknown type `{text}`"))
            })?
        },
        rule: row.get("rule")?,
        step_id: row.get("step_id")?,
        execution_id: row.get("execution_id")?,
        context: parse_json(&row.get::<_, String>("context")?)?,
        status: row.get("status")?,
        remote_updated_at: parse_optional_time(row.get("remote_updated_at")?)?,
        changed_at: parse_time(&row.get::<_, String>("changed_at")?)?,
        terminal: row.get::<_, i64>("terminal")? != 0,
        poll_failures: row.get("poll_failures")?,
        gone_at: parse_optional_time(row.get("gone_at")?)?,
        cancelled_at: parse_optional_time(row.get("cancelled_at")?)?,
        deadline_at: parse_optional_time(row.get("deadline_at")?)?,
    })
}

fn step_from_row(row: &Row<'_>) -> Result<StepRecord, StoreError> {
    Ok(StepRecord {
        execution_id: row.get("execution_id")?,
        step_index: row.get("step_index")?,
        step_id: row.get("step_id")?,
        kind: row.get("kind")?,
        status: row.get("status")?,
        attempts: row.get("attempts")?,
        input: parse_optional_json(row.get("input")?)?,
        output: parse_optional_json(row.get("output")?)?,
        error: row.get("error")?,
        note: row.get("note")?,
        started_at: parse_time(&row.get::<_, String>("started_at")?)?,
        finished_at: parse_optional_time(row.get("finished_at")?)?,
        instance: None,
    })
}

fn dead_letter_from_row(row: &Row<'_>) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.get("id")?,
        execution_id: row.get("execution_id")?,
        step_index: row.get("step_index")?,
        rule: row.get("rule")?,
        kind: row.get("kind")?,
        error: row.get("error")?,
        created_at: parse_time(&row.get::<_, String>("created_at")?)?,
        retried_at: parse_optional_time(row.get("retried_at")?)?,
    })
}

fn event_from_row(row: &Row<'_>) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: row.get("id")?,
        source: EventSource::parse(&row.get::<_, String>("source")?),
        event_type: row.get("event_type")?,
        payload: parse_json(&row.get::<_, String>("payload")?)?,
        received_at: parse_time(&row.get::<_, String>("received_at")?)?,
    })
}

/// Runs a query with `params` and converts every row with `convert`.
fn rows<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    convert: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(convert(row)?);
    }
    Ok(out)
}

/// Like [`rows`], for at most one row.
fn row<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    convert: fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    rows.next()?.map(convert).transpose()
}

/// Saves an execution's progress. `release` gives its lease up (it stops: done, failed, or
/// waiting for a retry); progress saved between two steps keeps the lease, or another worker
/// could claim the execution while this one runs its next step.
fn update_execution(
    transaction: &Transaction<'_>,
    execution: &Execution,
    release: bool,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "UPDATE executions SET status = ?, context = ?, next_step = ?, attempt = ?, next_attempt_at = ?, step_started_at = ?, last_error = ?, lease_until = CASE WHEN ? THEN NULL ELSE lease_until END, updated_at = ? WHERE id = ?",
        )?
        .execute(params![
            execution.status,
            execution.context.to_string(),
            execution.next_step,
            execution.attempt,
            time_text(execution.next_attempt_at),
            execution.step_started_at.map(time_text),
            execution.last_error,
            release,
            time_text(Utc::now()),
            execution.id,
        ])?;
    Ok(())
}

fn insert_step(transaction: &Transaction<'_>, record: &StepRecord) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "INSERT INTO step_runs (execution_id, step_index, step_id, kind, status, attempts, input, output, error, note, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id, step_index) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, input = excluded.input, output = excluded.output, error = excluded.error, note = excluded.note, finished_at = excluded.finished_at",
        )?
        .execute(params![
            record.execution_id,
            record.step_index,
            record.step_id,
            record.kind,
            record.status,
            record.attempts,
            record.input.as_ref().map(Value::to_string),
            record.output.as_ref().map(Value::to_string),
            record.error,
            record.note,
            time_text(record.started_at),
            record.finished_at.map(time_text),
        ])?;
    Ok(())
}

fn insert_followed(
    transaction: &Transaction<'_>,
    followed: &FollowedRun,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "INSERT INTO followed (resource_id, resource_type, rule, step_id, execution_id, context, status, remote_updated_at, changed_at, terminal, deadline_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (resource_id) DO NOTHING",
        )?
        .execute(params![
            followed.resource_id,
            followed.resource_type.json_api_type(),
            followed.rule,
            followed.step_id,
            followed.execution_id,
            followed.context.to_string(),
            followed.status,
            followed.remote_updated_at.map(time_text),
            time_text(followed.changed_at),
            i64::from(followed.terminal),
            followed.deadline_at.map(time_text),
        ])?;
    Ok(())
}

/// Stores a new execution, due at once; an id stored before is left alone (sweeps re-run).
fn insert_execution(
    transaction: &Transaction<'_>,
    execution: &NewExecution,
    now: &str,
) -> Result<(), StoreError> {
    insert_execution_admitted(transaction, execution, now, false)
}

/// [`insert_execution`], admitted by its flow-control gate as stored (`admitted`).
fn insert_execution_admitted(
    transaction: &Transaction<'_>,
    execution: &NewExecution,
    now: &str,
    admitted: bool,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "INSERT INTO executions (id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, last_error, rule_version, sweep, first_step_creates, created_at, updated_at, flow_key, expires_at, parent_id, admitted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0, ?8, ?9, ?10, ?11, ?12, ?8, ?8, ?13, ?14, ?15, CASE WHEN ?16 THEN ?8 END) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            execution.id,
            execution.rule,
            execution.event_id,
            execution.handler_step,
            execution.handler_status,
            execution.status,
            execution.context.to_string(),
            now,
            execution.note,
            execution.rule_version,
            i64::from(execution.sweep),
            i64::from(execution.first_step_creates),
            execution.flow_key,
            execution.expires_at.map(time_text),
            execution.parent,
            admitted,
        ])?;
    Ok(())
}

/// Stores a new execution: its idempotency key claimed first (a key another live execution
/// holds stores it `skipped`), then its flow-control gate judged, in the same transaction.
fn store_new(
    transaction: &Transaction<'_>,
    execution: &NewExecution,
    now: &str,
) -> Result<(), StoreError> {
    if let Some((key, until)) = &execution.idempotency
        && execution.status == "pending"
    {
        let claimed = transaction
            .prepare_cached("INSERT INTO idempotency (rule, key, execution_id, until) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (rule, key) DO UPDATE SET execution_id = excluded.execution_id, until = excluded.until WHERE idempotency.until <= ?5")?
            .execute(params![execution.rule, key, execution.id, time_text(*until), now])?;
        if claimed == 0 {
            let holder: String = transaction
                .prepare_cached(
                    "SELECT execution_id FROM idempotency WHERE rule = ?1 AND key = ?2",
                )?
                .query_row(params![execution.rule, key], |row| row.get(0))?;
            if holder != execution.id {
                let duplicate = super::idempotent_duplicate(execution, &holder);
                return insert_execution(transaction, &duplicate, now);
            }
        }
    }
    // The common case: a group no other execution is in (a new candidate) has room and nothing
    // ahead: admitted as stored, with one index lookup and no write of its own.
    if let (Some(gate), Some(key)) = (&execution.gate, &execution.flow_key)
        && execution.status == "pending"
        && gate.debounce.is_none()
        && gate.quiet_until.is_none()
        && !transaction
            .prepare_cached("SELECT 1 FROM executions WHERE rule = ?1 AND flow_key = ?2 LIMIT 1")?
            .exists(params![execution.rule, key])?
    {
        return insert_execution_admitted(transaction, execution, now, true);
    }
    insert_execution(transaction, execution, now)?;
    admit_new(transaction, execution)
}

/// Judges a new execution's flow-control gate in the transaction that stores it: the common
/// case (a group with room) costs no write of its own.
fn admit_new(transaction: &Transaction<'_>, execution: &NewExecution) -> Result<(), StoreError> {
    if let Some(gate) = &execution.gate
        && execution.status == "pending"
    {
        flow::admit(transaction, &execution.id, gate, Utc::now())?;
    }
    Ok(())
}

/// Deletes finished executions older than `before` or beyond the newest `keep`, their steps, and
/// processed events nothing refers to any more. Pending executions and followed runs stay.
fn prune(
    transaction: &Transaction<'_>,
    before: DateTime<Utc>,
    keep: i64,
) -> Result<u64, StoreError> {
    let doomed = "SELECT id FROM executions WHERE status != 'pending' AND (created_at < ?1 OR id NOT IN (SELECT id FROM executions ORDER BY created_at DESC LIMIT ?2))";
    let before = time_text(before);
    transaction.execute(
        &format!("DELETE FROM step_runs WHERE execution_id IN ({doomed})"),
        params![before, keep],
    )?;
    let deleted = transaction.execute(
        &format!("DELETE FROM executions WHERE id IN ({doomed})"),
        params![before, keep],
    )?;
    transaction.execute(
        "DELETE FROM events WHERE processed_at IS NOT NULL AND processed_at < ? AND id NOT IN (SELECT event_id FROM executions WHERE event_id IS NOT NULL)",
        params![before],
    )?;
    // A tick older than its rule's last tick can never fire again (the scheduler only fires
    // after `schedule_state.last_tick_at`), so old tick rows only keep history.
    transaction.execute(
        "DELETE FROM schedule_ticks WHERE fired_at < ?1 AND scheduled_at < COALESCE((SELECT last_tick_at FROM schedule_state WHERE schedule_state.rule = schedule_ticks.rule), '9999')",
        params![before],
    )?;
    Ok(deleted as u64)
}

/// A write, applied by the writer thread inside a shared transaction.
enum WriteOp {
    InsertEvents(Vec<NewEvent>),
    CompleteEvents(Vec<(i64, EventOutcome)>),
    Claim {
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    },
    BeginStep {
        execution_id: String,
        now: DateTime<Utc>,
        lease: Duration,
    },
    SaveExecution(Box<Execution>, bool),
    FinishStep(Box<(StepRecord, Execution, Option<FollowedRun>, Option<NewEvent>)>),
    RecordStep(Box<StepRecord>),
    MarkPolled {
        resource_id: String,
        mark: PollMark,
        now: DateTime<Utc>,
    },
    Defer(Vec<Deferral>),
    SaveRuleVersions(Vec<RuleVersion>),
    RenewLease {
        execution_id: String,
        until: DateTime<Utc>,
    },
    DeadLetter {
        execution: Box<Execution>,
        kind: String,
        error: String,
    },
    SetScheduleStates(Vec<(String, String, DateTime<Utc>)>),
    RecordTicks(Vec<TickBatch>),
    InsertExecutions(Vec<NewExecution>),
    RetryDeadLetter(i64),
    Prune {
        before: DateTime<Utc>,
        keep: i64,
    },
    Admit(String, Box<super::Gate>, DateTime<Utc>),
    Cancel(Box<super::CancelRequest>, DateTime<Utc>),
    CancelNow {
        id: String,
        reason: String,
        on_cancel: bool,
        now: DateTime<Utc>,
    },
    WakeGroup(String, String, DateTime<Utc>),
    FireDeadlines(Vec<(String, Option<NewExecution>)>, DateTime<Utc>),
}

/// What a write returns.
enum WriteResult {
    Done,
    Inserted(Vec<InsertOutcome>),
    Completed(Vec<bool>),
    Claimed(Vec<Execution>),
    Ticks(Vec<Vec<bool>>),
    Retry(RetryOutcome),
    Pruned(u64),
    Admission(super::Admission),
    Cancelled(Vec<String>),
    Flag(bool),
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

fn apply(transaction: &Transaction<'_>, op: &WriteOp) -> Result<WriteResult, StoreError> {
    match op {
        WriteOp::InsertEvents(events) => {
            insert_events(transaction, events).map(WriteResult::Inserted)
        }
        WriteOp::CompleteEvents(batch) => {
            complete_events(transaction, batch).map(WriteResult::Completed)
        }
        WriteOp::Claim { now, lease, limit } => {
            claim(transaction, *now, *lease, *limit).map(WriteResult::Claimed)
        }
        WriteOp::BeginStep {
            execution_id,
            now,
            lease,
        } => {
            let lease_until =
                time_text(*now + chrono::Duration::from_std(*lease).unwrap_or_default());
            transaction
                .prepare_cached("UPDATE executions SET step_started_at = COALESCE(step_started_at, ?1), lease_until = ?2, updated_at = ?1 WHERE id = ?3")?
                .execute(params![time_text(*now), lease_until, execution_id])?;
            Ok(WriteResult::Done)
        }
        WriteOp::SaveExecution(execution, release) => {
            update_execution(transaction, execution, *release).map(|_| WriteResult::Done)
        }
        WriteOp::FinishStep(parts) => {
            let (record, execution, followed, event) = parts.as_ref();
            insert_step(transaction, record)?;
            update_execution(transaction, execution, execution.status != "pending")?;
            if let Some(followed) = followed {
                insert_followed(transaction, followed)?;
                // Webhooks that overtook the create's answer wait no longer.
                transaction
                    // `defer_key` stays: a later webhook of the run finds these still unprocessed
                    // and lets them go first.
                    .prepare_cached("UPDATE events SET deferred_until = NULL WHERE defer_key = ? AND processed_at IS NULL")?
                    .execute([&followed.resource_id])?;
            }
            if let Some(event) = event {
                insert_events(transaction, std::slice::from_ref(event))?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::RecordStep(record) => insert_step(transaction, record).map(|_| WriteResult::Done),
        WriteOp::MarkPolled {
            resource_id,
            mark,
            now,
        } => {
            let now = time_text(*now);
            match mark {
                // `changed_at` doubles as "last checked": a run read is not read again before
                // `reconcile_after`.
                PollMark::Read => transaction
                    .prepare_cached("UPDATE followed SET changed_at = ?, poll_after = NULL, poll_failures = 0 WHERE resource_id = ?")?
                    .execute(params![now, resource_id])?,
                PollMark::Failed(until) => transaction
                    .prepare_cached("UPDATE followed SET poll_after = ?, poll_failures = poll_failures + 1 WHERE resource_id = ?")?
                    .execute(params![time_text(*until), resource_id])?,
                PollMark::Gone => transaction
                    .prepare_cached("UPDATE followed SET terminal = 1, gone_at = ?, poll_after = NULL WHERE resource_id = ?")?
                    .execute(params![now, resource_id])?,
            };
            Ok(WriteResult::Done)
        }
        WriteOp::RenewLease {
            execution_id,
            until,
        } => {
            transaction
                .prepare_cached("UPDATE executions SET lease_until = ? WHERE id = ? AND status = 'pending' AND lease_until IS NOT NULL")?
                .execute(params![time_text(*until), execution_id])?;
            Ok(WriteResult::Done)
        }
        WriteOp::SaveRuleVersions(versions) => {
            let now = time_text(Utc::now());
            let mut statement = transaction.prepare_cached(
                "INSERT INTO rule_versions (hash, rule, definition, first_seen) VALUES (?, ?, ?, ?) ON CONFLICT (hash) DO NOTHING",
            )?;
            for version in versions {
                statement.execute(params![
                    version.hash,
                    version.rule,
                    &*version.definition,
                    now
                ])?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::Defer(deferrals) => {
            let mut statement = transaction.prepare_cached(
                // Not when the run was recorded meanwhile: it released its webhooks already.
                "UPDATE events SET deferred_until = ?1, defer_key = ?2 WHERE id = ?3 AND processed_at IS NULL AND NOT EXISTS (SELECT 1 FROM followed WHERE resource_id = ?2)",
            )?;
            for deferral in deferrals {
                statement.execute(params![
                    time_text(deferral.until),
                    deferral.key,
                    deferral.event_id
                ])?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::SetScheduleStates(states) => {
            // The same schedule never moves back; a changed one starts where it is told.
            let mut statement = transaction.prepare_cached("INSERT INTO schedule_state (rule, fingerprint, last_tick_at) VALUES (?, ?, ?) ON CONFLICT (rule) DO UPDATE SET last_tick_at = CASE WHEN schedule_state.fingerprint = excluded.fingerprint THEN MAX(schedule_state.last_tick_at, excluded.last_tick_at) ELSE excluded.last_tick_at END, fingerprint = excluded.fingerprint")?;
            for (rule, fingerprint, last_tick_at) in states {
                statement.execute(params![rule, fingerprint, time_text(*last_tick_at)])?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::RecordTicks(batches) => record_ticks(transaction, batches).map(WriteResult::Ticks),
        WriteOp::Admit(id, gate, now) => {
            flow::admit(transaction, id, gate, *now).map(WriteResult::Admission)
        }
        WriteOp::Cancel(request, now) => {
            flow::cancel(transaction, request, *now).map(WriteResult::Cancelled)
        }
        WriteOp::CancelNow {
            id,
            reason,
            on_cancel,
            now,
        } => flow::cancel_one(transaction, id, reason, *on_cancel, *now, false)
            .map(WriteResult::Flag),
        WriteOp::FireDeadlines(fires, now) => {
            let now = time_text(*now);
            let mut fired = 0u64;
            for (resource_id, execution) in fires {
                let marked = transaction
                    .prepare_cached("UPDATE followed SET deadline_fired_at = ?1 WHERE resource_id = ?2 AND deadline_fired_at IS NULL AND terminal = 0")?
                    .execute(params![now, resource_id])?;
                if marked == 1 {
                    fired += 1;
                    if let Some(execution) = execution {
                        insert_execution(transaction, execution, &now)?;
                    }
                }
            }
            Ok(WriteResult::Pruned(fired))
        }
        WriteOp::WakeGroup(rule, key, now) => {
            flow::wake_group(transaction, rule, key, *now).map(|_| WriteResult::Done)
        }
        WriteOp::Prune { before, keep } => {
            prune(transaction, *before, *keep).map(WriteResult::Pruned)
        }
        WriteOp::RetryDeadLetter(id) => retry_dead_letter(transaction, *id).map(WriteResult::Retry),
        WriteOp::InsertExecutions(executions) => {
            let now = time_text(Utc::now());
            for execution in executions {
                store_new(transaction, execution, &now)?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::DeadLetter {
            execution,
            kind,
            error,
        } => {
            transaction
                .prepare_cached("INSERT INTO dead_letters (execution_id, step_index, rule, kind, error, created_at) VALUES (?, ?, ?, ?, ?, ?)")?
                .execute(params![
                    execution.id,
                    execution.next_step,
                    execution.rule,
                    kind,
                    error,
                    time_text(Utc::now()),
                ])?;
            Ok(WriteResult::Done)
        }
    }
}

/// Stores events; one carrying a dedup key stored before is absorbed as a duplicate.
fn insert_events(
    transaction: &Transaction<'_>,
    events: &[NewEvent],
) -> Result<Vec<InsertOutcome>, StoreError> {
    let now = time_text(Utc::now());
    let mut statement = transaction.prepare_cached(
        "INSERT INTO events (source, event_type, dedup_key, payload, received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
    )?;
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        let changed = statement.execute(params![
            event.source.as_str(),
            event.event_type,
            event.stored_dedup_key(),
            event.payload.to_string(),
            now,
        ])?;
        outcomes.push(if changed == 1 {
            InsertOutcome::Stored(transaction.last_insert_rowid())
        } else {
            InsertOutcome::Duplicate
        });
    }
    Ok(outcomes)
}

/// Records ticks (each at most once), their inbox events, and each rule's last tick.
fn record_ticks(
    transaction: &Transaction<'_>,
    batches: &[TickBatch],
) -> Result<Vec<Vec<bool>>, StoreError> {
    let now = time_text(Utc::now());
    let mut tick = transaction.prepare_cached(
        "INSERT INTO schedule_ticks (rule, scheduled_at, fired_at, result) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )?;
    let mut state = transaction.prepare_cached(
        "INSERT INTO schedule_state (rule, fingerprint, last_tick_at) VALUES (?, ?, ?) ON CONFLICT (rule) DO UPDATE SET fingerprint = excluded.fingerprint, last_tick_at = MAX(schedule_state.last_tick_at, excluded.last_tick_at)",
    )?;
    let mut flags = Vec::with_capacity(batches.len());
    let mut events = Vec::new();
    for batch in batches {
        let mut batch_flags = Vec::with_capacity(batch.ticks.len());
        for (at, result, event) in &batch.ticks {
            let is_new = tick.execute(params![batch.rule, time_text(*at), now, result])? == 1;
            if is_new {
                events.push(event.clone());
            }
            batch_flags.push(is_new);
        }
        flags.push(batch_flags);
        if let Some(last) = batch.ticks.iter().map(|(at, _, _)| *at).max() {
            state.execute(params![batch.rule, batch.fingerprint, time_text(last)])?;
        }
    }
    insert_events(transaction, &events)?;
    Ok(flags)
}

fn retry_dead_letter(transaction: &Transaction<'_>, id: i64) -> Result<RetryOutcome, StoreError> {
    let letter: Option<(String, i64, Option<String>)> = transaction
        .query_row(
            "SELECT execution_id, step_index, retried_at FROM dead_letters WHERE id = ?",
            [id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((execution_id, step_index, retried_at)) = letter else {
        return Ok(RetryOutcome::NotFound);
    };
    if retried_at.is_some() {
        return Ok(RetryOutcome::AlreadyRetried);
    }
    let now = time_text(Utc::now());
    let updated = transaction.execute(
        "UPDATE executions SET status = 'pending', attempt = 0, next_attempt_at = ?1, last_error = NULL, lease_until = NULL, updated_at = ?1 WHERE id = ?2 AND status = 'failed' AND next_step = ?3",
        params![now, execution_id, step_index],
    )?;
    if updated == 0 {
        return Ok(RetryOutcome::ExecutionWentOn);
    }
    transaction.execute(
        "UPDATE dead_letters SET retried_at = ? WHERE id = ?",
        params![now, id],
    )?;
    Ok(RetryOutcome::Retried)
}

fn claim(
    transaction: &Transaction<'_>,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Execution>, StoreError> {
    let now_text = time_text(now);
    let lease_until = time_text(now + chrono::Duration::from_std(lease).unwrap_or_default());
    // The executions claimed, with their in-doubt markers as they were (RETURNING gives the
    // new ones); the update below takes exactly these, in the same transaction.
    let before: std::collections::HashMap<String, Option<String>> = transaction
        .prepare_cached(&format!(
            "SELECT id, step_started_at FROM executions WHERE {DUE} ORDER BY next_attempt_at LIMIT ?2"
        ))?
        .query_map(params![now_text, limit], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if before.is_empty() {
        return Ok(Vec::new());
    }
    let ids = Value::from(before.keys().cloned().collect::<Vec<String>>()).to_string();
    // One at its first step, a create, gets the step's in-doubt marker in this write (kept if
    // an earlier attempt left it).
    let sql = format!(
        "UPDATE executions SET lease_until = ?1, step_started_at = CASE WHEN first_step_creates = 1 AND next_step = 0 THEN COALESCE(step_started_at, ?2) ELSE step_started_at END WHERE id IN (SELECT value FROM json_each(?3)) RETURNING {EXECUTION_COLUMNS}, first_step_creates = 1 AND next_step = 0 AS marked"
    );
    let claimed = rows(
        transaction,
        &sql,
        params![lease_until, now_text, ids],
        |row| {
            Ok(Execution {
                create_marked: row.get::<_, bool>("marked")?,
                ..execution_from_row(row)?
            })
        },
    )?;
    let mut claimed = claimed
        .into_iter()
        .map(|execution| {
            let was = before.get(&execution.id).cloned().flatten();
            Ok(Execution {
                step_started_at: parse_optional_time(was)?,
                ..execution
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // Due-first, as they were picked.
    claimed.sort_by_key(|execution| execution.next_attempt_at);
    Ok(claimed)
}

/// The writer: one connection, many writes per transaction. When a batch fails, each of its
/// writes is retried on its own so that one bad write cannot fail the others.
fn write_loop(mut connection: Connection, mut jobs: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(WRITE_BATCH);
    while let Some(job) = jobs.blocking_recv() {
        batch.push(job);
        while batch.len() < WRITE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match run_batch(&mut connection, &batch) {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(_) => {
                for job in batch.drain(..) {
                    let result = run_batch(&mut connection, std::slice::from_ref(&job));
                    let _ = job.reply.send(result.map(|mut results| results.remove(0)));
                }
            }
        }
    }
}

fn run_batch(
    connection: &mut Connection,
    batch: &[WriteJob],
) -> Result<Vec<WriteResult>, StoreError> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        results.push(apply(&transaction, &job.op)?);
    }
    transaction.commit()?;
    Ok(results)
}

fn complete_events(
    transaction: &Transaction<'_>,
    batch: &[(i64, EventOutcome)],
) -> Result<Vec<bool>, StoreError> {
    let now = time_text(Utc::now());
    let mut processed =
        transaction.prepare_cached("UPDATE events SET processed_at = ? WHERE id = ?")?;
    let mut fire = transaction.prepare_cached(
        "INSERT INTO fired (resource_id, status, fired_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
    )?;
    // A run flowd cancelled stays as it was left (its handlers never fire again).
    let mut change = transaction.prepare_cached(
        "UPDATE followed SET status = ?, remote_updated_at = COALESCE(?, remote_updated_at), changed_at = ?, terminal = ? WHERE resource_id = ? AND cancelled_at IS NULL",
    )?;
    // A run that ended frees a slot of its execution's group: the queue behind it goes on.
    let mut wake = transaction.prepare_cached(
        "UPDATE executions SET next_attempt_at = ?1 WHERE id = (SELECT q.id FROM followed f JOIN executions e ON e.id = f.execution_id JOIN executions q ON q.rule = e.rule AND q.flow_key = e.flow_key WHERE f.resource_id = ?2 AND q.status = 'pending' AND q.wait_kind = 'queue' ORDER BY q.created_at, q.id LIMIT 1)",
    )?;
    let mut fired_now = Vec::with_capacity(batch.len());
    for (event_id, outcome) in batch {
        processed.execute(params![now, event_id])?;
        if let Some((resource_id, status)) = &outcome.fire
            && fire.execute(params![resource_id, status, now])? == 0
        {
            // Fired before (e.g. while the run was not known yet): nothing runs again, but a
            // terminal status still ends the following, or the run is polled forever.
            if let Some(status_change) = outcome.status_change.as_ref().filter(|c| c.terminal) {
                change.execute(params![
                    status_change.status,
                    status_change.remote_updated_at.map(time_text),
                    now,
                    1,
                    status_change.resource_id,
                ])?;
            }
            fired_now.push(false);
            continue;
        }
        if let Some(status_change) = &outcome.status_change {
            let changed = change.execute(params![
                status_change.status,
                status_change.remote_updated_at.map(time_text),
                now,
                i64::from(status_change.terminal),
                status_change.resource_id,
            ])?;
            if changed == 0 {
                // flowd cancelled the run since the change was judged: nothing fires for it.
                fired_now.push(false);
                continue;
            }
            if status_change.terminal && status_change.frees_slot {
                wake.execute(params![now, status_change.resource_id])?;
            }
        }
        for execution in &outcome.executions {
            store_new(transaction, execution, &now)?;
        }
        fired_now.push(true);
    }
    Ok(fired_now)
}

impl SqliteStore {
    async fn expect<T>(
        &self,
        op: WriteOp,
        unpack: fn(WriteResult) -> Option<T>,
    ) -> Result<T, StoreError> {
        unpack(self.write(op).await?)
            .ok_or_else(|| StoreError::Database("unexpected writer answer".into()))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<Vec<InsertOutcome>, StoreError> {
        self.expect(WriteOp::InsertEvents(events), |result| match result {
            WriteResult::Inserted(outcomes) => Some(outcomes),
            _ => None,
        })
        .await
    }

    async fn unprocessed_events(
        &self,
        limit: i64,
        max_bytes: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let now = time_text(now);
        self.read(move |connection| {
            // The running sum stops the page at `max_bytes` of payload; the first event always
            // comes, however large (intake bounds one event at 1 MiB).
            rows(
                connection,
                "SELECT id, source, event_type, payload, received_at FROM (SELECT id, source, event_type, payload, received_at, length(CAST(payload AS BLOB)) AS size, SUM(length(CAST(payload AS BLOB))) OVER (ORDER BY id) - length(CAST(payload AS BLOB)) AS before FROM events WHERE processed_at IS NULL AND (deferred_until IS NULL OR deferred_until <= ?1) ORDER BY id LIMIT ?2) WHERE before + size <= ?3 OR before = 0 ORDER BY id",
                params![now, limit, max_bytes],
                event_from_row,
            )
        })
        .await
    }

    async fn save_rule_versions(&self, versions: &[RuleVersion]) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::SaveRuleVersions(versions.to_vec()))
            .await
            .map(|_| ())
    }

    async fn rule_version(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let hash = hash.to_owned();
        self.read(move |connection| {
            Ok(connection
                .prepare_cached("SELECT definition FROM rule_versions WHERE hash = ?")?
                .query_row([hash], |row| row.get::<_, String>(0))
                .optional()?)
        })
        .await
    }

    async fn earlier_deferred(
        &self,
        key: &str,
        before: i64,
    ) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let key = key.to_owned();
        self.read(move |connection| {
            let found: Option<Option<String>> = connection
                .prepare_cached("SELECT MAX(deferred_until) FROM events WHERE defer_key = ?1 AND processed_at IS NULL AND id < ?2 HAVING COUNT(*) > 0")?
                .query_row(params![key, before], |row| row.get(0))
                .optional()?;
            found.map(parse_optional_time).transpose()
        })
        .await
    }

    async fn creates_in_doubt(&self) -> Result<bool, StoreError> {
        self.read(|connection| {
            Ok(connection
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM executions WHERE status = 'pending' AND step_started_at IS NOT NULL)")?
                .query_row([], |row| row.get::<_, bool>(0))?)
        })
        .await
    }

    async fn renew_lease(
        &self,
        execution_id: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::RenewLease {
            execution_id: execution_id.to_owned(),
            until,
        })
        .await
        .map(|_| ())
    }

    async fn defer_events(&self, deferrals: &[Deferral]) -> Result<(), StoreError> {
        if deferrals.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::Defer(deferrals.to_vec()))
            .await
            .map(|_| ())
    }

    async fn complete_events(
        &self,
        batch: &[(i64, EventOutcome)],
    ) -> Result<Vec<bool>, StoreError> {
        self.expect(
            WriteOp::CompleteEvents(batch.to_vec()),
            |result| match result {
                WriteResult::Completed(fired) => Some(fired),
                _ => None,
            },
        )
        .await
    }

    async fn claim_executions(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Execution>, StoreError> {
        // Most polls find nothing: ask a reader first, and spend a write (an fsync) only when
        // there is something to claim.
        let now_text = time_text(now);
        let due = self
            .read(move |connection| {
                Ok(connection
                    .prepare_cached(&format!("SELECT 1 FROM executions WHERE {DUE} LIMIT 1"))?
                    .exists([now_text])?)
            })
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        self.expect(
            WriteOp::Claim { now, lease, limit },
            |result| match result {
                WriteResult::Claimed(executions) => Some(executions),
                _ => None,
            },
        )
        .await
    }

    async fn begin_step(
        &self,
        execution_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::BeginStep {
            execution_id: execution_id.to_owned(),
            now,
            lease,
        })
        .await
        .map(|_| ())
    }

    async fn save_execution(&self, execution: &Execution, release: bool) -> Result<(), StoreError> {
        self.write(WriteOp::SaveExecution(Box::new(execution.clone()), release))
            .await
            .map(|_| ())
    }

    async fn finish_step(
        &self,
        record: &StepRecord,
        execution: &Execution,
        followed: Option<&FollowedRun>,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::FinishStep(Box::new((
            record.clone(),
            execution.clone(),
            followed.cloned(),
            event.cloned(),
        ))))
        .await
        .map(|_| ())
    }

    async fn record_step(&self, record: &StepRecord) -> Result<(), StoreError> {
        self.write(WriteOp::RecordStep(Box::new(record.clone())))
            .await
            .map(|_| ())
    }

    async fn followed(&self, resource_id: &str) -> Result<Option<FollowedRun>, StoreError> {
        let resource_id = resource_id.to_owned();
        self.read(move |connection| {
            row(
                connection,
                "SELECT * FROM followed WHERE resource_id = ?",
                [resource_id],
                followed_from_row,
            )
        })
        .await
    }

    async fn stale_followed(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        self.read(move |connection| {
            rows(
                connection,
                "SELECT * FROM followed WHERE terminal = 0 AND changed_at < ?1 AND (poll_after IS NULL OR poll_after <= ?2) ORDER BY changed_at LIMIT ?3",
                params![time_text(before), time_text(now), limit],
                followed_from_row,
            )
        })
        .await
    }

    async fn mark_polled(
        &self,
        resource_id: &str,
        mark: PollMark,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::MarkPolled {
            resource_id: resource_id.to_owned(),
            mark,
            now,
        })
        .await
        .map(|_| ())
    }

    async fn add_dead_letter(
        &self,
        execution: &Execution,
        kind: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::DeadLetter {
            execution: Box::new(execution.clone()),
            kind: kind.to_owned(),
            error: error.to_owned(),
        })
        .await
        .map(|_| ())
    }

    async fn retry_dead_letter(&self, id: i64) -> Result<RetryOutcome, StoreError> {
        self.expect(WriteOp::RetryDeadLetter(id), |result| match result {
            WriteResult::Retry(outcome) => Some(outcome),
            _ => None,
        })
        .await
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        self.read(move |connection| {
            rows(
                connection,
                "SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?",
                [limit],
                dead_letter_from_row,
            )
        })
        .await
    }

    async fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let filter = filter.clone();
        self.read(move |connection| {
            let sql = format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions WHERE (?1 IS NULL OR rule = ?1) AND (?2 IS NULL OR (status = ?2 AND (?2 != 'pending' OR wait_kind IS NULL)) OR (?2 = 'waiting' AND status = 'pending' AND wait_kind IS NOT NULL)) AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4) ORDER BY created_at DESC, id LIMIT ?5 OFFSET ?6"
            );
            rows(
                connection,
                &sql,
                params![
                    filter.rule,
                    filter.status,
                    filter.since.map(time_text),
                    filter.until.map(time_text),
                    filter.limit,
                    filter.offset,
                ],
                execution_from_row,
            )
        })
        .await
    }

    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        let id = id.to_owned();
        self.read(move |connection| {
            let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?");
            row(connection, &sql, [id], execution_from_row)
        })
        .await
    }

    async fn prune_history(&self, before: DateTime<Utc>, keep: i64) -> Result<u64, StoreError> {
        self.expect(WriteOp::Prune { before, keep }, |result| match result {
            WriteResult::Pruned(count) => Some(count),
            _ => None,
        })
        .await
    }

    async fn step_records(&self, execution_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let execution_id = execution_id.to_owned();
        self.read(move |connection| {
            rows(
                connection,
                "SELECT * FROM step_runs WHERE execution_id = ? ORDER BY step_index",
                [execution_id],
                step_from_row,
            )
        })
        .await
    }

    async fn followed_runs(&self, limit: i64) -> Result<Vec<FollowedRun>, StoreError> {
        self.read(move |connection| {
            rows(
                connection,
                "SELECT * FROM followed ORDER BY changed_at DESC LIMIT ?",
                [limit],
                followed_from_row,
            )
        })
        .await
    }

    async fn schedule_states(
        &self,
    ) -> Result<std::collections::HashMap<String, (String, DateTime<Utc>)>, StoreError> {
        self.read(|connection| {
            let states = rows(
                connection,
                "SELECT rule, fingerprint, last_tick_at FROM schedule_state",
                [],
                |row| {
                    Ok((
                        row.get::<_, String>("rule")?,
                        (
                            row.get::<_, String>("fingerprint")?,
                            parse_time(&row.get::<_, String>("last_tick_at")?)?,
                        ),
                    ))
                },
            )?;
            Ok(states.into_iter().collect())
        })
        .await
    }

    async fn set_schedule_states(
        &self,
        states: &[(String, String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        self.write(WriteOp::SetScheduleStates(states.to_vec()))
            .await
            .map(|_| ())
    }

    async fn record_ticks(&self, batches: &[TickBatch]) -> Result<Vec<Vec<bool>>, StoreError> {
        self.expect(
            WriteOp::RecordTicks(batches.to_vec()),
            |result| match result {
                WriteResult::Ticks(new) => Some(new),
                _ => None,
            },
        )
        .await
    }

    async fn insert_executions(&self, executions: &[NewExecution]) -> Result<(), StoreError> {
        self.write(WriteOp::InsertExecutions(executions.to_vec()))
            .await
            .map(|_| ())
    }

    async fn admit(
        &self,
        execution_id: &str,
        gate: &super::Gate,
        now: DateTime<Utc>,
    ) -> Result<super::Admission, StoreError> {
        self.expect(
            WriteOp::Admit(execution_id.to_owned(), Box::new(gate.clone()), now),
            |result| match result {
                WriteResult::Admission(admission) => Some(admission),
                _ => None,
            },
        )
        .await
    }

    async fn cancel(
        &self,
        request: &super::CancelRequest,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        self.expect(
            WriteOp::Cancel(Box::new(request.clone()), now),
            |result| match result {
                WriteResult::Cancelled(ids) => Some(ids),
                _ => None,
            },
        )
        .await
    }

    async fn cancel_now(
        &self,
        execution_id: &str,
        reason: &str,
        on_cancel: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.expect(
            WriteOp::CancelNow {
                id: execution_id.to_owned(),
                reason: reason.to_owned(),
                on_cancel,
                now,
            },
            |result| match result {
                WriteResult::Flag(flag) => Some(flag),
                _ => None,
            },
        )
        .await
    }

    async fn cancel_requested(&self, execution_id: &str) -> Result<Option<String>, StoreError> {
        let id = execution_id.to_owned();
        self.read(move |connection| {
            Ok(connection
                .prepare_cached("SELECT cancel_requested FROM executions WHERE id = ?")?
                .query_row([id], |row| row.get::<_, Option<String>>(0))
                .optional()?
                .flatten())
        })
        .await
    }

    async fn waiting_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        self.read(|connection| {
            let mut statement = connection.prepare_cached("SELECT rule, wait_kind, COUNT(*) FROM executions WHERE status = 'pending' AND wait_kind IS NOT NULL GROUP BY rule, wait_kind")?;
            let counts = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(counts)
        })
        .await
    }

    async fn due_deadlines(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        let now = time_text(now);
        self.read(move |connection| {
            rows(
                connection,
                "SELECT * FROM followed WHERE deadline_at IS NOT NULL AND deadline_fired_at IS NULL AND terminal = 0 AND deadline_at <= ?1 ORDER BY deadline_at LIMIT ?2",
                params![now, limit],
                followed_from_row,
            )
        })
        .await
    }

    async fn fire_deadlines(
        &self,
        fires: &[(String, Option<NewExecution>)],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        if fires.is_empty() {
            return Ok(0);
        }
        self.expect(
            WriteOp::FireDeadlines(fires.to_vec(), now),
            |result| match result {
                WriteResult::Pruned(fired) => Some(fired as usize),
                _ => None,
            },
        )
        .await
    }

    async fn idempotent_execution(
        &self,
        rule: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let (rule, key, now) = (rule.to_owned(), key.to_owned(), time_text(now));
        self.read(move |connection| {
            Ok(connection
                .prepare_cached("SELECT execution_id FROM idempotency WHERE rule = ?1 AND key = ?2 AND until > ?3")?
                .query_row(params![rule, key, now], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    async fn wake_group(
        &self,
        rule: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // Most ends have nobody queued behind them: ask a reader first, write only then.
        let (rule_read, key_read) = (rule.to_owned(), key.to_owned());
        let queued = self
            .read(move |connection| {
                Ok(connection
                    .prepare_cached("SELECT 1 FROM executions WHERE rule = ?1 AND flow_key = ?2 AND status = 'pending' AND wait_kind = 'queue' LIMIT 1")?
                    .exists(params![rule_read, key_read])?)
            })
            .await?;
        if !queued {
            return Ok(());
        }
        self.write(WriteOp::WakeGroup(rule.to_owned(), key.to_owned(), now))
            .await
            .map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|connection| {
            connection.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{Location, location};

    #[test]
    fn database_urls() {
        assert_eq!(
            location("sqlite://flowd.db").ok(),
            Some(Location::File("flowd.db".into()))
        );
        assert_eq!(
            location("sqlite:///var/lib/flowd/state.db?mode=rwc").ok(),
            Some(Location::File("/var/lib/flowd/state.db".into()))
        );
        assert_eq!(location("sqlite::memory:").ok(), Some(Location::Memory));
        assert!(location("postgres://x").is_err());
        assert!(location("sqlite://").is_err());
    }
}
