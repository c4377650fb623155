//! The fault menu of a simulated run: what can go wrong, drawn from the run's seed, and how it
//! is inflicted on the cluster for a while (`hold`) and healed.
use super::cluster::Cluster;
use super::net::{ClockFault, Conditions, Party};
use crate::node::Node;
use crate::raft::NodeId;
use rand::rngs::StdRng;
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fault {
    /// These nodes are cut off from everyone (in a 5-node cluster sometimes two: a 1+1+3
    /// split).
    Isolate(Vec<NodeId>),
    /// The node crashes (what it had not flushed is lost) and restarts after `hold`.
    Crash(NodeId),
    /// The clock victim's clock runs at another rate, or stands still, for `hold`.
    ClockRate(ClockFault),
    /// The clock victim's clock jumps, and stays jumped.
    ClockJump(i64),
    /// The network loses, delays and reorders messages for `hold`.
    Lossy,
    /// These nodes (a majority, or all) lose power at one instant: only what each had flushed
    /// survives.
    PowerLoss(Vec<NodeId>),
    /// A worker client is cut off for `hold`.
    CutClient(u64),
}

impl Fault {
    /// The next fault, aimed at `target` where it has one. The seed's draws are consumed in the
    /// same order whatever the fault, so a seed replays the same schedule.
    pub(super) fn draw(rng: &mut StdRng, ids: &[NodeId], target: NodeId, workers: u64) -> Fault {
        match rng.gen_range(0..7) {
            0 => {
                let mut cut = vec![target];
                if ids.len() == 5 && rng.gen_bool(0.5) {
                    cut.push(ids[rng.gen_range(0..ids.len())]);
                    cut.dedup();
                }
                Fault::Isolate(cut)
            }
            1 => Fault::Crash(target),
            // 2x is the field report; 4x and 10x make the node vote well before a TTL has
            // passed, so only the majority rule stands between it and a false expiry.
            2 => Fault::ClockRate(match rng.gen_range(0..5) {
                0 => ClockFault::Rate(2_000),
                1 => ClockFault::Rate(4_000),
                2 => ClockFault::Rate(10_000),
                3 => ClockFault::Rate(500),
                _ => ClockFault::Frozen,
            }),
            3 => Fault::ClockJump(if rng.gen_bool(0.5) {
                3_600_000
            } else {
                -3_600_000
            }),
            4 => Fault::Lossy,
            5 => {
                let n = if rng.gen_bool(0.5) {
                    ids.len()
                } else {
                    ids.len() / 2 + 1
                };
                let mut down = ids.to_vec();
                while down.len() > n {
                    down.remove(rng.gen_range(0..down.len()));
                }
                Fault::PowerLoss(down)
            }
            _ => Fault::CutClient(200 + rng.gen_range(0..workers)),
        }
    }

    /// The line of the run's report that says what happened, at `at_ms` of simulated time.
    pub(super) fn describe(&self, at_ms: u64, hold: Duration, clock_victim: NodeId) -> String {
        let at = at_ms;
        match self {
            Fault::Isolate(cut) => format!("{at} ms: nodes {cut:?} isolated for {hold:?}"),
            Fault::Crash(n) => format!("{at} ms: node {n} crashed, down {hold:?}"),
            Fault::ClockRate(f) => {
                format!("{at} ms: node {clock_victim} clock {f:?} for {hold:?}")
            }
            Fault::ClockJump(ms) => format!("{at} ms: node {clock_victim} clock jumps {ms:+} ms"),
            Fault::Lossy => format!("{at} ms: lossy, reordering network for {hold:?}"),
            Fault::PowerLoss(down) => {
                format!("{at} ms: nodes {down:?} lose power, down {hold:?}")
            }
            Fault::CutClient(who) => {
                format!("{at} ms: worker client {who} cut off for {hold:?}")
            }
        }
    }

    /// Inflicts the fault, waits `hold`, and heals it (a clock jump stays).
    pub(super) async fn inflict(
        &self,
        c: &mut Cluster,
        live: &Arc<Mutex<Vec<Arc<Node>>>>,
        clock_victim: NodeId,
        hold: Duration,
    ) {
        let net = c.world.net.clone();
        match self {
            Fault::Isolate(cut) => {
                for n in cut {
                    net.isolate(Party::Node(*n), true);
                }
                tokio::time::sleep(hold).await;
                for n in cut {
                    net.isolate(Party::Node(*n), false);
                }
            }
            Fault::Crash(target) => {
                c.crash(*target).await;
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
                tokio::time::sleep(hold).await;
                c.start(*target).await;
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
            }
            Fault::ClockRate(f) => {
                c.clocks[&clock_victim].set(Some(*f));
                tokio::time::sleep(hold).await;
                c.clocks[&clock_victim].set(None);
            }
            Fault::ClockJump(ms) => c.clocks[&clock_victim].jump(*ms),
            Fault::Lossy => {
                net.set_conditions(Conditions {
                    delay_us: (100, 5_000),
                    loss_per_mille: 50,
                    spike_per_mille: 50,
                    spike_ms: 40,
                });
                tokio::time::sleep(hold).await;
                net.set_conditions(Conditions::default());
            }
            Fault::PowerLoss(down) => {
                for id in down {
                    c.crash(*id).await;
                }
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
                tokio::time::sleep(hold).await;
                for id in down {
                    c.start(*id).await;
                }
                *live.lock().expect("lock") = c.nodes.values().cloned().collect();
            }
            Fault::CutClient(who) => {
                net.isolate(Party::Client(*who), true);
                tokio::time::sleep(hold).await;
                net.isolate(Party::Client(*who), false);
            }
        }
    }
}
