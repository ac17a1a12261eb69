//! Validation: rule file models in, a [`RuleSet`] or every diagnostic out.
//!
//! The validator never stops at the first problem: each rule, step, template and condition is
//! checked and every mistake is collected with its file, line, column, rule and field (vector's
//! config loading is the model). Checks that need the whole set — duplicate names across files,
//! `started_by` naming a rule that does not exist, `emit`/`started_by` chains that form a cycle —
//! run after every file has been read.
//!
//! Layout: this module holds the entry points ([`validate`], [`rebuild`]), the validator's
//! state and the rule; its parts are in `triggers`, `templates` (templates and conditions),
//! `steps`, `rule_tests` (a rule's `tests:`) and `set` (the whole-set checks).

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
    // What a file's repair took away is no problem of its own (its structural problem is).
    let repairs: HashMap<&Path, &super::load::Repairs> = loaded
        .files
        .iter()
        .filter_map(|f| Some((f.source.path.as_path(), f.repaired.as_ref()?)))
        .collect();
    if !repairs.is_empty() {
        validator.diagnostics.retain(|d| {
            !repairs
                .get(d.file.as_path())
                .is_some_and(|repairs| caused_by_repair(d, repairs))
        });
    }
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

/// Whether a problem found in a repaired file (see [`super::repair`]) only exists because of the
/// repair: it names a step of its rule that was blanked out (whose own problem is reported), or
/// it is about a mapping the repair left empty (`on` after its only, misspelt key went: "no
/// trigger").
fn caused_by_repair(found: &Diagnostic, repairs: &super::load::Repairs) -> bool {
    let names_removed = repairs.removed_ids.iter().any(|(rule, id)| {
        let named = found.message.contains(&format!("`{id}`"))
            || found.message.contains(&format!("steps.{id}`"));
        // In its own rule, or in another that names both (`started_by: a/s`).
        named
            && (*rule == found.rule
                || rule
                    .as_ref()
                    .is_some_and(|rule| found.message.contains(&format!("`{rule}`"))))
    });
    let about_an_emptied_mapping = repairs
        .emptied
        .iter()
        .any(|(rule, field)| *rule == found.rule && found.field.as_deref() == Some(field.as_str()));
    names_removed || about_an_emptied_mapping
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
        let schedule_zone = match &trigger {
            Some(Trigger::Schedule(schedule)) => Some(schedule.timezone),
            _ => None,
        };
        let flow = self.flow_control(ctx, model, &scope, schedule_zone, &mut meta);
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
            flow,
            steps,
            vars: vars.clone(),
            tests,
            // Set by `file`, which has the rule as written.
            version: String::new(),
            definition: Arc::from(""),
        };
        (Some(rule), meta)
    }
}

mod flow_control;
mod rule_tests;
mod set;
mod steps;
mod templates;
mod triggers;

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

    /// The data-driven check: a rule file and the (code, line, field) of every diagnostic
    /// expected, in order.
    fn check(yaml: &str, expected: &[(&str, u32, &str)]) {
        let found: Vec<(&str, u32, String)> = problems(yaml)
            .iter()
            .map(|d| (d.code, d.line, d.field.clone().unwrap_or_default()))
            .collect();
        let expected: Vec<(&str, u32, String)> = expected
            .iter()
            .map(|(code, line, field)| (*code, *line, (*field).to_owned()))
            .collect();
        assert_eq!(found, expected, "{yaml}");
    }

    #[test]
    fn flow_control_keys_are_checked_with_their_field() {
        let head = "rules:\n  - name: a\n    on: { event: x }\n";
        let tail =
            "    do:\n      - id: s\n        start_flow_run: { flow: f, message_thread: t }\n";
        // A mode that acts on a group needs a key; so do throttle and cancel_on.
        check(
            &format!("{head}    concurrency: {{ limit: 1, mode: skip }}\n{tail}"),
            &[("needs_key", 4, "concurrency.mode")],
        );
        check(
            &format!("{head}    throttle: {{ limit: 3, period: 24h }}\n{tail}"),
            &[("needs_key", 4, "throttle")],
        );
        check(
            &format!("{head}    cancel_on:\n      - {{ event: y, key: k }}\n{tail}"),
            &[("needs_key", 5, "cancel_on")],
        );
        check(
            &format!("{head}    debounce: {{ period: 10m, max_wait: 1m }}\n{tail}"),
            &[
                ("needs_key", 4, "debounce"),
                ("range", 4, "debounce.max_wait"),
            ],
        );
        check(
            &format!("{head}    idempotency_window: 1h\n{tail}"),
            &[("needs_key", 4, "idempotency_window")],
        );
        // A deadline handler without a deadline; a deadline on a step that starts nothing.
        check(
            &format!(
                "{head}    do:\n      - start_flow_run: {{ flow: f, message_thread: t }}\n        on_status:\n          deadline: [ {{ log: late }} ]\n      - log: x\n        deadline: 1h\n"
            ),
            &[
                ("needs_deadline", 7, "do[0].on_status.deadline"),
                ("deadline", 9, "do[1].deadline"),
            ],
        );
        // An empty key, an empty identifier, a deadline nothing handles.
        check(
            &format!("{head}    key: \"\"\n    cancel_on: [ {{ event: y, key: k }} ]\n{tail}"),
            &[("empty", 4, "key")],
        );
        check(
            &format!(
                "{head}    do:\n      - message_thread: {{ identifier: \"\" }}\n      - start_flow_run: {{ flow: f, message_thread: t }}\n        deadline: 1h\n"
            ),
            &[
                ("empty", 5, "do[0].message_thread.identifier"),
                ("unused", 7, "do[1].deadline"),
            ],
        );
        // An empty quiet window, a time that is no time, a zone that is none.
        check(
            &format!("{head}    quiet_hours: {{ from: \"21:00\", to: \"21:00\" }}\n{tail}"),
            &[("empty", 4, "quiet_hours.to")],
        );
        check(
            &format!(
                "{head}    quiet_hours: {{ from: \"9pm\", to: \"08:00\", timezone: Mars/Olympus }}\n{tail}"
            ),
            &[
                ("time", 4, "quiet_hours.from"),
                ("timezone", 4, "quiet_hours.timezone"),
            ],
        );
        // on_cancel naming a step the rule does not have; on_cancel nothing can trigger.
        check(
            &format!(
                "{head}    key: \"{{{{event.data.c}}}}\"\n    cancel_on: [ {{ event: y, key: \"{{{{event.data.c}}}}\" }} ]\n    on_cancel:\n      - update_flow_run: {{ id: \"{{{{steps.nope.id}}}}\", status: cancelled }}\n{tail}"
            ),
            &[("reference", 7, "on_cancel[0].update_flow_run.id")],
        );
        check(
            &format!("{head}    on_cancel: [ {{ log: x }} ]\n{tail}"),
            &[("unused", 4, "on_cancel")],
        );
        // Zero limits and periods.
        check(
            &format!(
                "{head}    key: k\n    concurrency: 0\n    throttle: {{ limit: 0, period: 0s }}\n    expires_after: soon\n{tail}"
            ),
            &[
                ("range", 5, "concurrency"),
                ("range", 6, "throttle.limit"),
                ("range", 6, "throttle.period"),
                ("duration", 7, "expires_after"),
            ],
        );
        // The whole set, valid.
        let rules = load(&format!(
            "{head}    key: \"{{{{event.data.c}}}}\"\n    concurrency: {{ limit: 1, mode: cancel_previous }}\n    throttle: {{ limit: 3, period: 24h, on_excess: drop }}\n    quiet_hours: {{ from: \"21:00\", to: \"08:00\", timezone: \"{{{{event.data.tz}}}}\" }}\n    expires_after: 48h\n    cancel_on:\n      - {{ event: y, key: \"{{{{event.data.c}}}}\", if: 'event.data.reason != \"duplicate\"' }}\n    on_cancel:\n      - update_flow_run: {{ id: \"{{{{steps.s.id}}}}\", status: cancelled }}\n{tail}"
        ));
        let flow = &rules.get("a").expect("rule").flow;
        assert!(flow.gated() && flow.cancellable());
        assert_eq!(flow.throttle.map(|t| t.limit), Some(3));
        assert_eq!(flow.on_cancel.len(), 1);
        assert_eq!(flow.cancel_on[0].event, "y");
    }

    #[test]
    fn every_problem_of_a_file_is_reported_at_its_line() {
        check(
            "rules:\n  - name: a\n    on: { evnt: x }\n    do:\n      - log: hi\n        retyr: { attempts: 2 }\n",
            &[
                ("unknown-field", 3, "on.evnt"),
                ("unknown-field", 6, "do[0].retyr"),
            ],
        );
        check(
            "rules:\n  - name: a\n    on: { event: x }\n    concurrency: lots\n    do: [ { log: x } ]\n",
            &[("type", 4, "concurrency")],
        );
        check(
            "rules:\n  - name: a\n    on: { event: x }\n    do:\n      - log: \"{{#if event.data.x}}yes\"\n      - log: \"{{steps.nope.id}}\"\n",
            &[("template", 5, "do[0].log"), ("reference", 6, "do[1].log")],
        );
        // A structural problem does not hide the checks of the rest of the file.
        check(
            "rules:\n  - name: a\n    on: { event: x }\n    bogus: 1\n    do:\n      - id: s\n        start_flow_run: { flow: f }\n      - notify: { url: \"not a url\", body: {} }\n      - log: \"{{steps.s.id}}\"\n  - name: b\n    on: { schedule: \"61 * * * *\" }\n    do: [ { log: x, frobnicate: true } ]\n",
            &[
                ("unknown-field", 4, "bogus"),
                ("missing-field", 7, "do[0].start_flow_run.message_thread"),
                ("url", 8, "do[1].notify.url"),
                ("cron", 11, "on.schedule"),
                ("unknown-field", 12, "do[0].frobnicate"),
            ],
        );
    }

    #[test]
    fn a_repaired_file_reports_neither_more_nor_less_than_it_has() {
        // The rule is named from its own `name`, wherever written; the emptied `on` is not
        // reported as having no trigger.
        check(
            "rules:\n  - name: first\n    on: { event: x }\n    do: [ { log: hi } ]\n  - on: { evnt: y }\n    name: second\n    do: [ { log: hi } ]\n",
            &[("unknown-field", 5, "on.evnt")],
        );
        // A comment in a flow mapping stays a comment; an apostrophe in a plain scalar opens
        // no quote.
        check(
            "rules:\n  - name: a\n    on: { event: x }\n    do:\n      - { log: hi, bogus: don't }\n      - notify: { url: \"https://example.com\", bogus: 1 # was, headers: { X: \"{{steps.nope.id}}\" }\n                  , body: { text: hi } }\n      - notify: { url: \"not a url\", body: {} }\n      - { log: Bob's }\n",
            &[
                ("unknown-field", 5, "do[0].bogus"),
                ("unknown-field", 6, "do[1].notify.bogus"),
                ("url", 8, "do[2].notify.url"),
            ],
        );
        // A blanked step's id is excused in its own rule only; a rule whose only test is
        // broken keeps existing for the rules that name it; an unknown first key of an item.
        check(
            "rules:\n  - name: a\n    on: { event: x }\n    do:\n      - id: s\n        start_flow_run: { flow: f }\n      - retyr: 2\n        log: \"{{steps.s.id}}\"\n    tests:\n      - name: t1\n        event: { type: x }\n  - name: b\n    on: { flow_run: { status: finished, started_by: a/s } }\n    do:\n      - log: \"{{steps.s.id}}\"\n",
            &[
                ("missing-field", 6, "do[0].start_flow_run.message_thread"),
                ("unknown-field", 7, "do[1].retyr"),
                ("missing-field", 10, "tests[0].expect"),
                ("reference", 15, "do[0].log"),
            ],
        );
        // A lone carriage return ends a line, as the YAML parser counts them.
        check(
            "rules:\n  - name: a\r    on: { event: x }\n    bogus: 1\n    do:\n      - notify: { url: \"not a url\", body: {} }\n",
            &[
                ("unknown-field", 4, "bogus"),
                ("url", 6, "do[0].notify.url"),
            ],
        );
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
