//! `flowd test [PATHS]`: run the `tests:` blocks of every rule offline and report like
//! `cargo test`: one line per test, the failures with expected against actual, a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{EXIT_INVALID_CONFIG, default_rule_paths};
use crate::engine::dry_run::{check, run_test};
use crate::rules::load_rule_set;

/// Arguments of `flowd test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Rule files or folders (default: rules/).
    pub paths: Vec<PathBuf>,
    /// Run only tests whose `rule::test` name contains this.
    #[arg(long)]
    pub filter: Option<String>,
}

/// Runs the tests; exit 0 when all pass, 1 when one fails, 78 when the rules are invalid.
pub fn run(args: &TestArgs) -> ExitCode {
    let paths = if args.paths.is_empty() {
        default_rule_paths()
    } else {
        args.paths.clone()
    };
    let outcome = load_rule_set(&paths);
    let set = match &outcome.result {
        Ok(set) => set,
        Err(diagnostics) => {
            println!("{}", outcome.render_diagnostics(diagnostics));
            println!("error: the rules are invalid; run `flowd check` for details");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
    };
    let mut cases = Vec::new();
    for rule in set.rules() {
        for test in &rule.tests {
            let name = format!("{}::{}", rule.name, test.name);
            if args
                .filter
                .as_ref()
                .is_none_or(|filter| name.contains(filter.as_str()))
            {
                cases.push((rule.clone(), test.clone(), name));
            }
        }
    }
    println!(
        "\nrunning {} test{}",
        cases.len(),
        if cases.len() == 1 { "" } else { "s" }
    );
    // The dry runs' effects are recorded, never awaited on anything outside: one thread does.
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            println!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut failures = Vec::new();
    for (rule, test, name) in &cases {
        let result = runtime.block_on(run_test(rule, test, &set.secrets));
        let verdict = check(test, &result).map_err(|difference| {
            let mut text = difference;
            if !text.ends_with('\n') {
                text.push('\n');
            }
            for note in &result.notes {
                text.push_str(&format!("  note: {note}\n"));
            }
            text
        });
        match verdict {
            Ok(()) => println!("test {name} ... ok"),
            Err(difference) => {
                println!("test {name} ... FAILED");
                failures.push((
                    name.clone(),
                    format!("{}:{}", rule.file.display(), test.at.line),
                    difference,
                ));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:\n");
        for (name, place, difference) in &failures {
            println!("---- {name} ({place}) ----\n{difference}");
        }
        println!("failures:");
        for (name, _, _) in &failures {
            println!("    {name}");
        }
    }
    let passed = cases.len() - failures.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed\n",
        if failures.is_empty() { "ok" } else { "FAILED" },
        failures.len()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
