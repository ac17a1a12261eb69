//! JSON:API envelopes as Recrubo writes them (recrubo-api.md §3).
//!
//! Lenient on purpose: every attribute is kept (Recrubo may add some), `relationships`, `links`
//! and `meta` are passed through untouched, and a list's `meta` shape — undocumented — is only
//! read for hints of a next page.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A JSON:API resource object: `{id, type, attributes, relationships, links, meta}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// The id (a UUID at Recrubo).
    pub id: String,
    /// The JSON:API type, camelCase plural: `flowRuns`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Every attribute, known or not.
    #[serde(default)]
    pub attributes: Map<String, Value>,
    /// Relationships, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relationships: Option<Value>,
    /// Links, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Value>,
    /// Meta, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

impl Resource {
    /// An attribute as a string, when it is one.
    pub fn str_attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(Value::as_str)
    }

    /// The resource as JSON (for templates: `run.id`, `run.attributes...`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A top-level document: `{data, meta, links, included}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document<T> {
    /// A resource or a list of them.
    pub data: T,
    /// Top-level meta (its shape for lists is not documented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
    /// Top-level links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<Value>,
    /// Included resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included: Option<Vec<Resource>>,
}

/// The body of a create or update request: `{"data": {"type", "id"?, "attributes"}}`.
pub fn request_envelope(
    resource_type: &str,
    id: Option<&str>,
    attributes: Map<String, Value>,
) -> Value {
    let mut data = Map::new();
    data.insert("type".to_owned(), Value::String(resource_type.to_owned()));
    if let Some(id) = id {
        data.insert("id".to_owned(), Value::String(id.to_owned()));
    }
    data.insert("attributes".to_owned(), Value::Object(attributes));
    serde_json::json!({ "data": Value::Object(data) })
}

/// One error of a JSON:API `errors` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorObject {
    /// HTTP status as a string, when given.
    #[serde(default)]
    pub status: Option<Value>,
    /// A short title.
    #[serde(default)]
    pub title: Option<String>,
    /// The detail.
    #[serde(default)]
    pub detail: Option<String>,
    /// An application code.
    #[serde(default)]
    pub code: Option<Value>,
}

/// `{"errors": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDocument {
    /// The errors.
    pub errors: Vec<ApiErrorObject>,
}

/// The delivered webhook body (recrubo-api.md §9.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayload {
    /// `{type: "webhookPayload", id: <WebhookLog id>, attributes}`.
    pub data: WebhookPayloadData,
}

/// `data` of a [`WebhookPayload`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookPayloadData {
    /// Always `webhookPayload`.
    #[serde(rename = "type")]
    pub payload_type: String,
    /// The WebhookLog id: the same for retries of one delivery, so it deduplicates them.
    pub id: String,
    /// What happened.
    pub attributes: WebhookPayloadAttributes,
}

/// `attributes` of a webhook payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayloadAttributes {
    /// The subscription that fired (absent in the documented example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    /// `create`, `update` or `delete`.
    pub event: String,
    /// Updated fields, for update events (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// The resource after the event.
    pub resource: Resource,
}
