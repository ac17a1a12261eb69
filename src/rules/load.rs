//! Finding and parsing rule files.
//!
//! A rules folder is scanned recursively, following symlinks (Kubernetes mounts a ConfigMap as
//! symlinks into a hidden `..data` folder), skipping hidden entries and editor leftovers. Each
//! `*.yaml`/`*.yml` file is read with a size limit and parsed with serde-saphyr under budgets,
//! so a hostile file (an alias bomb, deep nesting, megabytes of garbage) is refused with a clear
//! message instead of exhausting the daemon. No validation beyond the YAML shape happens here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::diagnostic::{Diagnostic, backticked, did_you_mean};
use super::located::Pos;
use super::model::RuleFileModel;

/// The largest rule file flowd reads. Real rule files are a few kilobytes; 10,000 rules spread
/// over 100 files are about 60 KiB each.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Deepest folder nesting followed below the rules folder (guards against symlink loops too).
const MAX_FOLDER_DEPTH: usize = 16;

/// One rule file read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path, as found.
    pub path: PathBuf,
    /// The text; empty when the file could not be read as UTF-8.
    pub text: Arc<str>,
}

/// A parsed rule file with its source.
#[derive(Debug, Clone)]
pub struct ParsedFile {
    /// The source.
    pub source: SourceFile,
    /// The model, when the file parsed — or, when it did not, of its repaired text (see
    /// [`super::repair`]), so its other problems are still found.
    pub model: Option<RuleFileModel>,
    /// Set when `model` is of the repaired text: what the repair took away.
    pub repaired: Option<Repairs>,
}

/// What repairing a file took away (see [`super::repair::Repaired`]), over every round.
#[derive(Debug, Clone, Default)]
pub struct Repairs {
    /// (rule, step id) of blanked steps.
    pub removed_ids: Vec<(Option<String>, String)>,
    /// (rule, field path) of mappings left empty.
    pub emptied: Vec<(Option<String>, String)>,
}

/// The result of reading a set of paths: every file found, the diagnostics of those that did
/// not parse, and a hash of everything read.
#[derive(Debug, Default)]
pub struct LoadedFiles {
    /// The files in a stable order (sorted by path).
    pub files: Vec<ParsedFile>,
    /// Problems found while reading and parsing.
    pub diagnostics: Vec<Diagnostic>,
    /// SHA-256 over paths and contents, hex; equal hashes mean an identical rule set on disk.
    pub content_hash: String,
}

/// Whether a directory entry name is something flowd must not read: hidden files and folders
/// (this covers `..data`, `..2025_01_01_...` and `.a.yaml.swp`), and editor leftovers.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || (name.starts_with('#') && name.ends_with('#'))
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name.ends_with(".bak")
        || name.ends_with(".orig")
}

/// Whether a file name is a rule file name.
pub fn is_rule_file_name(name: &str) -> bool {
    !is_ignored_name(name) && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Lists the rule files below `paths` (files are taken as given, folders are walked).
pub fn find_rule_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Diagnostic>) {
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let mut visited = HashSet::new();
                walk_folder(path, 0, &mut visited, &mut files, &mut diagnostics);
            }
            Ok(_) => files.push(path.clone()),
            Err(err) => diagnostics.push(Diagnostic::new(
                path,
                Pos::default(),
                "io",
                format!("cannot read `{}`: {err}", path.display()),
            )),
        }
    }
    files.sort();
    files.dedup();
    (files, diagnostics)
}

fn walk_folder(
    folder: &Path,
    depth: usize,
    visited: &mut HashSet<PathBuf>,
    files: &mut Vec<PathBuf>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    // Canonical paths stop symlink loops; depth stops pathological nesting.
    let canonical = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    if depth > MAX_FOLDER_DEPTH || !visited.insert(canonical) {
        return;
    }
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(err) => {
            diagnostics.push(Diagnostic::new(
                folder,
                Pos::default(),
                "io",
                format!("cannot read folder `{}`: {err}", folder.display()),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_ignored_name(name) {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks: a symlinked file or folder counts as what it points to.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk_folder(&path, depth + 1, visited, files, diagnostics),
            Ok(meta) if meta.is_file() && is_rule_file_name(name) => files.push(path),
            Ok(_) => {}
            // A dangling symlink mid-swap is not an error; the next rescan sees the new state.
            Err(_) => {}
        }
    }
}

/// Stack size of the threads that parse and validate rule files. Deserializing nested YAML
/// recurses; within the depth budget a debug build needs more than the 2 MiB a spawned thread
/// gets by default, and a stack overflow would abort the daemon, so these threads get their own.
pub const PARSER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Runs `work` over contiguous chunks of `items` on up to one thread per core (each with a
/// [`PARSER_STACK_BYTES`] stack) and returns the results in the order of the chunks.
pub fn on_parser_threads<T, R, F>(items: &[T], work: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&[T]) -> R + Sync,
{
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(items.len().max(1));
    let chunk_size = items.len().div_ceil(threads).max(1);
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk_size)
            .map(|chunk| {
                std::thread::Builder::new()
                    .name("flowd-rules".to_owned())
                    .stack_size(PARSER_STACK_BYTES)
                    .spawn_scoped(scope, move || work(chunk))
            })
            .collect();
        handles
            .into_iter()
            .zip(items.chunks(chunk_size))
            .map(|(handle, chunk)| match handle {
                Ok(handle) => match handle.join() {
                    Ok(result) => result,
                    // A panic is a bug; resurface it rather than hide it.
                    Err(panic) => std::panic::resume_unwind(panic),
                },
                // No thread could be spawned: do the work here rather than not at all.
                Err(_) => work(chunk),
            })
            .collect()
    })
}

/// A digest of the rule files below `paths` — their names and bytes, without parsing — so that
/// the periodic rescan can tell in milliseconds that nothing changed since the last load
/// (parsing and validating 10,000 rules takes over a second of CPU).
pub fn folder_digest(paths: &[PathBuf]) -> String {
    let (found, diagnostics) = find_rule_files(paths);
    let mut hasher = Sha256::new();
    for path in &found {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update([0]);
        match std::fs::read(path) {
            Ok(bytes) => hasher.update(&bytes),
            Err(err) => hasher.update(err.to_string().as_bytes()),
        }
        hasher.update([0]);
    }
    for diagnostic in &diagnostics {
        hasher.update(diagnostic.one_line().as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Reads and parses every rule file below `paths`, in parallel.
pub fn load_paths(paths: &[PathBuf]) -> LoadedFiles {
    let (found, mut diagnostics) = find_rule_files(paths);
    let parsed: Vec<Vec<(ParsedFile, Vec<Diagnostic>)>> = on_parser_threads(&found, |chunk| {
        chunk.iter().map(|path| load_file(path)).collect()
    });
    let mut hasher = Sha256::new();
    let mut files = Vec::with_capacity(found.len());
    for (file, problem) in parsed.into_iter().flatten() {
        hasher.update(file.source.path.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(file.source.text.as_bytes());
        hasher.update([0]);
        diagnostics.extend(problem);
        files.push(file);
    }
    LoadedFiles {
        files,
        diagnostics,
        content_hash: hex::encode(hasher.finalize()),
    }
}

fn load_file(path: &Path) -> (ParsedFile, Vec<Diagnostic>) {
    let (source, read_problem) = read_source(path);
    if let Some(problem) = read_problem {
        return (
            ParsedFile {
                source,
                model: None,
                repaired: None,
            },
            vec![problem],
        );
    }
    match parse_source(&source) {
        Ok(model) => (
            ParsedFile {
                source,
                model: Some(model),
                repaired: None,
            },
            Vec::new(),
        ),
        Err(problem) => {
            let problems = every_key_problem(&source, problem);
            let (model, repaired) = match repaired_model(&source, &problems) {
                Some((model, removed)) => (Some(model), Some(removed)),
                None => (None, None),
            };
            (
                ParsedFile {
                    source,
                    model,
                    repaired,
                },
                problems,
            )
        }
    }
}

/// The model of the file with its structural problems blanked out (see [`super::repair`]),
/// and the step ids blanked out with them; `None` when the problems are of another kind or the
/// file does not parse after a few rounds (a repair may uncover what it removed the parent of).
fn repaired_model(
    source: &SourceFile,
    problems: &[Diagnostic],
) -> Option<(RuleFileModel, Repairs)> {
    let structural = |d: &Diagnostic| matches!(d.code, "unknown-field" | "missing-field" | "type");
    if problems.is_empty() || !problems.iter().all(structural) {
        return None;
    }
    let mut text = source.text.to_string();
    let mut to_repair = problems.to_vec();
    let mut removed = Repairs::default();
    for _ in 0..4 {
        let repaired = super::repair::repair(&text, &to_repair)?;
        removed.removed_ids.extend(repaired.removed_ids);
        removed.emptied.extend(repaired.emptied);
        let attempt = SourceFile {
            path: source.path.clone(),
            text: Arc::from(repaired.text.as_str()),
        };
        match parse_source(&attempt) {
            Ok(model) => return Some((model, removed)),
            Err(problem) => {
                to_repair = every_key_problem(&attempt, problem);
                if !to_repair.iter().all(structural) {
                    return None;
                }
                text = repaired.text;
            }
        }
    }
    None
}

/// serde reports the first unknown or missing key; the file's every one comes from walking it
/// against the schema ([`super::structure`]). serde's own diagnostic is kept when the walk
/// did not find it (another kind of problem, or one the walk cannot see).
fn every_key_problem(source: &SourceFile, first: Diagnostic) -> Vec<Diagnostic> {
    if !matches!(first.code, "unknown-field" | "missing-field" | "type") {
        return vec![first];
    }
    let Ok(tree) = serde_saphyr::from_str_with_options::<
        super::located::Located<super::located::ValueModel>,
    >(&source.text, parse_options()) else {
        return vec![first];
    };
    let mut problems: Vec<Diagnostic> = super::structure::key_problems(&source.path, &tree)
        .into_iter()
        .map(|d| match d.rule {
            // Named by the walk, from the rule's own `name` (wherever it is written).
            Some(_) => d,
            None => {
                let rule = enclosing_rule_name(&source.text, d.line);
                d.in_rule(rule.as_deref())
            }
        })
        .collect();
    if !problems
        .iter()
        .any(|found| super::structure::same_problem(found, &first))
    {
        problems.push(first);
        problems.sort_by_key(|d| (d.line, d.column));
    }
    problems
}

/// Reads a file, refusing what is too large or not UTF-8.
fn read_source(path: &Path) -> (SourceFile, Option<Diagnostic>) {
    let empty = |problem: Diagnostic| {
        (
            SourceFile {
                path: path.to_path_buf(),
                text: Arc::from(""),
            },
            Some(problem),
        )
    };
    let size = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(err) => {
            return empty(Diagnostic::new(
                path,
                Pos::default(),
                "io",
                format!("cannot read the file: {err}"),
            ));
        }
    };
    if size > MAX_FILE_BYTES {
        return empty(
            Diagnostic::new(
                path,
                Pos::default(),
                "too-large",
                format!(
                    "the file is {:.1} MiB; rule files may be at most {} MiB",
                    size as f64 / (1024.0 * 1024.0),
                    MAX_FILE_BYTES / (1024 * 1024)
                ),
            )
            .with_hint("split the rules over several files"),
        );
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            return empty(Diagnostic::new(
                path,
                Pos::default(),
                "io",
                format!("cannot read the file: {err}"),
            ));
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => (
            SourceFile {
                path: path.to_path_buf(),
                text: Arc::from(text),
            },
            None,
        ),
        Err(err) => {
            let offset = err.utf8_error().valid_up_to();
            let valid = &err.as_bytes()[..offset];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            let column = valid.iter().rev().take_while(|b| **b != b'\n').count() + 1;
            empty(
                Diagnostic::new(
                    path,
                    Pos::new(line as u32, column as u32),
                    "encoding",
                    format!("the file is not valid UTF-8 (invalid byte at offset {offset})"),
                )
                .with_hint("save the file as UTF-8"),
            )
        }
    }
}

/// The YAML options flowd parses rule files with: strict booleans (no `yes`/`no` surprises),
/// duplicate keys refused, and budgets that stop alias bombs and deep nesting early.
fn parse_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 48;
    budget.max_nodes = 500_000;
    budget.max_events = 2_000_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize;
    budget.flow_nesting_limit = 64;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    // Aliases are rare in rule files; an alias bomb replays events, so cap the replay early.
    options.alias_limits.max_total_replayed_events = 50_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.with_snippet = false;
    options
}

/// Each rule of a parsed source as plain JSON (the YAML as written, aliases resolved), in file
/// order: what a rule version is made of (see [`crate::rules::ruleset::Rule::version`]).
pub fn raw_rules(source: &SourceFile) -> Vec<serde_json::Value> {
    match serde_saphyr::from_str_with_options::<serde_json::Value>(&source.text, parse_options()) {
        Ok(serde_json::Value::Object(mut file)) => match file.remove("rules") {
            Some(serde_json::Value::Array(rules)) => rules,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Parses one source into the rule file model.
pub fn parse_source(source: &SourceFile) -> Result<RuleFileModel, Diagnostic> {
    if source.text.trim().is_empty() || is_only_comments(&source.text) {
        return Err(
            Diagnostic::new(&source.path, Pos::new(1, 1), "empty", "the file is empty")
                .with_hint("a rule file holds `rules:` (a list of rules) and optionally `vars:`"),
        );
    }
    serde_saphyr::from_str_with_options::<RuleFileModel>(&source.text, parse_options()).map_err(
        |err| {
            let mut diagnostic = yaml_diagnostic(&source.path, &err);
            if let serde_saphyr::Error::DuplicateMappingKey { key: Some(key), .. } =
                err.without_snippet()
            {
                diagnostic.message = format!("the key `{key}` appears twice in this mapping");
                diagnostic.hint = Some(
                    match first_use(&source.text, key, diagnostic.line, diagnostic.column) {
                        Some(line) => format!(
                            "it is first set at line {line}; each key may appear once in a mapping"
                        ),
                        None => "each key may appear once in a mapping".to_owned(),
                    },
                );
            }
            let rule = enclosing_rule_name(&source.text, diagnostic.line);
            diagnostic.in_rule(rule.as_deref())
        },
    )
}

/// The line where `key` is first set in the mapping whose duplicate is at (line, column): the
/// nearest line above at the same column that sets it (block mappings; flow ones on one line).
fn first_use(text: &str, key: &str, line: u32, column: u32) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let at = (line as usize).checked_sub(1)?;
    let indent = (column as usize).checked_sub(1)?;
    for index in (0..at).rev() {
        let candidate = lines.get(index)?;
        let leading = candidate.len() - candidate.trim_start_matches([' ', '-']).len();
        if leading < indent
            && !candidate.trim().is_empty()
            && !candidate.trim_start().starts_with('#')
        {
            // Left the mapping (a shallower line).
            if !candidate[leading..].starts_with(&format!("{key}:")) {
                return None;
            }
        }
        if leading == indent {
            if candidate[leading..].starts_with(&format!("{key}:")) {
                return Some(index + 1);
            }
            // `- name: ...`: the first line of this mapping (a list item); above is another.
            if candidate.trim_start_matches(' ').starts_with('-') {
                return None;
            }
        }
    }
    None
}

/// The rule a line belongs to, found by the nearest `- name: ...` above it. A parse error has no
/// model to ask, and naming the rule helps more than the line alone in a long file.
fn enclosing_rule_name(text: &str, line: u32) -> Option<String> {
    if line == 0 {
        return None;
    }
    // Rules are the least indented `- name:` items; deeper ones are tests' names.
    let indent = |l: &str| l.len() - l.trim_start().len();
    let rule_indent = text
        .lines()
        .filter(|l| l.trim_start().starts_with("- name:"))
        .map(indent)
        .min()?;
    text.lines()
        .take(line as usize)
        .filter(|l| indent(l) == rule_indent)
        .filter_map(|l| l.trim_start().strip_prefix("- name:"))
        .map(|name| name.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|name| !name.is_empty())
        .last()
}

fn is_only_comments(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    })
}

/// Turns a serde-saphyr error into a diagnostic, adding hints for the common mistakes.
fn yaml_diagnostic(path: &Path, err: &serde_saphyr::Error) -> Diagnostic {
    use serde_saphyr::Error as E;
    let at = err
        .location()
        .map(|location| {
            Pos::new(
                u32::try_from(location.line()).unwrap_or(u32::MAX),
                u32::try_from(location.column()).unwrap_or(u32::MAX),
            )
        })
        .unwrap_or_else(|| Pos::new(1, 1));
    let inner = err.without_snippet();
    match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            let hint = did_you_mean(field, expected.iter().copied()).unwrap_or_else(|| {
                if expected.is_empty() {
                    "no keys are allowed here".to_owned()
                } else {
                    format!("expected one of {}", backticked(expected.iter().copied()))
                }
            });
            Diagnostic::new(path, at, "unknown-field", format!("unknown key `{field}`"))
                .with_hint(hint)
        }
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let hint = did_you_mean(variant, expected.iter().copied())
                .unwrap_or_else(|| format!("expected one of {}", backticked(expected.iter().copied())));
            Diagnostic::new(
                path,
                at,
                "unknown-value",
                format!("unknown value `{variant}`"),
            )
            .with_hint(hint)
        }
        E::SerdeMissingField { field, .. } => Diagnostic::new(
            path,
            at,
            "missing-field",
            format!("missing required key `{field}`"),
        ),
        E::DuplicateMappingKey { .. } => {
            Diagnostic::new(path, at, "duplicate-key", strip_location(&inner.to_string()))
                .with_hint("each key may appear once in a mapping")
        }
        E::Budget { .. } if inner.to_string().contains("Documents") => Diagnostic::new(
            path,
            at,
            "documents",
            "the file holds more than one YAML document",
        )
        .with_hint("a rule file is one document; put the rules of the second document (after `---`) into the first one's `rules:` list, or into another file"),
        _ if inner.to_string().contains("budget breached")
            || inner.to_string().contains("replay limit")
            || inner.to_string().contains("expansion limit") => Diagnostic::new(
            path,
            at,
            "too-complex",
            format!(
                "the file is too complex to be a rule file ({})",
                strip_location(&inner.to_string())
            ),
        )
        .with_hint("rule files may nest at most 48 levels and use at most 1000 aliases"),
        _ => {
            let message = friendlier(strip_location(&inner.to_string()));
            let hint = if message.contains("tab") {
                Some("indent with spaces; YAML does not allow tabs for indentation".to_owned())
            } else {
                None
            };
            let code = if message.contains("invalid type") || message.starts_with("expected") {
                "type"
            } else {
                "yaml"
            };
            Diagnostic::new(path, at, code, message).with_optional_hint(hint)
        }
    }
}

/// Rewords the terse parser messages people meet most.
fn friendlier(message: String) -> String {
    match message.as_str() {
        "invalid u32" | "invalid u64" | "invalid i64" | "invalid i32" | "invalid u16" => {
            "expected a whole number".to_owned()
        }
        "expected mapping start" => {
            "expected a mapping here (`key: value` lines or `{ key: value }`)".to_owned()
        }
        "expected sequence start" => "expected a list here (`- item` lines or `[a, b]`)".to_owned(),
        _ => message,
    }
}

/// serde-saphyr puts `line N column M` into its messages; the diagnostic has its own position.
fn strip_location(message: &str) -> String {
    let mut text = message.trim().to_owned();
    for prefix in ["error: "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            text = rest.to_owned();
        }
    }
    if let Some(index) = text.find(" at line ") {
        text.truncate(index);
    }
    if let Some(rest) = text.strip_prefix("line ")
        && let Some(index) = rest.find(": ")
    {
        text = rest[index + 2..].to_owned();
    }
    text
}
