//! Typed views of the resources flowd works with. Each keeps the whole [`Resource`], so no
//! attribute Recrubo sends is lost; the typed fields are read leniently.

use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use super::jsonapi::Resource;
use super::status::{FlowGenerationStatus, FlowRunStatus};

fn time_attribute(resource: &Resource, name: &str) -> Option<DateTime<FixedOffset>> {
    resource
        .str_attribute(name)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
}

/// A FlowRun (recrubo-api.md §6.1).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRun {
    /// The resource as received.
    pub resource: Resource,
}

impl FlowRun {
    /// The id.
    pub fn id(&self) -> &str {
        &self.resource.id
    }
    /// The status; both `created` and `queued` are accepted, unknown ones kept as `Other`.
    pub fn status(&self) -> FlowRunStatus {
        FlowRunStatus::parse(self.resource.str_attribute("status").unwrap_or(""))
    }
    /// The session variables (`{}` when absent).
    pub fn state(&self) -> Value {
        self.resource
            .attributes
            .get("state")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()))
    }
    /// The Flow id.
    pub fn flow_id(&self) -> Option<&str> {
        self.resource.str_attribute("flowId")
    }
    /// The MessageThread id.
    pub fn message_thread_id(&self) -> Option<&str> {
        self.resource.str_attribute("messageThreadId")
    }
    /// The cost in credits.
    pub fn cost(&self) -> Option<f64> {
        self.resource.attributes.get("cost").and_then(Value::as_f64)
    }
    /// `updatedAt`.
    pub fn updated_at(&self) -> Option<DateTime<FixedOffset>> {
        time_attribute(&self.resource, "updatedAt")
    }
    /// `createdAt`.
    pub fn created_at(&self) -> Option<DateTime<FixedOffset>> {
        time_attribute(&self.resource, "createdAt")
    }
    /// The run as templates see it (`run.id`, `run.status`, `run.state`, `run.flowId`, ...):
    /// the attributes flattened next to `id` and `type`.
    pub fn context(&self) -> Value {
        flattened(&self.resource)
    }
}

/// A FlowGeneration (recrubo-api.md §6.2).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowGeneration {
    /// The resource as received.
    pub resource: Resource,
}

impl FlowGeneration {
    /// The id.
    pub fn id(&self) -> &str {
        &self.resource.id
    }
    /// The status.
    pub fn status(&self) -> FlowGenerationStatus {
        FlowGenerationStatus::parse(self.resource.str_attribute("status").unwrap_or(""))
    }
    /// The generated Flow's id, once finished.
    pub fn flow_id(&self) -> Option<&str> {
        self.resource.str_attribute("flowId")
    }
    /// `updatedAt`.
    pub fn updated_at(&self) -> Option<DateTime<FixedOffset>> {
        time_attribute(&self.resource, "updatedAt")
    }
    /// The generation as templates see it.
    pub fn context(&self) -> Value {
        flattened(&self.resource)
    }
}

/// A VacancyAnalysis (recrubo-api.md §6.4). It has no status: done means `analyzeResult` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct VacancyAnalysis {
    /// The resource as received.
    pub resource: Resource,
}

impl VacancyAnalysis {
    /// The id.
    pub fn id(&self) -> &str {
        &self.resource.id
    }
    /// The result, once there is one.
    pub fn analyze_result(&self) -> Option<&Value> {
        self.resource
            .attributes
            .get("analyzeResult")
            .filter(|value| !value.is_null())
    }
    /// Whether the analysis is done.
    pub fn is_done(&self) -> bool {
        self.analyze_result().is_some()
    }
}

/// `{id, type, ...attributes}`: how runs and generations appear in templates and conditions.
pub fn flattened(resource: &Resource) -> Value {
    let mut map = resource.attributes.clone();
    map.insert("id".to_owned(), Value::String(resource.id.clone()));
    map.insert(
        "type".to_owned(),
        Value::String(resource.resource_type.clone()),
    );
    Value::Object(map)
}

/// The attributes of `POST /flow-runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFlowRun {
    /// Flow id.
    pub flow_id: String,
    /// MessageThread id.
    pub message_thread_id: String,
    /// Initial state (`{}` when none).
    pub state: Value,
    /// Initial message (`{}` for none, as the docs advise).
    pub initial_message: Value,
}

impl NewFlowRun {
    /// The request attributes.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("flowId".into(), Value::String(self.flow_id.clone()));
        map.insert(
            "messageThreadId".into(),
            Value::String(self.message_thread_id.clone()),
        );
        map.insert("state".into(), empty_object_if_null(&self.state));
        map.insert(
            "initialMessage".into(),
            empty_object_if_null(&self.initial_message),
        );
        map
    }
}

fn empty_object_if_null(value: &Value) -> Value {
    if value.is_null() {
        Value::Object(Map::new())
    } else {
        value.clone()
    }
}

/// The attributes of `PATCH /flow-runs/{id}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowRunPatch {
    /// New state.
    pub state: Option<Value>,
    /// New status (`finished`, `timeout`, `cancelled`, `exception`).
    pub status: Option<String>,
}

impl FlowRunPatch {
    /// The request attributes.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut map = Map::new();
        if let Some(state) = &self.state {
            map.insert("state".into(), state.clone());
        }
        if let Some(status) = &self.status {
            map.insert("status".into(), Value::String(status.clone()));
        }
        map
    }
}

/// The attributes of `POST /flow-generations`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFlowGeneration {
    /// `vacancy_application_flow` (the only documented type).
    pub flow_type: String,
    /// Parameters (knockoutRequirements, preferredRequirements, requiredFields, vacancyId, ...).
    pub parameters: Value,
    /// Context (the vacancy text etc.).
    pub context: Value,
}

impl NewFlowGeneration {
    /// The request attributes.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("flowType".into(), Value::String(self.flow_type.clone()));
        map.insert("parameters".into(), empty_object_if_null(&self.parameters));
        map.insert("context".into(), empty_object_if_null(&self.context));
        map
    }
}

/// Fills `knockoutRequirements` / `preferredRequirements` from a VacancyAnalysis result:
/// required certifications and highly rated hard skills become knockouts, the rest preferred.
/// `sessionField` is left for Recrubo's AI to name (allowed by the docs).
pub fn requirements_from_analysis(result: &Value) -> (Vec<Value>, Vec<Value>) {
    let mut knockout = Vec::new();
    let mut preferred = Vec::new();
    let requirement = |item: &Value| {
        item.get("writtenAsRequirement")
            .and_then(Value::as_str)
            .map(|text| serde_json::json!({ "value": text }))
    };
    for certification in result
        .get("certifications")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(req) = requirement(certification) {
            let required = certification
                .get("required")
                .is_some_and(|r| r.as_bool() == Some(true) || r.as_str() == Some("true"));
            if required {
                knockout.push(req)
            } else {
                preferred.push(req)
            }
        }
    }
    for skill in result
        .get("hardSkills")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(req) = requirement(skill) {
            let rating = skill
                .get("rating")
                .and_then(|r| {
                    r.as_f64()
                        .or_else(|| r.as_str().and_then(|s| s.parse().ok()))
                })
                .unwrap_or(0.0);
            if rating >= 4.0 {
                knockout.push(req)
            } else {
                preferred.push(req)
            }
        }
    }
    for skill in result
        .get("softSkills")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(req) = requirement(skill) {
            preferred.push(req);
        }
    }
    (knockout, preferred)
}
