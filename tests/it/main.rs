//! Integration tests: one binary, one module per area. `support` spawns the real `flowd` binary.

#![allow(clippy::unwrap_used, missing_docs)]

mod admin_guard;
mod cli;
mod cluster;
mod conformance;
mod corpus;
mod daemon;
mod engine;
mod faults;
mod flow_control;
mod proxy;
mod receiver;
mod recrubo_client;
mod redteam;
mod reload;
mod shipped;
mod simulator;
mod store;
mod support;
mod versions;
