//! The validated rule set: closed enums for triggers and steps, with every template and
//! condition compiled. Only [`crate::rules::validate`] builds one, so holding a [`RuleSet`] means
//! holding rules that passed every check. It is immutable; a reload builds a new one and swaps it.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::expr::Condition;
use super::located::Pos;
pub use super::model::{CatchUp, ConcurrencyMode, DebounceKeep, NotifyPreset, OnExcess};
use super::template::{Template, TemplateValue};
use crate::recrubo::{FlowGenerationStatus, FlowRunStatus};

/// A validated set of rules from one or more files.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    by_name: HashMap<String, usize>,
    /// SHA-256 of the files the set was loaded from (paths and contents).
    pub hash: String,
    /// The files the set was loaded from.
    pub files: Vec<PathBuf>,
    /// Every secret name the rules reference (`{{secrets.NAME}}`).
    pub secrets: BTreeSet<String>,
    /// Rules with an `event` trigger, by event type, and those of them with an
    /// `idempotency_key` (the intake answers a duplicate from these).
    event_rules: HashMap<String, (usize, Vec<usize>)>,
}

impl RuleSet {
    /// Builds a set from validated rules.
    pub(crate) fn new(
        rules: Vec<Rule>,
        hash: String,
        files: Vec<PathBuf>,
        secrets: BTreeSet<String>,
    ) -> Self {
        let by_name = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| (rule.name.clone(), index))
            .collect();
        let mut event_rules: HashMap<String, (usize, Vec<usize>)> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            if let Trigger::Event { event_type } = &rule.trigger {
                let entry = event_rules.entry(event_type.clone()).or_default();
                entry.0 += 1;
                if rule.flow.idempotency.is_some() {
                    entry.1.push(index);
                }
            }
        }
        RuleSet {
            rules: rules.into_iter().map(Arc::new).collect(),
            by_name,
            hash,
            files,
            secrets,
            event_rules,
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.by_name.get(name).map(|index| &self.rules[*index])
    }

    /// The rules an event of this type starts, when every one of them has an
    /// `idempotency_key` (then a duplicate of all of them starts nothing); empty otherwise.
    pub fn all_idempotent(&self, event_type: &str) -> Vec<&Arc<Rule>> {
        match self.event_rules.get(event_type) {
            Some((count, idempotent)) if *count == idempotent.len() => {
                idempotent.iter().map(|index| &self.rules[*index]).collect()
            }
            _ => Vec::new(),
        }
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The file it came from.
    pub file: PathBuf,
    /// Where the rule starts in that file.
    pub at: Pos,
    /// What starts it.
    pub trigger: Trigger,
    /// Run the steps once per item.
    pub for_each: Option<ForEach>,
    /// Rule-level condition.
    pub condition: Option<Condition>,
    /// Flow control per key (DESIGN 2.5).
    pub flow: FlowControl,
    /// The steps.
    pub steps: Vec<Step>,
    /// The file's `vars`.
    pub vars: Arc<serde_json::Map<String, serde_json::Value>>,
    /// Unit tests.
    pub tests: Vec<RuleTest>,
    /// The rule version: SHA-256 (hex) of [`Rule::definition`]. Executions record it and run
    /// that version's steps to the end, across reloads and restarts (DESIGN 3).
    pub version: String,
    /// The version's definition, canonical JSON: `{"rule": the rule as written without its
    /// tests and description, "vars": the file's vars}`. A rule rebuilt from it
    /// ([`crate::rules::validate::rebuild`]) runs exactly as this one.
    pub definition: Arc<str>,
}

/// Flow control per key (DESIGN 2.5): what a rule's executions wait for, yield to, or are
/// cancelled by. Enforced by the store at admission (`Store::admit`), so it holds across
/// restarts and instances.
#[derive(Debug, Clone, Default)]
pub struct FlowControl {
    /// Renders the key of an execution's group; `None`: the whole rule is one group.
    pub key: Option<Template>,
    /// Active executions per group.
    pub concurrency: Option<Concurrency>,
    /// Starts per group and sliding period.
    pub throttle: Option<Throttle>,
    /// Events of a group merged into one execution.
    pub debounce: Option<Debounce>,
    /// A daily window in which nothing starts.
    pub quiet_hours: Option<QuietHours>,
    /// Renders the idempotency key of an execution, and how long it is remembered.
    pub idempotency: Option<(Template, Duration)>,
    /// How long after its creation an unfinished execution expires.
    pub expires_after: Option<Duration>,
    /// Events that cancel a group.
    pub cancel_on: Vec<CancelOn>,
    /// Steps run once per cancelled execution.
    pub on_cancel: Vec<Step>,
    /// Its templates (key, idempotency key, quiet-hours zone) name neither `now` nor
    /// `secrets`: they render against an execution's stored context as it is.
    pub plain_templates: bool,
}

impl FlowControl {
    /// Whether an execution passes the store's gate before its first step (a limit, a
    /// throttle, quiet hours).
    pub fn gated(&self) -> bool {
        self.concurrency.is_some()
            || self.throttle.is_some()
            || self.quiet_hours.is_some()
            || self.debounce.is_some()
    }

    /// Whether the rule's executions carry a group key (`key`, or the whole rule for a
    /// `concurrency` without one).
    pub fn keyed(&self) -> bool {
        self.key.is_some() || self.gated()
    }

    /// Whether a running execution of the rule may be cancelled under it (it then checks
    /// between steps).
    pub fn cancellable(&self) -> bool {
        !self.cancel_on.is_empty()
            || self
                .concurrency
                .is_some_and(|c| c.mode == ConcurrencyMode::CancelPrevious)
    }
}

/// `concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// Active at once.
    pub limit: u32,
    /// What a later one does.
    pub mode: ConcurrencyMode,
}

/// `debounce`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time after the last event.
    pub period: Duration,
    /// Which event(s) it runs with.
    pub keep: DebounceKeep,
    /// The longest wait after the first event.
    pub max_wait: Option<Duration>,
}

/// `throttle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Starts per period.
    pub limit: u32,
    /// The sliding period.
    pub period: Duration,
    /// What an excess one does.
    pub on_excess: OnExcess,
}

/// `quiet_hours`: `[from, to)` local time, spanning midnight when `to <= from`.
#[derive(Debug, Clone)]
pub struct QuietHours {
    /// Start of the window.
    pub from: chrono::NaiveTime,
    /// End of the window.
    pub to: chrono::NaiveTime,
    /// Its time zone.
    pub timezone: Zone,
    /// The zone used when a rendered one is not a zone (the rule's schedule zone, or UTC).
    pub fallback: chrono_tz::Tz,
}

/// A time zone: fixed, or rendered per execution.
#[derive(Debug, Clone)]
pub enum Zone {
    /// An IANA zone.
    Fixed(chrono_tz::Tz),
    /// A template rendering an IANA zone name.
    Template(Template),
}

/// One `cancel_on` entry.
#[derive(Debug, Clone)]
pub struct CancelOn {
    /// The event type.
    pub event: String,
    /// Renders the key of the group cancelled.
    pub key: Template,
    /// Over the cancelling event.
    pub condition: Option<Condition>,
}

/// JSON text with the characters YAML does not allow printed escaped. They can only be inside
/// strings (serde_json escapes every control character below U+0020 already).
pub(crate) fn yaml_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if matches!(
            c,
            '\u{7f}'..='\u{9f}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
        ) && c != '\u{85}'
        {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// The canonical definition of a rule (as written, `tests` and `description` left out: they do
/// not change what runs) with its file's vars, and its hash.
pub fn rule_version(
    raw_rule: &serde_json::Value,
    vars: &serde_json::Map<String, serde_json::Value>,
) -> (String, Arc<str>) {
    use sha2::Digest as _;
    let mut rule = raw_rule.clone();
    if let Some(map) = rule.as_object_mut() {
        map.remove("tests");
        map.remove("description");
    }
    // serde_json's maps are sorted by key: the text is canonical. It is read back by the YAML
    // parser (`rebuild`), which refuses some characters serde_json writes as they are (DEL,
    // C1 controls, U+FEFF/U+FFFE/U+FFFF): those are written as `\uXXXX`, which both read.
    let definition = yaml_safe(&serde_json::json!({ "rule": rule, "vars": vars }).to_string());
    let hash = hex::encode(sha2::Sha256::digest(definition.as_bytes()));
    (hash, Arc::from(definition))
}

impl Rule {
    /// Finds a step by id anywhere in the rule, handlers included.
    pub fn find_step(&self, id: &str) -> Option<&Step> {
        fn search<'a>(steps: &'a [Step], id: &str) -> Option<&'a Step> {
            steps.iter().find_map(|step| {
                if step.id.as_deref() == Some(id) {
                    Some(step)
                } else {
                    step.on_status
                        .iter()
                        .find_map(|(_, handler)| search(handler, id))
                }
            })
        }
        search(&self.steps, id)
    }
}

impl Rule {
    /// A step by its key: its id, or for a step without one its position, `@0` for the first
    /// step, `@0/finished/1` for the second step of the first step's `finished` handler.
    pub fn step_by_key(&self, key: &str) -> Option<&Step> {
        let Some(path) = key.strip_prefix('@') else {
            return self.find_step(key);
        };
        let mut parts = path.split('/');
        let first: usize = parts.next()?.parse().ok()?;
        let mut step = self.steps.get(first)?;
        loop {
            let Some(status) = parts.next() else {
                return Some(step);
            };
            let index: usize = parts.next()?.parse().ok()?;
            let (_, handler) = step.on_status.iter().find(|(s, _)| s == status)?;
            step = handler.get(index)?;
        }
    }
}

impl Rule {
    /// The position path (`0/finished/1`) of the step with this key.
    pub fn path_of(&self, key: &str) -> Option<String> {
        if let Some(path) = key.strip_prefix('@') {
            return Some(path.to_owned());
        }
        fn search(steps: &[Step], prefix: &str, id: &str) -> Option<String> {
            for (index, step) in steps.iter().enumerate() {
                let path = if prefix.is_empty() {
                    index.to_string()
                } else {
                    format!("{prefix}/{index}")
                };
                if step.id.as_deref() == Some(id) {
                    return Some(path);
                }
                for (status, handler) in &step.on_status {
                    if let Some(found) = search(handler, &format!("{path}/{status}"), id) {
                        return Some(found);
                    }
                }
            }
            None
        }
        search(&self.steps, "", key)
    }
}

/// The key of a step for [`Rule::step_by_key`]: its id, or `@` + its position.
pub fn step_key(step: &Step, position: &str) -> String {
    step.id.clone().unwrap_or_else(|| format!("@{position}"))
}

/// A trigger: what starts an execution of a rule.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A cron schedule.
    Schedule(Box<ScheduleTrigger>),
    /// A fixed interval.
    Every(EveryTrigger),
    /// An external (or emitted) event of a type.
    Event {
        /// The event type, e.g. `application.created`.
        event_type: String,
    },
    /// A Recrubo webhook.
    Recrubo(RecruboTrigger),
    /// A FlowRun status change.
    FlowRun(FlowRunTrigger),
    /// A FlowGeneration status change.
    FlowGeneration(FlowGenerationTrigger),
    /// Manual only.
    Manual(ManualTrigger),
}

impl Trigger {
    /// The trigger's key as written (`schedule`, `event`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Schedule(_) => "schedule",
            Trigger::Every(_) => "every",
            Trigger::Event { .. } => "event",
            Trigger::Recrubo(_) => "recrubo",
            Trigger::FlowRun(_) => "flow_run",
            Trigger::FlowGeneration(_) => "flow_generation",
            Trigger::Manual(_) => "manual",
        }
    }

    /// A short description for listings: `schedule 0 8 * * 1-5 (Europe/Amsterdam)`.
    pub fn summary(&self) -> String {
        match self {
            Trigger::Schedule(s) => format!("schedule {} ({})", s.cron_source, s.timezone),
            Trigger::Every(e) => format!("every {}", humantime::format_duration(e.interval)),
            Trigger::Event { event_type } => format!("event {event_type}"),
            Trigger::Recrubo(r) => {
                let events = if r.events.is_empty() {
                    "any".to_owned()
                } else {
                    r.events.join(",")
                };
                format!("recrubo {} {}", r.resource, events)
            }
            Trigger::FlowRun(f) => format!(
                "flow_run {}",
                f.statuses
                    .iter()
                    .map(FlowRunStatus::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Trigger::FlowGeneration(f) => format!(
                "flow_generation {}",
                f.statuses
                    .iter()
                    .map(FlowGenerationStatus::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Trigger::Manual(_) => "manual".to_owned(),
        }
    }
}

/// `schedule:`.
#[derive(Debug, Clone)]
pub struct ScheduleTrigger {
    /// The expression as written.
    pub cron_source: String,
    /// The parsed expression.
    pub cron: croner::Cron,
    /// The zone the expression is read in.
    pub timezone: chrono_tz::Tz,
    /// Missed ticks policy.
    pub catch_up: CatchUp,
    /// How far back `all` looks.
    pub catch_up_window: Duration,
}

impl ScheduleTrigger {
    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }
}

/// `every:`.
#[derive(Debug, Clone)]
pub struct EveryTrigger {
    /// The interval.
    pub interval: Duration,
    /// Missed ticks policy.
    pub catch_up: CatchUp,
    /// How far back `all` looks.
    pub catch_up_window: Duration,
}

/// `recrubo:`.
#[derive(Debug, Clone)]
pub struct RecruboTrigger {
    /// JSON:API type, e.g. `flowRuns`.
    pub resource: String,
    /// `create`/`update`/`delete`; empty means any.
    pub events: Vec<String>,
    /// Changed fields to react to; empty means any.
    pub fields: Vec<String>,
}

/// `started_by:` — a rule, or one step of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StartedBy {
    /// The rule name.
    pub rule: String,
    /// The step id, when given as `rule/step`.
    pub step: Option<String>,
}

/// `flow_run:`.
#[derive(Debug, Clone)]
pub struct FlowRunTrigger {
    /// The statuses to react to.
    pub statuses: Vec<FlowRunStatus>,
    /// Only runs of this Flow.
    pub flow: Option<String>,
    /// Only runs started by this rule/step.
    pub started_by: Option<StartedBy>,
}

/// `flow_generation:`.
#[derive(Debug, Clone)]
pub struct FlowGenerationTrigger {
    /// The statuses to react to.
    pub statuses: Vec<FlowGenerationStatus>,
    /// Only generations started by this rule/step.
    pub started_by: Option<StartedBy>,
}

/// `manual:`.
#[derive(Debug, Clone, Default)]
pub struct ManualTrigger {
    /// Declared inputs.
    pub inputs: Vec<ManualInput>,
}

impl ManualTrigger {
    /// The inputs a manual run gets: `given` checked against the declared inputs (types,
    /// required ones), defaults filled in, unknown names refused. Shared by the admin API's
    /// `trigger` and `flowd simulate --manual`.
    pub fn resolve(
        &self,
        rule: &str,
        given: serde_json::Map<String, serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let mut inputs = given;
        for input in &self.inputs {
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
            if !self.inputs.iter().any(|input| &input.name == name) {
                return Err(format!("rule `{rule}` has no input `{name}`"));
            }
        }
        Ok(serde_json::Value::Object(inputs))
    }
}

/// One declared input of a manual trigger.
#[derive(Debug, Clone, Serialize)]
pub struct ManualInput {
    /// The name (`event.data.NAME`).
    pub name: String,
    /// `string`, `number`, `boolean` or `object`.
    pub input_type: String,
    /// Must be given.
    pub required: bool,
    /// Used when not given.
    pub default: Option<serde_json::Value>,
}

/// `for_each:`.
#[derive(Debug, Clone)]
pub enum ForEach {
    /// Page through a Recrubo collection.
    List {
        /// The collection path, e.g. `flow-runs`.
        resource: String,
        /// `filter[...]` parameters (templates).
        filter: Vec<(String, TemplateValue)>,
        /// `sort`.
        sort: Option<String>,
        /// `page[size]`.
        page_size: u32,
    },
    /// A literal list or a template that yields one.
    Items(TemplateValue),
}

/// A retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all.
    pub attempts: u32,
    /// The first delay.
    pub backoff: Duration,
    /// The longest delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            backoff: Duration::from_secs(2),
            // DESIGN 3: a server's `Retry-After` is capped by `max_backoff`, default 1h.
            max_backoff: Duration::from_secs(3600),
        }
    }
}

/// One step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The id, when given.
    pub id: Option<String>,
    /// Where the step starts.
    pub at: Pos,
    /// Step-level condition.
    pub condition: Option<Condition>,
    /// Overrides the default policy.
    pub retry: Option<RetryPolicy>,
    /// Failures do not stop the execution.
    pub continue_on_error: bool,
    /// What the step does.
    pub kind: StepKind,
    /// Handlers by status (only for `start_flow_run` and `generate_flow`); `deadline` is one.
    pub on_status: Vec<(String, Vec<Step>)>,
    /// `on_status.deadline` fires if what it started is not terminal this long after.
    pub deadline: Option<Duration>,
}

/// HTTP methods the `http` and `recrubo` steps accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HttpMethod {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

impl HttpMethod {
    /// Every method, as written.
    pub const NAMES: &'static [&'static str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

    /// Parses a method name (case-insensitive).
    pub fn parse(text: &str) -> Option<HttpMethod> {
        match text.to_ascii_uppercase().as_str() {
            "GET" => Some(HttpMethod::Get),
            "POST" => Some(HttpMethod::Post),
            "PUT" => Some(HttpMethod::Put),
            "PATCH" => Some(HttpMethod::Patch),
            "DELETE" => Some(HttpMethod::Delete),
            _ => None,
        }
    }
}

/// What a step does: one variant per step kind of DESIGN 2.4.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// `POST /flow-runs`.
    StartFlowRun {
        /// Flow id.
        flow: Template,
        /// MessageThread id.
        message_thread: Template,
        /// Initial state.
        state: Option<TemplateValue>,
        /// Initial message (`{}` when absent).
        initial_message: Option<TemplateValue>,
    },
    /// `POST /flow-generations`.
    GenerateFlow {
        /// Flow type.
        flow_type: Template,
        /// Parameters.
        parameters: Option<TemplateValue>,
        /// Context.
        context: Option<TemplateValue>,
        /// Vacancy id.
        vacancy_id: Option<Template>,
        /// The id of an earlier `analyze_vacancy` step.
        from_analysis: Option<String>,
    },
    /// `POST /vacancy-analyses`, then wait for the result.
    AnalyzeVacancy {
        /// The vacancy text.
        text: Template,
    },
    /// `PATCH /flow-runs/{id}`.
    UpdateFlowRun {
        /// FlowRun id.
        id: Template,
        /// New state.
        state: Option<TemplateValue>,
        /// New status.
        status: Option<Template>,
    },
    /// Any Recrubo call.
    Recrubo {
        /// Method.
        method: HttpMethod,
        /// Path below the base URL.
        path: Template,
        /// The envelope's `data`.
        body: Option<TemplateValue>,
    },
    /// A JSON POST.
    Notify {
        /// URL.
        url: Template,
        /// Headers.
        headers: Vec<(String, Template)>,
        /// Body.
        body: TemplateValue,
        /// Body shape.
        preset: Option<NotifyPreset>,
    },
    /// SMTP mail.
    Email {
        /// Recipients.
        to: Vec<Template>,
        /// Subject.
        subject: Template,
        /// Text body.
        body: Template,
        /// HTML body.
        html: Option<Template>,
    },
    /// Any HTTP request.
    Http {
        /// Method.
        method: HttpMethod,
        /// URL.
        url: Template,
        /// Headers.
        headers: Vec<(String, Template)>,
        /// Body.
        body: Option<TemplateValue>,
    },
    /// An internal event.
    Emit {
        /// Event type.
        event_type: Template,
        /// Event data.
        data: Option<TemplateValue>,
    },
    /// A log line.
    Log {
        /// The text.
        text: Template,
    },
    /// Finds the MessageThread of a channel and identifier (`GET /message-threads`, filtered)
    /// or creates it (`POST /message-threads`).
    MessageThread {
        /// The channel.
        channel: Template,
        /// The identifier (a phone number for WhatsApp).
        identifier: Template,
        /// `chatbotPaused` of a thread it creates.
        chatbot_paused: Option<TemplateValue>,
    },
}

impl StepKind {
    /// Every step kind key, as written.
    pub const NAMES: &'static [&'static str] = &[
        "start_flow_run",
        "generate_flow",
        "analyze_vacancy",
        "update_flow_run",
        "recrubo",
        "notify",
        "email",
        "http",
        "emit",
        "log",
        "message_thread",
    ];

    /// Whether the step creates a Recrubo resource (a FlowRun, a generation, an analysis):
    /// such a step leaves an in-doubt marker before it sends, so that the attempt after a lost
    /// answer looks for what it created instead of creating it again.
    pub fn creates(&self) -> bool {
        matches!(
            self,
            StepKind::StartFlowRun { .. }
                | StepKind::GenerateFlow { .. }
                | StepKind::AnalyzeVacancy { .. }
        )
    }

    /// The key as written.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::StartFlowRun { .. } => "start_flow_run",
            StepKind::GenerateFlow { .. } => "generate_flow",
            StepKind::AnalyzeVacancy { .. } => "analyze_vacancy",
            StepKind::UpdateFlowRun { .. } => "update_flow_run",
            StepKind::Recrubo { .. } => "recrubo",
            StepKind::Notify { .. } => "notify",
            StepKind::Email { .. } => "email",
            StepKind::Http { .. } => "http",
            StepKind::Emit { .. } => "emit",
            StepKind::Log { .. } => "log",
            StepKind::MessageThread { .. } => "message_thread",
        }
    }
}

/// A unit test of a rule.
#[derive(Debug, Clone)]
pub struct RuleTest {
    /// Name.
    pub name: String,
    /// Where it is written.
    pub at: Pos,
    /// The trigger payload.
    pub event: serde_json::Value,
    /// Status changes of started runs.
    pub run_updates: Vec<RunUpdate>,
    /// Fixed `now`.
    pub now: Option<DateTime<Utc>>,
    /// The expectation.
    pub expect: Expectation,
}

/// A status change in a test.
#[derive(Debug, Clone)]
pub struct RunUpdate {
    /// New status.
    pub status: String,
    /// New state.
    pub state: Option<serde_json::Value>,
    /// The step whose run changes (default: the first started).
    pub step: Option<String>,
}

/// What a test expects.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// These steps, in order: (kind, partial fields).
    Steps(Vec<(String, serde_json::Value)>),
    /// An error containing this text.
    Error(String),
}
