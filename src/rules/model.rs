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
    /// The flow-control key of an execution (a template, e.g. `{{event.data.candidate_id}}`):
    /// executions of the rule with equal keys form a group that `concurrency`, `throttle` and
    /// `cancel_on` act on.
    #[serde(default)]
    pub key: Option<Located<String>>,
    /// At most `limit` executions of a key group (or of the rule, without `key`) active at once:
    /// `concurrency: 3`, or `{ limit: 1, mode: queue | skip | cancel_previous }`.
    #[serde(default)]
    pub concurrency: Option<Located<LimitOrFull<ConcurrencyModel>>>,
    /// At most `limit` executions of a key group start per sliding `period`.
    #[serde(default)]
    pub throttle: Option<Located<ThrottleModel>>,
    /// Events of a key group that arrive within `period` of the previous one are merged into
    /// one execution.
    #[serde(default)]
    pub debounce: Option<Located<DebounceModel>>,
    /// Executions due inside this daily window are held until it ends.
    #[serde(default)]
    pub quiet_hours: Option<Located<QuietHoursModel>>,
    /// A second event that renders the same key within `idempotency_window` starts nothing
    /// (e.g. `{{event.data.application_id}}`).
    #[serde(default)]
    pub idempotency_key: Option<Located<String>>,
    /// How long an `idempotency_key` is remembered (default `24h`).
    #[serde(default)]
    pub idempotency_window: Option<Located<String>>,
    /// An execution not finished this long after it was created stops, `expired` (e.g. `48h`).
    #[serde(default)]
    pub expires_after: Option<Located<String>>,
    /// Events that cancel the pending executions of a key group (and the runs they follow).
    #[serde(default)]
    pub cancel_on: Option<Located<Vec<Located<CancelOnModel>>>>,
    /// Steps run once per cancelled execution, with its context (`steps.*`).
    #[serde(default)]
    pub on_cancel: Option<Located<Vec<Located<StepModel>>>>,
    /// The steps, run in order.
    #[serde(rename = "do")]
    pub steps: Located<Vec<Located<StepModel>>>,
    /// Unit tests run by `flowd test`.
    #[serde(default)]
    pub tests: Vec<Located<RuleTestModel>>,
}

/// `concurrency:` in full.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyModel {
    /// Executions of a group active at once (default 1).
    #[serde(default)]
    pub limit: Option<Located<u32>>,
    /// What a later execution does while the group is full (default `queue`).
    #[serde(default)]
    pub mode: Option<Located<ConcurrencyMode>>,
}

/// What an execution does while its group is at its `concurrency` limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyMode {
    /// Waits its turn, in order.
    Queue,
    /// Is recorded as `skipped`, with the execution it yielded to.
    Skip,
    /// Cancels the active one(s) and starts.
    CancelPrevious,
}

/// `debounce:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebounceModel {
    /// How long after the last event of a group the execution starts, e.g. `10m`.
    pub period: Located<String>,
    /// Which event it runs with: `first`, `last` (default) or `all` (`event.batch`).
    #[serde(default)]
    pub keep: Option<Located<DebounceKeep>>,
    /// It starts at the latest this long after the first event, however many follow.
    #[serde(default)]
    pub max_wait: Option<Located<String>>,
}

/// Which events a debounced execution runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DebounceKeep {
    /// The first event of the window.
    First,
    /// The last event of the window.
    Last,
    /// All of them, as `event.batch` (oldest first).
    All,
}

/// `throttle:`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ThrottleModel {
    /// Starts per period.
    pub limit: Located<u32>,
    /// The sliding period, e.g. `24h`.
    pub period: Located<String>,
    /// `delay` (default: start when a slot frees) or `drop` (recorded as `dropped`).
    #[serde(default)]
    pub on_excess: Option<Located<OnExcess>>,
}

/// What an execution over its `throttle` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExcess {
    /// Starts when a slot frees.
    Delay,
    /// Is recorded as `dropped`.
    Drop,
}

/// `quiet_hours:` — a daily window, e.g. `{ from: "21:00", to: "08:00" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursModel {
    /// When the window starts, `HH:MM` local time.
    pub from: Located<String>,
    /// When it ends, `HH:MM` local time (before `from`: the window spans midnight).
    pub to: Located<String>,
    /// An IANA zone or a template that renders one (e.g. `{{event.data.timezone}}`); default
    /// the rule's schedule zone, or UTC.
    #[serde(default)]
    pub timezone: Option<Located<String>>,
}

/// One `cancel_on:` entry.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOnModel {
    /// The event type that cancels, as an `event` trigger matches it.
    pub event: Located<String>,
    /// The key group it cancels (a template over the cancelling event).
    pub key: Located<String>,
    /// A CEL condition over the cancelling event.
    #[serde(default, rename = "if")]
    pub condition: Option<Located<String>>,
}

/// A number, or the mapping it abbreviates (`concurrency: 3` is `{ limit: 3 }`).
#[derive(Debug, Clone, PartialEq)]
pub enum LimitOrFull<F> {
    /// The number form.
    Short(u32),
    /// The mapping form.
    Full(F),
}

impl<'de, F: Deserialize<'de>> Deserialize<'de> for LimitOrFull<F> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de;
        struct LimitVisitor<F>(std::marker::PhantomData<F>);
        impl<'de, F: Deserialize<'de>> de::Visitor<'de> for LimitVisitor<F> {
            type Value = LimitOrFull<F>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number or a mapping")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(LimitOrFull::Short)
                    .map_err(|_| E::custom("the number is too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(LimitOrFull::Short)
                    .map_err(|_| E::custom("expected a whole number of at least 1"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                F::deserialize(de::value::MapAccessDeserializer::new(map)).map(LimitOrFull::Full)
            }
        }
        deserializer.deserialize_any(LimitVisitor(std::marker::PhantomData))
    }
}

impl<F: JsonSchema> JsonSchema for LimitOrFull<F> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("LimitOr{}", F::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let full = generator.subschema_for::<F>();
        schemars::json_schema!({
            "anyOf": [{ "type": "integer", "minimum": 1 }, full]
        })
    }
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
    /// For `start_flow_run` and `generate_flow`: if what it started is not terminal this long
    /// after it started, `on_status.deadline` fires once (e.g. `72h`).
    #[serde(default)]
    pub deadline: Option<Located<String>>,

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
    /// Find the MessageThread for `channel` + `identifier`, or create it.
    #[serde(default)]
    pub message_thread: Option<Located<MessageThreadModel>>,
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

/// `message_thread:` — the thread of a channel and identifier (e.g. a WhatsApp number).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageThreadModel {
    /// The channel (default `whatsapp`).
    #[serde(default)]
    pub channel: Option<Located<String>>,
    /// The identifier on that channel: for WhatsApp the phone number without `+`.
    pub identifier: Located<String>,
    /// Whether the bot is paused on a thread it creates (default false).
    #[serde(default)]
    pub chatbot_paused: Option<Located<ValueModel>>,
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
