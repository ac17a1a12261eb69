//! The running daemon's core. Today: the rule set in force and its hot reload
//! ([`reload::Reloader`]). Matching, execution and correlation of runs come with the engine issue.

pub mod reload;
