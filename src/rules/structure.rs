//! Every structural problem of a rule file at once. serde stops at the first unknown or missing
//! key; when it does, the file is read again as a positioned value tree
//! ([`ValueModel`]) and walked against the rule file's JSON Schema (the one `flowd schema`
//! prints, generated from [`crate::rules::model`]), so two unknown keys give two diagnostics,
//! each at its line. Only keys are judged here (unknown ones, missing required ones); a wrong
//! type is left to serde's own message. Hand-written because no crate walks a schemars schema
//! over a tree that keeps YAML positions.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

use super::diagnostic::{Diagnostic, backticked, did_you_mean};
use super::located::{Located, ValueModel};
use super::model::RuleFileModel;

static NULL: Value = Value::Null;

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::to_value(schemars::schema_for!(RuleFileModel)).unwrap_or(Value::Null)
    })
}

/// The unknown and missing keys of a parsed tree, in file order.
pub fn key_problems(path: &Path, tree: &Located<ValueModel>) -> Vec<Diagnostic> {
    let mut walker = Walker {
        path,
        root: schema(),
        found: Vec::new(),
        rule: None,
    };
    walker.walk(tree, schema(), "", 0);
    walker.found.sort_by_key(|d| (d.line, d.column));
    walker.found
}

struct Walker<'a> {
    path: &'a Path,
    root: &'static Value,
    found: Vec<Diagnostic>,
    /// The name of the rule being walked, as written (whatever key comes first).
    rule: Option<String>,
}

impl Walker<'_> {
    /// A `$ref` resolved against the root's `$defs`.
    fn resolve(&self, schema: &'static Value) -> &'static Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .strip_prefix("#/$defs/")
                .and_then(|name| self.root.get("$defs")?.get(name))
                .unwrap_or(&NULL),
            None => schema,
        }
    }

    /// The alternative of an `anyOf`/`oneOf` that takes a node of this kind (an object, a
    /// list, ...); the schema itself when it has none.
    fn alternative(&self, schema: &'static Value, node: &ValueModel) -> Option<&'static Value> {
        let mut schema = self.resolve(schema);
        // Alternatives nest (an optional `ShortOrFull`: `anyOf [anyOf [string, $ref], null]`):
        // go down until a schema without alternatives.
        for _ in 0..8 {
            let Some(options) = schema
                .get("anyOf")
                .or_else(|| schema.get("oneOf"))
                .and_then(Value::as_array)
            else {
                return Some(schema);
            };
            schema = options
                .iter()
                .map(|option| self.resolve(option))
                .find(|option| takes(option, node) && !is_untyped_anything(option))
                .or_else(|| {
                    options
                        .iter()
                        .map(|option| self.resolve(option))
                        .find(|option| takes(option, node))
                })?;
        }
        Some(schema)
    }

    fn walk(
        &mut self,
        node: &Located<ValueModel>,
        schema: &'static Value,
        field: &str,
        depth: usize,
    ) {
        if depth > 64 {
            return;
        }
        let Some(schema) = self.alternative(schema, &node.value) else {
            self.wrong_type(node, self.resolve(schema), field);
            return;
        };
        if !takes(schema, &node.value) {
            self.wrong_type(node, schema, field);
            return;
        }
        match &node.value {
            ValueModel::Object(map) => {
                let properties = schema.get("properties").and_then(Value::as_object);
                let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
                let open_values = schema
                    .get("additionalProperties")
                    .filter(|extra| extra.is_object());
                for (key, value) in map.iter() {
                    let inner = join(field, &key.value);
                    match properties.and_then(|p| p.get(&key.value)) {
                        Some(property) => self.walk(value, property, &inner, depth + 1),
                        None if closed => {
                            let expected: Vec<&str> = properties
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            let hint = did_you_mean(&key.value, expected.iter().copied())
                                .unwrap_or_else(|| {
                                    format!(
                                        "expected one of {}",
                                        backticked(expected.iter().copied())
                                    )
                                });
                            self.found.push(
                                Diagnostic::new(
                                    self.path,
                                    key.at,
                                    "unknown-field",
                                    format!("unknown key `{}`", key.value),
                                )
                                .at_field(&inner)
                                .in_rule(self.rule.as_deref())
                                .with_hint(hint),
                            );
                        }
                        None => {
                            if let Some(extra) = open_values {
                                self.walk(value, extra, &inner, depth + 1);
                            }
                        }
                    }
                }
                for required in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    // A key missing because it is misspelt is the unknown key's problem: its
                    // hint names this one, a second diagnostic would say the same.
                    let misspelt = map.iter().any(|(key, _)| {
                        properties.is_none_or(|p| !p.contains_key(&key.value))
                            && did_you_mean(&key.value, [required]).is_some()
                    });
                    if map.get(required).is_none() && !misspelt {
                        self.found.push(
                            Diagnostic::new(
                                self.path,
                                node.at,
                                "missing-field",
                                format!("missing required key `{required}`"),
                            )
                            .at_field(join(field, required))
                            .in_rule(self.rule.as_deref()),
                        );
                    }
                }
            }
            ValueModel::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (index, item) in items.iter().enumerate() {
                        // Fields inside a rule are named from the rule, as everywhere else
                        // (`do[0].notify.url`, with "in rule `name`").
                        let inner = if depth == 1 && field == "rules" {
                            self.rule = match &item.value {
                                ValueModel::Object(map) => {
                                    match map.get("name").map(|n| &n.value) {
                                        Some(ValueModel::String(name)) => Some(name.clone()),
                                        _ => None,
                                    }
                                }
                                _ => None,
                            };
                            String::new()
                        } else {
                            format!("{field}[{index}]")
                        };
                        self.walk(item, item_schema, &inner, depth + 1);
                    }
                    if depth == 1 && field == "rules" {
                        self.rule = None;
                    }
                }
            }
            _ => {}
        }
    }
}

impl Walker<'_> {
    /// A value of the wrong kind: names the field, what it must be, and what it is.
    fn wrong_type(&mut self, node: &Located<ValueModel>, schema: &'static Value, field: &str) {
        let mut kinds: Vec<&str> = Vec::new();
        // Alternatives nest (an optional `concurrency: 3 | {limit, mode}` is `anyOf [anyOf
        // [integer, $ref], null]`): every kind at any depth counts.
        let mut pending = vec![(schema, 0)];
        while let Some((schema, depth)) = pending.pop() {
            let schema = self.resolve(schema);
            match schema
                .get("anyOf")
                .or_else(|| schema.get("oneOf"))
                .and_then(Value::as_array)
            {
                Some(options) if depth < 4 => {
                    pending.extend(options.iter().rev().map(|option| (option, depth + 1)));
                }
                _ => match schema.get("type") {
                    Some(Value::String(kind)) if kind != "null" => kinds.push(kind_name(kind)),
                    Some(Value::Array(list)) => kinds.extend(
                        list.iter()
                            .filter_map(Value::as_str)
                            .filter(|kind| *kind != "null")
                            .map(kind_name),
                    ),
                    _ => {}
                },
            }
        }
        kinds.dedup();
        if kinds.is_empty() || field.is_empty() {
            return;
        }
        let name = field.rsplit('.').next().unwrap_or(field);
        let shown = match &node.value {
            ValueModel::String(text) => format!("`{text}`"),
            ValueModel::Number(number) => format!("`{number}`"),
            ValueModel::Bool(b) => format!("`{b}`"),
            other => other.kind_name().to_owned(),
        };
        let mut diagnostic = Diagnostic::new(
            self.path,
            node.at,
            "type",
            format!("`{name}` must be {}, not {shown}", kinds.join(" or ")),
        )
        .at_field(field);
        if kinds.contains(&"a mapping") {
            diagnostic =
                diagnostic.with_hint("a mapping is `key: value` lines or `{ key: value }`");
        }
        self.found.push(diagnostic.in_rule(self.rule.as_deref()));
    }
}

/// A JSON Schema type in words.
fn kind_name(kind: &str) -> &'static str {
    match kind {
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "string" => "text",
        "array" => "a list",
        "object" => "a mapping",
        _ => "something else",
    }
}

/// A schema that says nothing of its kind (it takes anything, and has nothing to look into).
fn is_untyped_anything(schema: &Value) -> bool {
    schema.get("type").is_none()
        && schema.get("anyOf").is_none()
        && schema.get("oneOf").is_none()
        && schema.get("properties").is_none()
}

/// Whether a schema (one alternative) takes a node of this kind — as leniently as the YAML
/// deserializer does: any scalar is text, a quoted number is a number, `"true"` a boolean.
fn takes(schema: &Value, node: &ValueModel) -> bool {
    let fits = |kind: &str| match (kind, node) {
        ("null", ValueModel::Null) => true,
        ("boolean", ValueModel::Bool(_)) => true,
        ("boolean", ValueModel::String(text)) => matches!(text.as_str(), "true" | "false"),
        ("number", ValueModel::Number(_)) => true,
        ("integer", ValueModel::Number(number)) => number.is_i64() || number.is_u64(),
        ("number", ValueModel::String(text)) => text.trim().parse::<f64>().is_ok(),
        ("integer", ValueModel::String(text)) => text.trim().parse::<i64>().is_ok(),
        ("string", ValueModel::String(_) | ValueModel::Number(_) | ValueModel::Bool(_)) => true,
        ("array", ValueModel::Array(_)) => true,
        ("object", ValueModel::Object(_)) => true,
        _ => false,
    };
    match schema.get("type") {
        None => true,
        Some(Value::String(kind)) => fits(kind),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).any(fits),
        Some(_) => true,
    }
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

/// Whether two diagnostics tell the same problem (serde's and the walk's positions of a
/// missing key differ: serde points where the mapping ends).
pub fn same_problem(a: &Diagnostic, b: &Diagnostic) -> bool {
    a.code == b.code && (a.message == b.message || (a.code == "type" && a.line == b.line))
}
