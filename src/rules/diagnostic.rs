//! Diagnostics: what is wrong with a rule file, where, and what would be right.
//!
//! Every problem found while loading or validating rules becomes a [`Diagnostic`] naming the
//! file, line and column, the rule and field where known, a message, and often a hint. They are
//! rendered for people (with the source line and a caret) or serialized as JSON for editors, CI
//! and the admin API.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::located::Pos;

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// The file, as given on the command line or found in the rules folder.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based column; 0 when unknown.
    pub column: u32,
    /// The rule the problem is in, when it is inside one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The field, as a path from the rule (`do[0].start_flow_run.flow`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A stable short name of the kind of problem (`unknown-field`, `cron`, `template`, ...).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// What would be right, when we can tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at a position of a file.
    pub fn new(file: &Path, at: Pos, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: at.line,
            column: at.column,
            rule: None,
            field: None,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// Sets the rule name.
    pub fn in_rule(mut self, rule: Option<&str>) -> Self {
        self.rule = rule.map(str::to_owned);
        self
    }

    /// Sets the field path.
    pub fn at_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// Sets the hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the hint when there is one.
    pub fn with_optional_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// `file:line:column` (or just the file when the position is unknown).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.display().to_string()
        } else {
            format!("{}:{}:{}", self.file.display(), self.line, self.column)
        }
    }

    /// A one-line form for logs: `file:line:col: message (rule r, field f)`.
    pub fn one_line(&self) -> String {
        let mut out = format!("{}: {}", self.location(), self.message);
        match (&self.rule, &self.field) {
            (Some(rule), Some(field)) => {
                let _ = write!(out, " (rule `{rule}`, field `{field}`)");
            }
            (Some(rule), None) => {
                let _ = write!(out, " (rule `{rule}`)");
            }
            (None, Some(field)) => {
                let _ = write!(out, " (field `{field}`)");
            }
            (None, None) => {}
        }
        if let Some(hint) = &self.hint {
            let _ = write!(out, "; {hint}");
        }
        out
    }

    /// Renders the diagnostic for people, with the source line when `source` is given.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "error[{}]: {}", self.code, self.message);
        let source_line = source
            .filter(|_| self.line > 0)
            .and_then(|text| text.lines().nth(self.line as usize - 1));
        let gutter = self.line.to_string().len().max(2);
        let _ = writeln!(out, "{:gutter$}--> {}", "", self.location());
        if let Some(line_text) = source_line {
            let shown: String = line_text.chars().take(200).collect();
            let shown = shown.replace('\t', " ");
            let _ = writeln!(out, "{:gutter$} |", "");
            let _ = writeln!(out, "{:>gutter$} | {}", self.line, shown);
            let caret_column = (self.column.max(1) as usize - 1).min(shown.chars().count());
            let _ = writeln!(out, "{:gutter$} | {:caret_column$}^", "", "");
        }
        match (&self.rule, &self.field) {
            (Some(rule), Some(field)) => {
                let _ = writeln!(out, "{:gutter$} = in rule `{rule}`, field `{field}`", "");
            }
            (Some(rule), None) => {
                let _ = writeln!(out, "{:gutter$} = in rule `{rule}`", "");
            }
            (None, Some(field)) => {
                let _ = writeln!(out, "{:gutter$} = field `{field}`", "");
            }
            (None, None) => {}
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "{:gutter$} = help: {hint}", "");
        }
        out
    }
}

/// Names as a readable list: `` `a`, `b`, `c` ``.
pub fn backticked<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closest candidate to `wrong` by edit distance, when it is close enough to be a typo.
pub fn did_you_mean<'a, I>(wrong: &str, candidates: I) -> Option<String>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(wrong, candidate);
        if score > 0.8 && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.map(|(_, candidate)| format!("did you mean `{candidate}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_source_line_and_caret() {
        let source = "rules:\n  - name: a\n    on: { schedule: \"61 * * * *\" }\n";
        let diagnostic = Diagnostic::new(Path::new("r.yaml"), Pos::new(3, 19), "cron", "bad cron")
            .in_rule(Some("a"))
            .at_field("on.schedule")
            .with_hint("minutes go from 0 to 59");
        let rendered = diagnostic.render(Some(source));
        assert_eq!(
            rendered,
            "error[cron]: bad cron\n  --> r.yaml:3:19\n   |\n 3 |     on: { schedule: \"61 * * * *\" }\n   |                   ^\n   = in rule `a`, field `on.schedule`\n   = help: minutes go from 0 to 59\n"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("message_threa", ["flow", "message_thread", "state"]),
            Some("did you mean `message_thread`?".to_owned())
        );
        assert_eq!(did_you_mean("zzz", ["flow", "message_thread"]), None);
    }
}
