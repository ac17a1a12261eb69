//! The SQLite store (sqlx): WAL, `synchronous = FULL` (an accepted event survives power loss,
//! not only a crash), a busy timeout, embedded migrations. One connection does all writing, so
//! SQLite's single writer never meets `SQLITE_BUSY`; callers batch (the intake commits many
//! events per transaction) so durability does not cost one fsync per request.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use std::collections::HashMap;

use sqlx::{
    AssertSqlSafe, Connection, QueryBuilder, Row, SqlSafeStr, Sqlite, SqliteConnection, SqlitePool,
};
use tokio::sync::{mpsc, oneshot};

use super::{
    DeadLetter, EventOutcome, EventSource, Execution, ExecutionFilter, FollowedRun, InsertOutcome,
    NewEvent, NewExecution, RetryOutcome, StepRecord, Store, StoreError, StoredEvent, TickBatch,
};

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// Reads (WAL: readers never wait for the writer).
    pool: SqlitePool,
    /// Every write goes to the writer task.
    writer: mpsc::Sender<WriteJob>,
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

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            AssertSqlSafe(include_str!("../../migrations/sqlite/0001_init.sql")).into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "schedules".into(),
            MigrationType::Simple,
            AssertSqlSafe(include_str!("../../migrations/sqlite/0002_schedules.sql"))
                .into_sql_str(),
            false,
        ),
    ])
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url`
    /// (`sqlite://flowd.db`, `sqlite::memory:`).
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|err| StoreError::Database(format!("invalid database URL `{url}`: {err}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        migrator()
            .run(&pool)
            .await
            .map_err(|err| StoreError::Database(format!("migrations failed: {err}")))?;
        // A SQLite file has one flowd process: leases left by a previous process that died are
        // void, so its work resumes at once instead of when the leases expire.
        sqlx::query("UPDATE executions SET lease_until = NULL WHERE lease_until IS NOT NULL")
            .execute(&pool)
            .await?;
        let connection = SqliteConnection::connect_with(&options).await?;
        let (writer_queue, jobs) = mpsc::channel(4096);
        tokio::spawn(writer(connection, jobs));
        Ok(SqliteStore {
            pool,
            writer: writer_queue,
        })
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
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn execution_from_row(row: &SqliteRow) -> Result<Execution, StoreError> {
    Ok(Execution {
        id: row.try_get("id")?,
        rule: row.try_get("rule")?,
        event_id: row.try_get("event_id")?,
        handler_step: row.try_get("handler_step")?,
        handler_status: row.try_get("handler_status")?,
        status: row.try_get("status")?,
        context: parse_json(&row.try_get::<String, _>("context")?)?,
        next_step: row.try_get("next_step")?,
        attempt: row.try_get("attempt")?,
        next_attempt_at: parse_time(&row.try_get::<String, _>("next_attempt_at")?)?,
        step_started_at: parse_optional_time(row.try_get("step_started_at")?)?,
        last_error: row.try_get("last_error")?,
        created_at: parse_time(&row.try_get::<String, _>("created_at")?)?,
        updated_at: parse_time(&row.try_get::<String, _>("updated_at")?)?,
    })
}

fn followed_from_row(row: &SqliteRow) -> Result<FollowedRun, StoreError> {
    Ok(FollowedRun {
        resource_id: row.try_get("resource_id")?,
        resource_type: row.try_get("resource_type")?,
        rule: row.try_get("rule")?,
        step_id: row.try_get("step_id")?,
        execution_id: row.try_get("execution_id")?,
        context: parse_json(&row.try_get::<String, _>("context")?)?,
        status: row.try_get("status")?,
        remote_updated_at: parse_optional_time(row.try_get("remote_updated_at")?)?,
        changed_at: parse_time(&row.try_get::<String, _>("changed_at")?)?,
        terminal: row.try_get::<i64, _>("terminal")? != 0,
    })
}

/// Saves an execution's progress. `release` gives its lease up (it stops: done, failed, or
/// waiting for a retry); progress saved between two steps keeps the lease, or another worker
/// could claim the execution while this one runs its next step.
async fn update_execution(
    connection: &mut SqliteConnection,
    execution: &Execution,
    release: bool,
) -> Result<(), StoreError> {
    sqlx::query(
            "UPDATE executions SET status = ?, context = ?, next_step = ?, attempt = ?, next_attempt_at = ?, step_started_at = ?, last_error = ?, lease_until = CASE WHEN ? THEN NULL ELSE lease_until END, updated_at = ? WHERE id = ?",
        )
        .bind(&execution.status)
        .bind(execution.context.to_string())
        .bind(execution.next_step)
        .bind(execution.attempt)
        .bind(time_text(execution.next_attempt_at))
        .bind(execution.step_started_at.map(time_text))
        .bind(&execution.last_error)
        .bind(release)
        .bind(time_text(Utc::now()))
        .bind(&execution.id).execute(&mut *connection).await?;
    Ok(())
}

async fn insert_step(
    connection: &mut SqliteConnection,
    record: &StepRecord,
) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO step_runs (execution_id, step_index, step_id, kind, status, attempts, input, output, error, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id, step_index) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, input = excluded.input, output = excluded.output, error = excluded.error, finished_at = excluded.finished_at",
        )
        .bind(&record.execution_id)
        .bind(record.step_index)
        .bind(&record.step_id)
        .bind(&record.kind)
        .bind(&record.status)
        .bind(record.attempts)
        .bind(record.input.as_ref().map(Value::to_string))
        .bind(record.output.as_ref().map(Value::to_string))
        .bind(&record.error)
        .bind(time_text(record.started_at))
        .bind(record.finished_at.map(time_text)).execute(&mut *connection).await?;
    Ok(())
}

async fn insert_followed(
    connection: &mut SqliteConnection,
    followed: &FollowedRun,
) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO followed (resource_id, resource_type, rule, step_id, execution_id, context, status, remote_updated_at, changed_at, terminal) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (resource_id) DO NOTHING",
        )
        .bind(&followed.resource_id)
        .bind(&followed.resource_type)
        .bind(&followed.rule)
        .bind(&followed.step_id)
        .bind(&followed.execution_id)
        .bind(followed.context.to_string())
        .bind(&followed.status)
        .bind(followed.remote_updated_at.map(time_text))
        .bind(time_text(followed.changed_at))
        .bind(i64::from(followed.terminal)).execute(&mut *connection).await?;
    Ok(())
}

/// Stores a new execution, due at once; an id stored before is left alone (sweeps re-run).
async fn insert_execution(
    connection: &mut SqliteConnection,
    execution: &NewExecution,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO executions (id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, last_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&execution.id)
    .bind(&execution.rule)
    .bind(execution.event_id)
    .bind(&execution.handler_step)
    .bind(&execution.handler_status)
    .bind(&execution.status)
    .bind(execution.context.to_string())
    .bind(now)
    .bind(&execution.note)
    .bind(now)
    .bind(now)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Deletes finished executions older than `before` or beyond the newest `keep`, their steps, and
/// processed events nothing refers to any more. Pending executions and followed runs stay.
async fn prune(
    connection: &mut SqliteConnection,
    before: DateTime<Utc>,
    keep: i64,
) -> Result<u64, StoreError> {
    let doomed = "SELECT id FROM executions WHERE status != 'pending' AND (created_at < ?1 OR id NOT IN (SELECT id FROM executions ORDER BY created_at DESC LIMIT ?2))";
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM step_runs WHERE execution_id IN ({doomed})"
    )))
    .bind(time_text(before))
    .bind(keep)
    .execute(&mut *connection)
    .await?;
    let deleted = sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM executions WHERE id IN ({doomed})"
    )))
    .bind(time_text(before))
    .bind(keep)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    sqlx::query("DELETE FROM events WHERE processed_at IS NOT NULL AND processed_at < ? AND id NOT IN (SELECT event_id FROM executions WHERE event_id IS NOT NULL)")
        .bind(time_text(before))
        .execute(&mut *connection)
        .await?;
    Ok(deleted)
}

/// A write, applied by the writer task inside a shared transaction.
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
    FinishStep(Box<(StepRecord, Execution, Option<FollowedRun>)>),
    RecordStep(Box<StepRecord>),
    Touch {
        resource_id: String,
        now: DateTime<Utc>,
    },
    DeadLetter {
        execution: Box<Execution>,
        kind: String,
        error: String,
    },
    SetScheduleState {
        rule: String,
        fingerprint: String,
        last_tick_at: DateTime<Utc>,
    },
    RecordTicks(Vec<TickBatch>),
    InsertExecutions(Vec<NewExecution>),
    RetryDeadLetter(i64),
    Prune {
        before: DateTime<Utc>,
        keep: i64,
    },
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
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

async fn apply(connection: &mut SqliteConnection, op: &WriteOp) -> Result<WriteResult, StoreError> {
    match op {
        WriteOp::InsertEvents(events) => insert_events(connection, events)
            .await
            .map(WriteResult::Inserted),
        WriteOp::CompleteEvents(batch) => complete_events(connection, batch)
            .await
            .map(WriteResult::Completed),
        WriteOp::Claim { now, lease, limit } => claim(connection, *now, *lease, *limit)
            .await
            .map(WriteResult::Claimed),
        WriteOp::BeginStep {
            execution_id,
            now,
            lease,
        } => {
            let lease_until =
                time_text(*now + chrono::Duration::from_std(*lease).unwrap_or_default());
            sqlx::query("UPDATE executions SET step_started_at = ?, lease_until = ?, updated_at = ? WHERE id = ?")
                .bind(time_text(*now))
                .bind(lease_until)
                .bind(time_text(*now))
                .bind(execution_id)
                .execute(&mut *connection)
                .await?;
            Ok(WriteResult::Done)
        }
        WriteOp::SaveExecution(execution, release) => {
            update_execution(connection, execution, *release)
                .await
                .map(|_| WriteResult::Done)
        }
        WriteOp::FinishStep(parts) => {
            let (record, execution, followed) = parts.as_ref();
            insert_step(connection, record).await?;
            update_execution(connection, execution, false).await?;
            if let Some(followed) = followed {
                insert_followed(connection, followed).await?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::RecordStep(record) => insert_step(connection, record)
            .await
            .map(|_| WriteResult::Done),
        WriteOp::Touch { resource_id, now } => {
            sqlx::query("UPDATE followed SET changed_at = ? WHERE resource_id = ?")
                .bind(time_text(*now))
                .bind(resource_id)
                .execute(&mut *connection)
                .await?;
            Ok(WriteResult::Done)
        }
        WriteOp::SetScheduleState {
            rule,
            fingerprint,
            last_tick_at,
        } => {
            sqlx::query("INSERT INTO schedule_state (rule, fingerprint, last_tick_at) VALUES (?, ?, ?) ON CONFLICT (rule) DO UPDATE SET fingerprint = excluded.fingerprint, last_tick_at = excluded.last_tick_at")
                .bind(rule)
                .bind(fingerprint)
                .bind(time_text(*last_tick_at))
                .execute(&mut *connection)
                .await?;
            Ok(WriteResult::Done)
        }
        WriteOp::RecordTicks(batches) => record_ticks(connection, batches)
            .await
            .map(WriteResult::Ticks),
        WriteOp::Prune { before, keep } => prune(connection, *before, *keep)
            .await
            .map(WriteResult::Pruned),
        WriteOp::RetryDeadLetter(id) => retry_dead_letter(connection, *id)
            .await
            .map(WriteResult::Retry),
        WriteOp::InsertExecutions(executions) => {
            let now = time_text(Utc::now());
            for execution in executions {
                insert_execution(connection, execution, &now).await?;
            }
            Ok(WriteResult::Done)
        }
        WriteOp::DeadLetter {
            execution,
            kind,
            error,
        } => {
            sqlx::query("INSERT INTO dead_letters (execution_id, step_index, rule, kind, error, created_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&execution.id)
                .bind(execution.next_step)
                .bind(&execution.rule)
                .bind(kind)
                .bind(error)
                .bind(time_text(Utc::now()))
                .execute(&mut *connection)
                .await?;
            Ok(WriteResult::Done)
        }
    }
}

async fn insert_events(
    connection: &mut SqliteConnection,
    events: &[NewEvent],
) -> Result<Vec<InsertOutcome>, StoreError> {
    let now = time_text(Utc::now());
    // Every row gets a key (a random one when the event has none), so the rows RETURNING
    // reports — the ones not absorbed as duplicates — can be matched back to the events.
    let keys: Vec<String> = events
        .iter()
        .map(|event| {
            event
                .dedup_key
                .clone()
                .unwrap_or_else(|| format!("auto:{}", uuid::Uuid::new_v4()))
        })
        .collect();
    let mut inserted: HashMap<String, i64> = HashMap::with_capacity(events.len());
    // 5 parameters a row; SQLite allows 32,766 per statement.
    for (chunk, chunk_keys) in events.chunks(500).zip(keys.chunks(500)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (source, event_type, dedup_key, payload, received_at) ",
        );
        builder.push_values(chunk.iter().zip(chunk_keys), |mut row, (event, key)| {
            row.push_bind(event.source.as_str())
                .push_bind(event.event_type.clone())
                .push_bind(key.clone())
                .push_bind(event.payload.to_string())
                .push_bind(now.clone());
        });
        builder.push(" ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key");
        let rows = builder.build().fetch_all(&mut *connection).await?;
        for row in rows {
            inserted.insert(row.try_get("dedup_key")?, row.try_get("id")?);
        }
    }
    Ok(keys
        .iter()
        .map(|key| match inserted.remove(key) {
            Some(id) => InsertOutcome::Stored(id),
            None => InsertOutcome::Duplicate,
        })
        .collect())
}

/// Ticks with multi-row statements: 10,000 rules due at one minute are a handful of statements.
async fn record_ticks(
    connection: &mut SqliteConnection,
    batches: &[TickBatch],
) -> Result<Vec<Vec<bool>>, StoreError> {
    let now = time_text(Utc::now());
    let rows: Vec<(&str, String, &'static str)> = batches
        .iter()
        .flat_map(|batch| {
            batch
                .ticks
                .iter()
                .map(move |(at, result, _)| (batch.rule.as_str(), time_text(*at), *result))
        })
        .collect();
    let mut new: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    for chunk in rows.chunks(2000) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO schedule_ticks (rule, scheduled_at, fired_at, result) ");
        builder.push_values(chunk, |mut row, (rule, at, result)| {
            row.push_bind(rule.to_string())
                .push_bind(at.clone())
                .push_bind(now.clone())
                .push_bind(*result);
        });
        builder.push(" ON CONFLICT DO NOTHING RETURNING rule, scheduled_at");
        for row in builder.build().fetch_all(&mut *connection).await? {
            new.insert((row.try_get("rule")?, row.try_get("scheduled_at")?));
        }
    }
    let mut flags = Vec::with_capacity(batches.len());
    let mut events = Vec::new();
    for batch in batches {
        let mut batch_flags = Vec::with_capacity(batch.ticks.len());
        for (at, _, event) in &batch.ticks {
            let is_new = new.contains(&(batch.rule.clone(), time_text(*at)));
            if is_new {
                events.push(event.clone());
            }
            batch_flags.push(is_new);
        }
        flags.push(batch_flags);
    }
    insert_events(connection, &events).await?;
    let states: Vec<(&str, &str, String)> = batches
        .iter()
        .filter_map(|batch| {
            batch.ticks.iter().map(|(at, _, _)| *at).max().map(|last| {
                (
                    batch.rule.as_str(),
                    batch.fingerprint.as_str(),
                    time_text(last),
                )
            })
        })
        .collect();
    for chunk in states.chunks(2000) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO schedule_state (rule, fingerprint, last_tick_at) ");
        builder.push_values(chunk, |mut row, (rule, fingerprint, last)| {
            row.push_bind(rule.to_string())
                .push_bind(fingerprint.to_string())
                .push_bind(last.clone());
        });
        builder.push(" ON CONFLICT (rule) DO UPDATE SET fingerprint = excluded.fingerprint, last_tick_at = MAX(schedule_state.last_tick_at, excluded.last_tick_at)");
        builder.build().execute(&mut *connection).await?;
    }
    Ok(flags)
}

async fn retry_dead_letter(
    connection: &mut SqliteConnection,
    id: i64,
) -> Result<RetryOutcome, StoreError> {
    let Some(letter) =
        sqlx::query("SELECT execution_id, step_index, retried_at FROM dead_letters WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *connection)
            .await?
    else {
        return Ok(RetryOutcome::NotFound);
    };
    if letter.try_get::<Option<String>, _>("retried_at")?.is_some() {
        return Ok(RetryOutcome::AlreadyRetried);
    }
    let execution_id: String = letter.try_get("execution_id")?;
    let step_index: i64 = letter.try_get("step_index")?;
    let now = time_text(Utc::now());
    let updated = sqlx::query("UPDATE executions SET status = 'pending', attempt = 0, next_attempt_at = ?, last_error = NULL, lease_until = NULL, step_started_at = NULL, updated_at = ? WHERE id = ? AND status = 'failed' AND next_step = ?")
        .bind(&now)
        .bind(&now)
        .bind(&execution_id)
        .bind(step_index)
        .execute(&mut *connection)
        .await?;
    if updated.rows_affected() == 0 {
        return Ok(RetryOutcome::ExecutionWentOn);
    }
    sqlx::query("UPDATE dead_letters SET retried_at = ? WHERE id = ?")
        .bind(&now)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    Ok(RetryOutcome::Retried)
}

async fn claim(
    connection: &mut SqliteConnection,
    now: DateTime<Utc>,
    lease: Duration,
    limit: i64,
) -> Result<Vec<Execution>, StoreError> {
    let now_text = time_text(now);
    let lease_until = time_text(now + chrono::Duration::from_std(lease).unwrap_or_default());
    let sql = format!(
        "UPDATE executions SET lease_until = ? WHERE id IN (SELECT id FROM executions WHERE status = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?) ORDER BY next_attempt_at LIMIT ?) RETURNING {EXECUTION_COLUMNS}"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(&lease_until)
        .bind(&now_text)
        .bind(&now_text)
        .bind(limit)
        .fetch_all(&mut *connection)
        .await?;
    rows.iter().map(execution_from_row).collect()
}

/// The writer: one connection, many writes per transaction. A write that fails is retried on
/// its own so that it cannot fail the others of its batch.
async fn writer(mut connection: SqliteConnection, mut jobs: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(256);
    while let Some(job) = jobs.recv().await {
        batch.push(job);
        while batch.len() < 256 {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match run_batch(&mut connection, &batch).await {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(_) => {
                for job in batch.drain(..) {
                    let result = run_batch(&mut connection, std::slice::from_ref(&job)).await;
                    let _ = job.reply.send(result.map(|mut results| results.remove(0)));
                }
            }
        }
    }
}

async fn run_batch(
    connection: &mut SqliteConnection,
    batch: &[WriteJob],
) -> Result<Vec<WriteResult>, StoreError> {
    let mut transaction = connection.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        results.push(apply(&mut transaction, &job.op).await?);
    }
    transaction.commit().await?;
    Ok(results)
}

async fn complete_events(
    connection: &mut SqliteConnection,
    batch: &[(i64, EventOutcome)],
) -> Result<Vec<bool>, StoreError> {
    let now = time_text(Utc::now());
    let mut fired_now = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(500) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("UPDATE events SET processed_at = ");
        builder.push_bind(now.clone()).push(" WHERE id IN (");
        let mut ids = builder.separated(", ");
        for (event_id, _) in chunk {
            ids.push_bind(*event_id);
        }
        builder.push(")");
        builder.build().execute(&mut *connection).await?;
    }
    for (_, outcome) in batch {
        if let Some((resource_id, status)) = &outcome.fire {
            let inserted = sqlx::query(
                "INSERT INTO fired (resource_id, status, fired_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(resource_id)
            .bind(status)
            .bind(&now)
            .execute(&mut *connection)
            .await?;
            if inserted.rows_affected() == 0 {
                fired_now.push(false);
                continue;
            }
        }
        if let Some(change) = &outcome.status_change {
            sqlx::query(
                "UPDATE followed SET status = ?, remote_updated_at = COALESCE(?, remote_updated_at), changed_at = ?, terminal = ? WHERE resource_id = ?",
            )
            .bind(&change.status)
            .bind(change.remote_updated_at.map(time_text))
            .bind(&now)
            .bind(i64::from(change.terminal))
            .bind(&change.resource_id)
            .execute(&mut *connection)
            .await?;
        }
        for execution in &outcome.executions {
            insert_execution(connection, execution, &now).await?;
        }
        fired_now.push(true);
    }
    Ok(fired_now)
}

const EXECUTION_COLUMNS: &str = "id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, step_started_at, last_error, created_at, updated_at";

#[async_trait]
impl Store for SqliteStore {
    async fn insert_events(&self, events: &[NewEvent]) -> Result<Vec<InsertOutcome>, StoreError> {
        match self.write(WriteOp::InsertEvents(events.to_vec())).await? {
            WriteResult::Inserted(outcomes) => Ok(outcomes),
            _ => Err(StoreError::Database("unexpected writer answer".into())),
        }
    }

    async fn unprocessed_events(&self, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, source, event_type, payload, received_at FROM events WHERE processed_at IS NULL ORDER BY id LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StoredEvent {
                    id: row.try_get("id")?,
                    source: EventSource::parse(&row.try_get::<String, _>("source")?),
                    event_type: row.try_get("event_type")?,
                    payload: parse_json(&row.try_get::<String, _>("payload")?)?,
                    received_at: parse_time(&row.try_get::<String, _>("received_at")?)?,
                })
            })
            .collect()
    }

    async fn complete_events(
        &self,
        batch: &[(i64, EventOutcome)],
    ) -> Result<Vec<bool>, StoreError> {
        match self.write(WriteOp::CompleteEvents(batch.to_vec())).await? {
            WriteResult::Completed(fired) => Ok(fired),
            _ => Err(StoreError::Database("unexpected writer answer".into())),
        }
    }

    async fn claim_executions(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Execution>, StoreError> {
        // Most polls find nothing: ask a reader first, and spend a write (an fsync) only when
        // there is something to claim.
        let due = sqlx::query("SELECT 1 FROM executions WHERE status = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?) LIMIT 1")
            .bind(time_text(now))
            .bind(time_text(now))
            .fetch_optional(&self.pool)
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        match self.write(WriteOp::Claim { now, lease, limit }).await? {
            WriteResult::Claimed(executions) => Ok(executions),
            _ => Err(StoreError::Database("unexpected writer answer".into())),
        }
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
    ) -> Result<(), StoreError> {
        self.write(WriteOp::FinishStep(Box::new((
            record.clone(),
            execution.clone(),
            followed.cloned(),
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
        let row = sqlx::query("SELECT * FROM followed WHERE resource_id = ?")
            .bind(resource_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(followed_from_row).transpose()
    }

    async fn stale_followed(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        let rows = sqlx::query("SELECT * FROM followed WHERE terminal = 0 AND changed_at < ? ORDER BY changed_at LIMIT ?")
            .bind(time_text(before))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(followed_from_row).collect()
    }

    async fn touch_followed(
        &self,
        resource_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::Touch {
            resource_id: resource_id.to_owned(),
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
        match self.write(WriteOp::RetryDeadLetter(id)).await? {
            WriteResult::Retry(outcome) => Ok(outcome),
            _ => Err(StoreError::Database("unexpected writer answer".into())),
        }
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    id: row.try_get("id")?,
                    execution_id: row.try_get("execution_id")?,
                    step_index: row.try_get("step_index")?,
                    rule: row.try_get("rule")?,
                    kind: row.try_get("kind")?,
                    error: row.try_get("error")?,
                    created_at: parse_time(&row.try_get::<String, _>("created_at")?)?,
                    retried_at: parse_optional_time(row.try_get("retried_at")?)?,
                })
            })
            .collect()
    }

    async fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE (?1 IS NULL OR rule = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4) ORDER BY created_at DESC, id LIMIT ?5 OFFSET ?6"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(&filter.rule)
            .bind(&filter.status)
            .bind(filter.since.map(time_text))
            .bind(filter.until.map(time_text))
            .bind(filter.limit)
            .bind(filter.offset)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(execution_from_row).collect()
    }

    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn prune_history(&self, before: DateTime<Utc>, keep: i64) -> Result<u64, StoreError> {
        match self.write(WriteOp::Prune { before, keep }).await? {
            WriteResult::Pruned(count) => Ok(count),
            _ => Err(StoreError::Database("unexpected writer answer".into())),
        }
    }

    async fn step_records(&self, execution_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM step_runs WHERE execution_id = ? ORDER BY step_index")
                .bind(execution_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(StepRecord {
                    execution_id: row.try_get("execution_id")?,
                    step_index: row.try_get("step_index")?,
                    step_id: row.try_get("step_id")?,
                    kind: row.try_get("kind")?,
                    status: row.try_get("status")?,
                    attempts: row.try_get("attempts")?,
                    input: row
                        .try_get::<Option<String>, _>("input")?
                        .as_deref()
                        .map(parse_json)
                        .transpose()?,
                    output: row
                        .try_get::<Option<String>, _>("output")?
                        .as_deref()
                        .map(parse_json)
                        .transpose()?,
                    error: row.try_get("error")?,
                    started_at: parse_time(&row.try_get::<String, _>("started_at")?)?,
                    finished_at: parse_optional_time(row.try_get("finished_at")?)?,
                })
            })
            .collect()
    }

    async fn followed_runs(&self, limit: i64) -> Result<Vec<FollowedRun>, StoreError> {
        let rows = sqlx::query("SELECT * FROM followed ORDER BY changed_at DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(followed_from_row).collect()
    }

    async fn schedule_state(
        &self,
        rule: &str,
    ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
        let row =
            sqlx::query("SELECT fingerprint, last_tick_at FROM schedule_state WHERE rule = ?")
                .bind(rule)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok((
                row.try_get("fingerprint")?,
                parse_time(&row.try_get::<String, _>("last_tick_at")?)?,
            ))
        })
        .transpose()
    }

    async fn set_schedule_state(
        &self,
        rule: &str,
        fingerprint: &str,
        last_tick_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::SetScheduleState {
            rule: rule.to_owned(),
            fingerprint: fingerprint.to_owned(),
            last_tick_at,
        })
        .await
        .map(|_| ())
    }

    async fn record_ticks(&self, batches: &[TickBatch]) -> Result<Vec<Vec<bool>>, StoreError> {
        match self.write(WriteOp::RecordTicks(batches.to_vec())).await? {
            WriteResult::Ticks(new) => Ok(new),
            _ => Err(StoreError::Database("unexpected writer answer".into())),
        }
    }

    async fn insert_executions(&self, executions: &[NewExecution]) -> Result<(), StoreError> {
        self.write(WriteOp::InsertExecutions(executions.to_vec()))
            .await
            .map(|_| ())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
