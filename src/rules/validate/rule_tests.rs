//! A rule's `tests:`.

use super::*;

impl Validator {
    // ---- tests ---------------------------------------------------------------------------------

    pub(super) fn tests(
        &mut self,
        ctx: Ctx,
        tests: &[Located<RuleTestModel>],
        trigger: &Option<Trigger>,
    ) -> Vec<RuleTest> {
        let mut out = Vec::new();
        let mut names: HashMap<&str, Pos> = HashMap::new();
        for (index, test) in tests.iter().enumerate() {
            let field = format!("tests[{index}]");
            let model = &test.value;
            if let Some(first) = names.get(model.name.value.as_str()) {
                self.error(
                    ctx,
                    model.name.at,
                    &format!("{field}.name"),
                    "duplicate",
                    format!("duplicate test name `{}`", model.name.value),
                )
                .hint = Some(format!(
                    "the first test with this name is at line {}",
                    first.line
                ));
            } else {
                names.insert(&model.name.value, model.name.at);
            }
            let now =
                model
                    .now
                    .as_ref()
                    .and_then(|now| match DateTime::parse_from_rfc3339(&now.value) {
                        Ok(time) => Some(time.with_timezone(&Utc)),
                        Err(err) => {
                            self.error(
                                ctx,
                                now.at,
                                &format!("{field}.now"),
                                "time",
                                format!("`{}` is not an RFC 3339 time: {err}", now.value),
                            )
                            .hint = Some("e.g. `2026-03-01T08:00:00Z`".to_owned());
                            None
                        }
                    });
            let known_statuses: Vec<&str> = match trigger {
                Some(Trigger::FlowGeneration(_)) => FlowGenerationStatus::KNOWN.to_vec(),
                _ => FlowRunStatus::KNOWN
                    .iter()
                    .chain(FlowGenerationStatus::KNOWN)
                    .copied()
                    .collect(),
            };
            let mut run_updates = Vec::new();
            for (update_index, update) in model.run_updates.iter().enumerate() {
                let status = &update.value.status;
                if !known_statuses.contains(&status.value.as_str()) {
                    let hint = did_you_mean(&status.value, known_statuses.iter().copied())
                        .unwrap_or_else(|| {
                            format!("statuses are {}", FlowRunStatus::KNOWN.join(", "))
                        });
                    self.error(
                        ctx,
                        status.at,
                        &format!("{field}.run_updates[{update_index}].status"),
                        "status",
                        format!("unknown status `{}`", status.value),
                    )
                    .hint = Some(hint);
                }
                run_updates.push(RunUpdate {
                    status: status.value.clone(),
                    state: update.value.state.as_ref().map(|s| s.to_json()),
                    step: update.value.step.as_ref().map(|s| s.value.clone()),
                });
            }
            let expect = match (&model.expect.value.steps, &model.expect.value.error) {
                (Some(steps), None) => {
                    let mut expected = Vec::new();
                    for (step_index, item) in steps.value.iter().enumerate() {
                        let item_field = format!("{field}.expect.steps[{step_index}]");
                        if item.value.entries.len() != 1 {
                            self.error(
                                ctx,
                                item.at,
                                &item_field,
                                "test",
                                format!(
                                    "an expected step has exactly one key (the step kind), not {}",
                                    item.value.entries.len()
                                ),
                            )
                            .hint =
                                Some("e.g. `- notify: { body: { text: \"hi Ana\" } }`".to_owned());
                            continue;
                        }
                        let (kind, fields) = &item.value.entries[0];
                        if !StepKind::NAMES.contains(&kind.value.as_str()) {
                            let hint = did_you_mean(&kind.value, StepKind::NAMES.iter().copied())
                                .unwrap_or_else(|| {
                                    format!("step kinds are {}", StepKind::NAMES.join(", "))
                                });
                            self.error(
                                ctx,
                                kind.at,
                                &item_field,
                                "unknown-value",
                                format!("unknown step kind `{}`", kind.value),
                            )
                            .hint = Some(hint);
                            continue;
                        }
                        expected.push((kind.value.clone(), fields.to_json()));
                    }
                    Some(Expectation::Steps(expected))
                }
                (None, Some(error)) => Some(Expectation::Error(error.value.clone())),
                (Some(_), Some(_)) => {
                    self.error(
                        ctx,
                        model.expect.at,
                        &format!("{field}.expect"),
                        "test",
                        "`expect` has both `steps` and `error`",
                    )
                    .hint = Some("a test expects either the steps that run or an error".to_owned());
                    None
                }
                (None, None) => {
                    self.error(
                        ctx,
                        model.expect.at,
                        &format!("{field}.expect"),
                        "test",
                        "`expect` needs `steps` or `error`",
                    )
                    .hint = Some("e.g. `expect: { steps: [] }` when nothing must run".to_owned());
                    None
                }
            };
            if let Some(expect) = expect {
                out.push(RuleTest {
                    name: model.name.value.clone(),
                    at: test.at,
                    event: model.event.to_json(),
                    run_updates,
                    now,
                    expect,
                });
            }
        }
        out
    }
}
