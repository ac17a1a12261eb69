//! The SQLite store on its own: history filters, paging and pruning.

use chrono::{Duration as ChronoDuration, Utc};
use serde_json::json;

use flowd::store::sqlite::SqliteStore;
use flowd::store::{
    EventOutcome, EventSource, ExecutionFilter, InsertOutcome, NewEvent, NewExecution, Store,
};

fn execution(id: &str, rule: &str, status: &str) -> NewExecution {
    NewExecution {
        id: id.to_owned(),
        rule: rule.to_owned(),
        event_id: None,
        handler_step: None,
        handler_status: None,
        status: status.to_owned(),
        context: json!({}),
        note: None,
        rule_version: None,
        sweep: false,
        first_step_creates: false,
        flow_key: None,
        expires_at: None,
        gate: None,
        idempotency: None,
        parent: None,
    }
}

#[tokio::test]
async fn history_filters_pages_and_prunes() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .expect("store");
    let stored = store
        .insert_events(vec![NewEvent {
            source: EventSource::Event,
            event_type: "x".into(),
            dedup_key: Some("k".into()),
            payload: json!({}),
        }])
        .await
        .expect("insert");
    let InsertOutcome::Stored(event_id) = stored[0] else {
        panic!("stored")
    };
    let again = store
        .insert_events(vec![NewEvent {
            source: EventSource::Event,
            event_type: "x".into(),
            dedup_key: Some("k".into()),
            payload: json!({}),
        }])
        .await
        .expect("insert");
    assert_eq!(again, [InsertOutcome::Duplicate]);
    let outcome = EventOutcome {
        executions: vec![
            execution("a", "r1", "skipped"),
            execution("b", "r1", "pending"),
            execution("c", "r2", "skipped"),
        ],
        ..EventOutcome::default()
    };
    store
        .complete_events(&[(event_id, outcome)])
        .await
        .expect("complete");

    let all = store
        .executions(&ExecutionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 3);
    let r1 = store
        .executions(&ExecutionFilter {
            rule: Some("r1".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(r1.len(), 2);
    let skipped = store
        .executions(&ExecutionFilter {
            status: Some("skipped".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(skipped.len(), 2);
    let page2 = store
        .executions(&ExecutionFilter {
            limit: 2,
            offset: 2,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page2.len(), 1);
    let future = store
        .executions(&ExecutionFilter {
            since: Some(Utc::now() + ChronoDuration::hours(1)),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(future.is_empty());
    assert_eq!(
        store.execution("b").await.expect("get").map(|e| e.status),
        Some("pending".to_owned())
    );

    // Nothing is old enough yet; keeping 1 prunes the finished beyond the newest one.
    let pruned = store
        .prune_history(Utc::now() - ChronoDuration::days(1), 100)
        .await
        .expect("prune");
    assert_eq!(pruned, 0);
    let pruned = store
        .prune_history(Utc::now() + ChronoDuration::seconds(1), 100)
        .await
        .expect("prune");
    assert_eq!(
        pruned, 2,
        "the two finished executions go; the pending one stays"
    );
    let left = store
        .executions(&ExecutionFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(
        left.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
}

#[tokio::test]
async fn pruning_keeps_the_tick_rows_that_guard_against_a_second_fire() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .expect("store");
    let first = Utc::now() - ChronoDuration::minutes(2);
    let last = Utc::now() - ChronoDuration::minutes(1);
    let batch = |at: chrono::DateTime<Utc>| flowd::store::TickBatch {
        rule: "nightly".to_owned(),
        fingerprint: "cron 0 2 * * * UTC".to_owned(),
        ticks: vec![(
            at,
            "fired",
            NewEvent {
                source: EventSource::Schedule,
                event_type: "schedule".to_owned(),
                dedup_key: Some(format!("schedule:nightly:{at}")),
                payload: json!({}),
            },
        )],
    };
    let recorded = store
        .record_ticks(&[batch(first), batch(last)])
        .await
        .expect("record");
    assert_eq!(recorded, [vec![true], vec![true]]);
    store
        .prune_history(Utc::now() + ChronoDuration::seconds(1), 100)
        .await
        .expect("prune");
    // The rule's last tick is kept, so it still cannot fire twice; the older row is history
    // only (the scheduler never fires before the last tick) and is gone.
    assert_eq!(
        store.record_ticks(&[batch(last)]).await.expect("again"),
        [vec![false]]
    );
    assert_eq!(
        store.record_ticks(&[batch(first)]).await.expect("again"),
        [vec![true]]
    );
}

#[tokio::test]
async fn inbox_pages_stop_at_their_byte_bound_but_never_come_back_empty() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .expect("store");
    // Ten events of ~1 MiB each (non-ASCII: bytes, not characters, count).
    let big = "é".repeat(512 * 1024);
    let events = (0..10)
        .map(|n| NewEvent {
            source: EventSource::Event,
            event_type: "x".into(),
            dedup_key: Some(format!("k{n}")),
            payload: json!({ "pad": big }),
        })
        .collect();
    store.insert_events(events).await.expect("insert");
    // Each payload is `{"pad":"..."}`: 1 MiB of text in 2-byte characters, plus 10 bytes.
    let size = (1 << 20) + 10;
    let page = store
        .unprocessed_events(500, 3 * size, Utc::now())
        .await
        .expect("page");
    assert_eq!(page.len(), 3, "three events fit exactly");
    let page = store
        .unprocessed_events(500, 3 * size - 1, Utc::now())
        .await
        .expect("page");
    assert_eq!(page.len(), 2, "a third would pass the bound");
    let tiny = store
        .unprocessed_events(500, 10, Utc::now())
        .await
        .expect("page");
    assert_eq!(tiny.len(), 1, "the first event comes whatever its size");
}
