//! flowd: a workflow automation daemon for the Recrubo API, driven by YAML rule files.
//!
//! A map of the crate (see ARCHITECTURE.md for the invariants):
//! - [`rules`]: rule files — the model as written, loading with spans, validation that collects
//!   every error, templates (handlebars) and conditions (CEL). No I/O beyond reading files.
//! - [`engine`]: the running daemon's core; today the hot reload of the rule set.
//! - [`http`]: routers of the public and admin listeners.
//! - [`recrubo`]: Recrubo API types (statuses); knows nothing of rules.
//! - [`sim`]: the Recrubo simulator (`flowd sim`), for tests, benchmarks and the demo.
//! - [`settings`]: flags → environment → file layering, and secrets that never print.
//! - [`cli`]: one module per subcommand; `main.rs` only maps its result to an exit code.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod actions;
pub mod cli;
pub mod engine;
pub mod http;
pub mod recrubo;
pub mod rules;
pub mod settings;
pub mod sim;
pub mod store;
pub mod triggers;
