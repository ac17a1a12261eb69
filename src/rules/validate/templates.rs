//! Templates and conditions: compiling them and checking what they read.

use super::*;

impl Validator {
    // ---- templates and conditions --------------------------------------------------------------

    pub(super) fn check_references(
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

    pub(super) fn template(
        &mut self,
        ctx: Ctx,
        scope: &Scope,
        field: &str,
        located: &Located<String>,
    ) -> Option<Template> {
        self.template_text(ctx, scope, field, &located.value, located.at)
    }

    pub(super) fn template_text(
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

    pub(super) fn value(
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

    pub(super) fn condition(
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
}
