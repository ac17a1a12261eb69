//! Triggers: `on:` and its forms, schedules, catch-up, `for_each`.

use super::*;

impl Validator {
    // ---- triggers ----------------------------------------------------------------------------

    pub(super) fn trigger(
        &mut self,
        ctx: Ctx,
        on: &Located<OnModel>,
        meta: &mut RuleMeta,
    ) -> Option<Trigger> {
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

    pub(super) fn catch_up_window(
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

    pub(super) fn schedule(
        &mut self,
        ctx: Ctx,
        schedule: &Located<ShortOrFull<crate::rules::model::ScheduleModel>>,
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

    pub(super) fn cron(
        &mut self,
        ctx: Ctx,
        field: &str,
        text: &str,
        at: Pos,
    ) -> Option<croner::Cron> {
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

    pub(super) fn timezone(&mut self, ctx: Ctx, zone: &Located<String>) -> Option<chrono_tz::Tz> {
        self.timezone_of(ctx, zone, "on.schedule.timezone")
    }

    pub(super) fn timezone_of(
        &mut self,
        ctx: Ctx,
        zone: &Located<String>,
        field: &str,
    ) -> Option<chrono_tz::Tz> {
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
                    field,
                    "timezone",
                    format!("unknown time zone `{}`", zone.value),
                )
                .hint = Some(hint);
                None
            }
        }
    }

    pub(super) fn every(
        &mut self,
        ctx: Ctx,
        every: &Located<ShortOrFull<crate::rules::model::EveryModel>>,
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

    pub(super) fn statuses(
        &mut self,
        ctx: Ctx,
        statuses: &Located<crate::rules::located::OneOrMany<String>>,
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

    pub(super) fn started_by(
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

    pub(super) fn for_each(
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
}
