//! What a worker reports for an attempt: the types the journal stores and the outbox sends.
use serde::{Deserialize, Serialize};

/// What a worker reports for one attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success {
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    Failure {
        exit_code: i32,
        error: String,
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
    },
    /// Give the task back without counting an attempt against it (e.g. the worker is shutting
    /// down before the work started or could finish).
    Release { reason: String },
}

/// One final report, as journaled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub task_id: String,
    pub lease_token: u64,
    /// The lease's secret, so that a replayed report still proves itself.
    #[serde(with = "serde_bytes")]
    pub lease_secret: Vec<u8>,
    pub outcome: Outcome,
}
