//! The one place where internal errors become gRPC statuses, each with a message a person can
//! act on.
use crate::node::NodeError;
use crate::state::Rejection;
use tonic::Status;

pub fn node(e: NodeError) -> Status {
    match e {
        NodeError::Raft(m) => Status::unavailable(format!("raft refused the request: {m}; retry")),
        e @ NodeError::Overloaded(_) => Status::resource_exhausted(e.to_string()),
        e => Status::unavailable(e.to_string()),
    }
}

pub fn rejection(r: &Rejection) -> Status {
    let msg = r.to_string();
    match r {
        Rejection::TaskNotFound { .. } => Status::not_found(msg),
        Rejection::AlreadyExists { .. } => Status::already_exists(msg),
        Rejection::LeaseLost { .. } => Status::failed_precondition(format!("{msg}; stop the work")),
        Rejection::TokenNotOfTask { .. } => {
            Status::failed_precondition(format!("{msg}: report with the token your claim returned"))
        }
        Rejection::Malformed { .. } => Status::invalid_argument(msg),
        Rejection::Terminal { .. }
        | Rejection::NotClaimable { .. }
        | Rejection::ClaimKeyUsed { .. } => Status::failed_precondition(msg),
    }
}

pub fn unexpected(what: &str, r: &crate::state::Response) -> Status {
    Status::internal(format!("unexpected state machine answer to {what}: {r:?}"))
}
