//! Integration tests: one binary, one module per area. `support` spawns the real `flowd` binary.

mod cli;
mod corpus;
mod reload;
mod shipped;
mod support;
