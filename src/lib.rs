//! flowd: a workflow automation daemon for the Recrubo API, driven by YAML rule files.
//!
//! A map of the crate (see ARCHITECTURE.md for the invariants and the threat model):
//! - [`rules`]: rule files — the model as written, loading with spans, validation that collects
//!   every error, rule versions, templates (handlebars) and conditions (CEL). No I/O beyond
//!   reading files.
//! - [`engine`]: the core — the rule set in force and its hot reload, matching (one
//!   `matcher::why_not` for the daemon, `flowd test` and `flowd simulate`), the processor
//!   (inbox → executions), the executor (steps, retries, adoption of lost creates), reconcile,
//!   and the dry run behind `flowd test`/`flowd simulate`.
//! - [`actions`]: what each step kind does (Recrubo, HTTP, SMTP) and the egress policy.
//! - [`triggers`]: the HTTP intake (webhooks, events) and the scheduler.
//! - [`store`]: the `Store` trait and its SQLite implementation.
//! - [`daemon`]: `Daemon` — build, run until a shutdown future, `quiesce`.
//! - [`http`]: routers of the public and admin listeners, the admin guard, the accept loop.
//! - [`recrubo`]: the Recrubo API client and types; knows nothing of rules.
//! - [`sim`]: the Recrubo simulator (`flowd sim`), for tests, benchmarks and the demo; nothing
//!   outside it and the CLI commands that start it imports it.
//! - [`settings`]: flags → environment → file layering, and secrets that never print.
//! - [`cli`]: one module per subcommand, glue around the above; `main.rs` only maps its result
//!   to an exit code.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod actions;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod http;
pub mod recrubo;
pub mod rules;
pub mod settings;
pub mod sim;
pub mod store;
pub mod triggers;
