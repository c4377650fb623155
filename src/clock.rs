//! Time as one node sees it: a monotonic clock for liveness, a wall clock for human-facing
//! fields, and the node's own record of when it last heard each lease.
//!
//! Nothing here is replicated. A node only ever compares its own monotonic readings.
use crate::state::{AttemptOutcome, Effects, Lease, Name, NodeId, Token};
use std::collections::{HashMap, VecDeque};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds on a monotonic clock with an arbitrary origin.
    fn monotonic_ms(&self) -> u64;
    /// Wall-clock Unix milliseconds (for timestamps and retry back-off only).
    fn unix_ms(&self) -> u64;
}

pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct Heard {
    renewals: u64,
    /// When this node last heard the lease, or heard every lease anew (the expiry count).
    at_ms: u64,
    /// When this node applied the lease's last claim or renewal (for the metrics only).
    renewed_ms: u64,
    ttl_ms: u64,
    voted_at_ms: Option<u64>,
    queue: Name,
}

impl Heard {
    /// Heard now, at `renewals`.
    fn now(renewals: u64, ttl_ms: u64, queue: Name, now_ms: u64) -> Self {
        Heard {
            renewals,
            at_ms: now_ms,
            renewed_ms: now_ms,
            ttl_ms,
            voted_at_ms: None,
            queue,
        }
    }
}

/// What one apply step showed this node's clock, for its metrics.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// Per renewal: its queue, and the time since the lease's previous claim or renewal.
    pub intervals_ms: Vec<(Name, u64)>,
    /// Per expiry: its queue, and how long after the TTL had passed, on this node's clock
    /// since it last applied a renewal, the expiry was applied (0 if this node heard the lease
    /// within its TTL).
    pub expiry_late_ms: Vec<(Name, u64)>,
}

/// When this node last heard each live lease (applied its claim or a renewal).
#[derive(Default)]
pub struct LeaseTimers {
    heard: HashMap<Token, Heard>,
}

impl LeaseTimers {
    /// Notes what one apply step did, at local time `now_ms`.
    pub fn apply(&mut self, fx: &Effects, now_ms: u64) -> Observed {
        let mut seen = Observed::default();
        for e in &fx.ended {
            if e.outcome == AttemptOutcome::Expired {
                if let Some(h) = self.heard.get(&e.token) {
                    let late = now_ms.saturating_sub(h.renewed_ms).saturating_sub(e.ttl_ms);
                    seen.expiry_late_ms.push((h.queue.clone(), late));
                }
            }
        }
        for l in &fx.heard {
            match self.heard.get_mut(&l.token) {
                Some(h) => {
                    seen.intervals_ms
                        .push((h.queue.clone(), now_ms.saturating_sub(h.renewed_ms)));
                    *h = Heard::now(l.renewals, l.ttl_ms, h.queue.clone(), now_ms);
                }
                None => {
                    let queue = l.queue.clone().unwrap_or_else(|| "".into());
                    let h = Heard::now(l.renewals, l.ttl_ms, queue, now_ms);
                    self.heard.insert(l.token, h);
                }
            }
        }
        for token in &fx.gone {
            self.heard.remove(token);
        }
        seen
    }

    /// Forgets everything and hears every live lease (with its task's queue) now: after
    /// start-up or a snapshot install a node can only delay an expiry, never cause one.
    pub fn reset<'a>(&mut self, leases: impl Iterator<Item = (&'a Lease, Name)>, now_ms: u64) {
        self.heard.clear();
        for (l, queue) in leases {
            let h = Heard::now(l.renewals, l.ttl_ms, queue, now_ms);
            self.heard.insert(l.token, h);
        }
    }

    /// Hears every live lease now: time when the cluster could not commit must not count against
    /// a lease (workers could not renew then).
    pub fn refresh_all(&mut self, now_ms: u64) {
        for h in self.heard.values_mut() {
            h.at_ms = now_ms;
            h.voted_at_ms = None;
        }
    }

    /// Leases this node's clock judges expired, as `(token, renewals seen, silence_ms)`,
    /// skipping those it voted on less than `revote_ms` ago.
    pub fn due(&mut self, now_ms: u64, revote_ms: u64) -> Vec<(Token, u64, u64)> {
        let mut out = Vec::new();
        for (token, h) in self.heard.iter_mut() {
            let silence = now_ms.saturating_sub(h.at_ms);
            if silence < h.ttl_ms {
                continue;
            }
            if h.voted_at_ms
                .is_some_and(|v| now_ms.saturating_sub(v) < revote_ms)
            {
                continue;
            }
            h.voted_at_ms = Some(now_ms);
            out.push((*token, h.renewals, silence));
        }
        out.sort_unstable();
        out
    }

    pub fn len(&self) -> usize {
        self.heard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }

    /// Milliseconds since this node last heard `token`.
    pub fn silence_ms(&self, token: Token, now_ms: u64) -> Option<u64> {
        self.heard
            .get(&token)
            .map(|h| now_ms.saturating_sub(h.at_ms))
    }
}

/// How long a window of readings a peer's clock rate is estimated over, and the shortest span
/// that gives an estimate.
pub const RATE_WINDOW_MS: u64 = 10_000;
pub const RATE_MIN_SPAN_MS: u64 = 2_000;

/// Other members' monotonic clock rates against this node's, estimated from the readings they
/// send back to this node's clock probes (`(local, remote)` pairs, the local reading taken
/// half-way through the round trip). A rate of 2.0 means the peer's clock ran twice as fast
/// as this node's over the window.
#[derive(Default)]
pub struct PeerClocks {
    peers: HashMap<NodeId, VecDeque<(u64, u64)>>,
}

impl PeerClocks {
    /// Notes that `peer`'s clock read `remote_ms` when this node's read `local_ms`.
    pub fn sample(&mut self, peer: NodeId, local_ms: u64, remote_ms: u64) {
        let w = self.peers.entry(peer).or_default();
        if w.back()
            .is_some_and(|&(l, r)| remote_ms < r || local_ms < l)
        {
            // The peer restarted (its clock's origin moved): start over.
            w.clear();
        }
        w.push_back((local_ms, remote_ms));
        while w.len() > 2
            && w.front()
                .is_some_and(|&(l, _)| local_ms.saturating_sub(l) > RATE_WINDOW_MS)
        {
            w.pop_front();
        }
        while w.len() > 256 {
            w.pop_front();
        }
    }

    /// `peer`'s clock rate over the window, once the readings span [`RATE_MIN_SPAN_MS`].
    pub fn rate(&self, peer: NodeId) -> Option<f64> {
        let w = self.peers.get(&peer)?;
        let (&(l0, r0), &(l1, r1)) = (w.front()?, w.back()?);
        let span = l1.saturating_sub(l0);
        (span >= RATE_MIN_SPAN_MS).then(|| r1.saturating_sub(r0) as f64 / span as f64)
    }

    /// Every peer with an estimate, by id.
    pub fn rates(&self) -> Vec<(NodeId, f64)> {
        let mut out: Vec<_> = self
            .peers
            .keys()
            .filter_map(|&p| self.rate(p).map(|r| (p, r)))
            .collect();
        out.sort_by_key(|(p, _)| *p);
        out
    }

    /// Forgets peers that are no longer members.
    pub fn retain(&mut self, members: impl Fn(NodeId) -> bool) {
        self.peers.retain(|p, _| members(*p));
    }

    /// Whether this node's own clock is off: more than half of the `others` (the other voters)
    /// have a rate that differs from 1 by more than `bound` against it. One peer's bad clock
    /// makes only that peer look off to the rest; this node's bad clock makes all of them look
    /// off to it.
    pub fn self_off(&self, others: &[NodeId], bound: f64) -> bool {
        if bound <= 0.0 || others.is_empty() {
            return false;
        }
        let off = others
            .iter()
            .filter(|&&p| self.rate(p).is_some_and(|r| (r - 1.0).abs() > bound))
            .count();
        off * 2 > others.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{EndedLease, HeardLease};

    fn heard(token: Token, renewals: u64, queue: Option<&str>) -> Effects {
        Effects {
            heard: vec![HeardLease {
                token,
                renewals,
                ttl_ms: 100,
                queue: queue.map(Into::into),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn votes_once_per_revote_interval_and_forgets_renewed_leases() {
        let mut t = LeaseTimers::default();
        t.apply(&heard(7, 0, Some("q")), 0);
        assert!(t.due(99, 50).is_empty());
        assert_eq!(t.due(100, 50), vec![(7, 0, 100)]);
        assert!(
            t.due(120, 50).is_empty(),
            "no second vote within the revote interval"
        );
        assert_eq!(t.due(150, 50), vec![(7, 0, 150)], "the silence grows");
        t.apply(&heard(7, 1, None), 160);
        assert!(t.due(200, 50).is_empty(), "a renewal restarts the count");
        t.refresh_all(300);
        assert!(t.due(350, 50).is_empty());
        t.apply(
            &Effects {
                gone: vec![7],
                ..Default::default()
            },
            400,
        );
        assert!(t.due(10_000, 50).is_empty());
    }

    #[test]
    fn renewal_intervals_and_expiry_lateness_are_measured_per_queue() {
        let mut t = LeaseTimers::default();
        let seen = t.apply(&heard(7, 0, Some("etl")), 1_000);
        assert!(seen.intervals_ms.is_empty(), "a claim starts the count");
        let seen = t.apply(&heard(7, 1, None), 1_030);
        assert_eq!(seen.intervals_ms, vec![("etl".into(), 30)]);
        // Hearing every lease anew (a new leader) does not shorten the next interval.
        t.refresh_all(1_050);
        let seen = t.apply(&heard(7, 2, None), 1_070);
        assert_eq!(seen.intervals_ms, vec![("etl".into(), 40)]);
        let expired = Effects {
            gone: vec![7],
            ended: vec![EndedLease {
                task_id: "t".into(),
                token: 7,
                queue: "etl".into(),
                outcome: AttemptOutcome::Expired,
                ttl_ms: 100,
            }],
            ..Default::default()
        };
        let seen = t.apply(&expired, 1_195);
        assert_eq!(seen.expiry_late_ms, vec![("etl".into(), 25)]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_peer_clock_rate_is_estimated_once_the_readings_span_long_enough() {
        let mut c = PeerClocks::default();
        for i in 0..=10u64 {
            c.sample(2, 1_000 + i * 250, 50_000 + i * 500);
            c.sample(3, 1_000 + i * 250, 7 + i * 250);
        }
        assert!((c.rate(2).unwrap() - 2.0).abs() < 1e-9);
        assert!((c.rate(3).unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(c.rates().len(), 2);
        // Too short a span gives no estimate; a restart (the clock went back) starts over.
        c.sample(3, 4_000, 3);
        assert_eq!(c.rate(3), None);
        // Old readings leave the window.
        let mut c = PeerClocks::default();
        c.sample(2, 0, 0);
        c.sample(2, 5_000, 10_000);
        for i in 0..=40u64 {
            c.sample(2, 20_000 + i * 250, 100_000 + i * 250);
        }
        assert!((c.rate(2).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_node_is_off_when_most_other_voters_disagree_with_it() {
        let mut fast = PeerClocks::default();
        let mut sane = PeerClocks::default();
        for i in 0..=10u64 {
            // Node 1 runs at 2x: to it, nodes 2 and 3 run at 0.5x; to node 2, node 1 at 2x.
            fast.sample(2, i * 500, i * 250);
            fast.sample(3, i * 500, i * 250);
            sane.sample(1, i * 250, i * 500);
            sane.sample(3, i * 250, i * 250);
        }
        assert!(fast.self_off(&[2, 3], 0.1));
        assert!(
            !sane.self_off(&[1, 3], 0.1),
            "one bad peer is that peer's fault"
        );
        assert!(
            !fast.self_off(&[2, 3], 0.0),
            "a bound of 0 turns the check off"
        );
        assert!(
            !PeerClocks::default().self_off(&[2, 3], 0.1),
            "no estimate, no verdict"
        );
        // Of four other voters, two disagreeing is not a majority; three is.
        let mut five = PeerClocks::default();
        for i in 0..=10u64 {
            for (p, rate) in [(2, 1.5), (3, 1.5), (4, 1.0), (5, 1.0)] {
                five.sample(p, i * 500, (i as f64 * 500.0 * rate) as u64);
            }
        }
        assert!(!five.self_off(&[2, 3, 4, 5], 0.1));
        for i in 11..=20u64 {
            five.sample(4, i * 500, i * 750);
        }
        assert!(five.self_off(&[2, 3, 4, 5], 0.1));
    }
}
