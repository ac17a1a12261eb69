//! Every shipped rule file is valid, uses every trigger and step kind between them, and
//! validates against the JSON Schema that `flowd schema` prints.

use std::collections::BTreeSet;
use std::path::PathBuf;

use flowd::rules::{load::find_rule_files, load_rule_set};

fn shipped_paths() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    vec![root.join("rules"), root.join("examples")]
}

#[test]
fn shipped_rules_are_valid() {
    for path in shipped_paths() {
        let outcome = load_rule_set(std::slice::from_ref(&path));
        if let Err(diagnostics) = &outcome.result {
            panic!("{}", outcome.render_diagnostics(diagnostics));
        }
        assert!(outcome.file_count > 0, "{} has rule files", path.display());
    }
}

#[test]
fn shipped_rules_use_every_trigger_and_step_kind() {
    let outcome = load_rule_set(&[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")]);
    let set = outcome.result.expect("valid");
    let mut triggers = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut has_for_each = false;
    fn walk(steps: &[flowd::rules::Step], kinds: &mut BTreeSet<&'static str>) {
        for step in steps {
            kinds.insert(step.kind.name());
            for (_, handler) in &step.on_status {
                walk(handler, kinds);
            }
        }
    }
    for rule in set.rules() {
        triggers.insert(rule.trigger.kind());
        has_for_each |= rule.for_each.is_some();
        walk(&rule.steps, &mut kinds);
    }
    let all_triggers: BTreeSet<_> = [
        "schedule",
        "every",
        "event",
        "recrubo",
        "flow_run",
        "flow_generation",
        "manual",
    ]
    .into();
    assert_eq!(triggers, all_triggers);
    let all_kinds: BTreeSet<_> = flowd::rules::StepKind::NAMES.iter().copied().collect();
    assert_eq!(kinds, all_kinds);
    assert!(has_for_each);
}

#[test]
fn shipped_rules_validate_against_the_json_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(&flowd::cli::schema::rule_file_schema_json()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let (files, problems) = find_rule_files(&shipped_paths());
    assert!(problems.is_empty());
    assert!(files.len() >= 6);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let document: serde_json::Value = serde_saphyr::from_str(&text).expect("yaml");
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

#[test]
fn the_schema_refuses_an_unknown_key() {
    let schema: serde_json::Value =
        serde_json::from_str(&flowd::cli::schema::rule_file_schema_json()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let document = serde_json::json!({"rules": [{"name": "a", "on": {"event": "x"}, "do": [{"log": "x"}], "bogus": 1}]});
    assert!(!validator.is_valid(&document));
}
