//! A rule file with structural problems, repaired so the rest of it can still be checked.
//!
//! `flowd check` reports every problem of a file (DESIGN 2): an unknown key or a missing field
//! must not hide the next step's bad URL. The typed model cannot be built from a file serde
//! refuses, so the text is repaired instead: an unknown key (with its value) is blanked out, and
//! the list item that holds a missing field or a wrong type is blanked out whole — a step is
//! replaced by one that does nothing (`{ log: x }`) so the next steps keep their index, a rule
//! or a test goes. The validator drops what only the repair caused. Blanking replaces every character with a space, so every line and column of what
//! is left is where the user wrote it and the semantic diagnostics point at the real text. The
//! repaired file is only ever checked, never run: its structural problems are reported as well.
//!
//! Written by hand: YAML libraries do not edit text while keeping positions, and only the
//! positions serde reports are needed here.

use super::diagnostic::Diagnostic;

/// A repaired text and the step ids that were blanked out with their items (a reference to one
/// of them is not a problem of its own: the item it names is already reported).
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// The text, every line where it was.
    pub text: String,
    /// `id:` values of the blanked items.
    pub removed_ids: Vec<String>,
}

/// Repairs `text` for `problems` (structural ones: `unknown-field`, `missing-field`, `type`);
/// `None` when a problem is not one of those or cannot be located.
pub fn repair(text: &str, problems: &[Diagnostic]) -> Option<Repaired> {
    let mut lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
    let mut removed_ids = Vec::new();
    for problem in problems {
        let line = (problem.line as usize).checked_sub(1)?;
        let column = (problem.column as usize).checked_sub(1)?;
        lines.get(line)?;
        match problem.code {
            "unknown-field" => blank_key(&mut lines, line, column)?,
            "missing-field" | "type" => {
                removed_ids.extend(blank_item(&mut lines, line, column)?);
            }
            _ => return None,
        }
    }
    let mut text: String = lines
        .iter()
        .map(|l| l.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    Some(Repaired { text, removed_ids })
}

fn indent(line: &[char]) -> Option<usize> {
    let first = line.iter().position(|c| !c.is_whitespace())?;
    // A comment line does not end a block.
    (line[first] != '#').then_some(first)
}

fn blank(line: &mut [char], from: usize, to: usize) {
    for c in line.iter_mut().take(to).skip(from) {
        *c = ' ';
    }
}

/// Blanks the key at (line, column) with its value: the rest of the line and the lines more
/// indented below it (block style), or up to the next `,` / `}` at its depth (flow style).
fn blank_key(lines: &mut [Vec<char>], line: usize, column: usize) -> Option<()> {
    let before: String = lines[line].iter().take(column).collect();
    let block = before.chars().all(|c| c == ' ' || c == '-');
    if block {
        if before.contains('-') {
            // The first key of a list item: blanking it would end the item. Give up; the item
            // is blanked whole by the caller's next round if the file still does not parse.
            return None;
        }
        let length = lines[line].len();
        blank(&mut lines[line], column, length);
        for next in lines.iter_mut().skip(line + 1) {
            match indent(next) {
                Some(at) if at <= column => break,
                _ => {
                    let length = next.len();
                    blank(next, 0, length);
                }
            }
        }
        return Some(());
    }
    // Flow style: scan to the end of this entry, across lines, minding quotes and brackets.
    let (mut l, mut c) = (line, column);
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    loop {
        let Some(&ch) = lines.get(l)?.get(c) else {
            l += 1;
            c = 0;
            continue;
        };
        match quote {
            Some('"') if ch == '\\' => {
                lines[l][c] = ' ';
                c += 1;
            }
            Some(q) if ch == q => quote = None,
            Some(_) => {}
            None => match ch {
                '"' | '\'' => quote = Some(ch),
                '{' | '[' => depth += 1,
                '}' | ']' if depth == 0 => return Some(()),
                '}' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    lines[l][c] = ' ';
                    return Some(());
                }
                _ => {}
            },
        }
        if let Some(slot) = lines[l].get_mut(c) {
            *slot = ' ';
        }
        c += 1;
    }
}

/// Blanks the block list item (`- ...`) that encloses (line, column): its dash line from the
/// dash on, and the lines more indented below. Returns the `id:` of the item if it had one.
fn blank_item(lines: &mut [Vec<char>], line: usize, column: usize) -> Option<Vec<String>> {
    // Up from the problem: the nearest `-` less indented than everything passed on the way.
    let mut bound = column + 1;
    let mut found = None;
    for l in (0..=line).rev() {
        let Some(at) = indent(&lines[l]) else {
            continue;
        };
        let limit = if l == line { column + 1 } else { bound };
        // Dashes on this line before the limit: the last one is the innermost item.
        let dash = lines[l]
            .iter()
            .take(limit)
            .enumerate()
            .skip(at)
            .take_while(|(_, c)| **c == '-' || **c == ' ')
            .filter(|(i, c)| **c == '-' && lines[l].get(i + 1).is_none_or(|n| *n == ' '))
            .map(|(i, _)| i)
            .last();
        if let Some(dash) = dash {
            found = Some((l, dash));
            break;
        }
        bound = bound.min(at);
    }
    let (start, dash) = found?;
    let mut ids = Vec::new();
    let mut take = |line: &[char], from: usize| {
        let text: String = line.iter().skip(from).collect();
        let text = text.trim_start_matches(['-', ' ']);
        if let Some(id) = text.strip_prefix("id:") {
            let id = id.trim().trim_matches(['"', '\'']);
            if !id.is_empty() {
                ids.push(id.to_owned());
            }
        }
    };
    take(&lines[start], dash);
    let length = lines[start].len();
    blank(&mut lines[start], dash, length);
    // A step keeps its place as a step that does nothing, so the steps after it keep their
    // index (`do[2]` in a diagnostic is the third step the user wrote); a rule or a test is
    // blanked out whole (they are named by name).
    if !matches!(
        owner_key(lines, start, dash).as_deref(),
        Some("rules" | "tests")
    ) {
        let placeholder: Vec<char> = "- { log: x }".chars().collect();
        let line = &mut lines[start];
        if line.len() < dash + placeholder.len() {
            line.resize(dash + placeholder.len(), ' ');
        }
        line[dash..dash + placeholder.len()].copy_from_slice(&placeholder);
    }
    for next in lines.iter_mut().skip(start + 1) {
        match indent(next) {
            Some(at) if at <= dash => break,
            Some(at) => {
                take(next, at);
                let length = next.len();
                blank(next, 0, length);
            }
            None => {
                let length = next.len();
                blank(next, 0, length);
            }
        }
    }
    Some(ids)
}

/// The key whose value is the block list with an item at (line, dash).
fn owner_key(lines: &[Vec<char>], line: usize, dash: usize) -> Option<String> {
    (0..line).rev().find_map(|l| {
        let at = indent(&lines[l])?;
        if at > dash || (at == dash && lines[l].get(at) == Some(&'-')) {
            return None;
        }
        let text: String = lines[l].iter().skip(at).collect();
        Some(
            text.trim_start_matches(['-', ' '])
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn problem(code: &'static str, line: u32, column: u32) -> Diagnostic {
        Diagnostic::new(
            Path::new("a.yaml"),
            super::super::located::Pos::new(line, column),
            code,
            "x",
        )
    }

    #[test]
    fn an_unknown_block_key_goes_with_its_value_and_nothing_moves() {
        let text = "a:\n  bogus:\n    deep: 1\n  kept: 2\n";
        let repaired = repair(text, &[problem("unknown-field", 2, 3)]).expect("repaired");
        assert_eq!(repaired.text, "a:\n        \n           \n  kept: 2\n");
    }

    #[test]
    fn an_unknown_flow_key_goes_up_to_its_comma() {
        let text = "do: [ { log: \"x, }\", frobnicate: {a: [1, 2]}, id: s } ]\n";
        let at = text.find("frobnicate").expect("found") as u32 + 1;
        let repaired = repair(text, &[problem("unknown-field", 1, at)]).expect("repaired");
        let parsed: serde_json::Value = serde_saphyr::from_str(&repaired.text).expect("still YAML");
        assert_eq!(
            parsed,
            serde_json::json!({"do": [{"log": "x, }", "id": "s"}]})
        );
    }

    #[test]
    fn a_missing_field_blanks_its_step_and_names_the_step_s_id() {
        let text = "do:\n  - id: first\n    start_flow_run: { flow: x }\n  - log: kept\n";
        let repaired = repair(text, &[problem("missing-field", 3, 21)]).expect("repaired");
        let parsed: serde_json::Value = serde_saphyr::from_str(&repaired.text).expect("still YAML");
        assert_eq!(
            parsed,
            serde_json::json!({"do": [{"log": "x"}, {"log": "kept"}]})
        );
        assert_eq!(repaired.removed_ids, vec!["first".to_owned()]);
    }
}
