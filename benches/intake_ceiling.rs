//! The ceiling the intake is measured against: a bare axum endpoint that parses the same JSON
//! and appends it to a file with group commit (one fsync per batch). Run it, then load it with
//! the same wrk command as bench/intake_load.sh:
//!
//!     cargo bench --bench intake_ceiling -- 127.0.0.1:9300 &
//!     wrk -t2 -c64 -d10s -s post.lua http://127.0.0.1:9300/events/application.created

#![allow(missing_docs)]

use std::io::Write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use tokio::sync::{mpsc, oneshot};

type Job = (Vec<u8>, oneshot::Sender<()>);

async fn accept(
    State(writer): State<mpsc::Sender<Job>>,
    Path(_event_type): Path<String>,
    body: Bytes,
) -> &'static str {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return "bad json";
    };
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    let (done, wait) = oneshot::channel();
    if writer.send((line, done)).await.is_err() {
        return "stopped";
    }
    let _ = wait.await;
    "accepted"
}

fn main() {
    // `cargo test --benches` runs this with `--test`: nothing to serve then.
    if std::env::args()
        .any(|arg| arg == "--test" || arg == "--bench" && std::env::args().count() <= 2)
    {
        return;
    }
    let listen = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "127.0.0.1:9300".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("dir");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("events.log"))
            .expect("file");
        let (writer, mut jobs) = mpsc::channel::<Job>(16_384);
        std::thread::spawn(move || {
            let mut batch: Vec<Job> = Vec::new();
            while let Some(job) = jobs.blocking_recv() {
                batch.push(job);
                while let Ok(job) = jobs.try_recv() {
                    batch.push(job);
                    if batch.len() >= 1024 {
                        break;
                    }
                }
                for (line, _) in &batch {
                    file.write_all(line).expect("write");
                }
                file.sync_data().expect("fsync");
                for (_, done) in batch.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        let app = Router::new()
            .route("/events/{event_type}", post(accept))
            .with_state(writer);
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        println!("intake ceiling listening on {listen}");
        axum::serve(listener, app).await.expect("serve");
    });
}
