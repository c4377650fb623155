//! What the dashboard shows, as JSON-ready values read from this node's applied state (no read
//! barrier: the pages keep answering while the cluster has no leader) and from the members'
//! status. Every list is bounded here, whatever the state holds.
use crate::node::history::{LeaderChange, Throughput};
use crate::node::Node;
use crate::proto::v1 as pb;
use crate::state::{AttemptOutcome, AttemptRecord, Task, TaskState, Token};
use crate::store::{Verdict, VerdictKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// Tasks in one page of the list, at most.
pub const MAX_TASKS_PAGE: usize = 200;
/// Tasks looked at for one page of an id-prefix search that also filters by queue or state.
pub const MAX_SCAN: usize = 20_000;
/// Queues in one answer, at most.
pub const MAX_QUEUES: usize = 200;
/// Leases in one answer, at most.
pub const MAX_LEASES: usize = 500;
/// Bytes of a payload, progress or result shown (the JSON says how large the whole is).
pub const MAX_SHOWN_BYTES: usize = 4096;

#[derive(Serialize)]
pub struct MemberView {
    pub node_id: u64,
    pub voter: bool,
    pub reachable: bool,
    pub role: String,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// The commit index, as the leader reports it (0 on other members).
    pub commit_index: u64,
    pub snapshot_index: u64,
    pub addr: String,
    pub peer_addr: String,
    /// The member's dashboard, if it has an HTTP listener.
    pub http_addr: String,
    pub clock_off: bool,
    /// (peer, its clock rate against this member's), once estimated.
    pub peer_clock_rates: Vec<(u64, f64)>,
    pub live_leases: u64,
    pub tasks: u64,
}

#[derive(Serialize)]
pub struct ClusterView {
    /// The node that answered.
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub applied_index: u64,
    pub now_unix_ms: u64,
    pub members: Vec<MemberView>,
    /// Leader changes this node saw in the last hour, newest first.
    pub leader_changes: Vec<LeaderChange>,
}

pub fn member_view(m: &pb::Member) -> MemberView {
    let s = m.status.clone().unwrap_or_default();
    MemberView {
        node_id: m.node_id,
        voter: m.voter,
        reachable: m.reachable,
        role: if m.reachable {
            s.role
        } else {
            "unreachable".into()
        },
        term: s.term,
        last_log_index: s.last_log_index,
        applied_index: s.applied_index,
        commit_index: s.commit_index,
        snapshot_index: s.snapshot_index,
        addr: s.addr,
        peer_addr: m.peer_addr.clone(),
        http_addr: s.http_addr,
        clock_off: s.clock_off,
        peer_clock_rates: s
            .peer_clocks
            .iter()
            .filter(|p| p.rate > 0.0)
            .map(|p| (p.node_id, p.rate))
            .collect(),
        live_leases: s.live_leases,
        tasks: s.tasks,
    }
}

pub fn cluster(node: &Node, status: &pb::ClusterStatusResponse) -> ClusterView {
    let now = node.clock.unix_ms();
    let m = node.metrics();
    ClusterView {
        node_id: node.id,
        leader_id: m.current_leader,
        term: m.current_term,
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        now_unix_ms: now,
        members: status.members.iter().map(member_view).collect(),
        leader_changes: node.history.leader_changes(now),
    }
}

/// A latency chart: counts per bucket (bucket i holds values up to `bounds_ms[i]`, the last
/// one everything above), with estimates of the median and the 99th percentile.
#[derive(Serialize, Default, Clone)]
pub struct Chart {
    pub bounds_ms: Vec<u64>,
    pub counts: Vec<u64>,
    pub total: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

impl Chart {
    pub fn new(counts: Vec<u64>) -> Chart {
        let n = crate::metrics::CHART_BUCKETS;
        let bounds_ms: Vec<u64> = (0..n - 1).map(|i| 1u64 << i).collect();
        let total = counts.iter().sum();
        let quantile = |q: f64| {
            let want = (total as f64 * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return bounds_ms
                        .get(i)
                        .copied()
                        .or(bounds_ms.last().map(|b| b * 2));
                }
            }
            None
        };
        let (p50_ms, p99_ms) = if total == 0 {
            (None, None)
        } else {
            (quantile(0.5), quantile(0.99))
        };
        Chart {
            bounds_ms,
            counts,
            total,
            p50_ms,
            p99_ms,
        }
    }
}

#[derive(Serialize)]
pub struct QueueView {
    pub queue: String,
    /// Tasks per state: pending, running, succeeded, failed, cancelled.
    pub counts: BTreeMap<&'static str, u64>,
    pub live_leases: u64,
    pub throughput: Throughput,
    /// Time between committed renewals of one lease, as this node applied them.
    pub heartbeat_interval: Chart,
    /// Process exit to final report committed, summed over the members that answered.
    pub report_latency: Chart,
}

#[derive(Serialize)]
pub struct QueuesView {
    pub queues: Vec<QueueView>,
    /// Queues after the last one shown (the answer holds at most [`MAX_QUEUES`]).
    pub more: usize,
}

pub fn queues(node: &Node, status: &pb::ClusterStatusResponse) -> QueuesView {
    let (mut rows, more) = {
        let a = node.shared.read();
        let s = &a.state;
        let mut leases: BTreeMap<String, u64> = BTreeMap::new();
        for (_, q) in s.leases_with_queues() {
            *leases.entry(q.to_string()).or_default() += 1;
        }
        let all = s.counts_by_queue();
        let mut rows = Vec::new();
        let mut more = 0;
        for (q, c) in all {
            if rows.len() == MAX_QUEUES {
                more += 1;
                continue;
            }
            let counts = TaskState::ALL
                .iter()
                .zip(c.iter())
                .map(|(st, n)| (state_name(*st), *n))
                .collect();
            rows.push(QueueView {
                queue: q.to_string(),
                counts,
                live_leases: leases.get(&**q).copied().unwrap_or(0),
                throughput: Throughput::default(),
                heartbeat_interval: Chart::default(),
                report_latency: Chart::default(),
            });
        }
        (rows, more)
    };
    let rates = node.history.throughput();
    let metrics: BTreeMap<String, _> = node
        .shared
        .metrics
        .queues()
        .into_iter()
        .map(|q| (q.label.clone(), q))
        .collect();
    let mut reports: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in &status.members {
        for h in m.status.iter().flat_map(|s| &s.report_latency) {
            let sum = reports
                .entry(&h.queue)
                .or_insert_with(|| vec![0; crate::metrics::CHART_BUCKETS]);
            for (a, b) in sum.iter_mut().zip(&h.counts) {
                *a += b;
            }
        }
    }
    for r in &mut rows {
        if let Some(t) = rates.get(&r.queue) {
            r.throughput = t.clone();
        }
        if let Some(m) = metrics.get(&r.queue) {
            r.heartbeat_interval = Chart::new(m.heartbeat_chart.counts());
        }
        if let Some(c) = reports.get(r.queue.as_str()) {
            r.report_latency = Chart::new(c.clone());
        }
    }
    QueuesView { queues: rows, more }
}

pub fn state_name(s: TaskState) -> &'static str {
    match s {
        TaskState::Pending => "pending",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

pub fn parse_state(s: &str) -> Option<Option<TaskState>> {
    match s.to_ascii_lowercase().as_str() {
        "" | "any" => Some(None),
        "pending" => Some(Some(TaskState::Pending)),
        "running" => Some(Some(TaskState::Running)),
        "succeeded" => Some(Some(TaskState::Succeeded)),
        "failed" => Some(Some(TaskState::Failed)),
        "cancelled" => Some(Some(TaskState::Cancelled)),
        _ => None,
    }
}

/// One line of the task list.
#[derive(Serialize, Clone)]
pub struct TaskRow {
    pub id: String,
    pub queue: String,
    pub state: &'static str,
    pub attempt: u32,
    pub failures: u32,
    pub max_attempts: u32,
    pub created_at_unix_ms: u64,
    pub updated_at_unix_ms: u64,
    pub updated_rev: u64,
    /// The worker of the live lease, while RUNNING.
    pub worker_id: Option<String>,
    /// The error, cut to 200 characters.
    pub error: String,
    /// An attempt of it reported success after its lease had ended, and the task took it.
    pub late_success: bool,
}

pub fn task_row(t: &Task) -> TaskRow {
    TaskRow {
        id: t.id().to_string(),
        queue: t.queue().to_string(),
        state: state_name(t.state),
        attempt: t.attempt,
        failures: t.failures,
        max_attempts: t.spec.max_attempts,
        created_at_unix_ms: t.created_at_unix_ms,
        updated_at_unix_ms: t.updated_at_unix_ms,
        updated_rev: t.updated_rev,
        worker_id: t
            .lease
            .and_then(|tok| t.record(tok))
            .map(|r| r.worker_id.clone()),
        error: cut(&t.error, 200),
        late_success: t
            .history
            .iter()
            .any(|r| r.late && r.outcome == AttemptOutcome::Succeeded),
    }
}

fn cut(s: &str, chars: usize) -> String {
    match s.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A list filter, as the page and the JSON endpoint take it.
#[derive(Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct Filter {
    pub queue: String,
    pub state: String,
    /// Tasks whose id starts with this.
    pub prefix: String,
    /// Where the page starts: the `next` of the page before.
    pub after: String,
    pub limit: Option<usize>,
}

#[derive(Serialize)]
pub struct TaskPage {
    pub tasks: Vec<TaskRow>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next: Option<String>,
    /// The revision the page reflects (this node's applied state).
    pub revision: u64,
}

/// A page of tasks. Without a prefix, in (queue, state, id) order from the listing index;
/// with one, in id order from the prefix, looking at no more than [`MAX_SCAN`] tasks (the
/// page then ends early, and `next` continues the search).
pub fn tasks(node: &Node, f: &Filter) -> Result<TaskPage, String> {
    let state = parse_state(&f.state).ok_or_else(|| {
        format!(
            "state {:?} is not one of pending, running, succeeded, failed, cancelled",
            crate::api::validate::clip(&f.state)
        )
    })?;
    if !f.queue.is_empty() {
        crate::api::validate::queue(&f.queue).map_err(|s| s.message().to_string())?;
    }
    check_prefix(&f.prefix)?;
    if !f.prefix.is_empty() && f.after.len() > crate::api::validate::MAX_ID_LEN {
        return Err("after is not a task id this node returned: pass next unchanged".into());
    }
    let limit = f.limit.unwrap_or(50).clamp(1, MAX_TASKS_PAGE);
    let queue = (!f.queue.is_empty()).then_some(f.queue.as_str());
    let a = node.shared.read();
    let s = &a.state;
    let revision = s.last_revision();
    if f.prefix.is_empty() {
        let after = if f.after.is_empty() {
            None
        } else {
            Some(crate::api::validate::decode_page(&f.after).map_err(|s| s.message().to_string())?)
        };
        let (page, next) = s.list(queue, state, after.as_ref(), limit);
        return Ok(TaskPage {
            tasks: page.into_iter().map(task_row).collect(),
            next: next.as_ref().map(crate::api::validate::encode_page),
            revision,
        });
    }
    let start = if f.after.is_empty() {
        f.prefix.as_str()
    } else {
        f.after.as_str()
    };
    // The page continues strictly after `after`: the last task it looked at, shown or not.
    let mut rows = Vec::new();
    let (mut looked, mut last_seen, mut next) = (0, None, None);
    for t in s
        .tasks_from(start)
        .take_while(|t| t.id().starts_with(&f.prefix))
    {
        if !f.after.is_empty() && t.id() == f.after {
            continue;
        }
        if rows.len() == limit || looked == MAX_SCAN {
            next = last_seen;
            break;
        }
        looked += 1;
        last_seen = Some(t.id().to_string());
        if queue.is_some_and(|q| t.queue() != q) || state.is_some_and(|st| t.state != st) {
            continue;
        }
        rows.push(task_row(t));
    }
    Ok(TaskPage {
        tasks: rows,
        next,
        revision,
    })
}

/// An id prefix is at most a task id long.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let max = crate::api::validate::MAX_ID_LEN;
    if prefix.len() > max {
        return Err(format!(
            "prefix is {} bytes, a task id at most {max}: shorten it",
            prefix.len()
        ));
    }
    Ok(())
}

/// Bytes as shown: text when they are UTF-8, hex otherwise; at most [`MAX_SHOWN_BYTES`].
#[derive(Serialize)]
pub struct Bytes {
    pub size: usize,
    pub text: Option<String>,
    pub hex: Option<String>,
    pub truncated: bool,
}

pub fn bytes(b: &[u8]) -> Bytes {
    let shown = &b[..b.len().min(MAX_SHOWN_BYTES)];
    let text = match std::str::from_utf8(shown) {
        Ok(t) => Some(t.to_string()),
        // Cut inside a character: keep what decodes.
        Err(e) if b.len() > MAX_SHOWN_BYTES && e.error_len().is_none() => {
            Some(String::from_utf8_lossy(&shown[..e.valid_up_to()]).into_owned())
        }
        Err(_) => None,
    };
    let hex = text.is_none().then(|| {
        shown
            .iter()
            .take(MAX_SHOWN_BYTES / 4)
            .map(|x| format!("{x:02x}"))
            .collect()
    });
    Bytes {
        size: b.len(),
        truncated: b.len() > shown.len() || (hex.is_some() && shown.len() > MAX_SHOWN_BYTES / 4),
        text,
        hex,
    }
}

#[derive(Serialize)]
pub struct VoterSilence {
    pub node_id: u64,
    pub silence_ms: u64,
}

#[derive(Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub worker_id: String,
    pub lease_token: Token,
    pub outcome: &'static str,
    pub exit_code: Option<i32>,
    pub error: String,
    pub started_rev: u64,
    pub ended_rev: u64,
    /// Renewals committed while its lease lived (the live lease's so far).
    pub renewals: u64,
    /// It reported after its lease had ended.
    pub late: bool,
    /// The lease expired (even if a late success was accepted afterwards).
    pub expired: bool,
    pub expiry_voters: Vec<u64>,
    pub expiry_evidence: Vec<VoterSilence>,
    /// For a late success: the lease of the newer attempt it stopped.
    pub superseded: Option<Token>,
    /// For an attempt stopped by a late success: the lease whose report stopped it.
    pub superseded_by: Option<Token>,
}

pub fn outcome_name(o: AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Running => "running",
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Expired => "expired",
        AttemptOutcome::Released => "released",
        AttemptOutcome::Cancelled => "cancelled",
    }
}

fn attempt_view(t: &Task, r: &AttemptRecord, live_renewals: Option<u64>) -> AttemptView {
    let expired = r.outcome == AttemptOutcome::Expired || !r.expiry_voters.is_empty();
    // A late success ends the attempt running at the time, noting the token that stopped it.
    let superseded_by = (r.outcome == AttemptOutcome::Cancelled)
        .then(|| {
            r.error
                .strip_prefix("superseded: the attempt holding lease ")
        })
        .flatten()
        .and_then(|rest| rest.split(' ').next())
        .and_then(|tok| tok.parse().ok());
    let superseded = (r.late && r.outcome == AttemptOutcome::Succeeded)
        .then(|| {
            t.history
                .iter()
                .find(|o| {
                    o.outcome == AttemptOutcome::Cancelled
                        && o.error
                            == format!(
                                "superseded: the attempt holding lease {} reported success",
                                r.lease_token
                            )
                })
                .map(|o| o.lease_token)
        })
        .flatten();
    AttemptView {
        attempt: r.attempt,
        worker_id: r.worker_id.clone(),
        lease_token: r.lease_token,
        outcome: outcome_name(r.outcome),
        exit_code: r.exit_code,
        error: cut(&r.error, 2000),
        started_rev: r.started_rev,
        ended_rev: r.ended_rev,
        renewals: live_renewals.unwrap_or(r.renewals),
        late: r.late,
        expired,
        expiry_voters: r.expiry_voters.clone(),
        expiry_evidence: r
            .expiry_silence_ms
            .iter()
            .map(|&(node_id, silence_ms)| VoterSilence {
                node_id,
                silence_ms,
            })
            .collect(),
        superseded,
        superseded_by,
    }
}

#[derive(Serialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub row: TaskRow,
    pub payload: Bytes,
    pub progress: Bytes,
    pub result: Bytes,
    pub exit_code: Option<i32>,
    /// The whole error (cut to 2000 characters).
    pub error_full: String,
    pub lease_ttl_ms: u64,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub not_before_unix_ms: u64,
    pub created_rev: u64,
    /// The live lease, while RUNNING.
    pub lease: Option<LeaseView>,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
    pub trace_id: Option<String>,
    /// The trace in the configured trace UI (`--trace-url`).
    pub trace_url: Option<String>,
    pub revision: u64,
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

pub fn task(node: &Node, id: &str, trace_url: Option<&str>) -> Option<TaskDetail> {
    let (mut d, token) = {
        let a = node.shared.read();
        let s = &a.state;
        let t = s.task(id)?;
        let lease = t.lease.and_then(|tok| s.lease(tok));
        let attempts = t
            .history
            .iter()
            .map(|r| {
                let renewals = lease
                    .filter(|l| l.token == r.lease_token)
                    .map(|l| l.renewals);
                attempt_view(t, r, renewals)
            })
            .collect();
        let trace_id = trace_id(&t.trace_parent);
        let d = TaskDetail {
            row: task_row(t),
            payload: bytes(&t.spec.payload),
            progress: bytes(&t.progress),
            result: bytes(&t.result),
            exit_code: t.exit_code,
            error_full: cut(&t.error, 2000),
            lease_ttl_ms: t.spec.lease_ttl_ms,
            initial_backoff_ms: t.spec.initial_backoff_ms,
            max_backoff_ms: t.spec.max_backoff_ms,
            not_before_unix_ms: t.not_before_unix_ms,
            created_rev: t.created_rev,
            lease: lease.map(|l| LeaseView::new(l, t.queue(), None)),
            attempts,
            trace_url: match (&trace_id, trace_url) {
                (Some(id), Some(u)) => Some(u.replace("{trace_id}", id)),
                _ => None,
            },
            trace_id,
            revision: s.last_revision(),
        };
        (d, t.lease)
    };
    if let (Some(l), Some(tok)) = (&mut d.lease, token) {
        l.silence_ms = silence(node, tok);
    }
    Some(d)
}

fn silence(node: &Node, token: Token) -> Option<u64> {
    let now = node.clock.monotonic_ms();
    node.shared.timers.lock().silence_ms(token, now)
}

#[derive(Serialize)]
pub struct LeaseView {
    pub token: Token,
    pub task_id: String,
    pub queue: String,
    pub worker_id: String,
    pub attempt: u32,
    pub ttl_ms: u64,
    pub renewals: u64,
    /// How long this node has not heard the lease (its claim or last renewal), on its own
    /// monotonic clock; the lease expires once a majority of voters have each been silent
    /// for `ttl_ms`.
    pub silence_ms: Option<u64>,
    /// Expiry votes cast against it since its last renewal.
    pub votes: Vec<u64>,
}

impl LeaseView {
    fn new(l: &crate::state::Lease, queue: &str, silence_ms: Option<u64>) -> LeaseView {
        LeaseView {
            token: l.token,
            task_id: l.task_id.to_string(),
            queue: queue.to_string(),
            worker_id: l.worker_id.clone(),
            attempt: l.attempt,
            ttl_ms: l.ttl_ms,
            renewals: l.renewals,
            silence_ms,
            votes: l.votes.iter().copied().collect(),
        }
    }
}

#[derive(Serialize)]
pub struct LeasesView {
    /// The leases closest to lapsing first (silence against TTL).
    pub leases: Vec<LeaseView>,
    /// Live leases in all (of the queue, when one was asked for).
    pub total: usize,
}

/// The live leases (of `queue`, or all), the ones closest to lapsing first, at most `limit`.
pub fn leases(node: &Node, queue: &str, limit: usize) -> LeasesView {
    let mut all: Vec<LeaseView> = {
        let a = node.shared.read();
        a.state
            .leases_with_queues()
            .filter(|(_, q)| queue.is_empty() || **q == *queue)
            .map(|(l, q)| LeaseView::new(l, &q, None))
            .collect()
    };
    let total = all.len();
    {
        let now = node.clock.monotonic_ms();
        let timers = node.shared.timers.lock();
        for l in &mut all {
            l.silence_ms = timers.silence_ms(l.token, now);
        }
    }
    let key = |l: &LeaseView| l.silence_ms.unwrap_or(0) as f64 / l.ttl_ms.max(1) as f64;
    all.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.token.cmp(&b.token)));
    all.truncate(limit.clamp(1, MAX_LEASES));
    LeasesView { leases: all, total }
}

#[derive(Serialize)]
pub struct VerdictView {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The attempt it is about, as the task's history holds it now (absent once purged).
    pub attempt: Option<AttemptView>,
    pub task_state: Option<&'static str>,
}

/// The latest `n` verdicts, newest first, with their evidence.
pub fn verdicts(node: &Node, n: usize) -> Vec<VerdictView> {
    let latest = node.shared.verdicts.lock().latest(n);
    let a = node.shared.read();
    latest
        .into_iter()
        .map(|v| {
            let t = a.state.task(&v.task_id);
            let attempt = t.and_then(|t| t.record(v.token).map(|r| attempt_view(t, r, None)));
            VerdictView {
                task_state: t.map(|t| state_name(t.state)),
                attempt,
                verdict: v,
            }
        })
        .collect()
}

/// What a verdict means, in words.
pub fn verdict_words(kind: VerdictKind) -> &'static str {
    match kind {
        VerdictKind::Expired => "lease expired",
        VerdictKind::LateSuccess => "late success accepted",
    }
}
