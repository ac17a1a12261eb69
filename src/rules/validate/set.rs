//! The checks over the whole set: names, `started_by`, `emit` cycles.

use super::*;

impl Validator {
    // ---- the whole set ---------------------------------------------------------------------------

    pub(super) fn cross_rule_checks(&mut self, metas: &[RuleMeta]) {
        let empty = Map::new();
        let mut by_name: HashMap<&str, &RuleMeta> = HashMap::new();
        for meta in metas {
            if let Some(first) = by_name.get(meta.name.as_str()) {
                let ctx = Ctx {
                    file: &meta.file,
                    rule: Some(&meta.name),
                    vars: &empty,
                };
                self.error(
                    ctx,
                    meta.at,
                    "name",
                    "duplicate",
                    format!("duplicate rule name `{}`", meta.name),
                )
                .hint = Some(format!(
                    "the first rule with this name is at {}:{}; rule names are unique across all files",
                    first.file.display(),
                    first.at.line
                ));
            } else {
                by_name.insert(&meta.name, meta);
            }
        }

        for meta in metas {
            let Some((started_by, at, expected_kind)) = &meta.started_by else {
                continue;
            };
            let ctx = Ctx {
                file: &meta.file,
                rule: Some(&meta.name),
                vars: &empty,
            };
            let field = if *expected_kind == "start_flow_run" {
                "on.flow_run.started_by"
            } else {
                "on.flow_generation.started_by"
            };
            let Some(target) = by_name.get(started_by.rule.as_str()) else {
                let hint =
                    did_you_mean(&started_by.rule, by_name.keys().copied()).unwrap_or_else(|| {
                        "name a rule that has a `start_flow_run` or `generate_flow` step".to_owned()
                    });
                self.error(
                    ctx,
                    *at,
                    field,
                    "reference",
                    format!(
                        "`started_by` names rule `{}`, which does not exist",
                        started_by.rule
                    ),
                )
                .hint = Some(hint);
                continue;
            };
            match &started_by.step {
                Some(step) => match target.step_kinds.get(step) {
                    Some(kind) if kind == expected_kind => {}
                    Some(kind) => {
                        self.error(ctx, *at, field, "reference", format!("step `{step}` of rule `{}` is a `{kind}` step, which starts nothing this trigger sees", started_by.rule))
                            .hint = Some(format!("name a `{expected_kind}` step"));
                    }
                    None => {
                        let candidates: Vec<&str> = target
                            .step_kinds
                            .iter()
                            .filter(|(_, kind)| *kind == expected_kind)
                            .map(|(id, _)| id.as_str())
                            .collect();
                        let hint =
                            did_you_mean(step, candidates.iter().copied()).unwrap_or_else(|| {
                                if candidates.is_empty() {
                                    format!(
                                        "rule `{}` has no `{expected_kind}` step with an id",
                                        started_by.rule
                                    )
                                } else {
                                    format!(
                                        "its `{expected_kind}` steps are {}",
                                        backticked(candidates.iter().copied())
                                    )
                                }
                            });
                        self.error(
                            ctx,
                            *at,
                            field,
                            "reference",
                            format!("rule `{}` has no step `{step}`", started_by.rule),
                        )
                        .hint = Some(hint);
                    }
                },
                None => {
                    let starts = if *expected_kind == "start_flow_run" {
                        target.starts_runs
                    } else {
                        target.starts_generations
                    };
                    if !starts {
                        self.error(ctx, *at, field, "reference", format!("rule `{}` has no `{expected_kind}` step, so it starts nothing this trigger sees", started_by.rule));
                    }
                }
            }
        }

        self.cycles(metas, &by_name);
    }

    /// Rules that set each other off forever: A emits what B listens to, or B follows runs that A
    /// starts, and so on back to A.
    pub(super) fn cycles(&mut self, metas: &[RuleMeta], by_name: &HashMap<&str, &RuleMeta>) {
        let mut listeners: HashMap<&str, Vec<&str>> = HashMap::new();
        for meta in metas {
            if let Some(event_type) = &meta.event_type {
                listeners.entry(event_type).or_default().push(&meta.name);
            }
        }
        // Edges: from a rule to the rules its steps set off, with the place that causes it.
        let mut edges: HashMap<&str, Vec<(&str, Pos, &Path)>> = HashMap::new();
        for meta in metas {
            for (event_type, at) in &meta.emits {
                for listener in listeners.get(event_type.as_str()).into_iter().flatten() {
                    edges
                        .entry(&meta.name)
                        .or_default()
                        .push((listener, *at, &meta.file));
                }
            }
            if let Some((started_by, at, kind)) = &meta.started_by
                && let Some(source) = by_name.get(started_by.rule.as_str())
            {
                let starts = match &started_by.step {
                    Some(step) => source.step_kinds.get(step) == Some(kind),
                    None if *kind == "start_flow_run" => source.starts_runs,
                    None => source.starts_generations,
                };
                if starts {
                    edges
                        .entry(&source.name)
                        .or_default()
                        .push((&meta.name, *at, &meta.file));
                }
            }
        }
        let mut reported: HashSet<Vec<String>> = HashSet::new();
        let mut found = Vec::new();
        for meta in metas {
            let mut path = vec![meta.name.as_str()];
            find_cycles(&meta.name, &edges, &mut path, &mut found, 0);
        }
        let empty = Map::new();
        for cycle in found {
            let mut key: Vec<String> = cycle.iter().map(|s| s.to_string()).collect();
            key.sort();
            if !reported.insert(key) {
                continue;
            }
            let first = cycle[0];
            let second = cycle.get(1).copied().unwrap_or(first);
            let Some((_, at, file)) = edges
                .get(first)
                .and_then(|targets| targets.iter().find(|(target, _, _)| *target == second))
            else {
                continue;
            };
            let ctx = Ctx {
                file,
                rule: Some(first),
                vars: &empty,
            };
            let mut chain = cycle.clone();
            chain.push(first);
            self.error(ctx, *at, "", "cycle", format!("rules set each other off in a cycle: {}", chain.join(" → ")))
                .hint = Some("an `emit` or `started_by` chain that comes back to where it started would run forever; break the chain or add an `if` that ends it, in a separate rule".to_owned());
        }
    }
}

/// Depth-first search for paths that come back to `path[0]`.
fn find_cycles<'a>(
    node: &'a str,
    edges: &HashMap<&'a str, Vec<(&'a str, Pos, &'a Path)>>,
    path: &mut Vec<&'a str>,
    found: &mut Vec<Vec<&'a str>>,
    depth: usize,
) {
    if depth > 64 {
        return;
    }
    for (next, _, _) in edges.get(node).into_iter().flatten() {
        if *next == path[0] {
            found.push(path.clone());
        } else if !path.contains(next) && *next > path[0] {
            // Only extend through nodes "after" the start, so each cycle is found from its
            // smallest member once.
            path.push(next);
            find_cycles(next, edges, path, found, depth + 1);
            path.pop();
        }
    }
}
