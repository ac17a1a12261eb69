//! Rule files: the model as written, loading, validation, templates and conditions.
//!
//! This module reads files and nothing else: no network, no tokio. [`load_rule_set`] is the one
//! entry point the CLI and the daemon use: it finds, parses and validates every rule file below
//! some paths and returns either a [`RuleSet`] or every [`Diagnostic`].

pub mod diagnostic;
pub mod duration;
pub mod expr;
pub mod load;
pub mod located;
pub mod model;
pub mod repair;
pub mod ruleset;
pub mod structure;
pub mod template;
pub mod validate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use diagnostic::Diagnostic;
pub use ruleset::{Rule, RuleSet, Step, StepKind, Trigger};

/// What loading a set of rule paths produced.
#[derive(Debug)]
pub struct LoadOutcome {
    /// The validated set, or every problem found.
    pub result: Result<RuleSet, Vec<Diagnostic>>,
    /// The text of every file read, to render diagnostics with their source lines.
    pub sources: HashMap<PathBuf, Arc<str>>,
    /// How many files were read.
    pub file_count: usize,
    /// Hash of the files read.
    pub content_hash: String,
}

impl LoadOutcome {
    /// Renders every diagnostic with its source line.
    pub fn render_diagnostics(&self, diagnostics: &[Diagnostic]) -> String {
        diagnostics
            .iter()
            .map(|d| d.render(self.sources.get(&d.file).map(|s| &**s)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Finds, parses and validates every rule file below `paths`.
pub fn load_rule_set(paths: &[PathBuf]) -> LoadOutcome {
    let loaded = load::load_paths(paths);
    let result = validate::validate(&loaded);
    LoadOutcome {
        result,
        sources: loaded
            .files
            .iter()
            .map(|f| (f.source.path.clone(), f.source.text.clone()))
            .collect(),
        file_count: loaded.files.len(),
        content_hash: loaded.content_hash,
    }
}
