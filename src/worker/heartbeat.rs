//! One Heartbeat stream per worker: renews every lease it holds at the interval the cluster
//! advises, moves to another node when the stream breaks or goes silent, and tells the leases
//! what the nodes answered.
use super::leases::Leases;
use crate::client::Client;
use crate::proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::protocol::{
    HEARTBEAT_RECONNECT_BACKOFF_MAX, HEARTBEAT_SILENCE_MAX, HEARTBEAT_SILENCE_MIN,
};

/// One Heartbeat stream per worker: renews every tracked lease at the advised interval, moves to
/// another node when the stream breaks, and reports lost leases to their handlers.
pub(super) async fn heartbeats(client: Client, leases: Arc<Leases>, stop: CancellationToken) {
    let mut seq = 0u64;
    let mut stream: Option<(
        mpsc::Sender<pb::HeartbeatRequest>,
        tonic::Streaming<pb::HeartbeatResponse>,
    )> = None;
    let mut backoff = Duration::from_millis(50);
    // The node the stream is (or was last) open on.
    let mut hb_node = client.node();
    loop {
        let (tokens, secrets, interval) = leases.due();
        let jitter = interval.as_millis() as u64 / 10;
        let pause = interval + Duration::from_millis(rand::random::<u64>() % (2 * jitter + 1))
            - Duration::from_millis(jitter);
        leases.lose_unconfirmed(Instant::now());
        if tokens.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                _ = stop.cancelled() => return,
            }
        }
        // Nodes answer within about a second (RETRY when they cannot commit in time), so
        // silence beyond that means this node is unreachable. With a short TTL the wait is
        // shorter still — one renew interval (a third of the TTL): a renewal that finds its node
        // cut off must still have the time to go through another node before the lease's TTL
        // runs out on the nodes' clocks.
        let wait = interval.clamp(HEARTBEAT_SILENCE_MIN, HEARTBEAT_SILENCE_MAX);
        if stream.is_none() {
            let (tx, rx) = mpsc::channel(4);
            hb_node = client.node();
            let mut w = client.worker_on(hb_node);
            match tokio::time::timeout(
                wait,
                w.heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await
            {
                Ok(Ok(resp)) => stream = Some((tx, resp.into_inner())),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "heartbeat stream refused; trying another node");
                    client.move_from(hb_node);
                }
                Err(_) => {
                    tracing::debug!("heartbeat stream not opened in time; trying another node");
                    client.move_from(hb_node);
                }
            }
        }
        if let Some((tx, rx)) = stream.as_mut() {
            seq += 1;
            let sent_at = Instant::now();
            let ok = tx
                .send(pb::HeartbeatRequest {
                    seq,
                    lease_tokens: tokens.clone(),
                    lease_secrets: secrets.clone(),
                })
                .await
                .is_ok();
            let answer = if ok {
                loop {
                    match tokio::time::timeout(wait, rx.message()).await {
                        Ok(Ok(Some(r))) if r.seq == seq => break Some(r),
                        Ok(Ok(Some(_))) => continue,
                        _ => break None,
                    }
                }
            } else {
                None
            };
            match answer {
                Some(r) => {
                    backoff = Duration::from_millis(50);
                    leases.contact(sent_at);
                    let node = client.endpoints().get(hb_node).cloned().unwrap_or_default();
                    leases
                        .metrics
                        .node_rtt
                        .get_or_create(&crate::metrics::PeerLabel { peer: node })
                        .observe(sent_at.elapsed().as_secs_f64());
                    let mut retry = false;
                    for l in r.leases {
                        match pb::LeaseStatus::try_from(l.status)
                            .unwrap_or(pb::LeaseStatus::Unspecified)
                        {
                            pb::LeaseStatus::Alive => {
                                leases.confirm(l.lease_token, sent_at, r.renew_interval_ms)
                            }
                            pb::LeaseStatus::Retry | pb::LeaseStatus::Unspecified => retry = true,
                            pb::LeaseStatus::Expired => {
                                leases.lose(l.lease_token, "expired", l.message)
                            }
                            pb::LeaseStatus::Cancelled => {
                                leases.lose(l.lease_token, "cancelled", l.message)
                            }
                            pb::LeaseStatus::Finished => {
                                leases.lose(l.lease_token, "finished", l.message)
                            }
                            pb::LeaseStatus::Denied => {
                                leases.lose(l.lease_token, "denied", l.message)
                            }
                            pb::LeaseStatus::Unknown => {
                                leases.lose(l.lease_token, "unknown", l.message)
                            }
                        }
                    }
                    if retry {
                        // This node has no leader to commit through: ask another one next.
                        stream = None;
                        client.move_from(hb_node);
                    }
                }
                None => {
                    tracing::debug!(
                        "heartbeat stream broke or went quiet; reconnecting to another node"
                    );
                    stream = None;
                    client.move_from(hb_node);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(HEARTBEAT_RECONNECT_BACKOFF_MAX);
                    continue;
                }
            }
        }
        let wait = if stream.is_some() { pause } else { backoff };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = leases.renew_now.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}
