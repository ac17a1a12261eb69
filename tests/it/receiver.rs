//! A webhook receiver for tests: records every delivery (headers and body) and can be told
//! to fail the first attempts of each delivery.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One delivery received.
#[derive(Debug, Clone)]
pub struct Received {
    pub secret: Option<String>,
    pub body: Value,
}

impl Received {
    pub fn log_id(&self) -> &str {
        self.body["data"]["id"].as_str().unwrap_or_default()
    }
    pub fn status(&self) -> Option<&str> {
        self.body["data"]["attributes"]["resource"]["attributes"]["status"].as_str()
    }
    pub fn event(&self) -> &str {
        self.body["data"]["attributes"]["event"]
            .as_str()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    failures_left: u32,
}

/// The receiver.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers 500 to the next `count` deliveries.
    pub fn fail_next(&self, count: u32) {
        self.inner.lock().expect("lock").failures_left = count;
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().expect("lock").received.clone()
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let mut inner = inner.lock().expect("lock");
    if inner.failures_left > 0 {
        inner.failures_left -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let secret = headers
        .get("x-recrubo-webhook-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.received.push(Received { secret, body });
    StatusCode::OK
}

/// The string `field` of each received body: how many there were, and the distinct ones,
/// sorted (a difference means something was delivered twice).
pub fn distinct_strings(received: &[Received], field: &str) -> (usize, Vec<String>) {
    let mut values: Vec<String> = received
        .iter()
        .filter_map(|r| r.body[field].as_str().map(str::to_owned))
        .collect();
    let total = values.len();
    values.sort();
    values.dedup();
    (total, values)
}
