//! The Recrubo API: resource statuses (and, in later work, the client). Knows nothing of rules.

pub mod status;

pub use status::{FlowGenerationStatus, FlowRunStatus};
