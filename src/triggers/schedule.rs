//! `schedule` and `every` triggers: a loop that sleeps until the next tick (no polling), records
//! each tick in the store together with its inbox event — one transaction, keyed by
//! (rule, scheduled time), so a tick fires at most once even across a crash — and applies
//! `catch_up` to ticks missed while flowd was down.
//!
//! Daylight saving follows cron(8), as croner computes it in the rule's time zone: a time in a
//! spring-forward gap fires once at the first valid instant after it; a time in a fall-back
//! overlap fires once, while hourly and more frequent schedules fire in both hours.
//!
//! Reloads: a rule whose schedule (cron + time zone, or interval) is unchanged keeps its state;
//! a changed one starts from the next tick of the new expression (nothing fires for the switch,
//! nothing of today is lost); a renamed rule is a new schedule; a removed rule stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::engine::reload::Reloader;
use crate::rules::ruleset::{CatchUp, EveryTrigger, ScheduleTrigger};
use crate::rules::{Rule, Trigger};
use crate::store::{EventSource, NewEvent, Store, TickBatch};

/// Most ticks looked at when catching up (an every-second schedule down for a day).
const MAX_MISSED: usize = 100_000;

/// The timing of a scheduled rule.
#[derive(Debug, Clone, Copy)]
pub enum Timing<'a> {
    /// A cron expression in a time zone.
    Cron(&'a ScheduleTrigger),
    /// A fixed interval, aligned to multiples of it since the Unix epoch.
    Every(&'a EveryTrigger),
}

impl<'a> Timing<'a> {
    /// The timing of a rule, if it is scheduled.
    pub fn of(rule: &'a Rule) -> Option<Timing<'a>> {
        match &rule.trigger {
            Trigger::Schedule(schedule) => Some(Timing::Cron(schedule)),
            Trigger::Every(every) => Some(Timing::Every(every)),
            _ => None,
        }
    }

    /// What identifies the schedule: a change of it starts the schedule afresh.
    pub fn fingerprint(&self) -> String {
        match self {
            Timing::Cron(schedule) => {
                format!("cron {} {}", schedule.cron_source, schedule.timezone)
            }
            Timing::Every(every) => format!("every {}ms", every.interval.as_millis()),
        }
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Timing::Cron(schedule) => schedule.next_after(after),
            Timing::Every(every) => {
                let step = every.interval.as_millis().max(1) as i64;
                let millis = after.timestamp_millis();
                let next = (millis.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
        }
    }

    /// Missed-tick policy.
    pub fn catch_up(&self) -> (CatchUp, Duration) {
        match self {
            Timing::Cron(schedule) => (schedule.catch_up, schedule.catch_up_window),
            Timing::Every(every) => (every.catch_up, every.catch_up_window),
        }
    }

    /// Every tick in `(after, until]`, oldest first (at most [`MAX_MISSED`], the newest kept).
    pub fn ticks_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut ticks = std::collections::VecDeque::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor) {
            if next > until {
                break;
            }
            if ticks.len() == MAX_MISSED {
                ticks.pop_front();
            }
            ticks.push_back(next);
            cursor = next;
        }
        ticks.into()
    }
}

/// Which missed ticks fire, by policy: `skip` none, `latest` the newest, `all` those inside the
/// window (oldest first). Returns the ticks to fire and how many were missed without firing.
pub fn plan_catch_up(
    policy: CatchUp,
    window: Duration,
    missed: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, usize) {
    let fire: Vec<DateTime<Utc>> = match policy {
        CatchUp::Skip => Vec::new(),
        CatchUp::Latest => missed.last().copied().into_iter().collect(),
        CatchUp::All => {
            let oldest = now - chrono::Duration::from_std(window).unwrap_or_default();
            missed
                .iter()
                .copied()
                .filter(|tick| *tick >= oldest)
                .collect()
        }
    };
    let skipped = missed.len() - fire.len();
    (fire, skipped)
}

/// Where the scheduler reads the time and waits for it: the wall clock, or (in tests) a manual
/// clock that a test moves forward, so that days of schedules pass in milliseconds.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `Utc::now()` and tokio timers.
    #[default]
    Wall,
    /// Time stands still until the test moves it.
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::Wall => Utc::now(),
            Clock::Manual(clock) => *clock.now.borrow(),
        }
    }

    /// Waits until `at`.
    async fn sleep_until(&self, at: DateTime<Utc>) {
        match self {
            Clock::Wall => {
                tokio::time::sleep((at - Utc::now()).to_std().unwrap_or(Duration::ZERO)).await;
            }
            Clock::Manual(clock) => {
                let mut now = clock.now.subscribe();
                if *now.borrow() >= at {
                    return;
                }
                clock.parked.send_replace(Some(at));
                let _ = now.wait_for(|now| *now >= at).await;
            }
        }
    }
}

/// A clock moved by hand. The scheduler tells where it waits to ([`ManualClock::parked`]), so a
/// test can move the time exactly to the next wake-up and know when the loop has handled it.
#[derive(Debug)]
pub struct ManualClock {
    now: tokio::sync::watch::Sender<DateTime<Utc>>,
    parked: tokio::sync::watch::Sender<Option<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: tokio::sync::watch::Sender::new(start),
            parked: tokio::sync::watch::Sender::new(None),
        })
    }

    /// Moves the time to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        self.parked.send_replace(None);
        self.now.send_replace(to);
    }

    /// Waits until the scheduler has handled everything due and waits for the time it returns.
    pub async fn parked(&self) -> DateTime<Utc> {
        let mut parked = self.parked.subscribe();
        let at = parked.wait_for(Option::is_some).await.map(|at| *at);
        at.ok().flatten().unwrap_or_default()
    }
}

/// A schedule's in-memory state.
pub(crate) struct Entry {
    pub(crate) fingerprint: String,
    /// The last tick handled (fired, caught up or deliberately skipped).
    pub(crate) last: DateTime<Utc>,
    pub(crate) next: Option<DateTime<Utc>>,
}

fn tick_event(rule: &str, scheduled_at: DateTime<Utc>, fired_at: DateTime<Utc>) -> NewEvent {
    let scheduled = scheduled_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    NewEvent {
        source: EventSource::Schedule,
        event_type: "schedule".to_owned(),
        dedup_key: Some(format!("schedule:{rule}:{scheduled}")),
        payload: json!({
            "rule": rule,
            "scheduled_at": scheduled,
            "fired_at": fired_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }),
    }
}

/// Runs the schedules until `shutdown`.
pub async fn run(
    reloader: Arc<Reloader>,
    store: Arc<dyn Store>,
    events_waiting: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
    clock: Clock,
) {
    let mut entries: HashMap<String, Entry> = HashMap::new();
    let mut known_hash = String::new();
    loop {
        let set = reloader.current();
        let now = clock.now();
        if set.hash != known_hash {
            known_hash = set.hash.clone();
            sync_entries(&set, &mut entries, store.as_ref(), now).await;
        }
        // Plan every due tick first, then record them all at once: the store's writer commits
        // concurrent writes together, so 10,000 rules due at the same minute cost a few
        // transactions, not 10,000.
        let mut plans = Vec::new();
        for rule in set.rules() {
            let Some(timing) = Timing::of(rule) else {
                continue;
            };
            let Some(entry) = entries.get(&rule.name) else {
                continue;
            };
            if entry.next.is_none_or(|next| next > now) {
                continue;
            }
            // The usual case, one tick due, costs one cron computation: the tick after it.
            let (due, following) = match entry.next.map(|next| (next, timing.next_after(next))) {
                Some((next, Some(following))) if following > now => (vec![next], Some(following)),
                _ => (timing.ticks_between(entry.last, now), None),
            };
            let (fire, result, skipped) = if due.len() <= 1 {
                (due.clone(), "fired", 0)
            } else {
                let (policy, window) = timing.catch_up();
                let (fire, skipped) = plan_catch_up(policy, window, &due, now);
                (fire, "caught_up", skipped)
            };
            plans.push((
                rule.name.clone(),
                entry.fingerprint.clone(),
                following,
                due,
                fire,
                result,
                skipped,
            ));
        }
        let recorded = record_all(store.as_ref(), &plans, now, &clock).await;
        let mut fired_any = false;
        if !recorded {
            // The store failed; the same ticks are due again on the next pass.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        for (name, _, following, due, fire, _, skipped) in plans {
            let (Some(rule), Some(entry)) = (set.get(&name), entries.get_mut(&name)) else {
                continue;
            };
            let Some(timing) = Timing::of(rule) else {
                continue;
            };
            fired_any |= !fire.is_empty();
            if skipped > 0 {
                metrics::counter!("flowd_schedule_ticks_total", "rule" => name.clone(), "result" => "missed").increment(skipped as u64);
            }
            if let Some(last) = due.last() {
                entry.last = *last;
            }
            entry.next = following.or_else(|| timing.next_after(entry.last.max(now)));
            if let Some(next) = entry.next {
                metrics::gauge!("flowd_schedule_next_fire_timestamp_seconds", "rule" => name.clone()).set(next.timestamp() as f64);
            }
        }
        if fired_any {
            events_waiting.notify_one();
        }
        // At least once an hour, so that a wall clock set forward is noticed.
        let an_hour = clock.now() + chrono::Duration::hours(1);
        let wake = entries
            .values()
            .filter_map(|entry| entry.next)
            .min()
            .unwrap_or(an_hour)
            .min(an_hour);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = reloader.changed.notified() => {}
            _ = clock.sleep_until(wake) => {}
        }
    }
}

type Plan = (
    String,
    String,
    Option<DateTime<Utc>>,
    Vec<DateTime<Utc>>,
    Vec<DateTime<Utc>>,
    &'static str,
    usize,
);

/// Records every planned tick (each with its inbox event) in one store call and counts them;
/// false when the store failed.
///
/// A tick's `fired_at` (in its context, and in `flowd_schedule_lateness_seconds`) is the moment
/// the scheduler fires it: planned and handed to the store. How long the store then takes to
/// make the batch durable is `flowd_schedule_record_seconds` (10,000 ticks at one minute: 0.1 to
/// 0.2 s on a 2-core machine); the executions start after that.
async fn record_all(store: &dyn Store, plans: &[Plan], now: DateTime<Utc>, clock: &Clock) -> bool {
    let fired_at = clock.now();
    let mut batches = Vec::new();
    // Nothing fires (catch_up: skip); the state still moves on.
    let moved_on: Vec<(String, String, DateTime<Utc>)> = plans
        .iter()
        .filter(|(_, _, _, _, fire, ..)| fire.is_empty())
        .map(|(rule, fingerprint, ..)| (rule.clone(), fingerprint.clone(), now))
        .collect();
    if !moved_on.is_empty()
        && let Err(err) = store.set_schedule_states(&moved_on).await
    {
        warn!(error = %err, rules = moved_on.len(), "Cannot store schedule states");
        return false;
    }
    for (rule, fingerprint, _, _, fire, result, _) in plans {
        if fire.is_empty() {
            continue;
        }
        batches.push(TickBatch {
            rule: rule.clone(),
            fingerprint: fingerprint.clone(),
            ticks: fire
                .iter()
                .map(|tick| (*tick, *result, tick_event(rule, *tick, fired_at)))
                .collect(),
        });
    }
    if batches.is_empty() {
        return true;
    }
    let recording = std::time::Instant::now();
    match store.record_ticks(&batches).await {
        Ok(flags) => {
            metrics::histogram!("flowd_schedule_record_seconds")
                .record(recording.elapsed().as_secs_f64());
            for (batch, flags) in batches.iter().zip(flags) {
                for ((tick, result, _), is_new) in batch.ticks.iter().zip(flags) {
                    if is_new {
                        metrics::counter!("flowd_schedule_ticks_total", "rule" => batch.rule.clone(), "result" => *result).increment(1);
                        metrics::histogram!("flowd_schedule_lateness_seconds")
                            .record((fired_at - *tick).num_milliseconds().max(0) as f64 / 1000.0);
                        debug!(rule = %batch.rule, scheduled_at = %tick, result, "Schedule tick");
                    }
                }
            }
            true
        }
        Err(err) => {
            warn!(error = %err, ticks = batches.len(), "Cannot record schedule ticks; trying again");
            false
        }
    }
}

/// Brings the in-memory schedules in line with the rule set in force.
pub(crate) async fn sync_entries(
    set: &crate::rules::RuleSet,
    entries: &mut HashMap<String, Entry>,
    store: &dyn Store,
    now: DateTime<Utc>,
) {
    // One read for all; `None` when it failed: then schedules start from now and nothing is
    // written, so that stored states survive a passing database error.
    let stored = match store.schedule_states().await {
        Ok(stored) => Some(stored),
        Err(err) => {
            warn!(error = %err, "Cannot read the schedules' states; starting from now");
            None
        }
    };
    let mut fresh = Vec::new();
    let mut live = std::collections::HashSet::new();
    for rule in set.rules() {
        let Some(timing) = Timing::of(rule) else {
            continue;
        };
        live.insert(rule.name.clone());
        let fingerprint = timing.fingerprint();
        if entries
            .get(&rule.name)
            .is_some_and(|entry| entry.fingerprint == fingerprint)
        {
            continue;
        }
        let last = match stored.as_ref().map(|stored| stored.get(&rule.name)) {
            // Same schedule as before the restart: pick up where it stopped (catch-up applies).
            Some(Some((stored, last))) if *stored == fingerprint => *last,
            // New, renamed or changed: start from now, firing nothing for the change.
            Some(_) => {
                fresh.push((rule.name.clone(), fingerprint.clone(), now));
                now
            }
            None => now,
        };
        let next = timing
            .ticks_between(last, now)
            .first()
            .copied()
            .or_else(|| timing.next_after(now));
        if let Some(next) = next {
            metrics::gauge!("flowd_schedule_next_fire_timestamp_seconds", "rule" => rule.name.clone()).set(next.timestamp() as f64);
        }
        entries.insert(
            rule.name.clone(),
            Entry {
                fingerprint,
                last,
                next,
            },
        );
    }
    entries.retain(|name, _| live.contains(name));
    if !fresh.is_empty()
        && let Err(err) = store.set_schedule_states(&fresh).await
    {
        warn!(error = %err, rules = fresh.len(), "Cannot store the schedules' states");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(cron: &str, zone: &str) -> ScheduleTrigger {
        ScheduleTrigger {
            cron_source: cron.to_owned(),
            cron: croner::parser::CronParser::builder()
                .seconds(croner::parser::Seconds::Optional)
                .build()
                .parse(cron)
                .expect("cron"),
            timezone: zone.parse().expect("zone"),
            catch_up: CatchUp::Latest,
            catch_up_window: Duration::from_secs(86_400),
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn ticks(cron: &str, zone: &str, from: &str, to: &str) -> Vec<String> {
        let trigger = schedule(cron, zone);
        Timing::Cron(&trigger)
            .ticks_between(utc(from), utc(to))
            .iter()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect()
    }

    #[test]
    fn spring_forward_gap_fires_once_at_the_first_valid_instant() {
        // Amsterdam, 2026-03-29: 02:00 CET jumps to 03:00 CEST.
        assert_eq!(
            ticks(
                "30 2 * * *",
                "Europe/Amsterdam",
                "2026-03-28T00:00:00Z",
                "2026-03-31T00:00:00Z"
            ),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        // New York, 2026-03-08: 02:00 EST jumps to 03:00 EDT.
        assert_eq!(
            ticks(
                "30 2 * * *",
                "America/New_York",
                "2026-03-07T00:00:00Z",
                "2026-03-10T00:00:00Z"
            ),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
    }

    #[test]
    fn fall_back_overlap_fires_daily_once_and_hourly_twice() {
        // Amsterdam, 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            ticks(
                "30 2 * * *",
                "Europe/Amsterdam",
                "2026-10-24T12:00:00Z",
                "2026-10-26T12:00:00Z"
            ),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        assert_eq!(
            ticks(
                "30 * * * *",
                "Europe/Amsterdam",
                "2026-10-24T23:45:00Z",
                "2026-10-25T02:45:00Z"
            ),
            [
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:30:00Z"
            ]
        );
        // Every 30 minutes stays continuous through the New York overlap (2026-11-01).
        assert_eq!(
            ticks(
                "*/30 * * * *",
                "America/New_York",
                "2026-11-01T04:45:00Z",
                "2026-11-01T07:15:00Z"
            ),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn every_aligns_to_its_interval() {
        let every = EveryTrigger {
            interval: Duration::from_secs(900),
            catch_up: CatchUp::Latest,
            catch_up_window: Duration::from_secs(86_400),
        };
        let timing = Timing::Every(&every);
        assert_eq!(
            timing.next_after(utc("2026-01-01T10:07:00Z")),
            Some(utc("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            timing.next_after(utc("2026-01-01T10:15:00Z")),
            Some(utc("2026-01-01T10:30:00Z"))
        );
    }

    fn rule_set(dir: &std::path::Path, yaml: &str) -> crate::rules::RuleSet {
        std::fs::write(dir.join("r.yaml"), yaml).expect("write");
        crate::rules::load_rule_set(&[dir.to_path_buf()])
            .result
            .expect("valid")
    }

    #[tokio::test]
    async fn reloads_keep_change_rename_and_remove_schedules() {
        let dir = tempfile::tempdir().expect("dir");
        let store = crate::store::sqlite::SqliteStore::open(&format!(
            "sqlite://{}",
            dir.path().join("s.db").display()
        ))
        .await
        .expect("store");
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).expect("mkdir");
        let mut entries = HashMap::new();
        let start = utc("2026-03-02T07:00:00Z");
        let yaml = |name: &str, cron: &str, zone: &str| {
            format!(
                "rules:\n  - name: {name}\n    on: {{ schedule: {{ cron: \"{cron}\", timezone: {zone} }} }}\n    do: [ {{ log: x }} ]\n"
            )
        };
        sync_entries(
            &rule_set(&rules, &yaml("morning", "0 8 * * *", "UTC")),
            &mut entries,
            &store,
            start,
        )
        .await;
        assert_eq!(entries["morning"].next, Some(utc("2026-03-02T08:00:00Z")));

        // Unchanged: the state is kept (a later pass does not reset `last`).
        let later = utc("2026-03-02T07:30:00Z");
        sync_entries(
            &rule_set(&rules, &yaml("morning", "0 8 * * *", "UTC")),
            &mut entries,
            &store,
            later,
        )
        .await;
        assert_eq!(entries["morning"].last, start);

        // A changed cron starts from the next tick of the new expression, firing nothing now.
        sync_entries(
            &rule_set(&rules, &yaml("morning", "0 9 * * *", "UTC")),
            &mut entries,
            &store,
            later,
        )
        .await;
        assert_eq!(entries["morning"].last, later);
        assert_eq!(entries["morning"].next, Some(utc("2026-03-02T09:00:00Z")));

        // A changed time zone likewise; today's 09:00 Amsterdam (08:00Z) is still ahead.
        sync_entries(
            &rule_set(&rules, &yaml("morning", "0 9 * * *", "Europe/Amsterdam")),
            &mut entries,
            &store,
            later,
        )
        .await;
        assert_eq!(entries["morning"].next, Some(utc("2026-03-02T08:00:00Z")));

        // A rename is a new schedule; the old one is gone.
        sync_entries(
            &rule_set(&rules, &yaml("early", "0 9 * * *", "Europe/Amsterdam")),
            &mut entries,
            &store,
            later,
        )
        .await;
        assert!(entries.contains_key("early") && !entries.contains_key("morning"));

        // Removed: no schedule left.
        sync_entries(
            &rule_set(
                &rules,
                "rules:\n  - name: other\n    on: { event: x }\n    do: [ { log: x } ]\n",
            ),
            &mut entries,
            &store,
            later,
        )
        .await;
        assert!(entries.is_empty());

        // After a restart (a fresh map) the stored state of an unchanged schedule is used: the
        // ticks missed since then are due.
        let mut restarted = HashMap::new();
        let much_later = utc("2026-03-04T12:00:00Z");
        sync_entries(
            &rule_set(&rules, &yaml("early", "0 9 * * *", "Europe/Amsterdam")),
            &mut restarted,
            &store,
            much_later,
        )
        .await;
        assert_eq!(restarted["early"].last, later);
        assert_eq!(
            restarted["early"].next,
            Some(utc("2026-03-02T08:00:00Z")),
            "the first missed tick is due"
        );
    }

    /// The scheduler loop on a manual clock over the rules in `yaml`, from `start` until its next
    /// wake-up is after `end`: the clock jumps to each wake-up the loop asks for.
    async fn run_loop(
        store: &Arc<crate::store::sqlite::SqliteStore>,
        rules_dir: &std::path::Path,
        yaml: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) {
        let reloader = crate::engine::reload::Reloader::new(
            rules_dir.to_path_buf(),
            rule_set(rules_dir, yaml),
        );
        let clock = ManualClock::new(start);
        let shutdown = CancellationToken::new();
        let store: Arc<dyn Store> = store.clone();
        let scheduler = tokio::spawn(run(
            reloader,
            store,
            Arc::new(tokio::sync::Notify::new()),
            shutdown.clone(),
            Clock::Manual(clock.clone()),
        ));
        loop {
            let wake = clock.parked().await;
            if wake > end {
                break;
            }
            clock.set(wake);
        }
        shutdown.cancel();
        scheduler.await.expect("scheduler");
    }

    /// The ticks recorded so far, per rule: scheduled times (RFC 3339, seconds). A tick fired on
    /// the manual clock fires exactly on time: its `fired_at` is checked to equal the schedule.
    async fn recorded_ticks(
        store: &crate::store::sqlite::SqliteStore,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut ticks = std::collections::BTreeMap::<String, Vec<String>>::new();
        for event in store
            .unprocessed_events(100_000, i64::MAX, Utc::now())
            .await
            .expect("events")
        {
            let rule = event.payload["rule"].as_str().expect("rule").to_owned();
            let scheduled = utc(event.payload["scheduled_at"].as_str().expect("scheduled"));
            let fired = utc(event.payload["fired_at"].as_str().expect("fired"));
            ticks
                .entry(rule)
                .or_default()
                .push(scheduled.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            assert!(fired >= scheduled, "fired before its time");
        }
        ticks
    }

    async fn temp_store(dir: &std::path::Path) -> Arc<crate::store::sqlite::SqliteStore> {
        Arc::new(
            crate::store::sqlite::SqliteStore::open(&format!(
                "sqlite://{}",
                dir.join("s.db").display()
            ))
            .await
            .expect("store"),
        )
    }

    #[tokio::test]
    async fn the_loop_fires_through_daylight_saving_changes_as_cron_does() {
        let dir = tempfile::tempdir().expect("dir");
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).expect("mkdir");
        let store = temp_store(dir.path()).await;
        // Amsterdam springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST) and New York falls
        // back on 2026-11-01 (02:00 EDT -> 01:00 EST): two windows on one store.
        let spring = r#"
rules:
  - name: daily-ams
    on: { schedule: { cron: "30 2 * * *", timezone: Europe/Amsterdam } }
    do: [ { log: x } ]
  - name: hourly-ams
    on: { schedule: { cron: "30 * * * *", timezone: Europe/Amsterdam } }
    do: [ { log: x } ]
  - name: half-hourly
    on: { every: 30m }
    do: [ { log: x } ]
"#;
        run_loop(
            &store,
            &rules,
            spring,
            utc("2026-03-28T00:00:00Z"),
            utc("2026-03-30T23:59:59Z"),
        )
        .await;
        let ticks = recorded_ticks(&store).await;
        assert_eq!(
            ticks["daily-ams"],
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ],
            "02:30 does not exist on the 29th: it fires once, at 03:00 CEST"
        );
        // An hourly schedule runs on the new time after the jump, as cron(8) runs wildcard-hour
        // jobs: 01:30 CET (00:30Z), then 03:30 CEST (01:30Z); 02:30 never happens and nothing
        // is fired in its place. Every UTC hour of the 72 has its tick.
        assert_eq!(ticks["hourly-ams"].len(), 72);
        assert!(ticks["hourly-ams"].contains(&"2026-03-29T00:30:00Z".to_owned()));
        assert!(ticks["hourly-ams"].contains(&"2026-03-29T01:30:00Z".to_owned()));
        assert!(!ticks["hourly-ams"].contains(&"2026-03-29T01:00:00Z".to_owned()));
        // The start itself (00:00Z) is not a tick: a new schedule fires nothing for "now".
        assert_eq!(
            ticks["half-hourly"].len(),
            72 * 2 - 1,
            "UTC intervals ignore DST"
        );

        let fall = r#"
rules:
  - name: daily-ny
    on: { schedule: { cron: "30 1 * * *", timezone: America/New_York } }
    do: [ { log: x } ]
  - name: hourly-ny
    on: { schedule: { cron: "30 * * * *", timezone: America/New_York } }
    do: [ { log: x } ]
  - name: half-hourly-ny
    on: { schedule: { cron: "*/30 * * * *", timezone: America/New_York } }
    do: [ { log: x } ]
"#;
        run_loop(
            &store,
            &rules,
            fall,
            utc("2026-10-31T00:00:00Z"),
            utc("2026-11-02T23:59:59Z"),
        )
        .await;
        let ticks = recorded_ticks(&store).await;
        assert_eq!(
            ticks["daily-ny"],
            [
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z"
            ],
            "01:30 happens twice on 1 November: a daily schedule fires in the first one only"
        );
        // 72 hours and one local hour (01:xx on 1 November) twice: both fire.
        assert_eq!(ticks["hourly-ny"].len(), 72);
        assert!(ticks["hourly-ny"].contains(&"2026-11-01T05:30:00Z".to_owned()));
        assert!(ticks["hourly-ny"].contains(&"2026-11-01T06:30:00Z".to_owned()));
        assert_eq!(ticks["half-hourly-ny"].len(), 72 * 2 - 1);
    }

    #[tokio::test]
    async fn the_loop_catches_up_after_three_days_down_by_policy() {
        let dir = tempfile::tempdir().expect("dir");
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).expect("mkdir");
        let store = temp_store(dir.path()).await;
        let yaml = r#"
rules:
  - name: skip
    on: { schedule: { cron: "0 8 * * *", catch_up: skip } }
    do: [ { log: x } ]
  - name: latest
    on: { schedule: { cron: "0 8 * * *", catch_up: latest } }
    do: [ { log: x } ]
  - name: all
    on: { schedule: { cron: "0 8 * * *", catch_up: all, catch_up_window: 2d } }
    do: [ { log: x } ]
"#;
        // Up on the 1st until 09:00, down until the 4th at 12:00, then up for a day.
        run_loop(
            &store,
            &rules,
            yaml,
            utc("2026-01-01T00:00:00Z"),
            utc("2026-01-01T09:00:00Z"),
        )
        .await;
        run_loop(
            &store,
            &rules,
            yaml,
            utc("2026-01-04T12:00:00Z"),
            utc("2026-01-05T12:00:00Z"),
        )
        .await;
        let ticks = recorded_ticks(&store).await;
        assert_eq!(
            ticks["skip"],
            ["2026-01-01T08:00:00Z", "2026-01-05T08:00:00Z"]
        );
        assert_eq!(
            ticks["latest"],
            [
                "2026-01-01T08:00:00Z",
                "2026-01-04T08:00:00Z",
                "2026-01-05T08:00:00Z"
            ]
        );
        assert_eq!(
            ticks["all"],
            [
                "2026-01-01T08:00:00Z",
                "2026-01-03T08:00:00Z",
                "2026-01-04T08:00:00Z",
                "2026-01-05T08:00:00Z"
            ],
            "the 2nd is outside the two-day window"
        );
    }

    #[test]
    fn catch_up_policies_after_three_days_down() {
        let trigger = schedule("0 8 * * *", "UTC");
        let timing = Timing::Cron(&trigger);
        let down_since = utc("2026-01-01T09:00:00Z");
        let now = Utc
            .with_ymd_and_hms(2026, 1, 4, 12, 0, 0)
            .single()
            .expect("time");
        let missed = timing.ticks_between(down_since, now);
        assert_eq!(missed.len(), 3);
        assert_eq!(
            plan_catch_up(CatchUp::Skip, Duration::from_secs(86_400), &missed, now),
            (vec![], 3)
        );
        assert_eq!(
            plan_catch_up(CatchUp::Latest, Duration::from_secs(86_400), &missed, now),
            (vec![utc("2026-01-04T08:00:00Z")], 2)
        );
        assert_eq!(
            plan_catch_up(CatchUp::All, Duration::from_secs(2 * 86_400), &missed, now),
            (
                vec![utc("2026-01-03T08:00:00Z"), utc("2026-01-04T08:00:00Z")],
                1
            )
        );
    }
}
