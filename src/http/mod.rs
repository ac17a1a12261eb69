//! Routers of the two listeners. Each function returns a `Router`, so tests drive them with
//! `oneshot` and no socket; `cli::run` binds them.
//!
//! - public ([`public_router`]): `GET /healthz`, `GET /readyz`;
//! - admin ([`admin_router`]): `GET /metrics`, `GET /api/v1/rules`, `POST /api/v1/reload`,
//!   behind a bearer token when one is configured.

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

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The rule set in force and its reloads.
    pub reloader: Arc<Reloader>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// The admin bearer token, when one is set.
    pub admin_token: Option<Secret<String>>,
}

/// The public listener's routes.
pub fn public_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The admin listener's routes.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/reload", post(reload))
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
    // The daemon only starts serving with a valid set, so rules are always loaded here; the
    // store check joins when the store exists.
    let rules = state.reloader.current().len();
    Json(json!({ "ready": true, "rules": rules })).into_response()
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
    let rules: Vec<_> = set
        .rules()
        .iter()
        .map(|rule| {
            json!({
                "name": rule.name,
                "description": rule.description,
                "file": rule.file.display().to_string(),
                "line": rule.at.line,
                "trigger": rule.trigger.kind(),
                "trigger_summary": rule.trigger.summary(),
                "for_each": rule.for_each.is_some(),
                "steps": rule.steps.len(),
            })
        })
        .collect();
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
