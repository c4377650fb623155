//! The leases a worker holds, and the rules by which it gives one up: the deciding part of the
//! SDK. Time comes in as arguments (tokio's clock, which tests pause and advance), the network
//! never: the heartbeat loop reports what nodes answered, and this decides what it means.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Tracked {
    secret: Vec<u8>,
    ttl_ms: u64,
    interval_ms: u64,
    /// When the request behind the last confirmation was sent (conservative).
    confirmed_at: Instant,
    lost: CancellationToken,
    reason: Option<String>,
    /// The work ended and its report is journaled: renew until it is acknowledged, but the
    /// lease can no longer be "lost" for the handler.
    reported: bool,
    /// The attempt's span: confirmed renewals are events in it.
    span: tracing::Span,
}

/// The leases this worker holds, shared by the claim loop, handlers, heartbeats and reports.
pub struct Leases {
    map: Mutex<HashMap<u64, Tracked>>,
    /// When a node last answered a heartbeat at all (ALIVE or RETRY).
    contact_at: Mutex<Instant>,
    /// Wakes the heartbeat loop for a lease that must be renewed without waiting its turn.
    pub(super) renew_now: tokio::sync::Notify,
    /// The worker's metrics (leases held, leases lost by reason).
    pub(super) metrics: std::sync::Arc<crate::metrics::WorkerMetrics>,
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            contact_at: Mutex::new(Instant::now()),
            renew_now: tokio::sync::Notify::new(),
            metrics: Default::default(),
        }
    }
}

impl Leases {
    /// No leases yet; what happens to them is counted in `metrics`.
    pub(super) fn with_metrics(metrics: std::sync::Arc<crate::metrics::WorkerMetrics>) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    fn held(&self, n: usize) {
        self.metrics.leases_held.set(n as i64);
    }

    /// Starts renewing a lease whose TTL started at `started_at` (on this worker's clock: the
    /// claim's answer, less the lease's age on the answering node). A lease already half an
    /// interval old is renewed at once.
    pub(super) fn track(
        &self,
        token: u64,
        secret: Vec<u8>,
        ttl_ms: u64,
        interval_ms: u64,
        started_at: Instant,
    ) -> CancellationToken {
        let lost = CancellationToken::new();
        let interval_ms = interval_ms.max(1);
        let mut m = self.map.lock().expect("lock");
        m.insert(
            token,
            Tracked {
                secret,
                ttl_ms,
                interval_ms,
                confirmed_at: started_at,
                lost: lost.clone(),
                reason: None,
                reported: false,
                span: tracing::Span::none(),
            },
        );
        self.held(m.len());
        drop(m);
        if started_at.elapsed() > Duration::from_millis(interval_ms / 2) {
            self.renew_now.notify_one();
        }
        lost
    }
    /// Renewals of `token` are recorded in `span` from now on.
    pub(super) fn trace(&self, token: u64, span: tracing::Span) {
        if let Some(t) = self.map.lock().expect("lock").get_mut(&token) {
            t.span = span;
        }
    }
    pub(super) fn untrack(&self, token: u64) {
        let mut m = self.map.lock().expect("lock");
        m.remove(&token);
        self.held(m.len());
    }
    pub(super) fn mark_reported(&self, token: u64) {
        if let Some(t) = self.map.lock().expect("lock").get_mut(&token) {
            t.reported = true;
        }
    }
    /// Gives the lease up: `kind` names the reason in the metrics (expired, cancelled,
    /// finished, unknown, denied, unconfirmed), `why` says it to the handler.
    pub(super) fn lose(&self, token: u64, kind: &'static str, why: String) {
        let mut m = self.map.lock().expect("lock");
        if let Some(t) = m.get_mut(&token) {
            if t.reason.is_none() {
                tracing::warn!(token, reason = %why, "lease lost");
                t.reason = Some(why);
                if !t.reported {
                    self.metrics
                        .leases_lost
                        .get_or_create(&crate::metrics::StatusLabel { status: kind })
                        .inc();
                }
            }
            t.lost.cancel();
            if t.reported {
                // Nothing left to protect: the report stands on its own (late successes count).
                m.remove(&token);
                self.held(m.len());
            }
        }
    }
    pub(super) fn reason(&self, token: u64) -> Option<String> {
        self.map
            .lock()
            .expect("lock")
            .get(&token)
            .and_then(|t| t.reason.clone())
    }
    /// Tokens to renew now with their secrets, and the interval until the next heartbeat.
    pub(super) fn due(&self) -> (Vec<u64>, Vec<Vec<u8>>, Duration) {
        let m = self.map.lock().expect("lock");
        let (tokens, secrets) = m
            .iter()
            .filter(|(_, t)| !t.lost.is_cancelled())
            .map(|(k, t)| (*k, t.secret.clone()))
            .unzip();
        let interval = m.values().map(|t| t.interval_ms).min().unwrap_or(500);
        (tokens, secrets, Duration::from_millis(interval))
    }
    /// Leases presumed lost although the cluster could not say so:
    /// - no renewal confirmed for a TTL and no node answered at all meanwhile (this worker is cut
    ///   off; the cluster may have expired the lease and cannot tell it);
    /// - no renewal confirmed for two TTLs although nodes answered "no leader, retry" (an
    ///   election does not take that long; this worker may only reach a minority).
    ///
    /// A leader election alone never costs a lease: nodes answer RETRY meanwhile, and a new
    /// leader hears every lease anew.
    pub(super) fn lose_unconfirmed(&self, now: Instant) {
        let contact = *self.contact_at.lock().expect("lock");
        let stale: Vec<(u64, String)> = {
            let m = self.map.lock().expect("lock");
            m.iter()
                .filter(|(_, t)| !t.reported && !t.lost.is_cancelled())
                .filter_map(|(k, t)| {
                    let ttl = Duration::from_millis(t.ttl_ms);
                    let unconfirmed = now.saturating_duration_since(t.confirmed_at);
                    let silent = now.saturating_duration_since(contact.max(t.confirmed_at));
                    if unconfirmed > 2 * ttl {
                        Some((*k, format!("no renewal committed within two lease TTLs ({} ms each) although nodes answered", t.ttl_ms)))
                    } else if unconfirmed > ttl && silent > ttl {
                        Some((*k, format!("no node reachable within the lease TTL ({} ms); the cluster may have expired it", t.ttl_ms)))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (token, why) in stale {
            self.lose(token, "unconfirmed", why);
        }
    }
    pub(super) fn contact(&self, at: Instant) {
        let mut c = self.contact_at.lock().expect("lock");
        if at > *c {
            *c = at;
        }
    }
    pub(super) fn confirm(&self, token: u64, sent_at: Instant, interval_ms: u64) {
        let span = {
            let mut m = self.map.lock().expect("lock");
            let Some(t) = m.get_mut(&token) else { return };
            if sent_at > t.confirmed_at {
                t.confirmed_at = sent_at;
            }
            if interval_ms > 0 {
                t.interval_ms = interval_ms;
            }
            crate::trace::enabled().then(|| t.span.clone())
        };
        // Recorded on the attempt's span, outside the lock.
        if let Some(span) = span {
            tracing::debug!(parent: &span, token, "lease renewed");
        }
    }
    pub fn len(&self) -> usize {
        self.map.lock().expect("lock").len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL_MS: u64 = 3000;

    /// Lets `ms` pass, then applies the loss rules; `contact` says whether a node answered.
    async fn after(l: &Leases, ms: u64, contact: bool) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        if contact {
            l.contact(Instant::now());
        }
        l.lose_unconfirmed(Instant::now());
    }

    fn leases_with(token: u64) -> (Leases, CancellationToken) {
        let l = Leases::default();
        let lost = l.track(
            token,
            vec![token as u8; 16],
            TTL_MS,
            TTL_MS / 3,
            Instant::now(),
        );
        (l, lost)
    }

    #[tokio::test(start_paused = true)]
    async fn cut_off_for_a_ttl_loses_the_lease() {
        let (l, lost) = leases_with(1);
        after(&l, TTL_MS, false).await;
        assert!(!lost.is_cancelled(), "exactly one TTL is not yet past it");
        after(&l, 1, false).await;
        assert!(lost.is_cancelled());
        assert!(l.reason(1).unwrap().contains("no node reachable"));
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_answering_retry_keep_it_for_two_ttls_not_more() {
        let (l, lost) = leases_with(1);
        // Nodes answer (an election: RETRY), but nothing commits.
        for _ in 0..20 {
            after(&l, TTL_MS / 10, true).await;
        }
        assert!(
            !lost.is_cancelled(),
            "an election alone never costs a lease"
        );
        after(&l, 1, true).await;
        assert!(lost.is_cancelled());
        assert!(l.reason(1).unwrap().contains("two lease TTLs"));
    }

    #[tokio::test(start_paused = true)]
    async fn confirmations_hold_it_and_only_move_forward() {
        let (l, lost) = leases_with(1);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(TTL_MS - 10)).await;
        l.confirm(1, Instant::now(), 0);
        // An older confirmation arriving late does not move it back.
        l.confirm(1, sent, 0);
        tokio::time::advance(Duration::from_millis(TTL_MS - 10)).await;
        l.lose_unconfirmed(Instant::now());
        assert!(!lost.is_cancelled());
        tokio::time::advance(Duration::from_millis(20)).await;
        l.lose_unconfirmed(Instant::now());
        assert!(lost.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reported_lease_is_never_lost_by_silence_and_ends_when_the_cluster_says() {
        let (l, lost) = leases_with(1);
        l.mark_reported(1);
        tokio::time::advance(Duration::from_millis(10 * TTL_MS)).await;
        l.lose_unconfirmed(Instant::now());
        assert!(!lost.is_cancelled(), "the report stands on its own");
        assert_eq!(l.len(), 1, "renewed until the report is acknowledged");
        l.lose(1, "expired", "expired".into());
        assert!(lost.is_cancelled());
        assert!(l.is_empty(), "nothing left to protect");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_keeps_its_first_reason_and_is_no_longer_renewed() {
        let (l, lost) = leases_with(1);
        l.track(2, vec![2; 16], TTL_MS, 500, Instant::now());
        l.lose(1, "cancelled", "cancelled".into());
        l.lose(1, "expired", "expired".into());
        assert!(lost.is_cancelled());
        assert_eq!(l.reason(1).as_deref(), Some("cancelled"));
        let (tokens, secrets, interval) = l.due();
        assert_eq!(tokens, vec![2]);
        assert_eq!(secrets, vec![vec![2; 16]]);
        assert_eq!(
            interval,
            Duration::from_millis(500),
            "the shortest interval"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_lease_is_renewed_at_once() {
        let l = Leases::default();
        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(TTL_MS / 3)).await;
        l.track(1, vec![], TTL_MS, TTL_MS / 3, started);
        tokio::time::timeout(Duration::from_millis(1), l.renew_now.notified())
            .await
            .expect("a renewal is asked for at once");
    }
}
