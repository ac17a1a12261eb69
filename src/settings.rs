//! Settings of `flowd run`: an optional YAML file, then `FLOWD_*` environment variables, then
//! flags — each layer overriding the one before (DESIGN 5) — and secrets that never print.
//!
//! Layering works on a JSON tree: the file is read into it, every known setting path is looked up
//! in the environment (`recrubo.base_url` → `FLOWD_RECRUBO_BASE_URL`), flags are laid on top,
//! and the result is deserialized strictly, so an unknown key in the file is an error naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A value that must never appear in logs, errors or the admin API: Debug and Display print
/// `***`. Read it with [`Secret::expose`], only where it is sent.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

/// One string or a list of them; a comma-separated string from the environment becomes a list.
fn one_or_many_secrets<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Secret<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::One(text)) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Secret(s.to_owned()))
            .collect(),
        Some(OneOrMany::Many(list)) => list.into_iter().map(Secret).collect(),
    })
}

/// The state database (DESIGN 6).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://flowd.db` or `postgres://user@host/db?sslmode=require`.
    pub url: String,
    /// Postgres connections per instance (default 10; SQLite has its own threads).
    pub pool_size: Option<u32>,
    /// How long a claimed execution is leased before another instance may take it; renewed
    /// while a step runs (default 30s).
    pub lease: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: "sqlite://flowd.db".to_owned(),
            pool_size: None,
            lease: "30s".to_owned(),
        }
    }
}

/// All settings of the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Folder of rule files.
    pub rules: PathBuf,
    /// Public listener: webhooks, events, health.
    pub listen: SocketAddr,
    /// Admin listener: API, metrics, status page.
    pub admin_listen: SocketAddr,
    /// The state database: `sqlite://flowd.db` or `postgres://...`, written as that URL or as
    /// `{url, pool_size, lease}`.
    pub database: DatabaseSettings,
    /// The Recrubo API.
    pub recrubo: RecruboSettings,
    /// The `/events` intake.
    pub events: EventsSettings,
    /// SMTP for `email` steps.
    pub smtp: Option<SmtpSettings>,
    /// The admin API.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// A YAML file of `NAME: value` secrets for `{{secrets.NAME}}` (besides `FLOWD_SECRET_NAME`).
    pub secrets_file: Option<PathBuf>,
    /// Seconds between full rescans of the rules folder (a safety net for lost file events).
    pub rescan_interval_seconds: u64,
    /// How much execution history is kept.
    pub history: HistorySettings,
    /// Where steps may send to when a destination's host comes from run-time data (DESIGN 3).
    pub egress: EgressSettings,
    /// Connection limits of the listeners (DESIGN 4.2).
    pub limits: LimitsSettings,
    /// How long SIGTERM waits for requests and steps in flight (a duration like `15s`).
    pub shutdown_timeout: String,
}

/// `egress:` settings: hosts a `notify`/`http`/`email` step may reach when the host comes from
/// run-time data (`event`, `item`, `steps`, `run`, `generation`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressSettings {
    /// `host`, `host:port`, `*.suffix` or `*` patterns.
    #[serde(deserialize_with = "one_or_many_strings")]
    pub allow: Vec<String>,
    /// Follow HTTP redirects (off by default: a redirect could lead anywhere).
    pub follow_redirects: bool,
}

/// One string (a comma list from the environment) or a list of strings.
fn one_or_many_strings<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    Ok(one_or_many_secrets(deserializer)?
        .into_iter()
        .map(|value| value.0)
        .collect())
}

/// `limits:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSettings {
    /// Open connections per listener at most.
    pub max_connections: usize,
}

impl Default for LimitsSettings {
    fn default() -> Self {
        LimitsSettings {
            max_connections: 2048,
        }
    }
}

/// `history:` settings: finished executions older than `max_age`, or beyond the newest
/// `max_count`, are pruned in the background (pending ones and followed runs never are).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// A duration like `30d`.
    pub max_age: String,
    /// Executions kept at most.
    pub max_count: i64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings {
            max_age: "30d".to_owned(),
            max_count: 100_000,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rules: PathBuf::from("rules"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database: DatabaseSettings::default(),
            recrubo: RecruboSettings::default(),
            events: EventsSettings::default(),
            smtp: None,
            admin: AdminSettings::default(),
            log: LogSettings::default(),
            secrets_file: None,
            rescan_interval_seconds: 30,
            history: HistorySettings::default(),
            egress: EgressSettings::default(),
            limits: LimitsSettings::default(),
            shutdown_timeout: "15s".to_owned(),
        }
    }
}

/// `recrubo:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecruboSettings {
    /// API base URL.
    pub base_url: String,
    /// Bearer token (also `RECRUBO_API_TOKEN`).
    pub token: Option<Secret<String>>,
    /// Webhook secrets; two during rotation (also `RECRUBO_WEBHOOK_SECRET`).
    #[serde(deserialize_with = "one_or_many_secrets")]
    pub webhook_secret: Vec<Secret<String>>,
    /// Use `?sync=true` (sandbox only).
    pub sync: bool,
    /// Requests per second, all rules together.
    pub rate_limit: f64,
    /// Poll followed runs that have not changed for this long (a duration like `10m`).
    pub reconcile_after: String,
    /// How long a webhook for a run flowd does not know waits for the create that may have made
    /// it to be recorded (Recrubo's webhook can overtake the create's answer; the docs do not
    /// say by how much). A duration, default `30s`.
    pub unknown_run_grace: String,
    /// The attributes of `POST /webhooks`, whose shape Recrubo does not document
    /// (recrubo-api.md §9.3): a JSON object whose strings are templates over `resource`,
    /// `event`, `fields` and `url`. Attributes that render to null are left out.
    pub subscription_body: Option<Value>,
}

impl Default for RecruboSettings {
    fn default() -> Self {
        RecruboSettings {
            base_url: "https://api.recrubo.app/public/v2".to_owned(),
            token: None,
            webhook_secret: Vec::new(),
            sync: false,
            rate_limit: 20.0,
            reconcile_after: "10m".to_owned(),
            unknown_run_grace: "30s".to_owned(),
            subscription_body: None,
        }
    }
}

/// `events:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSettings {
    /// Bearer tokens accepted on `/events`.
    #[serde(deserialize_with = "one_or_many_secrets")]
    pub tokens: Vec<Secret<String>>,
    /// HMAC secret for `X-Flowd-Signature`.
    pub hmac_secret: Option<Secret<String>>,
}

/// `smtp:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Host.
    pub host: String,
    /// Port (default 587).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password.
    #[serde(default)]
    pub password: Option<Secret<String>>,
    /// Sender address.
    pub from: String,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (a local relay).
    #[serde(default)]
    pub tls: Option<String>,
}

fn default_smtp_port() -> u16 {
    587
}

/// `admin:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Bearer token for the admin API; required when `admin_listen` is not loopback.
    pub token: Option<Secret<String>>,
    /// Other names the admin listener answers to (`host` or `host:port`), e.g. behind a proxy;
    /// other `Host` headers get 421 (DNS rebinding, DESIGN 4.3).
    #[serde(deserialize_with = "one_or_many_strings")]
    pub hosts: Vec<String>,
}

/// `log:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A level (`info`) or a tracing filter (`flowd=debug,tower_http=info`).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The durations of the settings, parsed once (they are text in the settings so that files,
/// variables and flags all write `10m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `recrubo.reconcile_after`.
    pub reconcile_after: std::time::Duration,
    /// `recrubo.unknown_run_grace`.
    pub unknown_run_grace: std::time::Duration,
    /// `shutdown_timeout`.
    pub shutdown_timeout: std::time::Duration,
    /// `history.max_age`.
    pub history_max_age: std::time::Duration,
    /// `database.lease`.
    pub lease: std::time::Duration,
}

impl Settings {
    /// Parses every duration setting; the error names the setting and what to write.
    pub fn timings(&self) -> Result<Timings, String> {
        let parse = |name: &str, text: &str| {
            crate::rules::duration::parse_duration(text).map_err(|err| format!("{name}: {err}"))
        };
        Ok(Timings {
            reconcile_after: parse("recrubo.reconcile_after", &self.recrubo.reconcile_after)?,
            unknown_run_grace: parse("recrubo.unknown_run_grace", &self.recrubo.unknown_run_grace)?,
            shutdown_timeout: parse("shutdown_timeout", &self.shutdown_timeout)?,
            history_max_age: parse("history.max_age", &self.history.max_age)?,
            lease: parse("database.lease", &self.database.lease).and_then(|lease| {
                if lease < std::time::Duration::from_secs(1) {
                    Err(format!(
                        "database.lease: {} is shorter than a second; a step renews its lease every third of it",
                        self.database.lease
                    ))
                } else {
                    Ok(lease)
                }
            })?,
        })
    }

    /// Every secret setting that has a value (for redaction).
    pub fn secret_values(&self) -> Vec<&Secret<String>> {
        let mut values: Vec<&Secret<String>> = Vec::new();
        values.extend(self.recrubo.token.iter());
        values.extend(self.recrubo.webhook_secret.iter());
        values.extend(self.events.tokens.iter());
        values.extend(self.events.hmac_secret.iter());
        values.extend(self.admin.token.iter());
        values.extend(self.smtp.iter().filter_map(|smtp| smtp.password.as_ref()));
        values
    }
}

/// Every settings path that can come from the environment, as `FLOWD_` + upper-cased `_` path.
pub const SETTING_PATHS: &[&str] = &[
    "rules",
    "listen",
    "admin_listen",
    "database.url",
    "database.pool_size",
    "database.lease",
    "recrubo.base_url",
    "recrubo.token",
    "recrubo.webhook_secret",
    "recrubo.sync",
    "recrubo.rate_limit",
    "recrubo.reconcile_after",
    "recrubo.unknown_run_grace",
    "events.tokens",
    "events.hmac_secret",
    "smtp.host",
    "smtp.port",
    "smtp.username",
    "smtp.password",
    "smtp.from",
    "smtp.tls",
    "admin.token",
    "admin.hosts",
    "log.format",
    "log.level",
    "secrets_file",
    "rescan_interval_seconds",
    "history.max_age",
    "history.max_count",
    "egress.allow",
    "egress.follow_redirects",
    "limits.max_connections",
    "shutdown_timeout",
];

/// The settings that hold secrets: read as text whatever they look like, never echoed, and
/// refused when blank (DESIGN 5).
pub const SECRET_PATHS: &[&str] = &[
    "recrubo.token",
    "recrubo.webhook_secret",
    "events.tokens",
    "events.hmac_secret",
    "smtp.password",
    "admin.token",
];

/// The environment variable of a settings path.
pub fn env_name(path: &str) -> String {
    format!("FLOWD_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// Why settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read the settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// The layered settings do not fit the settings' shape.
    #[error("invalid settings: {0}")]
    Invalid(String),
    /// A secret setting is present but empty or blank (it would mean "no secret").
    #[error(
        "the secret setting `{0}` ({env}) is set but empty; give it a value or remove it",
        env = env_name(.0)
    )]
    BlankSecret(String),
    /// A secret setting has a shape other than text (or a list of texts); the value is not shown.
    #[error("the secret setting `{0}` must be text (or a list of texts); its value is not shown")]
    SecretShape(String),
}

/// Builds settings from an optional file, an environment and flag overrides (settings paths to
/// values). `env` is passed in so tests need not touch the process environment.
pub fn layer(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: &[(&str, Value)],
) -> Result<Settings, SettingsError> {
    let mut tree = Value::Object(Map::new());
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if !text.trim().is_empty() {
            tree = serde_saphyr::from_str::<Value>(&text).map_err(|err| SettingsError::Parse {
                path: path.to_path_buf(),
                message: err.to_string(),
            })?;
            if !tree.is_object() {
                return Err(SettingsError::Parse {
                    path: path.to_path_buf(),
                    message: "the settings file must be a mapping of setting names".to_owned(),
                });
            }
        }
    }
    // `database: URL` is the short form of `database: {url: URL}`; FLOWD_DATABASE and
    // `--database` set the URL.
    if let Some(url) = tree.get("database").filter(|d| d.is_string()).cloned() {
        set_path(&mut tree, "database", serde_json::json!({ "url": url }));
    }
    if let Some(url) = env.get("FLOWD_DATABASE") {
        set_path(&mut tree, "database.url", Value::String(url.clone()));
    }
    // Well-known variables of the Recrubo world, below FLOWD_* in precedence.
    for (variable, path) in [
        ("RECRUBO_API_TOKEN", "recrubo.token"),
        ("RECRUBO_WEBHOOK_SECRET", "recrubo.webhook_secret"),
    ] {
        if let Some(value) = env.get(variable)
            && env.get(&env_name(path)).is_none()
            && lookup(&tree, path).is_none()
        {
            set_path(&mut tree, path, Value::String(value.clone()));
        }
    }
    for path in SETTING_PATHS {
        if let Some(value) = env.get(&env_name(path)) {
            let value = if SECRET_PATHS.contains(path) {
                // `FLOWD_ADMIN_TOKEN=1234` is the text "1234", not a number.
                Value::String(value.clone())
            } else {
                env_value(value)
            };
            set_path(&mut tree, path, value);
        }
    }
    for (path, value) in flags {
        set_path(&mut tree, path, value.clone());
    }
    for path in SECRET_PATHS {
        check_secret_setting(&mut tree, path)?;
    }
    serde_json::from_value::<Settings>(tree).map_err(|err| SettingsError::Invalid(err.to_string()))
}

/// Environment values are strings; numbers and booleans are recognised so that
/// `FLOWD_RECRUBO_RATE_LIMIT=5` and `FLOWD_RECRUBO_SYNC=true` work.
fn env_value(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => text
            .parse::<u64>()
            .map(Value::from)
            .or_else(|_| text.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::String(text.to_owned())),
    }
}

/// Makes a secret setting text (a YAML `token: 1234` is the text "1234") and refuses a blank
/// one, before deserializing, so no error message can carry its value.
fn check_secret_setting(tree: &mut Value, path: &str) -> Result<(), SettingsError> {
    let mut node = Some(&mut *tree);
    for key in path.split('.') {
        node = node.and_then(|n| n.get_mut(key));
    }
    let Some(value) = node else { return Ok(()) };
    let as_text = |value: &mut Value| -> Result<(), SettingsError> {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return Err(SettingsError::SecretShape(path.to_owned())),
        };
        // A comma list (rotation) must not hide a blank entry either.
        if text.trim().is_empty() || text.split(',').any(|part| part.trim().is_empty()) {
            return Err(SettingsError::BlankSecret(path.to_owned()));
        }
        *value = Value::String(text);
        Ok(())
    };
    match value {
        Value::Null => Err(SettingsError::BlankSecret(path.to_owned())),
        Value::Array(items) if items.is_empty() => Err(SettingsError::BlankSecret(path.to_owned())),
        Value::Array(items) => items.iter_mut().try_for_each(as_text),
        other => as_text(other),
    }
}

fn lookup<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |node, key| node.get(key))
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        if keys.peek().is_none() {
            map.insert(key.to_owned(), value);
            return;
        }
        node = map
            .entry(key.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Resolves the secrets a rule set uses from `FLOWD_SECRET_<NAME>` and the secrets file.
/// Returns the values, or the names that could not be resolved.
pub fn resolve_secrets(
    names: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
    secrets_file: Option<&Path>,
) -> Result<BTreeMap<String, Secret<String>>, ResolveSecretsError> {
    let from_file: BTreeMap<String, String> = match secrets_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| {
                ResolveSecretsError::File(format!("cannot read {}: {err}", path.display()))
            })?;
            serde_saphyr::from_str(&text).map_err(|err| {
                ResolveSecretsError::File(format!(
                    "{}: expected a mapping of NAME: value ({err})",
                    path.display()
                ))
            })?
        }
        None => BTreeMap::new(),
    };
    let mut resolved = BTreeMap::new();
    let mut missing = Vec::new();
    let mut blank = Vec::new();
    for name in names {
        let variable = format!("FLOWD_SECRET_{}", name.to_ascii_uppercase());
        match env.get(&variable).or_else(|| from_file.get(name)) {
            // An empty secret would redact nothing and send nothing: refuse it by name.
            Some(value) if value.trim().is_empty() => blank.push(name.clone()),
            Some(value) => {
                resolved.insert(name.clone(), Secret(value.clone()));
            }
            None => missing.push(name.clone()),
        }
    }
    if !blank.is_empty() {
        return Err(ResolveSecretsError::Blank(blank));
    }
    if missing.is_empty() {
        Ok(resolved)
    } else {
        Err(ResolveSecretsError::Missing(missing))
    }
}

/// Why secrets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveSecretsError {
    /// The secrets file is unreadable.
    #[error("{0}")]
    File(String),
    /// These names have no value.
    #[error("no value for secret(s) {}; set FLOWD_SECRET_<NAME> or add them to the secrets file", .0.join(", "))]
    Missing(Vec<String>),
    /// These names have an empty value.
    #[error("secret(s) {} are set but empty; give them a value", .0.join(", "))]
    Blank(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("flowd.yaml");
        std::fs::write(
            &file,
            "rules: from-file/\nrecrubo:\n  base_url: http://file\n  rate_limit: 3\nlisten: 127.0.0.1:9000\n",
        )
        .expect("write");
        let settings = layer(
            Some(&file),
            &env(&[
                ("FLOWD_RECRUBO_BASE_URL", "http://env"),
                ("FLOWD_LISTEN", "127.0.0.1:9001"),
                ("RECRUBO_API_TOKEN", "tok"),
            ]),
            &[("listen", Value::String("127.0.0.1:9002".into()))],
        )
        .expect("valid");
        assert_eq!(settings.rules, PathBuf::from("from-file/"));
        assert_eq!(settings.recrubo.base_url, "http://env");
        assert_eq!(settings.recrubo.rate_limit, 3.0);
        assert_eq!(settings.listen.port(), 9002);
        assert_eq!(
            settings.recrubo.token.as_ref().map(|t| t.expose().as_str()),
            Some("tok")
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("flowd.yaml");
        std::fs::write(&file, "recrubo:\n  base_ur: x\n").expect("write");
        let err = layer(Some(&file), &BTreeMap::new(), &[]).unwrap_err();
        assert!(err.to_string().contains("base_ur"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
        let settings =
            layer(None, &env(&[("FLOWD_RECRUBO_WEBHOOK_SECRET", "a,b")]), &[]).expect("valid");
        assert_eq!(settings.recrubo.webhook_secret.len(), 2);
        assert!(!format!("{settings:?}").contains("a,b"));
    }

    #[test]
    fn secrets_resolve_from_env_or_report_missing() {
        let names: BTreeSet<String> = ["slack_webhook".to_owned(), "ops".to_owned()].into();
        let err = resolve_secrets(&names, &env(&[("FLOWD_SECRET_SLACK_WEBHOOK", "x")]), None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no value for secret(s) ops; set FLOWD_SECRET_<NAME> or add them to the secrets file"
        );
    }
}
