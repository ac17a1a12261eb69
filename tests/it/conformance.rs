//! The store's contract, one suite for every backend: what the doc comments of the `Store` trait
//! (src/store/mod.rs) promise, method by method, one focused test each.
//!
//! Each test is a plain `async fn(&dyn Store)` against a fresh, empty store; `conformance!`
//! expands every test for one backend from its factory. A backend joins with one line (and its
//! factory), e.g. `conformance!(postgres, postgres_store);`. A test written here but not listed
//! in `conformance!` is dead code, which `clippy -D warnings` refuses.
//!
//! Times the store keeps and hands back are whole seconds ([`now`]), so that they compare equal
//! on any backend's precision. Boundaries the docs leave open (a lease ending exactly now, ties
//! in `created_at`) are not pinned.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use flowd::store::sqlite::SqliteStore;
use flowd::store::{
    Deferral, EventOutcome, EventSource, Execution, ExecutionFilter, FollowedRun, InsertOutcome,
    NewEvent, NewExecution, PollMark, RetryOutcome, RuleVersion, StatusChange, StepRecord, Store,
    TickBatch,
};

/// A fresh, empty SQLite store in its own directory (the `Box` keeps the directory alive).
async fn sqlite_store() -> Option<(Arc<dyn Store>, Box<dyn Any>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("flowd.db").display());
    let store = SqliteStore::open(&url).await.expect("open the store");
    Some((Arc::new(store), Box::new(dir)))
}

/// A fresh, empty Postgres store in a schema of its own on `FLOWD_TEST_POSTGRES` (dropped with
/// the `Box`); `None`, with a notice, when that is not set.
async fn postgres_store() -> Option<(Arc<dyn Store>, Box<dyn Any>)> {
    let schema = crate::support::postgres_schema().await?;
    let store = flowd::store::postgres::PgStore::open(&schema.url, None, "test-instance")
        .await
        .expect("open the Postgres store");
    Some((Arc::new(store), Box::new(schema)))
}

/// Expands every conformance test for one backend: `conformance!(name, factory)`, where
/// `factory` is an `async fn() -> Option<(Arc<dyn Store>, Box<dyn Any>)>` giving a fresh, empty
/// store (and whatever must live as long as it), or `None` when the backend is not available
/// here (the test then passes after the factory printed why). The tests are `conformance::name::<test>`.
macro_rules! conformance {
    ($backend:ident, $factory:ident) => {
        conformance!(
            @tests $backend, $factory,
            a_fresh_store_answers_and_holds_nothing,
            // insert_events
            a_second_event_with_the_same_key_is_a_duplicate,
            a_key_repeated_within_one_batch_is_stored_once,
            events_without_a_key_are_never_deduplicated,
            stored_events_get_increasing_ids_in_batch_order,
            each_event_of_a_mixed_batch_gets_its_own_id,
            a_key_no_index_could_hold_fails_nothing_and_still_dedupes,
            a_stored_event_reads_back_as_it_was_given,
            // unprocessed_events
            unprocessed_events_come_oldest_first_up_to_the_limit,
            the_byte_bound_counts_bytes_not_characters,
            a_page_holds_at_least_one_event_whatever_its_size,
            a_page_never_holds_more_payload_than_its_byte_bound,
            a_deferred_event_is_held_back_until_its_time,
            // defer_events, earlier_deferred
            recording_a_followed_run_releases_its_deferred_events_at_once,
            a_deferral_for_a_run_followed_already_is_not_written,
            earlier_deferred_answers_for_older_unprocessed_events_of_the_key,
            // complete_events
            completing_events_marks_them_processed,
            completing_an_event_stores_the_executions_it_caused,
            a_pair_fired_before_makes_the_outcome_store_nothing_but_processed,
            a_terminal_status_still_ends_the_following_when_its_pair_fired_before,
            each_event_of_a_batch_fires_its_pair_at_most_once,
            a_status_change_is_recorded_on_the_followed_run,
            an_event_is_never_seen_processed_without_its_executions,
            // insert_executions
            a_new_execution_starts_pending_at_its_first_step_and_due_at_once,
            inserting_an_execution_again_leaves_the_stored_one_alone,
            // claim_executions, renew_lease
            only_due_pending_unleased_executions_are_claimed,
            a_claimed_execution_is_claimed_again_only_when_its_lease_has_ended,
            a_claim_takes_at_most_its_limit,
            concurrent_claims_never_hand_out_the_same_execution,
            a_renewed_lease_keeps_a_running_execution_from_being_claimed,
            a_claim_marks_a_first_step_that_creates_in_doubt,
            renewing_does_not_lease_an_execution_whose_lease_was_given_up,
            // begin_step, save_execution, finish_step, record_step
            begin_step_keeps_the_earliest_start_of_a_step,
            begin_step_renews_the_lease,
            saved_progress_reads_back_field_for_field,
            saving_progress_keeps_the_lease_unless_released,
            finish_step_stores_the_record_the_progress_and_the_followed_run,
            finish_step_keeps_the_lease,
            finish_step_puts_its_event_in_the_inbox_once,
            a_step_record_is_replaced_by_the_next_attempt_of_the_same_step,
            // followed, stale_followed, mark_polled, followed_runs
            an_unknown_run_is_not_followed,
            stale_followed_lists_quiet_runs_not_terminal_oldest_first_up_to_its_limit,
            a_read_poll_counts_as_checked_now,
            a_failed_poll_backs_the_run_off_until_its_time_and_counts_the_failures,
            a_gone_run_is_terminal_and_never_polled_again,
            followed_runs_lists_the_most_recently_changed_first,
            // dead letters
            dead_letters_are_listed_newest_first_with_what_failed,
            retrying_a_dead_letter_puts_its_execution_back_at_the_failed_step,
            a_dead_letter_is_retried_once,
            retrying_an_unknown_dead_letter_finds_nothing,
            a_dead_letter_is_not_retried_once_its_execution_went_on,
            a_dead_letter_is_not_retried_while_its_execution_runs_again,
            // creates_in_doubt
            creates_are_in_doubt_only_while_a_pending_execution_has_a_step_in_flight,
            // rule versions
            a_rule_version_is_stored_once_by_hash_and_keeps_its_first_definition,
            // schedules
            schedule_states_read_back_as_set,
            a_tick_is_recorded_once_and_its_event_stored_only_the_first_time,
            recording_ticks_moves_each_rules_state_to_its_last_tick,
            // prune_history
            pruning_removes_old_finished_executions_with_their_steps,
            pruning_keeps_the_newest_finished_executions_up_to_keep,
            pruning_keeps_each_rules_last_tick,
            // executions, execution, step_records
            executions_are_listed_newest_first_filtered_and_paged,
            an_unknown_execution_is_none,
            // admit, cancel, cancel_now, cancel_requested, wake_group
            the_gate_queues_behind_an_active_member_and_admits_in_order,
            skip_ends_a_later_one_and_cancel_previous_cancels_the_active_one,
            a_throttle_waits_for_the_oldest_start_to_leave_its_period_or_drops,
            quiet_hours_hold_an_execution_until_they_end,
            cancelling_a_group_cancels_what_waits_and_what_follows_and_asks_a_running_one,
            a_run_that_ends_wakes_the_queue_of_its_group,
            a_debounce_merges_a_group_s_events_into_one_execution,
            an_idempotency_key_is_held_by_one_execution_within_its_window,
            a_deadline_is_due_once_past_and_fires_once,
        );
    };
    (@tests $backend:ident, $factory:ident, $($(#[$meta:meta])* $test:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                $(#[$meta])*
                async fn $test() {
                    let Some((store, keep)) = super::$factory().await else {
                        return;
                    };
                    super::$test(&*store).await;
                    // The store goes first: what `keep` holds may be what it stores in.
                    drop(store);
                    drop(keep);
                }
            )+
        }
    };
}

conformance!(sqlite, sqlite_store);
conformance!(postgres, postgres_store);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Now, in whole seconds.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn minutes(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

const LEASE: Duration = Duration::from_secs(60);

/// Compares values without `PartialEq` (and says which field differs).
fn as_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("serialize")
}

fn event(key: Option<&str>, payload: Value) -> NewEvent {
    NewEvent {
        source: EventSource::Event,
        event_type: "order.placed".to_owned(),
        dedup_key: key.map(str::to_owned),
        payload,
    }
}

/// Stores `events`, each new; their ids.
async fn store_events(store: &dyn Store, events: Vec<NewEvent>) -> Vec<i64> {
    store
        .insert_events(events)
        .await
        .unwrap()
        .into_iter()
        .map(|outcome| match outcome {
            InsertOutcome::Stored(id) => id,
            InsertOutcome::Duplicate => panic!("an event without a key stored before is new"),
        })
        .collect()
}

/// `count` events without a key.
async fn some_events(store: &dyn Store, count: usize) -> Vec<i64> {
    store_events(
        store,
        (0..count).map(|n| event(None, json!({ "n": n }))).collect(),
    )
    .await
}

/// The ids of every unprocessed event not deferred past `at`.
async fn unprocessed_ids(store: &dyn Store, at: DateTime<Utc>) -> Vec<i64> {
    store
        .unprocessed_events(10_000, 1 << 30, at)
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id)
        .collect()
}

pub(crate) fn new_execution(id: &str, rule: &str, status: &str) -> NewExecution {
    NewExecution {
        id: id.to_owned(),
        rule: rule.to_owned(),
        event_id: None,
        handler_step: None,
        handler_status: None,
        status: status.to_owned(),
        context: json!({ "event": { "data": { "id": id } } }),
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

/// A new pending execution, as stored.
pub(crate) async fn pending(store: &dyn Store, id: &str) -> Execution {
    store
        .insert_executions(&[new_execution(id, "rule", "pending")])
        .await
        .unwrap();
    store.execution(id).await.unwrap().expect("just stored")
}

/// Saves `execution` changed by `change` (releasing its lease); the saved copy.
async fn save_changed(
    store: &dyn Store,
    execution: &Execution,
    change: impl FnOnce(&mut Execution),
) -> Execution {
    let mut changed = execution.clone();
    change(&mut changed);
    store.save_execution(&changed, true).await.unwrap();
    changed
}

/// The ids claimed at `at`, sorted.
async fn claim(store: &dyn Store, at: DateTime<Utc>, lease: Duration, limit: i64) -> Vec<String> {
    let mut ids: Vec<String> = store
        .claim_executions(at, lease, limit)
        .await
        .unwrap()
        .into_iter()
        .map(|execution| execution.id)
        .collect();
    ids.sort();
    ids
}

fn ids(executions: &[Execution]) -> Vec<&str> {
    executions.iter().map(|e| e.id.as_str()).collect()
}

fn all() -> ExecutionFilter {
    ExecutionFilter {
        limit: 1000,
        ..ExecutionFilter::default()
    }
}

pub(crate) fn step(execution_id: &str, step_index: i64) -> StepRecord {
    let started = now() - secs(2);
    StepRecord {
        execution_id: execution_id.to_owned(),
        step_index,
        step_id: Some(format!("step{step_index}")),
        kind: "start_flow_run".to_owned(),
        status: "succeeded".to_owned(),
        attempts: 1,
        input: Some(json!({ "flow": "screening-flow" })),
        output: Some(json!({ "id": "run-1" })),
        error: None,
        note: None,
        started_at: started,
        finished_at: Some(started + secs(1)),
        instance: None,
    }
}

/// Step records without the instance that wrote them (only a store shared by several names it;
/// cluster.rs tests that it does).
fn anonymous(mut records: Vec<StepRecord>) -> Vec<StepRecord> {
    for record in &mut records {
        record.instance = None;
    }
    records
}

fn run(resource_id: &str, execution_id: &str, changed_at: DateTime<Utc>) -> FollowedRun {
    FollowedRun {
        resource_id: resource_id.to_owned(),
        resource_type: flowd::recrubo::FollowedKind::FlowRun,
        rule: "rule".to_owned(),
        step_id: Some("step0".to_owned()),
        execution_id: execution_id.to_owned(),
        context: json!({ "event": { "data": { "candidate": "c-1" } } }),
        status: "queued".to_owned(),
        remote_updated_at: Some(changed_at - secs(1)),
        changed_at,
        terminal: false,
        poll_failures: 0,
        gone_at: None,
        cancelled_at: None,
        deadline_at: None,
    }
}

/// Starts following `run` the way a create does (a finished step of `execution`).
async fn follow(store: &dyn Store, execution: &Execution, run: &FollowedRun) {
    store
        .finish_step(&step(&execution.id, 0), execution, Some(run), None)
        .await
        .unwrap();
}

/// An execution and the runs it follows, changed at the given times.
pub(crate) async fn following(store: &dyn Store, runs: &[(&str, DateTime<Utc>)]) -> Execution {
    let execution = pending(store, "starter").await;
    for (id, changed_at) in runs {
        follow(store, &execution, &run(id, &execution.id, *changed_at)).await;
    }
    execution
}

fn resource_ids(runs: &[FollowedRun]) -> Vec<&str> {
    runs.iter().map(|r| r.resource_id.as_str()).collect()
}

fn fire(resource_id: &str, status: &str) -> EventOutcome {
    EventOutcome {
        fire: Some((resource_id.to_owned(), status.to_owned())),
        ..EventOutcome::default()
    }
}

fn change(resource_id: &str, status: &str, terminal: bool) -> StatusChange {
    StatusChange {
        resource_id: resource_id.to_owned(),
        status: status.to_owned(),
        remote_updated_at: Some(now() - secs(3)),
        terminal,
        frees_slot: false,
    }
}

/// An execution failed at `step_index` (saved, lease given up).
async fn failed_at(store: &dyn Store, id: &str, step_index: i64) -> Execution {
    let execution = pending(store, id).await;
    save_changed(store, &execution, |e| {
        e.status = "failed".to_owned();
        e.next_step = step_index;
        e.attempt = 3;
        e.last_error = Some("HTTP 500".to_owned());
    })
    .await
}

fn tick(rule: &str, at: DateTime<Utc>) -> (DateTime<Utc>, &'static str, NewEvent) {
    (
        at,
        "fired",
        NewEvent {
            source: EventSource::Schedule,
            event_type: "schedule".to_owned(),
            // No key: only the tick's own record may keep its event from being stored twice.
            dedup_key: None,
            payload: json!({ "rule": rule, "at": at }),
        },
    )
}

fn ticks(rule: &str, fingerprint: &str, at: &[DateTime<Utc>]) -> TickBatch {
    TickBatch {
        rule: rule.to_owned(),
        fingerprint: fingerprint.to_owned(),
        ticks: at.iter().map(|at| tick(rule, *at)).collect(),
    }
}

/// Asserts `time` is within a few seconds of `around` (times the store takes itself).
fn assert_close(time: DateTime<Utc>, around: DateTime<Utc>, what: &str) {
    assert!(
        (time - around).abs() <= secs(5),
        "{what}: {time} is not about {around}"
    );
}

// ---------------------------------------------------------------------------------------------
// A fresh store

async fn a_fresh_store_answers_and_holds_nothing(store: &dyn Store) {
    store.ping().await.unwrap();
    assert!(unprocessed_ids(store, now() + minutes(60)).await.is_empty());
    assert!(store.executions(&all()).await.unwrap().is_empty());
    assert!(store.dead_letters(100).await.unwrap().is_empty());
    assert!(store.followed_runs(100).await.unwrap().is_empty());
    assert!(store.schedule_states().await.unwrap().is_empty());
    assert!(!store.creates_in_doubt().await.unwrap());
    assert!(
        claim(store, now() + minutes(60), LEASE, 100)
            .await
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// insert_events

async fn a_second_event_with_the_same_key_is_a_duplicate(store: &dyn Store) {
    let first = store
        .insert_events(vec![event(Some("delivery-1"), json!({ "v": 1 }))])
        .await
        .unwrap();
    let [InsertOutcome::Stored(id)] = first[..] else {
        panic!("a new key is stored: {first:?}");
    };
    let again = store
        .insert_events(vec![
            event(Some("delivery-1"), json!({ "v": 2 })),
            event(Some("delivery-2"), json!({ "v": 3 })),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], InsertOutcome::Duplicate);
    assert!(matches!(again[1], InsertOutcome::Stored(other) if other != id));
    let inbox = store.unprocessed_events(100, 1 << 20, now()).await.unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0].id, id);
    assert_eq!(
        inbox[0].payload,
        json!({ "v": 1 }),
        "the first delivery is kept"
    );
}

async fn a_key_repeated_within_one_batch_is_stored_once(store: &dyn Store) {
    let outcomes = store
        .insert_events(vec![
            event(Some("k"), json!({ "v": 1 })),
            event(Some("k"), json!({ "v": 2 })),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[0], InsertOutcome::Stored(_)));
    assert_eq!(outcomes[1], InsertOutcome::Duplicate);
    assert_eq!(unprocessed_ids(store, now()).await.len(), 1);
}

async fn events_without_a_key_are_never_deduplicated(store: &dyn Store) {
    let same = || event(None, json!({ "same": true }));
    let mut stored = store_events(store, vec![same(), same()]).await;
    stored.extend(store_events(store, vec![same()]).await);
    assert_eq!(stored.iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(unprocessed_ids(store, now()).await, stored);
}

async fn a_key_no_index_could_hold_fails_nothing_and_still_dedupes(store: &dyn Store) {
    // A sender's key of 4,000 random-ish characters, one with a NUL: stored (as their hash)
    // with the innocent event beside them.
    let long: String = (0..4000)
        .map(|n| char::from(b'a' + (n * 7 % 26) as u8))
        .collect();
    let batch = || {
        vec![
            event(Some(&long), json!({ "n": 0 })),
            event(Some("a\u{0}b"), json!({ "n": 1 })),
            event(None, json!({ "n": 2 })),
        ]
    };
    let first = store.insert_events(batch()).await.unwrap();
    assert!(
        first.iter().all(|o| matches!(o, InsertOutcome::Stored(_))),
        "{first:?}"
    );
    let again = store.insert_events(batch()).await.unwrap();
    assert_eq!(again[0], InsertOutcome::Duplicate);
    assert_eq!(again[1], InsertOutcome::Duplicate);
    assert!(matches!(again[2], InsertOutcome::Stored(_)));
}

async fn each_event_of_a_mixed_batch_gets_its_own_id(store: &dyn Store) {
    store
        .insert_events(vec![event(Some("seen"), json!({ "n": -1 }))])
        .await
        .unwrap();
    // Keyed and unkeyed events, a key seen before and a key twice in the batch.
    let keys = [
        None,
        Some("a"),
        Some("seen"),
        None,
        Some("b"),
        Some("a"),
        None,
    ];
    let batch = keys
        .iter()
        .enumerate()
        .map(|(n, key)| event(*key, json!({ "n": n })))
        .collect();
    let outcomes = store.insert_events(batch).await.unwrap();
    let stored: Vec<(usize, i64)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(n, outcome)| match outcome {
            InsertOutcome::Stored(id) => Some((n, *id)),
            InsertOutcome::Duplicate => None,
        })
        .collect();
    assert_eq!(
        stored.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [0, 1, 3, 4, 6],
        "the key seen before and the second 'a' are duplicates: {outcomes:?}"
    );
    assert!(stored.windows(2).all(|pair| pair[0].1 < pair[1].1));
    let inbox = store.unprocessed_events(100, 1 << 20, now()).await.unwrap();
    for (n, id) in stored {
        let found = inbox
            .iter()
            .find(|e| e.id == id)
            .expect("a stored id is in the inbox");
        assert_eq!(found.payload["n"], json!(n), "event {n} was given id {id}");
    }
}

async fn stored_events_get_increasing_ids_in_batch_order(store: &dyn Store) {
    let mut stored = some_events(store, 5).await;
    stored.extend(some_events(store, 2).await);
    assert!(
        stored.windows(2).all(|pair| pair[0] < pair[1]),
        "ids follow the batch order, and a later batch's come after: {stored:?}"
    );
    let inbox = store.unprocessed_events(100, 1 << 20, now()).await.unwrap();
    assert_eq!(inbox.iter().map(|e| e.id).collect::<Vec<_>>(), stored);
    let numbers: Vec<Option<i64>> = inbox.iter().map(|e| e.payload["n"].as_i64()).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 0, 1].map(Some));
}

async fn a_stored_event_reads_back_as_it_was_given(store: &dyn Store) {
    let sources = [
        EventSource::Event,
        EventSource::Recrubo,
        EventSource::Emit,
        EventSource::Manual,
        EventSource::Reconcile,
        EventSource::Schedule,
    ];
    let payload = json!({
        "data": { "name": "Zoë «ü» 日本", "n": 1.5, "list": [1, null, true], "empty": {} },
        "big": 9_007_199_254_740_993_u64,
    });
    let before = Utc::now();
    let stored = store_events(
        store,
        sources
            .iter()
            .map(|source| NewEvent {
                source: *source,
                event_type: format!("{}/updated", source.as_str()),
                dedup_key: None,
                payload: payload.clone(),
            })
            .collect(),
    )
    .await;
    let inbox = store.unprocessed_events(100, 1 << 20, now()).await.unwrap();
    assert_eq!(inbox.len(), sources.len());
    for ((read, source), id) in inbox.iter().zip(sources).zip(stored) {
        assert_eq!(read.id, id);
        assert_eq!(read.source, source);
        assert_eq!(read.event_type, format!("{}/updated", source.as_str()));
        assert_eq!(read.payload, payload);
        assert_close(read.received_at, before, "received_at");
    }
}

// ---------------------------------------------------------------------------------------------
// unprocessed_events

async fn unprocessed_events_come_oldest_first_up_to_the_limit(store: &dyn Store) {
    let stored = some_events(store, 5).await;
    let page = store.unprocessed_events(3, 1 << 20, now()).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), stored[..3]);
    let page = store.unprocessed_events(10, 1 << 20, now()).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), stored);
}

/// `{"pad": "ééé…"}`: twice as many bytes as characters.
fn padded(chars: usize) -> Value {
    json!({ "pad": "é".repeat(chars) })
}

fn payload_bytes(payload: &Value) -> i64 {
    i64::try_from(payload.to_string().len()).expect("small")
}

async fn the_byte_bound_counts_bytes_not_characters(store: &dyn Store) {
    let payload = padded(50_000);
    store_events(store, vec![event(None, payload.clone()); 8]).await;
    // 1.6 events' worth of bytes is 3.2 events' worth of characters: counting bytes, the page
    // holds one event or two (the bound met or just passed), counting characters three or more.
    let bound = payload_bytes(&payload) * 16 / 10;
    let page = store.unprocessed_events(100, bound, now()).await.unwrap();
    assert!(
        (1..=2).contains(&page.len()),
        "bytes, not characters, count: {} events for a bound of 1.6 events",
        page.len()
    );
}

async fn a_page_holds_at_least_one_event_whatever_its_size(store: &dyn Store) {
    let stored = store_events(store, vec![event(None, padded(100_000)); 3]).await;
    let page = store.unprocessed_events(100, 10, now()).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), stored[..1]);
    let page = store.unprocessed_events(100, 0, now()).await.unwrap();
    assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), stored[..1]);
}

async fn a_page_never_holds_more_payload_than_its_byte_bound(store: &dyn Store) {
    let payload = padded(50_000);
    store_events(store, vec![event(None, payload.clone()); 3]).await;
    let bound = payload_bytes(&payload) * 5 / 2;
    let page = store.unprocessed_events(100, bound, now()).await.unwrap();
    let bytes: i64 = page.iter().map(|e| payload_bytes(&e.payload)).sum();
    assert_eq!(
        page.len(),
        2,
        "two events fit in 2.5 events' worth of bytes, three do not ({bytes} bytes for a bound of {bound})"
    );
    assert!(bytes <= bound);
}

async fn a_deferred_event_is_held_back_until_its_time(store: &dyn Store) {
    let stored = some_events(store, 2).await;
    let t = now();
    store
        .defer_events(&[Deferral {
            event_id: stored[0],
            key: "run-1".to_owned(),
            until: t + secs(60),
        }])
        .await
        .unwrap();
    assert_eq!(unprocessed_ids(store, t).await, stored[1..]);
    assert_eq!(unprocessed_ids(store, t + secs(59)).await, stored[1..]);
    assert_eq!(
        unprocessed_ids(store, t + secs(61)).await,
        stored,
        "once its time has come, it is in its place, oldest first"
    );
}

// ---------------------------------------------------------------------------------------------
// defer_events, earlier_deferred

async fn recording_a_followed_run_releases_its_deferred_events_at_once(store: &dyn Store) {
    let stored = some_events(store, 3).await;
    let t = now();
    let later = t + minutes(60);
    store
        .defer_events(&[
            Deferral {
                event_id: stored[0],
                key: "run-1".to_owned(),
                until: later,
            },
            Deferral {
                event_id: stored[1],
                key: "run-2".to_owned(),
                until: later,
            },
        ])
        .await
        .unwrap();
    assert_eq!(unprocessed_ids(store, t).await, [stored[2]]);

    let execution = pending(store, "x").await;
    follow(store, &execution, &run("run-1", "x", t)).await;
    assert_eq!(
        unprocessed_ids(store, t).await,
        [stored[0], stored[2]],
        "run-1's event is released, run-2's still waits"
    );
    assert_eq!(
        store.earlier_deferred("run-1", stored[2]).await.unwrap(),
        Some(None),
        "released, but still unprocessed: a later event of the run waits for it"
    );
    assert_eq!(
        store.earlier_deferred("run-2", stored[2]).await.unwrap(),
        Some(Some(later))
    );

    store
        .complete_events(&[(stored[0], EventOutcome::default())])
        .await
        .unwrap();
    assert_eq!(
        store.earlier_deferred("run-1", stored[2]).await.unwrap(),
        None
    );
}

async fn a_deferral_for_a_run_followed_already_is_not_written(store: &dyn Store) {
    let t = now();
    let execution = pending(store, "x").await;
    follow(store, &execution, &run("run-1", "x", t)).await;
    let stored = some_events(store, 1).await;
    store
        .defer_events(&[Deferral {
            event_id: stored[0],
            key: "run-1".to_owned(),
            until: t + minutes(60),
        }])
        .await
        .unwrap();
    assert_eq!(
        unprocessed_ids(store, t).await,
        stored,
        "the run is known: nothing to wait for"
    );
}

async fn earlier_deferred_answers_for_older_unprocessed_events_of_the_key(store: &dyn Store) {
    let stored = some_events(store, 4).await;
    let t = now();
    let defer = |index: usize, key: &str, until: DateTime<Utc>| Deferral {
        event_id: stored[index],
        key: key.to_owned(),
        until,
    };
    store
        .defer_events(&[
            defer(0, "run-1", t + minutes(10)),
            defer(1, "run-1", t + minutes(20)),
            defer(3, "run-1", t + minutes(30)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.earlier_deferred("run-1", stored[0]).await.unwrap(),
        None,
        "nothing older than the first"
    );
    assert_eq!(
        store.earlier_deferred("run-1", stored[1]).await.unwrap(),
        Some(Some(t + minutes(10))),
        "only events older than `before` count"
    );
    assert_eq!(
        store.earlier_deferred("run-1", stored[2]).await.unwrap(),
        Some(Some(t + minutes(20))),
        "the latest deferral of the older ones"
    );
    assert_eq!(
        store.earlier_deferred("run-2", stored[2]).await.unwrap(),
        None
    );
    store
        .complete_events(&[
            (stored[0], EventOutcome::default()),
            (stored[1], EventOutcome::default()),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.earlier_deferred("run-1", stored[2]).await.unwrap(),
        None,
        "processed events no longer count"
    );
}

// ---------------------------------------------------------------------------------------------
// complete_events

async fn completing_events_marks_them_processed(store: &dyn Store) {
    let stored = some_events(store, 3).await;
    let fired = store
        .complete_events(&[
            (stored[0], EventOutcome::default()),
            (stored[2], EventOutcome::default()),
        ])
        .await
        .unwrap();
    assert_eq!(
        fired,
        [true, true],
        "nothing fired before: every outcome stored"
    );
    assert_eq!(unprocessed_ids(store, now()).await, [stored[1]]);
}

async fn completing_an_event_stores_the_executions_it_caused(store: &dyn Store) {
    let stored = some_events(store, 1).await;
    let handler = NewExecution {
        event_id: Some(stored[0]),
        handler_step: Some("screening".to_owned()),
        handler_status: Some("succeeded".to_owned()),
        rule_version: Some("v-1".to_owned()),
        ..new_execution("handler", "screen", "pending")
    };
    let skipped = NewExecution {
        event_id: Some(stored[0]),
        note: Some("the `when` condition is false".to_owned()),
        ..new_execution("skipped", "other", "skipped")
    };
    let outcome = EventOutcome {
        executions: vec![handler.clone(), skipped],
        ..EventOutcome::default()
    };
    assert_eq!(
        store
            .complete_events(&[(stored[0], outcome)])
            .await
            .unwrap(),
        [true]
    );
    assert!(unprocessed_ids(store, now()).await.is_empty());

    let read = store.execution("handler").await.unwrap().expect("stored");
    assert_eq!(
        (read.rule.as_str(), read.event_id, read.status.as_str()),
        ("screen", Some(stored[0]), "pending")
    );
    assert_eq!(read.handler_step.as_deref(), Some("screening"));
    assert_eq!(read.handler_status.as_deref(), Some("succeeded"));
    assert_eq!(read.context, handler.context);
    assert_eq!(read.rule_version.as_deref(), Some("v-1"));
    let read = store.execution("skipped").await.unwrap().expect("stored");
    assert_eq!(read.status, "skipped");
    assert_eq!(
        read.last_error.as_deref(),
        Some("the `when` condition is false"),
        "why it was skipped is what it shows"
    );
    assert_eq!(
        claim(store, Utc::now() + secs(1), LEASE, 100).await,
        ["handler"],
        "the pending one is due at once, the skipped one never runs"
    );
}

async fn a_pair_fired_before_makes_the_outcome_store_nothing_but_processed(store: &dyn Store) {
    following(store, &[("run-1", now() - minutes(60))]).await;
    let stored = some_events(store, 2).await;
    let outcome = |execution: &str, status: &str| EventOutcome {
        executions: vec![new_execution(execution, "on-running", "pending")],
        status_change: Some(change("run-1", status, false)),
        ..fire("run-1", "running")
    };
    assert_eq!(
        store
            .complete_events(&[(stored[0], outcome("first", "running"))])
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        store
            .complete_events(&[(stored[1], outcome("second", "stalled"))])
            .await
            .unwrap(),
        [false],
        "the pair fired before"
    );
    assert!(store.execution("first").await.unwrap().is_some());
    assert!(
        store.execution("second").await.unwrap().is_none(),
        "no execution for a pair fired before"
    );
    assert_eq!(
        store
            .followed("run-1")
            .await
            .unwrap()
            .expect("followed")
            .status,
        "running",
        "nor its status change"
    );
    assert!(
        unprocessed_ids(store, now()).await.is_empty(),
        "but the event is processed"
    );
}

async fn a_terminal_status_still_ends_the_following_when_its_pair_fired_before(store: &dyn Store) {
    following(store, &[("run-1", now() - minutes(60))]).await;
    let stored = some_events(store, 2).await;
    // The webhook came while the run was not known yet: the pair fired, the run did not change.
    assert_eq!(
        store
            .complete_events(&[(stored[0], fire("run-1", "succeeded"))])
            .await
            .unwrap(),
        [true]
    );
    let terminal = change("run-1", "succeeded", true);
    let outcome = EventOutcome {
        executions: vec![new_execution("again", "on-succeeded", "pending")],
        status_change: Some(terminal.clone()),
        ..fire("run-1", "succeeded")
    };
    assert_eq!(
        store
            .complete_events(&[(stored[1], outcome)])
            .await
            .unwrap(),
        [false]
    );
    let followed = store.followed("run-1").await.unwrap().expect("followed");
    assert!(followed.terminal, "a terminal run is no longer polled");
    assert_eq!(followed.status, "succeeded");
    assert!(store.execution("again").await.unwrap().is_none());
    assert!(
        store
            .stale_followed(now() + minutes(60), now() + minutes(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn each_event_of_a_batch_fires_its_pair_at_most_once(store: &dyn Store) {
    let stored = some_events(store, 4).await;
    let fired = store
        .complete_events(&[
            (stored[0], fire("run-1", "running")),
            (stored[1], fire("run-1", "running")),
            (stored[2], fire("run-1", "succeeded")),
            (stored[3], EventOutcome::default()),
        ])
        .await
        .unwrap();
    assert_eq!(fired, [true, false, true, true]);
    assert!(unprocessed_ids(store, now()).await.is_empty());
}

async fn a_status_change_is_recorded_on_the_followed_run(store: &dyn Store) {
    let long_ago = now() - minutes(60);
    following(store, &[("run-1", long_ago)]).await;
    let stored = some_events(store, 1).await;
    let running = change("run-1", "running", false);
    let outcome = EventOutcome {
        status_change: Some(running.clone()),
        ..fire("run-1", "running")
    };
    store
        .complete_events(&[(stored[0], outcome)])
        .await
        .unwrap();
    let followed = store.followed("run-1").await.unwrap().expect("followed");
    assert_eq!(followed.status, "running");
    assert_eq!(followed.remote_updated_at, running.remote_updated_at);
    assert!(!followed.terminal);
    assert!(followed.changed_at > long_ago, "a change was seen now");
    assert!(
        store
            .stale_followed(now() - minutes(30), now(), 10)
            .await
            .unwrap()
            .is_empty(),
        "a run that just changed is not stale"
    );
}

async fn an_event_is_never_seen_processed_without_its_executions(store: &dyn Store) {
    let stored = some_events(store, 40).await;
    let name = |index: usize| format!("caused-by-{index}");
    let complete = async {
        for (index, id) in stored.iter().enumerate() {
            let outcome = EventOutcome {
                executions: vec![new_execution(&name(index), "rule", "skipped")],
                ..EventOutcome::default()
            };
            store.complete_events(&[(*id, outcome)]).await.unwrap();
        }
    };
    let watch = async {
        loop {
            // Read in this order: what was processed before the first read is all in the second.
            let waiting = unprocessed_ids(store, now()).await;
            let executions = store.executions(&all()).await.unwrap();
            let made: BTreeSet<&str> = executions.iter().map(|e| e.id.as_str()).collect();
            for (index, id) in stored.iter().enumerate() {
                if !waiting.contains(id) {
                    assert!(
                        made.contains(name(index).as_str()),
                        "event {id} processed, its execution missing"
                    );
                }
            }
            if waiting.is_empty() {
                break;
            }
        }
    };
    tokio::join!(complete, watch);
}

// ---------------------------------------------------------------------------------------------
// insert_executions

async fn a_new_execution_starts_pending_at_its_first_step_and_due_at_once(store: &dyn Store) {
    let before = Utc::now();
    let stored = some_events(store, 1).await;
    let new = NewExecution {
        event_id: Some(stored[0]),
        rule_version: Some("v-7".to_owned()),
        sweep: true,
        first_step_creates: false,
        ..new_execution("x", "sweep", "pending")
    };
    store
        .insert_executions(std::slice::from_ref(&new))
        .await
        .unwrap();
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(
        (read.id.as_str(), read.rule.as_str(), read.status.as_str()),
        ("x", "sweep", "pending")
    );
    assert_eq!(read.event_id, Some(stored[0]));
    assert_eq!(read.context, new.context);
    assert_eq!(read.rule_version.as_deref(), Some("v-7"));
    assert!(read.sweep, "a sweep reads back as a sweep");
    assert_eq!((read.next_step, read.attempt), (0, 0));
    assert_eq!(read.step_started_at, None);
    assert_eq!(read.last_error, None);
    assert_eq!((read.handler_step, read.handler_status), (None, None));
    assert_close(read.created_at, before, "created_at");
    assert_close(read.updated_at, before, "updated_at");
    assert_eq!(claim(store, Utc::now() + secs(1), LEASE, 10).await, ["x"]);
}

async fn inserting_an_execution_again_leaves_the_stored_one_alone(store: &dyn Store) {
    let stored = pending(store, "x").await;
    let saved = save_changed(store, &stored, |e| {
        e.status = "succeeded".to_owned();
        e.next_step = 3;
    })
    .await;
    store
        .insert_executions(&[
            new_execution("x", "another-rule", "pending"),
            new_execution("y", "rule", "pending"),
        ])
        .await
        .unwrap();
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(
        (read.rule.as_str(), read.status.as_str(), read.next_step),
        ("rule", "succeeded", saved.next_step)
    );
    assert!(
        store.execution("y").await.unwrap().is_some(),
        "the new one of the batch is stored"
    );
}

// ---------------------------------------------------------------------------------------------
// claim_executions, renew_lease

async fn only_due_pending_unleased_executions_are_claimed(store: &dyn Store) {
    for id in ["due-1", "due-2", "later", "done"] {
        pending(store, id).await;
    }
    store
        .insert_executions(&[new_execution("skipped", "rule", "skipped")])
        .await
        .unwrap();
    let later = store.execution("later").await.unwrap().expect("stored");
    save_changed(store, &later, |e| e.next_attempt_at = now() + minutes(60)).await;
    let done = store.execution("done").await.unwrap().expect("stored");
    save_changed(store, &done, |e| e.status = "succeeded".to_owned()).await;

    let at = Utc::now() + secs(1);
    let claimed = store.claim_executions(at, LEASE, 100).await.unwrap();
    let mut claimed_ids = ids(&claimed);
    claimed_ids.sort_unstable();
    assert_eq!(claimed_ids, ["due-1", "due-2"]);
    assert!(claimed.iter().all(|e| e.status == "pending"));
    assert!(
        claim(store, at, LEASE, 100).await.is_empty(),
        "leased ones are not claimed again"
    );
    assert_eq!(
        claim(store, now() + minutes(61), LEASE, 100).await,
        ["due-1", "due-2", "later"],
        "the later one once it is due (and the leases ended)"
    );
}

async fn a_claimed_execution_is_claimed_again_only_when_its_lease_has_ended(store: &dyn Store) {
    pending(store, "x").await;
    let at = Utc::now() + secs(1);
    assert_eq!(claim(store, at, LEASE, 10).await, ["x"]);
    assert!(claim(store, at + secs(30), LEASE, 10).await.is_empty());
    assert!(claim(store, at + secs(59), LEASE, 10).await.is_empty());
    assert_eq!(
        claim(store, at + secs(61), LEASE, 10).await,
        ["x"],
        "a worker that died gave its execution up when its lease ended"
    );
}

async fn a_claim_takes_at_most_its_limit(store: &dyn Store) {
    for n in 0..5 {
        pending(store, &format!("x{n}")).await;
    }
    let at = Utc::now() + secs(1);
    let mut seen = BTreeSet::new();
    for expected in [2, 2, 1, 0] {
        let claimed = claim(store, at, LEASE, 2).await;
        assert_eq!(claimed.len(), expected);
        for id in claimed {
            assert!(seen.insert(id), "claimed twice");
        }
    }
    assert_eq!(seen.len(), 5);
}

async fn concurrent_claims_never_hand_out_the_same_execution(store: &dyn Store) {
    for n in 0..20 {
        pending(store, &format!("x{n:02}")).await;
    }
    let at = Utc::now() + secs(1);
    let (a, b, c, d) = tokio::join!(
        claim(store, at, LEASE, 7),
        claim(store, at, LEASE, 7),
        claim(store, at, LEASE, 7),
        claim(store, at, LEASE, 7),
    );
    let mut seen = BTreeSet::new();
    for id in [a, b, c, d].into_iter().flatten() {
        assert!(seen.insert(id.clone()), "{id} claimed twice");
    }
    for id in claim(store, at, LEASE, 100).await {
        assert!(seen.insert(id.clone()), "{id} claimed twice");
    }
    assert_eq!(seen.len(), 20, "every due one is claimed once");
}

/// An execution's in-doubt marker as stored.
async fn marker(store: &dyn Store, id: &str) -> Option<DateTime<Utc>> {
    store
        .execution(id)
        .await
        .unwrap()
        .expect("stored")
        .step_started_at
}

async fn a_claim_marks_a_first_step_that_creates_in_doubt(store: &dyn Store) {
    let creates = NewExecution {
        first_step_creates: true,
        ..new_execution("creates", "rule", "pending")
    };
    store
        .insert_executions(&[creates, new_execution("plain", "rule", "pending")])
        .await
        .unwrap();
    assert!(
        !store.creates_in_doubt().await.unwrap(),
        "queued is not in doubt"
    );
    let at = now() + secs(1);
    let mut claimed = store.claim_executions(at, LEASE, 10).await.unwrap();
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    let [first, plain] = &claimed[..] else {
        panic!("both are claimed: {claimed:?}");
    };
    assert!(first.create_marked && !plain.create_marked);
    assert_eq!(
        first.step_started_at, None,
        "the marker as it was before the claim"
    );
    assert!(store.creates_in_doubt().await.unwrap());
    assert_eq!(
        marker(store, "creates").await,
        Some(at),
        "the claim left the marker"
    );
    assert_eq!(marker(store, "plain").await, None);

    // Taken over after the lease (the holder died, maybe after sending): the next claim sees
    // the first claim's marker, and keeps it.
    let later = at + chrono::Duration::from_std(LEASE).unwrap() + secs(1);
    let again = store.claim_executions(later, LEASE, 10).await.unwrap();
    let taken = again
        .iter()
        .find(|e| e.id == "creates")
        .expect("claimed again");
    assert!(taken.create_marked);
    assert_eq!(
        taken.step_started_at,
        Some(at),
        "in doubt since the first claim"
    );
    assert_eq!(marker(store, "creates").await, Some(at));

    // Past its first step, a claim marks nothing: that step's create writes its own marker.
    let mut past = taken.clone();
    past.next_step = 1;
    past.step_started_at = None;
    past.next_attempt_at = later;
    store.save_execution(&past, true).await.unwrap();
    let third = store
        .claim_executions(later + secs(1), LEASE, 10)
        .await
        .unwrap();
    let taken = third
        .iter()
        .find(|e| e.id == "creates")
        .expect("claimed again");
    assert!(!taken.create_marked);
    assert_eq!(marker(store, "creates").await, None);
}

async fn a_renewed_lease_keeps_a_running_execution_from_being_claimed(store: &dyn Store) {
    pending(store, "x").await;
    let at = Utc::now() + secs(1);
    assert_eq!(claim(store, at, Duration::from_secs(10), 10).await, ["x"]);
    store.renew_lease("x", at + minutes(60)).await.unwrap();
    assert!(claim(store, at + secs(60), LEASE, 10).await.is_empty());
    assert_eq!(claim(store, at + minutes(61), LEASE, 10).await, ["x"]);
}

async fn renewing_does_not_lease_an_execution_whose_lease_was_given_up(store: &dyn Store) {
    let x = pending(store, "x").await;
    let at = Utc::now() + secs(1);
    assert_eq!(claim(store, at, LEASE, 10).await, ["x"]);
    // `x` stops to wait for a retry (due already); a heartbeat of its run comes late.
    save_changed(store, &x, |e| e.attempt = 1).await;
    store.renew_lease("x", at + minutes(60)).await.unwrap();
    pending(store, "never-claimed").await;
    store
        .renew_lease("never-claimed", at + minutes(60))
        .await
        .unwrap();
    assert_eq!(
        claim(store, Utc::now() + secs(2), LEASE, 10).await,
        ["never-claimed", "x"],
        "renewing leases only an execution that holds its lease"
    );
}

// ---------------------------------------------------------------------------------------------
// begin_step, save_execution, finish_step, record_step

async fn begin_step_keeps_the_earliest_start_of_a_step(store: &dyn Store) {
    let x = pending(store, "x").await;
    let t = now();
    store.begin_step("x", t, LEASE).await.unwrap();
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(read.step_started_at, Some(t));
    // A retry of the same step: the first attempt's start stays (its outcome may be unknown).
    store.begin_step("x", t + secs(30), LEASE).await.unwrap();
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(read.step_started_at, Some(t));
    // Once progress clears it, the next step starts afresh.
    save_changed(store, &x, |e| e.next_step = 1).await;
    store.begin_step("x", t + secs(60), LEASE).await.unwrap();
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(read.step_started_at, Some(t + secs(60)));
}

async fn begin_step_renews_the_lease(store: &dyn Store) {
    pending(store, "x").await;
    let at = Utc::now() + secs(1);
    assert_eq!(claim(store, at, Duration::from_secs(10), 10).await, ["x"]);
    store.begin_step("x", at + secs(5), LEASE).await.unwrap();
    assert!(
        claim(store, at + secs(30), LEASE, 10).await.is_empty(),
        "leased for a minute from the step's start"
    );
    assert_eq!(claim(store, at + secs(70), LEASE, 10).await, ["x"]);
}

async fn saved_progress_reads_back_field_for_field(store: &dyn Store) {
    let stored = some_events(store, 1).await;
    let new = NewExecution {
        event_id: Some(stored[0]),
        handler_step: Some("screening".to_owned()),
        handler_status: Some("failed".to_owned()),
        rule_version: Some("v-3".to_owned()),
        ..new_execution("x", "on-failed", "pending")
    };
    store
        .complete_events(&[(
            stored[0],
            EventOutcome {
                executions: vec![new],
                ..EventOutcome::default()
            },
        )])
        .await
        .unwrap();
    let created = store.execution("x").await.unwrap().expect("stored");
    let t = now();
    let mut progress = created.clone();
    progress.status = "pending".to_owned();
    progress.context = json!({ "steps": { "screening": { "id": "run-9" } }, "n": [1, 2] });
    progress.next_step = 3;
    progress.attempt = 2;
    progress.next_attempt_at = t + minutes(5);
    progress.step_started_at = Some(t - secs(10));
    progress.last_error = Some("HTTP 503".to_owned());
    store.save_execution(&progress, true).await.unwrap();

    let read = store.execution("x").await.unwrap().expect("stored");
    assert!(read.updated_at >= created.created_at);
    let expected = Execution {
        updated_at: read.updated_at,
        ..progress.clone()
    };
    assert_eq!(
        as_json(&read),
        as_json(&expected),
        "every field as saved; id, rule, event, handler, rule_version and created_at as created"
    );

    let cleared = save_changed(store, &read, |e| {
        e.status = "succeeded".to_owned();
        e.step_started_at = None;
        e.last_error = None;
    })
    .await;
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(
        as_json(&read),
        as_json(&Execution {
            updated_at: read.updated_at,
            ..cleared
        })
    );
}

async fn saving_progress_keeps_the_lease_unless_released(store: &dyn Store) {
    let kept = pending(store, "kept").await;
    let released = pending(store, "released").await;
    let at = Utc::now() + secs(1);
    assert_eq!(claim(store, at, LEASE, 10).await, ["kept", "released"]);
    let mut next = kept.clone();
    next.next_step = 1;
    store.save_execution(&next, false).await.unwrap();
    let mut next = released.clone();
    next.attempt = 1;
    store.save_execution(&next, true).await.unwrap();
    assert_eq!(
        claim(store, at + secs(1), LEASE, 10).await,
        ["released"],
        "progress between two steps keeps the lease; giving it up lets the next claim take it"
    );
}

async fn finish_step_stores_the_record_the_progress_and_the_followed_run(store: &dyn Store) {
    let x = pending(store, "x").await;
    let t = now();
    let record = StepRecord {
        note: Some("adopted the FlowRun an attempt without an answer made".to_owned()),
        ..step("x", 0)
    };
    let progress = Execution {
        next_step: 1,
        attempt: 0,
        context: json!({ "steps": { "step0": { "id": "run-1" } } }),
        step_started_at: None,
        ..x.clone()
    };
    let followed = run("run-1", "x", t);
    store
        .finish_step(&record, &progress, Some(&followed), None)
        .await
        .unwrap();

    let records = store.step_records("x").await.unwrap();
    assert_eq!(as_json(&anonymous(records)), as_json(&[record]));
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(
        as_json(&read),
        as_json(&Execution {
            updated_at: read.updated_at,
            ..progress
        })
    );
    let read = store.followed("run-1").await.unwrap().expect("followed");
    assert_eq!(as_json(&read), as_json(&followed));
    assert_eq!(
        resource_ids(&store.followed_runs(10).await.unwrap()),
        ["run-1"]
    );
}

async fn finish_step_keeps_the_lease(store: &dyn Store) {
    let x = pending(store, "x").await;
    let at = Utc::now() + secs(1);
    assert_eq!(claim(store, at, LEASE, 10).await, ["x"]);
    let progress = Execution { next_step: 1, ..x };
    store
        .finish_step(&step("x", 0), &progress, None, None)
        .await
        .unwrap();
    assert!(
        claim(store, at + secs(1), LEASE, 10).await.is_empty(),
        "the execution goes on to its next step: nobody else may claim it"
    );
}

async fn finish_step_puts_its_event_in_the_inbox_once(store: &dyn Store) {
    let x = pending(store, "x").await;
    let answered = NewEvent {
        source: EventSource::Recrubo,
        event_type: "flowGenerations/updated".to_owned(),
        dedup_key: Some("answered:gen-1:succeeded".to_owned()),
        payload: json!({ "data": { "id": "gen-1", "attributes": { "status": "succeeded" } } }),
    };
    let followed = FollowedRun {
        resource_type: flowd::recrubo::FollowedKind::FlowGeneration,
        ..run("gen-1", "x", now())
    };
    let progress = Execution {
        next_step: 1,
        ..x.clone()
    };
    store
        .finish_step(&step("x", 0), &progress, Some(&followed), Some(&answered))
        .await
        .unwrap();
    // The same finish again (a retried write) does not make the status fire twice.
    store
        .finish_step(&step("x", 0), &progress, Some(&followed), Some(&answered))
        .await
        .unwrap();
    let inbox = store.unprocessed_events(100, 1 << 20, now()).await.unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].source, EventSource::Recrubo);
    assert_eq!(inbox[0].event_type, answered.event_type);
    assert_eq!(inbox[0].payload, answered.payload);
}

async fn a_step_record_is_replaced_by_the_next_attempt_of_the_same_step(store: &dyn Store) {
    pending(store, "x").await;
    pending(store, "y").await;
    let first = StepRecord {
        status: "retrying".to_owned(),
        output: None,
        error: Some("HTTP 503".to_owned()),
        ..step("x", 0)
    };
    store.record_step(&first).await.unwrap();
    let second = StepRecord {
        status: "succeeded".to_owned(),
        attempts: 2,
        input: Some(json!({ "flow": "screening-flow", "attempt": 2 })),
        output: Some(json!({ "id": "run-2" })),
        error: None,
        note: Some("adopted the FlowRun the first attempt made".to_owned()),
        finished_at: Some(first.started_at + secs(5)),
        ..first.clone()
    };
    store.record_step(&second).await.unwrap();
    let other = StepRecord {
        kind: "email".to_owned(),
        ..step("x", 1)
    };
    store.record_step(&other).await.unwrap();

    let mut records = anonymous(store.step_records("x").await.unwrap());
    records.sort_by_key(|r| r.step_index);
    assert_eq!(
        as_json(&records),
        as_json(&[second, other]),
        "one record per step, the latest attempt's, note included"
    );
    assert!(store.step_records("y").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// followed, stale_followed, mark_polled, followed_runs

async fn an_unknown_run_is_not_followed(store: &dyn Store) {
    following(store, &[("run-1", now())]).await;
    assert!(store.followed("run-2").await.unwrap().is_none());
}

async fn stale_followed_lists_quiet_runs_not_terminal_oldest_first_up_to_its_limit(
    store: &dyn Store,
) {
    let t = now();
    let x = following(
        store,
        &[
            ("quiet-20", t - minutes(20)),
            ("quiet-30", t - minutes(30)),
            ("recent", t - minutes(1)),
            ("quiet-10", t - minutes(10)),
        ],
    )
    .await;
    let finished = FollowedRun {
        status: "succeeded".to_owned(),
        terminal: true,
        ..run("finished", &x.id, t - minutes(40))
    };
    follow(store, &x, &finished).await;

    let stale = store.stale_followed(t - minutes(5), t, 10).await.unwrap();
    assert_eq!(
        resource_ids(&stale),
        ["quiet-30", "quiet-20", "quiet-10"],
        "unchanged since `before`, not terminal, checked longest ago first"
    );
    let stale = store.stale_followed(t - minutes(5), t, 2).await.unwrap();
    assert_eq!(resource_ids(&stale), ["quiet-30", "quiet-20"]);
}

async fn a_read_poll_counts_as_checked_now(store: &dyn Store) {
    let t = now();
    following(store, &[("run-1", t - minutes(30))]).await;
    store
        .mark_polled("run-1", PollMark::Failed(t - minutes(1)), t - minutes(2))
        .await
        .unwrap();
    store.mark_polled("run-1", PollMark::Read, t).await.unwrap();
    let read = store.followed("run-1").await.unwrap().expect("followed");
    assert_eq!(read.changed_at, t);
    assert_eq!(read.poll_failures, 0, "no failure in a row any more");
    assert!(!read.terminal);
    assert!(
        store
            .stale_followed(t - minutes(5), t, 10)
            .await
            .unwrap()
            .is_empty(),
        "not polled again before `reconcile_after`"
    );
    assert_eq!(
        resource_ids(
            &store
                .stale_followed(t + secs(1), t + secs(1), 10)
                .await
                .unwrap()
        ),
        ["run-1"]
    );
}

async fn a_failed_poll_backs_the_run_off_until_its_time_and_counts_the_failures(store: &dyn Store) {
    let t = now();
    following(store, &[("run-1", t - minutes(30))]).await;
    let before = t - minutes(5);
    store
        .mark_polled("run-1", PollMark::Failed(t + secs(60)), t)
        .await
        .unwrap();
    assert_eq!(
        store
            .followed("run-1")
            .await
            .unwrap()
            .expect("followed")
            .poll_failures,
        1
    );
    assert!(
        store
            .stale_followed(before, t, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .stale_followed(before, t + secs(59), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        resource_ids(
            &store
                .stale_followed(before, t + secs(61), 10)
                .await
                .unwrap()
        ),
        ["run-1"]
    );
    store
        .mark_polled("run-1", PollMark::Failed(t + secs(180)), t + secs(61))
        .await
        .unwrap();
    let read = store.followed("run-1").await.unwrap().expect("followed");
    assert_eq!(read.poll_failures, 2);
    assert!(!read.terminal, "a failed poll is not an answer");
    assert!(
        store
            .stale_followed(before, t + secs(62), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_gone_run_is_terminal_and_never_polled_again(store: &dyn Store) {
    let t = now();
    following(store, &[("run-1", t - minutes(30))]).await;
    store.mark_polled("run-1", PollMark::Gone, t).await.unwrap();
    let read = store.followed("run-1").await.unwrap().expect("followed");
    assert!(read.terminal);
    assert_eq!(read.gone_at, Some(t));
    let much_later = t + TimeDelta::days(1);
    assert!(
        store
            .stale_followed(much_later, much_later, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn followed_runs_lists_the_most_recently_changed_first(store: &dyn Store) {
    let t = now();
    let x = following(
        store,
        &[
            ("run-30", t - minutes(30)),
            ("run-10", t - minutes(10)),
            ("run-20", t - minutes(20)),
        ],
    )
    .await;
    let finished = FollowedRun {
        terminal: true,
        ..run("finished-5", &x.id, t - minutes(5))
    };
    follow(store, &x, &finished).await;
    assert_eq!(
        resource_ids(&store.followed_runs(10).await.unwrap()),
        ["finished-5", "run-10", "run-20", "run-30"]
    );
    assert_eq!(
        resource_ids(&store.followed_runs(2).await.unwrap()),
        ["finished-5", "run-10"]
    );
}

// ---------------------------------------------------------------------------------------------
// Dead letters

async fn dead_letters_are_listed_newest_first_with_what_failed(store: &dyn Store) {
    let before = Utc::now();
    let x = failed_at(store, "x", 2).await;
    let y = failed_at(store, "y", 0).await;
    store.add_dead_letter(&x, "http", "HTTP 500").await.unwrap();
    store
        .add_dead_letter(&y, "email", "SMTP cut after DATA")
        .await
        .unwrap();
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters.len(), 2);
    let (newest, oldest) = (&letters[0], &letters[1]);
    assert_ne!(newest.id, oldest.id);
    assert_eq!(
        (
            newest.execution_id.as_str(),
            newest.step_index,
            newest.rule.as_str(),
            newest.kind.as_str(),
            newest.error.as_str(),
        ),
        ("y", 0, "rule", "email", "SMTP cut after DATA")
    );
    assert_eq!(
        (
            oldest.execution_id.as_str(),
            oldest.step_index,
            oldest.kind.as_str(),
            oldest.error.as_str(),
        ),
        ("x", 2, "http", "HTTP 500")
    );
    for letter in &letters {
        assert_eq!(letter.retried_at, None);
        assert_close(letter.created_at, before, "created_at");
    }
    let first_page = store.dead_letters(1).await.unwrap();
    assert_eq!(
        first_page.iter().map(|l| l.id).collect::<Vec<_>>(),
        [newest.id]
    );
}

async fn retrying_a_dead_letter_puts_its_execution_back_at_the_failed_step(store: &dyn Store) {
    let x = pending(store, "x").await;
    let started = now() - minutes(1);
    // A create whose outcome is unknown failed for good at step 2.
    let failed = save_changed(store, &x, |e| {
        e.status = "failed".to_owned();
        e.next_step = 2;
        e.attempt = 5;
        e.next_attempt_at = now() + minutes(60);
        e.step_started_at = Some(started);
        e.last_error = Some("no answer".to_owned());
    })
    .await;
    store
        .add_dead_letter(&failed, "start_flow_run", "no answer")
        .await
        .unwrap();
    let letter = store.dead_letters(1).await.unwrap()[0].clone();

    assert_eq!(
        store.retry_dead_letter(letter.id).await.unwrap(),
        RetryOutcome::Retried
    );
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(read.status, "pending");
    assert_eq!(read.next_step, 2, "at the failed step");
    assert_eq!(
        read.step_started_at,
        Some(started),
        "still in doubt: the retry looks for what the lost attempt made"
    );
    assert_eq!(
        claim(store, Utc::now() + secs(1), LEASE, 10).await,
        ["x"],
        "due at once"
    );
    let letter = store.dead_letters(1).await.unwrap()[0].clone();
    assert!(letter.retried_at.is_some());
}

async fn a_dead_letter_is_retried_once(store: &dyn Store) {
    let x = failed_at(store, "x", 1).await;
    store.add_dead_letter(&x, "http", "HTTP 500").await.unwrap();
    let id = store.dead_letters(1).await.unwrap()[0].id;
    assert_eq!(
        store.retry_dead_letter(id).await.unwrap(),
        RetryOutcome::Retried
    );
    assert_eq!(
        store.retry_dead_letter(id).await.unwrap(),
        RetryOutcome::AlreadyRetried
    );
    // Even when the execution failed at that step once more.
    let read = store.execution("x").await.unwrap().expect("stored");
    save_changed(store, &read, |e| e.status = "failed".to_owned()).await;
    assert_eq!(
        store.retry_dead_letter(id).await.unwrap(),
        RetryOutcome::AlreadyRetried
    );
}

async fn retrying_an_unknown_dead_letter_finds_nothing(store: &dyn Store) {
    assert_eq!(
        store.retry_dead_letter(1).await.unwrap(),
        RetryOutcome::NotFound
    );
    let x = failed_at(store, "x", 1).await;
    store.add_dead_letter(&x, "http", "HTTP 500").await.unwrap();
    let id = store.dead_letters(1).await.unwrap()[0].id;
    assert_eq!(
        store.retry_dead_letter(id + 1000).await.unwrap(),
        RetryOutcome::NotFound
    );
    assert_eq!(
        store.execution("x").await.unwrap().expect("stored").status,
        "failed"
    );
}

async fn a_dead_letter_is_not_retried_once_its_execution_went_on(store: &dyn Store) {
    let x = pending(store, "x").await;
    // `continue_on_error`: step 1 failed for good, the execution went on and finished.
    let at_step_1 = Execution {
        next_step: 1,
        ..x.clone()
    };
    store
        .add_dead_letter(&at_step_1, "http", "HTTP 500")
        .await
        .unwrap();
    save_changed(store, &x, |e| {
        e.status = "succeeded".to_owned();
        e.next_step = 3;
    })
    .await;
    let id = store.dead_letters(1).await.unwrap()[0].id;
    assert_eq!(
        store.retry_dead_letter(id).await.unwrap(),
        RetryOutcome::ExecutionWentOn
    );
    let read = store.execution("x").await.unwrap().expect("stored");
    assert_eq!(
        (read.status.as_str(), read.next_step),
        ("succeeded", 3),
        "left as it is"
    );
}

async fn a_dead_letter_is_not_retried_while_its_execution_runs_again(store: &dyn Store) {
    let x = failed_at(store, "x", 1).await;
    store.add_dead_letter(&x, "http", "HTTP 500").await.unwrap();
    store.add_dead_letter(&x, "http", "HTTP 502").await.unwrap();
    let letters = store.dead_letters(2).await.unwrap();
    assert_eq!(
        store.retry_dead_letter(letters[0].id).await.unwrap(),
        RetryOutcome::Retried
    );
    assert_eq!(
        store.retry_dead_letter(letters[1].id).await.unwrap(),
        RetryOutcome::ExecutionWentOn,
        "it is pending again already"
    );
}

// ---------------------------------------------------------------------------------------------
// creates_in_doubt

async fn creates_are_in_doubt_only_while_a_pending_execution_has_a_step_in_flight(
    store: &dyn Store,
) {
    assert!(!store.creates_in_doubt().await.unwrap());
    let x = pending(store, "x").await;
    assert!(
        !store.creates_in_doubt().await.unwrap(),
        "nothing in flight"
    );
    store.begin_step("x", now(), LEASE).await.unwrap();
    assert!(store.creates_in_doubt().await.unwrap(), "a step in flight");
    let in_flight = store.execution("x").await.unwrap().expect("stored");
    let failed = save_changed(store, &in_flight, |e| e.status = "failed".to_owned()).await;
    assert!(
        !store.creates_in_doubt().await.unwrap(),
        "a failed execution is not going to find out"
    );
    save_changed(store, &failed, |e| e.status = "pending".to_owned()).await;
    assert!(store.creates_in_doubt().await.unwrap());
    save_changed(store, &x, |e| e.step_started_at = None).await;
    assert!(!store.creates_in_doubt().await.unwrap(), "the step ended");
}

// ---------------------------------------------------------------------------------------------
// Rule versions

async fn a_rule_version_is_stored_once_by_hash_and_keeps_its_first_definition(store: &dyn Store) {
    let version = |hash: &str, rule: &str, definition: &str| RuleVersion {
        hash: hash.to_owned(),
        rule: rule.to_owned(),
        definition: Arc::from(definition),
    };
    store.save_rule_versions(&[]).await.unwrap();
    store
        .save_rule_versions(&[version("h1", "screen", r#"{"rule":{"v":1}}"#)])
        .await
        .unwrap();
    store
        .save_rule_versions(&[
            version("h1", "screen", r#"{"rule":{"v":"changed"}}"#),
            version("h2", "screen", r#"{"rule":{"v":2}}"#),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.rule_version("h1").await.unwrap().as_deref(),
        Some(r#"{"rule":{"v":1}}"#),
        "the first definition is kept"
    );
    assert_eq!(
        store.rule_version("h2").await.unwrap().as_deref(),
        Some(r#"{"rule":{"v":2}}"#)
    );
    assert_eq!(store.rule_version("unknown").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Schedules

async fn schedule_states_read_back_as_set(store: &dyn Store) {
    let t = now();
    store
        .set_schedule_states(&[
            ("nightly".to_owned(), "cron 0 2 * * * UTC".to_owned(), t),
            ("often".to_owned(), "every 5m".to_owned(), t - minutes(5)),
        ])
        .await
        .unwrap();
    store
        .set_schedule_states(&[(
            "nightly".to_owned(),
            "cron 0 3 * * * UTC".to_owned(),
            t + minutes(60),
        )])
        .await
        .unwrap();
    // The same schedule set to an earlier time (another instance, its clock a little behind)
    // keeps the later one.
    store
        .set_schedule_states(&[("often".to_owned(), "every 5m".to_owned(), t - minutes(9))])
        .await
        .unwrap();
    let expected: HashMap<String, (String, DateTime<Utc>)> = [
        (
            "nightly".to_owned(),
            ("cron 0 3 * * * UTC".to_owned(), t + minutes(60)),
        ),
        ("often".to_owned(), ("every 5m".to_owned(), t - minutes(5))),
    ]
    .into();
    assert_eq!(store.schedule_states().await.unwrap(), expected);
}

async fn a_tick_is_recorded_once_and_its_event_stored_only_the_first_time(store: &dyn Store) {
    let t = now();
    let (t1, t2, t3) = (t - minutes(3), t - minutes(2), t - minutes(1));
    assert_eq!(
        store
            .record_ticks(&[ticks("often", "every 1m", &[t1, t2])])
            .await
            .unwrap(),
        [vec![true, true]]
    );
    assert_eq!(
        store
            .record_ticks(&[
                ticks("often", "every 1m", &[t2, t3]),
                ticks("other", "every 1m", &[t2]),
            ])
            .await
            .unwrap(),
        [vec![false, true], vec![true]],
        "a (rule, time) fires once; another rule's tick at the same time is its own"
    );
    let inbox = store.unprocessed_events(100, 1 << 20, now()).await.unwrap();
    let fired: Vec<&Value> = inbox.iter().map(|e| &e.payload).collect();
    assert_eq!(
        fired,
        [
            &json!({ "rule": "often", "at": t1 }),
            &json!({ "rule": "often", "at": t2 }),
            &json!({ "rule": "often", "at": t3 }),
            &json!({ "rule": "other", "at": t2 }),
        ]
    );
    assert!(inbox.iter().all(|e| e.source == EventSource::Schedule));
}

async fn recording_ticks_moves_each_rules_state_to_its_last_tick(store: &dyn Store) {
    let t = now();
    store
        .record_ticks(&[
            ticks(
                "often",
                "every 1m",
                &[t - minutes(3), t - minutes(1), t - minutes(2)],
            ),
            ticks("nightly", "cron 0 2 * * * UTC", &[t - minutes(60)]),
        ])
        .await
        .unwrap();
    let states = store.schedule_states().await.unwrap();
    assert_eq!(
        states.get("often"),
        Some(&("every 1m".to_owned(), t - minutes(1)))
    );
    assert_eq!(
        states.get("nightly"),
        Some(&("cron 0 2 * * * UTC".to_owned(), t - minutes(60)))
    );
    store
        .record_ticks(&[ticks("often", "every 2m", &[t])])
        .await
        .unwrap();
    assert_eq!(
        store.schedule_states().await.unwrap().get("often"),
        Some(&("every 2m".to_owned(), t)),
        "under the fingerprint it fired with"
    );
}

// ---------------------------------------------------------------------------------------------
// prune_history

async fn pruning_removes_old_finished_executions_with_their_steps(store: &dyn Store) {
    let succeeded = pending(store, "succeeded").await;
    let failed = pending(store, "failed").await;
    let running = pending(store, "running").await;
    for x in [&succeeded, &failed, &running] {
        store.record_step(&step(&x.id, 0)).await.unwrap();
    }
    follow(store, &succeeded, &run("run-1", "succeeded", now())).await;
    save_changed(store, &succeeded, |e| e.status = "succeeded".to_owned()).await;
    save_changed(store, &failed, |e| e.status = "failed".to_owned()).await;
    let waiting = some_events(store, 1).await;

    let pruned = store
        .prune_history(Utc::now() + minutes(1), 1000)
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    for gone in ["succeeded", "failed"] {
        assert!(store.execution(gone).await.unwrap().is_none());
        assert!(store.step_records(gone).await.unwrap().is_empty());
    }
    assert!(
        store.execution("running").await.unwrap().is_some(),
        "pending executions stay"
    );
    assert_eq!(store.step_records("running").await.unwrap().len(), 1);
    assert!(
        store.followed("run-1").await.unwrap().is_some(),
        "followed runs stay"
    );
    assert_eq!(
        unprocessed_ids(store, now()).await,
        waiting,
        "unprocessed events stay"
    );
}

async fn pruning_keeps_the_newest_finished_executions_up_to_keep(store: &dyn Store) {
    for id in ["oldest", "older", "newest"] {
        let x = pending(store, id).await;
        save_changed(store, &x, |e| e.status = "succeeded".to_owned()).await;
        // Distinct creation times: "newest" is unambiguous.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let long_ago = Utc::now() - TimeDelta::days(1);
    assert_eq!(
        store.prune_history(long_ago, 100).await.unwrap(),
        0,
        "recent, and within `keep`"
    );
    assert_eq!(store.prune_history(long_ago, 1).await.unwrap(), 2);
    assert_eq!(ids(&store.executions(&all()).await.unwrap()), ["newest"]);
}

async fn pruning_keeps_each_rules_last_tick(store: &dyn Store) {
    let t = now();
    let (first, last) = (t - minutes(2), t - minutes(1));
    store
        .record_ticks(&[ticks("often", "every 1m", &[first, last])])
        .await
        .unwrap();
    store
        .prune_history(Utc::now() + minutes(1), 1000)
        .await
        .unwrap();
    assert_eq!(
        store
            .record_ticks(&[ticks("often", "every 1m", &[last])])
            .await
            .unwrap(),
        [vec![false]],
        "the last tick still cannot fire twice"
    );
    assert_eq!(
        store
            .record_ticks(&[ticks("often", "every 1m", &[first])])
            .await
            .unwrap(),
        [vec![true]],
        "an older tick is history only, and went"
    );
}

// ---------------------------------------------------------------------------------------------
// executions, execution, step_records

async fn executions_are_listed_newest_first_filtered_and_paged(store: &dyn Store) {
    for (id, rule, status) in [
        ("a", "r1", "skipped"),
        ("b", "r1", "pending"),
        ("c", "r2", "skipped"),
    ] {
        store
            .insert_executions(&[new_execution(id, rule, status)])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_created = store
        .execution("b")
        .await
        .unwrap()
        .expect("stored")
        .created_at;
    let list = async |filter: ExecutionFilter| {
        let found = store.executions(&filter).await.unwrap();
        ids(&found)
            .iter()
            .map(|id| (*id).to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(list(all()).await, ["c", "b", "a"]);
    assert_eq!(
        list(ExecutionFilter {
            rule: Some("r1".to_owned()),
            ..all()
        })
        .await,
        ["b", "a"]
    );
    assert_eq!(
        list(ExecutionFilter {
            status: Some("skipped".to_owned()),
            ..all()
        })
        .await,
        ["c", "a"]
    );
    assert_eq!(
        list(ExecutionFilter {
            rule: Some("r1".to_owned()),
            status: Some("pending".to_owned()),
            ..all()
        })
        .await,
        ["b"]
    );
    assert_eq!(
        list(ExecutionFilter {
            since: Some(b_created),
            ..all()
        })
        .await,
        ["c", "b"],
        "created at or after"
    );
    assert_eq!(
        list(ExecutionFilter {
            until: Some(b_created),
            ..all()
        })
        .await,
        ["a"],
        "created before"
    );
    assert_eq!(
        list(ExecutionFilter {
            limit: 2,
            offset: 1,
            ..all()
        })
        .await,
        ["b", "a"]
    );
    assert_eq!(list(ExecutionFilter { limit: 1, ..all() }).await, ["c"]);
}

async fn an_unknown_execution_is_none(store: &dyn Store) {
    pending(store, "x").await;
    assert!(store.execution("y").await.unwrap().is_none());
    assert!(store.step_records("y").await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Flow control: admit, cancel, cancel_now, cancel_requested, wake_group

/// A pending execution of rule `g` in group `key`.
async fn member(store: &dyn Store, id: &str, key: &str) -> Execution {
    let mut new = new_execution(id, "g", "pending");
    new.flow_key = Some(key.to_owned());
    store.insert_executions(&[new]).await.unwrap();
    // Distinct creation times: the older goes first.
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.execution(id).await.unwrap().expect("just stored")
}

fn queue(limit: u32) -> flowd::store::Gate {
    flowd::store::Gate {
        concurrency: Some(flowd::rules::ruleset::Concurrency {
            limit,
            mode: flowd::rules::ruleset::ConcurrencyMode::Queue,
        }),
        poll: Duration::from_secs(2),
        ..flowd::store::Gate::default()
    }
}

async fn status_of(store: &dyn Store, id: &str) -> String {
    store.execution(id).await.unwrap().expect("stored").status
}

async fn the_gate_queues_behind_an_active_member_and_admits_in_order(store: &dyn Store) {
    use flowd::store::Admission;
    for id in ["a", "b", "c"] {
        member(store, id, "k").await;
    }
    member(store, "other", "k2").await;
    let gate = queue(1);
    assert_eq!(
        store.admit("a", &gate, now()).await.unwrap(),
        Admission::Admitted(vec![])
    );
    // Admitted again (a retry): still admitted, nothing else changes.
    assert_eq!(
        store.admit("a", &gate, now()).await.unwrap(),
        Admission::Admitted(vec![])
    );
    let Admission::Waiting(waiting) = store.admit("b", &gate, now()).await.unwrap() else {
        panic!("b must wait behind a");
    };
    assert_eq!(
        (waiting.kind.as_str(), waiting.behind.as_deref()),
        ("queue", Some("a"))
    );
    // c waits behind b, the older one, even before a is done.
    let Admission::Waiting(waiting) = store.admit("c", &gate, now()).await.unwrap() else {
        panic!("c must wait behind b");
    };
    assert_eq!(waiting.behind.as_deref(), Some("b"));
    let b = store.execution("b").await.unwrap().unwrap();
    assert_eq!(b.status, "waiting", "a waiting one shows as such");
    assert_eq!(b.waiting.as_ref().map(|w| w.kind.as_str()), Some("queue"));
    let filter = ExecutionFilter {
        status: Some("waiting".into()),
        limit: 10,
        ..ExecutionFilter::default()
    };
    let listed: Vec<String> = store
        .executions(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Another group is not held.
    assert_eq!(
        store.admit("other", &gate, now()).await.unwrap(),
        Admission::Admitted(vec![])
    );
    // a ends: b goes, c still waits (behind b, now active).
    let a = store.execution("a").await.unwrap().unwrap();
    save_changed(store, &a, |e| e.status = "succeeded".into()).await;
    store.wake_group("g", "k", now()).await.unwrap();
    assert_eq!(
        claim(store, now(), LEASE, 10).await,
        vec!["b".to_owned()],
        "the oldest queued one is woken"
    );
    assert_eq!(
        store.admit("b", &gate, now()).await.unwrap(),
        Admission::Admitted(vec![])
    );
    assert!(matches!(
        store.admit("c", &gate, now()).await.unwrap(),
        Admission::Waiting(_)
    ));
    // A limit of 2 lets c go beside b.
    assert_eq!(
        store.admit("c", &queue(2), now()).await.unwrap(),
        Admission::Admitted(vec![])
    );
}

async fn skip_ends_a_later_one_and_cancel_previous_cancels_the_active_one(store: &dyn Store) {
    use flowd::rules::ruleset::{Concurrency, ConcurrencyMode};
    use flowd::store::{Admission, Gate};
    let mode = |mode| Gate {
        concurrency: Some(Concurrency { limit: 1, mode }),
        on_cancel: true,
        ..Gate::default()
    };
    member(store, "a", "k").await;
    member(store, "b", "k").await;
    member(store, "c", "k").await;
    assert_eq!(
        store
            .admit("a", &mode(ConcurrencyMode::Skip), now())
            .await
            .unwrap(),
        Admission::Admitted(vec![])
    );
    let Admission::Ended(status, reason) = store
        .admit("b", &mode(ConcurrencyMode::Skip), now())
        .await
        .unwrap()
    else {
        panic!("b is skipped");
    };
    assert_eq!(status, "skipped");
    assert!(reason.contains('a') && reason.contains("skip"), "{reason}");
    assert_eq!(status_of(store, "b").await, "skipped");
    // c cancels a (not running: no lease) and starts; a's cancel execution is pending.
    let admitted = store
        .admit("c", &mode(ConcurrencyMode::CancelPrevious), now())
        .await
        .unwrap();
    assert_eq!(admitted, Admission::Admitted(vec!["a".to_owned()]));
    assert_eq!(status_of(store, "a").await, "cancelled");
    let handler = store
        .execution("cancel-a")
        .await
        .unwrap()
        .expect("a cancel execution");
    assert_eq!(
        (handler.status.as_str(), handler.handler_status.as_deref()),
        ("pending", Some("cancel"))
    );
    assert_eq!(handler.context["cancelled"]["execution"], "a");
}

async fn a_throttle_waits_for_the_oldest_start_to_leave_its_period_or_drops(store: &dyn Store) {
    use flowd::rules::ruleset::{OnExcess, Throttle};
    use flowd::store::{Admission, Gate};
    let throttle = |on_excess| Gate {
        throttle: Some(Throttle {
            limit: 2,
            period: Duration::from_secs(3600),
            on_excess,
        }),
        ..Gate::default()
    };
    for id in ["a", "b", "c", "d"] {
        member(store, id, "k").await;
    }
    let start = now();
    assert_eq!(
        store
            .admit("a", &throttle(OnExcess::Delay), start)
            .await
            .unwrap(),
        Admission::Admitted(vec![])
    );
    assert_eq!(
        store
            .admit("b", &throttle(OnExcess::Delay), start + secs(10))
            .await
            .unwrap(),
        Admission::Admitted(vec![])
    );
    let Admission::Waiting(waiting) = store
        .admit("c", &throttle(OnExcess::Delay), start + secs(20))
        .await
        .unwrap()
    else {
        panic!("c is throttled");
    };
    assert_eq!(waiting.kind, "throttle");
    assert_eq!(
        waiting.until,
        Some(start + secs(3600)),
        "the slot a holds frees an hour after a started"
    );
    assert!(
        !claim(store, start + secs(30), LEASE, 10)
            .await
            .contains(&"c".to_owned()),
        "a throttled one is not due"
    );
    // d, dropped rather than delayed, is recorded as such.
    store
        .admit("c", &throttle(OnExcess::Delay), start + secs(3601))
        .await
        .unwrap();
    let Admission::Ended(status, _) = store
        .admit("d", &throttle(OnExcess::Drop), start + secs(3602))
        .await
        .unwrap()
    else {
        panic!("d is dropped");
    };
    assert_eq!(status, "dropped");
    assert_eq!(status_of(store, "c").await, "pending");
}

async fn quiet_hours_hold_an_execution_until_they_end(store: &dyn Store) {
    use flowd::store::{Admission, Gate};
    member(store, "a", "k").await;
    let until = now() + minutes(90);
    let gate = Gate {
        quiet_until: Some(until),
        ..Gate::default()
    };
    let Admission::Waiting(waiting) = store.admit("a", &gate, now()).await.unwrap() else {
        panic!("held");
    };
    assert_eq!(
        (waiting.kind.as_str(), waiting.until),
        ("quiet_hours", Some(until))
    );
    assert!(
        claim(store, now() + minutes(89), LEASE, 10)
            .await
            .is_empty()
    );
    assert_eq!(claim(store, until, LEASE, 10).await, vec!["a".to_owned()]);
    assert_eq!(
        store.admit("a", &Gate::default(), until).await.unwrap(),
        Admission::Admitted(vec![])
    );
}

async fn cancelling_a_group_cancels_what_waits_and_what_follows_and_asks_a_running_one(
    store: &dyn Store,
) {
    use flowd::store::{CancelRequest, Gate};
    let following = member(store, "following", "k").await;
    store
        .admit("following", &Gate::default(), now())
        .await
        .unwrap();
    let done = save_changed(store, &following, |e| e.status = "succeeded".into()).await;
    follow(store, &done, &run("run-1", "following", now())).await;
    member(store, "waiting", "k").await;
    member(store, "running", "k").await;
    member(store, "elsewhere", "k2").await;
    // A handler of the following one, not run yet (its run just finished).
    let mut handler = new_execution("handler", "g", "pending");
    handler.handler_status = Some("finished".into());
    handler.handler_step = Some("step0".into());
    handler.parent = Some("following".into());
    store.insert_executions(&[handler]).await.unwrap();
    let handler = store.execution("handler").await.unwrap().expect("stored");
    save_changed(store, &handler, |e| e.next_attempt_at = now() + minutes(60)).await;
    let request = CancelRequest {
        rule: "g".into(),
        key: "k".into(),
        only: None,
        reason: "withdrawn".into(),
        on_cancel: true,
    };
    // "running" is claimed (a live lease): it is asked to stop, not cancelled under its runner;
    // "waiting" is not due (as in a retry's backoff or a wait), so it is not claimed.
    let waiting = store.execution("waiting").await.unwrap().unwrap();
    save_changed(store, &waiting, |e| e.next_attempt_at = now() + minutes(60)).await;
    let running_claimed = claim(store, now() + secs(1), LEASE, 10).await;
    assert!(
        running_claimed.contains(&"running".to_owned()),
        "{running_claimed:?}"
    );
    let mut cancelled = store.cancel(&request, now()).await.unwrap();
    cancelled.sort();
    assert!(
        cancelled.contains(&"following".to_owned()) && cancelled.contains(&"waiting".to_owned()),
        "{cancelled:?}"
    );
    assert!(!cancelled.contains(&"running".to_owned()));
    assert_eq!(
        status_of(store, "elsewhere").await,
        "pending",
        "another group is untouched"
    );
    assert_eq!(
        status_of(store, "handler").await,
        "cancelled",
        "its handler goes with it"
    );
    let run = store.followed("run-1").await.unwrap().expect("followed");
    assert!(
        run.terminal && run.cancelled_at.is_some(),
        "the run is cancelled with its execution"
    );
    assert_eq!(
        store.cancel_requested("running").await.unwrap().as_deref(),
        Some("withdrawn")
    );
    assert!(
        store
            .cancel_now("running", "withdrawn", true, now())
            .await
            .unwrap()
    );
    assert_eq!(status_of(store, "running").await, "cancelled");
    for id in ["following", "waiting", "running"] {
        assert!(
            store
                .execution(&format!("cancel-{id}"))
                .await
                .unwrap()
                .is_some(),
            "on_cancel of {id}"
        );
    }
    // Again: nothing is cancelled twice.
    assert!(store.cancel(&request, now()).await.unwrap().is_empty());
    assert!(
        !store
            .cancel_now("running", "withdrawn", true, now())
            .await
            .unwrap()
    );
    // A later status of the cancelled run changes nothing.
    let change = EventOutcome {
        status_change: Some(change("run-1", "running", false)),
        ..EventOutcome::default()
    };
    let id = some_events(store, 1).await[0];
    store.complete_events(&[(id, change)]).await.unwrap();
    let run = store.followed("run-1").await.unwrap().expect("followed");
    assert!(run.terminal && run.status == "queued", "{run:?}");
}

async fn a_run_that_ends_wakes_the_queue_of_its_group(store: &dyn Store) {
    use flowd::store::Admission;
    let gate = queue(1);
    let a = member(store, "a", "k").await;
    member(store, "b", "k").await;
    store.admit("a", &gate, now()).await.unwrap();
    let done = save_changed(store, &a, |e| e.status = "succeeded".into()).await;
    follow(store, &done, &run("run-a", "a", now())).await;
    assert!(
        matches!(
            store.admit("b", &gate, now()).await.unwrap(),
            Admission::Waiting(_)
        ),
        "a's run keeps a active"
    );
    assert!(claim(store, now(), LEASE, 10).await.is_empty());
    let mut ended = change("run-a", "finished", true);
    ended.frees_slot = true;
    let id = some_events(store, 1).await[0];
    store
        .complete_events(&[(
            id,
            EventOutcome {
                status_change: Some(ended),
                ..EventOutcome::default()
            },
        )])
        .await
        .unwrap();
    assert_eq!(
        claim(store, now() + secs(1), LEASE, 10).await,
        vec!["b".to_owned()],
        "woken by the run's end"
    );
    assert_eq!(
        store.admit("b", &gate, now()).await.unwrap(),
        Admission::Admitted(vec![])
    );
}

async fn a_debounce_merges_a_group_s_events_into_one_execution(store: &dyn Store) {
    use flowd::rules::ruleset::{Debounce, DebounceKeep};
    use flowd::store::{Admission, Gate};
    let gate = Gate {
        debounce: Some(Debounce {
            period: Duration::from_secs(60),
            keep: DebounceKeep::All,
            max_wait: Some(Duration::from_secs(150)),
        }),
        ..Gate::default()
    };
    let start = now();
    member(store, "a", "k").await;
    let Admission::Waiting(waiting) = store.admit("a", &gate, start).await.unwrap() else {
        panic!("a opens a window");
    };
    assert_eq!(
        (waiting.kind.as_str(), waiting.until),
        ("debounce", Some(start + secs(60)))
    );
    for (id, at) in [("b", 50), ("c", 100)] {
        member(store, id, "k").await;
        let Admission::Ended(status, reason) =
            store.admit(id, &gate, start + secs(at)).await.unwrap()
        else {
            panic!("{id} is merged");
        };
        assert_eq!(status, "debounced");
        assert!(reason.contains("merged into a"), "{reason}");
    }
    let a = store.execution("a").await.unwrap().unwrap();
    // Each event moved the window on, up to max_wait after the first.
    let bound = a.created_at + secs(150);
    assert_eq!(a.waiting.as_ref().and_then(|w| w.until), Some(bound));
    let batch = a.context["event"]["batch"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        batch
            .iter()
            .map(|e| e["data"]["id"].clone())
            .collect::<Vec<_>>(),
        vec![json!("a"), json!("b"), json!("c")],
        "every event, oldest first"
    );
    // Another group opens its own window.
    member(store, "x", "k2").await;
    assert!(matches!(
        store.admit("x", &gate, start).await.unwrap(),
        Admission::Waiting(_)
    ));
    // Not before its time; then it starts, and a later event opens a new window.
    assert!(matches!(
        store.admit("a", &gate, bound - secs(1)).await.unwrap(),
        Admission::Waiting(_)
    ));
    assert_eq!(
        store.admit("a", &gate, bound).await.unwrap(),
        Admission::Admitted(vec![])
    );
    member(store, "d", "k").await;
    assert!(matches!(
        store.admit("d", &gate, start + secs(151)).await.unwrap(),
        Admission::Waiting(_)
    ));
}

async fn an_idempotency_key_is_held_by_one_execution_within_its_window(store: &dyn Store) {
    let keyed = |id: &str, until: DateTime<Utc>| {
        let mut new = new_execution(id, "apply", "pending");
        new.idempotency = Some(("app-1".to_owned(), until));
        new
    };
    let ids = some_events(store, 2).await;
    let outcome = |execution: NewExecution| EventOutcome {
        executions: vec![execution],
        ..EventOutcome::default()
    };
    store
        .complete_events(&[(ids[0], outcome(keyed("first", now() + minutes(60))))])
        .await
        .unwrap();
    store
        .complete_events(&[(ids[1], outcome(keyed("second", now() + minutes(60))))])
        .await
        .unwrap();
    assert_eq!(status_of(store, "first").await, "pending");
    let second = store.execution("second").await.unwrap().expect("stored");
    assert_eq!(second.status, "skipped");
    assert!(
        second
            .last_error
            .as_deref()
            .is_some_and(|r| r.contains("first"))
    );
    assert_eq!(
        store
            .idempotent_execution("apply", "app-1", now())
            .await
            .unwrap()
            .as_deref(),
        Some("first")
    );
    assert_eq!(
        store
            .idempotent_execution("other", "app-1", now())
            .await
            .unwrap(),
        None
    );
    // Once the window has passed, the key is free: the next one holds it.
    assert_eq!(
        store
            .idempotent_execution("apply", "app-1", now() + minutes(61))
            .await
            .unwrap(),
        None
    );
    store
        .insert_executions(&[keyed("late", now() + minutes(120))])
        .await
        .unwrap();
    assert_eq!(
        status_of(store, "late").await,
        "skipped",
        "still inside the first window"
    );
}

async fn a_deadline_is_due_once_past_and_fires_once(store: &dyn Store) {
    let execution = pending(store, "starter").await;
    let mut late = run("late", &execution.id, now());
    late.deadline_at = Some(now() - secs(5));
    let mut later = run("later", &execution.id, now());
    later.deadline_at = Some(now() + minutes(60));
    follow(store, &execution, &late).await;
    follow(store, &execution, &later).await;
    follow(store, &execution, &run("none", &execution.id, now())).await;
    let due = store.due_deadlines(now(), 10).await.unwrap();
    assert_eq!(resource_ids(&due), vec!["late"]);
    let handler = new_execution("deadline-late", "rule", "pending");
    let fires = vec![("late".to_owned(), Some(handler))];
    assert_eq!(store.fire_deadlines(&fires, now()).await.unwrap(), 1);
    assert!(store.execution("deadline-late").await.unwrap().is_some());
    // Again (another instance, a restart): nothing fires twice.
    assert_eq!(store.fire_deadlines(&fires, now()).await.unwrap(), 0);
    assert!(store.due_deadlines(now(), 10).await.unwrap().is_empty());
    assert!(
        store
            .due_deadlines(now() + minutes(61), 10)
            .await
            .unwrap()
            .len()
            == 1
    );
}
