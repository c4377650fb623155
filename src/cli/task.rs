//! `leasekeeper task`: submit, read, list, cancel and watch tasks.
use super::{output, Conn};
use crate::proto::v1 as pb;
use crate::server::BoxError;
use clap::Subcommand;
use tokio_stream::StreamExt;

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Submit a task (idempotent by id).
    Submit {
        /// The queue the task goes to.
        #[arg(long)]
        queue: String,
        /// Idempotency key; generated if omitted.
        #[arg(long, default_value = "")]
        id: String,
        /// The task's payload (text; at most 1 MiB by default).
        #[arg(long, default_value = "")]
        payload: String,
        /// Attempts before it fails for good (default 0: the cluster's, 3).
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        /// Lease TTL of each attempt, in ms (default 0: the cluster's, 30 000).
        #[arg(long, default_value_t = 0)]
        ttl_ms: u64,
    },
    /// Read one task (linearizable unless --stale).
    Get {
        id: String,
        /// Read this node's copy without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// List tasks, by queue and state.
    List {
        /// Only this queue (default: every queue).
        #[arg(long, default_value = "")]
        queue: String,
        /// pending, running, succeeded, failed or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Tasks shown at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Cancel a task that has not finished.
    Cancel {
        id: String,
        /// Why, recorded with the task.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Send a FAILED or CANCELLED task back to PENDING, with a new budget of attempts.
    Retry {
        id: String,
        /// Why, recorded with the task while it waits.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Every change, in revision order, then live.
    Watch {
        /// First revision to show (0 = only new changes).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only this queue (default: every queue).
        #[arg(long, default_value = "")]
        queue: String,
        /// Only this task (default: every task).
        #[arg(long, default_value = "")]
        task_id: String,
        /// Only these kinds of event, comma separated (e.g. succeeded,failed,cancelled); every
        /// kind when not given.
        #[arg(long = "kind", value_delimiter = ',', value_parser = parse_event_kind)]
        kinds: Vec<pb::EventKind>,
    },
}

impl TaskCmd {
    /// The command's name, for its span.
    pub fn name(&self) -> &'static str {
        match self {
            TaskCmd::Submit { .. } => "task submit",
            TaskCmd::Get { .. } => "task get",
            TaskCmd::List { .. } => "task list",
            TaskCmd::Cancel { .. } => "task cancel",
            TaskCmd::Retry { .. } => "task retry",
            TaskCmd::Watch { .. } => "task watch",
        }
    }
}

/// `succeeded` / `SUCCEEDED` / `EVENT_KIND_SUCCEEDED` → the event kind.
fn parse_event_kind(s: &str) -> Result<pb::EventKind, String> {
    let upper = s.trim().to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with("EVENT_KIND_") {
        upper
    } else {
        format!("EVENT_KIND_{upper}")
    };
    match pb::EventKind::from_str_name(&name) {
        Some(k) if k != pb::EventKind::Unspecified => Ok(k),
        _ => Err(format!(
            "{s:?} is not an event kind: use submitted, claimed, progress, succeeded, failed, \
             retry_scheduled, cancelled or late_report"
        )),
    }
}

fn parse_state(s: &str) -> Result<pb::TaskState, BoxError> {
    pb::TaskState::from_str_name(&format!("TASK_STATE_{}", s.to_ascii_uppercase())).ok_or_else(
        || {
            format!("state {s:?} is not one of pending, running, succeeded, failed, cancelled")
                .into()
        },
    )
}

pub async fn task(cmd: TaskCmd, conn: Conn) -> Result<(), BoxError> {
    let c = conn.client()?;
    match cmd {
        TaskCmd::Submit {
            queue,
            id,
            payload,
            max_attempts,
            ttl_ms,
        } => {
            let r = c
                .submit(pb::SubmitTaskRequest {
                    id,
                    queue,
                    payload: payload.into_bytes(),
                    max_attempts,
                    lease_ttl_ms: ttl_ms,
                    retry: None,
                })
                .await?;
            output::task(r.task.as_ref().expect("task"), conn.json);
        }
        TaskCmd::Get { id, stale } => {
            let consistency = if stale {
                pb::ReadConsistency::Stale
            } else {
                pb::ReadConsistency::Linearizable
            };
            output::task(&c.get_with(&id, consistency).await?, conn.json);
        }
        TaskCmd::List {
            queue,
            state,
            limit,
        } => {
            let state = match state {
                Some(s) => parse_state(&s)? as i32,
                None => 0,
            };
            let mut page_token = String::new();
            let mut left = limit as usize;
            let mut all = Vec::new();
            loop {
                let size = left.min(1000) as u32;
                let r = c
                    .list(pb::ListTasksRequest {
                        queue: queue.clone(),
                        state,
                        page_size: size,
                        page_token,
                        consistency: 0,
                    })
                    .await?;
                left -= r.tasks.len();
                all.extend(r.tasks);
                if r.next_page_token.is_empty() || left == 0 {
                    break;
                }
                page_token = r.next_page_token;
            }
            output::tasks(&all, conn.json);
        }
        TaskCmd::Cancel { id, reason } => output::task(&c.cancel(&id, &reason).await?, conn.json),
        TaskCmd::Retry { id, reason } => output::task(&c.retry(&id, &reason).await?, conn.json),
        TaskCmd::Watch {
            from,
            queue,
            task_id,
            kinds,
        } => {
            let mut s = c
                .watch(pb::WatchTasksRequest {
                    from_revision: from,
                    queue,
                    task_id,
                    kinds: kinds.into_iter().map(|k| k as i32).collect(),
                })
                .await?;
            while let Some(e) = s.next().await {
                output::event(&e?, conn.json);
            }
        }
    }
    Ok(())
}
