//! What starts executions from outside: the HTTP intake ([`http`]). Schedules join here in the
//! schedules issue.

pub mod http;
pub mod schedule;
