//! Conditions: CEL expressions (`if:`), compiled once and evaluated over the execution context.
//!
//! A condition that fails to evaluate (a missing field, a type error) counts as false; the caller
//! logs and records the reason, so a skip is never silent (DESIGN 2.2). [`Condition::references`]
//! lists the context paths the expression reads, with comprehension variables (`x` in
//! `list.exists(x, x > 1)`) left out, so the validator can check them like template paths.

use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use serde_json::Value;

use super::template::Reference;

/// A compiled CEL condition.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<cel::Program>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish()
    }
}

/// Why a condition did not compile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ConditionCompileError {
    /// What is wrong.
    pub message: String,
    /// 1-based column inside the expression, when known.
    pub column: Option<u32>,
}

/// The outcome of evaluating a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionOutcome {
    /// The expression evaluated to a boolean.
    Value(bool),
    /// It did not evaluate to a boolean; it counts as false, with this reason.
    Failed(String),
}

impl ConditionOutcome {
    /// Whether the step or rule should run.
    pub fn is_true(&self) -> bool {
        matches!(self, ConditionOutcome::Value(true))
    }
}

impl Condition {
    /// Compiles a CEL expression.
    pub fn compile(source: &str) -> Result<Condition, ConditionCompileError> {
        if source.trim().is_empty() {
            return Err(ConditionCompileError {
                message: "the condition is empty".to_owned(),
                column: None,
            });
        }
        // The CEL parser is recursive; refuse absurd inputs before it sees them.
        if source.len() > 16 * 1024 {
            return Err(ConditionCompileError {
                message: "the condition is longer than 16 KiB".to_owned(),
                column: None,
            });
        }
        match cel::Program::compile(source) {
            Ok(program) => Ok(Condition {
                source: source.to_owned(),
                program: Arc::new(program),
            }),
            Err(errors) => {
                let first = errors.errors.first();
                let message = first
                    .map(|e| e.msg.clone())
                    .unwrap_or_else(|| errors.to_string());
                let column = first
                    .map(|e| e.pos.1)
                    .filter(|c| *c >= 0)
                    .and_then(|c| u32::try_from(c + 1).ok());
                Err(ConditionCompileError {
                    message: format!("the condition does not compile: {message}"),
                    column,
                })
            }
        }
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The context paths the expression reads.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        let mut bound = Vec::new();
        collect(self.program.expression(), &mut bound, &mut out);
        out
    }

    /// Evaluates the condition over a JSON context object (its keys become CEL variables).
    pub fn evaluate(&self, context: &Value) -> ConditionOutcome {
        let mut cel_context = cel::Context::default();
        if let Value::Object(map) = context {
            for (name, value) in map {
                if let Err(err) = cel_context.add_variable(name.as_str(), value) {
                    return ConditionOutcome::Failed(format!(
                        "cannot pass `{name}` to the condition: {err}"
                    ));
                }
            }
        }
        match self.program.execute(&cel_context) {
            Ok(cel::Value::Bool(value)) => ConditionOutcome::Value(value),
            Ok(other) => {
                ConditionOutcome::Failed(format!("the condition yielded {other:?}, not a boolean"))
            }
            Err(err) => ConditionOutcome::Failed(err.to_string()),
        }
    }
}

/// The dotted path an expression spells (`a.b.c`), innermost identifier first.
fn select_path(expr: &IdedExpr) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(select) if !select.test => {
            let mut path = select_path(&select.operand)?;
            path.push(select.field.clone());
            Some(path)
        }
        // `steps["a"]` and `vars["x"]` index with a literal: treat like a select.
        Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
            let mut path = select_path(&call.args[0])?;
            if let Expr::Literal(cel::common::ast::LiteralValue::String(key)) = &call.args[1].expr {
                path.push(key.to_string());
                Some(path)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn collect(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<Reference>) {
    if let Some(segments) = select_path(expr) {
        if !bound.contains(&segments[0]) {
            out.push(Reference { segments });
        }
        return;
    }
    match &expr.expr {
        Expr::Select(select) => {
            // `has(a.b)` is a test select: the operand is still read.
            if let Some(mut segments) = select_path(&select.operand) {
                if !bound.contains(&segments[0]) {
                    segments.push(select.field.clone());
                    // Only the operand must exist; the tested field may be absent.
                    segments.pop();
                    out.push(Reference { segments });
                }
            } else {
                collect(&select.operand, bound, out);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect(target, bound, out);
            }
            for arg in &call.args {
                collect(arg, bound, out);
            }
        }
        Expr::Comprehension(comprehension) => {
            collect(&comprehension.iter_range, bound, out);
            collect(&comprehension.accu_init, bound, out);
            let pushed = 2 + usize::from(comprehension.iter_var2.is_some());
            bound.push(comprehension.iter_var.clone());
            bound.push(comprehension.accu_var.clone());
            if let Some(second) = &comprehension.iter_var2 {
                bound.push(second.clone());
            }
            collect(&comprehension.loop_cond, bound, out);
            collect(&comprehension.loop_step, bound, out);
            collect(&comprehension.result, bound, out);
            bound.truncate(bound.len() - pushed);
        }
        Expr::List(list) => {
            for element in &list.elements {
                collect(element, bound, out);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let EntryExpr::MapEntry(entry) = &entry.expr {
                    collect(&entry.key, bound, out);
                    collect(&entry.value, bound, out);
                }
            }
        }
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                if let EntryExpr::StructField(field) = &entry.expr {
                    collect(&field.value, bound, out);
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(source: &str) -> Vec<String> {
        Condition::compile(source)
            .expect("compiles")
            .references()
            .iter()
            .map(|r| r.segments.join("."))
            .collect()
    }

    #[test]
    fn references_leave_out_comprehension_variables() {
        assert_eq!(
            paths("event.data.vacancy.open && event.data.phone != \"\""),
            ["event.data.vacancy.open", "event.data.phone"]
        );
        assert_eq!(
            paths("run.state.answers.exists(a, a.score > vars.min)"),
            ["run.state.answers", "vars.min"]
        );
        assert_eq!(paths("has(steps.screening.id)"), ["steps.screening"]);
    }

    #[test]
    fn evaluates_and_fails_closed() {
        let condition =
            Condition::compile("event.data.open && event.data.n > 2").expect("compiles");
        let context = json!({"event": {"data": {"open": true, "n": 3}}});
        assert_eq!(condition.evaluate(&context), ConditionOutcome::Value(true));
        let missing = condition.evaluate(&json!({"event": {"data": {}}}));
        assert!(!missing.is_true());
        assert!(matches!(missing, ConditionOutcome::Failed(_)));
    }

    #[test]
    fn compile_errors_have_a_message() {
        let err = Condition::compile("event.data.open &&").unwrap_err();
        assert!(
            err.message.starts_with("the condition does not compile"),
            "{err}"
        );
    }
}
