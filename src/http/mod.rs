//! Routers of the two listeners. Each function returns a `Router`, so tests drive them with
//! `oneshot` and no socket; `cli::run` binds them.
//!
//! - public ([`public_router`]): `GET /healthz`, `GET /readyz`, the event intake;
//! - admin ([`admin_router_with`]): `GET /metrics`, the `/api/v1` routes, the status page at `/`
//!   with its `/static` files, `POST /login` and `POST /logout`, behind [`guard`] (DESIGN 4.3:
//!   `Host` names the listener, state-changing requests are same-origin JSON, the admin token
//!   when one is set) and with CSP, `nosniff` and `no-store` on every answer.
//!
//! Store errors are logged here and answered with a fixed text: they can carry SQL, paths or
//! data, which are not the business of an HTTP client.

pub mod guard;
pub mod page;
pub mod serve;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tracing::error;

use crate::engine::reload::{ReloadOutcome, ReloadTrigger, Reloader};
use crate::settings::Secret;
use crate::store::Store;
use crate::triggers::http::{Intake, MAX_BODY_BYTES, external_event, recrubo_webhook};

pub use guard::AdminAccess;

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
    /// This instance, as the cluster view shows it when the store keeps no heartbeats.
    pub instance: Option<crate::store::Instance>,
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
            .route("/events/{*event_type}", post(external_event))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(intake);
        router = router.merge(intake_routes);
    }
    router
}

/// The admin listener's routes for a listener whose address is not known: `Host` must be
/// `localhost` or a loopback address. The daemon uses [`admin_router_with`].
pub fn admin_router(state: AppState) -> Router {
    admin_router_with(state, AdminAccess::default())
}

/// The admin listener's routes, answering to the names `access` allows (DESIGN 4.3).
pub fn admin_router_with(state: AppState, access: AdminAccess) -> Router {
    let guard = guard::Guard::new(state.admin_token.clone(), access);
    let api = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/api/v1/rules", get(list_rules))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/executions", get(list_executions))
        .route("/api/v1/executions/{id}", get(show_execution))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/dead-letters", get(list_dead_letters))
        .route("/api/v1/dead-letters/{id}/retry", post(retry_dead_letter))
        .route("/api/v1/rules/{name}/trigger", post(trigger_rule))
        .route_layer(middleware::from_fn_with_state(
            guard.clone(),
            guard::require_token,
        ));
    let status_page = Router::new()
        .route("/", get(page::status_page))
        .route_layer(middleware::from_fn_with_state(
            guard.clone(),
            guard::token_or_login_form,
        ));
    // Served without the token: the login form needs them, and they hold nothing but code.
    let open = Router::new()
        .route("/static/page.js", get(page::script))
        .route("/static/page.css", get(page::style))
        .route("/login", post(guard::login))
        .route("/logout", post(guard::logout))
        .with_state(guard.clone());
    Router::new()
        .merge(api)
        .merge(status_page)
        .merge(open)
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            guard,
            guard::refuse_misdirected_and_cross_site,
        ))
        .layer(middleware::from_fn(guard::security_headers))
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
            Json(json!({"error": "this daemon has no state store"})),
        )
            .into_response()
    })
}

/// The fixed text of a 503 for a store error.
const STORE_UNAVAILABLE: &str = "the state store is unavailable; see the daemon log";

/// Logs a store error and answers 503 with a fixed text: the error's own text can carry SQL,
/// file paths or stored data.
fn store_error(err: crate::store::StoreError) -> Response {
    error!(error = %err, "The state store failed an admin API request");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "5")],
        Json(json!({ "error": STORE_UNAVAILABLE })),
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

/// How long an instance may go without a heartbeat and still count as alive.
pub const INSTANCE_ALIVE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// `GET /api/v1/cluster`: the instances sharing the database (DESIGN 6), each with its address,
/// rules hash, last heartbeat and the leases it holds. A store without heartbeats (SQLite: one
/// process) answers with this instance alone.
async fn cluster(State(state): State<AppState>) -> Response {
    let store = match store_of(&state) {
        Ok(store) => store,
        Err(response) => return response,
    };
    match store.instances(chrono::Utc::now() - INSTANCE_ALIVE).await {
        Ok(found) => {
            let instances = if found.is_empty() {
                state.instance.clone().into_iter().collect()
            } else {
                found
            };
            Json(json!({ "instances": instances })).into_response()
        }
        Err(err) => store_error(err),
    }
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

/// `POST /api/v1/rules/{name}/trigger`: runs a `manual` rule with the inputs given.
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
    // Only `manual` rules run on request (DESIGN 4.3): a schedule or event rule triggered by
    // hand would run with an event it was never written for.
    let crate::rules::Trigger::Manual(trigger) = &rule.trigger else {
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!(
                    "rule `{name}` has a `{}` trigger; only rules with `on: manual` can be triggered through the admin API",
                    rule.trigger.kind()
                )
            })),
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
    let inputs = match trigger.resolve(&rule.name, given) {
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
        // The intake logged a store failure already; its answer is a fixed text.
        Err(reason) => reason.response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{HeaderMap, Request};
    use tower::ServiceExt as _;

    use super::*;

    const RULES: &str = "rules:
  - name: by-hand
    on: { manual: { inputs: {} } }
    do: [ { log: by hand } ]
  - name: on-event
    on: { event: x }
    do: [ { log: on event } ]
";

    /// A state over a rules folder with a `manual` and an `event` rule, no store, no intake.
    fn state(token: Option<&str>) -> (AppState, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
        let loaded = crate::rules::load_rule_set(&[dir.path().to_path_buf()]);
        let set = loaded
            .result
            .clone()
            .unwrap_or_else(|diagnostics| panic!("{}", loaded.render_diagnostics(&diagnostics)));
        let state = AppState {
            reloader: Reloader::new(dir.path().to_path_buf(), set),
            metrics: None,
            admin_token: token.map(|token| Secret::new(token.to_owned())),
            store: None,
            intake: None,
            instance: None,
        };
        (state, dir)
    }

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
        }
    }

    async fn send(
        router: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    const LOCAL: (&str, &str) = ("host", "127.0.0.1:8081");
    const JSON: (&str, &str) = ("content-type", "application/json");

    #[tokio::test]
    async fn hosts_other_than_the_listener_are_misdirected() {
        let (state, _dir) = state(None);
        let router = admin_router(state);
        for host in ["evil.example", "evil.example:8081", "127.0.0.1.nip.io:8081"] {
            let answer = send(&router, "GET", "/api/v1/rules", &[("host", host)], "").await;
            assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
            assert!(
                answer.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("admin.hosts")
            );
        }
        let answer = send(&router, "GET", "/api/v1/rules", &[], "").await;
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST, "no Host");
        let answer = send(
            &router,
            "GET",
            "http://evil.example/api/v1/rules",
            &[LOCAL],
            "",
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::MISDIRECTED_REQUEST,
            "absolute form"
        );
        for host in [
            "localhost",
            "LOCALHOST:8081",
            "127.0.0.1:8081",
            "[::1]:8081",
        ] {
            let answer = send(&router, "GET", "/api/v1/rules", &[("host", host)], "").await;
            assert_eq!(answer.status, StatusCode::OK, "{host}");
        }
    }

    #[tokio::test]
    async fn the_listener_address_and_admin_hosts_are_accepted() {
        let (state, _dir) = state(None);
        let access = AdminAccess::new(
            Some("10.0.0.5:8081".parse().unwrap()),
            &["flowd.internal".to_owned()],
        )
        .unwrap();
        let router = admin_router_with(state, access);
        for host in ["10.0.0.5:8081", "flowd.internal", "flowd.internal:443"] {
            let answer = send(&router, "GET", "/api/v1/rules", &[("host", host)], "").await;
            assert_eq!(answer.status, StatusCode::OK, "{host}");
        }
        let answer = send(&router, "GET", "/api/v1/rules", &[("host", "10.0.0.5")], "").await;
        assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
        // A proxy that sets Host to the listener while the browser's Origin is a listed name.
        let answer = send(
            &router,
            "POST",
            "/api/v1/reload",
            &[
                ("host", "10.0.0.5:8081"),
                ("origin", "https://flowd.internal"),
                JSON,
            ],
            "{}",
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    #[tokio::test]
    async fn state_changing_requests_must_be_same_origin_json() {
        let (state, _dir) = state(None);
        let router = admin_router(state);
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let mut headers = vec![LOCAL];
            headers.extend(content_type.map(|value| ("content-type", value)));
            let answer = send(&router, "POST", "/api/v1/reload", &headers, "{}").await;
            assert_eq!(
                answer.status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type:?}"
            );
        }
        for cross_site in [
            ("origin", "http://evil.example"),
            ("origin", "null"),
            // Another local port is another origin, though `Host: localhost:3000` would pass.
            ("origin", "http://127.0.0.1:3000"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "same-site"),
        ] {
            let answer = send(
                &router,
                "POST",
                "/api/v1/reload",
                &[LOCAL, JSON, cross_site],
                "{}",
            )
            .await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{cross_site:?}");
        }
        let answer = send(
            &router,
            "POST",
            "/api/v1/reload",
            &[
                LOCAL,
                ("content-type", "application/json; charset=utf-8"),
                ("origin", "http://127.0.0.1:8081"),
                ("sec-fetch-site", "same-origin"),
            ],
            "{}",
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }

    #[tokio::test]
    async fn only_manual_rules_are_triggered() {
        let (state, _dir) = state(None);
        let router = admin_router(state);
        let answer = send(
            &router,
            "POST",
            "/api/v1/rules/on-event/trigger",
            &[LOCAL, JSON],
            "{}",
        )
        .await;
        assert_eq!(answer.status, StatusCode::CONFLICT);
        assert!(
            answer.json()["error"]
                .as_str()
                .unwrap()
                .contains("`event` trigger")
        );
        // A manual rule passes that check (and meets the missing intake of this test).
        let answer = send(
            &router,
            "POST",
            "/api/v1/rules/by-hand/trigger",
            &[LOCAL, JSON],
            "{}",
        )
        .await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.json()["error"], "no intake");
    }

    #[tokio::test]
    async fn the_token_is_a_bearer_header_or_the_login_cookie() {
        let (state, _dir) = state(Some("s3cret"));
        let router = admin_router(state);
        let answer = send(&router, "GET", "/api/v1/rules", &[LOCAL], "").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        for authorization in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
            let answer = send(
                &router,
                "GET",
                "/api/v1/rules",
                &[LOCAL, ("authorization", authorization)],
                "",
            )
            .await;
            assert_eq!(answer.status, StatusCode::OK, "{authorization}");
        }
        let answer = send(
            &router,
            "GET",
            "/api/v1/rules",
            &[LOCAL, ("authorization", "Bearer s3cre")],
            "",
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

        // The page shows the login form; its script and style need no token.
        let page = send(&router, "GET", "/", &[LOCAL], "").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(page.body.contains("id=login") && !page.body.contains("Rules"));
        for path in ["/static/page.js", "/static/page.css"] {
            assert_eq!(
                send(&router, "GET", path, &[LOCAL], "").await.status,
                StatusCode::OK
            );
        }

        let wrong = send(
            &router,
            "POST",
            "/login",
            &[LOCAL, JSON],
            r#"{"token":"no"}"#,
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(!wrong.headers.contains_key(header::SET_COOKIE));
        let login = send(
            &router,
            "POST",
            "/login",
            &[LOCAL, JSON],
            r#"{"token":"s3cret"}"#,
        )
        .await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.body);
        let set_cookie = login.headers[header::SET_COOKIE].to_str().unwrap();
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
        assert!(
            !set_cookie.contains("s3cret"),
            "the cookie is not the token"
        );
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let cookie = ("cookie", cookie.as_str());

        let page = send(&router, "GET", "/", &[LOCAL, cookie], "").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("data-action=logout"));
        let rules = send(&router, "GET", "/api/v1/rules", &[LOCAL, cookie], "").await;
        assert_eq!(rules.status, StatusCode::OK);
        // A cookie POST must show it comes from this origin.
        let blind = send(
            &router,
            "POST",
            "/api/v1/reload",
            &[LOCAL, JSON, cookie],
            "{}",
        )
        .await;
        assert_eq!(blind.status, StatusCode::UNAUTHORIZED);
        let same_origin = send(
            &router,
            "POST",
            "/api/v1/reload",
            &[LOCAL, JSON, cookie, ("origin", "http://127.0.0.1:8081")],
            "{}",
        )
        .await;
        assert_eq!(same_origin.status, StatusCode::OK, "{}", same_origin.body);

        let logout = send(&router, "POST", "/logout", &[LOCAL, JSON, cookie], "{}").await;
        assert_eq!(logout.status, StatusCode::OK);
        assert!(
            logout.headers[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let after = send(&router, "GET", "/api/v1/rules", &[LOCAL, cookie], "").await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn every_answer_carries_the_security_headers() {
        let (state, _dir) = state(Some("s3cret"));
        let router = admin_router(state);
        let bearer = ("authorization", "Bearer s3cret");
        let answers = [
            send(&router, "GET", "/", &[LOCAL, bearer], "").await,
            send(&router, "GET", "/", &[LOCAL], "").await,
            send(&router, "GET", "/api/v1/rules", &[LOCAL, bearer], "").await,
            send(&router, "GET", "/api/v1/rules", &[LOCAL], "").await,
            send(
                &router,
                "GET",
                "/api/v1/rules",
                &[("host", "evil.example")],
                "",
            )
            .await,
            send(&router, "GET", "/nothing-here", &[LOCAL, bearer], "").await,
            send(&router, "GET", "/static/page.js", &[LOCAL], "").await,
        ];
        for answer in &answers {
            assert_eq!(
                answer.headers[header::CONTENT_SECURITY_POLICY],
                "default-src 'self'; frame-ancestors 'none'",
                "{} {}",
                answer.status,
                answer.body
            );
            assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        assert_eq!(answers[2].headers[header::CACHE_CONTROL], "no-store");
        let page = &answers[0].body;
        assert!(
            !page.contains("<script>") && !page.contains("<style>") && !page.contains("onclick"),
            "no inline script or style: {page}"
        );
        assert!(page.contains("data-action=trigger data-rule=\"by-hand\""));
        assert!(!page.contains("data-rule=\"on-event\""));
    }

    #[tokio::test]
    async fn store_errors_are_logged_not_answered() {
        let (mut state, dir) = state(None);
        let path = dir.path().join("flowd.db");
        let store =
            crate::store::sqlite::SqliteStore::open(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
        state.store = Some(Arc::new(store));
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TABLE executions; DROP TABLE dead_letters;")
            .unwrap();
        let router = admin_router(state);
        for path in ["/api/v1/executions", "/api/v1/dead-letters"] {
            let answer = send(&router, "GET", path, &[LOCAL], "").await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(
                answer.json(),
                json!({ "error": STORE_UNAVAILABLE }),
                "{path}"
            );
        }
    }
}
