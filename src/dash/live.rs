//! The live stream behind the task list and the task page: server-sent events fed by the
//! node's watch channel, filtered here, and coalesced so that a busy cluster sends a browser a
//! bounded number of bounded messages.
//!
//! Each message is a `tasks` event: a JSON array of the list lines of the tasks that changed
//! (the latest line of each) with the row's HTML. When more tasks changed within one window
//! than a message holds, or the stream fell behind the node's events, a `reset` event tells
//! the page to fetch its list again. A `bye` event says the node is shutting down.
use super::{data, pages, read_on, Dash, Refusal};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How long changes are gathered into one message.
const WINDOW: Duration = Duration::from_millis(100);
/// Tasks one message holds at most; more in one window is a `reset`.
const MAX_ROWS: usize = 200;

#[derive(serde::Deserialize, Default, Clone)]
#[serde(default)]
pub struct LiveFilter {
    pub queue: String,
    pub state: String,
    pub prefix: String,
    /// One task only (its page).
    pub task_id: String,
    /// The first revision to send: the page's revision + 1, so that what is applied between
    /// the page's render and the stream's start is sent too. 0: from now on.
    pub from_revision: u64,
}

#[derive(serde::Serialize)]
struct Change {
    revision: u64,
    kind: &'static str,
    /// Whether the task still matches the filter's state (a list drops it when not).
    matches: bool,
    row: data::TaskRow,
    html: String,
}

fn kind_name(k: crate::state::EventKind) -> &'static str {
    use crate::state::EventKind::*;
    match k {
        Submitted => "submitted",
        Claimed => "claimed",
        Progress => "progress",
        Succeeded => "succeeded",
        Failed => "failed",
        RetryScheduled => "retry_scheduled",
        Cancelled => "cancelled",
        LateReport => "late_report",
    }
}

pub async fn watch(
    State(d): State<Arc<Dash>>,
    h: HeaderMap,
    Query(f): Query<LiveFilter>,
) -> Response {
    match open(&d, &h, f) {
        Ok(r) => r,
        Err(r) => r.into_response(),
    }
}

fn open(d: &Arc<Dash>, h: &HeaderMap, f: LiveFilter) -> Result<Response, Refusal> {
    d.check(h, read_on(&f.queue))?;
    if !f.queue.is_empty() {
        crate::api::validate::queue(&f.queue)?;
    }
    data::check_prefix(&f.prefix).map_err(Refusal::bad)?;
    if !f.task_id.is_empty() {
        crate::api::validate::task_id(&f.task_id)?;
    }
    let state = data::parse_state(&f.state).ok_or_else(|| {
        Refusal::bad(format!(
            "state {:?} is not a task state",
            crate::api::validate::clip(&f.state)
        ))
    })?;
    let slot = d.scheduler.watchers.take()?;
    let (backlog, live) = {
        let ev = d.node.shared.events.lock();
        match ev.watch(f.from_revision) {
            Ok((backlog, rx)) => (Some(backlog), rx),
            // Older than the events this node keeps: the page reloads instead.
            Err(_) => (
                None,
                ev.watch(0)
                    .map(|(_, rx)| rx)
                    .map_err(|e| Refusal::from(tonic::Status::out_of_range(e.to_string())))?,
            ),
        }
    };
    let (tx, rx) = mpsc::channel::<SseEvent>(16);
    let node = d.node.clone();
    tokio::spawn(async move {
        let _slot = slot;
        forward(node, f, state, backlog, live, tx).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let stream = tokio_stream::StreamExt::map(stream, Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}

/// Sends the changes among `backlog` (`None`: it could not be had, a `reset` goes first),
/// then the live ones, a window at a time.
async fn forward(
    node: Arc<crate::node::Node>,
    f: LiveFilter,
    state: Option<crate::state::TaskState>,
    backlog: Option<Vec<Arc<crate::state::Event>>>,
    mut live: broadcast::Receiver<Arc<crate::state::Event>>,
    tx: mpsc::Sender<SseEvent>,
) {
    let mut stop = node.shutdown_signal();
    let wanted = |e: &crate::state::Event| {
        let t = &e.task;
        (f.queue.is_empty() || t.queue() == f.queue)
            && (f.task_id.is_empty() || t.id() == f.task_id)
            && t.id().starts_with(&f.prefix)
    };
    let stall = Duration::from_millis(node.config.limits.stream_stall_ms);
    let add = |batch: &mut BTreeMap<String, Change>, reset: &mut bool, e: &crate::state::Event| {
        if !wanted(e) {
            return;
        }
        if batch.len() == MAX_ROWS && !batch.contains_key(e.task.id()) {
            *reset = true;
            return;
        }
        let row = data::task_row(&e.task);
        let change = Change {
            revision: e.revision,
            kind: kind_name(e.kind),
            matches: state.map_or(true, |s| e.task.state == s),
            html: pages::task_line(&row),
            row,
        };
        batch.insert(e.task.id().to_string(), change);
    };
    // The live stream may repeat some of the backlog's last events: a page shows a change twice
    // at worst, never misses one.
    let mut backlog = Some(backlog);
    loop {
        let mut batch: BTreeMap<String, Change> = BTreeMap::new();
        let mut reset = false;
        match backlog.take() {
            Some(None) => reset = true,
            Some(Some(events)) if !events.is_empty() => {
                for e in &events {
                    add(&mut batch, &mut reset, e);
                }
            }
            _ => {
                // Wait for the first change, then gather the window's.
                let first = tokio::select! {
                    e = live.recv() => e,
                    _ = tx.closed() => return,
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                        let _ = tx.send(SseEvent::default().event("bye").data("the node is shutting down")).await;
                        return;
                    }
                };
                let deadline = tokio::time::Instant::now() + WINDOW;
                let mut next = Some(first);
                while let Some(got) = next.take() {
                    match got {
                        Ok(e) => add(&mut batch, &mut reset, &e),
                        Err(broadcast::error::RecvError::Lagged(_)) => reset = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    next = tokio::time::timeout_at(deadline, live.recv()).await.ok();
                }
            }
        }
        let event = if reset {
            SseEvent::default().event("reset").data("reload the list")
        } else if batch.is_empty() {
            continue;
        } else {
            let changes: Vec<&Change> = batch.values().collect();
            match SseEvent::default().event("tasks").json_data(&changes) {
                Ok(e) => e,
                Err(_) => SseEvent::default().event("reset").data("reload the list"),
            }
        };
        // A browser that stopped reading holds memory: let it go, as a watch does.
        if tokio::time::timeout(stall, tx.send(event))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
    }
}
