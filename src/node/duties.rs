//! The node's own duties besides voting on expiry: retention on the leader, and hearing every
//! lease anew when leadership changes.
use super::{Node, ProposeReply};
use crate::state::{Command, Request, Response};
use std::sync::Arc;
use std::time::Duration;

/// On the leader: forgets terminal tasks older than the retention, a bounded batch at a time.
pub(super) async fn retention_sweeper(node: Arc<Node>) {
    let retention = node.config.terminal_retention_ms;
    let every = Duration::from_millis((retention / 10).clamp(50, 10_000));
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        if node.leader().map(|l| l.0) != Some(node.id) {
            continue;
        }
        let before = node.clock.unix_ms().saturating_sub(retention);
        let due = {
            let a = node.shared.read();
            a.state
                .oldest_finished_unix_ms()
                .is_some_and(|at| at < before)
        };
        if !due {
            continue;
        }
        let req = Request {
            now_unix_ms: node.clock.unix_ms(),
            cmd: Command::Purge {
                finished_before_unix_ms: before,
                max: 1000,
            },
        };
        match node.propose_local(req).await {
            ProposeReply::Applied(Response::Purged { count }) => {
                tracing::debug!(count, "forgot finished tasks past retention")
            }
            ProposeReply::Failed(e) => {
                tracing::debug!(error = %e, "retention sweep not committed; tried again later")
            }
            _ => {}
        }
    }
}

/// Hears every lease anew when leadership changes or a leader regains its quorum: time during
/// which the cluster could not commit must not count against a lease.
pub(super) async fn contact_watcher(node: Arc<Node>) {
    let mut rx = node.raft.metrics();
    let mut shutdown = node.shutdown_signal();
    let (mut term, mut leader) = {
        let m = rx.borrow();
        (m.current_term, m.current_leader)
    };
    let lost_after = node.config.raft.election_max_ms;
    let mut lost_quorum = false;
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let (t, l, ack) = {
            let m = rx.borrow();
            (m.current_term, m.current_leader, m.millis_since_quorum_ack)
        };
        let now = node.clock.monotonic_ms();
        if t != term || l != leader {
            tracing::info!(term = t, leader = ?l, "leadership changed; hearing every lease now");
            node.shared.metrics.leader_changes.inc();
            node.history.leader_changed(node.clock.unix_ms(), t, l);
            node.shared.timers.lock().refresh_all(now);
            term = t;
            leader = l;
        }
        if l == Some(node.id) {
            let stale = ack.is_some_and(|a| a > lost_after);
            if lost_quorum && !stale {
                tracing::info!("quorum regained; hearing every lease now");
                node.shared.timers.lock().refresh_all(now);
            }
            lost_quorum = stale;
        }
    }
}

/// Samples every queue's counters once a second (the dashboard's throughput).
pub(super) async fn throughput_sampler(node: Arc<Node>) {
    let mut shutdown = node.shutdown_signal();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let queues = node.shared.metrics.queues();
        node.history.sample(node.clock.monotonic_ms(), &queues);
    }
}
