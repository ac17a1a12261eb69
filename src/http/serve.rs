//! Serving a router on a listener with the limits of DESIGN 4.2: a header read timeout, a cap
//! on open connections, and a shutdown that stops accepting, lets requests in flight finish
//! and gives up at a deadline.
//!
//! `axum::serve` has no timer (a half-sent request head stays open forever) and no connection
//! cap, so the accept loop is written here on hyper-util's connection builder, the way axum's
//! own `serve-with-hyper` example does it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Open connections at most; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// A request head must arrive within this. hyper also runs this timer while a keep-alive
    /// connection waits for its next request, so an idle connection is closed after it too.
    pub header_timeout: Duration,
    /// HTTP/2 connections are pinged this often and closed when a ping is not answered.
    pub idle_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 2048,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl ListenerLimits {
    /// These limits with the connection cap lowered to what the process's file descriptor limit
    /// leaves for `listeners` listeners (and a reserve for the store and outgoing calls).
    pub fn fitting_descriptors(mut self, listeners: usize) -> Self {
        if let Some(limit) = open_files_limit() {
            let reserve = 256;
            let share = (limit.saturating_sub(reserve) / listeners.max(1) as u64).max(16);
            if (self.max_connections as u64) > share {
                warn!(
                    max_connections = self.max_connections,
                    open_files_limit = limit,
                    lowered_to = share,
                    "limits.max_connections is above what the file descriptor limit allows"
                );
                self.max_connections = share as usize;
            }
        }
        self
    }
}

/// The soft `RLIMIT_NOFILE`, read from `/proc/self/limits` (Linux; `None` elsewhere). Read as
/// text so no `unsafe` libc call is needed.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serves `router` on `listener` until `stop` is cancelled, then closes idle connections, asks
/// busy ones to finish, and returns once all are closed or `deadline` has passed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    stop: CancellationToken,
    deadline: Duration,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_timeout)
        .max_concurrent_streams(256);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // EMFILE and friends: wait a little instead of spinning on the error.
                    warn!(error = %err, "Cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            // hyper's header timer starts with the first byte; a client that connects and sends
            // nothing would hold its slot for ever. It gets the same time to start as to finish.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(read)) if read > 0 => {}
                _ => {
                    drop(permit);
                    return;
                }
            }
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(err) = watcher.watch(connection).await {
                debug!(error = %err, "Connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?deadline,
            "Connections still open at the shutdown deadline; closing them"
        );
    }
}
