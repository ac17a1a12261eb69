//! Hot reload of the rule set, as a transaction.
//!
//! Every trigger — a file event (debounced), SIGHUP, `POST /api/v1/reload`, the periodic rescan —
//! ends in [`Reloader::reload`], which loads and validates the *whole* folder on a blocking
//! thread. An invalid set leaves the set in force untouched and records every diagnostic; a valid
//! one is swapped in atomically (`ArcSwap`), so request handlers never wait on a reload and
//! always see one complete set. Reloads are serialized by a mutex; triggers that arrive while one
//! runs are coalesced into one more reload, which then sees the latest files.
//!
//! The watcher watches the *folder*, recursively, and treats any event but a plain access as
//! "something changed": editors' atomic saves, backup-rename saves and Kubernetes ConfigMap
//! `..data` symlink swaps all show up as events on the folder, not on the file a rule lives in.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::rules::load::folder_digest;
use crate::rules::{Diagnostic, Rule, RuleSet, load_rule_set};
use crate::store::{RuleVersion, Store};

/// Stores the version of every rule of `set` that `known` does not have already (the store
/// keeps each version once anyway; this spares a reload of 100,000 rules that changed one).
async fn save_versions(
    store: &dyn Store,
    set: &RuleSet,
    known: Option<&RuleSet>,
) -> Result<(), String> {
    let stored: std::collections::HashSet<&str> = known
        .map(|known| known.rules().iter().map(|r| r.version.as_str()).collect())
        .unwrap_or_default();
    let versions: Vec<RuleVersion> = set
        .rules()
        .iter()
        .filter(|rule| !stored.contains(rule.version.as_str()))
        .map(|rule| RuleVersion {
            hash: rule.version.clone(),
            rule: rule.name.clone(),
            definition: rule.definition.clone(),
        })
        .collect();
    for chunk in versions.chunks(1000) {
        store
            .save_rule_versions(chunk)
            .await
            .map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadTrigger {
    /// The daemon started.
    Startup,
    /// A file event in the rules folder.
    Watch,
    /// The periodic rescan.
    Rescan,
    /// SIGHUP.
    Signal,
    /// `POST /api/v1/reload`.
    Api,
}

/// The result of one reload.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// A new set is in force.
    Reloaded {
        /// Rules in force.
        rules: usize,
        /// Hash of the set.
        hash: String,
    },
    /// The files are the same as those of the set in force.
    Unchanged {
        /// Rules in force.
        rules: usize,
        /// Hash of the set.
        hash: String,
    },
    /// The files are invalid; the previous set stays in force.
    Invalid {
        /// Every problem found.
        diagnostics: Vec<Diagnostic>,
    },
}

/// The state of the last reload attempt, for the admin API and the status page.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// Whether the last attempt left a valid set in force from the files on disk.
    pub last_success: bool,
    /// When it happened.
    pub last_attempt_at: DateTime<Utc>,
    /// When the set in force was loaded.
    pub loaded_at: DateTime<Utc>,
    /// What triggered the last attempt.
    pub last_trigger: ReloadTrigger,
    /// The diagnostics of the last attempt, when it failed.
    pub diagnostics: Vec<Diagnostic>,
}

/// Holds the rule set in force and reloads it.
pub struct Reloader {
    /// Notified whenever a new rule set is swapped in (schedules re-plan then).
    pub changed: tokio::sync::Notify,
    rules_dir: PathBuf,
    current: ArcSwap<RuleSet>,
    status: Mutex<ReloadStatus>,
    serialize: tokio::sync::Mutex<()>,
    /// [`folder_digest`] of the files the set in force was loaded from; `None` until a reload
    /// has loaded it, and after a failed one.
    disk_digest: Mutex<Option<String>>,
    /// Where rule versions are stored; a set is swapped in only once its versions are.
    store: std::sync::OnceLock<Arc<dyn Store>>,
    /// Rule versions no longer in force that executions asked for, rebuilt from the store.
    old_versions: Mutex<std::collections::HashMap<String, Arc<Rule>>>,
}

/// Why the rule version an execution names cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// The store failed: try again later.
    Store(String),
    /// The version is not stored, or no longer builds: the execution cannot go on.
    Gone(String),
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("rules_dir", &self.rules_dir)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Starts with a set that was already loaded and validated.
    pub fn new(rules_dir: PathBuf, initial: RuleSet) -> Arc<Reloader> {
        let now = Utc::now();
        record_metrics(initial.len(), true, now, "success");
        Arc::new(Reloader {
            changed: tokio::sync::Notify::new(),
            rules_dir,
            current: ArcSwap::from_pointee(initial),
            status: Mutex::new(ReloadStatus {
                last_success: true,
                last_attempt_at: now,
                loaded_at: now,
                last_trigger: ReloadTrigger::Startup,
                diagnostics: Vec::new(),
            }),
            serialize: tokio::sync::Mutex::new(()),
            disk_digest: Mutex::new(None),
            store: std::sync::OnceLock::new(),
            old_versions: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Stores the versions of the set in force and those of every later set (before it is
    /// swapped in), so that any execution's version can be found again after a restart.
    pub async fn attach_store(&self, store: Arc<dyn Store>) -> Result<(), String> {
        save_versions(&*store, &self.current(), None).await?;
        let _ = self.store.set(store);
        Ok(())
    }

    /// The rule an execution runs: the rule named `name` in the version `version` — the one in
    /// force when it is that version (or when no version is recorded), else the stored version
    /// rebuilt (DESIGN 3: an execution runs the rule version it matched, to its end). `Ok(None)`
    /// when no version is recorded and the rule is gone.
    pub async fn rule_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Arc<Rule>>, VersionError> {
        let set = self.current();
        let current = set.get(name).cloned();
        let Some(version) = version else {
            return Ok(current);
        };
        if let Some(rule) = current.filter(|rule| rule.version == version) {
            return Ok(Some(rule));
        }
        if let Some(rule) = self
            .old_versions
            .lock()
            .ok()
            .and_then(|cache| cache.get(version).cloned())
        {
            return Ok(Some(rule));
        }
        let Some(store) = self.store.get() else {
            return Err(VersionError::Gone(format!(
                "rule `{name}` changed and its version {version} is not stored"
            )));
        };
        let definition = store
            .rule_version(version)
            .await
            .map_err(|err| VersionError::Store(err.to_string()))?
            .ok_or_else(|| {
                VersionError::Gone(format!(
                    "rule `{name}` changed and its version {} is not stored",
                    &version[..version.len().min(12)]
                ))
            })?;
        let rule =
            tokio::task::spawn_blocking(move || crate::rules::validate::rebuild(&definition))
                .await
                .map_err(|err| {
                    VersionError::Gone(format!("rebuilding the rule version failed: {err}"))
                })?
                .map_err(VersionError::Gone)?;
        if rule.version != version {
            return Err(VersionError::Gone(format!(
                "the stored version of rule `{name}` rebuilds as another version"
            )));
        }
        let rule = Arc::new(rule);
        if let Ok(mut cache) = self.old_versions.lock() {
            // Old versions are asked for only by executions that outlived a reload: few.
            if cache.len() >= 1024 {
                cache.clear();
            }
            cache.insert(version.to_owned(), rule.clone());
        }
        Ok(Some(rule))
    }

    /// The rule set in force (cheap: an `Arc` clone).
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// The folder being watched.
    pub fn rules_dir(&self) -> &PathBuf {
        &self.rules_dir
    }

    /// The state of the last reload.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .map(|status| status.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Loads and validates the whole folder; swaps the set in when valid.
    pub async fn reload(&self, trigger: ReloadTrigger) -> ReloadOutcome {
        let _serialized = self.serialize.lock().await;
        let dir = self.rules_dir.clone();
        let digest = tokio::task::spawn_blocking(move || folder_digest(&[dir]))
            .await
            .ok();
        let last_digest = self.disk_digest.lock().ok().and_then(|d| d.clone());
        // The periodic rescan finds the files as they were loaded: nothing to parse.
        if trigger == ReloadTrigger::Rescan && digest.is_some() && digest == last_digest {
            let current = self.current.load();
            let outcome = ReloadOutcome::Unchanged {
                rules: current.len(),
                hash: current.hash.clone(),
            };
            if let Ok(mut status) = self.status.lock() {
                status.last_attempt_at = Utc::now();
                status.last_trigger = trigger;
            }
            return outcome;
        }
        let dir = self.rules_dir.clone();
        let loaded = tokio::task::spawn_blocking(move || load_rule_set(&[dir])).await;
        let now = Utc::now();
        let outcome = match loaded {
            Err(join_error) => ReloadOutcome::Invalid {
                diagnostics: vec![Diagnostic::new(
                    &self.rules_dir,
                    Default::default(),
                    "internal",
                    format!("loading the rules failed: {join_error}"),
                )],
            },
            Ok(loaded) => match loaded.result {
                Ok(set) => {
                    let rules = set.len();
                    let hash = set.hash.clone();
                    if hash == self.current.load().hash {
                        ReloadOutcome::Unchanged { rules, hash }
                    } else if let Some(Err(err)) = match self.store.get() {
                        Some(store) => {
                            Some(save_versions(&**store, &set, Some(&self.current())).await)
                        }
                        None => None,
                    } {
                        // Without its versions stored, the set's executions could not be
                        // resumed after a restart: the set in force stays.
                        ReloadOutcome::Invalid {
                            diagnostics: vec![Diagnostic::new(
                                &self.rules_dir,
                                Default::default(),
                                "store",
                                format!("cannot store the rule versions: {err}"),
                            )],
                        }
                    } else {
                        self.current.store(Arc::new(set));
                        self.changed.notify_waiters();
                        ReloadOutcome::Reloaded { rules, hash }
                    }
                }
                Err(diagnostics) => ReloadOutcome::Invalid { diagnostics },
            },
        };
        if let Ok(mut loaded_from) = self.disk_digest.lock() {
            *loaded_from = match outcome {
                ReloadOutcome::Invalid { .. } => None,
                _ => digest,
            };
        }
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        status.last_attempt_at = now;
        status.last_trigger = trigger;
        match &outcome {
            ReloadOutcome::Reloaded { rules, hash } => {
                info!(?trigger, rules, hash = %&hash[..12.min(hash.len())], "Rules reloaded");
                status.last_success = true;
                status.loaded_at = now;
                status.diagnostics.clear();
                record_metrics(*rules, true, now, "success");
            }
            ReloadOutcome::Unchanged { rules, .. } => {
                // A rescan or a touch that changed nothing is not news, but a failed state is
                // repaired by it (the files were put back as they were).
                status.last_success = true;
                status.diagnostics.clear();
                if trigger == ReloadTrigger::Api || trigger == ReloadTrigger::Signal {
                    info!(?trigger, rules, "Rules unchanged");
                    record_metrics(*rules, true, now, "unchanged");
                } else {
                    metrics::gauge!("flowd_rules_last_reload_success").set(1.0);
                }
            }
            ReloadOutcome::Invalid { diagnostics } => {
                // Log each problem once, here, where the failure is handled.
                if status.diagnostics != *diagnostics {
                    for diagnostic in diagnostics {
                        warn!(?trigger, "{}", diagnostic.one_line());
                    }
                    error!(
                        ?trigger,
                        problems = diagnostics.len(),
                        "Rules are invalid; the previous rules stay in force"
                    );
                }
                status.last_success = false;
                status.diagnostics = diagnostics.clone();
                record_metrics(self.current.load().len(), false, now, "failure");
            }
        }
        outcome
    }

    /// Runs the watcher, the periodic rescan and SIGHUP handling until `shutdown` is cancelled.
    pub async fn watch(self: Arc<Self>, rescan_every: Duration, shutdown: CancellationToken) {
        // Capacity 1: a trigger while a reload is pending is folded into that pending reload.
        let (tx, mut rx) = mpsc::channel::<ReloadTrigger>(1);
        let _watcher = match start_watcher(&self.rules_dir, tx.clone()) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                warn!(dir = %self.rules_dir.display(), error = %err, "Cannot watch the rules folder; relying on the periodic rescan");
                None
            }
        };
        spawn_signal_listener(tx.clone(), shutdown.clone());
        let mut rescan = tokio::time::interval(rescan_every.max(Duration::from_secs(1)));
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescan.tick().await;
        loop {
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(trigger) = rx.recv() => trigger,
                _ = rescan.tick() => ReloadTrigger::Rescan,
            };
            self.reload(trigger).await;
        }
    }
}

fn record_metrics(rules: usize, success: bool, at: DateTime<Utc>, result: &'static str) {
    metrics::gauge!("flowd_rules_loaded").set(rules as f64);
    metrics::gauge!("flowd_rules_last_reload_success").set(if success { 1.0 } else { 0.0 });
    metrics::gauge!("flowd_rules_last_reload_timestamp_seconds")
        .set(at.timestamp_millis() as f64 / 1000.0);
    metrics::counter!("flowd_rules_reloads_total", "result" => result).increment(1);
}

type Debouncer = notify_debouncer_full::Debouncer<
    notify_debouncer_full::notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

fn start_watcher(
    dir: &std::path::Path,
    tx: mpsc::Sender<ReloadTrigger>,
) -> Result<Debouncer, notify_debouncer_full::notify::Error> {
    use notify_debouncer_full::notify::{EventKind, RecursiveMode};
    let mut debouncer = notify_debouncer_full::new_debouncer(
        Duration::from_millis(250),
        None,
        move |result: notify_debouncer_full::DebounceEventResult| match result {
            Ok(events) => {
                let changed = events
                    .iter()
                    .any(|event| !matches!(event.kind, EventKind::Access(_)));
                if changed {
                    // Full: a reload is already pending and will see this change too.
                    let _ = tx.try_send(ReloadTrigger::Watch);
                }
            }
            Err(errors) => {
                for err in errors {
                    warn!(error = %err, "File watcher error; the periodic rescan covers it");
                }
                let _ = tx.try_send(ReloadTrigger::Watch);
            }
        },
    )?;
    debouncer.watch(dir, RecursiveMode::Recursive)?;
    Ok(debouncer)
}

#[cfg(unix)]
fn spawn_signal_listener(tx: mpsc::Sender<ReloadTrigger>, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(stream) => stream,
            Err(err) => {
                warn!(error = %err, "Cannot listen for SIGHUP");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                    info!("SIGHUP received; reloading rules");
                    let _ = tx.send(ReloadTrigger::Signal).await;
                }
            }
        }
    });
}

#[cfg(not(unix))]
fn spawn_signal_listener(_tx: mpsc::Sender<ReloadTrigger>, _shutdown: CancellationToken) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> String {
        format!("rules:\n  - name: {name}\n    on: {{ event: x }}\n    do: [ {{ log: x }} ]\n")
    }

    #[tokio::test]
    async fn the_rescan_skips_an_unchanged_folder_and_sees_any_edit() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("r.yaml");
        std::fs::write(&file, rule("aaaa")).expect("write");
        let initial = load_rule_set(&[dir.path().to_path_buf()])
            .result
            .expect("valid");
        let reloader = Reloader::new(dir.path().to_path_buf(), initial);
        assert!(matches!(
            reloader.reload(ReloadTrigger::Rescan).await,
            ReloadOutcome::Unchanged { .. }
        ));
        assert!(reloader.disk_digest.lock().expect("lock").is_some());
        // Same size, same second: only the bytes tell.
        std::fs::write(&file, rule("bbbb")).expect("write");
        assert!(matches!(
            reloader.reload(ReloadTrigger::Rescan).await,
            ReloadOutcome::Reloaded { .. }
        ));
        assert!(reloader.current().get("bbbb").is_some());
        // A broken file forgets the digest, so the next rescan reports it again, and putting
        // the file back repairs the state.
        std::fs::write(&file, "rules: [").expect("write");
        assert!(matches!(
            reloader.reload(ReloadTrigger::Rescan).await,
            ReloadOutcome::Invalid { .. }
        ));
        assert!(reloader.disk_digest.lock().expect("lock").is_none());
        std::fs::write(&file, rule("bbbb")).expect("write");
        assert!(matches!(
            reloader.reload(ReloadTrigger::Rescan).await,
            ReloadOutcome::Unchanged { .. }
        ));
        assert!(reloader.status().last_success);
    }
}
