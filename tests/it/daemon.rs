//! The daemon in-process (`flowd::daemon::Daemon`): built on port 0, run until a shutdown
//! future, and `quiesce` to wait until nothing is pending instead of sleeping.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use flowd::daemon::Daemon;
use flowd::settings::{Secret, Settings};
use flowd::store::ExecutionFilter;

use crate::receiver::Receiver;

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_in_process_runs_an_event_to_its_end_and_quiesces() {
    let sink = Receiver::start().await;
    let rules = tempfile::tempdir().expect("rules");
    std::fs::write(
        rules.path().join("r.yaml"),
        format!(
            "rules:\n  - name: ping\n    on: {{ event: ping }}\n    do:\n      - notify: {{ url: \"{}\", body: {{ n: \"{{{{event.data.n}}}}\" }} }}\n",
            sink.url()
        ),
    )
    .expect("write");
    let state = tempfile::tempdir().expect("state");
    let settings = Settings {
        rules: rules.path().to_path_buf(),
        database: flowd::settings::DatabaseSettings {
            url: format!("sqlite://{}", state.path().join("flowd.db").display()),
            ..Default::default()
        },
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        events: flowd::settings::EventsSettings {
            tokens: vec![Secret::new("t".to_owned())],
            ..Default::default()
        },
        ..Settings::default()
    };
    let rule_set = flowd::rules::load_rule_set(std::slice::from_ref(&settings.rules))
        .result
        .expect("valid rules");
    let daemon = Daemon::build(settings, rule_set, Default::default())
        .await
        .expect("daemon");
    let public = daemon.public_addr();
    let daemon_admin = daemon.admin_addr();
    let store = daemon.store();
    let quiet = daemon.quiesce();
    let stop = CancellationToken::new();
    let running = tokio::spawn(daemon.run(stop.clone().cancelled_owned()));

    let response = reqwest::Client::new()
        .post(format!("http://{public}/events/ping"))
        .bearer_auth("t")
        .json(&json!({ "n": "one" }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 202);
    quiet.await.expect("quiesce");
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].body["n"], "one");
    let executions = store
        .executions(&ExecutionFilter {
            limit: 10,
            ..ExecutionFilter::default()
        })
        .await
        .expect("executions");
    assert_eq!(executions.len(), 1);
    assert_eq!(executions[0].status, "succeeded");

    // One process on SQLite is the whole cluster: the view and the page show it alone.
    let admin = daemon_admin;
    let view: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{admin}/api/v1/cluster"))
        .send()
        .await
        .expect("cluster")
        .json()
        .await
        .expect("json");
    let instances = view["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 1, "{view}");
    assert_eq!(instances[0]["address"], public.to_string());
    let page = reqwest::Client::new()
        .get(format!("http://{admin}/"))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("<h2>Instances</h2>"), "{page}");

    stop.cancel();
    running.await.expect("join").expect("stops cleanly");
}
