//! The store's share of schedule lateness: recording 10,000 rules' ticks due at the same minute
//! (each tick's row, its inbox event and the rule's state, one transaction), as the scheduler
//! does at a minute boundary. Prints the time of each of a few minutes.

#![allow(missing_docs)]

use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use flowd::store::sqlite::SqliteStore;
use flowd::store::{EventSource, NewEvent, Store, TickBatch};
use serde_json::json;

fn batches(rules: usize, at: DateTime<Utc>) -> Vec<TickBatch> {
    let scheduled = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (0..rules)
        .map(|n| {
            let rule = format!("every-minute-{n}");
            TickBatch {
                fingerprint: "cron * * * * * UTC".to_owned(),
                ticks: vec![(
                    at,
                    "fired",
                    NewEvent {
                        source: EventSource::Schedule,
                        event_type: "schedule".to_owned(),
                        dedup_key: Some(format!("schedule:{rule}:{scheduled}")),
                        payload: json!({ "rule": rule, "scheduled_at": scheduled, "fired_at": scheduled }),
                    },
                )],
                rule,
            }
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--test");
    let (rules, minutes) = if quick { (100, 2) } else { (10_000, 5) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("b.db").display()))
            .await
            .expect("store");
        let start = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("time");
        for minute in 0..minutes {
            let due = batches(rules, start + Duration::minutes(minute));
            let began = Instant::now();
            let flags = store.record_ticks(&due).await.expect("record");
            let took = began.elapsed();
            assert!(flags.iter().all(|f| f == &[true]));
            println!(
                "{rules} ticks recorded in {:.1} ms",
                took.as_secs_f64() * 1000.0
            );
        }
    });
}
