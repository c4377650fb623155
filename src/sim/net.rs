//! The simulated network between nodes (and between clients and nodes), and each node's
//! simulated clock. Every decision — delay, loss, which links are cut — comes from the run's
//! seeded generator, so a run replays exactly.
use crate::clock::Clock;
use crate::node::Node;
use crate::raft::network::{PeerCall, PeerError, Transport};
use crate::raft::NodeId;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Link conditions the fault schedule changes during a run.
#[derive(Clone, Debug)]
pub struct Conditions {
    /// One-way delay, drawn uniformly from this range.
    pub delay_us: (u64, u64),
    /// Chance in a thousand that a message is lost (each way).
    pub loss_per_mille: u32,
    /// Chance in a thousand that a message is held back by `spike_ms` (reordering).
    pub spike_per_mille: u32,
    pub spike_ms: u64,
}

impl Default for Conditions {
    fn default() -> Self {
        Self {
            delay_us: (100, 1_500),
            loss_per_mille: 0,
            spike_per_mille: 0,
            spike_ms: 30,
        }
    }
}

/// Who a message is between: a node or a client (workers and schedulers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Party {
    Node(NodeId),
    Client(u64),
}

struct NetState {
    rng: StdRng,
    nodes: BTreeMap<NodeId, Arc<Node>>,
    /// Parties cut off from everyone else (both ways).
    isolated: BTreeSet<Party>,
    cond: Conditions,
    delivered: u64,
    lost: u64,
}

/// What happens to one message.
enum Fate {
    /// Arrives after this delay.
    Arrives(Duration),
    /// Never arrives (lost, or the link is cut).
    Lost,
}

pub struct SimNet {
    inner: Mutex<NetState>,
}

impl SimNet {
    pub fn new(rng: StdRng) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(NetState {
                rng,
                nodes: BTreeMap::new(),
                isolated: BTreeSet::new(),
                cond: Conditions::default(),
                delivered: 0,
                lost: 0,
            }),
        })
    }

    pub fn transport(self: &Arc<Self>, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            from,
            net: self.clone(),
        })
    }

    /// The node answering at `id` (None while it is down).
    pub fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.inner.lock().expect("lock").nodes.get(&id).cloned()
    }

    pub fn set_node(&self, id: NodeId, node: Option<Arc<Node>>) {
        let mut s = self.inner.lock().expect("lock");
        match node {
            Some(n) => s.nodes.insert(id, n),
            None => s.nodes.remove(&id),
        };
    }

    pub fn isolate(&self, p: Party, cut: bool) {
        let mut s = self.inner.lock().expect("lock");
        if cut {
            s.isolated.insert(p);
        } else {
            s.isolated.remove(&p);
        }
    }

    pub fn heal(&self) {
        let mut s = self.inner.lock().expect("lock");
        s.isolated.clear();
        s.cond = Conditions::default();
    }

    pub fn set_conditions(&self, c: Conditions) {
        self.inner.lock().expect("lock").cond = c;
    }

    pub fn stats(&self) -> (u64, u64) {
        let s = self.inner.lock().expect("lock");
        (s.delivered, s.lost)
    }

    fn fate(&self, from: Party, to: Party) -> Fate {
        let mut s = self.inner.lock().expect("lock");
        if s.isolated.contains(&from) || s.isolated.contains(&to) {
            s.lost += 1;
            return Fate::Lost;
        }
        let c = s.cond.clone();
        if c.loss_per_mille > 0 && s.rng.gen_range(0..1000) < c.loss_per_mille {
            s.lost += 1;
            return Fate::Lost;
        }
        let mut us = s.rng.gen_range(c.delay_us.0..=c.delay_us.1);
        if c.spike_per_mille > 0 && s.rng.gen_range(0..1000) < c.spike_per_mille {
            us += c.spike_ms * 1000;
        }
        s.delivered += 1;
        Fate::Arrives(Duration::from_micros(us))
    }

    /// Runs `handler` on node `to` as a message from `from` would: after the request's trip, and
    /// with the answer's trip back. Lost either way, the caller waits out `timeout` and learns
    /// nothing; a node that is down refuses at once (`Unreachable`).
    pub async fn deliver<T, F, Fut>(
        &self,
        from: Party,
        to: NodeId,
        timeout: Duration,
        handler: F,
    ) -> Result<T, PeerError>
    where
        F: FnOnce(Arc<Node>) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let deadline = Instant::now() + timeout;
        let silence = || async move {
            tokio::time::sleep_until(deadline).await;
            Err(PeerError::Failed(format!(
                "no answer from node {to} in time"
            )))
        };
        let there = match self.fate(from, Party::Node(to)) {
            Fate::Lost => return silence().await,
            Fate::Arrives(d) => d,
        };
        tokio::time::sleep(there).await;
        let Some(node) = self.node(to) else {
            return Err(PeerError::Unreachable(format!("node {to} is down")));
        };
        let answer = match tokio::time::timeout_at(deadline, handler(node)).await {
            Ok(a) => a,
            Err(_) => {
                return Err(PeerError::Failed(format!(
                    "node {to} did not answer in time"
                )))
            }
        };
        match self.fate(Party::Node(to), from) {
            Fate::Lost => silence().await,
            Fate::Arrives(d) => {
                tokio::time::sleep(d).await;
                // The caller gave up meanwhile: it never sees the answer.
                if Instant::now() > deadline {
                    return silence().await;
                }
                Ok(answer)
            }
        }
    }
}

/// Node addresses in the simulation are `sim-<id>:1`.
pub fn addr(id: NodeId) -> String {
    format!("sim-{id}:1")
}

fn parse_addr(addr: &str) -> Option<NodeId> {
    addr.strip_prefix("sim-")?.strip_suffix(":1")?.parse().ok()
}

struct SimTransport {
    from: NodeId,
    net: Arc<SimNet>,
}

impl Transport for SimTransport {
    fn call(
        &self,
        addr: &str,
        kind: PeerCall,
        body: Vec<u8>,
        timeout: Duration,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, PeerError>> {
        let net = self.net.clone();
        let from = self.from;
        let to = parse_addr(addr);
        Box::pin(async move {
            let Some(to) = to else {
                return Err(PeerError::Unreachable("not a simulated address".into()));
            };
            let answer = net
                .deliver(Party::Node(from), to, timeout, |n| async move {
                    n.handle_peer(from, kind, &body).await
                })
                .await?;
            answer.map_err(PeerError::Failed)
        })
    }
}

/// A fault a node's clock can have.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ClockFault {
    /// Runs at this many thousandths of real speed (2000 = twice as fast, 500 = half).
    Rate(u64),
    /// Stands still.
    Frozen,
}

struct ClockState {
    /// Real (simulated) ms and clock reading at the last change.
    anchor_real_ms: u64,
    anchor_clock_ms: u64,
    rate_milli: u64,
}

/// A node's clock: the simulation's time, sped up, slowed, frozen or jumped at will. Both the
/// monotonic and the wall clock follow it (as libfaketime does to a real process).
pub struct SimClock {
    origin: Instant,
    epoch_unix_ms: u64,
    state: Mutex<ClockState>,
}

impl SimClock {
    /// A clock reading `start_ms` now (a real monotonic clock's origin is arbitrary; starting
    /// above zero leaves room for a jump backwards).
    pub fn new(origin: Instant, epoch_unix_ms: u64, start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            origin,
            epoch_unix_ms,
            state: Mutex::new(ClockState {
                anchor_real_ms: 0,
                anchor_clock_ms: start_ms,
                rate_milli: 1000,
            }),
        })
    }

    fn real_ms(&self) -> u64 {
        Instant::now().duration_since(self.origin).as_millis() as u64
    }

    fn read(&self, s: &ClockState) -> u64 {
        let real = self.real_ms();
        s.anchor_clock_ms + real.saturating_sub(s.anchor_real_ms) * s.rate_milli / 1000
    }

    fn reanchor(&self, s: &mut ClockState) {
        s.anchor_clock_ms = self.read(s);
        s.anchor_real_ms = self.real_ms();
    }

    pub fn set(&self, fault: Option<ClockFault>) {
        let mut s = self.state.lock().expect("lock");
        self.reanchor(&mut s);
        s.rate_milli = match fault {
            None => 1000,
            Some(ClockFault::Rate(r)) => r,
            Some(ClockFault::Frozen) => 0,
        };
    }

    /// Jumps the clock by `ms` (backwards when negative, as a misbehaving clock source can).
    pub fn jump(&self, ms: i64) {
        let mut s = self.state.lock().expect("lock");
        self.reanchor(&mut s);
        s.anchor_clock_ms = s.anchor_clock_ms.saturating_add_signed(ms);
    }
}

impl Clock for SimClock {
    fn monotonic_ms(&self) -> u64 {
        let s = self.state.lock().expect("lock");
        self.read(&s)
    }
    fn unix_ms(&self) -> u64 {
        self.epoch_unix_ms.saturating_add(self.monotonic_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clock_faults_scale_jump_and_freeze_the_reading() {
        let c = SimClock::new(Instant::now(), 1_000, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.monotonic_ms(), 100);
        c.set(Some(ClockFault::Rate(2000)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.monotonic_ms(), 300);
        c.jump(3_600_000);
        assert_eq!(c.monotonic_ms(), 3_600_300);
        c.jump(-3_600_000);
        assert_eq!(c.monotonic_ms(), 300);
        c.jump(3_600_000);
        c.set(Some(ClockFault::Frozen));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.monotonic_ms(), 3_600_300);
        c.set(None);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(c.monotonic_ms(), 3_600_310);
        assert_eq!(c.unix_ms(), 3_601_310);
    }
}
