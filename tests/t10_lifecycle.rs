//! A task's whole life on a real three-node cluster, watched from another node.
mod common;
use common::*;
use leasekeeper::proto::v1 as pb;
use std::time::Duration;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_claim_renew_progress_complete_seen_by_a_watcher() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(5)).await;
    let follower = (leader + 1) % 3;
    // The watcher sits on a follower, the worker talks to another follower: every write is
    // forwarded to the leader.
    let watcher = cluster.client_of(follower);
    let worker = cluster.client_of((leader + 2) % 3);
    let mut events = watcher
        .watch(pb::WatchTasksRequest {
            from_revision: 1,
            queue: "etl".into(),
            task_id: String::new(),
            kinds: Vec::new(),
        })
        .await
        .unwrap();

    let sub = worker
        .submit(submit_req("job-1", "etl", 3000))
        .await
        .unwrap();
    assert!(sub.created);
    let again = worker
        .submit(submit_req("job-1", "etl", 3000))
        .await
        .unwrap();
    assert!(!again.created, "the same spec is idempotent");
    assert_eq!(
        again.task.unwrap().created_rev,
        sub.task.as_ref().unwrap().created_rev
    );

    let claim = worker.claim(claim_req("etl", "w1")).await.unwrap();
    let lease = claim.lease.unwrap();
    assert_eq!(claim.task.unwrap().id, "job-1");
    assert!(
        claim.renew_interval_ms >= 900 && claim.renew_interval_ms <= 1100,
        "about a third of the TTL: {}",
        claim.renew_interval_ms
    );

    let secret = claim.lease_secret.clone();
    assert_eq!(
        secret.len(),
        16,
        "the claim hands its caller the lease secret"
    );
    let renewed = worker.renew(lease.token, &secret).await.unwrap();
    assert_eq!(renewed.lease.unwrap().renewals, 1);
    worker
        .progress(lease.token, &secret, b"half".to_vec())
        .await
        .unwrap();
    let done = worker
        .complete(success("job-1", lease.token, &secret))
        .await
        .unwrap();
    let task = done.task.unwrap();
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert!(!done.late);
    // Repeating the report gets the same answer.
    let again = worker
        .complete(success("job-1", lease.token, &secret))
        .await
        .unwrap();
    assert_eq!(again.task.unwrap().updated_rev, task.updated_rev);

    // A linearizable read on any node sees it at once.
    for i in 0..3 {
        let t = cluster.client_of(i).get("job-1").await.unwrap();
        assert_eq!(t.state, pb::TaskState::Succeeded as i32, "node {i}");
        assert_eq!(t.result, b"ok");
        assert_eq!(t.progress, b"half");
    }

    let mut kinds = Vec::new();
    let mut last_rev = 0;
    while kinds.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("event in time")
            .unwrap()
            .unwrap();
        assert!(e.revision > last_rev, "events in revision order");
        last_rev = e.revision;
        kinds.push(pb::EventKind::try_from(e.kind).unwrap());
    }
    assert_eq!(
        kinds,
        vec![
            pb::EventKind::Submitted,
            pb::EventKind::Claimed,
            pb::EventKind::Progress,
            pb::EventKind::Succeeded
        ]
    );
    assert_eq!(last_rev, task.updated_rev);
    cluster.shutdown().await;
}

/// A claim whose answer was lost is retried with the same claim_id (the client does so across
/// nodes): the retry gets the lease the first one created, not a second task, also when it
/// lands on another node and nothing else is claimable any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_claim_with_the_same_key_gets_the_same_lease() {
    let cluster = Cluster::start(3).await;
    let c = cluster.client();
    c.submit(submit_req("only", "idem", 3000)).await.unwrap();
    c.submit(submit_req("named", "idem", 3000)).await.unwrap();
    let req = pb::ClaimTaskRequest {
        claim_id: "claim-7".into(),
        task_id: "only".into(),
        ..claim_req("idem", "w-1")
    };
    let first = cluster.client_of(0).claim(req.clone()).await.unwrap();
    let lease = first.lease.clone().expect("claimed");
    for i in 0..3 {
        let again = cluster.client_of(i).claim(req.clone()).await.unwrap();
        assert_eq!(again.lease.unwrap().token, lease.token, "node {i}");
        assert_eq!(again.task.unwrap().attempt, 1);
    }
    // The queue still holds "named": a retry without task_id must not take it either.
    let retry_any = pb::ClaimTaskRequest {
        task_id: String::new(),
        ..req.clone()
    };
    let again = cluster.client_of(2).claim(retry_any).await.unwrap();
    assert_eq!(again.lease.unwrap().token, lease.token);
    let named = c.get("named").await.unwrap();
    assert_eq!(named.state, pb::TaskState::Pending as i32);
    // Claiming a task by id that someone else runs is refused with a clear status.
    let e = c
        .claim(claim_task_req("idem", "w-2", "only"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    cluster.shutdown().await;
}

/// Finished tasks are forgotten after the retention; running and pending ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_tasks_are_forgotten_after_retention() {
    let cluster = Cluster::start_with(3, |c| c.terminal_retention_ms = 400).await;
    let c = cluster.client();
    for id in ["done", "waiting", "running"] {
        c.submit(submit_req(id, "ret", 3000)).await.unwrap();
    }
    let r = c.claim(claim_task_req("ret", "w", "done")).await.unwrap();
    c.complete(success("done", r.lease.unwrap().token, &r.lease_secret))
        .await
        .unwrap();
    let running = c
        .claim(claim_task_req("ret", "w", "running"))
        .await
        .unwrap();
    let (running, running_secret) = (running.lease.unwrap().token, running.lease_secret);
    // Still there right after it finished.
    assert_eq!(
        c.get("done").await.unwrap().state,
        pb::TaskState::Succeeded as i32
    );
    eventually(
        Duration::from_secs(10),
        "the finished task to be forgotten",
        || async {
            c.renew(running, &running_secret).await.unwrap();
            match c.get("done").await {
                Err(e) if e.code() == tonic::Code::NotFound => Some(()),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(
        c.get("waiting").await.unwrap().state,
        pb::TaskState::Pending as i32
    );
    assert_eq!(
        c.get("running").await.unwrap().state,
        pb::TaskState::Running as i32
    );
    cluster.shutdown().await;
}

/// Read-your-writes for claims: a follower answers a submit once the leader has committed it,
/// possibly before the follower itself has applied it. A claim sent right after, through the
/// same follower, must still find the task (the follower catches up before answering "none").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_right_after_a_submit_through_a_follower_finds_the_task() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let c = cluster.client_of(follower);
    for i in 0..40 {
        let queue = format!("ryw-{i}");
        c.submit(submit_req(&format!("ryw-{i}"), &queue, 3000))
            .await
            .unwrap();
        let r = c.claim(claim_req(&queue, "w")).await.unwrap();
        assert!(
            r.task.is_some(),
            "round {i}: the claim through node {follower} found no task right after its submit"
        );
    }
    cluster.shutdown().await;
}
