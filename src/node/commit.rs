//! The one commit path of a node: every write — API commands, renewals, the node's own expiry
//! votes — goes through a [`Coalescer`], which groups what arrives while earlier entries are in
//! flight into one log entry (group commit: one append, one fsync, one replication round, one
//! forwarded RPC for all of them), stamps it with this node's wall clock, proposes it on the
//! leader or forwards it to the leader ([`Submitter`]), and hands each caller its own answer.
//!
//! What differs between kinds of write is only the grouping rule ([`Grouping`]): commands
//! become one `Batch` entry, each with its own revision and answer; renewals become one
//! `RenewBatch` of distinct tokens, each caller answered for its own tokens.
use super::{NodeError, ProposeReply};
use crate::clock::Clock;
use crate::raft::network::{PeerCall, PeerError, Transport};
use crate::raft::{codec, ClientWriteError, NodeId, Raft, RaftError};
use crate::state::{Command, RenewOutcome, Request, Response, Token, MAX_BATCH_COMMANDS};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

/// Entries of one kind in flight at once; while all are in flight, new writes queue up and go
/// together.
const IN_FLIGHT: usize = 4;
/// Writes waiting for an entry at most, per kind; past it a write is refused at once (the node
/// is overloaded) instead of queueing without bound.
const MAX_QUEUED: usize = 16_384;
/// An entry of commands is closed once they weigh this much. The largest single command (a
/// 1 MiB payload or result with its 64 KiB error) is about 1.1 MiB, so an entry holds at most
/// about 3.1 MiB: see `raft::network::MAX_MESSAGE_BYTES` for why that bound matters.
pub(crate) const MAX_ENTRY_BYTES: usize = 2 << 20;

/// Proposes stamped requests: on the leader with `client_write`, elsewhere forwarded to the
/// leader over the peer port. Holds what that takes, not the node.
#[derive(Clone)]
pub(crate) struct Submitter {
    pub id: NodeId,
    pub raft: Raft,
    pub transport: Arc<dyn Transport>,
    pub clock: Arc<dyn Clock>,
    pub timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<crate::metrics::NodeMetrics>,
}

impl Submitter {
    /// The leader as this node last heard of it, with its peer address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    pub async fn wait_leader(&self, deadline: Instant) -> Result<(NodeId, String), NodeError> {
        let mut rx = self.raft.metrics();
        loop {
            if *self.shutdown.borrow() {
                return Err(NodeError::Stopped("shutdown".into()));
            }
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(NodeError::NoLeader(self.timeout.as_millis() as u64));
            }
        }
    }

    /// Stamps `cmd` with this node's wall clock and commits it as one entry, now.
    pub async fn propose_now(&self, cmd: Command) -> Result<Response, NodeError> {
        let req = Request {
            now_unix_ms: self.clock.unix_ms(),
            cmd,
        };
        self.submit(req).await
    }

    /// Commits a stamped request through whichever node leads.
    async fn submit(&self, req: Request) -> Result<Response, NodeError> {
        let res = self.submit_once(req).await;
        match &res {
            Ok(_) => self.metrics.proposals_committed.inc(),
            Err(_) => self.metrics.proposals_failed.inc(),
        };
        res
    }

    async fn submit_once(&self, req: Request) -> Result<Response, NodeError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (leader, addr) = self.wait_leader(deadline).await?;
            if leader == self.id {
                match self.raft.client_write(req.clone()).await {
                    Ok(r) => return Ok(r.data),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                    Err(RaftError::APIError(e)) => return Err(NodeError::Raft(e.to_string())),
                    Err(RaftError::Fatal(f)) => return Err(NodeError::Stopped(f.to_string())),
                }
            } else {
                self.metrics.proposals_forwarded.inc();
                let span = if crate::trace::enabled() {
                    tracing::info_span!("raft.forward", otel.kind = "client", leader)
                } else {
                    tracing::Span::none()
                };
                // Made inside the span, so that the proposal carries it to the leader.
                let sent = span
                    .in_scope(|| {
                        self.transport.call(
                            &addr,
                            PeerCall::Propose,
                            codec::encode(&req),
                            self.timeout,
                        )
                    })
                    .instrument(span.clone())
                    .await;
                match sent {
                    Ok(data) => match codec::decode::<ProposeReply>(&data) {
                        Ok(ProposeReply::Applied(resp)) => return Ok(resp),
                        Ok(ProposeReply::NotLeader) => {}
                        Ok(ProposeReply::Failed(e)) => return Err(NodeError::Raft(e)),
                        Err(e) => {
                            return Err(NodeError::Unknown {
                                leader,
                                detail: e.to_string(),
                            })
                        }
                    },
                    // Not sent (connection refused): safe to try again.
                    Err(PeerError::Unreachable(_)) => {}
                    Err(PeerError::Failed(detail)) => {
                        return Err(NodeError::Unknown { leader, detail })
                    }
                }
            }
            if Instant::now() + Duration::from_millis(20) >= deadline {
                return Err(NodeError::NoLeader(self.timeout.as_millis() as u64));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How writes of one kind are grouped into an entry and how its answer is shared out.
pub(crate) trait Grouping: Send + Sync + 'static {
    /// What one caller writes.
    type Item: Send + 'static;
    /// What one caller is answered.
    type Answer: Send + 'static;
    /// How much `item` adds to an entry; an entry is closed at [`Grouping::MAX_WEIGHT`], or
    /// when it holds [`Grouping::MAX_ITEMS`] writes.
    fn weight(item: &Self::Item) -> usize;
    const MAX_WEIGHT: usize;
    const MAX_ITEMS: usize;
    /// The command that commits `items` together.
    fn command(items: &[Self::Item]) -> Command;
    /// Each caller's answer, in the order of `items`, from the entry's answer.
    fn answers(items: Vec<Self::Item>, resp: Response) -> Vec<Result<Self::Answer, NodeError>>;
}

type Reply<A> = oneshot::Sender<Result<A, NodeError>>;

/// Groups the writes of one kind into entries (see the module docs).
/// One write waiting: what it writes, where its answer goes, and the caller's span (its trace).
type Waiting<G> = (
    <G as Grouping>::Item,
    Reply<<G as Grouping>::Answer>,
    tracing::Span,
);

pub(crate) struct Coalescer<G: Grouping> {
    tx: mpsc::Sender<Waiting<G>>,
}

impl<G: Grouping> Coalescer<G> {
    pub fn new(submitter: Submitter) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(run::<G>(submitter, rx));
        Self { tx }
    }

    /// Writes waiting for an entry.
    pub fn queued(&self) -> usize {
        MAX_QUEUED.saturating_sub(self.tx.capacity())
    }

    /// Commits `item` with whatever else is waiting, and returns its own answer.
    pub async fn write(&self, item: G::Item) -> Result<G::Answer, NodeError> {
        let (reply, rx) = oneshot::channel();
        let span = if crate::trace::enabled() {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        };
        self.tx.try_send((item, reply, span)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Overloaded(MAX_QUEUED),
            mpsc::error::TrySendError::Closed(_) => {
                NodeError::Stopped("commit path stopped".into())
            }
        })?;
        rx.await
            .map_err(|_| NodeError::Stopped("commit path stopped".into()))?
    }
}

async fn run<G: Grouping>(submitter: Submitter, mut rx: mpsc::Receiver<Waiting<G>>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut weight = 0;
        let (mut items, mut replies, mut spans) = (Vec::new(), Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some((item, reply, span)) = next.take() {
            // A caller that has gone (its call cancelled or timed out) is not written for.
            if !reply.is_closed() {
                weight += G::weight(&item);
                items.push(item);
                replies.push(reply);
                spans.push(span);
            }
            if items.len() < G::MAX_ITEMS && weight < G::MAX_WEIGHT {
                next = rx.try_recv().ok();
            }
        }
        if items.is_empty() {
            continue;
        }
        let submitter = submitter.clone();
        let commit = commit_span(&spans, items.len());
        tokio::spawn(
            async move {
                let res = submitter.propose_now(G::command(&items)).await;
                drop(permit);
                match res {
                    Ok(resp) => {
                        for (reply, a) in replies.into_iter().zip(G::answers(items, resp)) {
                            let _ = reply.send(a);
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
            .instrument(commit),
        );
    }
}

/// The span of one entry's commit, when spans are exported: a child of the first writer's span,
/// following from the others' (one entry carries many callers' writes).
fn commit_span(callers: &[tracing::Span], writes: usize) -> tracing::Span {
    if !crate::trace::enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: callers.first().and_then(|s| s.id()),
        "raft.commit",
        writes
    );
    for other in callers.iter().skip(1) {
        span.follows_from(other);
    }
    span
}

/// API commands and the node's own votes: one `Batch` entry (a single command goes alone),
/// each command with its own revision and answer.
pub(crate) struct Commands;

impl Grouping for Commands {
    type Item = Command;
    type Answer = Response;
    const MAX_WEIGHT: usize = MAX_ENTRY_BYTES;
    const MAX_ITEMS: usize = if MAX_BATCH_COMMANDS < 4096 {
        MAX_BATCH_COMMANDS
    } else {
        4096
    };

    /// Roughly the bytes `cmd` adds to an entry.
    fn weight(cmd: &Command) -> usize {
        64 + match cmd {
            Command::Submit(spec) | Command::SubmitTraced { spec, .. } => {
                spec.payload.len() + spec.id.len()
            }
            Command::Progress { progress, .. } => progress.len(),
            Command::Complete { report, .. } => report.result.len() + report.error.len(),
            Command::RenewBatch { tokens } => tokens.len() * 8,
            Command::ExpiryVote { votes, .. } => votes.len() * 16,
            Command::ExpiryVoteSilence { votes, .. } => votes.len() * 24,
            _ => 0,
        }
    }

    fn command(items: &[Command]) -> Command {
        match items {
            [one] => one.clone(),
            many => Command::Batch(many.to_vec()),
        }
    }

    fn answers(items: Vec<Command>, resp: Response) -> Vec<Result<Response, NodeError>> {
        let n = items.len();
        match resp {
            resp if n == 1 => vec![Ok(resp)],
            Response::Batch(answers) if answers.len() == n => answers.into_iter().map(Ok).collect(),
            other => {
                let e = NodeError::Raft(format!("unexpected answer to a batch: {other:?}"));
                vec![Err(e); n]
            }
        }
    }
}

/// Renewals: one `RenewBatch` of the distinct tokens of every caller, each answered for its own
/// tokens.
pub(crate) struct Renewals;

impl Grouping for Renewals {
    type Item = Vec<Token>;
    type Answer = Vec<(Token, RenewOutcome)>;
    /// Tokens in one entry at most.
    const MAX_WEIGHT: usize = 20_000;
    const MAX_ITEMS: usize = usize::MAX;

    fn weight(tokens: &Vec<Token>) -> usize {
        tokens.len()
    }

    fn command(items: &[Vec<Token>]) -> Command {
        let mut tokens: Vec<Token> = items.iter().flatten().copied().collect();
        tokens.sort_unstable();
        tokens.dedup();
        Command::RenewBatch { tokens }
    }

    fn answers(
        items: Vec<Vec<Token>>,
        resp: Response,
    ) -> Vec<Result<Vec<(Token, RenewOutcome)>, NodeError>> {
        let Response::Renewed(outcomes) = resp else {
            let e = NodeError::Raft(format!("unexpected answer to a renewal: {resp:?}"));
            return vec![Err(e); items.len()];
        };
        let by_token: BTreeMap<Token, RenewOutcome> = outcomes.into_iter().collect();
        items
            .into_iter()
            .map(|tokens| {
                tokens
                    .iter()
                    .map(|t| match by_token.get(t) {
                        Some(o) => Ok((*t, o.clone())),
                        None => Err(NodeError::Raft(format!(
                            "token {t} missing from a renewal's answer"
                        ))),
                    })
                    .collect()
            })
            .collect()
    }
}
