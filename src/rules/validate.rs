//! Validation: rule file models in, a [`RuleSet`] or every diagnostic out.
//!
//! The validator never stops at the first problem: each rule, step, template and condition is
//! checked and every mistake is collected with its file, line, column, rule and field (vector's
//! config loading is the model). Checks that need the whole set — duplicate names across files,
//! `started_by` naming a rule that does not exist, `emit`/`started_by` chains that form a cycle —
//! run after every file has been read.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::diagnostic::{Diagnostic, backticked, did_you_mean};
use super::duration::parse_duration;

/// The longest `retry.backoff` / `retry.max_backoff`: a retry a week away is already a dead
/// letter in all but name.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
use super::expr::Condition;
use super::load::LoadedFiles;
use super::located::{Located, LocatedMap, Pos, ShortOrFull, ValueModel};
use super::model::{
    CatchUp, ForEachModel, OnModel, RuleFileModel, RuleModel, RuleTestModel, StepModel,
};
use super::ruleset::{
    EveryTrigger, Expectation, FlowGenerationTrigger, FlowRunTrigger, ForEach, HttpMethod,
    ManualInput, ManualTrigger, RecruboTrigger, RetryPolicy, Rule, RuleSet, RuleTest, RunUpdate,
    ScheduleTrigger, StartedBy, Step, StepKind, Trigger,
};
use super::template::{Reference, Template, TemplateValue};
use crate::recrubo::{FlowGenerationStatus, FlowRunStatus};

/// The names a template or condition may start with.
pub const CONTEXT_ROOTS: &[&str] = &[
    "event",
    "run",
    "generation",
    "steps",
    "item",
    "vars",
    "secrets",
    "rule",
    "now",
];

/// JSON:API resource types a `recrubo` trigger may name (recrubo-api.md §3, §9).
pub const RECRUBO_RESOURCES: &[&str] = &[
    "candidates",
    "candidateStatuses",
    "conversations",
    "flows",
    "flowRuns",
    "flowGenerations",
    "messages",
    "messageThreads",
    "messageTemplates",
    "nodes",
    "nodeActions",
    "nodeTransitions",
    "vacancies",
    "vacancyAnalyses",
    "users",
    "organizations",
];

/// Collections a `for_each.list` may page through (recrubo-api.md §6).
pub const RECRUBO_COLLECTIONS: &[&str] = &[
    "flow-runs",
    "flow-generations",
    "flows",
    "message-threads",
    "messages",
    "message-templates",
    "candidates",
    "conversations",
    "vacancies",
    "vacancy-analyses",
    "nodes",
    "users",
];

const TRIGGER_KEYS: &[&str] = &[
    "schedule",
    "every",
    "event",
    "recrubo",
    "flow_run",
    "flow_generation",
    "manual",
];

const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Validates loaded files into a rule set; on any problem, returns every diagnostic.
pub fn validate(loaded: &LoadedFiles) -> Result<RuleSet, Vec<Diagnostic>> {
    // Files validate independently, so they are spread over the cores; the whole-set checks run
    // once every file is done.
    let per_chunk = super::load::on_parser_threads(&loaded.files, |chunk| {
        let mut validator = Validator::default();
        let mut rules = Vec::new();
        let mut metas = Vec::new();
        for file in chunk {
            if let Some(model) = &file.model {
                let raw = super::load::raw_rules(&file.source);
                validator.file(&file.source.path, model, &raw, &mut rules, &mut metas);
            }
        }
        (validator, rules, metas)
    });
    let mut validator = Validator::default();
    validator
        .diagnostics
        .extend(loaded.diagnostics.iter().cloned());
    let mut rules = Vec::new();
    let mut metas = Vec::new();
    for (chunk_validator, chunk_rules, chunk_metas) in per_chunk {
        validator.diagnostics.extend(chunk_validator.diagnostics);
        validator.secrets.extend(chunk_validator.secrets);
        rules.extend(chunk_rules);
        metas.extend(chunk_metas);
    }
    validator.cross_rule_checks(&metas);
    if validator.diagnostics.is_empty() {
        let files = loaded.files.iter().map(|f| f.source.path.clone()).collect();
        Ok(RuleSet::new(
            rules,
            loaded.content_hash.clone(),
            files,
            validator.secrets,
        ))
    } else {
        let mut diagnostics = validator.diagnostics;
        diagnostics.sort_by(|a, b| {
            (&a.file, a.line, a.column, a.code).cmp(&(&b.file, b.line, b.column, b.code))
        });
        diagnostics.dedup();
        Err(diagnostics)
    }
}

/// Rebuilds the rule of a stored version from its definition ([`Rule::definition`]): validated
/// like a file holding only that rule (checks between rules do not apply: the version already
/// passed them when it was loaded). The result has the same version, or this is an error.
pub fn rebuild(definition: &str) -> Result<Rule, String> {
    let parsed: Value = serde_json::from_str(definition)
        .map_err(|err| format!("the stored rule version is not JSON: {err}"))?;
    // JSON is YAML: the rule file parser reads it, with the same budgets as any rule file.
    let text = super::ruleset::yaml_safe(
        &serde_json::json!({ "vars": parsed["vars"], "rules": [parsed["rule"]] }).to_string(),
    );
    let source = super::load::SourceFile {
        path: PathBuf::from("(stored rule version)"),
        text: Arc::from(text),
    };
    let model = super::load::parse_source(&source).map_err(|d| d.one_line())?;
    let mut validator = Validator::default();
    let (mut rules, mut metas) = (Vec::new(), Vec::new());
    let raw = super::load::raw_rules(&source);
    validator.file(&source.path, &model, &raw, &mut rules, &mut metas);
    if let Some(problem) = validator.diagnostics.first() {
        return Err(format!(
            "the stored rule version no longer validates: {}",
            problem.one_line()
        ));
    }
    let rule = rules
        .pop()
        .ok_or_else(|| "the stored rule version holds no rule".to_owned())?;
    Ok(rule)
}

/// The parameters Recrubo requires of a `vacancy_application_flow` (recrubo-api.md 6.3).
const REQUIRED_GENERATION_PARAMETERS: [&str; 2] = ["knockoutRequirements", "preferredRequirements"];

/// What the cross-rule checks need to know of each rule.
struct RuleMeta {
    name: String,
    file: PathBuf,
    at: Pos,
    event_type: Option<String>,
    started_by: Option<(StartedBy, Pos, &'static str)>,
    emits: Vec<(String, Pos)>,
    step_kinds: HashMap<String, &'static str>,
    starts_runs: bool,
    starts_generations: bool,
}

#[derive(Default)]
struct Validator {
    diagnostics: Vec<Diagnostic>,
    secrets: BTreeSet<String>,
}

/// Where we are: the file, the rule, and the file's vars.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    file: &'a Path,
    rule: Option<&'a str>,
    vars: &'a Map<String, Value>,
}

/// What a template or condition at this place may read.
#[derive(Clone, Default)]
struct Scope {
    has_run: bool,
    has_generation: bool,
    has_item: bool,
    /// Step ids of earlier steps of this execution (and of the parent, in handlers).
    visible_steps: Vec<String>,
    /// `analyze_vacancy` steps among them.
    visible_analyses: Vec<String>,
    /// Every step id of the rule (to tell "runs later" from "does not exist").
    all_steps: Arc<HashSet<String>>,
}

fn is_valid_rule_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 100
}

fn is_valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 100
}

fn suggest_rule_name(name: &str) -> String {
    let mut out: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while out.starts_with(['-', '_']) {
        out.remove(0);
    }
    while out.ends_with(['-', '_']) {
        out.pop();
    }
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out
}

impl Validator {
    /// A trigger field that is a template of `vars` only, resolved now (a trigger is matched
    /// before any event data exists: `flow: "{{vars.screening}}"` was compared literally and
    /// never matched).
    fn load_time_text(&mut self, ctx: Ctx, text: &Located<String>, field: &str) -> Option<String> {
        if !text.value.contains("{{") {
            return Some(text.value.clone());
        }
        let rendered = Template::compile(&text.value)
            .map_err(|err| err.message)
            .and_then(|template| {
                template
                    .render(&serde_json::json!({ "vars": ctx.vars }))
                    .map_err(|err| err.to_string())
            });
        match rendered {
            Ok(Value::String(resolved)) if !resolved.is_empty() => Some(resolved),
            Ok(other) => {
                self.error(
                    ctx,
                    text.at,
                    field,
                    "template",
                    format!("`{}` resolves to {other}, not a flow id", text.value),
                );
                None
            }
            Err(reason) => {
                self.error(
                    ctx,
                    text.at,
                    field,
                    "template",
                    format!(
                        "`{}` is resolved when the rules load, so it may use `vars` only: {reason}",
                        text.value
                    ),
                )
                .hint = Some("a trigger is matched before there is event data; filter on run data with `if:`".to_owned());
                None
            }
        }
    }

    fn error(
        &mut self,
        ctx: Ctx,
        at: Pos,
        field: &str,
        code: &'static str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        self.diagnostics.push(
            Diagnostic::new(ctx.file, at, code, message)
                .in_rule(ctx.rule)
                .at_field(field),
        );
        self.diagnostics
            .last_mut()
            .expect("a diagnostic was just pushed")
    }

    fn file(
        &mut self,
        path: &Path,
        model: &RuleFileModel,
        raw: &[Value],
        rules: &mut Vec<Rule>,
        metas: &mut Vec<RuleMeta>,
    ) {
        let mut vars = Map::new();
        let empty = Map::new();
        if let Some(var_models) = &model.vars {
            let ctx = Ctx {
                file: path,
                rule: None,
                vars: &empty,
            };
            for (key, value) in var_models.iter() {
                if !is_valid_identifier(&key.value) {
                    self.error(ctx, key.at, "vars", "name", format!("invalid var name `{}`", key.value))
                        .hint = Some("var names are letters, digits and `_`, starting with a letter, so that `vars.NAME` works in templates and conditions".to_owned());
                }
                vars.insert(key.value.clone(), value.to_json());
            }
        }
        if model.rules.is_empty() {
            let ctx = Ctx {
                file: path,
                rule: None,
                vars: &vars,
            };
            self.error(
                ctx,
                Pos::new(1, 1),
                "rules",
                "empty",
                "the file has no rules",
            )
            .hint = Some("add `rules:` with at least one rule".to_owned());
        }
        let vars = Arc::new(vars);
        for (index, rule_model) in model.rules.iter().enumerate() {
            // The meta is kept for invalid rules too: their names and links still take part in
            // the whole-set checks (a duplicate name is a duplicate even if both rules are broken).
            let (mut rule, meta) = self.rule(path, &vars, rule_model);
            if let Some(rule) = &mut rule {
                let fallback = serde_json::json!({ "name": rule.name });
                let (version, definition) =
                    super::ruleset::rule_version(raw.get(index).unwrap_or(&fallback), &vars);
                rule.version = version;
                rule.definition = definition;
            }
            rules.extend(rule);
            metas.push(meta);
        }
    }

    fn rule(
        &mut self,
        path: &Path,
        vars: &Arc<Map<String, Value>>,
        located: &Located<RuleModel>,
    ) -> (Option<Rule>, RuleMeta) {
        let model = &located.value;
        let name = model.name.value.clone();
        let ctx = Ctx {
            file: path,
            rule: Some(&name),
            vars,
        };
        let errors_before = self.diagnostics.len();
        if !is_valid_rule_name(&name) {
            let suggestion = suggest_rule_name(&name);
            let diagnostic = self.error(
                ctx,
                model.name.at,
                "name",
                "name",
                format!("invalid rule name `{name}`"),
            );
            diagnostic.hint = Some(if is_valid_rule_name(&suggestion) {
                format!(
                    "rule names are lowercase letters, digits, `-` and `_`, starting with a letter or digit, e.g. `{suggestion}`"
                )
            } else {
                "rule names are lowercase letters, digits, `-` and `_`, starting with a letter or digit".to_owned()
            });
        }

        let mut meta = RuleMeta {
            name: name.clone(),
            file: path.to_path_buf(),
            at: model.name.at,
            event_type: None,
            started_by: None,
            emits: Vec::new(),
            step_kinds: HashMap::new(),
            starts_runs: false,
            starts_generations: false,
        };
        let trigger = self.trigger(ctx, &model.on, &mut meta);
        let mut scope = Scope {
            has_run: matches!(trigger, Some(Trigger::FlowRun(_))),
            has_generation: matches!(trigger, Some(Trigger::FlowGeneration(_))),
            has_item: model.on.value.for_each.is_some(),
            ..Scope::default()
        };
        let for_each = model
            .on
            .value
            .for_each
            .as_ref()
            .and_then(|for_each| self.for_each(ctx, &scope, for_each));
        let condition = model
            .condition
            .as_ref()
            .and_then(|condition| self.condition(ctx, &scope, "if", condition));
        let concurrency = model.concurrency.as_ref().and_then(|concurrency| {
            if concurrency.value == 0 {
                self.error(
                    ctx,
                    concurrency.at,
                    "concurrency",
                    "range",
                    "`concurrency` must be at least 1",
                )
                .hint = Some("leave it out for no limit".to_owned());
                None
            } else {
                Some(concurrency.value)
            }
        });

        let mut all_steps = HashSet::new();
        self.collect_step_ids(
            ctx,
            &model.steps.value,
            "do",
            &mut all_steps,
            &mut HashMap::new(),
        );
        scope.all_steps = Arc::new(all_steps);
        if model.steps.value.is_empty() {
            self.error(ctx, model.steps.at, "do", "empty", "the rule has no steps")
                .hint = Some("add at least one step under `do:`".to_owned());
        }
        let steps = self.steps(ctx, &model.steps.value, "do", &mut scope, &mut meta);
        let tests = self.tests(ctx, &model.tests, &trigger);

        if self.diagnostics.len() > errors_before {
            return (None, meta);
        }
        let Some(trigger) = trigger else {
            return (None, meta);
        };
        let rule = Rule {
            name,
            description: model.description.clone(),
            file: path.to_path_buf(),
            at: located.at,
            trigger,
            for_each,
            condition,
            concurrency,
            steps,
            vars: vars.clone(),
            tests,
            // Set by `file`, which has the rule as written.
            version: String::new(),
            definition: Arc::from(""),
        };
        (Some(rule), meta)
    }

    // ---- triggers ----------------------------------------------------------------------------

    fn trigger(&mut self, ctx: Ctx, on: &Located<OnModel>, meta: &mut RuleMeta) -> Option<Trigger> {
        let model = &on.value;
        let present: Vec<&str> = [
            model.schedule.is_some(),
            model.every.is_some(),
            model.event.is_some(),
            model.recrubo.is_some(),
            model.flow_run.is_some(),
            model.flow_generation.is_some(),
            model.manual.is_some(),
        ]
        .iter()
        .zip(TRIGGER_KEYS)
        .filter(|(set, _)| **set)
        .map(|(_, key)| *key)
        .collect();
        match present.len() {
            0 => {
                self.error(ctx, on.at, "on", "trigger", "`on` names no trigger")
                    .hint = Some(format!(
                    "a rule has exactly one trigger: {}",
                    TRIGGER_KEYS.join(", ")
                ));
                return None;
            }
            1 => {}
            _ => {
                self.error(
                    ctx,
                    on.at,
                    "on",
                    "trigger",
                    format!(
                        "`on` names {} triggers ({})",
                        present.len(),
                        present.join(", ")
                    ),
                )
                .hint =
                    Some("a rule has exactly one trigger; write one rule per trigger".to_owned());
                return None;
            }
        }
        if let Some(schedule) = &model.schedule {
            return self.schedule(ctx, schedule);
        }
        if let Some(every) = &model.every {
            return self.every(ctx, every);
        }
        if let Some(event) = &model.event {
            let event_type = event.value.trim();
            if event_type.is_empty()
                || event_type.contains(char::is_whitespace)
                || event_type.contains('/')
            {
                self.error(ctx, event.at, "on.event", "event", format!("invalid event type `{}`", event.value))
                    .hint = Some("event types are dotted names without spaces or `/`, e.g. `application.created`".to_owned());
                return None;
            }
            meta.event_type = Some(event_type.to_owned());
            return Some(Trigger::Event {
                event_type: event_type.to_owned(),
            });
        }
        if let Some(recrubo) = &model.recrubo {
            let value = &recrubo.value;
            if !RECRUBO_RESOURCES.contains(&value.resource.value.as_str()) {
                let hint = did_you_mean(&value.resource.value, RECRUBO_RESOURCES.iter().copied())
                    .unwrap_or_else(|| format!("resources are {}", RECRUBO_RESOURCES.join(", ")));
                self.error(
                    ctx,
                    value.resource.at,
                    "on.recrubo.resource",
                    "unknown-value",
                    format!("unknown Recrubo resource `{}`", value.resource.value),
                )
                .hint = Some(hint);
            }
            let mut events = Vec::new();
            if let Some(event_list) = &value.event {
                for event in &event_list.value.0 {
                    if ["create", "update", "delete"].contains(&event.as_str()) {
                        events.push(event.clone());
                    } else {
                        let hint = did_you_mean(event, ["create", "update", "delete"])
                            .unwrap_or_else(|| {
                                "Recrubo webhook events are `create`, `update` and `delete`"
                                    .to_owned()
                            });
                        self.error(
                            ctx,
                            event_list.at,
                            "on.recrubo.event",
                            "unknown-value",
                            format!("unknown webhook event `{event}`"),
                        )
                        .hint = Some(hint);
                    }
                }
            }
            let fields = value
                .fields
                .as_ref()
                .map(|fields| fields.value.iter().map(|f| f.value.clone()).collect())
                .unwrap_or_default();
            return Some(Trigger::Recrubo(RecruboTrigger {
                resource: value.resource.value.clone(),
                events,
                fields,
            }));
        }
        if let Some(flow_run) = &model.flow_run {
            let value = &flow_run.value;
            let statuses = self.statuses(
                ctx,
                &value.status,
                "on.flow_run.status",
                FlowRunStatus::KNOWN,
                "a FlowRun",
            );
            let started_by = value.started_by.as_ref().and_then(|started_by| {
                self.started_by(ctx, started_by, "on.flow_run.started_by")
                    .inspect(|parsed| {
                        meta.started_by = Some((parsed.clone(), started_by.at, "start_flow_run"));
                    })
            });
            let flow = value
                .flow
                .as_ref()
                .and_then(|flow| self.load_time_text(ctx, flow, "on.flow_run.flow"));
            return Some(Trigger::FlowRun(FlowRunTrigger {
                statuses: statuses.iter().map(|s| FlowRunStatus::parse(s)).collect(),
                flow,
                started_by,
            }));
        }
        if let Some(flow_generation) = &model.flow_generation {
            let value = &flow_generation.value;
            let statuses = self.statuses(
                ctx,
                &value.status,
                "on.flow_generation.status",
                FlowGenerationStatus::KNOWN,
                "a FlowGeneration",
            );
            let started_by = value.started_by.as_ref().and_then(|started_by| {
                self.started_by(ctx, started_by, "on.flow_generation.started_by")
                    .inspect(|parsed| {
                        meta.started_by = Some((parsed.clone(), started_by.at, "generate_flow"));
                    })
            });
            return Some(Trigger::FlowGeneration(FlowGenerationTrigger {
                statuses: statuses
                    .iter()
                    .map(|s| FlowGenerationStatus::parse(s))
                    .collect(),
                started_by,
            }));
        }
        if let Some(manual) = &model.manual {
            let mut inputs = Vec::new();
            if let Some(manual_model) = &manual.value {
                for (name, input) in manual_model.inputs.iter() {
                    let field = format!("on.manual.inputs.{}", name.value);
                    if !is_valid_identifier(&name.value) {
                        self.error(
                            ctx,
                            name.at,
                            &field,
                            "name",
                            format!("invalid input name `{}`", name.value),
                        )
                        .hint = Some("input names are letters, digits and `_`".to_owned());
                    }
                    let input_type = input
                        .value
                        .input_type
                        .as_ref()
                        .map(|t| t.value.clone())
                        .unwrap_or_else(|| "string".to_owned());
                    const TYPES: &[&str] = &["string", "number", "boolean", "object"];
                    if !TYPES.contains(&input_type.as_str()) {
                        let at = input.value.input_type.as_ref().map_or(input.at, |t| t.at);
                        let hint = did_you_mean(&input_type, TYPES.iter().copied())
                            .unwrap_or_else(|| format!("input types are {}", TYPES.join(", ")));
                        self.error(
                            ctx,
                            at,
                            &format!("{field}.type"),
                            "unknown-value",
                            format!("unknown input type `{input_type}`"),
                        )
                        .hint = Some(hint);
                    }
                    inputs.push(ManualInput {
                        name: name.value.clone(),
                        input_type,
                        required: input.value.required,
                        default: input.value.default.as_ref().map(|d| d.to_json()),
                    });
                }
            }
            return Some(Trigger::Manual(ManualTrigger { inputs }));
        }
        None
    }

    fn catch_up_window(
        &mut self,
        ctx: Ctx,
        field: &str,
        window: Option<&Located<String>>,
    ) -> Duration {
        match window {
            None => DEFAULT_CATCH_UP_WINDOW,
            Some(window) => match parse_duration(&window.value) {
                Ok(duration) if !duration.is_zero() => duration,
                Ok(_) => {
                    self.error(
                        ctx,
                        window.at,
                        field,
                        "duration",
                        "`catch_up_window` must be longer than 0",
                    )
                    .hint = Some("use `catch_up: skip` to fire no missed ticks".to_owned());
                    DEFAULT_CATCH_UP_WINDOW
                }
                Err(message) => {
                    self.error(ctx, window.at, field, "duration", message);
                    DEFAULT_CATCH_UP_WINDOW
                }
            },
        }
    }

    fn schedule(
        &mut self,
        ctx: Ctx,
        schedule: &Located<ShortOrFull<super::model::ScheduleModel>>,
    ) -> Option<Trigger> {
        let (cron_text, cron_at, timezone, catch_up, window) = match &schedule.value {
            ShortOrFull::Short(cron) => (cron.clone(), schedule.at, None, None, None),
            ShortOrFull::Full(full) => (
                full.cron.value.clone(),
                full.cron.at,
                full.timezone.as_ref(),
                full.catch_up,
                full.catch_up_window.as_ref(),
            ),
        };
        let field = match &schedule.value {
            ShortOrFull::Short(_) => "on.schedule",
            ShortOrFull::Full(_) => "on.schedule.cron",
        };
        let cron = self.cron(ctx, field, &cron_text, cron_at);
        let timezone = match timezone {
            None => Some(chrono_tz::UTC),
            Some(zone) => self.timezone(ctx, zone),
        };
        let catch_up_window = self.catch_up_window(ctx, "on.schedule.catch_up_window", window);
        let (cron, timezone) = (cron?, timezone?);
        if cron
            .find_next_occurrence(&Utc::now().with_timezone(&timezone), false)
            .is_err()
        {
            self.error(
                ctx,
                cron_at,
                field,
                "cron",
                format!("the cron expression `{cron_text}` never fires"),
            )
            .hint = Some(
                "check the day of month and month: e.g. `0 0 30 2 *` asks for February 30th"
                    .to_owned(),
            );
            return None;
        }
        Some(Trigger::Schedule(Box::new(ScheduleTrigger {
            cron_source: cron_text,
            cron,
            timezone,
            catch_up: catch_up.unwrap_or(CatchUp::Latest),
            catch_up_window,
        })))
    }

    fn cron(&mut self, ctx: Ctx, field: &str, text: &str, at: Pos) -> Option<croner::Cron> {
        let parser = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build();
        match parser.parse(text) {
            Ok(cron) => Some(cron),
            Err(err) => {
                let fields = text.split_whitespace().count();
                let hint = if text.trim().starts_with('@') {
                    "the named schedules are @yearly, @annually, @monthly, @weekly, @daily, @midnight and @hourly".to_owned()
                } else if !(5..=6).contains(&fields) {
                    format!(
                        "a cron expression has 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; this one has {fields}"
                    )
                } else {
                    "fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7 (0 and 7 are Sunday); seconds 0-59 first when there are 6".to_owned()
                };
                self.error(
                    ctx,
                    at,
                    field,
                    "cron",
                    format!("invalid cron expression `{text}`: {err}"),
                )
                .hint = Some(hint);
                None
            }
        }
    }

    fn timezone(&mut self, ctx: Ctx, zone: &Located<String>) -> Option<chrono_tz::Tz> {
        match zone.value.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
                let exact_case = chrono_tz::TZ_VARIANTS
                    .iter()
                    .find(|tz| tz.name().eq_ignore_ascii_case(&zone.value))
                    .map(|tz| format!("did you mean `{}`?", tz.name()));
                let hint = exact_case
                    .or_else(|| did_you_mean(&zone.value, names))
                    .unwrap_or_else(|| "use an IANA time zone name such as `Europe/Amsterdam` or `America/New_York`".to_owned());
                self.error(
                    ctx,
                    zone.at,
                    "on.schedule.timezone",
                    "timezone",
                    format!("unknown time zone `{}`", zone.value),
                )
                .hint = Some(hint);
                None
            }
        }
    }

    fn every(
        &mut self,
        ctx: Ctx,
        every: &Located<ShortOrFull<super::model::EveryModel>>,
    ) -> Option<Trigger> {
        let (interval_text, at, catch_up, window, field) = match &every.value {
            ShortOrFull::Short(text) => (text.clone(), every.at, None, None, "on.every"),
            ShortOrFull::Full(full) => (
                full.interval.value.clone(),
                full.interval.at,
                full.catch_up,
                full.catch_up_window.as_ref(),
                "on.every.interval",
            ),
        };
        let catch_up_window = self.catch_up_window(ctx, "on.every.catch_up_window", window);
        let interval = match parse_duration(&interval_text) {
            Ok(interval) if interval >= Duration::from_secs(1) => interval,
            Ok(_) => {
                self.error(
                    ctx,
                    at,
                    field,
                    "duration",
                    format!("the interval `{interval_text}` is shorter than 1s"),
                )
                .hint = Some("intervals are at least `1s`".to_owned());
                return None;
            }
            Err(message) => {
                self.error(ctx, at, field, "duration", message);
                return None;
            }
        };
        Some(Trigger::Every(EveryTrigger {
            interval,
            catch_up: catch_up.unwrap_or(CatchUp::Latest),
            catch_up_window,
        }))
    }

    fn statuses(
        &mut self,
        ctx: Ctx,
        statuses: &Located<super::located::OneOrMany<String>>,
        field: &str,
        known: &[&str],
        resource: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        if statuses.value.0.is_empty() {
            self.error(ctx, statuses.at, field, "empty", "no status given")
                .hint = Some(format!(
                "the statuses of {resource} are {}",
                known.join(", ")
            ));
        }
        for status in &statuses.value.0 {
            if known.contains(&status.as_str()) {
                out.push(status.clone());
            } else {
                let hint = did_you_mean(status, known.iter().copied()).unwrap_or_else(|| {
                    format!("the statuses of {resource} are {}", known.join(", "))
                });
                self.error(
                    ctx,
                    statuses.at,
                    field,
                    "status",
                    format!("`{status}` is not a status of {resource}"),
                )
                .hint = Some(hint);
            }
        }
        out
    }

    fn started_by(
        &mut self,
        ctx: Ctx,
        started_by: &Located<String>,
        field: &str,
    ) -> Option<StartedBy> {
        let text = started_by.value.trim();
        let (rule, step) = match text.split_once('/') {
            Some((rule, step)) => (rule, Some(step)),
            None => (text, None),
        };
        if rule.is_empty() || step.is_some_and(str::is_empty) {
            self.error(ctx, started_by.at, field, "started-by", format!("invalid `started_by` value `{text}`"))
                .hint = Some("write a rule name (`screen-new-applications`) or a rule and a step id (`screen-new-applications/screening`)".to_owned());
            return None;
        }
        Some(StartedBy {
            rule: rule.to_owned(),
            step: step.map(str::to_owned),
        })
    }

    fn for_each(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        for_each: &Located<ForEachModel>,
    ) -> Option<ForEach> {
        let model = &for_each.value;
        // `item` is not available inside the for_each that produces it.
        let outer = Scope {
            has_item: false,
            ..scope.clone()
        };
        match (&model.list, &model.items) {
            (Some(list), None) => {
                if !RECRUBO_COLLECTIONS.contains(&list.value.as_str()) {
                    let hint = did_you_mean(&list.value, RECRUBO_COLLECTIONS.iter().copied())
                        .unwrap_or_else(|| {
                            format!("collections are {}", RECRUBO_COLLECTIONS.join(", "))
                        });
                    self.error(
                        ctx,
                        list.at,
                        "on.for_each.list",
                        "unknown-value",
                        format!("unknown Recrubo collection `{}`", list.value),
                    )
                    .hint = Some(hint);
                }
                let mut filter = Vec::new();
                if let Some(filters) = &model.filter {
                    for (key, value) in filters.iter() {
                        let field = format!("on.for_each.filter.{}", key.value);
                        if let Some(compiled) = self.value(ctx, &outer, &field, value) {
                            filter.push((key.value.clone(), compiled));
                        }
                    }
                }
                let page_size = match &model.page_size {
                    Some(size) if size.value == 0 || size.value > 1000 => {
                        self.error(
                            ctx,
                            size.at,
                            "on.for_each.page_size",
                            "range",
                            "`page_size` must be between 1 and 1000",
                        );
                        100
                    }
                    Some(size) => size.value,
                    None => 100,
                };
                Some(ForEach::List {
                    resource: list.value.clone(),
                    filter,
                    sort: model.sort.as_ref().map(|s| s.value.clone()),
                    page_size,
                })
            }
            (None, Some(items)) => {
                for (present, key) in [
                    (model.filter.is_some(), "filter"),
                    (model.sort.is_some(), "sort"),
                    (model.page_size.is_some(), "page_size"),
                ] {
                    if present {
                        self.error(
                            ctx,
                            for_each.at,
                            &format!("on.for_each.{key}"),
                            "for-each",
                            format!("`{key}` only applies to `list` queries"),
                        );
                    }
                }
                match &items.value {
                    ValueModel::Array(_) => {}
                    ValueModel::String(text) if text.trim_start().starts_with("{{") => {}
                    other => {
                        self.error(ctx, items.at, "on.for_each.items", "type", format!("`items` is {}, not a list", other.kind_name()))
                            .hint = Some("give a list (`items: [a, b]`) or a template that yields one (`items: \"{{vars.threads}}\"`)".to_owned());
                        return None;
                    }
                }
                self.value(ctx, &outer, "on.for_each.items", items)
                    .map(ForEach::Items)
            }
            (Some(_), Some(_)) => {
                self.error(
                    ctx,
                    for_each.at,
                    "on.for_each",
                    "for-each",
                    "`for_each` has both `list` and `items`",
                )
                .hint = Some(
                    "use `list` for a Recrubo query or `items` for a list, not both".to_owned(),
                );
                None
            }
            (None, None) => {
                self.error(ctx, for_each.at, "on.for_each", "for-each", "`for_each` needs `list` or `items`")
                    .hint = Some("e.g. `for_each: { list: flow-runs, filter: { status: timeout } }` or `for_each: { items: [a, b] }`".to_owned());
                None
            }
        }
    }

    // ---- templates and conditions --------------------------------------------------------------

    fn check_references(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        at: Pos,
        references: &[Reference],
    ) {
        for reference in references {
            let root = reference.root();
            match root {
                "event" | "rule" | "now" => {}
                "secrets" => match reference.second() {
                    Some(name) => {
                        self.secrets.insert(name.to_owned());
                    }
                    None => {
                        self.error(
                            ctx,
                            at,
                            field,
                            "reference",
                            "`secrets` must be followed by a secret name",
                        )
                        .hint = Some(
                            "write `secrets.NAME`; the whole secrets map is never exposed"
                                .to_owned(),
                        );
                    }
                },
                "vars" => {
                    if let Some(name) = reference.second()
                        && !ctx.vars.contains_key(name)
                    {
                        let hint = did_you_mean(name, ctx.vars.keys().map(String::as_str))
                            .unwrap_or_else(|| {
                                if ctx.vars.is_empty() {
                                    "this file has no `vars:`".to_owned()
                                } else {
                                    format!(
                                        "this file's vars are {}",
                                        backticked(ctx.vars.keys().map(String::as_str))
                                    )
                                }
                            });
                        self.error(
                            ctx,
                            at,
                            field,
                            "reference",
                            format!("unknown var `vars.{name}`"),
                        )
                        .hint = Some(hint);
                    }
                }
                "steps" => match reference.second() {
                    None => {
                        self.error(
                            ctx,
                            at,
                            field,
                            "reference",
                            "`steps` must be followed by a step id",
                        )
                        .hint = Some("write `steps.<id>.<field>`".to_owned());
                    }
                    Some(id) if scope.visible_steps.iter().any(|s| s == id) => {}
                    Some(id) if scope.all_steps.contains(id) => {
                        self.error(ctx, at, field, "reference", format!("step `{id}` has not run yet at this point"))
                            .hint = Some("`steps.<id>` reads the output of an earlier step of the same execution".to_owned());
                    }
                    Some(id) => {
                        let hint = did_you_mean(id, scope.visible_steps.iter().map(String::as_str))
                            .unwrap_or_else(|| {
                                if scope.visible_steps.is_empty() {
                                    "no earlier step has an `id` here".to_owned()
                                } else {
                                    format!(
                                        "earlier steps here: {}",
                                        backticked(scope.visible_steps.iter().map(String::as_str))
                                    )
                                }
                            });
                        self.error(
                            ctx,
                            at,
                            field,
                            "reference",
                            format!("unknown step `steps.{id}`"),
                        )
                        .hint = Some(hint);
                    }
                },
                "run" if !scope.has_run => {
                    self.error(ctx, at, field, "reference", "`run` is not available here")
                        .hint = Some("`run` exists in `on_status` handlers of a `start_flow_run` step and in rules triggered by `flow_run`".to_owned());
                }
                "generation" if !scope.has_generation => {
                    self.error(ctx, at, field, "reference", "`generation` is not available here")
                        .hint = Some("`generation` exists in `on_status` handlers of a `generate_flow` step and in rules triggered by `flow_generation`".to_owned());
                }
                "item" if !scope.has_item => {
                    self.error(ctx, at, field, "reference", "`item` is not available here")
                        .hint = Some(
                        "`item` exists only in rules whose trigger has a `for_each`".to_owned(),
                    );
                }
                "run" | "generation" | "item" => {}
                unknown => {
                    let hint =
                        did_you_mean(unknown, CONTEXT_ROOTS.iter().copied()).unwrap_or_else(|| {
                            format!("templates and conditions read {}", CONTEXT_ROOTS.join(", "))
                        });
                    self.error(
                        ctx,
                        at,
                        field,
                        "reference",
                        format!("unknown name `{unknown}`"),
                    )
                    .hint = Some(hint);
                }
            }
        }
    }

    fn template(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        located: &Located<String>,
    ) -> Option<Template> {
        self.template_text(ctx, scope, field, &located.value, located.at)
    }

    fn template_text(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        text: &str,
        at: Pos,
    ) -> Option<Template> {
        match Template::compile(text) {
            Ok(template) => {
                self.check_references(ctx, scope, field, at, &template.references());
                Some(template)
            }
            Err(err) => {
                self.error(ctx, at, field, "template", err.message).hint = err.hint;
                None
            }
        }
    }

    fn value(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        located: &Located<ValueModel>,
    ) -> Option<TemplateValue> {
        Some(match &located.value {
            ValueModel::Null => TemplateValue::Null,
            ValueModel::Bool(value) => TemplateValue::Bool(*value),
            ValueModel::Number(value) => TemplateValue::Number(value.clone()),
            ValueModel::String(text) => {
                TemplateValue::Template(self.template_text(ctx, scope, field, text, located.at)?)
            }
            ValueModel::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (index, item) in items.iter().enumerate() {
                    match self.value(ctx, scope, &format!("{field}[{index}]"), item) {
                        Some(value) => out.push(value),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                TemplateValue::Array(out)
            }
            ValueModel::Object(entries) => {
                let mut out = Vec::with_capacity(entries.entries.len());
                let mut ok = true;
                for (key, value) in entries.iter() {
                    match self.value(ctx, scope, &format!("{field}.{}", key.value), value) {
                        Some(compiled) => out.push((key.value.clone(), compiled)),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                TemplateValue::Object(out)
            }
        })
    }

    fn condition(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        located: &Located<String>,
    ) -> Option<Condition> {
        match Condition::compile(&located.value) {
            Ok(condition) => {
                self.check_references(ctx, scope, field, located.at, &condition.references());
                Some(condition)
            }
            Err(err) => {
                let message = match err.column {
                    Some(column) => {
                        format!("{} (at column {column} of the condition)", err.message)
                    }
                    None => err.message,
                };
                self.error(ctx, located.at, field, "condition", message)
                    .hint = Some(
                    "conditions are CEL, e.g. `event.data.vacancy.open && run.state.score >= 7`"
                        .to_owned(),
                );
                None
            }
        }
    }

    // ---- steps ---------------------------------------------------------------------------------

    fn collect_step_ids(
        &mut self,
        ctx: Ctx,
        steps: &[Located<StepModel>],
        prefix: &str,
        ids: &mut HashSet<String>,
        first_seen: &mut HashMap<String, Pos>,
    ) {
        for (index, step) in steps.iter().enumerate() {
            let field = format!("{prefix}[{index}]");
            if let Some(id) = &step.value.id {
                if !is_valid_identifier(&id.value) {
                    self.error(
                        ctx,
                        id.at,
                        &format!("{field}.id"),
                        "name",
                        format!("invalid step id `{}`", id.value),
                    )
                    .hint = Some(format!(
                        "step ids are letters, digits and `_`, starting with a letter, so that `steps.<id>` works in templates and conditions (e.g. `{}`)",
                        id.value.replace(['-', ' ', '.'], "_")
                    ));
                }
                if let Some(first) = first_seen.get(&id.value) {
                    self.error(
                        ctx,
                        id.at,
                        &format!("{field}.id"),
                        "duplicate",
                        format!("duplicate step id `{}`", id.value),
                    )
                    .hint = Some(format!(
                        "the first step with this id is at line {}; step ids are unique within a rule",
                        first.line
                    ));
                } else {
                    first_seen.insert(id.value.clone(), id.at);
                    ids.insert(id.value.clone());
                }
            }
            if let Some(handlers) = &step.value.on_status {
                for (status, handler) in handlers.value.iter() {
                    self.collect_step_ids(
                        ctx,
                        &handler.value,
                        &format!("{field}.on_status.{}", status.value),
                        ids,
                        first_seen,
                    );
                }
            }
        }
    }

    fn steps(
        &mut self,
        ctx: Ctx,
        steps: &[Located<StepModel>],
        prefix: &str,
        scope: &mut Scope,
        meta: &mut RuleMeta,
    ) -> Vec<Step> {
        let mut out = Vec::with_capacity(steps.len());
        for (index, step) in steps.iter().enumerate() {
            let field = format!("{prefix}[{index}]");
            if let Some(compiled) = self.step(ctx, step, &field, scope, meta) {
                out.push(compiled);
            }
            if let Some(id) = &step.value.id {
                scope.visible_steps.push(id.value.clone());
                if step.value.analyze_vacancy.is_some() {
                    scope.visible_analyses.push(id.value.clone());
                }
            }
        }
        out
    }

    fn step(
        &mut self,
        ctx: Ctx,
        located: &Located<StepModel>,
        field: &str,
        scope: &Scope,
        meta: &mut RuleMeta,
    ) -> Option<Step> {
        let model = &located.value;
        let present: Vec<&str> = [
            model.start_flow_run.is_some(),
            model.generate_flow.is_some(),
            model.analyze_vacancy.is_some(),
            model.update_flow_run.is_some(),
            model.recrubo.is_some(),
            model.notify.is_some(),
            model.email.is_some(),
            model.http.is_some(),
            model.emit.is_some(),
            model.log.is_some(),
        ]
        .iter()
        .zip(StepKind::NAMES)
        .filter(|(set, _)| **set)
        .map(|(_, name)| *name)
        .collect();
        let errors_before = self.diagnostics.len();
        match present.len() {
            0 => {
                self.error(
                    ctx,
                    located.at,
                    field,
                    "step",
                    "the step does nothing: it names no step kind",
                )
                .hint = Some(format!(
                    "a step has exactly one of {}",
                    StepKind::NAMES.join(", ")
                ));
                return None;
            }
            1 => {}
            _ => {
                self.error(
                    ctx,
                    located.at,
                    field,
                    "step",
                    format!(
                        "the step names {} step kinds ({})",
                        present.len(),
                        present.join(", ")
                    ),
                )
                .hint = Some("a step does one thing; split it into several steps".to_owned());
                return None;
            }
        }
        let condition = model
            .condition
            .as_ref()
            .and_then(|condition| self.condition(ctx, scope, &format!("{field}.if"), condition));
        let retry = model.retry.as_ref().map(|retry| {
            let retry_field = format!("{field}.retry");
            let mut policy = RetryPolicy::default();
            if retry.value.attempts.value == 0 || retry.value.attempts.value > 100 {
                self.error(
                    ctx,
                    retry.value.attempts.at,
                    &format!("{retry_field}.attempts"),
                    "range",
                    "`attempts` must be between 1 and 100",
                )
                .hint =
                    Some("attempts count the first try: `attempts: 1` means no retry".to_owned());
            }
            policy.attempts = retry.value.attempts.value;
            for (value, target, name) in [
                (&retry.value.backoff, &mut policy.backoff, "backoff"),
                (
                    &retry.value.max_backoff,
                    &mut policy.max_backoff,
                    "max_backoff",
                ),
            ] {
                if let Some(text) = value {
                    match parse_duration(&text.value) {
                        Ok(duration) if duration > MAX_RETRY_DELAY => {
                            self.error(
                                ctx,
                                text.at,
                                &format!("{retry_field}.{name}"),
                                "range",
                                format!("`{name}` must be at most 7d, not `{}`", text.value),
                            );
                        }
                        Ok(duration) => *target = duration,
                        Err(message) => {
                            self.error(
                                ctx,
                                text.at,
                                &format!("{retry_field}.{name}"),
                                "duration",
                                message,
                            );
                        }
                    }
                }
            }
            policy
        });

        let kind = self.step_kind(ctx, model, field, scope, meta);
        let step_kind_name = kind.as_ref().map(StepKind::name);
        if let (Some(id), Some(name)) = (&model.id, step_kind_name) {
            meta.step_kinds.insert(id.value.clone(), name);
        }

        let mut on_status = Vec::new();
        if let Some(handlers) = &model.on_status {
            let (known, resource, handler_scope) = match present[0] {
                "start_flow_run" => (
                    FlowRunStatus::KNOWN,
                    "a FlowRun",
                    Scope {
                        has_run: true,
                        ..scope.clone()
                    },
                ),
                "generate_flow" => (
                    FlowGenerationStatus::KNOWN,
                    "a FlowGeneration",
                    Scope {
                        has_generation: true,
                        ..scope.clone()
                    },
                ),
                other => {
                    self.error(ctx, handlers.at, &format!("{field}.on_status"), "on-status", format!("`on_status` does not apply to `{other}` steps"))
                        .hint = Some("only `start_flow_run` and `generate_flow` start something whose status changes later".to_owned());
                    (&[][..], "", scope.clone())
                }
            };
            if !known.is_empty() {
                let mut handler_scope = handler_scope;
                if let Some(id) = &model.id {
                    handler_scope.visible_steps.push(id.value.clone());
                }
                for (status, handler) in handlers.value.iter() {
                    let handler_field = format!("{field}.on_status.{}", status.value);
                    if !known.contains(&status.value.as_str()) {
                        let hint = did_you_mean(&status.value, known.iter().copied())
                            .unwrap_or_else(|| {
                                format!("the statuses of {resource} are {}", known.join(", "))
                            });
                        self.error(
                            ctx,
                            status.at,
                            &handler_field,
                            "status",
                            format!("`{}` is not a status of {resource}", status.value),
                        )
                        .hint = Some(hint);
                        continue;
                    }
                    if handler.value.is_empty() {
                        self.error(
                            ctx,
                            handler.at,
                            &handler_field,
                            "empty",
                            "the handler has no steps",
                        );
                    }
                    let mut inner_scope = handler_scope.clone();
                    let steps =
                        self.steps(ctx, &handler.value, &handler_field, &mut inner_scope, meta);
                    on_status.push((status.value.clone(), steps));
                }
            }
        }

        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(Step {
            id: model.id.as_ref().map(|id| id.value.clone()),
            at: located.at,
            condition,
            retry,
            continue_on_error: model.continue_on_error.unwrap_or(false),
            kind: kind?,
            on_status,
        })
    }

    fn headers(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        headers: Option<&LocatedMap<Located<String>>>,
    ) -> Vec<(String, Template)> {
        let mut out = Vec::new();
        for (name, value) in headers.into_iter().flat_map(|h| h.iter()) {
            let header_field = format!("{field}.headers.{}", name.value);
            if name.value.is_empty()
                || !name
                    .value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                self.error(
                    ctx,
                    name.at,
                    &header_field,
                    "header",
                    format!("invalid header name `{}`", name.value),
                );
                continue;
            }
            if let Some(template) = self.template(ctx, scope, &header_field, value) {
                out.push((name.value.clone(), template));
            }
        }
        out
    }

    fn method(&mut self, ctx: Ctx, field: &str, method: &Located<String>) -> Option<HttpMethod> {
        let parsed = HttpMethod::parse(&method.value);
        if parsed.is_none() {
            let upper = method.value.to_ascii_uppercase();
            let hint = did_you_mean(&upper, HttpMethod::NAMES.iter().copied())
                .unwrap_or_else(|| format!("methods are {}", HttpMethod::NAMES.join(", ")));
            self.error(
                ctx,
                method.at,
                field,
                "unknown-value",
                format!("unknown HTTP method `{}`", method.value),
            )
            .hint = Some(hint);
        }
        parsed
    }

    fn step_kind(
        &mut self,
        ctx: Ctx,
        model: &StepModel,
        field: &str,
        scope: &Scope,
        meta: &mut RuleMeta,
    ) -> Option<StepKind> {
        if let Some(step) = &model.start_flow_run {
            let f = format!("{field}.start_flow_run");
            let v = &step.value;
            meta.starts_runs = true;
            let flow = self.template(ctx, scope, &format!("{f}.flow"), &v.flow);
            let message_thread = self.template(
                ctx,
                scope,
                &format!("{f}.message_thread"),
                &v.message_thread,
            );
            let state = v
                .state
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.state"), s));
            let initial_message = v
                .initial_message
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.initial_message"), s));
            return Some(StepKind::StartFlowRun {
                flow: flow?,
                message_thread: message_thread?,
                state: state.map(|s| s.ok_or(())).transpose().ok()?,
                initial_message: initial_message.map(|s| s.ok_or(())).transpose().ok()?,
            });
        }
        if let Some(step) = &model.generate_flow {
            let f = format!("{field}.generate_flow");
            let v = &step.value;
            meta.starts_generations = true;
            let flow_type = match &v.flow_type {
                Some(flow_type) => self.template(ctx, scope, &format!("{f}.flow_type"), flow_type),
                None => Template::compile("vacancy_application_flow").ok(),
            };
            let parameters = v
                .parameters
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.parameters"), s));
            let context = v
                .context
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.context"), s));
            let vacancy_id = v
                .vacancy_id
                .as_ref()
                .map(|s| self.template(ctx, scope, &format!("{f}.vacancy_id"), s));
            let from_analysis = v.from_analysis.as_ref().and_then(|analysis| {
                if scope.visible_analyses.contains(&analysis.value) {
                    Some(analysis.value.clone())
                } else {
                    let hint = did_you_mean(
                        &analysis.value,
                        scope.visible_analyses.iter().map(String::as_str),
                    )
                    .unwrap_or_else(|| {
                        "name the `id` of an `analyze_vacancy` step that runs before this one"
                            .to_owned()
                    });
                    self.error(
                        ctx,
                        analysis.at,
                        &format!("{f}.from_analysis"),
                        "reference",
                        format!(
                            "`{}` is not an earlier `analyze_vacancy` step",
                            analysis.value
                        ),
                    )
                    .hint = Some(hint);
                    None
                }
            });
            if v.from_analysis.is_some() && from_analysis.is_none() {
                return None;
            }
            // recrubo-api.md 6.3: a vacancy_application_flow needs both requirement lists (`[]`
            // for none). Without `from_analysis` to supply them, a literal `parameters` mapping
            // must name them, or Recrubo answers 422 at run time. A templated `parameters` is
            // only known then.
            let is_vacancy_flow = v
                .flow_type
                .as_ref()
                .is_none_or(|t| t.value == "vacancy_application_flow");
            if is_vacancy_flow && v.from_analysis.is_none() {
                let (present, at): (Vec<&str>, Pos) = match &v.parameters {
                    Some(parameters) => match &parameters.value {
                        ValueModel::Object(map) => (
                            map.iter().map(|(k, _)| k.value.as_str()).collect(),
                            parameters.at,
                        ),
                        _ => (REQUIRED_GENERATION_PARAMETERS.to_vec(), parameters.at),
                    },
                    None => (Vec::new(), step.at),
                };
                let missing: Vec<&str> = REQUIRED_GENERATION_PARAMETERS
                    .iter()
                    .copied()
                    .filter(|name| !present.contains(name))
                    .collect();
                if !missing.is_empty() {
                    self.error(
                        ctx,
                        at,
                        &format!("{f}.parameters"),
                        "required",
                        format!(
                            "a vacancy_application_flow needs {} in `parameters` (or `from_analysis`)",
                            backticked(missing.iter().copied())
                        ),
                    )
                    .hint = Some("write `knockoutRequirements: []` and `preferredRequirements: []` for none, or take them from an `analyze_vacancy` step with `from_analysis`".to_owned());
                    return None;
                }
            }
            return Some(StepKind::GenerateFlow {
                flow_type: flow_type?,
                parameters: parameters.map(|s| s.ok_or(())).transpose().ok()?,
                context: context.map(|s| s.ok_or(())).transpose().ok()?,
                vacancy_id: vacancy_id.map(|s| s.ok_or(())).transpose().ok()?,
                from_analysis,
            });
        }
        if let Some(step) = &model.analyze_vacancy {
            let text = self.template(
                ctx,
                scope,
                &format!("{field}.analyze_vacancy.text"),
                &step.value.text,
            )?;
            return Some(StepKind::AnalyzeVacancy { text });
        }
        if let Some(step) = &model.update_flow_run {
            let f = format!("{field}.update_flow_run");
            let v = &step.value;
            let id = self.template(ctx, scope, &format!("{f}.id"), &v.id);
            let state = v
                .state
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.state"), s));
            let status = v.status.as_ref().map(|status| {
                if !status.value.contains("{{")
                    && !FlowRunStatus::SETTABLE.contains(&status.value.as_str())
                {
                    let hint = did_you_mean(&status.value, FlowRunStatus::SETTABLE.iter().copied())
                        .unwrap_or_else(|| {
                            format!(
                                "a FlowRun's status can be set to {}",
                                FlowRunStatus::SETTABLE.join(", ")
                            )
                        });
                    self.error(
                        ctx,
                        status.at,
                        &format!("{f}.status"),
                        "status",
                        format!("a FlowRun's status cannot be set to `{}`", status.value),
                    )
                    .hint = Some(hint);
                    return None;
                }
                self.template(ctx, scope, &format!("{f}.status"), status)
            });
            if v.state.is_none() && v.status.is_none() {
                self.error(
                    ctx,
                    step.at,
                    &f,
                    "missing-field",
                    "`update_flow_run` changes nothing: give `state`, `status` or both",
                )
                .hint = Some("`state: {}` scrubs the run's session variables".to_owned());
                return None;
            }
            return Some(StepKind::UpdateFlowRun {
                id: id?,
                state: state.map(|s| s.ok_or(())).transpose().ok()?,
                status: status.map(|s| s.ok_or(())).transpose().ok()?,
            });
        }
        if let Some(step) = &model.recrubo {
            let f = format!("{field}.recrubo");
            let v = &step.value;
            let method = self.method(ctx, &format!("{f}.method"), &v.method);
            let path = self.template(ctx, scope, &format!("{f}.path"), &v.path);
            if !v.path.value.starts_with('/') && !v.path.value.starts_with("{{") {
                self.error(
                    ctx,
                    v.path.at,
                    &format!("{f}.path"),
                    "path",
                    format!("the path `{}` does not start with `/`", v.path.value),
                )
                .hint = Some(format!(
                    "paths are relative to the API base URL, e.g. `/{}`",
                    v.path.value.trim_start_matches("public/v2/")
                ));
                return None;
            }
            let body = v
                .body
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.body"), s));
            return Some(StepKind::Recrubo {
                method: method?,
                path: path?,
                body: body.map(|s| s.ok_or(())).transpose().ok()?,
            });
        }
        if let Some(step) = &model.notify {
            let f = format!("{field}.notify");
            let v = &step.value;
            let url = self.url(ctx, scope, &format!("{f}.url"), &v.url);
            let headers = self.headers(ctx, scope, &f, v.headers.as_ref());
            let body = self.value(ctx, scope, &format!("{f}.body"), &v.body);
            return Some(StepKind::Notify {
                url: url?,
                headers,
                body: body?,
                preset: v.preset,
            });
        }
        if let Some(step) = &model.email {
            let f = format!("{field}.email");
            let v = &step.value;
            let mut to = Vec::new();
            if v.to.value.0.is_empty() {
                self.error(
                    ctx,
                    v.to.at,
                    &format!("{f}.to"),
                    "empty",
                    "`to` names no recipient",
                );
            }
            for address in &v.to.value.0 {
                if !address.contains("{{") && !address.contains('@') {
                    self.error(
                        ctx,
                        v.to.at,
                        &format!("{f}.to"),
                        "email",
                        format!("`{address}` is not an email address"),
                    );
                    continue;
                }
                if let Some(template) =
                    self.template_text(ctx, scope, &format!("{f}.to"), address, v.to.at)
                {
                    to.push(template);
                }
            }
            let subject = self.template(ctx, scope, &format!("{f}.subject"), &v.subject);
            let body = self.template(ctx, scope, &format!("{f}.body"), &v.body);
            let html = v
                .html
                .as_ref()
                .map(|html| self.template(ctx, scope, &format!("{f}.html"), html));
            return Some(StepKind::Email {
                to,
                subject: subject?,
                body: body?,
                html: html.map(|s| s.ok_or(())).transpose().ok()?,
            });
        }
        if let Some(step) = &model.http {
            let f = format!("{field}.http");
            let v = &step.value;
            let method = match &v.method {
                Some(method) => self.method(ctx, &format!("{f}.method"), method),
                None => Some(HttpMethod::Get),
            };
            let url = self.url(ctx, scope, &format!("{f}.url"), &v.url);
            let headers = self.headers(ctx, scope, &f, v.headers.as_ref());
            let body = v
                .body
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.body"), s));
            return Some(StepKind::Http {
                method: method?,
                url: url?,
                headers,
                body: body.map(|s| s.ok_or(())).transpose().ok()?,
            });
        }
        if let Some(step) = &model.emit {
            let f = format!("{field}.emit");
            let v = &step.value;
            let event_type = self.template(ctx, scope, &format!("{f}.type"), &v.event_type);
            if let Some(template) = &event_type
                && template.is_literal()
            {
                meta.emits
                    .push((v.event_type.value.clone(), v.event_type.at));
            }
            let data = v
                .data
                .as_ref()
                .map(|s| self.value(ctx, scope, &format!("{f}.data"), s));
            return Some(StepKind::Emit {
                event_type: event_type?,
                data: data.map(|s| s.ok_or(())).transpose().ok()?,
            });
        }
        if let Some(text) = &model.log {
            let text = self.template(ctx, scope, &format!("{field}.log"), text)?;
            return Some(StepKind::Log { text });
        }
        None
    }

    fn url(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        url: &Located<String>,
    ) -> Option<Template> {
        let text = url.value.trim();
        if !text.starts_with("{{") && !text.starts_with("http://") && !text.starts_with("https://")
        {
            self.error(ctx, url.at, field, "url", format!("`{text}` is not an http(s) URL"))
                .hint = Some("write a full URL (`https://hooks.slack.com/...`) or a template (`{{secrets.slack_webhook}}`)".to_owned());
            return None;
        }
        self.template(ctx, scope, field, url)
    }

    // ---- tests ---------------------------------------------------------------------------------

    fn tests(
        &mut self,
        ctx: Ctx,
        tests: &[Located<RuleTestModel>],
        trigger: &Option<Trigger>,
    ) -> Vec<RuleTest> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, Pos> = HashMap::new();
        for (index, test) in tests.iter().enumerate() {
            let field = format!("tests[{index}]");
            let model = &test.value;
            if let Some(first) = names.get(model.name.value.as_str()) {
                self.error(
                    ctx,
                    model.name.at,
                    &format!("{field}.name"),
                    "duplicate",
                    format!("duplicate test name `{}`", model.name.value),
                )
                .hint = Some(format!(
                    "the first test with this name is at line {}",
                    first.line
                ));
            } else {
                names.insert(&model.name.value, model.name.at);
            }
            let now =
                model
                    .now
                    .as_ref()
                    .and_then(|now| match DateTime::parse_from_rfc3339(&now.value) {
                        Ok(time) => Some(time.with_timezone(&Utc)),
                        Err(err) => {
                            self.error(
                                ctx,
                                now.at,
                                &format!("{field}.now"),
                                "time",
                                format!("`{}` is not an RFC 3339 time: {err}", now.value),
                            )
                            .hint = Some("e.g. `2026-03-01T08:00:00Z`".to_owned());
                            None
                        }
                    });
            let known_statuses: Vec<&str> = match trigger {
                Some(Trigger::FlowGeneration(_)) => FlowGenerationStatus::KNOWN.to_vec(),
                _ => FlowRunStatus::KNOWN
                    .iter()
                    .chain(FlowGenerationStatus::KNOWN)
                    .copied()
                    .collect(),
            };
            let mut run_updates = Vec::new();
            for (update_index, update) in model.run_updates.iter().enumerate() {
                let status = &update.value.status;
                if !known_statuses.contains(&status.value.as_str()) {
                    let hint = did_you_mean(&status.value, known_statuses.iter().copied())
                        .unwrap_or_else(|| {
                            format!("statuses are {}", FlowRunStatus::KNOWN.join(", "))
                        });
                    self.error(
                        ctx,
                        status.at,
                        &format!("{field}.run_updates[{update_index}].status"),
                        "status",
                        format!("unknown status `{}`", status.value),
                    )
                    .hint = Some(hint);
                }
                run_updates.push(RunUpdate {
                    status: status.value.clone(),
                    state: update.value.state.as_ref().map(|s| s.to_json()),
                    step: update.value.step.as_ref().map(|s| s.value.clone()),
                });
            }
            let expect = match (&model.expect.value.steps, &model.expect.value.error) {
                (Some(steps), None) => {
                    let mut expected = Vec::new();
                    for (step_index, item) in steps.value.iter().enumerate() {
                        let item_field = format!("{field}.expect.steps[{step_index}]");
                        if item.value.entries.len() != 1 {
                            self.error(
                                ctx,
                                item.at,
                                &item_field,
                                "test",
                                format!(
                                    "an expected step has exactly one key (the step kind), not {}",
                                    item.value.entries.len()
                                ),
                            )
                            .hint =
                                Some("e.g. `- notify: { body: { text: \"hi Ana\" } }`".to_owned());
                            continue;
                        }
                        let (kind, fields) = &item.value.entries[0];
                        if !StepKind::NAMES.contains(&kind.value.as_str()) {
                            let hint = did_you_mean(&kind.value, StepKind::NAMES.iter().copied())
                                .unwrap_or_else(|| {
                                    format!("step kinds are {}", StepKind::NAMES.join(", "))
                                });
                            self.error(
                                ctx,
                                kind.at,
                                &item_field,
                                "unknown-value",
                                format!("unknown step kind `{}`", kind.value),
                            )
                            .hint = Some(hint);
                            continue;
                        }
                        expected.push((kind.value.clone(), fields.to_json()));
                    }
                    Some(Expectation::Steps(expected))
                }
                (None, Some(error)) => Some(Expectation::Error(error.value.clone())),
                (Some(_), Some(_)) => {
                    self.error(
                        ctx,
                        model.expect.at,
                        &format!("{field}.expect"),
                        "test",
                        "`expect` has both `steps` and `error`",
                    )
                    .hint = Some("a test expects either the steps that run or an error".to_owned());
                    None
                }
                (None, None) => {
                    self.error(
                        ctx,
                        model.expect.at,
                        &format!("{field}.expect"),
                        "test",
                        "`expect` needs `steps` or `error`",
                    )
                    .hint = Some("e.g. `expect: { steps: [] }` when nothing must run".to_owned());
                    None
                }
            };
            if let Some(expect) = expect {
                out.push(RuleTest {
                    name: model.name.value.clone(),
                    at: test.at,
                    event: model.event.to_json(),
                    run_updates,
                    now,
                    expect,
                });
            }
        }
        out
    }

    // ---- the whole set ---------------------------------------------------------------------------

    fn cross_rule_checks(&mut self, metas: &[RuleMeta]) {
        let empty = Map::new();
        let mut by_name: HashMap<&str, &RuleMeta> = HashMap::new();
        for meta in metas {
            if let Some(first) = by_name.get(meta.name.as_str()) {
                let ctx = Ctx {
                    file: &meta.file,
                    rule: Some(&meta.name),
                    vars: &empty,
                };
                self.error(
                    ctx,
                    meta.at,
                    "name",
                    "duplicate",
                    format!("duplicate rule name `{}`", meta.name),
                )
                .hint = Some(format!(
                    "the first rule with this name is at {}:{}; rule names are unique across all files",
                    first.file.display(),
                    first.at.line
                ));
            } else {
                by_name.insert(&meta.name, meta);
            }
        }

        for meta in metas {
            let Some((started_by, at, expected_kind)) = &meta.started_by else {
                continue;
            };
            let ctx = Ctx {
                file: &meta.file,
                rule: Some(&meta.name),
                vars: &empty,
            };
            let field = if *expected_kind == "start_flow_run" {
                "on.flow_run.started_by"
            } else {
                "on.flow_generation.started_by"
            };
            let Some(target) = by_name.get(started_by.rule.as_str()) else {
                let hint =
                    did_you_mean(&started_by.rule, by_name.keys().copied()).unwrap_or_else(|| {
                        "name a rule that has a `start_flow_run` or `generate_flow` step".to_owned()
                    });
                self.error(
                    ctx,
                    *at,
                    field,
                    "reference",
                    format!(
                        "`started_by` names rule `{}`, which does not exist",
                        started_by.rule
                    ),
                )
                .hint = Some(hint);
                continue;
            };
            match &started_by.step {
                Some(step) => match target.step_kinds.get(step) {
                    Some(kind) if kind == expected_kind => {}
                    Some(kind) => {
                        self.error(ctx, *at, field, "reference", format!("step `{step}` of rule `{}` is a `{kind}` step, which starts nothing this trigger sees", started_by.rule))
                            .hint = Some(format!("name a `{expected_kind}` step"));
                    }
                    None => {
                        let candidates: Vec<&str> = target
                            .step_kinds
                            .iter()
                            .filter(|(_, kind)| *kind == expected_kind)
                            .map(|(id, _)| id.as_str())
                            .collect();
                        let hint =
                            did_you_mean(step, candidates.iter().copied()).unwrap_or_else(|| {
                                if candidates.is_empty() {
                                    format!(
                                        "rule `{}` has no `{expected_kind}` step with an id",
                                        started_by.rule
                                    )
                                } else {
                                    format!(
                                        "its `{expected_kind}` steps are {}",
                                        backticked(candidates.iter().copied())
                                    )
                                }
                            });
                        self.error(
                            ctx,
                            *at,
                            field,
                            "reference",
                            format!("rule `{}` has no step `{step}`", started_by.rule),
                        )
                        .hint = Some(hint);
                    }
                },
                None => {
                    let starts = if *expected_kind == "start_flow_run" {
                        target.starts_runs
                    } else {
                        target.starts_generations
                    };
                    if !starts {
                        self.error(ctx, *at, field, "reference", format!("rule `{}` has no `{expected_kind}` step, so it starts nothing this trigger sees", started_by.rule));
                    }
                }
            }
        }

        self.cycles(metas, &by_name);
    }

    /// Rules that set each other off forever: A emits what B listens to, or B follows runs that A
    /// starts, and so on back to A.
    fn cycles(&mut self, metas: &[RuleMeta], by_name: &HashMap<&str, &RuleMeta>) {
        let mut listeners: HashMap<&str, Vec<&str>> = HashMap::new();
        for meta in metas {
            if let Some(event_type) = &meta.event_type {
                listeners.entry(event_type).or_default().push(&meta.name);
            }
        }
        // Edges: from a rule to the rules its steps set off, with the place that causes it.
        let mut edges: HashMap<&str, Vec<(&str, Pos, &Path)>> = HashMap::new();
        for meta in metas {
            for (event_type, at) in &meta.emits {
                for listener in listeners.get(event_type.as_str()).into_iter().flatten() {
                    edges
                        .entry(&meta.name)
                        .or_default()
                        .push((listener, *at, &meta.file));
                }
            }
            if let Some((started_by, at, kind)) = &meta.started_by
                && let Some(source) = by_name.get(started_by.rule.as_str())
            {
                let starts = match &started_by.step {
                    Some(step) => source.step_kinds.get(step) == Some(kind),
                    None if *kind == "start_flow_run" => source.starts_runs,
                    None => source.starts_generations,
                };
                if starts {
                    edges
                        .entry(&source.name)
                        .or_default()
                        .push((&meta.name, *at, &meta.file));
                }
            }
        }
        let mut reported: HashSet<Vec<String>> = HashSet::new();
        let mut found = Vec::new();
        for meta in metas {
            let mut path = vec![meta.name.as_str()];
            find_cycles(&meta.name, &edges, &mut path, &mut found, 0);
        }
        let empty = Map::new();
        for cycle in found {
            let mut key: Vec<String> = cycle.iter().map(|s| s.to_string()).collect();
            key.sort();
            if !reported.insert(key) {
                continue;
            }
            let first = cycle[0];
            let second = cycle.get(1).copied().unwrap_or(first);
            let Some((_, at, file)) = edges
                .get(first)
                .and_then(|targets| targets.iter().find(|(target, _, _)| *target == second))
            else {
                continue;
            };
            let ctx = Ctx {
                file,
                rule: Some(first),
                vars: &empty,
            };
            let mut chain = cycle.clone();
            chain.push(first);
            self.error(ctx, *at, "", "cycle", format!("rules set each other off in a cycle: {}", chain.join(" → ")))
                .hint = Some("an `emit` or `started_by` chain that comes back to where it started would run forever; break the chain or add an `if` that ends it, in a separate rule".to_owned());
        }
    }
}

/// Depth-first search for paths that come back to `path[0]`.
fn find_cycles<'a>(
    node: &'a str,
    edges: &HashMap<&'a str, Vec<(&'a str, Pos, &'a Path)>>,
    path: &mut Vec<&'a str>,
    found: &mut Vec<Vec<&'a str>>,
    depth: usize,
) {
    if depth > 64 {
        return;
    }
    for (next, _, _) in edges.get(node).into_iter().flatten() {
        if *next == path[0] {
            found.push(path.clone());
        } else if !path.contains(next) && *next > path[0] {
            // Only extend through nodes "after" the start, so each cycle is found from its
            // smallest member once.
            path.push(next);
            find_cycles(next, edges, path, found, depth + 1);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> RuleSet {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("r.yaml"), text).expect("write");
        super::super::load_rule_set(&[dir.path().to_path_buf()])
            .result
            .expect("valid")
    }

    const RULES: &str = r#"
vars: { flow: screening, n: 1.5 }
rules:
  - name: screen
    description: words do not change the version
    on: { flow_run: { status: finished, started_by: other } }
    do:
      - id: again
        retry: { attempts: 3, backoff: 1s }
        start_flow_run: { flow: "{{vars.flow}}", message_thread: "{{run.messageThreadId}}" }
        on_status:
          finished: [ { log: "done {{run.id}}" } ]
  - name: other
    on: { event: x }
    do: [ { start_flow_run: { flow: f, message_thread: t } } ]
"#;

    fn problems(text: &str) -> Vec<Diagnostic> {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("r.yaml"), text).expect("write");
        super::super::load_rule_set(&[dir.path().to_path_buf()])
            .result
            .expect_err("invalid")
    }

    #[test]
    fn a_flow_filter_of_vars_is_resolved_at_load_and_one_of_run_data_is_refused() {
        let set = load(
            "vars: { screening: flow-7 }\nrules:\n  - name: a\n    on: { flow_run: { status: finished, flow: \"{{vars.screening}}\" } }\n    do: [ { log: x } ]\n",
        );
        match &set.get("a").expect("rule").trigger {
            Trigger::FlowRun(trigger) => assert_eq!(trigger.flow.as_deref(), Some("flow-7")),
            other => panic!("{other:?}"),
        }
        let errors = problems(
            "rules:\n  - name: a\n    on: { flow_run: { status: finished, flow: \"{{run.flowId}}\" } }\n    do: [ { log: x } ]\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("may use `vars` only"),
            "{errors:?}"
        );
        assert_eq!(errors[0].field.as_deref(), Some("on.flow_run.flow"));
    }

    #[test]
    fn a_vacancy_flow_without_its_required_parameters_is_a_check_error() {
        let rule = |step: &str| {
            format!("rules:\n  - name: g\n    on: {{ event: v }}\n    do:\n      - {step}\n")
        };
        let errors = problems(&rule("generate_flow: { parameters: { language: nl } }"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .message
                .contains("`knockoutRequirements`, `preferredRequirements`"),
            "{errors:?}"
        );
        let errors = problems(&rule("generate_flow: { vacancy_id: v-1 }"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        load(&rule(
            "generate_flow: { parameters: { knockoutRequirements: [], preferredRequirements: [] } }",
        ));
        load(&rule("generate_flow: { parameters: \"{{event.data.p}}\" }"));
        load(&rule("generate_flow: { flow_type: other_flow }"));
    }

    #[test]
    fn a_rule_version_rebuilds_to_the_same_rule() {
        let set = load(RULES);
        let rule = set.get("screen").expect("rule");
        let rebuilt = rebuild(&rule.definition).expect("rebuilds");
        assert_eq!(rebuilt.version, rule.version);
        assert_eq!(rebuilt.steps.len(), 1);
        assert_eq!(rebuilt.steps[0].on_status.len(), 1);
        assert_eq!(rebuilt.vars, rule.vars);
        // The description and the tests are not part of the version; the steps are.
        let reworded = load(&RULES.replace("words do not change", "other words"));
        assert_eq!(reworded.get("screen").expect("rule").version, rule.version);
        let changed = load(&RULES.replace("attempts: 3", "attempts: 4"));
        assert_ne!(changed.get("screen").expect("rule").version, rule.version);
        let other_vars = load(&RULES.replace("n: 1.5", "n: 2"));
        assert_ne!(
            other_vars.get("screen").expect("rule").version,
            rule.version
        );
        // Characters YAML refuses but JSON writes as they are still rebuild.
        let odd = load(&RULES.replace("done {{run.id}}", "done\\x7f\\u0086\\ufffe {{run.id}}"));
        let odd = odd.get("screen").expect("rule");
        assert_eq!(
            rebuild(&odd.definition).expect("rebuilds").version,
            odd.version
        );
    }
}
