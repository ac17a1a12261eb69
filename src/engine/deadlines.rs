//! `deadline` on a create step (DESIGN 2.5): a run (or generation) flowd follows that is not
//! terminal by its deadline fires `on_status.deadline` once. The store knows the deadlines, so
//! one that fell due while flowd was down fires after the restart; marking a deadline fired and
//! storing its handler execution is one transaction, so it fires once across instances too.

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Engine;
use crate::recrubo::FollowedKind;

/// How often deadlines are looked for: a deadline fires at most this late.
const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Deadlines fired at a time.
const BATCH: i64 = 200;

/// Runs until `shutdown`.
pub async fn run(engine: Engine, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let now = Utc::now();
        let due = match engine.store.due_deadlines(now, BATCH).await {
            Ok(due) => due,
            Err(err) => {
                warn!(error = %err, "Cannot look for deadlines; looking again shortly");
                continue;
            }
        };
        if due.is_empty() {
            continue;
        }
        let set = engine.reloader.current();
        let fires: Vec<_> = due
            .iter()
            .map(|followed| {
                let key = followed.resource_type.context_key();
                let resource = json!({
                    "id": followed.resource_id,
                    "status": followed.status,
                    "type": followed.resource_type.json_api_type(),
                });
                let handler = super::processor::handler_execution(
                    &set, followed, "deadline", key, &resource, 0,
                )
                .map(|mut execution| {
                    execution.id = format!("deadline-{}", followed.resource_id);
                    execution.event_id = None;
                    execution
                });
                (followed.resource_id.clone(), handler)
            })
            .collect();
        match engine.store.fire_deadlines(&fires, now).await {
            Ok(fired) if fired > 0 => {
                for followed in &due {
                    let what = match followed.resource_type {
                        FollowedKind::FlowRun => "run",
                        FollowedKind::FlowGeneration => "generation",
                    };
                    info!(rule = %followed.rule, resource = %followed.resource_id, status = %followed.status, "The {what} is past its deadline; on_status.deadline fires");
                    metrics::counter!("flowd_flow_control_total", "rule" => followed.rule.clone(), "outcome" => "deadline").increment(1);
                }
                engine.executions_waiting.notify_one();
            }
            Ok(_) => {}
            Err(err) => warn!(error = %err, "Cannot fire deadlines; trying again shortly"),
        }
    }
}
