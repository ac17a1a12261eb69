//! The broken-rule corpus: every file holds one mistake (`several-structural-problems.yaml`
//! holds three, all reported); its diagnostics are kept as snapshots.
//! None may panic or hang, and each must be reported with a position.

use std::path::{Path, PathBuf};

use flowd::rules::load_rule_set;

/// Loads one path and renders its diagnostics; panics if the file is (wrongly) valid.
fn diagnostics_of(path: &Path, shown_as: &str) -> String {
    let outcome = load_rule_set(&[path.to_path_buf()]);
    let diagnostics = match &outcome.result {
        Ok(_) => panic!("{} should be invalid", path.display()),
        Err(diagnostics) => diagnostics.clone(),
    };
    assert!(!diagnostics.is_empty());
    let rendered = outcome.render_diagnostics(&diagnostics);
    rendered.replace(&path.display().to_string(), shown_as)
}

#[test]
fn every_broken_file_has_its_expected_diagnostic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    insta::glob!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus"),
        "broken/*.yaml",
        |path| {
            count += 1;
            let relative = path.strip_prefix(root).unwrap_or(path);
            let shown = relative.display().to_string();
            insta::assert_snapshot!(diagnostics_of(relative, &shown));
        }
    );
    assert!(count >= 40, "the corpus has {count} files");
}

fn write_temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write");
    (dir, path)
}

#[test]
fn a_ten_megabyte_file_is_refused_by_size() {
    let mut text = String::from("rules:\n");
    while text.len() < 10 * 1024 * 1024 {
        text.push_str("  - name: padding-rule-with-a-long-name\n    on: { event: x }\n    do: [ { log: x } ]\n");
    }
    let (_dir, path) = write_temp("huge.yaml", text.as_bytes());
    insta::assert_snapshot!(diagnostics_of(&path, "huge.yaml"));
}

#[test]
fn binary_garbage_is_refused() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (_dir, path) = write_temp("garbage.yaml", &garbage);
    insta::assert_snapshot!(diagnostics_of(&path, "garbage.yaml"));
}

#[test]
fn a_non_utf8_file_is_refused_with_its_position() {
    let mut bytes = b"rules:\n  - name: caf".to_vec();
    bytes.extend_from_slice(&[0xE9, b'\n']); // Latin-1 é
    let (_dir, path) = write_temp("latin1.yaml", &bytes);
    insta::assert_snapshot!(diagnostics_of(&path, "latin1.yaml"));
}

#[test]
fn deep_block_nesting_is_refused() {
    let mut text = String::from("vars:\n");
    for depth in 0..200 {
        text.push_str(&" ".repeat(depth * 2 + 2));
        text.push_str("a:\n");
    }
    text.push_str("rules: []\n");
    let (_dir, path) = write_temp("deep.yaml", text.as_bytes());
    insta::assert_snapshot!(diagnostics_of(&path, "deep.yaml"));
}
