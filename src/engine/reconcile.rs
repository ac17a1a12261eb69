//! Recovery of lost webhooks: followed runs and generations that are not terminal and have not
//! changed for `reconcile_after` are read with `GET /flow-runs/{id}` (or `/flow-generations`);
//! a status found that way enters the inbox as if Recrubo had delivered it, so it goes through
//! the same fire-once path as any webhook.
//!
//! The loop never waits on one run: each poll is one request (no retry sleeping inline, whatever
//! `Retry-After` says). A failed poll backs that run off (`poll_after`: `reconcile_every` times
//! the failures in a row, at most ten times, or the server's `Retry-After` if longer), so the
//! next tick reads the others. A run Recrubo answers 404 for, after two failed polls before, is marked
//! gone and no longer polled; without that, the same oldest runs were selected every tick and
//! nothing else was reconciled.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Engine;
use crate::recrubo::RecruboError;
use crate::store::{FollowedRun, PollMark};

/// Runs polled per tick at most.
const BATCH: i64 = 200;
/// The longest a failing run is left alone.
const MAX_POLL_BACKOFF: Duration = Duration::from_secs(3600);

/// Runs until `shutdown`.
pub async fn run(engine: Engine, shutdown: CancellationToken) {
    let Some(client) = engine.deps.recrubo.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(engine.settings.reconcile_every) => {}
        }
        let now = Utc::now();
        let before = chrono::Duration::from_std(engine.settings.reconcile_after)
            .ok()
            .and_then(|after| now.checked_sub_signed(after))
            .unwrap_or(now);
        // Claimed until a run would be stale again: another instance polls it then if this one
        // died before it did.
        let until = super::checked_after(now, engine.settings.reconcile_after).unwrap_or(now);
        let stale = match engine
            .store
            .claim_stale_followed(before, now, BATCH, until)
            .await
        {
            Ok(stale) => stale,
            Err(err) => {
                warn!(error = %err, "Cannot list followed runs to reconcile");
                continue;
            }
        };
        let mut found = 0;
        for followed in stale {
            if shutdown.is_cancelled() {
                return;
            }
            let mark = match client
                .poll(followed.resource_type, &followed.resource_id)
                .await
            {
                Ok(resource) => {
                    if queue_change(&engine, &followed, resource).await {
                        found += 1;
                    }
                    PollMark::Read
                }
                // One 404 could be a proxy or a wrong `base_url`: gone only when the polls before
                // it failed too (the third failure in a row, spaced by the backoff).
                Err(err) if err.status() == Some(404) && followed.poll_failures >= 2 => {
                    warn!(resource = %followed.resource_id, rule = %followed.rule, "Recrubo no longer knows a followed run (404 again); it is marked gone and no longer polled");
                    metrics::counter!("flowd_reconcile_gone_total").increment(1);
                    PollMark::Gone
                }
                Err(err) => {
                    let delay = poll_backoff(&engine, &followed, &err);
                    warn!(resource = %followed.resource_id, error = %err, ?delay, "Cannot poll a followed run; polling it again later");
                    let now = Utc::now();
                    PollMark::Failed(super::checked_after(now, delay).unwrap_or(now))
                }
            };
            if let Err(err) = engine
                .store
                .mark_polled(&followed.resource_id, mark, Utc::now())
                .await
            {
                warn!(resource = %followed.resource_id, error = %err, "Cannot record a poll");
            }
        }
        if found > 0 {
            engine.events_waiting.notify_one();
        }
    }
}

/// Puts a status found by polling in the inbox; true when it is a change.
async fn queue_change(
    engine: &Engine,
    followed: &FollowedRun,
    resource: crate::recrubo::jsonapi::Resource,
) -> bool {
    let status = resource
        .str_attribute("status")
        .unwrap_or_default()
        .to_owned();
    if status == followed.status {
        return false;
    }
    info!(resource = %followed.resource_id, from = %followed.status, to = %status, "A status change was found by polling (its webhook never came)");
    let updated_at = resource
        .str_attribute("updatedAt")
        .unwrap_or_default()
        .to_owned();
    let key = format!("reconcile:{}:{status}:{updated_at}", followed.resource_id);
    let event = super::status_event(followed.resource_type, key, json!(resource));
    match engine.store.insert_events(vec![event]).await {
        Ok(_) => true,
        Err(err) => {
            warn!(resource = %followed.resource_id, error = %err, "Cannot store a status found by polling; it is found again next time");
            false
        }
    }
}

/// How long a run whose poll failed is left alone: `reconcile_every` once more per failure in a
/// row, at most ten times it, and never less than the server's `Retry-After` (capped at an
/// hour). Linear, not doubling: a poll fails mostly for reasons that are not the run's (an
/// overloaded API), and doubling left single runs waiting minutes after the API recovered
/// (bench/chaos.sh at 40% injected faults: a run failed nine polls in a row and was not
/// polled again for four minutes). Ten tries spaced this way keep a failing run from
/// starving the others, which is what the backoff is for.
fn poll_backoff(engine: &Engine, followed: &FollowedRun, err: &RecruboError) -> Duration {
    let failures = followed.poll_failures.clamp(0, 9) as u32 + 1;
    let base = engine
        .settings
        .reconcile_every
        .max(Duration::from_millis(200))
        .saturating_mul(failures)
        .min(MAX_POLL_BACKOFF);
    let jittered = base.mul_f64(0.75 + fastrand::f64() * 0.5);
    err.retry_after()
        .map_or(jittered, |after| jittered.max(after))
        .min(MAX_POLL_BACKOFF)
}
