//! Time as one node sees it: a monotonic clock for liveness, a wall clock for human-facing
//! fields, and the node's own record of when it last heard each lease.
//!
//! Nothing here is replicated. A node only ever compares its own monotonic readings.
use crate::state::{Effects, Lease, Token};
use std::collections::HashMap;
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

#[derive(Debug, Clone, Copy)]
struct Heard {
    renewals: u64,
    at_ms: u64,
    ttl_ms: u64,
    voted_at_ms: Option<u64>,
}

/// When this node last heard each live lease (applied its claim or a renewal).
#[derive(Default)]
pub struct LeaseTimers {
    heard: HashMap<Token, Heard>,
}

impl LeaseTimers {
    /// Notes what one apply step did, at local time `now_ms`.
    pub fn apply(&mut self, fx: &Effects, now_ms: u64) {
        for &crate::state::HeardLease {
            token,
            renewals,
            ttl_ms,
        } in &fx.heard
        {
            self.heard.insert(
                token,
                Heard {
                    renewals,
                    at_ms: now_ms,
                    ttl_ms,
                    voted_at_ms: None,
                },
            );
        }
        for token in &fx.gone {
            self.heard.remove(token);
        }
    }

    /// Forgets everything and hears every live lease now: after start-up or a snapshot install a
    /// node can only delay an expiry, never cause one.
    pub fn reset<'a>(&mut self, leases: impl Iterator<Item = &'a Lease>, now_ms: u64) {
        self.heard.clear();
        for l in leases {
            self.heard.insert(
                l.token,
                Heard {
                    renewals: l.renewals,
                    at_ms: now_ms,
                    ttl_ms: l.ttl_ms,
                    voted_at_ms: None,
                },
            );
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

    /// Leases this node's clock judges expired, as `(token, renewals seen)`, skipping those it
    /// voted on less than `revote_ms` ago.
    pub fn due(&mut self, now_ms: u64, revote_ms: u64) -> Vec<(Token, u64)> {
        let mut out = Vec::new();
        for (token, h) in self.heard.iter_mut() {
            if now_ms.saturating_sub(h.at_ms) < h.ttl_ms {
                continue;
            }
            if h.voted_at_ms
                .is_some_and(|v| now_ms.saturating_sub(v) < revote_ms)
            {
                continue;
            }
            h.voted_at_ms = Some(now_ms);
            out.push((*token, h.renewals));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_once_per_revote_interval_and_forgets_renewed_leases() {
        let mut t = LeaseTimers::default();
        let fx = Effects {
            heard: vec![crate::state::HeardLease {
                token: 7,
                renewals: 0,
                ttl_ms: 100,
            }],
            ..Default::default()
        };
        t.apply(&fx, 0);
        assert!(t.due(99, 50).is_empty());
        assert_eq!(t.due(100, 50), vec![(7, 0)]);
        assert!(
            t.due(120, 50).is_empty(),
            "no second vote within the revote interval"
        );
        assert_eq!(t.due(150, 50), vec![(7, 0)]);
        t.apply(
            &Effects {
                heard: vec![crate::state::HeardLease {
                    token: 7,
                    renewals: 1,
                    ttl_ms: 100,
                }],
                ..Default::default()
            },
            160,
        );
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
}
