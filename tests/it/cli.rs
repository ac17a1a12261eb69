//! `flowd check` and `flowd schema` as a user runs them.

use crate::support::flowd;

#[test]
fn check_exits_0_on_valid_rules_and_78_on_invalid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = flowd(&["check", &format!("{root}/rules")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");

    let (code, out) = flowd(&[
        "check",
        &format!("{root}/tests/corpus/broken/bad-cron.yaml"),
        &format!("{root}/tests/corpus/broken/unknown-var.yaml"),
    ]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("bad-cron.yaml:3:29"), "{out}");
    assert!(out.contains("unknown-var.yaml"), "{out}");
    assert!(out.contains("error: 2 problems in 2 files"), "{out}");
}

#[test]
fn check_reports_json_for_editors() {
    let root = env!("CARGO_MANIFEST_DIR");
    let (code, out) = flowd(&[
        "check",
        "--format",
        "json",
        &format!("{root}/tests/corpus/broken/unknown-step-field.yaml"),
    ]);
    assert_eq!(code, 78);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["valid"], false);
    let diagnostic = &report["diagnostics"][0];
    assert_eq!(diagnostic["code"], "unknown-field");
    assert_eq!(diagnostic["line"], 7);
    assert_eq!(diagnostic["column"], 11);
    assert_eq!(diagnostic["rule"], "r1");
    assert_eq!(diagnostic["hint"], "did you mean `message_thread`?");
}

#[test]
fn schema_is_json_schema() {
    let (code, out) = flowd(&["schema"]);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(schema["title"], "flowd rule file");
    assert!(schema["properties"]["rules"].is_object());
}
