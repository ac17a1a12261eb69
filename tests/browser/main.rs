//! The status page in a real browser: headless Chromium loads it from a running daemon and the
//! rendered DOM is checked. Not part of `cargo test` (it needs Chromium: `apt-get install
//! chromium`); `.ci/run` installs Chromium and runs it with `cargo test --test browser`.

#![allow(missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_status_page_renders_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    // The demo leaves a daemon with executions, runs and notifications behind.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut page_url = None;
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(url) = line.trim().strip_prefix("status page ") {
            page_url = Some(url.trim().to_owned());
            break;
        }
    }
    let page_url = page_url.expect("the demo printed its status page URL");
    let profile = tempfile::tempdir().expect("profile dir");
    let output = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&page_url)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run {chromium} ({err}); install Chromium (apt-get install chromium)")
        });
    let _ = demo.kill();
    let _ = demo.wait();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(dom.contains("<h1>flowd"), "{dom}");
    assert!(
        dom.contains("quickstart-screening") && dom.contains("quickstart-interview"),
        "{dom}"
    );
    assert!(
        dom.contains("on_status.timeout"),
        "the handlers' executions are listed: {dom}"
    );
    assert!(
        dom.contains("update_flow_run succeeded"),
        "the step timeline is rendered: {dom}"
    );
    assert!(
        dom.contains("<h2>Followed runs</h2>") && dom.contains("timeout"),
        "{dom}"
    );
}
