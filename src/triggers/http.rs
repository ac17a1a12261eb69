//! The HTTP intake: `POST /webhooks/recrubo` and `POST /events/{type}`.
//!
//! A request is answered 2xx only after its event is stored. Stores go through one writer task
//! that commits many events per transaction (group commit): under load, one fsync serves a batch
//! instead of each request. Authentication: Recrubo's shared secret header (constant time, two
//! secrets during rotation); for events a bearer token or an HMAC signature
//! (`X-Flowd-Signature: t=<unix>,v1=<hex hmac-sha256 of "t.body">`, five minutes' tolerance).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, warn};

use crate::recrubo::jsonapi::WebhookPayload;
use crate::settings::Secret;
use crate::store::{InsertOutcome, NewEvent, Store, StoreError};

/// The largest body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How far a signature's timestamp may be from now.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

type Reply = oneshot::Sender<Result<InsertOutcome, String>>;

/// The intake's shared state.
#[derive(Clone)]
pub struct Intake {
    writer: mpsc::Sender<(NewEvent, Reply)>,
    webhook_secrets: Arc<Vec<Secret<String>>>,
    event_tokens: Arc<Vec<Secret<String>>>,
    hmac_secret: Option<Secret<String>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

impl Intake {
    /// Starts the writer task.
    pub fn start(
        store: Arc<dyn Store>,
        wake: Arc<Notify>,
        webhook_secrets: Vec<Secret<String>>,
        event_tokens: Vec<Secret<String>>,
        hmac_secret: Option<Secret<String>>,
    ) -> Intake {
        let (writer, mut receiver) = mpsc::channel::<(NewEvent, Reply)>(16_384);
        tokio::spawn(async move {
            let mut events: Vec<NewEvent> = Vec::with_capacity(1024);
            let mut replies: Vec<Reply> = Vec::with_capacity(1024);
            while let Some((event, reply)) = receiver.recv().await {
                events.push(event);
                replies.push(reply);
                while events.len() < 1024 {
                    match receiver.try_recv() {
                        Ok((event, reply)) => {
                            events.push(event);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let result: Result<Vec<InsertOutcome>, StoreError> =
                    store.insert_events(&events).await;
                events.clear();
                match result {
                    Ok(outcomes) => {
                        for (reply, outcome) in replies.drain(..).zip(outcomes) {
                            let _ = reply.send(Ok(outcome));
                        }
                        wake.notify_one();
                    }
                    Err(err) => {
                        error!(error = %err, events = replies.len(), "Cannot store events; answering 503");
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(err.to_string()));
                        }
                    }
                }
            }
        });
        Intake {
            writer,
            webhook_secrets: Arc::new(webhook_secrets),
            event_tokens: Arc::new(event_tokens),
            hmac_secret,
        }
    }

    /// Stores one event (with the others of its batch) and reports what happened.
    pub async fn store(&self, event: NewEvent) -> Result<InsertOutcome, String> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send((event, reply))
            .await
            .map_err(|_| "the intake is shutting down".to_owned())?;
        answer
            .await
            .map_err(|_| "the intake is shutting down".to_owned())?
    }
}

fn problem(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(json!({ "error": reason.into() }))).into_response()
}

fn accepted(outcome: InsertOutcome) -> Response {
    match outcome {
        InsertOutcome::Stored(id) => (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "accepted", "id": id })),
        )
            .into_response(),
        InsertOutcome::Duplicate => {
            (StatusCode::OK, Json(json!({ "status": "duplicate" }))).into_response()
        }
    }
}

fn secret_matches(given: &[u8], secrets: &[Secret<String>]) -> bool {
    // Compare with every secret, always, so timing tells nothing about which one matched.
    secrets.iter().fold(false, |found, secret| {
        let equal: bool = given.ct_eq(secret.expose().as_bytes()).into();
        found | (equal && !secret.expose().is_empty())
    })
}

/// `POST /webhooks/recrubo`.
pub async fn recrubo_webhook(
    State(intake): State<Intake>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let given = headers
        .get("x-recrubo-webhook-secret")
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if !secret_matches(given, &intake.webhook_secrets) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Recrubo-Webhook-Secret",
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {err}"),
            );
        }
    };
    let payload: WebhookPayload = match serde_json::from_value(value.clone()) {
        Ok(payload) => payload,
        Err(err) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the body is not a Recrubo WebhookPayload ({{data: {{type, id, attributes: {{event, resource}}}}}}): {err}"
                ),
            );
        }
    };
    if payload.data.id.is_empty() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`data.id` (the WebhookLog id) is empty",
        );
    }
    let event = NewEvent {
        source: crate::store::EventSource::Recrubo,
        event_type: format!(
            "{}/{}",
            payload.data.attributes.resource.resource_type, payload.data.attributes.event
        ),
        dedup_key: Some(format!("recrubo:{}", payload.data.id)),
        payload: value,
    };
    match intake.store(event).await {
        Ok(outcome) => accepted(outcome),
        Err(reason) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the event could not be stored: {reason}"),
        ),
    }
}

/// Checks `X-Flowd-Signature: t=<unix>,v1=<hex>` against `t.body`.
pub fn verify_signature(
    header_value: &str,
    body: &[u8],
    secret: &str,
    now_unix: i64,
) -> Result<(), String> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header_value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("the signature has no valid `t=` timestamp")?;
    if (now_unix - timestamp).unsigned_abs() > SIGNATURE_TOLERANCE.as_secs() {
        return Err("the signature's timestamp is more than 5 minutes from now".to_owned());
    }
    for signature in signatures {
        let Ok(expected) = hex::decode(&signature) else {
            continue;
        };
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|err| err.to_string())?;
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err("no `v1=` signature matches".to_owned())
}

/// `POST /events/{type}`: the body is the event's `data`.
pub async fn external_event(
    State(intake): State<Intake>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let signature = headers
        .get("x-flowd-signature")
        .and_then(|v| v.to_str().ok());
    let auth_configured = !intake.event_tokens.is_empty() || intake.hmac_secret.is_some();
    if auth_configured {
        let by_token =
            bearer.is_some_and(|token| secret_matches(token.as_bytes(), &intake.event_tokens));
        let by_signature = match (signature, &intake.hmac_secret) {
            (Some(value), Some(secret)) => {
                match verify_signature(
                    value,
                    &body,
                    secret.expose(),
                    chrono::Utc::now().timestamp(),
                ) {
                    Ok(()) => true,
                    Err(reason) => return problem(StatusCode::UNAUTHORIZED, reason),
                }
            }
            _ => false,
        };
        if !by_token && !by_signature {
            return problem(
                StatusCode::UNAUTHORIZED,
                "a bearer token or an X-Flowd-Signature is required",
            );
        }
    }
    if event_type.is_empty() || event_type.len() > 200 || event_type.contains(char::is_whitespace) {
        return problem(StatusCode::BAD_REQUEST, "invalid event type");
    }
    let data: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(data) => data,
            Err(err) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {err}"),
                );
            }
        }
    };
    let id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| match &data["id"] {
            Value::String(id) => Some(id.clone()),
            Value::Number(id) => Some(id.to_string()),
            _ => None,
        });
    let event = NewEvent {
        source: crate::store::EventSource::Event,
        event_type: event_type.clone(),
        dedup_key: id.as_ref().map(|id| format!("event:{event_type}:{id}")),
        payload: json!({ "type": event_type, "id": id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()), "data": data }),
    };
    match intake.store(event).await {
        Ok(outcome) => accepted(outcome),
        Err(reason) => {
            warn!(reason = %reason, "Event not stored");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the event could not be stored: {reason}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        format!(
            "t={timestamp},v1={}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn signatures_are_checked_with_tolerance() {
        let body = br#"{"a":1}"#;
        let now = 1_800_000_000;
        assert!(verify_signature(&sign("k", now, body), body, "k", now).is_ok());
        assert!(verify_signature(&sign("k", now - 299, body), body, "k", now).is_ok());
        assert!(verify_signature(&sign("k", now - 301, body), body, "k", now).is_err());
        assert!(verify_signature(&sign("other", now, body), body, "k", now).is_err());
        assert!(verify_signature(&sign("k", now, body), b"{}", "k", now).is_err());
        assert!(verify_signature("v1=00", body, "k", now).is_err());
    }

    #[test]
    fn any_of_the_rotation_secrets_matches() {
        let secrets = vec![Secret::new("old".to_owned()), Secret::new("new".to_owned())];
        assert!(secret_matches(b"old", &secrets));
        assert!(secret_matches(b"new", &secrets));
        assert!(!secret_matches(b"", &secrets));
        assert!(!secret_matches(b"ne", &secrets));
        assert!(!secret_matches(b"", &[Secret::new(String::new())]));
    }
}
