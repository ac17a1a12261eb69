//! Routers of the two listeners. Each function returns a `Router`, so tests drive them with
//! `oneshot` and no socket; `cli::run` binds them.
//!
//! - public ([`public_router`]): `GET /healthz`, `GET /readyz`;
//! - admin ([`admin_router`]): `GET /metrics`, `GET /api/v1/rules`, `POST /api/v1/reload`,
//!   behind a bearer token when one is configured.

pub mod page;
pub mod serve;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::engine::reload::{ReloadOutcome, ReloadTrigger, Reloader};
use crate::settings::Secret;
use crate::store::Store;
use crate::triggers::http::{Intake, MAX_BODY_BYTES, external_event, recrubo_webhook};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The rule set in force and its reloads.
    pub reloader: Arc<Reloader>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The admin bearer token, when one is set.
    pub admin_token: Option<Secret<String>>,
    /// The state store (for readiness and the history API).
    pub store: Option<Arc<dyn Store>>,
    /// The event intake.
    pub intake: Option<Intake>,
}

/// The public listener's routes.
pub fn public_router(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    if let Some(intake) = state.intake {
        let intake_routes = Router::new()
            .route("/webhooks/recrubo", post(recrubo_webhook))
            .route("/events/{event_type}", post(external_event))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(intake);
        router = router.merge(intake_routes);
    }
    router
}

/// The admin listener's routes.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::status_page))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/executions", get(list_executions))
        .route("/api/v1/executions/{id}", get(show_execution))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/dead-letters", get(list_dead_letters))
        .route("/api/v1/dead-letters/{id}/retry", post(retry_dead_letter))
        .route("/api/v1/rules/{name}/trigger", post(trigger_rule))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_token,
        ))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    // The daemon only starts serving with a valid set, so rules are always loaded here.
    let rules = state.reloader.current().len();
    let store_ok = match &state.store {
        Some(store) => store.ping().await.is_ok(),
        None => true,
    };
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": store_ok, "rules": rules, "store": store_ok })),
    )
        .into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics are not enabled\n").into_response(),
    }
}

async fn list_rules(State(state): State<AppState>) -> Json<serde_json::Value> {
    let set = state.reloader.current();
    let status = state.reloader.status();
    let now = chrono::Utc::now();
    let states = match &state.store {
        Some(store) => store.schedule_states().await.unwrap_or_default(),
        None => Default::default(),
    };
    let mut rules = Vec::with_capacity(set.len());
    for rule in set.rules() {
        let mut entry = json!({
            "name": rule.name,
            "description": rule.description,
            "file": rule.file.display().to_string(),
            "line": rule.at.line,
            "trigger": rule.trigger.kind(),
            "trigger_summary": rule.trigger.summary(),
            "for_each": rule.for_each.is_some(),
            "steps": rule.steps.len(),
            "tests": rule.tests.len(),
        });
        if let Some(timing) = crate::triggers::schedule::Timing::of(rule) {
            entry["next_fire_at"] = json!(timing.next_after(now));
            if let Some((_, last)) = states.get(&rule.name) {
                entry["last_tick_at"] = json!(last);
            }
        }
        rules.push(entry);
    }
    Json(json!({
        "hash": set.hash,
        "files": set.files.len(),
        "count": rules.len(),
        "rules": rules,
        "reload": status,
    }))
}

async fn reload(State(state): State<AppState>) -> Response {
    let outcome = state.reloader.reload(ReloadTrigger::Api).await;
    let status = match outcome {
        ReloadOutcome::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::OK,
    };
    (status, Json(outcome)).into_response()
}

/// Query of the history endpoints.
#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    rule: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    page: Option<i64>,
}

impl HistoryQuery {
    /// `limit`, 100 by default, at most 1,000.
    fn page_size(&self) -> i64 {
        self.limit.unwrap_or(100).clamp(1, 1000)
    }
}

/// `{"<key>": [...]}`, or the store's error.
fn listed<T: serde::Serialize>(key: &str, result: Result<T, crate::store::StoreError>) -> Response {
    match result {
        Ok(items) => Json(json!({ key: items })).into_response(),
        Err(err) => store_error(err),
    }
}

fn store_of(state: &AppState) -> Result<&Arc<dyn Store>, Response> {
    state.store.as_ref().ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no store"})),
        )
            .into_response()
    })
}

fn store_error(err: crate::store::StoreError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": err.to_string()})),
    )
        .into_response()
}

async fn list_executions(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<HistoryQuery>,
) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let parse_time = |text: &Option<String>,
                      name: &str|
     -> Result<Option<chrono::DateTime<chrono::Utc>>, Response> {
        text.as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|err| (StatusCode::BAD_REQUEST, Json(json!({"error": format!("`{name}` is not an RFC 3339 time: {err}")}))).into_response())
            })
            .transpose()
    };
    let since = match parse_time(&query.since, "since") {
        Ok(since) => since,
        Err(response) => return response,
    };
    let until = match parse_time(&query.until, "until") {
        Ok(until) => until,
        Err(response) => return response,
    };
    let limit = query.page_size();
    let page = query.page.unwrap_or(1).max(1);
    let filter = crate::store::ExecutionFilter {
        rule: query.rule.clone(),
        status: query.status.clone(),
        since,
        until,
        limit,
        offset: (page - 1) * limit,
    };
    match store.executions(&filter).await {
        Ok(executions) => {
            Json(json!({ "executions": executions, "page": page, "limit": limit })).into_response()
        }
        Err(err) => store_error(err),
    }
}

async fn show_execution(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    let execution = match store.execution(&id).await {
        Ok(execution) => execution,
        Err(err) => return store_error(err),
    };
    let Some(execution) = execution else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no execution `{id}`")})),
        )
            .into_response();
    };
    match store.step_records(&id).await {
        Ok(steps) => Json(json!({ "execution": execution, "steps": steps })).into_response(),
        Err(err) => store_error(err),
    }
}

async fn list_runs(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<HistoryQuery>,
) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    listed("runs", store.followed_runs(query.page_size()).await)
}

async fn list_dead_letters(
    State(state): State<AppState>,
    axum::extract::Query(query): axum::extract::Query<HistoryQuery>,
) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    listed("dead_letters", store.dead_letters(query.page_size()).await)
}

async fn retry_dead_letter(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    match store.retry_dead_letter(id).await {
        Ok(crate::store::RetryOutcome::Retried) => {
            (StatusCode::ACCEPTED, Json(json!({"status": "retried", "id": id}))).into_response()
        }
        Ok(crate::store::RetryOutcome::NotFound) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": format!("no dead letter {id}")}))).into_response()
        }
        Ok(crate::store::RetryOutcome::AlreadyRetried) => {
            (StatusCode::CONFLICT, Json(json!({"error": format!("dead letter {id} was retried already")}))).into_response()
        }
        Ok(crate::store::RetryOutcome::ExecutionWentOn) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "the execution went on past this step (continue_on_error) or runs again already"})),
        )
            .into_response(),
        Err(err) => store_error(err),
    }
}

/// Checks and completes the inputs of a manual run against the rule's declared inputs.
fn manual_inputs(
    rule: &crate::rules::Rule,
    given: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let crate::rules::Trigger::Manual(trigger) = &rule.trigger else {
        return Ok(serde_json::Value::Object(given));
    };
    let mut inputs = given;
    for input in &trigger.inputs {
        match inputs.get(&input.name) {
            None => match &input.default {
                Some(default) => {
                    inputs.insert(input.name.clone(), default.clone());
                }
                None if input.required => {
                    return Err(format!("input `{}` is required", input.name));
                }
                None => {}
            },
            Some(value) => {
                let fits = match input.input_type.as_str() {
                    "number" => value.is_number(),
                    "boolean" => value.is_boolean(),
                    "object" => value.is_object(),
                    _ => value.is_string(),
                };
                if !fits {
                    return Err(format!(
                        "input `{}` must be a {}",
                        input.name, input.input_type
                    ));
                }
            }
        }
    }
    for name in inputs.keys() {
        if !trigger.inputs.iter().any(|input| &input.name == name) {
            return Err(format!("rule `{}` has no input `{name}`", rule.name));
        }
    }
    Ok(serde_json::Value::Object(inputs))
}

async fn trigger_rule(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let set = state.reloader.current();
    let Some(rule) = set.get(&name) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no rule `{name}`")})),
        )
            .into_response();
    };
    let body: serde_json::Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(value) => value,
            Err(err) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": format!("the body is not valid JSON: {err}")})),
                )
                    .into_response();
            }
        }
    };
    let given = match body.get("inputs").cloned().unwrap_or(body) {
        serde_json::Value::Object(map) => map,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "inputs must be a JSON object"})),
            )
                .into_response();
        }
    };
    let inputs = match manual_inputs(rule, given) {
        Ok(inputs) => inputs,
        Err(reason) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"error": reason})),
            )
                .into_response();
        }
    };
    let Some(intake) = &state.intake else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no intake"})),
        )
            .into_response();
    };
    let id = uuid::Uuid::new_v4().to_string();
    let event = crate::store::NewEvent {
        source: crate::store::EventSource::Manual,
        event_type: "manual".to_owned(),
        dedup_key: Some(format!("manual:{id}")),
        payload: json!({ "rule": name, "type": "manual", "id": id, "data": inputs }),
    };
    match intake.store(event).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "triggered", "rule": name, "event_id": id})),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": reason})),
        )
            .into_response(),
    }
}

async fn require_admin_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.admin_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        let matches: bool = given.as_bytes().ct_eq(token.expose().as_bytes()).into();
        if !matches {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"error": "a valid admin bearer token is required"})),
            )
                .into_response();
        }
    }
    next.run(request).await
}
