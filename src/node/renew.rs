//! Group commit of renewals: every renewal that arrives while earlier batches are being
//! committed is coalesced into one `RenewBatch` entry.
use super::{Node, NodeError};
use crate::state::{Command, RenewOutcome, Response, Token};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches in flight at once; while all are in flight, new renewals queue up and go together.
const IN_FLIGHT: usize = 4;
/// Upper bound on the tokens of one entry.
const MAX_TOKENS: usize = 20_000;
/// Renewal requests waiting for an entry at most; past it a renewal is refused at once.
const MAX_QUEUED: usize = 16_384;

type Reply = oneshot::Sender<Result<Vec<(Token, RenewOutcome)>, NodeError>>;

pub(super) struct Renewer {
    tx: mpsc::Sender<(Vec<Token>, Reply)>,
}

impl Renewer {
    pub fn new(node: Weak<Node>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(run(node, rx));
        Self { tx }
    }

    pub async fn renew(&self, tokens: Vec<Token>) -> Result<Vec<(Token, RenewOutcome)>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((tokens, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NodeError::Overloaded(MAX_QUEUED),
            mpsc::error::TrySendError::Closed(_) => NodeError::Stopped("renewer stopped".into()),
        })?;
        rx.await
            .map_err(|_| NodeError::Stopped("renewer stopped".into()))?
    }
}

async fn run(node: Weak<Node>, mut rx: mpsc::Receiver<(Vec<Token>, Reply)>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else { return };
        let mut count = 0;
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next.take() {
            // A caller that has gone (its call cancelled or timed out) is not proposed for.
            if !w.1.is_closed() {
                count += w.0.len();
                waiters.push(w);
            }
            if count < MAX_TOKENS {
                next = rx.try_recv().ok();
            }
        }
        if waiters.is_empty() {
            continue;
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            let mut tokens: Vec<Token> = waiters
                .iter()
                .flat_map(|(t, _)| t.iter().copied())
                .collect();
            tokens.sort_unstable();
            tokens.dedup();
            let res = node.propose_now(Command::RenewBatch { tokens }).await;
            drop(permit);
            match res {
                Ok(Response::Renewed(outcomes)) => {
                    let by_token: BTreeMap<Token, RenewOutcome> = outcomes.into_iter().collect();
                    for (tokens, reply) in waiters {
                        let mine = tokens.iter().map(|t| (*t, by_token[t].clone())).collect();
                        let _ = reply.send(Ok(mine));
                    }
                }
                Ok(other) => {
                    for (_, reply) in waiters {
                        let _ = reply.send(Err(NodeError::Raft(format!(
                            "unexpected answer to a renewal: {other:?}"
                        ))));
                    }
                }
                Err(e) => {
                    for (_, reply) in waiters {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
