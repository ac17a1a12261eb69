//! What the simulator knows: its collections, the webhook target, faults in force, the request
//! and delivery journals, and the operations on them that the API handlers ([`super::api`]) and
//! the lifecycle scripts ([`super::lifecycle`]) share. Both import this module; neither imports
//! the other's state.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::faults::Faults;
use super::store::{COLLECTIONS, Collection, new_resource, type_of};
use super::webhooks::{Deliverer, Delivery, DeliveryRecord};
use super::{Journal, RecordedRequest, SimSettings};
use crate::recrubo::jsonapi::Resource;
use crate::recrubo::query::ListQuery;

/// Everything the simulator knows.
pub struct SimState {
    pub(super) settings: SimSettings,
    pub(super) collections: Mutex<HashMap<&'static str, Collection>>,
    pub(super) webhook_target: RwLock<(Option<String>, Option<String>)>,
    /// Faults in force.
    pub faults: Arc<RwLock<Faults>>,
    /// Requests received.
    pub requests: Journal<RecordedRequest>,
    /// Delivery attempts.
    pub deliveries: Arc<Journal<DeliveryRecord>>,
    pub(super) deliverer: Deliverer,
    /// Cancelled when the simulator stops.
    pub shutdown: CancellationToken,
    pub(super) started: Instant,
    pub(super) sequence: AtomicU64,
    pub(super) organization_id: String,
}

impl std::fmt::Debug for SimState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState").finish_non_exhaustive()
    }
}

pub(super) fn resource_json(resource: &Resource) -> Value {
    serde_json::to_value(resource).unwrap_or(Value::Null)
}

pub(super) fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

impl SimState {
    /// Builds the state and starts the delivery workers.
    pub fn new(settings: SimSettings, shutdown: CancellationToken) -> Arc<SimState> {
        let faults = Arc::new(RwLock::new(settings.faults.clone()));
        let deliveries = Arc::new(Journal::new(200_000));
        let started = Instant::now();
        let deliverer = Deliverer::start(
            16,
            faults.clone(),
            deliveries.clone(),
            settings.retry_scale.unwrap_or(0.001),
            started,
            shutdown.clone(),
        );
        let mut collections: HashMap<&'static str, Collection> = COLLECTIONS
            .iter()
            .map(|(path, _)| (*path, Collection::default()))
            .collect();
        let mut organization_attributes = Map::new();
        organization_attributes.insert(
            "name".into(),
            Value::String("Simulated Organization".into()),
        );
        if let Some(url) = &settings.webhook_url {
            organization_attributes.insert("webhookUrl".into(), Value::String(url.clone()));
        }
        let organization = new_resource("organizations", organization_attributes, &now_text());
        let organization_id = organization.id.clone();
        if let Some(organizations) = collections.get_mut("organizations") {
            organizations.put(organization);
        }
        Arc::new(SimState {
            webhook_target: RwLock::new((
                settings.webhook_url.clone(),
                settings.webhook_secret.clone(),
            )),
            settings,
            collections: Mutex::new(collections),
            faults,
            requests: Journal::new(200_000),
            deliveries,
            deliverer,
            shutdown,
            started,
            sequence: AtomicU64::new(0),
            organization_id,
        })
    }

    pub(super) fn with_collection<R>(
        &self,
        collection: &str,
        work: impl FnOnce(&mut Collection) -> R,
    ) -> Option<R> {
        let mut collections = self.collections.lock().unwrap_or_else(|p| p.into_inner());
        collections.get_mut(collection).map(work)
    }

    /// A copy of a resource.
    pub fn get(&self, collection: &str, id: &str) -> Option<Resource> {
        self.with_collection(collection, |c| c.get(id).cloned())
            .flatten()
    }

    /// Stores a resource created outside the API (tests seed threads and flows this way).
    pub fn insert(&self, collection: &str, attributes: Map<String, Value>) -> Option<Resource> {
        let resource_type = type_of(collection)?;
        let resource = new_resource(resource_type, attributes, &now_text());
        self.with_collection(collection, |c| c.put(resource.clone()))?;
        Some(resource)
    }

    /// Milliseconds since start.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Sends webhooks for an event to every matching subscription, or — while there are none
    /// and `deliver_by_default` holds — updates of flow runs and generations to the org URL.
    pub(super) fn emit(&self, event: &str, resource: &Resource, fields: &[&str]) {
        let (org_url, secret) = self
            .webhook_target
            .read()
            .map(|target| target.clone())
            .unwrap_or_default();
        let subscriptions: Vec<Resource> = self
            .with_collection("webhooks", |c| c.list(&ListQuery::new().page_size(200)).0)
            .unwrap_or_default();
        let mut targets: Vec<(Option<String>, Option<String>)> = Vec::new();
        if subscriptions.is_empty() {
            let by_default = self.settings.deliver_by_default.unwrap_or(true)
                && event == "update"
                && matches!(
                    resource.resource_type.as_str(),
                    "flowRuns" | "flowGenerations"
                );
            if by_default {
                targets.push((org_url.clone(), None));
            }
        } else {
            for subscription in &subscriptions {
                let wants_resource =
                    subscription.str_attribute("resource") == Some(resource.resource_type.as_str());
                let wants_event = subscription
                    .str_attribute("event")
                    .is_none_or(|e| e == event);
                let wants_fields = match subscription
                    .attributes
                    .get("fields")
                    .and_then(Value::as_array)
                {
                    Some(wanted) if event == "update" && !wanted.is_empty() => wanted
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|field| fields.contains(&field)),
                    _ => true,
                };
                if wants_resource && wants_event && wants_fields {
                    let url = subscription
                        .str_attribute("webhookUrl")
                        .map(str::to_owned)
                        .or_else(|| org_url.clone());
                    targets.push((url, Some(subscription.id.clone())));
                }
            }
        }
        for (url, webhook_id) in targets {
            let Some(url) = url else { continue };
            let log_id = uuid::Uuid::new_v4().to_string();
            let mut attributes = Map::new();
            if let Some(webhook_id) = webhook_id {
                attributes.insert("webhookId".into(), Value::String(webhook_id));
            }
            attributes.insert("event".into(), Value::String(event.to_owned()));
            if event == "update" {
                attributes.insert("fields".into(), json!(fields));
            }
            attributes.insert("resource".into(), resource_json(resource));
            let payload = json!({ "data": { "type": "webhookPayload", "id": log_id, "attributes": attributes } });
            if !self.deliverer.send(Delivery {
                log_id,
                url,
                secret: secret.clone(),
                payload,
            }) {
                tracing::warn!("Simulator delivery queue full; a webhook was lost");
            }
        }
    }

    /// Moves a run to `to` when its status is one of `from` (used by scripts); merges `state`.
    pub fn advance_run(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        state: Option<Value>,
    ) -> Option<Resource> {
        let updated = self
            .with_collection("flow-runs", |runs| {
                let run = runs.get_mut(id)?;
                let current = run.str_attribute("status").unwrap_or("").to_owned();
                if !from.is_empty() && !from.contains(&current.as_str()) {
                    return None;
                }
                Some(apply_run_change(run, to, state))
            })
            .flatten()?;
        tracing::info!(run = %id, status = %to, "Simulated flow run changed status");
        self.emit("update", &updated.0, &updated.1);
        Some(updated.0)
    }

    /// Moves a generation; `finished` creates the generated Flow and sets `flowId`.
    pub fn advance_generation(&self, id: &str, from: &[&str], to: &str) -> Option<Resource> {
        let flow = (to == "finished").then(|| {
            let mut attributes = Map::new();
            attributes.insert(
                "name".into(),
                Value::String(format!("Generated flow for {id}")),
            );
            attributes.insert("published".into(), Value::Bool(true));
            new_resource("flows", attributes, &now_text())
        });
        let updated = {
            let mut collections = self.collections.lock().unwrap_or_else(|p| p.into_inner());
            let generations = collections.get_mut("flow-generations")?;
            let generation = generations.get_mut(id)?;
            let current = generation.str_attribute("status").unwrap_or("").to_owned();
            if !from.is_empty() && !from.contains(&current.as_str()) {
                return None;
            }
            generation
                .attributes
                .insert("status".into(), Value::String(to.to_owned()));
            generation
                .attributes
                .insert("updatedAt".into(), Value::String(now_text()));
            let mut fields = vec!["status"];
            if let Some(flow) = &flow {
                generation
                    .attributes
                    .insert("flowId".into(), Value::String(flow.id.clone()));
                generation.attributes.insert("cost".into(), json!(10));
                fields.extend(["flowId", "cost"]);
            }
            let updated = generation.clone();
            if let (Some(flow), Some(flows)) = (flow, collections.get_mut("flows")) {
                flows.put(flow);
            }
            (updated, fields)
        };
        tracing::info!(generation = %id, status = %to, "Simulated flow generation changed status");
        self.emit("update", &updated.0, &updated.1);
        Some(updated.0)
    }

    pub(super) fn finish_analysis(&self, id: &str) -> Option<Resource> {
        let updated = self
            .with_collection("vacancy-analyses", |analyses| {
                let analysis = analyses.get_mut(id)?;
                let text = analysis.str_attribute("inputText").unwrap_or("").to_owned();
                analysis.attributes.insert(
                    "analyzeResult".into(),
                    crate::recrubo::sample::analyze(&text),
                );
                analysis
                    .attributes
                    .insert("updatedAt".into(), Value::String(now_text()));
                Some(analysis.clone())
            })
            .flatten()?;
        self.emit("update", &updated, &["analyzeResult"]);
        Some(updated)
    }
}

/// Sets a run's status and merges state; returns the run and the changed fields.
pub(super) fn apply_run_change(
    run: &mut Resource,
    status: &str,
    state: Option<Value>,
) -> (Resource, Vec<&'static str>) {
    let mut fields = Vec::new();
    if run.str_attribute("status") != Some(status) {
        run.attributes
            .insert("status".into(), Value::String(status.to_owned()));
        fields.push("status");
    }
    if status == "running" && run.attributes.get("cost").and_then(Value::as_f64) == Some(0.0) {
        run.attributes.insert("cost".into(), json!(1));
        fields.push("cost");
    }
    if let Some(Value::Object(patch)) = state {
        let current = run
            .attributes
            .entry("state")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(current) = current {
            current.extend(patch);
        }
        fields.push("state");
    }
    run.attributes
        .insert("updatedAt".into(), Value::String(now_text()));
    (run.clone(), fields)
}
