//! Steps: each kind's fields, retries, `on_status` handlers.

use super::*;

impl Validator {
    // ---- steps ---------------------------------------------------------------------------------

    pub(super) fn collect_step_ids(
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

    pub(super) fn steps(
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

    pub(super) fn step(
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
            model.message_thread.is_some(),
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
                    if status.value == "deadline" && model.deadline.is_none() {
                        self.error(
                            ctx,
                            status.at,
                            &handler_field,
                            "needs_deadline",
                            "`on_status.deadline` never fires: the step has no `deadline`",
                        )
                        .hint = Some("add e.g. `deadline: 72h` to the step".to_owned());
                        continue;
                    }
                    if status.value != "deadline" && !known.contains(&status.value.as_str()) {
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

        let deadline = model.deadline.as_ref().and_then(|deadline| {
            if !matches!(present[0], "start_flow_run" | "generate_flow") {
                self.error(
                    ctx,
                    deadline.at,
                    &format!("{field}.deadline"),
                    "deadline",
                    format!("`deadline` does not apply to `{}` steps", present[0]),
                )
                .hint = Some(
                    "only `start_flow_run` and `generate_flow` start something that can be late"
                        .to_owned(),
                );
                return None;
            }
            let handled = model.on_status.as_ref().is_some_and(|handlers| {
                handlers
                    .value
                    .iter()
                    .any(|(status, _)| status.value == "deadline")
            });
            if !handled {
                self.error(
                    ctx,
                    deadline.at,
                    &format!("{field}.deadline"),
                    "unused",
                    "`deadline` does nothing without an `on_status.deadline` handler",
                )
                .hint = Some(
                    "add `on_status: { deadline: [ ... ] }` saying what happens when it is late"
                        .to_owned(),
                );
                return None;
            }
            match parse_duration(&deadline.value) {
                Ok(after) if !after.is_zero() => Some(after),
                Ok(_) => {
                    self.error(
                        ctx,
                        deadline.at,
                        &format!("{field}.deadline"),
                        "range",
                        "`deadline` must be longer than 0",
                    );
                    None
                }
                Err(reason) => {
                    self.error(
                        ctx,
                        deadline.at,
                        &format!("{field}.deadline"),
                        "duration",
                        reason,
                    )
                    .hint = Some("a duration such as `72h` or `3d`".to_owned());
                    None
                }
            }
        });
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(Step {
            deadline,
            id: model.id.as_ref().map(|id| id.value.clone()),
            at: located.at,
            condition,
            retry,
            continue_on_error: model.continue_on_error.unwrap_or(false),
            kind: kind?,
            on_status,
        })
    }

    pub(super) fn headers(
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

    pub(super) fn method(
        &mut self,
        ctx: Ctx,
        field: &str,
        method: &Located<String>,
    ) -> Option<HttpMethod> {
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

    pub(super) fn step_kind(
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
        if let Some(step) = &model.message_thread {
            let f = format!("{field}.message_thread");
            let v = &step.value;
            let channel = match &v.channel {
                Some(channel) => self.template(ctx, scope, &format!("{f}.channel"), channel),
                None => Template::compile("whatsapp").ok(),
            };
            if v.identifier.value.trim().is_empty() {
                self.error(ctx, v.identifier.at, &format!("{f}.identifier"), "empty", "`message_thread.identifier` is empty")
                    .hint = Some("for WhatsApp, the phone number without `+`, e.g. `identifier: \"{{event.data.phone}}\"`".to_owned());
            }
            let identifier = self.template(ctx, scope, &format!("{f}.identifier"), &v.identifier);
            let chatbot_paused = v
                .chatbot_paused
                .as_ref()
                .map(|paused| self.value(ctx, scope, &format!("{f}.chatbot_paused"), paused));
            return Some(StepKind::MessageThread {
                channel: channel?,
                identifier: identifier?,
                chatbot_paused: chatbot_paused.map(|p| p.ok_or(())).transpose().ok()?,
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

    pub(super) fn url(
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
}
