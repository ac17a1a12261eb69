//! The HTTP intake: `POST /webhooks/recrubo` and `POST /events/{type}`.
//!
//! A request is answered 2xx only after its event is stored. Stores go through one writer task
//! that commits many events per transaction (group commit): under load, one fsync serves a batch
//! instead of each request. Authentication: Recrubo's shared secret header (constant time, two
//! secrets during rotation); for events a bearer token or an HMAC signature
//! (`X-Flowd-Signature: t=<unix>,v1=<hex hmac-sha256 of "t.body">`, five minutes' tolerance).
//!
//! What it refuses (DESIGN 4.1, 4.2): credentials are checked from the headers before the body
//! is read (a signature's MAC needs the body, but its header is parsed and bounded first); the
//! MAC is computed once however many `v1=` entries there are (at most 3); a (t, MAC) pair seen
//! within the tolerance is a replay; when the writer's queue is full or the store cannot commit
//! the answer is 503 with `Retry-After`, never an unbounded wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt;
use serde::Deserialize as _;
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
/// A body must arrive within this after its head (408 otherwise).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// `v1=` entries accepted in one `X-Flowd-Signature` (DESIGN 4.1: rotation needs two or three).
const MAX_SIGNATURES: usize = 3;
/// The longest `X-Flowd-Signature` header: `t=` + 3 × `v1=<64 hex>` with room for spaces.
const MAX_SIGNATURE_HEADER: usize = 512;
/// Events waiting for the writer at most, by count and by bytes of payload; above either the
/// intake sheds load with 503 instead of queueing without bound.
const QUEUE_EVENTS: usize = 16_384;
const QUEUE_BYTES: usize = 256 * 1024 * 1024;
/// Signatures remembered for replay detection at most (each ~48 bytes); when full of unexpired
/// entries, signed requests get 503 rather than an unchecked pass.
const REPLAY_CAPACITY: usize = 1_000_000;

type Reply = oneshot::Sender<Result<InsertOutcome, String>>;
/// An event for the writer, the bytes it was counted as in the queue, and where to answer.
type Job = (NewEvent, usize, Reply);

/// The intake's shared state.
#[derive(Clone)]
pub struct Intake {
    writer: mpsc::Sender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    webhook_secrets: Arc<Vec<Secret<String>>>,
    event_tokens: Arc<Vec<Secret<String>>>,
    hmac_secret: Option<Secret<String>>,
    replays: Arc<Mutex<ReplayCache>>,
    store: Arc<dyn Store>,
    /// The rules in force, for `idempotency_key` (a duplicate is answered at the door).
    rules: Option<Arc<crate::engine::reload::Reloader>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

/// Why the intake could not store an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeError {
    /// The writer's queue is full: try again shortly.
    Busy,
    /// The store did not commit (disk full, database down); the reason is logged, not answered.
    Store,
    /// The daemon is stopping.
    ShuttingDown,
}

impl std::fmt::Display for IntakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntakeError::Busy => "the intake is busy; retry shortly",
            IntakeError::Store => "the event could not be stored; retry later",
            IntakeError::ShuttingDown => "flowd is shutting down; retry later",
        })
    }
}

impl serde::Serialize for IntakeError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl IntakeError {
    /// The 503 answer, with `Retry-After`.
    pub fn response(&self) -> Response {
        let retry_after = match self {
            IntakeError::Busy => "1",
            IntakeError::Store | IntakeError::ShuttingDown => "5",
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, retry_after)],
            Json(json!({ "error": self.to_string() })),
        )
            .into_response()
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
        let store_for_reads = store.clone();
        let (writer, mut receiver) = mpsc::channel::<Job>(QUEUE_EVENTS);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queued = queued_bytes.clone();
        tokio::spawn(async move {
            let mut events: Vec<NewEvent> = Vec::with_capacity(1024);
            let mut replies: Vec<Reply> = Vec::with_capacity(1024);
            while let Some((event, size, reply)) = receiver.recv().await {
                let mut bytes = size;
                events.push(event);
                replies.push(reply);
                while events.len() < 1024 {
                    match receiver.try_recv() {
                        Ok((event, size, reply)) => {
                            bytes += size;
                            events.push(event);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let result: Result<Vec<InsertOutcome>, StoreError> =
                    store.insert_events(std::mem::take(&mut events)).await;
                queued.fetch_sub(bytes, Ordering::Relaxed);
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
            queued_bytes,
            webhook_secrets: Arc::new(webhook_secrets),
            event_tokens: Arc::new(event_tokens),
            hmac_secret,
            replays: Arc::new(Mutex::new(ReplayCache::default())),
            store: store_for_reads,
            rules: None,
        }
    }

    /// Answers duplicates by `idempotency_key` at the door, from the rules in force.
    pub fn with_rules(mut self, rules: Arc<crate::engine::reload::Reloader>) -> Intake {
        self.rules = Some(rules);
        self
    }

    /// The execution an external event duplicates (DESIGN 2.5 `idempotency_key`): when every
    /// rule this event type starts has an `idempotency_key` and each finds its key held by a
    /// live execution, the first of those. The processor judges it again when it stores the
    /// event's executions (a duplicate that came before the first was processed is stored
    /// `skipped` then), so this answer is only ever a shortcut.
    async fn duplicate_of(&self, event: &Value) -> Option<String> {
        let set = self.rules.as_ref()?.current();
        let event_type = event["type"].as_str()?;
        let rules = set.all_idempotent(event_type);
        if rules.is_empty() {
            return None;
        }
        let now = chrono::Utc::now();
        let mut first = None;
        for rule in rules {
            let (template, _) = rule.flow.idempotency.as_ref()?;
            let context = json!({ "event": event, "vars": Value::Object((*rule.vars).clone()) });
            let key = crate::engine::plan::idempotency_key(template, &context).ok()?;
            let holder = self
                .store
                .idempotent_execution(&rule.name, &key, now)
                .await
                .ok()??;
            first.get_or_insert(holder);
        }
        first
    }

    /// Stores one event (with the others of its batch) and reports what happened. Never waits
    /// for room in the queue: a full queue is [`IntakeError::Busy`].
    pub async fn store(&self, event: NewEvent) -> Result<InsertOutcome, IntakeError> {
        self.store_sized(event, 1024).await
    }

    /// [`Intake::store`] for an event whose body had `bytes` bytes (the queue's byte budget).
    pub async fn store_sized(
        &self,
        event: NewEvent,
        bytes: usize,
    ) -> Result<InsertOutcome, IntakeError> {
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > QUEUE_BYTES {
            return Err(IntakeError::Busy);
        }
        let (reply, answer) = oneshot::channel();
        // Counted before it is sent, so the writer's subtraction can never come first.
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        match self.writer.try_send((event, bytes, reply)) {
            Ok(()) => {}
            Err(err) => {
                self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                return Err(match err {
                    mpsc::error::TrySendError::Full(_) => IntakeError::Busy,
                    mpsc::error::TrySendError::Closed(_) => IntakeError::ShuttingDown,
                });
            }
        }
        match answer.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_logged)) => Err(IntakeError::Store),
            Err(_) => Err(IntakeError::ShuttingDown),
        }
    }
}

/// Signatures accepted within the tolerance, so the same signed request is not accepted twice.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashMap<[u8; 32], i64>,
    order: VecDeque<([u8; 32], i64)>,
}

impl ReplayCache {
    /// Records `mac`, accepted at `now_unix`; false when it was seen already; `Err` when there
    /// is no room.
    fn insert(&mut self, mac: [u8; 32], now_unix: i64) -> Result<bool, ()> {
        let horizon = SIGNATURE_TOLERANCE.as_secs() as i64;
        // Entries leave in arrival order once their signature could no longer be accepted.
        while let Some((old, at)) = self.order.front().copied() {
            if now_unix - at <= horizon * 2 {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&mac) {
            return Ok(false);
        }
        if self.seen.len() >= REPLAY_CAPACITY {
            return Err(());
        }
        self.seen.insert(mac, now_unix);
        self.order.push_back((mac, now_unix));
        Ok(true)
    }

    fn forget(&mut self, mac: &[u8; 32]) {
        self.seen.remove(mac);
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

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110
/// 11.1). Both listeners read it here.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Reads the body after the credentials were checked: at most [`MAX_BODY_BYTES`] (413 above,
/// told by `Content-Length` before anything is stored), within [`BODY_TIMEOUT`] (408). A body
/// refused for its size is drained (discarded, bounded by [`LINGER_BYTES`] and
/// [`LINGER_TIME`]) before the answer, so the client reads the 413 rather than a reset.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        let mut response = problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        );
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        response
    };
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    // Refused bodies are read on (and thrown away) for a little while before the answer: a
    // client still sending when the server closes sees a reset instead of the 413.
    let mut lingering = declared
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
        .then(|| tokio::time::Instant::now() + LINGER_TIME);
    let mut collected = Vec::new();
    let mut discarded = 0usize;
    loop {
        let until = lingering.map_or(deadline, |linger| linger.min(deadline));
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) if lingering.is_some() => return Err(too_large()),
            Err(_) => {
                return Err(problem(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(_))) if lingering.is_some() => return Err(too_large()),
            Ok(Some(Err(_))) => {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    "the body could not be read",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if lingering.is_some() {
            discarded += data.len();
            if discarded > LINGER_BYTES {
                return Err(too_large());
            }
        } else if collected.len() + data.len() > MAX_BODY_BYTES {
            lingering = Some(tokio::time::Instant::now() + LINGER_TIME);
            discarded = data.len();
            collected = Vec::new();
        } else {
            collected.extend_from_slice(&data);
        }
    }
    if lingering.is_some() {
        return Err(too_large());
    }
    Ok(Bytes::from(collected))
}

/// How much of a refused body is read and thrown away at most before the 413, and for how long.
const LINGER_BYTES: usize = 8 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /webhooks/recrubo`.
pub async fn recrubo_webhook(
    State(intake): State<Intake>,
    headers: HeaderMap,
    body: Body,
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
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid JSON: {err}"),
            );
        }
    };
    let payload: WebhookPayload = match WebhookPayload::deserialize(&value) {
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
    // Recrubo's ids are UUIDs; one that no database key can hold (a NUL is refused by
    // PostgreSQL's text) would fail every write of the event after it was accepted.
    use crate::store::key_fits;
    if !key_fits(&payload.data.id) || !key_fits(&payload.data.attributes.resource.id) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`data.id` and `data.attributes.resource.id` must be ids: at most 200 bytes, no control characters",
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
    if let Some(holder) = intake.duplicate_of(&event.payload).await {
        return (
            StatusCode::OK,
            Json(json!({ "status": "duplicate", "duplicate_of": holder })),
        )
            .into_response();
    }
    match intake.store_sized(event, body.len()).await {
        Ok(outcome) => accepted(outcome),
        Err(err) => err.response(),
    }
}

/// A parsed `X-Flowd-Signature` header: its timestamp and its `v1=` MACs.
#[derive(Debug, PartialEq, Eq)]
pub struct SignatureHeader {
    /// `t=`, Unix seconds.
    pub timestamp: i64,
    /// The decoded `v1=` entries (1 to 3).
    pub macs: Vec<[u8; 32]>,
}

/// Parses and bounds `X-Flowd-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]` and checks its
/// timestamp, without the body: at most [`MAX_SIGNATURE_HEADER`] bytes and 3 entries of 64 hex
/// digits.
pub fn parse_signature(header_value: &str, now_unix: i64) -> Result<SignatureHeader, String> {
    if header_value.len() > MAX_SIGNATURE_HEADER {
        return Err(format!(
            "X-Flowd-Signature is longer than {MAX_SIGNATURE_HEADER} bytes"
        ));
    }
    let mut timestamp = None;
    let mut macs = Vec::new();
    for part in header_value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => {
                if macs.len() == MAX_SIGNATURES {
                    return Err(format!(
                        "X-Flowd-Signature has more than {MAX_SIGNATURES} `v1=` entries"
                    ));
                }
                let mut mac = [0u8; 32];
                hex::decode_to_slice(value, &mut mac).map_err(|_| {
                    "a `v1=` entry is not 64 hex digits (hex of an HMAC-SHA256)".to_owned()
                })?;
                macs.push(mac);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or("the signature has no valid `t=` timestamp")?;
    if now_unix.saturating_sub(timestamp).unsigned_abs() > SIGNATURE_TOLERANCE.as_secs() {
        return Err("the signature's timestamp is more than 5 minutes from now".to_owned());
    }
    if macs.is_empty() {
        return Err("the signature has no `v1=` entry".to_owned());
    }
    Ok(SignatureHeader { timestamp, macs })
}

/// The MAC of `t.body` under `secret`, computed once per request.
fn signature_mac(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Checks a parsed signature against `t.body`: the MAC is computed once and compared in
/// constant time with each entry. Returns the MAC that matched (the replay cache's key).
pub fn verify_signature(
    signature: &SignatureHeader,
    body: &[u8],
    secret: &str,
) -> Result<[u8; 32], String> {
    let expected = signature_mac(secret, signature.timestamp, body);
    let matched = signature.macs.iter().fold(false, |found, given| {
        found | bool::from(given.as_slice().ct_eq(expected.as_slice()))
    });
    if matched {
        Ok(expected)
    } else {
        Err("no `v1=` signature matches".to_owned())
    }
}

/// Event types: `[A-Za-z0-9._:/-]{1,128}` (DESIGN 4.2).
pub fn valid_event_type(event_type: &str) -> bool {
    (1..=128).contains(&event_type.len())
        && event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

/// `POST /events/{type}`: the body is the event's `data`.
pub async fn external_event(
    State(intake): State<Intake>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let auth_configured = !intake.event_tokens.is_empty() || intake.hmac_secret.is_some();
    // A valid bearer token is enough, whatever else the request carries.
    let by_token = bearer_token(&headers)
        .is_some_and(|token| secret_matches(token.as_bytes(), &intake.event_tokens));
    let mut signature = None;
    if auth_configured && !by_token {
        let header_value = headers
            .get("x-flowd-signature")
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        match (header_value, &intake.hmac_secret) {
            (Some(value), Some(_)) => {
                match parse_signature(value, chrono::Utc::now().timestamp()) {
                    Ok(parsed) => signature = Some(parsed),
                    Err(reason) => return problem(StatusCode::UNAUTHORIZED, reason),
                }
            }
            _ => {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    "a bearer token or an X-Flowd-Signature is required",
                );
            }
        }
    }
    if !valid_event_type(&event_type) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid event type: use 1 to 128 of A-Z a-z 0-9 . _ : / -",
        );
    }
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut replay_key = None;
    if let (Some(signature), Some(secret)) = (&signature, &intake.hmac_secret) {
        let mac = match verify_signature(signature, &body, secret.expose()) {
            Ok(mac) => mac,
            Err(reason) => return problem(StatusCode::UNAUTHORIZED, reason),
        };
        let recorded = intake
            .replays
            .lock()
            .map_err(|_| ())
            .and_then(|mut cache| cache.insert(mac, chrono::Utc::now().timestamp()));
        match recorded {
            Ok(true) => replay_key = Some(mac),
            Ok(false) => {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    "this signature was used already (a replay); sign each request anew",
                );
            }
            Err(()) => return IntakeError::Busy.response(),
        }
    }
    let data: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(data) => data,
            Err(err) => {
                forget_replay(&intake, replay_key);
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {err}"),
                );
            }
        }
    };
    let header = match headers
        .get("idempotency-key")
        .map(|v| std::str::from_utf8(v.as_bytes()))
    {
        None => None,
        Some(Ok(key)) if !key.trim().is_empty() => Some(key.trim().to_owned()),
        Some(Ok(_)) => {
            forget_replay(&intake, replay_key);
            return problem(
                StatusCode::BAD_REQUEST,
                "the Idempotency-Key header is empty: send a key unique to this event, or no header",
            );
        }
        Some(Err(_)) => {
            forget_replay(&intake, replay_key);
            return problem(
                StatusCode::BAD_REQUEST,
                "the Idempotency-Key header is not UTF-8 text",
            );
        }
    };
    // The body's `id` when there is no header; an empty one identifies nothing.
    let id = header.or_else(|| match &data["id"] {
        Value::String(id) if !id.trim().is_empty() => Some(id.clone()),
        Value::Number(id) => Some(id.to_string()),
        _ => None,
    });
    let event = NewEvent {
        source: crate::store::EventSource::Event,
        event_type: event_type.clone(),
        dedup_key: id.as_ref().map(|id| event_dedup_key(&event_type, id)),
        payload: json!({ "type": event_type, "id": id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()), "data": data }),
    };
    if let Some(holder) = intake.duplicate_of(&event.payload).await {
        return (
            StatusCode::OK,
            Json(json!({ "status": "duplicate", "duplicate_of": holder })),
        )
            .into_response();
    }
    match intake.store_sized(event, body.len()).await {
        Ok(outcome) => accepted(outcome),
        Err(err) => {
            warn!(reason = %err, "Event not stored");
            // The sender will retry this very request: its signature is not a replay then.
            forget_replay(&intake, replay_key);
            err.response()
        }
    }
}

fn forget_replay(intake: &Intake, key: Option<[u8; 32]>) {
    if let (Some(key), Ok(mut cache)) = (key, intake.replays.lock()) {
        cache.forget(&key);
    }
}

/// The dedup key of an external event: its type and its key. `:` and `%` in the type are
/// percent-encoded, so the first `:` after the type always ends it (types may contain `:`; the
/// key `created:k1` of type `app` is not the key `k1` of type `app:created`). A type without
/// either is written as it is, as before this encoding.
fn event_dedup_key(event_type: &str, key: &str) -> String {
    let event_type = event_type.replace('%', "%25").replace(':', "%3A");
    format!("event:{event_type}:{key}")
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
        let check = |header: &str, body: &[u8]| {
            parse_signature(header, now).and_then(|parsed| verify_signature(&parsed, body, "k"))
        };
        assert!(check(&sign("k", now, body), body).is_ok());
        assert!(check(&sign("k", now - 299, body), body).is_ok());
        assert!(check(&sign("k", now - 301, body), body).is_err());
        assert!(check(&sign("other", now, body), body).is_err());
        assert!(check(&sign("k", now, body), b"{}").is_err());
        assert!(check("v1=00", body).is_err());
        assert!(check(&format!("t={now}"), body).is_err());
    }

    #[test]
    fn signature_headers_are_bounded_and_any_entry_may_match() {
        let body = br#"{"a":1}"#;
        let now = 1_800_000_000;
        let good = sign("k", now, body);
        let zero = format!("v1={}", "0".repeat(64));
        // Rotation: the matching entry may come after others.
        let rotated = format!(
            "t={now},{zero},{}",
            good.split_once(',').map(|(_, v)| v).unwrap_or("")
        );
        let parsed = parse_signature(&rotated, now).expect("parses");
        assert_eq!(parsed.macs.len(), 2);
        assert!(verify_signature(&parsed, body, "k").is_ok());
        let four = format!("t={now},{zero},{zero},{zero},{zero}");
        assert!(
            parse_signature(&four, now)
                .unwrap_err()
                .contains("more than 3")
        );
        let long = format!("t={now},{}", "x".repeat(600));
        assert!(
            parse_signature(&long, now)
                .unwrap_err()
                .contains("longer than")
        );
        assert!(parse_signature(&format!("t={now},v1=abc"), now).is_err());
        assert!(parse_signature(&format!("t={},{zero}", i64::MIN), now).is_err());
    }

    #[test]
    fn a_signature_is_accepted_once_within_the_tolerance() {
        let mut cache = ReplayCache::default();
        let mac = [7u8; 32];
        assert_eq!(cache.insert(mac, 100), Ok(true));
        assert_eq!(cache.insert(mac, 200), Ok(false));
        // Long after the tolerance the entry has gone (its timestamp would be refused anyway).
        assert_eq!(cache.insert([8u8; 32], 1_000), Ok(true));
        assert!(!cache.seen.contains_key(&mac));
    }

    #[test]
    fn event_types_have_a_charset() {
        for good in [
            "application.created",
            "a",
            "ats:candidate/hired_v2",
            &"x".repeat(128),
        ] {
            assert!(valid_event_type(good), "{good}");
        }
        for bad in [
            "",
            "a b",
            "a\u{0}b",
            "a\u{202e}b",
            "caf\u{e9}",
            &"x".repeat(129),
            "a?b",
            "a\nb",
        ] {
            assert!(!valid_event_type(bad), "{bad:?}");
        }
    }

    #[test]
    fn event_dedup_keys_of_different_types_never_meet() {
        assert_eq!(
            event_dedup_key("application.created", "k1"),
            "event:application.created:k1"
        );
        assert_ne!(
            event_dedup_key("app:created", "k1"),
            event_dedup_key("app", "created:k1")
        );
        assert_ne!(event_dedup_key("a%3Ab", "k"), event_dedup_key("a:b", "k"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        for value in ["Bearer t", "bearer t", "BEARER  t"] {
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            assert_eq!(bearer_token(&headers), Some("t"), "{value}");
        }
        headers.insert(header::AUTHORIZATION, "Basic t".parse().expect("header"));
        assert_eq!(bearer_token(&headers), None);
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
