//! The Scheduler service: submit, read, list, cancel and watch tasks.
use super::{convert, error, read, validate};
use crate::auth::{authorize, Need};
use crate::node::Node;
use crate::proto::v1::{self as pb, scheduler_server::Scheduler};
use crate::state::{Command, Response as SmResponse, TaskSpec};
use crate::store::WatchError;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct SchedulerSvc {
    pub node: Arc<Node>,
    pub auth: Option<Arc<crate::auth::Auth>>,
    pub watchers: Arc<validate::StreamSlots>,
}

/// What a list or watch on `queue` needs (empty: every queue).
fn read_on(queue: &str) -> Need<'_> {
    Need::Read((!queue.is_empty()).then_some(queue))
}

/// A task id for a submit that named none (the Rust client chooses one itself, so that its
/// retries stay idempotent).
pub(crate) fn generate_id() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TaskEvent, Status>> + Send>>;

impl SchedulerSvc {
    /// A change by id (cancel, retry) needs the scheduler role on the task's queue, as the
    /// leader knows it (a grant may cover some queues only).
    async fn authorize_on_queue<T>(&self, req: &Request<T>, id: &str) -> Result<(), Status> {
        if self.auth.is_none() {
            return Ok(());
        }
        let (queue, _) = read(&self.node, 0, |s| s.task(id).map(|t| t.queue().to_string())).await?;
        match queue {
            Some(q) => authorize(self.auth.as_deref(), req, Need::Schedule(&q)),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerSvc {
    async fn submit_task(
        &self,
        req: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        authorize(
            self.auth.as_deref(),
            &req,
            Need::Schedule(&req.get_ref().queue),
        )?;
        // Kept with the task: the worker that runs it continues this trace.
        let trace_parent = crate::trace::incoming_traceparent(req.metadata());
        let r = req.into_inner();
        let l = &self.node.config.limits;
        validate::queue(&r.queue)?;
        let id = if r.id.is_empty() { generate_id() } else { r.id };
        validate::task_id(&id)?;
        validate::bytes("payload", r.payload.len(), l.max_payload_bytes)?;
        let max_attempts = if r.max_attempts == 0 {
            l.default_max_attempts
        } else {
            r.max_attempts
        };
        if max_attempts > l.max_attempts_cap {
            return Err(Status::invalid_argument(format!(
                "max_attempts {max_attempts} is above the limit {}: lower it",
                l.max_attempts_cap
            )));
        }
        let ttl = validate::ttl(l, r.lease_ttl_ms, l.default_ttl_ms)?;
        let retry = r.retry.unwrap_or_default();
        let initial = if retry.initial_backoff_ms == 0 {
            l.default_initial_backoff_ms
        } else {
            retry.initial_backoff_ms
        };
        let max = if retry.max_backoff_ms == 0 {
            l.default_max_backoff_ms.max(initial)
        } else {
            retry.max_backoff_ms
        };
        if initial > max {
            return Err(Status::invalid_argument(format!("retry.initial_backoff_ms {initial} exceeds retry.max_backoff_ms {max}: lower it or raise the maximum")));
        }
        if max > l.max_backoff_cap_ms {
            return Err(Status::invalid_argument(format!(
                "retry back-off {max} ms is above the limit {} ms: lower it",
                l.max_backoff_cap_ms
            )));
        }
        let spec = TaskSpec {
            id: id.into(),
            queue: r.queue.into(),
            payload: r.payload,
            max_attempts,
            lease_ttl_ms: ttl,
            initial_backoff_ms: initial,
            max_backoff_ms: max,
        };
        let cmd = match trace_parent {
            Some(trace_parent) => Command::SubmitTraced { spec, trace_parent },
            None => Command::Submit(spec),
        };
        match self.node.propose(cmd).await.map_err(error::node)? {
            SmResponse::Submitted { task, created } => Ok(Response::new(pb::SubmitTaskResponse {
                task: Some(convert::task_to_pb(&task, None)),
                created,
            })),
            SmResponse::Rejected(rej) => Err(error::rejection(&rej)),
            other => Err(error::unexpected("submit", &other)),
        }
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::GetById)?;
        let r = req.get_ref();
        validate::task_id(&r.id)?;
        let (task, revision) = read(&self.node, r.consistency, |s| {
            s.task(&r.id).map(|t| convert::task_in(s, t))
        })
        .await?;
        if let Some(t) = &task {
            authorize(self.auth.as_deref(), &req, Need::Read(Some(&t.queue)))?;
        }
        match task {
            Some(t) => Ok(Response::new(pb::GetTaskResponse {
                task: Some(t),
                revision,
            })),
            None => Err(Status::not_found(format!("task {:?} not found", r.id))),
        }
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        authorize(self.auth.as_deref(), &req, read_on(&req.get_ref().queue))?;
        let r = req.into_inner();
        if !r.queue.is_empty() {
            validate::queue(&r.queue)?;
        }
        let state = pb::TaskState::try_from(r.state).map_err(|_| {
            Status::invalid_argument(format!("state {} is not a TaskState", r.state))
        })?;
        let state = convert::state_from_pb(state);
        if r.page_size > validate::MAX_PAGE_SIZE {
            return Err(Status::invalid_argument(format!(
                "page_size {} is above {}: lower it",
                r.page_size,
                validate::MAX_PAGE_SIZE
            )));
        }
        let limit = if r.page_size == 0 {
            100
        } else {
            r.page_size as usize
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(validate::decode_page(&r.page_token)?)
        };
        let queue = (!r.queue.is_empty()).then_some(r.queue.as_str());
        let max_bytes = self.node.config.limits.max_page_bytes;
        let ((tasks, next), revision) = read(&self.node, r.consistency, |s| {
            let (page, mut next) = s.list(queue, state, after.as_ref(), limit);
            // Bounded in bytes as well as in count: a page of large tasks ends early, and the
            // next page starts after its last task.
            let mut tasks = Vec::with_capacity(page.len());
            let mut bytes = 0;
            let total = page.len();
            for t in page {
                let pb_task = convert::task_in(s, t);
                bytes += prost::Message::encoded_len(&pb_task);
                tasks.push(pb_task);
                if bytes >= max_bytes && tasks.len() < total {
                    next = Some((t.queue().to_string(), t.state, t.id().to_string()));
                    break;
                }
            }
            (tasks, next)
        })
        .await?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks,
            next_page_token: next.as_ref().map(validate::encode_page).unwrap_or_default(),
            revision,
        }))
    }

    async fn cancel_task(
        &self,
        req: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::CancelById)?;
        validate::task_id(&req.get_ref().id)?;
        self.authorize_on_queue(&req, &req.get_ref().id).await?;
        let r = req.into_inner();
        validate::task_id(&r.id)?;
        validate::bytes("reason", r.reason.len(), validate::MAX_ERROR_LEN)?;
        match self
            .node
            .propose(Command::Cancel {
                task_id: r.id,
                reason: r.reason,
            })
            .await
            .map_err(error::node)?
        {
            SmResponse::Cancelled { task } => Ok(Response::new(pb::CancelTaskResponse {
                task: Some(convert::task_to_pb(&task, None)),
            })),
            SmResponse::Rejected(rej) => Err(error::rejection(&rej)),
            other => Err(error::unexpected("cancel", &other)),
        }
    }

    async fn retry_task(
        &self,
        req: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::RetryTaskResponse>, Status> {
        authorize(self.auth.as_deref(), &req, Need::CancelById)?;
        let id = &req.get_ref().id;
        validate::task_id(id)?;
        self.authorize_on_queue(&req, id).await?;
        let r = req.into_inner();
        validate::bytes("reason", r.reason.len(), validate::MAX_ERROR_LEN)?;
        match self
            .node
            .propose(Command::Retry {
                task_id: r.id,
                reason: r.reason,
            })
            .await
            .map_err(error::node)?
        {
            SmResponse::Retried { task } => Ok(Response::new(pb::RetryTaskResponse {
                task: Some(convert::task_to_pb(&task, None)),
            })),
            SmResponse::Rejected(rej) => Err(error::rejection(&rej)),
            other => Err(error::unexpected("retry", &other)),
        }
    }

    type WatchTasksStream = WatchStream;

    async fn watch_tasks(
        &self,
        req: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        authorize(self.auth.as_deref(), &req, read_on(&req.get_ref().queue))?;
        let r = req.into_inner();
        if !r.queue.is_empty() {
            validate::queue(&r.queue)?;
        }
        let kinds = validate::event_kinds(&r.kinds)?;
        let slot = self.watchers.take()?;
        let stall = std::time::Duration::from_millis(self.node.config.limits.stream_stall_ms);
        let compacted = |e: WatchError| Status::out_of_range(e.to_string());
        let (backlog, live, head) = {
            let ev = self.node.shared.events.lock();
            let (b, l) = ev.watch(r.from_revision).map_err(compacted)?;
            (b, l, ev.head())
        };
        let start = if r.from_revision == 0 {
            head + 1
        } else {
            r.from_revision
        };
        let (tx, rx) = mpsc::channel(256);
        let node = self.node.clone();
        let mut stop = node.shutdown_signal();
        tokio::spawn(async move {
            let _slot = slot;
            let wanted = |e: &crate::state::Event| {
                (r.queue.is_empty() || *e.task.spec.queue == *r.queue)
                    && (r.task_id.is_empty() || *e.task.spec.id == *r.task_id)
                    && (kinds.is_empty() || kinds.contains(&convert::kind_to_pb(e.kind)))
            };
            // The last revision passed on, and how many of its events: a resume after falling
            // behind re-reads that revision and skips what was passed on already.
            let (mut last_rev, mut seen_in_last, mut skip) = (0u64, 0usize, 0usize);
            let (mut pending, mut live) = (backlog, live);
            loop {
                for e in pending.drain(..) {
                    if skip > 0 && e.revision == last_rev {
                        skip -= 1;
                        continue;
                    }
                    skip = 0;
                    if e.revision == last_rev {
                        seen_in_last += 1;
                    } else {
                        (last_rev, seen_in_last) = (e.revision, 1);
                    }
                    if !wanted(&e) {
                        continue;
                    }
                    match tokio::time::timeout(stall, tx.send(Ok(convert::event_to_pb(&e)))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            // The client has not read for `stall` with events waiting: it is
                            // gone or stuck, and holds memory. It can resume from a revision.
                            tracing::info!(
                                stall_ms = stall.as_millis() as u64,
                                "ending a watch whose client stopped reading"
                            );
                            return;
                        }
                    }
                }
                let next = tokio::select! {
                    n = live.recv() => n,
                    // The client went away while nothing happened: free its slot now.
                    _ = tx.closed() => return,
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down: resume the watch on another node"))).await;
                        return;
                    }
                };
                match next {
                    Ok(e) => pending.push(e),
                    Err(broadcast::error::RecvError::Closed) => return,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(
                            missed = n,
                            "watcher fell behind the live channel; resuming from retained events"
                        );
                        let from = if last_rev > 0 { last_rev } else { start };
                        let res = node.shared.events.lock().watch(from);
                        match res {
                            Ok((b, l)) => {
                                (pending, live, skip) = (b, l, seen_in_last);
                            }
                            Err(e) => {
                                let _ = tx.send(Err(compacted(e))).await;
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
