//! The Recrubo simulator (`flowd sim`): a real HTTP server that behaves like Recrubo as far as
//! recrubo-api.md tells, for tests, benchmarks and the demo. It is never in flowd's real path:
//! the daemon talks HTTP to whatever `recrubo.base_url` says.
//!
//! - [`api`]: the JSON:API endpoints under `/public/v2`, bearer auth, filters, sort, pages,
//!   `?sync=true`, and the `/_sim/...` control and inspection endpoints;
//! - [`store`]: the in-memory resources;
//! - [`lifecycle`]: how runs and generations move on (a script, or control calls);
//! - [`webhooks`]: deliveries in Recrubo's WebhookPayload shape, retried like Recrubo;
//! - [`faults`]: latency, 5xx, 429, resets, and dropped/duplicated/delayed/reordered deliveries.

pub mod api;
pub mod faults;
pub mod lifecycle;
pub mod state;
pub mod store;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::settings::Secret;
pub use faults::Faults;
pub use lifecycle::Script;

/// How the simulator is set up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSettings {
    /// The accepted bearer token; any non-empty token when absent.
    pub token: Option<String>,
    /// Where webhooks go (the organization's `webhookUrl`); none: no deliveries until set.
    pub webhook_url: Option<String>,
    /// Sent as `X-Recrubo-Webhook-Secret`.
    pub webhook_secret: Option<String>,
    /// Deliver every flow-run and flow-generation update while no subscription exists.
    pub deliver_by_default: Option<bool>,
    /// Recrubo retries a failed delivery 5 times over 24 hours; this scales that schedule
    /// (0.001 turns 24 h into about 86 s). Default 0.001.
    pub retry_scale: Option<f64>,
    /// How runs and generations move on.
    pub script: Script,
    /// Faults injected from the start.
    pub faults: Faults,
}

impl SimSettings {
    /// Reads a script file (`flowd sim --script sim.yaml`): the same keys as these settings.
    pub fn from_file(path: &Path) -> Result<SimSettings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The shared state (for in-process tests).
    pub state: Arc<state::SimState>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// The API base URL (`http://addr/public/v2`).
    pub fn base_url(&self) -> String {
        format!("http://{}/public/v2", self.addr)
    }

    /// A URL on the simulator.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the server and the background tasks.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

/// Starts the simulator on `listen` (port 0 for any).
pub async fn start(listen: SocketAddr, settings: SimSettings) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let state = state::SimState::new(settings, shutdown.clone());
    let router = api::router(state.clone());
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(server_shutdown.cancelled_owned())
            .await;
    });
    Ok(SimHandle {
        addr,
        state,
        shutdown,
        server,
    })
}

/// One request the simulator received (for `GET /_sim/requests`).
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    /// Sequence number.
    pub seq: u64,
    /// When (RFC 3339 with milliseconds).
    pub at: String,
    /// Milliseconds since the simulator started (for timing assertions).
    pub at_ms: u64,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query.
    pub query: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Fault injected, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// A bounded log that keeps the newest entries.
#[derive(Debug)]
pub struct Journal<T> {
    entries: Mutex<std::collections::VecDeque<T>>,
    capacity: usize,
}

impl<T: Clone> Journal<T> {
    /// A journal keeping at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Journal {
            entries: Mutex::new(std::collections::VecDeque::new()),
            capacity,
        }
    }

    /// Appends an entry, dropping the oldest when full.
    pub fn push(&self, entry: T) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// A copy of every entry, oldest first.
    pub fn all(&self) -> Vec<T> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// A secret-free view of the settings for logs.
pub fn describe(settings: &SimSettings) -> String {
    format!(
        "token={} webhook_url={} webhook_secret={}",
        if settings.token.is_some() {
            "***"
        } else {
            "(any)"
        },
        settings.webhook_url.as_deref().unwrap_or("(none)"),
        settings
            .webhook_secret
            .as_ref()
            .map(|s| Secret::new(s.clone()).to_string())
            .unwrap_or_else(|| "(none)".to_owned())
    )
}
