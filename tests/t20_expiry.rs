//! Expiry by a majority of clocks: a silent worker loses its lease within TTL plus a few renew
//! intervals; a worker that renews on time never does.
mod common;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

const TTL_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_worker_is_expired_by_majority_vote_and_the_task_retried() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    c.submit(submit_req("silent", "q", TTL_MS)).await.unwrap();
    let claim = c.claim(claim_req("q", "w-silent")).await.unwrap();
    let token = claim.lease.unwrap().token;
    let secret = claim.lease_secret;
    let claimed_at = Instant::now();

    // Never renewed: the task must come back as PENDING for its next attempt.
    let task = eventually(Duration::from_secs(10), "the lease to expire", || {
        let c = c.clone();
        async move {
            let t = c.get("silent").await.ok()?;
            (t.state == pb::TaskState::Pending as i32).then_some(t)
        }
    })
    .await;
    let elapsed = claimed_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(TTL_MS),
        "expired before its TTL: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(TTL_MS + 4 * TTL_MS / 3 + 1000),
        "expired too late: {elapsed:?}"
    );
    let rec = &task.history[0];
    assert_eq!(rec.outcome, pb::AttemptOutcome::Expired as i32);
    assert!(
        rec.expiry_voters.len() >= 2,
        "a majority of the three nodes voted: {:?}",
        rec.expiry_voters
    );
    assert_eq!(task.attempt, 1);

    // The old worker learns why at its next renewal.
    let err = c.renew(token, &secret).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("expired"), "{}", err.message());

    // And the next attempt can run.
    let next = eventually(Duration::from_secs(5), "a second claim", || {
        let c = c.clone();
        async move {
            c.claim(claim_req("q", "w2"))
                .await
                .ok()
                .filter(|r| r.task.is_some())
        }
    })
    .await;
    assert_eq!(next.lease.unwrap().attempt, 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_renewing_on_time_is_never_expired() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    for i in 0..5 {
        c.submit(submit_req(&format!("busy-{i}"), "q", TTL_MS))
            .await
            .unwrap();
    }
    let mut tokens = Vec::new();
    let mut secrets = Vec::new();
    let mut interval = 0;
    for _ in 0..5 {
        let r = c.claim(claim_req("q", "w-busy")).await.unwrap();
        interval = r.renew_interval_ms;
        tokens.push(r.lease.unwrap().token);
        secrets.push(r.lease_secret);
    }
    // One heartbeat stream renews all five leases, at the advised interval, for 5 TTLs.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut responses = c
        .worker()
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let until = Instant::now() + Duration::from_millis(5 * TTL_MS);
    let mut seq = 0;
    while Instant::now() < until {
        seq += 1;
        tx.send(pb::HeartbeatRequest {
            seq,
            lease_tokens: tokens.clone(),
            lease_secrets: secrets.clone(),
        })
        .await
        .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), responses.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.seq, seq);
        for l in &r.leases {
            assert_eq!(
                l.status,
                pb::LeaseStatus::Alive as i32,
                "lease {} lost: {}",
                l.lease_token,
                l.message
            );
        }
        interval = r.renew_interval_ms.max(1);
        tokio::time::sleep(Duration::from_millis(interval)).await;
    }
    assert!(interval > 0);
    for i in 0..5 {
        let t = c.get(&format!("busy-{i}")).await.unwrap();
        assert_eq!(t.state, pb::TaskState::Running as i32);
        assert_eq!(t.history.len(), 1, "no attempt ended");
        assert!(t.lease.unwrap().renewals >= 10);
    }
    cluster.shutdown().await;
}
