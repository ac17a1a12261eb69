//! Recovery of lost webhooks: followed runs and generations that are not terminal and have not
//! changed for `reconcile_after` are read with `GET /flow-runs/{id}` (or `/flow-generations`);
//! a status found that way enters the inbox as if Recrubo had delivered it, so it goes through
//! the same fire-once path as any webhook.

use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Engine;
use crate::store::{EventSource, NewEvent};

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
        let before = Utc::now()
            - chrono::Duration::from_std(engine.settings.reconcile_after).unwrap_or_default();
        let stale = match engine.store.stale_followed(before, 200).await {
            Ok(stale) => stale,
            Err(err) => {
                warn!(error = %err, "Cannot list followed runs to reconcile");
                continue;
            }
        };
        let mut found = 0;
        for followed in stale {
            let resource = if followed.resource_type == "flowRuns" {
                client
                    .get_flow_run(&followed.resource_id)
                    .await
                    .map(|run| run.resource)
            } else {
                client
                    .get_flow_generation(&followed.resource_id)
                    .await
                    .map(|generation| generation.resource)
            };
            let resource = match resource {
                Ok(resource) => resource,
                Err(err) => {
                    warn!(resource = %followed.resource_id, error = %err, "Cannot poll a followed run");
                    continue;
                }
            };
            let status = resource
                .str_attribute("status")
                .unwrap_or_default()
                .to_owned();
            if status == followed.status {
                let _ = engine
                    .store
                    .touch_followed(&followed.resource_id, Utc::now())
                    .await;
                continue;
            }
            info!(resource = %followed.resource_id, from = %followed.status, to = %status, "A status change was found by polling (its webhook never came)");
            let updated_at = resource
                .str_attribute("updatedAt")
                .unwrap_or_default()
                .to_owned();
            let payload = json!({ "data": {
                "type": "webhookPayload",
                "id": format!("reconcile:{}:{status}:{updated_at}", followed.resource_id),
                "attributes": { "event": "update", "fields": ["status"], "resource": resource },
            }});
            let event = NewEvent {
                source: EventSource::Reconcile,
                event_type: format!("{}/update", followed.resource_type),
                dedup_key: Some(format!(
                    "reconcile:{}:{status}:{updated_at}",
                    followed.resource_id
                )),
                payload,
            };
            if engine.store.insert_events(&[event]).await.is_ok() {
                found += 1;
            }
            let _ = engine
                .store
                .touch_followed(&followed.resource_id, Utc::now())
                .await;
        }
        if found > 0 {
            engine.events_waiting.notify_one();
        }
    }
}
