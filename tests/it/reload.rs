//! Hot reload, tested from outside the process: a real `flowd run`, files changed on disk, and
//! the result read through the admin API.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Daemon, eventually};

const IN_FORCE_WITHIN: Duration = Duration::from_secs(2);

fn rules_yaml(names: &[&str]) -> String {
    let mut text = String::from("rules:\n");
    for name in names {
        text.push_str(&format!(
            "  - name: {name}\n    on: {{ event: application.created }}\n    do:\n      - log: \"{name} saw {{{{event.data.id}}}}\"\n"
        ));
    }
    text
}

async fn rule_names(daemon: &Daemon) -> Option<Vec<String>> {
    let body: Value = reqwest::get(daemon.admin_url("/api/v1/rules"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut names: Vec<String> = body["rules"]
        .as_array()?
        .iter()
        .filter_map(|rule| rule["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Some(names)
}

async fn wait_for_names(daemon: &Daemon, expected: &[&str], what: &str) {
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    eventually(IN_FORCE_WITHIN, what, || async {
        (rule_names(daemon).await.as_ref() == Some(&expected)).then_some(())
    })
    .await;
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write rule file");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_edit_is_in_force_and_an_invalid_one_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("a.yaml"), &rules_yaml(&["first"]));
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(rule_names(&daemon).await, Some(vec!["first".to_owned()]));
    let health = reqwest::get(daemon.public_url("/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    // A valid edit, saved in place.
    write(
        &dir.path().join("a.yaml"),
        &rules_yaml(&["first", "second"]),
    );
    wait_for_names(&daemon, &["first", "second"], "the edit is in force").await;

    // An invalid edit: the old set stays, the failure is visible.
    write(
        &dir.path().join("a.yaml"),
        "rules:\n  - name: broken\n    on: { schedule: \"61 * * * *\" }\n    do: [ { log: x } ]\n",
    );
    eventually(IN_FORCE_WITHIN, "the failed reload is reported", || async {
        let body: Value = reqwest::get(daemon.admin_url("/api/v1/rules"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["reload"]["last_success"] == false).then_some(body)
    })
    .await;
    assert_eq!(
        rule_names(&daemon).await,
        Some(vec!["first".to_owned(), "second".to_owned()])
    );

    // The API reload answers with every diagnostic.
    let response = reqwest::Client::new()
        .post(daemon.admin_url("/api/v1/reload"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("reload");
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "invalid");
    assert_eq!(body["diagnostics"][0]["code"], "cron");
    assert_eq!(body["diagnostics"][0]["line"], 3);

    let metrics = reqwest::get(daemon.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("flowd_rules_last_reload_success 0"),
        "{metrics}"
    );
    assert!(metrics.contains("flowd_rules_loaded 2"), "{metrics}");
    assert!(
        metrics.contains("flowd_rules_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowd_rules_last_reload_timestamp_seconds"),
        "{metrics}"
    );

    // Fixing the file brings the new set in.
    write(&dir.path().join("a.yaml"), &rules_yaml(&["third"]));
    wait_for_names(&daemon, &["third"], "the fixed file is in force").await;

    let status = daemon.terminate();
    assert!(
        status.success(),
        "flowd exits cleanly on SIGTERM: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_renames_and_atomic_saves_are_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("a.yaml"), &rules_yaml(&["alpha"]));
    write(&dir.path().join("b.yaml"), &rules_yaml(&["beta"]));
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(
        rule_names(&daemon).await,
        Some(vec!["alpha".to_owned(), "beta".to_owned()])
    );

    std::fs::remove_file(dir.path().join("b.yaml")).expect("delete");
    wait_for_names(&daemon, &["alpha"], "the deleted file's rules are gone").await;

    std::fs::rename(dir.path().join("a.yaml"), dir.path().join("renamed.yml")).expect("rename");
    // The rename keeps the rules; give the watcher time to act, then check they are still there.
    tokio::time::sleep(Duration::from_millis(600)).await;
    wait_for_names(&daemon, &["alpha"], "a rename keeps the rules").await;

    // An editor's atomic save: write a hidden temp file, rename it over the original.
    let temp = dir.path().join(".renamed.yml.tmp");
    write(&temp, &rules_yaml(&["alpha", "gamma"]));
    std::fs::rename(&temp, dir.path().join("renamed.yml")).expect("atomic save");
    wait_for_names(&daemon, &["alpha", "gamma"], "the atomic save is in force").await;

    // A new subfolder with a rule file.
    std::fs::create_dir(dir.path().join("team")).expect("mkdir");
    write(
        &dir.path().join("team").join("c.yaml"),
        &rules_yaml(&["delta"]),
    );
    wait_for_names(
        &daemon,
        &["alpha", "delta", "gamma"],
        "a new subfolder is seen",
    )
    .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_style_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    // Kubernetes' layout: ..2026_01/a.yaml, ..data -> ..2026_01, a.yaml -> ..data/a.yaml
    std::fs::create_dir(root.join("..2026_01")).expect("mkdir");
    write(&root.join("..2026_01").join("a.yaml"), &rules_yaml(&["v1"]));
    symlink("..2026_01", root.join("..data")).expect("symlink");
    symlink("..data/a.yaml", root.join("a.yaml")).expect("symlink");
    let daemon = Daemon::start(root, &[]);
    assert_eq!(rule_names(&daemon).await, Some(vec!["v1".to_owned()]));

    // The swap: a new timestamped folder, a temporary link, renamed over ..data, old folder gone.
    std::fs::create_dir(root.join("..2026_02")).expect("mkdir");
    write(&root.join("..2026_02").join("a.yaml"), &rules_yaml(&["v2"]));
    symlink("..2026_02", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    std::fs::remove_dir_all(root.join("..2026_01")).expect("cleanup");
    wait_for_names(&daemon, &["v2"], "the ConfigMap swap is in force").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_storm_ends_in_the_last_valid_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("a.yaml"), &rules_yaml(&["start"]));
    let daemon = Daemon::start(dir.path(), &[]);
    for index in 0..100 {
        let text = if index % 7 == 3 {
            "rules: [ { name: Broken! } ]\n".to_owned()
        } else {
            rules_yaml(&[&format!("storm-{index}")])
        };
        write(&dir.path().join("a.yaml"), &text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last edit (index 99) is valid.
    wait_for_names(&daemon, &["storm-99"], "the last valid edit is in force").await;
    let body: Value = reqwest::get(daemon.admin_url("/api/v1/rules"))
        .await
        .expect("rules")
        .json()
        .await
        .expect("json");
    assert_eq!(body["reload"]["last_success"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_folder_refuses_to_start_with_exit_78() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        &dir.path().join("a.yaml"),
        "rules:\n  - name: a\n    on: { event: x }\n    do: [ { log: \"{{vars.nope}}\" } ]\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--rules",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown var `vars.nope`"), "{stderr}");
    assert!(stderr.contains("a.yaml:4:"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_secrets_refuse_start_and_an_admin_token_guards_the_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        &dir.path().join("a.yaml"),
        "rules:\n  - name: a\n    on: { event: x }\n    do: [ { notify: { url: \"{{secrets.hook}}\", body: {} } } ]\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--rules",
        ])
        .arg(dir.path())
        .env_remove("FLOWD_SECRET_HOOK")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no value for secret(s) hook"));

    let daemon = Daemon::start(
        dir.path(),
        &[
            ("FLOWD_SECRET_HOOK", "https://hooks.example/x"),
            ("FLOWD_ADMIN_TOKEN", "s3cret"),
        ],
    );
    let client = reqwest::Client::new();
    let refused = client
        .get(daemon.admin_url("/api/v1/rules"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);
    let allowed = client
        .get(daemon.admin_url("/api/v1/rules"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("request");
    assert_eq!(allowed.status(), 200);
}
