//! The PostgreSQL store (sqlx's Postgres driver): the same contract as the SQLite store (the
//! conformance suite in tests/it/conformance.rs runs on both), for several flowd instances on
//! one database with no leader.
//!
//! - Every "at most once" is a unique key the database enforces across instances: an event's
//!   dedup key, (run, status) fired, (rule, scheduled time) ticked, a rule version's hash, an
//!   execution's id.
//! - Executions are claimed with `FOR UPDATE SKIP LOCKED` under a lease: two instances never get
//!   the same one, and one that dies leaves its leases to expire and be taken over (unlike
//!   SQLite, leases are not cleared at start: another instance may hold them).
//! - Migrations run under sqlx's advisory lock, so instances starting together migrate once.
//! - The connection URL is libpq's: `sslmode` (TLS with rustls), `options=-c search_path=...`;
//!   the pool size is `database.pool_size` (default 10).
//!
//! The umbrella `sqlx` crate cannot be used: its optional SQLite driver links a different
//! libsqlite3 than rusqlite, and Cargo refuses two crates linking one native library even when
//! the feature is off. `sqlx-core` + `sqlx-postgres` are the same code without it.

use std::borrow::Cow;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx_core::connection::ConnectOptions;
use sqlx_core::executor::Executor;
use sqlx_core::migrate::{Migration, MigrationType, Migrator};
use sqlx_core::pool::{Pool, PoolOptions};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::{PgConnectOptions, PgConnection, PgRow, Postgres};

use super::{
    DeadLetter, Deferral, EventOutcome, EventSource, Execution, ExecutionFilter, FollowedRun,
    InsertOutcome, NewEvent, NewExecution, PollMark, RetryOutcome, RuleVersion, StepRecord, Store,
    StoreError, StoredEvent, TickBatch,
};

/// The migrations, in order (embedded: the binary carries its schema).
const MIGRATIONS: [(i64, &str, &str); 4] = [
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "holders",
        include_str!("../../migrations/postgres/0002_holders.sql"),
    ),
    (
        3,
        "create_marks",
        include_str!("../../migrations/postgres/0003_create_marks.sql"),
    ),
    (
        4,
        "flow_control",
        include_str!("../../migrations/postgres/0004_flow_control.sql"),
    ),
];

mod flow;

/// The PostgreSQL store: a connection pool, and the id of the instance it serves (leases name
/// their holder).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<Postgres>,
    instance: String,
    url: String,
    notifier: Notifier,
}

/// One transaction storing `events`. Two instances storing the same deliveries in different
/// orders (one webhook sent to both) can deadlock on the dedup keys; PostgreSQL aborts one,
/// which then goes again.
async fn store_events(
    pool: &Pool<Postgres>,
    events: &[NewEvent],
) -> Result<Vec<InsertOutcome>, StoreError> {
    // Events with neither key (most external events) are one statement and need no
    // transaction around it: two round trips less per batch.
    let alone = events
        .iter()
        .all(|event| event.dedup_key.is_none() && event.order_key().is_none());
    let mut tries = 0;
    loop {
        let attempt = async {
            if alone {
                let mut connection = pool.acquire().await?;
                return insert_events(&mut connection, events, false).await;
            }
            let mut transaction = pool.begin().await?;
            let outcomes = insert_events(&mut transaction, events, true).await?;
            transaction.commit().await?;
            Ok(outcomes)
        }
        .await;
        match attempt {
            Err(err) if retryable(&err) && tries < 3 => tries += 1,
            other => return other,
        }
    }
}

/// Most dedup keys of one intake batch locked before it is stored (each advisory lock takes a
/// slot of the server's shared lock table, `max_locks_per_transaction` × connections; see
/// [`insert_events`]).
const DEDUP_LOCKS: usize = 64;

/// Tells the other instances (and this one) that a channel has work, after the commit that
/// made it and outside it: `NOTIFY` in a transaction takes a database-wide lock at commit, and
/// every commit of the hot path would queue on it. Signals coalesce while one is being sent, so
/// a busy instance sends a few hundred a second, not one per write. Listeners also look by time,
/// so a lost signal delays work, never loses it.
#[derive(Clone)]
struct Notifier {
    pending: std::sync::Arc<[std::sync::atomic::AtomicBool; 2]>,
    wake: tokio::sync::mpsc::Sender<()>,
    /// No other instance had a fresh heartbeat at this one's last: nobody listens but this
    /// instance, which wakes itself in memory, so signals are not sent. An instance that finds
    /// others at its heartbeat says so on [`INSTANCES_CHANNEL`], and every instance hearing
    /// that signals again. True until the first heartbeat.
    alone: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Notifier {
    fn start(pool: Pool<Postgres>) -> Notifier {
        let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
        let pending: std::sync::Arc<[std::sync::atomic::AtomicBool; 2]> = std::sync::Arc::default();
        let flags = pending.clone();
        let alone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let by_itself = alone.clone();
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::{AcqRel, Acquire};
            while woken.recv().await.is_some() {
                for (flag, channel) in flags.iter().zip([INBOX_CHANNEL, EXECUTIONS_CHANNEL]) {
                    if flag.swap(false, AcqRel)
                        && !by_itself.load(Acquire)
                        && let Err(err) = query("SELECT pg_notify($1, '')")
                            .bind(channel)
                            .execute(&pool)
                            .await
                    {
                        tracing::debug!(error = %err, channel, "Cannot signal other instances; they find the work by polling");
                    }
                }
            }
        });
        Notifier {
            pending,
            wake,
            alone,
        }
    }

    fn signal(&self, channel: &str) {
        let index = usize::from(channel != INBOX_CHANNEL);
        self.pending[index].store(true, std::sync::atomic::Ordering::Release);
        // Full: a wake-up is pending already, and it reads the flag.
        let _ = self.wake.try_send(());
    }
}

/// The channel `insert_events` and `complete_events` notify: the inbox has work.
const INBOX_CHANNEL: &str = "flowd_inbox";
/// The channel notified when executions are stored.
const EXECUTIONS_CHANNEL: &str = "flowd_executions";
/// The channel an instance that found others notifies: whoever thought itself alone is not.
const INSTANCES_CHANNEL: &str = "flowd_instances";

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl From<sqlx_core::Error> for StoreError {
    fn from(err: sqlx_core::Error) -> Self {
        // The SQLSTATE goes with the message: `retryable` reads it, and an operator can look it
        // up.
        match err.as_database_error().and_then(|db| db.code()) {
            Some(code) => StoreError::Database(format!("{err} (SQLSTATE {code})")),
            None => StoreError::Database(err.to_string()),
        }
    }
}

fn corrupt_json(err: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("JSON: {err}"))
}

fn json_of(text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(corrupt_json)
}

fn optional_json(text: Option<String>) -> Result<Option<Value>, StoreError> {
    text.as_deref().map(json_of).transpose()
}

fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    super::super::engine::checked_after(now, lease).unwrap_or(now)
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host/db?sslmode=require`) with a
    /// pool of `pool_size` connections (default 10) and applies the migrations not applied yet.
    pub async fn open(
        url: &str,
        pool_size: Option<u32>,
        instance: &str,
    ) -> Result<PgStore, StoreError> {
        let pool_max = pool_size.unwrap_or(10).max(1);
        let options: PgConnectOptions = url
            .parse()
            .map_err(|err| StoreError::Database(format!("invalid database URL: {err}")))?;
        // Statements are logged at debug, not info: they carry no secrets, but a busy daemon
        // would log every one.
        let options = options.log_statements(tracing::log::LevelFilter::Debug);
        let pool = PoolOptions::<Postgres>::new()
            .max_connections(pool_max)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|err| StoreError::Database(format!("cannot connect: {err}")))?;
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|(version, name, sql)| {
                        Migration::new(
                            *version,
                            Cow::Borrowed(*name),
                            MigrationType::Simple,
                            Cow::Borrowed(*sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        migrator
            .run(&pool)
            .await
            .map_err(|err| StoreError::Database(format!("migrating the database failed: {err}")))?;
        let notifier = Notifier::start(pool.clone());
        Ok(PgStore {
            pool,
            instance: instance.to_owned(),
            url: url.to_owned(),
            notifier,
        })
    }
}

const EXECUTION_COLUMNS: &str = "id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, step_started_at, last_error, rule_version, sweep, created_at, updated_at, flow_key, admitted_at, wait_kind, wait_until, wait_behind, expires_at, cancel_requested";

fn execution_from_row(row: &PgRow) -> Result<Execution, StoreError> {
    let status: String = row.try_get("status")?;
    let wait_kind: Option<String> = row.try_get("wait_kind")?;
    let waiting = match wait_kind {
        Some(kind) if status == "pending" => Some(super::Waiting {
            kind,
            until: row.try_get("wait_until")?,
            behind: row.try_get("wait_behind")?,
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
        flow_key: row.try_get("flow_key")?,
        admitted_at: row.try_get("admitted_at")?,
        expires_at: row.try_get("expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        id: row.try_get("id")?,
        rule: row.try_get("rule")?,
        event_id: row.try_get("event_id")?,
        handler_step: row.try_get("handler_step")?,
        handler_status: row.try_get("handler_status")?,
        context: json_of(row.try_get::<&str, _>("context")?)?,
        next_step: row.try_get("next_step")?,
        attempt: row.try_get("attempt")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        step_started_at: row.try_get("step_started_at")?,
        last_error: row.try_get("last_error")?,
        rule_version: row.try_get("rule_version")?,
        sweep: row.try_get("sweep")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        create_marked: false,
    })
}

fn followed_from_row(row: &PgRow) -> Result<FollowedRun, StoreError> {
    let kind: &str = row.try_get("resource_type")?;
    Ok(FollowedRun {
        resource_id: row.try_get("resource_id")?,
        resource_type: crate::recrubo::FollowedKind::of(kind).ok_or_else(|| {
            StoreError::Corrupt(format!("a followed run of an unknown type `{kind}`"))
        })?,
        rule: row.try_get("rule")?,
        step_id: row.try_get("step_id")?,
        execution_id: row.try_get("execution_id")?,
        context: json_of(row.try_get::<&str, _>("context")?)?,
        status: row.try_get("status")?,
        remote_updated_at: row.try_get("remote_updated_at")?,
        changed_at: row.try_get("changed_at")?,
        terminal: row.try_get("terminal")?,
        poll_failures: row.try_get("poll_failures")?,
        gone_at: row.try_get("gone_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
        deadline_at: row.try_get("deadline_at")?,
    })
}

fn step_from_row(row: &PgRow) -> Result<StepRecord, StoreError> {
    Ok(StepRecord {
        execution_id: row.try_get("execution_id")?,
        step_index: row.try_get("step_index")?,
        step_id: row.try_get("step_id")?,
        kind: row.try_get("kind")?,
        status: row.try_get("status")?,
        attempts: row.try_get("attempts")?,
        input: optional_json(row.try_get("input")?)?,
        output: optional_json(row.try_get("output")?)?,
        error: row.try_get("error")?,
        note: row.try_get("note")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        instance: row.try_get("instance")?,
    })
}

fn dead_letter_from_row(row: &PgRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        execution_id: row.try_get("execution_id")?,
        step_index: row.try_get("step_index")?,
        rule: row.try_get("rule")?,
        kind: row.try_get("kind")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        retried_at: row.try_get("retried_at")?,
    })
}

fn event_from_row(row: &PgRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: row.try_get("id")?,
        source: EventSource::parse(row.try_get("source")?),
        event_type: row.try_get("event_type")?,
        payload: json_of(row.try_get::<&str, _>("payload")?)?,
        received_at: row.try_get("received_at")?,
    })
}

fn convert<T>(
    rows: Vec<PgRow>,
    from: fn(&PgRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(from).collect()
}

/// Takes a run's lock until the transaction ends: storing its status changes, deferring them
/// and recording the run take it, so each sees what the others committed. (Per schema:
/// advisory locks are the database's, and two installations may share one.) Where a
/// transaction takes several, it takes them sorted, so two never wait on each other.
async fn run_lock(connection: &mut PgConnection, resource_id: &str) -> Result<(), StoreError> {
    query("SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ' ' || $1, 0))")
        .bind(resource_id)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Whether an error is a deadlock or a serialization failure: the transaction did nothing and
/// can be tried again as it was.
fn retryable(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(text) if text.ends_with("(SQLSTATE 40P01)") || text.ends_with("(SQLSTATE 40001)"))
}

/// Stores events; one carrying a dedup key stored before is absorbed as a duplicate.
/// `lock_keys` (the intake's batches, whose keys come from senders) first locks the dedup keys.
async fn insert_events(
    connection: &mut PgConnection,
    events: &[NewEvent],
    lock_keys: bool,
) -> Result<Vec<InsertOutcome>, StoreError> {
    let now = Utc::now();
    let keys: Vec<Option<std::borrow::Cow<'_, str>>> =
        events.iter().map(NewEvent::stored_dedup_key).collect();
    // A run's status changes must get their ids in commit order (the inbox takes them in id
    // order, one at a time): a transaction storing one waits for any other storing one of the
    // same run to commit. Locks are taken sorted, so two batches never wait on each other.
    let mut order_keys: Vec<&str> = events.iter().filter_map(NewEvent::order_key).collect();
    order_keys.sort_unstable();
    order_keys.dedup();
    for key in order_keys {
        run_lock(connection, key).await?;
    }
    // Two instances storing the same deliveries (one webhook sent to both) in different orders
    // would each wait on the other's rows of the unique index: a deadlock PostgreSQL breaks
    // only after `deadlock_timeout` (a second), then the batch goes again. The keys' locks,
    // taken sorted (after the runs' locks, as everywhere), never deadlock. A batch of more
    // keys than [`DEDUP_LOCKS`] goes without (a deadlock is then broken and retried).
    let mut locked: Vec<&str> = keys.iter().flatten().map(|key| key.as_ref()).collect();
    locked.sort_unstable();
    locked.dedup();
    if lock_keys && !locked.is_empty() && locked.len() <= DEDUP_LOCKS {
        query("SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(current_schema() || ' dedup ' || k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY 1) AS locks")
            .bind(&locked)
            .execute(&mut *connection)
            .await?;
    }
    // One statement for the whole batch. Ids are drawn in the batch's order (the rows are
    // inserted as the ordered select yields them), so the stored events without a dedup key
    // come back, sorted by id, in the batch's order; one with a key is found by its key (the
    // first of a key in the batch is stored, a later one is a duplicate).
    let rows = query(
        "WITH new AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS new (source, event_type, dedup_key, payload, order_key, position)), stored AS (INSERT INTO events (source, event_type, dedup_key, payload, received_at, order_key) SELECT source, event_type, dedup_key, payload, $6, order_key FROM new ORDER BY position ON CONFLICT (dedup_key) DO NOTHING RETURNING id, dedup_key) SELECT id, dedup_key FROM stored ORDER BY id",
    )
    .bind(texts(events, |e| Some(e.source.as_str().to_owned())))
    .bind(texts(events, |e| Some(e.event_type.clone())))
    .bind(texts(&keys, |key| key.as_deref().map(str::to_owned)))
    .bind(texts(events, |e| Some(e.payload.to_string())))
    .bind(texts(events, |e| e.order_key().map(str::to_owned)))
    .bind(now)
    .fetch_all(&mut *connection)
    .await?;
    let mut keyed = std::collections::HashMap::new();
    let mut unkeyed = std::collections::VecDeque::new();
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        match row.try_get::<Option<String>, _>("dedup_key")? {
            Some(key) => {
                keyed.insert(key, id);
            }
            None => unkeyed.push_back(id),
        }
    }
    let outcomes = keys
        .iter()
        .map(|key| {
            let id = match key {
                Some(key) => keyed.remove(key.as_ref()),
                None => unkeyed.pop_front(),
            };
            match id {
                Some(id) => InsertOutcome::Stored(id),
                None => InsertOutcome::Duplicate,
            }
        })
        .collect();
    Ok(outcomes)
}

/// Claims the idempotency keys of new executions (sorted, so two instances never wait on each
/// other); returns, by execution id, the duplicates to store instead (`skipped`, naming the
/// execution that holds the key).
async fn claim_idempotency(
    connection: &mut PgConnection,
    executions: &[&NewExecution],
    now: DateTime<Utc>,
) -> Result<std::collections::HashMap<String, NewExecution>, StoreError> {
    let mut keyed: Vec<&NewExecution> = executions
        .iter()
        .copied()
        .filter(|e| e.idempotency.is_some() && e.status == "pending")
        .collect();
    keyed.sort_by(|a, b| (&a.rule, &a.idempotency).cmp(&(&b.rule, &b.idempotency)));
    let mut duplicates = std::collections::HashMap::new();
    for execution in keyed {
        let Some((key, until)) = &execution.idempotency else {
            continue;
        };
        let holder: String = query("INSERT INTO idempotency (rule, key, execution_id, until) VALUES ($1, $2, $3, $4) ON CONFLICT (rule, key) DO UPDATE SET execution_id = CASE WHEN idempotency.until <= $5 THEN excluded.execution_id ELSE idempotency.execution_id END, until = CASE WHEN idempotency.until <= $5 THEN excluded.until ELSE idempotency.until END RETURNING execution_id")
            .bind(&execution.rule)
            .bind(key)
            .bind(&execution.id)
            .bind(until)
            .bind(now)
            .fetch_one(&mut *connection)
            .await?
            .try_get("execution_id")?;
        if holder != execution.id {
            duplicates.insert(
                execution.id.clone(),
                super::idempotent_duplicate(execution, &holder),
            );
        }
    }
    Ok(duplicates)
}

/// `executions` with the duplicates in their place.
fn with_duplicates<'a>(
    executions: &[&'a NewExecution],
    duplicates: &'a std::collections::HashMap<String, NewExecution>,
) -> Vec<&'a NewExecution> {
    executions
        .iter()
        .map(|e| duplicates.get(&e.id).unwrap_or(e))
        .collect()
}

/// Judges the flow-control gate of new executions in the transaction that stores them (the
/// common case, a group with room, costs no commit of its own), their groups' locks taken in
/// order so two instances storing executions of the same groups never wait on each other.
async fn admit_new(
    connection: &mut PgConnection,
    executions: &[&NewExecution],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut gated: Vec<&NewExecution> = executions
        .iter()
        .copied()
        .filter(|e| e.gate.is_some() && e.status == "pending" && e.flow_key.is_some())
        .collect();
    gated.sort_by(|a, b| (&a.rule, &a.flow_key).cmp(&(&b.rule, &b.flow_key)));
    for execution in gated {
        if let Some(gate) = &execution.gate {
            flow::admit(connection, &execution.id, gate, now).await?;
        }
    }
    Ok(())
}

/// One text column of a batch bound as an array (`unnest` turns it into rows).
fn texts<T>(items: &[T], get: impl Fn(&T) -> Option<String>) -> Vec<Option<String>> {
    items.iter().map(get).collect()
}

/// Stores new executions, due at once, in one statement, whatever their number (arrays, unnested): the
/// inbox completes a page of events at a time, and a statement per execution was most of its
/// round trips. An id stored before is left alone (sweeps re-run).
async fn insert_new_executions(
    connection: &mut PgConnection,
    executions: &[&NewExecution],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if executions.is_empty() {
        return Ok(());
    }
    let column = |get: fn(&NewExecution) -> Option<String>| texts(executions, |e| get(e));
    query(
        "INSERT INTO executions (id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, last_error, rule_version, sweep, first_step_creates, created_at, updated_at, flow_key, expires_at, parent_id) SELECT id, rule, event_id, handler_step, handler_status, status, context, 0, 0, $11, last_error, rule_version, sweep, first_step_creates, $11, $11, flow_key, expires_at, parent_id FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::boolean[], $12::boolean[], $13::text[], $14::timestamptz[], $15::text[]) AS new (id, rule, event_id, handler_step, handler_status, status, context, last_error, rule_version, sweep, first_step_creates, flow_key, expires_at, parent_id) ON CONFLICT (id) DO NOTHING",
    )
    .bind(column(|e| Some(e.id.clone())))
    .bind(column(|e| Some(e.rule.clone())))
    .bind(executions.iter().map(|e| e.event_id).collect::<Vec<_>>())
    .bind(column(|e| e.handler_step.clone()))
    .bind(column(|e| e.handler_status.clone()))
    .bind(column(|e| Some(e.status.clone())))
    .bind(column(|e| Some(e.context.to_string())))
    .bind(column(|e| e.note.clone()))
    .bind(column(|e| e.rule_version.clone()))
    .bind(executions.iter().map(|e| e.sweep).collect::<Vec<_>>())
    .bind(now)
    .bind(
        executions
            .iter()
            .map(|e| e.first_step_creates)
            .collect::<Vec<_>>(),
    )
    .bind(column(|e| e.flow_key.clone()))
    .bind(executions.iter().map(|e| e.expires_at).collect::<Vec<_>>())
    .bind(column(|e| e.parent.clone()))
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Saves an execution's progress; `release` gives its lease up.
async fn update_execution(
    connection: &mut PgConnection,
    execution: &Execution,
    release: bool,
    owner: &str,
) -> Result<(), StoreError> {
    // Only the lease holder writes: an instance whose lease ran out (a stall, an outage longer
    // than the lease) and was taken over gets an error, stops the execution there, and
    // overwrites nothing of the instance that took it.
    let updated = query(
        "UPDATE executions SET status = $1, context = $2, next_step = $3, attempt = $4, next_attempt_at = $5, step_started_at = $6, last_error = $7, lease_until = CASE WHEN $8 THEN NULL ELSE lease_until END, lease_owner = CASE WHEN $8 THEN NULL ELSE lease_owner END, updated_at = $9 WHERE id = $10 AND (lease_owner IS NULL OR lease_owner = $11)",
    )
    .bind(&execution.status)
    .bind(execution.context.to_string())
    .bind(execution.next_step)
    .bind(execution.attempt)
    .bind(execution.next_attempt_at)
    .bind(execution.step_started_at)
    .bind(&execution.last_error)
    .bind(release)
    .bind(Utc::now())
    .bind(&execution.id)
    .bind(owner)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(lost_lease(&execution.id));
    }
    Ok(())
}

fn lost_lease(execution: &str) -> StoreError {
    StoreError::Database(format!(
        "execution {execution} is leased by another instance now (this one's lease ran out): it goes on there"
    ))
}

/// The columns a step record is stored in, its values being `$1`..`$12` (see [`bind_step`])
/// and the instance.
macro_rules! step_columns {
    () => {
        "INSERT INTO step_runs (execution_id, step_index, step_id, kind, status, attempts, input, output, error, note, started_at, finished_at, instance)"
    };
}

/// `finish_step`'s statement up to its optional parts: the execution's progress (`$13`..`$22`,
/// only by the lease holder) as `progress`, and the step's record (`$1`..`$12`) as `step`, only
/// if the progress was written.
macro_rules! finished_step {
    () => {
        concat!(
            "WITH progress AS (UPDATE executions SET status = $13, context = $14, next_step = $15, attempt = $16, next_attempt_at = $17, step_started_at = $18, last_error = $19, updated_at = $20, lease_until = CASE WHEN $13 = 'pending' THEN lease_until END, lease_owner = CASE WHEN $13 = 'pending' THEN lease_owner END WHERE id = $21 AND (lease_owner IS NULL OR lease_owner = $22) RETURNING id), step AS (",
            step_columns!(),
            " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $22 FROM progress",
            step_conflict!(),
        )
    };
}

/// A retry's record replaces the earlier attempt's.
macro_rules! step_conflict {
    () => {
        " ON CONFLICT (execution_id, step_index) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, input = excluded.input, output = excluded.output, error = excluded.error, note = excluded.note, finished_at = excluded.finished_at, instance = excluded.instance"
    };
}

/// Binds a step record's fields as `$1`..`$12`, in [`step_columns`]'s order.
fn bind_step<'q>(
    statement: sqlx_core::query::Query<'q, Postgres, sqlx_postgres::PgArguments>,
    record: &'q StepRecord,
) -> sqlx_core::query::Query<'q, Postgres, sqlx_postgres::PgArguments> {
    statement
        .bind(&record.execution_id)
        .bind(record.step_index)
        .bind(&record.step_id)
        .bind(&record.kind)
        .bind(&record.status)
        .bind(record.attempts)
        .bind(record.input.as_ref().map(Value::to_string))
        .bind(record.output.as_ref().map(Value::to_string))
        .bind(&record.error)
        .bind(&record.note)
        .bind(record.started_at)
        .bind(record.finished_at)
}

/// Records a step attempt as run by `instance`.
async fn insert_step(
    connection: &mut PgConnection,
    record: &StepRecord,
    instance: &str,
) -> Result<(), StoreError> {
    bind_step(
        query(concat!(
            step_columns!(),
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            step_conflict!()
        )),
        record,
    )
    .bind(instance)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn insert_events(&self, events: Vec<NewEvent>) -> Result<Vec<InsertOutcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // The HTTP intake group-commits already (one writer task, many requests per call).
        let outcomes = store_events(&self.pool, &events).await?;
        if outcomes
            .iter()
            .any(|o| matches!(o, InsertOutcome::Stored(_)))
        {
            self.notifier.signal(INBOX_CHANNEL);
        }
        Ok(outcomes)
    }

    async fn unprocessed_events(
        &self,
        limit: i64,
        max_bytes: i64,
        now: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // The running sum stops the page at `max_bytes` of payload; the first event always
        // comes, however large (intake bounds one event at 1 MiB).
        let rows = query(
            "SELECT id, source, event_type, payload, received_at FROM (SELECT id, source, event_type, payload, received_at, octet_length(payload) AS size, SUM(octet_length(payload)) OVER (ORDER BY id) - octet_length(payload) AS before FROM (SELECT * FROM events WHERE processed_at IS NULL AND (deferred_until IS NULL OR deferred_until <= $1) ORDER BY id LIMIT $2) page) sized WHERE before + size <= $3 OR before = 0 ORDER BY id",
        )
        .bind(now)
        .bind(limit)
        .bind(max_bytes)
        .fetch_all(&self.pool)
        .await?;
        convert(rows, event_from_row)
    }

    async fn claim_events(
        &self,
        limit: i64,
        max_bytes: i64,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // The oldest free events (SKIP LOCKED: instances claiming together take different
        // ones; a deferred one is free once its run is followed, even when the deferral
        // committed too late for `finish_step` to release it), but of a run's status changes
        // only the first unprocessed one, and only while no earlier one of it is out with
        // another instance: they are judged one at a time, in order (fire once, older
        // deliveries, implied statuses), whoever takes them.
        let rows = query(
            "WITH candidates AS (SELECT id, order_key FROM events WHERE processed_at IS NULL AND (deferred_until IS NULL OR deferred_until <= $1 OR EXISTS (SELECT 1 FROM followed f WHERE f.resource_id = events.defer_key)) AND (claimed_until IS NULL OR claimed_until < $1) AND (order_key IS NULL OR NOT EXISTS (SELECT 1 FROM events d WHERE d.order_key = events.order_key AND d.id < events.id AND d.processed_at IS NULL AND ((d.deferred_until > $1 AND NOT EXISTS (SELECT 1 FROM followed f WHERE f.resource_id = d.defer_key)) OR d.claimed_until >= $1))) ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED), free AS (SELECT c.id FROM candidates c WHERE c.order_key IS NULL OR NOT EXISTS (SELECT 1 FROM events e WHERE e.order_key = c.order_key AND e.id < c.id AND e.processed_at IS NULL AND e.id NOT IN (SELECT id FROM candidates))) UPDATE events SET claimed_until = $3, claimed_by = $4 WHERE id IN (SELECT id FROM free) RETURNING id, source, event_type, payload, received_at, octet_length(payload)::bigint AS size",
        )
        .bind(now)
        .bind(limit)
        .bind(lease_end(now, lease))
        .bind(&self.instance)
        .fetch_all(&self.pool)
        .await?;
        let mut page = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>("size")?, event_from_row(row)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        page.sort_by_key(|(_, event)| event.id);
        // The page's byte bound, as `unprocessed_events` keeps it (the stored bytes, counted by
        // the database); the rest goes back.
        let mut bytes = 0i64;
        let mut keep = 0;
        for (size, _) in &page {
            if keep > 0 && bytes.saturating_add(*size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(*size);
            keep += 1;
        }
        let rest: Vec<i64> = page.split_off(keep).iter().map(|(_, e)| e.id).collect();
        let events: Vec<StoredEvent> = page.into_iter().map(|(_, event)| event).collect();
        self.release_events(&rest).await?;
        Ok(events)
    }

    async fn release_events(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Only this instance's claims: one that ran out may be another instance's by now.
        query("UPDATE events SET claimed_until = NULL, claimed_by = NULL WHERE id = ANY($1) AND processed_at IS NULL AND claimed_by = $2")
            .bind(ids)
            .bind(&self.instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn listen(
        &self,
        events: std::sync::Arc<tokio::sync::Notify>,
        executions: std::sync::Arc<tokio::sync::Notify>,
    ) -> Result<(), StoreError> {
        // Its own connection, not one of the pool's: a listener holds it for good.
        let mut listener = sqlx_postgres::PgListener::connect(&self.url).await?;
        listener
            .listen_all([INBOX_CHANNEL, EXECUTIONS_CHANNEL, INSTANCES_CHANNEL])
            .await?;
        loop {
            // `recv` reconnects by itself after a lost connection (and may then have missed
            // notifications: the processor and executor also look by time).
            let notification = listener.recv().await?;
            match notification.channel() {
                INBOX_CHANNEL => events.notify_one(),
                INSTANCES_CHANNEL => self
                    .notifier
                    .alone
                    .store(false, std::sync::atomic::Ordering::Release),
                _ => executions.notify_one(),
            }
        }
    }

    async fn heartbeat(
        &self,
        instance: &super::Instance,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = query("INSERT INTO instances (id, address, rules_hash, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (id) DO UPDATE SET address = excluded.address, rules_hash = excluded.rules_hash, heartbeat_at = excluded.heartbeat_at RETURNING clock_timestamp() AS clock, EXISTS (SELECT 1 FROM instances WHERE id <> $1 AND heartbeat_at >= $5) AS others")
            .bind(&instance.id)
            .bind(&instance.address)
            .bind(&instance.rules_hash)
            .bind(instance.heartbeat_at)
            .bind(instance.heartbeat_at - crate::http::INSTANCE_ALIVE)
            .fetch_one(&self.pool)
            .await?;
        let others = row.try_get::<bool, _>("others")?;
        self.notifier
            .alone
            .store(!others, std::sync::atomic::Ordering::Release);
        // Said at every heartbeat, not only when this instance stops being alone: a hello
        // lost (a listener reconnecting) or overtaken by another's heartbeat that did not see
        // this one yet is said again within seconds.
        if others {
            query("SELECT pg_notify($1, '')")
                .bind(INSTANCES_CHANNEL)
                .execute(&self.pool)
                .await?;
        }
        Ok(Some(row.try_get("clock")?))
    }

    async fn instances(&self, since: DateTime<Utc>) -> Result<Vec<super::Instance>, StoreError> {
        let rows = query("SELECT i.id, i.address, i.rules_hash, i.heartbeat_at, (SELECT COUNT(*) FROM executions x WHERE x.lease_owner = i.id AND x.status = 'pending' AND x.lease_until > now()) AS leases FROM instances i WHERE i.heartbeat_at >= $1 ORDER BY i.started_at, i.id")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(super::Instance {
                    id: row.try_get("id")?,
                    address: row.try_get("address")?,
                    rules_hash: row.try_get("rules_hash")?,
                    heartbeat_at: row.try_get("heartbeat_at")?,
                    leases: row.try_get("leases")?,
                })
            })
            .collect()
    }

    async fn save_rule_versions(&self, versions: &[RuleVersion]) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await?;
        let now = Utc::now();
        for version in versions {
            query("INSERT INTO rule_versions (hash, rule, definition, first_seen) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING")
                .bind(&version.hash)
                .bind(&version.rule)
                .bind(&*version.definition)
                .bind(now)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn rule_version(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let row = query("SELECT definition FROM rule_versions WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("definition")).transpose()?)
    }

    async fn earlier_deferred(
        &self,
        key: &str,
        before: i64,
    ) -> Result<Option<Option<DateTime<Utc>>>, StoreError> {
        let row = query("SELECT MAX(deferred_until) AS latest FROM events WHERE defer_key = $1 AND processed_at IS NULL AND id < $2 HAVING COUNT(*) > 0")
            .bind(key)
            .bind(before)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get("latest")).transpose()?)
    }

    async fn creates_in_doubt(&self) -> Result<bool, StoreError> {
        let row = query("SELECT EXISTS (SELECT 1 FROM executions WHERE status = 'pending' AND step_started_at IS NOT NULL) AS doubt")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("doubt")?)
    }

    async fn renew_lease(
        &self,
        execution_id: &str,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        query("UPDATE executions SET lease_until = $1 WHERE id = $2 AND status = 'pending' AND lease_until IS NOT NULL AND lease_owner = $3")
            .bind(until)
            .bind(execution_id)
            .bind(&self.instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn defer_events(&self, deferrals: &[Deferral]) -> Result<(), StoreError> {
        if deferrals.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool.begin().await?;
        let mut keys: Vec<&str> = deferrals.iter().map(|d| d.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            run_lock(&mut transaction, key).await?;
        }
        for deferral in deferrals {
            // Not when the run was recorded meanwhile: it released its webhooks already. A
            // deferral that lands just after `finish_step` recorded the run (on another
            // instance) does not wait out its time: `claim_events` takes a deferred event of a
            // followed run. The run's lock orders deferrals against status changes of the run.
            query("UPDATE events SET deferred_until = $1, defer_key = $2, claimed_until = NULL WHERE id = $3 AND processed_at IS NULL AND NOT EXISTS (SELECT 1 FROM followed WHERE resource_id = $2)")
                .bind(deferral.until)
                .bind(&deferral.key)
                .bind(deferral.event_id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn complete_events(
        &self,
        batch: &[(i64, EventOutcome)],
    ) -> Result<Vec<bool>, StoreError> {
        let now = Utc::now();
        let mut transaction = self.pool.begin().await?;
        // Processed once, by whichever instance commits first: one whose claim ran out while
        // it worked finds the event done and stores nothing for it. The whole page is marked
        // in one statement.
        let mut ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        let taken: std::collections::HashSet<i64> = query("UPDATE events SET processed_at = $1, claimed_until = NULL WHERE id = ANY($2) AND processed_at IS NULL RETURNING id")
            .bind(now)
            .bind(&ids)
            .fetch_all(&mut *transaction)
            .await?
            .iter()
            .map(|row| row.try_get::<i64, _>("id"))
            .collect::<Result<_, _>>()?;
        let mut fired_now = Vec::with_capacity(batch.len());
        let mut executions: Vec<&NewExecution> = Vec::new();
        let mut woke = false;
        // A run flowd cancelled stays as it was left (its handlers never fire again).
        let change = "UPDATE followed SET status = $1, remote_updated_at = COALESCE($2, remote_updated_at), changed_at = $3, terminal = $4 WHERE resource_id = $5 AND cancelled_at IS NULL";
        for (event_id, outcome) in batch {
            if !taken.contains(event_id) {
                fired_now.push(false);
                continue;
            }
            if let Some((resource_id, status)) = &outcome.fire {
                let fired = query("INSERT INTO fired (resource_id, status, fired_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(resource_id)
                    .bind(status)
                    .bind(now)
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected();
                if fired == 0 {
                    // Fired before: nothing runs again, but a terminal status still ends the
                    // following, or the run is polled forever.
                    if let Some(change_to) = outcome.status_change.as_ref().filter(|c| c.terminal) {
                        query(change)
                            .bind(&change_to.status)
                            .bind(change_to.remote_updated_at)
                            .bind(now)
                            .bind(true)
                            .bind(&change_to.resource_id)
                            .execute(&mut *transaction)
                            .await?;
                    }
                    fired_now.push(false);
                    continue;
                }
            }
            if let Some(change_to) = &outcome.status_change {
                let changed = query(change)
                    .bind(&change_to.status)
                    .bind(change_to.remote_updated_at)
                    .bind(now)
                    .bind(change_to.terminal)
                    .bind(&change_to.resource_id)
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected();
                if changed == 0 {
                    // flowd cancelled the run since the change was judged: nothing fires.
                    fired_now.push(false);
                    continue;
                }
                if change_to.terminal && change_to.frees_slot {
                    // A run that ended frees a slot of its execution's group.
                    woke |= query("UPDATE executions SET next_attempt_at = $1 WHERE id = (SELECT q.id FROM followed f JOIN executions e ON e.id = f.execution_id JOIN executions q ON q.rule = e.rule AND q.flow_key = e.flow_key WHERE f.resource_id = $2 AND q.status = 'pending' AND q.wait_kind = 'queue' ORDER BY q.created_at, q.id LIMIT 1)")
                        .bind(now)
                        .bind(&change_to.resource_id)
                        .execute(&mut *transaction)
                        .await?
                        .rows_affected()
                        > 0;
                }
            }
            executions.extend(&outcome.executions);
            fired_now.push(true);
        }
        let created = !executions.is_empty();
        let duplicates = claim_idempotency(&mut transaction, &executions, now).await?;
        let executions = with_duplicates(&executions, &duplicates);
        insert_new_executions(&mut transaction, &executions, now).await?;
        admit_new(&mut transaction, &executions, now).await?;
        transaction.commit().await?;
        // Done events may let the next status change of their run go; new executions are work.
        self.notifier.signal(INBOX_CHANNEL);
        if created || woke {
            self.notifier.signal(EXECUTIONS_CHANNEL);
        }
        Ok(fired_now)
    }

    async fn claim_executions(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<Execution>, StoreError> {
        // SKIP LOCKED: instances claiming at the same moment take different rows, none waits.
        // One at its first step, a create, gets the step's in-doubt marker in this statement
        // (kept if an earlier attempt left it); `before` is the marker as it was.
        let sql = format!(
            "WITH picked AS (SELECT id AS picked_id, step_started_at AS before FROM executions WHERE status = 'pending' AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until < $2) ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) UPDATE executions SET lease_until = $1, lease_owner = $4, step_started_at = CASE WHEN first_step_creates AND next_step = 0 THEN COALESCE(step_started_at, $2) ELSE step_started_at END FROM picked WHERE id = picked_id RETURNING {EXECUTION_COLUMNS}, before, first_step_creates AND next_step = 0 AS marked"
        );
        let rows = query(&sql)
            .bind(lease_end(now, lease))
            .bind(now)
            .bind(limit)
            .bind(&self.instance)
            .fetch_all(&self.pool)
            .await?;
        let mut claimed = convert(rows, |row| {
            Ok(Execution {
                step_started_at: row.try_get("before")?,
                create_marked: row.try_get("marked")?,
                ..execution_from_row(row)?
            })
        })?;
        // RETURNING keeps no order: hand them out due-first, as the SQLite store does.
        claimed.sort_by_key(|execution| execution.next_attempt_at);
        Ok(claimed)
    }

    async fn begin_step(
        &self,
        execution_id: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let updated = query("UPDATE executions SET step_started_at = COALESCE(step_started_at, $1), lease_until = $2, updated_at = $1 WHERE id = $3 AND (lease_owner IS NULL OR lease_owner = $4)")
            .bind(now)
            .bind(lease_end(now, lease))
            .bind(execution_id)
            .bind(&self.instance)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(lost_lease(execution_id));
        }
        Ok(())
    }

    async fn save_execution(&self, execution: &Execution, release: bool) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        update_execution(&mut connection, execution, release, &self.instance).await
    }

    async fn finish_step(
        &self,
        record: &StepRecord,
        execution: &Execution,
        followed: Option<&FollowedRun>,
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        // The hot path of every step, in one statement (one round trip, committed on its own
        // unless a status answered with the create goes into the inbox with it): the
        // execution's progress, then, only if the progress was written (a lost lease writes
        // nothing), the step's record, the followed run and the release of the webhooks that
        // overtook the create's answer (they wait no longer; `defer_key` stays, so a later
        // webhook of the run finds these still unprocessed and lets them go first). A deferral
        // committed after this statement's snapshot is not released here, but it does not
        // wait out its time either: the inbox claims a deferred event as soon as its run is
        // followed (`claim_events`).
        let sql = if followed.is_some() {
            concat!(
                finished_step!(),
                "), run AS (INSERT INTO followed (resource_id, resource_type, rule, step_id, execution_id, context, status, remote_updated_at, changed_at, terminal, deadline_at) SELECT $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33 FROM progress ON CONFLICT (resource_id) DO NOTHING), released AS (UPDATE events SET deferred_until = NULL WHERE defer_key = $23 AND processed_at IS NULL AND EXISTS (SELECT 1 FROM progress)) SELECT id FROM progress"
            )
        } else {
            concat!(finished_step!(), ") SELECT id FROM progress")
        };
        let mut statement = bind_step(query(sql), record)
            .bind(&execution.status)
            .bind(execution.context.to_string())
            .bind(execution.next_step)
            .bind(execution.attempt)
            .bind(execution.next_attempt_at)
            .bind(execution.step_started_at)
            .bind(&execution.last_error)
            .bind(Utc::now())
            .bind(&execution.id)
            .bind(&self.instance);
        if let Some(followed) = followed {
            statement = statement
                .bind(&followed.resource_id)
                .bind(followed.resource_type.json_api_type())
                .bind(&followed.rule)
                .bind(&followed.step_id)
                .bind(&followed.execution_id)
                .bind(followed.context.to_string())
                .bind(&followed.status)
                .bind(followed.remote_updated_at)
                .bind(followed.changed_at)
                .bind(followed.terminal)
                .bind(followed.deadline_at);
        }
        let written = match event {
            None => statement.fetch_optional(&self.pool).await?,
            Some(event) => {
                let mut transaction = self.pool.begin().await?;
                let written = statement.fetch_optional(&mut *transaction).await?;
                if written.is_some() {
                    insert_events(&mut transaction, std::slice::from_ref(event), false).await?;
                    transaction.commit().await?;
                }
                written
            }
        };
        if written.is_none() {
            return Err(lost_lease(&execution.id));
        }
        if event.is_some() {
            self.notifier.signal(INBOX_CHANNEL);
        }
        Ok(())
    }

    async fn record_step(&self, record: &StepRecord) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        insert_step(&mut connection, record, &self.instance).await
    }

    async fn followed(&self, resource_id: &str) -> Result<Option<FollowedRun>, StoreError> {
        let row = query("SELECT * FROM followed WHERE resource_id = $1")
            .bind(resource_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(followed_from_row).transpose()
    }

    async fn stale_followed(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        let rows = query("SELECT * FROM followed WHERE NOT terminal AND changed_at < $1 AND (poll_after IS NULL OR poll_after <= $2) ORDER BY changed_at LIMIT $3")
            .bind(before)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        convert(rows, followed_from_row)
    }

    async fn claim_stale_followed(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: i64,
        until: DateTime<Utc>,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        // `poll_after` doubles as the claim: instances reconciling together poll different
        // runs, and a run whose poller died is polled by another once the claim runs out.
        let rows = query("UPDATE followed SET poll_after = $4 WHERE resource_id IN (SELECT resource_id FROM followed WHERE NOT terminal AND changed_at < $1 AND (poll_after IS NULL OR poll_after <= $2) ORDER BY changed_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *")
            .bind(before)
            .bind(now)
            .bind(limit)
            .bind(until)
            .fetch_all(&self.pool)
            .await?;
        let mut runs = convert(rows, followed_from_row)?;
        runs.sort_by_key(|run| run.changed_at);
        Ok(runs)
    }

    async fn mark_polled(
        &self,
        resource_id: &str,
        mark: PollMark,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let statement = match mark {
            // `changed_at` doubles as "last checked": a run read is not read again before
            // `reconcile_after`.
            PollMark::Read => query("UPDATE followed SET changed_at = $1, poll_after = NULL, poll_failures = 0 WHERE resource_id = $2").bind(now),
            PollMark::Failed(until) => query("UPDATE followed SET poll_after = $1, poll_failures = poll_failures + 1 WHERE resource_id = $2").bind(until),
            PollMark::Gone => query("UPDATE followed SET terminal = TRUE, gone_at = $1, poll_after = NULL WHERE resource_id = $2").bind(now),
        };
        statement.bind(resource_id).execute(&self.pool).await?;
        Ok(())
    }

    async fn add_dead_letter(
        &self,
        execution: &Execution,
        kind: &str,
        error: &str,
    ) -> Result<(), StoreError> {
        query("INSERT INTO dead_letters (execution_id, step_index, rule, kind, error, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&execution.id)
            .bind(execution.next_step)
            .bind(&execution.rule)
            .bind(kind)
            .bind(error)
            .bind(Utc::now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn retry_dead_letter(&self, id: i64) -> Result<RetryOutcome, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let letter = query("SELECT execution_id, step_index, retried_at FROM dead_letters WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await?;
        // Every way out ends the transaction itself: one dropped open would hold the row lock
        // until the pool happens to reuse its connection.
        let Some(letter) = letter else {
            transaction.rollback().await?;
            return Ok(RetryOutcome::NotFound);
        };
        if letter
            .try_get::<Option<DateTime<Utc>>, _>("retried_at")?
            .is_some()
        {
            transaction.rollback().await?;
            return Ok(RetryOutcome::AlreadyRetried);
        }
        let now = Utc::now();
        let updated = query("UPDATE executions SET status = 'pending', attempt = 0, next_attempt_at = $1, last_error = NULL, lease_until = NULL, updated_at = $1 WHERE id = $2 AND status = 'failed' AND next_step = $3")
            .bind(now)
            .bind(letter.try_get::<&str, _>("execution_id")?)
            .bind(letter.try_get::<i64, _>("step_index")?)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if updated == 0 {
            transaction.rollback().await?;
            return Ok(RetryOutcome::ExecutionWentOn);
        }
        query("UPDATE dead_letters SET retried_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(RetryOutcome::Retried)
    }

    async fn dead_letters(&self, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = query("SELECT * FROM dead_letters ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        convert(rows, dead_letter_from_row)
    }

    async fn executions(&self, filter: &ExecutionFilter) -> Result<Vec<Execution>, StoreError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE ($1::text IS NULL OR rule = $1) AND ($2::text IS NULL OR (status = $2 AND ($2 != 'pending' OR wait_kind IS NULL)) OR ($2 = 'waiting' AND status = 'pending' AND wait_kind IS NOT NULL)) AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4) ORDER BY created_at DESC, id LIMIT $5 OFFSET $6"
        );
        let rows = query(&sql)
            .bind(&filter.rule)
            .bind(&filter.status)
            .bind(filter.since)
            .bind(filter.until)
            .bind(filter.limit)
            .bind(filter.offset)
            .fetch_all(&self.pool)
            .await?;
        convert(rows, execution_from_row)
    }

    async fn execution(&self, id: &str) -> Result<Option<Execution>, StoreError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = $1");
        let row = query(&sql).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(execution_from_row).transpose()
    }

    async fn prune_history(&self, before: DateTime<Utc>, keep: i64) -> Result<u64, StoreError> {
        let mut transaction = self.pool.begin().await?;
        // One instance prunes at a time; the others find the lock taken and leave it to it. (Per
        // schema: advisory locks are the database's, and two installations may share one.)
        let ours: bool = query("SELECT pg_try_advisory_xact_lock(hashtextextended('flowd prune_history ' || current_schema(), 0)) AS ours")
            .fetch_one(&mut *transaction)
            .await?
            .try_get("ours")?;
        if !ours {
            return Ok(0);
        }
        let doomed = "SELECT id FROM executions WHERE status != 'pending' AND (created_at < $1 OR id NOT IN (SELECT id FROM executions ORDER BY created_at DESC LIMIT $2))";
        query(&format!(
            "DELETE FROM step_runs WHERE execution_id IN ({doomed})"
        ))
        .bind(before)
        .bind(keep)
        .execute(&mut *transaction)
        .await?;
        let deleted = query(&format!("DELETE FROM executions WHERE id IN ({doomed})"))
            .bind(before)
            .bind(keep)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        query("DELETE FROM events e WHERE processed_at IS NOT NULL AND processed_at < $1 AND NOT EXISTS (SELECT 1 FROM executions x WHERE x.event_id = e.id)")
            .bind(before)
            .execute(&mut *transaction)
            .await?;
        // A tick older than its rule's last tick can never fire again, so old tick rows only
        // keep history.
        query("DELETE FROM schedule_ticks t WHERE fired_at < $1 AND scheduled_at < COALESCE((SELECT last_tick_at FROM schedule_state s WHERE s.rule = t.rule), 'infinity'::timestamptz)")
            .bind(before)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(deleted)
    }

    async fn step_records(&self, execution_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let rows = query("SELECT * FROM step_runs WHERE execution_id = $1 ORDER BY step_index")
            .bind(execution_id)
            .fetch_all(&self.pool)
            .await?;
        convert(rows, step_from_row)
    }

    async fn followed_runs(&self, limit: i64) -> Result<Vec<FollowedRun>, StoreError> {
        let rows = query("SELECT * FROM followed ORDER BY changed_at DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        convert(rows, followed_from_row)
    }

    async fn schedule_states(
        &self,
    ) -> Result<std::collections::HashMap<String, (String, DateTime<Utc>)>, StoreError> {
        let rows = query("SELECT rule, fingerprint, last_tick_at FROM schedule_state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("rule")?,
                    (row.try_get("fingerprint")?, row.try_get("last_tick_at")?),
                ))
            })
            .collect()
    }

    async fn set_schedule_states(
        &self,
        states: &[(String, String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool.begin().await?;
        for (rule, fingerprint, last_tick_at) in states {
            // The same schedule never moves back (instances whose clocks differ a little, one
            // skipping a tick the other fired); a changed one starts where it is told.
            query("INSERT INTO schedule_state (rule, fingerprint, last_tick_at) VALUES ($1, $2, $3) ON CONFLICT (rule) DO UPDATE SET last_tick_at = CASE WHEN schedule_state.fingerprint = excluded.fingerprint THEN GREATEST(schedule_state.last_tick_at, excluded.last_tick_at) ELSE excluded.last_tick_at END, fingerprint = excluded.fingerprint")
                .bind(rule)
                .bind(fingerprint)
                .bind(last_tick_at)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn record_ticks(&self, batches: &[TickBatch]) -> Result<Vec<Vec<bool>>, StoreError> {
        let now = Utc::now();
        let mut transaction = self.pool.begin().await?;
        let mut flags = Vec::with_capacity(batches.len());
        let mut events = Vec::new();
        for batch in batches {
            let mut batch_flags = Vec::with_capacity(batch.ticks.len());
            for (at, result, event) in &batch.ticks {
                // The (rule, scheduled time) key: of instances ticking together, one wins.
                let is_new = query("INSERT INTO schedule_ticks (rule, scheduled_at, fired_at, result) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(&batch.rule)
                    .bind(at)
                    .bind(now)
                    .bind(*result)
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected()
                    == 1;
                if is_new {
                    events.push(event.clone());
                }
                batch_flags.push(is_new);
            }
            flags.push(batch_flags);
            if let Some(last) = batch.ticks.iter().map(|(at, _, _)| *at).max() {
                query("INSERT INTO schedule_state (rule, fingerprint, last_tick_at) VALUES ($1, $2, $3) ON CONFLICT (rule) DO UPDATE SET fingerprint = excluded.fingerprint, last_tick_at = GREATEST(schedule_state.last_tick_at, excluded.last_tick_at)")
                    .bind(&batch.rule)
                    .bind(&batch.fingerprint)
                    .bind(last)
                    .execute(&mut *transaction)
                    .await?;
            }
        }
        insert_events(&mut transaction, &events, false).await?;
        transaction.commit().await?;
        if !events.is_empty() {
            self.notifier.signal(INBOX_CHANNEL);
        }
        Ok(flags)
    }

    async fn insert_executions(&self, executions: &[NewExecution]) -> Result<(), StoreError> {
        let now = Utc::now();
        let executions_ref: Vec<&NewExecution> = executions.iter().collect();
        if executions
            .iter()
            .any(|e| e.gate.is_some() || e.idempotency.is_some())
        {
            // Stored and judged in one transaction.
            let mut transaction = self.pool.begin().await?;
            let duplicates = claim_idempotency(&mut transaction, &executions_ref, now).await?;
            let executions_ref = with_duplicates(&executions_ref, &duplicates);
            insert_new_executions(&mut transaction, &executions_ref, now).await?;
            admit_new(&mut transaction, &executions_ref, now).await?;
            transaction.commit().await?;
        } else {
            let mut connection = self.pool.acquire().await?;
            insert_new_executions(&mut connection, &executions_ref, now).await?;
        }
        if !executions.is_empty() {
            self.notifier.signal(EXECUTIONS_CHANNEL);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        (&self.pool).execute("SELECT 1").await?;
        Ok(())
    }

    async fn admit(
        &self,
        execution_id: &str,
        gate: &super::Gate,
        now: DateTime<Utc>,
    ) -> Result<super::Admission, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let admission = flow::admit(&mut transaction, execution_id, gate, now).await?;
        transaction.commit().await?;
        if matches!(&admission, super::Admission::Admitted(cancelled) if !cancelled.is_empty()) {
            // Their cancel executions, and the queue of their group.
            self.notifier.signal(EXECUTIONS_CHANNEL);
        }
        Ok(admission)
    }

    async fn cancel(
        &self,
        request: &super::CancelRequest,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let cancelled = flow::cancel(&mut transaction, request, now).await?;
        transaction.commit().await?;
        self.notifier.signal(EXECUTIONS_CHANNEL);
        Ok(cancelled)
    }

    async fn cancel_now(
        &self,
        execution_id: &str,
        reason: &str,
        on_cancel: bool,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin().await?;
        let cancelled =
            flow::cancel_now(&mut transaction, execution_id, reason, on_cancel, now).await?;
        transaction.commit().await?;
        if cancelled {
            self.notifier.signal(EXECUTIONS_CHANNEL);
        }
        Ok(cancelled)
    }

    async fn cancel_requested(&self, execution_id: &str) -> Result<Option<String>, StoreError> {
        let row = query("SELECT cancel_requested FROM executions WHERE id = $1")
            .bind(execution_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get::<Option<String>, _>("cancel_requested"))
            .transpose()?
            .flatten())
    }

    async fn waiting_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = query("SELECT rule, wait_kind, COUNT(*) AS count FROM executions WHERE status = 'pending' AND wait_kind IS NOT NULL GROUP BY rule, wait_kind")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("rule")?,
                    row.try_get("wait_kind")?,
                    row.try_get("count")?,
                ))
            })
            .collect()
    }

    async fn due_deadlines(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<FollowedRun>, StoreError> {
        let rows = query("SELECT * FROM followed WHERE deadline_at IS NOT NULL AND deadline_fired_at IS NULL AND NOT terminal AND deadline_at <= $1 ORDER BY deadline_at LIMIT $2")
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        convert(rows, followed_from_row)
    }

    async fn fire_deadlines(
        &self,
        fires: &[(String, Option<NewExecution>)],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        if fires.is_empty() {
            return Ok(0);
        }
        let mut transaction = self.pool.begin().await?;
        let mut executions: Vec<&NewExecution> = Vec::new();
        let mut fired = 0;
        for (resource_id, execution) in fires {
            let marked = query("UPDATE followed SET deadline_fired_at = $1 WHERE resource_id = $2 AND deadline_fired_at IS NULL AND NOT terminal")
                .bind(now)
                .bind(resource_id)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
            if marked == 1 {
                fired += 1;
                executions.extend(execution.as_ref());
            }
        }
        insert_new_executions(&mut transaction, &executions, now).await?;
        transaction.commit().await?;
        if !executions.is_empty() {
            self.notifier.signal(EXECUTIONS_CHANNEL);
        }
        Ok(fired)
    }

    async fn idempotent_execution(
        &self,
        rule: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let row = query(
            "SELECT execution_id FROM idempotency WHERE rule = $1 AND key = $2 AND until > $3",
        )
        .bind(rule)
        .bind(key)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get("execution_id")).transpose()?)
    }

    async fn wake_group(
        &self,
        rule: &str,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut connection = self.pool.acquire().await?;
        if flow::wake_group(&mut connection, rule, key, now).await? > 0 {
            self.notifier.signal(EXECUTIONS_CHANNEL);
        }
        Ok(())
    }
}
