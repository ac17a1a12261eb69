//! The Recrubo API: a typed JSON:API client, its errors, list queries and the resource types.
//! Knows nothing of rules (STYLE.md): the engine turns rule steps into calls of this module.

pub mod client;
pub mod error;
pub mod jsonapi;
pub mod query;
pub mod sample;
pub mod status;
pub mod types;

pub use client::{ClientSettings, Page, RawResponse, RecruboClient};
pub use error::RecruboError;
pub use query::{FilterOp, ListQuery};
pub use status::{FlowGenerationStatus, FlowRunStatus, FollowedKind};
pub use types::{
    FlowGeneration, FlowRun, FlowRunPatch, NewFlowGeneration, NewFlowRun, VacancyAnalysis,
};
