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

/// A repaired text, and what the repair took away that the checks of the rest would miss: a
/// reference to a blanked step is not a problem of its own (the step's is reported), nor is a
/// mapping left empty by blanking its only key (`on: { evnt: x }` has a trigger, misspelt).
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// The text, every line where it was.
    pub text: String,
    /// (rule, `id:`) of the blanked items.
    pub removed_ids: Vec<(Option<String>, String)>,
    /// (rule, field path) of the mappings left empty.
    pub emptied: Vec<(Option<String>, String)>,
}

/// The lines of a text as YAML counts them: `\r\n`, `\n` and a lone `\r` each end one.
fn yaml_lines(text: &str) -> Vec<Vec<char>> {
    let mut lines = vec![Vec::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(Vec::new());
            }
            '\n' => lines.push(Vec::new()),
            c => lines.last_mut().expect("never empty").push(c),
        }
    }
    lines
}

/// The field path that holds `field` (`on.evnt` → `on`, `do[0].retyr` → `do[0]`).
fn parent_field(field: &str) -> String {
    match field.rfind(['.', '[']) {
        Some(at) => field[..at].to_owned(),
        None => String::new(),
    }
}

/// Repairs `text` for `problems` (structural ones: `unknown-field`, `missing-field`, `type`);
/// `None` when a problem is not one of those or cannot be located.
pub fn repair(text: &str, problems: &[Diagnostic]) -> Option<Repaired> {
    let mut lines = yaml_lines(text);
    // The break that ends the last line starts no line of its own.
    if lines.len() > 1 && lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    let mut removed_ids = Vec::new();
    let mut emptied = Vec::new();
    for problem in problems {
        let line = (problem.line as usize).checked_sub(1)?;
        let column = (problem.column as usize).checked_sub(1)?;
        lines.get(line)?;
        match problem.code {
            "unknown-field" => {
                if blank_key(&mut lines, line, column)? {
                    let field = problem.field.as_deref().unwrap_or_default();
                    emptied.push((problem.rule.clone(), parent_field(field)));
                }
            }
            "missing-field" | "type" => {
                let ids = blank_item(&mut lines, line, column)?;
                removed_ids.extend(ids.into_iter().map(|id| (problem.rule.clone(), id)));
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
    Some(Repaired {
        text,
        removed_ids,
        emptied,
    })
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
/// Returns whether the mapping that held it is empty now.
fn blank_key(lines: &mut [Vec<char>], line: usize, column: usize) -> Option<bool> {
    let before: String = lines[line].iter().take(column).collect();
    // A key first on its line is block style, unless the line continues a flow mapping.
    let block = before.chars().all(|c| c == ' ' || c == '-')
        && !matches!(previous_significant(lines, line, column), Some(',' | '{'));
    if block {
        // The first key of a list item (`- retyr: 2`) goes too; the dash stays, and the item's
        // other keys below it keep it a mapping.
        let length = lines[line].len();
        blank(&mut lines[line], column, length);
        let mut after = None;
        for next in lines.iter_mut().skip(line + 1) {
            match indent(next) {
                // A list may sit at its key's indentation (`labels:` then `- one`).
                Some(at) if at < column || (at == column && next[at] != '-') => {
                    after = Some(at);
                    break;
                }
                _ => {
                    let length = next.len();
                    blank(next, 0, length);
                }
            }
        }
        // Empty now: the key was the mapping's first (the line above is its parent key, less
        // indented) and its last (nothing as indented after it). The first key of a list item
        // leaves the item, not a mapping to report empty.
        let first = (0..line)
            .rev()
            .find_map(|l| indent(&lines[l]))
            .is_some_and(|at| at < column);
        let last = after.is_none_or(|at| at < column);
        return Some(!before.contains('-') && first && last);
    }
    // Flow style: scan to the end of this entry, across lines, minding quotes, brackets and
    // comments. A quote opens a quoted scalar only where a scalar starts (`don't` is plain).
    let (mut l, mut c) = (line, column);
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    let end;
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
                '#' if previous == ' ' || previous == '\t' || c == 0 => {
                    // A comment: left as it is, the scan goes on at the next line.
                    l += 1;
                    c = 0;
                    previous = ' ';
                    continue;
                }
                '"' | '\'' if matches!(previous, ' ' | '\t' | ':' | ',' | '{' | '[') => {
                    quote = Some(ch)
                }
                '{' | '[' => depth += 1,
                '}' | ']' if depth == 0 => {
                    end = (l, c);
                    break;
                }
                '}' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    lines[l][c] = ' ';
                    end = (l, c + 1);
                    break;
                }
                _ => {}
            },
        }
        if !ch.is_whitespace() {
            previous = ch;
        } else if quote.is_none() {
            previous = ' ';
        }
        if let Some(slot) = lines[l].get_mut(c) {
            *slot = ' ';
        }
        c += 1;
    }
    // Empty now: `{` before it and `}` after it, nothing else.
    let before = previous_significant(lines, line, column);
    let after = next_significant(lines, end.0, end.1);
    Some(before == Some('{') && after == Some('}'))
}

fn previous_significant(lines: &[Vec<char>], line: usize, column: usize) -> Option<char> {
    let mut l = line;
    let mut c = column;
    loop {
        if let Some(found) = lines[l][..c.min(lines[l].len())]
            .iter()
            .rev()
            .find(|ch| !ch.is_whitespace())
        {
            return Some(*found);
        }
        l = l.checked_sub(1)?;
        c = lines[l].len();
    }
}

fn next_significant(lines: &[Vec<char>], line: usize, column: usize) -> Option<char> {
    let mut l = line;
    let mut c = column;
    loop {
        if let Some(found) = lines.get(l)?.iter().skip(c).find(|ch| !ch.is_whitespace()) {
            return Some(*found);
        }
        l += 1;
        c = 0;
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
    let owner = owner_key(lines, start, dash);
    let owner_name = owner.as_ref().map(|(key, _)| key.as_str());
    // Steps are the lists of `do` and of `on_status.<status>`.
    let is_steps = owner_name == Some("do")
        || owner.as_ref().is_some_and(|(_, owner_line)| {
            parent_key(lines, *owner_line).as_deref() == Some("on_status")
        });
    if is_steps {
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
    // The last test gone: `tests:` goes too (a key with nothing is a type error of its own).
    if owner_name == Some("tests")
        && let Some((_, owner_line)) = owner
        && let Some(at) = indent(&lines[owner_line])
        && lines[owner_line + 1..]
            .iter()
            .map(|l| indent(l))
            .take_while(|i| i.is_none_or(|i| i > at))
            .all(|i| i.is_none())
    {
        let length = lines[owner_line].len();
        blank(&mut lines[owner_line], at, length);
    }
    Some(ids)
}

/// The key written on a line from column `at` (`- name: x` → `name`).
fn key_at(line: &[char], at: usize) -> String {
    let text: String = line.iter().skip(at).collect();
    text.trim_start_matches(['-', ' '])
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The key of the mapping that holds the key on `line` (the nearest less indented line above).
fn parent_key(lines: &[Vec<char>], line: usize) -> Option<String> {
    let at = indent(&lines[line])?;
    (0..line).rev().find_map(|l| {
        let above = indent(&lines[l])?;
        (above < at).then(|| key_at(&lines[l], above))
    })
}

/// The key whose value is the block list with an item at (line, dash), and its line.
fn owner_key(lines: &[Vec<char>], line: usize, dash: usize) -> Option<(String, usize)> {
    (0..line).rev().find_map(|l| {
        let at = indent(&lines[l])?;
        if at > dash || (at == dash && lines[l].get(at) == Some(&'-')) {
            return None;
        }
        Some((key_at(&lines[l], at), l))
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
        assert_eq!(repaired.removed_ids, vec![(None, "first".to_owned())]);
    }
}
