//! The admin listener is not reachable from a browser tab by accident (DESIGN 4.3): one test per
//! attack against the real daemon, each asserting the refusal and that a legitimate request
//! afterwards still works.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde_json::{Value, json};

use crate::support::{Daemon, eventually};

const WAIT: Duration = Duration::from_secs(15);
const EVENT_TOKEN: &str = "ev-token";

const RULES: &str = r#"rules:
  - name: by-hand
    on: { manual: { inputs: {} } }
    do: [ { log: by hand } ]
  - name: on-event
    on: { event: ping }
    do: [ { log: on event } ]
  - name: broken
    on: { event: break }
    do:
      - http: { url: "http://127.0.0.1:9/nothing" }
        retry: { attempts: 1 }
"#;

fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("rules dir");
    std::fs::write(dir.path().join("rules.yaml"), RULES).expect("write rules");
    dir
}

fn daemon(rules: &tempfile::TempDir, extra: &[(&str, &str)]) -> Daemon {
    let mut env = vec![("FLOWD_EVENTS_TOKENS", EVENT_TOKEN)];
    env.extend_from_slice(extra);
    Daemon::start(rules.path(), &env)
}

/// The daemon's admin address as a browser on the same origin names it.
fn own_origin(daemon: &Daemon) -> String {
    format!("http://{}", daemon.admin)
}

/// A dead letter of the `broken` rule; its id.
async fn dead_letter(daemon: &Daemon) -> i64 {
    let client = reqwest::Client::new();
    let posted = client
        .post(daemon.public_url("/events/break"))
        .bearer_auth(EVENT_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("post event");
    assert!(posted.status().is_success(), "{}", posted.status());
    eventually(WAIT, "a dead letter is listed", || async {
        let body: Value = client
            .get(daemon.admin_url("/api/v1/dead-letters"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["dead_letters"][0]["id"].as_i64()
    })
    .await
}

async fn error_of(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("a JSON error");
    body["error"].as_str().expect("an error text").to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_host_is_misdirected_on_every_route() {
    let rules = rules_dir();
    let daemon = daemon(&rules, &[]);
    let client = reqwest::Client::new();
    // A page of evil.example whose name now resolves to 127.0.0.1 (DNS rebinding).
    let foreign = format!("evil.example:{}", daemon.admin.port());
    let refused = client
        .get(daemon.admin_url("/api/v1/executions"))
        .header(header::HOST, &foreign)
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
    assert!(error_of(refused).await.contains("admin.hosts"));
    for path in [
        "/api/v1/reload",
        "/api/v1/rules/by-hand/trigger",
        "/api/v1/dead-letters/1/retry",
        "/login",
        "/logout",
    ] {
        let refused = client
            .post(daemon.admin_url(path))
            .header(header::HOST, &foreign)
            .json(&json!({}))
            .send()
            .await
            .expect("post");
        assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST, "{path}");
    }
    let page = client
        .get(daemon.admin_url("/"))
        .header(header::HOST, "evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::MISDIRECTED_REQUEST);

    // The listener's own address and localhost still work.
    let allowed = client
        .get(daemon.admin_url("/api/v1/executions"))
        .send()
        .await
        .expect("get");
    assert_eq!(allowed.status(), StatusCode::OK);
    let by_name = client
        .post(daemon.admin_url("/api/v1/reload"))
        .header(header::HOST, format!("localhost:{}", daemon.admin.port()))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(by_name.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_that_is_not_json_is_415() {
    let rules = rules_dir();
    let daemon = daemon(&rules, &[]);
    let id = dead_letter(&daemon).await;
    let client = reqwest::Client::new();
    let routes = [
        "/api/v1/reload".to_owned(),
        "/api/v1/rules/by-hand/trigger".to_owned(),
        format!("/api/v1/dead-letters/{id}/retry"),
    ];
    // What a cross-site <form> can send without a preflight.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        for path in &routes {
            let refused = client
                .post(daemon.admin_url(path))
                .header(header::CONTENT_TYPE, content_type)
                .body("{}")
                .send()
                .await
                .expect("post");
            assert_eq!(
                refused.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type} {path}"
            );
        }
    }
    let bodiless = client
        .post(daemon.admin_url("/api/v1/reload"))
        .send()
        .await
        .expect("post");
    assert_eq!(bodiless.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error_of(bodiless).await.contains("application/json"));

    // Refused requests changed nothing: the dead letter is still there to retry, once.
    let expected = [StatusCode::OK, StatusCode::ACCEPTED, StatusCode::ACCEPTED];
    for (path, status) in routes.iter().zip(expected) {
        let allowed = client
            .post(daemon.admin_url(path))
            .json(&json!({}))
            .send()
            .await
            .expect("post");
        assert_eq!(allowed.status(), status, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_json_post_is_403() {
    let rules = rules_dir();
    let daemon = daemon(&rules, &[]);
    let client = reqwest::Client::new();
    let other_port = format!("http://127.0.0.1:{}", daemon.admin.port() ^ 1);
    let cross_site: [(&str, &str); 5] = [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("origin", &other_port),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ];
    for path in ["/api/v1/reload", "/api/v1/rules/by-hand/trigger"] {
        for (name, value) in cross_site {
            let refused = client
                .post(daemon.admin_url(path))
                .header(name, value)
                .json(&json!({}))
                .send()
                .await
                .expect("post");
            assert_eq!(
                refused.status(),
                StatusCode::FORBIDDEN,
                "{path} {name}: {value}"
            );
        }
    }
    let executions: Value = client
        .get(daemon.admin_url("/api/v1/executions?rule=by-hand"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(executions["executions"], json!([]), "nothing was triggered");

    // What the status page's fetch() sends.
    let same_origin = client
        .post(daemon.admin_url("/api/v1/rules/by-hand/trigger"))
        .header("origin", own_origin(&daemon))
        .header("sec-fetch-site", "same-origin")
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(same_origin.status(), StatusCode::ACCEPTED);
    eventually(WAIT, "the same-origin trigger runs", || async {
        let body: Value = client
            .get(daemon.admin_url("/api/v1/executions?rule=by-hand"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["executions"].as_array()?.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_manual_rules_can_be_triggered() {
    let rules = rules_dir();
    let daemon = daemon(&rules, &[]);
    let client = reqwest::Client::new();
    let refused = client
        .post(daemon.admin_url("/api/v1/rules/on-event/trigger"))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let error = error_of(refused).await;
    assert!(
        error.contains("`event` trigger") && error.contains("manual"),
        "{error}"
    );
    let allowed = client
        .post(daemon.admin_url("/api/v1/rules/by-hand/trigger"))
        .json(&json!({ "inputs": {} }))
        .send()
        .await
        .expect("post");
    assert_eq!(allowed.status(), StatusCode::ACCEPTED);
    let body: Value = allowed.json().await.expect("json");
    assert_eq!(body["rule"], "by-hand");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_token_is_a_bearer_header_or_the_login_cookie() {
    let rules = rules_dir();
    let daemon = daemon(&rules, &[("FLOWD_ADMIN_TOKEN", "s3cret-admin")]);
    let client = reqwest::Client::new();
    let refused = client
        .get(daemon.admin_url("/api/v1/rules"))
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let allowed = client
            .get(daemon.admin_url("/api/v1/rules"))
            .header(header::AUTHORIZATION, format!("{scheme} s3cret-admin"))
            .send()
            .await
            .expect("get");
        assert_eq!(allowed.status(), StatusCode::OK, "{scheme}");
    }

    // The page shows the login form without the token, and its script loads.
    let form = client.get(daemon.admin_url("/")).send().await.expect("get");
    assert_eq!(form.status(), StatusCode::UNAUTHORIZED);
    let form = form.text().await.expect("text");
    assert!(
        form.contains("id=login") && !form.contains("<h2>Rules"),
        "{form}"
    );
    let script = client
        .get(daemon.admin_url("/static/page.js"))
        .send()
        .await
        .expect("get");
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.text().await.expect("text").contains("/login"));

    let wrong = client
        .post(daemon.admin_url("/login"))
        .header("origin", own_origin(&daemon))
        .json(&json!({ "token": "guess" }))
        .send()
        .await
        .expect("post");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    let login = client
        .post(daemon.admin_url("/login"))
        .header("origin", own_origin(&daemon))
        .json(&json!({ "token": "s3cret-admin" }))
        .send()
        .await
        .expect("post");
    assert_eq!(login.status(), StatusCode::OK);
    let set_cookie = login.headers()[header::SET_COOKIE]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(set_cookie.contains("; HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("; SameSite=Strict"), "{set_cookie}");
    assert!(set_cookie.contains("; Path=/"), "{set_cookie}");
    assert!(!set_cookie.contains("s3cret-admin"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("name=value").to_owned();

    let rules: Value = client
        .get(daemon.admin_url("/api/v1/rules"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(rules["count"], 3);
    let page = client
        .get(daemon.admin_url("/"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("text").contains("<h2>Rules"));

    // The cookie does not make a cross-site POST work, and a cookie POST must say its origin.
    let cross_site = client
        .post(daemon.admin_url("/api/v1/reload"))
        .header(header::COOKIE, &cookie)
        .header("origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    let same_origin = client
        .post(daemon.admin_url("/api/v1/reload"))
        .header(header::COOKIE, &cookie)
        .header("origin", own_origin(&daemon))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(same_origin.status(), StatusCode::OK);

    let logout = client
        .post(daemon.admin_url("/logout"))
        .header(header::COOKIE, &cookie)
        .header("origin", own_origin(&daemon))
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    assert_eq!(logout.status(), StatusCode::OK);
    let after = client
        .get(daemon.admin_url("/api/v1/rules"))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

fn assert_guarded_headers(what: &str, headers: &HeaderMap) {
    assert_eq!(
        headers
            .get(header::CONTENT_SECURITY_POLICY)
            .map(|v| v.to_str().unwrap()),
        Some("default-src 'self'; frame-ancestors 'none'"),
        "{what}"
    );
    assert_eq!(
        headers
            .get(header::X_CONTENT_TYPE_OPTIONS)
            .map(|v| v.to_str().unwrap()),
        Some("nosniff"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_answer_has_csp_and_nosniff() {
    let rules = rules_dir();
    let daemon = daemon(&rules, &[]);
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/api/v1/rules",
        "/api/v1/executions",
        "/api/v1/executions/nope",
        "/metrics",
        "/static/page.js",
        "/static/page.css",
    ] {
        let response = client
            .get(daemon.admin_url(path))
            .send()
            .await
            .expect("get");
        assert!(
            response.status().is_success() || response.status() == StatusCode::NOT_FOUND,
            "{path}: {}",
            response.status()
        );
        assert_guarded_headers(path, response.headers());
        if path.starts_with("/api/") {
            assert_eq!(
                response.headers()[header::CACHE_CONTROL],
                "no-store",
                "{path}"
            );
        }
    }
    let refused = client
        .get(daemon.admin_url("/api/v1/rules"))
        .header(header::HOST, "evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_guarded_headers("a 421", refused.headers());

    // The page has no inline script or style for the CSP to block, and links its own.
    let page = client
        .get(daemon.admin_url("/"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(page.contains("<script src=/static/page.js"), "{page}");
    assert!(page.contains("href=/static/page.css"), "{page}");
    assert!(!page.contains("<script>") && !page.contains("<style>") && !page.contains("onclick="));
    assert!(
        page.contains("data-action=trigger data-rule=\"by-hand\""),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_error_is_logged_and_answered_with_a_fixed_text() {
    let rules = rules_dir();
    let state = tempfile::tempdir().expect("state dir");
    let path = state.path().join("flowd.db");
    let daemon = Daemon::start_with_database(
        rules.path(),
        &[("FLOWD_EVENTS_TOKENS", EVENT_TOKEN)],
        &format!("sqlite://{}", path.display()),
        state,
    );
    let client = reqwest::Client::new();
    let before = client
        .get(daemon.admin_url("/api/v1/executions"))
        .send()
        .await
        .expect("get");
    assert_eq!(before.status(), StatusCode::OK);
    // The database loses a table under the daemon's feet.
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch("DROP TABLE executions;")
        .expect("drop");
    let failed = client
        .get(daemon.admin_url("/api/v1/executions"))
        .send()
        .await
        .expect("get");
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = failed.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": "the state store is unavailable; see the daemon log"})
    );
    let logged = eventually(WAIT, "the store error is logged", || async {
        daemon
            .drain_logs()
            .into_iter()
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .find(|entry| entry["message"] == "The state store failed an admin API request")
    })
    .await;
    assert_eq!(logged["level"], "ERROR");
    assert!(
        logged["error"]
            .as_str()
            .unwrap_or("")
            .contains("executions"),
        "{logged}"
    );
    // Other routes still answer.
    let rules = client
        .get(daemon.admin_url("/api/v1/rules"))
        .send()
        .await
        .expect("get");
    assert_eq!(rules.status(), StatusCode::OK);
}
