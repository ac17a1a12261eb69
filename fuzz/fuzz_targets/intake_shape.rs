//! The intake's body parsing. `POST /webhooks/recrubo` parses the body as JSON, then as a
//! Recrubo `WebhookPayload`, and builds the event type `<resource type>/<event>`; `POST
//! /events/{type}` checks the type with `valid_event_type` and reads `data["id"]`. Both the
//! direct `from_slice` into `WebhookPayload` and the intake's two-step path are driven, and a
//! payload that parsed must serialize and parse again.
#![no_main]

use flowd::recrubo::jsonapi::WebhookPayload;
use flowd::triggers::http::valid_event_type;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

fn check(payload: &WebhookPayload) {
    let event_type = format!(
        "{}/{}",
        payload.data.attributes.resource.resource_type, payload.data.attributes.event
    );
    let _ = valid_event_type(&event_type);
    let _ = payload.data.id.is_empty();
    let bytes = serde_json::to_vec(payload).expect("a parsed payload serializes");
    let again: WebhookPayload =
        serde_json::from_slice(&bytes).expect("a serialized payload parses again");
    let _ = again;
}

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = serde_json::from_slice::<WebhookPayload>(data) {
        check(&payload);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        if let Ok(payload) = WebhookPayload::deserialize(&value) {
            check(&payload);
        }
        // `POST /events/{type}`: the idempotency key falls back to `data.id`.
        match &value["id"] {
            Value::String(id) => {
                let _ = valid_event_type(id);
            }
            Value::Number(id) => {
                let _ = id.to_string();
            }
            _ => {}
        }
    }
    // The event type of `POST /events/{type}` is a path segment: any string.
    let _ = valid_event_type(&String::from_utf8_lossy(data));
});
