//! Webhook delivery throughput of the simulator: 50,000 flow-run status changes delivered to a
//! fast local receiver (target: at least 10,000 per second). Prints the figure.

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;

const DELIVERIES: usize = 50_000;

fn main() {
    // `cargo test --benches` runs bench binaries with `--test`: keep that quick.
    let quick = std::env::args().any(|arg| arg == "--test");
    let count = if quick { 500 } else { DELIVERIES };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let app = Router::new().route(
            "/hook",
            post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver_addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let settings = flowd::sim::SimSettings {
            webhook_url: Some(format!("http://{receiver_addr}/hook")),
            webhook_secret: Some("bench".into()),
            ..Default::default()
        };
        let sim = flowd::sim::start("127.0.0.1:0".parse().expect("addr"), settings)
            .await
            .expect("sim");
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            let mut attributes = serde_json::Map::new();
            attributes.insert("status".into(), serde_json::json!("queued"));
            attributes.insert("state".into(), serde_json::json!({}));
            ids.push(sim.state.insert("flow-runs", attributes).expect("run").id);
        }
        let started = Instant::now();
        for id in &ids {
            sim.state.advance_run(id, &[], "running", None);
        }
        let deadline = started + Duration::from_secs(120);
        while received.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        let delivered = received.load(Ordering::Relaxed);
        println!(
            "sim webhooks: {delivered} of {count} delivered in {:.2} s = {:.0} deliveries/s",
            elapsed.as_secs_f64(),
            delivered as f64 / elapsed.as_secs_f64()
        );
        assert_eq!(delivered, count, "every delivery arrived");
        sim.stop().await;
    });
}
