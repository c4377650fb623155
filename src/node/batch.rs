//! Group commit of every write: commands that arrive while earlier entries are being committed
//! are proposed together as one `Batch` log entry — one append, one fsync, one replication
//! round, one forwarded RPC for all of them. Each command keeps its own revision and answer.
use super::{Node, NodeError};
use crate::state::{Command, Response, MAX_BATCH_COMMANDS};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Entries in flight at once; while all are in flight, new commands queue up and go together.
const IN_FLIGHT: usize = 4;
/// Upper bound on the commands of one entry.
const MAX_COMMANDS: usize = if MAX_BATCH_COMMANDS < 4096 {
    MAX_BATCH_COMMANDS
} else {
    4096
};
/// An entry is closed once its commands weigh this much. The largest single command (a 1 MiB
/// payload or result with its 64 KiB error) is about 1.1 MiB, so an entry holds at most about
/// 3.1 MiB: see `raft::network::MAX_MESSAGE_BYTES` for why that bound matters.
pub(crate) const MAX_BYTES: usize = 2 << 20;
/// Commands waiting for an entry at most; past it a proposal is refused at once (the node is
/// overloaded) instead of queueing without bound.
pub(super) const MAX_QUEUED: usize = 16_384;

type Reply = oneshot::Sender<Result<Response, NodeError>>;

pub(super) struct Proposer {
    tx: mpsc::Sender<(Command, Reply)>,
}

/// Roughly the bytes `cmd` adds to an entry.
fn weight(cmd: &Command) -> usize {
    64 + match cmd {
        Command::Submit(spec) => spec.payload.len() + spec.id.len(),
        Command::Progress { progress, .. } => progress.len(),
        Command::Complete { report, .. } => report.result.len() + report.error.len(),
        Command::RenewBatch { tokens } => tokens.len() * 8,
        Command::ExpiryVote { votes, .. } => votes.len() * 16,
        _ => 0,
    }
}

impl Proposer {
    pub fn new(node: Weak<Node>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(run(node, rx));
        Self { tx }
    }

    pub async fn propose(&self, cmd: Command) -> Result<Response, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((cmd, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Overloaded(MAX_QUEUED),
            mpsc::error::TrySendError::Closed(_) => NodeError::Stopped("proposer stopped".into()),
        })?;
        rx.await
            .map_err(|_| NodeError::Stopped("proposer stopped".into()))?
    }
}

async fn run(node: Weak<Node>, mut rx: mpsc::Receiver<(Command, Reply)>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut bytes = 0;
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next.take() {
            // A caller that has gone (its call cancelled or timed out) is not proposed for.
            if !w.1.is_closed() {
                bytes += weight(&w.0);
                waiters.push(w);
            }
            if waiters.len() < MAX_COMMANDS && bytes < MAX_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if waiters.is_empty() {
            continue;
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            if waiters.len() == 1 {
                let (cmd, reply) = waiters.pop().expect("one");
                let res = node.propose_now(cmd).await;
                drop(permit);
                let _ = reply.send(res);
                return;
            }
            let (cmds, replies): (Vec<Command>, Vec<Reply>) = waiters.into_iter().unzip();
            let n = cmds.len();
            let res = node.propose_now(Command::Batch(cmds)).await;
            drop(permit);
            match res {
                Ok(Response::Batch(answers)) if answers.len() == n => {
                    for (reply, a) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(a));
                    }
                }
                Ok(other) => {
                    let e = NodeError::Raft(format!("unexpected answer to a batch: {other:?}"));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
