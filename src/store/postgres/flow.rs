//! Flow control per key on PostgreSQL (DESIGN 2.5): the gate, cancellation and wake-ups, the
//! same decisions as the SQLite store's. Several instances share the groups, so each
//! transaction that judges or changes a group first takes the group's advisory lock: two
//! admissions of one candidate, on two instances, are judged one after the other.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::PgConnection;

use super::json_of;
use crate::rules::ruleset::{ConcurrencyMode, OnExcess};
use crate::store::{Admission, CancelRequest, Gate, StoreError, Waiting};

const ACTIVE: &str = "SELECT id FROM executions e WHERE rule = $1 AND flow_key = $2 AND id != $3 AND admitted_at IS NOT NULL AND (status = 'pending' OR EXISTS (SELECT 1 FROM followed f WHERE f.execution_id = e.id AND NOT f.terminal)) ORDER BY admitted_at, id";

/// Takes a group's lock until the transaction ends (per schema, like the runs' locks).
async fn group_lock(
    connection: &mut PgConnection,
    rule: &str,
    key: &str,
) -> Result<(), StoreError> {
    query("SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || ' group ' || $1 || ' ' || $2, 0))")
        .bind(rule)
        .bind(key)
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// The group of an execution: (rule, key), if it has one.
async fn group_of(
    connection: &mut PgConnection,
    id: &str,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    let row = query("SELECT rule, flow_key FROM executions WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?;
    row.map(|row| Ok((row.try_get("rule")?, row.try_get("flow_key")?)))
        .transpose()
}

pub(super) async fn admit(
    connection: &mut PgConnection,
    id: &str,
    gate: &Gate,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    let Some((rule, Some(key))) = group_of(connection, id).await? else {
        return Ok(Admission::Admitted(Vec::new()));
    };
    group_lock(connection, &rule, &key).await?;
    let row = query("SELECT status, admitted_at, created_at, wait_kind, next_attempt_at, context FROM executions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(row) = row else {
        return Ok(Admission::Gone);
    };
    let status: String = row.try_get("status")?;
    let admitted_at: Option<DateTime<Utc>> = row.try_get("admitted_at")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    let wait_kind: Option<String> = row.try_get("wait_kind")?;
    let due: DateTime<Utc> = row.try_get("next_attempt_at")?;
    if status != "pending" {
        return Ok(Admission::Gone);
    }
    if admitted_at.is_some() {
        return Ok(Admission::Admitted(Vec::new()));
    }
    if let Some(debounce) = gate.debounce {
        match wait_kind.as_deref() {
            // Its window: over once its time has come (a later event may have moved it on).
            Some("debounce") => {
                if due > now {
                    return Ok(Admission::Waiting(Waiting {
                        kind: "debounce".to_owned(),
                        until: Some(due),
                        behind: None,
                    }));
                }
            }
            // Judged when it is stored: it joins the group's open window, or opens one.
            None => {
                let context = json_of(row.try_get::<&str, _>("context")?)?;
                let open = query("SELECT id, context, created_at FROM executions WHERE rule = $1 AND flow_key = $2 AND status = 'pending' AND wait_kind = 'debounce' AND admitted_at IS NULL AND id != $3 ORDER BY created_at, id LIMIT 1 FOR UPDATE")
                    .bind(&rule)
                    .bind(&key)
                    .bind(id)
                    .fetch_optional(&mut *connection)
                    .await?;
                let Some(open) = open else {
                    let until = crate::store::debounce_window_end(created_at, now, debounce);
                    let context = crate::store::debounce_open(context, debounce.keep);
                    query("UPDATE executions SET context = $1 WHERE id = $2")
                        .bind(context.to_string())
                        .bind(id)
                        .execute(&mut *connection)
                        .await?;
                    return wait(connection, id, "debounce", Some(until), None, until, now).await;
                };
                let open_id: String = open.try_get("id")?;
                let open_created: DateTime<Utc> = open.try_get("created_at")?;
                let merged = crate::store::debounce_merge(
                    json_of(open.try_get::<&str, _>("context")?)?,
                    context,
                    debounce.keep,
                );
                let until = crate::store::debounce_window_end(open_created, now, debounce);
                query("UPDATE executions SET context = $1, wait_until = $2, next_attempt_at = LEAST($2, COALESCE(expires_at, $2)), updated_at = $3 WHERE id = $4")
                    .bind(merged.to_string())
                    .bind(until)
                    .bind(now)
                    .bind(&open_id)
                    .execute(&mut *connection)
                    .await?;
                let reason = format!("merged into {open_id} (debounce: key `{key}`)");
                return end(connection, id, "debounced", reason, now).await;
            }
            Some(_) => {}
        }
    }
    if let Some(until) = gate.quiet_until {
        return wait(connection, id, "quiet_hours", Some(until), None, until, now).await;
    }
    let poll = now + chrono::Duration::from_std(gate.poll).unwrap_or_default();
    let can_wait = gate
        .concurrency
        .is_none_or(|c| c.mode == ConcurrencyMode::Queue)
        && gate.throttle.is_none_or(|t| t.on_excess == OnExcess::Delay);
    if can_wait {
        let ahead = query("SELECT id, next_attempt_at FROM executions WHERE rule = $1 AND flow_key = $2 AND status = 'pending' AND admitted_at IS NULL AND (created_at, id) < ($3, $4) ORDER BY created_at DESC, id DESC LIMIT 1")
            .bind(&rule)
            .bind(&key)
            .bind(created_at)
            .bind(id)
            .fetch_optional(&mut *connection)
            .await?;
        if let Some(ahead) = ahead {
            let due: DateTime<Utc> = ahead.try_get("next_attempt_at")?;
            let behind: String = ahead.try_get("id")?;
            return wait(
                connection,
                id,
                "queue",
                None,
                Some(behind),
                due.max(poll),
                now,
            )
            .await;
        }
    }
    if let Some(throttle) = gate.throttle {
        let period = chrono::Duration::from_std(throttle.period).unwrap_or(chrono::Duration::MAX);
        let since = now
            .checked_sub_signed(period)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let starts: Vec<DateTime<Utc>> = query("SELECT admitted_at FROM executions WHERE rule = $1 AND flow_key = $2 AND admitted_at > $3 ORDER BY admitted_at")
            .bind(&rule)
            .bind(&key)
            .bind(since)
            .fetch_all(&mut *connection)
            .await?
            .iter()
            .map(|row| row.try_get("admitted_at"))
            .collect::<Result<_, _>>()?;
        let limit = throttle.limit as usize;
        if starts.len() >= limit {
            match throttle.on_excess {
                OnExcess::Delay => {
                    let frees = starts[starts.len() - limit];
                    let until = frees.checked_add_signed(period).unwrap_or(poll);
                    return wait(connection, id, "throttle", Some(until), None, until, now).await;
                }
                OnExcess::Drop => {
                    let reason = format!(
                        "throttle: key `{key}` started {} times in the last {} (limit {limit}); dropped",
                        starts.len(),
                        humantime::format_duration(throttle.period)
                    );
                    return end(connection, id, "dropped", reason, now).await;
                }
            }
        }
    }
    let mut cancelled = Vec::new();
    if let Some(concurrency) = gate.concurrency {
        let active: Vec<String> = query(ACTIVE)
            .bind(&rule)
            .bind(&key)
            .bind(id)
            .fetch_all(&mut *connection)
            .await?
            .iter()
            .map(|row| row.try_get("id"))
            .collect::<Result<_, _>>()?;
        let limit = concurrency.limit as usize;
        if active.len() >= limit {
            match concurrency.mode {
                ConcurrencyMode::Queue => {
                    let behind = active.first().cloned();
                    return wait(connection, id, "queue", None, behind, poll, now).await;
                }
                ConcurrencyMode::Skip => {
                    let reason = format!(
                        "concurrency: key `{key}` already has {} active (limit {limit}, mode skip)",
                        active.join(", ")
                    );
                    return end(connection, id, "skipped", reason, now).await;
                }
                ConcurrencyMode::CancelPrevious => {
                    let reason =
                        format!("cancelled by {id} (concurrency: cancel_previous, key `{key}`)");
                    for previous in &active[..active.len() + 1 - limit] {
                        // One running now is asked to stop at its next step.
                        if cancel_locked(connection, previous, &reason, gate.on_cancel, now, true)
                            .await?
                        {
                            cancelled.push(previous.clone());
                        }
                    }
                }
            }
        }
    }
    query("UPDATE executions SET admitted_at = $1, wait_kind = NULL, wait_until = NULL, wait_behind = NULL, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    // Room for more than one: the next in line looks now too.
    if gate.concurrency.is_some_and(|c| c.limit > 1) {
        wake_group(connection, &rule, &key, now).await?;
    }
    Ok(Admission::Admitted(cancelled))
}

async fn wait(
    connection: &mut PgConnection,
    id: &str,
    kind: &str,
    until: Option<DateTime<Utc>>,
    behind: Option<String>,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    query("UPDATE executions SET wait_kind = $1, wait_until = $2, wait_behind = $3, next_attempt_at = LEAST($4, COALESCE(expires_at, $4)), lease_until = NULL, lease_owner = NULL, updated_at = $5 WHERE id = $6")
        .bind(kind)
        .bind(until)
        .bind(&behind)
        .bind(due)
        .bind(now)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    Ok(Admission::Waiting(Waiting {
        kind: kind.to_owned(),
        until,
        behind,
    }))
}

async fn end(
    connection: &mut PgConnection,
    id: &str,
    status: &'static str,
    reason: String,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    query("UPDATE executions SET status = $1, last_error = $2, wait_kind = NULL, wait_until = NULL, wait_behind = NULL, lease_until = NULL, lease_owner = NULL, updated_at = $3 WHERE id = $4")
        .bind(status)
        .bind(&reason)
        .bind(now)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    Ok(Admission::Ended(status, reason))
}

pub(super) async fn cancel(
    connection: &mut PgConnection,
    request: &CancelRequest,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    group_lock(connection, &request.rule, &request.key).await?;
    let targets: Vec<String> = query("SELECT id FROM executions e WHERE rule = $1 AND flow_key = $2 AND handler_status IS NULL AND (status = 'pending' OR EXISTS (SELECT 1 FROM followed f WHERE f.execution_id = e.id AND NOT f.terminal)) ORDER BY created_at, id")
        .bind(&request.rule)
        .bind(&request.key)
        .fetch_all(&mut *connection)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut cancelled = Vec::new();
    for id in targets {
        if request
            .only
            .as_ref()
            .is_some_and(|only| !only.contains(&id))
        {
            continue;
        }
        if cancel_locked(
            connection,
            &id,
            &request.reason,
            request.on_cancel,
            now,
            true,
        )
        .await?
        {
            cancelled.push(id);
        }
    }
    Ok(cancelled)
}

/// [`cancel_locked`] for one execution, its group's lock taken first.
pub(super) async fn cancel_now(
    connection: &mut PgConnection,
    id: &str,
    reason: &str,
    on_cancel: bool,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if let Some((rule, Some(key))) = group_of(connection, id).await? {
        group_lock(connection, &rule, &key).await?;
    }
    cancel_locked(connection, id, reason, on_cancel, now, false).await
}

/// Cancels one execution, its group's lock held (see the SQLite store's `cancel_one`).
async fn cancel_locked(
    connection: &mut PgConnection,
    id: &str,
    reason: &str,
    on_cancel: bool,
    now: DateTime<Utc>,
    respect_lease: bool,
) -> Result<bool, StoreError> {
    let row = query("SELECT status, lease_until, rule, flow_key, event_id, context, rule_version FROM executions WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let status: String = row.try_get("status")?;
    let lease_until: Option<DateTime<Utc>> = row.try_get("lease_until")?;
    let rule: String = row.try_get("rule")?;
    let key: Option<String> = row.try_get("flow_key")?;
    let event_id: Option<i64> = row.try_get("event_id")?;
    let context = json_of(row.try_get::<&str, _>("context")?)?;
    let rule_version: Option<String> = row.try_get("rule_version")?;
    if !matches!(status.as_str(), "pending" | "succeeded" | "failed") {
        return Ok(false);
    }
    if status == "pending" && respect_lease && lease_until.is_some_and(|until| until > now) {
        query("UPDATE executions SET cancel_requested = $1 WHERE id = $2")
            .bind(reason)
            .bind(id)
            .execute(&mut *connection)
            .await?;
        return Ok(false);
    }
    let runs: Vec<String> = query(
        "UPDATE followed SET terminal = TRUE, cancelled_at = $1 WHERE execution_id = $2 AND NOT terminal RETURNING resource_id",
    )
    .bind(now)
    .bind(id)
    .fetch_all(&mut *connection)
    .await?
    .iter()
    .map(|row| row.try_get("resource_id"))
    .collect::<Result<_, _>>()?;
    if status != "pending" && runs.is_empty() {
        return Ok(false);
    }
    let mut runs = runs;
    runs.sort();
    query("UPDATE executions SET status = 'cancelled', last_error = $1, cancel_requested = NULL, wait_kind = NULL, wait_until = NULL, wait_behind = NULL, lease_until = NULL, lease_owner = NULL, updated_at = $2 WHERE id = $3")
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    // Its handlers not run yet go with it; one running now is asked to stop.
    query("UPDATE executions SET status = 'cancelled', last_error = $1, updated_at = $2 WHERE parent_id = $3 AND status = 'pending' AND (lease_until IS NULL OR lease_until <= $2)")
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&mut *connection)
        .await?;
    query(
        "UPDATE executions SET cancel_requested = $1 WHERE parent_id = $2 AND status = 'pending'",
    )
    .bind(reason)
    .bind(id)
    .execute(&mut *connection)
    .await?;
    if on_cancel {
        let mut context = context;
        if let Some(map) = context.as_object_mut() {
            map.insert(
                "cancelled".into(),
                json!({ "execution": id, "reason": reason, "runs": runs }),
            );
        }
        query("INSERT INTO executions (id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, rule_version, created_at, updated_at) VALUES ($1, $2, $3, NULL, 'cancel', 'pending', $4, 0, 0, $5, $6, $5, $5) ON CONFLICT (id) DO NOTHING")
            .bind(format!("cancel-{id}"))
            .bind(&rule)
            .bind(event_id)
            .bind(Value::to_string(&context))
            .bind(now)
            .bind(rule_version)
            .execute(&mut *connection)
            .await?;
    }
    if let Some(key) = key {
        wake_group(connection, &rule, &key, now).await?;
    }
    Ok(true)
}

pub(super) async fn wake_group(
    connection: &mut PgConnection,
    rule: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(query("UPDATE executions SET next_attempt_at = $3 WHERE id = (SELECT id FROM executions WHERE rule = $1 AND flow_key = $2 AND status = 'pending' AND wait_kind = 'queue' ORDER BY created_at, id LIMIT 1) AND next_attempt_at > $3")
        .bind(rule)
        .bind(key)
        .bind(now)
        .execute(&mut *connection)
        .await?
        .rows_affected())
}
