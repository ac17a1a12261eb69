//! Flow control per key on SQLite (DESIGN 2.5): the gate, cancellation and wake-ups. Every
//! function runs inside the writer's transaction: SQLite has one writer, so a group's check
//! and its write can never interleave with another's.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::{Value, json};

use super::{parse_json, time_text};
use crate::rules::ruleset::{ConcurrencyMode, OnExcess};
use crate::store::{Admission, CancelRequest, Gate, StoreError, Waiting};

/// Active members of a group other than `id`: admitted and pending, or following a run that
/// is not terminal; oldest start first.
const ACTIVE: &str = "SELECT id FROM executions e WHERE rule = ?1 AND flow_key = ?2 AND id != ?3 AND admitted_at IS NOT NULL AND (status = 'pending' OR EXISTS (SELECT 1 FROM followed f WHERE f.execution_id = e.id AND f.terminal = 0)) ORDER BY admitted_at, id";

pub(super) fn admit(
    transaction: &Transaction<'_>,
    id: &str,
    gate: &Gate,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    let found = transaction
        .prepare_cached(
            "SELECT rule, flow_key, status, admitted_at, created_at, wait_kind, next_attempt_at, context FROM executions WHERE id = ?",
        )?
        .query_row([id], |row| {
            Ok((
                (
                    row.get::<_, String>(0)?,
                    row.get::<_, Option<String>>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                ),
                (
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                ),
            ))
        })
        .optional()?;
    let Some(((rule, key, status, admitted_at, created_at), (wait_kind, due, context))) = found
    else {
        return Ok(Admission::Gone);
    };
    if status != "pending" {
        return Ok(Admission::Gone);
    }
    let Some(key) = key else {
        return Ok(Admission::Admitted(Vec::new()));
    };
    if admitted_at.is_some() {
        return Ok(Admission::Admitted(Vec::new()));
    }
    if let Some(debounce) = gate.debounce {
        match wait_kind.as_deref() {
            // Its window: over once its time has come (a later event may have moved it on).
            Some("debounce") => {
                let due = super::parse_time(&due)?;
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
                let open: Option<(String, String, String)> = transaction
                    .prepare_cached("SELECT id, context, created_at FROM executions WHERE rule = ?1 AND flow_key = ?2 AND status = 'pending' AND wait_kind = 'debounce' AND admitted_at IS NULL AND id != ?3 ORDER BY created_at, id LIMIT 1")?
                    .query_row(params![rule, key, id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                    .optional()?;
                let context = parse_json(&context)?;
                let Some((open_id, open_context, open_created)) = open else {
                    let first = super::parse_time(&created_at)?;
                    let until = crate::store::debounce_window_end(first, now, debounce);
                    let context = crate::store::debounce_open(context, debounce.keep);
                    transaction
                        .prepare_cached("UPDATE executions SET context = ?1 WHERE id = ?2")?
                        .execute(params![context.to_string(), id])?;
                    return wait(transaction, id, "debounce", Some(until), None, until, now);
                };
                let merged = crate::store::debounce_merge(
                    parse_json(&open_context)?,
                    context,
                    debounce.keep,
                );
                let until = crate::store::debounce_window_end(
                    super::parse_time(&open_created)?,
                    now,
                    debounce,
                );
                transaction
                    .prepare_cached("UPDATE executions SET context = ?1, wait_until = ?2, next_attempt_at = CASE WHEN expires_at IS NOT NULL AND expires_at < ?2 THEN expires_at ELSE ?2 END, updated_at = ?3 WHERE id = ?4")?
                    .execute(params![merged.to_string(), time_text(until), time_text(now), open_id])?;
                let reason = format!("merged into {open_id} (debounce: key `{key}`)");
                return end(transaction, id, "debounced", reason, now);
            }
            Some(_) => {}
        }
    }
    if let Some(until) = gate.quiet_until {
        return wait(
            transaction,
            id,
            "quiet_hours",
            Some(until),
            None,
            until,
            now,
        );
    }
    let poll = now + chrono::Duration::from_std(gate.poll).unwrap_or_default();
    let can_wait = gate
        .concurrency
        .is_none_or(|c| c.mode == ConcurrencyMode::Queue)
        && gate.throttle.is_none_or(|t| t.on_excess == OnExcess::Delay);
    if can_wait {
        // Within a group the older one goes first.
        let ahead: Option<(String, String)> = transaction
            .prepare_cached("SELECT id, next_attempt_at FROM executions WHERE rule = ?1 AND flow_key = ?2 AND status = 'pending' AND admitted_at IS NULL AND (created_at < ?3 OR (created_at = ?3 AND id < ?4)) ORDER BY created_at DESC, id DESC LIMIT 1")?
            .query_row(params![rule, key, created_at, id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if let Some((ahead, due)) = ahead {
            let due = super::parse_time(&due)?;
            return wait(
                transaction,
                id,
                "queue",
                None,
                Some(ahead),
                due.max(poll),
                now,
            );
        }
    }
    if let Some(throttle) = gate.throttle {
        let period = chrono::Duration::from_std(throttle.period).unwrap_or(chrono::Duration::MAX);
        let since = now
            .checked_sub_signed(period)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let starts: Vec<String> = transaction
            .prepare_cached("SELECT admitted_at FROM executions WHERE rule = ?1 AND flow_key = ?2 AND admitted_at > ?3 ORDER BY admitted_at")?
            .query_map(params![rule, key, time_text(since)], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let limit = throttle.limit as usize;
        if starts.len() >= limit {
            match throttle.on_excess {
                OnExcess::Delay => {
                    // The slot the oldest start in the window holds frees a period after it.
                    let frees = super::parse_time(&starts[starts.len() - limit])?;
                    let until = frees.checked_add_signed(period).unwrap_or(poll);
                    return wait(transaction, id, "throttle", Some(until), None, until, now);
                }
                OnExcess::Drop => {
                    let reason = format!(
                        "throttle: key `{key}` started {} times in the last {} (limit {limit}); dropped",
                        starts.len(),
                        humantime::format_duration(throttle.period)
                    );
                    return end(transaction, id, "dropped", reason, now);
                }
            }
        }
    }
    let mut cancelled = Vec::new();
    if let Some(concurrency) = gate.concurrency {
        let active: Vec<String> = transaction
            .prepare_cached(ACTIVE)?
            .query_map(params![rule, key, id], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let limit = concurrency.limit as usize;
        if active.len() >= limit {
            match concurrency.mode {
                ConcurrencyMode::Queue => {
                    return wait(
                        transaction,
                        id,
                        "queue",
                        None,
                        active.first().cloned(),
                        poll,
                        now,
                    );
                }
                ConcurrencyMode::Skip => {
                    let reason = format!(
                        "concurrency: key `{key}` already has {} active (limit {limit}, mode skip)",
                        active.join(", ")
                    );
                    return end(transaction, id, "skipped", reason, now);
                }
                ConcurrencyMode::CancelPrevious => {
                    let reason =
                        format!("cancelled by {id} (concurrency: cancel_previous, key `{key}`)");
                    for previous in &active[..active.len() + 1 - limit] {
                        // One running now is asked to stop at its next step (cancelled under
                        // its runner, it would be written back by the runner's next save).
                        if cancel_one(transaction, previous, &reason, gate.on_cancel, now, true)? {
                            cancelled.push(previous.clone());
                        }
                    }
                }
            }
        }
    }
    transaction
        .prepare_cached("UPDATE executions SET admitted_at = ?1, wait_kind = NULL, wait_until = NULL, wait_behind = NULL, updated_at = ?1 WHERE id = ?2")?
        .execute(params![time_text(now), id])?;
    // Room for more than one: the next in line looks now too.
    if gate.concurrency.is_some_and(|c| c.limit > 1) {
        wake_group(transaction, &rule, &key, now)?;
    }
    Ok(Admission::Admitted(cancelled))
}

/// Makes an execution wait: due again at `due` (or when it expires, if that is earlier), its
/// lease given up.
fn wait(
    transaction: &Transaction<'_>,
    id: &str,
    kind: &str,
    until: Option<DateTime<Utc>>,
    behind: Option<String>,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    transaction
        .prepare_cached("UPDATE executions SET wait_kind = ?1, wait_until = ?2, wait_behind = ?3, next_attempt_at = CASE WHEN expires_at IS NOT NULL AND expires_at < ?4 THEN expires_at ELSE ?4 END, lease_until = NULL, updated_at = ?5 WHERE id = ?6")?
        .execute(params![
            kind,
            until.map(time_text),
            behind,
            time_text(due),
            time_text(now),
            id
        ])?;
    Ok(Admission::Waiting(Waiting {
        kind: kind.to_owned(),
        until,
        behind,
    }))
}

fn end(
    transaction: &Transaction<'_>,
    id: &str,
    status: &'static str,
    reason: String,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    transaction
        .prepare_cached("UPDATE executions SET status = ?1, last_error = ?2, wait_kind = NULL, wait_until = NULL, wait_behind = NULL, lease_until = NULL, updated_at = ?3 WHERE id = ?4")?
        .execute(params![status, reason, time_text(now), id])?;
    Ok(Admission::Ended(status, reason))
}

pub(super) fn cancel(
    transaction: &Transaction<'_>,
    request: &CancelRequest,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let targets: Vec<String> = transaction
        .prepare_cached("SELECT id FROM executions e WHERE rule = ?1 AND flow_key = ?2 AND handler_status IS NULL AND (status = 'pending' OR EXISTS (SELECT 1 FROM followed f WHERE f.execution_id = e.id AND f.terminal = 0)) ORDER BY created_at, id")?
        .query_map(params![request.rule, request.key], |row| row.get(0))?
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
        if cancel_one(
            transaction,
            &id,
            &request.reason,
            request.on_cancel,
            now,
            true,
        )? {
            cancelled.push(id);
        }
    }
    Ok(cancelled)
}

/// Cancels one execution: `cancelled`, the runs it follows that are not terminal cancelled
/// with it, its cancel execution stored when the rule has `on_cancel`, its group woken. One
/// running now under a live lease is only asked to stop (`respect_lease`). True when it was
/// cancelled now.
pub(super) fn cancel_one(
    transaction: &Transaction<'_>,
    id: &str,
    reason: &str,
    on_cancel: bool,
    now: DateTime<Utc>,
    respect_lease: bool,
) -> Result<bool, StoreError> {
    let now_text = time_text(now);
    let found = transaction
        .prepare_cached("SELECT status, lease_until, rule, flow_key, event_id, context, rule_version FROM executions WHERE id = ?")?
        .query_row([id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<i64>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, Option<String>>(6)?,
            ))
        })
        .optional()?;
    let Some((status, lease_until, rule, key, event_id, context, rule_version)) = found else {
        return Ok(false);
    };
    if !matches!(status.as_str(), "pending" | "succeeded" | "failed") {
        return Ok(false);
    }
    if status == "pending" && respect_lease && lease_until.is_some_and(|until| until > now_text) {
        transaction
            .prepare_cached("UPDATE executions SET cancel_requested = ?1 WHERE id = ?2")?
            .execute(params![reason, id])?;
        return Ok(false);
    }
    let runs: Vec<String> = transaction
        .prepare_cached(
            "SELECT resource_id FROM followed WHERE execution_id = ? AND terminal = 0 ORDER BY resource_id",
        )?
        .query_map([id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    if status != "pending" && runs.is_empty() {
        return Ok(false);
    }
    transaction
        .prepare_cached("UPDATE followed SET terminal = 1, cancelled_at = ?1 WHERE execution_id = ?2 AND terminal = 0")?
        .execute(params![now_text, id])?;
    transaction
        .prepare_cached("UPDATE executions SET status = 'cancelled', last_error = ?1, cancel_requested = NULL, wait_kind = NULL, wait_until = NULL, wait_behind = NULL, lease_until = NULL, updated_at = ?2 WHERE id = ?3")?
        .execute(params![reason, now_text, id])?;
    // Its handlers not run yet go with it; one running now is asked to stop.
    transaction
        .prepare_cached("UPDATE executions SET status = 'cancelled', last_error = ?1, updated_at = ?2 WHERE parent_id = ?3 AND status = 'pending' AND (lease_until IS NULL OR lease_until <= ?2)")?
        .execute(params![reason, now_text, id])?;
    transaction
        .prepare_cached("UPDATE executions SET cancel_requested = ?1 WHERE parent_id = ?2 AND status = 'pending'")?
        .execute(params![reason, id])?;
    if on_cancel {
        let mut context = parse_json(&context)?;
        if let Some(map) = context.as_object_mut() {
            map.insert(
                "cancelled".into(),
                json!({ "execution": id, "reason": reason, "runs": runs }),
            );
        }
        transaction
            .prepare_cached("INSERT INTO executions (id, rule, event_id, handler_step, handler_status, status, context, next_step, attempt, next_attempt_at, rule_version, created_at, updated_at) VALUES (?1, ?2, ?3, NULL, 'cancel', 'pending', ?4, 0, 0, ?5, ?6, ?5, ?5) ON CONFLICT (id) DO NOTHING")?
            .execute(params![
                format!("cancel-{id}"),
                rule,
                event_id,
                Value::to_string(&context),
                now_text,
                rule_version
            ])?;
    }
    if let Some(key) = key {
        wake_group(transaction, &rule, &key, now)?;
    }
    Ok(true)
}

pub(super) fn wake_group(
    transaction: &Transaction<'_>,
    rule: &str,
    key: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached("UPDATE executions SET next_attempt_at = ?3 WHERE id = (SELECT id FROM executions WHERE rule = ?1 AND flow_key = ?2 AND status = 'pending' AND wait_kind = 'queue' ORDER BY created_at, id LIMIT 1) AND next_attempt_at > ?3")?
        .execute(params![rule, key, time_text(now)])?;
    Ok(())
}
