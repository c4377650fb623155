//! What every simulated run must show: checked while it runs (the observer: no early expiry,
//! every node's invariants) and at its end (liveness after healing, convergence, the final state
//! against what clients were told, linearizable histories).
use super::clients::{Record, World};
use super::cluster::{Cluster, SimReport};
use super::lincheck::{self, TaskModel, Verdict};
use crate::node::Node;
use crate::raft::NodeId;
use crate::state::{AttemptOutcome, TaskState};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Watches every node's applied state: checks the state machine's invariants and notes when a
/// lease a worker holds disappears — an expiry must come a full TTL after the holder was last
/// acknowledged (only a majority of clocks can decide it, and a majority is sane here).
pub(super) async fn observer(w: Arc<World>, nodes: Arc<Mutex<Vec<Arc<Node>>>>) {
    while !w.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = w.now_ms();
        let nodes = nodes.lock().expect("lock").clone();
        let mut rec = w.rec.lock().expect("lock");
        let Record {
            leases,
            violations,
            expirations,
            dead_expired,
            ..
        } = &mut *rec;
        for n in &nodes {
            let a = n.shared.read();
            a.state.check_invariants();
            for (token, l) in leases.iter_mut().filter(|(_, l)| !l.closed) {
                if a.state.lease(*token).is_some() {
                    continue;
                }
                let Some(task) = a.state.task(&l.task) else {
                    continue;
                };
                let Some(h) = task.history.iter().find(|h| h.lease_token == *token) else {
                    continue;
                };
                l.closed = true;
                if h.outcome != AttemptOutcome::Expired {
                    continue;
                }
                *expirations += 1;
                if l.dead {
                    *dead_expired += 1;
                } else if now < l.heard_sent_ms + l.ttl_ms {
                    violations.push(format!(
                        "false expiration: lease {token} of task {} expired by {:?} at {now} ms, \
                         its holder was acknowledged for a renewal sent at {} ms (TTL {} ms)",
                        l.task, h.expiry_voters, l.heard_sent_ms, l.ttl_ms
                    ));
                }
            }
        }
    }
}

/// Liveness: once the faults heal, every task finishes (SUCCEEDED or CANCELLED) within 60 s of
/// simulated time, as the leader sees it.
pub(super) async fn every_task_finishes(c: &Cluster, world: &World, all: &[String]) {
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let finished = |n: &Node| {
        let a = n.shared.read();
        all.iter().all(|t| {
            a.state
                .task(t)
                .is_some_and(|t| matches!(t.state, TaskState::Succeeded | TaskState::Cancelled))
        })
    };
    loop {
        let leader = c.leader().and_then(|l| c.nodes.get(&l).cloned());
        if leader.as_deref().is_some_and(finished) {
            break;
        }
        if Instant::now() > drain_deadline {
            let a = match &leader {
                Some(l) => {
                    let a = l.shared.read();
                    all.iter()
                        .filter_map(|t| {
                            let s = a.state.task(t).map(|t| (t.state, t.not_before_unix_ms));
                            (!matches!(s, Some((TaskState::Succeeded | TaskState::Cancelled, _))))
                                .then(|| format!("{t}: {s:?}"))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                }
                None => "no leader".into(),
            };
            world.violation(format!(
                "liveness: 60 s after healing, tasks still unfinished: {a}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node converges on the same state (and holds the state machine's invariants).
pub(super) async fn nodes_converge(c: &Cluster, world: &World) {
    // Every node converges on the same state.
    let converge_deadline = Instant::now() + Duration::from_secs(20);
    let states = loop {
        let states: Vec<(NodeId, u64, Vec<u8>)> = c
            .nodes
            .values()
            .map(|n| {
                let a = n.shared.read();
                a.state.check_invariants();
                (
                    n.id,
                    a.last_applied.map(|l| l.index).unwrap_or(0),
                    a.state.to_bytes(),
                )
            })
            .collect();
        let same = states
            .windows(2)
            .all(|p| p[0].1 == p[1].1 && p[0].2 == p[1].2);
        if same || Instant::now() > converge_deadline {
            break states;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if states.windows(2).any(|p| p[0].2 != p[1].2) {
        let at: Vec<_> = states.iter().map(|s| (s.0, s.1)).collect();
        world.violation(format!(
            "nodes did not converge on one state: (node, applied) {at:?}"
        ));
    }
}

/// The final state against what clients were told: no acknowledged submit, success or cancel
/// lost or changed, tokens only grew, every task ended SUCCEEDED or CANCELLED, and a dead
/// worker's lease ended.
pub(super) fn final_state_matches_the_clients(c: &Cluster, world: &World, report: &mut SimReport) {
    // The final state against what clients were told.
    let final_state = c.nodes.values().next().cloned().expect("a node");
    {
        let a = final_state.shared.read();
        let rec = world.rec.lock().expect("lock");
        for id in &rec.submitted {
            match a.state.task(id) {
                None => report
                    .violations
                    .push(format!("acknowledged submit of {id} lost")),
                Some(t) => {
                    let tokens: Vec<u64> = t.history.iter().map(|h| h.lease_token).collect();
                    if tokens.windows(2).any(|p| p[0] >= p[1]) {
                        report
                            .violations
                            .push(format!("task {id}: tokens not increasing {tokens:?}"));
                    }
                    report.late_successes += t.history.iter().filter(|h| h.late).count();
                    match t.state {
                        TaskState::Succeeded => report.tasks_succeeded += 1,
                        TaskState::Cancelled => report.tasks_cancelled += 1,
                        s => report.violations.push(format!("task {id} ended {s:?}")),
                    }
                }
            }
        }
        for id in &rec.acked_success {
            if a.state.task(id).map(|t| t.state) != Some(TaskState::Succeeded) {
                report.violations.push(format!(
                    "acknowledged success of {id} not SUCCEEDED at the end"
                ));
            }
        }
        for id in &rec.acked_cancel {
            if a.state.task(id).map(|t| t.state) != Some(TaskState::Cancelled) {
                report.violations.push(format!(
                    "acknowledged cancel of {id} not CANCELLED at the end"
                ));
            }
        }
        for (token, l) in rec.leases.iter().filter(|(_, l)| l.dead) {
            let t = a.state.task(&l.task);
            let ended = t.and_then(|t| t.history.iter().find(|h| h.lease_token == *token));
            if a.state.lease(*token).is_some()
                || ended.map_or(true, |h| h.outcome == AttemptOutcome::Running)
            {
                report
                    .violations
                    .push(format!("the dead worker's lease {token} never ended"));
            }
        }
    }
}

/// Every task's history of calls, as the clients saw them, is linearizable.
pub(super) fn histories_are_linearizable(rec: &Record, report: &mut SimReport) {
    for (task, h) in &rec.histories {
        match lincheck::check(&TaskModel::default(), h, 2_000_000) {
            Verdict::Linearizable => report.histories_checked += 1,
            Verdict::Inconclusive => report.histories_inconclusive += 1,
            Verdict::Violation => {
                let calls: Vec<String> = h
                    .iter()
                    .map(|c| {
                        format!(
                            "  {}..{:?} {:?} -> {:?}",
                            c.invoked_at, c.answered_at, c.op, c.ret
                        )
                    })
                    .collect();
                report.violations.push(format!(
                    "task {task}: history not linearizable:\n{}",
                    calls.join("\n")
                ));
            }
        }
    }
}
