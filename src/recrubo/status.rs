//! Statuses of Recrubo's asynchronous resources.
//!
//! The documentation disagrees with itself about a FlowRun's first status (`created` on the async
//! page, `queued` in the reference) and leaves `cancelled` out of the enum although PATCH accepts
//! it (recrubo-api.md §5, §13). flowd accepts all of them, and keeps any status it does not know
//! as `Other` instead of failing: Recrubo may add statuses without notice.

use std::fmt;

/// The status of a FlowRun.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowRunStatus {
    /// Named by the async-requests page as the first status.
    Created,
    /// The first status per the FlowRun reference.
    Queued,
    /// The chat is going on.
    Running,
    /// The flow reached its end.
    Finished,
    /// The candidate did not answer within the flow's session timeout.
    Timeout,
    /// The run failed.
    Exception,
    /// Cancelled through PATCH.
    Cancelled,
    /// A status this version of flowd does not know.
    Other(String),
}

impl FlowRunStatus {
    /// The statuses a rule may name.
    pub const KNOWN: &'static [&'static str] = &[
        "queued",
        "created",
        "running",
        "finished",
        "timeout",
        "exception",
        "cancelled",
    ];

    /// Statuses that `PATCH /flow-runs/{id}` may set.
    pub const SETTABLE: &'static [&'static str] =
        &["finished", "timeout", "cancelled", "exception"];

    /// Parses a status leniently: unknown text becomes `Other`.
    pub fn parse(text: &str) -> FlowRunStatus {
        match text {
            "created" => FlowRunStatus::Created,
            "queued" => FlowRunStatus::Queued,
            "running" => FlowRunStatus::Running,
            "finished" => FlowRunStatus::Finished,
            "timeout" => FlowRunStatus::Timeout,
            "exception" => FlowRunStatus::Exception,
            "cancelled" => FlowRunStatus::Cancelled,
            other => FlowRunStatus::Other(other.to_owned()),
        }
    }

    /// The status as Recrubo writes it.
    pub fn as_str(&self) -> &str {
        match self {
            FlowRunStatus::Created => "created",
            FlowRunStatus::Queued => "queued",
            FlowRunStatus::Running => "running",
            FlowRunStatus::Finished => "finished",
            FlowRunStatus::Timeout => "timeout",
            FlowRunStatus::Exception => "exception",
            FlowRunStatus::Cancelled => "cancelled",
            FlowRunStatus::Other(text) => text,
        }
    }

    /// Whether the run can change no more (inferred: recrubo-api.md §5).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            FlowRunStatus::Finished
                | FlowRunStatus::Timeout
                | FlowRunStatus::Exception
                | FlowRunStatus::Cancelled
        )
    }
}

impl fmt::Display for FlowRunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a FlowGeneration. No failure status is documented (recrubo-api.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowGenerationStatus {
    /// Waiting.
    Queued,
    /// Being generated.
    Processing,
    /// Done; `flowId` is set.
    Finished,
    /// A status this version of flowd does not know.
    Other(String),
}

impl FlowGenerationStatus {
    /// The statuses a rule may name.
    pub const KNOWN: &'static [&'static str] = &["queued", "processing", "finished"];

    /// Parses a status leniently.
    pub fn parse(text: &str) -> FlowGenerationStatus {
        match text {
            "queued" => FlowGenerationStatus::Queued,
            "processing" => FlowGenerationStatus::Processing,
            "finished" => FlowGenerationStatus::Finished,
            other => FlowGenerationStatus::Other(other.to_owned()),
        }
    }

    /// The status as Recrubo writes it.
    pub fn as_str(&self) -> &str {
        match self {
            FlowGenerationStatus::Queued => "queued",
            FlowGenerationStatus::Processing => "processing",
            FlowGenerationStatus::Finished => "finished",
            FlowGenerationStatus::Other(text) => text,
        }
    }
}

impl fmt::Display for FlowGenerationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What flowd follows by status: FlowRuns and FlowGenerations. The JSON:API type strings are
/// read and written here and nowhere else in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FollowedKind {
    /// A FlowRun (`flowRuns`, `/flow-runs`).
    #[serde(rename = "flowRuns")]
    FlowRun,
    /// A FlowGeneration (`flowGenerations`, `/flow-generations`).
    #[serde(rename = "flowGenerations")]
    FlowGeneration,
}

impl FollowedKind {
    /// From a JSON:API type; `None` for resources that are not followed.
    pub fn of(resource_type: &str) -> Option<FollowedKind> {
        match resource_type {
            "flowRuns" => Some(FollowedKind::FlowRun),
            "flowGenerations" => Some(FollowedKind::FlowGeneration),
            _ => None,
        }
    }

    /// The JSON:API type.
    pub fn json_api_type(self) -> &'static str {
        match self {
            FollowedKind::FlowRun => "flowRuns",
            FollowedKind::FlowGeneration => "flowGenerations",
        }
    }

    /// The collection path.
    pub fn collection(self) -> &'static str {
        match self {
            FollowedKind::FlowRun => "flow-runs",
            FollowedKind::FlowGeneration => "flow-generations",
        }
    }

    /// The name templates and conditions read it by (`run`, `generation`).
    pub fn context_key(self) -> &'static str {
        match self {
            FollowedKind::FlowRun => "run",
            FollowedKind::FlowGeneration => "generation",
        }
    }

    /// Whether `status` ends it (nothing follows).
    pub fn is_terminal(self, status: &str) -> bool {
        match self {
            FollowedKind::FlowRun => FlowRunStatus::parse(status).is_terminal(),
            FollowedKind::FlowGeneration => {
                FlowGenerationStatus::parse(status) == FlowGenerationStatus::Finished
            }
        }
    }
}

impl std::fmt::Display for FollowedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json_api_type())
    }
}
