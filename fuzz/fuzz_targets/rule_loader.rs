//! The YAML rule loader on one file's text: parse (serde-saphyr under flowd's budgets), validate,
//! and render every diagnostic with its source line, as `flowd check` does. This is what
//! `flowd::rules::load_rule_set` does per file, without the file system: the text goes in as a
//! `SourceFile` and the loaded files are handed to the validator directly.
#![no_main]

use std::path::PathBuf;
use std::sync::Arc;

use flowd::rules::load::{self, LoadedFiles, ParsedFile, SourceFile};
use flowd::rules::ruleset::step_key;
use flowd::rules::{Trigger, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > load::MAX_FILE_BYTES {
        return;
    }
    // The loader refuses a file that is not UTF-8 before parsing it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = SourceFile {
        path: PathBuf::from("rules/fuzz.yaml"),
        text: Arc::from(text),
    };
    // Parsing runs on the loader's parser threads (their large stacks), as in the daemon.
    let parsed = load::on_parser_threads(std::slice::from_ref(&source), |chunk| {
        load::parse_source(&chunk[0])
    });
    let mut diagnostics = Vec::new();
    let model = match parsed.into_iter().next().expect("one chunk, one result") {
        Ok(model) => Some(model),
        Err(problem) => {
            diagnostics.push(problem);
            None
        }
    };
    let loaded = LoadedFiles {
        files: vec![ParsedFile {
            source: source.clone(),
            model,
        }],
        diagnostics,
        content_hash: String::new(),
    };
    match validate::validate(&loaded) {
        Ok(set) => {
            // What the daemon and `flowd rules` do with a loaded set, beside running it.
            let after = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("in range");
            for rule in set.rules() {
                let _ = rule.trigger.summary();
                let _ = set.get(&rule.name);
                if let Trigger::Schedule(schedule) = &rule.trigger {
                    let _ = schedule.next_after(after);
                }
                for (index, step) in rule.steps.iter().enumerate() {
                    let key = step_key(step, &index.to_string());
                    let _ = rule.step_by_key(&key);
                    let _ = rule.path_of(&key);
                    let _ = step.kind.name();
                }
            }
        }
        Err(diagnostics) => {
            for diagnostic in &diagnostics {
                let _ = diagnostic.render(Some(&source.text));
                let _ = diagnostic.one_line();
            }
        }
    }
});
