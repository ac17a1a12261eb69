//! The rule file as written: serde types that mirror the YAML one to one.
//!
//! These types are deliberately loose where YAML needs it (a trigger is a mapping with optional
//! keys, one of which must be set) and strict everywhere else (`deny_unknown_fields`). Turning
//! them into the closed enums of [`crate::rules::ruleset`] — and checking everything that serde
//! cannot — is the job of [`crate::rules::validate`]. `flowd schema` is generated from here.

use schemars::JsonSchema;
use serde::Deserialize;

use super::located::{Located, LocatedMap, OneOrMany, ShortOrFull, ValueModel};

/// One rule file: file-level constants and a list of rules.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "flowd rule file")]
pub struct RuleFileModel {
    /// Constants for this file, available to templates and conditions as `vars.NAME`.
    #[serde(default)]
    pub vars: Option<LocatedMap<Located<ValueModel>>>,
    /// The rules of this file.
    #[serde(default)]
    pub rules: Vec<Located<RuleModel>>,
}

/// One automation: a trigger, an optional condition and steps.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleModel {
    /// Unique across all files; `[a-z0-9][a-z0-9_-]*`.
    pub name: Located<String>,
    /// What the rule is for, in words.
    #[serde(default)]
    pub description: Option<String>,
    /// Exactly one trigger, optionally with `for_each`.
    pub on: Located<OnModel>,
    /// A CEL condition; the rule runs only when it is true.
    #[serde(default, rename = "if")]
    pub condition: Option<Located<String>>,
    /// At most this many executions of the rule in flight (default: unlimited).
    #[serde(default)]
    pub concurrency: Option<Located<u32>>,
    /// The steps, run in order.
    #[serde(rename = "do")]
    pub steps: Located<Vec<Located<StepModel>>>,
    /// Unit tests run by `flowd test`.
    #[serde(default)]
    pub tests: Vec<Located<RuleTestModel>>,
}

/// The `on:` mapping: exactly one trigger key, plus an optional `for_each`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnModel {
    /// A cron schedule: `schedule: "0 8 * * 1-5"` or `schedule: { cron: ..., timezone: ... }`.
    #[serde(default)]
    pub schedule: Option<Located<ShortOrFull<ScheduleModel>>>,
    /// A fixed interval: `every: 15m` or `every: { interval: 15m, catch_up: all }`.
    #[serde(default)]
    pub every: Option<Located<ShortOrFull<EveryModel>>>,
    /// An external event type posted to `POST /events/{type}`, e.g. `application.created`.
    #[serde(default)]
    pub event: Option<Located<String>>,
    /// Any Recrubo webhook for a resource.
    #[serde(default)]
    pub recrubo: Option<Located<RecruboTriggerModel>>,
    /// A FlowRun status change.
    #[serde(default)]
    pub flow_run: Option<Located<FlowRunTriggerModel>>,
    /// A FlowGeneration status change.
    #[serde(default)]
    pub flow_generation: Option<Located<FlowGenerationTriggerModel>>,
    /// Only by `flowd trigger` or the admin API; `manual: {}` or with `inputs`.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<ManualTriggerModel>")]
    pub manual: Option<Located<Option<ManualTriggerModel>>>,
    /// Run the steps once per item of a Recrubo list query or a list.
    #[serde(default)]
    pub for_each: Option<Located<ForEachModel>>,
}

/// Deserializes a key that is present (even with a null value) as `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// What to do with ticks missed while flowd was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Fire none of them.
    Skip,
    /// Fire once, for the latest missed tick (the default).
    Latest,
    /// Fire every missed tick inside `catch_up_window`, oldest first.
    All,
}

/// `schedule:` in its mapping form.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleModel {
    /// 5 fields (minute hour day month weekday), or 6 with seconds first; `@daily` etc.
    pub cron: Located<String>,
    /// IANA time zone, default UTC.
    #[serde(default)]
    pub timezone: Option<Located<String>>,
    /// Missed ticks: `skip`, `latest` (default) or `all`.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// How far back `catch_up: all` looks (default 24h).
    #[serde(default)]
    pub catch_up_window: Option<Located<String>>,
}

/// `every:` in its mapping form.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EveryModel {
    /// The interval: `30s`, `15m`, `1h`.
    pub interval: Located<String>,
    /// Missed ticks: `skip`, `latest` (default) or `all`.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// How far back `catch_up: all` looks (default 24h).
    #[serde(default)]
    pub catch_up_window: Option<Located<String>>,
}

/// `recrubo:` — any webhook delivery for a resource.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecruboTriggerModel {
    /// The JSON:API resource type, e.g. `flowRuns`, `candidates`, `messages`.
    pub resource: Located<String>,
    /// `create`, `update` or `delete` (one or a list); any when absent.
    #[serde(default)]
    pub event: Option<Located<OneOrMany<String>>>,
    /// Only deliveries that report a change to one of these fields.
    #[serde(default)]
    pub fields: Option<Located<Vec<Located<String>>>>,
}

/// `flow_run:` — a FlowRun's status changed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRunTriggerModel {
    /// The status (or statuses) to react to.
    pub status: Located<OneOrMany<String>>,
    /// Only runs of this Flow id.
    #[serde(default)]
    pub flow: Option<Located<String>>,
    /// Only runs started by this rule (`rule`) or this step of it (`rule/step`).
    #[serde(default)]
    pub started_by: Option<Located<String>>,
}

/// `flow_generation:` — a FlowGeneration's status changed.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowGenerationTriggerModel {
    /// The status (or statuses) to react to.
    pub status: Located<OneOrMany<String>>,
    /// Only generations started by this rule (`rule`) or this step of it (`rule/step`).
    #[serde(default)]
    pub started_by: Option<Located<String>>,
}

/// `manual:` — run by `flowd trigger RULE --input k=v` or the admin API.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTriggerModel {
    /// The inputs the rule accepts, by name; they arrive as `event.data.NAME`.
    #[serde(default)]
    pub inputs: LocatedMap<Located<InputModel>>,
}

/// One input of a manual trigger.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputModel {
    /// `string` (default), `number`, `boolean` or `object`.
    #[serde(default, rename = "type")]
    pub input_type: Option<Located<String>>,
    /// Whether the input must be given (default false).
    #[serde(default)]
    pub required: bool,
    /// The value used when the input is not given.
    #[serde(default)]
    pub default: Option<Located<ValueModel>>,
    /// What the input is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// `for_each:` — a Recrubo list query (`list`) or a list of items (`items`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEachModel {
    /// A Recrubo collection to page through: `flow-runs`, `message-threads`, ...
    #[serde(default)]
    pub list: Option<Located<String>>,
    /// `filter[...]` parameters; values may be templates, operators as nested mappings
    /// (`createdAt: { gte: "{{now_minus '24h'}}" }`).
    #[serde(default)]
    pub filter: Option<LocatedMap<Located<ValueModel>>>,
    /// A sort key, `-` for descending: `-createdAt`.
    #[serde(default)]
    pub sort: Option<Located<String>>,
    /// Page size of the list query (default 100).
    #[serde(default)]
    pub page_size: Option<Located<u32>>,
    /// A literal list, or a template that yields one (`"{{vars.threads}}"`).
    #[serde(default)]
    pub items: Option<Located<ValueModel>>,
}

/// One step: common keys plus exactly one step kind key.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepModel {
    /// Names the step for later steps (`steps.<id>`) and for `started_by: rule/step`.
    #[serde(default)]
    pub id: Option<Located<String>>,
    /// A CEL condition; the step runs only when it is true.
    #[serde(default, rename = "if")]
    pub condition: Option<Located<String>>,
    /// Overrides the default retry policy for this step.
    #[serde(default)]
    pub retry: Option<Located<RetryModel>>,
    /// When true, a failure of this step does not stop the execution.
    #[serde(default)]
    pub continue_on_error: Option<bool>,
    /// Handlers by status, for `start_flow_run` and `generate_flow` steps.
    #[serde(default)]
    pub on_status: Option<Located<StatusHandlers>>,

    /// `POST /flow-runs`.
    #[serde(default)]
    pub start_flow_run: Option<Located<StartFlowRunModel>>,
    /// `POST /flow-generations`.
    #[serde(default)]
    pub generate_flow: Option<Located<GenerateFlowModel>>,
    /// `POST /vacancy-analyses` and wait for the result.
    #[serde(default)]
    pub analyze_vacancy: Option<Located<AnalyzeVacancyModel>>,
    /// `PATCH /flow-runs/{id}`.
    #[serde(default)]
    pub update_flow_run: Option<Located<UpdateFlowRunModel>>,
    /// Any other Recrubo call.
    #[serde(default)]
    pub recrubo: Option<Located<RecruboCallModel>>,
    /// A JSON POST to a webhook (Slack, Teams, anything).
    #[serde(default)]
    pub notify: Option<Located<NotifyModel>>,
    /// An SMTP mail.
    #[serde(default)]
    pub email: Option<Located<EmailModel>>,
    /// Any HTTP request.
    #[serde(default)]
    pub http: Option<Located<HttpModel>>,
    /// An internal event for `event` triggers.
    #[serde(default)]
    pub emit: Option<Located<EmitModel>>,
    /// A line in the daemon log.
    #[serde(default)]
    pub log: Option<Located<String>>,
}

/// `on_status:` — steps by status.
pub type StatusHandlers = LocatedMap<Located<Vec<Located<StepModel>>>>;

/// One expected step of a test: `{<step kind>: {<fields>}}`.
pub type ExpectedStepModel = LocatedMap<Located<ValueModel>>;

/// `retry:` of a step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryModel {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: Located<u32>,
    /// The first delay, doubled after each attempt, with jitter: `2s`, `1m`.
    #[serde(default)]
    pub backoff: Option<Located<String>>,
    /// The longest delay between attempts (default 10m).
    #[serde(default)]
    pub max_backoff: Option<Located<String>>,
}

/// `start_flow_run:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartFlowRunModel {
    /// The Flow id.
    pub flow: Located<String>,
    /// The MessageThread id.
    pub message_thread: Located<String>,
    /// Initial session variables.
    #[serde(default)]
    pub state: Option<Located<ValueModel>>,
    /// The initial message (`{}` when absent).
    #[serde(default)]
    pub initial_message: Option<Located<ValueModel>>,
}

/// `generate_flow:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateFlowModel {
    /// The flow type (default `vacancy_application_flow`).
    #[serde(default)]
    pub flow_type: Option<Located<String>>,
    /// Generation parameters.
    #[serde(default)]
    pub parameters: Option<Located<ValueModel>>,
    /// Generation context.
    #[serde(default)]
    pub context: Option<Located<ValueModel>>,
    /// The Vacancy id.
    #[serde(default)]
    pub vacancy_id: Option<Located<String>>,
    /// The id of an earlier `analyze_vacancy` step whose result fills the requirements.
    #[serde(default)]
    pub from_analysis: Option<Located<String>>,
}

/// `analyze_vacancy:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeVacancyModel {
    /// The vacancy text.
    pub text: Located<String>,
}

/// `update_flow_run:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateFlowRunModel {
    /// The FlowRun id.
    pub id: Located<String>,
    /// New session variables (`{}` scrubs them).
    #[serde(default)]
    pub state: Option<Located<ValueModel>>,
    /// New status: `finished`, `timeout`, `cancelled` or `exception`.
    #[serde(default)]
    pub status: Option<Located<String>>,
}

/// `recrubo:` step fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecruboCallModel {
    /// `GET`, `POST`, `PATCH` or `DELETE`.
    pub method: Located<String>,
    /// The path below the base URL, e.g. `/candidates/{{event.data.id}}`.
    pub path: Located<String>,
    /// The `data` of the JSON:API envelope.
    #[serde(default)]
    pub body: Option<Located<ValueModel>>,
}

/// Body presets of `notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyPreset {
    /// Slack incoming webhook: a string body becomes `{"text": ...}`.
    Slack,
    /// Microsoft Teams incoming webhook: a string body becomes a MessageCard.
    Teams,
}

/// `notify:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyModel {
    /// Where to POST.
    pub url: Located<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: Option<LocatedMap<Located<String>>>,
    /// The JSON body (a string with a preset).
    pub body: Located<ValueModel>,
    /// Shape the body for `slack` or `teams`.
    #[serde(default)]
    pub preset: Option<NotifyPreset>,
}

/// `email:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailModel {
    /// One address or a list.
    pub to: Located<OneOrMany<String>>,
    /// The subject line.
    pub subject: Located<String>,
    /// The plain-text body.
    pub body: Located<String>,
    /// An optional HTML body.
    #[serde(default)]
    pub html: Option<Located<String>>,
}

/// `http:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpModel {
    /// The method (default `GET`).
    #[serde(default)]
    pub method: Option<Located<String>>,
    /// The URL.
    pub url: Located<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: Option<LocatedMap<Located<String>>>,
    /// A JSON body.
    #[serde(default)]
    pub body: Option<Located<ValueModel>>,
}

/// `emit:` fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitModel {
    /// The event type, seen by `on: { event: TYPE }`.
    #[serde(rename = "type")]
    pub event_type: Located<String>,
    /// The event's `data`.
    #[serde(default)]
    pub data: Option<Located<ValueModel>>,
}

/// One unit test of a rule (run by `flowd test`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleTestModel {
    /// What the test shows.
    pub name: Located<String>,
    /// The trigger payload: `{type, data}`, a Recrubo resource, or `{scheduled_at}`.
    pub event: Located<ValueModel>,
    /// Status changes of the runs the rule starts, in order.
    #[serde(default)]
    pub run_updates: Vec<Located<RunUpdateModel>>,
    /// A fixed time for `now` (RFC 3339).
    #[serde(default)]
    pub now: Option<Located<String>>,
    /// What must happen.
    pub expect: Located<ExpectModel>,
}

/// One status change in a test.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunUpdateModel {
    /// The new status.
    pub status: Located<String>,
    /// The run's state at that moment.
    #[serde(default)]
    pub state: Option<Located<ValueModel>>,
    /// Which started run this applies to, by step id (default: the first started).
    #[serde(default)]
    pub step: Option<Located<String>>,
}

/// The expectation of a test: `steps` or `error`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectModel {
    /// The steps that run, in order, each `{<step kind>: {<fields>}}` matched partially.
    #[serde(default)]
    pub steps: Option<Located<Vec<Located<ExpectedStepModel>>>>,
    /// A substring of the error the rule must end with.
    #[serde(default)]
    pub error: Option<Located<String>>,
}
