//! Webhook deliveries, as Recrubo makes them (recrubo-api.md §9): a `POST` of a WebhookPayload
//! with `X-Recrubo-Webhook-Secret`, retried up to 5 times when the receiver does not answer 2xx,
//! on Recrubo's 24-hour schedule compressed by `retry_scale`. Every attempt is recorded for
//! `GET /_sim/deliveries`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Journal;
use super::faults::{Faults, happens};

/// Recrubo's retry schedule: 5 retries over 24 hours (the exact spacing is not documented;
/// this one grows roughly fivefold and adds up to 24 h).
pub const RETRY_SCHEDULE: [Duration; 5] = [
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3 * 3600),
    Duration::from_secs(86_400 - 60 - 300 - 1800 - 10_800),
];

/// One delivery to make.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The WebhookLog id (`data.id`), the same for every attempt.
    pub log_id: String,
    /// Where to.
    pub url: String,
    /// The secret header's value.
    pub secret: Option<String>,
    /// The WebhookPayload.
    pub payload: Value,
}

/// One attempt, for inspection.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    /// The WebhookLog id.
    pub log_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The event (`update`, ...).
    pub event: String,
    /// The resource type and id.
    pub resource: String,
    /// The resource's status after the event, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The receiver's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_status: Option<u16>,
    /// What went wrong, or the fault injected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds since the simulator started.
    pub at_ms: u64,
}

/// The delivery workers: a bounded queue served by a few tasks sharing one HTTP client.
pub struct Deliverer {
    queue: mpsc::Sender<Delivery>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").finish_non_exhaustive()
    }
}

/// What the workers need.
struct Workers {
    client: reqwest::Client,
    faults: Arc<std::sync::RwLock<Faults>>,
    records: Arc<Journal<DeliveryRecord>>,
    retry_scale: f64,
    started: Instant,
    shutdown: CancellationToken,
    retry_queue: mpsc::Sender<(Delivery, u32)>,
}

impl Deliverer {
    /// Starts `workers` delivery tasks.
    pub fn start(
        workers: usize,
        faults: Arc<std::sync::RwLock<Faults>>,
        records: Arc<Journal<DeliveryRecord>>,
        retry_scale: f64,
        started: Instant,
        shutdown: CancellationToken,
    ) -> Deliverer {
        let (queue, receiver) = mpsc::channel::<Delivery>(100_000);
        let (retry_queue, mut retry_receiver) = mpsc::channel::<(Delivery, u32)>(100_000);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build()
            .unwrap_or_default();
        let shared = Arc::new(Workers {
            client,
            faults,
            records,
            retry_scale,
            started,
            shutdown: shutdown.clone(),
            retry_queue,
        });
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..workers.max(1) {
            let shared = shared.clone();
            let receiver = receiver.clone();
            tokio::spawn(async move {
                loop {
                    let next = {
                        let mut receiver = receiver.lock().await;
                        tokio::select! {
                            _ = shared.shutdown.cancelled() => None,
                            next = receiver.recv() => next,
                        }
                    };
                    let Some(delivery) = next else { return };
                    shared.deliver(delivery, 1).await;
                }
            });
        }
        // Retries wait on their own tasks so that the workers keep delivering fresh events.
        let retry_shared = shared.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = retry_shared.shutdown.cancelled() => None,
                    next = retry_receiver.recv() => next,
                };
                let Some((delivery, attempt)) = next else {
                    return;
                };
                let shared = retry_shared.clone();
                tokio::spawn(async move {
                    let index = (attempt as usize)
                        .saturating_sub(2)
                        .min(RETRY_SCHEDULE.len() - 1);
                    let wait = RETRY_SCHEDULE[index].mul_f64(shared.retry_scale.max(0.0));
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => {}
                        _ = tokio::time::sleep(wait) => shared.deliver(delivery, attempt).await,
                    }
                });
            }
        });
        Deliverer { queue }
    }

    /// Queues a delivery; false when the queue is full (the delivery is lost, like a crash
    /// of the sender would lose it).
    pub fn send(&self, delivery: Delivery) -> bool {
        self.queue.try_send(delivery).is_ok()
    }
}

impl Workers {
    fn record(
        &self,
        delivery: &Delivery,
        attempt: u32,
        response_status: Option<u16>,
        error: Option<String>,
    ) {
        let attributes = &delivery.payload["data"]["attributes"];
        let resource = &attributes["resource"];
        self.records.push(DeliveryRecord {
            log_id: delivery.log_id.clone(),
            attempt,
            event: attributes["event"].as_str().unwrap_or_default().to_owned(),
            resource: format!(
                "{}/{}",
                resource["type"].as_str().unwrap_or_default(),
                resource["id"].as_str().unwrap_or_default()
            ),
            status: resource["attributes"]["status"].as_str().map(str::to_owned),
            response_status,
            error,
            at_ms: self.started.elapsed().as_millis() as u64,
        });
    }

    async fn deliver(&self, delivery: Delivery, attempt: u32) {
        let faults = self.faults.read().map(|f| f.clone()).unwrap_or_default();
        if attempt == 1 {
            if happens(faults.drop_rate) {
                self.record(&delivery, attempt, None, Some("dropped (fault)".to_owned()));
                return;
            }
            let mut wait = Duration::from_millis(faults.delivery_delay_ms);
            if happens(faults.reorder_rate) {
                wait += Duration::from_millis(fastrand::u64(50..=250));
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let copies = if attempt == 1 && happens(faults.duplicate_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut request = self.client.post(&delivery.url).json(&delivery.payload);
            if let Some(secret) = &delivery.secret {
                request = request.header("X-Recrubo-Webhook-Secret", secret);
            }
            let outcome = request.send().await;
            match outcome {
                Ok(response) if response.status().is_success() => {
                    self.record(&delivery, attempt, Some(response.status().as_u16()), None);
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    self.record(
                        &delivery,
                        attempt,
                        Some(status),
                        Some(format!("receiver answered {status}")),
                    );
                    self.retry(delivery, attempt).await;
                    return;
                }
                Err(err) => {
                    self.record(&delivery, attempt, None, Some(err.to_string()));
                    self.retry(delivery, attempt).await;
                    return;
                }
            }
        }
    }

    async fn retry(&self, delivery: Delivery, attempt: u32) {
        if attempt <= RETRY_SCHEDULE.len() as u32 {
            let _ = self.retry_queue.send((delivery, attempt + 1)).await;
        } else {
            tracing::info!(log_id = %delivery.log_id, "Webhook delivery given up after 5 retries");
        }
    }
}
