//! Test support: spawn the real `flowd` binary on port 0 and find its addresses in its log,
//! and an `eventually` poll for conditions that become true asynchronously.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    /// The public listener.
    pub public: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// Keeps the log reader thread's channel open (the daemon's stderr keeps draining).
    _logs: mpsc::Receiver<String>,
    /// The folder of the daemon's database.
    _state: tempfile::TempDir,
}

impl Daemon {
    /// Starts `flowd run` on a rules folder with ports chosen by the OS.
    // The child is waited for in `Drop` (or `terminate`), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    pub fn start(rules: &Path, extra_env: &[(&str, &str)]) -> Daemon {
        let state = tempfile::tempdir().expect("state dir");
        let database = format!("sqlite://{}", state.path().join("flowd.db").display());
        Self::start_with_database(rules, extra_env, &database, state)
    }

    /// Starts `flowd run` with a given database URL (to restart on the same state).
    #[allow(clippy::zombie_processes)]
    pub fn start_with_database(
        rules: &Path,
        extra_env: &[(&str, &str)],
        database: &str,
        state: tempfile::TempDir,
    ) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowd"));
        command
            .arg("run")
            .args(["--database", database])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--rules")
            .arg(rules)
            .args(["--log-format", "json"])
            .env("FLOWD_RESCAN_INTERVAL_SECONDS", "3600")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn flowd");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(remaining)
                .expect("flowd printed no `flowd listening` line in time");
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["message"] == "flowd listening" {
                let public = entry["public"]
                    .as_str()
                    .expect("public")
                    .parse()
                    .expect("addr");
                let admin = entry["admin"]
                    .as_str()
                    .expect("admin")
                    .parse()
                    .expect("addr");
                return Daemon {
                    child,
                    public,
                    admin,
                    _logs: rx,
                    _state: state,
                };
            }
        }
    }

    /// The log lines the daemon wrote since it started listening (or since the last call).
    pub fn drain_logs(&self) -> Vec<String> {
        self._logs.try_iter().collect()
    }

    /// An admin URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A public URL.
    pub fn public_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    /// Kills the daemon with SIGKILL (no shutdown at all) and hands back its state folder.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self._state, placeholder)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "flowd did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Runs the `flowd` binary with arguments and returns (exit code, stdout).
pub fn flowd(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_flowd"))
        .args(args)
        .output()
        .expect("run flowd");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A schema of its own on the Postgres server `FLOWD_TEST_POSTGRES` names, dropped (with all it
/// holds) when this is dropped. `url` connects into it.
pub struct PostgresSchema {
    /// The server's URL with `search_path` set to the schema.
    pub url: String,
    server: String,
    name: String,
}

/// A fresh schema on `FLOWD_TEST_POSTGRES`; `None`, with a notice, when that is not set (the
/// Postgres tests then skip) — unless `FLOWD_REQUIRE_POSTGRES` is set, as `.ci/run` does, which
/// makes a missing server a failure instead of a skip.
pub async fn postgres_schema() -> Option<PostgresSchema> {
    use sqlx_core::connection::Connection as _;
    use sqlx_core::executor::Executor as _;
    let Ok(server) = std::env::var("FLOWD_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("FLOWD_REQUIRE_POSTGRES").is_none(),
            "FLOWD_REQUIRE_POSTGRES is set but FLOWD_TEST_POSTGRES is not: the Postgres tests would be skipped"
        );
        static NOTICE: std::sync::Once = std::sync::Once::new();
        NOTICE.call_once(|| {
            eprintln!(
                "notice: FLOWD_TEST_POSTGRES is not set; the Postgres tests are skipped (e.g. FLOWD_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test)"
            );
        });
        return None;
    };
    let name = format!("flowd_test_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx_postgres::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|err| panic!("cannot connect to FLOWD_TEST_POSTGRES ({server}): {err}"));
    connection
        .execute(format!("CREATE SCHEMA {name}").as_str())
        .await
        .expect("create the test schema");
    let separator = if server.contains('?') { '&' } else { '?' };
    Some(PostgresSchema {
        url: format!("{server}{separator}options=-c%20search_path%3D{name}"),
        server,
        name,
    })
}

impl Drop for PostgresSchema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let _ = std::thread::spawn(move || {
            use sqlx_core::connection::Connection as _;
            use sqlx_core::executor::Executor as _;
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut connection) = sqlx_postgres::PgConnection::connect(&server).await {
                    // The test's runtime is blocked on this thread: a pool connection it could
                    // not roll back would hold its locks, so never wait on them for long.
                    let _ = connection.execute("SET lock_timeout = '5s'").await;
                    let _ = connection
                        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}
