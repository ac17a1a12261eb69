//! `flowd schema`: the JSON Schema of rule files, generated from the model types.

use crate::rules::model::RuleFileModel;

/// The schema as pretty JSON.
pub fn rule_file_schema_json() -> String {
    let schema = schemars::schema_for!(RuleFileModel);
    serde_json::to_string_pretty(&schema).unwrap_or_else(|err| format!("{{\"error\": \"{err}\"}}"))
}
