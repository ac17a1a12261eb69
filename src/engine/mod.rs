//! The running daemon's core: the rule set in force and its hot reload ([`reload`]), matching
//! events to rules ([`matcher`]), deciding without effects what a matched event makes of a rule
//! and what a step does before it acts ([`plan`]), acting through one seam ([`effects`]: the
//! real clients in the daemon, recorded fakes on a virtual clock in [`dry_run`] for `flowd test`
//! and `flowd simulate`), rendering steps ([`render`]), turning stored events into executions
//! ([`processor`]), running them with durable retries ([`executor`]), and polling followed runs
//! whose webhooks went missing ([`reconcile`]).

pub mod deadlines;
pub mod dry_run;
pub mod effects;
pub mod executor;
pub mod matcher;
pub mod plan;
pub mod processor;
pub mod reconcile;
pub mod reload;
pub mod render;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::actions::ActionDeps;
use crate::settings::Secret;
use crate::store::Store;
use reload::Reloader;

/// `now + delay`, or `None` where that is not a time (DESIGN 3: arithmetic on durations from
/// outside or from a rule is checked, never a panic). Callers choose the fallback.
pub fn checked_after(
    now: chrono::DateTime<chrono::Utc>,
    delay: Duration,
) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::TimeDelta::from_std(delay)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
}

/// A status flowd learnt other than by a webhook (a poll, a create's answer), as the inbox
/// event a webhook would have been: it then goes through the same fire-once path. `key` is its
/// dedup key and WebhookLog id.
pub fn status_event(
    kind: crate::recrubo::FollowedKind,
    key: String,
    resource: serde_json::Value,
) -> crate::store::NewEvent {
    crate::store::NewEvent {
        source: crate::store::EventSource::Reconcile,
        event_type: format!("{kind}/update"),
        dedup_key: Some(key.clone()),
        payload: serde_json::json!({ "data": {
            "type": "webhookPayload",
            "id": key,
            "attributes": { "event": "update", "fields": ["status"], "resource": resource },
        }}),
    }
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Steps in flight at most, all rules together.
    pub max_steps_in_flight: usize,
    /// How long a claimed execution is leased before another worker may take it.
    pub lease: Duration,
    /// Poll followed runs unchanged for this long.
    pub reconcile_after: Duration,
    /// How often to look for stale followed runs.
    pub reconcile_every: Duration,
    /// This instance's id (leases and the cluster view name it).
    pub instance: String,
    /// How long a status change of a run flowd does not know yet is held back, waiting for the
    /// step that created it to record it (the create's answer may arrive after the webhook).
    pub unknown_run_grace: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_steps_in_flight: 256,
            lease: Duration::from_secs(30),
            instance: "local".to_owned(),
            reconcile_after: Duration::from_secs(600),
            reconcile_every: Duration::from_secs(30),
            unknown_run_grace: Duration::from_secs(30),
        }
    }
}

/// What every part of the engine shares.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The rules in force.
    pub reloader: Arc<Reloader>,
    /// What steps need.
    pub deps: ActionDeps,
    /// Secret values for `{{secrets.NAME}}`; never stored.
    pub secrets: Arc<SecretValues>,
    /// Tunables.
    pub settings: EngineSettings,
    /// Wakes the processor (new events).
    pub events_waiting: Arc<Notify>,
    /// Wakes the executor (new executions).
    pub executions_waiting: Arc<Notify>,
}

impl Engine {
    /// The secret values, for redaction.
    pub fn secret_values(&self) -> &[String] {
        &self.secrets.values
    }

    /// `{"NAME": value}` for templates.
    pub fn secrets_json(&self) -> &serde_json::Value {
        &self.secrets.json
    }
}

/// The resolved secrets, in the two forms the engine uses on every step — built once, at start.
#[derive(Debug, Default)]
pub struct SecretValues {
    values: Vec<String>,
    json: serde_json::Value,
}

impl SecretValues {
    /// From the resolved secrets.
    pub fn new(secrets: &BTreeMap<String, Secret<String>>) -> Self {
        Self::with_others(secrets, &[])
    }

    /// From the rule secrets, also redacting `others` (the secret settings: tokens and
    /// passwords a peer might echo into an answer that lands in the history).
    pub fn with_others(
        secrets: &BTreeMap<String, Secret<String>>,
        others: &[&Secret<String>],
    ) -> Self {
        // A setting of one to three characters (a test's token `t`) would turn every such
        // letter of the history into `***`; such values are not redacted.
        let mut values: Vec<String> = secrets
            .values()
            .chain(
                others
                    .iter()
                    .copied()
                    .filter(|s| s.expose().chars().count() >= 4),
            )
            .flat_map(|s| secret_forms(s.expose()))
            .collect();
        // Longest first, so a form that contains another is replaced whole.
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        SecretValues {
            values,
            json: serde_json::Value::Object(
                secrets
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().clone())))
                    .collect(),
            ),
        }
    }
}

/// Every form a template can give a secret (DESIGN 5): as is, `urlencode`d (and form-encoded),
/// upper- and lower-cased, JSON-escaped — each of which redaction must find.
pub fn secret_forms(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let json = serde_json::to_string(value).unwrap_or_default();
    let json = json.trim_matches('"').to_owned();
    let percent = crate::rules::template::percent_encode(value);
    let form: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let mut forms = vec![
        value.to_owned(),
        value.to_uppercase(),
        value.to_lowercase(),
        json.clone(),
        json.to_uppercase(),
        json.to_lowercase(),
        percent.clone(),
        percent.to_uppercase(),
        percent.to_lowercase(),
        form,
        crate::rules::template::percent_encode(&value.to_uppercase()),
        crate::rules::template::percent_encode(&value.to_lowercase()),
    ];
    forms.sort();
    forms.dedup();
    forms.retain(|form| !form.is_empty());
    forms
}
