//! Flow control per key (DESIGN 2.5): `key`, `concurrency`, `throttle`, `quiet_hours`,
//! `expires_after`, `cancel_on` and `on_cancel`.

use super::*;
use crate::rules::model::{ConcurrencyMode, DebounceKeep, LimitOrFull, OnExcess};
use crate::rules::ruleset::{
    CancelOn, Concurrency, Debounce, FlowControl, QuietHours, Throttle, Zone,
};

/// The longest `throttle.period` or `expires_after`: a year.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

impl Validator {
    /// The rule's flow-control keys. `scope` is the rule-level scope (event, item, vars);
    /// `schedule_zone` the zone of a `schedule` trigger (the default of `quiet_hours`).
    pub(super) fn flow_control(
        &mut self,
        ctx: Ctx,
        model: &RuleModel,
        scope: &Scope,
        schedule_zone: Option<chrono_tz::Tz>,
        meta: &mut RuleMeta,
    ) -> FlowControl {
        if let Some(key) = model.key.as_ref().filter(|key| key.value.trim().is_empty()) {
            self.error(ctx, key.at, "key", "empty", "`key` is empty: every execution would share one group")
                .hint = Some("key the executions by what they are about, e.g. `key: \"{{event.data.candidate_id}}\"`".to_owned());
        }
        let mut flow = FlowControl {
            key: model
                .key
                .as_ref()
                .and_then(|key| self.template(ctx, scope, "key", key)),
            ..FlowControl::default()
        };
        if let Some(concurrency) = &model.concurrency {
            let (limit, mode) = match &concurrency.value {
                LimitOrFull::Short(limit) => (Some((*limit, concurrency.at)), None),
                LimitOrFull::Full(full) => (
                    full.limit.as_ref().map(|limit| (limit.value, limit.at)),
                    full.mode.as_ref(),
                ),
            };
            let field = match &concurrency.value {
                LimitOrFull::Short(_) => "concurrency",
                LimitOrFull::Full(_) => "concurrency.limit",
            };
            let limit = match limit {
                Some((0, at)) => {
                    self.error(ctx, at, field, "range", "`concurrency` must be at least 1")
                        .hint = Some("leave it out for no limit".to_owned());
                    None
                }
                Some((limit, _)) => Some(limit),
                None => Some(1),
            };
            let mode_value = mode.map_or(ConcurrencyMode::Queue, |mode| mode.value);
            if let Some(mode) = mode
                && mode.value != ConcurrencyMode::Queue
                && model.key.is_none()
            {
                let name = match mode.value {
                    ConcurrencyMode::Skip => "skip",
                    _ => "cancel_previous",
                };
                self.error(
                    ctx,
                    mode.at,
                    "concurrency.mode",
                    "needs_key",
                    format!("`concurrency.mode: {name}` needs a `key`"),
                )
                .hint = Some(format!(
                    "without `key` the whole rule is one group, and `{name}` would act on every execution of it; add e.g. `key: \"{{{{event.data.candidate_id}}}}\"`"
                ));
            }
            flow.concurrency = limit.map(|limit| Concurrency {
                limit,
                mode: mode_value,
            });
        }
        if let Some(throttle) = &model.throttle {
            self.needs_key(ctx, model, throttle.at, "throttle");
            if throttle.value.limit.value == 0 {
                self.error(
                    ctx,
                    throttle.value.limit.at,
                    "throttle.limit",
                    "range",
                    "`throttle.limit` must be at least 1",
                );
            }
            let period = self.period(ctx, &throttle.value.period, "throttle.period");
            if let Some(period) = period
                && throttle.value.limit.value > 0
            {
                flow.throttle = Some(Throttle {
                    limit: throttle.value.limit.value,
                    period,
                    on_excess: throttle
                        .value
                        .on_excess
                        .as_ref()
                        .map_or(OnExcess::Delay, |on| on.value),
                });
            }
        }
        if let Some(debounce) = &model.debounce {
            self.needs_key(ctx, model, debounce.at, "debounce");
            let period = self.period(ctx, &debounce.value.period, "debounce.period");
            let max_wait = debounce
                .value
                .max_wait
                .as_ref()
                .map(|max_wait| self.period(ctx, max_wait, "debounce.max_wait"));
            if let (Some(period), Some(Some(max_wait))) = (period, max_wait)
                && max_wait < period
                && let Some(at) = debounce.value.max_wait.as_ref().map(|m| m.at)
            {
                self.error(
                    ctx,
                    at,
                    "debounce.max_wait",
                    "range",
                    "`debounce.max_wait` is shorter than `debounce.period`",
                )
                .hint = Some(
                    "`max_wait` bounds a window of several periods; make it at least the period"
                        .to_owned(),
                );
            }
            if let Some(period) = period
                && !matches!(max_wait, Some(None))
            {
                flow.debounce = Some(Debounce {
                    period,
                    keep: debounce
                        .value
                        .keep
                        .as_ref()
                        .map_or(DebounceKeep::Last, |keep| keep.value),
                    max_wait: max_wait.flatten(),
                });
            }
        }
        if let Some(quiet) = &model.quiet_hours {
            let from = self.time_of_day(ctx, &quiet.value.from, "quiet_hours.from");
            let to = self.time_of_day(ctx, &quiet.value.to, "quiet_hours.to");
            if let (Some(from), Some(to)) = (from, to)
                && from == to
            {
                self.error(
                    ctx,
                    quiet.value.to.at,
                    "quiet_hours.to",
                    "empty",
                    format!(
                        "the quiet hours from {} to {} are empty",
                        quiet.value.from.value, quiet.value.to.value
                    ),
                )
                .hint = Some(
                    "`to` is when the window ends; a window across midnight is written `from: \"21:00\", to: \"08:00\"`"
                        .to_owned(),
                );
            }
            let zone = match &quiet.value.timezone {
                None => Some(Zone::Fixed(schedule_zone.unwrap_or(chrono_tz::UTC))),
                Some(zone) if zone.value.contains("{{") => self
                    .template(ctx, scope, "quiet_hours.timezone", zone)
                    .map(Zone::Template),
                Some(zone) => self
                    .timezone_of(ctx, zone, "quiet_hours.timezone")
                    .map(Zone::Fixed),
            };
            if let (Some(from), Some(to), Some(timezone)) = (from, to, zone)
                && from != to
            {
                flow.quiet_hours = Some(QuietHours {
                    from,
                    to,
                    timezone,
                    fallback: schedule_zone.unwrap_or(chrono_tz::UTC),
                });
            }
        }
        match (&model.idempotency_key, &model.idempotency_window) {
            (Some(key), window) => {
                let template = self.template(ctx, scope, "idempotency_key", key);
                let window = match window {
                    Some(window) => self.period(ctx, window, "idempotency_window"),
                    None => Some(Duration::from_secs(24 * 3600)),
                };
                if let (Some(template), Some(window)) = (template, window) {
                    flow.idempotency = Some((template, window));
                }
            }
            (None, Some(window)) => {
                self.error(
                    ctx,
                    window.at,
                    "idempotency_window",
                    "needs_key",
                    "`idempotency_window` needs an `idempotency_key`",
                )
                .hint = Some("say what makes two events the same, e.g. `idempotency_key: \"{{event.data.application_id}}\"`".to_owned());
            }
            (None, None) => {}
        }
        if let Some(expires) = &model.expires_after {
            flow.expires_after = self.period(ctx, expires, "expires_after");
        }
        if let Some(cancel_on) = &model.cancel_on {
            self.needs_key(ctx, model, cancel_on.at, "cancel_on");
            // The cancelling event is an external event: its scope is `event` and `vars`.
            let event_scope = Scope {
                all_steps: scope.all_steps.clone(),
                ..Scope::default()
            };
            for (index, entry) in cancel_on.value.iter().enumerate() {
                let field = format!("cancel_on[{index}]");
                let event = entry.value.event.value.trim();
                if event.is_empty() {
                    self.error(
                        ctx,
                        entry.value.event.at,
                        &format!("{field}.event"),
                        "empty",
                        "`cancel_on` needs the event type that cancels",
                    );
                }
                let key =
                    self.template(ctx, &event_scope, &format!("{field}.key"), &entry.value.key);
                let condition = entry.value.condition.as_ref().and_then(|condition| {
                    self.condition(ctx, &event_scope, &format!("{field}.if"), condition)
                });
                if entry.value.condition.is_some() && condition.is_none() {
                    continue;
                }
                if let Some(key) = key
                    && !event.is_empty()
                {
                    flow.cancel_on.push(CancelOn {
                        event: event.to_owned(),
                        key,
                        condition,
                    });
                }
            }
        }
        if let Some(on_cancel) = &model.on_cancel {
            if model.cancel_on.is_none()
                && !flow
                    .concurrency
                    .is_some_and(|c| c.mode == ConcurrencyMode::CancelPrevious)
            {
                self.error(
                    ctx,
                    on_cancel.at,
                    "on_cancel",
                    "unused",
                    "`on_cancel` never runs: nothing cancels this rule's executions",
                )
                .hint = Some(
                    "add `cancel_on`, or `concurrency: { mode: cancel_previous }` with a `key`"
                        .to_owned(),
                );
            }
            // The steps of the cancelled execution that ran are in `steps.*`; which ones ran
            // is known only then, so every step of the rule is visible here.
            let mut cancel_scope = Scope {
                has_item: scope.has_item,
                visible_steps: scope.all_steps.iter().cloned().collect(),
                all_steps: scope.all_steps.clone(),
                ..Scope::default()
            };
            flow.on_cancel =
                self.steps(ctx, &on_cancel.value, "on_cancel", &mut cancel_scope, meta);
        }
        let plain = |template: &crate::rules::template::Template| {
            template
                .references()
                .iter()
                .all(|reference| !matches!(reference.root(), "now" | "secrets"))
        };
        flow.plain_templates = flow.key.as_ref().is_none_or(plain)
            && flow.idempotency.as_ref().is_none_or(|(t, _)| plain(t))
            && flow
                .quiet_hours
                .as_ref()
                .is_none_or(|quiet| match &quiet.timezone {
                    Zone::Template(template) => plain(template),
                    Zone::Fixed(_) => true,
                });
        flow
    }

    fn needs_key(&mut self, ctx: Ctx, model: &RuleModel, at: Pos, name: &str) {
        if model.key.is_none() {
            self.error(
                ctx,
                at,
                name,
                "needs_key",
                format!("`{name}` needs a `key`"),
            )
            .hint = Some(
                "say what the executions are grouped by, e.g. `key: \"{{event.data.candidate_id}}\"`"
                    .to_owned(),
            );
        }
    }

    fn period(&mut self, ctx: Ctx, text: &Located<String>, field: &str) -> Option<Duration> {
        match parse_duration(&text.value) {
            Ok(period) if period.is_zero() => {
                self.error(
                    ctx,
                    text.at,
                    field,
                    "range",
                    format!("`{field}` must be longer than 0"),
                );
                None
            }
            Ok(period) if period > MAX_PERIOD => {
                self.error(
                    ctx,
                    text.at,
                    field,
                    "range",
                    format!("`{field}` is longer than a year"),
                );
                None
            }
            Ok(period) => Some(period),
            Err(reason) => {
                self.error(ctx, text.at, field, "duration", reason).hint =
                    Some("a duration such as `10m`, `24h` or `2d`".to_owned());
                None
            }
        }
    }

    fn time_of_day(
        &mut self,
        ctx: Ctx,
        text: &Located<String>,
        field: &str,
    ) -> Option<chrono::NaiveTime> {
        match chrono::NaiveTime::parse_from_str(text.value.trim(), "%H:%M") {
            Ok(time) => Some(time),
            Err(_) => {
                self.error(
                    ctx,
                    text.at,
                    field,
                    "time",
                    format!("`{}` is not a time of day", text.value),
                )
                .hint = Some("write it `HH:MM`, 24-hour, e.g. `21:00` or `08:30`".to_owned());
                None
            }
        }
    }
}
