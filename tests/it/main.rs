//! Integration tests: one binary, one module per area. `support` spawns the real `flowd` binary.

#![allow(clippy::unwrap_used, missing_docs)]

mod cli;
mod corpus;
mod reload;
mod shipped;
mod support;
