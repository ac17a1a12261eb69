//! What each step kind does, given its rendered input (see `engine::render`). One function per
//! kind; errors are classified here (retryable or not, outcome unknown or not) so the executor
//! can decide between a durable retry and a dead letter.

pub mod egress;
pub mod email;
pub mod http;

use std::time::Duration;

use serde_json::{Value, json};

use crate::recrubo::types::requirements_from_analysis;
use crate::recrubo::{FlowRunPatch, NewFlowGeneration, NewFlowRun, RecruboClient, RecruboError};
use crate::rules::StepKind;

/// A failed step attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionError {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// The server's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Whether the request may have taken effect.
    pub outcome_unknown: bool,
}

impl ActionError {
    /// A failure that no retry can fix.
    pub fn fatal(message: impl Into<String>) -> ActionError {
        ActionError {
            message: message.into(),
            retryable: false,
            retry_after: None,
            outcome_unknown: false,
        }
    }

    /// A failure worth another attempt.
    pub fn retryable(message: impl Into<String>) -> ActionError {
        ActionError {
            message: message.into(),
            retryable: true,
            retry_after: None,
            outcome_unknown: false,
        }
    }
}

impl From<RecruboError> for ActionError {
    fn from(err: RecruboError) -> Self {
        ActionError {
            retryable: err.is_retryable(),
            retry_after: err.retry_after(),
            outcome_unknown: err.outcome_unknown(),
            message: err.to_string(),
        }
    }
}

/// What actions need from the outside.
#[derive(Debug, Clone)]
pub struct ActionDeps {
    /// The Recrubo client (absent when no token is configured).
    pub recrubo: Option<RecruboClient>,
    /// For `notify` and `http`.
    pub http: reqwest::Client,
    /// For `email`.
    pub smtp: Option<email::Mailer>,
    /// How long `analyze_vacancy` waits for a result.
    pub analysis_timeout: Duration,
    /// Where run-time destinations may go (`egress.allow`).
    pub egress: egress::EgressPolicy,
}

/// The FlowGeneration a rendered `generate_flow` input asks for: `parameters` (an object),
/// `vacancy_id` and the requirements of `from_analysis` merged in. Shared by the create and by
/// the check for a generation an attempt without an answer may have made.
pub fn generation_request(
    input: &Value,
    context: &Value,
) -> Result<NewFlowGeneration, ActionError> {
    let mut parameters = object_or_empty(&input["parameters"]);
    if !parameters.is_object() {
        return Err(ActionError::fatal(format!(
            "`parameters` must be an object, not {}",
            match parameters {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                _ => "a boolean",
            }
        )));
    }
    if let Some(vacancy_id) = input["vacancy_id"].as_str() {
        parameters["vacancyId"] = json!(vacancy_id);
    }
    if let Some(analysis) = input["from_analysis"].as_str() {
        let result = &context["steps"][analysis]["analyzeResult"];
        if result.is_null() {
            return Err(ActionError::fatal(format!(
                "step `{analysis}` has no analyzeResult"
            )));
        }
        let (knockout, preferred) = requirements_from_analysis(result);
        if parameters.get("knockoutRequirements").is_none() {
            parameters["knockoutRequirements"] = Value::Array(knockout);
        }
        if parameters.get("preferredRequirements").is_none() {
            parameters["preferredRequirements"] = Value::Array(preferred);
        }
    }
    Ok(NewFlowGeneration {
        flow_type: string(input, "flow_type")?,
        parameters,
        context: object_or_empty(&input["context"]),
    })
}

/// Waits (polling, up to `analysis_timeout`) until a VacancyAnalysis has its result. Running
/// out of time is retryable with the outcome unknown: the analysis exists, and the next
/// attempt adopts it instead of asking for a second one.
pub async fn await_analysis(
    deps: &ActionDeps,
    mut analysis: crate::recrubo::VacancyAnalysis,
) -> Result<Value, ActionError> {
    let client = recrubo(deps)?;
    let deadline = tokio::time::Instant::now() + deps.analysis_timeout;
    let mut wait = Duration::from_millis(200);
    while !analysis.is_done() {
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError {
                outcome_unknown: true,
                ..ActionError::retryable(format!(
                    "vacancy analysis {} has no result after {:?}",
                    analysis.id(),
                    deps.analysis_timeout
                ))
            });
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
        analysis = client
            .get_vacancy_analysis(analysis.id())
            .await
            .map_err(|err| ActionError {
                // The analysis was created: whatever broke, the next attempt looks for it.
                outcome_unknown: true,
                ..ActionError::from(err)
            })?;
    }
    Ok(crate::recrubo::types::flattened(&analysis.resource))
}

fn recrubo(deps: &ActionDeps) -> Result<&RecruboClient, ActionError> {
    deps.recrubo.as_ref().ok_or_else(|| {
        ActionError::fatal("no Recrubo token is configured (recrubo.token or RECRUBO_API_TOKEN)")
    })
}

fn string(input: &Value, field: &str) -> Result<String, ActionError> {
    match &input[field] {
        Value::String(text) if !text.is_empty() => Ok(text.clone()),
        Value::Null => Err(ActionError::fatal(format!("`{field}` is empty"))),
        other => Ok(other.to_string()),
    }
}

fn object_or_empty(value: &Value) -> Value {
    if value.is_null() {
        json!({})
    } else {
        value.clone()
    }
}

/// Performs a step kind other than `emit` (which the executor stores itself).
pub async fn perform(
    kind: &StepKind,
    input: &Value,
    context: &Value,
    deps: &ActionDeps,
) -> Result<Value, ActionError> {
    match kind {
        StepKind::StartFlowRun { .. } => {
            let run = recrubo(deps)?
                .create_flow_run(&NewFlowRun {
                    flow_id: string(input, "flow")?,
                    message_thread_id: string(input, "message_thread")?,
                    state: object_or_empty(&input["state"]),
                    initial_message: object_or_empty(&input["initial_message"]),
                })
                .await?;
            Ok(run.context())
        }
        StepKind::GenerateFlow { .. } => {
            let request = generation_request(input, context)?;
            let generation = recrubo(deps)?.create_flow_generation(&request).await?;
            Ok(generation.context())
        }
        StepKind::AnalyzeVacancy { .. } => {
            let client = recrubo(deps)?;
            let analysis = client
                .create_vacancy_analysis(&string(input, "text")?)
                .await?;
            await_analysis(deps, analysis).await
        }
        StepKind::MessageThread { .. } => message_thread(deps, input).await,
        StepKind::UpdateFlowRun { .. } => {
            let patch = FlowRunPatch {
                state: (!input["state"].is_null()).then(|| input["state"].clone()),
                status: input["status"].as_str().map(str::to_owned),
            };
            let run = recrubo(deps)?
                .patch_flow_run(&string(input, "id")?, &patch)
                .await?;
            Ok(run.context())
        }
        StepKind::Recrubo { .. } => {
            let body = (!input["body"].is_null()).then(|| input["body"].clone());
            let response = recrubo(deps)?
                .raw(
                    &string(input, "method")?,
                    &string(input, "path")?,
                    body.as_ref(),
                )
                .await?;
            Ok(json!({ "status": response.status, "body": response.body }))
        }
        StepKind::Notify { url, .. } => {
            check_url_egress(deps, url, input)?;
            http::request(&deps.http, "POST", input).await
        }
        StepKind::Http { url, .. } => {
            check_url_egress(deps, url, input)?;
            let method = string(input, "method")?;
            http::request(&deps.http, &method, input).await
        }
        StepKind::Email { to, .. } => match &deps.smtp {
            Some(_) if to.is_empty() => Err(ActionError::fatal("`to` is empty")),
            Some(mailer) => {
                for (template, address) in
                    to.iter().zip(input["to"].as_array().into_iter().flatten())
                {
                    if egress::address_domain_is_runtime(template.source()) {
                        deps.egress
                            .check_address(address.as_str().unwrap_or_default())
                            .map_err(ActionError::fatal)?;
                    }
                }
                mailer.send(input).await
            }
            None => Err(ActionError::fatal(
                "no SMTP server is configured (smtp.host)",
            )),
        },
        StepKind::Log { .. } => {
            let line = input["text"].as_str().unwrap_or_default();
            let rule = context["rule"].as_str().unwrap_or_default();
            tracing::info!(rule = %rule, "{line}");
            Ok(Value::Null)
        }
        StepKind::Emit { .. } => Err(ActionError::fatal("emit is performed by the executor")),
    }
}

/// The egress rule for a `notify`/`http` URL whose host comes from run-time data.
fn check_url_egress(
    deps: &ActionDeps,
    url: &crate::rules::template::Template,
    input: &Value,
) -> Result<(), ActionError> {
    if egress::url_host_is_runtime(url.source()) {
        deps.egress
            .check_url(input["url"].as_str().unwrap_or_default())
            .map_err(ActionError::fatal)?;
    }
    Ok(())
}

/// Serializes find-or-create of message threads in this process: two executions for one
/// identifier never both find none and both create one. (Across instances, `key` +
/// `concurrency` per candidate keep them apart; Recrubo's API has no unique constraint to lean
/// on, recrubo-api.md §6.9.)
static THREADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The MessageThread of `channel` + `identifier`: found by a list query, or created. Looking
/// first also makes a retry after a lost create answer find the thread it made.
async fn message_thread(deps: &ActionDeps, input: &Value) -> Result<Value, ActionError> {
    let client = recrubo(deps)?;
    let channel = string(input, "channel")?;
    let identifier = string(input, "identifier")?;
    if identifier.trim().is_empty() {
        return Err(ActionError::fatal(
            "message_thread: the identifier rendered empty (for WhatsApp, the phone number without `+`)",
        ));
    }
    // No channel's identifier is kilobytes long or holds control characters: such a value is
    // a mistake in the data, and sending it would only fail (a URL too long) again and again.
    if identifier.len() > 256 || identifier.chars().any(char::is_control) {
        return Err(ActionError::fatal(format!(
            "message_thread: the identifier is not one ({} bytes{}); for WhatsApp it is the phone number without `+`",
            identifier.len(),
            if identifier.chars().any(char::is_control) {
                ", with control characters"
            } else {
                ""
            }
        )));
    }
    let _one_at_a_time = THREADS.lock().await;
    let query = crate::recrubo::ListQuery::new()
        .filter("channel", channel.clone())
        .filter("identifier", identifier.clone())
        .sort("createdAt")
        .page_size(1);
    let found = client.list_message_threads(&query).await?;
    if let Some(thread) = found.items.into_iter().next() {
        return Ok(crate::recrubo::types::flattened(&thread));
    }
    let mut attributes = serde_json::Map::new();
    attributes.insert("channel".into(), Value::String(channel));
    attributes.insert("identifier".into(), Value::String(identifier));
    if let Some(paused) = input["chatbot_paused"].as_bool() {
        attributes.insert("chatbotPaused".into(), Value::Bool(paused));
    }
    let thread = client.create_message_thread(attributes).await?;
    Ok(crate::recrubo::types::flattened(&thread))
}
