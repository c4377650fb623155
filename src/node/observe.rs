//! What a node watches of itself and its peers: clock probes (each peer's clock rate against
//! this node's, and the round trip), the verdict on this node's own clock, and the gauges its
//! `/metrics` shows, read when scraped.
use super::Node;
use crate::clock::PeerClocks;
use crate::raft::network::PeerCall;
use crate::raft::{codec, NodeId};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a node probes each other member's clock.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Other members' clocks as this node's probes see them.
#[derive(Default)]
pub struct Clocks {
    rates: Mutex<PeerClocks>,
    /// The last probe's round trip to each peer, in microseconds.
    round_trips: Mutex<BTreeMap<NodeId, u64>>,
    off: AtomicBool,
}

/// One peer's clock as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerClock {
    pub node_id: NodeId,
    pub rate: Option<f64>,
    pub round_trip_us: Option<u64>,
}

impl Clocks {
    /// Whether this node judges its own clock off (it casts no expiry votes then).
    pub fn is_off(&self) -> bool {
        self.off.load(Ordering::Relaxed)
    }

    /// Every peer probed, by id.
    pub fn peers(&self) -> Vec<PeerClock> {
        let rates = self.rates.lock();
        let rtts = self.round_trips.lock();
        rtts.iter()
            .map(|(&node_id, &rtt)| PeerClock {
                node_id,
                rate: rates.rate(node_id),
                round_trip_us: Some(rtt),
            })
            .collect()
    }
}

/// Probes every other member's clock every [`PROBE_EVERY`], and judges this node's own.
pub(super) async fn clock_prober(node: Arc<Node>) {
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let (peers, other_voters) = {
            let m = node.metrics();
            let membership = m.membership_config.membership();
            let peers: Vec<(NodeId, String)> = membership
                .nodes()
                .filter(|(id, _)| **id != node.id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            let voters: Vec<NodeId> = membership.voter_ids().filter(|id| *id != node.id).collect();
            (peers, voters)
        };
        let probes = peers.iter().map(|(id, addr)| probe(&node, *id, addr));
        futures::future::join_all(probes).await;
        let off = {
            let mut rates = node.clocks.rates.lock();
            rates.retain(|p| peers.iter().any(|(id, _)| *id == p));
            node.clocks
                .round_trips
                .lock()
                .retain(|p, _| peers.iter().any(|(id, _)| id == p));
            rates.self_off(&other_voters, node.config.clock_rate_bound)
        };
        let was = node.clocks.off.swap(off, Ordering::Relaxed);
        node.shared.metrics.clock_off.set(off as i64);
        if off && !was {
            tracing::warn!(
                peers = ?node.clocks.rates.lock().rates(),
                bound = node.config.clock_rate_bound,
                "this node's clock runs at a rate most other voters disagree with; it casts no expiry votes until they agree again"
            );
        } else if was && !off {
            tracing::info!(
                "this node's clock agrees with the other voters again; voting on expiry"
            );
        }
    }
}

async fn probe(node: &Node, peer: NodeId, addr: &str) {
    let local_before = node.clock.monotonic_ms();
    let started = Instant::now();
    let Ok(answer) = node
        .peer_call(addr, PeerCall::Clock, Vec::new(), Duration::from_secs(1))
        .await
    else {
        return;
    };
    let rtt = started.elapsed();
    let local_after = node.clock.monotonic_ms();
    let Ok(remote) = codec::decode::<u64>(&answer) else {
        return;
    };
    let local = local_before + local_after.saturating_sub(local_before) / 2;
    node.clocks.rates.lock().sample(peer, local, remote);
    node.clocks
        .round_trips
        .lock()
        .insert(peer, rtt.as_micros() as u64);
    let m = &node.shared.metrics;
    m.peer_rtt
        .get_or_create(&m.peer(peer))
        .observe(rtt.as_secs_f64());
}

impl Node {
    /// Writes waiting in this node's commit path.
    pub fn pending_writes(&self) -> usize {
        self.commands.queued() + self.renewals.queued()
    }

    /// Sets the gauges that are read rather than counted (Raft's, the state's counts, the
    /// peers' clocks) and returns every family in the OpenMetrics text format.
    pub fn render_metrics(&self) -> String {
        let m = &self.shared.metrics;
        // One scrape at a time: the task gauge is cleared and refilled before it is encoded.
        let _one = m.scrape.lock();
        let r = self.metrics();
        m.has_leader.set(r.current_leader.is_some() as i64);
        m.is_leader.set((r.current_leader == Some(self.id)) as i64);
        m.term.set(r.current_term as i64);
        m.last_log_index.set(r.last_log_index.unwrap_or(0) as i64);
        m.applied_index
            .set(r.last_applied.map(|l| l.index).unwrap_or(0) as i64);
        m.snapshot_index
            .set(r.snapshot.map(|l| l.index).unwrap_or(0) as i64);
        m.proposals_pending.set(self.pending_writes() as i64);
        {
            let a = self.shared.read();
            m.leases_live.set(a.state.lease_count() as i64);
            m.set_task_counts(a.state.counts_by_queue());
        }
        for (peer, rate) in self.clocks.rates.lock().rates() {
            m.peer_clock_rate.get_or_create(&m.peer(peer)).set(rate);
        }
        m.clock_off.set(self.clocks.is_off() as i64);
        m.encode()
    }
}
