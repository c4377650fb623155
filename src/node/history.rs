//! What a node remembers of its recent past for the dashboard: leader changes over the last
//! hour, and each queue's throughput over the last minute (sampled from its counters).
use crate::metrics::QueueMetrics;
use crate::state::NodeId;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

/// How far back leader changes are shown.
pub const LEADER_WINDOW_MS: u64 = 3_600_000;
/// Leader changes remembered at most (a flapping cluster must not grow it without bound).
const LEADER_CHANGES_KEPT: usize = 1024;
/// Throughput samples kept: one a second, for a minute.
pub const RATE_SAMPLES: usize = 61;
/// Queues whose throughput is sampled at most (the metrics' queue cap bounds it already).
const RATE_QUEUES: usize = 1024;

#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaderChange {
    pub at_unix_ms: u64,
    pub term: u64,
    /// None: no leader known.
    pub leader: Option<NodeId>,
}

/// One queue's throughput: per second over the last 10 s, and per-second counts of the last
/// minute, oldest first (the dashboard's spark lines).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Throughput {
    pub submitted_per_s: f64,
    pub finished_per_s: f64,
    pub finished_each_s: Vec<u64>,
}

/// One throughput sample: (monotonic ms, queue → (submitted, finished)).
type Sample = (u64, BTreeMap<String, (u64, u64)>);

#[derive(Default)]
pub struct History {
    leaders: Mutex<VecDeque<LeaderChange>>,
    /// Oldest first.
    samples: Mutex<VecDeque<Sample>>,
    /// The node's HTTP listener, as others reach it (set when it is bound).
    pub http_addr: OnceLock<String>,
}

impl History {
    pub fn leader_changed(&self, at_unix_ms: u64, term: u64, leader: Option<NodeId>) {
        let mut l = self.leaders.lock();
        if l.len() == LEADER_CHANGES_KEPT {
            l.pop_front();
        }
        l.push_back(LeaderChange {
            at_unix_ms,
            term,
            leader,
        });
    }

    /// Leader changes seen by this node within the last hour of `now_unix_ms`, newest first.
    pub fn leader_changes(&self, now_unix_ms: u64) -> Vec<LeaderChange> {
        let since = now_unix_ms.saturating_sub(LEADER_WINDOW_MS);
        let l = self.leaders.lock();
        l.iter()
            .rev()
            .take_while(|c| c.at_unix_ms >= since)
            .cloned()
            .collect()
    }

    /// Takes one throughput sample of every queue's counters.
    pub fn sample(&self, now_ms: u64, queues: &[Arc<QueueMetrics>]) {
        let counts = queues
            .iter()
            .take(RATE_QUEUES)
            .map(|q| {
                let finished = q.succeeded.get() + q.failed.get() + q.cancelled.get();
                (q.label.clone(), (q.submitted.get(), finished))
            })
            .collect();
        let mut s = self.samples.lock();
        if s.len() == RATE_SAMPLES {
            s.pop_front();
        }
        s.push_back((now_ms, counts));
    }

    /// Each sampled queue's throughput.
    pub fn throughput(&self) -> BTreeMap<String, Throughput> {
        let s = self.samples.lock();
        let mut out = BTreeMap::new();
        let Some((last_ms, last)) = s.back() else {
            return out;
        };
        // The sample about 10 s before the last one (or the oldest there is).
        let base = s
            .iter()
            .find(|(ms, _)| last_ms - ms <= 10_000)
            .filter(|(ms, _)| ms < last_ms);
        for (queue, &(sub, fin)) in last {
            let mut t = Throughput::default();
            if let Some((ms, counts)) = base {
                let secs = (last_ms - ms) as f64 / 1000.0;
                let (s0, f0) = counts.get(queue).copied().unwrap_or((0, 0));
                t.submitted_per_s = sub.saturating_sub(s0) as f64 / secs;
                t.finished_per_s = fin.saturating_sub(f0) as f64 / secs;
            }
            let finished: Vec<u64> = s
                .iter()
                .map(|(_, c)| c.get(queue).map_or(0, |c| c.1))
                .collect();
            t.finished_each_s = finished
                .windows(2)
                .map(|w| w[1].saturating_sub(w[0]))
                .collect();
            out.insert(queue.clone(), t);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_changes_of_the_last_hour_newest_first() {
        let h = History::default();
        h.leader_changed(1_000, 1, Some(1));
        h.leader_changed(4_000_000, 2, None);
        h.leader_changed(4_000_500, 2, Some(2));
        let got = h.leader_changes(4_001_000);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].leader, Some(2));
        assert_eq!(got[1].leader, None);
        for i in 0..2 * LEADER_CHANGES_KEPT as u64 {
            h.leader_changed(5_000_000 + i, 3, Some(3));
        }
        assert_eq!(h.leader_changes(5_000_000).len(), LEADER_CHANGES_KEPT);
    }
}
