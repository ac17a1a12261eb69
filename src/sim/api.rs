//! The simulator's HTTP surface: Recrubo's JSON:API under `/public/v2` and the `/_sim/...`
//! control and inspection endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::RecordedRequest;
use super::faults::{ApiFault, Faults};
use super::lifecycle;
use super::state::{SimState, now_text, resource_json};
use super::store::{COLLECTIONS, new_resource, type_of};
use super::webhooks::DeliveryRecord;
use crate::recrubo::FlowRunStatus;
use crate::recrubo::query::ListQuery;

type ApiResult = Result<Response, Response>;

/// A JSON:API error answer.
fn api_error(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = json!({ "errors": [{
        "status": status.as_u16().to_string(),
        "title": status.canonical_reason().unwrap_or("Error"),
        "detail": detail.into(),
    }]});
    (
        status,
        [(header::CONTENT_TYPE, crate::recrubo::client::JSON_API)],
        Json(body),
    )
        .into_response()
}

fn document(
    status: StatusCode,
    data: Value,
    meta: Option<Value>,
    links: Option<Value>,
) -> Response {
    let mut body = Map::new();
    body.insert("data".into(), data);
    body.insert("meta".into(), meta.unwrap_or_else(|| json!({})));
    if let Some(links) = links {
        body.insert("links".into(), links);
    }
    (
        status,
        [(header::CONTENT_TYPE, crate::recrubo::client::JSON_API)],
        Json(Value::Object(body)),
    )
        .into_response()
}

/// The router.
pub fn router(state: Arc<SimState>) -> Router {
    let api = Router::new()
        .route("/public/v2/{collection}", get(list).post(create))
        .route(
            "/public/v2/{collection}/{id}",
            get(fetch).patch(patch).delete(remove),
        )
        .layer(middleware::from_fn_with_state(
            state.clone(),
            api_middleware,
        ));
    let control = Router::new()
        .route("/_sim/flow-runs/{id}/status", post(control_run_status))
        .route(
            "/_sim/flow-generations/{id}/status",
            post(control_generation_status),
        )
        .route("/_sim/faults", get(get_faults).post(set_faults))
        .route("/_sim/requests", get(get_requests).delete(clear_requests))
        .route(
            "/_sim/deliveries",
            get(get_deliveries).delete(clear_deliveries),
        )
        .route("/_sim/health", get(|| async { "ok\n" }));
    api.merge(control).with_state(state)
}

/// Records every API request, checks the bearer token, and injects faults.
async fn api_middleware(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let faults = state.faults.read().map(|f| f.clone()).unwrap_or_default();
    let latency = faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let authorized = match &state.settings.token {
        Some(expected) => token == expected,
        None => !token.is_empty(),
    };
    let (response, fault) = if !authorized {
        (
            api_error(
                StatusCode::UNAUTHORIZED,
                "access denied: a valid bearer token is required",
            ),
            None,
        )
    } else {
        match faults.draw_api_fault() {
            Some(ApiFault::ServerError) => (
                api_error(StatusCode::SERVICE_UNAVAILABLE, "simulated server error"),
                Some("503".to_owned()),
            ),
            Some(ApiFault::Throttle(seconds)) => {
                let mut response = api_error(StatusCode::TOO_MANY_REQUESTS, "simulated rate limit");
                if let Ok(value) = seconds.to_string().parse() {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                (response, Some("429".to_owned()))
            }
            Some(fault @ (ApiFault::Reset | ApiFault::LoseAnswer)) => {
                if fault == ApiFault::LoseAnswer {
                    // Carried out, answer thrown away.
                    drop(next.run(request).await);
                }
                // A body that fails mid-way makes the server drop the connection: the client
                // sees the connection cut before a complete answer.
                let stream = futures_util::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "simulated reset",
                    ))
                });
                let response = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_LENGTH, "100")
                    .body(Body::from_stream(stream))
                    .unwrap_or_default();
                let name = if fault == ApiFault::LoseAnswer {
                    "lost_answer"
                } else {
                    "reset"
                };
                (response, Some(name.to_owned()))
            }
            None => (next.run(request).await, None),
        }
    };
    state.requests.push(RecordedRequest {
        seq: state.sequence.fetch_add(1, Ordering::Relaxed),
        at: now_text(),
        at_ms: state.elapsed_ms(),
        method,
        path,
        query,
        status: response.status().as_u16(),
        fault,
    });
    response
}

fn parse_query(raw: Option<&str>) -> Result<(ListQuery, bool), Response> {
    let pairs: Vec<(String, String)> = raw
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let sync = pairs.iter().any(|(k, v)| k == "sync" && v == "true");
    ListQuery::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map(|query| (query, sync))
        .map_err(|message| api_error(StatusCode::BAD_REQUEST, message))
}

fn known_collection(collection: &str) -> Result<&'static str, Response> {
    COLLECTIONS
        .iter()
        .find(|(path, _)| *path == collection)
        .map(|(path, _)| *path)
        .ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                format!("no such resource collection `{collection}`"),
            )
        })
}

fn not_found(collection: &str) -> Response {
    let name = type_of(collection).unwrap_or("resource");
    api_error(StatusCode::NOT_FOUND, format!("{name} not found"))
}

async fn list(
    State(state): State<Arc<SimState>>,
    Path(collection): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let collection = known_collection(&collection)?;
    let (query, _) = parse_query(raw.as_deref())?;
    let (items, total) = state
        .with_collection(collection, |c| c.list(&query))
        .unwrap_or_default();
    let size = query
        .page_size
        .unwrap_or(crate::recrubo::query::DEFAULT_PAGE_SIZE) as usize;
    let number = query.page_number.unwrap_or(1) as usize;
    let last_page = total.div_ceil(size).max(1);
    let next = (number < last_page).then(|| {
        let mut next_query = query.clone();
        next_query.page_number = Some(number as u32 + 1);
        next_query.page_size = Some(size as u32);
        let encoded: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next_query.pairs())
            .finish();
        format!("/public/v2/{collection}?{encoded}")
    });
    let data = Value::Array(items.iter().map(resource_json).collect());
    let meta = json!({ "page": { "currentPage": number, "perPage": size, "total": total, "lastPage": last_page } });
    let links = json!({ "next": next });
    Ok(document(StatusCode::OK, data, Some(meta), Some(links)))
}

async fn fetch(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
) -> ApiResult {
    let collection = known_collection(&collection)?;
    let resource = state
        .get(collection, &id)
        .ok_or_else(|| not_found(collection))?;
    Ok(document(
        StatusCode::OK,
        resource_json(&resource),
        None,
        None,
    ))
}

/// The `data.attributes` of a request body, with a 400 that says what is wrong.
fn request_attributes(body: &Bytes, expected_type: &str) -> Result<Map<String, Value>, Response> {
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {err}"),
        )
    })?;
    let data = value.get("data").ok_or_else(|| {
        api_error(
            StatusCode::BAD_REQUEST,
            "the body has no `data` (JSON:API envelope expected)",
        )
    })?;
    if let Some(resource_type) = data.get("type").and_then(Value::as_str)
        && resource_type != expected_type
    {
        return Err(api_error(
            StatusCode::CONFLICT,
            format!("`data.type` is `{resource_type}`, expected `{expected_type}`"),
        ));
    }
    let mut attributes = data
        .get("attributes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // Relationships may stand in for flat foreign keys (recrubo-api.md §3).
    if let Some(relationships) = data.get("relationships").and_then(Value::as_object) {
        for (name, relationship) in relationships {
            if let Some(id) = relationship.pointer("/data/id").and_then(Value::as_str) {
                attributes
                    .entry(format!("{name}Id"))
                    .or_insert_with(|| Value::String(id.to_owned()));
            }
        }
    }
    Ok(attributes)
}

fn required_string(attributes: &Map<String, Value>, name: &str) -> Result<String, Response> {
    match attributes.get(name).and_then(Value::as_str) {
        Some(value) if !value.is_empty() => Ok(value.to_owned()),
        _ => Err(api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`{name}` is required"),
        )),
    }
}

async fn create(
    State(state): State<Arc<SimState>>,
    Path(collection): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> ApiResult {
    let collection = known_collection(&collection)?;
    let resource_type = type_of(collection).unwrap_or("resources");
    let (_, sync) = parse_query(raw.as_deref())?;
    let mut attributes = request_attributes(&body, resource_type)?;
    match collection {
        "flow-runs" => {
            let flow_id = required_string(&attributes, "flowId")?;
            required_string(&attributes, "messageThreadId")?;
            let initial_state = attributes
                .get("state")
                .cloned()
                .unwrap_or_else(|| json!({}));
            if !initial_state.is_object() {
                return Err(api_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "`state` must be an object",
                ));
            }
            attributes.insert("state".into(), initial_state.clone());
            attributes
                .entry("initialMessage")
                .or_insert_with(|| json!({}));
            attributes.insert("status".into(), json!("queued"));
            attributes.insert("cost".into(), json!(0));
            let run = new_resource(resource_type, attributes, &now_text());
            state.with_collection(collection, |c| c.put(run.clone()));
            state.emit("create", &run, &[]);
            if let Some(script) = &state.settings.script.flow_runs {
                lifecycle::spawn_run(
                    state.clone(),
                    script.clone(),
                    run.id.clone(),
                    flow_id,
                    initial_state,
                );
            }
            Ok(document(
                StatusCode::CREATED,
                resource_json(&run),
                None,
                None,
            ))
        }
        "flow-generations" => {
            attributes
                .entry("flowType")
                .or_insert_with(|| json!("vacancy_application_flow"));
            attributes.entry("parameters").or_insert_with(|| json!({}));
            attributes.entry("context").or_insert_with(|| json!({}));
            attributes.insert("status".into(), json!("queued"));
            attributes.insert("flowId".into(), Value::Null);
            attributes.insert("cost".into(), json!(0));
            let generation = new_resource(resource_type, attributes, &now_text());
            let id = generation.id.clone();
            state.with_collection(collection, |c| c.put(generation.clone()));
            state.emit("create", &generation, &[]);
            if sync {
                state.advance_generation(&id, &[], "processing");
                let finished = state
                    .advance_generation(&id, &[], "finished")
                    .unwrap_or(generation);
                return Ok(document(
                    StatusCode::CREATED,
                    resource_json(&finished),
                    None,
                    None,
                ));
            }
            if let Some(script) = &state.settings.script.flow_generations {
                lifecycle::spawn_generation(state.clone(), script.clone(), id);
            }
            Ok(document(
                StatusCode::CREATED,
                resource_json(&generation),
                None,
                None,
            ))
        }
        "vacancy-analyses" => {
            required_string(&attributes, "inputText")?;
            attributes.insert("analyzeResult".into(), Value::Null);
            let analysis = new_resource(resource_type, attributes, &now_text());
            let id = analysis.id.clone();
            state.with_collection(collection, |c| c.put(analysis.clone()));
            if sync {
                let done = state.finish_analysis(&id).unwrap_or(analysis);
                return Ok(document(
                    StatusCode::CREATED,
                    resource_json(&done),
                    None,
                    None,
                ));
            }
            let delay = state
                .settings
                .script
                .analysis_delay
                .unwrap_or(std::time::Duration::from_millis(100));
            let background = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                background.finish_analysis(&id);
            });
            Ok(document(
                StatusCode::CREATED,
                resource_json(&analysis),
                None,
                None,
            ))
        }
        "message-threads" => {
            // Required by the docs' table (recrubo-api.md §6.9); `chatbotPaused` is left out
            // by the docs' own example, so it defaults to false here.
            required_string(&attributes, "channel")?;
            required_string(&attributes, "identifier")?;
            attributes
                .entry("chatbotPaused")
                .or_insert_with(|| json!(false));
            let thread = new_resource(resource_type, attributes, &now_text());
            state.with_collection(collection, |c| c.put(thread.clone()));
            state.emit("create", &thread, &[]);
            Ok(document(
                StatusCode::CREATED,
                resource_json(&thread),
                None,
                None,
            ))
        }
        _ => {
            let resource = new_resource(resource_type, attributes, &now_text());
            state.with_collection(collection, |c| c.put(resource.clone()));
            state.emit("create", &resource, &[]);
            Ok(document(
                StatusCode::CREATED,
                resource_json(&resource),
                None,
                None,
            ))
        }
    }
}

async fn patch(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let collection = known_collection(&collection)?;
    let resource_type = type_of(collection).unwrap_or("resources");
    if matches!(collection, "flow-generations" | "vacancy-analyses") {
        return Err(api_error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{resource_type} cannot be updated"),
        ));
    }
    let attributes = request_attributes(&body, resource_type)?;
    if collection == "flow-runs" {
        let status = attributes
            .get("status")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(status) = &status
            && !FlowRunStatus::SETTABLE.contains(&status.as_str())
        {
            return Err(api_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "`status` can be set to {}, not `{status}`",
                    FlowRunStatus::SETTABLE.join(", ")
                ),
            ));
        }
        let new_state = attributes.get("state").cloned();
        let outcome = state
            .with_collection(collection, |runs| {
                let run = runs.get_mut(&id)?;
                if new_state.is_some()
                    && run.str_attribute("status") == Some("running")
                    && status.is_none()
                {
                    return Some(Err(api_error(
                        StatusCode::CONFLICT,
                        "`state` can only be updated once the FlowRun is not running",
                    )));
                }
                let mut fields = Vec::new();
                if let Some(status) = &status {
                    run.attributes
                        .insert("status".into(), Value::String(status.clone()));
                    fields.push("status");
                }
                if let Some(new_state) = &new_state {
                    run.attributes.insert("state".into(), new_state.clone());
                    fields.push("state");
                }
                run.attributes
                    .insert("updatedAt".into(), Value::String(now_text()));
                Some(Ok((run.clone(), fields)))
            })
            .flatten()
            .ok_or_else(|| not_found(collection))??;
        state.emit("update", &outcome.0, &outcome.1);
        return Ok(document(
            StatusCode::OK,
            resource_json(&outcome.0),
            None,
            None,
        ));
    }
    let updated = state
        .with_collection(collection, |items| {
            let item = items.get_mut(&id)?;
            item.attributes.extend(attributes.clone());
            item.attributes
                .insert("updatedAt".into(), Value::String(now_text()));
            Some(item.clone())
        })
        .flatten()
        .ok_or_else(|| not_found(collection))?;
    if collection == "organizations"
        && id == state.organization_id
        && let Ok(mut target) = state.webhook_target.write()
    {
        if let Some(url) = attributes.get("webhookUrl").and_then(Value::as_str) {
            target.0 = Some(url.to_owned());
        }
        if let Some(secret) = attributes.get("webhookSecret").and_then(Value::as_str) {
            target.1 = Some(secret.to_owned());
        }
    }
    let fields: Vec<&str> = attributes.keys().map(String::as_str).collect();
    state.emit("update", &updated, &fields);
    Ok(document(
        StatusCode::OK,
        resource_json(&updated),
        None,
        None,
    ))
}

async fn remove(
    State(state): State<Arc<SimState>>,
    Path((collection, id)): Path<(String, String)>,
) -> ApiResult {
    let collection = known_collection(&collection)?;
    let removed = state
        .with_collection(collection, |c| c.remove(&id))
        .flatten()
        .ok_or_else(|| not_found(collection))?;
    state.emit("delete", &removed, &[]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The JSON body of a control call and its required `status`.
fn control_body(body: &Bytes) -> Result<(Value, String), Response> {
    let body: Value = serde_json::from_slice(body).map_err(|err| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {err}"),
        )
    })?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| api_error(StatusCode::BAD_REQUEST, "`status` is required"))?
        .to_owned();
    Ok((body, status))
}

/// `POST /_sim/flow-runs/{id}/status {"status": ..., "state": {...}}`.
async fn control_run_status(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let (body, status) = control_body(&body)?;
    let status = status.as_str();
    let new_state = body.get("state").cloned();
    if new_state.as_ref().is_some_and(|s| !s.is_object()) {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "`state` must be an object",
        ));
    }
    let run = state
        .advance_run(&id, &[], status, new_state)
        .ok_or_else(|| not_found("flow-runs"))?;
    Ok(document(StatusCode::OK, resource_json(&run), None, None))
}

/// `POST /_sim/flow-generations/{id}/status {"status": ...}`.
async fn control_generation_status(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let (_, status) = control_body(&body)?;
    let status = status.as_str();
    let generation = state
        .advance_generation(&id, &[], status)
        .ok_or_else(|| not_found("flow-generations"))?;
    Ok(document(
        StatusCode::OK,
        resource_json(&generation),
        None,
        None,
    ))
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.faults.read().map(|f| f.clone()).unwrap_or_default())
}

async fn set_faults(State(state): State<Arc<SimState>>, body: Bytes) -> ApiResult {
    let faults: Faults = serde_json::from_slice(&body)
        .map_err(|err| api_error(StatusCode::BAD_REQUEST, format!("invalid faults: {err}")))?;
    faults
        .validate()
        .map_err(|message| api_error(StatusCode::UNPROCESSABLE_ENTITY, message))?;
    tracing::info!(?faults, "Simulator faults set");
    if let Ok(mut current) = state.faults.write() {
        *current = faults.clone();
    }
    Ok(Json(faults).into_response())
}

async fn get_requests(State(state): State<Arc<SimState>>) -> Json<Vec<RecordedRequest>> {
    Json(state.requests.all())
}

async fn clear_requests(State(state): State<Arc<SimState>>) -> StatusCode {
    state.requests.clear();
    StatusCode::NO_CONTENT
}

async fn get_deliveries(State(state): State<Arc<SimState>>) -> Json<Vec<DeliveryRecord>> {
    Json(state.deliveries.all())
}

async fn clear_deliveries(State(state): State<Arc<SimState>>) -> StatusCode {
    state.deliveries.clear();
    StatusCode::NO_CONTENT
}
